//! The relay between the browser's WebSocket and the agent's: bytes pass as they arrive, both
//! directions at once, and only frame headers are read ([`FrameReader`]): no message is
//! buffered, unmasked or encoded again. The browser's frames reach the agent masked as the
//! browser masked them; the agent's reach the browser as the agent wrote them.
//!
//! The relay speaks for itself only in Close frames, and only between frames of the stream it
//! writes to: when the session ends (4000), when a side breaks a rule (1002, 1009 — the browser
//! is told, the agent is dropped), when the agent goes away (1011). A Close from either side
//! passes like any frame, and the relay ends once both sides' Close frames have passed, or a few
//! seconds after the first. The end of either stream ends both.

use std::{future::pending, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    sync::watch,
    time::Instant,
};

use super::frames::{close_frame, Fed, FrameReader, Sender, Violation, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR};
use crate::CLOSE_SESSION_ENDED;

/// Bytes read at once from either side. Small on purpose: IDE traffic is keystrokes and
/// terminal output, and a large frame simply takes more reads.
const CHUNK_BYTES: usize = 8 * 1024;
/// Activity is noted at most this often per socket.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// How long the relay waits for a peer at its end.
#[derive(Clone, Copy, Debug)]
struct Waits {
    /// For the other side to answer a Close, and for the agent to finish the frame the relay's
    /// own Close must wait for.
    close: Duration,
    /// For the end: writing what is owed, then reading what the browser still sends until it
    /// closes too (so the relay's last frame is not lost to a reset).
    linger: Duration,
}

const WAITS: Waits = Waits { close: Duration::from_secs(3), linger: Duration::from_secs(2) };

/// When traffic is activity worth noting: at most once every [`MARK_EVERY`].
struct Marks {
    last: Instant,
}

impl Marks {
    fn due(&mut self, now: Instant) -> bool {
        let due = now.duration_since(self.last) >= MARK_EVERY;
        if due {
            self.last = now;
        }
        due
    }
}

/// What the relay sends to the browser when the session ends.
const SESSION_ENDED: &str = "the session has ended";
const AGENT_GONE: &str = "the IDE agent went away";

