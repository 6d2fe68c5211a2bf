//! Sandbox records, ownership and lifecycle, backed by the store.
//!
//! State machine: `creating -> running <-> stopped`, any -> `failed` (with an
//! `error_code`) or `deleted`; a create whose driver fails goes straight to
//! `deleted` (the caller never got its id). One async lock per sandbox
//! serialises lifecycle transitions (create, start, stop, delete, recovery),
//! so concurrent requests never start two runtimes; idempotent creates are
//! decided by a unique row in `sandbox_idempotency`, which names only a
//! sandbox that exists. Creates are capped per owner (`[quotas]`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::profiles::{Profile, Profiles};
use super::{
    DirEntry, ExecLimits, ExecOutput, ExecRequest, FileDownload, FileUpload, SandboxDriver,
    SandboxPath, SandboxSpec, limit_stream, upload_too_large,
};
use crate::capabilities::secrets::{RequestSecrets, SecretMasker};
use crate::config::SandboxConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::store::keys::new_id;
use crate::store::sandboxes::{self as store_sandboxes, KeyClaim};
use crate::store::{Db, now_rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Creating,
    Running,
    Stopped,
    Failed,
    Deleted,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "deleted" => Self::Deleted,
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub owner: String,
    pub profile: String,
    pub driver: String,
    pub status: SandboxStatus,
    /// Why the sandbox failed (`failed` only).
    pub error_code: Option<String>,
    /// Times the runtime was restarted after dying.
    pub restarts: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// One entry of a sandbox's event log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SandboxEvent {
    /// Increases monotonically across all sandboxes; resume with `after=<seq>`.
    pub seq: i64,
    pub sandbox_id: String,
    pub ts: String,
    /// `created`, `started`, `exec`, `stopped`, `died`, `recovered`, `failed`, `deleted`, `gc`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A page of sandboxes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SandboxPage {
    pub items: Vec<Sandbox>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// How a create ended: a new sandbox, or the one its idempotency key names.
enum Created {
    New(Sandbox),
    Replay(String),
}

/// What the create's transaction decided.
enum Claim {
    /// The row is in: start the runtime with this driver.
    Fresh(Arc<dyn SandboxDriver>),
    /// The key names this sandbox.
    Replay(String),
}

/// The built-in profile served by the process driver.
pub const LOCAL_PROFILE: &str = "local";

/// Sandbox metrics (registered by the server).
pub struct SandboxMetrics {
    /// GC and recovery actions by kind (`idle_stopped`, `expired`, `orphan_removed`, `recovered`,
    /// `failed`, `interrupted`), and rows removed by retention (`idempotency_keys_purged`,
    /// `deleted_purged`, `events_trimmed`).
    pub gc_actions: prometheus::IntCounterVec,
    /// Sandboxes by status, as of the last GC sweep.
    pub sandboxes: prometheus::IntGaugeVec,
    /// Sandbox operations by driver and operation.
    pub operations: prometheus::IntCounterVec,
}

impl SandboxMetrics {
    fn new() -> Self {
        Self {
            gc_actions: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "wharf_sandbox_gc_actions_total",
                    "Sandbox GC and recovery actions",
                ),
                &["action"],
            )
            .expect("valid metric"),
            sandboxes: prometheus::IntGaugeVec::new(
                prometheus::Opts::new("wharf_sandboxes", "Sandboxes by status"),
                &["status"],
            )
            .expect("valid metric"),
            operations: prometheus::IntCounterVec::new(
                prometheus::Opts::new("wharf_sandbox_operations_total", "Sandbox operations"),
                &["driver", "operation"],
            )
            .expect("valid metric"),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.gc_actions.clone()),
            Box::new(self.sandboxes.clone()),
            Box::new(self.operations.clone()),
        ]
    }
}

pub struct Sandboxes {
    pub(super) db: Db,
    drivers: HashMap<&'static str, Arc<dyn SandboxDriver>>,
    pub(super) config: SandboxConfig,
    profiles: Profiles,
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events_seq: tokio::sync::watch::Sender<i64>,
    /// The newest event seq that GC's retention pass has looked at.
    pub(super) events_trimmed_through: std::sync::atomic::AtomicI64,
    pub metrics: SandboxMetrics,
}

