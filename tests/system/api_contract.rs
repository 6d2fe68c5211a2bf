//! The API contract: `/openapi.json` lists every status each route answers and
//! the constraints the server enforces, every error is the JSON envelope, and
//! schemathesis, run against the real binary, finds no answer that breaks the
//! document.
//!
//! The schemathesis run needs its executable: `WHARF_SCHEMATHESIS` (set by
//! `scripts/test`, which installs the pinned version) or `schemathesis` on
//! PATH. Without it the run is skipped, except when `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

/// The operation extension that marks routes sending requests out of the
/// machine (`wharf::api::contract::SENDS_OUTBOUND`); schemathesis leaves them out.
const SENDS_OUTBOUND: &str = "x-wharf-outbound";

/// The checks the contract run applies to every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Generated cases per operation and phase: about 3,500 requests, well under a minute here.
const MAX_EXAMPLES: &str = "100";

/// Fixed so that a CI failure can be replayed; `WHARF_SCHEMATHESIS_SEED` picks another.
const DEFAULT_SEED: &str = "20261201";

/// A run that takes longer than this is stopped and fails.
const RUN_BUDGET: Duration = Duration::from_secs(600);

/// No Docker: fuzzing creates hundreds of sandboxes, and the contract is the
/// same on both drivers (an unavailable driver is a documented 503).
const CONFIG: &str = "[sandbox]\ndocker = false\n";

fn start(root: &Path) -> WharfProcess {
    std::fs::write(root.join("wharf.toml"), CONFIG).unwrap();
    // Should a route that sends requests out ever miss its `x-wharf-outbound`
    // mark, its requests still go nowhere: to a closed port on loopback.
    let nowhere = "http://127.0.0.1:9";
    WharfProcess::start(
        root,
        &[
            ("HTTP_PROXY", nowhere),
            ("HTTPS_PROXY", nowhere),
            ("ALL_PROXY", nowhere),
            ("NO_PROXY", ""),
        ],
    )
}

async fn owner_key(admin: &Client, owner: &str) -> String {
    let (status, key) = admin.post("/v1/keys", json!({"owner": owner})).await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_string()
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            found.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    found
}

fn is_secured(doc: &Value, operation: &Value) -> bool {
    let requirements = operation.get("security").unwrap_or(&doc["security"]);
    requirements
        .as_array()
        .is_some_and(|all| !all.is_empty() && all.iter().all(|r| r != &json!({})))
}

fn assert_error_response(method: &str, path: &str, operation: &Value, status: &str) {
    let response = &operation["responses"][status];
    assert_eq!(
        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
        "{method} {path} does not list {status} with the error envelope: {response}"
    );
}

/// A schema's property, looked up through `allOf` (the exec body's one-of rule wraps its fields).
fn property<'a>(schema: &'a Value, name: &str) -> &'a Value {
    if let Some(found) = schema["properties"].get(name) {
        return found;
    }
    schema["allOf"]
        .as_array()
        .and_then(|parts| parts.iter().find_map(|part| part["properties"].get(name)))
        .unwrap_or_else(|| panic!("no property {name} in {schema}"))
}

fn parameter<'a>(doc: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

