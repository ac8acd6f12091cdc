//! Device identity and trust, through the real server.

mod common;

use common::*;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use switchboard::device::{TrustPolicy, proof_message};

fn policy(p: TrustPolicy) -> FileConfig {
    let mut f = FileConfig::default();
    f.security.device_trust = p;
    f
}

async fn challenge(server: &TestServer, token: &str) -> String {
    let (status, c) = server
        .post("/api/devices/challenge", token, json!({}))
        .await;
    assert_eq!(status, 200, "{c}");
    c["nonce"].as_str().unwrap().to_owned()
}

fn sign(key: &SigningKey, nonce: &str, user: &str, device: &str) -> String {
    hex::encode(
        key.sign(proof_message(nonce, user, device).as_bytes())
            .to_bytes(),
    )
}

async fn hello(server: &TestServer, fields: Value) -> (WsClient, Value) {
    let mut ws = WsClient::connect(&server.ws_url).await;
    let mut op = json!({"op": "hello"});
    for (k, v) in fields.as_object().unwrap() {
        op[k] = v.clone();
    }
    let reply = ws.call(op).await;
    (ws, reply)
}

/// Register, list, approve, revoke; revoking ends the device's live
/// sessions at once; every step is audited.
#[tokio::test]
async fn registry_lifecycle() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (status, d) = server
        .post(
            "/api/devices",
            &dev,
            json!({"device_id": "laptop-1", "name": "Dev laptop"}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["state"], "pending");
    assert_eq!(d["user_id"], "dev@team.com");
    let (status, _) = server
        .post(
            "/api/devices",
            &server.admin,
            json!({"device_id": "laptop-1"}),
        )
        .await;
    assert_eq!(status, 409, "another user's device id");
    let (_, mine) = server.get("/api/devices", &dev).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (status, _) = server
        .post("/api/devices/laptop-1/approve", &dev, json!({}))
        .await;
    assert_eq!(status, 403, "approving needs admin:users");
    let (status, d) = server
        .post("/api/devices/laptop-1/approve", &server.admin, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(d["state"], "trusted");
    assert_eq!(d["decided_by"], "admin");

    let (mut ws, reply) = hello(&server, json!({"token": dev, "device_id": "laptop-1"})).await;
    assert_eq!(reply["ok"], true);
    let session = reply["result"]["session_id"].as_str().unwrap().to_owned();
    let presence = ws.ok(json!({"op": "presence.list"})).await;
    assert_eq!(presence[0]["device_id"], "laptop-1");
    let (status, d) = server
        .post("/api/devices/laptop-1/revoke", &server.admin, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(d["state"], "revoked");
    assert_eq!(ws.closed().await, Closed::Code(4401));
    let (_, s) = server
        .get(&format!("/api/runtime/sessions/{session}"), &dev)
        .await;
    assert_eq!(s["state"], "ended");
    let (_, reply) = hello(&server, json!({"token": dev, "device_id": "laptop-1"})).await;
    assert_eq!(reply["error"]["code"], "forbidden");
    let (_, audit) = server
        .get("/api/audit/events?resource_type=device", &server.admin)
        .await;
    let types: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    for t in ["device.registered", "device.trusted", "device.revoked"] {
        assert!(types.contains(&t), "{t} not in {types:?}");
    }
    server.stop().await;
}

/// A device with a key proves itself by signing a fresh nonce; a missing,
/// wrong or replayed signature fails with `device_proof_failed`.
#[tokio::test]
async fn keyed_devices_prove_themselves() {
    let server = TestServer::spawn().await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let key = SigningKey::from_bytes(&[9; 32]);
    let public = hex::encode(key.verifying_key().as_bytes());
    let (status, _) = server
        .post(
            "/api/devices",
            &dev,
            json!({"device_id": "phone", "public_key": public}),
        )
        .await;
    assert_eq!(status, 201);

    let (mut ws, reply) = hello(&server, json!({"token": dev, "device_id": "phone"})).await;
    assert_eq!(reply["error"]["code"], "device_proof_failed");
    assert_eq!(ws.closed().await, Closed::Code(4401));

    let nonce = challenge(&server, &dev).await;
    let bad = sign(
        &SigningKey::from_bytes(&[8; 32]),
        &nonce,
        "dev@team.com",
        "phone",
    );
    let (_, reply) = hello(
        &server,
        json!({"token": dev, "device_id": "phone", "device_nonce": nonce, "device_signature": bad}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "device_proof_failed");

    let nonce = challenge(&server, &dev).await;
    let good = sign(&key, &nonce, "dev@team.com", "phone");
    let (_, reply) = hello(&server, json!({"token": dev, "device_id": "phone", "device_nonce": nonce, "device_signature": good})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (_, replay) = hello(&server, json!({"token": dev, "device_id": "phone", "device_nonce": nonce, "device_signature": good})).await;
    assert_eq!(replay["error"]["code"], "device_proof_failed");
    assert!(
        replay["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    server.stop().await;
}

/// Register `device` of the token's user with `key`'s public half.
async fn register_keyed(server: &TestServer, token: &str, device: &str, key: &SigningKey) {
    let public = hex::encode(key.verifying_key().as_bytes());
    let (status, body) = server
        .post(
            "/api/devices",
            token,
            json!({"device_id": device, "public_key": public}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// `hello` from a keyed device, with a fresh signed nonce.
async fn keyed_hello(
    server: &TestServer,
    token: &str,
    user: &str,
    device: &str,
    key: &SigningKey,
) -> (WsClient, Value) {
    let nonce = challenge(server, token).await;
    let signature = sign(key, &nonce, user, device);
    hello(
        server,
        json!({"token": token, "device_id": device, "device_nonce": nonce, "device_signature": signature}),
    )
    .await
}

/// Under `require`, the first admin trusts their own (keyed) device first;
/// returns the id of a session opened from it.
async fn bootstrap_admin_device(server: &TestServer) -> String {
    let key = SigningKey::from_bytes(&[1; 32]);
    register_keyed(server, &server.admin, "admin-desk", &key).await;
    let (status, body) = server
        .post("/api/devices/admin-desk/approve", &server.admin, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, reply) = keyed_hello(server, &server.admin, "admin", "admin-desk", &key).await;
    reply["result"]["session_id"].as_str().unwrap().to_owned()
}

/// Under `require`, a stolen token alone cannot act: sessions from an
/// untrusted device get viewer permissions (WebSocket and REST) until an
/// admin:users holder on a trusted device approves it.
#[tokio::test]
async fn require_policy_caps_untrusted_devices() {
    let server = TestServer::spawn_with(policy(TrustPolicy::Require)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let admin_session = bootstrap_admin_device(&server).await;
    let laptop = SigningKey::from_bytes(&[3; 32]);
    register_keyed(&server, &dev, "new-laptop", &laptop).await;
    let (mut ws, reply) = keyed_hello(&server, &dev, "dev@team.com", "new-laptop", &laptop).await;
    let perms = reply["result"]["permissions"].as_array().unwrap().clone();
    assert!(!perms.contains(&json!("task:submit")), "{perms:?}");
    assert!(perms.contains(&json!("task:view")));
    let r = ws
        .call(json!({"op": "task.submit", "agent_type": "echo", "prompt": "x"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    // REST without a trusted session is capped too.
    let (status, _) = server
        .post(
            "/api/runtime/tasks/submit",
            &dev,
            json!({"agent_type": "echo", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 403);
    // A role change reaches the open connection but keeps the device cap.
    let promoted = server
        .req(
            reqwest::Method::POST,
            "/api/admin/users/dev@team.com/roles",
            Some(&server.admin),
        )
        .header("x-switchboard-session", &admin_session)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.status(), 200);
    let r = ws
        .call(json!({"op": "task.submit", "agent_type": "echo", "prompt": "x"}))
        .await;
    assert_eq!(
        r["error"]["code"], "forbidden",
        "a role change lifted the device cap"
    );
    // An admin without a trusted session cannot approve; with one it can.
    let (status, _) = server
        .post("/api/devices/new-laptop/approve", &server.admin, json!({}))
        .await;
    assert_eq!(status, 403);
    let approved = server
        .req(
            reqwest::Method::POST,
            "/api/devices/new-laptop/approve",
            Some(&server.admin),
        )
        .header("x-switchboard-session", &admin_session)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    let (mut ws, reply) = keyed_hello(&server, &dev, "dev@team.com", "new-laptop", &laptop).await;
    assert!(
        reply["result"]["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("task:submit"))
    );
    ws.ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "x"}))
        .await;
    let (_, audit) = send(
        server
            .req(
                reqwest::Method::GET,
                "/api/audit/events?event_type=device.untrusted",
                Some(&server.admin),
            )
            .header("x-switchboard-session", &admin_session),
    )
    .await;
    assert_eq!(audit[0]["user_id"], "dev@team.com", "{audit}");
    server.stop().await;
}

/// The stolen-token attack on `require`: a device id without a key is a
/// label anyone holding the token can type, so it cannot be approved into
/// trust, and naming it in `hello` with the admin's token gives no more
/// than the viewer permissions the token alone gets.
#[tokio::test]
async fn a_keyless_device_cannot_unlock_a_stolen_token() {
    let server = TestServer::spawn_with(policy(TrustPolicy::Require)).await;
    let admin_session = bootstrap_admin_device(&server).await;
    let (status, _) = server
        .post("/api/devices", &server.admin, json!({"device_id": "label"}))
        .await;
    assert_eq!(status, 201);
    let approved = server
        .req(
            reqwest::Method::POST,
            "/api/devices/label/approve",
            Some(&server.admin),
        )
        .header("x-switchboard-session", &admin_session)
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 409);
    let body: Value = approved.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no public key"), "{message}");
    let (_, reply) = hello(
        &server,
        json!({"token": server.admin, "device_id": "label"}),
    )
    .await;
    let perms = reply["result"]["permissions"].as_array().unwrap();
    assert!(!perms.contains(&json!("admin:users")), "{perms:?}");
    assert!(!perms.contains(&json!("task:submit")), "{perms:?}");
    server.stop().await;
}

/// Under `audit`, untrusted use is allowed and recorded.
#[tokio::test]
async fn audit_policy_records_untrusted_use() {
    let server = TestServer::spawn_with(policy(TrustPolicy::Audit)).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    let (mut ws, reply) = hello(&server, json!({"token": dev, "device_id": "cafe-pc"})).await;
    assert!(
        reply["result"]["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("task:submit"))
    );
    ws.ok(json!({"op": "task.submit", "agent_type": "echo", "prompt": "x"}))
        .await;
    let (_, audit) = server
        .get(
            "/api/audit/events?event_type=device.untrusted",
            &server.admin,
        )
        .await;
    assert_eq!(audit[0]["user_id"], "dev@team.com");
    assert_eq!(audit[0]["details"]["device_id"], "cafe-pc");
    let (_, devices) = server.get("/api/devices", &server.admin).await;
    assert_eq!(devices[0]["state"], "pending");
    server.stop().await;
}

/// Pending requests expire: an expired one cannot be approved.
#[tokio::test]
async fn pending_requests_expire() {
    let mut f = FileConfig::default();
    f.security.device_pending_ttl_secs = 1;
    let server = TestServer::spawn_with(f).await;
    let dev = server.user("dev@team.com", &["developer"]).await;
    server
        .post("/api/devices", &dev, json!({"device_id": "old"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, body) = server
        .post("/api/devices/old/approve", &server.admin, json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    server.stop().await;
}
