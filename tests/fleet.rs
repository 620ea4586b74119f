//! A fleet of sandbox hosts (issue 14; docs/ARCHITECTURE.md, "Fleet"): three Docker engines,
//! each in a network namespace of its own, joined into one Swarm, the fleet deployed on it from
//! deploy/fleet-stack.yml by `scripts/fleet-up 3` (the runner image built from this build's
//! binary), sharing one PostgreSQL. Every request goes to node 1's runner (or, to show any
//! runner answers, node 2's): sessions spread over the nodes, each sandbox on its node's engine
//! only; the IDE of a session on node 3 works in real Chromium through node 1; a stop through
//! a runner that does not own the session removes the sandbox on the node that does; a drained
//! node gets no new sessions and its learners' next sessions start elsewhere with their files;
//! a rolling update of the runner image under a load of session creates loses nothing, and
//! neither does rolling it back; an exercise built through one runner reaches every node through
//! the fleet's registry and its sessions run its check there;
//! a node whose engine is killed is declared lost, its sessions end with `node_lost`, and its
//! learners' next sessions start elsewhere with the work copied before it died; when its
//! engine comes back, the node rejoins and the ended sessions' sandboxes are removed from it.
//!
//! Traffic goes only to the namespaces the fleet made (10.124.0.0/24) and to Docker's own API.
//! `scripts/fleet-down` removes everything at the end, whatever the outcome
//! (RUNNER_TEST_FLEET_KEEP=1 keeps the fleet up, for working on this test).

mod common;

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const FLEET: &str = "ertest";
const SUBNET: &str = "10.124.0";
const LOST_SECS: u64 = 15;
const COPY_SECS: u64 = 3;
const IMAGE: &str = "exercise-runner/base:latest";

struct Fleet {
    v: Value,
    client: reqwest::Client,
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

impl Fleet {
    fn up() -> Fleet {
        common::require_docker();
        // Whatever fleet-up made before it failed goes too: the fleet is torn down by its Drop
        // only once it exists.
        let v = match std::panic::catch_unwind(Self::fleet_up) {
            Ok(v) => v,
            Err(panic) => {
                Self::down();
                std::panic::resume_unwind(panic)
            }
        };
        Fleet { v, client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap() }
    }

    /// `scripts/fleet-down`: removes everything of the test's fleet (unless
    /// RUNNER_TEST_FLEET_KEEP=1).
    fn down() {
        if std::env::var("RUNNER_TEST_FLEET_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let out = Command::new(script("fleet-down")).env("FLEET_NAME", FLEET).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("scripts/fleet-down failed: {out:?}");
        }
    }

