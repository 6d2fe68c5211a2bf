//! Human approval of capability calls (seed 001: approval request and decision, a closed
//! loop that survives restarts and never runs twice).
//!
//! A call whose operation the sandbox's profile marks `approval = "required"` is stored as
//! `pending` and answered 202 with its id. Then:
//! * `pending -> approved` by a key with the `approver` role of the same owner (or an admin
//!   key); an approver cannot approve its own request (an admin key can);
//! * `pending -> declined` by such a key, or by the key that asked (withdrawing it);
//! * `pending -> expired` once `[approvals] ttl_secs` pass undecided;
//! * `approved -> running -> succeeded | failed`: one conditional update claims the run, so
//!   two approvals racing, or a restart, never run it twice. The call runs as the key that
//!   asked, with that key's scope at run time (a revoked key's call fails).
//!
//! At start-up, `approved` rows run, and `running` rows (cut off by the stop) become
//! `failed`: they may have had effects, so they are never run again.
//!
//! Who sees what: admin keys see every approval; approver keys see their owner's; any other
//! key sees the approvals it asked for. Another owner's approval is `not_found`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::Digest;

use super::CapabilityName;
use super::secrets::{RequestSecrets, SecretMasker};
use super::service::{AuditDraft, CapabilityService};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::sandbox::service::{Sandboxes, now_ms};
use crate::store::approvals::{self as store, ApprovalRow, Finished, ListScope};
use crate::store::keys::{self as key_store, Principal, new_id};
use crate::store::now_rfc3339;
use crate::store::rfc3339_from_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Running,
    Succeeded,
    Failed,
    Declined,
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Declined => "declined",
            Self::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "declined" => Self::Declined,
            "expired" => Self::Expired,
            _ => Self::Failed,
        }
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Declined | Self::Expired
        )
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApprovalError {
    pub code: ErrorCode,
    pub message: String,
}

/// An approval and, once it ran, its outcome: the trail of who asked, who decided, when,
/// what ran and how it ended.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Approval {
    pub id: String,
    pub status: ApprovalStatus,
    pub owner: String,
    /// The key that asked.
    pub requested_by: String,
    pub sandbox_id: String,
    /// As asked, version requirement included.
    pub capability: String,
    pub operation: String,
    /// The operation's input (secret values of the profile masked).
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// sha256 of the input as stored and run.
    pub input_sha256: String,
    pub created_at: String,
    pub expires_at: String,
    /// The key that approved or declined it.
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The call's answer once it `succeeded` (as `POST .../capabilities/...` gives it).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it `failed`, was `declined` (`approval_declined`) or `expired` (`approval_expired`).
    pub error: Option<ApprovalError>,
}

/// A page of approvals, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApprovalPage {
    pub items: Vec<Approval>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn error_code(text: &str) -> ErrorCode {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|code| code.as_str() == text)
        .unwrap_or(ErrorCode::InternalError)
}

impl CapabilityService {
    /// The view of a stored approval, its input masked with the sandbox profile's secrets.
    async fn view(&self, row: ApprovalRow) -> Approval {
        let masker = self
            .sandboxes
            .profile_of(&row.owner, &row.sandbox_id)
            .await
            .map(|profile| Sandboxes::masker(&profile, &RequestSecrets::default()))
            .unwrap_or_default();
        let status = ApprovalStatus::parse(&row.status);
        let error = match status {
            ApprovalStatus::Declined => Some(ApprovalError {
                code: ErrorCode::ApprovalDeclined,
                message: format!(
                    "declined by {}; it never ran",
                    row.decided_by.as_deref().unwrap_or("an approver")
                ),
            }),
            ApprovalStatus::Expired => Some(ApprovalError {
                code: ErrorCode::ApprovalExpired,
                message: format!(
                    "not decided within {} s; it never ran",
                    (row.expires_ms - row.created_ms) / 1000
                ),
            }),
            _ => row.error_code.as_deref().map(|code| ApprovalError {
                code: error_code(code),
                message: row.error_message.clone().unwrap_or_default(),
            }),
        };
        Approval {
            input: masker.mask_json(serde_json::from_str(&row.input).unwrap_or_default()),
            result: row
                .result
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            expires_at: rfc3339_from_ms(row.expires_ms),
            id: row.id,
            status,
            owner: row.owner,
            requested_by: row.requested_by,
            sandbox_id: row.sandbox_id,
            capability: row.capability,
            operation: row.operation,
            input_sha256: row.input_sha256,
            created_at: row.created_at,
            decided_by: row.decided_by,
            decided_at: row.decided_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            error,
        }
    }