#[tokio::test]
async fn openapi_lists_the_common_errors_on_every_operation() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let doc = server.openapi().await;
    let all = operations(&doc);
    assert!(all.len() >= 30, "only {} operations documented", all.len());
    let mut secured = 0;
    for (method, path, operation) in &all {
        if is_secured(&doc, operation) {
            secured += 1;
            assert_error_response(method, path, operation, "401");
        }
        assert_error_response(method, path, operation, "500");
        let has_inputs = operation["parameters"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
            || operation.get("requestBody").is_some();
        if has_inputs {
            assert_error_response(method, path, operation, "400");
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                assert_error_response(method, path, operation, status);
            } else {
                assert!(response.is_object(), "{method} {path} {status}");
            }
        }
    }
    // Only the health check is public (`/metrics` takes an admin key or the
    // metrics token unless the operator opens it).
    assert_eq!(secured, all.len() - 1, "secured operations");
    let code = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for expected in ["unauthorized", "upgrade_required", "validation_error"] {
        assert!(
            code.as_array().unwrap().iter().any(|c| c == expected),
            "ErrorCode lacks {expected}: {code}"
        );
    }
    // The routes that send requests out are marked, so the contract run can leave them out.
    let outbound: Vec<_> = all
        .iter()
        .filter(|(_, _, op)| op[SENDS_OUTBOUND] == json!(true))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    for expected in ["POST /v1/probes", "POST /v1/targets"] {
        assert!(
            outbound.iter().any(|o| o == expected),
            "{expected} is not marked: {outbound:?}"
        );
    }
}

#[tokio::test]
async fn openapi_states_the_constraints_the_server_enforces() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let doc = server.openapi().await;
    let schemas = &doc["components"]["schemas"];

    let owner = &schemas["CreateKey"]["properties"]["owner"];
    assert_eq!(
        (&owner["minLength"], &owner["maxLength"]),
        (&json!(1), &json!(128)),
        "{owner}"
    );
    assert!(owner["pattern"].is_string(), "{owner}");

    let limit = &parameter(&doc, "get", "/v1/sandboxes", "limit")["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(500)),
        "{limit}"
    );
    assert_eq!(
        limit["type"], "integer",
        "a query parameter is never null: {limit}"
    );
    let status = parameter(&doc, "get", "/v1/sandboxes", "status");
    assert_eq!(
        status["schema"]["$ref"], "#/components/schemas/SandboxStatus",
        "{status}"
    );
    assert_eq!(
        schemas["SandboxStatus"]["enum"],
        json!(["creating", "running", "stopped", "failed", "deleted"])
    );
    let events_limit = &parameter(&doc, "get", "/v1/sandboxes/{id}/events", "limit")["schema"];
    assert_eq!(
        (&events_limit["minimum"], &events_limit["maximum"]),
        (&json!(1), &json!(1000)),
        "{events_limit}"
    );
    let results = &parameter(&doc, "get", "/v1/targets/{id}/status", "limit")["schema"];
    assert_eq!(
        (&results["minimum"], &results["maximum"]),
        (&json!(1), &json!(100)),
        "{results}"
    );

    let key = &parameter(&doc, "post", "/v1/sandboxes", "Idempotency-Key")["schema"];
    assert_eq!(
        (&key["minLength"], &key["maxLength"]),
        (&json!(1), &json!(256)),
        "{key}"
    );

    let exec = &schemas["ExecBody"];
    let one_of = exec["allOf"]
        .as_array()
        .and_then(|parts| parts.iter().find_map(|part| part["oneOf"].as_array()))
        .unwrap_or_else(|| panic!("the exec body states no one-of rule: {exec}"));
    let required: Vec<_> = one_of.iter().map(|alt| alt["required"].clone()).collect();
    assert_eq!(required, [json!(["argv"]), json!(["command"])]);
    assert_eq!(property(exec, "argv")["minItems"], 1);
    assert_eq!(
        property(exec, "env")["propertyNames"]["pattern"],
        "^[^=\\x00]+$"
    );
    assert_eq!(
        property(exec, "env")["additionalProperties"]["type"],
        "string"
    );
    let timeout = property(exec, "timeout_ms");
    assert!(
        timeout["type"] == "integer"
            || timeout["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("integer"))),
        "{timeout}"
    );
    assert_eq!(timeout["minimum"], 0, "{timeout}");
}

