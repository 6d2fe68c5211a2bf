//! Relay hosts and imports through the real binary, against the mock sub2api
//! (`wharf_e2e::mock_sub2api`, which follows the public `Wei-Shaw/sub2api` admin API and gateway;
//! its header cites the handler files) and a mock OpenAI-compatible upstream
//! (`wharf_e2e::mock_upstream`), with the first-party `sub2api-host-pack` adapter and
//! `openai-cn-pack` provider. Each scenario is a real-run failure of seed 003.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wharf_e2e::mock_sub2api::MockSub2api;
use wharf_e2e::mock_upstream::MockUpstream;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active, poll};

const ADMIN_TOKEN: &str = "admin-9c1e5f7a2b4d6e8f0a1b3c5d7e9f";
const KEY_1: &str = "sk-kimi-e2e-ONE-5a4b3c2d1e0f9a8b";
const KEY_2: &str = "sk-kimi-e2e-TWO-6b5c4d3e2f1a0b9c";
const REVOKED: &str = "sk-kimi-e2e-REVOKED-7c6d5e4f3a2b";
const MODELS: &[&str] = &["kimi-k2.6", "kimi-k2.5", "moonshot-v1-8k"];

/// Short windows, so the confirmation worker's bounds are reached within a test.
const CONFIG: &str = "[sandbox]\ndocker = false\n\
[probes]\nwarmup_retry_ms = 600\nwarmup_backoff_ms = 200\n\
[relays]\nconfirm_window_ms = 6000\nconfirm_backoff_ms = 300\nconfirm_max_backoff_ms = 1000\n\
confirm_poll_ms = 100\nreconcile_interval_secs = 0\nitem_concurrency = 2\n";

fn start(root: &Path, config: &str) -> WharfProcess {
    std::fs::write(root.join("wharf.toml"), config).unwrap();
    WharfProcess::start(root, &[])
}

/// Builds and installs the provider and host adapter packs (once per root).
async fn install_packs(root: &Path, server: &WharfProcess, admin: &Client) {
    for (source, id) in [
        ("packs/openai-cn-pack", "openai-cn-pack"),
        ("packs/sub2api-host-pack", "sub2api-host-pack"),
    ] {
        let built = root.join("built").join(id);
        if !built.exists() {
            build_pack(source, &built);
        }
        install_pack_active(admin, &built, &server.packs_dir, id).await;
    }
    admin.wait_for_provider("kimi").await;
}

