//! Configuration: one `wharf.toml`, overridden by `WHARF_*` environment variables.
//!
//! Every field has a default, so the server runs with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on (`WHARF_LISTEN`).
    pub listen: SocketAddr,
    /// Directory for the SQLite database, sandboxes and caches (`WHARF_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Directory watched for built packs (`WHARF_PACKS_DIR`); default `<data_dir>/packs`.
    pub packs_dir: Option<PathBuf>,
    /// The first admin API key (`WHARF_ADMIN_KEY`). Secret: never logged.
    pub admin_key: Option<String>,
    /// `text` or `json` log lines (`WHARF_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Largest accepted JSON request body, in bytes.
    pub max_body_bytes: usize,
    pub runtime: RuntimeConfig,
    pub packs: PacksConfig,
    pub sandbox: SandboxConfig,
    pub probes: ProbesConfig,
    pub quotas: QuotasConfig,
    pub metrics: MetricsConfig,
    /// The run engine (leases, log caps) shared by cases and batches (later relay imports).
    pub runs: crate::jobs::RunsConfig,
    /// Cases: clone, build and run a repository (ports, limits, where it may clone from).
    pub cases: crate::cases::CasesConfig,
    /// Batches: task queues, their concurrency, task bounds and retries.
    pub batches: crate::batches::BatchesConfig,
    /// Relay hosts and imports: confirmation windows, concurrency, the reconcile schedule.
    pub relays: crate::relays::RelaysConfig,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    /// MCP at `/mcp` (streamable HTTP): sessions and their limits.
    pub mcp: McpConfig,
    /// Sandbox profiles beside (or overriding) the built-in `local` and `docker`.
    pub profiles: std::collections::BTreeMap<String, crate::sandbox::Profile>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Per-call deadline when the pack asks for none.
    pub default_timeout_ms: u64,
    /// The most a pack may ask for.
    pub max_timeout_ms: u64,
    /// Per-instance memory cap when the pack asks for none.
    pub default_memory_mib: u64,
    /// The most a pack may ask for; also the pooling allocator's slot size.
    pub max_memory_mib: u64,
    /// Concurrent component instances the pooling allocator reserves.
    pub max_instances: u32,
    /// Consecutive traps that open a component's circuit.
    pub circuit_trap_threshold: u32,
    /// How long an open circuit refuses calls.
    pub circuit_cooldown_ms: u64,
    /// Wall-clock bound of one plugin call, time in host calls (sandbox exec, file I/O)
    /// included: an adapter that loops on `exec` still ends, with `plugin_timeout`.
    pub call_wall_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacksConfig {
    /// Quiet period after the last file event before the packs dir is rescanned.
    pub debounce_ms: u64,
    /// Plugin log lines kept per pack and owner.
    pub log_lines_per_pack: usize,
    /// Owners whose plugin log lines are kept per pack; the owner written to least
    /// recently is dropped first. Bounds plugin logs at owners x lines x 4 KiB per pack.
    pub log_owners_per_pack: usize,
    /// Whether a pack's `profiles/*.toml` may ask for `network = "bridge"`.
    pub allow_profile_network: bool,
    /// The most memory a pack profile may ask for (`memory_mib`).
    pub max_profile_memory_mib: u64,
    /// The most processes a pack profile may ask for (`pids_limit`).
    pub max_profile_pids: i64,
    /// The most CPU cores a pack profile may ask for (`cpus`).
    pub max_profile_cpus: f64,
    /// Which pack serves a capability, provider or pack profile name that several packs
    /// provide (`shell = "core-adapters"`). Without a pin the pack already serving keeps it.
    pub pins: std::collections::BTreeMap<String, String>,
    /// Outbound hosts the operator grants each pack (`"llm-planner-pack" =
    /// ["api.deepseek.com"]`). A planner's `wasi:http` reaches a host only when its pack
    /// declares it in `permissions.allowed_hosts` AND it is granted here.
    pub http_grants: std::collections::BTreeMap<String, Vec<String>>,
    /// Whether granted hosts may be private addresses (loopback, LAN, link-local): off by
    /// default, so a granted name that resolves to one is refused.
    pub allow_private_http: bool,
}

