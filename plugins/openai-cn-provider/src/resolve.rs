//! Model-name resolution by model family.
//!
//! Users, relays and agent frameworks spell the same model many ways: `kimi 2.6`, `kimi-2.6`,
//! `Kimi_K2.6`, `kimi-k2.6`, `moonshotai/Kimi-K2.6`. Resolution maps all of them to the one
//! canonical id of the provider's catalog.
//!
//! Rules, in order (the first rule that yields exactly one model wins):
//! 1. the name equals a model id or an alias exactly;
//! 2. the *normalised* name equals the normalised id or alias. Normalising lowercases and drops
//!    everything that is not a letter or a digit (spaces, `-`, `_`, `.`, `/`, `:`), so
//!    `Kimi_K2.6` = `kimi-k2.6` = `kimik26`;
//! 3. the normalised name equals a *family variant* of an id or alias: the same name without its
//!    family prefix (`k2.6`, `M2.5`, `plus`), and, when the version token starts with one letter
//!    (`K2.6`, `M2`), also without that letter (`kimi 2.6`, `minimax 2.5`, `2.6`). Variants
//!    that fit several models are ambiguous and resolve to nothing;
//! 4. a `vendor/model` name is retried as `model`.
//!
//! An unresolved name yields the three nearest model ids: edit distance between the
//! normalised name and every normalised name and variant of a model, best first.

use crate::manifest::ModelSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The canonical model id.
    Found(String),
    /// No unique match: the nearest known model ids, best first (at most three).
    Unknown(Vec<String>),
}

/// How many suggestions an unknown name gets.
pub const SUGGESTIONS: usize = 3;

/// Lowercase, letters and digits only: `Kimi_K2.6` -> `kimik26`.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Lowercase tokens split at every character that is not a letter or a digit.
fn tokens(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().flat_map(char::to_lowercase).collect())
        .collect()
}

/// The family variants of one name (see rule 3 of the module docs), without the full form.
pub fn variants(name: &str) -> Vec<String> {
    let toks = tokens(name);
    let mut out = Vec::new();
    let Some(first) = toks.first() else {
        return out;
    };
    let rest: String = toks[1..].concat();
    let family_len = first
        .chars()
        .take_while(|c| c.is_alphabetic())
        .map(char::len_utf8)
        .sum::<usize>();
    // Without the family word: `kimi-k2.6` -> `k26`, `qwen3-max` -> `3max`.
    if family_len > 0 {
        let without = format!("{}{rest}", &first[family_len..]);
        if !without.is_empty() {
            out.push(without);
        }
    }
    // Without the one-letter version prefix: `kimi-k2.6` -> `kimi26` and `26`.
    if toks.len() >= 2 && family_len == first.len() {
        let second = &toks[1];
        let mut cs = second.chars();
        if let (Some(l), Some(d)) = (cs.next(), cs.next())
            && l.is_alphabetic()
            && d.is_ascii_digit()
        {
            let tail = format!("{}{}", &second[l.len_utf8()..], toks[2..].concat());
            out.push(format!("{first}{tail}"));
            out.push(tail);
        }
    }
    let full = toks.concat();
    out.retain(|v| *v != full);
    out.dedup();
    out
}

/// Resolves `name` against `models` (the catalog of one provider).
pub fn resolve(models: &[ModelSpec], name: &str) -> Resolution {
    let name = name.trim();
    if let Some(found) = resolve_exactish(models, name) {
        return found;
    }
    // Rule 4: `vendor/model` and `relay-group/model` forms.
    if let Some((_, tail)) = name.rsplit_once('/')
        && let Some(Resolution::Found(id)) = resolve_exactish(models, tail)
    {
        return Resolution::Found(id);
    }
    Resolution::Unknown(nearest(models, name, SUGGESTIONS))
}

