//! Pure: which nodes may take a new session, best first.
//!
//! A node may when it is alive (heartbeat within `RUNNER_NODE_LOST_SECS`, not declared lost),
//! `active`, under its live-session cap, with room for the sandbox's memory limit beside what
//! its live sessions commit, and with disk for the workspace. A returning learner goes to the
//! node holding their workspace while it is up and active (nowhere else while it is full: their
//! files are there); a drained, paused or lost one sends them elsewhere. Others are ranked by
//! committed memory, then sessions, each as a share of the node's own, ties broken by a hash of
//! the learner and the node, so racing runners spread their choices. The node's own runner
//! admits or refuses each session (`sessions::create`), so a stale view overfills nothing.

use std::collections::HashMap;

use crate::{
    lifecycle::Availability,
    store::{NodeLoad, NodeRecord},
};

/// What the new session needs.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub memory_mb: i64,
    pub disk_mb: i64,
    /// The node whose disk holds the learner's workspace for the exercise, if any.
    pub workspace_node: Option<&'a str>,
    /// Spreads ties (the learner and exercise).
    pub key: &'a str,
}

/// Whether a node's heartbeat is recent enough and it was not declared lost.
pub fn alive(n: &NodeRecord, now: i64, lost_after_ms: i64) -> bool {
    n.lost_at.is_none() && n.heartbeat_at >= now - lost_after_ms
}

fn has_room(n: &NodeRecord, load: NodeLoad, want: &Want) -> bool {
    load.sessions < n.max_sessions
        && (n.memory_mb <= 0 || load.memory_mb + want.memory_mb <= n.memory_mb)
        && (n.disk_free_mb <= 0 || want.disk_mb <= n.disk_free_mb)
}

/// The names of the nodes that may take the session, best first; empty: none can.
pub fn rank(
    nodes: &[NodeRecord],
    loads: &HashMap<String, NodeLoad>,
    now: i64,
    lost_after_ms: i64,
    want: &Want,
) -> Vec<String> {
    let load = |n: &NodeRecord| loads.get(&n.name).copied().unwrap_or_default();
    let open = |n: &NodeRecord| alive(n, now, lost_after_ms) && n.effective_availability() == Availability::Active;
    if let Some(home) = want.workspace_node.and_then(|w| nodes.iter().find(|n| n.name == w)) {
        if open(home) {
            return if has_room(home, load(home), want) { vec![home.name.clone()] } else { vec![] };
        }
    }
    let mut ranked: Vec<(f64, f64, u64, &NodeRecord)> = nodes
        .iter()
        .filter(|n| open(n) && has_room(n, load(n), want))
        .map(|n| {
            let l = load(n);
            let memory = if n.memory_mb > 0 { l.memory_mb as f64 / n.memory_mb as f64 } else { 0.0 };
            let sessions = l.sessions as f64 / n.max_sessions.max(1) as f64;
            (memory, sessions, tie_break(want.key, &n.name), n)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, n)| n.name.clone()).collect()
}

/// FNV-1a of the key and the node's name: stable, and different per learner.
fn tie_break(key: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;
    const LOST: i64 = 30_000;

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            url: format!("http://{name}:8080"),
            availability: Availability::Active,
            swarm_availability: None,
            started_at: 0,
            heartbeat_at: NOW - 1_000,
            max_sessions: 10,
            memory_mb: 4096,
            disk_free_mb: 10_000,
            version: "test".into(),
            lost_at: None,
        }
    }

    fn want(workspace_node: Option<&str>) -> Want<'_> {
        Want { memory_mb: 512, disk_mb: 256, workspace_node, key: "learner/exercise" }
    }

    fn loads(v: &[(&str, i64, i64)]) -> HashMap<String, NodeLoad> {
        v.iter().map(|(n, s, m)| (n.to_string(), NodeLoad { sessions: *s, memory_mb: *m })).collect()
    }

    #[test]
    fn the_least_committed_node_comes_first() {
        let nodes = [node("a"), node("b"), node("c")];
        let l = loads(&[("a", 3, 1536), ("b", 1, 512), ("c", 2, 1024)]);
        assert_eq!(rank(&nodes, &l, NOW, LOST, &want(None)), ["b", "c", "a"]);
    }

    #[test]
    fn full_nodes_are_left_out_by_sessions_memory_or_disk() {
        let mut disk = node("disk");
        disk.disk_free_mb = 100;
        let nodes = [node("sessions"), node("memory"), disk, node("ok")];
        let l = loads(&[("sessions", 10, 0), ("memory", 1, 3800)]);
        assert_eq!(rank(&nodes, &l, NOW, LOST, &want(None)), ["ok"]);
    }

    #[test]
    fn lost_drained_and_paused_nodes_get_no_new_sessions() {
        let mut stale = node("stale");
        stale.heartbeat_at = NOW - LOST - 1;
        let mut lost = node("lost");
        lost.lost_at = Some(NOW - 5);
        let mut drain = node("drain");
        drain.availability = Availability::Drain;
        let mut paused_by_swarm = node("paused");
        paused_by_swarm.swarm_availability = Some(Availability::Pause);
        let nodes = [stale, lost, drain, paused_by_swarm, node("ok")];
        assert_eq!(rank(&nodes, &HashMap::new(), NOW, LOST, &want(None)), ["ok"]);
    }

    #[test]
    fn swarm_and_operator_availability_combine_to_the_stricter() {
        let mut n = node("a");
        n.availability = Availability::Pause;
        n.swarm_availability = Some(Availability::Active);
        assert_eq!(n.effective_availability(), Availability::Pause);
        n.swarm_availability = Some(Availability::Drain);
        assert_eq!(n.effective_availability(), Availability::Drain);
    }

    #[test]
    fn a_returning_learner_goes_home_and_nowhere_else_while_home_is_up() {
        let nodes = [node("a"), node("home"), node("c")];
        let l = loads(&[("home", 5, 2048)]);
        assert_eq!(rank(&nodes, &l, NOW, LOST, &want(Some("home"))), ["home"]);
        let full = loads(&[("home", 10, 2048)]);
        assert!(rank(&nodes, &full, NOW, LOST, &want(Some("home"))).is_empty(), "their files are there");
    }

    #[test]
    fn a_returning_learner_whose_home_is_drained_or_lost_starts_elsewhere() {
        let mut home = node("home");
        home.availability = Availability::Drain;
        let nodes = [node("a"), home.clone()];
        assert_eq!(rank(&nodes, &HashMap::new(), NOW, LOST, &want(Some("home"))), ["a"]);
        home.availability = Availability::Active;
        home.heartbeat_at = NOW - LOST - 1;
        let nodes = [node("a"), home];
        assert_eq!(rank(&nodes, &HashMap::new(), NOW, LOST, &want(Some("home"))), ["a"]);
    }

    #[test]
    fn ties_spread_learners_over_nodes() {
        let nodes = [node("a"), node("b"), node("c")];
        let mut first = std::collections::HashSet::new();
        for i in 0..30 {
            let key = format!("learner-{i}/ex");
            let w = Want { key: &key, ..want(None) };
            first.insert(rank(&nodes, &HashMap::new(), NOW, LOST, &w)[0].clone());
        }
        assert_eq!(first.len(), 3, "every node is someone's first choice");
    }
}
