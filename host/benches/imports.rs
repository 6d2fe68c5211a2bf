//! Relay import throughput against the real binary: one import of 100 keys (set
//! `WHARF_BENCH_KEYS`) into the mock sub2api (`wharf_e2e::mock_sub2api`) with a mock upstream,
//! at item concurrency 1, 4 and 8. Prints the wall time, the requests each key cost the host
//! (admin API and gateway), and the probe's share of the item time (probe durations from the
//! items' evidence against the plan and ensure steps of the run). Asserts only that every key
//! ended `ready`, nothing about speed.
//!
//! Run: `cargo bench --workspace --profile dev --bench imports`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_e2e::mock_sub2api::MockSub2api;
use wharf_e2e::mock_upstream::MockUpstream;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

fn keys() -> usize {
    std::env::var("WHARF_BENCH_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

async fn one_import(built: &std::path::Path, keys: usize, concurrency: usize) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        format!(
            "[sandbox]\ndocker = false\n[relays]\nitem_concurrency = {concurrency}\n\
             confirm_poll_ms = 100\nreconcile_interval_secs = 0\n"
        ),
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    for id in ["openai-cn-pack", "sub2api-host-pack"] {
        install_pack_active(&admin, &built.join(id), &server.packs_dir, id).await;
    }
    admin.wait_for_provider("kimi").await;
    let names: Vec<String> = (0..keys)
        .map(|n| format!("sk-bench-{n:04}-abcdef"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let upstream = MockUpstream::start(&["kimi-k2.6"], &refs, &[]).await;
    let host = MockSub2api::start(ADMIN_TOKEN).await;
    let (status, registered) = admin
        .post(
            "/v1/hosts",
            json!({"kind": "sub2api", "base_url": host.base_url(), "admin_token": ADMIN_TOKEN}),
        )
        .await;
    assert_eq!(status, 201, "{registered}");
    host.reset_counters();
    let started = Instant::now();
    let (status, created) = admin
        .post(
            "/v1/imports",
            json!({"host_id": registered["id"], "provider": "kimi", "base_url": upstream.v1_url(),
                   "api_keys": refs, "models": ["kimi-k2.6"], "mode": "subscription"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let import = loop {
        let (_, import) = admin.get(&format!("/v1/imports/{id}")).await;
        if import["status"] != "running" {
            break import;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    let items = import["items"].as_array().unwrap();
    let ready = items
        .iter()
        .filter(|i| i["access_status"] == "ready")
        .count();
    assert_eq!(ready, keys, "every key ready: {}", import["counts"]);
    let probe_ms: f64 = items
        .iter()
        .flat_map(|i| i["evidence"].as_array().unwrap().iter())
        .filter(|e| e["event"] == "probe")
        .map(|e| e["duration_ms"].as_f64().unwrap_or(0.0))
        .sum();
    let admin_ms: f64 = import["run"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s: &Value| {
            (s["ended_ms"].as_i64().unwrap_or(0) - s["started_ms"].as_i64().unwrap_or(0)) as f64
        })
        .sum();
    println!(
        "{keys} keys, item concurrency {concurrency}: {wall:.2} s wall ({:.1} keys/s); per key \
         {:.1} admin requests + {:.1} gateway requests to the host; probe share of item time {:.0}% \
         (probes {:.0} ms, plan+ensure {:.0} ms in all)",
        keys as f64 / wall,
        host.admin_call_count() as f64 / keys as f64,
        host.gateway_call_count() as f64 / keys as f64,
        100.0 * probe_ms / (probe_ms + admin_ms).max(1.0),
        probe_ms,
        admin_ms,
    );
}

#[tokio::main]
async fn main() {
    let built = tempfile::tempdir().unwrap();
    for (source, id) in [
        ("packs/openai-cn-pack", "openai-cn-pack"),
        ("packs/sub2api-host-pack", "sub2api-host-pack"),
    ] {
        build_pack(source, &built.path().join(id));
    }
    let keys = keys();
    for concurrency in [1, 4, 8] {
        one_import(built.path(), keys, concurrency).await;
    }
}
