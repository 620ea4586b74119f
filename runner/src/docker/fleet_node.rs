//! `runner fleet-node`: the task of the fleet's Swarm global service on each node.
//!
//! A Swarm service cannot add device rules, share the host's process namespace or be
//! privileged (Engine API 1.41), and the runner needs devices and host PIDs on its node: loop devices for workspace
//! quotas, sandboxes' network namespaces for the IDE, cgroup files for usage. So the task
//! starts `runner serve` beside itself as a plain container of its node's engine (host network
//! and PIDs, four capabilities, the loop devices) (the pattern
//! of `swarm-launcher`), from the task's own image, with the task's environment and binds,
//! and follows it: its logs become the task's, its end ends the task (Swarm restarts it), and
//! the task's stop (a rolling update, `docker service rm`) stops it gracefully — sandboxes keep
//! running, and the next runner adopts them, as after any restart on one host.

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context};
use bollard::{
    container::{
        Config, CreateContainerOptions, InspectContainerOptions, LogsOptions, RemoveContainerOptions,
        StopContainerOptions, WaitContainerOptions,
    },
    models::HostConfig,
    Docker,
};
use futures_util::StreamExt;

/// The name of the runner's container on each node (one per engine).
pub const NODE_RUNNER: &str = "exercise-runner-node";
const LABEL_LAUNCHER: &str = "exercise-runner.fleet-node.launcher";
const LABEL_ROLE: &str = "exercise-runner.role";

