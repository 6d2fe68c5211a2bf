//! Batches: JSONL task lists run in sandboxes, each task leaving a trajectory (seed 002's
//! agent data platform, on the run engine of [`crate::jobs`]).
//!
//! - `POST /v1/batches` stores the batch and one run (kind `batch_task`) per accepted task,
//!   all `queued`; lines that fail validation are reported by number ([`spec`]).
//! - The dispatcher ([`run`]) takes tasks from one queue per `task_type`, highest
//!   `priority` first, at most `[batches.queues.<type>] concurrency` at once (default
//!   `[batches] default_concurrency`).
//! - Each task runs in a fresh sandbox of its profile, destroyed afterwards (kept when it
//!   failed and the batch asked `keep_on_failure`). The `script` planner makes the task's
//!   steps as capability calls through
//!   [`CapabilityService::call`](crate::capabilities::service::CapabilityService::call), so
//!   scopes, masking, audit and metrics apply as for any client.
//! - A task may name a planner component of a loaded pack instead (`"planner": "llm"`):
//!   it is asked for each next action with the task and its history, offered the operations
//!   the task's key may call as tools (`<capability>_<operation>`), and its calls run like a
//!   script's. It reaches the chat completions endpoint of `[batches.planner]` by `wasi:http`,
//!   only where its pack declares and the operator grants (`[packs] http_grants`); the host
//!   adds the endpoint's key. A failed step does not end such a task (the planner sees the
//!   error and goes on); its answer without a tool call does, and so do `max_steps` and the
//!   task's timeout.
//! - Every failure has an [`ErrorClass`] taken from a real signal (an adapter's error code,
//!   an exit code, a deadline, the run engine) and a [`Side`]: `task` failures are the
//!   task's; `infrastructure` failures (sandbox, system) are retried, up to
//!   `[batches] max_attempts` attempts in all, before they count.
//! - With `cache=true`, a task whose key (owner, normalised spec, pack versions) matches a
//!   succeeded task reuses that trajectory, marked `cache_hit`, without a sandbox.
//! - After a restart, tasks that were running are put back in their queue (their sandbox
//!   removed) or, past `max_attempts`, failed as `system_error`; every task ends exactly once
//!   (the conditional end in `store::batches::end_task` decides, and the run follows).

pub mod client;
pub mod export;
mod planner;
mod run;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use self::spec::{InvalidLine, ServerChecks, TaskSpec};
use crate::capabilities::scope;
use crate::capabilities::service::{CapabilityService, unconfined_forbidden};
use crate::config::QuotasConfig;
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::jobs::log::Level;
use crate::jobs::{RunEngine, RunKind, RunState, Stream, now_ms};
use crate::metrics::Metrics;
use crate::outbound::{ClientOptions, OutboundClient, Reach};
use crate::packs::Packs;
use crate::sandbox::service::Sandboxes;
use crate::store::Db;
use crate::store::batches::{self as store, TaskEnd, TaskFilter};
use crate::store::keys::Principal;
use crate::store::rfc3339_from_ms;

/// `[batches]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchesConfig {
    /// Largest `POST /v1/batches` body, in bytes.
    pub max_body_bytes: usize,
    /// Most tasks in one batch.
    pub max_tasks_per_batch: usize,
    /// Profile of a task that names none.
    pub default_profile: String,
    /// `max_steps` of a task that sets none, and the most one may set (also the most
    /// `steps` a script may list).
    pub default_max_steps: u32,
    pub max_steps_cap: u32,
    /// `timeout` (seconds) of a task that sets none, and the most one may set.
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// Tasks of one type running at once, for a type without its own `[batches.queues]`.
    pub default_concurrency: usize,
    /// Per task type: `[batches.queues.code] concurrency = 2`.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Attempts of a task in all: infrastructure failures and restarts retry it until then.
    pub max_attempts: u32,
    /// Wait before the first retry of an infrastructure failure (doubling, capped at 10 s).
    pub retry_backoff_ms: u64,
    /// Bytes of each step's observation kept in the trajectory (the rest is cut, and marked).
    pub observation_cap_bytes: usize,
    /// How often the dispatcher looks at the queues when nothing wakes it.
    pub poll_interval_ms: u64,
    /// `[batches.planner]`: the endpoint that plugin planners (`"planner": "llm"`) ask.
    pub planner: PlannerEndpointConfig,
}

