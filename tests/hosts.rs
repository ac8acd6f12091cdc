//! Remote agent hosts: real `switchboard link` processes linked to a real
//! node over real sockets run its tasks: output in order and exactly once,
//! per-host concurrency and spreading, cancel, waiting and respond, a link
//! cut and restored within the grace period, a host gone past it, and the
//! listing of hosts.

mod common;

use std::time::Duration;

use common::host::{LinkHost, Proxy, process_gone, wait_hosts, wait_linked};
use common::*;
use serde_json::{Value, json};
use switchboard::config::FileConfig;

/// A host config with an echo agent `hecho` (besides the built-in `echo`).
const HECHO: &str = "[[agents]]\nname = \"hecho\"\nkind = \"echo\"\ndescription = \"echo on a host\"\ncapabilities = [\"hosted_skill\"]\n";

/// A host config with a `sleeper` that prints its pid, then sleeps.
fn sleeper(max: usize) -> String {
    format!(
        "[[agents]]\nname = \"sleeper\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $$; exec sleep 60\", \"{{prompt}}\"]\nmax_concurrent = {max}\n"
    )
}

/// A node whose hosts have `grace_ms` to come back.
async fn node(grace_ms: u64) -> TestServer {
    let mut file = FileConfig::default();
    file.link.grace_ms = grace_ms;
    TestServer::spawn_with(file).await
}

/// The states and the joined output of a task's events.
fn states_and_output(events: &[Value]) -> (Vec<String>, String) {
    let states = events
        .iter()
        .filter(|e| e["type"] == "task.state" || e["event_type"] == "state_change")
        .map(|e| {
            e["data"]["state"]
                .as_str()
                .or(e["state"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect();
    let output = events
        .iter()
        .filter_map(|e| e["data"]["chunk"].as_str().or(e["chunk"].as_str()))
        .collect();
    (states, output)
}

/// Submit as the admin and return the task id.
async fn submit(s: &TestServer, body: Value) -> String {
    s.submit(&s.admin, body).await["task_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A hosted echo task completes with all its output, in order, each chunk
/// once; the agents list shows the hosted agent with its host, skills route
/// to it, `agent@host` pins the host, and linking is audited.
#[tokio::test]
async fn a_hosted_echo_task_completes_with_its_output_in_order() {
    let file = FileConfig::parse(
        "[[skills]]\nskill_id = \"hosted_skill\"\nname = \"A skill only a host has\"\n",
    )
    .unwrap();
    let s = TestServer::spawn_with(file).await;
    let host = LinkHost::start(&s.base, "laptop", HECHO).await;
    let listed = wait_linked(&s.base, "laptop").await;
    assert_eq!(listed["user_id"], "admin");
    assert_eq!(listed["device_id"], "host-laptop");
    let names: Vec<_> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "hecho"]);
    host.wait_log("linked to", 1).await;

    let (_, agents) = s.get("/api/runtime/agents", &s.admin).await;
    let hecho = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_type"] == "hecho")
        .expect("hecho listed");
    assert_eq!(hecho["available"], true);
    assert_eq!(hecho["metadata"]["host"], "laptop");

    let (mut ws, _) = s.ws(&s.admin, json!({})).await;
    let prompt = "a hosted echo streams every chunk back, once and in order";
    let id = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "hecho", "prompt": prompt,
                    "params": {"chunk_size": 3}}),
        )
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = ws.until_terminal(&id).await;
    let (states, output) = states_and_output(&events);
    assert_eq!(states, ["pending", "planning", "running", "completed"]);
    assert_eq!(output, prompt);
    let (_, detail) = s.get(&format!("/api/runtime/tasks/{id}"), &s.admin).await;
    assert_eq!(detail["result"], prompt);
    let seqs: Vec<i64> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let (_, from_store) = states_and_output(detail["events"].as_array().unwrap());
    assert_eq!(from_store, prompt);

    // The skill lists the hosted agent by its capabilities and routes to it;
    // `echo@laptop` is the host's own echo, not the node's.
    let (_, skills) = s.get("/api/runtime/skills", &s.admin).await;
    assert_eq!(skills[0]["agents"], json!(["hecho"]), "{skills}");
    let by_skill = submit(&s, json!({"skill": "hosted_skill", "prompt": "x"})).await;
    let pinned = submit(&s, json!({"agent_type": "echo@laptop", "prompt": "pinned"})).await;
    for t in [&by_skill, &pinned] {
        let done = s.wait_terminal(&s.admin, t).await;
        assert_eq!(done["state"], "completed", "{done}");
        let (_, d) = s.get(&format!("/api/runtime/tasks/{t}"), &s.admin).await;
        assert!(d["events"].as_array().unwrap().len() >= 5, "{d}");
    }
    host.wait_log("completed", 3).await;
    let (_, audit) = s
        .get("/api/audit/events?event_type=host.linked", &s.admin)
        .await;
    assert_eq!(audit[0]["resource_id"], "laptop", "{audit}");
    assert_eq!(audit[0]["user_id"], "admin");
    drop(host);
}

/// Each host's `max_concurrent` holds and work spreads over the hosts
/// offering the same agent; the surplus waits in `pending`.
#[tokio::test]
async fn max_concurrent_holds_and_work_spreads_over_hosts() {
    let s = node(60_000).await;
    let a = LinkHost::start(&s.base, "box-a", &sleeper(2)).await;
    let b = LinkHost::start(&s.base, "box-b", &sleeper(2)).await;
    wait_linked(&s.base, "box-a").await;
    wait_linked(&s.base, "box-b").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            submit(
                &s,
                json!({"agent_type": "sleeper", "prompt": format!("t{i}")}),
            )
            .await,
        );
    }
    let hosts = wait_hosts(&s.base, |l| {
        l.iter()
            .map(|h| h["running"].as_u64().unwrap())
            .sum::<u64>()
            == 4
    })
    .await;
    for h in &hosts {
        assert_eq!(h["running"], 2, "{h}");
    }
    let mut states = Vec::new();
    for id in &ids {
        let (_, t) = s
            .get(&format!("/api/runtime/tasks/{id}/state"), &s.admin)
            .await;
        states.push(t["state"].as_str().unwrap().to_owned());
    }
    states.sort();
    assert_eq!(
        states.iter().filter(|s| *s == "pending").count(),
        1,
        "{states:?}"
    );
    // Cancelling a running one lets the pending one run.
    let (_, first) = s
        .get(&format!("/api/runtime/tasks/{}/state", ids[0]), &s.admin)
        .await;
    assert_eq!(first["state"], "running", "the first submitted runs first");
    let (status, _) = s.cancel(&s.admin, &ids[0]).await;
    assert_eq!(status, 200);
    for id in &ids[1..] {
        s.wait_state(&s.admin, id, "running").await;
    }
    for id in &ids[1..] {
        s.cancel(&s.admin, id).await;
    }
    wait_hosts(&s.base, |l| l.iter().all(|h| h["running"] == 0)).await;
    drop((a, b));
}

