//! Trajectories: what a task did, step by step, and the export formats.
//!
//! - `wharf` (schema `wharf.trajectory.v1`): the task, its outcome and provenance, and every
//!   step with its action, params, observation (capped), success, error class and timing.
//! - `messages` (schema `wharf.messages.v1`): the same task as OpenAI-style chat messages (the
//!   description as the `user` message, each step an `assistant` tool call and its `tool`
//!   answer, and a plugin planner's final answer) with the tool schemas of the operations the
//!   task was offered, for fine-tuning.
//! - `atif` (`ATIF-v1.7`, the Agent Trajectory Interchange Format of the Harbor project): the
//!   description as a `user` step, each capability call an `agent` step with its tool call and
//!   observation; Wharf's own fields (status, error class, side, provenance) under `extra`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::TaskSpec;
use super::{ErrorClass, Side, parse_class, parse_side};
use crate::jobs::RunState;
use crate::store::batches::{StepRow, TaskRow};
use crate::store::rfc3339_from_ms;

pub const WHARF_SCHEMA: &str = "wharf.trajectory.v1";
pub const MESSAGES_SCHEMA: &str = "wharf.messages.v1";
/// The version of the Agent Trajectory Interchange Format written by `format=atif`.
pub const ATIF_VERSION: &str = "ATIF-v1.7";

/// An operation offered to a task, as its adapter describes it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolSchema {
    /// `capability.operation`.
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub input_schema: Value,
    pub pack: String,
    pub version: String,
}

/// Provenance and result of a task's last attempt (stored with the task).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub planner: String,
    /// The model that planned, as its endpoint reported it (none for `script`).
    pub model: Option<String>,
    pub profile: String,
    pub image_digest: Option<String>,
    /// Pack id -> version of every pack a step was served by.
    pub pack_versions: BTreeMap<String, String>,
    pub tools: Vec<ToolSchema>,
    /// The output of the last step that succeeded (`script`), or the plugin planner's final
    /// answer (a string).
    pub final_result: Option<Value>,
    /// Milliseconds of the last attempt's steps.
    pub steps_duration_ms: f64,
}

/// One step of a trajectory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrajectoryStep {
    /// From 1.
    pub step_id: i64,
    /// `capability_call` (a step of a `script`) or `tool_call` (a call a plugin planner
    /// chose; the trajectory's `tools` are those it was offered).
    pub action_type: String,
    /// `capability.operation` of a capability call.
    pub tool: Option<String>,
    /// The call's input.
    #[schema(value_type = Object)]
    pub params: Value,
    /// What came back: the operation's output, or the error, as JSON text (capped at
    /// `[batches] observation_cap_bytes`).
    pub observation: String,
    pub observation_truncated: bool,
    pub success: bool,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    /// When the step started (RFC 3339).
    pub ts: String,
    pub duration_ms: f64,
    /// The model's text that came with a plugin planner's call (none for a script).
    pub thought: Option<String>,
}

/// A task's trajectory (`format=wharf`, schema `wharf.trajectory.v1`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Trajectory {
    /// `wharf.trajectory.v1`.
    pub schema: String,
    pub id: String,
    pub batch_id: String,
    pub task_id: String,
    pub task_type: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub constraints: serde_json::Map<String, Value>,
    pub expected_tools: Vec<String>,
    pub status: RunState,
    pub success: bool,
    pub side: Option<Side>,
    pub error_class: Option<ErrorClass>,
    pub error_message: Option<String>,
    pub planner: String,
    pub model: Option<String>,
    pub profile: String,
    pub image_digest: Option<String>,
    pub pack_versions: BTreeMap<String, String>,
    pub max_steps: u32,
    pub timeout_secs: f64,
    pub attempts: i64,
    pub sandbox_id: Option<String>,
    /// The batch had the cache on and this task reused the trajectory of `cache_source`
    /// (same owner, normalised spec and pack versions): its steps are that task's.
    pub cache_hit: bool,
    pub cache_source: Option<String>,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// From the task's first start to its end, retries included.
    pub total_duration_ms: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub final_result: Option<Value>,
    pub tools: Vec<ToolSchema>,
    pub steps: Vec<TrajectoryStep>,
}