    /// `scripts/fleet-up 3`: makes the fleet, or brings back what of it is down; its JSON.
    fn fleet_up() -> Value {
        let out = Command::new(script("fleet-up"))
            .arg("3")
            .env("FLEET_NAME", FLEET)
            .env("FLEET_SUBNET", SUBNET)
            .env("FLEET_NODE_LOST_SECS", LOST_SECS.to_string())
            .env("FLEET_WORKSPACE_COPY_SECS", COPY_SECS.to_string())
            .env("RUNNER_BINARY", env!("CARGO_BIN_EXE_runner"))
            .output()
            .expect("running scripts/fleet-up");
        assert!(
            out.status.success(),
            "scripts/fleet-up 3 failed (it needs root, iproute2 and the host's Docker engine):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("fleet-up prints one JSON object")
    }

    /// Node `i`'s runner (1-based, as fleet-up names them).
    fn api(&self, i: usize) -> String {
        self.v["nodes"][i - 1]["api"].as_str().unwrap().to_string()
    }

    fn node_id(&self, i: usize) -> String {
        self.v["nodes"][i - 1]["node_id"].as_str().unwrap().to_string()
    }

    /// Which of nodes 1..=3 a runner's node name is.
    fn index_of(&self, node: &str) -> usize {
        (1..=3).find(|i| self.node_id(*i) == node).unwrap_or_else(|| panic!("unknown node {node}"))
    }

    /// The sandbox containers of a session on node `i`'s engine.
    fn containers_on(&self, i: usize, session: &str) -> Vec<String> {
        let host = self.v["nodes"][i - 1]["docker_host"].as_str().unwrap();
        let filter = format!("label=exercise-runner.session={session}");
        let out = Command::new("docker").args(["-H", host, "ps", "-q", "--filter", &filter]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    async fn call(&self, via: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.api(via)));
        req = req.bearer_auth(self.v["token"].as_str().unwrap());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path} via node {via}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn session(&self, via: usize, learner: &str) -> Value {
        let (status, v) = self
            .call(via, reqwest::Method::POST, "/v1/sessions", Some(json!({"learner": learner, "exercise": "fleet"})))
            .await;
        assert!(status == 201 || status == 200, "POST /v1/sessions for {learner} via node {via}: {status} {v}");
        v
    }

    async fn nodes(&self, via: usize) -> HashMap<String, Value> {
        let (status, v) = self.call(via, reqwest::Method::GET, "/v1/nodes", None).await;
        assert_eq!(status, 200, "{v}");
        v["nodes"].as_array().unwrap().iter().map(|n| (n["name"].as_str().unwrap().to_string(), n.clone())).collect()
    }

    /// Runs a shell command as the learner in the session's sandbox on node `i`; its output.
    fn learner_sh(&self, i: usize, session: &str, script: &str) -> String {
        let container =
            self.containers_on(i, session).pop().unwrap_or_else(|| panic!("no sandbox of {session} on node {i}"));
        let host = self.v["nodes"][i - 1]["docker_host"].as_str().unwrap();
        let out = Command::new("docker")
            .args(["-H", host, "exec", "-u", "1000:1000", &container, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One value from the fleet's database.
    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([self.v["database_url"].as_str().unwrap(), "-qtAX", "-c", sql])
            .output()
            .expect("psql (scripts/test-postgres.sh installs it)");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// When the fleet's database last copied a learner's workspace off its node (ms), if ever.
    fn copied_at(&self, learner: &str) -> Option<i64> {
        self.psql(&format!("SELECT taken_at FROM workspace_copies WHERE learner = '{learner}' AND exercise = 'fleet'"))
            .parse()
            .ok()
    }

    /// The pid of node `i`'s dockerd, which fleet-up started (its pidfile).
    fn dockerd_pid(&self, i: usize) -> i32 {
        let state = self.v["state_dir"].as_str().unwrap();
        let pid = std::fs::read_to_string(format!("{state}/nodes/node{i}/dockerd.pid")).unwrap();
        pid.trim().parse().unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        Self::down();
    }
}

async fn rolling_update_under_load(fleet: &Fleet) {
    let (_, before) = fleet.call(1, reqwest::Method::GET, "/v1/sessions?state=running&limit=100", None).await;
    let before: Vec<Value> = before["sessions"].as_array().unwrap().clone();
    // The same image under a new tag on every node: a new service spec, so Swarm replaces each
    // node's task in turn.
    let image = fleet.v["image"].as_str().unwrap().to_string();
    for i in 1..=3 {
        let host = fleet.v["nodes"][i - 1]["docker_host"].as_str().unwrap();
        let ok =
            Command::new("docker").args(["-H", host, "tag", &image, "exercise-runner/runner:rolled"]).status().unwrap();
        assert!(ok.success());
    }
    let host = fleet.v["nodes"][0]["docker_host"].as_str().unwrap().to_string();
    let service = format!("{}_runner", fleet.v["stack"].as_str().unwrap());
    let update = tokio::process::Command::new("docker")
        .args(["-H", &host, "service", "update", "--detach=false", "--quiet", "--update-monitor", "5s"])
        .args(["--rollback-monitor", "5s"])
        .args(["--image", "exercise-runner/runner:rolled", &service])
        .output();
    let load = async {
        let mut created = Vec::new();
        let mut refused = 0;
        let mut n = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(240) {
            n += 1;
            let learner = format!("rolling-{n}");
            // As a web app behind a load balancer would: the next runner when one is away.
            let mut done = false;
            for attempt in 0..30 {
                let via = 1 + (n + attempt) % 3;
                let r = fleet
                    .client
                    .post(format!("{}/v1/sessions", fleet.api(via)))
                    .bearer_auth(fleet.v["token"].as_str().unwrap())
                    .json(&json!({"learner": learner, "exercise": "fleet"}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        created.push(v);
                        done = true;
                        break;
                    }
                    Ok(r) if r.status().as_u16() == 503 => refused += 1,
                    Ok(r) => {
                        let status = r.status();
                        panic!(
                            "a create during the rolling update answered {status}: {}",
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(_) => refused += 1, // that runner is restarting
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(done, "{learner} got no session through any runner during the update");
            if n >= 12 && UPDATE_DONE.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        (created, refused)
    };
    let (updated, (created, refused)) = tokio::join!(
        async {
            let out = update.await.unwrap();
            UPDATE_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        },
        load
    );
    assert!(updated.status.success(), "docker service update: {}", String::from_utf8_lossy(&updated.stderr));
    eprintln!("rolling update: {} sessions created, {refused} attempts refused or unanswered", created.len());
    // Every node runs the new image's task, and answers.
    until(Duration::from_secs(60), "three nodes up after the update", || async {
        let nodes = fleet.nodes(1).await;
        (nodes.len() == 3 && nodes.values().all(|n| n["up"] == true)).then_some(())
    })
    .await;
    // Nothing was lost: the sessions from before and those made during the update are running,
    // each with one sandbox, on its node.
    // A create answered while its runner was being replaced may come back `starting`: the
    // start lease its runner took (runner::sessions::START_LEASE, 90 s) must lapse before the
    // node's next runner takes the start over at a reconciliation.
    for s in before.iter().chain(&created) {
        let id = s["id"].as_str().unwrap();
        let v = until(Duration::from_secs(150), "every session running after the rolling update", || async {
            let (_, v) = fleet.call(2, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await;
            (v["state"] != "starting").then_some(v)
        })
        .await;
        assert_eq!(v["state"], "running", "after the rolling update: {v}");
        let home = fleet.index_of(v["node"].as_str().unwrap());
        assert_eq!(fleet.containers_on(home, id).len(), 1, "session {id} keeps its one sandbox on node {home}");
    }
    let learners: HashSet<&str> = created.iter().filter_map(|s| s["learner"].as_str()).collect();
    assert_eq!(learners.len(), created.len(), "no learner got two sessions");

    // And rolled back the same way (`docker service rollback`): the sessions live on.
    let rolled_back = Command::new("docker")
        .args(["-H", &host, "service", "rollback", "--detach=false", "--quiet", &service])
        .output()
        .unwrap();
    assert!(rolled_back.status.success(), "docker service rollback: {}", String::from_utf8_lossy(&rolled_back.stderr));
    let spec = Command::new("docker")
        .args(["-H", &host, "service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", &service])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&spec.stdout).trim(), image, "the service runs the image from before again");
    until(Duration::from_secs(60), "three nodes up after the rollback", || async {
        let nodes = fleet.nodes(1).await;
        (nodes.len() == 3 && nodes.values().all(|n| n["up"] == true)).then_some(())
    })
    .await;
    // (Spread over the three runners: each has the token's rate limit of its own.)
    for (i, s) in before.iter().chain(&created).enumerate() {
        let id = s["id"].as_str().unwrap();
        let (_, v) = fleet.call(1 + i % 3, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(v["state"], "running", "after the rollback: {v}");
    }
}

static UPDATE_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

const BUILT: &str = "shell-wordcount";

/// Submits exercise-images/examples/shell-wordcount as a build through node 3's runner (whose
/// runner is not restarted before the build is looked at; a restart fails the builds it was
/// running); its id.
async fn submit_wordcount(fleet: &Fleet) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../exercise-images/examples").join(BUILT);
    let r = fleet
        .client
        .post(format!("{}/v1/exercises/{BUILT}/builds", fleet.api(3)))
        .bearer_auth(fleet.v["token"].as_str().unwrap())
        .header("content-type", "application/x-tar")
        .body(common::tar_dir(&dir))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let b: Value = r.json().await.unwrap();
    b["id"].as_str().unwrap().to_string()
}

/// The build succeeds (whichever runner built it), its image reaches every node's engine from
/// the fleet's registry, and a session of it on each node runs the exercise's own check.
async fn built_exercise_runs_on_every_node(fleet: &Fleet, build: &str) {
    let b = until(Duration::from_secs(600), "the build to end", || async {
        let (_, b) = fleet.call(1, reqwest::Method::GET, &format!("/v1/builds/{build}"), None).await;
        (!matches!(b["state"].as_str(), Some("queued" | "building" | "testing"))).then_some(b)
    })
    .await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let image = b["image"].as_str().unwrap().to_string();
    for i in 1..=3 {
        let host = fleet.v["nodes"][i - 1]["docker_host"].as_str().unwrap();
        let image = image.as_str();
        until(Duration::from_secs(120), "the built image on every node", || async move {
            let out = Command::new("docker").args(["-H", host, "image", "inspect", image]).output().unwrap();
            out.status.success().then_some(())
        })
        .await;
    }
    let registry = fleet.v["registry"].as_str().unwrap();
    let (repo, tag) = image.rsplit_once(':').unwrap();
    let tags: Value =
        fleet.client.get(format!("http://{registry}/v2/{repo}/tags/list")).send().await.unwrap().json().await.unwrap();
    assert!(tags["tags"].as_array().unwrap().iter().any(|t| t == tag), "the version is in the registry: {tags}");
    let availability = |node: usize, a: &'static str| async move {
        let path = format!("/v1/nodes/{}/availability", fleet.node_id(node));
        let (status, v) = fleet.call(1, reqwest::Method::PUT, &path, Some(json!({"availability": a}))).await;
        assert_eq!(status, 200, "{v}");
    };
    for home in 1..=3 {
        for other in (1..=3).filter(|o| *o != home) {
            availability(other, "pause").await;
        }
        let learner = format!("author-check-{home}");
        let learner = learner.as_str();
        let s = until(Duration::from_secs(60), "a session of the built exercise", || async move {
            let body = json!({"learner": learner, "exercise": BUILT});
            let (status, v) = fleet.call(3, reqwest::Method::POST, "/v1/sessions", Some(body)).await;
            assert!(status == 201 || status == 503, "{status} {v}");
            (status == 201).then_some(v)
        })
        .await;
        assert_eq!((s["state"].as_str(), s["image"].as_str()), (Some("running"), Some(image.as_str())), "{s}");
        assert_eq!(fleet.index_of(s["node"].as_str().unwrap()), home, "{s}");
        let id = s["id"].as_str().unwrap();
        let (status, check) =
            fleet.call(1, reqwest::Method::POST, &format!("/v1/sessions/{id}/checks"), Some(json!({}))).await;
        assert_eq!(status, 201, "{check}");
        assert_eq!(
            check["passed"], false,
            "the exercise's own check fails on the starting files on node {home}: {check}"
        );
        assert!(!check["output"].as_str().unwrap_or_default().is_empty(), "{check}");
        let (status, _) = fleet.call(1, reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(status, 200);
        for other in (1..=3).filter(|o| *o != home) {
            availability(other, "active").await;
        }
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A terminal of the session's IDE, opened through node `via`'s runner as a browser would
/// (token → cookie → socket), answers `echo`.
async fn terminal_answers(fleet: &Fleet, via: usize, session: &Value) {
    let id = session["id"].as_str().unwrap();
    let (_, fresh) = fleet.call(via, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await;
    let r = fleet.client.get(fresh["ide_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 303, "the token is exchanged for a cookie");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let base = fleet.api(via);
    let r = fleet.client.post(format!("{base}/ide/{id}/api/terminals")).header("cookie", &cookie).send().await.unwrap();
    assert!(r.status().is_success(), "creating a terminal: {}", r.status());
    let terminal: Value = r.json().await.unwrap();
    let url = format!(
        "{}/ide/{id}/api/terminals/{}/socket",
        base.replace("http://", "ws://"),
        terminal["id"].as_str().unwrap()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut().insert("origin", base.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("the terminal's WebSocket, relayed");
    ws.send(Message::Text(json!({"type": "input", "data": "echo relayed-$((6*7))\r"}).to_string().into()))
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("relayed-42") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("the relayed terminal ended before answering: {other:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_engines_spreads_sessions_relays_the_ide_obeys_drains_rolls_updates_and_survives_a_lost_node()
{
    let fleet = Fleet::up();

    // Every runner sees the three nodes up; each answers for its own.
    let nodes = until(Duration::from_secs(30), "three nodes up", || async {
        let nodes = fleet.nodes(2).await;
        (nodes.len() == 3 && nodes.values().all(|n| n["up"] == true)).then_some(nodes)
    })
    .await;
    assert_eq!(nodes.values().filter(|n| n["this"] == true).count(), 1, "{nodes:?}");
    // An author's build, submitted now (it runs while the rest goes on; see
    // `built_exercise_runs_on_every_node`).
    let built = submit_wordcount(&fleet).await;
    for n in nodes.values() {
        // Runners reach each other over TLS on the fleet listener, with the fleet's certificate.
        let url = n["url"].as_str().unwrap();
        assert!(url.starts_with("https://10.124.0.") && url.ends_with(":8443"), "{n}");
        assert_eq!(n["availability"], "active", "{n}");
        assert!(n["capacity"]["max_sessions"].as_i64().unwrap() > 0, "{n}");
    }

    let (status, v) = fleet
        .call(
            1,
            reqwest::Method::PUT,
            "/v1/exercises/fleet",
            Some(json!({"image": IMAGE, "limits": {"memory_mb": 128, "workspace_mb": 32}})),
        )
        .await;
    assert!(status == 200 || status == 201, "{v}");

    // Sessions started through node 1 spread over the nodes; each sandbox runs on its node's
    // engine, and on no other.
    let mut sessions = Vec::new();
    for i in 0..6 {
        sessions.push(fleet.session(1, &format!("learner-{i}")).await);
    }
    let mut by_node: HashMap<usize, Vec<Value>> = HashMap::new();
    for s in &sessions {
        assert_eq!(s["state"], "running", "{s}");
        let home = fleet.index_of(s["node"].as_str().unwrap());
        let id = s["id"].as_str().unwrap();
        for other in 1..=3 {
            let n = fleet.containers_on(other, id).len();
            assert_eq!(n, usize::from(other == home), "session {id} on node {home}: {n} containers on node {other}");
        }
        by_node.entry(home).or_default().push(s.clone());
    }
    assert_eq!(by_node.len(), 3, "six new learners on three empty nodes use all three: {:?}", by_node.keys());
    let (_, v) = fleet.call(3, reqwest::Method::GET, "/v1/nodes", None).await;
    let counted: i64 =
        v["nodes"].as_array().unwrap().iter().map(|n| n["capacity"]["live_sessions"].as_i64().unwrap()).sum();
    assert_eq!(counted, 6, "{v}");

    // The IDE of a session on node 3, through node 1's runner: a relayed terminal over the API,
    // then the whole IDE in real Chromium.
    let remote = by_node[&3][0].clone();
    terminal_answers(&fleet, 1, &remote).await;
    let (_, fresh) =
        fleet.call(1, reqwest::Method::GET, &format!("/v1/sessions/{}", remote["id"].as_str().unwrap()), None).await;
    let ide_url = fresh["ide_url"].as_str().unwrap().to_string();
    assert!(ide_url.starts_with(&fleet.api(1)), "the IDE is reached at the fleet's public URL (node 1): {ide_url}");
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/fleet");
    let out = tokio::process::Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/fleet-ide.mjs"))
        .env("IDE_URL", &ide_url)
        .env("ARTIFACTS", &artifacts)
        .output()
        .await
        .expect("running node tests/e2e/fleet-ide.mjs (scripts/test installs node, npm packages and chromium)");
    assert!(
        out.status.success(),
        "the browser could not use the IDE of a node-3 session through node 1 (screenshots in {}):\n{}{}",
        artifacts.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A stop through node 2's runner removes the sandbox on the node that runs it.
    let (far, far_node) = (by_node[&1][0].clone(), 1);
    let far_id = far["id"].as_str().unwrap();
    let (status, v) = fleet.call(2, reqwest::Method::DELETE, &format!("/v1/sessions/{far_id}"), None).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    assert!(fleet.containers_on(far_node, far_id).is_empty(), "the sandbox is gone from node {far_node}");

    // A signed relay cannot be forged: a made-up fleet signature is refused before anything runs.
    let r = fleet
        .client
        .delete(format!("{}/v1/sessions/{}", fleet.api(3), by_node[&3][0]["id"].as_str().unwrap()))
        .bearer_auth(fleet.v["token"].as_str().unwrap())
        .header("x-runner-fleet", "v1;from=intruder;ts=1;sig=00")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "fleet_signature_invalid", "{refused}");
    assert_eq!(fleet.containers_on(3, by_node[&3][0]["id"].as_str().unwrap()).len(), 1, "nothing was stopped");
    // The fleet listener speaks only TLS: a request in clear gets no answer.
    let node3 = fleet.v["nodes"][2]["address"].as_str().unwrap();
    let clear = fleet.client.get(format!("http://{node3}:8443/v1/nodes")).send().await;
    assert!(clear.is_err(), "HTTP in clear on the fleet listener: {clear:?}");

    // Node 2 drained through the API: no new sessions there, its live ones keep running.
    let drained = fleet.node_id(2);
    let (status, v) = fleet
        .call(
            1,
            reqwest::Method::PUT,
            &format!("/v1/nodes/{drained}/availability"),
            Some(json!({"availability": "drain"})),
        )
        .await;
    assert_eq!((status, v["availability"].as_str()), (200, Some("drain")), "{v}");
    let (status, v) = fleet
        .call(
            1,
            reqwest::Method::PUT,
            &format!("/v1/nodes/{drained}/availability"),
            Some(json!({"availability": "off"})),
        )
        .await;
    assert_eq!(status, 422, "an unknown availability is refused: {v}");
    for i in 0..4 {
        let s = fleet.session(3, &format!("after-drain-{i}")).await;
        assert_ne!(s["node"].as_str(), Some(drained.as_str()), "a drained node got a new session: {s}");
    }
    for s in by_node.get(&2).into_iter().flatten() {
        let (_, v) =
            fleet.call(1, reqwest::Method::GET, &format!("/v1/sessions/{}", s["id"].as_str().unwrap()), None).await;
        assert_eq!(v["state"], "running", "a drained node's live session keeps running: {v}");
    }
    // Its learners move off as their sessions end: the next session starts elsewhere, with
    // their files (copied when the session ended).
    let leaving = by_node[&2][0].clone();
    let leaving_id = leaving["id"].as_str().unwrap();
    fleet.learner_sh(2, leaving_id, "echo work-before-the-drain > /workspace/kept.txt");
    let volume = fleet.psql(&format!(
        "SELECT volume FROM workspaces WHERE learner = '{}' AND exercise = 'fleet'",
        leaving["learner"].as_str().unwrap()
    ));
    let left_behind = std::path::PathBuf::from(format!(
        "{}/nodes/node2/runner-data/workspaces/{volume}.ext4",
        fleet.v["state_dir"].as_str().unwrap()
    ));
    assert!(left_behind.exists(), "their workspace is a file on node 2's disk: {}", left_behind.display());
    let (status, v) = fleet.call(1, reqwest::Method::DELETE, &format!("/v1/sessions/{leaving_id}"), None).await;
    assert_eq!(status, 200, "{v}");
    let moved = fleet.session(1, leaving["learner"].as_str().unwrap()).await;
    let moved_to = fleet.index_of(moved["node"].as_str().unwrap());
    assert_ne!(moved_to, 2, "the drained node's learner starts elsewhere: {moved}");
    assert_eq!(
        fleet.learner_sh(moved_to, moved["id"].as_str().unwrap(), "cat /workspace/kept.txt").trim(),
        "work-before-the-drain",
        "their files came along"
    );
    // The drained node deletes its copy of their workspace, which the record no longer names.
    until(Duration::from_secs(90), "the moved workspace's file gone from node 2", || async {
        (!left_behind.exists()).then_some(())
    })
    .await;
    let (status, _) = fleet
        .call(
            1,
            reqwest::Method::PUT,
            &format!("/v1/nodes/{drained}/availability"),
            Some(json!({"availability": "active"})),
        )
        .await;
    assert_eq!(status, 200);

    // Node 2 drained through Swarm (`docker node update`): Swarm removes its task, but the
    // node's runner stays for its live sessions, which keep working; it takes no new ones.
    let host1 = fleet.v["nodes"][0]["docker_host"].as_str().unwrap().to_string();
    let swarm = |availability: &str| {
        let ok = Command::new("docker")
            .args(["-H", &host1, "node", "update", "--availability", availability, &drained])
            .output()
            .unwrap();
        assert!(ok.status.success(), "docker node update: {}", String::from_utf8_lossy(&ok.stderr));
    };
    swarm("drain");
    until(Duration::from_secs(30), "node 2 drained as Swarm says", || async {
        let n = &fleet.nodes(1).await[&drained];
        (n["swarm_availability"] == "drain" && n["availability"] == "drain" && n["up"] == true).then_some(())
    })
    .await;
    let (_, list) = fleet.call(1, reqwest::Method::GET, "/v1/sessions?state=running&limit=100", None).await;
    let staying = list["sessions"].as_array().unwrap().iter().find(|s| s["node"] == drained.as_str()).cloned();
    let staying = staying.expect("a live session on node 2");
    terminal_answers(&fleet, 1, &staying).await;
    for i in 0..3 {
        let s = fleet.session(1, &format!("after-swarm-drain-{i}")).await;
        assert_ne!(s["node"].as_str(), Some(drained.as_str()), "a Swarm-drained node got a new session: {s}");
    }
    let first_runner = fleet.nodes(1).await[&drained]["started_at"].clone();
    swarm("active");
    until(Duration::from_secs(90), "node 2 active again, its runner replaced by the new task's", || async {
        let n = &fleet.nodes(1).await[&drained];
        (n["availability"] == "active" && n["up"] == true && n["started_at"] != first_runner).then_some(())
    })
    .await;
    let (_, v) =
        fleet.call(1, reqwest::Method::GET, &format!("/v1/sessions/{}", staying["id"].as_str().unwrap()), None).await;
    assert_eq!(v["state"], "running", "{v}");

    // An exercise built through one runner runs on every node: its image went to the fleet's
    // registry before its version existed, and every node pulled it.
    built_exercise_runs_on_every_node(&fleet, &built).await;

    // A rolling update of the runner image (node by node, as Swarm does it) under a load of
    // session creates: every create gets a session or a clean refusal (never a 5xx other than
    // a 503 to retry), no learner gets two, and every session lives on with its sandbox.
    rolling_update_under_load(&fleet).await;

    // An erasure through node 1 of a learner whose sandbox runs on another node: that node
    // stops it and deletes their files, then the records go.
    let (_, list) = fleet.call(1, reqwest::Method::GET, "/v1/sessions?state=running&limit=100", None).await;
    let erased = list["sessions"].as_array().unwrap().iter().find(|s| s["node"] != fleet.node_id(1)).cloned().unwrap();
    let (learner, erased_id) = (erased["learner"].as_str().unwrap(), erased["id"].as_str().unwrap());
    let erased_on = fleet.index_of(erased["node"].as_str().unwrap());
    // Their files kept as a snapshot (a reset, done on their node), read through another runner:
    // snapshot blobs live in the fleet's database, not on the disk of the node that took them.
    fleet.learner_sh(erased_on, erased_id, "echo kept-in-a-snapshot > /workspace/snap.txt");
    let (status, reset) =
        fleet.call(1, reqwest::Method::POST, &format!("/v1/workspaces/{learner}/fleet/reset"), Some(json!({}))).await;
    assert_eq!(status, 200, "{reset}");
    let (snapshot, sha) = (reset["snapshot"]["id"].as_str().unwrap(), reset["snapshot"]["sha256"].as_str().unwrap());
    let reader = (1..=3).find(|i| *i != erased_on).unwrap();
    let r = fleet
        .client
        .get(format!("{}/v1/snapshots/{snapshot}", fleet.api(reader)))
        .bearer_auth(fleet.v["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a snapshot taken on node {erased_on} is read through node {reader}");
    let gz = r.bytes().await.unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let names: Vec<String> = tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with("snap.txt")), "{names:?}");
    let blobs = |sha: &str| fleet.psql(&format!("SELECT COUNT(*) FROM snapshot_blobs WHERE blob = '{sha}'"));
    assert_eq!(blobs(sha), "1");
    let (status, v) = fleet.call(1, reqwest::Method::DELETE, &format!("/v1/learners/{learner}"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["removed"]["stopped_sessions"], 1, "{v}");
    assert_eq!(v["removed"]["workspace_files"], 1, "{v}");
    assert!(
        fleet.containers_on(erased_on, erased_id).is_empty(),
        "the erased learner's sandbox is gone from node {erased_on}"
    );
    let (status, _) = fleet.call(2, reqwest::Method::GET, &format!("/v1/sessions/{erased_id}"), None).await;
    assert_eq!(status, 404, "their records are gone");
    assert_eq!(blobs(sha), "0", "and their snapshot's blob, wherever it was taken");

    // Node 3's engine is killed: the fleet declares the node lost, its sessions end with
    // `node_lost`, and their learners' next sessions start on another node.
    let on_three: Vec<Value> = {
        let (_, list) = fleet.call(1, reqwest::Method::GET, "/v1/sessions?state=running&limit=100", None).await;
        list["sessions"].as_array().unwrap().iter().filter(|s| s["node"] == fleet.node_id(3)).cloned().collect()
    };
    assert!(!on_three.is_empty());
    // Work done on node 3 reaches the fleet's database within RUNNER_WORKSPACE_COPY_SECS.
    let worker = on_three[0].clone();
    let worker_learner = worker["learner"].as_str().unwrap().to_string();
    fleet.learner_sh(3, worker["id"].as_str().unwrap(), "echo work-on-a-node-that-dies > /workspace/lost.txt");
    let written = chrono_now_ms();
    let (status, _) = fleet
        .call(
            1,
            reqwest::Method::POST,
            &format!("/v1/sessions/{}/activity", worker["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 204);
    until(Duration::from_secs(COPY_SECS * 5 + 10), "a copy of the work on node 3", || async {
        fleet.copied_at(&worker_learner).filter(|t| *t >= written).map(|_| ())
    })
    .await;
    let worker_volume =
        fleet.psql(&format!("SELECT volume FROM workspaces WHERE learner = '{worker_learner}' AND exercise = 'fleet'"));
    let worker_file = std::path::PathBuf::from(format!(
        "{}/nodes/node3/runner-data/workspaces/{worker_volume}.ext4",
        fleet.v["state_dir"].as_str().unwrap()
    ));
    assert!(worker_file.exists(), "{}", worker_file.display());
    let pid = fleet.dockerd_pid(3);
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success(), "killing node 3's dockerd (pid {pid})");
    let lost = fleet.node_id(3);
    let started = Instant::now();
    until(Duration::from_secs(LOST_SECS + 30), "node 3 declared lost", || async {
        let nodes = fleet.nodes(1).await;
        let n = &nodes[&lost];
        (n["up"] == false && !n["lost_at"].is_null()).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(LOST_SECS - 6),
        "not declared lost before its heartbeats could lapse"
    );
    for s in &on_three {
        let id = s["id"].as_str().unwrap();
        let ended = until(Duration::from_secs(20), "the lost node's session ended", || async {
            let (_, v) = fleet.call(2, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await;
            (v["state"] == "stopped").then_some(v)
        })
        .await;
        assert_eq!(ended["failure_reason"], "its node was lost", "{ended}");
        let (_, events) = fleet.call(2, reqwest::Method::GET, "/v1/events?types=session.ended&limit=1000", None).await;
        let told =
            events["events"].as_array().into_iter().flatten().any(|e| {
                e["type"] == "session.ended" && e["data"]["session"] == id && e["data"]["reason"] == "node_lost"
            });
        assert!(told, "the web app is told session {id} ended with node_lost: {events}");
        let again = fleet.session(1, s["learner"].as_str().unwrap()).await;
        assert_eq!(again["state"], "running", "{again}");
        assert_ne!(again["node"].as_str(), Some(lost.as_str()), "the next session starts elsewhere: {again}");
        if s["learner"] == worker_learner.as_str() {
            let home = fleet.index_of(again["node"].as_str().unwrap());
            assert_eq!(
                fleet.learner_sh(home, again["id"].as_str().unwrap(), "cat /workspace/lost.txt").trim(),
                "work-on-a-node-that-dies",
                "the work copied before the node died is in the next session"
            );
        }
    }

    // Node 3's engine comes back (fleet-up starts what is down): its runner rejoins, the node is
    // no longer lost, and the sandboxes of the sessions that ended meanwhile are gone from it,
    // not adopted or duplicated.
    Fleet::fleet_up();
    until(Duration::from_secs(120), "node 3 back and heartbeating", || async {
        let n = &fleet.nodes(1).await[&lost];
        (n["up"] == true && n["lost_at"].is_null()).then_some(())
    })
    .await;
    for s in &on_three {
        let id = s["id"].as_str().unwrap();
        until(Duration::from_secs(60), "the ended sessions' sandboxes gone from node 3", || async {
            fleet.containers_on(3, id).is_empty().then_some(())
        })
        .await;
        let (_, v) = fleet.call(3, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(v["state"], "stopped", "a returning node does not bring an ended session back: {v}");
    }
    // Nor keeps the files of a workspace that moved on while it was away.
    until(Duration::from_secs(90), "the moved workspace's file gone from node 3", || async {
        (!worker_file.exists()).then_some(())
    })
    .await;

    // An operator stops an exercise's sessions through one runner: every node stops its own.
    let (_, list) = fleet.call(1, reqwest::Method::GET, "/v1/sessions?state=running&limit=500", None).await;
    let running = list["sessions"].as_array().unwrap().clone();
    let (status, v) = fleet.call(2, reqwest::Method::POST, "/v1/exercises/fleet/stop-sessions", Some(json!({}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stopped"].as_u64(), Some(running.len() as u64), "{v}");
    for s in &running {
        let home = fleet.index_of(s["node"].as_str().unwrap());
        assert!(fleet.containers_on(home, s["id"].as_str().unwrap()).is_empty(), "{s}");
    }
}