async fn register(admin: &Client, host: &MockSub2api) -> String {
    let (status, body) = admin
        .post(
            "/v1/hosts",
            json!({"kind": "sub2api", "base_url": host.base_url(), "admin_token": ADMIN_TOKEN}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn import_body(host_id: &str, upstream: &MockUpstream, keys: &[&str]) -> Value {
    json!({
        "host_id": host_id, "provider": "kimi", "base_url": upstream.v1_url(),
        "api_keys": keys, "models": ["kimi-k2.6"], "mode": "subscription",
    })
}

/// Submits an import and waits for its end; the final import.
async fn import(admin: &Client, body: Value) -> Value {
    let (status, created) = admin.post("/v1/imports", body).await;
    assert_eq!(status, 201, "{created}");
    finished(admin, created["id"].as_str().unwrap()).await
}

async fn finished(admin: &Client, id: &str) -> Value {
    admin
        .wait_for(&format!("/v1/imports/{id}"), "the import's end", |import| {
            import["status"] != "running"
        })
        .await
}

fn items(import: &Value) -> Vec<Value> {
    import["items"].as_array().cloned().unwrap_or_default()
}

fn events<'a>(item: &'a Value, event: &str) -> Vec<&'a Value> {
    item["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Every object on the mock host as `(kind, id)`, in the adapter's resource kinds.
fn inventory(host: &MockSub2api) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    all.extend(
        host.groups()
            .iter()
            .map(|g| ("group".into(), g.id.to_string())),
    );
    all.extend(
        host.accounts()
            .iter()
            .map(|a| ("account".into(), a.id.to_string())),
    );
    all.extend(
        host.users()
            .iter()
            .map(|u| ("user".into(), u.id.to_string())),
    );
    all.extend(
        host.api_keys()
            .iter()
            // The adapter names a user's key with its owner: `<user id>:<key id>`.
            .map(|k| ("api-key".into(), format!("{}:{}", k.user_id, k.id))),
    );
    all.extend(
        host.subscriptions()
            .iter()
            .map(|s| ("subscription".into(), s.id.to_string())),
    );
    all
}

/// The resources an import recorded in a state, as `(kind, host id)`.
fn recorded(import: &Value, state: &str) -> BTreeSet<(String, String)> {
    import["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == state)
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["host_resource_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The one account of an item on the mock host: (id, status).
fn account_of(host: &MockSub2api, item: &Value) -> (i64, String) {
    let name = item["name"].as_str().unwrap();
    let found: Vec<_> = host
        .accounts()
        .into_iter()
        .filter(|a| a.name.starts_with(name))
        .collect();
    assert_eq!(found.len(), 1, "one account named {name}*: {found:?}");
    (found[0].id, found[0].status.clone())
}

/// No secret in any text the server gave out or wrote.
fn assert_no_secret(texts: &[&str], secrets: &[&str]) {
    for text in texts {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a secret ({}…) leaked into a server answer or log",
                &secret[..6]
            );
        }
    }
}

#[tokio::test]
async fn imports_prove_access_through_the_relay_and_roll_back_exactly() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path(), CONFIG);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1, KEY_2], &[REVOKED]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let mut answers: Vec<String> = Vec::new();

    // A wrong admin token: the adapter's detect fails and nothing is registered.
    let (status, body) = admin
        .post(
            "/v1/hosts",
            json!({"kind": "sub2api", "base_url": host.base_url(), "admin_token": "not-the-token"}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "relay_host_unreachable", "{body}");
    let (status, body) = admin
        .post(
            "/v1/hosts",
            json!({"kind": "sub2api-typo", "base_url": host.base_url(), "admin_token": ADMIN_TOKEN}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sub2api"),
        "{body}"
    );

    let host_id = register(&admin, &host).await;
    let (_, registered) = admin.get(&format!("/v1/hosts/{host_id}")).await;
    assert_eq!(registered["kind"], "sub2api");
    assert!(
        !registered["version"].as_str().unwrap().is_empty(),
        "{registered}"
    );
    assert!(
        registered["token_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("admi")
    );
    answers.push(registered.to_string());

    // An unknown model: the three nearest, nothing queued.
    let mut unknown = import_body(&host_id, &upstream, &[KEY_1]);
    unknown["models"] = json!(["kimi-k2.7"]);
    let (status, body) = admin.post("/v1/imports", unknown).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kimi-k2.6"),
        "{body}"
    );

    // The dry run plans three creations and touches nothing.
    let before = inventory(&host);
    let mut dry = import_body(&host_id, &upstream, &[KEY_1, KEY_2, REVOKED]);
    dry["dry_run"] = json!(true);
    let (status, plan) = admin.post("/v1/imports", dry).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["items"].as_array().unwrap().len(), 3);
    assert!(
        plan["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "created"),
        "{plan}"
    );
    assert_eq!(inventory(&host), before, "a dry run created something");
    answers.push(plan.to_string());

    // Three keys, one revoked upstream: two ready, one failed `upstream_auth` with evidence.
    let first = import(
        &admin,
        import_body(&host_id, &upstream, &[KEY_1, KEY_2, REVOKED]),
    )
    .await;
    answers.push(first.to_string());
    let list = items(&first);
    assert_eq!(first["status"], "partially_succeeded", "{first}");
    for item in &list[..2] {
        assert_eq!(item["access_status"], "ready", "{item}");
        assert_eq!(item["outcome"], "created", "{item}");
        let probes = events(item, "probe");
        assert_eq!(probes.last().unwrap()["verdict"], "ready", "{item}");
        assert_eq!(probes.last().unwrap()["via"], "gateway", "{item}");
    }
    let revoked = &list[2];
    assert_eq!(revoked["access_status"], "failed", "{revoked}");
    assert_eq!(revoked["error_code"], "upstream_auth", "{revoked}");
    let direct = events(revoked, "probe")
        .into_iter()
        .find(|p| p["via"] == "upstream")
        .unwrap_or_else(|| panic!("no direct probe in the evidence: {revoked}"));
    assert_eq!(direct["verdict"], "upstream_auth", "{revoked}");
    // Every resource on the host is one this import recorded as created.
    let created = recorded(&first, "created");
    assert_eq!(
        inventory(&host)
            .difference(&before)
            .cloned()
            .collect::<BTreeSet<_>>(),
        created,
        "the host holds exactly what the import recorded"
    );

    // A host with state cannot be deleted.
    let (status, body) = admin.delete(&format!("/v1/hosts/{host_id}")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "host_in_use");

    // Rollback removes exactly what the import created, and nothing else.
    let first_id = first["id"].as_str().unwrap();
    let (status, report) = admin
        .post(&format!("/v1/imports/{first_id}/rollback"), json!({}))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["deleted"].as_array().unwrap().len(),
        created.len(),
        "{report}"
    );
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(
        inventory(&host),
        before,
        "rollback left or removed the wrong things"
    );
    let (_, rolled) = admin.get(&format!("/v1/imports/{first_id}")).await;
    assert_eq!(rolled["status"], "rolled_back");
    let (status, _) = admin.delete(&format!("/v1/hosts/{host_id}")).await;
    assert_eq!(status, 204, "a host without state can go");

    let managed: Vec<String> = host.api_keys().iter().map(|k| k.key.clone()).collect();
    let logs = server.logs();
    let mut texts: Vec<&str> = answers.iter().map(String::as_str).collect();
    texts.push(&logs);
    let mut secrets = vec![ADMIN_TOKEN, KEY_1, KEY_2, REVOKED];
    secrets.extend(managed.iter().map(String::as_str));
    assert_no_secret(&texts, &secrets);
}

#[tokio::test]
async fn reimports_reuse_reactivate_and_reconcile_reports_drift_without_undoing_it() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path(), CONFIG);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1, KEY_2], &[]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let host_id = register(&admin, &host).await;

    let first = import(&admin, import_body(&host_id, &upstream, &[KEY_1, KEY_2])).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let (_, report) = admin
        .post(&format!("/v1/hosts/{host_id}/reconcile"), json!({}))
        .await;
    assert_eq!(report["status"], "in_sync", "{report}");
    assert_eq!(report["access"].as_array().unwrap().len(), 2, "{report}");
    assert!(
        report["access"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["verdict"] == "ready"),
        "{report}"
    );

    // The same key again: reused, nothing created.
    let before = inventory(&host);
    let again = import(&admin, import_body(&host_id, &upstream, &[KEY_1])).await;
    assert_eq!(items(&again)[0]["outcome"], "reused", "{again}");
    assert_eq!(items(&again)[0]["access_status"], "ready", "{again}");
    assert_eq!(inventory(&host), before, "a reused key created something");
    // The same key with another model list: the account's models are patched, nothing created.
    let mut more = import_body(&host_id, &upstream, &[KEY_1]);
    more["models"] = json!(["kimi-k2.6", "kimi k2.5"]);
    let mut plan = more.clone();
    plan["dry_run"] = json!(true);
    let (status, plan) = admin.post("/v1/imports", plan).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["items"][0]["outcome"], "patch_only", "{plan}");
    let patched = import(&admin, more).await;
    assert_eq!(items(&patched)[0]["outcome"], "patch_only", "{patched}");
    assert_eq!(items(&patched)[0]["access_status"], "ready", "{patched}");
    assert_eq!(
        patched["models"],
        json!(["kimi-k2.6", "kimi-k2.5"]),
        "aliases resolve"
    );
    assert_eq!(inventory(&host), before, "a patched key created something");

    // Disabled by hand: reconcile reports it and leaves it disabled.
    let second_item = &items(&first)[1];
    let (account, _) = account_of(&host, second_item);
    assert!(host.disable_account(account));
    let (_, report) = admin
        .post(&format!("/v1/hosts/{host_id}/reconcile"), json!({}))
        .await;
    assert_eq!(report["status"], "drifted", "{report}");
    let changed = report["changed"].as_array().unwrap();
    assert!(
        changed.iter().any(
            |d| d["host_resource_id"].as_str() == Some(&*account.to_string())
                && d["host_status"] == "inactive"
        ),
        "{report}"
    );
    assert_eq!(
        account_of(&host, second_item).1,
        "inactive",
        "reconcile re-enabled it"
    );
    // Re-importing that key reactivates it, as asked.
    let revived = import(&admin, import_body(&host_id, &upstream, &[KEY_2])).await;
    assert_eq!(items(&revived)[0]["outcome"], "reactivated", "{revived}");
    assert_eq!(items(&revived)[0]["access_status"], "ready", "{revived}");

    // Deleted by hand: reconcile names it as missing.
    let (gone, _) = account_of(&host, &items(&first)[0]);
    assert!(host.delete_account(gone));
    let (_, report) = admin
        .post(&format!("/v1/hosts/{host_id}/reconcile"), json!({}))
        .await;
    assert_eq!(report["status"], "drifted", "{report}");
    assert!(
        report["missing"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |d| d["host_resource_id"].as_str() == Some(&*gone.to_string())
                    && d["kind"] == "account"
            ),
        "{report}"
    );
    let (_, shown) = admin.get(&format!("/v1/hosts/{host_id}")).await;
    assert_eq!(shown["reconcile"]["status"], "drifted", "{shown}");
}

