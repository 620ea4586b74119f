//! Every sandbox's resource use, sampled cheaply and kept in memory (issue 9, items 1–3).
//!
//! The `Usage` service owns its state: one round every `RUNNER_USAGE_INTERVAL_SECS` finds the
//! live sandboxes without asking the engine about each (the store's running sessions carry their
//! container ids; self-tests and app containers come from one list call, made only while a build
//! self-tests or apps exist), reads each one's cgroup files directly ([`cgroup`]), and keeps:
//! the latest figures and an hour of 10 s history per sandbox ([`history`], dropped when the
//! sandbox ends), and per-exercise (and per-app) aggregates. Nothing is written to the database.
//! The views are the JSON routes (`http/usage.rs`) and the Prometheus collector ([`collector`]).

pub mod capacity;
pub mod cgroup;
mod collector;
pub mod history;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use capacity::{Capacity, Slots};
use cgroup::{Files, Layout, Limits, Reading};
use history::{PointView, Ring, HISTORY_POINTS, HISTORY_STEP};

use crate::{
    config::{Settings, WorkspaceDriver},
    domain::{rfc3339, SandboxSpec},
    engine::{Engine, OtherContainer},
    lifecycle::{BuildState, SessionState},
    metrics::Metrics,
    store::{now_ms, Store},
};

/// What a sandbox is there for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Session,
    SelfTest,
    App,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::SelfTest => "self_test",
            Kind::App => "app",
        }
    }
}

/// One sandbox to sample this round.
#[derive(Debug, Clone)]
pub struct Target {
    /// The session id (sessions), else the container id.
    pub key: String,
    pub kind: Kind,
    /// The exercise (sessions, self-tests) or the app.
    pub group: String,
    pub container: String,
    pub learner: Option<String>,
    /// The build of a self-test, the service of an app container.
    pub detail: Option<String>,
    /// Has a network: its bytes are read from `/proc/<pid>/net/dev`.
    pub network: bool,
    /// The workspace volume (loop driver): its disk use is read with statvfs.
    pub workspace: Option<String>,
}

/// What the blocking half of a round read for one target.
#[derive(Debug, Clone)]
struct Observed {
    reading: Option<Reading>,
    limits: Limits,
    net: Option<(u64, u64)>,
    disk: Option<(u64, u64)>,
}

/// The cgroup files and limits of the containers seen, found once each (the blocking half).
struct Reader {
    layout: Layout,
    probes: HashMap<String, Probe>,
    /// Workspace volume → its mount point on the host.
    mounts: HashMap<String, PathBuf>,
    /// Rounds since `/proc/self/mountinfo` was last read for a missing mount.
    mounts_age: u32,
    buf: String,
}

struct Probe {
    files: Files,
    limits: Limits,
    pid: Option<u32>,
}

/// A missing workspace mount is looked for again after this many rounds (about a minute).
const MOUNTS_RETRY_ROUNDS: u32 = 12;

impl Reader {
    fn read_all(&mut self, targets: &[Target]) -> Vec<Observed> {
        let live: HashSet<&str> = targets.iter().map(|t| t.container.as_str()).collect();
        self.probes.retain(|c, _| live.contains(c.as_str()));
        let volumes: HashSet<&str> = targets.iter().filter_map(|t| t.workspace.as_deref()).collect();
        self.mounts.retain(|v, _| volumes.contains(v.as_str()));
        self.mounts_age = self.mounts_age.saturating_add(1);
        if volumes.iter().any(|v| !self.mounts.contains_key(*v)) && self.mounts_age > MOUNTS_RETRY_ROUNDS {
            self.refresh_mounts();
        }
        targets.iter().map(|t| self.read_one(t)).collect()
    }

