//! Sandboxes against the real binary: the same lifecycle suite on the process
//! and the Docker driver, then Docker-only limits, idempotency under
//! concurrency, `session_not_ready`, GC (idle stop, TTL expiry), recovery (and
//! its absence without `restart_once`), orphan removal after `kill -9`, and
//! profiles contributed by a pack.
//!
//! Docker tests need a Docker engine and the base image
//! (`scripts/build-base-image`). Without them they are skipped, except when
//! `CI=true`, where they fail.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active, poll};

mod bounds;

pub(crate) const BASE_IMAGE: &str = "wharf/sandbox-base:1";

/// Profiles the tests use, beside the built-in `local` and `docker`.
const TEST_CONFIG: &str = r#"
[sandbox]
gc_interval_ms = 300
not_ready_wait_ms = 20000
max_upload_bytes = 6291456

[profiles.small]
driver = "docker"
memory_mib = 64
pids_limit = 64

[profiles.execonly]
driver = "docker"
capabilities = ["exec"]

[profiles.idle]
driver = "process"
idle_timeout_secs = 1

[profiles.fragile]
driver = "docker"
idle_timeout_secs = 0

[profiles.norestart]
driver = "docker"
idle_timeout_secs = 0
restart_once = false

[profiles.ephemeral]
driver = "process"
max_ttl_secs = 1

[profiles.nopython]
driver = "docker"
image = "wharf/test-no-python:1"
"#;

/// The base image without python3, so the Docker driver has no exec agent to
/// run and falls back to the engine's exec. Made with `docker commit`, cached
/// by tag.
pub(crate) const NO_PYTHON_IMAGE: &str = "wharf/test-no-python:1";

/// Whether Docker tests can run here; under `CI=true` a missing engine or
/// image is a failure, not a skip.
pub(crate) fn docker_ready() -> bool {
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let image = engine
        && Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if image {
        return true;
    }
    let why = if engine {
        format!("image {BASE_IMAGE} is missing (run scripts/build-base-image)")
    } else {
        "no Docker engine".into()
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Docker sandbox tests are required in CI: {why}");
    }
    wharf_e2e::note_skip(&why);
    false
}

/// A server with the test profiles and its admin client, for a Docker test;
/// `None` when Docker tests are skipped (never under `CI=true`).
fn docker_server() -> Option<(tempfile::TempDir, WharfProcess, Client)> {
    docker_server_with(TEST_CONFIG)
}

