use reqwest::Method;
use serde_json::json;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

async fn start_with_core_adapters() -> (tempfile::TempDir, WharfProcess, Client) {
    let root = tempfile::tempdir().unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (status, packs) = admin.get("/v1/packs").await;
    assert_eq!(
        (status, packs),
        (200, json!([])),
        "the packs dir starts empty"
    );
    let built = root.path().join("built/core-adapters");
    build_pack("packs/core-adapters", &built);
    install_pack_active(&admin, &built, &server.packs_dir, "core-adapters").await;
    (root, server, admin)
}

#[tokio::test]
async fn dropped_core_adapters_pack_runs_shell_in_a_local_sandbox() {
    let (_root, server, admin) = start_with_core_adapters().await;

    let (status, sandbox) = admin
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    assert!(sandbox["id"].as_str().unwrap().starts_with("sbx_"));
    assert_eq!(sandbox["status"], "running");
    let id = sandbox["id"].as_str().unwrap();

    let shell_calls = || async {
        let metrics = server.metrics().await;
        let line =
            "wharf_plugin_calls_total{component=\"shell\",outcome=\"ok\",pack=\"core-adapters\"} ";
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let calls_before = shell_calls().await;
    let (status, answer) = admin
        .post(
            &format!("/v1/sandboxes/{id}/capabilities/shell/run"),
            json!({"command": "echo hi"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"]["stdout"], "hi\n");
    assert_eq!(answer["output"]["exit_code"], 0);
    assert_eq!(answer["output"]["timed_out"], false);
    assert_eq!(answer["pack"], "core-adapters");

    let (_, detail) = admin.get("/v1/packs/core-adapters").await;
    let operations = &detail["components"][0]["adapter"]["operations"];
    assert_eq!(operations[0]["name"], "run");
    assert!(operations[0]["input_schema"].is_object());
    let (_, capabilities) = admin.get("/v1/capabilities").await;
    let served: Vec<&str> = capabilities
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["capability"].as_str().unwrap())
        .collect();
    for capability in ["shell", "python", "filesystem", "git"] {
        assert!(served.contains(&capability), "{capabilities}");
    }

    let metrics = server.metrics().await;
    assert_eq!(
        shell_calls().await,
        calls_before + 1,
        "one more ok call of the shell component"
    );
    assert!(metrics.contains("wharf_pack_generation{pack=\"core-adapters\"} 1"));
    let openapi = server.openapi().await;
    for path in [
        "/v1/packs",
        "/v1/packs/{id}",
        "/v1/capabilities",
        "/v1/keys",
        "/v1/sandboxes/{id}/capabilities/{capability}/{operation}",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }
    // Routes axum serves through a wildcard or a WebSocket upgrade are documented too.
    for (path, methods) in [
        (
            "/v1/sandboxes/{id}/files/{path}",
            &["get", "put", "delete"][..],
        ),
        ("/v1/sandboxes/{id}/dirs/{path}", &["get", "put"][..]),
        ("/v1/sandboxes/{id}/exec/stream", &["get"][..]),
        ("/v1/sandboxes/{id}/events/stream", &["get"][..]),
    ] {
        for method in methods {
            assert!(
                openapi["paths"][path][method].is_object(),
                "openapi lacks {method} {path}"
            );
        }
    }
    assert!(
        !server.logs().contains(ADMIN_KEY),
        "the admin key reached the logs"
    );
}

#[tokio::test]
async fn bad_input_gets_stable_error_codes() {
    let (_root, server, admin) = start_with_core_adapters().await;
    let (_, sandbox) = admin.post("/v1/sandboxes", json!({})).await;
    let run = format!(
        "/v1/sandboxes/{}/capabilities/shell/run",
        sandbox["id"].as_str().unwrap()
    );

    // Just over the 1 MiB default: small enough that the kernel buffers all of
    // it, so the client reads the early 413 instead of a reset connection.
    let huge = json!({"command": "x".repeat(1024 * 1024 + 1024)});
    let (status, body) = admin.post(&run, huge).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    let malformed = admin
        .request(Method::POST, &run)
        .header("content-type", "application/json")
        .body("{\"command\": ");
    let (status, body) = admin.send(malformed).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );
    assert!(
        body["error"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert_eq!(body["error"]["retriable"], false);

    let (status, body) = admin
        .post(&run.replace("/shell/", "/cobol/"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("capability_not_supported")),
        "{body}"
    );
    let (status, body) = admin.post(&run, json!({"command": ""})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "{body}"
    );

    let anonymous = Client::new(&server, None);
    let (status, body) = anonymous.get("/v1/packs").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = Client::new(&server, Some("wharf_notarealkey"))
        .get("/v1/packs")
        .await;
    assert_eq!(status, 401);
    let (status, body) = admin.get("/v1/nowhere").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn keys_are_owner_scoped_and_revocation_is_immediate() {
    let (_root, _server, admin) = start_with_core_adapters().await;
    let (status, alice) = admin.post("/v1/keys", json!({"owner": "alice"})).await;
    assert_eq!(status, 201, "{alice}");
    let alice_key = alice["key"].as_str().unwrap().to_string();
    let (_, bob) = admin.post("/v1/keys", json!({"owner": "bob"})).await;
    let alice_client = Client::new(&_server, Some(&alice_key));
    let bob_client = Client::new(&_server, Some(bob["key"].as_str().unwrap()));

    let (status, sandbox) = alice_client
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201);
    let path = format!("/v1/sandboxes/{}", sandbox["id"].as_str().unwrap());
    assert_eq!(alice_client.get(&path).await.0, 200);
    let (status, body) = bob_client.get(&path).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "another owner must not see it"
    );
    let (status, body) = bob_client
        .post(
            &format!("{path}/capabilities/shell/run"),
            json!({"command": "id"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = alice_client
        .post("/v1/keys", json!({"owner": "mallory"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    let (_, keys) = admin.get("/v1/keys").await;
    assert!(
        !keys.to_string().contains(&alice_key),
        "a key listing leaked a secret"
    );
    let (status, _) = admin
        .delete(&format!("/v1/keys/{}", alice["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 204);
    let (status, body) = alice_client.get(&path).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "revoked key still accepted"
    );
}

/// The example third-party pack (written only from the SDK rustdoc) builds
/// with `wharf pack build` and serves next to the first-party pack.
#[tokio::test]
async fn example_greeter_pack_builds_and_serves() {
    let (root, server, admin) = start_with_core_adapters().await;
    let built = root.path().join("built/greeter-pack");
    build_pack("examples/greeter-pack", &built);
    let validate = std::process::Command::new(wharf_e2e::wharf_bin())
        .args(["pack", "validate"])
        .arg(&built)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    install_pack_active(&admin, &built, &server.packs_dir, "greeter-pack").await;

    let (_, sandbox) = admin
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    let greet = format!(
        "/v1/sandboxes/{}/capabilities/greeter/greet",
        sandbox["id"].as_str().unwrap()
    );
    let (status, answer) = admin.post(&greet, json!({"name": "Ada"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"]["greeting"], "Hello, Ada!");
    let (status, body) = admin.post(&greet, json!({"name": ""})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("validation_error")),
        "the plugin's invalid_input: {body}"
    );
    let (_, detail) = admin.get("/v1/packs/greeter-pack").await;
    assert!(
        detail["logs"].to_string().contains("greeting Ada"),
        "plugin log missing: {detail}"
    );
}
