//! The runner survives its own crashes: reconciliation after `kill -9`, vanished and crashed
//! sandboxes, orphans, graceful shutdown. Uses the real `runner` binary as a child process.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use runner::domain::Runtime;
use serde_json::{json, Value};

struct RunnerProcess {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl RunnerProcess {
    async fn start(data_dir: &Path, instance: &str) -> RunnerProcess {
        let port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("runner.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("serve")
            .env("RUNNER_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUNNER_DATA_DIR", data_dir)
            .env("RUNNER_API_TOKEN", TOKEN)
            .env("RUNNER_INSTANCE", instance)
            .env("RUNNER_RECONCILE_INTERVAL_SECS", "1")
            .env("RUNNER_WEBHOOK_MAX_BACKOFF_SECS", "1")
            .env("RUNNER_SANDBOX_MEMORY_MB", "128")
            .env("RUNNER_SANDBOX_WORKSPACE_MB", "32")
            .env("RUNNER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the runner binary");
        let p = RunnerProcess { child, base: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = p.client.get(format!("{}/readyz", p.base)).send().await {
                if r.status() == 200 {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "runner did not get ready; log:\n{}", read_log(data_dir));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn session(&self, learner: &str, exercise: &str) -> Value {
        let (s, v) = self
            .call(reqwest::Method::POST, "/v1/sessions", Some(json!({"learner": learner, "exercise": exercise})))
            .await;
        assert!(s == 201 || s == 200, "{s} {v}");
        v
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "runner did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("runner.log")).unwrap_or_default()
}

struct Cleanup(String, std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup_instance(&self.0, &self.1);
    }
}

fn started_at(container: &str) -> String {
    inspect(container)["State"]["StartedAt"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_restart_every_session_is_live_with_the_same_container() {
    require_docker();
    let (instance, tmp) = new_instance();
    let _cleanup = Cleanup(instance.clone(), tmp.path().to_path_buf());
    let mut first = RunnerProcess::start(tmp.path(), &instance).await;
    let (s, v) = first.call(reqwest::Method::PUT, "/v1/exercises/crash", Some(json!({"image": IMAGE}))).await;
    assert_eq!(s, 201, "{v}");
    let kept = first.session("kept", "crash").await;
    let vanished = first.session("vanished", "crash").await;
    let kept_id = kept["id"].as_str().unwrap().to_string();
    let vanished_id = vanished["id"].as_str().unwrap().to_string();
    let kept_c = session_container(&instance, &kept_id).unwrap();
    let vanished_c = session_container(&instance, &vanished_id).unwrap();
    let kept_started = started_at(&kept_c);
    assert_eq!(sandbox_exec(&vanished_c, "echo precious > /workspace/work.txt").0, 0);

    first.kill_9();

    // While the runner is down: one sandbox disappears, an orphan appears.
    docker(&["rm", "-f", &vanished_c]);
    // An orphan: a sandbox (the runner's name and labels) of a session the database never knew.
    let ghost = uuid::Uuid::new_v4().to_string();
    let (name, inst, sess) = (
        format!("exercise-runner-{instance}-{ghost}"),
        format!("exercise-runner.instance={instance}"),
        format!("exercise-runner.session={ghost}"),
    );
    let args =
        ["run", "-d", "--name", &name, "--label", "exercise-runner.managed=true", "--label", &inst, "--label", &sess];
    let orphan = docker(&[&args[..], &[IMAGE, "sleep", "600"]].concat());
    let orphan = orphan.trim().to_string();

    let second = RunnerProcess::start(tmp.path(), &instance).await;

    // The same container, not restarted.
    let (_, v) = second.call(reqwest::Method::GET, &format!("/v1/sessions/{kept_id}"), None).await;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(session_container(&instance, &kept_id).as_deref(), Some(kept_c.as_str()));
    assert_eq!(started_at(&kept_c), kept_started, "adopted, not restarted");
    // The vanished one is recreated on its workspace: nothing of the learner is lost.
    let (_, v) = second.call(reqwest::Method::GET, &format!("/v1/sessions/{vanished_id}"), None).await;
    assert_eq!(v["state"], "running", "{v}");
    let new_c = session_container(&instance, &vanished_id).expect("recreated");
    assert_ne!(new_c, vanished_c);
    assert_eq!(sandbox_exec(&new_c, "cat /workspace/work.txt").1, "precious\n");
    // The orphan is gone, and nothing is duplicated.
    assert!(docker(&["ps", "-aq", "--no-trunc"]).lines().all(|c| c != orphan), "orphan removed");
    assert_eq!(containers_of(&instance).len(), 2, "one container per live session");
    // Creating the same sessions again answers with the live ones.
    assert_eq!(second.session("kept", "crash").await["id"], kept["id"]);
    drop(second);
    drop(tmp);
}

impl RunnerProcess {
    async fn pool(&self, exercise: &str) -> Value {
        let (_, v) = self.call(reqwest::Method::GET, "/v1/pools", None).await;
        v["pools"].as_array().into_iter().flatten().find(|p| p["exercise"] == exercise).cloned().unwrap_or(Value::Null)
    }

    async fn wait_pool_ready(&self, exercise: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.pool(exercise).await;
            if p["ready"] == n && p["starting"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "pool of {exercise} not at {n} ready: {p}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reconcile_rounds(&self) -> f64 {
        let text = self.client.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("runner_reconcile_rounds_total "));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_survives_kill_9_of_the_runner_adopted_not_leaked_or_doubled() {
    require_docker();
    let (instance, tmp) = new_instance();
    let _cleanup = Cleanup(instance.clone(), tmp.path().to_path_buf());
    let mut first = RunnerProcess::start(tmp.path(), &instance).await;
    let body = json!({"image": IMAGE, "pool": {"min": 2, "max": 2}});
    let (s, v) = first.call(reqwest::Method::PUT, "/v1/exercises/warm", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    first.wait_pool_ready("warm", 2).await;
    let pooled = pooled_containers(&instance);
    assert_eq!(pooled.len(), 2);
    // One of them is claimed before the crash: it is that learner's session's sandbox now.
    let ada = first.session("ada", "warm").await;
    first.wait_pool_ready("warm", 2).await;
    let before = pooled_containers(&instance);
    assert_eq!(before.len(), 3, "two ready and ada's");

    first.kill_9();
    let second = RunnerProcess::start(tmp.path(), &instance).await;
    // Let the reconciler and the pool run a few rounds on what the crash left.
    let rounds = second.reconcile_rounds().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.reconcile_rounds().await < rounds + 2.0 {
        assert!(Instant::now() < deadline, "the reconciler did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.wait_pool_ready("warm", 2).await;
    assert_eq!(pooled_containers(&instance), before, "the same sandboxes: adopted, none removed, none added");
    let (_, v) =
        second.call(reqwest::Method::GET, &format!("/v1/sessions/{}", ada["id"].as_str().unwrap()), None).await;
    assert_eq!(v["state"], "running", "{v}");
    // The next learner still gets one of the pooled sandboxes made before the crash.
    let bo = second.session("bo", "warm").await;
    assert_eq!(bo["state"], "running");
    assert!(before.contains(&container_in_db(&sqlite_url(tmp.path()), bo["id"].as_str().unwrap()).await));
    second.wait_pool_ready("warm", 2).await;
    assert_eq!(containers_of(&instance).len(), 4, "ada's, bo's and two ready: {:?}", pooled_containers(&instance));
    drop(second);
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_runner_gracefully_and_sandboxes_keep_running() {
    require_docker();
    let (instance, tmp) = new_instance();
    let _cleanup = Cleanup(instance.clone(), tmp.path().to_path_buf());
    let mut p = RunnerProcess::start(tmp.path(), &instance).await;
    p.call(reqwest::Method::PUT, "/v1/exercises/term", Some(json!({"image": IMAGE}))).await;
    let s = p.session("ada", "term").await;
    let c = session_container(&instance, s["id"].as_str().unwrap()).unwrap();
    let status = p.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", read_log(tmp.path()));
    let log = read_log(tmp.path());
    assert!(log.contains("SIGTERM"));
    // Written to a file, the log is plain text: colours are for terminals (issue 10, item 2).
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file:\n{log}");
    assert_eq!(inspect(&c)["State"]["Running"], true, "a runner restart must not cost learners their sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_sandbox_is_started_again_by_reconciliation() {
    let app = spawn_app().await;
    app.exercise("crashy", json!({})).await;
    let s = app.session("ada", "crashy").await;
    let id = s["id"].as_str().unwrap();
    let c = session_container(&app.instance, id).unwrap();
    assert_eq!(sandbox_exec(&c, "echo still-here > /workspace/f").0, 0);
    // The sandbox's main process dies (as on an OOM kill of PID 1).
    docker(&["kill", &c]);
    eventually(Duration::from_secs(15), "the sandbox to run again", || {
        (inspect(&c)["State"]["Running"] == true).then_some(())
    })
    .await;
    let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running");
    assert_eq!(sandbox_exec(&c, "cat /workspace/f").1, "still-here\n");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_reconcile_actions_total{action=\"restarted\"}"), "{metrics}");
}

/// Found by scripts/fuzz-api.sh: a check whose sandbox is not running (stopped under it, or
/// crashed and not yet restarted) answered 500 with Docker's 409; it is the session's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_of_a_sandbox_that_is_not_running_is_a_409_not_a_500() {
    // No reconciliation during the test: it would start the sandbox again.
    let app = spawn_app_with(|s| s.reconcile_interval = Duration::from_secs(3600)).await;
    app.exercise("crashed", json!({})).await;
    let s = app.session("ada", "crashed").await;
    let id = s["id"].as_str().unwrap();
    let c = session_container(&app.instance, id).unwrap();
    docker(&["kill", &c]);
    let (status, v) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_not_running")), "{v}");
    docker(&["rm", "-f", &c]);
    let (status, v) = app.post(&format!("/v1/sessions/{id}/checks"), json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("session_not_running")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_removed_behind_the_runners_back_is_recreated_while_it_runs() {
    let app = spawn_app().await;
    app.exercise("gone", json!({})).await;
    let s = app.session("ada", "gone").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    assert_eq!(sandbox_exec(&c, "echo mine > /workspace/f").0, 0);
    docker(&["rm", "-f", &c]);
    // Polled with a non-panicking inspect: a candidate can go between the listing and the inspect.
    let running = |n: &str| {
        let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", n]).output();
        out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
    };
    let new_c = eventually(Duration::from_secs(15), "a new container for the session", || {
        session_container(&app.instance, &id).filter(|n| *n != c && running(n))
    })
    .await;
    let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(sandbox_exec(&new_c, "cat /workspace/f").1, "mine\n");
    assert_eq!(app.containers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_sandbox_cannot_start_is_failed_with_a_reason_and_leaves_nothing() {
    let app = spawn_app().await;
    // An image whose command does not exist: create works, start fails.
    app.exercise("broken", json!({})).await;
    docker(&["tag", IMAGE, &format!("exercise-runner-test/broken-{}:1", app.instance)]);
    let image = format!("exercise-runner-test/broken-{}:1", app.instance);
    let (status, _) = app.put("/v1/exercises/broken", json!({"image": image})).await;
    assert_eq!(status, 200);
    docker(&["rmi", &image]);
    let (status, v) = app.post("/v1/sessions", json!({"learner": "ada", "exercise": "broken"})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "sandbox_start_failed");
    assert!(v["error"]["message"].as_str().unwrap().contains("failed to start"), "{v}");
    let (_, list) = app.get("/v1/sessions?learner=ada").await;
    let s = &list["sessions"][0];
    assert_eq!(s["state"], "failed");
    let reason = s["failure_reason"].as_str().unwrap();
    assert!(reason.contains("creating container") && reason.contains("No such image"), "{reason}");
    assert!(app.containers().is_empty(), "no stray container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ide_proxy_runs_on_its_own_beside_the_api() {
    require_docker();
    let (instance, tmp) = new_instance();
    let _cleanup = Cleanup(instance.clone(), tmp.path().to_path_buf());
    let api = RunnerProcess::start(tmp.path(), &instance).await;
    api.call(reqwest::Method::PUT, "/v1/exercises/apart", Some(json!({"image": "exercise-runner/base:latest"}))).await;
    let s = api.session("ada", "apart").await;
    let id = s["id"].as_str().unwrap();
    // A second process serving only /ide/, on the same data (database and IDE secret).
    let port = free_port();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(tmp.path().join("proxy.log")).unwrap();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("ide-proxy")
        .env("RUNNER_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUNNER_DATA_DIR", tmp.path())
        .env("RUNNER_INSTANCE", &instance)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = s["ide_url"].as_str().unwrap().replace(&api.base, &format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let login = loop {
        if let Ok(r) = client.get(&url).send().await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "ide-proxy did not start: {}",
            std::fs::read_to_string(tmp.path().join("proxy.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(format!("http://127.0.0.1:{port}/ide/{id}/api/info"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The API is not served there.
    let r = client.get(format!("http://127.0.0.1:{port}/v1/sessions")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let _ = proxy.kill();
    let _ = proxy.wait();
}

/// A sandbox whose health check keeps failing (its IDE agent stopped) is replaced by
/// reconciliation on the same workspace, and the session's events say so (issue 9, item 4).
/// Under crun the runner runs the image's check itself, over the sandbox's network namespace (no
/// exec per probe: the engine's check is off, and the label has the image's timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_sandbox_is_replaced_on_its_workspace() {
    let app = spawn_app_with(|s| s.runtime = Runtime::Crun).await;
    // The base image's own check, probed every second instead of every 30 s (failures count
    // once it has passed, or after 30 s: a slow start under load is not a failure).
    let tag = format!("exercise-runner-test/healthcheck:{}", app.instance);
    let dockerfile = format!(
        "FROM exercise-runner/base:latest\nLABEL exercise-runner.instance={}\n\
         HEALTHCHECK --interval=1s --timeout=10s --start-period=30s --retries=2 CMD [\"/usr/local/bin/ide-agent\", \"health\"]\n",
        app.instance
    );
    let mut build = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    build.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "building the test image");
    app.put("/v1/exercises/sickly", json!({"image": tag})).await;
    let s = app.session("ada", "sickly").await;
    let id = s["id"].as_str().unwrap();
    let first = session_container(&app.instance, id).unwrap();
    let c = inspect(&first);
    let label = c["Config"]["Labels"]["exercise-runner.health"].as_str().unwrap_or_default().to_string();
    assert_eq!(label, "interval=1000ms,timeout=10000ms,start=30000ms,retries=2", "{c}");
    assert_eq!(c["Config"]["Healthcheck"]["Test"], json!(["NONE"]), "no exec every interval: {c}");
    // The runner's probes pass: counted in the metrics.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !metrics_text(&app).await.contains("runner_health_probes_total{result=\"healthy\"}") {
        assert!(Instant::now() < deadline, "no healthy probe within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    learner_writes(&first, "/workspace/kept", "yes");
    // The learner stops the IDE agent: the check fails, twice, and the sandbox is unhealthy.
    let (code, out) = sandbox_exec(&first, "supervisorctl -c /etc/supervisor/supervisord.conf stop ide-agent");
    assert_eq!(code, 0, "{out}");
    let second = eventually(Duration::from_secs(60), "a new sandbox for the session", || {
        session_container(&app.instance, id).filter(|c| *c != first)
    })
    .await;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, out) = sandbox_exec(&second, "/usr/local/bin/ide-agent health");
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the new sandbox's agent did not answer within 90 s: {last}");
        last = out;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sandbox_exec(&second, "cat /workspace/kept").1, "yes", "the workspace is kept");
    let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running", "{v}");
    let (_, v) = app.get(&format!("/v1/sessions/{id}/events")).await;
    let kinds: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "unhealthy", "started"], "{v}");
    let detail = v["events"][1]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("agent"), "the reason is said: {v}");
    let metrics = metrics_text(&app).await;
    assert!(metrics.contains("runner_reconcile_actions_total{action=\"replaced_unhealthy\"} 1"), "{metrics}");
    drop(app);
    let _ = std::process::Command::new("docker").args(["rmi", "-f", &tag]).output();
}

async fn metrics_text(app: &TestApp) -> String {
    app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A memory bomb in a sandbox is OOM-killed, and the session's events say so at once (the
/// runner follows the engine's event stream), counted in the metrics (issue 9, item 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_recorded_on_the_session_from_the_engines_events() {
    let app = spawn_app().await;
    app.exercise("bomb", json!({"limits": {"memory_mb": 32}})).await;
    let s = app.session("ada", "bomb").await;
    let id = s["id"].as_str().unwrap();
    let c = session_container(&app.instance, id).unwrap();
    // A child process grows past the limit; the sandbox's PID 1 lives on.
    let (code, _) = sandbox_exec(&c, "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}");
    assert_ne!(code, 0, "the bomb was killed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let (_, v) = app.get(&format!("/v1/sessions/{id}/events")).await;
        if v["events"].as_array().unwrap().iter().any(|e| e["kind"] == "oom_killed") {
            break v;
        }
        assert!(Instant::now() < deadline, "no oom_killed event: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(events["events"][0]["kind"] == "started", "{events}");
    let (_, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(v["state"], "running", "the sandbox itself survives a child's OOM kill: {v}");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // One kill or several (the kernel may kill more than one process of the bomb's pipeline).
    assert!(metrics.contains("runner_session_events_total{kind=\"oom_killed\"}"), "{metrics}");
    assert!(metrics.contains("runner_engine_events_connected 1"), "{metrics}");
    let (_, ready) = app.get("/readyz").await;
    assert_eq!(ready["checks"]["engine_events"]["ok"], true, "{ready}");
}

/// A sandbox OOM-killed repeatedly fires one alert, delivered signed to the operator's receiver
/// and listed by the API; once the kills age out of the window it clears, and says so (issue 9,
/// item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_oom_kills_fire_one_alert_that_clears() {
    let (hook, received) = webhook_receiver(b"alert-secret-for-tests").await;
    let app = spawn_app_with(|s| {
        s.alerts.webhook_url = Some(hook.clone());
        s.alerts.webhook_json = true;
        s.alerts.webhook_secret = Some(runner::config::Secret::new("alert-secret-for-tests"));
        s.alerts.interval = Duration::from_secs(1);
        s.alerts.oom_kills = 2;
        s.alerts.oom_window = Duration::from_secs(8);
    })
    .await;
    app.exercise("bombs", json!({"limits": {"memory_mb": 32}})).await;
    let s = app.session("ada", "bombs").await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    for _ in 0..2 {
        let (code, _) = sandbox_exec(&c, "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}");
        assert_ne!(code, 0, "the bomb was killed");
    }
    let fired = |r: &Received, event: &str| {
        r.lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["event"] == event && v["alert"] == "oom_repeated")
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while fired(&received, "alert_firing").is_empty() {
        assert!(Instant::now() < deadline, "no alert: {:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sig, v) = fired(&received, "alert_firing").remove(0);
    assert_eq!(sig.as_deref(), Some("valid"), "signed with the alert secret: {v}");
    assert_eq!(v["subject"], id.as_str(), "{v}");
    assert!(v["message"].as_str().unwrap().contains("ada on bombs"), "{v}");
    assert_eq!(v["instance"], app.instance.as_str());
    let (status, list) = app.get("/v1/alerts").await;
    assert_eq!(status, 200);
    assert!(
        list["firing"].as_array().unwrap().iter().any(|a| a["kind"] == "oom_repeated" && a["subject"] == id.as_str()),
        "{list}"
    );
    // The kills age out of the window: one message that it cleared, and it fired only once.
    let deadline = Instant::now() + Duration::from_secs(40);
    while fired(&received, "alert_cleared").is_empty() {
        assert!(Instant::now() < deadline, "the alert did not clear: {:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fired(&received, "alert_firing").len(), 1, "one message per episode");
    let (_, list) = app.get("/v1/alerts").await;
    assert!(list["firing"].as_array().unwrap().iter().all(|a| a["kind"] != "oom_repeated"), "{list}");
    assert_eq!(list["recent"][0]["kind"], "oom_repeated", "{list}");
    assert!(list["recent"][0]["cleared_at"].is_string(), "{list}");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("runner_alerts_total{kind=\"oom_repeated\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_a_kill_9_reach_the_web_app_after_the_restart() {
    require_docker();
    let (instance, tmp) = new_instance();
    let _cleanup = Cleanup(instance.clone(), tmp.path().to_path_buf());
    // The receiver is down while the first runner lives.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut first = RunnerProcess::start(tmp.path(), &instance).await;
    let (s, v) = first.call(reqwest::Method::PUT, "/v1/exercises/told", Some(json!({"image": IMAGE}))).await;
    assert_eq!(s, 201, "{v}");
    let hook = json!({"url": format!("http://{addr}/events"), "secret": RECEIVER_SECRET,
                      "events": ["session.running", "session.ended"]});
    let (s, v) = first.call(reqwest::Method::PUT, "/v1/webhooks/site", Some(hook)).await;
    assert_eq!(s, 201, "{v}");
    let id = first.session("kai", "told").await["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.call(reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await.1["state"] != "running" {
        assert!(Instant::now() < deadline, "the session did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.call(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None).await.0, 200);
    let (_, committed) = first.call(reqwest::Method::GET, "/v1/events?after=0", None).await;
    let committed: Vec<Value> = committed["events"].as_array().unwrap().clone();
    assert_eq!(types_of(&committed), ["session.running", "session.ended"]);
    first.kill_9();

    let receiver = EventReceiver::start_on(tokio::net::TcpListener::bind(addr).await.unwrap(), Answer::Ok);
    let _second = RunnerProcess::start(tmp.path(), &instance).await;
    let got = receiver.wait_for(Duration::from_secs(60), "both events", |e| e.len() >= 2).await;
    let ids = |v: &[Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&committed), "the same events, same ids, in order");
    assert!(receiver.got().iter().all(|d| d.signed), "signed with the secret the first runner sealed");
}
