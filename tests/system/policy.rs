//! Capability policy against the real binary on the Docker driver: key scopes (also on the
//! direct exec and files routes), human approvals (declined, approved once, expired, kept
//! across a restart), secret masking (responses, events, server and plugin logs), the
//! audit log and its owner isolation, and adapter host calls counted like direct calls.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

use crate::sandboxes::{docker_server_with, exec_stream};

/// A secret of the `secretive` profile.
const PROFILE_SECRET: &str = "prof-s3cr3t-0xdeadbeef";
/// A secret of a direct exec request (`secret_env`).
const EXEC_SECRET: &str = "exec-s3cr3t-5f1e2d3c";
/// A secret of a capability call (`Wharf-Secret-Env`).
const HEADER_SECRET: &str = "hdr-s3cr3t-a9b8c7d6";
/// A secret of the `guarded` profile.
const GUARDED_SECRET: &str = "guard-s3cr3t-77aa55";

fn config(approval_ttl_secs: u64) -> String {
    format!(
        r#"
[sandbox]
gc_interval_ms = 300
not_ready_wait_ms = 20000

[approvals]
ttl_secs = {approval_ttl_secs}

[audit]
gc_interval_ms = 200

[profiles.guarded]
driver = "docker"
secret_env = {{ GUARDED_TOKEN = "{GUARDED_SECRET}" }}

[profiles.guarded.operations."shell.run"]
approval = "required"

[profiles.secretive]
driver = "docker"
secret_env = {{ PROFILE_TOKEN = "{PROFILE_SECRET}" }}

[profiles.idle]
driver = "docker"
idle_timeout_secs = 8
"#
    )
}

/// A Docker server with core-adapters active; `None` when Docker tests are skipped.
async fn server(approval_ttl_secs: u64) -> Option<(tempfile::TempDir, WharfProcess, Client)> {
    let (root, server, admin) = docker_server_with(&config(approval_ttl_secs))?;
    let built = root.path().join("built/core-adapters");
    build_pack("packs/core-adapters", &built);
    install_pack_active(&admin, &built, &server.packs_dir, "core-adapters").await;
    Some((root, server, admin))
}

/// A new key of `owner` (with `extra` fields such as roles or scopes) and its client.
async fn key(server: &WharfProcess, admin: &Client, owner: &str, extra: Value) -> (String, Client) {
    let mut body = json!({ "owner": owner });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, created) = admin.post("/v1/keys", body).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap().to_string();
    (
        created["id"].as_str().unwrap().to_string(),
        Client::new(server, Some(&secret)),
    )
}

async fn sandbox(client: &Client, profile: &str) -> String {
    let (status, created) = client
        .post("/v1/sandboxes", json!({ "profile": profile }))
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

async fn shell(client: &Client, sandbox: &str, command: &str) -> (u16, Value) {
    client
        .post(
            &format!("/v1/sandboxes/{sandbox}/capabilities/shell/run"),
            json!({ "command": command }),
        )
        .await
}

/// `shell.run` with request secrets in the `Wharf-Secret-Env` header.
async fn shell_with_secrets(
    client: &Client,
    sandbox: &str,
    secrets: &Value,
    body: Value,
) -> (u16, Value) {
    let path = format!("/v1/sandboxes/{sandbox}/capabilities/shell/run");
    client
        .send(
            client
                .request(Method::POST, &path)
                .header("wharf-secret-env", secrets.to_string())
                .json(&body),
        )
        .await
}

/// The bytes of a workspace file, or the status when it cannot be read.
async fn read_file(client: &Client, sandbox: &str, path: &str) -> Result<String, u16> {
    let response = client
        .request(
            Method::GET,
            &format!("/v1/sandboxes/{sandbox}/files/{path}"),
        )
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Ok(response.text().await.unwrap()),
        status => Err(status),
    }
}

async fn poll_final(client: &Client, id: &str) -> Value {
    let (status, approval) = client.get(&format!("/v1/approvals/{id}?wait=30")).await;
    assert_eq!(status, 200, "{approval}");
    approval
}

