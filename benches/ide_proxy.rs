//! The IDE transport: WebSocket echo of 64-byte messages, one at a time per connection, to the
//! agent's echo socket in real sandboxes, through the runner (browser → runner's web-ide-proxy →
//! agent) against the bare transport to the same agents without the proxy, side by side in one
//! run: 1 connection, 10 connections on one session, 50 sessions with one connection each. Then
//! keystrokes (one every 100 ms per session) with `BENCH_LIVE` sessions live, through the runner
//! and bare. With node and npm, configurable-http-proxy in front of a node WebSocket echo server
//! (installed once under `target/bench-node/`) is a reference column of the same run.
//!
//!     cargo bench --bench ide_proxy                (needs scripts/host-setup.sh + build-base)
//!     BENCH_SECS=1 BENCH_LIVE=50 cargo bench --bench ide_proxy     (a short run)
//!     BENCH_RUNTIME=runsc cargo bench --bench ide_proxy
//!
//! `BENCH_IN_PROCESS=1`: the runner as a task of the bench's own process (sharing the client's
//! runtime) instead of its own `runner serve` process.
//!
//! `BENCH_SETTLE_SECS` (30): the pause between starting the live sessions and the keystrokes
//! (the host's CPU at rest is measured over its second half). `BENCH_MEMORY_MB`: the sandboxes'
//! memory limit (64; 256 under runsc, whose sandbox kernel lives inside it).
//!
//! The sandboxes run `exercise-runner/base:latest` with the IDE agent of this build when
//! `target/release/ide-agent` exists (`cargo build --release -p ide-agent`): a private tag made
//! from the base image, removed at the end.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use runner::{
    config::{Secret, Settings, WorkspaceDriver},
    domain::Runtime,
    engine::Engine,
    metrics::Metrics,
};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    WebSocketStream,
};

const TOKEN: &str = "bench-token";
/// How many sessions' starts and stops are in flight at once.
const SETUP_CONCURRENCY: usize = 8;

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

/// One column of a row: messages per second over all connections, and round-trip percentiles.
#[derive(Clone, Default)]
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.0} msg/s p50 {:>5.3} p99 {:>6.3} ms", self.rate, ms(self.p50), ms(self.p99))
    }
}

fn figures(mut lat: Vec<Duration>, elapsed: Duration) -> Figures {
    lat.sort();
    Figures {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}
type Ws = WebSocketStream<Box<dyn Stream>>;

/// The client's own sockets: a small read buffer (tungstenite zero-fills all of it before every
/// read), so the client costs every column little and alike.
async fn handshake<R: IntoClientRequest + Unpin>(req: R, io: Box<dyn Stream>) -> anyhow::Result<Ws> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
    Ok(tokio_tungstenite::client_async_with_config(req, io, Some(config)).await?.0)
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

/// Every connection sends a 64-byte message, waits for its echo, and again, for `secs` (after
/// a short warm-up); all connections at once.
async fn echo_load(conns: Vec<Ws>, secs: f64) -> anyhow::Result<(Figures, Vec<Ws>)> {
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
                anyhow::Ok((lat, ws))
            })
        })
        .collect();
    let (mut all, mut back) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, ws) = t.await??;
        all.extend(lat);
        back.push(ws);
    }
    Ok((figures(all, end - start), back))
}

/// Keystrokes: every connection sends a one-byte message every 100 ms (its phase spread over
/// the interval) and times its echo, for `secs`.
async fn keystrokes(conns: Vec<Ws>, secs: f64) -> anyhow::Result<(Figures, Vec<Ws>)> {
    let n = conns.len().max(1);
    let begin = tokio::time::Instant::now();
    let end = begin + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let phase = Duration::from_millis(100) * i as u32 / n as u32;
                let mut tick = tokio::time::interval_at(begin + phase, Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if tokio::time::Instant::now() >= end {
                        break;
                    }
                    lat.push(round_trip(&mut ws, "k").await?);
                }
                anyhow::Ok((lat, ws))
            })
        })
        .collect();
    let (mut all, mut back) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, ws) = t.await??;
        all.extend(lat);
        back.push(ws);
    }
    Ok((figures(all, Duration::from_secs_f64(secs)), back))
}

async fn close_all(conns: Vec<Ws>) {
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
}

struct Session {
    id: String,
    cookie: String,
    container: String,
}

struct Bench {
    base: String,
    client: reqwest::Client,
    engine: Engine,
}

