//! All SQL lives here. One code path for SQLite (the embedded default) and PostgreSQL: runtime
//! queries through `sqlx::Any`, portable SQL, `$n` placeholders (SQLite accepts them too).

mod builds;
mod copies;
mod journal;
mod managed_apps;
mod nodes;
mod outbox;
mod pools;
mod records;
mod runs;
mod runtimes;
mod snapshots;

use std::time::Duration;

use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Row};

pub use copies::WorkspaceCopy;
pub use journal::{AuditEntry, SessionEvent};
pub use managed_apps::{DeployRecord, ManagedAppRecord};
pub use nodes::{Heartbeat, NodeLoad, NodeRecord};
pub use outbox::{Attempt, DeliveryRecord, EventRecord, Subject, WebhookRecord};
pub use pools::{Claim, PoolRecord};
pub use records::{BuildRecord, CheckRecord, ExerciseRecord, SessionRecord, VersionRecord, WorkspaceRecord};
pub use runs::{RunFinish, RunRecord};
pub use runtimes::RuntimeRecord;
pub use snapshots::SnapshotRecord;

use crate::lifecycle::{EndReason, EventType, Lifecycle, SessionState};

/// `<column> IN ('a', 'b')` for states of one lifecycle. The words are the enum's own
/// (`as_str`), never input, so they are written into the statement: binding them instead would
/// renumber the placeholders of every query that uses a list.
fn state_in<L: Lifecycle>(column: &str, states: &[L]) -> String {
    let words = states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
    format!("{column} IN ({words})")
}

/// The condition of a move to `to` from one of `from` (`state IN (…)`). A move that the
/// lifecycle's table (`crate::lifecycle`) does not allow is refused before anything is written.
fn moving<L: Lifecycle>(from: &[L], to: L) -> anyhow::Result<String> {
    if from.is_empty() {
        anyhow::bail!("a {} is never moved to {:?}, only inserted in it", L::NAME, to);
    }
    if let Some(bad) = from.iter().find(|f| !L::can_move(**f, to)) {
        anyhow::bail!("refusing the illegal {} move {:?} → {:?}", L::NAME, bad, to);
    }
    Ok(state_in("state", from))
}

/// How often a read-merge-write of one definition is tried before giving up: each round at least
/// one of the racing writers wins, so this many concurrent writers of one key all get through.
pub const MAX_WRITE_ATTEMPTS: usize = 64;

/// What a compare-and-set write of a definition (exercise, app) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
    /// Another write came between the caller's read and this write; nothing was written.
    Conflict,
}

impl Written {
    fn from(read: Option<i64>, rows: u64) -> Written {
        match (read, rows) {
            (_, 0) => Written::Conflict,
            (None, _) => Written::Created,
            (Some(_), _) => Written::Replaced,
        }
    }
}

/// Writes an exercise if it is still at the revision the caller read (`None`: it did not exist).
async fn write_exercise_in<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    slug: &str,
    image: &str,
    spec: &str,
    read: Option<i64>,
    now: i64,
) -> anyhow::Result<Written> {
    let query = match read {
        None => sqlx::query(
            "INSERT INTO exercises (slug, image, spec, created_at, updated_at, revision) \
             VALUES ($1, $2, $3, $4, $4, 1) ON CONFLICT (slug) DO NOTHING",
        )
        .bind(slug)
        .bind(image)
        .bind(spec)
        .bind(now),
        Some(revision) => sqlx::query(
            "UPDATE exercises SET image = $2, spec = $3, updated_at = $4, revision = revision + 1 \
             WHERE slug = $1 AND revision = $5",
        )
        .bind(slug)
        .bind(image)
        .bind(spec)
        .bind(now)
        .bind(revision),
    };
    Ok(Written::from(read, query.execute(executor).await?.rows_affected()))
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The seq of the newest event this process committed (see `outbox.rs`).
    appended: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
    sqlite: bool,
    /// The fleet node this process drives (`local` on a single host): the queries of "this
    /// node's" sessions, workspaces and pooled sandboxes are scoped to it; the API's reads are not.
    node: std::sync::Arc<str>,
}

pub use crate::lifecycle::LOCAL_NODE;

