//! The fleet at the HTTP edge: what another node must answer is relayed to its runner
//! (`route`, a middleware in front of every route), new sessions are placed (`create_session`),
//! and operators see and drain nodes (`/v1/nodes`).

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{extract::ApiJson, middleware::Actor, operators};
use crate::{
    app::App,
    domain::{rfc3339, LearnerId, Slug},
    error::{ApiError, ApiResult, ErrorBody},
    fleet::{forward, Placement},
    lifecycle::Availability,
    store::NodeRecord,
};

/// Set on a request another runner of the fleet relayed (its signature held): it is answered
/// here, never relayed again.
#[derive(Debug, Clone)]
pub struct Relayed(#[allow(dead_code)] pub String);

/// How long a relayed request may wait for the other runner's answer to begin (a check's
/// answer comes when the check ends).
const RELAY_TIMEOUT: Duration = Duration::from_secs(330);

/// What a request concerns, for finding the node that must answer it.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Session(String),
    Workspace(String, String),
    /// A build's log and its cancellation: the node that builds it.
    Build(String),
    Here,
}

fn percent_decoded(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The session or workspace a request acts on through an engine: its sandbox, its disk.
/// Reads the database answers alone (a session's record, lists) stay here.
fn target(method: &Method, path: &str, host: Option<&str>, subdomain_host: Option<&str>) -> Target {
    let session = |id: &str| match uuid::Uuid::parse_str(id) {
        Ok(u) => Target::Session(u.to_string()),
        Err(_) => Target::Here,
    };
    if let (Some(host), Some(sub)) = (host, subdomain_host) {
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h).to_ascii_lowercase();
        if let Some(id) = host.strip_suffix(sub).and_then(|h| h.strip_suffix('.')) {
            return session(id);
        }
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["ide", id, ..] => session(id),
        ["v1", "sessions", id] if method == Method::DELETE => session(id),
        ["v1", "sessions", id, rest, ..] if *rest != "events" => session(id),
        // The operators' dashboard: a session's stop and its usage figures (kept by its node).
        ["dashboard", "api", "sessions", id] if method == Method::DELETE => session(id),
        ["dashboard", "api", "sessions", id, "usage"] => session(id),
        ["v1", "workspaces", learner, exercise, ..] => {
            Target::Workspace(percent_decoded(learner), percent_decoded(exercise))
        }
        ["v1", "builds", id, "logs" | "cancel"] => match uuid::Uuid::parse_str(id) {
            Ok(u) => Target::Build(u.to_string()),
            Err(_) => Target::Here,
        },
        _ => Target::Here,
    }
}

/// In front of every route: a request signed by another runner is answered here; one that
/// concerns another node's sandbox or disk is relayed to that node's runner.
pub async fn route(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get(forward::HEADER) {
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        let Some(secret) = app.settings.fleet.secret.as_ref() else {
            return fleet_refused("this runner is not a fleet node").into_response();
        };
        // With TLS on, relays travel encrypted: a signed request in clear is refused unread.
        if app.fleet.tls.is_some() && req.extensions().get::<crate::fleet::tls::ViaFleetListener>().is_none() {
            return fleet_refused("relays arrive over TLS on the fleet listener (RUNNER_FLEET_LISTEN)").into_response();
        }
        let verdict = value.to_str().map_err(|_| "not ASCII").and_then(|v| {
            forward::verify(secret.expose(), v, chrono::Utc::now().timestamp(), req.method().as_str(), &path)
        });
        return match verdict {
            Ok(from) => {
                req.extensions_mut().insert(Relayed(from));
                next.run(req).await
            }
            Err(why) => fleet_refused(why).into_response(),
        };
    }
    if !app.fleet.enabled() {
        return next.run(req).await;
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let owner = match target(req.method(), req.uri().path(), host, app.settings.ide_subdomain_host.as_deref()) {
        Target::Here => Ok(None),
        Target::Session(id) => app.fleet.owner_of_session(&id).await,
        Target::Workspace(learner, exercise) => app.fleet.owner_of_workspace(&learner, &exercise).await,
        Target::Build(id) => app.fleet.owner_of_build(&id).await,
    };
    match owner {
        Ok(None) => next.run(req).await,
        Ok(Some(node)) => relay(&app, &node, req).await,
        Err(e) => ApiError::internal(e).into_response(),
    }
}

fn fleet_refused(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "fleet_signature_invalid",
        format!("the fleet signature does not hold: {why}"),
    )
}

fn node_unavailable(node: &NodeRecord) -> ApiError {
    ApiError::unavailable(
        "node_unavailable",
        format!(
            "node {:?}, whose engine runs this, is not answering; its sessions end once it is declared lost",
            node.name
        ),
        5,
    )
}

