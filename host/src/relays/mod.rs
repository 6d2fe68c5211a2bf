//! Relay hosts and imports (seed 003): provider keys imported into a relay host (sub2api;
//! one-api and new-api are the same kind of thing) through its host adapter plugin, proven by
//! real traffic through the relay, recorded so they can be rolled back and reconciled.
//!
//! - **Hosts** (`POST /v1/hosts`): the adapter of the kind must `detect` the host with the admin
//!   token before it is registered; the token is sealed (the probes' sealing, the host id as
//!   context) and shown only as a fingerprint. A host with live imports or recorded resources
//!   cannot be deleted (`host_in_use`).
//! - **Imports** (`POST /v1/imports`) are runs of the run engine (kind `relay_import`, the run id
//!   is the import id) with one item per key. Each item: `plan-import` names the resources; for
//!   each, a write-ahead **intent** row is stored, then `ensure` runs, then the row records the
//!   host's id and the outcome. After a crash an intent is resumed by calling `ensure` again
//!   (the adapter finds the resource by its name: no duplicate); a resource the resumed call
//!   finds that no other import records is this import's, so nothing is left unrecorded.
//! - **Access closure**: a probe ([`ProbeRunner::run`]) through the relay's gateway with the
//!   managed key the adapter made, for the import's provider and model. `ready` only when it
//!   passes. The known windows right after an import (a 403 while the relay's key cache is
//!   stale, `503 no available accounts` while the account warms up) are ridden out by the
//!   **confirmation worker**: the item waits with `next_retry_at`, and a worker that takes its
//!   lease probes again, with doubling waits, within `[relays] confirm_window_ms`; then the
//!   final status is recorded with the probe's evidence (the upstream's message). When the
//!   gateway fails in a way that is not transient, the same key is probed direct to the
//!   upstream: a failure there (a revoked key: `upstream_auth`) is the item's class; a pass
//!   means the relay serves the provider wrongly (seed 003's Responses routing), so the
//!   adapter's `repair` runs once, is recorded, and the gateway is probed again.
//! - **Rollback** deletes exactly the resources the import recorded as `created`, newest first;
//!   one that another import still records stays. Nothing without a record is ever deleted.
//! - **Reconcile** (on demand and every `[relays] reconcile_interval_secs`) compares the records
//!   with the adapter's `list` of `wharf-` resources: `in_sync`, or `drifted` with what is
//!   missing, changed (e.g. disabled by hand) or unmanaged; and re-probes ready items. It only
//!   reads and probes: it never enables what an operator disabled.

pub mod adapter;
pub mod client;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use self::adapter::{Adapter, HostAccess, ImportItem, Resource, ResourceRequest, outcome_name};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::jobs::log::Level;
use crate::jobs::{RetryPolicy, Run, RunEngine, RunKind, RunState, Stream, now_ms};
use crate::outbound::{BaseUrl, ClientOptions, OutboundClient, Reach};
use crate::packs::Packs;
use crate::probes::crypto::{SecretBox, fingerprint, redact};
use crate::probes::runner::{ProbeRequest, ProbeResult, ProbeRunner};
use crate::store::keys::Principal;
use crate::store::relays::{self as store, HostRow, ImportRow, ItemRow, ResourceRow};
use crate::store::{Db, rfc3339_from_ms};

/// The prefix of every resource name Wharf gives a relay host (reconcile lists by it).
pub const NAME_PREFIX: &str = "wharf-";
/// Evidence events kept per item (the oldest go first).
const EVIDENCE_CAP: usize = 60;
/// Characters of a step preview kept in evidence.
const PREVIEW_CHARS: usize = 300;

/// `[relays]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaysConfig {
    /// Most keys in one import.
    pub max_keys_per_import: usize,
    /// Items of one import worked on at once.
    pub item_concurrency: usize,
    /// How long after an item's first failing probe the confirmation worker keeps probing it
    /// (a 403 right after the import, `503 no available accounts` during warm-up).
    pub confirm_window_ms: u64,
    /// First wait between confirmation probes (doubling, capped at `confirm_max_backoff_ms`).
    pub confirm_backoff_ms: u64,
    pub confirm_max_backoff_ms: u64,
    /// How often the confirmation worker looks for due items.
    pub confirm_poll_ms: u64,
    /// How long a confirmation worker holds an item it probes.
    pub confirm_lease_ms: u64,
    /// Items probed by confirmation at once, over all imports.
    pub confirm_concurrency: usize,
    /// Period of the scheduled reconcile of each host; 0 turns it off (on demand only).
    pub reconcile_interval_secs: u64,
}

impl Default for RelaysConfig {
    fn default() -> Self {
        Self {
            max_keys_per_import: 1_000,
            item_concurrency: 4,
            confirm_window_ms: 120_000,
            confirm_backoff_ms: 2_000,
            confirm_max_backoff_ms: 30_000,
            confirm_poll_ms: 500,
            confirm_lease_ms: 120_000,
            confirm_concurrency: 8,
            reconcile_interval_secs: 600,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API types

/// `POST /v1/hosts`. `admin_token` is a secret: no `Debug`, no `Serialize`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHost {
    /// The adapter kind, e.g. `sub2api` (`GET /v1/packs` lists the loaded ones).
    pub kind: String,
    /// The relay's root URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The relay's admin token; sealed at rest, sent only to `base_url`'s origin.
    pub admin_token: String,
}

/// A registered relay host.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Host {
    /// `rh_...`
    pub id: String,
    pub kind: String,
    pub base_url: String,
    /// The relay's version as its adapter detected it.
    pub version: String,
    /// The relay's OpenAI-compatible gateway (access probes go there).
    pub gateway_base_url: String,
    /// The admin token's fingerprint (first 4 characters and a sha256 prefix).
    pub token_fingerprint: String,
    pub created_at: String,
    /// The last reconcile, if any.
    pub reconcile: Option<ReconcileReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    /// The relay's users reach the key through a subscription group.
    Subscription,
    /// The relay's users reach it with their own balance.
    SelfService,
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Subscription => "subscription",
            ImportMode::SelfService => "self_service",
        }
    }
}

/// `POST /v1/imports`. `api_keys` are secrets: no `Debug`, no `Serialize`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImport {
    pub host_id: String,
    /// Provider id from an active provider pack, e.g. `kimi`.
    pub provider: String,
    /// The upstream the relay's accounts call; default the provider's catalog base URL.
    pub base_url: Option<String>,
    /// One item per key. Sealed at rest; shown only as fingerprints.
    pub api_keys: Vec<String>,
    /// Models the accounts serve (aliases resolve); default every model of the provider's
    /// catalog, its smoke-test model first. The first is the one access probes use.
    pub models: Option<Vec<String>>,
    pub mode: ImportMode,
    /// Return the plan (what would be created, reused or changed) and touch nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// An import with its items.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Import {
    /// `imp_...`: also its run id.
    pub id: String,
    pub host_id: String,
    pub provider: String,
    pub upstream_base_url: String,
    pub mode: String,
    pub models: Vec<String>,
    pub family: String,
    /// `running`, `succeeded` (every item ready), `partially_succeeded`, `failed`,
    /// `rolled_back`.
    pub status: String,
    /// Items by `access_status`.
    pub counts: BTreeMap<String, i64>,
    pub created_at: String,
    pub ended_at: Option<String>,
    pub rolled_back_at: Option<String>,
    /// The run: state transitions and steps (each plan, ensure of an item).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
    /// Every resource this import recorded on the host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ManagedResource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub rollback: Option<Value>,
}

/// One key of an import.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Item {
    pub id: String,
    pub position: i64,
    pub key_fingerprint: String,
    /// The name prefix of this key's resources on the host.
    pub name: String,
    /// `pending`, `confirming` (waiting for a passing probe), `done`.
    pub phase: String,
    /// `created`, `reused`, `patch_only`, `replace` or `reactivated`.
    pub outcome: Option<String>,
    /// `pending`, `ready`, `failed`, or `degraded` (a reconcile's re-probe failed).
    pub access_status: String,
    /// The failure class: a probe verdict (`upstream_auth`, `relay_unavailable`,
    /// `host_compatibility_gap`, ...) or an error code (`relay_host_error`).
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Probes run for this item.
    pub attempts: i64,
    pub next_retry_at: Option<String>,
    /// The repair the adapter applied, if one was tried.
    pub repair: Option<String>,
    /// What was done and seen, oldest first: `ensure`, `probe` (with its steps), `repair`,
    /// `confirm_scheduled` events. Never a secret.
    #[schema(value_type = Vec<Object>)]
    pub evidence: Value,
}

/// A resource an import recorded on a host.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ManagedResource {
    pub kind: String,
    pub name: String,
    /// The host's id; null while only an intent.
    pub host_resource_id: Option<String>,
    /// `intent`, `created`, `reused`, `deleted`, `released`.
    pub state: String,
    pub outcome: Option<String>,
    pub shared: bool,
    pub status: Option<String>,
    pub item_id: String,
    pub seq: i64,
}

