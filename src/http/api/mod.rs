//! The REST API under /api/v1: one module per resource, each with its own router.

pub mod export;
pub mod generate;
pub mod items;
pub mod judges;
pub mod leases;
pub mod members;
pub mod projects;
pub mod quality;
pub mod runs;
pub mod users;

use axum::Router;

use super::AppState;
use crate::engine::active_loop::ActiveLoop;
use crate::http::error::{ApiError, ApiResult};

/// The OpenAPI tag of the model side (runs, generate, judges). utoipa would name a tag after the
/// handler's module; these handlers kept the one they had when they shared `api::training`, so that the
/// published document did not change when the module was split.
const TAG: &str = "api::training";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(projects::router())
        .merge(items::router(state))
        .merge(leases::router())
        .merge(export::router())
        .merge(users::router())
        .merge(runs::router())
        .merge(generate::router())
        .merge(judges::router())
        .merge(quality::router())
        .merge(members::router())
}

/// The active loop, when it has a model: what training and generation need.
fn active_loop(state: &AppState) -> ApiResult<&ActiveLoop> {
    state
        .active
        .as_ref()
        .filter(|l| l.has_model())
        .ok_or_else(|| {
            ApiError::Conflict("no model is loaded: start the server with --model PATH".into())
        })
}