    fn read_one(&mut self, t: &Target) -> Observed {
        let buf = &mut self.buf;
        if !self.probes.contains_key(&t.container) {
            if let Some(files) = self.layout.locate(&t.container) {
                let limits = files.limits(buf);
                self.probes.insert(t.container.clone(), Probe { files, limits, pid: None });
            }
        }
        let Some(probe) = self.probes.get_mut(&t.container) else {
            return Observed { reading: None, limits: Limits::default(), net: None, disk: None };
        };
        let reading = probe.files.read(buf).ok();
        let limits = probe.limits;
        let net = if t.network && reading.is_some() {
            let pid = match probe.pid {
                Some(p) => Some(p),
                None => probe.files.a_pid(buf),
            };
            let dev = pid.and_then(|p| {
                let mut text = String::new();
                use std::io::Read;
                std::fs::File::open(format!("/proc/{p}/net/dev")).ok()?.read_to_string(&mut text).ok()?;
                Some(cgroup::net_dev(&text))
            });
            probe.pid = if dev.is_some() { pid } else { None };
            dev
        } else {
            None
        };
        if reading.is_none() {
            // The cgroup is gone (stopped, or being recreated): find it again next round.
            self.probes.remove(&t.container);
        }
        let disk = t.workspace.as_deref().and_then(|v| {
            let path = self.mounts.get(v)?;
            let used = mounted_use(path);
            if used.is_none() {
                self.mounts.remove(v);
            }
            used
        });
        Observed { reading, limits, net, disk }
    }

    fn refresh_mounts(&mut self) {
        self.mounts_age = 0;
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
        for (volume, mount_point) in cgroup::workspace_mounts(&text, crate::workspaces::VOLUME_PREFIX) {
            self.mounts.insert(volume, PathBuf::from(mount_point));
        }
    }
}

/// Used and total bytes of a workspace's filesystem, if `path` is still a mount point (between
/// a container's removal and its recreation the directory is the host's own).
fn mounted_use(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::symlink_metadata(path).ok()?.dev();
    let parent = std::fs::symlink_metadata(path.parent()?).ok()?.dev();
    if here == parent {
        return None;
    }
    cgroup::filesystem_use(path)
}

/// Cumulative figures carried over from a sandbox's earlier containers (a session whose
/// sandbox reconciliation recreated), so a session's totals never go back.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    cpu_ns: u64,
    periods: u64,
    throttled_periods: u64,
    throttled_ns: u64,
    oom_kills: u64,
}

