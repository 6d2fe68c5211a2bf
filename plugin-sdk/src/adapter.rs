//! Capability adapters: typed operations over the sandbox primitives.
//!
//! An adapter is a type implementing [`Adapter`]: [`Adapter::info`] says which
//! capability it provides, and [`Adapter::operations`] registers one typed
//! handler per operation in an [`Operations`] table. Each handler takes a
//! [`Deserialize`] input and returns a [`Serialize`] output; both types
//! implement [`JsonSchema`], which is how `describe()` publishes the JSON Schema
//! of every operation's input and output. Export the type with
//! [`export_adapter!`](crate::export_adapter).
//!
//! What the SDK does for you on `invoke(operation, input)`:
//!
//! * an operation that is not in the table fails with `unknown_operation`
//!   (its message lists the known ones);
//! * input JSON that does not parse, or does not match the input type, fails
//!   with `invalid_input` (not retriable), and the message says what was wrong
//!   and where (`missing field `command` at line 1 column 2`);
//! * the handler's output is serialized to JSON; its errors pass through as they are.
//!
//! [`describe`] and [`invoke`] run the same code natively, so adapters can be
//! unit-tested with `cargo test` without building a component.

use std::borrow::Cow;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::PluginError;

/// A capability adapter. Implement it on a unit struct and export it with
/// [`export_adapter!`](crate::export_adapter).
///
/// ```
/// use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Empty, Operations};
///
/// struct Clock;
///
/// impl Adapter for Clock {
///     fn info() -> AdapterInfo {
///         AdapterInfo::new("clock", "1.0.0", "Tells the time")
///     }
///
///     fn operations(ops: &mut Operations) {
///         ops.add("ping", "Answers `{}`", |_: Empty| Ok(Empty {}));
///     }
/// }
///
/// assert_eq!(wharf_plugin_sdk::adapter::invoke::<Clock>("ping", "{}").unwrap(), "{}");
/// ```
pub trait Adapter {
    /// The capability, version and description published by `describe()`.
    ///
    /// Only `describe()` calls this; `invoke` does not.
    fn info() -> AdapterInfo;

    /// Registers the operations. Called once per `describe()` and per `invoke`,
    /// so keep it to [`Operations::add`] calls.
    fn operations(ops: &mut Operations);
}

/// What an adapter says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// The capability this adapter provides, e.g. `shell`.
    pub capability: String,
    /// Version of the adapter, usually `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// One line for humans.
    pub description: String,
}

impl AdapterInfo {
    /// Builds the info from its three fields.
    pub fn new(
        capability: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            capability: capability.into(),
            version: version.into(),
            description: description.into(),
        }
    }
}

/// The input or output of an operation that carries no data: the JSON object
/// `{}` (unknown fields are refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

type Handler = Box<dyn Fn(&str, &str) -> Result<String, PluginError>>;

struct Entry {
    name: Cow<'static, str>,
    description: Cow<'static, str>,
    hints: OperationHints,
    schemas: fn() -> (String, String),
    handler: Handler,
}

/// What an operation does to the sandbox, published by `describe()` (contract 0.2). The
/// host shows the hints (`GET /v1/packs/{id}`), MCP clients get them as tool annotations
/// (`readOnlyHint`, `destructiveHint`, `idempotentHint`), and the host's policy can reason
/// on them. Set them with [`Operations::read_only`], [`Operations::non_destructive`],
/// [`Operations::idempotent`] or [`Operations::hints`] right after [`Operations::add`].
///
/// The default assumes the worst, like MCP for a tool without annotations: not read-only,
/// destructive, not idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationHints {
    /// Changes nothing in the sandbox: no file written or removed, no process left running.
    /// It may still run commands that only read (`git status`, `grep`).
    pub read_only: bool,
    /// May delete or overwrite data that was there before (meaningless when read-only).
    pub destructive: bool,
    /// Running it again with the same input has no further effect.
    pub idempotent: bool,
}

impl Default for OperationHints {
    fn default() -> Self {
        Self {
            read_only: false,
            destructive: true,
            idempotent: false,
        }
    }
}

impl OperationHints {
    /// Read-only (and so neither destructive nor with effects to repeat: idempotent).
    pub fn read_only() -> Self {
        Self {
            read_only: true,
            destructive: false,
            idempotent: true,
        }
    }
}

