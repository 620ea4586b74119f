//! Reconciliation: make Docker match the database (docs/ARCHITECTURE.md, invariant 2). Runs at start, before
//! the API answers, and then periodically.
//!
//! - a live session whose container runs: adopted as it is (the same container);
//! - a live session whose container exited (a crash, an OOM kill of PID 1): started again;
//! - a live session whose container vanished: recreated on the same workspace, so nothing of the
//!   learner is lost (marked `failed` only if that fails);
//! - a session left `stopping` by a crash: its stop is finished;
//! - a labelled container of this instance with no live session: removed (an orphan).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{app::App, domain::SessionState};

pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(app.settings.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first round ran at start
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reconcile_once(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "reconciliation failed; will retry");
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: usize,
    pub restarted: usize,
    pub recreated: usize,
    pub stops_finished: usize,
    pub orphans_removed: usize,
}

pub async fn reconcile_once(app: &Arc<App>) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // Read Docker first: a session created after this listing is in flight, and skipped below.
    let containers = app.engine.list_sandboxes().await?;
    let live = app.store.live_sessions().await?;
    let mut by_session: HashMap<&str, &crate::docker::FoundSandbox> = HashMap::new();
    for c in &containers {
        if let Some(s) = c.session_id.as_deref() {
            by_session.insert(s, c);
        }
    }
    let mut in_flight = app.starting.lock().expect("lock").clone();
    // Starts other replicas on the same database are making right now.
    in_flight.extend(app.store.leased_starts(crate::store::now_ms()).await?);
    let count = |action: &str| app.metrics.reconcile_actions.with_label_values(&[action]).inc();

    for s in &live {
        if in_flight.contains(&s.id) {
            continue;
        }
        if s.state == SessionState::Stopping {
            super::finish_stop(app, s, None).await?;
            report.stops_finished += 1;
            count("stop_finished");
            continue;
        }
        match by_session.get(s.id.as_str()) {
            Some(c) if c.running => {
                if s.state != SessionState::Running || s.container_id.as_deref() != Some(c.id.as_str()) {
                    app.store.mark_running(&s.id, &c.id).await?;
                }
                report.adopted += 1;
            }
            Some(c) => {
                tracing::warn!(session = %s.id, container = %c.id, "sandbox container had exited; starting it again");
                match app.engine.start_container(&c.id).await {
                    Ok(()) => {
                        app.store.mark_running(&s.id, &c.id).await?;
                        report.restarted += 1;
                        count("restarted");
                    }
                    Err(e) => {
                        tracing::warn!(session = %s.id, error = %format!("{e:#}"), "restart failed; recreating");
                        app.engine.remove_container(&c.id).await?;
                        recreate(app, s).await;
                        report.recreated += 1;
                        count("recreated");
                    }
                }
            }
            None => {
                tracing::warn!(session = %s.id, "sandbox container vanished; recreating it on the same workspace");
                recreate(app, s).await;
                report.recreated += 1;
                count("recreated");
            }
        }
    }

    let live_ids: std::collections::HashSet<&str> = live.iter().map(|s| s.id.as_str()).collect();
    for c in &containers {
        let owned = c.session_id.as_deref().is_some_and(|s| live_ids.contains(s) || in_flight.contains(s));
        if !owned {
            tracing::info!(container = %c.id, session = ?c.session_id, "removing orphan sandbox container");
            app.engine.remove_container(&c.id).await?;
            report.orphans_removed += 1;
            count("orphan_removed");
        }
    }
    if let Err(e) = app.workspaces.remove_orphan_volumes().await {
        tracing::warn!(error = %format!("{e:#}"), "could not remove orphan workspace volumes");
    }
    // Cgroups of builds a crash interrupted (older than any build may run).
    let stale = crate::docker::build_cgroup::sweep_stale(app.settings.build_timeout + Duration::from_secs(300));
    if stale > 0 {
        tracing::info!(cgroups = stale, "removed stale build cgroups");
    }
    if report != Report::default() {
        tracing::info!(?report, "reconciled");
    }
    app.metrics.reconcile_rounds.inc();
    Ok(report)
}

/// Recreates a live session's sandbox (same session, same workspace), waiting for a start slot.
async fn recreate(app: &Arc<App>, s: &crate::store::SessionRecord) {
    let permit = match app.start_slots.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = super::spawn_start(app.clone(), s.clone(), permit, Instant::now()).await;
}
