//! The session lifecycle: `starting → running → stopping → stopped`, or `failed` with a reason.
//!
//! The database holds the intent, Docker the fact (docs/ARCHITECTURE.md, invariant 2). Every step here is one
//! idempotent Docker call followed by a conditional state write, so a step retried after a crash
//! or raced by the reaper or the reconciler converges instead of duplicating containers.

pub mod erasure;
pub mod events;
pub mod health;
pub mod pool;
pub mod reaper;
pub mod reconcile;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    config::Settings,
    domain::{rfc3339, LearnerId, SandboxSpec, SessionState, Slug},
    engine::{self, Engine, Purpose, SandboxOwner, WorkspaceMount},
    exercises,
    ide::IdeProxy,
    learner_files::LearnerFiles,
    lifecycle::{EndReason, SessionEvent},
    metrics::Metrics,
    store::{self, now_ms, SessionFilter, SessionRecord, Store},
    workspaces::Workspaces,
};

/// The session capability: learners' sandboxes from start to stop, the reaper and the
/// reconciler. Built once at launch; owns the start slots and the starts in flight.
pub struct Sessions {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub workspaces: Arc<Workspaces>,
    /// The IDE proxy: ends a stopped session's connections, signs `ide_url`s, flushes activity.
    pub ide: Arc<IdeProxy>,
    /// Bounds concurrent sandbox starts (invariant 6).
    pub start_slots: Arc<Semaphore>,
    /// Sessions whose sandbox is being started right now; the reconciler leaves them alone.
    pub starting: Mutex<HashSet<String>>,
    /// Sessions this process is stopping right now: the reconciler does not finish their stop
    /// a second time (it finishes stops a crash cut short).
    pub stopping: Mutex<HashSet<String>>,
    /// Since when (ms) this runner refuses new sessions, when an operator drained it. Kept in
    /// memory: it is this process's state, and a restarted runner takes sessions again.
    pub draining: Mutex<Option<i64>>,
    /// The warm pools' state in this process (what it is making, recent claims, back-off).
    pub pools: pool::Pools,
    /// The runner's health probes of sandboxes under runc and crun (in memory, like the
    /// engine's own).
    pub health: health::Tracker,
    /// Held from counting this node's live sessions to inserting a new one.
    pub admission: tokio::sync::Mutex<()>,
    /// On a fleet node: copies workspaces off the node when sessions end, and restores them
    /// into sessions that start where the workspace is not (see "Fleet").
    pub copies: Option<Arc<LearnerFiles>>,
}

impl Sessions {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        engine: Engine,
        metrics: Arc<Metrics>,
        workspaces: Arc<Workspaces>,
        ide: Arc<IdeProxy>,
        copies: Option<Arc<LearnerFiles>>,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            start_slots: Arc::new(Semaphore::new(settings.max_concurrent_starts)),
            starting: Mutex::new(HashSet::new()),
            stopping: Mutex::new(HashSet::new()),
            draining: Mutex::new(None),
            pools: pool::Pools::default(),
            health: health::Tracker::default(),
            admission: tokio::sync::Mutex::new(()),
            copies,
            settings,
            store,
            engine,
            metrics,
            workspaces,
            ide,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("exercise {0:?} does not exist")]
    ExerciseNotFound(String),
    #[error("session {0:?} does not exist")]
    NotFound(String),
    #[error("session {0:?} is not live")]
    NotLive(String),
    #[error("session {0:?} is not running")]
    NotRunning(String),
    #[error("exercise {0:?} has no published version yet")]
    NotPublished(String),
    #[error("the runner is at its limit of {0} live sessions")]
    AtCapacity(u64),
    #[error("too many sandboxes are starting; try again shortly")]
    StartQueueFull,
    #[error("this runner is draining: it takes no new sessions (live ones keep running)")]
    Draining,
    #[error("the image {0:?} is not on this node's engine")]
    ImageNotOnNode(String),
    #[error("the sandbox of session {id} failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: String,
    pub learner: String,
    pub exercise: String,
    pub state: SessionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub image: String,
    pub limits: crate::domain::Limits,
    pub created_at: String,
    pub last_activity_at: String,
    /// When the reaper will stop it: the idle deadline or the end of its maximum lifetime,
    /// whichever comes first. `null` once it has ended.
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The browser IDE of a live session, with a short-lived token (a fresh one on every read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ide_url: Option<String>,
    /// Why a live session has no `ide_url`: its image is not built on the sandbox base image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ide_unavailable: Option<&'static str>,
    /// The fleet node whose engine runs its sandbox (`local` on a single host).
    pub node: String,
}