/// The table of an adapter's operations, filled by [`Adapter::operations`].
#[derive(Default)]
pub struct Operations {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Operations {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers operation `name` with a typed `handler`.
    ///
    /// The input document is deserialized into `I` (a failure is an
    /// `invalid_input` error naming the problem), the handler runs, and its
    /// `O` is serialized as the output document. The JSON Schemas of `I` (as
    /// deserialized) and `O` (as serialized) are published by `describe()`;
    /// doc comments on their fields become schema descriptions.
    ///
    /// # Panics
    ///
    /// If `name` is already registered (a programming error in the adapter).
    pub fn add<I, O, F>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        description: impl Into<Cow<'static, str>>,
        handler: F,
    ) -> &mut Self
    where
        I: DeserializeOwned + JsonSchema,
        O: Serialize + JsonSchema,
        F: Fn(I) -> Result<O, PluginError> + 'static,
    {
        let name = name.into();
        assert!(
            self.find(&name).is_none(),
            "wharf adapter: operation `{name}` is registered twice"
        );
        self.entries.push(Entry {
            name,
            description: description.into(),
            hints: OperationHints::default(),
            schemas: || (input_schema::<I>(), output_schema::<O>()),
            handler: Box::new(move |operation, input| {
                let input = decode_input::<I>(operation, input)?;
                let output = handler(input)?;
                encode_output(operation, &output)
            }),
        });
        self
    }

    /// Sets the [`OperationHints`] of the operation registered last.
    ///
    /// ```
    /// # use wharf_plugin_sdk::adapter::{Empty, OperationHints, Operations};
    /// let mut ops = Operations::new();
    /// ops.add("status", "Shows the status", |_: Empty| Ok(Empty {}))
    ///     .read_only()
    ///     .add("write", "Writes a file", |_: Empty| Ok(Empty {}))
    ///     .idempotent()
    ///     .add("append", "Appends a line", |_: Empty| Ok(Empty {}))
    ///     .non_destructive();
    /// ```
    ///
    /// # Panics
    ///
    /// If no operation was registered yet (a programming error in the adapter).
    pub fn hints(&mut self, hints: OperationHints) -> &mut Self {
        self.last().hints = hints;
        self
    }

    /// Marks the operation registered last as read-only (see [`OperationHints::read_only`]).
    pub fn read_only(&mut self) -> &mut Self {
        self.hints(OperationHints::read_only())
    }

    /// Marks the operation registered last as idempotent: repeating it with the same input
    /// changes nothing more (writing a file, deleting a path).
    pub fn idempotent(&mut self) -> &mut Self {
        self.last().hints.idempotent = true;
        self
    }

    /// Marks the operation registered last as non-destructive: it adds, but never deletes
    /// or overwrites what was there.
    pub fn non_destructive(&mut self) -> &mut Self {
        self.last().hints.destructive = false;
        self
    }

    fn last(&mut self) -> &mut Entry {
        self.entries
            .last_mut()
            .expect("wharf adapter: set hints right after `Operations::add`")
    }

    /// Names of the registered operations, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.name.as_ref())
    }

    /// Number of registered operations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no operation is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    fn of<A: Adapter + ?Sized>() -> Self {
        let mut ops = Self {
            entries: Vec::with_capacity(8),
        };
        A::operations(&mut ops);
        ops
    }
}

/// One operation as published by `describe()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationInfo {
    /// Operation name, as passed to `invoke`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// JSON Schema (draft 2020-12) of the input document, as JSON text.
    pub input_schema: String,
    /// JSON Schema (draft 2020-12) of the output document, as JSON text.
    pub output_schema: String,
    /// What the operation does to the sandbox.
    pub hints: OperationHints,
}

/// The full self-description of an adapter: what `describe()` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Capability, version and description from [`Adapter::info`].
    pub info: AdapterInfo,
    /// Every operation, in registration order.
    pub operations: Vec<OperationInfo>,
}

/// Runs `describe()` for adapter `A` (what the exported component does).
pub fn describe<A: Adapter + ?Sized>() -> Description {
    let info = A::info();
    let operations = Operations::of::<A>()
        .entries
        .into_iter()
        .map(|entry| {
            let (input_schema, output_schema) = (entry.schemas)();
            OperationInfo {
                name: entry.name.into_owned(),
                description: entry.description.into_owned(),
                input_schema,
                output_schema,
                hints: entry.hints,
            }
        })
        .collect();
    Description { info, operations }
}

