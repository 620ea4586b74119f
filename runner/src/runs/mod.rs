//! One-shot runs (`POST /v1/runs`): a submission compiled once and run on each test case, in a
//! fresh sandbox of its own, with a verdict per step. No session, no workspace volume.
//!
//! Every run gets a new container under the sandbox policy (`docker::policy`: no network,
//! read-only root, sized tmpfs, caps dropped, no-new-privileges, pids and memory = swap, an
//! init), made for this run and removed after it; nothing of one run is visible to the next, and
//! runs never share a container with a session. Its main process is `sleep` as `nobody`; the
//! submission's commands are execs as the sandbox user, so the runner can kill every process of
//! theirs (`kill -9 -1` as that user) without ending the container, between test cases. The
//! files come in with the first step that reads no input (a shell untars them from its stdin,
//! then runs the step's argv): one exec where there were two.
//!
//! Verdicts come from the container's cgroup, read by the host: CPU time (`time_limit`, the
//! runner kills at the limit), the OOM-kill counter (`memory_limit`, not a guess from exit 137)
//! and the peak memory. What is pure (validation, the comparison, the verdict) is unit-tested
//! here; the rest is `tests/runs.rs`.

mod prepared;
mod verdict;

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use governor::{clock::Clock, clock::DefaultClock, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::ToSchema;

pub use verdict::{compare, verdict, Compare, Observed, Verdict};

use prepared::{Prepared, Ready, Shape};

use crate::{
    config::Settings,
    domain::{rfc3339, LearnerId, Limits, RunLimits, SandboxSpec, Slug},
    engine::{Engine, ExecRequest, Purpose, SandboxOwner, WorkspaceMount},
    lifecycle::RunState,
    metrics::Metrics,
    store::{now_ms, RunFinish, RunRecord, Store},
    usage::cgroup::{Files, Layout},
};

/// Where a run's files are written and its commands run: a tmpfs of the run's own, mode 1777
/// (a path images do not have, so the tmpfs keeps its own mode).
pub const RUN_DIR: &str = "/submission";
/// The container's own process: it only waits, as `nobody`, out of the submission's reach.
const HOLDER_USER: &str = "65534:65534";
/// Processes of the container that are not the submission's: init, `sleep`, one exec.
const HOLDER_PIDS: u64 = 3;
/// Files in one submission.
const MAX_FILES: usize = 100;
/// How often the CPU time of a running step is read.
const CPU_POLL: Duration = Duration::from_millis(5);

/// The limits a request asks for; each missing one is the default (or the cap, when lower).
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    pub time_ms: Option<u64>,
    pub wall_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub pids: Option<u64>,
    pub output_bytes: Option<usize>,
}

/// A file of the submission.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Relative to the run's directory: no `..`, no leading `/`.
    #[schema(example = "main.py")]
    pub path: String,
    pub content: String,
}

/// One test case: the program run with this stdin and these arguments.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Compared with stdout by the run's `compare` mode; without it, exit 0 within the limits
    /// is `accepted`.
    pub expected_output: Option<String>,
}

/// `POST /v1/runs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A runtime registered with `PUT /v1/runtimes/{name}`; or give `exercise`.
    #[schema(example = "python3")]
    pub runtime: Option<String>,
    /// An exercise whose current version's image the run is made of (with `run`, and
    /// `compile` if it needs one); or give `runtime`.
    pub exercise: Option<String>,
    /// With `exercise`: the command of each test case (its `args` are appended).
    pub run: Option<Vec<String>>,
    /// With `exercise`: run once before the test cases; a non-zero exit is `compile_error`.
    pub compile: Option<Vec<String>>,
    /// The learner the run is for, if the web app says: listed with `GET /v1/runs?learner=`
    /// and erased with them (`DELETE /v1/learners/{learner}`).
    pub learner: Option<String>,
    /// `true` (the default): answer with the result. `false`: answer 202 with the run's URL at
    /// once; `run.finished` is told to the webhooks that ask for it when it is done.
    pub wait: Option<bool>,
    /// `true`: answer 202 with a `stream_url` at once; the run starts when a WebSocket attaches
    /// there (within 30 s): its stdin streamed in, stdout and stderr streamed out (capped),
    /// signals delivered, the final status at the end. No `tests` or `stdin`.
    pub interactive: Option<bool>,
    #[serde(default)]
    pub files: Vec<RunFile>,
    /// The stdin of the single run (without `tests`).
    #[serde(default)]
    pub stdin: String,
    /// Arguments after the run command (without `tests`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Test cases, each run on the one compiled submission; without them the submission is run
    /// once with `stdin` and `args`.
    #[serde(default)]
    pub tests: Vec<TestCase>,
    #[serde(default)]
    pub compare: Compare,
    #[serde(default)]
    pub limits: RequestedLimits,
}

/// The outcome of one step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepResult {
    pub status: Verdict,
    pub stdout: String,
    pub stderr: String,
    /// Stdout or stderr was cut at `output_bytes`.
    pub truncated: bool,
    /// None when the runner ended it (a limit) or it did not run.
    pub exit_code: Option<i64>,
    /// The signal that ended it (an exit code above 128).
    pub signal: Option<i64>,
    /// CPU time of the sandbox during the step.
    pub time_ms: u64,
    pub wall_ms: u64,
    /// The sandbox's peak memory during the step, when the kernel keeps it.
    pub memory_kb: Option<u64>,
}

/// What a finished run keeps (the `result` of its row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub compile: Option<StepResult>,
    pub tests: Vec<StepResult>,
    pub limits: Option<RunLimits>,
    pub duration_ms: u64,
}

/// A run keeps at most this many steps' worth of output at the cap (`output_bytes` of stdout
/// and of stderr per step could otherwise be 100 MiB for a run of 50 test cases).
const KEPT_OUTPUT_STEPS: usize = 4;

impl RunOutcome {
    /// The outcome with at most `budget` bytes of output kept, in step order (compile first);
    /// steps past it keep their status and figures, their output cut (`truncated`).
    pub fn within(mut self, budget: usize) -> RunOutcome {
        let mut left = budget;
        for step in self.compile.iter_mut().chain(self.tests.iter_mut()) {
            for text in [&mut step.stdout, &mut step.stderr] {
                if text.len() > left {
                    let mut cut = left;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    step.truncated = true;
                }
                left -= text.len();
            }
        }
        self
    }
}

/// A run as the API shows it (`POST /v1/runs`, `GET /v1/runs/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    /// `queued`, `running` or `finished`.
    pub state: RunState,
    pub runtime: Option<String>,
    pub exercise: Option<String>,
    pub learner: Option<String>,
    /// Once finished: `compile_error` when the compile step failed; else the first test case's
    /// status that is not `accepted`; else `accepted`.
    pub status: Option<Verdict>,
    pub compile: Option<StepResult>,
    /// One entry per test case (one entry without `tests`); empty until finished.
    pub tests: Vec<StepResult>,
    pub limits: Option<RunLimits>,
    /// From having a slot to the result, sandbox made and removed included.
    pub duration_ms: Option<u64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Where it can be read again.
    #[schema(example = "/v1/runs/3f0c…")]
    pub url: String,
    /// An interactive run's WebSocket, to attach to within 30 s (only in `POST`'s answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_url: Option<String>,
}

impl RunView {
    /// The steps' statuses and figures without their stdout and stderr (lists of runs: a page
    /// of them with every output could be hundreds of MiB).
    pub fn without_output(mut self) -> RunView {
        for step in self.compile.iter_mut().chain(self.tests.iter_mut()) {
            step.stdout.clear();
            step.stderr.clear();
        }
        self
    }

