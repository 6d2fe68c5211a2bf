//! `pack.toml`: parsing and validation of both the source and the built form.
//!
//! Validation collects every problem (file + field + message) instead of
//! stopping at the first, so `wharf pack validate` can report them all.

use std::fmt;
use std::path::{Component as PathComponent, Path, PathBuf};

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

pub use crate::runtime::bindings::PluginApi;

/// The current version of the `wharf:plugin` WIT package (what the SDK builds against).
/// Packs declare a requirement in `requires.wharf`; every version of [`PluginApi::ALL`] is
/// served, and the requirement picks one.
pub const PLUGIN_API_VERSION: Version = Version::new(0, 2, 0);

pub const MANIFEST_FILE: &str = "pack.toml";

/// The file-level shape of `pack.toml`, shared by both forms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub data: Vec<String>,
    pub requires: RawRequires,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub components: Vec<RawComponent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequires {
    pub wharf: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Adapters: operate on the sandbox the call targets.
    #[serde(default)]
    pub sandbox: bool,
    /// Outbound HTTP hosts the pack asks for (granted only if the operator allows them too).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Per-call deadline the pack asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Per-instance memory cap the pack asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    pub name: String,
    pub kind: String,
    /// Source form: crate directory relative to `pack.toml`.
    #[serde(default, rename = "crate", skip_serializing_if = "Option::is_none")]
    pub crate_path: Option<String>,
    /// Source form: cargo features to enable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Built form: wasm file relative to `pack.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    /// Built form: lowercase hex sha256 of the wasm file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    Adapter,
    Provider,
    /// A batch planner (`planner-plugin` world, 0.3.0 and later).
    Planner,
    /// A relay host adapter (`relay-host-adapter` world, 0.3.0 and later).
    #[serde(rename = "relay-host")]
    RelayHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    Crate {
        path: PathBuf,
        features: Vec<String>,
    },
    Wasm {
        path: PathBuf,
        sha256: String,
    },
}

#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: String,
    pub kind: ComponentKind,
    pub source: ComponentSource,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub id: String,
    pub version: Version,
    pub description: String,
    pub authors: Vec<String>,
    pub data: Vec<String>,
    pub requires: VersionReq,
    /// The contract version `requires` picked: the newest served one it accepts.
    pub plugin_api: PluginApi,
    pub permissions: Permissions,
    pub limits: Limits,
    pub components: Vec<ComponentSpec>,
    /// The manifest as written, for re-serialising the built form.
    pub raw: RawManifest,
}

