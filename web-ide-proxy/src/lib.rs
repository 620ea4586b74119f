//! web-ide-proxy: from a learner's browser to the IDE agent inside their sandbox.
//!
//! Mounted under `/ide/{session}/` by `runner serve` (or run alone by `runner ide-proxy`). Every
//! request is authenticated before anything reaches a sandbox: the `ide_url` token (short-lived,
//! signed for one session) is exchanged once for an HttpOnly cookie scoped to the session's path;
//! WebSocket upgrades must come from an allowed `Origin`; the session must be running. Traffic is
//! forwarded over a byte stream to the agent that the [`Backend`] provides (the runner uses a
//! `docker exec` of `ide-agent connect`, which works with the sandbox's network off, under runc and
//! gVisor). WebSockets are relayed frame by frame (the proxy does both handshakes and reads only
//! frame headers), so frames and messages are bounded without decoding them, activity is counted
//! in memory (flushed in batches, not a database write per message), and a session that ends
//! closes its sockets with close code 4000.

mod forward;
pub mod page;
pub mod token;
mod ws;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Json, Router,
};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{watch, Semaphore},
};
use tokio_util::sync::CancellationToken;

pub const COOKIE_NAME: &str = "exercise_runner_ide";
/// Close code sent to the browser when the session ends (deleted, reaped).
pub const CLOSE_SESSION_ENDED: u16 = 4000;

/// A byte stream to an agent.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

pub enum SessionLookup {
    Missing,
    /// Live, its sandbox not up yet: its link may be exchanged, nothing reaches it.
    Starting,
    /// Ended or ending (the state's name, for the message).
    NotRunning(String),
    /// The session runs, but its sandbox has no IDE (the message says why and what to do).
    NoIde(String),
    Running {
        container: String,
    },
}

/// What the proxy needs from the service that owns sessions.
pub trait Backend: Send + Sync + 'static {
    fn session(&self, id: &str) -> impl Future<Output = anyhow::Result<SessionLookup>> + Send;
    /// A fresh byte stream to the agent of a running container.
    fn connect(&self, container: &str) -> impl Future<Output = anyhow::Result<BoxIo>> + Send;
    /// Runs the session's check (the IDE's Check button): status and JSON body.
    fn check(&self, session: &str) -> impl Future<Output = (StatusCode, serde_json::Value)> + Send;
    /// Starts the session's learner over (the IDE's Start over button): status and JSON body.
    /// A backend that cannot says so.
    fn reset(&self, _session: &str) -> impl Future<Output = (StatusCode, serde_json::Value)> + Send {
        std::future::ready((
            StatusCode::NOT_IMPLEMENTED,
            serde_json::json!({"error": {"code": "reset_unavailable", "message": "this IDE cannot start over"}}),
        ))
    }
    /// Records activity: (session, unix milliseconds) pairs, batched.
    fn touch(&self, activity: Vec<(String, i64)>) -> impl Future<Output = ()> + Send;
}

#[derive(Clone, Debug)]
pub struct Config {
    pub secret: Vec<u8>,
    pub cookie_ttl: Duration,
    /// Origins allowed to open WebSockets; empty means "the same host as the request".
    pub allowed_origins: Vec<String>,
    pub max_connections_per_session: usize,
    pub max_message_bytes: usize,
    pub max_body_bytes: usize,
    pub activity_flush: Duration,
    pub watch_interval: Duration,
    pub cookie_secure: bool,
    /// `SameSite=None; Secure` instead of `Lax`: for an exercise page on another site than the
    /// runner that embeds the IDE (needs https).
    pub cookie_cross_site: bool,
    /// A host per session (`{session}.{session_host}`, e.g. `ide.example.com` with wildcard DNS),
    /// so every session's IDE is an origin of its own; `None`: all sessions on one host. Any port.
    pub session_host: Option<String>,
    /// How long a request waits for an agent that is still starting.
    pub agent_start_grace: Duration,
    /// New streams to one container's agent: this many at once, then `agent_connects_per_sec`
    /// (each is a `docker exec`; a learner's dead or fake agent must not make the proxy flood
    /// the engine).
    pub agent_connects_burst: u32,
    pub agent_connects_per_sec: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            secret: vec![],
            cookie_ttl: Duration::from_secs(8 * 3600),
            allowed_origins: vec![],
            max_connections_per_session: 16,
            max_message_bytes: 1024 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            activity_flush: Duration::from_secs(5),
            watch_interval: Duration::from_secs(2),
            cookie_secure: false,
            cookie_cross_site: false,
            session_host: None,
            agent_start_grace: forward::AGENT_START_GRACE,
            agent_connects_burst: 16,
            agent_connects_per_sec: 4.0,
        }
    }
}

