//! Events told to the web app: the webhooks it registers and their delivery from the outbox.
//!
//! Every event is appended by the store in the transaction of its change (`store/outbox.rs`).
//! Each webhook has a cursor (the last event it is done with) and a lease: one replica at a time
//! walks its events in order, posting each one it subscribes to until the receiver answers 2xx,
//! with backoff doubling from 1 s to `RUNNER_WEBHOOK_MAX_BACKOFF_SECS`, and giving up (delivery
//! `failed`, cursor moved on) after `RUNNER_WEBHOOK_GIVE_UP_SECS`. The cursor moves only after
//! the receiver said yes, so a `kill -9` at any point repeats at most the one event in flight,
//! with the same `id` for the receiver to drop. Events go in order per webhook, hence per
//! session; the price is that one event a receiver keeps refusing holds back the ones after it
//! until it is given up (the deliveries list shows it).
//!
//! Signature (Stripe's scheme): `Runner-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`. Receivers should refuse a `t` older than five minutes (replays).

use std::{collections::HashMap, sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::{
    config::EventSettings,
    domain::rfc3339,
    lifecycle::{DeliveryStatus, EventType},
    metrics::Metrics,
    secret_box::SecretBox,
    store::{now_ms, Attempt, DeliveryRecord, EventRecord, Store, WebhookRecord},
};

/// The header a delivery is signed in.
pub const SIGNATURE_HEADER: &str = "runner-signature";
/// How long a replica holds a webhook's lease without renewing it (a crashed one's expires).
const LEASE: Duration = Duration::from_secs(30);
/// How often webhooks are looked for and other replicas' events noticed (this process's own
/// wake the workers at once).
const POLL: Duration = Duration::from_secs(1);
/// Events read per round of one webhook.
const BATCH: i64 = 100;
/// How much of a refusing receiver's answer is kept as the delivery's last error.
const ERROR_CHARS: usize = 300;

/// The `Runner-Signature` value of a body sent at unix time `t`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` under `secret` made within `tolerance` of
/// `now` (unix seconds): what a receiver checks (also used by this project's tests).
pub fn verify(secret: &str, header: &str, body: &str, now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance {
        return false;
    }
    sigs.iter().any(|s| {
        hex::decode(s).is_ok_and(|got| {
            let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
            m.update(format!("{t}.{body}").as_bytes());
            m.verify_slice(&got).is_ok()
        })
    })
}

/// An event as receivers and `GET /v1/events` see it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Envelope {
    /// The idempotency key: a receiver drops an event whose id it has seen.
    #[schema(example = "evt_3f1c0a9d2b8e4d7f9a6c5b4e3d2c1b0a")]
    pub id: String,
    /// Its place among all events (the cursor of `GET /v1/events`, the SSE `id`).
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub created_at: String,
    /// What the type says: `session`, `learner`, `exercise`, `version` and the type's own fields.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

pub fn envelope(e: &EventRecord) -> Envelope {
    Envelope {
        id: e.id.clone(),
        seq: e.seq,
        event_type: e.event_type,
        created_at: rfc3339(e.created_at),
        data: serde_json::from_str::<serde_json::Value>(&e.data).unwrap_or(serde_json::Value::Null),
    }
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s, … up to `cap`.
pub fn backoff(attempts: i64, cap: Duration) -> Duration {
    let shift = attempts.clamp(0, 30) as u32;
    Duration::from_secs(1u64 << shift).min(cap)
}

/// What a webhook is registered with (`PUT /v1/webhooks/{name}`), validated.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub url: String,
    pub secret: String,
    pub events: Vec<EventType>,
}

/// Why a webhook definition is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidWebhook {
    #[error("the webhook name must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    Name,
    #[error("url must be an http:// or https:// URL of at most 2048 characters")]
    Url,
    #[error("secret must be 16 to 256 characters")]
    Secret,
    #[error("events must list at least one of: {}", EventType::ALL.map(EventType::as_str).join(", "))]
    NoEvents,
    #[error("unknown event type {0:?} (known: {known})", known = EventType::ALL.map(EventType::as_str).join(", "))]
    UnknownEvent(String),
}

pub fn check_name(name: &str) -> Result<(), InvalidWebhook> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InvalidWebhook::Name)
    }
}