/// Capability calls that wait for an approver (`approval = "required"` in a profile).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A pending approval not decided within this long expires (`approval_expired`).
    pub ttl_secs: u64,
    /// The longest `?wait=` a caller may long-poll an approval for.
    pub max_wait_secs: u64,
    /// Pending approvals an owner may hold at once (past it: `quota_exceeded`).
    pub pending_per_owner: u32,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 3600,
            max_wait_secs: 60,
            pending_per_owner: 100,
        }
    }
}

/// MCP over streamable HTTP at `/mcp`, behind the same API keys as the REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Serve `/mcp` at all.
    pub enabled: bool,
    /// Open sessions at once, all keys together; past it a new session is refused
    /// (`mcp_session_limit`) until one closes or idles out.
    pub max_sessions: usize,
    /// Open sessions one API key may hold at once (admin keys too): one key cannot take
    /// every slot.
    pub max_sessions_per_key: usize,
    /// A session that receives no message for this long is closed (its id then answers 404
    /// and the client starts a new one).
    pub session_idle_secs: u64,
    /// The largest file `sandbox_file_read` returns (bigger files: `payload_too_large`;
    /// use the files API for them).
    pub max_file_read_bytes: u64,
    /// `Host` header values accepted (`host` or `host:port`); empty accepts any. Every
    /// request needs an API key, which a DNS-rebinding page cannot send.
    pub allowed_hosts: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sessions: 256,
            max_sessions_per_key: 32,
            session_idle_secs: 600,
            max_file_read_bytes: 1 << 20,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The audit log of capability calls, and the retention of decided approvals.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit rows (and finished approvals) older than this are deleted.
    pub retention_secs: u64,
    /// At most this many audit rows are kept; the oldest go first.
    pub max_rows: u64,
    /// Period of the retention and approval-expiry sweep.
    pub gc_interval_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_secs: 30 * 24 * 3600,
            max_rows: 1_000_000,
            gc_interval_ms: 60_000,
        }
    }
}

#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics` without any key (for a scraper on a trusted network).
    pub public: bool,
    /// A bearer token that may read `/metrics` (besides admin keys) (`WHARF_METRICS_TOKEN`).
    /// Secret: never logged.
    pub token: Option<String>,
}

impl std::fmt::Debug for MetricsConfig {
    // Hand-written so the token can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("public", &self.public)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Bytes of stdout and of stderr kept per exec; the rest is dropped and flagged.
    pub exec_output_cap_bytes: usize,
    /// Exec timeout when the caller gives none.
    pub exec_default_timeout_ms: u64,
    /// The longest exec timeout a caller may ask for.
    pub exec_max_timeout_ms: u64,
    /// Largest file accepted by `PUT /v1/sandboxes/{id}/files/{path}`.
    pub max_upload_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_secs: u64,
    /// How long a call on a sandbox that is still starting waits before `session_not_ready`.
    pub not_ready_wait_ms: u64,
    /// Period of the GC and health task (idle stop, expiry, orphans, dead runtimes).
    pub gc_interval_ms: u64,
    /// Whether the Docker driver is used when a daemon answers.
    pub docker: bool,
    /// Host uid and gid that confined process-driver execs run as when the
    /// server runs as root (otherwise they run as the server's own uid/gid,
    /// mapped to 1000 inside the sandbox).
    pub process_uid: u32,
    pub process_gid: u32,
    /// Size of each confined exec's private `/tmp` (a tmpfs), in MiB.
    pub process_tmp_mib: u64,
    /// Memory of a process sandbox whose profile sets no `memory_mib`, all
    /// its processes together (enforced where the driver can use cgroups).
    pub process_default_memory_mib: u64,
    /// Events kept per sandbox; GC deletes older ones (at least 1 is kept).
    pub events_per_sandbox: u32,
    /// How long a deleted sandbox's row and event log stay readable before GC removes them.
    pub deleted_retention_secs: u64,
    /// Memory limit of a Docker sandbox whose profile sets no `memory_mib`.
    pub docker_default_memory_mib: u64,
    /// Process (and thread) limit of a Docker sandbox whose profile sets no `pids_limit`.
    pub docker_default_pids: i64,
    /// CPU cores of a Docker sandbox whose profile sets no `cpus`.
    pub docker_default_cpus: f64,
}

