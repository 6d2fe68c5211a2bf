//! System tests: the real `wharf` binary on a free port, real built packs, HTTP.

mod attacks_docker;
mod plugin_host;
mod probes;
mod sandboxes;
