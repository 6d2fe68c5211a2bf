//! The dispatcher (one queue per task type, bounded concurrency, priority order) and the
//! executor of one task: a fresh sandbox, the planner's capability calls (the `script`
//! planner's steps, or those a plugin planner picks) under the task's deadline and step
//! bound, the trajectory, the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::export::{Outcome, ToolSchema};
use super::planner;
use super::spec::{SCRIPT_PLANNER, TaskSpec};
use super::{BatchOptions, Batches, ErrorClass, Side};
use crate::capabilities::secrets::RequestSecrets;
use crate::capabilities::service::CallOutcome;
use crate::capabilities::{CapabilityName, route};
use crate::error::{ErrorCode, WharfError, WharfResult};
use crate::jobs::log::Level;
use crate::jobs::{RetryPolicy, RunState, Stream, now_ms};
use crate::runtime::bindings::planner::exports::wharf::plugin::planner::{Action, Step, Task};
use crate::store::batches::{self as store, StepRow, TaskEnd, TaskRow};
use crate::store::keys::{self as keys, Principal, new_id};

/// The action type of a script's capability call in a trajectory.
const CAPABILITY_CALL: &str = "capability_call";
/// The action type of a plugin planner's tool call (a capability call it chose).
const TOOL_CALL: &str = "tool_call";
/// How long a call cut off by the task's deadline gets to end (and be audited) once its
/// sandbox is stopped.
const CUT_OFF_GRACE: Duration = Duration::from_secs(10);

/// Starts the dispatcher: it runs until the subsystem is dropped.
pub(super) fn spawn_dispatcher(batches: &Arc<Batches>) {
    let weak = Arc::downgrade(batches);
    let interval = Duration::from_millis(batches.config.poll_interval_ms.max(10));
    tokio::spawn(async move {
        loop {
            let Some(batches) = weak.upgrade() else {
                return;
            };
            if let Err(err) = batches.dispatch_once().await {
                tracing::warn!(error = %err.message, "dispatching batch tasks");
            }
            let _ = tokio::time::timeout(interval, batches.wake.notified()).await;
        }
    });
}

/// A running task's place in its queue's concurrency; given back when dropped (the task
/// ended, failed, or was aborted by a cancel).
struct Slot {
    batches: Arc<Batches>,
    task_type: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.batches.running.lock();
        if let Some(n) = running.get_mut(&self.task_type) {
            *n = n.saturating_sub(1);
        }
        drop(running);
        self.batches.wake.notify_one();
    }
}

/// What a task's attempt ended with, when the task (not the infrastructure) decided it.
struct Attempt {
    failure: Option<(ErrorClass, String)>,
    outcome: Outcome,
}

/// What one step observed.
struct Observed {
    success: bool,
    failure: Option<(ErrorClass, String)>,
    observation: String,
    output: Option<Value>,
    /// The task's deadline passed during the step (the task ends whatever its planner).
    deadline_passed: bool,
}

impl Observed {
    fn failed(class: ErrorClass, message: String, observation: Value) -> Self {
        Self {
            success: false,
            failure: Some((class, message)),
            observation: observation.to_string(),
            output: None,
            deadline_passed: false,
        }
    }

    /// The task's `timeout` passed before or during the step.
    fn deadline(timeout_secs: f64) -> Self {
        Self {
            deadline_passed: true,
            ..Self::failed(
                ErrorClass::Timeout,
                format!("the task's timeout of {timeout_secs} s passed during this step"),
                json!({"error": {"code": "timeout"}}),
            )
        }
    }
}

/// What decides a task's result besides its spec: the cache key's other half.
struct CacheContext {
    tools: Vec<ToolSchema>,
    image_digest: Option<String>,
    /// A plugin planner's pack and version, and the model and endpoint it asks.
    planner: Option<Value>,
}