impl Bench {
    async fn start_session(&self, learner: usize) -> anyhow::Result<Session> {
        let s: Value = self
            .client
            .post(format!("{}/v1/sessions", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"learner": format!("bench-{learner}"), "exercise": "bench-ide"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = s["id"].as_str().unwrap().to_string();
        let login = self.client.get(s["ide_url"].as_str().unwrap()).send().await?;
        let cookie = login.headers()["set-cookie"].to_str()?.split(';').next().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.client.get(format!("{}/ide/{id}/api/info", self.base)).header("cookie", &cookie).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent of {id} did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Session { id, cookie, container: String::new() })
    }

    /// Their sandboxes' container ids, for the bare transports.
    async fn find_containers(&self, sessions: &mut [Session]) -> anyhow::Result<()> {
        let found = self.engine.list_sandboxes().await?;
        for s in sessions {
            let c = found.iter().find(|c| c.session_id.as_deref() == Some(&s.id));
            s.container = c.map(|c| c.id.clone()).ok_or_else(|| anyhow::anyhow!("no sandbox for {}", s.id))?;
        }
        Ok(())
    }

    /// As a browser: through the runner's proxy.
    async fn proxied(&self, s: &Session) -> anyhow::Result<Ws> {
        let addr = self.base.trim_start_matches("http://");
        let mut req = format!("ws://{addr}/ide/{}/api/echo", s.id).into_client_request()?;
        req.headers_mut().insert("cookie", s.cookie.parse()?);
        req.headers_mut().insert("origin", self.base.parse()?);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Stream> = Box::new(tcp);
        handshake(req, io).await
    }

    /// The exec stream of `ide-agent connect`, no proxy.
    async fn exec(&self, s: &Session) -> anyhow::Result<Ws> {
        let cmd = vec![runner::ide::AGENT_BIN.into(), "connect".into(), runner::ide::AGENT_SOCKET.into()];
        let io: Box<dyn Stream> = Box::new(self.engine.exec_stream(&s.container, cmd, "1000:1000").await?);
        handshake("ws://agent/api/echo", io).await
    }

    /// The agent's socket in the sandbox's network namespace, no proxy (`None` where there is
    /// none: gVisor, or an agent without it).
    async fn netns(&self, s: &Session) -> anyhow::Result<Option<Ws>> {
        match self.engine.connect_in_netns(&s.container, runner::ide::AGENT_NETNS_SOCKET).await {
            Ok(Some(io)) => {
                let io: Box<dyn Stream> = Box::new(io);
                Ok(Some(handshake("ws://agent/api/echo", io).await?))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                println!("note: no socket in the namespace of {}: {e:#}", s.container);
                Ok(None)
            }
        }
    }

    /// What the proxy itself uses to reach an agent: the namespace's socket, else exec.
    async fn bare(&self, s: &Session) -> anyhow::Result<Ws> {
        match self.netns(s).await? {
            Some(ws) => Ok(ws),
            None => self.exec(s).await,
        }
    }
}

/// configurable-http-proxy in front of a node WebSocket echo server, both on loopback.
struct Reference {
    proxy_port: u16,
    echo_port: u16,
    _children: Vec<tokio::process::Child>,
}

/// The host's busy and total CPU time so far (`/proc/stat`, in ticks).
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

async fn free_port() -> anyhow::Result<u16> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

const ECHO_JS: &str = r#"const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) });
wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
"#;

async fn start_reference(dir: &Path) -> anyhow::Result<Reference> {
    use tokio::process::Command;
    let chp = dir.join("node_modules/.bin/configurable-http-proxy");
    if !chp.exists() || !dir.join("node_modules/ws").exists() {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(dir)
            .args(["configurable-http-proxy@4.6.3", "ws@8"])
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "npm install: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(dir.join("echo.js"), ECHO_JS)?;
    let (echo_port, proxy_port, api_port) = (free_port().await?, free_port().await?, free_port().await?);
    let echo = Command::new("node")
        .arg(dir.join("echo.js"))
        .arg(echo_port.to_string())
        .current_dir(dir)
        .kill_on_drop(true)
        .spawn()?;
    let proxy = Command::new(&chp)
        .args(["--ip", "127.0.0.1", "--port", &proxy_port.to_string()])
        .args(["--api-ip", "127.0.0.1", "--api-port", &api_port.to_string()])
        .args(["--default-target", &format!("http://127.0.0.1:{echo_port}"), "--log-level", "error"])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    wait_for_port(echo_port).await?;
    wait_for_port(proxy_port).await?;
    Ok(Reference { proxy_port, echo_port, _children: vec![echo, proxy] })
}

async fn ws_to(port: u16) -> anyhow::Result<Ws> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Stream> = Box::new(tcp);
    handshake(format!("ws://127.0.0.1:{port}/"), io).await
}

async fn ws_many(port: u16, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(ws_to(port).await?);
    }
    Ok(v)
}

