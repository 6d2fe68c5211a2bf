//! System tests: the real `wharf` binary on a free port, real built packs, HTTP.

mod api_contract;
mod attacks_docker;
mod attacks_process;
mod author_kit;
mod outbound;
mod packs_policy;
mod plugin_host;
mod probes;
mod sandboxes;
