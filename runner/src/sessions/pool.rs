//! Warm pools: per exercise, sandboxes made ahead of time (fresh workspace, starting files
//! seeded, IDE agent answering) so that a new learner's session is a database write instead of
//! a container start (docs/ARCHITECTURE.md, "Warm pools").
//!
//! - **Claim** ([`claim`]): a new learner (no workspace for the exercise yet) takes the oldest
//!   ready sandbox of the exercise's current image. One transaction deletes its row, gives the
//!   learner its workspace and inserts the session naming its container; two claimers never get
//!   the same one. Returning learners are not served from the pool: they get their own files
//!   (a cold start on their workspace).
//! - **Rounds** ([`run`]): every `RUNNER_POOL_INTERVAL_SECS`, and at once after a claim, a
//!   publish or a pooled sandbox's death, the pool is compared with what it should be
//!   ([`plan`], pure): sandboxes of an old version, dead or unhealthy ones, ones a crashed runner
//!   left half-made and ones beyond the target are discarded; the rest is topped up to the
//!   target (recent claims per minute, between the exercise's `min` and `max`) within the start
//!   slots (one is always left to learners), the live-session cap (pooled sandboxes count against
//!   it) and the host's memory (`RUNNER_POOL_MEMORY_RESERVE_MB`).
//! - **Pressure**: a learner who would meet the session cap takes the place of a pooled sandbox
//!   ([`evict_one`]), and pooled sandboxes go first when the host's free memory falls below the
//!   reserve.
//! - **Restarts**: rows are the intent. A row in `starting` whose lease expired (its runner died
//!   making it) is discarded; a ready row whose container runs is kept as it is; a pooled
//!   container no row and no live session names is an orphan for the reconciler.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Sessions, START_LEASE};
use crate::{
    domain::{PoolSpec, SandboxSpec},
    engine::{self, ExecRequest, FoundSandbox, Purpose, SandboxOwner, WorkspaceMount},
    exercises::{self, ExerciseSpec},
    lifecycle::{Lifecycle, PoolState, SessionEvent},
    store::{now_ms, Claim, ExerciseRecord, PoolRecord, SessionRecord},
};

/// How long a sandbox may take from start to its agent answering before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The window of "recent claims" the pool size follows.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);

/// The pools' state in this process: what it is making, recent claims, exercises backing off.
#[derive(Default)]
pub struct Pools {
    /// Wakes the filler: a claim, a publish, a pooled sandbox that died.
    pub changed: Notify,
    /// Pooled sandboxes this process is making right now: pool id → exercise (its row may not
    /// be written yet).
    filling: Mutex<HashMap<String, String>>,
    /// Claim times per exercise within [`DEMAND_WINDOW`].
    claims: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Exercises whose pooled sandboxes failed to start: not filled again before the instant.
    backoff: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Pools {
    fn recent_claims(&self, exercise: &str) -> u32 {
        let mut claims = self.claims.lock().expect("lock");
        let Some(q) = claims.get_mut(exercise) else { return 0 };
        while q.front().is_some_and(|t| t.elapsed() > DEMAND_WINDOW) {
            q.pop_front();
        }
        q.len() as u32
    }

    fn claimed(&self, exercise: &str) {
        self.claims.lock().expect("lock").entry(exercise.to_string()).or_default().push_back(Instant::now());
        self.changed.notify_one();
    }

    fn backing_off(&self, exercise: &str) -> bool {
        self.backoff.lock().expect("lock").get(exercise).is_some_and(|(until, _)| Instant::now() < *until)
    }

    fn failed(&self, exercise: &str) {
        let mut b = self.backoff.lock().expect("lock");
        let failures = b.get(exercise).map(|(_, n)| n + 1).unwrap_or(1);
        let wait = Duration::from_secs(5 * 2u64.pow(failures.min(6) - 1)).min(Duration::from_secs(300));
        b.insert(exercise.to_string(), (Instant::now() + wait, failures));
    }

    fn succeeded(&self, exercise: &str) {
        self.backoff.lock().expect("lock").remove(exercise);
    }

    /// Pool ids being made here: the reconciler and the pool's own plan leave them alone.
    pub fn in_flight(&self) -> HashMap<String, String> {
        self.filling.lock().expect("lock").clone()
    }
}

// ---- what operators see ----

/// One exercise's pool as `GET /v1/pools` and the dashboard show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    pub exercise: String,
    pub min: u32,
    pub max: u32,
    /// What the pool is filled to now: claims in the last minute, between min and max.
    pub target: u32,
    pub ready: u32,
    pub starting: u32,
    /// Claims in the last minute (seen by this runner).
    pub recent_claims: u32,
    /// Pooled sandboxes failed to start lately: the pool waits before trying again.
    pub backing_off: bool,
    /// Since this runner started: new learners served from the pool, new learners who found it
    /// empty (cold starts), returning learners (cold starts on their own workspace).
    pub hits: u64,
    pub misses: u64,
    pub returning: u64,
}

