//! What a batch submission holds: a JSONL body (one task per line) or a JSON array, parsed
//! line by line so that one bad line is reported by its number while the others run.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::BatchesConfig;
use crate::capabilities::CapabilityName;
use crate::error::{WharfError, WharfResult};

/// The one planner built in: runs the task's `steps` in order. Any other name is a planner
/// component of a loaded pack (`llm` of `llm-planner-pack`).
pub const SCRIPT_PLANNER: &str = "script";

const MAX_TASK_ID: usize = 128;
const MAX_TASK_TYPE: usize = 64;
const MAX_DESCRIPTION: usize = 16 * 1024;
const MAX_OPERATION: usize = 128;
const MAX_EXPECTED_TOOLS: usize = 64;

/// One task as a client writes it (a line of the JSONL body).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    /// The client's id, unique within the batch: 1-128 of `A-Z a-z 0-9 . _ : -`.
    pub task_id: String,
    /// The queue the task waits in (`[batches.queues.<type>]` sets its concurrency):
    /// 1-64 of `a-z 0-9 _ -`.
    pub task_type: String,
    /// What the task is about (kept in the trajectory; the `user` message of the
    /// `messages` export).
    pub description: String,
    /// The capability calls the `script` planner makes, in order (only for `script`).
    #[serde(default)]
    pub steps: Option<Vec<ScriptStep>>,
    /// `script` (the default; built in), or the name of a planner component of a loaded
    /// pack, e.g. `llm` (`llm-planner-pack`), which picks each step itself.
    #[serde(default)]
    pub planner: Option<String>,
    /// Sandbox profile of the task's sandbox; default `[batches] default_profile`.
    #[serde(default)]
    pub profile: Option<String>,
    /// The most steps the task may take; default `[batches] default_max_steps`.
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Seconds the task's steps may take in all; default `[batches] default_timeout_secs`.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Higher runs first within its queue (default 1).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Free-form constraints, kept in the trajectory for planners and readers.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub constraints: Option<Map<String, Value>>,
    /// Tools the author expects the task to use (kept in the trajectory).
    #[serde(default)]
    pub expected_tools: Option<Vec<String>>,
}

/// One capability call of a script.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    /// `python`, `shell@0.2`, ... as for `POST /v1/sandboxes/{id}/capabilities/...`.
    pub capability: String,
    pub operation: String,
    /// The operation's input (an object; default `{}`).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A task as accepted: every default filled in. Stored as the task's spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub task_type: String,
    pub description: String,
    pub planner: String,
    pub steps: Vec<ScriptStep>,
    pub profile: String,
    pub max_steps: u32,
    pub timeout_secs: f64,
    pub priority: i64,
    pub constraints: Map<String, Value>,
    pub expected_tools: Vec<String>,
}

/// A line that was not accepted, and why.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidLine {
    /// Line of the JSONL body (blank lines count), or element of the JSON array, from 1.
    pub line: usize,
    /// The line's `task_id`, when it had a readable one.
    pub task_id: Option<String>,
    pub message: String,
}

/// A parsed body: accepted tasks with their line numbers, and the lines refused.
pub struct Parsed {
    pub tasks: Vec<(usize, TaskSpec)>,
    pub invalid: Vec<InvalidLine>,
}

/// Checks that depend on the server: profiles and the key's right to use them, and the
/// planners loaded now.
pub trait ServerChecks {
    fn check_profile(&self, profile: &str) -> WharfResult<()>;
    /// A planner other than `script`: a loaded planner component that can run now.
    fn check_planner(&self, planner: &str) -> WharfResult<()>;
}

/// Parses a body: a JSON array when its first non-blank character is `[`, else JSONL.
/// Per-line problems are collected; a body that is not UTF-8, a malformed array, or more
/// tasks than `[batches] max_tasks_per_batch` fail the whole request.
pub fn parse(
    body: &[u8],
    config: &BatchesConfig,
    server: &dyn ServerChecks,
) -> WharfResult<Parsed> {
    let text = std::str::from_utf8(body)
        .map_err(|_| WharfError::validation("the batch body is not UTF-8"))?;
    let values: Vec<(usize, Result<Value, String>)> = if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text).map_err(|err| {
            WharfError::validation(format!("the batch body is not a JSON array: {err}"))
        })?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, value)| (i + 1, Ok(value)))
            .collect()
    } else {
        text.split('\n')
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                let value =
                    serde_json::from_str::<Value>(line).map_err(|err| format!("not JSON: {err}"));
                (i + 1, value)
            })
            .collect()
    };
    if values.is_empty() {
        return Err(WharfError::validation("the batch has no tasks"));
    }
    if values.len() > config.max_tasks_per_batch {
        return Err(WharfError::validation(format!(
            "the batch has {} tasks; at most {} are accepted at once ([batches] max_tasks_per_batch)",
            values.len(),
            config.max_tasks_per_batch
        )));
    }
    let mut parsed = Parsed {
        tasks: Vec::new(),
        invalid: Vec::new(),
    };
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (line, value) in values {
        let task_id = value
            .as_ref()
            .ok()
            .and_then(|v| v.get("task_id"))
            .and_then(Value::as_str)
            .map(|id| id.chars().take(MAX_TASK_ID).collect::<String>());
        let accepted = value.and_then(|value| {
            let input: TaskInput = serde_json::from_value(value).map_err(|err| err.to_string())?;
            validate(input, config, server).map_err(|err| err.message)
        });
        match accepted {
            Ok(spec) => {
                if let Some(first) = first_line_of.get(&spec.task_id) {
                    parsed.invalid.push(InvalidLine {
                        line,
                        task_id,
                        message: format!(
                            "duplicate task_id {:?}: line {first} has it already",
                            spec.task_id
                        ),
                    });
                    continue;
                }
                first_line_of.insert(spec.task_id.clone(), line);
                parsed.tasks.push((line, spec));
            }
            Err(message) => parsed.invalid.push(InvalidLine {
                line,
                task_id,
                message,
            }),
        }
    }
    Ok(parsed)
}

