//! Usage figures as an operator reads them (issue 9): a session's memory, CPU, OOM kills and
//! workspace disk in `GET /v1/sessions/{id}/usage`, the top sandboxes, the host's capacity and
//! the per-exercise series of `/metrics`, against real sandboxes on the real engine.

mod common;

use std::time::{Duration, Instant};

use common::*;
use runner::domain::Runtime;
use serde_json::{json, Value};

const MIB: f64 = 1024.0 * 1024.0;

/// A runner sampling twice a second.
async fn sampling_app(runtime: Runtime) -> TestApp {
    spawn_app_with(|s| {
        s.runtime = runtime;
        s.usage_interval = Duration::from_millis(500);
    })
    .await
}

/// Polls a session's usage until `pred` holds (it gets `now`), or fails after `within`.
async fn usage_until(app: &TestApp, id: &str, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = app.get(&format!("/v1/sessions/{id}/usage")).await;
        assert_eq!(status, 200, "{v}");
        if !v["now"].is_null() && pred(&v["now"]) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sample taken after `t` (so it sees what the sandbox did before `t`).
fn sampled_after(now: &Value, t: chrono::DateTime<chrono::Utc>) -> bool {
    now["at"].as_str().and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok()).is_some_and(|at| at > t)
}

/// The value of one Prometheus series in `/metrics`, if present.
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An exercise on the base image (it has python3), one session, its container.
async fn base_session(app: &TestApp, slug: &str, limits: Value) -> (String, String) {
    let (status, v) = app
        .put(&format!("/v1/exercises/{slug}"), json!({"image": "exercise-runner/base:latest", "limits": limits}))
        .await;
    assert!(status == 200 || status == 201, "{status} {v}");
    let s = app.session("ada", slug).await;
    let id = s["id"].as_str().unwrap().to_string();
    (id.clone(), session_container(&app.instance, &id).unwrap())
}

