//! Remote agent hosts in operation: device approval under `require`, the
//! `host list` command, a node restarted under a linked host, and a host
//! linked to one node of a PostgreSQL cluster serving submits on another,
//! and a timeout that stops the process on the host.

mod common;

use common::host::{LinkHost, process_gone, wait_hosts, wait_linked};
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use switchboard::config::FileConfig;
use switchboard::device::{TrustPolicy, proof_message};

const HECHO: &str = "[[agents]]\nname = \"hecho\"\nkind = \"echo\"\n";
const SLEEPER: &str = "[[agents]]\nname = \"sleeper\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $$; exec sleep 60\", \"{prompt}\"]\n";

/// A WebSocket session of the admin from a keyed, approved device, which
/// keeps full permissions under `require`.
async fn trusted_admin(s: &TestServer) -> WsClient {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = hex::encode(key.verifying_key().as_bytes());
    let (status, d) = s
        .post(
            "/api/devices",
            &s.admin,
            json!({"device_id": "admin-box", "public_key": public}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    let (status, d) = s
        .post("/api/devices/admin-box/approve", &s.admin, json!({}))
        .await;
    assert_eq!(status, 200, "{d}");
    let (_, c) = s.post("/api/devices/challenge", &s.admin, json!({})).await;
    let nonce = c["nonce"].as_str().unwrap();
    let sig = hex::encode(
        key.sign(proof_message(nonce, "admin", "admin-box").as_bytes())
            .to_bytes(),
    );
    let (ws, hello) = s
        .ws(
            &s.admin,
            json!({"device_id": "admin-box", "device_nonce": nonce, "device_signature": sig}),
        )
        .await;
    let perms: Vec<Value> = hello["permissions"].as_array().unwrap().clone();
    assert!(perms.contains(&json!("admin:users")), "{hello}");
    ws
}

/// Under `device_trust = "require"` a host whose device is not approved is
/// told so and waits, retrying; once an admin approves it, it links.
#[tokio::test]
async fn under_require_an_unapproved_host_waits_for_approval() {
    let mut file = FileConfig::default();
    file.security.device_trust = TrustPolicy::Require;
    let s = TestServer::spawn_with(file).await;
    let mut admin = trusted_admin(&s).await;
    let host = LinkHost::start(&s.base, "newbox", HECHO).await;
    host.wait_log("waiting for approval", 1).await;
    assert!(
        host.log()
            .contains("switchboard device approve host-newbox")
    );
    let (_, hosts) = s.get("/api/runtime/hosts", &s.admin).await;
    assert_eq!(hosts, json!([]));
    let approved = admin
        .ok(json!({"op": "device.approve", "device_id": "host-newbox"}))
        .await;
    assert_eq!(approved["state"], "trusted");
    host.wait_log("linked to", 1).await;
    let listed = wait_linked(&s.base, "newbox").await;
    assert_eq!(listed["device_id"], "host-newbox");
}

/// Over `https://` the host links with `wss://` and the same trust as the
/// other client commands: with `--ca-cert` for a private CA it links; without
/// it, it stops at once saying why (exit 3), rather than retrying forever.
#[tokio::test]
async fn a_host_links_over_tls_with_a_private_ca() {
    let s = TestServer::spawn().await;
    let pki = common::tls::make_pki("link test CA");
    let proxy = common::tls::tls_proxy(&s.base, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let untrusting = LinkHost::start(&proxy.base, "no-ca", HECHO).await;
    let (status, log) = untrusting.exited().await;
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("--ca-cert"), "{log}");
    let host = LinkHost::start_with(
        dir,
        &proxy.base,
        "tls-box",
        HECHO,
        ADMIN_TOKEN,
        &["--ca-cert", ca.to_str().unwrap()],
    );
    host.wait_log("linked to https://", 1).await;
    wait_linked(&s.base, "tls-box").await;
    let task = s
        .submit(
            &s.admin,
            json!({"agent_type": "hecho", "prompt": "over wss"}),
        )
        .await;
    let done = s
        .wait_terminal(&s.admin, task["task_id"].as_str().unwrap())
        .await;
    assert_eq!(done["result"], "over wss");
}

/// `switchboard host list --json` prints the hosts; any role with
/// `agent:list` (a guest too) may list them.
#[tokio::test]
async fn host_list_prints_the_hosts() {
    let s = TestServer::spawn().await;
    let guest = s.user("guest@team.com", &["guest"]).await;
    let _host = LinkHost::start(&s.base, "lister", HECHO).await;
    wait_linked(&s.base, "lister").await;
    let (status, hosts) = s.get("/api/runtime/hosts", &guest).await;
    assert_eq!(status, 200, "{hosts}");
    let cli = |json: bool| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        c.args(["host", "list", "--server", &s.base, "--token", &guest])
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("SWITCHBOARD_SERVER")
            .env_remove("SWITCHBOARD_TOKEN");
        if json {
            c.arg("--json");
        }
        c.output()
    };
    let out = cli(true).await.expect("run host list");
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "lister");
    assert_eq!(listed[0]["agents"][1]["agent_type"], "hecho");
    let out = cli(false).await.expect("run host list");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("lister") && table.contains("hecho (0/64)"),
        "{table}"
    );
    let nobody = s.user("nobody@team.com", &[]).await;
    let (status, _) = s.get("/api/runtime/hosts", &nobody).await;
    assert_eq!(status, 403);
}