fn validate(
    input: TaskInput,
    config: &BatchesConfig,
    server: &dyn ServerChecks,
) -> WharfResult<TaskSpec> {
    let id_ok = |text: &str, max: usize, extra: &[char], lower: bool| {
        !text.is_empty()
            && text.len() <= max
            && text.chars().all(|c| {
                (c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
                    || (!lower && c.is_ascii_uppercase())
            })
    };
    if !id_ok(&input.task_id, MAX_TASK_ID, &['.', '_', ':', '-'], false) {
        return Err(WharfError::validation(format!(
            "`task_id` must be 1-{MAX_TASK_ID} of A-Z a-z 0-9 . _ : -"
        )));
    }
    if !id_ok(&input.task_type, MAX_TASK_TYPE, &['_', '-'], true) {
        return Err(WharfError::validation(format!(
            "`task_type` must be 1-{MAX_TASK_TYPE} of a-z 0-9 _ -"
        )));
    }
    if input.description.trim().is_empty() || input.description.len() > MAX_DESCRIPTION {
        return Err(WharfError::validation(format!(
            "`description` must be 1 to {MAX_DESCRIPTION} bytes"
        )));
    }
    let planner = input.planner.unwrap_or_else(|| SCRIPT_PLANNER.to_string());
    let steps = input.steps.unwrap_or_default();
    if planner == SCRIPT_PLANNER {
        if steps.is_empty() {
            return Err(WharfError::validation(
                "the `script` planner needs `steps`: a list of {capability, operation, input}",
            ));
        }
    } else {
        server.check_planner(&planner)?;
        if !steps.is_empty() {
            return Err(WharfError::validation(format!(
                "`steps` are for the `script` planner; planner {planner:?} picks its own steps"
            )));
        }
    }
    if steps.len() > config.max_steps_cap as usize {
        return Err(WharfError::validation(format!(
            "`steps` has {} entries; at most {} ([batches] max_steps_cap)",
            steps.len(),
            config.max_steps_cap
        )));
    }
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        CapabilityName::parse(&step.capability)
            .map_err(|err| WharfError::validation(format!("step {n}: {}", err.message)))?;
        if step.operation.is_empty() || step.operation.len() > MAX_OPERATION {
            return Err(WharfError::validation(format!(
                "step {n}: `operation` must be 1-{MAX_OPERATION} characters"
            )));
        }
        if !step.input.is_object() {
            return Err(WharfError::validation(format!(
                "step {n}: `input` must be a JSON object"
            )));
        }
    }
    let max_steps = input.max_steps.unwrap_or(config.default_max_steps);
    if max_steps == 0 || max_steps > config.max_steps_cap {
        return Err(WharfError::validation(format!(
            "`max_steps` must be 1 to {} ([batches] max_steps_cap)",
            config.max_steps_cap
        )));
    }
    let timeout_secs = input.timeout.unwrap_or(config.default_timeout_secs as f64);
    if !(timeout_secs > 0.0 && timeout_secs <= config.max_timeout_secs as f64) {
        return Err(WharfError::validation(format!(
            "`timeout` must be more than 0 and at most {} seconds ([batches] max_timeout_secs)",
            config.max_timeout_secs
        )));
    }
    let priority = input.priority.unwrap_or(1);
    if !(-1000..=1000).contains(&priority) {
        return Err(WharfError::validation(
            "`priority` must be within -1000..=1000",
        ));
    }
    let expected_tools = input.expected_tools.unwrap_or_default();
    if expected_tools.len() > MAX_EXPECTED_TOOLS
        || expected_tools.iter().any(|t| t.len() > MAX_OPERATION * 2)
    {
        return Err(WharfError::validation(format!(
            "`expected_tools` holds at most {MAX_EXPECTED_TOOLS} names of at most {} characters",
            MAX_OPERATION * 2
        )));
    }
    let profile = input
        .profile
        .unwrap_or_else(|| config.default_profile.clone());
    server.check_profile(&profile)?;
    Ok(TaskSpec {
        task_id: input.task_id,
        task_type: input.task_type,
        description: input.description,
        planner,
        steps,
        profile,
        max_steps,
        timeout_secs,
        priority,
        constraints: input.constraints.unwrap_or_default(),
        expected_tools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AnyProfile;

    impl ServerChecks for AnyProfile {
        fn check_profile(&self, profile: &str) -> WharfResult<()> {
            if profile == "missing" {
                Err(WharfError::not_found("profile missing"))
            } else {
                Ok(())
            }
        }

        fn check_planner(&self, planner: &str) -> WharfResult<()> {
            if planner == "llm" {
                Ok(())
            } else {
                Err(WharfError::validation(format!(
                    "planner {planner:?} is not loaded"
                )))
            }
        }
    }

    fn line(task_id: &str) -> String {
        serde_json::json!({
            "task_id": task_id, "task_type": "code", "description": "d",
            "steps": [{"capability": "shell", "operation": "run", "input": {"command": "true"}}]
        })
        .to_string()
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_the_rest_accepted() {
        let body = [
            line("a"),
            "{not json".to_string(),
            String::new(),
            line("a"),
            r#"{"task_id":"b","task_type":"code","description":"d","planner":"gpt","steps":[]}"#
                .to_string(),
            line("c"),
            r#"{"task_id":"d","task_type":"code","description":"d","profile":"missing","steps":[{"capability":"shell","operation":"run"}]}"#.to_string(),
            r#"{"task_id":"e","task_type":"Code!","description":"d"}"#.to_string(),
        ]
        .join("\n");
        let parsed = parse(body.as_bytes(), &BatchesConfig::default(), &AnyProfile).unwrap();
        let accepted: Vec<_> = parsed
            .tasks
            .iter()
            .map(|(n, t)| (*n, t.task_id.as_str()))
            .collect();
        assert_eq!(accepted, [(1, "a"), (6, "c")]);
        let refused: Vec<_> = parsed.invalid.iter().map(|l| l.line).collect();
        assert_eq!(refused, [2, 4, 5, 7, 8]);
        assert!(
            parsed.invalid[1].message.contains("line 1"),
            "{:?}",
            parsed.invalid[1]
        );
        assert!(
            parsed.invalid[2].message.contains("planner"),
            "{:?}",
            parsed.invalid[2]
        );
        assert!(
            parsed.invalid[3].message.contains("not found"),
            "{:?}",
            parsed.invalid[3]
        );
        assert!(
            parsed.invalid[4].message.contains("task_type"),
            "{:?}",
            parsed.invalid[4]
        );
        assert_eq!(parsed.invalid[1].task_id.as_deref(), Some("a"));
    }

    #[test]
    fn a_loaded_planner_takes_no_steps_and_an_unknown_one_is_refused() {
        let body = [
            r#"{"task_id":"a","task_type":"code","description":"write and run hello.py","planner":"llm"}"#,
            r#"{"task_id":"b","task_type":"code","description":"d","planner":"llm","steps":[{"capability":"shell","operation":"run"}]}"#,
            r#"{"task_id":"c","task_type":"code","description":"d","planner":"nope"}"#,
        ]
        .join("\n");
        let parsed = parse(body.as_bytes(), &BatchesConfig::default(), &AnyProfile).unwrap();
        assert_eq!(parsed.tasks.len(), 1);
        let (line, spec) = &parsed.tasks[0];
        assert_eq!((*line, spec.planner.as_str()), (1, "llm"));
        assert!(spec.steps.is_empty());
        let refused: Vec<_> = parsed
            .invalid
            .iter()
            .map(|l| (l.line, l.message.as_str()))
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0]
                .1
                .contains("`steps` are for the `script` planner"),
            "{refused:?}"
        );
        assert!(
            refused[1].1.contains("\"nope\" is not loaded"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_json_array_counts_elements_and_defaults_are_filled() {
        let body = format!("[{}, {{\"task_id\": 3}}]", line("x"));
        let parsed = parse(body.as_bytes(), &BatchesConfig::default(), &AnyProfile).unwrap();
        let (n, spec) = &parsed.tasks[0];
        assert_eq!(*n, 1);
        assert_eq!(spec.planner, "script");
        assert_eq!(spec.max_steps, BatchesConfig::default().default_max_steps);
        assert_eq!(spec.priority, 1);
        assert_eq!(parsed.invalid[0].line, 2);
        assert!(parse(b"   ", &BatchesConfig::default(), &AnyProfile).is_err());
        assert!(parse(b"[1,", &BatchesConfig::default(), &AnyProfile).is_err());
        let many = vec![line("z"); 3].join("\n");
        let small = BatchesConfig {
            max_tasks_per_batch: 2,
            ..BatchesConfig::default()
        };
        assert!(parse(many.as_bytes(), &small, &AnyProfile).is_err());
    }
}
