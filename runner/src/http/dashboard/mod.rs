//! `/dashboard/`: the operators' dashboard, in the browser (docs/ARCHITECTURE.md, "Dashboard").
//!
//! An operator signs in at `/dashboard/login` with the API token or `RUNNER_OPERATOR_TOKEN` and
//! gets an HttpOnly, `SameSite=Strict` cookie holding a signed, expiring sign-in (`auth.rs`). The
//! bearer-token `/v1` API never takes that cookie; the page reads `/dashboard/api/...` instead,
//! which calls the `/v1` handlers themselves behind [`guard`]: the cookie instead of the bearer
//! token, and for every request that changes something the same-origin rule and the sign-in's
//! CSRF token. Only reads and the operators' actions are there (stop a session, stop an
//! exercise's sessions, drain, undrain, roll an app back); nothing that creates or edits.

pub mod auth;
pub mod page;
pub mod views;

use std::{num::NonZeroU32, sync::Arc};

use axum::{
    extract::{FromRef, Path, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use governor::{clock::Clock, DefaultDirectRateLimiter, Quota, RateLimiter};

use self::auth::{SignedIn, Signer};
use super::{apps, builds, exercises, extract::ApiBytes, fleet, operators, sessions, usage};
use crate::{app::App, config::Settings, error::ApiError};

/// The dashboard's sign-in state, built once with the router.
pub struct DashboardAuth {
    pub signer: Signer,
    /// `Secure` cookies (and the `__Host-` name) when browsers reach the runner over https.
    secure: bool,
    public_origin: Option<String>,
    /// Sign-in attempts, all credentials together: a guessed token costs time.
    logins: DefaultDirectRateLimiter,
}

impl DashboardAuth {
    pub fn new(settings: &Settings) -> DashboardAuth {
        let secret = settings.ide_secret.as_ref().expect("secrets resolved at launch");
        let api = settings.api_token.as_ref().expect("token resolved at launch");
        DashboardAuth {
            signer: Signer::new(
                secret.expose().as_bytes(),
                api.expose(),
                settings.operator_token.as_ref().map(|t| t.expose()),
            ),
            secure: settings.public_url.starts_with("https://"),
            public_origin: auth::origin_of(&settings.public_url),
            logins: RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(2).expect("2")).allow_burst(NonZeroU32::new(10).expect("10")),
            ),
        }
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure {
            auth::SECURE_COOKIE
        } else {
            auth::COOKIE
        }
    }

    /// The request's sign-in, if its cookie verifies.
    fn signed_in(&self, headers: &HeaderMap) -> Option<SignedIn> {
        let value = auth::cookie(headers, self.cookie_name())?;
        self.signer.verify(value, web_ide_proxy::token::now_unix()).ok()
    }
}

/// The dashboard router's state: the app (for the `/v1` handlers) and the sign-in state.
#[derive(Clone)]
pub struct Dash {
    pub app: Arc<App>,
    pub auth: Arc<DashboardAuth>,
}

impl FromRef<Dash> for Arc<App> {
    fn from_ref(d: &Dash) -> Arc<App> {
        d.app.clone()
    }
}