impl SandboxConfig {
    /// The timeout of an exec: the configured default when none is asked
    /// for, never more than the maximum, never zero.
    pub fn exec_timeout(&self, requested_ms: Option<u64>) -> std::time::Duration {
        let ms = requested_ms
            .unwrap_or(self.exec_default_timeout_ms)
            .min(self.exec_max_timeout_ms);
        std::time::Duration::from_millis(ms.max(1))
    }
}

/// What one owner may hold at once. Admin keys are exempt: an admin can mint
/// keys for any number of owners, so a per-owner cap would bound nothing for
/// them; the operator bounds admins by handing out admin keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Sandboxes an owner may hold that are not deleted (creating, running, stopped or failed).
    pub sandboxes_per_owner: u32,
    /// Probe targets an owner may register.
    pub probe_targets_per_owner: u32,
    /// Cases an owner may hold (any status; delete old ones).
    pub cases_per_owner: u32,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            sandboxes_per_owner: 20,
            probe_targets_per_owner: 100,
            cases_per_owner: 20,
        }
    }
}

impl QuotasConfig {
    /// The sandbox cap for a caller; `None` for admin keys.
    pub fn sandboxes_for(&self, admin: bool) -> Option<u32> {
        (!admin).then_some(self.sandboxes_per_owner)
    }

    /// The case cap for a caller; `None` for admin keys.
    pub fn cases_for(&self, admin: bool) -> Option<u32> {
        (!admin).then_some(self.cases_per_owner)
    }