/// The largest file a plugin reads whole (`read-file`); larger ones are
/// `payload_too_large`, and an adapter reads them in ranges with an exec.
pub const PLUGIN_READ_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// One sandbox as a plugin call sees it: the `sandbox` imports are bound to it
/// and to nothing else. Its host calls count like direct calls: each is a sandbox
/// operation in the metrics, an exec is an `exec` event, and each pushes back the idle
/// deadline.
#[derive(Clone)]
pub struct SandboxBinding {
    pub sandbox_id: String,
    /// The sandbox's owner: plugin calls bound to it run (and log) on its behalf.
    owner: String,
    driver: Arc<dyn SandboxDriver>,
    service: Arc<Sandboxes>,
    limits: ExecLimits,
    env: Vec<(String, String)>,
    /// The profile's and the request's secret values: masked in plugin log lines.
    masker: SecretMasker,
    /// `capability.operation` of the call, named in the events it causes.
    via: String,
}

impl SandboxBinding {
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn driver(&self) -> &Arc<dyn SandboxDriver> {
        &self.driver
    }

    pub fn masker(&self) -> &SecretMasker {
        &self.masker
    }

    /// Applies the configured default and cap to a requested timeout.
    pub fn exec_timeout(&self, requested_ms: Option<u64>) -> Duration {
        self.service.config.exec_timeout(requested_ms)
    }

    pub fn output_cap(&self) -> usize {
        self.service.config.exec_output_cap_bytes
    }

    /// Counts one host call like the direct route that does the same.
    async fn account(&self, operation: &str) {
        self.service.count(self.driver.name(), operation);
        self.service.touch(&self.sandbox_id).await;
    }

    pub async fn exec(&self, mut request: ExecRequest) -> WharfResult<ExecOutput> {
        let mut env = self.env.clone();
        env.append(&mut request.env);
        request.env = env;
        request.limits = self.limits.clone();
        let program = request.argv.first().cloned().unwrap_or_default();
        self.service.count(self.driver.name(), "exec");
        let output = self.driver.exec(&self.sandbox_id, request).await?;
        self.service
            .exec_events(
                &self.sandbox_id,
                &program,
                &output,
                &self.masker,
                Some(&self.via),
            )
            .await;
        self.service.touch(&self.sandbox_id).await;
        Ok(output)
    }

    /// A whole file, for a plugin: at most [`PLUGIN_READ_MAX_BYTES`] (and
    /// `max_upload_bytes`), refused with `payload_too_large` before any byte
    /// is read. The bytes land in the plugin's memory, so a larger file would
    /// trap it (and count against its circuit) instead of being refused.
    pub async fn read_file(&self, path: &SandboxPath) -> WharfResult<Vec<u8>> {
        self.account("read_file").await;
        let download = self.driver.read_file(&self.sandbox_id, path).await?;
        let limit = (self.service.config.max_upload_bytes as u64).min(PLUGIN_READ_MAX_BYTES);
        download.collect(limit).await
    }

    /// At most `length` bytes of a file from `offset`, for a plugin: fewer only at the end
    /// of the file, none past it. The rest of the file streams by and is dropped, so memory
    /// holds only the slice. A `length` over `max_upload_bytes` is `payload_too_large`.
    pub async fn read_file_range(
        &self,
        path: &SandboxPath,
        offset: u64,
        length: u64,
    ) -> WharfResult<Vec<u8>> {
        let limit = self.service.config.max_upload_bytes as u64;
        if length > limit {
            return Err(WharfError::new(
                ErrorCode::PayloadTooLarge,
                format!("a plugin reads at most {limit} bytes at a time; {length} were asked"),
            ));
        }
        use futures::StreamExt;
        let mut download = self.driver.read_file(&self.sandbox_id, path).await?;
        let want = length.min(download.size.saturating_sub(offset)) as usize;
        let mut skip = offset;
        let mut slice = Vec::with_capacity(want);
        while slice.len() < want {
            let Some(chunk) = download.body.next().await else {
                break;
            };
            let chunk = chunk?;
            let from = skip.min(chunk.len() as u64) as usize;
            skip -= from as u64;
            let take = (want - slice.len()).min(chunk.len() - from);
            slice.extend_from_slice(&chunk[from..from + take]);
        }
        Ok(slice)
    }

