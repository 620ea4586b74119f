//! Reconciliation: make Docker match the database (docs/ARCHITECTURE.md, invariant 2), as a pure
//! [`plan`] and its execution. Runs at start, before the API answers, and then periodically.
//!
//! - a live session whose container runs: adopted as it is (the same container);
//! - a live session whose container exited (a crash, an OOM kill of PID 1): started again;
//! - a live session whose container vanished: recreated on the same workspace, so nothing of the
//!   learner is lost (marked `failed` only if that fails);
//! - a session left `stopping` by a crash: its stop is finished;
//! - a labelled container of this instance with no live session: removed (an orphan).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::Sessions;
use crate::{domain::SessionState, engine::FoundSandbox, lifecycle::SessionEvent, store::SessionRecord};

pub async fn run(sessions: Arc<Sessions>, cancel: CancellationToken) {
    // The first round ran at start, before the API answered.
    crate::rounds::every(sessions.settings.reconcile_interval, crate::rounds::First::AfterPeriod, cancel, || async {
        if let Err(e) = reconcile_once(&sessions).await {
            sessions.metrics.reconcile_failures.inc();
            tracing::warn!(error = %format!("{e:#}"), "reconciliation failed; will retry");
        }
    })
    .await
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: usize,
    pub restarted: usize,
    pub replaced_unhealthy: usize,
    pub recreated: usize,
    pub stops_finished: usize,
    pub orphans_removed: usize,
}

/// One step that makes Docker match the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A session left `stopping` (by a crash): finish its stop.
    FinishStop { session: String },
    /// Its container runs: keep it; `record` when the database does not say so yet.
    Adopt { session: String, container: String, record: bool },
    /// Its container exited: start it again (recreated when that fails).
    Restart { session: String, container: String },
    /// Its container vanished: make it again on the same workspace.
    Recreate { session: String },
    /// Its container runs but its health check keeps failing (the IDE agent does not answer, or
    /// a service of the exercise is stuck): replace it, on the same workspace.
    ReplaceUnhealthy { session: String, container: String },
    /// Many sandboxes failed their health checks at once ([`host_wide`]): the host is the
    /// likely cause (overloaded, its engine slow to run the checks), not each sandbox. They are
    /// kept (adopted) this round, and the operator is told.
    HoldUnhealthy { unhealthy: usize, running: usize },
    /// A container of this instance that no live session owns.
    RemoveOrphan { container: String },
}

