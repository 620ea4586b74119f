//! Managed apps: the course web app deployed as "just another managed image" (tagged image
//! pulled and pinned by digest, a one-off release container for migrations, services rolled with
//! health checks behind the runner's ingress, rollbacks by re-pinning, chat notifications).

pub mod deploy;
pub mod ingress;
pub mod notify;
pub mod spec;
pub mod supervise;

use crate::domain::rfc3339;
use serde::Serialize;

use std::sync::Arc;

use crate::{
    config::Settings,
    domain::Invalid,
    engine::Engine,
    lifecycle::DeployState,
    metrics::Metrics,
    secret_box::SecretBox,
    store::{DeployRecord, ManagedAppRecord, Store, Written},
};
pub use spec::{ManagedAppInput, ManagedAppSpec, Secrets};

/// The managed-app capability: definitions, deploys and rollbacks, the supervisor that keeps the
/// current version running, and the ingress routes that follow it. Built once at launch.
pub struct Deploys {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Routes of the managed apps' ingress.
    pub ingress: Arc<ingress::Ingress>,
    pub supervisor: supervise::Supervisor,
    /// For health checks and webhooks.
    pub http_client: reqwest::Client,
    /// Seals and opens app secrets stored in the database.
    pub secret_box: SecretBox,
    /// Cancelled when the service shuts down; deploys in flight stop with it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Deploys {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        engine: Engine,
        metrics: Arc<Metrics>,
        secret_box: SecretBox,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Deploys> {
        Arc::new(Deploys {
            settings,
            store,
            engine,
            metrics,
            ingress: Arc::new(Default::default()),
            supervisor: Default::default(),
            http_client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            secret_box,
            shutdown,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagedAppError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("app {0:?} does not exist")]
    NotFound(String),
    #[error("deploy {0:?} does not exist")]
    DeployNotFound(String),
    #[error("app {0:?} is being deployed already")]
    DeployRunning(String),
    #[error("host {0:?} is served by app {1:?}")]
    HostTaken(String, String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An app as the API shows it: the definition without secret values, and its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ManagedAppView {
    pub name: String,
    #[serde(flatten)]
    pub spec: ManagedAppSpec,
    pub current_version: Option<String>,
    pub current_image: Option<String>,
    pub services_state: std::collections::BTreeMap<String, supervise::ServiceState>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn view(deploys: &Deploys, r: &ManagedAppRecord) -> anyhow::Result<ManagedAppView> {
    let spec: ManagedAppSpec = serde_json::from_str(&r.spec)?;
    let services_state = deploys.supervisor.states(&r.name, &spec);
    Ok(ManagedAppView {
        name: r.name.clone(),
        spec,
        current_version: r.current_version.clone(),
        current_image: r.current_image.clone(),
        services_state,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeployView {
    pub id: String,
    pub app: String,
    pub kind: String,
    pub version: String,
    pub image: Option<String>,
    pub state: DeployState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub previous_version: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

pub fn deploy_view(d: &DeployRecord) -> DeployView {
    DeployView {
        id: d.id.clone(),
        app: d.app.clone(),
        kind: d.kind.clone(),
        version: d.version.clone(),
        image: d.image.clone(),
        state: d.state,
        failure_reason: d.failure_reason.clone(),
        previous_version: d.previous_version.clone(),
        created_at: rfc3339(d.created_at),
        finished_at: d.finished_at.map(rfc3339),
    }
}

/// Creates or replaces an app's definition. Returns the view and whether it was created.
pub async fn put(
    deploys: &Deploys,
    name: &str,
    input: ManagedAppInput,
) -> Result<(ManagedAppView, bool), ManagedAppError> {
    // Read, merge, write if nobody wrote in between; else again (concurrent PUTs of one app all
    // land, none is lost, none fails).
    for _ in 0..crate::store::MAX_WRITE_ATTEMPTS {
        let existing = deploys.store.app(name).await?;
        // Secrets the new definition does not repeat are kept. Ones sealed under another key
        // cannot be: the new definition then stands alone (and says so in the log).
        let old_secrets: Option<Secrets> = match &existing {
            Some(r) => match open_secrets(deploys, r) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(app = %name, error = %format!("{e:#}"), "stored secrets do not open; replacing them");
                    None
                }
            },
            None => None,
        };
        let (spec, secrets) = spec::validate(name, input.clone(), old_secrets.as_ref())?;
        if let Some(host) = &spec.host {
            for other in deploys.store.apps().await? {
                if other.name != name
                    && serde_json::from_str::<ManagedAppSpec>(&other.spec).is_ok_and(|s| s.host.as_ref() == Some(host))
                {
                    return Err(ManagedAppError::HostTaken(host.clone(), other.name));
                }
            }
        }
        let written = deploys
            .store
            .write_app(
                name,
                &serde_json::to_string(&spec).map_err(anyhow::Error::from)?,
                &deploys.secret_box.seal(name, &serde_json::to_string(&secrets).map_err(anyhow::Error::from)?)?,
                existing.map(|r| r.revision),
            )
            .await?;
        if written == Written::Conflict {
            continue;
        }
        let record = deploys.store.app(name).await?.ok_or_else(|| ManagedAppError::NotFound(name.to_string()))?;
        // A changed host moves the route at once.
        deploys.supervisor.refresh_routes(deploys, &record).await;
        return Ok((view(deploys, &record)?, written == Written::Created));
    }
    Err(anyhow::anyhow!("app {name}: too many concurrent writes").into())
}

pub async fn get(deploys: &Deploys, name: &str) -> Result<ManagedAppRecord, ManagedAppError> {
    deploys.store.app(name).await?.ok_or_else(|| ManagedAppError::NotFound(name.to_string()))
}

/// An app's definition and its secrets, opened with the runner's secrets key.
pub fn parse(deploys: &Deploys, r: &ManagedAppRecord) -> anyhow::Result<(ManagedAppSpec, Secrets)> {
    Ok((serde_json::from_str(&r.spec)?, open_secrets(deploys, r)?))
}

fn open_secrets(deploys: &Deploys, r: &ManagedAppRecord) -> anyhow::Result<Secrets> {
    let json = deploys.secret_box.open(&r.name, &r.secrets)?;
    anyhow::Context::context(serde_json::from_str(&json), "reading an app's secrets")
}

/// Seals the secrets of apps stored before secrets were sealed (plaintext rows). Run at start.
pub async fn seal_legacy_secrets(deploys: &Deploys) -> anyhow::Result<usize> {
    let mut sealed = 0;
    for r in deploys.store.apps().await? {
        if !crate::secret_box::SecretBox::is_sealed(&r.secrets) {
            let value = deploys.secret_box.seal(&r.name, &r.secrets)?;
            if deploys.store.replace_app_secrets(&r.name, &r.secrets, &value).await? {
                sealed += 1;
            }
        }
    }
    Ok(sealed)
}
