//! Bounds on what clients and sandboxed code control: the streamed exec's
//! memory, per-owner quotas, event and deleted-row retention, and
//! idempotency keys that never stick to a failed or deleted sandbox.

use super::*;

/// How much the server's resident memory may grow while a sandbox streams
/// 2 GiB to a slow WebSocket reader (README, Sandboxes). The buffers in
/// flight are about 1 MiB (16 chunks, one unfinished line, one record).
const STREAM_RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The server's RSS growth over `baseline`, failing the test past the limit.
fn assert_rss_bounded(server: &WharfProcess, baseline: u64, when: &str) -> u64 {
    let rss = server.rss_kib();
    let growth = rss.saturating_sub(baseline);
    assert!(
        growth < STREAM_RSS_GROWTH_LIMIT_KIB,
        "{when}: server RSS grew by {growth} KiB ({baseline} -> {rss} KiB), limit {STREAM_RSS_GROWTH_LIMIT_KIB} KiB"
    );
    rss
}

/// Whether a process whose command line contains `marker` still runs.
fn process_with_marker(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|cmdline| {
                cmdline
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes())
            })
            .unwrap_or(false)
    })
}

/// 2 GiB of stdout (one endless line of NULs) over the WebSocket exec stream
/// to a reader that takes a record every 20 ms: the command is held back
/// instead of the server buffering, records are cut at 64 KiB, and closing
/// the socket kills the command. Then a 3 MiB stream read to its end: every
/// byte arrives, and what is kept is capped as for a plain exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_exec_stream_reader_holds_the_command_back_not_the_server_memory() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    // The exec may run 120 s: the command ending within the 60 s poll after
    // the socket closes shows that closing killed it.
    slow_stream_stays_bounded(&server, "local", 120_000).await;
}

/// The same through a Docker sandbox's exec agent. The agent is not told
/// when the socket closes, so there the command ends at its timeout (15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_exec_stream_reader_holds_back_a_docker_command_not_the_server_memory() {
    let Some((_root, server, _admin)) = docker_server() else {
        return;
    };
    slow_stream_stays_bounded(&server, "docker", 15_000).await;
}