/// Runs `invoke(operation, input)` for adapter `A` (what the exported component does).
///
/// ```
/// # use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Empty, Operations};
/// # struct Clock;
/// # impl Adapter for Clock {
/// #     fn info() -> AdapterInfo { AdapterInfo::new("clock", "1.0.0", "") }
/// #     fn operations(ops: &mut Operations) { ops.add("ping", "", |_: Empty| Ok(Empty {})); }
/// # }
/// use wharf_plugin_sdk::adapter::invoke;
///
/// assert_eq!(invoke::<Clock>("ping", "{}").unwrap(), "{}");
/// assert_eq!(invoke::<Clock>("pong", "{}").unwrap_err().code, "unknown_operation");
/// assert_eq!(invoke::<Clock>("ping", "{\"x\":1}").unwrap_err().code, "invalid_input");
/// ```
pub fn invoke<A: Adapter + ?Sized>(operation: &str, input: &str) -> Result<String, PluginError> {
    let ops = Operations::of::<A>();
    match ops.find(operation) {
        Some(entry) => (entry.handler)(operation, input),
        None => {
            let known: Vec<&str> = ops.names().collect();
            let mut err = PluginError::unknown_operation(operation);
            if known.is_empty() {
                err.message.push_str("; this adapter has no operations");
            } else {
                err.message.push_str("; known operations: ");
                err.message.push_str(&known.join(", "));
            }
            Err(err)
        }
    }
}

/// Deserializes an operation's input document, turning every failure into an
/// `invalid_input` error whose message says what was wrong and where.
///
/// Handlers registered with [`Operations::add`] get this for free; it is public
/// for adapters that decode parts of their input themselves.
pub fn decode_input<I: DeserializeOwned>(operation: &str, input: &str) -> Result<I, PluginError> {
    if input.trim().is_empty() {
        return Err(PluginError::invalid_input(format!(
            "invalid input for operation `{operation}`: the input is empty; expected a JSON document"
        )));
    }
    serde_json::from_str(input).map_err(|err| {
        use serde_json::error::Category;
        let what = match err.classify() {
            Category::Data => "does not match the operation's input schema",
            Category::Syntax | Category::Eof => "is not valid JSON",
            Category::Io => "could not be read",
        };
        PluginError::invalid_input(format!(
            "invalid input for operation `{operation}`: the input {what}: {err}"
        ))
    })
}

fn encode_output<O: Serialize>(operation: &str, output: &O) -> Result<String, PluginError> {
    serde_json::to_string(output).map_err(|err| {
        PluginError::internal(format!(
            "cannot serialize the output of operation `{operation}`: {err}"
        ))
    })
}

/// JSON Schema (draft 2020-12) of `T` as deserialized, as JSON text.
pub fn input_schema<T: JsonSchema + ?Sized>() -> String {
    schema_text::<T>(SchemaSettings::draft2020_12().for_deserialize())
}

/// JSON Schema (draft 2020-12) of `T` as serialized, as JSON text.
pub fn output_schema<T: JsonSchema + ?Sized>() -> String {
    schema_text::<T>(SchemaSettings::draft2020_12().for_serialize())
}

fn schema_text<T: JsonSchema + ?Sized>(settings: SchemaSettings) -> String {
    let schema = settings.into_generator().into_root_schema_for::<T>();
    // A schema is a JSON value: serializing it cannot fail.
    serde_json::to_string(&schema).unwrap_or_else(|_| "true".to_owned())
}

/// Glue used by [`export_adapter!`](crate::export_adapter); not part of the API.
#[doc(hidden)]
#[cfg(feature = "adapter")]
pub mod __export {
    use super::Adapter;
    use crate::__bindings::adapter::exports::wharf::plugin::adapter as wit;
    use crate::__bindings::adapter::wharf::plugin::types::PluginError as WitError;