impl Totals {
    fn plus(self, r: &Reading) -> Totals {
        Totals {
            cpu_ns: self.cpu_ns + r.cpu_usage_ns,
            periods: self.periods + r.cpu_periods,
            throttled_periods: self.throttled_periods + r.cpu_throttled_periods,
            throttled_ns: self.throttled_ns + r.cpu_throttled_ns,
            oom_kills: self.oom_kills + r.oom_kills.unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Last {
    at_ms: i64,
    reading: Reading,
    net: Option<(u64, u64)>,
    disk: Option<(u64, u64)>,
}

struct Tracked {
    target: Target,
    limits: Limits,
    last: Option<Last>,
    /// Whether the last round could read the sandbox's cgroup.
    running: bool,
    cpu_cores: Option<f64>,
    carried: Totals,
    ring: Ring,
}

impl Tracked {
    fn totals(&self) -> Totals {
        match &self.last {
            Some(l) => self.carried.plus(&l.reading),
            None => self.carried,
        }
    }
}

/// Monotonic counters of one exercise or app, over every sandbox it ever had in this process.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    cpu_ns: u64,
    throttled_ns: u64,
    oom_kills: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RoundInfo {
    pub at_ms: i64,
    pub sandboxes: usize,
    /// Sandboxes whose cgroup could not be read (not running, or the engine is elsewhere).
    pub unreadable: usize,
    /// CPU time of the round's cgroup reading (thread CPU time, not wall time).
    pub read_cpu_ns: u64,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Tracked>,
    /// By (exercise or app, name): exercises' keys use `Kind::Session`, apps' `Kind::App`.
    counters: BTreeMap<(Kind, String), Counters>,
    rounds: u64,
    last_round: Option<RoundInfo>,
}

/// The group a kind of sandbox is counted under.
fn group_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Session | Kind::SelfTest => Kind::Session,
        Kind::App => Kind::App,
    }
}

impl State {
    /// Takes one round's readings; `oom_killed` are containers the engine says the kernel
    /// OOM-killed since their last reading.
    fn apply(
        &mut self,
        at_ms: i64,
        targets: Vec<Target>,
        observed: Vec<Observed>,
        read_cpu_ns: u64,
        oom_killed: &HashSet<String>,
    ) -> RoundInfo {
        let keys: HashSet<&str> = targets.iter().map(|t| t.key.as_str()).collect();
        self.sandboxes.retain(|k, _| keys.contains(k.as_str()));
        let mut unreadable = 0;
        for (target, seen) in targets.into_iter().zip(observed) {
            let t = self.sandboxes.entry(target.key.clone()).or_insert_with(|| Tracked {
                target: target.clone(),
                limits: Limits::default(),
                last: None,
                running: false,
                cpu_cores: None,
                carried: Totals::default(),
                ring: Ring::default(),
            });
            let before = t.totals();
            let recreated = t.target.container != target.container;
            let went_back =
                matches!((&t.last, &seen.reading), (Some(l), Some(r)) if r.cpu_usage_ns < l.reading.cpu_usage_ns);
            if recreated || went_back {
                t.carried = before;
                t.last = None;
            }
            t.target = target;
            let Some(reading) = seen.reading else {
                unreadable += 1;
                if t.running && oom_killed.contains(&t.target.container) {
                    t.carried.oom_kills += 1;
                    let c = self.counters.entry((group_kind(t.target.kind), t.target.group.clone())).or_default();
                    c.oom_kills += 1;
                }
                t.running = false;
                t.cpu_cores = None;
                continue;
            };
            t.cpu_cores = t.last.as_ref().and_then(|l| {
                let elapsed = (at_ms - l.at_ms).max(0) as u64 * 1_000_000;
                history::cpu_rate(l.reading.cpu_usage_ns, reading.cpu_usage_ns, elapsed)
            });
            t.running = true;
            t.limits = seen.limits;
            t.last = Some(Last { at_ms, reading, net: seen.net, disk: seen.disk });
            let after = t.totals();
            t.ring.observe(at_ms, after.cpu_ns, reading.working_set_bytes(), reading.pids);
            let c = self.counters.entry((group_kind(t.target.kind), t.target.group.clone())).or_default();
            c.cpu_ns += after.cpu_ns.saturating_sub(before.cpu_ns);
            c.throttled_ns += after.throttled_ns.saturating_sub(before.throttled_ns);
            c.oom_kills += after.oom_kills.saturating_sub(before.oom_kills);
        }
        self.rounds += 1;
        let info = RoundInfo { at_ms, sandboxes: self.sandboxes.len(), unreadable, read_cpu_ns };
        self.last_round = Some(info);
        info
    }
}

/// The usage figures of one sandbox now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Now {
    pub at: String,
    /// Whether the last round could read it (false while its container is down).
    pub running: bool,
    /// Cores used over the last sampling interval.
    pub cpu_cores: Option<f64>,
    /// The CPU quota, in cores.
    pub cpu_limit_cores: Option<f64>,
    pub cpu_seconds_total: f64,
    pub cpu_throttled_seconds_total: f64,
    pub cpu_throttled_periods_total: u64,
    pub cpu_periods_total: u64,
    /// Usage minus inactive page cache (cAdvisor's `container_memory_working_set_bytes`).
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    /// Host processes and threads in the sandbox's cgroup (under runsc: the sandbox kernel's).
    pub pids: u64,
    pub pids_limit: Option<u64>,
    /// `null` where the kernel does not count OOM kills per cgroup (v1 before Linux 4.13).
    pub oom_kills_total: Option<u64>,
    pub workspace_used_bytes: Option<u64>,
    pub workspace_quota_bytes: Option<u64>,
    /// `null` without a network (the default for sessions).
    pub network_rx_bytes_total: Option<u64>,
    pub network_tx_bytes_total: Option<u64>,
}

/// One sandbox in `GET /v1/usage/top`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SandboxUsage {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learner: Option<String>,
    /// The exercise (sessions, self-tests) or app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exercise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The self-test's build or the app container's service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub container: String,
    pub now: Now,
}

