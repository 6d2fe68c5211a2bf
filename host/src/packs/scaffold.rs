//! `wharf pack new`: a source pack to start from, with one component crate on the SDK
//! that `wharf pack build` builds and whose `cargo test` passes as generated.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::manifest::{ComponentKind, PLUGIN_API_VERSION, valid_id};

/// Where the generated crate takes `wharf-plugin-sdk` from.
#[derive(Debug, Clone)]
pub enum SdkSource {
    /// The published crate, `version = "<major.minor>"` (what plugin authors use).
    Registry,
    /// A local checkout of `plugin-sdk/` (this repository's tests, SDK development).
    Path(PathBuf),
}

/// What `wharf pack new` writes.
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// Pack id, component name and crate name.
    pub name: String,
    pub kind: ComponentKind,
    pub sdk: SdkSource,
}

/// Writes the pack into `<parent>/<name>` (which must not exist yet) and returns its path.
pub fn new_pack(parent: &Path, scaffold: &Scaffold) -> anyhow::Result<PathBuf> {
    let name = &scaffold.name;
    if !valid_id(name) {
        bail!(
            "{name:?} is not a valid pack name: 2-64 chars of a-z, 0-9 and '-', starting with a letter"
        );
    }
    let root = parent.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let sdk = match &scaffold.sdk {
        SdkSource::Registry => String::new(),
        SdkSource::Path(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("--sdk-path {}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!("--sdk-path {} holds no Cargo.toml", path.display());
            }
            format!(", path = {}", toml_string(&path.to_string_lossy()))
        }
    };
    let (kind, feature, lib) = match scaffold.kind {
        ComponentKind::Adapter => ("adapter", "adapter", ADAPTER_LIB),
        ComponentKind::Provider => ("provider", "provider", PROVIDER_LIB),
        ComponentKind::Planner | ComponentKind::RelayHost => {
            bail!(
                "`wharf pack new` scaffolds adapters and providers; see plugins/llm-planner and plugins/sub2api-host for the 0.3 worlds"
            )
        }
    };
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{kind}", kind)
            .replace("{feature}", feature)
            .replace("{sdk_path}", &sdk)
            .replace(
                "{api}",
                &format!("{}.{}", PLUGIN_API_VERSION.major, PLUGIN_API_VERSION.minor),
            )
            .replace("{type}", &type_name(name))
    };
    let crate_dir = root.join(name);
    std::fs::create_dir_all(crate_dir.join("src"))
        .with_context(|| format!("creating {}", crate_dir.display()))?;
    let pack_toml = if scaffold.kind == ComponentKind::Adapter {
        PACK_TOML
    } else {
        &PACK_TOML.replace("sandbox = true", "sandbox = false")
    };
    std::fs::write(root.join("pack.toml"), fill(pack_toml))?;
    std::fs::write(root.join(".gitignore"), "target/\n")?;
    std::fs::write(crate_dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(crate_dir.join("src/lib.rs"), fill(lib))?;
    Ok(root)
}

/// `my-tool` -> `MyTool`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

const PACK_TOML: &str = r##"# Source pack made by `wharf pack new`. Build it with
#   wharf pack build . --out <dir>
# and move <dir> into the server's packs dir (see docs/pack-format.md).
id = "{name}"
version = "0.1.0"
description = "TODO: what this pack does"
authors = []

[requires]
wharf = "^{api}"                   # the wharf:plugin contract the SDK builds against

[permissions]
sandbox = true
allowed_hosts = []

[[components]]
name = "{name}"
kind = "{kind}"
crate = "{name}"
"##;

const CARGO_TOML: &str = r##"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wharf-plugin-sdk = { version = "{api}"{sdk_path}, features = ["{feature}"] }
serde = { version = "1", features = ["derive"] }
schemars = { version = "1", default-features = false, features = ["derive", "std"] }

# A workspace of its own, so it builds the same inside or outside another workspace.
[workspace]
"##;

const ADAPTER_LIB: &str = r##"//! Capability adapter `{name}`, made by `wharf pack new`.
//!
//! `cargo test` runs the operations natively against a fake sandbox;
//! `wharf pack build` compiles them to a WebAssembly component.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::{PluginError, sandbox};

/// Input of `greet`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetInput {
    /// Who to greet.
    pub name: String,
}

/// Output of `greet`.
#[derive(Serialize, JsonSchema)]
pub struct GreetOutput {
    /// What `echo` printed in the sandbox.
    pub greeting: String,
}

/// Operation `greet`: runs `echo` in the sandbox the call targets.
pub fn greet(input: GreetInput) -> Result<GreetOutput, PluginError> {
    if input.name.trim().is_empty() {
        return Err(PluginError::invalid_input("`name` must not be empty"));
    }
    let out = sandbox::Command::new("echo")
        .arg(format!("Hello, {}!", input.name))
        .timeout(Duration::from_secs(5))
        .output()?;
    if !out.success() {
        return Err(PluginError::new("command_failed", out.stderr_lossy()));
    }
    Ok(GreetOutput {
        greeting: out.stdout_lossy().trim_end().to_owned(),
    })
}

/// The `{name}` adapter.
pub struct {type};

impl Adapter for {type} {
    fn info() -> AdapterInfo {
        AdapterInfo::new("{name}", env!("CARGO_PKG_VERSION"), "TODO: what this adapter does")
    }

    fn operations(ops: &mut Operations) {
        ops.add("greet", "Greets `name` with `echo` in the sandbox", greet)
            .read_only();
    }
}

wharf_plugin_sdk::export_adapter!({type});