pub fn to_view(sessions: &Sessions, r: &SessionRecord) -> Session {
    let spec: Option<SandboxSpec> = serde_json::from_str(&r.spec).ok();
    let ide = spec.as_ref().is_none_or(|s| s.ide);
    let idle = sessions.settings.idle_timeout.as_millis() as i64;
    let life = sessions.settings.max_lifetime.as_millis() as i64;
    let expires = (r.last_activity_at + idle).min(r.created_at + life);
    Session {
        id: r.id.clone(),
        learner: r.learner.clone(),
        exercise: r.exercise.clone(),
        state: r.state,
        failure_reason: r.failure_reason.clone(),
        image: r.image.clone(),
        limits: spec.map(|s| s.limits).unwrap_or(sessions.settings.default_limits),
        created_at: rfc3339(r.created_at),
        last_activity_at: rfc3339(r.last_activity_at),
        expires_at: r.state.is_live().then(|| rfc3339(expires)),
        ended_at: r.ended_at.map(rfc3339),
        ide_url: (r.state.is_live() && ide).then(|| crate::ide::ide_url(&sessions.ide, &sessions.settings, &r.id)),
        ide_unavailable: (r.state.is_live() && !ide).then_some(crate::domain::NO_IDE),
        node: r.node.clone(),
    }
}

/// The outcome of a create request: a new session, or the learner's live one.
pub struct Created {
    pub session: SessionRecord,
    pub new: bool,
}

/// Gives the learner a sandbox for the exercise: their live session if they have one, else a new
/// one whose sandbox is started before this returns (or marked failed).
pub async fn create(sessions: &Arc<Sessions>, learner: &LearnerId, exercise: &Slug) -> Result<Created, SessionError> {
    let record = sessions
        .store
        .exercise(exercise.as_str())
        .await?
        .ok_or_else(|| SessionError::ExerciseNotFound(exercise.to_string()))?;
    if record.image.is_empty() {
        return Err(SessionError::NotPublished(exercise.to_string()));
    }
    if let Some(live) = sessions.store.live_session_for(learner.as_str(), exercise.as_str()).await? {
        return Ok(Created { session: live, new: false });
    }
    if sessions.draining.lock().expect("lock").is_some() {
        sessions.metrics.rejected_requests.with_label_values(&["draining"]).inc();
        return Err(SessionError::Draining);
    }
    let max = sessions.settings.max_live_sessions as i64;
    // Counting and inserting (or claiming) are one step for this node's runner: concurrent
    // creates (here, or forwarded by the fleet's other runners) cannot overfill it.
    let admission = admit(sessions).await?;
    let requested_at = Instant::now();
    let now = now_ms();
    let mut spec = exercises::sandbox_spec(&sessions.settings, &record)?;
    let template = SessionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        learner: learner.to_string(),
        exercise: exercise.to_string(),
        image: record.image.clone(),
        spec: String::new(),
        state: SessionState::Starting,
        failure_reason: None,
        container_id: None,
        created_at: now,
        last_activity_at: now,
        ended_at: None,
        node: sessions.store.node().to_string(),
        memory_mb: spec.limits.memory_mb as i64,
    };
    // A new learner takes a pooled sandbox when one is ready: a database write, no start.
    let claimed = pool::claim(sessions, &record, &template, requested_at).await?;
    drop(admission);
    match claimed {
        Some(store::Claim::Claimed(session, _)) => return Ok(Created { session: *session, new: true }),
        Some(store::Claim::LiveSession) => {
            if let Some(live) = sessions.store.live_session_for(learner.as_str(), exercise.as_str()).await? {
                return Ok(Created { session: live, new: false });
            }
        }
        _ => {}
    }
    let permit =
        match tokio::time::timeout(sessions.settings.start_queue_timeout, sessions.start_slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(p)) => p,
            _ => {
                sessions.metrics.rejected_requests.with_label_values(&["start_queue"]).inc();
                return Err(SessionError::StartQueueFull);
            }
        };
    // Only images on the base image run the IDE agent; other sessions get no IDE link (rather
    // than one that fails).
    spec.ide = match sessions.engine.image(&spec.image).await? {
        Some(image) => image.labels.contains_key(crate::engine::LABEL_BASE),
        // A fleet node without the image says so at once: the placer asks the next node.
        None if sessions.store.node() != crate::domain::LOCAL_NODE => {
            return Err(SessionError::ImageNotOnNode(spec.image.clone()))
        }
        None => true,
    };
    let session = SessionRecord {
        image: spec.image.clone(),
        spec: serde_json::to_string(&spec).map_err(anyhow::Error::from)?,
        ..template
    };
    let admission = admit(sessions).await?;
    let inserted = sessions.store.insert_session(&session).await?;
    drop(admission);
    if inserted.is_none() {
        // A concurrent request for the same learner and exercise won the race: answer with its session.
        let live = sessions.store.live_session_for(learner.as_str(), exercise.as_str()).await?;
        return match live {
            Some(live) => Ok(Created { session: live, new: false }),
            None => Err(anyhow::anyhow!("session conflict without a live session").into()),
        };
    }
    // Pooled sandboxes count against the cap and give way to learners. The session is written
    // first, so a pool round meanwhile sees the cap reached and makes no new pooled sandbox.
    let over = sessions.store.count_live_sessions().await? + sessions.store.count_pooled().await? - max;
    for _ in 0..over.max(0) {
        if !pool::evict_one(sessions, "session_capacity").await? {
            break;
        }
    }
    // The start runs in its own task: a caller that disconnects does not abandon a half-made sandbox.
    let task = spawn_start(sessions.clone(), session.clone(), permit, requested_at);
    let _ = task.await;
    let session =
        sessions.store.session(&session.id).await?.ok_or_else(|| SessionError::NotFound(session.id.clone()))?;
    if session.state == SessionState::Failed {
        return Err(SessionError::StartFailed {
            id: session.id.clone(),
            reason: session.failure_reason.clone().unwrap_or_default(),
        });
    }
    Ok(Created { session, new: true })
}