#[tokio::test]
async fn the_server_enforces_the_documented_constraints() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let refused = |answer: &(u16, Value)| (answer.0, answer.1["error"]["code"].clone());
    let validation = (400, json!("validation_error"));

    for limit in ["0", "501", "-1", "ten"] {
        let answer = admin.get(&format!("/v1/sandboxes?limit={limit}")).await;
        assert_eq!(refused(&answer), validation, "limit={limit}: {}", answer.1);
    }
    for limit in ["1", "500"] {
        let (status, page) = admin.get(&format!("/v1/sandboxes?limit={limit}")).await;
        assert_eq!(status, 200, "limit={limit}: {page}");
    }
    let (status, sandbox) = admin.post("/v1/sandboxes", json!({})).await;
    assert_eq!(status, 201, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap();
    for limit in ["0", "1001"] {
        let answer = admin
            .get(&format!("/v1/sandboxes/{id}/events?limit={limit}"))
            .await;
        assert_eq!(
            refused(&answer),
            validation,
            "events limit={limit}: {}",
            answer.1
        );
    }

    let long_owner = "é".repeat(128);
    let (status, key) = admin.post("/v1/keys", json!({"owner": long_owner})).await;
    assert_eq!(
        status, 201,
        "128 characters (256 bytes) is within the documented 1-128: {key}"
    );
    for owner in [
        String::new(),
        "   ".into(),
        "a".repeat(129),
        "tab\there".into(),
    ] {
        let answer = admin.post("/v1/keys", json!({"owner": owner})).await;
        assert_eq!(
            refused(&answer),
            validation,
            "owner {owner:?}: {}",
            answer.1
        );
    }

    let exec = format!("/v1/sandboxes/{id}/exec");
    for body in [
        json!({}),
        json!({"argv": ["true"], "command": "true"}),
        json!({"argv": []}),
        json!({"argv": ["echo", "a\u{0}b"]}),
        json!({"command": "true", "env": {"A=B": "c"}}),
        json!({"command": "true", "env": {"A": "nul\u{0}"}}),
        json!({"command": "true", "timeout_ms": 1.5}),
    ] {
        let answer = admin.post(&exec, body.clone()).await;
        assert_eq!(refused(&answer), validation, "exec {body}: {}", answer.1);
    }

    // A file name past what filesystems take is the caller's mistake, not a server failure.
    let longest = "n".repeat(255);
    let (status, made) = admin
        .send(admin.request(Method::PUT, &format!("/v1/sandboxes/{id}/dirs/{longest}")))
        .await;
    assert_eq!(status, 201, "a 255-byte name: {made}");
    for path in [
        format!("dirs/{longest}n"),
        format!("files/{longest}n"),
        "dirs/a/".repeat(600),
    ] {
        let answer = admin
            .send(admin.request(Method::PUT, &format!("/v1/sandboxes/{id}/{path}")))
            .await;
        assert_eq!(
            refused(&answer),
            (400, json!("invalid_path")),
            "PUT {}...: {}",
            &path[..40],
            answer.1
        );
    }
    let answer = admin
        .post(
            &exec,
            json!({"argv": ["true"], "cwd": format!("{longest}n")}),
        )
        .await;
    assert_eq!(
        refused(&answer),
        (400, json!("invalid_path")),
        "{}",
        answer.1
    );

    let too_long = "k".repeat(257);
    let answer = admin
        .send(
            admin
                .request(Method::POST, "/v1/sandboxes")
                .header("idempotency-key", too_long)
                .json(&json!({})),
        )
        .await;
    assert_eq!(refused(&answer), validation, "{}", answer.1);
}