    pub fn describe<A: Adapter + ?Sized>() -> wit::AdapterInfo {
        let description = super::describe::<A>();
        wit::AdapterInfo {
            capability: description.info.capability,
            version: description.info.version,
            description: description.info.description,
            operations: description
                .operations
                .into_iter()
                .map(|op| wit::Operation {
                    name: op.name,
                    description: op.description,
                    input_schema: op.input_schema,
                    output_schema: op.output_schema,
                    hints: wit::OperationHints {
                        read_only: op.hints.read_only,
                        destructive: op.hints.destructive,
                        idempotent: op.hints.idempotent,
                    },
                })
                .collect(),
        }
    }

    pub fn invoke<A: Adapter + ?Sized>(operation: &str, input: &str) -> Result<String, WitError> {
        super::invoke::<A>(operation, input).map_err(Into::into)
    }
}

/// Exports a type implementing [`Adapter`](crate::adapter::Adapter) as the
/// `wharf:plugin/adapter` interface of the component. Use it once, in the
/// plugin crate (a `cdylib`) that enables the SDK's `adapter` feature.
///
/// ```
/// # use wharf_plugin_sdk::adapter::{Adapter, AdapterInfo, Operations};
/// struct MyAdapter;
///
/// impl Adapter for MyAdapter {
///     fn info() -> AdapterInfo {
///         AdapterInfo::new("mine", "0.1.0", "An adapter")
///     }
///
///     fn operations(_ops: &mut Operations) {}
/// }
///
/// wharf_plugin_sdk::export_adapter!(MyAdapter);
/// # fn main() {}
/// ```
#[cfg(feature = "adapter")]
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        const _: () = {
            struct __WharfAdapterExport;

            impl $crate::__bindings::adapter::exports::wharf::plugin::adapter::Guest
                for __WharfAdapterExport
            {
                fn describe()
                -> $crate::__bindings::adapter::exports::wharf::plugin::adapter::AdapterInfo
                {
                    $crate::adapter::__export::describe::<$adapter>()
                }

                fn invoke(
                    operation: ::std::string::String,
                    input: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::string::String,
                    $crate::__bindings::adapter::wharf::plugin::types::PluginError,
                > {
                    $crate::adapter::__export::invoke::<$adapter>(&operation, &input)
                }
            }

            $crate::__bindings::adapter::__export_capability_adapter!(
                __WharfAdapterExport with_types_in $crate::__bindings::adapter
            );
        };
    };
}

