//! Bounded bodies: a body past `max_body_bytes` (1 MiB by default) is `413 payload_too_large`
//! with the one JSON error envelope, on every route: the JSON ones whatever the content type
//! says or whether the length is declared, and those that read no body at all.

use reqwest::Method;
use serde_json::Value;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess};

/// Just over the 1 MiB default: small enough that the kernel buffers all of it, so the client
/// reads the early 413 instead of a reset connection.
fn oversized_json() -> String {
    format!("{{\"padding\": \"{}\"}}", "x".repeat(1024 * 1024 + 1024))
}

/// What is wrong with an answer that should be the one 413 envelope, if anything.
fn not_too_large(what: &str, status: u16, body: &Value) -> Option<String> {
    let error = &body["error"];
    let fine = status == 413
        && error["code"] == "payload_too_large"
        && error["retriable"] == false
        && error["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req_"));
    (!fine).then(|| format!("{what}: {status} {body}"))
}

#[tokio::test]
async fn oversized_bodies_get_413_payload_too_large_on_every_route() {
    let root = tempfile::tempdir().unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let routes = [
        (Method::POST, "/v1/cases"),
        (Method::POST, "/v1/keys"),
        (Method::POST, "/v1/probes"),
        (Method::POST, "/v1/targets"),
        (Method::POST, "/v1/sandboxes"),
        (Method::POST, "/v1/overlays/plan"),
        // Routes that read no body: the declared length alone is refused.
        (Method::POST, "/v1/approvals/apr_missing/approve"),
        (Method::POST, "/v1/approvals/apr_missing/decline"),
        (Method::DELETE, "/v1/keys/key_missing"),
    ];
    let mut wrong = Vec::new();
    for (method, path) in &routes {
        let what = format!("{method} {path}");
        let typed = admin
            .request(method.clone(), path)
            .header("content-type", "application/json")
            .body(oversized_json());
        let (status, body) = admin.send(typed).await;
        wrong.extend(not_too_large(&what, status, &body));
        // Without a content type: still the size, not a 400 about the type.
        let untyped = admin.request(method.clone(), path).body(oversized_json());
        let (status, body) = admin.send(untyped).await;
        wrong.extend(not_too_large(
            &format!("{what} without a content type"),
            status,
            &body,
        ));
    }
    // No declared length (chunked): cut at the limit while it is read. The stream holds its
    // end back a moment, so the client reads the early 413 before the server closes the
    // connection on the unread rest.
    for path in ["/v1/keys", "/v1/cases", "/v1/probes"] {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = oversized_json()
            .into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let held_end = futures::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            Ok(Vec::new())
        });
        let body = futures::StreamExt::chain(futures::stream::iter(chunks), held_end);
        let chunked = admin
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body));
        let (status, body) = admin.send(chunked).await;
        wrong.extend(not_too_large(
            &format!("chunked POST {path}"),
            status,
            &body,
        ));
    }
    assert!(
        wrong.is_empty(),
        "{} answers are not 413 payload_too_large:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // A body within the limit still reaches the handler (its own errors, not 413).
    let (status, body) = admin
        .post("/v1/keys", serde_json::json!({"owner": "small"}))
        .await;
    assert_eq!(status, 201, "{body}");
}
