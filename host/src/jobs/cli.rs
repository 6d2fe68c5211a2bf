//! The CLI side of runs (`wharf batch submit --follow`, `wharf import submit --follow`): one
//! way to call the API, and to follow a run until it leaves `running`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Sends a request; the answer's JSON, or the server's error code and message.
pub async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("sending the request")?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}: {}",
            text(&answer["error"]["code"]),
            text(&answer["error"]["message"])
        );
    }
    Ok(answer)
}

/// A JSON string as is, anything else as JSON text.
pub fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

/// Polls `get` every `poll` until the answer's `status` is no longer `running`, showing
/// `progress` of each answer on stderr (rewritten in place on a terminal, a line per change
/// otherwise); answers the last one.
pub async fn follow(
    get: impl Fn() -> reqwest::RequestBuilder,
    poll: Duration,
    progress: impl Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let done = loop {
        let answer = call(get()).await?;
        let line = progress(&answer);
        if line != last {
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if answer["status"] != "running" {
            break answer;
        }
        tokio::time::sleep(poll).await;
    };
    if tty {
        eprintln!();
    }
    Ok(done)
}