#[tokio::test]
async fn confirmation_rides_out_the_windows_after_an_import_and_repair_is_recorded() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path(), CONFIG);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1], &[]).await;

    // 503 "no available accounts" for a few seconds after the import: ready in the end.
    let warming = MockSub2api::start(ADMIN_TOKEN).await;
    warming.warmup(Duration::from_millis(2500));
    let id = register(&admin, &warming).await;
    let done = import(&admin, import_body(&id, &upstream, &[KEY_1])).await;
    let item = &items(&done)[0];
    assert_eq!(item["access_status"], "ready", "{item}");
    let waits = events(item, "confirm_scheduled");
    assert!(
        waits.iter().any(|w| w["class"] == "relay_unavailable"),
        "the warm-up was not ridden out by the confirmation worker: {item}"
    );

    // A relay that never recovers: failed, with the upstream's message.
    let stuck = MockSub2api::start(ADMIN_TOKEN).await;
    stuck.warmup(Duration::MAX);
    let id = register(&admin, &stuck).await;
    let done = import(&admin, import_body(&id, &upstream, &[KEY_1])).await;
    let item = &items(&done)[0];
    assert_eq!(item["access_status"], "failed", "{item}");
    assert_eq!(item["error_code"], "relay_unavailable", "{item}");
    assert!(
        item["error_message"]
            .as_str()
            .unwrap()
            .contains("No available accounts"),
        "{item}"
    );
    assert!(item["attempts"].as_i64().unwrap() >= 2, "{item}");

    // A 403 right after the import (the relay's key cache): confirmed ready later.
    let forbidding = MockSub2api::start(ADMIN_TOKEN).await;
    forbidding.forbid_first_probe(true);
    let id = register(&admin, &forbidding).await;
    let done = import(&admin, import_body(&id, &upstream, &[KEY_1])).await;
    let item = &items(&done)[0];
    assert_eq!(item["access_status"], "ready", "{item}");
    assert!(
        events(item, "confirm_scheduled")
            .iter()
            .any(|w| w["class"] == "upstream_auth"),
        "{item}"
    );

    // The relay routes the provider to the Responses API the upstream lacks: the repair is
    // applied and recorded, and `ready` comes only from a passing probe after it.
    let routing = MockSub2api::start(ADMIN_TOKEN).await;
    routing.route_openai_to_responses(true);
    let id = register(&admin, &routing).await;
    let done = import(&admin, import_body(&id, &upstream, &[KEY_1])).await;
    let item = &items(&done)[0];
    assert_eq!(item["access_status"], "ready", "{item}");
    assert!(item["repair"].is_string(), "{item}");
    let repairs = events(item, "repair");
    assert_eq!(repairs.len(), 1, "{item}");
    assert_eq!(repairs[0]["applied"], true, "{item}");
    let probes = events(item, "probe");
    let gateway: Vec<&&Value> = probes.iter().filter(|p| p["via"] == "gateway").collect();
    assert_ne!(gateway.first().unwrap()["verdict"], "ready", "{item}");
    assert_eq!(gateway.last().unwrap()["verdict"], "ready", "{item}");
    assert!(
        upstream.calls_to("POST /v1/responses") > 0,
        "the routing never happened"
    );
}

