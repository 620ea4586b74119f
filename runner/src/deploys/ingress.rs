//! The ingress: `RUNNER_INGRESS_LISTEN` reverse-proxies a request whose `Host` is an app's host to
//! the healthy containers of its current version (published on 127.0.0.1). A deploy swaps the
//! backends in one step and drains the old ones before stopping them; a backend that refuses a
//! connection is skipped for the next, so a deploy or a rollback loses no request.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;

pub struct Backend {
    pub addr: SocketAddr,
    pub container: String,
}

pub struct Route {
    pub app: String,
    pub backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    /// Requests that took this route and are not done yet: from the route lookup (under the
    /// routes lock, so a swap cannot slip between) to the last byte of the response body.
    in_flight: AtomicUsize,
}

/// One request's hold on its route; dropped when the response body ends (or the request fails).
struct InFlight(Arc<Route>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Ingress {
    routes: RwLock<HashMap<String, Arc<Route>>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

const MAX_BODY: usize = 16 * 1024 * 1024;
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"];

impl Default for Ingress {
    fn default() -> Self {
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build_http();
        Ingress { routes: RwLock::new(HashMap::new()), client }
    }
}

impl Ingress {
    /// Points `host` at these backends at once; returns the route it replaced.
    pub fn set(&self, host: &str, app: &str, backends: Vec<(SocketAddr, String)>) -> Option<Arc<Route>> {
        let route = Arc::new(Route {
            app: app.to_string(),
            backends: backends.into_iter().map(|(addr, container)| Arc::new(Backend { addr, container })).collect(),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        self.routes.write().expect("lock").insert(host.to_ascii_lowercase(), route)
    }

    pub fn route(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.read().expect("lock").get(&host.to_ascii_lowercase()).cloned()
    }

    /// The host's route, counted in flight before the lock is released: once `set` has swapped
    /// a route, nobody can take the old one any more, and everybody who took it is counted.
    fn enter(&self, host: &str) -> Option<InFlight> {
        let routes = self.routes.read().expect("lock");
        let route = routes.get(&host.to_ascii_lowercase())?.clone();
        route.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(route))
    }

    /// Forgets every host of an app (its definition changed host, or it was removed).
    pub fn remove_app(&self, app: &str) {
        self.routes.write().expect("lock").retain(|_, r| r.app != app);
    }

    /// Waits until no request that took the route is still in flight, response bodies included
    /// (or the deadline passes).
    pub async fn drain(route: &Route, within: Duration) {
        let deadline = Instant::now() + within;
        while route.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(forward).with_state(self.clone())
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn forward(State(ingress): State<Arc<Ingress>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h))
        .unwrap_or("")
        .to_string();
    let Some(hold) = ingress.enter(&host) else {
        return error(StatusCode::NOT_FOUND, "unknown_host", "no app is served at this host");
    };
    let route = hold.0.clone();
    if route.backends.is_empty() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_backend", "the app has no healthy container");
    }
    let (mut parts, body) = req.into_parts();
    // Buffered, so a request can go to another backend when one refuses the connection.
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large");
    };
    for h in HOP_BY_HOP {
        parts.headers.remove(HeaderName::from_static(h));
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-host"),
        HeaderValue::from_str(&host).unwrap_or(HeaderValue::from_static("")),
    );
    parts.headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let start = route.next.fetch_add(1, Ordering::Relaxed);
    let mut last_error = String::new();
    for i in 0..route.backends.len() {
        let backend = &route.backends[(start + i) % route.backends.len()];
        let Ok(uri) = format!("http://{}{path}", backend.addr).parse::<Uri>() else {
            return error(StatusCode::BAD_REQUEST, "invalid_path", "invalid path");
        };
        let mut p = parts.clone();
        p.uri = uri;
        let upstream = Request::from_parts(p, Body::from(body.clone()));
        let result = tokio::time::timeout(Duration::from_secs(60), ingress.client.request(upstream)).await;
        match result {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                for h in HOP_BY_HOP {
                    parts.headers.remove(HeaderName::from_static(h));
                }
                // The hold goes with the body: the backend is drained only once it is sent.
                let body = body.into_data_stream().map(move |chunk| {
                    let _hold = &hold;
                    chunk
                });
                return Response::from_parts(parts, Body::from_stream(body));
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "app_timeout", "the app did not answer in time"),
        }
    }
    tracing::warn!(host, error = %last_error, "ingress: no backend answered");
    error(StatusCode::BAD_GATEWAY, "app_unreachable", "the app did not answer")
}
