//! Helpers shared by the assembly tests: real compiled fixture packs and an
//! in-process server on a temporary data dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wharf::config::Config;
use wharf::packs::build::{BuildOptions, build_pack};
use wharf::packs::{PackRow, PackState};
use wharf::sandbox::service::SandboxBinding;
use wharf::server::Server;
pub use wharf_e2e::copy_dir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds a source pack of the repo into `out` with `wharf pack build`'s code,
/// sharing one wasm target dir so only the first test pays for compilation.
pub fn build_fixture(source: &str, out: &Path) {
    let options = BuildOptions {
        target_dir: Some(repo_root().join("target/wasm")),
    };
    build_pack(&repo_root().join(source), out, &options)
        .unwrap_or_else(|err| panic!("building {source}: {err:#}"));
}

/// Sets `version` in a built pack's manifest and merges the tables of `extra`
/// (TOML) into it, e.g. `[limits]\ntimeout_ms = 300`.
pub fn patch_manifest(pack_dir: &Path, version: &str, extra: &str) {
    let path = pack_dir.join("pack.toml");
    let mut manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    manifest.insert("version".into(), toml::Value::String(version.into()));
    let extra: toml::Table = extra.parse().unwrap();
    for (key, value) in extra {
        match (manifest.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(added)) => {
                existing.extend(added)
            }
            (_, value) => {
                manifest.insert(key, value);
            }
        }
    }
    std::fs::write(path, toml::to_string(&manifest).unwrap()).unwrap();
}

pub struct Harness {
    pub server: Server,
    pub data: tempfile::TempDir,
    pub packs_dir: PathBuf,
    /// A built copy of `tests/fixtures/packs/test-pack`, outside the packs dir.
    pub test_pack: PathBuf,
}

impl Harness {
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let test_pack = data.path().join("built/test-pack");
        build_fixture("tests/fixtures/packs/test-pack", &test_pack);
        let packs_dir = data.path().join("packs");
        let mut config = Config {
            data_dir: data.path().join("data"),
            packs_dir: Some(packs_dir.clone()),
            admin_key: Some("wharf_testadminkey0123456789".into()),
            ..Config::default()
        };
        config.packs.debounce_ms = 50;
        adjust(&mut config);
        let (server, _) = Server::start(config).await.unwrap();
        Harness {
            server,
            data,
            packs_dir,
            test_pack,
        }
    }

    pub fn packs(&self) -> &Arc<wharf::packs::Packs> {
        &self.server.state.packs
    }

    /// Copies the built test pack into the packs dir as `name` (via a staging
    /// rename, as operators should), with `version` and extra manifest TOML.
    pub fn drop_test_pack(&self, name: &str, version: &str, extra: &str) -> PathBuf {
        let staging = self.packs_dir.join(format!(".{name}.staging"));
        copy_dir(&self.test_pack, &staging);
        patch_manifest(&staging, version, extra);
        let target = self.packs_dir.join(name);
        std::fs::rename(&staging, &target).unwrap();
        target
    }

    /// Waits (bounded) until the pack rows satisfy `check`; returns them. Wakes
    /// on every scan, and polls too since in-flight counts change between scans.
    pub async fn wait_rows(&self, what: &str, check: impl Fn(&[PackRow]) -> bool) -> Vec<PackRow> {
        let mut scans = self.packs().scans();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.packs().snapshot().rows();
            if check(&rows) {
                return rows;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}; rows: {rows:#?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), scans.changed()).await;
        }
    }

    /// Builds `packs/core-adapters` and drops it the way operators do (a staged copy, then
    /// a rename); waits until `version` is active.
    pub async fn install_core_adapters(&self, version: &str) {
        self.install_source_pack("packs/core-adapters", "core-adapters", version, "")
            .await;
    }

    /// Builds the source pack at `source` (relative to the repo), merges `extra` manifest
    /// TOML into it, drops it into the packs dir as `name` (a staged copy, then a rename) and
    /// waits until its `version` is active.
    pub async fn install_source_pack(&self, source: &str, name: &str, version: &str, extra: &str) {
        let built = self.data.path().join("built").join(name);
        build_fixture(source, &built);
        if !extra.is_empty() {
            patch_manifest(&built, version, extra);
        }
        let staging = self.packs_dir.join(format!(".{name}.staging"));
        copy_dir(&built, &staging);
        std::fs::rename(&staging, self.packs_dir.join(name)).unwrap();
        self.wait_active(name, version).await;
    }

    pub async fn wait_active(&self, id: &str, version: &str) -> Vec<PackRow> {
        self.wait_rows(&format!("{id} {version} active"), |rows| {
            rows.iter().any(|r| {
                r.id.as_deref() == Some(id)
                    && r.version.as_deref() == Some(version)
                    && r.state == PackState::Active
            })
        })
        .await
    }

    pub async fn sandbox(&self) -> SandboxBinding {
        let sandboxes = &self.server.state.sandboxes;
        let (sandbox, _) = sandboxes
            .create("tester", "local", None, None)
            .await
            .unwrap();
        sandboxes
            .bind(
                "tester",
                &sandbox.id,
                "test",
                &wharf::capabilities::secrets::RequestSecrets::default(),
            )
            .await
            .unwrap()
    }

    pub async fn invoke(
        &self,
        binding: &SandboxBinding,
        op: &str,
        input: serde_json::Value,
    ) -> wharf::error::WharfResult<wharf::capabilities::InvokeOutcome> {
        wharf::capabilities::invoke(self.packs(), binding.clone(), "test", op, input).await
    }
}
