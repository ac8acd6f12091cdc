//! The dashboard (`web/`) in real headless Chromium against real nodes:
//! sign-in, the live board, task detail and its actions, permissions, a
//! server restart under an open page, audit, themes, and a screenshot of
//! every view under `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the tests
//! print why and pass, except under `CI=true`, where they fail.

mod common;
#[path = "browser/harness.rs"]
mod harness;
#[path = "browser/page.rs"]
mod page;

use serde_json::{Value, json};

use common::host::{LinkHost, wait_linked};
use common::{ADMIN_TOKEN, BinaryServer, TestServer, db_in, free_port};
use harness::Browser;
use page::{
    SignedIn, dom_timeline, page_session, record_badges, row, seen, sign_in, stored_timeline,
    stream_task_events, task_events,
};

/// The first-start link signs the admin in from the URL fragment, which is
/// cleared at once, and the token lives only in sessionStorage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_from_the_url_fragment() {
    let Some(SignedIn { browser, server }) = SignedIn::start().await else {
        return;
    };
    browser.wait_text("#user-id", "admin").await;
    let page = browser
        .js("return {href: location.href, hash: location.hash, token: sessionStorage.getItem('switchboard.token')};")
        .await;
    assert_eq!(page["hash"], "", "the fragment is cleared: {page}");
    assert!(!page["href"].as_str().unwrap().contains("token"), "{page}");
    assert_eq!(page["token"], ADMIN_TOKEN, "the token is in sessionStorage");
    assert!(
        !browser.visible("#signin-view").await,
        "no sign-in form once signed in"
    );
    SignedIn { browser, server }.finish().await;
}

/// The sign-in form refuses a bad token with a clear message, then signs in
/// with a good one; the token never appears in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_through_the_form() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::spawn().await;
    browser.goto(&format!("{}/", server.base)).await;
    browser
        .wait_js(
            "the sign-in form",
            "return !document.getElementById('signin-view').hidden;",
        )
        .await;
    assert!(
        !browser.visible("#nav").await,
        "no navigation before sign-in"
    );

    browser
        .type_into("#token-input", "sb_not_a_real_token")
        .await;
    browser.click("#sign-in").await;
    browser
        .wait_text("#signin-error", "That token was not accepted.")
        .await;
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('switchboard.token');")
            .await,
        Value::Null,
        "a refused token is not kept"
    );

    browser.type_into("#token-input", ADMIN_TOKEN).await;
    browser.click("#sign-in").await;
    browser.wait_text("#conn-state", "live").await;
    browser.wait_text("#user-id", "admin").await;
    let page = browser
        .js("return {href: location.href, token: sessionStorage.getItem('switchboard.token'), input: document.getElementById('token-input').value};")
        .await;
    assert_eq!(page["token"], ADMIN_TOKEN);
    assert_eq!(page["input"], "", "the form field is emptied");
    assert!(
        !page["href"].as_str().unwrap().contains(ADMIN_TOKEN),
        "{page}"
    );
    browser.close().await;
    server.stop().await;
}