/// `[batches.planner]`: the OpenAI-compatible chat completions endpoint of plugin planners.
/// Either `base_url` (and `auth_scheme`), or `provider`: a provider of a loaded provider pack,
/// whose catalog gives both.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerEndpointConfig {
    /// API root, e.g. `https://api.openai.com/v1`; requests go to `<base_url>/chat/completions`.
    pub base_url: Option<String>,
    /// A provider id of a loaded provider pack (e.g. `deepseek`): its `base_url` and
    /// `auth_scheme` are used unless set here.
    pub provider: Option<String>,
    /// The model every plugin-planned task asks.
    pub model: Option<String>,
    /// The endpoint's key (`WHARF_PLANNER_API_KEY`). Secret: never logged or shown; the host
    /// adds it to requests at the endpoint's origin only, and the planner never sees it.
    pub api_key: Option<String>,
    /// How the key is sent: `bearer` (`Authorization: Bearer`, the default), `x-api-key`
    /// or `api-key`.
    pub auth_scheme: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl std::fmt::Debug for PlannerEndpointConfig {
    // Hand-written so the key can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannerEndpointConfig")
            .field("base_url", &self.base_url)
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("auth_scheme", &self.auth_scheme)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub concurrency: usize,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_tasks_per_batch: 10_000,
            default_profile: crate::sandbox::service::LOCAL_PROFILE.to_string(),
            default_max_steps: 10,
            max_steps_cap: 200,
            default_timeout_secs: 300,
            max_timeout_secs: 3600,
            default_concurrency: 2,
            queues: BTreeMap::new(),
            max_attempts: 3,
            retry_backoff_ms: 500,
            observation_cap_bytes: 16 * 1024,
            poll_interval_ms: 1000,
            planner: PlannerEndpointConfig::default(),
        }
    }
}

impl BatchesConfig {
    fn concurrency_for(&self, task_type: &str) -> usize {
        self.queues
            .get(task_type)
            .map_or(self.default_concurrency, |q| q.concurrency)
    }

    /// The `task_type` label of a metric: configured types by name, the rest `other` (task
    /// types come from clients; metric labels must stay few).
    fn metric_label<'a>(&self, task_type: &'a str) -> &'a str {
        if self.queues.contains_key(task_type) {
            task_type
        } else {
            "other"
        }
    }
}