/// The writing side of one direction: what is to be written, and how much of it has been.
struct Outbox<W> {
    to: W,
    out: Vec<u8>,
    written: usize,
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> Outbox<W> {
    /// Writes out everything pending, as `write_all` would, but cancel-safe: what was written is
    /// remembered, so the relay may stop waiting for a slow reader to serve the other direction.
    async fn flush(&mut self) -> std::io::Result<()> {
        while self.written < self.out.len() {
            let n = self.to.write(&self.out[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
            self.unflushed = true;
        }
        self.out.clear();
        self.written = 0;
        if self.unflushed {
            self.to.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }
}

/// One direction: read from `from`, checked frame by frame, written to `to` as it came.
struct Pipe<R, W> {
    from: R,
    frames: FrameReader,
    buf: Box<[u8]>,
    outbox: Outbox<W>,
    /// Whether `from` is still read (not after its end, nor once the relay stopped listening).
    reading: bool,
}

enum Step {
    Fed(Result<Fed, Violation>),
    /// The source ended (or failed).
    End,
    /// The destination failed.
    WriteFailed,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pipe<R, W> {
    fn new(from: R, to: W, frames: FrameReader) -> Self {
        Pipe {
            from,
            frames,
            buf: vec![0; CHUNK_BYTES].into_boxed_slice(),
            outbox: Outbox { to, out: Vec::with_capacity(CHUNK_BYTES + 64), written: 0, unflushed: false },
            reading: true,
        }
    }

    /// Writes what is pending (a slow reader on the other end holds this direction's reads
    /// back), then reads and checks the next chunk. Cancel-safe.
    async fn step(&mut self, stop_at_frame_end: bool) -> Step {
        if self.outbox.flush().await.is_err() {
            return Step::WriteFailed;
        }
        if !self.reading {
            return pending().await;
        }
        match self.from.read(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.reading = false;
                Step::End
            }
            Ok(n) => Step::Fed(self.frames.feed(&self.buf[..n], &mut self.outbox.out, stop_at_frame_end)),
        }
    }

    /// Neither reads nor writes any more (its destination is gone or not to be spoken to).
    fn stop(&mut self) {
        self.reading = false;
        self.outbox.out.clear();
        self.outbox.written = 0;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Finish,
}

struct Relay<B, A> {
    to_browser: Pipe<ReadHalf<A>, WriteHalf<B>>,
    to_agent: Pipe<ReadHalf<B>, WriteHalf<A>>,
    /// A Close of the relay's own that the browser gets at the next frame boundary of its stream.
    owed: Option<(u16, &'static str)>,
    /// The browser has been sent a Close: the agent's, or the relay's own.
    browser_told: bool,
    /// The browser's Close has passed to the agent.
    browser_closed: bool,
    /// The agent's Close has passed to the browser.
    agent_closed: bool,
    /// The agent is still written to (not once it ended or broke a rule: it is dropped).
    agent_usable: bool,
    /// The browser is still written to (not once a write failed).
    browser_usable: bool,
    /// The browser's stream ended: nothing is left to read from it at the end.
    browser_ended: bool,
    session_ended: bool,
    deadline: Option<Instant>,
    waits: Waits,
}

impl<B: AsyncRead + AsyncWrite, A: AsyncRead + AsyncWrite> Relay<B, A> {
    /// The first reason to close the browser stands; a later one (the agent ending after the
    /// session did) does not replace it.
    fn owe(&mut self, code: u16, reason: &'static str) {
        self.owed.get_or_insert((code, reason));
    }

    fn wait_at_most(&mut self, wait: Duration) {
        let at = Instant::now() + wait;
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
    }

    fn on_agent(&mut self, step: Step) -> Flow {
        match step {
            Step::Fed(Ok(fed)) => {
                if fed.closed {
                    self.agent_closed = true;
                    self.browser_told = true;
                    return self.close_passed();
                }
                Flow::Go
            }
            Step::Fed(Err(v)) => {
                tracing::debug!(reason = v.reason, "IDE proxy: the agent broke the WebSocket rules");
                self.agent_usable = false;
                self.to_agent.stop();
                self.owe(v.code, v.reason);
                Flow::Finish
            }
            Step::End => {
                self.agent_usable = false;
                self.to_agent.stop();
                self.owe(CLOSE_INTERNAL_ERROR, AGENT_GONE);
                Flow::Finish
            }
            Step::WriteFailed => {
                self.browser_usable = false;
                Flow::Finish
            }
        }
    }

    fn on_browser(&mut self, step: Step) -> Flow {
        match step {
            Step::Fed(Ok(fed)) => {
                if fed.closed {
                    self.browser_closed = true;
                    return self.close_passed();
                }
                Flow::Go
            }
            Step::Fed(Err(v)) => {
                tracing::debug!(reason = v.reason, "IDE proxy: the browser broke the WebSocket rules");
                // What came before the bad frame still goes to the agent, then its stream is shut.
                self.to_agent.reading = false;
                self.owe(v.code, v.reason);
                Flow::Go
            }
            Step::End => {
                self.browser_ended = true;
                Flow::Finish
            }
            Step::WriteFailed => {
                // The agent is gone; what it sent before may still be on its way to the browser.
                self.agent_usable = false;
                self.to_agent.stop();
                self.owe(CLOSE_INTERNAL_ERROR, AGENT_GONE);
                Flow::Go
            }
        }
    }

    fn close_passed(&mut self) -> Flow {
        if self.browser_closed && self.agent_closed {
            return Flow::Finish;
        }
        self.wait_at_most(self.waits.close);
        Flow::Go
    }

    /// Puts the Close the browser is owed after what was forwarded, if that ends between frames;
    /// otherwise the agent's frame in progress has a moment to end first.
    fn settle(&mut self) -> Flow {
        if self.owed.is_none() {
            return Flow::Go;
        }
        if self.browser_told || self.tell_browser() {
            return Flow::Finish;
        }
        self.wait_at_most(self.waits.close);
        Flow::Go
    }

    fn tell_browser(&mut self) -> bool {
        match self.owed {
            Some((code, reason)) if !self.browser_told && self.to_browser.frames.at_frame_boundary() => {
                self.to_browser.outbox.out.extend_from_slice(&close_frame(code, reason, None));
                self.browser_told = true;
                true
            }
            _ => false,
        }
    }

    /// The end: what is owed is written (within the linger wait), the browser's side is shut and
    /// read until it closes too; the agent's stream is dropped.
    async fn finish(mut self) {
        // A browser cut off inside one of the agent's frames just loses the connection.
        self.tell_browser();
        if self.session_ended && self.agent_usable && !self.browser_closed && self.to_agent.frames.at_frame_boundary() {
            let close = close_frame(CLOSE_GOING_AWAY, SESSION_ENDED, Some(rand::random()));
            self.to_agent.outbox.out.extend_from_slice(&close);
        }
        let Relay { to_browser, to_agent, agent_usable, browser_usable, browser_ended, waits, .. } = self;
        let Pipe { outbox: mut browser, .. } = to_browser;
        let Pipe { from: mut from_browser, outbox: mut agent, mut buf, .. } = to_agent;
        let browser_side = async {
            if !browser_usable || browser.flush().await.is_err() {
                return;
            }
            let _ = browser.to.shutdown().await;
            while !browser_ended && from_browser.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        };
        let agent_side = async {
            if agent_usable && agent.flush().await.is_ok() {
                let _ = agent.to.shutdown().await;
            }
        };
        let _ = tokio::time::timeout(waits.linger, async { tokio::join!(browser_side, agent_side) }).await;
    }
}

/// Relays between `browser` (its upgrade answered) and `agent` (its upgrade done; `early` is
/// what it sent right after its 101) until either ends, a Close has passed both ways, a side
/// breaks the rules or the session ends. `mark` notes the session's activity, at most once a
/// second, when bytes pass either way.
pub(crate) async fn relay<B, A>(
    browser: B,
    agent: A,
    early: &[u8],
    max_message_bytes: usize,
    ended: &mut watch::Receiver<bool>,
    mark: impl Fn(),
) where
    B: AsyncRead + AsyncWrite,
    A: AsyncRead + AsyncWrite,
{
    run(browser, agent, early, max_message_bytes, ended, mark, WAITS).await;
}

async fn run<B, A>(
    browser: B,
    agent: A,
    early: &[u8],
    max_message_bytes: usize,
    ended: &mut watch::Receiver<bool>,
    mark: impl Fn(),
    waits: Waits,
) where
    B: AsyncRead + AsyncWrite,
    A: AsyncRead + AsyncWrite,
{
    let (from_browser, to_browser) = tokio::io::split(browser);
    let (from_agent, to_agent) = tokio::io::split(agent);
    let mut r = Relay {
        to_browser: Pipe::new(from_agent, to_browser, FrameReader::new(Sender::Server, max_message_bytes)),
        to_agent: Pipe::new(from_browser, to_agent, FrameReader::new(Sender::Client, max_message_bytes)),
        owed: None,
        browser_told: false,
        browser_closed: false,
        agent_closed: false,
        agent_usable: true,
        browser_usable: true,
        browser_ended: false,
        session_ended: false,
        deadline: None,
        waits,
    };
    let mut marks = Marks { last: Instant::now() };
    let mut note = |fed: &Result<Fed, Violation>| {
        if fed.as_ref().is_ok_and(|f| f.consumed > 0) && marks.due(Instant::now()) {
            mark();
        }
    };
    let first = r.to_browser.frames.feed(early, &mut r.to_browser.outbox.out, false);
    let mut flow = r.on_agent(Step::Fed(first));
    if *ended.borrow() {
        r.session_ended = true;
        r.owe(CLOSE_SESSION_ENDED, SESSION_ENDED);
    }
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    while flow == Flow::Go {
        flow = r.settle();
        if flow == Flow::Finish {
            break;
        }
        // While the browser is owed a Close, the agent's frame in progress is let to end, no more.
        let stop_at_frame_end = r.owed.is_some();
        tokio::select! {
            step = r.to_browser.step(stop_at_frame_end) => {
                if let Step::Fed(fed) = &step {
                    note(fed);
                }
                flow = r.on_agent(step);
            }
            step = r.to_agent.step(false) => {
                if let Step::Fed(fed) = &step {
                    note(fed);
                }
                flow = r.on_browser(step);
            }
            changed = ended.changed(), if !r.session_ended => {
                if changed.is_err() || *ended.borrow() {
                    r.session_ended = true;
                    r.owe(CLOSE_SESSION_ENDED, SESSION_ENDED);
                }
            }
            () = tokio::time::sleep_until(r.deadline.unwrap_or(far)), if r.deadline.is_some() => {
                flow = Flow::Finish;
            }
        }
    }
    r.finish().await;
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use tokio::io::DuplexStream;

    use super::{
        super::frames::{encode, OP_BINARY, OP_CLOSE, OP_TEXT},
        *,
    };

    const MASK: Option<[u8; 4]> = Some([0xA1, 0x07, 0x5C, 0xE3]);

    /// A relay between two in-memory peers: the test plays the browser and the agent.
    struct Peers {
        browser: DuplexStream,
        agent: DuplexStream,
        ended: watch::Sender<bool>,
        marks: Arc<AtomicUsize>,
        relay: tokio::task::JoinHandle<()>,
    }

    /// Short waits, so a test of a peer that never answers takes a moment.
    const SHORT: Waits = Waits { close: Duration::from_millis(200), linger: Duration::from_millis(200) };

    fn start(max: usize, early: Vec<u8>) -> Peers {
        let (browser, browser_end) = tokio::io::duplex(4 << 20);
        let (agent, agent_end) = tokio::io::duplex(4 << 20);
        let (ended, mut ended_rx) = watch::channel(false);
        let marks = Arc::new(AtomicUsize::new(0));
        let counted = marks.clone();
        let relay = tokio::spawn(async move {
            let mark = || {
                counted.fetch_add(1, Ordering::SeqCst);
            };
            run(browser_end, agent_end, &early, max, &mut ended_rx, mark, SHORT).await;
        });
        Peers { browser, agent, ended, marks, relay }
    }

    /// The next frame as it came, whole, or `None` at the end of the stream; a stream that ends
    /// inside a frame returns the bytes it had as `Err`.
    async fn next_frame(io: &mut DuplexStream) -> Result<Option<Vec<u8>>, Vec<u8>> {
        let mut f = vec![0u8; 2];
        match io.read_exact(&mut f).await {
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        let extended = match f[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if f[1] & 0x80 != 0 { 4 } else { 0 };
        let mut rest = vec![0u8; extended + mask];
        io.read_exact(&mut rest).await.map_err(|_| f.clone())?;
        f.extend_from_slice(&rest);
        let len = match extended {
            2 => u64::from(u16::from_be_bytes([rest[0], rest[1]])),
            8 => u64::from_be_bytes(rest[..8].try_into().unwrap()),
            _ => u64::from(f[1] & 0x7F),
        } as usize;
        let mut payload = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match io.read(&mut payload[got..]).await {
                Ok(0) | Err(_) => return Err([f, payload[..got].to_vec()].concat()),
                Ok(n) => got += n,
            }
        }
        f.extend_from_slice(&payload);
        Ok(Some(f))
    }

    /// A Close frame's code and reason (unmasked if masked).
    fn close_of(frame: &[u8]) -> (u16, String) {
        assert_eq!(frame[0], 0x80 | OP_CLOSE, "a close frame: {frame:?}");
        let masked = frame[1] & 0x80 != 0;
        let len = (frame[1] & 0x7F) as usize;
        let mut payload = frame[frame.len() - len..].to_vec();
        if masked {
            let key: [u8; 4] = frame[2..6].try_into().unwrap();
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
        }
        (u16::from_be_bytes([payload[0], payload[1]]), String::from_utf8(payload[2..].to_vec()).unwrap())
    }

    async fn ends(relay: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(10), relay).await.expect("the relay ends").unwrap();
    }

    #[tokio::test]
    async fn frames_pass_unchanged_both_ways_and_the_agents_early_frame_first() {
        let early = encode(true, OP_BINARY, b"first output", None);
        let mut p = start(1 << 20, early.clone());
        assert_eq!(next_frame(&mut p.browser).await, Ok(Some(early)));
        let typed = encode(true, OP_TEXT, br#"{"type":"input","data":"ls\r"}"#, MASK);
        p.browser.write_all(&typed).await.unwrap();
        assert_eq!(next_frame(&mut p.agent).await, Ok(Some(typed)), "still masked, byte for byte");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let output = encode(true, OP_BINARY, &big, None);
        p.agent.write_all(&output).await.unwrap();
        assert_eq!(next_frame(&mut p.browser).await, Ok(Some(output)));
        drop(p.browser);
        assert_eq!(next_frame(&mut p.agent).await, Ok(None), "the browser's end ends the agent's");
        ends(p.relay).await;
    }

    /// The session ends while the agent streams a large frame: the browser gets that frame
    /// whole, then the 4000, and nothing of the agent's after it; the agent gets a masked Close.
    #[tokio::test]
    async fn the_session_ending_inside_a_large_frame_closes_the_browser_after_that_frame() {
        let mut p = start(1 << 20, vec![]);
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
        let frame = encode(true, OP_BINARY, &big, None);
        let (head, tail) = frame.split_at(200_000);
        p.agent.write_all(head).await.unwrap();
        let mut seen = vec![0u8; head.len()];
        p.browser.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, head, "the frame streams through as it comes");
        p.ended.send(true).unwrap();
        // On this single-threaded runtime the relay, woken by the signal, runs before the agent
        // sends the rest: the end is seen inside the frame.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let after = encode(true, OP_BINARY, b"never shown", None);
        p.agent.write_all(&[tail, &after].concat()).await.unwrap();
        let mut rest = vec![0u8; tail.len()];
        p.browser.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, tail, "the frame is whole");
        let close = next_frame(&mut p.browser).await.unwrap().expect("a close after the frame");
        assert_eq!(close_of(&close), (4000, "the session has ended".into()));
        assert_eq!(next_frame(&mut p.browser).await, Ok(None), "nothing after the close");
        let to_agent = next_frame(&mut p.agent).await.unwrap().expect("a close to the agent");
        assert!(to_agent[1] & 0x80 != 0, "masked, as a client's frames must be");
        assert_eq!(close_of(&to_agent).0, 1001);
        drop(p.browser);
        ends(p.relay).await;
    }

    /// An agent that stops inside a frame when the session ends cannot hold the socket: after a
    /// moment the browser's connection is cut (a close inside a frame would corrupt it).
    #[tokio::test]
    async fn the_session_ending_while_the_agent_stalls_inside_a_frame_cuts_the_connection() {
        let mut p = start(1 << 20, vec![]);
        let frame = encode(true, OP_BINARY, &[7u8; 1000], None);
        p.agent.write_all(&frame[..500]).await.unwrap();
        let mut seen = vec![0u8; 500];
        p.browser.read_exact(&mut seen).await.unwrap();
        p.ended.send(true).unwrap();
        let mut after = vec![];
        p.browser.read_to_end(&mut after).await.unwrap();
        assert!(after.is_empty(), "no close inside the frame: {after:?}");
        ends(p.relay).await;
    }

    #[tokio::test]
    async fn the_session_ending_between_frames_closes_at_once() {
        let mut p = start(1 << 20, vec![]);
        p.ended.send(true).unwrap();
        let close = next_frame(&mut p.browser).await.unwrap().unwrap();
        assert_eq!(close_of(&close), (4000, "the session has ended".into()));
        drop(p.browser);
        ends(p.relay).await;
    }

    /// A browser frame over the limit is refused with 1009 from its header alone; nothing of it
    /// reaches the agent, what came before it does.
    #[tokio::test]
    async fn a_browser_frame_over_the_size_limit_gets_1009_and_never_reaches_the_agent() {
        let mut p = start(1024, vec![]);
        let fine = encode(true, OP_TEXT, b"fine", MASK);
        let huge = encode(true, OP_TEXT, &[b'x'; 4096], MASK);
        p.browser.write_all(&[&fine[..], &huge[..200]].concat()).await.unwrap();
        let close = next_frame(&mut p.browser).await.unwrap().expect("a close");
        assert_eq!(close_of(&close), (1009, "message too big".into()));
        assert_eq!(next_frame(&mut p.agent).await, Ok(Some(fine)));
        assert_eq!(next_frame(&mut p.agent).await, Ok(None), "the agent is dropped");
        // The browser may go on sending what it started: it is read, not reset.
        p.browser.write_all(&huge[200..]).await.unwrap();
        drop(p.browser);
        ends(p.relay).await;
    }

    #[tokio::test]
    async fn a_message_over_the_limit_in_fragments_gets_1009() {
        let mut p = start(1000, vec![]);
        let first = encode(false, OP_BINARY, &[1; 600], MASK);
        let second = encode(true, 0x0, &[2; 600], MASK);
        p.browser.write_all(&[first.clone(), second].concat()).await.unwrap();
        let close = next_frame(&mut p.browser).await.unwrap().unwrap();
        assert_eq!(close_of(&close).0, 1009);
        assert_eq!(next_frame(&mut p.agent).await, Ok(Some(first)));
        assert_eq!(next_frame(&mut p.agent).await, Ok(None));
        drop(p.browser);
        ends(p.relay).await;
    }

    #[tokio::test]
    async fn an_unmasked_browser_frame_gets_1002_and_the_agent_is_dropped() {
        let mut p = start(1 << 20, vec![]);
        p.browser.write_all(&encode(true, OP_TEXT, b"naked", None)).await.unwrap();
        let close = next_frame(&mut p.browser).await.unwrap().unwrap();
        assert_eq!(close_of(&close).0, 1002);
        assert_eq!(next_frame(&mut p.agent).await, Ok(None), "nothing reached the agent");
        drop(p.browser);
        ends(p.relay).await;
    }

    #[tokio::test]
    async fn a_masked_or_reserved_agent_frame_gets_1002() {
        for bad in [encode(true, OP_BINARY, b"masked", MASK), {
            let mut f = encode(true, OP_BINARY, b"compressed?", None);
            f[0] |= 0x40;
            f
        }] {
            let mut p = start(1 << 20, vec![]);
            let good = encode(true, OP_BINARY, b"ok", None);
            p.agent.write_all(&[good.clone(), bad].concat()).await.unwrap();
            assert_eq!(next_frame(&mut p.browser).await, Ok(Some(good)));
            let close = next_frame(&mut p.browser).await.unwrap().unwrap();
            assert_eq!(close_of(&close).0, 1002);
            assert_eq!(next_frame(&mut p.agent).await, Ok(None), "the agent is dropped");
            drop(p.browser);
            ends(p.relay).await;
        }
    }

    #[tokio::test]
    async fn the_agent_going_away_between_frames_is_1011_and_inside_one_a_cut() {
        let mut p = start(1 << 20, vec![]);
        let out = encode(true, OP_BINARY, b"bye", None);
        p.agent.write_all(&out).await.unwrap();
        drop(p.agent);
        assert_eq!(next_frame(&mut p.browser).await, Ok(Some(out)));
        let close = next_frame(&mut p.browser).await.unwrap().unwrap();
        assert_eq!(close_of(&close), (1011, "the IDE agent went away".into()));
        drop(p.browser);
        ends(p.relay).await;

        let mut p = start(1 << 20, vec![]);
        let out = encode(true, OP_BINARY, &[5; 100], None);
        p.agent.write_all(&out[..50]).await.unwrap();
        drop(p.agent);
        assert_eq!(next_frame(&mut p.browser).await, Err(out[..50].to_vec()), "cut, no close inside the frame");
        ends(p.relay).await;
    }

    /// A Close from the browser passes to the agent, the agent's answer passes back, and the
    /// relay ends without waiting for either side to hang up.
    #[tokio::test]
    async fn a_close_from_the_browser_is_answered_by_the_agents_and_ends_the_relay() {
        let mut p = start(1 << 20, vec![]);
        let close = super::super::frames::close_frame(1000, "bye", MASK);
        p.browser.write_all(&close).await.unwrap();
        assert_eq!(next_frame(&mut p.agent).await, Ok(Some(close)));
        let answer = super::super::frames::close_frame(1000, "", None);
        p.agent.write_all(&answer).await.unwrap();
        assert_eq!(next_frame(&mut p.browser).await, Ok(Some(answer)));
        assert_eq!(next_frame(&mut p.browser).await, Ok(None), "the relay shuts the browser's side");
        drop(p.browser);
        ends(p.relay).await;
    }

    /// An agent that closes (the shell exited) gets the browser's answer; an agent that never
    /// answers a browser's Close does not hold the relay.
    #[tokio::test]
    async fn closes_pass_from_the_agent_and_an_unanswered_close_times_out() {
        let mut p = start(1 << 20, vec![]);
        let exited = super::super::frames::close_frame(4001, "the shell exited", None);
        p.agent.write_all(&exited).await.unwrap();
        assert_eq!(next_frame(&mut p.browser).await, Ok(Some(exited)));
        let answer = super::super::frames::close_frame(4001, "", MASK);
        p.browser.write_all(&answer).await.unwrap();
        assert_eq!(next_frame(&mut p.agent).await, Ok(Some(answer)));
        ends(p.relay).await;

        let mut p = start(1 << 20, vec![]);
        p.browser.write_all(&super::super::frames::close_frame(1000, "", MASK)).await.unwrap();
        assert!(next_frame(&mut p.agent).await.unwrap().is_some());
        // The agent keeps its socket open and says nothing: the relay ends after its wait.
        ends(p.relay).await;
        assert_eq!(next_frame(&mut p.browser).await, Ok(None));
    }

    #[test]
    fn activity_is_marked_at_most_once_a_second() {
        let start = Instant::now();
        let mut marks = Marks { last: start };
        let due: Vec<u64> =
            (1..=20u64).filter(|i| marks.due(start + Duration::from_millis(250 * i))).map(|i| i * 250).collect();
        assert_eq!(due, [1000, 2000, 3000, 4000, 5000], "typing for 5 s");
        assert!(!marks.due(start + Duration::from_millis(5999)));
        assert!(marks.due(start + Duration::from_secs(9)), "after a pause, at once");
    }

    #[tokio::test]
    async fn traffic_either_way_is_activity() {
        let mut p = start(1 << 20, vec![]);
        // The first second's traffic is the request's own activity, already noted.
        p.browser.write_all(&encode(true, OP_TEXT, b"k", MASK)).await.unwrap();
        next_frame(&mut p.agent).await.unwrap();
        assert_eq!(p.marks.load(Ordering::SeqCst), 0);
        drop(p.browser);
        ends(p.relay).await;
    }
}