/// An echo task submitted from the submit view shows `running` and then
/// `completed` live, on the board and in the detail view, with its output,
/// its result, and the same timeline as the stored events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_echo_task_goes_live_to_completed() {
    let Some(SignedIn { browser, server }) = SignedIn::start().await else {
        return;
    };
    record_badges(&browser).await;

    browser.click("#nav a[data-view='submit']").await;
    browser
        .wait_js(
            "echo to be chosen",
            "return document.getElementById('submit-agent')?.value === 'echo';",
        )
        .await;
    assert!(
        browser
            .text("#agent-list [data-agent-type='echo']")
            .await
            .contains("available"),
        "the agent list shows echo as available"
    );
    let prompt = "Say hello to the board, one chunk at a time";
    browser.type_into("#submit-prompt", prompt).await;
    browser
        .type_into("#submit-params", r#"{"delay_ms": 300, "chunk_size": 4}"#)
        .await;
    browser.click("#submit-button").await;

    // The page opens the new task.
    let hash = browser
        .wait_js(
            "the new task to open",
            "return location.hash.startsWith('#/task/') && location.hash;",
        )
        .await;
    let task_id = hash
        .as_str()
        .unwrap()
        .trim_start_matches("#/task/")
        .to_owned();
    browser.wait_text("#task-state", "completed").await;
    browser
        .wait_text(&format!("{} .state-badge", row(&task_id)), "completed")
        .await;
    browser.wait_text("#task-result", prompt).await;
    assert_eq!(browser.text("#task-output").await, prompt);
    assert_eq!(browser.text("#task-error").await, "");
    browser
        .wait_text("[data-testid='count-completed']", "1")
        .await;

    // It changed in place, through running, without a reload.
    for place in ["rows", "detail"] {
        let states = seen(&browser, place, &task_id).await;
        let running = states.iter().position(|s| s == "running");
        let completed = states.iter().position(|s| s == "completed");
        assert!(
            matches!((running, completed), (Some(r), Some(c)) if r < c),
            "{place} showed {states:?}"
        );
    }
    let stored = task_events(&server, &task_id).await;
    assert_eq!(dom_timeline(&browser).await, stored_timeline(&stored));
    assert!(
        !browser.visible("#cancel-task").await,
        "no cancel button on a finished task"
    );
    SignedIn { browser, server }.finish().await;
}

/// A slow task submitted elsewhere shows up on the board; cancelling it
/// from the detail view stops it, and the page shows `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_a_slow_task_from_the_detail_view() {
    let Some(SignedIn { browser, server }) = SignedIn::start().await else {
        return;
    };
    // Submitted over REST into the admin's default session: the board finds
    // sessions opened elsewhere and follows them.
    let task = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "a very slow task that nobody wants to wait for",
                   "params": {"delay_ms": 1000, "chunk_size": 1}}),
        )
        .await;
    let task_id = task["task_id"].as_str().unwrap();
    // Its row says what it is, though events carry no prompt.
    browser
        .wait_text(
            &format!("{} .cell-summary", row(task_id)),
            "a very slow task that nobody wants to wait for",
        )
        .await;
    browser.click(&row(task_id)).await;
    browser.wait_text("#task-state", "running").await;
    browser.click("#cancel-task").await;
    browser.wait_text("#task-state", "cancelled").await;
    browser
        .wait_text(&format!("{} .state-badge", row(task_id)), "cancelled")
        .await;
    let state = server.wait_terminal(ADMIN_TOKEN, task_id).await;
    assert_eq!(state["state"], "cancelled", "{state}");
    browser
        .wait_js(
            "the cancel button to go",
            "return document.getElementById('cancel-task')?.hidden === true;",
        )
        .await;
    let timeline = dom_timeline(&browser).await;
    assert_eq!(
        timeline.last().map(String::as_str),
        Some("cancelled"),
        "{timeline:?}"
    );
    SignedIn { browser, server }.finish().await;
}

