//! Batch tasks planned by the `llm` planner of `llm-planner-pack`, through the real binary:
//! the planner asks a mock OpenAI-compatible chat completions endpoint, runs the calls it is
//! told to in a Docker sandbox, and the trajectory, the exports and the mock's own record show
//! it; an endpoint whose host the pack does not declare, or the operator does not grant, is
//! never reached (also when a provider pack gives the endpoint); an endpoint's error, a
//! planner that never stops, and a call of a tool never offered are classed by what happened.
//!
//! The mock follows the OpenAI API reference for chat completions: a request
//! `{"model", "messages": [...], "tools": [{"type": "function", "function": {"name",
//! "description", "parameters"}}], "tool_choice"}`
//! (<https://platform.openai.com/docs/api-reference/chat/create>) is answered with a
//! `chat.completion` object `{"id", "object": "chat.completion", "created", "model",
//! "choices": [{"index", "message": {"role": "assistant", "content", "tool_calls": [{"id",
//! "type": "function", "function": {"name", "arguments"}}]}, "finish_reason"}], "usage"}`
//! (<https://platform.openai.com/docs/api-reference/chat/object>). Its turn is the number of
//! `tool` messages in the request (the planner keeps no state: each request carries the whole
//! conversation).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active, repo_root};

use crate::adapters::install_core;

/// The planner's endpoint key, given to the server through `WHARF_PLANNER_API_KEY`.
const PLANNER_KEY: &str = "sk-planner-test-6f1d2c9a8b7e";
/// The model the server is configured with; the mock answers as a more specific one.
const CONFIGURED_MODEL: &str = "gpt-test";
const ANSWERING_MODEL: &str = "gpt-test-2026-01-01";
/// What the script the mock has the planner write prints.
const SCRIPT: &str = "total = sum(range(1, 10))\nprint(f'sum is {total}')\n";
const SCRIPT_OUTPUT: &str = "sum is 45";

/// One request the mock received.
#[derive(Clone, Debug)]
struct Seen {
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn completion(message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-wharf-test",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": ANSWERING_MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    })
}

