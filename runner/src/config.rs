//! Settings: embedded defaults, overridden by `RUNNER_*` environment variables (12-factor).
//!
//! Every knob an operator can turn is a field of [`Settings`]; `Settings::from_env` is the only
//! place that reads the environment, so tests build `Settings` directly.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{bail, Context};

use crate::domain::{Limits, Runtime};

/// A secret value whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a learner's workspace is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceDriver {
    /// A sparse ext4 image file on a loop device, mounted as a Docker volume: a hard size limit.
    Loop,
    /// A plain Docker volume: no size limit. For development machines without root only.
    Volume,
}

impl FromStr for WorkspaceDriver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "loop" => Ok(WorkspaceDriver::Loop),
            "volume" => Ok(WorkspaceDriver::Volume),
            other => bail!("unknown workspace driver {other:?} (expected loop or volume)"),
        }
    }
}

/// Alerts (`alerts.rs`): where they go and when they fire. Each fires once per episode and says
/// when it clears.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// `RUNNER_ALERT_WEBHOOK_URL`: where alerts are posted; none: alerts are only listed
    /// (`GET /v1/alerts`) and counted.
    pub webhook_url: Option<String>,
    /// `slack` (`{"text": ...}`) or `json` (an event, signed when a secret is set).
    pub webhook_json: bool,
    /// HMAC-SHA256 key of JSON alerts (`X-Runner-Signature-256`).
    pub webhook_secret: Option<Secret>,
    /// How often the conditions are evaluated.
    pub interval: Duration,
    /// A sandbox OOM-killed this many times within `oom_window` fires.
    pub oom_kills: u64,
    pub oom_window: Duration,
    /// A sandbox at 90 % or more of its CPU quota for this long fires.
    pub cpu_pinned: Duration,
    /// Memory committed by sandbox limits above this share of the host's memory fires.
    pub memory_committed_percent: u8,
    /// The data directory's disk fuller than this fires.
    pub disk_percent: u8,
}

impl AlertSettings {
    pub fn defaults() -> Self {
        AlertSettings {
            webhook_url: None,
            webhook_json: false,
            webhook_secret: None,
            interval: Duration::from_secs(10),
            oom_kills: 3,
            oom_window: Duration::from_secs(600),
            cpu_pinned: Duration::from_secs(600),
            memory_committed_percent: 90,
            disk_percent: 90,
        }
    }
}

/// Events told to the web app (`outbox.rs`): how webhooks are delivered and how long events are
/// kept.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `RUNNER_WEBHOOK_TIMEOUT_SECS`: how long one delivery attempt may take.
    pub webhook_timeout: Duration,
    /// `RUNNER_WEBHOOK_MAX_BACKOFF_SECS`: the longest wait between two attempts (they double from
    /// 1 s up to it), so a receiver that comes back is caught up within it.
    pub webhook_max_backoff: Duration,
    /// `RUNNER_WEBHOOK_GIVE_UP_SECS`: how long an event is retried before its delivery is marked
    /// `failed` and the webhook moves on (it can be redelivered by hand).
    pub webhook_give_up: Duration,
    /// `RUNNER_EVENT_RETENTION_SECS`: events older than this, that every webhook is done with,
    /// are deleted (with their deliveries); `GET /v1/events` cannot go back further.
    pub retention: Duration,
}