/// Why a task failed, from a real signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// An adapter answered `compile_error` (e.g. a Python `SyntaxError`); nothing ran.
    CompileError,
    /// The code ran and exited nonzero (or was killed by a signal).
    RuntimeError,
    /// The task's `timeout` passed, or an adapter answered `timeout`.
    Timeout,
    /// The script has more steps than the task's `max_steps`, or the planner still asked
    /// for a call after `max_steps` of them.
    MaxStepsExceeded,
    /// A capability call was refused or failed (unknown operation, bad input, scope, ...).
    CapabilityError,
    /// The task's planner failed: its plugin answered an error (its endpoint failed, or the
    /// host refused its request) or trapped.
    PlannerError,
    /// The task's sandbox could not be created or failed (infrastructure).
    SandboxError,
    /// The host failed the task (plugin trap or overload, storage, a restart; infrastructure).
    SystemError,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::CompileError => "compile_error",
            ErrorClass::RuntimeError => "runtime_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::MaxStepsExceeded => "max_steps_exceeded",
            ErrorClass::CapabilityError => "capability_error",
            ErrorClass::PlannerError => "planner_error",
            ErrorClass::SandboxError => "sandbox_error",
            ErrorClass::SystemError => "system_error",
        }
    }

    pub fn side(self) -> Side {
        match self {
            ErrorClass::SandboxError | ErrorClass::SystemError => Side::Infrastructure,
            _ => Side::Task,
        }
    }

    /// The class of a failed capability call, by its error code (never by its text). A
    /// call that failed is the task's fault unless the code says the sandbox or the host
    /// failed it.
    pub fn of_call_error(code: ErrorCode) -> ErrorClass {
        match code {
            ErrorCode::CompileError => ErrorClass::CompileError,
            ErrorCode::Timeout | ErrorCode::PluginTimeout => ErrorClass::Timeout,
            ErrorCode::SessionNotReady
            | ErrorCode::DriverUnavailable
            | ErrorCode::IsolationUnavailable => ErrorClass::SandboxError,
            ErrorCode::PluginTrap
            | ErrorCode::PluginUnavailable
            | ErrorCode::RunInterrupted
            | ErrorCode::InternalError => ErrorClass::SystemError,
            _ => ErrorClass::CapabilityError,
        }
    }
}

/// Which side a failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Task,
    Infrastructure,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Task => "task",
            Side::Infrastructure => "infrastructure",
        }
    }
}

/// Tasks read per page of an export.
const EXPORT_PAGE: i64 = 50;

/// `GET /v1/batches/{id}/export?format=`.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// `wharf.trajectory.v1`: one trajectory per line.
    #[default]
    Wharf,
    /// `wharf.messages.v1`: OpenAI-style chat messages with tool calls, and the tool schemas.
    Messages,
    /// `ATIF-v1.7`: one Agent Trajectory Interchange Format trajectory per line.
    Atif,
}

/// Options of a submission (query parameters of `POST /v1/batches`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchOptions {
    /// Refuse the whole batch when any line is invalid.
    pub strict: bool,
    /// Keep the sandbox of a failed task (for inspection) instead of deleting it.
    pub keep_on_failure: bool,
    /// Reuse the trajectory of an earlier succeeded task of the same owner with the same
    /// normalised spec and pack versions (marked `cache_hit`) instead of running it again.
    #[serde(default)]
    pub cache: bool,
}

/// Cache outcomes of a batch with the cache on.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CacheCounts {
    pub hits: i64,
    pub misses: i64,
}

/// A batch as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Batch {
    pub batch_id: String,
    /// `running` while any task is queued or running, then `finished`; `cancelled` once
    /// cancelled.
    pub status: String,
    pub options: BatchOptions,
    /// Tasks accepted.
    pub total: i64,
    /// Tasks by status: `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    pub counts: BTreeMap<String, i64>,
    /// Failed tasks by error class.
    pub error_classes: BTreeMap<String, i64>,
    /// Failed tasks by side (`task`, `infrastructure`).
    pub sides: BTreeMap<String, i64>,
    /// Lines refused at submission.
    pub invalid_lines: Vec<InvalidLine>,
    /// Tasks served from the cache and tasks that ran (batches with `cache=true`).
    pub cache: CacheCounts,
    pub created_at: String,
    pub cancelled_at: Option<String>,
}

/// A task as the API lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Task {
    /// `tsk_...`: the id of `GET /v1/tasks/{id}/trajectory`.
    pub id: String,
    pub batch_id: String,
    pub task_id: String,
    pub task_type: String,
    pub line: i64,
    pub priority: i64,
    pub status: RunState,
    pub side: Option<Side>,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    /// Attempts started (infrastructure failures and restarts retry).
    pub attempts: i64,
    /// The sandbox of the last attempt (deleted after the task unless kept).
    pub sandbox_id: Option<String>,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
}

fn parse_class(text: Option<&str>) -> Option<ErrorClass> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::from(t)).ok())
}