#[tokio::test]
async fn a_key_scoped_to_reading_files_is_refused_shell_and_direct_exec_and_writes() {
    let Some((_root, server, admin)) = server(600).await else {
        return;
    };
    let (_, full) = key(&server, &admin, "alice", json!({})).await;
    let (ro_id, read_only) = key(
        &server,
        &admin,
        "alice",
        json!({ "capabilities": ["filesystem.read", "sandbox.files.read"], "profiles": ["docker"] }),
    )
    .await;
    // The scope is shown by GET /v1/keys.
    let (_, keys) = admin.get("/v1/keys").await;
    let shown = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == ro_id.as_str())
        .unwrap();
    assert_eq!(
        shown["scope"]["capabilities"],
        json!(["filesystem.read", "sandbox.files.read"])
    );
    assert_eq!(shown["scope"]["profiles"], json!(["docker"]));
    assert_eq!(shown["roles"], json!([]));

    let id = sandbox(&read_only, "docker").await;
    // Outside the profile scope: refused before anything starts.
    let (status, refused) = read_only
        .post("/v1/sandboxes", json!({ "profile": "secretive" }))
        .await;
    assert_eq!(status, 403, "{refused}");

    let (_, offered) = read_only
        .get(&format!("/v1/sandboxes/{id}/capabilities"))
        .await;
    let offered: Vec<(String, String)> = offered
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|cap| {
            cap["operations"].as_array().unwrap().iter().map(move |op| {
                (
                    cap["capability"].as_str().unwrap().to_string(),
                    op["name"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(
        offered,
        [("filesystem".to_string(), "read".to_string())],
        "only filesystem.read is in the key's scope, never shell"
    );
    let (status, refused) = shell(&read_only, &id, "echo pwned > pwned.txt").await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("shell.run"), "{message}");
    // The same through the direct routes.
    let (status, refused) = read_only
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({ "command": "echo pwned > pwned.txt" }),
        )
        .await;
    assert_eq!(status, 403, "direct exec: {refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox.exec")
    );
    let (status, _) = read_only
        .get(&format!("/v1/sandboxes/{id}/exec/stream"))
        .await;
    assert_eq!(status, 403, "exec stream");
    let (status, _) = read_only
        .send(
            read_only
                .request(Method::PUT, &format!("/v1/sandboxes/{id}/files/pwned.txt"))
                .body("pwned"),
        )
        .await;
    assert_eq!(status, 403, "file upload");
    // Reading is in scope.
    let (status, _) = full
        .send(
            full.request(Method::PUT, &format!("/v1/sandboxes/{id}/files/notes.txt"))
                .body("hello"),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        read_file(&read_only, &id, "notes.txt").await,
        Ok("hello".into())
    );
    assert_eq!(
        read_file(&full, &id, "pwned.txt").await,
        Err(404),
        "nothing ran"
    );
    // The full key of the same owner still runs the shell.
    let (status, ran) = shell(&full, &id, "echo ok").await;
    assert_eq!(status, 200, "{ran}");
    // Scopes are checked at creation.
    let (status, _) = admin
        .post(
            "/v1/keys",
            json!({ "owner": "x", "admin": true, "capabilities": ["shell"] }),
        )
        .await;
    assert_eq!(status, 400, "an admin key cannot be scoped");
    let (status, _) = admin
        .post("/v1/keys", json!({ "owner": "x", "capabilities": ["a b"] }))
        .await;
    assert_eq!(status, 400);
    // The refusal is audited.
    let (_, audit) = full.get("/v1/audit?outcome=forbidden").await;
    let rows = audit["items"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["key_id"] == ro_id.as_str() && r["capability"] == "shell"),
        "{audit}"
    );
}