/// A task waiting for a person completes when approved from the detail view
/// and fails when denied, and the page shows both outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approves_and_denies_waiting_tasks() {
    let Some(SignedIn { browser, server }) = SignedIn::start().await else {
        return;
    };
    let session = page_session(&browser).await;
    let mut ids = Vec::new();
    for prompt in ["please approve me", "please deny me"] {
        let t = server
            .submit(
                ADMIN_TOKEN,
                json!({"agent_type": "echo", "prompt": prompt, "session_id": session,
                       "params": {"wait": true}}),
            )
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }

    browser.click(&row(&ids[0])).await;
    browser.wait_text("#task-state", "waiting").await;
    browser.type_into("#respond-input", "looks good").await;
    browser.click("#approve-task").await;
    browser.wait_text("#task-state", "completed").await;
    browser.wait_text("#task-result", "please approve me").await;
    browser
        .wait_text(&format!("{} .state-badge", row(&ids[0])), "completed")
        .await;
    assert!(
        !browser.visible("#approve-task").await,
        "approve is gone once done"
    );

    browser.click(&row(&ids[1])).await;
    browser.wait_text("#task-state", "waiting").await;
    browser.click("#deny-task").await;
    browser.wait_text("#task-state", "failed").await;
    browser
        .wait_text(&format!("{} .state-badge", row(&ids[1])), "failed")
        .await;
    browser
        .wait_js(
            "the error to show",
            "return document.getElementById('task-error').textContent.trim().length > 0;",
        )
        .await;

    for id in &ids {
        let stored = server.wait_terminal(ADMIN_TOKEN, id).await;
        assert_eq!(
            stored["state"],
            if id == &ids[0] { "completed" } else { "failed" },
            "{stored}"
        );
    }
    let stored = task_events(&server, &ids[1]).await;
    assert_eq!(dom_timeline(&browser).await, stored_timeline(&stored));
    SignedIn { browser, server }.finish().await;
}

