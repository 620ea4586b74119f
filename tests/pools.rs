//! Warm pools against the real engine: claims under concurrency, a dead pooled sandbox replaced,
//! capacity pressure, a publish draining the old version, and a claimed workspace that stays the
//! learner's. (A pool surviving `kill -9` of the runner is in tests/lifecycle.rs.)

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use serde_json::{json, Value};

async fn container_of(app: &TestApp, session: &str) -> String {
    container_in_db(&sqlite_url(&app.data_dir), session).await
}

async fn pool_of(app: &TestApp, exercise: &str) -> Value {
    let (s, v) = app.get("/v1/pools").await;
    assert_eq!(s, 200, "{v}");
    v["pools"].as_array().unwrap().iter().find(|p| p["exercise"] == exercise).cloned().unwrap_or(Value::Null)
}

async fn wait_ready(app: &TestApp, exercise: &str, n: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = pool_of(app, exercise).await;
        if p["ready"] == n && p["starting"] == 0 {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "the pool of {exercise} did not reach {n} ready: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(app: &TestApp, line_start: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_learners_at_once_on_a_pool_of_five_get_five_pooled_and_fifteen_cold_all_distinct() {
    let app = spawn_app_with(|s| {
        s.max_concurrent_starts = 4;
        s.start_queue_timeout = Duration::from_secs(120);
    })
    .await;
    let v = app.exercise("pooled", json!({"pool": {"min": 5, "max": 5}})).await;
    assert_eq!(v["pool"], json!({"min": 5, "max": 5}), "{v}");
    let pool = wait_ready(&app, "pooled", 5).await;
    assert_eq!(pool["target"], 5, "{pool}");
    let ready: HashSet<String> = pooled_containers(&app.instance).into_iter().collect();
    assert_eq!(ready.len(), 5);

    let creates = (0..20).map(|i| {
        let app = &app;
        async move { app.post("/v1/sessions", json!({"learner": format!("l{i}"), "exercise": "pooled"})).await }
    });
    let answers = futures_util::future::join_all(creates).await;
    let mut containers = HashSet::new();
    let mut from_pool = 0;
    for (status, v) in &answers {
        assert_eq!(*status, 201, "{v}");
        assert_eq!(v["state"], "running", "{v}");
        let c = container_of(&app, v["id"].as_str().unwrap()).await;
        from_pool += ready.contains(&c) as usize;
        assert!(containers.insert(c), "two learners got the same sandbox: {answers:?}");
    }
    assert_eq!(from_pool, 5, "the five pooled sandboxes went to five learners, the rest started cold");
    assert_eq!(metric(&app, "runner_pool_claims_total{exercise=\"pooled\",outcome=\"hit\"}").await, 5.0);
    assert_eq!(metric(&app, "runner_pool_claims_total{exercise=\"pooled\",outcome=\"miss\"}").await, 15.0);
    // The pool is refilled for the next learners, with new sandboxes.
    wait_ready(&app, "pooled", 5).await;
    let refilled: HashSet<String> =
        pooled_containers(&app.instance).into_iter().filter(|c| !ready.contains(c)).collect();
    assert!(refilled.len() >= 5, "five new pooled sandboxes: {refilled:?}");
    assert!(metric(&app, "runner_pool_claim_duration_seconds_count{exercise=\"pooled\"}").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_workspace_is_the_learners_and_comes_back_in_their_next_session() {
    let app = spawn_app().await;
    app.exercise("keep", json!({"pool": {"min": 1, "max": 1}})).await;
    wait_ready(&app, "keep", 1).await;
    let pooled = pooled_containers(&app.instance);
    let s = app.session("ada", "keep").await;
    let id = s["id"].as_str().unwrap();
    let container = container_of(&app, id).await;
    assert_eq!(vec![container.clone()], pooled, "ada got the pooled sandbox");
    learner_writes(&container, "/workspace/notes.txt", "mine\n");
    let (st, _) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(st, 200);
    assert!(!containers_of(&app.instance).contains(&container), "the ended session's sandbox is gone");

    // Ada comes back: her own files (a cold start on her workspace), not a fresh pooled sandbox.
    wait_ready(&app, "keep", 1).await;
    let again = app.session("ada", "keep").await;
    let again_container = container_of(&app, again["id"].as_str().unwrap()).await;
    assert!(
        !pooled_containers(&app.instance).contains(&again_container),
        "a returning learner is not served from the pool"
    );
    let (code, out) = sandbox_exec(&again_container, "cat /workspace/notes.txt");
    assert_eq!((code, out.trim()), (0, "mine"));
    assert_eq!(metric(&app, "runner_pool_claims_total{exercise=\"keep\",outcome=\"returning\"}").await, 1.0);
    // And another learner does get the pool's fresh workspace, without Ada's file.
    let bob = app.session("bob", "keep").await;
    let bob_container = container_of(&app, bob["id"].as_str().unwrap()).await;
    let (code, _) = sandbox_exec(&bob_container, "test ! -e /workspace/notes.txt");
    assert_eq!(code, 0, "bob's pooled workspace is fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_sandbox_that_died_is_replaced_not_handed_out() {
    let app = spawn_app().await;
    app.exercise("fragile", json!({"pool": {"min": 1, "max": 1}})).await;
    wait_ready(&app, "fragile", 1).await;
    let dead = pooled_containers(&app.instance).pop().unwrap();
    docker(&["kill", &dead]);
    let replacement = eventually(Duration::from_secs(30), "a new pooled sandbox", || {
        let now = pooled_containers(&app.instance);
        (now.len() == 1 && now[0] != dead).then(|| now[0].clone())
    })
    .await;
    wait_ready(&app, "fragile", 1).await;
    let s = app.session("cy", "fragile").await;
    assert_eq!(container_of(&app, s["id"].as_str().unwrap()).await, replacement);
    assert_eq!(inspect(&replacement)["State"]["Running"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_session_cap_pooled_sandboxes_make_way_for_learners_before_anyone_is_refused() {
    let app = spawn_app_with(|s| s.max_live_sessions = 3).await;
    app.exercise("warm", json!({"pool": {"min": 3, "max": 3}})).await;
    app.exercise("cold", json!({})).await;
    wait_ready(&app, "warm", 3).await;
    let (_, cap) = app.get("/v1/capacity").await;
    assert_eq!((cap["sessions"]["live"].as_u64(), cap["sessions"]["pooled"].as_u64()), (Some(0), Some(3)), "{cap}");
    for learner in ["a", "b", "c"] {
        let (status, v) = app.post("/v1/sessions", json!({"learner": learner, "exercise": "cold"})).await;
        assert_eq!(status, 201, "{learner}: {v}");
    }
    let (status, v) = app.post("/v1/sessions", json!({"learner": "d", "exercise": "cold"})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "session_capacity", "{v}");
    assert!(pooled_containers(&app.instance).is_empty(), "the pool gave its sandboxes up");
    let p = pool_of(&app, "warm").await;
    assert_eq!((p["ready"].as_u64(), p["starting"].as_u64()), (Some(0), Some(0)), "no refill past the cap: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_new_version_drains_the_old_versions_pool() {
    let app = spawn_app().await;
    let manifest =
        "slug = \"ver\"\ntitle = \"V\"\ncheck = [\"sh\", \"/opt/exercise/tests/check.sh\"]\n[pool]\nmin = 2\nmax = 2\n";
    let (s, b) = app.submit_build("ver", quick_exercise("ver", &[("exercise.toml", manifest)])).await;
    assert_eq!(s, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let (_, ex) = app.get("/v1/exercises/ver").await;
    assert_eq!(ex["pool"], json!({"min": 2, "max": 2}), "the manifest's pool: {ex}");
    wait_ready(&app, "ver", 2).await;
    let old: HashSet<String> = pooled_containers(&app.instance).into_iter().collect();
    let v1_image = ex["image"].as_str().unwrap().to_string();

    let (s, b) = app
        .submit_build("ver", quick_exercise("ver", &[("exercise.toml", manifest), ("exercise/answer.txt", "v2\n")]))
        .await;
    assert_eq!(s, 202, "{b}");
    let b = app.wait_build(b["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let (_, ex) = app.get("/v1/exercises/ver").await;
    let v2_image = ex["image"].as_str().unwrap().to_string();
    assert_ne!(v1_image, v2_image);
    eventually(Duration::from_secs(60), "the pool holds only the new version", || {
        // One listing (id and image together): a container removed between two calls is no error.
        let listing = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=exercise-runner.instance={}", app.instance),
            "--filter",
            "label=exercise-runner.pool",
            "--format",
            "{{.ID}} {{.Image}}",
        ]);
        let now: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once(' ')).collect();
        (now.len() == 2 && now.iter().all(|(c, image)| !old.contains(*c) && *image == v2_image)).then_some(())
    })
    .await;
    wait_ready(&app, "ver", 2).await;
    let s = app.session("dee", "ver").await;
    assert_eq!(s["image"], v2_image.as_str());
    let container = container_of(&app, s["id"].as_str().unwrap()).await;
    assert_eq!(inspect(&container)["Config"]["Image"], v2_image.as_str(), "the learner's sandbox runs the new version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_beyond_the_operators_cap_or_upside_down_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|s| s.pool_max_per_exercise = 4).await;
    for (body, code) in [
        (json!({"image": IMAGE, "pool": {"min": 1, "max": 5}}), "pool_exceeds_cap"),
        (json!({"image": IMAGE, "pool": {"min": 3, "max": 2}}), "invalid_pool"),
        (json!({"image": IMAGE, "pool": {"min": 1, "max": 2, "size": 3}}), "invalid_body"),
    ] {
        let (status, v) = app.put("/v1/exercises/capped", body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (422, Some(code)), "{v}");
    }
    let (status, _) = app.get("/v1/exercises/capped").await;
    assert_eq!(status, 404, "nothing was written");
}