/// 64 MiB held by a process shows as 64 MiB (±10 %) more working set; a process that goes over
/// the limit is OOM-killed and counted, in the session's figures and the exercise's series
/// (under runsc the kill takes the whole sandbox, and the count comes from the engine).
async fn held_memory_and_an_oom_kill_show(runtime: Runtime) {
    let app = sampling_app(runtime).await;
    let slug = format!("mem-{}", runtime.as_str());
    let (id, c) = base_session(&app, &slug, json!({"memory_mb": 256, "tmpfs_mb": 16})).await;
    let v = usage_until(&app, &id, Duration::from_secs(30), "a first sample", |_| true).await;
    assert_eq!(v["runtime"], runtime.as_str());
    assert_eq!(v["now"]["memory_limit_bytes"], 256 * 1024 * 1024, "{v}");

    // The interpreter starts first and waits, so the baseline includes it; then it allocates.
    start_memory_holder(&c).await;
    // Let the interpreter settle, then take the baseline from a sample after that.
    let settled = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let before =
        usage_until(&app, &id, Duration::from_secs(30), "a baseline sample", |n| sampled_after(n, settled)).await;
    let before = before["now"]["memory_working_set_bytes"].as_f64().unwrap();
    assert_eq!(sandbox_exec(&c, "touch /tmp/go").0, 0);
    eventually(Duration::from_secs(30), "the allocation", || {
        (sandbox_exec(&c, "test -f /tmp/held").0 == 0).then_some(())
    })
    .await;
    let held_at = chrono::Utc::now();
    let after =
        usage_until(&app, &id, Duration::from_secs(30), "a sample after the allocation", |n| sampled_after(n, held_at))
            .await;
    let grew = (after["now"]["memory_working_set_bytes"].as_f64().unwrap() - before) / MIB;
    assert!((57.6..=70.4).contains(&grew), "64 MiB held, the working set grew by {grew:.1} MiB ({runtime:?}): {after}");
    eprintln!("{runtime:?}: 64 MiB held → working set +{grew:.1} MiB");

    let (_, top) = app.get("/v1/usage/top?by=memory&limit=5").await;
    assert_eq!(top["sandboxes"][0]["session"], id.as_str(), "{top}");
    assert_eq!(top["sandboxes"][0]["exercise"], slug.as_str(), "{top}");

    // Over the limit: the kernel kills the allocator, the sandbox lives on.
    // Detached: under runsc the kill takes the sandbox and its exec with it, and a `docker exec`
    // into a sandbox that dies that way was seen to never return.
    docker(&["exec", "-d", &c, "python3", "-c", "b = bytearray(b'x') * (400 << 20)"]);
    let v =
        usage_until(&app, &id, Duration::from_secs(30), "the OOM kill", |n| n["oom_kills_total"].as_u64() >= Some(1))
            .await;
    if runtime == Runtime::Runc {
        assert!(v["now"]["running"].as_bool().unwrap(), "under runc only the allocator dies: {v}");
    }
    // Under runsc the host kernel kills the sandbox kernel, so the whole sandbox went down: the
    // engine's OOMKilled told the sampler; reconciliation starts it again.
    usage_until(&app, &id, Duration::from_secs(60), "the sandbox running again", |n| n["running"] == true).await;
    let series = format!("runner_sandbox_oom_events_total{{exercise=\"{slug}\"}}");
    let oom = metric(&app, &series).await;
    assert!(oom >= Some(1.0), "{series} = {oom:?}");
    app.delete(&format!("/v1/sessions/{id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_memory_and_an_oom_kill_show_under_runc() {
    held_memory_and_an_oom_kill_show(Runtime::Runc).await;
}

/// Under gVisor the cgroup holds the sandbox kernel (Sentry) and the gofer: the learner's
/// memory shows in it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_memory_and_an_oom_kill_show_under_runsc() {
    held_memory_and_an_oom_kill_show(Runtime::Runsc).await;
}

/// A CPU spin shows near the sandbox's quota and is throttled; the exercise's CPU series
/// counts it; the workspace's disk use follows what the learner writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_spin_shows_near_its_quota_and_workspace_writes_show_as_disk_used() {
    let app = sampling_app(Runtime::Runc).await;
    app.exercise("spin", json!({"limits": {"cpus": 0.5, "workspace_mb": 32}})).await;
    let s = app.session("grace", "spin").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    let v = usage_until(&app, &id, Duration::from_secs(30), "a first sample", |_| true).await;
    assert_eq!(v["now"]["cpu_limit_cores"], 0.5, "{v}");
    assert!(v["now"]["network_rx_bytes_total"].is_null(), "no network, no network figures: {v}");
    let quota = v["now"]["workspace_quota_bytes"].as_f64().expect("the loop workspace has a quota") / MIB;
    assert!((24.0..=32.0).contains(&quota), "a 32 MiB workspace: {quota:.1} MiB");
    let used_before = v["now"]["workspace_used_bytes"].as_f64().unwrap() / MIB;

    docker(&["exec", "-d", &c, "sh", "-c", "while :; do :; done"]);
    let v = usage_until(&app, &id, Duration::from_secs(30), "CPU near the quota, throttled", |n| {
        n["cpu_cores"].as_f64() >= Some(0.25) && n["cpu_throttled_periods_total"].as_u64() > Some(0)
    })
    .await;
    assert!(v["now"]["cpu_seconds_total"].as_f64().unwrap() > 0.0, "{v}");
    let (_, top) = app.get("/v1/usage/top?by=cpu&limit=1").await;
    assert_eq!(top["sandboxes"][0]["session"], id.as_str(), "{top}");
    assert_eq!(top["sandboxes"].as_array().unwrap().len(), 1);

    let cpu = metric(&app, "runner_sandbox_cpu_seconds_total{exercise=\"spin\"}").await;
    assert!(cpu > Some(0.0), "per-exercise CPU in /metrics: {cpu:?}");
    let live = metric(&app, "runner_sandboxes{exercise=\"spin\",kind=\"session\"}").await;
    assert_eq!(live, Some(1.0));
    assert!(metric(&app, "runner_sandbox_cpu_throttled_seconds_total{exercise=\"spin\"}").await > Some(0.0));
    let per_session = format!("runner_session_cpu_seconds_total{{session=\"{id}\",exercise=\"spin\"}}");
    assert_eq!(metric(&app, &per_session).await, None, "per-session series are off by default");

    let (code, out) = sandbox_exec(&c, "dd if=/dev/urandom of=/workspace/eight bs=1M count=8 && sync");
    assert_eq!(code, 0, "{out}");
    let written = chrono::Utc::now();
    let v = usage_until(&app, &id, Duration::from_secs(30), "the written file in the disk figure", |n| {
        sampled_after(n, written)
    })
    .await;
    let grew = v["now"]["workspace_used_bytes"].as_f64().unwrap() / MIB - used_before;
    assert!((7.5..=9.0).contains(&grew), "8 MiB written, workspace use grew by {grew:.2} MiB: {v}");
}