/// `POST /v1/imports` with `dry_run`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportPlan {
    pub dry_run: bool,
    pub host_id: String,
    pub provider: String,
    pub upstream_base_url: String,
    pub models: Vec<String>,
    pub family: String,
    pub items: Vec<PlannedItem>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlannedItem {
    pub position: i64,
    pub key_fingerprint: String,
    pub name: String,
    /// What the import would do: `created`, `reused`, `patch_only` or `reactivated`.
    pub outcome: String,
    pub resources: Vec<PlannedResource>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlannedResource {
    pub kind: String,
    pub name: String,
    pub shared: bool,
    /// `create` (absent), `reuse` (there as asked), `change` (there; `changed` lists the
    /// fields that differ), `reactivate` (there but not active).
    pub action: String,
    pub host_resource_id: Option<String>,
    pub host_status: Option<String>,
    pub changed: Vec<String>,
}

/// `POST /v1/imports/{id}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackReport {
    pub import_id: String,
    /// Deleted on the host (or already gone there), newest first.
    pub deleted: Vec<RolledBack>,
    /// Left on the host: another import still records it, or this import did not create it.
    pub kept: Vec<RolledBack>,
    /// Deletes the host refused; the record stays, so a later rollback tries again.
    pub failed: Vec<RolledBack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolledBack {
    pub kind: String,
    pub name: String,
    pub host_resource_id: Option<String>,
    pub reason: String,
}

/// The outcome of a reconcile.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReconcileReport {
    pub host_id: String,
    /// `in_sync` or `drifted`.
    pub status: String,
    pub at: String,
    /// Recorded but gone from the host.
    pub missing: Vec<Drift>,
    /// On the host, but not as recorded (e.g. disabled by hand). Wharf does not change it back.
    pub changed: Vec<Drift>,
    /// `wharf-` resources on the host that no import records.
    pub unmanaged: Vec<Drift>,
    /// Re-probes of ready items through the gateway.
    pub access: Vec<AccessCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drift {
    pub kind: String,
    pub name: String,
    pub host_resource_id: Option<String>,
    pub import_id: Option<String>,
    pub recorded_status: Option<String>,
    pub host_status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessCheck {
    pub import_id: String,
    pub item_id: String,
    pub key_fingerprint: String,
    pub verdict: String,
    pub detail: String,
}

// ---------------------------------------------------------------------------------------------
// The subsystem

/// What an item's work needs: its import, host and the host's access.
struct ItemContext {
    import: ImportRow,
    host: HostRow,
    access: HostAccess,
    models: Vec<String>,
    probe_model: Option<String>,
}

/// Relay hosts, imports, their confirmation worker and the reconcile schedule.
pub struct Relays {
    db: Db,
    engine: Arc<RunEngine>,
    packs: Arc<Packs>,
    runner: Arc<ProbeRunner>,
    secrets: SecretBox,
    outbound: Arc<OutboundClient>,
    config: RelaysConfig,
    allow_private: bool,
    /// Confirmation probes in flight, over all imports.
    confirming: Arc<tokio::sync::Semaphore>,
    /// Hosts being reconciled now (scheduled and on demand never overlap on one host).
    reconciling: parking_lot::Mutex<BTreeSet<String>>,
}

impl Relays {
    /// The subsystem: resumes the imports a previous process left running, starts the
    /// confirmation worker and the reconcile schedule.
    pub async fn start(
        db: Db,
        engine: Arc<RunEngine>,
        packs: Arc<Packs>,
        runner: Arc<ProbeRunner>,
        config: &crate::config::Config,
    ) -> anyhow::Result<Arc<Relays>> {
        let relays_config = config.relays.clone();
        anyhow::ensure!(
            relays_config.item_concurrency > 0 && relays_config.confirm_concurrency > 0,
            "[relays] item_concurrency and confirm_concurrency must be at least 1"
        );
        let secrets = SecretBox::load(config.probes.encryption_key.as_deref(), &config.data_dir)?;
        let outbound = Arc::new(OutboundClient::new(&ClientOptions {
            connect_timeout: Duration::from_secs(10),
            pool_max_idle_per_host: 8,
            user_agent: concat!("wharf-relay/", env!("CARGO_PKG_VERSION")).into(),
        })?);
        let relays = Arc::new(Relays {
            db,
            engine,
            packs,
            runner,
            secrets,
            outbound,
            confirming: Arc::new(tokio::sync::Semaphore::new(
                relays_config.confirm_concurrency,
            )),
            config: relays_config,
            allow_private: config.probes.allow_private_targets,
            reconciling: parking_lot::Mutex::new(BTreeSet::new()),
        });
        relays
            .recover()
            .await
            .map_err(|err| anyhow::anyhow!("recovering relay imports: {}", err.message))?;
        spawn_confirmation_worker(&relays);
        spawn_reconcile_schedule(&relays);
        Ok(relays)
    }

    pub fn config(&self) -> &RelaysConfig {
        &self.config
    }

    // -- hosts ---------------------------------------------------------------------------------

    /// Registers a host once its adapter detected it with the token.
    pub async fn create_host(&self, caller: &Principal, spec: CreateHost) -> WharfResult<Host> {
        let base = BaseUrl::parse(spec.base_url.trim())
            .map_err(|err| WharfError::validation(format!("`base_url`: {err}")))?;
        let token = spec.admin_token.trim().to_string();
        if token.len() < 4 || token.len() > 4096 || token.chars().any(char::is_control) {
            return Err(WharfError::validation(
                "`admin_token` must be 4 to 4096 characters without control characters",
            ));
        }
        let reach = Reach::for_caller(caller.admin, self.allow_private);
        self.outbound
            .check_target(&base, reach)
            .await
            .map_err(|refused| {
                WharfError::new(
                    ErrorCode::TargetNotAllowed,
                    format!("`base_url`: {refused}"),
                )
            })?;
        let adapter = self.adapter(&spec.kind)?;
        let access = HostAccess {
            base_url: base.as_url().to_string().trim_end_matches('/').to_string(),
            token: token.clone(),
            reach,
        };
        let facts = adapter.detect(&access).await.map_err(|err| {
            WharfError::new(
                ErrorCode::RelayHostUnreachable,
                format!(
                    "the {} adapter ({}) could not detect the host at {}: {}",
                    adapter.kind,
                    adapter.pack,
                    access.base_url,
                    redact(&err.message, &token)
                ),
            )
        })?;
        let gateway = BaseUrl::parse(&facts.gateway_base_url).map_err(|err| {
            WharfError::new(
                ErrorCode::RelayHostError,
                format!("the adapter's gateway base URL is not usable: {err}"),
            )
        })?;
        let id = crate::store::keys::new_id("rh");
        let now = now_ms();
        let row = HostRow {
            token_sealed: self.secrets.seal(&token, &id)?,
            token_fingerprint: fingerprint(&token),
            id,
            owner: caller.owner.clone(),
            created_by_key: caller.key_id.clone(),
            kind: adapter.kind.clone(),
            base_url: access.base_url.clone(),
            version: facts.version.clone(),
            gateway_base_url: gateway
                .as_url()
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            created_ms: now,
            reconcile_status: None,
            reconcile_report: None,
            reconciled_ms: None,
            next_reconcile_ms: self.next_reconcile(now),
        };
        store::insert_host(&self.db, &row).await?;
        Ok(host_view(&row))
    }

    pub async fn hosts(&self, owner: &str) -> WharfResult<Vec<Host>> {
        Ok(store::list_hosts(&self.db, owner)
            .await?
            .iter()
            .map(host_view)
            .collect())
    }

    pub async fn host(&self, owner: &str, id: &str) -> WharfResult<Host> {
        Ok(host_view(&self.host_row(owner, id).await?))
    }

    async fn host_row(&self, owner: &str, id: &str) -> WharfResult<HostRow> {
        store::get_host(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("relay host"))
    }

    /// Deletes a host that nothing depends on any more.
    pub async fn delete_host(&self, owner: &str, id: &str) -> WharfResult<()> {
        match store::delete_host(&self.db, id, owner).await? {
            None => Err(WharfError::not_found("relay host")),
            Some((0, 0)) => Ok(()),
            Some((imports, resources)) => Err(WharfError::new(
                ErrorCode::HostInUse,
                format!(
                    "relay host {id} still has {imports} running import(s) and {resources} recorded resource(s); \
                     roll the imports back (POST /v1/imports/{{id}}/rollback) first"
                ),
            )),
        }
    }

    fn next_reconcile(&self, now: i64) -> i64 {
        match self.config.reconcile_interval_secs {
            0 => i64::MAX,
            secs => now + (secs as i64) * 1000,
        }
    }

    /// Background work on a host reaches what its registering key may reach now.
    async fn reach_of_host(&self, host: &HostRow) -> WharfResult<Reach> {
        if self.allow_private {
            return Ok(Reach::Any);
        }
        let admin = crate::store::keys::is_active_admin(&self.db, &host.created_by_key).await?;
        Ok(Reach::for_caller(admin, false))
    }

    async fn access(&self, host: &HostRow) -> WharfResult<HostAccess> {
        Ok(HostAccess {
            base_url: host.base_url.clone(),
            token: self.secrets.open(&host.token_sealed, &host.id)?,
            reach: self.reach_of_host(host).await?,
        })
    }

    fn adapter(&self, kind: &str) -> WharfResult<Adapter> {
        Adapter::bind(&self.packs, kind, self.outbound.clone())
    }

    // -- imports -------------------------------------------------------------------------------

    /// Validates an import; with `dry_run` answers the plan, else queues the run.
    pub async fn submit(&self, caller: &Principal, spec: CreateImport) -> WharfResult<Submitted> {
        let host = self.host_row(&caller.owner, &spec.host_id).await?;
        let keys = validate_keys(&spec.api_keys, self.config.max_keys_per_import)?;
        let provider = self.provider_facts(&spec.provider).await?;
        let upstream = match spec.base_url.as_deref() {
            Some(url) => url.trim().to_string(),
            None => provider.base_url.clone(),
        };
        BaseUrl::parse(&upstream)
            .map_err(|err| WharfError::validation(format!("`base_url`: {err}")))?;
        let models = self
            .resolve_models(&spec.provider, spec.models.as_deref(), &provider)
            .await?;
        let family = family_of(models.first().map(String::as_str).unwrap_or(&spec.provider));
        if spec.dry_run {
            return self
                .plan(&host, &spec, &keys, &upstream, &models, &family)
                .await
                .map(Submitted::Plan);
        }
        let id = crate::store::keys::new_id("imp");
        let now = now_ms();
        let import = ImportRow {
            id: id.clone(),
            owner: caller.owner.clone(),
            host_id: host.id.clone(),
            provider: spec.provider.clone(),
            upstream_base_url: upstream,
            mode: spec.mode.as_str().to_string(),
            models: serde_json::to_string(&models).expect("serialisable"),
            family: family.clone(),
            status: "running".into(),
            created_ms: now,
            ended_ms: None,
            rolled_back_ms: None,
            rollback_report: None,
        };
        let mut items = Vec::with_capacity(keys.len());
        for (n, key) in keys.iter().enumerate() {
            let item_id = crate::store::keys::new_id("itm");
            items.push(ItemRow {
                key_sealed: self.secrets.seal(key, &item_id)?,
                id: item_id,
                import_id: id.clone(),
                owner: caller.owner.clone(),
                position: n as i64 + 1,
                name: item_name(&spec.provider, &family, key),
                key_fingerprint: fingerprint(key),
                phase: "pending".into(),
                outcome: None,
                access_status: "pending".into(),
                error_code: None,
                error_message: None,
                evidence: "[]".into(),
                repair: None,
                repaired: false,
                attempts: 0,
                confirm_started_ms: None,
                next_retry_ms: None,
                lease_holder: None,
                lease_expires_ms: None,
                updated_ms: now,
            });
        }
        // The run first: recovery finds the import through its run, and ends a run whose
        // import row never came.
        self.engine
            .create(
                &id,
                RunKind::RelayImport,
                &caller.owner,
                &format!(
                    "import of {} key(s) into relay host {}",
                    keys.len(),
                    host.id
                ),
            )
            .await?;
        if let Err(err) = store::insert_import(&self.db, &import, &items).await {
            let _ = self.engine.delete(&id).await;
            return Err(err);
        }
        Ok(Submitted::Queued(id))
    }

    /// Starts the run of a queued import (after `submit`, outside its request).
    pub fn spawn(self: &Arc<Self>, import_id: String) {
        let relays = self.clone();
        tokio::spawn(async move {
            if let Err(err) = relays.execute(&import_id).await {
                tracing::warn!(import = %import_id, code = err.code.as_str(), error = %err.message, "relay import failed");
                let _ = relays
                    .engine
                    .finish(&import_id, RunState::Failed, Some(err.code), &err.message)
                    .await;
                let _ = store::end_import(&relays.db, &import_id, "failed", now_ms()).await;
            }
        });
    }

    /// The model list of an import: each name resolved through the provider pack; an unknown
    /// one is `unknown_model` with the three nearest.
    async fn resolve_models(
        &self,
        provider: &str,
        asked: Option<&[String]>,
        facts: &ProviderFacts,
    ) -> WharfResult<Vec<String>> {
        let Some(asked) = asked.filter(|m| !m.is_empty()) else {
            return Ok(facts.models.clone());
        };
        if asked.len() > 64 {
            return Err(WharfError::validation("`models` lists more than 64 models"));
        }
        let mut models = Vec::new();
        for name in asked {
            let resolution = self.runner.resolve_model(provider, name.trim()).await?;
            match resolution.model {
                Some(id) => {
                    if !models.contains(&id) {
                        models.push(id);
                    }
                }
                None => {
                    return Err(WharfError::new(
                        ErrorCode::UnknownModel,
                        format!(
                            "provider {provider:?} has no model {name:?}; nearest: {}",
                            if resolution.suggestions.is_empty() {
                                "none".to_string()
                            } else {
                                resolution.suggestions.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(models)
    }

    /// The provider's catalog entry (base URL, models, smoke-test model) from its active pack.
    async fn provider_facts(&self, provider: &str) -> WharfResult<ProviderFacts> {
        let snapshot = self.packs.snapshot();
        let Some(route) = snapshot.providers.get(provider).cloned() else {
            let known: Vec<&str> = snapshot.providers.keys().map(String::as_str).collect();
            return Err(WharfError::validation(format!(
                "no active pack provides provider {provider:?}; nearest: {}",
                crate::probes::runner::nearest(provider, &known, 3).join(", ")
            )));
        };
        drop(snapshot);
        let component = route.component().runtime.clone();
        let owner = crate::runtime::call::current_owner();
        let catalog = tokio::task::spawn_blocking(move || {
            component.provider_call(owner.as_deref(), |store, plugin| {
                plugin.wharf_plugin_provider().call_catalog(store)
            })
        })
        .await
        .map_err(|err| WharfError::internal(format!("catalog task failed: {err}")))??
        .map_err(|err| {
            WharfError::new(
                ErrorCode::PluginError,
                format!("catalog(): {}: {}", err.code, err.message),
            )
        })?;
        let info = catalog
            .into_iter()
            .find(|p| p.id == provider)
            .ok_or_else(|| WharfError::not_found(format!("provider {provider:?}")))?;
        // The smoke-test model first: the first model is the one probed.
        let mut models: Vec<String> = info.models.into_iter().map(|m| m.id).collect();
        if let Some(at) = models.iter().position(|m| *m == info.smoke_test_model) {
            let smoke = models.remove(at);
            models.insert(0, smoke);
        }
        Ok(ProviderFacts {
            base_url: info.base_url,
            models,
        })
    }

    /// What an import would do, from `plan-import` and the host's `list`; touches nothing.
    async fn plan(
        &self,
        host: &HostRow,
        spec: &CreateImport,
        keys: &[String],
        upstream: &str,
        models: &[String],
        family: &str,
    ) -> WharfResult<ImportPlan> {
        let adapter = self.adapter(&host.kind)?;
        let access = self.access(host).await?;
        let mut listed: HashMap<String, Vec<Resource>> = HashMap::new();
        let mut items = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            let item = ImportItem {
                name: item_name(&spec.provider, family, key),
                provider: spec.provider.clone(),
                family: family.to_string(),
                upstream_base_url: upstream.to_string(),
                api_key: key.clone(),
                key_fingerprint: fingerprint(key),
                models: models.to_vec(),
                mode: spec.mode.as_str().to_string(),
            };
            let requests = adapter.plan_import(&access, &item).await?;
            let mut resources = Vec::new();
            for request in &requests {
                if !listed.contains_key(&request.kind) {
                    let found = adapter.list(&access, &request.kind, NAME_PREFIX).await?;
                    listed.insert(request.kind.clone(), found);
                }
                let existing = listed[&request.kind]
                    .iter()
                    .find(|r| r.name == request.name);
                resources.push(planned_resource(request, existing));
            }
            items.push(PlannedItem {
                position: n as i64 + 1,
                key_fingerprint: item.key_fingerprint.clone(),
                name: item.name.clone(),
                outcome: planned_outcome(&resources),
                resources,
            });
        }
        Ok(ImportPlan {
            dry_run: true,
            host_id: host.id.clone(),
            provider: spec.provider.clone(),
            upstream_base_url: upstream.to_string(),
            models: models.to_vec(),
            family: family.to_string(),
            items,
        })
    }

    /// An import of `owner` with its run, items and resources.
    pub async fn import(&self, owner: &str, id: &str) -> WharfResult<Import> {
        let row = store::get_import(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("import"))?;
        let items = store::items(&self.db, id).await?;
        let resources = store::resources_of_import(&self.db, id).await?;
        let mut view = import_view(&row, &items);
        view.run = self.engine.get(id).await?;
        view.items = items.iter().map(item_view).collect();
        view.resources = resources.iter().map(resource_view).collect();
        Ok(view)
    }

    /// Imports of `owner`, newest first (without items).
    pub async fn imports(
        &self,
        owner: &str,
        host_id: Option<&str>,
        limit: i64,
    ) -> WharfResult<Vec<Import>> {
        let mut out = Vec::new();
        for row in store::list_imports(&self.db, owner, host_id, limit).await? {
            let items = store::items(&self.db, &row.id).await?;
            out.push(import_view(&row, &items));
        }
        Ok(out)
    }

    async fn context(&self, import_id: &str) -> WharfResult<ItemContext> {
        let import = store::get_import(&self.db, import_id, None)
            .await?
            .ok_or_else(|| WharfError::not_found("import"))?;
        let host = store::get_host(&self.db, &import.host_id, None)
            .await?
            .ok_or_else(|| WharfError::not_found("relay host"))?;
        let access = self.access(&host).await?;
        let models: Vec<String> = serde_json::from_str(&import.models).unwrap_or_default();
        Ok(ItemContext {
            probe_model: models.first().cloned(),
            models,
            import,
            host,
            access,
        })
    }

    fn wit_item(&self, ctx: &ItemContext, item: &ItemRow, key: &str) -> ImportItem {
        ImportItem {
            name: item.name.clone(),
            provider: ctx.import.provider.clone(),
            family: ctx.import.family.clone(),
            upstream_base_url: ctx.import.upstream_base_url.clone(),
            api_key: key.to_string(),
            key_fingerprint: item.key_fingerprint.clone(),
            models: ctx.models.clone(),
            mode: ctx.import.mode.clone(),
        }
    }

    /// The run of one import: every pending item (resumed ones included), a few at a time;
    /// items left confirming are the confirmation worker's, which ends the run with the last.
    async fn execute(self: &Arc<Self>, import_id: &str) -> WharfResult<()> {
        self.engine.claim(import_id, "importing").await?;
        let ctx = Arc::new(self.run_scoped(import_id, self.context(import_id)).await?);
        let pending: Vec<ItemRow> = store::items(&self.db, import_id)
            .await?
            .into_iter()
            .filter(|item| item.phase == "pending")
            .collect();
        self.engine
            .log(
                import_id,
                Stream::System,
                Level::Info,
                &format!(
                    "{} item(s) to import into {} ({} {})",
                    pending.len(),
                    ctx.host.id,
                    ctx.host.kind,
                    ctx.host.version
                ),
            )
            .await;
        futures::stream::iter(pending)
            .for_each_concurrent(self.config.item_concurrency, |item| {
                let ctx = ctx.clone();
                async move {
                    let id = item.id.clone();
                    let owner = ctx.import.owner.clone();
                    let work = crate::runtime::call::CALL_OWNER
                        .scope(owner.as_str().into(), self.import_item(&ctx, item));
                    if let Err(err) = work.await {
                        self.fail_item_on_error(&id, &err).await;
                    }
                }
            })
            .await;
        self.maybe_finish(import_id).await
    }

    /// `fut` with the import's owner as the plugin call owner.
    async fn run_scoped<T>(
        &self,
        import_id: &str,
        fut: impl std::future::Future<Output = WharfResult<T>>,
    ) -> WharfResult<T> {
        let owner = crate::store::jobs::get_run(&self.db, import_id)
            .await?
            .map(|run| run.owner)
            .unwrap_or_default();
        crate::runtime::call::CALL_OWNER
            .scope(owner.as_str().into(), fut)
            .await
    }

    /// An item whose work failed on an error (not a probe verdict) ends failed with its code.
    async fn fail_item_on_error(&self, item_id: &str, err: &WharfError) {
        let Ok(Some(mut item)) = store::get_item(&self.db, item_id).await else {
            return;
        };
        if item.phase == "done" {
            return;
        }
        // The adapter saw the provider key: should it echo it in an error, it goes no further.
        let message = match self.secrets.open(&item.key_sealed, &item.id) {
            Ok(key) => redact(&err.message, &key),
            Err(_) => err.message.clone(),
        };
        push_evidence(
            &mut item,
            json!({"event": "error", "code": err.code.as_str(), "message": message}),
        );
        conclude(&mut item, "failed", Some(err.code.as_str()), Some(&message));
        if let Err(err) = store::save_item(&self.db, &item).await {
            tracing::warn!(item = item_id, error = %err.message, "storing a failed item");
        }
        self.engine
            .log(
                &item.import_id,
                Stream::System,
                Level::Error,
                &format!(
                    "item #{} failed: {}: {message}",
                    item.position,
                    err.code.as_str()
                ),
            )
            .await;
    }

    /// One item: plan, ensure each resource behind its intent, then the access closure.
    async fn import_item(&self, ctx: &ItemContext, mut item: ItemRow) -> WharfResult<()> {
        let key = self.secrets.open(&item.key_sealed, &item.id)?;
        let adapter = self.adapter(&ctx.host.kind)?;
        let wit_item = self.wit_item(ctx, &item, &key);
        let run = ctx.import.id.as_str();
        let position = item.position;
        let requests: Vec<ResourceRequest> = self
            .engine
            .step(run, &format!("#{position} plan"), RetryPolicy::NONE, |_| {
                adapter.plan_import(&ctx.access, &wit_item)
            })
            .await?;
        let mut done: Vec<Resource> = Vec::new();
        let mut outcomes: Vec<(String, bool)> = Vec::new();
        for request in &requests {
            if !request.name.starts_with(NAME_PREFIX) {
                return Err(WharfError::new(
                    ErrorCode::RelayHostError,
                    format!(
                        "the adapter named a {} resource {:?}, outside the `{NAME_PREFIX}` prefix Wharf manages",
                        request.kind, request.name
                    ),
                ));
            }
            let record =
                store::find_resource(&self.db, run, &item.id, &request.kind, &request.name).await?;
            let (record_id, resumed) = match record {
                Some(r) if r.state == "created" || r.state == "reused" => {
                    done.push(resource_of(&r));
                    outcomes.push((r.outcome.clone().unwrap_or_default(), r.shared));
                    continue;
                }
                Some(r) if r.state == "intent" => {
                    self.engine
                        .log(
                            run,
                            Stream::System,
                            Level::Warn,
                            &format!(
                                "#{position}: resuming the intent to ensure {} {} (left by a stop)",
                                request.kind, request.name
                            ),
                        )
                        .await;
                    (r.id, true)
                }
                Some(r) => {
                    return Err(WharfError::new(
                        ErrorCode::Conflict,
                        format!("{} {} was {} by a rollback", r.kind, r.name, r.state),
                    ));
                }
                None => {
                    let id = crate::store::keys::new_id("res");
                    store::insert_intent(
                        &self.db,
                        &id,
                        &ctx.host.id,
                        run,
                        &item.id,
                        &request.kind,
                        &request.name,
                        request.shared,
                        now_ms(),
                    )
                    .await?;
                    (id, false)
                }
            };
            let policy = RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(300),
                max_backoff: Duration::from_secs(2),
            };
            let ensured = self
                .engine
                .step(
                    run,
                    &format!("#{position} ensure {} {}", request.kind, request.name),
                    policy,
                    |_| adapter.ensure(&ctx.access, &wit_item, request, &done),
                )
                .await;
            let ensured = match ensured {
                Ok(ensured) => ensured,
                Err(err) => {
                    self.settle_failed_intent(&adapter, ctx, &record_id, request)
                        .await;
                    return Err(err);
                }
            };
            let outcome = outcome_name(ensured.outcome);
            // Ours when it made it; a resumed intent that finds a resource no other import
            // records made it before the stop (or it is an orphan of ours): ours too.
            let ours = outcome == "created"
                || (resumed
                    && store::other_holders(
                        &self.db,
                        &ctx.host.id,
                        run,
                        &request.kind,
                        Some(&ensured.resource.id),
                        &request.name,
                    )
                    .await?
                        == 0);
            let sealed = match ensured.secret.as_deref() {
                Some(secret) => Some(self.secrets.seal(secret, &record_id)?),
                None => None,
            };
            store::record_ensured(
                &self.db,
                &record_id,
                &ensured.resource.id,
                if ours { "created" } else { "reused" },
                outcome,
                &ensured.resource.status,
                &ensured.resource.attributes,
                sealed.as_deref(),
                now_ms(),
            )
            .await?;
            push_evidence(
                &mut item,
                json!({
                    "event": "ensure", "kind": request.kind, "name": request.name,
                    "host_resource_id": ensured.resource.id, "outcome": outcome,
                    "status": ensured.resource.status, "resumed": resumed,
                }),
            );
            self.engine
                .log(
                    run,
                    Stream::System,
                    Level::Info,
                    &format!(
                        "#{position}: {} {} {outcome} (id {})",
                        request.kind, request.name, ensured.resource.id
                    ),
                )
                .await;
            outcomes.push((outcome.to_string(), request.shared));
            done.push(ensured.resource);
        }
        item.outcome = Some(item_outcome(&outcomes));
        item.updated_ms = now_ms();
        store::save_item(&self.db, &item).await?;
        self.assess(ctx, &adapter, &mut item, &key).await?;
        store::save_item(&self.db, &item).await
    }

    /// After a failed `ensure`: an intent whose resource the host does not have is dropped; one
    /// it has is recorded (so a rollback can remove it). Left as an intent when the host cannot
    /// be asked (a later resume or rollback settles it).
    async fn settle_failed_intent(
        &self,
        adapter: &Adapter,
        ctx: &ItemContext,
        record_id: &str,
        request: &ResourceRequest,
    ) {
        let Ok(found) = adapter
            .list(&ctx.access, &request.kind, &request.name)
            .await
        else {
            return;
        };
        let result = match found.into_iter().find(|r| r.name == request.name) {
            None => store::delete_intent(&self.db, record_id).await,
            Some(resource) => {
                let others = store::other_holders(
                    &self.db,
                    &ctx.host.id,
                    &ctx.import.id,
                    &request.kind,
                    Some(&resource.id),
                    &request.name,
                )
                .await
                .unwrap_or(1);
                store::record_ensured(
                    &self.db,
                    record_id,
                    &resource.id,
                    if others == 0 { "created" } else { "reused" },
                    "created",
                    &resource.status,
                    &resource.attributes,
                    None,
                    now_ms(),
                )
                .await
            }
        };
        if let Err(err) = result {
            tracing::warn!(error = %err.message, "settling a failed intent");
        }
    }

    /// The managed key an item's probes use: the secret of its `api-key` resource (or of any
    /// resource that carries one).
    async fn managed_key(&self, item: &ItemRow) -> WharfResult<String> {
        let records = store::resources_of_item(&self.db, &item.id).await?;
        let record = records
            .iter()
            .filter(|r| r.secret_sealed.is_some() && r.state != "deleted")
            .max_by_key(|r| (r.kind == "api-key", r.seq))
            .ok_or_else(|| {
                WharfError::new(
                    ErrorCode::RelayHostError,
                    "the adapter gave this item no key to probe the relay's gateway with",
                )
            })?;
        self.secrets.open(
            record.secret_sealed.as_deref().unwrap_or_default(),
            &record.id,
        )
    }

    /// The account a repair is asked about: the item's `account` resource, else its first own.
    async fn account_of(&self, item: &ItemRow) -> WharfResult<Option<Resource>> {
        let records = store::resources_of_item(&self.db, &item.id).await?;
        let live = |r: &&ResourceRow| r.host_resource_id.is_some() && r.state != "deleted";
        Ok(records
            .iter()
            .filter(live)
            .find(|r| r.kind == "account")
            .or_else(|| records.iter().filter(live).find(|r| !r.shared))
            .map(resource_of))
    }

    /// The item's account as the host lists it now, when its status is no longer the one
    /// recorded (e.g. `error` after an upstream 401) or it is gone; `None` while unchanged.
    async fn account_changed(
        &self,
        ctx: &ItemContext,
        adapter: &Adapter,
        item: &ItemRow,
    ) -> WharfResult<Option<String>> {
        let Some(account) = self.account_of(item).await? else {
            return Ok(None);
        };
        let listed = adapter
            .list(&ctx.access, &account.kind, &account.name)
            .await?;
        Ok(match listed.iter().find(|r| r.id == account.id) {
            None => Some("missing".to_string()),
            Some(now) if !account.status.is_empty() && now.status != account.status => {
                Some(now.status.clone())
            }
            Some(_) => None,
        })
    }

    async fn probe(
        &self,
        ctx: &ItemContext,
        base_url: &str,
        api_key: &str,
    ) -> WharfResult<ProbeResult> {
        let request = ProbeRequest {
            provider: ctx.import.provider.clone(),
            base_url: base_url.to_string(),
            api_key: api_key.to_string(),
            model: ctx.probe_model.clone(),
            stream: None,
            direct_base_url: None,
        };
        crate::runtime::call::CALL_OWNER
            .scope(
                ctx.import.owner.as_str().into(),
                self.runner.run(&request, ctx.access.reach),
            )
            .await
    }

    /// The access closure of an imported item: probe through the gateway and decide: `ready`,
    /// a confirmation later (a known window), a repair and another probe, or the final failure.
    async fn assess(
        &self,
        ctx: &ItemContext,
        adapter: &Adapter,
        item: &mut ItemRow,
        key: &str,
    ) -> WharfResult<()> {
        let managed = self.managed_key(item).await?;
        let secrets = [key, managed.as_str(), ctx.access.token.as_str()];
        let run = ctx.import.id.as_str();
        loop {
            let result = self
                .probe(ctx, &ctx.host.gateway_base_url, &managed)
                .await?;
            item.attempts += 1;
            push_evidence(item, probe_evidence("gateway", &result, &secrets));
            self.engine
                .log(
                    run,
                    Stream::System,
                    Level::Info,
                    &scrub(
                        &format!(
                            "#{}: probe through the gateway: {} ({})",
                            item.position, result.verdict, result.detail
                        ),
                        &secrets,
                    ),
                )
                .await;
            if result.ready() {
                // A relay fails over between the accounts of a group: a pass may have come
                // through another key's account while this one broke on the way.
                if let Some(status) = self.account_changed(ctx, adapter, item).await? {
                    push_evidence(
                        item,
                        json!({"event": "account_check", "host_status": status}),
                    );
                    let direct = self.probe(ctx, &ctx.import.upstream_base_url, key).await?;
                    push_evidence(item, probe_evidence("upstream", &direct, &secrets));
                    let (class, detail) = if direct.ready() {
                        (
                            "account_error".to_string(),
                            format!(
                                "the gateway passed, but this key's account turned {status:?} on the way (the relay failed over to another account)"
                            ),
                        )
                    } else {
                        (
                            direct.verdict.clone(),
                            format!(
                                "the key fails direct to the upstream ({}: {}); the relay put its account in {status:?} and answered through another account",
                                direct.verdict, direct.detail
                            ),
                        )
                    };
                    conclude(
                        item,
                        "failed",
                        Some(&class),
                        Some(&scrub(&detail, &secrets)),
                    );
                    return Ok(());
                }
                conclude(item, "ready", None, None);
                return Ok(());
            }
            if confirmable(&result) && self.schedule_confirmation(item, &result) {
                return Ok(());
            }
            if !gap_like(&result) {
                let detail = scrub(&result.detail, &secrets);
                conclude(item, "failed", Some(&result.verdict), Some(&detail));
                return Ok(());
            }
            // Not transient: is it the key (probe it direct to the upstream) or the relay?
            let direct = self.probe(ctx, &ctx.import.upstream_base_url, key).await?;
            push_evidence(item, probe_evidence("upstream", &direct, &secrets));
            if !direct.ready() {
                let detail = scrub(
                    &format!(
                        "the key fails direct to the upstream ({}: {}); through the relay: {}: {}",
                        direct.verdict, direct.detail, result.verdict, result.detail
                    ),
                    &secrets,
                );
                conclude(item, "failed", Some(&direct.verdict), Some(&detail));
                return Ok(());
            }
            let symptom = scrub(
                &format!(
                    "{}: {} (the same key direct to the upstream is ready)",
                    result.verdict, result.detail
                ),
                &secrets,
            );
            if item.repaired {
                let detail = format!(
                    "the relay fails where the upstream serves the key: {symptom}; the repair ({}) did not fix it",
                    item.repair.as_deref().unwrap_or("none known")
                );
                conclude(
                    item,
                    "failed",
                    Some("host_compatibility_gap"),
                    Some(&detail),
                );
                return Ok(());
            }
            item.repaired = true;
            let account = self.account_of(item).await?;
            let answer = match &account {
                Some(account) => adapter.repair(&ctx.access, account, &symptom).await,
                None => Ok(None),
            };
            let change = match answer {
                Ok(change) => change,
                Err(err) => {
                    push_evidence(
                        item,
                        json!({"event": "repair", "symptom": symptom, "applied": false, "error": err.message}),
                    );
                    let detail = format!("{symptom}; the repair failed: {}", err.message);
                    conclude(
                        item,
                        "failed",
                        Some("host_compatibility_gap"),
                        Some(&detail),
                    );
                    return Ok(());
                }
            };
            item.repair = Some(
                change
                    .clone()
                    .unwrap_or_else(|| "the adapter knows no fix".to_string()),
            );
            push_evidence(
                item,
                json!({"event": "repair", "symptom": symptom, "applied": change.is_some(), "change": change}),
            );
            self.engine
                .log(
                    run,
                    Stream::System,
                    Level::Warn,
                    &format!(
                        "#{}: repair: {}",
                        item.position,
                        item.repair.as_deref().unwrap_or_default()
                    ),
                )
                .await;
            store::save_item(&self.db, item).await?;
            if change.is_none() {
                let detail =
                    format!("the relay fails where the upstream serves the key: {symptom}");
                conclude(
                    item,
                    "failed",
                    Some("host_compatibility_gap"),
                    Some(&detail),
                );
                return Ok(());
            }
        }
    }

    /// Puts the item in the confirmation queue, unless its window or attempts are spent.
    fn schedule_confirmation(&self, item: &mut ItemRow, result: &ProbeResult) -> bool {
        let now = now_ms();
        let started = *item.confirm_started_ms.get_or_insert(now);
        let waited = (now - started).max(0) as u64;
        if waited >= self.config.confirm_window_ms {
            return false;
        }
        let n = item.attempts.max(1) as u32;
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(self.config.confirm_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(self.config.confirm_max_backoff_ms.max(1)),
        };
        let mut wait = policy.backoff(n).as_millis() as u64;
        if let Some(hint) = result.retry_after_ms {
            wait = wait.max(hint.min(self.config.confirm_max_backoff_ms));
        }
        // The last probe lands at the window's end, not past it.
        let wait = wait.min(self.config.confirm_window_ms - waited).max(1);
        item.phase = "confirming".into();
        item.next_retry_ms = Some(now + wait as i64);
        item.lease_holder = None;
        item.lease_expires_ms = None;
        item.updated_ms = now;
        push_evidence(
            item,
            json!({
                "event": "confirm_scheduled", "class": result.verdict,
                "next_retry_at": rfc3339_from_ms(now + wait as i64),
                "window_left_ms": self.config.confirm_window_ms - waited,
            }),
        );
        true
    }

    /// One confirmation probe of an item whose lease this worker took.
    async fn confirm(self: &Arc<Self>, mut item: ItemRow) -> WharfResult<()> {
        let ctx = self.context(&item.import_id).await?;
        let adapter = self.adapter(&ctx.host.kind)?;
        let key = self.secrets.open(&item.key_sealed, &item.id)?;
        let outcome = self.assess(&ctx, &adapter, &mut item, &key).await;
        if let Err(err) = outcome {
            // A probe that could not run (no provider pack now, a plugin fault): try again
            // within the window, then give up with the error.
            let now = now_ms();
            let started = *item.confirm_started_ms.get_or_insert(now);
            if ((now - started).max(0) as u64) < self.config.confirm_window_ms {
                item.phase = "confirming".into();
                item.next_retry_ms = Some(now + self.config.confirm_backoff_ms as i64);
                item.lease_holder = None;
                push_evidence(
                    &mut item,
                    json!({"event": "error", "code": err.code.as_str(), "message": err.message}),
                );
            } else {
                conclude(
                    &mut item,
                    "failed",
                    Some(err.code.as_str()),
                    Some(&err.message),
                );
            }
        }
        store::save_item(&self.db, &item).await?;
        if item.phase == "done" {
            self.engine
                .log(
                    &item.import_id,
                    Stream::System,
                    Level::Info,
                    &format!(
                        "#{}: confirmed {} after {} probe(s)",
                        item.position, item.access_status, item.attempts
                    ),
                )
                .await;
        }
        self.maybe_finish(&item.import_id).await
    }

    /// Ends the import and its run once every item is done.
    async fn maybe_finish(&self, import_id: &str) -> WharfResult<()> {
        let items = store::items(&self.db, import_id).await?;
        if items.iter().any(|item| item.phase != "done") {
            return Ok(());
        }
        let ready = items.iter().filter(|i| i.access_status == "ready").count();
        let status = match ready {
            n if n == items.len() => "succeeded",
            0 => "failed",
            _ => "partially_succeeded",
        };
        if store::end_import(&self.db, import_id, status, now_ms()).await? {
            let reason = format!("{ready} of {} item(s) ready", items.len());
            let state = if status == "succeeded" {
                RunState::Succeeded
            } else {
                RunState::Failed
            };
            self.engine
                .log(
                    import_id,
                    Stream::System,
                    Level::Info,
                    &format!("import {status}: {reason}"),
                )
                .await;
            self.engine.finish(import_id, state, None, &reason).await?;
        }
        Ok(())
    }

    /// After a restart: each import left running is resumed (its intents too); a run whose
    /// import row never came, or that had ended, is ended.
    async fn recover(self: &Arc<Self>) -> WharfResult<()> {
        for run in self.engine.orphans(RunKind::RelayImport).await? {
            let Some(import) = store::get_import(&self.db, &run.id, None).await? else {
                self.engine
                    .finish(
                        &run.id,
                        RunState::Failed,
                        Some(ErrorCode::RunInterrupted),
                        "its import row is gone",
                    )
                    .await?;
                continue;
            };
            if import.status != "running" {
                let state = if import.status == "succeeded" {
                    RunState::Succeeded
                } else {
                    RunState::Failed
                };
                self.engine
                    .finish(
                        &run.id,
                        state,
                        None,
                        "the import had ended when the server restarted",
                    )
                    .await?;
                continue;
            }
            self.engine
                .log(
                    &run.id,
                    Stream::System,
                    Level::Warn,
                    "the server restarted during the import: resuming it",
                )
                .await;
            self.engine
                .note(&run.id, "the server restarted: resumed")
                .await?;
            self.spawn(run.id.clone());
        }
        Ok(())
    }

    // -- rollback ------------------------------------------------------------------------------

    /// Deletes exactly what the import created, newest first; keeps what another import still
    /// records; never deletes anything without a record.
    pub async fn rollback(&self, owner: &str, import_id: &str) -> WharfResult<RollbackReport> {
        let import = store::get_import(&self.db, import_id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("import"))?;
        if import.status == "running" {
            return Err(WharfError::new(
                ErrorCode::Conflict,
                "the import is still running; roll it back once it has ended",
            ));
        }
        let host = store::get_host(&self.db, &import.host_id, None)
            .await?
            .ok_or_else(|| WharfError::not_found("relay host"))?;
        let access = self.access(&host).await?;
        let adapter = self.adapter(&host.kind)?;
        let mut records = store::resources_of_import(&self.db, import_id).await?;
        records.sort_by_key(|record| std::cmp::Reverse(record.seq));
        let mut report = RollbackReport {
            import_id: import_id.to_string(),
            deleted: Vec::new(),
            kept: Vec::new(),
            failed: Vec::new(),
        };
        let entry = |r: &ResourceRow, reason: String| RolledBack {
            kind: r.kind.clone(),
            name: r.name.clone(),
            host_resource_id: r.host_resource_id.clone(),
            reason,
        };
        let now = now_ms;
        for record in &records {
            match record.state.as_str() {
                "deleted" | "released" => continue,
                "created" => {}
                state => {
                    report.kept.push(entry(
                        record,
                        format!("this import did not create it (it was {state})"),
                    ));
                    store::release(&self.db, &record.id, now()).await?;
                    continue;
                }
            }
            let Some(host_id) = record.host_resource_id.as_deref() else {
                continue;
            };
            let others = store::other_holders(
                &self.db,
                &host.id,
                import_id,
                &record.kind,
                Some(host_id),
                &record.name,
            )
            .await?;
            if others > 0 {
                report.kept.push(entry(
                    record,
                    format!("{others} other import(s) still record it"),
                ));
                store::release(&self.db, &record.id, now()).await?;
                continue;
            }
            match adapter.delete(&access, &record.kind, host_id).await {
                Ok(existed) => {
                    store::mark_deleted(&self.db, &record.id, now()).await?;
                    report.deleted.push(entry(
                        record,
                        if existed {
                            "deleted".to_string()
                        } else {
                            "already gone from the host".to_string()
                        },
                    ));
                }
                Err(err) => report.failed.push(entry(record, err.message)),
            }
        }
        let text = serde_json::to_string(&report).expect("serialisable");
        if report.failed.is_empty() {
            store::mark_rolled_back(&self.db, import_id, &text, now()).await?;
        }
        Ok(report)
    }

    // -- reconcile -----------------------------------------------------------------------------

    /// Compares a host's records with what its adapter lists, and re-probes ready items.
    pub async fn reconcile(&self, owner: &str, host_id: &str) -> WharfResult<ReconcileReport> {
        let host = self.host_row(owner, host_id).await?;
        self.reconcile_host(&host).await
    }

    async fn reconcile_host(&self, host: &HostRow) -> WharfResult<ReconcileReport> {
        if !self.reconciling.lock().insert(host.id.clone()) {
            return Err(WharfError::new(
                ErrorCode::Conflict,
                "a reconcile of this host is already running",
            )
            .with_retriable(true));
        }
        let outcome = crate::runtime::call::CALL_OWNER
            .scope(host.owner.as_str().into(), self.reconcile_inner(host))
            .await;
        self.reconciling.lock().remove(&host.id);
        outcome
    }

    async fn reconcile_inner(&self, host: &HostRow) -> WharfResult<ReconcileReport> {
        let adapter = self.adapter(&host.kind)?;
        let access = self.access(host).await?;
        let records = store::live_resources_of_host(&self.db, &host.id).await?;
        let kinds: BTreeSet<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        let mut report = ReconcileReport {
            host_id: host.id.clone(),
            status: "in_sync".into(),
            at: String::new(),
            missing: Vec::new(),
            changed: Vec::new(),
            unmanaged: Vec::new(),
            access: Vec::new(),
        };
        for kind in kinds {
            let listed = adapter.list(&access, kind, NAME_PREFIX).await?;
            let recorded: Vec<&ResourceRow> = records.iter().filter(|r| r.kind == kind).collect();
            // One report line per host resource, though several imports may record it.
            let mut seen = BTreeSet::new();
            // An intent (an import under way) has nothing to compare yet; its name still
            // makes what the host has under it managed.
            for record in recorded.iter().filter(|r| r.state != "intent") {
                let key = record
                    .host_resource_id
                    .clone()
                    .unwrap_or_else(|| record.name.clone());
                if !seen.insert(key) {
                    continue;
                }
                let found = listed.iter().find(|r| {
                    Some(r.id.as_str()) == record.host_resource_id.as_deref()
                        || (record.host_resource_id.is_none() && r.name == record.name)
                });
                let drift = |host_status: Option<String>| Drift {
                    kind: record.kind.clone(),
                    name: record.name.clone(),
                    host_resource_id: record.host_resource_id.clone(),
                    import_id: Some(record.import_id.clone()),
                    recorded_status: record.status.clone(),
                    host_status,
                };
                match found {
                    None => report.missing.push(drift(None)),
                    Some(r) if record.status.as_deref().is_some_and(|s| s != r.status) => {
                        report.changed.push(drift(Some(r.status.clone())))
                    }
                    Some(_) => {}
                }
            }
            for resource in &listed {
                let known = recorded.iter().any(|r| {
                    r.host_resource_id.as_deref() == Some(resource.id.as_str())
                        || r.name == resource.name
                });
                if !known && resource.name.starts_with(NAME_PREFIX) {
                    report.unmanaged.push(Drift {
                        kind: resource.kind.clone(),
                        name: resource.name.clone(),
                        host_resource_id: Some(resource.id.clone()),
                        import_id: None,
                        recorded_status: None,
                        host_status: Some(resource.status.clone()),
                    });
                }
            }
        }
        // Re-probe what was ready: real traffic, not the records, says it still works.
        for mut item in store::probed_items_of_host(&self.db, &host.id).await? {
            let check = self.reprobe(host, &access, &mut item).await;
            report.access.push(check);
        }
        if !(report.missing.is_empty() && report.changed.is_empty() && report.unmanaged.is_empty())
        {
            report.status = "drifted".into();
        }
        let now = now_ms();
        report.at = rfc3339_from_ms(now);
        store::set_reconcile(
            &self.db,
            &host.id,
            &report.status,
            &serde_json::to_string(&report).expect("serialisable"),
            now,
            self.next_reconcile(now),
        )
        .await?;
        Ok(report)
    }

    /// A reconcile's probe of one ready (or degraded) item; its access status follows.
    async fn reprobe(
        &self,
        host: &HostRow,
        access: &HostAccess,
        item: &mut ItemRow,
    ) -> AccessCheck {
        let mut check = AccessCheck {
            import_id: item.import_id.clone(),
            item_id: item.id.clone(),
            key_fingerprint: item.key_fingerprint.clone(),
            verdict: String::new(),
            detail: String::new(),
        };
        let probed = async {
            let import = store::get_import(&self.db, &item.import_id, None)
                .await?
                .ok_or_else(|| WharfError::not_found("import"))?;
            let models: Vec<String> = serde_json::from_str(&import.models).unwrap_or_default();
            let managed = self.managed_key(item).await?;
            let request = ProbeRequest {
                provider: import.provider.clone(),
                base_url: host.gateway_base_url.clone(),
                api_key: managed.clone(),
                model: models.first().cloned(),
                stream: None,
                direct_base_url: None,
            };
            let result = self.runner.run(&request, access.reach).await?;
            Ok::<_, WharfError>((result, managed))
        }
        .await;
        match probed {
            Ok((result, managed)) => {
                let secrets = [managed.as_str(), access.token.as_str()];
                check.verdict = result.verdict.clone();
                check.detail = scrub(&result.detail, &secrets);
                let mut event = probe_evidence("gateway", &result, &secrets);
                event["context"] = json!("reconcile");
                push_evidence(item, event);
                if result.ready() {
                    item.access_status = "ready".into();
                    item.error_code = None;
                    item.error_message = None;
                } else {
                    item.access_status = "degraded".into();
                    item.error_code = Some(result.verdict.clone());
                    item.error_message = Some(check.detail.clone());
                }
            }
            Err(err) => {
                check.verdict = err.code.as_str().to_string();
                check.detail = err.message.clone();
            }
        }
        item.updated_ms = now_ms();
        if let Err(err) = store::save_item(&self.db, item).await {
            tracing::warn!(item = %item.id, error = %err.message, "storing a re-probe");
        }
        check
    }
}

/// What `submit` did.
pub enum Submitted {
    Plan(ImportPlan),
    Queued(String),
}

struct ProviderFacts {
    base_url: String,
    models: Vec<String>,
}

/// Takes due confirmations (with a lease) and probes them, a bounded number at once.
fn spawn_confirmation_worker(relays: &Arc<Relays>) {
    let weak = Arc::downgrade(relays);
    let poll = Duration::from_millis(relays.config.confirm_poll_ms.max(20));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(poll).await;
            let Some(relays) = weak.upgrade() else { return };
            let free = relays.confirming.available_permits() as i64;
            if free == 0 {
                continue;
            }
            let now = now_ms();
            let due = match store::claim_due_items(
                &relays.db,
                relays.engine.worker(),
                now,
                now + relays.config.confirm_lease_ms as i64,
                free,
            )
            .await
            {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err.message, "claiming due relay confirmations");
                    continue;
                }
            };
            for item in due {
                let Ok(permit) = relays.confirming.clone().try_acquire_owned() else {
                    break;
                };
                let relays = relays.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let id = item.id.clone();
                    let owner = item.owner.clone();
                    let work = crate::runtime::call::CALL_OWNER
                        .scope(owner.as_str().into(), relays.confirm(item));
                    if let Err(err) = work.await {
                        tracing::warn!(item = %id, code = err.code.as_str(), error = %err.message, "relay confirmation failed");
                    }
                });
            }
        }
    });
}

