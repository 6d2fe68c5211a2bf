//! Approvals of capability calls: list, read (long-poll), approve, decline.
//! See [`crate::capabilities::approvals`] for who sees and decides what.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::error_set;
use super::error::{ApiResult, Json, Path, Query};
use crate::capabilities::approvals::{Approval, ApprovalPage, ApprovalStatus};
use crate::error::WharfError;
use crate::store::keys::Principal;

error_set!(
    /// Reading an approval: it must exist and be visible to the key.
    ApprovalLookup: NotFound
);
error_set!(
    /// Deciding an approval.
    DecideErrors: Forbidden, NotFound, Conflict, ApprovalExpired
);

/// The largest page of `GET /v1/approvals` (the OpenAPI parameter says the same).
const MAX_APPROVAL_PAGE: usize = 200;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_approvals))
        .routes(routes!(get_approval))
        .routes(routes!(approve))
        .routes(routes!(decline))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<ApprovalStatus>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Approvals, newest first: an admin key sees every owner's, an approver key its owner's,
/// any other key those it asked for.
#[utoipa::path(get, path = "/v1/approvals", params(ListQuery), responses((status = 200, body = ApprovalPage)))]
async fn list_approvals(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<ApprovalPage>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_APPROVAL_PAGE).contains(&limit) {
        return Err(WharfError::validation(format!(
            "`limit` must be within 1..={MAX_APPROVAL_PAGE}"
        ))
        .into());
    }
    Ok(Json(
        state
            .capabilities
            .approvals(&principal, query.status, limit, query.cursor.as_deref())
            .await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Long-poll: answer as soon as the approval is final (succeeded, failed, declined,
    /// expired), or after this many seconds (0 to `[approvals] max_wait_secs`, default 60).
    #[param(minimum = 0, maximum = 3600)]
    wait: Option<u64>,
}

/// One approval with its trail and, once it ran, its result.
#[utoipa::path(get, path = "/v1/approvals/{id}", params(("id" = String, Path), WaitQuery), responses(
    (status = 200, body = Approval),
    ApprovalLookup,
))]
async fn get_approval(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult<Json<Approval>> {
    let wait = query.wait.unwrap_or(0);
    if wait > 3600 {
        return Err(WharfError::validation("`wait` must be within 0..=3600 seconds").into());
    }
    Ok(Json(
        state
            .capabilities
            .approval(&principal, &id, Duration::from_secs(wait))
            .await?,
    ))
}

/// Approves a pending call (a key with the `approver` role of the same owner, not the key
/// that asked; or an admin key). It runs at once, exactly once; poll the approval.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", params(("id" = String, Path)), responses(
    (status = 200, body = Approval),
    DecideErrors,
))]
async fn approve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Approval>> {
    Ok(Json(
        state.capabilities.decide(&principal, &id, true).await?,
    ))
}

/// Declines a pending call (an approver of the same owner, an admin key, or the key that
/// asked, withdrawing it). It never runs.
#[utoipa::path(post, path = "/v1/approvals/{id}/decline", params(("id" = String, Path)), responses(
    (status = 200, body = Approval),
    DecideErrors,
))]
async fn decline(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Approval>> {
    Ok(Json(
        state.capabilities.decide(&principal, &id, false).await?,
    ))
}