/// What to do, from what the database intends (`live` sessions), what Docker has (`observed`
/// sandboxes of this instance) and which starts are in flight (here or in another replica, by
/// its start lease): pure, so every case is a unit test.
///
/// A claimed pooled sandbox carries its pool's name and labels, not its session's: the session
/// that names it as its `container_id` owns it. Pooled sandboxes not claimed (`pooled`: the pool
/// ids the database or this process's pool know) are the pool's to manage, not orphans.
pub fn plan(
    live: &[SessionRecord],
    observed: &[FoundSandbox],
    in_flight: &HashSet<String>,
    pooled: &HashSet<String>,
) -> Vec<Action> {
    let by_container: HashMap<&str, &FoundSandbox> = observed.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut by_session: HashMap<&str, &FoundSandbox> = HashMap::new();
    for c in observed {
        if let Some(s) = c.session_id.as_deref() {
            by_session.insert(s, c);
        }
    }
    for s in live {
        let claimed = s.container_id.as_deref().and_then(|c| by_container.get(c)).filter(|c| c.pool_id.is_some());
        if let Some(c) = claimed {
            by_session.entry(s.id.as_str()).or_insert(c);
        }
    }
    let owned_containers: HashSet<&str> =
        live.iter().filter_map(|s| by_session.get(s.id.as_str()).map(|c| c.id.as_str())).collect();
    let mut actions = vec![];
    for s in live.iter().filter(|s| !in_flight.contains(&s.id)) {
        let session = s.id.clone();
        if s.state == SessionState::Stopping {
            actions.push(Action::FinishStop { session });
            continue;
        }
        actions.push(match by_session.get(s.id.as_str()) {
            Some(c) if c.running && c.unhealthy => Action::ReplaceUnhealthy { session, container: c.id.clone() },
            Some(c) if c.running => Action::Adopt { session, container: c.id.clone(), record: needs_record(s, &c.id) },
            Some(c) => Action::Restart { session, container: c.id.clone() },
            None => Action::Recreate { session },
        });
    }
    let unhealthy = actions.iter().filter(|a| matches!(a, Action::ReplaceUnhealthy { .. })).count();
    let running =
        actions.iter().filter(|a| matches!(a, Action::Adopt { .. } | Action::ReplaceUnhealthy { .. })).count();
    if host_wide(unhealthy, running) {
        for a in actions.iter_mut() {
            if let Action::ReplaceUnhealthy { session, container } = a {
                let s = live.iter().find(|s| s.id == *session).expect("the plan names live sessions");
                let record = needs_record(s, container);
                *a = Action::Adopt { session: std::mem::take(session), container: std::mem::take(container), record };
            }
        }
        actions.push(Action::HoldUnhealthy { unhealthy, running });
    }
    let live_ids: HashSet<&str> = live.iter().map(|s| s.id.as_str()).collect();
    for c in observed {
        let owned = c.session_id.as_deref().is_some_and(|s| live_ids.contains(s) || in_flight.contains(s))
            || owned_containers.contains(c.id.as_str())
            || c.pool_id.as_deref().is_some_and(|p| pooled.contains(p));
        if !owned {
            actions.push(Action::RemoveOrphan { container: c.id.clone() });
        }
    }
    actions
}

/// Whether adopting `container` for `s` must be written down: the database does not say yet
/// that it runs, or names another container.
fn needs_record(s: &SessionRecord, container: &str) -> bool {
    s.state != SessionState::Running || s.container_id.as_deref() != Some(container)
}

/// Fewest unhealthy sandboxes in one round that may be the host's doing rather than theirs.
const HOST_WIDE_MIN: usize = 3;

/// Whether `unhealthy` of the `running` sandboxes failing their checks in the same round point at
/// the host: at least [`HOST_WIDE_MIN`] and more than a quarter. A sandbox whose learner broke it
/// (a stuck service, a fork bomb starving the agent) fails alone; a host too loaded to run the
/// checks in time (gVisor under a heavy exec load took over 5 s) fails many at once, and
/// replacing them all would cut every one of those learners off and load the host more.
pub fn host_wide(unhealthy: usize, running: usize) -> bool {
    unhealthy >= HOST_WIDE_MIN && unhealthy * 4 > running
}

pub async fn reconcile_once(sessions: &Arc<Sessions>) -> anyhow::Result<Report> {
    // Read Docker first: a session created after this listing is in flight, and skipped.
    let mut observed = sessions.engine.list_sandboxes().await?;
    sessions.health.mark(&mut observed);
    let live = sessions.store.live_sessions().await?;
    let mut in_flight = sessions.starting.lock().expect("lock").clone();
    in_flight.extend(sessions.stopping.lock().expect("lock").iter().cloned());
    // Starts other replicas on the same database are making right now.
    in_flight.extend(sessions.store.leased_starts(crate::store::now_ms()).await?);
    // Pooled sandboxes: read after Docker too, so one made since the listing is known here.
    let mut pooled: HashSet<String> = sessions.store.pooled().await?.into_iter().map(|p| p.id).collect();
    pooled.extend(sessions.pools.in_flight().into_keys());
    // A claim commits its session after the listing: read the live sessions again for it.
    let live = if pooled.is_empty() { live } else { sessions.store.live_sessions().await? };
    let mut report = Report::default();
    for action in plan(&live, &observed, &in_flight, &pooled) {
        execute(sessions, &live, action, &mut report).await?;
    }
    if let Err(e) = sessions.workspaces.remove_orphan_volumes().await {
        tracing::warn!(error = %format!("{e:#}"), "could not remove orphan workspace volumes");
    }
    // Cgroups of builds a crash interrupted (older than any build may run).
    let stale = sessions.engine.sweep_stale_builds(sessions.settings.build_timeout + Duration::from_secs(300));
    if stale > 0 {
        tracing::info!(cgroups = stale, "removed stale build cgroups");
    }
    if report != Report::default() {
        tracing::info!(?report, "reconciled");
    }
    sessions.metrics.reconcile_rounds.inc();
    Ok(report)
}

