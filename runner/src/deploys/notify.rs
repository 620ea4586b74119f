//! Deploy notifications: per-app webhooks, Slack-compatible (`{"text": ...}`) or a JSON event
//! signed with HMAC-SHA256 (`X-Runner-Signature-256: sha256=<hex>`). Each delivery runs in its own
//! task with retries and backoff, so a slow or dead receiver never delays or fails a deploy.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::spec::{ManagedAppSpec, Secrets, WebhookFormat};

const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct Event {
    pub app: String,
    /// `deploy_started`, `deploy_succeeded`, `deploy_failed`, `rolled_back`, `service_failed`.
    pub kind: &'static str,
    pub version: Option<String>,
    pub deploy: Option<String>,
    pub message: String,
}

pub fn send(client: &reqwest::Client, spec: &ManagedAppSpec, secrets: &Secrets, event: Event) {
    for hook in &spec.notifications {
        let client = client.clone();
        let url = hook.url.clone();
        let (body, signature) = match hook.format {
            WebhookFormat::Slack => (json!({"text": format!("[{}] {}", event.app, event.message)}).to_string(), None),
            WebhookFormat::Json => {
                let body = json!({
                    "event": event.kind, "app": event.app, "version": event.version,
                    "deploy": event.deploy, "message": event.message,
                    "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                })
                .to_string();
                let sig = secrets.webhooks.get(&hook.url).map(|s| {
                    let mut m = Hmac::<Sha256>::new_from_slice(s.as_bytes()).expect("any key length");
                    m.update(body.as_bytes());
                    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
                });
                (body, sig)
            }
        };
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=ATTEMPTS {
                let mut req = client.post(&url).header("content-type", "application/json").body(body.clone());
                if let Some(s) = &signature {
                    req = req.header("x-runner-signature-256", s);
                }
                match req.timeout(Duration::from_secs(5)).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => tracing::warn!(url, attempt, status = %r.status(), "webhook refused"),
                    Err(e) => tracing::warn!(url, attempt, error = %e, "webhook unreachable"),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            tracing::warn!(url, "webhook given up after {ATTEMPTS} attempts");
        });
    }
}
