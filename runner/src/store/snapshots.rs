//! Snapshots of learners' files (`learner_files::snapshots`): the rows, and on a fleet node the
//! blobs (a single host keeps them as files).

use sqlx::{any::AnyRow, Row};

use super::Store;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub learner: String,
    pub exercise: String,
    pub session_id: Option<String>,
    pub check_id: Option<String>,
    /// `check_passed` or `reset` (`learner_files::snapshots::Reason`).
    pub reason: String,
    /// The sha256 of the blob's tar.
    pub blob: String,
    /// Bytes of the stored blob (gzipped).
    pub size_bytes: i64,
    pub created_at: i64,
}

impl SnapshotRecord {
    const COLUMNS: &'static str = "id, learner, exercise, session_id, check_id, reason, blob, size_bytes, created_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(SnapshotRecord {
            id: r.try_get("id")?,
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            session_id: r.try_get("session_id")?,
            check_id: r.try_get("check_id")?,
            reason: r.try_get("reason")?,
            blob: r.try_get("blob")?,
            size_bytes: r.try_get("size_bytes")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl Store {
    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO snapshots ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            SnapshotRecord::COLUMNS
        ))
        .bind(&s.id)
        .bind(&s.learner)
        .bind(&s.exercise)
        .bind(&s.session_id)
        .bind(&s.check_id)
        .bind(&s.reason)
        .bind(&s.blob)
        .bind(s.size_bytes)
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshot(&self, id: &str) -> anyhow::Result<Option<SnapshotRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM snapshots WHERE id = $1", SnapshotRecord::COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| SnapshotRecord::from_row(&r)).transpose()
    }

    /// The snapshot taken when a session's check passed.
    pub async fn snapshot_of_check(&self, session: &str, check: &str) -> anyhow::Result<Option<SnapshotRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM snapshots WHERE session_id = $1 AND check_id = $2",
            SnapshotRecord::COLUMNS
        ))
        .bind(session)
        .bind(check)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| SnapshotRecord::from_row(&r)).transpose()
    }

    /// A learner's snapshots of an exercise, newest first.
    pub async fn snapshots_of(&self, learner: &str, exercise: &str) -> anyhow::Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM snapshots WHERE learner = $1 AND exercise = $2 ORDER BY created_at DESC, id",
            SnapshotRecord::COLUMNS
        ))
        .bind(learner)
        .bind(exercise)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SnapshotRecord::from_row).collect()
    }

    /// Every snapshot, oldest first (what retention chooses from).
    pub async fn all_snapshots(&self) -> anyhow::Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM snapshots ORDER BY created_at, id", SnapshotRecord::COLUMNS))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(SnapshotRecord::from_row).collect()
    }

    /// Every snapshot of a learner, of every exercise.
    pub async fn snapshots_of_learner(&self, learner: &str) -> anyhow::Result<Vec<SnapshotRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM snapshots WHERE learner = $1", SnapshotRecord::COLUMNS))
            .bind(learner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(SnapshotRecord::from_row).collect()
    }

    pub async fn delete_snapshot(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Keeps a blob (idempotent: the same hash is the same bytes).
    pub async fn put_snapshot_blob(&self, blob: &str, content: &[u8]) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO snapshot_blobs (blob, bytes, content, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (blob) DO NOTHING",
        )
        .bind(blob)
        .bind(content.len() as i64)
        .bind(content.to_vec())
        .bind(super::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A kept blob's size, when it is kept.
    pub async fn snapshot_blob_size(&self, blob: &str) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT bytes FROM snapshot_blobs WHERE blob = $1")
            .bind(blob)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("bytes")?)).transpose()
    }

    pub async fn snapshot_blob(&self, blob: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT content FROM snapshot_blobs WHERE blob = $1")
            .bind(blob)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("content")?)).transpose()
    }

    /// Deletes a blob unless a snapshot names it (in one statement: a snapshot written meanwhile
    /// keeps it).
    pub async fn delete_snapshot_blob(&self, blob: &str) -> anyhow::Result<()> {
        sqlx::query(
            "DELETE FROM snapshot_blobs WHERE blob = $1 AND NOT EXISTS (SELECT 1 FROM snapshots WHERE blob = $1)",
        )
        .bind(blob)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether any snapshot still names a blob.
    pub async fn blob_in_use(&self, blob: &str) -> anyhow::Result<bool> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE blob = $1").bind(blob).fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }
}
