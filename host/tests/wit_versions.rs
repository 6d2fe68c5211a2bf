//! The WIT contract versions side by side: a pack built against the frozen
//! `wharf:plugin@0.1.0` (`wit/v0.1.0`, plain wit-bindgen, no SDK) keeps loading and
//! answering beside SDK-built 0.2 packs, and `requires.wharf` picks the bindings.

mod common;

use common::{Harness, build_fixture, copy_dir};
use serde_json::json;
use wharf::error::ErrorCode;
use wharf::packs::manifest::PluginApi;
use wharf::packs::{OperationHints, PackState};
use wharf::sandbox::SandboxPath;

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_built_against_0_1_loads_and_answers_beside_0_2_packs() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    let built = h.data.path().join("built/greeter-v0-1-pack");
    build_fixture("tests/fixtures/packs/greeter-v0-1-pack", &built);
    copy_dir(&built, &h.packs_dir.join(".greeter.staging"));
    std::fs::rename(
        h.packs_dir.join(".greeter.staging"),
        h.packs_dir.join("greeter-v0-1-pack"),
    )
    .unwrap();
    h.wait_active("test-pack", "0.1.0").await;
    h.wait_active("greeter-v0-1-pack", "0.1.0").await;

    let snapshot = h.packs().snapshot();
    let greeter = snapshot.capabilities["greeter"].component();
    assert_eq!(greeter.runtime.api, PluginApi::V0_1);
    assert_eq!(
        snapshot.capabilities["test"].component().runtime.api,
        PluginApi::V0_2
    );
    // 0.1 declared no hints: the host assumes the worst. 0.2 hints come through.
    assert_eq!(
        greeter.adapter.as_ref().unwrap().operations[0].hints,
        OperationHints {
            read_only: false,
            destructive: true,
            idempotent: false
        }
    );
    let test_ops = &snapshot.capabilities["test"]
        .component()
        .adapter
        .as_ref()
        .unwrap()
        .operations;
    let hints = |name: &str| test_ops.iter().find(|op| op.name == name).unwrap().hints;
    assert!(hints("noop").read_only && !hints("noop").destructive);
    assert!(!hints("trap").read_only && hints("trap").destructive);
    drop(snapshot);

    // The 0.1 component runs through its 0.1 imports (log, sandbox.exec) and answers.
    let sandbox = h.sandbox().await;
    let invoke = |capability: &'static str, op: &'static str, input: serde_json::Value| {
        let binding = sandbox.clone();
        let packs = h.packs().clone();
        async move { wharf::capabilities::invoke(&packs, binding, capability, op, input).await }
    };
    let out = invoke("greeter", "greet", json!({"name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(out.output, json!({"greeting": "Hello, Ada!"}));
    assert_eq!(out.pack, "greeter-v0-1-pack");
    // Its errors map into the host's table like any other.
    let err = invoke("greeter", "greet", json!({"name": " "}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ValidationError, "{}", err.message);
    // The 0.2 pack beside it is unaffected.
    let out = invoke("test", "echo", json!({"still": "here"}))
        .await
        .unwrap();
    assert_eq!(out.output, json!({"still": "here"}));

    // 0.2's new sandbox imports through the real host: stat and a bounded range read.
    sandbox
        .write_file(
            &SandboxPath::parse("digits.txt").unwrap(),
            b"0123456789".to_vec(),
        )
        .await
        .unwrap();
    let slice = |offset: u64, length: u64| {
        invoke(
            "test",
            "slice",
            json!({"path": "digits.txt", "offset": offset, "length": length}),
        )
    };
    let out = slice(3, 4).await.unwrap();
    assert_eq!(
        out.output,
        json!({"kind": "file", "size": 10, "text": "3456"})
    );
    assert_eq!(slice(8, 100).await.unwrap().output["text"], "89");
    assert_eq!(slice(50, 5).await.unwrap().output["text"], "");
    let err = slice(0, u64::MAX).await.unwrap_err();
    assert!(err.message.contains("payload_too_large"), "{}", err.message);
    let err = invoke(
        "test",
        "slice",
        json!({"path": "nope/missing.txt", "offset": 0, "length": 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::FileNotFound, "{}", err.message);
    let err = invoke(
        "test",
        "slice",
        json!({"path": "../escape", "offset": 0, "length": 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPath, "{}", err.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn requires_wharf_picks_the_bindings_a_component_must_match() {
    let h = Harness::start(|_| {}).await;
    // An SDK 0.2 component in a pack that claims 0.1: instantiated with the 0.1 bindings,
    // it lacks their exports, so the pack is quarantined with a reason that says so.
    h.drop_test_pack("mislabelled", "0.3.0", "[requires]\nwharf = \"^0.1\"");
    let rows = h
        .wait_rows("mislabelled quarantined", |rows| {
            rows.iter()
                .any(|r| r.dir == "mislabelled" && r.state == PackState::Quarantined)
        })
        .await;
    let reason = rows
        .iter()
        .find(|r| r.dir == "mislabelled")
        .and_then(|r| r.error.clone())
        .unwrap();
    assert!(reason.contains("wharf:plugin@0.1.0"), "{reason}");
    assert!(reason.contains("requires.wharf"), "{reason}");
}
