//! The fleet (docs/ARCHITECTURE.md, "Fleet"): what a fleet of sandbox hosts costs over one host,
//! on a local fleet of three Docker engines this benchmark brings up itself (`scripts/fleet-up 3`,
//! fleet `erbench` on 10.125.0.0/24) and takes down at the end (`scripts/fleet-down`, also when
//! it fails or panics). Side by side in one run:
//!
//! 1. Session start (`POST /v1/sessions` → 201 `running`, new learners): through the runner of
//!    the node that ends up owning the session, through another node's runner (placed there,
//!    relayed to the owner), and a bare hardened `docker run -d` of the same image on the owner's
//!    engine. The two other nodes are drained through the API (`PUT /v1/nodes/{name}/availability`)
//!    so placement has one choice; each node is the owner for a third of the rounds (after one
//!    uncounted warm-up round), the paths interleaved within a round, and every session is
//!    stopped before the next. A session's start includes making its learner's new workspace.
//! 2. The IDE WebSocket echo (64-byte messages, one at a time per connection) of a session on
//!    node 3, through node 3's own runner (direct) and through node 1's (relayed), with 1 and 10
//!    connections.
//! 3. Placement under racing runners: new learners sent to all three runners at once (10 in
//!    flight), against as many sent to node 1's runner alone (10 in flight, and one at a time);
//!    where they landed, and whether any node took more than its capacity; then
//!    the pure placement function (`runner::fleet::placement::rank`) in-process over 3 and 100
//!    synthetic nodes.
//!
//! Run as root (scripts/fleet-up; the host's engine with crun, and exercise-runner/base:latest
//! made by `runner images build-base`):
//!
//!     cargo bench -p runner --bench fleet
//!     BENCH_SESSIONS=6 BENCH_SECS=1 BENCH_RACE=12 cargo bench -p runner --bench fleet   (short)
//!
//! `BENCH_SESSIONS` (20): session starts measured per path. `BENCH_SECS` (5): seconds per echo
//! cell. `BENCH_RACE` (30): learners per placement race, `BENCH_RACE_CONCURRENCY` (10) in flight.
//! `BENCH_RANK_SECS` (1): seconds per in-process placement cell. `BENCH_KEEP_FLEET=1` leaves the
//! fleet up at the end (for working on this file: a fleet that is up is reused by the next run).
//!
//! The fleet's runner image is built from `RUNNER_BINARY`, by default the `runner` binary of this
//! very build (`target/release/runner`, which `cargo bench` builds beside the benchmark). The
//! bare baseline of (1) is `docker -H <node's engine> run -d` with the runner's policy as flags
//! (read-only root, no capabilities, no-new-privileges, 256 pids, 128 MiB without swap, no
//! network, user 1000:1000, a /tmp tmpfs, an init, crun), no workspace mount, then `rm -f`; it
//! includes the docker CLI's own start-up, as a script's would. Traffic goes only to the fleet's
//! addresses and to the Docker sockets.

use std::{
    collections::HashMap,
    hint::black_box,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use runner::{
    fleet::placement::{self, Want},
    lifecycle::Availability,
    store::{NodeLoad, NodeRecord},
};
use serde_json::{json, Value};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};

const FLEET: &str = "erbench";
const SUBNET: &str = "10.125.0";
const IMAGE: &str = "exercise-runner/base:latest";
const EXERCISE: &str = "fleet-bench";
const NODES: usize = 3;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and p99 of a sample.
fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