/// `GET /v1/sessions/{id}/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionUsage {
    pub session: String,
    pub interval_secs: f64,
    pub history_step_secs: u64,
    pub history_points_max: usize,
    /// `null` until the first round after the sandbox started, and once the session ended.
    pub now: Option<Now>,
    /// Oldest first; empty once the session ended.
    pub history: Vec<PointView>,
}

/// One exercise (or app) in `GET /v1/usage/exercises`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct GroupUsage {
    pub sessions: usize,
    pub self_tests: usize,
    pub containers: usize,
    pub cpu_cores: f64,
    pub cpu_seconds_total: f64,
    pub cpu_throttled_seconds_total: f64,
    pub memory_working_set_bytes: u64,
    pub memory_working_set_max_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub oom_kills_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    Cpu,
    Memory,
}

fn now_of(t: &Tracked) -> Option<Now> {
    let last = t.last.as_ref()?;
    let totals = t.totals();
    let r = &last.reading;
    Some(Now {
        at: rfc3339(last.at_ms),
        running: t.running,
        cpu_cores: t.cpu_cores.map(|c| (c * 1000.0).round() / 1000.0),
        cpu_limit_cores: t.limits.cpu_cores,
        cpu_seconds_total: totals.cpu_ns as f64 / 1e9,
        cpu_throttled_seconds_total: totals.throttled_ns as f64 / 1e9,
        cpu_throttled_periods_total: totals.throttled_periods,
        cpu_periods_total: totals.periods,
        memory_working_set_bytes: r.working_set_bytes(),
        memory_usage_bytes: r.memory_usage_bytes,
        memory_limit_bytes: t.limits.memory_bytes,
        pids: r.pids,
        pids_limit: t.limits.pids,
        oom_kills_total: r.oom_kills.map(|_| totals.oom_kills),
        workspace_used_bytes: last.disk.map(|d| d.0),
        workspace_quota_bytes: last.disk.map(|d| d.1),
        network_rx_bytes_total: last.net.map(|n| n.0),
        network_tx_bytes_total: last.net.map(|n| n.1),
    })
}

/// The usage service: built once (`App::build`), sampled by [`run`].
pub struct Usage {
    settings: Settings,
    store: Store,
    engine: Engine,
    reader: Arc<Mutex<Reader>>,
    state: Arc<Mutex<State>>,
    capacity: Arc<Mutex<Option<Capacity>>>,
}

impl Usage {
    /// Registers its Prometheus collector with `metrics`.
    pub fn new(settings: &Settings, store: Store, engine: Engine, metrics: &Metrics) -> Arc<Usage> {
        Self::with_layout(settings, store, engine, metrics, Layout::detect())
    }

    pub fn with_layout(
        settings: &Settings,
        store: Store,
        engine: Engine,
        metrics: &Metrics,
        layout: Layout,
    ) -> Arc<Usage> {
        let usage = Arc::new(Usage {
            settings: settings.clone(),
            store,
            engine,
            reader: Arc::new(Mutex::new(Reader {
                layout,
                probes: HashMap::new(),
                mounts: HashMap::new(),
                mounts_age: u32::MAX,
                buf: String::with_capacity(4096),
            })),
            state: Arc::new(Mutex::new(State::default())),
            capacity: Arc::new(Mutex::new(None)),
        });
        let collector =
            collector::UsageCollector::new(usage.state.clone(), usage.capacity.clone(), settings.metrics_per_session);
        if let Err(e) = metrics.register_collector(Box::new(collector)) {
            tracing::warn!(error = %e, "could not register the usage metrics");
        }
        usage
    }

    pub fn interval(&self) -> Duration {
        self.settings.usage_interval
    }

