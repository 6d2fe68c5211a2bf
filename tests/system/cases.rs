//! Cases through the real binary and a real Docker engine: local git fixtures
//! (`tests/fixtures/cases/`, built `FROM wharf/sandbox-base:1`, nothing pulled) cloned,
//! built, run on leased ports, followed over WebSocket, and recovered after `kill -9`.
//! Without Docker these fail under `CI=true` (see `docker_ready`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, repo_root};

use crate::sandboxes::docker_ready;

/// A secret value that must never come back from the server.
const SECRET: &str = "sk-wharf-case-secret-5f1e9c";

/// Makes a git repository (one commit on `main`) from `tests/fixtures/cases/<name>`.
fn fixture_repo(root: &Path, name: &str) -> PathBuf {
    let repo = root.join("repos").join(name);
    wharf_e2e::copy_dir(&repo_root().join("tests/fixtures/cases").join(name), &repo);
    commit_all(&repo);
    repo
}

/// Turns a directory into a git repository with everything in one commit on `main`.
fn commit_all(repo: &Path) {
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=wharf-test",
            "-c",
            "user.email=test@wharf.invalid",
            "commit",
            "-q",
            "-m",
            "fixture",
        ],
    ] {
        let out = Command::new("git")
            .args(&args)
            .current_dir(repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }
}

