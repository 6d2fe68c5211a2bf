//! The trust boundary on the process driver, attacked through the real binary
//! with a non-admin key: what code in a `local` sandbox can read, write, reach
//! or leave running. Every attack must be refused or contained.

use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, poll};

/// One profile without isolation, which only admin keys may use.
const CONFIG: &str = r#"
[profiles.trusted]
driver = "process"
isolation = "none"
"#;

fn start(root: &std::path::Path) -> WharfProcess {
    std::fs::write(root.join("wharf.toml"), CONFIG).unwrap();
    WharfProcess::start(root, &[])
}

async fn user_key(admin: &Client, owner: &str) -> String {
    let (status, body) = admin.post("/v1/keys", json!({ "owner": owner })).await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

async fn create_sandbox(client: &Client, profile: &str) -> String {
    let (status, body) = client
        .post("/v1/sandboxes", json!({ "profile": profile }))
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn exec(client: &Client, id: &str, command: &str) -> Value {
    let (status, body) = client
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({ "command": command, "timeout_ms": 20000 }),
        )
        .await;
    assert_eq!(status, 200, "{command}: {body}");
    body
}

/// Host processes whose command line contains `marker`, zombies excluded.
fn host_processes_with(marker: &str) -> Vec<String> {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "stat=,args="])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|line| line.contains(marker) && !line.trim_start().starts_with('Z'))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn process_sandbox_code_cannot_read_or_write_the_host() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let alice = Client::new(&server, Some(&user_key(&admin, "alice").await));
    let bob = Client::new(&server, Some(&user_key(&admin, "bob").await));
    let mine = create_sandbox(&alice, "local").await;
    let theirs = create_sandbox(&bob, "local").await;
    let (status, _) = bob
        .send(
            bob.request(
                reqwest::Method::PUT,
                &format!("/v1/sandboxes/{theirs}/files/secret.txt"),
            )
            .body("bob's secret"),
        )
        .await;
    assert!(status == 200 || status == 201, "upload: {status}");
    // Let the probe key exist: it is created on first use of probes.
    let data = server.data_dir.display().to_string();
    std::fs::write(server.data_dir.join("probe.key"), "0".repeat(64)).ok();

    let out = exec(&alice, &mine, "id -u; id -g").await;
    assert_eq!(out["stdout"], "1000\n1000\n", "{out}");
    for (what, attack) in [
        ("the server's database", format!("cat {data}/wharf.db")),
        ("the probe key", format!("cat {data}/probe.key")),
        (
            "another owner's workspace",
            format!("cat {data}/sandboxes/{theirs}/secret.txt"),
        ),
        ("the sandboxes root", format!("ls {data}/sandboxes")),
        ("/etc/shadow", "cat /etc/shadow".to_string()),
        ("the root home", "ls /root".to_string()),
        (
            "the Docker socket",
            "ls -l /var/run/docker.sock || ls -l /run/docker.sock".to_string(),
        ),
        (
            "the Docker engine",
            "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('/var/run/docker.sock')\""
                .to_string(),
        ),
        ("a write to /usr", "echo x > /usr/bin/wharf-x".to_string()),
        ("a write to /", "echo x > /x".to_string()),
        ("a write to /etc", "echo x >> /etc/passwd".to_string()),
        (
            "a write into the data dir",
            format!("echo x > {data}/sandboxes/x"),
        ),
        ("a mount", "mount -t tmpfs none /workspace".to_string()),
        ("a new user namespace", "unshare -U true".to_string()),
        (
            "another process's memory",
            "python3 -c \"import ctypes; ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0 or exit(1)\""
                .to_string(),
        ),
    ] {
        let out = exec(&alice, &mine, &attack).await;
        assert_ne!(out["exit_code"], 0, "{what} was reached: {out}");
    }
    assert!(!server.data_dir.join("sandboxes/x").exists());
    assert!(!std::path::Path::new("/usr/bin/wharf-x").exists());
    // Only this exec's own processes are visible, none of the host's.
    let out = exec(&alice, &mine, "ls /proc | grep -c '^[0-9]'").await;
    let visible: u32 = out["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(visible <= 4, "{out}");
    // The workspace and /tmp do work.
    let out = exec(
        &alice,
        &mine,
        "echo hi > note && cat note && echo t > /tmp/t && cat /tmp/t",
    )
    .await;
    assert_eq!(out["stdout"], "hi\nt\n", "{out}");
}

