//! Versions of an exercise: publishing (and rolling back, which is publishing an older one) and
//! removing images of old versions nobody uses.

use std::{collections::HashSet, sync::Arc};

use super::{manifest::Manifest, BuildError};
use crate::{
    app::App,
    domain::Slug,
    exercises::{self, Exercise, ExerciseSpec},
    store::Written,
};

/// Makes `version` the one new sessions get. Live sessions keep the image they started with.
pub async fn publish(app: &Arc<App>, slug: &Slug, version: &str) -> Result<Exercise, BuildError> {
    let v = app
        .store
        .version(slug.as_str(), version)
        .await?
        .ok_or_else(|| BuildError::VersionNotFound(slug.to_string(), version.to_string()))?;
    if app.engine.image(&v.image).await?.is_none() {
        return Err(BuildError::VersionImageRemoved(slug.to_string(), version.to_string()));
    }
    let m: Manifest = serde_json::from_str(&v.manifest).map_err(anyhow::Error::from)?;
    // Read, merge, write if nobody wrote the exercise in between (a PUT racing a publish loses
    // neither); else again.
    for _ in 0..crate::store::MAX_WRITE_ATTEMPTS {
        let existing = app.store.exercise(slug.as_str()).await?;
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
        let spec_json = serde_json::to_string(&spec).map_err(anyhow::Error::from)?;
        let read = existing.map(|r| r.revision);
        if app.store.publish_version(slug.as_str(), version, &v.image, &spec_json, read).await? == Written::Conflict {
            continue;
        }
        tracing::info!(exercise = %slug, version, "published");
        let record =
            app.store.exercise(slug.as_str()).await?.ok_or_else(|| BuildError::ExerciseNotFound(slug.to_string()))?;
        return Ok(exercises::to_view(&app.settings, &record)?);
    }
    Err(anyhow::anyhow!("exercise {slug}: too many concurrent writes").into())
}

/// Removes the images of versions beyond the newest `keep_versions`, except the current one and
/// those live sessions still run. Their version records go with them.
pub async fn collect_garbage(app: &Arc<App>, slug: &Slug) -> anyhow::Result<usize> {
    let current = match app.store.exercise(slug.as_str()).await? {
        Some(r) => serde_json::from_str::<ExerciseSpec>(&r.spec)?.current_version,
        None => None,
    };
    let in_use: HashSet<String> = app.store.images_in_use().await?.into_iter().collect();
    let mut removed = 0;
    for (i, v) in app.store.versions(slug.as_str()).await?.into_iter().enumerate() {
        if i < app.settings.keep_versions || current.as_deref() == Some(v.version.as_str()) || in_use.contains(&v.image)
        {
            continue;
        }
        if app.engine.remove_image(&v.image).await? || app.engine.image(&v.image).await?.is_none() {
            app.store.delete_version(slug.as_str(), &v.version).await?;
            tracing::info!(exercise = %slug, version = %v.version, "removed an old version's image");
            removed += 1;
        }
    }
    Ok(removed)
}
