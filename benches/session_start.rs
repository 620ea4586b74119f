//! Session start latency: `POST /v1/sessions` on a real runner versus the bare Docker work it
//! cannot avoid (create + start of the same hardened container), measured side by side in one run.
//!
//!     cargo bench --bench session_start            (needs the engine: scripts/host-setup.sh)
//!     BENCH_N=50 BENCH_RUNTIME=runsc cargo bench --bench session_start
//!
//! Prints p50/p95 for each path and the ratio API / baseline. Cleans up everything it made.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use runner::{
    config::{Secret, Settings},
    domain::{Limits, Runtime, SandboxSpec},
    engine::{Purpose, SandboxOwner, WorkspaceMount},
    metrics::Metrics,
};
use serde_json::json;

const IMAGE: &str = "exercise-runner/busybox:latest";
const TOKEN: &str = "bench-token";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p95) = (pct(&v, 0.5), pct(&v, 0.95));
    println!("{name:<44} n={:<3} p50 {:>7.1} ms   p95 {:>7.1} ms", v.len(), ms(p50), ms(p95));
    (p50, p95)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let runtime: Runtime = std::env::var("BENCH_RUNTIME").unwrap_or_else(|_| "runc".into()).parse()?;
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;

    // Baseline: the same hardened container, created and started directly (volume pre-made).
    let engine = runner::docker::connect(&instance, Arc::new(Metrics::new())).await?;
    let spec = SandboxSpec {
        image: IMAGE.into(),
        limits: Limits::DEFAULT,
        network: None,
        workdir: "/workspace".into(),
        writable: vec![],
        check: Default::default(),
        ide: false,
    };
    let volume = format!("exercise-runner-bench-{instance}");
    engine.create_volume(&volume, Default::default()).await?;
    let mut baseline = Vec::new();
    for i in 0..n {
        let id = format!("baseline-{i}");
        let owner =
            SandboxOwner { instance: &instance, purpose: Purpose::Session(&id), learner: "bench", exercise: "bench" };

        let t = Instant::now();
        let c = engine.create_sandbox(&spec, &owner, WorkspaceMount::Volume(&volume), runtime, "1000:1000").await?;
        engine.start_container(&c).await?;
        baseline.push(t.elapsed());
        engine.remove_container(&c).await?;
    }
    engine.remove_volume(&volume).await?;

    // The API: a real runner on loopback with SQLite and loop-device workspaces.
    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.api_token = Some(Secret::new(TOKEN));
    settings.instance = instance.clone();
    settings.runtime = runtime;
    settings.rate_limit_per_sec = 100_000;
    settings.rate_limit_burst = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .put(format!("{base}/v1/exercises/bench"))
        .bearer_auth(TOKEN)
        .json(&json!({"image": IMAGE}))
        .send()
        .await?
        .error_for_status()?;

    let mut new_learner = Vec::new();
    let mut returning = Vec::new();
    for round in 0..2 {
        for i in 0..n {
            let t = Instant::now();
            let r = client
                .post(format!("{base}/v1/sessions"))
                .bearer_auth(TOKEN)
                .json(&json!({"learner": format!("learner-{i}"), "exercise": "bench"}))
                .send()
                .await?;
            let elapsed = t.elapsed();
            let v: serde_json::Value = r.error_for_status()?.json().await?;
            assert_eq!(v["state"], "running");
            if round == 0 {
                new_learner.push(elapsed)
            } else {
                returning.push(elapsed)
            }
            client
                .delete(format!("{base}/v1/sessions/{}", v["id"].as_str().unwrap()))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .error_for_status()?;
        }
    }
    let _ = tx.send(());
    server.await??;
    for c in engine.list_sandboxes().await? {
        engine.remove_container(&c.id).await?;
    }

    println!("session start, runtime {}, {} rounds each", runtime.as_str(), n);
    let (b50, b95) = report("baseline: hardened create+start (bollard)", baseline);
    let (n50, n95) = report("API: POST /v1/sessions, new learner", new_learner);
    let (r50, r95) = report("API: POST /v1/sessions, returning learner", returning);
    println!(
        "ratio API/baseline: new learner p50 {:.2}x p95 {:.2}x; returning p50 {:.2}x p95 {:.2}x",
        ms(n50) / ms(b50),
        ms(n95) / ms(b95),
        ms(r50) / ms(b50),
        ms(r95) / ms(b95)
    );
    Ok(())
}