/// The image of this run: the base image with this build's agent, or the base image as it is.
async fn bench_image(instance: &str) -> anyhow::Result<(String, bool)> {
    let agent = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|release| release.join("ide-agent"))
        .filter(|p| p.exists());
    let Some(agent) = agent else {
        println!("note: no target/release/ide-agent; the sandboxes run the base image's own agent");
        return Ok(("exercise-runner/base:latest".into(), false));
    };
    let ctx = tempfile::tempdir()?;
    std::fs::copy(&agent, ctx.path().join("ide-agent"))?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM exercise-runner/base:latest\nCOPY ide-agent /usr/local/bin/ide-agent\n",
    )?;
    let tag = format!("exercise-runner/base:{instance}");
    let out = tokio::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
    Ok((tag, true))
}

async fn in_batches<T, F, Fut>(items: Vec<T>, f: F) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future,
{
    futures_util::stream::iter(items.into_iter().map(f)).buffered(SETUP_CONCURRENCY).collect().await
}

/// The runner under test. By default its own process (`runner serve`, as it is deployed, and
/// as configurable-http-proxy is measured: the load generator does not share its threads);
/// with `BENCH_IN_PROCESS=1` a task of this process, sharing the client's runtime (the method
/// of the figures before 2026-12-04).
struct Server {
    base: String,
    run: Running,
}

enum Running {
    Process(tokio::process::Child),
    Task(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>),
}

