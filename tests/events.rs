//! The web app is told: signed webhooks with at-least-once delivery in order, their deliveries
//! listed and redelivered, and the same events as a resumable stream (`GET /v1/events`).
//! (Events surviving `kill -9` of the runner are in tests/lifecycle.rs.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(30);

/// Fast retries, so a receiver that comes back is caught up within a second.
fn quick_retries(s: &mut runner::Settings) {
    s.events.webhook_max_backoff = Duration::from_secs(1);
    s.events.webhook_timeout = Duration::from_secs(1);
}

async fn register(app: &TestApp, name: &str, url: &str, events: &[&str]) -> Value {
    let (status, v) = app
        .put(&format!("/v1/webhooks/{name}"), json!({"url": url, "secret": RECEIVER_SECRET, "events": events}))
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

const ALL: [&str; 5] = ["session.running", "session.ended", "check.completed", "build.finished", "version.published"];

async fn checked_exercise(app: &TestApp, slug: &str) {
    app.exercise(slug, json!({"check": {"command": ["sh", "-c", "test -f done"], "timeout_secs": 10}})).await;
}

async fn running_session(app: &TestApp, learner: &str, exercise: &str) -> String {
    let s = app.session(learner, exercise).await;
    let id = s["id"].as_str().unwrap().to_string();
    app.wait_session(&id, WITHIN, |v| v["state"] == "running").await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_life_reaches_the_web_app_signed_in_order_with_its_check() {
    let app = spawn_app_with(quick_retries).await;
    let all = EventReceiver::start(Answer::Ok).await;
    let checks_only = EventReceiver::start(Answer::Ok).await;
    let hook = register(&app, "site", &all.url, &ALL).await;
    assert!(hook.get("secret").is_none(), "the secret is never shown: {hook}");
    assert_eq!(hook["events"], json!(ALL));
    register(&app, "grades", &checks_only.url, &["check.completed"]).await;
    checked_exercise(&app, "told").await;

    let id = running_session(&app, "ada", "told").await;
    let (status, failed) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, failed["passed"].clone()), (201, json!(false)), "{failed}");
    learner_writes(&session_container(&app.instance, &id).unwrap(), "done", "yes");
    let (_, passed) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!(passed["passed"], true, "{passed}");
    let (status, _) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200);

    let events =
        all.wait_for(WITHIN, "the session's whole life", |e| types_of(e).contains(&"session.ended".to_string())).await;
    assert_eq!(
        types_of(&events),
        ["session.running", "check.completed", "check.completed", "session.ended"],
        "in the order it happened: {events:#?}"
    );
    assert!(all.got().iter().all(|d| d.signed), "every delivery verifies under the webhook's secret");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for e in &events {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        assert!(e["created_at"].as_str().unwrap().ends_with('Z'), "{e}");
        assert_eq!(e["data"]["session"], id.as_str());
        assert_eq!(e["data"]["learner"], "ada");
        assert_eq!(e["data"]["exercise"], "told");
    }
    assert_eq!(events[0]["data"]["ide_url"], format!("/ide/{id}/"));
    let (failed_e, passed_e) = (&events[1]["data"], &events[2]["data"]);
    assert_eq!((failed_e["passed"].clone(), failed_e["exit_code"].clone()), (json!(false), json!(1)));
    assert_eq!(passed_e["passed"], true);
    assert_eq!(passed_e["check"], passed["id"]);
    assert!(passed_e["duration_ms"].as_i64().is_some(), "{passed_e}");
    // Where the output can be read: the check itself.
    let (status, read) = app.get(passed_e["output_url"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!((read["id"].clone(), read["passed"].clone()), (passed["id"].clone(), json!(true)));
    let ended = &events[3]["data"];
    assert_eq!((ended["reason"].clone(), ended["state"].clone()), (json!("deleted"), json!("stopped")), "{ended}");

    // A webhook gets only the types it asked for.
    let grades = checks_only.wait_for(WITHIN, "both checks", |e| e.len() >= 2).await;
    assert_eq!(types_of(&grades), ["check.completed", "check.completed"]);

    let (_, d) = app.get("/v1/webhooks/site/deliveries").await;
    let list = d["deliveries"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{d}");
    assert!(list.iter().all(|x| x["status"] == "delivered" && x["attempts"] == 1 && x["last_status"] == 200), "{d}");
    let (_, hooks) = app.get("/v1/webhooks").await;
    let names: Vec<_> = hooks["webhooks"].as_array().unwrap().iter().map(|w| w["name"].clone()).collect();
    assert_eq!(names, [json!("grades"), json!("site")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_is_down_or_slow_gets_everything_in_order_when_it_returns() {
    let app = spawn_app_with(quick_retries).await;
    app.exercise("flaky", json!({})).await;

    // Failing: 503 for a while. The deliveries say so; nothing after the refused event overtakes it.
    let failing = EventReceiver::start(Answer::Fail(503)).await;
    register(&app, "failing", &failing.url, &["session.running", "session.ended"]).await;
    // Down: nothing listens on its port yet.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_url = format!("http://{}/events", port.local_addr().unwrap());
    drop(port);
    register(&app, "down", &down_url, &["session.running", "session.ended"]).await;
    // Slow: answers after the runner's 1 s attempt timeout.
    let slow = EventReceiver::start(Answer::Slow(Duration::from_secs(3))).await;
    register(&app, "slow", &slow.url, &["session.running", "session.ended"]).await;

    let mut ids = vec![];
    for learner in ["l1", "l2"] {
        let id = running_session(&app, learner, "flaky").await;
        assert_eq!(app.delete(&format!("/v1/sessions/{id}")).await.0, 200);
        ids.push(id);
    }
    let retried = |name: &'static str, error: &'static str| {
        let app = &app;
        async move {
            eventually_async(WITHIN, &format!("{name} to be retried"), || async move {
                let (_, d) = app.get(&format!("/v1/webhooks/{name}/deliveries?status=pending")).await;
                let first = d["deliveries"].as_array()?.first()?.clone();
                (first["attempts"].as_i64()? >= 2 && first["last_error"].as_str()?.contains(error)).then_some(first)
            })
            .await
        }
    };
    let f = retried("failing", "503").await;
    assert_eq!(f["last_status"], 503, "{f}");
    assert!(f["next_attempt_at"].is_string(), "{f}");
    retried("down", "unreachable").await;
    retried("slow", "no answer within 1 s").await;
    assert!(failing.events().is_empty());

    // They come back.
    failing.answer(Answer::Ok);
    slow.answer(Answer::Ok);
    let down = EventReceiver::start_on(
        tokio::net::TcpListener::bind(down_url[7..].trim_end_matches("/events")).await.unwrap(),
        Answer::Ok,
    );
    let want = ["session.running", "session.ended", "session.running", "session.ended"];
    for (name, r) in [("failing", &failing), ("down", &down), ("slow", &slow)] {
        let got = r.wait_for(WITHIN, &format!("everything at {name}"), |e| e.len() >= 4).await;
        assert_eq!(types_of(&got), want, "{name}: {got:#?}");
        let sessions: Vec<_> = got.iter().map(|e| e["data"]["session"].as_str().unwrap().to_string()).collect();
        assert_eq!(sessions, [&*ids[0], &*ids[0], &*ids[1], &*ids[1]], "{name}: in order per session");
    }
    // The slow receiver got the first event more than once; its id lets it drop the copies.
    let first_id = slow.events()[0]["id"].clone();
    assert!(slow.got().iter().filter(|d| d.body["id"] == first_id).count() >= 2);
    for name in ["failing", "down", "slow"] {
        let (_, d) = app.get(&format!("/v1/webhooks/{name}/deliveries")).await;
        assert!(d["deliveries"].as_array().unwrap().iter().all(|x| x["status"] == "delivered"), "{name}: {d}");
    }
}

/// `eventually` for an async probe.
async fn eventually_async<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_delivery_is_marked_failed_and_can_be_redelivered() {
    let app = spawn_app_with(|s| {
        quick_retries(s);
        s.events.webhook_give_up = Duration::ZERO; // the first refusal gives up
    })
    .await;
    let r = EventReceiver::start(Answer::Fail(500)).await;
    register(&app, "gone", &r.url, &["session.running", "session.ended"]).await;
    app.exercise("redo", json!({})).await;
    let id = running_session(&app, "bo", "redo").await;
    app.delete(&format!("/v1/sessions/{id}")).await;
    let failed = eventually_async(WITHIN, "both deliveries to fail", || async {
        let (_, d) = app.get("/v1/webhooks/gone/deliveries?status=failed").await;
        let list = d["deliveries"].as_array()?.clone();
        (list.len() == 2).then_some(list)
    })
    .await;
    assert!(failed.iter().all(|d| d["attempts"] == 1 && d["last_status"] == 500 && d["next_attempt_at"].is_null()));

    r.answer(Answer::Ok);
    let running = failed.iter().find(|d| d["event_type"] == "session.running").unwrap();
    let (status, after) = app
        .post(&format!("/v1/webhooks/gone/deliveries/{}/redeliver", running["id"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!((after["status"].clone(), after["attempts"].clone()), (json!("delivered"), json!(2)), "{after}");
    let got = r.events();
    assert_eq!(types_of(&got), ["session.running"]);
    assert_eq!(got[0]["id"], running["event_id"]);
    let (_, audit) = app.get("/v1/audit").await;
    assert!(audit.to_string().contains("webhook.redeliver"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_with_last_event_id_and_long_polls() {
    let app = spawn_app().await;
    app.exercise("pull", json!({})).await;
    let a = running_session(&app, "pa", "pull").await;
    app.delete(&format!("/v1/sessions/{a}")).await;

    // Long-poll: a page, then its `next` as the cursor.
    let (status, page) = app.get("/v1/events?after=0&limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(types_of(page["events"].as_array().unwrap()), ["session.running"]);
    let next = page["next"].as_i64().unwrap();
    let (_, rest) = app.get(&format!("/v1/events?after={next}")).await;
    assert_eq!(types_of(rest["events"].as_array().unwrap()), ["session.ended"]);
    let end = rest["next"].as_i64().unwrap();
    // Waiting: answers as soon as something happens.
    let waiter = {
        let (client, url) =
            (app.client.clone(), app.url(&format!("/v1/events?after={end}&wait=30&types=session.running")));
        tokio::spawn(
            async move { client.get(url).bearer_auth(TOKEN).send().await.unwrap().json::<Value>().await.unwrap() },
        )
    };
    let b = running_session(&app, "pb", "pull").await;
    let woke = tokio::time::timeout(WITHIN, waiter).await.expect("the long-poll answered").unwrap();
    assert_eq!(types_of(woke["events"].as_array().unwrap()), ["session.running"], "{woke}");
    assert_eq!(woke["events"][0]["data"]["session"], b.as_str());

    // Server-Sent Events: read two, reconnect with Last-Event-ID, get what came after.
    let sse = |last: Option<i64>| {
        let mut req = app.client.get(app.url("/v1/events")).bearer_auth(TOKEN).header("accept", "text/event-stream");
        if let Some(l) = last {
            req = req.header("last-event-id", l.to_string());
        }
        req.send()
    };
    let r = sse(None).await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = read_sse(r, 2).await;
    assert_eq!(first.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(), ["session.running", "session.ended"]);
    assert_eq!(first[0].2["id"], page["events"][0]["id"]);
    let resume_from = first[1].0;
    app.delete(&format!("/v1/sessions/{b}")).await;
    let resumed = read_sse(sse(Some(resume_from)).await.unwrap(), 2).await;
    assert_eq!(resumed.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(), ["session.running", "session.ended"]);
    assert_eq!(resumed[0].2["data"]["session"], b.as_str());
    assert!(resumed[0].0 > resume_from);
}

/// Reads `n` events (id, type, body) of a Server-Sent Events response.
async fn read_sse(mut r: reqwest::Response, n: usize) -> Vec<(i64, String, Value)> {
    let mut text = String::new();
    let mut out = vec![];
    let read = async {
        while out.len() < n {
            let chunk = r.chunk().await.unwrap().expect("the stream stays open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
                };
                if let (Some(id), Some(t), Some(data)) = (field("id"), field("event"), field("data")) {
                    out.push((id.parse().unwrap(), t, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    };
    tokio::time::timeout(WITHIN, read).await.expect("the events arrived");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_and_event_requests_are_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    let ok = json!({"url": "http://127.0.0.1:9/h", "secret": RECEIVER_SECRET, "events": ["check.completed"]});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (body, status, code) in [
        (with("url", json!("ftp://127.0.0.1/x")), 422, "invalid_webhook"),
        (with("url", json!("not a url")), 422, "invalid_webhook"),
        (with("secret", json!("short")), 422, "invalid_webhook"),
        (with("events", json!([])), 422, "invalid_webhook"),
        (with("events", json!(["check.done"])), 422, "invalid_webhook"),
        (with("extra", json!(1)), 422, "invalid_body"),
        (json!({"url": "http://127.0.0.1:9/h"}), 422, "invalid_body"),
    ] {
        let (s, v) = app.put("/v1/webhooks/site", body.clone()).await;
        assert_eq!((s, v["error"]["code"].as_str().unwrap_or_default()), (status, code), "{body}: {v}");
    }
    let (s, v) = app.put("/v1/webhooks/Bad%20Name", ok.clone()).await;
    assert_eq!((s, v["error"]["code"].clone()), (422, json!("invalid_webhook")), "{v}");
    let (_, list) = app.get("/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "nothing was created");

    for path in ["/v1/webhooks/none", "/v1/webhooks/none/deliveries"] {
        let (s, v) = app.get(path).await;
        assert_eq!((s, v["error"]["code"].clone()), (404, json!("webhook_not_found")), "{path}: {v}");
    }
    assert_eq!(app.delete("/v1/webhooks/none").await.0, 404);
    assert_eq!(app.put("/v1/webhooks/site", ok).await.0, 201);
    let (s, v) = app.post("/v1/webhooks/site/deliveries/dlv_nope/redeliver", json!({})).await;
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("delivery_not_found")), "{v}");
    let (s, v) = app.get("/v1/webhooks/site/deliveries?status=lost").await;
    assert_eq!((s, v["error"]["code"].clone()), (400, json!("invalid_query")), "{v}");

    for q in ["types=check.done", "after=-1", "after=x", "limit=x", "bogus=1"] {
        let (s, v) = app.get(&format!("/v1/events?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["error"]["code"].is_string(), "{q}: {v}");
    }
    let r =
        app.client.get(app.url("/v1/events")).bearer_auth(TOKEN).header("last-event-id", "abc").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (s, v) = app.get("/v1/sessions/00000000-0000-0000-0000-000000000000/checks/x").await;
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("session_not_found")), "{v}");
    assert_eq!(app.delete("/v1/webhooks/site").await.0, 204);
    assert_eq!(app.get("/v1/webhooks/site").await.0, 404);
}

/// Everything under `dir` (files of any kind) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let (path, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_learner_leaves_nothing_on_disk_in_the_database_or_on_the_engine() {
    let app = spawn_app().await;
    let r = EventReceiver::start(Answer::Ok).await;
    register(&app, "site", &r.url, &ALL).await;
    checked_exercise(&app, "gdpr-a").await;
    checked_exercise(&app, "gdpr-b").await;
    let (gone, kept) = ("erase-me-7f3a9c", "stays-2b81d0");
    // One ended session with a passing check, one live one, and another learner who stays.
    let ended = running_session(&app, gone, "gdpr-a").await;
    learner_writes(&session_container(&app.instance, &ended).unwrap(), "done", &format!("work of {gone}"));
    assert_eq!(app.post(&format!("/v1/sessions/{ended}/checks"), json!({})).await.1["passed"], true);
    app.delete(&format!("/v1/sessions/{ended}")).await;
    let live = running_session(&app, gone, "gdpr-b").await;
    let other = running_session(&app, kept, "gdpr-a").await;
    r.wait_for(WITHIN, "the events to be delivered", |e| e.len() >= 5).await;

    let (status, v) = app.delete(&format!("/v1/learners/{gone}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["learner"], gone);
    let removed = &v["removed"];
    assert_eq!(removed["stopped_sessions"], 1, "{v}");
    assert_eq!(removed["workspace_files"], 2, "{v}");
    assert_eq!(removed["records"]["sessions"], 2, "{v}");
    assert_eq!(removed["records"]["checks"], 1, "{v}");
    assert_eq!(removed["snapshots"], 1, "the passing check's snapshot: {v}");
    assert!(removed["records"]["events"].as_u64().unwrap() >= 5, "{v}");

    // The API knows them no more; the other learner is untouched.
    for id in [&ended, &live] {
        assert_eq!(app.get(&format!("/v1/sessions/{id}")).await.0, 404);
    }
    let (_, list) = app.get(&format!("/v1/sessions?learner={gone}")).await;
    assert_eq!(list["sessions"], json!([]));
    let (_, events) = app.get("/v1/events?after=0").await;
    assert!(!events.to_string().contains(gone), "{events}");
    assert!(events.to_string().contains(kept));
    assert_eq!(app.get(&format!("/v1/sessions/{other}")).await.1["state"], "running");
    let (_, audit) = app.get("/v1/audit").await;
    assert!(audit.to_string().contains("learner.erase") && !audit.to_string().contains(gone), "{audit}");

    // Nothing on disk (the database file and its log included) nor on the engine names them or
    // holds their files.
    let on_disk = files_containing(&app.data_dir, gone.as_bytes());
    assert!(on_disk.is_empty(), "still on disk: {on_disk:?}");
    assert!(files_containing(&app.data_dir, format!("work of {gone}").as_bytes()).is_empty());
    assert!(!files_containing(&app.data_dir, kept.as_bytes()).is_empty(), "the search would see a learner");
    let engine = docker(&["ps", "-a", "--format", "{{.Names}} {{.Labels}}"])
        + &docker(&["volume", "ls", "--format", "{{.Name}} {{.Labels}}"]);
    assert!(!engine.contains(gone), "{engine}");
    assert_eq!(app.containers().len(), 1, "only the other learner's sandbox");

    // Bad input changes nothing; erasing again finds nothing.
    let (s, v) = app.delete("/v1/learners/bad%20id").await;
    assert_eq!((s, v["error"]["code"].is_string()), (422, true), "{v}");
    let (s, v) = app.delete(&format!("/v1/learners/{gone}")).await;
    assert_eq!((s, v["removed"]["records"]["sessions"].clone()), (200, json!(0)), "{v}");
}

/// Found by the API fuzzer: an erasure while the learner's sandbox was still starting (or their
/// files were being read in a reader sandbox) found the workspace in use and answered 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_learner_whose_sandbox_is_starting_or_being_read_is_never_a_500() {
    let app = spawn_app().await;
    app.exercise("racy", json!({})).await;
    for round in 0..3 {
        let learner = format!("racer-{round}");
        let (s, v) = app.post("/v1/sessions", json!({"learner": learner, "exercise": "racy"})).await;
        assert!(s == 201 || s == 200, "{v}");
        let (files, person) = (format!("/v1/workspaces/{learner}/racy"), format!("/v1/learners/{learner}"));
        let reads = (0..2).map(|_| app.get(&files));
        let erase = app.delete(&person);
        let (erased, reads) = tokio::join!(erase, futures_util::future::join_all(reads));
        assert!(erased.0 == 200 || erased.0 == 409, "{erased:?}");
        assert!(reads.iter().all(|(s, _)| *s < 500), "{reads:?}");
        let done = eventually_async(WITHIN, "the erasure to go through", || async {
            let (s, v) = app.delete(&format!("/v1/learners/{learner}")).await;
            assert!(s == 200 || s == 409, "{s} {v}");
            (s == 200).then_some(v)
        })
        .await;
        assert_eq!(done["learner"], learner.as_str());
        let (_, list) = app.get(&format!("/v1/sessions?learner={learner}")).await;
        assert_eq!(list["sessions"], json!([]));
    }
    eventually(WITHIN, "no sandbox left", || app.containers().is_empty().then_some(())).await;
}
