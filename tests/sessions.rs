//! The session lifecycle as the web app sees it.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_created_found_touched_and_ended() {
    let app = spawn_app().await;
    app.exercise("hello", json!({})).await;

    let (status, s) = app.post("/v1/sessions", json!({"learner": "ada", "exercise": "hello"})).await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(s["state"], "running");
    assert_eq!(s["learner"], "ada");
    assert_eq!(s["exercise"], "hello");
    for field in ["created_at", "last_activity_at", "expires_at"] {
        assert!(chrono_like(&s[field]), "{field}: {s}");
    }
    let container = session_container(&app.instance, &id).expect("a container labelled with the session");
    assert_eq!(inspect(&container)["State"]["Running"], true);

    // The same learner and exercise again: the same session, 200.
    let (status, again) = app.post("/v1/sessions", json!({"learner": "ada", "exercise": "hello"})).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], s["id"]);

    let (status, got) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], s["id"]);

    // Listing with filters.
    app.session("bob", "hello").await;
    let (_, list) = app.get("/v1/sessions?learner=ada").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    let (_, list) = app.get("/v1/sessions?exercise=hello&state=running").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let (_, list) = app.get("/v1/sessions?state=stopped").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0);

    // Activity pushes the idle deadline.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, _) = app.post(&format!("/v1/sessions/{id}/activity"), json!({})).await;
    assert_eq!(status, 204);
    let (_, touched) = app.get(&format!("/v1/sessions/{id}")).await;
    assert!(touched["last_activity_at"].as_str() > s["last_activity_at"].as_str(), "{touched}");
    assert!(touched["expires_at"].as_str() > s["expires_at"].as_str(), "{touched}");

    // Ending it removes the container; ending it again is harmless.
    let (status, ended) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["state"], "stopped");
    assert!(ended["expires_at"].is_null());
    assert!(session_container(&app.instance, &id).is_none(), "the container is gone");
    let (status, ended) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, ended["state"].as_str()), (200, Some("stopped")));
    let (status, v) = app.post(&format!("/v1/sessions/{id}/activity"), json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_not_live")));

    // A new session after the end is a new one.
    let (status, next) = app.post("/v1/sessions", json!({"learner": "ada", "exercise": "hello"})).await;
    assert_eq!(status, 201);
    assert_ne!(next["id"], s["id"]);
}

