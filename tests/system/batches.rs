//! Batches through the real binary: script tasks in Docker sandboxes with a mix of
//! successes, compile errors, runtime errors, timeouts and a step bound, whose export's
//! error classes match what each task did; a queue limit of 2 never exceeded (measured from
//! the sandboxes' events); and invalid JSONL lines reported by number while the valid ones
//! run (on the process driver, which needs no Docker).
//!
//! The Docker batch is the issue's 50 tasks: twelve kinds, then the cheaper ones repeated.
//!
//! A real driver fault: a Docker profile whose image tag is missing when the task's first
//! sandbox is created (the engine refuses the container) and put back during the retry
//! backoff. The task is retried as an infrastructure failure and succeeds, and nothing counts
//! it as failed. The same profile then shows the image digest in the result-cache key: a
//! rebuilt image under the same tag misses the cache.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess};

use crate::adapters::install_core;
use crate::sandboxes::docker_server_with;

/// One queue of two, Docker sandboxes by default.
const DOCKER_CONFIG: &str = r#"
[batches]
default_profile = "docker"
poll_interval_ms = 200

[batches.queues.code]
concurrency = 2
"#;

fn python(code: &str) -> Value {
    json!({"capability": "python", "operation": "run", "input": {"code": code}})
}

fn shell(command: &str) -> Value {
    json!({"capability": "shell", "operation": "run", "input": {"command": command}})
}

fn task(id: &str, steps: Vec<Value>) -> Value {
    json!({"task_id": id, "task_type": "code", "description": format!("task {id}"), "steps": steps})
}

/// Submits a JSONL body; returns (status, answer).
async fn submit(client: &Client, query: &str, body: String) -> (u16, Value) {
    client
        .send(
            client
                .request(Method::POST, &format!("/v1/batches{query}"))
                .header("content-type", "application/x-ndjson")
                .body(body),
        )
        .await
}

/// Waits until no task of the batch is queued or running; returns the batch.
async fn finished(client: &Client, batch_id: &str) -> Value {
    client
        .wait_for(
            &format!("/v1/batches/{batch_id}"),
            "the batch to finish",
            |b| b["status"] == "finished",
        )
        .await
}