    /// Step 4 of a call: stores the call as pending.
    pub(super) async fn request_approval(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        capability: &str,
        operation: &str,
        input: &serde_json::Value,
        masker: &SecretMasker,
    ) -> WharfResult<Approval> {
        let input_text = input.to_string();
        let now = now_ms();
        let ttl_ms = (self.approvals.ttl_secs.clamp(1, 365 * 24 * 3600) * 1000) as i64;
        let row = ApprovalRow {
            id: new_id("apr"),
            owner: principal.owner.clone(),
            requested_by: principal.key_id.clone(),
            sandbox_id: sandbox_id.to_string(),
            capability: capability.to_string(),
            operation: operation.to_string(),
            input_sha256: hex::encode(sha2::Sha256::digest(input_text.as_bytes())),
            input: input_text,
            status: "pending".into(),
            created_at: now_rfc3339(),
            created_ms: now,
            expires_ms: now + ttl_ms,
            decided_by: None,
            decided_at: None,
            started_at: None,
            finished_at: None,
            result: None,
            error_code: None,
            error_message: None,
        };
        if !store::insert_pending(&self.db, &row, self.approvals.pending_per_owner).await? {
            return Err(WharfError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "owner already has {} approvals pending ([approvals] pending_per_owner); decide or let some expire first",
                    self.approvals.pending_per_owner
                ),
            ));
        }
        self.count_approval("requested", 1);
        self.sandboxes
            .record_event(
                sandbox_id,
                "approval_requested",
                serde_json::json!({"approval_id": row.id, "capability": masker.mask(capability), "operation": operation}),
            )
            .await;
        self.changed();
        Ok(self.view(row).await)
    }

    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Whether `principal` may see `row`.
    fn sees(principal: &Principal, row: &ApprovalRow) -> bool {
        principal.admin
            || (row.owner == principal.owner
                && (principal.approver || row.requested_by == principal.key_id))
    }

    /// The row, if `principal` may see it, with a pending row past its deadline expired.
    async fn load(&self, principal: &Principal, id: &str) -> WharfResult<ApprovalRow> {
        let not_found = || WharfError::not_found(format!("approval {id}"));
        let mut row = store::get(&self.db, id).await?.ok_or_else(not_found)?;
        if !Self::sees(principal, &row) {
            return Err(not_found());
        }
        if row.status == "pending" && row.expires_ms <= now_ms() {
            self.expire_due().await?;
            row = store::get(&self.db, id).await?.ok_or_else(not_found)?;
        }
        Ok(row)
    }

    /// Pending approvals past their deadline become `expired`.
    pub(super) async fn expire_due(&self) -> WharfResult<()> {
        let expired = store::expire_due(&self.db, &now_rfc3339(), now_ms()).await?;
        if expired > 0 {
            self.count_approval("expired", expired);
            self.changed();
        }
        Ok(())
    }

    /// One approval; with `wait`, answers as soon as it is final or `wait` has passed.
    pub async fn approval(
        &self,
        principal: &Principal,
        id: &str,
        wait: Duration,
    ) -> WharfResult<Approval> {
        let deadline = Instant::now() + wait.min(Duration::from_secs(self.approvals.max_wait_secs));
        let mut changes = self.changes.subscribe();
        loop {
            changes.mark_unchanged();
            let row = self.load(principal, id).await?;
            let status = ApprovalStatus::parse(&row.status);
            let left = deadline.saturating_duration_since(Instant::now());
            if status.is_final() || left.is_zero() {
                return Ok(self.view(row).await);
            }
            // Wake at the first change, or in time to expire it.
            let until_expiry = Duration::from_millis((row.expires_ms - now_ms()).max(0) as u64);
            let nap = left.min(until_expiry.max(Duration::from_millis(50)));
            let _ = tokio::time::timeout(nap, changes.changed()).await;
        }
    }

    /// The approvals `principal` may see, newest first.
    pub async fn approvals(
        &self,
        principal: &Principal,
        status: Option<ApprovalStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> WharfResult<ApprovalPage> {
        self.expire_due().await?;
        let before =
            match cursor {
                Some(text) => {
                    let parsed = text
                        .split_once(':')
                        .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)));
                    Some(parsed.ok_or_else(|| {
                        WharfError::validation("cursor is not one this server gave")
                    })?)
                }
                None => None,
            };
        let scope = if principal.admin {
            ListScope::All
        } else if principal.approver {
            ListScope::Owner(&principal.owner)
        } else {
            ListScope::Requester {
                owner: &principal.owner,
                key_id: &principal.key_id,
            }
        };
        let mut rows = store::list(
            &self.db,
            scope,
            status.map(ApprovalStatus::as_str),
            before,
            limit + 1,
        )
        .await?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|row| format!("{}:{}", row.created_ms, row.id))
        } else {
            None
        };
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(self.view(row).await);
        }
        Ok(ApprovalPage { items, next_cursor })
    }

    /// Approves or declines a pending approval. An approved call starts at once, in the
    /// background; poll the approval for its result.
    pub async fn decide(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        approve: bool,
    ) -> WharfResult<Approval> {
        let row = self.load(principal, id).await?;
        let asked_it = row.requested_by == principal.key_id;
        if approve {
            super::scope::require_approver(principal)?;
            if asked_it && !principal.admin {
                return Err(WharfError::new(
                    ErrorCode::Forbidden,
                    "an approver cannot approve its own request; another approver (or an admin key) must",
                ));
            }
        } else if !asked_it {
            super::scope::require_approver(principal)?;
        }
        let to = if approve { "approved" } else { "declined" };
        let decided = store::decide(
            &self.db,
            id,
            to,
            &principal.key_id,
            &now_rfc3339(),
            now_ms(),
        )
        .await?;
        if !decided {
            let row = self.load(principal, id).await?;
            return Err(match ApprovalStatus::parse(&row.status) {
                ApprovalStatus::Expired => WharfError::new(
                    ErrorCode::ApprovalExpired,
                    format!("approval {id} expired before it was decided; it never ran"),
                ),
                status => WharfError::new(
                    ErrorCode::Conflict,
                    format!("approval {id} is already {}", status.as_str()),
                ),
            });
        }
        self.count_approval(to, 1);
        tracing::info!(approval = %id, decision = to, by = %principal.key_id, "approval decided");
        self.sandboxes
            .record_event(
                &row.sandbox_id,
                "approval_decided",
                serde_json::json!({"approval_id": id, "decision": to, "by": principal.key_id}),
            )
            .await;
        self.changed();
        if approve {
            tokio::spawn(self.clone().run_approved(id.to_string()));
        }
        let row = store::get(&self.db, id)
            .await?
            .ok_or_else(|| WharfError::not_found(format!("approval {id}")))?;
        Ok(self.view(row).await)
    }

    /// Runs an approved call, once: only the caller that moves it to `running` runs it.
    pub(super) async fn run_approved(self: Arc<Self>, id: String) {
        if let Err(err) = self.try_run_approved(&id).await {
            tracing::error!(approval = %id, error = %err.message, "cannot run an approved call");
        }
    }

    async fn try_run_approved(&self, id: &str) -> WharfResult<()> {
        if !store::claim_run(&self.db, id, &now_rfc3339()).await? {
            return Ok(());
        }
        self.changed();
        let Some(row) = store::get(&self.db, id).await? else {
            return Ok(());
        };
        let started = Instant::now();
        let requester = key_store::active_principal(&self.db, &row.requested_by)
            .await?
            .filter(|principal| principal.owner == row.owner);
        let mut draft = AuditDraft {
            owner: row.owner.clone(),
            key_id: row.requested_by.clone(),
            sandbox_id: row.sandbox_id.clone(),
            capability: row.capability.clone(),
            operation: row.operation.clone(),
            pack: None,
            approval_id: Some(row.id.clone()),
            sandbox_found: false,
        };
        let result = match &requester {
            Some(principal) => self.run_stored(principal, &row, &mut draft).await,
            None => Err(WharfError::new(
                ErrorCode::Forbidden,
                format!(
                    "the key that asked ({}) was revoked before the call could run",
                    row.requested_by
                ),
            )),
        };
        let (status, result_text, error) = match &result {
            Ok(outcome) => ("succeeded", serde_json::to_string(outcome).ok(), None),
            Err(err) => ("failed", None, Some(err)),
        };
        let at = now_rfc3339();
        store::finish(
            &self.db,
            id,
            Finished {
                status,
                at: &at,
                ms: now_ms(),
                result: result_text.as_deref(),
                error_code: error.map(|err| err.code.as_str()),
                error_message: error.map(|err| err.message.as_str()),
            },
        )
        .await?;
        self.count_approval(status, 1);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.code.as_str(),
        };
        self.record(draft, outcome, started.elapsed()).await;
        self.changed();
        Ok(())
    }

    /// The call of an approved row, with the requesting key's scope as it is now.
    async fn run_stored(
        &self,
        principal: &Principal,
        row: &ApprovalRow,
        draft: &mut AuditDraft,
    ) -> WharfResult<super::InvokeOutcome> {
        let wanted = CapabilityName::parse(&row.capability)?;
        let route = super::route(&self.packs, &wanted, &row.operation)?;
        draft.pack = Some((route.pack.id.clone(), route.pack.version.to_string()));
        let full = format!("{}.{}", wanted.name, row.operation);
        super::scope::require(principal, &full)?;
        let (_, profile) = self.authorize_sandbox(principal, &row.sandbox_id).await?;
        draft.sandbox_found = true;
        profile.require(&full)?;
        let input = serde_json::from_str(&row.input)
            .map_err(|_| WharfError::internal("the stored input is not JSON"))?;
        self.execute(
            principal,
            &row.sandbox_id,
            &route,
            &wanted,
            &row.operation,
            input,
            &RequestSecrets::default(),
        )
        .await
    }

    /// At start-up: fail runs a stop cut off, run approved calls not yet started.
    pub(super) async fn resume_approvals(self: &Arc<Self>) -> WharfResult<()> {
        let interrupted = store::fail_interrupted(
            &self.db,
            &now_rfc3339(),
            now_ms(),
            "the server stopped while the approved call ran; it was not run again (it may have had effects)",
        )
        .await?;
        if interrupted > 0 {
            tracing::warn!(
                count = interrupted,
                "approved calls interrupted by a stop were failed"
            );
        }
        for id in store::approved_ids(&self.db).await? {
            tokio::spawn(self.clone().run_approved(id));
        }
        Ok(())
    }
}
