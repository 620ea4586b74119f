//! One-shot runs (`crate::runs`): a row per run, its result once finished, and the lease by which
//! the process running it answers for it.

use sqlx::{any::AnyRow, Row};

use super::{moving, state_in, Store, Subject};
use crate::lifecycle::{EventType, Lifecycle, RunState};

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub runtime: Option<String>,
    pub exercise: Option<String>,
    pub learner: Option<String>,
    pub state: RunState,
    /// The verdict's word, once finished.
    pub status: Option<String>,
    /// JSON of the outcome, once finished.
    pub result: Option<String>,
    pub notify: bool,
    pub owner: String,
    pub lease_until: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl RunRecord {
    const COLUMNS: &'static str = "id, runtime, exercise, learner, state, status, result, notify, owner, lease_until, \
                                   created_at, started_at, finished_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let state: String = r.try_get("state")?;
        Ok(RunRecord {
            id: r.try_get("id")?,
            runtime: r.try_get("runtime")?,
            exercise: r.try_get("exercise")?,
            learner: r.try_get("learner")?,
            state: RunState::parse(&state).ok_or_else(|| anyhow::anyhow!("unknown run state {state:?}"))?,
            status: r.try_get("status")?,
            result: r.try_get("result")?,
            notify: r.try_get::<i64, _>("notify")? != 0,
            owner: r.try_get("owner")?,
            lease_until: r.try_get("lease_until")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

/// How a run ended, as `finish_run` writes it.
pub struct RunFinish<'a> {
    pub status: &'a str,
    /// JSON of the outcome.
    pub result: &'a str,
    /// What `run.finished` says (written only for runs with `notify`).
    pub event: serde_json::Value,
}

impl Store {
    /// Inserts a run in `queued`, held by `owner` until `lease_until`.
    pub async fn insert_run(&self, r: &RunRecord) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, runtime, exercise, learner, state, notify, owner, lease_until, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.id)
        .bind(&r.runtime)
        .bind(&r.exercise)
        .bind(&r.learner)
        .bind(RunState::Queued.as_str())
        .bind(i64::from(r.notify))
        .bind(&r.owner)
        .bind(r.lease_until)
        .bind(r.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `queued → running`; false when it was not queued any more.
    pub async fn start_run(&self, id: &str, now: i64) -> anyhow::Result<bool> {
        let sql = format!(
            "UPDATE runs SET state = $1, started_at = $2 WHERE id = $3 AND {}",
            moving(&[RunState::Queued], RunState::Running)?
        );
        let n = sqlx::query(&sql).bind(RunState::Running.as_str()).bind(now).bind(id).execute(&self.pool).await?;
        Ok(n.rows_affected() == 1)
    }

    /// Writes the result (`→ finished`) and, for a run that asked, `run.finished` in the same
    /// transaction. False when it was finished already (by another process that found its lease
    /// expired).
    pub async fn finish_run(&self, id: &str, now: i64, finish: &RunFinish<'_>) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE runs SET state = $1, status = $2, result = $3, finished_at = $4 WHERE id = $5 AND {}",
            moving(RunState::UNFINISHED, RunState::Finished)?
        );
        let n = sqlx::query(&sql)
            .bind(RunState::Finished.as_str())
            .bind(finish.status)
            .bind(finish.result)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let row = sqlx::query("SELECT notify, learner, exercise FROM runs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let mut seq = None;
        if row.try_get::<i64, _>("notify")? != 0 {
            let subject =
                Subject { learner: row.try_get("learner")?, exercise: row.try_get("exercise")?, ..Default::default() };
            seq = Some(super::outbox::append(&mut tx, EventType::RunFinished, &subject, finish.event.clone()).await?);
        }
        tx.commit().await?;
        if let Some(seq) = seq {
            self.appended(seq);
        }
        Ok(true)
    }

    pub async fn run(&self, id: &str) -> anyhow::Result<Option<RunRecord>> {
        let sql = format!("SELECT {} FROM runs WHERE id = $1", RunRecord::COLUMNS);
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(RunRecord::from_row).transpose()
    }

    /// Runs newest first, of one learner when given.
    pub async fn runs(&self, learner: Option<&str>, limit: i64) -> anyhow::Result<Vec<RunRecord>> {
        let filter = if learner.is_some() { "WHERE learner = $2" } else { "" };
        let sql =
            format!("SELECT {} FROM runs {filter} ORDER BY created_at DESC, id DESC LIMIT $1", RunRecord::COLUMNS);
        let mut q = sqlx::query(&sql).bind(limit);
        if let Some(l) = learner {
            q = q.bind(l);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(RunRecord::from_row).collect()
    }

    /// This process still answers for these runs (the ones it has in flight) until `until`.
    pub async fn renew_run_leases(&self, owner: &str, ids: &[String], until: i64) -> anyhow::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let marks = (0..ids.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "UPDATE runs SET lease_until = $1 WHERE owner = $2 AND id IN ({marks}) AND {}",
            state_in("state", RunState::UNFINISHED)
        );
        let mut q = sqlx::query(&sql).bind(until).bind(owner);
        for id in ids {
            q = q.bind(id);
        }
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// This process stops answering for every unfinished run of its own (at shutdown).
    pub async fn give_up_run_leases(&self, owner: &str) -> anyhow::Result<u64> {
        let sql =
            format!("UPDATE runs SET lease_until = 0 WHERE owner = $1 AND {}", state_in("state", RunState::UNFINISHED));
        Ok(sqlx::query(&sql).bind(owner).execute(&self.pool).await?.rows_affected())
    }

    /// Unfinished runs whose process stopped answering for them (their lease passed).
    pub async fn abandoned_runs(&self, now: i64) -> anyhow::Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {} FROM runs WHERE lease_until < $1 AND {}",
            RunRecord::COLUMNS,
            state_in("state", RunState::UNFINISHED)
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&self.pool).await?;
        rows.iter().map(RunRecord::from_row).collect()
    }

    /// Finished runs since `since`, counted by what they ran in and their status:
    /// `(runtime or "exercise:<slug>", status, count)`.
    pub async fn run_counts(&self, since: i64) -> anyhow::Result<Vec<(String, String, i64)>> {
        let sql = format!(
            "SELECT runtime, exercise, status, COUNT(*) AS n FROM runs WHERE created_at >= $1 AND {} \
             GROUP BY runtime, exercise, status ORDER BY runtime, exercise, status",
            state_in("state", &[RunState::Finished])
        );
        let rows = sqlx::query(&sql).bind(since).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let runtime: Option<String> = r.try_get("runtime")?;
                let exercise: Option<String> = r.try_get("exercise")?;
                let source = runtime.unwrap_or_else(|| format!("exercise:{}", exercise.unwrap_or_default()));
                Ok((source, r.try_get::<Option<String>, _>("status")?.unwrap_or_default(), r.try_get("n")?))
            })
            .collect()
    }

    /// Retention: finished runs (their outputs) older than `before` go.
    pub async fn delete_runs_finished_before(&self, before: i64) -> anyhow::Result<u64> {
        let sql = format!("DELETE FROM runs WHERE finished_at < $1 AND {}", state_in("state", &[RunState::Finished]));
        Ok(sqlx::query(&sql).bind(before).execute(&self.pool).await?.rows_affected())
    }
}
