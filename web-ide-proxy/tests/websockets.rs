//! WebSockets through the proxy on a real HTTP server on 127.0.0.1, as a browser opens them: the
//! proxy answers the upgrade itself and relays to an agent (a tungstenite server, or a scripted
//! one) on an in-memory stream the backend gives. The sandbox-side paths (exec, the sandbox's
//! namespace) are the runner's tests (`tests/ide.rs`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::StatusCode;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, handshake::derive_accept_key, Message};
use web_ide_proxy::{token, Backend, BoxIo, Config, Proxy, SessionLookup, COOKIE_NAME};

const SESSION: &str = "0b5e2c1e-6d1f-4c7e-9a38-2f0d1c9e7a41";
const SECRET: &[u8] = b"test-secret";

/// How the agent behind the proxy answers.
#[derive(Clone, Copy)]
enum Agent {
    /// A tungstenite server echoing every message; it closes with 4001 on the message "exit".
    Echo,
    /// Answers the upgrade with this status instead of 101.
    Refuses(u16),
    /// Sends its first frame in the same write as its 101.
    GreetsAtOnce,
}

struct Fake {
    agent: Agent,
    /// The request heads the agent got.
    requests: Mutex<Vec<String>>,
}

/// The backend: every new stream to "the sandbox" is served by the fake agent.
struct Sandbox(Arc<Fake>);

impl Backend for Sandbox {
    async fn session(&self, _: &str) -> anyhow::Result<SessionLookup> {
        Ok(SessionLookup::Running { container: "c1".into() })
    }

    async fn connect(&self, _: &str) -> anyhow::Result<BoxIo> {
        let (proxy_end, agent_end) = tokio::io::duplex(1 << 20);
        let fake = self.0.clone();
        tokio::spawn(async move { fake.serve(agent_end).await });
        Ok(Box::new(proxy_end))
    }

    async fn check(&self, _: &str) -> (StatusCode, serde_json::Value) {
        (StatusCode::CREATED, serde_json::json!({}))
    }

    async fn touch(&self, _: Vec<(String, i64)>) {}
}

impl Fake {
    async fn serve(&self, mut io: DuplexStream) {
        if let Agent::Echo = self.agent {
            #[allow(clippy::result_large_err, reason = "tungstenite's callback returns its response as the error")]
            let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                self.requests.lock().unwrap().push(format!("{} {}", req.method(), req.uri()));
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(io, callback).await else { return };
            while let Some(Ok(m)) = ws.next().await {
                if m.to_text().is_ok_and(|t| t == "exit") {
                    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: 4001.into(),
                        reason: "the shell exited".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                } else if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
            return;
        }
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8(head).unwrap();
        self.requests.lock().unwrap().push(head.clone());
        let answer = match self.agent {
            Agent::Refuses(status) => format!("HTTP/1.1 {status} No\r\ncontent-length: 0\r\n\r\n").into_bytes(),
            _ => {
                let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap();
                let accept = derive_accept_key(key.as_bytes());
                let mut a = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes();
                a.extend_from_slice(&[0x82, 5]);
                a.extend_from_slice(b"hello");
                a
            }
        };
        let _ = io.write_all(&answer).await;
        // Stay until the proxy hangs up.
        while io.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    }
}

struct Server {
    addr: std::net::SocketAddr,
    proxy: Arc<Proxy<Sandbox>>,
    fake: Arc<Fake>,
}

async fn serve(agent: Agent) -> Server {
    let fake = Arc::new(Fake { agent, requests: Mutex::default() });
    let config = Config {
        secret: SECRET.to_vec(),
        max_message_bytes: 64 * 1024,
        agent_start_grace: Duration::from_millis(200),
        ..Config::default()
    };
    let proxy = Proxy::new(Sandbox(fake.clone()), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = proxy.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server { addr, proxy, fake }
}

type Browser = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

impl Server {
    fn request(&self, path: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}/ide/{SESSION}/{path}", self.addr).into_client_request().unwrap();
        let cookie = token::sign(SECRET, token::Kind::Cookie, SESSION, token::now_unix() + 600);
        req.headers_mut().insert("cookie", format!("{COOKIE_NAME}={cookie}").parse().unwrap());
        req.headers_mut().insert("origin", format!("http://{}", self.addr).parse().unwrap());
        req
    }

    async fn open(&self, path: &str) -> Result<Browser, tokio_tungstenite::tungstenite::Error> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tokio_tungstenite::client_async(self.request(path), tcp).await.map(|(ws, _)| ws)
    }
}

async fn next(ws: &mut Browser) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no answer in 10 s").and_then(Result::ok)
}

#[tokio::test]
async fn messages_pass_both_ways_and_closes_pass_with_their_codes() {
    let s = serve(Agent::Echo).await;
    let mut ws = s.open("api/terminals/1/socket?x=1").await.expect("upgraded");
    assert_eq!(s.fake.requests.lock().unwrap().as_slice(), ["GET /api/terminals/1/socket?x=1"]);
    ws.send(Message::Text("keystroke".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::Text("keystroke".into())));
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::Binary(big.into())));
    // The agent's own close (the shell exited) reaches the browser as it was.
    ws.send(Message::Text("exit".into())).await.unwrap();
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "the shell exited")),
        other => panic!("expected the agent's close, got {other:?}"),
    }
    assert!(next(&mut ws).await.is_none(), "the socket ends");
}

#[tokio::test]
async fn the_agents_first_frame_right_after_its_101_reaches_the_browser() {
    let s = serve(Agent::GreetsAtOnce).await;
    let mut ws = s.open("api/echo").await.expect("upgraded");
    assert_eq!(next(&mut ws).await, Some(Message::Binary(b"hello".to_vec().into())));
    let head = s.fake.requests.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /api/echo HTTP/1.1\r\nHost: agent\r\n"), "{head}");
    assert!(!head.contains("Cookie") && !head.contains("Origin"), "nothing of the browser's: {head}");
}

#[tokio::test]
async fn a_message_over_the_limit_gets_1009() {
    let s = serve(Agent::Echo).await;
    let mut ws = s.open("api/echo").await.unwrap();
    let _ = ws.send(Message::Binary(vec![0; 65 * 1024].into())).await;
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn the_end_of_the_session_closes_the_socket_with_4000() {
    let s = serve(Agent::Echo).await;
    let mut ws = s.open("api/echo").await.unwrap();
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::Text("ping".into())));
    s.proxy.session_ended(SESSION);
    match next(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "the session has ended"))
        }
        other => panic!("expected 4000, got {other:?}"),
    }
}

/// A refusal of the agent is an HTTP answer to the browser (the socket is not opened first).
#[tokio::test]
async fn an_agents_refusal_is_the_browsers_http_answer() {
    for (agent, browser) in [(404, 404), (500, 500), (302, 502), (200, 502)] {
        let s = serve(Agent::Refuses(agent)).await;
        match s.open("api/terminals/9/socket").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), browser, "the agent answered {agent}");
                let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "agent_refused", "{body}");
            }
            other => panic!("the agent answered {agent}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_upgrade_gets_a_json_error_and_reaches_no_agent() {
    let s = serve(Agent::Echo).await;
    let mut req = s.request("api/echo");
    req.headers_mut().insert("sec-websocket-version", "8".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "invalid_upgrade", "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.fake.requests.lock().unwrap().is_empty());
}