/// Exports an adapter; needs the SDK's `adapter` feature.
#[cfg(not(feature = "adapter"))]
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        ::std::compile_error!(
            "wharf_plugin_sdk::export_adapter! needs the `adapter` feature: \
             wharf-plugin-sdk = { ..., features = [\"adapter\"] }"
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct AddInput {
        /// Left operand.
        a: i64,
        b: i64,
    }

    #[derive(Serialize, JsonSchema)]
    struct AddOutput {
        sum: i64,
    }

    struct Calc;

    impl Adapter for Calc {
        fn info() -> AdapterInfo {
            AdapterInfo::new("calc", "0.1.0", "Arithmetic")
        }

        fn operations(ops: &mut Operations) {
            ops.add("add", "Adds two numbers", |i: AddInput| {
                Ok(AddOutput { sum: i.a + i.b })
            })
            .read_only()
            .add("fail", "Always fails", |_: Empty| -> Result<Empty, _> {
                Err(PluginError::new("upstream_busy", "later").retriable())
            })
            .add(
                String::from("echo"),
                String::from("Echoes"),
                |v: serde_json::Value| Ok(v),
            );
        }
    }

    struct Nothing;

    impl Adapter for Nothing {
        fn info() -> AdapterInfo {
            AdapterInfo::new("nothing", "0.0.0", "")
        }

        fn operations(_ops: &mut Operations) {}
    }

    #[test]
    fn invokes_typed_handler() {
        assert_eq!(
            invoke::<Calc>("add", r#"{"a": 2, "b": 40}"#).unwrap(),
            r#"{"sum":42}"#
        );
        assert_eq!(
            invoke::<Calc>("echo", r#"[1, "x", null]"#).unwrap(),
            r#"[1,"x",null]"#
        );
    }

    #[test]
    fn handler_errors_pass_through() {
        let err = invoke::<Calc>("fail", "{}").unwrap_err();
        assert_eq!(err, PluginError::new("upstream_busy", "later").retriable());
    }

    #[test]
    fn missing_field_is_invalid_input() {
        let err = invoke::<Calc>("add", r#"{"a": 1}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(!err.retriable);
        assert!(err.message.contains("missing field `b`"), "{}", err.message);
        assert!(err.message.contains("`add`"), "{}", err.message);
    }

    #[test]
    fn wrong_type_is_invalid_input() {
        let err = invoke::<Calc>("add", r#"{"a": "one", "b": 2}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(
            err.message
                .contains("invalid type: string \"one\", expected i64"),
            "{}",
            err.message
        );
        assert!(err.message.contains("does not match"), "{}", err.message);
    }

    #[test]
    fn unknown_field_is_invalid_input() {
        let err = invoke::<Calc>("add", r#"{"a": 1, "b": 2, "c": 3}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(err.message.contains("unknown field `c`"), "{}", err.message);
    }

    #[test]
    fn syntax_error_is_invalid_input() {
        let err = invoke::<Calc>("add", r#"{"a": 1,"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(err.message.contains("is not valid JSON"), "{}", err.message);
        assert!(err.message.contains("line 1"), "{}", err.message);

        let err = invoke::<Calc>("add", "  ").unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(err.message.contains("empty"), "{}", err.message);
    }

    #[test]
    fn empty_refuses_fields() {
        let err = invoke::<Calc>("fail", r#"{"x": 1}"#).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        let err = invoke::<Calc>("fail", "null").unwrap_err();
        assert_eq!(err.code, "invalid_input");
    }

    #[test]
    fn hints_default_to_the_worst_case() {
        let d = describe::<Calc>();
        assert_eq!(d.operations[0].hints, OperationHints::read_only());
        assert_eq!(
            d.operations[1].hints,
            OperationHints {
                read_only: false,
                destructive: true,
                idempotent: false
            }
        );
        let mut ops = Operations::new();
        ops.add("put", "", |_: Empty| Ok(Empty {}))
            .idempotent()
            .non_destructive();
        let hints = ops.entries[0].hints;
        assert!(hints.idempotent && !hints.destructive && !hints.read_only);
    }

    #[test]
    #[should_panic(expected = "right after")]
    fn hints_need_an_operation() {
        Operations::new().read_only();
    }

    #[test]
    fn unknown_operation_lists_known_ones() {
        let err = invoke::<Calc>("mul", "{}").unwrap_err();
        assert_eq!(err.code, "unknown_operation");
        assert!(!err.retriable);
        assert!(err.message.contains("`mul`"), "{}", err.message);
        assert!(err.message.contains("add, fail, echo"), "{}", err.message);

        let err = invoke::<Nothing>("x", "{}").unwrap_err();
        assert!(err.message.contains("no operations"), "{}", err.message);
    }

    #[test]
    fn describe_publishes_schemas() {
        let d = describe::<Calc>();
        assert_eq!(d.info.capability, "calc");
        let names: Vec<_> = d.operations.iter().map(|op| op.name.as_str()).collect();
        assert_eq!(names, ["add", "fail", "echo"]);

        let add = &d.operations[0];
        assert_eq!(add.description, "Adds two numbers");
        let input: serde_json::Value = serde_json::from_str(&add.input_schema).unwrap();
        assert_eq!(
            input["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(input["type"], "object");
        assert_eq!(input["required"], serde_json::json!(["a", "b"]));
        assert_eq!(input["additionalProperties"], false);
        assert_eq!(input["properties"]["a"]["description"], "Left operand.");
        let output: serde_json::Value = serde_json::from_str(&add.output_schema).unwrap();
        assert_eq!(output["properties"]["sum"]["type"], "integer");

        let empty: serde_json::Value = serde_json::from_str(&d.operations[1].input_schema).unwrap();
        assert_eq!(empty["type"], "object");
        assert_eq!(empty["additionalProperties"], false);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_operation_panics() {
        let mut ops = Operations::new();
        ops.add("x", "", |_: Empty| Ok(Empty {}));
        ops.add("x", "", |_: Empty| Ok(Empty {}));
    }

    #[test]
    fn operations_table_accessors() {
        let ops = Operations::of::<Calc>();
        assert_eq!(ops.len(), 3);
        assert!(!ops.is_empty());
        assert_eq!(format!("{ops:?}"), r#"["add", "fail", "echo"]"#);
    }
}
