//! The operators' dashboard (`/dashboard/`): its sign-in, cookie and CSRF rules over HTTP, and
//! the whole dashboard in a real headless Chromium (tests/e2e/dashboard.mjs) against a real
//! sandbox holding a known amount of memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{header, StatusCode};
use serde_json::{json, Value};

const OPERATOR_TOKEN: &str = "operator-token-for-tests-0123";
const MIB: f64 = 1024.0 * 1024.0;

fn browser_like() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn operator_app() -> TestApp {
    spawn_app_with(|s| {
        s.operator_token = Some(runner::config::Secret::new(OPERATOR_TOKEN));
        s.usage_interval = Duration::from_millis(500);
    })
    .await
}

/// Signs in with `token` as the sign-in form does; the `name=value` of the cookie.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let r = browser_like()
        .post(app.url("/dashboard/login"))
        .header("origin", &app.base)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
    assert_eq!(r.headers()[header::LOCATION], "/dashboard/");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    assert!(!set.contains("Secure"), "no Secure over plain http: {set}");
    assert!(!set.contains(token), "the cookie never holds the token: {set}");
    set.split(';').next().unwrap().to_string()
}

/// A request of the dashboard's page: its cookie, its origin, optionally its CSRF token.
fn dash(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut r = browser_like()
        .request(method, app.url(path))
        .header(header::COOKIE, cookie)
        .header("origin", &app.base)
        .header("sec-fetch-site", "same-origin");
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    r
}

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn latest_audit(app: &TestApp) -> Value {
    let (_, v) = app.get("/v1/audit?limit=1").await;
    v["entries"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_gives_a_strict_cookie_that_only_the_dashboard_takes_and_actions_need_their_origin_and_token() {
    let app = operator_app().await;
    let client = browser_like();

    // Without a cookie: a navigation goes to the sign-in page, a script gets JSON.
    let r = client.get(app.url("/dashboard/")).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/dashboard/login");
    let r = client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.headers()[header::LOCATION].to_str().unwrap()),
        (StatusCode::PERMANENT_REDIRECT, "/dashboard/")
    );
    for path in ["/dashboard/api/sessions", "/dashboard/api/me", "/dashboard/app.js"] {
        let (status, v) = body(client.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("not_signed_in")), "{path}: {v}");
    }
    let r = client.get(app.url("/dashboard/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(r.text().await.unwrap().contains("name=\"token\""));

    // Refused sign-ins set no cookie: a wrong token, another origin, not a form, no token.
    let login = |origin: &str| client.post(app.url("/dashboard/login")).header("origin", origin.to_string());
    let r = login(&app.base).form(&[("token", "not-the-token-at-all")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("not this runner"));
    let r = login("http://evil.test").form(&[("token", OPERATOR_TOKEN)]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let r = login(&app.base).json(&json!({"token": OPERATOR_TOKEN})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    let r = login(&app.base).form(&[("other", "x")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The operator token signs in. The page is served with its policy; /v1 ignores the cookie.
    let cookie = sign_in(&app, OPERATOR_TOKEN).await;
    assert_eq!(latest_audit(&app).await["action"], "dashboard.sign_in");
    let r = dash(&app, reqwest::Method::GET, "/dashboard/", &cookie, None).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
    let (status, v) =
        body(client.get(app.url("/v1/sessions")).header(header::COOKIE, &cookie).send().await.unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "the API takes only the bearer token: {v}"
    );
    let r = client.get(app.url("/dashboard/login")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "signed in: the form sends on to the dashboard");

    let (status, me) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/me", &cookie, None).send().await.unwrap()).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["actor"], "operator-token");
    let csrf = me["csrf"].as_str().unwrap().to_string();

    // The /v1 handlers answer the same under the cookie, bad input included.
    let (status, v) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/capacity", &cookie, None).send().await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["sessions"]["max"].as_u64() > Some(0), "{v}");
    let (status, v) = body(
        dash(&app, reqwest::Method::GET, "/dashboard/api/sessions?state=bogus", &cookie, None).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{v}");
    let (status, v) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/nothing-here", &cookie, None).send().await.unwrap())
            .await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("route_not_found")), "{v}");
    for path in
        ["/dashboard/api/overview", "/dashboard/api/problems", "/dashboard/api/builds", "/dashboard/api/usage/sessions"]
    {
        let (status, v) = body(dash(&app, reqwest::Method::GET, path, &cookie, None).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    // Only reads and operators' actions: nothing that creates or edits.
    let (status, _) = body(
        dash(&app, reqwest::Method::POST, "/dashboard/api/sessions", &cookie, Some(&csrf))
            .json(&json!({"learner": "x", "exercise": "y"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405, "no session is created through the dashboard");

    // An action without the CSRF token, with another origin, from another site: 403, nothing done.
    let drain = "/dashboard/api/runner/drain";
    let (status, v) = body(dash(&app, reqwest::Method::POST, drain, &cookie, None).send().await.unwrap()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("csrf_token_invalid")), "{v}");
    let (status, v) =
        body(dash(&app, reqwest::Method::POST, drain, &cookie, Some("0badc0de")).send().await.unwrap()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("csrf_token_invalid")), "{v}");
    let other_port = app.base.rsplit_once(':').map(|(host, _)| format!("{host}:1")).unwrap();
    let cross = [
        vec![("origin", other_port.as_str()), ("sec-fetch-site", "same-site")],
        vec![("origin", "http://evil.test"), ("sec-fetch-site", "cross-site")],
        vec![],
    ];
    for headers in cross {
        let mut r = client.post(app.url(drain)).header(header::COOKIE, &cookie).header("x-csrf-token", &csrf);
        for (k, v) in &headers {
            r = r.header(*k, *v);
        }
        let (status, v) = body(r.send().await.unwrap()).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("cross_site_request")), "{headers:?}: {v}");
    }
    let (_, runner) = app.get("/v1/runner").await;
    assert_eq!(runner["draining"], false, "refused actions changed nothing");
    assert_eq!(latest_audit(&app).await["action"], "dashboard.sign_in", "and wrote nothing");

    // With both: done, and audited as the operator token.
    let (status, v) = body(dash(&app, reqwest::Method::POST, drain, &cookie, Some(&csrf)).send().await.unwrap()).await;
    assert_eq!((status, &v["draining"]), (200, &json!(true)), "{v}");
    let entry = latest_audit(&app).await;
    assert_eq!(
        (entry["action"].as_str(), entry["actor"].as_str()),
        (Some("runner.drain"), Some("operator-token")),
        "{entry}"
    );
    let (status, _) = body(
        dash(&app, reqwest::Method::POST, "/dashboard/api/runner/undrain", &cookie, Some(&csrf)).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);

    // A tampered cookie is no sign-in; a navigation with one is sent to sign in, the cookie cleared.
    let tampered = cookie.replacen(".operator.", ".api.", 1);
    let (status, _) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/me", &tampered, None).send().await.unwrap()).await;
    assert_eq!(status, 401);
    let r = dash(&app, reqwest::Method::GET, "/dashboard/", &tampered, None)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));

    // The API token signs in too, and its actions say so; a rollback is audited.
    let api_cookie = sign_in(&app, TOKEN).await;
    let (_, me) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/me", &api_cookie, None).send().await.unwrap()).await;
    assert_eq!(me["actor"], "api-token");
    let api_csrf = me["csrf"].as_str().unwrap().to_string();
    assert_ne!(api_csrf, csrf);
    let (status, v) = body(
        dash(&app, reqwest::Method::POST, "/dashboard/api/apps/no-such-app/rollback", &api_cookie, Some(&csrf))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("csrf_token_invalid")),
        "another sign-in's token: {v}"
    );
    let (status, v) = body(
        dash(&app, reqwest::Method::POST, "/dashboard/api/apps/no-such-app/rollback", &api_cookie, Some(&api_csrf))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("app_not_found")), "{v}");
    let entry = latest_audit(&app).await;
    assert_eq!(
        (entry["action"].as_str(), entry["actor"].as_str()),
        (Some("app.rollback"), Some("api-token")),
        "{entry}"
    );
    assert!(entry["outcome"].as_str().unwrap().starts_with("app_not_found"), "{entry}");

    // Signing out clears the cookie, and the old cookie stops working at once.
    let r = dash(&app, reqwest::Method::POST, "/dashboard/logout", &cookie, Some(&csrf)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let (status, _) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/me", &cookie, None).send().await.unwrap()).await;
    assert_eq!(status, 401, "a signed-out cookie is refused");
    let (status, _) =
        body(dash(&app, reqwest::Method::GET, "/dashboard/api/me", &api_cookie, None).send().await.unwrap()).await;
    assert_eq!(status, 200, "other sign-ins stay");

    // The session list takes several states now (the dashboard's "live" filter).
    let (status, v) = app.get("/v1/sessions?state=starting,running,stopping").await;
    assert_eq!(status, 200, "{v}");
}

/// Polls a session's usage until a sample taken after `t` exists; its working set.
async fn working_set_after(app: &TestApp, id: &str, t: chrono::DateTime<chrono::Utc>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = app.get(&format!("/v1/sessions/{id}/usage")).await;
        assert_eq!(status, 200, "{v}");
        let at = v["now"]["at"].as_str().and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok());
        if at.is_some_and(|at| at > t) {
            return v["now"]["memory_working_set_bytes"].as_f64().unwrap();
        }
        assert!(Instant::now() < deadline, "no sample after {t}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let app = operator_app().await;
    // A build to show on the builds page (busybox, seconds).
    let (status, b) = app.submit_build("dash-build", quick_exercise("dash-build", &[])).await;
    assert_eq!(status, 202, "{b}");
    let build_id = b["id"].as_str().unwrap().to_string();

    // Another learner's session, small (busybox), for the table to sort.
    app.exercise("dash-other", json!({})).await;
    app.session("grace-hopper", "dash-other").await;
    // A warm pool of one, for the overview's pools card (never claimed here).
    app.exercise("dash-pool", json!({"pool": {"min": 1, "max": 2}})).await;
    // A sandbox on the base image (python3) that will hold 64 MiB.
    let slug = "dash-memory";
    let body = json!({"image": "exercise-runner/base:latest", "limits": {"memory_mb": 256, "tmpfs_mb": 16},
                      "check": {"command": ["sh", "-c", "test -f done"], "timeout_secs": 10}});
    let (status, v) = app.put(&format!("/v1/exercises/{slug}"), body).await;
    assert!(status == 200 || status == 201, "{status} {v}");
    let s = app.session("ada-lovelace", slug).await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    start_memory_holder(&c).await;
    // A memory bomb beside it: the kernel kills the bomb (the largest process), which the
    // dashboard must show among the problems and the session's events.
    docker(&["exec", "-d", &c, "python3", "-c", "b = bytearray(b'x') * (400 << 20)"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ev) = app.get(&format!("/v1/sessions/{id}/events")).await;
        if ev["events"].as_array().unwrap().iter().any(|e| e["kind"] == "oom_killed") {
            break;
        }
        assert!(Instant::now() < deadline, "no oom_killed event: {ev}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = working_set_after(&app, &id, chrono::Utc::now() + chrono::Duration::milliseconds(1500)).await;
    assert_eq!(sandbox_exec(&c, "touch /tmp/go").0, 0);
    eventually(Duration::from_secs(30), "the allocation", || {
        (sandbox_exec(&c, "test -f /tmp/held").0 == 0).then_some(())
    })
    .await;
    let held = working_set_after(&app, &id, chrono::Utc::now()).await;
    let grew = (held - baseline) / MIB;
    assert!((57.6..=70.4).contains(&grew), "64 MiB held, the API says +{grew:.1} MiB");
    // A check, for the session page's list.
    let (status, check) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!(status, 201, "{check}");
    let b = app.wait_build(&build_id, Duration::from_secs(300)).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    // One-shot runs for the runs page: two accepted, one wrong answer.
    let runtime = json!({"image": "exercise-runner/base:latest", "run": ["python3", "main.py"]});
    assert_eq!(app.put("/v1/runtimes/python3", runtime).await.0, 201);
    for expected in ["1", "1", "2"] {
        let body = json!({"runtime": "python3", "learner": "ada-lovelace",
            "files": [{"path": "main.py", "content": "print(1)"}], "tests": [{"expected_output": expected}]});
        let (status, v) = app.post("/v1/runs", body).await;
        assert_eq!(status, 200, "{v}");
    }

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/dashboard.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("BASE", &app.base)
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("API_TOKEN", TOKEN)
        .env("SESSION_ID", &id)
        .env("LEARNER", "ada-lovelace")
        .env("EXERCISE", slug)
        .env("BASELINE_BYTES", format!("{baseline}"))
        .env("HELD_BYTES", format!("{}", 64u64 << 20))
        .env("BUILD_ID", &build_id)
        .env("ARTIFACTS", &artifacts)
        .output()
        .await
        .expect("running node tests/e2e/dashboard.mjs (scripts/test installs node, npm packages and chromium)");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{log}");
    assert!(out.status.success(), "the browser test failed (screenshots in {}):\n{log}", artifacts.display());

    // The stop button ended the session: through the API, stopped, its container gone, audited as
    // the operator token; the attacks left no trace.
    let v = app.wait_session(&id, Duration::from_secs(30), |v| v["state"] == "stopped").await;
    assert!(v["ended_at"].is_string(), "{v}");
    eventually(Duration::from_secs(30), "the container removed", || {
        session_container(&app.instance, &id).is_none().then_some(())
    })
    .await;
    let (_, audit) = app.get("/v1/audit?limit=100").await;
    let entries = audit["entries"].as_array().unwrap();
    let stop: Vec<&Value> =
        entries.iter().filter(|e| e["action"] == "session.stop" && e["target"] == id.as_str()).collect();
    assert_eq!(stop.len(), 1, "{audit}");
    assert_eq!(stop[0]["actor"], "operator-token", "{audit}");
    assert!(stop[0]["outcome"].as_str().unwrap().starts_with("ok"), "{audit}");
    for action in ["runner.drain", "runner.undrain", "dashboard.sign_in", "dashboard.sign_out"] {
        let by_op = entries.iter().filter(|e| e["action"] == action && e["actor"] == "operator-token").count();
        assert_eq!(by_op, 1, "{action}: {audit}");
    }
    assert!(!entries.iter().any(|e| e["action"] == "exercise.stop_sessions"), "{audit}");
}
