//! Warm pools' sandboxes (`pool_sandboxes`): made ahead of time, claimed by new learners.
//!
//! A claim is one transaction: the oldest ready row of the exercise's current image is deleted
//! (only if it is still ready, so two claimers never both get it), the learner's workspace record
//! names its volume and the learner's session names its container. Either all three are written
//! or none is, so reconciliation always finds a pooled container's owner in the database.

use sqlx::{any::AnyRow, Row};

use super::{moving, now_ms, state_in, Store};
use crate::lifecycle::{Lifecycle, PoolState, SessionState};

#[derive(Debug, Clone)]
pub struct PoolRecord {
    pub id: String,
    pub exercise: String,
    pub image: String,
    /// JSON of the [`crate::domain::SandboxSpec`] it was made with.
    pub spec: String,
    pub volume: String,
    pub size_mb: i64,
    pub state: PoolState,
    pub container_id: Option<String>,
    pub created_at: i64,
    pub ready_at: Option<i64>,
    pub lease_until: i64,
}

impl PoolRecord {
    const COLUMNS: &'static str =
        "id, exercise, image, spec, volume, size_mb, state, container_id, created_at, ready_at, lease_until";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(PoolRecord {
            id: r.try_get("id")?,
            exercise: r.try_get("exercise")?,
            image: r.try_get("image")?,
            spec: r.try_get("spec")?,
            volume: r.try_get("volume")?,
            size_mb: r.try_get("size_mb")?,
            state: PoolState::parse(&state).ok_or_else(|| anyhow::anyhow!("unknown pool state {state:?}"))?,
            container_id: r.try_get("container_id")?,
            created_at: r.try_get("created_at")?,
            ready_at: r.try_get("ready_at")?,
            lease_until: r.try_get("lease_until")?,
        })
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// The learner's session, running in the pooled container (and the row it came from).
    Claimed(Box<super::SessionRecord>, Box<PoolRecord>),
    /// No ready sandbox of this image.
    Empty,
    /// The learner has a workspace for the exercise already: they get their own files instead.
    HasWorkspace,
    /// The learner got a live session for the exercise meanwhile (a concurrent request).
    LiveSession,
}

/// How many times a claim looks for another ready row after losing one to a concurrent claim.
const CLAIM_ATTEMPTS: usize = 16;

impl Store {
    /// Records a pooled sandbox about to be made (`starting`, leased until `lease_until`), unless
    /// the exercise's pool holds `target` sandboxes of its image already (another replica filled
    /// it meanwhile). Whether it was recorded.
    pub async fn insert_pooled(&self, p: &PoolRecord, target: u32) -> anyhow::Result<bool> {
        let n = sqlx::query(
            "INSERT INTO pool_sandboxes (id, exercise, image, spec, volume, size_mb, state, created_at, lease_until, \
             node) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $11 WHERE \
             (SELECT COUNT(*) FROM pool_sandboxes WHERE exercise = $2 AND image = $3 AND node = $11) < $10",
        )
        .bind(&p.id)
        .bind(&p.exercise)
        .bind(&p.image)
        .bind(&p.spec)
        .bind(&p.volume)
        .bind(p.size_mb)
        .bind(PoolState::Starting.as_str())
        .bind(p.created_at)
        .bind(p.lease_until)
        .bind(i64::from(target))
        .bind(&*self.node)
        .execute(&self.pool)
        .await?;
        Ok(n.rows_affected() == 1)
    }

