//! What packs may and may not do, against the real binary: pack profiles cannot widen what
//! the operator allows, a second pack cannot take over a served capability, an adapter
//! looping on `exec` ends at the wall-clock bound, plugin logs stay with their owner, and
//! `/metrics` is not public.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack, install_pack_active};

const TEST_PACK: &str = "tests/fixtures/packs/test-pack";
const PROFILE_PACK: &str = "tests/fixtures/packs/profile-pack";

/// A server whose `wharf.toml` is `config`, and its admin client.
fn start(root: &Path, config: &str, env: &[(&str, &str)]) -> (WharfProcess, Client) {
    std::fs::write(root.join("wharf.toml"), config).unwrap();
    let server = WharfProcess::start(root, env);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    (server, admin)
}

/// A server (with `config`) serving the test-pack fixture.
async fn serving_test_pack(config: &str) -> (tempfile::TempDir, WharfProcess, Client) {
    let root = tempfile::tempdir().unwrap();
    let pack = built(root.path(), TEST_PACK);
    let (server, admin) = start(root.path(), config, &[]);
    install_pack_active(&admin, &pack, &server.packs_dir, "test-pack").await;
    (root, server, admin)
}

fn built(root: &Path, source: &str) -> PathBuf {
    let out = root
        .join("built")
        .join(Path::new(source).file_name().unwrap());
    build_pack(source, &out);
    out
}

/// A key of a new non-admin owner.
async fn owner_client(server: &WharfProcess, admin: &Client, owner: &str) -> Client {
    let (status, key) = admin.post("/v1/keys", json!({ "owner": owner })).await;
    assert_eq!(status, 201, "{key}");
    Client::new(server, Some(key["key"].as_str().unwrap()))
}

async fn sandbox(client: &Client) -> String {
    let (status, sandbox) = client
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    sandbox["id"].as_str().unwrap().to_string()
}

async fn call_test(client: &Client, sandbox: &str, operation: &str, input: Value) -> (u16, Value) {
    client
        .post(
            &format!("/v1/sandboxes/{sandbox}/capabilities/test/{operation}"),
            input,
        )
        .await
}

/// The pack that answers `test.echo` now.
async fn test_served_by(client: &Client, sandbox: &str) -> String {
    let (status, answer) = call_test(client, sandbox, "echo", json!({"ping": 1})).await;
    assert_eq!(status, 200, "{answer}");
    answer["pack"].as_str().unwrap().to_string()
}

/// Waits until the row of `dir` in `GET /v1/packs` is in `state`; returns the row.
async fn wait_row(admin: &Client, dir: &str, state: &str) -> Value {
    let rows = admin
        .wait_for("/v1/packs", &format!("{dir} {state}"), |rows| {
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["dir"] == dir && r["state"] == state)
        })
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["dir"] == dir && r["state"] == state)
        .unwrap()
        .clone()
}