/// One thing wrong with a pack, located by file and field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// `api.example.com`, `127.0.0.1:8080`, `[::1]:443`: what `permissions.allowed_hosts` and
/// the operator's grants name (compared with a URL's host and port).
pub fn valid_host_entry(entry: &str) -> bool {
    let Some((host, port)) = split_host_port(entry) else {
        return false;
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// `host[:port]` or `[v6][:port]` into its parts; none when the shape is wrong.
pub fn split_host_port(entry: &str) -> Option<(&str, Option<&str>)> {
    if entry.starts_with('[') {
        let end = entry.find(']')?;
        let tail = &entry[end + 1..];
        return match tail {
            "" => Some((&entry[..=end], None)),
            _ => Some((&entry[..=end], Some(tail.strip_prefix(':')?))),
        };
    }
    match entry.split_once(':') {
        Some((_, port)) if port.contains(':') => None,
        Some((host, port)) => Some((host, Some(port))),
        None => Some((entry, None)),
    }
}

/// Joins problems into one line, for quarantine reasons and errors.
pub fn describe_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which form a manifest must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Source,
    Built,
    /// `wharf pack validate` accepts either, but not a mix within one component.
    Either,
}

impl Manifest {
    /// Reads and validates `<dir>/pack.toml`.
    pub fn load(dir: &Path, form: Form) -> Result<Manifest, Vec<Problem>> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|err| {
            vec![Problem {
                file: path.display().to_string(),
                field: String::new(),
                message: format!("cannot read: {err}"),
            }]
        })?;
        Self::parse(&text, &path.display().to_string(), form)
    }

    /// Validates manifest text; `file` names it in problems.
    pub fn parse(text: &str, file: &str, form: Form) -> Result<Manifest, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                file: file.to_string(),
                field: field.to_string(),
                message,
            })
        };
        let raw: RawManifest = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                problem(
                    "",
                    format!(
                        "invalid TOML: {}",
                        err.to_string().trim().replace('\n', " ")
                    ),
                );
                return Err(problems);
            }
        };

        if !valid_id(&raw.id) {
            problem(
                "id",
                format!(
                    "{:?} must be 2-64 chars of a-z, 0-9 and '-', starting with a letter",
                    raw.id
                ),
            );
        }
        let version = Version::parse(&raw.version)
            .map_err(|err| problem("version", format!("{:?} is not semver: {err}", raw.version)))
            .ok();
        let requires = match VersionReq::parse(&raw.requires.wharf) {
            Ok(req) => match PluginApi::for_requirement(&req) {
                Some(api) => Some((req, api)),
                None => {
                    problem(
                        "requires.wharf",
                        format!(
                            "{:?} matches none of the plugin API versions this host serves ({})",
                            raw.requires.wharf,
                            PluginApi::served()
                        ),
                    );
                    None
                }
            },
            Err(err) => {
                problem(
                    "requires.wharf",
                    format!(
                        "{:?} is not a semver requirement: {err}",
                        raw.requires.wharf
                    ),
                );
                None
            }
        };
        for (i, folder) in raw.data.iter().enumerate() {
            if let Err(why) = check_relative(folder) {
                problem(&format!("data[{i}]"), why);
            }
        }
        if let Some(0) = raw.limits.timeout_ms {
            problem("limits.timeout_ms", "must be greater than 0".into());
        }
        if let Some(0) = raw.limits.memory_mib {
            problem("limits.memory_mib", "must be greater than 0".into());
        }
        if raw.components.is_empty() {
            problem("components", "a pack needs at least one component".into());
        }

        let mut components = Vec::new();
        for (i, host) in raw.permissions.allowed_hosts.iter().enumerate() {
            if !valid_host_entry(host) {
                problem(
                    &format!("permissions.allowed_hosts[{i}]"),
                    format!(
                        "{host:?} must be a lowercase host name or IP address with an \
                         optional :port (no scheme, path or wildcard)"
                    ),
                );
            }
        }
        for (i, c) in raw.components.iter().enumerate() {
            let at = |field: &str| format!("components[{i}].{field}");
            if !valid_id(&c.name) {
                problem(
                    &at("name"),
                    format!("{:?} must be 2-64 chars of a-z, 0-9 and '-'", c.name),
                );
            } else if raw.components[..i].iter().any(|other| other.name == c.name) {
                problem(
                    &at("name"),
                    format!("{:?} is used by another component", c.name),
                );
            }
            let kind = match c.kind.as_str() {
                "adapter" => Some(ComponentKind::Adapter),
                "provider" => Some(ComponentKind::Provider),
                "planner" => Some(ComponentKind::Planner),
                "relay-host" => Some(ComponentKind::RelayHost),
                other => {
                    problem(
                        &at("kind"),
                        format!("{other:?} is not one of adapter, provider, planner, relay-host"),
                    );
                    None
                }
            };
            if kind == Some(ComponentKind::Adapter) && !raw.permissions.sandbox {
                problem(
                    "permissions.sandbox",
                    format!("adapter component {:?} needs `sandbox = true`", c.name),
                );
            }
            let source = match (&c.crate_path, &c.wasm) {
                (Some(_), Some(_)) => {
                    problem(
                        &at("crate"),
                        "give either `crate` (source pack) or `wasm` (built pack), not both".into(),
                    );
                    None
                }
                (None, None) => {
                    let field = if form == Form::Source {
                        "crate"
                    } else {
                        "wasm"
                    };
                    problem(&at(field), "missing".into());
                    None
                }
                (Some(_), None) if form == Form::Built => {
                    problem(
                        &at("wasm"),
                        "missing: this is a source pack; build it with `wharf pack build`".into(),
                    );
                    None
                }
                (None, Some(_)) if form == Form::Source => {
                    problem(
                        &at("crate"),
                        "missing: a source pack names the crate of each component".into(),
                    );
                    None
                }
                (Some(path), None) => Some(ComponentSource::Crate {
                    path: PathBuf::from(path),
                    features: c.features.clone(),
                }),
                (None, Some(wasm)) => {
                    if let Err(why) = check_relative(wasm) {
                        problem(&at("wasm"), why);
                    }
                    match &c.sha256 {
                        Some(sha)
                            if sha.len() == 64
                                && sha.chars().all(|ch| matches!(ch, '0'..='9' | 'a'..='f')) =>
                        {
                            Some(ComponentSource::Wasm {
                                path: PathBuf::from(wasm),
                                sha256: sha.clone(),
                            })
                        }
                        Some(sha) => {
                            problem(
                                &at("sha256"),
                                format!("{sha:?} is not 64 lowercase hex digits"),
                            );
                            None
                        }
                        None => {
                            problem(
                                &at("sha256"),
                                "missing: a built pack pins each wasm file".into(),
                            );
                            None
                        }
                    }
                }
            };
            if let (Some(kind), Some(source)) = (kind, source) {
                components.push(ComponentSpec {
                    name: c.name.clone(),
                    kind,
                    source,
                });
            }
        }

        match (version, requires) {
            (Some(version), Some((requires, plugin_api))) if problems.is_empty() => Ok(Manifest {
                id: raw.id.clone(),
                version,
                description: raw.description.clone(),
                authors: raw.authors.clone(),
                data: raw.data.clone(),
                requires,
                plugin_api,
                permissions: raw.permissions.clone(),
                limits: raw.limits,
                components,
                raw,
            }),
            _ => Err(problems),
        }
    }
}

