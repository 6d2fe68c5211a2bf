//! The first-party adapters of `core-adapters` (python, filesystem, git)
//! through the real binary over HTTP, on the Docker driver and on the
//! process driver: the same suite runs on both.
//!
//! The Docker tests are skipped without a Docker engine and the base image,
//! except under `CI=true`, where they fail.

use std::collections::HashSet;

use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

use crate::sandboxes::{create, docker_server_with, exec};

/// Files of the search test, each with one matching line.
const SEARCH_FILES: usize = 1000;

/// Builds `core-adapters` beside the server's data dir and installs it in
/// its packs dir.
pub(crate) async fn install_core(server: &WharfProcess, admin: &Client) {
    let built = server.data_dir.with_file_name("built-core-adapters");
    build_pack("packs/core-adapters", &built);
    install_pack_active(admin, &built, &server.packs_dir, "core-adapters").await;
}

/// A server with `core-adapters` and the Docker driver; `None` when Docker
/// tests are skipped (never under `CI=true`).
pub(crate) async fn docker_adapters_server() -> Option<(tempfile::TempDir, WharfProcess, Client)> {
    let (root, server, admin) = docker_server_with("")?;
    install_core(&server, &admin).await;
    Some((root, server, admin))
}

async fn process_adapters_server() -> (tempfile::TempDir, WharfProcess, Client) {
    let root = tempfile::tempdir().unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_core(&server, &admin).await;
    (root, server, admin)
}

/// `POST /v1/sandboxes/{id}/capabilities/{capability}/{operation}`: status and answer.
pub(crate) async fn call(
    client: &Client,
    id: &str,
    capability: &str,
    operation: &str,
    input: Value,
) -> (u16, Value) {
    client
        .post(
            &format!("/v1/sandboxes/{id}/capabilities/{capability}/{operation}"),
            input,
        )
        .await
}

/// A call that must succeed; returns its `output`.
pub(crate) async fn ok(
    client: &Client,
    id: &str,
    capability: &str,
    operation: &str,
    input: Value,
) -> Value {
    let (status, answer) = call(client, id, capability, operation, input.clone()).await;
    assert_eq!(status, 200, "{capability}.{operation} {input}: {answer}");
    assert!(
        answer["sandbox_ms"].as_f64().unwrap() <= answer["duration_ms"].as_f64().unwrap(),
        "{answer}"
    );
    answer["output"].clone()
}

/// A call that must fail with `status` and `code`; returns the error.
pub(crate) async fn refused(
    client: &Client,
    id: &str,
    (capability, operation): (&str, &str),
    input: Value,
    status: u16,
    code: &str,
) -> Value {
    let (got, answer) = call(client, id, capability, operation, input.clone()).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (status, Some(code)),
        "{capability}.{operation} {input}: {answer}"
    );
    answer["error"].clone()
}

/// python.run: a computed `result`, output, an exception, a compile error
/// with its line, a timeout, and a `result` that print cannot forge.
async fn python_suite(client: &Client, id: &str) {
    let code = "import statistics\nprint('computing')\nresult = {'sum': sum(range(101)), 'ratio': statistics.mean([2, 3]), 'items': [1, 'two', None]}\n";
    let out = ok(client, id, "python", "run", json!({"code": code})).await;
    assert_eq!(
        out["result"],
        json!({"sum": 5050, "ratio": 2.5, "items": [1, "two", null]}),
        "{out}"
    );
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("computing\n")),
        "{out}"
    );

    // Printing something that looks like a result is only output.
    let out = ok(
        client,
        id,
        "python",
        "run",
        json!({"code": "print('{\"result\": 666}')\nimport sys\nprint(sys.stdin.read().upper())", "stdin": "hello"}),
    )
    .await;
    assert_eq!(out["result"], Value::Null, "{out}");
    assert_eq!(out["stdout"], "{\"result\": 666}\nHELLO\n", "{out}");

    // An exception is the code's failure, not the adapter's.
    let out = ok(
        client,
        id,
        "python",
        "run",
        json!({"code": "result = 1\nx = [1]\nprint(x[5])\n"}),
    )
    .await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert_eq!(
        out["exception"],
        json!({"type": "IndexError", "message": "list index out of range", "line": 3}),
        "{out}"
    );
    assert!(
        out["stderr"].as_str().unwrap().contains("Traceback"),
        "{out}"
    );
    assert_eq!(out["result"], 1, "{out}");

    // A syntax error: nothing ran, and the error names its line.
    let error = refused(
        client,
        id,
        ("python", "run"),
        json!({"code": "x = 1\ny = 2\nif x == 1\n    print('never')\n"}),
        422,
        "compile_error",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("SyntaxError at line 3"),
        "the line is named: {message}"
    );

    // Past its time limit: `timeout`.
    refused(
        client,
        id,
        ("python", "run"),
        json!({"code": "while True:\n    pass\n", "timeout_ms": 1000}),
        504,
        "timeout",
    )
    .await;

    // No report file is left behind.
    let listed = ok(client, id, "filesystem", "list", json!({})).await;
    assert!(
        !listed.to_string().contains(".wharf-python-"),
        "report files are removed: {listed}"
    );
}

