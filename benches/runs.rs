//! One-shot runs: Python hello world through `POST /v1/runs` on a real runner versus a bare
//! `docker run --rm` of the same image doing the same job under the same hardening, in one run:
//! p50/p99 latency at concurrency 1, and runs per second at concurrency 1 and 4 (closed loop: each
//! of that many callers sends its next run when its last one answered). Rounds of the
//! two paths are interleaved, so a change in the machine's load hits both alike.
//!
//!     cargo bench --bench runs                       (needs the engine: scripts/host-setup.sh)
//!     BENCH_N=40 BENCH_RUNTIME=runsc cargo bench --bench runs
//!
//! Cleans up everything it made (the runner removes each run's sandbox; `--rm` the bare ones).

use std::{
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    time::{Duration, Instant},
};

use runner::{
    config::{Secret, Settings},
    domain::Runtime,
};
use serde_json::{json, Value};

const TOKEN: &str = "bench-token";
const IMAGE: &str = "exercise-runner/base:latest";
const HELLO: &str = "print(\"hello\")\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: f64| ms(v[((v.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.5), at(0.99))
}

/// The same job with the Docker CLI: a new container of the same policy, the file written,
/// Python run, the container removed.
async fn bare(runtime: Runtime) -> anyhow::Result<()> {
    let script = format!("cd /submission && echo '{}' > main.py && python3 main.py", HELLO.trim_end());
    let allowance = if runtime == Runtime::Runsc { runner::docker::RUNSC_THREAD_ALLOWANCE } else { 0 };
    let pids = (32 + allowance).to_string();
    let out = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--runtime",
            runtime.as_str(),
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            "--pids-limit",
            // As the policy does: gVisor's own threads count too (`RUNSC_THREAD_ALLOWANCE`).
            &pids,
            "--memory",
            "128m",
            "--memory-swap",
            "128m",
            "--cpus",
            "1",
            "--init",
            "--user",
            "1000:1000",
            "--tmpfs",
            "/submission:rw,exec,mode=1777",
            "--tmpfs",
            "/tmp:rw,exec,mode=1777",
            "--entrypoint",
            "sh",
            IMAGE,
            "-c",
            &script,
        ])
        .output()
        .await?;
    anyhow::ensure!(out.status.success() && out.stdout == b"hello\n", "bare run: {out:?}");
    Ok(())
}

async fn api(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let body = json!({"runtime": "python3", "files": [{"path": "main.py", "content": HELLO}]});
    let v: Value = client
        .post(format!("{base}/v1/runs"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(v["status"] == "accepted" && v["tests"][0]["stdout"] == "hello\n", "run: {v}");
    Ok(())
}

/// Runs per second with `concurrency` jobs at once, `total` in all: a closed loop, each of
/// `concurrency` workers starting its next job as soon as its last one answered (as callers
/// pressing Run do), not batches that wait for their slowest job.
async fn throughput<F, Fut>(concurrency: usize, total: usize, job: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let left = AtomicUsize::new(total);
    let take = || left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
    let worker = || async {
        while take() {
            job().await?;
        }
        anyhow::Ok(())
    };
    futures_util::future::try_join_all((0..concurrency).map(|_| worker())).await?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let runtime: Runtime = match std::env::var("BENCH_RUNTIME") {
        Ok(r) => r.parse()?,
        Err(_) => Settings::defaults().runtime,
    };
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;
    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.api_token = Some(Secret::new(TOKEN));
    settings.instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    settings.runtime = runtime;
    settings.rate_limit_per_sec = 100_000;
    settings.rate_limit_burst = 100_000;
    settings.runs.rate_per_min = 1_000_000;
    settings.runs.rate_burst = 100_000;
    if let Some(n) = std::env::var("BENCH_PREPARED").ok().and_then(|v| v.parse().ok()) {
        settings.runs.prepared = n;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runner::launch(settings, listener, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(!server.is_finished(), "the runner did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .put(format!("{base}/v1/runtimes/python3"))
        .bearer_auth(TOKEN)
        .json(&json!({"image": IMAGE, "run": ["python3", "main.py"]}))
        .send()
        .await?
        .error_for_status()?;
    // Warm both paths (page cache, the engine's image metadata).
    api(&client, &base).await?;
    bare(runtime).await?;

    let (mut api_lat, mut bare_lat) = (vec![], vec![]);
    for _ in 0..n {
        let t = Instant::now();
        api(&client, &base).await?;
        api_lat.push(t.elapsed());
        let t = Instant::now();
        bare(runtime).await?;
        bare_lat.push(t.elapsed());
    }
    let mut rates = vec![];
    for c in [1, 4] {
        let a = throughput(c, n, || api(&client, &base)).await?;
        let b = throughput(c, n, || bare(runtime)).await?;
        rates.push((c, a, b));
    }
    let _ = stop.send(());
    server.await??;

    let ((a50, a99), (b50, b99)) = (quantiles(api_lat), quantiles(bare_lat));
    println!(
        "one-shot runs, Python hello world on {IMAGE}, {} runtime, {n} rounds each, interleaved",
        runtime.as_str()
    );
    println!("latency at concurrency 1:");
    println!("  POST /v1/runs        p50 {a50:>7.1} ms  p99 {a99:>7.1} ms");
    println!("  bare docker run --rm p50 {b50:>7.1} ms  p99 {b99:>7.1} ms");
    println!("  ratio API / bare     p50 {:>7.2}x   p99 {:>7.2}x", a50 / b50, a99 / b99);
    println!("throughput:");
    for (c, a, b) in rates {
        println!("  concurrency {c}: POST /v1/runs {a:>6.1} runs/s, bare {b:>6.1} runs/s, ratio {:.2}x", a / b);
    }
    Ok(())
}