    /// Kind and size of `path` (a symbolic link is reported as one, not followed), read
    /// from its parent's listing, which every driver serves.
    pub async fn stat(&self, path: &SandboxPath) -> WharfResult<super::DirEntry> {
        let (Some(parent), Some(name)) = (path.as_path().parent(), path.as_path().file_name())
        else {
            return Ok(super::DirEntry {
                name: String::new(),
                kind: super::EntryKind::Directory,
                size: 0,
            });
        };
        let parent = SandboxPath::parse(&parent.to_string_lossy())?;
        let missing = || WharfError::new(ErrorCode::FileNotFound, format!("{path}: no such file"));
        let entries = match self.driver.list_dir(&self.sandbox_id, &parent).await {
            Ok(entries) => entries,
            // A parent that is missing or is not a directory holds no such path.
            Err(err)
                if matches!(
                    err.code,
                    ErrorCode::FileNotFound | ErrorCode::ValidationError
                ) =>
            {
                return Err(missing());
            }
            Err(err) => return Err(err),
        };
        entries
            .into_iter()
            .find(|entry| std::ffi::OsStr::new(&entry.name) == name)
            .ok_or_else(missing)
    }

    /// Replaces a file with `data`, for a plugin (at most `max_upload_bytes`).
    pub async fn write_file(&self, path: &SandboxPath, data: Vec<u8>) -> WharfResult<()> {
        let limit = self.service.config.max_upload_bytes as u64;
        if data.len() as u64 > limit {
            return Err(upload_too_large(limit));
        }
        self.account("write_file").await;
        self.driver
            .write_file(&self.sandbox_id, path, FileUpload::from_bytes(data))
            .await
            .map(|_| ())
    }

    pub async fn list_dir(&self, path: &SandboxPath) -> WharfResult<Vec<DirEntry>> {
        self.account("list_dir").await;
        self.driver.list_dir(&self.sandbox_id, path).await
    }

    pub async fn remove(&self, path: &SandboxPath, recursive: bool) -> WharfResult<()> {
        self.account("remove").await;
        self.driver.remove(&self.sandbox_id, path, recursive).await
    }
}

/// An exec as the API receives it.
#[derive(Debug, Clone, Default)]
pub struct ExecInput {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Secret variables of this request: set like `env`, and masked in its output.
    pub secrets: RequestSecrets,
    pub cwd: Option<SandboxPath>,
    pub stdin: Option<Vec<u8>>,
    pub timeout_ms: Option<u64>,
    pub sink: Option<super::OutputSink>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sandboxes {
    pub fn new(
        db: Db,
        drivers: Vec<Arc<dyn SandboxDriver>>,
        config: SandboxConfig,
        profiles: Profiles,
    ) -> Self {
        let drivers = drivers
            .into_iter()
            .map(|driver| (driver.name(), driver))
            .collect();
        Self {
            db,
            drivers,
            config,
            profiles,
            locks: parking_lot::Mutex::new(HashMap::new()),
            events_seq: tokio::sync::watch::channel(0).0,
            events_trimmed_through: std::sync::atomic::AtomicI64::new(0),
            metrics: SandboxMetrics::new(),
        }
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    pub(super) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_string()).or_default().clone()
    }

    /// Drops the lock of a sandbox that is gone (or never was), so the map
    /// holds only live sandboxes.
    pub(super) fn forget_lock(&self, id: &str) {
        self.locks.lock().remove(id);
    }

    pub(super) fn driver(&self, name: &str) -> WharfResult<Arc<dyn SandboxDriver>> {
        self.drivers.get(name).cloned().ok_or_else(|| {
            WharfError::new(
                ErrorCode::DriverUnavailable,
                format!("the {name} sandbox driver is not available on this host"),
            )
        })
    }

    pub(super) fn drivers(&self) -> impl Iterator<Item = &Arc<dyn SandboxDriver>> {
        self.drivers.values()
    }