/// Reconciles every host whose time has come.
fn spawn_reconcile_schedule(relays: &Arc<Relays>) {
    if relays.config.reconcile_interval_secs == 0 {
        return;
    }
    let weak = Arc::downgrade(relays);
    let tick =
        Duration::from_millis((relays.config.reconcile_interval_secs * 1000).clamp(200, 5_000));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(relays) = weak.upgrade() else { return };
            let due = match store::due_hosts(&relays.db, now_ms(), 16).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err.message, "listing hosts due for reconcile");
                    continue;
                }
            };
            for host in due {
                let next = relays.next_reconcile(now_ms());
                if let Err(err) = relays.reconcile_host(&host).await {
                    tracing::warn!(host = %host.id, code = err.code.as_str(), error = %err.message, "scheduled reconcile failed");
                    let _ = store::set_next_reconcile(&relays.db, &host.id, next).await;
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Decisions and helpers

/// A failing probe that the windows right after an import explain: a 401/403 while the
/// relay's key cache is stale, `503 no available accounts` while the account warms up.
fn confirmable(result: &ProbeResult) -> bool {
    matches!(
        result.verdict.as_str(),
        "upstream_auth" | "warming_up" | crate::probes::runner::RELAY_UNAVAILABLE
    ) && !failing_status(result).is_some_and(|s| s >= 500 && s != 503)
}

/// A failure that is not transient and may be the relay's way of serving the provider: a
/// `host_compatibility_gap`, or a bare 500/502 from the gateway (seed 003's `502
/// upstream_error` when it routed the provider to the Responses API).
fn gap_like(result: &ProbeResult) -> bool {
    result.verdict == crate::probes::runner::HOST_COMPATIBILITY_GAP
        || matches!(failing_status(result), Some(500 | 502))
}

fn failing_status(result: &ProbeResult) -> Option<u16> {
    result
        .steps
        .iter()
        .find(|step| !step.passed && step.via == "relay")
        .and_then(|step| step.status)
}

/// The item's outcome from its resources': its own (not shared) ones decide, the strongest
/// change first.
fn item_outcome(outcomes: &[(String, bool)]) -> String {
    let own: Vec<&str> = outcomes
        .iter()
        .filter(|(_, shared)| !shared)
        .map(|(o, _)| o.as_str())
        .collect();
    let all: Vec<&str> = outcomes.iter().map(|(o, _)| o.as_str()).collect();
    let pool = if own.is_empty() { all } else { own };
    for outcome in ["created", "replace", "reactivated", "patch_only"] {
        if pool.contains(&outcome) {
            return outcome.to_string();
        }
    }
    "reused".to_string()
}

fn planned_resource(request: &ResourceRequest, existing: Option<&Resource>) -> PlannedResource {
    let (action, changed) = match existing {
        None => ("create", Vec::new()),
        Some(found) if !matches!(found.status.as_str(), "active" | "enabled" | "") => {
            ("reactivate", Vec::new())
        }
        Some(found) => {
            let changed = changed_fields(&request.spec, &found.attributes);
            if changed.is_empty() {
                ("reuse", changed)
            } else {
                ("change", changed)
            }
        }
    };
    PlannedResource {
        kind: request.kind.clone(),
        name: request.name.clone(),
        shared: request.shared,
        action: action.to_string(),
        host_resource_id: existing.map(|r| r.id.clone()),
        host_status: existing.map(|r| r.status.clone()),
        changed,
    }
}

/// Top-level fields of the desired spec that the host's attributes show with another value
/// (fields the attributes do not show are not compared: they may be secrets).
fn changed_fields(spec: &str, attributes: &str) -> Vec<String> {
    let (Ok(Value::Object(spec)), Ok(Value::Object(attributes))) = (
        serde_json::from_str::<Value>(spec),
        serde_json::from_str::<Value>(attributes),
    ) else {
        return Vec::new();
    };
    spec.iter()
        .filter(|(field, wanted)| {
            attributes
                .get(field.as_str())
                .is_some_and(|have| !same_json(have, wanted))
        })
        .map(|(field, _)| field.clone())
        .collect()
}

/// Equal, with lists compared as sets (a model list's order does not matter).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => {
            let set = |v: &Vec<Value>| v.iter().map(Value::to_string).collect::<BTreeSet<_>>();
            set(a) == set(b)
        }
        _ => a == b,
    }
}