/// [`docker_server`] with another `wharf.toml`.
pub(crate) fn docker_server_with(
    config: &str,
) -> Option<(tempfile::TempDir, WharfProcess, Client)> {
    if !docker_ready() {
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    let server = start_with(root.path(), config);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    Some((root, server, admin))
}

fn start(root: &std::path::Path) -> WharfProcess {
    start_with(root, TEST_CONFIG)
}

fn start_with(root: &std::path::Path, config: &str) -> WharfProcess {
    std::fs::write(root.join("wharf.toml"), config).unwrap();
    WharfProcess::start(root, &[])
}

pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn containers_with_label(label: &str) -> Vec<String> {
    docker(&["ps", "-a", "-q", "--filter", &format!("label={label}")])
        .lines()
        .map(str::to_string)
        .collect()
}

fn instance_id(server: &WharfProcess) -> String {
    // The server listens before it has finished starting: wait for the file.
    let path = server.data_dir.join("instance-id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(id) = std::fs::read_to_string(&path)
            && !id.trim().is_empty()
        {
            return id.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no instance-id in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) async fn create(client: &Client, profile: &str) -> String {
    let (status, sandbox) = client
        .post("/v1/sandboxes", json!({"profile": profile}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    assert_eq!(sandbox["status"], "running", "{sandbox}");
    sandbox["id"].as_str().unwrap().to_string()
}

pub(crate) async fn exec(client: &Client, id: &str, body: Value) -> Value {
    let (status, out) = client.post(&format!("/v1/sandboxes/{id}/exec"), body).await;
    assert_eq!(status, 200, "{out}");
    out
}

/// Posts an exec that must be refused with `status` and error `code`; returns the answer.
pub(crate) async fn exec_refused(
    client: &Client,
    id: &str,
    body: Value,
    status: u16,
    code: &str,
) -> Value {
    let (got, answer) = client.post(&format!("/v1/sandboxes/{id}/exec"), body).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (status, Some(code)),
        "{answer}"
    );
    answer
}

/// `POST /v1/sandboxes/{id}/<action>` (stop, start, keepalive): status and answer.
async fn lifecycle_action(client: &Client, id: &str, action: &str) -> (u16, Value) {
    client
        .post(&format!("/v1/sandboxes/{id}/{action}"), json!({}))
        .await
}

pub(crate) async fn new_owner_client(server: &WharfProcess, admin: &Client, owner: &str) -> Client {
    let (status, key) = admin.post("/v1/keys", json!({"owner": owner})).await;
    assert_eq!(status, 201, "{key}");
    Client::new(server, Some(key["key"].as_str().unwrap()))
}

/// The lifecycle suite, run on both drivers.
async fn lifecycle(profile: &str) {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));

    let (_, info) = admin.get("/v1/info").await;
    assert!(
        info["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "process"),
        "{info}"
    );

    // Create, idempotently.
    let keyed = |body: Value| {
        admin
            .request(Method::POST, "/v1/sandboxes")
            .header("Idempotency-Key", "lifecycle-1")
            .json(&body)
    };
    let (status, first) = admin.send(keyed(json!({"profile": profile}))).await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let (status, again) = admin.send(keyed(json!({"profile": profile}))).await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(id.as_str())),
        "{again}"
    );
    let other = if profile == "local" {
        "docker"
    } else {
        "local"
    };
    let (status, conflict) = admin.send(keyed(json!({"profile": other}))).await;
    assert_eq!(
        (status, conflict["error"]["code"].as_str()),
        (409, Some("idempotency_conflict")),
        "{conflict}"
    );

    // Get and list, with filters and a cursor.
    let second = create(&admin, profile).await;
    let (_, got) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (got["status"].as_str(), got["profile"].as_str()),
        (Some("running"), Some(profile))
    );
    let (_, page) = admin
        .get(&format!("/v1/sandboxes?profile={profile}&limit=1"))
        .await;
    assert_eq!(page["items"][0]["id"], id.as_str(), "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, page2) = admin
        .get(&format!(
            "/v1/sandboxes?profile={profile}&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(page2["items"][0]["id"], second.as_str(), "{page2}");
    assert!(page2["next_cursor"].is_null(), "{page2}");
    let (_, stopped_page) = admin.get("/v1/sandboxes?status=stopped").await;
    assert_eq!(stopped_page["items"], json!([]));

    // Exec: python computes, stdin, env, cwd, exit codes, output cap flags.
    let out = exec(
        &admin,
        &id,
        json!({"argv": ["python3", "-c", "import math; print(math.factorial(20))"]}),
    )
    .await;
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("2432902008176640000\n")),
        "{out}"
    );
    let out = exec(&admin, &id, json!({"command": "read x; echo \"$x-$GREETING\"; exit 3", "stdin": "hi\n", "env": {"GREETING": "there"}})).await;
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(3), Some("hi-there\n")),
        "{out}"
    );
    assert_eq!(out["timed_out"], false);

    // Files: a 5 MiB binary round trip, mkdir, listing, delete, not found.
    let blob: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = hex::encode(sha2::Sha256::digest(&blob));
    let (status, _) = admin
        .send(admin.request(Method::PUT, &format!("/v1/sandboxes/{id}/dirs/data/in")))
        .await;
    assert_eq!(status, 201);
    let (status, written) = admin
        .send(
            admin
                .request(
                    Method::PUT,
                    &format!("/v1/sandboxes/{id}/files/data/in/blob.bin"),
                )
                .body(blob),
        )
        .await;
    assert_eq!(
        (status, written["size"].as_u64()),
        (201, Some(5 * 1024 * 1024)),
        "{written}"
    );
    let response = admin
        .request(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files/data/in/blob.bin"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = hex::encode(sha2::Sha256::digest(response.bytes().await.unwrap()));
    assert_eq!(received, sent, "sha256 of the downloaded file");
    let out = exec(
        &admin,
        &id,
        json!({"argv": ["sha256sum", "blob.bin"], "cwd": "data/in"}),
    )
    .await;
    assert!(
        out["stdout"].as_str().unwrap().starts_with(&sent),
        "the file inside the sandbox: {out}"
    );
    let (_, listing) = admin.get(&format!("/v1/sandboxes/{id}/dirs/data/in")).await;
    assert_eq!(
        listing["entries"],
        json!([{"name": "blob.bin", "kind": "file", "size": 5 * 1024 * 1024}]),
        "{listing}"
    );
    let (_, root_listing) = admin.get(&format!("/v1/sandboxes/{id}/dirs")).await;
    assert!(
        root_listing["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "data" && e["kind"] == "directory")
    );
    // Streamed uploads without a Content-Length: counted as they arrive. Past
    // `max_upload_bytes` (6 MiB here): 413, the old file stays, no partial is left.
    let chunked = |chunks: Vec<Vec<u8>>| {
        reqwest::Body::wrap_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        ))
    };
    let blob_url = format!("/v1/sandboxes/{id}/files/data/in/blob.bin");
    let (status, too_large) = admin
        .send(
            admin.request(Method::PUT, &blob_url).body(chunked(
                (0..6)
                    .map(|_| vec![1u8; 1024 * 1024])
                    .chain([vec![1u8]])
                    .collect(),
            )),
        )
        .await;
    assert_eq!(
        (status, too_large["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{too_large}"
    );
    let (_, listing) = admin.get(&format!("/v1/sandboxes/{id}/dirs/data/in")).await;
    assert_eq!(
        listing["entries"],
        json!([{"name": "blob.bin", "kind": "file", "size": 5 * 1024 * 1024}]),
        "the old file stays and no partial upload is left: {listing}"
    );
    let (status, written) = admin
        .send(
            admin
                .request(
                    Method::PUT,
                    &format!("/v1/sandboxes/{id}/files/data/in/parts.txt"),
                )
                .body(chunked(vec![
                    b"one,".to_vec(),
                    b"two,".to_vec(),
                    b"three".to_vec(),
                ])),
        )
        .await;
    assert_eq!(
        (status, written["size"].as_u64()),
        (201, Some(13)),
        "{written}"
    );
    let response = admin
        .request(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files/data/in/parts.txt"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(13));
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"one,two,three");

    let (status, _) = admin
        .delete(&format!("/v1/sandboxes/{id}/files/data/in/blob.bin"))
        .await;
    assert_eq!(status, 204);
    let (status, missing) = admin
        .get(&format!("/v1/sandboxes/{id}/files/data/in/blob.bin"))
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("file_not_found")),
        "{missing}"
    );
    let (status, nonempty) = admin
        .delete(&format!("/v1/sandboxes/{id}/files/data"))
        .await;
    assert_eq!(status, 409, "{nonempty}");
    let (status, _) = admin
        .delete(&format!("/v1/sandboxes/{id}/files/data?recursive=true"))
        .await;
    assert_eq!(status, 204);

    // Path escapes: `..`, absolute, and a symlink to /etc, all invalid_path. (URL clients
    // remove `..` and `%2e%2e` segments themselves, so `..` travels with an encoded slash.)
    exec(&admin, &id, json!({"argv": ["ln", "-s", "/etc", "etc"]})).await;
    for path in [
        "files/..%2Fetc%2Fpasswd",
        "files/a/..%2F..%2Fx",
        "files/%2Fetc%2Fpasswd",
        "files//etc/passwd",
        "files/etc/passwd",
        "dirs/etc",
    ] {
        let (status, body) = admin.get(&format!("/v1/sandboxes/{id}/{path}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_path")),
            "{path}: {body}"
        );
    }
    let (status, body) = admin
        .send(
            admin
                .request(Method::PUT, &format!("/v1/sandboxes/{id}/files/etc/evil"))
                .body("x"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_path")),
        "write through symlink: {body}"
    );

    // A timeout kills the whole process tree. Each driver's run sleeps for its
    // own durations: the host `ps` also shows the Docker suite's processes.
    let (first_sleep, second_sleep) = if profile == "local" {
        ("sleep 31", "sleep 32")
    } else {
        ("sleep 41", "sleep 42")
    };
    let out = exec(
        &admin,
        &id,
        json!({"command": format!("{first_sleep} & {second_sleep} & echo $! > bg.pid; wait"), "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(
        (out["timed_out"].as_bool(), out["exit_code"].as_i64()),
        (Some(true), None),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    if profile == "local" {
        let ps = Command::new("ps")
            .args(["-eo", "stat,args"])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !ps.lines()
                .any(|l| (l.contains(first_sleep) || l.contains(second_sleep))
                    && !l.starts_with('Z')),
            "leftover:\n{ps}"
        );
    } else {
        let ps = exec(&admin, &id, json!({"argv": ["ps", "-eo", "stat,args"]})).await;
        let ps = ps["stdout"].as_str().unwrap();
        assert!(
            !ps.contains(first_sleep) && !ps.contains(second_sleep),
            "leftover in the container:\n{ps}"
        );
    }

    // Streaming exec over WebSocket: lines, then the exit record.
    let records = exec_stream(
        &server,
        &id,
        json!({"command": "echo one; echo two >&2; echo three", "timeout_ms": 10000}),
    )
    .await;
    let lines: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["type"] == "line")
        .map(|r| {
            (
                r["stream"].as_str().unwrap().to_string(),
                r["line"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("stdout".into(), "one".into()))
            && lines.contains(&("stderr".into(), "two".into())),
        "{records:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "three".into())),
        "{records:?}"
    );
    let exit = records.last().unwrap();
    assert_eq!(
        (exit["type"].as_str(), exit["exit_code"].as_i64()),
        (Some("exit"), Some(0)),
        "{records:?}"
    );

    // Stop, start, keepalive; use of a stopped sandbox starts it again.
    let (status, stopped) = lifecycle_action(&admin, &id, "stop").await;
    assert_eq!(
        (status, stopped["status"].as_str()),
        (200, Some("stopped")),
        "{stopped}"
    );
    let (status, started) = lifecycle_action(&admin, &id, "start").await;
    assert_eq!(
        (status, started["status"].as_str()),
        (200, Some("running")),
        "{started}"
    );
    lifecycle_action(&admin, &id, "stop").await;
    let out = exec(&admin, &id, json!({"argv": ["echo", "back"]})).await;
    assert_eq!(out["stdout"], "back\n");
    let (status, _) = lifecycle_action(&admin, &id, "keepalive").await;
    assert_eq!(status, 200);

    // Owner isolation: another owner sees nothing of it.
    let mallory = new_owner_client(&server, &admin, "mallory").await;
    for (method, path) in [
        (Method::GET, format!("/v1/sandboxes/{id}")),
        (Method::DELETE, format!("/v1/sandboxes/{id}")),
        (Method::POST, format!("/v1/sandboxes/{id}/stop")),
        (Method::GET, format!("/v1/sandboxes/{id}/files/x")),
        (Method::GET, format!("/v1/sandboxes/{id}/events")),
    ] {
        let (status, body) = mallory.send(mallory.request(method.clone(), &path)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{method} {path}: {body}"
        );
    }
    exec_refused(&mallory, &id, json!({"argv": ["true"]}), 404, "not_found").await;
    let (_, theirs) = mallory.get("/v1/sandboxes").await;
    assert_eq!(theirs["items"], json!([]));

    // Events: the log, and the stream resumed from an offset.
    let (_, events) = admin.get(&format!("/v1/sandboxes/{id}/events")).await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["created", "started", "exec", "stopped"] {
        assert!(kinds.contains(&kind), "missing {kind} in {kinds:?}");
    }
    let seqs: Vec<i64> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let resume_from = seqs[seqs.len() - 3];
    let streamed = events_stream(&server, &id, resume_from, 2).await;
    assert_eq!(
        streamed
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        seqs[seqs.len() - 2..].to_vec()
    );
    // A live event reaches a connected stream.
    let after = *seqs.last().unwrap();
    let live = tokio::spawn({
        let base = server.base_url.clone();
        let id = id.clone();
        async move { events_stream_at(&base, &id, after, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    exec(&admin, &id, json!({"argv": ["true"]})).await;
    let live = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .expect("live event")
        .unwrap();
    assert_eq!(live[0]["kind"], "exec");

    // Delete: gone for everyone, runtime removed.
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 404);
    if profile == "docker" {
        assert!(containers_with_label(&format!("wharf.sandbox={id}")).is_empty());
    } else {
        assert!(!server.data_dir.join("sandboxes").join(&id).exists());
    }
    admin.delete(&format!("/v1/sandboxes/{second}")).await;
}

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replacen("http://", "ws://", 1))
}

fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::http::Request<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    request
}

/// Opens an exec stream and sends `body` as its first message.
async fn open_exec_stream(
    server: &WharfProcess,
    id: &str,
    body: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = ws_url(&server.base_url, &format!("/v1/sandboxes/{id}/exec/stream"));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&url))
        .await
        .expect("websocket");
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            body.to_string(),
        ))
        .await
        .unwrap();
    socket
}