    /// Its agent answers: learners may claim it. False when the row is gone (discarded meanwhile).
    pub async fn mark_pooled_ready(&self, id: &str, container_id: &str) -> anyhow::Result<bool> {
        let to = PoolState::Ready;
        let sql = format!(
            "UPDATE pool_sandboxes SET state = $1, container_id = $2, ready_at = $3 WHERE id = $4 AND {}",
            moving(PoolState::sources(to), to)?
        );
        let n = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(container_id)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Every pooled sandbox on this node, oldest first.
    pub async fn pooled(&self) -> anyhow::Result<Vec<PoolRecord>> {
        let sql = format!("SELECT {} FROM pool_sandboxes WHERE node = $1 ORDER BY created_at, id", PoolRecord::COLUMNS);
        let rows = sqlx::query(&sql).bind(&*self.node).fetch_all(&self.pool).await?;
        rows.iter().map(PoolRecord::from_row).collect()
    }

    /// Forgets a pooled sandbox; false when it was gone already (claimed or discarded).
    pub async fn delete_pooled(&self, id: &str) -> anyhow::Result<bool> {
        let n = sqlx::query("DELETE FROM pool_sandboxes WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(n.rows_affected() == 1)
    }

    /// Gives `session` (a record in `starting`, whose spec and image are replaced by the pooled
    /// sandbox's) the oldest ready sandbox of `image`, with its workspace, in one transaction.
    pub async fn claim_pooled(&self, image: &str, session: &super::SessionRecord) -> anyhow::Result<Claim> {
        if self.workspace(&session.learner, &session.exercise).await?.is_some() {
            return Ok(Claim::HasWorkspace);
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let candidate = sqlx::query(&format!(
                "SELECT {} FROM pool_sandboxes WHERE exercise = $1 AND image = $2 AND state = $3 AND node = $4 \
                 ORDER BY ready_at, id LIMIT 1",
                PoolRecord::COLUMNS
            ))
            .bind(&session.exercise)
            .bind(image)
            .bind(PoolState::Ready.as_str())
            .bind(&*self.node)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = candidate else { return Ok(Claim::Empty) };
            let pooled = PoolRecord::from_row(&row)?;
            let Some(container) = pooled.container_id.clone() else { return Ok(Claim::Empty) };
            let mut tx = self.pool.begin().await?;
            // The first statement writes, so SQLite takes its write lock at once (a read first
            // could not be upgraded after another writer committed).
            let taken = sqlx::query("DELETE FROM pool_sandboxes WHERE id = $1 AND state = $2")
                .bind(&pooled.id)
                .bind(PoolState::Ready.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if taken == 0 {
                continue; // another claimer (or a discard) took it: look for the next
            }
            let now = now_ms();
            let workspace = sqlx::query(
                "INSERT INTO workspaces (learner, exercise, volume, size_mb, created_at, last_used_at, node) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (learner, exercise) DO NOTHING",
            )
            .bind(&session.learner)
            .bind(&session.exercise)
            .bind(&pooled.volume)
            .bind(pooled.size_mb)
            .bind(now)
            .bind(&*self.node)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if workspace == 0 {
                tx.rollback().await?;
                return Ok(Claim::HasWorkspace);
            }
            let inserted = sqlx::query(
                "INSERT INTO sessions (id, learner, exercise, image, spec, state, container_id, created_at, \
                 last_activity_at, node, memory_mb) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10)",
            )
            .bind(&session.id)
            .bind(&session.learner)
            .bind(&session.exercise)
            .bind(&pooled.image)
            .bind(&pooled.spec)
            .bind(SessionState::Running.as_str())
            .bind(&container)
            .bind(now)
            .bind(&*self.node)
            .bind(session.memory_mb)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tx.rollback().await?;
                    return Ok(Claim::LiveSession);
                }
                Err(e) => return Err(e.into()),
            }
            let seq = super::outbox::append_session_running(&mut tx, &session.id).await?;
            tx.commit().await?;
            self.appended(seq);
            let record = super::SessionRecord {
                image: pooled.image.clone(),
                spec: pooled.spec.clone(),
                state: SessionState::Running,
                container_id: Some(container),
                created_at: now,
                last_activity_at: now,
                node: self.node.to_string(),
                ..session.clone()
            };
            return Ok(Claim::Claimed(Box::new(record), Box::new(pooled)));
        }
        Ok(Claim::Empty)
    }

    /// Live sessions plus pooled sandboxes: what counts against `RUNNER_MAX_LIVE_SESSIONS`.
    pub async fn count_pooled(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM pool_sandboxes WHERE node = $1")
            .bind(&*self.node)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// The live session whose sandbox is this container (a claimed pooled sandbox is named
    /// after its pool, not its session).
    pub async fn live_session_by_container(&self, container: &str) -> anyhow::Result<Option<super::SessionRecord>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE container_id = $1 AND {}",
            super::SessionRecord::COLUMNS,
            state_in("state", SessionState::UNFINISHED)
        );
        let row = sqlx::query(&sql).bind(container).fetch_optional(&self.pool).await?;
        row.map(|r| super::SessionRecord::from_row(&r)).transpose()
    }
}