fn planned_outcome(resources: &[PlannedResource]) -> String {
    let outcomes: Vec<(String, bool)> = resources
        .iter()
        .map(|r| {
            let outcome = match r.action.as_str() {
                "create" => "created",
                "reactivate" => "reactivated",
                "change" => "patch_only",
                _ => "reused",
            };
            (outcome.to_string(), r.shared)
        })
        .collect();
    item_outcome(&outcomes)
}

/// Each key trimmed, sane, and only once.
fn validate_keys(keys: &[String], max: usize) -> WharfResult<Vec<String>> {
    if keys.is_empty() {
        return Err(WharfError::validation("`api_keys` is empty"));
    }
    if keys.len() > max {
        return Err(WharfError::validation(format!(
            "`api_keys` has {} keys; at most {max} per import ([relays] max_keys_per_import)",
            keys.len()
        )));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(keys.len());
    for (n, key) in keys.iter().enumerate() {
        let key = key.trim();
        // The message never shows the key: its position says which.
        if key.len() < 8 || key.len() > 1024 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(WharfError::validation(format!(
                "`api_keys[{n}]` must be 8 to 1024 printable characters without spaces"
            )));
        }
        if let Some(first) = seen.insert(key_hash(key), n) {
            return Err(WharfError::validation(format!(
                "`api_keys[{n}]` repeats `api_keys[{first}]`"
            )));
        }
        out.push(key.to_string());
    }
    Ok(out)
}

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `wharf-<provider>-<family>-<12 hex of the key's sha256>`: stable for a key, so a repeated
/// import finds the same resources.
fn item_name(provider: &str, family: &str, key: &str) -> String {
    format!(
        "{NAME_PREFIX}{}-{}-{}",
        slug(provider),
        slug(family),
        &key_hash(key)[..12]
    )
}