fn tool_call(id: &str, name: &str, arguments: Value) -> Value {
    completion(
        json!({
            "role": "assistant",
            "content": format!("Calling {name}."),
            "tool_calls": [{"id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments.to_string()}}],
        }),
        "tool_calls",
    )
}

/// `POST /v1/chat/completions`, by the task (the user message): "Write sum.py…" writes the
/// script, runs it, then says what it printed; "rate-limited" answers 429 with an OpenAI error
/// body; "loop" asks for the same call forever; "unknown tool" calls a tool never offered,
/// then gives up.
async fn chat_completions(
    State(mock): State<Mock>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    let body = body.0;
    mock.seen.lock().await.push(Seen {
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: body.clone(),
    });
    let turn = body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count());
    let task = body["messages"][1]["content"].as_str().unwrap_or_default();
    if task.starts_with("rate-limited") {
        let error = json!({"error": {"message": "Rate limit reached for gpt-test in organization org-test on requests per min (RPM): Limit 3, Used 3, Requested 1.",
                                      "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(error)).into_response();
    }
    if task.starts_with("loop") {
        return axum::Json(tool_call(
            &format!("call_{turn}"),
            "shell_run",
            json!({"command": "echo again"}),
        ))
        .into_response();
    }
    if task.starts_with("unknown tool") {
        return axum::Json(match turn {
            0 => tool_call("call_0", "teleport", json!({"to": "moon"})),
            _ => completion(
                json!({"role": "assistant", "content": "There is no such tool; giving up."}),
                "stop",
            ),
        })
        .into_response();
    }
    axum::Json(match turn {
        0 => tool_call(
            "call_write",
            "filesystem_write",
            json!({"path": "sum.py", "content": SCRIPT}),
        ),
        1 => tool_call(
            "call_run",
            "python_run",
            json!({"code": "import runpy\nrunpy.run_path('sum.py', run_name='__main__')"}),
        ),
        _ => completion(
            json!({"role": "assistant", "content": format!("The script printed: {SCRIPT_OUTPUT}.")}),
            "stop",
        ),
    })
    .into_response()
}

/// The mock on a loopback port; returns it and its `host:port`.
async fn start_mock() -> (Mock, String) {
    let mock = Mock::default();
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(chat_completions),
        )
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, authority)
}

/// `llm-planner-pack` built from a copy of its source whose `allowed_hosts` is `declared`
/// (the pack's own list when `None`).
fn build_planner_pack(work: &Path, declared: Option<&[&str]>) -> PathBuf {
    let source = repo_root().join("packs/llm-planner-pack");
    let mut manifest = std::fs::read_to_string(source.join("pack.toml")).unwrap();
    let crate_dir = repo_root().join("plugins/llm-planner");
    manifest = manifest.replace(
        "crate = \"../../plugins/llm-planner\"",
        &format!("crate = {:?}", crate_dir.to_str().unwrap()),
    );
    if let Some(hosts) = declared {
        let start = manifest.find("allowed_hosts = [").unwrap();
        let end = start + manifest[start..].find(']').unwrap() + 1;
        let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        manifest.replace_range(
            start..end,
            &format!("allowed_hosts = [{}]", list.join(", ")),
        );
    }
    let copy = work.join("llm-planner-pack-src");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(copy.join("pack.toml"), manifest).unwrap();
    let built = work.join("llm-planner-pack-built");
    build_pack(copy.to_str().unwrap(), &built);
    built
}

/// A server with `config`, the planner key in its environment, core-adapters and the planner
/// pack (allowed hosts `declared`) active.
async fn planner_server(
    config: &str,
    declared: Option<&[&str]>,
) -> (tempfile::TempDir, WharfProcess, Client) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("wharf.toml"), config).unwrap();
    let server = WharfProcess::start(root.path(), &[("WHARF_PLANNER_API_KEY", PLANNER_KEY)]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_core(&server, &admin).await;
    let built = build_planner_pack(root.path(), declared);
    install_pack_active(&admin, &built, &server.packs_dir, "llm-planner-pack").await;
    (root, server, admin)
}

fn config(authority: &str, profile: &str, grants: &[&str]) -> String {
    let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}")).collect();
    format!(
        r#"
[packs]
allow_private_http = true
http_grants = {{ "llm-planner-pack" = [{grants}] }}

[profiles.shell-only]
driver = "process"
capabilities = ["shell"]

[batches]
default_profile = "{profile}"
poll_interval_ms = 200

[batches.planner]
base_url = "http://{authority}/v1"
model = "{CONFIGURED_MODEL}"
max_tokens = 512
temperature = 0.0
"#,
        grants = grants.join(", ")
    )
}

/// Submits one `llm` task and waits for its batch to finish; returns the batch and its id.
async fn run_llm_task(admin: &Client) -> (Value, String) {
    let line = json!({
        "task_id": "sum", "task_type": "code", "planner": "llm", "max_steps": 4,
        "timeout": 120,
        "description": "Write sum.py that prints the sum of 1..9, run it, and say what it printed.",
    });
    run_llm_tasks(admin, &[line]).await
}

/// Submits `lines` and waits for their batch to finish; returns the batch and its id.
async fn run_llm_tasks(admin: &Client, lines: &[Value]) -> (Value, String) {
    let body: Vec<String> = lines.iter().map(Value::to_string).collect();
    let (status, batch) = admin
        .send(
            admin
                .request(Method::POST, "/v1/batches")
                .header("content-type", "application/x-ndjson")
                .body(body.join("\n")),
        )
        .await;
    assert_eq!(status, 201, "{batch}");
    let id = batch["batch_id"].as_str().unwrap().to_string();
    let batch = admin
        .wait_for(&format!("/v1/batches/{id}"), "the batch to finish", |b| {
            b["status"] == "finished"
        })
        .await;
    (batch, id)
}

