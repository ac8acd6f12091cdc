//! What the tests know about the dashboard's page: how to sign in, where
//! things are, and how to read the badges and the timeline it shows next to
//! what the node stored.

use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestServer};
use crate::harness::Browser;

/// Open the dashboard with the first-start link and wait until it is live.
pub async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/#token={token}")).await;
    browser.wait_text("#conn-state", "live").await;
}

/// A fresh node and a browser signed in to it as the admin, live: where
/// most dashboard tests start. Ends with [`SignedIn::finish`].
pub struct SignedIn {
    /// The browser, on the dashboard.
    pub browser: Browser,
    /// The node it is signed in to.
    pub server: TestServer,
}

impl SignedIn {
    /// Launch the browser, start a node and sign in; `None` when there is
    /// no browser here (the test then passes, see [`Browser::launch`]).
    pub async fn start() -> Option<Self> {
        let browser = Browser::launch().await?;
        let server = TestServer::spawn().await;
        sign_in(&browser, &server.base, ADMIN_TOKEN).await;
        Some(SignedIn { browser, server })
    }

    /// Close the browser and stop the node.
    pub async fn finish(self) {
        self.browser.close().await;
        self.server.stop().await;
    }
}

/// This tab's session id (the dashboard keeps it in sessionStorage).
pub async fn page_session(browser: &Browser) -> String {
    browser
        .wait_js(
            "the page's session",
            "return sessionStorage.getItem('switchboard.session');",
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

/// The CSS selector of a task's row on the board.
pub fn row(task_id: &str) -> String {
    format!("#task-list .task-row[data-task-id=\"{task_id}\"]")
}

/// Record every state each task's badge shows, on the board and in the
/// detail panel, so a test can assert the page changed live (not only where
/// it ended up). Read with [`seen`].
pub async fn record_badges(browser: &Browser) {
    browser
        .js(r#"
            const seen = window.__seen = { rows: {}, detail: {} };
            const push = (list, v) => { if (v && list[list.length - 1] !== v) list.push(v); };
            const scan = () => {
              for (const r of document.querySelectorAll('#task-list .task-row')) {
                push(seen.rows[r.dataset.taskId] ??= [], r.querySelector('.state-badge').textContent);
              }
              const panel = document.getElementById('task-detail');
              const m = /^#\/task\/(.+)$/.exec(location.hash);
              if (panel && !panel.hidden && m) {
                push(seen.detail[decodeURIComponent(m[1])] ??= [], document.getElementById('task-state').textContent);
              }
            };
            new MutationObserver(scan).observe(document.body, { subtree: true, childList: true, characterData: true });
            scan();
        "#)
        .await;
}

/// The states a task's badge showed: `place` is `rows` or `detail`.
pub async fn seen(browser: &Browser, place: &str, task_id: &str) -> Vec<String> {
    let v = browser
        .js(&format!(
            "return (window.__seen.{place}[{id}] || []);",
            id = json!(task_id)
        ))
        .await;
    serde_json::from_value(v).unwrap()
}

/// The detail panel's timeline: a state name per transition, and
/// `output×N` for a run of N output chunks.
pub async fn dom_timeline(browser: &Browser) -> Vec<String> {
    let v = browser
        .js(r#"
            return [...document.querySelectorAll('#task-timeline > .tl-item')].map((li) => {
              if (li.classList.contains('tl-output')) {
                return 'output×' + parseInt(li.querySelector('.tl-msg').textContent, 10);
              }
              return li.querySelector('.state-badge').textContent;
            });
        "#)
        .await;
    serde_json::from_value(v).unwrap()
}

/// The same shape from stored events: `(is_output, state_or_chunk)` in order.
pub fn stored_timeline(events: &[(bool, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut run = 0;
    for (is_output, value) in events {
        if *is_output {
            run += 1;
            continue;
        }
        if run > 0 {
            out.push(format!("output×{run}"));
            run = 0;
        }
        out.push(value.clone());
    }
    if run > 0 {
        out.push(format!("output×{run}"));
    }
    out
}

/// A task's stored events from `GET /api/runtime/tasks/{id}`.
pub async fn task_events(server: &TestServer, task_id: &str) -> Vec<(bool, String)> {
    let (status, body) = server
        .get(&format!("/api/runtime/tasks/{task_id}"), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["event_type"].as_str() {
            Some("output") => (true, e["chunk"].as_str().unwrap_or("").to_owned()),
            _ => (false, e["state"].as_str().unwrap_or("").to_owned()),
        })
        .collect()
}

/// One task's events from a session's stored stream (as
/// `GET /api/runtime/sessions/{id}/events` returns them), in the shape of
/// [`task_events`].
pub fn stream_task_events(events: &[Value], task_id: &str) -> Vec<(bool, String)> {
    events
        .iter()
        .filter(|e| e["task_id"] == task_id)
        .map(|e| match e["type"].as_str() {
            Some("task.output") => (true, e["data"]["chunk"].as_str().unwrap_or("").to_owned()),
            _ => (false, e["data"]["state"].as_str().unwrap_or("").to_owned()),
        })
        .collect()
}
