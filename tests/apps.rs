//! The course web app as a managed image: definitions, deploys with zero failed requests,
//! migrations once, failed deploys that change nothing, rollbacks, restart limits, restarts of
//! the runner, notifications, one-off commands, the CLI, and secrets never shown.
//! Needs the test registry and the sample app (scripts/test sets RUNNER_TEST_REGISTRY).

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "top-secret-key-base-4242";
const REGISTRY_PASSWORD: &str = "deployer-secret-42";
const HOST: &str = "www.sample.test";
const DEPLOY_DEADLINE: Duration = Duration::from_secs(180);

fn registry() -> String {
    std::env::var("RUNNER_TEST_REGISTRY")
        .expect("RUNNER_TEST_REGISTRY is not set: run ./scripts/test (scripts/test-registry.sh starts the registry)")
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A webhook receiver on loopback that records what it gets, checking signatures.
async fn receiver() -> (String, Received) {
    webhook_receiver(b"hook-secret-for-tests").await
}

fn definition(hook: &str, crash: bool) -> Value {
    let worker = if crash { json!(["sh", "-c", "sleep 2; exit 3"]) } else { json!(["/app/worker"]) };
    json!({
        "image": format!("{}/sample/web", registry()),
        "host": HOST,
        "env": {"RAILS_ENV": "production"},
        "secrets": {"SECRET_KEY_BASE": SECRET},
        "release": ["/app/migrate"],
        "writable": ["/tmp", "/var/tmp"],
        "volumes": {"data": "/data"},
        "registry": {"username": "deployer", "password": REGISTRY_PASSWORD},
        "notifications": [
            {"url": hook, "format": "json", "secret": "hook-secret-for-tests"},
            {"url": "http://127.0.0.1:9/dead-receiver", "format": "slack"}
        ],
        "services": {
            "web": {"command": ["/app/web"], "port": 8080, "replicas": 2,
                    "health": {"path": "/up", "timeout_secs": 10}, "restart": {"max": 3, "within_secs": 30}},
            "worker": {"command": worker, "restart": {"max": 2, "within_secs": 60}}
        }
    })
}

async fn spawn_with_ingress() -> (TestApp, SocketAddr) {
    let ingress = free_addr();
    let app = spawn_app_with(move |s| s.ingress_listen = Some(ingress)).await;
    (app, ingress)
}

async fn deploy(app: &TestApp, name: &str, version: &str) -> Value {
    let (status, d) = app.post(&format!("/v1/apps/{name}/deploys"), json!({"version": version})).await;
    assert_eq!(status, 202, "{d}");
    wait_deploy(app, d["id"].as_str().unwrap()).await
}

async fn wait_deploy(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let (_, d) = app.get(&format!("/v1/deploys/{id}")).await;
        if d["state"] != "running" {
            return d;
        }
        assert!(Instant::now() < deadline, "deploy still running: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn page(ingress: SocketAddr) -> Result<String, String> {
    let r = reqwest::Client::new()
        .get(format!("http://{ingress}/"))
        .header("host", HOST)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    r.text().await.map_err(|e| e.to_string())
}

/// A client asking the ingress for the page in a loop, from now until stopped; it returns how
/// many pages it got and its failures.
type Hammer = tokio::task::JoinHandle<(usize, Vec<String>)>;

fn hammer(ingress: SocketAddr) -> (Arc<AtomicBool>, Hammer) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let client = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !s.load(Ordering::SeqCst) {
            match page(ingress).await {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    (stop, client)
}

/// Stops the client once the ingress serves `expect` (the switch is done).
async fn stop_hammer(ingress: SocketAddr, stop: Arc<AtomicBool>, client: Hammer, expect: &str) -> (usize, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while page(ingress).await.as_deref() != Ok(expect) {
        assert!(Instant::now() < deadline, "the ingress never served {expect}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap()
}

async fn logs_of(app: &TestApp, id: &str) -> String {
    app.client
        .get(app.url(&format!("/v1/deploys/{id}/logs")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn run(app: &TestApp, name: &str, command: &[&str]) -> String {
    let r = app
        .client
        .post(app.url(&format!("/v1/apps/{name}/commands")))
        .bearer_auth(TOKEN)
        .json(&json!({"command": command}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The containers of one service of the test instance's apps: running ones, or all with `all`.
fn service_containers(instance: &str, service: &str, all: bool) -> Vec<String> {
    docker(&[
        "ps",
        if all { "-aq" } else { "-q" },
        "--filter",
        &format!("label=exercise-runner.instance={instance}"),
        "--filter",
        &format!("label=exercise-runner.service={service}"),
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_string)
    .collect()
}

/// Ends a test's runner: its containers go (TestApp's drop), then the app volumes they used.
fn finish(app: TestApp) {
    let instance = app.instance.clone();
    drop(app);
    cleanup_app_volumes(&instance);
}

fn cleanup_app_volumes(instance: &str) {
    let vols = docker(&["volume", "ls", "-q", "--filter", &format!("name=exercise-runner-{instance}-app-")]);
    for v in vols.lines().filter(|l| !l.is_empty()) {
        let _ = std::process::Command::new("docker").args(["volume", "rm", "-f", v]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_definitions_are_validated_and_secrets_are_write_only() {
    let app = spawn_app().await;
    let (status, v) = app.put("/v1/apps/course", definition("http://127.0.0.1:9/x", false)).await;
    assert_eq!(status, 201, "{v}");
    let (_, got) = app.get("/v1/apps/course").await;
    let (_, list) = app.get("/v1/apps").await;
    for body in [&v, &got, &list] {
        let text = body.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(REGISTRY_PASSWORD) && !text.contains("hook-secret-for-tests"),
            "{text}"
        );
    }
    assert_eq!(got["secret_keys"], json!(["SECRET_KEY_BASE"]));
    // Nor in the database: a dump or backup of it holds the secrets only sealed.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&app.data_dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("runner.db") {
            stored.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    for secret in [SECRET, REGISTRY_PASSWORD, "hook-secret-for-tests"] {
        assert!(!stored.contains(secret), "{secret} is in the database in clear");
    }
    assert!(stored.contains("sealed:v1:"), "the secrets are stored sealed");
    assert_eq!(got["registry"], json!({"username": "deployer"}));
    assert_eq!(got["services"]["web"]["replicas"], 2);
    assert!(got["current_version"].is_null());

    let mut bad = definition("http://127.0.0.1:9/x", false);
    bad["image"] = json!("127.0.0.1:5000/sample/web:v1");
    let (status, v) = app.put("/v1/apps/course", bad).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_app")));
    assert!(v["error"]["message"].as_str().unwrap().starts_with("image"), "{v}");
    let (status, v) = app.put("/v1/apps/other", definition("http://127.0.0.1:9/x", false)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("host_taken")), "{v}");
    let (status, v) = app.post("/v1/apps/course/deploys", json!({"version": "../etc"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_version")));
    let (status, _) = app.post("/v1/apps/nope/deploys", json!({"version": "v1"})).await;
    assert_eq!(status, 404);
}

/// Secrets sealed under one key do not open under another: a deploy says so instead of running
/// the app without them, and giving the secrets again under the new key makes deploys work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sealed_under_another_key_fail_deploys_until_given_again() {
    let mut app = spawn_app().await;
    app.put("/v1/apps/course", definition("http://127.0.0.1:9/x", false)).await;
    app.stop_server().await;
    let mut settings = test_settings(&app.data_dir, &app.instance);
    settings.secrets_key = Some(runner::config::Secret::new("a-different-key"));
    let again = start(settings).await;
    let d = deploy(&again, "course", "v1").await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(d["failure_reason"].as_str().unwrap().contains("do not open with this runner's key"), "{d}");
    assert!(again.containers().is_empty(), "nothing was started without its secrets");
    let (status, v) = again.put("/v1/apps/course", definition("http://127.0.0.1:9/x", false)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(deploy(&again, "course", "v1").await["state"], "succeeded");
    drop(again);
    finish(app);
}

/// A release command that prints a secret (a migration echoing its environment, say) does not
/// put it in the deploy log: secret values are redacted, even when split across output chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_a_release_command_prints_are_redacted_in_the_deploy_log() {
    let app = spawn_app().await;
    let mut def = definition("http://127.0.0.1:9/x", false);
    def["release"] = json!(["sh", "-c", "echo \"using $SECRET_KEY_BASE\"; printf '%s' \"$SECRET_KEY_BASE\" | head -c 7; sleep 0.3; printf '%s\\n' \"$SECRET_KEY_BASE\" | tail -c +8; exec /app/migrate"]);
    let (status, v) = app.put("/v1/apps/course", def).await;
    assert_eq!(status, 201, "{v}");
    let d = deploy(&app, "course", "v1").await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let log = logs_of(&app, d["id"].as_str().unwrap()).await;
    assert!(log.contains("using [redacted]"), "{log}");
    assert!(!log.replace('\n', "").contains(SECRET), "a secret split across chunks leaked: {log}");
    // The app's containers are locked down like the definition says (they are not sandboxes, but
    // an app bug should not get a writable root or capabilities).
    let web = service_containers(&app.instance, "web", false);
    let web = web.first().expect("a web container").as_str();
    let c = inspect(web);
    let hc = &c["HostConfig"];
    assert_eq!(hc["ReadonlyRootfs"], true, "{hc}");
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert!(hc["SecurityOpt"].to_string().contains("no-new-privileges"), "{hc}");
    assert_eq!(hc["Memory"], hc["MemorySwap"], "{hc}");
    assert!(hc["PidsLimit"].as_i64().unwrap_or(0) > 0, "{hc}");
    let tmpfs: Vec<&String> = hc["Tmpfs"].as_object().unwrap().keys().collect();
    assert_eq!(tmpfs, ["/tmp", "/var/tmp"], "the writable paths and nothing else");
    assert!(
        c["Mounts"].as_array().unwrap().iter().any(|m| m["Destination"] == "/data" && m["Type"] == "volume"),
        "{c}"
    );
    for (host, port) in hc["PortBindings"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|b| b.as_array().unwrap())
        .map(|b| (b["HostIp"].clone(), b["HostPort"].clone()))
    {
        assert_eq!(host, "127.0.0.1", "ports are published on loopback only ({port})");
    }
    assert_ne!(sandbox_exec(web, "touch /app/x 2>/dev/null").0, 0, "the image's files are read-only");
    finish(app);
}

/// A response still streaming when a deploy switches the route is sent to its end: the old
/// containers are drained of whole responses, not just of requests waiting for headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_still_streaming_when_a_deploy_switches_is_not_cut() {
    let (app, ingress) = spawn_with_ingress().await;
    app.put("/v1/apps/course", definition("http://127.0.0.1:9/x", false)).await;
    assert_eq!(deploy(&app, "course", "v1").await["state"], "succeeded");
    // Headers received: the request is in flight on v1, its body still coming (~4 s).
    let slow = reqwest::Client::new()
        .get(format!("http://{ingress}/cgi-bin/slow"))
        .header("host", HOST)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert!(slow.status().is_success(), "{}", slow.status());
    let body = tokio::spawn(async move { slow.text().await });
    let d = deploy(&app, "course", "v2").await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let text = body.await.unwrap().expect("the streaming response was cut");
    assert!(text.contains("chunk 19") && text.trim_end().ends_with("end"), "{text}");
    assert_eq!(page(ingress).await.as_deref(), Ok("sample v2"));
    finish(app);
}

/// Webhooks are retried with backoff when the receiver fails, Slack-format ones carry `text`, and
/// a receiver that never answers holds up nothing: the deploy ends while its webhook still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_and_a_receiver_that_never_answers_delays_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    // Slack-compatible receiver that fails its first two requests.
    let calls = Arc::new(AtomicUsize::new(0));
    let texts: Arc<Mutex<Vec<String>>> = Arc::default();
    let (c, t) = (calls.clone(), texts.clone());
    let flaky = axum::Router::new().route(
        "/slack",
        axum::routing::post(move |body: String| {
            let (c, t) = (c.clone(), t.clone());
            async move {
                if c.fetch_add(1, SeqCst) < 2 {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let v: Value = serde_json::from_str(&body).unwrap();
                t.lock().unwrap().push(v["text"].as_str().unwrap_or_default().to_string());
                axum::http::StatusCode::OK
            }
        }),
    );
    // A receiver that accepts and never answers.
    let waiting = Arc::new(AtomicUsize::new(0));
    let w = waiting.clone();
    let silent = axum::Router::new().route(
        "/silent",
        axum::routing::post(move || {
            let w = w.clone();
            async move {
                w.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }
        }),
    );
    let mut urls = Vec::new();
    for router in [flaky, silent] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    }
    let app = spawn_app().await;
    let mut def = definition("http://127.0.0.1:9/x", false);
    def["notifications"] = json!([
        {"url": format!("{}/slack", urls[0]), "format": "slack"},
        {"url": format!("{}/silent", urls[1]), "format": "json"}
    ]);
    let (status, v) = app.put("/v1/apps/course", def).await;
    assert_eq!(status, 201, "{v}");
    let d = deploy(&app, "course", "v1").await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert!(waiting.load(SeqCst) >= 1, "the silent receiver was called and is still holding its request");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !texts.lock().unwrap().iter().any(|t| t.starts_with("[course]") && t.contains("v1")) {
        assert!(
            Instant::now() < deadline,
            "no Slack message after retries: {} calls, {:?}",
            calls.load(SeqCst),
            texts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls.load(SeqCst) >= texts.lock().unwrap().len() + 2, "the two refused deliveries were retried");
    finish(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_lose_no_request_migrate_once_fail_safely_and_roll_back() {
    let (app, ingress) = spawn_with_ingress().await;
    let (hook, received) = receiver().await;
    let (status, v) = app.put("/v1/apps/course", definition(&hook, false)).await;
    assert_eq!(status, 201, "{v}");

    let d1 = deploy(&app, "course", "v1").await;
    assert_eq!(d1["state"], "succeeded", "{d1}\n{}", logs_of(&app, d1["id"].as_str().unwrap()).await);
    assert!(d1["image"].as_str().unwrap().contains("@sha256:"), "pinned by digest: {d1}");
    assert_eq!(page(ingress).await.unwrap(), "sample v1");

    // v1 → v2 while a client keeps asking.
    let (stop, client) = hammer(ingress);
    let (status, d2) = app.post("/v1/apps/course/deploys", json!({"version": "v2"})).await;
    assert_eq!(status, 202);
    let (status, v) = app.post("/v1/apps/course/deploys", json!({"version": "v2"})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("deploy_running")), "one deploy at a time");
    let d2 = wait_deploy(&app, d2["id"].as_str().unwrap()).await;
    assert_eq!(d2["state"], "succeeded", "{d2}");
    let (pages, failures) = stop_hammer(ingress, stop, client, "sample v2").await;
    assert!(failures.is_empty(), "{} failed requests during the deploy: {failures:?}", failures.len());
    assert!(pages > 20, "the client kept getting answers ({pages})");
    assert_eq!(page(ingress).await.unwrap(), "sample v2");
    let (_, a) = app.get("/v1/apps/course").await;
    assert_eq!(a["current_version"], "v2");
    assert_eq!(a["services_state"]["web"]["replicas"], 2);

    // Each deploy's migration ran exactly once.
    let out = run(&app, "course", &["cat", "/data/migrations.log"]).await;
    assert_eq!(out.matches("migrated v1").count(), 1, "{out}");
    assert_eq!(out.matches("migrated v2").count(), 1, "{out}");
    assert!(out.trim_end().ends_with("[exit 0]"), "{out}");
    let out = run(&app, "course", &["sh", "-c", "echo $RAILS_ENV $APP_VERSION; exit 7"]).await;
    assert!(out.contains("production v2") && out.trim_end().ends_with("[exit 7]"), "{out}");

    // A failing migration: the deploy fails with its log, nothing restarted, v2 still serves.
    let d3 = deploy(&app, "course", "v3-broken").await;
    assert_eq!(d3["state"], "failed");
    assert!(d3["failure_reason"].as_str().unwrap().contains("release command exited with 1"), "{d3}");
    assert!(logs_of(&app, d3["id"].as_str().unwrap()).await.contains("relation \"users\" already exists"));
    assert_eq!(page(ingress).await.unwrap(), "sample v2");
    // A version that never gets healthy is not switched to.
    let d4 = deploy(&app, "course", "v4-unhealthy").await;
    assert_eq!(d4["state"], "failed");
    assert!(d4["failure_reason"].as_str().unwrap().contains("not healthy"), "{d4}");
    assert_eq!(page(ingress).await.unwrap(), "sample v2");
    let (_, a) = app.get("/v1/apps/course").await;
    assert_eq!(a["current_version"], "v2");

    // Rollback to the previous successful version: re-pinned, no pull, no migration.
    // (v4's release did run: migrations run once per deploy, before its services roll.)
    let before = run(&app, "course", &["cat", "/data/migrations.log"]).await.matches("migrated").count();
    let (status, r) = app.post("/v1/apps/course/rollback", json!({})).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!((r["kind"].as_str(), r["version"].as_str()), (Some("rollback"), Some("v1")));
    assert_eq!(r["image"], d1["image"], "the same pinned image");
    let r = wait_deploy(&app, r["id"].as_str().unwrap()).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(page(ingress).await.unwrap(), "sample v1");
    let out = run(&app, "course", &["cat", "/data/migrations.log"]).await;
    assert_eq!(out.matches("migrated").count(), before, "a rollback migrates nothing: {out}");
    let (_, history) = app.get("/v1/apps/course/deploys").await;
    let states: Vec<(&str, &str)> = history["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["version"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("v1", "succeeded"),
            ("v4-unhealthy", "failed"),
            ("v3-broken", "failed"),
            ("v2", "succeeded"),
            ("v1", "succeeded")
        ]
    );

    // A rollback to a named version, under traffic as well: no request lost.
    let (stop, client) = hammer(ingress);
    let (status, r) = app.post("/v1/apps/course/rollback", json!({"version": "v2"})).await;
    assert_eq!((status, r["version"].as_str()), (202, Some("v2")), "{r}");
    assert_eq!(wait_deploy(&app, r["id"].as_str().unwrap()).await["state"], "succeeded");
    let (pages, failures) = stop_hammer(ingress, stop, client, "sample v2").await;
    assert!(failures.is_empty(), "{} failed requests during the rollback: {failures:?}", failures.len());
    assert!(pages > 5, "the client kept getting answers ({pages})");

    // Notifications reached the live receiver, signed; the dead one failed nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kinds: Vec<String> =
            received.lock().unwrap().iter().map(|(_, v)| v["event"].as_str().unwrap_or("").to_string()).collect();
        if ["deploy_started", "deploy_succeeded", "deploy_failed", "rolled_back"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
        {
            break;
        }
        assert!(Instant::now() < deadline, "notifications: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(received.lock().unwrap().iter().all(|(sig, _)| sig.as_deref() == Some("valid")));

    // Secrets appear in no response and no deploy log.
    for d in history["deploys"].as_array().unwrap() {
        let log = logs_of(&app, d["id"].as_str().unwrap()).await;
        assert!(!log.contains(SECRET) && !log.contains(REGISTRY_PASSWORD), "{log}");
    }
    assert!(!history.to_string().contains(SECRET));
    finish(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_service_is_restarted_up_to_its_limit_then_failed_and_reported() {
    let (app, _) = spawn_with_ingress().await;
    let (hook, received) = receiver().await;
    app.put("/v1/apps/crashy", definition(&hook, true)).await;
    let d = deploy(&app, "crashy", "v1").await;
    assert_eq!(d["state"], "succeeded", "{d}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, a) = app.get("/v1/apps/crashy").await;
        if a["services_state"]["worker"]["state"] == "failed" {
            assert_eq!(a["services_state"]["worker"]["restarts"], 2, "{a}");
            assert_eq!(a["services_state"]["web"]["state"], "running", "{a}");
            break;
        }
        assert!(Instant::now() < deadline, "the worker was never marked failed: {a}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.lock().unwrap().iter().any(|(_, v)| v["event"] == "service_failed") {
        assert!(Instant::now() < deadline, "no service_failed notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A runner restart does not forget it: still failed, not restarted again, not reported again.
    let mut app = app;
    let worker_started = |instance: &str| -> Vec<String> {
        service_containers(instance, "worker", true)
            .iter()
            .map(|c| inspect(c)["State"]["StartedAt"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let before = worker_started(&app.instance);
    let reports = received.lock().unwrap().iter().filter(|(_, v)| v["event"] == "service_failed").count();
    app.stop_server().await;
    let again = start(test_settings(&app.data_dir, &app.instance)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, a) = again.get("/v1/apps/crashy").await;
        if a["services_state"]["worker"]["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "forgotten after a restart: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several supervisor rounds later, nothing was restarted or reported.
    let rounds = || async {
        let text = again.client.get(again.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("runner_app_supervise_rounds_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let first = rounds().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rounds().await < first + 3 {
        assert!(Instant::now() < deadline, "the supervisor stopped running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(worker_started(&app.instance), before, "the failed worker was restarted after the runner restart");
    let reports_now = received.lock().unwrap().iter().filter(|(_, v)| v["event"] == "service_failed").count();
    assert_eq!(reports_now, reports, "reported twice");
    drop(again);
    finish(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_come_back_after_a_runner_restart_and_the_cli_deploys() {
    let (mut app, ingress) = spawn_with_ingress().await;
    app.put("/v1/apps/course", definition("http://127.0.0.1:9/x", false)).await;
    assert_eq!(deploy(&app, "course", "v1").await["state"], "succeeded");
    // A deploy in progress when the runner stops is failed with the reason at the next start.
    let (_, interrupted) = app.post("/v1/apps/course/deploys", json!({"version": "v2"})).await;
    app.stop_server().await;
    let mut settings = test_settings(&app.data_dir, &app.instance);
    settings.ingress_listen = Some(ingress);
    let again = start(settings).await;
    let (_, d) = again.get(&format!("/v1/deploys/{}", interrupted["id"].as_str().unwrap())).await;
    if d["state"] == "failed" {
        assert!(d["failure_reason"].as_str().unwrap().contains("interrupted"), "{d}");
    } else {
        assert_eq!(d["state"], "succeeded", "it finished before the stop: {d}");
        assert_eq!(deploy(&again, "course", "v1").await["state"], "succeeded");
    }
    // Routes are rebuilt from the running containers.
    let deadline = Instant::now() + Duration::from_secs(15);
    while page(ingress).await.as_deref() != Ok("sample v1") {
        assert!(Instant::now() < deadline, "the app did not come back: {:?}", page(ingress).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A replica removed behind the runner's back is started again.
    let web = service_containers(&app.instance, "web", false);
    assert_eq!(web.len(), 2);
    docker(&["rm", "-f", &web[0]]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = service_containers(&app.instance, "web", false).len();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica was not replaced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The operator CLI, against the running runner.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .env("RUNNER_URL", &again.base)
            .env("RUNNER_API_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = cli(&["deploy", "course", "v2"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pulling") && text.contains("switching") && text.contains("succeeded"),
        "progress is shown: {text}"
    );
    assert_eq!(page(ingress).await.unwrap(), "sample v2");
    let out = cli(&["run", "course", "--", "sh", "-c", "echo hi from $APP_VERSION; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi from v2"));
    let out = cli(&["rollback", "course"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(page(ingress).await.unwrap(), "sample v1");

    // An interactive console with a TTY, over a WebSocket, in the app's environment.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let url = format!("{}/v1/apps/course/console", again.base.replace("http://", "ws://"));
    let unauthenticated = tokio_tungstenite::connect_async(url.clone().into_client_request().unwrap()).await;
    assert!(matches!(unauthenticated, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("console");
    ws.send(Message::Text(json!({"type": "resize", "cols": 120, "rows": 40}).to_string().into())).await.unwrap();
    ws.send(Message::Binary("echo con-$APP_VERSION-$(tty)\n".into())).await.unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("con-v1-/dev/pts") {
        assert!(Instant::now() < deadline, "console output: {seen:?}");
        if let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    ws.send(Message::Binary("exit 5\n".into())).await.unwrap();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("the console closes") {
            Some(Ok(Message::Close(Some(f)))) => break f.reason.to_string(),
            Some(Ok(_)) => {}
            other => panic!("console ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(reason, "exit 5");
    drop(again);
    finish(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_runners_own_log() {
    require_docker();
    let (instance, tmp) = new_instance();
    let port = free_port();
    let log_path = tmp.path().join("runner.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("serve")
        .env("RUNNER_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUNNER_DATA_DIR", tmp.path())
        .env("RUNNER_API_TOKEN", TOKEN)
        .env("RUNNER_INSTANCE", &instance)
        .env("RUNNER_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the runner did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .put(format!("{base}/v1/apps/logged"))
        .bearer_auth(TOKEN)
        .json(&definition("http://127.0.0.1:9/x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let d: Value = client
        .post(format!("{base}/v1/apps/logged/deploys"))
        .bearer_auth(TOKEN)
        .json(&json!({"version": "v1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let d: Value = client
            .get(format!("{base}/v1/deploys/{}", d["id"].as_str().unwrap()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if d["state"] != "running" {
            assert_eq!(d["state"], "succeeded", "{d}");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("deploy succeeded"), "the log was written: {}", &text[..text.len().min(2000)]);
    for secret in [SECRET, REGISTRY_PASSWORD, "hook-secret-for-tests", TOKEN] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).map(|l| &l[..l.len().min(300)]).collect();
        assert!(leaks.is_empty(), "{secret} leaked into the log:\n{}", leaks.join("\n"));
    }
    cleanup_instance(&instance, tmp.path());
}