    pub fn of(r: &RunRecord) -> anyhow::Result<RunView> {
        let outcome: Option<RunOutcome> = r.result.as_deref().map(serde_json::from_str).transpose()?;
        let status =
            r.status.as_deref().map(|s| Verdict::parse(s).ok_or_else(|| anyhow::anyhow!("unknown verdict {s:?}")));
        let (compile, tests, limits, duration_ms) = match outcome {
            Some(o) => (o.compile, o.tests, o.limits, Some(o.duration_ms)),
            None => (None, vec![], None, None),
        };
        Ok(RunView {
            id: r.id.clone(),
            state: r.state,
            runtime: r.runtime.clone(),
            exercise: r.exercise.clone(),
            learner: r.learner.clone(),
            status: status.transpose()?,
            compile,
            tests,
            limits,
            duration_ms,
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            url: format!("/v1/runs/{}", r.id),
            stream_url: None,
        })
    }
}

/// A request the runner refuses before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("no runtime {0:?}; the operator registers runtimes with PUT /v1/runtimes/{{name}}")]
    UnknownRuntime(String),
    #[error("no exercise {0:?}")]
    UnknownExercise(String),
    #[error("the exercise {0:?} has no published version yet")]
    NotPublished(String),
    #[error("{0} runs are waiting already; try again shortly")]
    QueueFull(usize),
    #[error("this token starts runs too fast; try again in {0} s")]
    RateLimited(u64),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A waiting caller's run was cut by the runner's shutdown (its row is finished by the next
/// runner): 503, try again.
#[derive(Debug, thiserror::Error)]
#[error("the runner is shutting down; the run was stopped")]
pub struct ShuttingDown;

/// What a run is made of: an image and its commands, from a runtime or an exercise.
#[derive(Debug, Clone)]
struct Target {
    runtime: Option<String>,
    exercise: Option<String>,
    image: String,
    run: Vec<String>,
    compile: Option<Vec<String>>,
}

impl Target {
    /// The `runtime` label of the run metrics: the runtime's name, or `exercise:<slug>`.
    fn label(&self) -> String {
        match (&self.runtime, &self.exercise) {
            (Some(r), _) => r.clone(),
            (None, Some(e)) => format!("exercise:{e}"),
            (None, None) => String::new(),
        }
    }
}

/// A run taken: its id and, for a caller that waits, its result to come.
pub struct Submitted {
    pub view: RunView,
    /// The task running it; it finishes (and writes its result) even if nobody awaits it.
    pub done: Option<tokio::task::JoinHandle<anyhow::Result<RunView>>>,
}

/// How long the process running a run answers for it without renewing (`maintain` renews it
/// every `MAINTAIN_PERIOD`); a run whose lease passed is finished as `internal_error` by any
/// runner, and its sandbox removed.
pub const LEASE: Duration = Duration::from_secs(60);
pub const MAINTAIN_PERIOD: Duration = Duration::from_secs(15);

/// The runs of this process: their slots and queue.
pub struct Runs {
    settings: Arc<Settings>,
    store: Store,
    engine: Engine,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    cgroups: Layout,
    /// This process, as the `owner` of the runs it takes.
    owner: String,
    rate: DefaultKeyedRateLimiter<String>,
    /// Fired at shutdown: the runs in flight stop (`release`).
    stopping: tokio_util::sync::CancellationToken,
    /// Interactive runs waiting for their stream, by id.
    pending: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Live>>>,
    /// Sandboxes made ahead of time (`RUNNER_RUN_PREPARED` per shape).
    prepared: std::sync::Mutex<Prepared>,
    /// The tasks making them: waited for at shutdown, so none is left behind half-made.
    preparing: tokio_util::task::TaskTracker,
    me: std::sync::Weak<Runs>,
    /// The runs this process has taken and not finished, with their sandbox once it has one:
    /// the leases it renews, the sandboxes it removes at shutdown.
    inflight: std::sync::Mutex<std::collections::HashMap<String, Option<String>>>,
}

/// An unclaimed prepared sandbox older than this is removed.
const PREPARED_TTL: Duration = Duration::from_secs(600);
/// Shapes (image and fixed limits) kept prepared at once.
const PREPARED_SHAPES: usize = 4;
/// The name of a prepared sandbox starts so (`exercise-runner-<instance>-run-prep-<owner>-…`).
const PREPARED_PREFIX: &str = "prep-";

impl Runs {
    pub fn new(settings: Arc<Settings>, store: Store, engine: Engine, metrics: Arc<Metrics>) -> Arc<Runs> {
        let r = settings.runs.clone();
        let quota = Quota::per_minute(NonZeroU32::new(r.rate_per_min).expect("validated"))
            .allow_burst(NonZeroU32::new(r.rate_burst).expect("validated"));
        Arc::new_cyclic(|me| Runs {
            prepared: std::sync::Mutex::new(Prepared::new(r.prepared, PREPARED_SHAPES, PREPARED_TTL)),
            me: me.clone(),
            inflight: Default::default(),
            pending: Default::default(),
            preparing: tokio_util::task::TaskTracker::new(),
            slots: Arc::new(Semaphore::new(r.max_concurrent)),
            queued: AtomicUsize::new(0),
            cgroups: Layout::detect(),
            owner: uuid::Uuid::new_v4().to_string(),
            rate: RateLimiter::keyed(quota),
            stopping: tokio_util::sync::CancellationToken::new(),
            settings,
            store,
            engine,
            metrics,
        })
    }

    /// Keeps the runs honest, at start (before the API answers) and every `MAINTAIN_PERIOD`:
    /// this process renews the leases of its runs; runs whose process stopped answering are
    /// finished as `internal_error`; run sandboxes no unfinished run owns are removed; finished
    /// runs past `RUNNER_RUN_RETENTION_SECS` are deleted.
    pub async fn maintain(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let ids: Vec<String> = self.inflight.lock().expect("lock").keys().cloned().collect();
        self.store.renew_run_leases(&self.owner, &ids, now + LEASE.as_millis() as i64).await?;
        for r in self.store.abandoned_runs(now).await? {
            let outcome = RunOutcome {
                compile: None,
                tests: vec![StepResult::internal("the runner running it stopped before it finished".into())],
                limits: None,
                duration_ms: 0,
            };
            let target = Target { runtime: r.runtime.clone(), exercise: r.exercise.clone(), ..Target::none() };
            if self.finish(&r.id, &target, Verdict::InternalError, &outcome).await? {
                tracing::warn!(run = %r.id, "a run whose runner stopped is finished as internal_error");
            }
        }
        let expired = self.prepared.lock().expect("lock").expired(Instant::now());
        for container in expired {
            self.remove_later(container);
        }
        let orphan_after = self.prepared_orphan_age().as_secs() as i64;
        let now_secs = now / 1000;
        for c in self.engine.list_run_containers().await? {
            let keep = if c.suffix.starts_with(PREPARED_PREFIX) {
                // Kept while this process holds it, or while a run (of any process sharing the
                // engine) could still be using it; a killed process's go after that.
                self.prepared.lock().expect("lock").holds(&c.id) || now_secs - c.created < orphan_after
            } else {
                match self.store.run(&c.suffix).await {
                    Ok(Some(r)) => r.state != RunState::Finished,
                    Ok(None) => false,
                    // Not known now: kept, looked at again next round.
                    Err(_) => true,
                }
            };
            if !keep {
                self.remove_later(c.id);
            }
        }
        let cutoff = now - self.settings.runs.retention.as_millis() as i64;
        let deleted = self.store.delete_runs_finished_before(cutoff).await?;
        if deleted > 0 {
            tracing::info!(deleted, "runs past retention deleted");
        }
        Ok(())
    }

    /// What this process is doing now: runs in flight (waiting included), waiting for a slot,
    /// slots, prepared sandboxes ready.
    pub fn now(&self) -> RunsNow {
        RunsNow {
            in_flight: self.inflight.lock().expect("lock").len(),
            queued: self.queued.load(Ordering::SeqCst),
            slots: self.settings.runs.max_concurrent,
            prepared: self.prepared.lock().expect("lock").ready_count(),
        }
    }

    /// At shutdown: the runs in flight stop, and this process stops answering for them at once,
    /// so the next runner to look finishes them (`internal_error`) and removes their sandboxes.
    pub async fn release(&self) -> anyhow::Result<()> {
        self.stopping.cancel();
        self.preparing.close();
        if tokio::time::timeout(Duration::from_secs(30), self.preparing.wait()).await.is_err() {
            tracing::warn!("run sandboxes were still being prepared at shutdown; maintain removes them later");
        }
        let mut sandboxes = self.prepared.lock().expect("lock").drain();
        sandboxes.extend(self.inflight.lock().expect("lock").values().flatten().cloned());
        for c in sandboxes {
            let _ = self.engine.remove_container(&c).await;
        }
        self.store.give_up_run_leases(&self.owner).await?;
        Ok(())
    }

    /// The name part of this process's prepared sandboxes.
    fn prepared_prefix(&self) -> String {
        format!("{PREPARED_PREFIX}{}-", &self.owner[..8])
    }

    /// How old a prepared sandbox can be while a run may still use it: unclaimed for at most
    /// `PREPARED_TTL`, then the longest run the caps allow.
    fn prepared_orphan_age(&self) -> Duration {
        let r = &self.settings.runs;
        let longest = Duration::from_millis(r.caps.wall_ms) * (r.max_tests as u32 + 1);
        PREPARED_TTL + longest + Duration::from_secs(60)
    }

    /// Starts making the prepared sandboxes `shape` is missing, each in a task of its own.
    fn refill(&self, shape: &Shape) {
        let n = self.prepared.lock().expect("lock").reserve(shape);
        let Some(runs) = self.me.upgrade() else { return };
        for _ in 0..n {
            let (runs, shape) = (runs.clone(), shape.clone());
            let tracker = runs.preparing.clone();
            tracker.spawn(async move {
                let name = format!("{}{}", runs.prepared_prefix(), &uuid::Uuid::new_v4().simple().to_string()[..12]);
                let made = runs.make_container(&name, &shape).await;
                let ready = match made {
                    Ok((container, files)) if !runs.stopping.is_cancelled() => {
                        Some(Ready { container, files, made: Instant::now() })
                    }
                    Ok((container, _)) => {
                        // Made while the runner stops: removed now, before the process ends.
                        let _ = runs.engine.remove_container(&container).await;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(image = %shape.image, error = %format!("{e:#}"), "could not prepare a run sandbox");
                        None
                    }
                };
                runs.prepared.lock().expect("lock").made(&shape, ready);
            });
        }
    }

    /// Creates and starts a run sandbox of `shape` named `…-run-<name>`: nothing of a submission
    /// in it yet.
    async fn make_container(&self, name: &str, shape: &Shape) -> anyhow::Result<(String, Option<Files>)> {
        // Defence in depth, as for sessions: an image that declares VOLUMEs (retagged after its
        // runtime was registered) gets a sized tmpfs over each instead of a volume on the disk.
        let writable = match self.engine.image(&shape.image).await? {
            Some(info) => info.volumes.into_iter().filter(|v| v != RUN_DIR).collect(),
            None => anyhow::bail!("the image {:?} is not on the engine any more", shape.image),
        };
        let spec = SandboxSpec {
            image: shape.image.clone(),
            // The holder's own processes (its init and `sleep`) and the runner's one exec at a
            // time come on top of what the submission may use.
            limits: Limits {
                memory_mb: shape.memory_mb,
                cpus: 1.0,
                pids: shape.pids + HOLDER_PIDS,
                // tmpfs pages are the sandbox's memory: sized so that filling them all (three
                // of `tmpfs_mb` and the run's directory) stays below the memory limit.
                tmpfs_mb: (shape.memory_mb / 8).clamp(1, 16),
                workspace_mb: (shape.memory_mb / 4).clamp(4, 64),
            },
            network: None,
            workdir: RUN_DIR.to_string(),
            writable,
            check: Default::default(),
            ide: false,
        };
        let owner =
            SandboxOwner { instance: self.engine.instance(), purpose: Purpose::Run(name), learner: "", exercise: "" };
        let container = self
            .engine
            .create_sandbox(&spec, &owner, WorkspaceMount::Tmpfs, self.settings.runtime, HOLDER_USER)
            .await?;
        if let Err(e) = self.engine.start_container(&container).await {
            self.remove_later(container);
            return Err(e);
        }
        let files = self.cgroups.locate(&container);
        Ok((container, files))
    }

    /// Removes a run sandbox without waiting for it (the result does not depend on it); one that
    /// cannot be removed now goes at the next `maintain`, or when its `sleep` ends.
    fn remove_later(&self, container: String) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.remove_container(&container).await {
                tracing::warn!(%container, error = %format!("{e:#}"), "could not remove a run's sandbox; maintain removes it");
            }
        });
    }

    /// Validates, takes a slot or a place in the queue (or refuses past the queue's cap), records
    /// the run and starts it in a task of its own: a caller that goes away does not abandon it.
    pub async fn submit(self: &Arc<Self>, req: RunRequest, token: &str) -> Result<Submitted, RunError> {
        let limits = effective_limits(&req.limits, &self.settings.runs.caps).map_err(RunError::Invalid)?;
        validate(&req, self.settings.runs.max_files_bytes, self.settings.runs.max_tests).map_err(RunError::Invalid)?;
        let learner = match &req.learner {
            Some(l) => {
                Some(LearnerId::parse(l).map_err(|e| RunError::Invalid(format!("learner: {e}")))?.as_str().to_string())
            }
            None => None,
        };
        let target = self.target(&req).await?;
        if let Err(not_until) = self.rate.check_key(&token.to_string()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(RunError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64));
        }
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
                if waiting >= self.settings.runs.max_queued {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(RunError::QueueFull(waiting));
                }
                self.metrics.runs_queued.set((waiting + 1) as i64);
                None
            }
        };
        let queue_place = permit.is_none().then(|| QueueGuard(self.clone()));
        let now = now_ms();
        let interactive = req.interactive.unwrap_or(false);
        let wait = !interactive && req.wait.unwrap_or(true);
        let record = RunRecord {
            id: uuid::Uuid::new_v4().to_string(),
            runtime: target.runtime.clone(),
            exercise: target.exercise.clone(),
            learner,
            state: RunState::Queued,
            status: None,
            result: None,
            notify: req.wait == Some(false),
            owner: self.owner.clone(),
            lease_until: now + LEASE.as_millis() as i64,
            created_at: now,
            started_at: None,
            finished_at: None,
        };
        self.store.insert_run(&record).await?;
        let mut view = RunView::of(&record)?;
        let runs = self.clone();
        let id = record.id.clone();
        self.inflight.lock().expect("lock").insert(id.clone(), None);
        let attach = interactive.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.pending.lock().expect("lock").insert(id.clone(), tx);
            view.stream_url = Some(format!("/v1/runs/{id}/stream"));
            rx
        });
        let task = tokio::spawn(async move {
            let _inflight = InFlight(runs.clone(), id.clone());
            let work = async {
                let live = match attach {
                    None => None,
                    Some(rx) => {
                        let attached = tokio::time::timeout(ATTACH_WITHIN, rx).await;
                        runs.pending.lock().expect("lock").remove(&id);
                        match attached {
                            Ok(Ok(live)) => Some(live),
                            _ => anyhow::bail!(
                                "nobody attached to the run's stream within {} s",
                                ATTACH_WITHIN.as_secs()
                            ),
                        }
                    }
                };
                let _permit = match permit {
                    Some(p) => p,
                    None => {
                        let p = runs.slots.clone().acquire_owned().await.map_err(anyhow::Error::from)?;
                        drop(queue_place);
                        p
                    }
                };
                runs.execute(&id, &target, &req, limits, live).await
            };
            let work = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(work));
            let result = tokio::select! {
                r = work => r.unwrap_or_else(|_| Err(anyhow::anyhow!("the run's task panicked"))),
                _ = runs.stopping.cancelled() => return Err(ShuttingDown.into()),
            };
            if let Err(e) = &result {
                // Whatever went wrong, the run is finished (and told), not left running.
                let outcome = RunOutcome {
                    compile: None,
                    tests: vec![StepResult::internal(format!("{e:#}"))],
                    limits: Some(limits),
                    duration_ms: 0,
                };
                if let Err(e2) = runs.finish(&id, &target, Verdict::InternalError, &outcome).await {
                    tracing::error!(run = %id, error = %format!("{e2:#}"), "could not finish a failed run; maintain finishes it when its lease passes");
                }
            }
            result
        });
        Ok(Submitted { view, done: wait.then_some(task) })
    }

    /// The image and commands of a request: its runtime's, or its exercise's image with the
    /// commands it gives.
    async fn target(&self, req: &RunRequest) -> Result<Target, RunError> {
        match (&req.runtime, &req.exercise) {
            (Some(name), None) => {
                if req.run.is_some() || req.compile.is_some() {
                    return Err(RunError::Invalid(
                        "run and compile come from the runtime; give them only with exercise".into(),
                    ));
                }
                let rt = self.store.runtime(name).await?.ok_or_else(|| RunError::UnknownRuntime(name.clone()))?;
                Ok(Target { runtime: Some(rt.name), exercise: None, image: rt.image, run: rt.run, compile: rt.compile })
            }
            (None, Some(slug)) => {
                let slug = Slug::parse(slug).map_err(|e| RunError::Invalid(format!("exercise: {e}")))?;
                let run = req.run.clone().ok_or_else(|| RunError::Invalid("a run of an exercise needs run".into()))?;
                check_argv("run", &run).map_err(RunError::Invalid)?;
                if let Some(c) = &req.compile {
                    check_argv("compile", c).map_err(RunError::Invalid)?;
                }
                let ex = self
                    .store
                    .exercise(slug.as_str())
                    .await?
                    .ok_or_else(|| RunError::UnknownExercise(slug.as_str().to_string()))?;
                Ok(Target {
                    runtime: None,
                    exercise: Some(ex.slug),
                    image: ex.image,
                    run,
                    compile: req.compile.clone(),
                })
            }
            _ => Err(RunError::Invalid("give either runtime or exercise".into())),
        }
    }

    /// Runs a recorded run that has its slot, writes its result, and answers it as stored.
    async fn execute(
        &self,
        id: &str,
        target: &Target,
        req: &RunRequest,
        limits: RunLimits,
        live: Option<Live>,
    ) -> anyhow::Result<RunView> {
        if !self.store.start_run(id, now_ms()).await? {
            // Finished by another runner that found its lease passed.
            let r = self.store.run(id).await?.ok_or_else(|| anyhow::anyhow!("run {id} vanished"))?;
            return RunView::of(&r);
        }
        let started = Instant::now();
        let events = live.as_ref().map(|l| l.events.clone());
        if let Some(events) = &events {
            let _ = events.send(Event::Started { id: id.to_string() });
        }
        let (compile, tests) = match self.steps(id, target, req, limits, live).await {
            Ok(steps) => steps,
            Err(e) => {
                tracing::warn!(run = %id, runtime = %target.label(), error = %format!("{e:#}"), "a run failed inside the runner");
                (None, vec![StepResult::internal(format!("{e:#}"))])
            }
        };
        let status = overall(compile.as_ref(), &tests);
        let label = target.label();
        self.metrics.runs.with_label_values(&[&label, status.as_str()]).inc();
        self.metrics.run_seconds.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
        let outcome =
            RunOutcome { compile, tests, limits: Some(limits), duration_ms: started.elapsed().as_millis() as u64 };
        let outcome = outcome.within(KEPT_OUTPUT_STEPS * self.settings.runs.caps.output_bytes);
        self.finish(id, target, status, &outcome).await?;
        let r = self.store.run(id).await?.ok_or_else(|| anyhow::anyhow!("run {id} vanished"))?;
        let view = RunView::of(&r)?;
        if let Some(events) = events {
            let _ = events.send(Event::Done(Box::new(view.clone())));
        }
        Ok(view)
    }

    /// Attaches a WebSocket's ends to an interactive run waiting for them; None when no run of
    /// this process waits under that id (never made, attached already, or too late).
    pub fn attach(&self, id: &str) -> Option<LiveEnds> {
        let tx = self.pending.lock().expect("lock").remove(id)?;
        let (control_tx, control) = tokio::sync::mpsc::channel(64);
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Live { control, events }).ok()?;
        Some(LiveEnds { control: control_tx, events: events_rx })
    }

    /// A new sandbox for the rest of a run, its files written and compiled again.
    async fn renew<'a>(
        &'a self,
        id: &str,
        target: &Target,
        req: &RunRequest,
        limits: RunLimits,
    ) -> anyhow::Result<Sandbox<'a>> {
        let mut sandbox = Sandbox::make(self, id, target, req, limits).await?;
        if let Some(argv) = &target.compile {
            let step = sandbox.compile(argv.clone(), req.compare).await;
            if step.status != Verdict::Accepted {
                sandbox.remove();
                anyhow::bail!("compiling again failed: {}", step.stderr);
            }
            sandbox.kill_all().await;
        }
        Ok(sandbox)
    }

    /// Writes a run's result (and `run.finished` for a run that asked); false when it was
    /// finished already.
    async fn finish(&self, id: &str, target: &Target, status: Verdict, outcome: &RunOutcome) -> anyhow::Result<bool> {
        let event = serde_json::json!({
            "run": id,
            "status": status,
            "runtime": target.runtime,
            "exercise": target.exercise,
            "url": format!("/v1/runs/{id}"),
        });
        let result = serde_json::to_string(outcome)?;
        self.store.finish_run(id, now_ms(), &RunFinish { status: status.as_str(), result: &result, event }).await
    }

    async fn steps(
        &self,
        id: &str,
        target: &Target,
        req: &RunRequest,
        limits: RunLimits,
        mut live: Option<Live>,
    ) -> anyhow::Result<(Option<StepResult>, Vec<StepResult>)> {
        let cases: Vec<TestCase> = if req.tests.is_empty() {
            vec![TestCase { stdin: req.stdin.clone(), args: req.args.clone(), expected_output: None }]
        } else {
            req.tests.clone()
        };
        let mut sandbox = Sandbox::make(self, id, target, req, limits).await?;
        let compile = match &target.compile {
            Some(argv) => {
                let step = sandbox.compile(argv.clone(), req.compare).await;
                let failed = step.status != Verdict::Accepted;
                let step = if failed && step.status != Verdict::InternalError {
                    StepResult { status: Verdict::CompileError, ..step }
                } else {
                    step
                };
                if let Some(l) = &live {
                    let _ = l.events.send(Event::Compile(Box::new(step.clone())));
                }
                if failed {
                    sandbox.remove();
                    return Ok((Some(step), vec![]));
                }
                sandbox.kill_all().await;
                Some(step)
            }
            None => None,
        };
        let mut results = Vec::with_capacity(cases.len());
        let last = cases.len().saturating_sub(1);
        for (i, case) in cases.into_iter().enumerate() {
            if sandbox.dead {
                // The last test case took its sandbox down (a fork bomb the runner could not
                // end, gVisor's kernel OOM-killed): the next one gets a new sandbox, compiled again.
                sandbox = match self.renew(id, target, req, limits).await {
                    Ok(s) => s,
                    Err(e) => {
                        results.push(StepResult::internal(format!("a new sandbox for the next test case: {e:#}")));
                        continue;
                    }
                };
            }
            let mut argv = target.run.clone();
            argv.extend(case.args.iter().cloned());
            let step = sandbox
                .step(argv, case.stdin.clone(), case.expected_output.as_deref(), req.compare, live.as_mut())
                .await;
            results.push(step);
            if i < last {
                // Nothing a test case left running reaches the next one.
                sandbox.kill_all().await;
            }
        }
        sandbox.remove();
        Ok((compile, results))
    }
}

