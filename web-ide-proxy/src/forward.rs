//! Plain HTTP to the agent: HTTP/1.1 over a stream from the backend, kept alive and pooled per
//! container so the page's requests do not start an exec each.
//!
//! The agent runs as the learner, so its answers are learner-controlled: only their status and
//! body pass, served as data (JSON, or an attachment) under headers the proxy writes itself. A
//! connection (and the session's connection permit) stays taken until its response body has
//! ended; only then may it serve another request.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::Response,
};
use bytes::Bytes;
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use crate::{error, Backend, Proxy};

const MAX_IDLE_PER_CONTAINER: usize = 4;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for an agent that is still starting (the default of
/// `Config::agent_start_grace`).
pub const AGENT_START_GRACE: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Body>>>>,
}

impl Pool {
    /// Drops connections that closed while idle (their container ended) and containers with none.
    pub(crate) fn forget_closed(&self) {
        self.idle.lock().expect("lock").retain(|_, list| {
            list.retain(|s| !s.is_closed());
            !list.is_empty()
        });
    }

    /// Keeps a connection whose last response has ended, for the container's next request.
    fn put_back(&self, container: &str, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().expect("lock");
        let list = idle.entry(container.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_CONTAINER {
            list.push(sender);
        }
    }
}

/// Headers on every answer that came from the agent: nothing in it is a page, a script or a
/// cookie for the browser.
const DATA_CSP: &str = "default-src 'none'; sandbox; frame-ancestors 'none'";

/// The headers the browser gets with an agent's answer, built from scratch: of the agent's own
/// only the body's type (JSON, or else an attachment) and length survive.
pub(crate) fn data_headers(agent: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    let json = agent
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if json {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    if let Some(len) = agent.get(header::CONTENT_LENGTH).filter(|v| v.to_str().is_ok_and(|s| s.parse::<u64>().is_ok()))
    {
        h.insert(header::CONTENT_LENGTH, len.clone());
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DATA_CSP));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    h
}

/// The agent's status, unless it would make the browser act (a redirect, an upgrade): those
/// become a 502.
fn data_status(status: StatusCode) -> StatusCode {
    if status.is_informational() || status.is_redirection() {
        StatusCode::BAD_GATEWAY
    } else {
        status
    }
}

/// An agent's response body that holds its connection and the session's permit until it ends:
/// at the end the connection goes back to the pool; dropped before (the browser went away, the
/// stream broke), the connection is closed with it.
struct Held {
    body: Incoming,
    done: Option<Done>,
}

struct Done {
    pool: Arc<Pool>,
    container: String,
    sender: SendRequest<Body>,
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(d) = self.done.take() {
                    d.pool.put_back(&d.container, d.sender);
                }
            }
            Poll::Ready(Some(Err(_))) => self.done = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A body that was empty from the start may never be polled: its connection is free.
        if let Some(d) = self.done.take() {
            if self.body.is_end_stream() {
                d.pool.put_back(&d.container, d.sender);
            }
        }
    }
}

/// Why one attempt to reach the agent did not get through.
pub(crate) enum AgentError {
    /// An answer for the browser as it is: no retry.
    Final(Response),
    /// No stream to the agent (its socket is not there yet).
    Unreachable(anyhow::Error),
    /// A stream, but the agent did not speak (it is still starting, or it broke).
    Failed(String),
}

pub(crate) fn agent_timeout() -> Response {
    error(StatusCode::GATEWAY_TIMEOUT, "agent_timeout", "the IDE in the sandbox did not answer in time")
}

/// The pause after the first failed attempt; it doubles after each failure up to
/// [`RETRY_MAX_PAUSE`]. An agent that comes up is found within about a tenth of a second.
const RETRY_FIRST_PAUSE: Duration = Duration::from_millis(10);
const RETRY_MAX_PAUSE: Duration = Duration::from_millis(100);

/// The pause before the attempt that follows `failures` failed ones: 10, 20, 40, 80, then 100 ms.
fn retry_pause(failures: u32) -> Duration {
    RETRY_FIRST_PAUSE.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(RETRY_MAX_PAUSE)
}

/// Runs `attempt` until it gets through. An agent that is still starting (the sandbox just came
/// up) refuses connections for a moment: retry within `grace`, after a short pause that grows
/// ([`retry_pause`]), instead of failing the learner's first page load; past it, the browser gets
/// a 502 saying why. Every attempt's new stream is paid from the container's budget
/// ([`crate::Proxy::connect_agent`]), so however short the pause, retries cannot flood the
/// engine with execs: an attempt past the budget fails without one. (Agents of current base
/// images also wait for their own socket inside `ide-agent connect`, so one exec usually covers
/// the whole start.)
pub(crate) async fn while_agent_starts<T, F, Fut>(grace: Duration, mut attempt: F) -> Result<T, Response>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let deadline = tokio::time::Instant::now() + grace;
    let mut failures = 0u32;
    loop {
        let failure = match attempt().await {
            Ok(x) => return Ok(x),
            Err(AgentError::Final(resp)) => return Err(resp),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(match failure {
                AgentError::Unreachable(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "IDE proxy: cannot reach the agent");
                    error(StatusCode::BAD_GATEWAY, "agent_unreachable", "the IDE in the sandbox is not answering yet")
                }
                AgentError::Failed(e) => {
                    tracing::warn!(error = %e, "IDE proxy: the agent failed to answer");
                    error(StatusCode::BAD_GATEWAY, "agent_error", "the IDE in the sandbox failed to answer")
                }
                AgentError::Final(resp) => resp,
            });
        }
        failures += 1;
        tokio::time::sleep(retry_pause(failures)).await;
    }
}

