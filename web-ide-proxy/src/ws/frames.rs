//! WebSocket frame headers (RFC 6455 §5.2), read as the bytes pass. The relay forwards frames as
//! they arrive; it needs to know only where each frame starts and ends and whether its header
//! keeps the rules. Payloads are never unmasked, decoded or buffered; a header's few bytes are
//! held back until it is whole and checked, so what has been forwarded always ends either inside
//! a payload or between frames, never inside a header, and a frame that breaks a rule is not
//! forwarded at all.

/// Who sends the bytes a [`FrameReader`] reads: a client (the browser) masks every frame, a server
/// (the agent) none (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    Client,
    Server,
}

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
pub(crate) const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// The longest header: two bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;
/// A control frame's payload limit (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame that breaks a rule: the close code and reason its sender's peer is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: CLOSE_PROTOCOL_ERROR, reason }
}

const TOO_BIG: Violation = Violation { code: CLOSE_TOO_BIG, reason: "message too big" };

/// What one [`FrameReader::feed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Input bytes taken: all of them, unless the reader stopped at a frame's end as asked or
    /// after a Close frame (the rest is not to be forwarded).
    pub consumed: usize,
    /// Frames that ended within the bytes taken.
    pub frames: usize,
    /// A Close frame ended: its sender may send nothing after it, and the reader takes nothing more.
    pub closed: bool,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Between frames, `have` bytes of the next header held back.
    Header { have: usize },
    /// In a frame's payload.
    Payload { remaining: u64, close: bool },
    /// After a Close frame.
    Closed,
    /// After a frame that broke a rule.
    Failed(Violation),
}

/// One direction's frame boundaries and rules.
#[derive(Debug)]
pub(crate) struct FrameReader {
    sender: Sender,
    max_message: u64,
    header: [u8; MAX_HEADER],
    state: State,
    /// Payload bytes so far of a fragmented data message whose last frame has not come yet.
    message: Option<u64>,
}

/// A header's fixed part, its length and the length of the payload that follows.
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    size: usize,
}

impl FrameReader {
    pub(crate) fn new(sender: Sender, max_message_bytes: usize) -> Self {
        FrameReader {
            sender,
            max_message: u64::try_from(max_message_bytes).unwrap_or(u64::MAX),
            header: [0; MAX_HEADER],
            state: State::Header { have: 0 },
            message: None,
        }
    }

    /// Whether what was forwarded so far ends between frames, so a frame of the relay's own (a
    /// close) may follow. Also true while a header is being read (its bytes are held back) and
    /// after a violation (the frame that broke the rule was not forwarded).
    pub(crate) fn at_frame_boundary(&self) -> bool {
        !matches!(self.state, State::Payload { .. })
    }

