//! What the learner waits for: from `POST /v1/sessions` to the first byte of a terminal in the IDE
//! and to the file tree, done as a browser does it (the `ide_url` with its token → the cookie →
//! the page → the agent's terminal list, a new terminal, its WebSocket → the first output byte;
//! the file list beside it, as the page asks for both at once), for new learners and for
//! returning ones (their workspace exists from an earlier session), and for new learners served
//! from the exercise's warm pool (`pool: {min: 2, max: 2}`; each claim waits for the pool to be
//! full again, so it measures a claim, not a refill). Beside it, in the same run
//! and interleaved with it: a bare hardened create + start of the same image (the same policy
//! function, on a plain Docker volume) and the time until its agent answers `GET /api/info` over
//! `docker exec ide-agent connect`, retried every 10 ms — the floor a cold start cannot beat.
//!
//!     cargo bench --bench time_to_ide              (needs scripts/host-setup.sh + build-base)
//!     BENCH_N=20 BENCH_RUNTIME=runc cargo bench --bench time_to_ide   (default: the default runtime)
//!
//! The exercise is `exercise-images/examples/python-fizzbuzz`, built once with `docker build` as
//! `exercise-runner-bench/python-fizzbuzz` (rebuilt when the base image changes; BENCH_IMAGE
//! names another image). Prints p50/p99 and the ratios to the bare baseline. Cleans up every
//! container and volume it made.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use runner::{
    config::{Secret, Settings},
    domain::{Limits, Runtime, SandboxSpec},
    engine::{Engine, Purpose, SandboxOwner, WorkspaceMount},
    metrics::Metrics,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const TOKEN: &str = "bench-token";
