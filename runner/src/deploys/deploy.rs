//! Deploys: pull and pin → release once → roll each service (start, wait healthy, switch traffic,
//! drain, stop the old) → record. Any failure before the switch leaves the old version serving.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context};

use super::{
    ingress::Ingress,
    notify::{self, Event},
    spec::{ManagedAppSpec, Secrets, ServiceSpec},
    Deploys, ManagedAppError,
};
use crate::{
    builds::log::BuildLog,
    domain::Invalid,
    engine::ManagedAppContainer,
    lifecycle::DeployState,
    store::{now_ms, DeployRecord, ManagedAppRecord},
};

pub const DEPLOY: &str = "deploy";
pub const ROLLBACK: &str = "rollback";

pub fn check_version(v: &str) -> Result<(), Invalid> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['.', '-'])
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new("invalid_version", format!("version {v:?} is not an image tag")))
    }
}

fn logs_dir(deploys: &Deploys) -> std::path::PathBuf {
    deploys.settings.data_dir.join("deploys")
}

pub fn log_path(deploys: &Deploys, id: &str) -> std::path::PathBuf {
    crate::builds::log::path(&logs_dir(deploys), id)
}

/// Starts a deploy of `version` (`image` set: a rollback to that pinned image).
pub async fn start(
    deploys: &Arc<Deploys>,
    name: &str,
    version: &str,
    image: Option<String>,
) -> Result<DeployRecord, ManagedAppError> {
    check_version(version)?;
    let rec = super::get(deploys, name).await?;
    let d = DeployRecord {
        id: uuid::Uuid::new_v4().to_string(),
        app: name.to_string(),
        kind: if image.is_some() { ROLLBACK } else { DEPLOY }.to_string(),
        version: version.to_string(),
        image,
        state: DeployState::Running,
        failure_reason: None,
        previous_version: rec.current_version.clone(),
        created_at: now_ms(),
        finished_at: None,
    };
    if deploys.store.insert_deploy(&d).await?.is_none() {
        return Err(ManagedAppError::DeployRunning(name.to_string()));
    }
    tokio::spawn(run(deploys.clone(), d.clone()));
    Ok(d)
}

/// Rolls back to `to`, or to the newest successful version before the current one.
pub async fn rollback(deploys: &Arc<Deploys>, name: &str, to: Option<&str>) -> Result<DeployRecord, ManagedAppError> {
    let rec = super::get(deploys, name).await?;
    let history = deploys.store.deploys_of(name, 200).await?;
    let target = history.iter().find(|d| {
        d.state == DeployState::Succeeded
            && d.image.is_some()
            && match to {
                Some(v) => d.version == v,
                None => Some(&d.version) != rec.current_version.as_ref(),
            }
    });
    let Some(target) = target else {
        return Err(ManagedAppError::Conflict(match to {
            Some(v) => format!("version {v:?} of {name:?} was never deployed successfully"),
            None => format!("{name:?} has no earlier successful version to roll back to"),
        }));
    };
    start(deploys, name, &target.version.clone(), target.image.clone()).await
}

