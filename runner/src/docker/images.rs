//! Image builds, imports and removal.

use anyhow::{bail, Context};
use bollard::{
    auth::DockerCredentials,
    image::{CreateImageOptions, ListImagesOptions, PushImageOptions, RemoveImageOptions, TagImageOptions},
};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{build_cgroup::BuildCgroup, is_status, DockerEngine};
use crate::engine::{self, BuildRequest, ImageInfo, LineSink};

/// A registry login as the engine takes it, for the registry `repo` names.
pub(super) fn credentials(repo: &str, auth: Option<(&str, &str)>) -> Option<DockerCredentials> {
    auth.map(|(u, p)| DockerCredentials {
        username: Some(u.to_string()),
        password: Some(p.to_string()),
        serveraddress: repo.split('/').next().map(str::to_string),
        ..Default::default()
    })
}

/// Longest line of build output kept in memory while waiting for its end.
const MAX_BUILD_LINE: usize = 1 << 20;

/// One line of the engine's build output (a JSON object per line).
#[derive(serde::Deserialize)]
struct BuildLine {
    stream: Option<String>,
    status: Option<String>,
    error: Option<String>,
}

/// Aborts the HTTP connection task when dropped: dropping the connection is how a build is
/// cancelled, whatever ends the call (cancel token, timeout, error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DockerEngine {
    /// Builds an image from a tar context, sending each line of output to `log`. Every `RUN`
    /// step runs under the request's memory, CPU and pids limits. Cancelling the token drops the
    /// connection, which makes the engine stop the build.
    pub(super) async fn build_image(
        &self,
        req: BuildRequest<'_>,
        cancel: &CancellationToken,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        let tag = req.tag.to_string();
        let cgroup = if req.pids_limit > 0 {
            let info = self.count("info", self.docker.info().await)?;
            let driver = info.cgroup_driver.map(|d| d.to_string()).unwrap_or_default();
            // Named after the instance, so an operator (or the test sweep) can tell whose it is.
            let instance: String =
                self.instance.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            let name = format!("{instance}-{}", uuid::Uuid::new_v4().simple());
            let cgroup = BuildCgroup::create(&name, req.pids_limit, &driver)?;
            log(&format!("RUN steps may have at most {} processes (cgroup {})\n", req.pids_limit, cgroup.parent()));
            Some(cgroup)
        } else {
            None
        };
        let result = self.build_in(req, cgroup.as_ref().map(|c| c.parent()), cancel, log).await;
        if let Some(cgroup) = cgroup {
            cgroup.remove().await;
        }
        result?;
        if self.image(&tag).await?.is_none() {
            bail!("docker build finished without producing {tag}");
        }
        Ok(())
    }

    /// `POST /build` over the engine's socket. bollard's build options have no `cgroupparent`,
    /// so this one call speaks HTTP itself; the query is the same one `docker build` sends.
    async fn build_in(
        &self,
        req: BuildRequest<'_>,
        cgroup_parent: Option<&str>,
        cancel: &CancellationToken,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        let Some(socket) = &self.socket else {
            bail!("builds need the engine on this host (DOCKER_HOST=unix://...)");
        };
        let memory = req.memory_mb * 1024 * 1024;
        let mut labels = req.labels;
        labels.insert(engine::LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(engine::LABEL_INSTANCE.to_string(), self.instance.clone());
        // In a block: the serializer is not `Send`, so it must not live across an await.
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("t", req.tag)
                .append_pair("dockerfile", "Dockerfile")
                .append_pair("rm", "1")
                .append_pair("forcerm", "1")
                .append_pair("pull", "0")
                .append_pair("memory", &memory.to_string())
                .append_pair("memswap", &memory.to_string())
                .append_pair("cpuperiod", "100000")
                .append_pair("cpuquota", &((req.cpus * 100_000.0).round() as u64).to_string())
                .append_pair("networkmode", &req.network)
                .append_pair("labels", &serde_json::to_string(&labels)?);
            if let Some(parent) = cgroup_parent {
                query.append_pair("cgroupparent", parent);
            }
            query.finish()
        };
        let version = self.docker.client_version();
        let uri = format!("/v{}.{}/build?{query}", version.major_version, version.minor_version);

        let failed = |e: anyhow::Error| {
            self.metrics.docker_errors.with_label_values(&["build_image"]).inc();
            e.context("docker build")
        };
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))
            .map_err(failed)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(e.into()))?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = hyper::Request::post(uri)
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::CONTENT_TYPE, "application/x-tar")
            .body(Full::new(Bytes::from(req.context_tar)))?;
        let response = tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled"),
            r = sender.send_request(request) => r.map_err(|e| failed(e.into()))?,
        };
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned());
            return Err(failed(anyhow::anyhow!("the engine answered {status}: {message}")));
        }
        let mut pending: Vec<u8> = Vec::new();
        let handle = |line: &[u8], log: &mut dyn FnMut(&str)| -> anyhow::Result<()> {
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let line: BuildLine = serde_json::from_slice(line).context("reading the engine's build output")?;
            if let Some(err) = line.error {
                log(&err);
                bail!("the Dockerfile failed: {}", err.trim());
            }
            if let Some(text) = line.stream.or(line.status) {
                log(&text);
            }
            Ok(())
        };
        loop {
            let frame = tokio::select! {
                _ = cancel.cancelled() => bail!("cancelled"),
                frame = body.frame() => frame,
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| failed(e.into()))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                handle(&line, &mut *log)?;
            }
            if pending.len() > MAX_BUILD_LINE {
                return Err(failed(anyhow::anyhow!("a line of build output is longer than {MAX_BUILD_LINE} bytes")));
            }
        }
        handle(&pending, log)
    }

    /// Imports a root filesystem tar as an image (`docker import`), e.g. a debootstrap tree.
    pub(super) async fn import_rootfs(
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
    pub(super) async fn remove_image(&self, reference: &str) -> anyhow::Result<bool> {
        match self.docker.remove_image(reference, Some(RemoveImageOptions { force: false, noprune: false }), None).await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.count("remove_image", Err::<(), _>(e)).unwrap_err().into()),
        }
    }

    /// Names image `source` also `repo:tag`.
    pub(super) async fn tag_image(&self, source: &str, repo: &str, tag: &str) -> anyhow::Result<()> {
        let r = self.docker.tag_image(source, Some(TagImageOptions { repo, tag })).await;
        self.count("tag_image", r).with_context(|| format!("tagging {source} as {repo}:{tag}"))
    }

    /// Pushes `repo:tag` to its registry, reporting progress lines.
    pub(super) async fn push(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<(&str, &str)>,
        log: &mut LineSink<'_>,
    ) -> anyhow::Result<()> {
        let mut stream = self.docker.push_image(repo, Some(PushImageOptions { tag }), credentials(repo, auth));
        while let Some(item) = stream.next().await {
            let info = self.count("push", item).with_context(|| format!("pushing {repo}:{tag}"))?;
            if let (Some(status), None) = (&info.status, &info.progress) {
                log(status);
            }
        }
        Ok(())
    }

    /// The images labelled as exercises' builds, as the engine lists them.
    pub(super) async fn exercise_images(&self) -> anyhow::Result<Vec<ImageInfo>> {
        let filters = std::collections::HashMap::from([("label", vec![engine::LABEL_EXERCISE])]);
        let listed =
            self.docker.list_images(Some(ListImagesOptions { all: false, filters, ..Default::default() })).await;
        Ok(self
            .count("list_images", listed)?
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                working_dir: None,
                labels: i.labels,
                volumes: Vec::new(),
                on_build: Vec::new(),
                repo_tags: i.repo_tags,
                agent_health: None,
            })
            .collect())
    }
}