#[tokio::test]
async fn approvals_declined_never_run_approved_run_once_expired_never_run() {
    let Some((_root, server, admin)) = server(4).await else {
        return;
    };
    let (asker_id, asker) = key(&server, &admin, "alice", json!({})).await;
    let (approver_id, approver) =
        key(&server, &admin, "alice", json!({ "roles": ["approver"] })).await;
    let (_, other_approver) = key(&server, &admin, "bob", json!({ "roles": ["approver"] })).await;
    let id = sandbox(&asker, "guarded").await;

    // The sandbox offers shell.run, marked as waiting for an approver.
    let (_, offered) = asker.get(&format!("/v1/sandboxes/{id}/capabilities")).await;
    let shell_offer = offered
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == "shell")
        .unwrap_or_else(|| panic!("{offered}"));
    assert_eq!(shell_offer["operations"][0]["approval_required"], true);
    // Direct exec and file writes would bypass the gate: refused in this profile.
    let (status, refused) = asker
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({ "command": "echo x > declined.txt" }),
        )
        .await;
    assert_eq!(status, 403, "{refused}");

    // Declined: it never runs.
    let (status, pending) = shell(&asker, &id, "echo ran >> declined.txt").await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["requested_by"], asker_id.as_str());
    let declined_id = pending["id"].as_str().unwrap().to_string();
    assert!(declined_id.starts_with("apr_"));
    // Another owner's approver sees nothing and decides nothing.
    let (status, _) = other_approver
        .get(&format!("/v1/approvals/{declined_id}"))
        .await;
    assert_eq!(status, 404);
    for decision in ["approve", "decline"] {
        let (status, _) = other_approver
            .post(
                &format!("/v1/approvals/{declined_id}/{decision}"),
                json!({}),
            )
            .await;
        assert_eq!(status, 404, "another owner's approver may not {decision}");
    }
    let (_, others) = other_approver.get("/v1/approvals").await;
    assert_eq!(others["items"], json!([]));
    // The asker is no approver.
    let (status, _) = asker
        .post(&format!("/v1/approvals/{declined_id}/approve"), json!({}))
        .await;
    assert_eq!(status, 403);
    let (_, listed) = approver.get("/v1/approvals?status=pending").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == declined_id.as_str()),
        "{listed}"
    );
    let (status, decided) = approver
        .post(&format!("/v1/approvals/{declined_id}/decline"), json!({}))
        .await;
    assert_eq!(status, 200, "{decided}");
    let final_state = poll_final(&asker, &declined_id).await;
    assert_eq!(final_state["status"], "declined");
    assert_eq!(final_state["error"]["code"], "approval_declined");
    assert_eq!(final_state["decided_by"], approver_id.as_str());
    let (status, _) = approver
        .post(&format!("/v1/approvals/{declined_id}/approve"), json!({}))
        .await;
    assert_eq!(status, 409, "a declined approval cannot be approved");

    // Approved: it runs exactly once, even when two approvals race.
    let (status, pending) = shell(
        &asker,
        &id,
        "echo ran >> approved.txt; echo token=$GUARDED_TOKEN",
    )
    .await;
    assert_eq!(status, 202, "{pending}");
    let approved_id = pending["id"].as_str().unwrap().to_string();
    let path = format!("/v1/approvals/{approved_id}/approve");
    let (first, second) = tokio::join!(
        approver.post(&path, json!({})),
        admin.post(&path, json!({}))
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{first:?} {second:?}");
    let done = poll_final(&asker, &approved_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["output"]["exit_code"], 0);
    let stdout = done["result"]["output"]["stdout"].as_str().unwrap();
    assert_eq!(stdout, "token=***\n", "the profile's secret is masked");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(done["input"]["command"], pending["input"]["command"]);
    assert_eq!(
        read_file(&asker, &id, "approved.txt").await,
        Ok("ran\n".into())
    );

    // An approver cannot approve its own request.
    let (status, own) = shell(&approver, &id, "echo own >> own.txt").await;
    assert_eq!(status, 202);
    let own_id = own["id"].as_str().unwrap();
    let (status, refused) = approver
        .post(&format!("/v1/approvals/{own_id}/approve"), json!({}))
        .await;
    assert_eq!(status, 403, "{refused}");
    // The asker may withdraw it.
    let (status, _) = approver
        .post(&format!("/v1/approvals/{own_id}/decline"), json!({}))
        .await;
    assert_eq!(status, 200);

    // Expired: never decided, never run; deciding it late is `approval_expired`.
    let (status, pending) = shell(&asker, &id, "echo ran >> expired.txt").await;
    assert_eq!(status, 202);
    let expired_id = pending["id"].as_str().unwrap().to_string();
    let expired = poll_final(&asker, &expired_id).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["error"]["code"], "approval_expired");
    let (status, late) = approver
        .post(&format!("/v1/approvals/{expired_id}/approve"), json!({}))
        .await;
    assert_eq!(status, 410, "{late}");
    assert_eq!(late["error"]["code"], "approval_expired");

    for never in ["declined.txt", "expired.txt", "own.txt"] {
        assert_eq!(read_file(&asker, &id, never).await, Err(404), "{never} ran");
    }

    // The audit trail: the owner's rows, with their fields; another owner sees none.
    let (_, audit) = asker
        .get(&format!("/v1/audit?sandbox={id}&capability=shell"))
        .await;
    let rows = audit["items"].as_array().unwrap();
    let ran = rows
        .iter()
        .find(|r| r["approval_id"] == approved_id.as_str() && r["outcome"] == "ok")
        .unwrap_or_else(|| panic!("no audit row of the approved run: {audit}"));
    assert_eq!(ran["owner"], "alice");
    assert_eq!(ran["key_id"], asker_id.as_str());
    assert_eq!(ran["operation"], "run");
    assert_eq!(ran["pack"], "core-adapters");
    assert_eq!(ran["pack_version"], pack_version("packs/core-adapters"));
    assert!(ran["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        rows.iter()
            .filter(|r| r["outcome"] == "pending_approval")
            .count()
            >= 3
    );
    let (_, bobs) = other_approver.get("/v1/audit").await;
    assert!(
        bobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["owner"] == "bob"),
        "{bobs}"
    );
    let (_, filtered) = other_approver
        .get(&format!("/v1/audit?sandbox={id}&owner=alice"))
        .await;
    assert_eq!(
        filtered["items"],
        json!([]),
        "an owner filter widens nothing"
    );
    let (_, all) = admin.get(&format!("/v1/audit?sandbox={id}&limit=2")).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let cursor = all["next_cursor"].as_str().expect("a next page");
    let (_, next) = admin
        .get(&format!("/v1/audit?sandbox={id}&limit=2&cursor={cursor}"))
        .await;
    assert!(next["items"][0]["seq"].as_i64() < all["items"][1]["seq"].as_i64());
    // Events of the sandbox name the approvals.
    let (_, events) = asker.get(&format!("/v1/sandboxes/{id}/events")).await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"approval_requested") && kinds.contains(&"approval_decided"));
}