/// Takes the admission lock once this node has room for one more live session.
async fn admit(sessions: &Sessions) -> Result<tokio::sync::MutexGuard<'_, ()>, SessionError> {
    let admission = sessions.admission.lock().await;
    if sessions.store.count_live_sessions().await? >= sessions.settings.max_live_sessions as i64 {
        sessions.metrics.rejected_requests.with_label_values(&["session_capacity"]).inc();
        return Err(SessionError::AtCapacity(sessions.settings.max_live_sessions));
    }
    Ok(admission)
}

/// How long a replica may take to start a sandbox before another may take the start over.
pub(crate) const START_LEASE: std::time::Duration = std::time::Duration::from_secs(90);

/// Starts (or restarts) the sandbox of a live session in a task of its own, tracked (in this
/// process, and by a start lease in the database for other replicas) so reconcilers leave it
/// alone meanwhile.
pub(crate) fn spawn_start(
    sessions: Arc<Sessions>,
    session: SessionRecord,
    permit: OwnedSemaphorePermit,
    requested_at: Instant,
) -> tokio::task::JoinHandle<()> {
    sessions.starting.lock().expect("lock").insert(session.id.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let id = session.id.clone();
        // Another replica on the same database may be starting this sandbox already.
        let now = crate::store::now_ms();
        match sessions.store.claim_start(&id, now, now + START_LEASE.as_millis() as i64).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(session = %id, "another replica is starting this sandbox");
                sessions.starting.lock().expect("lock").remove(&id);
                return;
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %format!("{e:#}"), "could not take the start lease; will retry");
                sessions.starting.lock().expect("lock").remove(&id);
                return;
            }
        }
        match start_sandbox(&sessions, &session).await {
            Ok(true) => {
                sessions
                    .metrics
                    .session_start_seconds
                    .with_label_values(&[sessions.settings.runtime.as_str()])
                    .observe(requested_at.elapsed().as_secs_f64());
                tracing::info!(session = %id, learner = %session.learner, exercise = %session.exercise,
                    ms = requested_at.elapsed().as_millis() as u64, "session started");
                observe_ready(&sessions, &session, requested_at);
                record_event(&sessions, &id, SessionEvent::Started, None).await;
            }
            Ok(false) => {
                tracing::info!(session = %id, "session ended while its sandbox started; removed it")
            }
            Err(e) => {
                let reason = format!("{e:#}");
                let reason: String = reason.chars().take(500).collect();
                tracing::warn!(session = %id, learner = %session.learner, exercise = %session.exercise,
                    reason = %reason, "session failed: its sandbox did not start");
                record_event(&sessions, &id, SessionEvent::StartFailed, Some(&reason)).await;
                let _ = sessions.engine.remove_container(&engine::sandbox_name(sessions.engine.instance(), &id)).await;
                let _ = sessions
                    .store
                    .transition(&id, SessionState::LIVE, SessionState::Failed, Some(&reason), Some(EndReason::Failed))
                    .await;
                release_workspace(&sessions, &session).await;
            }
        }
        if let Err(e) = sessions.store.release_start(&id).await {
            tracing::warn!(session = %id, error = %format!("{e:#}"), "could not release the start lease; it expires");
        }
        sessions.starting.lock().expect("lock").remove(&id);
    })
}

