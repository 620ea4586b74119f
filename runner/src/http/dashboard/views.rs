//! What the dashboard reads that `/v1` has no route for: who signed in (and the CSRF token),
//! the overview's counts, every session's figures at once, recent builds of every exercise, and
//! the recent problems. The rest of its data comes from the `/v1` handlers themselves.

use std::sync::Arc;

use axum::{extract::State, Extension, Json};
use serde_json::{json, Value};

use super::{auth::SignedIn, Dash};
use crate::{
    app::App,
    builds, deploys,
    domain::rfc3339,
    error::ApiResult,
    lifecycle::{BuildState, DeployState, SessionEvent, SessionState},
    store::SessionFilter,
    usage::{Kind, TopBy},
};

/// `GET /dashboard/api/me`: which credential signed in, until when, and this sign-in's CSRF
/// token (only a same-origin page can read it).
pub async fn me(State(d): State<Dash>, Extension(s): Extension<SignedIn>) -> Json<Value> {
    let actor = s.credential.actor().0;
    Json(json!({
        "actor": actor,
        "label": actor.replace('-', " "),
        "expires_at": rfc3339(s.expires as i64 * 1000),
        "csrf": d.auth.signer.csrf_token(&s),
    }))
}

/// The `q`-quantile of a cumulative histogram (`(upper bound, count at or below)`, ascending),
/// interpolated within its bucket as Prometheus' `histogram_quantile` does; `None` when empty.
/// A rank in the `+Inf` bucket answers the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank && cumulative > below {
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below as f64) / (cumulative - below) as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        (lower, below) = (upper, cumulative);
    }
    buckets.last().map(|b| b.0)
}

/// p50 and p99 of `runner_session_start_duration_seconds` for this runner's runtime.
fn start_latency(app: &App) -> Value {
    use prometheus::core::Collector;
    let runtime = app.settings.runtime.as_str();
    let mut count = 0;
    let mut buckets = vec![];
    for family in app.metrics.session_start_seconds.collect() {
        for m in family.get_metric() {
            if m.get_label().iter().any(|l| l.name() == "runtime" && l.value() == runtime) {
                let h = m.get_histogram();
                count = h.get_sample_count();
                buckets = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
            }
        }
    }
    json!({
        "runtime": runtime,
        "count": count,
        "p50_seconds": quantile(0.5, &buckets, count),
        "p99_seconds": quantile(0.99, &buckets, count),
    })
}

/// Time from request to the IDE agent answering, for cold starts and pool claims.
fn ready_latency(app: &App) -> Value {
    use prometheus::core::Collector;
    let runtime = app.settings.runtime.as_str();
    let mut out = serde_json::Map::new();
    for source in ["cold", "pool"] {
        let (mut count, mut buckets) = (0, vec![]);
        for family in app.metrics.session_ready_seconds.collect() {
            for m in family.get_metric() {
                let has = |k: &str, v: &str| m.get_label().iter().any(|l| l.name() == k && l.value() == v);
                if has("runtime", runtime) && has("source", source) {
                    let h = m.get_histogram();
                    count = h.get_sample_count();
                    buckets = h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
                }
            }
        }
        out.insert(
            source.to_string(),
            json!({
                "count": count,
                "p50_seconds": quantile(0.5, &buckets, count),
                "p99_seconds": quantile(0.99, &buckets, count),
            }),
        );
    }
    Value::Object(out)
}

/// `GET /dashboard/api/overview`: the runner, sessions by state, start latency, builds and
/// deploys in progress (capacity comes from `/capacity`).
pub async fn overview(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let counts = app.store.count_sessions_by_state().await?;
    let by_state: serde_json::Map<String, Value> = SessionState::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|(name, _)| name == s.as_str()).map(|(_, n)| *n).unwrap_or(0);
            (s.as_str().to_string(), json!(n))
        })
        .collect();
    let builds: Vec<_> = app.store.builds_in(BuildState::ACTIVE).await?.iter().map(builds::to_view).collect();
    let deploys: Vec<_> = app.store.running_deploys().await?.iter().map(deploys::deploy_view).collect();
    Ok(Json(json!({
        "runner": super::super::operators::runner_view(&app),
        "sessions_by_state": by_state,
        "start_latency": start_latency(&app),
        "ready_latency": ready_latency(&app),
        "builds_in_progress": builds,
        "deploys_in_progress": deploys,
    })))
}

/// `GET /dashboard/api/usage/sessions`: every sampled session's figures now, by session id (the
/// sessions table joins them to `/sessions`; `/usage/top` is capped at 100).
pub async fn session_figures(State(app): State<Arc<App>>) -> Json<Value> {
    let sessions: serde_json::Map<String, Value> = app
        .usage
        .top(TopBy::Memory, usize::MAX)
        .into_iter()
        .filter(|s| s.kind == Kind::Session)
        .filter_map(|s| Some((s.session?, serde_json::to_value(s.now).ok()?)))
        .collect();
    Json(json!({
        "sampled_at": app.usage.last_round().map(|r| rfc3339(r.at_ms)),
        "sessions": sessions,
    }))
}

/// `GET /dashboard/api/builds`: the queue (oldest first) and the newest builds of every exercise.
pub async fn builds(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let active: Vec<_> = app.store.builds_in(BuildState::ACTIVE).await?.iter().map(builds::to_view).collect();
    let recent: Vec<_> = app.store.recent_builds(30).await?.iter().map(builds::to_view).collect();
    Ok(Json(json!({ "active": active, "recent": recent })))
}

