//! The socket side of a connection: reading into a per-thread scratch
//! buffer and decoding in place, and writing queued frames with one
//! vectored write.
//!
//! An idle connection holds no buffer: reads go into the worker thread's
//! scratch buffer (uWebSockets keeps one receive buffer per event loop for
//! the same reason), and the write queue holds references to frames that
//! are shared with every other subscriber.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ws::frame::{DecodeError, Decoder, Frame, Incoming};

/// Bytes read per system call.
const SCRATCH: usize = 64 * 1024;
/// Frames written per system call.
const MAX_SLICES: usize = 64;
/// Reads per poll before letting other connections run.
const READS_PER_POLL: usize = 4;
/// Unsent bytes the kernel may hold for a socket (`TCP_NOTSENT_LOWAT`).
/// Without it the kernel takes up to its send buffer (MiBs) and wakes a
/// writer only once half of that is free: a peer reading slowly could be
/// acknowledging data for many heartbeats before the node saw any sign of
/// it, and a ping would wait behind all of it. With it, a writer is woken
/// each time the peer has taken a few KiB, which [`Io::last_seen`] counts.
const NOTSENT_LOWAT: u32 = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Run `f` with this thread's scratch buffer (not across an `.await`).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH_BUF.with_borrow_mut(|buf| f(&mut buf[..]))
}

/// Why reading ended.
#[derive(Debug)]
pub(super) enum ReadEnd {
    /// The peer closed the TCP connection (or it broke).
    Gone,
    /// The peer sent something that ends the connection.
    Decode(DecodeError),
}

/// A connection's socket, decoder and write queue.
pub(super) struct Io {
    stream: TcpStream,
    decoder: Decoder,
    /// Bytes hyper read past the upgrade request, decoded first.
    leftover: Bytes,
    out: VecDeque<Bytes>,
    /// How much of `out`'s first frame is written.
    written: usize,
    /// Bytes queued and not yet written.
    pub out_bytes: usize,
    /// The last write found the socket full.
    blocked: bool,
    /// When the peer last showed life: a read, or a full socket draining
    /// (the peer acknowledged data).
    pub last_seen: Instant,
}