#[tokio::test]
async fn a_killed_server_resumes_the_import_without_duplicates_or_orphans() {
    let root = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("item_concurrency = 2", "item_concurrency = 1");
    let mut server = start(root.path(), &config);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let keys: Vec<String> = (0..10)
        .map(|n| format!("sk-kimi-e2e-bulk-{n:02}-0a1b2c3d"))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let upstream = MockUpstream::start(MODELS, &key_refs, &[]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    // Each account warms up a while, so each item's first probe holds the import up (the
    // probe's own warm-up window) and the kill lands between items or in one.
    host.warmup(Duration::from_millis(1500));
    let before = inventory(&host);
    let host_id = register(&admin, &host).await;
    let (status, created) = admin
        .post("/v1/imports", import_body(&host_id, &upstream, &key_refs))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // Kill -9 once some accounts exist and before the last does.
    poll("the import under way", || async {
        let n = host.accounts().len();
        if (2..keys.len()).contains(&n) {
            Ok(())
        } else {
            Err(format!("{n} accounts"))
        }
    })
    .await;
    server.kill();
    let accounts_at_kill = host.accounts().len();
    assert!(
        accounts_at_kill < keys.len(),
        "the import ended before the kill"
    );

    let server = start(root.path(), &config);
    let admin = admin.rebase(&server);
    let done = finished(&admin, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        items(&done).iter().all(|i| i["access_status"] == "ready"),
        "{done}"
    );
    // No duplicate: one account per key, names unique.
    let names: Vec<String> = host.accounts().iter().map(|a| a.name.clone()).collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(names.len(), keys.len(), "{names:?}");
    assert_eq!(unique.len(), names.len(), "duplicate accounts: {names:?}");
    // No orphan: everything new on the host is recorded as this import's, and no intent is left.
    let new: BTreeSet<_> = inventory(&host).difference(&before).cloned().collect();
    assert_eq!(new, recorded(&done, "created"), "{}", done["resources"]);
    assert!(
        recorded(&done, "intent").is_empty(),
        "{}",
        done["resources"]
    );
    let run = &done["run"];
    assert!(
        run["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("restarted")),
        "{run}"
    );
}

#[tokio::test]
async fn another_owner_sees_and_touches_nothing_of_a_host_or_import() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path(), CONFIG);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1], &[]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let host_id = register(&admin, &host).await;
    let done = import(&admin, import_body(&host_id, &upstream, &[KEY_1])).await;
    let import_id = done["id"].as_str().unwrap();

    let (status, key) = admin.post("/v1/keys", json!({"owner": "mallory"})).await;
    assert_eq!(status, 201, "{key}");
    let mallory = Client::new(&server, key["key"].as_str());
    for (status, body) in [
        mallory.get(&format!("/v1/hosts/{host_id}")).await,
        mallory.get(&format!("/v1/imports/{import_id}")).await,
        mallory.delete(&format!("/v1/hosts/{host_id}")).await,
        mallory
            .post(&format!("/v1/hosts/{host_id}/reconcile"), json!({}))
            .await,
        mallory
            .post(&format!("/v1/imports/{import_id}/rollback"), json!({}))
            .await,
        mallory
            .post("/v1/imports", import_body(&host_id, &upstream, &[KEY_1]))
            .await,
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let (_, hosts) = mallory.get("/v1/hosts").await;
    assert_eq!(hosts, json!([]));
    let (_, imports) = mallory.get("/v1/imports").await;
    assert_eq!(imports, json!([]));
    // The owner's import is untouched.
    let (_, still) = admin.get(&format!("/v1/imports/{import_id}")).await;
    assert_eq!(still["status"], "succeeded", "{still}");
    assert!(!host.accounts().is_empty());
}

