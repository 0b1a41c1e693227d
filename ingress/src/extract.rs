//! Extractors whose rejections are problem+json instead of axum's plain text: JSON bodies (400,
//! 413 or 415), path parameters and query strings (400).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
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

/// A JSON body that may be left out: a request with neither a body nor a `Content-Type` gets
/// `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let no_body = !headers.contains_key(axum::http::header::CONTENT_TYPE)
            && !headers.contains_key(axum::http::header::TRANSFER_ENCODING)
            && headers
                .get(axum::http::header::CONTENT_LENGTH)
                .is_none_or(|len| len == "0");
        if no_body {
            return Ok(Self(T::default()));
        }
        JsonBody::from_request(req, state)
            .await
            .map(|JsonBody(value)| Self(value))
    }
}

/// 408 for a body that did not arrive within `SWITCHYARD_BODY_READ_TIMEOUT`.
fn body_timed_out(text: &str) -> Option<ApiError> {
    text.contains(crate::serve::BODY_TIMEOUT).then(|| {
        ApiError::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time (SWITCHYARD_BODY_READ_TIMEOUT)",
        )
    })
}

fn reject(rejection: &JsonRejection) -> ApiError {
    if let Some(timeout) = body_timed_out(&rejection.body_text()) {
        return timeout;
    }
    match rejection.status().as_u16() {
        413 => ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large"),
        415 => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiError::bad_request(format!("the body is not valid: {}", rejection.body_text())),
    }
}

/// `Path<T>` with problem+json rejections.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // No stored id holds U+0000 (PostgreSQL text cannot), so such a path names nothing.
        if parts.uri.path().to_ascii_lowercase().contains("%00") {
            return Err(ApiError::not_found("no resource has this id"));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e| ApiError::bad_request(format!("the path is not valid: {}", e.body_text())))
    }
}

/// `Query<T>` with problem+json rejections.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // PostgreSQL text cannot hold NUL: refuse it here rather than fail in a query.
        let query = parts.uri.query().unwrap_or_default();
        if url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::bad_request(
                "the query string may not contain the NUL character (%00)",
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|e| {
                ApiError::bad_request(format!("the query string is not valid: {}", e.body_text()))
            })
    }
}

/// A raw body, with the rejection as problem+json: 413 over the size limit, else 400.
pub fn body_bytes(
    bytes: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    bytes.map_err(|e| {
        if let Some(timeout) = body_timed_out(&e.body_text()) {
            return timeout;
        }
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
        } else {
            ApiError::bad_request(format!("the body could not be read: {e}"))
        }
    })
}

/// The header that makes a create idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` a request sent, checked: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A trigger call's body: empty means `{}`; otherwise a JSON object, with no NUL anywhere.
pub fn parse_body(bytes: &axum::body::Bytes) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    let body: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    if switchyard_common::catalog::contains_nul(&body) {
        return Err(ApiError::bad_request(
            "text may not contain the NUL character (\\u0000)",
        ));
    }
    Ok(body)
}
