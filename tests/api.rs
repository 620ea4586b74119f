//! The HTTP contract: health, auth, JSON errors for bad input (and that bad input changes
//! nothing), rate limits and back-pressure.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_without_a_token() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["docker"]["ok"], true);
    assert_eq!(v["checks"]["database"]["ok"], true);

    app.exercise("metrics", json!({})).await;
    app.session("learner-1", "metrics").await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "runner_sessions{state=\"running\"} 1",
        "runner_session_start_duration_seconds_bucket",
        "runner_sessions_reaped_total",
        "runner_docker_errors_total",
    ] {
        assert!(text.contains(needle) || needle.ends_with("_total"), "metrics lack {needle}:\n{text}");
    }
    assert!(text.contains("runner_session_start_duration_seconds_count{runtime=\"crun\"} 1"), "{text}");
}

/// What a new operator looks for first: requests by route and status with their latency, the
/// version running, the IDE's open connections (issue 9, item 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_and_name_the_version() {
    let app = spawn_app().await;
    for _ in 0..3 {
        assert_eq!(app.get("/v1/exercises").await.0, 200);
    }
    assert_eq!(app.get("/v1/sessions/00000000-0000-4000-8000-000000000000").await.0, 404);
    assert_eq!(app.get("/v1/no-such-route").await.0, 404);
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = |metric: &str, parts: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(&format!("{metric}{{")) && parts.iter().all(|p| l.contains(p)))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {metric} with {parts:?} in:\n{text}"))
    };
    assert_eq!(
        line("runner_http_requests_total", &["route=\"/v1/exercises\"", "status=\"200\"", "method=\"GET\""]),
        "3"
    );
    assert_eq!(line("runner_http_requests_total", &["route=\"/v1/sessions/{id}\"", "status=\"404\""]), "1");
    // Unknown paths share one label, so a scanner cannot blow up the series count.
    assert_eq!(line("runner_http_requests_total", &["route=\"unmatched\"", "status=\"404\""]), "1");
    assert_eq!(line("runner_http_request_duration_seconds_count", &["route=\"/v1/exercises\""]), "3");
    assert_eq!(line("runner_build_info", &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]), "1");
    assert!(text.contains("\nrunner_ide_open_connections 0\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_requires_the_bearer_token() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/exercises")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_code(&v), "unauthorized");
    assert!(v["error"]["request_id"].is_string());

    let r = app.client.get(app.url("/v1/exercises")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.get(app.url("/v1/exercises")).header("authorization", TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 401, "a token without the Bearer scheme is refused");
    // A refused create changes nothing.
    let r = app.client.put(app.url("/v1/exercises/sneaky")).json(&json!({"image": IMAGE})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.get("/v1/exercises/sneaky").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exercises_are_created_updated_listed_and_validated() {
    let app = spawn_app().await;
    let (status, v) = app.put("/v1/exercises/python-basics", json!({"image": IMAGE, "title": "Basics"})).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["slug"], "python-basics");
    assert_eq!(v["workdir"], "/workspace", "the image's WORKDIR is used");
    assert_eq!(v["network"], false);
    let (status, v) =
        app.put("/v1/exercises/python-basics", json!({"image": IMAGE, "limits": {"memory_mb": 200}})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["limits"]["memory_mb"], 200);
    let (status, v) = app.get("/v1/exercises/python-basics").await;
    assert_eq!(status, 200);
    assert_eq!(v["limits"]["memory_mb"], 200);
    let (_, v) = app.get("/v1/exercises").await;
    assert_eq!(v["exercises"].as_array().unwrap().len(), 1);

    // Each kind of bad input: the right status and code, and nothing written.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/exercises/Bad_Slug", json!({"image": IMAGE}), 422, "invalid_slug"),
        ("/v1/exercises/-x", json!({"image": IMAGE}), 422, "invalid_slug"),
        ("/v1/exercises/missing-image", json!({"image": "no-such/image:1"}), 422, "image_not_found"),
        ("/v1/exercises/bad-ref", json!({"image": "$(reboot)"}), 422, "invalid_image"),
        ("/v1/exercises/greedy", json!({"image": IMAGE, "limits": {"memory_mb": 999999}}), 422, "limit_exceeds_cap"),
        ("/v1/exercises/tiny", json!({"image": IMAGE, "limits": {"pids": 1}}), 422, "limit_too_small"),
        ("/v1/exercises/typed", json!({"image": 42}), 422, "invalid_body"),
        ("/v1/exercises/unknown", json!({"image": IMAGE, "privileged": true}), 422, "invalid_body"),
        ("/v1/exercises/wd", json!({"image": IMAGE, "workdir": "/tmp"}), 422, "invalid_workdir"),
        ("/v1/exercises/wd2", json!({"image": IMAGE, "workdir": "/a/../etc"}), 422, "invalid_workdir"),
    ];
    for (path, body, status, code) in cases {
        let (s, v) = app.put(path, body).await;
        assert_eq!((s, error_code(&v)), (status, code), "{path}: {v}");
    }
    let (_, v) = app.get("/v1/exercises").await;
    assert_eq!(v["exercises"].as_array().unwrap().len(), 1, "no bad input created an exercise: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_get_json_errors() {
    let app = spawn_app_with(|s| s.max_body_bytes = 4096).await;
    app.exercise("hello", json!({})).await;
    let raw = |body: String, ct: &'static str| {
        app.client.post(app.url("/v1/sessions")).bearer_auth(TOKEN).header("content-type", ct).body(body).send()
    };
    let r = raw("{not json".into(), "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.json().await.unwrap()), "malformed_json");

    let r = raw(json!({"learner": 7, "exercise": "hello"}).to_string(), "application/json").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(&r.json().await.unwrap()), "invalid_body");

    let r = raw(json!({"learner": "a"}).to_string(), "application/json").await.unwrap();
    assert_eq!(r.status(), 422, "a missing field");

    let r = raw(json!({"learner": "a", "exercise": "hello"}).to_string(), "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);

    let big = json!({"learner": "a".repeat(10_000), "exercise": "hello"}).to_string();
    let r = raw(big, "application/json").await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.json().await.unwrap()), "body_too_large");

    let (s, v) = app.post("/v1/sessions", json!({"learner": "a b", "exercise": "hello"})).await;
    assert_eq!((s, error_code(&v)), (422, "invalid_learner"));
    let (s, v) = app.post("/v1/sessions", json!({"learner": "a", "exercise": "nope"})).await;
    assert_eq!((s, error_code(&v)), (404, "exercise_not_found"));
    let (s, v) = app.get("/v1/sessions/not-a-uuid").await;
    assert_eq!((s, error_code(&v)), (404, "session_not_found"));
    let (s, v) = app.get(&format!("/v1/sessions/{}", uuid::Uuid::new_v4())).await;
    assert_eq!((s, error_code(&v)), (404, "session_not_found"));
    let (s, v) = app.get("/v1/sessions?state=sleeping").await;
    assert_eq!((s, error_code(&v)), (400, "invalid_query"));
    let (s, v) = app.get("/v1/no-such-route").await;
    assert_eq!((s, error_code(&v)), (404, "route_not_found"));
    let (s, v) = app.call(reqwest::Method::PATCH, "/v1/sessions", None).await;
    assert_eq!((s, error_code(&v)), (405, "method_not_allowed"));

    // None of it made a session or a container.
    let (_, v) = app.get("/v1/sessions").await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 0, "{v}");
    assert!(app.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.rate_limit_per_sec = 1;
        s.rate_limit_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = app.client.get(app.url("/v1/exercises")).bearer_auth(TOKEN).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap();
            assert_eq!(error_code(&v), "rate_limited");
        }
    }
    assert_eq!(&statuses[..5], &[200; 5], "the burst passes: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
    assert!(secs >= 1);
    // Health checks are not rate limited.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_are_bounded_and_the_excess_gets_503() {
    let app = spawn_app_with(|s| {
        s.max_concurrent_starts = 1;
        s.start_queue_timeout = Duration::from_millis(1);
    })
    .await;
    app.exercise("busy", json!({})).await;
    let requests = (0..6).map(|i| app.post("/v1/sessions", json!({"learner": format!("l{i}"), "exercise": "busy"})));
    let results = futures_util::future::join_all(requests).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert!(created >= 1, "{results:?}");
    assert!(!refused.is_empty(), "past the bound requests are refused: {results:?}");
    for (_, v) in &refused {
        assert_eq!(error_code(v), "start_queue_full");
    }
    // Refused requests left nothing behind.
    let (_, v) = app.get("/v1/sessions").await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), created);
    assert_eq!(app.containers().len(), created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_session_cap_answers_503_with_retry_after() {
    let app = spawn_app_with(|s| s.max_live_sessions = 1).await;
    app.exercise("cap", json!({})).await;
    app.session("first", "cap").await;
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .bearer_auth(TOKEN)
        .json(&json!({"learner": "second", "exercise": "cap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(&r.json().await.unwrap()), "session_capacity");
    assert_eq!(app.containers().len(), 1);
}

/// Concurrent PUTs of one exercise or app never fail and never lose a write (SQLite; the same
/// on PostgreSQL in tests/postgres.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_definition_neither_fail_nor_lose_writes() {
    let app = spawn_app().await;
    concurrent_puts_neither_fail_nor_lose_writes(&app).await;
}

/// Every route that takes input, sent what a newcomer (or a script gone wrong) sends: the answer
/// is a JSON error with the right status, and its message is for people — no Rust type names or
/// `Debug` output, no echo of binary input, the limit named on a 413 (issue 10, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_to_every_route_gets_a_plain_json_error() {
    let app = spawn_app_with(|s| s.max_archive_bytes = 64 * 1024).await;
    app.exercise("known", json!({})).await;
    let (_, before) = app.get("/v1/exercises/known").await;
    let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let big_json = format!("{{\"image\": \"{}\"}}", "x".repeat(70_000));
    let json_ct = "application/json";
    #[rustfmt::skip]
    // (method, path, content type, body, status, code)
    type Case<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("PUT", "/v1/exercises/known".into(), json_ct, b"{not json".to_vec(), 400, "malformed_json"),
        ("PUT", "/v1/exercises/known".into(), "text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        ("PUT", "/v1/exercises/known".into(), json_ct, br#"{"image": 3}"#.to_vec(), 422, "invalid_body"),
        ("PUT", "/v1/exercises/known".into(), json_ct, br#"{"imag": "x"}"#.to_vec(), 422, "invalid_body"),
        // Found by scripts/fuzz-api.sh: serde reads a struct from an array of its fields.
        ("PUT", "/v1/exercises/known".into(), json_ct, b"[null, null]".to_vec(), 422, "invalid_body"),
        ("POST", "/v1/sessions".into(), json_ct, br#"["ada", "known"]"#.to_vec(), 422, "invalid_body"),
        ("PUT", "/v1/exercises/Not_A_Slug".into(), json_ct, br#"{"image": "x"}"#.to_vec(), 422, "invalid_slug"),
        ("PUT", "/v1/exercises/known".into(), json_ct, big_json.clone().into_bytes(), 413, "body_too_large"),
        ("GET", "/v1/exercises/nope".into(), "", vec![], 404, "exercise_not_found"),
        ("POST", "/v1/sessions".into(), json_ct, br#"{"learner": "#.to_vec(), 400, "malformed_json"),
        ("POST", "/v1/sessions".into(), "text/plain", b"learner=ada".to_vec(), 415, "unsupported_media_type"),
        ("POST", "/v1/sessions".into(), json_ct, br#"{"learner": "ada"}"#.to_vec(), 422, "invalid_body"),
        (
            "POST",
            "/v1/sessions".into(),
            json_ct,
            br#"{"learner": "", "exercise": "known"}"#.to_vec(),
            422,
            "invalid_learner",
        ),
        (
            "POST",
            "/v1/sessions".into(),
            json_ct,
            br#"{"learner": "ada", "exercise": "nope"}"#.to_vec(),
            404,
            "exercise_not_found",
        ),
        ("GET", "/v1/sessions?state=bogus".into(), "", vec![], 400, "invalid_query"),
        ("GET", "/v1/sessions?limit=many".into(), "", vec![], 400, "invalid_query"),
        // Found by scripts/fuzz-api.sh: a limit outside the documented 1-1000 was clamped.
        ("GET", "/v1/sessions?limit=2147483648".into(), "", vec![], 400, "invalid_query"),
        ("GET", "/v1/sessions?limit=0".into(), "", vec![], 400, "invalid_query"),
        ("GET", "/v1/sessions/not-a-uuid".into(), "", vec![], 404, "session_not_found"),
        ("POST", "/v1/exercises/known/builds".into(), "text/plain", b"hello".to_vec(), 415, "unsupported_media_type"),
        ("POST", "/v1/exercises/known/builds".into(), "application/x-tar", junk.clone(), 422, "invalid_archive"),
        ("POST", "/v1/exercises/known/builds".into(), "application/gzip", junk.clone(), 422, "invalid_archive"),
        (
            "POST",
            "/v1/exercises/known/builds".into(),
            "application/x-tar",
            vec![0u8; 100 * 1024],
            413,
            "body_too_large",
        ),
        ("POST", "/v1/exercises/known/builds".into(), json_ct, b"{\"git\": 1}".to_vec(), 422, "invalid_body"),
        ("GET", "/v1/builds/zzz".into(), "", vec![], 404, "build_not_found"),
        ("POST", "/v1/exercises/known/versions/v1/publish".into(), json_ct, b"{}".to_vec(), 404, "version_not_found"),
        ("PUT", "/v1/apps/site".into(), json_ct, b"{nope".to_vec(), 400, "malformed_json"),
        ("PUT", "/v1/apps/site".into(), "text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        ("POST", "/v1/apps/nope/rollback".into(), json_ct, b"{oops".to_vec(), 400, "malformed_json"),
        ("POST", "/v1/apps/nope/deploys".into(), json_ct, br#"{"version": "v1"}"#.to_vec(), 404, "app_not_found"),
        ("GET", "/v1/deploys/zzz".into(), "", vec![], 404, "deploy_not_found"),
        ("POST", "/v1/exercises/nope/stop-sessions".into(), json_ct, b"{}".to_vec(), 404, "exercise_not_found"),
        ("GET", "/v1/audit?limit=-1".into(), "", vec![], 400, "invalid_query"),
        ("DELETE", "/v1/exercises/known".into(), "", vec![], 405, "method_not_allowed"),
        ("GET", "/v1/nothing-here".into(), "", vec![], 404, "route_not_found"),
    ];
    let junk_hex: Vec<String> =
        junk[..64].windows(3).map(|w| format!("{:02x}{:02x}{:02x}", w[0], w[1], w[2])).collect();
    for (method, path, ct, body, status, code) in cases {
        let mut req = app.client.request(method.parse().unwrap(), app.url(&path)).bearer_auth(TOKEN);
        if !ct.is_empty() {
            req = req.header("content-type", ct).body(body.clone());
        }
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!((got, v["error"]["code"].as_str().unwrap_or("")), (status, code), "{method} {path}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        for leak in ["Slug(", "LearnerId(", "Some(", "None", "Error {", "\\u{", "\\x", "Kind(", "EntryType"] {
            assert!(!message.contains(leak), "{method} {path}: {leak:?} in {message:?}");
        }
        assert!(message.chars().all(|c| !c.is_control()), "{method} {path}: control characters in {message:?}");
        assert!(junk_hex.iter().all(|h| !message.contains(h.as_str())), "{method} {path}: echoes the body: {message}");
        assert!(!message.contains(char::REPLACEMENT_CHARACTER), "{method} {path}: echoes bytes: {message}");
        if status == 413 {
            assert!(
                message.contains("bytes") && message.contains("RUNNER_MAX_"),
                "{method} {path}: name the limit: {message}"
            );
        }
    }
    // The auth scheme is case-insensitive (RFC 9110).
    let r = app
        .client
        .get(app.url("/v1/exercises"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url("/v1/exercises"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Nothing above changed the exercise.
    let (_, v) = app.get("/v1/exercises/known").await;
    assert_eq!(v["image"], IMAGE, "{v}");
    assert_eq!(v["updated_at"], before["updated_at"], "{v}");
}

/// The API's description is public, OpenAPI 3.1, and names the routes the web app calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_token() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/sessions"]["post"]["requestBody"].is_object(), "{}", doc["paths"]["/v1/sessions"]);
    assert_eq!(doc["paths"]["/v1/sessions/{id}/checks"]["post"]["operationId"], "create_check");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

/// The README's quick start, run as written (only `RUNNER=` points at this test's runner, and
/// the token file is where `scripts/serve` writes it): the session it makes has an IDE that
/// opens and a check that runs — failing until the learner makes hello.txt (issue 10, item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_quick_start_works_as_written() {
    let app = spawn_app().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("TOKEN=$(cat .runner-data/api-token)"))
        .expect("the quick start's API block");
    assert!(block.contains("RUNNER=http://127.0.0.1:8080\n"), "{block}");
    let script = block.replace("RUNNER=http://127.0.0.1:8080\n", &format!("RUNNER={}\n", app.base));
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join(".runner-data")).unwrap();
    std::fs::write(cwd.path().join(".runner-data/api-token"), TOKEN).unwrap();
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> =
        serde_json::Deserializer::from_str(&stdout).into_iter::<Value>().collect::<Result<_, _>>().unwrap();
    assert_eq!(docs.len(), 2, "{stdout}");
    assert_eq!(docs[0]["slug"], "hello", "{stdout}");
    let session = &docs[1];
    assert_eq!(session["state"], "running", "{session}");
    let id = session["id"].as_str().unwrap();
    // The IDE opens: the link is exchanged for a cookie, and the page is served.
    let ide_url = session["ide_url"].as_str().expect("an IDE link");
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(ide_url).send().await.unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = no_redirect.get(app.url(&format!("/ide/{id}/"))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    // The check runs: it fails (exit 1, not 127: the command exists) until hello.txt is there.
    let (status, c) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, &c["passed"], &c["exit_code"]), (201, &json!(false), &json!(1)), "{c}");
    let container = session_container(&app.instance, id).unwrap();
    learner_writes(&container, "/workspace/hello.txt", "hi");
    let (_, c) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!(c["passed"], true, "{c}");
}

/// An image without the base layer gets a sandbox but no IDE: no `ide_url` (that would answer
/// 502), a reason instead (issue 10, item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_an_image_without_the_agent_says_it_has_no_ide() {
    let app = spawn_app().await;
    app.exercise("plain", json!({})).await;
    let s = app.session("ada", "plain").await;
    assert!(s.get("ide_url").is_none(), "{s}");
    assert!(s["ide_unavailable"].as_str().unwrap().contains("exercise-runner/base"), "{s}");
    let (_, again) = app.get(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())).await;
    assert!(again.get("ide_url").is_none() && again["ide_unavailable"].is_string(), "{again}");
}
