//! Versions of an exercise: publishing (and rolling back, which is publishing an older one) and
//! removing images of old versions nobody uses.

use std::{collections::HashSet, sync::Arc};

use super::{manifest::Manifest, BuildError, Builds};
use crate::{
    domain::Slug,
    exercises::{self, Exercise, ExerciseSpec},
    store::Written,
};

/// Makes `version` the one new sessions get. Live sessions keep the image they started with.
pub async fn publish(builds: &Arc<Builds>, slug: &Slug, version: &str) -> Result<Exercise, BuildError> {
    let v = builds
        .store
        .version(slug.as_str(), version)
        .await?
        .ok_or_else(|| BuildError::VersionNotFound(slug.to_string(), version.to_string()))?;
    if builds.engine.image(&v.image).await?.is_none() {
        return Err(BuildError::VersionImageRemoved(slug.to_string(), version.to_string()));
    }
    let m: Manifest = serde_json::from_str(&v.manifest).map_err(anyhow::Error::from)?;
    // Read, merge, write if nobody wrote the exercise in between (a PUT racing a publish loses
    // neither); else again.
    for _ in 0..crate::store::MAX_WRITE_ATTEMPTS {
        let existing = builds.store.exercise(slug.as_str()).await?;
        let mut spec: ExerciseSpec = match &existing {
            Some(r) => serde_json::from_str(&r.spec).map_err(anyhow::Error::from)?,
            None => ExerciseSpec { auto_publish: true, ..Default::default() },
        };
        spec.title = Some(m.title.clone());
        spec.limits = m.limits.clone();
        spec.network = m.network;
        spec.workdir = m.workdir.clone();
        spec.writable = m.writable.clone();
        spec.check = m.check.clone();
        spec.current_version = Some(version.to_string());
        if m.pool.is_some() {
            spec.pool = m.pool;
        }
        let spec_json = serde_json::to_string(&spec).map_err(anyhow::Error::from)?;
        let read = existing.map(|r| r.revision);
        if builds.store.publish_version(slug.as_str(), version, &v.image, &spec_json, read).await? == Written::Conflict
        {
            continue;
        }
        tracing::info!(exercise = %slug, version, "published");
        let record = builds
            .store
            .exercise(slug.as_str())
            .await?
            .ok_or_else(|| BuildError::ExerciseNotFound(slug.to_string()))?;
        return Ok(exercises::to_view(&builds.settings, &record)?);
    }
    Err(anyhow::anyhow!("exercise {slug}: too many concurrent writes").into())
}

/// Removes the images of versions beyond the newest `keep_versions`, except the current one and
/// those live sessions still run. Their version records go with them.
pub async fn collect_garbage(builds: &Arc<Builds>, slug: &Slug) -> anyhow::Result<usize> {
    let current = match builds.store.exercise(slug.as_str()).await? {
        Some(r) => serde_json::from_str::<ExerciseSpec>(&r.spec)?.current_version,
        None => None,
    };
    let in_use: HashSet<String> = builds.store.images_in_use().await?.into_iter().collect();
    let mut removed = 0;
    for (i, v) in builds.store.versions(slug.as_str()).await?.into_iter().enumerate() {
        if i < builds.settings.keep_versions
            || current.as_deref() == Some(v.version.as_str())
            || in_use.contains(&v.image)
        {
            continue;
        }
        let _alone = builds.images.write().await;
        if builds.engine.remove_image(&v.image).await? || builds.engine.image(&v.image).await?.is_none() {
            builds.store.delete_version(slug.as_str(), &v.version).await?;
            tracing::info!(exercise = %slug, version = %v.version, "removed an old version's image");
            removed += 1;
        }
    }
    Ok(removed)
}
