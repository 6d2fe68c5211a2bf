//! Benchmark of the first-party adapters over HTTP against an in-process
//! server, on the process and the Docker driver. Prints numbers; asserts
//! nothing.
//!
//! For each adapter operation: p50 / p95 of the HTTP round trip, and of the
//! plugin call the share spent in the wasm layer (instantiate, guest code,
//! copies) against the sandbox primitives it called (`duration_ms` less
//! `sandbox_ms` of the answer). Then `shell.run echo hi` against a direct
//! `POST /exec` of the same command: what the adapter layer adds. On Docker,
//! a 1 KiB `filesystem.read` and files-API download through the exec agent
//! against the engine's `docker exec` (a container without python3 has no
//! agent: its file operations take the path every container took before).
//!
//! Run: `cargo bench -p wharf --bench adapters` (the docker part needs the
//! engine and `scripts/build-base-image`).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::percentile;

const KEY: &str = "wharf_testadminkey0123456789";
const BASE_IMAGE: &str = "wharf/sandbox-base:1";
/// The base image without python3 (so without the exec agent), as the system tests make it.
const NO_AGENT_IMAGE: &str = "wharf/test-no-python:1";
const ROUNDS: usize = 40;
const WARMUP: usize = 5;

struct Bench {
    client: reqwest::Client,
    base: String,
}

/// One operation's figures, in milliseconds.
struct Figures {
    http: Vec<Duration>,
    call: Vec<f64>,
    sandbox: Vec<f64>,
}

fn quantile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

impl Figures {
    fn print(mut self, name: &str) -> f64 {
        if self.http.is_empty() {
            println!("{name:<44} failed (see above)");
            return f64::NAN;
        }
        let http50 = percentile(&mut self.http, 0.50);
        let http95 = percentile(&mut self.http, 0.95);
        let wasm: Vec<f64> = self
            .call
            .iter()
            .zip(&self.sandbox)
            .map(|(call, sandbox)| call - sandbox)
            .collect();
        let (mut call, mut sandbox, mut wasm) = (self.call, self.sandbox, wasm);
        if call.is_empty() {
            println!(
                "{name:<44} http p50 {:>7.2} ms  p95 {:>7.2} ms",
                ms(http50),
                ms(http95)
            );
        } else {
            let call50 = quantile(&mut call, 0.5);
            println!(
                "{name:<44} http p50 {:>7.2} ms  p95 {:>7.2} ms | plugin call p50 {:>7.2} ms: sandbox {:>7.2} ms, wasm layer {:>5.2} ms ({:>4.1} %)",
                ms(http50),
                ms(http95),
                call50,
                quantile(&mut sandbox, 0.5),
                quantile(&mut wasm, 0.5),
                100.0 * quantile(&mut wasm, 0.5) / call50.max(f64::EPSILON),
            );
        }
        ms(http50)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    async fn post(&self, path: &str, body: Value) -> (Duration, Value) {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        let took = started.elapsed();
        if !status.is_success() {
            // Reported, not fatal: the other operations still get measured.
            println!("   {path} {body}: {answer}");
        }
        (took, answer)
    }

    async fn sandbox(&self, profile: &str) -> String {
        let (_, created) = self
            .post("/v1/sandboxes", json!({"profile": profile}))
            .await;
        created["id"].as_str().unwrap().to_string()
    }

    /// Runs `capability.operation` ROUNDS times (after a warm-up), with the
    /// input `input(i)` of round `i`.
    async fn op(
        &self,
        id: &str,
        capability: &str,
        operation: &str,
        rounds: usize,
        input: impl Fn(usize) -> Value,
    ) -> Figures {
        let path = format!("/v1/sandboxes/{id}/capabilities/{capability}/{operation}");
        let mut figures = Figures {
            http: Vec::new(),
            call: Vec::new(),
            sandbox: Vec::new(),
        };
        for i in 0..WARMUP + rounds {
            let (took, answer) = self.post(&path, input(i)).await;
            if answer["duration_ms"].is_null() {
                break;
            }
            if i >= WARMUP {
                figures.http.push(took);
                figures.call.push(answer["duration_ms"].as_f64().unwrap());
                figures.sandbox.push(answer["sandbox_ms"].as_f64().unwrap());
            }
        }
        figures
    }

    /// A direct `POST /exec` of `body`.
    async fn exec(&self, id: &str, body: Value) -> Figures {
        let mut http = Vec::new();
        for i in 0..WARMUP + ROUNDS {
            let (took, _) = self
                .post(&format!("/v1/sandboxes/{id}/exec"), body.clone())
                .await;
            if i >= WARMUP {
                http.push(took);
            }
        }
        Figures {
            http,
            call: Vec::new(),
            sandbox: Vec::new(),
        }
    }

    /// `GET /files/{path}` of the files API.
    async fn download(&self, id: &str, path: &str) -> Figures {
        let mut http = Vec::new();
        for i in 0..WARMUP + ROUNDS {
            let started = Instant::now();
            let body = self
                .client
                .get(format!("{}/v1/sandboxes/{id}/files/{path}", self.base))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len(), 1024);
            if i >= WARMUP {
                http.push(started.elapsed());
            }
        }
        Figures {
            http,
            call: Vec::new(),
            sandbox: Vec::new(),
        }
    }
}

