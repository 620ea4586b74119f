//! Checks: run the exercise's check inside a sandbox, against the files there, as the sandbox
//! user, with a time limit and an output cap. Used for learners' sessions and build self-tests.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    app::App,
    builds::manifest::TESTS_DIR,
    docker::{Engine, ExecRequest, SandboxSpec},
    domain::SessionState,
    sessions::SessionError,
    store::{now_ms, CheckRecord},
};

/// How long services named by the exercise may take to come up before a check gives up.
const SERVICES_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub passed: bool,
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// Waits until supervisord answers and every named service is RUNNING. Images without
/// supervisord (no `supervisorctl`) have nothing to wait for.
pub async fn wait_for_services(
    engine: &Engine,
    container: &str,
    user: &str,
    services: &[String],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVICES_DEADLINE;
    let status = |args: Vec<String>| {
        let mut cmd = vec!["supervisorctl".to_string(), "status".to_string()];
        cmd.extend(args);
        let mut req = ExecRequest::new(cmd, user);
        req.deadline = Duration::from_secs(10);
        engine.exec(container, req)
    };
    loop {
        let out = status(vec![]).await?;
        // 0: all running; 3: some not running (yet); 126/127: no supervisorctl in this image.
        if out.exit_code == 126 || out.exit_code == 127 || out.output.contains("executable file not found") {
            return Ok(());
        }
        if out.exit_code == 0 || out.exit_code == 3 {
            let pending: Vec<&String> = services
                .iter()
                .filter(|s| !out.output.lines().any(|l| l.starts_with(s.as_str()) && l.contains("RUNNING")))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("services not RUNNING after {SERVICES_DEADLINE:?}: {pending:?}\n{}", out.output.trim());
            }
        } else if Instant::now() > deadline {
            anyhow::bail!("supervisord did not answer after {SERVICES_DEADLINE:?}: {}", out.output.trim());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the check of `spec` in a running sandbox.
pub async fn run_check(
    engine: &Engine,
    container: &str,
    spec: &SandboxSpec,
    user: &str,
    max_output: usize,
) -> anyhow::Result<CheckOutcome> {
    wait_for_services(engine, container, user, &spec.check.services).await?;
    let secs = spec.check.timeout_secs;
    // `timeout` inside the sandbox kills the check at its limit; the host-side deadline only
    // guards against an engine that stops answering.
    let mut cmd = vec!["timeout".to_string(), "-s".to_string(), "KILL".to_string(), secs.to_string()];
    cmd.extend(spec.check.command.iter().cloned());
    let mut req = ExecRequest::new(cmd, user);
    req.workdir = Some(spec.workdir.clone());
    req.env = vec![format!("EXERCISE_TESTS={TESTS_DIR}")];
    req.max_output = max_output;
    req.deadline = Duration::from_secs(secs + 10);
    let started = Instant::now();
    let out = engine.exec(container, req).await?;
    let elapsed = started.elapsed();
    let timed_out = out.timed_out || (out.exit_code == 137 && elapsed >= Duration::from_secs(secs));
    Ok(CheckOutcome {
        passed: out.exit_code == 0 && !timed_out,
        exit_code: out.exit_code,
        output: out.output,
        truncated: out.truncated,
        timed_out,
        duration_ms: elapsed.as_millis() as u64,
    })
}

/// A check as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: String,
    pub session_id: String,
    pub passed: bool,
    pub exit_code: i64,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
    pub duration_ms: i64,
    pub created_at: String,
}

pub fn to_view(c: &CheckRecord) -> Check {
    Check {
        id: c.id.clone(),
        session_id: c.session_id.clone(),
        passed: c.passed,
        exit_code: c.exit_code,
        output: c.output.clone(),
        truncated: c.truncated,
        timed_out: c.timed_out,
        duration_ms: c.duration_ms,
        created_at: crate::domain::rfc3339(c.created_at),
    }
}

/// Checks a learner's current work in their running session; counts as activity.
pub async fn check_session(app: &Arc<App>, session_id: &str) -> Result<CheckRecord, SessionError> {
    let session = crate::sessions::get(app, session_id).await?;
    if session.state != SessionState::Running {
        return Err(SessionError::NotRunning(session_id.to_string()));
    }
    let container = session.container_id.clone().ok_or_else(|| SessionError::NotRunning(session_id.to_string()))?;
    let spec: SandboxSpec = serde_json::from_str(&session.spec).map_err(anyhow::Error::from)?;
    let _permit = match tokio::time::timeout(Duration::from_secs(10), app.check_slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            app.metrics.rejected_requests.with_label_values(&["check_queue"]).inc();
            return Err(SessionError::CheckQueueFull);
        }
    };
    app.store.touch_session(session_id, now_ms()).await?;
    let outcome =
        run_check(&app.engine, &container, &spec, &app.settings.sandbox_user, app.settings.check_output_bytes).await?;
    let record = CheckRecord {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: session_id.to_string(),
        passed: outcome.passed,
        exit_code: outcome.exit_code,
        output: outcome.output,
        truncated: outcome.truncated,
        timed_out: outcome.timed_out,
        duration_ms: outcome.duration_ms as i64,
        created_at: now_ms(),
    };
    app.store.insert_check(&record).await?;
    app.store.touch_session(session_id, now_ms()).await?;
    app.metrics.checks.with_label_values(&[if record.passed { "passed" } else { "failed" }]).inc();
    Ok(record)
}
