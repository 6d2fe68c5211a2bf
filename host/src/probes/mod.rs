//! Access probes: does an OpenAI-compatible endpoint really serve a model?
//!
//! - [`runner`]: one probe (plugin plans and judges, the host does the HTTP);
//! - [`targets`]: registered targets and probe history in SQLite;
//! - [`scheduler`]: probes due targets in the background;
//! - [`crypto`]: target keys sealed at rest, fingerprints, redaction.

pub mod crypto;
pub mod runner;
pub mod scheduler;
pub mod targets;

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{GaugeVec, IntGaugeVec, Opts};
use rand::Rng;
use serde::Serialize;

use self::crypto::SecretBox;
use self::runner::{ProbeRequest, ProbeResult, ProbeRunner};
use crate::config::ProbesConfig;
use crate::error::{WharfError, WharfResult};
use crate::metrics::Metrics;
use crate::outbound::Reach;
use crate::packs::Packs;
use crate::store::Db;
use crate::store::keys::Principal;
use crate::store::probe_targets::{self as stored, CreateTarget, Target};

/// Default schedule interval of a target.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Longest schedule interval (a day): longer is surely a unit mistake.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// `wharf_probe_up` and `wharf_probe_duration_seconds`, by target and provider.
#[derive(Clone)]
pub struct ProbeMetrics {
    pub up: IntGaugeVec,
    pub duration: GaugeVec,
}

impl ProbeMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let labels = &["target", "provider"];
        let up = IntGaugeVec::new(
            Opts::new(
                "wharf_probe_up",
                "1 when the target's last probe was ready, else 0",
            ),
            labels,
        )
        .expect("valid metric");
        let duration = GaugeVec::new(
            Opts::new(
                "wharf_probe_duration_seconds",
                "Duration of the target's last probe",
            ),
            labels,
        )
        .expect("valid metric");
        metrics.register(Box::new(up.clone()));
        metrics.register(Box::new(duration.clone()));
        Self { up, duration }
    }
}

/// `GET /v1/targets/{id}/status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TargetStatus {
    pub target: Target,
    /// The latest verdict; null before the first probe.
    pub verdict: Option<String>,
    /// Since when that verdict has held.
    pub since: Option<String>,
    /// Seconds the verdict has held so far.
    pub held_secs: Option<f64>,
    /// The latest results, newest first.
    pub results: Vec<ProbeResult>,
}

/// Probes, targets and their schedule.
pub struct ProbeService {
    runner: Arc<ProbeRunner>,
    db: Db,
    secrets: SecretBox,
    config: ProbesConfig,
    metrics: ProbeMetrics,
    /// Targets with a probe in flight: the scheduler never runs one target twice at once.
    running: Mutex<HashSet<String>>,
}

impl ProbeService {
    pub fn new(
        packs: Arc<Packs>,
        db: Db,
        config: ProbesConfig,
        data_dir: &std::path::Path,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let secrets = SecretBox::load(config.encryption_key.as_deref(), data_dir)?;
        Ok(Self {
            runner: Arc::new(ProbeRunner::new(packs, config.clone())?),
            db,
            secrets,
            metrics: ProbeMetrics::register(metrics),
            config,
            running: Mutex::new(HashSet::new()),
        })
    }

    pub fn runner(&self) -> &Arc<ProbeRunner> {
        &self.runner
    }

    pub fn config(&self) -> &ProbesConfig {
        &self.config
    }

    /// A one-off probe; the result is kept in the owner's history.
    pub async fn probe(
        &self,
        caller: &Principal,
        request: &ProbeRequest,
    ) -> WharfResult<ProbeResult> {
        let result = self.runner.run(request, self.reach(caller.admin)).await?;
        stored::record(
            &self.db,
            &caller.owner,
            &result,
            self.config.history_adhoc,
            self.config.failure_threshold,
            targets::next_state,
        )
        .await?;
        Ok(result)
    }

    /// Which addresses a caller's probes may reach (see [`crate::outbound`]).
    fn reach(&self, admin: bool) -> Reach {
        Reach::for_caller(admin, self.config.allow_private_targets)
    }

    /// A scheduled probe reaches what its creator's key may reach now: an admin key revoked
    /// since loses its targets' private reach.
    async fn reach_of_target(&self, due: &stored::DueTarget) -> WharfResult<Reach> {
        if self.config.allow_private_targets {
            return Ok(Reach::Any);
        }
        let admin = match due.created_by_key.as_deref() {
            Some(key_id) => crate::store::keys::is_active_admin(&self.db, key_id).await?,
            None => false,
        };
        Ok(self.reach(admin))
    }

    pub async fn result(&self, owner: &str, id: &str) -> WharfResult<ProbeResult> {
        stored::result(&self.db, owner, id).await
    }

    /// Registers a target; `quota` caps the owner's targets (`None`: no cap).
    pub async fn create_target(
        &self,
        creator: &Principal,
        spec: CreateTarget,
        quota: Option<u32>,
    ) -> WharfResult<Target> {
        let owner = creator.owner.as_str();
        let interval = spec.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
        let min = self.config.min_interval_secs.max(1);
        if !(min..=MAX_INTERVAL_SECS).contains(&interval) {
            return Err(WharfError::validation(format!(
                "`interval_secs` must be within {min}..={MAX_INTERVAL_SECS}"
            )));
        }
        // The same checks as a probe, so a target that can never be probed is refused now (and
        // again at every run: a name may resolve elsewhere later).
        let request = request_of(&spec);
        self.runner
            .check(&request, self.reach(creator.admin))
            .await?;
        let id = crate::store::keys::new_id("tgt");
        let sealed = self.secrets.seal(&spec.api_key, &id)?;
        let created_at = crate::store::now_rfc3339();
        // A little jitter even on the first probe, so targets created together spread out.
        let first_due_at =
            unix_now() + rand::rng().random_range(0.0..(interval as f64 * 0.1).min(1.0));
        stored::insert(
            &self.db,
            stored::NewTarget {
                id: &id,
                owner,
                created_by_key: &creator.key_id,
                spec: &spec,
                key_sealed: &sealed,
                key_fingerprint: &crypto::fingerprint(&spec.api_key),
                interval_secs: interval,
                created_at: &created_at,
                first_due_at,
            },
            quota,
        )
        .await?;
        stored::get(&self.db, owner, &id).await
    }

