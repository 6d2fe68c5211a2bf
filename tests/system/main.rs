//! System tests: the real `wharf` binary on a free port, real built packs, HTTP.

mod outbound;
mod plugin_host;
mod probes;
mod sandboxes;
