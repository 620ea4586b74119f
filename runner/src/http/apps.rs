//! `/v1/apps`, `/v1/deploys`

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{extract::ApiJson, middleware::Actor, operators};
use crate::{
    app::App,
    deploys::{self, deploy, DeployView, ManagedAppError, ManagedAppInput, ManagedAppView},
    error::{ApiError, ApiResult, ErrorBody},
    lifecycle::DeployState,
};

impl From<ManagedAppError> for ApiError {
    fn from(e: ManagedAppError) -> Self {
        let msg = e.to_string();
        match e {
            ManagedAppError::Invalid(i) => i.into(),
            ManagedAppError::NotFound(_) => ApiError::not_found("app_not_found", msg),
            ManagedAppError::DeployNotFound(_) => ApiError::not_found("deploy_not_found", msg),
            ManagedAppError::DeployRunning(_) => ApiError::conflict("deploy_running", msg),
            ManagedAppError::HostTaken(..) => ApiError::conflict("host_taken", msg),
            ManagedAppError::Conflict(_) => ApiError::conflict("nothing_to_roll_back_to", msg),
            ManagedAppError::Internal(e) => ApiError::internal(e),
        }
    }
}

const APP: &str = "The app's name";

#[derive(Serialize, ToSchema)]
pub struct AppList {
    apps: Vec<ManagedAppView>,
}

#[derive(Serialize, ToSchema)]
pub struct DeployList {
    /// Newest first, at most 100.
    deploys: Vec<DeployView>,
}

/// Create or change a managed app's definition (the next deploy uses it)
///
/// Secret values are sealed and never shown; a secret given as `null` keeps its stored value.
#[utoipa::path(
    put, path = "/v1/apps/{app}", operation_id = "put_app", tag = "apps",
    params(("app" = String, Path, description = APP)),
    request_body = ManagedAppInput,
    responses(
        (status = 200, description = "The app, changed", body = ManagedAppView),
        (status = 201, description = "The app, created", body = ManagedAppView),
        (status = 409, description = "`host_taken`: another app serves that host", body = ErrorBody),
        (status = 422, description = "`invalid_app_name`, `invalid_app`: the message names the field", body = ErrorBody),
    )
)]
pub async fn put(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<ManagedAppInput>,
) -> ApiResult<(StatusCode, Json<ManagedAppView>)> {
    let (view, created) = deploys::put(&app.deploys, &name, input).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

/// Read a managed app
#[utoipa::path(
    get, path = "/v1/apps/{app}", operation_id = "get_app", tag = "apps",
    params(("app" = String, Path, description = APP)),
    responses(
        (status = 200, description = "The app", body = ManagedAppView),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<ManagedAppView>> {
    let rec = deploys::get(&app.deploys, &name).await?;
    Ok(Json(deploys::view(&app.deploys, &rec)?))
}

/// List the managed apps
#[utoipa::path(
    get, path = "/v1/apps", operation_id = "list_apps", tag = "apps",
    responses((status = 200, description = "Every app", body = AppList))
)]
pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<AppList>> {
    let apps =
        app.store.apps().await?.iter().map(|r| deploys::view(&app.deploys, r)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(AppList { apps }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The image tag to deploy.
    version: String,
}

/// Deploy a version of the app: pull, release command, replace the containers
#[utoipa::path(
    post, path = "/v1/apps/{app}/deploys", operation_id = "create_deploy", tag = "apps",
    params(("app" = String, Path, description = APP)),
    request_body = DeployBody,
    responses(
        (status = 202, description = "The deploy, started", body = DeployView),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
        (status = 409, description = "`deploy_running`", body = ErrorBody),
        (status = 422, description = "`invalid_version`", body = ErrorBody),
    )
)]
pub async fn create_deploy(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<DeployBody>,
) -> ApiResult<(StatusCode, Json<DeployView>)> {
    let d = deploy::start(&app.deploys, &name, &b.version, None).await?;
    Ok((StatusCode::ACCEPTED, Json(deploys::deploy_view(&d))))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The version to go back to; the previous one when not given.
    #[serde(default)]
    version: Option<String>,
}

