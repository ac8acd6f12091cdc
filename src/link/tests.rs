//! Unit tests of the host registry and placement.

use super::hosted::Target;
use super::*;
use crate::agent::Job;
use crate::protocol::link::{Offer, Report};
use serde_json::json;
use std::time::Duration;

fn link(hosts: &Hosts, name: &str, max: usize) -> (u64, mpsc::Receiver<NodeFrame>) {
    let id = hosts.next_conn_id();
    let (tx, rx) = mpsc::channel(16);
    let who = super::Linking {
        name: name.into(),
        user_id: "u".into(),
        device_id: Some(format!("host-{name}")),
        offers: vec![Offer::echo("echo", max)],
        running: Vec::new(),
    };
    hosts.link(who, super::LinkTx::new(id, tx)).unwrap();
    (id, rx)
}

fn job() -> Job {
    Job {
        task_id: Uuid::new_v4(),
        prompt: "p".into(),
        params: json!({}),
        context: json!({}),
    }
}

fn output(task_id: Uuid, n: u64) -> Report {
    Report {
        task_id,
        n,
        body: ReportBody::Output { chunk: "x".into() },
    }
}

/// Placement fills the host with the most free slots first and never
/// goes past a host's `max_concurrent`; a report is forwarded once and
/// only in order, only from the task's own host; releasing tells the
/// host to stop; the indices stay consistent throughout.
#[tokio::test]
async fn placement_reports_and_release() {
    let hosts = Hosts::new("n", Duration::from_secs(60));
    let (a_conn, mut a_rx) = link(&hosts, "a", 2);
    let (b_conn, mut b_rx) = link(&hosts, "b", 1);
    let target = Target::parse("echo");
    let first = hosts.try_place(&target, &job()).unwrap().unwrap();
    assert_eq!(first.host, "a", "the host with more free slots goes first");
    let second = hosts.try_place(&target, &job()).unwrap().unwrap();
    let third = hosts.try_place(&target, &job()).unwrap().unwrap();
    let mut placed = [second.host.clone(), third.host.clone()];
    placed.sort();
    assert_eq!(placed, ["a", "b"]);
    assert!(
        hosts.try_place(&target, &job()).unwrap().is_none(),
        "all full"
    );
    hosts.check_invariants();
    assert!(matches!(a_rx.try_recv(), Ok(NodeFrame::Run(_))));

    let id = first.task_id;
    assert!(hosts.accept("a", a_conn, &output(id, 1)).unwrap().is_some());
    assert!(
        hosts.accept("a", a_conn, &output(id, 1)).unwrap().is_none(),
        "a duplicate"
    );
    let skip = hosts.accept("a", a_conn, &output(id, 3)).unwrap_err();
    assert_eq!(skip.code(), "bad_request");
    let foreign = hosts.accept("b", b_conn, &output(id, 2)).unwrap_err();
    assert_eq!(foreign.code(), "forbidden");
    let stale = hosts.accept("a", a_conn + 100, &output(id, 2)).unwrap_err();
    assert_eq!(stale.code(), "forbidden", "an old connection of the host");

    drop(first);
    hosts.check_invariants();
    let cancel =
        std::iter::from_fn(|| a_rx.try_recv().ok()).find(|f| matches!(f, NodeFrame::Cancel { .. }));
    assert!(cancel.is_some(), "the host is told to stop");
    // A report racing the cancel is dropped quietly, not refused.
    assert!(hosts.accept("a", a_conn, &output(id, 2)).unwrap().is_none());
    assert!(
        hosts.try_place(&target, &job()).unwrap().is_some(),
        "a slot freed"
    );
    drop((second, third));
    hosts.check_invariants();
    while b_rx.try_recv().is_ok() {}
}

/// An unlinked host keeps its tasks through the grace period; a relink
/// by the same user and device resumes them, anyone else is refused.
#[tokio::test]
async fn relinking_resumes_and_conflicts_are_refused() {
    let hosts = Hosts::new("n", Duration::from_secs(60));
    let (conn, _rx) = link(&hosts, "a", 1);
    let placed = hosts
        .try_place(&Target::parse("echo"), &job())
        .unwrap()
        .unwrap();
    assert!(hosts.unlink("a", conn, false));
    assert!(
        hosts
            .try_place(&Target::parse("echo"), &job())
            .unwrap()
            .is_none()
    );
    let (tx, _rx2) = mpsc::channel(16);
    let thief = super::Linking {
        name: "a".into(),
        user_id: "mallory".into(),
        device_id: None,
        offers: vec![Offer::echo("echo", 1)],
        running: vec![placed.task_id],
    };
    let err = hosts
        .link(thief, super::LinkTx::new(hosts.next_conn_id(), tx))
        .unwrap_err();
    assert_eq!(err.code(), "conflict");
    let (tx, _rx3) = mpsc::channel(16);
    let back = super::Linking {
        name: "a".into(),
        user_id: "u".into(),
        device_id: Some("host-a".into()),
        offers: vec![Offer::echo("echo", 1)],
        running: vec![placed.task_id],
    };
    let resume = hosts
        .link(back, super::LinkTx::new(hosts.next_conn_id(), tx))
        .unwrap();
    assert_eq!(resume.len(), 1);
    assert_eq!(resume[0].task_id, placed.task_id);
    hosts.check_invariants();
}

/// `agent@host` pins a host; anything else is a plain agent name.
#[test]
fn targets_parse() {
    let t = Target::parse("claude@laptop");
    assert_eq!(
        (t.agent.as_str(), t.host.as_deref()),
        ("claude", Some("laptop"))
    );
    assert!(t.matches("laptop") && !t.matches("gpu"));
    for plain in ["claude", "@x", "x@"] {
        let t = Target::parse(plain);
        assert_eq!((t.agent.as_str(), t.host), (plain, None));
    }
    assert!(Target::parse("echo").matches("anything"));
}