impl Io {
    /// Wrap an upgraded socket. `leftover` is copied out: it is a slice of
    /// hyper's read buffer and would keep all of it alive.
    pub fn new(stream: TcpStream, leftover: Bytes, max_message: usize) -> Self {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        Io {
            stream,
            decoder: Decoder::new(max_message),
            leftover: if leftover.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&leftover)
            },
            out: VecDeque::new(),
            written: 0,
            out_bytes: 0,
            blocked: false,
            last_seen: Instant::now(),
        }
    }

    /// Queue a frame for writing.
    pub fn queue(&mut self, frame: &Frame) {
        self.out_bytes += frame.len();
        self.out.push_back(frame.wire().clone());
    }

    /// Queue a control frame (a ping) ahead of the frames not yet begun,
    /// so that it waits only for the frame on the wire, not for a backlog.
    pub fn queue_first(&mut self, frame: &Frame) {
        self.out_bytes += frame.len();
        let at = usize::from(self.written > 0).min(self.out.len());
        self.out.insert(at, frame.wire().clone());
    }

    /// Read what the socket has and decode it, calling `on` for each
    /// message until it returns false. Pending when nothing was there.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        on: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Poll<Result<(), ReadEnd>> {
        if !self.leftover.is_empty() {
            let mut first = std::mem::take(&mut self.leftover).to_vec();
            self.last_seen = Instant::now();
            return Poll::Ready(self.decoder.feed(&mut first, on).map_err(ReadEnd::Decode));
        }
        let mut progressed = false;
        // Once `on` has said stop, read no more: what the read brought
        // past that message waits in the decoder (`decode_buffered`), and a
        // further read would hand `on` messages it refused (a `task.submit`
        // sent right behind `hello` would replace it).
        let stopped = std::cell::Cell::new(false);
        let on = &mut |m: Incoming<'_>| {
            let go = on(m);
            stopped.set(!go);
            go
        };
        for _ in 0..READS_PER_POLL {
            if stopped.get() {
                break;
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ReadEnd::Gone)),
                Poll::Ready(Ok(())) => {}
            }
            match self.read_once(on) {
                Ok(true) => progressed = true,
                Ok(false) => return Poll::Ready(Err(ReadEnd::Gone)),
                Err(ReadError::WouldBlock) => continue,
                Err(ReadError::Gone) => return Poll::Ready(Err(ReadEnd::Gone)),
                Err(ReadError::Decode(e)) => return Poll::Ready(Err(ReadEnd::Decode(e))),
            }
        }
        if progressed {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Decode messages left over from an earlier read that stopped early.
    pub fn decode_buffered(
        &mut self,
        on: &mut impl FnMut(Incoming<'_>) -> bool,
    ) -> Result<(), ReadEnd> {
        if !self.decoder.is_mid_frame() {
            return Ok(());
        }
        self.decoder.feed(&mut [], on).map_err(ReadEnd::Decode)
    }

    /// One `read` into the scratch buffer; false at end of stream.
    fn read_once(&mut self, on: &mut impl FnMut(Incoming<'_>) -> bool) -> Result<bool, ReadError> {
        SCRATCH_BUF.with_borrow_mut(|buf| match self.stream.try_read(buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.last_seen = Instant::now();
                self.decoder
                    .feed(&mut buf[..n], on)
                    .map_err(ReadError::Decode)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ReadError::WouldBlock),
            Err(_) => Err(ReadError::Gone),
        })
    }

    /// Write queued frames until the queue is empty (Ready) or the socket
    /// is full (Pending).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match self.stream.poll_write_ready(cx) {
                Poll::Pending => {
                    self.blocked = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (i, b) in self.out.iter().take(MAX_SLICES).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &b[self.written..] } else { b });
                n = i + 1;
            }
            match self.stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    if self.blocked {
                        // The socket was full and drains: the peer is reading.
                        self.blocked = false;
                        self.last_seen = Instant::now();
                    }
                    self.advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // An idle connection keeps no buffer.
        self.out = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.out_bytes -= n;
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.out.pop_front();
        }
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Read until `on` returns false, the peer closes, or an error.
    pub async fn read(&mut self, on: &mut impl FnMut(Incoming<'_>) -> bool) -> Result<(), ReadEnd> {
        std::future::poll_fn(|cx| self.poll_read(cx, on)).await
    }

    /// Drop what is queued (the peer is gone or we are closing anyway).
    pub fn discard_queue(&mut self) {
        self.out.clear();
        self.out_bytes = 0;
        self.written = 0;
    }

    /// Whether part of a frame is on the wire (it must be finished before
    /// anything else is written).
    pub fn mid_write(&self) -> bool {
        self.written > 0
    }

    /// Half-close the TCP connection.
    pub async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
    }
}

enum ReadError {
    WouldBlock,
    Gone,
    Decode(DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::Incoming;
    use tokio::io::AsyncWriteExt;

    /// A client frame: masked (with a zero mask, so the payload is as is).
    fn client_text(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        f
    }

    /// A consumer that says stop after one message gets that message, not
    /// the next one a further read of the same poll would bring (the bug
    /// that let a `task.submit` sent right behind `hello` take its place).
    #[tokio::test]
    async fn a_read_stops_where_the_consumer_said_stop() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // The first message fills the scratch buffer exactly, so that the
        // second one can only come with a second read.
        let first = client_text(&vec![b'a'; SCRATCH - 14]);
        assert_eq!(first.len(), SCRATCH);
        client.write_all(&first).await.unwrap();
        client.write_all(&client_text(b"second")).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let mut io = Io::new(server, Bytes::new(), 1 << 20);
        let mut got = Vec::new();
        // Record text lengths; `go` is what the consumer answers.
        let read = async |io: &mut Io, got: &mut Vec<usize>, go: bool| {
            io.read(&mut |m| {
                if let Incoming::Text(t) = m {
                    got.push(t.len());
                }
                go
            })
            .await
            .unwrap();
        };
        read(&mut io, &mut got, false).await;
        assert_eq!(got, vec![SCRATCH - 14]);
        // The second message waits for the next read.
        read(&mut io, &mut got, true).await;
        assert_eq!(got, vec![SCRATCH - 14, 6]);
    }
}