/// Roll the app back to its previous version (or the one given)
///
/// An operator's action, recorded in the audit log.
#[utoipa::path(
    post, path = "/v1/apps/{app}/rollback", operation_id = "rollback_app", tag = "apps",
    params(("app" = String, Path, description = APP)),
    request_body(content = Option<RollbackBody>, description = "Optional", content_type = "application/json"),
    responses(
        (status = 202, description = "The rollback deploy, started", body = DeployView),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
        (status = 409, description = "`deploy_running`, `nothing_to_roll_back_to`", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<DeployView>)> {
    let b: RollbackBody =
        if body.is_empty() { RollbackBody::default() } else { super::extract::json_from_bytes(&body)? };
    let result = deploy::rollback(&app.deploys, &name, b.version.as_deref()).await.map_err(ApiError::from);
    let outcome = match &result {
        Ok(d) => format!("ok: deploying {}", d.version),
        Err(e) => operators::outcome_of(e),
    };
    operators::audit(&app, actor, "app.rollback", &name, &outcome, b.version.as_deref()).await;
    Ok((StatusCode::ACCEPTED, Json(deploys::deploy_view(&result?))))
}

/// An app's deploys, newest first
#[utoipa::path(
    get, path = "/v1/apps/{app}/deploys", operation_id = "list_deploys", tag = "apps",
    params(("app" = String, Path, description = APP)),
    responses(
        (status = 200, description = "The deploys", body = DeployList),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
    )
)]
pub async fn list_deploys(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<DeployList>> {
    deploys::get(&app.deploys, &name).await?;
    let deploys: Vec<DeployView> = app.store.deploys_of(&name, 100).await?.iter().map(deploys::deploy_view).collect();
    Ok(Json(DeployList { deploys }))
}

fn deploy_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::from(ManagedAppError::DeployNotFound(id.to_string())))
}

