//! RFC 6455 framing, server side: decoding client frames in place and
//! building server frames once.
//!
//! Why not tungstenite here (the client commands still use it): it gives
//! every socket its own read and write buffers for as long as the socket
//! lives, and one `Message` allocation per frame. The node instead reads
//! into one scratch buffer per worker thread and decodes in place
//! ([`Decoder::feed`]); only a frame cut in half by a read is kept, in a
//! buffer that exists until the frame is complete. Server frames are never
//! masked, so an event's frame (header and payload in one allocation,
//! [`Frame`]) is built once and the same bytes go to every subscriber, as
//! uWebSockets' `publish` does.

use bytes::Bytes;

/// Longest header of a server frame (no mask): 2 + 8 bytes.
const MAX_HEADER: usize = 10;
/// Longest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    Continue = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continue,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// One complete server frame, header and payload in one shared buffer:
/// cloning it is a reference count, not a copy.
#[derive(Clone, Debug)]
pub struct Frame {
    bytes: Bytes,
    header: u8,
}

impl Frame {
    /// A text frame whose payload `write` appends to the buffer it is given.
    pub fn text_with(write: impl FnOnce(&mut Vec<u8>)) -> Frame {
        Frame::build(OpCode::Text, 256, write)
    }

    /// A text frame holding `text`.
    pub fn text(text: &str) -> Frame {
        Frame::build(OpCode::Text, text.len(), |b| {
            b.extend_from_slice(text.as_bytes())
        })
    }

    /// A binary frame holding `data`.
    pub fn binary(data: &[u8]) -> Frame {
        Frame::build(OpCode::Binary, data.len(), |b| b.extend_from_slice(data))
    }

    /// A control frame (ping, pong); `payload` is cut to 125 bytes.
    pub fn control(op: OpCode, payload: &[u8]) -> Frame {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        Frame::build(op, payload.len(), |b| b.extend_from_slice(payload))
    }

    /// A close frame with a code and a reason (cut to fit a control frame
    /// on a character boundary).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::build(OpCode::Close, end + 2, |b| {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&reason.as_bytes()[..end]);
        })
    }

    fn build(op: OpCode, capacity: usize, write: impl FnOnce(&mut Vec<u8>)) -> Frame {
        let mut buf = Vec::with_capacity(MAX_HEADER + capacity);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | op as u8;
        let hlen = if len < 126 {
            header[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = MAX_HEADER - hlen;
        buf[start..MAX_HEADER].copy_from_slice(&header[..hlen]);
        let mut bytes = Bytes::from(buf);
        bytes = bytes.slice(start..);
        Frame {
            bytes,
            header: hlen as u8,
        }
    }

    /// The whole frame, as it goes on the wire.
    pub fn wire(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload (for a text frame, its JSON), sharing the buffer.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(self.header as usize..)
    }

    /// The payload of a text frame as text.
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.header as usize..]).unwrap_or("")
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty (never: a frame has a header).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Why the connection must close, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A broken frame: close 1002.
    Protocol(&'static str),
    /// A message over the limit: close 1009.
    TooBig,
    /// A text message that is not UTF-8: close 1007.
    Utf8,
}

impl DecodeError {
    /// The close code and reason for this error.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            DecodeError::Protocol(why) => (1002, why),
            DecodeError::TooBig => (1009, "message too big"),
            DecodeError::Utf8 => (1007, "invalid UTF-8"),
        }
    }
}

/// One complete message from the client, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// A close frame: its code (if any) and reason.
    Close(Option<u16>),
}