/// A pack id or component name: 2-64 chars of a-z, 0-9 and '-', starting with a letter.
pub(crate) fn valid_id(id: &str) -> bool {
    (2..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A path inside the pack: relative, no `..`, no NUL.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.contains('\0') {
        return Err(format!("{path:?} is not a valid path"));
    }
    let p = Path::new(path);
    if p.components()
        .any(|c| !matches!(c, PathComponent::Normal(_) | PathComponent::CurDir))
    {
        return Err(format!(
            "{path:?} must be relative to the pack and must not contain `..`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILT: &str = r#"
id = "core-adapters"
version = "0.1.0"
requires = { wharf = "^0.1" }
permissions = { sandbox = true }
[[components]]
name = "shell"
kind = "adapter"
wasm = "components/shell.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn parses_built_manifest() {
        let m = Manifest::parse(BUILT, "pack.toml", Form::Built).unwrap();
        assert_eq!(m.id, "core-adapters");
        assert_eq!(m.components[0].kind, ComponentKind::Adapter);
    }

    #[test]
    fn reports_every_problem_with_field() {
        let text = r#"
id = "Bad Id"
version = "one"
requires = { wharf = "^9" }
data = ["../etc"]
[[components]]
name = "x"
kind = "gadget"
"#;
        let problems = Manifest::parse(text, "p/pack.toml", Form::Built).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        for expected in [
            "id",
            "version",
            "requires.wharf",
            "data[0]",
            "components[0].name",
            "components[0].kind",
            "components[0].wasm",
        ] {
            assert!(
                fields.contains(&expected),
                "missing {expected} in {problems:?}"
            );
        }
        assert!(problems.iter().all(|p| p.file == "p/pack.toml"));
        let requires = problems
            .iter()
            .find(|p| p.field == "requires.wharf")
            .unwrap();
        assert!(
            requires.message.contains("0.1.0, 0.2.0"),
            "{}",
            requires.message
        );
    }

    #[test]
    fn requirement_picks_the_contract_version() {
        for (requirement, api) in [
            ("^0.1", PluginApi::V0_1),
            ("0.1.0", PluginApi::V0_1),
            ("^0.2", PluginApi::V0_2),
            ("^0.3", PluginApi::V0_3),
            (">=0.1", PluginApi::V0_3),
        ] {
            let text = BUILT.replace("^0.1", requirement);
            let m = Manifest::parse(&text, "pack.toml", Form::Built).unwrap();
            assert_eq!(m.plugin_api, api, "{requirement}");
        }
        let problems =
            Manifest::parse(&BUILT.replace("^0.1", "^0.4"), "pack.toml", Form::Built).unwrap_err();
        assert_eq!(problems[0].field, "requires.wharf");
    }

    #[test]
    fn allowed_hosts_name_hosts_and_ports_only() {
        for good in [
            "api.deepseek.com",
            "127.0.0.1:8080",
            "[::1]:443",
            "[::1]",
            "relay-1.lan",
        ] {
            assert!(valid_host_entry(good), "{good}");
        }
        for bad in [
            "https://api.deepseek.com",
            "api.deepseek.com/v1",
            "*.deepseek.com",
            "API.deepseek.com",
            "host:0",
            "host:99999",
            "host:",
            "",
            "a..b",
            "[::1",
            "user@host",
        ] {
            assert!(!valid_host_entry(bad), "{bad}");
        }
        let text = BUILT.replace(
            "permissions = { sandbox = true }",
            "permissions = { sandbox = true, allowed_hosts = [\"ok.example\", \"https://no.example\"] }",
        );
        let problems = Manifest::parse(&text, "pack.toml", Form::Built).unwrap_err();
        assert_eq!(
            problems[0].field, "permissions.allowed_hosts[1]",
            "{problems:?}"
        );
    }

    #[test]
    fn source_form_rejected_where_built_expected() {
        let text = BUILT
            .replace("wasm = \"components/shell.wasm\"", "crate = \"../x\"")
            .replace(
                "sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
                "",
            );
        let problems = Manifest::parse(&text, "pack.toml", Form::Built).unwrap_err();
        assert!(
            problems[0].message.contains("wharf pack build"),
            "{problems:?}"
        );
        assert!(Manifest::parse(&text, "pack.toml", Form::Source).is_ok());
    }

    #[test]
    fn wasm_path_must_stay_inside_pack() {
        let text = BUILT.replace("components/shell.wasm", "../../evil.wasm");
        let problems = Manifest::parse(&text, "pack.toml", Form::Built).unwrap_err();
        assert_eq!(problems[0].field, "components[0].wasm");
    }

    #[test]
    fn invalid_toml_is_one_problem() {
        let problems = Manifest::parse("id = ", "pack.toml", Form::Either).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.starts_with("invalid TOML"));
    }
}
