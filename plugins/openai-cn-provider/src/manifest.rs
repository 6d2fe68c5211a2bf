//! Provider manifests: the `providers/<id>.json` data files of the pack.
//!
//! The files are read at run time (the host preopens the pack's data folders read-only under
//! `/pack`); nothing is compiled in. Every problem is reported as `invalid_pack_data` with the
//! file and the JSON path of the field, e.g.
//! `providers/kimi.json: field `models[2].reasoning`: must be a boolean, found a string`.
//!
//! A file looks like this (`notes`, `aliases`, `stream_only` and `max_tokens_param` are optional):
//!
//! ```json
//! {
//!   "id": "kimi",
//!   "display_name": "Moonshot Kimi",
//!   "base_url": "https://api.moonshot.cn/v1",
//!   "auth_scheme": "bearer",
//!   "smoke_test_model": "kimi-k2.6",
//!   "capabilities": { "chat_completions": true, "responses": false, "anthropic_messages": true,
//!                     "stream": true, "tools": true, "stream_only": false },
//!   "models": [ { "id": "kimi-k2.6", "aliases": ["moonshotai/Kimi-K2.6"], "reasoning": true } ],
//!   "notes": "free text"
//! }
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Failure, code};
use crate::resolve;

/// The folder (relative to the pack root) that holds the provider files.
pub const PROVIDERS_DIR: &str = "providers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub chat_completions: bool,
    pub responses: bool,
    pub anthropic_messages: bool,
    pub stream: bool,
    pub tools: bool,
    /// The upstream only answers streaming chat completions.
    pub stream_only: bool,
}

/// Which request field carries the completion budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensParam {
    /// `max_tokens`: what every Chinese provider and most relays accept.
    MaxTokens,
    /// `max_completion_tokens`: OpenAI reasoning models reject `max_tokens`.
    MaxCompletionTokens,
}

impl MaxTokensParam {
    pub fn field(self) -> &'static str {
        match self {
            MaxTokensParam::MaxTokens => "max_tokens",
            MaxTokensParam::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub id: String,
    pub aliases: Vec<String>,
    /// Reasoning models need a larger completion budget for a minimal completion.
    pub reasoning: bool,
    /// This model only answers streaming requests (e.g. QwQ on DashScope).
    pub stream_only: bool,
    pub max_tokens_param: MaxTokensParam,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderManifest {
    pub id: String,
    pub display_name: String,
    pub base_url: String,
    pub auth_scheme: String,
    pub smoke_test_model: String,
    pub models: Vec<ModelSpec>,
    pub capabilities: Capabilities,
}

impl ProviderManifest {
    /// The model with exactly this canonical id.
    pub fn model(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Parses one provider file. `file` is the name used in messages (`providers/kimi.json`),
    /// `stem` the file name without `.json`, which must equal the `id` field.
    pub fn parse(file: &str, stem: &str, text: &str) -> Result<Self, Failure> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Failure::new(
                code::INVALID_PACK_DATA,
                format!("{file}: not valid JSON: {e}"),
            )
        })?;
        let Value::Object(root) = &value else {
            return Err(Failure::new(
                code::INVALID_PACK_DATA,
                format!(
                    "{file}: the top level must be a JSON object, found {}",
                    kind(&value)
                ),
            ));
        };
        let f = Fields { file };
        f.known_keys(
            root,
            "",
            &[
                "id",
                "display_name",
                "base_url",
                "auth_scheme",
                "smoke_test_model",
                "capabilities",
                "models",
                "notes",
            ],
        )?;

        let id = f.string(root, "", "id")?;
        if !valid_provider_id(&id) {
            return Err(f.error("id", "must be 2..64 characters of [a-z0-9-]"));
        }
        if id != stem {
            return Err(f.error(
                "id",
                &format!("is `{id}` but the file is named `{stem}.json`; they must match"),
            ));
        }
        let display_name = f.string(root, "", "display_name")?;
        let base_url = f.string(root, "", "base_url")?;
        if let Err(why) = check_base_url(&base_url) {
            return Err(f.error("base_url", &why));
        }
        let auth_scheme = f.string(root, "", "auth_scheme")?;
        if !auth_scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(f.error(
                "auth_scheme",
                "must be lowercase [a-z0-9-], e.g. `bearer` or `x-api-key`",
            ));
        }
        if let Some(notes) = root.get("notes")
            && !notes.is_string()
        {
            return Err(f.error("notes", &format!("must be a string, found {}", kind(notes))));
        }