fn parse_side(text: Option<&str>) -> Option<Side> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::from(t)).ok())
}

impl Task {
    fn from_row(row: &store::TaskRow) -> Task {
        Task {
            id: row.id.clone(),
            batch_id: row.batch_id.clone(),
            task_id: row.task_id.clone(),
            task_type: row.task_type.clone(),
            line: row.line,
            priority: row.priority,
            status: RunState::parse(&row.status).unwrap_or(RunState::Failed),
            side: parse_side(row.side.as_deref()),
            error_class: parse_class(row.error_class.as_deref()),
            error_message: row.error_message.clone(),
            attempts: row.attempts,
            sandbox_id: row.sandbox_id.clone(),
            queued_at: rfc3339_from_ms(row.queued_ms),
            started_at: row.started_ms.map(rfc3339_from_ms),
            ended_at: row.ended_ms.map(rfc3339_from_ms),
            duration_ms: row.started_ms.zip(row.ended_ms).map(|(s, e)| e - s),
        }
    }
}

/// Batch and task metrics (the names of the batches issue).
struct BatchMetrics {
    submitted: prometheus::IntCounterVec,
    completed: prometheus::IntCounterVec,
    failed: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    queue_depth: prometheus::IntGaugeVec,
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
}

impl BatchMetrics {
    fn new(metrics: &Metrics) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
                .expect("valid metric");
            metrics.register(Box::new(metric.clone()));
            metric
        };
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "wharf_task_duration_seconds",
                "Batch task time from its start to its end, retries included",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
            &["task_type"],
        )
        .expect("valid metric");
        metrics.register(Box::new(duration.clone()));
        let queue_depth = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("wharf_queue_depth", "Batch tasks waiting, by task type"),
            &["task_type"],
        )
        .expect("valid metric");
        metrics.register(Box::new(queue_depth.clone()));
        let plain = |name: &str, help: &str| {
            let metric = prometheus::IntCounter::new(name, help).expect("valid metric");
            metrics.register(Box::new(metric.clone()));
            metric
        };
        Self {
            cache_hits: plain(
                "wharf_cache_hits_total",
                "Batch tasks served from the result cache",
            ),
            cache_misses: plain(
                "wharf_cache_misses_total",
                "Batch tasks of cached batches that found no earlier result and ran",
            ),
            submitted: counter(
                "wharf_tasks_submitted_total",
                "Batch tasks accepted",
                &["task_type"],
            ),
            completed: counter(
                "wharf_tasks_completed_total",
                "Batch tasks ended, by status (succeeded, failed, cancelled)",
                &["task_type", "status"],
            ),
            failed: counter(
                "wharf_tasks_failed_total",
                "Batch tasks failed, by error class",
                &["task_type", "error_class"],
            ),
            duration,
            queue_depth,
        }
    }
}

/// The batches subsystem: one per server.
pub struct Batches {
    db: Db,
    engine: Arc<RunEngine>,
    sandboxes: Arc<Sandboxes>,
    capabilities: Arc<CapabilityService>,
    packs: Arc<Packs>,
    config: BatchesConfig,
    quotas: QuotasConfig,
    metrics: BatchMetrics,
    /// Wakes the dispatcher (a submission, a task's end).
    wake: tokio::sync::Notify,
    /// Tasks running now, by task type (only the dispatcher adds; a slot's drop removes).
    running: Mutex<HashMap<String, usize>>,
    /// Executors in flight by task id, to stop them on cancel.
    executors: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Sends plugin planners' requests by the outbound rules.
    outbound: Arc<OutboundClient>,
    /// Operator grants of outbound hosts per pack id (`[packs] http_grants`).
    http_grants: BTreeMap<String, Vec<String>>,
    /// Which addresses plugin planners may reach (`[packs] allow_private_http`).
    http_reach: Reach,
}