/// filesystem.*: write, read, list, glob, search across 1,000 files (the
/// right count, truncation at the limit), delete, and `file_not_found`.
async fn filesystem_suite(client: &Client, id: &str) {
    let out = ok(
        client,
        id,
        "filesystem",
        "write",
        json!({"path": "notes/today.txt", "content": "héllo\nworld\n", "create_dirs": true}),
    )
    .await;
    assert_eq!(out["bytes"], 13, "{out}");
    let out = ok(
        client,
        id,
        "filesystem",
        "read",
        json!({"path": "notes/today.txt"}),
    )
    .await;
    assert_eq!(
        (
            out["content"].as_str(),
            out["encoding"].as_str(),
            out["size"].as_u64(),
            out["truncated"].as_bool()
        ),
        (Some("héllo\nworld\n"), Some("text"), Some(13), Some(false)),
        "{out}"
    );
    // A range cut inside `é` keeps whole characters and says there is more.
    let out = ok(
        client,
        id,
        "filesystem",
        "read",
        json!({"path": "notes/today.txt", "max_bytes": 2}),
    )
    .await;
    assert_eq!(
        (
            out["content"].as_str(),
            out["bytes"].as_u64(),
            out["truncated"].as_bool()
        ),
        (Some("h"), Some(1), Some(true)),
        "{out}"
    );
    ok(
        client,
        id,
        "filesystem",
        "write",
        json!({"path": "notes/blob.bin", "content": "AP8A/w==", "encoding": "base64"}),
    )
    .await;
    let out = ok(
        client,
        id,
        "filesystem",
        "read",
        json!({"path": "notes/blob.bin"}),
    )
    .await;
    assert_eq!(
        (out["content"].as_str(), out["encoding"].as_str()),
        (Some("AP8A/w=="), Some("base64")),
        "{out}"
    );
    refused(
        client,
        id,
        ("filesystem", "read"),
        json!({"path": "notes/missing.txt"}),
        404,
        "file_not_found",
    )
    .await;
    refused(
        client,
        id,
        ("filesystem", "read"),
        json!({"path": "../outside"}),
        400,
        "invalid_path",
    )
    .await;
    refused(
        client,
        id,
        ("filesystem", "write"),
        json!({"path": "no/such/dir/x.txt", "content": ""}),
        404,
        "file_not_found",
    )
    .await;

    // 1,000 files in 10 directories, each with one matching line.
    let out = exec(
        client,
        id,
        json!({"command": format!(
            "for i in $(seq 1 {SEARCH_FILES}); do d=tree/d$((i % 10)); mkdir -p $d; printf 'alpha\\nNeedle %s here\\nomega\\n' $i > $d/f$i.txt; done; mkdir -p tree/.git; echo 'Needle in git' > tree/.git/x"
        ), "timeout_ms": 120000}),
    )
    .await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let out = ok(
        client,
        id,
        "filesystem",
        "search",
        json!({"query": "Needle", "path": "tree", "limit": 5000}),
    )
    .await;
    let matches = out["matches"].as_array().unwrap();
    assert_eq!(
        (out["count"].as_u64(), out["truncated"].as_bool()),
        (Some(SEARCH_FILES as u64), Some(false)),
        "every file counted once, .git left out"
    );
    let paths: HashSet<&str> = matches
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), SEARCH_FILES);
    assert!(
        paths.contains("tree/d7/f7.txt"),
        "paths are workspace-relative"
    );
    assert!(
        matches
            .iter()
            .all(|m| m["line"] == 2 && m["text"].as_str().unwrap().starts_with("Needle ")),
        "{}",
        matches[0]
    );
    let out = ok(
        client,
        id,
        "filesystem",
        "search",
        json!({"query": "needle", "path": "tree", "limit": 10}),
    )
    .await;
    assert_eq!(out["count"], 0, "substring search is case-sensitive: {out}");
    let out = ok(
        client,
        id,
        "filesystem",
        "search",
        json!({"query": "needle", "ignore_case": true, "path": "tree", "limit": 10}),
    )
    .await;
    assert_eq!(
        (out["count"].as_u64(), out["truncated"].as_bool()),
        (Some(10), Some(true)),
        "{out}"
    );
    let out = ok(
        client,
        id,
        "filesystem",
        "search",
        json!({"query": "^Needle [0-9]*5 here$", "regex": true, "include": "*.txt", "limit": 1000}),
    )
    .await;
    assert_eq!(
        (out["count"].as_u64(), out["truncated"].as_bool()),
        (Some(100), Some(false)),
        "numbers ending in 5: {}",
        out["count"]
    );
    refused(
        client,
        id,
        ("filesystem", "search"),
        json!({"query": "(unclosed", "regex": true}),
        400,
        "validation_error",
    )
    .await;

    let out = ok(
        client,
        id,
        "filesystem",
        "glob",
        json!({"pattern": "**/f1?.txt", "path": "tree"}),
    )
    .await;
    let found: Vec<&str> = out["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), 10, "f10..f19: {out}");
    assert!(found.contains(&"tree/d3/f13.txt"), "{out}");
    let out = ok(
        client,
        id,
        "filesystem",
        "glob",
        json!({"pattern": "tree/*/*.txt", "limit": 50}),
    )
    .await;
    assert_eq!(
        (
            out["matches"].as_array().unwrap().len(),
            out["truncated"].as_bool()
        ),
        (50, Some(true)),
        "{out}"
    );
    let out = ok(
        client,
        id,
        "filesystem",
        "list",
        json!({"path": "tree", "limit": 5}),
    )
    .await;
    assert_eq!(
        (
            out["total"].as_u64(),
            out["truncated"].as_bool(),
            out["entries"][0]["name"].as_str()
        ),
        (Some(11), Some(true), Some(".git")),
        "{out}"
    );
    assert_eq!(out["entries"][1]["kind"], "directory", "{out}");

    refused(
        client,
        id,
        ("filesystem", "delete"),
        json!({"path": "tree"}),
        409,
        "conflict",
    )
    .await;
    ok(
        client,
        id,
        "filesystem",
        "delete",
        json!({"path": "tree", "recursive": true}),
    )
    .await;
    refused(
        client,
        id,
        ("filesystem", "list"),
        json!({"path": "tree"}),
        404,
        "file_not_found",
    )
    .await;
}