        let capabilities = f.capabilities(root)?;
        let models = f.models(root)?;
        let smoke_test_model = f.string(root, "", "smoke_test_model")?;
        if !models.iter().any(|m| m.id == smoke_test_model) {
            let hint = match resolve::resolve(&models, &smoke_test_model) {
                resolve::Resolution::Found(id) => format!(" (did you mean `{id}`?)"),
                resolve::Resolution::Unknown(near) if !near.is_empty() => {
                    format!(" (nearest: {})", near.join(", "))
                }
                resolve::Resolution::Unknown(_) => String::new(),
            };
            return Err(f.error(
                "smoke_test_model",
                &format!("`{smoke_test_model}` is not the id of one of `models`{hint}"),
            ));
        }

        Ok(ProviderManifest {
            id,
            display_name,
            base_url,
            auth_scheme,
            smoke_test_model,
            models,
            capabilities,
        })
    }
}

/// All provider manifests of the pack, sorted by file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub providers: Vec<ProviderManifest>,
}

impl Catalog {
    /// Reads every `*.json` file of `dir` (the pack's `providers/` folder). Other files and hidden
    /// files are ignored. One bad file fails the whole catalog, so a broken pack never loads.
    pub fn load_dir(dir: &Path) -> Result<Catalog, Failure> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Failure::new(
                code::PACK_DATA_UNAVAILABLE,
                format!("cannot read the provider folder {}: {e}", dir.display()),
            )
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Failure::new(
                    code::PACK_DATA_UNAVAILABLE,
                    format!("cannot list the provider folder {}: {e}", dir.display()),
                )
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let shown = format!("{PROVIDERS_DIR}/{name}");
            let text = std::fs::read_to_string(entry.path()).map_err(|e| {
                Failure::new(
                    code::INVALID_PACK_DATA,
                    format!("{shown}: cannot read: {e}"),
                )
            })?;
            files.push((name, text));
        }
        Catalog::from_files(files)
    }

    /// Builds the catalog from `(file name, contents)` pairs, e.g. `("kimi.json", "{...}")`.
    pub fn from_files(mut files: Vec<(String, String)>) -> Result<Catalog, Failure> {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        if files.is_empty() {
            return Err(Failure::new(
                code::INVALID_PACK_DATA,
                format!("{PROVIDERS_DIR}/: no provider files (*.json)"),
            ));
        }
        let mut providers = Vec::with_capacity(files.len());
        for (name, text) in &files {
            let stem = name.strip_suffix(".json").unwrap_or(name);
            let shown = format!("{PROVIDERS_DIR}/{name}");
            providers.push(ProviderManifest::parse(&shown, stem, text)?);
        }
        Ok(Catalog { providers })
    }

    pub fn provider(&self, id: &str) -> Result<&ProviderManifest, Failure> {
        self.providers.iter().find(|p| p.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.providers.iter().map(|p| p.id.as_str()).collect();
            Failure::new(
                code::UNKNOWN_PROVIDER,
                format!(
                    "no provider `{id}` in this pack (known: {})",
                    known.join(", ")
                ),
            )
        })
    }
}