fn refusal<'a>(detail: &'a Value, name: &str) -> &'a str {
    detail["refused_profiles"]
        .as_array()
        .unwrap_or_else(|| panic!("no refused_profiles in {detail}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("profile {name} not refused: {detail}"))["reason"]
        .as_str()
        .unwrap()
}

/// The profile-pack fixture with three profiles asking for more than packs may have.
fn wide_profile_pack(root: &Path) -> PathBuf {
    let pack = built(root, PROFILE_PACK);
    for (name, text) in [
        ("bridged", "driver = \"process\"\nnetwork = \"bridge\"\n"),
        ("hostbox", "driver = \"process\"\nisolation = \"none\"\n"),
        ("unbounded", "driver = \"docker\"\nmemory_mib = 0\n"),
    ] {
        std::fs::write(pack.join(format!("profiles/{name}.toml")), text).unwrap();
    }
    pack
}

async fn create_status(client: &Client, profile: &str) -> (u16, Value) {
    client
        .post("/v1/sandboxes", json!({ "profile": profile }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_profiles_cannot_widen_what_the_operator_allows() {
    let root = tempfile::tempdir().unwrap();
    let pack = wide_profile_pack(root.path());
    let (server, admin) = start(root.path(), "", &[]);
    install_pack_active(&admin, &pack, &server.packs_dir, "profile-pack").await;

    let (status, detail) = admin.get("/v1/packs/profile-pack").await;
    assert_eq!(status, 200, "{detail}");
    assert!(refusal(&detail, "bridged").contains("allow_profile_network"));
    assert!(refusal(&detail, "hostbox").contains("isolation = \"none\""));
    assert!(refusal(&detail, "unbounded").contains("without a memory limit"));
    assert!(refusal(&detail, "local").contains("may not override"));
    assert_eq!(
        detail["profiles"],
        json!(["packbox", "packbrief"]),
        "{detail}"
    );
    // A refused profile does not exist for sandboxes; an accepted one does.
    for refused in ["bridged", "hostbox", "unbounded"] {
        let (status, body) = create_status(&admin, refused).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("validation_error")),
            "{refused}: {body}"
        );
    }
    let (status, body) = create_status(&admin, "packbox").await;
    assert_eq!(status, 201, "{body}");
    drop(server);

    // The operator may open the network to pack profiles; never `isolation = "none"`.
    let root = tempfile::tempdir().unwrap();
    let pack = wide_profile_pack(root.path());
    let (server, admin) = start(root.path(), "[packs]\nallow_profile_network = true\n", &[]);
    install_pack_active(&admin, &pack, &server.packs_dir, "profile-pack").await;
    let (_, detail) = admin.get("/v1/packs/profile-pack").await;
    assert_eq!(
        detail["profiles"],
        json!(["bridged", "packbox", "packbrief"]),
        "{detail}"
    );
    assert!(refusal(&detail, "hostbox").contains("never allowed"));
    let (status, body) = create_status(&admin, "bridged").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create_status(&admin, "hostbox").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pack_with_a_served_capability_is_in_conflict_until_pinned() {
    let root = tempfile::tempdir().unwrap();
    // Both fixtures provide the `test` capability; `profile-pack` sorts first.
    let test_pack = built(root.path(), TEST_PACK);
    let profile_pack = built(root.path(), PROFILE_PACK);
    let (server, admin) = start(root.path(), "", &[]);
    install_pack_active(&admin, &test_pack, &server.packs_dir, "test-pack").await;
    let sbx = sandbox(&admin).await;
    assert_eq!(test_served_by(&admin, &sbx).await, "test-pack");

    install_pack(&profile_pack, &server.packs_dir, "profile-pack");
    let row = wait_row(&admin, "profile-pack", "conflict").await;
    let reason = row["error"].as_str().unwrap();
    assert!(
        reason.contains("capability \"test\" is already served by pack \"test-pack\"")
            && reason.contains("[packs.pins]"),
        "{row}"
    );
    let (status, detail) = admin.get("/v1/packs/profile-pack").await;
    assert_eq!(
        (
            status,
            detail["state"].as_str(),
            detail["conflict"].as_str()
        ),
        (200, Some("conflict"), Some(reason)),
        "{detail}"
    );
    // The serving pack keeps it, and the newcomer contributes nothing else either.
    for _ in 0..3 {
        assert_eq!(test_served_by(&admin, &sbx).await, "test-pack");
    }
    let (_, capabilities) = admin.get("/v1/capabilities").await;
    assert_eq!(capabilities[0]["pack"], "test-pack", "{capabilities}");
    let (status, _) = create_status(&admin, "packbox").await;
    assert_eq!(status, 400, "a pack in conflict contributes no profile");

    // When the serving pack goes, the other one is the only claimant left.
    std::fs::remove_dir_all(server.packs_dir.join("test-pack")).unwrap();
    wait_row(&admin, "profile-pack", "active").await;
    assert_eq!(test_served_by(&admin, &sbx).await, "profile-pack");
    drop(server);

    // A pin gives the name to the pack it names, whichever came first.
    let root = tempfile::tempdir().unwrap();
    let (server, admin) = start(root.path(), "[packs.pins]\ntest = \"profile-pack\"\n", &[]);
    install_pack_active(&admin, &test_pack, &server.packs_dir, "test-pack").await;
    install_pack(&profile_pack, &server.packs_dir, "profile-pack");
    let row = wait_row(&admin, "test-pack", "conflict").await;
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("pinned to pack \"profile-pack\""),
        "{row}"
    );
    let sbx = sandbox(&admin).await;
    assert_eq!(test_served_by(&admin, &sbx).await, "profile-pack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_looping_on_exec_answers_plugin_timeout_at_the_wall_clock_bound() {
    let (_root, _server, admin) =
        serving_test_pack("[runtime]\ncall_wall_timeout_ms = 1500\n").await;
    let sbx = sandbox(&admin).await;

    let request = admin
        .request(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{sbx}/capabilities/test/loop_exec"),
        )
        .json(&json!({}))
        // Without the bound the call never ends: a failure, not a hung test.
        .timeout(std::time::Duration::from_secs(60));
    let (status, body) = admin.send(request).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["retriable"].as_bool()
        ),
        (504, Some("plugin_timeout"), Some(true)),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wall-clock bound of 1500 ms"),
        "{body}"
    );
    let (_, packs) = admin.get("/v1/packs").await;
    assert_eq!(packs[0]["inflight"], 0, "the generation can drain: {packs}");
    assert_eq!(test_served_by(&admin, &sbx).await, "test-pack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_are_shown_only_to_the_owner_of_the_call() {
    let (_root, server, admin) = serving_test_pack("").await;
    let alice = owner_client(&server, &admin, "alice").await;
    let bob = owner_client(&server, &admin, "bob").await;
    for (client, line) in [(&alice, "alice-private-line"), (&bob, "bob-private-line")] {
        let sbx = sandbox(client).await;
        let (status, answer) = call_test(client, &sbx, "log", json!({ "message": line })).await;
        assert_eq!(status, 200, "{answer}");
    }

    let messages = |detail: &Value| -> Vec<(String, String)> {
        detail["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("no logs in {detail}"))
            .iter()
            .map(|l| {
                (
                    l["owner"].as_str().unwrap_or("-").to_string(),
                    l["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pair = |owner: &str, line: &str| (owner.to_string(), line.to_string());
    let (_, seen) = alice.get("/v1/packs/test-pack").await;
    assert_eq!(
        messages(&seen),
        [pair("alice", "alice-private-line")],
        "{seen}"
    );
    let (_, seen) = bob.get("/v1/packs/test-pack").await;
    assert_eq!(messages(&seen), [pair("bob", "bob-private-line")], "{seen}");
    let (_, seen) = admin.get("/v1/packs/test-pack").await;
    let all = messages(&seen);
    for expected in [
        pair("alice", "alice-private-line"),
        pair("bob", "bob-private-line"),
    ] {
        assert!(all.contains(&expected), "admin misses {expected:?}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_key_or_the_metrics_token() {
    const TOKEN: &str = "metrics-token-3f9a2c71d";
    let root = tempfile::tempdir().unwrap();
    let (server, admin) = start(root.path(), "", &[("WHARF_METRICS_TOKEN", TOKEN)]);
    let alice = owner_client(&server, &admin, "alice").await;
    let get = |key: Option<&str>| {
        let client = Client::new(&server, key);
        async move {
            let response = client
                .request(reqwest::Method::GET, "/metrics")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    for (key, status, code) in [
        (None, 401, "unauthorized"),
        (Some("not-the-token"), 401, "unauthorized"),
    ] {
        let (got, body) = get(key).await;
        let body: Value = serde_json::from_str(&body).expect("a JSON error envelope");
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (status, body) = alice
        .send(alice.request(reqwest::Method::GET, "/metrics"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    for key in [ADMIN_KEY, TOKEN] {
        let (status, text) = get(Some(key)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("wharf_http_requests_total"), "{text}");
    }
    assert!(
        !server.logs().contains(TOKEN),
        "the metrics token was logged"
    );
    drop(server);

    // The operator may open it.
    let root = tempfile::tempdir().unwrap();
    let (server, _) = start(root.path(), "[metrics]\npublic = true\n", &[]);
    let (status, text) = get_public(&server).await;
    assert_eq!(status, 200, "{text}");
}

async fn get_public(server: &WharfProcess) -> (u16, String) {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}
