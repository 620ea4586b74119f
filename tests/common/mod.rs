//! Test harness: the real service on a free loopback port, against the real Docker engine and a
//! real SQLite database in a temporary directory. Each test app has its own instance label, so
//! tests running side by side never touch each other's containers, and everything it made is
//! removed by label when it is dropped.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use runner::Settings;
use serde_json::{json, Value};

pub const IMAGE: &str = "exercise-runner/busybox:latest";
pub const TOKEN: &str = "test-token-0123456789";

/// Fails loudly, never skips, when there is no Docker engine.
pub fn require_docker() {
    let ok =
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output().map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "these tests need a running Docker engine: run ./scripts/test (it starts one) or scripts/host-setup.sh"
    );
    let img = Command::new("docker").args(["image", "inspect", IMAGE]).output().map(|o| o.status.success());
    assert!(matches!(img, Ok(true)), "test image {IMAGE} is missing: run scripts/make-images.sh");
}

/// Settings for a test: fast loops, small limits, a fresh data dir and instance.
pub fn test_settings(data_dir: &Path, instance: &str) -> Settings {
    let mut s = Settings::defaults();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.data_dir = data_dir.to_path_buf();
    s.database_url = runner::config::Secret::new(format!("sqlite://{}?mode=rwc", data_dir.join("runner.db").display()));
    s.api_token = Some(runner::config::Secret::new(TOKEN));
    s.instance = instance.to_string();
    s.default_limits.memory_mb = 128;
    s.default_limits.workspace_mb = 32;
    s.default_limits.tmpfs_mb = 16;
    s.reap_interval = Duration::from_millis(500);
    s.reconcile_interval = Duration::from_secs(1);
    s.rate_limit_per_sec = 1000;
    s.rate_limit_burst = 1000;
    s
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub instance: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn new_instance() -> (String, tempfile::TempDir) {
    let instance = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let tmp = tempfile::Builder::new().prefix("exercise-runner-test-").tempdir().unwrap();
    (instance, tmp)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    require_docker();
    let (instance, tmp) = new_instance();
    let mut settings = test_settings(tmp.path(), &instance);
    configure(&mut settings);
    let mut app = start(settings).await;
    app._tmp = Some(tmp);
    app
}

/// Starts a runner in-process on the given settings (e.g. again on a previous app's data).
pub async fn start(settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        runner::telemetry::init(false, std::env::var("RUNNER_LOG").ok().as_deref());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let instance = settings.instance.clone();
    let data_dir = settings.data_dir.clone();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let app = TestApp {
        base,
        client: reqwest::Client::new(),
        instance,
        data_dir,
        _tmp: None,
        shutdown: Some(tx),
        server: Some(server),
    };
    app.wait_healthy().await;
    app
}

impl TestApp {
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(server) = &self.server {
                assert!(!server.is_finished(), "the runner exited during start");
            }
            assert!(Instant::now() < deadline, "the runner did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the in-process server gracefully (as on SIGTERM), keeping data and sandboxes.
    pub async fn stop_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Makes this app own (and clean up) a temporary directory made for it.
    pub fn adopt_dir(&mut self, dir: tempfile::TempDir) {
        self._tmp = Some(dir);
    }

    /// Takes the temporary directory away from this app so another can reuse it.
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Registers the busybox test image as an exercise.
    pub async fn exercise(&self, slug: &str, extra: Value) -> Value {
        let mut body = json!({"image": IMAGE});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self.put(&format!("/v1/exercises/{slug}"), body).await;
        assert!(status == 200 || status == 201, "PUT exercise: {status} {v}");
        v
    }

    pub async fn session(&self, learner: &str, exercise: &str) -> Value {
        let (status, v) = self.post("/v1/sessions", json!({"learner": learner, "exercise": exercise})).await;
        assert!(status == 201 || status == 200, "POST session: {status} {v}");
        v
    }

    /// Polls a session until `pred` holds or the deadline passes.
    pub async fn wait_session(&self, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, v) = self.get(&format!("/v1/sessions/{id}")).await;
            assert_eq!(status, 200, "{v}");
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "session did not reach the expected state in {within:?}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn containers(&self) -> Vec<String> {
        containers_of(&self.instance)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Let the runner stop (its background work, a warm pool's fills, ends with it) before
        // its containers are removed, so nothing it makes afterwards is left behind.
        if let Some(server) = self.server.take() {
            let handle = tokio::runtime::Handle::try_current();
            if let Some(handle) =
                handle.ok().filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            {
                tokio::task::block_in_place(|| {
                    let _ = handle.block_on(tokio::time::timeout(Duration::from_secs(40), server));
                });
            }
        }
        if self._tmp.is_some() {
            cleanup_instance(&self.instance, &self.data_dir);
        }
    }
}

/// Removes every container and volume of a test instance and detaches its loop devices.
pub fn cleanup_instance(instance: &str, data_dir: &Path) {
    for c in containers_of(instance) {
        let _ = Command::new("docker").args(["rm", "-f", &c]).output();
    }
    let vols = docker(&["volume", "ls", "-q", "--filter", &format!("label=exercise-runner.instance={instance}")]);
    for v in vols.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
    }
    let loops = Command::new("losetup").arg("-a").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    for line in loops.unwrap_or_default().lines() {
        if line.contains(&*data_dir.to_string_lossy()) {
            if let Some(dev) = line.split(':').next() {
                let _ = Command::new("losetup").args(["-d", dev]).output();
            }
        }
    }
}

pub fn containers_of(instance: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("label=exercise-runner.instance={instance}")])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs the docker CLI and returns its stdout (panics on failure).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("running docker");
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker exec` as the sandbox user; returns (exit code, stdout+stderr).
pub fn sandbox_exec(container: &str, script: &str) -> (i32, String) {
    // Bounded: an exec into a sandbox on its way out can hang, and a hang must fail the test, not
    // stall the suite.
    let out = Command::new("timeout")
        .args(["120", "docker", "exec", container, "sh", "-c", script])
        .output()
        .expect("running docker exec");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The container of a session, found by its label.
pub fn session_container(instance: &str, session_id: &str) -> Option<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=exercise-runner.instance={instance}"),
        "--filter",
        &format!("label=exercise-runner.session={session_id}"),
    ])
    .lines()
    .find(|l| !l.is_empty())
    .map(str::to_string)
}

/// The warm pools' containers of a test instance (named `…-pool-<id>`, labelled), sorted; a
/// claimed one is among them (it keeps its pool's name and labels).
pub fn pooled_containers(instance: &str) -> Vec<String> {
    let filter = format!("label=exercise-runner.instance={instance}");
    let mut v: Vec<String> =
        docker(&["ps", "-aq", "--no-trunc", "--filter", &filter, "--filter", "label=exercise-runner.pool"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
    v.sort();
    v
}

/// The container a session runs in, as the database at `database_url` says (a claimed pooled
/// sandbox is found only this way).
pub async fn container_in_db(database_url: &str, session: &str) -> String {
    let store = runner::store::Store::connect(database_url).await.unwrap();
    store.session(session).await.unwrap().unwrap().container_id.expect("a running session names its container")
}

/// The `sqlite:` URL of a test runner's database in `data_dir`.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("runner.db").display())
}

pub fn inspect(container: &str) -> Value {
    let v: Value = serde_json::from_str(&docker(&["inspect", container])).unwrap();
    v[0].clone()
}

/// Polls `f` until it returns Some or the deadline passes.
pub async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- exercise repositories for build tests ----

/// A tar of a directory tree (regular files and directories; modes kept, times zeroed).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(b, root, &path);
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(&path).unwrap();
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(meta.permissions().mode() & 0o777);
                h.set_mtime(0);
                b.append_data(&mut h, rel, data.as_slice()).unwrap();
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, dir);
    b.into_inner().unwrap()
}

/// A tar of (path, content) files.
pub fn tar_files(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tiny exercise on the busybox image that builds in a second: the learner must put 42 in
/// answer.txt. `extra` files override the defaults (e.g. a different Dockerfile).
pub fn quick_exercise(slug: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let manifest = format!(
        "slug = \"{slug}\"\ntitle = \"The answer\"\ncheck = [\"sh\", \"/opt/exercise/tests/check.sh\"]\ncheck_timeout_secs = 10\n"
    );
    let mut files: Vec<(&str, String)> = vec![
        ("exercise.toml", manifest),
        (
            "Dockerfile",
            // The build itself cannot reach the Docker socket either.
            format!(
                "FROM {IMAGE}\nRUN test ! -e /var/run/docker.sock && test ! -e /run/docker.sock\n\
                 COPY --chown=1000:1000 exercise/ /workspace/\nCOPY tests/ /opt/exercise/tests/\n"
            ),
        ),
        ("exercise/answer.txt", "TODO\n".into()),
        (
            "tests/check.sh",
            "if grep -qx 42 answer.txt; then echo correct; else echo \"expected 42, got: $(cat answer.txt)\"; exit 1; fi\n".into(),
        ),
        ("solution/answer.txt", "42\n".into()),
    ];
    for (path, data) in extra {
        match files.iter_mut().find(|(p, _)| p == path) {
            Some(f) => f.1 = data.to_string(),
            None => files.push((path, data.to_string())),
        }
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, d)| (*p, d.as_str())).collect();
    tar_files(&refs)
}

impl TestApp {
    /// Submits a repository archive as a build.
    pub async fn submit_build(&self, slug: &str, archive: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/v1/exercises/{slug}/builds")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-tar")
            .body(archive)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits for a build to end; returns it.
    pub async fn wait_build(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, v) = self.get(&format!("/v1/builds/{id}")).await;
            assert_eq!(status, 200, "{v}");
            if !matches!(v["state"].as_str(), Some("queued" | "building" | "testing")) {
                return v;
            }
            assert!(Instant::now() < deadline, "build still {} after {within:?}: {v}", v["state"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn build_log(&self, id: &str) -> String {
        let r = self.client.get(self.url(&format!("/v1/builds/{id}/logs"))).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }
}

/// Copies files into a running sandbox as the learner (through docker exec, like a learner would).
pub fn learner_writes(container: &str, path: &str, content: &str) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["exec", "-i", container, "sh", "-c", &format!("cat > {path}")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

// ---- concurrent writes (issue 8: race-free storage), run on SQLite and PostgreSQL ----

/// 20 concurrent first PUTs of one exercise and of one app: one 201, the rest 200, never a 500;
/// then 21 concurrent PUTs that each change one different field of the exercise: every change
/// is there afterwards (none lost to another request's read-modify-write).
pub async fn concurrent_puts_neither_fail_nor_lose_writes(app: &TestApp) {
    let statuses = |results: &[(u16, Value)]| {
        let mut s: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
        s.sort();
        s
    };
    let expected: Vec<u16> = std::iter::once(200).cycle().take(19).chain([201]).collect();

    let puts = (0..20).map(|_| app.put("/v1/exercises/raced", json!({"image": IMAGE})));
    let results = futures_util::future::join_all(puts).await;
    assert_eq!(statuses(&results), expected, "first PUTs of one exercise: {results:?}");

    let puts = (0..20).map(|n| {
        let body = json!({"image": "registry.invalid/course/web", "env": {"N": n.to_string()},
                          "services": {"web": {"command": ["/app/web"], "port": 8080}}});
        async move { app.put("/v1/apps/raced", body).await }
    });
    let results = futures_util::future::join_all(puts).await;
    assert_eq!(statuses(&results), expected, "first PUTs of one app: {results:?}");
    let (status, got) = app.get("/v1/apps/raced").await;
    assert_eq!(status, 200, "{got}");

    let changes = [json!({"title": "Raced"}), json!({"auto_publish": false}), json!({"hook_secret": "a".repeat(24)})];
    let puts = (0..21).map(|n| app.put("/v1/exercises/raced", changes[n % 3].clone()));
    let results = futures_util::future::join_all(puts).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let (_, v) = app.get("/v1/exercises/raced").await;
    assert_eq!(v["title"], "Raced", "a concurrent PUT lost the title: {v}");
    assert_eq!(v["auto_publish"], false, "a concurrent PUT lost auto_publish: {v}");
    assert_eq!(v["hook_secret_set"], true, "a concurrent PUT lost the hook secret: {v}");
}

/// A free port on 127.0.0.1 for a server a test starts by address (the ingress, a runner
/// process). Taken below the kernel's ephemeral range: a port `bind(":0")` handed out and
/// released can be reused at once as the source port of any client connection on this busy
/// machine, and the server's bind then fails.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = 20000 + (uuid::Uuid::new_v4().as_u128() % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

// ---- webhook receivers (deploy notifications, alerts) ----

/// What a webhook receiver got: (signature check: `valid`, `invalid` or none, payload).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

/// A webhook receiver on loopback that records what it gets, checking `X-Runner-Signature-256`
/// against `secret`. Answers with its URL.
pub async fn webhook_receiver(secret: &'static [u8]) -> (String, Received) {
    use hmac::{Hmac, Mac};
    let got: Received = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let g = g.clone();
            async move {
                let sig = headers.get("x-runner-signature-256").map(|v| v.to_str().unwrap().to_string());
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
                let valid = sig.as_ref().map(|s| {
                    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
                    m.update(body.as_bytes());
                    *s == format!("sha256={}", hex::encode(m.finalize().into_bytes()))
                });
                g.lock().unwrap().push((valid.map(|ok| if ok { "valid" } else { "invalid" }.to_string()), v));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

// ---- a sandbox holding a known amount of memory (usage figures, the dashboard) ----

/// Starts, detached in `container`, a Python process that waits for `/tmp/go`, then holds 64 MiB
/// (and touches `/tmp/held`); returns once the interpreter is up (`/tmp/ready`), so a baseline
/// taken now includes it.
pub async fn start_memory_holder(container: &str) {
    let script = "import os, time\n\
        open('/tmp/ready', 'w').close()\n\
        while not os.path.exists('/tmp/go'): time.sleep(0.05)\n\
        held = bytearray(b'\\x01') * (64 << 20)\n\
        open('/tmp/held', 'w').close()\n\
        time.sleep(600)\n";
    docker(&["exec", "-d", container, "python3", "-c", script]);
    eventually(Duration::from_secs(30), "the allocator to start", || {
        (sandbox_exec(container, "test -f /tmp/ready").0 == 0).then_some(())
    })
    .await;
}

// ---- the web app's event receiver (webhooks of `PUT /v1/webhooks/{name}`) ----

/// How an [`EventReceiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Ok,
    /// This status, as a receiver in trouble would.
    Fail(u16),
    /// Takes this long before answering 200 (past the runner's attempt timeout, it never hears).
    Slow(Duration),
}

