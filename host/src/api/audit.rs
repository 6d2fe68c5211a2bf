//! The audit log of capability calls: owner-scoped (admin keys see every owner).

use axum::Extension;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiResult, Json, Query};
use crate::error::WharfError;
use crate::store::audit::{AuditFilter, AuditRecord};
use crate::store::keys::Principal;

/// The largest page of `GET /v1/audit` (the OpenAPI parameter says the same).
const MAX_AUDIT_PAGE: usize = 500;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// As called (`shell`, `shell@0.1`; `sandbox` for direct execs).
    #[param(max_length = 160)]
    capability: Option<String>,
    #[param(max_length = 128)]
    operation: Option<String>,
    /// `ok`, `pending_approval`, or an error code.
    #[param(max_length = 64)]
    outcome: Option<String>,
    /// A sandbox id.
    #[param(max_length = 128)]
    sandbox: Option<String>,
    /// Only calls at or after this time (RFC 3339).
    since: Option<String>,
    /// Only calls before this time (RFC 3339).
    until: Option<String>,
    /// Admin keys only: one owner's rows.
    #[param(max_length = 128)]
    owner: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    items: Vec<AuditRecord>,
    /// Pass as `cursor` for older rows; null on the last page.
    next_cursor: Option<String>,
}

fn parse_time(name: &str, text: Option<&str>) -> Result<Option<i64>, WharfError> {
    text.map(|text| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| WharfError::validation(format!("`{name}` must be an RFC 3339 time")))
    })
    .transpose()
}

/// Capability calls (and direct execs), newest first: the caller's owner's, or every
/// owner's for an admin key. Kept `[audit] retention_secs`, at most `[audit] max_rows`.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = AuditPage)))]
async fn list_audit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(
            WharfError::validation(format!("`limit` must be within 1..={MAX_AUDIT_PAGE}")).into(),
        );
    }
    let before_seq = query
        .cursor
        .as_deref()
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| WharfError::validation("cursor is not one this server gave"))
        })
        .transpose()?;
    let filter = AuditFilter {
        owner: query.owner.as_deref(),
        capability: query.capability.as_deref(),
        operation: query.operation.as_deref(),
        outcome: query.outcome.as_deref(),
        sandbox_id: query.sandbox.as_deref(),
        since_ms: parse_time("since", query.since.as_deref())?,
        until_ms: parse_time("until", query.until.as_deref())?,
        before_seq,
        limit: limit + 1,
    };
    let mut items = state.capabilities.audit(&principal, filter).await?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|row| row.seq.to_string())
    } else {
        None
    };
    Ok(Json(AuditPage { items, next_cursor }))
}