/// The export as JSON lines.
async fn export(client: &Client, batch_id: &str, format: &str) -> Vec<Value> {
    let response = client
        .request(
            Method::GET,
            &format!("/v1/batches/{batch_id}/export?format={format}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "export content type"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// A server on the process driver with `config` as its `wharf.toml` and core-adapters
/// active.
async fn process_server(config: &str) -> (tempfile::TempDir, WharfProcess, Client) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("wharf.toml"), config).unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_core(&server, &admin).await;
    (root, server, admin)
}

#[tokio::test]
async fn script_tasks_are_classed_by_what_they_did_and_a_queue_never_exceeds_its_limit() {
    let Some((_root, server, admin)) = docker_server_with(DOCKER_CONFIG) else {
        return;
    };
    install_core(&server, &admin).await;
    // task id -> (steps, timeout in seconds, max_steps, expected class or None)
    type Case<'a, Id> = (Id, Vec<Value>, Option<f64>, Option<u32>, Option<&'a str>);
    let base: Vec<Case<&str>> = vec![
        (
            "ok-python",
            vec![python("result = 6 * 7")],
            None,
            None,
            None,
        ),
        ("ok-shell", vec![shell("echo hi")], None, None, None),
        (
            "ok-two-steps",
            vec![
                python("open('n.txt', 'w').write('5')"),
                shell("test \"$(cat n.txt)\" = 5"),
            ],
            None,
            None,
            None,
        ),
        (
            "syntax-1",
            vec![python("def f(:\n  pass")],
            None,
            None,
            Some("compile_error"),
        ),
        (
            "syntax-2",
            vec![python("x = = 1")],
            None,
            None,
            Some("compile_error"),
        ),
        (
            "syntax-after-ok",
            vec![shell("true"), python("if True print(1)")],
            None,
            None,
            Some("compile_error"),
        ),
        (
            "raise",
            vec![python("1 / 0")],
            None,
            None,
            Some("runtime_error"),
        ),
        (
            "exit-3",
            vec![shell("exit 3")],
            None,
            None,
            Some("runtime_error"),
        ),
        (
            "sys-exit",
            vec![python("import sys\nsys.exit(2)")],
            None,
            None,
            Some("runtime_error"),
        ),
        (
            "task-deadline",
            vec![python("import time\ntime.sleep(60)")],
            Some(2.0),
            None,
            Some("timeout"),
        ),
        (
            "command-timeout",
            vec![json!({"capability": "shell", "operation": "run",
                        "input": {"command": "sleep 60", "timeout_ms": 500}})],
            None,
            None,
            Some("timeout"),
        ),
        (
            "too-many-steps",
            vec![shell("true"), shell("true"), shell("true")],
            None,
            Some(2),
            Some("max_steps_exceeded"),
        ),
    ];
    // The issue's batch of 50: the twelve above, then cheaper kinds of them again (no
    // two-second deadline) under new ids.
    let repeatable = [
        "ok-python",
        "ok-shell",
        "syntax-2",
        "raise",
        "exit-3",
        "command-timeout",
        "too-many-steps",
    ];
    let mut cases: Vec<Case<String>> = base
        .iter()
        .map(|(id, steps, timeout, max_steps, class)| {
            (id.to_string(), steps.clone(), *timeout, *max_steps, *class)
        })
        .collect();
    for n in 0..50 - base.len() {
        let kind = repeatable[n % repeatable.len()];
        let (_, steps, timeout, max_steps, class) =
            base.iter().find(|c| c.0 == kind).unwrap().clone();
        cases.push((format!("{kind}-{n}"), steps, timeout, max_steps, class));
    }
    let succeeded = cases.iter().filter(|c| c.4.is_none()).count();
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for class in cases.iter().filter_map(|c| c.4) {
        *classes.entry(class).or_default() += 1;
    }
    let body: Vec<String> = cases
        .iter()
        .map(|(id, steps, timeout, max_steps, _)| {
            let mut line = task(id, steps.clone());
            if let Some(timeout) = timeout {
                line["timeout"] = json!(timeout);
            }
            if let Some(max_steps) = max_steps {
                line["max_steps"] = json!(max_steps);
            }
            line.to_string()
        })
        .collect();
    let (status, batch) = submit(&admin, "", body.join("\n")).await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch["total"], 50, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();

    let batch = finished(&admin, &batch_id).await;
    assert_eq!(batch["counts"]["succeeded"], succeeded, "{batch}");
    assert_eq!(batch["counts"]["failed"], 50 - succeeded, "{batch}");
    assert_eq!(batch["error_classes"], json!(classes), "{batch}");
    assert_eq!(
        batch["sides"],
        json!({"task": 50 - succeeded, "infrastructure": 0}),
        "{batch}"
    );

    let trajectories = export(&admin, &batch_id, "wharf").await;
    assert_eq!(trajectories.len(), 50);
    let by_id: BTreeMap<&str, &Value> = trajectories
        .iter()
        .map(|t| (t["task_id"].as_str().unwrap(), t))
        .collect();
    for (id, steps, _, max_steps, expected) in &cases {
        let t = by_id[id.as_str()];
        assert_eq!(t["schema"], "wharf.trajectory.v1");
        assert_eq!(t["error_class"].as_str(), *expected, "{id}: {t}");
        assert_eq!(t["success"], expected.is_none(), "{id}: {t}");
        assert_eq!(t["planner"], "script");
        assert_eq!(t["profile"], "docker");
        assert!(
            t["image_digest"].as_str().unwrap().starts_with("sha256:"),
            "{id}: {t}"
        );
        assert!(t["pack_versions"]["core-adapters"].is_string(), "{id}: {t}");
        assert_eq!(t["attempts"], 1, "{id}: {t}");
        let recorded = t["steps"].as_array().unwrap();
        let expected_steps = max_steps.map_or(steps.len(), |m| m as usize);
        assert_eq!(recorded.len(), expected_steps, "{id}: {t}");
        for (i, step) in recorded.iter().enumerate() {
            assert_eq!(step["step_id"], i + 1);
            assert_eq!(step["action_type"], "capability_call");
            assert_eq!(step["params"], steps[i]["input"], "{id}");
            assert!(step["duration_ms"].as_f64().unwrap() >= 0.0);
        }
        let last = recorded.last().unwrap();
        match expected {
            None => {
                assert!(recorded.iter().all(|s| s["success"] == true), "{id}: {t}");
                assert!(t["final_result"].is_object(), "{id}: {t}");
                assert!(t["error_message"].is_null());
            }
            Some("max_steps_exceeded") => {
                assert!(recorded.iter().all(|s| s["success"] == true), "{id}: {t}");
                assert_eq!(t["side"], "task");
            }
            Some(class) => {
                assert_eq!(last["success"], false, "{id}: {t}");
                assert_eq!(last["error_class"], *class, "{id}: {t}");
                assert!(last["error_message"].is_string(), "{id}: {t}");
                assert_eq!(t["side"], "task");
            }
        }
    }
    assert_eq!(by_id["ok-python"]["final_result"]["result"], 42);
    assert!(
        by_id["syntax-1"]["error_message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{}",
        by_id["syntax-1"]
    );

    // The trajectory route answers the same as the export line.
    let one = by_id["raise"];
    let (status, trajectory) = admin
        .get(&format!(
            "/v1/tasks/{}/trajectory",
            one["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(&trajectory, one);

    // The messages export: a user message, then a tool call and its answer per step, with
    // the schemas of the tools offered.
    let messages = export(&admin, &batch_id, "messages").await;
    assert_eq!(messages.len(), 50);
    let two = messages
        .iter()
        .find(|m| m["task_id"] == "ok-two-steps")
        .unwrap();
    let roles: Vec<&str> = two["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant", "tool"]);
    let tool_names: Vec<&str> = two["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tool_names, ["python_run", "shell_run"]);
    assert_eq!(
        two["tools"][0]["function"]["parameters"]["properties"]["code"]["type"],
        "string"
    );

    // ATIF: a user step, then one agent step per call with its observation.
    let atif = export(&admin, &batch_id, "atif").await;
    assert_eq!(atif.len(), 50);
    let two = atif
        .iter()
        .find(|t| t["extra"]["task_id"] == "ok-two-steps")
        .unwrap();
    assert_eq!(two["schema_version"], "ATIF-v1.7");
    let sources: Vec<&str> = two["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["user", "agent", "agent"]);
    assert_eq!(
        two["steps"][1]["tool_calls"][0]["function_name"],
        "python_run"
    );

    // The queue limit, from the sandboxes' own events: sandbox i lives from its `created`
    // to its `deleted` event (event numbers order all sandboxes' events).
    let (status, tasks) = admin
        .get(&format!("/v1/batches/{batch_id}/tasks?limit=100"))
        .await;
    assert_eq!(status, 200);
    let mut edges = Vec::new();
    for task in tasks.as_array().unwrap() {
        let sandbox = task["sandbox_id"].as_str().unwrap();
        let (status, events) = admin
            .get(&format!("/v1/sandboxes/{sandbox}/events?limit=500"))
            .await;
        assert_eq!(status, 200, "{events}");
        let seq_of = |kind: &str| {
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["kind"] == kind)
                .unwrap_or_else(|| panic!("sandbox {sandbox} has no {kind} event: {events}"))["seq"]
                .as_i64()
                .unwrap()
        };
        edges.push((seq_of("created"), 1));
        edges.push((seq_of("deleted"), -1));
    }
    edges.sort();
    let (mut live, mut most) = (0, 0);
    for (_, change) in edges {
        live += change;
        most = most.max(live);
    }
    assert_eq!(
        most, 2,
        "at most 2 sandboxes of the `code` queue at once, and 2 were"
    );
    // Every task's sandbox is gone.
    let (_, sandboxes) = admin.get("/v1/sandboxes").await;
    assert_eq!(sandboxes["items"], json!([]), "{sandboxes}");

    let metrics = server.metrics().await;
    for line in [
        "wharf_tasks_submitted_total{task_type=\"code\"} 50".to_string(),
        format!(
            "wharf_tasks_completed_total{{status=\"succeeded\",task_type=\"code\"}} {succeeded}"
        ),
        format!(
            "wharf_tasks_failed_total{{error_class=\"compile_error\",task_type=\"code\"}} {}",
            classes["compile_error"]
        ),
        "wharf_queue_depth{task_type=\"code\"} 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "metrics lack {line}");
    }
}

#[tokio::test]
async fn invalid_lines_are_reported_by_number_and_the_valid_ones_run() {
    let (_root, server, admin) =
        process_server("[batches]\nmax_body_bytes = 65536\npoll_interval_ms = 200\n").await;
    let good = |id: &str| task(id, vec![shell("echo ok")]).to_string();
    let lines = [
        good("a"),                          // 1
        "{\"task_id\": \"b\",".to_string(), // 2
        String::new(),                      // 3
        good("a"),                          // 4
        json!({"task_id": "c", "task_type": "code", "description": "x", "planner": "llm",
               "steps": [shell("true")]})
        .to_string(), // 5
        json!({"task_id": "d", "task_type": "code", "description": "x", "profile": "nope",
               "steps": [shell("true")]})
        .to_string(), // 6
        good("e"),                          // 7
        json!({"task_id": "f", "task_type": "code", "description": "x"}).to_string(), // 8
    ];
    let body = lines.join("\n");

    // strict: nothing is queued.
    let (status, refused) = submit(&admin, "?strict=true", body.clone()).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "batch_invalid");
    let message = refused["error"]["message"].as_str().unwrap();
    for n in [2, 4, 5, 6, 8] {
        assert!(message.contains(&format!("line {n}:")), "{message}");
    }

    let (status, batch) = submit(&admin, "", body).await;
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch["total"], 2);
    let invalid: Vec<(i64, String)> = batch["invalid_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["line"].as_i64().unwrap(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        invalid.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [2, 4, 5, 6, 8],
        "{batch}"
    );
    assert!(invalid[1].1.contains("duplicate task_id") && invalid[1].1.contains("line 1"));
    assert!(invalid[2].1.contains("planner"), "{}", invalid[2].1);
    assert!(invalid[3].1.contains("nope"), "{}", invalid[3].1);
    assert!(invalid[4].1.contains("steps"), "{}", invalid[4].1);
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let batch = finished(&admin, &batch_id).await;
    assert_eq!(batch["counts"]["succeeded"], 2, "{batch}");
    let (_, tasks) = admin
        .get(&format!("/v1/batches/{batch_id}/tasks?status=succeeded"))
        .await;
    let lines: Vec<i64> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [1, 7]);

    // Nothing valid at all, and a body past the bound.
    let (status, refused) = submit(&admin, "", "nope\n".to_string()).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (422, json!("batch_invalid"))
    );
    let (status, refused) = submit(&admin, "", "x".repeat(65537)).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );

    // Another owner sees none of it.
    let (status, key) = admin
        .post("/v1/keys", json!({"owner": "someone-else"}))
        .await;
    assert_eq!(status, 201, "{key}");
    let other = Client::new(&server, key["key"].as_str());
    for path in [
        format!("/v1/batches/{batch_id}"),
        format!("/v1/batches/{batch_id}/tasks"),
        format!("/v1/batches/{batch_id}/export"),
        format!("/v1/tasks/{}/trajectory", tasks[0]["id"].as_str().unwrap()),
    ] {
        let (status, answer) = other.get(&path).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _) = other
        .post(&format!("/v1/batches/{batch_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_restart_mid_batch_ends_every_task_exactly_once() {
    restart_mid_batch("local").await;
}

#[tokio::test]
async fn a_restart_mid_batch_on_docker_ends_every_task_exactly_once() {
    if crate::sandboxes::docker_ready() {
        restart_mid_batch("docker").await;
    }
}

/// `kill -9` of the server while two tasks of `profile` run, then a restart on the same
/// data: every task ends exactly once, the two that were running are queued again and run
/// a second time, and no sandbox is left.
async fn restart_mid_batch(profile: &str) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        format!(
            "[batches]\npoll_interval_ms = 200\ndefault_concurrency = 2\n\
             default_profile = \"{profile}\"\n"
        ),
    )
    .unwrap();
    let mut server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_core(&server, &admin).await;
    let body: Vec<String> = (0..6)
        .map(|i| task(&format!("slow-{i}"), vec![shell("sleep 3; echo done")]).to_string())
        .collect();
    let (status, batch) = submit(&admin, "", body.join("\n")).await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    // Two tasks mid-run: picked up, and their sandboxes made.
    admin
        .wait_for(
            &format!("/v1/batches/{batch_id}/tasks?status=running"),
            "two running tasks with their sandboxes",
            |tasks| {
                let tasks = tasks.as_array().unwrap();
                tasks.len() == 2 && tasks.iter().all(|t| t["sandbox_id"].is_string())
            },
        )
        .await;
    server.kill(); // SIGKILL, mid-task
    let server = WharfProcess::start(root.path(), &[]);
    let admin = admin.rebase(&server);
    let batch = finished(&admin, &batch_id).await;
    assert_eq!(batch["counts"]["succeeded"], 6, "{batch}");
    assert_eq!(batch["total"], 6, "{batch}");
    let (_, tasks) = admin.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let mut requeued = 0;
    for task in tasks.as_array().unwrap() {
        let (status, run) = admin
            .get(&format!("/v1/tasks/{}/run", task["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "{run}");
        let states: Vec<&str> = run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to"].as_str().unwrap())
            .collect();
        let ends = states
            .iter()
            .filter(|s| ["succeeded", "failed", "cancelled"].contains(s))
            .count();
        assert_eq!(ends, 1, "{}: {states:?}", task["task_id"]);
        assert_eq!(states.last(), Some(&"succeeded"));
        if states == ["queued", "running", "queued", "running", "succeeded"] {
            // Running at the kill: queued again, with why, and run a second time.
            requeued += 1;
            assert_eq!(task["attempts"], 2, "{task}");
            let reason = run["transitions"][2]["reason"].as_str().unwrap();
            assert!(reason.contains("restarted"), "{run}");
        } else {
            assert_eq!(states, ["queued", "running", "succeeded"], "{task}");
            // 2 only for a task picked from its queue in the instant before the kill, before
            // its run was claimed.
            assert!(task["attempts"] == 1 || task["attempts"] == 2, "{task}");
        }
    }
    assert_eq!(
        requeued, 2,
        "the two tasks running at the kill were queued again"
    );
    for t in export(&admin, &batch_id, "wharf").await {
        assert_eq!(t["profile"], profile, "{t}");
    }
    let (_, sandboxes) = admin.get("/v1/sandboxes").await;
    assert_eq!(sandboxes["items"], json!([]), "{sandboxes}");
}

#[tokio::test]
async fn a_sandbox_create_failure_is_infrastructure_retried_and_counted_only_when_it_lasts() {
    // The owner may hold one sandbox: while it holds one, a task's sandbox cannot be made.
    let (_root, server, admin) = process_server("[quotas]\nsandboxes_per_owner = 1\n\n[batches]\npoll_interval_ms = 200\nretry_backoff_ms = 2000\nmax_attempts = 2\n").await;
    let (status, key) = admin.post("/v1/keys", json!({"owner": "carol"})).await;
    assert_eq!(status, 201, "{key}");
    let carol = Client::new(&server, key["key"].as_str());
    let (status, blocker) = carol
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201, "{blocker}");
    let blocker = blocker["id"].as_str().unwrap().to_string();

    // Injected: the first attempt's create fails; the sandbox is freed during the backoff.
    let (status, batch) = submit(
        &carol,
        "",
        task("flaky", vec![shell("echo ok")]).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let (_, tasks) = carol.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    carol
        .wait_for(
            &format!("/v1/tasks/{task_id}/logs"),
            "a retry in the task's log",
            |log| {
                log["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["line"].as_str().unwrap().contains("quota_exceeded"))
            },
        )
        .await;
    let (status, _) = carol.delete(&format!("/v1/sandboxes/{blocker}")).await;
    assert_eq!(status, 204);
    let batch = finished(&carol, &batch_id).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(batch["error_classes"], json!({}), "not counted: {batch}");
    let (_, run) = carol.get(&format!("/v1/tasks/{task_id}/run")).await;
    assert_eq!(run["steps"][0]["attempts"], 2, "{run}");
    let (_, trajectory) = carol.get(&format!("/v1/tasks/{task_id}/trajectory")).await;
    assert_eq!(trajectory["attempts"], 2, "{trajectory}");
    assert_eq!(
        trajectory["steps"].as_array().unwrap().len(),
        1,
        "{trajectory}"
    );

    // A failure that outlasts the retries counts, on the infrastructure side.
    let (status, blocker) = carol
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201, "{blocker}");
    let (status, batch) = submit(
        &carol,
        "",
        task("blocked", vec![shell("echo ok")]).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let batch = finished(&carol, &batch_id).await;
    assert_eq!(
        batch["error_classes"],
        json!({"sandbox_error": 1}),
        "{batch}"
    );
    assert_eq!(batch["sides"]["infrastructure"], 1, "{batch}");
    let (_, tasks) = carol.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let blocked = &tasks[0];
    assert_eq!(blocked["side"], "infrastructure", "{blocked}");
    assert_eq!(blocked["attempts"], 2, "{blocked}");
    assert!(
        blocked["error_message"]
            .as_str()
            .unwrap()
            .contains("quota_exceeded"),
        "{blocked}"
    );
    assert!(
        server.metrics().await.contains(
            "wharf_tasks_failed_total{error_class=\"sandbox_error\",task_type=\"other\"} 1"
        )
    );
}

#[tokio::test]
async fn the_cli_submits_follows_and_sums_up() {
    let (root, server, _admin) = process_server("[batches]\npoll_interval_ms = 200\n").await;
    let file = root.path().join("tasks.jsonl");
    let lines = [
        task("fine", vec![shell("echo ok")]).to_string(),
        task("broken", vec![shell("exit 4")]).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output = std::process::Command::new(wharf_e2e::wharf_bin())
        .args(["batch", "submit", "--follow"])
        .arg(&file)
        .env("WHARF_URL", &server.base_url)
        .env("WHARF_API_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "a task failed: {stdout}{stderr}"
    );
    assert!(stdout.contains("2 task(s) queued"), "{stdout}");
    assert!(stdout.contains("succeeded                  1"), "{stdout}");
    assert!(
        stdout.contains("runtime_error        task                  1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("] 2/2  succeeded 1  failed 1"),
        "the last progress line: {stderr}"
    );
    // Without a key it says what to set, and submits nothing.
    let output = std::process::Command::new(wharf_e2e::wharf_bin())
        .args(["batch", "submit"])
        .arg(&file)
        .env("WHARF_URL", &server.base_url)
        .env_remove("WHARF_API_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("WHARF_API_KEY"));
}

#[tokio::test]
async fn a_repeated_batch_with_the_cache_on_is_served_from_the_cache_and_says_so() {
    let (_root, server, admin) = process_server("[batches]\npoll_interval_ms = 200\n").await;
    let body = || {
        [
            task("one", vec![shell("echo one")]).to_string(),
            task("two", vec![shell("echo two"), shell("echo three")]).to_string(),
        ]
        .join("\n")
    };
    let run = |query: &'static str| {
        let admin = admin.clone();
        let body = body();
        async move {
            let (status, batch) = submit(&admin, query, body).await;
            assert_eq!(status, 201, "{batch}");
            let id = batch["batch_id"].as_str().unwrap().to_string();
            let batch = finished(&admin, &id).await;
            assert_eq!(batch["counts"]["succeeded"], 2, "{batch}");
            (batch, export(&admin, &id, "wharf").await)
        }
    };
    let (first, ran) = run("?cache=true").await;
    assert_eq!(first["cache"], json!({"hits": 0, "misses": 2}), "{first}");
    let (second, served) = run("?cache=true").await;
    assert_eq!(second["cache"], json!({"hits": 2, "misses": 0}), "{second}");
    for (original, copy) in ran.iter().zip(&served) {
        assert_eq!(copy["cache_hit"], true, "{copy}");
        assert_eq!(copy["cache_source"], original["id"], "{copy}");
        assert!(copy["sandbox_id"].is_null(), "no sandbox for a hit: {copy}");
        assert_eq!(copy["steps"], original["steps"]);
        assert_eq!(copy["final_result"], original["final_result"]);
        assert_eq!(original["cache_hit"], false);
    }
    // Another owner's identical tasks never see this owner's cache.
    let (status, key) = admin.post("/v1/keys", json!({"owner": "dave"})).await;
    assert_eq!(status, 201, "{key}");
    let dave = Client::new(&server, key["key"].as_str());
    let (status, batch) = submit(&dave, "?cache=true", body()).await;
    assert_eq!(status, 201, "{batch}");
    let batch = finished(&dave, batch["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["cache"], json!({"hits": 0, "misses": 2}), "{batch}");
    // Without the cache the same tasks run again.
    let (third, again) = run("").await;
    assert_eq!(third["cache"], json!({"hits": 0, "misses": 0}), "{third}");
    assert!(
        again
            .iter()
            .all(|t| t["cache_hit"] == false && t["sandbox_id"].is_string())
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains("wharf_cache_hits_total 2"), "{metrics}");
    assert!(metrics.contains("wharf_cache_misses_total 4"), "{metrics}");
}

#[tokio::test]
async fn cancelling_a_batch_stops_its_running_task_and_ends_the_queued_ones() {
    let (_root, _server, admin) =
        process_server("[batches]\npoll_interval_ms = 200\ndefault_concurrency = 1\n").await;
    let body: Vec<String> = (0..4)
        .map(|i| task(&format!("long-{i}"), vec![shell("sleep 60")]).to_string())
        .collect();
    let (status, batch) = submit(&admin, "", body.join("\n")).await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let running = admin
        .wait_for(
            &format!("/v1/batches/{batch_id}/tasks?status=running"),
            "a running task with its sandbox",
            |tasks| tasks[0]["sandbox_id"].is_string(),
        )
        .await;
    let sandbox = running[0]["sandbox_id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let (status, batch) = admin
        .post(&format!("/v1/batches/{batch_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{batch}");
    assert!(
        started.elapsed().as_secs() < 20,
        "the cancel does not wait for `sleep 60`"
    );
    assert_eq!(batch["status"], "cancelled", "{batch}");
    assert_eq!(batch["counts"]["cancelled"], 4, "{batch}");
    let (_, sandboxes) = admin.get("/v1/sandboxes").await;
    assert_eq!(
        sandboxes["items"],
        json!([]),
        "{sandbox} is gone: {sandboxes}"
    );
    // Nothing starts afterwards, and each run ended once, cancelled.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, tasks) = admin.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    for task in tasks.as_array().unwrap() {
        assert_eq!(task["status"], "cancelled", "{task}");
        let (_, run) = admin
            .get(&format!("/v1/tasks/{}/run", task["id"].as_str().unwrap()))
            .await;
        let last: Vec<&str> = run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to"].as_str().unwrap())
            .collect();
        assert_eq!(last.last(), Some(&"cancelled"), "{run}");
        assert_eq!(
            last.iter().filter(|s| **s == "cancelled").count(),
            1,
            "{run}"
        );
    }
    let (status, again) = admin
        .post(&format!("/v1/batches/{batch_id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, again["counts"].clone()),
        (200, batch["counts"].clone())
    );
}

/// Removes a test's image tag when the test ends, however it ends.
struct ImageTag(String);

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", &self.0])
            .output();
    }
}

/// Builds `tag` as a new image on the base image (a label makes it another image id).
fn build_image(tag: &str, label: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build runs");
    write!(
        child.stdin.take().unwrap(),
        "FROM {}\nLABEL wharf.test={label}\n",
        crate::sandboxes::BASE_IMAGE
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_docker_create_failure_is_infrastructure_retried_and_a_new_image_misses_the_cache() {
    if !crate::sandboxes::docker_ready() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = ImageTag(format!(
        "wharf/batch-fault-test:{}-{nanos}",
        std::process::id()
    ));
    let config = format!(
        "[profiles.flaky]\ndriver = \"docker\"\nimage = \"{}\"\n\n\
         [batches]\ndefault_profile = \"flaky\"\npoll_interval_ms = 200\n\
         retry_backoff_ms = 3000\nmax_attempts = 3\n",
        tag.0
    );
    let Some((_root, server, admin)) = docker_server_with(&config) else {
        return;
    };
    install_core(&server, &admin).await;

    // The fault: the profile's image is not in the engine, so the Docker engine refuses to
    // create the container (404 "No such image"). It is put back during the retry backoff.
    let (status, batch) = submit(
        &admin,
        "",
        task("flaky-create", vec![shell("echo made")]).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let (_, tasks) = admin.get(&format!("/v1/batches/{batch_id}/tasks")).await;
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    let log = admin
        .wait_for(
            &format!("/v1/tasks/{task_id}/logs"),
            "the failed create in the task's log",
            |log| {
                log["lines"].as_array().unwrap().iter().any(|l| {
                    l["line"]
                        .as_str()
                        .unwrap()
                        .contains("not available locally")
                })
            },
        )
        .await;
    let failed_create = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .find(|l| l.contains("not available locally"))
        .unwrap()
        .to_string();
    assert!(
        failed_create.contains("creating a sandbox"),
        "{failed_create}"
    );
    crate::sandboxes::docker(&["tag", crate::sandboxes::BASE_IMAGE, &tag.0]);

    let batch = finished(&admin, &batch_id).await;
    assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
    assert_eq!(batch["error_classes"], json!({}), "not counted: {batch}");
    assert_eq!(
        batch["sides"],
        json!({"task": 0, "infrastructure": 0}),
        "{batch}"
    );
    let (_, run) = admin.get(&format!("/v1/tasks/{task_id}/run")).await;
    assert_eq!(run["steps"][0]["attempts"], 2, "{run}");
    let (_, trajectory) = admin.get(&format!("/v1/tasks/{task_id}/trajectory")).await;
    assert_eq!(trajectory["attempts"], 2, "{trajectory}");
    assert_eq!(trajectory["success"], true, "{trajectory}");
    let base_id = crate::sandboxes::docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        crate::sandboxes::BASE_IMAGE,
    ]);
    assert_eq!(trajectory["image_digest"], base_id.trim(), "{trajectory}");
    let metrics = server.metrics().await;
    assert!(
        !metrics.contains("wharf_tasks_failed_total{error_class=\"sandbox_error\""),
        "the cleared fault is not counted as a failure"
    );

    // The image digest is part of the cache key: the same task is served from the cache while
    // the image stays, and runs again once the tag names another image.
    let cached_batch = || {
        let admin = admin.clone();
        async move {
            let (status, batch) = submit(
                &admin,
                "?cache=true",
                task("cached", vec![shell("echo cached")]).to_string(),
            )
            .await;
            assert_eq!(status, 201, "{batch}");
            let id = batch["batch_id"].as_str().unwrap().to_string();
            let batch = finished(&admin, &id).await;
            assert_eq!(batch["counts"]["succeeded"], 1, "{batch}");
            (
                batch["cache"].clone(),
                export(&admin, &id, "wharf").await[0].clone(),
            )
        }
    };
    let (cache, first) = cached_batch().await;
    assert_eq!(cache, json!({"hits": 0, "misses": 1}));
    let (cache, again) = cached_batch().await;
    assert_eq!(cache, json!({"hits": 1, "misses": 0}));
    assert_eq!(again["cache_source"], first["id"]);
    build_image(&tag.0, "rebuilt");
    let (cache, rebuilt) = cached_batch().await;
    assert_eq!(
        cache,
        json!({"hits": 0, "misses": 1}),
        "a new image: {rebuilt}"
    );
    assert_ne!(rebuilt["image_digest"], first["image_digest"], "{rebuilt}");
    assert_eq!(rebuilt["cache_hit"], false);
}