/// `GET /dashboard/api/runs`: one-shot runs now (in flight, waiting, slots, prepared
/// sandboxes), finished runs of the last 24 hours by what they ran in and status, and the newest
/// 50 (their steps' statuses and figures, not their output).
pub async fn runs(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let since = crate::store::now_ms() - 24 * 3600 * 1000;
    let counts: Vec<Value> = app
        .store
        .run_counts(since)
        .await?
        .into_iter()
        .map(|(source, status, n)| json!({"source": source, "status": status, "count": n}))
        .collect();
    let recent: Vec<crate::runs::RunView> = app
        .store
        .runs(None, 50)
        .await?
        .iter()
        .map(|r| crate::runs::RunView::of(r).map(crate::runs::RunView::without_output))
        .collect::<anyhow::Result<_>>()?;
    Ok(Json(json!({ "now": app.runs.now(), "last_24h": counts, "recent": recent })))
}

struct Problem {
    at: i64,
    severity: &'static str,
    title: String,
    detail: Option<String>,
    link: Option<String>,
}

/// `GET /dashboard/api/problems`: the newest things that went wrong, newest first — failed
/// sessions, sandboxes OOM-killed, exited, unhealthy or not started, failed builds and deploys,
/// operators' actions that did not succeed. (What an alerts list would say, read from the
/// records; see `runner/dashboard/src/pages/problems.js`.)
pub async fn problems(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let mut found = vec![];
    // The runner's alerts first: what fires now, and what cleared lately.
    let (firing, recent) = app.alerts.list();
    for a in firing {
        let link = (a.subject != "host").then(|| format!("#/sessions/{}", a.subject));
        found.push(Problem {
            at: a.since_ms,
            severity: "error",
            title: format!("alert {}: {}", a.kind.as_str(), a.message),
            detail: Some("firing".into()),
            link,
        });
    }
    for a in recent.into_iter().take(10) {
        found.push(Problem {
            at: a.cleared_ms.unwrap_or(a.since_ms),
            severity: "info",
            title: format!("alert {} cleared: {}", a.kind.as_str(), a.message),
            detail: None,
            link: None,
        });
    }
    let failed = SessionFilter { states: vec![SessionState::Failed], limit: 10, ..Default::default() };
    for s in app.store.sessions(&failed).await? {
        found.push(Problem {
            at: s.ended_at.unwrap_or(s.created_at),
            severity: "error",
            title: format!("session of {} on {} failed", s.learner, s.exercise),
            detail: s.failure_reason.clone(),
            link: Some(format!("#/sessions/{}", s.id)),
        });
    }
    let kinds = [SessionEvent::OomKilled, SessionEvent::Exited, SessionEvent::Unhealthy, SessionEvent::StartFailed];
    for e in app.store.recent_session_events(&kinds, 20).await? {
        let who = match app.store.session(&e.session_id).await? {
            Some(s) => format!("{} on {}", s.learner, s.exercise),
            None => e.session_id.clone(),
        };
        let what = match e.kind {
            SessionEvent::OomKilled => "OOM kill",
            SessionEvent::Exited => "sandbox exited",
            SessionEvent::Unhealthy => "sandbox unhealthy",
            _ => "sandbox did not start",
        };
        found.push(Problem {
            at: e.at,
            severity: if e.kind == SessionEvent::Exited { "warning" } else { "error" },
            title: format!("{what}: {who}"),
            detail: e.detail.clone(),
            link: Some(format!("#/sessions/{}", e.session_id)),
        });
    }
    for b in app.store.recent_builds(30).await?.iter().filter(|b| b.state == BuildState::Failed) {
        found.push(Problem {
            at: b.finished_at.unwrap_or(b.created_at),
            severity: "error",
            title: format!("build of {} failed", b.exercise),
            detail: b.failure_reason.clone(),
            link: Some(format!("#/builds/{}", b.id)),
        });
    }
    for a in app.store.apps().await? {
        for d in app.store.deploys_of(&a.name, 5).await?.iter().filter(|d| d.state == DeployState::Failed) {
            found.push(Problem {
                at: d.finished_at.unwrap_or(d.created_at),
                severity: "error",
                title: format!("{} of {} to {} failed", d.kind, d.app, d.version),
                detail: d.failure_reason.clone(),
                link: Some(format!("#/deploys/{}", d.id)),
            });
        }
    }
    for e in app.store.audit(50).await?.iter().filter(|e| !e.outcome.starts_with("ok")) {
        found.push(Problem {
            at: e.at,
            severity: "warning",
            title: format!("{} of {} by the {}", e.action, e.target, e.actor),
            detail: Some(e.outcome.clone()),
            link: None,
        });
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.at));
    let items: Vec<Value> = found
        .into_iter()
        .take(25)
        .map(|p| json!({"at": rfc3339(p.at), "severity": p.severity, "title": p.title, "detail": p.detail, "link": p.link}))
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_their_bucket_like_prometheus() {
        // 10 starts: 4 under 0.1 s, 5 more under 0.25 s, 1 under 0.5 s.
        let buckets = [(0.05, 0), (0.1, 4), (0.25, 9), (0.5, 10), (f64::INFINITY, 10)];
        assert_eq!(quantile(0.5, &buckets, 10), Some(0.1 + 0.15 * (1.0 / 5.0)));
        let p99 = quantile(0.99, &buckets, 10).unwrap();
        assert!((p99 - (0.25 + 0.25 * 0.9)).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &buckets, 0), None);
        // Past the last finite bound: that bound, as histogram_quantile answers.
        let slow = [(0.5, 0), (1.0, 0), (f64::INFINITY, 3)];
        assert_eq!(quantile(0.5, &slow, 3), Some(1.0));
        assert_eq!(quantile(0.99, &[(0.05, 1), (f64::INFINITY, 1)], 1), Some(0.05 * 0.99));
    }
}
