//! Benchmark of the plugin host. Prints numbers; asserts nothing.
//!
//! (a) in-process adapter call: instantiate (pooling, pre-instantiated) + `invoke` of a no-op
//! (b) hot swap: rename of a new version into the packs dir -> new generation serving
//! (c) end-to-end `shell.run` over HTTP against an in-process server
//!
//! Run: `cargo bench -p wharf --bench plugin_host`

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::percentile;

fn report(name: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.50);
    let p99 = percentile(samples, 0.99);
    println!(
        "{name:<58} n={:<6} p50={:>10.1?} p99={:>10.1?}",
        samples.len(),
        p50,
        p99
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let h = common::Harness::start(|_| {}).await;
    h.drop_test_pack("test-pack", "0.1.0", "");
    h.wait_active("test-pack", "0.1.0").await;
    let sandbox = h.sandbox().await;
    let wasm_size = std::fs::metadata(h.test_pack.join("components/test.wasm"))
        .unwrap()
        .len();
    println!("test-adapter component: {} KB", wasm_size / 1024);

    // (a) instantiate + invoke(noop), straight on the runtime.
    let component = h.packs().snapshot().capabilities["test"]
        .component()
        .runtime
        .clone();
    let binding = sandbox.clone();
    let mut samples = tokio::task::spawn_blocking(move || {
        let mut samples = Vec::with_capacity(5000);
        for i in 0..5500 {
            let started = Instant::now();
            component
                .adapter_call(Some(binding.clone()), |store, adapter| {
                    adapter
                        .wharf_plugin_adapter()
                        .call_invoke(store, "noop", "{}")
                })
                .unwrap()
                .unwrap();
            if i >= 500 {
                samples.push(started.elapsed());
            }
        }
        samples
    })
    .await
    .unwrap();
    report("(a) instantiate + invoke(noop), in-process", &mut samples);

    // (a') the same through capability routing (snapshot, in-flight guard, blocking pool).
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let started = Instant::now();
        h.invoke(&sandbox, "noop", json!({})).await.unwrap();
        samples.push(started.elapsed());
    }
    report("(a') capabilities::invoke(test.noop), routed", &mut samples);

    // (b) hot swap with a warm compile cache.
    let mut samples = Vec::new();
    for i in 1..=20 {
        let version = format!("0.2.{i}");
        let staging = h.packs_dir.join(format!(".swap-{i}"));
        common::copy_dir(&h.test_pack, &staging);
        common::patch_manifest(&staging, &version, "");
        let started = Instant::now();
        std::fs::rename(&staging, h.packs_dir.join(format!("swap-{i}"))).unwrap();
        loop {
            let snapshot = h.packs().snapshot();
            if snapshot
                .active
                .get("test-pack")
                .is_some_and(|p| p.version.to_string() == version)
            {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(started.elapsed());
    }
    report(
        &format!(
            "(b) hot swap, rename -> serving ({} KB, warm cache)",
            wasm_size / 1024
        ),
        &mut samples,
    );

    // (c) shell.run over HTTP against the real router on loopback.
    h.install_core_adapters("0.2.0").await;
    let base = support::serve(h.server.router()).await;
    let client = reqwest::Client::new();
    let key = "wharf_testadminkey0123456789";
    let created: serde_json::Value = client
        .post(format!("{base}/v1/sandboxes"))
        .bearer_auth(key)
        .json(&json!({"profile": "local"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "{base}/v1/sandboxes/{}/capabilities/shell/run",
        created["id"].as_str().unwrap()
    );
    let mut samples = Vec::new();
    for i in 0..220 {
        let started = Instant::now();
        let response = client
            .post(&url)
            .bearer_auth(key)
            .json(&json!({"command": "echo hi"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.bytes().await.unwrap();
        if i >= 20 {
            samples.push(started.elapsed());
        }
    }
    report(
        "(c) POST shell.run `echo hi` over HTTP, end to end",
        &mut samples,
    );
}