/// git.*: clone a bare repository made inside the workspace (sandboxes see
/// no host path), then change, status, diff, commit with the default
/// author, and log.
async fn git_suite(client: &Client, id: &str) {
    let setup = "set -e
git init -q --bare -b main origin.git
git init -q -b main seed
cd seed
echo 'first line' > README.md
git add README.md
git -c user.name=Seeder -c user.email=seed@example.com commit -q -m 'Initial commit'
git push -q ../origin.git main";
    let out = exec(client, id, json!({"command": setup})).await;
    assert_eq!(out["exit_code"], 0, "{out}");

    let cloned = ok(
        client,
        id,
        "git",
        "clone",
        json!({"url": "origin.git", "path": "work"}),
    )
    .await;
    assert_eq!(cloned["path"], "work");
    assert_eq!(cloned["branch"], "main", "{cloned}");
    let first = cloned["head"].as_str().unwrap().to_string();
    assert_eq!(first.len(), 40, "{cloned}");

    let status = ok(client, id, "git", "status", json!({"path": "work"})).await;
    assert_eq!(
        (
            status["clean"].as_bool(),
            status["upstream"].as_str(),
            status["ahead"].as_u64()
        ),
        (Some(true), Some("origin/main"), Some(0)),
        "{status}"
    );

    ok(
        client,
        id,
        "filesystem",
        "write",
        json!({"path": "work/README.md", "content": "first line\nsecond line\n"}),
    )
    .await;
    ok(
        client,
        id,
        "filesystem",
        "write",
        json!({"path": "work/src/new.py", "content": "print('new')\n", "create_dirs": true}),
    )
    .await;
    let status = ok(client, id, "git", "status", json!({"path": "work"})).await;
    assert_eq!(status["clean"], false, "{status}");
    let changes: Vec<(String, String, String)> = status["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["index"].as_str().unwrap().to_string(),
                c["worktree"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("README.md".into(), ".".into(), "M".into()),
            ("src/new.py".into(), "?".into(), "?".into())
        ],
        "{status}"
    );
    let diff = ok(client, id, "git", "diff", json!({"path": "work"})).await;
    assert_eq!(
        diff["files"],
        json!([{"path": "README.md", "added": 1, "deleted": 0}]),
        "{diff}"
    );
    assert!(
        diff["diff"].as_str().unwrap().contains("+second line"),
        "{diff}"
    );

    let commit = ok(
        client,
        id,
        "git",
        "commit",
        json!({"path": "work", "message": "Add src/new.py\n\nAnd a second line."}),
    )
    .await;
    assert_eq!(
        (commit["branch"].as_str(), commit["summary"].as_str()),
        (Some("main"), Some("Add src/new.py")),
        "{commit}"
    );
    let second = commit["commit"].as_str().unwrap().to_string();
    refused(
        client,
        id,
        ("git", "commit"),
        json!({"path": "work", "message": "nothing"}),
        422,
        "plugin_error",
    )
    .await;

    let log = ok(client, id, "git", "log", json!({"path": "work"})).await;
    let commits = log["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2, "{log}");
    assert_eq!(
        (
            commits[0]["sha"].as_str(),
            commits[0]["subject"].as_str(),
            commits[0]["author"].as_str(),
            commits[0]["email"].as_str()
        ),
        (
            Some(second.as_str()),
            Some("Add src/new.py"),
            Some("Wharf"),
            Some("wharf@localhost")
        ),
        "the default author: {log}"
    );
    assert_eq!(commits[0]["parents"], json!([first]), "{log}");
    assert_eq!(
        (
            commits[1]["author"].as_str(),
            commits[1]["subject"].as_str()
        ),
        (Some("Seeder"), Some("Initial commit")),
        "{log}"
    );
    let status = ok(client, id, "git", "status", json!({"path": "work"})).await;
    assert_eq!(
        (status["clean"].as_bool(), status["ahead"].as_u64()),
        (Some(true), Some(1)),
        "{status}"
    );
    refused(
        client,
        id,
        ("git", "status"),
        json!({"path": "seed/.git/objects"}),
        422,
        "plugin_error",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_run_returns_its_result_and_names_the_line_of_a_syntax_error_on_docker() {
    let Some((_root, _server, admin)) = docker_adapters_server().await else {
        return;
    };
    let id = create(&admin, "docker").await;
    python_suite(&admin, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_reads_writes_and_searches_1000_files_on_docker() {
    let Some((_root, _server, admin)) = docker_adapters_server().await else {
        return;
    };
    let id = create(&admin, "docker").await;
    filesystem_suite(&admin, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clones_a_local_bare_repository_then_commits_and_logs_on_docker() {
    let Some((_root, _server, admin)) = docker_adapters_server().await else {
        return;
    };
    let id = create(&admin, "docker").await;
    git_suite(&admin, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adapter_works_on_the_process_driver() {
    let (_root, _server, admin) = process_adapters_server().await;
    let id = create(&admin, "local").await;
    let (_, capabilities) = admin.get("/v1/capabilities").await;
    let names: HashSet<&str> = capabilities
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["capability"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["filesystem", "git", "python", "shell"]),
        "{capabilities}"
    );
    python_suite(&admin, &id).await;
    filesystem_suite(&admin, &id).await;
    git_suite(&admin, &id).await;
}
