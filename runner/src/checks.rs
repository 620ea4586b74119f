//! Checks: run the exercise's check inside a sandbox, against the files there, as the sandbox
//! user, with a time limit and an output cap. Used for learners' sessions and build self-tests.
//!
//! Learners' checks share a bounded number of slots (`RUNNER_MAX_CONCURRENT_CHECKS`) and nothing
//! a learner does inside their sandbox may keep another learner's check from running:
//! - a session has at most one check in flight; a request while one runs joins it and gets its
//!   result ([`check_session`]);
//! - slots are handed out by [`FairSlots`]: a learner holds at most one at a time, and waiting
//!   learners are served in arrival order;
//! - one deadline covers the whole check, the wait for the exercise's services included, so a
//!   slot is held at most the check's `timeout_secs` plus [`ENGINE_GRACE`].

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::{sync::oneshot, time::Instant};

use crate::{
    config::Settings,
    domain::{SandboxSpec, SessionState, TESTS_DIR},
    engine::{Engine, ExecRequest},
    metrics::Metrics,
    store::{now_ms, CheckRecord, Store},
};

/// How long services named by the exercise may take to come up when nothing else bounds the
/// wait (a build's self-test prepares its sandbox with it). A check's own wait is bounded by the
/// check's deadline instead.
const SERVICES_DEADLINE: Duration = Duration::from_secs(30);

/// How long a check may wait for a slot before the caller is told to come back (503).
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// Past the check's deadline, how long the host waits for an engine that stops answering. The
/// sandbox's own `timeout` ends the command at the deadline; this only bounds a stuck engine.
pub const ENGINE_GRACE: Duration = Duration::from_secs(5);

/// How long one `supervisorctl status` may take: supervisord is the learner's process and may
/// never answer (stopped with SIGSTOP), so every poll is bounded and killed inside the sandbox.
const STATUS_POLL_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub passed: bool,
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// Waits until supervisord answers and every named service is RUNNING, at most
/// [`SERVICES_DEADLINE`]. Images without supervisord (no `supervisorctl`) have nothing to wait for.
pub async fn wait_for_services(
    engine: &Engine,
    container: &str,
    user: &str,
    services: &[String],
) -> anyhow::Result<()> {
    services_up(engine, container, user, services, Instant::now() + SERVICES_DEADLINE)
        .await?
        .map_err(anyhow::Error::msg)
}

/// Polls `supervisorctl status` until every named service is RUNNING or `deadline` passes.
/// The outer error is the engine's; the inner one says what was not up by the deadline.
async fn services_up(
    engine: &Engine,
    container: &str,
    user: &str,
    services: &[String],
    deadline: Instant,
) -> anyhow::Result<Result<(), String>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).min(STATUS_POLL_LIMIT);
        // `timeout` inside the sandbox kills a supervisorctl that hangs on a stopped supervisord,
        // so polls do not pile up processes in the learner's sandbox.
        // At least one second: `timeout 0` would mean no limit at all.
        let limit = whole_secs(left).max(1);
        let cmd = ["timeout", "-s", "KILL", &limit.to_string(), "supervisorctl", "status"];
        let mut req = ExecRequest::new(cmd.iter().map(|s| s.to_string()).collect(), user);
        req.deadline = left.max(Duration::from_millis(500));
        let out = engine.exec(container, req).await?;
        // 0: all running; 3: some not running (yet); 126/127: no supervisorctl (or no `timeout`)
        // in this image.
        if out.exit_code == 126 || out.exit_code == 127 || out.output.contains("executable file not found") {
            return Ok(Ok(()));
        }
        let pending: Vec<&String> = services
            .iter()
            .filter(|s| !out.output.lines().any(|l| l.starts_with(s.as_str()) && l.contains("RUNNING")))
            .collect();
        let answered = !out.timed_out && (out.exit_code == 0 || out.exit_code == 3);
        if answered && pending.is_empty() {
            return Ok(Ok(()));
        }
        if Instant::now() >= deadline {
            return Ok(Err(if answered {
                format!("services not RUNNING within the check's time limit: {pending:?}\n{}", out.output.trim())
            } else {
                format!("supervisord did not answer within the check's time limit: {}", out.output.trim())
            }));
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(200))).await;
    }
}

