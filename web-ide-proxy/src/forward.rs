//! Plain HTTP to the agent: HTTP/1.1 over a stream from the backend, kept alive and pooled per
//! container so a page load does not start an exec per asset.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderName, StatusCode},
    response::{IntoResponse, Response},
};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::{error, Backend, Proxy};

const MAX_IDLE_PER_CONTAINER: usize = 4;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for an agent that is still starting.
pub const AGENT_START_GRACE: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Body>>>>,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip(headers: &mut axum::http::HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(HeaderName::from_static(h));
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

/// Runs `attempt` until it gets through. An agent that is still starting (the sandbox just came
/// up) refuses connections for a moment: retry within `AGENT_START_GRACE` instead of failing the
/// learner's first page load; past it, the browser gets a 502 saying why.
pub(crate) async fn while_agent_starts<T, F, Fut>(mut attempt: F) -> Result<T, Response>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let deadline = tokio::time::Instant::now() + AGENT_START_GRACE;
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn sender<B: Backend>(proxy: &Proxy<B>, container: &str) -> anyhow::Result<SendRequest<Body>> {
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
    let io = proxy.backend.connect(container).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub async fn http<B: Backend>(proxy: &Proxy<B>, container: &str, path_and_query: &str, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, proxy.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large"),
    };
    strip(&mut parts.headers);
    // The agent needs neither our cookie nor any credential.
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.insert(header::HOST, header::HeaderValue::from_static("agent"));
    let Ok(uri) = path_and_query.parse() else {
        return error(StatusCode::BAD_REQUEST, "invalid_path", "invalid path");
    };
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let attempt = || {
        let upstream = Request::from_parts(parts.clone(), Body::from(body.clone()));
        async move {
            let mut s = sender(proxy, container).await.map_err(AgentError::Unreachable)?;
            match tokio::time::timeout(RESPONSE_TIMEOUT, s.send_request(upstream)).await {
                Ok(Ok(r)) => Ok((s, r)),
                Ok(Err(e)) => Err(AgentError::Failed(e.to_string())),
                Err(_) => Err(AgentError::Final(agent_timeout())),
            }
        }
    };
    let (s, resp) = match while_agent_starts(attempt).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    {
        let mut idle = proxy.pool.idle.lock().expect("lock");
        let list = idle.entry(container.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_CONTAINER {
            list.push(s);
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip(&mut parts.headers);
    Response::from_parts(parts, Body::new(body)).into_response()
}
