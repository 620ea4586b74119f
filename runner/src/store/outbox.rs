//! The outbox (`events`) and the webhooks it is delivered to (`webhooks`, `webhook_deliveries`).
//!
//! An event is appended inside the transaction of the change it describes ([`append`]), so a
//! change is never committed without its event nor an event without its change. Its number
//! comes from the one-row `event_seq`, bumped last in that transaction: on PostgreSQL the row
//! lock makes such transactions commit in the order of their numbers, so readers may page by
//! number (`seq > cursor`) without ever missing one that commits late.

use sqlx::{any::AnyRow, AnyConnection, Row};

use super::{now_ms, Store};
use crate::lifecycle::{DeliveryStatus, EventType};

/// What an event is about, for filters and for a learner's erasure.
#[derive(Debug, Default, Clone)]
pub struct Subject {
    pub session_id: Option<String>,
    pub learner: Option<String>,
    pub exercise: Option<String>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub id: String,
    pub event_type: EventType,
    pub session_id: Option<String>,
    pub learner: Option<String>,
    pub exercise: Option<String>,
    pub created_at: i64,
    /// JSON object.
    pub data: String,
}

impl EventRecord {
    const COLUMNS: &'static str = "seq, id, type, session_id, learner, exercise, created_at, data";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let ty: String = r.try_get("type")?;
        Ok(EventRecord {
            seq: r.try_get("seq")?,
            id: r.try_get("id")?,
            event_type: EventType::parse(&ty).ok_or_else(|| anyhow::anyhow!("unknown event type {ty:?}"))?,
            session_id: r.try_get("session_id")?,
            learner: r.try_get("learner")?,
            exercise: r.try_get("exercise")?,
            created_at: r.try_get("created_at")?,
            data: r.try_get("data")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub name: String,
    pub url: String,
    /// Sealed (`crate::secret_box`).
    pub secret: String,
    pub events: Vec<EventType>,
    /// The last event seq this webhook is done with.
    pub cursor: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl WebhookRecord {
    const COLUMNS: &'static str = "name, url, secret, events, cursor, created_at, updated_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let events: String = r.try_get("events")?;
        let words: Vec<String> = serde_json::from_str(&events)?;
        Ok(WebhookRecord {
            name: r.try_get("name")?,
            url: r.try_get("url")?,
            secret: r.try_get("secret")?,
            events: words.iter().filter_map(|w| EventType::parse(w)).collect(),
            cursor: r.try_get("cursor")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
    pub fn wants(&self, t: EventType) -> bool {
        self.events.contains(&t)
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook: String,
    pub event_seq: i64,
    pub event_id: String,
    pub event_type: EventType,
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// The receiver's HTTP status of the last attempt (none: it was not reached).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeliveryRecord {
    const COLUMNS: &'static str = "id, webhook, event_seq, event_id, event_type, status, attempts, last_status, \
        last_error, next_attempt_at, created_at, updated_at";
    fn from_row(r: &AnyRow) -> anyhow::Result<Self> {
        let ty: String = r.try_get("event_type")?;
        let status: String = r.try_get("status")?;
        Ok(DeliveryRecord {
            id: r.try_get("id")?,
            webhook: r.try_get("webhook")?,
            event_seq: r.try_get("event_seq")?,
            event_id: r.try_get("event_id")?,
            event_type: EventType::parse(&ty).ok_or_else(|| anyhow::anyhow!("unknown event type {ty:?}"))?,
            status: DeliveryStatus::parse(&status)
                .ok_or_else(|| anyhow::anyhow!("unknown delivery status {status:?}"))?,
            attempts: r.try_get("attempts")?,
            last_status: r.try_get("last_status")?,
            last_error: r.try_get("last_error")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

/// The outcome of one delivery attempt, as it is recorded.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status: DeliveryStatus,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    /// When to try again (pending only).
    pub next_attempt_at: Option<i64>,
}

/// Appends an event in the caller's transaction; returns its seq. Call it last in the
/// transaction: the `event_seq` row stays locked until commit.
pub(super) async fn append(
    conn: &mut AnyConnection,
    event_type: EventType,
    subject: &Subject,
    data: serde_json::Value,
) -> anyhow::Result<i64> {
    let seq: i64 = sqlx::query("UPDATE event_seq SET last = last + 1 WHERE id = 1 RETURNING last")
        .fetch_one(&mut *conn)
        .await?
        .try_get("last")?;
    sqlx::query(
        "INSERT INTO events (seq, id, type, session_id, learner, exercise, created_at, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(format!("evt_{}", uuid::Uuid::new_v4().simple()))
    .bind(event_type.as_str())
    .bind(&subject.session_id)
    .bind(&subject.learner)
    .bind(&subject.exercise)
    .bind(now_ms())
    .bind(data.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}

/// What a session's events say about it: its learner, exercise, and the exercise version its
/// image is (none for an image no build made).
pub(super) struct SessionFacts {
    pub subject: Subject,
    pub version: Option<String>,
    pub failure_reason: Option<String>,
    pub end_reason: Option<String>,
}

pub(super) async fn session_facts(conn: &mut AnyConnection, id: &str) -> anyhow::Result<SessionFacts> {
    let row = sqlx::query("SELECT learner, exercise, image, failure_reason, end_reason FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let exercise: String = row.try_get("exercise")?;
    let image: String = row.try_get("image")?;
    let version = sqlx::query(
        "SELECT version FROM exercise_versions WHERE exercise = $1 AND image = $2 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&exercise)
    .bind(&image)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.try_get::<String, _>("version"))
    .transpose()?;
    Ok(SessionFacts {
        subject: Subject {
            session_id: Some(id.to_string()),
            learner: row.try_get("learner")?,
            exercise: Some(exercise),
        },
        version,
        failure_reason: row.try_get("failure_reason")?,
        end_reason: row.try_get("end_reason")?,
    })
}

/// `session.running` for a session, in the caller's transaction.
pub(super) async fn append_session_running(conn: &mut AnyConnection, id: &str) -> anyhow::Result<i64> {
    let facts = session_facts(conn, id).await?;
    let data = serde_json::json!({
        "session": id,
        "learner": facts.subject.learner,
        "exercise": facts.subject.exercise,
        "version": facts.version,
        "ide_url": format!("/ide/{id}/"),
    });
    append(conn, EventType::SessionRunning, &facts.subject, data).await
}

impl Store {
    /// Tells this process's waiters (the delivery loop, `GET /v1/events` streams) that events up
    /// to `seq` are committed. Other replicas see them at their next poll.
    pub(super) fn appended(&self, seq: i64) {
        self.appended.send_if_modified(|last| {
            let newer = seq > *last;
            if newer {
                *last = seq;
            }
            newer
        });
    }

    /// A receiver of the seq of the newest event this process committed.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<i64> {
        self.appended.subscribe()
    }

    /// Events after `after`, oldest first, of the given types (empty: all).
    pub async fn events_after(&self, after: i64, types: &[EventType], limit: i64) -> anyhow::Result<Vec<EventRecord>> {
        let mut sql = format!("SELECT {} FROM events WHERE seq > $1", EventRecord::COLUMNS);
        if !types.is_empty() {
            // The words are the enum's own, never input.
            let words = types.iter().map(|t| format!("'{}'", t.as_str())).collect::<Vec<_>>().join(", ");
            sql += &format!(" AND type IN ({words})");
        }
        sql += " ORDER BY seq LIMIT $2";
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(EventRecord::from_row).collect()
    }

    pub async fn event(&self, seq: i64) -> anyhow::Result<Option<EventRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM events WHERE seq = $1", EventRecord::COLUMNS))
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| EventRecord::from_row(&r)).transpose()
    }

    /// The seq of the newest event (0 when there is none).
    pub async fn last_event_seq(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT last FROM event_seq WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get("last")?)
    }

    /// Removes events created before `before` that every webhook is done with, and their
    /// deliveries; returns how many events went.
    pub async fn delete_old_events(&self, before: i64) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let keep_from = "(SELECT COALESCE(MIN(cursor), 9223372036854775807) FROM webhooks)";
        sqlx::query(&format!(
            "DELETE FROM webhook_deliveries WHERE event_seq IN \
             (SELECT seq FROM events WHERE created_at < $1 AND seq <= {keep_from})"
        ))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(&format!("DELETE FROM events WHERE created_at < $1 AND seq <= {keep_from}"))
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    // ---- webhooks ----

    /// Creates or replaces a webhook; true when it was created. A new webhook starts at the newest
    /// event (it is told what happens from now on); a replaced one keeps its place.
    pub async fn put_webhook(
        &self,
        name: &str,
        url: &str,
        sealed_secret: &str,
        events: &[EventType],
    ) -> anyhow::Result<bool> {
        let words = serde_json::to_string(&events.iter().map(|e| e.as_str()).collect::<Vec<_>>())?;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let replaced =
            sqlx::query("UPDATE webhooks SET url = $1, secret = $2, events = $3, updated_at = $4 WHERE name = $5")
                .bind(url)
                .bind(sealed_secret)
                .bind(&words)
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if replaced == 0 {
            sqlx::query(
                "INSERT INTO webhooks (name, url, secret, events, cursor, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, (SELECT last FROM event_seq WHERE id = 1), $5, $5)",
            )
            .bind(name)
            .bind(url)
            .bind(sealed_secret)
            .bind(&words)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(replaced == 0)
    }

    pub async fn webhook(&self, name: &str) -> anyhow::Result<Option<WebhookRecord>> {
        let row = sqlx::query(&format!("SELECT {} FROM webhooks WHERE name = $1", WebhookRecord::COLUMNS))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| WebhookRecord::from_row(&r)).transpose()
    }

    pub async fn webhooks(&self) -> anyhow::Result<Vec<WebhookRecord>> {
        let rows = sqlx::query(&format!("SELECT {} FROM webhooks ORDER BY name", WebhookRecord::COLUMNS))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(WebhookRecord::from_row).collect()
    }

    /// Deletes a webhook and its deliveries; false when there was none.
    pub async fn delete_webhook(&self, name: &str) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook = $1").bind(name).execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM webhooks WHERE name = $1").bind(name).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Takes (or renews) the delivery lease of a webhook until `until`, unless another holder's
    /// lease still runs. One replica at a time delivers a webhook's events, so they go in order.
    pub async fn lease_webhook(&self, name: &str, holder: &str, now: i64, until: i64) -> anyhow::Result<bool> {
        let n = sqlx::query(
            "UPDATE webhooks SET lease_holder = $1, lease_until = $2 WHERE name = $3 \
             AND (lease_holder IS NULL OR lease_holder = $1 OR lease_until < $4)",
        )
        .bind(holder)
        .bind(until)
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn release_webhook(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE webhooks SET lease_holder = NULL, lease_until = NULL WHERE name = $1 AND lease_holder = $2",
        )
        .bind(name)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a webhook's cursor forward to `seq` (never back), only while `holder` leases it.
    pub async fn advance_webhook(&self, name: &str, holder: &str, seq: i64) -> anyhow::Result<bool> {
        let n = sqlx::query("UPDATE webhooks SET cursor = $1 WHERE name = $2 AND lease_holder = $3 AND cursor < $1")
            .bind(seq)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// The delivery of an event to a webhook, made `pending` (due now) when there is none yet.
    pub async fn delivery_of(&self, webhook: &str, event: &EventRecord) -> anyhow::Result<DeliveryRecord> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook, event_seq, event_id, event_type, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $7) \
             ON CONFLICT (webhook, event_seq) DO NOTHING",
        )
        .bind(format!("dlv_{}", uuid::Uuid::new_v4().simple()))
        .bind(webhook)
        .bind(event.seq)
        .bind(&event.id)
        .bind(event.event_type.as_str())
        .bind(DeliveryStatus::Pending.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {} FROM webhook_deliveries WHERE webhook = $1 AND event_seq = $2",
            DeliveryRecord::COLUMNS
        ))
        .bind(webhook)
        .bind(event.seq)
        .fetch_one(&self.pool)
        .await?;
        DeliveryRecord::from_row(&row)
    }

    pub async fn delivery(&self, webhook: &str, id: &str) -> anyhow::Result<Option<DeliveryRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM webhook_deliveries WHERE webhook = $1 AND id = $2",
            DeliveryRecord::COLUMNS
        ))
        .bind(webhook)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| DeliveryRecord::from_row(&r)).transpose()
    }

    /// A webhook's deliveries, newest first, optionally of one status.
    pub async fn deliveries(
        &self,
        webhook: &str,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> anyhow::Result<Vec<DeliveryRecord>> {
        let filter = match status {
            Some(s) => format!(" AND status = '{}'", s.as_str()),
            None => String::new(),
        };
        let rows = sqlx::query(&format!(
            "SELECT {} FROM webhook_deliveries WHERE webhook = $1{filter} ORDER BY event_seq DESC LIMIT $2",
            DeliveryRecord::COLUMNS
        ))
        .bind(webhook)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DeliveryRecord::from_row).collect()
    }

    /// Records one attempt of a delivery.
    pub async fn record_attempt(&self, id: &str, a: &Attempt) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, last_status = $2, last_error = $3, \
             next_attempt_at = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(a.status.as_str())
        .bind(a.http_status)
        .bind(&a.error)
        .bind(a.next_attempt_at)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", tmp.path().join("r.db").display())).await.unwrap();
        (store, tmp)
    }

