//! WebSockets from the browser to the agent, relayed frame by frame. The proxy answers the
//! browser's upgrade itself and makes its own upgrade to the agent (`handshake`), then relays
//! the bytes between the two connections, reading only frame headers (`relay`, `frames`):
//! frames and messages are bounded in size without being decoded, activity is noted in memory at
//! most once a second per socket, and the end of the session closes the browser's socket with
//! 4000.

mod frames;
mod handshake;
mod relay;

use std::{sync::Arc, time::Duration};

use axum::{
    http::{request::Parts, uri::PathAndQuery, StatusCode},
    response::Response,
};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::{
    error,
    forward::{agent_timeout, while_agent_starts, AgentError},
    Backend, Proxy,
};

/// How long the agent has to answer the upgrade, once a stream to it is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens the agent's socket at `path_and_query`, then takes over the browser's connection and
/// relays between the two. The agent comes first, so a refusal there is a proper HTTP answer to
/// the browser; an agent still starting gets a moment.
pub(crate) async fn bridge<B: Backend>(
    proxy: Arc<Proxy<B>>,
    session: String,
    container: String,
    path_and_query: String,
    mut request: Parts,
    mut ended: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let upgrade = match handshake::browser_upgrade(&mut request) {
        Ok(u) => u,
        Err(bad) => return bad.into_response(),
    };
    let Ok(target) = path_and_query.parse::<PathAndQuery>() else {
        return error(StatusCode::BAD_REQUEST, "invalid_path", "invalid path");
    };
    let attempt = || {
        let (proxy, session, container, target) = (&proxy, &session, &container, &target);
        async move {
            let mut io = proxy.connect_agent(session, container).await.map_err(AgentError::Unreachable)?;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::agent(&mut io, target)).await {
                Ok(Ok(early)) => Ok((io, early)),
                Ok(Err(handshake::AgentAnswer::Refused(status))) => {
                    // The agent's refusal, as data; an odd status from it becomes a 502.
                    let status = match status {
                        s if s.is_client_error() || s.is_server_error() => s,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    Err(AgentError::Final(error(
                        status,
                        "agent_refused",
                        &format!("the IDE in the sandbox answered {status}"),
                    )))
                }
                Ok(Err(handshake::AgentAnswer::Failed(e))) => Err(AgentError::Failed(e)),
                Err(_) => Err(AgentError::Final(agent_timeout())),
            }
        }
    };
    let (agent, early) = match while_agent_starts(proxy.config.agent_start_grace, attempt).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let response = handshake::switching_protocols(&upgrade.key);
    tokio::spawn(async move {
        let _permit = permit;
        let browser = match upgrade.on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "IDE proxy: the browser's connection was not upgraded");
                return;
            }
        };
        let max = proxy.config.max_message_bytes;
        relay::relay(browser, agent, &early, max, &mut ended, || proxy.mark_active(&session)).await;
    });
    response
}
