//! The REST API under /api/v1: one module per resource, each with its own router.

pub mod export;
pub mod items;
pub mod leases;
pub mod projects;
pub mod training;
pub mod users;

use axum::Router;

use super::AppState;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(projects::router())
        .merge(items::router(state))
        .merge(leases::router())
        .merge(export::router())
        .merge(users::router())
        .merge(training::router())
}
