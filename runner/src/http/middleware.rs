//! Request ids, bearer auth and per-token rate limits.

use std::sync::Arc;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::clock::{Clock, DefaultClock};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::{
    app::App,
    error::{ApiError, REQUEST_ID},
};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Who a request acts for, as the audit log names it: the kind of credential that authorised it
/// (never the credential itself). Set by [`require_token`].
#[derive(Debug, Clone, Copy)]
pub struct Actor(pub &'static str);

/// Gives every request an id (the caller's `X-Request-Id` when it is sane), echoed in the
/// response and in error bodies, and present in the logs of that request.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    // `instrument`, not `span.enter()` held across the await: an entered guard stays on the
    // thread the request was suspended on, so another request there got a parent span that had
    // closed, and tracing panicked on it (found by the API fuzzer).
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req).instrument(span)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Counts and times every request by its route template, and writes the access line: method,
/// route, status, duration, request id (the span of `request_id` carries the id and the path).
/// Probes (`/healthz`, `/readyz`, `/metrics`) log at debug so they do not drown the rest.
pub async fn observe(State(metrics): State<Arc<crate::metrics::Metrics>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or("unmatched");
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    metrics.http_requests.with_label_values(&[route, method.as_str(), &status.to_string()]).inc();
    metrics.http_request_seconds.with_label_values(&[route, method.as_str()]).observe(elapsed.as_secs_f64());
    let ms = elapsed.as_secs_f64() * 1000.0;
    if matches!(route, "/healthz" | "/readyz" | "/metrics") {
        tracing::debug!(target: "access", %method, route, status, ms, "request");
    } else {
        tracing::info!(target: "access", %method, route, status, ms, "request");
    }
    resp
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so neither the length nor a prefix of the token leaks through timing.
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which token a request came with (a digest's prefix, never the token): the key of per-token
/// limits beyond the request rate (`POST /v1/runs`).
#[derive(Debug, Clone)]
pub struct TokenKey(pub String);

/// Requires `Authorization: Bearer <RUNNER_API_TOKEN>`, then applies the token's rate limit.
pub async fn require_token(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    // Relayed by another runner of the fleet, its signature checked (`fleet::route`): that
    // runner authenticated the client (a bearer token, or an operator's dashboard cookie).
    if req.extensions().get::<super::fleet::Relayed>().is_some() {
        req.extensions_mut().insert(Actor("fleet-relay"));
        return next.run(req).await;
    }
    let expected = app.settings.api_token.as_ref().expect("token resolved at launch");
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, t)| t))
        .map(str::trim);
    let Some(token) = presented.filter(|t| constant_time_eq(t.as_bytes(), expected.expose().as_bytes())) else {
        return ApiError::unauthorized().into_response();
    };
    let key = hex::encode(&Sha256::digest(token.as_bytes())[..8]);
    if let Err(not_until) = app.rate_limiter.check_key(&key) {
        app.metrics.rejected_requests.with_label_values(&["rate_limit"]).inc();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return ApiError::rate_limited(wait.as_secs_f64().ceil() as u64).into_response();
    }
    req.extensions_mut().insert(Actor("api-token"));
    req.extensions_mut().insert(TokenKey(key));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, routing::get, Router};
    use tower::ServiceExt;

    /// Requests suspended and resumed on other worker threads, with a subscriber that tracks
    /// spans: each request's span must be its own, never one left entered by another request.
    #[test]
    fn a_request_span_is_never_left_entered_on_a_worker_thread() {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&dispatch)))
            .build()
            .unwrap();
        runtime.block_on(async {
            let handler = || async {
                for _ in 0..3 {
                    // A timer's wake-up resumes the request on whichever worker is free.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                tracing::info_span!("inner").in_scope(|| "ok")
            };
            let app = Router::new().route("/", get(handler)).layer(axum::middleware::from_fn(super::request_id));
            for _round in 0..3 {
                let requests: Vec<_> = (0..2000)
                    .map(|_| {
                        let app = app.clone();
                        tokio::spawn(async move { app.oneshot(Request::new(Body::empty())).await.unwrap().status() })
                    })
                    .collect();
                for r in requests {
                    assert!(r.await.expect("a request panicked").is_success());
                }
            }
        });
    }
}
