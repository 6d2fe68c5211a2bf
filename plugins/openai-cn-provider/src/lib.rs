//! `openai-cn-provider`: the provider component of `openai-cn-pack`.
//!
//! It describes Chinese LLM providers served through OpenAI-compatible endpoints (DeepSeek,
//! Moonshot Kimi, MiniMax, Qwen/DashScope, Zhipu GLM, StepFun) and a generic OpenAI-compatible
//! profile for relays (one-api, new-api, sub2api, LiteLLM). The host performs all network I/O;
//! this component only
//!
//! * lists the catalog, read at run time from the pack's `providers/<id>.json` files, which the
//!   host preopens read-only at `/pack` ([`manifest`]);
//! * resolves model names by family, so `kimi 2.6`, `Kimi_K2.6` and `kimi-k2.6` are one model
//!   ([`resolve`]);
//! * plans the default access probe: `GET …/models` must list the model, and a minimal
//!   `POST …/chat/completions` must succeed ([`plan`], which also documents the path convention);
//! * judges each observed step into a verdict class ([`judge`], which has the class table).
//!
//! The logic modules are plain Rust and are unit-tested natively (`cargo test -p
//! openai-cn-provider`); [`export`] binds them to the WIT interface through `wharf-plugin-sdk`.

pub mod error;
pub mod judge;
pub mod manifest;
pub mod plan;
pub mod resolve;
mod text;

mod export;
