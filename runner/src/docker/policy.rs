//! THE sandbox hardening policy (docs/ARCHITECTURE.md, invariant 3), in one function a reader can audit.
//!
//! Every sandbox container the runner creates is built by [`sandbox_container`]; nothing else
//! creates sandbox containers. Per-exercise settings can only choose values inside the operator's
//! caps (checked in `crate::exercises`), never switch a protection off.

use std::collections::HashMap;

use bollard::{
    container::Config,
    models::{
        HealthConfig, HostConfig, HostConfigLogConfig, Mount, MountTypeEnum, ResourcesUlimits, RestartPolicy,
        RestartPolicyNameEnum,
    },
};

use crate::{
    domain::{HealthProbe, Runtime, SandboxSpec, TMPFS_PATHS},
    engine::{
        ManagedAppContainer, Purpose, SandboxOwner, WorkspaceMount, LABEL_APP, LABEL_BUILD, LABEL_DEPLOY,
        LABEL_EXERCISE, LABEL_HEALTH, LABEL_INSTANCE, LABEL_LEARNER, LABEL_MANAGED, LABEL_POOL, LABEL_READER,
        LABEL_RUN, LABEL_SERVICE, LABEL_SESSION, LABEL_VERSION,
    },
};

/// Host threads gVisor's sandbox kernel may use beyond the learner's pids limit.
pub const RUNSC_THREAD_ALLOWANCE: u64 = 2048;

/// How long a reader sandbox (`Purpose::Reader`) lives at most: its main process is `sleep` for
/// this long, and the engine removes it when that ends, so one left by a runner that died
/// mid-read goes away by itself.
pub const READER_LIFETIME_SECS: u64 = 120;
/// The longest a one-shot run's sandbox lives (its `sleep`), should the runner not remove it.
pub const RUN_LIFETIME_SECS: u64 = 3600;

/// Builds the container configuration of a sandbox. The hardening, line by line:
/// The CPU weight of every sandbox (sessions and self-tests), half of Docker's default 1024.
/// Within the engine's cgroup, learners' code yields to the managed apps' containers. The
/// runner itself runs outside that cgroup: on cgroup v1 every busy runner thread weighs as much
/// as all containers together, so the API and the IDE proxy stay responsive when every core is
/// busy with learners' code (docs/ARCHITECTURE.md, "CPU priority").
pub const SANDBOX_CPU_SHARES: i64 = 512;

