//! The application state, built once at launch and shared as `Arc<App>`.

use std::{
    collections::HashSet,
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::{config::Settings, docker::Engine, metrics::Metrics, store::Store, workspaces::Workspaces};

pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub engine: Engine,
    pub workspaces: Arc<Workspaces>,
    pub metrics: Arc<Metrics>,
    /// Bounds concurrent sandbox starts (invariant 6).
    pub start_slots: Arc<Semaphore>,
    /// Sessions whose sandbox is being started right now; the reconciler leaves them alone.
    pub starting: Mutex<HashSet<String>>,
    /// Learners' checks (their slots and the checks in flight).
    pub checks: Arc<crate::checks::Checks>,
    /// The builds of exercise images (their queue, slots and cancellations).
    pub builds: Arc<crate::builds::Builds>,
    /// Requests per API token.
    pub rate_limiter: DefaultKeyedRateLimiter<String>,
    /// Routes of the managed apps' ingress.
    pub ingress: Arc<crate::apps::ingress::Ingress>,
    pub supervisor: crate::apps::supervise::Supervisor,
    /// For health checks and webhooks.
    pub http_client: reqwest::Client,
    /// Cancelled when the service shuts down; long tasks (deploys) stop with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The web IDE proxy (`/ide/{session}/`).
    pub ide: Arc<web_ide_proxy::Proxy<crate::ide::RunnerBackend>>,
    /// Seals and opens app secrets stored in the database.
    pub secret_box: crate::secret_box::SecretBox,
    /// Every sandbox's resource use, sampled in the background (its history and aggregates).
    pub usage: Arc<crate::usage::Usage>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Arc<App>> {
        let metrics = Arc::new(Metrics::new());
        let store = Store::connect(settings.database_url.expose()).await?;
        let engine = Engine::connect(&settings.instance, metrics.clone()).await?;
        let runtime = settings.runtime.as_str();
        if !engine.has_runtime(runtime).await? {
            anyhow::bail!(
                "RUNNER_DOCKER_RUNTIME={runtime} but the Docker engine has no such runtime (scripts/host-setup.sh registers runsc)"
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
        let secret_box = crate::secret_box::SecretBox::new(
            anyhow::Context::context(
                settings.secrets_key.as_ref(),
                "the secrets key is not resolved (Settings::resolve_secrets)",
            )?
            .expose(),
        );
        let checks = crate::checks::Checks::new(&settings, store.clone(), engine.clone(), metrics.clone());
        Ok(Arc::new(App {
            start_slots: Arc::new(Semaphore::new(settings.max_concurrent_starts)),
            starting: Mutex::new(HashSet::new()),
            checks: checks.clone(),
            builds: crate::builds::Builds::new(&settings, store.clone(), engine.clone(), metrics.clone()),
            rate_limiter: RateLimiter::keyed(quota),
            ingress: Arc::new(Default::default()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            supervisor: Default::default(),
            http_client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
            ide: crate::ide::proxy(&settings, store.clone(), engine.clone(), checks),
            usage: crate::usage::Usage::new(&settings, store.clone(), engine.clone(), &metrics),
            secret_box,
            settings,
            store,
            engine,
            workspaces,
            metrics,
        }))
    }
}