fn slug(text: &str) -> String {
    let slug: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    slug.trim_matches('-').to_string()
}

/// The canonical model family: the leading letters of the canonical model id (`kimi-k2.6` →
/// `kimi`, `deepseek-chat` → `deepseek`, `MiniMax-M2.5` → `minimax`).
fn family_of(model: &str) -> String {
    let family: String = model
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    if family.is_empty() {
        slug(model)
    } else {
        family
    }
}

/// Every secret replaced.
fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |text, secret| redact(&text, secret))
}

fn probe_evidence(via: &str, result: &ProbeResult, secrets: &[&str]) -> Value {
    let steps: Vec<Value> = result
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "method": s.method, "path": s.path, "status": s.status,
                "passed": s.passed, "class": s.class, "detail": scrub(&s.detail, secrets),
                "preview": scrub(&s.preview.chars().take(PREVIEW_CHARS).collect::<String>(), secrets),
                "latency_ms": s.latency_ms,
            })
        })
        .collect();
    json!({
        "event": "probe", "via": via, "probe_id": result.id, "verdict": result.verdict,
        "detail": scrub(&result.detail, secrets), "model": result.model,
        "attempts": result.attempts, "warnings": result.warnings.iter().map(|w| scrub(w, secrets)).collect::<Vec<_>>(),
        "duration_ms": result.duration_ms, "pack": format!("{}@{}", result.pack, result.pack_version),
        "steps": steps,
    })
}

