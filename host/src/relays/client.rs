//! `wharf import submit`: imports the keys of a file into a relay host through a server's API
//! and, with `--follow`, shows progress until every item has its final access status, then a
//! table of the items. With `--dry-run` it prints the plan instead.

use std::path::PathBuf;
use std::time::Duration;

use crate::jobs::cli::{call, follow, text};
use anyhow::Context;
use serde_json::{Value, json};

/// What `wharf import submit` was asked to do.
pub struct ImportOptions {
    /// The server's root URL.
    pub url: String,
    /// The API key (from the environment, never the command line).
    pub key: String,
    pub host_id: String,
    pub provider: String,
    /// One provider key per line (blank lines and `#` comments skipped); `-` for stdin.
    pub keys_file: PathBuf,
    pub mode: String,
    pub models: Vec<String>,
    pub base_url: Option<String>,
    pub dry_run: bool,
    pub follow: bool,
    pub poll_interval: Duration,
}

const BAR_WIDTH: usize = 30;

/// The keys of a keys file.
pub fn read_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Submits; prints the import id (or the plan), then with `follow` the progress and the items.
/// True when (followed) every item ended `ready`, or for a plan or an unfollowed import.
pub async fn submit(options: &ImportOptions) -> anyhow::Result<bool> {
    let listing = if options.keys_file.as_os_str() == "-" {
        let mut listing = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut listing)
            .context("reading stdin")?;
        listing
    } else {
        std::fs::read_to_string(&options.keys_file)
            .with_context(|| format!("reading {}", options.keys_file.display()))?
    };
    let keys = read_keys(&listing);
    anyhow::ensure!(!keys.is_empty(), "the keys file has no key");
    let mut body = json!({
        "host_id": options.host_id,
        "provider": options.provider,
        "api_keys": keys,
        "mode": options.mode,
        "dry_run": options.dry_run,
    });
    if !options.models.is_empty() {
        body["models"] = json!(options.models);
    }
    if let Some(base_url) = &options.base_url {
        body["base_url"] = json!(base_url);
    }
    let base = options.url.trim_end_matches('/');
    let http = reqwest::Client::new();
    let answer = call(
        http.post(format!("{base}/v1/imports"))
            .bearer_auth(&options.key)
            .json(&body),
    )
    .await?;
    if options.dry_run {
        print!("{}", plan_table(&answer));
        return Ok(true);
    }
    let id = text(&answer["id"]);
    println!("import {id}: {} key(s) queued", keys.len());
    if !options.follow {
        return Ok(true);
    }
    let import = follow(
        || {
            http.get(format!("{base}/v1/imports/{id}"))
                .bearer_auth(&options.key)
        },
        options.poll_interval,
        progress_line,
    )
    .await?;
    print!("{}", items_table(&import));
    Ok(import["status"] == "succeeded")
}

/// `[####....] 2/3  ready 2  failed 0  confirming 1  pending 0`.
pub fn progress_line(import: &Value) -> String {
    let items = import["items"].as_array().cloned().unwrap_or_default();
    let count = |f: &dyn Fn(&Value) -> bool| items.iter().filter(|i| f(i)).count();
    let total = items.len();
    let done = count(&|i| i["phase"] == "done");
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(BAR_WIDTH);
    format!(
        "[{}{}] {done}/{total}  ready {}  failed {}  confirming {}  pending {}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        count(&|i| i["access_status"] == "ready"),
        count(&|i| i["access_status"] == "failed"),
        count(&|i| i["phase"] == "confirming"),
        count(&|i| i["phase"] == "pending"),
    )
}

/// One line per item: position, key fingerprint, outcome, access, and the failure.
pub fn items_table(import: &Value) -> String {
    let mut out = format!(
        "import {} {}\n{:>3}  {:<18} {:<12} {:<9} {}\n",
        text(&import["id"]),
        text(&import["status"]),
        "#",
        "key",
        "outcome",
        "access",
        "error"
    );
    for item in import["items"].as_array().into_iter().flatten() {
        let error = match item["error_code"].as_str() {
            Some(code) => format!("{code}: {}", text(&item["error_message"])),
            None => String::new(),
        };
        let outcome = item["outcome"].as_str().unwrap_or("-");
        out.push_str(&format!(
            "{:>3}  {:<18} {:<12} {:<9} {}\n",
            item["position"],
            text(&item["key_fingerprint"]),
            outcome,
            text(&item["access_status"]),
            error.chars().take(120).collect::<String>()
        ));
    }
    out
}

/// The plan of a dry run: per key, the outcome and each resource's action.
pub fn plan_table(plan: &Value) -> String {
    let mut out = format!(
        "plan (dry run, nothing changed): {} key(s) into {}\n",
        plan["items"].as_array().map_or(0, Vec::len),
        text(&plan["host_id"])
    );
    for item in plan["items"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>3}  {:<18} {}\n",
            item["position"],
            text(&item["key_fingerprint"]),
            text(&item["outcome"])
        ));
        for resource in item["resources"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "       {:<10} {:<12} {}\n",
                text(&resource["action"]),
                text(&resource["kind"]),
                text(&resource["name"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_skip_blank_lines_and_comments() {
        assert_eq!(
            read_keys("# provider keys\nsk-one\n\n  sk-two  \n#sk-old\n"),
            vec!["sk-one", "sk-two"]
        );
    }

    #[test]
    fn the_progress_bar_fills_with_items_done() {
        let import = json!({"items": [
            {"phase": "done", "access_status": "ready"},
            {"phase": "done", "access_status": "failed"},
            {"phase": "confirming", "access_status": "pending"},
        ]});
        assert_eq!(
            progress_line(&import),
            format!(
                "[{}{}] 2/3  ready 1  failed 1  confirming 1  pending 0",
                "#".repeat(20),
                ".".repeat(10)
            )
        );
    }
}
