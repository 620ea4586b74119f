//! Workspace copies off their fleet node (`learner_files::copies`): one per learner and
//! exercise, replaced by each new one.

use sqlx::Row;

use super::{now_ms, state_in, Store};
use crate::lifecycle::SessionState;

/// A workspace's copy: its `.tar.gz`, when and where it was taken.
#[derive(Debug, Clone)]
pub struct WorkspaceCopy {
    pub node: String,
    pub taken_at: i64,
    pub content: Vec<u8>,
}

impl Store {
    /// Keeps `content` as the copy of a learner's workspace, taken on this node now.
    pub async fn put_copy(&self, learner: &str, exercise: &str, content: &[u8]) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO workspace_copies (learner, exercise, node, taken_at, bytes, content) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (learner, exercise) DO UPDATE SET \
             node = $3, taken_at = $4, bytes = $5, content = $6",
        )
        .bind(learner)
        .bind(exercise)
        .bind(&*self.node)
        .bind(now_ms())
        .bind(content.len() as i64)
        .bind(content.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn copy_of(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<WorkspaceCopy>> {
        let row =
            sqlx::query("SELECT node, taken_at, content FROM workspace_copies WHERE learner = $1 AND exercise = $2")
                .bind(learner)
                .bind(exercise)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(WorkspaceCopy {
                node: r.try_get("node")?,
                taken_at: r.try_get("taken_at")?,
                content: r.try_get("content")?,
            })
        })
        .transpose()
    }

    /// This node's running sessions whose learner was active since their workspace's last copy
    /// (or that have none): (session id, learner, exercise, container).
    pub async fn sessions_to_copy(&self) -> anyhow::Result<Vec<(String, String, String, String)>> {
        let sql = format!(
            "SELECT s.id AS id, s.learner AS learner, s.exercise AS exercise, s.container_id AS container \
             FROM sessions s LEFT JOIN workspace_copies c ON c.learner = s.learner AND c.exercise = s.exercise \
             WHERE s.node = $1 AND {} AND s.container_id IS NOT NULL \
             AND (c.taken_at IS NULL OR c.taken_at < s.last_activity_at)",
            state_in("s.state", &[SessionState::Running])
        );
        let rows = sqlx::query(&sql).bind(&*self.node).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("learner")?, r.try_get("exercise")?, r.try_get("container")?)))
            .collect()
    }
}
