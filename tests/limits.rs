//! Abuse limits: each gives a clear error, through the real server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::config::FileConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn config(edit: impl FnOnce(&mut FileConfig)) -> FileConfig {
    let mut f = FileConfig::default();
    edit(&mut f);
    f
}

/// Past the per-user submit rate: 429 `rate_limited` with Retry-After, and
/// an audit record naming the user.
#[tokio::test]
async fn submit_rate_is_limited_per_user() {
    let server = TestServer::spawn_with(config(|f| f.security.submits_per_minute = 3)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    for _ in 0..3 {
        server
            .submit(&dev, json!({"agent_type": "echo", "prompt": "x"}))
            .await;
    }
    let resp = server
        .req(
            reqwest::Method::POST,
            "/api/runtime/tasks/submit",
            Some(&dev),
        )
        .json(&json!({"agent_type": "echo", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user has their own budget.
    server
        .submit(&server.admin, json!({"agent_type": "echo", "prompt": "x"}))
        .await;
    let (_, audit) = server
        .get("/api/audit/events?event_type=rate.limited", &server.admin)
        .await;
    assert_eq!(audit[0]["user_id"], "dev@team.com");
    assert_eq!(audit[0]["status"], "denied");
    server.stop().await;
}

/// Too many unfinished tasks per user: 429.
#[tokio::test]
async fn unfinished_tasks_per_user_are_limited() {
    let server = TestServer::spawn_with(config(|f| f.security.max_active_tasks_per_user = 1)).await;
    server
        .submit(
            &server.admin,
            json!({"agent_type": "echo", "prompt": "x", "params": {"wait": true}}),
        )
        .await;
    let (status, body) = server
        .post(
            "/api/runtime/tasks/submit",
            &server.admin,
            json!({"agent_type": "echo", "prompt": "y"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    server.stop().await;
}

/// After too many failed authentications from one address, even a good
/// token is refused from it for a while (429), and each failure is audited
/// with the peer address.
#[tokio::test]
async fn failed_authentications_are_limited_per_address() {
    let server = TestServer::spawn_with(config(|f| f.security.auth_failures_per_minute = 3)).await;
    for _ in 0..3 {
        let (status, _) = server.get("/api/me", "sb_wrong").await;
        assert_eq!(status, 401);
    }
    let (status, body) = server.get("/api/me", &server.admin).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    server.stop().await;
    let server = TestServer::spawn().await;
    server.get("/api/me", "sb_wrong").await;
    let (_, audit) = server
        .get("/api/audit/events?event_type=auth.failed", &server.admin)
        .await;
    assert!(
        audit[0]["details"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{audit}"
    );
    server.stop().await;
}

/// Past the connections per user: an error reply, then close 4429.
#[tokio::test]
async fn connections_per_user_are_limited() {
    let server = TestServer::spawn_with(config(|f| f.security.max_connections_per_user = 2)).await;
    let (_a, _) = server.ws(&server.admin, json!({})).await;
    let (_b, _) = server.ws(&server.admin, json!({})).await;
    let mut c = WsClient::connect(&server.ws_url).await;
    let reply = c.call(json!({"op": "hello", "token": server.admin})).await;
    assert_eq!(reply["error"]["code"], "rate_limited");
    assert_eq!(c.closed().await, Closed::Code(4429));
    server.stop().await;
}

/// Frames past the per-connection rate get `rate_limited` replies; the
/// connection stays open and works once the rate drops.
#[tokio::test]
async fn frame_rate_is_limited_per_connection() {
    let server = TestServer::spawn_with(config(|f| f.security.frames_per_second = 5)).await;
    let (mut ws, _) = server.ws(&server.admin, json!({})).await;
    let mut limited = 0;
    for _ in 0..30 {
        let r = ws.call(json!({"op": "ping"})).await;
        if r["ok"] == false {
            assert_eq!(r["error"]["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ws.ok(json!({"op": "ping"})).await["pong"], true);
    server.stop().await;
}

/// A foreign browser Origin is refused with 403 before the upgrade; the
/// node's own origin, listed origins, and no Origin at all are allowed.
#[tokio::test]
async fn foreign_origins_cannot_open_sockets() {
    let server = TestServer::spawn_with(config(|f| {
        f.security.allowed_origins = vec!["https://dash.team.com".into()]
    }))
    .await;
    let host = server.base.trim_start_matches("http://").to_owned();
    for (origin, ok) in [
        (Some("http://evil.example".to_owned()), false),
        (Some(format!("http://{host}.evil.example")), false),
        (Some(format!("http://{host}")), true),
        (Some("https://dash.team.com".to_owned()), true),
        (None, true),
    ] {
        let mut req = server.ws_url.as_str().into_client_request().unwrap();
        if let Some(o) = &origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => assert!(ok, "{origin:?} should be refused"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!ok, "{origin:?} should be allowed");
                assert_eq!(resp.status(), 403);
            }
            Err(e) => panic!("{origin:?}: {e}"),
        }
    }
    server.stop().await;
}

/// A text frame that is not UTF-8 closes the connection with 1007.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::spawn().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // A masked text frame (FIN, opcode 1) whose payload is not UTF-8.
    let payload = [0xff, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // A close frame: 0x88, length, then the code.
    assert!(n >= 4, "no close frame");
    assert_eq!(buf[0], 0x88);
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1007);
    server.stop().await;
}

/// A token issued with a lifetime stops working when it ends: REST says
/// 401 and an open socket is closed with 4401.
#[tokio::test]
async fn expiring_tokens_end_open_sockets() {
    let server = TestServer::spawn().await;
    server.user("dev@team.com", &["developer"]).await;
    let (status, body) = server
        .post(
            "/api/admin/users/dev@team.com/tokens",
            &server.admin,
            json!({"expires_in_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["expires_at"].is_string());
    let token = body["token"].as_str().unwrap().to_owned();
    let (mut ws, _) = server.ws(&token, json!({})).await;
    assert_eq!(ws.closed().await, Closed::Code(4401));
    assert_eq!(server.get("/api/me", &token).await.0, 401);
    server.stop().await;
}

/// A peer that stops answering pings is dropped within two heartbeat
/// intervals (it disappears from presence).
#[tokio::test]
async fn silent_peers_are_dropped() {
    let server = TestServer::spawn_with(config(|f| f.limits.heartbeat_ms = 100)).await;
    let (ws, hello) = server.ws(&server.admin, json!({})).await;
    assert_eq!(hello["heartbeat_ms"], 100);
    let (_, presence) = server.get("/api/presence", &server.admin).await;
    assert_eq!(presence.as_array().unwrap().len(), 1);
    // Not reading means not answering pings.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, presence) = server.get("/api/presence", &server.admin).await;
        if presence.as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "silent peer never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);
    server.stop().await;
}

/// At most `max_subscriptions` streams per connection; re-subscribing to
/// one already followed does not count twice.
#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = TestServer::spawn_with(config(|f| f.limits.max_subscriptions = 2)).await;
    let (mut ws, hello) = server.ws(&server.admin, json!({})).await;
    let own = format!("session:{}", hello["session_id"].as_str().unwrap());
    let (_, other) = server.ws(&server.admin, json!({})).await;
    let other = format!("session:{}", other["session_id"].as_str().unwrap());
    ws.ok(json!({"op": "subscribe", "stream": other})).await;
    ws.ok(json!({"op": "subscribe", "stream": own, "after_seq": 0}))
        .await;
    let r = ws.call(json!({"op": "subscribe", "stream": "audit"})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2")
    );
    ws.ok(json!({"op": "unsubscribe", "stream": other})).await;
    ws.ok(json!({"op": "subscribe", "stream": "audit"})).await;
    server.stop().await;
}

/// Tokens never reach the log: not from REST headers, not from `hello`,
/// not from failed attempts.
#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let node = BinaryServer::start(&db_in(&dir), &[]).await;
    let client = http();
    let wrong = "sb_this_token_is_wrong_and_secret";
    for token in [ADMIN_TOKEN, wrong] {
        let _ = client
            .get(format!("{}/api/me", node.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let mut ws = WsClient::connect(&node.ws_url).await;
        let _ = ws.call(json!({"op": "hello", "token": token})).await;
    }
    let created: serde_json::Value = client
        .post(format!("{}/api/admin/users", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"user_id": "dev@team.com", "roles": ["developer"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issued = created["token"].as_str().unwrap().to_owned();
    let mut ws = WsClient::connect(&node.ws_url).await;
    ws.call(json!({"op": "hello", "token": issued})).await;
    // Stop gracefully so every log line is written.
    let pid = node.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut child = node.child;
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = node.log.lock().unwrap().clone();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    for secret in [ADMIN_TOKEN, wrong, issued.as_str()] {
        assert!(!log.contains(secret), "a token is in the log:\n{log}");
    }
}

/// A request answered before a handler would read its body (an unknown
/// method or route, no token, a bad path parameter) has its body read
/// first: the server asks for it (`100 Continue`) before answering, so the
/// keep-alive connection still serves the next request. An oversize body
/// is refused with `Connection: close`.
#[tokio::test]
async fn early_answers_keep_the_connection_usable() {
    let server = TestServer::spawn().await;
    let addr = server.base.strip_prefix("http://").unwrap().to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    let body = r#"{"name":"n","key":"K"}"#;
    let bearer = format!("Authorization: Bearer {}\r\n", server.admin);
    for (method, path, auth, want) in [
        ("PUT", "/api/projects", bearer.as_str(), 405),
        ("POST", "/api/no/such/route", bearer.as_str(), 404),
        ("PATCH", "/api/projects/abc", bearer.as_str(), 400),
        ("POST", "/api/projects", "", 401),
    ] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let (status, _) = read_response(&mut conn, &mut buf).await;
        assert_eq!(
            status, 100,
            "{method} {path} was answered before its body was read"
        );
        conn.write_all(body.as_bytes()).await.unwrap();
        let (status, text) = read_response(&mut conn, &mut buf).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 200);

    let big = 2 << 20;
    let head =
        format!("POST /api/projects HTTP/1.1\r\nHost: t\r\n{bearer}Content-Length: {big}\r\n\r\n");
    // Only the head: the declared length alone is refused, and no unread
    // bytes are left behind to turn the close into a reset.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (status, text) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

/// Read one HTTP/1.1 response from `conn` (bytes past it stay in `buf`):
/// its status and its text, head and body.
async fn read_response(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, conn.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "the connection was closed: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(WAIT, conn.read(&mut chunk))
            .await
            .expect("a body in time")
            .unwrap();
        assert!(n > 0, "the connection was closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf[..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    (status, text)
}