/// Rules 1 to 3. `None` when nothing matched; `Some(Unknown)` when a variant was ambiguous.
fn resolve_exactish(models: &[ModelSpec], name: &str) -> Option<Resolution> {
    if let Some(m) = models
        .iter()
        .find(|m| m.id == name || m.aliases.iter().any(|a| a == name))
    {
        return Some(Resolution::Found(m.id.clone()));
    }
    let key = normalize(name);
    if key.is_empty() {
        return None;
    }
    if let Some(m) = models
        .iter()
        .find(|m| names(m).any(|n| normalize(n) == key))
    {
        return Some(Resolution::Found(m.id.clone()));
    }
    let hits: Vec<&ModelSpec> = models
        .iter()
        .filter(|m| names(m).any(|n| variants(n).contains(&key)))
        .collect();
    match hits.as_slice() {
        [] => None,
        [one] => Some(Resolution::Found(one.id.clone())),
        // Ambiguous (`plus` on Qwen: qwen-plus or qwq-plus): offer the candidates themselves.
        many => {
            let mut ranked: Vec<(usize, usize, &ModelSpec)> = many
                .iter()
                .enumerate()
                .map(|(i, m)| (distance_to_model(m, &key), i, *m))
                .collect();
            ranked.sort_by_key(|(d, i, _)| (*d, *i));
            Some(Resolution::Unknown(
                ranked
                    .into_iter()
                    .take(SUGGESTIONS)
                    .map(|(_, _, m)| m.id.clone())
                    .collect(),
            ))
        }
    }
}

fn names(m: &ModelSpec) -> impl Iterator<Item = &String> {
    std::iter::once(&m.id).chain(m.aliases.iter())
}

/// Smallest edit distance between `key` (normalised) and any name or variant of the model.
fn distance_to_model(m: &ModelSpec, key: &str) -> usize {
    names(m)
        .flat_map(|n| std::iter::once(normalize(n)).chain(variants(n)))
        .map(|k| levenshtein(key, &k))
        .min()
        .unwrap_or(usize::MAX)
}

/// The `limit` model ids nearest to `name`, best first; ties keep catalog order.
pub fn nearest(models: &[ModelSpec], name: &str, limit: usize) -> Vec<String> {
    let key = normalize(name);
    let mut ranked: Vec<(usize, usize, &str)> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (distance_to_model(m, &key), i, m.id.as_str()))
        .collect();
    ranked.sort_by_key(|(d, i, _)| (*d, *i));
    ranked
        .into_iter()
        .take(limit)
        .map(|(_, _, id)| id.to_string())
        .collect()
}

/// The `limit` strings of `candidates` (e.g. the ids a relay lists) nearest to `name`: normalised
/// edit distance, discounted by the length of the common prefix so that a long sibling of the
/// same family (`kimi-k2-thinking`) ranks before a short stranger (`gpt-4o`).
pub fn nearest_names<'a>(candidates: &[&'a str], name: &str, limit: usize) -> Vec<&'a str> {
    let key = normalize(name);
    let mut ranked: Vec<(usize, usize, usize, &'a str)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let other = normalize(c);
            let d = levenshtein(&key, &other);
            let prefix = key
                .chars()
                .zip(other.chars())
                .take_while(|(a, b)| a == b)
                .count();
            (d.saturating_sub(prefix), d, i, *c)
        })
        .collect();
    ranked.sort_by_key(|(score, d, i, _)| (*score, *d, *i));
    ranked
        .into_iter()
        .take(limit)
        .map(|(_, _, _, c)| c)
        .collect()
}