/// Every exercise with a pool, or with pooled sandboxes left, by slug.
pub async fn status(sessions: &Sessions) -> anyhow::Result<Vec<PoolStatus>> {
    let rows = sessions.store.pooled().await?;
    let mut out = vec![];
    for e in sessions.store.exercises().await? {
        let spec: ExerciseSpec = serde_json::from_str(&e.spec)?;
        let pool = spec.effective_pool(&sessions.settings);
        let mine: Vec<&PoolRecord> = rows.iter().filter(|r| r.exercise == e.slug).collect();
        if pool.max == 0 && mine.is_empty() {
            continue;
        }
        let recent = sessions.pools.recent_claims(&e.slug);
        let count = |st: PoolState| mine.iter().filter(|r| r.state == st).count() as u32;
        out.push(PoolStatus {
            exercise: e.slug.clone(),
            min: pool.min,
            max: pool.max,
            target: if e.image.is_empty() { 0 } else { pool.target(recent) },
            ready: count(PoolState::Ready),
            starting: count(PoolState::Starting),
            recent_claims: recent,
            backing_off: sessions.pools.backing_off(&e.slug),
            hits: sessions.metrics.pool_claims.with_label_values(&[&e.slug, "hit"]).get(),
            misses: sessions.metrics.pool_claims.with_label_values(&[&e.slug, "miss"]).get(),
            returning: sessions.metrics.pool_claims.with_label_values(&[&e.slug, "returning"]).get(),
        });
    }
    out.sort_by(|a, b| a.exercise.cmp(&b.exercise));
    Ok(out)
}

// ---- claims ----

/// Gives a new learner a ready pooled sandbox of the exercise's current image, when there is
/// one. `Ok(None)`: a cold start is needed (no pool, an empty pool, or a returning learner).
pub(super) async fn claim(
    sessions: &Arc<Sessions>,
    exercise: &ExerciseRecord,
    template: &SessionRecord,
    requested_at: Instant,
) -> anyhow::Result<Option<Claim>> {
    let spec: ExerciseSpec = serde_json::from_str(&exercise.spec)?;
    if spec.effective_pool(&sessions.settings).max == 0 && !has_ready(sessions, &exercise.slug).await? {
        return Ok(None);
    }
    let outcome = sessions.store.claim_pooled(&exercise.image, template).await?;
    let label = match &outcome {
        Claim::Claimed(..) => "hit",
        Claim::Empty => "miss",
        Claim::HasWorkspace => "returning",
        Claim::LiveSession => return Ok(Some(outcome)),
    };
    sessions.metrics.pool_claims.with_label_values(&[&exercise.slug, label]).inc();
    let Claim::Claimed(session, pooled) = outcome else {
        if label == "miss" {
            sessions.pools.claimed(&exercise.slug); // demand: the pool should have had one
        }
        return Ok(None);
    };
    sessions.pools.claimed(&exercise.slug);
    let elapsed = requested_at.elapsed().as_secs_f64();
    sessions.metrics.pool_claim_seconds.with_label_values(&[&exercise.slug]).observe(elapsed);
    // Its agent answered when it was pooled: ready now.
    sessions
        .metrics
        .session_ready_seconds
        .with_label_values(&[sessions.settings.runtime.as_str(), "pool"])
        .observe(elapsed);
    // A pooled sandbox that died since the last round must not be handed out dead: the learner's
    // session is made to run on it (it is theirs now, as after any crash).
    let container = session.container_id.clone().unwrap_or_default();
    match sessions.engine.container_status(&container).await {
        Ok(Some(s)) if s.running => {}
        _ => {
            tracing::warn!(session = %session.id, %container, "a claimed pooled sandbox was not running; starting it again");
            if sessions.engine.start_container(&container).await.is_err() {
                sessions.pools.changed.notify_one();
            }
        }
    }
    tracing::info!(session = %session.id, learner = %session.learner, exercise = %session.exercise,
        pooled = %pooled.id, ms = requested_at.elapsed().as_millis() as u64, "session started from the warm pool");
    super::record_event(sessions, &session.id, SessionEvent::Started, Some("from the warm pool")).await;
    Ok(Some(Claim::Claimed(session, pooled)))
}

