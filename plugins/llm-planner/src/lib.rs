//! `llm-planner`: the planner component of `llm-planner-pack`.
//!
//! For each call of `next-action` it asks an OpenAI-compatible chat completions endpoint
//! (`POST <base_url>/chat/completions`) what to do next, and turns the answer into a
//! [`Decision`](wharf_plugin_sdk::planner::Decision):
//!
//! * the conversation is rebuilt from the task and its history every time ([`chat`]): a
//!   short system prompt, the task's description as the user message, then per step an
//!   assistant message with its tool call (and the model's text that came with it) and a
//!   `tool` message with what the sandbox answered. The planner keeps no state, so a task
//!   resumed after a restart asks the same question;
//! * the task's tools (capability operations, named `<capability>_<operation>`) are offered
//!   as OpenAI function tools with their input schemas;
//! * the answer's first tool call is the next action; an answer without one finishes the task
//!   with the answer's text.
//!
//! The request goes out through `wasi:http` ([`wharf_plugin_sdk::http`]): the host sends it
//! only to hosts the pack declares and the operator grants, and adds the endpoint's key
//! itself, so this component never holds it. Errors (codes in [`chat`]):
//! `http_refused` (the host refused the origin), `endpoint_error` (a non-2xx answer, with the
//! status and the upstream's own message; retriable for 429 and 5xx), `invalid_response`
//! (an answer that is not a chat completion).
//!
//! The shapes follow the OpenAI API reference for chat completions
//! (<https://platform.openai.com/docs/api-reference/chat/create> and
//! <https://platform.openai.com/docs/api-reference/chat/object>). [`chat`] is plain Rust,
//! unit-tested natively (`cargo test -p llm-planner`); [`export`] binds it to the WIT
//! interface.

pub mod chat;

mod export;