async fn slow_stream_stays_bounded(server: &WharfProcess, profile: &str, timeout_ms: u64) {
    let admin = Client::new(server, Some(ADMIN_KEY));
    let id = create(&admin, profile).await;
    let baseline = server.rss_kib();

    let marker = format!("wharf-stream-bound-{}-{profile}", std::process::id());
    let mut socket = open_exec_stream(
        server,
        &id,
        json!({"command": format!("head -c 2147483648 /dev/zero; : {marker}"), "timeout_ms": timeout_ms}),
    )
    .await;
    let slow_until = Instant::now() + Duration::from_secs(3);
    let mut records = 0u64;
    let mut peak = baseline;
    while Instant::now() < slow_until {
        peak = peak.max(assert_rss_bounded(server, baseline, "slow reader"));
        let message = match tokio::time::timeout(Duration::from_millis(100), socket.next()).await {
            Err(_) => continue,
            Ok(message) => message,
        };
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = message else {
            panic!("the stream ended early: {message:?}");
        };
        let record: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["type"], "line", "{}", &text[..text.len().min(200)]);
        assert_eq!(record["partial"], true, "a piece of the endless line");
        assert_eq!(record["line"].as_str().unwrap().len(), 64 * 1024);
        records += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(records > 0, "no record arrived in the slow phase");
    assert!(
        process_with_marker(&marker),
        "the command is held back, not finished, while the reader is slow"
    );
    drop(socket);
    poll(
        "the streamed command to be killed after the socket closed",
        || {
            let marker = marker.clone();
            async move {
                if process_with_marker(&marker) {
                    Err("still running".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    let after = assert_rss_bounded(server, baseline, "after the stream closed");
    eprintln!(
        "{profile}: server RSS baseline {baseline} KiB, peak {peak} KiB, after {after} KiB; {records} records read slowly"
    );

    // Read to the end: 3 MiB on one line, past the 1 MiB that is kept.
    let mut socket = open_exec_stream(
        server,
        &id,
        json!({"command": "head -c 3145728 /dev/zero | tr '\\0' a; echo; echo done"}),
    )
    .await;
    let mut streamed = 0usize;
    let mut lines = Vec::new();
    let exit = loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("a record within a minute");
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = message else {
            panic!("the stream ended before its exit record: {message:?}");
        };
        let record: Value = serde_json::from_str(&text).unwrap();
        if record["type"] != "line" {
            break record;
        }
        let line = record["line"].as_str().unwrap();
        assert!(line.len() <= 64 * 1024);
        streamed += line.len();
        if record["partial"] == false {
            lines.push(line.to_string());
        }
    };
    assert_eq!(exit["type"], "exit", "{exit}");
    assert_eq!(exit["exit_code"], 0, "{exit}");
    assert_eq!(
        exit["stdout_truncated"], true,
        "kept output is capped: {exit}"
    );
    assert_eq!(
        streamed,
        3 * 1024 * 1024 + "done".len(),
        "every byte streamed"
    );
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    assert_rss_bounded(server, baseline, "after reading to the end");
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 204);
}

/// An owner's N+1th sandbox is `quota_exceeded` (403); a replay of an
/// existing key is not a new sandbox; deleting one frees a slot; admin keys
/// and other owners are not held by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_past_its_sandbox_quota_gets_quota_exceeded() {
    let root = tempfile::tempdir().unwrap();
    let server = start_with(
        root.path(),
        "[quotas]\nsandboxes_per_owner = 2\n[sandbox]\ngc_interval_ms = 200\n",
    );
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let key_of = |owner: &'static str| {
        let admin = admin.clone();
        async move {
            let (status, key) = admin.post("/v1/keys", json!({"owner": owner})).await;
            assert_eq!(status, 201, "{key}");
            key["key"].as_str().unwrap().to_string()
        }
    };
    let tenant = Client::new(&server, Some(&key_of("tenant").await));
    let other = Client::new(&server, Some(&key_of("other").await));

    let keyed = |client: &Client, key: &str| {
        client
            .request(Method::POST, "/v1/sandboxes")
            .header("Idempotency-Key", key.to_string())
            .json(&json!({"profile": "local"}))
    };
    let (status, first) = tenant.send(keyed(&tenant, "quota-1")).await;
    assert_eq!(status, 201, "{first}");
    let second = create(&tenant, "local").await;
    let (status, refused) = tenant
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("quota_exceeded")),
        "{refused}"
    );
    assert_eq!(refused["error"]["retriable"], false);
    // A replay is the same sandbox, not another one.
    let (status, replay) = tenant.send(keyed(&tenant, "quota-1")).await;
    assert_eq!((status, &replay["id"]), (200, &first["id"]), "{replay}");
    // Stopping keeps the slot; nothing refused was left behind.
    let (status, _) = tenant
        .post(&format!("/v1/sandboxes/{second}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, refused) = tenant
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 403, "{refused}");
    let (_, page) = tenant.get("/v1/sandboxes").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");

    // Other owners and admin keys are not held by the tenant's quota.
    create(&other, "local").await;
    for _ in 0..3 {
        create(&admin, "local").await;
    }

    // Deleting one frees a slot.
    let (status, _) = tenant.delete(&format!("/v1/sandboxes/{second}")).await;
    assert_eq!(status, 204);
    create(&tenant, "local").await;
    let (status, _) = tenant
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 403);
}

