//! The chat completions exchange: the request built from a task and its history, and the
//! decision read from the answer.
//!
//! Shapes from the OpenAI API reference: the request of
//! <https://platform.openai.com/docs/api-reference/chat/create> (`model`, `messages` with
//! `system`, `user`, `assistant` messages carrying `tool_calls`, and `tool` messages with
//! their `tool_call_id`; `tools` of `type: function`; `tool_choice`, `max_tokens`,
//! `temperature`), the answer of <https://platform.openai.com/docs/api-reference/chat/object>
//! (`model`, `choices[0].message.{content, tool_calls}`), and the error body
//! `{"error": {"message", "type", "code"}}` of <https://platform.openai.com/docs/guides/error-codes>.

use serde::Deserialize;
use serde_json::{Value, json};
use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::planner::{Action, Decision, Step, Task, ToolCall};

/// A non-2xx answer from the endpoint.
pub const ENDPOINT_ERROR: &str = "endpoint_error";
/// An answer that is not a chat completion this planner can act on.
pub const INVALID_RESPONSE: &str = "invalid_response";
/// Input the host gave that cannot become a request (e.g. a tool schema that is not JSON).
pub const INVALID_INPUT: &str = "invalid_input";

/// Characters of the upstream's error message kept in an `endpoint_error`.
const MAX_UPSTREAM_MESSAGE: usize = 500;

/// What the model is told about its situation; the task itself is the user message.
pub fn system_prompt(task: &Task, steps_taken: usize) -> String {
    let left = (task.max_steps as usize).saturating_sub(steps_taken);
    format!(
        "You carry out a task in an isolated sandbox: a fresh workspace with its own files and \
         processes. You act only through the tools offered; each call runs in the sandbox and \
         its result comes back to you. Call one tool at a time. When the task is done, answer \
         with a short final message and no tool call. You may make at most {} tool calls in \
         all; {left} remain.",
        task.max_steps
    )
}

/// `<base_url>/chat/completions` (one slash between them).
pub fn completions_url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// The id of a step's call in the conversation: the planner's own, or a stable one when the
/// history has none.
fn call_id(step: &Step, index: usize) -> String {
    if step.call.id.is_empty() {
        format!("call_{}", index + 1)
    } else {
        step.call.id.clone()
    }
}

/// The conversation so far: system prompt, the task, then each step's call and answer.
pub fn messages(task: &Task, history: &[Step]) -> Vec<Value> {
    let mut messages = vec![
        json!({"role": "system", "content": system_prompt(task, history.len())}),
        json!({"role": "user", "content": task.description}),
    ];
    for (i, step) in history.iter().enumerate() {
        let id = call_id(step, i);
        messages.push(json!({
            "role": "assistant",
            "content": step.thought,
            "tool_calls": [{
                "id": id,
                "type": "function",
                "function": {"name": step.call.tool, "arguments": step.call.input},
            }],
        }));
        messages.push(json!({
            "role": "tool",
            "tool_call_id": id,
            "content": step.observation,
        }));
    }
    messages
}

/// The task's tools as OpenAI function tools.
pub fn tools(task: &Task) -> Result<Vec<Value>, PluginError> {
    task.tools
        .iter()
        .map(|tool| {
            let parameters: Value = serde_json::from_str(&tool.input_schema).map_err(|err| {
                PluginError::new(
                    INVALID_INPUT,
                    format!(
                        "the input schema of tool {:?} is not JSON: {err}",
                        tool.name
                    ),
                )
            })?;
            Ok(json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": parameters,
                },
            }))
        })
        .collect()
}

/// The request body of `POST <base_url>/chat/completions`.
pub fn request_body(task: &Task, history: &[Step]) -> Result<Value, PluginError> {
    let endpoint = &task.endpoint;
    if endpoint.model.trim().is_empty() {
        return Err(PluginError::new(
            INVALID_INPUT,
            "the endpoint names no model",
        ));
    }
    let mut body = json!({
        "model": endpoint.model,
        "messages": messages(task, history),
    });
    let tools = tools(task)?;
    // `tool_choice` is only valid alongside `tools`.
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
        body["tool_choice"] = json!("auto");
    }
    if let Some(max_tokens) = endpoint.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if let Some(temperature) = endpoint.temperature {
        body["temperature"] = json!(temperature);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    /// JSON text, as the model wrote it (not always valid JSON: the host checks it).
    arguments: String,
}

