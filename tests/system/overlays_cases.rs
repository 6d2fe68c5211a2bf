//! Overlays in cases, through the real binary and a real Docker engine, and the flagship of
//! issue 12 (seed 003's real story): the `mini-relay` fixture at 0.1.129 forwards `kimi-a7m`
//! chat completions to the upstream's Responses endpoint. Against a mock upstream that has no
//! such endpoint, a case of the unpatched relay probed with `direct_base_url` set to the
//! upstream is `host_compatibility_gap`; a case of the same relay with `openai-cn-pack`'s
//! overlay is `ready` through the case's `access_url`.
//!
//! The mock upstream models the OpenAI API as a chat-completions-only upstream serves it
//! (`GET /v1/models`, `POST /v1/chat/completions`; `POST /v1/responses` is 404, as on
//! upstreams without the Responses API). It listens on the Docker bridge's host address, so
//! the relay's container reaches it. Without Docker these fail under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wharf_e2e::{Client, build_pack, install_pack, openai_cn_version};

use crate::cases::{CaseServer, case_server, wait_status, whole_log};
use crate::overlays::{OVERLAY, TARGET, git, relay_repo};

const UPSTREAM_KEY: &str = "sk-wharf-flagship-UPSTREAM-4b3a2918";

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

/// The upstream of the flagship: models and chat completions, no Responses API.
async fn upstream(
    State(seen): State<Seen>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = uri.path().to_string();
    seen.0.lock().unwrap().push(path.clone());
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {UPSTREAM_KEY}"));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})),
        )
            .into_response();
    }
    match path.as_str() {
        "/v1/models" => axum::Json(json!({"object": "list", "data": [
            {"id": "kimi-k2.6", "object": "model", "owned_by": "a7m"}
        ]}))
        .into_response(),
        "/v1/chat/completions" => {
            let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            axum::Json(json!({
                "id": "chatcmpl-a7m", "object": "chat.completion", "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
            }))
            .into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": format!("Invalid URL (POST {path})"), "type": "invalid_request_error"}})),
        )
            .into_response(),
    }
}

/// The host's address on the Docker bridge: where a case container reaches the host.
fn bridge_host_address() -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !gateway.is_empty() {
        return gateway;
    }
    // Older engines leave the gateway out of IPAM: docker0's own address is it.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no address of docker0 in {text:?}"))
}

/// The upstream's API root (`http://<bridge address>:<port>/v1`) and what it was asked.
async fn start_upstream() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new().fallback(upstream).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind((bridge_host_address(), 0))
        .await
        .unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn relay_case(repo: &Path, version: &str, upstream: &str, overlays: Option<(&str, &str)>) -> Value {
    let mut body = json!({
        "git_url": repo.to_str().unwrap(),
        "ref": format!("v{version}"),
        "container_port": 8080,
        "env": {"UPSTREAM_BASE_URL": upstream, "UPSTREAM_CHANNEL": "kimi-a7m"},
        "secret_env": {"UPSTREAM_API_KEY": UPSTREAM_KEY, "RELAY_API_KEY": UPSTREAM_KEY},
    });
    if let Some((target, version)) = overlays {
        body["target"] = json!(target);
        body["version"] = json!(version);
    }
    body
}

async fn create(admin: &Client, body: Value) -> String {
    let (status, case) = admin.post("/v1/cases", body).await;
    assert_eq!(status, 201, "{case}");
    case["case_id"].as_str().unwrap().to_string()
}