async fn export(client: &Client, batch_id: &str, format: &str) -> Vec<Value> {
    let text = client
        .request(
            Method::GET,
            &format!("/v1/batches/{batch_id}/export?format={format}"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn an_llm_task_writes_and_runs_a_script_in_docker_as_the_model_says() {
    if !crate::sandboxes::docker_ready() {
        return;
    }
    let (mock, authority) = start_mock().await;
    let (_root, server, admin) = planner_server(
        &config(&authority, "docker", &[&authority]),
        Some(&["api.openai.com", &authority]),
    )
    .await;
    let (batch, batch_id) = run_llm_task(&admin).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");

    let trajectory = &export(&admin, &batch_id, "wharf").await[0];
    assert_eq!(trajectory["planner"], "llm", "{trajectory}");
    assert_eq!(trajectory["model"], ANSWERING_MODEL, "{trajectory}");
    assert_eq!(trajectory["profile"], "docker");
    assert!(
        trajectory["image_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{trajectory}"
    );
    assert!(
        trajectory["pack_versions"]["llm-planner-pack"].is_string(),
        "{trajectory}"
    );
    assert_eq!(
        trajectory["final_result"],
        format!("The script printed: {SCRIPT_OUTPUT}.")
    );
    let steps = trajectory["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{trajectory}");
    assert_eq!(steps[0]["action_type"], "tool_call");
    assert_eq!(steps[0]["tool"], "filesystem.write");
    assert_eq!(steps[0]["params"]["path"], "sum.py");
    assert_eq!(steps[1]["tool"], "python.run");
    assert_eq!(
        steps[0]["thought"], "Calling filesystem_write.",
        "the model's text"
    );
    assert!(steps.iter().all(|s| s["success"] == true), "{trajectory}");
    // The sandbox's own answers: the write's, then the script's output.
    let wrote: Value = serde_json::from_str(steps[0]["observation"].as_str().unwrap()).unwrap();
    assert!(wrote.to_string().contains("sum.py"), "{wrote}");
    let ran: Value = serde_json::from_str(steps[1]["observation"].as_str().unwrap()).unwrap();
    assert_eq!(ran["exit_code"], 0, "{ran}");
    assert!(
        ran["stdout"].as_str().unwrap().contains(SCRIPT_OUTPUT),
        "{ran}"
    );

    // What the mock saw: three requests, each with the configured key, the configured model
    // and the offered tools; the third carries the script's real output back to the model.
    let seen = mock.seen.lock().await.clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {PLANNER_KEY}").as_str())
        );
        assert_eq!(request.body["model"], CONFIGURED_MODEL);
        assert_eq!(request.body["max_tokens"], 512);
        assert_eq!(request.body["tool_choice"], "auto");
    }
    let offered: Vec<&str> = seen[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for name in ["filesystem_write", "python_run", "shell_run"] {
        assert!(offered.contains(&name), "{name} offered: {offered:?}");
    }
    let last = seen[2].body["messages"].as_array().unwrap();
    assert_eq!(last[1]["role"], "user");
    assert!(
        last[1]["content"]
            .as_str()
            .unwrap()
            .starts_with("Write sum.py")
    );
    let answer = last.last().unwrap();
    assert_eq!(answer["role"], "tool");
    assert_eq!(answer["tool_call_id"], "call_run");
    assert!(
        answer["content"].as_str().unwrap().contains(SCRIPT_OUTPUT),
        "{answer}"
    );

    // The messages export: the conversation with the schemas of the tools offered.
    let messages = &export(&admin, &batch_id, "messages").await[0];
    let roles: Vec<&str> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert_eq!(
        messages["messages"][1]["tool_calls"][0]["function"]["name"],
        "filesystem_write"
    );
    assert_eq!(
        messages["messages"][1]["content"],
        "Calling filesystem_write."
    );
    assert_eq!(
        messages["messages"][5]["content"],
        format!("The script printed: {SCRIPT_OUTPUT}.")
    );
    assert_eq!(messages["model"], ANSWERING_MODEL);
    let schemas = messages["tools"].as_array().unwrap();
    let write = schemas
        .iter()
        .find(|t| t["function"]["name"] == "filesystem_write")
        .unwrap_or_else(|| panic!("filesystem_write in {schemas:?}"));
    assert_eq!(write["type"], "function");
    assert_eq!(
        write["function"]["parameters"]["properties"]["content"]["type"], "string",
        "{write}"
    );
    assert_eq!(schemas.len(), offered.len(), "every offered tool's schema");

    let atif = &export(&admin, &batch_id, "atif").await[0];
    assert_eq!(atif["agent"]["model_name"], ANSWERING_MODEL, "{atif}");
    assert_eq!(atif["agent"]["name"], "wharf-llm");

    // The key never shows: not in the server's logs, the trajectory or the task's log.
    let (_, tasks) = admin.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let (_, log) = admin
        .get(&format!(
            "/v1/tasks/{}/logs",
            tasks[0]["id"].as_str().unwrap()
        ))
        .await;
    for text in [server.logs(), trajectory.to_string(), log.to_string()] {
        assert!(!text.contains(PLANNER_KEY), "the key leaked");
    }
    let (_, sandboxes) = admin.get("/v1/sandboxes").await;
    assert_eq!(sandboxes["items"], json!([]), "{sandboxes}");
}

/// Runs one `llm` task against the mock with the pack declaring `declared` and the operator
/// granting `granted`; the task must fail as `planner_error` naming the mock's origin, and the
/// mock must see nothing.
async fn refused(declared: &[&str], granted: &[&str], authority: &str, mock: &Mock) {
    let (_root, server, admin) =
        planner_server(&config(authority, "local", granted), Some(declared)).await;
    let (batch, batch_id) = run_llm_task(&admin).await;
    assert_eq!(batch["counts"]["failed"], 1, "{batch}");
    assert_eq!(
        batch["error_classes"],
        json!({"planner_error": 1}),
        "{batch}"
    );
    assert_eq!(batch["sides"]["task"], 1, "{batch}");
    let (_, tasks) = admin.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let task = &tasks[0];
    assert_eq!(task["error_class"], "planner_error", "{task}");
    assert_eq!(task["attempts"], 1, "not retried: {task}");
    let message = task["error_message"].as_str().unwrap();
    assert!(message.contains("http_refused"), "{message}");
    assert!(message.contains(authority), "names the origin: {message}");
    assert!(!message.contains(PLANNER_KEY));
    assert!(!server.logs().contains(PLANNER_KEY));
    assert!(
        mock.seen.lock().await.is_empty(),
        "the endpoint was reached: {:?}",
        mock.seen.lock().await
    );
}

#[tokio::test]
async fn a_planner_endpoint_the_pack_does_not_declare_or_the_operator_does_not_grant_is_never_reached()
 {
    let (mock, authority) = start_mock().await;
    // Granted by the operator, not declared by the pack.
    refused(&["api.openai.com"], &[&authority], &authority, &mock).await;
    // Declared by the pack, not granted by the operator.
    refused(
        &["api.openai.com", &authority],
        &["api.openai.com"],
        &authority,
        &mock,
    )
    .await;
}

#[tokio::test]
async fn endpoint_errors_step_bounds_and_unknown_tools_are_classed_from_what_happened() {
    let (mock, authority) = start_mock().await;
    let (_root, _server, admin) = planner_server(
        &config(&authority, "local", &[&authority]),
        Some(&[&authority]),
    )
    .await;
    let task = |id: &str, description: &str| {
        json!({"task_id": id, "task_type": "code", "planner": "llm", "max_steps": 2,
               "description": description})
    };
    let (batch, batch_id) = run_llm_tasks(
        &admin,
        &[
            task("limited", "rate-limited: anything"),
            {
                let mut looping = task("looping", "loop: echo until stopped");
                looping["profile"] = json!("shell-only");
                looping
            },
            task("lost", "unknown tool: go to the moon"),
        ],
    )
    .await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(
        batch["error_classes"],
        json!({"planner_error": 1, "max_steps_exceeded": 1}),
        "{batch}"
    );
    let trajectories = export(&admin, &batch_id, "wharf").await;
    let by_id = |id: &str| {
        trajectories
            .iter()
            .find(|t| t["task_id"] == id)
            .unwrap()
            .clone()
    };

    // The endpoint's 429: the task's planner error, with the status and the upstream's words,
    // not retried.
    let limited = by_id("limited");
    assert_eq!(limited["error_class"], "planner_error", "{limited}");
    assert_eq!(limited["side"], "task");
    assert_eq!(limited["attempts"], 1);
    let message = limited["error_message"].as_str().unwrap();
    assert!(message.contains("endpoint_error"), "{message}");
    assert!(message.contains("HTTP 429"), "{message}");
    assert!(
        message.contains("Rate limit reached for gpt-test"),
        "{message}"
    );
    assert_eq!(limited["steps"], json!([]));

    // Two calls ran (max_steps = 2); the third the planner asked for ended the task.
    let looping = by_id("looping");
    assert_eq!(looping["error_class"], "max_steps_exceeded", "{looping}");
    let steps = looping["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{looping}");
    assert!(
        steps
            .iter()
            .all(|s| s["success"] == true && s["tool"] == "shell.run")
    );
    assert!(
        looping["error_message"]
            .as_str()
            .unwrap()
            .contains("call 3 (shell_run)"),
        "{looping}"
    );

    // A tool never offered is a failed step the planner sees; it then finishes.
    let lost = by_id("lost");
    assert_eq!(lost["success"], true, "{lost}");
    assert_eq!(lost["final_result"], "There is no such tool; giving up.");
    let step = &lost["steps"][0];
    assert_eq!(step["success"], false, "{lost}");
    assert_eq!(step["error_class"], "capability_error");
    assert_eq!(step["tool"], "teleport");
    assert!(
        step["observation"]
            .as_str()
            .unwrap()
            .contains("unknown_tool"),
        "{step}"
    );
    let seen = mock.seen.lock().await.clone();
    // Only what the task's profile allows is offered: `shell` for the looping task.
    let asked = |prefix: &str| {
        seen.iter()
            .find(|r| {
                r.body["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with(prefix)
            })
            .unwrap()
            .body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let shell_only = asked("loop");
    assert!(!shell_only.is_empty());
    assert!(
        shell_only.iter().all(|n| n.starts_with("shell_")),
        "{shell_only:?}"
    );
    assert!(asked("unknown tool").contains(&"python_run".to_string()));
    let told = seen
        .iter()
        .find(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .starts_with("unknown tool")
                && r.body["messages"].as_array().unwrap().len() > 2
        })
        .expect("the planner asked again after the failed call");
    let answer = told.body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(answer["role"], "tool");
    assert!(
        answer["content"].as_str().unwrap().contains("unknown_tool"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_planner_endpoint_from_a_provider_pack_takes_its_base_url_and_is_still_refused_ungranted()
{
    // `[batches.planner] provider`: the base URL comes from openai-cn-pack's catalog
    // (`openai-compatible`: https://api.openai.com/v1). The pack declares that host; the
    // operator grants nothing, so no request leaves the server.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        format!(
            "[batches]\npoll_interval_ms = 200\n\n[batches.planner]\nprovider = \"openai-compatible\"\nmodel = \"{CONFIGURED_MODEL}\"\n"
        ),
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[("WHARF_PLANNER_API_KEY", PLANNER_KEY)]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_core(&server, &admin).await;
    let built = root.path().join("built-openai-cn-pack");
    build_pack("packs/openai-cn-pack", &built);
    install_pack_active(&admin, &built, &server.packs_dir, "openai-cn-pack").await;
    let built = build_planner_pack(root.path(), None);
    install_pack_active(&admin, &built, &server.packs_dir, "llm-planner-pack").await;
    let (batch, batch_id) = run_llm_task(&admin).await;
    assert_eq!(
        batch["error_classes"],
        json!({"planner_error": 1}),
        "{batch}"
    );
    let trajectory = &export(&admin, &batch_id, "wharf").await[0];
    let message = trajectory["error_message"].as_str().unwrap();
    assert!(message.contains("http_refused"), "{message}");
    assert!(
        message.contains("https://api.openai.com/v1/chat/completions"),
        "{message}"
    );
    assert_eq!(trajectory["model"], CONFIGURED_MODEL, "{trajectory}");
    assert!(!server.logs().contains(PLANNER_KEY));
}