/// Every adapter operation on one sandbox of `profile`.
async fn per_operation(bench: &Bench, profile: &str) {
    println!("-- {profile}: per operation ({ROUNDS} rounds each)");
    let id = bench.sandbox(profile).await;
    let (_, _) = bench
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "set -e
head -c 1024 /dev/zero | tr '\\0' 'a' > one-kib.txt
mkdir -p tree && for i in $(seq 1 100); do printf 'alpha\\nneedle %s\\n' $i > tree/f$i.txt; done
git init -q --bare -b main origin.git && git init -q -b main seed && cd seed && echo x > README
git add README && git -c user.name=B -c user.email=b@x commit -q -m one && git push -q ../origin.git main
cd .. && git clone -q origin.git work"}),
        )
        .await;

    let direct = bench
        .exec(&id, json!({"argv": ["sh", "-c", "echo hi"]}))
        .await
        .print("direct POST /exec `sh -c 'echo hi'`");
    let adapter = bench
        .op(
            &id,
            "shell",
            "run",
            ROUNDS,
            |_| json!({"command": "echo hi"}),
        )
        .await
        .print("shell.run `echo hi`");
    println!(
        "{profile}: adapter layer over a direct exec, p50: {:+.2} ms",
        adapter - direct
    );
    type Input = fn(usize) -> Value;
    let operations: [(&str, &str, usize, Input, &str); 12] = [
        (
            "python",
            "run",
            ROUNDS,
            |_| json!({"code": "result = 6 * 7"}),
            "python.run `result = 6 * 7`",
        ),
        (
            "filesystem",
            "read",
            ROUNDS,
            |_| json!({"path": "one-kib.txt"}),
            "filesystem.read 1 KiB",
        ),
        (
            "filesystem",
            "write",
            ROUNDS,
            |i| json!({"path": format!("w{i}.txt"), "content": "x".repeat(1024)}),
            "filesystem.write 1 KiB",
        ),
        (
            "filesystem",
            "list",
            ROUNDS,
            |_| json!({"path": "tree"}),
            "filesystem.list (100 entries)",
        ),
        (
            "filesystem",
            "delete",
            ROUNDS,
            |i| json!({"path": format!("w{i}.txt")}),
            "filesystem.delete",
        ),
        (
            "filesystem",
            "glob",
            ROUNDS,
            |_| json!({"pattern": "**/f1*.txt"}),
            "filesystem.glob `**/f1*.txt`",
        ),
        (
            "filesystem",
            "search",
            ROUNDS,
            |_| json!({"query": "needle", "path": "tree", "limit": 1000}),
            "filesystem.search (100 files)",
        ),
        (
            "git",
            "clone",
            ROUNDS / 4,
            |i| json!({"url": "origin.git", "path": format!("clone{i}")}),
            "git.clone (local bare repository)",
        ),
        (
            "git",
            "status",
            ROUNDS,
            |_| json!({"path": "work"}),
            "git.status",
        ),
        (
            "git",
            "diff",
            ROUNDS,
            |_| json!({"path": "work"}),
            "git.diff",
        ),
        (
            "git",
            "commit",
            ROUNDS,
            |i| json!({"path": "work", "message": format!("round {i}"), "allow_empty": true}),
            "git.commit (empty)",
        ),
        (
            "git",
            "log",
            ROUNDS,
            |_| json!({"path": "work"}),
            "git.log (20 commits)",
        ),
    ];
    for (capability, operation, rounds, input, label) in operations {
        bench
            .op(&id, capability, operation, rounds, input)
            .await
            .print(label);
    }
}