pub fn router(app: Arc<App>) -> Router {
    let d = Dash { auth: Arc::new(DashboardAuth::new(&app.settings)), app };
    // The /v1 handlers themselves, under the cookie instead of the bearer token.
    let api = Router::new()
        .route("/me", get(views::me))
        .route("/overview", get(views::overview))
        .route("/problems", get(views::problems))
        .route("/builds", get(views::builds))
        .route("/runs", get(views::runs))
        .route("/usage/sessions", get(views::session_figures))
        .route("/capacity", get(usage::capacity))
        .route("/pools", get(usage::pools))
        .route("/usage/top", get(usage::top))
        .route("/usage/exercises", get(usage::exercises))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}", get(sessions::get).delete(sessions::delete))
        .route("/sessions/{id}/usage", get(usage::session))
        .route("/sessions/{id}/events", get(sessions::events))
        .route("/sessions/{id}/checks", get(sessions::list_checks))
        .route("/exercises", get(exercises::list))
        .route("/exercises/{slug}/builds", get(builds::list))
        .route("/exercises/{slug}/stop-sessions", post(operators::stop_exercise_sessions))
        .route("/builds/{id}", get(builds::get))
        .route("/builds/{id}/logs", get(builds::logs))
        .route("/apps", get(apps::list))
        .route("/apps/{app}/deploys", get(apps::list_deploys))
        .route("/apps/{app}/rollback", post(apps::rollback))
        .route("/deploys/{id}", get(apps::get_deploy))
        .route("/deploys/{id}/logs", get(apps::deploy_logs))
        .route("/runner", get(operators::runner))
        .route("/runner/drain", post(operators::drain))
        .route("/runner/undrain", post(operators::undrain))
        .route("/audit", get(operators::audit_log))
        .route("/nodes", get(fleet::list))
        .route("/nodes/{name}/availability", axum::routing::put(fleet::set_availability))
        .route("/{*rest}", get(api_not_found).post(api_not_found).delete(api_not_found).put(api_not_found));
    let guarded = Router::new()
        .route("/dashboard/", get(asset))
        .route("/dashboard/app.js", get(asset))
        .route("/dashboard/app.css", get(asset))
        .route("/dashboard/logout", post(logout))
        .nest("/dashboard/api", api)
        .route("/dashboard/{*rest}", get(not_found).post(not_found).delete(not_found).put(not_found))
        .route_layer(middleware::from_fn_with_state(d.clone(), guard));
    Router::new()
        .route("/dashboard", get(|| async { Redirect::permanent("/dashboard/") }))
        .route("/dashboard/login", get(login_form).post(login))
        .merge(guarded)
        .with_state(d)
}

/// Whether a browser navigated here (it reads a page), rather than a script fetching data.
fn navigation(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
    get("sec-fetch-mode") == "navigate" || get(header::ACCEPT.as_str()).contains("text/html")
}

fn refuse(navigated: bool, e: ApiError) -> Response {
    if navigated {
        page::error(e.status, e.code, &e.message)
    } else {
        e.into_response()
    }
}

fn to_login(clear: Option<&DashboardAuth>) -> Response {
    let mut resp = Redirect::to("/dashboard/login").into_response();
    if let Some(a) = clear {
        if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(None, a.secure)) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

fn cross_site(why: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "cross_site_request", format!("refused: {why}"))
}

/// Every `/dashboard/*` route but the sign-in: a cookie that verifies (else a navigation goes to
/// the sign-in page, a script gets a JSON 401); for a request that changes something, first the
/// same-origin rule, then the CSRF token (403 otherwise, nothing done); then the rate limit of
/// the token that signed in. The handlers see the same `Actor` as under `/v1`.
async fn guard(State(d): State<Dash>, mut req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/dashboard/api/");
    let navigated = !api && navigation(req.headers());
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes {
        if let Err(why) = auth::same_origin(req.headers(), d.auth.public_origin.as_deref()) {
            d.app.metrics.rejected_requests.with_label_values(&["cross_site"]).inc();
            tracing::warn!(path = %req.uri().path(), why, "dashboard: refused a request from another origin");
            return refuse(navigated, cross_site(why));
        }
    }
    let Some(signed) = d.auth.signed_in(req.headers()) else {
        let had_cookie = auth::cookie(req.headers(), d.auth.cookie_name()).is_some();
        if navigated {
            return to_login(had_cookie.then_some(&*d.auth));
        }
        return ApiError::new(StatusCode::UNAUTHORIZED, "not_signed_in", "sign in at /dashboard/login").into_response();
    };
    if changes {
        let presented = req.headers().get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !d.auth.signer.csrf_ok(&signed, presented) {
            d.app.metrics.rejected_requests.with_label_values(&["csrf"]).inc();
            let e = ApiError::new(StatusCode::FORBIDDEN, "csrf_token_invalid", "missing or wrong X-CSRF-Token");
            return refuse(navigated, e);
        }
    }
    if let Err(not_until) = d.app.rate_limiter.check_key(&d.auth.signer.rate_key(signed.credential).to_string()) {
        d.app.metrics.rejected_requests.with_label_values(&["rate_limit"]).inc();
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        return ApiError::rate_limited(wait.as_secs_f64().ceil() as u64).into_response();
    }
    req.extensions_mut().insert(signed.credential.actor());
    req.extensions_mut().insert(signed);
    next.run(req).await
}