fn chrono_like(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| s.len() >= 20 && s.contains('T') && s.ends_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_make_one_session_and_one_container() {
    let app = spawn_app().await;
    app.exercise("race", json!({})).await;
    let requests = (0..12).map(|_| app.post("/v1/sessions", json!({"learner": "racer", "exercise": "race"})));
    let results = futures_util::future::join_all(requests).await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(status, v)| {
            assert!(*status == 200 || *status == 201, "{status} {v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one session for all: {results:?}");
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1, "exactly one 201");
    assert_eq!(app.containers().len(), 1, "exactly one container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_files_come_back_in_the_next_session() {
    let app = spawn_app().await;
    app.exercise("persist", json!({})).await;
    let first = app.session("ada", "persist").await;
    let id = first["id"].as_str().unwrap();
    let c = session_container(&app.instance, id).unwrap();
    let (code, out) = sandbox_exec(
        &c,
        "echo 'print(42)' > /workspace/main.py && mkdir -p /workspace/src && echo x > /workspace/src/a",
    );
    assert_eq!(code, 0, "{out}");
    app.delete(&format!("/v1/sessions/{id}")).await;

    // Another learner does not see it; the same learner on the next session does.
    let other = app.session("bob", "persist").await;
    let oc = session_container(&app.instance, other["id"].as_str().unwrap()).unwrap();
    let (code, _) = sandbox_exec(&oc, "test -e /workspace/main.py");
    assert_ne!(code, 0, "workspaces are per learner");

    let second = app.session("ada", "persist").await;
    assert_ne!(second["id"], first["id"]);
    let c2 = session_container(&app.instance, second["id"].as_str().unwrap()).unwrap();
    assert_ne!(c2, c);
    let (code, out) = sandbox_exec(&c2, "cat /workspace/main.py /workspace/src/a");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "print(42)\nx\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_reaped_and_activity_keeps_them_alive() {
    let app = spawn_app_with(|s| s.idle_timeout = Duration::from_secs(3)).await;
    app.exercise("idle", json!({})).await;
    let idle = app.session("sleepy", "idle").await;
    let busy = app.session("busy", "idle").await;
    let (idle_id, busy_id) = (idle["id"].as_str().unwrap(), busy["id"].as_str().unwrap());

    // Keep one busy for longer than the idle timeout.
    for _ in 0..10 {
        let (status, _) = app.post(&format!("/v1/sessions/{busy_id}/activity"), json!({})).await;
        assert_eq!(status, 204);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The idle one is stopped within timeout + 15 s, its container removed.
    let reaped = app.wait_session(idle_id, Duration::from_secs(18), |v| v["state"] == "stopped").await;
    assert!(reaped["ended_at"].is_string());
    assert!(session_container(&app.instance, idle_id).is_none());
    let (_, b) = app.get(&format!("/v1/sessions/{busy_id}")).await;
    assert_eq!(b["state"], "running", "activity kept it alive past the idle timeout");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_sessions_reaped_total{reason=\"idle\"} 1"), "{metrics}");

    // The API kept answering while reaping went on.
    assert_eq!(app.get("/v1/exercises").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_their_maximum_lifetime_despite_activity() {
    let app = spawn_app_with(|s| s.max_lifetime = Duration::from_secs(3)).await;
    app.exercise("life", json!({})).await;
    let s = app.session("ada", "life").await;
    let id = s["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(18);
    loop {
        let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
        if v["state"] == "stopped" {
            assert!(
                v["failure_reason"].as_str().unwrap_or_default().contains("lifetime") || v["failure_reason"].is_null()
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reaped at its maximum lifetime: {v}");
        app.post(&format!("/v1/sessions/{id}/activity"), json!({})).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(session_container(&app.instance, &id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_are_removed_after_retention() {
    let app = spawn_app_with(|s| s.workspace_retention = Duration::from_secs(1)).await;
    app.exercise("keep", json!({})).await;
    let s = app.session("ada", "keep").await;
    let id = s["id"].as_str().unwrap();
    let c = session_container(&app.instance, id).unwrap();
    assert_eq!(sandbox_exec(&c, "echo mine > /workspace/f").0, 0);
    // While the session lives, its workspace is kept however old.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sandbox_exec(&c, "cat /workspace/f").1, "mine\n");
    app.delete(&format!("/v1/sessions/{id}")).await;

    let images = app.data_dir.join("workspaces");
    eventually(Duration::from_secs(15), "the workspace image to be deleted", || {
        let n = std::fs::read_dir(&images)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "ext4")).count())
            .unwrap_or(0);
        (n == 0).then_some(())
    })
    .await;
    let s = app.session("ada", "keep").await;
    let c = session_container(&app.instance, s["id"].as_str().unwrap()).unwrap();
    assert_ne!(sandbox_exec(&c, "test -e /workspace/f").0, 0, "a fresh workspace after retention");
}

/// The IDE cookie of a session, as a browser gets it from the session's `ide_url`.
async fn ide_cookie(session: &serde_json::Value) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.get(session["ide_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

/// `supervisorctl status` processes in a sandbox (a check waiting for the exercise's services).
fn status_polls(container: &str) -> usize {
    let script = r"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < $f 2>/dev/null; echo; done | grep -c '^[^ ]*python[^ ]* [^ ]*supervisorctl status'";
    sandbox_exec(container, script).1.trim().parse().unwrap_or(0)
}

/// Issue 15, part 2: a learner who stops their sandbox's supervisord and fires checks cannot keep
/// another learner's check from running. Their own session runs one check at a time (the rest
/// join it), holds at most one of the check slots, and the wait for supervisord counts against
/// the check's time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_who_stops_supervisord_and_floods_checks_does_not_block_other_learners() {
    // Two slots: before the fix, Ada's ten requests took both and Bob's check got 503 after 10 s.
    let app = spawn_app_with(|s| s.max_concurrent_checks = 2).await;
    const STUCK_SECS: u64 = 15;
    for slug in ["stuck", "stuck-too"] {
        let body = json!({"image": "exercise-runner/base:latest",
            "check": {"command": ["sh", "-c", "test -f done"], "timeout_secs": STUCK_SECS}});
        let (status, v) = app.put(&format!("/v1/exercises/{slug}"), body).await;
        assert!(status == 200 || status == 201, "{v}");
    }
    app.exercise("quick", json!({"check": {"command": ["sh", "-c", "echo fine"], "timeout_secs": 10}})).await;
    let a = app.session("ada", "stuck").await;
    let a2 = app.session("ada", "stuck-too").await;
    let b = app.session("bob", "quick").await;
    let (a_id, a2_id, b_id) =
        (a["id"].as_str().unwrap().to_string(), a2["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let cookie = ide_cookie(&a).await;
    let (ca, ca2) =
        (session_container(&app.instance, &a_id).unwrap(), session_container(&app.instance, a2_id).unwrap());

    // The attack, as the learner: stop supervisord in both of Ada's sandboxes.
    for c in [&ca, &ca2] {
        eventually(Duration::from_secs(30), "supervisord to write its pid file", || {
            (sandbox_exec(c, "test -s /run/supervisord.pid").0 == 0).then_some(())
        })
        .await;
        let (code, out) = sandbox_exec(c, "test \"$(id -u)\" != 0 && kill -STOP $(cat /run/supervisord.pid)");
        assert_eq!(code, 0, "{out}");
    }

    // Ten checks at once through the IDE's Check button.
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    let mut floods = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, url, cookie) = (client.clone(), app.url(&format!("/ide/{a_id}/_runner/check")), cookie.clone());
        floods.spawn(async move {
            let r = client.post(url).header("cookie", cookie).send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry_after, r.json::<serde_json::Value>().await.unwrap())
        });
    }
    // Ada's check is waiting on her stopped supervisord: it holds a slot now.
    eventually(Duration::from_secs(10), "Ada's check to poll supervisord", || (status_polls(&ca) > 0).then_some(()))
        .await;
    // A check in her other session waits for her share instead of taking the second slot.
    let other = app.client.post(app.url(&format!("/v1/sessions/{a2_id}/checks"))).bearer_auth(TOKEN).send();
    let other = tokio::spawn(other);
    tokio::task::yield_now().await;

    let b_started = std::time::Instant::now();
    let (status, check) = app.post(&format!("/v1/sessions/{b_id}/checks"), json!({})).await;
    assert_eq!(status, 201, "Bob's check runs despite Ada: {check}");
    assert_eq!((check["passed"].as_bool(), check["output"].as_str()), (Some(true), Some("fine\n")), "{check}");
    // Promptly: while Ada's stuck checks are still waiting on her supervisord, well under the
    // 10 s after which it used to be refused.
    assert!(b_started.elapsed() < Duration::from_secs(8), "Bob waited {:?}", b_started.elapsed());
    assert_eq!(floods.len(), 10);
    assert!(!other.is_finished(), "Ada's second session waits for her slot");
    assert_eq!(status_polls(&ca2), 0, "Ada's second check has no slot while her first runs");
    assert!(status_polls(&ca) <= 1, "one check in flight for Ada's session");

    // Ada's ten requests share one check, which fails within its own time limit.
    let mut ids = HashSet::new();
    while let Some(answer) = floods.join_next().await {
        let (status, retry_after, v) = answer.unwrap();
        match status {
            201 => {
                assert_eq!((v["passed"].as_bool(), v["timed_out"].as_bool()), (Some(false), Some(true)), "{v}");
                assert!(v["output"].as_str().unwrap().contains("supervisord did not answer"), "{v}");
                ids.insert(v["id"].as_str().unwrap().to_string());
            }
            409 | 429 => assert!(retry_after.is_some(), "a refusal says when to retry: {v}"),
            other => panic!("Ada's check answered {other}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "one check for the whole flood: {ids:?}");
    // Before the fix the wait for supervisord alone took 30 s, outside the check's limit.
    assert!(
        started.elapsed() < Duration::from_secs(STUCK_SECS + 13),
        "Ada's checks took {:?} with a {STUCK_SECS} s limit",
        started.elapsed()
    );
    let (_, list) = app.get(&format!("/v1/sessions/{a_id}/checks")).await;
    assert_eq!(list["checks"].as_array().unwrap().len(), 1, "{list}");

    // Ada's other session: refused while her first check held her slot (it waits 10 s at most),
    // or run after it; never alongside it.
    let r = other.await.unwrap().unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").is_some();
    let v: serde_json::Value = r.json().await.unwrap();
    match status {
        503 => assert!(v["error"]["code"] == "check_queue_full" && retry_after, "{v}"),
        201 => assert_eq!(v["timed_out"], true, "{v}"),
        other => panic!("Ada's second session's check answered {other}: {v}"),
    }
}

/// An operator drains the runner (new sessions 503 with Retry-After, live ones still served),
/// undrains it, stops every session of one exercise, and finds each action in the audit log and
/// on the sessions' events (issue 9, item 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drain_stop_an_exercises_sessions_and_every_action_is_audited() {
    let app = spawn_app().await;
    app.exercise("broken", json!({})).await;
    app.exercise("fine", json!({})).await;
    let first = app.session("learner-1", "broken").await;
    let other = app.session("learner-3", "fine").await;

    let (status, v) = app.post("/v1/runner/drain", json!({})).await;
    assert_eq!((status, &v["draining"]), (200, &json!(true)), "{v}");
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .bearer_auth(common::TOKEN)
        .json(&json!({"learner": "learner-2", "exercise": "broken"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some(), "a drained runner says when to retry");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "runner_draining", "{v}");
    // The learner who has a session keeps it, and it keeps running.
    let again = app.session("learner-1", "broken").await;
    assert_eq!(again["id"], first["id"]);
    let container = common::session_container(&app.instance, first["id"].as_str().unwrap()).expect("still there");
    assert_eq!(common::sandbox_exec(&container, "echo alive").1.trim(), "alive");

    let (status, v) = app.post("/v1/runner/undrain", json!({})).await;
    assert_eq!((status, &v["draining"]), (200, &json!(false)), "{v}");
    let second = app.session("learner-2", "broken").await;

    // A missing exercise is a 404 and changes nothing.
    assert_eq!(app.post("/v1/exercises/nope/stop-sessions", json!({})).await.0, 404);
    let (status, v) = app.post("/v1/exercises/broken/stop-sessions", json!({"reason": "broken publish"})).await;
    assert_eq!((status, &v["stopped"]), (200, &json!(2)), "{v}");
    for s in [&first, &second] {
        let (_, v) = app.get(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())).await;
        assert_eq!(v["state"], "stopped", "{v}");
        assert!(common::session_container(&app.instance, s["id"].as_str().unwrap()).is_none());
    }
    let (_, v) = app.get(&format!("/v1/sessions/{}", other["id"].as_str().unwrap())).await;
    assert_eq!(v["state"], "running", "another exercise's session is left alone: {v}");
    assert_eq!(app.delete(&format!("/v1/sessions/{}", other["id"].as_str().unwrap())).await.0, 200);

    let (status, v) = app.get("/v1/audit").await;
    assert_eq!(status, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["session.stop", "exercise.stop_sessions", "runner.undrain", "runner.drain"], "{v}");
    assert!(entries.iter().all(|e| e["actor"] == "api-token" && e["at"].is_string()), "{v}");
    assert_eq!(entries[1]["target"], "broken");
    assert_eq!(entries[1]["outcome"], "ok: 2 stopped");
    assert_eq!(entries[1]["detail"], "broken publish");
    assert_eq!(entries[0]["target"], other["id"]);

    let (_, v) = app.get(&format!("/v1/sessions/{}/events", first["id"].as_str().unwrap())).await;
    let kinds: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "stopped"], "{v}");
    assert_eq!(v["events"][1]["detail"], "broken publish");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_session_events_total{kind=\"stopped\"} 3"), "{metrics}");
    assert!(metrics.contains("runner_rejected_requests_total{reason=\"draining\"} 1"), "{metrics}");
}
