//! The plugin author kit, end to end: the SDK as `cargo package` ships it (WIT inside);
//! `wharf pack new` scaffolds on it that build, pass their own tests and serve; and the
//! hello-adapter tutorial, run as its README is written.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use wharf_e2e::{ADMIN_KEY, Client, WharfProcess, install_pack_active, repo_root, wharf_bin};

/// Runs `command`, panicking with its output when it fails; returns stdout and stderr.
fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// The shell commands of the fenced blocks marked ```` ```sh tutorial ````, in order.
fn tutorial_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match &mut current {
            None if line.trim() == "```sh tutorial" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unterminated tutorial block");
    blocks
}

/// `PATH` with the directory of this build's `wharf` first, as after `cargo install`.
fn path_with_wharf() -> String {
    let bin_dir = wharf_bin().parent().unwrap().to_path_buf();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[tokio::test]
async fn the_hello_adapter_tutorial_runs_as_written() {
    let example = repo_root().join("examples/hello-adapter");
    let readme = std::fs::read_to_string(example.join("README.md")).unwrap();
    let blocks = tutorial_blocks(&readme);
    assert!(blocks.len() >= 4, "tutorial blocks: {blocks:#?}");
    let root = tempfile::tempdir().unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let script = format!("set -euo pipefail\n{}", blocks.concat());
    let output = tokio::task::spawn_blocking({
        let packs_dir = server.packs_dir.clone();
        let base_url = server.base_url.clone();
        move || {
            run(
                Command::new("bash")
                    .arg("-c")
                    .arg(&script)
                    .current_dir(&example)
                    .env("WHARF", base_url)
                    .env("KEY", ADMIN_KEY)
                    .env("WHARF_PACKS_DIR", packs_dir)
                    .env("PATH", path_with_wharf()),
                "the tutorial",
            )
        }
    })
    .await
    .unwrap();
    // What the README says each call answers.
    for expected in [
        r#""output":{"bytes":18,"path":"todo.txt"}"#,
        r#""output":{"size":18,"text":"buy milk","truncated":true}"#,
        r#""output":{"words":4}"#,
        "test result: ok. 3 passed",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected} in:\n{output}"
        );
        if !expected.starts_with("test") {
            assert!(
                readme.contains(expected),
                "the README no longer shows {expected}"
            );
        }
    }
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let (_, detail) = admin.get("/v1/packs/hello-adapter").await;
    assert_eq!(detail["plugin_api"], "0.2.0", "{detail}");
    let operations = &detail["components"][0]["adapter"]["operations"];
    assert_eq!(operations[1]["name"], "read");
    assert_eq!(operations[1]["hints"]["read_only"], true);
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The SDK as `cargo package` ships it, unpacked into `dir`: what a crate outside this
/// repository gets from the registry (the WIT must be inside it).
fn packaged_sdk(dir: &Path) -> std::path::PathBuf {
    let target = repo_root().join("target/sdk-package");
    run(
        cargo()
            .args([
                "package",
                "-p",
                "wharf-plugin-sdk",
                "--allow-dirty",
                "--no-verify",
            ])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target),
        "cargo package -p wharf-plugin-sdk",
    );
    let crate_file = std::fs::read_dir(target.join("package"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("wharf-plugin-sdk-"))
                && path.extension().is_some_and(|ext| ext == "crate")
        })
        .expect("the packaged SDK");
    run(
        Command::new("tar")
            .arg("xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(dir),
        "unpacking the SDK",
    );
    let unpacked = dir.join(crate_file.file_stem().unwrap());
    assert!(unpacked.join("wit/v0.2.0/plugin.wit").is_file());
    assert!(unpacked.join("wit/v0.1.0/plugin.wit").is_file());
    unpacked
}

fn scaffold(parent: &Path, name: &str, kind: &str, sdk: &Path) -> std::path::PathBuf {
    run(
        Command::new(wharf_bin())
            .args(["pack", "new", name, "--kind", kind, "--dir"])
            .arg(parent)
            .arg("--sdk-path")
            .arg(sdk),
        "wharf pack new",
    );
    parent.join(name)
}

#[tokio::test]
async fn pack_new_scaffolds_packs_that_build_pass_their_tests_and_serve() {
    let root = tempfile::tempdir().unwrap();
    let sources = root.path().join("src");
    std::fs::create_dir_all(&sources).unwrap();
    let server = WharfProcess::start(root.path(), &[]);
    let admin = Client::new(&server, Some(ADMIN_KEY));
    let sdk = packaged_sdk(root.path());
    for (name, kind) in [("demo-tool", "adapter"), ("demo-llm", "provider")] {
        let pack = scaffold(&sources, name, kind, &sdk);
        // A second scaffold of the same name refuses to overwrite.
        let again = Command::new(wharf_bin())
            .args(["pack", "new", name, "--dir"])
            .arg(&sources)
            .output()
            .unwrap();
        assert!(!again.status.success());
        let tests = run(
            cargo()
                .arg("test")
                .arg("--manifest-path")
                .arg(pack.join(name).join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", repo_root().join("target/scaffold")),
            "cargo test of the scaffold",
        );
        assert!(tests.contains("test result: ok."), "{tests}");
        let built = root.path().join("built").join(name);
        run(
            Command::new(wharf_bin())
                .args(["pack", "build"])
                .arg(&pack)
                .arg("--out")
                .arg(&built)
                .arg("--target-dir")
                .arg(repo_root().join("target/scaffold-wasm")),
            "wharf pack build of the scaffold",
        );
        install_pack_active(&admin, &built, &server.packs_dir, name).await;
    }
    let (status, sandbox) = admin
        .post("/v1/sandboxes", json!({"profile": "local"}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    let (status, answer) = admin
        .post(
            &format!(
                "/v1/sandboxes/{}/capabilities/demo-tool/greet",
                sandbox["id"].as_str().unwrap()
            ),
            json!({"name": "Ada"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["output"], json!({"greeting": "Hello, Ada!"}));
    let (_, providers) = admin.get("/v1/providers").await;
    assert!(
        providers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "demo-llm"),
        "{providers}"
    );
}
