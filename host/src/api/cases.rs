//! Cases: create (answers at once; the work runs in the background), read, list, stop,
//! delete, and the case's run log over HTTP and WebSocket. Scoped to the caller's owner:
//! another owner's case is `not_found`.

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::error_set;
use super::error::{ApiResult, Json, Path, Query};
use crate::cases::{Case, CaseRequest};
use crate::error::{ErrorCode, WharfError};
use crate::jobs::{LogPage, Run};
use crate::store::keys::Principal;

#[derive(utoipa::OpenApi)]
#[openapi(paths(follow_log))]
struct SocketRoutes;

error_set!(
    /// Creating a case.
    CreateErrors: ValidationError, Forbidden, QuotaExceeded, NotFound, DockerApiError
);
error_set!(
    /// Reading a case, its run or its log.
    Lookup: NotFound
);
error_set!(
    /// Stopping or deleting a case.
    LifecycleErrors: NotFound
);
error_set!(
    /// Following a case's log: not a WebSocket request, or no such case.
    SocketErrors: NotFound, UpgradeRequired
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<SocketRoutes as utoipa::OpenApi>::openapi())
        .routes(routes!(create_case, list_cases))
        .routes(routes!(get_case, delete_case))
        .routes(routes!(stop_case))
        .routes(routes!(read_log))
        .routes(routes!(get_run))
        .route("/v1/cases/{id}/logs/stream", get(follow_log))
}

/// Creates a case and answers at once with its `case_id` (status `queued`); the clone,
/// patch, build, start and readiness check run in the background (see `GET
/// /v1/cases/{id}` and its log). With `target` and `version`, the overlays of the active
/// packs that match are applied after the clone; `overlays` names them instead (an unknown
/// name is `not_found`).
#[utoipa::path(post, path = "/v1/cases", request_body = CaseRequest,
    extensions(("x-wharf-outbound" = json!(true))),
    responses((status = 201, body = Case), CreateErrors))]
async fn create_case(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<CaseRequest>,
) -> ApiResult<(StatusCode, Json<Case>)> {
    let case = state.cases.create(&principal, body).await?;
    Ok((StatusCode::CREATED, Json(case)))
}

/// The largest page of `GET /v1/cases` and of a log page.
const MAX_PAGE: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// At most this many, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only cases created before this case (a cursor: the last `case_id` of a page).
    before: Option<String>,
}

fn limit(limit: Option<usize>, default: usize) -> Result<usize, WharfError> {
    match limit.unwrap_or(default) {
        n if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(WharfError::validation(format!(
            "`limit` must be within 1..={MAX_PAGE}"
        ))),
    }
}

/// The caller's cases, newest first.
#[utoipa::path(get, path = "/v1/cases", params(ListQuery),
    responses((status = 200, body = Vec<Case>)))]
async fn list_cases(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Case>>> {
    let limit = limit(query.limit, 100)?;
    Ok(Json(
        state
            .cases
            .list(&principal.owner, query.before.as_deref(), limit)
            .await?,
    ))
}

/// A case: status, error, container, port, access URL, image and phase timings.
#[utoipa::path(get, path = "/v1/cases/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Case), Lookup))]
async fn get_case(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Case>> {
    Ok(Json(state.cases.get(&principal.owner, &id).await?))
}

/// Stops a case (its build if it is being prepared, its container if it runs) and gives
/// its port back. Stopping an ended case changes nothing.
#[utoipa::path(post, path = "/v1/cases/{id}/stop", params(("id" = String, Path)),
    responses((status = 200, body = Case), LifecycleErrors))]
async fn stop_case(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Case>> {
    Ok(Json(state.cases.stop(&principal.owner, &id).await?))
}

/// Stops the case, then removes its image, its run and its log.
#[utoipa::path(delete, path = "/v1/cases/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), LifecycleErrors))]
async fn delete_case(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.cases.delete(&principal.owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The case's run: state, steps (with attempts) and every transition with its reason.
#[utoipa::path(get, path = "/v1/cases/{id}/run", params(("id" = String, Path)),
    responses((status = 200, body = Run), Lookup))]
async fn get_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    state.cases.check_owner(&principal.owner, &id).await?;
    run_of(&state, &id, "case").await
}

/// The run behind a case or a batch task whose owner the caller has checked; `what` names
/// it in a `not_found`.
pub(super) async fn run_of(state: &AppState, id: &str, what: &str) -> ApiResult<Json<Run>> {
    let run = state
        .runs
        .get(id)
        .await?
        .ok_or_else(|| WharfError::not_found(what))?;
    Ok(Json(run))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The first line to read (lines count from 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// At most this many lines (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

impl LogQuery {
    /// The checked offset and line count of a page of a run log (cases and batch tasks).
    pub(super) fn page(&self) -> Result<(i64, i64), WharfError> {
        Ok((
            check_offset(self.offset)?,
            limit(self.limit, MAX_PAGE)? as i64,
        ))
    }
}

/// Lines of the case's log from `offset`: JSON lines `{offset, ts, stream, level, line}`
/// (streams `system`, `clone`, `patch`, `build`, `run`); `next_offset` is where to go on.
#[utoipa::path(get, path = "/v1/cases/{id}/logs", params(("id" = String, Path), LogQuery),
    responses((status = 200, body = LogPage), Lookup))]
async fn read_log(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let (offset, limit) = query.page()?;
    state.cases.check_owner(&principal.owner, &id).await?;
    Ok(Json(state.runs.read_log(&id, offset, limit).await?))
}

fn check_offset(offset: Option<i64>) -> Result<i64, WharfError> {
    match offset.unwrap_or(0) {
        n if n >= 0 => Ok(n),
        _ => Err(WharfError::validation("`offset` must be 0 or more")),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FollowQuery {
    /// The first line to send (lines count from 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// WebSocket: the case's log from `offset` (stored lines, then live ones), one JSON
/// message per line `{offset, ts, stream, level, line}`; when the case's run has ended and
/// every line was sent, `{"end": true, "next_offset": n}` and a close. Reconnect with the
/// last `offset` + 1 to miss nothing.
#[utoipa::path(get, path = "/v1/cases/{id}/logs/stream", params(("id" = String, Path), FollowQuery),
    responses((status = 101, description = "WebSocket upgrade; then log lines"), SocketErrors))]
async fn follow_log(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<FollowQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let offset = check_offset(query.offset)?;
    state.cases.check_owner(&principal.owner, &id).await?;
    let ws = ws.map_err(|rejection| {
        WharfError::new(
            ErrorCode::UpgradeRequired,
            format!("this route is a WebSocket: {}", rejection.body_text()),
        )
    })?;
    let follower = state.runs.follow(&id, offset).await?;
    Ok(ws.on_upgrade(move |socket| send_log(follower, socket)))
}

async fn send_log(mut follower: crate::jobs::LogFollower, mut socket: WebSocket) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let message = match next {
            Ok(Some(line)) => serde_json::to_string(&line).unwrap_or_default(),
            Ok(None) => {
                let end = json!({"end": true, "next_offset": follower.next_offset()});
                let _ = socket.send(Message::Text(end.to_string().into())).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            Err(err) => {
                let error = json!({"error": {"code": err.code.as_str(), "message": err.message}});
                let _ = socket.send(Message::Text(error.to_string().into())).await;
                return;
            }
        };
        if socket.send(Message::Text(message.into())).await.is_err() {
            return;
        }
    }
}
