//! System tests: the real `wharf` binary on a free port, real built packs, HTTP.

mod adapters;
mod api_contract;
mod attacks_docker;
mod attacks_process;
mod author_kit;
mod batches;
mod batches_planner;
mod bodies;
mod cases;
mod mcp;
mod outbound;
mod overlays;
mod overlays_cases;
mod packs_policy;
mod plugin_host;
mod policy;
mod probes;
mod relays;
mod sandboxes;
