//! The same lifecycle on PostgreSQL, the production database (one code path with SQLite).
//! Needs RUNNER_TEST_POSTGRES_URL, which `scripts/test` provides; without it these tests fail.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

/// A fresh database for one test on the server of RUNNER_TEST_POSTGRES_URL.
async fn fresh_database(instance: &str) -> String {
    let admin = std::env::var("RUNNER_TEST_POSTGRES_URL")
        .expect("RUNNER_TEST_POSTGRES_URL is not set: run ./scripts/test (scripts/test-postgres.sh starts PostgreSQL)");
    let name = format!("runner_test_{}", instance.replace('-', "_"));
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connecting to PostgreSQL");
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

async fn spawn_pg_app(configure: impl FnOnce(&mut runner::Settings)) -> (TestApp, String) {
    let (instance, tmp) = new_instance();
    let url = fresh_database(&instance).await;
    let mut settings = test_settings(tmp.path(), &instance);
    settings.database_url = runner::config::Secret::new(url.clone());
    configure(&mut settings);
    let mut app = start(settings).await;
    app.adopt_dir(tmp);
    (app, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lifecycle_works_on_postgresql() {
    require_docker();
    let (app, _) = spawn_pg_app(|s| s.idle_timeout = Duration::from_secs(3)).await;
    let (s, v) = app.get("/readyz").await;
    assert_eq!(s, 200, "{v}");
    app.exercise("pg", json!({"limits": {"memory_mb": 100}})).await;
    let (status, _) = app.put("/v1/exercises/pg", json!({"image": IMAGE, "title": "again"})).await;
    assert_eq!(status, 200);

    let results = futures_util::future::join_all(
        (0..8).map(|_| app.post("/v1/sessions", json!({"learner": "ada", "exercise": "pg"}))),
    )
    .await;
    let ids: HashSet<_> = results.iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(app.containers().len(), 1);
    let id = ids.into_iter().next().unwrap();

    let (status, _) = app.post(&format!("/v1/sessions/{id}/activity"), json!({})).await;
    assert_eq!(status, 204);
    let (_, list) = app.get("/v1/sessions?learner=ada&state=running").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);

    let c = session_container(&app.instance, &id).unwrap();
    assert_eq!(sandbox_exec(&c, "echo pg > /workspace/f").0, 0);
    let (status, v) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")));

    let next = app.session("ada", "pg").await;
    let c = session_container(&app.instance, next["id"].as_str().unwrap()).unwrap();
    assert_eq!(sandbox_exec(&c, "cat /workspace/f").1, "pg\n");
    // Reaped when idle.
    app.wait_session(next["id"].as_str().unwrap(), Duration::from_secs(18), |v| v["state"] == "stopped").await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_sessions{state=\"stopped\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_on_postgresql_adopts_its_sandboxes() {
    require_docker();
    let (mut app, url) = spawn_pg_app(|_| {}).await;
    app.exercise("pg-restart", json!({})).await;
    let s = app.session("ada", "pg-restart").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    app.stop_server().await;

    let mut settings = test_settings(&app.data_dir, &app.instance);
    settings.database_url = runner::config::Secret::new(url);
    let again = start(settings).await;
    let (_, v) = again.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running");
    assert_eq!(session_container(&app.instance, &id).as_deref(), Some(c.as_str()));
    drop(again);
}

/// Reconciliation rounds a runner has completed, from its /metrics.
async fn reconcile_rounds(app: &TestApp) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("runner_reconcile_rounds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Two runner replicas on one PostgreSQL database and one Docker host (sharing the instance name
/// and data directory, as a highly available deployment does): starts through both make one
/// session and one sandbox per learner, neither replica's reconciler restarts, duplicates or
/// removes what the other started, and a session started through one ends through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgresql_share_sessions_without_duplicates() {
    require_docker();
    let fast = Duration::from_millis(250);
    let (a, url) = spawn_pg_app(|s| s.reconcile_interval = fast).await;
    let mut settings = test_settings(&a.data_dir, &a.instance);
    settings.database_url = runner::config::Secret::new(url);
    settings.reconcile_interval = fast;
    let b = start(settings).await;
    let replica = |i: usize| if i.is_multiple_of(2) { &a } else { &b };
    a.exercise("pg-ha", json!({})).await;

    // The same learner's start, twelve times at once through both replicas; and six learners.
    let same = futures_util::future::join_all(
        (0..12).map(|i| replica(i).post("/v1/sessions", json!({"learner": "ada", "exercise": "pg-ha"}))),
    )
    .await;
    let ids: HashSet<String> = same.iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{same:?}");
    assert_eq!(same.iter().filter(|(s, _)| *s == 201).count(), 1, "one create, the rest find it: {same:?}");
    let ada = ids.into_iter().next().unwrap();
    let others = futures_util::future::join_all(
        (0..6).map(|i| replica(i).post("/v1/sessions", json!({"learner": format!("l{i}"), "exercise": "pg-ha"}))),
    )
    .await;
    let mut all = vec![ada.clone()];
    all.extend(others.iter().map(|(s, v)| {
        assert_eq!(*s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }));
    for id in &all {
        b.wait_session(id, Duration::from_secs(30), |v| v["state"] == "running").await;
    }
    let started: Vec<(String, String)> = all
        .iter()
        .map(|id| {
            let c = session_container(&a.instance, id).unwrap_or_else(|| panic!("no sandbox for {id}"));
            let at = inspect(&c)["State"]["StartedAt"].as_str().unwrap().to_string();
            (c, at)
        })
        .collect();
    assert_eq!(a.containers().len(), all.len(), "one sandbox per session");

    // Both reconcilers run several rounds over all of it: nothing moves.
    let (ra, rb) = (reconcile_rounds(&a).await, reconcile_rounds(&b).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reconcile_rounds(&a).await < ra + 4 || reconcile_rounds(&b).await < rb + 4 {
        assert!(std::time::Instant::now() < deadline, "the reconcilers stopped running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (c, at) in &started {
        assert_eq!(inspect(c)["State"]["StartedAt"].as_str(), Some(at.as_str()), "{c} was restarted");
    }
    assert_eq!(a.containers().len(), all.len(), "no sandbox duplicated or removed");

    // Ended through the replica that did not start it; the other one's view agrees.
    let (status, v) = b.delete(&format!("/v1/sessions/{ada}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    assert_eq!(a.get(&format!("/v1/sessions/{ada}")).await.1["state"], "stopped");
    assert!(session_container(&a.instance, &ada).is_none());
    assert_eq!(a.containers().len(), all.len() - 1);
    drop(b);
}

/// Concurrent PUTs of one exercise or app never fail and never lose a write, on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_definition_neither_fail_nor_lose_writes_on_postgresql() {
    require_docker();
    let (app, _) = spawn_pg_app(|_| {}).await;
    concurrent_puts_neither_fail_nor_lose_writes(&app).await;
}

/// Two replicas on one PostgreSQL share one warm pool: learners claiming through both at once
/// never get the same sandbox, and the pool settles at its size (no doubled fill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_share_a_warm_pool_without_double_claims() {
    require_docker();
    // What is under test is two claimers on one database, not this shared machine's free memory
    // (under a loaded run it dips below the reserve and a pooled sandbox goes first, rightly).
    let no_reserve = |s: &mut runner::Settings| s.pool_memory_reserve_mb = 0;
    let (a, url) = spawn_pg_app(no_reserve).await;
    let mut settings = test_settings(&a.data_dir, &a.instance);
    settings.database_url = runner::config::Secret::new(url.clone());
    no_reserve(&mut settings);
    let b = start(settings).await;
    a.exercise("pg-pool", json!({"pool": {"min": 4, "max": 4}})).await;
    let pooled = || -> HashSet<String> { pooled_containers(&a.instance).into_iter().collect() };
    pool_settled(&a, 4).await;
    // A sandbox trimmed from an overfill (two replicas filling at one instant) is removed after its row.
    let ready = eventually(Duration::from_secs(30), "four pooled sandboxes", || {
        let now = pooled();
        (now.len() == 4).then_some(now)
    })
    .await;

    let replica = |i: usize| if i.is_multiple_of(2) { &a } else { &b };
    let answers = futures_util::future::join_all(
        (0..10).map(|i| replica(i).post("/v1/sessions", json!({"learner": format!("p{i}"), "exercise": "pg-pool"}))),
    )
    .await;
    let mut containers = HashSet::new();
    for (status, v) in &answers {
        assert_eq!(*status, 201, "{v}");
        let c = container_in_db(&url, v["id"].as_str().unwrap()).await;
        assert!(containers.insert(c), "a sandbox handed to two learners: {answers:?}");
    }
    if containers.intersection(&ready).count() != 4 {
        let discarded = |m: Value| {
            m.as_str()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("runner_pool_discarded_total"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        panic!(
            "the four pooled sandboxes, each to one learner: {} of them; pools {:?} / {:?}; discarded {} / {}",
            containers.intersection(&ready).count(),
            a.get("/v1/pools").await.1,
            b.get("/v1/pools").await.1,
            discarded(a.get("/metrics").await.1),
            discarded(b.get("/metrics").await.1),
        );
    }
    pool_settled(&a, 4).await;
    drop(b);
}

async fn pool_settled(app: &TestApp, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = app.get("/v1/pools").await;
        let p = &v["pools"][0];
        if p["ready"] == n && p["starting"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "pool not settled at {n}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas writing events at once on PostgreSQL: every event numbered without a gap, and
/// their one webhook told each of them, in order (one replica at a time holds its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgresql_tell_one_webhook_every_event_in_order() {
    require_docker();
    let quick = |s: &mut runner::Settings| s.events.webhook_max_backoff = Duration::from_secs(1);
    let (a, url) = spawn_pg_app(quick).await;
    let mut settings = test_settings(&a.data_dir, &a.instance);
    settings.database_url = runner::config::Secret::new(url);
    quick(&mut settings);
    let b = start(settings).await;
    let replica = |i: usize| if i.is_multiple_of(2) { &a } else { &b };
    a.exercise("pg-told", json!({})).await;
    let receiver = EventReceiver::start(Answer::Ok).await;
    let hook = json!({"url": receiver.url, "secret": RECEIVER_SECRET, "events": ["session.running", "session.ended"]});
    assert_eq!(b.put("/v1/webhooks/site", hook).await.0, 201);

    let created = futures_util::future::join_all(
        (0..6).map(|i| replica(i).post("/v1/sessions", json!({"learner": format!("p{i}"), "exercise": "pg-told"}))),
    )
    .await;
    let ids: Vec<String> = created.iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    for id in &ids {
        a.wait_session(id, Duration::from_secs(30), |v| v["state"] == "running").await;
    }
    let ended = futures_util::future::join_all(
        ids.iter().enumerate().map(|(i, id)| async move { replica(i + 1).delete(&format!("/v1/sessions/{id}")).await }),
    )
    .await;
    assert!(ended.iter().all(|(s, _)| *s == 200), "{ended:?}");

    let (_, page) = b.get("/v1/events?after=0").await;
    let events = page["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 12, "{page}");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (seqs[0]..seqs[0] + 12).collect::<Vec<_>>(), "numbered without a gap");
    let got = receiver.wait_for(Duration::from_secs(30), "all twelve", |e| e.len() >= 12).await;
    let order = |v: &[serde_json::Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(order(&got), order(&events), "each event once, in the order of its seq");
    for id in &ids {
        let mine: Vec<String> =
            got.iter().filter(|e| e["data"]["session"] == id.as_str()).map(|e| e["type"].to_string()).collect();
        assert_eq!(mine, ["\"session.running\"", "\"session.ended\""], "{id}");
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_passing_checks_and_resets_work_on_postgresql() {
    let (app, _) = spawn_pg_app(|_| {}).await;
    app.exercise("snap", json!({"check": {"command": ["sh", "-c", "grep -qx 42 answer.txt"], "timeout_secs": 10}}))
        .await;
    let s = app.session("ada", "snap").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    learner_writes(&c, "/workspace/answer.txt", "42\n");
    let (status, check) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, check["passed"].as_bool()), (201, Some(true)), "{check}");
    let path = format!("/v1/sessions/{id}/checks/{}/snapshot", check["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.client.get(app.url(&path)).bearer_auth(TOKEN).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot within 20 s: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, reset) = app.post("/v1/workspaces/ada/snap/reset", json!({})).await;
    assert_eq!(status, 200, "{reset}");
    let (_, list) = app.get("/v1/workspaces/ada/snap/snapshots").await;
    let reasons: Vec<&str> =
        list["snapshots"].as_array().unwrap().iter().map(|s| s["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["reset", "check_passed"], "{list}");
    assert_eq!(list["snapshots"][0]["sha256"], list["snapshots"][1]["sha256"], "the same files, one blob");
}

/// One-shot runs on PostgreSQL: recorded, read at their URL, listed by learner, erased with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_runs_are_kept_listed_and_erased_on_postgresql() {
    require_docker();
    let (app, _) = spawn_pg_app(|_| {}).await;
    let runtime = json!({"image": "exercise-runner/base:latest", "run": ["sh", "main.sh"]});
    assert_eq!(app.put("/v1/runtimes/sh", runtime).await.0, 201);
    let body = json!({"runtime": "sh", "learner": "grace", "files": [{"path": "main.sh", "content": "echo pg"}],
        "tests": [{"expected_output": "pg"}]});
    let (status, v) = app.post("/v1/runs", body.clone()).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    let mut body = body;
    body["wait"] = json!(false);
    let (status, queued) = app.post("/v1/runs", body).await;
    assert_eq!(status, 202, "{queued}");
    let url = queued["url"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = app.get(url).await;
        if v["state"] == "finished" {
            assert_eq!(v["status"], "accepted", "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/v1/runs?learner=grace").await.1["runs"].as_array().unwrap().len(), 2);
    let (status, erased) = app.delete("/v1/learners/grace").await;
    assert_eq!((status, erased["removed"]["records"]["runs"].as_u64()), (200, Some(2)), "{erased}");
    assert_eq!(app.get(url).await.0, 404);
}
