//! Assembly tests: a pack generation reads a snapshot of its declared data folders, so
//! editing or deleting the pack directory does not change what a serving or draining
//! generation reads, and undeclared files are not visible under `/pack`.

mod common;

use std::path::Path;

use common::{Harness, build_fixture, copy_dir, patch_manifest};
use serde_json::{Value, json};
use wharf::error::{ErrorCode, WharfResult};
use wharf::packs::{CapabilityRoute, PackState};
use wharf::sandbox::service::SandboxBinding;

/// `read_pack` on the generation behind `route`, held by the test (a draining generation
/// when the pack has been replaced or removed since).
async fn read_on(route: &CapabilityRoute, sandbox: &SandboxBinding, path: &str) -> String {
    let component = route.component().runtime.clone();
    let (binding, input) = (sandbox.clone(), json!({ "path": path }).to_string());
    let answer = tokio::task::spawn_blocking(move || {
        component.adapter_call(Some(binding), |store, adapter| {
            adapter
                .wharf_plugin_adapter()
                .call_invoke(store, "read_pack", &input)
        })
    })
    .await
    .unwrap()
    .expect("the call ran")
    .unwrap_or_else(|err| panic!("read_pack {path} on a held generation: {err:?}"));
    let output: Value = serde_json::from_str(&answer).unwrap();
    output["content"].as_str().unwrap().to_string()
}

async fn read(h: &Harness, sandbox: &SandboxBinding, path: &str) -> WharfResult<String> {
    let outcome = h
        .invoke(sandbox, "read_pack", json!({ "path": path }))
        .await?;
    Ok(outcome.output["content"].as_str().unwrap().to_string())
}

fn route(h: &Harness) -> CapabilityRoute {
    h.packs().snapshot().capabilities["test"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_reads_its_own_snapshot_of_its_declared_data_only() {
    let h = Harness::start(|_| {}).await;
    let staging = h.packs_dir.join(".test-pack.staging");
    copy_dir(&h.test_pack, &staging);
    patch_manifest(&staging, "0.1.0", "data = [\"assets\"]");
    for (file, text) in [
        ("assets/greeting.txt", "v1"),
        ("assets/deep/more.txt", "deep"),
        ("secret/key.txt", "undeclared"),
    ] {
        let path = staging.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let pack_dir = h.packs_dir.join("test-pack");
    std::fs::rename(&staging, &pack_dir).unwrap();
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    assert_eq!(
        read(&h, &sandbox, "assets/greeting.txt").await.unwrap(),
        "v1"
    );
    assert_eq!(
        read(&h, &sandbox, "assets/deep/more.txt").await.unwrap(),
        "deep"
    );
    // Only declared folders are there: not the undeclared one, not the manifest, not the wasm.
    for hidden in ["secret/key.txt", "pack.toml", "components/test.wasm"] {
        let err = read(&h, &sandbox, hidden).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::FileNotFound, "{hidden}: {err:?}");
    }

    // An edit makes a new generation with the new text; the first generation, still held
    // (as by a call in flight), reads what it loaded with.
    let first = route(&h);
    std::fs::write(pack_dir.join("assets/greeting.txt"), "v2").unwrap();
    h.wait_rows("generation 2 active", |rows| {
        rows.iter()
            .any(|r| r.generation == Some(2) && r.state == PackState::Active)
    })
    .await;
    assert_eq!(
        read(&h, &sandbox, "assets/greeting.txt").await.unwrap(),
        "v2"
    );
    assert_eq!(read_on(&first, &sandbox, "assets/greeting.txt").await, "v1");

    // Deleting the data folder quarantines the next load; generation 2 keeps serving
    // from its own copy.
    std::fs::remove_dir_all(pack_dir.join("assets")).unwrap();
    let rows = h
        .wait_rows("the load without its data folder quarantined", |rows| {
            rows.iter().any(|r| r.state == PackState::Quarantined)
        })
        .await;
    let quarantined = rows
        .iter()
        .find(|r| r.state == PackState::Quarantined)
        .unwrap();
    assert!(
        quarantined
            .error
            .as_deref()
            .unwrap()
            .contains("declared folder \"assets\" is missing"),
        "{quarantined:?}"
    );
    assert_eq!(
        read(&h, &sandbox, "assets/greeting.txt").await.unwrap(),
        "v2"
    );

    // Deleting the whole pack: a generation still held reads its snapshot to the end.
    let second = route(&h);
    std::fs::remove_dir_all(&pack_dir).unwrap();
    h.wait_rows("test-pack gone", |rows| rows.is_empty()).await;
    assert_eq!(
        read_on(&second, &sandbox, "assets/greeting.txt").await,
        "v2"
    );
    assert_eq!(
        read_on(&first, &sandbox, "assets/deep/more.txt").await,
        "deep"
    );

    // Once no generation holds a snapshot, the next scan removes it.
    let pack_data = h.data.path().join("data/pack-data");
    assert_eq!(snapshots_in(&pack_data), 2);
    drop((first, second));
    h.packs().rescan().await;
    assert_eq!(snapshots_in(&pack_data), 0);
}

fn snapshots_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_keeps_its_catalog_when_its_pack_directory_loses_the_data() {
    let h = Harness::start(|_| {}).await;
    let built = h.data.path().join("built/openai-cn-pack");
    build_fixture("packs/openai-cn-pack", &built);
    let pack_dir = h.packs_dir.join("openai-cn-pack");
    copy_dir(&built, &pack_dir);
    h.wait_active("openai-cn-pack", &wharf_e2e::openai_cn_version())
        .await;
    let runner = h.server.state.probes.runner().clone();
    let resolved = runner.resolve_model("kimi", "kimi 2.6").await.unwrap();
    assert_eq!(resolved.model.as_deref(), Some("kimi-k2.6"));

    std::fs::remove_dir_all(pack_dir.join("providers")).unwrap();
    h.wait_rows("the load without providers quarantined", |rows| {
        rows.iter().any(|r| r.state == PackState::Quarantined)
    })
    .await;
    let resolved = runner
        .resolve_model("kimi", "kimi 2.6")
        .await
        .expect("the serving generation reads its own snapshot");
    assert_eq!(
        (resolved.model.as_deref(), resolved.generation),
        (Some("kimi-k2.6"), 1)
    );
}