impl Batches {
    /// One pass over the queues: starts tasks while their type has free slots.
    async fn dispatch_once(self: &Arc<Self>) -> WharfResult<()> {
        let depths = store::queued_by_type(&self.db).await?;
        self.publish_depths(&depths);
        for (task_type, _) in depths {
            let limit = self.config.concurrency_for(&task_type);
            loop {
                let running = self.running.lock().get(&task_type).copied().unwrap_or(0);
                if running >= limit {
                    break;
                }
                let Some(task) = store::next_queued(&self.db, &task_type).await? else {
                    break;
                };
                // False when a cancel ended it in between.
                if !store::mark_running(&self.db, &task.id, now_ms()).await? {
                    continue;
                }
                *self.running.lock().entry(task_type.clone()).or_insert(0) += 1;
                let slot = Slot {
                    batches: self.clone(),
                    task_type: task_type.clone(),
                };
                let id = task.id.clone();
                let handle = tokio::spawn(execute(self.clone(), task, slot));
                let mut executors = self.executors.lock();
                if !handle.is_finished() {
                    executors.insert(id, handle.abort_handle());
                }
            }
        }
        Ok(())
    }

    fn publish_depths(&self, depths: &[(String, i64)]) {
        let mut by_label: BTreeMap<&str, i64> = self
            .config
            .queues
            .keys()
            .map(|name| (name.as_str(), 0))
            .chain([("other", 0)])
            .collect();
        for (task_type, n) in depths {
            *by_label
                .entry(self.config.metric_label(task_type))
                .or_insert(0) += n;
        }
        for (label, n) in by_label {
            self.metrics.queue_depth.with_label_values(&[label]).set(n);
        }
    }

    /// Runs a task to its end. Only a storage failure returns an error.
    async fn execute_task(self: &Arc<Self>, task: &TaskRow) -> WharfResult<()> {
        let spec: TaskSpec = serde_json::from_str(&task.spec)
            .map_err(|err| WharfError::internal(format!("stored task spec: {err}")))?;
        self.engine
            .claim(
                &task.id,
                &format!("started from the {} queue", task.task_type),
            )
            .await?;
        if !store::is_running(&self.db, &task.id).await? {
            // Cancelled between its start and now: the cancel ended it.
            return Ok(());
        }
        let batch = store::get_batch(&self.db, &task.batch_id, None)
            .await?
            .ok_or_else(|| WharfError::internal("the task's batch is gone"))?;
        let options: BatchOptions = serde_json::from_str(&batch.options).unwrap_or_default();
        let Some(principal) = keys::active_principal(&self.db, &batch.key_id).await? else {
            let end = TaskEnd {
                status: RunState::Failed.as_str(),
                side: Some(Side::Task.as_str()),
                error_class: Some(ErrorClass::CapabilityError.as_str()),
                error_message: Some("the API key that submitted the batch was revoked"),
                outcome: None,
            };
            self.conclude(&task.id, &task.task_type, &end).await?;
            return Ok(());
        };
        let context = self.cache_context(&spec, &principal).await;
        let key = cache_key(&principal.owner, &spec, &context);
        store::set_cache_key(&self.db, &task.id, &key, options.cache.then_some("miss")).await?;
        if options.cache {
            if let Some(source) =
                store::cached_task(&self.db, &principal.owner, &key, &task.id).await?
            {
                store::copy_from_cache(&self.db, &task.id, &source.id).await?;
                self.metrics.cache_hits.inc();
                self.engine
                    .log(
                        &task.id,
                        Stream::System,
                        Level::Info,
                        &format!(
                            "served from the cache: the trajectory of task {} (batch {})",
                            source.id, source.batch_id
                        ),
                    )
                    .await;
                let end = TaskEnd {
                    status: RunState::Succeeded.as_str(),
                    side: None,
                    error_class: None,
                    error_message: None,
                    outcome: source.outcome.as_deref(),
                };
                self.conclude(&task.id, &task.task_type, &end).await?;
                return Ok(());
            }
            self.metrics.cache_misses.inc();
        }
        // Attempts this task already had (earlier processes) count against the bound.
        let prior = u32::try_from(task.attempts).unwrap_or(0);
        let policy = RetryPolicy {
            max_attempts: self.config.max_attempts.saturating_sub(prior).max(1),
            initial_backoff: Duration::from_millis(self.config.retry_backoff_ms),
            max_backoff: Duration::from_secs(10),
        };
        let infra_class: Mutex<Option<ErrorClass>> = Mutex::new(None);
        let (spec_ref, principal_ref, options_ref, infra_ref) =
            (&spec, &principal, &options, &infra_class);
        let result = self
            .engine
            .step(&task.id, "attempt", policy, move |n| {
                self.attempt(task, spec_ref, principal_ref, options_ref, n, infra_ref)
            })
            .await;
        let (failure, outcome) = match result {
            Ok(attempt) => (attempt.failure, Some(attempt.outcome)),
            Err(err) => {
                let class = infra_class.lock().take().unwrap_or(ErrorClass::SystemError);
                (Some((class, err.message)), None)
            }
        };
        let outcome = outcome.map(|o| serde_json::to_string(&o).expect("serialisable"));
        let end = match &failure {
            None => TaskEnd {
                status: RunState::Succeeded.as_str(),
                side: None,
                error_class: None,
                error_message: None,
                outcome: outcome.as_deref(),
            },
            Some((class, message)) => TaskEnd {
                status: RunState::Failed.as_str(),
                side: Some(class.side().as_str()),
                error_class: Some(class.as_str()),
                error_message: Some(message),
                outcome: outcome.as_deref(),
            },
        };
        self.conclude(&task.id, &task.task_type, &end).await?;
        Ok(())
    }