/// Decodes client frames. Idle, it holds no buffer at all.
#[derive(Debug, Default)]
pub struct Decoder {
    max_message: usize,
    /// The start of a frame that the last read cut off.
    partial: Vec<u8>,
    /// A fragmented message so far.
    message: Vec<u8>,
    /// The opcode of the fragmented message in progress.
    fragmented: Option<OpCode>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    op: OpCode,
    mask: [u8; 4],
    /// Where the payload starts, from the frame's start.
    offset: usize,
    len: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            ..Default::default()
        }
    }

    /// Whether a frame or message is half-received.
    pub fn is_mid_frame(&self) -> bool {
        !self.partial.is_empty() || self.fragmented.is_some()
    }

    /// Decode the bytes just read (`input`, unmasked in place), calling `on`
    /// for each complete message until it returns false. Bytes of an
    /// incomplete frame are kept for the next call.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        on: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<(), DecodeError> {
        if self.partial.is_empty() {
            let used = self.decode(input, on)?;
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(input);
        let used = self.decode(&mut buf, on)?;
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > 4096 {
            buf = Vec::new();
        }
        self.partial = buf;
        Ok(())
    }

    /// Decode whole frames from `buf`; returns how many bytes were used.
    fn decode(
        &mut self,
        buf: &mut [u8],
        on: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<usize, DecodeError> {
        let mut pos = 0;
        while let Some(h) = self.header(&buf[pos..])? {
            let start = pos + h.offset;
            let end = start + h.len;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[start..end];
            unmask(payload, h.mask);
            pos = end;
            if !self.frame(&h, payload, on)? {
                break;
            }
        }
        Ok(pos)
    }

    /// Parse and check the header at the start of `buf`; `None` when it is
    /// not all there yet.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, DecodeError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(DecodeError::Protocol("reserved bits set"));
        }
        let op = OpCode::from_u8(b0 & 0x0F).ok_or(DecodeError::Protocol("unknown opcode"))?;
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(DecodeError::Protocol("client frames must be masked"));
        }
        let (len, mut offset) = match b1 & 0x7F {
            126 if buf.len() < 4 => return Ok(None),
            126 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
            127 if buf.len() < 10 => return Ok(None),
            127 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])),
                10,
            ),
            n => (n as u64, 2),
        };
        if op.is_control() && (!fin || len > MAX_CONTROL as u64) {
            return Err(DecodeError::Protocol("bad control frame"));
        }
        if len >> 63 != 0 {
            return Err(DecodeError::Protocol("bad frame length"));
        }
        let so_far = if op == OpCode::Continue {
            self.message.len() as u64
        } else {
            0
        };
        if !op.is_control() && so_far + len > self.max_message as u64 {
            return Err(DecodeError::TooBig);
        }
        if buf.len() < offset + 4 {
            return Ok(None);
        }
        let mask = [
            buf[offset],
            buf[offset + 1],
            buf[offset + 2],
            buf[offset + 3],
        ];
        offset += 4;
        Ok(Some(Header {
            fin,
            op,
            mask,
            offset,
            len: len as usize,
        }))
    }

    /// Handle one unmasked frame; false when `on` asked to stop.
    fn frame(
        &mut self,
        h: &Header,
        payload: &[u8],
        on: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<bool, DecodeError> {
        match h.op {
            OpCode::Ping => Ok(on(Incoming::Ping(payload))),
            OpCode::Pong => Ok(on(Incoming::Pong)),
            OpCode::Close => {
                let code = close_code(payload)?;
                Ok(on(Incoming::Close(code)))
            }
            OpCode::Text | OpCode::Binary if self.fragmented.is_some() => Err(
                DecodeError::Protocol("a new message began inside a fragmented one"),
            ),
            OpCode::Text | OpCode::Binary if h.fin => Ok(on(message(h.op, payload)?)),
            OpCode::Text | OpCode::Binary => {
                self.fragmented = Some(h.op);
                self.message.extend_from_slice(payload);
                Ok(true)
            }
            OpCode::Continue => {
                let Some(op) = self.fragmented else {
                    return Err(DecodeError::Protocol("continuation without a message"));
                };
                self.message.extend_from_slice(payload);
                if !h.fin {
                    return Ok(true);
                }
                self.fragmented = None;
                let whole = std::mem::take(&mut self.message);
                let go_on = on(message(op, &whole)?);
                if whole.capacity() <= 4096 {
                    self.message = whole;
                    self.message.clear();
                }
                Ok(go_on)
            }
        }
    }
}

/// A complete data message.
fn message(op: OpCode, payload: &[u8]) -> Result<Incoming<'_>, DecodeError> {
    if op == OpCode::Text {
        std::str::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| DecodeError::Utf8)
    } else {
        Ok(Incoming::Binary(payload))
    }
}