/// What a key's tasks may name: profiles that are defined, isolated unless the key is an
/// admin's, within the key's profile scope, and without approval rules (a task cannot wait);
/// planners that are loaded, with an endpoint configured.
struct KeyChecks<'a> {
    batches: &'a Batches,
    principal: &'a Principal,
}

impl ServerChecks for KeyChecks<'_> {
    fn check_planner(&self, name: &str) -> WharfResult<()> {
        self.batches.check_planner(name)
    }

    fn check_profile(&self, name: &str) -> WharfResult<()> {
        let profile = self.batches.sandboxes.profiles().get(name)?;
        if profile.unconfined() && !self.principal.admin {
            return Err(unconfined_forbidden(name));
        }
        scope::require_profile(self.principal, name)?;
        if profile.has_approval_rules() {
            return Err(WharfError::validation(format!(
                "profile {name:?} makes some operations wait for an approver; batch tasks cannot wait"
            )));
        }
        Ok(())
    }
}

impl Batches {
    /// The subsystem: recovers the tasks of a previous process, starts the dispatcher.
    pub async fn start(
        db: Db,
        engine: Arc<RunEngine>,
        sandboxes: Arc<Sandboxes>,
        capabilities: Arc<CapabilityService>,
        packs: Arc<Packs>,
        config: &crate::config::Config,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Batches>> {
        let batches_config = config.batches.clone();
        anyhow::ensure!(
            batches_config.default_concurrency > 0
                && batches_config.queues.values().all(|q| q.concurrency > 0),
            "[batches] default_concurrency and every queue's concurrency must be at least 1"
        );
        anyhow::ensure!(
            batches_config.max_attempts > 0,
            "[batches] max_attempts must be at least 1"
        );
        let batches = Arc::new(Batches {
            db,
            engine,
            sandboxes,
            capabilities,
            packs,
            metrics: BatchMetrics::new(metrics),
            config: batches_config,
            quotas: config.quotas.clone(),
            wake: tokio::sync::Notify::new(),
            running: Mutex::new(HashMap::new()),
            executors: Mutex::new(HashMap::new()),
            outbound: Arc::new(OutboundClient::new(&ClientOptions {
                connect_timeout: std::time::Duration::from_secs(10),
                pool_max_idle_per_host: 4,
                user_agent: concat!("wharf-planner/", env!("CARGO_PKG_VERSION")).into(),
            })?),
            http_grants: config.packs.http_grants.clone(),
            http_reach: if config.packs.allow_private_http {
                Reach::Any
            } else {
                Reach::PublicOnly
            },
        });
        batches
            .recover()
            .await
            .map_err(|err| anyhow::anyhow!("recovering batch tasks: {}", err.message))?;
        run::spawn_dispatcher(&batches);
        Ok(batches)
    }

    pub fn config(&self) -> &BatchesConfig {
        &self.config
    }

    /// Parses and stores a batch; its valid tasks are queued at once. Refused whole when
    /// nothing is valid, or with `strict` when anything is not (`batch_invalid`, the
    /// message listing the lines).
    pub async fn submit(
        &self,
        principal: &Principal,
        body: &[u8],
        options: BatchOptions,
    ) -> WharfResult<Batch> {
        let checker = KeyChecks {
            batches: self,
            principal,
        };
        let parsed = spec::parse(body, &self.config, &checker)?;
        if parsed.tasks.is_empty() || (options.strict && !parsed.invalid.is_empty()) {
            let lines: Vec<String> = parsed
                .invalid
                .iter()
                .take(20)
                .map(|l| format!("line {}: {}", l.line, l.message))
                .collect();
            let more = parsed.invalid.len().saturating_sub(lines.len());
            let why = if parsed.tasks.is_empty() {
                "no line is a valid task"
            } else {
                "strict=true and some lines are invalid"
            };
            return Err(WharfError::new(
                ErrorCode::BatchInvalid,
                format!(
                    "{why}: {}{}",
                    lines.join("; "),
                    if more > 0 {
                        format!(" (and {more} more)")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        let batch_id = crate::store::keys::new_id("bat");
        let specs: Vec<(String, usize, &TaskSpec, String)> = parsed
            .tasks
            .iter()
            .map(|(line, spec)| {
                let json = serde_json::to_string(spec).expect("serialisable");
                (crate::store::keys::new_id("tsk"), *line, spec, json)
            })
            .collect();
        let new_tasks: Vec<store::NewTask<'_>> = specs
            .iter()
            .map(|(id, line, spec, json)| store::NewTask {
                id,
                task_id: &spec.task_id,
                task_type: &spec.task_type,
                line: *line as i64,
                priority: spec.priority,
                spec: json,
            })
            .collect();
        // Runs first: the dispatcher only sees a task once its row exists, and then its run
        // does too. Runs whose rows never came (a failure or crash in between) are ended by
        // recovery ("its task row is gone").
        for (id, line, spec, _) in &specs {
            self.engine
                .create(
                    id,
                    RunKind::BatchTask,
                    &principal.owner,
                    &format!("task {:?} of batch {batch_id} (line {line})", spec.task_id),
                )
                .await?;
        }
        let inserted = store::insert_batch(
            &self.db,
            &batch_id,
            &principal.owner,
            &principal.key_id,
            &serde_json::to_string(&options).expect("serialisable"),
            &serde_json::to_string(&parsed.invalid).expect("serialisable"),
            &new_tasks,
            now_ms(),
        )
        .await;
        if let Err(err) = inserted {
            for (id, ..) in &specs {
                let _ = self.engine.delete(id).await;
            }
            return Err(err);
        }
        for (_, _, spec, _) in &specs {
            self.metrics
                .submitted
                .with_label_values(&[self.config.metric_label(&spec.task_type)])
                .inc();
        }
        self.wake.notify_one();
        self.get(&principal.owner, &batch_id).await
    }

    /// The batch of `owner` with its counts.
    pub async fn get(&self, owner: &str, id: &str) -> WharfResult<Batch> {
        let row = store::get_batch(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("batch"))?;
        let mut counts: BTreeMap<String, i64> =
            ["queued", "running", "succeeded", "failed", "cancelled"]
                .into_iter()
                .map(|s| (s.to_string(), 0))
                .collect();
        for (status, n) in store::status_counts(&self.db, id).await? {
            counts.insert(status, n);
        }
        let mut error_classes = BTreeMap::new();
        let mut sides: BTreeMap<String, i64> = [Side::Task, Side::Infrastructure]
            .into_iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for (side, class, n) in store::failure_counts(&self.db, id).await? {
            *error_classes.entry(class).or_insert(0) += n;
            *sides.entry(side).or_insert(0) += n;
        }
        let live = counts["queued"] + counts["running"];
        let status = if row.cancelled_ms.is_some() {
            "cancelled"
        } else if live > 0 {
            "running"
        } else {
            "finished"
        };
        let mut cache = CacheCounts::default();
        for (outcome, n) in store::cache_counts(&self.db, id).await? {
            match outcome.as_str() {
                "hit" => cache.hits = n,
                _ => cache.misses = n,
            }
        }
        Ok(Batch {
            batch_id: row.id,
            status: status.to_string(),
            options: serde_json::from_str(&row.options).unwrap_or_default(),
            total: counts.values().sum(),
            counts,
            error_classes,
            sides,
            invalid_lines: serde_json::from_str(&row.invalid_lines).unwrap_or_default(),
            cache,
            created_at: rfc3339_from_ms(row.created_ms),
            cancelled_at: row.cancelled_ms.map(rfc3339_from_ms),
        })
    }

    /// Tasks of a batch of `owner`, in line order.
    pub async fn tasks(
        &self,
        owner: &str,
        batch_id: &str,
        filter: &TaskFilter<'_>,
    ) -> WharfResult<Vec<Task>> {
        self.check_batch(owner, batch_id).await?;
        Ok(store::list_tasks(&self.db, batch_id, filter)
            .await?
            .iter()
            .map(Task::from_row)
            .collect())
    }

    pub async fn check_batch(&self, owner: &str, batch_id: &str) -> WharfResult<()> {
        store::get_batch(&self.db, batch_id, Some(owner))
            .await?
            .map(|_| ())
            .ok_or_else(|| WharfError::not_found("batch"))
    }

    pub async fn check_task(&self, owner: &str, id: &str) -> WharfResult<()> {
        store::get_task(&self.db, id, Some(owner))
            .await?
            .map(|_| ())
            .ok_or_else(|| WharfError::not_found("task"))
    }

    /// Cancels a batch: queued tasks end `cancelled` at once, running ones are stopped
    /// (their sandboxes deleted) and end `cancelled`. Tasks that had ended keep their end.
    pub async fn cancel(&self, owner: &str, batch_id: &str) -> WharfResult<Batch> {
        self.check_batch(owner, batch_id).await?;
        store::mark_cancelled(&self.db, batch_id, now_ms()).await?;
        for (id, _, sandbox) in store::live_tasks(&self.db, batch_id).await? {
            if let Some(executor) = self.executors.lock().remove(&id) {
                executor.abort();
            }
            let end = TaskEnd {
                status: RunState::Cancelled.as_str(),
                side: None,
                error_class: None,
                error_message: Some("cancelled by its owner"),
                outcome: None,
            };
            let task_type = store::get_task(&self.db, &id, None)
                .await?
                .map(|t| t.task_type)
                .unwrap_or_default();
            if self.conclude(&id, &task_type, &end).await?
                && let Some(sandbox) = sandbox
            {
                self.remove_sandbox(owner, &sandbox).await;
            }
        }
        self.wake.notify_one();
        self.get(owner, batch_id).await
    }

    /// The trajectory of a task of `owner`.
    pub async fn trajectory(&self, owner: &str, id: &str) -> WharfResult<export::Trajectory> {
        let task = store::get_task(&self.db, id, Some(owner))
            .await?
            .ok_or_else(|| WharfError::not_found("task"))?;
        let steps = store::steps(&self.db, id).await?;
        Ok(export::trajectory(&task, steps))
    }

    /// Every task's trajectory of a batch (checked to be the caller's first), one JSON line
    /// each in line order, read page by page as the stream is consumed.
    pub fn export(
        self: &Arc<Self>,
        batch_id: String,
        format: ExportFormat,
    ) -> impl futures::Stream<Item = WharfResult<bytes::Bytes>> + Send + 'static {
        futures::stream::try_unfold(
            (self.clone(), batch_id, 0i64),
            move |(batches, batch_id, after)| async move {
                let filter = TaskFilter {
                    after_line: after,
                    limit: EXPORT_PAGE,
                    ..TaskFilter::default()
                };
                let tasks = store::list_tasks(&batches.db, &batch_id, &filter).await?;
                let Some(last) = tasks.last().map(|t| t.line) else {
                    return Ok(None);
                };
                let mut chunk = Vec::new();
                for task in &tasks {
                    let steps = store::steps(&batches.db, &task.id).await?;
                    let trajectory = export::trajectory(task, steps);
                    let line = match format {
                        ExportFormat::Wharf => serde_json::to_vec(&trajectory),
                        ExportFormat::Messages => {
                            serde_json::to_vec(&export::messages(&trajectory))
                        }
                        ExportFormat::Atif => serde_json::to_vec(&export::atif(&trajectory)),
                    }
                    .map_err(|err| {
                        WharfError::internal(format!("rendering a trajectory: {err}"))
                    })?;
                    chunk.extend_from_slice(&line);
                    chunk.push(b'\n');
                }
                Ok(Some((bytes::Bytes::from(chunk), (batches, batch_id, last))))
            },
        )
    }

    /// Ends a task once: its row (the decision), then its run, log and metrics. False when
    /// it had already ended.
    async fn conclude(&self, id: &str, task_type: &str, end: &TaskEnd<'_>) -> WharfResult<bool> {
        let now = now_ms();
        if !store::end_task(&self.db, id, end, now).await? {
            return Ok(false);
        }
        let state = RunState::parse(end.status).unwrap_or(RunState::Failed);
        let reason = match (end.error_class, end.error_message) {
            (Some(class), Some(message)) => format!("{class}: {message}"),
            (_, Some(message)) => message.to_string(),
            _ => end.status.to_string(),
        };
        self.engine
            .log(
                id,
                Stream::System,
                Level::Info,
                &format!("ended {}: {reason}", end.status),
            )
            .await;
        self.engine.finish(id, state, None, &reason).await?;
        let label = self.config.metric_label(task_type);
        self.metrics
            .completed
            .with_label_values(&[label, end.status])
            .inc();
        if let Some(class) = end.error_class {
            self.metrics.failed.with_label_values(&[label, class]).inc();
        }
        if let Some(task) = store::get_task(&self.db, id, None).await?
            && let Some(started) = task.started_ms
        {
            self.metrics
                .duration
                .with_label_values(&[label])
                .observe((now - started).max(0) as f64 / 1000.0);
        }
        Ok(true)
    }

    /// Deletes a task's sandbox; a failure is logged (GC removes what is left).
    async fn remove_sandbox(&self, owner: &str, sandbox_id: &str) {
        if let Err(err) = self.sandboxes.delete(owner, sandbox_id).await
            && err.code != ErrorCode::NotFound
        {
            tracing::warn!(sandbox = sandbox_id, error = %err.message, "deleting a batch task's sandbox");
        }
    }

    /// After a restart: tasks that were running go back to their queue (their sandbox
    /// removed), or fail as `system_error` when they used up `max_attempts`; a task whose
    /// row ended but whose run did not (killed in between) gets its run ended.
    async fn recover(&self) -> WharfResult<()> {
        for run in self.engine.orphans(RunKind::BatchTask).await? {
            let Some(task) = store::get_task(&self.db, &run.id, None).await? else {
                self.engine
                    .finish(
                        &run.id,
                        RunState::Failed,
                        Some(ErrorCode::RunInterrupted),
                        "its task row is gone",
                    )
                    .await?;
                continue;
            };
            match RunState::parse(&task.status) {
                Some(RunState::Queued) => {}
                Some(RunState::Running) => {
                    if let Some(sandbox) = &task.sandbox_id {
                        self.remove_sandbox(&task.owner, sandbox).await;
                    }
                    if task.attempts >= i64::from(self.config.max_attempts) {
                        let message = format!(
                            "the server stopped during the task's last attempt ({} of [batches] max_attempts = {})",
                            task.attempts, self.config.max_attempts
                        );
                        let end = TaskEnd {
                            status: RunState::Failed.as_str(),
                            side: Some(Side::Infrastructure.as_str()),
                            error_class: Some(ErrorClass::SystemError.as_str()),
                            error_message: Some(&message),
                            outcome: None,
                        };
                        self.conclude(&task.id, &task.task_type, &end).await?;
                    } else {
                        let reason = "the server restarted during the task: queued again";
                        store::requeue(&self.db, &task.id).await?;
                        self.engine.requeue(&task.id, reason).await?;
                        self.engine
                            .log(&task.id, Stream::System, Level::Warn, reason)
                            .await;
                    }
                }
                Some(state) => {
                    let reason = "the task had ended when the server restarted";
                    self.engine.finish(&task.id, state, None, reason).await?;
                }
                None => {}
            }
        }
        Ok(())
    }
}
