//! Webhook delivery, for deploy notifications (`deploys/notify.rs`) and alerts (`alerts.rs`):
//! Slack-compatible (`{"text": ...}`) or a JSON event signed with HMAC-SHA256
//! (`X-Runner-Signature-256: sha256=<hex>`). Each delivery runs in its own task with retries and
//! backoff, so a slow or dead receiver never delays or fails what it reports on.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const ATTEMPTS: u32 = 5;

/// The `X-Runner-Signature-256` value of a body under a secret.
pub fn sign(secret: &str, body: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(body.as_bytes());
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Posts `body` (JSON) to `url` in a task of its own, retried with backoff.
pub fn post(client: &reqwest::Client, url: &str, body: String, signature: Option<String>) {
    let client = client.clone();
    let url = url.to_string();
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