impl EventSettings {
    pub fn defaults() -> Self {
        EventSettings {
            webhook_timeout: Duration::from_secs(10),
            webhook_max_backoff: Duration::from_secs(60),
            webhook_give_up: Duration::from_secs(3 * 24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// This runner as a node of a fleet sharing one PostgreSQL (see "Fleet" in
/// docs/ARCHITECTURE.md). A single host is the node `local` and needs none of it.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// `RUNNER_NODE`: this node's name (the stack file gives the Swarm node ID).
    pub node: String,
    /// `RUNNER_NODE_URL`: where the fleet's other runners reach this one.
    pub url: String,
    /// `RUNNER_FLEET_SECRET`: signs what runners forward to each other.
    pub secret: Option<Secret>,
    /// `RUNNER_NODE_HEARTBEAT_SECS`: how often this runner writes its node's row.
    pub heartbeat: Duration,
    /// `RUNNER_NODE_LOST_SECS`: a node whose heartbeat is older is lost: its sessions end with
    /// `node_lost` and it gets no new ones.
    pub lost_after: Duration,
    /// `RUNNER_SWARM_AVAILABILITY`: follow the Swarm node's availability (`drain`, `pause`) when
    /// the engine is in a Swarm.
    pub follow_swarm: bool,
    /// `RUNNER_WORKSPACE_COPY_SECS`: how often running sessions' workspaces are copied off the
    /// node (a lost node costs a learner at most this much work); 0: only when sessions end.
    pub copy_every: Duration,
    /// `RUNNER_IMAGE_REGISTRY`: the registry every node shares images through (a host and
    /// port). A build pushes its proven image there before its version exists; a node lacking
    /// an exercise's image pulls it from there. Unset: images stay on the engine that has them.
    pub registry: Option<String>,
    /// `RUNNER_IMAGE_REGISTRY_USERNAME` and `RUNNER_IMAGE_REGISTRY_PASSWORD`: its login, when it
    /// has one.
    pub registry_username: Option<String>,
    pub registry_password: Option<Secret>,
    /// `RUNNER_FLEET_TLS_CERT` and `RUNNER_FLEET_TLS_KEY` (PEM): the fleet's one certificate and
    /// key. Set, runners relay to each other over TLS on `RUNNER_FLEET_LISTEN` and accept only
    /// that certificate (`fleet::tls`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<Secret>,
    /// `RUNNER_FLEET_LISTEN` (`0.0.0.0:8443` when TLS is set): where relays arrive over TLS.
    pub listen: Option<std::net::SocketAddr>,
    /// `RUNNER_IMAGE_SYNC_SECS`: how often a node pulls the exercises' images it lacks and
    /// removes those no version needs any more (and at once when a session finds one missing).
    pub image_sync: Duration,
}

impl FleetSettings {
    /// The registry images are shared through, with its login, when there is one.
    pub fn registry(&self) -> Option<crate::engine::registry::Registry<'_>> {
        let auth = self.registry_username.as_deref().zip(self.registry_password.as_ref().map(Secret::expose));
        self.registry.as_deref().map(|host| crate::engine::registry::Registry { host, auth })
    }

    pub fn defaults() -> Self {
        FleetSettings {
            node: crate::domain::LOCAL_NODE.into(),
            url: String::new(),
            secret: None,
            heartbeat: Duration::from_secs(5),
            lost_after: Duration::from_secs(30),
            follow_swarm: true,
            copy_every: Duration::from_secs(300),
            registry: None,
            registry_username: None,
            registry_password: None,
            image_sync: Duration::from_secs(15),
            tls_cert: None,
            tls_key: None,
            listen: None,
        }
    }
}

/// One-shot runs (`runs`): how many at once, how many wait, and the caps of what a run may ask.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `RUNNER_RUN_MAX_CONCURRENT`: runs executing at once.
    pub max_concurrent: usize,
    /// `RUNNER_RUN_MAX_QUEUED`: runs waiting for a slot; past it `POST /v1/runs` is 429.
    pub max_queued: usize,
    /// `RUNNER_RUN_MAX_TIME_MS`, `RUNNER_RUN_MAX_WALL_MS`, `RUNNER_RUN_MAX_MEMORY_MB`,
    /// `RUNNER_RUN_MAX_PIDS`, `RUNNER_RUN_MAX_OUTPUT_BYTES`: the most a run's `limits` may ask
    /// (per step: the compile step and each test case).
    pub caps: crate::domain::RunLimits,
    /// `RUNNER_RUN_MAX_FILES_BYTES`: the submission's files together.
    pub max_files_bytes: usize,
    /// `RUNNER_RUN_MAX_TESTS`: test cases in one run.
    pub max_tests: usize,
    /// `RUNNER_RUN_RETENTION_SECS`: finished runs (their outputs) are deleted after this.
    pub retention: Duration,
    /// `RUNNER_RUN_RATE_LIMIT_PER_MIN`, `RUNNER_RUN_RATE_LIMIT_BURST`: runs one API token may
    /// start (on top of the token's request rate limit); past it 429 `runs_rate_limited`.
    pub rate_per_min: u32,
    pub rate_burst: u32,
    /// `RUNNER_RUN_PREPARED`: run sandboxes kept made ahead of time for each shape (image,
    /// memory, pids) recently asked for; 0 makes each run's sandbox when it starts.
    pub prepared: usize,
}

impl RunSettings {
    pub fn defaults() -> Self {
        RunSettings {
            max_concurrent: 4,
            max_queued: 32,
            caps: crate::domain::RunLimits {
                time_ms: 10_000,
                wall_ms: 20_000,
                memory_mb: 512,
                pids: 64,
                output_bytes: 1024 * 1024,
            },
            max_files_bytes: 1024 * 1024,
            max_tests: 50,
            retention: Duration::from_secs(7 * 86_400),
            rate_per_min: 1200,
            rate_burst: 100,
            prepared: 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// May carry a password (`postgres://user:pass@host/db`), so it is a [`Secret`].
    pub database_url: Secret,
    pub data_dir: PathBuf,
    /// Bearer token for `/v1/*`. When unset, one is generated into `<data_dir>/api-token`.
    pub api_token: Option<Secret>,
    /// `RUNNER_OPERATOR_TOKEN`: a second credential that signs in to the dashboard only (not
    /// `/v1`), so operators need not hold the web app's token; its audit entries say
    /// `operator-token`.
    pub operator_token: Option<Secret>,
    /// Name of this runner's set of containers on a shared Docker engine (label
    /// `exercise-runner.instance`). Replicas sharing one database share one instance name.
    pub instance: String,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub runtime: Runtime,
    pub sandbox_user: String,
    pub default_limits: Limits,
    pub limit_caps: Limits,
    /// Docker network for exercises that opt into networking; `None` forbids opting in.
    pub sandbox_network: Option<String>,
    pub workspace_driver: WorkspaceDriver,
    pub workspace_retention: Duration,
    pub max_concurrent_starts: usize,
    pub start_queue_timeout: Duration,
    pub max_live_sessions: u64,
    /// The warm pool of an exercise that sets none (`RUNNER_POOL_DEFAULT_MIN`/`_MAX`; no pool by
    /// default).
    pub pool_default: crate::domain::PoolSpec,
    /// Largest `pool.max` an exercise may ask for (`RUNNER_POOL_MAX_PER_EXERCISE`).
    pub pool_max_per_exercise: u32,
    /// How often pools are topped up, trimmed and drained (`RUNNER_POOL_INTERVAL_SECS`); a claim
    /// or a publish also wakes the filler at once.
    pub pool_interval: Duration,
    /// Memory the host keeps free of pooled sandboxes (`RUNNER_POOL_MEMORY_RESERVE_MB`): no pooled
    /// sandbox is made while `MemAvailable` would fall below it, and pooled ones are removed when it
    /// already has.
    pub pool_memory_reserve_mb: u64,
    pub reap_interval: Duration,
    pub reconcile_interval: Duration,
    /// How often every sandbox's usage is sampled (`usage/`); zero turns sampling off.
    pub usage_interval: Duration,
    /// `RUNNER_METRICS_PER_SESSION`: one Prometheus series per live session besides the
    /// per-exercise ones (cardinality grows with the sessions; off by default).
    pub metrics_per_session: bool,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub max_body_bytes: usize,
    pub log_json: bool,
    /// `RUNNER_LOG`: which log lines to keep (`info` when unset; `debug`, `runner=debug,info`, ...).
    pub log_filter: Option<String>,
    // ---- builds and checks ----
    pub max_concurrent_builds: usize,
    pub max_queued_builds: u64,
    pub build_timeout: Duration,
    pub build_memory_mb: u64,
    pub build_cpus: f64,
    /// Most processes a build's `RUN` steps may have at once (a cgroup parent with `pids.max`);
    /// 0 turns the limit off (for engines without the cgroupfs driver).
    pub build_pids_limit: u64,
    /// Network of `RUN` steps (package installs need one): the runner's own, firewalled off the
    /// host (`exercise-runner-build`, the default); `none` builds offline; another name is the
    /// operator's network, whose firewall rules the runner checks (`builds/isolation.rs`).
    pub build_network: String,
    /// `RUNNER_BUILD_NETWORK_ALLOW`: address blocks (`10.1.2.3`, `10.8.0.0/16`, `fd00::/8`) that
    /// `RUN` steps may reach on the forward path although they are private (a package mirror);
    /// the host itself, its published ports and link-local addresses stay unreachable.
    pub build_network_allow: Vec<String>,
    /// `RUNNER_BUILD_BASE_IMAGES`: the repositories (any tag) whose images a Dockerfile may use
    /// from outside (`FROM`, `COPY --from`); every other image on the engine (other exercises',
    /// apps' private images) is not the author's to read.
    pub build_base_images: Vec<String>,
    /// Largest repository archive accepted (compressed, as sent).
    pub max_archive_bytes: usize,
    /// Largest repository accepted once unpacked (in memory; never on disk).
    pub max_unpacked_bytes: u64,
    pub max_archive_files: usize,
    /// Versions of an exercise whose images are kept (beyond the current one and those in use).
    pub keep_versions: usize,
    /// Allow `file://` and local paths as git URLs (tests, single-machine setups).
    pub git_allow_local: bool,
    /// HMAC secret for push hooks of exercises that have no secret of their own.
    pub git_hook_secret: Option<Secret>,
    /// Output kept from one check (the rest is cut, `truncated: true`).
    pub check_output_bytes: usize,
    // ---- learners' files read through the API (archives, snapshots) ----
    /// Most bytes of one read of a workspace (the tar stream out of the sandbox, and the
    /// `.tar.gz` answered); over it the read is refused, never cut.
    pub workspace_read_max_bytes: usize,
    /// Largest single file answered by `GET /v1/workspaces/…/files/{path}`.
    pub workspace_file_max_bytes: usize,
    /// Most entries in a workspace listing (the rest left out, `truncated: true`).
    pub workspace_list_max_entries: usize,
    /// Snapshots of learners' files kept per learner (the oldest go first).
    pub snapshots_per_learner: usize,
    /// Bytes all snapshots' blobs may take on disk (the oldest go first).
    pub snapshots_max_bytes: u64,
    /// Snapshots older than this are removed.
    pub snapshot_retention: Duration,
    /// Learners' checks running at once; each learner holds at most one of these slots.
    pub max_concurrent_checks: usize,
    /// Uploaded or cloned repositories being unpacked and checked at once (each is held in
    /// memory whole); past it, 503 + `Retry-After`.
    pub max_concurrent_intakes: usize,
    // ---- the web IDE ----
    /// Signs IDE tokens and cookies. When unset, one is generated into `<data_dir>/ide-secret`;
    /// a separate `runner ide-proxy` must be given the same one.
    pub ide_secret: Option<Secret>,
    /// Seals app secrets in the database (`secret_box.rs`). When unset, one is generated into
    /// `<data_dir>/secrets-key`; runners sharing a database must be given the same one.
    pub secrets_key: Option<Secret>,
    /// The base URL browsers reach this runner at (for `ide_url`); empty: `http://` and the
    /// address the listener is bound to.
    pub public_url: String,
    pub ide_token_ttl: Duration,
    /// Origins allowed to open IDE WebSockets; empty: the same host as the request.
    pub ide_allowed_origins: Vec<String>,
    pub ide_max_connections: usize,
    pub ide_max_message_bytes: usize,
    /// `RUNNER_IDE_COOKIE_SAMESITE=none`: the IDE cookie works inside an exercise page on another
    /// site (`SameSite=None; Secure`, so the runner must be reached over https).
    pub ide_cookie_cross_site: bool,
    /// `RUNNER_IDE_SUBDOMAIN_HOST=ide.example.com`: every session's IDE at its own host,
    /// `{session}.ide.example.com` (needs wildcard DNS; scheme and port as in `public_url`), so
    /// sessions never share an origin.
    pub ide_subdomain_host: Option<String>,
    // ---- alerts ----
    pub alerts: AlertSettings,
    // ---- events and webhooks ----
    pub events: EventSettings,
    // ---- one-shot runs ----
    pub runs: RunSettings,
    // ---- the fleet ----
    pub fleet: FleetSettings,
    // ---- managed apps ----
    /// Where the ingress for managed apps listens (`None`: no ingress).
    pub ingress_listen: Option<SocketAddr>,
    /// The Docker network app containers join.
    pub app_network: String,
}

impl Settings {
    /// Defaults that need no setup: SQLite under the data directory, the local Docker engine.
    pub fn defaults() -> Self {
        let data_dir = PathBuf::from("/var/lib/exercise-runner");
        Settings {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            database_url: Secret::new(sqlite_url(&data_dir)),
            data_dir,
            api_token: None,
            operator_token: None,
            instance: "default".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(8 * 3600),
            runtime: Runtime::Crun,
            sandbox_user: "1000:1000".into(),
            default_limits: Limits::DEFAULT,
            limit_caps: Limits::DEFAULT_CAPS,
            // Opting into a network needs an operator's decision (ideally a dedicated network).
            sandbox_network: None,
            workspace_driver: WorkspaceDriver::Loop,
            workspace_retention: Duration::from_secs(30 * 86400),
            max_concurrent_starts: 4,
            start_queue_timeout: Duration::from_secs(10),
            max_live_sessions: 200,
            pool_default: crate::domain::PoolSpec { min: 0, max: 0 },
            pool_max_per_exercise: 20,
            pool_interval: Duration::from_secs(2),
            pool_memory_reserve_mb: 2048,
            reap_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(30),
            usage_interval: Duration::from_secs(5),
            metrics_per_session: false,
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            max_body_bytes: 64 * 1024,
            log_json: false,
            log_filter: None,
            max_concurrent_builds: 1,
            max_queued_builds: 20,
            build_timeout: Duration::from_secs(900),
            build_memory_mb: 2048,
            build_cpus: 1.0,
            build_pids_limit: 1024,
            build_network: crate::engine::MANAGED_NETWORK.into(),
            build_network_allow: vec![],
            build_base_images: vec!["exercise-runner/base".into(), "exercise-runner/busybox".into()],
            max_archive_bytes: 32 * 1024 * 1024,
            max_unpacked_bytes: 128 * 1024 * 1024,
            max_archive_files: 10_000,
            keep_versions: 3,
            git_allow_local: false,
            git_hook_secret: None,
            check_output_bytes: 64 * 1024,
            workspace_read_max_bytes: 64 * 1024 * 1024,
            workspace_file_max_bytes: 1024 * 1024,
            workspace_list_max_entries: 10_000,
            snapshots_per_learner: 100,
            snapshots_max_bytes: 1024 * 1024 * 1024,
            snapshot_retention: Duration::from_secs(180 * 86_400),
            max_concurrent_checks: 8,
            max_concurrent_intakes: 2,
            ide_secret: None,
            secrets_key: None,
            public_url: String::new(),
            ide_token_ttl: Duration::from_secs(120),
            ide_allowed_origins: vec![],
            ide_max_connections: 16,
            ide_max_message_bytes: 1024 * 1024,
            ide_cookie_cross_site: false,
            ide_subdomain_host: None,
            alerts: AlertSettings::defaults(),
            events: EventSettings::defaults(),
            runs: RunSettings::defaults(),
            fleet: FleetSettings::defaults(),
            ingress_listen: None,
            app_network: "bridge".into(),
        }
    }

    /// Defaults overridden by `RUNNER_*` variables; an invalid value is an error naming it.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Defaults, overridden by a TOML file (when given), overridden by `RUNNER_*` variables.
    /// The file's keys are the variables' names without `RUNNER_`, in lower case
    /// (`idle_timeout_secs = 900`, `docker_runtime = "runsc"`); a key the runner does not know is
    /// an error naming it, so a typo is never silently ignored.
    pub fn load(config_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Self::load_with(config_file, |k| std::env::var(k).ok())
    }

    /// [`Settings::load`] with the environment given as a lookup (the CLI's tests).
    pub fn load_with(
        config_file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let Some(path) = config_file else { return Self::from_lookup(env) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = file_values(&text).with_context(|| format!("in {}", path.display()))?;
        let asked = std::cell::RefCell::new(std::collections::HashSet::new());
        let settings = Self::from_lookup(|k| {
            asked.borrow_mut().insert(k.to_string());
            env(k).or_else(|| file.get(k).cloned())
        })
        .with_context(|| format!("with {}", path.display()))?;
        let asked = asked.into_inner();
        let mut unknown: Vec<String> = file
            .keys()
            .filter(|k| !asked.contains(*k))
            .map(|k| k.trim_start_matches("RUNNER_").to_lowercase())
            .collect();
        unknown.sort();
        if !unknown.is_empty() {
            anyhow::bail!("{}: unknown setting(s): {}", path.display(), unknown.join(", "));
        }
        Ok(settings)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        // Every setting may also be given as a file named by `<NAME>_FILE` (Docker and Swarm
        // secrets: `RUNNER_API_TOKEN_FILE=/run/secrets/api_token`); the variable itself wins.
        let unreadable = std::cell::RefCell::new(None);
        let get = |key: &str| -> Option<String> {
            lookup(key).or_else(|| {
                let path = lookup(&format!("{key}_FILE")).filter(|p| !p.trim().is_empty())?;
                match std::fs::read_to_string(path.trim()) {
                    Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
                    Err(e) => {
                        unreadable.borrow_mut().get_or_insert(format!("{key}_FILE={path:?} cannot be read: {e}"));
                        None
                    }
                }
            })
        };
        fn parse<T: FromStr>(get: &impl Fn(&str) -> Option<String>, key: &str) -> anyhow::Result<Option<T>>
        where
            T::Err: fmt::Display,
        {
            match get(key) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| anyhow::anyhow!("{key}={v:?} is invalid: {e}")),
            }
        }
        let secs =
            |key: &str| -> anyhow::Result<Option<Duration>> { Ok(parse::<u64>(&get, key)?.map(Duration::from_secs)) };

        let mut s = Settings::defaults();
        if let Some(v) = parse(&get, "RUNNER_LISTEN")? {
            s.listen = v;
        }
        if let Some(v) = parse::<PathBuf>(&get, "RUNNER_DATA_DIR")? {
            s.data_dir = v;
            s.database_url = Secret::new(sqlite_url(&s.data_dir));
        }
        if let Some(v) = get("RUNNER_DATABASE_URL").filter(|v| !v.is_empty()) {
            s.database_url = Secret::new(v);
        }
        s.api_token = get("RUNNER_API_TOKEN").filter(|v| !v.is_empty()).map(Secret::new);
        s.operator_token = get("RUNNER_OPERATOR_TOKEN").filter(|v| !v.trim().is_empty()).map(Secret::new);
        if let Some(v) = get("RUNNER_INSTANCE").filter(|v| !v.is_empty()) {
            s.instance = v;
        }
        if let Some(v) = secs("RUNNER_IDLE_TIMEOUT_SECS")? {
            s.idle_timeout = v;
        }
        if let Some(v) = secs("RUNNER_MAX_LIFETIME_SECS")? {
            s.max_lifetime = v;
        }
        if let Some(v) = parse(&get, "RUNNER_DOCKER_RUNTIME")? {
            s.runtime = v;
        }
        if let Some(v) = get("RUNNER_SANDBOX_USER").filter(|v| !v.is_empty()) {
            s.sandbox_user = v;
        }
        let limits = |prefix: &str, l: &mut Limits| -> anyhow::Result<()> {
            if let Some(v) = parse(&get, &format!("{prefix}_MEMORY_MB"))? {
                l.memory_mb = v;
            }
            if let Some(v) = parse(&get, &format!("{prefix}_CPUS"))? {
                l.cpus = v;
            }
            if let Some(v) = parse(&get, &format!("{prefix}_PIDS"))? {
                l.pids = v;
            }
            if let Some(v) = parse(&get, &format!("{prefix}_TMPFS_MB"))? {
                l.tmpfs_mb = v;
            }
            if let Some(v) = parse(&get, &format!("{prefix}_WORKSPACE_MB"))? {
                l.workspace_mb = v;
            }
            Ok(())
        };
        limits("RUNNER_SANDBOX", &mut s.default_limits)?;
        limits("RUNNER_SANDBOX_MAX", &mut s.limit_caps)?;
        if let Some(v) = get("RUNNER_SANDBOX_NETWORK") {
            s.sandbox_network = match v.trim() {
                "" | "none" | "off" => None,
                other => Some(other.to_string()),
            };
        }
        if let Some(v) = parse(&get, "RUNNER_WORKSPACE_DRIVER")? {
            s.workspace_driver = v;
        }
        if let Some(v) = parse::<u64>(&get, "RUNNER_WORKSPACE_RETENTION_DAYS")? {
            s.workspace_retention = Duration::from_secs(v * 86400);
        }
        if let Some(v) = secs("RUNNER_WORKSPACE_RETENTION_SECS")? {
            s.workspace_retention = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_CONCURRENT_STARTS")? {
            s.max_concurrent_starts = v;
        }
        if let Some(v) = secs("RUNNER_START_QUEUE_TIMEOUT_SECS")? {
            s.start_queue_timeout = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_LIVE_SESSIONS")? {
            s.max_live_sessions = v;
        }
        if let Some(v) = parse(&get, "RUNNER_POOL_DEFAULT_MIN")? {
            s.pool_default.min = v;
        }
        if let Some(v) = parse(&get, "RUNNER_POOL_DEFAULT_MAX")? {
            s.pool_default.max = v;
        }
        if let Some(v) = parse(&get, "RUNNER_POOL_MAX_PER_EXERCISE")? {
            s.pool_max_per_exercise = v;
        }
        if let Some(v) = secs("RUNNER_POOL_INTERVAL_SECS")? {
            s.pool_interval = v;
        }
        if let Some(v) = parse(&get, "RUNNER_POOL_MEMORY_RESERVE_MB")? {
            s.pool_memory_reserve_mb = v;
        }
        if let Some(v) = secs("RUNNER_WEBHOOK_TIMEOUT_SECS")? {
            s.events.webhook_timeout = v;
        }
        if let Some(v) = secs("RUNNER_WEBHOOK_MAX_BACKOFF_SECS")? {
            s.events.webhook_max_backoff = v;
        }
        if let Some(v) = secs("RUNNER_WEBHOOK_GIVE_UP_SECS")? {
            s.events.webhook_give_up = v;
        }
        if let Some(v) = secs("RUNNER_EVENT_RETENTION_SECS")? {
            s.events.retention = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_CONCURRENT")? {
            s.runs.max_concurrent = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_QUEUED")? {
            s.runs.max_queued = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_TIME_MS")? {
            s.runs.caps.time_ms = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_WALL_MS")? {
            s.runs.caps.wall_ms = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_MEMORY_MB")? {
            s.runs.caps.memory_mb = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_PIDS")? {
            s.runs.caps.pids = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_OUTPUT_BYTES")? {
            s.runs.caps.output_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_FILES_BYTES")? {
            s.runs.max_files_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_MAX_TESTS")? {
            s.runs.max_tests = v;
        }
        if let Some(v) = secs("RUNNER_RUN_RETENTION_SECS")? {
            s.runs.retention = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_RATE_LIMIT_PER_MIN")? {
            s.runs.rate_per_min = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_RATE_LIMIT_BURST")? {
            s.runs.rate_burst = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RUN_PREPARED")? {
            s.runs.prepared = v;
        }
        if let Some(v) = secs("RUNNER_REAP_INTERVAL_SECS")? {
            s.reap_interval = v;
        }
        if let Some(v) = secs("RUNNER_RECONCILE_INTERVAL_SECS")? {
            s.reconcile_interval = v;
        }
        if let Some(v) = secs("RUNNER_USAGE_INTERVAL_SECS")? {
            s.usage_interval = v;
        }
        if let Some(v) = parse(&get, "RUNNER_METRICS_PER_SESSION")? {
            s.metrics_per_session = v;
        }
        if let Some(v) = get("RUNNER_ALERT_WEBHOOK_URL").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            if !(v.starts_with("http://") || v.starts_with("https://")) || reqwest::Url::parse(&v).is_err() {
                bail!("RUNNER_ALERT_WEBHOOK_URL={v:?} is invalid: an http:// or https:// URL");
            }
            s.alerts.webhook_url = Some(v);
        }
        match get("RUNNER_ALERT_WEBHOOK_FORMAT").as_deref().map(str::trim) {
            None | Some("") | Some("slack") => {}
            Some("json") => s.alerts.webhook_json = true,
            Some(other) => bail!("RUNNER_ALERT_WEBHOOK_FORMAT={other:?} is invalid: slack or json"),
        }
        s.alerts.webhook_secret = get("RUNNER_ALERT_WEBHOOK_SECRET").filter(|v| !v.is_empty()).map(Secret::new);
        if let Some(v) = secs("RUNNER_ALERT_INTERVAL_SECS")? {
            s.alerts.interval = v;
        }
        if let Some(v) = parse(&get, "RUNNER_ALERT_OOM_KILLS")? {
            s.alerts.oom_kills = v;
        }
        if let Some(v) = secs("RUNNER_ALERT_OOM_WINDOW_SECS")? {
            s.alerts.oom_window = v;
        }
        if let Some(v) = secs("RUNNER_ALERT_CPU_PINNED_SECS")? {
            s.alerts.cpu_pinned = v;
        }
        if let Some(v) = parse(&get, "RUNNER_ALERT_MEMORY_COMMITTED_PERCENT")? {
            s.alerts.memory_committed_percent = v;
        }
        if let Some(v) = parse(&get, "RUNNER_ALERT_DISK_PERCENT")? {
            s.alerts.disk_percent = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RATE_LIMIT_PER_SEC")? {
            s.rate_limit_per_sec = v;
        }
        if let Some(v) = parse(&get, "RUNNER_RATE_LIMIT_BURST")? {
            s.rate_limit_burst = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_BODY_BYTES")? {
            s.max_body_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_CONCURRENT_BUILDS")? {
            s.max_concurrent_builds = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_QUEUED_BUILDS")? {
            s.max_queued_builds = v;
        }
        if let Some(v) = secs("RUNNER_BUILD_TIMEOUT_SECS")? {
            s.build_timeout = v;
        }
        if let Some(v) = parse(&get, "RUNNER_BUILD_MEMORY_MB")? {
            s.build_memory_mb = v;
        }
        if let Some(v) = parse(&get, "RUNNER_BUILD_CPUS")? {
            s.build_cpus = v;
        }
        if let Some(v) = parse(&get, "RUNNER_BUILD_PIDS_LIMIT")? {
            s.build_pids_limit = v;
        }
        if let Some(v) = get("RUNNER_BUILD_NETWORK").filter(|v| !v.is_empty()) {
            s.build_network = v;
        }
        let list = |v: String| -> Vec<String> {
            v.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect()
        };
        if let Some(v) = get("RUNNER_BUILD_NETWORK_ALLOW") {
            s.build_network_allow = list(v);
        }
        if let Some(v) = get("RUNNER_BUILD_BASE_IMAGES") {
            s.build_base_images = list(v);
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_ARCHIVE_BYTES")? {
            s.max_archive_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_UNPACKED_BYTES")? {
            s.max_unpacked_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_ARCHIVE_FILES")? {
            s.max_archive_files = v;
        }
        if let Some(v) = parse(&get, "RUNNER_KEEP_VERSIONS")? {
            s.keep_versions = v;
        }
        if let Some(v) = parse(&get, "RUNNER_GIT_ALLOW_LOCAL")? {
            s.git_allow_local = v;
        }
        s.git_hook_secret = get("RUNNER_GIT_HOOK_SECRET").filter(|v| !v.is_empty()).map(Secret::new);
        if let Some(v) = parse(&get, "RUNNER_CHECK_OUTPUT_BYTES")? {
            s.check_output_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_WORKSPACE_READ_MAX_BYTES")? {
            s.workspace_read_max_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_WORKSPACE_FILE_MAX_BYTES")? {
            s.workspace_file_max_bytes = v;
        }
        if let Some(v) = parse(&get, "RUNNER_WORKSPACE_LIST_MAX_ENTRIES")? {
            s.workspace_list_max_entries = v;
        }
        if let Some(v) = parse(&get, "RUNNER_SNAPSHOTS_PER_LEARNER")? {
            s.snapshots_per_learner = v;
        }
        if let Some(v) = parse(&get, "RUNNER_SNAPSHOTS_MAX_BYTES")? {
            s.snapshots_max_bytes = v;
        }
        if let Some(v) = parse::<u64>(&get, "RUNNER_SNAPSHOT_RETENTION_DAYS")? {
            s.snapshot_retention = Duration::from_secs(v * 86_400);
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_CONCURRENT_CHECKS")? {
            s.max_concurrent_checks = v;
        }
        if let Some(v) = parse(&get, "RUNNER_MAX_CONCURRENT_INTAKES")? {
            s.max_concurrent_intakes = v;
        }
        s.ide_secret = get("RUNNER_IDE_SECRET").filter(|v| !v.is_empty()).map(Secret::new);
        s.secrets_key = get("RUNNER_SECRETS_KEY").filter(|v| !v.is_empty()).map(Secret::new);
        if let Some(v) = get("RUNNER_PUBLIC_URL").filter(|v| !v.is_empty()) {
            s.public_url = v;
        }
        if let Some(v) = secs("RUNNER_IDE_TOKEN_TTL_SECS")? {
            s.ide_token_ttl = v;
        }
        if let Some(v) = get("RUNNER_IDE_ALLOWED_ORIGINS") {
            s.ide_allowed_origins = v.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect();
        }
        if let Some(v) = parse(&get, "RUNNER_IDE_MAX_CONNECTIONS")? {
            s.ide_max_connections = v;
        }
        if let Some(v) = parse(&get, "RUNNER_IDE_MAX_MESSAGE_BYTES")? {
            s.ide_max_message_bytes = v;
        }
        if let Some(v) = get("RUNNER_IDE_COOKIE_SAMESITE") {
            s.ide_cookie_cross_site = match v.trim().to_ascii_lowercase().as_str() {
                "none" => true,
                "" | "lax" => false,
                other => bail!("RUNNER_IDE_COOKIE_SAMESITE={other:?} is invalid: use lax or none"),
            };
        }
        if let Some(v) = get("RUNNER_IDE_SUBDOMAIN_HOST").map(|v| v.trim().trim_start_matches('.').to_ascii_lowercase())
        {
            let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !v.is_empty() && !v.split('.').all(label_ok) {
                bail!(
                    "RUNNER_IDE_SUBDOMAIN_HOST={v:?} is invalid: a host name such as ide.example.com \
                     (scheme and port come from RUNNER_PUBLIC_URL)"
                );
            }
            s.ide_subdomain_host = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("RUNNER_NODE").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            let ok = v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                bail!("RUNNER_NODE={v:?} is invalid: up to 64 of a-z, 0-9, '-', '_' and '.' (a Swarm node ID fits)");
            }
            s.fleet.node = v;
        }
        if let Some(v) = get("RUNNER_NODE_URL").map(|v| v.trim().trim_end_matches('/').to_string()) {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                bail!("RUNNER_NODE_URL={v:?} is invalid: an http:// or https:// URL other runners reach this one at");
            }
            s.fleet.url = v;
        }
        s.fleet.secret = get("RUNNER_FLEET_SECRET").filter(|v| !v.trim().is_empty()).map(Secret::new);
        if let Some(v) = secs("RUNNER_NODE_HEARTBEAT_SECS")? {
            s.fleet.heartbeat = v;
        }
        if let Some(v) = secs("RUNNER_NODE_LOST_SECS")? {
            s.fleet.lost_after = v;
        }
        if let Some(v) = secs("RUNNER_WORKSPACE_COPY_SECS")? {
            s.fleet.copy_every = v;
        }
        if let Some(v) = get("RUNNER_IMAGE_REGISTRY").map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            s.fleet.registry =
                Some(crate::domain::registry_host(&v).map_err(|e| anyhow::anyhow!("RUNNER_IMAGE_REGISTRY: {e}"))?);
        }
        s.fleet.registry_username = get("RUNNER_IMAGE_REGISTRY_USERNAME").filter(|v| !v.trim().is_empty());
        s.fleet.registry_password = get("RUNNER_IMAGE_REGISTRY_PASSWORD").filter(|v| !v.is_empty()).map(Secret::new);
        if let Some(v) = secs("RUNNER_IMAGE_SYNC_SECS")? {
            s.fleet.image_sync = v;
        }
        s.fleet.tls_cert = get("RUNNER_FLEET_TLS_CERT").filter(|v| !v.trim().is_empty());
        s.fleet.tls_key = get("RUNNER_FLEET_TLS_KEY").filter(|v| !v.trim().is_empty()).map(Secret::new);
        s.fleet.listen = parse(&get, "RUNNER_FLEET_LISTEN")?;
        if s.fleet.tls_cert.is_some() && s.fleet.listen.is_none() {
            s.fleet.listen = Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8443)));
        }
        if let Some(v) = get("RUNNER_SWARM_AVAILABILITY") {
            s.fleet.follow_swarm = match v.trim() {
                "" | "true" | "1" => true,
                "false" | "0" => false,
                other => bail!("RUNNER_SWARM_AVAILABILITY={other:?} is invalid: true or false"),
            };
        }
        if let Some(v) = parse(&get, "RUNNER_INGRESS_LISTEN")? {
            s.ingress_listen = Some(v);
        }
        if let Some(v) = get("RUNNER_APP_NETWORK").filter(|v| !v.is_empty()) {
            s.app_network = v;
        }
        s.log_filter = get("RUNNER_LOG").filter(|v| !v.trim().is_empty());
        if let Some(f) = &s.log_filter {
            tracing_subscriber::EnvFilter::try_new(f)
                .map_err(|e| anyhow::anyhow!("RUNNER_LOG={f:?} is invalid: {e}"))?;
        }
        if let Some(v) = get("RUNNER_LOG_FORMAT") {
            s.log_json = v.trim() == "json";
        }
        if let Some(e) = unreadable.into_inner() {
            bail!(e);
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let f = &self.fleet;
        if f.heartbeat.is_zero() || f.lost_after < f.heartbeat * 3 {
            bail!("RUNNER_NODE_LOST_SECS must be at least three RUNNER_NODE_HEARTBEAT_SECS (and the heartbeat at least 1)");
        }
        if f.node != crate::domain::LOCAL_NODE && (f.url.is_empty() || f.secret.is_none()) {
            bail!(
                "RUNNER_NODE={:?} makes this runner a fleet node: it needs RUNNER_NODE_URL (where other runners \
                 reach it) and RUNNER_FLEET_SECRET (shared by the fleet, signs what runners forward)",
                f.node
            );
        }
        if f.tls_cert.is_some() != f.tls_key.is_some() {
            bail!("RUNNER_FLEET_TLS_CERT and RUNNER_FLEET_TLS_KEY go together");
        }
        if f.listen.is_some() && f.tls_cert.is_none() {
            bail!(
                "RUNNER_FLEET_LISTEN serves relays over TLS: it needs RUNNER_FLEET_TLS_CERT and RUNNER_FLEET_TLS_KEY"
            );
        }
        if f.registry_username.is_some() != f.registry_password.is_some() {
            bail!("RUNNER_IMAGE_REGISTRY_USERNAME and RUNNER_IMAGE_REGISTRY_PASSWORD go together");
        }
        if f.image_sync.is_zero() {
            bail!("RUNNER_IMAGE_SYNC_SECS must be at least 1");
        }
        let e = &self.events;
        if e.webhook_timeout.is_zero() || e.webhook_max_backoff.is_zero() || e.retention.is_zero() {
            bail!("RUNNER_WEBHOOK_TIMEOUT_SECS, RUNNER_WEBHOOK_MAX_BACKOFF_SECS and RUNNER_EVENT_RETENTION_SECS must be at least 1");
        }
        let r = &self.runs;
        if r.max_concurrent == 0
            || r.caps.time_ms == 0
            || r.caps.wall_ms == 0
            || r.caps.memory_mb < 16
            || r.caps.pids == 0
            || r.max_tests == 0
            || r.retention.is_zero()
            || r.rate_per_min == 0
            || r.rate_burst == 0
        {
            bail!("RUNNER_RUN_MAX_CONCURRENT, RUNNER_RUN_MAX_TIME_MS, RUNNER_RUN_MAX_WALL_MS, RUNNER_RUN_MAX_PIDS, RUNNER_RUN_MAX_TESTS, RUNNER_RUN_RETENTION_SECS, RUNNER_RUN_RATE_LIMIT_PER_MIN and RUNNER_RUN_RATE_LIMIT_BURST must be at least 1, RUNNER_RUN_MAX_MEMORY_MB at least 16");
        }
        if r.caps.time_ms > 3_600_000
            || r.caps.wall_ms > 3_600_000
            || r.caps.memory_mb > 65_536
            || r.caps.pids > 4096
            || r.caps.output_bytes == 0
            || r.caps.output_bytes > 64 << 20
        {
            bail!("RUNNER_RUN_MAX_TIME_MS and RUNNER_RUN_MAX_WALL_MS must be at most 3600000, RUNNER_RUN_MAX_MEMORY_MB at most 65536, RUNNER_RUN_MAX_PIDS at most 4096, RUNNER_RUN_MAX_OUTPUT_BYTES 1 to 67108864");
        }
        if self.sandbox_user.split(':').next() == Some("65534") {
            bail!("RUNNER_SANDBOX_USER must not be 65534 (nobody): one-shot runs' sandboxes are held by nobody, out of the submission's reach");
        }
        let a = &self.alerts;
        if a.interval.is_zero() || a.oom_kills == 0 || a.oom_window.is_zero() {
            bail!("RUNNER_ALERT_INTERVAL_SECS, RUNNER_ALERT_OOM_KILLS and RUNNER_ALERT_OOM_WINDOW_SECS must be at least 1");
        }
        if a.memory_committed_percent == 0
            || a.memory_committed_percent > 100
            || a.disk_percent == 0
            || a.disk_percent > 100
        {
            bail!("RUNNER_ALERT_MEMORY_COMMITTED_PERCENT and RUNNER_ALERT_DISK_PERCENT must be 1-100");
        }
        let user = self.sandbox_user.split(':').next().unwrap_or_default();
        if user.is_empty() || user == "0" || user == "root" {
            bail!("RUNNER_SANDBOX_USER must name a non-root user, got {:?}", self.sandbox_user);
        }
        if self.instance.is_empty()
            || self.instance.len() > 32
            || !self.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            bail!("RUNNER_INSTANCE must be 1-32 characters of [A-Za-z0-9-], got {:?}", self.instance);
        }
        let (d, c) = (&self.default_limits, &self.limit_caps);
        if d.memory_mb > c.memory_mb
            || d.cpus > c.cpus
            || d.pids > c.pids
            || d.tmpfs_mb > c.tmpfs_mb
            || d.workspace_mb > c.workspace_mb
        {
            bail!("default sandbox limits {d:?} exceed the caps {c:?}");
        }
        if d.memory_mb < 16 || d.cpus <= 0.0 || d.pids < 8 || d.tmpfs_mb == 0 || d.workspace_mb < 8 {
            bail!("default sandbox limits {d:?} are too small to run anything");
        }
        if self.max_concurrent_starts == 0 || self.rate_limit_per_sec == 0 || self.rate_limit_burst == 0 {
            bail!("RUNNER_MAX_CONCURRENT_STARTS and the rate limits must be positive");
        }
        if let Err(e) = self.pool_default.check(self.pool_max_per_exercise) {
            bail!("RUNNER_POOL_DEFAULT_MIN/MAX: {}", e.message);
        }
        if self.pool_interval.is_zero() {
            bail!("RUNNER_POOL_INTERVAL_SECS must be positive");
        }
        if self.max_concurrent_checks == 0 {
            bail!("RUNNER_MAX_CONCURRENT_CHECKS must be positive (0 would refuse every check)");
        }
        if self.max_concurrent_intakes == 0 {
            bail!("RUNNER_MAX_CONCURRENT_INTAKES must be positive (0 would refuse every build)");
        }
        for c in &self.build_network_allow {
            crate::domain::Cidr::parse(c).map_err(|e| anyhow::anyhow!("RUNNER_BUILD_NETWORK_ALLOW: {e}"))?;
        }
        for name in &self.build_base_images {
            crate::domain::repository_name(name).map_err(|e| anyhow::anyhow!("RUNNER_BUILD_BASE_IMAGES: {e}"))?;
        }
        if let Some(op) = &self.operator_token {
            if op.expose().len() < 16 {
                bail!("RUNNER_OPERATOR_TOKEN must be at least 16 characters (it signs in to the dashboard)");
            }
            if self.api_token.as_ref() == Some(op) {
                bail!("RUNNER_OPERATOR_TOKEN must differ from RUNNER_API_TOKEN (the audit log tells them apart)");
            }
        }
        let url = self.database_url.expose();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("RUNNER_DATABASE_URL must be a sqlite: or postgres:// URL");
        }
        Ok(())
    }

    /// `build_network_allow`, parsed (it was validated).
    pub fn build_network_allow_cidrs(&self) -> Vec<crate::domain::Cidr> {
        self.build_network_allow.iter().filter_map(|c| crate::domain::Cidr::parse(c).ok()).collect()
    }

    pub fn builds_dir(&self) -> PathBuf {
        self.data_dir.join("builds")
    }

    pub fn workspace_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// The API token, the IDE secret and the secrets key, generating and storing them (mode 0600)
    /// when none was configured.
    pub fn resolve_secrets(&mut self) -> anyhow::Result<()> {
        if self.ide_secret.is_none() {
            self.ide_secret = Some(Secret::new(stored_secret(&self.data_dir.join("ide-secret"))?));
        }
        if self.secrets_key.is_none() {
            self.secrets_key = Some(Secret::new(stored_secret(&self.data_dir.join("secrets-key"))?));
        }
        if self.api_token.is_some() {
            return Ok(());
        }
        self.api_token = Some(Secret::new(stored_secret(&self.data_dir.join("api-token"))?));
        Ok(())
    }
}

