//! The wiring, built once at launch and shared as `Arc<App>`: the infrastructure (settings,
//! store, engine, metrics) and the capabilities built from it. Each capability owns its own state
//! and gets only what it uses; handlers reach them through here (docs/ARCHITECTURE.md, "Code map").

use std::{num::NonZeroU32, sync::Arc};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::{
    builds::Builds, checks::Checks, config::Settings, deploys::Deploys, engine::Engine, ide::IdeProxy,
    learner_files::LearnerFiles, metrics::Metrics, sessions::Sessions, store::Store, workspaces::Workspaces,
};

pub struct App {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Requests per API token.
    pub rate_limiter: DefaultKeyedRateLimiter<String>,
    /// Cancelled when the service shuts down; background loops and long tasks stop with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Learners' sandboxes: start, stop, reap, reconcile.
    pub sessions: Arc<Sessions>,
    /// Learners' checks (their slots and the checks in flight).
    pub checks: Arc<Checks>,
    /// The builds of exercise images (their queue, slots and cancellations).
    pub builds: Arc<Builds>,
    /// Managed apps: definitions, deploys, the supervisor and the ingress.
    pub deploys: Arc<Deploys>,
    /// The web IDE proxy (`/ide/{session}/`).
    pub ide: Arc<IdeProxy>,
    /// Learners' files read (and reset) inside sandboxes: listings, files, archives.
    pub files: Arc<LearnerFiles>,
    /// Every sandbox's resource use, sampled in the background (its history and aggregates).
    pub usage: Arc<crate::usage::Usage>,
    /// What is wrong now, told once per episode (`GET /v1/alerts`, the alert webhook).
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The web app's webhooks and the delivery of events to them.
    pub outbox: Arc<crate::outbox::Outbox>,
    /// One-shot runs: their slots and queue.
    pub runs: Arc<crate::runs::Runs>,
    /// This runner as a fleet node: heartbeats, placement, relaying to other nodes.
    pub fleet: Arc<crate::fleet::Fleet>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Arc<App>> {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        let store = Store::connect(settings.database_url.expose()).await?.for_node(&settings.fleet.node);
        let engine = crate::docker::connect(&settings.instance, metrics.clone()).await?;
        let runtime = settings.runtime.as_str();
        if !engine.has_runtime(runtime).await? {
            anyhow::bail!(
                "RUNNER_DOCKER_RUNTIME={runtime} but the Docker engine has no such runtime (scripts/host-setup.sh registers runsc and crun)"
            );
        }
        let workspaces = Workspaces::new(
            settings.workspace_driver,
            settings.workspace_dir(),
            &settings.sandbox_user,
            engine.clone(),
            store.clone(),
        );
        workspaces.check().await?;
        let quota = Quota::per_second(NonZeroU32::new(settings.rate_limit_per_sec).expect("validated"))
            .allow_burst(NonZeroU32::new(settings.rate_limit_burst).expect("validated"));
        let secrets_key = anyhow::Context::context(
            settings.secrets_key.as_ref(),
            "the secrets key is not resolved (Settings::resolve_secrets)",
        )?;
        let secret_box = crate::secret_box::SecretBox::new(secrets_key.expose());
        let outbox = crate::outbox::Outbox::new(
            settings.events.clone(),
            store.clone(),
            metrics.clone(),
            crate::secret_box::SecretBox::new(secrets_key.expose()),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let checks = Checks::new(&settings, store.clone(), engine.clone(), metrics.clone());
        let files = LearnerFiles::new(settings.clone(), store.clone(), engine.clone(), workspaces.clone());
        let snapshots = files.clone();
        checks.on_pass(Box::new(move |session, check| snapshots.snapshot_after_pass(session, check)));
        let ide = crate::ide::proxy(&settings, store.clone(), engine.clone(), checks.clone(), Some(files.clone()));
        let fleet_node = settings.fleet.node != crate::store::LOCAL_NODE;
        let sessions = Sessions::new(
            settings.clone(),
            store.clone(),
            engine.clone(),
            metrics.clone(),
            workspaces,
            ide.clone(),
            fleet_node.then(|| files.clone()),
        );
        let deploys = Deploys::new(
            settings.clone(),
            store.clone(),
            engine.clone(),
            metrics.clone(),
            secret_box,
            shutdown.clone(),
        );
        Ok(Arc::new(App {
            alerts: crate::alerts::Alerts::new(&settings.alerts, &settings.instance, metrics.clone()),
            usage: crate::usage::Usage::new(&settings, store.clone(), engine.clone(), &metrics),
            runs: crate::runs::Runs::new(settings.clone(), store.clone(), engine.clone(), metrics.clone()),
            builds: Builds::new(&settings, store.clone(), engine.clone(), metrics.clone()),
            rate_limiter: RateLimiter::keyed(quota),
            fleet: crate::fleet::Fleet::new(settings.clone(), store.clone(), engine.clone(), metrics.clone())?,
            outbox,
            shutdown,
            sessions,
            checks,
            deploys,
            ide,
            files,
            settings,
            store,
            engine,
            metrics,
        }))
    }
}