#[tokio::test]
async fn extractor_failures_and_plain_websocket_requests_answer_the_json_envelope() {
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let anonymous = Client::new(&server, None);
    let (status, sandbox) = admin.post("/v1/sandboxes", json!({})).await;
    assert_eq!(status, 201, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_string();

    /// Sends and returns (status, error code, the whole answer), checking the envelope.
    async fn error_of(
        builder: reqwest::RequestBuilder,
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let response = builder.send().await.expect("sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status}: not the JSON envelope: {text:?}"));
        let error = &body["error"];
        assert!(
            error["message"].is_string()
                && error["retriable"].is_boolean()
                && error["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("req_")),
            "{status}: {body}"
        );
        (status, error["code"].as_str().unwrap().to_string(), headers)
    }
    let code = |answer: (u16, String, reqwest::header::HeaderMap)| (answer.0, answer.1);

    // Extractors: JSON syntax, content type, query, path.
    let syntax = admin
        .request(Method::POST, "/v1/sandboxes")
        .header("content-type", "application/json")
        .body("{\"profile\": ");
    assert_eq!(
        code(error_of(syntax).await),
        (400, "validation_error".into())
    );
    let untyped = admin.request(Method::POST, "/v1/sandboxes").body("{}");
    assert_eq!(
        code(error_of(untyped).await),
        (400, "validation_error".into())
    );
    let query = admin.request(Method::GET, "/v1/sandboxes?status=sleeping");
    assert_eq!(
        code(error_of(query).await),
        (400, "validation_error".into())
    );
    let path = admin.request(Method::GET, "/v1/sandboxes/%FF%FE");
    assert_eq!(code(error_of(path).await), (400, "validation_error".into()));
    let route = admin.request(Method::GET, "/v1/nothing-here");
    assert_eq!(code(error_of(route).await), (404, "not_found".into()));
    let method = admin.request(Method::PATCH, "/v1/sandboxes");
    assert_eq!(
        code(error_of(method).await),
        (405, "method_not_allowed".into())
    );

    // WebSocket routes asked with a plain GET: the key, then the sandbox, then the upgrade.
    for route in ["exec/stream", "events/stream"] {
        let unauthenticated =
            anonymous.request(Method::GET, &format!("/v1/sandboxes/{id}/{route}"));
        assert_eq!(
            code(error_of(unauthenticated).await),
            (401, "unauthorized".into()),
            "{route}"
        );
        let missing = admin.request(Method::GET, &format!("/v1/sandboxes/sbx_missing/{route}"));
        assert_eq!(
            code(error_of(missing).await),
            (404, "not_found".into()),
            "{route}"
        );
        let plain = admin.request(Method::GET, &format!("/v1/sandboxes/{id}/{route}"));
        let (status, code, headers) = error_of(plain).await;
        assert_eq!(
            (status, code.as_str()),
            (426, "upgrade_required"),
            "{route}"
        );
        assert_eq!(headers["upgrade"], "websocket", "{route}");
    }
}

/// The schemathesis executable: `WHARF_SCHEMATHESIS`, else `schemathesis` on PATH.
/// `None` (a skip) only outside CI.
fn schemathesis() -> Option<PathBuf> {
    let configured = std::env::var_os("WHARF_SCHEMATHESIS")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    let found = configured.clone().or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("schemathesis"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) if path.is_file() => Some(path),
        _ => {
            let why = match configured {
                Some(path) => format!("WHARF_SCHEMATHESIS={} does not exist", path.display()),
                None => {
                    "no WHARF_SCHEMATHESIS and no schemathesis on PATH (scripts/test installs it)"
                        .into()
                }
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the API contract run is required in CI: {why}");
            }
            eprintln!("skipping the schemathesis contract run: {why}");
            None
        }
    }
}

/// The sum of the metric lines that start with `prefix`.
async fn metric_sum(server: &WharfProcess, prefix: &str) -> u64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Requests the server answered.
async fn requests_served(server: &WharfProcess) -> u64 {
    metric_sum(server, "wharf_http_requests_total{").await
}