async fn has_ready(sessions: &Sessions, exercise: &str) -> anyhow::Result<bool> {
    Ok(sessions.store.pooled().await?.iter().any(|p| p.exercise == exercise && p.state == PoolState::Ready))
}

/// Makes room for a learner at the session cap: discards one pooled sandbox (the newest, of the
/// exercise with the most). Whether there was one.
pub(super) async fn evict_one(sessions: &Sessions, reason: &'static str) -> anyhow::Result<bool> {
    let rows = sessions.store.pooled().await?;
    let mut per: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        *per.entry(r.exercise.as_str()).or_default() += 1;
    }
    let victim = rows.iter().rev().max_by_key(|r| per[r.exercise.as_str()]);
    match victim {
        Some(v) => Ok(discard(sessions, v, reason).await),
        None => Ok(false),
    }
}

// ---- the plan ----

/// One step of a pool round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Remove it unclaimed (container, workspace, row), for the reason given.
    Discard { pool: String, reason: &'static str },
    /// Make this many more for the exercise.
    Fill { exercise: String, count: u32, target: u32 },
}

/// What a round does, from the pooled rows, the exercises (slug → current image and pool), what
/// the engine has, what this process is making (pool id → exercise; its row may not exist yet),
/// recent claims and the time: pure, so every case is a unit test. Capacity (slots, the session
/// cap, memory) is the executor's to apply.
pub fn plan(
    rows: &[PoolRecord],
    exercises: &HashMap<String, (String, PoolSpec)>,
    observed: &[FoundSandbox],
    in_flight: &HashMap<String, String>,
    recent_claims: &dyn Fn(&str) -> u32,
    now: i64,
) -> Vec<PoolAction> {
    let containers: HashMap<&str, &FoundSandbox> =
        observed.iter().filter_map(|c| c.pool_id.as_deref().map(|p| (p, c))).collect();
    let mut actions = vec![];
    let mut kept: HashMap<&str, Vec<&PoolRecord>> = HashMap::new();
    for r in rows {
        let current = exercises.get(&r.exercise);
        let reason = match (current, r.state) {
            _ if in_flight.contains_key(&r.id) => None,
            (None, _) => Some("exercise_gone"),
            (Some((image, _)), _) if image != &r.image => Some("old_version"),
            (Some((_, pool)), _) if pool.max == 0 => Some("pool_off"),
            (_, PoolState::Starting) if r.lease_until < now => Some("abandoned"),
            (_, PoolState::Starting) => None,
            (_, PoolState::Ready) => match containers.get(r.id.as_str()) {
                None => Some("vanished"),
                Some(c) if !c.running => Some("died"),
                Some(c) if c.unhealthy => Some("unhealthy"),
                Some(_) => None,
            },
        };
        match reason {
            Some(reason) => actions.push(PoolAction::Discard { pool: r.id.clone(), reason }),
            None => kept.entry(r.exercise.as_str()).or_default().push(r),
        }
    }
    // Being made here, before its row is written: on its way all the same.
    let rowless: Vec<&String> =
        in_flight.iter().filter(|(id, _)| !rows.iter().any(|r| &&r.id == id)).map(|(_, e)| e).collect();
    let mut slugs: Vec<&String> = exercises.keys().collect();
    slugs.sort();
    for slug in slugs {
        let (_, pool) = &exercises[slug];
        if pool.max == 0 {
            continue;
        }
        let target = pool.target(recent_claims(slug)) as usize;
        let have = kept.get(slug.as_str()).map(Vec::as_slice).unwrap_or_default();
        let coming = rowless.iter().filter(|e| **e == slug).count();
        if have.len() + coming > target {
            // Shrink by the newest ready ones (the oldest are claimed first and go on waiting).
            let excess = have.len() + coming - target;
            for r in have.iter().rev().filter(|r| r.state == PoolState::Ready).take(excess) {
                actions.push(PoolAction::Discard { pool: r.id.clone(), reason: "above_target" });
            }
        } else if have.len() + coming < target {
            let count = (target - have.len() - coming) as u32;
            actions.push(PoolAction::Fill { exercise: slug.clone(), count, target: target as u32 });
        }
    }
    actions
}