    /// One attempt: a fresh sandbox, the script, the sandbox removed (kept when the task
    /// failed and the batch asked for it). An infrastructure failure is an error (retriable,
    /// its class left in `infra_class`); the task's own outcome is a value.
    async fn attempt(
        &self,
        task: &TaskRow,
        spec: &TaskSpec,
        principal: &Principal,
        options: &BatchOptions,
        n: u32,
        infra_class: &Mutex<Option<ErrorClass>>,
    ) -> WharfResult<Attempt> {
        if n > 1 {
            store::count_attempt(&self.db, &task.id).await?;
        }
        store::clear_steps(&self.db, &task.id).await?;
        let quota = self.quotas.sandboxes_for(principal.admin);
        // The id is recorded before the create, so recovery finds a sandbox whose create a
        // crash interrupted.
        let sandbox_id = new_id("sbx");
        store::set_sandbox(&self.db, &task.id, Some(&sandbox_id)).await?;
        let sandbox = match self
            .sandboxes
            .create_with_id(&sandbox_id, &principal.owner, &spec.profile, quota)
            .await
        {
            Ok(sandbox) => sandbox,
            Err(err) => {
                store::set_sandbox(&self.db, &task.id, None).await?;
                *infra_class.lock() = Some(ErrorClass::SandboxError);
                return Err(infrastructure(
                    err,
                    &format!("creating a sandbox of profile {:?}", spec.profile),
                ));
            }
        };
        if !store::is_running(&self.db, &task.id).await? {
            // Cancelled while its sandbox was being made: nothing runs in it.
            self.remove_sandbox(&principal.owner, &sandbox.id).await;
            return Err(WharfError::new(
                ErrorCode::Conflict,
                "the task was cancelled",
            ));
        }
        self.engine
            .log(
                &task.id,
                Stream::System,
                Level::Info,
                &format!(
                    "attempt {n}: sandbox {} (profile {})",
                    sandbox.id, spec.profile
                ),
            )
            .await;
        let mut outcome = Outcome {
            planner: spec.planner.clone(),
            model: None,
            profile: spec.profile.clone(),
            image_digest: self
                .sandboxes
                .image_digest(&principal.owner, &sandbox.id)
                .await,
            tools: self.tools_of(spec, principal),
            ..Outcome::default()
        };
        // The packs that serve the tools now; a step served by another version (a hot
        // swap in between) records that one.
        outcome.pack_versions = outcome
            .tools
            .iter()
            .map(|tool| (tool.pack.clone(), tool.version.clone()))
            .collect();
        let started = Instant::now();
        let script = if spec.planner == SCRIPT_PLANNER {
            self.run_script(task, spec, principal, &sandbox.id, &mut outcome)
                .await
        } else {
            self.run_planner(task, spec, principal, &sandbox.id, &mut outcome)
                .await
        };
        outcome.steps_duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let failure = match script {
            Ok(failure) => failure,
            Err(err) => {
                self.remove_sandbox(&principal.owner, &sandbox.id).await;
                return Err(err);
            }
        };
        if let Some((class, message)) = &failure
            && class.side() == Side::Infrastructure
        {
            self.remove_sandbox(&principal.owner, &sandbox.id).await;
            *infra_class.lock() = Some(*class);
            return Err(
                WharfError::new(ErrorCode::InternalError, message.clone()).with_retriable(true)
            );
        }
        if failure.is_some() && options.keep_on_failure {
            self.engine
                .log(
                    &task.id,
                    Stream::System,
                    Level::Info,
                    &format!(
                        "sandbox {} kept for inspection (keep_on_failure)",
                        sandbox.id
                    ),
                )
                .await;
        } else {
            self.remove_sandbox(&principal.owner, &sandbox.id).await;
        }
        Ok(Attempt { failure, outcome })
    }

