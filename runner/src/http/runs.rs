//! One-shot runs (`POST /v1/runs`) and the runtimes they run in (`/v1/runtimes/…`). The work
//! is `crate::runs`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::{Actor, TokenKey},
    operators,
};
use crate::{
    app::App,
    domain::{rfc3339, LearnerId},
    error::{ApiError, ApiResult, ErrorBody},
    runs::{Control, Event, LiveEnds, RunError, RunRequest, RunView, ShuttingDown, Signal},
    store::RuntimeRecord,
};

/// A runtime: an image on the engine and how a submission is run (and first compiled) in it.
/// The image needs `sleep`, `sh` and `tar`; commands run in the run's directory, as the sandbox
/// user, with the submission's files.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRuntime {
    #[schema(example = "python:3.12-slim")]
    image: String,
    /// The command of each test case (its `args` are appended).
    #[schema(example = json!(["python3", "main.py"]))]
    run: Vec<String>,
    /// Run once before the test cases; a non-zero exit is `compile_error`.
    #[schema(example = json!(["python3", "-m", "py_compile", "main.py"]))]
    compile: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct RuntimeView {
    name: String,
    image: String,
    run: Vec<String>,
    compile: Option<Vec<String>>,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct RuntimeList {
    runtimes: Vec<RuntimeView>,
}

fn view(r: &RuntimeRecord) -> RuntimeView {
    RuntimeView {
        name: r.name.clone(),
        image: r.image.clone(),
        run: r.run.clone(),
        compile: r.compile.clone(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    }
}

const NAME: &str = "The runtime's name: 1-64 of a-z, 0-9, '.', '-' and '_'";

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("invalid_runtime", format!("{NAME}; got {name:?}")))
    }
}

fn check_argv(what: &str, argv: &[String]) -> ApiResult<()> {
    crate::runs::check_argv(what, argv).map_err(|m| ApiError::invalid("invalid_runtime", m))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("runtime_not_found", format!("runtime {name:?} does not exist"))
}

/// Register or replace a runtime of one-shot runs
#[utoipa::path(
    put, path = "/v1/runtimes/{name}", operation_id = "put_runtime", tag = "runs",
    params(("name" = String, Path, description = NAME)),
    request_body = PutRuntime,
    responses(
        (status = 200, description = "Replaced", body = RuntimeView),
        (status = 201, description = "Created", body = RuntimeView),
        (status = 422, description = "`invalid_runtime`, `image_not_found`, or an image the sandbox refuses", body = ErrorBody),
    )
)]
pub async fn put_runtime(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutRuntime>,
) -> ApiResult<(StatusCode, Json<RuntimeView>)> {
    check_name(&name)?;
    check_argv("run", &body.run)?;
    if let Some(c) = &body.compile {
        check_argv("compile", c)?;
    }
    crate::exercises::check_image_reference(&body.image)?;
    let info = app.engine.image(&body.image).await?.ok_or_else(|| {
        ApiError::invalid("image_not_found", format!("the image {:?} is not on the engine; pull it first", body.image))
    })?;
    crate::exercises::reject_unsafe_image(&info)?;
    let now = crate::store::now_ms();
    let record = RuntimeRecord {
        name: name.clone(),
        image: body.image,
        run: body.run,
        compile: body.compile,
        created_at: now,
        updated_at: now,
    };
    let created = app.store.put_runtime(&record).await?;
    operators::audit(&app, actor, "runtime.put", &name, if created { "ok: created" } else { "ok: replaced" }, None)
        .await;
    let stored = app.store.runtime(&name).await?.ok_or_else(|| not_found(&name))?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view(&stored))))
}

/// List the runtimes
#[utoipa::path(
    get, path = "/v1/runtimes", operation_id = "list_runtimes", tag = "runs",
    responses((status = 200, description = "The runtimes, by name", body = RuntimeList))
)]
pub async fn list_runtimes(State(app): State<Arc<App>>) -> ApiResult<Json<RuntimeList>> {
    Ok(Json(RuntimeList { runtimes: app.store.runtimes().await?.iter().map(view).collect() }))
}