/// Starts an exec that leaves a `setsid` and a double-forked `nohup` sleeper
/// behind it (`sleep <tag>.1` to `.3`) and waits until all three run.
async fn start_escaping_sleepers(
    client: &Client,
    id: &str,
    tag: &'static str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let running = tokio::spawn({
        let (client, path) = (client.clone(), format!("/v1/sandboxes/{id}/exec"));
        let command = format!("setsid sleep {tag}.1 & (nohup sleep {tag}.2 &); sleep {tag}.3");
        async move {
            client
                .post(&path, json!({"command": command, "timeout_ms": 60000}))
                .await
        }
    });
    poll("the sleepers to start", || async {
        let found = host_processes_with(&format!("sleep {tag}."));
        if found.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
    running
}

async fn wait_sleepers_gone(tag: &str, what: &str) {
    poll(what, || async {
        let left = host_processes_with(&format!("sleep {tag}."));
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_setsid_sleeper_survives_neither_delete_nor_a_killed_server() {
    let root = tempfile::tempdir().unwrap();
    let mut server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let alice_key = user_key(&admin, "alice").await;
    let alice = Client::new(&server, Some(&alice_key));

    // Delete while an exec and its escaped children run.
    let id = create_sandbox(&alice, "local").await;
    let running = start_escaping_sleepers(&alice, &id, "901").await;
    let (status, body) = alice.delete(&format!("/v1/sandboxes/{id}")).await;
    assert!(status == 200 || status == 204, "{body}");
    wait_sleepers_gone("901", "the sleepers to die with their sandbox").await;
    let _ = running.await;

    // kill -9 of the server while an exec runs: everything it started dies.
    let id = create_sandbox(&alice, "local").await;
    let _running = start_escaping_sleepers(&alice, &id, "902").await;
    server.kill();
    wait_sleepers_gone("902", "the sleepers to die with the server").await;
    // And the restarted server serves the sandbox again, with nothing left over.
    let server = WharfProcess::start(root.path(), &[]);
    let alice = Client::new(&server, Some(&alice_key));
    poll("the sandbox to answer after the restart", || async {
        let (status, body) = alice
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"command": "echo back"}),
            )
            .await;
        if status == 200 && body["stdout"] == "back\n" {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert!(host_processes_with("sleep 902.").is_empty());
}

#[tokio::test]
async fn an_unisolated_profile_is_for_admin_keys_only_and_flagged() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let alice = Client::new(&server, Some(&user_key(&admin, "alice").await));
    let (status, info) = alice.get("/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["unisolated_profiles"], json!(["trusted"]), "{info}");
    assert_eq!(info["process_isolation"]["available"], true, "{info}");
    assert!(
        server.logs().contains("WITHOUT isolation"),
        "the start-up log flags the profile"
    );
    let (status, body) = alice
        .post("/v1/sandboxes", json!({"profile": "trusted"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let id = create_sandbox(&admin, "trusted").await;
    let out = exec(&admin, &id, "id -u").await;
    assert_eq!(out["stdout"], "0\n", "runs as the server's user: {out}");
    // A non-admin key of the owner that holds it may not use it either.
    let (_, sandbox) = admin.get(&format!("/v1/sandboxes/{id}")).await;
    let owner = sandbox["owner"].as_str().expect("the sandbox's owner");
    let same_owner = Client::new(&server, Some(&user_key(&admin, owner).await));
    for (method, path, body) in [
        (
            "POST",
            format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"command": "id -u"})),
        ),
        ("GET", format!("/v1/sandboxes/{id}/dirs"), None),
        (
            "POST",
            format!("/v1/sandboxes/{id}/capabilities/shell/run"),
            Some(json!({"command": "id"})),
        ),
    ] {
        let mut request = same_owner.request(method.parse().unwrap(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, answer) = same_owner.send(request).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
    }
}