/// `count` consecutive free ports on the loopback, from a random base.
fn free_port_range(count: u16) -> u16 {
    for attempt in 0..200u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let base = 42_000 + ((nanos / 7 + attempt * 97) % 18_000) as u16;
        let all_free = (base..base + count).all(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free port range of {count}");
}

/// Removes every container (by its instance label) and case image (by its tag) a test
/// server made.
struct EngineCleanup {
    data_dir: PathBuf,
}

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        let Ok(instance) = std::fs::read_to_string(self.data_dir.join("instance-id")) else {
            return;
        };
        let instance = instance.trim();
        let label = format!("label=wharf.instance={instance}");
        let reference = format!("reference=wharf-case/*:{instance}");
        // Images by tag, unforced: another test's case may share an image (same tree).
        for (list, remove) in [
            (vec!["ps", "-aq", "--filter", &label], vec!["rm", "-f"]),
            (
                vec![
                    "image",
                    "ls",
                    "--filter",
                    &reference,
                    "--format",
                    "{{.Repository}}:{{.Tag}}",
                ],
                vec!["rmi"],
            ),
        ] {
            let out = Command::new("docker").args(&list).output().unwrap();
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

pub(crate) struct CaseServer {
    // Dropped in this order: the server, then the engine cleanup, then the directory.
    pub(crate) server: WharfProcess,
    _cleanup: EngineCleanup,
    pub(crate) root: tempfile::TempDir,
    pub(crate) admin: Client,
    pool_start: u16,
}

fn config(pool_start: u16, pool_size: u16, extra: &str) -> String {
    format!(
        "[cases]\nport_pool_start = {pool_start}\nport_pool_end = {}\nwatch_interval_ms = 300\n\
         readiness_timeout_ms = 30000\n{extra}\n",
        pool_start + pool_size - 1
    )
}

/// A server for case tests with a pool of `pool_size` ports; `None` when Docker tests
/// are skipped (never under `CI=true`).
pub(crate) fn case_server(pool_size: u16, extra: &str) -> Option<CaseServer> {
    if !docker_ready() {
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    let pool_start = free_port_range(pool_size);
    std::fs::write(
        root.path().join("wharf.toml"),
        config(pool_start, pool_size, extra),
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    Some(CaseServer {
        _cleanup: EngineCleanup {
            data_dir: server.data_dir.clone(),
        },
        server,
        root,
        admin,
        pool_start,
    })
}

async fn create_case(client: &Client, body: Value) -> String {
    let (status, case) = client.post("/v1/cases", body).await;
    assert_eq!(status, 201, "{case}");
    // The answer is the stored case; a free build slot may already have taken it.
    assert!(
        ["queued", "cloning"].contains(&case["status"].as_str().unwrap_or_default()),
        "{case}"
    );
    let id = case["case_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("case_"), "{id}");
    id
}

/// Polls the case until its status is one of `wanted` (or it ends otherwise: panic).
pub(crate) async fn wait_status(client: &Client, id: &str, wanted: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (status, case) = client.get(&format!("/v1/cases/{id}")).await;
        assert_eq!(status, 200, "{case}");
        let now = case["status"].as_str().unwrap().to_string();
        if wanted.contains(&now.as_str()) {
            return case;
        }
        if matches!(now.as_str(), "failed" | "stopped") || Instant::now() > deadline {
            let (_, log) = client.get(&format!("/v1/cases/{id}/logs")).await;
            panic!("case {id} is {now}, wanted {wanted:?}: {case}\nlog: {log:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn whole_log(client: &Client, id: &str) -> Vec<Value> {
    let (status, page) = client.get(&format!("/v1/cases/{id}/logs?offset=0")).await;
    assert_eq!(status, 200, "{page}");
    page["lines"].as_array().unwrap().clone()
}

fn ws_request(base: &str, path: &str) -> tokio_tungstenite::tungstenite::http::Request<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    request
}

fn static_case(repo: &Path) -> Value {
    json!({"git_url": repo.to_str().unwrap(), "ref": "main", "container_port": 8000})
}

fn containers_of(case_id: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=wharf.case={case_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

#[tokio::test]
async fn a_static_site_case_runs_and_a_late_subscriber_sees_its_whole_log() {
    let Some(t) = case_server(2, "") else { return };
    let repo = fixture_repo(t.root.path(), "static-site");
    let started = Instant::now();
    let id = create_case(&t.admin, static_case(&repo)).await;
    eprintln!("POST /v1/cases answered in {:?}", started.elapsed());
    let case = wait_status(&t.admin, &id, &["running"]).await;
    let url = case["access_url"].as_str().unwrap();
    assert_eq!(case["host_port"], t.pool_start, "{case}");
    assert!(
        case["container_id"].is_string() && case["image_id"].is_string(),
        "{case}"
    );
    for phase in ["clone_ms", "patch_ms", "build_ms", "start_ms", "ready_ms"] {
        assert!(case["timings"][phase].is_i64(), "{phase}: {case}");
    }
    let page = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("hello from the static-site fixture"),
        "{page}"
    );

    // A subscriber that joins after the build sees every line from offset 0, in order,
    // then live lines, with no gap and no repeat.
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(
        &t.server.base_url,
        &format!("/v1/cases/{id}/logs/stream?offset=0"),
    ))
    .await
    .expect("websocket");
    let stored = whole_log(&t.admin, &id).await;
    let mut received: Vec<Value> = Vec::new();
    while received.len() < stored.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("log lines arrive")
            .unwrap()
            .unwrap();
        received.push(serde_json::from_str(message.to_text().unwrap()).unwrap());
    }
    assert_eq!(&received[..stored.len()], &stored[..]);
    let streams: Vec<&str> = stored.iter().filter_map(|l| l["stream"].as_str()).collect();
    for stream in ["system", "clone", "patch", "build"] {
        assert!(streams.contains(&stream), "no {stream} line: {stored:#?}");
    }
    assert!(
        stored
            .iter()
            .any(|l| l["stream"] == "build" && l["line"].as_str().unwrap().starts_with("Step 1/")),
        "{stored:#?}"
    );
    // A live line (the app's access log) reaches the subscriber too.
    reqwest::get(format!("{url}/live-marker")).await.unwrap();
    let mut saw_live = false;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        let line: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        assert_eq!(line["offset"], received.len(), "gap or repeat: {line}");
        received.push(line.clone());
        if line["line"].as_str().unwrap_or("").contains("/live-marker") {
            saw_live = true;
            break;
        }
    }
    assert!(saw_live, "the live access-log line did not arrive");

    // Stop: the port is given back, the container goes, the subscriber gets the end.
    let (status, stopped) = t
        .admin
        .post(&format!("/v1/cases/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped["host_port"].is_null(), "{stopped}");
    let mut ended = false;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        if let Ok(value) = serde_json::from_str::<Value>(message.to_text().unwrap_or(""))
            && value["end"] == true
        {
            ended = true;
            break;
        }
    }
    assert!(ended, "the follower did not end with the run");
    assert_eq!(containers_of(&id), 0);
    let (status, run) = t.admin.get(&format!("/v1/cases/{id}/run")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(
        run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "{run}"
    );
    let (status, _) = t.admin.delete(&format!("/v1/cases/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = t.admin.get(&format!("/v1/cases/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn env_and_secret_env_reach_the_app_and_the_secret_shows_nowhere() {
    let Some(t) = case_server(1, "") else { return };
    let repo = fixture_repo(t.root.path(), "env-app");
    let (status, created) = t
        .admin
        .post(
            "/v1/cases",
            json!({"git_url": repo.to_str().unwrap(), "ref": "main", "container_port": 8000,
                   "env": {"FOO": "bar"}, "secret_env": {"OPENAI_API_KEY": SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret_env"]["OPENAI_API_KEY"], "***");
    let id = created["case_id"].as_str().unwrap().to_string();
    let case = wait_status(&t.admin, &id, &["running"]).await;
    let seen: Value = reqwest::get(case["access_url"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["FOO"], "bar");
    use sha2::Digest;
    assert_eq!(
        seen["OPENAI_API_KEY_sha256"],
        hex::encode(sha2::Sha256::digest(SECRET.as_bytes()))
    );
    // The app printed the key: its log line is there, masked.
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = whole_log(&t.admin, &id).await;
        if log.iter().any(|l| {
            l["line"]
                .as_str()
                .unwrap()
                .contains("starting with FOO=bar")
        }) {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the app's first line never came: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        log.iter()
            .any(|l| l["line"] == "starting with FOO=bar OPENAI_API_KEY=***"),
        "{log:#?}"
    );
    let mut everything = vec![
        created.to_string(),
        case.to_string(),
        json!(log).to_string(),
        t.admin.get("/v1/cases").await.1.to_string(),
        t.admin
            .get(&format!("/v1/cases/{id}/run"))
            .await
            .1
            .to_string(),
    ];
    let (_, stopped) = t
        .admin
        .post(&format!("/v1/cases/{id}/stop"), json!({}))
        .await;
    everything.push(stopped.to_string());
    everything.push(t.server.logs());
    for text in &everything {
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
    }
    // Nor is it stored in clear.
    let db = std::fs::read(t.server.data_dir.join("wharf.db")).unwrap();
    let wal = std::fs::read(t.server.data_dir.join("wharf.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is stored in clear"
        );
    }
}

#[tokio::test]
async fn a_broken_dockerfile_fails_with_the_failing_step() {
    let Some(t) = case_server(1, "") else { return };
    let repo = fixture_repo(t.root.path(), "broken-build");
    let id = create_case(&t.admin, static_case(&repo)).await;
    let case = wait_status(&t.admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "docker_build_failed", "{case}");
    let message = case["error_message"].as_str().unwrap();
    // The step as the engine counts it (the build's labels add steps at the end).
    assert!(
        message.starts_with("Step 2/") && message.contains("RUN echo \"about to fail\""),
        "{message}"
    );
    assert!(
        message.contains("exit 3") && message.contains("non-zero code: 3"),
        "{message}"
    );
    assert!(
        case["host_port"].is_null() && case["container_id"].is_null(),
        "{case}"
    );
    let log = whole_log(&t.admin, &id).await;
    assert!(
        log.iter()
            .any(|l| l["stream"] == "build" && l["line"] == "about to fail"),
        "{log:#?}"
    );
    // A Dockerfile that is not there is its own code.
    let id = create_case(
        &t.admin,
        json!({"git_url": repo.to_str().unwrap(), "container_port": 8000, "dockerfile": "Nope"}),
    )
    .await;
    let case = wait_status(&t.admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "dockerfile_not_found", "{case}");
    // And a ref that is not there.
    let id = create_case(
        &t.admin,
        json!({"git_url": repo.to_str().unwrap(), "container_port": 8000, "ref": "no-such-branch"}),
    )
    .await;
    let case = wait_status(&t.admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "ref_not_found", "{case}");
}

#[tokio::test]
async fn a_pool_of_two_ports_refuses_the_third_case_until_one_stops() {
    let Some(t) = case_server(2, "") else { return };
    let repo = fixture_repo(t.root.path(), "static-site");
    let first = create_case(&t.admin, static_case(&repo)).await;
    let first_case = wait_status(&t.admin, &first, &["running"]).await;
    let second = create_case(&t.admin, static_case(&repo)).await;
    let second_case = wait_status(&t.admin, &second, &["running"]).await;
    assert_ne!(first_case["host_port"], second_case["host_port"]);
    let third = create_case(&t.admin, static_case(&repo)).await;
    let third_case = wait_status(&t.admin, &third, &["failed"]).await;
    assert_eq!(
        third_case["error_code"], "port_pool_exhausted",
        "{third_case}"
    );
    assert_eq!(containers_of(&third), 0);

    let (status, _) = t
        .admin
        .post(&format!("/v1/cases/{first}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);
    let fourth = create_case(&t.admin, static_case(&repo)).await;
    let fourth_case = wait_status(&t.admin, &fourth, &["running"]).await;
    assert_eq!(
        fourth_case["host_port"], first_case["host_port"],
        "{fourth_case}"
    );
    // The second case still runs on its own port.
    let page = reqwest::get(second_case["access_url"].as_str().unwrap())
        .await
        .unwrap();
    assert!(page.status().is_success());
}

#[tokio::test]
async fn a_pool_port_taken_by_another_program_is_skipped() {
    let Some(t) = case_server(2, "") else { return };
    let squatter = std::net::TcpListener::bind(("127.0.0.1", t.pool_start)).unwrap();
    let repo = fixture_repo(t.root.path(), "static-site");
    let id = create_case(&t.admin, static_case(&repo)).await;
    let case = wait_status(&t.admin, &id, &["running"]).await;
    assert_eq!(case["host_port"], t.pool_start + 1, "{case}");
    let log = whole_log(&t.admin, &id).await;
    let skipped = format!(
        "host port {} is taken outside Wharf; trying another",
        t.pool_start
    );
    assert!(
        log.iter().any(|l| l["line"] == skipped.as_str()),
        "{log:#?}"
    );
    drop(squatter);
}

#[tokio::test]
async fn a_container_exiting_3_fails_the_case_and_frees_its_port() {
    let Some(t) = case_server(1, "") else { return };
    let dying = fixture_repo(t.root.path(), "exit-3");
    let id = create_case(&t.admin, static_case(&dying)).await;
    let case = wait_status(&t.admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "container_exit_nonzero", "{case}");
    assert_eq!(case["exit_code"], 3, "{case}");
    let message = case["error_message"].as_str().unwrap();
    assert!(
        message.contains("code 3") && message.contains("dying on purpose"),
        "{message}"
    );
    assert_eq!(containers_of(&id), 0);
    // The pool has one port: a new case gets it.
    let site = fixture_repo(t.root.path(), "static-site");
    let next = create_case(&t.admin, static_case(&site)).await;
    let next_case = wait_status(&t.admin, &next, &["running"]).await;
    assert_eq!(next_case["host_port"], t.pool_start);
    // The container dying by itself (not through wharf) also frees the port.
    let container = next_case["container_id"].as_str().unwrap();
    let out = Command::new("docker")
        .args(["kill", container])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ended = wait_status(&t.admin, &next, &["failed", "stopped"]).await;
    assert!(ended["host_port"].is_null(), "{ended}");
    let again = create_case(&t.admin, static_case(&site)).await;
    let again_case = wait_status(&t.admin, &again, &["running"]).await;
    assert_eq!(again_case["host_port"], t.pool_start);
}

#[tokio::test]
async fn after_kill_9_a_running_case_keeps_running_and_a_mid_build_case_fails() {
    let Some(mut t) = case_server(2, "") else {
        return;
    };
    let site = fixture_repo(t.root.path(), "static-site");
    let slow = fixture_repo(t.root.path(), "slow-build");
    let running = create_case(&t.admin, static_case(&site)).await;
    let before = wait_status(&t.admin, &running, &["running"]).await;
    let building = create_case(&t.admin, static_case(&slow)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = whole_log(&t.admin, &building).await;
        if log.iter().any(|l| l["line"] == "a slow step") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow build never started: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    t.server.kill(); // SIGKILL
    t.server = WharfProcess::start(t.root.path(), &[]);
    t.admin = Client::new(&t.server, Some(ADMIN_KEY));

    let after = wait_status(&t.admin, &running, &["running"]).await;
    assert_eq!(after["host_port"], before["host_port"], "{after}");
    assert_eq!(after["container_id"], before["container_id"]);
    let page = reqwest::get(after["access_url"].as_str().unwrap())
        .await
        .unwrap();
    assert!(page.status().is_success());
    assert_eq!(containers_of(&running), 1, "orphaned or lost containers");
    let (_, run) = t.admin.get(&format!("/v1/cases/{running}/run")).await;
    assert_eq!(run["state"], "running", "{run}");
    assert!(run.to_string().contains("re-attached"), "{run}");

    let failed = wait_status(&t.admin, &building, &["failed"]).await;
    assert_eq!(failed["error_code"], "run_interrupted", "{failed}");
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap()
            .contains("building"),
        "{failed}"
    );
    let (_, run) = t.admin.get(&format!("/v1/cases/{building}/run")).await;
    assert_eq!(run["state"], "failed", "{run}");

    // The lease survived: a new case gets the other port, not the running case's.
    let other = create_case(&t.admin, static_case(&site)).await;
    let other_case = wait_status(&t.admin, &other, &["running"]).await;
    assert_ne!(other_case["host_port"], after["host_port"]);
    // And the re-attached case still ends properly when stopped.
    let (_, stopped) = t
        .admin
        .post(&format!("/v1/cases/{running}/stop"), json!({}))
        .await;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(containers_of(&running), 0);
}

/// Security: a non-admin key cannot make the server clone its own disk (the data dir, or
/// any path outside `[cases] local_roots`), cannot see another owner's case, and a case
/// asking for overlays in a malformed way or by an unknown name is refused before it runs. Needs no Docker: all of it is
/// decided before anything is cloned.
#[tokio::test]
async fn non_admin_keys_cannot_clone_server_paths_or_see_other_owners_cases() {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("allowed");
    std::fs::create_dir_all(allowed.join("repo")).unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        format!(
            "[cases]\nlocal_roots = [{:?}, {:?}]\n",
            allowed.to_str().unwrap(),
            root.path().to_str().unwrap()
        ),
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (_, key) = admin.post("/v1/keys", json!({"owner": "mallory"})).await;
    let mallory = Client::new(&server, key["key"].as_str());
    let data = server.data_dir.to_str().unwrap().to_string();
    for git_url in [
        data.clone(),
        format!("file://{data}"),
        format!("{data}/../data"),
        "/etc".to_string(),
        "/no/such/dir".to_string(),
    ] {
        let (status, body) = mallory
            .post(
                "/v1/cases",
                json!({"git_url": git_url, "container_port": 80}),
            )
            .await;
        assert_eq!(status, 403, "{git_url}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    for bad in [
        json!({"git_url": "https://user:token@example.com/r.git", "container_port": 80}),
        json!({"git_url": "ext::sh -c id", "container_port": 80}),
        json!({"git_url": "https://example.com/r.git", "ref": "--upload-pack=id", "container_port": 80}),
        json!({"git_url": "https://example.com/r.git", "container_port": 80, "context_dir": "../.."}),
        json!({"git_url": "https://example.com/r.git", "container_port": 80, "target": "sub2api", "version": "latest"}),
        json!({"git_url": "https://example.com/r.git", "container_port": 80, "overlays": ["../fix"]}),
    ] {
        let (status, body) = mallory.post("/v1/cases", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_error", "{body}");
    }
    let (status, body) = mallory
        .post(
            "/v1/cases",
            json!({"git_url": "https://example.com/r.git", "container_port": 80, "target": "x"}),
        )
        .await;
    assert!(
        status == 400
            && body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`target` and `version` go together"),
        "{body}"
    );
    // A named overlay no active pack carries: refused before anything runs.
    let (status, body) = mallory
        .post(
            "/v1/cases",
            json!({"git_url": "https://example.com/r.git", "container_port": 80, "overlays": ["fix"]}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // Another owner's case is not found, in every route.
    if docker_ready() {
        let _cleanup = EngineCleanup {
            data_dir: server.data_dir.clone(),
        };
        let (status, case) = mallory
            .post(
                "/v1/cases",
                json!({"git_url": allowed.join("repo").to_str().unwrap(), "container_port": 80}),
            )
            .await;
        assert_eq!(status, 201, "a path under local_roots is allowed: {case}");
        let id = case["case_id"].as_str().unwrap();
        for path in [
            format!("/v1/cases/{id}"),
            format!("/v1/cases/{id}/logs"),
            format!("/v1/cases/{id}/run"),
        ] {
            let (status, _) = admin.get(&path).await;
            assert_eq!(status, 404, "{path}");
        }
        let (status, _) = admin.post(&format!("/v1/cases/{id}/stop"), json!({})).await;
        assert_eq!(status, 404);
        let (_, listed) = admin.get("/v1/cases").await;
        assert!(!listed.to_string().contains(id));
        let (status, _) = mallory.delete(&format!("/v1/cases/{id}")).await;
        assert_eq!(status, 204);
    }
}

/// Attack: a repository whose symlinks point at host files, used as file, build context and
/// Dockerfile. Links go into the build context as links (resolved inside the image, where
/// the host file is not); a context or Dockerfile that leaves the checkout is refused.
#[tokio::test]
async fn symlinks_in_a_repository_never_bring_host_files_into_a_build() {
    let Some(t) = case_server(1, "") else { return };
    let marker = "host-only-marker-3d9a61";
    let outside = t.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("marker.txt"), marker).unwrap();
    std::fs::write(
        outside.join("Dockerfile"),
        format!("FROM wharf/sandbox-base:1\nRUN echo {marker}\n"),
    )
    .unwrap();
    let repo = t.root.path().join("repos/linky");
    std::fs::create_dir_all(&repo).unwrap();
    let marker_path = outside.join("marker.txt");
    let escapes = format!("../../../../../../../../..{}", marker_path.display());
    std::os::unix::fs::symlink(&marker_path, repo.join("leak-abs")).unwrap();
    std::os::unix::fs::symlink(&escapes, repo.join("leak-rel")).unwrap();
    std::os::unix::fs::symlink(&outside, repo.join("ctx-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("Dockerfile"), repo.join("Dockerfile.link")).unwrap();
    // The build prints what the links hold inside the image, then fails on purpose.
    std::fs::write(
        repo.join("Dockerfile"),
        "FROM wharf/sandbox-base:1\nCOPY . /ctx\n\
         RUN ls -l /ctx; cat /ctx/leak-abs /ctx/leak-rel; echo links-were-read; exit 7\n",
    )
    .unwrap();
    commit_all(&repo);
    let git_url = repo.to_str().unwrap();

    let id = create_case(&t.admin, static_case(&repo)).await;
    let case = wait_status(&t.admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "docker_build_failed", "{case}");
    let log = whole_log(&t.admin, &id).await;
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        text.contains("links-were-read"),
        "the RUN step ran: {log:#?}"
    );
    assert!(text.contains("leak-abs ->"), "copied as a link: {log:#?}");
    assert!(
        !text.contains(marker),
        "a host file reached the build: {log:#?}"
    );
    assert!(!case.to_string().contains(marker), "{case}");

    for (field, value) in [
        ("context_dir", "ctx-link"),
        ("dockerfile", "Dockerfile.link"),
    ] {
        let id = create_case(
            &t.admin,
            json!({"git_url": git_url, "ref": "main", "container_port": 8000, field: value}),
        )
        .await;
        let case = wait_status(&t.admin, &id, &["failed"]).await;
        assert_eq!(
            case["error_code"], "dockerfile_not_found",
            "{field}: {case}"
        );
        let log = serde_json::to_string(&whole_log(&t.admin, &id).await).unwrap();
        assert!(!log.contains(marker), "{field}: {log}");
    }
}
