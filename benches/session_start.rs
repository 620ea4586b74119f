//! Session start latency per runtime: `POST /v1/sessions` on a real runner versus the bare Docker
//! work it cannot avoid (create + start of the same hardened container, `docker/policy.rs`), for
//! runc, crun and runsc side by side in one run. Rounds are interleaved across the runtimes, so a
//! change in the machine's load hits all of them alike.
//!
//!     cargo bench --bench session_start            (needs the engine: scripts/host-setup.sh)
//!     BENCH_N=50 BENCH_RUNTIMES=runc,crun cargo bench --bench session_start
//!     BENCH_IMAGE=exercise-runner/base:latest cargo bench --bench session_start
//!
//! Prints p50/p99 for each path and runtime, the ratio API / bare for each runtime, and each
//! runtime's ratio to runc. Cleans up everything it made.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use runner::{
    config::{Secret, Settings},
    domain::{Limits, Runtime, SandboxSpec},
    engine::{Engine, Purpose, SandboxOwner, WorkspaceMount},
    metrics::Metrics,
};
use serde_json::json;

const TOKEN: &str = "bench-token";

fn pct(sorted: &[Duration], p: f64) -> Duration {
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

/// A real runner on loopback (SQLite, loop-device workspaces) with one runtime.
struct Runner {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start_runner(instance: &str, runtime: Runtime, image: &str) -> anyhow::Result<Runner> {
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;
    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.api_token = Some(Secret::new(TOKEN));
    settings.instance = instance.to_string();
    settings.runtime = runtime;
    settings.rate_limit_per_sec = 100_000;
    settings.rate_limit_burst = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(!server.is_finished(), "the {} runner did not start", runtime.as_str());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .put(format!("{base}/v1/exercises/bench"))
        .bearer_auth(TOKEN)
        .json(&json!({"image": image}))
        .send()
        .await?
        .error_for_status()?;
    Ok(Runner { base, stop, server, _dir: dir })
}

/// One `POST /v1/sessions` until it answers `running`, then the session's end.
async fn api_start(client: &reqwest::Client, base: &str, learner: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(TOKEN)
        .json(&json!({"learner": learner, "exercise": "bench"}))
        .send()
        .await?;
    let elapsed = t.elapsed();
    let v: serde_json::Value = r.error_for_status()?.json().await?;
    anyhow::ensure!(v["state"] == "running", "{v}");
    client
        .delete(format!("{base}/v1/sessions/{}", v["id"].as_str().unwrap()))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?;
    Ok(elapsed)
}

/// The bare hardened create + start of one sandbox (volume made beforehand), then its removal.
async fn bare_start(
    engine: &Engine,
    instance: &str,
    spec: &SandboxSpec,
    volume: &str,
    runtime: Runtime,
    round: usize,
) -> anyhow::Result<Duration> {
    let id = format!("baseline-{}-{round}", runtime.as_str());
    let owner = SandboxOwner { instance, purpose: Purpose::Session(&id), learner: "bench", exercise: "bench" };
    let t = Instant::now();
    let c = engine.create_sandbox(spec, &owner, WorkspaceMount::Volume(volume), runtime, "1000:1000").await?;
    engine.start_container(&c).await?;
    let elapsed = t.elapsed();
    engine.remove_container(&c).await?;
    Ok(elapsed)
}

#[derive(Default)]
struct Figures {
    bare: Vec<Duration>,
    new_learner: Vec<Duration>,
    returning: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let image = std::env::var("BENCH_IMAGE").unwrap_or_else(|_| "exercise-runner/busybox:latest".into());
    let runtimes: Vec<Runtime> = std::env::var("BENCH_RUNTIMES")
        .unwrap_or_else(|_| "runc,crun,runsc".into())
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<anyhow::Result<_>>()?;
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let engine = runner::docker::connect(&instance, Arc::new(Metrics::new())).await?;
    for rt in &runtimes {
        anyhow::ensure!(
            engine.has_runtime(rt.as_str()).await?,
            "the engine has no {} runtime: run scripts/host-setup.sh",
            rt.as_str()
        );
    }
    let result = run(&engine, &instance, &image, &runtimes, n).await;
    // Whatever happened, nothing of this run stays on the engine (the runners' instances too).
    let mut instances = vec![instance.clone()];
    instances.extend(runtimes.iter().map(|rt| format!("{instance}-{}", rt.as_str())));
    for i in instances {
        let engine = runner::docker::connect(&i, Arc::new(Metrics::new())).await?;
        for c in engine.list_sandboxes().await? {
            engine.remove_container(&c.id).await?;
        }
    }
    let figures = result?;

    println!("session start, {image}, {n} rounds per runtime, interleaved");
    println!(
        "{:<8} {:>22} {:>32} {:>32}",
        "runtime", "bare create+start", "POST /v1/sessions, new learner", "POST /v1/sessions, returning"
    );
    let runc = figures
        .iter()
        .find(|(rt, _)| *rt == Runtime::Runc)
        .map(|(_, f)| (quantiles(f.bare.clone()), quantiles(f.new_learner.clone())));
    for (rt, f) in &figures {
        let (b50, b99) = quantiles(f.bare.clone());
        let (n50, n99) = quantiles(f.new_learner.clone());
        let (r50, r99) = quantiles(f.returning.clone());
        println!(
            "{:<8} p50 {:>6.1} p99 {:>6.1} ms   p50 {:>6.1} ({:.2}x) p99 {:>6.1} ms   p50 {:>6.1} ({:.2}x) p99 {:>6.1} ms",
            rt.as_str(),
            ms(b50),
            ms(b99),
            ms(n50),
            ms(n50) / ms(b50),
            ms(n99),
            ms(r50),
            ms(r50) / ms(b50),
            ms(r99)
        );
        if let (Some(((c50, c99), (a50, a99))), false) = (runc, *rt == Runtime::Runc) {
            println!(
                "{:<8} vs runc: bare p50 {:.2}x p99 {:.2}x; new learner p50 {:.2}x p99 {:.2}x",
                "",
                ms(b50) / ms(c50),
                ms(b99) / ms(c99),
                ms(n50) / ms(a50),
                ms(n99) / ms(a99)
            );
        }
    }
    Ok(())
}

async fn run(
    engine: &Engine,
    instance: &str,
    image: &str,
    runtimes: &[Runtime],
    n: usize,
) -> anyhow::Result<Vec<(Runtime, Figures)>> {
    let mut figures: Vec<(Runtime, Figures)> = runtimes.iter().map(|rt| (*rt, Figures::default())).collect();

    // Bare: the same hardened container, created and started directly on a pre-made volume.
    let spec = SandboxSpec {
        image: image.into(),
        limits: Limits::DEFAULT,
        network: None,
        workdir: "/workspace".into(),
        writable: vec![],
        check: Default::default(),
        ide: false,
    };
    let volume = format!("exercise-runner-bench-{instance}");
    engine.create_volume(&volume, Default::default()).await?;
    for round in 0..n {
        for (rt, f) in figures.iter_mut() {
            f.bare.push(bare_start(engine, instance, &spec, &volume, *rt, round).await?);
        }
    }
    engine.remove_volume(&volume).await?;

    // The API: one runner per runtime, requests interleaved across them.
    let mut runners = Vec::new();
    for rt in runtimes {
        runners.push(start_runner(&format!("{instance}-{}", rt.as_str()), *rt, image).await?);
    }
    let client = reqwest::Client::new();
    for returning in [false, true] {
        for i in 0..n {
            for ((_, f), r) in figures.iter_mut().zip(&runners) {
                let took = api_start(&client, &r.base, &format!("learner-{i}")).await?;
                if returning {
                    f.returning.push(took)
                } else {
                    f.new_learner.push(took)
                }
            }
        }
    }
    for r in runners {
        let _ = r.stop.send(());
        r.server.await??;
    }
    Ok(figures)
}