    /// Creates a sandbox. With an idempotency key, the same key and
    /// fingerprint return the first sandbox while it exists (`true`: a
    /// replay); another fingerprint is `idempotency_conflict`. A key whose
    /// sandbox is gone (deleted, or its create failed) is forgotten: the next
    /// request with it creates anew. `quota` caps the owner's sandboxes that
    /// are not deleted (`None`: no cap, for admin keys).
    pub async fn create(
        &self,
        owner: &str,
        profile_name: &str,
        idempotency: Option<(&str, &str)>,
        quota: Option<u32>,
    ) -> WharfResult<(Sandbox, bool)> {
        // A replay may find its sandbox gone once it is ready (its create
        // failed, or it was deleted meanwhile): the key is free again, so the
        // create is tried again, a bounded number of times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let existing = match self
                .create_once(&new_id("sbx"), owner, profile_name, idempotency, quota)
                .await?
            {
                Created::New(sandbox) => return Ok((sandbox, false)),
                Created::Replay(existing) => existing,
            };
            match self.wait_ready(owner, &existing).await {
                Ok(sandbox) => return Ok((sandbox, true)),
                Err(err) if err.code == ErrorCode::NotFound && attempts < 3 => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Creates a sandbox under an id the caller made with [`new_id`]`("sbx")`, without an
    /// idempotency key: the caller can record the id before the sandbox exists, and so find
    /// (and delete) it after a crash in the middle of the create.
    pub async fn create_with_id(
        &self,
        id: &str,
        owner: &str,
        profile_name: &str,
        quota: Option<u32>,
    ) -> WharfResult<Sandbox> {
        match self
            .create_once(id, owner, profile_name, None, quota)
            .await?
        {
            Created::New(sandbox) => Ok(sandbox),
            Created::Replay(_) => Err(WharfError::internal(
                "a create without an idempotency key replayed",
            )),
        }
    }

    async fn create_once(
        &self,
        id: &str,
        owner: &str,
        profile_name: &str,
        idempotency: Option<(&str, &str)>,
        quota: Option<u32>,
    ) -> WharfResult<Created> {
        let profile = self.profiles.get(profile_name)?;
        let id = id.to_string();
        let lock = self.lock_for(&id);
        let guard = lock.lock_owned().await;
        let now = now_ms();
        let driver = match self
            .insert_creating(&id, owner, &profile, idempotency, quota, now)
            .await
        {
            Ok(Claim::Fresh(driver)) => driver,
            Ok(Claim::Replay(existing)) => {
                drop(guard);
                self.forget_lock(&id);
                return Ok(Created::Replay(existing));
            }
            Err(err) => {
                drop(guard);
                self.forget_lock(&id);
                return Err(err);
            }
        };
        self.event(
            &id,
            "created",
            serde_json::json!({"profile": profile.name, "driver": driver.name()}),
        )
        .await;
        self.metrics
            .operations
            .with_label_values(&[driver.name(), "create"])
            .inc();
        let spec = SandboxSpec {
            owner: owner.to_string(),
            profile,
        };
        if let Err(err) = driver.create(&id, &spec).await {
            // The driver left nothing behind, and the caller gets the error,
            // never this id: the sandbox is deleted at once (its event log
            // says why), so it frees its idempotency key and quota slot.
            self.transition(
                &id,
                SandboxStatus::Deleted,
                Some(err.code.as_str()),
                "failed",
                serde_json::json!({"error_code": err.code.as_str(), "message": err.message, "removed": true}),
            )
            .await?;
            drop(guard);
            self.forget_lock(&id);
            return Err(err);
        }
        self.transition(
            &id,
            SandboxStatus::Running,
            None,
            "started",
            serde_json::json!({}),
        )
        .await?;
        drop(guard);
        Ok(Created::New(self.get(owner, &id).await?))
    }

    /// Decides the idempotency key and the quota, and records the new
    /// sandbox as `creating`, in one transaction: a refused create leaves no
    /// row and no key.
    async fn insert_creating(
        &self,
        id: &str,
        owner: &str,
        profile: &Profile,
        idempotency: Option<(&str, &str)>,
        quota: Option<u32>,
        now: i64,
    ) -> WharfResult<Claim> {
        let stamp = now_rfc3339();
        let mut tx = self.db.begin().await?;
        if let Some((key, fingerprint)) = idempotency {
            let ttl_ms = (self.config.idempotency_ttl_secs * 1000) as i64;
            let claim = store_sandboxes::claim_idempotency_key(
                &mut tx,
                owner,
                key,
                fingerprint,
                id,
                now,
                ttl_ms,
            )
            .await?;
            if let KeyClaim::Taken {
                fingerprint: first,
                sandbox_id,
            } = claim
            {
                tx.rollback().await?;
                if first != fingerprint {
                    return Err(WharfError::new(
                        ErrorCode::IdempotencyConflict,
                        "this Idempotency-Key was used with a different request body",
                    ));
                }
                return Ok(Claim::Replay(sandbox_id));
            }
        }
        // After the key is decided: a replay needs no driver; dropping `tx` rolls the key back.
        let driver = self.driver(&profile.driver)?;
        store_sandboxes::insert_creating(
            &mut tx,
            store_sandboxes::NewSandbox {
                id,
                owner,
                profile: &profile.name,
                driver: driver.name(),
                stamp: &stamp,
                now_ms: now,
                idle_timeout_secs: profile.idle_timeout_secs as i64,
                max_ttl_secs: profile.max_ttl_secs as i64,
                restart_once: profile.restart_once,
            },
        )
        .await?;
        // Counted after the insert, inside the write transaction: concurrent
        // creates of one owner cannot both take the last slot.
        if let Some(quota) = quota {
            let held = store_sandboxes::count_held(&mut tx, owner).await?;
            if held > i64::from(quota) {
                tx.rollback().await?;
                return Err(WharfError::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "this owner already holds {} sandboxes (creating, running, stopped or failed), the most its quota allows; delete one to create another",
                        held - 1
                    ),
                ));
            }
        }
        tx.commit().await?;
        Ok(Claim::Fresh(driver))
    }