#[tokio::test]
async fn a_pending_approval_survives_a_restart_and_runs_once_approved() {
    let Some((root, mut server, admin)) = server(600).await else {
        return;
    };
    let (_, asker) = key(&server, &admin, "alice", json!({})).await;
    let (_, approver) = key(&server, &admin, "alice", json!({ "roles": ["approver"] })).await;
    let id = sandbox(&asker, "guarded").await;
    let (status, pending) = shell(&asker, &id, "echo ran >> restarted.txt").await;
    assert_eq!(status, 202, "{pending}");
    let approval = pending["id"].as_str().unwrap().to_string();

    server.kill();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (_, keys) = admin.get("/v1/keys").await;
    assert!(keys.as_array().unwrap().len() >= 3);
    // Same keys, new port.
    let asker = asker.rebase(&server);
    let approver = approver.rebase(&server);
    admin
        .wait_for("/v1/packs", "core-adapters active", |rows| {
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == "core-adapters" && r["state"] == "active")
        })
        .await;
    let (status, still) = asker.get(&format!("/v1/approvals/{approval}")).await;
    assert_eq!(status, 200);
    assert_eq!(still["status"], "pending", "{still}");
    let (status, _) = approver
        .post(&format!("/v1/approvals/{approval}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    let done = poll_final(&asker, &approval).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        read_file(&asker, &id, "restarted.txt").await,
        Ok("ran\n".into())
    );
}

