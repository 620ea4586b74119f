//! The runner's background loops (reaping, reconciliation, the build network's check, the apps'
//! supervisor) all run the same way: a round every period until shutdown.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// When the first round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// At once.
    Now,
    /// One period from now (the caller ran it at start, before the API answered).
    AfterPeriod,
}

/// Runs `round` every `period` until `cancel` fires. A round that runs long delays the next one
/// instead of being followed by a burst of the missed ones.
pub async fn every<F, Fut>(period: Duration, first: First, cancel: CancellationToken, round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    every_or_woken(period, first, cancel, &tokio::sync::Notify::new(), round).await
}

/// As [`every`], and also as soon as `wake` is notified (a wake during a round runs one more
/// round right after it); the period then counts from that round.
pub async fn every_or_woken<F, Fut>(
    period: Duration,
    first: First,
    cancel: CancellationToken,
    wake: &tokio::sync::Notify,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if first == First::AfterPeriod {
        tick.tick().await;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake.notified() => tick.reset(),
        }
        round().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn rounds_repeat_until_cancelled() {
        let cancel = CancellationToken::new();
        let count = Arc::new(AtomicUsize::new(0));
        let (c, k) = (cancel.clone(), count.clone());
        let task = tokio::spawn(async move {
            every(Duration::from_millis(10), First::AfterPeriod, c, || {
                let k = k.clone();
                async move {
                    k.fetch_add(1, Ordering::SeqCst);
                }
            })
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "rounds did not repeat");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the loop ends when cancelled").unwrap();
    }

    #[tokio::test]
    async fn a_wake_runs_a_round_before_its_period() {
        let cancel = CancellationToken::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        let count = Arc::new(AtomicUsize::new(0));
        let (c, w, k) = (cancel.clone(), wake.clone(), count.clone());
        let task = tokio::spawn(async move {
            every_or_woken(Duration::from_secs(3600), First::AfterPeriod, c, &w, || {
                let k = k.clone();
                async move {
                    k.fetch_add(1, Ordering::SeqCst);
                }
            })
            .await
        });
        for expected in 1..=2 {
            wake.notify_one();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while count.load(Ordering::SeqCst) < expected {
                assert!(tokio::time::Instant::now() < deadline, "the wake ran no round");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the loop ends when cancelled").unwrap();
    }
}