impl WebhookSpec {
    pub fn parse(url: &str, secret: &str, events: &[String]) -> Result<WebhookSpec, InvalidWebhook> {
        let url = url.trim();
        let parsed = reqwest::Url::parse(url).map_err(|_| InvalidWebhook::Url)?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() || url.len() > 2048 {
            return Err(InvalidWebhook::Url);
        }
        if secret.chars().count() < 16 || secret.chars().count() > 256 {
            return Err(InvalidWebhook::Secret);
        }
        if events.is_empty() {
            return Err(InvalidWebhook::NoEvents);
        }
        let mut types = Vec::new();
        for e in events {
            let t = EventType::parse(e).ok_or_else(|| InvalidWebhook::UnknownEvent(e.clone()))?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        Ok(WebhookSpec { url: url.to_string(), secret: secret.to_string(), events: types })
    }
}

pub struct Outbox {
    settings: EventSettings,
    store: Store,
    metrics: Arc<Metrics>,
    secret_box: SecretBox,
    client: reqwest::Client,
    /// This process, as a lease holder.
    holder: String,
}

fn secret_context(name: &str) -> String {
    format!("webhook:{name}")
}

impl Outbox {
    pub fn new(settings: EventSettings, store: Store, metrics: Arc<Metrics>, secret_box: SecretBox) -> Arc<Outbox> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.webhook_timeout)
            .build()
            .expect("a plain HTTP client builds");
        Arc::new(Outbox {
            settings,
            store,
            metrics,
            secret_box,
            client,
            holder: format!("outbox-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    /// Creates or replaces a webhook; true when created.
    pub async fn put(&self, name: &str, spec: &WebhookSpec) -> anyhow::Result<bool> {
        let sealed = self.secret_box.seal(&secret_context(name), &spec.secret)?;
        self.store.put_webhook(name, &spec.url, &sealed, &spec.events).await
    }

    /// Delivers one event to one webhook now, whatever its delivery's state (a redelivery asked
    /// for by hand): records the attempt and returns the delivery as it is after it.
    pub async fn redeliver(&self, hook: &WebhookRecord, delivery: &DeliveryRecord) -> anyhow::Result<DeliveryRecord> {
        let event = self
            .store
            .event(delivery.event_seq)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event of this delivery is past retention"))?;
        let outcome = self.post(hook, &event).await?;
        let attempt = match outcome {
            Ok(status) => Attempt {
                status: DeliveryStatus::Delivered,
                http_status: Some(status),
                error: None,
                next_attempt_at: None,
            },
            Err((status, error)) => Attempt {
                // A redelivery that fails leaves the delivery as it was: failed stays failed (it
                // can be redelivered again), pending keeps being retried by the loop.
                status: if delivery.status == DeliveryStatus::Delivered {
                    DeliveryStatus::Delivered
                } else {
                    delivery.status
                },
                http_status: status,
                error: Some(error),
                next_attempt_at: delivery.next_attempt_at,
            },
        };
        self.store.record_attempt(&delivery.id, &attempt).await?;
        Ok(self.store.delivery(&hook.name, &delivery.id).await?.unwrap_or_else(|| delivery.clone()))
    }

    /// One POST of an event: `Ok(http status)` when the receiver took it, else the status (when
    /// it answered) and why not.
    async fn post(
        &self,
        hook: &WebhookRecord,
        event: &EventRecord,
    ) -> anyhow::Result<Result<i64, (Option<i64>, String)>> {
        let secret = self.secret_box.open(&secret_context(&hook.name), &hook.secret)?;
        let body = serde_json::to_string(&envelope(event))?;
        let t = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("exercise-runner/", env!("CARGO_PKG_VERSION")))
            .header(SIGNATURE_HEADER, signature(&secret, t, &body))
            .header("runner-event-id", &event.id)
            .header("runner-event-type", event.event_type.as_str())
            .body(body)
            .send()
            .await;
        Ok(match sent {
            Ok(r) if r.status().is_success() => Ok(i64::from(r.status().as_u16())),
            Ok(r) => {
                let status = i64::from(r.status().as_u16());
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(ERROR_CHARS).collect();
                Err((Some(status), format!("the receiver answered {status}: {text}")))
            }
            Err(e) if e.is_timeout() => {
                Err((None, format!("no answer within {} s", self.settings.webhook_timeout.as_secs())))
            }
            Err(e) => Err((None, format!("unreachable: {}", error_chain(&e)))),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.chars().take(ERROR_CHARS).collect()
}

/// Runs until `shutdown`: a worker per webhook this replica leases, and the pruning of old events.
pub fn spawn(outbox: Arc<Outbox>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut last_prune = None::<std::time::Instant>;
        loop {
            workers.retain(|_, w| !w.is_finished());
            match outbox.store.webhooks().await {
                Ok(hooks) => {
                    for hook in hooks {
                        if workers.contains_key(&hook.name) {
                            continue;
                        }
                        let w = tokio::spawn(work(outbox.clone(), hook.name.clone(), shutdown.child_token()));
                        workers.insert(hook.name, w);
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not list webhooks"),
            }
            if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                last_prune = Some(std::time::Instant::now());
                let before = now_ms() - outbox.settings.retention.as_millis() as i64;
                match outbox.store.delete_old_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "removed events past retention"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not remove old events"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        for (_, w) in workers {
            let _ = w.await;
        }
    })
}

/// Delivers one webhook's events while this replica holds its lease; ends when the webhook is
/// deleted, the lease is another's, or on shutdown.
async fn work(outbox: Arc<Outbox>, name: String, shutdown: CancellationToken) {
    let mut appended = outbox.store.subscribe_events();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now = now_ms();
        match outbox.store.lease_webhook(&name, &outbox.holder, now, now + LEASE.as_millis() as i64).await {
            Ok(true) => {}
            Ok(false) => return, // another replica delivers it (or it is gone); the dispatcher retries later
            Err(e) => {
                tracing::warn!(webhook = %name, error = %format!("{e:#}"), "could not lease a webhook");
                return;
            }
        }
        let wait = match deliver_some(&outbox, &name).await {
            Ok(Some(wait)) => wait,
            Ok(None) => break, // deleted
            Err(e) => {
                tracing::warn!(webhook = %name, error = %format!("{e:#}"), "webhook delivery round failed");
                POLL
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Woken early by this process's events; the lease is renewed well within its term.
            _ = tokio::time::sleep(wait.min(LEASE / 3)) => {}
            _ = appended.changed() => {}
        }
    }
    let _ = outbox.store.release_webhook(&name, &outbox.holder).await;
}

/// Walks a webhook's events after its cursor: skips the ones it does not want, delivers the
/// next due one. Returns how long to wait before the next round (zero: go on at once), or `None`
/// when the webhook no longer exists.
async fn deliver_some(outbox: &Outbox, name: &str) -> anyhow::Result<Option<Duration>> {
    let Some(hook) = outbox.store.webhook(name).await? else { return Ok(None) };
    let last = outbox.store.last_event_seq().await?;
    outbox.metrics.webhook_backlog.with_label_values(&[name]).set(last - hook.cursor);
    let events = outbox.store.events_after(hook.cursor, &[], BATCH).await?;
    let Some(next) = events.iter().find(|e| hook.wants(e.event_type)) else {
        // Nothing it wants among these: move past them.
        if let Some(e) = events.last() {
            outbox.store.advance_webhook(name, &outbox.holder, e.seq).await?;
            return Ok(Some(Duration::ZERO));
        }
        // Caught up: another replica's next event is seen within a poll.
        return Ok(Some(POLL));
    };
    if next.seq > hook.cursor + 1 {
        outbox.store.advance_webhook(name, &outbox.holder, next.seq - 1).await?;
    }
    let delivery = outbox.store.delivery_of(name, next).await?;
    if delivery.status != DeliveryStatus::Pending {
        // Delivered or given up before a crash could move the cursor.
        outbox.store.advance_webhook(name, &outbox.holder, next.seq).await?;
        return Ok(Some(Duration::ZERO));
    }
    let now = now_ms();
    if let Some(due) = delivery.next_attempt_at.filter(|&d| d > now) {
        return Ok(Some(Duration::from_millis((due - now) as u64)));
    }
    let outcome = outbox.post(&hook, next).await?;
    let attempt = match outcome {
        Ok(status) => {
            outbox.metrics.webhook_attempts.with_label_values(&[name, "delivered"]).inc();
            Attempt { status: DeliveryStatus::Delivered, http_status: Some(status), error: None, next_attempt_at: None }
        }
        Err((status, error)) => {
            let given_up = now - delivery.created_at >= outbox.settings.webhook_give_up.as_millis() as i64;
            let result = if given_up { "failed" } else { "retried" };
            outbox.metrics.webhook_attempts.with_label_values(&[name, result]).inc();
            tracing::warn!(webhook = %name, event = %next.id, attempts = delivery.attempts + 1, error = %error,
                "webhook delivery {}", if given_up { "given up" } else { "will be retried" });
            Attempt {
                status: if given_up { DeliveryStatus::Failed } else { DeliveryStatus::Pending },
                http_status: status,
                error: Some(error),
                next_attempt_at: (!given_up).then(|| {
                    now_ms() + backoff(delivery.attempts, outbox.settings.webhook_max_backoff).as_millis() as i64
                }),
            }
        }
    };
    outbox.store.record_attempt(&delivery.id, &attempt).await?;
    if attempt.status == DeliveryStatus::Pending {
        let wait = attempt.next_attempt_at.map(|d| (d - now_ms()).max(0) as u64).unwrap_or(1000);
        return Ok(Some(Duration::from_millis(wait)));
    }
    outbox.store.advance_webhook(name, &outbox.holder, next.seq).await?;
    Ok(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_stripes_scheme_and_verifies() {
        // Computed independently: python3 -c 'import hmac,hashlib; print(hmac.new(
        // b"whsec_0123456789ab", b"1700000000.{}", hashlib.sha256).hexdigest())'
        let sig = signature("whsec_0123456789ab", 1_700_000_000, "{}");
        assert_eq!(sig, "t=1700000000,v1=8d1a15f94e2433db6c226f20e50b0bff74ae546b5f0974785343199bf227bab6");
        assert!(verify("whsec_0123456789ab", &sig, "{}", 1_700_000_100, 300));
        assert!(!verify("whsec_0123456789ab", &sig, "{} ", 1_700_000_100, 300), "another body");
        assert!(!verify("another-secret-0000", &sig, "{}", 1_700_000_100, 300), "another secret");
        assert!(!verify("whsec_0123456789ab", &sig, "{}", 1_700_000_400, 300), "too old: a replay");
        assert!(!verify("whsec_0123456789ab", "v1=00", "{}", 1_700_000_000, 300), "no timestamp");
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (0..9).map(|a| backoff(a, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(1000, cap), cap);
        assert_eq!(backoff(-1, cap), Duration::from_secs(1));
    }

    #[test]
    fn webhook_definitions_are_validated() {
        let events = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = WebhookSpec::parse("https://site.example/hooks", "0123456789abcdef", &events(&["check.completed"]));
        assert_eq!(ok.unwrap().events, [EventType::CheckCompleted]);
        let twice = WebhookSpec::parse(
            "http://127.0.0.1:9/h",
            "0123456789abcdef",
            &events(&["session.ended", "session.ended"]),
        );
        assert_eq!(twice.unwrap().events, [EventType::SessionEnded]);
        let err = |url: &str, secret: &str, ev: &[&str]| WebhookSpec::parse(url, secret, &events(ev)).unwrap_err();
        assert_eq!(err("ftp://x/y", "0123456789abcdef", &["check.completed"]), InvalidWebhook::Url);
        assert_eq!(err("not a url", "0123456789abcdef", &["check.completed"]), InvalidWebhook::Url);
        assert_eq!(err("https://x/", "short", &["check.completed"]), InvalidWebhook::Secret);
        assert_eq!(err("https://x/", "0123456789abcdef", &[]), InvalidWebhook::NoEvents);
        assert_eq!(
            err("https://x/", "0123456789abcdef", &["check.done"]),
            InvalidWebhook::UnknownEvent("check.done".into())
        );
        assert!(check_name("site-1").is_ok() && check_name("a_b").is_ok());
        for bad in ["", "-x", "Site", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(check_name(bad), Err(InvalidWebhook::Name), "{bad:?}");
        }
    }

    #[test]
    fn the_envelope_carries_id_type_time_and_data() {
        let e = EventRecord {
            seq: 7,
            id: "evt_1".into(),
            event_type: EventType::CheckCompleted,
            session_id: Some("s".into()),
            learner: Some("l".into()),
            exercise: Some("x".into()),
            created_at: 0,
            data: r#"{"passed":true}"#.into(),
        };
        let v = serde_json::to_value(envelope(&e)).unwrap();
        assert_eq!(v["id"], "evt_1");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "check.completed");
        assert_eq!(v["created_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["passed"], true);
    }
}