#[cfg(test)]
mod tests {
    use wharf_plugin_sdk::adapter::{describe, invoke};
    use wharf_plugin_sdk::sandbox::ExecOutput;
    use wharf_plugin_sdk::testing::FakeSandbox;

    use super::*;

    #[test]
    fn describes_greet() {
        let description = describe::<{type}>();
        assert_eq!(description.operations[0].name, "greet");
        assert!(description.operations[0].hints.read_only);
    }

    #[test]
    fn greets_through_the_sandbox() {
        let sandbox = FakeSandbox::new()
            .on_exec(["echo", "Hello, Ada!"], ExecOutput::ok("Hello, Ada!\n"))
            .install();
        let output = invoke::<{type}>("greet", r#"{"name": "Ada"}"#).unwrap();
        assert_eq!(output, r#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(sandbox.execs().len(), 1);
    }

    #[test]
    fn refuses_an_empty_name() {
        let err = invoke::<{type}>("greet", r#"{"name": " "}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
    }
}
"##;

const PROVIDER_LIB: &str = r##"//! Provider `{name}`, made by `wharf pack new`: describes one OpenAI-compatible LLM
//! provider and plans and judges its access probes (the host does the HTTP).

use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::provider::{
    CapabilityProfile, Model, ModelResolution, Observation, ProbeStep, ProbeTarget, Provider,
    ProviderInfo, Verdict,
};

const MODEL: &str = "example-1";

/// The `{name}` provider.
pub struct {type};

impl Provider for {type} {
    fn catalog() -> Result<Vec<ProviderInfo>, PluginError> {
        Ok(vec![ProviderInfo {
            id: "{name}".into(),
            display_name: "TODO: display name".into(),
            base_url: "https://api.example.com".into(),
            auth_scheme: "bearer".into(),
            smoke_test_model: MODEL.into(),
            models: vec![Model {
                id: MODEL.into(),
                aliases: vec!["example".into()],
                reasoning: false,
            }],
            capabilities: CapabilityProfile {
                chat_completions: true,
                responses: false,
                anthropic_messages: false,
                stream: true,
                tools: false,
                stream_only: false,
            },
        }])
    }

    fn resolve_model(_provider: &str, name: &str) -> Result<ModelResolution, PluginError> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "example" | MODEL => ModelResolution::Found(MODEL.into()),
            _ => ModelResolution::Unknown(vec![MODEL.into()]),
        })
    }

    fn probe_plan(_provider: &str, _target: ProbeTarget) -> Result<Vec<ProbeStep>, PluginError> {
        Ok(vec![ProbeStep {
            name: "list_models".into(),
            method: "GET".into(),
            path: "/v1/models".into(),
            headers: vec![],
            body: None,
            stream: false,
            timeout_ms: 10_000,
        }])
    }

    fn judge(_provider: &str, _step: ProbeStep, observation: Observation) -> Verdict {
        match observation.status {
            Some(200) => Verdict::pass("ready", "models listed"),
            Some(401 | 403) => Verdict::fail("upstream_auth", "the key was refused"),
            Some(429) => Verdict::fail("upstream_rate_limited", "HTTP 429").retriable(),
            Some(status) => Verdict::fail("invalid_response", format!("HTTP {status}")),
            None => Verdict::fail(
                "network_error",
                observation.transport_error.unwrap_or_default(),
            )
            .retriable(),
        }
    }
}

wharf_plugin_sdk::export_provider!({type});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_aliases() {
        assert_eq!(
            {type}::resolve_model("{name}", "Example").unwrap(),
            ModelResolution::Found(MODEL.into())
        );
    }

    #[test]
    fn judges_rate_limits_as_retriable() {
        let observation = Observation {
            status: Some(429),
            headers: vec![],
            body: String::new(),
            latency_ms: 3,
            transport_error: None,
        };
        let step = {type}::probe_plan("{name}", ProbeTarget {
            base_url: "https://api.example.com".into(),
            model: None,
            stream: None,
        })
        .unwrap()
        .remove(0);
        assert!({type}::judge("{name}", step, observation).retriable);
    }
}
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_source_pack_that_validates() {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("my-tool", ComponentKind::Adapter),
            ("my-llm", ComponentKind::Provider),
        ] {
            let scaffold = Scaffold {
                name: name.into(),
                kind,
                sdk: SdkSource::Registry,
            };
            let root = new_pack(dir.path(), &scaffold).unwrap();
            let manifest =
                super::super::manifest::Manifest::load(&root, super::super::manifest::Form::Source)
                    .unwrap();
            assert_eq!(manifest.components[0].kind, kind);
            assert_eq!(
                manifest.plugin_api,
                super::super::manifest::PluginApi::CURRENT
            );
            let cargo = std::fs::read_to_string(root.join(name).join("Cargo.toml")).unwrap();
            assert!(cargo.contains(r#"wharf-plugin-sdk = { version = "0.2", features"#));
            let lib = std::fs::read_to_string(root.join(name).join("src/lib.rs")).unwrap();
            assert!(lib.contains(if kind == ComponentKind::Adapter {
                "pub struct MyTool;"
            } else {
                "pub struct MyLlm;"
            }));
            assert!(
                new_pack(dir.path(), &scaffold).is_err(),
                "refuses to overwrite"
            );
        }
        let bad = Scaffold {
            name: "Bad_Name".into(),
            kind: ComponentKind::Adapter,
            sdk: SdkSource::Registry,
        };
        assert!(new_pack(dir.path(), &bad).is_err());
    }
}