struct Slot {
    permits: Arc<Semaphore>,
    ended: watch::Sender<bool>,
}

/// A token bucket of new agent streams for one container.
struct ConnectBudget {
    tokens: f64,
    at: std::time::Instant,
}

pub struct Proxy<B> {
    backend: B,
    config: Config,
    pool: Arc<forward::Pool>,
    slots: Mutex<HashMap<String, Slot>>,
    activity: Mutex<HashMap<String, i64>>,
    connects: Mutex<HashMap<String, ConnectBudget>>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl<B: Backend> Proxy<B> {
    pub fn new(backend: B, config: Config) -> Arc<Self> {
        assert!(!config.secret.is_empty(), "the IDE token secret must not be empty");
        Arc::new(Proxy {
            backend,
            config,
            pool: Arc::default(),
            slots: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            connects: Mutex::new(HashMap::new()),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A fresh `ide_url` token for a session, valid for `ttl`.
    pub fn url_token(&self, session: &str, ttl: Duration) -> String {
        token::sign(&self.config.secret, token::Kind::Url, session, token::now_unix() + ttl.as_secs())
    }

    /// The routes, to be merged into a router: `/ide/{session}/...`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ide/{session}", any(redirect_to_slash))
            .route("/ide/{session}/", any(handle_root::<B>))
            .route("/ide/{session}/{*rest}", any(handle_rest::<B>))
            .with_state(self.clone())
    }

    /// Connections held open right now, over every session: WebSockets and requests in flight.
    pub fn open_connections(&self) -> usize {
        let max = self.config.max_connections_per_session;
        self.slots.lock().expect("lock").values().map(|s| max - s.permits.available_permits()).sum()
    }

    /// Closes every socket of a session now (it was deleted or reaped).
    pub fn session_ended(&self, session: &str) {
        if let Some(slot) = self.slots.lock().expect("lock").get(session) {
            let _ = slot.ended.send(true);
        }
    }

    fn slot(&self, session: &str) -> (Arc<Semaphore>, watch::Receiver<bool>) {
        let mut slots = self.slots.lock().expect("lock");
        let slot = slots.entry(session.to_string()).or_insert_with(|| Slot {
            permits: Arc::new(Semaphore::new(self.config.max_connections_per_session)),
            ended: watch::channel(false).0,
        });
        (slot.permits.clone(), slot.ended.subscribe())
    }

    /// A new stream to a container's agent, paid from its budget. Waiting for the agent is
    /// activity of the session (a slow sandbox start is not the learner's idleness).
    pub(crate) async fn connect_agent(&self, session: &str, container: &str) -> anyhow::Result<BoxIo> {
        self.mark_active(session);
        {
            let (burst, rate) = (f64::from(self.config.agent_connects_burst), self.config.agent_connects_per_sec);
            let now = std::time::Instant::now();
            let mut budgets = self.connects.lock().expect("lock");
            if budgets.len() > 4096 {
                // Forget containers whose budget has refilled (gone or idle).
                budgets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            }
            let b = budgets.entry(container.to_string()).or_insert(ConnectBudget { tokens: burst, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                anyhow::bail!("too many new connections to this sandbox's agent; slowing down");
            }
            b.tokens -= 1.0;
        }
        self.backend.connect(container).await
    }

    pub(crate) fn mark_active(&self, session: &str) {
        self.activity.lock().expect("lock").insert(session.to_string(), now_ms());
    }

    /// Flushes activity in batches and closes sockets of sessions that stopped running.
    pub fn spawn_background(self: &Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let proxy = self.clone();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(proxy.config.activity_flush);
            let mut watch = tokio::time::interval(proxy.config.watch_interval);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        proxy.flush_activity().await;
                        return;
                    }
                    _ = flush.tick() => proxy.flush_activity().await,
                    _ = watch.tick() => proxy.watch_sessions().await,
                }
            }
        })
    }

    /// Writes the activity counted since the last flush (the backend's `touch`). Also called by
    /// a reaper in the same process before it decides who is idle.
    pub async fn flush_activity(&self) {
        let batch: Vec<(String, i64)> = self.activity.lock().expect("lock").drain().collect();
        if !batch.is_empty() {
            self.backend.touch(batch).await;
        }
    }

    async fn watch_sessions(&self) {
        let watched: Vec<String> = {
            let mut slots = self.slots.lock().expect("lock");
            // Forget sessions with no open connection.
            slots.retain(|_, s| s.permits.available_permits() < self.config.max_connections_per_session);
            slots.keys().cloned().collect()
        };
        self.pool.forget_closed();
        for session in watched {
            if !matches!(self.backend.session(&session).await, Ok(SessionLookup::Running { .. })) {
                self.session_ended(&session);
            }
        }
    }

    /// The URL token's exchange: an HttpOnly cookie for this session's path (host-only, so with a
    /// host per session it is sent to that host alone), and a redirect without the token.
    fn exchange(&self, session: &str, path: &str, now: u64) -> Response {
        let cookie =
            token::sign(&self.config.secret, token::Kind::Cookie, session, now + self.config.cookie_ttl.as_secs());
        let same_site = match (self.config.cookie_cross_site, self.config.cookie_secure) {
            (true, _) => "SameSite=None; Secure",
            (false, true) => "SameSite=Lax; Secure",
            (false, false) => "SameSite=Lax",
        };
        let set_cookie = format!(
            "{COOKIE_NAME}={cookie}; Path=/ide/{session}/; Max-Age={}; HttpOnly; {same_site}",
            self.config.cookie_ttl.as_secs()
        );
        // The request's own path, still percent-encoded (a URI is ASCII), without the token.
        let location = HeaderValue::from_str(path)
            .or_else(|_| HeaderValue::from_str(&format!("/ide/{session}/")))
            .expect("a session id is ASCII");
        let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
        if let Ok(v) = HeaderValue::from_str(&set_cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// With `session_host` set, a session's IDE is served only at `{session}.{session_host}`
    /// (on whatever port the listener has).
    fn host_allowed(&self, session: &str, headers: &HeaderMap) -> bool {
        let Some(base) = &self.config.session_host else { return true };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        name.eq_ignore_ascii_case(&format!("{session}.{base}"))
    }

    /// A request that changes something comes from the IDE's own page or an allowed origin.
    /// Browsers send `Origin` with every such request; a client without it (and without
    /// `Sec-Fetch-Site: cross-site`) is not a browser, so it carries no ambient cookie.
    fn same_site_write(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            Some(origin) => {
                let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
                let same_host = !host.is_empty() && origin.split_once("://").map(|(_, h)| h) == Some(host);
                same_host || self.config.allowed_origins.iter().any(|o| o == origin)
            }
            None => headers.get("sec-fetch-site").is_none_or(|v| v.as_bytes() != b"cross-site"),
        }
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        if !self.config.allowed_origins.is_empty() {
            return self.config.allowed_origins.iter().any(|o| o == origin);
        }
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
        !host.is_empty() && origin_host == host
    }
}

