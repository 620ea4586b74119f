//! Keeps each app's current version running, reconciled by label like sandboxes: a crashed
//! container is restarted up to its service's policy ("at most N restarts in T seconds"), then
//! the service is marked failed and reported; missing replicas (a host reboot, a runner restart)
//! are started again; the ingress routes follow what actually runs.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    deploy,
    notify::{self, Event},
    spec::ManagedAppSpec,
    Deploys,
};
use crate::{lifecycle::DeployState, store::ManagedAppRecord};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceState {
    /// `running`, `degraded` (fewer replicas than asked), `failed` (restart limit reached) or
    /// `stopped` (nothing deployed).
    pub state: &'static str,
    pub running: usize,
    pub replicas: u32,
    pub restarts: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Default)]
pub struct Supervisor {
    /// Restart times per (app, service), kept within the policy's window.
    restarts: Mutex<HashMap<(String, String), Vec<Instant>>>,
    failed: Mutex<HashMap<(String, String), String>>,
    observed: Mutex<HashMap<(String, String), usize>>,
}

impl Supervisor {
    pub fn states(&self, app: &str, spec: &ManagedAppSpec) -> BTreeMap<String, ServiceState> {
        let failed = self.failed.lock().expect("lock");
        let restarts = self.restarts.lock().expect("lock");
        let observed = self.observed.lock().expect("lock");
        spec.services
            .iter()
            .map(|(s, svc)| {
                let key = (app.to_string(), s.clone());
                let running = observed.get(&key).copied().unwrap_or(0);
                let reason = failed.get(&key).cloned();
                let state = if reason.is_some() {
                    "failed"
                } else if running == 0 {
                    "stopped"
                } else if running < svc.replicas as usize {
                    "degraded"
                } else {
                    "running"
                };
                let n = restarts.get(&key).map_or(0, Vec::len);
                (s.clone(), ServiceState { state, running, replicas: svc.replicas, restarts: n, reason })
            })
            .collect()
    }

    /// A new version starts with a clean slate.
    pub fn deployed(&self, app: &str) {
        self.failed.lock().expect("lock").retain(|(a, _), _| a != app);
        self.restarts.lock().expect("lock").retain(|(a, _), _| a != app);
    }

    /// Points the app's host at the running web containers of its current deploy.
    pub async fn refresh_routes(&self, deploys: &Deploys, rec: &ManagedAppRecord) {
        let Ok(spec) = serde_json::from_str::<super::ManagedAppSpec>(&rec.spec) else { return };
        let Some(deploy_id) = current_deploy(deploys, &rec.name).await else { return };
        let Some((web, svc)) = spec.web_service() else { return };
        let (Some(host), Some(port)) = (&spec.host, svc.port) else {
            deploys.ingress.remove_app(&rec.name);
            return;
        };
        let Ok(containers) = deploys.engine.app_containers(&rec.name).await else { return };
        let mut backends: Vec<(SocketAddr, String)> = Vec::new();
        for c in containers.iter().filter(|c| c.deploy == deploy_id && &c.service == web && c.running) {
            if let Ok(Some(p)) = deploys.engine.published_port(&c.id, port).await {
                backends.push((SocketAddr::from(([127, 0, 0, 1], p)), c.id.clone()));
            }
        }
        backends.sort();
        let current: Vec<(SocketAddr, String)> = deploys
            .ingress
            .route(host)
            .filter(|r| r.app == rec.name)
            .map(|r| r.backends.iter().map(|b| (b.addr, b.container.clone())).collect())
            .unwrap_or_default();
        let mut sorted_current = current.clone();
        sorted_current.sort();
        if sorted_current != backends {
            deploys.ingress.remove_app(&rec.name);
            deploys.ingress.set(host, &rec.name, backends);
        }
    }
}

/// The deploy whose containers are the app's current version.
async fn current_deploy(deploys: &Deploys, name: &str) -> Option<String> {
    let history = deploys.store.deploys_of(name, 50).await.ok()?;
    history.into_iter().find(|d| d.state == DeployState::Succeeded).map(|d| d.id)
}