    /// The probe-target cap for a caller; `None` for admin keys.
    pub fn probe_targets_for(&self, admin: bool) -> Option<u32> {
        (!admin).then_some(self.probe_targets_per_owner)
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// Key that seals stored target API keys: 64 hex characters (`WHARF_PROBE_KEY`). Secret:
    /// never logged. When absent, one is generated into `<data_dir>/probe.key` (mode 0600).
    pub encryption_key: Option<String>,
    /// Upstream HTTP requests in flight at once, over all probes.
    pub max_concurrency: usize,
    /// Cap on any one step's timeout; the plan's own timeout applies below it.
    pub max_step_timeout_ms: u64,
    /// How long a `warming_up` answer is retried before it counts as the verdict.
    pub warmup_retry_ms: u64,
    /// Pause between warm-up retries when the upstream gives no retry hint.
    pub warmup_backoff_ms: u64,
    /// How often the scheduler looks for due targets.
    pub tick_ms: u64,
    /// Scheduled target probes running at once.
    pub max_scheduled_concurrency: usize,
    /// Results kept per target (older ones are deleted).
    pub history_per_target: u32,
    /// Results of one-off `POST /v1/probes` kept per owner.
    pub history_adhoc: u32,
    /// Shortest schedule interval a target may ask for.
    pub min_interval_secs: u64,
    /// Non-ready results in a row before a `ready` target's state turns to the failure
    /// (`WHARF_PROBE_FAILURE_THRESHOLD`); a `ready` result restores it at once.
    pub failure_threshold: u32,
    /// Whether non-admin keys may probe loopback, private, link-local and other non-public
    /// addresses (`WHARF_PROBES_ALLOW_PRIVATE_TARGETS`). Off by default: a probe is a request
    /// the server makes from its own network position (see `outbound`).
    pub allow_private_targets: bool,
}

impl std::fmt::Debug for ProbesConfig {
    // Hand-written so the encryption key can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbesConfig")
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<set>"),
            )
            .field("max_concurrency", &self.max_concurrency)
            .field("max_step_timeout_ms", &self.max_step_timeout_ms)
            .field("warmup_retry_ms", &self.warmup_retry_ms)
            .field("tick_ms", &self.tick_ms)
            .field("failure_threshold", &self.failure_threshold)
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            encryption_key: None,
            max_concurrency: 64,
            max_step_timeout_ms: 30_000,
            warmup_retry_ms: 15_000,
            warmup_backoff_ms: 1_000,
            tick_ms: 500,
            max_scheduled_concurrency: 32,
            history_per_target: 100,
            history_adhoc: 1_000,
            min_interval_secs: 1,
            failure_threshold: 3,
            allow_private_targets: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("data"),
            packs_dir: None,
            admin_key: None,
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
            runtime: RuntimeConfig::default(),
            packs: PacksConfig::default(),
            sandbox: SandboxConfig::default(),
            probes: ProbesConfig::default(),
            quotas: QuotasConfig::default(),
            metrics: MetricsConfig::default(),
            runs: Default::default(),
            cases: Default::default(),
            batches: Default::default(),
            relays: Default::default(),
            approvals: ApprovalsConfig::default(),
            audit: AuditConfig::default(),
            mcp: McpConfig::default(),
            profiles: Default::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default_timeout_ms: 5_000,
            max_timeout_ms: 60_000,
            default_memory_mib: 64,
            max_memory_mib: 512,
            max_instances: 1_000,
            circuit_trap_threshold: 5,
            circuit_cooldown_ms: 30_000,
            call_wall_timeout_ms: 300_000,
        }
    }
}

