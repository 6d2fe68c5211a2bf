//! The one path of every capability call: [`CapabilityService::call`].
//!
//! ```text
//! call(principal, sandbox_id, capability, operation, input, secrets)
//!   0. the sandbox  the caller's (else not_found); unisolated profiles admin-only; key's profiles
//!   1. routing      capability[@version] -> the adapter of the active pack (operator pins apply)
//!   2. scope        the key may call `capability.operation`, and use the sandbox's profile
//!   3. sandbox      the caller's sandbox (else not_found), its profile allows the operation
//!   4. approval     the profile marks the operation `approval = "required"`:
//!                   stored, answered PendingApproval(id); it runs once an approver approves
//!   5. the call     the adapter runs bound to the sandbox (its host calls count as sandbox use)
//!   6. masking      secret values -> `***` in the output and any error
//!   7. audit        one row whatever the outcome (owner, key, sandbox, capability, operation,
//!                   outcome, duration, pack and version)
//!   8. observability  `wharf_capability_calls_total`, a `capability` sandbox event
//! ```
//!
//! The HTTP invoke route calls it; so must MCP tools for adapter operations and any batch
//! planner. Direct sandbox routes (exec, files) check the same scopes with
//! [`CapabilityService::authorize_direct`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capabilities::scope::{self, SANDBOX_EXEC, SANDBOX_FILES_WRITE};
use crate::capabilities::secrets::{RequestSecrets, SecretMasker};
use crate::capabilities::{CapabilityName, InvokeOutcome, invoke_route, route};
use crate::config::{ApprovalsConfig, AuditConfig};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::metrics::Metrics;
use crate::packs::Packs;
use crate::sandbox::profiles::Profile;
use crate::sandbox::service::{Sandbox, Sandboxes, now_ms};
use crate::store::Db;
use crate::store::audit::{self as audit_store, AuditFilter, AuditRecord, NewAuditRecord};
use crate::store::keys::Principal;
use crate::store::now_rfc3339;

pub use super::approvals::Approval;

/// How a capability call ended for its caller.
#[derive(Debug)]
pub enum CallOutcome {
    /// It ran: the adapter's answer, secrets masked.
    Done(InvokeOutcome),
    /// It waits for an approver; poll `GET /v1/approvals/{id}`.
    PendingApproval(Box<Approval>),
}

/// One capability as a sandbox offers it to a key.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AvailableCapability {
    pub capability: String,
    pub pack: String,
    pub version: String,
    pub operations: Vec<AvailableOperation>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AvailableOperation {
    pub name: String,
    /// A call waits for an approver (answered 202 with an approval).
    pub approval_required: bool,
}

/// Capability call metrics (registered by the service).
struct CapabilityMetrics {
    calls: prometheus::IntCounterVec,
    approvals: prometheus::IntCounterVec,
}

/// What the audit row of a call will say; filled in as the call goes.
pub(super) struct AuditDraft {
    pub owner: String,
    pub key_id: String,
    pub sandbox_id: String,
    pub capability: String,
    pub operation: String,
    /// Set once routing found the adapter (metric labels use only routed names).
    pub pack: Option<(String, String)>,
    pub approval_id: Option<String>,
    /// Set once the sandbox is known to be the caller's: then it gets an event.
    pub sandbox_found: bool,
}

impl AuditDraft {
    pub(super) fn new(
        principal: &Principal,
        sandbox_id: &str,
        capability: &str,
        operation: &str,
    ) -> Self {
        Self {
            owner: principal.owner.clone(),
            key_id: principal.key_id.clone(),
            sandbox_id: sandbox_id.chars().take(128).collect(),
            capability: capability.chars().take(160).collect(),
            operation: operation.chars().take(128).collect(),
            pack: None,
            approval_id: None,
            sandbox_found: false,
        }
    }
}

pub struct CapabilityService {
    pub(super) db: Db,
    pub(super) packs: Arc<Packs>,
    pub(super) sandboxes: Arc<Sandboxes>,
    pub(super) approvals: ApprovalsConfig,
    audit: AuditConfig,
    metrics: CapabilityMetrics,
    /// Bumped whenever an approval changes, for long-polling readers.
    pub(super) changes: tokio::sync::watch::Sender<u64>,
}