/// Measures, in the background, when a cold-started sandbox's IDE agent answers (the
/// `runner_session_ready_duration_seconds` histogram): what the learner waits for, beyond the
/// container running.
fn observe_ready(sessions: &Arc<Sessions>, session: &SessionRecord, requested_at: Instant) {
    let ide = serde_json::from_str::<SandboxSpec>(&session.spec).is_ok_and(|s| s.ide);
    let Some(container) = ide.then(|| engine::sandbox_name(sessions.engine.instance(), &session.id)) else { return };
    let sessions = sessions.clone();
    tokio::spawn(async move {
        if pool::wait_ready(&sessions, &container, std::time::Duration::from_secs(30)).await.is_ok() {
            sessions
                .metrics
                .session_ready_seconds
                .with_label_values(&[sessions.settings.runtime.as_str(), "cold"])
                .observe(requested_at.elapsed().as_secs_f64());
        }
    });
}

/// Makes the session's sandbox run: workspace, container, start, record. Returns false when the
/// session was ended meanwhile (its container is then removed again).
async fn start_sandbox(sessions: &Sessions, session: &SessionRecord) -> anyhow::Result<bool> {
    let mut spec: SandboxSpec = serde_json::from_str(&session.spec)?;
    // Defence in depth: an image that declares VOLUMEs (refused at registration and build, but
    // perhaps registered before that rule) gets a sized tmpfs over each instead of a disk volume.
    if let Some(image) = sessions.engine.image(&spec.image).await? {
        for v in image.volumes {
            if v != spec.workdir && !spec.writable.contains(&v) {
                spec.writable.push(v);
            }
        }
    }
    // A workspace recorded on another fleet node is not on this disk: the session begins with
    // its last copy instead.
    let moved = sessions.copies.is_some()
        && sessions
            .store
            .workspace(&session.learner, &session.exercise)
            .await?
            .is_some_and(|w| w.node != sessions.store.node());
    let volume = sessions.workspaces.prepare(&session.learner, &session.exercise, spec.limits.workspace_mb).await?;
    let owner = SandboxOwner {
        instance: sessions.engine.instance(),
        purpose: Purpose::Session(&session.id),
        learner: &session.learner,
        exercise: &session.exercise,
    };
    let container = sessions
        .engine
        .create_sandbox(
            &spec,
            &owner,
            WorkspaceMount::Volume(&volume),
            sessions.settings.runtime,
            &sessions.settings.sandbox_user,
        )
        .await?;
    sessions.engine.start_container(&container).await?;
    if let (true, Some(files)) = (moved, &sessions.copies) {
        if let Err(e) = files.restore_copy(&session.learner, &session.exercise, &container, &spec.workdir).await {
            tracing::warn!(session = %session.id, error = %format!("{e:#}"), "could not restore the workspace's copy");
        }
    }
    if !sessions.store.mark_running(&session.id, &container).await? {
        sessions.engine.remove_container(&container).await?;
        release_workspace(sessions, session).await;
        return Ok(false);
    }
    Ok(true)
}

/// Drops the workspace's volume and loop device unless the learner has a live session again.
async fn release_workspace(sessions: &Sessions, session: &SessionRecord) {
    match sessions.store.live_session_for(&session.learner, &session.exercise).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not check for a live session before releasing a workspace");
            return;
        }
    }
    if let Err(e) = sessions.workspaces.release(&session.learner, &session.exercise).await {
        tracing::warn!(session = %session.id, error = %format!("{e:#}"), "could not release the workspace");
    }
}

pub async fn get(sessions: &Sessions, id: &str) -> Result<SessionRecord, SessionError> {
    sessions.store.session(id).await?.ok_or_else(|| SessionError::NotFound(id.to_string()))
}