pub async fn run(deploys: Arc<Deploys>, cancel: CancellationToken) {
    crate::rounds::every(Duration::from_secs(1), crate::rounds::First::Now, cancel, || async {
        let Ok(apps) = deploys.store.apps().await else { return };
        for rec in apps {
            if let Err(e) = supervise(&deploys, &rec).await {
                tracing::warn!(app = %rec.name, error = %format!("{e:#}"), "supervising the app failed");
            }
        }
        deploys.metrics.supervise_rounds.inc();
    })
    .await
}

async fn supervise(deploys: &Deploys, rec: &ManagedAppRecord) -> anyhow::Result<()> {
    let (Some(version), Some(image)) = (&rec.current_version, &rec.current_image) else { return Ok(()) };
    // A running deploy owns the containers until it ends.
    if deploys.store.deploys_of(&rec.name, 1).await?.first().is_some_and(|d| d.state == DeployState::Running) {
        return Ok(());
    }
    let Some(deploy_id) = current_deploy(deploys, &rec.name).await else { return Ok(()) };
    let (spec, secrets) = super::parse(deploys, rec)?;
    let containers = deploys.engine.app_containers(&rec.name).await?;
    let sup = &deploys.supervisor;
    // Failures recorded before a runner restart (or by another replica) still hold.
    for (service, reason) in deploys.store.service_failures(&rec.name, &deploy_id).await? {
        sup.failed.lock().expect("lock").entry((rec.name.clone(), service)).or_insert(reason);
    }
    for (service, svc) in &spec.services {
        let key = (rec.name.clone(), service.clone());
        let mine: Vec<_> = containers.iter().filter(|c| c.deploy == deploy_id && &c.service == service).collect();
        sup.observed.lock().expect("lock").insert(key.clone(), mine.iter().filter(|c| c.running).count());
        if sup.failed.lock().expect("lock").contains_key(&key) {
            continue;
        }
        // Replicas that are gone entirely (host reboot, removed by hand): start them again.
        for replica in 0..svc.replicas {
            let name = deploy::replica_name(deploys, &rec.name, service, &deploy_id, replica);
            if deploys.engine.container_status(&name).await?.is_none() {
                tracing::warn!(app = %rec.name, service, replica, "replica missing; starting it again");
                deploy::start_replica(
                    deploys, &rec.name, &spec, &secrets, service, svc, version, &deploy_id, image, replica,
                )
                .await?;
            }
        }
        // Crashed replicas: restart within the policy, else mark the service failed.
        for c in mine.iter().filter(|c| !c.running) {
            let window = Duration::from_secs(svc.restart.within_secs);
            let allowed = {
                let mut restarts = sup.restarts.lock().expect("lock");
                let times = restarts.entry(key.clone()).or_default();
                times.retain(|t| t.elapsed() < window);
                if times.len() < svc.restart.max as usize {
                    times.push(Instant::now());
                    true
                } else {
                    false
                }
            };
            if allowed {
                tracing::warn!(app = %rec.name, service, container = %c.id, "restarting a crashed container");
                deploys.engine.start_container(&c.id).await?;
            } else {
                let reason = format!(
                    "{service} kept crashing: {} restarts within {} s",
                    svc.restart.max, svc.restart.within_secs
                );
                tracing::error!(app = %rec.name, service, "{reason}; marked failed");
                deploys.store.record_service_failure(&rec.name, service, &deploy_id, &reason).await?;
                sup.failed.lock().expect("lock").insert(key.clone(), reason.clone());
                let event = Event {
                    app: rec.name.clone(),
                    kind: "service_failed",
                    version: Some(version.clone()),
                    deploy: Some(deploy_id.clone()),
                    message: reason,
                };
                notify::send(&deploys.http_client, &spec, &secrets, event);
                break;
            }
        }
    }
    sup.refresh_routes(deploys, rec).await;
    Ok(())
}
