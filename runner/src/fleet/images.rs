//! A node's images (docs/ARCHITECTURE.md, "Fleet"): with a registry the fleet shares
//! (`RUNNER_IMAGE_REGISTRY`), every node pulls the images its sessions, pools and runs may start
//! — every exercise's current image and every runtime's — when its engine lacks them, and
//! removes the exercise images no version needs any more. Every `RUNNER_IMAGE_SYNC_SECS`, and
//! at once when a session found its image missing (`Fleet::want_images`). A build pushes its
//! image before its version exists (`builds`), so a published version is pullable everywhere.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use crate::{
    engine::{registry, LABEL_EXERCISE},
    lifecycle::BuildState,
};

use super::Fleet;

/// Images whose pull failed, by when to try again: a missing image is asked for again after
/// 15 s, then twice as long each time up to 10 min, woken rounds included (a learner retrying
/// does not hammer the registry).
#[derive(Debug, Default)]
pub struct Backoff(std::sync::Mutex<HashMap<String, (Instant, u32)>>);

impl Backoff {
    const FIRST: Duration = Duration::from_secs(15);
    const MAX: Duration = Duration::from_secs(600);

    /// Whether `image` may be tried now.
    pub fn ready(&self, image: &str, now: Instant) -> bool {
        self.0.lock().expect("lock").get(image).is_none_or(|(at, _)| now >= *at)
    }

    pub fn failed(&self, image: &str, now: Instant) {
        let mut m = self.0.lock().expect("lock");
        let n = m.get(image).map_or(0, |(_, n)| n + 1);
        let wait = Self::FIRST.saturating_mul(1 << n.min(10)).min(Self::MAX);
        m.insert(image.to_string(), (now + wait, n));
    }

    pub fn succeeded(&self, image: &str) {
        self.0.lock().expect("lock").remove(image);
    }
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub pulled: Vec<String>,
    pub failed: Vec<String>,
    pub removed: Vec<String>,
}

/// Which exercise images may go: those whose version is gone (collected as garbage, its
/// exercise deleted) and that nothing still wants. Pure: the images as (tags, exercise,
/// version), whether a version exists, the images wanted, the exercises being built.
pub fn unwanted<'a>(
    images: &'a [(Vec<String>, String, String)],
    version_exists: &dyn Fn(&str, &str) -> bool,
    wanted: &BTreeSet<String>,
    building: &BTreeSet<String>,
) -> Vec<&'a str> {
    images
        .iter()
        .filter(|(tags, exercise, version)| {
            !building.contains(exercise)
                && !version_exists(exercise, version)
                && !tags.iter().any(|t| wanted.contains(t))
        })
        .flat_map(|(tags, _, _)| tags.iter().map(String::as_str))
        .collect()
}