/// `maintain` every `MAINTAIN_PERIOD` until shutdown (the caller ran it once at start).
pub async fn run(runs: Arc<Runs>, cancel: tokio_util::sync::CancellationToken) {
    crate::rounds::every(MAINTAIN_PERIOD, crate::rounds::First::AfterPeriod, cancel, || async {
        if let Err(e) = runs.maintain().await {
            tracing::warn!(error = %format!("{e:#}"), "keeping the runs failed; trying again next round");
        }
    })
    .await;
}

impl Target {
    fn none() -> Target {
        Target { runtime: None, exercise: None, image: String::new(), run: vec![], compile: None }
    }
}

/// Most bytes an interactive run's stdin takes.
const MAX_LIVE_STDIN: usize = 1 << 20;
/// An interactive run waits this long for its stream to attach.
pub const ATTACH_WITHIN: Duration = Duration::from_secs(30);

/// What the client of an interactive run's stream sends.
#[derive(Debug)]
pub enum Control {
    Stdin(Vec<u8>),
    /// End of input.
    CloseStdin,
    Signal(Signal),
}

/// Signals an interactive run's client may send.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Interrupt,
    Terminate,
    Kill,
}

/// What an interactive run's stream is told, in order.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// It has its slot and sandbox: input is read from now on.
    Started {
        id: String,
    },
    /// The compile step's result (before the program runs).
    Compile(Box<StepResult>),
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The run, finished; the stream closes after it.
    #[serde(rename = "exit")]
    Done(Box<RunView>),
}

