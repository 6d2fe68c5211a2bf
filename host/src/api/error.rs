//! The JSON error envelope, request ids, and extractors whose rejections
//! speak the same error table.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ErrorCode, WharfError};

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    pub retriable: bool,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// A [`WharfError`] on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub WharfError);

impl From<WharfError> for ApiError {
    fn from(err: WharfError) -> Self {
        Self(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let status = err.code.status();
        if status.is_server_error() {
            tracing::warn!(code = err.code.as_str(), message = %err.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: err.code,
                retriable: err.retriable(),
                message: err.message,
                request_id: current_request_id(),
                retry_after_ms: err.retry_after_ms,
            },
        };
        let upgrade = err.code == ErrorCode::UpgradeRequired;
        let mut response = (status, axum::Json(body)).into_response();
        if upgrade {
            // RFC 9110: a 426 names the protocol to switch to.
            response.headers_mut().insert(
                axum::http::header::UPGRADE,
                HeaderValue::from_static("websocket"),
            );
        }
        if let Some(ms) = err.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `axum::Json` whose rejections are `validation_error` or `payload_too_large`. The size is
/// checked before the content type, so an oversized body is `payload_too_large` whatever its
/// headers say (axum's own extractor looks at the content type first).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_typed = is_json_content_type(req.headers());
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    payload_too_large()
                } else {
                    WharfError::validation(format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        if !json_typed {
            return Err(WharfError::validation(
                "expected a JSON body with `Content-Type: application/json`",
            )
            .into());
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| Json(value))
            .map_err(|rejection: JsonRejection| {
                WharfError::validation(format!("invalid JSON body: {}", rejection.body_text()))
                    .into()
            })
    }
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The one error of a body past `max_body_bytes`, on every route.
pub fn payload_too_large() -> WharfError {
    WharfError::new(
        ErrorCode::PayloadTooLarge,
        "request body is larger than the configured limit (`max_body_bytes`)",
    )
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with `validation_error` rejections.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection: PathRejection| {
                WharfError::validation(rejection.body_text()).into()
            })
    }
}

/// `axum::extract::Query` with `validation_error` rejections.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection: QueryRejection| {
                WharfError::validation(rejection.body_text()).into()
            })
    }
}
