//! Wharf: a server that loads plugin packs as sandboxed WebAssembly
//! components, hot-reloads them, and runs sandboxes around them.
//!
//! The modules mirror the domain: [`packs`] (manifest, loader, watcher,
//! generations), [`runtime`] (wasmtime engine, limits, bindings),
//! [`sandbox`] (drivers), [`jobs`] (the durable run engine), [`cases`] (repositories
//! built and run), [`batches`] (task lists run in sandboxes, trajectories), [`capabilities`] (routing), [`probes`] (access
//! probes, targets, schedules), [`relays`] (relay hosts, key imports, rollback, reconcile), [`overlays`] (pack patches for a target
//! version range), [`outbound`] (the rules for every request
//! the server or a plugin sends out), [`api`] (HTTP), [`mcp`] (MCP at `/mcp`),
//! [`store`] (SQLite).

pub mod api;
pub mod batches;
pub mod capabilities;
pub mod cases;
pub mod config;
pub mod error;
pub mod jobs;
pub mod mcp;
pub mod metrics;
pub mod outbound;
pub mod overlays;
pub mod packs;
pub mod probes;
pub mod relays;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod store;