const BENCH_IMAGE: &str = "exercise-runner-bench/python-fizzbuzz:latest";
const BASE_IMAGE: &str = "exercise-runner/base:latest";
/// The limits of python-fizzbuzz's exercise.toml, for the API's sessions and the bare baseline.
const LIMITS: Limits = Limits { memory_mb: 256, cpus: 1.0, pids: 128, tmpfs_mb: 64, workspace_mb: 512 };
const DEADLINE: Duration = Duration::from_secs(30);

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantiles(v: &[Duration]) -> (Duration, Duration) {
    let mut v = v.to_vec();
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

/// Builds python-fizzbuzz from the example repository unless an image of it on the current base
/// image is there already.
fn ensure_image() -> anyhow::Result<String> {
    if let Ok(image) = std::env::var("BENCH_IMAGE") {
        return Ok(image);
    }
    let inspect = |name: &str, format: &str| -> Option<String> {
        let out = std::process::Command::new("docker").args(["image", "inspect", "-f", format, name]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let base = inspect(BASE_IMAGE, "{{.Id}}")
        .ok_or_else(|| anyhow::anyhow!("{BASE_IMAGE} is missing: runner images build-base"))?;
    if inspect(BENCH_IMAGE, "{{index .Config.Labels \"exercise-runner-bench.base\"}}").as_deref() == Some(base.as_str())
    {
        return Ok(BENCH_IMAGE.into());
    }
    eprintln!("building {BENCH_IMAGE} from exercise-images/examples/python-fizzbuzz");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../exercise-images/examples/python-fizzbuzz");
    let status = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--label", &format!("exercise-runner-bench.base={base}"), "-t", BENCH_IMAGE, dir])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "docker build of python-fizzbuzz failed");
    Ok(BENCH_IMAGE.into())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// What one learner's start took, each from the moment `POST /v1/sessions` was sent.
struct Ide {
    post: Duration,
    page: Duration,
    files: Duration,
    terminal: Duration,
}

/// One learner's session, as a browser opens its IDE; the session is ended afterwards.
async fn open_ide(client: &reqwest::Client, base: &str, learner: &str) -> anyhow::Result<Ide> {
    let t = Instant::now();
    let s: Value = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(TOKEN)
        .json(&json!({"learner": learner, "exercise": "fizzbuzz"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let post = t.elapsed();
    let sid = s["id"].as_str().unwrap().to_string();
    let result = async {
        // The link with its token: a cookie and a redirect to the page.
        let login = client.get(s["ide_url"].as_str().unwrap()).send().await?;
        anyhow::ensure!(login.status() == 303, "login: {}", login.status());
        let cookie = login.headers()["set-cookie"].to_str()?.split(';').next().unwrap().to_string();
        let page_url = format!("{base}{}", login.headers()["location"].to_str()?);
        let page = client.get(&page_url).header("cookie", &cookie).send().await?;
        anyhow::ensure!(page.status() == 200, "page: {}", page.status());
        page.bytes().await?;
        let page_done = t.elapsed();
        let api = format!("{base}/ide/{sid}/api");
        let files = async {
            let r = client.get(format!("{api}/files")).header("cookie", &cookie).send().await?;
            anyhow::ensure!(r.status() == 200, "files: {}", r.status());
            r.bytes().await?;
            Ok(t.elapsed())
        };
        let terminal = async {
            let list: Value = client
                .get(format!("{api}/terminals"))
                .header("cookie", &cookie)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let id = match list["terminals"].as_array().and_then(|l| l.first()) {
                Some(existing) => existing["id"].clone(),
                None => {
                    let made: Value = client
                        .post(format!("{api}/terminals"))
                        .header("cookie", &cookie)
                        .header("origin", base)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    made["id"].clone()
                }
            };
            let id = id.as_str().map(str::to_string).unwrap_or_else(|| id.to_string());
            let mut req = format!("{api}/terminals/{id}/socket").replace("http://", "ws://").into_client_request()?;
            req.headers_mut().insert("cookie", cookie.parse()?);
            req.headers_mut().insert("origin", base.parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
            loop {
                match tokio::time::timeout(DEADLINE, ws.next()).await? {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => break,
                    Some(Ok(_)) => {}
                    other => anyhow::bail!("the terminal ended before its first byte: {other:?}"),
                }
            }
            let first_byte = t.elapsed();
            let _ = ws.close(None).await;
            Ok(first_byte)
        };
        let (files, terminal) = tokio::try_join!(files, terminal)?;
        Ok(Ide { post, page: page_done, files, terminal })
    }
    .await;
    client.delete(format!("{base}/v1/sessions/{sid}")).bearer_auth(TOKEN).send().await?.error_for_status()?;
    result
}

/// Waits until the exercise's pool holds `n` ready sandboxes and none starting.
async fn pool_full(client: &reqwest::Client, base: &str, n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let v: Value =
            client.get(format!("{base}/v1/pools")).bearer_auth(TOKEN).send().await?.error_for_status()?.json().await?;
        let p = &v["pools"][0];
        if p["ready"] == n && p["starting"] == 0 {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < DEADLINE * 2, "the pool did not fill: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the agent of `container` answers `GET /api/info` with 200, over one exec stream.
async fn agent_answers(engine: &Engine, container: &str) -> bool {
    let cmd = vec![runner::ide::AGENT_BIN.into(), "connect".into(), runner::ide::AGENT_SOCKET.into()];
    let Ok(mut io) = engine.exec_stream(container, cmd, "1000:1000").await else { return false };
    if io.write_all(b"GET /api/info HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut head)).await, Ok(Ok(_)))
        && head.starts_with(b"HTTP/1.1 200")
}

/// The bare path: hardened create + start on `volume`, then the agent answering.
async fn bare(
    engine: &Engine,
    instance: &str,
    spec: &SandboxSpec,
    volume: &str,
    runtime: Runtime,
    id: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let owner = SandboxOwner { instance, purpose: Purpose::Session(id), learner: "bench", exercise: "fizzbuzz" };
    let t = Instant::now();
    let c = engine.create_sandbox(spec, &owner, WorkspaceMount::Volume(volume), runtime, "1000:1000").await?;
    engine.start_container(&c).await?;
    let running = t.elapsed();
    let result = loop {
        if agent_answers(engine, &c).await {
            break Ok((running, t.elapsed()));
        }
        if t.elapsed() > DEADLINE {
            break Err(anyhow::anyhow!("the bare sandbox's agent did not answer"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    engine.remove_container(&c).await?;
    result
}

#[derive(Default)]
struct Pass {
    bare_running: Vec<Duration>,
    bare_ready: Vec<Duration>,
    post: Vec<Duration>,
    page: Vec<Duration>,
    files: Vec<Duration>,
    terminal: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let runtime: Runtime = match std::env::var("BENCH_RUNTIME") {
        Ok(r) => r.parse()?,
        Err(_) => Settings::defaults().runtime,
    };
    let image = ensure_image()?;
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let engine = runner::docker::connect(&instance, Arc::new(Metrics::new())).await?;
    let volumes: Vec<String> = (0..n).map(|i| format!("exercise-runner-bench-{instance}-{i}")).collect();
    let result = run(&engine, &instance, &image, runtime, &volumes).await;
    for c in engine.list_sandboxes().await? {
        engine.remove_container(&c.id).await?;
    }
    for v in &volumes {
        engine.remove_volume(v).await?;
    }
    let [new, returning, pooled] = result?;

    println!(
        "time to a working IDE, {image}, runtime {}, {n} learners, interleaved with the bare path",
        runtime.as_str()
    );
    for (name, p) in [("new learner", &new), ("returning learner", &returning), ("new learner, warm pool", &pooled)] {
        // The pool pass has no bare path of its own: it is compared with the new learners' one.
        let bare_ready = if p.bare_ready.is_empty() { &new.bare_ready } else { &p.bare_ready };
        let (ready50, ready99) = quantiles(bare_ready);
        println!("{name}:");
        let row = |label: &str, v: &[Duration]| {
            let (p50, p99) = quantiles(v);
            println!(
                "  {label:<44} p50 {:>7.1} ms  p99 {:>7.1} ms   {:>5.2}x / {:>5.2}x of bare agent-ready",
                ms(p50),
                ms(p99),
                ms(p50) / ms(ready50),
                ms(p99) / ms(ready99)
            );
        };
        if !p.bare_ready.is_empty() {
            row("bare: hardened create+start", &p.bare_running);
            row("bare: + agent answers /api/info (baseline)", &p.bare_ready);
        }
        row("API: POST /v1/sessions answered", &p.post);
        row("IDE: token → cookie → page loaded", &p.page);
        row("IDE: file tree answered", &p.files);
        row("IDE: first terminal byte", &p.terminal);
    }
    Ok(())
}

async fn run(
    engine: &Engine,
    instance: &str,
    image: &str,
    runtime: Runtime,
    volumes: &[String],
) -> anyhow::Result<[Pass; 3]> {
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;
    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.api_token = Some(Secret::new(TOKEN));
    // The runner's sandboxes get their own instance, so its reconciler never sees the bare ones.
    settings.instance = format!("{instance}-api");
    settings.runtime = runtime;
    settings.rate_limit_per_sec = 100_000;
    settings.rate_limit_burst = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let client = no_redirects();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(!server.is_finished(), "the runner did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = async {
        client
            .put(format!("{base}/v1/exercises/fizzbuzz"))
            .bearer_auth(TOKEN)
            .json(&json!({"image": image, "limits": {"memory_mb": LIMITS.memory_mb, "cpus": LIMITS.cpus, "pids": LIMITS.pids}}))
            .send()
            .await?
            .error_for_status()?;
        let spec = SandboxSpec {
            image: image.into(),
            limits: LIMITS,
            network: None,
            workdir: "/workspace".into(),
            writable: vec![],
            check: Default::default(),
            ide: true,
        };
        // One warm-up of each path (image layers and the runner's first connections), not counted.
        bare(engine, instance, &spec, &volumes[0], runtime, "warmup").await?;
        engine.remove_volume(&volumes[0]).await?;
        open_ide(&client, &base, "warmup").await?;

        let mut passes = [Pass::default(), Pass::default()];
        for (pass, p) in passes.iter_mut().enumerate() {
            for (i, volume) in volumes.iter().enumerate() {
                // The bare path's volume: new in the first pass, the seeded one again in the second.
                if pass == 0 {
                    engine.create_volume(volume, Default::default()).await?;
                }
                let (running, ready) = bare(engine, instance, &spec, volume, runtime, &format!("bare-{pass}-{i}")).await?;
                p.bare_running.push(running);
                p.bare_ready.push(ready);
                let ide = open_ide(&client, &base, &format!("learner-{i}")).await?;
                p.post.push(ide.post);
                p.page.push(ide.page);
                p.files.push(ide.files);
                p.terminal.push(ide.terminal);
            }
        }
        // New learners again, now served from a warm pool of two.
        client
            .put(format!("{base}/v1/exercises/fizzbuzz"))
            .bearer_auth(TOKEN)
            .json(&json!({"pool": {"min": 2, "max": 2}}))
            .send()
            .await?
            .error_for_status()?;
        let mut pooled = Pass::default();
        for i in 0..volumes.len() + 1 {
            pool_full(&client, &base, 2).await?;
            let ide = open_ide(&client, &base, &format!("pooled-{i}")).await?;
            if i == 0 {
                continue; // the warm-up: the runner's first claim
            }
            pooled.post.push(ide.post);
            pooled.page.push(ide.page);
            pooled.files.push(ide.files);
            pooled.terminal.push(ide.terminal);
        }
        let [a, b] = passes;
        Ok([a, b, pooled])
    }
    .await;
    let _ = tx.send(());
    server.await??;
    let api = runner::docker::connect(&format!("{instance}-api"), Arc::new(Metrics::new())).await?;
    for c in api.list_sandboxes().await? {
        api.remove_container(&c.id).await?;
    }
    // The warm pool's sandboxes outlive the runner (their rows are its intent for the next
    // start), and so do their workspaces: their volumes and loop devices go with the bench.
    for v in api.list_workspace_volumes().await? {
        api.remove_volume(&v).await?;
    }
    let loops = std::process::Command::new("losetup").arg("-a").output()?;
    let dir_name = dir.path().to_string_lossy().to_string();
    for line in String::from_utf8_lossy(&loops.stdout).lines().filter(|l| l.contains(&dir_name)) {
        if let Some(dev) = line.split(':').next() {
            let _ = std::process::Command::new("losetup").args(["-d", dev]).status();
        }
    }
    result
}
