//! The hardening policy, checked on real containers, and attacks from inside a sandbox.

mod common;

use std::time::{Duration, Instant};

use common::*;
use runner::domain::Runtime;
use serde_json::json;

/// The hardening tests run under runc and under crun: the policy must hold the same under both
/// OCI runtimes of the host's kernel (gVisor has its own test below: its kernel differs).
async fn app_under(runtime: Runtime) -> TestApp {
    spawn_app_with(|s| s.runtime = runtime).await
}

async fn one_session(app: &TestApp, slug: &str, extra: serde_json::Value) -> (String, String) {
    app.exercise(slug, extra).await;
    let s = app.session("attacker", slug).await;
    let id = s["id"].as_str().unwrap().to_string();
    let c = session_container(&app.instance, &id).unwrap();
    (id, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inspect_shows_the_whole_hardening_policy() {
    the_whole_hardening_policy(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inspect_shows_the_whole_hardening_policy_under_crun() {
    the_whole_hardening_policy(Runtime::Crun).await;
}

async fn the_whole_hardening_policy(runtime: Runtime) {
    let app = app_under(runtime).await;
    let (id, c) = one_session(&app, "inspect", json!({"limits": {"memory_mb": 96, "cpus": 0.5, "pids": 64}})).await;
    let i = inspect(&c);
    let h = &i["HostConfig"];
    assert_eq!(h["ReadonlyRootfs"], true);
    assert_eq!(h["CapDrop"], json!(["ALL"]));
    assert!(h["CapAdd"].is_null() || h["CapAdd"] == json!([]));
    assert_eq!(h["Privileged"], false);
    assert!(h["SecurityOpt"].as_array().unwrap().iter().any(|o| o.as_str().unwrap().starts_with("no-new-privileges")));
    assert!(!h["SecurityOpt"].to_string().contains("unconfined"), "default seccomp kept");
    assert_eq!(h["Memory"], 96 * 1024 * 1024);
    assert_eq!(h["Memory"], h["MemorySwap"], "no swap beyond memory");
    assert_eq!(h["PidsLimit"], 64);
    assert_eq!(h["CpuQuota"], 50_000);
    assert_eq!(h["CpuPeriod"], 100_000);
    assert_eq!(h["NetworkMode"], "none");
    assert_eq!(h["Init"], true);
    assert_eq!(h["Runtime"], runtime.as_str());
    assert!(h["Binds"].is_null(), "no host paths");
    for m in i["Mounts"].as_array().unwrap() {
        assert_eq!(m["Type"], "volume", "only the workspace volume is mounted: {m}");
    }
    for p in ["/tmp", "/var/tmp", "/run"] {
        assert!(h["Tmpfs"][p].as_str().unwrap().contains("size=16m"), "{p}: {}", h["Tmpfs"]);
    }
    assert_eq!(h["LogConfig"]["Config"]["max-size"], "1m");
    assert_eq!(i["Config"]["User"], "1000:1000");
    assert_eq!(i["Config"]["Labels"]["exercise-runner.managed"], "true");
    assert_eq!(i["Config"]["Labels"]["exercise-runner.session"], id.as_str());

    // And from inside: not root, read-only root, no capabilities, no network.
    let (_, out) = sandbox_exec(&c, "id -u");
    assert_eq!(out.trim(), "1000");
    let (code, out) = sandbox_exec(&c, "touch /etc/evil");
    assert_ne!(code, 0);
    assert!(out.contains("Read-only"), "{out}");
    let (_, out) = sandbox_exec(&c, "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let (_, out) = sandbox_exec(&c, "ls /sys/class/net");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["lo"], "only loopback");
    // The Docker socket is nowhere in reach.
    let (code, _) = sandbox_exec(&c, "test -e /var/run/docker.sock || test -e /run/docker.sock");
    assert_ne!(code, 0, "the Docker socket must never be reachable from a sandbox");
    let (_, out) = sandbox_exec(&c, "cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(out.contains("init"), "PID 1 is an init: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_and_the_api_keeps_answering() {
    a_fork_bomb_is_contained(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_under_crun() {
    a_fork_bomb_is_contained(Runtime::Crun).await;
}

async fn a_fork_bomb_is_contained(runtime: Runtime) {
    let app = app_under(runtime).await;
    let (id, c) = one_session(&app, "forkbomb", json!({"limits": {"pids": 64}})).await;
    // The classic bomb, in the background, for a few seconds.
    let bomb = std::process::Command::new("docker")
        .args(["exec", "-d", &c, "sh", "-c", "bomb() { bomb | bomb & }; bomb"])
        .status()
        .unwrap();
    assert!(bomb.success());
    let started = Instant::now();
    let mut worst_pids = 0u64;
    while started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let (status, _) = app.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "the API stalled during the bomb");
        if let Ok(s) = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/docker/{c}/pids.current")) {
            worst_pids = worst_pids.max(s.trim().parse().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worst_pids <= 64, "pids stayed within the limit, saw {worst_pids}");
    // The bomb ran into the limit: the cgroup counts the forks it refused.
    let events = format!("/sys/fs/cgroup/pids/docker/{c}/pids.events");
    let refused = eventually(Duration::from_secs(20), "forks refused at the pids limit", || {
        let text = std::fs::read_to_string(&events).expect("the pids cgroup at /sys/fs/cgroup/pids/docker");
        let n: u64 = text.trim().strip_prefix("max ").and_then(|n| n.parse().ok()).unwrap_or(0);
        (n > 0).then_some(n)
    })
    .await;
    assert!(refused > 0);
    // The host is fine and the session can be ended (which kills the bomb).
    let (status, v) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")));
    assert!(session_container(&app.instance, &id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_oom_killed_and_the_sandbox_survives() {
    a_memory_bomb_is_oom_killed(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_oom_killed_under_crun() {
    a_memory_bomb_is_oom_killed(Runtime::Crun).await;
}

async fn a_memory_bomb_is_oom_killed(runtime: Runtime) {
    let app = app_under(runtime).await;
    let (id, c) = one_session(&app, "membomb", json!({"limits": {"memory_mb": 64}})).await;
    // dd allocates its whole block in memory: 256 MiB against a 64 MiB limit with no swap.
    let (code, out) = sandbox_exec(&c, "dd if=/dev/zero of=/dev/null bs=256M count=1");
    assert_eq!(code, 137, "killed by the OOM killer: {out}");
    let (status, v) = app.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("running")));
    assert_eq!(sandbox_exec(&c, "echo alive").1, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_cannot_fill_the_disk() {
    the_disk_cannot_be_filled(Runtime::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_cannot_fill_the_disk_under_crun() {
    the_disk_cannot_be_filled(Runtime::Crun).await;
}

async fn the_disk_cannot_be_filled(runtime: Runtime) {
    let app = app_under(runtime).await;
    let (_, c) = one_session(&app, "diskfill", json!({"limits": {"workspace_mb": 16, "tmpfs_mb": 8}})).await;
    let (code, out) = sandbox_exec(&c, "dd if=/dev/zero of=/workspace/big bs=1M count=64");
    assert_ne!(code, 0);
    assert!(out.contains("No space left on device"), "{out}");
    let (_, out) = sandbox_exec(&c, "du -m /workspace/big | cut -f1");
    assert!(out.trim().parse::<u64>().unwrap() <= 16, "{out}");
    for dir in ["/tmp", "/var/tmp", "/run"] {
        let (code, out) = sandbox_exec(&c, &format!("dd if=/dev/zero of={dir}/big bs=1M count=64"));
        assert_ne!(code, 0, "{dir}");
        assert!(out.contains("No space left on device"), "{dir}: {out}");
    }
    // Nowhere else is writable.
    for dir in ["/", "/home/learner", "/etc", "/usr"] {
        assert_ne!(sandbox_exec(&c, &format!("echo x > {dir}/f")).0, 0, "{dir} is writable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_run_under_gvisor_when_configured() {
    let app = app_under(Runtime::Runsc).await;
    let (id, c) = one_session(&app, "gvisor", json!({})).await;
    assert_eq!(inspect(&c)["HostConfig"]["Runtime"], "runsc");
    // gVisor's kernel announces itself in dmesg.
    let (_, out) = sandbox_exec(&c, "dmesg 2>/dev/null | head -3; id -u");
    assert!(out.contains("gVisor") || out.contains("Starting"), "{out}");
    assert!(out.trim_end().ends_with("1000"), "{out}");
    assert_eq!(sandbox_exec(&c, "echo hi > /workspace/f && cat /workspace/f").1, "hi\n");
    let (status, v) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_run_under_crun_when_configured() {
    let app = app_under(Runtime::Crun).await;
    let (id, c) = one_session(&app, "crun", json!({})).await;
    assert_eq!(inspect(&c)["HostConfig"]["Runtime"], "crun");
    // The engine keeps its OCI runtimes' state under one root; crun knows this container there
    // (runc would not: its state is another format).
    let root = "/run/docker/runtime-runc/moby";
    let state = std::process::Command::new("crun").args(["--root", root, "state", &c]).output().unwrap();
    assert!(state.status.success(), "crun does not know {c}: {}", String::from_utf8_lossy(&state.stderr));
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(sandbox_exec(&c, "echo hi > /workspace/f && cat /workspace/f; id -u").1, "hi\n1000\n");
    let (status, v) = app.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_only_there_for_exercises_that_opt_in() {
    // By default no exercise may opt in: the operator names a network first.
    let default = spawn_app().await;
    let (status, v) = default.put("/v1/exercises/online", json!({"image": IMAGE, "network": true})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("network_not_allowed")));
    let app = spawn_app_with(|s| s.sandbox_network = Some("bridge".into())).await;
    let (_, c) = one_session(&app, "online", json!({"network": true})).await;
    let i = inspect(&c);
    assert_eq!(i["HostConfig"]["NetworkMode"], "bridge");
    // Operators can forbid it altogether.
    let strict = spawn_app_with(|s| s.sandbox_network = None).await;
    let (status, v) = strict.put("/v1/exercises/online", json!({"image": IMAGE, "network": true})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("network_not_allowed")));
}

/// A workspace removed between its preparation and its sandbox's create (an erasure or a reset
/// racing a start; the API fuzzer left such a volume behind once): the engine would make up an
/// empty, unlabelled volume of that name without the workspace's size limit. The runner refuses
/// that sandbox and removes it and the made-up volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_is_never_made_on_a_workspace_volume_the_engine_made_up() {
    use runner::{
        domain::{CheckSpec, Limits, SandboxSpec},
        engine::{Purpose, SandboxOwner, WorkspaceMount},
    };
    require_docker();
    let (instance, _tmp) = new_instance();
    let engine =
        runner::docker::connect(&instance, std::sync::Arc::new(runner::metrics::Metrics::new())).await.unwrap();
    let spec = SandboxSpec {
        image: "exercise-runner/busybox:latest".into(),
        limits: Limits::DEFAULT,
        network: None,
        workdir: "/workspace".into(),
        writable: Vec::new(),
        check: CheckSpec::default(),
        ide: false,
    };
    let session = uuid::Uuid::new_v4().to_string();
    let owner =
        SandboxOwner { instance: &instance, purpose: Purpose::Session(&session), learner: "ada", exercise: "gone" };
    let missing = format!("exercise-runner-ws-{instance}-erased");
    let e = engine
        .create_sandbox(&spec, &owner, WorkspaceMount::Volume(&missing), Runtime::Runc, "1000:1000")
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("was removed before its sandbox was made"), "{e:#}");
    assert!(containers_of(&instance).is_empty(), "no sandbox was left");
    let vols = docker(&["volume", "ls", "-q", "--filter", &format!("name={missing}")]);
    assert!(vols.trim().is_empty(), "the made-up volume is gone: {vols}");

    // A workspace the runner made is mounted as ever.
    let ours = format!("exercise-runner-ws-{instance}-ours");
    engine.create_volume(&ours, Default::default()).await.unwrap();
    let id =
        engine.create_sandbox(&spec, &owner, WorkspaceMount::Volume(&ours), Runtime::Runc, "1000:1000").await.unwrap();
    engine.remove_container(&id).await.unwrap();
    cleanup_instance(&instance, _tmp.path());
}
