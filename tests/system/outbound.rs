//! The outbound rules through the real binary (issue 10, point 5): a provider plugin cannot
//! steer a probe, or the user's key, to another host; redirects do not leave the target's
//! origin; private targets need an admin key or the operator's `allow_private_targets`.
//! Every server here is on loopback.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

/// The user's upstream key: it may go to the target's origin and nowhere else.
const KEY: &str = "sk-wharf-e2e-OUTBOUND-0a1b2c3d4e5f";
const ALLOW_PRIVATE: (&str, &str) = ("WHARF_PROBES_ALLOW_PRIVATE_TARGETS", "true");
const NOT_ALLOWED: (u16, &str) = (403, "target_not_allowed");
/// Same-origin redirects the host follows at most (`outbound::client::MAX_REDIRECTS`).
const MAX_REDIRECTS: usize = 3;

/// What a loopback upstream saw.
#[derive(Clone, Default)]
struct Seen {
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Requests that carried the key anywhere (a header, the URL or the body).
    keyed: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn keyed(&self) -> usize {
        self.keyed.load(Ordering::SeqCst)
    }
    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Asserts that nothing at all reached this server: no connection, no request, no key.
    fn assert_untouched(&self, why: &str) {
        assert_eq!(
            (self.connections(), self.requests(), self.keyed()),
            (0, 0, 0),
            "{why}: {:?}",
            self.paths()
        );
    }
}

/// A loopback upstream that counts what reaches it. Paths under `/away/` answer a 302 to
/// `away_to`; `/hop/` a 307 to `/landing/v1/models` on the same origin; `/loop/` a 302 to
/// itself; anything else 200 with an empty model list.
struct Upstream {
    base: String,
    port: u16,
    seen: Seen,
}

#[derive(Clone)]
struct Shared {
    seen: Seen,
    away_to: Option<String>,
}

async fn answer(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let seen = &shared.seen;
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let carries_key = uri.to_string().contains(KEY)
        || body.contains(KEY)
        || headers
            .values()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(KEY));
    if carries_key {
        seen.keyed.fetch_add(1, Ordering::SeqCst);
    }
    let path = uri.path().to_string();
    seen.paths.lock().unwrap().push(path.clone());
    let redirect = |status: StatusCode, location: String| {
        (status, [("location", location)], "").into_response()
    };
    match (path.split('/').nth(1), &shared.away_to) {
        (Some("away"), Some(to)) => redirect(StatusCode::FOUND, format!("{to}/v1/models")),
        (Some("hop"), _) => redirect(StatusCode::TEMPORARY_REDIRECT, "/landing/v1/models".into()),
        (Some("loop"), _) => redirect(StatusCode::FOUND, path),
        _ => axum::Json(json!({"object": "list", "data": []})).into_response(),
    }
}