/// Runs `schemathesis run` against the server's document with `key` and the
/// schemathesis `config` (TOML; in a fresh folder under `root`), prints the
/// request count and duration, and fails on any finding or when it did not
/// test `operations` operations.
async fn check_contract(
    st: &Path,
    server: &WharfProcess,
    root: &Path,
    (label, key, config): (&str, &str, &str),
    filters: &[&str],
    operations: usize,
) {
    let seed = std::env::var("WHARF_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let work = root.join(label.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("schemathesis.log");
    std::fs::write(work.join("schemathesis.toml"), config).unwrap();
    let before = requests_served(server).await;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(st)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(server.url("/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", &seed])
        .args(["--request-timeout", "60"])
        .args(["--generation-database", "none"])
        .args(["--exclude-by", &format!("/{SENDS_OUTBOUND} == true")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(filters)
        .args(["--no-color", "--output-sanitize", "true"])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(work.join("schemathesis.err")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("starting schemathesis");
    let status = match tokio::time::timeout(RUN_BUDGET, child.wait()).await {
        Ok(status) => status.expect("waiting for schemathesis"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "schemathesis ({label}) ran past its {RUN_BUDGET:?} budget; so far:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    let elapsed = started.elapsed();
    let requests = requests_served(server).await - before;
    let mut output = std::fs::read_to_string(&log).unwrap_or_default();
    output.push_str(&std::fs::read_to_string(work.join("schemathesis.err")).unwrap_or_default());
    eprintln!(
        "schemathesis ({label}, seed {seed}): {requests} requests in {:.1} s",
        elapsed.as_secs_f64()
    );
    assert!(
        status.success(),
        "schemathesis ({label}, seed {seed}) found answers that break /openapi.json:\n{output}"
    );
    assert_eq!(
        selected_and_tested(&output),
        (operations, operations),
        "schemathesis ({label}) did not test every operation:\n{output}"
    );
}

/// `Selected: N/M` and `Tested: N` of the summary.
fn selected_and_tested(output: &str) -> (usize, usize) {
    let number_after = |label: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().split('/').next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in the schemathesis summary:\n{output}"))
    };
    (number_after("Selected:"), number_after("Tested:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_document() {
    let Some(st) = schemathesis() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let server = start(root.path());
    let admin = Client::new(&server, Some(ADMIN_KEY));
    // Real packs, so capability calls and model names reach plugins.
    for (source, id) in [
        ("packs/core-adapters", "core-adapters"),
        ("packs/openai-cn-pack", "openai-cn-pack"),
    ] {
        let built = root.path().join("built").join(id);
        build_pack(source, &built);
        install_pack_active(&admin, &built, &server.packs_dir, id).await;
    }
    let doc = server.openapi().await;
    let all = operations(&doc);
    let outbound = all
        .iter()
        .filter(|(_, _, op)| op[SENDS_OUTBOUND] == json!(true))
        .count();

    // As a new user would: a non-admin key, every route but those that send requests out.
    let user = owner_key(&admin, "contract").await;
    // Capability calls on random ids all end in `not_found`: aim them at a real sandbox
    // and the shell adapter, so the generated bodies reach the plugin.
    let (status, sandbox) = Client::new(&server, Some(&user))
        .post("/v1/sandboxes", json!({}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    let config = format!(
        "[[operations]]\ninclude-path-regex = \"/capabilities/\"\n\
         parameters = {{ \"path.id\" = \"{}\", \"path.capability\" = \"shell\", \"path.operation\" = \"run\" }}\n",
        sandbox["id"].as_str().unwrap()
    );
    let operations = all.len() - outbound;
    let label = format!("non-admin key, {operations} operations");
    let user_run = (label.as_str(), user.as_str(), config.as_str());
    check_contract(&st, &server, root.path(), user_run, &[], operations).await;
    let shell_calls = metric_sum(&server, "wharf_plugin_calls_total{component=\"shell\"").await;
    assert!(
        shell_calls > 0,
        "no generated capability call reached the shell plugin"
    );

    // Key creation is admin-only: an admin pass fuzzes its body (never revoking keys).
    let filters = ["--include-path-regex", "^/v1/keys$"];
    let admin_run = ("admin key, /v1/keys", ADMIN_KEY, "");
    check_contract(&st, &server, root.path(), admin_run, &filters, 2).await;
}