/// Read a runtime
#[utoipa::path(
    get, path = "/v1/runtimes/{name}", operation_id = "get_runtime", tag = "runs",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 200, description = "The runtime", body = RuntimeView),
        (status = 404, description = "`runtime_not_found`", body = ErrorBody),
    )
)]
pub async fn get_runtime(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<RuntimeView>> {
    let r = app.store.runtime(&name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(view(&r)))
}

/// Delete a runtime (runs in flight finish on it)
#[utoipa::path(
    delete, path = "/v1/runtimes/{name}", operation_id = "delete_runtime", tag = "runs",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`runtime_not_found`", body = ErrorBody),
    )
)]
pub async fn delete_runtime(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if !app.store.delete_runtime(&name).await? {
        return Err(not_found(&name));
    }
    operators::audit(&app, actor, "runtime.delete", &name, "ok", None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a submission once, or on each test case, and judge it
///
/// A fresh sandbox, the files written, the compile step once, then every test case on its
/// result, each with a status, its output (capped), exit code or signal, CPU and wall time and
/// peak memory. With `"wait": true` (the default) it answers when the run is done (a caller
/// that goes away does not stop it: read it at its `url`); with `"wait": false` it answers 202 at
/// once, and `run.finished` is told to the webhooks that ask for it.
#[utoipa::path(
    post, path = "/v1/runs", operation_id = "create_run", tag = "runs",
    request_body = RunRequest,
    responses(
        (status = 200, description = "The run, finished (its `status` says how the submission did)", body = RunView),
        (status = 202, description = "Taken (`\"wait\": false`): read it at `url` (also `Location`)", body = RunView),
        (status = 404, description = "`runtime_not_found`, `exercise_not_found`", body = ErrorBody),
        (status = 409, description = "`exercise_not_published`: the exercise has no image yet", body = ErrorBody),
        (status = 422, description = "`invalid_run`: source, commands, files, paths, tests, learner or limits above the caps", body = ErrorBody),
        (status = 429, description = "`runs_queue_full`: too many runs wait; `runs_rate_limited`: this token starts runs too fast; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "`runner_shutting_down`: the runner stopped while the run was waited for; see `Retry-After`", body = ErrorBody),
    )
)]
pub async fn create_run(
    State(app): State<Arc<App>>,
    Extension(token): Extension<TokenKey>,
    ApiJson(body): ApiJson<RunRequest>,
) -> ApiResult<(StatusCode, [(header::HeaderName, String); 1], Json<RunView>)> {
    let submitted = app.runs.submit(body, &token.0).await.map_err(run_error)?;
    let location = [(header::LOCATION, submitted.view.url.clone())];
    match submitted.done {
        None => Ok((StatusCode::ACCEPTED, location, Json(submitted.view))),
        Some(task) => match task.await.map_err(anyhow::Error::from)? {
            Ok(view) => Ok((StatusCode::OK, location, Json(view))),
            Err(e) if e.downcast_ref::<ShuttingDown>().is_some() => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runner_shutting_down", e.to_string());
                err.retry_after_secs = Some(1);
                Err(err)
            }
            Err(e) => Err(e.into()),
        },
    }
}

fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::Invalid(m) => ApiError::invalid("invalid_run", m),
        e @ RunError::UnknownRuntime(_) => ApiError::not_found("runtime_not_found", e.to_string()),
        e @ RunError::UnknownExercise(_) => ApiError::not_found("exercise_not_found", e.to_string()),
        e @ RunError::NotPublished(_) => ApiError::conflict("exercise_not_published", e.to_string()),
        e @ RunError::QueueFull(_) => {
            let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "runs_queue_full", e.to_string());
            err.retry_after_secs = Some(1);
            err
        }
        RunError::RateLimited(secs) => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "runs_rate_limited",
                RunError::RateLimited(secs).to_string(),
            );
            err.retry_after_secs = Some(secs);
            err
        }
        RunError::Internal(e) => e.into(),
    }
}