async fn start_upstream(away_to: Option<String>) -> Upstream {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = seen.connections.clone();
    let listener = listener.tap_io(move |_| {
        connections.fetch_add(1, Ordering::SeqCst);
    });
    let app = Router::new().fallback(answer).with_state(Shared {
        seen: seen.clone(),
        away_to,
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        base: format!("http://127.0.0.1:{port}"),
        port,
        seen,
    }
}

/// Starts (or restarts, on the same root) a server with the steering fixture pack.
async fn start(root: &Path, env: &[(&str, &str)]) -> (WharfProcess, Client) {
    let server = WharfProcess::start(root, env);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    if !server.packs_dir.join("steering-pack").exists() {
        let built = root.join("built/steering-pack");
        build_pack("tests/fixtures/packs/steering-pack", &built);
        install_pack_active(&admin, &built, &server.packs_dir, "steering-pack").await;
    }
    admin.wait_for_provider("steer").await;
    (server, admin)
}

/// The secret of a new non-admin key of `owner`.
async fn user_key(admin: &Client, owner: &str) -> String {
    let (status, created) = admin.post("/v1/keys", json!({"owner": owner})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["admin"], false, "{created}");
    created["key"].as_str().unwrap().to_string()
}

fn probe(provider: &str, base_url: &str, model: &str) -> Value {
    json!({"provider": provider, "base_url": base_url, "api_key": KEY, "model": model})
}

/// A target of the `steer` provider at `base_url`, probed every second.
fn target_of(base_url: &str) -> Value {
    json!({"provider": "steer", "base_url": base_url, "api_key": KEY, "interval_secs": 1})
}

/// Sends `body` to `path`, which must answer HTTP `status` with the error `code`; returns the
/// error's message (and the whole answer, for the key checks).
async fn refused(
    client: &Client,
    path: &str,
    body: Value,
    (status, code): (u16, &str),
) -> (String, Value) {
    let what = body.to_string();
    let (got, answer) = client.post(path, body).await;
    assert_eq!(
        (got, &answer["error"]["code"]),
        (status, &json!(code)),
        "{path} {what}: {answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap().to_string();
    (message, answer)
}

/// A one-off probe of `base_url` with a harmless plan, which must come out ready.
async fn probe_is_ready(client: &Client, base_url: &str) {
    let (status, result) = client
        .post("/v1/probes", probe("steer", base_url, "plain"))
        .await;
    assert_eq!(
        (status, &result["verdict"]),
        (200, &json!("ready")),
        "{base_url}: {result}"
    );
}

/// Registers a target of `base_url` and waits until its scheduled probe is ready; returns the
/// target's status path.
async fn ready_target(client: &Client, base_url: &str) -> String {
    let (status, target) = client.post("/v1/targets", target_of(base_url)).await;
    assert_eq!(status, 201, "{target}");
    let status_path = format!("/v1/targets/{}/status", target["id"].as_str().unwrap());
    client
        .wait_for(&status_path, "a ready scheduled probe", |s| {
            s["verdict"] == "ready"
        })
        .await;
    status_path
}

#[tokio::test]
async fn a_provider_plugin_cannot_steer_a_probe_or_the_key_elsewhere() {
    let target = start_upstream(None).await;
    let elsewhere = start_upstream(None).await;
    let root = tempfile::tempdir().unwrap();
    // Loopback targets are allowed here, so that only the path rules stand in the way.
    let (server, admin) = start(root.path(), &[ALLOW_PRIVATE]).await;
    let alice = Client::new(&server, Some(&user_key(&admin, "alice").await));
    // A bare base is what `@host` needs (textually, `http://a:1` + `@b:2/...` puts `a:1` in
    // the userinfo); a base with a path is what `..` needs to escape from.
    let bases = [target.base.clone(), format!("{}/tenant", target.base)];
    let port2 = elsewhere.port;

    let mut answers = Vec::new();
    for (base, attack) in bases.iter().flat_map(|base| {
        [
            "at-host",
            "double-slash",
            "scheme",
            "backslash",
            "dot-dot",
            "encoded-dot-dot",
            "encoded-slash",
        ]
        .map(move |attack| (base, attack))
    }) {
        for provider in ["steer", "steer-x-api-key"] {
            let (message, body) = refused(
                &alice,
                "/v1/probes",
                probe(provider, base, &format!("{attack}:{port2}")),
                (422, "invalid_probe_step"),
            )
            .await;
            assert!(
                message.contains("`steer`") && message.contains("a path must"),
                "the error names the step and the rule: {message}"
            );
            answers.push(body.to_string());
        }
    }
    elsewhere
        .seen
        .assert_untouched("a steered probe reached the other server");
    assert_eq!(
        target.seen.requests(),
        0,
        "a refused plan sends no request at all, not even its harmless steps: {:?}",
        target.seen.paths()
    );

    // A scheduled target with a steering plan records the refusal and reaches nothing.
    let (status, steered) = alice
        .post(
            "/v1/targets",
            json!({"provider": "steer", "base_url": target.base, "api_key": KEY,
                   "model": format!("at-host:{port2}"), "interval_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{steered}");
    let status_path = format!("/v1/targets/{}/status", steered["id"].as_str().unwrap());
    let recorded = alice
        .wait_for(&status_path, "the steered target's first run", |s| {
            !s["verdict"].is_null()
        })
        .await;
    assert_eq!(recorded["verdict"], "invalid_probe_step", "{recorded}");
    answers.push(recorded.to_string());
    assert_eq!(elsewhere.seen.requests(), 0);
    assert_eq!(target.seen.requests(), 0);

    // The same plugin with a well-behaved plan reaches the target, key and all: the setup
    // would have shown a leak.
    for provider in ["steer", "steer-x-api-key"] {
        let (status, result) = alice
            .post("/v1/probes", probe(provider, &bases[1], "plain"))
            .await;
        assert_eq!(
            (status, &result["verdict"]),
            (200, &json!("ready")),
            "{result}"
        );
        answers.push(result.to_string());
    }
    assert_eq!(
        target.seen.paths(),
        ["/tenant/v1/models", "/tenant/v1/models"]
    );
    assert_eq!(
        target.seen.keyed(),
        2,
        "the key goes to the target's origin"
    );
    assert_eq!(elsewhere.seen.keyed(), 0);

    for answer in &answers {
        assert!(!answer.contains(KEY), "an answer carries the key: {answer}");
    }
    assert!(!server.logs().contains(KEY), "the key reached the log");
}

#[tokio::test]
async fn redirects_are_followed_only_within_the_target_origin() {
    let elsewhere = start_upstream(None).await;
    let target = start_upstream(Some(elsewhere.base.clone())).await;
    let root = tempfile::tempdir().unwrap();
    let (server, admin) = start(root.path(), &[ALLOW_PRIVATE]).await;
    let alice = Client::new(&server, Some(&user_key(&admin, "alice").await));

    // A 302 to another origin is the step's answer, for users and admins alike.
    for client in [&alice, &admin] {
        let (status, result) = client
            .post(
                "/v1/probes",
                probe("steer", &format!("{}/away", target.base), "plain"),
            )
            .await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(
            (&result["verdict"], &result["steps"][0]["status"]),
            (&json!("upstream_error"), &json!(302)),
            "{result}"
        );
    }
    elsewhere
        .seen
        .assert_untouched("a cross-origin redirect was followed");

    // A same-origin redirect is followed, with the key (it stays at its origin).
    let (_, result) = alice
        .post(
            "/v1/probes",
            probe("steer", &format!("{}/hop", target.base), "plain"),
        )
        .await;
    assert_eq!(
        (&result["verdict"], &result["steps"][0]["status"]),
        (&json!("ready"), &json!(200)),
        "{result}"
    );
    let hops: Vec<String> = target
        .seen
        .paths()
        .into_iter()
        .filter(|p| !p.starts_with("/away/"))
        .collect();
    assert_eq!(hops, ["/hop/v1/models", "/landing/v1/models"]);
    assert_eq!(target.seen.keyed(), target.seen.requests());

    // ... a bounded number of times.
    let (_, result) = alice
        .post(
            "/v1/probes",
            probe("steer", &format!("{}/loop", target.base), "plain"),
        )
        .await;
    assert_eq!(result["steps"][0]["status"], 302, "{result}");
    let loops = target
        .seen
        .paths()
        .iter()
        .filter(|p| p.starts_with("/loop/"))
        .count();
    assert_eq!(
        loops,
        1 + MAX_REDIRECTS,
        "the first request and its redirects"
    );
}

#[tokio::test]
async fn private_targets_need_an_admin_key_or_the_operator_setting() {
    let target = start_upstream(None).await;
    let users_target = start_upstream(None).await;
    let root = tempfile::tempdir().unwrap();
    let tick = ("WHARF_PROBE_TICK_MS", "100");
    let (mut server, admin) = start(root.path(), &[tick]).await;
    let alice_key = user_key(&admin, "alice").await;
    let alice = Client::new(&server, Some(&alice_key));

    // Setting off: a user's probe of loopback, in any spelling, is refused before connecting.
    for base in [
        target.base.clone(),
        format!("http://localhost:{}", target.port),
        format!("http://[::ffff:127.0.0.1]:{}", target.port),
        format!("http://2130706433:{}", target.port),
    ] {
        let (message, _) = refused(
            &alice,
            "/v1/probes",
            probe("steer", &base, "plain"),
            NOT_ALLOWED,
        )
        .await;
        assert!(
            message.contains("loopback") && message.contains("allow_private_targets"),
            "{message}"
        );
    }
    refused(&alice, "/v1/targets", target_of(&target.base), NOT_ALLOWED).await;
    let (_, listed) = alice.get("/v1/targets").await;
    assert_eq!(listed, json!([]));
    assert_eq!(
        target.seen.connections(),
        0,
        "a refused target was connected to: {:?}",
        target.seen.paths()
    );

    // An admin key probes the same target (a relay on the same host), now and on schedule.
    probe_is_ready(&admin, &target.base).await;
    assert!(target.seen.connections() > 0);
    let admins_status = ready_target(&admin, &target.base).await;
    let admins_last = newest_result(&admin, &admins_status).await;

    // Setting on: the user's probe and target run.
    server.kill();
    let (mut server, _) = start(root.path(), &[tick, ALLOW_PRIVATE]).await;
    let alice = Client::new(&server, Some(&alice_key));
    probe_is_ready(&alice, &users_target.base).await;
    let users_status = ready_target(&alice, &users_target.base).await;

    // Setting off again: the check runs at every scheduled probe, not only at creation.
    server.kill();
    let connections_before = users_target.seen.connections();
    let (server, admin) = start(root.path(), &[tick]).await;
    let alice = Client::new(&server, Some(&alice_key));
    let refused = alice
        .wait_for(&users_status, "the user's target refused", |s| {
            s["verdict"] == "target_not_allowed"
        })
        .await;
    let detail = refused["results"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("loopback"), "{refused}");
    assert_eq!(
        users_target.seen.connections(),
        connections_before,
        "the refused scheduled probe connected"
    );
    // The admin's target keeps running.
    let admins_now = admin
        .wait_for(&admins_status, "the admin's target probed again", |s| {
            s["results"][0]["id"] != admins_last
        })
        .await;
    assert_eq!(admins_now["verdict"], "ready", "{admins_now}");
}

async fn newest_result(client: &Client, status_path: &str) -> Value {
    let (_, status) = client.get(status_path).await;
    status["results"][0]["id"].clone()
}
