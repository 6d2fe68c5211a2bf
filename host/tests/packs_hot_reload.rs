//! Assembly tests: the host with real compiled plugins, in-process.
//! Hot swap, quarantine, shadowing, identical content and removal while in flight.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::Harness;
use serde_json::json;
use wharf::error::ErrorCode;
use wharf::packs::PackState;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_twenty_times_under_load_fails_no_call() {
    let h = Arc::new(Harness::start(|_| {}).await);
    h.drop_test_pack("test-pack-v0", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (h, sandbox, stop, calls) = (h.clone(), sandbox.clone(), stop.clone(), calls.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut generations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match h.invoke(&sandbox, "echo", json!({"client": client})).await {
                    Ok(out) => {
                        assert_eq!(out.output, json!({"client": client}));
                        generations.push(out.generation);
                    }
                    Err(err) => failures.push(err),
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            (failures, generations)
        }));
    }

    for i in 1..=20 {
        let version = format!("0.1.{i}");
        h.drop_test_pack(&format!("test-pack-v{i}"), &version, "");
        h.wait_active("test-pack", &version).await;
        std::fs::remove_dir_all(h.packs_dir.join(format!("test-pack-v{}", i - 1))).unwrap();
    }
    let rows = h
        .wait_rows("only the last version left", |rows| {
            rows.iter()
                .filter(|r| r.state != PackState::Draining)
                .count()
                == 1
        })
        .await;
    assert_eq!(rows[0].version.as_deref(), Some("0.1.20"));
    stop.store(true, Ordering::Relaxed);

    let mut all_generations = Vec::new();
    for client in clients {
        let (failures, generations) = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "calls failed during hot swap: {failures:?}"
        );
        all_generations.extend(generations);
    }
    let total = calls.load(Ordering::Relaxed);
    assert!(total >= 100, "the client loop made only {total} calls");
    let newest = all_generations.iter().max().copied().unwrap();
    assert_eq!(newest, 21, "calls never reached the last generation");
    assert!(
        all_generations.iter().min().copied().unwrap() <= 2,
        "calls never ran on the first generations"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_new_versions_are_quarantined_and_the_old_keeps_answering() {
    let h = Harness::start(|_| {}).await;
    let good = h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;

    // 1. Bad wasm: bytes that are not a component, with a digest that matches them.
    let bad_wasm = h.drop_test_pack("bad-wasm", "0.2.0", "");
    let garbage = b"\0asm this is not a component".to_vec();
    std::fs::write(bad_wasm.join("components/test.wasm"), &garbage).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&garbage))
    };
    let manifest = std::fs::read_to_string(bad_wasm.join("pack.toml")).unwrap();
    let pinned = manifest
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_string();
    std::fs::write(
        bad_wasm.join("pack.toml"),
        manifest.replace(&pinned, &format!("sha256 = \"{sha}\"")),
    )
    .unwrap();

    // 2. Bad digest: the real component, pinned to another sha256.
    let bad_digest = h.drop_test_pack("bad-digest", "0.3.0", "");
    let manifest = std::fs::read_to_string(bad_digest.join("pack.toml")).unwrap();
    std::fs::write(
        bad_digest.join("pack.toml"),
        manifest.replace(&pinned, &format!("sha256 = \"{}\"", "a".repeat(64))),
    )
    .unwrap();

    // 3. Bad manifest.
    let bad_manifest = h.drop_test_pack("bad-manifest", "0.4.0", "");
    std::fs::write(
        bad_manifest.join("pack.toml"),
        "id = \"test-pack\"\nversion = [oops",
    )
    .unwrap();

    // 4. A describe() that traps.
    let broken = h.data.path().join("built/broken-describe");
    common::build_fixture("tests/fixtures/packs/broken-describe-pack", &broken);
    common::copy_dir(&broken, &h.packs_dir.join(".broken.staging"));
    std::fs::rename(
        h.packs_dir.join(".broken.staging"),
        h.packs_dir.join("broken-describe"),
    )
    .unwrap();

    // 5. A host API the pack needs but this host does not serve.
    h.drop_test_pack("future-api", "0.6.0", "");
    let manifest = std::fs::read_to_string(h.packs_dir.join("future-api/pack.toml")).unwrap();
    std::fs::write(
        h.packs_dir.join("future-api/pack.toml"),
        manifest.replace("wharf = \"^0.2\"", "wharf = \"^0.3\""),
    )
    .unwrap();

    let rows = h
        .wait_rows("five quarantined packs", |rows| {
            rows.iter()
                .filter(|r| r.state == PackState::Quarantined)
                .count()
                == 5
        })
        .await;
    let reason = |dir: &str| {
        rows.iter()
            .find(|r| r.dir == dir && r.state == PackState::Quarantined)
            .and_then(|r| r.error.clone())
            .unwrap()
    };
    for (dir, expected) in [
        ("bad-wasm", "cannot load component"),
        ("bad-digest", "digest mismatch"),
        ("bad-manifest", "invalid TOML"),
        ("broken-describe", "describe()"),
        ("future-api", "requires.wharf"),
    ] {
        let reason = reason(dir);
        assert!(reason.contains(expected), "{dir}: {reason}");
    }
    let active: Vec<_> = rows
        .iter()
        .filter(|r| r.state == PackState::Active)
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].version.as_deref(), Some("0.1.0"));
    assert_eq!(
        h.invoke(&sandbox, "echo", json!({"still": "here"}))
            .await
            .unwrap()
            .output,
        json!({"still": "here"})
    );

    // 6. The active directory itself rewritten with a broken manifest: the old
    //    generation keeps serving, and the new content shows as quarantined.
    std::fs::write(good.join("pack.toml"), "not toml at all = = =").unwrap();
    h.wait_rows("in-place breakage quarantined", |rows| {
        rows.iter()
            .any(|r| r.dir == "test-pack" && r.state == PackState::Quarantined)
            && rows
                .iter()
                .any(|r| r.dir == "test-pack" && r.state == PackState::Active)
    })
    .await;
    let out = h.invoke(&sandbox, "echo", json!(1)).await.unwrap();
    assert_eq!((out.version.as_str(), out.generation), ("0.1.0", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_content_is_one_generation_and_higher_version_shadows() {
    let h = Harness::start(|_| {}).await;
    h.drop_test_pack("a", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    // Same bytes under another name: no reload, same generation.
    h.drop_test_pack("b", "0.1.0", "");
    let rows = h
        .wait_rows("both dirs listed", |rows| rows.len() == 2)
        .await;
    assert!(rows.iter().all(|r| r.generation == Some(1)), "{rows:#?}");
    h.packs().rescan().await;
    assert!(
        h.packs()
            .snapshot()
            .rows()
            .iter()
            .all(|r| r.generation == Some(1))
    );

    h.drop_test_pack("c", "0.2.0", "");
    let rows = h.wait_active("test-pack", "0.2.0").await;
    let state_of = |dir: &str| rows.iter().find(|r| r.dir == dir).unwrap().state;
    assert_eq!(state_of("c"), PackState::Active);
    assert_eq!(state_of("a"), PackState::Shadowed);
    assert_eq!(state_of("b"), PackState::Shadowed);
    assert_eq!(
        rows.iter().find(|r| r.dir == "c").unwrap().generation,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_pack_unloads_it_after_in_flight_calls_drain() {
    let h = Arc::new(Harness::start(|_| {}).await);
    let dir = h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    let weak = Arc::downgrade(h.packs().snapshot().active.get("test-pack").unwrap());

    let slow = {
        let (h, sandbox) = (h.clone(), sandbox.clone());
        tokio::spawn(async move { h.invoke(&sandbox, "sleep", json!({"ms": 1500})).await })
    };
    h.wait_rows("call in flight", |rows| {
        rows.iter().any(|r| r.inflight == 1)
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let rows = h
        .wait_rows("pack draining", |rows| {
            rows.iter().all(|r| r.state == PackState::Draining) && !rows.is_empty()
        })
        .await;
    assert_eq!(rows[0].inflight, 1);
    let err = h.invoke(&sandbox, "noop", json!({})).await.unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::CapabilityNotSupported,
        "new calls must not reach a removed pack"
    );
    assert!(
        weak.upgrade().is_some(),
        "unloaded while a call was in flight"
    );

    let finished = slow
        .await
        .unwrap()
        .expect("the in-flight call finishes on the old generation");
    assert_eq!(finished.generation, 1);
    h.packs().rescan().await;
    assert!(h.packs().snapshot().rows().is_empty());
    assert!(
        weak.upgrade().is_none(),
        "generation still loaded after draining"
    );
}