async fn relay(app: &App, node: &NodeRecord, req: Request) -> Response {
    let Some(forwarder) = app.fleet.forwarder.as_ref() else { return node_unavailable(node).into_response() };
    if !app.fleet.alive(node) || node.url.is_empty() {
        app.metrics.forwarded.with_label_values(&["node_unavailable"]).inc();
        return node_unavailable(node).into_response();
    }
    match forwarder.relay(&node.url, req, RELAY_TIMEOUT).await {
        Ok(response) => {
            app.metrics.forwarded.with_label_values(&["relayed"]).inc();
            response
        }
        Err(e) => {
            app.metrics.forwarded.with_label_values(&["unreachable"]).inc();
            tracing::warn!(node = %node.name, error = %e, "could not relay a request to its node");
            node_unavailable(node).into_response()
        }
    }
}

/// `POST /v1/sessions` in a fleet: the best node with room starts it. Every node's runner,
/// this one's included, decides for itself whether it still has room or the image (it may
/// refuse with a 503: then the next node is asked). On a single host, or for a relayed request,
/// this node starts it.
pub(super) async fn create_session(
    app: &Arc<App>,
    headers: &HeaderMap,
    relayed: bool,
    learner: &LearnerId,
    exercise: &Slug,
) -> ApiResult<Response> {
    let here = || super::sessions::create_here(app, learner, exercise);
    if relayed || !app.fleet.enabled() {
        return here().await;
    }
    let (learner, exercise) = (learner.as_str(), exercise.as_str());
    let Some(record) = app.store.exercise(exercise).await? else { return here().await };
    if record.image.is_empty() || app.store.live_session_for(learner, exercise).await?.is_some() {
        return here().await;
    }
    let limits = crate::exercises::sandbox_spec(&app.settings, &record).map_err(ApiError::internal)?.limits;
    let nodes = match app.fleet.place(learner, exercise, limits.memory_mb as i64, limits.workspace_mb as i64).await? {
        Placement::Here => return here().await,
        Placement::Nowhere => {
            return Err(ApiError::unavailable(
                "fleet_capacity",
                "no node of the fleet has room for this session or takes new sessions",
                10,
            ))
        }
        Placement::Ranked(nodes) => nodes,
    };
    let body = serde_json::json!({"learner": learner, "exercise": exercise});
    let mut last = None;
    for node in nodes {
        if node.name == app.fleet.node() {
            match here().await {
                Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                    last = Some(e.into_response());
                    continue;
                }
                answer => return answer,
            }
        }
        let Some(forwarder) = app.fleet.forwarder.as_ref() else { return here().await };
        let req = relayed_request(headers, Method::POST, "/v1/sessions", Some(&body))?;
        match forwarder.relay(&node.url, req, RELAY_TIMEOUT).await {
            Ok(response) if refused_for_room(&response) => {
                app.metrics.forwarded.with_label_values(&["refused"]).inc();
                last = Some(response);
            }
            Ok(response) => {
                app.metrics.forwarded.with_label_values(&["relayed"]).inc();
                return Ok(response);
            }
            Err(e) => {
                app.metrics.forwarded.with_label_values(&["unreachable"]).inc();
                tracing::warn!(node = %node.name, error = %e, "a placed session's node did not answer; trying the next");
            }
        }
    }
    match last {
        Some(response) => Ok(response),
        None => Err(ApiError::unavailable("fleet_capacity", "no node of the fleet could take this session", 10)),
    }
}