/// Whole seconds for `timeout` (busybox's takes no fractions), rounded up and at least one, so
/// the command is never given less than what is left.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Runs the check of `spec` in a running sandbox. One deadline, `timeout_secs` from now, covers
/// waiting for the exercise's services and the command; services not up by then make a failed,
/// timed-out outcome that says so.
pub async fn run_check(
    engine: &Engine,
    container: &str,
    spec: &SandboxSpec,
    user: &str,
    max_output: usize,
) -> anyhow::Result<CheckOutcome> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(spec.check.timeout_secs);
    if let Err(why) = services_up(engine, container, user, &spec.check.services, deadline).await? {
        return Ok(CheckOutcome {
            passed: false,
            exit_code: -1,
            output: why,
            truncated: false,
            timed_out: true,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    let secs = whole_secs(deadline.saturating_duration_since(Instant::now())).max(1);
    // `timeout` inside the sandbox kills the check at its limit; the host-side deadline only
    // guards against an engine that stops answering.
    let mut cmd = vec!["timeout".to_string(), "-s".to_string(), "KILL".to_string(), secs.to_string()];
    cmd.extend(spec.check.command.iter().cloned());
    let mut req = ExecRequest::new(cmd, user);
    req.workdir = Some(spec.workdir.clone());
    req.env = vec![format!("EXERCISE_TESTS={TESTS_DIR}")];
    req.max_output = max_output;
    req.deadline = Duration::from_secs(secs) + ENGINE_GRACE;
    let command_started = Instant::now();
    let out = engine.exec(container, req).await?;
    let timed_out = out.timed_out || (out.exit_code == 137 && command_started.elapsed() >= Duration::from_secs(secs));
    Ok(CheckOutcome {
        passed: out.exit_code == 0 && !timed_out,
        exit_code: out.exit_code,
        output: out.output,
        truncated: out.truncated,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// A check as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    pub id: String,
    pub session_id: String,
    pub passed: bool,
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: i64,
    pub created_at: String,
}

pub fn to_view(c: &CheckRecord) -> Check {
    Check {
        id: c.id.clone(),
        session_id: c.session_id.clone(),
        passed: c.passed,
        exit_code: c.exit_code,
        output: c.output.clone(),
        truncated: c.truncated,
        timed_out: c.timed_out,
        duration_ms: c.duration_ms,
        created_at: crate::domain::rfc3339(c.created_at),
    }
}

/// The result of a session's check, as every request that joined it receives it.
pub type SharedResult = Result<CheckRecord, Arc<CheckError>>;

/// Why a session's check did not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("session {0:?} does not exist")]
    NotFound(String),
    #[error("session {0:?} is not running")]
    NotRunning(String),
    #[error("too many checks are running; try again shortly")]
    QueueFull,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Learners' checks of their sessions: the check slots and the checks in flight are this
/// capability's own state; it gets only the infrastructure it uses. Built once at launch (and
/// by `runner ide-proxy`, which runs checks too).
pub struct Checks {
    store: Store,
    engine: Engine,
    metrics: Arc<Metrics>,
    user: String,
    output_bytes: usize,
    /// `RUNNER_MAX_CONCURRENT_CHECKS` slots, at most one per learner at a time.
    slots: Arc<FairSlots>,
    /// The check running for each session; a second request joins it.
    in_flight: Arc<SingleFlight<SharedResult>>,
    /// Told (session, check) of every passing check once its record is written: the snapshot of
    /// the learner's files (`learner_files`), set by the wiring; it must not block.
    after_pass: std::sync::OnceLock<PassHook>,
}

/// What [`Checks::on_pass`] is given.
pub type PassHook = Box<dyn Fn(&str, &str) + Send + Sync>;

impl Checks {
    pub fn new(settings: &Settings, store: Store, engine: Engine, metrics: Arc<Metrics>) -> Arc<Checks> {
        Arc::new(Checks {
            store,
            engine,
            metrics,
            user: settings.sandbox_user.clone(),
            output_bytes: settings.check_output_bytes,
            slots: FairSlots::new(settings.max_concurrent_checks, 1),
            in_flight: SingleFlight::new(),
            after_pass: std::sync::OnceLock::new(),
        })
    }

    /// Sets what is told of every passing check (once; later calls are ignored).
    pub fn on_pass(&self, hook: PassHook) {
        let _ = self.after_pass.set(hook);
    }

    /// Checks a learner's current work in their running session; counts as activity.
    ///
    /// A session has at most one check in flight. A request that arrives while one runs joins it
    /// and answers with its result: both routes (the API's and the IDE's Check button) come here,
    /// and a learner clicking twice, or a script firing many requests, gets one check, not many.
    /// The check runs in a task of its own, so a caller that goes away does not cut it short for
    /// the others, and its record is written either way.
    pub async fn check_session(self: &Arc<Self>, session_id: &str) -> Result<CheckRecord, CheckError> {
        let session =
            self.store.session(session_id).await?.ok_or_else(|| CheckError::NotFound(session_id.to_string()))?;
        if session.state != SessionState::Running {
            return Err(CheckError::NotRunning(session_id.to_string()));
        }
        let container = session.container_id.clone().ok_or_else(|| CheckError::NotRunning(session_id.to_string()))?;
        let spec: SandboxSpec = serde_json::from_str(&session.spec).map_err(anyhow::Error::from)?;
        let check = {
            let checks = self.clone();
            let id = session_id.to_string();
            move || async move { checks.run_session_check(&id, &session.learner, &container, &spec).await.map_err(Arc::new) }
        };
        match self.in_flight.run(session_id, check).await {
            Some(Ok(record)) => Ok(record),
            Some(Err(e)) => Err(same_error(&e)),
            None => {
                Err(CheckError::Internal(anyhow::anyhow!("the check of session {session_id} ended without a result")))
            }
        }
    }

    /// One check of a session, in a slot of the learner's: the slot is held only while it runs.
    async fn run_session_check(
        &self,
        session_id: &str,
        learner: &str,
        container: &str,
        spec: &SandboxSpec,
    ) -> Result<CheckRecord, CheckError> {
        let Some(slot) = self.slots.acquire(learner, SLOT_WAIT).await else {
            self.metrics.rejected_requests.with_label_values(&["check_queue"]).inc();
            return Err(CheckError::QueueFull);
        };
        self.store.touch_session(session_id, now_ms()).await?;
        let outcome = match run_check(&self.engine, container, spec, &self.user, self.output_bytes).await {
            Ok(outcome) => outcome,
            // The sandbox stopped under the check (a stop, an exit the reconciler has not
            // repaired yet): that is the session's state, not a fault of the runner.
            Err(_) if !self.sandbox_runs(session_id, container).await => {
                return Err(CheckError::NotRunning(session_id.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        drop(slot);
        let record = CheckRecord {
            id: uuid::Uuid::new_v4().to_string(),
            session_id: session_id.to_string(),
            passed: outcome.passed,
            exit_code: outcome.exit_code,
            output: outcome.output,
            truncated: outcome.truncated,
            timed_out: outcome.timed_out,
            duration_ms: outcome.duration_ms as i64,
            created_at: now_ms(),
        };
        self.store.insert_check(&record).await?;
        if let (true, Some(hook)) = (record.passed, self.after_pass.get()) {
            hook(session_id, &record.id);
        }
        self.store.touch_session(session_id, now_ms()).await?;
        let verdict = if record.passed { "passed" } else { "failed" };
        self.metrics.checks.with_label_values(&[verdict]).inc();
        self.metrics.check_seconds.with_label_values(&[verdict]).observe(outcome.duration_ms as f64 / 1000.0);
        Ok(record)
    }
}

impl Checks {
    /// Whether the session is still `running` on this container and the container runs; an
    /// answer that cannot be had counts as running (the check's own error is then the cause).
    async fn sandbox_runs(&self, session_id: &str, container: &str) -> bool {
        let session = match self.store.session(session_id).await {
            Ok(s) => s,
            Err(_) => return true,
        };
        if !session.is_some_and(|s| s.state == SessionState::Running && s.container_id.as_deref() == Some(container)) {
            return false;
        }
        match self.engine.container_status(container).await {
            Ok(status) => status.is_some_and(|s| s.running),
            Err(_) => true,
        }
    }
}

/// At most one task per key: a caller for a key whose task still runs waits for that task's
/// result instead of starting another.
pub struct SingleFlight<T> {
    running: Mutex<HashMap<String, tokio::sync::watch::Receiver<Option<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(SingleFlight { running: Mutex::new(HashMap::new()) })
    }

    /// The result of the task running for `key`, starting it with `start` when none runs.
    /// The task is spawned, so it finishes even if every caller goes away; `None` if it
    /// panicked.
    pub async fn run<F>(self: &Arc<Self>, key: &str, start: impl FnOnce() -> F) -> Option<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let mut result = {
            let mut running = self.running.lock().expect("single flight");
            match running.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    running.insert(key.to_string(), rx.clone());
                    let entry = FlightEntry { flights: self.clone(), key: key.to_string() };
                    let task = start();
                    tokio::spawn(async move {
                        let value = task.await;
                        // Leave the map before answering: a caller from now on starts a new task
                        // (a check on files that may have changed), one from before gets this.
                        drop(entry);
                        let _ = tx.send(Some(value));
                    });
                    rx
                }
            }
        };
        let answer = result.wait_for(Option::is_some).await.ok()?.clone();
        answer
    }

    /// Keys with a task running (for tests).
    pub fn running(&self) -> usize {
        self.running.lock().expect("single flight").len()
    }
}

/// A key's place in a [`SingleFlight`], removed when its task ends, even by a panic, so the key
/// is never left joining a task that will not answer.
struct FlightEntry<T> {
    flights: Arc<SingleFlight<T>>,
    key: String,
}

impl<T> Drop for FlightEntry<T> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.flights.running.lock() {
            running.remove(&self.key);
        }
    }
}

/// The error of a shared check, for one more caller (an internal cause is not `Clone`).
fn same_error(e: &CheckError) -> CheckError {
    match e {
        CheckError::NotFound(s) => CheckError::NotFound(s.clone()),
        CheckError::NotRunning(s) => CheckError::NotRunning(s.clone()),
        CheckError::QueueFull => CheckError::QueueFull,
        CheckError::Internal(cause) => CheckError::Internal(anyhow::anyhow!("{cause:#}")),
    }
}

/// Check slots shared fairly between learners.
///
/// A plain semaphore is first come, first served per *request*, so one learner firing many
/// requests (or holding checks in several sessions) can take every slot. Here each key (a
/// learner) holds at most `per_key` slots; a free slot goes to the longest-waiting request whose
/// key is below that, so a learner's extra requests wait behind everyone else's first one.
pub struct FairSlots {
    inner: Mutex<SlotsState>,
}

struct SlotsState {
    capacity: usize,
    per_key: usize,
    in_use: usize,
    held: HashMap<String, usize>,
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    key: String,
    grant: oneshot::Sender<SlotPermit>,
}

/// One slot, given back when dropped.
pub struct SlotPermit {
    slots: Arc<FairSlots>,
    key: String,
    /// False for a permit that never reached its waiter (its accounting is undone in place).
    armed: bool,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if self.armed {
            self.slots.release(&self.key);
        }
    }
}

impl FairSlots {
    pub fn new(capacity: usize, per_key: usize) -> Arc<Self> {
        Arc::new(FairSlots {
            inner: Mutex::new(SlotsState {
                capacity,
                per_key: per_key.max(1),
                in_use: 0,
                held: HashMap::new(),
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
        })
    }

    /// A slot for `key`, waiting at most `within`; `None` when none came in time.
    pub async fn acquire(self: &Arc<Self>, key: &str, within: Duration) -> Option<SlotPermit> {
        let (ticket, mut granted) = {
            let mut s = self.inner.lock().expect("check slots");
            // Everyone eligible was served when the state last changed, so a free slot with no
            // eligible waiter ahead can be taken at once.
            if s.in_use < s.capacity && s.held.get(key).copied().unwrap_or(0) < s.per_key {
                s.take(key);
                return Some(SlotPermit { slots: self.clone(), key: key.to_string(), armed: true });
            }
            let (tx, rx) = oneshot::channel();
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back(Waiter { ticket, key: key.to_string(), grant: tx });
            (ticket, rx)
        };
        match tokio::time::timeout(within, &mut granted).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) => None,
            Err(_) => {
                let mut s = self.inner.lock().expect("check slots");
                s.waiting.retain(|w| w.ticket != ticket);
                drop(s);
                // Granted in the instant between the timeout and the lock: take it after all.
                granted.try_recv().ok()
            }
        }
    }

    fn release(self: &Arc<Self>, key: &str) {
        let mut s = self.inner.lock().expect("check slots");
        s.give_back(key);
        s.serve(self);
    }

    /// Slots in use and requests waiting (for tests and metrics).
    pub fn usage(&self) -> (usize, usize) {
        let s = self.inner.lock().expect("check slots");
        (s.in_use, s.waiting.len())
    }
}

impl SlotsState {
    fn take(&mut self, key: &str) {
        self.in_use += 1;
        *self.held.entry(key.to_string()).or_default() += 1;
    }

    fn give_back(&mut self, key: &str) {
        self.in_use -= 1;
        if let Some(n) = self.held.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(key);
            }
        }
    }

    /// Hands free slots to the longest-waiting requests whose key is below its share.
    fn serve(&mut self, slots: &Arc<FairSlots>) {
        let mut i = 0;
        while self.in_use < self.capacity && i < self.waiting.len() {
            if self.waiting[i].grant.is_closed() {
                // Its request went away while waiting.
                self.waiting.remove(i);
                continue;
            }
            if self.held.get(&self.waiting[i].key).copied().unwrap_or(0) >= self.per_key {
                i += 1;
                continue;
            }
            let w = self.waiting.remove(i).expect("in range");
            self.take(&w.key);
            let permit = SlotPermit { slots: slots.clone(), key: w.key.clone(), armed: true };
            if let Err(mut unsent) = w.grant.send(permit) {
                // The waiter went away (its request was dropped): the slot stays free.
                unsent.armed = false;
                self.give_back(&w.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn whole_seconds_round_up_so_the_command_gets_what_is_left() {
        assert_eq!(whole_secs(Duration::from_secs(10)), 10);
        assert_eq!(whole_secs(Duration::from_millis(9_001)), 10);
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::ZERO), 0);
    }

    #[tokio::test]
    async fn a_learner_holds_at_most_one_slot_and_others_still_get_theirs() {
        let slots = FairSlots::new(2, 1);
        let a = slots.acquire("ada", NOW).await.expect("a free slot");
        // Ada's second request does not get the second slot, even though it is free...
        assert!(slots.acquire("ada", NOW).await.is_none());
        // ...which stays for someone else.
        let b = slots.acquire("bob", NOW).await.expect("bob's share");
        assert_eq!(slots.usage(), (2, 0));
        drop((a, b));
        assert_eq!(slots.usage(), (0, 0));
    }

    #[tokio::test]
    async fn waiting_learners_are_served_in_arrival_order_and_a_repeat_goes_to_the_back() {
        let slots = FairSlots::new(1, 1);
        let held = slots.acquire("ada", NOW).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let wait_turn = |who: &'static str| {
            let (slots, order) = (slots.clone(), order.clone());
            tokio::spawn(async move {
                let permit = slots.acquire(who, LONG).await.expect("served in time");
                order.lock().unwrap().push(who);
                // Hold it a moment, as a check would.
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(permit);
            })
        };
        let mut tasks = vec![wait_turn("bob")];
        tokio::task::yield_now().await;
        tasks.push(wait_turn("cy"));
        tokio::task::yield_now().await;
        assert_eq!(slots.usage(), (1, 2));
        // Ada's check ends and she asks again at once: she waits behind Bob and Cy.
        drop(held);
        tasks.push(wait_turn("ada"));
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["bob", "cy", "ada"]);
        assert_eq!(slots.usage(), (0, 0));
    }

    #[tokio::test]
    async fn a_learner_at_their_share_is_skipped_not_blocking_the_queue() {
        let slots = FairSlots::new(2, 1);
        let ada = slots.acquire("ada", NOW).await.unwrap();
        let bob = slots.acquire("bob", NOW).await.unwrap();
        let (s1, s2) = (slots.clone(), slots.clone());
        let ada_again = tokio::spawn(async move { s1.acquire("ada", LONG).await.map(|_| ()) });
        tokio::task::yield_now().await;
        let cy = tokio::spawn(async move { s2.acquire("cy", LONG).await });
        tokio::task::yield_now().await;
        // Bob finishes: Ada is first in line but at her share, so Cy gets the slot.
        drop(bob);
        let cy = tokio::time::timeout(Duration::from_secs(10), cy).await.expect("cy served").unwrap().unwrap();
        assert!(!ada_again.is_finished());
        drop(ada);
        assert!(tokio::time::timeout(Duration::from_secs(10), ada_again).await.unwrap().unwrap().is_some());
        drop(cy);
        assert_eq!(slots.usage(), (0, 0));
    }

    #[tokio::test]
    async fn waiting_ends_at_the_deadline_and_gives_nothing_away() {
        let slots = FairSlots::new(1, 1);
        let held = slots.acquire("ada", NOW).await.unwrap();
        let started = Instant::now();
        assert!(slots.acquire("bob", Duration::from_millis(100)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        // The timed-out waiter left the queue; the slot, once free, is anyone's at once.
        assert_eq!(slots.usage(), (1, 0));
        drop(held);
        assert!(slots.acquire("bob", NOW).await.is_some());
        assert_eq!(slots.usage(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_does_not_keep_a_slot() {
        let slots = FairSlots::new(1, 1);
        let held = slots.acquire("ada", NOW).await.unwrap();
        let s = slots.clone();
        let gone = tokio::spawn(async move { s.acquire("bob", LONG).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(slots.usage(), (1, 1));
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(slots.usage(), (0, 0));
        assert!(slots.acquire("cy", NOW).await.is_some());
    }

    #[tokio::test]
    async fn callers_while_a_task_runs_join_it_and_later_ones_start_anew() {
        let flights = SingleFlight::<u32>::new();
        let started = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let entered = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut callers = Vec::new();
        for _ in 0..10 {
            let (flights, started, mut gate) = (flights.clone(), started.clone(), gate.clone());
            let entered = entered.clone();
            callers.push(tokio::spawn(async move {
                // On this one-thread runtime, `run` has registered the caller before it first
                // yields, so a count of 10 means all ten are in.
                entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                flights
                    .run("session-a", move || async move {
                        let n = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        let _ = gate.wait_for(|open| *open).await;
                        n
                    })
                    .await
            }));
        }
        // Every caller is in before the one task may finish.
        while entered.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.running(), 1);
        release.send(true).unwrap();
        for c in callers {
            assert_eq!(c.await.unwrap(), Some(1), "every caller gets the one task's result");
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(flights.running(), 0);
        // Once it has answered, the next caller runs a task of its own.
        assert_eq!(flights.run("session-a", || async { 2 }).await, Some(2));
        // Other keys never wait for each other.
        assert_eq!(flights.run("session-b", || async { 3 }).await, Some(3));
    }

    #[tokio::test]
    async fn a_task_that_panics_answers_none_and_frees_its_key() {
        let flights = SingleFlight::<u32>::new();
        assert_eq!(flights.run("s", || async { panic!("a bug in a check") }).await, None);
        assert_eq!(flights.running(), 0);
        assert_eq!(flights.run("s", || async { 7 }).await, Some(7));
    }

    #[tokio::test]
    async fn the_task_finishes_when_its_callers_go_away() {
        let flights = SingleFlight::<u32>::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let f = flights.clone();
        let caller = tokio::spawn(async move {
            f.run("s", move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = done_tx.send(());
                1
            })
            .await
        });
        tokio::task::yield_now().await;
        caller.abort();
        tokio::time::timeout(Duration::from_secs(10), done_rx).await.expect("the task ran on").unwrap();
    }

    // ---- run_check through the engine seam: a fake engine answers the commands, no Docker ----

    use crate::{
        domain::{CheckSpec, Limits},
        engine::fake::{exited, FakeEngine},
    };

    fn sandbox(services: &[&str], timeout_secs: u64) -> SandboxSpec {
        SandboxSpec {
            image: "img".into(),
            limits: Limits::DEFAULT,
            network: None,
            workdir: "/workspace".into(),
            writable: vec![],
            check: CheckSpec {
                command: vec!["make".into(), "test".into()],
                timeout_secs,
                services: services.iter().map(|s| s.to_string()).collect(),
            },
            ide: true,
        }
    }

    fn is_status_poll(req: &ExecRequest) -> bool {
        req.cmd.ends_with(&["supervisorctl".to_string(), "status".to_string()])
    }

    #[tokio::test]
    async fn a_check_waits_for_its_services_then_runs_bounded_inside_the_sandbox() {
        let mut polls = 0;
        let fake = FakeEngine::answering(move |req| {
            if !is_status_poll(req) {
                return exited(0, "2 passed\n");
            }
            polls += 1;
            if polls == 1 {
                exited(3, "redis STARTING\n")
            } else {
                exited(0, "redis RUNNING   pid 7, uptime 0:00:01\n")
            }
        });
        let engine: Engine = fake.clone();
        let out = run_check(&engine, "c1", &sandbox(&["redis"], 30), "1000:1000", 1024).await.unwrap();
        assert!(out.passed && !out.timed_out, "{out:?}");
        assert_eq!(out.output, "2 passed\n");
        let execs = fake.execs();
        assert_eq!(execs.iter().filter(|r| is_status_poll(r)).count(), 2, "polled until RUNNING: {execs:?}");
        let check = execs.last().unwrap();
        // Killed inside the sandbox at what is left of the check's 30 s.
        assert_eq!(check.cmd[..3], ["timeout", "-s", "KILL"]);
        assert!((1..=30).contains(&check.cmd[3].parse::<u64>().unwrap()), "{:?}", check.cmd);
        assert_eq!(check.cmd[4..], ["make", "test"]);
        assert_eq!(check.workdir.as_deref(), Some("/workspace"));
        assert_eq!(check.env, [format!("EXERCISE_TESTS={TESTS_DIR}")]);
        assert_eq!((check.user.as_str(), check.max_output), ("1000:1000", 1024));
    }

    #[tokio::test]
    async fn services_not_up_by_the_deadline_fail_the_check_as_timed_out_without_running_it() {
        let fake = FakeEngine::answering(|req| {
            if is_status_poll(req) {
                exited(3, "redis BACKOFF   Exited too quickly\n")
            } else {
                exited(0, "")
            }
        });
        let engine: Engine = fake.clone();
        let out = run_check(&engine, "c1", &sandbox(&["redis"], 1), "1000:1000", 1024).await.unwrap();
        assert!(!out.passed && out.timed_out, "{out:?}");
        assert!(out.output.contains("services not RUNNING") && out.output.contains("redis"), "{}", out.output);
        assert!(fake.execs().iter().all(is_status_poll), "the check's command never ran");
    }

    #[tokio::test]
    async fn an_image_without_supervisord_has_nothing_to_wait_for() {
        let fake = FakeEngine::answering(|req| {
            if is_status_poll(req) {
                exited(127, "supervisorctl: not found\n")
            } else {
                exited(2, "1 failed\n")
            }
        });
        let engine: Engine = fake.clone();
        let out = run_check(&engine, "c1", &sandbox(&["redis"], 30), "1000:1000", 1024).await.unwrap();
        assert_eq!((out.passed, out.timed_out, out.exit_code), (false, false, 2), "{out:?}");
        assert_eq!(out.output, "1 failed\n");
        assert_eq!(fake.execs().len(), 2, "one poll, then the check");
    }
}