    /// Reads `input`, appending to `out` what may be forwarded: whole checked headers and the
    /// payload bytes that follow them, exactly as they came. With `stop_at_frame_end`, stops
    /// after the first frame that ends. On a violation, `out` holds everything before the frame
    /// that broke the rule (so it ends between frames) and the reader refuses all further input.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, stop_at_frame_end: bool) -> Result<Fed, Violation> {
        let mut fed = Fed::default();
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Failed(v) => return Err(v),
                State::Closed => break,
                State::Header { mut have } => {
                    // The first two bytes say how long the header is.
                    while have < 2 && at < input.len() {
                        self.header[have] = input[at];
                        have += 1;
                        at += 1;
                    }
                    let Some(need) = self.header_size(have) else {
                        self.state = State::Header { have };
                        break;
                    };
                    let take = (need - have).min(input.len() - at);
                    self.header[have..have + take].copy_from_slice(&input[at..at + take]);
                    have += take;
                    at += take;
                    self.state = State::Header { have };
                    if have < need {
                        break;
                    }
                    let header = match self.check(need) {
                        Ok(h) => h,
                        Err(v) => {
                            self.state = State::Failed(v);
                            return Err(v);
                        }
                    };
                    out.extend_from_slice(&self.header[..header.size]);
                    self.count(&header);
                    let close = header.opcode == OP_CLOSE;
                    if header.len > 0 {
                        self.state = State::Payload { remaining: header.len, close };
                    } else if self.frame_ended(close, &mut fed, stop_at_frame_end) {
                        break;
                    }
                }
                State::Payload { remaining, close } => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - at);
                    out.extend_from_slice(&input[at..at + take]);
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = State::Payload { remaining, close };
                    if remaining == 0 && self.frame_ended(close, &mut fed, stop_at_frame_end) {
                        break;
                    }
                }
            }
        }
        if let State::Failed(v) = self.state {
            return Err(v);
        }
        fed.consumed = at;
        Ok(fed)
    }

    /// The end of a frame: whether the reader takes no more input in this feed.
    fn frame_ended(&mut self, close: bool, fed: &mut Fed, stop_at_frame_end: bool) -> bool {
        fed.frames += 1;
        if close {
            fed.closed = true;
            self.state = State::Closed;
            return true;
        }
        self.state = State::Header { have: 0 };
        stop_at_frame_end
    }

    /// The size of the header being read, once its first two bytes say it.
    fn header_size(&self, have: usize) -> Option<usize> {
        if have < 2 {
            return None;
        }
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    /// The rules a whole header must keep, and the continuation of fragmented messages.
    fn check(&self, size: usize) -> Result<Header, Violation> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            // No extension is ever negotiated.
            return Err(protocol_error("reserved bits set"));
        }
        let masked = b1 & 0x80 != 0;
        match (self.sender, masked) {
            (Sender::Client, false) => return Err(protocol_error("unmasked frame from a client")),
            (Sender::Server, true) => return Err(protocol_error("masked frame from a server")),
            _ => {}
        }
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let len = u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(protocol_error("frame length with its top bit set"));
                }
                len
            }
            n => u64::from(n),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(protocol_error("fragmented control frame"));
                }
                if len > MAX_CONTROL_PAYLOAD {
                    return Err(protocol_error("control frame too long"));
                }
                if opcode == OP_CLOSE && len == 1 {
                    return Err(protocol_error("close frame with a one-byte payload"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(protocol_error("new message inside a fragmented one"));
                }
                if len > self.max_message {
                    return Err(TOO_BIG);
                }
            }
            OP_CONTINUATION => {
                let Some(so_far) = self.message else {
                    return Err(protocol_error("continuation frame without a message"));
                };
                if so_far.checked_add(len).is_none_or(|total| total > self.max_message) {
                    return Err(TOO_BIG);
                }
            }
            _ => return Err(protocol_error("unknown opcode")),
        }
        Ok(Header { fin, opcode, len, size })
    }

    /// Accounts a checked data frame to its message.
    fn count(&mut self, h: &Header) {
        match h.opcode {
            OP_TEXT | OP_BINARY if !h.fin => self.message = Some(h.len),
            OP_CONTINUATION => self.message = if h.fin { None } else { self.message.map(|m| m + h.len) },
            _ => {}
        }
    }
}

/// A Close frame of the relay's own: `code`, and `reason` cut to fit a control frame; masked
/// with `mask` when it goes to a server (the agent), as every client frame must be.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    let mut frame = vec![0x80 | OP_CLOSE, payload.len() as u8];
    if let Some(key) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