/// Cuts `text` to at most `max` characters.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The upstream's own words for a failed answer: `error.message` of an OpenAI error body,
/// else the start of the body.
fn upstream_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .and_then(Value::as_str)
            .or_else(|| v.get("message").and_then(Value::as_str))
    });
    match message {
        Some(message) => clip(message, MAX_UPSTREAM_MESSAGE),
        None => clip(String::from_utf8_lossy(body).trim(), MAX_UPSTREAM_MESSAGE),
    }
}

/// The decision an answer carries: its first tool call, or (without one) the end of the
/// task with the answer's text. A non-2xx answer is an `endpoint_error`.
pub fn decide(status: u16, body: &[u8]) -> Result<Decision, PluginError> {
    if !(200..300).contains(&status) {
        let retriable = status == 429 || status >= 500;
        return Err(PluginError::new(
            ENDPOINT_ERROR,
            format!(
                "the endpoint answered HTTP {status}: {}",
                upstream_message(body)
            ),
        )
        .with_retriable(retriable));
    }
    let completion: Completion = serde_json::from_slice(body).map_err(|err| {
        PluginError::new(
            INVALID_RESPONSE,
            format!("the answer is not a chat completion: {err}"),
        )
    })?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(PluginError::new(
            INVALID_RESPONSE,
            "the chat completion has no choices",
        ));
    };
    let thought = choice.message.content.filter(|c| !c.trim().is_empty());
    let call = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .next();
    let (action, thought) = match call {
        Some(call) => {
            if call.function.name.is_empty() {
                return Err(PluginError::new(
                    INVALID_RESPONSE,
                    "the answer's tool call names no function",
                ));
            }
            let call = ToolCall {
                id: call.id,
                tool: call.function.name,
                input: call.function.arguments,
            };
            (Action::Call(call), thought)
        }
        None => (Action::Finish(thought.clone().unwrap_or_default()), None),
    };
    Ok(Decision {
        action,
        model: completion.model.filter(|m| !m.is_empty()),
        thought,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_plugin_sdk::planner::{ModelEndpoint, Tool};

    fn task() -> Task {
        Task {
            task_id: "t1".into(),
            task_type: "code".into(),
            description: "Write hello.py and run it.".into(),
            tools: vec![Tool {
                name: "python_run".into(),
                description: "Runs Python code".into(),
                input_schema: r#"{"type":"object","properties":{"code":{"type":"string"}}}"#.into(),
            }],
            endpoint: ModelEndpoint {
                base_url: "https://api.example.com/v1/".into(),
                model: "gpt-test".into(),
                max_tokens: Some(256),
                temperature: Some(0.0),
            },
            max_steps: 5,
        }
    }

    fn step(id: &str) -> Step {
        Step {
            call: ToolCall {
                id: id.into(),
                tool: "python_run".into(),
                input: r#"{"code":"print(1)"}"#.into(),
            },
            observation: r#"{"exit_code":0,"stdout":"1\n"}"#.into(),
            success: true,
            thought: Some("Run it.".into()),
        }
    }

    #[test]
    fn the_request_carries_the_task_the_history_and_the_tools() {
        let body = request_body(&task(), &[step("call_a"), step("")]).unwrap();
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["max_tokens"], 256);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["tool_choice"], "auto");
        let messages = body["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "assistant", "tool"]
        );
        assert!(
            messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("at most 5 tool calls in all; 3 remain"),
            "{}",
            messages[0]
        );
        assert_eq!(messages[1]["content"], "Write hello.py and run it.");
        let call = &messages[2]["tool_calls"][0];
        assert_eq!(call["id"], "call_a");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "python_run");
        assert_eq!(call["function"]["arguments"], r#"{"code":"print(1)"}"#);
        assert_eq!(messages[2]["content"], "Run it.");
        assert_eq!(messages[3]["tool_call_id"], "call_a");
        assert_eq!(messages[3]["content"], r#"{"exit_code":0,"stdout":"1\n"}"#);
        // A call without an id gets a stable one, the same in both messages.
        assert_eq!(messages[4]["tool_calls"][0]["id"], "call_2");
        assert_eq!(messages[5]["tool_call_id"], "call_2");
        let tool = &body["tools"][0];
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["name"], "python_run");
        assert_eq!(tool["function"]["description"], "Runs Python code");
        assert_eq!(
            tool["function"]["parameters"]["properties"]["code"]["type"],
            "string"
        );
        assert_eq!(
            completions_url(&task().endpoint.base_url),
            "https://api.example.com/v1/chat/completions"
        );
    }

    #[test]
    fn without_tools_or_limits_the_request_leaves_them_out() {
        let mut bare = task();
        bare.tools.clear();
        bare.endpoint.max_tokens = None;
        bare.endpoint.temperature = None;
        let body = request_body(&bare, &[]).unwrap();
        for absent in ["tools", "tool_choice", "max_tokens", "temperature"] {
            assert!(body.get(absent).is_none(), "{absent}: {body}");
        }
        let mut broken = task();
        broken.tools[0].input_schema = "{not json".into();
        let err = request_body(&broken, &[]).unwrap_err();
        assert_eq!(err.code, INVALID_INPUT);
        assert!(err.message.contains("python_run"), "{}", err.message);
        let mut nameless = task();
        nameless.endpoint.model = " ".into();
        assert_eq!(
            request_body(&nameless, &[]).unwrap_err().code,
            INVALID_INPUT
        );
    }

    #[test]
    fn the_first_tool_call_is_the_next_action() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test-0613",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Writing the file.",
                "tool_calls": [
                    {"id": "call_x", "type": "function",
                     "function": {"name": "filesystem_write", "arguments": "{\"path\":\"a.py\"}"}},
                    {"id": "call_y", "type": "function",
                     "function": {"name": "python_run", "arguments": "{}"}}
                ]}}]
        });
        let decision = decide(200, answer.to_string().as_bytes()).unwrap();
        assert_eq!(decision.model.as_deref(), Some("gpt-test-0613"));
        assert_eq!(decision.thought.as_deref(), Some("Writing the file."));
        match decision.action {
            Action::Call(call) => {
                assert_eq!(call.id, "call_x");
                assert_eq!(call.tool, "filesystem_write");
                assert_eq!(call.input, r#"{"path":"a.py"}"#);
            }
            Action::Finish(text) => panic!("finished: {text}"),
        }
    }

    #[test]
    fn an_answer_without_a_tool_call_finishes_the_task() {
        let answer = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Done: it printed 42."}}]});
        let decision = decide(200, answer.to_string().as_bytes()).unwrap();
        assert_eq!(
            decision.action,
            Action::Finish("Done: it printed 42.".into())
        );
        assert_eq!(decision.thought, None);
        let empty =
            json!({"model": "m", "choices": [{"message": {"content": null, "tool_calls": []}}]});
        let decision = decide(200, empty.to_string().as_bytes()).unwrap();
        assert_eq!(decision.action, Action::Finish(String::new()));
    }

    #[test]
    fn failures_carry_the_status_and_the_upstreams_words() {
        let body = json!({"error": {"message": "Rate limit reached for gpt-test", "type": "requests", "code": "rate_limit_exceeded"}});
        let err = decide(429, body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code, ENDPOINT_ERROR);
        assert!(err.retriable);
        assert!(err.message.contains("HTTP 429"), "{}", err.message);
        assert!(
            err.message.contains("Rate limit reached"),
            "{}",
            err.message
        );
        let err = decide(
            401,
            br#"{"error": {"message": "Incorrect API key provided"}}"#,
        )
        .unwrap_err();
        assert!(!err.retriable);
        assert!(err.message.contains("Incorrect API key"), "{}", err.message);
        let err = decide(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(err.retriable);
        assert!(err.message.contains("bad gateway"), "{}", err.message);
        let long = "x".repeat(5000);
        assert!(decide(500, long.as_bytes()).unwrap_err().message.len() < 700);

        for bad in [
            &b"not json"[..],
            br#"{"choices": []}"#,
            br#"{"model": "m"}"#,
        ] {
            let err = decide(200, bad).unwrap_err();
            assert_eq!(
                err.code,
                INVALID_RESPONSE,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(!err.retriable);
        }
    }
}