/// A viewer sees the board and a task's detail, but no submit view and no
/// cancel, approve or deny controls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_has_no_submit_or_cancel_controls() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::spawn().await;
    // The user submits a task as a developer, then is made a viewer, so that
    // the viewer has a running task of their own to look at.
    let user = "viewer@team.com";
    let dev = server.user(user, &["developer"]).await;
    let task = server
        .submit(
            &dev,
            json!({"agent_type": "echo", "prompt": "running while its owner can only watch",
                   "params": {"delay_ms": 1000, "chunk_size": 1}}),
        )
        .await;
    let task_id = task["task_id"].as_str().unwrap();
    let (status, body) = server
        .post(
            &format!("/api/admin/users/{user}/roles"),
            ADMIN_TOKEN,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .delete(
            &format!("/api/admin/users/{user}/roles/developer"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post(
            &format!("/api/admin/users/{user}/tokens"),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap();

    sign_in(&browser, &server.base, token).await;
    browser.wait_text("#user-id", user).await;
    browser.wait_text("#user-roles", "viewer").await;
    assert!(browser.visible("#nav a[data-view='board']").await);
    assert!(
        !browser.visible("#nav a[data-view='submit']").await,
        "no Submit tab"
    );
    assert!(
        !browser.visible("#nav a[data-view='audit']").await,
        "no Audit tab"
    );
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#submit-form, #submit-button').length;")
            .await,
        0,
        "no submit form in the page at all"
    );

    browser.click(&row(task_id)).await;
    browser.wait_text("#task-state", "running").await;
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#cancel-task, #approve-task, #deny-task').length;")
            .await,
        0,
        "no task controls for a viewer"
    );
    assert!(!browser.visible("#task-actions").await);

    // Typing the submit view's address leads back to the board.
    browser.js("location.hash = '#/submit';").await;
    browser
        .wait_js("the board", "return location.hash === '#/board';")
        .await;
    assert!(!browser.visible("#view-submit").await);
    assert!(browser.visible("#view-board").await);
    browser.close().await;
    server.stop().await;
}

/// The audit view tails the audit stream live and its verify button shows
/// an intact chain; the theme toggle switches and remembers the theme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verifies_the_chain_and_the_theme_toggles() {
    let Some(SignedIn { browser, server }) = SignedIn::start().await else {
        return;
    };
    browser.click("#nav a[data-view='audit']").await;
    browser
        .wait_js(
            "audit rows",
            "return document.querySelectorAll('#audit-rows tr.audit-row').length > 0;",
        )
        .await;

    // A record made now arrives on the live tail.
    server.user("auditee@team.com", &["guest"]).await;
    browser
        .wait_js(
            "the new user's record",
            "return [...document.querySelectorAll('#audit-rows tr.audit-row[data-event-type=\"user.created\"]')]
               .some((r) => (r.textContent + r.nextElementSibling.textContent).includes('auditee@team.com'));",
        )
        .await;

    browser.click("#verify-chain").await;
    let text = browser
        .wait_js(
            "the verify result",
            "const e = document.getElementById('verify-result'); return e.classList.contains('ok') && e.textContent;",
        )
        .await;
    let text = text.as_str().unwrap();
    assert!(text.starts_with("✓ Chain intact"), "{text}");
    let (_, verify) = server.get("/api/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(verify["ok"], true);
    let shown: u64 = text
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a record count");
    assert!(
        shown > 0 && shown <= verify["checked"].as_u64().unwrap(),
        "{text} vs {verify}"
    );

    // Theme: light by default here, dark after a click, remembered on reload.
    let bg = "return getComputedStyle(document.body).backgroundColor;";
    let light = browser.js(bg).await;
    assert_eq!(
        browser
            .js("return document.getElementById('theme-toggle').dataset.current;")
            .await,
        "light"
    );
    browser.click("#theme-toggle").await;
    assert_eq!(
        browser
            .js("return document.documentElement.dataset.theme;")
            .await,
        "dark"
    );
    let dark = browser.js(bg).await;
    assert_ne!(light, dark, "the background changes with the theme");
    browser.goto(&format!("{}/", server.base)).await;
    browser.wait_text("#conn-state", "live").await;
    assert_eq!(
        browser
            .js("return document.documentElement.dataset.theme;")
            .await,
        "dark"
    );
    assert_eq!(browser.js(bg).await, dark);
    browser.click("#theme-toggle").await;
    assert_eq!(browser.js(bg).await, light);
    SignedIn { browser, server }.finish().await;
}

/// Kill -9 the node under an open page mid-task and start it again on the
/// same port and database: the page reconnects and shows every event stored
/// after the drop (the restart's `failed` transition, and a task submitted
/// while the page was away), with no duplicate and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_an_open_page_loses_nothing() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let listen = format!("127.0.0.1:{}", free_port());
    let node = BinaryServer::start_at(&db, &listen, &[]).await;
    sign_in(&browser, &node.base, ADMIN_TOKEN).await;
    record_badges(&browser).await;
    let session = page_session(&browser).await;

    let (status, first) = node
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "interrupted by a restart, one letter per second",
                   "session_id": session, "params": {"delay_ms": 1000, "chunk_size": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let first = first["task_id"].as_str().unwrap().to_owned();
    browser.click(&row(&first)).await;
    browser
        .wait_js(
            "output to stream in",
            "return document.getElementById('task-output').textContent.length >= 2;",
        )
        .await;

    node.kill9().await;
    browser.wait_text("#conn-state", "reconnecting").await;
    let node = BinaryServer::start_at(&db, &listen, &[]).await;
    // Submitted at once: the page is most likely still waiting to retry.
    let (status, second) = node
        .post(
            "/api/runtime/tasks/submit",
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "submitted while the page was away",
                   "session_id": session}),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let second = second["task_id"].as_str().unwrap().to_owned();

    browser.wait_text("#conn-state", "live").await;
    browser.wait_text("#task-state", "failed").await;
    browser
        .wait_js(
            "the restart's reason",
            "return document.getElementById('task-error').textContent.includes('restarted');",
        )
        .await;
    assert_eq!(
        page_session(&browser).await,
        session,
        "the page re-attached to its session"
    );

    // Everything stored in the session, as the page must show it.
    let (status, body) = node
        .get(
            &format!("/api/runtime/sessions/{session}/events?limit=1000"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "stored seqs: {seqs:?}"
    );
    let of = |task: &str| stream_task_events(events, task);

    let stored = of(&first);
    assert_eq!(
        stored.last(),
        Some(&(false, "failed".to_owned())),
        "{stored:?}"
    );
    assert_eq!(dom_timeline(&browser).await, stored_timeline(&stored));
    let chunks: String = stored
        .iter()
        .filter(|(o, _)| *o)
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        browser.text("#task-output").await,
        chunks,
        "every chunk once, in order"
    );

    browser
        .wait_text(&format!("{} .state-badge", row(&second)), "completed")
        .await;
    browser.click(&row(&second)).await;
    browser.wait_text("#task-state", "completed").await;
    browser
        .wait_text("#task-result", "submitted while the page was away")
        .await;
    assert_eq!(dom_timeline(&browser).await, stored_timeline(&of(&second)));
    let badges = seen(&browser, "rows", &first).await;
    assert_eq!(
        badges.last().map(String::as_str),
        Some("failed"),
        "{badges:?}"
    );
    browser.close().await;
    node.kill9().await;
}