pub async fn list(sessions: &Sessions, filter: &SessionFilter) -> Result<Vec<SessionRecord>, SessionError> {
    Ok(sessions.store.sessions(filter).await?)
}

/// Ends a session: its container is removed, its workspace kept. Idempotent. `why` is what
/// `session.ended` tells the web app; `reason` the detail kept with the session.
pub async fn stop(
    sessions: &Sessions,
    id: &str,
    why: EndReason,
    reason: Option<&str>,
) -> Result<SessionRecord, SessionError> {
    let session = get(sessions, id).await?;
    if session.state.is_ended() {
        return Ok(session);
    }
    sessions.stopping.lock().expect("lock").insert(id.to_string());
    let stopped = async {
        sessions.store.transition(id, SessionState::LIVE, SessionState::Stopping, None, Some(why)).await?;
        sessions.ide.session_ended(id);
        finish_stop(sessions, &session, reason).await
    }
    .await;
    sessions.stopping.lock().expect("lock").remove(id);
    stopped?;
    get(sessions, id).await
}

/// The second half of a stop, also used by the reconciler for sessions left in `stopping`.
pub(crate) async fn finish_stop(
    sessions: &Sessions,
    session: &SessionRecord,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    copy_off(sessions, session).await;
    sessions.engine.remove_container(&engine::sandbox_name(sessions.engine.instance(), &session.id)).await?;
    if let Some(c) = &session.container_id {
        sessions.engine.remove_container(c).await?;
    }
    if !sessions.store.transition(&session.id, &[SessionState::Stopping], SessionState::Stopped, reason, None).await? {
        // Another finisher (a stop racing the reconciler) got there first and said so.
        return Ok(());
    }
    tracing::info!(session = %session.id, learner = %session.learner, exercise = %session.exercise,
        reason = reason.unwrap_or("unknown"), "session stopped");
    let kind =
        if reason.is_some_and(|r| r.starts_with("reaped")) { SessionEvent::Reaped } else { SessionEvent::Stopped };
    record_event(sessions, &session.id, kind, reason).await;
    release_workspace(sessions, session).await;
    Ok(())
}

/// On a fleet node, before a session's sandbox goes: the workspace's copy off the node (a
/// failure is logged; the last periodic copy stays).
async fn copy_off(sessions: &Sessions, session: &SessionRecord) {
    let Some(files) = &sessions.copies else { return };
    let container =
        session.container_id.clone().unwrap_or_else(|| engine::sandbox_name(sessions.engine.instance(), &session.id));
    let workdir = serde_json::from_str::<SandboxSpec>(&session.spec).map(|s| s.workdir).unwrap_or_default();
    if workdir.is_empty() {
        return;
    }
    match files.copy_from(&session.learner, &session.exercise, &container, &workdir).await {
        Ok(bytes) => tracing::debug!(session = %session.id, bytes, "workspace copied off the node"),
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "could not copy the workspace off the node at its end")
        }
    }
}

/// Stops every live session of an exercise (after a broken publish, say); how many it stopped.
pub async fn stop_exercise(sessions: &Sessions, exercise: &str, reason: &str) -> Result<usize, SessionError> {
    use futures_util::StreamExt;
    let live: Vec<SessionRecord> =
        sessions.store.live_sessions().await?.into_iter().filter(|s| s.exercise == exercise).collect();
    let stopped = futures_util::stream::iter(live)
        .map(|s| async move { stop(sessions, &s.id, EndReason::Operator, Some(reason)).await.is_ok() })
        .buffer_unordered(4)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    Ok(stopped)
}

/// Writes what happened to a session's sandbox (and counts it). A failed write is logged: the
/// event is history, not state, and must not undo the step it records.
pub(crate) async fn record_event(sessions: &Sessions, id: &str, kind: SessionEvent, detail: Option<&str>) {
    sessions.metrics.session_events.with_label_values(&[kind.as_str()]).inc();
    if let Err(e) = sessions.store.insert_session_event(id, kind, detail).await {
        tracing::warn!(session = %id, event = kind.as_str(), error = %format!("{e:#}"), "could not record a session event");
    }
}

/// Records activity: pushes the idle deadline.
pub async fn touch(sessions: &Sessions, id: &str) -> Result<(), SessionError> {
    if sessions.store.touch_session(id, now_ms()).await? {
        return Ok(());
    }
    match sessions.store.session(id).await? {
        None => Err(SessionError::NotFound(id.to_string())),
        Some(_) => Err(SessionError::NotLive(id.to_string())),
    }
}