    /// The tools of a task, as their adapters describe them now: the operations its script
    /// calls, or those offered to its plugin planner.
    fn tools_of(&self, spec: &TaskSpec, principal: &Principal) -> Vec<ToolSchema> {
        if spec.planner != SCRIPT_PLANNER {
            return planner::tool_schemas(&self.offered_tools(principal, &spec.profile));
        }
        let wanted: BTreeSet<(&str, &str)> = spec
            .steps
            .iter()
            .map(|s| (s.capability.as_str(), s.operation.as_str()))
            .collect();
        let mut tools = Vec::new();
        for (capability, operation) in wanted {
            let Ok(name) = CapabilityName::parse(capability) else {
                continue;
            };
            let Ok(found) = route(&self.packs, &name, operation) else {
                continue;
            };
            let adapter = found.component().adapter.as_ref();
            if let Some(op) =
                adapter.and_then(|a| a.operations.iter().find(|o| o.name == operation))
            {
                tools.push(ToolSchema {
                    name: format!("{}.{operation}", name.name),
                    description: op.description.clone(),
                    input_schema: op.input_schema.clone(),
                    pack: found.pack.id.clone(),
                    version: found.pack.version.to_string(),
                });
            }
        }
        tools
    }

    /// The `script` planner: the steps in order, each a capability call, until one fails,
    /// the task's deadline passes or `max_steps` is reached. Returns the failure, if any.
    async fn run_script(
        &self,
        task: &TaskRow,
        spec: &TaskSpec,
        principal: &Principal,
        sandbox_id: &str,
        outcome: &mut Outcome,
    ) -> WharfResult<Option<(ErrorClass, String)>> {
        let deadline = Instant::now() + Duration::from_secs_f64(spec.timeout_secs);
        for (i, step) in spec.steps.iter().enumerate() {
            if i >= spec.max_steps as usize {
                return Ok(Some((
                    ErrorClass::MaxStepsExceeded,
                    format!(
                        "the script has {} steps and the task's max_steps is {}; {i} ran",
                        spec.steps.len(),
                        spec.max_steps
                    ),
                )));
            }
            let ts_ms = now_ms();
            let started = Instant::now();
            let observed = self
                .call_step(
                    principal,
                    sandbox_id,
                    &step.capability,
                    &step.operation,
                    step.input.clone(),
                    deadline,
                    spec.timeout_secs,
                    &mut outcome.pack_versions,
                )
                .await;
            let tool = format!("{}.{}", step.capability, step.operation);
            let params = step.input.to_string();
            let n = i as i64 + 1;
            self.record_step(
                task,
                n,
                CAPABILITY_CALL,
                tool,
                params,
                None,
                &observed,
                ts_ms,
                started,
            )
            .await?;
            if observed.failure.is_some() {
                return Ok(observed.failure);
            }
            outcome.final_result = observed.output;
        }
        Ok(None)
    }

