//! The rules every operation of `/openapi.json` follows, applied once to the
//! whole document after all routes are merged, so a route added later gets
//! them without doing anything:
//!
//! * an operation behind the API-key check lists `401 unauthorized`;
//! * one with parameters or a request body lists `400 validation_error` (the
//!   extractors reject a bad path, query, header or body with it);
//! * one with a JSON request body lists `413 payload_too_large` (the body limit);
//! * every operation lists `500 internal_error`;
//! * every error response (4xx, 5xx) carries the shared [`ErrorBody`] envelope;
//! * a parameter's schema does not admit `null` (an optional `Option<T>`
//!   parameter is absent, never null: a query string has no null).
//!
//! What only some routes answer (404, 409, 503, ...) stays on the route's own
//! `#[utoipa::path]`; schemathesis (`tests/system/api_contract.rs`) finds any
//! status a route answers and does not list.
//!
//! [`ErrorBody`]: super::error::ErrorBody

use std::collections::BTreeMap;

use utoipa::openapi::path::{Operation, Parameter, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};

use crate::error::ErrorCode;

/// Operation extension marking a route that sends requests out of the
/// machine (e.g. probes): the contract run leaves such routes out, so that
/// fuzzing never reaches another host.
pub const SENDS_OUTBOUND: &str = "x-wharf-outbound";

const JSON: &str = "application/json";

/// Adds the common responses to every operation of a merged document.
pub fn complete(mut openapi: OpenApi) -> OpenApi {
    let secured_by_default = openapi
        .security
        .as_ref()
        .is_some_and(|requirements| requires_a_key(requirements));
    for item in openapi.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            add_common_responses(operation, secured_by_default);
            for parameter in operation.parameters.iter_mut().flatten() {
                never_null(parameter);
            }
        }
    }
    openapi
}

fn requires_a_key(requirements: &[SecurityRequirement]) -> bool {
    // `security(())` on a route is one empty requirement: no key needed.
    requirements
        .iter()
        .all(|requirement| *requirement != SecurityRequirement::default())
        && !requirements.is_empty()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn never_null(parameter: &mut Parameter) {
    let Some(RefOr::T(schema)) = parameter.schema.as_mut() else {
        return;
    };
    match schema {
        Schema::Object(object) => {
            if let SchemaType::Array(types) = &mut object.schema_type {
                types.retain(|kind| *kind != Type::Null);
                if let [single] = types.as_slice() {
                    object.schema_type = SchemaType::Type(single.clone());
                }
            }
        }
        Schema::OneOf(one_of) => {
            one_of.items.retain(|item| {
                !matches!(item, RefOr::T(Schema::Object(object))
                    if object.schema_type == SchemaType::Type(Type::Null))
            });
            if one_of.items.len() == 1 {
                parameter.schema = one_of.items.pop();
            }
        }
        _ => {}
    }
}

fn add_common_responses(operation: &mut Operation, secured_by_default: bool) {
    let secured = match &operation.security {
        Some(requirements) => requires_a_key(requirements),
        None => secured_by_default,
    };
    let has_inputs = operation
        .parameters
        .as_ref()
        .is_some_and(|parameters| !parameters.is_empty())
        || operation.request_body.is_some();
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key(JSON));
    let responses = &mut operation.responses.responses;
    let mut add = |code: ErrorCode| {
        responses
            .entry(code.status().as_u16().to_string())
            .or_insert_with(|| error_response(&[code]).into());
    };
    if secured {
        add(ErrorCode::Unauthorized);
    }
    if has_inputs {
        add(ErrorCode::ValidationError);
    }
    if json_body {
        add(ErrorCode::PayloadTooLarge);
    }
    add(ErrorCode::InternalError);
    for (status, response) in responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (is_error, response)
            && response.content.is_empty()
        {
            response.content.insert(JSON.into(), error_content());
        }
    }
}

/// A response carrying the error envelope, described by the codes it may hold.
pub fn error_response(codes: &[ErrorCode]) -> Response {
    let description = codes
        .iter()
        .map(|code| format!("`{}`: {}", code.as_str(), code.description()))
        .collect::<Vec<_>>()
        .join(" ");
    ResponseBuilder::new()
        .description(description)
        .content(JSON, error_content())
        .build()
}

/// Error responses for `codes`, one per HTTP status (codes that share a
/// status are described together), for a route's `responses(...)`.
pub fn error_responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        by_status
            .entry(code.status().as_u16())
            .or_default()
            .push(*code);
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), error_response(&codes).into()))
        .collect()
}

/// Declares a type naming the error codes some routes may answer, to list in
/// their `#[utoipa::path(responses(...))]`; the descriptions come from the
/// error table. `error_set!(SandboxLookup: NotFound);`
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident: $($code:ident),+ $(,)?) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::api::contract::error_responses(&[$($crate::error::ErrorCode::$code),+])
            }
        }
    };
}
pub(crate) use error_set;

fn error_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build()
}

/// `fields` (an object schema) where exactly one of `names` must be present:
/// `allOf: [fields, oneOf: [{required: [name]}, ...]]`.
pub fn exactly_one_of(fields: RefOr<Schema>, names: &[&str]) -> RefOr<Schema> {
    let alternatives = names.iter().fold(OneOfBuilder::new(), |one_of, name| {
        one_of.item(ObjectBuilder::new().required(*name))
    });
    RefOr::T(Schema::AllOf(
        AllOfBuilder::new().item(fields).item(alternatives).build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_codes(doc: &serde_json::Value, path: &str, method: &str) -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_operation_gets_the_common_error_responses() {
        let doc = serde_json::to_value(super::super::openapi()).unwrap();
        // Secured, no inputs.
        assert_eq!(
            status_codes(&doc, "/v1/packs", "get"),
            ["200", "401", "500"]
        );
        // Public, no inputs: no 401, no 400.
        assert_eq!(status_codes(&doc, "/healthz", "get"), ["200", "500"]);
        // JSON body: 400 and 413 as well.
        let keys = status_codes(&doc, "/v1/keys", "post");
        for status in ["400", "401", "413", "500"] {
            assert!(
                keys.iter().any(|s| s == status),
                "POST /v1/keys lacks {status}: {keys:?}"
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"][JSON]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status} does not carry the error envelope"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn probes_are_marked_as_sending_requests_out() {
        // The mark is spelled out in `#[utoipa::path]` (it takes no constant).
        let doc = serde_json::to_value(super::super::openapi()).unwrap();
        for path in ["/v1/probes", "/v1/targets"] {
            assert_eq!(
                doc["paths"][path]["post"][SENDS_OUTBOUND], true,
                "POST {path}"
            );
        }
    }

    #[test]
    fn a_route_keeps_its_own_description_of_a_common_status() {
        let doc = serde_json::to_value(super::super::openapi()).unwrap();
        let described = &doc["paths"]["/v1/sandboxes/{id}/files/{path}"]["get"]["responses"]["400"];
        assert!(
            described["description"]
                .as_str()
                .unwrap()
                .contains("invalid_path"),
            "{described}"
        );
    }
}
