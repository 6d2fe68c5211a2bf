//! The plugin-sdk rustdoc example, as a real crate.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
use wharf_plugin_sdk::{PluginError, sandbox};

/// Input of `greet`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GreetInput {
    /// Who to greet.
    name: String,
}

/// Output of `greet`.
#[derive(Serialize, JsonSchema)]
struct GreetOutput {
    /// What `echo` printed in the sandbox.
    greeting: String,
}

fn greet(input: GreetInput) -> Result<GreetOutput, PluginError> {
    if input.name.trim().is_empty() {
        return Err(PluginError::invalid_input("`name` must not be empty"));
    }
    wharf_plugin_sdk::info!("greeting {}", input.name);
    let out = sandbox::Command::new("echo")
        .arg(format!("Hello, {}!", input.name))
        .timeout(Duration::from_secs(5))
        .output()?;
    if !out.success() {
        return Err(PluginError::new("command_failed", out.stderr_lossy()));
    }
    Ok(GreetOutput {
        greeting: out.stdout_lossy().trim_end().to_owned(),
    })
}

struct Greeter;

impl Adapter for Greeter {
    fn info() -> AdapterInfo {
        AdapterInfo::new(
            "greeter",
            env!("CARGO_PKG_VERSION"),
            "Greets people from the sandbox",
        )
    }

    fn operations(ops: &mut Operations) {
        ops.add("greet", "Greets `name` with `echo`", greet);
    }
}

wharf_plugin_sdk::export_adapter!(Greeter);

#[cfg(test)]
mod tests {
    use super::Greeter;
    use wharf_plugin_sdk::adapter::{describe, invoke};

    #[test]
    fn describes_greet_and_rejects_empty_names() {
        assert_eq!(describe::<Greeter>().operations[0].name, "greet");
        assert_eq!(
            invoke::<Greeter>("greet", r#"{"name": " "}"#)
                .unwrap_err()
                .code,
            "invalid_input"
        );
    }
}