/// Builds a trajectory from a task's row and steps.
pub fn trajectory(task: &TaskRow, steps: Vec<StepRow>) -> Trajectory {
    let spec: Option<TaskSpec> = serde_json::from_str(&task.spec).ok();
    let outcome: Outcome = task
        .outcome
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default();
    let status = RunState::parse(&task.status).unwrap_or(RunState::Failed);
    let spec_or = |f: fn(&TaskSpec) -> String| spec.as_ref().map(f).unwrap_or_default();
    Trajectory {
        schema: WHARF_SCHEMA.to_string(),
        id: task.id.clone(),
        batch_id: task.batch_id.clone(),
        task_id: task.task_id.clone(),
        task_type: task.task_type.clone(),
        description: spec_or(|s| s.description.clone()),
        constraints: spec
            .as_ref()
            .map(|s| s.constraints.clone())
            .unwrap_or_default(),
        expected_tools: spec
            .as_ref()
            .map(|s| s.expected_tools.clone())
            .unwrap_or_default(),
        status,
        success: status == RunState::Succeeded,
        side: parse_side(task.side.as_deref()),
        error_class: parse_class(task.error_class.as_deref()),
        error_message: task.error_message.clone(),
        planner: spec_or(|s| s.planner.clone()),
        model: outcome.model,
        profile: spec_or(|s| s.profile.clone()),
        image_digest: outcome.image_digest,
        pack_versions: outcome.pack_versions,
        max_steps: spec.as_ref().map_or(0, |s| s.max_steps),
        timeout_secs: spec.as_ref().map_or(0.0, |s| s.timeout_secs),
        attempts: task.attempts,
        sandbox_id: task.sandbox_id.clone(),
        cache_hit: task.cache.as_deref() == Some("hit"),
        cache_source: task.cache_source.clone(),
        queued_at: rfc3339_from_ms(task.queued_ms),
        started_at: task.started_ms.map(rfc3339_from_ms),
        ended_at: task.ended_ms.map(rfc3339_from_ms),
        total_duration_ms: task.started_ms.zip(task.ended_ms).map(|(s, e)| e - s),
        final_result: outcome.final_result,
        tools: outcome.tools,
        steps: steps
            .into_iter()
            .map(|s| TrajectoryStep {
                step_id: s.step_id,
                action_type: s.action_type,
                tool: s.tool,
                params: serde_json::from_str(&s.params).unwrap_or(Value::Null),
                observation: s.observation,
                observation_truncated: s.observation_truncated,
                success: s.success,
                error_class: parse_class(s.error_class.as_deref()),
                error_message: s.error_message,
                ts: rfc3339_from_ms(s.ts_ms),
                duration_ms: s.duration_ms,
                thought: s.thought,
            })
            .collect(),
    }
}

/// An OpenAI function name for `capability.operation` (`^[a-zA-Z0-9_-]{1,64}$`).
fn function_name(tool: &str) -> String {
    tool.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// The `messages` rendering of a trajectory (schema `wharf.messages.v1`).
pub fn messages(trajectory: &Trajectory) -> Value {
    let mut messages = vec![json!({"role": "user", "content": trajectory.description})];
    for step in &trajectory.steps {
        let call_id = format!("call_{}", step.step_id);
        let name = function_name(step.tool.as_deref().unwrap_or(&step.action_type));
        messages.push(json!({
            "role": "assistant",
            "content": step.thought,
            "tool_calls": [{
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": step.params.to_string()},
            }],
        }));
        messages.push(json!({
            "role": "tool",
            "tool_call_id": call_id,
            "content": step.observation,
        }));
    }
    // A plugin planner's final answer ends the conversation as the model gave it.
    if trajectory.planner != super::spec::SCRIPT_PLANNER
        && let Some(Value::String(answer)) = &trajectory.final_result
    {
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    let tools: Vec<Value> = trajectory
        .tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": function_name(&tool.name),
                    "description": tool.description,
                    "parameters": tool.input_schema,
                },
            })
        })
        .collect();
    json!({
        "schema": MESSAGES_SCHEMA,
        "id": trajectory.id,
        "batch_id": trajectory.batch_id,
        "task_id": trajectory.task_id,
        "status": trajectory.status,
        "success": trajectory.success,
        "error_class": trajectory.error_class,
        "side": trajectory.side,
        "planner": trajectory.planner,
        "model": trajectory.model,
        "pack_versions": trajectory.pack_versions,
        "cache_hit": trajectory.cache_hit,
        "messages": messages,
        "tools": tools,
    })
}

