//! The operator CLI against a running runner (`RUNNER_URL`, `RUNNER_API_TOKEN`): deploy, roll
//! back, run a one-off command, with progress shown while steps run.

use std::io::Write;

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn from_env() -> anyhow::Result<Client> {
        let base = std::env::var("RUNNER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let token = match std::env::var("RUNNER_API_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => {
                let dir = std::env::var("RUNNER_DATA_DIR").unwrap_or_else(|_| "/var/lib/exercise-runner".into());
                std::fs::read_to_string(std::path::Path::new(&dir).join("api-token"))
                    .map(|t| t.trim().to_string())
                    .context("set RUNNER_API_TOKEN (or RUNNER_DATA_DIR with an api-token file)")?
            }
        };
        Ok(Client { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_string(), token })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await?;
        if !r.status().is_success() {
            let status = r.status();
            let v: Value = r.json().await.unwrap_or_default();
            bail!("{status}: {}", v["error"]["message"].as_str().unwrap_or("request failed"));
        }
        Ok(r)
    }

    async fn stream_to_stdout(&self, r: reqwest::Response) -> anyhow::Result<String> {
        let mut tail = String::new();
        let mut r = r;
        let mut out = std::io::stdout();
        while let Some(chunk) = r.chunk().await? {
            out.write_all(&chunk)?;
            out.flush()?;
            tail.push_str(&String::from_utf8_lossy(&chunk));
            if tail.len() > 4096 {
                tail = tail.split_off(tail.len() - 1024);
            }
        }
        Ok(tail)
    }

    /// Follows a deploy's log to its end; its final state.
    async fn follow_deploy(&self, d: Value) -> anyhow::Result<bool> {
        let id = d["id"].as_str().context("no deploy id")?;
        eprintln!(
            "{} {id}: {} to {}",
            d["kind"].as_str().unwrap_or("deploy"),
            d["app"].as_str().unwrap_or(""),
            d["version"].as_str().unwrap_or("")
        );
        let r = self.http.get(format!("{}/v1/deploys/{id}/logs", self.base)).bearer_auth(&self.token).send().await?;
        self.stream_to_stdout(r).await?;
        let d: Value = self
            .http
            .get(format!("{}/v1/deploys/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        let ok = d["state"] == crate::lifecycle::DeployState::Succeeded.as_str();
        eprintln!(
            "{}: {}",
            d["state"].as_str().unwrap_or("?"),
            d["failure_reason"].as_str().unwrap_or(if ok { "done" } else { "" })
        );
        Ok(ok)
    }

    pub async fn deploy(&self, app: &str, version: &str) -> anyhow::Result<bool> {
        let d: Value =
            self.post(&format!("/v1/apps/{app}/deploys"), json!({ "version": version })).await?.json().await?;
        self.follow_deploy(d).await
    }

    pub async fn rollback(&self, app: &str, to: Option<&str>) -> anyhow::Result<bool> {
        let body = match to {
            Some(v) => json!({ "version": v }),
            None => json!({}),
        };
        let d: Value = self.post(&format!("/v1/apps/{app}/rollback"), body).await?.json().await?;
        self.follow_deploy(d).await
    }

    /// Runs a one-off command; its exit code.
    pub async fn run(&self, app: &str, command: Vec<String>) -> anyhow::Result<i32> {
        let r = self.post(&format!("/v1/apps/{app}/commands"), json!({ "command": command })).await?;
        let tail = self.stream_to_stdout(r).await?;
        let code = tail
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("[exit ").and_then(|l| l.strip_suffix(']')).and_then(|n| n.parse().ok()));
        Ok(code.unwrap_or(1))
    }
}
