//! Deploy notifications: per-app webhooks, Slack-compatible or a signed JSON event, delivered
//! by `crate::webhooks` (in their own tasks, retried: a dead receiver never delays a deploy).

use serde_json::json;

use super::spec::{ManagedAppSpec, Secrets, WebhookFormat};

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
        let (body, signature) = match hook.format {
            WebhookFormat::Slack => (json!({"text": format!("[{}] {}", event.app, event.message)}).to_string(), None),
            WebhookFormat::Json => {
                let body = json!({
                    "event": event.kind, "app": event.app, "version": event.version,
                    "deploy": event.deploy, "message": event.message,
                    "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                })
                .to_string();
                let sig = secrets.webhooks.get(&hook.url).map(|s| crate::webhooks::sign(s, &body));
                (body, sig)
            }
        };
        crate::webhooks::post(client, &hook.url, body, signature);
    }
}
