//! The API described: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations and the types they read and answer, served at `GET /v1/openapi.json` (no token).
//!
//! Each handler lists its own outcomes and their error codes. What routes share is added here
//! once ([`SharedErrors`]), from what the router and the extractors do to every request: 401 and
//! 429 where the bearer token is required, 400/413/415/422 where a JSON body is read, 400 where a
//! query is read, 404 `route_not_found` where the path has parameters (an empty segment matches no
//! route), 500 under `/v1`. The tests below fail when a route of `router.rs` is not in the
//! document (or the document names one the router lacks), and when an error is not the error body.

use std::sync::OnceLock;

use axum::{http::header, response::IntoResponse};
use utoipa::{
    openapi::{
        header::HeaderBuilder,
        link::LinkBuilder,
        path::{Operation, ParameterIn, PathItem},
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        ContentBuilder, Ref, RefOr, Response, ResponseBuilder,
    },
    Modify, OpenApi,
};

use super::{apps, builds, events, exercises, fleet, operators, ops, runs, sessions, usage, workspaces};
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "exercise-runner",
        description = "Hardened Docker sandboxes for programming exercises: learners' sessions, their checks, \
            exercises and their builds, usage and capacity, operators' actions, managed apps.\n\n\
            Every `/v1` route but this document and the push hook needs `Authorization: Bearer <RUNNER_API_TOKEN>`. \
            Every error is `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable `code`; \
            each response lists the codes it may carry."
    ),
    paths(
        sessions::create, sessions::list, sessions::get, sessions::delete, sessions::activity,
        sessions::create_check, sessions::list_checks, sessions::events, sessions::get_check,
        sessions::erase_learner,
        events::put, events::list, events::get, events::delete, events::deliveries, events::redeliver,
        events::stream,
        workspaces::list, workspaces::file, workspaces::archive, workspaces::reset, workspaces::snapshots,
        workspaces::snapshot, workspaces::check_snapshot,
        exercises::list, exercises::get, exercises::put,
        operators::stop_exercise_sessions, operators::runner, operators::drain, operators::undrain,
        operators::audit_log, operators::alerts,
        fleet::list, fleet::get, fleet::set_availability,
        usage::session, usage::top, usage::exercises, usage::capacity, usage::pools,
        builds::create, builds::list, builds::versions, builds::publish, builds::get, builds::logs,
        builds::cancel, builds::git_hook,
        apps::list, apps::get, apps::put, apps::create_deploy, apps::list_deploys, apps::rollback,
        apps::command, apps::console, apps::get_deploy, apps::deploy_logs,
        runs::create_run, runs::get_run, runs::list_runs, runs::stream_run, runs::put_runtime, runs::list_runtimes, runs::get_runtime, runs::delete_runtime,
        ops::healthz, ops::readyz, ops::metrics,
        serve,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerToken, &SharedErrors, &SessionLinks),
    security(("bearer" = [])),
    tags(
        (name = "sessions", description = "Learners' sessions: one hardened sandbox each, their workspace kept"),
        (name = "checks", description = "Checking a learner's work in their sandbox"),
        (name = "events", description = "What happened: a session's sandbox, and the events told to the web app"),
        (name = "webhooks", description = "The web app's webhooks: signed events, delivered at least once, in order"),
        (name = "workspaces", description = "Learners' files without a live session, snapshots, starting over"),
        (name = "exercises", description = "The exercise registry"),
        (name = "builds", description = "Exercises built from their repositories, versions, publishing"),
        (name = "usage", description = "Sandboxes' resource use, the host's capacity, warm pools"),
        (name = "operators", description = "Operators' actions and the audit log, alerts"),
        (name = "runs", description = "One-shot runs: a submission judged on test cases in a fresh sandbox, no session"),
        (name = "apps", description = "Managed apps (the course site as a managed image) and their deploys"),
        (name = "ops", description = "Health, readiness, metrics and this document; no token"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
        camel_case_links(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the document serialises")
    })
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`); OpenAPI names them
/// `operationId`, `operationRef`, `requestBody`, and tools ignore a link without them.
fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    for op in paths.values_mut().filter_map(|item| item.as_object_mut()).flat_map(|item| item.values_mut()) {
        let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
        for links in responses.values_mut().filter_map(|r| r.get_mut("links")).filter_map(|l| l.as_object_mut()) {
            for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.to_string(), v);
                    }
                }
            }
        }
    }
}

/// This document
#[utoipa::path(
    get, path = "/v1/openapi.json", operation_id = "openapi", tag = "ops", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json",
        body = serde_json::Value))
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("`RUNNER_API_TOKEN` (generated into `<data dir>/api-token` when unset)"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The responses every route of a kind shares (see the module's comment).
struct SharedErrors;

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A route whose own `security` is an empty requirement needs no token.
fn is_public(op: &Operation) -> bool {
    op.security.as_ref().is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()))
}

fn error_response(description: &str, retry_after: bool) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut r = ResponseBuilder::new().description(description).content("application/json", content);
    if retry_after {
        let seconds = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::Integer).build())
            .description(Some("seconds to wait before trying again"))
            .build();
        r = r.header("Retry-After", seconds);
    }
    r.build()
}

/// Adds an error outcome to `op`: a response of its own, or the codes appended to the response
/// the handler already documents for that status.
fn add_error(op: &mut Operation, status: &str, codes: &str, retry_after: bool) {
    match op.responses.responses.get_mut(status) {
        Some(RefOr::T(r)) => {
            if !r.description.contains(codes) {
                r.description = format!("{}; {codes}", r.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses.responses.insert(status.to_string(), RefOr::T(error_response(codes, retry_after)));
        }
    }
}

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in operations(item) {
                let params = op.parameters.as_deref().unwrap_or_default();
                let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
                let has_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
                let json_body = op.request_body.as_ref().is_some_and(|b| b.content.contains_key("application/json"));
                if !is_public(op) {
                    add_error(op, "401", "`unauthorized`: a valid bearer token is required", false);
                    add_error(op, "429", "`rate_limited`: over this token's rate limit", true);
                }
                if json_body {
                    add_error(op, "400", "`malformed_json`, `unreadable_body`: the body is not JSON", false);
                    add_error(op, "413", "`body_too_large`: the body is over the route's limit", false);
                    add_error(op, "415", "`unsupported_media_type`: send `Content-Type: application/json`", false);
                    add_error(op, "422", "`invalid_body`: the body's fields are not as documented", false);
                }
                if has_query {
                    add_error(op, "400", "`invalid_query`: a query parameter is not as documented", false);
                }
                if has_path {
                    add_error(op, "404", "`route_not_found`: an empty path segment", false);
                }
                if path.starts_with("/v1/") && !is_public(op) {
                    add_error(op, "500", "`internal`: the cause is logged with the request id, never shown", false);
                }
            }
        }
    }
}

/// Links from a created (or found) session to every operation on `/v1/sessions/{id}...`, so a
/// client generator, or the API fuzzer's stateful phase, can follow them with a real id.
struct SessionLinks;

impl Modify for SessionLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut targets = vec![];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/v1/sessions/{id}") {
                targets.extend(operations(item).filter_map(|op| op.operation_id.clone()));
            }
        }
        let Some(create) = openapi.paths.paths.get_mut("/v1/sessions").and_then(|item| item.post.as_mut()) else {
            return;
        };
        for status in ["200", "201"] {
            if let Some(RefOr::T(response)) = create.responses.responses.get_mut(status) {
                for target in &targets {
                    let link = LinkBuilder::new().operation_id(target).parameter("id", "$response.body#/id").build();
                    response.links.insert(target.clone(), RefOr::T(link));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    /// The text of a call up to its closing parenthesis (`s` starts after the opening one).
    fn call_arguments(s: &str) -> &str {
        let mut depth = 1;
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &s[..i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses in router.rs after {s:.40}");
    }

    /// `get(..).post(..)`: the method routers named in a `.route(...)` call.
    fn methods_in(call: &str) -> Vec<&'static str> {
        let mut found = vec![];
        for m in METHODS {
            let needle = format!("{m}(");
            for (at, _) in call.match_indices(&needle) {
                let before = call[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    found.push(m);
                }
            }
        }
        found
    }

    /// Every `(METHOD, path)` that `router.rs` serves: the routes before `let ide =` are nested
    /// under `/v1`, the rest are top-level.
    fn routes_of_the_router() -> BTreeSet<(String, String)> {
        let src = include_str!("router.rs");
        let src = src.split("#[cfg(test)]").next().expect("source");
        let (v1, top) = src.split_once("let ide =").expect("router.rs builds `v1` before `ide`");
        let mut routes = BTreeSet::new();
        for (part, prefix) in [(v1, "/v1"), (top, "")] {
            for (at, _) in part.match_indices(".route(") {
                let call = call_arguments(&part[at + ".route(".len()..]);
                let path = call.trim_start().strip_prefix('"').and_then(|p| p.split('"').next()).expect("a path");
                let methods = methods_in(call);
                assert!(!methods.is_empty(), "no method found in the route {path:?}");
                for m in methods {
                    // axum's catch-all `{*path}` is OpenAPI's `{path}`.
                    routes.insert((m.to_uppercase(), format!("{prefix}{path}").replace("{*", "{")));
                }
            }
        }
        routes
    }

    fn document() -> Value {
        serde_json::from_str(super::document()).expect("the document is JSON")
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = vec![];
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                if METHODS.contains(&method.as_str()) {
                    out.push((method.to_uppercase(), path.clone(), op));
                }
            }
        }
        out
    }

    #[test]
    fn the_router_source_is_read_as_the_router_builds_it() {
        let routes = routes_of_the_router();
        for expected in
            [("GET", "/healthz"), ("GET", "/v1/sessions"), ("POST", "/v1/sessions"), ("POST", "/v1/hooks/git")]
        {
            assert!(routes.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} in {routes:?}");
        }
        assert_eq!(methods_in("post(builds::create).get(builds::list).layer((x::max(1),))"), ["get", "post"]);
    }

    #[test]
    fn every_route_of_the_router_is_in_the_document_and_back() {
        let doc = document();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let documented: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
        let routed = routes_of_the_router();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes without a description in the OpenAPI document: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented operations the router does not serve: {unrouted:?}");
        let mut ids = BTreeSet::new();
        for (m, p, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{m} {p} has no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id:?} is used twice");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{m} {p} has no summary");
        }
    }

    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc = document();
        let error_ref = "#/components/schemas/ErrorBody";
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        for (m, p, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{m} {p} has no responses"));
            let takes_input = op.get("requestBody").is_some()
                || op["parameters"].as_array().is_some_and(|a| !a.is_empty())
                || op.get("security").is_none_or(|s| s != &serde_json::json!([{}]));
            let mut client_errors = 0;
            for (status, r) in responses {
                if !status.starts_with('4') {
                    continue;
                }
                client_errors += 1;
                let schema = &r["content"]["application/json"]["schema"];
                assert_eq!(schema["$ref"], error_ref, "{m} {p} answers {status} with another body: {r}");
                let description = r["description"].as_str().unwrap_or_default();
                assert!(description.contains('`'), "{m} {p} {status} names no error code: {description:?}");
            }
            if takes_input {
                assert!(client_errors > 0, "{m} {p} takes input but documents no 4xx answer");
            }
            if let Some(r) = responses.get("500") {
                assert_eq!(r["content"]["application/json"]["schema"]["$ref"], error_ref, "{m} {p} 500");
            }
        }
    }

    #[test]
    fn a_created_session_links_to_the_operations_on_it() {
        let doc = document();
        let links = &doc["paths"]["/v1/sessions"]["post"]["responses"]["201"]["links"];
        for id in ["get_session", "create_check", "list_session_events", "stop_session"] {
            assert_eq!(links[id]["parameters"]["id"], "$response.body#/id", "{id}: {links}");
            assert_eq!(links[id]["operationId"], id, "{id}: {links}");
        }
    }

    #[test]
    fn responses_have_real_schemas() {
        // The views are described field by field, not as an untyped object.
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for name in ["Session", "Exercise", "Check", "Capacity", "PoolList", "AlertList", "SessionUsageView", "AppList"]
        {
            let props = schemas[name]["properties"].as_object();
            let all_of = schemas[name]["allOf"].as_array();
            assert!(props.is_some_and(|p| !p.is_empty()) || all_of.is_some(), "{name}: {}", schemas[name]);
        }
    }
}