// ---- rounds ----

pub async fn run(sessions: Arc<Sessions>, cancel: CancellationToken) {
    let mut fills = tokio::task::JoinSet::new();
    loop {
        if let Err(e) = round(&sessions, &cancel, &mut fills).await {
            tracing::warn!(error = %format!("{e:#}"), "pool round failed; will retry");
        }
        while fills.try_join_next().is_some() {}
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = sessions.pools.changed.notified() => {}
            _ = tokio::time::sleep(sessions.settings.pool_interval) => {}
        }
    }
    // Fills in flight see the cancellation and end (a sandbox half made is removed again, or its
    // `starting` row is discarded after a restart); a stopping runner waits for them.
    let _ = tokio::time::timeout(READY_TIMEOUT, async { while fills.join_next().await.is_some() {} }).await;
}

/// Host memory available now (`MemAvailable`), in MiB; `None` where it cannot be read.
fn available_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb / 1024)
}

/// One round: discard what must go, fill what is missing within capacity, publish the gauges.
pub async fn round(
    sessions: &Arc<Sessions>,
    cancel: &CancellationToken,
    fills: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let rows = sessions.store.pooled().await?;
    let mut exercises = HashMap::new();
    for e in sessions.store.exercises().await? {
        if e.image.is_empty() {
            continue;
        }
        let spec: ExerciseSpec = serde_json::from_str(&e.spec)?;
        exercises.insert(e.slug.clone(), (e.image.clone(), spec.effective_pool(&sessions.settings)));
    }
    if rows.is_empty() && exercises.values().all(|(_, p)| p.max == 0) {
        sessions.metrics.pool_sandboxes.reset();
        return Ok(());
    }
    let mut observed = sessions.engine.list_sandboxes().await?;
    sessions.health.mark(&mut observed);
    let in_flight = sessions.pools.in_flight();
    let actions = plan(&rows, &exercises, &observed, &in_flight, &|e| sessions.pools.recent_claims(e), now_ms());
    let by_id: HashMap<&str, &PoolRecord> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut remaining = rows.len() as i64;
    for a in &actions {
        if let PoolAction::Discard { pool, reason } = a {
            if discard(sessions, by_id[pool.as_str()], reason).await {
                remaining -= 1;
            }
        }
    }
    // Memory pressure: pooled sandboxes are the first to go.
    let reserve = sessions.settings.pool_memory_reserve_mb;
    let mut free = available_memory_mb();
    if free.is_some_and(|f| f < reserve) && remaining > 0 {
        evict_one(sessions, "memory_pressure").await?;
        free = Some(0);
    }
    let mut total = sessions.store.count_live_sessions().await? + remaining;
    'fill: for a in &actions {
        let PoolAction::Fill { exercise, count, target } = a else { continue };
        if sessions.draining.lock().expect("lock").is_some() || sessions.pools.backing_off(exercise) {
            continue;
        }
        let Some(record) = sessions.store.exercise(exercise).await? else { continue };
        let spec = exercises::sandbox_spec(&sessions.settings, &record)?;
        for _ in 0..*count {
            if total >= sessions.settings.max_live_sessions as i64 {
                break 'fill;
            }
            if let Some(f) = free {
                if f < reserve + spec.limits.memory_mb {
                    break 'fill;
                }
                free = Some(f - spec.limits.memory_mb);
            }
            // Learners come first: one start slot is always left to them.
            if sessions.start_slots.available_permits() <= 1 && sessions.settings.max_concurrent_starts > 1 {
                break 'fill;
            }
            let Ok(permit) = sessions.start_slots.clone().try_acquire_owned() else {
                break 'fill;
            };
            total += 1;
            let id = uuid::Uuid::new_v4().simple().to_string();
            sessions.pools.filling.lock().expect("lock").insert(id.clone(), exercise.clone());
            let sessions = sessions.clone();
            let (record, spec, target, cancel) = (record.clone(), spec.clone(), *target, cancel.clone());
            fills.spawn(async move {
                let _permit = permit;
                fill_one(&sessions, &id, &record, spec, target, &cancel).await;
                sessions.pools.filling.lock().expect("lock").remove(&id);
            });
        }
    }
    publish_gauges(sessions).await
}

