//! Helpers for system tests: build packs and run the real `wharf` binary on a
//! free loopback port, then talk to it over HTTP like any client.

pub mod mock_sub2api;
pub mod mock_upstream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "wharf_systemtestadminkey0123456789";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `wharf` binary of this build (`target/<profile>/wharf`), built if missing.
/// The version a source pack's manifest declares (`packs/openai-cn-pack`), so tests follow
/// its bumps instead of hard-coding them.
pub fn source_pack_version(source: &str) -> String {
    let path = repo_root().join(source).join("pack.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{} has no version line", path.display()))
        .to_string()
}

/// The first-party `openai-cn-pack`'s version as its source declares it.
pub fn openai_cn_version() -> String {
    source_pack_version("packs/openai-cn-pack")
}

pub fn wharf_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("wharf");
    if !bin.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "wharf", "--bin", "wharf"])
            .current_dir(repo_root())
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the wharf binary failed");
    }
    bin
}

/// `wharf pack build <source> --out <out>`, with the shared wasm target dir.
pub fn build_pack(source: &str, out: &Path) {
    let output = Command::new(wharf_bin())
        .args(["pack", "build"])
        .arg(repo_root().join(source))
        .arg("--out")
        .arg(out)
        .arg("--target-dir")
        .arg(repo_root().join("target/wasm"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running wharf pack build");
    assert!(
        output.status.success(),
        "wharf pack build {source} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running `wharf serve`; killed on drop. Its stdout and stderr go to files
/// in the data dir so tests can inspect the logs.
pub struct WharfProcess {
    child: Child,
    pub base_url: String,
    pub data_dir: PathBuf,
    pub packs_dir: PathBuf,
}

impl WharfProcess {
    pub fn start(root: &Path, extra_env: &[(&str, &str)]) -> WharfProcess {
        let port = free_port();
        let data_dir = root.join("data");
        let packs_dir = root.join("packs");
        std::fs::create_dir_all(&packs_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data_dir.join(name))
                .unwrap()
        };
        let mut command = Command::new(wharf_bin());
        command
            .arg("serve")
            .current_dir(root)
            .env("WHARF_LISTEN", format!("127.0.0.1:{port}"))
            .env("WHARF_DATA_DIR", &data_dir)
            .env("WHARF_PACKS_DIR", &packs_dir)
            .env("WHARF_ADMIN_KEY", ADMIN_KEY)
            .env("WHARF_LOG", "debug")
            .stdout(Stdio::from(log("stdout.log")))
            .stderr(Stdio::from(log("stderr.log")));
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("starting wharf");
        let process = WharfProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            packs_dir,
        };
        process.wait_healthy();
        process
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(stream) =
                std::net::TcpStream::connect(self.base_url.trim_start_matches("http://"))
            {
                drop(stream);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wharf did not start listening; stderr:\n{}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The Prometheus text of `GET /metrics`, read with the admin key (metrics span every
    /// owner, so they are not public by default).
    pub async fn metrics(&self) -> String {
        let response = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(
            response.status().as_u16(),
            200,
            "GET /metrics with the admin key"
        );
        response.text().await.expect("metrics body")
    }

    /// The OpenAPI document of `GET /openapi.json`.
    pub async fn openapi(&self) -> serde_json::Value {
        reqwest::get(self.url("/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Everything the server printed so far.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.data_dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }

    /// The server's process id (to read its `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// Kills the server hard, like `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WharfProcess {
    /// Stops the server. One still running at the end of its test also leaves no Docker
    /// sandbox or case container and no volume behind (by its instance label); one its test
    /// killed on purpose (to restart it on the same data) keeps them for its successor.
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        self.kill();
        if running {
            remove_engine_leftovers(&self.data_dir);
        }
    }
}

fn remove_engine_leftovers(data_dir: &Path) {
    let Ok(instance) = std::fs::read_to_string(data_dir.join("instance-id")) else {
        return;
    };
    let label = format!("label=wharf.instance={}", instance.trim());
    for (list, remove) in [
        (&["ps", "-aq", "--filter"][..], &["rm", "-f", "-v"][..]),
        (&["volume", "ls", "-q", "--filter"], &["volume", "rm", "-f"]),
    ] {
        let Ok(out) = Command::new("docker").args(list).arg(&label).output() else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(remove).args(&ids).output();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client with a bearer key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    key: Option<String>,
}

impl Client {
    pub fn new(server: &WharfProcess, key: Option<&str>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base_url: server.base_url.clone(),
            key: key.map(str::to_string),
        }
    }

    /// The same key against another server process (e.g. the same data dir restarted).
    pub fn rebase(&self, server: &WharfProcess) -> Client {
        Client {
            base_url: server.base_url.clone(),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Sends and returns (status, JSON body or Null).
    pub async fn send(&self, builder: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = builder.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Waits until an active pack serves the provider `id` (`GET /v1/providers`).
    pub async fn wait_for_provider(&self, id: &str) {
        self.wait_for("/v1/providers", &format!("provider {id}"), |ids| {
            ids.as_array().is_some_and(|a| a.iter().any(|p| p == id))
        })
        .await;
    }

    /// Posts `body` to `path` until `check` accepts the answer (bounded).
    pub async fn wait_for_post(
        &self,
        path: &str,
        body: serde_json::Value,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let (check, body) = (&check, &body);
        poll(what, || async move {
            let (status, answer) = self.post(path, body.clone()).await;
            if status == 200 && check(&answer) {
                Ok(answer)
            } else {
                Err(format!("last answer {status} {answer}"))
            }
        })
        .await
    }

    /// Polls `path` until `check` accepts the body (bounded).
    pub async fn wait_for(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let check = &check;
        poll(what, || async move {
            let (status, body) = self.get(path).await;
            if status == 200 && check(&body) {
                Ok(body)
            } else {
                Err(format!("last answer {status} {body}"))
            }
        })
        .await
    }
}

/// Runs `attempt` every 50 ms until it returns `Ok` (for at most 60 s). An
/// `Err` describes the state seen, for the panic message when time runs out.
pub async fn poll<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(state) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records that the running test skipped (part of) itself, and why: a line
/// on stderr, and a line in `$WHARF_TEST_SKIP_LOG` when set, which
/// `scripts/test` counts so a local run says what it did not test.
pub fn note_skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    eprintln!("skipping {test}: {why}");
    if let Some(path) = std::env::var_os("WHARF_TEST_SKIP_LOG") {
        use std::io::Write;
        // One short append per line: concurrent test processes do not interleave.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(format!("{test}\t{why}\n").as_bytes());
        }
    }
}

/// Moves a built pack into the packs dir the way operators should: copy to a
/// hidden staging name, then rename.
/// Builds nothing: copies a built pack into the packs dir (staging, then an
/// atomic rename) and waits until `GET /v1/packs` shows `id` active.
pub async fn install_pack_active(admin: &Client, built: &Path, packs_dir: &Path, id: &str) {
    install_pack(built, packs_dir, id);
    admin
        .wait_for("/v1/packs", &format!("{id} active"), |rows| {
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id && r["state"] == "active")
        })
        .await;
}

pub fn install_pack(built: &Path, packs_dir: &Path, name: &str) {
    let staging = packs_dir.join(format!(".{name}.staging"));
    copy_dir(built, &staging);
    std::fs::rename(&staging, packs_dir.join(name)).unwrap();
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