/// Cancelling a hosted task stops the host's process.
#[tokio::test]
async fn cancel_stops_the_process_on_the_host() {
    let s = node(60_000).await;
    let host = LinkHost::start(&s.base, "builder", &sleeper(1)).await;
    wait_linked(&s.base, "builder").await;
    let (mut ws, _) = s.ws(&s.admin, json!({})).await;
    let id = ws
        .ok(json!({"op": "task.submit", "agent_type": "sleeper", "prompt": "zzz"}))
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = ws
        .events_until(|e| e["task_id"] == id && e["type"] == "task.output")
        .await;
    let pid: u32 = first.last().unwrap()["data"]["chunk"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(pid));
    let reply = ws.ok(json!({"op": "task.cancel", "task_id": id})).await;
    assert_eq!(reply["state"], "cancelled");
    host.wait_log("stopped by the node", 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, t) = s
        .get(&format!("/api/runtime/tasks/{id}/state"), &s.admin)
        .await;
    assert_eq!(t["state"], "cancelled");
}

/// `waiting` and `respond` are relayed both ways: an approve lets the
/// host's agent go on, a deny fails it; an agent with `approval = true` on
/// the host asks first.
#[tokio::test]
async fn waiting_and_respond_are_relayed() {
    let s = node(60_000).await;
    let config =
        format!("{HECHO}\n[[agents]]\nname = \"gated\"\nkind = \"echo\"\napproval = true\n");
    let _host = LinkHost::start(&s.base, "gpu", &config).await;
    wait_linked(&s.base, "gpu").await;
    let yes = submit(
        &s,
        json!({"agent_type": "hecho", "prompt": "yes please", "params": {"wait": true}}),
    )
    .await;
    let no = submit(
        &s,
        json!({"agent_type": "hecho", "prompt": "no thanks", "params": {"wait": true}}),
    )
    .await;
    let gated = submit(&s, json!({"agent_type": "gated", "prompt": "gated"})).await;
    for id in [&yes, &no, &gated] {
        s.wait_state(&s.admin, id, "waiting").await;
    }
    let (_, detail) = s
        .get(&format!("/api/runtime/tasks/{gated}"), &s.admin)
        .await;
    let asked = detail["events"].as_array().unwrap().last().unwrap()["message"].clone();
    assert!(
        asked.as_str().unwrap().contains("approval required"),
        "{asked}"
    );
    for (id, approve) in [(&yes, true), (&no, false), (&gated, true)] {
        let (status, body) = s
            .post(
                &format!("/api/runtime/tasks/{id}/respond"),
                &s.admin,
                json!({"approve": approve}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let done = s.wait_terminal(&s.admin, &yes).await;
    assert_eq!(
        (done["state"].as_str(), done["result"].as_str()),
        (Some("completed"), Some("yes please"))
    );
    let done = s.wait_terminal(&s.admin, &no).await;
    assert_eq!(done["state"], "failed");
    let done = s.wait_terminal(&s.admin, &gated).await;
    assert_eq!(done["state"], "completed", "{done}");
}

/// A link cut mid-stream and restored within the grace period: the task
/// completes, and its stored output is what the agent produced, byte for
/// byte, each chunk once.
#[tokio::test]
async fn a_cut_link_restored_within_grace_loses_and_doubles_nothing() {
    let s = node(60_000).await;
    let proxy = Proxy::start(s.base.trim_start_matches("http://")).await;
    let host = LinkHost::start(&proxy.base, "flaky", HECHO).await;
    wait_linked(&s.base, "flaky").await;
    let prompt: String = (0..120).map(|i| format!("<{i:03}>")).collect();
    let (mut ws, _) = s.ws(&s.admin, json!({})).await;
    let id = ws
        .ok(
            json!({"op": "task.submit", "agent_type": "hecho", "prompt": prompt,
                    "params": {"chunk_size": 5, "delay_ms": 10}}),
        )
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.events_until(|e| e["task_id"] == id && e["type"] == "task.output")
        .await;
    proxy.cut();
    // The host notices, comes back through the proxy and resends.
    host.wait_log("reconnecting", 1).await;
    host.wait_log("resuming 1 task", 1).await;
    let done = s.wait_terminal(&s.admin, &id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let (_, detail) = s.get(&format!("/api/runtime/tasks/{id}"), &s.admin).await;
    let (states, output) = states_and_output(detail["events"].as_array().unwrap());
    assert_eq!(states, ["pending", "planning", "running", "completed"]);
    assert_eq!(output, prompt, "output lost or doubled across the cut");
    let chunks = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "output")
        .count();
    assert_eq!(chunks, prompt.len() / 5);
}

/// A host killed mid-task that does not come back: past the grace period
/// its task fails with an error naming it, and it leaves the list.
#[tokio::test]
async fn past_the_grace_a_lost_hosts_task_fails_naming_it() {
    let s = node(1_500).await;
    let host = LinkHost::start(&s.base, "doomed", &sleeper(1)).await;
    wait_linked(&s.base, "doomed").await;
    let id = submit(&s, json!({"agent_type": "sleeper", "prompt": "zzz"})).await;
    s.wait_state(&s.admin, &id, "running").await;
    host.kill9().await;
    wait_hosts(&s.base, |l| l.iter().any(|h| h["state"] == "away")).await;
    let done = s.wait_terminal(&s.admin, &id).await;
    assert_eq!(done["state"], "failed");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("doomed"), "{error}");
    wait_hosts(&s.base, |l| l.is_empty()).await;
    let (_, audit) = s
        .get("/api/audit/events?event_type=host.unlinked", &s.admin)
        .await;
    assert_eq!(audit[0]["resource_id"], "doomed", "{audit}");
}

/// A host stopped with SIGTERM reports its running task failed and exits 0.
#[tokio::test]
async fn sigterm_reports_running_tasks_failed() {
    let s = node(60_000).await;
    let host = LinkHost::start(&s.base, "leaving", &sleeper(1)).await;
    wait_linked(&s.base, "leaving").await;
    let id = submit(&s, json!({"agent_type": "sleeper", "prompt": "zzz"})).await;
    s.wait_state(&s.admin, &id, "running").await;
    host.wait_log("started", 1).await;
    let (status, log) = host.terminate().await;
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("reporting 1 running task(s) failed"), "{log}");
    let done = s.wait_terminal(&s.admin, &id).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"].as_str().unwrap().contains("host was stopped"),
        "{done}"
    );
    wait_hosts(&s.base, |l| l.is_empty()).await;
}