#[tokio::test]
async fn secret_values_never_leave_the_server() {
    let Some((_root, server, admin)) = server(600).await else {
        return;
    };
    let (_, alice) = key(&server, &admin, "alice", json!({})).await;
    let id = sandbox(&alice, "secretive").await;
    let mut seen = Vec::new();

    // A direct exec: the profile's and the request's secrets, on stdout and stderr.
    let (status, out) = alice
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({
                "command": "echo $PROFILE_TOKEN $EXEC_TOKEN; echo $EXEC_TOKEN >&2; exit 3",
                "secret_env": { "EXEC_TOKEN": EXEC_SECRET },
            }),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "*** ***\n");
    assert_eq!(out["stderr"], "***\n");
    assert_eq!(out["exit_code"], 3);
    seen.push(out);
    // A secret as the program name: the error, if any, and the event are masked.
    let (_, out) = alice
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({ "argv": [EXEC_SECRET], "secret_env": { "EXEC_TOKEN": EXEC_SECRET } }),
        )
        .await;
    seen.push(out);
    // Too short to mask: refused, without echoing it.
    let (status, out) = alice
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({ "command": "true", "secret_env": { "X": "abc" } }),
        )
        .await;
    assert_eq!(status, 400, "{out}");
    // The capability call with a header secret: output, and an error from the plugin.
    let header = json!({ "HDR_TOKEN": HEADER_SECRET });
    let (status, out) = shell_with_secrets(
        &alice,
        &id,
        &header,
        json!({ "command": "echo $HDR_TOKEN $PROFILE_TOKEN; echo $HDR_TOKEN >&2" }),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"]["stdout"], "*** ***\n");
    assert_eq!(out["output"]["stderr"], "***\n");
    seen.push(out);
    let (status, out) = shell_with_secrets(
        &alice,
        &id,
        &header,
        json!({ "command": "true", "cwd": format!("no/{HEADER_SECRET}") }),
    )
    .await;
    assert!(status >= 400, "{out}");
    seen.push(out);
    // A streamed exec (in an admin sandbox: the stream helper's key is the admin's).
    let admin_sandbox = sandbox(&admin, "secretive").await;
    let records = exec_stream(
        &server,
        &admin_sandbox,
        json!({
            "command": "echo $PROFILE_TOKEN; echo $EXEC_TOKEN",
            "secret_env": { "EXEC_TOKEN": EXEC_SECRET },
        }),
    )
    .await;
    let lines: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "line")
        .map(|r| r["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["***", "***"], "{records:?}");
    seen.extend(records);
    // Events, the audit log and the plugin logs.
    for (client, sandbox) in [(&alice, &id), (&admin, &admin_sandbox)] {
        let (_, events) = client.get(&format!("/v1/sandboxes/{sandbox}/events")).await;
        seen.push(events);
    }
    let (_, audit) = alice.get("/v1/audit").await;
    seen.push(audit);
    let (_, pack) = admin.get("/v1/packs/core-adapters").await;
    seen.push(pack);
    let (_, keys) = admin.get("/v1/keys").await;
    seen.push(keys);

    let logs = server.logs();
    assert!(logs.len() > 1000, "the server logged (WHARF_LOG=debug)");
    for secret in [PROFILE_SECRET, EXEC_SECRET, HEADER_SECRET] {
        for answer in &seen {
            assert!(
                !answer.to_string().contains(secret),
                "a secret in an answer: {answer}"
            );
        }
        assert!(!logs.contains(secret), "a secret in the server's log files");
    }
}

/// Attack: the most request secrets the header may carry (32 values of 4096 bytes), all
/// printed by the command: every one is masked, and one more secret or one more byte is a
/// validation error that echoes none of them.
#[tokio::test]
async fn the_largest_secret_header_is_masked_whole_and_one_more_is_refused() {
    let Some((_root, server, admin)) = server(600).await else {
        return;
    };
    let (_, alice) = key(&server, &admin, "alice", json!({})).await;
    let id = sandbox(&alice, "secretive").await;
    let secret = |i: usize| format!("{i:02}{}", "k".repeat(4094));
    let full: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("S{i}"), Value::from(secret(i))))
        .collect();
    let command = (0..32)
        .map(|i| format!("echo $S{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    let (status, out) = shell_with_secrets(
        &alice,
        &id,
        &Value::from(full.clone()),
        json!({ "command": command }),
    )
    .await;
    assert_eq!(
        status,
        200,
        "{}",
        &out.to_string()[..300.min(out.to_string().len())]
    );
    assert_eq!(out["output"]["stdout"], "***\n".repeat(32));
    assert!(!out.to_string().contains(&"k".repeat(64)));

    let mut too_many = full.clone();
    too_many.insert("S32".into(), Value::from(secret(32)));
    let mut too_long = full;
    too_long.insert("S0".into(), Value::from(format!("{}k", secret(0))));
    for (what, header) in [("33 secrets", too_many), ("4097 bytes", too_long)] {
        let (status, out) = shell_with_secrets(
            &alice,
            &id,
            &Value::from(header),
            json!({ "command": "true" }),
        )
        .await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(out["error"]["code"], "validation_error", "{what}");
        assert!(!out.to_string().contains("kkkk"), "{what}: {out}");
    }
}

