//! Events for the web app: its webhooks (`/v1/webhooks/…`) and the stream it may pull instead
//! (`GET /v1/events`, Server-Sent Events or long-poll). Delivery itself is `crate::outbox`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Extension, Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
    operators,
};
use crate::{
    app::App,
    domain::rfc3339,
    error::{ApiError, ApiResult},
    lifecycle::{DeliveryStatus, EventType},
    outbox::{self, WebhookSpec},
    store::{DeliveryRecord, WebhookRecord},
};

/// The longest `wait` of a long-poll.
const MAX_WAIT_SECS: u64 = 60;
/// How often a stream or a long-poll looks for events other replicas committed.
const POLL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutWebhook {
    url: String,
    secret: String,
    events: Vec<String>,
}

fn webhook_view(w: &WebhookRecord, last_seq: i64) -> serde_json::Value {
    json!({
        "name": w.name,
        "url": w.url,
        "events": w.events,
        // The secret is never shown again.
        "cursor": w.cursor,
        "backlog": (last_seq - w.cursor).max(0),
        "created_at": rfc3339(w.created_at),
        "updated_at": rfc3339(w.updated_at),
    })
}

fn delivery_view(d: &DeliveryRecord) -> serde_json::Value {
    json!({
        "id": d.id,
        "webhook": d.webhook,
        "event_id": d.event_id,
        "event_seq": d.event_seq,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at.filter(|_| d.status == DeliveryStatus::Pending).map(rfc3339),
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    })
}

fn webhook_name(name: &str) -> ApiResult<()> {
    outbox::check_name(name).map_err(|e| ApiError::invalid("invalid_webhook", e.to_string()))
}

async fn existing(app: &App, name: &str) -> ApiResult<WebhookRecord> {
    webhook_name(name).map_err(|_| not_found(name))?;
    app.store.webhook(name).await?.ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found("webhook_not_found", format!("webhook {name:?} does not exist"))
}

/// `PUT /v1/webhooks/{name}`: creates (201) or replaces (200) a webhook. A new one is told what
/// happens from now on; a replaced one keeps its place in the events.
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutWebhook>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    webhook_name(&name)?;
    let spec = WebhookSpec::parse(&body.url, &body.secret, &body.events)
        .map_err(|e| ApiError::invalid("invalid_webhook", e.to_string()))?;
    let created = app.outbox.put(&name, &spec).await?;
    operators::audit(&app, actor, "webhook.put", &name, if created { "ok: created" } else { "ok: replaced" }, None)
        .await;
    let hook = existing(&app, &name).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(webhook_view(&hook, app.store.last_event_seq().await?))))
}

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let last = app.store.last_event_seq().await?;
    let hooks: Vec<_> = app.store.webhooks().await?.iter().map(|w| webhook_view(w, last)).collect();
    Ok(Json(json!({ "webhooks": hooks })))
}

pub async fn get(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let hook = existing(&app, &name).await?;
    Ok(Json(webhook_view(&hook, app.store.last_event_seq().await?)))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    existing(&app, &name).await?;
    if !app.store.delete_webhook(&name).await? {
        return Err(not_found(&name));
    }
    operators::audit(&app, actor, "webhook.delete", &name, "ok", None).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/webhooks/{name}/deliveries`: newest first, each with its status, attempts and last
/// error.
pub async fn deliveries(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    existing(&app, &name).await?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("status {s:?} is not one of {}", DeliveryStatus::ALL.map(DeliveryStatus::as_str).join(", ")),
            )
        })?),
    };
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let list: Vec<_> = app.store.deliveries(&name, status, limit).await?.iter().map(delivery_view).collect();
    Ok(Json(json!({ "deliveries": list })))
}

/// `POST /v1/webhooks/{name}/deliveries/{id}/redeliver`: one attempt now; answers with the
/// delivery as it is after it (`last_status`, `last_error` say how it went).
pub async fn redeliver(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let hook = existing(&app, &name).await?;
    let delivery =
        app.store.delivery(&name, &id).await?.ok_or_else(|| {
            ApiError::not_found("delivery_not_found", format!("webhook {name:?} has no delivery {id:?}"))
        })?;
    if app.store.event(delivery.event_seq).await?.is_none() {
        return Err(ApiError::conflict("event_expired", "the event of this delivery is past retention"));
    }
    let after = app.outbox.redeliver(&hook, &delivery).await?;
    let outcome = if after.last_error.is_none() { "ok: delivered".to_string() } else { "ok: refused".to_string() };
    operators::audit(&app, actor, "webhook.redeliver", &format!("{name}/{id}"), &outcome, None).await;
    Ok(Json(delivery_view(&after)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this seq (the `seq` of the last one the client has; 0: from the oldest kept).
    after: Option<i64>,
    /// Comma-separated event types; none: all.
    types: Option<String>,
    limit: Option<u32>,
    /// Long-poll: wait up to this many seconds for an event when there is none yet.
    wait: Option<u64>,
}

fn event_types(list: Option<&str>) -> ApiResult<Vec<EventType>> {
    let Some(list) = list.filter(|l| !l.is_empty()) else { return Ok(vec![]) };
    list.split(',')
        .map(|t| {
            EventType::parse(t.trim()).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("event type {t:?} is not one of {}", EventType::ALL.map(EventType::as_str).join(", ")),
                )
            })
        })
        .collect()
}

/// `GET /v1/events`: the events after a cursor, as Server-Sent Events (`Accept:
/// text/event-stream`; each event's `id` is its seq, so a reconnecting `EventSource` resumes
/// with `Last-Event-ID`) or as a JSON page (`{"events", "next"}`; `wait` long-polls).
pub async fn stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let types = event_types(q.types.as_deref())?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => {
            Some(v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be the seq of an event")
            })?)
        }
    };
    let after = last_event_id.or(q.after).unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_query", "after must be 0 or more"));
    }
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")));
    if wants_stream {
        return Ok(sse(app, after, types).into_response());
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut appended = app.store.subscribe_events();
    loop {
        let events = app.store.events_after(after, &types, limit).await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let next = events.last().map_or(after, |e| e.seq);
            let list: Vec<_> = events.iter().map(outbox::envelope).collect();
            return Ok(Json(json!({ "events": list, "next": next })).into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)) => {}
            _ = appended.changed() => {}
            _ = app.shutdown.cancelled() => return Ok(Json(json!({ "events": [], "next": after })).into_response()),
        }
    }
}

fn sse(
    app: Arc<App>,
    after: i64,
    types: Vec<EventType>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let appended = app.store.subscribe_events();
    let state = (app, after, types, appended, std::collections::VecDeque::new());
    let stream = futures_util::stream::unfold(state, |(app, mut cursor, types, mut appended, mut queue)| async move {
        loop {
            if let Some(e) = queue.pop_front() {
                let e: crate::store::EventRecord = e;
                cursor = e.seq;
                let event = Event::default()
                    .id(e.seq.to_string())
                    .event(e.event_type.as_str())
                    .data(outbox::envelope(&e).to_string());
                return Some((Ok(event), (app, cursor, types, appended, queue)));
            }
            match app.store.events_after(cursor, &types, 100).await {
                Ok(events) if !events.is_empty() => {
                    queue.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "an event stream could not read events"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = appended.changed() => {}
                _ = app.shutdown.cancelled() => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