/// Provider ids follow the pack id rule: `[a-z0-9-]`, 2..64 characters.
pub fn valid_provider_id(id: &str) -> bool {
    (2..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An absolute http(s) URL with a host, no query, no fragment, no whitespace.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if url.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    if url.contains('?') || url.contains('#') {
        return Err("must not carry a query or a fragment".into());
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host".into());
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field accessors that know the file they read, so every error names file and field.
struct Fields<'a> {
    file: &'a str,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Fields<'_> {
    fn error(&self, field: &str, what: &str) -> Failure {
        Failure::new(
            code::INVALID_PACK_DATA,
            format!("{}: field `{field}`: {what}", self.file),
        )
    }

    fn known_keys(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        allowed: &[&str],
    ) -> Result<(), Failure> {
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.error(
                &join(prefix, k),
                &format!("unknown field (allowed: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, map: &Map<String, Value>, prefix: &str, key: &str) -> Result<String, Failure> {
        let path = join(prefix, key);
        match map.get(key) {
            None => Err(self.error(&path, "is required")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.error(&path, "must not be empty"))
            }
            Some(Value::String(s)) if s.trim() != s => {
                Err(self.error(&path, "must not have leading or trailing whitespace"))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(self.error(&path, &format!("must be a string, found {}", kind(other))))
            }
        }
    }

    fn boolean(
        &self,
        map: &Map<String, Value>,
        prefix: &str,
        key: &str,
        default: Option<bool>,
    ) -> Result<bool, Failure> {
        let path = join(prefix, key);
        match (map.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.error(&path, "is required")),
            (Some(Value::Bool(b)), _) => Ok(*b),
            (Some(other), _) => {
                Err(self.error(&path, &format!("must be a boolean, found {}", kind(other))))
            }
        }
    }

    fn capabilities(&self, root: &Map<String, Value>) -> Result<Capabilities, Failure> {
        let caps = match root.get("capabilities") {
            None => return Err(self.error("capabilities", "is required")),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(self.error(
                    "capabilities",
                    &format!("must be an object, found {}", kind(other)),
                ));
            }
        };
        let p = "capabilities";
        self.known_keys(
            caps,
            p,
            &[
                "chat_completions",
                "responses",
                "anthropic_messages",
                "stream",
                "tools",
                "stream_only",
            ],
        )?;
        let c = Capabilities {
            chat_completions: self.boolean(caps, p, "chat_completions", None)?,
            responses: self.boolean(caps, p, "responses", None)?,
            anthropic_messages: self.boolean(caps, p, "anthropic_messages", None)?,
            stream: self.boolean(caps, p, "stream", None)?,
            tools: self.boolean(caps, p, "tools", None)?,
            stream_only: self.boolean(caps, p, "stream_only", Some(false))?,
        };
        if c.stream_only && !c.stream {
            return Err(self.error(
                "capabilities.stream_only",
                "is true but `capabilities.stream` is false",
            ));
        }
        Ok(c)
    }

    fn models(&self, root: &Map<String, Value>) -> Result<Vec<ModelSpec>, Failure> {
        let list = match root.get("models") {
            None => return Err(self.error("models", "is required")),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(self.error("models", "must list at least one model"));
            }
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(self.error(
                    "models",
                    &format!("must be an array, found {}", kind(other)),
                ));
            }
        };
        let mut models: Vec<ModelSpec> = Vec::with_capacity(list.len());
        // Normalised name -> (index of the model that owns it, field that declared it).
        let mut owners: Vec<(String, usize, String)> = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let p = format!("models[{i}]");
            let Value::Object(m) = item else {
                return Err(self.error(&p, &format!("must be an object, found {}", kind(item))));
            };
            self.known_keys(
                m,
                &p,
                &[
                    "id",
                    "aliases",
                    "reasoning",
                    "stream_only",
                    "max_tokens_param",
                ],
            )?;
            let id = self.string(m, &p, "id")?;
            if id.chars().any(char::is_whitespace) {
                return Err(self.error(&join(&p, "id"), "must not contain whitespace"));
            }
            let aliases = match m.get("aliases") {
                None => Vec::new(),
                Some(Value::Array(a)) => {
                    let mut out = Vec::with_capacity(a.len());
                    for (j, alias) in a.iter().enumerate() {
                        let ap = format!("{p}.aliases[{j}]");
                        match alias {
                            Value::String(s) if s.trim().is_empty() => {
                                return Err(self.error(&ap, "must not be empty"));
                            }
                            Value::String(s) => out.push(s.clone()),
                            other => {
                                return Err(self.error(
                                    &ap,
                                    &format!("must be a string, found {}", kind(other)),
                                ));
                            }
                        }
                    }
                    out
                }
                Some(other) => {
                    return Err(self.error(
                        &join(&p, "aliases"),
                        &format!("must be an array, found {}", kind(other)),
                    ));
                }
            };
            let reasoning = self.boolean(m, &p, "reasoning", None)?;
            let stream_only = self.boolean(m, &p, "stream_only", Some(false))?;
            let max_tokens_param = match m.get("max_tokens_param") {
                None => MaxTokensParam::MaxTokens,
                Some(Value::String(s)) if s == "max_tokens" => MaxTokensParam::MaxTokens,
                Some(Value::String(s)) if s == "max_completion_tokens" => {
                    MaxTokensParam::MaxCompletionTokens
                }
                Some(_) => {
                    return Err(self.error(
                        &join(&p, "max_tokens_param"),
                        "must be `max_tokens` or `max_completion_tokens`",
                    ));
                }
            };

            // No two models may share a name once normalised: resolution would be ambiguous.
            let names = std::iter::once((join(&p, "id"), &id)).chain(
                aliases
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("{p}.aliases[{j}]"), a)),
            );
            for (field, name) in names {
                let key = resolve::normalize(name);
                if key.is_empty() {
                    return Err(self.error(&field, "must contain at least one letter or digit"));
                }
                if let Some((_, owner, owner_field)) =
                    owners.iter().find(|(k, o, _)| *k == key && *o != i)
                {
                    return Err(self.error(
                        &field,
                        &format!(
                            "`{name}` collides with `{owner_field}` (model `{}`) once case and separators are ignored",
                            models[*owner].id
                        ),
                    ));
                }
                owners.push((key, i, field));
            }
            models.push(ModelSpec {
                id,
                aliases,
                reasoning,
                stream_only,
                max_tokens_param,
            });
        }
        Ok(models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_providers_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/openai-cn-pack/providers")
    }

    const MINIMAL: &str = r#"{
        "id": "demo",
        "display_name": "Demo",
        "base_url": "https://api.example.com/v1",
        "auth_scheme": "bearer",
        "smoke_test_model": "demo-1",
        "capabilities": {"chat_completions": true, "responses": false, "anthropic_messages": false,
                         "stream": true, "tools": false},
        "models": [{"id": "demo-1", "reasoning": false}]
    }"#;

    /// MINIMAL with one JSON edit applied to the parsed value.
    fn edited(edit: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_json::from_str(MINIMAL).unwrap();
        edit(&mut v);
        v.to_string()
    }

    fn parse_err(text: &str) -> String {
        let err = ProviderManifest::parse("providers/demo.json", "demo", text).unwrap_err();
        assert_eq!(err.code, code::INVALID_PACK_DATA, "{err}");
        assert!(
            err.message.starts_with("providers/demo.json: "),
            "{}",
            err.message
        );
        err.message
    }

    #[test]
    fn the_shipped_pack_data_loads() {
        let catalog = Catalog::load_dir(&pack_providers_dir()).expect("pack data must be valid");
        let ids: Vec<&str> = catalog.providers.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "deepseek",
                "glm",
                "kimi-a7m",
                "kimi",
                "minimax",
                "openai-compatible",
                "qwen",
                "stepfun"
            ]
        );
        let kimi = catalog.provider("kimi").unwrap();
        assert_eq!(kimi.display_name, "Moonshot Kimi");
        assert_eq!(kimi.smoke_test_model, "kimi-k2.6");
        assert!(kimi.model("kimi-k2.6").unwrap().reasoning);
        for p in &catalog.providers {
            assert!(p.model(&p.smoke_test_model).is_some(), "{}", p.id);
            assert!(p.capabilities.chat_completions, "{}", p.id);
        }
        let qwq = catalog.provider("qwen").unwrap().model("qwq-plus").unwrap();
        assert!(qwq.stream_only && qwq.reasoning);
        let o4 = catalog
            .provider("openai-compatible")
            .unwrap()
            .model("o4-mini")
            .unwrap();
        assert_eq!(o4.max_tokens_param, MaxTokensParam::MaxCompletionTokens);
    }

    #[test]
    fn minimal_file_parses_with_defaults() {
        let p = ProviderManifest::parse("providers/demo.json", "demo", MINIMAL).unwrap();
        assert!(!p.capabilities.stream_only);
        let m = &p.models[0];
        assert!(m.aliases.is_empty() && !m.stream_only);
        assert_eq!(m.max_tokens_param, MaxTokensParam::MaxTokens);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases: Vec<(String, &str)> = vec![
            ("{".to_string(), "not valid JSON"),
            (
                "[]".to_string(),
                "top level must be a JSON object, found an array",
            ),
            (
                edited(|v| drop(v.as_object_mut().unwrap().remove("base_url"))),
                "field `base_url`: is required",
            ),
            (
                edited(|v| v["id"] = "other".into()),
                "field `id`: is `other` but the file is named `demo.json`",
            ),
            (
                edited(|v| v["id"] = "Demo".into()),
                "field `id`: must be 2..64 characters",
            ),
            (
                edited(|v| v["display_name"] = 3.into()),
                "field `display_name`: must be a string, found a number",
            ),
            (
                edited(|v| v["display_name"] = " ".into()),
                "field `display_name`: must not be empty",
            ),
            (
                edited(|v| v["base_url"] = "api.example.com".into()),
                "field `base_url`: must start with http",
            ),
            (
                edited(|v| v["base_url"] = "https://x/v1?a=1".into()),
                "field `base_url`: must not carry a query",
            ),
            (
                edited(|v| v["auth_scheme"] = "Bearer".into()),
                "field `auth_scheme`: must be lowercase",
            ),
            (
                edited(|v| v["smoke_test_model"] = "DEMO 1".into()),
                "field `smoke_test_model`: `DEMO 1` is not the id of one of `models` (did you mean `demo-1`?)",
            ),
            (
                edited(|v| v["smoke_model"] = "demo-1".into()),
                "field `smoke_model`: unknown field",
            ),
            (
                edited(|v| v["capabilities"] = true.into()),
                "field `capabilities`: must be an object, found a boolean",
            ),
            (
                edited(|v| drop(v["capabilities"].as_object_mut().unwrap().remove("tools"))),
                "field `capabilities.tools`: is required",
            ),
            (
                edited(|v| v["capabilities"]["stream"] = "yes".into()),
                "field `capabilities.stream`: must be a boolean, found a string",
            ),
            (
                edited(|v| v["capabilities"]["streaming"] = true.into()),
                "field `capabilities.streaming`: unknown field",
            ),
            (
                edited(|v| {
                    v["capabilities"]["stream"] = false.into();
                    v["capabilities"]["stream_only"] = true.into();
                }),
                "field `capabilities.stream_only`: is true but",
            ),
            (
                edited(|v| v["models"] = serde_json::json!([])),
                "field `models`: must list at least one model",
            ),
            (
                edited(|v| v["models"] = serde_json::json!({})),
                "field `models`: must be an array, found an object",
            ),
            (
                edited(|v| v["models"][0] = "demo-1".into()),
                "field `models[0]`: must be an object, found a string",
            ),
            (
                edited(|v| v["models"][0]["reasoning"] = "no".into()),
                "field `models[0].reasoning`: must be a boolean, found a string",
            ),
            (
                edited(|v| drop(v["models"][0].as_object_mut().unwrap().remove("reasoning"))),
                "field `models[0].reasoning`: is required",
            ),
            (
                edited(|v| v["models"][0]["id"] = "demo 1".into()),
                "field `models[0].id`: must not contain whitespace",
            ),
            (
                edited(|v| v["models"][0]["aliases"] = "d1".into()),
                "field `models[0].aliases`: must be an array, found a string",
            ),
            (
                edited(|v| v["models"][0]["aliases"] = serde_json::json!(["ok", 7])),
                "field `models[0].aliases[1]`: must be a string, found a number",
            ),
            (
                edited(|v| v["models"][0]["aliases"] = serde_json::json!(["--"])),
                "field `models[0].aliases[0]`: must contain at least one letter or digit",
            ),
            (
                edited(|v| v["models"][0]["max_tokens_param"] = "tokens".into()),
                "field `models[0].max_tokens_param`: must be `max_tokens` or",
            ),
            (
                edited(|v| v["models"][0]["context"] = 8.into()),
                "field `models[0].context`: unknown field",
            ),
            (
                edited(|v| {
                    v["models"] = serde_json::json!([
                        {"id": "demo-1", "reasoning": false},
                        {"id": "demo-2", "aliases": ["Demo_1"], "reasoning": false}
                    ])
                }),
                "field `models[1].aliases[0]`: `Demo_1` collides with `models[0].id` (model `demo-1`)",
            ),
            (
                edited(|v| v["notes"] = 1.into()),
                "field `notes`: must be a string",
            ),
        ];
        for (text, expected) in cases {
            let msg = parse_err(&text);
            assert!(msg.contains(expected), "expected `{expected}` in `{msg}`");
        }
    }

    #[test]
    fn catalog_fails_on_one_bad_file_and_names_it() {
        let files = vec![
            ("demo.json".to_string(), MINIMAL.to_string()),
            (
                "zzz.json".to_string(),
                edited(|v| v["id"] = "zzz".into()).replace("\"bearer\"", "false"),
            ),
        ];
        let err = Catalog::from_files(files).unwrap_err();
        assert_eq!(err.code, code::INVALID_PACK_DATA);
        assert_eq!(
            err.message,
            "providers/zzz.json: field `auth_scheme`: must be a string, found a boolean"
        );
    }

    #[test]
    fn catalog_is_sorted_and_lookups_name_known_ids() {
        let a = edited(|v| v["id"] = "zeta".into());
        let catalog = Catalog::from_files(vec![
            ("zeta.json".into(), a),
            ("demo.json".into(), MINIMAL.into()),
        ])
        .unwrap();
        assert_eq!(catalog.providers[0].id, "demo");
        let err = catalog.provider("nope").unwrap_err();
        assert_eq!(err.code, code::UNKNOWN_PROVIDER);
        assert!(err.message.contains("known: demo, zeta"), "{}", err.message);
    }

    #[test]
    fn empty_or_missing_folders_are_errors() {
        assert_eq!(
            Catalog::from_files(vec![]).unwrap_err().code,
            code::INVALID_PACK_DATA
        );
        let err = Catalog::load_dir(Path::new("/definitely/not/here")).unwrap_err();
        assert_eq!(err.code, code::PACK_DATA_UNAVAILABLE);
    }

    #[test]
    fn load_dir_ignores_non_json_and_hidden_files() {
        let dir =
            std::env::temp_dir().join(format!("openai-cn-provider-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("demo.json"), MINIMAL).unwrap();
        std::fs::write(dir.join("README.md"), "# not a provider").unwrap();
        std::fs::write(dir.join(".demo.json.swp"), "garbage").unwrap();
        std::fs::write(dir.join(".partial.json"), "{").unwrap();
        let catalog = Catalog::load_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(catalog.unwrap().providers.len(), 1);
    }
}
