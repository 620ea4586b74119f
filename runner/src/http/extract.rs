//! Extractors whose rejections are our JSON errors instead of axum's plain text.

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        FromRequest, FromRequestParts, OptionalFromRequest, Request,
    },
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The body limit of the route a request is on, set beside its `DefaultBodyLimit` so a 413 can
/// name it (and the setting behind it).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize, pub &'static str);

fn too_large(limit: Option<BodyLimit>) -> ApiError {
    let message = match limit {
        Some(BodyLimit(n, setting)) => format!("the request body is over this route's limit of {n} bytes ({setting})"),
        None => "the request body is over the size limit".to_string(),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
}

/// `Json<T>` with JSON errors: 400 for malformed JSON, 422 for the wrong shape or types,
/// 413 for a body over the limit, 415 without a JSON content type.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().copied();
        match <axum::Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large(limit))
            }
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `Option<ApiJson<T>>`: no body (no `Content-Type`) is `None`; a body is read as [`ApiJson`].
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if !req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

/// A JSON body read the same way as [`ApiJson`] reads one, from bytes already taken.
pub fn json_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    axum::Json::<T>::from_bytes(bytes).map(|axum::Json(v)| v).map_err(json_rejection)
}

/// serde names the Rust type it expected (`expected struct GitSource`): say what it is instead.
fn without_type_names(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(at) = rest.find("expected struct ").or_else(|| rest.find("expected enum ")) {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (word, said) = if after.starts_with("expected struct ") {
            ("expected struct ", "expected an object")
        } else {
            ("expected enum ", "expected one of the allowed values")
        };
        out.push_str(said);
        let name = &after[word.len()..];
        let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(name.len());
        rest = &name[end..];
    }
    out.push_str(rest);
    out
}

pub fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => {
            let text = e.body_text();
            let detail = text.split_once("target type: ").map(|(_, d)| d.to_string()).unwrap_or(text);
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {detail}"))
        }
        JsonRejection::JsonDataError(e) => {
            // axum's text leads with "Failed to deserialize the JSON body into the target type";
            // what follows (the field path and serde's reason) is what the caller needs.
            let text = e.body_text();
            let detail = text.split_once("target type: ").map(|(_, d)| d.to_string()).unwrap_or(text);
            ApiError::invalid(
                "invalid_body",
                format!("the body's fields are not as expected: {}", without_type_names(&detail)),
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is over the size limit")
        }
        other => ApiError::bad_request("unreadable_body", other.body_text()),
    }
}

/// `Query<T>` with a JSON 400 on bad parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request("invalid_query", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// The raw body, with a JSON 413 when it is over the route's limit.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().copied();
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(ApiBytes(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(limit)),
            Err(e) => Err(ApiError::bad_request("unreadable_body", e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serdes_rust_type_names_become_words() {
        assert_eq!(
            super::without_type_names("git: invalid type: integer `1`, expected struct GitSource at line 1 column 9"),
            "git: invalid type: integer `1`, expected an object at line 1 column 9"
        );
        assert_eq!(super::without_type_names("expected enum Runtime"), "expected one of the allowed values");
    }
}
