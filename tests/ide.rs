//! The browser IDE: web-ide-proxy's gatekeeping and forwarding, and the whole IDE in a real
//! headless Chromium (tests/e2e/ide.mjs, playwright-core), under runc and gVisor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// An exercise on the base image (which runs the IDE agent), registered directly: no build.
async fn ide_exercise(app: &TestApp, slug: &str) {
    let body = json!({"image": "exercise-runner/base:latest", "check": {"command": ["sh", "-c", "test -f done"], "timeout_secs": 10}});
    let (status, v) = app.put(&format!("/v1/exercises/{slug}"), body).await;
    assert!(status == 200 || status == 201, "{v}");
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Follows an `ide_url` like a browser: the token is exchanged for the session's cookie.
async fn login(app: &TestApp, ide_url: &str) -> String {
    let r = no_redirects().get(ide_url).send().await.unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let set_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    let location = r.headers().get("location").unwrap().to_str().unwrap().to_string();
    assert!(!location.contains("token="), "the token leaves the address bar: {location}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Path=/ide/"), "{set_cookie}");
    let _ = app;
    set_cookie.split(';').next().unwrap().to_string()
}

async fn get_with(app: &TestApp, path: &str, cookie: &str) -> (u16, Value) {
    let r = no_redirects().get(app.url(path)).header("cookie", cookie).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Opens the WebSocket of terminal 1 with the given Origin; returns the socket or the HTTP status.
async fn terminal_socket(
    app: &TestApp,
    session: &str,
    cookie: &str,
    origin: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    let r = no_redirects()
        .post(app.url(&format!("/ide/{session}/api/terminals")))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "creating a terminal: {}", r.status());
    let id: Value = r.json().await.unwrap();
    let url = app
        .url(&format!("/ide/{session}/api/terminals/{}/socket", id["id"].as_str().unwrap()))
        .replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// The close code the socket ends with, within the deadline: `Ok(None)` for an end without a
/// close frame, `Err` when it stays open.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    within: Duration,
) -> Result<Option<u16>, tokio::time::error::Elapsed> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
}

async fn wait_agent(app: &TestApp, session: &str, cookie: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = get_with(app, &format!("/ide/{session}/api/files"), cookie).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "the agent did not answer: {status} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads terminal output until `needle` shows up.
async fn read_until<S>(ws: &mut S, needle: &str) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("terminal ended before {needle:?}: {other:?}; saw {seen:?}"),
        }
    }
    seen
}

