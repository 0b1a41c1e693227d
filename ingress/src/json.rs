//! A JSON body extractor whose rejections are problem+json (400, 413 or 415) instead of axum's
//! plain-text ones.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use switchyard_common::problem::ErrorCode;

use crate::error::ApiError;

/// `Json<T>` with problem+json rejections.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(reject(&rejection)),
        }
    }
}

fn reject(rejection: &JsonRejection) -> ApiError {
    match rejection.status().as_u16() {
        413 => ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large"),
        415 => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiError::bad_request(format!("the body is not valid: {}", rejection.body_text())),
    }
}
