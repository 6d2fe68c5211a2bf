//! Planners: pick a batch task's next action from the task and its history.
//!
//! A planner plugin implements [`Planner`] on a unit struct and exports it with
//! [`export_planner!`](crate::export_planner). Each call is stateless: the history carries
//! every earlier call and what the sandbox answered, so a task resumed after a restart gets
//! the same answers. The host runs the chosen tool (a capability operation, through the
//! same routing, scopes and approvals as an API call) and calls again.
//!
//! A planner that asks a model does so with [`crate::http`] (feature `http`): the host sends
//! the request only to hosts its pack declares and the operator grants, and adds the
//! endpoint's credential itself, so the plugin never holds the key.
//!
//! The record and variant types are those of the WIT interface `wharf:plugin/planner`
//! (0.3.0), with the same field names in snake_case.

use crate::PluginError;

pub use crate::__bindings::planner::exports::wharf::plugin::planner::{
    Action, Decision, ModelEndpoint, Step, Task, Tool, ToolCall,
};

/// A planner plugin; [`Planner::next_action`] mirrors the WIT function `next-action`.
pub trait Planner {
    /// The next action for `task`, given the steps already taken (oldest first).
    ///
    /// Errors class the task `planner_error`; use codes a reader can act on
    /// (`http_refused`, `endpoint_error`, `invalid_response`, ...).
    fn next_action(task: Task, history: Vec<Step>) -> Result<Decision, PluginError>;
}

/// Glue used by [`export_planner!`](crate::export_planner); not part of the API.
#[doc(hidden)]
pub mod __export {
    use super::*;
    use crate::__bindings::planner::wharf::plugin::types::PluginError as WitError;

    pub fn next_action<P: Planner + ?Sized>(
        task: Task,
        history: Vec<Step>,
    ) -> Result<Decision, WitError> {
        P::next_action(task, history).map_err(Into::into)
    }
}

/// Exports a type implementing [`Planner`](crate::planner::Planner) as the
/// `wharf:plugin/planner` interface of the component (SDK feature `planner`).
///
/// ```ignore
/// wharf_plugin_sdk::export_planner!(MyPlanner);
/// ```
#[macro_export]
macro_rules! export_planner {
    ($planner:ty) => {
        const _: () = {
            struct __WharfPlannerExport;

            impl $crate::__bindings::planner::exports::wharf::plugin::planner::Guest
                for __WharfPlannerExport
            {
                fn next_action(
                    task: $crate::planner::Task,
                    history: ::std::vec::Vec<$crate::planner::Step>,
                ) -> ::std::result::Result<
                    $crate::planner::Decision,
                    $crate::__bindings::planner::wharf::plugin::types::PluginError,
                > {
                    $crate::planner::__export::next_action::<$planner>(task, history)
                }
            }

            $crate::__bindings::planner::__export_planner_plugin!(
                __WharfPlannerExport with_types_in $crate::__bindings::planner
            );
        };
    };
}