async fn asset(req_headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let name = uri.path().trim_start_matches("/dashboard/");
    match page::asset(name) {
        Some((content_type, body)) => page::serve(&req_headers, content_type, body),
        None => page::error(StatusCode::NOT_FOUND, "route_not_found", "no such page"),
    }
}

async fn not_found(headers: HeaderMap) -> Response {
    refuse(navigation(&headers), ApiError::not_found("route_not_found", "no such dashboard page"))
}

async fn api_not_found(Path(_rest): Path<String>) -> ApiError {
    ApiError::not_found("route_not_found", "no such dashboard route")
}

/// `GET /dashboard/login`: the form (the dashboard itself when already signed in).
async fn login_form(State(d): State<Dash>, headers: HeaderMap) -> Response {
    if d.auth.signed_in(&headers).is_some() {
        return Redirect::to("/dashboard/").into_response();
    }
    page::login(StatusCode::OK, None)
}

/// `POST /dashboard/login` (form-encoded `token`): the API token or the operator token, compared
/// in constant time, exchanged for the cookie. Refusals set no cookie.
async fn login(State(d): State<Dash>, headers: HeaderMap, ApiBytes(body): ApiBytes) -> Response {
    if let Err(why) = auth::same_origin(&headers, d.auth.public_origin.as_deref()) {
        d.app.metrics.rejected_requests.with_label_values(&["cross_site"]).inc();
        return page::error(StatusCode::FORBIDDEN, "cross_site_request", &format!("refused: {why}"));
    }
    if d.auth.logins.check().is_err() {
        d.app.metrics.rejected_requests.with_label_values(&["rate_limit"]).inc();
        let mut resp =
            page::login(StatusCode::TOO_MANY_REQUESTS, Some("Too many sign-in attempts; wait a few seconds."));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !form.starts_with("application/x-www-form-urlencoded") {
        return page::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the sign-in form (application/x-www-form-urlencoded)",
        );
    }
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
        return page::login(StatusCode::BAD_REQUEST, Some("Enter a token."));
    };
    let Some(credential) = d.auth.signer.credential_of(&token) else {
        d.app.metrics.rejected_requests.with_label_values(&["dashboard_login"]).inc();
        tracing::warn!("dashboard: a sign-in with a wrong token was refused");
        return page::login(StatusCode::UNAUTHORIZED, Some("That token is not this runner's."));
    };
    let value = d.auth.signer.sign(credential, web_ide_proxy::token::now_unix());
    operators::audit(&d.app, credential.actor(), "dashboard.sign_in", &d.app.settings.instance, "ok", None).await;
    let mut resp = Redirect::to("/dashboard/").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&auth::set_cookie(Some(&value), d.auth.secure)).expect("a cookie of ASCII"),
    );
    resp
}

/// `POST /dashboard/logout`: forgets the sign-in here (its cookie stops working before it
/// expires) and clears the cookie.
async fn logout(State(d): State<Dash>, axum::Extension(signed): axum::Extension<SignedIn>) -> Response {
    d.auth.signer.revoke(&signed, web_ide_proxy::token::now_unix());
    let actor = signed.credential.actor();
    operators::audit(&d.app, actor, "dashboard.sign_out", &d.app.settings.instance, "ok", None).await;
    to_login(Some(&d.auth))
}