/// A request this runner makes of another (`method path` with `body` as JSON), carrying the
/// client's bearer token and request id: the other runner checks the token as its own.
fn relayed_request(
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> ApiResult<Request> {
    let bytes = match body {
        Some(b) => Body::from(serde_json::to_vec(b).map_err(|e| ApiError::internal(e.into()))?),
        None => Body::empty(),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .map_err(|e| ApiError::internal(e.into()))?;
    for name in [header::AUTHORIZATION, header::HeaderName::from_static("x-request-id")] {
        if let Some(v) = headers.get(&name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    Ok(req)
}

/// A node's runner said it has no room (or takes no new sessions): ask the next.
fn refused_for_room(r: &Response) -> bool {
    r.status() == StatusCode::SERVICE_UNAVAILABLE
}

/// Sends `method path` (with `body` as JSON) to every other heartbeating node's runner, as
/// the client asked it (its bearer token travels), signed: a relayed request does only its
/// node's part. The answers' bodies, as JSON. A node that does not answer, or refuses, fails
/// the whole (503): the caller has not done its own part yet.
pub(super) async fn on_other_nodes(
    app: &App,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> ApiResult<Vec<serde_json::Value>> {
    let mut answers = Vec::new();
    let Some(forwarder) = app.fleet.forwarder.as_ref() else { return Ok(answers) };
    for node in app.store.nodes().await? {
        if node.name == app.fleet.node() || !app.fleet.alive(&node) {
            continue;
        }
        let req = relayed_request(headers, method.clone(), path, body)?;
        let answer = forwarder.relay(&node.url, req, RELAY_TIMEOUT).await.map_err(|e| {
            tracing::warn!(node = %node.name, error = %e, path, "a node did not answer its part");
            node_unavailable(&node)
        })?;
        if !answer.status().is_success() {
            return Err(ApiError::unavailable(
                "node_unavailable",
                format!("node {:?} could not do its part ({}); try again", node.name, answer.status()),
                5,
            ));
        }
        let bytes = axum::body::to_bytes(answer.into_body(), 64 * 1024).await.unwrap_or_default();
        answers.push(serde_json::from_slice(&bytes).unwrap_or_default());
    }
    Ok(answers)
}

/// What the other nodes removed for an erasure.
#[derive(Debug, Default)]
pub(super) struct ErasedElsewhere {
    pub stopped_sessions: u64,
    pub workspace_files: u64,
}

/// `DELETE /v1/learners/{learner}` in a fleet: every other heartbeating node stops its
/// sandboxes of the learner and deletes its workspace files first; the records must outlive
/// the files, so a node that fails its part fails the erasure. A lost node's sessions were
/// ended already; its disk keeps their files until it returns (known limit).
pub(super) async fn erase_on_other_nodes(app: &App, headers: &HeaderMap, learner: &str) -> ApiResult<ErasedElsewhere> {
    let path: String = form_urlencoded::byte_serialize(learner.as_bytes()).collect();
    let mut done = ErasedElsewhere::default();
    for v in on_other_nodes(app, headers, Method::DELETE, &format!("/v1/learners/{path}"), None).await? {
        done.stopped_sessions += v["removed"]["stopped_sessions"].as_u64().unwrap_or(0);
        done.workspace_files += v["removed"]["workspace_files"].as_u64().unwrap_or(0);
    }
    Ok(done)
}

/// A fleet node, as operators see it.
#[derive(Serialize, ToSchema)]
pub struct NodeView {
    /// The node's name (`RUNNER_NODE`; the Swarm node ID in the stack).
    name: String,
    /// Where the fleet's runners reach its runner.
    url: String,
    /// The stricter of `operator_availability` and `swarm_availability`: what placement obeys.
    availability: Availability,
    /// Set with `PUT /v1/nodes/{name}/availability`.
    operator_availability: Availability,
    /// The Swarm node's own (`docker node update --availability`), when the engine is a manager.
    swarm_availability: Option<Availability>,
    /// Heartbeating within `RUNNER_NODE_LOST_SECS`.
    up: bool,
    /// When the fleet declared it lost (its sessions ended with `node_lost`).
    lost_at: Option<String>,
    heartbeat_at: String,
    started_at: String,
    version: String,
    /// This runner's own node.
    this: bool,
    capacity: NodeCapacity,
}

#[derive(Serialize, ToSchema)]
pub struct NodeCapacity {
    live_sessions: i64,
    max_sessions: i64,
    /// What the live sessions' memory limits commit.
    committed_memory_mb: i64,
    /// The host's memory for sandboxes (`MemTotal` less `RUNNER_POOL_MEMORY_RESERVE_MB`).
    memory_mb: i64,
    disk_free_mb: i64,
}

#[derive(Serialize, ToSchema)]
pub struct NodeList {
    nodes: Vec<NodeView>,
}

async fn views(app: &App) -> anyhow::Result<Vec<NodeView>> {
    let loads = app.store.node_loads().await?;
    Ok(app
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|n| {
            let load = loads.get(&n.name).copied().unwrap_or_default();
            NodeView {
                availability: n.effective_availability(),
                operator_availability: n.availability,
                swarm_availability: n.swarm_availability,
                up: app.fleet.alive(&n),
                lost_at: n.lost_at.map(rfc3339),
                heartbeat_at: rfc3339(n.heartbeat_at),
                started_at: rfc3339(n.started_at),
                this: n.name == app.fleet.node(),
                capacity: NodeCapacity {
                    live_sessions: load.sessions,
                    max_sessions: n.max_sessions,
                    committed_memory_mb: load.memory_mb,
                    memory_mb: n.memory_mb,
                    disk_free_mb: n.disk_free_mb,
                },
                version: n.version,
                url: n.url,
                name: n.name,
            }
        })
        .collect())
}

/// The fleet's nodes: capacity, sessions, health, availability
#[utoipa::path(
    get, path = "/v1/nodes", operation_id = "list_nodes", tag = "operators",
    responses((status = 200, description = "Every node, by name (a single host is the node `local`)", body = NodeList))
)]
pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<NodeList>> {
    Ok(Json(NodeList { nodes: views(&app).await? }))
}

/// One node
#[utoipa::path(
    get, path = "/v1/nodes/{name}", operation_id = "get_node", tag = "operators",
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "`node_not_found`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<NodeView>> {
    views(&app)
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("node_not_found", format!("node {name:?} does not exist")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAvailability {
    /// `active`, `pause` (no new sessions) or `drain` (no new sessions; learners' next sessions
    /// start elsewhere).
    availability: Availability,
}

/// Set a node's availability (as `docker node update --availability` does for Swarm)
#[utoipa::path(
    put, path = "/v1/nodes/{name}/availability", operation_id = "set_node_availability", tag = "operators",
    params(("name" = String, Path, description = "The node's name")),
    request_body = SetAvailability,
    responses(
        (status = 200, description = "The node, as it is now", body = NodeView),
        (status = 404, description = "`node_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_body`: an availability other than active, pause or drain", body = ErrorBody),
    )
)]
pub async fn set_availability(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetAvailability>,
) -> ApiResult<Json<NodeView>> {
    if !app.store.set_availability(&name, body.availability).await? {
        return Err(ApiError::not_found("node_not_found", format!("node {name:?} does not exist")));
    }
    operators::audit(&app, actor, "node.availability", &name, body.availability.as_str(), None).await;
    get(State(app), Path(name)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f1c1bb0-9a59-4bb5-9a53-5b3c7a0d7a11";

    #[test]
    fn what_concerns_a_sandbox_or_a_disk_goes_to_its_node_and_reads_stay() {
        let t = |m: Method, p: &str| target(&m, p, None, None);
        assert_eq!(t(Method::GET, &format!("/ide/{ID}/")), Target::Session(ID.into()));
        assert_eq!(t(Method::GET, &format!("/ide/{ID}/api/terminals/1")), Target::Session(ID.into()));
        assert_eq!(t(Method::DELETE, &format!("/v1/sessions/{ID}")), Target::Session(ID.into()));
        assert_eq!(t(Method::POST, &format!("/v1/sessions/{ID}/checks")), Target::Session(ID.into()));
        assert_eq!(t(Method::GET, &format!("/v1/sessions/{ID}/usage")), Target::Session(ID.into()));
        assert_eq!(t(Method::GET, &format!("/v1/sessions/{ID}")), Target::Here, "the record is in the database");
        assert_eq!(t(Method::GET, &format!("/v1/sessions/{ID}/events")), Target::Here);
        assert_eq!(t(Method::GET, "/v1/sessions"), Target::Here);
        assert_eq!(t(Method::GET, "/ide/not-a-session/"), Target::Here, "nothing to look up");
        assert_eq!(
            t(Method::GET, "/v1/workspaces/ann%40school/hello-shell/files/a.txt"),
            Target::Workspace("ann@school".into(), "hello-shell".into())
        );
        assert_eq!(t(Method::GET, "/v1/nodes"), Target::Here);
        assert_eq!(t(Method::DELETE, &format!("/dashboard/api/sessions/{ID}")), Target::Session(ID.into()));
        assert_eq!(t(Method::GET, &format!("/dashboard/api/sessions/{ID}/usage")), Target::Session(ID.into()));
        assert_eq!(t(Method::GET, &format!("/dashboard/api/sessions/{ID}")), Target::Here);
        // A build's log is on the disk of the node that builds it, and only it can stop it.
        assert_eq!(t(Method::GET, &format!("/v1/builds/{ID}/logs")), Target::Build(ID.into()));
        assert_eq!(t(Method::POST, &format!("/v1/builds/{ID}/cancel")), Target::Build(ID.into()));
        assert_eq!(t(Method::GET, &format!("/v1/builds/{ID}")), Target::Here);
    }

    #[test]
    fn a_session_subdomain_names_its_session() {
        let host = format!("{ID}.ide.example.com:8443");
        assert_eq!(
            target(&Method::GET, "/api/files", Some(&host), Some("ide.example.com")),
            Target::Session(ID.into())
        );
        assert_eq!(target(&Method::GET, "/v1/nodes", Some("api.example.com"), Some("ide.example.com")), Target::Here);
    }
}
