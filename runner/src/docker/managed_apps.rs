//! Engine calls for managed apps: pulling with credentials, digests, waiting, logs, ports.

use std::collections::HashMap;

use anyhow::{bail, Context};
use bollard::{
    container::{ListContainersOptions, LogsOptions, WaitContainerOptions},
    image::CreateImageOptions,
};
use futures_util::StreamExt;

use super::DockerEngine;
use crate::engine::{self, Attached, ByteSink, LineSink, ManagedAppContainerInfo};

impl DockerEngine {
    /// Attaches to a created container's stdio (before starting it, so no output is missed).
    pub(super) async fn attach(&self, id: &str) -> anyhow::Result<Attached> {
        let opts = bollard::container::AttachContainerOptions::<String> {
            stdin: Some(true),
            stdout: Some(true),
            stderr: Some(true),
            stream: Some(true),
            logs: Some(true),
            detach_keys: None,
        };
        let r = self.docker.attach_container(id, Some(opts)).await;
        let a = self.count("attach_container", r)?;
        use futures_util::StreamExt;
        let output = a.output.map(|chunk| chunk.map(|o| o.into_bytes()).map_err(anyhow::Error::from));
        Ok(Attached { output: Box::pin(output), input: a.input })
    }

    pub(super) async fn resize_tty(&self, id: &str, cols: u16, rows: u16) -> anyhow::Result<()> {
        let opts =
            bollard::container::ResizeContainerTtyOptions { width: cols.clamp(2, 1000), height: rows.clamp(2, 500) };
        let r = self.docker.resize_container_tty(id, opts).await;
        self.count("resize_container_tty", r)?;
        Ok(())
    }

    /// Pulls `repo:tag`, with credentials when given, reporting progress lines.
    pub(super) async fn pull(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        let creds = super::images::credentials(repo, auth);
        let opts = CreateImageOptions { from_image: repo.to_string(), tag: tag.to_string(), ..Default::default() };
        let mut stream = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error {
                        bail!("pulling {repo}:{tag}: {e}");
                    }
                    if let (Some(status), None) = (&info.status, &info.progress) {
                        log(&format!("{}{status}", info.id.map(|i| format!("{i}: ")).unwrap_or_default()));
                    }
                }
                Err(e) => {
                    self.metrics.docker_errors.with_label_values(&["pull"]).inc();
                    return Err(e).with_context(|| format!("pulling {repo}:{tag}"));
                }
            }
        }
        Ok(())
    }

    /// The content-addressed reference of a pulled image (`repo@sha256:...`), to pin deploys to.
    pub(super) async fn repo_digest(&self, reference: &str, repo: &str) -> anyhow::Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => {
                Ok(img.repo_digests.unwrap_or_default().into_iter().find(|d| d.starts_with(&format!("{repo}@"))))
            }
            Err(e) if super::is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.count("inspect_image", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Waits for a container to exit; its exit code.
    pub(super) async fn wait_exit(&self, id: &str) -> anyhow::Result<i64> {
        let mut s = self.docker.wait_container(id, Some(WaitContainerOptions { condition: "not-running" }));
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.count("wait_container", Err::<(), _>(e)).unwrap_err().into()),
            None => bail!("waiting for {id}: the engine closed the stream"),
        }
    }

    /// Streams a container's output (stdout and stderr) from the start, following it while it
    /// runs, to `sink`, up to `max` bytes.
    pub(super) async fn follow_logs(&self, id: &str, max: usize, sink: &mut ByteSink<'_>) -> anyhow::Result<()> {
        let opts = LogsOptions::<String> { follow: true, stdout: true, stderr: true, ..Default::default() };
        let mut s = self.docker.logs(id, Some(opts));
        let mut seen = 0;
        while let Some(item) = s.next().await {
            let bytes = self.count("logs", item)?.into_bytes();
            if seen < max {
                let n = bytes.len().min(max - seen);
                sink(&bytes[..n]);
                seen += n;
            }
        }
        Ok(())
    }

    /// The 127.0.0.1 port a container's `port/tcp` is published on.
    pub(super) async fn published_port(&self, id: &str, port: u16) -> anyhow::Result<Option<u16>> {
        let r = self.docker.inspect_container(id, None).await;
        let c = self.count("inspect_container", r)?;
        let key = format!("{port}/tcp");
        Ok(c.network_settings
            .and_then(|n| n.ports)
            .and_then(|mut p| p.remove(&key))
            .flatten()
            .and_then(|b| b.into_iter().find_map(|b| b.host_port.and_then(|p| p.parse().ok()))))
    }

    /// The containers of one app (all its deploys), running or not.
    pub(super) async fn app_containers(&self, app: &str) -> anyhow::Result<Vec<ManagedAppContainerInfo>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", engine::LABEL_INSTANCE, self.instance), format!("{}={app}", engine::LABEL_APP)],
        )]);
        let opts = ListContainersOptions { all: true, filters, ..Default::default() };
        let r = self.docker.list_containers(Some(opts)).await;
        let prefix = format!("/exercise-runner-{}-app-{app}-", self.instance);
        Ok(self
            .count("list_containers", r)?
            .into_iter()
            .filter(|c| c.names.as_deref().unwrap_or_default().iter().any(|n| n.starts_with(&prefix)))
            .map(|c| {
                let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default();
                ManagedAppContainerInfo {
                    service: label(engine::LABEL_SERVICE),
                    version: label(engine::LABEL_VERSION),
                    deploy: label(engine::LABEL_DEPLOY),
                    running: c.state.as_deref() == Some("running"),
                    id: c.id.clone().unwrap_or_default(),
                }
            })
            .collect())
    }
}