/// This process's container id, from its cgroup (v1: `.../docker/<id>`; v2: the mountinfo's
/// `/docker/containers/<id>/`), else the hostname Docker gives a container.
fn own_container_id() -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in cgroup.lines() {
        if let Some(id) = line.rsplit('/').next().map(|s| s.trim_end_matches(".scope").trim_start_matches("docker-")) {
            if is_id(id) {
                return Some(id.to_string());
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for part in mountinfo.split('/') {
        if is_id(part) {
            return Some(part.to_string());
        }
    }
    std::env::var("HOSTNAME").ok()
}

/// What the sibling runner is given: the task's environment, with this node's name and URL
/// filled in from the Swarm when the stack leaves them out (`https://` on the fleet listener's
/// port, 8443 unless `RUNNER_FLEET_LISTEN` says, when the fleet has its TLS certificate), and
/// secrets as files in the data directory (the sibling cannot see the task's `/run/secrets`).
fn sibling_env(
    own: &[String],
    swarm_node: Option<(&str, &str)>,
    listen_port: u16,
    data_dir: &str,
) -> anyhow::Result<Vec<String>> {
    let mut env: Vec<(String, String)> =
        own.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let has = |env: &[(String, String)], k: &str| env.iter().any(|(key, v)| key == k && !v.is_empty());
    if let Some((id, addr)) = swarm_node {
        if !has(&env, "RUNNER_NODE") {
            env.push(("RUNNER_NODE".into(), id.to_ascii_lowercase()));
        }
        if !has(&env, "RUNNER_NODE_URL") {
            let tls = has(&env, "RUNNER_FLEET_TLS_CERT") || has(&env, "RUNNER_FLEET_TLS_CERT_FILE");
            let url = if tls {
                let port = env
                    .iter()
                    .find(|(k, _)| k == "RUNNER_FLEET_LISTEN")
                    .and_then(|(_, v)| v.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(8443);
                format!("https://{addr}:{port}")
            } else {
                format!("http://{addr}:{listen_port}")
            };
            env.push(("RUNNER_NODE_URL".into(), url));
        }
    }
    let secrets = std::path::Path::new(data_dir).join("fleet-secrets");
    for (k, v) in env.iter_mut() {
        if !k.ends_with("_FILE") || !v.starts_with("/run/secrets/") {
            continue;
        }
        let value = std::fs::read(&*v).with_context(|| format!("reading {k}={v}"))?;
        std::fs::create_dir_all(&secrets)?;
        let name = std::path::Path::new(v.as_str()).file_name().context("a secret file has a name")?;
        let copy = secrets.join(name);
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&copy)?;
        std::io::Write::write_all(&mut f, &value)?;
        *v = copy.display().to_string();
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Runs the node's runner beside this task until the task is stopped (`stop` resolves) or the
/// runner ends; the runner's exit code.
pub async fn run(stop: impl std::future::Future<Output = ()>) -> anyhow::Result<i64> {
    let docker = Docker::connect_with_local_defaults().context("connecting to the node's engine")?;
    let own_id = own_container_id().context("cannot tell this task's container id")?;
    let own = docker
        .inspect_container(&own_id, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("inspecting this task's container {own_id}"))?;
    let own_id = own.id.clone().unwrap_or(own_id);
    let image = own.image.clone().context("this task's container has no image")?;
    let config = own.config.clone().unwrap_or_default();
    let mut mounts: Vec<String> = own
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ == Some(bollard::models::MountPointTypeEnum::BIND))
        .filter_map(|m| {
            let (src, dst) = (m.source?, m.destination?);
            (!dst.starts_with("/run/secrets"))
                .then(|| format!("{src}:{dst}{}", if m.rw == Some(false) { ":ro" } else { "" }))
        })
        .collect();
    for host in ["/dev", "/sys/fs/cgroup"] {
        if !mounts.iter().any(|m| m.split(':').nth(1) == Some(host)) {
            mounts.push(format!("{host}:{host}"));
        }
    }
    mounts.sort();
    mounts.dedup();
    let info = docker.info().await.context("reading the node's engine")?;
    let swarm = info.swarm.as_ref();
    let node = swarm.and_then(|s| Some((s.node_id.clone()?, s.node_addr.clone()?))).filter(|(id, _)| !id.is_empty());
    let env_of =
        |k: &str| config.env.iter().flatten().find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string));
    let listen_port =
        env_of("RUNNER_LISTEN").and_then(|l| l.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).unwrap_or(8080);
    let data_dir = env_of("RUNNER_DATA_DIR").unwrap_or_else(|| "/var/lib/exercise-runner".into());
    let env = sibling_env(
        config.env.as_deref().unwrap_or_default(),
        node.as_ref().map(|(id, addr)| (id.as_str(), addr.as_str())),
        listen_port,
        &data_dir,
    )?;

    // A runner left by an earlier task (one that crashed, or a rolling update's old task that
    // did not stop it) is stopped first: one runner per node.
    if let Ok(old) = docker.inspect_container(NODE_RUNNER, None::<InspectContainerOptions>).await {
        let mine =
            old.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_LAUNCHER)) == Some(&own_id);
        if !mine || !old.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            eprintln!("[fleet-node] stopping the runner an earlier task left");
            let _ = docker.stop_container(NODE_RUNNER, Some(StopContainerOptions { t: 30 })).await;
            docker
                .remove_container(NODE_RUNNER, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                .await
                .context("removing the earlier runner")?;
        }
    }
    let labels = HashMap::from([
        (LABEL_ROLE.to_string(), "node-runner".to_string()),
        (LABEL_LAUNCHER.to_string(), own_id.clone()),
    ]);
    let create = Config {
        image: Some(image.clone()),
        cmd: Some(vec!["runner".into(), "serve".into()]),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            // Not `privileged`: only what the runner uses. Loop devices for workspace quotas
            // (block major 7, /dev/loop-control), entering sandboxes' network namespaces and
            // attaching loop devices (SYS_ADMIN), reading their /proc entries (SYS_PTRACE,
            // DAC_READ_SEARCH), the build network's firewall (NET_ADMIN). (A full
            // `--privileged` also asks for capabilities some hosts' bounding sets lack.)
            cap_add: Some(["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"].map(String::from).to_vec()),
            device_cgroup_rules: Some(vec!["b 7:* rwm".into(), "c 10:237 rwm".into()]),
            network_mode: Some("host".into()),
            pid_mode: Some("host".into()),
            binds: Some(mounts),
            init: Some(true),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([("max-size".into(), "10m".into()), ("max-file".into(), "3".into())])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    match docker.create_container(Some(CreateContainerOptions { name: NODE_RUNNER, platform: None }), create).await {
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {}
        Err(e) => return Err(e).context("creating the node's runner"),
    }
    docker.start_container::<String>(NODE_RUNNER, None).await.or_else(|e| match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 304, .. } => Ok(()),
        e => Err(e),
    })?;
    eprintln!("[fleet-node] started {NODE_RUNNER} from {image}");

    let logs = async {
        let mut logs = docker.logs::<String>(
            NODE_RUNNER,
            Some(LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() }),
        );
        while let Some(Ok(line)) = logs.next().await {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&line.into_bytes());
        }
        std::future::pending::<()>().await
    };
    let exited = async {
        let mut wait = docker.wait_container(NODE_RUNNER, None::<WaitContainerOptions<String>>);
        match wait.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            _ => 1,
        }
    };
    tokio::select! {
        code = exited => {
            eprintln!("[fleet-node] the node's runner ended with {code}");
            Ok(code)
        }
        _ = logs => unreachable!("the log relay never ends"),
        _ = stop => {
            // Swarm removes a drained node's tasks: the runner stays to serve the node's live
            // sessions to their end (it takes no new ones: its heartbeat says `drain`), and the
            // task that comes back when the node is active again replaces it.
            if node_is_draining().await {
                eprintln!("[fleet-node] the node is drained: its runner stays for the live sessions");
                return Ok(0);
            }
            eprintln!("[fleet-node] stopping the node's runner (its sandboxes keep running)");
            docker.stop_container(NODE_RUNNER, Some(StopContainerOptions { t: 30 })).await.ok();
            docker
                .remove_container(NODE_RUNNER, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                .await
                .ok();
            Ok(0)
        }
    }
}

