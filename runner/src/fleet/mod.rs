//! A fleet of sandbox hosts sharing one PostgreSQL (docs/ARCHITECTURE.md, "Fleet"): a runner on
//! every node drives only its own engine; any runner answers the API and the IDE, and hands
//! what another node must do to that node's runner (`forward.rs`). Nodes heartbeat their row;
//! a node silent for `RUNNER_NODE_LOST_SECS` is declared lost and its sessions end with
//! `node_lost`. A single host is the node `local`: it heartbeats too (the API lists it) and
//! never forwards.

pub mod forward;
pub mod images;
pub mod placement;
pub mod tls;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    engine::Engine,
    lifecycle::{Availability, BuildState, LOCAL_NODE},
    metrics::Metrics,
    store::{now_ms, Heartbeat, NodeRecord, Store},
};

pub struct Fleet {
    settings: Arc<Settings>,
    store: Store,
    engine: Engine,
    metrics: Arc<Metrics>,
    started_at: i64,
    /// Relays to other runners (`None` on a single host: nothing is ever forwarded).
    pub forwarder: Option<forward::Forwarder>,
    /// Wakes the image round (`images.rs`).
    images_wanted: Arc<tokio::sync::Notify>,
    /// Images whose pull failed, and when to try again.
    pull_backoff: images::Backoff,
    /// The fleet's certificate, when relays go over TLS.
    pub tls: Option<tls::FleetTls>,
}

/// Where a new session should start.
#[derive(Debug)]
pub enum Placement {
    /// Here: this runner starts it (a single host).
    Here,
    /// On these nodes, best first (this node may be among them: it starts the session itself
    /// when its turn comes).
    Ranked(Vec<NodeRecord>),
    /// No node has room or is taking sessions.
    Nowhere,
}