    /// A plugin planner (`"planner": "llm"`): asks it for the next action with the task and
    /// its history, runs each call it picks in the sandbox and records it, until it finishes
    /// (the task succeeds with its answer), `max_steps` calls were made and it asks for one
    /// more, the deadline passes, or it fails (`planner_error`). A failed call does not end
    /// the task: the planner sees the error and decides. Returns the failure, if any.
    async fn run_planner(
        &self,
        task: &TaskRow,
        spec: &TaskSpec,
        principal: &Principal,
        sandbox_id: &str,
        outcome: &mut Outcome,
    ) -> WharfResult<Option<(ErrorClass, String)>> {
        let deadline = Instant::now() + Duration::from_secs_f64(spec.timeout_secs);
        let endpoint = match self.planner_endpoint().await {
            Ok(endpoint) => endpoint,
            Err(err) => return Ok(Some((ErrorClass::PlannerError, err.message))),
        };
        outcome.model = Some(endpoint.model.clone());
        let tools = self.offered_tools(principal, &spec.profile);
        let wit_task = Task {
            task_id: spec.task_id.clone(),
            task_type: spec.task_type.clone(),
            description: spec.description.clone(),
            tools: planner::wit_tools(&tools),
            endpoint: endpoint.model_endpoint(),
            max_steps: spec.max_steps,
        };
        let mut history: Vec<Step> = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timed_out = || {
                Some((
                    ErrorClass::Timeout,
                    format!(
                        "the task's timeout of {} s passed while its planner was deciding",
                        spec.timeout_secs
                    ),
                ))
            };
            if remaining.is_zero() {
                return Ok(timed_out());
            }
            let asked = self.ask_planner(
                &spec.planner,
                &principal.owner,
                wit_task.clone(),
                history.clone(),
                &endpoint,
                &mut outcome.pack_versions,
            );
            let decision = match tokio::time::timeout(remaining, asked).await {
                Err(_) => return Ok(timed_out()),
                Ok(Err(message)) => return Ok(Some((ErrorClass::PlannerError, message))),
                Ok(Ok(decision)) => decision,
            };
            if let Some(model) = decision.model.filter(|m| !m.is_empty()) {
                outcome.model = Some(model);
            }
            let call = match decision.action {
                Action::Finish(answer) => {
                    outcome.final_result = Some(Value::String(answer));
                    return Ok(None);
                }
                Action::Call(call) => call,
            };
            if history.len() >= spec.max_steps as usize {
                return Ok(Some((
                    ErrorClass::MaxStepsExceeded,
                    format!(
                        "the planner asked for call {} ({}) after the task's max_steps of {}",
                        history.len() + 1,
                        call.tool,
                        spec.max_steps
                    ),
                )));
            }
            let ts_ms = now_ms();
            let started = Instant::now();
            let offered = tools.iter().find(|t| t.name == call.tool);
            let input = serde_json::from_str::<Value>(&call.input)
                .ok()
                .filter(Value::is_object);
            let (tool, params, observed) = match (offered, input) {
                (None, _) => (
                    call.tool.clone(),
                    json!(call.input).to_string(),
                    Observed::failed(
                        ErrorClass::CapabilityError,
                        format!(
                            "the planner called {:?}, which is not an offered tool",
                            call.tool
                        ),
                        json!({"error": {"code": "unknown_tool", "message": format!(
                            "no tool is named {:?}; the tools are those offered", call.tool)}}),
                    ),
                ),
                (Some(tool), None) => (
                    tool.scope_entry(),
                    json!(call.input).to_string(),
                    Observed::failed(
                        ErrorClass::CapabilityError,
                        format!("the arguments of {} are not a JSON object", call.tool),
                        json!({"error": {"code": "invalid_input", "message":
                            "the arguments must be a JSON object"}}),
                    ),
                ),
                (Some(tool), Some(input)) => {
                    let observed = self
                        .call_step(
                            principal,
                            sandbox_id,
                            &tool.capability,
                            &tool.operation.name,
                            input.clone(),
                            deadline,
                            spec.timeout_secs,
                            &mut outcome.pack_versions,
                        )
                        .await;
                    (tool.scope_entry(), input.to_string(), observed)
                }
            };
            let n = history.len() as i64 + 1;
            let observation = self
                .record_step(
                    task,
                    n,
                    TOOL_CALL,
                    tool,
                    params,
                    decision.thought.clone(),
                    &observed,
                    ts_ms,
                    started,
                )
                .await?;
            if let Some((class, _)) = &observed.failure
                && (observed.deadline_passed || class.side() == Side::Infrastructure)
            {
                return Ok(observed.failure);
            }
            history.push(Step {
                call,
                observation,
                success: observed.success,
                thought: decision.thought,
            });
        }
    }

    /// One capability call in the task's sandbox, on behalf of its key, cut off when the
    /// task's deadline passes (its sandbox stopped, so the code it runs ends).
    #[allow(clippy::too_many_arguments)]
    async fn call_step(
        &self,
        principal: &Principal,
        sandbox_id: &str,
        capability: &str,
        operation: &str,
        input: Value,
        deadline: Instant,
        timeout_secs: f64,
        pack_versions: &mut BTreeMap<String, String>,
    ) -> Observed {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Observed::deadline(timeout_secs);
        }
        let mut call = {
            let capabilities = self.capabilities.clone();
            let principal = principal.clone();
            let sandbox = sandbox_id.to_string();
            let (capability, operation) = (capability.to_string(), operation.to_string());
            let owner: Arc<str> = Arc::from(principal.owner.as_str());
            tokio::spawn(crate::runtime::call::CALL_OWNER.scope(owner, async move {
                capabilities
                    .call(
                        &principal,
                        &sandbox,
                        &capability,
                        &operation,
                        input,
                        RequestSecrets::default(),
                    )
                    .await
            }))
        };
        match tokio::time::timeout(remaining, &mut call).await {
            Ok(Ok(result)) => observe(result, pack_versions),
            Ok(Err(join)) => Observed::failed(
                ErrorClass::SystemError,
                format!("the capability call's task failed: {join}"),
                json!({"error": {"code": "internal_error"}}),
            ),
            Err(_) => {
                // Stopping the sandbox ends the code the call runs; the call then ends on
                // its own and is audited like any other.
                let _ = self.sandboxes.stop(&principal.owner, sandbox_id).await;
                let _ = tokio::time::timeout(CUT_OFF_GRACE, call).await;
                Observed::deadline(timeout_secs)
            }
        }
    }

    /// Stores step `n` of the task's trajectory; returns its observation as stored (capped).
    #[allow(clippy::too_many_arguments)]
    async fn record_step(
        &self,
        task: &TaskRow,
        n: i64,
        action_type: &str,
        tool: String,
        params: String,
        thought: Option<String>,
        observed: &Observed,
        ts_ms: i64,
        started: Instant,
    ) -> WharfResult<String> {
        let (observation, truncated) = cap_text(
            observed.observation.clone(),
            self.config.observation_cap_bytes,
        );
        let row = StepRow {
            step_id: n,
            action_type: action_type.to_string(),
            tool: Some(tool),
            params,
            observation,
            observation_truncated: truncated,
            success: observed.success,
            error_class: observed
                .failure
                .as_ref()
                .map(|(c, _)| c.as_str().to_string()),
            error_message: observed.failure.as_ref().map(|(_, m)| m.clone()),
            ts_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            thought,
        };
        store::insert_step(&self.db, &task.id, &row).await?;
        Ok(row.observation)
    }

    /// What besides the spec decides a task's result: the packs serving its tools, the
    /// image a new sandbox of its profile runs now, and a plugin planner's pack version,
    /// model and endpoint.
    async fn cache_context(&self, spec: &TaskSpec, principal: &Principal) -> CacheContext {
        let planner = (spec.planner != SCRIPT_PLANNER).then(|| {
            let pack = self
                .packs
                .snapshot()
                .planners
                .get(&spec.planner)
                .map(|route| format!("{}@{}", route.pack.id, route.pack.version));
            let config = &self.config.planner;
            json!({
                "pack": pack,
                "model": config.model,
                "base_url": config.base_url,
                "provider": config.provider,
                "max_tokens": config.max_tokens,
                "temperature": config.temperature,
            })
        });
        CacheContext {
            tools: self.tools_of(spec, principal),
            image_digest: self.sandboxes.profile_image_digest(&spec.profile).await,
            planner,
        }
    }
}

