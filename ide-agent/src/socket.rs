//! The agent's connections are [`quiet_socket::Stream`]s: watched for writing only while a
//! write would block, so the proxy reading what the agent wrote does not wake the agent.

use std::io;

use quiet_socket::Stream;

/// A listener whose connections are [`Stream`]s.
pub struct Listener(pub tokio::net::UnixListener);

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
            match Stream::new(stream) {
                Ok(stream) => return (stream, addr),
                Err(e) => tracing::warn!(error = %e, "a connection could not be watched"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
