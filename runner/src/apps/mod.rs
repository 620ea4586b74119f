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

use crate::{
    app::App,
    domain::Invalid,
    lifecycle::DeployState,
    store::{AppRecord, DeployRecord, Written},
};
pub use spec::{AppInput, AppSpec, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
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
#[derive(Debug, Serialize)]
pub struct AppView {
    pub name: String,
    #[serde(flatten)]
    pub spec: AppSpec,
    pub current_version: Option<String>,
    pub current_image: Option<String>,
    pub services_state: std::collections::BTreeMap<String, supervise::ServiceState>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn view(app: &App, r: &AppRecord) -> anyhow::Result<AppView> {
    let spec: AppSpec = serde_json::from_str(&r.spec)?;
    let services_state = app.supervisor.states(&r.name, &spec);
    Ok(AppView {
        name: r.name.clone(),
        spec,
        current_version: r.current_version.clone(),
        current_image: r.current_image.clone(),
        services_state,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

#[derive(Debug, Serialize)]
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
pub async fn put(app: &App, name: &str, input: AppInput) -> Result<(AppView, bool), AppError> {
    // Read, merge, write if nobody wrote in between; else again (concurrent PUTs of one app all
    // land, none is lost, none fails).
    for _ in 0..crate::store::MAX_WRITE_ATTEMPTS {
        let existing = app.store.app(name).await?;
        // Secrets the new definition does not repeat are kept. Ones sealed under another key
        // cannot be: the new definition then stands alone (and says so in the log).
        let old_secrets: Option<Secrets> = match &existing {
            Some(r) => match open_secrets(app, r) {
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
            for other in app.store.apps().await? {
                if other.name != name
                    && serde_json::from_str::<AppSpec>(&other.spec).is_ok_and(|s| s.host.as_ref() == Some(host))
                {
                    return Err(AppError::HostTaken(host.clone(), other.name));
                }
            }
        }
        let written = app
            .store
            .write_app(
                name,
                &serde_json::to_string(&spec).map_err(anyhow::Error::from)?,
                &app.secret_box.seal(name, &serde_json::to_string(&secrets).map_err(anyhow::Error::from)?)?,
                existing.map(|r| r.revision),
            )
            .await?;
        if written == Written::Conflict {
            continue;
        }
        let record = app.store.app(name).await?.ok_or_else(|| AppError::NotFound(name.to_string()))?;
        // A changed host moves the route at once.
        app.supervisor.refresh_routes(app, &record).await;
        return Ok((view(app, &record)?, written == Written::Created));
    }
    Err(anyhow::anyhow!("app {name}: too many concurrent writes").into())
}

pub async fn get(app: &App, name: &str) -> Result<AppRecord, AppError> {
    app.store.app(name).await?.ok_or_else(|| AppError::NotFound(name.to_string()))
}

/// An app's definition and its secrets, opened with the runner's secrets key.
pub fn parse(app: &App, r: &AppRecord) -> anyhow::Result<(AppSpec, Secrets)> {
    Ok((serde_json::from_str(&r.spec)?, open_secrets(app, r)?))
}

fn open_secrets(app: &App, r: &AppRecord) -> anyhow::Result<Secrets> {
    let json = app.secret_box.open(&r.name, &r.secrets)?;
    anyhow::Context::context(serde_json::from_str(&json), "reading an app's secrets")
}

/// Seals the secrets of apps stored before secrets were sealed (plaintext rows). Run at start.
pub async fn seal_legacy_secrets(app: &App) -> anyhow::Result<usize> {
    let mut sealed = 0;
    for r in app.store.apps().await? {
        if !crate::secret_box::SecretBox::is_sealed(&r.secrets) {
            let value = app.secret_box.seal(&r.name, &r.secrets)?;
            if app.store.replace_app_secrets(&r.name, &r.secrets, &value).await? {
                sealed += 1;
            }
        }
    }
    Ok(sealed)
}