/// Runs one task and gives its slot back.
async fn execute(batches: Arc<Batches>, task: TaskRow, slot: Slot) {
    if let Err(err) = batches.execute_task(&task).await {
        let end = TaskEnd {
            status: RunState::Failed.as_str(),
            side: Some(Side::Infrastructure.as_str()),
            error_class: Some(ErrorClass::SystemError.as_str()),
            error_message: Some(&err.message),
            outcome: None,
        };
        if let Err(err) = batches.conclude(&task.id, &task.task_type, &end).await {
            tracing::error!(task = %task.id, error = %err.message, "cannot end a batch task");
        }
    }
    batches.executors.lock().remove(&task.id);
    drop(slot);
}

/// The result-cache key of a task: its owner (a cache is never shared between owners), what
/// decides its steps' outcome (not its id, priority or expected tools), the pack version
/// serving each tool, the digest of the image its sandbox would run, and a plugin planner's
/// version, model and endpoint. Objects are normalised (keys sorted) before hashing.
fn cache_key(owner: &str, spec: &TaskSpec, context: &CacheContext) -> String {
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, canonical(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let packs: Vec<String> = context
        .tools
        .iter()
        .map(|t| format!("{}={}@{}", t.name, t.pack, t.version))
        .collect();
    let normalised = canonical(&json!({
        "task_type": spec.task_type,
        "description": spec.description.trim(),
        "planner": spec.planner,
        "steps": spec.steps,
        "profile": spec.profile,
        "max_steps": spec.max_steps,
        "timeout_secs": spec.timeout_secs,
        "constraints": spec.constraints,
        "packs": packs,
        "image_digest": context.image_digest,
        "plugin_planner": context.planner,
    }));
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(owner.as_bytes());
    hasher.update([0]);
    hasher.update(normalised.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// An infrastructure failure as a retriable error that keeps the cause's code and words.
fn infrastructure(err: WharfError, doing: &str) -> WharfError {
    WharfError::new(
        err.code,
        format!("{doing}: {}: {}", err.code.as_str(), err.message),
    )
    .with_retriable(true)
}

/// What a capability call's answer says about the step: an error by its code; an answer by
/// its `timed_out` flag and `exit_code` (the adapters' run outputs carry both).
fn observe(
    result: WharfResult<CallOutcome>,
    pack_versions: &mut BTreeMap<String, String>,
) -> Observed {
    match result {
        Ok(CallOutcome::Done(done)) => {
            pack_versions.insert(done.pack.clone(), done.version.clone());
            let failure = failure_of_output(&done.output);
            Observed {
                success: failure.is_none(),
                failure,
                observation: done.output.to_string(),
                output: Some(done.output),
                deadline_passed: false,
            }
        }
        Ok(CallOutcome::PendingApproval(approval)) => Observed::failed(
            ErrorClass::CapabilityError,
            format!(
                "the call waits for an approver (approval {}); batch tasks cannot wait",
                approval.id
            ),
            json!({"error": {"code": "pending_approval", "approval_id": approval.id}}),
        ),
        Err(err) => {
            let class = ErrorClass::of_call_error(err.code);
            Observed::failed(
                class,
                format!("{}: {}", err.code.as_str(), err.message),
                json!({"error": {"code": err.code.as_str(), "message": err.message}}),
            )
        }
    }
}

fn failure_of_output(output: &Value) -> Option<(ErrorClass, String)> {
    if output.get("timed_out") == Some(&Value::Bool(true)) {
        return Some((
            ErrorClass::Timeout,
            "the command ran past its timeout and was killed".to_string(),
        ));
    }
    let exception = output
        .get("exception")
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .map(|kind| format!(" ({kind})"))
        .unwrap_or_default();
    match output.get("exit_code") {
        Some(Value::Number(code)) if code.as_i64() != Some(0) => Some((
            ErrorClass::RuntimeError,
            format!("exited with code {code}{exception}"),
        )),
        Some(Value::Null) => Some((
            ErrorClass::RuntimeError,
            "killed by a signal (no exit code)".to_string(),
        )),
        _ => None,
    }
}

/// Cuts text to at most `cap` bytes on a character boundary; true when it was cut.
fn cap_text(mut text: String, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text, false);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_classed_by_exit_code_and_timeout_flag() {
        assert_eq!(failure_of_output(&json!({"exit_code": 0})), None);
        assert_eq!(failure_of_output(&json!({"written": 3})), None);
        let (class, message) =
            failure_of_output(&json!({"exit_code": 1, "exception": {"type": "ZeroDivisionError"}}))
                .unwrap();
        assert_eq!(class, ErrorClass::RuntimeError);
        assert!(message.contains("ZeroDivisionError"), "{message}");
        assert_eq!(
            failure_of_output(&json!({"exit_code": null, "timed_out": true}))
                .unwrap()
                .0,
            ErrorClass::Timeout
        );
        assert_eq!(
            failure_of_output(&json!({"exit_code": null})).unwrap().0,
            ErrorClass::RuntimeError
        );
    }

    #[test]
    fn call_errors_are_classed_by_code_and_side() {
        let class = |code| ErrorClass::of_call_error(code);
        assert_eq!(class(ErrorCode::CompileError), ErrorClass::CompileError);
        assert_eq!(class(ErrorCode::Timeout), ErrorClass::Timeout);
        assert_eq!(
            class(ErrorCode::ValidationError),
            ErrorClass::CapabilityError
        );
        assert_eq!(
            class(ErrorCode::DriverUnavailable).side(),
            Side::Infrastructure
        );
        assert_eq!(class(ErrorCode::PluginTrap), ErrorClass::SystemError);
        assert_eq!(class(ErrorCode::Forbidden).side(), Side::Task);
    }

    #[test]
    fn the_cache_key_ignores_ids_and_key_order_but_not_owner_pack_versions_image_or_model() {
        let spec = |task_id: &str, input: Value| TaskSpec {
            task_id: task_id.into(),
            task_type: "code".into(),
            description: "d".into(),
            planner: "script".into(),
            steps: vec![super::super::spec::ScriptStep {
                capability: "shell".into(),
                operation: "run".into(),
                input,
            }],
            profile: "local".into(),
            max_steps: 3,
            timeout_secs: 5.0,
            priority: 1,
            constraints: Default::default(),
            expected_tools: Vec::new(),
        };
        let tool = |version: &str| ToolSchema {
            name: "shell.run".into(),
            description: String::new(),
            input_schema: json!({}),
            pack: "core-adapters".into(),
            version: version.into(),
        };
        let a = spec(
            "a",
            serde_json::from_str(r#"{"command": "ls", "timeout_ms": 5}"#).unwrap(),
        );
        let b = spec(
            "b",
            serde_json::from_str(r#"{"timeout_ms": 5, "command": "ls"}"#).unwrap(),
        );
        let context = |version: &str, digest: &str| CacheContext {
            tools: vec![tool(version)],
            image_digest: Some(digest.to_string()),
            planner: None,
        };
        let key = cache_key("o", &a, &context("0.2.0", "sha256:aa"));
        assert_eq!(key, cache_key("o", &b, &context("0.2.0", "sha256:aa")));
        assert_ne!(key, cache_key("p", &a, &context("0.2.0", "sha256:aa")));
        assert_ne!(key, cache_key("o", &a, &context("0.2.1", "sha256:aa")));
        assert_ne!(
            key,
            cache_key("o", &a, &context("0.2.0", "sha256:bb")),
            "image digest"
        );
        let c = spec("a", json!({"command": "ls -l", "timeout_ms": 5}));
        assert_ne!(key, cache_key("o", &c, &context("0.2.0", "sha256:aa")));
        let planned = CacheContext {
            planner: Some(json!({"model": "m1"})),
            ..context("0.2.0", "sha256:aa")
        };
        let other_model = CacheContext {
            planner: Some(json!({"model": "m2"})),
            ..context("0.2.0", "sha256:aa")
        };
        assert_ne!(
            cache_key("o", &a, &planned),
            cache_key("o", &a, &other_model)
        );
    }

    #[test]
    fn observations_are_cut_on_a_character_boundary() {
        assert_eq!(cap_text("héllo".into(), 2), ("h".to_string(), true));
        assert_eq!(cap_text("abc".into(), 3), ("abc".to_string(), false));
    }
}