/// Read a deploy
#[utoipa::path(
    get, path = "/v1/deploys/{id}", operation_id = "get_deploy", tag = "apps",
    params(("id" = String, Path, description = "The deploy's id (a UUID)")),
    responses(
        (status = 200, description = "The deploy", body = DeployView),
        (status = 404, description = "`deploy_not_found`", body = ErrorBody),
    )
)]
pub async fn get_deploy(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<DeployView>> {
    let id = deploy_id(&id)?;
    let d = app.store.deploy(&id).await?.ok_or(ManagedAppError::DeployNotFound(id))?;
    Ok(Json(deploys::deploy_view(&d)))
}

/// A deploy's log: plain text, streamed live while it runs
#[utoipa::path(
    get, path = "/v1/deploys/{id}/logs", operation_id = "deploy_logs", tag = "apps",
    params(("id" = String, Path, description = "The deploy's id (a UUID)")),
    responses(
        (status = 200, description = "The log, streamed", content_type = "text/plain; charset=utf-8", body = String),
        (status = 404, description = "`deploy_not_found`", body = ErrorBody),
    )
)]
pub async fn deploy_logs(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = deploy_id(&id)?;
    app.store.deploy(&id).await?.ok_or_else(|| ManagedAppError::DeployNotFound(id.clone()))?;
    let path = deploy::log_path(&app.deploys, &id);
    Ok(super::follow::follow_file(path, Duration::from_secs(3600), move || {
        let (app, id) = (app.clone(), id.clone());
        async move { matches!(app.store.deploy(&id).await, Ok(Some(d)) if d.state == DeployState::Running) }
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// An argument vector (1-64 non-empty arguments), run without a shell.
    command: Vec<String>,
}

/// Run a one-off command in the app's current image with its environment
///
/// Migrations by hand, a rake task. The output streams as it comes; the last line is `[exit N]`.
#[utoipa::path(
    post, path = "/v1/apps/{app}/commands", operation_id = "run_app_command", tag = "apps",
    params(("app" = String, Path, description = APP)),
    request_body = CommandBody,
    responses(
        (status = 200, description = "The command's output, streamed; the last line is `[exit N]`",
            content_type = "text/plain; charset=utf-8", body = String),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
        (status = 409, description = "`app_not_deployed`", body = ErrorBody),
        (status = 422, description = "`invalid_command`", body = ErrorBody),
    )
)]
pub async fn command(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<CommandBody>,
) -> ApiResult<Response> {
    if b.command.is_empty() || b.command.len() > 64 || b.command.iter().any(|a| a.is_empty() || a.contains('\0')) {
        return Err(ApiError::invalid("invalid_command", "command must be a non-empty argument vector"));
    }
    let rec = deploys::get(&app.deploys, &name).await?;
    let (Some(version), Some(image)) = (rec.current_version.clone(), rec.current_image.clone()) else {
        return Err(ApiError::conflict("app_not_deployed", format!("{name:?} has no deployed version yet")));
    };
    let (spec, secrets) = deploys::parse(&app.deploys, &rec)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let sink_tx = tx.clone();
        let code =
            deploy::run_once(&app.deploys, &name, &spec, &secrets, "run", &version, &image, b.command, move |chunk| {
                let _ = sink_tx.try_send(Ok(Bytes::copy_from_slice(chunk)));
            })
            .await;
        let last = match code {
            Ok(c) => format!("\n[exit {c}]\n"),
            Err(e) => format!("\n[error: {e:#}]\n[exit 125]\n"),
        };
        let _ = tx.send(Ok(Bytes::from(last))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// A JSON argument vector; default `["sh"]`.
    #[serde(default)]
    command: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ConsoleControl {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

/// An interactive console (WebSocket) in the app's current image and environment
///
/// A one-off container with a TTY, like `rails console`. Binary frames carry keystrokes and
/// output; text frames are JSON `{"type": "resize", "cols", "rows"}` or `{"type": "input", "data"}`.
/// When the program ends, the socket closes with code 1000 and the reason `exit N`.
#[utoipa::path(
    get, path = "/v1/apps/{app}/console", operation_id = "app_console", tag = "apps",
    params(("app" = String, Path, description = APP), ConsoleQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (`Upgrade: websocket`)"),
        (status = 400, description = "`websocket_required`: not a WebSocket handshake", body = ErrorBody),
        (status = 404, description = "`app_not_found`", body = ErrorBody),
        (status = 409, description = "`app_not_deployed`", body = ErrorBody),
        (status = 422, description = "`invalid_command`", body = ErrorBody),
    )
)]
pub async fn console(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    super::extract::ApiQuery(q): super::extract::ApiQuery<ConsoleQuery>,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::bad_request("websocket_required", e.body_text()))?;
    let command: Vec<String> = match q.command {
        None => vec!["sh".into()],
        Some(c) => serde_json::from_str(&c)
            .map_err(|_| ApiError::invalid("invalid_command", "command must be a JSON array of strings"))?,
    };
    if command.is_empty() || command.iter().any(|a| a.is_empty() || a.contains('\0')) {
        return Err(ApiError::invalid("invalid_command", "command must be a non-empty argument vector"));
    }
    let rec = deploys::get(&app.deploys, &name).await?;
    let (Some(version), Some(image)) = (rec.current_version.clone(), rec.current_image.clone()) else {
        return Err(ApiError::conflict("app_not_deployed", format!("{name:?} has no deployed version yet")));
    };
    let (spec, secrets) = deploys::parse(&app.deploys, &rec)?;
    let id = uuid::Uuid::new_v4().to_string();
    deploy::ensure_volumes(&app.deploys, &name, &spec).await?;
    let config =
        deploy::container(&app.deploys, &name, &spec, &secrets, "console", &version, &id, &image, command, None, true);
    let cname = format!("exercise-runner-{}-app-{name}-console-{}", app.engine.instance(), &id[..8]);
    let cid = app.engine.create_app_container(&cname, &config).await?;
    let attached = match app.engine.attach(&cid).await {
        Ok(a) => a,
        Err(e) => {
            let _ = app.engine.remove_container(&cid).await;
            return Err(e.into());
        }
    };
    Ok(ws.max_message_size(1024 * 1024).on_upgrade(move |socket| async move {
        if let Err(e) = console_session(&app, &cid, attached, socket).await {
            tracing::warn!(app = %name, error = %format!("{e:#}"), "console ended with an error");
        }
        let _ = app.engine.remove_container(&cid).await;
    }))
}

async fn console_session(
    app: &App,
    cid: &str,
    attached: crate::engine::Attached,
    mut socket: axum::extract::ws::WebSocket,
) -> anyhow::Result<()> {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let crate::engine::Attached { mut output, mut input } = attached;
    app.engine.start_container(cid).await?;
    loop {
        tokio::select! {
            out = output.next() => match out {
                Some(Ok(chunk)) => socket.send(Message::Binary(chunk)).await?,
                Some(Err(e)) => return Err(e),
                None => {
                    let code = app.engine.wait_exit(cid).await.unwrap_or(-1);
                    let frame = CloseFrame { code: 1000, reason: format!("exit {code}").into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return Ok(());
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => input.write_all(&b).await?,
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ConsoleControl>(&t) {
                    Ok(ConsoleControl::Input { data }) => input.write_all(data.as_bytes()).await?,
                    Ok(ConsoleControl::Resize { cols, rows }) => app.engine.resize_tty(cid, cols, rows).await?,
                    Err(_) => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
