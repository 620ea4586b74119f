//! Unix stream sockets watched for readability only.
//!
//! tokio watches every socket it owns for reading and for writing. A Unix stream socket reports
//! "writable" every time its peer reads something (Linux wakes the writer's waiters for each
//! buffer consumed; TCP waits until a writer ran out of room), so a socket watched for writing
//! wakes its owner's thread, for nothing, each time the peer reads what the owner wrote: a
//! second wake-up and context switch per message. A [`Stream`] is watched for writing only
//! while a write would block (through a copy of the descriptor, registered for that moment).
//!
//! Both ends of the IDE's hop into a sandbox use it: the agent for the connections it accepts,
//! the runner for the ones it opens to the agent (docs/ARCHITECTURE.md, "The web IDE").

use std::{
    io::{self, Read, Write},
    net::Shutdown,
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::UnixStream,
    },
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{unix::AsyncFd, AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Reads at most this much at once (copied out of a buffer of the stream's own: the `ReadBuf`
/// of a caller may be uninitialised, and zeroing it for every read is what made tungstenite's
/// reads slow).
const READ_BYTES: usize = 8 * 1024;

/// `fd` registered with the runtime for `interest` only.
#[allow(
    deprecated,
    reason = "its successor, AsyncFd::register_with_interest, is unsafe (forbidden here); it guards against \
    types whose descriptor may change, and a UnixStream or an OwnedFd owns one for its whole life"
)]
fn watch<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

/// A Unix stream socket watched for writing only while a write would block.
pub struct Stream {
    io: AsyncFd<UnixStream>,
    /// Watched for writing while a write would block; `None` otherwise.
    write_wait: Option<AsyncFd<OwnedFd>>,
    scratch: Box<[u8]>,
}

impl Stream {
    /// Takes over `stream` (its registration with the runtime is replaced).
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(Stream {
            io: watch(stream, Interest::READABLE)?,
            write_wait: None,
            scratch: vec![0; READ_BYTES].into_boxed_slice(),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(this.scratch.len());
        loop {
            let mut guard = ready!(this.io.poll_read_ready(cx))?;
            let scratch = &mut this.scratch[..want];
            match guard.try_io(|io| io.get_ref().read(scratch)) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket (as tokio's own sockets assume on Linux):
                    // the next read waits for the next event instead of finding nothing.
                    if 0 < n && n < want {
                        guard.clear_ready();
                    }
                    buf.put_slice(&this.scratch[..n]);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match this.io.get_ref().write(buf) {
                Ok(n) => {
                    this.write_wait = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if this.write_wait.is_none() {
                        let copy = this.io.get_ref().as_fd().try_clone_to_owned()?;
                        this.write_wait = Some(watch(copy, Interest::WRITABLE)?);
                    }
                    let wait = this.write_wait.as_ref().expect("just set");
                    let mut guard = ready!(wait.poll_write_ready(cx))?;
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pair() -> (Stream, tokio::net::UnixStream) {
        let (ours, peer) = tokio::net::UnixStream::pair().unwrap();
        (Stream::new(ours).unwrap(), peer)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_an_end_stays_an_end() {
        let (mut ours, mut peer) = pair();
        ours.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        peer.write_all(b"back").await.unwrap();
        let mut buf = [0; 4];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
        ours.shutdown().await.unwrap();
        assert_eq!(peer.read(&mut [0; 1]).await.unwrap(), 0, "shut for writing: the peer reads the end");
        drop(peer);
        assert_eq!(ours.read(&mut [0; 1]).await.unwrap(), 0);
        assert_eq!(ours.read(&mut [0; 1]).await.unwrap(), 0, "and reads it again");
        assert!(ours.write_all(b"late").await.is_err(), "no one to write to");
    }

    /// Writes into a full socket wait for the peer to read (the only time writability is
    /// watched), both ways at once, and everything arrives in order.
    #[tokio::test]
    async fn writes_into_a_full_socket_wait_for_room_and_arrive_whole() {
        let (ours, peer) = pair();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let (mut our_in, mut our_out) = tokio::io::split(ours);
        let (mut peer_in, mut peer_out) = peer.into_split();
        let send = async {
            our_out.write_all(&data).await.unwrap();
            our_out.shutdown().await.unwrap();
        };
        let answer = async {
            peer_out.write_all(&data).await.unwrap();
            peer_out.shutdown().await.unwrap();
        };
        let (mut at_peer, mut at_ours) = (vec![], vec![]);
        let (_, _, got_peer, got_ours) =
            tokio::join!(send, answer, peer_in.read_to_end(&mut at_peer), our_in.read_to_end(&mut at_ours));
        assert_eq!((got_peer.unwrap(), got_ours.unwrap()), (data.len(), data.len()));
        assert!(at_peer == data && at_ours == data);
    }

    /// A slow reader: every write that would block is resumed by the reader's progress alone.
    #[tokio::test]
    async fn a_writer_blocked_by_a_slow_reader_is_resumed() {
        let (mut ours, mut peer) = pair();
        let writer = tokio::spawn(async move {
            for i in 0..64u8 {
                ours.write_all(&[i; 64 * 1024]).await.unwrap();
            }
            ours
        });
        let mut got = vec![0u8; 64 * 64 * 1024];
        for chunk in got.chunks_mut(1000) {
            peer.read_exact(chunk).await.unwrap();
        }
        writer.await.unwrap();
        assert!(got.chunks(64 * 1024).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