/// Levenshtein distance over characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Catalog, MaxTokensParam};
    use std::path::Path;

    fn model(id: &str, aliases: &[&str]) -> ModelSpec {
        ModelSpec {
            id: id.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            reasoning: false,
            stream_only: false,
            max_tokens_param: MaxTokensParam::MaxTokens,
        }
    }

    fn shipped() -> Catalog {
        Catalog::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/openai-cn-pack/providers"),
        )
        .unwrap()
    }

    fn found(id: &str) -> Resolution {
        Resolution::Found(id.into())
    }

    #[test]
    fn normalize_drops_case_and_separators() {
        for (input, expected) in [
            ("kimi-k2.6", "kimik26"),
            ("Kimi_K2.6", "kimik26"),
            ("kimi 2.6", "kimi26"),
            ("  KIMI - K2 . 6 ", "kimik26"),
            ("moonshotai/Kimi-K2.6", "moonshotaikimik26"),
            ("qwen3:8b", "qwen38b"),
            ("MiniMax-M2.5", "minimaxm25"),
            ("模型-1", "模型1"),
            ("-_. /", ""),
        ] {
            assert_eq!(normalize(input), expected, "{input}");
        }
    }

    #[test]
    fn variants_drop_family_and_version_letter() {
        assert_eq!(variants("kimi-k2.6"), ["k26", "kimi26", "26"]);
        assert_eq!(variants("MiniMax-M2"), ["m2", "minimax2", "2"]);
        assert_eq!(variants("qwen3-max"), ["3max"]);
        assert_eq!(variants("glm-4.6"), ["46"]);
        assert_eq!(variants("deepseek-chat"), ["chat"]);
        assert_eq!(variants("o4-mini"), ["4mini"]);
        assert_eq!(variants("kimi"), Vec::<String>::new());
        assert_eq!(variants(""), Vec::<String>::new());
    }

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("kimik26", "kimik25"), 1);
        assert_eq!(levenshtein("模型", "模形"), 1);
    }

    /// The alias table the seed asks for, plus the usual ways people spell models.
    #[test]
    fn resolves_spellings_across_the_shipped_catalog() {
        let catalog = shipped();
        let table: &[(&str, &str, &str)] = &[
            // provider, input, canonical id
            ("kimi", "kimi-k2.6", "kimi-k2.6"),
            ("kimi", "kimi 2.6", "kimi-k2.6"),
            ("kimi", "kimi-2.6", "kimi-k2.6"),
            ("kimi", "Kimi_K2.6", "kimi-k2.6"),
            ("kimi", "KIMI-K2.6", "kimi-k2.6"),
            ("kimi", "kimi k2.6", "kimi-k2.6"),
            ("kimi", "kimi2.6", "kimi-k2.6"),
            ("kimi", "kimi-k2-6", "kimi-k2.6"),
            ("kimi", "k2.6", "kimi-k2.6"),
            ("kimi", "K2.6", "kimi-k2.6"),
            ("kimi", " kimi-k2.6 ", "kimi-k2.6"),
            ("kimi", "moonshotai/Kimi-K2.6", "kimi-k2.6"),
            ("kimi", "moonshotai/kimi-k2.6", "kimi-k2.6"),
            ("kimi", "a7m/kimi 2.6", "kimi-k2.6"),
            ("kimi", "kimi 2.5", "kimi-k2.5"),
            ("kimi", "Kimi-K2.5", "kimi-k2.5"),
            ("kimi", "kimi-k2", "kimi-k2-0905-preview"),
            ("kimi", "kimi 2", "kimi-k2-0905-preview"),
            ("kimi", "kimi k2 thinking", "kimi-k2-thinking"),
            ("kimi", "kimi-2-thinking-turbo", "kimi-k2-thinking-turbo"),
            ("kimi", "kimi-k2-turbo", "kimi-k2-turbo-preview"),
            ("kimi", "Moonshot V1 8K", "moonshot-v1-8k"),
            ("kimi", "moonshot-v1-128k", "moonshot-v1-128k"),
            ("deepseek", "DeepSeek-Chat", "deepseek-chat"),
            ("deepseek", "deepseek v3", "deepseek-chat"),
            ("deepseek", "DeepSeek-V3.2", "deepseek-chat"),
            ("deepseek", "deepseek-ai/DeepSeek-V3", "deepseek-chat"),
            ("deepseek", "deepseek r1", "deepseek-reasoner"),
            ("deepseek", "R1", "deepseek-reasoner"),
            ("deepseek", "reasoner", "deepseek-reasoner"),
            ("deepseek", "chat", "deepseek-chat"),
            ("minimax", "minimax-m2.5", "MiniMax-M2.5"),
            ("minimax", "MiniMax M2.5", "MiniMax-M2.5"),
            ("minimax", "minimax 2.5", "MiniMax-M2.5"),
            ("minimax", "m2.5", "MiniMax-M2.5"),
            (
                "minimax",
                "minimax-m2.5-highspeed",
                "MiniMax-M2.5-highspeed",
            ),
            ("minimax", "M2.7 highspeed", "MiniMax-M2.7-highspeed"),
            (
                "minimax",
                "tksea-minimax/MiniMax-M2.7-highspeed",
                "MiniMax-M2.7-highspeed",
            ),
            ("minimax", "minimax-m2", "MiniMax-M2"),
            ("minimax", "MiniMaxAI/MiniMax-M2.1", "MiniMax-M2.1"),
            ("qwen", "Qwen Plus", "qwen-plus"),
            ("qwen", "qwen_plus_latest", "qwen-plus"),
            ("qwen", "Qwen3-Max", "qwen3-max"),
            ("qwen", "qwen 3 max", "qwen3-max"),
            ("qwen", "QwQ", "qwq-plus"),
            ("qwen", "qwen3 coder", "qwen3-coder-plus"),
            ("glm", "GLM-4.6", "glm-4.6"),
            ("glm", "glm 4.6", "glm-4.6"),
            ("glm", "glm4.6", "glm-4.6"),
            ("glm", "zai-org/GLM-4.6", "glm-4.6"),
            ("glm", "glm-4.5-air", "glm-4.5-air"),
            ("glm", "GLM 4.5 Air", "glm-4.5-air"),
            ("glm", "glm-4-flash-250414", "glm-4-flash"),
            ("stepfun", "Step 2 Mini", "step-2-mini"),
            ("stepfun", "step3", "step-3"),
            ("openai-compatible", "GPT-4o-mini", "gpt-4o-mini"),
            ("openai-compatible", "openai/gpt-4.1", "gpt-4.1"),
            ("openai-compatible", "o4 mini", "o4-mini"),
        ];
        for (provider, input, expected) in table {
            let p = catalog.provider(provider).unwrap();
            assert_eq!(
                resolve(&p.models, input),
                found(expected),
                "{provider}: {input}"
            );
        }
    }

    #[test]
    fn unknown_names_get_the_three_nearest_ids() {
        let catalog = shipped();
        let table: &[(&str, &str, &[&str])] = &[
            (
                "kimi",
                "kimi-k3",
                &["kimi-k2-0905-preview", "kimi-k2.6", "kimi-k2.5"],
            ),
            (
                "kimi",
                "kimi-k2.7",
                &["kimi-k2.6", "kimi-k2.5", "kimi-k2-0905-preview"],
            ),
            (
                "kimi",
                "moonshot-v1-16k",
                &["moonshot-v1-8k", "moonshot-v1-32k", "moonshot-v1-128k"],
            ),
            (
                "deepseek",
                "deepseek-v4",
                &["deepseek-chat", "deepseek-reasoner"],
            ),
            ("glm", "glm-5", &["glm-4.5", "glm-4.7", "glm-4.6"]),
            (
                "minimax",
                "MiniMax-M3",
                &["MiniMax-M2", "MiniMax-M2.7", "MiniMax-M2.5"],
            ),
            // A foreign name still gets three suggestions.
            ("qwen", "gpt-4o", &["qwen-plus", "qwen-turbo", "qwq-plus"]),
        ];
        for (provider, input, expected) in table {
            let p = catalog.provider(provider).unwrap();
            let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                resolve(&p.models, input),
                Resolution::Unknown(expected),
                "{provider}: {input}"
            );
        }
    }

    #[test]
    fn ambiguous_variants_do_not_guess() {
        let catalog = shipped();
        // `plus` is a family variant of both qwen-plus and qwq-plus.
        let qwen = catalog.provider("qwen").unwrap();
        match resolve(&qwen.models, "plus") {
            Resolution::Unknown(near) => {
                assert!(
                    near.contains(&"qwen-plus".to_string())
                        && near.contains(&"qwq-plus".to_string()),
                    "{near:?}"
                )
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        // `max` is unique: qwen-max without its family; qwen3-max without its family is `3max`.
        assert_eq!(resolve(&qwen.models, "max"), found("qwen-max"));
    }

    #[test]
    fn exact_forms_beat_variants() {
        // `m2` is a variant of `x-m2` but the exact id of another model.
        let models = [model("x-m2", &[]), model("m2", &[])];
        assert_eq!(resolve(&models, "M2"), found("m2"));
        assert_eq!(resolve(&models, "x m2"), found("x-m2"));
        // An exact alias wins over everything.
        let models = [model("a-1", &[]), model("b-1", &["a 1"])];
        assert_eq!(resolve(&models, "a 1"), found("b-1"));
    }

    #[test]
    fn empty_and_garbage_names_are_unknown() {
        let models = [model("kimi-k2.6", &[]), model("kimi-k2.5", &[])];
        assert!(matches!(resolve(&models, ""), Resolution::Unknown(v) if v.len() == 2));
        assert!(matches!(resolve(&models, "--"), Resolution::Unknown(_)));
        assert_eq!(resolve(&[], "kimi"), Resolution::Unknown(vec![]));
    }

    #[test]
    fn nearest_names_ranks_listed_ids() {
        let listed = ["gpt-4o", "kimi-k2.5", "Kimi-K2-Thinking", "deepseek-chat"];
        assert_eq!(
            nearest_names(&listed, "kimi-k2.6", 2),
            ["kimi-k2.5", "Kimi-K2-Thinking"]
        );
    }
}