    async fn append_one(store: &Store, t: EventType) -> i64 {
        let mut tx = store.pool.begin().await.unwrap();
        let seq = append(&mut tx, t, &Subject::default(), serde_json::json!({})).await.unwrap();
        tx.commit().await.unwrap();
        store.appended(seq);
        seq
    }

    #[tokio::test]
    async fn events_are_numbered_in_order_and_a_new_webhook_starts_at_the_newest() {
        let (store, _tmp) = store().await;
        let mut seen = store.subscribe_events();
        let a = append_one(&store, EventType::BuildFinished).await;
        let b = append_one(&store, EventType::VersionPublished).await;
        assert_eq!((a + 1, b), (b, store.last_event_seq().await.unwrap()));
        assert!(seen.has_changed().unwrap());
        assert_eq!(*seen.borrow_and_update(), b);
        let all = store.events_after(0, &[], 10).await.unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [a, b]);
        let only = store.events_after(0, &[EventType::VersionPublished], 10).await.unwrap();
        assert_eq!(only.iter().map(|e| e.seq).collect::<Vec<_>>(), [b]);
        assert!(store.put_webhook("w", "http://127.0.0.1:9/", "s", &[EventType::BuildFinished]).await.unwrap());
        assert_eq!(store.webhook("w").await.unwrap().unwrap().cursor, b, "told what happens from now on");
        assert!(!store.put_webhook("w", "http://127.0.0.1:8/", "s", &[EventType::BuildFinished]).await.unwrap());
    }

    #[tokio::test]
    async fn old_events_go_only_once_every_webhook_is_done_with_them() {
        let (store, _tmp) = store().await;
        let first = append_one(&store, EventType::BuildFinished).await;
        store.put_webhook("late", "http://127.0.0.1:9/", "s", &[EventType::BuildFinished]).await.unwrap();
        let second = append_one(&store, EventType::BuildFinished).await;
        // `late` is done with `first` (it started after it), not with `second`.
        assert_eq!(store.delete_old_events(now_ms() + 1).await.unwrap(), 1);
        assert!(store.event(first).await.unwrap().is_none());
        assert!(store.event(second).await.unwrap().is_some());
        assert!(store.lease_webhook("late", "me", 0, i64::MAX).await.unwrap());
        assert!(!store.lease_webhook("late", "other", 1, 2).await.unwrap(), "the lease is held");
        assert!(store.advance_webhook("late", "me", second).await.unwrap());
        assert!(!store.advance_webhook("late", "other", second + 5).await.unwrap(), "only the holder moves it");
        assert_eq!(store.delete_old_events(now_ms() + 1).await.unwrap(), 1);
        assert_eq!(store.delete_old_events(0).await.unwrap(), 0, "newer than the cut-off: kept");
    }
}
