//! Plugins' `wasi:http` under the outbound rules, with a real compiled planner that sends
//! whatever requests it is told to (tests/fixtures/plugins/http-planner): what a hostile
//! pack would try. Two local servers play a granted origin and somewhere else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::{Value, json};
use wharf::outbound::{BaseUrl, ClientOptions, Credential, OutboundClient, Reach};
use wharf::runtime::bindings::planner::exports::wharf::plugin::planner::{
    Action, ModelEndpoint, Task,
};
use wharf::runtime::http::HttpGrant;

use common::Harness;

const KEY: &str = "sk-granted-endpoint-key-0123456789";

/// Path and `Authorization` of one request a local server saw.
type Request = (String, Option<String>);

/// What a local server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.0.lock().iter().map(|(path, _)| path.clone()).collect()
    }

    fn auth_of(&self, path: &str) -> Vec<Option<String>> {
        self.0
            .lock()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, auth)| auth.clone())
            .collect()
    }
}

/// A server on loopback; `/redirect` sends the client to `redirect_to`.
async fn serve(seen: Seen, redirect_to: Option<String>) -> String {
    let app = Router::new().fallback(get(move |uri: axum::http::Uri, headers: HeaderMap| {
        let seen = seen.clone();
        let redirect_to = redirect_to.clone();
        async move {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            seen.0.lock().push((uri.path().to_string(), auth));
            match (uri.path(), redirect_to) {
                ("/redirect", Some(to)) => {
                    (StatusCode::FOUND, [(header::LOCATION, to)], "").into_response()
                }
                _ => (StatusCode::OK, "hello").into_response(),
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

fn client() -> Arc<OutboundClient> {
    Arc::new(
        OutboundClient::new(&ClientOptions {
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: 2,
            user_agent: "wharf-test".into(),
        })
        .unwrap(),
    )
}

/// Runs the planner once with `grant`; answers what happened to each attempt.
async fn attempt(h: &Harness, grant: HttpGrant, attempts: Value) -> Vec<Value> {
    let runtime = h.packs().snapshot().planners["curious"]
        .component()
        .runtime
        .clone();
    let task = Task {
        task_id: "t1".into(),
        task_type: "http".into(),
        description: attempts.to_string(),
        tools: Vec::new(),
        endpoint: ModelEndpoint {
            base_url: String::new(),
            model: String::new(),
            max_tokens: None,
            temperature: None,
        },
        max_steps: 1,
    };
    let decision = tokio::task::spawn_blocking(move || {
        runtime.planner_call(Some("tester"), Some(grant), |store, planner| {
            planner
                .wharf_plugin_planner()
                .call_next_action(store, &task, &[])
        })
    })
    .await
    .unwrap()
    .expect("the call runs")
    .expect("the planner answers");
    match decision.action {
        Action::Finish(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("unexpected action {other:?}"),
    }
}

fn get_(url: String) -> Value {
    json!({"method": "GET", "url": url})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planner_reaches_only_declared_and_granted_hosts_and_never_holds_the_key() {
    let h = Harness::start(|_| {}).await;
    let granted_seen = Seen::default();
    let elsewhere_seen = Seen::default();
    let elsewhere = serve(elsewhere_seen.clone(), None).await;
    let granted = serve(
        granted_seen.clone(),
        Some(format!("http://{elsewhere}/stolen")),
    )
    .await;
    h.install_source_pack(
        "tests/fixtures/packs/http-planner-pack",
        "http-planner-pack",
        "0.1.0",
        &format!("[permissions]\nallowed_hosts = [\"{granted}\", \"{elsewhere}\"]"),
    )
    .await;
    let endpoint = BaseUrl::parse(&format!("http://{granted}/v1")).unwrap();
    let credential = Credential::for_scheme("bearer", KEY).unwrap();
    // The pack declares both servers; the operator grants only the first.
    let grant = |reach| {
        HttpGrant::for_pack(
            client(),
            reach,
            &[granted.clone(), elsewhere.clone()],
            std::slice::from_ref(&granted),
            Some((&endpoint, credential.clone())),
        )
    };

    let outcomes = attempt(
        &h,
        grant(Reach::Any),
        json!([
            get_(format!("http://{granted}/v1/models")),
            get_(format!("http://{elsewhere}/exfiltrate")),
            {"method": "GET", "url": format!("http://{granted}/forged"),
             "headers": [["authorization", "Bearer forged-by-the-plugin"]]},
            {"method": "GET", "url": format!("http://{granted}/host"),
             "headers": [["host", elsewhere.clone()]]},
            get_(format!("http://{granted}/redirect")),
            get_(format!("http://{granted}/a/../../etc")),
        ]),
    )
    .await;
    // The granted origin answers, with the credential the host added.
    assert_eq!(outcomes[0]["status"], 200, "{outcomes:#?}");
    assert_eq!(
        granted_seen.auth_of("/v1/models"),
        vec![Some(format!("Bearer {KEY}"))]
    );
    // Declared but not granted: refused, nothing sent.
    assert_eq!(outcomes[1]["error_code"], "http_refused", "{outcomes:#?}");
    // Credential and routing headers are not the plugin's to set.
    assert_eq!(outcomes[2]["error_code"], "invalid_input", "{outcomes:#?}");
    assert_eq!(outcomes[3]["error_code"], "invalid_input", "{outcomes:#?}");
    // A redirect to another origin comes back as the answer; it is not followed.
    assert_eq!(outcomes[4]["status"], 302, "{outcomes:#?}");
    // Dot segments are refused like in every outbound URL.
    assert_eq!(outcomes[5]["status"], Value::Null, "{outcomes:#?}");
    assert!(
        elsewhere_seen.paths().is_empty(),
        "{:?}",
        elsewhere_seen.paths()
    );
    assert!(
        !granted_seen
            .paths()
            .iter()
            .any(|p| p == "/forged" || p == "/host"),
        "{:?}",
        granted_seen.paths()
    );
    // The key went nowhere but its origin, and the plugin never saw it.
    assert!(!serde_json::to_string(&outcomes).unwrap().contains(KEY));

    // Without the operator's leave for private addresses, loopback is refused too.
    let outcomes = attempt(
        &h,
        grant(Reach::PublicOnly),
        json!([get_(format!("http://{granted}/v1/private"))]),
    )
    .await;
    assert_eq!(outcomes[0]["error_code"], "http_refused", "{outcomes:#?}");
    assert!(granted_seen.auth_of("/v1/private").is_empty());

    // A relay-host grant (admin token in `x-api-key`) may let the plugin send a session it
    // got from that origin in `Authorization`; only there, and still not `x-api-key`.
    let relay = HttpGrant::new(
        client(),
        Reach::Any,
        vec![wharf::runtime::http::GrantedOrigin {
            base: BaseUrl::parse(&format!("http://{granted}")).unwrap(),
            credential: Some(Credential::for_scheme("x-api-key", KEY).unwrap()),
        }],
    )
    .allow_plugin_header("authorization");
    let outcomes = attempt(
        &h,
        relay,
        json!([
            {"method": "GET", "url": format!("http://{granted}/session"),
             "headers": [["authorization", "Bearer user-session"]]},
            {"method": "GET", "url": format!("http://{granted}/admin"),
             "headers": [["x-api-key", "forged"]]},
            {"method": "GET", "url": format!("http://{elsewhere}/session"),
             "headers": [["authorization", "Bearer user-session"]]},
        ]),
    )
    .await;
    assert_eq!(outcomes[0]["status"], 200, "{outcomes:#?}");
    assert_eq!(
        granted_seen.auth_of("/session"),
        vec![Some("Bearer user-session".to_string())]
    );
    assert_eq!(outcomes[1]["error_code"], "invalid_input", "{outcomes:#?}");
    assert_eq!(outcomes[2]["error_code"], "http_refused", "{outcomes:#?}");
    assert!(elsewhere_seen.paths().is_empty());

    // Granted by the operator but not declared by the pack: refused.
    let undeclared = HttpGrant::for_pack(
        client(),
        Reach::Any,
        std::slice::from_ref(&granted),
        &[granted.clone(), elsewhere.clone()],
        None,
    );
    let outcomes = attempt(
        &h,
        undeclared,
        json!([get_(format!("http://{elsewhere}/undeclared"))]),
    )
    .await;
    assert_eq!(outcomes[0]["error_code"], "http_refused", "{outcomes:#?}");
    assert!(elsewhere_seen.paths().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_asking_for_a_planner_under_0_2_is_quarantined_with_the_reason() {
    let h = Harness::start(|_| {}).await;
    let built = h.data.path().join("built/old-planner");
    common::build_fixture("tests/fixtures/packs/http-planner-pack", &built);
    common::patch_manifest(&built, "0.1.0", "[requires]\nwharf = \"^0.2\"");
    common::copy_dir(&built, &h.packs_dir.join("old-planner"));
    let rows = h
        .wait_rows("old planner quarantined", |rows| {
            rows.iter()
                .any(|r| r.error.as_deref().is_some_and(|e| e.contains("0.3.0")))
        })
        .await;
    let row = rows.iter().find(|r| r.error.is_some()).unwrap();
    assert!(
        row.error.as_deref().unwrap().contains("planner-plugin"),
        "{row:?}"
    );
}