/// The code of a close frame, checked (RFC 6455 section 7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload.len() {
        0 => return Ok(None),
        1 => return Err(DecodeError::Protocol("close frame of one byte")),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !valid {
        return Err(DecodeError::Protocol("invalid close code"));
    }
    std::str::from_utf8(&payload[2..]).map_err(|_| DecodeError::Utf8)?;
    Ok(Some(code))
}

/// XOR `buf` with the 4-byte mask, eight bytes at a time.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask) as u64;
    let wide = m | (m << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn texts(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
        let mut got = Vec::new();
        let mut input = bytes.to_vec();
        d.feed(&mut input, &mut |m| {
            if let Incoming::Text(t) = m {
                got.push(t.to_owned());
            }
            true
        })?;
        Ok(got)
    }

    /// Frames of every length class round-trip, whole or cut at any byte.
    #[test]
    fn frames_survive_any_split() {
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let wire = client(1, true, text.as_bytes());
            for cut in [0, 1, 2, 3, 9, wire.len() / 2, wire.len() - 1].map(|c| c.min(wire.len())) {
                let mut d = Decoder::new(1 << 20);
                let mut got = texts(&mut d, &wire[..cut]).unwrap();
                got.extend(texts(&mut d, &wire[cut..]).unwrap());
                assert_eq!(got, vec![text.clone()], "len {len} cut {cut}");
                assert!(!d.is_mid_frame());
            }
        }
    }

    /// Fragments are joined, with control frames allowed in between.
    #[test]
    fn fragments_join_around_pings() {
        let mut wire = client(1, false, b"hel");
        wire.extend(client(9, true, b"p"));
        wire.extend(client(0, true, b"lo"));
        let mut d = Decoder::new(1024);
        let mut seen = Vec::new();
        d.feed(&mut wire, &mut |m| {
            seen.push(format!("{m:?}"));
            true
        })
        .unwrap();
        assert_eq!(seen, ["Ping([112])", "Text(\"hello\")"]);
    }

    /// Broken frames are protocol errors, big ones 1009, bad text 1007.
    #[test]
    fn bad_frames_are_refused() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                vec![0x81, 0x00],
                DecodeError::Protocol("client frames must be masked"),
            ),
            (
                client(0x3, true, b""),
                DecodeError::Protocol("unknown opcode"),
            ),
            (
                client(0x9, false, b""),
                DecodeError::Protocol("bad control frame"),
            ),
            (
                client(0x0, true, b"x"),
                DecodeError::Protocol("continuation without a message"),
            ),
            (
                client(0x8, true, &[3]),
                DecodeError::Protocol("close frame of one byte"),
            ),
            (
                client(0x8, true, &[0x03, 0xED]),
                DecodeError::Protocol("invalid close code"),
            ),
            (client(0x1, true, &[0xff, 0xfe]), DecodeError::Utf8),
            (client(0x1, true, &[b'a'; 2000]), DecodeError::TooBig),
        ];
        for (mut wire, want) in cases {
            let mut d = Decoder::new(1024);
            assert_eq!(d.feed(&mut wire, &mut |_| true), Err(want));
        }
        let mut rsv = client(1, true, b"x");
        rsv[0] |= 0x40;
        let mut d = Decoder::new(1024);
        assert_eq!(
            d.feed(&mut rsv, &mut |_| true),
            Err(DecodeError::Protocol("reserved bits set"))
        );
    }

    /// Server frames carry the right header for every length class.
    #[test]
    fn server_frames_have_headers() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let f = Frame::text(&"a".repeat(len));
            let w = f.wire();
            assert_eq!(w[0], 0x81);
            assert_eq!(f.payload().len(), len);
            assert_eq!(
                f.len() - f.payload().len(),
                if len < 126 {
                    2
                } else if len <= 65535 {
                    4
                } else {
                    10
                }
            );
        }
        let c = Frame::close(4409, "resume");
        assert_eq!(&c.wire()[..4], &[0x88, 8, 0x11, 0x39]);
        // 123 bytes of reason would split a character: 122 are kept.
        assert_eq!(Frame::close(1000, &"é".repeat(100)).payload().len(), 124);
    }

    /// Unmasking eight bytes at a time matches the byte-wise definition.
    #[test]
    fn unmask_matches_definition() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..=50).collect();
        let mut fast = data.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(fast, slow);
    }
}