    /// Moves a sandbox to `status` and records the event that says why, in
    /// one transaction: a reader who sees the status also finds the event.
    pub(super) async fn transition(
        &self,
        id: &str,
        status: SandboxStatus,
        error_code: Option<&str>,
        kind: &str,
        detail: serde_json::Value,
    ) -> WharfResult<()> {
        let stamp = now_rfc3339();
        let mut tx = self.db.begin().await?;
        store_sandboxes::set_status(&mut tx, id, status.as_str(), error_code, &stamp, now_ms())
            .await?;
        if status == SandboxStatus::Deleted {
            // A key must not name a sandbox that is gone: a replay creates anew.
            store_sandboxes::forget_idempotency_keys(&mut tx, id).await?;
        }
        let seq =
            store_sandboxes::append_event(&mut tx, id, &stamp, kind, &detail.to_string()).await?;
        tx.commit().await?;
        self.events_seq.send_replace(seq);
        Ok(())
    }

    /// Appends to a sandbox's event log and wakes streaming readers.
    pub(super) async fn event(&self, sandbox_id: &str, kind: &str, detail: serde_json::Value) {
        let result = async {
            let mut conn = self.db.acquire().await?;
            store_sandboxes::append_event(
                &mut conn,
                sandbox_id,
                &now_rfc3339(),
                kind,
                &detail.to_string(),
            )
            .await
        }
        .await;
        match result {
            Ok(seq) => {
                self.events_seq.send_replace(seq);
            }
            Err(err) => {
                tracing::error!(sandbox = sandbox_id, error = %err, "cannot record sandbox event")
            }
        }
    }

    pub(crate) async fn touch(&self, id: &str) {
        let _ = store_sandboxes::touch(&self.db, id, now_ms()).await;
    }

    /// The caller's sandbox; another owner's is `not_found`, never `forbidden`.
    pub async fn get(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        let row = store_sandboxes::get_live(&self.db, owner, id)
            .await?
            .ok_or_else(|| WharfError::not_found(format!("sandbox {id}")))?;
        Ok(sandbox_from_row(row))
    }

    /// Waits (bounded) while the sandbox is `creating`; then `session_not_ready`.
    pub async fn wait_ready(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        let sandbox = self.get(owner, id).await?;
        if sandbox.status != SandboxStatus::Creating {
            return Ok(sandbox);
        }
        let lock = self.lock_for(id);
        let wait = Duration::from_millis(self.config.not_ready_wait_ms);
        let not_ready = || {
            WharfError::new(
                ErrorCode::SessionNotReady,
                format!("sandbox {id} is still starting"),
            )
            .with_retry_after(Duration::from_millis(1000))
        };
        match tokio::time::timeout(wait, lock.lock()).await {
            Ok(guard) => drop(guard),
            Err(_) => return Err(not_ready()),
        }
        let sandbox = self.get(owner, id).await?;
        if sandbox.status == SandboxStatus::Creating {
            return Err(not_ready());
        }
        Ok(sandbox)
    }

