//! Follows the engine's event stream and records on each session what happened to its sandbox:
//! an OOM kill at once, an exit the runner did not cause (a container that is still there two
//! seconds after it died; one the runner removed is gone by then). Losing the stream (an engine
//! restart) is survived, counted (`runner_engine_event_stream_losses_total`,
//! `runner_engine_events_connected`) and shown on `/readyz`; the follower reconnects with
//! backoff and resumes from the last event it saw, so nothing in between is lost.

use std::{collections::HashSet, future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Sessions;
use crate::{
    engine::{Engine, SandboxEvent, SandboxEventKind},
    lifecycle::SessionEvent,
    metrics::Metrics,
};

/// How long after a `die` the container must still exist for the exit to be the sandbox's own.
const EXIT_SETTLE: Duration = Duration::from_secs(2);

pub async fn run(sessions: Arc<Sessions>, cancel: CancellationToken) {
    let engine = sessions.engine.clone();
    let metrics = sessions.metrics.clone();
    follow(&engine, &metrics, &cancel, Duration::from_secs(1), |ev| {
        let sessions = sessions.clone();
        async move { handle(&sessions, ev).await }
    })
    .await
}

fn now_nano() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Feeds every event to `handle`, in order and once, for as long as `cancel` is not cancelled,
/// across losses of the stream.
pub async fn follow<F, Fut>(
    engine: &Engine,
    metrics: &Metrics,
    cancel: &CancellationToken,
    first_backoff: Duration,
    mut handle: F,
) where
    F: FnMut(SandboxEvent) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut last = now_nano();
    // Events at exactly `last` already handled (the engine replays `since` inclusively).
    let mut seen_at_last: HashSet<(String, String)> = HashSet::new();
    let mut backoff = first_backoff;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match engine.sandbox_events(last).await {
            Ok(mut stream) => {
                metrics.engine_events_connected.set(1);
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        next = stream.next() => next,
                    };
                    match next {
                        Some(Ok(ev)) => {
                            backoff = first_backoff;
                            let key = (ev.container.clone(), format!("{:?}", ev.kind));
                            if ev.time_nano < last || (ev.time_nano == last && seen_at_last.contains(&key)) {
                                continue;
                            }
                            if ev.time_nano > last {
                                last = ev.time_nano;
                                seen_at_last.clear();
                            }
                            seen_at_last.insert(key);
                            handle(ev).await;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %format!("{e:#}"), "lost the engine's event stream; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!("the engine's event stream ended; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not follow the engine's events; retrying"),
        }
        if cancel.is_cancelled() {
            return;
        }
        metrics.engine_events_connected.set(0);
        metrics.engine_event_stream_losses.inc();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn handle(sessions: &Arc<Sessions>, ev: SandboxEvent) {
    let session = match (&ev.session, &ev.pool) {
        (Some(s), _) => s.clone(),
        // A pooled sandbox: a learner's once claimed (the database names its session); one not
        // claimed yet that died is replaced by the pool's next round.
        (None, Some(_)) => match sessions.store.live_session_by_container(&ev.container).await {
            Ok(Some(s)) => s.id,
            Ok(None) => {
                sessions.pools.changed.notify_one();
                return;
            }
            Err(e) => {
                tracing::warn!(container = %ev.container, error = %format!("{e:#}"), "could not look up a pooled sandbox's session");
                return;
            }
        },
        (None, None) => return,
    };
    let id = format!("{}:{}", &ev.container, ev.time_nano);
    match ev.kind {
        SandboxEventKind::Oom => {
            let detail = "a process of the sandbox was killed at its memory limit";
            record_once(sessions, &format!("{id}:oom"), &session, SessionEvent::OomKilled, detail).await;
        }
        SandboxEventKind::Died { exit_code } => {
            // Wait in a task of its own: the stream goes on meanwhile.
            let sessions = sessions.clone();
            tokio::spawn(async move {
                tokio::time::sleep(EXIT_SETTLE).await;
                let Ok(Some(status)) = sessions.engine.container_status(&ev.container).await else { return };
                let Ok(Some(record)) = sessions.store.session(&session).await else { return };
                if !record.state.is_live() {
                    return;
                }
                let code = exit_code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into());
                let detail = if status.oom_killed {
                    format!("its main process ended with exit code {code}, killed at the memory limit")
                } else {
                    format!("its main process ended with exit code {code}")
                };
                record_once(&sessions, &format!("{id}:die"), &session, SessionEvent::Exited, &detail).await;
            });
        }
    }
}

async fn record_once(sessions: &Sessions, id: &str, session: &str, kind: SessionEvent, detail: &str) {
    match sessions.store.insert_session_event_once(id, session, kind, Some(detail)).await {
        Ok(true) => {
            sessions.metrics.session_events.with_label_values(&[kind.as_str()]).inc();
            tracing::warn!(session, event = kind.as_str(), detail, "sandbox event");
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(session, error = %format!("{e:#}"), "could not record a sandbox event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;

    fn oom(container: &str, time_nano: i64) -> anyhow::Result<SandboxEvent> {
        Ok(SandboxEvent {
            container: container.into(),
            session: Some("s".into()),
            pool: None,
            kind: SandboxEventKind::Oom,
            time_nano,
        })
    }

    /// The stream fails, the engine refuses once, then a stream replays from where it was: every
    /// event reaches the handler once, in order, and each loss is counted.
    #[tokio::test]
    async fn losing_the_stream_is_survived_counted_and_loses_nothing() {
        let far = i64::MAX / 2;
        let fake = FakeEngine::with_events(vec![
            Ok(vec![oom("a", far), oom("b", far), Err(anyhow::anyhow!("engine restarting"))]),
            Err(anyhow::anyhow!("connection refused")),
            // The replay from `far` repeats both events at `far`, then goes on.
            Ok(vec![oom("a", far), oom("b", far), oom("c", far + 1)]),
        ]);
        let engine: Engine = fake.clone();
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let seen = std::sync::Mutex::new(Vec::new());
        follow(&engine, &metrics, &cancel, Duration::from_millis(1), |ev| {
            seen.lock().unwrap().push(ev.container.clone());
            if ev.container == "c" {
                cancel.cancel();
            }
            async {}
        })
        .await;
        assert_eq!(*seen.lock().unwrap(), ["a", "b", "c"]);
        let since = fake.events_since();
        assert_eq!(since.len(), 3);
        assert_eq!(&since[1..], [far, far], "it resumes from the last event it saw");
        assert_eq!(metrics.engine_event_stream_losses.get(), 2);
        assert_eq!(metrics.engine_events_connected.get(), 1, "connected again");
    }
}