async fn run(deploys: Arc<Deploys>, d: DeployRecord) {
    let mut log = BuildLog::open(&logs_dir(&deploys), &d.id);
    let rec = match super::get(&deploys, &d.app).await {
        Ok(r) => r,
        Err(e) => {
            let _ = deploys.store.finish_deploy(&d.id, DeployState::Failed, Some(&e.to_string())).await;
            return;
        }
    };
    let (spec, secrets) = match super::parse(&deploys, &rec) {
        Ok(x) => x,
        Err(e) => {
            let _ = deploys.store.finish_deploy(&d.id, DeployState::Failed, Some(&format!("{e:#}"))).await;
            return;
        }
    };
    // Whatever the release command or a health check prints, no secret value reaches the log.
    log.redact(secrets.values());
    let event = |kind, message: String| Event {
        app: d.app.clone(),
        kind,
        version: Some(d.version.clone()),
        deploy: Some(d.id.clone()),
        message,
    };
    notify::send(
        &deploys.http_client,
        &spec,
        &secrets,
        event("deploy_started", format!("{} of {} started", d.kind, d.version)),
    );
    log.step(&format!("{} of {} to {}", d.kind, d.app, d.version));
    let outcome = tokio::select! {
        r = steps(&deploys, &rec, &spec, &secrets, &d, &mut log) => r,
        _ = deploys.shutdown.cancelled() => Err(anyhow::anyhow!("interrupted by a runner shutdown; deploy again")),
    };
    // Whatever failed, the new containers go and the old version keeps serving.
    if outcome.is_err() {
        remove_deploy_containers(&deploys, &d.app, &d.id).await;
    }
    match outcome {
        Ok(()) => {
            log.step("succeeded");
            let _ = deploys.store.finish_deploy(&d.id, DeployState::Succeeded, None).await;
            let (kind, what) = if d.kind == ROLLBACK {
                ("rolled_back", "rolled back to")
            } else {
                ("deploy_succeeded", "is now running")
            };
            notify::send(&deploys.http_client, &spec, &secrets, event(kind, format!("{} {what} {}", d.app, d.version)));
            tracing::info!(app = %d.app, version = %d.version, kind = %d.kind, "deploy succeeded");
        }
        Err(e) => {
            let reason: String = format!("{e:#}").chars().take(2000).collect();
            log.step(&format!("failed: {reason}"));
            let _ = deploys.store.finish_deploy(&d.id, DeployState::Failed, Some(&reason)).await;
            notify::send(
                &deploys.http_client,
                &spec,
                &secrets,
                event("deploy_failed", format!("{} of {} failed: {reason}", d.kind, d.version)),
            );
            tracing::warn!(app = %d.app, version = %d.version, error = %reason, "deploy failed");
        }
    }
}

pub(crate) fn env(spec: &ManagedAppSpec, secrets: &Secrets, name: &str, version: &str) -> Vec<String> {
    let mut env: Vec<String> = spec.env.iter().chain(secrets.env.iter()).map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("APP_NAME={name}"));
    env.push(format!("APP_VERSION={version}"));
    env
}

pub(crate) fn volumes(deploys: &Deploys, name: &str, spec: &ManagedAppSpec) -> Vec<(String, String)> {
    spec.volumes
        .iter()
        .map(|(v, path)| (format!("exercise-runner-{}-app-{name}-{v}", deploys.engine.instance()), path.clone()))
        .collect()
}

/// A container of this app, described for the one app policy function (`ContainerEngine::create_app_container`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn container<'a>(
    deploys: &'a Deploys,
    name: &'a str,
    spec: &'a ManagedAppSpec,
    secrets: &Secrets,
    role: &'a str,
    version: &'a str,
    deploy: &'a str,
    image: &'a str,
    command: Vec<String>,
    port: Option<u16>,
    tty: bool,
) -> ManagedAppContainer<'a> {
    ManagedAppContainer {
        instance: deploys.engine.instance(),
        app: name,
        role,
        version,
        deploy,
        image,
        command,
        env: env(spec, secrets, name, version),
        port,
        writable: &spec.writable,
        volumes: volumes(deploys, name, spec),
        memory_mb: spec.memory_mb,
        network: &deploys.settings.app_network,
        tty,
    }
}

/// The app's registry login, when it has one.
fn registry_auth<'a>(spec: &'a ManagedAppSpec, secrets: &'a Secrets) -> Option<(&'a str, &'a str)> {
    spec.registry.as_ref().zip(secrets.registry_password.as_ref()).map(|(r, p)| (r.username.as_str(), p.as_str()))
}

/// The app's named volumes, made (and labelled) before a container mounts them.
pub(crate) async fn ensure_volumes(deploys: &Deploys, name: &str, spec: &ManagedAppSpec) -> anyhow::Result<()> {
    for (volume, _) in volumes(deploys, name, spec) {
        deploys.engine.ensure_app_volume(&volume, name).await?;
    }
    Ok(())
}

pub(crate) fn replica_name(deploys: &Deploys, name: &str, service: &str, deploy: &str, replica: u32) -> String {
    format!("exercise-runner-{}-app-{name}-{service}-{}-{replica}", deploys.engine.instance(), &deploy[..8])
}