async fn publish_gauges(sessions: &Sessions) -> anyhow::Result<()> {
    let rows = sessions.store.pooled().await?;
    let gauge = &sessions.metrics.pool_sandboxes;
    gauge.reset();
    for r in &rows {
        gauge.with_label_values(&[&r.exercise, r.state.as_str()]).inc();
    }
    Ok(())
}

/// Makes one pooled sandbox: row, workspace, container, agent answering, ready.
async fn fill_one(
    sessions: &Arc<Sessions>,
    id: &str,
    exercise: &ExerciseRecord,
    mut spec: SandboxSpec,
    target: u32,
    cancel: &CancellationToken,
) {
    let now = now_ms();
    let row = PoolRecord {
        id: id.to_string(),
        exercise: exercise.slug.clone(),
        image: exercise.image.clone(),
        spec: String::new(),
        volume: crate::workspaces::pool_volume_name(id),
        size_mb: spec.limits.workspace_mb as i64,
        state: PoolState::Starting,
        container_id: None,
        created_at: now,
        ready_at: None,
        lease_until: now + START_LEASE.as_millis() as i64,
    };
    let made = async {
        spec.ide = match sessions.engine.image(&spec.image).await? {
            Some(image) => image.labels.contains_key(engine::LABEL_BASE),
            None => anyhow::bail!("the image {} is not on the engine", spec.image),
        };
        let row = PoolRecord { spec: serde_json::to_string(&spec)?, ..row.clone() };
        if !sessions.store.insert_pooled(&row, target).await? {
            return Ok(None); // another replica filled the pool meanwhile
        }
        sessions.workspaces.prepare_pooled(&row.volume, spec.limits.workspace_mb).await?;
        let owner = SandboxOwner {
            instance: sessions.engine.instance(),
            purpose: Purpose::Pool(id),
            learner: "",
            exercise: &row.exercise,
        };
        let container = sessions
            .engine
            .create_sandbox(
                &spec,
                &owner,
                WorkspaceMount::Volume(&row.volume),
                sessions.settings.runtime,
                &sessions.settings.sandbox_user,
            )
            .await?;
        anyhow::ensure!(!cancel.is_cancelled(), "the runner is stopping");
        let started = Instant::now();
        sessions.engine.start_container(&container).await?;
        if spec.ide {
            tokio::select! {
                ready = wait_ready(sessions, &container, READY_TIMEOUT) => ready?,
                _ = cancel.cancelled() => anyhow::bail!("the runner is stopping"),
            }
        }
        anyhow::Ok(Some((row, container, started.elapsed())))
    }
    .await;
    match made {
        Ok(None) => {}
        Ok(Some((row, container, took))) => match sessions.store.mark_pooled_ready(id, &container).await {
            Ok(true) => {
                sessions.pools.succeeded(&row.exercise);
                tracing::info!(pooled = %id, exercise = %row.exercise, ms = took.as_millis() as u64, "pooled sandbox ready");
            }
            _ => {
                // Discarded meanwhile (a publish, a trim): nothing may keep its container.
                discard_parts(sessions, id, &row.volume).await;
            }
        },
        Err(_) if cancel.is_cancelled() => {
            let _ = sessions.store.delete_pooled(id).await;
            discard_parts(sessions, id, &row.volume).await;
        }
        Err(e) => {
            sessions.pools.failed(&exercise.slug);
            tracing::warn!(pooled = %id, exercise = %exercise.slug, error = %format!("{e:#}"),
                "a pooled sandbox did not start; the pool backs off");
            sessions.metrics.pool_discarded.with_label_values(&["failed"]).inc();
            let _ = sessions.store.delete_pooled(id).await;
            discard_parts(sessions, id, &row.volume).await;
        }
    }
    publish_gauges(sessions).await.ok();
}

