//! WebSockets, terminated on both sides: the browser's (axum) and the agent's (tungstenite over
//! a stream from the backend). Messages are bounded in size, activity is noted in memory at most
//! once a second per socket, and the end of the session closes the browser's socket with 4000.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::ws::{self, CloseFrame, WebSocket, WebSocketUpgrade},
    response::{IntoResponse, Response},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::{self as tg, protocol::WebSocketConfig};

use crate::{
    error,
    forward::{agent_timeout, while_agent_starts, AgentError},
    Backend, Proxy, CLOSE_SESSION_ENDED,
};

/// tungstenite zero-fills its whole read buffer before every read, even one that finds nothing:
/// at the default 128 KiB that was most of a message's cost in the proxy (a `memset` per poll,
/// on both sockets). Messages larger than this are still read whole, in more reads.
const READ_BUFFER_BYTES: usize = 8 * 1024;

fn to_agent(m: ws::Message) -> Option<tg::Message> {
    Some(match m {
        ws::Message::Text(t) => tg::Message::Text(t.as_str().into()),
        ws::Message::Binary(b) => tg::Message::Binary(b),
        ws::Message::Ping(b) => tg::Message::Ping(b),
        ws::Message::Pong(b) => tg::Message::Pong(b),
        ws::Message::Close(_) => return None,
    })
}

fn to_browser(m: tg::Message) -> Option<ws::Message> {
    Some(match m {
        tg::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tg::Message::Binary(b) => ws::Message::Binary(b),
        tg::Message::Ping(b) => ws::Message::Ping(b),
        tg::Message::Pong(b) => ws::Message::Pong(b),
        tg::Message::Close(f) => {
            return Some(ws::Message::Close(
                f.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() }),
            ))
        }
        tg::Message::Frame(_) => return None,
    })
}

pub async fn bridge<B: Backend>(
    proxy: Arc<Proxy<B>>,
    session: String,
    container: String,
    path_and_query: String,
    upgrade: WebSocketUpgrade,
    mut ended: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let max = proxy.config.max_message_bytes;
    // Connect to the agent first, so a refusal there is a proper HTTP answer to the browser; an
    // agent still starting gets a moment.
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER_BYTES);
    let url = format!("ws://agent{path_and_query}");
    let attempt = || {
        let (proxy, session, container, url) = (&proxy, &session, &container, url.clone());
        async move {
            let io = proxy.connect_agent(session, container).await.map_err(AgentError::Unreachable)?;
            let handshake = tokio_tungstenite::client_async_with_config(url, io, Some(config));
            match tokio::time::timeout(Duration::from_secs(15), handshake).await {
                Ok(Ok((agent, _))) => Ok(agent),
                Ok(Err(tg::Error::Http(resp))) => {
                    // The agent's refusal, as data; an odd status from it becomes a 502.
                    let status = match resp.status() {
                        s if s.is_client_error() || s.is_server_error() => s,
                        _ => axum::http::StatusCode::BAD_GATEWAY,
                    };
                    Err(AgentError::Final(error(
                        status,
                        "agent_refused",
                        &format!("the IDE in the sandbox answered {status}"),
                    )))
                }
                Ok(Err(e)) => Err(AgentError::Failed(e.to_string())),
                Err(_) => Err(AgentError::Final(agent_timeout())),
            }
        }
    };
    let agent = match while_agent_starts(proxy.config.agent_start_grace, attempt).await {
        Ok(agent) => agent,
        Err(resp) => return resp,
    };
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |browser: WebSocket| async move {
            let _permit = permit;
            pump(&proxy, &session, browser, agent, &mut ended).await;
        })
        .into_response()
}

async fn pump<B: Backend, S>(
    proxy: &Proxy<B>,
    session: &str,
    mut browser: WebSocket,
    mut agent: tokio_tungstenite::WebSocketStream<S>,
    ended: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut last_mark = Instant::now();
    let mut mark = |proxy: &Proxy<B>| {
        if last_mark.elapsed() >= Duration::from_secs(1) {
            proxy.mark_active(session);
            last_mark = Instant::now();
        }
    };
    if *ended.borrow() {
        let _ = close_ended(&mut browser).await;
        return;
    }
    loop {
        tokio::select! {
            changed = ended.changed() => {
                if changed.is_err() || *ended.borrow() {
                    let _ = close_ended(&mut browser).await;
                    let _ = agent.close(None).await;
                    return;
                }
            }
            from_browser = browser.recv() => match from_browser {
                Some(Ok(ws::Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = agent.close(None).await;
                    return;
                }
                Some(Ok(m)) => {
                    mark(proxy);
                    if let Some(m) = to_agent(m) {
                        if agent.send(m).await.is_err() {
                            let _ = browser.send(ws::Message::Close(Some(CloseFrame { code: 1011, reason: "the IDE agent went away".into() }))).await;
                            return;
                        }
                    }
                }
            },
            from_agent = agent.next() => match from_agent {
                Some(Ok(m)) => {
                    mark(proxy);
                    let closing = matches!(m, tg::Message::Close(_));
                    if let Some(m) = to_browser(m) {
                        if browser.send(m).await.is_err() {
                            return;
                        }
                    }
                    if closing {
                        return;
                    }
                }
                None | Some(Err(_)) => {
                    let _ = browser.send(ws::Message::Close(Some(CloseFrame { code: 1011, reason: "the IDE agent went away".into() }))).await;
                    return;
                }
            },
        }
    }
}

async fn close_ended(browser: &mut WebSocket) -> Result<(), axum::Error> {
    browser
        .send(ws::Message::Close(Some(CloseFrame {
            code: CLOSE_SESSION_ENDED,
            reason: "the session has ended".into(),
        })))
        .await
}
