//! Append-only journals: the operators' audit log and each session's events.

use sqlx::{any::AnyRow, Row};

use super::{now_ms, Store};
use crate::lifecycle;

/// One operator action: who did what to which target, and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    /// Who: the token that authorised the request (`api-token`, `operator-token`), as the
    /// middleware names it; never the token itself.
    pub actor: String,
    /// `session.stop`, `exercise.stop_sessions`, `runner.drain`, `runner.undrain`.
    pub action: String,
    pub target: String,
    /// `ok`, or what went wrong.
    pub outcome: String,
    pub detail: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEntry {
    const COLUMNS: &'static str = "id, at, actor, action, target, outcome, detail, request_id";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(AuditEntry {
            id: r.try_get("id")?,
            at: r.try_get("at")?,
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            target: r.try_get("target")?,
            outcome: r.try_get("outcome")?,
            detail: r.try_get("detail")?,
            request_id: r.try_get("request_id")?,
        })
    }
}

/// Something that happened to a session's sandbox.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub id: String,
    pub session_id: String,
    pub at: i64,
    pub kind: lifecycle::SessionEvent,
    pub detail: Option<String>,
}

impl SessionEvent {
    const COLUMNS: &'static str = "id, session_id, at, kind, detail";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        Ok(SessionEvent {
            id: r.try_get("id")?,
            session_id: r.try_get("session_id")?,
            at: r.try_get("at")?,
            kind: {
                let kind: String = r.try_get("kind")?;
                lifecycle::SessionEvent::parse(&kind)
                    .ok_or_else(|| anyhow::anyhow!("unknown session event {kind:?} in the database"))?
            },
            detail: r.try_get("detail")?,
        })
    }
}

impl Store {
    pub async fn insert_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: Option<&str>,
        request_id: Option<&str>,
    ) -> anyhow::Result<AuditEntry> {
        let e = AuditEntry {
            id: uuid::Uuid::new_v4().to_string(),
            at: now_ms(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.map(str::to_string),
            request_id: request_id.map(str::to_string),
        };
        sqlx::query(&format!(
            "INSERT INTO audit_log ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            AuditEntry::COLUMNS
        ))
        .bind(&e.id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(&e.detail)
        .bind(&e.request_id)
        .execute(&self.pool)
        .await?;
        Ok(e)
    }

    /// The newest entries first.
    pub async fn audit(&self, limit: i64) -> anyhow::Result<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!("SELECT {} FROM audit_log ORDER BY at DESC, id LIMIT $1", AuditEntry::COLUMNS))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(AuditEntry::from_row).collect()
    }

    pub async fn insert_session_event(
        &self,
        session_id: &str,
        kind: lifecycle::SessionEvent,
        detail: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(&format!("INSERT INTO session_events ({}) VALUES ($1, $2, $3, $4, $5)", SessionEvent::COLUMNS))
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(session_id)
            .bind(now_ms())
            .bind(kind.as_str())
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records an event the engine reported, under an id made from what it is (the container,
    /// the kind, the engine's time), so replicas following the same engine, or one follower
    /// replaying after a reconnect, record it once. Whether it was new.
    pub async fn insert_session_event_once(
        &self,
        id: &str,
        session_id: &str,
        kind: lifecycle::SessionEvent,
        detail: Option<&str>,
    ) -> anyhow::Result<bool> {
        let done = sqlx::query(&format!(
            "INSERT INTO session_events ({}) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            SessionEvent::COLUMNS
        ))
        .bind(id)
        .bind(session_id)
        .bind(now_ms())
        .bind(kind.as_str())
        .bind(detail)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// Live sessions with at least one `kind` event since `since_ms`: (session, learner,
    /// exercise, how many).
    pub async fn live_sessions_with_events(
        &self,
        kind: lifecycle::SessionEvent,
        since_ms: i64,
    ) -> anyhow::Result<Vec<(String, String, String, i64)>> {
        let sql = format!(
            "SELECT s.id AS id, s.learner AS learner, s.exercise AS exercise, COUNT(*) AS n FROM session_events e \
             JOIN sessions s ON s.id = e.session_id WHERE e.kind = $1 AND e.at >= $2 AND {} \
             GROUP BY s.id, s.learner, s.exercise",
            super::state_in("s.state", lifecycle::SessionState::LIVE)
        );
        let rows = sqlx::query(&sql).bind(kind.as_str()).bind(since_ms).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("learner")?, r.try_get("exercise")?, r.try_get("n")?)))
            .collect()
    }

    /// The newest events of these kinds across every session (newest first).
    pub async fn recent_session_events(
        &self,
        kinds: &[lifecycle::SessionEvent],
        limit: i64,
    ) -> anyhow::Result<Vec<SessionEvent>> {
        if kinds.is_empty() {
            return Ok(vec![]);
        }
        // The kinds are the enum's own words, never input (as `state_in` does for states).
        let words = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {} FROM session_events WHERE kind IN ({words}) ORDER BY at DESC, id LIMIT $1",
            SessionEvent::COLUMNS
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SessionEvent::from_row).collect()
    }

    /// A session's events, oldest first.
    pub async fn session_events(&self, session_id: &str) -> anyhow::Result<Vec<SessionEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM session_events WHERE session_id = $1 ORDER BY at, id LIMIT 1000",
            SessionEvent::COLUMNS
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SessionEvent::from_row).collect()
    }
}