fn push_evidence(item: &mut ItemRow, mut event: Value) {
    let mut list: Vec<Value> = serde_json::from_str(&item.evidence).unwrap_or_default();
    event["at"] = json!(crate::store::now_rfc3339());
    list.push(event);
    if list.len() > EVIDENCE_CAP {
        let cut = list.len() - EVIDENCE_CAP;
        list.drain(..cut);
    }
    item.evidence = serde_json::to_string(&list).expect("serialisable");
}

fn conclude(item: &mut ItemRow, access: &str, code: Option<&str>, message: Option<&str>) {
    item.phase = "done".into();
    item.access_status = access.to_string();
    item.error_code = code.map(str::to_string);
    item.error_message = message.map(str::to_string);
    item.next_retry_ms = None;
    item.lease_holder = None;
    item.lease_expires_ms = None;
    item.updated_ms = now_ms();
}

fn resource_of(row: &ResourceRow) -> Resource {
    Resource {
        kind: row.kind.clone(),
        id: row.host_resource_id.clone().unwrap_or_default(),
        name: row.name.clone(),
        status: row.status.clone().unwrap_or_default(),
        attributes: row.attributes.clone().unwrap_or_else(|| "{}".into()),
    }
}

fn host_view(row: &HostRow) -> Host {
    Host {
        id: row.id.clone(),
        kind: row.kind.clone(),
        base_url: row.base_url.clone(),
        version: row.version.clone(),
        gateway_base_url: row.gateway_base_url.clone(),
        token_fingerprint: row.token_fingerprint.clone(),
        created_at: rfc3339_from_ms(row.created_ms),
        reconcile: row
            .reconcile_report
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
    }
}