impl Fleet {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        engine: Engine,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let tls = match (&settings.fleet.tls_cert, &settings.fleet.tls_key) {
            (Some(cert), Some(key)) => Some(tls::FleetTls::from_pem(cert, key.expose())?),
            _ => None,
        };
        let client_tls = tls.as_ref().map_or_else(tls::no_tls_client, tls::FleetTls::client_config);
        let forwarder = (settings.fleet.node != LOCAL_NODE)
            .then(|| {
                settings
                    .fleet
                    .secret
                    .as_ref()
                    .map(|s| forward::Forwarder::new(s.expose(), &settings.fleet.node, client_tls))
            })
            .flatten();
        let images_wanted = Arc::new(tokio::sync::Notify::new());
        Ok(Arc::new(Fleet {
            settings,
            store,
            engine,
            metrics,
            started_at: now_ms(),
            forwarder,
            images_wanted,
            pull_backoff: images::Backoff::default(),
            tls,
        }))
    }

    /// This runner's node.
    pub fn node(&self) -> &str {
        &self.settings.fleet.node
    }

    /// A session found its image missing on this node: pull what is missing now rather than at
    /// the next image round.
    pub fn want_images(&self) {
        self.images_wanted.notify_one();
    }

    /// Whether this runner is a node of a fleet (and forwards what is another node's).
    pub fn enabled(&self) -> bool {
        self.forwarder.is_some()
    }

    fn lost_after_ms(&self) -> i64 {
        self.settings.fleet.lost_after.as_millis() as i64
    }

    /// Whether a node takes requests: heartbeating, not declared lost.
    pub fn alive(&self, n: &NodeRecord) -> bool {
        placement::alive(n, now_ms(), self.lost_after_ms())
    }

    /// The node that must handle what concerns session `id`, when it is another node.
    pub async fn owner_of_session(&self, id: &str) -> anyhow::Result<Option<NodeRecord>> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(session) = self.store.session(id).await? else { return Ok(None) };
        self.other(&session.node).await
    }

    /// The node that holds a learner's workspace, when it is another node.
    pub async fn owner_of_workspace(&self, learner: &str, exercise: &str) -> anyhow::Result<Option<NodeRecord>> {
        if !self.enabled() {
            return Ok(None);
        }
        if let Some(live) = self.store.live_session_for(learner, exercise).await? {
            return self.other(&live.node).await;
        }
        match self.store.workspace_node(learner, exercise).await? {
            Some(node) => self.other(&node).await,
            None => Ok(None),
        }
    }

    /// The node that runs build `id` (its log, its cancel), when it is another node.
    pub async fn owner_of_build(&self, id: &str) -> anyhow::Result<Option<NodeRecord>> {
        if !self.enabled() {
            return Ok(None);
        }
        match self.store.build(id).await?.and_then(|b| b.node) {
            Some(node) => self.other(&node).await,
            None => Ok(None),
        }
    }

    async fn other(&self, node: &str) -> anyhow::Result<Option<NodeRecord>> {
        if node == self.node() {
            return Ok(None);
        }
        Ok(Some(self.store.node_record(node).await?.unwrap_or_else(|| NodeRecord {
            name: node.to_string(),
            url: String::new(),
            availability: Availability::Active,
            swarm_availability: None,
            started_at: 0,
            heartbeat_at: 0,
            max_sessions: 0,
            memory_mb: 0,
            disk_free_mb: 0,
            version: String::new(),
            lost_at: None,
        })))
    }

    /// Where a new session of `learner` for `exercise` should start.
    pub async fn place(
        &self,
        learner: &str,
        exercise: &str,
        memory_mb: i64,
        disk_mb: i64,
    ) -> anyhow::Result<Placement> {
        if !self.enabled() {
            return Ok(Placement::Here);
        }
        let nodes = self.store.nodes().await?;
        let loads = self.store.node_loads().await?;
        let workspace_node = self.store.workspace_node(learner, exercise).await?;
        let key = format!("{learner}/{exercise}");
        let want = placement::Want { memory_mb, disk_mb, workspace_node: workspace_node.as_deref(), key: &key };
        let ranked = placement::rank(&nodes, &loads, now_ms(), self.lost_after_ms(), &want);
        self.metrics.placements.with_label_values(&[if ranked.is_empty() { "nowhere" } else { "placed" }]).inc();
        if ranked.is_empty() {
            return Ok(Placement::Nowhere);
        }
        let by_name: std::collections::HashMap<&str, &NodeRecord> =
            nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        Ok(Placement::Ranked(ranked.iter().filter_map(|n| by_name.get(n.as_str()).map(|r| (*r).clone())).collect()))
    }

    /// One heartbeat: this node's row, then the other nodes' liveness. A node whose engine
    /// does not answer writes none: placement stops choosing it, and after
    /// `RUNNER_NODE_LOST_SECS` the fleet declares it lost.
    pub async fn heartbeat(&self) -> anyhow::Result<()> {
        if let Err(e) = self.engine.ping().await {
            return Err(e.context("the node's engine does not answer: no heartbeat"));
        }
        let swarm = if self.settings.fleet.follow_swarm {
            match self.engine.swarm_availability().await {
                Ok(a) => a.as_deref().and_then(Availability::parse),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "could not read the Swarm node's availability");
                    None
                }
            }
        } else {
            None
        };
        let (memory_mb, disk_free_mb) = host_room(&self.settings);
        self.store
            .heartbeat(&Heartbeat {
                url: &self.settings.fleet.url,
                swarm_availability: swarm,
                started_at: self.started_at,
                max_sessions: self.settings.max_live_sessions as i64,
                memory_mb,
                disk_free_mb,
                version: env!("CARGO_PKG_VERSION"),
            })
            .await?;
        if self.enabled() {
            self.declare_lost_nodes().await?;
        }
        self.observe().await
    }

    /// Declares lost every other node silent for `RUNNER_NODE_LOST_SECS` (one runner wins each
    /// declaration) and ends its sessions with `node_lost`. Sessions left unfinished on a node
    /// already declared lost (a declarer that died halfway) are ended too.
    async fn declare_lost_nodes(&self) -> anyhow::Result<()> {
        let now = now_ms();
        for n in self.store.nodes().await? {
            if n.name == self.node() || placement::alive(&n, now, self.lost_after_ms()) {
                continue;
            }
            if n.lost_at.is_none() {
                if !self.store.declare_lost(&n.name, now - self.lost_after_ms()).await? {
                    continue;
                }
                self.metrics.nodes_lost.inc();
                tracing::warn!(node = %n.name, silent_secs = (now - n.heartbeat_at) / 1000, "node lost: ending its sessions");
            }
            for s in self.store.sessions_on(&n.name).await? {
                if self.store.end_lost(&s.id).await? {
                    tracing::info!(session = %s.id, learner = %s.learner, node = %n.name, "session ended: its node was lost");
                }
            }
            // Its builds, running or waiting on its disk, will not finish.
            for b in self.store.builds_on(&n.name, BuildState::ACTIVE).await? {
                let (to, reason) = if b.state == BuildState::Queued {
                    (BuildState::Cancelled, "its node was lost before it started; submit it again")
                } else {
                    (BuildState::Failed, "its node was lost; submit it again")
                };
                if self.store.transition_build(&b.id, &[b.state], to, Some(reason)).await? {
                    tracing::info!(build = %b.id, node = %n.name, "build ended: its node was lost");
                }
            }
        }
        Ok(())
    }

    async fn observe(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let nodes = self.store.nodes().await?;
        let loads = self.store.node_loads().await?;
        let m = &self.metrics;
        m.node_up.reset();
        m.node_sessions.reset();
        for n in &nodes {
            let up = placement::alive(n, now, self.lost_after_ms());
            m.node_up.with_label_values(&[&n.name, n.effective_availability().as_str()]).set(i64::from(up));
            m.node_sessions.with_label_values(&[&n.name]).set(loads.get(&n.name).map_or(0, |l| l.sessions));
        }
        Ok(())
    }
}

/// This host's memory for sandboxes (`MemTotal` less the pool reserve) and the data
/// directory's free disk, in MB.
fn host_room(settings: &Settings) -> (i64, i64) {
    let (total, _) = crate::usage::cgroup::meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let memory = ((total / (1024 * 1024)) as i64 - settings.pool_memory_reserve_mb as i64).max(0);
    let disk = rustix::fs::statvfs(&settings.data_dir)
        .map(|s| (s.f_bavail.saturating_mul(s.f_frsize) / (1024 * 1024)) as i64)
        .unwrap_or(0);
    (memory, disk)
}

/// The heartbeat loop: every `RUNNER_NODE_HEARTBEAT_SECS`, from the start.
pub async fn run(fleet: Arc<Fleet>, cancel: CancellationToken) {
    let period = fleet.settings.fleet.heartbeat;
    crate::rounds::every(period, crate::rounds::First::Now, cancel, || {
        let fleet = fleet.clone();
        async move {
            if let Err(e) = fleet.heartbeat().await {
                tracing::warn!(error = %format!("{e:#}"), "fleet heartbeat failed; will retry");
            }
        }
    })
    .await;
}
