//! The reaper: stops sessions idle past the timeout or older than the maximum lifetime, and
//! removes workspaces unused past the retention. Runs beside the API, never inside a request.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Sessions;
use crate::{lifecycle::EndReason, store::now_ms};

/// Sessions reaped at once; the rest wait for the next round.
const PARALLEL_STOPS: usize = 8;

pub async fn run(sessions: Arc<Sessions>, cancel: CancellationToken) {
    crate::rounds::every(sessions.settings.reap_interval, crate::rounds::First::Now, cancel, || async {
        if let Err(e) = reap_once(&sessions).await {
            tracing::warn!(error = %format!("{e:#}"), "reaping failed; will retry");
        }
    })
    .await
}

/// One round: stop what expired, drop workspaces past retention.
pub async fn reap_once(sessions: &Arc<Sessions>) -> anyhow::Result<()> {
    // IDE traffic this process has counted but not yet written is activity too: write it first,
    // so a learner typing is never reaped for a batch still in memory.
    sessions.ide.flush_activity().await;
    let now = now_ms();
    let idle_before = now - sessions.settings.idle_timeout.as_millis() as i64;
    let created_before = now - sessions.settings.max_lifetime.as_millis() as i64;
    let expired = sessions.store.expired_sessions(idle_before, created_before).await?;
    futures_util::stream::iter(expired)
        .for_each_concurrent(PARALLEL_STOPS, |s| async move {
            let why = if s.created_at < created_before { EndReason::Lifetime } else { EndReason::Idle };
            let reason = why.as_str();
            match super::stop(sessions, &s.id, why, Some(&format!("reaped: {reason}"))).await {
                Ok(_) => {
                    sessions.metrics.sessions_reaped.with_label_values(&[reason]).inc();
                    tracing::info!(session = %s.id, reason, "reaped session");
                }
                Err(e) => tracing::warn!(session = %s.id, error = %e, "could not reap session"),
            }
        })
        .await;
    let removed = sessions.workspaces.remove_expired(sessions.settings.workspace_retention).await?;
    if removed > 0 {
        tracing::info!(removed, "removed workspaces past retention");
    }
    Ok(())
}