    /// The sandbox, running, with its profile and driver, for an operation
    /// that needs `capability`. The capability is checked before anything is
    /// started; a stopped sandbox is started again.
    pub async fn prepare(
        &self,
        owner: &str,
        id: &str,
        capability: &str,
    ) -> WharfResult<(Sandbox, Profile, Arc<dyn SandboxDriver>)> {
        let sandbox = self.get(owner, id).await?;
        let profile = self.profiles.get(&sandbox.profile).map_err(|_| {
            WharfError::new(
                ErrorCode::Conflict,
                format!(
                    "the profile {:?} of sandbox {id} is no longer defined (removed from wharf.toml, or with its pack); the sandbox can only be stopped or deleted",
                    sandbox.profile
                ),
            )
        })?;
        profile.require(capability)?;
        let sandbox = self.ensure_running(owner, id).await?;
        let driver = self.driver(&sandbox.driver)?;
        self.touch(id).await;
        Ok((sandbox, profile, driver))
    }

    async fn ensure_running(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        let sandbox = self.wait_ready(owner, id).await?;
        match sandbox.status {
            SandboxStatus::Running => Ok(sandbox),
            SandboxStatus::Stopped => self.start(owner, id).await,
            SandboxStatus::Failed => Err(WharfError::new(
                ErrorCode::Conflict,
                format!(
                    "sandbox {id} failed ({}); delete it and create another",
                    sandbox.error_code.as_deref().unwrap_or("unknown")
                ),
            )),
            SandboxStatus::Creating | SandboxStatus::Deleted => {
                Err(WharfError::not_found(format!("sandbox {id}")))
            }
        }
    }

    pub async fn start(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        self.wait_ready(owner, id).await?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let sandbox = self.get(owner, id).await?;
        match sandbox.status {
            SandboxStatus::Running => return Ok(sandbox),
            SandboxStatus::Stopped => {}
            status => {
                return Err(WharfError::new(
                    ErrorCode::Conflict,
                    format!("sandbox {id} is {}; it cannot be started", status.as_str()),
                ));
            }
        }
        let driver = self.driver(&sandbox.driver)?;
        driver.start(id).await?;
        self.transition(
            id,
            SandboxStatus::Running,
            None,
            "started",
            serde_json::json!({"reason": "start"}),
        )
        .await?;
        self.get(owner, id).await
    }

    pub async fn stop(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        self.wait_ready(owner, id).await?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let sandbox = self.get(owner, id).await?;
        match sandbox.status {
            SandboxStatus::Stopped => return Ok(sandbox),
            SandboxStatus::Running => {}
            status => {
                return Err(WharfError::new(
                    ErrorCode::Conflict,
                    format!("sandbox {id} is {}; it cannot be stopped", status.as_str()),
                ));
            }
        }
        self.driver(&sandbox.driver)?.stop(id).await?;
        self.transition(
            id,
            SandboxStatus::Stopped,
            None,
            "stopped",
            serde_json::json!({"reason": "request"}),
        )
        .await?;
        self.get(owner, id).await
    }

    /// Pushes the idle deadline back.
    pub async fn keepalive(&self, owner: &str, id: &str) -> WharfResult<Sandbox> {
        self.get(owner, id).await?;
        self.touch(id).await;
        self.get(owner, id).await
    }

    pub async fn list(
        &self,
        owner: &str,
        status: Option<SandboxStatus>,
        profile: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> WharfResult<SandboxPage> {
        // The cursor is `<created_ms>.<id>` of the last row given: an explicit key, so pages
        // stay stable under concurrent creates and deletes.
        let after = match cursor {
            Some(text) => Some(
                text.split_once('.')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
                    .filter(|(_, id)| !id.is_empty())
                    .ok_or_else(|| WharfError::validation("cursor is not one this server gave"))?,
            ),
            None => None,
        };
        let limit = limit.clamp(1, 500);
        let mut rows = store_sandboxes::list_page(
            &self.db,
            owner,
            after,
            status.map(|s| s.as_str()),
            profile,
            limit as i64 + 1,
        )
        .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last()
                .map(|row| format!("{}.{}", row.created_ms, row.id))
        } else {
            None
        };
        Ok(SandboxPage {
            items: rows.into_iter().map(sandbox_from_row).collect(),
            next_cursor,
        })
    }

