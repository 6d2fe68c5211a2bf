//! Overlays of the active packs, and which of them apply to a target version.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::contract::error_set;
use super::error::{ApiResult, Json};
use crate::overlays::{self, OverlayInfo, OverlayPlan, PlanRequest};

error_set!(
    /// A plan: the target and version must be well-formed.
    PlanErrors: ValidationError
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_overlays))
        .routes(routes!(plan_overlays))
}

/// Every overlay the active packs carry (pack id and version with each), in the order they
/// apply: by pack id, then overlay id. A new pack generation changes this list at once.
#[utoipa::path(get, path = "/v1/overlays", responses((status = 200, body = Vec<OverlayInfo>)))]
async fn list_overlays(State(state): State<AppState>) -> Json<Vec<OverlayInfo>> {
    let set = state.packs.snapshot();
    Json(
        overlays::catalog(&set)
            .into_iter()
            .map(|(info, _)| info)
            .collect(),
    )
}

/// Which overlays of the active packs match `target` at `version` (the ones a case of it would
/// get), and for every other overlay why not: another target, or a version outside its range.
#[utoipa::path(post, path = "/v1/overlays/plan", request_body = PlanRequest, responses(
    (status = 200, body = OverlayPlan),
    PlanErrors,
))]
async fn plan_overlays(
    State(state): State<AppState>,
    Json(body): Json<PlanRequest>,
) -> ApiResult<Json<OverlayPlan>> {
    let set = state.packs.snapshot();
    let (plan, _) = overlays::plan(overlays::catalog(&set), &body.target, &body.version)?;
    Ok(Json(plan))
}