/// Starts one replica of a service; its container id.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_replica(
    deploys: &Deploys,
    name: &str,
    spec: &ManagedAppSpec,
    secrets: &Secrets,
    service: &str,
    svc: &ServiceSpec,
    version: &str,
    deploy: &str,
    image: &str,
    replica: u32,
) -> anyhow::Result<String> {
    ensure_volumes(deploys, name, spec).await?;
    let config =
        container(deploys, name, spec, secrets, service, version, deploy, image, svc.command.clone(), svc.port, false);
    let id =
        deploys.engine.create_app_container(&replica_name(deploys, name, service, deploy, replica), &config).await?;
    deploys.engine.start_container(&id).await?;
    Ok(id)
}

/// Polls the health path until it answers 2xx/3xx; the backend address.
async fn wait_healthy(
    deploys: &Deploys,
    container: &str,
    port: u16,
    svc: &ServiceSpec,
    log: &mut BuildLog,
) -> anyhow::Result<SocketAddr> {
    let timeout = Duration::from_secs(svc.health.as_ref().map_or(30, |h| h.timeout_secs));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer");
    loop {
        match deploys.engine.container_status(container).await? {
            Some(s) if s.running => {}
            Some(s) => bail!("container exited (code {:?}) before it was healthy", s.exit_code),
            None => bail!("container vanished before it was healthy"),
        }
        if let Some(host_port) = deploys.engine.published_port(container, port).await? {
            let addr = SocketAddr::from(([127, 0, 0, 1], host_port));
            match &svc.health {
                None => {
                    if tokio::net::TcpStream::connect(addr).await.is_ok() {
                        return Ok(addr);
                    }
                }
                Some(h) => match deploys
                    .http_client
                    .get(format!("http://{addr}{}", h.path))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() || r.status().is_redirection() => {
                        log.write(&format!("healthy: GET {} answered {}", h.path, r.status()));
                        return Ok(addr);
                    }
                    Ok(r) => last = format!("GET {} answered {}", h.path, r.status()),
                    Err(e) => last = e.to_string(),
                },
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not healthy within {} s: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a one-off container to completion, logging its output; its exit code.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_once(
    deploys: &Deploys,
    name: &str,
    spec: &ManagedAppSpec,
    secrets: &Secrets,
    role: &str,
    version: &str,
    image: &str,
    command: Vec<String>,
    mut sink: impl FnMut(&[u8]) + Send,
) -> anyhow::Result<i64> {
    let id = uuid::Uuid::new_v4().to_string();
    ensure_volumes(deploys, name, spec).await?;
    let config = container(deploys, name, spec, secrets, role, version, &id, image, command, None, false);
    let cname = format!("exercise-runner-{}-app-{name}-{role}-{}", deploys.engine.instance(), &id[..8]);
    let cid = deploys.engine.create_app_container(&cname, &config).await?;
    let result = async {
        deploys.engine.start_container(&cid).await?;
        deploys.engine.follow_logs(&cid, 4 * 1024 * 1024, &mut sink).await?;
        deploys.engine.wait_exit(&cid).await
    }
    .await;
    deploys.engine.remove_container(&cid).await?;
    result
}

async fn steps(
    deploys: &Arc<Deploys>,
    rec: &ManagedAppRecord,
    spec: &ManagedAppSpec,
    secrets: &Secrets,
    d: &DeployRecord,
    log: &mut BuildLog,
) -> anyhow::Result<()> {
    let name = &rec.name;
    // 1. The image, pinned by digest.
    let pinned = match &d.image {
        Some(pinned) => {
            log.step(&format!("re-pinning {pinned} (no pull, no rebuild)"));
            if deploys.engine.image(pinned).await?.is_none() {
                let (repo, digest) = pinned.split_once('@').context("a pinned image is repo@digest")?;
                let auth = registry_auth(spec, secrets);
                deploys.engine.pull(repo, digest, auth, &mut |l| log.write(l)).await?;
            }
            pinned.clone()
        }
        None => {
            log.step(&format!("pulling {}:{}", spec.image, d.version));
            let auth = registry_auth(spec, secrets);
            deploys.engine.pull(&spec.image, &d.version, auth, &mut |l| log.write(l)).await?;
            let tagged = format!("{}:{}", spec.image, d.version);
            let pinned = match deploys.engine.repo_digest(&tagged, &spec.image).await? {
                Some(p) => p,
                None => deploys.engine.image(&tagged).await?.context("the pulled image vanished")?.id,
            };
            log.step(&format!("pinned {pinned}"));
            pinned
        }
    };
    deploys.store.set_deploy_image(&d.id, &pinned).await?;

    // 2. The release command, once, in a one-off container. Failure stops here.
    if let (Some(release), DEPLOY) = (&spec.release, d.kind.as_str()) {
        log.step(&format!("release: {}", release.join(" ")));
        // Whole lines only, so a secret split across two output chunks is still redacted.
        let mut pending: Vec<u8> = Vec::new();
        let code = run_once(deploys, name, spec, secrets, "release", &d.version, &pinned, release.clone(), |b| {
            pending.extend_from_slice(b);
            if let Some(end) = pending.iter().rposition(|c| *c == b'\n') {
                let lines: Vec<u8> = pending.drain(..=end).collect();
                log.write(String::from_utf8_lossy(&lines).trim_end_matches('\n'));
            } else if pending.len() > 64 * 1024 {
                log.write(&String::from_utf8_lossy(&std::mem::take(&mut pending)));
            }
        })
        .await;
        if !pending.is_empty() {
            log.write(&String::from_utf8_lossy(&pending));
        }
        let code = code?;
        if code != 0 {
            bail!("the release command exited with {code}; nothing was restarted");
        }
    }

    // 3. New containers for every service, healthy before any traffic moves.
    let mut web_backends = Vec::new();
    let web = spec.web_service().map(|(n, _)| n.clone());
    for (service, svc) in &spec.services {
        for replica in 0..svc.replicas {
            log.step(&format!("starting {service} #{replica}"));
            let cid =
                start_replica(deploys, name, spec, secrets, service, svc, &d.version, &d.id, &pinned, replica).await?;
            match svc.port {
                Some(port) => {
                    let addr = wait_healthy(deploys, &cid, port, svc, log)
                        .await
                        .with_context(|| format!("{service} #{replica}"))?;
                    if Some(service) == web.as_ref() {
                        web_backends.push((addr, cid));
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let status = deploys.engine.container_status(&cid).await?;
                    if !status.as_ref().is_some_and(|s| s.running) {
                        bail!("{service} #{replica} exited at start (code {:?})", status.and_then(|s| s.exit_code));
                    }
                }
            }
        }
    }

    // 4. Switch traffic in one step, then record the new version.
    let old_route = match &spec.host {
        Some(host) if !web_backends.is_empty() => {
            log.step(&format!("switching {host} to {} new container(s)", web_backends.len()));
            deploys.ingress.set(host, name, web_backends)
        }
        _ => None,
    };
    deploys.store.set_app_current(name, &d.version, &pinned).await?;
    deploys.supervisor.deployed(name);

    // 5. Drain and stop what came before.
    if let Some(old) = old_route {
        Ingress::drain(&old, Duration::from_secs(30)).await;
    }
    for c in deploys.engine.app_containers(name).await? {
        if c.deploy != d.id && c.service != "run" {
            log.write(&format!("stopping old {} ({})", c.service, c.version));
            deploys.engine.remove_container(&c.id).await?;
        }
    }
    Ok(())
}

async fn remove_deploy_containers(deploys: &Deploys, name: &str, deploy: &str) {
    if let Ok(list) = deploys.engine.app_containers(name).await {
        for c in list.into_iter().filter(|c| c.deploy == deploy) {
            let _ = deploys.engine.remove_container(&c.id).await;
        }
    }
}

/// At start: deploys a crash interrupted are failed with the reason (else the app could never be
/// deployed again), and the containers they had started go; the previous version kept serving.
pub async fn recover(deploys: &Deploys) -> anyhow::Result<()> {
    for d in deploys.store.running_deploys().await? {
        tracing::warn!(app = %d.app, deploy = %d.id, "deploy interrupted by a runner restart");
        BuildLog::open(&logs_dir(deploys), &d.id).step("interrupted by a runner restart");
        remove_deploy_containers(deploys, &d.app, &d.id).await;
        deploys
            .store
            .finish_deploy(&d.id, DeployState::Failed, Some("interrupted by a runner restart; deploy again"))
            .await?;
    }
    Ok(())
}