fn import_view(row: &ImportRow, items: &[ItemRow]) -> Import {
    let mut counts: BTreeMap<String, i64> = ["pending", "ready", "failed"]
        .into_iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for item in items {
        *counts.entry(item.access_status.clone()).or_insert(0) += 1;
    }
    Import {
        id: row.id.clone(),
        host_id: row.host_id.clone(),
        provider: row.provider.clone(),
        upstream_base_url: row.upstream_base_url.clone(),
        mode: row.mode.clone(),
        models: serde_json::from_str(&row.models).unwrap_or_default(),
        family: row.family.clone(),
        status: row.status.clone(),
        counts,
        created_at: rfc3339_from_ms(row.created_ms),
        ended_at: row.ended_ms.map(rfc3339_from_ms),
        rolled_back_at: row.rolled_back_ms.map(rfc3339_from_ms),
        run: None,
        items: Vec::new(),
        resources: Vec::new(),
        rollback: row
            .rollback_report
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
    }
}

fn item_view(row: &ItemRow) -> Item {
    Item {
        id: row.id.clone(),
        position: row.position,
        key_fingerprint: row.key_fingerprint.clone(),
        name: row.name.clone(),
        phase: row.phase.clone(),
        outcome: row.outcome.clone(),
        access_status: row.access_status.clone(),
        error_code: row.error_code.clone(),
        error_message: row.error_message.clone(),
        attempts: row.attempts,
        next_retry_at: row.next_retry_ms.map(rfc3339_from_ms),
        repair: row.repair.clone(),
        evidence: serde_json::from_str(&row.evidence).unwrap_or(Value::Array(Vec::new())),
    }
}

