//! Streamed NDJSON export of a project's judgments.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiQuery, Path};
use crate::store::export::{AnnotatorFilter, ExportFormat, export_judgments};
use crate::store::projects::get_project;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{id}/export", get(export))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `trl` (default): {"prompt","chosen","rejected"}; `full`: every judgment with its context.
    #[serde(default)]
    pub format: ExportFormat,
    /// `all` (default), `human` or `ai`.
    #[serde(default)]
    pub annotators: AnnotatorFilter,
}

/// Stream the project's judgments as NDJSON, in the order they were given. Only a few exports stream at
/// once (each holds a database connection while its client reads); beyond them, 503 with Retry-After.
#[utoipa::path(get, path = "/api/v1/projects/{id}/export",
    params(("id" = String, Path, description = "project id"), ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 404),
        (status = 503, description = "too many exports running; retry later")))]
pub async fn export(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let permit = state.exports.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable("too many exports are running; retry in a few seconds".into())
    })?;
    let project = get_project(&state.store, &id).await?;
    let rx = export_judgments(&state.store, &project.id, q.format, q.annotators);
    // The permit lives as long as the body: when the client finishes or goes away the body is dropped,
    // the export's next send fails, and its query ends, giving the connection back.
    let body = ReceiverStream::new(rx).map(move |chunk| {
        let _held = &permit;
        chunk
    });
    let filename = format!("{}-{:?}.jsonl", project.name, q.format).to_lowercase();
    let disposition = format!(
        "attachment; filename=\"{}\"",
        filename.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_"
        )
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