async fn redirect_to_slash(Path(session): Path<String>, req: Request) -> Response {
    if !valid_session_id(&session) {
        return error(StatusCode::NOT_FOUND, "session_not_found", "no such session");
    }
    // The page's URLs are relative to `/ide/{session}/`; the token (if any) comes along.
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    match HeaderValue::from_str(&format!("/ide/{session}/{query}")) {
        Ok(location) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => error(StatusCode::BAD_REQUEST, "invalid_path", "invalid path"),
    }
}

fn valid_session_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

async fn handle_root<B: Backend>(
    State(proxy): State<Arc<Proxy<B>>>,
    Path(session): Path<String>,
    req: Request,
) -> Response {
    handle(proxy, session, String::new(), req).await
}

async fn handle_rest<B: Backend>(
    State(proxy): State<Arc<Proxy<B>>>,
    Path((session, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    handle(proxy, session, rest, req).await
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE_NAME).then(|| v.to_string())
    })
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
}

/// Whether a failed request was a browser navigating (a page load, not the page's own fetch):
/// such a request gets a short human page instead of a JSON body.
fn is_navigation(req: &Request) -> bool {
    let h = req.headers();
    match h.get("sec-fetch-mode").and_then(|v| v.to_str().ok()) {
        Some(mode) => mode == "navigate",
        None => {
            req.method() == axum::http::Method::GET
                && h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"))
        }
    }
}