/// A 1 KiB read on Docker through the exec agent against the engine's exec.
async fn docker_reads(bench: &Bench) {
    ensure_no_agent_image();
    println!("-- docker: 1 KiB reads, exec agent against `docker exec` ({ROUNDS} rounds)");
    for (profile, how) in [
        ("noagent", "docker exec (before)"),
        ("docker", "exec agent (after)"),
    ] {
        let id = bench.sandbox(profile).await;
        bench
            .post(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"command": "head -c 1024 /dev/zero | tr '\\0' 'a' > one-kib.txt"}),
            )
            .await;
        bench
            .download(&id, "one-kib.txt")
            .await
            .print(&format!("GET /files 1 KiB, {how}"));
        bench
            .op(
                &id,
                "filesystem",
                "read",
                ROUNDS,
                |_| json!({"path": "one-kib.txt"}),
            )
            .await
            .print(&format!("filesystem.read 1 KiB, {how}"));
    }
}

/// Builds the no-python image from the base image when missing (offline).
fn ensure_no_agent_image() {
    let present = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present(NO_AGENT_IMAGE) {
        return;
    }
    let builder = format!("wharf-bench-noagent-{}", std::process::id());
    let run = Command::new("docker")
        .args([
            "run",
            "--name",
            &builder,
            "--user",
            "0",
            "--network",
            "none",
        ])
        .args([BASE_IMAGE, "sh", "-c", "rm -f /usr/bin/python3*"])
        .status()
        .unwrap();
    assert!(run.success());
    let commit = Command::new("docker")
        .args(["commit", "--change", "USER 1000:1000"])
        .args([
            "--change",
            "CMD [\"sleep\", \"infinity\"]",
            &builder,
            NO_AGENT_IMAGE,
        ])
        .status()
        .unwrap();
    assert!(commit.success());
    let _ = Command::new("docker").args(["rm", &builder]).status();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let h = common::Harness::start(|config| {
        config.sandbox.gc_interval_ms = 60_000;
        let mut noagent = wharf::sandbox::Profile::builtin_docker();
        noagent.image = NO_AGENT_IMAGE.to_string();
        config.profiles.insert("noagent".into(), noagent);
    })
    .await;
    h.install_core_adapters("0.2.0").await;
    let base = support::serve(h.server.router()).await;
    let bench = Bench {
        client: reqwest::Client::new(),
        base,
    };
    // WHARF_BENCH_DRIVER=docker (or =process) measures that driver only.
    let only = std::env::var("WHARF_BENCH_DRIVER").ok();
    if only.as_deref() != Some("docker") {
        per_operation(&bench, "local").await;
    }
    if only.as_deref() == Some("process") {
        return;
    }
    if !h.server.state.sandboxes.driver_names().contains(&"docker") {
        println!("docker driver unavailable: skipping the docker part");
        return;
    }
    per_operation(&bench, "docker").await;
    docker_reads(&bench).await;
}