impl CapabilityService {
    /// The capability subsystem: resumes approvals left by a stop (an approved call not yet
    /// started runs now; one cut off while running is failed, never run twice) and starts
    /// the retention and expiry sweep.
    pub async fn start(
        db: Db,
        packs: Arc<Packs>,
        sandboxes: Arc<Sandboxes>,
        approvals: ApprovalsConfig,
        audit: AuditConfig,
        metrics: &Metrics,
    ) -> WharfResult<Arc<Self>> {
        let calls = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "wharf_capability_calls_total",
                "Capability calls by capability, operation and outcome (ok, pending_approval or an error code)",
            ),
            &["capability", "operation", "outcome"],
        )
        .expect("valid metric");
        let approval_counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "wharf_approvals_total",
                "Approvals by what happened to them (requested, approved, declined, expired, succeeded, failed)",
            ),
            &["event"],
        )
        .expect("valid metric");
        metrics.register(Box::new(calls.clone()));
        metrics.register(Box::new(approval_counter.clone()));
        let service = Arc::new(Self {
            db,
            packs,
            sandboxes,
            approvals,
            audit,
            metrics: CapabilityMetrics {
                calls,
                approvals: approval_counter,
            },
            changes: tokio::sync::watch::channel(0).0,
        });
        service.resume_approvals().await?;
        tokio::spawn(sweep(Arc::downgrade(&service)));
        Ok(service)
    }

    /// Runs `capability.operation` with `input` in the caller's sandbox, or parks it for an
    /// approver. `capability` may carry a version requirement (`shell@0.1`). `secrets` are
    /// given to every exec the adapter makes and masked in what comes back (a call that
    /// needs approval cannot carry them: they would have to be stored).
    pub async fn call(
        self: &Arc<Self>,
        principal: &Principal,
        sandbox_id: &str,
        capability: &str,
        operation: &str,
        input: serde_json::Value,
        secrets: RequestSecrets,
    ) -> WharfResult<CallOutcome> {
        let started = Instant::now();
        let mut draft = AuditDraft::new(principal, sandbox_id, capability, operation);
        let result = self
            .call_steps(
                principal, sandbox_id, capability, operation, input, &secrets, &mut draft,
            )
            .await;
        let outcome = match &result {
            Ok(CallOutcome::Done(_)) => "ok",
            Ok(CallOutcome::PendingApproval(_)) => "pending_approval",
            Err(err) => err.code.as_str(),
        };
        self.record(draft, outcome, started.elapsed()).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_steps(
        self: &Arc<Self>,
        principal: &Principal,
        sandbox_id: &str,
        capability: &str,
        operation: &str,
        input: serde_json::Value,
        secrets: &RequestSecrets,
        draft: &mut AuditDraft,
    ) -> WharfResult<CallOutcome> {
        // The sandbox first: a sandbox the key may not use (another owner's, an unisolated
        // profile for a non-admin key, a profile outside its scope) is refused whatever is
        // loaded.
        let (_, profile) = self.authorize_sandbox(principal, sandbox_id).await?;
        draft.sandbox_found = true;
        // 1. Routing.
        let wanted = CapabilityName::parse(capability)?;
        let route = route(&self.packs, &wanted, operation)?;
        draft.pack = Some((route.pack.id.clone(), route.pack.version.to_string()));
        let full = format!("{}.{operation}", wanted.name);
        // 2. The key's scope; 3. the profile allows the operation (below).
        scope::require(principal, &full)?;
        let masker = Sandboxes::masker(&profile, secrets);
        profile.require(&full)?;
        // 4. The approval gate.
        if profile.needs_approval(&full) {
            if !secrets.is_empty() {
                return Err(WharfError::validation(format!(
                    "{full} waits for an approver in profile {:?}, and a waiting call cannot carry request secrets (Wharf-Secret-Env); put them in the profile's secret_env",
                    profile.name
                )));
            }
            let approval = self
                .request_approval(
                    principal, sandbox_id, capability, operation, &input, &masker,
                )
                .await?;
            draft.approval_id = Some(approval.id.clone());
            return Ok(CallOutcome::PendingApproval(Box::new(approval)));
        }
        // 5-6. The call, masked.
        self.execute(
            principal, sandbox_id, &route, &wanted, operation, input, secrets,
        )
        .await
        .map(CallOutcome::Done)
    }

    /// What the caller may call on this sandbox: the active adapters' operations that the
    /// sandbox's profile allows and the key's scope names (the routing table, intersected).
    pub async fn available(
        &self,
        principal: &Principal,
        sandbox_id: &str,
    ) -> WharfResult<Vec<AvailableCapability>> {
        let (_, profile) = self.authorize_sandbox(principal, sandbox_id).await?;
        let snapshot = self.packs.snapshot();
        let mut found = Vec::new();
        for (name, route) in &snapshot.capabilities {
            let Some(adapter) = route.component().adapter.as_ref() else {
                continue;
            };
            let operations: Vec<AvailableOperation> = adapter
                .operations
                .iter()
                .map(|op| format!("{name}.{}", op.name))
                .zip(adapter.operations.iter())
                .filter(|(full, _)| {
                    profile.allows(full) && (principal.admin || principal.scope.allows(full))
                })
                .map(|(full, op)| AvailableOperation {
                    name: op.name.clone(),
                    approval_required: profile.needs_approval(&full),
                })
                .collect();
            if !operations.is_empty() {
                found.push(AvailableCapability {
                    capability: name.clone(),
                    pack: route.pack.id.clone(),
                    version: route.pack.version.to_string(),
                    operations,
                });
            }
        }
        Ok(found)
    }

    /// Steps 5 and 6: binds the sandbox (starting it if stopped), runs the adapter, masks.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        route: &crate::packs::CapabilityRoute,
        wanted: &CapabilityName,
        operation: &str,
        input: serde_json::Value,
        secrets: &RequestSecrets,
    ) -> WharfResult<InvokeOutcome> {
        let full = format!("{}.{operation}", wanted.name);
        let binding = self
            .sandboxes
            .bind(&principal.owner, sandbox_id, &full, secrets)
            .await?;
        let masker = binding.masker().clone();
        match invoke_route(route.clone(), binding, &wanted.name, operation, input).await {
            Ok(mut outcome) => {
                outcome.output = masker.mask_json(outcome.output);
                Ok(outcome)
            }
            Err(err) => Err(masker.mask_error(err)),
        }
    }

    /// The caller's sandbox and its profile, if the key may use it: another owner's sandbox
    /// is `not_found`; a profile without isolation is for admin keys only; the key's
    /// profile scope applies.
    pub(super) async fn authorize_sandbox(
        &self,
        principal: &Principal,
        sandbox_id: &str,
    ) -> WharfResult<(Sandbox, Profile)> {
        let sandbox = self.sandboxes.get(&principal.owner, sandbox_id).await?;
        let profile = self.sandboxes.profiles().get(&sandbox.profile).map_err(|_| {
            WharfError::new(
                ErrorCode::Conflict,
                format!(
                    "the profile {:?} of sandbox {sandbox_id} is no longer defined; the sandbox can only be stopped or deleted",
                    sandbox.profile
                ),
            )
        })?;
        if profile.unconfined() && !principal.admin {
            return Err(unconfined_forbidden(&profile.name));
        }
        scope::require_profile(principal, &sandbox.profile)?;
        Ok((sandbox, profile))
    }

    /// The checks of a direct sandbox route (`route` is [`scope::SANDBOX_EXEC`],
    /// [`scope::SANDBOX_FILES_READ`] or [`scope::SANDBOX_FILES_WRITE`]): the key's scope
    /// must name it, the sandbox's profile must be in the key's profiles, and in a profile
    /// that makes operations wait for approval, exec and file writes are refused (they would
    /// do unapproved what the adapter may only do approved). Admin keys pass. Answers the
    /// sandbox's masker (its profile's secrets).
    pub async fn authorize_direct(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        route: &str,
    ) -> WharfResult<SecretMasker> {
        if principal.admin {
            return Ok(self
                .sandboxes
                .profile_of(&principal.owner, sandbox_id)
                .await
                .map(|profile| Sandboxes::masker(&profile, &RequestSecrets::default()))
                .unwrap_or_default());
        }
        scope::require(principal, route)?;
        let (_, profile) = self.authorize_sandbox(principal, sandbox_id).await?;
        if profile.has_approval_rules() && (route == SANDBOX_EXEC || route == SANDBOX_FILES_WRITE) {
            return Err(WharfError::new(
                ErrorCode::Forbidden,
                format!(
                    "profile {:?} makes some operations wait for an approver, so {route} is refused: call the capability instead (only admin keys may use it directly)",
                    profile.name
                ),
            ));
        }
        Ok(Sandboxes::masker(&profile, &RequestSecrets::default()))
    }

    /// The profile scope of a lifecycle route (stop, start, delete, keepalive).
    pub async fn authorize_lifecycle(
        &self,
        principal: &Principal,
        sandbox_id: &str,
    ) -> WharfResult<()> {
        if principal.admin || principal.scope.profiles.is_none() {
            return Ok(());
        }
        let sandbox = self.sandboxes.get(&principal.owner, sandbox_id).await?;
        scope::require_profile(principal, &sandbox.profile)
    }

    /// Audits a direct exec like a capability call (capability `sandbox`, operation `exec`).
    pub async fn record_direct_exec(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        result: Result<(), &WharfError>,
        elapsed: Duration,
    ) {
        let draft = AuditDraft::new(principal, sandbox_id, "sandbox", "exec");
        let outcome = match result {
            Ok(()) => "ok",
            Err(err) => err.code.as_str(),
        };
        self.write_audit(&draft, outcome, elapsed).await;
    }

    /// Steps 7 and 8: the audit row, the metric, the sandbox event.
    pub(super) async fn record(&self, draft: AuditDraft, outcome: &str, elapsed: Duration) {
        let (capability, operation) = match &draft.pack {
            Some(_) => (
                draft.capability.split('@').next().unwrap_or(""),
                draft.operation.as_str(),
            ),
            None => ("-", "-"),
        };
        self.metrics
            .calls
            .with_label_values(&[capability, operation, outcome])
            .inc();
        if draft.sandbox_found {
            let mut detail = serde_json::json!({
                "capability": draft.capability,
                "operation": draft.operation,
                "outcome": outcome,
                "duration_ms": elapsed.as_millis() as u64,
            });
            if let Some(id) = &draft.approval_id {
                detail["approval_id"] = id.as_str().into();
            }
            self.sandboxes
                .record_event(&draft.sandbox_id, "capability", detail)
                .await;
        }
        self.write_audit(&draft, outcome, elapsed).await;
    }

    async fn write_audit(&self, draft: &AuditDraft, outcome: &str, elapsed: Duration) {
        let ts = now_rfc3339();
        let record = NewAuditRecord {
            ts: &ts,
            ts_ms: now_ms(),
            owner: &draft.owner,
            key_id: &draft.key_id,
            sandbox_id: &draft.sandbox_id,
            capability: &draft.capability,
            operation: &draft.operation,
            outcome,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            pack: draft.pack.as_ref().map(|(id, _)| id.as_str()),
            pack_version: draft.pack.as_ref().map(|(_, v)| v.as_str()),
            approval_id: draft.approval_id.as_deref(),
        };
        if let Err(err) = audit_store::insert(&self.db, record).await {
            tracing::error!(error = %err.message, "cannot write an audit row");
        }
    }

    pub(super) fn count_approval(&self, event: &str, n: u64) {
        self.metrics.approvals.with_label_values(&[event]).inc_by(n);
    }

    /// Audit rows the caller may see: its owner's, or every owner's for an admin key.
    pub async fn audit(
        &self,
        principal: &Principal,
        mut filter: AuditFilter<'_>,
    ) -> WharfResult<Vec<AuditRecord>> {
        if !principal.admin {
            filter.owner = Some(&principal.owner);
        }
        audit_store::query(&self.db, filter).await
    }

    /// One pass of retention and expiry.
    async fn sweep_once(&self) -> WharfResult<()> {
        self.expire_due().await?;
        let cutoff =
            now_ms() - (self.audit.retention_secs.min(i64::MAX as u64 / 1000) * 1000) as i64;
        let purged = audit_store::purge(&self.db, cutoff, self.audit.max_rows).await?;
        let approvals = crate::store::approvals::purge_finished(&self.db, cutoff).await?;
        if purged + approvals > 0 {
            tracing::debug!(audit_rows = purged, approvals, "audit retention");
        }
        Ok(())
    }
}

/// The retention and expiry task: ends when the service is dropped.
async fn sweep(service: std::sync::Weak<CapabilityService>) {
    loop {
        let period = match service.upgrade() {
            Some(service) => {
                if let Err(err) = service.sweep_once().await {
                    tracing::warn!(error = %err.message, "audit and approval sweep failed");
                }
                Duration::from_millis(service.audit.gc_interval_ms.max(50))
            }
            None => return,
        };
        tokio::time::sleep(period).await;
    }
}

pub fn unconfined_forbidden(profile: &str) -> WharfError {
    WharfError::new(
        ErrorCode::Forbidden,
        format!("profile {profile:?} runs without isolation: only admin keys may use it"),
    )
}
