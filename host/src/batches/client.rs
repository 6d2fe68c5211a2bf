//! `wharf batch submit`: submits a JSONL file to a server's batches API and, with
//! `--follow`, shows a progress bar until the batch ends, then a summary table.

use std::path::PathBuf;
use std::time::Duration;

use crate::jobs::cli::{call, follow, text};
use anyhow::Context;
use serde_json::Value;

use super::ErrorClass;

/// What `wharf batch submit` was asked to do.
pub struct SubmitOptions {
    /// The server's root URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The API key (from the environment, never the command line).
    pub key: String,
    /// A JSONL file (or a JSON array), `-` for stdin.
    pub file: PathBuf,
    pub strict: bool,
    pub keep_on_failure: bool,
    pub cache: bool,
    pub follow: bool,
    pub poll_interval: Duration,
}

const BAR_WIDTH: usize = 30;

/// Submits the file; prints the batch id and any invalid lines, then (with `follow`) the
/// progress and the summary. True when every line was valid and, if followed, every task
/// succeeded.
pub async fn submit(options: &SubmitOptions) -> anyhow::Result<bool> {
    let body = if options.file.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body).context("reading stdin")?;
        body
    } else {
        std::fs::read(&options.file)
            .with_context(|| format!("reading {}", options.file.display()))?
    };
    let base = options.url.trim_end_matches('/');
    let http = reqwest::Client::new();
    let answer = call(
        http.post(format!(
            "{base}/v1/batches?strict={}&keep_on_failure={}&cache={}",
            options.strict, options.keep_on_failure, options.cache
        ))
        .bearer_auth(&options.key)
        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body),
    )
    .await?;
    let id = answer["batch_id"].as_str().unwrap_or_default().to_string();
    println!("batch {id}: {} task(s) queued", answer["total"]);
    let invalid = answer["invalid_lines"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for line in &invalid {
        println!(
            "  invalid line {}: {}",
            line["line"],
            text(&line["message"])
        );
    }
    if !options.follow {
        return Ok(invalid.is_empty());
    }
    let batch = follow(
        || {
            http.get(format!("{base}/v1/batches/{id}"))
                .bearer_auth(&options.key)
        },
        options.poll_interval,
        progress_line,
    )
    .await?;
    print!("{}", summary_table(&batch));
    Ok(invalid.is_empty() && count(&batch, "succeeded") == batch["total"].as_i64().unwrap_or(0))
}

fn count(batch: &Value, status: &str) -> i64 {
    batch["counts"][status].as_i64().unwrap_or(0)
}

/// `[#########.....] 9/12  succeeded 7  failed 2  running 2  queued 1`.
pub fn progress_line(batch: &Value) -> String {
    let total = batch["total"].as_i64().unwrap_or(0).max(0);
    let done = count(batch, "succeeded") + count(batch, "failed") + count(batch, "cancelled");
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        (done.clamp(0, total) as usize * BAR_WIDTH) / total as usize
    };
    format!(
        "[{}{}] {done}/{total}  succeeded {}  failed {}  running {}  queued {}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        count(batch, "succeeded"),
        count(batch, "failed"),
        count(batch, "running"),
        count(batch, "queued"),
    )
}

/// Tasks by status (and cache hits), then failed tasks by error class with their side.
pub fn summary_table(batch: &Value) -> String {
    let mut out = format!(
        "batch {} {}\n{:<20} {:>7}\n",
        text(&batch["batch_id"]),
        text(&batch["status"]),
        "status",
        "tasks"
    );
    for status in ["succeeded", "failed", "cancelled", "running", "queued"] {
        out.push_str(&format!("{status:<20} {:>7}\n", count(batch, status)));
    }
    if let Some(hits) = batch["cache"]["hits"].as_i64().filter(|n| *n > 0) {
        out.push_str(&format!("{:<20} {hits:>7}\n", "(from the cache)"));
    }
    if let Some(classes) = batch["error_classes"].as_object()
        && !classes.is_empty()
    {
        out.push_str(&format!(
            "{:<20} {:<15} {:>7}\n",
            "error class", "side", "tasks"
        ));
        for (class, n) in classes {
            let side = serde_json::from_value::<ErrorClass>(Value::from(class.as_str()))
                .map_or("?", |c| c.side().as_str());
            let n = n.as_i64().unwrap_or(0);
            out.push_str(&format!("{class:<20} {side:<15} {n:>7}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch() -> Value {
        json!({
            "batch_id": "bat_1", "status": "running", "total": 12,
            "counts": {"succeeded": 5, "failed": 4, "cancelled": 0, "running": 2, "queued": 1},
            "error_classes": {"compile_error": 3, "sandbox_error": 1},
        })
    }

    #[test]
    fn the_progress_bar_fills_with_ended_tasks() {
        assert_eq!(
            progress_line(&batch()),
            format!(
                "[{}{}] 9/12  succeeded 5  failed 4  running 2  queued 1",
                "#".repeat(22),
                ".".repeat(8)
            )
        );
    }

    #[test]
    fn the_summary_gives_each_error_class_its_side() {
        let table = summary_table(&batch());
        assert!(table.contains("succeeded                  5"), "{table}");
        assert!(
            table.contains("compile_error        task                  3"),
            "{table}"
        );
        assert!(
            table.contains("sandbox_error        infrastructure        1"),
            "{table}"
        );
    }
}