    pub async fn list_targets(&self, owner: &str) -> WharfResult<Vec<Target>> {
        stored::list(&self.db, owner).await
    }

    pub async fn target(&self, owner: &str, id: &str) -> WharfResult<Target> {
        stored::get(&self.db, owner, id).await
    }

    pub async fn delete_target(&self, owner: &str, id: &str) -> WharfResult<()> {
        let target = stored::get(&self.db, owner, id).await?;
        stored::delete(&self.db, owner, id).await?;
        let _ = self
            .metrics
            .up
            .remove_label_values(&[&target.id, &target.provider]);
        let _ = self
            .metrics
            .duration
            .remove_label_values(&[&target.id, &target.provider]);
        Ok(())
    }

    pub async fn status(&self, owner: &str, id: &str, limit: u32) -> WharfResult<TargetStatus> {
        let target = stored::get(&self.db, owner, id).await?;
        let results = stored::recent(&self.db, id, limit).await?;
        let held_secs = target.verdict_since.as_deref().and_then(seconds_since);
        Ok(TargetStatus {
            verdict: target.verdict.clone(),
            since: target.verdict_since.clone(),
            held_secs,
            results,
            target,
        })
    }

    /// Probes one due target and records the outcome; a probe that could not run at all (no
    /// provider pack, a plugin fault) is recorded too, under its error code.
    async fn probe_target(&self, due: stored::DueTarget) {
        let started = std::time::Instant::now();
        let started_at = crate::store::now_rfc3339();
        let opened = match self.reach_of_target(&due).await {
            Ok(reach) => self
                .secrets
                .open(&due.key_sealed, &due.id)
                .map(|key| (key, reach)),
            Err(err) => Err(err),
        };
        let outcome = match opened {
            Ok((api_key, reach)) => {
                let request = ProbeRequest {
                    provider: due.provider.clone(),
                    base_url: due.base_url.clone(),
                    api_key,
                    model: due.model.clone(),
                    stream: due.stream,
                    direct_base_url: due.direct_base_url.clone(),
                };
                // The plugin's log lines of this probe are the target owner's.
                crate::runtime::call::CALL_OWNER
                    .scope(due.owner.as_str().into(), self.runner.run(&request, reach))
                    .await
            }
            Err(err) => Err(err),
        };
        let mut result = outcome.unwrap_or_else(|err| ProbeResult {
            id: crate::store::keys::new_id("prb"),
            target_id: None,
            provider: due.provider.clone(),
            base_url: due.base_url.clone(),
            direct_base_url: due.direct_base_url.clone(),
            model: due.model.clone(),
            verdict: err.code.as_str().to_string(),
            retriable: err.retriable(),
            retry_after_ms: err.retry_after_ms,
            detail: format!("the probe could not run: {}", err.message),
            attempts: 0,
            warnings: Vec::new(),
            pack: String::new(),
            pack_version: String::new(),
            generation: 0,
            started_at,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            steps: Vec::new(),
        });
        result.target_id = Some(due.id.clone());
        if let Some(at) = scheduler::due_at_retry_hint(&result) {
            // Near the upstream's reset time, not a whole interval later (nor earlier).
            if let Err(err) = stored::set_next_due(&self.db, &due.id, at).await {
                tracing::warn!(target_id = %due.id, code = err.code.as_str(), "rescheduling a rate-limited target failed");
            }
        }
        // The gauge follows the target's state, which holds through isolated failures.
        let up = match stored::record(
            &self.db,
            &due.owner,
            &result,
            self.config.history_per_target,
            self.config.failure_threshold,
            targets::next_state,
        )
        .await
        {
            Ok(Some(state)) => Some(state == runner::READY),
            // Deleted while it was probed: its series are gone and stay gone.
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(target_id = %due.id, code = err.code.as_str(), "storing a probe result failed");
                Some(result.ready())
            }
        };
        if let Some(up) = up {
            let labels = [due.id.as_str(), due.provider.as_str()];
            self.metrics
                .up
                .with_label_values(&labels)
                .set(i64::from(up));
            self.metrics
                .duration
                .with_label_values(&labels)
                .set(result.duration_ms / 1000.0);
        }
        tracing::debug!(target_id = %due.id, provider = %due.provider, verdict = %result.verdict, duration_ms = result.duration_ms, "target probed");
    }
}

fn request_of(spec: &CreateTarget) -> ProbeRequest {
    ProbeRequest {
        provider: spec.provider.clone(),
        base_url: spec.base_url.clone(),
        api_key: spec.api_key.clone(),
        model: spec.model.clone(),
        stream: spec.stream,
        direct_base_url: spec.direct_base_url.clone(),
    }
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn seconds_since(rfc3339: &str) -> Option<f64> {
    let then = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(((time::OffsetDateTime::now_utc() - then).as_seconds_f64()).max(0.0))
}
