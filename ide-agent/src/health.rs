//! `ide-agent health`: the sandbox's health check (the base image's `HEALTHCHECK`). Healthy when
//! the agent answers on its socket and no program supervisord runs (the author's services) is
//! stuck: `FATAL` (gave up restarting), `BACKOFF` (crash-looping) or `STOPPED`. It speaks to both
//! over their Unix sockets directly: Docker runs it every interval in every sandbox, so it must
//! cost a few syscalls, not a Python interpreter (`supervisorctl`).

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SUPERVISOR_SOCKET: &str = "/run/supervisor.sock";

/// States of a supervisord program that make the sandbox unhealthy.
const STUCK: [&str; 3] = ["FATAL", "BACKOFF", "STOPPED"];

/// [`check`], again every 10 ms until it passes or `within` has passed (then its last error).
pub async fn wait(agent_socket: &str, supervisor_socket: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check(agent_socket, supervisor_socket).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

pub async fn check(agent_socket: &str, supervisor_socket: &str) -> anyhow::Result<()> {
    let within = Duration::from_secs(3);
    let info = tokio::time::timeout(
        within,
        request(agent_socket, "GET /api/info HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"),
    )
    .await
    .context("the IDE agent did not answer in time")??;
    if !info.starts_with("HTTP/1.1 200") {
        bail!("the IDE agent answered {}", info.lines().next().unwrap_or(""));
    }
    services(supervisor_socket).await
}

/// The half of [`check`] the agent answers itself at `GET /api/health` (the runner's probe
/// under runc and crun, which reaches the agent without an exec): no program supervisord runs is
/// stuck.
pub async fn services(supervisor_socket: &str) -> anyhow::Result<()> {
    let within = Duration::from_secs(3);
    let call = "<?xml version=\"1.0\"?><methodCall><methodName>supervisor.getAllProcessInfo</methodName>\
                <params></params></methodCall>";
    let head = format!(
        "POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{call}",
        call.len()
    );
    let answer = tokio::time::timeout(within, request(supervisor_socket, &head))
        .await
        .context("supervisord did not answer in time")??;
    let stuck: Vec<String> = programs(&answer)
        .into_iter()
        .filter(|(_, s)| STUCK.contains(&s.as_str()))
        .map(|(n, s)| format!("{n} {s}"))
        .collect();
    if !stuck.is_empty() {
        bail!("services not running: {}", stuck.join(", "));
    }
    Ok(())
}

async fn request(socket: &str, raw: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::UnixStream::connect(socket).await.with_context(|| format!("connecting to {socket}"))?;
    s.write_all(raw.as_bytes()).await?;
    let mut out = Vec::new();
    s.take(1 << 20).read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `(name, statename)` of every program in supervisord's `getAllProcessInfo` answer (XML-RPC: an
/// array of structs whose members include `name` and `statename`, both strings).
fn programs(xml: &str) -> Vec<(String, String)> {
    let member = |text: &str, key: &str| -> Option<String> {
        let at = text.find(&format!("<name>{key}</name>"))?;
        let rest = &text[at..];
        let start = rest.find("<string>")? + "<string>".len();
        let end = rest[start..].find("</string>")?;
        Some(rest[start..start + end].to_string())
    };
    xml.split("<struct>").skip(1).filter_map(|s| Some((member(s, "name")?, member(s, "statename")?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(name: &str, state: &str) -> String {
        format!(
            "<value><struct><member><name>description</name><value><string>pid 7</string></value></member>\
             <member><name>name</name><value><string>{name}</string></value></member>\
             <member><name>pid</name><value><int>7</int></value></member>\
             <member><name>statename</name><value><string>{state}</string></value></member></struct></value>"
        )
    }

    #[test]
    fn reads_every_programs_state_from_supervisords_answer() {
        let xml = format!(
            "HTTP/1.0 200 OK\r\n\r\n<?xml version='1.0'?><methodResponse><params><param><value><array><data>{}{}</data></array></value></param></params></methodResponse>",
            process("ide-agent", "RUNNING"),
            process("redis", "FATAL")
        );
        assert_eq!(
            programs(&xml),
            [("ide-agent".to_string(), "RUNNING".to_string()), ("redis".to_string(), "FATAL".to_string())]
        );
        assert!(programs("HTTP/1.0 500 Internal Server Error\r\n\r\n").is_empty());
    }
}