/// A frame as a peer writes it (the shortest length form), masked with `mask` as a client's.
#[cfg(test)]
pub(crate) fn encode(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    tests::frame(fin, opcode, payload, mask, tests::Len::Shortest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024 * 1024;

    /// How a test frame spells its payload length.
    #[derive(Clone, Copy)]
    pub(super) enum Len {
        /// The shortest form for the length (what senders must use).
        Shortest,
        Bits16,
        Bits64,
    }

    /// One frame as a sender writes it; payloads are masked with `mask` as a client's must be.
    pub(super) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, len: Len) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        match len {
            Len::Shortest if n <= 125 => f.push(m | n as u8),
            Len::Shortest | Len::Bits16 if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    fn mask_for(sender: Sender) -> Option<[u8; 4]> {
        match sender {
            Sender::Client => Some([0x37, 0xfa, 0x21, 0x3d]),
            Sender::Server => None,
        }
    }

    /// A stream of frames and, for each, where its header starts, where its payload starts and
    /// where it ends.
    struct Stream {
        bytes: Vec<u8>,
        frames: Vec<(usize, usize, usize)>,
    }

    impl Stream {
        fn new() -> Self {
            Stream { bytes: vec![], frames: vec![] }
        }

        fn push(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, len: Len) -> &mut Self {
            let f = frame(fin, opcode, payload, mask, len);
            let start = self.bytes.len();
            let payload_start = start + f.len() - payload.len();
            self.bytes.extend_from_slice(&f);
            self.frames.push((start, payload_start, self.bytes.len()));
            self
        }

        /// What may have been forwarded after the first `k` bytes: all of them, but a header
        /// cut by `k` is held back.
        fn forwarded_after(&self, k: usize) -> usize {
            self.frames.iter().find(|&&(start, payload, _)| start < k && k < payload).map_or(k, |&(start, _, _)| start)
        }

        /// Whether the forwarded bytes after `k` end between frames.
        fn boundary_after(&self, k: usize) -> bool {
            k == self.bytes.len() || self.frames.iter().any(|&(start, payload, _)| start <= k && k < payload)
        }

        fn ended_by(&self, k: usize) -> usize {
            self.frames.iter().filter(|&&(_, _, end)| end <= k).count()
        }
    }

    /// Every header form, fragmentation with control frames between fragments, empty frames,
    /// and a Close at the end.
    fn sample(sender: Sender) -> Stream {
        let mask = mask_for(sender);
        let mut s = Stream::new();
        s.push(true, OP_TEXT, b"hello", mask, Len::Shortest)
            .push(true, OP_BINARY, &[7u8; 125], mask, Len::Shortest)
            .push(true, OP_BINARY, &[8u8; 126], mask, Len::Shortest)
            .push(true, OP_TEXT, &[b'a'; 300], mask, Len::Bits16)
            .push(true, OP_BINARY, b"sixty-four", mask, Len::Bits64)
            .push(false, OP_TEXT, b"frag", mask, Len::Shortest)
            .push(true, OP_PING, b"p", mask, Len::Shortest)
            .push(false, OP_CONTINUATION, b"", mask, Len::Shortest)
            .push(false, OP_CONTINUATION, &[b'm'; 200], mask, Len::Bits64)
            .push(true, OP_PONG, b"", mask, Len::Shortest)
            .push(true, OP_CONTINUATION, b"end", mask, Len::Bits16)
            .push(true, OP_BINARY, b"", mask, Len::Shortest)
            .push(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e'], mask, Len::Shortest);
        s
    }

    fn feed_all(r: &mut FrameReader, chunks: &[&[u8]]) -> (Vec<u8>, usize, bool) {
        let (mut out, mut frames, mut closed) = (vec![], 0, false);
        for c in chunks {
            let fed = r.feed(c, &mut out, false).unwrap();
            assert_eq!(fed.consumed, c.len());
            frames += fed.frames;
            closed |= fed.closed;
        }
        (out, frames, closed)
    }

    #[test]
    fn a_stream_split_at_every_offset_is_forwarded_exactly_with_its_boundaries() {
        for sender in [Sender::Client, Sender::Server] {
            let s = sample(sender);
            for k in 0..=s.bytes.len() {
                let mut r = FrameReader::new(sender, MAX);
                let mut out = vec![];
                let first = r.feed(&s.bytes[..k], &mut out, false).unwrap();
                assert_eq!(first.consumed, k);
                assert_eq!(out.len(), s.forwarded_after(k), "{sender:?} split at {k}");
                assert_eq!(out[..], s.bytes[..out.len()], "{sender:?} split at {k}");
                assert_eq!(r.at_frame_boundary(), s.boundary_after(k), "{sender:?} split at {k}");
                assert_eq!(first.frames, s.ended_by(k), "{sender:?} split at {k}");
                let second = r.feed(&s.bytes[k..], &mut out, false).unwrap();
                assert_eq!(out, s.bytes, "{sender:?} split at {k}");
                assert_eq!(first.frames + second.frames, s.frames.len());
                assert!(second.closed || (first.closed && k == s.bytes.len()), "{sender:?} split at {k}");
                assert!(r.at_frame_boundary());
            }
        }
    }

    /// A small deterministic generator (xorshift), so a failure is reproducible.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn a_stream_in_random_chunks_is_forwarded_exactly_with_its_boundaries() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for sender in [Sender::Client, Sender::Server] {
            let s = sample(sender);
            for _ in 0..2000 {
                let mut r = FrameReader::new(sender, MAX);
                let (mut out, mut frames, mut at) = (vec![], 0, 0);
                while at < s.bytes.len() {
                    let longest = if rng.below(4) == 0 { 400 } else { 16 };
                    let n = 1 + rng.below(longest);
                    let end = (at + n).min(s.bytes.len());
                    let fed = r.feed(&s.bytes[at..end], &mut out, false).unwrap();
                    assert_eq!(fed.consumed, end - at);
                    frames += fed.frames;
                    at = end;
                    assert_eq!(out[..], s.bytes[..s.forwarded_after(at)]);
                    assert_eq!(r.at_frame_boundary(), s.boundary_after(at), "at {at}");
                    assert_eq!(frames, s.ended_by(at));
                }
                assert_eq!(out, s.bytes);
            }
        }
    }

    #[test]
    fn stopping_at_frame_ends_takes_one_frame_at_a_time() {
        for sender in [Sender::Client, Sender::Server] {
            let s = sample(sender);
            let mut r = FrameReader::new(sender, MAX);
            let (mut out, mut at) = (vec![], 0);
            for &(_, _, end) in &s.frames {
                let fed = r.feed(&s.bytes[at..], &mut out, true).unwrap();
                assert_eq!((fed.frames, at + fed.consumed), (1, end));
                assert_eq!(out[..], s.bytes[..end]);
                assert!(r.at_frame_boundary());
                at = end;
            }
            assert_eq!(out, s.bytes);
        }
    }

    #[test]
    fn a_frame_ends_where_its_payload_does_in_the_middle_of_a_read() {
        // Stop at the frame's end even when the read goes on into the next frame's header.
        let mut s = Stream::new();
        s.push(true, OP_BINARY, &[1; 10], None, Len::Shortest).push(true, OP_BINARY, &[2; 10], None, Len::Shortest);
        let mut r = FrameReader::new(Sender::Server, MAX);
        let mut out = vec![];
        assert_eq!(r.feed(&s.bytes[..5], &mut out, false).unwrap().frames, 0);
        assert!(!r.at_frame_boundary(), "inside the first payload");
        let fed = r.feed(&s.bytes[5..15], &mut out, true).unwrap();
        assert_eq!((fed.consumed, fed.frames), (7, 1));
        assert_eq!(out, s.bytes[..12]);
        assert!(r.at_frame_boundary());
    }

    #[test]
    fn every_length_form_is_read_including_large_frames() {
        for (n, len) in [(0, Len::Shortest), (125, Len::Shortest), (126, Len::Shortest), (65_535, Len::Shortest)]
            .into_iter()
            .chain([(65_536, Len::Shortest), (300_000, Len::Shortest), (5, Len::Bits16), (0, Len::Bits64)])
        {
            for sender in [Sender::Client, Sender::Server] {
                let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let f = frame(true, OP_BINARY, &payload, mask_for(sender), len);
                let header = f.len() - n;
                let want = match (n, len) {
                    (0..=125, Len::Shortest) => 2,
                    (126..=65_535, Len::Shortest) | (_, Len::Bits16) => 4,
                    _ => 10,
                } + if sender == Sender::Client { 4 } else { 0 };
                assert_eq!(header, want, "{n} bytes");
                // Whole, byte by byte through the header, and in 8 KiB reads.
                let mut r = FrameReader::new(sender, MAX);
                assert_eq!(feed_all(&mut r, &[&f]), (f.clone(), 1, false));
                let mut r = FrameReader::new(sender, MAX);
                let mut chunks: Vec<&[u8]> = f[..header].chunks(1).collect();
                chunks.extend(f[header..].chunks(8192));
                assert_eq!(feed_all(&mut r, &chunks), (f.clone(), 1, false));
            }
        }
    }

    #[test]
    fn masks_are_passed_on_untouched() {
        let f = frame(true, OP_TEXT, b"secret", Some([1, 2, 3, 4]), Len::Shortest);
        let mut r = FrameReader::new(Sender::Client, MAX);
        let (out, _, _) = feed_all(&mut r, &[&f]);
        assert_eq!(out, f, "still masked");
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        assert_ne!(&out[6..], b"secret");
    }

    fn violation(sender: Sender, max: usize, bytes: &[u8]) -> Violation {
        FrameReader::new(sender, max).feed(bytes, &mut vec![], false).unwrap_err()
    }

    #[test]
    fn a_clients_frames_must_be_masked_and_a_servers_must_not() {
        let unmasked = frame(true, OP_TEXT, b"hi", None, Len::Shortest);
        let masked = frame(true, OP_TEXT, b"hi", Some([9, 9, 9, 9]), Len::Shortest);
        assert_eq!(violation(Sender::Client, MAX, &unmasked), protocol_error("unmasked frame from a client"));
        assert_eq!(violation(Sender::Server, MAX, &masked), protocol_error("masked frame from a server"));
        // Control frames too.
        let ping = frame(true, OP_PING, b"", None, Len::Shortest);
        assert_eq!(violation(Sender::Client, MAX, &ping).code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn reserved_bits_and_unknown_opcodes_are_protocol_errors() {
        for rsv in [0x40, 0x20, 0x10] {
            let mut f = frame(true, OP_TEXT, b"x", None, Len::Shortest);
            f[0] |= rsv;
            assert_eq!(violation(Sender::Server, MAX, &f), protocol_error("reserved bits set"), "{rsv:#x}");
        }
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let f = frame(true, op, b"x", None, Len::Shortest);
            assert_eq!(violation(Sender::Server, MAX, &f), protocol_error("unknown opcode"), "{op:#x}");
        }
    }

    #[test]
    fn control_frames_are_short_and_whole() {
        for op in [OP_CLOSE, OP_PING, OP_PONG] {
            let long = frame(true, op, &[0; 126], None, Len::Shortest);
            assert_eq!(violation(Sender::Server, MAX, &long), protocol_error("control frame too long"));
            let spelled_long = frame(true, op, &[0; 4], None, Len::Bits16);
            assert!(FrameReader::new(Sender::Server, MAX).feed(&spelled_long, &mut vec![], false).is_ok());
            let fragmented = frame(false, op, b"", None, Len::Shortest);
            assert_eq!(violation(Sender::Server, MAX, &fragmented), protocol_error("fragmented control frame"));
            let most = frame(true, op, &[0; 125], None, Len::Shortest);
            assert!(FrameReader::new(Sender::Server, MAX).feed(&most, &mut vec![], false).is_ok());
        }
        let one = frame(true, OP_CLOSE, &[3], None, Len::Shortest);
        assert_eq!(violation(Sender::Server, MAX, &one).code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn lengths_with_the_top_bit_set_are_refused() {
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(violation(Sender::Server, usize::MAX, &f), protocol_error("frame length with its top bit set"));
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(violation(Sender::Server, usize::MAX, &f).code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn frames_and_messages_over_the_limit_are_too_big() {
        let max = 1000;
        let whole = frame(true, OP_BINARY, &[0; 1001], None, Len::Shortest);
        assert_eq!(violation(Sender::Server, max, &whole), TOO_BIG);
        let exactly = frame(true, OP_BINARY, &[0; 1000], None, Len::Shortest);
        assert!(FrameReader::new(Sender::Server, max).feed(&exactly, &mut vec![], false).is_ok());
        // Known from the header: nothing of the frame needs to have come.
        let mut header_only = vec![0x82, 127];
        header_only.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(violation(Sender::Server, max, &header_only), TOO_BIG);
        // A message is the sum of its fragments.
        let mut s = Stream::new();
        s.push(false, OP_TEXT, &[0; 400], None, Len::Shortest)
            .push(false, OP_CONTINUATION, &[0; 400], None, Len::Shortest)
            .push(true, OP_PING, b"", None, Len::Shortest)
            .push(true, OP_CONTINUATION, &[0; 200], None, Len::Shortest);
        let mut r = FrameReader::new(Sender::Server, max);
        assert_eq!(feed_all(&mut r, &[&s.bytes]).1, 4, "exactly at the limit");
        // The next message starts from zero.
        assert!(r.feed(&exactly, &mut vec![], false).is_ok());
        let mut s = Stream::new();
        s.push(false, OP_BINARY, &[0; 400], None, Len::Shortest)
            .push(false, OP_CONTINUATION, &[0; 400], None, Len::Shortest)
            .push(true, OP_CONTINUATION, &[0; 201], None, Len::Shortest);
        assert_eq!(violation(Sender::Server, max, &s.bytes), TOO_BIG);
    }

    #[test]
    fn continuations_need_a_message_and_messages_do_not_nest() {
        let lone = frame(true, OP_CONTINUATION, b"x", None, Len::Shortest);
        assert_eq!(violation(Sender::Server, MAX, &lone), protocol_error("continuation frame without a message"));
        let mut s = Stream::new();
        s.push(false, OP_TEXT, b"a", None, Len::Shortest).push(true, OP_TEXT, b"b", None, Len::Shortest);
        assert_eq!(violation(Sender::Server, MAX, &s.bytes), protocol_error("new message inside a fragmented one"));
        // After the last fragment, a continuation has nothing to continue.
        let mut s = Stream::new();
        s.push(false, OP_TEXT, b"a", None, Len::Shortest).push(true, OP_CONTINUATION, b"b", None, Len::Shortest).push(
            true,
            OP_CONTINUATION,
            b"c",
            None,
            Len::Shortest,
        );
        assert_eq!(violation(Sender::Server, MAX, &s.bytes).code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn a_bad_frame_is_not_forwarded_and_what_came_before_it_is() {
        let good = frame(true, OP_TEXT, b"fine", Some([1, 2, 3, 4]), Len::Shortest);
        let bad = frame(true, OP_TEXT, b"naked", None, Len::Shortest);
        let bytes = [good.clone(), bad].concat();
        for k in 0..=bytes.len() {
            let mut r = FrameReader::new(Sender::Client, MAX);
            let mut out = vec![];
            let first = r.feed(&bytes[..k], &mut out, false);
            let second = r.feed(&bytes[k..], &mut out, false);
            assert!(first.is_err() || second.is_err(), "split at {k}");
            assert_eq!(out, good, "split at {k}");
            assert!(r.at_frame_boundary(), "a frame of the relay's own may follow");
            assert!(r.feed(b"\x81\x80\0\0\0\0", &mut out, false).is_err(), "nothing more is taken");
            assert_eq!(out, good);
        }
    }

    #[test]
    fn nothing_is_taken_after_a_close_frame() {
        let close = frame(true, OP_CLOSE, &[0x03, 0xE8], None, Len::Shortest);
        let after = frame(true, OP_TEXT, b"late", None, Len::Shortest);
        let bytes = [close.clone(), after].concat();
        let mut r = FrameReader::new(Sender::Server, MAX);
        let mut out = vec![];
        let fed = r.feed(&bytes, &mut out, false).unwrap();
        assert_eq!(fed, Fed { consumed: close.len(), frames: 1, closed: true });
        assert_eq!(out, close);
        assert_eq!(r.feed(b"more", &mut out, false).unwrap(), Fed::default());
        assert_eq!(out, close);
        assert!(r.at_frame_boundary());
    }

    #[test]
    fn the_relays_own_close_frames_read_back_as_close_frames() {
        for (code, reason) in [(4000, "the session has ended"), (1009, ""), (1002, "é".repeat(100).as_str())] {
            for sender in [Sender::Client, Sender::Server] {
                let f = close_frame(code, reason, mask_for(sender));
                assert!(f.len() <= 2 + 4 + 125);
                let mut r = FrameReader::new(sender, MAX);
                let (out, frames, closed) = feed_all(&mut r, &[&f]);
                assert_eq!((out.len(), frames, closed), (f.len(), 1, true));
                let mut payload = f[f.len() - (f[1] & 0x7F) as usize..].to_vec();
                if let Some(key) = mask_for(sender) {
                    payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
                }
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
                let text = std::str::from_utf8(&payload[2..]).expect("a reason cut at a character");
                assert!(reason.starts_with(text) && text.len() <= 123);
            }
        }
    }
}