/// The `atif` rendering of a trajectory (one ATIF trajectory per task).
pub fn atif(trajectory: &Trajectory) -> Value {
    let mut steps = vec![json!({
        "step_id": 1,
        "timestamp": trajectory.started_at.as_deref().unwrap_or(&trajectory.queued_at),
        "source": "user",
        "message": trajectory.description,
    })];
    for step in &trajectory.steps {
        let call_id = format!("call_{}", step.step_id);
        let tool = step.tool.as_deref().unwrap_or(&step.action_type);
        steps.push(json!({
            "step_id": steps.len() + 1,
            "timestamp": step.ts,
            "source": "agent",
            "message": step
                .thought
                .clone()
                .unwrap_or_else(|| format!("{} {tool}", step.action_type)),
            "tool_calls": [{
                "tool_call_id": call_id,
                "function_name": function_name(tool),
                "arguments": step.params,
            }],
            "observation": {"results": [{"source_call_id": call_id, "content": step.observation}]},
            "extra": {
                "success": step.success,
                "error_class": step.error_class,
                "error_message": step.error_message,
                "duration_ms": step.duration_ms,
                "observation_truncated": step.observation_truncated,
            },
        }));
    }
    let mut agent = json!({
        "name": format!("wharf-{}", trajectory.planner),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(model) = &trajectory.model {
        agent["model_name"] = json!(model);
    }
    json!({
        "schema_version": ATIF_VERSION,
        "session_id": trajectory.id,
        "agent": agent,
        "steps": steps,
        "final_metrics": {
            "total_steps": trajectory.steps.len(),
            "extra": {"total_duration_ms": trajectory.total_duration_ms},
        },
        "extra": {
            "batch_id": trajectory.batch_id,
            "task_id": trajectory.task_id,
            "task_type": trajectory.task_type,
            "status": trajectory.status,
            "success": trajectory.success,
            "side": trajectory.side,
            "error_class": trajectory.error_class,
            "error_message": trajectory.error_message,
            "profile": trajectory.profile,
            "image_digest": trajectory.image_digest,
            "pack_versions": trajectory.pack_versions,
            "cache_hit": trajectory.cache_hit,
            "final_result": trajectory.final_result,
            "tools": trajectory.tools,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_pair_each_tool_call_with_its_answer_and_carry_the_schemas() {
        let task = TaskRow {
            id: "tsk_1".into(),
            batch_id: "bat_1".into(),
            owner: "o".into(),
            task_id: "t".into(),
            task_type: "code".into(),
            line: 1,
            priority: 1,
            spec: serde_json::to_string(&TaskSpec {
                task_id: "t".into(),
                task_type: "code".into(),
                description: "add".into(),
                planner: "script".into(),
                steps: Vec::new(),
                profile: "local".into(),
                max_steps: 3,
                timeout_secs: 5.0,
                priority: 1,
                constraints: Default::default(),
                expected_tools: Vec::new(),
            })
            .unwrap(),
            status: "succeeded".into(),
            side: None,
            error_class: None,
            error_message: None,
            attempts: 1,
            sandbox_id: None,
            cache: None,
            cache_source: None,
            outcome: Some(
                serde_json::to_string(&Outcome {
                    planner: "script".into(),
                    tools: vec![ToolSchema {
                        name: "python.run".into(),
                        description: "Runs Python".into(),
                        input_schema: json!({"type": "object"}),
                        pack: "core-adapters".into(),
                        version: "0.2.0".into(),
                    }],
                    ..Outcome::default()
                })
                .unwrap(),
            ),
            queued_ms: 0,
            started_ms: Some(10),
            ended_ms: Some(30),
        };
        let step = StepRow {
            step_id: 1,
            action_type: "capability_call".into(),
            tool: Some("python.run".into()),
            params: r#"{"code":"result = 1 + 1"}"#.into(),
            observation: r#"{"result":2}"#.into(),
            observation_truncated: false,
            success: true,
            error_class: None,
            error_message: None,
            ts_ms: 10,
            duration_ms: 3.0,
            thought: None,
        };
        let trajectory = trajectory(&task, vec![step]);
        assert_eq!(trajectory.total_duration_ms, Some(20));
        assert!(trajectory.success);
        let rendered = messages(&trajectory);
        let messages = rendered["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["name"],
            "python_run"
        );
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["arguments"],
            r#"{"code":"result = 1 + 1"}"#
        );
        assert_eq!(messages[2]["tool_call_id"], "call_1");
        assert_eq!(
            rendered["tools"][0]["function"]["parameters"]["type"],
            "object"
        );
        let atif = atif(&trajectory);
        assert_eq!(atif["schema_version"], "ATIF-v1.7");
        let ids: Vec<i64> = atif["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2], "sequential from 1");
        assert_eq!(atif["steps"][0]["source"], "user");
        let call = &atif["steps"][1];
        assert_eq!(call["tool_calls"][0]["function_name"], "python_run");
        assert_eq!(call["tool_calls"][0]["arguments"]["code"], "result = 1 + 1");
        assert_eq!(
            call["observation"]["results"][0]["source_call_id"],
            call["tool_calls"][0]["tool_call_id"]
        );
    }
}