    pub async fn delete(&self, owner: &str, id: &str) -> WharfResult<()> {
        let _ = self.wait_ready(owner, id).await;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let sandbox = self.get(owner, id).await?;
        self.driver(&sandbox.driver)?.destroy(id).await?;
        self.transition(
            id,
            SandboxStatus::Deleted,
            None,
            "deleted",
            serde_json::json!({"reason": "request"}),
        )
        .await?;
        self.forget_lock(id);
        Ok(())
    }

    /// Runs a command; its output comes back with the profile's and the request's secret
    /// values masked. Streamed chunks (`input.sink`) are raw: the streaming route masks
    /// each line record with [`Sandboxes::masker`].
    pub async fn exec(&self, owner: &str, id: &str, input: ExecInput) -> WharfResult<ExecOutput> {
        let (sandbox, profile, driver) = self.prepare(owner, id, "exec").await?;
        if input.argv.is_empty() {
            return Err(WharfError::validation(
                "give `argv` (non-empty) or `command`",
            ));
        }
        let masker = Self::masker(&profile, &input.secrets);
        let mut env = profile.full_env();
        env.extend(input.secrets.env());
        env.extend(input.env);
        let program = input.argv[0].clone();
        let request = ExecRequest {
            argv: input.argv,
            env,
            cwd: input.cwd,
            stdin: input.stdin,
            timeout: self.config.exec_timeout(input.timeout_ms),
            output_cap: self.config.exec_output_cap_bytes,
            sink: input.sink,
            limits: profile.exec_limits(),
        };
        self.count(driver.name(), "exec");
        let mut output = driver
            .exec(&sandbox.id, request)
            .await
            .map_err(|err| masker.mask_error(err))?;
        self.exec_events(id, &program, &output, &masker, None).await;
        self.touch(id).await;
        output.stdout = masker.mask_bytes(output.stdout);
        output.stderr = masker.mask_bytes(output.stderr);
        Ok(output)
    }

    /// The masker for a sandbox of `profile` and a request's secrets.
    pub fn masker(profile: &Profile, secrets: &RequestSecrets) -> SecretMasker {
        SecretMasker::new(profile.secret_values().chain(secrets.values()))
    }

    /// The profile of the caller's sandbox (for its secrets and policies).
    pub async fn profile_of(&self, owner: &str, id: &str) -> WharfResult<Profile> {
        let sandbox = self.get(owner, id).await?;
        self.profiles.get(&sandbox.profile)
    }

    pub(crate) fn count(&self, driver: &str, operation: &str) {
        self.metrics
            .operations
            .with_label_values(&[driver, operation])
            .inc();
    }

    /// The `exec` event (and `oom_killed`) of one exec; `via` names the capability
    /// operation that made it. Only the program name: arguments and environment may carry
    /// secrets, and even the name is masked.
    async fn exec_events(
        &self,
        id: &str,
        program: &str,
        output: &ExecOutput,
        masker: &SecretMasker,
        via: Option<&str>,
    ) {
        let program = masker.mask(program).into_owned();
        let mut detail = serde_json::json!({
            "program": program,
            "exit_code": output.exit_code,
            "timed_out": output.timed_out,
            "oom_killed": output.oom_killed,
            "duration_ms": output.duration.as_millis() as u64,
        });
        if let Some(via) = via {
            detail["via"] = via.into();
        }
        self.event(id, "exec", detail).await;
        if output.oom_killed {
            self.event(id, "oom_killed", serde_json::json!({"program": program}))
                .await;
        }
    }

    /// Records a sandbox event on behalf of another subsystem (capability calls, approvals).
    pub async fn record_event(&self, id: &str, kind: &str, detail: serde_json::Value) {
        self.event(id, kind, detail).await;
    }

    pub async fn read_file(
        &self,
        owner: &str,
        id: &str,
        path: &SandboxPath,
    ) -> WharfResult<FileDownload> {
        let (_, _, driver) = self.prepare(owner, id, "files").await?;
        self.count(driver.name(), "read_file");
        driver.read_file(id, path).await
    }

