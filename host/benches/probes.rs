//! Benchmark of access probes. Prints numbers; asserts nothing.
//!
//! Against a healthy mock OpenAI-compatible upstream on loopback (axum, in-process):
//! (a) probes per second at concurrency 1, 16 and 64 (each probe = plan + 2 HTTP steps + 2 judges);
//! (b) the host's overhead per probe over the mock's own latency: a probe's duration minus the
//!     two HTTP exchanges it made (timed around each request), and, as a cross-check, a probe's
//!     p50 minus the p50 of the same two requests sent by a bare reqwest client.
//!
//! Run: `cargo bench -p wharf --bench probes`

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::{Value, json};
use support::percentile;
use wharf::config::ProbesConfig;
// The mock is on loopback: the bench probes as an admin would.
use wharf::outbound::Reach;
use wharf::probes::runner::{ProbeRequest, ProbeRunner};

const KEY: &str = "sk-bench-0123456789";

async fn mock() -> String {
    let models = json!({"object": "list", "data": [{"id": "kimi-k2.6", "object": "model"}, {"id": "kimi-k2.5", "object": "model"}]});
    let app = Router::new()
        .route("/v1/models", axum::routing::get(move || std::future::ready(axum::Json(models.clone()))))
        .route(
            "/v1/chat/completions",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                axum::Json(json!({
                    "id": "c1", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}]
                }))
            }),
        );
    support::serve(app).await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let h = common::Harness::start(|_| {}).await;
    let built = h.data.path().join("built/openai-cn-pack");
    common::build_fixture("packs/openai-cn-pack", &built);
    common::copy_dir(&built, &h.packs_dir.join("openai-cn-pack"));
    h.packs().rescan().await;
    assert!(
        h.packs().snapshot().providers.contains_key("kimi"),
        "openai-cn-pack did not load"
    );
    let base = mock().await;
    let runner = Arc::new(ProbeRunner::new(h.packs().clone(), ProbesConfig::default()).unwrap());
    let request = Arc::new(ProbeRequest {
        provider: "kimi".into(),
        base_url: base.clone(),
        api_key: KEY.into(),
        model: None,
        stream: None,
        direct_base_url: None,
    });
    // Warm up: compile cache, connection pool, blocking threads.
    for _ in 0..200 {
        assert!(runner.run(&request, Reach::Any).await.unwrap().ready());
    }

    // (c) where the overhead goes: one plugin call each, on a fresh instance.
    let component = h.packs().snapshot().providers["kimi"]
        .component()
        .runtime
        .clone();
    let samples = tokio::task::spawn_blocking(move || {
        use wharf::runtime::bindings::provider::exports::wharf::plugin::provider::ProbeTarget;
        let target = ProbeTarget {
            base_url: "http://127.0.0.1:1".into(),
            model: None,
            stream: None,
        };
        let mut plan = Vec::new();
        let mut resolve = Vec::new();
        for _ in 0..500 {
            let started = Instant::now();
            component
                .provider_call(None, |store, p| {
                    p.wharf_plugin_provider()
                        .call_probe_plan(store, "kimi", &target)
                })
                .unwrap()
                .unwrap();
            plan.push(started.elapsed());
            let started = Instant::now();
            component
                .provider_call(None, |store, p| {
                    p.wharf_plugin_provider()
                        .call_resolve_model(store, "kimi", "kimi 2.6")
                })
                .unwrap()
                .unwrap();
            resolve.push(started.elapsed());
        }
        (plan, resolve)
    })
    .await
    .unwrap();
    let (mut plan, mut resolve) = samples;
    println!(
        "(c) plugin call probe-plan (fresh instance)         n=500  p50={:>9.1?}",
        percentile(&mut plan, 0.5)
    );
    println!(
        "(c) plugin call resolve-model (fresh instance)      n=500  p50={:>9.1?}",
        percentile(&mut resolve, 0.5)
    );

    // (b) overhead, sequential.
    let mut totals = Vec::new();
    let mut overheads = Vec::new();
    for _ in 0..2000 {
        let result = runner.run(&request, Reach::Any).await.unwrap();
        let http: f64 = result.steps.iter().map(|s| s.latency_ms).sum();
        totals.push(Duration::from_secs_f64(result.duration_ms / 1000.0));
        overheads.push(Duration::from_secs_f64(
            ((result.duration_ms - http) / 1000.0).max(0.0),
        ));
    }
    let client = reqwest::Client::new();
    let chat = json!({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "Reply with the single word OK."}], "max_tokens": 256});
    let mut bare = Vec::new();
    for _ in 0..2000 {
        let started = Instant::now();
        client
            .get(format!("{base}/v1/models"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        bare.push(started.elapsed());
    }
    let (p50_total, p50_bare, p50_over) = (
        percentile(&mut totals, 0.5),
        percentile(&mut bare, 0.5),
        percentile(&mut overheads, 0.5),
    );
    println!(
        "(b) probe, sequential                              n=2000 p50={p50_total:>9.1?} p99={:>9.1?}",
        percentile(&mut totals, 0.99)
    );
    println!(
        "(b) the same 2 requests, bare reqwest              n=2000 p50={p50_bare:>9.1?} p99={:>9.1?}",
        percentile(&mut bare, 0.99)
    );
    println!(
        "(b) host overhead = probe - its 2 HTTP exchanges    n=2000 p50={p50_over:>9.1?} p99={:>9.1?}",
        percentile(&mut overheads, 0.99)
    );
    println!(
        "(b) host overhead = p50 probe - p50 bare requests         {:>9.1?}",
        p50_total.saturating_sub(p50_bare)
    );

    // (a) throughput at a fixed concurrency.
    for (concurrency, total) in [(1usize, 1000usize), (16, 3000), (64, 3000)] {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (runner, request, next) = (runner.clone(), request.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut failed = 0;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    if !runner.run(&request, Reach::Any).await.unwrap().ready() {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for worker in workers {
            failed += worker.await.unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "(a) concurrency {concurrency:>2}: {total} probes in {elapsed:>8.2?} = {:>7.0} probes/s ({failed} not ready)",
            total as f64 / elapsed.as_secs_f64()
        );
    }
}