/// The routes' edges: auth, unknown sessions, bad queries, an ended session, the capacity view
/// and per-session series when they are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_routes_answer_like_the_other_session_routes_and_capacity_adds_up() {
    let app = spawn_app_with(|s| {
        s.usage_interval = Duration::from_millis(500);
        s.metrics_per_session = true;
        s.max_live_sessions = 7;
    })
    .await;
    let r = app.client.get(app.url("/v1/capacity")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for path in ["/v1/sessions/6f1d0c51-8b1c-4a4c-9d57-000000000000/usage", "/v1/sessions/nope/usage"] {
        let (status, v) = app.get(path).await;
        assert_eq!((status, v["error"]["code"].as_str()), (404, Some("session_not_found")), "{path}: {v}");
    }
    let (status, v) = app.get("/v1/usage/top?by=disk").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{v}");
    let (status, v) = app.get("/v1/usage/top?sort=cpu").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{v}");

    app.exercise("edges", json!({"limits": {"memory_mb": 96, "cpus": 0.5}})).await;
    let s = app.session("lin", "edges").await;
    let id = s["id"].as_str().unwrap().to_string();
    usage_until(&app, &id, Duration::from_secs(30), "a first sample", |_| true).await;

    let (status, cap) = app.get("/v1/capacity").await;
    assert_eq!(status, 200, "{cap}");
    assert_eq!(cap["sessions"], json!({"live": 1, "max": 7, "pooled": 0}));
    assert_eq!(cap["memory"]["sessions_bytes"], 96 * 1024 * 1024);
    assert!(cap["memory"]["host_total_bytes"].as_u64() > Some(1 << 30), "{cap}");
    assert!(cap["memory"]["host_available_bytes"].as_u64() > Some(0), "{cap}");
    assert_eq!(cap["cpu"]["committed_cores"], 0.5);
    assert!(cap["disk"]["free_bytes"].as_u64() > Some(0), "{cap}");
    assert_eq!(cap["start_slots"], json!({"in_use": 0, "total": 4}));
    assert_eq!(cap["builds"]["queued"], 0);

    let (_, ex) = app.get("/v1/usage/exercises").await;
    assert_eq!(ex["exercises"]["edges"]["sessions"], 1, "{ex}");
    assert_eq!(ex["exercises"]["edges"]["memory_limit_bytes"], 96 * 1024 * 1024, "{ex}");

    let limit =
        metric(&app, &format!("runner_session_memory_limit_bytes{{session=\"{id}\",exercise=\"edges\"}}")).await;
    assert_eq!(limit, Some(96.0 * MIB), "per-session series when RUNNER_METRICS_PER_SESSION is on");
    assert_eq!(metric(&app, "runner_capacity_sessions_max").await, Some(7.0));
    assert_eq!(metric(&app, "runner_capacity_memory_committed_bytes").await, Some(96.0 * MIB));
    assert!(metric(&app, "runner_usage_rounds_total").await > Some(0.0));

    // Ended: the record is there, its figures and history are gone from memory.
    app.delete(&format!("/v1/sessions/{id}")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = app.get(&format!("/v1/sessions/{id}/usage")).await;
        assert_eq!(status, 200, "{v}");
        if v["now"].is_null() {
            assert_eq!(v["state"], "stopped", "{v}");
            assert_eq!(v["history"], json!([]), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the ended session's figures were not dropped: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = metric(&app, &format!("runner_session_memory_limit_bytes{{session=\"{id}\",exercise=\"edges\"}}")).await;
    assert_eq!(gone, None, "an ended session's series stop");
}