/// The run's end of its stream.
pub struct Live {
    control: tokio::sync::mpsc::Receiver<Control>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// The stream's end of an interactive run (the WebSocket handler's).
pub struct LiveEnds {
    pub control: tokio::sync::mpsc::Sender<Control>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

/// A step's output as it came: from `exec_capture`, or gathered while it streamed.
enum Raw {
    Captured(crate::engine::CapturedExec),
    Streamed(Option<i64>, bool),
}

/// An interactive step's output: kept up to the cap (per stream) and told as it comes.
struct Capture {
    cap: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
    stderr_truncated: bool,
    events: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
}

impl Capture {
    fn new(cap: usize, events: Option<tokio::sync::mpsc::UnboundedSender<Event>>) -> Capture {
        Capture { cap, stdout: vec![], stderr: vec![], truncated: false, stderr_truncated: false, events }
    }

    /// Keeps and tells a chunk; false past the cap (the step is then ended: `output_limit`).
    fn push(&mut self, is_stderr: bool, bytes: &[u8]) -> bool {
        let buf = if is_stderr { &mut self.stderr } else { &mut self.stdout };
        let room = self.cap.saturating_sub(buf.len());
        let kept = &bytes[..bytes.len().min(room)];
        buf.extend_from_slice(kept);
        if let (Some(events), false) = (&self.events, kept.is_empty()) {
            let data = String::from_utf8_lossy(kept).into_owned();
            let _ = events.send(if is_stderr { Event::Stderr { data } } else { Event::Stdout { data } });
        }
        if kept.len() < bytes.len() {
            if is_stderr {
                self.stderr_truncated = true;
            } else {
                self.truncated = true;
            }
            return false;
        }
        true
    }

