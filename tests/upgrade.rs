//! The two ways into `GET /ws`: a fresh connection whose first request is
//! the upgrade is answered by the node itself; anything else (a keep-alive
//! connection that served a request first, a head that arrives in pieces,
//! a refused upgrade) goes through hyper. Both must behave the same.

mod common;

use common::{TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The key of RFC 6455's example handshake and its answer.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upgrade request head for `/ws` with `extra` header lines.
fn upgrade_head(host: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// Read one HTTP response head (and, with a `Content-Length`, its body)
/// from `stream`, byte by byte so that nothing past it is consumed.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("timed out reading a response")
            .expect("connection ended in a response head");
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// Say hello (with `token`, if given) over an upgraded socket and return
/// the reply.
async fn hello(stream: TcpStream, token: Option<&str>) -> Value {
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let mut hello = json!({"op": "hello", "id": 1});
    if let Some(t) = token {
        hello["token"] = json!(t);
    }
    let hello = hello.to_string();
    ws.send(Message::text(hello)).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the hello reply")
            .expect("connection ended")
            .expect("ws error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Read the answer to an upgrade: a `101` with RFC 6455's accept value.
async fn expect_switch(stream: &mut TcpStream) {
    let (head, _) = read_response(stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let accept = format!("sec-websocket-accept: {ACCEPT}").to_ascii_lowercase();
    assert!(head.to_ascii_lowercase().contains(&accept), "{head}");
}

fn host(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// A fresh connection's upgrade gets a correct `101`, and `hello` works.
#[tokio::test]
async fn a_fresh_upgrade_is_answered_and_hello_works() {
    let server = TestServer::spawn().await;
    let mut stream = TcpStream::connect(host(&server)).await.unwrap();
    stream
        .write_all(upgrade_head(&host(&server), "").as_bytes())
        .await
        .unwrap();
    expect_switch(&mut stream).await;
    let reply = hello(stream, Some(&server.admin)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["user_id"], "admin");
    server.stop().await;
}

/// A connection that served a plain request first still upgrades (hyper's
/// way in), with the token in the upgrade's `Authorization` header.
#[tokio::test]
async fn an_upgrade_after_a_request_on_the_same_connection_works() {
    let server = TestServer::spawn().await;
    let h = host(&server);
    let mut stream = TcpStream::connect(&h).await.unwrap();
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {h}\r\n\r\n");
    stream.write_all(get.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("ok"), "{body}");
    let auth = format!("Authorization: Bearer {}\r\n", server.admin);
    stream
        .write_all(upgrade_head(&h, &auth).as_bytes())
        .await
        .unwrap();
    expect_switch(&mut stream).await;
    let reply = hello(stream, None).await;
    assert_eq!(reply["ok"], true, "{reply}");
    server.stop().await;
}

/// A head sent in two pieces is served whichever way it goes in.
#[tokio::test]
async fn an_upgrade_head_in_pieces_works() {
    let server = TestServer::spawn().await;
    let mut stream = TcpStream::connect(host(&server)).await.unwrap();
    let head = upgrade_head(&host(&server), "");
    let (a, b) = head.split_at(20);
    stream.write_all(a.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    stream.write_all(b.as_bytes()).await.unwrap();
    expect_switch(&mut stream).await;
    let reply = hello(stream, Some(&server.admin)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    server.stop().await;
}

/// Refused upgrades on a fresh connection get the node's error responses:
/// a missing version is `400 bad_request`, a foreign origin `403`, another
/// method `405`.
#[tokio::test]
async fn refused_fresh_upgrades_get_error_responses() {
    let server = TestServer::spawn().await;
    let h = host(&server);
    let no_version = upgrade_head(&h, "").replace("Sec-WebSocket-Version: 13\r\n", "");
    let foreign = upgrade_head(&h, "Origin: http://evil.example\r\n");
    let post = upgrade_head(&h, "Content-Length: 0\r\n").replace("GET /ws", "POST /ws");
    for (req, status, code) in [
        (no_version, "400", "bad_request"),
        (foreign, "403", "forbidden"),
        (post, "405", "bad_request"),
    ] {
        let mut stream = TcpStream::connect(&h).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    server.stop().await;
}

/// A token resolved a moment ago (and so remembered by the node) is
/// refused at once once revoked: the next `hello` with it fails.
#[tokio::test]
async fn a_revoked_token_is_refused_at_once_despite_the_cache() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (_ws, reply) = server.ws(&dev, json!({})).await;
    assert_eq!(reply["user_id"], "dev@team.com", "{reply}");
    let (status, _) = server
        .delete("/api/admin/users/dev@team.com/tokens", &server.admin)
        .await;
    assert_eq!(status, 200);
    let mut stream = TcpStream::connect(host(&server)).await.unwrap();
    stream
        .write_all(upgrade_head(&host(&server), "").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let reply = hello(stream, Some(&dev)).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    server.stop().await;
}
