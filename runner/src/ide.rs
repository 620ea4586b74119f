//! The runner's side of the web IDE: how web-ide-proxy finds sessions, reaches the agent in a
//! sandbox (a `docker exec` of `ide-agent connect`), runs checks and records activity.

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use web_ide_proxy::{Backend, BoxIo, Config, Proxy, SessionLookup};

use crate::{
    checks::Checks, config::Settings, domain::SessionState, engine::Engine, error::ApiError,
    learner_files::LearnerFiles, store::Store,
};

/// Where the agent listens inside every sandbox built on the base image.
pub const AGENT_SOCKET: &str = "/run/ide-agent/agent.sock";
pub const AGENT_BIN: &str = "/usr/local/bin/ide-agent";
/// The agent's abstract Unix socket (`ide-agent`'s `NETNS_SOCKET`): in the sandbox's network
/// namespace, no file.
pub const AGENT_NETNS_SOCKET: &str = "exercise-runner/ide-agent";

/// The web IDE proxy over this runner's sessions.
pub type IdeProxy = Proxy<RunnerBackend>;

pub struct RunnerBackend {
    pub(crate) checks: Arc<Checks>,
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    pub(crate) user: String,
    /// Resets (the Start over button); `None` in `runner ide-proxy`, which has no workspaces.
    pub(crate) files: Option<Arc<LearnerFiles>>,
}

impl Backend for RunnerBackend {
    async fn session(&self, id: &str) -> anyhow::Result<SessionLookup> {
        Ok(match self.store.session(id).await? {
            None => SessionLookup::Missing,
            Some(s)
                if s.state.is_live()
                    && serde_json::from_str::<crate::domain::SandboxSpec>(&s.spec).is_ok_and(|spec| !spec.ide) =>
            {
                SessionLookup::NoIde(crate::domain::NO_IDE.into())
            }
            Some(s) if s.state == SessionState::Running => match s.container_id {
                Some(container) => SessionLookup::Running { container },
                None => SessionLookup::Starting,
            },
            Some(s) if s.state == SessionState::Starting => SessionLookup::Starting,
            Some(s) => SessionLookup::NotRunning(s.state.as_str().into()),
        })
    }

    /// Under runc the agent's abstract socket in the sandbox's own network namespace (no exec:
    /// the engine's hop and `ide-agent connect` are a good part of a round trip, and an exec
    /// costs tens of milliseconds to start); under gVisor, or when nothing answers there (an
    /// agent older than that socket, or the learner's own program), the exec of `ide-agent
    /// connect` as before. Either peer is learner-controlled and treated alike.
    async fn connect(&self, container: &str) -> anyhow::Result<BoxIo> {
        match self.engine.connect_in_netns(container, AGENT_NETNS_SOCKET).await {
            Ok(Some(io)) => return Ok(Box::new(io)),
            Ok(None) => {}
            Err(e) => tracing::debug!(container, error = %format!("{e:#}"), "IDE: no agent in the namespace; exec"),
        }
        let cmd = vec![AGENT_BIN.to_string(), "connect".to_string(), AGENT_SOCKET.to_string()];
        Ok(Box::new(self.engine.exec_stream(container, cmd, &self.user).await?))
    }

    async fn check(&self, session: &str) -> (StatusCode, serde_json::Value) {
        match self.checks.check_session(session).await {
            Ok(c) => (StatusCode::CREATED, serde_json::to_value(crate::checks::to_view(&c)).unwrap_or_default()),
            Err(e) => {
                let e = ApiError::from(e);
                (e.status, serde_json::json!({"error": {"code": e.code, "message": e.message}}))
            }
        }
    }

    async fn reset(&self, session: &str) -> (StatusCode, serde_json::Value) {
        let answer = async {
            let files = self.files.as_ref().ok_or_else(|| {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "reset_unavailable", "start over through runner serve's IDE")
            })?;
            let s = self.store.session(session).await?.ok_or_else(|| {
                ApiError::not_found("session_not_found", format!("session {session:?} does not exist"))
            })?;
            Ok::<_, ApiError>(files.reset(&s.learner, &s.exercise).await?)
        };
        match answer.await {
            Ok(reset) => (StatusCode::OK, serde_json::to_value(reset).unwrap_or_default()),
            Err(e) => {
                if let Some(cause) = &e.internal {
                    tracing::error!(session, error = ?cause, "IDE reset failed");
                }
                (e.status, serde_json::json!({"error": {"code": e.code, "message": e.message}}))
            }
        }
    }

    async fn touch(&self, activity: Vec<(String, i64)>) {
        for (session, at) in activity {
            if let Err(e) = self.store.touch_session(&session, at).await {
                tracing::warn!(session, error = %format!("{e:#}"), "could not record IDE activity");
            }
        }
    }
}

/// The IDE proxy over this runner's sessions: the one way `runner serve` and `runner ide-proxy`
/// build it.
pub fn proxy(
    s: &Settings,
    store: Store,
    engine: Engine,
    checks: Arc<Checks>,
    files: Option<Arc<LearnerFiles>>,
) -> Arc<IdeProxy> {
    let backend = RunnerBackend { checks, store, engine, user: s.sandbox_user.clone(), files };
    Proxy::new(backend, proxy_config(s))
}

pub fn proxy_config(s: &Settings) -> Config {
    Config {
        secret: s.ide_secret.as_ref().map(|x| x.expose().as_bytes().to_vec()).unwrap_or_default(),
        cookie_ttl: s.max_lifetime,
        allowed_origins: s.ide_allowed_origins.clone(),
        max_connections_per_session: s.ide_max_connections,
        max_message_bytes: s.ide_max_message_bytes,
        max_body_bytes: 4 * 1024 * 1024,
        // Flush well inside the idle timeout, so IDE use keeps a session alive.
        activity_flush: (s.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)),
        watch_interval: Duration::from_secs(2),
        cookie_secure: s.public_url.starts_with("https://"),
        cookie_cross_site: s.ide_cookie_cross_site,
        session_host: s.ide_subdomain_host.clone(),
        ..Config::default()
    }
}

/// The URL the web app embeds: the session's IDE with a short-lived token.
pub fn ide_url(proxy: &IdeProxy, s: &Settings, session: &str) -> String {
    let token = proxy.url_token(session, s.ide_token_ttl);
    format!("{}/ide/{session}/?token={token}", ide_origin(s, session))
}

/// Where a session's IDE is served: the runner's public URL, or the session's own host (with the
/// public URL's scheme and port).
pub fn ide_origin(s: &Settings, session: &str) -> String {
    let public = s.public_url.trim_end_matches('/');
    let Some(host) = &s.ide_subdomain_host else { return public.to_string() };
    let (scheme, rest) = public.split_once("://").unwrap_or(("http", public));
    let authority = rest.split('/').next().unwrap_or("");
    let port =
        authority.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match port {
        Some(port) => format!("{scheme}://{session}.{host}:{port}"),
        None => format!("{scheme}://{session}.{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_host_takes_the_public_urls_scheme_and_port() {
        let mut s = Settings::defaults();
        s.public_url = "http://127.0.0.1:8080/".into();
        assert_eq!(ide_origin(&s, "abc"), "http://127.0.0.1:8080");
        s.ide_subdomain_host = Some("ide.localhost".into());
        assert_eq!(ide_origin(&s, "abc"), "http://abc.ide.localhost:8080");
        s.public_url = "https://runner.example.com".into();
        assert_eq!(ide_origin(&s, "abc"), "https://abc.ide.localhost");
        s.public_url = "http://[::1]".into();
        assert_eq!(ide_origin(&s, "abc"), "http://abc.ide.localhost");
    }
}
