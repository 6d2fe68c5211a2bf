//! Binding of [`crate::chat`] to the WIT `planner` interface through the SDK.

use wharf_plugin_sdk::PluginError;
use wharf_plugin_sdk::http::{self, Request};
use wharf_plugin_sdk::log;
use wharf_plugin_sdk::planner::{Decision, Planner, Step, Task};

use crate::chat;

/// Time to the first byte of the endpoint's answer (the host caps it too).
const FIRST_BYTE_TIMEOUT_MS: u32 = 120_000;

struct LlmPlanner;

impl Planner for LlmPlanner {
    fn next_action(task: Task, history: Vec<Step>) -> Result<Decision, PluginError> {
        let body = chat::request_body(&task, &history)?;
        let url = chat::completions_url(&task.endpoint.base_url);
        log::debug(&format!(
            "task {}: asking {} ({} steps so far, {} tools)",
            task.task_id,
            task.endpoint.model,
            history.len(),
            task.tools.len()
        ));
        // The key is the host's to add (at the endpoint's origin only); `http_refused`
        // passes through as it is.
        let answer = http::send(&Request::post_json(url, &body).timeout_ms(FIRST_BYTE_TIMEOUT_MS))?;
        chat::decide(answer.status, &answer.body)
    }
}

wharf_plugin_sdk::export_planner!(LlmPlanner);
