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

/// `Json<T>` with JSON errors: 400 for malformed JSON, 422 for the wrong shape or types (or a
/// body that is not an object), 413 for a body over the limit, 415 without a JSON content type.
pub struct ApiJson<T>(pub T);

/// `application/json` or `application/<anything>+json`, parameters aside (as axum's `Json`).
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        json_from_bytes(&bytes).map(ApiJson)
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
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
///
/// Every body of this API is a JSON object. serde would also read a struct from an array of its
/// fields in order (`[null, null]`), a form no caller means and the document does not describe.
pub fn json_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = axum::Json::<T>::from_bytes(bytes).map(|axum::Json(v)| v).map_err(json_rejection)?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("invalid_body", "the body must be a JSON object"));
    }
    Ok(value)
}

/// A `limit` query parameter: `default` when not given, else 1 to `max` (400 `invalid_query`).
pub fn limit_param<N: Into<u64> + Copy>(given: Option<N>, default: u64, max: u64) -> Result<u64, ApiError> {
    match given.map(Into::into) {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request("invalid_query", format!("limit {n} is not between 1 and {max}"))),
    }
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
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
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

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        #[serde(default)]
        a: Option<String>,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn a_body_is_a_json_object_never_an_array_of_its_fields() {
        // Found by the API fuzzer: `[null, null]` was read as `{}` and changed an exercise.
        for body in ["[null, null]", "[]", " [\"x\"]"] {
            let e = super::json_from_bytes::<Body>(body.as_bytes()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (422, "invalid_body"), "{body}");
        }
        assert!(super::json_from_bytes::<Body>(b" {\"a\": \"x\"}").is_ok());
        assert_eq!(super::json_from_bytes::<Body>(b"[nul").unwrap_err().code, "malformed_json");
    }

    #[test]
    fn a_limit_outside_its_range_is_refused() {
        // Found by the API fuzzer: `limit=2147483648` was clamped and answered 200.
        assert_eq!(super::limit_param::<u32>(None, 100, 1000).unwrap(), 100);
        assert_eq!(super::limit_param(Some(1000u32), 100, 1000).unwrap(), 1000);
        for n in [0u32, 1001, u32::MAX] {
            assert_eq!(super::limit_param(Some(n), 100, 1000).unwrap_err().code, "invalid_query");
        }
    }
}
