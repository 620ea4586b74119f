//! The agent's HTTP routes: files and terminals, as JSON and WebSockets. The proxy in front of it
//! has already authenticated the learner, strips the `/ide/{session}` prefix, serves the page
//! itself and passes on only what is under `api/`, as data (the agent runs as the learner, so the
//! proxy trusts nothing it says).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
        DefaultBodyLimit, Path, Query, State,
    },
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;

use crate::{files, Agent};

pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// tungstenite zero-fills its whole read buffer before every read, even one that finds nothing
/// (128 KiB by default: most of a keystroke's cost). Terminal output comes in PTY-sized chunks.
const READ_BUFFER_BYTES: usize = 8 * 1024;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/api/info", get(info))
        .route("/api/health", get(health))
        .route("/api/files", get(list_files))
        .route("/api/file", get(read_file).put(write_file))
        .route("/api/terminals", get(list_terminals).post(create_terminal))
        .route("/api/terminals/{id}/socket", get(terminal_socket))
        .route("/api/echo", get(echo_socket))
        .layer(DefaultBodyLimit::max(files::MAX_FILE_BYTES as usize))
        .with_state(agent)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

async fn info(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let title = std::env::var("EXERCISE_TITLE").or_else(|_| std::env::var("EXERCISE_SLUG")).unwrap_or_default();
    Json(json!({"workdir": agent.root, "title": title}))
}

/// The sandbox's health as the runner probes it (docs/ARCHITECTURE.md, "Health"): the agent
/// answers, and no program supervisord runs is stuck. 503 with the reason otherwise.
async fn health() -> Response {
    match crate::health::services(crate::health::SUPERVISOR_SOCKET).await {
        Ok(()) => Json(json!({"healthy": true})).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"healthy": false, "reason": format!("{e:#}")})))
            .into_response(),
    }
}

async fn list_files(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let root = agent.root.clone();
    let entries = tokio::task::spawn_blocking(move || files::list(&root)).await.unwrap_or_default();
    Json(json!({ "entries": entries }))
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
}

async fn read_file(State(agent): State<Arc<Agent>>, Query(q): Query<FileQuery>) -> Response {
    let Some(path) = files::resolve(&agent.root, &q.path) else {
        return error(StatusCode::BAD_REQUEST, "invalid_path", "the path must be relative, inside the workspace");
    };
    match tokio::fs::metadata(&path).await {
        Ok(m) if !m.is_file() => error(StatusCode::BAD_REQUEST, "not_a_file", "not a file"),
        Ok(m) if m.len() > files::MAX_FILE_BYTES => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", "the file is too large to edit here")
        }
        Ok(_) => match tokio::fs::read(&path).await {
            Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "read_failed", e.to_string()),
        },
        Err(_) => error(StatusCode::NOT_FOUND, "file_not_found", format!("{} does not exist", q.path)),
    }
}

async fn write_file(State(agent): State<Arc<Agent>>, Query(q): Query<FileQuery>, body: Bytes) -> Response {
    let Some(path) = files::resolve(&agent.root, &q.path) else {
        return error(StatusCode::BAD_REQUEST, "invalid_path", "the path must be relative, inside the workspace");
    };
    match tokio::fs::write(&path, &body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no_such_directory", e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", e.to_string()),
    }
}

async fn list_terminals(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let list: Vec<_> = agent.terminals.list().into_iter().map(|id| json!({"id": id})).collect();
    Json(json!({ "terminals": list }))
}

async fn create_terminal(State(agent): State<Arc<Agent>>) -> Response {
    match agent.terminals.create(&agent.root) {
        Ok(t) => (StatusCode::CREATED, Json(json!({"id": t.id}))).into_response(),
        Err(e) => error(StatusCode::TOO_MANY_REQUESTS, "terminal_limit", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

async fn terminal_socket(State(agent): State<Arc<Agent>>, Path(id): Path<String>, ws: WebSocketUpgrade) -> Response {
    let Some(term) = agent.terminals.get(&id) else {
        return error(StatusCode::NOT_FOUND, "terminal_not_found", format!("no terminal {id}"));
    };
    let ws = ws.read_buffer_size(READ_BUFFER_BYTES);
    ws.max_message_size(MAX_MESSAGE_BYTES).on_upgrade(move |mut socket: WebSocket| async move {
        let mut att = term.attach();
        if term.has_exited() {
            let frame = CloseFrame { code: 4001, reason: "the shell exited".into() };
            let _ = socket.send(Message::Binary(att.replay.clone())).await;
            let _ = socket.send(Message::Close(Some(frame))).await;
            return;
        }
        // The replay always comes first, as one frame (maybe empty), then a marker: the page
        // ignores terminal queries inside the replay instead of answering them again.
        if socket.send(Message::Binary(att.replay.clone())).await.is_err() {
            return;
        }
        if socket.send(Message::Text(r#"{"type":"replayed"}"#.into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                out = att.live.recv() => match out {
                    Ok(bytes) => if socket.send(Message::Binary(bytes)).await.is_err() { return },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                changed = att.exited.changed() => {
                    let exited = changed.is_err() || *att.exited.borrow_and_update();
                    if exited {
                        let frame = CloseFrame { code: 4001, reason: "the shell exited".into() };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return;
                    }
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Input { data }) => { let _ = term.input(data.as_bytes()).await; }
                        Ok(Control::Resize { cols, rows }) => term.resize(cols, rows).await,
                        Err(_) => {}
                    },
                    Some(Ok(Message::Binary(data))) => { let _ = term.input(&data).await; }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

/// Echoes every message back: the proxy benchmark measures the path without terminal work.
async fn echo_socket(ws: WebSocketUpgrade) -> Response {
    let ws = ws.read_buffer_size(READ_BUFFER_BYTES);
    ws.max_message_size(MAX_MESSAGE_BYTES).on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && socket.send(msg).await.is_err()) {
                return;
            }
        }
    })
}