/// A node killed and restarted under a linked host: the host links again
/// by itself; the task that was running is failed (tasks are not resumed
/// across a node restart) and the host stops its process.
#[tokio::test]
async fn a_node_restart_fails_running_hosted_tasks_and_the_host_relinks() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let listen = format!("127.0.0.1:{}", free_port());
    let node = BinaryServer::start_at(&db, &listen, &[]).await;
    let host = LinkHost::start(&node.base, "survivor", SLEEPER).await;
    host.wait_log("linked to", 1).await;
    let (status, task) = node
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "sleeper", "prompt": "zzz"}),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    let pid = loop {
        let (_, d) = node
            .get(&format!("/api/runtime/tasks/{id}"), ADMIN_TOKEN)
            .await;
        if let Some(chunk) = d["events"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e["chunk"].as_str())
        {
            break chunk.trim().parse::<u32>().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    node.kill9().await;
    let node = BinaryServer::start_at(&db, &listen, &[]).await;
    host.wait_log("linked to", 2).await;
    host.wait_log("no longer expects it", 1).await;
    let (_, state) = node
        .get(&format!("/api/runtime/tasks/{id}/state"), ADMIN_TOKEN)
        .await;
    assert_eq!(state["state"], "failed");
    assert!(
        state["error"].as_str().unwrap().contains("restarted"),
        "{state}"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    wait_hosts(&node.base, |l| l.iter().any(|h| h["name"] == "survivor")).await;
}

/// On a PostgreSQL cluster a host linked to node A serves a submit made on
/// node B: B lists A's hosted agent and the host, and the task completes
/// with its output in order; a skill only the host provides routes there.
#[tokio::test]
async fn a_host_linked_to_one_node_serves_submits_on_another() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[limits]\nlease_ms = 3000\n\n[[skills]]\nskill_id = \"hosted_skill\"\nname = \"Only a host has it\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let a = BinaryServer::start_url(&db.url, &["--node-id", "a", "--config", &config]).await;
    let b = BinaryServer::start_url(&db.url, &["--node-id", "b", "--config", &config]).await;
    let hecho = format!("{HECHO}capabilities = [\"hosted_skill\"]\n");
    let host = LinkHost::start(&a.base, "remote", &hecho).await;
    host.wait_log("linked to", 1).await;
    let on_b = wait_hosts(&b.base, |l| l.iter().any(|h| h["name"] == "remote")).await;
    assert_eq!(on_b[0]["node_id"], "a", "{on_b:?}");
    let (mut ws, _) = b.ws(ADMIN_TOKEN, json!({})).await;
    let prompt = "submitted on b, run on a host linked to a";
    let id = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "hecho", "prompt": prompt,
                    "params": {"chunk_size": 4}}),
        )
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = ws.until_terminal(&id).await;
    let output: String = events
        .iter()
        .filter_map(|e| e["data"]["chunk"].as_str())
        .collect();
    assert_eq!(output, prompt);
    assert_eq!(events.last().unwrap()["data"]["state"], "completed");
    let pinned = ws
        .ok(json!({"op": "task.submit", "agent_type": "echo@remote", "prompt": "pinned"}))
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = ws.until_terminal(&pinned).await;
    assert_eq!(events.last().unwrap()["data"]["state"], "completed");
    // A skill that only the host on A provides is listed and routes there
    // from B too.
    let (_, skills) = b.get("/api/runtime/skills", ADMIN_TOKEN).await;
    let skill = skills
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["skill_id"] == "hosted_skill")
        .unwrap();
    assert_eq!(
        skill["metadata"]["available_agents"],
        json!(["hecho"]),
        "{skill}"
    );
    let by_skill = ws
        .ok(json!({"op": "task.submit", "skill": "hosted_skill", "prompt": "by skill"}))
        .await;
    assert_eq!(by_skill["agent_type"], "hecho", "{by_skill}");
    let id = by_skill["task_id"].as_str().unwrap().to_owned();
    let events = ws.until_terminal(&id).await;
    assert_eq!(events.last().unwrap()["data"]["state"], "completed");
    host.wait_log("completed", 3).await;
}

/// A timeout reaches the host: a hosted agent's `timeout_ms` (and a task's
/// `params.timeout_ms` below it) fails the task with "timed out" and the
/// process on the host is stopped.
#[tokio::test]
async fn a_hosted_tasks_timeout_stops_it_on_the_host() {
    let s = TestServer::spawn().await;
    let config = format!("{SLEEPER}timeout_ms = 60000\n");
    let _host = LinkHost::start(&s.base, "slowbox", &config).await;
    wait_linked(&s.base, "slowbox").await;
    let (mut ws, _) = s.ws(&s.admin, json!({})).await;
    let id = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "sleeper", "prompt": "zzz",
                   "params": {"timeout_ms": 800}}),
        )
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = ws.until_terminal(&id).await;
    let pid: u32 = events
        .iter()
        .find_map(|e| e["data"]["chunk"].as_str())
        .expect("the sleeper printed its pid")
        .trim()
        .parse()
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["data"]["state"], "failed", "{last}");
    let (_, t) = s
        .get(&format!("/api/runtime/tasks/{id}/state"), &s.admin)
        .await;
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out"), "{t}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