/// Whether this Swarm node's availability is `drain` (read through a manager's engine).
async fn node_is_draining() -> bool {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    match super::connect("fleet-node", metrics).await {
        Ok(engine) => matches!(engine.swarm_availability().await, Ok(Some(a)) if a == "drain"),
        Err(_) => false,
    }
}

/// `runner fleet-node --health`: whether the node's runner answers `/healthz` on this node.
pub async fn health(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let response = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?.get(&url).send().await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sibling_learns_its_node_from_the_swarm_unless_the_stack_names_it() {
        let own = vec!["RUNNER_LISTEN=0.0.0.0:8080".to_string(), "PATH=/usr/bin".to_string()];
        let env = sibling_env(&own, Some(("ABC123", "10.1.0.11")), 8080, "/tmp").unwrap();
        assert!(env.contains(&"RUNNER_NODE=abc123".to_string()), "{env:?}");
        assert!(env.contains(&"RUNNER_NODE_URL=http://10.1.0.11:8080".to_string()), "{env:?}");
        let named = vec!["RUNNER_NODE=n1".to_string(), "RUNNER_NODE_URL=http://lb:1".to_string()];
        let env = sibling_env(&named, Some(("ABC123", "10.1.0.11")), 8080, "/tmp").unwrap();
        assert_eq!(env, named);
        // With the fleet's certificate, other runners reach this one over TLS on its fleet port.
        let tls = vec!["RUNNER_FLEET_TLS_CERT=pem".to_string()];
        let env = sibling_env(&tls, Some(("ABC123", "10.1.0.11")), 8080, "/tmp").unwrap();
        assert!(env.contains(&"RUNNER_NODE_URL=https://10.1.0.11:8443".to_string()), "{env:?}");
        let tls = vec!["RUNNER_FLEET_TLS_CERT=pem".to_string(), "RUNNER_FLEET_LISTEN=0.0.0.0:9443".to_string()];
        let env = sibling_env(&tls, Some(("ABC123", "10.1.0.11")), 8080, "/tmp").unwrap();
        assert!(env.contains(&"RUNNER_NODE_URL=https://10.1.0.11:9443".to_string()), "{env:?}");
    }
}