/// Carries out one action of the plan (each step one idempotent Docker or database call).
async fn execute(
    sessions: &Arc<Sessions>,
    live: &[SessionRecord],
    action: Action,
    report: &mut Report,
) -> anyhow::Result<()> {
    let count = |action: &str| sessions.metrics.reconcile_actions.with_label_values(&[action]).inc();
    let record = |id: &str| live.iter().find(|s| s.id == id).expect("the plan names live sessions");
    match action {
        Action::FinishStop { session } => {
            super::finish_stop(sessions, record(&session), None).await?;
            report.stops_finished += 1;
            count("stop_finished");
        }
        Action::Adopt { session, container, record: needs_record } => {
            if needs_record {
                sessions.store.mark_running(&session, &container).await?;
            }
            report.adopted += 1;
        }
        Action::Restart { session, container } => {
            tracing::warn!(%session, %container, "sandbox container had exited; starting it again");
            match sessions.engine.start_container(&container).await {
                Ok(()) => {
                    sessions.store.mark_running(&session, &container).await?;
                    super::record_event(sessions, &session, SessionEvent::Restarted, Some("its container had exited"))
                        .await;
                    report.restarted += 1;
                    count("restarted");
                }
                Err(e) => {
                    tracing::warn!(%session, error = %format!("{e:#}"), "restart failed; recreating");
                    sessions.engine.remove_container(&container).await?;
                    super::record_event(
                        sessions,
                        &session,
                        SessionEvent::Recreated,
                        Some("its container would not restart"),
                    )
                    .await;
                    recreate(sessions, record(&session)).await;
                    report.recreated += 1;
                    count("recreated");
                }
            }
        }
        Action::ReplaceUnhealthy { session, container } => {
            tracing::warn!(%session, %container, "sandbox unhealthy; replacing it on the same workspace");
            let detail = match sessions.health.unhealthy(&container) {
                Some(reason) if !reason.is_empty() => format!("its health check kept failing: {reason}"),
                _ => "its health check kept failing".to_string(),
            };
            super::record_event(sessions, &session, SessionEvent::Unhealthy, Some(&detail)).await;
            sessions.engine.remove_container(&container).await?;
            recreate(sessions, record(&session)).await;
            report.replaced_unhealthy += 1;
            count("replaced_unhealthy");
        }
        Action::HoldUnhealthy { unhealthy, running } => {
            tracing::warn!(
                unhealthy,
                running,
                "many sandboxes failed their health checks at once: the host is the likely cause (overloaded?); \
                 keeping them this round instead of replacing them"
            );
            sessions.metrics.reconcile_actions.with_label_values(&["unhealthy_held"]).inc_by(unhealthy as u64);
        }
        Action::Recreate { session } => {
            tracing::warn!(%session, "sandbox container vanished; recreating it on the same workspace");
            super::record_event(sessions, &session, SessionEvent::Recreated, Some("its container had vanished")).await;
            recreate(sessions, record(&session)).await;
            report.recreated += 1;
            count("recreated");
        }
        Action::RemoveOrphan { container } => {
            tracing::info!(%container, "removing orphan sandbox container");
            sessions.engine.remove_container(&container).await?;
            report.orphans_removed += 1;
            count("orphan_removed");
        }
    }
    Ok(())
}