    /// Streams an upload into the file; past `max_upload_bytes` it fails with
    /// `payload_too_large` and the old file stays.
    pub async fn write_file(
        &self,
        owner: &str,
        id: &str,
        path: &SandboxPath,
        mut upload: FileUpload,
    ) -> WharfResult<u64> {
        let limit = self.config.max_upload_bytes as u64;
        if upload.declared_size.is_some_and(|size| size > limit) {
            return Err(upload_too_large(limit));
        }
        let (_, _, driver) = self.prepare(owner, id, "files").await?;
        self.count(driver.name(), "write_file");
        upload.body = limit_stream(upload.body, limit);
        driver.write_file(id, path, upload).await
    }

    pub async fn list_dir(
        &self,
        owner: &str,
        id: &str,
        path: &SandboxPath,
    ) -> WharfResult<Vec<DirEntry>> {
        let (_, _, driver) = self.prepare(owner, id, "files").await?;
        self.count(driver.name(), "list_dir");
        driver.list_dir(id, path).await
    }

    pub async fn mkdir(&self, owner: &str, id: &str, path: &SandboxPath) -> WharfResult<()> {
        let (_, _, driver) = self.prepare(owner, id, "files").await?;
        self.count(driver.name(), "mkdir");
        driver.mkdir(id, path).await
    }

    pub async fn remove(
        &self,
        owner: &str,
        id: &str,
        path: &SandboxPath,
        recursive: bool,
    ) -> WharfResult<()> {
        let (_, _, driver) = self.prepare(owner, id, "files").await?;
        self.count(driver.name(), "remove");
        driver.remove(id, path, recursive).await
    }

    /// Events of the caller's sandbox (deleted ones included) after `after`.
    pub async fn events(
        &self,
        owner: &str,
        id: &str,
        after: i64,
        limit: usize,
    ) -> WharfResult<Vec<SandboxEvent>> {
        if !store_sandboxes::is_owned(&self.db, owner, id).await? {
            return Err(WharfError::not_found(format!("sandbox {id}")));
        }
        let rows =
            store_sandboxes::events_after(&self.db, id, after, limit.clamp(1, 1000) as i64).await?;
        Ok(rows
            .into_iter()
            .map(|row| SandboxEvent {
                seq: row.seq,
                sandbox_id: row.sandbox_id,
                ts: row.ts,
                kind: row.kind,
                detail: serde_json::from_str(&row.detail).unwrap_or_default(),
            })
            .collect())
    }

    /// The image digest of the caller's sandbox, when its driver runs images.
    pub async fn image_digest(&self, owner: &str, id: &str) -> Option<String> {
        let sandbox = self.get(owner, id).await.ok()?;
        self.driver(&sandbox.driver).ok()?.image_digest(id).await
    }

    /// Changes whenever an event is recorded.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<i64> {
        self.events_seq.subscribe()
    }

    /// Binds a running sandbox for a plugin call of `operation` (`capability.operation`,
    /// which the profile must allow), with the request's secret variables added to every
    /// exec the plugin makes.
    pub async fn bind(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        operation: &str,
        secrets: &RequestSecrets,
    ) -> WharfResult<SandboxBinding> {
        let (sandbox, profile, driver) = self.prepare(owner, id, operation).await?;
        let mut env = profile.full_env();
        env.extend(secrets.env());
        Ok(SandboxBinding {
            sandbox_id: sandbox.id,
            owner: sandbox.owner,
            driver,
            service: self.clone(),
            limits: profile.exec_limits(),
            env,
            masker: Self::masker(&profile, secrets),
            via: operation.to_string(),
        })
    }

    /// What the process driver confines on this host.
    pub fn process_isolation(&self) -> Option<super::isolation::IsolationStatus> {
        self.drivers
            .get("process")
            .and_then(|driver| driver.isolation())
    }

    pub fn driver_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.drivers.keys().copied().collect();
        names.sort();
        names
    }
}

fn sandbox_from_row(row: store_sandboxes::SandboxRow) -> Sandbox {
    Sandbox {
        status: SandboxStatus::parse(&row.status),
        id: row.id,
        owner: row.owner,
        profile: row.profile,
        driver: row.driver,
        error_code: row.error_code,
        restarts: row.restarts,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}