#[tokio::test]
async fn cli_import_submit_follows_to_the_end() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path(), CONFIG);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1], &[REVOKED]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let host_id = register(&admin, &host).await;
    let keys = root.path().join("keys.txt");
    std::fs::write(&keys, format!("# two keys\n{KEY_1}\n\n{REVOKED}\n")).unwrap();
    let base_url = upstream.v1_url();
    let url = server.base_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wharf_e2e::wharf_bin())
            .args(["import", "submit", "--host", &host_id, "--provider", "kimi"])
            .arg("--keys-file")
            .arg(&keys)
            .args(["--models", "kimi-k2.6", "--base-url", &base_url, "--follow"])
            .env("WHARF_URL", url)
            .env("WHARF_API_KEY", ADMIN_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("] 2/2  ready 1  failed 1"), "{stderr}");
    assert!(stdout.contains("upstream_auth"), "{stdout}");
    assert_no_secret(&[&stdout, &stderr], &[KEY_1, REVOKED, ADMIN_TOKEN]);
}

#[tokio::test]
async fn hosts_are_reconciled_on_a_schedule() {
    let root = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("reconcile_interval_secs = 0", "reconcile_interval_secs = 1");
    let server = start(root.path(), &config);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    install_packs(root.path(), &server, &admin).await;
    let upstream = MockUpstream::start(MODELS, &[KEY_1], &[]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let host_id = register(&admin, &host).await;
    let done = import(&admin, import_body(&host_id, &upstream, &[KEY_1])).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Disabled by hand: the next scheduled reconcile (no request asks for it) reports it.
    let (account, _) = account_of(&host, &items(&done)[0]);
    assert!(host.disable_account(account));
    let shown = admin
        .wait_for(
            &format!("/v1/hosts/{host_id}"),
            "a scheduled drift report",
            |h| h["reconcile"]["status"] == "drifted",
        )
        .await;
    assert!(
        shown["reconcile"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["host_resource_id"].as_str() == Some(&*account.to_string())),
        "{shown}"
    );
    assert_eq!(
        account_of(&host, &items(&done)[0]).1,
        "inactive",
        "it re-enabled it"
    );
}