/// Removes a pooled sandbox unclaimed. Its row goes first: that is the atomic step a claim
/// races with, so a sandbox a learner just claimed is never removed. Whether it was removed.
async fn discard(sessions: &Sessions, row: &PoolRecord, reason: &'static str) -> bool {
    match sessions.store.delete_pooled(&row.id).await {
        Ok(true) => {}
        Ok(false) => return false, // claimed or discarded meanwhile
        Err(e) => {
            tracing::warn!(pooled = %row.id, error = %format!("{e:#}"), "could not discard a pooled sandbox");
            return false;
        }
    }
    tracing::info!(pooled = %row.id, exercise = %row.exercise, reason, "discarded a pooled sandbox");
    sessions.metrics.pool_discarded.with_label_values(&[reason]).inc();
    discard_parts(sessions, &row.id, &row.volume).await;
    true
}

/// The container and workspace of a pooled sandbox whose row is gone. What fails here is left to
/// the reconciler (an orphan container, an orphan volume).
async fn discard_parts(sessions: &Sessions, id: &str, volume: &str) {
    let name = engine::pool_sandbox_name(sessions.engine.instance(), id);
    if let Err(e) = sessions.engine.remove_container(&name).await {
        tracing::warn!(pooled = %id, error = %format!("{e:#}"), "could not remove a pooled sandbox's container");
        return;
    }
    if let Err(e) = sessions.workspaces.destroy(volume).await {
        tracing::warn!(pooled = %id, error = %format!("{e:#}"), "could not remove a pooled sandbox's workspace");
    }
}