fn resource_view(row: &ResourceRow) -> ManagedResource {
    ManagedResource {
        kind: row.kind.clone(),
        name: row.name.clone(),
        host_resource_id: row.host_resource_id.clone(),
        state: row.state.clone(),
        outcome: row.outcome.clone(),
        shared: row.shared,
        status: row.status.clone(),
        item_id: row.item_id.clone(),
        seq: row.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_is_the_leading_letters_of_the_canonical_model() {
        assert_eq!(family_of("kimi-k2.6"), "kimi");
        assert_eq!(family_of("deepseek-chat"), "deepseek");
        assert_eq!(family_of("MiniMax-M2.5"), "minimax");
        assert_eq!(family_of("4o"), "4o");
    }

    #[test]
    fn item_names_are_stable_per_key_and_never_hold_it() {
        let key = "sk-test-0123456789abcdef";
        let name = item_name("kimi", "kimi", key);
        assert_eq!(name, item_name("kimi", "kimi", key));
        assert!(name.starts_with("wharf-kimi-kimi-"), "{name}");
        assert!(!name.contains("0123456789abcdef"));
        assert_ne!(name, item_name("kimi", "kimi", "sk-test-other-key-000"));
    }

    #[test]
    fn keys_are_checked_without_being_echoed() {
        let err =
            validate_keys(&["sk-aaaaaaaaaa".into(), " sk-aaaaaaaaaa ".into()], 10).unwrap_err();
        assert_eq!(err.message, "`api_keys[1]` repeats `api_keys[0]`");
        let err = validate_keys(&["sk short".into()], 10).unwrap_err();
        assert!(!err.message.contains("sk short"), "{}", err.message);
        assert!(validate_keys(&[], 10).is_err());
        assert!(validate_keys(&vec!["sk-1234567890".to_string(); 1], 0).is_err());
    }

    #[test]
    fn the_item_outcome_is_its_own_resources_strongest_change() {
        let o = |list: &[(&str, bool)]| {
            item_outcome(
                &list
                    .iter()
                    .map(|(o, s)| (o.to_string(), *s))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(o(&[("created", true), ("reused", false)]), "reused");
        assert_eq!(
            o(&[("reused", true), ("reactivated", false), ("reused", false)]),
            "reactivated"
        );
        assert_eq!(
            o(&[("reused", true), ("created", false), ("created", false)]),
            "created"
        );
        assert_eq!(o(&[("patch_only", false)]), "patch_only");
        assert_eq!(o(&[("created", true)]), "created");
    }

    #[test]
    fn a_changed_model_list_is_a_change_and_order_is_not() {
        let spec = r#"{"models": ["a", "b"], "priority": 1, "api_key": "x"}"#;
        assert!(changed_fields(spec, r#"{"models": ["b", "a"], "priority": 1}"#).is_empty());
        assert_eq!(
            changed_fields(spec, r#"{"models": ["a"], "priority": 1}"#),
            vec!["models".to_string()]
        );
    }
}