    fn into_captured(self, exit_code: Option<i64>, timed_out: bool) -> crate::engine::CapturedExec {
        crate::engine::CapturedExec {
            exit_code: exit_code.unwrap_or(-1),
            stdout: self.stdout,
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            truncated: self.truncated,
            stderr_truncated: self.stderr_truncated,
            timed_out,
        }
    }
}

/// A run this process has in flight, until its task ends (however it ends).
struct InFlight(Arc<Runs>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.lock().expect("lock").remove(&self.1);
    }
}

/// `Runs::now`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunsNow {
    pub in_flight: usize,
    pub queued: usize,
    pub slots: usize,
    pub prepared: usize,
}

/// A place in the run queue, given back when the run has its slot (or is refused).
struct QueueGuard(Arc<Runs>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let left = self.0.queued.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.metrics.runs_queued.set(left as i64);
    }
}

/// Most words of a command, and bytes of each.
const MAX_ARGV: usize = 32;
const MAX_ARG_BYTES: usize = 1024;

/// Arguments a request adds to the command: at most `MAX_ARGV` words of `MAX_ARG_BYTES`, no NUL.
fn check_args(args: &[String]) -> Result<(), String> {
    if args.len() > MAX_ARGV || args.iter().any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
        return Err(format!("at most {MAX_ARGV} words of {MAX_ARG_BYTES} bytes, without NUL"));
    }
    Ok(())
}

/// A command (a runtime's, or a run's of an exercise): a program and at most `MAX_ARGV` words.
pub fn check_argv(what: &str, argv: &[String]) -> Result<(), String> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(format!("{what} needs a command"));
    }
    if argv.len() > MAX_ARGV || argv.iter().any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
        return Err(format!("{what}: at most {MAX_ARGV} words of {MAX_ARG_BYTES} bytes, without NUL"));
    }
    Ok(())
}
/// One run's container.
struct Sandbox<'a> {
    runs: &'a Runs,
    container: String,
    limits: RunLimits,
    files: Option<crate::usage::cgroup::Files>,
    /// It ended under the run (a kill that could not run; gVisor's whole sandbox OOM-killed):
    /// the next step needs a new one.
    dead: bool,
    /// The submission's files as a tar, not written yet: the next step writes them in its own
    /// exec when it can (`with_files_written`), else writes them first.
    unwritten: Option<Vec<u8>>,
}