/// Waits until the sandbox's IDE agent answers (and no service of the exercise is stuck), with
/// one exec that polls inside the sandbox (`ide-agent health --wait-ms`); an older agent that
/// checks once is asked again until `within` has passed.
pub async fn wait_ready(sessions: &Sessions, container: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let cmd = vec![
            crate::ide::AGENT_BIN.to_string(),
            "health".to_string(),
            "--wait-ms".to_string(),
            left.as_millis().to_string(),
        ];
        let mut req = ExecRequest::new(cmd, &sessions.settings.sandbox_user);
        req.deadline = left + Duration::from_secs(2);
        req.max_output = 4096;
        let out = sessions.engine.exec(container, req).await;
        match out {
            Ok(o) if o.exit_code == 0 => return Ok(()),
            Ok(o) if Instant::now() >= deadline => {
                anyhow::bail!("the IDE agent did not answer within {within:?}: {}", o.output.trim())
            }
            Err(e) if Instant::now() >= deadline => return Err(e.context("waiting for the IDE agent")),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, exercise: &str, image: &str, state: PoolState, lease_until: i64) -> PoolRecord {
        PoolRecord {
            id: id.into(),
            exercise: exercise.into(),
            image: image.into(),
            spec: "{}".into(),
            volume: format!("v-{id}"),
            size_mb: 8,
            state,
            container_id: Some(format!("c-{id}")),
            created_at: 0,
            ready_at: Some(0),
            lease_until,
        }
    }

    fn up(pool: &str) -> FoundSandbox {
        FoundSandbox {
            id: format!("c-{pool}"),
            session_id: None,
            pool_id: Some(pool.into()),
            running: true,
            unhealthy: false,
            probe: None,
        }
    }

    fn ex(pairs: &[(&str, &str, u32, u32)]) -> HashMap<String, (String, PoolSpec)> {
        pairs
            .iter()
            .map(|(s, i, min, max)| (s.to_string(), (i.to_string(), PoolSpec { min: *min, max: *max })))
            .collect()
    }

    fn none() -> HashMap<String, String> {
        HashMap::new()
    }

    #[test]
    fn an_empty_pool_is_filled_to_its_minimum_and_follows_demand_up_to_its_maximum() {
        let exercises = ex(&[("a", "img:1", 2, 5), ("b", "img:2", 0, 0)]);
        assert_eq!(
            plan(&[], &exercises, &[], &none(), &|_| 0, 0),
            vec![PoolAction::Fill { exercise: "a".into(), count: 2, target: 2 }]
        );
        // Four claims in the last minute: keep four ready; forty: the maximum.
        assert_eq!(
            plan(&[], &exercises, &[], &none(), &|_| 4, 0),
            vec![PoolAction::Fill { exercise: "a".into(), count: 4, target: 4 }]
        );
        assert_eq!(
            plan(&[], &exercises, &[], &none(), &|_| 40, 0),
            vec![PoolAction::Fill { exercise: "a".into(), count: 5, target: 5 }]
        );
    }

    #[test]
    fn a_new_version_drains_the_old_ones_pool_and_fills_with_the_new() {
        let exercises = ex(&[("a", "img:2", 1, 1)]);
        let rows = [row("p1", "a", "img:1", PoolState::Ready, 0)];
        assert_eq!(
            plan(&rows, &exercises, &[up("p1")], &none(), &|_| 0, 0),
            vec![
                PoolAction::Discard { pool: "p1".into(), reason: "old_version" },
                PoolAction::Fill { exercise: "a".into(), count: 1, target: 1 },
            ]
        );
    }

    #[test]
    fn dead_vanished_and_unhealthy_pooled_sandboxes_are_replaced_not_kept() {
        let exercises = ex(&[("a", "img", 3, 3)]);
        let rows = [
            row("dead", "a", "img", PoolState::Ready, 0),
            row("gone", "a", "img", PoolState::Ready, 0),
            row("sick", "a", "img", PoolState::Ready, 0),
        ];
        let observed = [FoundSandbox { running: false, ..up("dead") }, FoundSandbox { unhealthy: true, ..up("sick") }];
        assert_eq!(
            plan(&rows, &exercises, &observed, &none(), &|_| 0, 0),
            vec![
                PoolAction::Discard { pool: "dead".into(), reason: "died" },
                PoolAction::Discard { pool: "gone".into(), reason: "vanished" },
                PoolAction::Discard { pool: "sick".into(), reason: "unhealthy" },
                PoolAction::Fill { exercise: "a".into(), count: 3, target: 3 },
            ]
        );
    }

    #[test]
    fn a_start_cut_short_by_a_crash_is_discarded_once_its_lease_ends_but_not_one_in_flight() {
        let exercises = ex(&[("a", "img", 2, 2)]);
        let rows =
            [row("old", "a", "img", PoolState::Starting, 100), row("mine", "a", "img", PoolState::Starting, 100)];
        let in_flight: HashMap<String, String> = [("mine".to_string(), "a".to_string())].into();
        // Before the lease ends both count as on their way.
        assert_eq!(plan(&rows, &exercises, &[], &in_flight, &|_| 0, 50), vec![]);
        assert_eq!(
            plan(&rows, &exercises, &[], &in_flight, &|_| 0, 200),
            vec![
                PoolAction::Discard { pool: "old".into(), reason: "abandoned" },
                PoolAction::Fill { exercise: "a".into(), count: 1, target: 2 },
            ]
        );
    }

    #[test]
    fn a_sandbox_being_made_before_its_row_is_written_counts_and_is_not_made_twice() {
        let exercises = ex(&[("a", "img", 2, 2)]);
        let rows = [row("p1", "a", "img", PoolState::Ready, 0)];
        let in_flight: HashMap<String, String> = [("p2".to_string(), "a".to_string())].into();
        assert_eq!(plan(&rows, &exercises, &[up("p1")], &in_flight, &|_| 0, 0), vec![]);
    }

    #[test]
    fn a_pool_above_its_target_sheds_its_newest_ready_sandboxes() {
        let exercises = ex(&[("a", "img", 1, 4)]);
        let rows = [
            row("p1", "a", "img", PoolState::Ready, 0),
            row("p2", "a", "img", PoolState::Ready, 0),
            row("p3", "a", "img", PoolState::Ready, 0),
        ];
        let observed = [up("p1"), up("p2"), up("p3")];
        assert_eq!(
            plan(&rows, &exercises, &observed, &none(), &|_| 0, 0),
            vec![
                PoolAction::Discard { pool: "p3".into(), reason: "above_target" },
                PoolAction::Discard { pool: "p2".into(), reason: "above_target" },
            ]
        );
    }

    #[test]
    fn a_pool_turned_off_or_an_exercise_removed_is_emptied() {
        let exercises = ex(&[("a", "img", 0, 0)]);
        let rows = [row("p1", "a", "img", PoolState::Ready, 0), row("p2", "gone", "img", PoolState::Ready, 0)];
        assert_eq!(
            plan(&rows, &exercises, &[up("p1"), up("p2")], &none(), &|_| 0, 0),
            vec![
                PoolAction::Discard { pool: "p1".into(), reason: "pool_off" },
                PoolAction::Discard { pool: "p2".into(), reason: "exercise_gone" },
            ]
        );
    }
}
