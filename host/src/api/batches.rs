//! Batches: submit (JSONL or a JSON array), read with counts, list tasks, cancel, export the
//! trajectories as JSONL; and one task's trajectory. Scoped to the caller's owner: another
//! owner's batch or task is `not_found`.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::cases::LogQuery;
use super::contract::error_set;
use super::error::{ApiResult, Json, Path, Query};
use crate::batches::export::Trajectory;
use crate::batches::spec::TaskInput;
use crate::batches::{Batch, BatchOptions, ErrorClass, ExportFormat, Side, Task};
use crate::error::{ErrorCode, WharfError};
use crate::jobs::{LogPage, Run, RunState};
use crate::store::batches::TaskFilter;
use crate::store::keys::Principal;

error_set!(
    /// Submitting a batch.
    SubmitErrors: PayloadTooLarge, BatchInvalid
);
error_set!(
    /// Reading a batch, its tasks, its export or a trajectory.
    Lookup: NotFound
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit))
        .routes(routes!(get_batch))
        .routes(routes!(list_tasks))
        .routes(routes!(cancel))
        .routes(routes!(export))
        .routes(routes!(trajectory))
        .routes(routes!(task_run))
        .routes(routes!(task_log))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Refuse the whole batch (`batch_invalid`) when any line is invalid.
    strict: Option<bool>,
    /// Keep the sandbox of a failed task for inspection instead of deleting it.
    keep_on_failure: Option<bool>,
    /// Reuse the trajectory of an earlier succeeded task with the same normalised spec and
    /// pack versions (yours only), marked `cache_hit`, instead of running it again.
    cache: Option<bool>,
}

/// Submits a batch: one task per line (JSONL), or a JSON array of tasks. Valid tasks are
/// queued at once; invalid lines are listed in `invalid_lines` by number (blank lines
/// count) and do not run. A duplicate `task_id` is invalid on every line after the first.
/// The body is bounded by `[batches] max_body_bytes`.
#[utoipa::path(post, path = "/v1/batches", params(SubmitQuery),
    request_body(content(
        (String = "application/x-ndjson"),
        (Vec<TaskInput> = "application/json"),
    )),
    responses((status = 201, body = Batch), SubmitErrors))]
async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<SubmitQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Batch>)> {
    let limit = state.batches.config().max_body_bytes;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|err| WharfError::validation(format!("reading the body: {err}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(WharfError::new(
                ErrorCode::PayloadTooLarge,
                format!("the batch body is larger than {limit} bytes ([batches] max_body_bytes)"),
            )
            .into());
        }
        bytes.extend_from_slice(&chunk);
    }
    let options = BatchOptions {
        strict: query.strict.unwrap_or(false),
        keep_on_failure: query.keep_on_failure.unwrap_or(false),
        cache: query.cache.unwrap_or(false),
    };
    let batch = state.batches.submit(&principal, &bytes, options).await?;
    Ok((StatusCode::CREATED, Json(batch)))
}

/// A batch: its status, tasks by status, failed tasks by error class and side, and the
/// lines refused at submission.
#[utoipa::path(get, path = "/v1/batches/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Batch), Lookup))]
async fn get_batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    Ok(Json(state.batches.get(&principal.owner, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    status: Option<RunState>,
    error_class: Option<ErrorClass>,
    side: Option<Side>,
    task_type: Option<String>,
    /// Only tasks after this line (a cursor: the last `line` of a page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The batch's tasks in line order, filtered by status, error class, side or task type.
#[utoipa::path(get, path = "/v1/batches/{id}/tasks", params(("id" = String, Path), TasksQuery),
    responses((status = 200, body = Vec<Task>), Lookup))]
async fn list_tasks(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<TasksQuery>,
) -> ApiResult<Json<Vec<Task>>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(WharfError::validation("`limit` must be within 1..=1000").into());
    }
    let after_line = query.after.unwrap_or(0);
    if after_line < 0 {
        return Err(WharfError::validation("`after` must be 0 or more").into());
    }
    let filter = TaskFilter {
        status: query.status.map(RunState::as_str),
        error_class: query.error_class.map(ErrorClass::as_str),
        side: query.side.map(Side::as_str),
        task_type: query.task_type.as_deref(),
        after_line,
        limit,
    };
    Ok(Json(
        state.batches.tasks(&principal.owner, &id, &filter).await?,
    ))
}

/// Cancels the batch: queued tasks end `cancelled`, running ones are stopped (their
/// sandboxes deleted) and end `cancelled`; ended tasks keep their end.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = Batch), Lookup))]
async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    Ok(Json(state.batches.cancel(&principal.owner, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `wharf` (default, schema `wharf.trajectory.v1`), `messages` (`wharf.messages.v1`) or
    /// `atif` (`ATIF-v1.7`).
    format: Option<ExportFormat>,
}

/// Every task's trajectory, one JSON object per line in line order, streamed.
#[utoipa::path(get, path = "/v1/batches/{id}/export", params(("id" = String, Path), ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = Trajectory,
        description = "one trajectory (or messages record) per line"), Lookup))]
async fn export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    state.batches.check_batch(&principal.owner, &id).await?;
    let stream = state
        .batches
        .export(id, query.format.unwrap_or_default())
        .map(|chunk| chunk.map_err(|err| std::io::Error::other(err.message)));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|err| WharfError::internal(err.to_string()).into())
}

/// A task's trajectory: every step with its action, params, observation, success, error
/// class and timing; the task's outcome, planner, pack versions, profile and image digest.
#[utoipa::path(get, path = "/v1/tasks/{id}/trajectory", params(("id" = String, Path)),
    responses((status = 200, body = Trajectory), Lookup))]
async fn trajectory(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Trajectory>> {
    Ok(Json(state.batches.trajectory(&principal.owner, &id).await?))
}

/// The task's run: its state, the `attempt` step with its attempts (infrastructure retries),
/// every transition with its reason (a restart shows as `running -> queued`), and its log size.
#[utoipa::path(get, path = "/v1/tasks/{id}/run", params(("id" = String, Path)),
    responses((status = 200, body = Run), Lookup))]
async fn task_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    state.batches.check_task(&principal.owner, &id).await?;
    super::cases::run_of(&state, &id, "task").await
}

/// Lines of the task's run log from `offset` (`{offset, ts, stream, level, line}`): each
/// attempt's sandbox, infrastructure retries with their reason and wait, the end.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", params(("id" = String, Path), LogQuery),
    responses((status = 200, body = LogPage), Lookup))]
async fn task_log(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let (offset, limit) = query.page()?;
    state.batches.check_task(&principal.owner, &id).await?;
    Ok(Json(state.runs.read_log(&id, offset, limit).await?))
}
