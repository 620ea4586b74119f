//! The cost of one usage sampling round (issue 9, item 2) next to `docker stats --no-stream` over
//! the same sandboxes, measured side by side in one run, at 50 and then 300 sandboxes.
//!
//!     cargo bench --bench usage_sampling             (needs the engine: scripts/host-setup.sh)
//!     BENCH_SIZES=50,300 BENCH_MEMORY_MB=16 BENCH_ROUNDS=20 cargo bench --bench usage_sampling
//!
//! The sandboxes are cheap ones (busybox `sleep` under runc with the runner's labels, a small
//! memory limit, no network), recorded as running sessions in a SQLite store, so a round is the
//! runner's real one: the store query for live sessions, the cgroup reads, the history update.
//! CPU is CPU time (`CLOCK_PROCESS_CPUTIME_ID` of this process around the round; for the docker
//! CLI its reaped children's time; for the engine the `/proc/<pid>/stat` delta of dockerd,
//! containerd and the containerd shims), not wall time. Everything is removed by its label at
//! the end (the instance starts with `test-`, so scripts/sweep-test-leftovers.sh also finds it).

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use runner::{
    config::{Secret, Settings, WorkspaceDriver},
    docker,
    domain::{Limits, SandboxSpec, SessionState},
    metrics::Metrics,
    store::{now_ms, SessionRecord, Store},
    usage::{process_cpu_ns, Usage},
};