/// Read a run: queued, running, or finished with its result
#[utoipa::path(
    get, path = "/v1/runs/{id}", operation_id = "get_run", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "`run_not_found` (never made, or deleted after `RUNNER_RUN_RETENTION_SECS`)", body = ErrorBody),
    )
)]
pub async fn get_run(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<RunView>> {
    let r = app.store.run(&id).await?.ok_or_else(|| {
        ApiError::not_found("run_not_found", format!("run {id:?} does not exist (or is past retention)"))
    })?;
    Ok(Json(RunView::of(&r)?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only the runs made for this learner.
    learner: Option<String>,
    /// 1–1000 (100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    runs: Vec<RunView>,
}

/// List runs, newest first
#[utoipa::path(
    get, path = "/v1/runs", operation_id = "list_runs", tag = "runs",
    params(RunsQuery),
    responses(
        (status = 200, description = "Runs, newest first, with their steps' statuses and figures but not their output (read each run at its `url`)", body = RunList),
        (status = 422, description = "`invalid_query`", body = ErrorBody),
    )
)]
pub async fn list_runs(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<RunsQuery>) -> ApiResult<Json<RunList>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("invalid_query", "limit must be 1-1000"));
    }
    let learner = q.learner.as_deref().map(LearnerId::parse).transpose()?;
    let rows = app.store.runs(learner.as_ref().map(|l| l.as_str()), limit).await?;
    // Statuses and figures only; each run's output is at its `url`.
    let runs = rows.iter().map(|r| RunView::of(r).map(RunView::without_output)).collect::<anyhow::Result<_>>()?;
    Ok(Json(RunList { runs }))
}

/// What the client of an interactive run's stream sends (text frames; a binary frame is stdin).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Stdin { data: String },
    CloseStdin,
    Signal { signal: Signal },
}

/// Attach to an interactive run (WebSocket)
///
/// The run (`POST /v1/runs` with `"interactive": true`) starts when this attaches, within 30 s
/// of its creation. Text frames in: `{"type": "stdin", "data"}` (or a binary frame),
/// `{"type": "close_stdin"}`, `{"type": "signal", "signal": "interrupt" | "terminate" | "kill"}`.
/// Text frames out, in order: `{"type": "started", "id"}`, `{"type": "compile", …step}` when the
/// runtime compiles, `{"type": "stdout" | "stderr", "data"}` as the program writes (each stream
/// capped at `output_bytes`: past it the program is ended, `output_limit`), and
/// `{"type": "exit", …run}` with the final status, then a close. Closing the socket ends the run.
#[utoipa::path(
    get, path = "/v1/runs/{id}/stream", operation_id = "stream_run", tag = "runs",
    params(("id" = String, Path, description = "The interactive run's id")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (`Upgrade: websocket`)"),
        (status = 400, description = "`websocket_required`: not a WebSocket handshake", body = ErrorBody),
        (status = 404, description = "`run_not_found`", body = ErrorBody),
        (status = 409, description = "`run_not_attachable`: not an interactive run waiting for its stream here (attached already, finished, or on another runner)", body = ErrorBody),
    )
)]
pub async fn stream_run(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<axum::response::Response> {
    let ws = ws.map_err(|e| ApiError::bad_request("websocket_required", e.body_text()))?;
    let Some(ends) = app.runs.attach(&id) else {
        return Err(match app.store.run(&id).await? {
            None => ApiError::not_found("run_not_found", format!("run {id:?} does not exist")),
            Some(_) => ApiError::conflict(
                "run_not_attachable",
                "the run is not an interactive run waiting for its stream on this runner (attached already, finished, or taken by another runner)",
            ),
        });
    };
    Ok(ws.max_message_size(1 << 20).on_upgrade(move |socket| relay(socket, ends)))
}

/// Between an interactive run and its WebSocket until the run's end (or the client's).
async fn relay(mut socket: axum::extract::ws::WebSocket, ends: LiveEnds) {
    use axum::extract::ws::{CloseFrame, Message};
    let LiveEnds { control, mut events } = ends;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else {
                    let frame = CloseFrame { code: 1011, reason: "the run ended without a result".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                };
                let done = matches!(ev, Event::Done(_));
                let text = serde_json::to_string(&ev).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
                if done {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                    return;
                }
            }
            msg = socket.recv() => {
                let sent = match msg {
                    Some(Ok(Message::Binary(b))) => control.send(Control::Stdin(b.to_vec())).await,
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMessage>(&t) {
                        Ok(ClientMessage::Stdin { data }) => control.send(Control::Stdin(data.into_bytes())).await,
                        Ok(ClientMessage::CloseStdin) => control.send(Control::CloseStdin).await,
                        Ok(ClientMessage::Signal { signal }) => control.send(Control::Signal(signal)).await,
                        Err(e) => {
                            let error = serde_json::json!({"type": "error", "message": format!("not a message of the stream: {e}")});
                            let _ = socket.send(Message::Text(error.to_string().into())).await;
                            Ok(())
                        }
                    },
                    // The client went away: dropping `control` ends the run.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => Ok(()),
                };
                if sent.is_err() {
                    // The run is over; its `exit` is on its way.
                    continue;
                }
            }
        }
    }
}