/// A TOML settings file as the variables it stands for: `idle_timeout_secs = 900` is
/// `RUNNER_IDLE_TIMEOUT_SECS=900`.
fn file_values(text: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    table
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => anyhow::bail!("{k}: must be a string, number or boolean"),
            };
            Ok((format!("RUNNER_{}", k.to_uppercase()), value))
        })
        .collect()
}

/// A random secret kept in a file (mode 0600), created on first use.
fn stored_secret(path: &std::path::Path) -> anyhow::Result<String> {
    {
        let token = match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("writing {}", path.display()))?;
                f.write_all(token.as_bytes())?;
                tracing::info!(path = %path.display(), "generated a secret (none was configured)");
                token
            }
        };
        Ok(token)
    }
}

fn sqlite_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("runner.db").display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid_and_env_overrides_them() {
        let s = from(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(s.database_url.expose().starts_with("sqlite://"));
        assert_eq!(s.runtime, Runtime::Crun, "the fastest runtime at equal hardening (benches/session_start.rs)");
        let s = from(&[
            ("RUNNER_LISTEN", "127.0.0.1:9999"),
            ("RUNNER_DOCKER_RUNTIME", "runsc"),
            ("RUNNER_SANDBOX_MEMORY_MB", "256"),
            ("RUNNER_IDLE_TIMEOUT_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.runtime, Runtime::Runsc);
        assert_eq!(s.default_limits.memory_mb, 256);
        assert_eq!(from(&[("RUNNER_DOCKER_RUNTIME", "crun")]).unwrap().runtime, Runtime::Crun);
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn invalid_values_are_errors_that_name_the_variable() {
        let err = from(&[("RUNNER_IDLE_TIMEOUT_SECS", "soon")]).unwrap_err().to_string();
        assert!(err.contains("RUNNER_IDLE_TIMEOUT_SECS"), "{err}");
        assert!(from(&[("RUNNER_SANDBOX_USER", "root")]).is_err());
        assert!(from(&[("RUNNER_SANDBOX_USER", "0:0")]).is_err());
        assert!(from(&[("RUNNER_SANDBOX_MEMORY_MB", "999999")]).is_err());
        let err = from(&[("RUNNER_MAX_CONCURRENT_CHECKS", "0")]).unwrap_err().to_string();
        assert!(err.contains("RUNNER_MAX_CONCURRENT_CHECKS"), "{err}");
        assert_eq!(from(&[("RUNNER_MAX_CONCURRENT_CHECKS", "3")]).unwrap().max_concurrent_checks, 3);
        let err = from(&[("RUNNER_LOG", "runner=loud")]).unwrap_err().to_string();
        assert!(err.contains("RUNNER_LOG"), "{err}");
        assert_eq!(
            from(&[("RUNNER_LOG", "runner=debug,info")]).unwrap().log_filter.as_deref(),
            Some("runner=debug,info")
        );
    }

    #[test]
    fn build_image_and_network_lists_are_validated() {
        let s = from(&[
            ("RUNNER_BUILD_BASE_IMAGES", " debian , exercise-runner/base,127.0.0.1:5000/team/tools "),
            ("RUNNER_BUILD_NETWORK_ALLOW", "10.1.2.3, fd00::/8"),
        ])
        .unwrap();
        assert_eq!(s.build_base_images, ["debian", "exercise-runner/base", "127.0.0.1:5000/team/tools"]);
        assert_eq!(
            s.build_network_allow_cidrs().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["10.1.2.3/32", "fd00::/8"]
        );
        assert_eq!(from(&[]).unwrap().build_base_images, ["exercise-runner/base", "exercise-runner/busybox"]);
        assert!(from(&[("RUNNER_BUILD_BASE_IMAGES", "")]).unwrap().build_base_images.is_empty());
        for bad in ["debian:bookworm", "busybox@sha256:00", "Exercise-Runner/Base", "0237e", "a//b"] {
            let err = from(&[("RUNNER_BUILD_BASE_IMAGES", bad)]).unwrap_err().to_string();
            assert!(err.contains("RUNNER_BUILD_BASE_IMAGES"), "{bad}: {err}");
        }
        for bad in ["10.0.0.0/33", "mirror.internal"] {
            let err = from(&[("RUNNER_BUILD_NETWORK_ALLOW", bad)]).unwrap_err().to_string();
            assert!(err.contains("RUNNER_BUILD_NETWORK_ALLOW"), "{bad}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = from(&[
            ("RUNNER_API_TOKEN", "hunter2-very-secret"),
            ("RUNNER_DATABASE_URL", "postgres://runner:db-password-42@127.0.0.1/runner"),
            ("RUNNER_IDE_SECRET", "ide-secret-77"),
            ("RUNNER_SECRETS_KEY", "sealing-key-99"),
            ("RUNNER_GIT_HOOK_SECRET", "hook-secret-55"),
            ("RUNNER_OPERATOR_TOKEN", "operator-secret-0123"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        for secret in
            ["hunter2", "db-password-42", "ide-secret-77", "sealing-key-99", "hook-secret-55", "operator-secret"]
        {
            assert!(!debug.contains(secret), "{secret}: {debug}");
        }
        assert_eq!(s.secrets_key.as_ref().map(|k| k.expose()), Some("sealing-key-99"));
        assert_eq!(s.operator_token.as_ref().map(|k| k.expose()), Some("operator-secret-0123"));
    }

    #[test]
    fn the_operator_token_is_long_and_not_the_api_token() {
        let err = from(&[("RUNNER_OPERATOR_TOKEN", "short")]).unwrap_err().to_string();
        assert!(err.contains("RUNNER_OPERATOR_TOKEN"), "{err}");
        let same = "the-same-token-0123456789";
        let err = from(&[("RUNNER_OPERATOR_TOKEN", same), ("RUNNER_API_TOKEN", same)]).unwrap_err().to_string();
        assert!(err.contains("differ"), "{err}");
        assert!(from(&[]).unwrap().operator_token.is_none());
    }

    #[test]
    fn a_settings_file_layers_under_the_environment_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.toml");
        let no_env = |_: &str| None;
        std::fs::write(
            &path,
            "idle_timeout_secs = 77\nbuild_cpus = 1.5\nlog_format = \"json\"\nsandbox_memory_mb = 300\n",
        )
        .unwrap();
        let s = Settings::load_with(Some(&path), no_env).unwrap();
        assert_eq!(s.idle_timeout, Duration::from_secs(77));
        assert_eq!(s.build_cpus, 1.5);
        assert!(s.log_json);
        // The environment wins over the file.
        let s =
            Settings::load_with(Some(&path), |k| (k == "RUNNER_IDLE_TIMEOUT_SECS").then(|| "5".to_string())).unwrap();
        assert_eq!(s.idle_timeout, Duration::from_secs(5));
        assert_eq!(s.build_cpus, 1.5);

        for (text, named) in [
            ("idle_timeout_sec = 77\n", "unknown setting(s): idle_timeout_sec"),
            ("idle_timeout_secs = \"soon\"\n", "RUNNER_IDLE_TIMEOUT_SECS"),
            ("[sandbox]\nmemory_mb = 1\n", "sandbox: must be a string, number or boolean"),
            ("idle_timeout_secs = \n", "not valid TOML"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", Settings::load_with(Some(&path), no_env).unwrap_err());
            assert!(e.contains(named) && e.contains("runner.toml"), "{text:?}: {e}");
        }
        let e = format!("{:#}", Settings::load_with(Some(&dir.path().join("missing.toml")), no_env).unwrap_err());
        assert!(e.contains("missing.toml"), "{e}");
        // The README's example is a valid file.
        let readme = include_str!("../../README.md");
        let example =
            readme.split("```toml\n").nth(1).and_then(|r| r.split("```").next()).expect("README has a toml example");
        std::fs::write(&path, example).unwrap();
        let s = Settings::load_with(Some(&path), no_env).unwrap();
        assert_eq!(s.idle_timeout, Duration::from_secs(900));
    }

    #[test]
    fn a_setting_may_come_from_a_file_named_by_its_file_variable() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("api_token");
        std::fs::write(&token, "from-a-secret\n").unwrap();
        let path = token.display().to_string();
        let s = Settings::from_lookup(|k| (k == "RUNNER_API_TOKEN_FILE").then(|| path.clone())).unwrap();
        assert_eq!(s.api_token.unwrap().expose(), "from-a-secret", "the trailing newline is dropped");
        let s = Settings::from_lookup(|k| match k {
            "RUNNER_API_TOKEN_FILE" => Some(path.clone()),
            "RUNNER_API_TOKEN" => Some("the-variable-wins".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.api_token.unwrap().expose(), "the-variable-wins");
        let missing = dir.path().join("nope").display().to_string();
        let e = Settings::from_lookup(|k| (k == "RUNNER_API_TOKEN_FILE").then(|| missing.clone())).unwrap_err();
        assert!(format!("{e:#}").contains("RUNNER_API_TOKEN_FILE"), "{e:#}");
    }

    #[test]
    fn a_fleet_node_needs_its_url_and_the_fleet_secret() {
        let node = |url: Option<&'static str>, secret: Option<&'static str>| {
            Settings::from_lookup(move |k| match k {
                "RUNNER_NODE" => Some("node-a".into()),
                "RUNNER_NODE_URL" => url.map(String::from),
                "RUNNER_FLEET_SECRET" => secret.map(String::from),
                _ => None,
            })
        };
        assert!(node(None, Some("s")).is_err());
        assert!(node(Some("http://10.0.0.1:8080"), None).is_err());
        assert!(node(Some("10.0.0.1:8080"), Some("s")).is_err(), "a URL with its scheme");
        let s = node(Some("http://10.0.0.1:8080/"), Some("s")).unwrap();
        assert_eq!((s.fleet.node.as_str(), s.fleet.url.as_str()), ("node-a", "http://10.0.0.1:8080"));
        assert!(Settings::from_lookup(|k| (k == "RUNNER_NODE").then(|| "Node A".into())).is_err());
        assert_eq!(Settings::from_lookup(|_| None).unwrap().fleet.node, "local", "a single host");
    }

    #[test]
    fn the_image_registry_is_a_host_and_its_login_comes_whole() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            Settings::from_lookup(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        let s = with(&[("RUNNER_IMAGE_REGISTRY", "10.124.0.2:5000")]).unwrap();
        assert_eq!(s.fleet.registry.as_deref(), Some("10.124.0.2:5000"));
        assert!(with(&[]).unwrap().fleet.registry.is_none(), "unset: images stay where they are");
        let e = with(&[("RUNNER_IMAGE_REGISTRY", "http://10.124.0.2:5000")]).unwrap_err();
        assert!(format!("{e:#}").contains("RUNNER_IMAGE_REGISTRY"), "{e:#}");
        assert!(with(&[("RUNNER_IMAGE_REGISTRY", "r.example:5000"), ("RUNNER_IMAGE_REGISTRY_USERNAME", "u")]).is_err());
        let s = with(&[
            ("RUNNER_IMAGE_REGISTRY", "r.example:5000"),
            ("RUNNER_IMAGE_REGISTRY_USERNAME", "u"),
            ("RUNNER_IMAGE_REGISTRY_PASSWORD", "p"),
        ])
        .unwrap();
        assert_eq!(s.fleet.registry_password.map(|p| p.expose().to_string()).as_deref(), Some("p"));
        assert!(with(&[("RUNNER_IMAGE_SYNC_SECS", "0")]).is_err());
    }

    #[test]
    fn fleet_tls_needs_its_certificate_and_key_and_listens_on_8443_by_default() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            Settings::from_lookup(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
        };
        let s = with(&[("RUNNER_FLEET_TLS_CERT", "c"), ("RUNNER_FLEET_TLS_KEY", "k")]).unwrap();
        assert_eq!(s.fleet.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert!(with(&[("RUNNER_FLEET_TLS_CERT", "c")]).is_err());
        assert!(with(&[("RUNNER_FLEET_LISTEN", "0.0.0.0:9443")]).is_err(), "a TLS listener without a certificate");
        assert!(with(&[]).unwrap().fleet.listen.is_none());
    }

    /// Every `RUNNER_*` variable the README documents for the service is one the settings read,
    /// so it can also be set in the file.
    #[test]
    fn the_documented_variables_are_the_ones_read() {
        let asked = std::cell::RefCell::new(std::collections::HashSet::new());
        Settings::from_lookup(|k| {
            asked.borrow_mut().insert(k.to_string());
            None
        })
        .unwrap();
        let asked = asked.into_inner();
        let readme = include_str!("../../README.md");
        // The client's, the tests', and the stack file's (deploy/fleet-stack.yml) variables.
        let not_service = [
            "RUNNER_CONFIG",
            "RUNNER_URL",
            "RUNNER_TEST_POSTGRES_URL",
            "RUNNER_TEST_REGISTRY",
            "RUNNER_TEST_THREADS",
            "RUNNER_IMAGE",
        ];
        let mut missing = Vec::new();
        for word in readme.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')) {
            let documented =
                word.starts_with("RUNNER_") && word.len() > 7 && !not_service.contains(&word) && !word.ends_with('_');
            if documented && !asked.contains(word) {
                missing.push(word);
            }
        }
        missing.sort();
        missing.dedup();
        assert!(missing.is_empty(), "documented but never read: {missing:?}");
    }
}