/// What the running relay says of itself (`GET /`).
async fn relay_info(case: &Value) -> Value {
    let url = case["access_url"].as_str().unwrap();
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn probe(admin: &Client, case: &Value, upstream: &str) -> Value {
    let (status, result) = admin
        .post(
            "/v1/probes",
            json!({
                "provider": "kimi-a7m",
                "base_url": case["access_url"],
                "direct_base_url": upstream,
                "api_key": UPSTREAM_KEY,
            }),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    result
}

async fn server_with_pack() -> Option<(CaseServer, Client)> {
    let cs = case_server(4, "[probes]\nallow_private_targets = true\n")?;
    let admin = cs.admin.clone();
    let built = cs.root.path().join("built/openai-cn-pack");
    build_pack("packs/openai-cn-pack", &built);
    install_pack(&built, &cs.server.packs_dir, "openai-cn-pack");
    admin.wait_for_provider("kimi-a7m").await;
    Some((cs, admin))
}

#[tokio::test]
async fn flagship_relay_is_a_compatibility_gap_without_the_overlay_and_ready_with_it() {
    let Some((cs, admin)) = server_with_pack().await else {
        return;
    };
    let (upstream, seen) = start_upstream().await;
    let repo = relay_repo(cs.root.path(), "0.1.129");

    // One after the other: two cases created in the same instant once met a storage failure
    // in the run engine (reported to the cases branch).
    let stock = create(&admin, relay_case(&repo, "0.1.129", &upstream, None)).await;
    let stock = wait_status(&admin, &stock, &["running"]).await;
    let patched = create(
        &admin,
        relay_case(&repo, "0.1.129", &upstream, Some((TARGET, "0.1.129"))),
    )
    .await;
    let patched = wait_status(&admin, &patched, &["running"]).await;
    assert_eq!(stock["status"], "running", "{stock:#}");
    assert_eq!(patched["status"], "running", "{patched:#}");
    assert_eq!(stock["overlays_applied"], json!([]));
    assert_eq!(
        patched["overlays_applied"],
        json!([format!("openai-cn-pack/{OVERLAY}")])
    );
    // The overlay is visible in the running app.
    let info = relay_info(&stock).await;
    assert_eq!(
        (info["version"].as_str(), info["upstream_api"].as_str()),
        (Some("0.1.129"), Some("responses")),
        "{info}"
    );
    assert_eq!(info["patches"], json!([]));
    let info = relay_info(&patched).await;
    assert_eq!(info["upstream_api"], "chat_completions", "{info}");
    assert_eq!(
        info["patches"],
        json!([format!("openai-cn-pack-{OVERLAY}")])
    );

    let gap = probe(&admin, &stock, &upstream).await;
    assert_eq!(gap["verdict"], "host_compatibility_gap", "{gap:#}");
    let relay_chat = gap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["via"] == "relay" && s["name"] == "chat_completion")
        .unwrap();
    assert_eq!(relay_chat["status"], 502, "{relay_chat}");
    assert!(
        seen.0.lock().unwrap().iter().any(|p| p == "/v1/responses"),
        "the stock relay asked the upstream's Responses endpoint"
    );

    let ready = probe(&admin, &patched, &upstream).await;
    assert_eq!(ready["verdict"], "ready", "{ready:#}");
    assert!(
        ready["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["passed"] == true),
        "{ready:#}"
    );
    assert_eq!(ready["pack_version"], openai_cn_version());
    // The key went to the containers as a secret: no answer shows it.
    for answer in [&stock, &patched, &gap, &ready] {
        assert!(!answer.to_string().contains(UPSTREAM_KEY), "{answer}");
    }
    // The server runs with WHARF_LOG=debug: bollard's request-body logging once put the
    // container's environment, secrets included, into it.
    assert!(
        !cs.server.logs().contains(UPSTREAM_KEY),
        "the key is in the server log"
    );
}

#[tokio::test]
async fn case_overlays_match_skip_other_versions_and_conflict_cleanly() {
    let Some((cs, admin)) = server_with_pack().await else {
        return;
    };
    let (upstream, _) = start_upstream().await;

    // Another version of the relay: no overlay matches, it runs as it is.
    let later = relay_repo(cs.root.path(), "0.1.140");
    let id = create(
        &admin,
        relay_case(&later, "0.1.140", &upstream, Some((TARGET, "0.1.140"))),
    )
    .await;
    let case = wait_status(&admin, &id, &["running"]).await;
    assert_eq!(case["overlays_applied"], json!([]));
    let info = relay_info(&case).await;
    assert_eq!(
        (info["upstream_api"].as_str(), &info["patches"]),
        (Some("responses"), &json!([])),
        "{info}"
    );
    let logs = Value::from(whole_log(&admin, &id).await).to_string();
    assert!(
        logs.contains("version 0.1.140 is outside >=0.1.120, <0.1.140"),
        "the patch log says why nothing applied: {logs}"
    );

    // A relay whose lines under the hunk changed: overlay_conflict naming file and hunk, no
    // build, and the checkout as cloned.
    let changed = relay_repo(cs.root.path(), "0.1.130");
    let relay = std::fs::read_to_string(changed.join("relay.py")).unwrap();
    std::fs::write(
        changed.join("relay.py"),
        relay.replace(
            "    return \"responses\"\n",
            "    return \"responses\"  # 0.1.130\n",
        ),
    )
    .unwrap();
    git(&changed, &["commit", "-q", "-am", "0.1.130"]);
    git(&changed, &["tag", "-f", "v0.1.130"]);
    let id = create(
        &admin,
        relay_case(&changed, "0.1.130", &upstream, Some((TARGET, "0.1.130"))),
    )
    .await;
    let case = wait_status(&admin, &id, &["failed"]).await;
    assert_eq!(case["error_code"], "overlay_conflict", "{case:#}");
    let message = case["error_message"].as_str().unwrap();
    assert!(
        message.contains("relay.py: hunk 1 of 1 (@@ -44,7 +44,12 @@) does not apply"),
        "{message}"
    );
    assert!(case["image_id"].is_null(), "nothing was built: {case:#}");
    assert_eq!(case["overlays_applied"], json!([]));
    // Nothing was written (the dry run failed; `wharf overlay apply` shows the same tree
    // clean in tests/system/overlays.rs), and the failed case left no checkout behind.
    let log = whole_log(&admin, &id).await;
    assert!(
        log.iter().any(|l| l["stream"] == "patch"
            && l["line"]
                .as_str()
                .unwrap()
                .ends_with("(nothing was written)")),
        "{log:#?}"
    );
    assert!(
        !cs.server.data_dir.join("cases").join(&id).exists(),
        "the checkout of a failed case is removed"
    );
}
