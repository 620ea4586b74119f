//! Images through the registry a fleet shares (`RUNNER_IMAGE_REGISTRY`; docs/ARCHITECTURE.md,
//! "Fleet"). On the engines, images keep the names the runner gives them
//! (`exercise-runner/<slug>:<version>`), so versions, sessions and pools name the same image on
//! every node; only on its way through the registry does an image carry the registry's name,
//! which is removed again once the push or the pull is done.

use anyhow::Context;

use super::{ContainerEngine, LineSink};
use crate::domain::{in_registry, normalize_reference, ImageName};

/// The registry and its login.
#[derive(Debug, Clone, Copy)]
pub struct Registry<'a> {
    pub host: &'a str,
    pub auth: Option<(&'a str, &'a str)>,
}

fn names(registry: &Registry<'_>, reference: &str) -> anyhow::Result<(ImageName, ImageName)> {
    let local = normalize_reference(reference).map_err(|e| anyhow::anyhow!(e))?;
    let remote = in_registry(registry.host, reference)
        .with_context(|| format!("{reference} cannot be named in the registry {}", registry.host))?;
    Ok((local, remote))
}

/// Pushes the engine's image `reference` to the registry.
pub async fn share(
    engine: &dyn ContainerEngine,
    registry: &Registry<'_>,
    reference: &str,
    log: &mut LineSink<'_>,
) -> anyhow::Result<()> {
    let (local, remote) = names(registry, reference)?;
    if local == remote {
        return engine.push(&remote.repository, &remote.tag, registry.auth, log).await;
    }
    engine.tag_image(reference, &remote.repository, &remote.tag).await?;
    let pushed = engine.push(&remote.repository, &remote.tag, registry.auth, log).await;
    // Only the registry's name goes: the image keeps its own.
    let _ = engine.remove_image(&remote.full()).await;
    pushed.with_context(|| format!("pushing {reference} to {}", registry.host))
}

/// Pulls `reference` from the registry onto the engine, under the name `reference`.
pub async fn fetch(
    engine: &dyn ContainerEngine,
    registry: &Registry<'_>,
    reference: &str,
    log: &mut LineSink<'_>,
) -> anyhow::Result<()> {
    let (local, remote) = names(registry, reference)?;
    engine
        .pull(&remote.repository, &remote.tag, registry.auth, log)
        .await
        .with_context(|| format!("pulling {reference} from {}", registry.host))?;
    if local != remote {
        engine.tag_image(&remote.full(), &local.repository, &local.tag).await?;
        let _ = engine.remove_image(&remote.full()).await;
    }
    Ok(())
}