fn script(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

/// Takes the fleet down when dropped (the run's end, an error, a panic), unless
/// `BENCH_KEEP_FLEET=1`. Made before `fleet-up` runs: a half-made fleet goes too.
struct FleetGuard;

impl Drop for FleetGuard {
    fn drop(&mut self) {
        if std::env::var("BENCH_KEEP_FLEET").is_ok_and(|v| v == "1") {
            eprintln!("BENCH_KEEP_FLEET=1: fleet {FLEET} stays up (FLEET_NAME={FLEET} scripts/fleet-down removes it)");
            return;
        }
        eprintln!("taking fleet {FLEET} down");
        match Command::new(script("fleet-down")).env("FLEET_NAME", FLEET).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("scripts/fleet-down failed ({}):\n{}", o.status, String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("scripts/fleet-down could not run: {e}"),
        }
    }
}

struct Fleet {
    v: Value,
    token: String,
    client: reqwest::Client,
}

impl Fleet {
    fn up(binary: &std::path::Path) -> anyhow::Result<Fleet> {
        eprintln!("bringing up fleet {FLEET} ({SUBNET}.0/24) with scripts/fleet-up 3 (its log below)");
        let out = Command::new(script("fleet-up"))
            .arg(NODES.to_string())
            .env("FLEET_NAME", FLEET)
            .env("FLEET_SUBNET", SUBNET)
            .env("RUNNER_BINARY", binary)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| anyhow::anyhow!("running scripts/fleet-up: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/fleet-up 3 failed ({}): it needs root, iproute2 and the host's Docker engine (its log is above)",
            out.status
        );
        let v: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("fleet-up prints one JSON object: {e}"))?;
        let token = v["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token in fleet-up's JSON: {v}"))?.to_string();
        anyhow::ensure!(
            v["nodes"].as_array().map_or(0, Vec::len) >= NODES,
            "fleet-up made fewer than {NODES} nodes: {v}"
        );
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Fleet { v, token, client })
    }

    /// Node `i`'s runner (0-based here; fleet-up's node1 is 0).
    fn api(&self, i: usize) -> &str {
        self.v["nodes"][i]["api"].as_str().unwrap_or_default()
    }

    fn node_id(&self, i: usize) -> &str {
        self.v["nodes"][i]["node_id"].as_str().unwrap_or_default()
    }

    fn docker_host(&self, i: usize) -> &str {
        self.v["nodes"][i]["docker_host"].as_str().unwrap_or_default()
    }

    fn index_of(&self, node: &str) -> Option<usize> {
        (0..NODES).find(|i| self.node_id(*i) == node)
    }

    async fn call(
        &self,
        via: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.client.request(method.clone(), format!("{}{path}", self.api(via))).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| anyhow::anyhow!("{method} {path} via node{}: {e}", via + 1))?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// A new session through node `via`'s runner, timed to its answer; `Err` unless 201 `running`.
    async fn start(&self, via: usize, learner: &str) -> anyhow::Result<(Duration, Value)> {
        let t = Instant::now();
        let (status, v) = self
            .call(via, reqwest::Method::POST, "/v1/sessions", Some(json!({"learner": learner, "exercise": EXERCISE})))
            .await?;
        let took = t.elapsed();
        anyhow::ensure!(
            status == 201 && v["state"] == "running",
            "POST /v1/sessions for {learner} via node{}: {status} {v}",
            via + 1
        );
        Ok((took, v))
    }

    async fn stop(&self, via: usize, id: &str) -> anyhow::Result<()> {
        let (status, v) = self.call(via, reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None).await?;
        anyhow::ensure!(status == 200, "DELETE /v1/sessions/{id} via node{}: {status} {v}", via + 1);
        Ok(())
    }

    async fn set_availability(&self, node: usize, availability: &str) -> anyhow::Result<()> {
        let path = format!("/v1/nodes/{}/availability", self.node_id(node));
        let (status, v) =
            self.call(0, reqwest::Method::PUT, &path, Some(json!({"availability": availability}))).await?;
        anyhow::ensure!(status == 200 && v["availability"] == availability, "PUT {path} {availability}: {status} {v}");
        Ok(())
    }

    /// Only node `owner` takes new sessions (`None`: all of them).
    async fn only(&self, owner: Option<usize>) -> anyhow::Result<()> {
        for i in 0..NODES {
            self.set_availability(i, if owner.is_none_or(|o| o == i) { "active" } else { "drain" }).await?;
        }
        Ok(())
    }

    async fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let (status, v) = self.call(0, reqwest::Method::GET, "/v1/nodes", None).await?;
        anyhow::ensure!(status == 200, "GET /v1/nodes: {status} {v}");
        Ok(v["nodes"].as_array().cloned().unwrap_or_default())
    }

    /// Stops every live session of the fleet (what an error left behind).
    async fn stop_all(&self) {
        let Ok((_, list)) =
            self.call(0, reqwest::Method::GET, "/v1/sessions?state=starting,running&limit=1000", None).await
        else {
            return;
        };
        for s in list["sessions"].as_array().into_iter().flatten() {
            if let Some(id) = s["id"].as_str() {
                let owner = s["node"].as_str().and_then(|n| self.index_of(n)).unwrap_or(0);
                let _ = self.stop(owner, id).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary: PathBuf = std::env::var_os("RUNNER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_runner")));
    anyhow::ensure!(
        binary.is_file(),
        "no runner binary at {} (cargo bench builds target/release/runner beside this benchmark; \
         else `cargo build --release -p runner --bin runner`, or set RUNNER_BINARY)",
        binary.display()
    );
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    anyhow::ensure!(root, "scripts/fleet-up and scripts/fleet-down need root");
    let _guard = FleetGuard;
    let fleet = Fleet::up(&binary)?;
    let result = tokio::select! {
        r = run(&fleet) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if result.is_err() || std::env::var("BENCH_KEEP_FLEET").is_ok_and(|v| v == "1") {
        // The fleet stays up (kept) or goes down anyway; either way nothing of this run is live.
        let _ = fleet.only(None).await;
        fleet.stop_all().await;
    }
    result
}

async fn run(fleet: &Fleet) -> anyhow::Result<()> {
    let n: usize = env::<usize>("BENCH_SESSIONS", 20).max(1);
    let secs: f64 = env("BENCH_SECS", 5.0);
    let race: usize = env::<usize>("BENCH_RACE", 30).max(1);
    let race_concurrency: usize = env::<usize>("BENCH_RACE_CONCURRENCY", 10).max(1);
    let rank_secs: f64 = env("BENCH_RANK_SECS", 1.0);
    // Learners are new in every run, also on a fleet kept from an earlier one.
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = fleet.nodes().await?;
        if nodes.len() == NODES && nodes.iter().all(|n| n["up"] == true) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the fleet's {NODES} nodes are not all up: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, v) = fleet
        .call(
            0,
            reqwest::Method::PUT,
            &format!("/v1/exercises/{EXERCISE}"),
            Some(json!({"image": IMAGE, "limits": {"memory_mb": 128, "workspace_mb": 32}})),
        )
        .await?;
    anyhow::ensure!(status == 200 || status == 201, "PUT /v1/exercises/{EXERCISE}: {status} {v}");
    let mut nodes = fleet.nodes().await?;
    nodes.sort_by_key(|n| n["name"].as_str().and_then(|n| fleet.index_of(n)));
    println!(
        "fleet {FLEET}: {NODES} nodes ({}), {} cores on this machine; exercise {EXERCISE}: {IMAGE}, 128 MiB, 32 MiB workspace",
        (0..NODES).map(|i| format!("node{} {}", i + 1, fleet.api(i))).collect::<Vec<_>>().join(", "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for node in &nodes {
        let i = node["name"].as_str().and_then(|n| fleet.index_of(n)).map_or("?".into(), |i| (i + 1).to_string());
        println!("  node{i}: {}", node["capacity"]);
    }

    let starts = session_starts(fleet, n, &run_id).await;
    fleet.only(None).await?;
    starts?;
    let echo = ide_echo(fleet, secs, &run_id).await;
    fleet.only(None).await?;
    echo?;
    placement_race(fleet, race, race_concurrency, &run_id).await?;
    placement_in_process(rank_secs);
    Ok(())
}

/// The bare hardened start of the same image on node `i`'s engine, timed to `docker run -d`'s
/// answer, then its removal.
async fn bare_start(fleet: &Fleet, i: usize, name: &str) -> anyhow::Result<Duration> {
    let host = fleet.docker_host(i);
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(["-H", host, "run", "-d", "--name", name, "--label", "exercise-runner.bench=fleet"])
        .args(["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        .args(["--pids-limit", "256", "--memory", "128m", "--memory-swap", "128m", "--network", "none"])
        .args(["--user", "1000:1000", "--tmpfs", "/tmp", "--init", "--runtime", "crun", IMAGE])
        .stdin(Stdio::null())
        .output()
        .await?;
    let took = t.elapsed();
    let rm = tokio::process::Command::new("docker").args(["-H", host, "rm", "-f", name]).output().await?;
    anyhow::ensure!(out.status.success(), "docker run on node{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(rm.status.success(), "docker rm -f on node{}: {}", i + 1, String::from_utf8_lossy(&rm.stderr));
    Ok(took)
}

#[derive(Clone, Copy)]
enum Path3 {
    Owning,
    Relayed,
    Bare,
}

/// 1. Session start through the owning runner, through another (relayed), and bare.
async fn session_starts(fleet: &Fleet, n: usize, run_id: &str) -> anyhow::Result<()> {
    let (mut owning, mut relayed, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let mut counter = 0usize;
    for owner in 0..NODES {
        fleet.only(Some(owner)).await?;
        let rounds: Vec<usize> = (0..n).filter(|r| r % NODES == owner).collect();
        // One uncounted warm-up round per owner: its first sandbox and workspace, its engine's
        // first container of the image.
        for (k, round) in std::iter::once(usize::MAX).chain(rounds.iter().copied()).enumerate() {
            let warm_up = round == usize::MAX;
            // The order of the three paths turns every round; the non-owning runner alternates.
            let relay_via = (owner + 1 + k % 2) % NODES;
            let order = [Path3::Owning, Path3::Relayed, Path3::Bare];
            for p in 0..3 {
                counter += 1;
                let learner = format!("fb-{run_id}-s{counter}");
                match order[(p + k) % 3] {
                    Path3::Owning | Path3::Relayed => {
                        let relay = matches!(order[(p + k) % 3], Path3::Relayed);
                        let via = if relay { relay_via } else { owner };
                        let (took, s) = fleet.start(via, &learner).await?;
                        let id = s["id"].as_str().unwrap_or_default().to_string();
                        let landed = s["node"].as_str().and_then(|n| fleet.index_of(n));
                        fleet.stop(owner, &id).await?;
                        anyhow::ensure!(
                            landed == Some(owner),
                            "session {id} placed on node {:?}, not node{} (the only active one): {s}",
                            s["node"],
                            owner + 1
                        );
                        if !warm_up {
                            if relay { &mut relayed } else { &mut owning }.push(took);
                        }
                    }
                    Path3::Bare => {
                        let took = bare_start(fleet, owner, &format!("erbench-bare-{run_id}-{counter}")).await?;
                        if !warm_up {
                            bare.push(took);
                        }
                    }
                }
            }
        }
    }
    let (a50, a99) = quantiles(owning.clone());
    let (b50, b99) = quantiles(relayed.clone());
    let (c50, c99) = quantiles(bare.clone());
    println!();
    println!(
        "1. session start, new learners, {n} per path (each node the owner of a third, the other two drained; \
         paths interleaved; sessions stopped after each)"
    );
    println!("{:<46} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    for (label, p50, p99) in [
        ("(a) POST /v1/sessions to the owning runner", a50, a99),
        ("(b) POST /v1/sessions to another (relayed)", b50, b99),
        ("(c) bare hardened docker run -d, same engine", c50, c99),
    ] {
        println!("{label:<46} {:>10.1} {:>10.1}", ms(p50), ms(p99));
    }
    println!(
        "ratios: (b)/(a) p50 {:.2}x p99 {:.2}x (the relay's cost); (a)/(c) p50 {:.2}x p99 {:.2}x (the runner's over bare)",
        ms(b50) / ms(a50),
        ms(b99) / ms(a99),
        ms(a50) / ms(c50),
        ms(a99) / ms(c99)
    );
    Ok(())
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// One column of a row: messages per second over all connections, and round-trip percentiles.
#[derive(Clone, Default)]
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.0} msg/s p50 {:>6.3} p99 {:>6.3} ms", self.rate, ms(self.p50), ms(self.p99))
    }
}

/// One echo; a lost one fails the run instead of hanging it.
async fn round_trip(ws: &mut Ws, payload: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let echo = async {
        ws.send(Message::Text(payload.into())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => return anyhow::Ok(t.elapsed()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the echo socket closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), echo).await.map_err(|_| anyhow::anyhow!("no echo in 10 s"))?
}

/// Every connection sends a 64-byte message, waits for its echo, and again, for `secs` (after a
/// short warm-up); all connections at once.
async fn echo_load(conns: Vec<Ws>, secs: f64) -> anyhow::Result<Figures> {
    let payload: Arc<str> = "x".repeat(64).into();
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < start {
                    round_trip(&mut ws, &payload).await?;
                }
                while Instant::now() < end {
                    lat.push(round_trip(&mut ws, &payload).await?);
                }
                let _ = ws.close(None).await;
                // The close handshake, so the runner counts the connection gone before the next cell.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(Figures { rate: all.len() as f64 / (end - start).as_secs_f64(), p50: pct(&all, 0.5), p99: pct(&all, 0.99) })
}

/// The IDE cookie of a session, exchanged at node `via`'s runner for a fresh `ide_url` token.
async fn ide_cookie(fleet: &Fleet, via: usize, id: &str) -> anyhow::Result<String> {
    let (status, s) = fleet.call(via, reqwest::Method::GET, &format!("/v1/sessions/{id}"), None).await?;
    anyhow::ensure!(status == 200, "GET /v1/sessions/{id}: {status} {s}");
    let url = s["ide_url"].as_str().ok_or_else(|| anyhow::anyhow!("no ide_url: {s}"))?;
    let at = url.find("/ide/").ok_or_else(|| anyhow::anyhow!("an ide_url without /ide/: {url}"))?;
    let r = fleet.client.get(format!("{}{}", fleet.api(via), &url[at..])).send().await?;
    anyhow::ensure!(r.status() == 303, "the IDE token at node{}: {}", via + 1, r.status());
    let cookie = r.headers().get("set-cookie").ok_or_else(|| anyhow::anyhow!("no IDE cookie"))?.to_str()?;
    Ok(cookie.split(';').next().unwrap_or_default().to_string())
}

/// The session's echo socket through node `via`'s runner, as a browser opens it.
async fn echo_socket(fleet: &Fleet, via: usize, id: &str, cookie: &str) -> anyhow::Result<Ws> {
    let base = fleet.api(via);
    let mut req = format!("{}/ide/{id}/api/echo", base.replace("http://", "ws://")).into_client_request()?;
    req.headers_mut().insert("cookie", cookie.parse()?);
    req.headers_mut().insert("origin", base.parse()?);
    // A connection of the cell before may still be counted against the session's limit.
    let mut tries = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(req.clone(), None, true).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if tries < 20 => {
                tries += 1;
                if tries == 1 {
                    eprintln!("note: opening an echo socket through node{} failed ({e}); trying again", via + 1);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => anyhow::bail!("the echo socket of {id} through node{}: {e}", via + 1),
        }
    }
}

/// 2. The IDE's echo socket of a session on node 3: through node 3's runner and through node 1's.
async fn ide_echo(fleet: &Fleet, secs: f64, run_id: &str) -> anyhow::Result<()> {
    let (home, relay) = (2, 0);
    fleet.only(Some(home)).await?;
    let (_, s) = fleet.start(home, &format!("fb-{run_id}-ide")).await?;
    fleet.only(None).await?;
    let id = s["id"].as_str().unwrap_or_default().to_string();
    let result = async {
        anyhow::ensure!(s["node"] == fleet.node_id(home), "the IDE session is not on node3: {s}");
        let cookies = [ide_cookie(fleet, home, &id).await?, ide_cookie(fleet, relay, &id).await?];
        // The agent answers once it is up.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = fleet.client.get(format!("{}/ide/{id}/api/info", fleet.api(home))).header("cookie", &cookies[0]).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the IDE agent of {id} did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rows = Vec::new();
        for conns in [1usize, 10] {
            let mut cells = Vec::new();
            for (via, cookie) in [(home, &cookies[0]), (relay, &cookies[1])] {
                let mut v = Vec::new();
                for _ in 0..conns {
                    v.push(echo_socket(fleet, via, &id, cookie).await?);
                }
                cells.push(echo_load(v, secs).await?);
            }
            rows.push((conns, cells.remove(0), cells.remove(0)));
        }
        println!();
        println!(
            "2. IDE WebSocket echo of a session on node3, 64-byte messages one at a time per connection, {secs} s per cell"
        );
        println!("{:<14} | {:<42} | {:<42}", "", "direct: node3's runner", "relayed: node1's runner -> node3's");
        for (conns, direct, relayed) in &rows {
            let label = if *conns == 1 { "1 connection".to_string() } else { format!("{conns} connections") };
            println!("{label:<14} | {:<42} | {:<42}", direct.to_string(), relayed.to_string());
        }
        for (conns, direct, relayed) in &rows {
            println!(
                "{:<14}   relayed/direct: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
                format!("{conns} conn."),
                relayed.rate / direct.rate,
                ms(relayed.p50) / ms(direct.p50),
                ms(relayed.p99) / ms(direct.p99)
            );
        }
        Ok(())
    }
    .await;
    fleet.stop(home, &id).await?;
    result
}

/// One placement race: `learners` new learners, `concurrency` in flight, each request sent to
/// the runner `via(i)` picks. Per learner: latency and the node it landed on.
async fn race_round(
    fleet: &Fleet,
    learners: Vec<String>,
    concurrency: usize,
    via: impl Fn(usize) -> usize,
) -> anyhow::Result<(Duration, Vec<(Duration, usize, String)>)> {
    let t = Instant::now();
    let results: Vec<anyhow::Result<(Duration, Value)>> =
        futures_util::stream::iter(learners.iter().enumerate().map(|(i, l)| fleet.start(via(i), l)))
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let elapsed = t.elapsed();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((took, s)) => {
                let node = s["node"].as_str().and_then(|n| fleet.index_of(n)).unwrap_or(usize::MAX);
                out.push((took, node, s["id"].as_str().unwrap_or_default().to_string()));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Stopped by their owners, as many at once.
    let stops: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(out.iter().map(|(_, node, id)| fleet.stop((*node).min(NODES - 1), id)))
            .buffer_unordered(concurrency)
            .collect()
            .await;
    for e in stops.into_iter().filter_map(Result::err) {
        errors.push(format!("stopping: {e:#}"));
    }
    anyhow::ensure!(errors.is_empty(), "{} of {} failed: {}", errors.len(), learners.len(), errors.join("; "));
    Ok((elapsed, out))
}

/// 3. Placement under racing runners, against one runner deciding alone.
async fn placement_race(fleet: &Fleet, learners: usize, concurrency: usize, run_id: &str) -> anyhow::Result<()> {
    let caps: Vec<Value> = {
        let nodes = fleet.nodes().await?;
        (0..NODES)
            .map(|i| {
                nodes.iter().find(|n| n["name"] == fleet.node_id(i)).map(|n| n["capacity"].clone()).unwrap_or_default()
            })
            .collect()
    };
    let names = |tag: &str| (0..learners).map(|i| format!("fb-{run_id}-{tag}{i}")).collect::<Vec<_>>();
    let (seq_elapsed, seq) = race_round(fleet, names("seq"), 1, |_| 0).await?;
    let (one_elapsed, one) = race_round(fleet, names("one"), concurrency, |_| 0).await?;
    let (race_elapsed, raced) = race_round(fleet, names("race"), concurrency, |i| i % NODES).await?;
    // Where they landed, from the answers: placement spreads new learners by committed memory,
    // then sessions; requests in flight at once see the same loads, so their ties are broken by
    // a hash of learner and node. No node may take more than its capacity (its runner admits
    // each session itself).
    println!();
    println!(
        "3. placement: {learners} new learners on {NODES} empty nodes per row; decisions = sessions created end to end"
    );
    println!("{:<42} {:>12} {:>10} {:>10} {:>26}", "", "sessions/s", "p50 ms", "p99 ms", "landed node1/node2/node3");
    let share = learners.div_ceil(NODES);
    let mut rows = Vec::new();
    for (label, elapsed, got) in [
        ("one runner (node1), 1 in flight".to_string(), seq_elapsed, &seq),
        (format!("one runner (node1), {concurrency} in flight"), one_elapsed, &one),
        (format!("three runners racing, {concurrency} in flight"), race_elapsed, &raced),
    ] {
        let mut per = [0usize; NODES];
        for (_, node, _) in got.iter() {
            if let Some(c) = per.get_mut(*node) {
                *c += 1;
            }
        }
        let (p50, p99) = quantiles(got.iter().map(|(d, _, _)| *d).collect());
        let rate = got.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{label:<42} {rate:>12.2} {:>10.1} {:>10.1} {:>26}",
            ms(p50),
            ms(p99),
            per.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("/")
        );
        rows.push((label, rate, per));
    }
    println!(
        "racing / one runner at {concurrency} in flight: {:.2}x sessions/s; / one runner, 1 in flight: {:.2}x",
        rows[2].1 / rows[1].1,
        rows[2].1 / rows[0].1
    );
    for (label, _, per) in &rows {
        let over: Vec<String> = per
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > share)
            .map(|(i, c)| format!("node{} {c} (> {share})", i + 1))
            .collect();
        let over_cap: Vec<String> = per
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                let cap = &caps[*i];
                let max = cap["max_sessions"].as_u64().unwrap_or(u64::MAX);
                let mem = cap["memory_mb"].as_u64().filter(|m| *m > 0).unwrap_or(u64::MAX);
                **c as u64 > max || **c as u64 * 128 > mem
            })
            .map(|(i, c)| format!("node{} {c}", i + 1))
            .collect();
        println!(
            "  {label}: a fair share is {share} per node: {}; over a node's capacity: {}",
            if over.is_empty() { "none over it".to_string() } else { format!("over it {}", over.join(", ")) },
            if over_cap.is_empty() { "none".to_string() } else { over_cap.join(", ") }
        );
    }
    Ok(())
}

/// Synthetic nodes for the pure placement function: loads spread, every tenth drained, one in
/// twenty full.
fn synthetic(n: usize, now: i64) -> (Vec<NodeRecord>, HashMap<String, NodeLoad>) {
    let nodes: Vec<NodeRecord> = (0..n)
        .map(|i| NodeRecord {
            name: format!("node-{i:03}"),
            url: format!("http://10.125.0.{}:8080", 11 + i % 200),
            availability: if i % 10 == 9 { Availability::Drain } else { Availability::Active },
            swarm_availability: Some(Availability::Active),
            started_at: now - 3_600_000,
            heartbeat_at: now - (i as i64 % 5) * 1000,
            max_sessions: 200,
            memory_mb: 22_000,
            disk_free_mb: 50_000,
            version: "bench".into(),
            lost_at: None,
        })
        .collect();
    let loads = nodes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sessions = if i % 20 == 19 { 200 } else { (i as i64 * 37) % 150 };
            (r.name.clone(), NodeLoad { sessions, memory_mb: sessions * 128 })
        })
        .collect();
    (nodes, loads)
}

/// 3b. `placement::rank` in-process: decisions per second over 3 and 100 nodes.
fn placement_in_process(secs: f64) {
    let now = chrono::Utc::now().timestamp_millis();
    let keys: Vec<String> = (0..1024).map(|i| format!("learner-{i}/{EXERCISE}")).collect();
    println!();
    println!("3b. placement::rank in-process (new learners, every tenth node drained, one in twenty full), {secs} s per cell");
    println!("{:<10} {:>16} {:>14} {:>14}", "nodes", "decisions/s", "p50 ns", "p99 ns");
    let mut rates = Vec::new();
    for n in [3usize, 100] {
        let (nodes, loads) = synthetic(n, now);
        // Batches of 256 decisions: their mean is each sample, so timing costs little.
        const BATCH: usize = 256;
        let mut samples = Vec::new();
        let mut decisions = 0usize;
        let t = Instant::now();
        let mut k = 0usize;
        while t.elapsed().as_secs_f64() < secs {
            let b = Instant::now();
            for _ in 0..BATCH {
                let want = Want { memory_mb: 128, disk_mb: 32, workspace_node: None, key: &keys[k % keys.len()] };
                k += 1;
                black_box(placement::rank(black_box(&nodes), black_box(&loads), now, 30_000, &want));
            }
            samples.push(b.elapsed() / BATCH as u32);
            decisions += BATCH;
        }
        let rate = decisions as f64 / t.elapsed().as_secs_f64();
        let (p50, p99) = quantiles(samples);
        println!("{n:<10} {rate:>16.0} {:>14} {:>14}", p50.as_nanos(), p99.as_nanos());
        rates.push(rate);
    }
    println!("100 nodes / 3 nodes: {:.2}x the time per decision", rates[0] / rates[1]);
}
