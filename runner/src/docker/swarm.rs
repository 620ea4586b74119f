//! The Swarm node this engine is: its availability, read with the Engine API's `GET /nodes/{id}`
//! (bollard 0.18 has no node calls), over the engine's socket.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::DockerEngine;

impl DockerEngine {
    /// `active`, `pause` or `drain` when the engine is a Swarm manager; `None` outside a Swarm
    /// or on a worker (which cannot read nodes).
    pub async fn swarm_node_availability(&self) -> anyhow::Result<Option<String>> {
        let r = self.docker.info().await;
        let swarm = self.count("info", r)?.swarm;
        let Some(id) = swarm.as_ref().and_then(|s| s.node_id.clone()).filter(|id| !id.is_empty()) else {
            return Ok(None);
        };
        if !swarm.as_ref().and_then(|s| s.control_available).unwrap_or(false) {
            return Ok(None);
        }
        let node = self.get_json(&format!("/nodes/{id}")).await.inspect_err(|_| {
            self.metrics.docker_errors.with_label_values(&["node_inspect"]).inc();
        })?;
        Ok(node["Spec"]["Availability"].as_str().map(str::to_string))
    }

    /// A GET of the Engine API over the local socket, its JSON answer.
    async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let Some(socket) = &self.socket else { bail!("the engine is not on a local socket (DOCKER_HOST=unix://...)") };
        let version = self.docker.client_version();
        let uri = format!("/v{}.{}{path}", version.major_version, version.minor_version);
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get(uri).header(hyper::header::HOST, "docker").body(Empty::<Bytes>::new())?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!("the engine answered {status} to GET {path}: {}", String::from_utf8_lossy(&bytes));
            }
            Ok(serde_json::from_slice(&bytes)?)
        }
        .await;
        conn.abort();
        answer
    }
}