async fn sender<B: Backend>(proxy: &Proxy<B>, session: &str, container: &str) -> anyhow::Result<SendRequest<Body>> {
    loop {
        let candidate = proxy.pool.idle.lock().expect("lock").get_mut(container).and_then(Vec::pop);
        match candidate {
            Some(mut s) if !s.is_closed() => {
                if tokio::time::timeout(Duration::from_secs(5), s.ready()).await.is_ok_and(|r| r.is_ok()) {
                    return Ok(s);
                }
            }
            Some(_) => continue,
            None => break,
        }
    }
    let io = proxy.connect_agent(session, container).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The browser's request headers the agent gets; nothing else of the browser's (cookies,
/// credentials, an SSO proxy's identity headers, `Referer`, forwarding headers) reaches the
/// learner-controlled agent.
const REQUEST_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ACCEPT, header::IF_NONE_MATCH];

pub(crate) fn agent_request_headers(browser: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in REQUEST_HEADERS {
        if let Some(v) = browser.get(&name) {
            h.insert(name, v.clone());
        }
    }
    h.insert(header::HOST, HeaderValue::from_static("agent"));
    h
}

pub async fn http<B: Backend>(
    proxy: &Proxy<B>,
    session: &str,
    container: &str,
    path_and_query: &str,
    req: Request,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, proxy.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large"),
    };
    parts.headers = agent_request_headers(&parts.headers);
    let Ok(uri) = path_and_query.parse() else {
        return error(StatusCode::BAD_REQUEST, "invalid_path", "invalid path");
    };
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let attempt = || {
        let upstream = Request::from_parts(parts.clone(), Body::from(body.clone()));
        async move {
            let mut s = sender(proxy, session, container).await.map_err(AgentError::Unreachable)?;
            match tokio::time::timeout(RESPONSE_TIMEOUT, s.send_request(upstream)).await {
                Ok(Ok(r)) => Ok((s, r)),
                Ok(Err(e)) => Err(AgentError::Failed(e.to_string())),
                Err(_) => Err(AgentError::Final(agent_timeout())),
            }
        }
    };
    let (sender, resp) = match while_agent_starts(proxy.config.agent_start_grace, attempt).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (parts, body) = resp.into_parts();
    let done = Done { pool: proxy.pool.clone(), container: container.to_string(), sender, _permit: permit };
    let mut out = Response::new(Body::new(Held { body, done: Some(done) }));
    *out.status_mut() = data_status(parts.status);
    *out.headers_mut() = data_headers(&parts.headers);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_10_ms_and_double_up_to_100() {
        let pauses: Vec<u128> = (1..=7).map(|f| retry_pause(f).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 100, 100, 100]);
        assert_eq!(retry_pause(u32::MAX), RETRY_MAX_PAUSE);
    }

    fn agent(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_hostile_agents_headers_do_not_reach_the_browser() {
        let h = data_headers(&agent(&[
            ("content-type", "text/html"),
            ("set-cookie", "exercise_runner_ide=attacker; Path=/"),
            ("set-cookie", "tracking=1; Domain=127.0.0.1"),
            ("location", "https://evil.example/"),
            ("access-control-allow-origin", "*"),
            ("content-security-policy", "script-src *"),
            ("refresh", "0; url=https://evil.example/"),
            ("content-length", "12"),
        ]));
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], DATA_CSP);
        assert_eq!(h[header::CONTENT_LENGTH], "12");
        for gone in ["set-cookie", "location", "access-control-allow-origin", "refresh"] {
            assert!(!h.contains_key(gone), "{gone} passed");
        }
    }

    #[test]
    fn json_stays_json_and_everything_else_is_an_attachment() {
        let h = data_headers(&agent(&[("content-type", "Application/JSON; charset=utf-8")]));
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert!(!h.contains_key(header::CONTENT_DISPOSITION));
        for t in ["text/plain", "image/svg+xml", "application/json-seq-but-not", ""] {
            let h = data_headers(&agent(&[("content-type", t)]));
            let expected =
                if t.starts_with("application/json") { "application/json" } else { "application/octet-stream" };
            assert_eq!(h[header::CONTENT_TYPE], expected, "{t}");
        }
        let h = data_headers(&agent(&[("content-length", "1, 2")]));
        assert!(!h.contains_key(header::CONTENT_LENGTH), "a malformed length is not passed on");
    }

    #[test]
    fn redirects_and_upgrades_from_the_agent_become_502() {
        for s in [301, 302, 303, 307, 308, 101] {
            assert_eq!(data_status(StatusCode::from_u16(s).unwrap()), StatusCode::BAD_GATEWAY, "{s}");
        }
        for s in [200, 201, 204, 400, 404, 413, 500] {
            assert_eq!(data_status(StatusCode::from_u16(s).unwrap()).as_u16(), s);
        }
    }
}