    /// The sandboxes to sample: running sessions from the store (their container ids), plus
    /// self-tests and app containers from one engine list call when there can be any.
    pub async fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let loop_driver = self.settings.workspace_driver == WorkspaceDriver::Loop;
        let volumes = if loop_driver { self.store.live_workspace_volumes().await? } else { Default::default() };
        let mut targets: Vec<Target> = self
            .store
            .live_sessions()
            .await?
            .into_iter()
            .filter(|s| s.state == SessionState::Running)
            .filter_map(|s| {
                let container = s.container_id.clone()?;
                let spec: Option<SandboxSpec> = serde_json::from_str(&s.spec).ok();
                Some(Target {
                    workspace: volumes.get(&(s.learner.clone(), s.exercise.clone())).cloned(),
                    key: s.id,
                    kind: Kind::Session,
                    group: s.exercise,
                    container,
                    learner: Some(s.learner),
                    detail: None,
                    network: spec.is_some_and(|s| s.network.is_some()),
                })
            })
            .collect();
        let testing = self.store.count_builds_in(&[BuildState::Testing]).await? > 0;
        if testing || !self.store.apps().await?.is_empty() {
            match self.engine.running_selftests_and_apps().await {
                Ok(others) => targets.extend(others.into_iter().map(|o| match o {
                    OtherContainer::SelfTest { id, build, exercise } => Target {
                        key: id.clone(),
                        kind: Kind::SelfTest,
                        group: exercise,
                        container: id,
                        learner: None,
                        detail: Some(build),
                        network: false,
                        workspace: None,
                    },
                    OtherContainer::App { id, app, service } => Target {
                        key: id.clone(),
                        kind: Kind::App,
                        group: app,
                        container: id,
                        learner: None,
                        detail: Some(service),
                        network: true,
                        workspace: None,
                    },
                })),
                // Sessions are still sampled; the engine's trouble shows on /readyz.
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "could not list self-tests and app containers"),
            }
        }
        Ok(targets)
    }

    /// One sampling round over every live sandbox.
    pub async fn sample_once(&self) -> anyhow::Result<RoundInfo> {
        let targets = self.targets().await?;
        self.sample(targets).await
    }

    /// One sampling round over the given sandboxes (those not among them are forgotten).
    pub async fn sample(&self, targets: Vec<Target>) -> anyhow::Result<RoundInfo> {
        let reader = self.reader.clone();
        let (targets, observed, read_cpu_ns) = tokio::task::spawn_blocking(move || {
            let started = thread_cpu_ns();
            let observed = reader.lock().expect("lock").read_all(&targets);
            (targets, observed, thread_cpu_ns().saturating_sub(started))
        })
        .await?;
        // A sandbox whose cgroup vanished since the last round: one inspect says whether the
        // kernel OOM-killed it. Its cgroup's counter went with it — and under runsc an OOM kill
        // always takes the whole sandbox (the sandbox kernel is the process holding the memory).
        let vanished: Vec<String> = {
            let state = self.state.lock().expect("lock");
            targets
                .iter()
                .zip(&observed)
                .filter(|(t, o)| {
                    o.reading.is_none()
                        && state.sandboxes.get(&t.key).is_some_and(|s| s.running && s.target.container == t.container)
                })
                .map(|(t, _)| t.container.clone())
                .collect()
        };
        let mut oom_killed = HashSet::new();
        for container in vanished {
            if let Ok(Some(status)) = self.engine.container_status(&container).await {
                if status.oom_killed {
                    oom_killed.insert(container);
                }
            }
        }
        Ok(self.state.lock().expect("lock").apply(now_ms(), targets, observed, read_cpu_ns, &oom_killed))
    }

    pub fn last_round(&self) -> Option<RoundInfo> {
        self.state.lock().expect("lock").last_round
    }

    /// The session's figures now and its history (`None` figures when it is not sampled).
    pub fn session(&self, id: &str) -> SessionUsage {
        let state = self.state.lock().expect("lock");
        let t = state.sandboxes.get(id).filter(|t| t.target.kind == Kind::Session);
        SessionUsage {
            session: id.to_string(),
            interval_secs: self.settings.usage_interval.as_secs_f64(),
            history_step_secs: HISTORY_STEP.as_secs(),
            history_points_max: HISTORY_POINTS,
            now: t.and_then(now_of),
            history: t.map(|t| t.ring.points().map(PointView::from).collect()).unwrap_or_default(),
        }
    }

    /// The sandboxes using the most CPU (over the last interval) or memory (working set).
    pub fn top(&self, by: TopBy, limit: usize) -> Vec<SandboxUsage> {
        let state = self.state.lock().expect("lock");
        let mut list: Vec<(&Tracked, Now)> =
            state.sandboxes.values().filter_map(|t| now_of(t).map(|n| (t, n))).collect();
        let key = |n: &Now| match by {
            TopBy::Cpu => n.cpu_cores.unwrap_or(0.0),
            TopBy::Memory => n.memory_working_set_bytes as f64,
        };
        list.sort_by(|a, b| key(&b.1).total_cmp(&key(&a.1)).then_with(|| a.0.target.key.cmp(&b.0.target.key)));
        list.into_iter()
            .take(limit)
            .map(|(t, now)| {
                let tg = &t.target;
                let app = tg.kind == Kind::App;
                SandboxUsage {
                    kind: tg.kind,
                    session: (tg.kind == Kind::Session).then(|| tg.key.clone()),
                    learner: tg.learner.clone(),
                    exercise: (!app).then(|| tg.group.clone()),
                    app: app.then(|| tg.group.clone()),
                    detail: tg.detail.clone(),
                    container: tg.container.clone(),
                    now,
                }
            })
            .collect()
    }

    /// Per-exercise (and per-app) aggregates: live sandboxes now, counters since this runner started.
    pub fn groups(&self) -> (BTreeMap<String, GroupUsage>, BTreeMap<String, GroupUsage>) {
        groups_of(&self.state.lock().expect("lock"))
    }

    /// Live sessions, committed memory, disk, slots and queue (`GET /v1/capacity`); also kept
    /// for the `/metrics` gauges.
    pub async fn capacity(&self, start_slots: Slots) -> anyhow::Result<Capacity> {
        let cap = capacity::gather(&self.settings, &self.store, start_slots).await?;
        *self.capacity.lock().expect("lock") = Some(cap.clone());
        Ok(cap)
    }
}