#[tokio::test]
async fn adapter_host_calls_count_as_sandbox_use() {
    let Some((_root, server, admin)) = server(600).await else {
        return;
    };
    let id = sandbox(&admin, "idle").await;
    let (status, out) = shell(&admin, &id, "sleep 4; echo done").await;
    assert_eq!(status, 200, "{}", out["error"]);
    // The adapter's exec ended just now and pushed back the idle deadline (8 s): the
    // sandbox stays running well past 8 s after the call began, though no other request
    // touched it.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let (_, record) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(record["status"], "running", "{record}");
    let (_, events) = admin.get(&format!("/v1/sandboxes/{id}/events")).await;
    let items = events["items"].as_array().unwrap();
    let exec = items
        .iter()
        .find(|e| e["kind"] == "exec")
        .unwrap_or_else(|| panic!("no exec event for the adapter's exec: {events}"));
    assert_eq!(exec["detail"]["via"], "shell.run");
    assert_eq!(exec["detail"]["program"], "sh");
    let call = items
        .iter()
        .find(|e| e["kind"] == "capability")
        .expect("a capability event");
    assert_eq!(call["detail"]["outcome"], "ok");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"wharf_sandbox_operations_total{driver="docker",operation="exec"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"wharf_capability_calls_total{capability="shell",operation="run",outcome="ok"} 1"#
        ),
        "{metrics}"
    );
    // A version the serving pack does not meet is refused; one it meets is served.
    let (status, refused) = admin
        .post(
            &format!("/v1/sandboxes/{id}/capabilities/shell@%5E99.0/run"),
            json!({ "command": "true" }),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "capability_not_supported");
    let (status, ok) = admin
        .post(
            &format!("/v1/sandboxes/{id}/capabilities/shell@%3E%3D0.1/run"),
            json!({ "command": "true" }),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
}

/// The version a source pack declares (the audit names the version that served).
fn pack_version(source: &str) -> String {
    let manifest = std::fs::read_to_string(wharf_e2e::repo_root().join(source).join("pack.toml"))
        .expect("reading pack.toml");
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a version line")
        .to_string()
}