pub(crate) async fn exec_stream(server: &WharfProcess, id: &str, body: Value) -> Vec<Value> {
    let mut socket = open_exec_stream(server, id, body).await;
    let mut records = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let record: Value = serde_json::from_str(&text).unwrap();
            let done = record["type"] == "exit" || record["type"] == "error";
            records.push(record);
            if done {
                break;
            }
        }
    }
    records
}

async fn events_stream(server: &WharfProcess, id: &str, after: i64, count: usize) -> Vec<Value> {
    events_stream_at(&server.base_url, id, after, count).await
}

async fn events_stream_at(base: &str, id: &str, after: i64, count: usize) -> Vec<Value> {
    let url = ws_url(
        base,
        &format!("/v1/sandboxes/{id}/events/stream?after={after}"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&url))
        .await
        .expect("websocket");
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                events.push(serde_json::from_str(&text).unwrap())
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("event stream ended early: {other:?} after {events:?}"),
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_the_process_driver() {
    lifecycle("local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_the_docker_driver() {
    if !docker_ready() {
        return;
    }
    lifecycle("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandbox_is_confined_and_limited() {
    let Some((_root, server, admin)) = docker_server() else {
        return;
    };
    let id = create(&admin, "small").await;

    // Isolation settings as the engine reports them.
    let inspect = docker(&[
        "inspect",
        &format!("wharf-{id}"),
        "--format",
        "{{.HostConfig.Privileged}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.NetworkMode}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.Config.User}} {{.HostConfig.LogConfig.Type}}",
    ]);
    assert_eq!(
        inspect.trim(),
        "false [ALL] [no-new-privileges] none 67108864 64 1000:1000 none"
    );
    let out = exec(
        &admin,
        &id,
        json!({"command": "id -u; cat /proc/self/status | grep CapEff"}),
    )
    .await;
    assert_eq!(out["stdout"], "1000\nCapEff:\t0000000000000000\n", "{out}");

    // Memory: allocating past 64 MiB is killed and reported.
    let out = exec(&admin, &id, json!({"argv": ["python3", "-c", "b = bytearray(400 * 1024 * 1024); print(len(b))"], "timeout_ms": 30000})).await;
    assert_eq!(
        (out["oom_killed"].as_bool(), out["exit_code"].as_i64()),
        (Some(true), Some(137)),
        "{out}"
    );
    let (_, events) = admin.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "oom_killed"),
        "{events}"
    );

    // Pids: a fork bomb hits the limit; the host and the sandbox survive.
    let count = "ps -e --no-headers | wc -l";
    let baseline = exec(&admin, &id, json!({"command": count})).await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    let out = exec(
        &admin,
        &id,
        json!({"command": "bomb() { bomb | bomb & }; bomb; sleep 3", "timeout_ms": 4000}),
    )
    .await;
    let stderr = out["stderr"].as_str().unwrap();
    assert!(
        out["timed_out"] == true
            || stderr.contains("Cannot fork")
            || stderr.contains("Resource temporarily unavailable"),
        "the pids limit stopped the bomb: {}",
        &stderr[..stderr.len().min(400)]
    );
    let (status, _) = admin.get("/v1/info").await;
    assert_eq!(status, 200, "the server still answers");
    let mut settled = false;
    for _ in 0..50 {
        let (status, ps) = admin
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"command": count}),
            )
            .await;
        if status == 200
            && ps["exit_code"] == 0
            && ps["stdout"].as_str().unwrap().trim() == baseline
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        settled,
        "the fork bomb's processes are gone after the exec (baseline {baseline} processes)"
    );

    // A profile without `files` refuses files before starting anything.
    let restricted = create(&admin, "execonly").await;
    admin
        .post(&format!("/v1/sandboxes/{restricted}/stop"), json!({}))
        .await;
    let (status, body) = admin
        .get(&format!("/v1/sandboxes/{restricted}/files/x"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("capability_not_supported")),
        "{body}"
    );
    let state = docker(&[
        "inspect",
        &format!("wharf-{restricted}"),
        "--format",
        "{{.State.Running}}",
    ]);
    assert_eq!(
        state.trim(),
        "false",
        "the refused call did not start the container"
    );
    for sandbox in [&id, &restricted] {
        let (status, _) = admin.delete(&format!("/v1/sandboxes/{sandbox}")).await;
        assert_eq!(status, 204);
    }
    assert!(containers_with_label(&format!("wharf.instance={}", instance_id(&server))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_idempotent_creates_start_one_container() {
    if !docker_ready() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = Client::new(&server, Some(ADMIN_KEY));
        tasks.push(tokio::spawn(async move {
            let request = client
                .request(Method::POST, "/v1/sandboxes")
                .header("Idempotency-Key", "same")
                .json(&json!({"profile": "docker"}));
            client.send(request).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(status == 201 || status == 200, "{status} {body}");
        assert_eq!(body["status"], "running", "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        containers_with_label(&format!("wharf.sandbox={}", ids[0])).len(),
        1
    );
    assert_eq!(
        containers_with_label(&format!("wharf.instance={}", instance_id(&server))).len(),
        1
    );
    let admin = Client::new(&server, Some(ADMIN_KEY));
    admin.delete(&format!("/v1/sandboxes/{}", ids[0])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_stops_idle_sandboxes_and_recovers_dead_containers() {
    let docker_ok = docker_ready();
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));

    let idle = create(&admin, "idle").await;
    admin
        .wait_for(&format!("/v1/sandboxes/{idle}"), "idle stop", |s| {
            s["status"] == "stopped"
        })
        .await;
    let (_, events) = admin.get(&format!("/v1/sandboxes/{idle}/events")).await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "stopped" && e["detail"]["reason"] == "idle")
    );
    let (_, metrics) = admin.send(admin.request(Method::GET, "/metrics")).await;
    let _ = metrics;
    let text = server.metrics().await;
    assert!(
        text.contains("wharf_sandbox_gc_actions_total{action=\"idle_stopped\"}"),
        "metrics:\n{text}"
    );

    if !docker_ok {
        return;
    }
    let id = create(&admin, "fragile").await;
    // The container dies: detected, restarted once.
    docker(&["kill", &format!("wharf-{id}")]);
    admin
        .wait_for(&format!("/v1/sandboxes/{id}"), "recovery", |s| {
            s["restarts"] == 1 && s["status"] == "running"
        })
        .await;
    let out = exec(&admin, &id, json!({"argv": ["echo", "alive"]})).await;
    assert_eq!(out["stdout"], "alive\n");
    // It dies again: failed, with an error code.
    docker(&["kill", &format!("wharf-{id}")]);
    let failed = admin
        .wait_for(&format!("/v1/sandboxes/{id}"), "failure", |s| {
            s["status"] == "failed"
        })
        .await;
    assert_eq!(failed["error_code"], "runtime_died", "{failed}");
    let (_, events) = admin.get(&format!("/v1/sandboxes/{id}/events")).await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"died") && kinds.contains(&"recovered") && kinds.contains(&"failed"),
        "{kinds:?}"
    );
    admin.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_create_then_restart_reconciles_and_removes_orphans() {
    if !docker_ready() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut server = start(root.path());
    let instance = instance_id(&server);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let keep = create(&admin, "docker").await;

    // A create in flight when the server is killed.
    let creating = tokio::spawn({
        let client = Client::new(&server, Some(ADMIN_KEY));
        async move {
            client
                .post("/v1/sandboxes", json!({"profile": "docker"}))
                .await
        }
    });
    let label = format!("wharf.instance={instance}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_with_label(&label).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second container never appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let _ = creating.await;
    // And an orphan: labelled for this server, unknown to its store.
    let orphan_label = format!("wharf.sandbox=sbx_orphan_{instance}");
    docker(&[
        "run",
        "-d",
        "--label",
        &orphan_label,
        "--label",
        &label,
        BASE_IMAGE,
        "sleep",
        "infinity",
    ]);
    assert_eq!(containers_with_label(&label).len(), 3);

    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (_, page) = admin.get("/v1/sandboxes").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    let interrupted = items.iter().find(|s| s["id"] != keep.as_str()).unwrap();
    // Killed mid-create: failed and removed, or (if the create had just finished) running.
    let live_expected = match interrupted["status"].as_str().unwrap() {
        "failed" => {
            assert_eq!(
                interrupted["error_code"], "create_interrupted",
                "{interrupted}"
            );
            1
        }
        "running" => 2,
        other => panic!("unexpected status {other}: {interrupted}"),
    };
    let remaining = containers_with_label(&label);
    assert_eq!(
        remaining.len(),
        live_expected,
        "orphans removed, live sandboxes kept: {}\nlogs:\n{}",
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}} {{.Status}}"
        ]),
        server
            .logs()
            .lines()
            .filter(|l| l.contains("INFO") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(containers_with_label(&orphan_label).is_empty());
    let out = exec(&admin, &keep, json!({"argv": ["echo", "kept"]})).await;
    assert_eq!(out["stdout"], "kept\n");
    for item in items {
        admin
            .delete(&format!("/v1/sandboxes/{}", item["id"].as_str().unwrap()))
            .await;
    }
    assert!(containers_with_label(&label).is_empty());
}

/// The Python client's own tests, against the real server, on each driver available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_passes_its_tests() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let mut profiles = vec!["local"];
    if docker_ready() {
        profiles.push("docker");
    }
    for profile in profiles {
        let dir = wharf_e2e::repo_root().join("examples/python");
        let output = tokio::process::Command::new("python3")
            .args(["-m", "unittest", "-v", "test_client"])
            .current_dir(&dir)
            .env("WHARF_URL", &server.base_url)
            .env("WHARF_KEY", ADMIN_KEY)
            .env("WHARF_PROFILE", profile)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .await
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "python client tests failed on {profile}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `session_not_ready` needs calls to give up at once: the Docker create
/// (~0.5 s) is the window in which they are made.
const NOT_READY_CONFIG: &str = r#"
[sandbox]
gc_interval_ms = 300
not_ready_wait_ms = 1
"#;

/// The events of a sandbox (deleted ones included), oldest first.
async fn events_of(client: &Client, id: &str) -> Vec<Value> {
    let (status, events) = client.get(&format!("/v1/sandboxes/{id}/events")).await;
    assert_eq!(status, 200, "{events}");
    events["items"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// The value of one Prometheus series (`name{labels}`), if the server exports it.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// Polls a sandbox's events until `check` accepts them (bounded). GC records an
/// event just after the status change it explains, so a client that has seen
/// the status may read the log a moment before the event is there.
async fn wait_events(
    client: &Client,
    id: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let check = &check;
    poll(what, || async move {
        let events = events_of(client, id).await;
        if check(&events) {
            Ok(events)
        } else {
            Err(format!("events {events:?}"))
        }
    })
    .await
}

/// Polls `/metrics` until `series` is exported (bounded; counted after the event).
async fn wait_metric(server: &WharfProcess, series: &str) -> (f64, String) {
    poll(series, || async move {
        let text = server.metrics().await;
        match metric_value(&text, series) {
            Some(value) => Ok((value, text)),
            None => Err(format!("metrics:\n{text}")),
        }
    })
    .await
}

/// Polls `GET /v1/sandboxes/{id}` until it answers 404 (bounded); returns that body.
async fn wait_gone(client: &Client, id: &str, what: &str) -> Value {
    poll(what, || async move {
        let (status, body) = client.get(&format!("/v1/sandboxes/{id}")).await;
        if status == 404 {
            return Ok(body);
        }
        assert_eq!(status, 200, "{body}");
        Err(format!("last answer {status} {body}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_sandbox_still_creating_get_session_not_ready() {
    let Some((_root, server, admin)) = docker_server_with(NOT_READY_CONFIG) else {
        return;
    };

    // The exec is sent as soon as the list shows the sandbox `creating`. If the
    // create finishes in between (a slow poll), the exec legitimately succeeds:
    // try again with another sandbox. A server that waits out the create
    // instead of answering 503 succeeds every time and fails the test.
    let mut answers = Vec::new();
    for _attempt in 0..5 {
        let creating = tokio::spawn({
            let client = Client::new(&server, Some(ADMIN_KEY));
            async move {
                client
                    .post("/v1/sandboxes", json!({"profile": "docker"}))
                    .await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let (status, page) = admin.get("/v1/sandboxes?status=creating").await;
            assert_eq!(status, 200, "{page}");
            if let Some(item) = page["items"].as_array().unwrap().first() {
                assert_eq!(item["status"], "creating", "{page}");
                break Some(item["id"].as_str().unwrap().to_string());
            }
            if creating.is_finished() {
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox never showed as creating"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let not_ready = match &seen {
            Some(id) => {
                let response = admin
                    .request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
                    .json(&json!({"argv": ["echo", "early"]}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body: Value =
                    serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
                assert!(
                    status == 503 || status == 200,
                    "exec on a creating sandbox: {status} {body}"
                );
                answers.push(format!("{status} {body}"));
                (status == 503).then_some((headers, body))
            }
            None => {
                answers.push("the create finished before the list showed it".into());
                None
            }
        };
        let (status, created) = creating.await.unwrap();
        assert_eq!(
            (status, created["status"].as_str()),
            (201, Some("running")),
            "{created}"
        );
        let id = created["id"].as_str().unwrap().to_string();
        if let Some(seen) = &seen {
            assert_eq!(seen, &id, "the sandbox seen creating is the one created");
        }
        let Some((headers, body)) = not_ready else {
            admin.delete(&format!("/v1/sandboxes/{id}")).await;
            continue;
        };

        // 503 session_not_ready, retriable, with retry_after_ms and a Retry-After header.
        assert_eq!(body["error"]["code"], "session_not_ready", "{body}");
        assert_eq!(body["error"]["retriable"], true, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(&id),
            "{body}"
        );
        let retry_after_ms = body["error"]["retry_after_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("retry_after_ms in {body}"));
        assert!(retry_after_ms > 0, "{body}");
        assert_eq!(
            headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            Some(retry_after_ms.div_ceil(1000).max(1).to_string()),
            "Retry-After in whole seconds: {headers:?}"
        );
        assert_eq!(
            headers.get("x-request-id").and_then(|v| v.to_str().ok()),
            body["error"]["request_id"].as_str(),
            "{headers:?} {body}"
        );

        // Once created, the same call succeeds; the refused one left no trace.
        let out = exec(&admin, &id, json!({"argv": ["echo", "ready"]})).await;
        assert_eq!(
            (out["exit_code"].as_i64(), out["stdout"].as_str()),
            (Some(0), Some("ready\n")),
            "{out}"
        );
        let events = events_of(&admin, &id).await;
        assert_eq!(kinds(&events), ["created", "started", "exec"], "{events:?}");
        let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, 204);
        return;
    }
    panic!(
        "no call on a creating sandbox answered session_not_ready (not_ready_wait_ms = 1): {answers:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_sandboxes_past_their_max_ttl() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));

    // `ephemeral`: process driver, max_ttl_secs = 1; `local` keeps the default day.
    let kept = create(&admin, "local").await;
    let id = create(&admin, "ephemeral").await;
    let workspace = server.data_dir.join("sandboxes").join(&id);
    assert!(workspace.is_dir(), "{}", workspace.display());

    let gone = wait_gone(&admin, &id, "expiry").await;
    assert_eq!(gone["error"]["code"], "not_found", "{gone}");
    exec_refused(&admin, &id, json!({"argv": ["true"]}), 404, "not_found").await;
    let (_, page) = admin.get("/v1/sandboxes").await;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [kept.as_str()], "{page}");
    assert!(
        !workspace.exists(),
        "the expired sandbox's workspace is removed"
    );

    // The event log (kept for deleted sandboxes) says why.
    let events = wait_events(&admin, &id, "the gc event", |events| {
        events.iter().any(|e| e["kind"] == "gc")
    })
    .await;
    let gc = events
        .iter()
        .find(|e| e["kind"] == "gc")
        .unwrap_or_else(|| panic!("no gc event: {events:?}"));
    assert_eq!(
        gc["detail"],
        json!({"reason": "expired", "max_ttl_secs": 1}),
        "{gc}"
    );
    let (expired, text) = wait_metric(
        &server,
        "wharf_sandbox_gc_actions_total{action=\"expired\"}",
    )
    .await;
    assert_eq!(expired, 1.0, "metrics:\n{text}");

    // The other sandbox is untouched.
    let (_, still) = admin.get(&format!("/v1/sandboxes/{kept}")).await;
    assert_eq!(still["status"], "running", "{still}");
    let out = exec(&admin, &kept, json!({"argv": ["echo", "kept"]})).await;
    assert_eq!(out["stdout"], "kept\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_container_without_restart_once_fails_at_once() {
    let Some((_root, server, admin)) = docker_server() else {
        return;
    };

    // `norestart`: docker driver, restart_once = false, never idle-stopped.
    let id = create(&admin, "norestart").await;
    let out = exec(&admin, &id, json!({"argv": ["echo", "alive"]})).await;
    assert_eq!(out["stdout"], "alive\n");

    docker(&["kill", &format!("wharf-{id}")]);
    let failed = admin
        .wait_for(&format!("/v1/sandboxes/{id}"), "failure", |s| {
            assert_eq!(
                s["restarts"], 0,
                "restarted despite restart_once = false: {s}"
            );
            assert_ne!(s["status"], "stopped", "{s}");
            s["status"] == "failed"
        })
        .await;
    assert_eq!(
        (failed["error_code"].as_str(), failed["restarts"].as_i64()),
        (Some("runtime_died"), Some(0)),
        "{failed}"
    );

    let events = wait_events(&admin, &id, "the failed event", |events| {
        events.iter().any(|e| e["kind"] == "failed")
    })
    .await;
    let kinds = kinds(&events);
    let died = kinds
        .iter()
        .position(|k| *k == "died")
        .unwrap_or_else(|| panic!("no died event: {kinds:?}"));
    assert_eq!(
        &kinds[died..],
        ["died", "failed"],
        "straight from died to failed, no recovery: {events:?}"
    );
    assert_eq!(events[died]["detail"]["oom_killed"], false, "{events:?}");
    assert_eq!(events[died]["detail"]["missing"], false, "{events:?}");
    assert_eq!(
        events[died + 1]["detail"]["error_code"],
        "runtime_died",
        "{events:?}"
    );
    let (failures, text) =
        wait_metric(&server, "wharf_sandbox_gc_actions_total{action=\"failed\"}").await;
    assert_eq!(failures, 1.0, "metrics:\n{text}");
    assert_eq!(
        metric_value(
            &text,
            "wharf_sandbox_gc_actions_total{action=\"recovered\"}"
        ),
        None,
        "metrics:\n{text}"
    );

    // The container was not started again, and the sandbox refuses work.
    let state = docker(&[
        "inspect",
        &format!("wharf-{id}"),
        "--format",
        "{{.State.Running}}",
    ]);
    assert_eq!(state.trim(), "false", "the dead container stays down");
    exec_refused(&admin, &id, json!({"argv": ["true"]}), 409, "conflict").await;
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 204);
    assert!(containers_with_label(&format!("wharf.sandbox={id}")).is_empty());
}

const PROFILE_PACK: &str = "tests/fixtures/packs/profile-pack";

/// Creates a sandbox of `profile` as soon as the server knows the profile
/// (pack profiles are picked up right after the scan that activates the pack).
async fn create_when_known(client: &Client, profile: &str) -> Value {
    poll(
        &format!("profile {profile} to become known"),
        || async move {
            let (status, body) = client
                .post("/v1/sandboxes", json!({"profile": profile}))
                .await;
            if status == 201 {
                return Ok(body);
            }
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some("validation_error")),
                "{body}"
            );
            Err(format!("last answer {body}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_contributed_profiles_run_sandboxes_with_their_env_and_capabilities() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));

    // Unknown until a pack brings it.
    let (status, body) = admin
        .post("/v1/sandboxes", json!({"profile": "packbox"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("packbox"),
        "{body}"
    );

    let built = root.path().join("built/profile-pack");
    build_pack(PROFILE_PACK, &built);
    assert!(
        built.join("profiles/packbox.toml").is_file(),
        "the built pack ships its profiles"
    );
    install_pack_active(&admin, &built, &server.packs_dir, "profile-pack").await;

    // The pack's profile: its driver, and its env in every exec.
    let sandbox = create_when_known(&admin, "packbox").await;
    assert_eq!(
        (
            sandbox["profile"].as_str(),
            sandbox["driver"].as_str(),
            sandbox["status"].as_str()
        ),
        (Some("packbox"), Some("process"), Some("running")),
        "{sandbox}"
    );
    let id = sandbox["id"].as_str().unwrap().to_string();
    let out = exec(
        &admin,
        &id,
        json!({"command": "echo \"$WHARF_PACK_PROFILE_GREETING\""}),
    )
    .await;
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("hello-from-profile-pack\n")),
        "{out}"
    );
    // The value is never returned outside the exec itself.
    let (_, got) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    let events = events_of(&admin, &id).await;
    for shown in [got.to_string(), json!(events).to_string()] {
        assert!(!shown.contains("hello-from-profile-pack"), "{shown}");
    }

    // The pack's `local.toml` does not override the built-in profile.
    let local = create(&admin, "local").await;
    let out = exec(
        &admin,
        &local,
        json!({"command": "echo \"${WHARF_PACK_OVERRIDE:-unset} ${WHARF_PACK_PROFILE_GREETING:-unset}\""}),
    )
    .await;
    assert_eq!(out["stdout"], "unset unset\n", "{out}");

    // The pack's adapter serves a sandbox whose profile allows it...
    let (status, answer) = admin
        .post(
            &format!("/v1/sandboxes/{local}/capabilities/test/echo"),
            json!({"ping": 1}),
        )
        .await;
    assert_eq!(
        (status, &answer["output"]),
        (200, &json!({"ping": 1})),
        "{answer}"
    );
    // ...but `packbox` allows only `exec`: files and plugin capabilities are refused
    // before anything is started (the stopped sandbox stays stopped).
    let (status, stopped) = lifecycle_action(&admin, &id, "stop").await;
    assert_eq!(
        (status, stopped["status"].as_str()),
        (200, Some("stopped")),
        "{stopped}"
    );
    // Refused capability calls leave a `capability` event (with their error) and an audit
    // row; nothing else is recorded.
    let recorded = |events: Vec<Value>| {
        events
            .into_iter()
            .filter(|e| e["kind"] != "capability")
            .count()
    };
    let events_before = recorded(events_of(&admin, &id).await);
    let refused = [
        (Method::GET, format!("/v1/sandboxes/{id}/files/x"), None),
        (Method::GET, format!("/v1/sandboxes/{id}/dirs"), None),
        (Method::PUT, format!("/v1/sandboxes/{id}/dirs/made"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{id}/capabilities/test/echo"),
            Some(json!({"ping": 1})),
        ),
    ];
    for (method, path, body) in refused {
        let mut request = admin.request(method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, answer) = admin.send(request).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("capability_not_supported")),
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("packbox"),
            "the profile is named: {answer}"
        );
    }
    let (_, still) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(still["status"], "stopped", "{still}");
    let events = events_of(&admin, &id).await;
    assert_eq!(
        recorded(events.clone()),
        events_before,
        "refused calls record nothing but their capability event: {events:?}"
    );
    // An allowed call starts it again; the refused mkdir did nothing.
    let out = exec(&admin, &id, json!({"command": "test -e made; echo $?"})).await;
    assert_eq!(out["stdout"], "1\n", "{out}");
    let (_, running) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(running["status"], "running", "{running}");

    let brief = create_when_known(&admin, "packbrief").await;
    let brief = brief["id"].as_str().unwrap().to_string();

    // Without the pack, the profile is gone for new sandboxes.
    std::fs::remove_dir_all(server.packs_dir.join("profile-pack")).unwrap();
    let admin_ref = &admin;
    poll("packbox to be forgotten with its pack", || async move {
        let (status, body) = admin_ref
            .post("/v1/sandboxes", json!({"profile": "packbox"}))
            .await;
        if status == 400 {
            assert_eq!(body["error"]["code"], "validation_error", "{body}");
            return Ok(());
        }
        assert_eq!(status, 201, "{body}");
        // Created before the removal was noticed: clean up and ask again.
        admin_ref
            .delete(&format!("/v1/sandboxes/{}", body["id"].as_str().unwrap()))
            .await;
        Err("packbox still known after the pack was removed".to_string())
    })
    .await;
    // A sandbox whose profile went with the pack says so, and can still be deleted...
    let body = exec_refused(&admin, &id, json!({"argv": ["true"]}), 409, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer defined"),
        "{body}"
    );
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 204);
    // ...and GC still applies the lifetimes it was created with: it expires.
    wait_gone(
        &admin,
        &brief,
        "the expiry of a sandbox whose profile is gone",
    )
    .await;
    let events = events_of(&admin, &brief).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "gc" && e["detail"]["reason"] == "expired"),
        "{events:?}"
    );
}

pub(crate) fn build_no_python_image() {
    build_test_image(
        NO_PYTHON_IMAGE,
        &["sh", "-c", "rm -f /usr/bin/python3*"],
        &["USER 1000:1000", "CMD [\"sleep\", \"infinity\"]"],
    );
}

/// Builds the image `tag` from the base image, offline and cached by tag:
/// runs `command` as root in a container of it, then commits that container
/// with the Dockerfile instructions `changes`.
pub(crate) fn build_test_image(tag: &str, command: &[&str], changes: &[&str]) {
    let present = Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return;
    }
    let builder = format!(
        "wharf-test-image-{}-{}",
        std::process::id(),
        tag.replace(['/', ':'], "-")
    );
    let mut run = vec![
        "run",
        "--name",
        &builder,
        "--user",
        "0",
        "--network",
        "none",
        BASE_IMAGE,
    ];
    run.extend_from_slice(command);
    docker(&run);
    let mut commit = vec!["commit"];
    for change in changes {
        commit.extend_from_slice(&["--change", change]);
    }
    commit.extend_from_slice(&[&builder, tag]);
    docker(&commit);
    docker(&["rm", &builder]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_execs_use_the_agent_and_fall_back_to_engine_exec_without_python() {
    let Some((_root, _server, admin)) = docker_server() else {
        return;
    };
    build_no_python_image();

    // With python3 in the image, an exec is a child of the agent, and the
    // agent's source does not reach the command's environment.
    let id = create(&admin, "docker").await;
    let out = exec(
        &admin,
        &id,
        json!({"command": "ps -o args= -p $PPID; env | grep -c WHARF_EXEC_AGENT"}),
    )
    .await;
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("python3 -u -c import os;") && stdout.ends_with("\n0\n"),
        "{out}"
    );

    // Concurrent execs share the one agent connection; each gets its own output.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let admin = admin.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let body =
                    json!({"command": format!("sleep 0.2; echo {i}; echo e{i} >&2; exit {i}")});
                (i, exec(&admin, &id, body).await)
            })
        })
        .collect();
    for task in tasks {
        let (i, out) = task.await.unwrap();
        assert_eq!(
            (
                out["exit_code"].as_i64(),
                out["stdout"].as_str(),
                out["stderr"].as_str()
            ),
            (
                Some(i),
                Some(format!("{i}\n").as_str()),
                Some(format!("e{i}\n").as_str())
            ),
            "{out}"
        );
    }

    // Without python3: PID 1 is a shell that sleeps (and reaps), and execs go through the engine,
    // with the same results, stdin, cwd checks and timeout kill.
    let id2 = create(&admin, "nopython").await;
    let out = exec(
        &admin,
        &id2,
        json!({"command": "ps -o args= -p 1; cat; exit 3", "stdin": "in"}),
    )
    .await;
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (
            Some(3),
            Some("sh -c while :; do sleep 3600; done wharf-no-agent\nin")
        ),
        "{out}"
    );
    exec_refused(
        &admin,
        &id2,
        json!({"argv": ["true"], "cwd": "missing"}),
        404,
        "file_not_found",
    )
    .await;
    let out = exec(
        &admin,
        &id2,
        json!({"command": "sleep 51 & sleep 52; echo never", "timeout_ms": 500}),
    )
    .await;
    assert_eq!(
        (out["timed_out"].as_bool(), out["exit_code"].as_i64()),
        (Some(true), None),
        "{out}"
    );
    let ps = exec(&admin, &id2, json!({"argv": ["ps", "-eo", "args"]})).await;
    let ps = ps["stdout"].as_str().unwrap();
    assert!(
        !ps.contains("sleep 51") && !ps.contains("sleep 52"),
        "leftover:\n{ps}"
    );
    for id in [id, id2] {
        let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, 204);
    }
}