/// Every main view in both themes, saved under `target/screenshots/` for a
/// person to look at; each is taken once the view shows its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_every_view() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::spawn().await;
    server.user("dev@team.com", &["developer"]).await;
    let mut tasks = Vec::new();
    for (prompt, params) in [
        ("Summarise the release notes for 0.4", json!({})),
        ("Write a haiku about queues", json!({"fail": true})),
        (
            "Refactor the session registry",
            json!({"delay_ms": 1000, "chunk_size": 1}),
        ),
        ("Deploy to staging?", json!({"wait": true})),
        (
            "Review the audit chain design",
            json!({"delay_ms": 1000, "chunk_size": 1}),
        ),
        ("Explain WAL mode in two sentences", json!({})),
    ] {
        let t = server
            .submit(
                ADMIN_TOKEN,
                json!({"agent_type": "echo", "prompt": prompt, "params": params}),
            )
            .await;
        tasks.push(t["task_id"].as_str().unwrap().to_owned());
    }
    server.wait_state(ADMIN_TOKEN, &tasks[2], "running").await;
    let (status, body) = server.cancel(ADMIN_TOKEN, &tasks[2]).await;
    assert_eq!(status, 200, "{body}");
    server.wait_state(ADMIN_TOKEN, &tasks[3], "waiting").await;
    for id in [&tasks[0], &tasks[1], &tasks[5]] {
        server.wait_terminal(ADMIN_TOKEN, id).await;
    }

    browser.goto(&format!("{}/", server.base)).await;
    browser
        .wait_js(
            "the sign-in form",
            "return !document.getElementById('signin-view').hidden;",
        )
        .await;
    browser.screenshot("signin-light").await;
    browser.type_into("#token-input", ADMIN_TOKEN).await;
    browser.click("#sign-in").await;
    browser.wait_text("#conn-state", "live").await;

    for theme in ["light", "dark"] {
        let current = browser
            .js("return document.getElementById('theme-toggle').dataset.current;")
            .await;
        if current != theme {
            browser.click("#theme-toggle").await;
        }
        assert_eq!(
            browser
                .js("return document.getElementById('theme-toggle').dataset.current;")
                .await,
            theme
        );

        browser.click("#nav a[data-view='board']").await;
        browser
            .wait_text("[data-testid='count-all']", &tasks.len().to_string())
            .await;
        browser
            .wait_text(&format!("{} .state-badge", row(&tasks[3])), "waiting")
            .await;
        browser.screenshot(&format!("board-{theme}")).await;

        browser.click(&row(&tasks[0])).await;
        browser.wait_text("#task-state", "completed").await;
        browser
            .wait_text("#task-result", "Summarise the release notes for 0.4")
            .await;
        browser.screenshot(&format!("detail-{theme}")).await;
        browser.click(&row(&tasks[3])).await;
        browser.wait_text("#task-state", "waiting").await;
        assert!(browser.visible("#approve-task").await);
        browser.screenshot(&format!("detail-waiting-{theme}")).await;
        browser.click("#close-detail").await;

        browser.click("#nav a[data-view='submit']").await;
        browser
            .wait_js(
                "the agent list",
                "return !!document.querySelector(\"#agent-list [data-agent-type='echo']\");",
            )
            .await;
        browser
            .type_into("#submit-prompt", "Draft the changelog for this week")
            .await;
        browser
            .type_into("#submit-params", r#"{"delay_ms": 100}"#)
            .await;
        browser.screenshot(&format!("submit-{theme}")).await;

        browser.click("#nav a[data-view='sessions']").await;
        browser.wait_js("sessions and presence", "return !!document.querySelector('#sessions-table table') && !!document.querySelector('#presence-table table');").await;
        browser.screenshot(&format!("sessions-{theme}")).await;

        browser.click("#nav a[data-view='audit']").await;
        browser
            .wait_js(
                "audit rows",
                "return document.querySelectorAll('#audit-rows tr.audit-row').length > 0;",
            )
            .await;
        browser.click("#verify-chain").await;
        browser
            .wait_js(
                "the verify result",
                "return document.getElementById('verify-result').classList.contains('ok');",
            )
            .await;
        browser.screenshot(&format!("audit-{theme}")).await;
    }
    browser.close().await;
    server.stop().await;
}