async fn handle<B: Backend>(proxy: Arc<Proxy<B>>, session: String, rest: String, req: Request) -> Response {
    let navigation = is_navigation(&req);
    let fail = |status: StatusCode, code: &str, message: &str| {
        if navigation {
            page::error_page(status, code, message)
        } else {
            error(status, code, message)
        }
    };
    if !valid_session_id(&session) {
        return fail(StatusCode::NOT_FOUND, "session_not_found", "no such session");
    }
    // 0. With a host per session, a session's IDE answers only on its own host: no other
    // session's page shares its origin.
    if !proxy.host_allowed(&session, req.headers()) {
        return fail(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            "this session's IDE is served at its own address; open it through the session's link",
        );
    }
    let secret = &proxy.config.secret;
    let now = token::now_unix();
    // 1. Authenticate: the URL token (exchanged for a cookie below, once the session is known
    // to be live), or the cookie.
    let exchange = match query_token(req.uri().query()) {
        Some(t) => match token::verify(secret, &t, token::Kind::Url, &session, now) {
            Ok(()) => true,
            Err(token::TokenError::Expired) => {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "this IDE link has expired; open the exercise again",
                )
            }
            Err(_) => {
                return fail(StatusCode::UNAUTHORIZED, "invalid_token", "this IDE link is not valid for this session")
            }
        },
        None => {
            match cookie_value(req.headers()).map(|c| token::verify(secret, &c, token::Kind::Cookie, &session, now)) {
                Some(Ok(())) => false,
                Some(Err(token::TokenError::Expired)) => {
                    return fail(
                        StatusCode::UNAUTHORIZED,
                        "cookie_expired",
                        "the IDE login has expired; open the exercise again",
                    )
                }
                Some(Err(_)) | None => {
                    return fail(
                        StatusCode::UNAUTHORIZED,
                        "not_authenticated",
                        "open the IDE through the link of your session",
                    )
                }
            }
        }
    };
    // 2. WebSockets only from allowed origins (no cross-site socket hijacking), and nothing that
    // changes anything from another site's page (with a `SameSite=None` cookie, a form on any
    // site could otherwise run checks or open terminals).
    let is_upgrade =
        req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_upgrade && !proxy.origin_allowed(req.headers()) {
        return fail(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "WebSocket connections from this origin are not allowed",
        );
    }
    let reads = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if !reads && !proxy.same_site_write(req.headers()) {
        return error(StatusCode::FORBIDDEN, "origin_not_allowed", "changes from another site's page are not allowed");
    }
    // 3. Only live sessions: an ended session's link is refused at the exchange, and everything
    // else needs a running one.
    let container = match proxy.backend.session(&session).await {
        Ok(SessionLookup::Running { container }) => Some(container),
        Ok(SessionLookup::Starting) => None,
        Ok(SessionLookup::Missing) => return fail(StatusCode::NOT_FOUND, "session_not_found", "no such session"),
        Ok(SessionLookup::NotRunning(state)) => {
            return fail(StatusCode::CONFLICT, "session_not_running", &format!("the session is {state}"))
        }
        Ok(SessionLookup::NoIde(why)) => return fail(StatusCode::CONFLICT, "ide_unavailable", &why),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "IDE proxy: session lookup failed");
            return fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again shortly");
        }
    };
    if exchange {
        return proxy.exchange(&session, req.uri().path(), now);
    }
    let Some(container) = container else {
        return fail(StatusCode::CONFLICT, "session_not_running", "the session is starting");
    };
    proxy.mark_active(&session);
    // 4. The Check button is the runner's, not the agent's: checks are recorded and authoritative.
    if rest == "_runner/check" {
        if req.method() != axum::http::Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST to run the check");
        }
        let (status, body) = proxy.backend.check(&session).await;
        return (status, Json(body)).into_response();
    }
    // The Start over button, the runner's too: the old files are kept as a snapshot first.
    if rest == "_runner/reset" {
        if req.method() != axum::http::Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST to start over");
        }
        let (status, body) = proxy.backend.reset(&session).await;
        return (status, Json(body)).into_response();
    }
    // 5. The page itself comes from the runner, never from the sandbox.
    if let Some((content_type, body)) = page::asset_at(&rest) {
        if !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) || is_upgrade {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the page is only read");
        }
        return page::serve(req.headers(), content_type, body);
    }
    // Only the agent's API reaches the sandbox.
    if !rest.starts_with("api/") {
        return fail(StatusCode::NOT_FOUND, "not_found", "no such page in the IDE");
    }
    // 6. Bounded connections per session, held until the response (or socket) ends.
    let (permits, ended) = proxy.slot(&session);
    let Ok(permit) = permits.try_acquire_owned() else {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many open connections to this session; close a tab or terminal",
        );
        resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return resp;
    };
    let path_and_query = {
        let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        format!("/{rest}{q}")
    };
    if is_upgrade {
        let (parts, _body) = req.into_parts();
        ws::bridge(proxy, session, container, path_and_query, parts, ended, permit).await
    } else {
        let resp = forward::http(&proxy, &session, &container, &path_and_query, req, permit).await;
        // Again at the answer: a request that waited for an agent still starting was activity
        // all along, however long the sandbox took.
        proxy.mark_active(&session);
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    const SESSION: &str = "0b5e2c1e-6d1f-4c7e-9a38-2f0d1c9e7a41";

    /// A sandbox whose agent never answers (stopped by the learner): every connect fails.
    #[derive(Default)]
    struct DeadAgent {
        connects: AtomicUsize,
        checks: AtomicUsize,
    }

    impl Backend for Arc<DeadAgent> {
        async fn session(&self, _: &str) -> anyhow::Result<SessionLookup> {
            Ok(SessionLookup::Running { container: "c1".into() })
        }
        async fn connect(&self, _: &str) -> anyhow::Result<BoxIo> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("no agent socket")
        }
        async fn check(&self, _: &str) -> (StatusCode, serde_json::Value) {
            self.checks.fetch_add(1, Ordering::SeqCst);
            (StatusCode::CREATED, json!({}))
        }
        async fn touch(&self, _: Vec<(String, i64)>) {}
    }

    fn proxy(config: Config) -> (Arc<Proxy<Arc<DeadAgent>>>, Arc<DeadAgent>) {
        let backend = Arc::new(DeadAgent::default());
        (Proxy::new(backend.clone(), Config { secret: b"test-secret".to_vec(), ..config }), backend)
    }

    fn cookie() -> String {
        let c = token::sign(b"test-secret", token::Kind::Cookie, SESSION, token::now_unix() + 600);
        format!("{COOKIE_NAME}={c}")
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri(format!("/ide/{SESSION}/{path}"));
        b = b.header("host", "runner.test").header("cookie", cookie());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    /// Retrying a dead agent pays every new exec from the container's budget: sixteen requests
    /// retrying for a second cost the burst plus a second's refill, not four execs a second each.
    #[tokio::test]
    async fn retries_against_a_dead_agent_do_not_flood_the_engine_with_execs() {
        let config = Config {
            agent_start_grace: Duration::from_secs(1),
            agent_connects_burst: 4,
            agent_connects_per_sec: 2.0,
            ..Config::default()
        };
        let (proxy, backend) = proxy(config);
        let router = proxy.router();
        let requests = (0..16).map(|n| router.clone().oneshot(request("GET", &format!("api/x{n}"), &[])));
        for resp in futures_util::future::join_all(requests).await {
            assert_eq!(resp.unwrap().status(), StatusCode::BAD_GATEWAY);
        }
        let connects = backend.connects.load(Ordering::SeqCst);
        assert!(connects <= 4 + 2 * 2, "{connects} execs for 16 requests within a second's grace");
    }

    /// With a `SameSite=None` cookie a form on any site could post: what changes something
    /// must come from the IDE's own page or an allowed origin.
    #[tokio::test]
    async fn changes_from_another_sites_page_are_refused() {
        let (proxy, backend) = proxy(Config::default());
        let router = proxy.router();
        for headers in [vec![("origin", "https://evil.example")], vec![("sec-fetch-site", "cross-site")]] {
            let resp = router.clone().oneshot(request("POST", "_runner/check", &headers)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{headers:?}");
            let resp = router.clone().oneshot(request("PUT", "api/file?path=a", &headers)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{headers:?}");
        }
        assert_eq!(backend.checks.load(Ordering::SeqCst), 0, "no check ran for another site");
        assert_eq!(backend.connects.load(Ordering::SeqCst), 0, "nothing reached the sandbox");
        let own = [("origin", "http://runner.test"), ("sec-fetch-site", "same-origin")];
        let resp = router.clone().oneshot(request("POST", "_runner/check", &own)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(backend.checks.load(Ordering::SeqCst), 1);
    }

    /// The exchange redirects to the link's own path as it was sent (percent-encoded), so a path
    /// that is no header value once decoded (`%0A`, `%E2%9C%93`) is never a 500.
    #[tokio::test]
    async fn an_undecodable_link_path_is_redirected_to_the_page() {
        let (proxy, _) = proxy(Config::default());
        let link = token::sign(b"test-secret", token::Kind::Url, SESSION, token::now_unix() + 600);
        let req = Request::builder().uri(format!("/ide/{SESSION}?token={link}")).body(Body::empty()).unwrap();
        let resp = proxy.router().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[header::LOCATION], format!("/ide/{SESSION}/?token={link}"), "the token comes along");
        let req = Request::builder().uri("/ide/a%0Ab").body(Body::empty()).unwrap();
        assert_eq!(proxy.router().oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
        for path in ["%E2%9C%93", "a%0Ab", "api/files"] {
            let req = Request::builder()
                .uri(format!("/ide/{SESSION}/{path}?token={link}"))
                .header("host", "runner.test")
                .body(Body::empty())
                .unwrap();
            let resp = proxy.router().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(resp.headers()[header::LOCATION], format!("/ide/{SESSION}/{path}"));
        }
    }

    #[test]
    fn only_allow_listed_request_headers_reach_the_agent() {
        let mut browser = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("accept", "*/*"),
            ("cookie", "exercise_runner_ide=x"),
            ("authorization", "Bearer t"),
            ("cf-access-jwt-assertion", "eyJ.instructor"),
            ("x-forwarded-user", "instructor@school"),
            ("x-amzn-oidc-accesstoken", "tok"),
            ("referer", "https://course.example/private"),
            ("x-forwarded-for", "10.1.2.3"),
        ] {
            browser.insert(axum::http::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let sent = forward::agent_request_headers(&browser);
        let mut names: Vec<&str> = sent.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "content-type", "host"]);
        assert_eq!(sent[header::HOST], "agent");
    }
}