/// Issue 15, point 3: an idempotency key whose sandbox was deleted is
/// forgotten; a replay creates a new sandbox instead of `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_replay_after_delete_creates_a_new_sandbox() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let create_keyed = || async {
        admin
            .send(
                admin
                    .request(Method::POST, "/v1/sandboxes")
                    .header("Idempotency-Key", "job-after-delete")
                    .json(&json!({"profile": "local"})),
            )
            .await
    };
    let (status, first) = create_keyed().await;
    assert_eq!(status, 201, "{first}");
    let first_id = first["id"].as_str().unwrap().to_string();
    let (status, _) = admin.delete(&format!("/v1/sandboxes/{first_id}")).await;
    assert_eq!(status, 204);

    let (status, again) = create_keyed().await;
    assert_eq!(
        status, 201,
        "a new sandbox, not a replay of the deleted one: {again}"
    );
    assert_ne!(again["id"], first["id"]);
    assert_eq!(again["status"], "running");
    // The key now names the new sandbox.
    let (status, replay) = create_keyed().await;
    assert_eq!((status, &replay["id"]), (200, &again["id"]), "{replay}");
}

/// Issue 10, point 10: a create whose driver fails (a Docker image that is
/// not there, and cannot be pulled here) leaves no sandbox and does not stick
/// to its key: the retry tries again (the same error while the image is
/// missing), and succeeds once the image exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_create_whose_driver_failed_is_tried_again() {
    let absent = format!(
        "wharf/test-absent-{}-{}:1",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let config = format!("[profiles.absent]\ndriver = \"docker\"\nimage = \"{absent}\"\n");
    let Some((_root, _server, admin)) = docker_server_with(&config) else {
        return;
    };
    let create_keyed = || async {
        admin
            .send(
                admin
                    .request(Method::POST, "/v1/sandboxes")
                    .header("Idempotency-Key", "retry-after-failure")
                    .json(&json!({"profile": "absent"})),
            )
            .await
    };
    let (status, failed) = create_keyed().await;
    assert!(status >= 400, "the image is missing: {status} {failed}");
    let code = failed["error"]["code"].clone();
    let (again_status, again) = create_keyed().await;
    assert_eq!(
        (again_status, &again["error"]["code"]),
        (status, &code),
        "the retry tries again and fails the same way, never a cached failed sandbox: {again}"
    );
    let (_, page) = admin.get("/v1/sandboxes").await;
    assert_eq!(
        page["items"],
        json!([]),
        "a failed create leaves no sandbox"
    );

    docker(&["tag", BASE_IMAGE, &absent]);
    let (status, created) = create_keyed().await;
    docker(&["rmi", &absent]);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "running", "{created}");
    let (status, replay) = create_keyed().await;
    assert_eq!((status, &replay["id"]), (200, &created["id"]), "{replay}");
    let (status, _) = admin
        .delete(&format!(
            "/v1/sandboxes/{}",
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
}

/// GC keeps the newest `events_per_sandbox` events of each sandbox, and
/// removes a deleted sandbox (its row and event log) after
/// `deleted_retention_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_trims_event_logs_and_removes_deleted_sandboxes() {
    let root = tempfile::tempdir().unwrap();
    let server = start_with(
        root.path(),
        "[sandbox]\ngc_interval_ms = 100\nevents_per_sandbox = 3\ndeleted_retention_secs = 0\n",
    );
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let id = create(&admin, "local").await;
    for n in 0..6 {
        exec(&admin, &id, json!({"argv": ["echo", n.to_string()]})).await;
    }
    let events_path = format!("/v1/sandboxes/{id}/events?after=0");
    let trimmed = admin
        .wait_for(&events_path, "the event log trimmed to 3", |page| {
            page["items"].as_array().unwrap().len() == 3
        })
        .await;
    let kinds: Vec<&str> = trimmed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["exec", "exec", "exec"], "the newest are kept");

    let (status, _) = admin.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, 204);
    poll("the deleted sandbox's row and events removed", || async {
        match admin.get(&events_path).await {
            (404, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    for action in ["events_trimmed", "deleted_purged"] {
        let series = format!("wharf_sandbox_gc_actions_total{{action=\"{action}\"}}");
        let (count, _) = wait_metric(&server, &series).await;
        assert!(count >= 1.0, "{series} counts what GC removed: {count}");
    }
}
