//! Waiting for the agent in its first moments. A sandbox's agent starts a second or so after the
//! container (sandbox-init, then supervisord, then the agent binds its socket); whoever reaches
//! it then polls the socket here, inside the sandbox, every few milliseconds — a syscall each —
//! instead of a new `docker exec` per retry from the host.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::net::UnixStream;

/// How long `ide-agent connect` waits for an agent that is not listening yet.
pub const CONNECT_WAIT: Duration = Duration::from_secs(3);
const CONNECT_POLL: Duration = Duration::from_millis(5);

/// Connects to the agent's socket, waiting up to `wait` while it is not there yet or refuses
/// (the agent is starting, or restarting after a crash). Other errors fail at once.
pub async fn connect(socket: &str, wait: Duration) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(CONNECT_POLL).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {socket}")),
        }
    }
}

/// `ide-agent wake-supervisord`, started in the background by the base image's `sandbox-init`
/// just before it becomes supervisord: supervisord (4.2) starts its programs only after its
/// first `poll()` returns, which with nothing to read is a full second after it started. One
/// connection to its socket as soon as the socket is there ends that wait, so the agent (and the
/// author's services) start at once. Gives up quietly after `within`; it changes nothing else.
pub async fn wake_supervisord(socket: &str, within: Duration) {
    if let Ok(s) = connect(socket, within).await {
        drop(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_waits_for_a_socket_that_appears_and_gives_up_on_one_that_does_not() {
        let dir = std::env::temp_dir().join(format!("ide-agent-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let path = socket.to_str().unwrap().to_string();
        let listen = {
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let l = tokio::net::UnixListener::bind(&socket).unwrap();
                let _ = l.accept().await;
            })
        };
        connect(&path, Duration::from_secs(3)).await.expect("connected once the socket appeared");
        listen.await.unwrap();
        let _ = std::fs::remove_file(&socket);
        let t = Instant::now();
        assert!(connect(&path, Duration::from_millis(50)).await.is_err());
        assert!(t.elapsed() >= Duration::from_millis(50));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