const IMAGE: &str = "exercise-runner/busybox:latest";

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    anyhow::ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`).
fn proc_cpu(pid: &str, tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / tick
}

/// CPU seconds of the engine's processes: dockerd, containerd and every containerd shim.
fn engine_cpu(tick: f64) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            matches!(comm.trim(), "dockerd" | "containerd") || comm.starts_with("containerd-shim")
        })
        .map(|p| proc_cpu(&p, tick))
        .sum()
}

/// CPU seconds of this process's reaped children (`cutime + cstime` of `/proc/self/stat`).
fn children_cpu(tick: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / tick
}

/// Starts `n` labelled sandboxes, four `docker run`s at a time; returns their full ids.
fn start_sandboxes(instance: &str, from: usize, n: usize, memory_mb: u64) -> Vec<String> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(Mutex::new(from));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (ids, next, instance) = (ids.clone(), next.clone(), instance.to_string());
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                if i >= from + n {
                    return;
                }
                let memory = format!("{memory_mb}m");
                let name = format!("exercise-runner-{instance}-bench-{i}");
                let out = docker(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--label",
                    "exercise-runner.managed=true",
                    "--label",
                    &format!("exercise-runner.instance={instance}"),
                    "--label",
                    &format!("exercise-runner.session=bench-{i}"),
                    "--memory",
                    &memory,
                    "--memory-swap",
                    &memory,
                    "--cpus",
                    "0.1",
                    "--pids-limit",
                    "16",
                    "--network",
                    "none",
                    "--read-only",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                    "--user",
                    "1000:1000",
                    "--init",
                    IMAGE,
                ]);
                match out {
                    Ok(id) => ids.lock().unwrap().push(id.trim().to_string()),
                    Err(e) => eprintln!("sandbox {i} did not start: {e}"),
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let ids = ids.lock().unwrap().clone();
    ids
}

fn remove_all(instance: &str) {
    let ids =
        docker(&["ps", "-aq", "--filter", &format!("label=exercise-runner.instance={instance}")]).unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for chunk in ids.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk);
        let _ = docker(&args);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> f64 {
    s * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "50,300".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let memory_mb: u64 = env("BENCH_MEMORY_MB", 16);
    let rounds: usize = env("BENCH_ROUNDS", 20);
    let stats_runs: usize = env("BENCH_STATS_RUNS", 3);
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let instance = format!("test-bench-usage-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::Builder::new().prefix("exercise-runner-bench-").tempdir()?;

    let mut settings = Settings::defaults();
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = Secret::new(format!("sqlite://{}?mode=rwc", dir.path().join("runner.db").display()));
    settings.instance = instance.clone();
    settings.workspace_driver = WorkspaceDriver::Volume;
    let metrics = Arc::new(Metrics::new());
    let store = Store::connect(settings.database_url.expose()).await?;
    let engine = docker::connect(&instance, metrics.clone()).await?;
    let usage = Usage::new(&settings, store.clone(), engine, &metrics);
    let spec = SandboxSpec {
        image: IMAGE.into(),
        limits: Limits { memory_mb, cpus: 0.1, pids: 16, ..Limits::DEFAULT },
        network: None,
        workdir: "/workspace".into(),
        writable: vec![],
        check: Default::default(),
        ide: false,
    };

    for e in 0..10 {
        store.write_exercise(&format!("exercise-{e}"), IMAGE, "{}", None).await?;
    }
    let result = async {
        let mut ids: Vec<String> = Vec::new();
        let mut lines = Vec::new();
        for &n in &sizes {
            let started = Instant::now();
            let new = start_sandboxes(&instance, ids.len(), n.saturating_sub(ids.len()), memory_mb);
            for (i, id) in new.iter().enumerate() {
                let now = now_ms();
                let session = SessionRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    learner: format!("learner-{}", ids.len() + i),
                    exercise: format!("exercise-{}", (ids.len() + i) % 10),
                    image: IMAGE.into(),
                    spec: serde_json::to_string(&spec)?,
                    state: SessionState::Starting,
                    failure_reason: None,
                    container_id: None,
                    created_at: now,
                    last_activity_at: now,
                    ended_at: None,
                    node: "local".into(),
                    memory_mb: 0,
                };
                store.insert_session(&session).await?;
                store.mark_running(&session.id, id).await?;
            }
            ids.extend(new);
            eprintln!("{} sandboxes running ({:.0} s to start)", ids.len(), started.elapsed().as_secs_f64());
            let n = ids.len();

            // The first round finds each cgroup and reads its limits; later rounds reuse them.
            let cpu0 = process_cpu_ns();
            let info = usage.sample_once().await?;
            let first = (process_cpu_ns() - cpu0) as f64 / 1e9;
            anyhow::ensure!(info.sandboxes == n && info.unreadable == 0, "round saw {info:?} of {n}");

            let (mut cpu, mut wall, mut read) = (Vec::new(), Vec::new(), Vec::new());
            let engine0 = engine_cpu(tick);
            for _ in 0..rounds {
                let (c0, t0) = (process_cpu_ns(), Instant::now());
                let info = usage.sample_once().await?;
                cpu.push((process_cpu_ns() - c0) as f64 / 1e9);
                wall.push(t0.elapsed().as_secs_f64());
                read.push(info.read_cpu_ns as f64 / 1e9);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let engine_ours = (engine_cpu(tick) - engine0) / rounds as f64;
            let (cpu, wall, read) = (median(cpu), median(wall), median(read));

            let (mut s_wall, mut s_cli, mut s_engine) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..stats_runs {
                let mut args = vec!["stats", "--no-stream", "--no-trunc", "--format", "{{.ID}} {{.CPUPerc}} {{.MemUsage}}"];
                args.extend(ids.iter().map(String::as_str));
                let (cli0, engine0, t0) = (children_cpu(tick), engine_cpu(tick), Instant::now());
                let out = docker(&args)?;
                s_wall.push(t0.elapsed().as_secs_f64());
                s_cli.push(children_cpu(tick) - cli0);
                s_engine.push(engine_cpu(tick) - engine0);
                anyhow::ensure!(out.lines().count() >= n, "docker stats listed {} of {n}", out.lines().count());
            }
            let (s_wall, s_cli, s_engine) = (median(s_wall), median(s_cli), median(s_engine));

            lines.push(format!("{n} sandboxes:"));
            lines.push(format!(
                "  runner round        CPU {:>8.2} ms (cgroup reads {:.2} ms, {:.1} µs/sandbox)  wall {:>7.2} ms  [first round {:.2} ms; engine meanwhile {:.2} ms, its idle background: no engine call]",
                ms(cpu), ms(read), cpu * 1e6 / n as f64, ms(wall), ms(first), ms(engine_ours)
            ));
            lines.push(format!(
                "  docker stats        CPU {:>8.2} ms (CLI {:.0} ms + dockerd/containerd/shims {:.0} ms)  wall {:>7.0} ms",
                ms(s_cli + s_engine), ms(s_cli), ms(s_engine), ms(s_wall)
            ));
            lines.push(format!(
                "  ratio docker stats / runner round: CPU {:.0}x (CLI alone {:.0}x), wall {:.0}x",
                (s_cli + s_engine) / cpu, s_cli / cpu, s_wall / wall
            ));
        }
        println!("usage sampling, runc, busybox sleep sandboxes with {memory_mb} MiB memory limits, median of {rounds} rounds / {stats_runs} docker stats runs");
        for l in lines {
            println!("{l}");
        }
        anyhow::Ok(())
    }
    .await;
    remove_all(&instance);
    result
}
