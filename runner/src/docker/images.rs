//! Image builds, imports and removal.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bollard::image::{BuildImageOptions, CreateImageOptions, RemoveImageOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{is_status, policy, Engine};

/// Limits and labels of one `docker build`.
pub struct BuildRequest<'a> {
    pub context_tar: Vec<u8>,
    pub tag: &'a str,
    pub labels: HashMap<String, String>,
    pub memory_mb: u64,
    pub cpus: f64,
    /// Network of `RUN` steps.
    pub network: String,
}

impl Engine {
    /// Builds an image from a tar context, sending each line of output to `log`. Cancelling the
    /// token drops the connection, which makes the engine stop the build.
    pub async fn build_image(
        &self,
        req: BuildRequest<'_>,
        cancel: &CancellationToken,
        mut log: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let memory = req.memory_mb * 1024 * 1024;
        let mut labels = req.labels;
        labels.insert(policy::LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(policy::LABEL_INSTANCE.to_string(), self.instance.clone());
        let opts = BuildImageOptions {
            t: req.tag.to_string(),
            dockerfile: "Dockerfile".to_string(),
            rm: true,
            forcerm: true,
            pull: false,
            memory: Some(memory),
            memswap: Some(memory as i64),
            cpuperiod: Some(100_000),
            cpuquota: Some((req.cpus * 100_000.0).round() as u64),
            networkmode: req.network,
            labels,
            ..Default::default()
        };
        let mut stream = self.docker.build_image(opts, None, Some(req.context_tar.into()));
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => bail!("cancelled"),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(info) => {
                    if let Some(err) = info.error {
                        log(&err);
                        bail!("the Dockerfile failed: {}", err.trim());
                    }
                    if let Some(text) = info.stream.or(info.status) {
                        log(&text);
                    }
                }
                // A failing Dockerfile step arrives as a stream error carrying the step's message.
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    log(&error);
                    bail!("the Dockerfile failed: {}", error.trim());
                }
                Err(e) => {
                    self.metrics.docker_errors.with_label_values(&["build_image"]).inc();
                    return Err(e).context("docker build");
                }
            }
        }
        if self.image(req.tag).await?.is_none() {
            bail!("docker build finished without producing {}", req.tag);
        }
        Ok(())
    }

    /// Imports a root filesystem tar as an image (`docker import`), e.g. a debootstrap tree.
    pub async fn import_rootfs(
        &self,
        rootfs_tar: Vec<u8>,
        repo: &str,
        tag: &str,
        changes: &[&str],
    ) -> anyhow::Result<()> {
        let opts = CreateImageOptions {
            from_src: "-".to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            changes: changes.to_vec(),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), Some(rootfs_tar.into()), None);
        while let Some(item) = stream.next().await {
            let info = self.count("import_image", item)?;
            if let Some(err) = info.error {
                bail!("docker import failed: {err}");
            }
        }
        Ok(())
    }

    /// Removes an image by tag; a missing one, or one a container still uses, is left alone.
    /// Returns whether it was removed.
    pub async fn remove_image(&self, reference: &str) -> anyhow::Result<bool> {
        match self.docker.remove_image(reference, Some(RemoveImageOptions { force: false, noprune: false }), None).await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.count("remove_image", Err::<(), _>(e)).unwrap_err().into()),
        }
    }
}