impl Default for PacksConfig {
    fn default() -> Self {
        Self {
            debounce_ms: 100,
            log_lines_per_pack: 200,
            log_owners_per_pack: 32,
            allow_profile_network: false,
            max_profile_memory_mib: 8192,
            max_profile_pids: 4096,
            http_grants: Default::default(),
            allow_private_http: false,
            max_profile_cpus: 8.0,
            pins: Default::default(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            exec_output_cap_bytes: 1024 * 1024,
            exec_default_timeout_ms: 30_000,
            exec_max_timeout_ms: 600_000,
            max_upload_bytes: 256 * 1024 * 1024,
            idempotency_ttl_secs: 3600,
            not_ready_wait_ms: 10_000,
            gc_interval_ms: 30_000,
            docker: true,
            process_uid: 100_000,
            process_gid: 100_000,
            process_tmp_mib: 256,
            process_default_memory_mib: 2048,
            events_per_sandbox: 1_000,
            deleted_retention_secs: 7 * 24 * 3600,
            docker_default_memory_mib: 512,
            docker_default_pids: 256,
            docker_default_cpus: 1.0,
        }
    }
}

impl Config {
    /// Loads `path` (or `./wharf.toml` if present), then applies `WHARF_*` overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let default_path = Path::new("wharf.toml");
        let path = path.or_else(|| default_path.exists().then_some(default_path));
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        for value in config.packs.pins.values() {
            crate::packs::parse_pin(value).map_err(anyhow::Error::msg)?;
        }
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(listen) = var("WHARF_LISTEN") {
            self.listen = listen
                .parse()
                .with_context(|| format!("WHARF_LISTEN={listen:?} is not an address"))?;
        }
        if let Some(dir) = var("WHARF_DATA_DIR") {
            self.data_dir = dir.into();
        }
        if let Some(dir) = var("WHARF_PACKS_DIR") {
            self.packs_dir = Some(dir.into());
        }
        if let Some(key) = var("WHARF_ADMIN_KEY").filter(|k| !k.is_empty()) {
            self.admin_key = Some(key);
        }
        if let Some(token) = var("WHARF_METRICS_TOKEN").filter(|t| !t.is_empty()) {
            self.metrics.token = Some(token);
        }
        if let Some(key) = var("WHARF_PROBE_KEY").filter(|k| !k.is_empty()) {
            self.probes.encryption_key = Some(key);
        }
        if let Some(key) = var("WHARF_PLANNER_API_KEY").filter(|k| !k.is_empty()) {
            self.batches.planner.api_key = Some(key);
        }
        for (name, field) in [
            (
                "WHARF_PROBE_MAX_STEP_TIMEOUT_MS",
                &mut self.probes.max_step_timeout_ms,
            ),
            (
                "WHARF_PROBE_WARMUP_RETRY_MS",
                &mut self.probes.warmup_retry_ms,
            ),
            (
                "WHARF_PROBE_WARMUP_BACKOFF_MS",
                &mut self.probes.warmup_backoff_ms,
            ),
            ("WHARF_PROBE_TICK_MS", &mut self.probes.tick_ms),
        ] {
            if let Some(value) = var(name) {
                *field = value
                    .parse()
                    .with_context(|| format!("{name}={value:?} is not a number of milliseconds"))?;
            }
        }
        if let Some(value) = var("WHARF_PROBE_FAILURE_THRESHOLD") {
            self.probes.failure_threshold =
                value.parse().ok().filter(|n| *n >= 1).with_context(|| {
                    format!("WHARF_PROBE_FAILURE_THRESHOLD={value:?}: expected a whole number >= 1")
                })?;
        }
        if let Some(value) = var("WHARF_PROBES_ALLOW_PRIVATE_TARGETS") {
            self.probes.allow_private_targets = match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => anyhow::bail!(
                    "WHARF_PROBES_ALLOW_PRIVATE_TARGETS={other:?}: expected true or false"
                ),
            };
        }
        if let Some(format) = var("WHARF_LOG_FORMAT") {
            self.log_format = match format.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                other => anyhow::bail!("WHARF_LOG_FORMAT={other:?}: expected text or json"),
            };
        }
        for (pack, hosts) in &self.packs.http_grants {
            for host in hosts {
                anyhow::ensure!(
                    crate::packs::manifest::valid_host_entry(host),
                    "[packs] http_grants.{pack}: {host:?} must be a lowercase host name or IP \
                     address with an optional :port (no scheme, path or wildcard)"
                );
            }
        }
        Ok(())
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.packs_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("packs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_values() {
        let mut config: Config =
            toml::from_str("listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/wharf\"").unwrap();
        config
            .apply_env(|name| match name {
                "WHARF_LISTEN" => Some("0.0.0.0:7000".into()),
                "WHARF_PACKS_DIR" => Some("/packs".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(config.data_dir, PathBuf::from("/srv/wharf"));
        assert_eq!(config.packs_dir(), PathBuf::from("/packs"));
    }

    #[test]
    fn private_probe_targets_are_off_unless_allowed() {
        assert!(!Config::default().probes.allow_private_targets);
        let mut config: Config = toml::from_str("[probes]\nallow_private_targets = true").unwrap();
        assert!(config.probes.allow_private_targets);
        config
            .apply_env(|n| (n == "WHARF_PROBES_ALLOW_PRIVATE_TARGETS").then(|| "false".into()))
            .unwrap();
        assert!(!config.probes.allow_private_targets);
        let err = Config::default()
            .apply_env(|n| (n == "WHARF_PROBES_ALLOW_PRIVATE_TARGETS").then(|| "yes".into()))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("WHARF_PROBES_ALLOW_PRIVATE_TARGETS")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("listne = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn bad_env_value_is_a_clear_error() {
        let err = Config::default()
            .apply_env(|n| (n == "WHARF_LISTEN").then(|| "nope".into()))
            .unwrap_err();
        assert!(err.to_string().contains("WHARF_LISTEN"));
    }
}
