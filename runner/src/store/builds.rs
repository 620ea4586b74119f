//! SQL for builds, exercise versions and checks.

use sqlx::Row;

use super::{moving, now_ms, state_in, BuildRecord, CheckRecord, Store, VersionRecord, Written};
use crate::lifecycle::{BuildState, SessionState};

impl Store {
    /// A queued build; `here`: only this node may build it (its input is on this node's disk).
    pub async fn insert_build(&self, id: &str, exercise: &str, source: &str, here: bool) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO builds (id, exercise, state, source, created_at, node) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(exercise)
        .bind(BuildState::Queued.as_str())
        .bind(source)
        .bind(now_ms())
        .bind(here.then(|| self.node.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes a queued build for this node, unless another node has it. The caller then moves
    /// it to `building` (a conditional transition of its own).
    pub async fn take_build(&self, id: &str) -> anyhow::Result<bool> {
        let n = sqlx::query("UPDATE builds SET node = $1 WHERE id = $2 AND state = $3 AND (node IS NULL OR node = $1)")
            .bind(self.node.to_string())
            .bind(id)
            .bind(BuildState::Queued.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Builds in these states that are this node's (or no node's: made before fleets).
    pub async fn builds_here_in(&self, states: &[BuildState]) -> anyhow::Result<Vec<BuildRecord>> {
        Ok(self
            .builds_in(states)
            .await?
            .into_iter()
            .filter(|b| b.node.as_deref().is_none_or(|n| n == &*self.node))
            .collect())
    }

    /// `node`'s builds in these states (a node declared lost: what it will never finish).
    pub async fn builds_on(&self, node: &str, states: &[BuildState]) -> anyhow::Result<Vec<BuildRecord>> {
        Ok(self.builds_in(states).await?.into_iter().filter(|b| b.node.as_deref() == Some(node)).collect())
    }

    pub async fn build(&self, id: &str) -> anyhow::Result<Option<BuildRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM builds WHERE id = $1", BuildRecord::COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| BuildRecord::from_row(&r)).transpose()
    }

    pub async fn builds_of(&self, exercise: &str, limit: i64) -> anyhow::Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM builds WHERE exercise = $1 ORDER BY created_at DESC, id LIMIT $2",
            BuildRecord::COLUMNS
        ))
        .bind(exercise)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(BuildRecord::from_row).collect()
    }

    /// The newest builds of every exercise.
    pub async fn recent_builds(&self, limit: i64) -> anyhow::Result<Vec<BuildRecord>> {
        let rows =
            sqlx::query(&format!("SELECT {} FROM builds ORDER BY created_at DESC, id LIMIT $1", BuildRecord::COLUMNS))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(BuildRecord::from_row).collect()
    }

    pub async fn builds_in(&self, states: &[BuildState]) -> anyhow::Result<Vec<BuildRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM builds WHERE {} ORDER BY created_at, id",
            BuildRecord::COLUMNS,
            state_in("state", states)
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(BuildRecord::from_row).collect()
    }

    pub async fn count_builds_in(&self, states: &[BuildState]) -> anyhow::Result<i64> {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM builds WHERE {}", state_in("state", states)))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Moves a build from one of `from` (each a legal source of `to`) to `to`; false when it was
    /// not in one of them.
    pub async fn transition_build(
        &self,
        id: &str,
        from: &[BuildState],
        to: BuildState,
        reason: Option<&str>,
    ) -> anyhow::Result<bool> {
        let condition = moving(from, to)?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(&format!(
            "UPDATE builds SET state = $1, failure_reason = COALESCE($2, failure_reason), \
             started_at = CASE WHEN $3 = 1 THEN COALESCE(started_at, $4) ELSE started_at END, \
             finished_at = CASE WHEN $5 = 1 THEN $4 ELSE finished_at END \
             WHERE id = $6 AND {condition}"
        ))
        .bind(to.as_str())
        .bind(reason)
        .bind(i64::from(to == BuildState::Building))
        .bind(now)
        .bind(i64::from(to.is_finished()))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let mut seq = None;
        if to.is_finished() {
            let row = sqlx::query(
                "SELECT exercise, version, failure_reason, started_at, created_at FROM builds WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let exercise: String = row.try_get("exercise")?;
            let started: Option<i64> = row.try_get("started_at")?;
            let data = serde_json::json!({
                "build": id,
                "exercise": exercise,
                "state": to,
                "version": row.try_get::<Option<String>, _>("version")?,
                "failure_reason": row.try_get::<Option<String>, _>("failure_reason")?,
                "duration_ms": started.map(|s| now - s),
            });
            let subject = super::Subject { exercise: Some(exercise), ..Default::default() };
            seq =
                Some(super::outbox::append(&mut tx, crate::lifecycle::EventType::BuildFinished, &subject, data).await?);
        }
        tx.commit().await?;
        if let Some(seq) = seq {
            self.appended(seq);
        }
        Ok(true)
    }

    pub async fn set_build_result(
        &self,
        id: &str,
        version: &str,
        image: &str,
        cached: bool,
        self_test: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE builds SET version = $1, image = $2, cached = $3, self_test = COALESCE($4, self_test) WHERE id = $5")
            .bind(version)
            .bind(image)
            .bind(i64::from(cached))
            .bind(self_test)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- versions ----

    pub async fn insert_version(&self, v: &VersionRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO exercise_versions (exercise, version, image, manifest, build_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (exercise, version) DO NOTHING",
        )
        .bind(&v.exercise)
        .bind(&v.version)
        .bind(&v.image)
        .bind(&v.manifest)
        .bind(&v.build_id)
        .bind(v.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn version(&self, exercise: &str, version: &str) -> anyhow::Result<Option<VersionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM exercise_versions WHERE exercise = $1 AND version = $2",
            VersionRecord::COLUMNS
        ))
        .bind(exercise)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| VersionRecord::from_row(&r)).transpose()
    }

    pub async fn versions(&self, exercise: &str) -> anyhow::Result<Vec<VersionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM exercise_versions WHERE exercise = $1 ORDER BY created_at DESC, version",
            VersionRecord::COLUMNS
        ))
        .bind(exercise)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(VersionRecord::from_row).collect()
    }

    /// Records a publish if the exercise is still at the revision the caller read: its image and
    /// spec, and the version's publish time, at once.
    pub async fn publish_version(
        &self,
        exercise: &str,
        version: &str,
        image: &str,
        spec: &str,
        read: Option<i64>,
    ) -> anyhow::Result<Written> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let written = super::write_exercise_in(&mut *tx, exercise, image, spec, read, now).await?;
        if written == Written::Conflict {
            return Ok(written);
        }
        sqlx::query("UPDATE exercise_versions SET published_at = $1 WHERE exercise = $2 AND version = $3")
            .bind(now)
            .bind(exercise)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        let data = serde_json::json!({ "exercise": exercise, "version": version, "image": image });
        let subject = super::Subject { exercise: Some(exercise.to_string()), ..Default::default() };
        let seq = super::outbox::append(&mut tx, crate::lifecycle::EventType::VersionPublished, &subject, data).await?;
        tx.commit().await?;
        self.appended(seq);
        Ok(written)
    }

    pub async fn delete_version(&self, exercise: &str, version: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM exercise_versions WHERE exercise = $1 AND version = $2")
            .bind(exercise)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Images that live sessions run (they keep their version until they end) or pooled sandboxes hold.
    pub async fn images_in_use(&self) -> anyhow::Result<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT image FROM sessions WHERE {} UNION SELECT image FROM pool_sandboxes",
            state_in("state", SessionState::UNFINISHED)
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("image")?)).collect()
    }

    // ---- checks ----

    /// Records a check and appends `check.completed` in the same transaction.
    pub async fn insert_check(&self, c: &CheckRecord) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO checks (id, session_id, passed, exit_code, output, truncated, timed_out, duration_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&c.id)
        .bind(&c.session_id)
        .bind(i64::from(c.passed))
        .bind(c.exit_code)
        .bind(&c.output)
        .bind(i64::from(c.truncated))
        .bind(i64::from(c.timed_out))
        .bind(c.duration_ms)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await?;
        let facts = super::outbox::session_facts(&mut tx, &c.session_id).await?;
        let data = serde_json::json!({
            "check": c.id,
            "session": c.session_id,
            "learner": facts.subject.learner,
            "exercise": facts.subject.exercise,
            "version": facts.version,
            "passed": c.passed,
            "exit_code": c.exit_code,
            "timed_out": c.timed_out,
            "duration_ms": c.duration_ms,
            "output_url": format!("/v1/sessions/{}/checks/{}", c.session_id, c.id),
        });
        let seq =
            super::outbox::append(&mut tx, crate::lifecycle::EventType::CheckCompleted, &facts.subject, data).await?;
        tx.commit().await?;
        self.appended(seq);
        Ok(())
    }

    pub async fn check(&self, session_id: &str, id: &str) -> anyhow::Result<Option<CheckRecord>> {
        let row =
            sqlx::query(&format!("SELECT {} FROM checks WHERE session_id = $1 AND id = $2", CheckRecord::COLUMNS))
                .bind(session_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| CheckRecord::from_row(&r)).transpose()
    }

    pub async fn checks_of(&self, session_id: &str, limit: i64) -> anyhow::Result<Vec<CheckRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM checks WHERE session_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            CheckRecord::COLUMNS
        ))
        .bind(session_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(CheckRecord::from_row).collect()
    }
}