fn groups_of(state: &State) -> (BTreeMap<String, GroupUsage>, BTreeMap<String, GroupUsage>) {
    let (mut exercises, mut apps) = (BTreeMap::new(), BTreeMap::new());
    for ((kind, name), c) in &state.counters {
        let map = if *kind == Kind::App { &mut apps } else { &mut exercises };
        map.insert(
            name.clone(),
            GroupUsage {
                cpu_seconds_total: c.cpu_ns as f64 / 1e9,
                cpu_throttled_seconds_total: c.throttled_ns as f64 / 1e9,
                oom_kills_total: c.oom_kills,
                ..Default::default()
            },
        );
    }
    for t in state.sandboxes.values() {
        let map = if t.target.kind == Kind::App { &mut apps } else { &mut exercises };
        let g: &mut GroupUsage = map.entry(t.target.group.clone()).or_default();
        match t.target.kind {
            Kind::Session => g.sessions += 1,
            Kind::SelfTest => g.self_tests += 1,
            Kind::App => g.containers += 1,
        }
        if let (true, Some(last)) = (t.running, &t.last) {
            let ws = last.reading.working_set_bytes();
            g.cpu_cores += t.cpu_cores.unwrap_or(0.0);
            g.memory_working_set_bytes += ws;
            g.memory_working_set_max_bytes = g.memory_working_set_max_bytes.max(ws);
            g.memory_limit_bytes += t.limits.memory_bytes.unwrap_or(0);
            g.pids += last.reading.pids;
        }
    }
    (exercises, apps)
}

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time of the whole process (every thread), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Samples every `RUNNER_USAGE_INTERVAL_SECS` until shutdown (0: never).
pub async fn run(usage: Arc<Usage>, cancel: CancellationToken) {
    let period = usage.interval();
    if period.is_zero() {
        return;
    }
    crate::rounds::every(period, crate::rounds::First::Now, cancel, || {
        let usage = usage.clone();
        async move {
            if let Err(e) = usage.sample_once().await {
                tracing::warn!(error = %format!("{e:#}"), "usage sampling round failed");
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: &str, container: &str, exercise: &str) -> Target {
        Target {
            key: key.into(),
            kind: Kind::Session,
            group: exercise.into(),
            container: container.into(),
            learner: Some("ada".into()),
            detail: None,
            network: false,
            workspace: None,
        }
    }

    fn seen(cpu_s: f64, memory: u64, oom: u64) -> Observed {
        Observed {
            reading: Some(Reading {
                cpu_usage_ns: (cpu_s * 1e9) as u64,
                memory_usage_bytes: memory + 1000,
                memory_inactive_file_bytes: 1000,
                pids: 2,
                oom_kills: Some(oom),
                ..Default::default()
            }),
            limits: Limits { memory_bytes: Some(128 << 20), pids: Some(256), cpu_cores: Some(0.5) },
            net: None,
            disk: Some((1 << 20, 32 << 20)),
        }
    }

    #[test]
    fn rounds_give_cpu_rates_per_exercise_aggregates_and_forget_ended_sessions() {
        let mut s = State::default();
        let t0 = 1_700_000_000_000;
        s.apply(
            t0,
            vec![target("a", "c1", "ex"), target("b", "c2", "ex")],
            vec![seen(1.0, 10, 0), seen(0.0, 30, 0)],
            0,
            &HashSet::new(),
        );
        let info = s.apply(
            t0 + 5000,
            vec![target("a", "c1", "ex"), target("b", "c2", "ex")],
            vec![seen(3.5, 20, 1), seen(0.5, 30, 0)],
            0,
            &HashSet::new(),
        );
        assert_eq!((info.sandboxes, info.unreadable), (2, 0));
        let a = now_of(&s.sandboxes["a"]).unwrap();
        assert_eq!(a.cpu_cores, Some(0.5), "2.5 s of CPU in 5 s");
        assert_eq!((a.memory_working_set_bytes, a.oom_kills_total), (20, Some(1)));
        assert_eq!(a.workspace_used_bytes, Some(1 << 20));
        let (ex, _) = groups_of(&s);
        let g = &ex["ex"];
        assert_eq!(g.sessions, 2);
        assert_eq!(g.memory_working_set_bytes, 50);
        assert_eq!(g.memory_working_set_max_bytes, 30);
        assert_eq!(g.cpu_seconds_total, 4.0);
        assert_eq!(g.oom_kills_total, 1);
        assert!((g.cpu_cores - 0.6).abs() < 1e-9);

        // Session b ended: its figures and history are dropped, the exercise's counters stay.
        s.apply(t0 + 10_000, vec![target("a", "c1", "ex")], vec![seen(4.0, 20, 1)], 0, &HashSet::new());
        assert!(!s.sandboxes.contains_key("b"));
        let (ex, _) = groups_of(&s);
        assert_eq!((ex["ex"].sessions, ex["ex"].cpu_seconds_total), (1, 4.5));
    }

    #[test]
    fn a_recreated_sandbox_carries_its_totals_and_a_stopped_one_is_not_running() {
        let mut s = State::default();
        s.apply(0, vec![target("a", "c1", "ex")], vec![seen(10.0, 5, 2)], 0, &HashSet::new());
        let unreadable = Observed { reading: None, limits: Limits::default(), net: None, disk: None };
        let killed = HashSet::from(["c1".to_string()]);
        let info = s.apply(5000, vec![target("a", "c1", "ex")], vec![unreadable.clone()], 0, &killed);
        assert_eq!(info.unreadable, 1);
        // Counted once, not again while it stays down.
        s.apply(7500, vec![target("a", "c1", "ex")], vec![unreadable], 0, &killed);
        assert!(!now_of(&s.sandboxes["a"]).unwrap().running);
        // Reconciliation made a new container: its counters start at 0 again.
        s.apply(10_000, vec![target("a", "c2", "ex")], vec![seen(1.0, 5, 0)], 0, &HashSet::new());
        let a = now_of(&s.sandboxes["a"]).unwrap();
        assert_eq!(
            (a.cpu_seconds_total, a.oom_kills_total, a.running),
            (11.0, Some(3), true),
            "2 in the cgroup, 1 that took the container"
        );
        assert_eq!(a.cpu_cores, None, "no rate across two containers");
        let (ex, _) = groups_of(&s);
        assert_eq!((ex["ex"].cpu_seconds_total, ex["ex"].oom_kills_total), (11.0, 3));
    }
}