/// One round: pull what is wanted and missing, remove what no version needs.
pub async fn round(fleet: &Fleet) -> anyhow::Result<Synced> {
    let mut done = Synced::default();
    let Some(registry) = fleet.settings.fleet.registry() else { return Ok(done) };
    let mut wanted = BTreeSet::new();
    for e in fleet.store.exercises().await? {
        if !e.image.is_empty() {
            wanted.insert(e.image);
        }
    }
    for r in fleet.store.runtimes().await? {
        wanted.insert(r.image);
    }
    for image in &wanted {
        if !fleet.pull_backoff.ready(image, Instant::now()) || fleet.engine.image(image).await?.is_some() {
            continue;
        }
        let mut last = String::new();
        let mut sink = |line: &str| last = line.to_string();
        match registry::fetch(&*fleet.engine, &registry, image, &mut sink).await {
            Ok(()) => {
                fleet.pull_backoff.succeeded(image);
                tracing::info!(image = %image, registry = registry.host, "pulled an image this node lacked");
                fleet.metrics.node_images.with_label_values(&["pulled"]).inc();
                done.pulled.push(image.clone());
            }
            Err(e) => {
                fleet.pull_backoff.failed(image, Instant::now());
                tracing::warn!(image = %image, registry = registry.host, error = %format!("{e:#}"), "could not pull an image this node lacks");
                fleet.metrics.node_images.with_label_values(&["pull_failed"]).inc();
                done.failed.push(image.clone());
            }
        }
    }
    // Exercise images whose version is gone, on a fleet node only: its engine is its runner's
    // alone, where a single host's engine may serve other runners with other databases (their
    // builder removes their old images). Tags as the engine lists them (`name:tag`) and as the
    // runner names them are the same for the runner's own images.
    if !fleet.enabled() {
        return Ok(done);
    }
    let building: BTreeSet<String> = fleet
        .store
        .builds_in(&[BuildState::Queued, BuildState::Building, BuildState::Testing])
        .await?
        .into_iter()
        .map(|b| b.exercise)
        .collect();
    let mut images = Vec::new();
    for i in fleet.engine.exercise_images().await? {
        let (Some(exercise), Some(version)) =
            (i.labels.get(LABEL_EXERCISE), i.labels.get(crate::engine::LABEL_VERSION))
        else {
            continue;
        };
        images.push((i.repo_tags.clone(), exercise.clone(), version.clone()));
    }
    let mut versions = std::collections::HashSet::new();
    for (_, exercise, version) in &images {
        if fleet.store.version(exercise, version).await?.is_some() {
            versions.insert((exercise.clone(), version.clone()));
        }
    }
    let exists = |e: &str, v: &str| versions.contains(&(e.to_string(), v.to_string()));
    for tag in unwanted(&images, &exists, &wanted, &building) {
        if fleet.engine.remove_image(tag).await? {
            tracing::info!(image = tag, "removed an image no version needs");
            fleet.metrics.node_images.with_label_values(&["removed"]).inc();
            done.removed.push(tag.to_string());
        }
    }
    Ok(done)
}

/// The round, every `RUNNER_IMAGE_SYNC_SECS` and when woken, while a registry is set.
pub async fn run(fleet: std::sync::Arc<Fleet>, cancel: tokio_util::sync::CancellationToken) {
    if fleet.settings.fleet.registry.is_none() {
        return;
    }
    let period = fleet.settings.fleet.image_sync;
    let wake = fleet.images_wanted.clone();
    crate::rounds::every_or_woken(period, crate::rounds::First::Now, cancel, &wake, || async {
        if let Err(e) = round(&fleet).await {
            tracing::warn!(error = %format!("{e:#}"), "the node's image round failed; will retry");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str, exercise: &str, version: &str) -> (Vec<String>, String, String) {
        (vec![tag.to_string()], exercise.to_string(), version.to_string())
    }

    #[test]
    fn a_failed_pull_waits_longer_each_time_up_to_ten_minutes() {
        let b = Backoff::default();
        let t0 = Instant::now();
        assert!(b.ready("x", t0));
        b.failed("x", t0);
        assert!(!b.ready("x", t0 + Duration::from_secs(14)) && b.ready("x", t0 + Duration::from_secs(15)));
        b.failed("x", t0);
        assert!(!b.ready("x", t0 + Duration::from_secs(29)) && b.ready("x", t0 + Duration::from_secs(30)));
        for _ in 0..20 {
            b.failed("x", t0);
        }
        assert!(b.ready("x", t0 + Duration::from_secs(600)), "capped");
        assert!(b.ready("y", t0), "per image");
        b.succeeded("x");
        assert!(b.ready("x", t0));
    }

    #[test]
    fn only_images_of_versions_gone_and_unwanted_go() {
        let images = vec![
            image("exercise-runner/py:old", "py", "old"),
            image("exercise-runner/py:kept", "py", "kept"),
            image("exercise-runner/py:current", "py", "current"),
            image("exercise-runner/sh:old", "sh", "old"),
            image("exercise-runner/js:gone", "js", "gone"),
        ];
        let exists = |e: &str, v: &str| matches!((e, v), ("py", "kept") | ("py", "current"));
        let wanted = BTreeSet::from(["exercise-runner/py:current".to_string()]);
        // An exercise being built may have an image whose version is not written yet.
        let building = BTreeSet::from(["sh".to_string()]);
        assert_eq!(
            unwanted(&images, &exists, &wanted, &building),
            vec!["exercise-runner/py:old", "exercise-runner/js:gone"]
        );
        let wanted_anyway = BTreeSet::from(["exercise-runner/js:gone".to_string()]);
        assert_eq!(unwanted(&images, &exists, &wanted_anyway, &BTreeSet::new()).len(), 2, "py:old and sh:old");
    }
}
