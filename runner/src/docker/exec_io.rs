//! A `docker exec` as a byte stream: the process's stdin and stdout joined into one
//! `AsyncRead + AsyncWrite`. This is how the web-ide-proxy reaches the agent in a sandbox whose
//! network is off, under runc and gVisor alike (docs/ARCHITECTURE.md, "gVisor notes").

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bollard::container::LogOutput;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

pub(super) struct DockerExecIo {
    output: Output,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    pending: Bytes,
}

impl DockerExecIo {
    pub(super) fn new(output: Output, input: Pin<Box<dyn AsyncWrite + Send>>) -> Self {
        DockerExecIo { output, input, pending: Bytes::new() }
    }
}

impl AsyncRead for DockerExecIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.output.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                    self.pending = message;
                }
                // The connector's diagnostics are not part of the stream.
                Poll::Ready(Some(Ok(LogOutput::StdErr { message }))) => {
                    tracing::debug!(stderr = %String::from_utf8_lossy(&message), "exec stream stderr");
                }
                Poll::Ready(Some(Ok(LogOutput::StdIn { .. }))) => {}
            }
        }
    }
}

impl AsyncWrite for DockerExecIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.input.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.input.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.input.as_mut().poll_shutdown(cx)
    }
}
