//! Benchmark of cases against an in-process server, beside the same steps done with the
//! `git` and `docker` CLIs in one script in the same run. Prints numbers; asserts nothing.
//!
//! Run: `cargo bench -p wharf --bench cases` (needs the Docker engine and
//! `scripts/build-base-image`).
//!
//! Measured:
//! - `POST /v1/cases` response time (the case then runs in the background);
//! - phase timings (clone, patch, build with a warm layer cache, start, ready) of the
//!   `static-site` fixture, as the server records them;
//! - `git clone --depth 1`, `docker build`, `docker run -d -p`, and polling the URL with
//!   curl until it answers, timed by one shell script; the ratio of the two totals.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::percentile;
use wharf::config::Config;
use wharf::server::Server;

const KEY: &str = "wharf_benchadminkey0123456789";
const ROUNDS: usize = 5;
const POSTS: usize = 20;

fn fixture_repo(root: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cases/static-site");
    let repo = root.join("static-site");
    std::fs::create_dir_all(&repo).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), repo.join(entry.file_name())).unwrap();
    }
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@wharf.invalid",
            "commit",
            "-q",
            "-m",
            "fixture",
        ],
    ] {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(&repo)
                .status()
                .unwrap()
                .success()
        );
    }
    repo
}

async fn case(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/cases/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn create(client: &reqwest::Client, base: &str, repo: &Path) -> (Duration, String) {
    let started = Instant::now();
    let body: Value = client
        .post(format!("{base}/v1/cases"))
        .bearer_auth(KEY)
        .json(&json!({"git_url": repo.to_str().unwrap(), "ref": "main", "container_port": 8000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    (
        elapsed,
        body["case_id"].as_str().expect("case_id").to_string(),
    )
}

async fn delete(client: &reqwest::Client, base: &str, id: &str) {
    client
        .delete(format!("{base}/v1/cases/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
}

/// One case to `running`; its phase timings in ms and the wall time from POST to running.
async fn one_round(
    client: &reqwest::Client,
    base: &str,
    repo: &Path,
    keep: bool,
) -> ([i64; 5], Duration) {
    let started = Instant::now();
    let (_, id) = create(client, base, repo).await;
    let body = loop {
        let body = case(client, base, &id).await;
        match body["status"].as_str().unwrap() {
            "running" => break body,
            "failed" | "stopped" => panic!("bench case failed: {body}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let wall = started.elapsed();
    let t = &body["timings"];
    let phases = ["clone_ms", "patch_ms", "build_ms", "start_ms", "ready_ms"]
        .map(|p| t[p].as_i64().unwrap_or(-1));
    if !keep {
        delete(client, base, &id).await;
    }
    (phases, wall)
}

/// The same steps with the CLIs, timed by one script: clone, build, run, curl until 2xx.
const CLI_SCRIPT: &str = r#"set -e
repo="$1"; work="$2"; port="$3"; tag="$4"
ms() { date +%s%3N; }
t0=$(ms); git clone -q --depth 1 --branch main "file://$repo" "$work/src"
t1=$(ms); docker build -q -t "$tag" "$work/src" >/dev/null
t2=$(ms); cid=$(docker run -d -p "127.0.0.1:$port:8000" "$tag")
t3=$(ms); until curl -fs "http://127.0.0.1:$port/" >/dev/null; do sleep 0.05; done
t4=$(ms)
docker rm -f "$cid" >/dev/null
echo "$((t1-t0)) $((t2-t1)) $((t3-t2)) $((t4-t3))"
"#;

fn cli_round(repo: &Path, work: &Path, port: u16, tag: &str) -> [i64; 4] {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let out = Command::new("bash")
        .args(["-c", CLI_SCRIPT, "cli"])
        .arg(repo)
        .arg(work)
        .arg(port.to_string())
        .arg(tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numbers: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    [numbers[0], numbers[1], numbers[2], numbers[3]]
}

fn median(values: &mut [i64]) -> i64 {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = tempfile::tempdir().unwrap();
    let repo = fixture_repo(root.path());
    let pool = 47_310u16;
    let mut config = Config {
        data_dir: root.path().join("data"),
        admin_key: Some(KEY.into()),
        ..Config::default()
    };
    config.cases.port_pool_start = pool;
    config.cases.port_pool_end = pool + 3;
    config.quotas.cases_per_owner = 1000;
    let (server, _) = Server::start(config).await.unwrap();
    let base = support::serve(server.router()).await;
    let client = reqwest::Client::new();

    // Warm the layer cache (and the server) once; that case stays, so its image (the
    // cache every later build of the same tree hits) stays too.
    let (_, first_wall) = one_round(&client, &base, &repo, true).await;
    println!("first case (cold server, cache as found): {first_wall:.1?}");

    let mut posts = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..POSTS {
        let (elapsed, id) = create(&client, &base, &repo).await;
        posts.push(elapsed);
        ids.push(id);
    }
    for id in &ids {
        delete(&client, &base, id).await;
    }
    println!(
        "POST /v1/cases response                n={POSTS:<3} p50={:>8.2?} p95={:>8.2?}",
        percentile(&mut posts, 0.5),
        percentile(&mut posts, 0.95)
    );

    let mut ours: Vec<[i64; 5]> = Vec::new();
    let mut walls = Vec::new();
    let mut cli: Vec<[i64; 4]> = Vec::new();
    for round in 0..ROUNDS {
        let (phases, wall) = one_round(&client, &base, &repo, false).await;
        ours.push(phases);
        walls.push(wall);
        cli.push(cli_round(
            &repo,
            &root.path().join("cli"),
            pool + 3,
            &format!("wharf-bench-cli:{round}"),
        ));
    }
    let column =
        |rows: &[[i64; 5]], i: usize| median(&mut rows.iter().map(|r| r[i]).collect::<Vec<_>>());
    let cli_column = |i: usize| median(&mut cli.iter().map(|r| r[i]).collect::<Vec<_>>());
    let names = ["clone", "patch", "build (warm cache)", "start", "ready"];
    println!("phase medians over {ROUNDS} rounds (ms):  wharf   CLI script");
    let cli_index = [Some(0), None, Some(1), Some(2), Some(3)];
    for (i, name) in names.iter().enumerate() {
        let theirs = cli_index[i].map(cli_column);
        println!(
            "  {name:<22} {:>8} {:>10}",
            column(&ours, i),
            theirs.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    let ours_total: i64 = (0..5).map(|i| column(&ours, i)).sum();
    let cli_total: i64 = (0..4).map(cli_column).sum();
    let wall = percentile(&mut walls, 0.5);
    println!(
        "  total of phases        {ours_total:>8} {cli_total:>10}   ratio wharf/CLI = {:.2}",
        ours_total as f64 / cli_total.max(1) as f64
    );
    println!(
        "  POST -> running wall p50 {:.0} ms   ratio to CLI total = {:.2}",
        wall.as_secs_f64() * 1000.0,
        wall.as_secs_f64() * 1000.0 / cli_total.max(1) as f64
    );
    for round in 0..ROUNDS {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &format!("wharf-bench-cli:{round}")])
            .output();
    }
    drop(server);
}