impl Server {
    async fn start(dir: &Path, instance: &str, runtime: Runtime, live: usize) -> anyhow::Result<Server> {
        let database = format!("sqlite://{}?mode=rwc", dir.join("runner.db").display());
        let max_live = (live as u64 + 10).to_string();
        let starts = SETUP_CONCURRENCY.to_string();
        if env("BENCH_IN_PROCESS", 0u8) == 1 {
            let mut settings = Settings::defaults();
            settings.data_dir = dir.to_path_buf();
            settings.database_url = Secret::new(database);
            settings.api_token = Some(Secret::new(TOKEN));
            settings.instance = instance.to_string();
            settings.runtime = runtime;
            settings.max_live_sessions = live as u64 + 10;
            settings.max_concurrent_starts = SETUP_CONCURRENCY;
            settings.start_queue_timeout = Duration::from_secs(600);
            settings.workspace_driver = WorkspaceDriver::Volume;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(runner::launch(settings, listener, async move {
                let _ = rx.await;
            }));
            return Ok(Server { base, run: Running::Task(tx, task) });
        }
        // A free loopback port for it (the moment between freeing and its bind is a bench's risk).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("serve")
            .env("RUNNER_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUNNER_DATA_DIR", dir)
            .env("RUNNER_DATABASE_URL", database)
            .env("RUNNER_API_TOKEN", TOKEN)
            .env("RUNNER_INSTANCE", instance)
            .env("RUNNER_DOCKER_RUNTIME", runtime.as_str())
            .env("RUNNER_MAX_LIVE_SESSIONS", max_live)
            .env("RUNNER_MAX_CONCURRENT_STARTS", starts)
            .env("RUNNER_START_QUEUE_TIMEOUT_SECS", "600")
            .env("RUNNER_WORKSPACE_DRIVER", "volume")
            .env("RUNNER_LOG", std::env::var("RUNNER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Server { base: format!("http://127.0.0.1:{port}"), run: Running::Process(child) })
    }

    /// Stops the runner as an operator would (SIGTERM to the pid it was started as), killing it
    /// if it has not ended within 30 s.
    async fn stop(self) {
        match self.run {
            Running::Task(tx, task) => {
                let _ = tx.send(());
                let _ = task.await;
            }
            Running::Process(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
                }
                if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The runner's own warnings (an agent it could not reach: why a connection got a 502).
    runner::telemetry::init(false, Some(&std::env::var("RUNNER_LOG").unwrap_or_else(|_| "warn".into())));
    let secs: f64 = env("BENCH_SECS", 3.0);
    let live: usize = env::<usize>("BENCH_LIVE", 300).max(50);
    let key_secs: f64 = env("BENCH_KEYS_SECS", 10.0);
    let runtime: Runtime = std::env::var("BENCH_RUNTIME").unwrap_or_else(|_| "runc".into()).parse()?;
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (image, own_agent) = bench_image(&instance).await?;
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;
    let server = Server::start(dir.path(), &instance, runtime, live).await?;
    let base = server.base.clone();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the runner did not answer within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let engine = runner::docker::connect(&instance, Arc::new(Metrics::new())).await?;
    let bench = Bench { base: base.clone(), client: client.clone(), engine: engine.clone() };
    let result = run(&bench, &image, secs, live, key_secs, runtime, own_agent).await;

    // Clean up whatever happened: sessions, then anything of this instance left behind.
    let ids: Vec<String> =
        match client.get(format!("{base}/v1/sessions?state=starting,running")).bearer_auth(TOKEN).send().await {
            Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                v["sessions"].as_array().map(|a| a.iter().filter_map(|s| s["id"].as_str().map(String::from)).collect())
            }),
            Err(_) => None,
        }
        .unwrap_or_default();
    in_batches(ids, |id| client.delete(format!("{base}/v1/sessions/{id}")).bearer_auth(TOKEN).send()).await;
    server.stop().await;
    for c in engine.list_sandboxes().await.unwrap_or_default() {
        let _ = engine.remove_container(&c.id).await;
    }
    for v in engine.list_workspace_volumes().await.unwrap_or_default() {
        let _ = engine.remove_volume(&v).await;
    }
    if own_agent {
        let _ = tokio::process::Command::new("docker").args(["rmi", "-f", &image]).output().await;
    }
    result
}

async fn run(
    bench: &Bench,
    image: &str,
    secs: f64,
    live: usize,
    key_secs: f64,
    runtime: Runtime,
    own_agent: bool,
) -> anyhow::Result<()> {
    let c = &bench.client;
    // gVisor's own memory (its sandbox kernel) sits inside the limit: 64 MiB stalls it.
    let memory_mb: u64 = env("BENCH_MEMORY_MB", if runtime == Runtime::Runsc { 256 } else { 64 });
    c.put(format!("{}/v1/exercises/bench-ide", bench.base))
        .bearer_auth(TOKEN)
        .json(&json!({"image": image, "limits": {"memory_mb": memory_mb, "cpus": 0.5, "pids": 64, "tmpfs_mb": 16, "workspace_mb": 16}}))
        .send()
        .await?
        .error_for_status()?;
    // The reference first, on an idle machine like the runner's columns.
    let node_dir = std::env::current_exe()?
        .ancestors()
        .nth(3)
        .map(|target| target.join("bench-node"))
        .unwrap_or_else(|| PathBuf::from("bench-node"));
    let reference = match start_reference(&node_dir).await {
        Ok(r) => Some(r),
        Err(e) => {
            println!("note: no configurable-http-proxy column ({e:#})");
            None
        }
    };

    let t = Instant::now();
    let mut sessions: Vec<Session> =
        in_batches((0..50).collect(), |i| bench.start_session(i)).await.into_iter().collect::<Result<_, _>>()?;
    bench.find_containers(&mut sessions).await?;
    println!("50 sessions started in {:.1} s", t.elapsed().as_secs_f64());
    let transport = if bench.netns(&sessions[0]).await?.is_some() { "netns socket" } else { "exec stream" };
    println!(
        "WebSocket echo, 64-byte messages one at a time per connection, {secs} s per cell; runtime {}, \
         the proxy reaches the agent by {transport}{}",
        runtime.as_str(),
        if own_agent { "" } else { " (the base image's own agent)" }
    );

    type Row = (&'static str, Figures, Figures, Option<Figures>, Option<Figures>, Option<Figures>);
    let mut rows: Vec<Row> = Vec::new();
    for (label, conns) in [("1 connection", 1usize), ("10 conns, 1 session", 10), ("50 sessions x 1", 50)] {
        let pick = |i: usize| if conns == 50 { &sessions[i] } else { &sessions[0] };
        let mut v = Vec::new();
        for i in 0..conns {
            v.push(bench.proxied(pick(i)).await?);
        }
        let (through, v) = echo_load(v, secs).await?;
        close_all(v).await;
        let mut v = Vec::new();
        for i in 0..conns {
            v.push(bench.bare(pick(i)).await?);
        }
        let (bare, v) = echo_load(v, secs).await?;
        close_all(v).await;
        let exec = if transport == "exec stream" {
            None
        } else {
            let mut v = Vec::new();
            for i in 0..conns {
                v.push(bench.exec(pick(i)).await?);
            }
            let (f, v) = echo_load(v, secs).await?;
            close_all(v).await;
            Some(f)
        };
        let (chp, node) = match &reference {
            Some(r) => {
                let (chp, v) = echo_load(ws_many(r.proxy_port, conns).await?, secs).await?;
                close_all(v).await;
                let (node, v) = echo_load(ws_many(r.echo_port, conns).await?, secs).await?;
                close_all(v).await;
                (Some(chp), Some(node))
            }
            None => (None, None),
        };
        rows.push((label, through, bare, exec, chp, node));
    }
    let dash = "-".to_string();
    println!(
        "{:<20} | {:<40} | {:<40} | {:<40} | {:<40} | {:<40}",
        "",
        "through the runner",
        format!("bare {transport}"),
        "exec stream (no proxy)",
        "CHP -> node echo",
        "node echo direct"
    );
    for (label, through, bare, exec, chp, node) in &rows {
        let opt = |f: &Option<Figures>| f.as_ref().map(|f| f.to_string()).unwrap_or_else(|| dash.clone());
        println!(
            "{label:<20} | {:<40} | {:<40} | {:<40} | {:<40} | {:<40}",
            through.to_string(),
            bare.to_string(),
            opt(exec),
            opt(chp),
            opt(node)
        );
    }
    for (label, through, bare, _, chp, _) in &rows {
        let vs_chp = chp.as_ref().map(|c| format!("; runner/CHP {:.2}x", through.rate / c.rate)).unwrap_or_default();
        println!(
            "{label:<20}   runner/bare throughput {:.2}x, p99 {:.2}x{vs_chp}",
            through.rate / bare.rate,
            ms(through.p99) / ms(bare.p99)
        );
    }
    drop(reference);

    // Keystrokes with `live` sessions live.
    let t = Instant::now();
    let mut more: Vec<Session> =
        in_batches((50..live).collect(), |i| bench.start_session(i)).await.into_iter().collect::<Result<_, _>>()?;
    bench.find_containers(&mut more).await?;
    let all: Vec<&Session> = sessions.iter().chain(more.iter()).collect();
    println!("{} more sessions started in {:.1} s ({} live)", more.len(), t.elapsed().as_secs_f64(), all.len());
    // Sandboxes that just started are still busy starting (supervisord, first health checks):
    // keystrokes are measured among live sessions at rest.
    let settle = env("BENCH_SETTLE_SECS", 30.0);
    tokio::time::sleep(Duration::from_secs_f64(settle / 2.0)).await;
    // What the live sessions cost the host at rest (their agents, supervisord, health checks, the
    // engine), over the second half of the pause.
    let before = host_cpu();
    tokio::time::sleep(Duration::from_secs_f64(settle / 2.0)).await;
    if let (Some(a), Some(b)) = (before, host_cpu()) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "At rest with {} live sessions: the host busy {:.0}% of one core ({cores} cores)",
            all.len(),
            (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64 * 100.0 * cores as f64
        );
    }
    let mut v = Vec::new();
    for s in &all {
        v.push(bench.proxied(s).await?);
    }
    let (through, v) = keystrokes(v, key_secs).await?;
    close_all(v).await;
    let mut v = Vec::new();
    for s in &all {
        v.push(bench.bare(s).await?);
    }
    let (bare, v) = keystrokes(v, key_secs).await?;
    close_all(v).await;
    println!("Keystrokes (1 byte every 100 ms per session, {key_secs} s) with {} live sessions:", all.len());
    for (label, f) in [("through the runner", &through), (&*format!("bare {transport}"), &bare)] {
        println!(
            "  {label:<20} {:>6} round trips  p50 {:>6.3} ms  p99 {:>6.3} ms  max {:>7.3} ms",
            (f.rate * key_secs).round(),
            ms(f.p50),
            ms(f.p99),
            ms(f.max)
        );
    }
    println!(
        "  ratio runner/bare: p50 {:.2}x p99 {:.2}x",
        ms(through.p50) / ms(bare.p50),
        ms(through.p99) / ms(bare.p99)
    );
    Ok(())
}