impl<'a> Sandbox<'a> {
    /// A prepared sandbox of the run's shape if one is ready, else one made now; the files
    /// handed to it (written by its first step).
    async fn make(
        runs: &'a Runs,
        id: &str,
        target: &Target,
        req: &RunRequest,
        limits: RunLimits,
    ) -> anyhow::Result<Sandbox<'a>> {
        let shape = Shape { image: target.image.clone(), memory_mb: limits.memory_mb, pids: limits.pids };
        let ready = runs.prepared.lock().expect("lock").take(&shape);
        runs.refill(&shape);
        let mark = |container: &str| {
            if let Some(slot) = runs.inflight.lock().expect("lock").get_mut(id) {
                *slot = Some(container.to_string());
            }
        };
        if let Some(ready) = ready.filter(|r| r.files.is_some()) {
            mark(&ready.container);
            let mut sandbox =
                Sandbox { runs, container: ready.container, limits, files: ready.files, dead: false, unwritten: None };
            match sandbox.take_files(req) {
                Ok(()) => {
                    runs.metrics.run_sandboxes.with_label_values(&["prepared"]).inc();
                    return Ok(sandbox);
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %format!("{e:#}"), "a prepared run sandbox failed; making a new one");
                    sandbox.remove();
                }
            }
        }
        runs.metrics.run_sandboxes.with_label_values(&["made"]).inc();
        let (container, files) = runs.make_container(id, &shape).await?;
        mark(&container);
        let mut sandbox = Sandbox { runs, container, limits, files, dead: false, unwritten: None };
        if sandbox.files.is_none() {
            // Without its cgroup the runner cannot see CPU time or OOM kills: no verdict it
            // could give would be true.
            sandbox.remove();
            anyhow::bail!("the run sandbox's cgroup was not found under /sys/fs/cgroup; its limits cannot be measured");
        }
        if let Err(e) = sandbox.take_files(req) {
            sandbox.remove();
            return Err(e);
        }
        Ok(sandbox)
    }

    /// Keeps the submission's files for the first step to write, once the sandbox is seen alive
    /// (its cgroup is there: a prepared one may have ended since it was made).
    fn take_files(&mut self, req: &RunRequest) -> anyhow::Result<()> {
        anyhow::ensure!(self.reading().is_some(), "the sandbox is not running any more");
        if !req.files.is_empty() {
            self.unwritten = Some(files_tar(&req.files)?);
        }
        Ok(())
    }

    /// Writes the submission's files (a tar) in an exec of their own.
    async fn write_files(&mut self, tar: Vec<u8>) -> anyhow::Result<()> {
        let mut write = ExecRequest::new(UNTAR.map(String::from).to_vec(), &self.runs.settings.sandbox_user);
        write.stdin = Some(tar);
        write.deadline = Duration::from_secs(10);
        let out = self.runs.engine.exec(&self.container, write).await?;
        anyhow::ensure!(out.exit_code == 0, "writing the files failed: {}", out.output.trim());
        Ok(())
    }

    /// Reads the cgroup: CPU time in ns and OOM kills so far.
    fn reading(&self) -> Option<(u64, u64)> {
        let mut buf = String::new();
        let r = self.files.as_ref()?.read(&mut buf).ok()?;
        Some((r.cpu_usage_ns, r.oom_kills.unwrap_or(0)))
    }

    /// Runs `argv` with `stdin` under the step limits, killing it at the CPU or wall limit.
    /// Runs `argv` under the step limits, killing it at the CPU or wall limit: with `stdin` as
    /// its input, or, `live`, with its stdin, output and signals over the run's stream.
    async fn step(
        &mut self,
        argv: Vec<String>,
        stdin: String,
        expected: Option<&str>,
        mode: Compare,
        live: Option<&mut Live>,
    ) -> StepResult {
        let engine = self.runs.engine.clone();
        let user = self.runs.settings.sandbox_user.clone();
        let limits = self.limits;
        let (mut argv, mut stdin) = (argv, stdin.into_bytes());
        let writes_files = match self.unwritten.take() {
            // No input of its own: the files come on its stdin, one exec where there were two.
            Some(tar) if live.is_none() && stdin.is_empty() => {
                argv = with_files_written(argv);
                stdin = tar;
                true
            }
            Some(tar) => match self.write_files(tar).await {
                Ok(()) => false,
                Err(e) => return StepResult::internal(format!("{e:#}")),
            },
            None => false,
        };
        if let Some(f) = &self.files {
            f.reset_peak();
        }
        let before = self.reading();
        let mut oom_seen = before.map_or(0, |b| b.1);
        let mut died = false;
        let mut req = ExecRequest::new(argv, &user);
        req.workdir = Some(RUN_DIR.into());
        req.max_output = limits.output_bytes;
        req.max_stderr = limits.output_bytes;
        req.stop_at_stderr_cap = true;
        // The runner ends the step at the wall limit; this is only the reader's own backstop.
        req.deadline = Duration::from_millis(limits.wall_ms) + Duration::from_secs(5);
        let (mut control, events) = match live {
            Some(l) => (Some(&mut l.control), Some(l.events.clone())),
            None => (None, None),
        };
        let (stdin_tx, stdin_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let mut stdin_tx = Some(stdin_tx);
        let mut stdin_bytes = 0usize;
        if control.is_none() {
            req.stdin = Some(stdin);
        }
        let mut capture = Capture::new(limits.output_bytes, events);
        let started = Instant::now();
        let wall = Duration::from_millis(limits.wall_ms);
        let container = self.container.clone();
        let streamed = control.is_some();
        let mut killed: Option<Verdict> = None;
        let mut ticker = tokio::time::interval(CPU_POLL);
        // In a block of its own: the exec (which holds `capture`) is gone when it ends.
        let raw = {
            let exec = async {
                if streamed {
                    let (input_tx, input) = tokio::sync::mpsc::channel(16);
                    // Stdin chunks in order, as the process reads them.
                    let mut rx = stdin_rx;
                    let feeder = tokio::spawn(async move {
                        while let Some(chunk) = rx.recv().await {
                            if input_tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut sink = |is_stderr: bool, bytes: &[u8]| capture.push(is_stderr, bytes);
                    let r = engine.exec_interactive(&container, req, input, &mut sink).await;
                    feeder.abort();
                    r.map(|(code, timed_out)| Raw::Streamed(code, timed_out))
                } else {
                    engine.exec_capture(&container, req).await.map(Raw::Captured)
                }
            };
            tokio::pin!(exec);
            loop {
                tokio::select! {
                    out = &mut exec => break out,
                    _ = ticker.tick(), if killed.is_none() && !died => {
                        let now = self.reading();
                        match now {
                            Some((_, oom)) => oom_seen = oom_seen.max(oom),
                            // Its cgroup is gone: the whole sandbox ended (under gVisor an OOM
                            // kill takes the sandbox's kernel with it). The exec may never say.
                            None if before.is_some() => {
                                died = true;
                                break Err(anyhow::anyhow!("the run's sandbox ended under it"));
                            }
                            None => {}
                        }
                        let cpu_ns = match (before, now) {
                            (Some((b, _)), Some((now, _))) => now.saturating_sub(b),
                            _ => 0,
                        };
                        let over = if cpu_ns > limits.time_ms.saturating_mul(1_000_000) {
                            Some(Verdict::TimeLimit)
                        } else if started.elapsed() > wall {
                            Some(Verdict::WallTimeLimit)
                        } else {
                            None
                        };
                        if let Some(v) = over {
                            killed = Some(v);
                            self.kill_all().await;
                        }
                    }
                    msg = async { control.as_mut().expect("guarded").recv().await }, if control.is_some() => match msg {
                        Some(Control::Stdin(bytes)) => {
                            stdin_bytes += bytes.len();
                            if stdin_bytes > MAX_LIVE_STDIN {
                                // More input than a program of a lesson reads: the stream is cut.
                                stdin_tx = None;
                            } else if let Some(tx) = &stdin_tx {
                                let _ = tx.send(bytes);
                            }
                        }
                        Some(Control::CloseStdin) => stdin_tx = None,
                        Some(Control::Signal(sig)) => self.signal_all(sig).await,
                        None => {
                            // The stream's client went away: the run ends.
                            control = None;
                            self.kill_all().await;
                        }
                    },
                }
            }
        };
        drop(stdin_tx);
        let out = match raw {
            Ok(Raw::Captured(c)) => Ok(c),
            Ok(Raw::Streamed(code, timed_out)) => Ok(capture.into_captured(code, timed_out)),
            Err(e) => Err(e),
        };
        let wall_ms = started.elapsed().as_millis() as u64;
        let after = self.reading();
        let memory_kb = self.files.as_ref().and_then(|f| f.peak_bytes(&mut String::new())).map(|b| b / 1024);
        let (time_ms, oom) = match (before, after) {
            (Some((c0, o0)), Some((c1, o1))) => ((c1.saturating_sub(c0)) / 1_000_000, o1.max(oom_seen) > o0),
            (Some((_, o0)), None) => (0, oom_seen > o0),
            _ => (0, false),
        };
        if died {
            self.dead = true;
            // The cgroup's OOM record, read while it was there, says why.
            let why = if oom { "the kernel killed the sandbox at its memory limit" } else { "the sandbox ended" };
            let status = if oom { Verdict::MemoryLimit } else { Verdict::InternalError };
            return StepResult { status, wall_ms, ..StepResult::internal(why.into()) };
        }
        let out = match out {
            Ok(o) => o,
            Err(e) => return StepResult::internal(format!("{e:#}")),
        };
        if out.truncated || out.stderr_truncated {
            // It was abandoned at the cap and may still be writing: end it.
            self.kill_all().await;
        }
        let exit_code = (killed.is_none() && !out.truncated && !out.timed_out).then_some(out.exit_code);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let observed = Observed {
            killed,
            oom,
            output_cut: out.truncated || out.stderr_truncated,
            timed_out: out.timed_out,
            exit_code,
        };
        // Docker reports an exec it could not start (no such program, no room for one more
        // process) as text on stdout with exit 126 or 127: the runner's failure, not the code's.
        if matches!(exit_code, Some(126 | 127)) && stdout.starts_with("OCI runtime exec failed") {
            return StepResult { time_ms, wall_ms, memory_kb, ..StepResult::internal(stdout) };
        }
        // The same, told by the shell that wrote the files first: the program never ran.
        if writes_files && matches!(exit_code, Some(125 | 127)) && out.stderr.contains(PRELUDE_FAILED) {
            return StepResult { time_ms, wall_ms, memory_kb, ..StepResult::internal(out.stderr) };
        }
        let status = verdict(&observed, expected.map(|e| compare(mode, &stdout, e)));
        StepResult {
            status,
            stdout,
            stderr: out.stderr,
            truncated: out.truncated || out.stderr_truncated,
            // 128 + a signal's number (1-31); an exit status above that is the code's own.
            signal: exit_code.filter(|c| (129..=159).contains(c)).map(|c| c - 128),
            exit_code,
            time_ms,
            wall_ms,
            memory_kb,
        }
    }

    /// The compile step: under the operator's CPU and wall caps rather than the test cases'
    /// limits (a compiler may need more than the program it makes); memory and pids are the
    /// container's, output the run's.
    async fn compile(&mut self, argv: Vec<String>, mode: Compare) -> StepResult {
        let run_limits = self.limits;
        let caps = self.runs.settings.runs.caps;
        self.limits = RunLimits {
            time_ms: caps.time_ms.max(run_limits.time_ms),
            wall_ms: caps.wall_ms.max(run_limits.wall_ms),
            ..run_limits
        };
        let step = self.step(argv, String::new(), None, mode, None).await;
        self.limits = run_limits;
        step
    }

    /// An interactive run's signal, to every process of the submission's user.
    async fn signal_all(&mut self, sig: Signal) {
        let name = match sig {
            Signal::Interrupt => "INT",
            Signal::Terminate => "TERM",
            Signal::Kill => return self.kill_all().await,
        };
        let user = &self.runs.settings.sandbox_user;
        let script = format!("kill -{name} -1 2>/dev/null; exit 0");
        let mut req = ExecRequest::new(vec!["sh".into(), "-c".into(), script], user);
        req.deadline = Duration::from_secs(5);
        if let Err(e) = self.runs.engine.exec(&self.container, req).await {
            tracing::warn!(container = %self.container, error = %format!("{e:#}"), "could not deliver a run's signal");
        }
    }

    /// Every process of the submission's user ends; the container's own (`nobody`'s) stays.
    async fn kill_all(&mut self) {
        let user = self.runs.settings.sandbox_user.clone();
        let user = &user;
        let mut req = ExecRequest::new(vec!["sh".into(), "-c".into(), "kill -9 -1 2>/dev/null; exit 0".into()], user);
        req.deadline = Duration::from_secs(5);
        let failed = match self.runs.engine.exec(&self.container, req).await {
            // A kill the submission stopped or killed (it runs as the same user), or that could
            // not start (a fork bomb at the pids limit leaves no room for one more process).
            Ok(out) if out.exit_code != 0 || out.timed_out => format!("exit {}: {}", out.exit_code, out.output.trim()),
            Ok(_) => return,
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(container = %self.container, error = %failed, "could not end a run's processes; removing its sandbox");
        let _ = self.runs.engine.remove_container(&self.container).await;
        self.dead = true;
    }

    fn remove(self) {
        self.runs.remove_later(self.container);
    }
}

impl StepResult {
    fn internal(message: String) -> StepResult {
        StepResult {
            status: Verdict::InternalError,
            stdout: String::new(),
            stderr: message,
            truncated: false,
            exit_code: None,
            signal: None,
            time_ms: 0,
            wall_ms: 0,
            memory_kb: None,
        }
    }
}

/// What the shell of `with_files_written` says (and exits 125, or 127 for a program it cannot
/// find) when the step's program never ran: the runner's failure, not the code's.
const PRELUDE_FAILED: &str = "exercise-runner: the step could not start";

/// Unpacks the submission's files (a tar on stdin) into the run's directory: in an exec of its
/// own, or at the start of `with_files_written`.
const UNTAR: [&str; 5] = ["tar", "-x", "--no-same-owner", "-C", RUN_DIR];

/// `argv` run by a shell that first writes the submission's files from its stdin (a tar) into
/// the run's directory, then runs `argv` with an empty stdin (`/dev/null`: at its end, as an
/// exec with nothing to read). `argv` stays an argument vector (`"$@"`), never shell text.
fn with_files_written(argv: Vec<String>) -> Vec<String> {
    let script = format!(
        "{} || {{ echo \"$0: writing the files failed\" >&2; exit 125; }}; \
         command -v \"$1\" >/dev/null || {{ echo \"$0: $1 not found\" >&2; exit 127; }}; \
         exec \"$@\" </dev/null",
        UNTAR.join(" ")
    );
    ["sh", "-c", &script, PRELUDE_FAILED].into_iter().map(String::from).chain(argv).collect()
}

/// The run's status from its steps.
fn overall(compile: Option<&StepResult>, tests: &[StepResult]) -> Verdict {
    if let Some(c) = compile.filter(|c| c.status != Verdict::Accepted) {
        return c.status;
    }
    tests.iter().map(|t| t.status).find(|s| *s != Verdict::Accepted).unwrap_or(Verdict::Accepted)
}

/// The limits of a run: what it asked, else the default, never above the operator's caps (a
/// request above a cap is refused, not lowered: the web app must know).
pub fn effective_limits(asked: &RequestedLimits, caps: &RunLimits) -> Result<RunLimits, String> {
    let d = RunLimits::DEFAULT;
    fn pick<T: Copy + PartialOrd + std::fmt::Display>(
        name: &str,
        asked: Option<T>,
        default: T,
        cap: T,
        min: T,
    ) -> Result<T, String> {
        match asked {
            Some(v) if v > cap => Err(format!("limits.{name} is {v}, above the operator's cap of {cap}")),
            Some(v) if v < min => Err(format!("limits.{name} is {v}, below the least of {min}")),
            Some(v) => Ok(v),
            None if default > cap => Ok(cap),
            None => Ok(default),
        }
    }
    Ok(RunLimits {
        time_ms: pick("time_ms", asked.time_ms, d.time_ms, caps.time_ms, 1)?,
        wall_ms: pick("wall_ms", asked.wall_ms, d.wall_ms, caps.wall_ms, 1)?,
        memory_mb: pick("memory_mb", asked.memory_mb, d.memory_mb, caps.memory_mb, 16)?,
        pids: pick("pids", asked.pids, d.pids, caps.pids, 1)?,
        output_bytes: pick("output_bytes", asked.output_bytes, d.output_bytes, caps.output_bytes, 1)?,
    })
}

/// Refuses what cannot be run: bad paths, too many or too large files, too many test cases.
pub fn validate(req: &RunRequest, max_files_bytes: usize, max_tests: usize) -> Result<(), String> {
    if req.files.len() > MAX_FILES {
        return Err(format!("{} files; a run takes at most {MAX_FILES}", req.files.len()));
    }
    let total: usize = req.files.iter().map(|f| f.content.len() + f.path.len()).sum();
    if total > max_files_bytes {
        return Err(format!("the files are {total} bytes; a run takes at most {max_files_bytes}"));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &req.files {
        check_path(&f.path)?;
        if !seen.insert(f.path.as_str()) {
            return Err(format!("the file {:?} is given twice", f.path));
        }
    }
    // A file that is also another's directory (`a` and `a/b`) cannot be written.
    for f in &req.files {
        let dir = format!("{}/", f.path);
        if let Some(other) = req.files.iter().find(|o| o.path.starts_with(&dir)) {
            return Err(format!("the file {:?} is also the directory of {:?}", f.path, other.path));
        }
    }
    if req.tests.len() > max_tests {
        return Err(format!("{} test cases; a run takes at most {max_tests}", req.tests.len()));
    }
    for (i, t) in req.tests.iter().enumerate() {
        check_args(&t.args).map_err(|e| format!("tests[{i}].args: {e}"))?;
    }
    check_args(&req.args).map_err(|e| format!("args: {e}"))?;
    if req.interactive == Some(true) && (!req.tests.is_empty() || !req.stdin.is_empty() || req.wait == Some(true)) {
        return Err("an interactive run takes its stdin over its stream: no tests, stdin or wait".into());
    }
    if !req.tests.is_empty() && (!req.stdin.is_empty() || !req.args.is_empty()) {
        return Err("stdin and args are for a run without tests; give each test case its own".into());
    }
    Ok(())
}

/// A file's path: relative, of plain names, without `.`/`..`, NUL or a trailing `/`.
fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("the file path {path:?} {why}"));
    if path.is_empty() || path.len() > 255 {
        return bad("must be 1-255 bytes");
    }
    if path.starts_with('/') {
        return bad("must be relative to the run's directory");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("has a NUL or a backslash");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("has an empty, '.' or '..' component");
    }
    Ok(())
}

/// The files as a tar, each a regular file readable and writable by the run's user.
fn files_tar(files: &[RunFile]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut parent = std::path::Path::new(&f.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, d, std::io::empty())?;
    }
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(f.content.len() as u64);
        tar.append_data(&mut h, &f.path, f.content.as_bytes())?;
    }
    Ok(tar.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(files: &[(&str, &str)]) -> RunRequest {
        RunRequest {
            runtime: Some("python3".into()),
            exercise: None,
            run: None,
            compile: None,
            learner: None,
            wait: None,
            interactive: None,
            files: files.iter().map(|(p, c)| RunFile { path: p.to_string(), content: c.to_string() }).collect(),
            stdin: String::new(),
            args: vec![],
            tests: vec![],
            compare: Compare::default(),
            limits: RequestedLimits::default(),
        }
    }

    #[test]
    fn a_runs_kept_output_is_bounded_in_step_order() {
        let step =
            |out: &str| StepResult {
                stdout: out.into(), stderr: "é".repeat(3), ..StepResult::internal(String::new())
            };
        let o = RunOutcome {
            compile: None,
            tests: vec![step("abcd"), step("efgh"), step("ijkl")],
            limits: None,
            duration_ms: 0,
        }
        .within(13);
        let kept: Vec<(&str, &str, bool)> =
            o.tests.iter().map(|t| (t.stdout.as_str(), t.stderr.as_str(), t.truncated)).collect();
        // 4 + 6 bytes, then 3 of the next stdout, no room for a whole 'é' of its stderr.
        assert_eq!(kept, [("abcd", "ééé", false), ("efg", "", true), ("", "", true)]);
    }

    #[test]
    fn paths_that_leave_the_run_directory_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "", "a\0b", "a\\b"] {
            assert!(validate(&request(&[(bad, "x")]), 1 << 20, 10).is_err(), "{bad:?}");
        }
        assert!(validate(&request(&[("main.py", "x"), ("pkg/mod.py", "y")]), 1 << 20, 10).is_ok());
        assert!(validate(&request(&[("a", "x"), ("a", "y")]), 1 << 20, 10).is_err(), "twice");
        assert!(validate(&request(&[("a", &"x".repeat(100))]), 50, 10).is_err(), "too large");
    }

    #[test]
    fn limits_default_and_are_refused_above_the_caps() {
        let caps = RunLimits { time_ms: 1000, ..RunLimits::DEFAULT };
        let l = effective_limits(&RequestedLimits::default(), &caps).unwrap();
        assert_eq!(l.time_ms, 1000, "a default above the cap is the cap");
        assert_eq!(l.memory_mb, RunLimits::DEFAULT.memory_mb);
        let e = effective_limits(&RequestedLimits { memory_mb: Some(4096), ..Default::default() }, &caps).unwrap_err();
        assert!(e.contains("limits.memory_mb") && e.contains("cap"), "{e}");
        assert!(effective_limits(&RequestedLimits { memory_mb: Some(1), ..Default::default() }, &caps).is_err());
    }

    #[test]
    fn a_step_that_writes_the_files_keeps_its_argv_as_arguments() {
        let argv = with_files_written(vec!["python3".into(), "main.py".into(), "$(reboot)".into()]);
        assert_eq!(&argv[..2], ["sh", "-c"]);
        assert_eq!(argv[3], PRELUDE_FAILED, "$0: what a failure says");
        assert_eq!(&argv[4..], ["python3", "main.py", "$(reboot)"], "\"$@\", never shell text");
        assert!(
            argv[2].contains(&format!("-C {RUN_DIR}")) && argv[2].ends_with("exec \"$@\" </dev/null"),
            "{}",
            argv[2]
        );
    }

    #[test]
    fn the_files_tar_has_their_directories_first() {
        let tar = files_tar(&[RunFile { path: "a/b/c.txt".into(), content: "hi".into() }]).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, vec!["a", "a/b", "a/b/c.txt"]);
    }

    #[test]
    fn the_run_status_is_the_compile_steps_or_the_first_failed_tests() {
        let step = |status| StepResult { status, ..StepResult::internal(String::new()) };
        assert_eq!(overall(None, &[step(Verdict::Accepted), step(Verdict::Accepted)]), Verdict::Accepted);
        assert_eq!(
            overall(None, &[step(Verdict::Accepted), step(Verdict::WrongAnswer), step(Verdict::TimeLimit)]),
            Verdict::WrongAnswer
        );
        assert_eq!(overall(Some(&step(Verdict::CompileError)), &[]), Verdict::CompileError);
    }
}