/// Milliseconds since the epoch, the unit of every time column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The file of a `sqlite:` URL as users write it (`sqlite:///abs/runner.db`, `sqlite://rel.db`,
/// `sqlite:rel.db`), and the URL with `mode=rwc` added when it names no mode, so the file is
/// created on first start. `None` for other databases and in-memory SQLite.
fn sqlite_file(url: &str) -> Option<(std::path::PathBuf, String)> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" || query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=memory")) {
        return None;
    }
    let with_mode = match query {
        Some(q) if q.split('&').any(|kv| kv.starts_with("mode=")) => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    Some((std::path::PathBuf::from(path), with_mode))
}

/// Makes the database file's directory when its parent exists; otherwise says, in plain words,
/// what is missing (a mistyped path should not silently grow a tree of directories).
fn prepare_sqlite_dir(path: &std::path::Path) -> anyhow::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    if dir.is_dir() {
        return Ok(());
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => anyhow::bail!(
            "the database {} cannot be created: neither its directory {} nor that directory's parent {} exists \
             (create them, or point RUNNER_DATABASE_URL or RUNNER_DATA_DIR elsewhere)",
            path.display(),
            dir.display(),
            parent.display()
        ),
        _ => std::fs::create_dir(dir).with_context(|| format!("creating the database's directory {}", dir.display())),
    }
}

/// What went wrong connecting, for people: the database's own message without driver internals.
fn plain_connect_error(url: &str, e: &sqlx::Error) -> String {
    let what = match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "no connection within 10 s (is the server up and reachable?)".into(),
        other => other.to_string(),
    };
    if url.starts_with("sqlite:") {
        format!("cannot open the SQLite database ({what}): check that its directory exists and is writable")
    } else {
        format!("cannot connect to the database named by RUNNER_DATABASE_URL: {what}")
    }
}

/// What [`Store::erase_learner`] deleted, by kind.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ErasedRecords {
    pub sessions: u64,
    pub checks: u64,
    pub session_events: u64,
    pub events: u64,
    pub workspaces: u64,
    /// One-shot runs made for them (`"learner"` in `POST /v1/runs`), outputs included.
    pub runs: u64,
}

#[derive(Debug, Default)]
pub struct SessionFilter {
    pub learner: Option<String>,
    pub exercise: Option<String>,
    /// Any of these states; empty: every state.
    pub states: Vec<SessionState>,
    pub limit: i64,
}

