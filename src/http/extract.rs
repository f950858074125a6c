//! Extractors whose rejections speak our JSON error format instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::store::text::{find_nul_in_json, nul_message};

/// A JSON body, parsed whatever the content type says. Malformed JSON is a 400; well-formed JSON of the
/// wrong shape (a missing or unknown field, a wrong type) is a 422 whose message names the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like `ApiJson`, but an empty body means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// Parses a JSON body; a string anywhere in it that holds U+0000 is a 422 naming its field, since the
/// database could not store it (`store::text`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
    })?;
    match find_nul_in_json(bytes) {
        Some(field) => Err(ApiError::Unprocessable(nul_message(&field))),
        None => Ok(value),
    }
}

/// A body that could not be read: over the size limit (413) or broken off.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(
            "request body is over the size limit; nothing was stored, split the file".into(),
        )
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Query parameters; a bad value is a 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// Path parameters; one that cannot be decoded (bad percent-encoding, not UTF-8) is a 400 naming it,
/// in our JSON error format rather than axum's plain text. Named `Path` like axum's on purpose:
/// utoipa's `axum_extras` recognises a `Path<T>` argument by its name and documents the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| Path(p))
            .map_err(|e: PathRejection| match e.status() {
                StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal(e.body_text()),
                _ => ApiError::BadRequest(e.body_text()),
            })
    }
}
