//! `sub2api-host`: the relay-host adapter of `sub2api-host-pack` for sub2api
//! (<https://github.com/Wei-Shaw/sub2api>).
//!
//! It turns Wharf's import, list, delete and repair operations into sub2api admin API calls
//! (see `README.md` for every call and the sub2api handler files it follows):
//!
//! * [`plan`] names the resources one provider key needs for its mode: a group of its own (so a
//!   probe through it proves this key, not another account of a shared group), an account
//!   holding the key (with `credentials.model_mapping`, so the
//!   gateway's `/v1/models` lists the item's models), and for the probe a managed user, its
//!   subscription (mode `subscription`) and its API key;
//! * [`compare`] decides what an existing resource needs (reuse, patch, replace, reactivate)
//!   and reads the account's Responses routing flag;
//! * [`ops`] performs the calls over a [`api::Transport`] (the host's `wasi:http` in the
//!   component; a scripted fake in the unit tests);
//! * `export` binds them to the WIT interface `relay-host` through `wharf-plugin-sdk`.
//!
//! The admin token never passes through the plugin: the host adds it as `x-api-key` to every
//! request to the registered host's origin.

pub mod api;
pub mod compare;
pub mod ops;
pub mod plan;

mod export;
