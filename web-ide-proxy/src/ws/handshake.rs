//! The two opening handshakes of a relayed WebSocket (RFC 6455 §4): the browser's upgrade,
//! checked as axum's `WebSocketUpgrade` checks it and answered by the proxy, and the proxy's own
//! upgrade request to the agent over the stream the backend gives. Neither side negotiates an
//! extension or a subprotocol (the IDE uses none), so a frame means the same on both sides and
//! passes unchanged.

use axum::{
    body::Body,
    http::{
        header, request::Parts, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version,
    },
    response::Response,
};
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::error;

/// The agent's answer to the upgrade, up to its blank line: a 101 is a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A browser's upgrade request that keeps the rules: its key, and the connection to take over
/// once the 101 is sent.
pub(crate) struct BrowserUpgrade {
    pub(crate) key: HeaderValue,
    pub(crate) on_upgrade: OnUpgrade,
}

/// Why a browser's upgrade request is refused, for the proxy's JSON error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadUpgrade {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
}

impl BadUpgrade {
    pub(crate) fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

const fn invalid(message: &'static str) -> BadUpgrade {
    BadUpgrade { status: StatusCode::BAD_REQUEST, code: "invalid_upgrade", message }
}

const fn not_upgradable(message: &'static str) -> BadUpgrade {
    BadUpgrade { status: StatusCode::UPGRADE_REQUIRED, code: "upgrade_required", message }
}

fn header_eq(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Checks a browser's upgrade as axum's `WebSocketUpgrade` does, in its order (method,
/// `Connection`, `Upgrade`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`, an upgradable
/// connection).
pub(crate) fn browser_upgrade(parts: &mut Parts) -> Result<BrowserUpgrade, BadUpgrade> {
    if parts.version > Version::HTTP_11 {
        // The runner serves HTTP/1.1 only; WebSockets over HTTP/2 (RFC 8441) are not relayed.
        return Err(not_upgradable("WebSockets are opened over HTTP/1.1"));
    }
    if parts.method != Method::GET {
        let message = "a WebSocket is opened with GET";
        return Err(BadUpgrade { status: StatusCode::METHOD_NOT_ALLOWED, code: "method_not_allowed", message });
    }
    let connection = parts.headers.get(header::CONNECTION).and_then(|v| v.to_str().ok());
    if !connection.is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return Err(invalid("the Connection header must include upgrade"));
    }
    if !header_eq(&parts.headers, header::UPGRADE, "websocket") {
        return Err(invalid("the Upgrade header must be websocket"));
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(invalid("the Sec-WebSocket-Key header is missing"));
    };
    if !header_eq(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(invalid("the Sec-WebSocket-Version header must be 13"));
    }
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Err(not_upgradable("this connection cannot be upgraded"));
    };
    Ok(BrowserUpgrade { key, on_upgrade })
}

/// The 101 that hands the browser's connection to the relay: no extension, no subprotocol.
pub(crate) fn switching_protocols(key: &HeaderValue) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a header value"));
    resp
}

/// Why the agent's side of the handshake did not open a socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AgentAnswer {
    /// It answered with another status than 101 (a refusal, as data).
    Refused(StatusCode),
    /// The stream broke or the answer was no valid upgrade.
    Failed(String),
}

fn failed(why: impl Into<String>) -> AgentAnswer {
    AgentAnswer::Failed(why.into())
}

/// The upgrade request to the agent, written as one chunk.
fn agent_request(target: &PathAndQuery, key: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
    .into_bytes()
}

/// Opens a WebSocket to the agent at `target` over `io`: the upgrade request, then the answer's
/// head, read up to its blank line. Returns what the agent sent after the head (its first
/// frames may come in the same read as the 101), to be relayed before anything else.
pub(crate) async fn agent<S>(io: &mut S, target: &PathAndQuery) -> Result<Vec<u8>, AgentAnswer>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    io.write_all(&agent_request(target, &key)).await.map_err(|e| failed(format!("writing the upgrade: {e}")))?;
    io.flush().await.map_err(|e| failed(format!("writing the upgrade: {e}")))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = io.read(&mut chunk).await.map_err(|e| failed(format!("reading the answer: {e}")))?;
        if n == 0 {
            return Err(failed("the stream ended before the answer's head"));
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break from + i + 4;
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(failed("the answer's head is too long"));
        }
    };
    check_answer(&head[..end], &key)?;
    Ok(head.split_off(end))
}

