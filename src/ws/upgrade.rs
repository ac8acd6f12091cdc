//! The upgrade request: the checks every `GET /ws` passes (method,
//! `Upgrade`, version, key, `Origin`), and the node's own answer to a
//! fresh connection whose first request is that upgrade.
//!
//! A dashboard wall reconnecting, or a load test, opens thousands of
//! sockets at once, and each spent more in hyper (a connection object, its
//! 8 KiB read buffer and write buffer, a second task for the upgraded
//! socket) than in its own `hello`. So the accept loop first peeks at the
//! request head in the thread's scratch buffer: a complete, valid upgrade
//! of `/ws` is answered here with the `101` and the connection goes on
//! without hyper; anything else (another path, a head that has not fully
//! arrived, a refused upgrade, which needs its error response) is left
//! unread in the socket and served by hyper as before, with the same
//! checks (see [`check`]).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, header};
use bytes::Bytes;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::error::Error;
use crate::ws::{connection, io::with_scratch};

/// Longest request head answered here; longer ones go to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most here; more go to hyper.
const MAX_HEADERS: usize = 32;

/// Header lookup over hyper's [`HeaderMap`] and a head parsed in place.
pub(super) trait Headers {
    /// Every value of header `name`, as sent.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;

    /// The first value of `name` when it is text (visible ASCII, as
    /// `HeaderValue::to_str` has it).
    fn text<'a>(&'a self, name: &'a HeaderName) -> Option<&'a str> {
        let v = self.values(name).next()?;
        let visible = v.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
        visible.then(|| std::str::from_utf8(v).ok()).flatten()
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(|v| v.as_bytes())
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
}

/// What a valid upgrade request gives.
pub(super) struct Valid {
    /// The `Sec-WebSocket-Accept` answering its key.
    pub accept: String,
    /// The bearer token of its `Authorization` header, if any.
    pub token: Option<String>,
}

/// Why an upgrade request is refused.
pub(super) enum Refused {
    /// A browser page from a foreign origin.
    Origin,
    /// Not a usable WebSocket upgrade.
    Bad(Error),
}

/// Check an upgrade request's headers (the method and path are the
/// caller's). The one home of these checks, for both ways in.
pub(super) fn check(h: &(impl Headers + ?Sized), allowed: &[String]) -> Result<Valid, Refused> {
    if !origin_allowed(h, allowed) {
        return Err(Refused::Origin);
    }
    let key = upgrade_key(h).map_err(Refused::Bad)?;
    let token = h
        .text(&header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    Ok(Valid {
        accept: tungstenite::handshake::derive_accept_key(key),
        token,
    })
}

/// Whether a browser `Origin` may open a socket: the node's own origin
/// (same host as the `Host` header) or one listed in
/// `[security] allowed_origins`, compared exactly. Clients that send no
/// `Origin` (non-browsers) are allowed and authenticate by token as usual.
fn origin_allowed(h: &(impl Headers + ?Sized), allowed: &[String]) -> bool {
    if h.values(&header::ORIGIN).next().is_none() {
        return true;
    }
    let Some(origin) = h.text(&header::ORIGIN) else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = h.text(&header::HOST).unwrap_or("");
    let own = |scheme: &str| origin.strip_prefix(scheme) == Some(host);
    !host.is_empty() && (own("http://") || own("https://"))
}

/// Whether a header holds `token` in its comma-separated list (any case).
fn has_token(h: &(impl Headers + ?Sized), name: &HeaderName, token: &str) -> bool {
    h.values(name).any(|v| {
        std::str::from_utf8(v)
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The `Sec-WebSocket-Key` of a valid upgrade request.
pub(super) fn upgrade_key(h: &(impl Headers + ?Sized)) -> Result<&[u8], Error> {
    if !has_token(h, &header::CONNECTION, "upgrade") || !has_token(h, &header::UPGRADE, "websocket")
    {
        return Err(Error::BadRequest(
            "this is the WebSocket endpoint: send an Upgrade: websocket request".into(),
        ));
    }
    if h.values(&header::SEC_WEBSOCKET_VERSION).next() != Some(&b"13"[..]) {
        return Err(Error::BadRequest(
            "only WebSocket version 13 is supported".into(),
        ));
    }
    h.values(&header::SEC_WEBSOCKET_KEY)
        .next()
        .ok_or_else(|| Error::BadRequest("Sec-WebSocket-Key is missing".into()))
}

/// What the first bytes of a fresh connection are.
enum Head {
    /// A complete, valid `GET /ws` upgrade of `len` bytes.
    Upgrade(usize, Valid),
    /// Anything else: for hyper.
    Other,
    /// The peer closed or the socket broke.
    Gone,
}

/// Serve a fresh connection whose first request is a valid WebSocket
/// upgrade of `/ws` without hyper (until it closes); otherwise give the
/// socket back, its bytes unread, for hyper. `None` when it was served
/// here, or ended (the peer left, `header_timeout` passed, the node stops).
pub async fn serve_fresh(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &AppState,
    header_timeout: Duration,
    stop: &CancellationToken,
) -> Option<TcpStream> {
    let allowed = &state.runtime.security().allowed_origins;
    let head = tokio::select! {
        head = poll_fn(|cx| peek_head(&stream, cx, allowed)) => head,
        _ = tokio::time::sleep(header_timeout) => Head::Gone,
        _ = stop.cancelled() => Head::Gone,
    };
    let (len, valid) = match head {
        Head::Upgrade(len, valid) => (len, valid),
        Head::Other => return Some(stream),
        Head::Gone => return None,
    };
    if !consume(&stream, len).await {
        return None;
    }
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        valid.accept
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return None;
    }
    connection::run(stream, Bytes::new(), state.clone(), valid.token, peer).await;
    None
}

/// Peek at what has arrived (into the thread's scratch buffer, leaving it
/// in the socket) and say what it is.
fn peek_head(
    stream: &TcpStream,
    cx: &mut std::task::Context<'_>,
    allowed: &[String],
) -> Poll<Head> {
    with_scratch(|scratch| {
        let mut buf = ReadBuf::new(&mut scratch[..MAX_HEAD]);
        match stream.poll_peek(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Head::Gone),
            Poll::Ready(Ok(_)) => Poll::Ready(parse_head(buf.filled(), allowed)),
        }
    })
}

/// A complete, valid upgrade of `/ws` in `bytes`, or [`Head::Other`].
fn parse_head(bytes: &[u8], allowed: &[String]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(bytes) else {
        return Head::Other;
    };
    let path = req.path.and_then(|p| p.split('?').next());
    if req.method != Some("GET") || req.version != Some(1) || path != Some("/ws") {
        return Head::Other;
    }
    match check(req.headers, allowed) {
        Ok(valid) => Head::Upgrade(len, valid),
        Err(_) => Head::Other,
    }
}

/// Read (and drop) the `len` bytes of the head peeked at.
async fn consume(stream: &TcpStream, mut len: usize) -> bool {
    while len > 0 {
        if stream.readable().await.is_err() {
            return false;
        }
        match with_scratch(|scratch| stream.try_read(&mut scratch[..len.min(MAX_HEAD)])) {
            Ok(0) => return false,
            Ok(n) => len -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}