impl Store {
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let normalized;
        let url = match sqlite_file(url) {
            Some((path, with_mode)) => {
                prepare_sqlite_dir(&path)?;
                normalized = with_mode;
                normalized.as_str()
            }
            None => url,
        };
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL lets readers run beside the writer; writers wait instead of failing.
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        // Deleted rows are overwritten, not left in free pages: an erased
                        // learner's data does not stay in the file.
                        sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("{}", plain_connect_error(url, &e)))?;
        MIGRATOR.run(&pool).await.context("running database migrations")?;
        let store = Store {
            pool,
            appended: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            sqlite: is_sqlite,
            node: LOCAL_NODE.into(),
        };
        let last = store.last_event_seq().await?;
        store.appended(last);
        Ok(store)
    }

    /// The same store, for the runner of fleet node `node`.
    pub fn for_node(mut self, node: &str) -> Store {
        self.node = node.into();
        self
    }

    /// The fleet node this process drives.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- exercises ----

    /// Writes an exercise if it is still at the revision the caller read (`None`: there was
    /// none); on `Written::Conflict` the caller reads, merges and writes again.
    pub async fn write_exercise(
        &self,
        slug: &str,
        image: &str,
        spec: &str,
        read: Option<i64>,
    ) -> anyhow::Result<Written> {
        write_exercise_in(&self.pool, slug, image, spec, read, now_ms()).await
    }

    pub async fn exercise(&self, slug: &str) -> anyhow::Result<Option<ExerciseRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM exercises WHERE slug = $1", ExerciseRecord::COLUMNS))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| ExerciseRecord::from_row(&r)).transpose()
    }

    pub async fn exercises(&self) -> anyhow::Result<Vec<ExerciseRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM exercises ORDER BY slug", ExerciseRecord::COLUMNS))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ExerciseRecord::from_row).collect()
    }

    // ---- sessions ----

    /// Inserts a new `starting` session. Returns `None` when the learner already has a live
    /// session for the exercise (the unique index decided the race).
    pub async fn insert_session(&self, s: &SessionRecord) -> anyhow::Result<Option<()>> {
        let result = sqlx::query(
            "INSERT INTO sessions (id, learner, exercise, image, spec, state, created_at, last_activity_at, node, \
             memory_mb) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.id)
        .bind(&s.learner)
        .bind(&s.exercise)
        .bind(&s.image)
        .bind(&s.spec)
        .bind(s.state.as_str())
        .bind(s.created_at)
        .bind(s.last_activity_at)
        .bind(&s.node)
        .bind(s.memory_mb)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Some(())),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn session(&self, id: &str) -> anyhow::Result<Option<SessionRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM sessions WHERE id = $1", SessionRecord::COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| SessionRecord::from_row(&r)).transpose()
    }

    pub async fn live_session_for(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM sessions WHERE learner = $1 AND exercise = $2 AND {}",
            SessionRecord::COLUMNS,
            state_in("state", SessionState::LIVE)
        ))
        .bind(learner)
        .bind(exercise)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| SessionRecord::from_row(&r)).transpose()
    }

    pub async fn sessions(&self, f: &SessionFilter) -> anyhow::Result<Vec<SessionRecord>> {
        // Placeholders are numbered in the order the optional filters appear.
        let mut sql = format!("SELECT {} FROM sessions WHERE 1 = 1", SessionRecord::COLUMNS);
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if f.learner.is_some() {
            sql += &format!(" AND learner = ${}", next());
        }
        if f.exercise.is_some() {
            sql += &format!(" AND exercise = ${}", next());
        }
        if !f.states.is_empty() {
            sql += &format!(" AND {}", state_in("state", &f.states));
        }
        sql += &format!(" ORDER BY created_at DESC, id LIMIT ${}", next());
        let mut q = sqlx::query(&sql);
        if let Some(v) = &f.learner {
            q = q.bind(v);
        }
        if let Some(v) = &f.exercise {
            q = q.bind(v);
        }
        let rows = q.bind(f.limit).fetch_all(&self.pool).await?;
        rows.iter().map(SessionRecord::from_row).collect()
    }

    /// This node's unfinished sessions.
    pub async fn live_sessions(&self) -> anyhow::Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM sessions WHERE node = $1 AND {}",
            SessionRecord::COLUMNS,
            state_in("state", SessionState::UNFINISHED)
        ))
        .bind(&*self.node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SessionRecord::from_row).collect()
    }

    /// This node's live sessions.
    pub async fn count_live_sessions(&self) -> anyhow::Result<i64> {
        let sql =
            format!("SELECT COUNT(*) AS n FROM sessions WHERE node = $1 AND {}", state_in("state", SessionState::LIVE));
        let row = sqlx::query(&sql).bind(&*self.node).fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    pub async fn count_sessions_by_state(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM sessions GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?))).collect()
    }

    /// This node's sessions idle since before `idle_before` or created before `created_before`.
    pub async fn expired_sessions(&self, idle_before: i64, created_before: i64) -> anyhow::Result<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM sessions WHERE {} AND (last_activity_at < $1 OR created_at < $2) AND node = $3",
            SessionRecord::COLUMNS,
            state_in("state", SessionState::LIVE)
        ))
        .bind(idle_before)
        .bind(created_before)
        .bind(&*self.node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SessionRecord::from_row).collect()
    }

    /// Moves a session between states, only from one of `from` (each a legal source of `to`).
    /// Returns false when the session was not in one of them (someone else moved it first).
    /// `end` says why it ends (kept from the move to `stopping` to the move to `stopped`); a move
    /// to an ended state appends `session.ended` in the same transaction.
    pub async fn transition(
        &self,
        id: &str,
        from: &[SessionState],
        to: SessionState,
        reason: Option<&str>,
        end: Option<EndReason>,
    ) -> anyhow::Result<bool> {
        let ended = to.is_ended().then(now_ms);
        let sql = format!(
            "UPDATE sessions SET state = $1, failure_reason = COALESCE($2, failure_reason), \
             ended_at = COALESCE($3, ended_at), end_reason = COALESCE($5, end_reason) WHERE id = $4 AND {}",
            moving(from, to)?
        );
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(reason)
            .bind(ended)
            .bind(id)
            .bind(end.map(EndReason::as_str))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let mut seq = None;
        if to.is_ended() {
            let facts = outbox::session_facts(&mut tx, id).await?;
            let why = facts.end_reason.as_deref().and_then(EndReason::parse).unwrap_or(match to {
                SessionState::Failed => EndReason::Failed,
                _ => EndReason::Deleted,
            });
            let data = serde_json::json!({
                "session": id,
                "learner": facts.subject.learner,
                "exercise": facts.subject.exercise,
                "version": facts.version,
                "state": to,
                "reason": why,
                "detail": facts.failure_reason,
            });
            seq = Some(outbox::append(&mut tx, EventType::SessionEnded, &facts.subject, data).await?);
        }
        tx.commit().await?;
        if let Some(seq) = seq {
            self.appended(seq);
        }
        Ok(true)
    }

    /// Records the container of a live session and marks it running. A session's idle time
    /// counts from when its sandbox runs: a slow start is not the learner's idleness. Its first
    /// move from `starting` appends `session.running` in the same transaction.
    pub async fn mark_running(&self, id: &str, container_id: &str) -> anyhow::Result<bool> {
        let to = SessionState::Running;
        let mut tx = self.pool.begin().await?;
        // Written first, so SQLite takes its write lock at once; it says whether this is the
        // first move to running.
        let first = sqlx::query(&format!(
            "UPDATE sessions SET state = $1, container_id = $2, last_activity_at = \
             CASE WHEN last_activity_at < $3 THEN $3 ELSE last_activity_at END WHERE id = $4 AND {}",
            moving(&[SessionState::Starting], to)?
        ))
        .bind(to.as_str())
        .bind(container_id)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !first {
            let sql = format!(
                "UPDATE sessions SET state = $1, container_id = $2 WHERE id = $3 AND {}",
                moving(&[SessionState::Running], to)?
            );
            let n = sqlx::query(&sql)
                .bind(to.as_str())
                .bind(container_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            return Ok(n == 1);
        }
        let seq = outbox::append_session_running(&mut tx, id).await?;
        tx.commit().await?;
        self.appended(seq);
        Ok(true)
    }

    /// Takes the start lease of a live session until `until` (ms), unless another holder's lease
    /// is still running. Whoever holds it is the only one starting that sandbox.
    pub async fn claim_start(&self, id: &str, now: i64, until: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "UPDATE sessions SET start_lease_until = $1 WHERE id = $2 AND {} \
             AND (start_lease_until IS NULL OR start_lease_until < $3)",
            state_in("state", SessionState::LIVE)
        );
        let n = sqlx::query(&sql).bind(until).bind(id).bind(now).execute(&self.pool).await?.rows_affected();
        Ok(n == 1)
    }

    pub async fn release_start(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE sessions SET start_lease_until = NULL WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Gives up every start lease of this node's sessions: for a fleet node's runner at its
    /// start, the only runner of its node, so any such lease is a stopped runner's. How many.
    pub async fn release_start_leases_here(&self) -> anyhow::Result<u64> {
        let n = sqlx::query(
            "UPDATE sessions SET start_lease_until = NULL WHERE node = $1 AND start_lease_until IS NOT NULL",
        )
        .bind(&*self.node)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Sessions whose sandbox some replica is starting right now (an unexpired start lease).
    pub async fn leased_starts(&self, now: i64) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM sessions WHERE start_lease_until >= $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("id")?)).collect()
    }

    /// Pushes the idle deadline of a live session; false when it is not live.
    pub async fn touch_session(&self, id: &str, at: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "UPDATE sessions SET last_activity_at = $1 WHERE id = $2 AND {} AND last_activity_at < $1",
            state_in("state", SessionState::LIVE)
        );
        let n = sqlx::query(&sql).bind(at).bind(id).execute(&self.pool).await?.rows_affected();
        if n == 1 {
            return Ok(true);
        }
        Ok(self.session(id).await?.is_some_and(|s| s.state.is_live()))
    }

    // ---- workspaces ----

    /// The workspace of a learner and exercise, created when missing; marks it used now.
    pub async fn claim_workspace(
        &self,
        learner: &str,
        exercise: &str,
        volume: &str,
        size_mb: i64,
    ) -> anyhow::Result<WorkspaceRecord> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO workspaces (learner, exercise, volume, size_mb, created_at, last_used_at, node) \
             VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (learner, exercise) DO NOTHING",
        )
        .bind(learner)
        .bind(exercise)
        .bind(volume)
        .bind(size_mb)
        .bind(now)
        .bind(&*self.node)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            // A workspace recorded on another fleet node moves here (that node was drained or
            // lost): this node's disk holds it from now on.
            sqlx::query("UPDATE workspaces SET last_used_at = $1, node = $4 WHERE learner = $2 AND exercise = $3")
                .bind(now)
                .bind(learner)
                .bind(exercise)
                .bind(&*self.node)
                .execute(&self.pool)
                .await?;
        }
        let row = sqlx::query(&format!(
            "SELECT {} FROM workspaces WHERE learner = $1 AND exercise = $2",
            WorkspaceRecord::COLUMNS
        ))
        .bind(learner)
        .bind(exercise)
        .fetch_one(&self.pool)
        .await?;
        WorkspaceRecord::from_row(&row)
    }

    /// The workspace of a learner and exercise, when they have one.
    pub async fn workspace(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM workspaces WHERE learner = $1 AND exercise = $2",
            WorkspaceRecord::COLUMNS
        ))
        .bind(learner)
        .bind(exercise)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| WorkspaceRecord::from_row(&r)).transpose()
    }

    /// The workspace volumes on this node of learners with a live session, by (learner, exercise).
    pub async fn live_workspace_volumes(&self) -> anyhow::Result<std::collections::HashMap<(String, String), String>> {
        let sql = format!(
            "SELECT w.learner AS learner, w.exercise AS exercise, w.volume AS volume FROM workspaces w \
             JOIN sessions s ON s.learner = w.learner AND s.exercise = w.exercise WHERE {} AND w.node = $1",
            state_in("s.state", SessionState::LIVE)
        );
        let rows = sqlx::query(&sql).bind(&*self.node).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(((r.try_get("learner")?, r.try_get("exercise")?), r.try_get("volume")?))).collect()
    }

    pub async fn touch_workspace(&self, learner: &str, exercise: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE workspaces SET last_used_at = $1 WHERE learner = $2 AND exercise = $3")
            .bind(now_ms())
            .bind(learner)
            .bind(exercise)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// This node's workspaces unused since `before` whose learner has no live session for the exercise.
    pub async fn stale_workspaces(&self, before: i64) -> anyhow::Result<Vec<WorkspaceRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM workspaces w WHERE w.last_used_at < $1 AND w.node = $2 AND NOT EXISTS ( \
               SELECT 1 FROM sessions s WHERE s.learner = w.learner AND s.exercise = w.exercise \
               AND {})",
            WorkspaceRecord::COLUMNS_W,
            state_in("s.state", SessionState::UNFINISHED)
        ))
        .bind(before)
        .bind(&*self.node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(WorkspaceRecord::from_row).collect()
    }

    pub async fn delete_workspace(&self, volume: &str) -> anyhow::Result<()> {
        // Its copy off the node goes with it (the copy is of this workspace).
        sqlx::query(
            "DELETE FROM workspace_copies WHERE EXISTS (SELECT 1 FROM workspaces w WHERE w.volume = $1 \
             AND w.learner = workspace_copies.learner AND w.exercise = workspace_copies.exercise)",
        )
        .bind(volume)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM workspaces WHERE volume = $1").bind(volume).execute(&self.pool).await?;
        Ok(())
    }

    /// After deletions that must not linger (an erasure): on SQLite the pages as they were before
    /// are folded from the write-ahead log into the file, where `secure_delete` zeroed the rows,
    /// and the log is emptied. PostgreSQL's autovacuum reclaims deleted rows in its own time.
    pub async fn forget_deleted(&self) -> anyhow::Result<()> {
        if self.sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Every workspace of a learner.
    pub async fn workspaces_of(&self, learner: &str) -> anyhow::Result<Vec<WorkspaceRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM workspaces WHERE learner = $1", WorkspaceRecord::COLUMNS))
            .bind(learner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(WorkspaceRecord::from_row).collect()
    }

    /// Deletes, in one transaction, every record of a learner whose sessions have all ended:
    /// their sessions, those sessions' checks (outputs included) and sandbox events, the events
    /// told about them with their deliveries, and their workspace records. Refused (nothing
    /// deleted) while one of their sessions is unfinished.
    pub async fn erase_learner(&self, learner: &str) -> anyhow::Result<Option<ErasedRecords>> {
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes its write lock at once (a read first could not be
        // upgraded after another writer committed); it changes nothing.
        let sessions = sqlx::query("UPDATE sessions SET learner = learner WHERE learner = $1")
            .bind(learner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let unfinished = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM sessions WHERE learner = $1 AND {}",
            state_in("state", SessionState::UNFINISHED)
        ))
        .bind(learner)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?;
        if unfinished > 0 {
            return Ok(None);
        }
        let mut deleted = Vec::new();
        for sql in [
            "DELETE FROM checks WHERE session_id IN (SELECT id FROM sessions WHERE learner = $1)",
            "DELETE FROM session_events WHERE session_id IN (SELECT id FROM sessions WHERE learner = $1)",
            "DELETE FROM webhook_deliveries WHERE event_seq IN (SELECT seq FROM events WHERE learner = $1)",
            "DELETE FROM events WHERE learner = $1",
            "DELETE FROM sessions WHERE learner = $1",
            "DELETE FROM workspaces WHERE learner = $1",
            "DELETE FROM runs WHERE learner = $1",
            "DELETE FROM workspace_copies WHERE learner = $1",
        ] {
            deleted.push(sqlx::query(sql).bind(learner).execute(&mut *tx).await?.rows_affected());
        }
        tx.commit().await?;
        let [checks, session_events, _, events, _, workspaces, runs, _] = deleted[..] else {
            unreachable!("eight statements")
        };
        Ok(Some(ErasedRecords { sessions, checks, session_events, events, workspaces, runs }))
    }

    /// Of these volumes, those whose workspace now lives on another node (a moved workspace:
    /// its learner's session started elsewhere).
    pub async fn volumes_moved_away(&self, volumes: &[String]) -> anyhow::Result<Vec<String>> {
        let mut moved = Vec::new();
        for v in volumes {
            let row =
                sqlx::query("SELECT node FROM workspaces WHERE volume = $1").bind(v).fetch_optional(&self.pool).await?;
            if let Some(r) = row {
                if r.try_get::<String, _>("node")? != *self.node {
                    moved.push(v.clone());
                }
            }
        }
        Ok(moved)
    }

    /// The workspace volumes on this node's disk.
    pub async fn workspace_volumes(&self) -> anyhow::Result<Vec<String>> {
        // A pooled sandbox's workspace is known from its row until a claim moves it to a learner.
        let rows = sqlx::query(
            "SELECT volume FROM workspaces WHERE node = $1 UNION SELECT volume FROM pool_sandboxes WHERE node = $1",
        )
        .bind(&*self.node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("volume")?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{BuildState, DeployState};

    #[test]
    fn sqlite_urls_as_users_write_them_name_a_file_created_on_first_start() {
        let f = |u: &str| sqlite_file(u).map(|(p, url)| (p.display().to_string(), url));
        assert_eq!(
            f("sqlite:///srv/r/runner.db"),
            Some(("/srv/r/runner.db".into(), "sqlite:///srv/r/runner.db?mode=rwc".into()))
        );
        assert_eq!(f("sqlite://runner.db"), Some(("runner.db".into(), "sqlite://runner.db?mode=rwc".into())));
        assert_eq!(
            f("sqlite:data/runner.db"),
            Some(("data/runner.db".into(), "sqlite://data/runner.db?mode=rwc".into()))
        );
        assert_eq!(
            f("sqlite:///a.db?mode=ro"),
            Some(("/a.db".into(), "sqlite:///a.db?mode=ro".into())),
            "a mode given is kept"
        );
        assert_eq!(
            f("sqlite:///a.db?cache=shared"),
            Some(("/a.db".into(), "sqlite:///a.db?cache=shared&mode=rwc".into()))
        );
        assert_eq!(f("sqlite::memory:"), None);
        assert_eq!(f("postgres://u:p@h/db"), None);
    }

    #[test]
    fn the_databases_directory_is_made_when_its_parent_exists_and_explained_when_not() {
        let tmp = tempfile::tempdir().unwrap();
        prepare_sqlite_dir(&tmp.path().join("new/runner.db")).unwrap();
        assert!(tmp.path().join("new").is_dir());
        let e = prepare_sqlite_dir(&tmp.path().join("no/such/runner.db")).unwrap_err().to_string();
        assert!(e.contains("neither its directory") && e.contains("RUNNER_DATABASE_URL"), "{e}");
        assert!(!tmp.path().join("no").exists(), "nothing made for a mistyped path");
    }

    #[tokio::test]
    async fn a_sqlite_url_without_a_mode_creates_its_database() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("db").join("runner.db");
        let store = Store::connect(&format!("sqlite://{}", file.display())).await.unwrap();
        store.ping().await.unwrap();
        assert!(file.is_file());
        let e = Store::connect(&format!("sqlite://{}/a/b/runner.db", tmp.path().display())).await.err().unwrap();
        assert!(format!("{e:#}").contains("neither its directory"), "{e:#}");
    }

    /// The store's source files without their comment lines.
    fn store_sources() -> Vec<(&'static str, String)> {
        [
            ("mod.rs", include_str!("mod.rs")),
            ("builds.rs", include_str!("builds.rs")),
            ("copies.rs", include_str!("copies.rs")),
            ("managed_apps.rs", include_str!("managed_apps.rs")),
            ("nodes.rs", include_str!("nodes.rs")),
            ("outbox.rs", include_str!("outbox.rs")),
            ("pools.rs", include_str!("pools.rs")),
            ("journal.rs", include_str!("journal.rs")),
            ("records.rs", include_str!("records.rs")),
            ("snapshots.rs", include_str!("snapshots.rs")),
            ("runs.rs", include_str!("runs.rs")),
        ]
        .into_iter()
        .map(|(file, text)| {
            (file, text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n"))
        })
        .collect()
    }

    fn every_state_word() -> Vec<&'static str> {
        let mut words: Vec<&str> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
        words.extend(BuildState::ALL.iter().map(|s| s.as_str()));
        words.extend(DeployState::ALL.iter().map(|s| s.as_str()));
        words.extend(crate::lifecycle::RunState::ALL.iter().map(|s| s.as_str()));
        words
    }

    #[test]
    fn the_store_spells_no_state_it_takes_them_from_the_lifecycle_tables() {
        for (file, text) in store_sources() {
            for word in every_state_word() {
                for spelled in [format!("'{word}'"), format!("\"{word}\"")] {
                    assert!(
                        !text.contains(&spelled),
                        "store/{file} spells the state {spelled}: take it from crate::lifecycle"
                    );
                }
            }
        }
    }

    #[test]
    fn the_scan_would_see_a_spelled_state() {
        // The migrations must spell them (their partial indexes), so they show the scan's pattern works.
        let migration = include_str!("../../../migrations/20261127000001_sessions.sql");
        assert!(every_state_word().iter().any(|w| migration.contains(&format!("'{w}'"))));
    }

    #[test]
    fn the_partial_unique_indexes_list_the_tables_states() {
        // One live session per learner and exercise: the index and `SessionState::LIVE` agree.
        let sessions = include_str!("../../../migrations/20261127000001_sessions.sql");
        assert!(sessions.contains(&format!("WHERE {};", state_in("state", SessionState::LIVE))));
        // One running deploy per app: the only state a deploy is inserted in.
        let apps = include_str!("../../../migrations/20261127000003_apps.sql");
        assert!(DeployState::sources(DeployState::Running).is_empty());
        assert!(apps.contains(&format!("WHERE state = '{}';", DeployState::Running.as_str())));
    }

    #[test]
    fn moves_are_written_from_the_table_and_illegal_ones_refused() {
        assert_eq!(
            moving(SessionState::LIVE, SessionState::Stopping).unwrap(),
            format!("state IN ('{}', '{}')", SessionState::Starting, SessionState::Running)
        );
        assert_eq!(state_in("s.state", &[BuildState::Queued]), format!("s.state IN ('{}')", BuildState::Queued));
        assert!(moving(&[SessionState::Stopped], SessionState::Running).is_err());
        assert!(moving(&[SessionState::Stopping, SessionState::Running], SessionState::Stopped).is_err());
        assert!(moving(&[BuildState::Queued], BuildState::Testing).is_err());
        assert!(moving(&[DeployState::Failed], DeployState::Succeeded).is_err());
        // A row is inserted in its first state, never moved there.
        assert!(moving::<SessionState>(&[], SessionState::Starting).is_err());
        for &to in BuildState::ALL.iter() {
            let from = BuildState::sources(to);
            assert_eq!(moving(from, to).is_ok(), !from.is_empty(), "{to:?}");
        }
    }
}