/// One event as the receiver got it: whether its `Runner-Signature` verified, and the body.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub signed: bool,
    /// It answered 2xx (the runner may still not have heard, when it answered slowly).
    pub accepted: bool,
    pub body: Value,
}

#[derive(Clone)]
pub struct EventReceiver {
    pub url: String,
    state: std::sync::Arc<std::sync::Mutex<(Answer, Vec<Delivered>)>>,
}

pub const RECEIVER_SECRET: &str = "whsec_test_0123456789abcdef";

impl EventReceiver {
    /// A receiver on a free loopback port, answering `answer`.
    pub async fn start(answer: Answer) -> EventReceiver {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), answer)
    }

    /// A receiver on `listener` (bind a port first to register it, serve it later: a receiver
    /// that is down, then comes back).
    pub fn start_on(listener: tokio::net::TcpListener, answer: Answer) -> EventReceiver {
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let state = std::sync::Arc::new(std::sync::Mutex::new((answer, Vec::new())));
        let s = state.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    let sig = headers.get("runner-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    let now = chrono::Utc::now().timestamp();
                    let signed = runner::outbox::verify(RECEIVER_SECRET, sig, &body, now, 300);
                    // Recorded on arrival: a slow answer's handler is dropped when the runner gives up.
                    let answer = s.lock().unwrap().0;
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    let accepted = !matches!(answer, Answer::Fail(_));
                    s.lock().unwrap().1.push(Delivered { signed, accepted, body });
                    if let Answer::Slow(d) = answer {
                        tokio::time::sleep(d).await;
                    }
                    match answer {
                        Answer::Fail(code) => (axum::http::StatusCode::from_u16(code).unwrap(), "not now"),
                        _ => (axum::http::StatusCode::OK, "ok"),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        EventReceiver { url, state }
    }

    pub fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().0 = answer;
    }

    /// Everything it got, duplicates and refused attempts included.
    pub fn got(&self) -> Vec<Delivered> {
        self.state.lock().unwrap().1.clone()
    }

    /// The events it took (answered 200 and were signed), first copy of each id, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.got()
            .into_iter()
            .filter(|d| d.signed && d.accepted && seen.insert(d.body["id"].as_str().unwrap_or_default().to_string()))
            .map(|d| d.body)
            .collect()
    }

    /// Polls until the events it took satisfy `pred`.
    pub async fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get {what} within {within:?}; it got {:#?}",
                self.got()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The types of events, in order.
pub fn types_of(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_string()).collect()
}
