//! `wharf pack build`: compile the component crates a source pack names into
//! wasm32-wasip2 components and write a built pack that pins their digests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::manifest::{ComponentSource, Form, MANIFEST_FILE, Manifest, describe_problems};

pub const WASM_TARGET: &str = "wasm32-wasip2";

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo target dir for the wasm builds; default: cargo's own choice.
    pub target_dir: Option<PathBuf>,
}

/// Builds `source` into `out` (replaced atomically). Returns the built manifest.
pub fn build_pack(source: &Path, out: &Path, options: &BuildOptions) -> anyhow::Result<Manifest> {
    let manifest = Manifest::load(source, Form::Source)
        .map_err(|problems| anyhow::anyhow!(describe_problems(&problems)))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".{}.partial-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("components"))?;
    let result = stage(source, &staging, &manifest, options);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let raw = result?;
    std::fs::write(staging.join(MANIFEST_FILE), toml::to_string_pretty(&raw)?)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&staging, out)
        .with_context(|| format!("moving the built pack to {}", out.display()))?;
    Manifest::load(out, Form::Built)
        .map_err(|problems| anyhow::anyhow!(describe_problems(&problems)))
}

fn stage(
    source: &Path,
    staging: &Path,
    manifest: &Manifest,
    options: &BuildOptions,
) -> anyhow::Result<super::manifest::RawManifest> {
    let mut raw = manifest.raw.clone();
    for (spec, raw_component) in manifest.components.iter().zip(raw.components.iter_mut()) {
        let ComponentSource::Crate { path, features } = &spec.source else {
            bail!("component {:?} is not in source form", spec.name);
        };
        let crate_dir = source.join(path);
        let wasm = compile_crate(&crate_dir, features, options).with_context(|| {
            format!(
                "building component {:?} from {}",
                spec.name,
                crate_dir.display()
            )
        })?;
        let rel = format!("components/{}.wasm", spec.name);
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        std::fs::write(staging.join(&rel), &bytes)?;
        raw_component.crate_path = None;
        raw_component.features.clear();
        raw_component.wasm = Some(rel);
        raw_component.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
    }
    for folder in &manifest.data {
        let from = source.join(folder);
        if !from.is_dir() {
            bail!(
                "data folder {folder:?} does not exist in {}",
                source.display()
            );
        }
        copy_dir(&from, &staging.join(folder))?;
    }
    Ok(raw)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Runs cargo for one component crate and returns the `.wasm` it produced.
fn compile_crate(
    crate_dir: &Path,
    features: &[String],
    options: &BuildOptions,
) -> anyhow::Result<PathBuf> {
    let manifest_path = crate_dir.join("Cargo.toml");
    if !manifest_path.is_file() {
        bail!("no Cargo.toml in {}", crate_dir.display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Builds with different features get different target dirs: two builds
    // running side by side must never overwrite each other's output.
    if let Some(target_dir) = &options.target_dir {
        let dir = if features.is_empty() {
            target_dir.clone()
        } else {
            target_dir.join(format!("features-{}", features.join("+")))
        };
        command.arg("--target-dir").arg(dir);
    }
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    // Settings of an enclosing cargo (tests, clippy) must not leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .context("running cargo (is the Rust toolchain installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stdout.contains("can't find crate for `core`")
            || stdout.contains("target may not be installed")
        {
            bail!("the {WASM_TARGET} target is missing: run `rustup target add {WASM_TARGET}`");
        }
        bail!("cargo build failed ({})", output.status);
    }
    let crate_manifest = manifest_path.canonicalize()?;
    let mut wasm = None;
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let same_crate = message["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p) == crate_manifest);
        if !same_crate {
            continue;
        }
        for file in message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
        {
            if file.ends_with(".wasm") {
                wasm = Some(PathBuf::from(file));
            }
        }
    }
    wasm.ok_or_else(|| {
        anyhow::anyhow!(
            "cargo produced no .wasm for {}; is it a `cdylib` crate?",
            crate_dir.display()
        )
    })
}
