//! Batch throughput against the real binary: tasks per minute for trivial script tasks
//! (`shell.run true`) at concurrency 1, 4 and 8 on the process and Docker drivers, and per
//! task the time of its step against the rest (sandbox create and destroy, recording), read
//! from the exported trajectories. Prints numbers; asserts nothing about speed.
//!
//! Run: `cargo bench --workspace --profile dev --bench batches` (the Docker part needs the
//! engine and `scripts/build-base-image`). `WHARF_BENCH_TASKS` and `WHARF_BENCH_DOCKER_TASKS`
//! set the batch sizes (default 200 and 60).

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, build_pack, install_pack_active};

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", "wharf/sandbox-base:1"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs one batch of `tasks` trivial tasks; prints its rate and per-task split.
async fn one_batch(driver: &str, profile: &str, tasks: usize, concurrency: usize) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("wharf.toml"),
        format!(
            "[batches]\npoll_interval_ms = 100\ndefault_profile = \"{profile}\"\n\
             default_concurrency = {concurrency}\n"
        ),
    )
    .unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let built = root.path().join("built-core-adapters");
    build_pack("packs/core-adapters", &built);
    install_pack_active(&admin, &built, &server.packs_dir, "core-adapters").await;

    let body: Vec<String> = (0..tasks)
        .map(|i| {
            json!({"task_id": format!("t{i}"), "task_type": "code", "description": "true",
                   "steps": [{"capability": "shell", "operation": "run",
                              "input": {"command": "true"}}]})
            .to_string()
        })
        .collect();
    let started = Instant::now();
    let (status, batch) = admin
        .send(
            admin
                .request(Method::POST, "/v1/batches")
                .header("content-type", "application/x-ndjson")
                .body(body.join("\n")),
        )
        .await;
    assert_eq!(status, 201, "{batch}");
    let id = batch["batch_id"].as_str().unwrap().to_string();
    let batch = loop {
        let (_, batch) = admin.get(&format!("/v1/batches/{id}")).await;
        if batch["status"] == "finished" {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(batch["counts"]["succeeded"], tasks as i64, "{batch}");

    let text = admin
        .request(
            Method::GET,
            &format!("/v1/batches/{id}/export?format=wharf"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut totals, mut steps, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let t: Value = serde_json::from_str(line).unwrap();
        let total = t["total_duration_ms"].as_f64().unwrap();
        let step: f64 = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["duration_ms"].as_f64().unwrap())
            .sum();
        totals.push(total);
        steps.push(step);
        overheads.push(total - step);
    }
    println!(
        "{driver:<7} concurrency {concurrency}: {tasks} tasks in {wall:.1} s = {:.0} tasks/min; \
         per task (median): total {:.0} ms, step {:.0} ms, overhead {:.0} ms",
        tasks as f64 * 60.0 / wall,
        median(&mut totals),
        median(&mut steps),
        median(&mut overheads),
    );
}

#[tokio::main]
async fn main() {
    let mut drivers = vec![("process", "local", size("WHARF_BENCH_TASKS", 200))];
    if docker_ready() {
        drivers.push(("docker", "docker", size("WHARF_BENCH_DOCKER_TASKS", 60)));
    } else {
        println!("docker driver unavailable: skipping the docker part");
    }
    for (driver, profile, tasks) in drivers {
        for concurrency in [1, 4, 8] {
            one_batch(driver, profile, tasks, concurrency).await;
        }
    }
}
