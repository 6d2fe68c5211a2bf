//! Benchmark of sandboxes over HTTP against an in-process server, on both
//! drivers, beside the same operations done with the `docker` CLI. Prints
//! numbers; asserts nothing.
//!
//! Run: `cargo bench -p wharf --bench sandboxes` (the docker part needs the
//! engine and `scripts/build-base-image`).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::percentile;

const KEY: &str = "wharf_testadminkey0123456789";
const IMAGE: &str = "wharf/sandbox-base:1";

fn report(name: &str, samples: &mut [Duration]) -> Duration {
    let p50 = percentile(samples, 0.50);
    let p95 = percentile(samples, 0.95);
    println!(
        "{name:<48} n={:<4} p50={:>9.1?} p95={:>9.1?}",
        samples.len(),
        p50,
        p95
    );
    p50
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

struct Figures {
    create_p50: Duration,
    exec_p50: Duration,
}

async fn bench_profile(
    client: &reqwest::Client,
    base: &str,
    profile: &str,
    creates: usize,
    held: usize,
) -> Figures {
    println!("-- profile {profile}");
    let create = || async {
        let body: serde_json::Value = client
            .post(format!("{base}/v1/sandboxes"))
            .bearer_auth(KEY)
            .json(&json!({"profile": profile}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "running", "{body}");
        body["id"].as_str().unwrap().to_string()
    };
    let delete = |id: String| async move {
        client
            .delete(format!("{base}/v1/sandboxes/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
    };

    let mut samples = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..creates {
        let started = Instant::now();
        ids.push(create().await);
        samples.push(started.elapsed());
    }
    let create_p50 = report(&format!("{profile}: create -> running"), &mut samples);
    let id = ids[0].clone();

    let mut samples = Vec::new();
    for i in 0..60 {
        let started = Instant::now();
        let out: serde_json::Value = client
            .post(format!("{base}/v1/sandboxes/{id}/exec"))
            .bearer_auth(KEY)
            .json(&json!({"argv": ["true"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(out["exit_code"], 0, "{out}");
        if i >= 10 {
            samples.push(started.elapsed());
        }
    }
    let exec_p50 = report(&format!("{profile}: exec `true` round trip"), &mut samples);

    let blob: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let started = Instant::now();
        let response = client
            .put(format!("{base}/v1/sandboxes/{id}/files/blob.bin"))
            .bearer_auth(KEY)
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        up.push(started.elapsed());
        let started = Instant::now();
        let bytes = client
            .get(format!("{base}/v1/sandboxes/{id}/files/blob.bin"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len(), blob.len());
        down.push(started.elapsed());
    }
    let up50 = report(&format!("{profile}: upload 5 MiB"), &mut up);
    let down50 = report(&format!("{profile}: download 5 MiB"), &mut down);
    println!(
        "{profile}: throughput at p50: upload {:.0} MiB/s, download {:.0} MiB/s",
        5.0 / up50.as_secs_f64(),
        5.0 / down50.as_secs_f64()
    );

    for id in ids.drain(..) {
        delete(id).await;
    }
    let before = rss_mib();
    let containers_before = containers_memory_mib();
    let started = Instant::now();
    for _ in 0..held {
        ids.push(create().await);
    }
    let took = started.elapsed();
    println!(
        "{profile}: {held} sandboxes held: server RSS {before:.1} -> {:.1} MiB ({:.2} MiB each), created in {took:.1?}",
        rss_mib(),
        (rss_mib() - before) / held as f64
    );
    let containers = containers_memory_mib() - containers_before;
    if containers > 0.0 {
        println!(
            "{profile}: their containers use {containers:.1} MiB more ({:.1} MiB each: the exec agent as PID 1)",
            containers / held as f64
        );
    }
    for id in ids.drain(..) {
        delete(id).await;
    }
    Figures {
        create_p50,
        exec_p50,
    }
}

/// Memory the engine counts for Wharf's sandbox containers (`docker stats`).
fn containers_memory_mib() -> f64 {
    let ids = docker_ok(&["ps", "-q", "--filter", "label=wharf.sandbox"]);
    if ids.is_empty() {
        return 0.0;
    }
    let mut args = vec!["stats", "--no-stream", "--format", "{{.MemUsage}}"];
    args.extend(ids.lines());
    docker_ok(&args)
        .lines()
        .filter_map(|line| line.split('/').next())
        .map(|used| {
            let used = used.trim();
            let number: String = used
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let value: f64 = number.parse().unwrap_or(0.0);
            match &used[number.len()..] {
                "GiB" => value * 1024.0,
                "MiB" => value,
                "KiB" | "kB" => value / 1024.0,
                _ => value / (1024.0 * 1024.0),
            }
        })
        .sum()
}

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bench_docker_cli(creates: usize) -> Figures {
    println!("-- docker CLI");
    let mut samples = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..creates {
        let started = Instant::now();
        // The container the docker driver makes for the built-in `docker`
        // profile: same limits, hardening and a named volume at the workdir.
        let volume = format!(
            "type=volume,source=wharf-bench-{},target=/workspace",
            ids.len()
        );
        ids.push(docker_ok(&[
            "run",
            "-d",
            "--user",
            "1000:1000",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,mode=1777,size=512m",
            "--stop-signal",
            "SIGKILL",
            "--network",
            "none",
            "--cpus",
            "1",
            "--memory",
            "512m",
            "--memory-swap",
            "512m",
            "--pids-limit",
            "256",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--mount",
            &volume,
            "--label",
            "wharf.bench=1",
            IMAGE,
            "sleep",
            "infinity",
        ]));
        samples.push(started.elapsed());
    }
    let create_p50 = report("docker run -d (same limits and volume)", &mut samples);
    let mut samples = Vec::new();
    for i in 0..60 {
        let started = Instant::now();
        docker_ok(&["exec", &ids[0], "true"]);
        if i >= 10 {
            samples.push(started.elapsed());
        }
    }
    let exec_p50 = report("docker exec <c> true", &mut samples);
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    docker_ok(&rm);
    let volumes: Vec<String> = (0..ids.len()).map(|i| format!("wharf-bench-{i}")).collect();
    let mut rm = vec!["volume", "rm"];
    rm.extend(volumes.iter().map(String::as_str));
    docker_ok(&rm);
    Figures {
        create_p50,
        exec_p50,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let h = common::Harness::start(|config| {
        config.sandbox.gc_interval_ms = 60_000;
        // The process driver without its confinement, measured in the same
        // run as the confined `local` profile: what isolation costs.
        let mut unconfined = wharf::sandbox::Profile::builtin_local();
        unconfined.isolation = wharf::sandbox::profiles::Isolation::None;
        config.profiles.insert("unconfined".into(), unconfined);
    })
    .await;
    let base = support::serve(h.server.router()).await;
    let client = reqwest::Client::new();
    println!("drivers: {:?}", h.server.state.sandboxes.driver_names());

    let before = bench_profile(&client, &base, "unconfined", 50, 200).await;
    let after = bench_profile(&client, &base, "local", 50, 200).await;
    println!(
        "-- process driver isolation cost (p50): create {:.1?} -> {:.1?}, exec `true` {:.1?} -> {:.1?}",
        before.create_p50, after.create_p50, before.exec_p50, after.exec_p50
    );
    if !h.server.state.sandboxes.driver_names().contains(&"docker") {
        println!("docker driver unavailable: skipping the docker part");
        return;
    }
    let ours = bench_profile(&client, &base, "docker", 15, 20).await;
    let cli = bench_docker_cli(15);
    println!("-- ratios (wharf docker driver / docker CLI, p50)");
    println!(
        "create -> running: {:.2}",
        ours.create_p50.as_secs_f64() / cli.create_p50.as_secs_f64()
    );
    println!(
        "exec `true`:       {:.2}",
        ours.exec_p50.as_secs_f64() / cli.exec_p50.as_secs_f64()
    );
}