fn input(text: &str) -> Message {
    Message::Text(json!({"type": "input", "data": text}).to_string().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_links_and_cookies_are_bound_to_their_session_and_expire() {
    let app = spawn_app_with(|s| s.ide_token_ttl = Duration::from_secs(2)).await;
    ide_exercise(&app, "ide-auth").await;
    let a = app.session("ada", "ide-auth").await;
    let b = app.session("bob", "ide-auth").await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let a_url = a["ide_url"].as_str().unwrap();
    assert!(a_url.starts_with(&format!("{}/ide/{a_id}/?token=", app.base)), "{a_url}");
    let a_token = a_url.split("token=").nth(1).unwrap();

    // A's token on B's IDE, a tampered token, no credentials at all: refused before the sandbox.
    let r = no_redirects().get(app.url(&format!("/ide/{b_id}/?token={a_token}"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_token");
    let tampered = a_token.replacen(|c: char| c.is_ascii_digit(), "9", 1);
    let r = no_redirects().get(app.url(&format!("/ide/{a_id}/?token={tampered}"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (status, v) = get_with(&app, &format!("/ide/{a_id}/api/files"), "").await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("not_authenticated")));

    // A's own link works; its cookie opens A's IDE and not B's.
    let a_cookie = login(&app, a_url).await;
    wait_agent(&app, a_id, &a_cookie).await;
    let (status, v) = get_with(&app, &format!("/ide/{a_id}/api/info"), &a_cookie).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["workdir"], "/workspace");
    let (status, _) = get_with(&app, &format!("/ide/{b_id}/api/files"), &a_cookie).await;
    assert_eq!(status, 401, "a cookie of one session does not open another");

    // The page's assets come gzipped and revalidate by ETag.
    let r = no_redirects()
        .get(app.url(&format!("/ide/{a_id}/app.js")))
        .header("cookie", &a_cookie)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let gz_len = r.bytes().await.unwrap().len();
    let plain =
        no_redirects().get(app.url(&format!("/ide/{a_id}/app.js"))).header("cookie", &a_cookie).send().await.unwrap();
    assert!(gz_len * 2 < plain.bytes().await.unwrap().len(), "gzip at least halves the script");
    let r = no_redirects()
        .get(app.url(&format!("/ide/{a_id}/app.js")))
        .header("cookie", &a_cookie)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Links expire.
    let (_, fresh) = app.get(&format!("/v1/sessions/{a_id}")).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = no_redirects().get(fresh["ide_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "token_expired");

    // A session that is not running gets nothing through.
    app.delete(&format!("/v1/sessions/{a_id}")).await;
    let (status, v) = get_with(&app, &format!("/ide/{a_id}/api/files"), &a_cookie).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_not_running")));
    // Its link, even unexpired, is refused at the exchange: no cookie, no redirect.
    let secret = std::fs::read_to_string(app.data_dir.join("ide-secret")).unwrap();
    let far = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let link = web_ide_proxy::token::sign(secret.trim().as_bytes(), web_ide_proxy::token::Kind::Url, a_id, far);
    let r = no_redirects().get(app.url(&format!("/ide/{a_id}/?token={link}"))).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("set-cookie").is_none() && r.headers().get("location").is_none());
    // A browser navigating there reads a sentence, not JSON.
    let r = no_redirects()
        .get(app.url(&format!("/ide/{a_id}/?token={link}")))
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let text = r.text().await.unwrap();
    assert!(text.contains("the session is stopp"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_need_an_allowed_origin_and_run_real_shells() {
    let app = spawn_app().await;
    ide_exercise(&app, "ide-ws").await;
    let s = app.session("ada", "ide-ws").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    let err = terminal_socket(&app, id, &cookie, "http://evil.example").await.err();
    assert_eq!(err, Some(403), "a cross-site socket is refused");
    let origin = app.base.clone();
    let mut ws = terminal_socket(&app, id, &cookie, &origin).await.expect("same-origin socket");
    ws.send(Message::Text(json!({"type": "resize", "cols": 100, "rows": 30}).to_string().into())).await.unwrap();
    ws.send(input("echo $((6*7)); id -u\r")).await.unwrap();
    let out = read_until(&mut ws, "1000").await;
    assert!(out.contains("42"), "{out}");
    // The resize reached the PTY.
    ws.send(input("stty size\r")).await.unwrap();
    let out = read_until(&mut ws, "30 100").await;
    assert!(out.contains("30 100"), "{out}");
    // Files written in the terminal are in the sandbox and in the file list.
    ws.send(input("echo hello > from-terminal.txt\r")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, files) = get_with(&app, &format!("/ide/{id}/api/files"), &cookie).await;
        if files.to_string().contains("from-terminal.txt") {
            break;
        }
        assert!(Instant::now() < deadline, "{files}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A message over the size limit closes the socket with 1009 instead of reaching the sandbox.
    let big = "x".repeat(2 * 1024 * 1024);
    let _ = ws.send(input(&big)).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(10)).await, Ok(Some(1009)), "message too big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activity_keeps_a_session_alive_and_reaping_closes_the_socket() {
    let app = spawn_app_with(|s| s.idle_timeout = Duration::from_secs(3)).await;
    ide_exercise(&app, "ide-idle").await;
    let s = app.session("ada", "ide-idle").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    let mut ws = terminal_socket(&app, id, &cookie, &app.base.clone()).await.unwrap();
    // Typing for twice the idle timeout, with no API calls at all: the session stays.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        ws.send(input("true\r")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), ws.next()).await {}
    }
    let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running", "IDE traffic is activity: {v}");
    // Silence: the session is reaped and the socket closes with code 4000.
    let started = Instant::now();
    let code =
        close_code(&mut ws, Duration::from_secs(25)).await.expect("the socket closes once the session is reaped");
    assert_eq!(code, Some(4000), "the page is told the session ended");
    assert!(started.elapsed() < Duration::from_secs(25));
    app.wait_session(id, Duration::from_secs(10), |v| v["state"] == "stopped").await;
}

async fn browser_pass(runtime: runner::domain::Runtime) {
    let app = spawn_app_with(move |s| s.runtime = runtime).await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../exercise-images/examples/python-fizzbuzz");
    let (status, b) = app.submit_build("python-fizzbuzz", tar_dir(&example)).await;
    assert_eq!(status, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), Duration::from_secs(900)).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let s = app.session("ada", "python-fizzbuzz").await;
    let container = session_container(&app.instance, s["id"].as_str().unwrap()).unwrap();
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artifacts")
        .join(format!("ide-{}", runtime.as_str()));
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/ide.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("IDE_URL", s["ide_url"].as_str().unwrap())
        .env("CONTAINER", &container)
        .env("ARTIFACTS", &artifacts)
        .env("EDIT_FILE", "fizzbuzz.py")
        .env("EXPECT_VERDICT", "Failed")
        // Last, the script ends the session through the API and expects the page to say so.
        .env("END_SESSION_URL", app.url(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())))
        .env("API_TOKEN", TOKEN)
        .output()
        .await
        .expect("running node tests/e2e/ide.mjs (scripts/test installs node, npm packages and chromium)");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed (screenshots in {}):\n{log}", artifacts.display());
    // The Check button recorded a check of the session.
    let (_, checks) = app.get(&format!("/v1/sessions/{}/checks", s["id"].as_str().unwrap())).await;
    assert!(!checks["checks"].as_array().unwrap().is_empty(), "{checks}");
    let (_, ended) = app.get(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())).await;
    assert_eq!(ended["state"], "stopped", "the browser test ended the session: {ended}");
    // Start over kept the edited files as a snapshot.
    let (_, snaps) = app.get("/v1/workspaces/ada/python-fizzbuzz/snapshots").await;
    let reset = snaps["snapshots"].as_array().unwrap().iter().find(|s| s["reason"] == "reset").cloned();
    let reset = reset.unwrap_or_else(|| panic!("a reset snapshot: {snaps}"));
    let r = app
        .client
        .get(app.url(&format!("/v1/snapshots/{}", reset["id"].as_str().unwrap())))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let mut kept = tar::Archive::new(flate2::read::GzDecoder::new(std::io::Cursor::new(r.bytes().await.unwrap())));
    let edited = kept.entries().unwrap().map(|e| e.unwrap()).any(|mut e| {
        let mut text = String::new();
        let is_file = e.path().unwrap().to_string_lossy() == "fizzbuzz.py";
        is_file && std::io::Read::read_to_string(&mut e, &mut text).is_ok() && text.contains("# edited in the browser")
    });
    assert!(edited, "the snapshot holds the file as edited in the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ide_works_in_a_real_browser() {
    browser_pass(runner::domain::Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ide_works_in_a_real_browser_under_gvisor() {
    browser_pass(runner::domain::Runtime::Runsc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ide_cookie_can_be_made_for_embedding_in_another_site() {
    let app = spawn_app_with(|s| s.ide_cookie_cross_site = true).await;
    ide_exercise(&app, "embedded").await;
    let s = app.session("ada", "embedded").await;
    let r = no_redirects().get(s["ide_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("SameSite=None; Secure") && cookie.contains("HttpOnly"), "{cookie}");
}

/// A session's open connections are bounded: past the bound the proxy answers 429 with
/// Retry-After and nothing reaches the sandbox; closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_session_are_bounded() {
    let app = spawn_app_with(|s| s.ide_max_connections = 2).await;
    ide_exercise(&app, "ide-cap").await;
    let s = app.session("ada", "ide-cap").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    let first = terminal_socket(&app, id, &cookie, &app.base.clone()).await.unwrap();
    let mut second = terminal_socket(&app, id, &cookie, &app.base.clone()).await.unwrap();
    let r =
        no_redirects().get(app.url(&format!("/ide/{id}/api/files"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections", "{v}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, files) = get_with(&app, &format!("/ide/{id}/api/files"), &cookie).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a closed socket did not free its place: {status} {files}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ending the session through the API closes the sockets still open, telling the page why.
    let (status, _) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    let code =
        close_code(&mut second, Duration::from_secs(15)).await.expect("the socket closes once the session is deleted");
    assert_eq!(code, Some(4000));
}

/// An expired cookie is refused with its own code (the page can say "open the IDE again"), a
/// forged one too; an operator's list of allowed origins replaces the same-host rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cookies_and_origins_outside_the_configured_list_are_refused() {
    let app = spawn_app_with(|s| s.ide_allowed_origins = vec!["https://course.example".to_string()]).await;
    ide_exercise(&app, "ide-gate").await;
    let s = app.session("ada", "ide-gate").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    // Origins: only the configured one, not even the runner's own.
    assert_eq!(terminal_socket(&app, id, &cookie, &app.base.clone()).await.err(), Some(403));
    assert!(terminal_socket(&app, id, &cookie, "https://course.example").await.is_ok());
    // Cookies: one signed with the runner's secret but expired, and one signed with another.
    let secret = std::fs::read_to_string(app.data_dir.join("ide-secret")).unwrap();
    let name = web_ide_proxy::COOKIE_NAME;
    let expired = web_ide_proxy::token::sign(secret.trim().as_bytes(), web_ide_proxy::token::Kind::Cookie, id, 1);
    let (status, v) = get_with(&app, &format!("/ide/{id}/api/files"), &format!("{name}={expired}")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("cookie_expired")), "{v}");
    let far = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let forged = web_ide_proxy::token::sign(b"not-the-secret", web_ide_proxy::token::Kind::Cookie, id, far);
    let (status, _) = get_with(&app, &format!("/ide/{id}/api/files"), &format!("{name}={forged}")).await;
    assert_eq!(status, 401);
}

// ---- a learner who replaces the agent (issue 15: the agent is learner-controlled) ----

/// Inside the sandbox, as the learner: stops the real agent and serves tests/e2e/hostile-agent.py
/// on its socket; returns the container once the fake listens.
async fn replace_agent_with_hostile_one(app: &TestApp, session: &str) -> String {
    let container = session_container(&app.instance, session).unwrap();
    let script =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/hostile-agent.py"))
            .unwrap();
    learner_writes(&container, "/tmp/hostile-agent.py", &script);
    // The session answers once its container runs; supervisord may still be starting.
    eventually(Duration::from_secs(30), "supervisord's socket", || {
        (sandbox_exec(&container, "test -S /run/supervisor.sock").0 == 0).then_some(())
    })
    .await;
    let (code, out) = sandbox_exec(&container, "id -u && supervisorctl stop ide-agent");
    assert!(code == 0 && out.starts_with("1000"), "the learner stops the agent: {out}");
    let serve = "python3 /tmp/hostile-agent.py /run/ide-agent/agent.sock >/tmp/hostile-agent.log 2>&1";
    docker(&["exec", "-d", &container, "sh", "-c", serve]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox_exec(&container, "test -f /tmp/hostile-agent.ready").0 != 0 {
        let (_, why) = sandbox_exec(&container, "cat /tmp/hostile-agent.log; ps -eo pid,args");
        assert!(Instant::now() < deadline, "the fake agent does not listen:\n{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    container
}

/// Under runc the proxy reaches the agent on its abstract socket in the sandbox's own network
/// namespace, without an exec (issue 11, item 6): an agent listening there alone (no file socket,
/// so `ide-agent connect` finds nothing) answers the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_runc_the_proxy_reaches_the_agent_in_the_sandboxs_network_namespace() {
    let app = spawn_app().await;
    ide_exercise(&app, "ide-netns").await;
    let s = app.session("ada", "ide-netns").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    let container = session_container(&app.instance, id).unwrap();
    let script = r#"
import socketserver, sys
from http.server import BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b'{"title":"from the namespace"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
server = S("\0exercise-runner/ide-agent", H)
open("/tmp/netns-agent.ready", "w").close()
server.serve_forever()
"#;
    learner_writes(&container, "/tmp/netns-agent.py", script);
    let (code, out) = sandbox_exec(&container, "supervisorctl stop ide-agent && rm -f /run/ide-agent/agent.sock");
    assert_eq!(code, 0, "{out}");
    docker(&["exec", "-d", &container, "sh", "-c", "python3 /tmp/netns-agent.py >/tmp/netns-agent.log 2>&1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox_exec(&container, "test -f /tmp/netns-agent.ready").0 != 0 {
        assert!(Instant::now() < deadline, "{}", sandbox_exec(&container, "cat /tmp/netns-agent.log").1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = get_with(&app, &format!("/ide/{id}/api/info"), &cookie).await;
        if status == 200 && v["title"] == "from the namespace" {
            break;
        }
        assert!(Instant::now() < deadline, "the agent in the namespace did not answer: {status} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No file socket at all: the exec path has nothing to connect to.
    let (code, _) = sandbox_exec(&container, "test -e /run/ide-agent/agent.sock");
    assert_ne!(code, 0);
}

/// The attack of issue 15 (3): what a learner's agent answers reaches the browser as data only —
/// no cookie, no HTML, no script, no CORS grant — and the page comes from the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_agent_gets_only_data_to_the_browser() {
    let app = spawn_app().await;
    ide_exercise(&app, "ide-hostile").await;
    let s = app.session("ada", "ide-hostile").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    replace_agent_with_hostile_one(&app, id).await;
    for path in ["api/files", "api/file?path=index.html", "api/anything"] {
        let r =
            no_redirects().get(app.url(&format!("/ide/{id}/{path}"))).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(h.get_all("set-cookie").iter().next().is_none(), "{path}: a cookie from the sandbox: {h:?}");
        assert_eq!(h["content-type"], "application/octet-stream", "{path}");
        assert_eq!(h["content-disposition"], "attachment", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(h["content-security-policy"].to_str().unwrap().contains("sandbox"), "{path}: {h:?}");
        assert!(h.get("access-control-allow-origin").is_none(), "{path}");
        assert!(r.text().await.unwrap().contains("<script>"), "the body is passed on, as data");
    }
    // The page, its script and styles are the runner's, whatever the sandbox serves.
    let page = no_redirects().get(app.url(&format!("/ide/{id}/"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"file-tree\"") && !html.contains("owned"), "{html}");
    // Nothing but the agent's API reaches the sandbox.
    let (status, v) = get_with(&app, &format!("/ide/{id}/evil.html"), &cookie).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
}

/// The attack of issue 15 (4): an agent that streams bodies forever cannot pile up exec streams
/// past the session's connection bound; a connection is free again only when its body ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_answers_hold_their_connection_until_they_end() {
    const BOUND: usize = 6;
    let app = spawn_app_with(|s| s.ide_max_connections = BOUND).await;
    ide_exercise(&app, "ide-stream").await;
    let s = app.session("ada", "ide-stream").await;
    let id = s["id"].as_str().unwrap();
    let cookie = login(&app, s["ide_url"].as_str().unwrap()).await;
    wait_agent(&app, id, &cookie).await;
    let container = replace_agent_with_hostile_one(&app, id).await;
    let connects = || {
        let (_, out) = sandbox_exec(&container, "ps -eo args | grep -c '^/usr/local/bin/ide-agent connect' || true");
        out.trim().parse::<usize>().unwrap_or(usize::MAX)
    };
    // 30 parallel streams, each kept open: the bound's worth get through, the rest get 429.
    let client = no_redirects();
    let requests = (0..30).map(|n| {
        let (client, url, cookie) = (client.clone(), app.url(&format!("/ide/{id}/api/slow{n}")), cookie.clone());
        async move { client.get(url).header("cookie", cookie).send().await.unwrap() }
    });
    let mut open = vec![];
    let mut refused = 0;
    for mut r in futures_util::future::join_all(requests).await {
        match r.status().as_u16() {
            200 => {
                assert!(r.chunk().await.unwrap().is_some(), "the stream flows");
                open.push(r);
            }
            429 => {
                assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(open.len(), BOUND, "{refused} refused");
    // More attempts while they stream: still refused, and the sandbox's exec streams stay at the
    // bound (plus the few idle ones a pool keeps), instead of growing towards its pids limit.
    for n in 0..10 {
        let r =
            client.get(app.url(&format!("/ide/{id}/api/slow-more{n}"))).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 429);
    }
    let execs = connects();
    assert!(execs <= BOUND + 4, "{execs} exec streams for a bound of {BOUND}");
    // Ending the streams frees their places.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client.get(app.url(&format!("/ide/{id}/api/info"))).header("cookie", &cookie).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "closed streams did not free their places: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The attack of issue 15 (3) in real Chromium: a learner's fake agent cannot set a cookie, run
/// script on the IDE's origin or reach another session, and its cookie bomb does not break the
/// next session's IDE in the same browser. Once with all sessions on the runner's host, once
/// with a host per session (`RUNNER_IDE_SUBDOMAIN_HOST`; `*.localhost` is loopback in Chromium).
async fn hostile_agent_in_a_browser(separate_origins: bool) {
    let app = spawn_app_with(move |s| {
        if separate_origins {
            s.ide_subdomain_host = Some("ide.localhost".into());
        }
    })
    .await;
    let slug = if separate_origins { "ide-hostile-hosts" } else { "ide-hostile-browser" };
    ide_exercise(&app, slug).await;
    let a = app.session("ada", slug).await;
    let b = app.session("bob", slug).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    if separate_origins {
        let port = app.base.rsplit(':').next().unwrap();
        let expected = format!("http://{a_id}.ide.localhost:{port}/ide/{a_id}/?token=");
        assert!(a["ide_url"].as_str().unwrap().starts_with(&expected), "{}", a["ide_url"]);
        // The session's path on the runner's own host is refused: only its host serves it.
        let token = a["ide_url"].as_str().unwrap().split("token=").nth(1).unwrap();
        let r = no_redirects().get(app.url(&format!("/ide/{a_id}/?token={token}"))).send().await.unwrap();
        assert_eq!(r.status(), 421);
    }
    replace_agent_with_hostile_one(&app, a_id).await;
    let b_container = session_container(&app.instance, b_id).unwrap();
    learner_writes(&b_container, "/workspace/only-in-b.txt", "mine\n");
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artifacts")
        .join(if separate_origins { "ide-hostile-hosts" } else { "ide-hostile" });
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/hostile.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("IDE_A", a["ide_url"].as_str().unwrap())
        .env("IDE_B", b["ide_url"].as_str().unwrap())
        .env("SESSION_B", b_id)
        .env("B_FILE", "only-in-b.txt")
        .env("ARTIFACTS", &artifacts)
        .env("SEPARATE_ORIGINS", if separate_origins { "1" } else { "0" })
        .output()
        .await
        .expect("running node tests/e2e/hostile.mjs (scripts/test installs node, npm packages and chromium)");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{log}");
    assert!(out.status.success(), "the browser attack test failed (screenshots in {}):\n{log}", artifacts.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learners_fake_agent_cannot_act_on_the_browser() {
    hostile_agent_in_a_browser(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_host_per_session_each_ide_is_an_origin_of_its_own() {
    hostile_agent_in_a_browser(true).await;
}

/// A browser that opens an IDE link that expired or was forged reads a short page saying what
/// happened and what to do; an API client still gets JSON (issue 10, item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_opening_a_bad_ide_link_read_a_sentence_and_api_clients_get_json() {
    let app = spawn_app().await;
    ide_exercise(&app, "links").await;
    let s = app.session("ada", "links").await;
    let id = s["id"].as_str().unwrap();
    let secret = std::fs::read_to_string(app.data_dir.join("ide-secret")).unwrap();
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 60;
    let expired = web_ide_proxy::token::sign(secret.trim().as_bytes(), web_ide_proxy::token::Kind::Url, id, past);
    let forged = web_ide_proxy::token::sign(b"not-the-secret", web_ide_proxy::token::Kind::Url, id, past + 3600);
    for (token, says) in [(expired, "expired"), (forged, "not valid")] {
        let url = app.url(&format!("/ide/{id}/?token={token}"));
        let r = no_redirects()
            .get(&url)
            .header("sec-fetch-mode", "navigate")
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let page = r.text().await.unwrap();
        assert!(page.contains(says), "{page}");
        assert!(!page.contains("{\""), "a page, not JSON: {page}");
        let r = no_redirects().get(&url).header("accept", "application/json").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
    }
}