/// Recreates a live session's sandbox (same session, same workspace), waiting for a start slot.
async fn recreate(sessions: &Arc<Sessions>, s: &SessionRecord) {
    let permit = match sessions.start_slots.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = super::spawn_start(sessions.clone(), s.clone(), permit, Instant::now()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, state: SessionState, container: Option<&str>) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            learner: "ada".into(),
            exercise: "ex".into(),
            image: "img".into(),
            spec: "{}".into(),
            state,
            failure_reason: None,
            container_id: container.map(str::to_string),
            created_at: 0,
            last_activity_at: 0,
            ended_at: None,
            node: "local".into(),
            memory_mb: 512,
        }
    }

    fn sandbox(id: &str, session: Option<&str>, running: bool) -> FoundSandbox {
        FoundSandbox {
            id: id.into(),
            session_id: session.map(str::to_string),
            pool_id: None,
            running,
            unhealthy: false,
            probe: None,
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    #[test]
    fn a_running_sandbox_is_adopted_and_recorded_only_when_the_database_lags() {
        let live = [session("a", SessionState::Running, Some("c1")), session("b", SessionState::Starting, None)];
        let observed = [sandbox("c1", Some("a"), true), sandbox("c2", Some("b"), true)];
        assert_eq!(
            plan(&live, &observed, &none(), &none()),
            vec![
                Action::Adopt { session: "a".into(), container: "c1".into(), record: false },
                Action::Adopt { session: "b".into(), container: "c2".into(), record: true },
            ]
        );
        // The database names another container than the one running: record the one that runs.
        let live = [session("a", SessionState::Running, Some("old"))];
        let observed = [sandbox("c1", Some("a"), true)];
        assert_eq!(
            plan(&live, &observed, &none(), &none()),
            vec![Action::Adopt { session: "a".into(), container: "c1".into(), record: true }]
        );
    }

    #[test]
    fn an_exited_sandbox_is_restarted_and_a_vanished_one_recreated() {
        let live = [session("a", SessionState::Running, Some("c1")), session("b", SessionState::Running, Some("c2"))];
        let observed = [sandbox("c1", Some("a"), false)];
        assert_eq!(
            plan(&live, &observed, &none(), &none()),
            vec![
                Action::Restart { session: "a".into(), container: "c1".into() },
                Action::Recreate { session: "b".into() },
            ]
        );
    }

    #[test]
    fn an_unhealthy_sandbox_is_replaced_but_not_one_in_flight() {
        let live = [session("a", SessionState::Running, Some("c1")), session("b", SessionState::Running, Some("c2"))];
        let observed = [
            FoundSandbox { unhealthy: true, ..sandbox("c1", Some("a"), true) },
            FoundSandbox { unhealthy: true, ..sandbox("c2", Some("b"), true) },
        ];
        let in_flight: HashSet<String> = ["b".to_string()].into();
        assert_eq!(
            plan(&live, &observed, &in_flight, &none()),
            vec![Action::ReplaceUnhealthy { session: "a".into(), container: "c1".into() }]
        );
    }

    #[test]
    fn many_unhealthy_at_once_are_the_hosts_doing_and_kept() {
        let ids: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        let live: Vec<_> = ids.iter().map(|i| session(i, SessionState::Running, Some(&format!("c{i}")))).collect();
        let sick = |n: usize| -> Vec<FoundSandbox> {
            ids.iter()
                .enumerate()
                .map(|(k, i)| FoundSandbox { unhealthy: k < n, ..sandbox(&format!("c{i}"), Some(i), true) })
                .collect()
        };
        let replaced =
            |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::ReplaceUnhealthy { .. })).count();
        // Two of eight: each its own trouble, replaced.
        assert_eq!(replaced(&plan(&live, &sick(2), &none(), &none())), 2);
        // Three of eight: the host's; all kept as they are, and said once.
        let actions = plan(&live, &sick(3), &none(), &none());
        assert_eq!(replaced(&actions), 0);
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Adopt { record: false, .. })).count(), 8);
        assert_eq!(actions.last(), Some(&Action::HoldUnhealthy { unhealthy: 3, running: 8 }));
        assert!(!host_wide(2, 2), "two alone are never the host's");
        assert!(!host_wide(25, 100) && host_wide(26, 100));
    }

    #[test]
    fn a_stop_cut_short_is_finished_whatever_docker_has() {
        let live = [session("a", SessionState::Stopping, Some("c1")), session("b", SessionState::Stopping, None)];
        let observed = [sandbox("c1", Some("a"), true)];
        assert_eq!(
            plan(&live, &observed, &none(), &none()),
            vec![Action::FinishStop { session: "a".into() }, Action::FinishStop { session: "b".into() }]
        );
    }

    #[test]
    fn containers_no_live_session_owns_are_orphans() {
        let live = [session("a", SessionState::Running, Some("c1"))];
        let observed = [sandbox("c1", Some("a"), true), sandbox("c2", Some("gone"), true), sandbox("c3", None, false)];
        assert_eq!(
            plan(&live, &observed, &none(), &none()),
            vec![
                Action::Adopt { session: "a".into(), container: "c1".into(), record: false },
                Action::RemoveOrphan { container: "c2".into() },
                Action::RemoveOrphan { container: "c3".into() },
            ]
        );
    }

    #[test]
    fn starts_in_flight_here_or_in_another_replica_are_left_alone() {
        // A start in flight: its session has no container yet, and one may appear before the
        // database row (or the row before the container). Neither is touched.
        let live = [session("a", SessionState::Starting, None), session("b", SessionState::Running, Some("c2"))];
        let observed = [sandbox("c-new", Some("new"), true), sandbox("c2", Some("b"), false)];
        let in_flight: HashSet<String> = ["a".to_string(), "new".to_string(), "b".to_string()].into();
        assert_eq!(plan(&live, &observed, &in_flight, &none()), vec![]);
    }

    #[test]
    fn a_claimed_pooled_sandbox_is_its_sessions_and_an_unclaimed_one_the_pools() {
        let pooled_box = |id: &str, pool: &str, running: bool| FoundSandbox {
            pool_id: Some(pool.into()),
            ..sandbox(id, None, running)
        };
        // "a" claimed the sandbox of pool p1 (its container id is in the database); p2 is ready in
        // the pool; p3 is a pooled container nobody knows (a crash between its row's delete and
        // its removal).
        let live = [session("a", SessionState::Running, Some("c1")), session("b", SessionState::Running, Some("c4"))];
        let observed = [
            pooled_box("c1", "p1", true),
            pooled_box("c2", "p2", true),
            pooled_box("c3", "p3", true),
            pooled_box("c4", "p4", false),
        ];
        let pooled: HashSet<String> = ["p2".to_string()].into();
        assert_eq!(
            plan(&live, &observed, &none(), &pooled),
            vec![
                Action::Adopt { session: "a".into(), container: "c1".into(), record: false },
                Action::Restart { session: "b".into(), container: "c4".into() },
                Action::RemoveOrphan { container: "c3".into() },
            ]
        );
        // A pooled container is a session's only through the database: a session that does not
        // name it gets its own sandbox made again instead.
        let live = [session("a", SessionState::Running, Some("elsewhere"))];
        assert_eq!(
            plan(&live, &[pooled_box("c1", "p1", true)], &none(), &none()),
            vec![Action::Recreate { session: "a".into() }, Action::RemoveOrphan { container: "c1".into() }]
        );
    }

    #[test]
    fn nothing_to_do_for_nothing() {
        assert_eq!(plan(&[], &[], &none(), &none()), vec![]);
    }
}