/// The Hosts view lists linked hosts and the agents each offers, live: a
/// host that links shows up, and one that leaves goes, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_view_follows_hosts_live() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::spawn().await;
    let first = LinkHost::start(
        &server.base,
        "build-box",
        "[[agents]]\nname = \"aider\"\nkind = \"echo\"\ndescription = \"pair programming\"\nmax_concurrent = 2\n",
    )
    .await;
    wait_linked(&server.base, "build-box").await;
    sign_in(&browser, &server.base, ADMIN_TOKEN).await;
    browser.wait_text("#conn-state", "live").await;
    browser.click("#nav a[data-view='hosts']").await;
    browser
        .wait_text(
            "[data-host='build-box'] [data-testid='host-state']",
            "linked",
        )
        .await;
    browser
        .wait_text("[data-host='build-box'] [data-agent='aider']", "aider")
        .await;
    let second = LinkHost::start(&server.base, "gpu-box", "").await;
    browser
        .wait_text("[data-host='gpu-box'] [data-agent='echo']", "echo")
        .await;
    browser.screenshot("hosts").await;
    let (status, _) = second.terminate().await;
    assert!(status.success());
    browser
        .wait_js(
            "gpu-box to leave the list",
            "return !document.querySelector(\"[data-host='gpu-box']\") && !!document.querySelector(\"[data-host='build-box']\");",
        )
        .await;
    assert!(browser.script_errors().await.is_empty());
    drop(first);
    browser.close().await;
    server.stop().await;
}

/// The board's state chips are the server's totals over every visible
/// task, not a count of the rows loaded (the board loads 500 at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_counts_are_the_servers_totals() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let mut file = switchboard::config::FileConfig::default();
    file.security.submits_per_minute = 100_000;
    let server = TestServer::spawn_with(file).await;
    let mut last = String::new();
    for i in 0..503 {
        let t = server
            .submit(
                ADMIN_TOKEN,
                json!({"agent_type": "echo", "prompt": format!("t{i}")}),
            )
            .await;
        last = t["task_id"].as_str().unwrap().to_owned();
    }
    server.wait_terminal(ADMIN_TOKEN, &last).await;
    sign_in(&browser, &server.base, ADMIN_TOKEN).await;
    browser.wait_text("#conn-state", "live").await;
    browser.wait_text("[data-testid='count-all']", "503").await;
    browser
        .wait_text("[data-testid='count-completed']", "503")
        .await;
    browser.wait_text("#task-shown", "500 tasks").await;
    // A new task moves the totals without a reload.
    let t = server
        .submit(
            ADMIN_TOKEN,
            json!({"agent_type": "echo", "prompt": "one more", "params": {"wait": true}}),
        )
        .await;
    server
        .wait_state(ADMIN_TOKEN, t["task_id"].as_str().unwrap(), "waiting")
        .await;
    browser.wait_text("[data-testid='count-all']", "504").await;
    browser
        .wait_text("[data-testid='count-waiting']", "1")
        .await;
    browser.close().await;
    server.stop().await;
}