pub(super) fn sandbox_container(
    spec: &SandboxSpec,
    owner: &SandboxOwner<'_>,
    workspace: WorkspaceMount<'_>,
    runtime: Runtime,
    user: &str,
    probe: Option<HealthProbe>,
) -> Config<String> {
    let l = &spec.limits;
    let memory = (l.memory_mb * 1024 * 1024) as i64;
    let cpu_period = 100_000i64;
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), owner.instance.to_string()),
        (LABEL_LEARNER.to_string(), owner.learner.to_string()),
        (LABEL_EXERCISE.to_string(), owner.exercise.to_string()),
    ]);
    // Who runs the health check, always said, so an image's label cannot.
    labels.insert(LABEL_HEALTH.to_string(), probe.map_or_else(|| "engine".to_string(), |p| p.to_label()));
    match owner.purpose {
        Purpose::Session(id) => labels.insert(LABEL_SESSION.to_string(), id.to_string()),
        Purpose::Pool(id) => labels.insert(LABEL_POOL.to_string(), id.to_string()),
        Purpose::SelfTest(build) => labels.insert(LABEL_BUILD.to_string(), build.to_string()),
        Purpose::Reader(id) => labels.insert(LABEL_READER.to_string(), id.to_string()),
        Purpose::Run(id) => labels.insert(LABEL_RUN.to_string(), id.to_string()),
    };
    // A reader runs nothing of the image's (no entry point, no services): only `sleep`, while the
    // runner execs `tar` in it; never a network, whatever the exercise says.
    let reader = matches!(owner.purpose, Purpose::Reader(_));
    let run = matches!(owner.purpose, Purpose::Run(_));
    let network = if reader || run { None } else { spec.network.clone() };
    // `exec`: Docker defaults tmpfs to noexec, which would break running programs built in /tmp.
    let tmpfs_opts = |mb: u64| format!("rw,exec,nosuid,nodev,size={mb}m,mode=1777");
    // A tmpfs over a directory of the image is root's (Docker 20.10 applies only the directory's
    // mode): the learner's own writable paths are given to the sandbox user.
    let owned_by_user = |mb: u64| {
        let mut opts = tmpfs_opts(mb);
        let mut ids = user.split(':').map(|s| s.parse::<u32>().ok());
        if let Some(Some(uid)) = ids.next() {
            let gid = ids.next().flatten().unwrap_or(uid);
            opts.push_str(&format!(",uid={uid},gid={gid}"));
        }
        opts
    };
    let mut tmpfs: HashMap<String, String> =
        TMPFS_PATHS.iter().map(|p| (p.to_string(), tmpfs_opts(l.tmpfs_mb))).collect();
    for p in &spec.writable {
        tmpfs.insert(p.clone(), owned_by_user(l.tmpfs_mb));
    }
    let mut mounts = Vec::new();
    match workspace {
        WorkspaceMount::Volume(volume) => mounts.push(Mount {
            target: Some(spec.workdir.clone()),
            source: Some(volume.to_string()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(false),
            ..Default::default()
        }),
        // A reader sees the learner's files and cannot change them.
        WorkspaceMount::ReadOnlyVolume(volume) => mounts.push(Mount {
            target: Some(spec.workdir.clone()),
            source: Some(volume.to_string()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(true),
            ..Default::default()
        }),
        WorkspaceMount::Tmpfs => {
            tmpfs.insert(spec.workdir.clone(), owned_by_user(l.workspace_mb));
        }
    }
    // Under gVisor the pids cgroup also counts the sandbox kernel's own host threads (about 65
    // at rest, ~35 more per exec, ~570 under load): a learner-sized limit would kill the sandbox.
    // Learner processes there are goroutines of the sandbox kernel, bounded by its memory limit.
    let pids_limit = match runtime {
        Runtime::Runc | Runtime::Crun => l.pids,
        Runtime::Runsc => l.pids + RUNSC_THREAD_ALLOWANCE,
    };
    let host_config = HostConfig {
        // Pick the runtime: runc or crun on the host's kernel, or gVisor's runsc for a second kernel
        // boundary; every other line of this policy is the same under all three.
        runtime: Some(runtime.as_str().to_string()),
        // An init as PID 1 that forwards signals and reaps zombies.
        init: Some(true),
        // No capabilities at all, and no way to gain privileges through setuid binaries.
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: None,
        privileged: Some(false),
        // Docker's default seccomp profile stays on: nothing here names `seccomp=unconfined`.
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        // The image is immutable from inside; writes go to sized tmpfs or the workspace.
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        // The workspace is a named volume (size-limited by its driver); no host path is mounted.
        mounts: Some(mounts),
        binds: None,
        // Memory with swap equal to it: no swap, an OOM kill at the limit.
        memory: Some(memory),
        memory_swap: Some(memory),
        // CPU as a hard quota per period.
        cpu_period: Some(cpu_period),
        cpu_quota: Some((l.cpus * cpu_period as f64).round() as i64),
        // And a weight below everything else's when cores are contended: the course site's
        // containers (and any other workload at Docker's default 1024) go first.
        cpu_shares: Some(SANDBOX_CPU_SHARES),
        // A fork bomb hits the pids limit.
        pids_limit: Some(pids_limit as i64),
        ulimits: Some(vec![
            ResourcesUlimits { name: Some("nofile".into()), soft: Some(4096), hard: Some(4096) },
            ResourcesUlimits { name: Some("core".into()), soft: Some(0), hard: Some(0) },
        ]),
        // No network unless the exercise opted in (and the operator allows it).
        network_mode: Some(network.clone().unwrap_or_else(|| "none".into())),
        ipc_mode: Some("private".into()),
        // Logs cannot fill the disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "1m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        // The runner decides about restarts (reconciliation), not the engine.
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        // A reader is removed by the engine when its `sleep` ends (or the runner removes it first).
        auto_remove: Some(reader || run),
        ..Default::default()
    };
    Config {
        image: Some(spec.image.clone()),
        entrypoint: if reader {
            Some(vec!["sleep".to_string(), READER_LIFETIME_SECS.to_string()])
        } else if run {
            // A one-shot run: the runner removes it after its result; this is the backstop.
            Some(vec!["sleep".to_string(), RUN_LIFETIME_SECS.to_string()])
        } else {
            None
        },
        // Never root, whatever the image says.
        user: Some(user.to_string()),
        // Not for a run: a working directory is made in the image's root first, and its tmpfs then
        // takes that directory's 0755 instead of its own 1777 (the run's files are written by
        // the sandbox user, under a holder that is not); each exec of a run names it instead.
        working_dir: (!run).then(|| spec.workdir.clone()),
        hostname: Some("sandbox".into()),
        env: Some(vec![format!("EXERCISE_SLUG={}", owner.exercise)]),
        labels: Some(labels),
        network_disabled: Some(network.is_none()),
        host_config: Some(host_config),
        // The runner probes the agent itself (the label has the image's timing): no exec every
        // interval in every sandbox.
        healthcheck: (probe.is_some() || reader || run)
            .then(|| HealthConfig { test: Some(vec!["NONE".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// The app's own code is the school's, not a stranger's, but it still runs locked down the
/// Hexlet way: read-only root with tmpfs for its writable paths, no capabilities, no new
/// privileges, bounded memory, pids and logs; its port is published on 127.0.0.1 only, where the
/// runner's ingress reaches it.
pub(super) fn app_container(c: &ManagedAppContainer<'_>) -> Config<String> {
    let memory = (c.memory_mb * 1024 * 1024) as i64;
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), c.instance.to_string()),
        (LABEL_APP.to_string(), c.app.to_string()),
        (LABEL_SERVICE.to_string(), c.role.to_string()),
        (LABEL_VERSION.to_string(), c.version.to_string()),
        (LABEL_DEPLOY.to_string(), c.deploy.to_string()),
    ]);
    let tmpfs =
        c.writable.iter().map(|p| (p.clone(), "rw,exec,nosuid,nodev,size=256m,mode=1777".to_string())).collect();
    let mounts = c
        .volumes
        .iter()
        .map(|(name, path)| Mount {
            target: Some(path.clone()),
            source: Some(name.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(false),
            ..Default::default()
        })
        .collect();
    let port_key = c.port.map(|p| format!("{p}/tcp"));
    let host_config = HostConfig {
        init: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        mounts: Some(mounts),
        memory: Some(memory),
        memory_swap: Some(memory),
        pids_limit: Some(4096),
        network_mode: Some(c.network.to_string()),
        port_bindings: port_key.clone().map(|k| {
            HashMap::from([(
                k,
                Some(vec![bollard::models::PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "3".to_string()),
            ])),
        }),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        ..Default::default()
    };
    Config {
        image: Some(c.image.to_string()),
        cmd: Some(c.command.clone()),
        env: Some(c.env.clone()),
        labels: Some(labels),
        exposed_ports: port_key.map(|k| HashMap::from([(k, HashMap::new())])),
        tty: Some(c.tty),
        open_stdin: Some(c.tty),
        attach_stdin: Some(c.tty),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CheckSpec, Limits};

    fn spec(writable: &[&str]) -> SandboxSpec {
        SandboxSpec {
            image: "img".into(),
            limits: Limits::DEFAULT,
            network: None,
            workdir: "/workspace".into(),
            writable: writable.iter().map(|w| w.to_string()).collect(),
            check: CheckSpec::default(),
            ide: true,
        }
    }

    #[test]
    fn policy_applies_every_protection() {
        let spec = spec(&["/home/learner/.cache"]);
        let owner = SandboxOwner { instance: "i", purpose: Purpose::Session("s"), learner: "l", exercise: "e" };
        let c = sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Runc, "1000:1000", None);
        let h = c.host_config.as_ref().unwrap();
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(h.memory, h.memory_swap);
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.cpu_shares, Some(SANDBOX_CPU_SHARES));
        const { assert!(SANDBOX_CPU_SHARES < 1024, "below Docker's default weight") };
        assert!(h.binds.is_none());
        assert!(h.tmpfs.as_ref().unwrap().contains_key("/home/learner/.cache"), "writable paths are tmpfs");
        assert_eq!(c.labels.as_ref().unwrap()[LABEL_SESSION], "s");
        // A self-test sandbox has a tmpfs workspace and no volume.
        let owner = SandboxOwner { instance: "i", purpose: Purpose::SelfTest("b"), learner: "l", exercise: "e" };
        let c = sandbox_container(&spec, &owner, WorkspaceMount::Tmpfs, Runtime::Runc, "1000:1000", None);
        let h = c.host_config.as_ref().unwrap();
        assert!(h.mounts.as_ref().unwrap().is_empty());
        assert!(h.tmpfs.as_ref().unwrap()["/workspace"].contains("size=512m"));
        assert!(h.tmpfs.as_ref().unwrap()["/workspace"].contains("uid=1000,gid=1000"));
        assert_eq!(c.labels.as_ref().unwrap()[LABEL_BUILD], "b");
        assert!(!c.labels.as_ref().unwrap().contains_key(LABEL_SESSION));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.labels.as_ref().unwrap()[LABEL_MANAGED], "true");
        assert!(h.tmpfs.as_ref().unwrap()["/home/learner/.cache"].contains("uid=1000,gid=1000"));
        assert_eq!(h.pids_limit, Some(Limits::DEFAULT.pids as i64));
        let c = sandbox_container(&spec, &owner, WorkspaceMount::Tmpfs, Runtime::Runsc, "1000:1000", None);
        let pids = c.host_config.unwrap().pids_limit.unwrap();
        assert_eq!(pids, (Limits::DEFAULT.pids + RUNSC_THREAD_ALLOWANCE) as i64, "room for gVisor's own threads");
    }

    #[test]
    fn a_reader_gets_the_same_hardening_with_the_workspace_read_only_no_network_and_no_image_program() {
        let mut spec = spec(&[]);
        spec.network = Some("course-net".into());
        let owner = SandboxOwner { instance: "i", purpose: Purpose::Session("s"), learner: "l", exercise: "e" };
        let session = sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Runc, "1000:1000", None);
        let owner = SandboxOwner { instance: "i", purpose: Purpose::Reader("r"), learner: "l", exercise: "e" };
        let mut reader =
            sandbox_container(&spec, &owner, WorkspaceMount::ReadOnlyVolume("vol"), Runtime::Runc, "1000:1000", None);
        assert_eq!(reader.labels.as_ref().unwrap()[LABEL_READER], "r");
        assert!(!reader.labels.as_ref().unwrap().contains_key(LABEL_SESSION));
        assert_eq!(reader.entrypoint.as_deref(), Some(&["sleep".to_string(), READER_LIFETIME_SECS.to_string()][..]));
        assert_eq!(reader.healthcheck.as_ref().unwrap().test.as_deref(), Some(&["NONE".to_string()][..]));
        assert_eq!(reader.network_disabled, Some(true));
        let h = reader.host_config.as_mut().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"), "never a network");
        assert_eq!(h.mounts.as_ref().unwrap()[0].read_only, Some(true));
        assert_eq!(h.auto_remove, Some(true));
        // Everything else is the session's hardening.
        h.network_mode = Some("course-net".into());
        h.auto_remove = Some(false);
        h.mounts.as_mut().unwrap()[0].read_only = Some(false);
        assert_eq!(
            serde_json::to_value(&reader.host_config).unwrap(),
            serde_json::to_value(&session.host_config).unwrap()
        );
        assert_eq!(reader.user, session.user);
    }

    #[test]
    fn crun_gets_exactly_the_hardening_of_runc() {
        let spec = spec(&[]);
        let owner = SandboxOwner { instance: "i", purpose: Purpose::Session("s"), learner: "l", exercise: "e" };
        let runc = sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Runc, "1000:1000", None);
        let mut crun =
            sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Crun, "1000:1000", None);
        let host = crun.host_config.as_mut().unwrap();
        assert_eq!(host.runtime.as_deref(), Some("crun"));
        host.runtime = Some("runc".into());
        assert_eq!(
            serde_json::to_value(&crun).unwrap(),
            serde_json::to_value(&runc).unwrap(),
            "only the runtime differs"
        );
    }

    #[test]
    fn a_sandbox_the_runner_probes_has_the_engines_check_off_and_says_so_in_a_label() {
        let spec = spec(&[]);
        let owner = SandboxOwner { instance: "i", purpose: Purpose::Session("s"), learner: "l", exercise: "e" };
        let engine = sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Runsc, "1000:1000", None);
        assert!(engine.healthcheck.is_none(), "the image's own check runs");
        assert_eq!(engine.labels.as_ref().unwrap()[LABEL_HEALTH], "engine");
        let probe = HealthProbe {
            interval: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_secs(5),
            start_period: std::time::Duration::from_secs(20),
            retries: 3,
        };
        let runner =
            sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Crun, "1000:1000", Some(probe));
        assert_eq!(runner.healthcheck.unwrap().test.unwrap(), ["NONE"]);
        assert_eq!(HealthProbe::from_label(&runner.labels.as_ref().unwrap()[LABEL_HEALTH]), Some(probe));
        assert_eq!(
            serde_json::to_value(&runner.host_config).unwrap(),
            serde_json::to_value(
                &sandbox_container(&spec, &owner, WorkspaceMount::Volume("vol"), Runtime::Crun, "1000:1000", None)
                    .host_config
            )
            .unwrap(),
            "the hardening is the same"
        );
    }
}
