//! MCP at `/mcp` through the real binary: the official `mcp` Python client (PyPI) lists the
//! tools, creates a sandbox and runs python on the Docker driver, and sees the list change
//! when a new pack version is dropped; a key scoped to `filesystem.read` sees and calls only
//! that; a call that waits for an approver answers the approval to poll, and runs once
//! approved; a session id is refused to any key but the one that opened it; the session limits
//! and the idle timeout.
//!
//! The client runs with `WHARF_MCP_PYTHON` (a Python with `mcp` installed; `scripts/test`
//! sets it from `scripts/install-mcp-client`). Without it the client tests skip, except
//! when `CI=true`, where they fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, repo_root};

use crate::adapters::{docker_adapters_server, install_core};
use crate::sandboxes::docker_server_with;

/// The built-in tools every key with an unlimited scope sees.
const BUILTIN_TOOLS: [&str; 7] = [
    "sandbox_create",
    "sandbox_exec",
    "sandbox_file_read",
    "sandbox_file_write",
    "sandbox_file_list",
    "sandbox_destroy",
    "approval_wait",
];

/// The Python that has the `mcp` package: `WHARF_MCP_PYTHON`. `None` (a skip) only
/// outside CI.
fn mcp_python() -> Option<PathBuf> {
    let configured = std::env::var_os("WHARF_MCP_PYTHON")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    let why = match &configured {
        Some(path) if path.is_file() => return configured,
        Some(path) => format!("WHARF_MCP_PYTHON={} does not exist", path.display()),
        None => "no WHARF_MCP_PYTHON (scripts/test sets it from scripts/install-mcp-client)".into(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the MCP client test is required in CI: {why}");
    }
    eprintln!("skipping the MCP client test: {why}");
    None
}

/// A run of `mcp_client.py`, read line by line.
struct McpClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl McpClient {
    fn start(python: &Path, server: &WharfProcess, key: &str, scenario: &[&str]) -> McpClient {
        let mut child = tokio::process::Command::new(python)
            .arg(repo_root().join("tests/system/mcp_client.py"))
            .arg(server.url("/mcp"))
            .arg(key)
            .args(scenario)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the MCP client starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        McpClient { child, lines }
    }

    /// The next line, which must be the event `event`.
    async fn expect(&mut self, event: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{event}` from the MCP client within 120 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("the MCP client ended before `{event}`"));
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        assert_eq!(value["event"], event, "{value}");
        value
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn finish(mut self) {
        self.expect("done").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the MCP client exits")
            .unwrap();
        assert!(status.success(), "the MCP client failed: {status}");
    }
}

/// A new key of `owner` with `scope` fields, and its secret.
async fn key(admin: &Client, owner: &str, scope: Value) -> String {
    let mut body = json!({ "owner": owner });
    body.as_object_mut()
        .unwrap()
        .extend(scope.as_object().unwrap().clone());
    let (status, created) = admin.post("/v1/keys", body).await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_string()
}

fn names(tools: &Value) -> BTreeSet<String> {
    tools
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| match tool {
            Value::String(name) => name.clone(),
            tool => tool["name"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// `core-adapters` as a new version without its git adapter: a copy of the built pack
/// with the version bumped and the git component cut out of its manifest.
fn core_adapters_without_git(built: &Path, out: &Path, version: &str) {
    wharf_e2e::copy_dir(built, out);
    let manifest = std::fs::read_to_string(out.join("pack.toml")).unwrap();
    let mut blocks = manifest.split("[[components]]");
    let head = blocks.next().unwrap();
    let current = head
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .expect("a version line")
        .trim_end_matches('"');
    let mut next = head.replace(
        &format!("version = \"{current}\""),
        &format!("version = \"{version}\""),
    );
    for block in blocks {
        if !block.contains("name = \"git\"") {
            next.push_str("[[components]]");
            next.push_str(block);
        }
    }
    assert!(
        next.contains(version) && !next.contains("name = \"git\""),
        "{next}"
    );
    std::fs::write(out.join("pack.toml"), next).unwrap();
    std::fs::remove_file(out.join("components/git.wasm")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_runs_python_in_a_docker_sandbox_and_sees_the_tools_change_on_a_pack_drop() {
    let Some(python) = mcp_python() else {
        return;
    };
    let Some((_root, server, admin)) = docker_adapters_server().await else {
        return;
    };
    let alice = key(&admin, "alice", json!({})).await;
    let mut client = McpClient::start(&python, &server, &alice, &["agent", "docker"]);

    let initialized = client.expect("initialized").await;
    assert_eq!(initialized["server"], "wharf", "{initialized}");
    assert_eq!(initialized["list_changed"], true, "{initialized}");

    let listed = client.expect("tools").await;
    let tools = listed["tools"].as_array().unwrap();
    let listed_names = names(&listed["tools"]);
    for name in BUILTIN_TOOLS.iter().chain(&[
        "python_run",
        "shell_run",
        "filesystem_read",
        "filesystem_search",
        "git_clone",
        "git_log",
    ]) {
        assert!(
            listed_names.contains(*name),
            "{name} missing: {listed_names:?}"
        );
    }
    // Each adapter tool carries its operation's input schema from the pack, and its hints.
    let (_, pack) = admin.get("/v1/packs/core-adapters").await;
    let operation = |capability: &str, name: &str| -> Value {
        pack["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["adapter"].as_object())
            .filter(|a| a["capability"] == capability)
            .flat_map(|a| a["operations"].as_array().unwrap().clone())
            .find(|op| op["name"] == name)
            .unwrap_or_else(|| panic!("{capability}.{name} in {pack}"))
    };
    let tool = |name: &str| tools.iter().find(|t| t["name"] == name).unwrap().clone();
    let python_run = tool("python_run");
    assert_eq!(
        python_run["inputSchema"]["properties"]["input"],
        operation("python", "run")["input_schema"],
        "{python_run}"
    );
    assert_eq!(
        python_run["inputSchema"]["required"],
        json!(["sandbox_id", "input"])
    );
    // The operation's hints become the tool's annotations, for every adapter tool.
    for (capability, operation_name) in [
        ("python", "run"),
        ("shell", "run"),
        ("filesystem", "read"),
        ("filesystem", "delete"),
        ("git", "log"),
    ] {
        let hints = &operation(capability, operation_name)["hints"];
        let annotations = &tool(&format!("{capability}_{operation_name}"))["annotations"];
        assert_eq!(
            annotations["readOnlyHint"], hints["read_only"],
            "{annotations} {hints}"
        );
        assert_eq!(
            annotations["destructiveHint"], hints["destructive"],
            "{annotations} {hints}"
        );
        assert_eq!(
            annotations["idempotentHint"], hints["idempotent"],
            "{annotations} {hints}"
        );
    }
    // The first-party adapters declare their hints: reads are read-only, a shell is not.
    assert_eq!(tool("filesystem_read")["annotations"]["readOnlyHint"], true);
    assert_eq!(tool("git_log")["annotations"]["readOnlyHint"], true);
    assert_eq!(tool("shell_run")["annotations"]["readOnlyHint"], false);
    let read = tool("sandbox_file_read");
    assert_eq!(read["annotations"]["readOnlyHint"], true, "{read}");
    let exec = tool("sandbox_exec");
    assert_eq!(exec["annotations"]["destructiveHint"], true, "{exec}");

    let created = client.expect("created").await;
    assert_eq!(created["result"]["is_error"], false, "{created}");
    let sandbox = created["result"]["structured"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["result"]["structured"]["profile"], "docker");
    // The sandbox is alice's, as if created over REST.
    let alice_rest = Client::new(&server, Some(&alice));
    let (status, record) = alice_rest.get(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(status, 200, "{record}");

    let run = client.expect("python_run").await;
    assert_eq!(run["result"]["is_error"], false, "{run}");
    let outcome = &run["result"]["structured"];
    assert_eq!(
        outcome["output"]["result"],
        json!({"answer": 3628807}),
        "{run}"
    );
    assert_eq!(outcome["pack"], "core-adapters");
    let first_version = outcome["version"].as_str().unwrap().to_string();

    // The call went through the capability path: audited under alice's key.
    let (_, audit) = alice_rest
        .get(&format!("/v1/audit?sandbox={sandbox}"))
        .await;
    let audited = audit["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .any(|row| {
            row["capability"] == "python" && row["operation"] == "run" && row["outcome"] == "ok"
        });
    assert!(audited, "{audit}");

    client.expect("ready_for_drop").await;
    let built = server.data_dir.with_file_name("built-core-adapters");
    let next = server.data_dir.with_file_name("built-core-adapters-next");
    core_adapters_without_git(&built, &next, "9.0.0");
    wharf_e2e::install_pack(&next, &server.packs_dir, "core-adapters-9.0.0");
    client.send("dropped").await;

    client.expect("list_changed").await;
    let after = names(&client.expect("tools_after").await["tools"]);
    assert!(after.contains("python_run"), "{after:?}");
    assert!(
        !after.iter().any(|name| name.starts_with("git_")),
        "the git tools left with the git adapter: {after:?}"
    );
    let run = client.expect("python_run_after").await;
    assert_eq!(run["result"]["structured"]["output"]["result"], 42, "{run}");
    assert_eq!(run["result"]["structured"]["version"], "9.0.0", "{run}");
    assert_ne!(first_version, "9.0.0");
    client.finish().await;
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(
        status, 404,
        "another owner's sandbox stays hidden from the admin's owner"
    );
    let (status, _) = alice_rest.delete(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scoped_to_filesystem_read_sees_and_calls_only_that_over_mcp() {
    let Some(python) = mcp_python() else {
        return;
    };
    let Some((_root, server, admin)) = docker_adapters_server().await else {
        return;
    };
    let full = Client::new(&server, Some(&key(&admin, "bob", json!({})).await));
    let read_only = key(
        &admin,
        "bob",
        json!({ "capabilities": ["filesystem.read"], "profiles": ["docker"] }),
    )
    .await;
    let (status, created) = full
        .post("/v1/sandboxes", json!({ "profile": "docker" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let sandbox = created["id"].as_str().unwrap().to_string();
    let response = full
        .request(
            Method::PUT,
            &format!("/v1/sandboxes/{sandbox}/files/notes.txt"),
        )
        .body("read me")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    let mut client = McpClient::start(&python, &server, &read_only, &["scoped", &sandbox]);
    client.expect("initialized").await;
    // Only the lifecycle tools (every key may create and delete its sandboxes, as over
    // REST, within its profiles) and the one operation of its scope.
    let listed = names(&client.expect("tools").await["tools"]);
    assert_eq!(
        listed,
        BTreeSet::from(
            [
                "sandbox_create",
                "sandbox_destroy",
                "approval_wait",
                "filesystem_read"
            ]
            .map(String::from)
        ),
    );
    let called = client.expect("called").await;
    assert_eq!(called["tool"], "filesystem_read");
    assert_eq!(called["result"]["is_error"], false, "{called}");
    assert_eq!(
        called["result"]["structured"]["output"]["content"], "read me",
        "{called}"
    );
    for refused in ["shell_run", "sandbox_exec", "sandbox_file_write"] {
        let called = client.expect("called").await;
        assert_eq!(called["tool"], refused);
        assert_eq!(called["result"]["is_error"], true, "{called}");
        assert_eq!(
            called["result"]["structured"]["error"]["code"], "forbidden",
            "{called}"
        );
    }
    client.finish().await;
    // Nothing the refused calls would have written exists.
    let response = full
        .request(
            Method::GET,
            &format!("/v1/sandboxes/{sandbox}/files/escaped"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let (status, _) = full.delete(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_that_waits_for_an_approver_answers_the_approval_and_runs_once_approved() {
    let Some(python) = mcp_python() else {
        return;
    };
    let config = "[profiles.guarded]\ndriver = \"docker\"\n\n[profiles.guarded.operations.\"shell.run\"]\napproval = \"required\"\n";
    let Some((_root, server, admin)) = docker_server_with(config) else {
        return;
    };
    install_core(&server, &admin).await;
    let dave = key(&admin, "dave", json!({})).await;
    let approver = Client::new(
        &server,
        Some(&key(&admin, "dave", json!({ "roles": ["approver"] })).await),
    );
    let dave_rest = Client::new(&server, Some(&dave));
    let (status, created) = dave_rest
        .post("/v1/sandboxes", json!({ "profile": "guarded" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let sandbox = created["id"].as_str().unwrap().to_string();

    let mut client = McpClient::start(&python, &server, &dave, &["approval", &sandbox]);
    client.expect("initialized").await;
    let called = client.expect("called").await;
    let pending = client.expect("still_pending").await;
    assert_eq!(
        pending["result"]["structured"]["status"], "pending",
        "{pending}"
    );
    // Not an error: the approval, and how to follow it.
    let result = &called["result"];
    assert_eq!(result["is_error"], false, "{called}");
    assert_eq!(
        result["structured"]["status"], "pending_approval",
        "{called}"
    );
    let approval = &result["structured"]["approval"];
    assert_eq!(approval["status"], "pending", "{called}");
    assert_eq!(approval["capability"], "shell");
    let id = approval["id"].as_str().unwrap();
    let poll = result["structured"]["poll"]["path"].as_str().unwrap();
    assert_eq!(poll, format!("/v1/approvals/{id}?wait=30"));
    assert!(
        result["text"][0].as_str().unwrap().contains(poll),
        "{called}"
    );
    let log = format!("/v1/sandboxes/{sandbox}/files/approved.log");
    let response = dave_rest.request(Method::GET, &log).send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        404,
        "nothing ran before the approval"
    );

    let (status, decided) = approver
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{decided}");
    // The MCP client follows it with approval_wait; another id is not found.
    client.send("approved").await;
    let waited = client.expect("waited").await;
    assert_eq!(
        waited["result"]["structured"]["status"], "succeeded",
        "{waited}"
    );
    let forged = client.expect("forged").await;
    assert_eq!(forged["result"]["is_error"], true, "{forged}");
    assert_eq!(
        forged["result"]["structured"]["error"]["code"], "not_found",
        "{forged}"
    );
    client.finish().await;
    let (status, done) = dave_rest.get(poll).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    let response = dave_rest.request(Method::GET, &log).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ran\n", "it ran once");
    let (status, _) = dave_rest.delete(&format!("/v1/sandboxes/{sandbox}")).await;
    assert_eq!(status, 204);
}

/// A raw streamable-HTTP POST to `/mcp`.
async fn post_mcp(
    server: &WharfProcess,
    key: Option<&str>,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request.send().await.unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "wharf-system-test", "version": "0"}}})
}

/// Opens a session with `key`: its id.
async fn open_session(server: &WharfProcess, key: &str) -> String {
    let response = post_mcp(server, Some(key), None, initialize()).await;
    assert_eq!(response.status().as_u16(), 200);
    let id = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = post_mcp(server, Some(key), Some(&id), initialized).await;
    assert_eq!(response.status().as_u16(), 202);
    id
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn an_mcp_session_answers_only_the_key_that_opened_it_within_the_session_limits() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        "[mcp]\nmax_sessions = 3\nmax_sessions_per_key = 2\n",
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let carol = key(&admin, "carol", json!({})).await;
    let carol_too = key(&admin, "carol", json!({})).await;
    let mallory = key(&admin, "mallory", json!({})).await;

    // The same keys as the REST API.
    let (status, code) = error_code(post_mcp(&server, None, None, initialize()).await).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let (status, code) =
        error_code(post_mcp(&server, Some("wk_not_a_key"), None, initialize()).await).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));

    let session = open_session(&server, &carol).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let response = post_mcp(&server, Some(&carol), Some(&session), list.clone()).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("sandbox_create"));
    // Another key, of the same owner or another, cannot use the session.
    for other in [&carol_too, &mallory] {
        let response = post_mcp(&server, Some(other), Some(&session), list.clone()).await;
        let (status, code) = error_code(response).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"));
    }
    let stream = reqwest::Client::new()
        .get(server.url("/mcp"))
        .bearer_auth(&mallory)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(stream).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));

    // Limits: two sessions a key, three in all.
    open_session(&server, &carol).await;
    let (status, code) =
        error_code(post_mcp(&server, Some(&carol), None, initialize()).await).await;
    assert_eq!((status, code.as_str()), (503, "mcp_session_limit"));
    open_session(&server, &mallory).await;
    let (status, code) =
        error_code(post_mcp(&server, Some(&carol_too), None, initialize()).await).await;
    assert_eq!((status, code.as_str()), (503, "mcp_session_limit"));
    // Closing one frees its slot.
    let closed = reqwest::Client::new()
        .delete(server.url("/mcp"))
        .bearer_auth(&carol)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    open_session(&server, &carol_too).await;
}

#[tokio::test]
async fn an_idle_mcp_session_closes_and_frees_its_slot() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        "[mcp]\nmax_sessions_per_key = 1\nsession_idle_secs = 1\n",
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let erin = key(&admin, "erin", json!({})).await;
    let idle = open_session(&server, &erin).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let response = post_mcp(&server, Some(&erin), Some(&idle), list).await;
    assert_eq!(
        response.status().as_u16(),
        404,
        "an idled-out session is gone"
    );
    open_session(&server, &erin).await;
}
