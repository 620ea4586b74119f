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
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
    operators,
};
use crate::{
    app::App,
    domain::rfc3339,
    error::{ApiError, ApiResult, ErrorBody},
    lifecycle::{DeliveryStatus, EventType},
    outbox::{self, Envelope, WebhookSpec},
    store::{DeliveryRecord, WebhookRecord},
};

/// The longest `wait` of a long-poll.
const MAX_WAIT_SECS: u64 = 60;
/// How often a stream or a long-poll looks for events other replicas committed.
const POLL: Duration = Duration::from_secs(1);

/// A webhook of the web app.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutWebhook {
    /// Where events are posted: an http:// or https:// URL (no redirects are followed).
    #[schema(example = "https://course.example/runner-events")]
    url: String,
    /// The HMAC-SHA256 key of `Runner-Signature` (16-256 characters); write-only.
    secret: String,
    /// The event types it is told (at least one).
    #[schema(value_type = Vec<EventType>)]
    events: Vec<String>,
}

/// A webhook as the API shows it (never its secret).
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    name: String,
    url: String,
    events: Vec<EventType>,
    /// The seq of the last event it is done with (delivered, not asked for, or given up).
    cursor: i64,
    /// Events after its cursor, not yet told.
    backlog: i64,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    webhooks: Vec<WebhookView>,
}

/// One event's delivery to one webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    id: String,
    webhook: String,
    event_id: String,
    event_seq: i64,
    event_type: EventType,
    status: DeliveryStatus,
    attempts: i64,
    /// The receiver's HTTP status of the last attempt (none: it was not reached).
    last_status: Option<i64>,
    last_error: Option<String>,
    /// When it is tried again (pending only).
    next_attempt_at: Option<String>,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    deliveries: Vec<DeliveryView>,
}

/// A page of events.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// Oldest first.
    events: Vec<Envelope>,
    /// The cursor of the next page: the seq of the last event here (or the `after` asked for).
    next: i64,
}

fn webhook_view(w: &WebhookRecord, last_seq: i64) -> WebhookView {
    WebhookView {
        name: w.name.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        cursor: w.cursor,
        backlog: (last_seq - w.cursor).max(0),
        created_at: rfc3339(w.created_at),
        updated_at: rfc3339(w.updated_at),
    }
}

fn delivery_view(d: &DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: d.id.clone(),
        webhook: d.webhook.clone(),
        event_id: d.event_id.clone(),
        event_seq: d.event_seq,
        event_type: d.event_type,
        status: d.status,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        next_attempt_at: d.next_attempt_at.filter(|_| d.status == DeliveryStatus::Pending).map(rfc3339),
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

const NAME: &str = "The webhook's name: 1-64 of a-z, 0-9, '-' and '_'";

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

/// Create or replace a webhook of the web app
///
/// A new webhook is told what happens from now on; a replaced one keeps its place in the events.
#[utoipa::path(
    put, path = "/v1/webhooks/{name}", operation_id = "put_webhook", tag = "webhooks",
    params(("name" = String, Path, description = NAME)),
    request_body = PutWebhook,
    responses(
        (status = 200, description = "Replaced", body = WebhookView),
        (status = 201, description = "Created", body = WebhookView),
        (status = 422, description = "`invalid_webhook`: the name, url, secret or events", body = ErrorBody),
    )
)]
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
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

/// List the webhooks
#[utoipa::path(
    get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    responses((status = 200, description = "The webhooks, by name", body = WebhookList))
)]
pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<WebhookList>> {
    let last = app.store.last_event_seq().await?;
    let webhooks = app.store.webhooks().await?.iter().map(|w| webhook_view(w, last)).collect();
    Ok(Json(WebhookList { webhooks }))
}

/// Read a webhook
#[utoipa::path(
    get, path = "/v1/webhooks/{name}", operation_id = "get_webhook", tag = "webhooks",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 200, description = "The webhook", body = WebhookView),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Json<WebhookView>> {
    let hook = existing(&app, &name).await?;
    Ok(Json(webhook_view(&hook, app.store.last_event_seq().await?)))
}

/// Delete a webhook and its deliveries
#[utoipa::path(
    delete, path = "/v1/webhooks/{name}", operation_id = "delete_webhook", tag = "webhooks",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this status.
    #[param(value_type = Option<DeliveryStatus>)]
    status: Option<String>,
    /// At most this many (1-1000, default 100).
    limit: Option<u32>,
}

/// List a webhook's deliveries, newest first
#[utoipa::path(
    get, path = "/v1/webhooks/{name}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(("name" = String, Path, description = NAME), DeliveriesQuery),
    responses(
        (status = 200, description = "Its deliveries, each with its status, attempts and last error", body = DeliveryList),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
    )
)]
pub async fn deliveries(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
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
    let limit = super::extract::limit_param(q.limit, 100, 1000)? as i64;
    let deliveries = app.store.deliveries(&name, status, limit).await?.iter().map(delivery_view).collect();
    Ok(Json(DeliveryList { deliveries }))
}

/// Redeliver an event to a webhook now
///
/// One attempt, whatever the delivery's status; answers with the delivery as it is after it
/// (`last_status`, `last_error` say how it went).
#[utoipa::path(
    post, path = "/v1/webhooks/{name}/deliveries/{id}/redeliver", operation_id = "redeliver", tag = "webhooks",
    params(("name" = String, Path, description = NAME), ("id" = String, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "The delivery after the attempt", body = DeliveryView),
        (status = 404, description = "`webhook_not_found`, `delivery_not_found`", body = ErrorBody),
        (status = 409, description = "`event_expired`: the event is past retention", body = ErrorBody),
    )
)]
pub async fn redeliver(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<DeliveryView>> {
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this seq (the `seq` of the last one the client has; 0: from the oldest kept).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Comma-separated event types; none: all.
    #[param(example = "check.completed,session.ended")]
    types: Option<String>,
    /// At most this many (1-1000, default 100).
    limit: Option<u32>,
    /// Long-poll: wait up to this many seconds (at most 60) for an event when there is none yet.
    #[param(maximum = 60)]
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

/// The events after a cursor: a JSON page, or a stream of Server-Sent Events
///
/// With `Accept: text/event-stream`, Server-Sent Events whose `id` is the event's seq and whose
/// `event` its type, so a reconnecting `EventSource` resumes with `Last-Event-ID`; otherwise a
/// JSON page (`wait` long-polls).
#[utoipa::path(
    get, path = "/v1/events", operation_id = "list_events", tag = "events",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume a stream after this seq (overrides `after`)"),
    ),
    responses(
        (status = 200, description = "A page of events (or, asked for, a stream of them)", content(
            (EventPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "`invalid_query`, `invalid_last_event_id`", body = ErrorBody),
    )
)]
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
    let limit = super::extract::limit_param(q.limit, 100, 1000)? as i64;
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
            let events = events.iter().map(outbox::envelope).collect();
            return Ok(Json(EventPage { events, next }).into_response());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)) => {}
            _ = appended.changed() => {}
            _ = app.shutdown.cancelled() => return Ok(Json(EventPage { events: vec![], next: after }).into_response()),
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
                    .json_data(outbox::envelope(&e))
                    .expect("an envelope serialises");
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
