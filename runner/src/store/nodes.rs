//! The fleet's nodes (`crate::fleet`): each node's runner heartbeats its row; placement reads
//! them with the sessions' committed memory; a lost node's sessions end in one statement.

use sqlx::{any::AnyRow, Row};

use super::{now_ms, state_in, Store};
use crate::lifecycle::{Availability, EndReason, SessionState};

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub url: String,
    /// What an operator set through the API.
    pub availability: Availability,
    /// What the node's Swarm membership says (`None` without Swarm).
    pub swarm_availability: Option<Availability>,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub max_sessions: i64,
    pub memory_mb: i64,
    pub disk_free_mb: i64,
    pub version: String,
    pub lost_at: Option<i64>,
}

impl NodeRecord {
    const COLUMNS: &'static str = "name, url, availability, swarm_availability, started_at, heartbeat_at, \
        max_sessions, memory_mb, disk_free_mb, version, lost_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let availability: String = r.try_get("availability")?;
        let swarm: String = r.try_get("swarm_availability")?;
        Ok(NodeRecord {
            name: r.try_get("name")?,
            url: r.try_get("url")?,
            availability: Availability::parse(&availability).unwrap_or(Availability::Active),
            swarm_availability: Availability::parse(&swarm),
            started_at: r.try_get("started_at")?,
            heartbeat_at: r.try_get("heartbeat_at")?,
            max_sessions: r.try_get("max_sessions")?,
            memory_mb: r.try_get("memory_mb")?,
            disk_free_mb: r.try_get("disk_free_mb")?,
            version: r.try_get("version")?,
            lost_at: r.try_get("lost_at")?,
        })
    }

    /// What the node takes: the stricter of the operator's word and Swarm's.
    pub fn effective_availability(&self) -> Availability {
        self.swarm_availability.map_or(self.availability, |s| s.stricter(self.availability))
    }
}

/// What a node's runner reports with each heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub url: &'a str,
    pub swarm_availability: Option<Availability>,
    pub started_at: i64,
    pub max_sessions: i64,
    pub memory_mb: i64,
    pub disk_free_mb: i64,
    pub version: &'a str,
}

/// A node's load as the database knows it: live sessions and the memory their limits commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeLoad {
    pub sessions: i64,
    pub memory_mb: i64,
}

impl Store {
    /// Writes this node's heartbeat (the row is made on the first); the operator's availability
    /// is kept, and a lost mark is cleared: the node is back.
    pub async fn heartbeat(&self, h: &Heartbeat<'_>) -> anyhow::Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO nodes (name, url, availability, swarm_availability, started_at, heartbeat_at, max_sessions, \
             memory_mb, disk_free_mb, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET url = $2, swarm_availability = $4, started_at = $5, heartbeat_at = $6, \
             max_sessions = $7, memory_mb = $8, disk_free_mb = $9, version = $10, lost_at = NULL",
        )
        .bind(&*self.node)
        .bind(h.url)
        .bind(Availability::Active.as_str())
        .bind(h.swarm_availability.map_or("", Availability::as_str))
        .bind(h.started_at)
        .bind(now)
        .bind(h.max_sessions)
        .bind(h.memory_mb)
        .bind(h.disk_free_mb)
        .bind(h.version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeRecord>> {
        let sql = format!("SELECT {} FROM nodes ORDER BY name", NodeRecord::COLUMNS);
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(NodeRecord::from_row).collect()
    }

    pub async fn node_record(&self, name: &str) -> anyhow::Result<Option<NodeRecord>> {
        let sql = format!("SELECT {} FROM nodes WHERE name = $1", NodeRecord::COLUMNS);
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(NodeRecord::from_row).transpose()
    }

    /// Sets what an operator says of a node; false when there is no such node.
    pub async fn set_availability(&self, name: &str, availability: Availability) -> anyhow::Result<bool> {
        let n = sqlx::query("UPDATE nodes SET availability = $1 WHERE name = $2")
            .bind(availability.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Every node's live sessions and committed memory, by name (nodes without any are absent).
    pub async fn node_loads(&self) -> anyhow::Result<std::collections::HashMap<String, NodeLoad>> {
        let sql = format!(
            "SELECT node, COUNT(*) AS n, CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS m FROM sessions WHERE {} GROUP BY node",
            state_in("state", SessionState::LIVE)
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("node")?,
                    NodeLoad { sessions: r.try_get("n")?, memory_mb: r.try_get("m")? },
                ))
            })
            .collect()
    }

    /// The node whose disk holds a learner's workspace for an exercise, when they have one.
    pub async fn workspace_node(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT node FROM workspaces WHERE learner = $1 AND exercise = $2")
            .bind(learner)
            .bind(exercise)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get::<String, _>("node")?)).transpose()
    }

    /// Declares `node` lost when its heartbeat is still older than `stale_before` (another
    /// runner may have declared it, or it may have come back): whether this call did. The
    /// node's live sessions are then ended with `node_lost`, each with its `session.ended`.
    pub async fn declare_lost(&self, node: &str, stale_before: i64) -> anyhow::Result<bool> {
        let n = sqlx::query("UPDATE nodes SET lost_at = $1 WHERE name = $2 AND heartbeat_at < $3 AND lost_at IS NULL")
            .bind(now_ms())
            .bind(node)
            .bind(stale_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// The unfinished sessions of another node, for ending them when it is lost.
    pub async fn sessions_on(&self, node: &str) -> anyhow::Result<Vec<super::SessionRecord>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE node = $1 AND {}",
            super::SessionRecord::COLUMNS,
            state_in("state", SessionState::UNFINISHED)
        );
        let rows = sqlx::query(&sql).bind(node).fetch_all(&self.pool).await?;
        rows.iter().map(super::SessionRecord::from_row).collect()
    }

    /// Ends a session whose node was lost, as a stop would (`stopping`, then `stopped`, which
    /// tells the web app `session.ended` with reason `node_lost`); nothing is removed: the
    /// node's engine is out of reach, and its runner removes the sandbox when it returns.
    pub async fn end_lost(&self, id: &str) -> anyhow::Result<bool> {
        self.transition(id, SessionState::LIVE, SessionState::Stopping, None, Some(EndReason::NodeLost)).await?;
        self.transition(id, &[SessionState::Stopping], SessionState::Stopped, Some("its node was lost"), None).await
    }
}