/// An answer's head, as a client must check it (RFC 6455 §4.1): 101, `Upgrade: websocket`,
/// `Connection: upgrade`, the accept key of `key`, and no extension or subprotocol (none was
/// asked for).
fn check_answer(head: &[u8], key: &str) -> Result<(), AgentAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(failed("an incomplete answer")),
        Err(e) => return Err(failed(format!("an invalid answer: {e}"))),
    }
    let code = resp.code.unwrap_or_default();
    if code != 101 {
        return StatusCode::from_u16(code)
            .map_or_else(|_| Err(failed(format!("status {code}"))), |s| Err(AgentAnswer::Refused(s)));
    }
    let get = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    if !get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return Err(failed("a 101 without Upgrade: websocket"));
    }
    let connection = get("connection").and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
    if !connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return Err(failed("a 101 without Connection: upgrade"));
    }
    if get("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(failed("a 101 with the wrong Sec-WebSocket-Accept"));
    }
    if get("sec-websocket-extensions").is_some() || get("sec-websocket-protocol").is_some() {
        return Err(failed("a 101 with an extension or subprotocol nobody asked for"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn upgrade_request() -> Parts {
        Request::builder()
            .method("GET")
            .uri("/ide/s/api/echo")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn bad_upgrades_get_the_proxys_json_errors() {
        type Case = (fn(&mut Parts), StatusCode, &'static str);
        let cases: [Case; 7] = [
            (|p| p.method = Method::POST, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (
                |p| drop(p.headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"))),
                StatusCode::BAD_REQUEST,
                "invalid_upgrade",
            ),
            (
                |p| drop(p.headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"))),
                StatusCode::BAD_REQUEST,
                "invalid_upgrade",
            ),
            (|p| drop(p.headers.remove(header::SEC_WEBSOCKET_KEY)), StatusCode::BAD_REQUEST, "invalid_upgrade"),
            (
                |p| drop(p.headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("12"))),
                StatusCode::BAD_REQUEST,
                "invalid_upgrade",
            ),
            (|p| p.version = Version::HTTP_2, StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            // Well-formed, but on a connection hyper cannot upgrade.
            (|_| {}, StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
        ];
        for (i, (edit, status, code)) in cases.into_iter().enumerate() {
            let mut parts = upgrade_request();
            edit(&mut parts);
            let resp = browser_upgrade(&mut parts).err().expect("refused").into_response();
            assert_eq!(resp.status(), status, "case {i}");
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
            assert_eq!(v["error"]["code"], code, "case {i}");
        }
    }

    #[test]
    fn the_101_carries_the_accept_key_of_the_browsers_key() {
        let resp = switching_protocols(&HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's own example.
        assert_eq!(resp.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!resp.headers().contains_key(header::SEC_WEBSOCKET_EXTENSIONS));
        assert!(!resp.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }

    /// An agent that reads the upgrade request and answers with `answer(key)` in one write.
    async fn handshake_with(answer: impl FnOnce(&str) -> Vec<u8>) -> (Result<Vec<u8>, AgentAnswer>, String) {
        let (mut proxy_end, mut agent_end) = tokio::io::duplex(64 * 1024);
        let target: PathAndQuery = "/api/terminals/1/socket?x=1".parse().unwrap();
        let peer = async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = agent_end.read(&mut buf).await.unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).expect("a key").to_string();
            agent_end.write_all(&answer(&key)).await.unwrap();
            (request, agent_end)
        };
        let (result, (request, _agent_end)) = tokio::join!(agent(&mut proxy_end, &target), peer);
        (result, request)
    }

    fn accept(key: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-accept: {}\r\n{extra}\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    #[tokio::test]
    async fn the_agents_first_frame_in_the_read_of_its_101_is_kept() {
        let frame = [0x82, 3, b'o', b'u', b't'];
        let (early, request) = handshake_with(|key| [accept(key, "").as_bytes(), &frame].concat()).await;
        assert_eq!(early, Ok(frame.to_vec()));
        assert!(request.starts_with("GET /api/terminals/1/socket?x=1 HTTP/1.1\r\nHost: agent\r\n"), "{request}");
        assert!(request.contains("Sec-WebSocket-Version: 13\r\n") && request.contains("Upgrade: websocket\r\n"));
        assert!(!request.to_ascii_lowercase().contains("extensions") && !request.contains("Protocol"));
        let (early, _) = handshake_with(|key| accept(key, "").into_bytes()).await;
        assert_eq!(early, Ok(vec![]));
    }

    #[tokio::test]
    async fn refusals_and_bad_101s_from_the_agent_are_told_apart() {
        let (r, _) = handshake_with(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}".to_vec()).await;
        assert_eq!(r, Err(AgentAnswer::Refused(StatusCode::NOT_FOUND)));
        let (r, _) = handshake_with(|_| b"HTTP/1.1 302 Found\r\nlocation: /x\r\n\r\n".to_vec()).await;
        assert_eq!(r, Err(AgentAnswer::Refused(StatusCode::FOUND)));
        let (r, _) = handshake_with(|_| accept("not the key", "").into_bytes()).await;
        assert!(matches!(r, Err(AgentAnswer::Failed(ref e)) if e.contains("Accept")), "{r:?}");
        let (r, _) =
            handshake_with(|key| accept(key, "sec-websocket-extensions: permessage-deflate\r\n").into_bytes()).await;
        assert!(matches!(r, Err(AgentAnswer::Failed(_))), "{r:?}");
        let (r, _) = handshake_with(|key| accept(key, "sec-websocket-protocol: x\r\n").into_bytes()).await;
        assert!(matches!(r, Err(AgentAnswer::Failed(_))), "{r:?}");
        let (r, _) = handshake_with(|_| b"garbage\r\n\r\n".to_vec()).await;
        assert!(matches!(r, Err(AgentAnswer::Failed(_))), "{r:?}");
        let (r, _) = handshake_with(|_| vec![b'x'; MAX_RESPONSE_HEAD + 4096]).await;
        assert_eq!(r, Err(failed("the answer's head is too long")));
    }

    #[test]
    fn paths_that_are_no_request_target_are_not_written() {
        for bad in ["/a b", "/a\r\nHost: evil", "/a\nb"] {
            assert!(bad.parse::<PathAndQuery>().is_err(), "{bad:?}");
        }
    }
}
