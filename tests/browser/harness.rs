//! Real headless Chromium for the dashboard tests: Debian's `chromium` driven
//! through `chromedriver` (WebDriver) with fantoccini.
//!
//! Each test gets its own chromedriver on a free port and a fresh profile
//! directory, so tests share nothing but the machine. Conditions on the page
//! are polled with a generous deadline ([`WAIT`]); nothing sleeps to "let the
//! page settle".

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::common::{WAIT, free_port};

/// Debian's browser and driver (`apt-get install chromium chromium-driver`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a browser test waits for a page condition: the page reconnects
/// with backoff after a restart, so this is longer than the REST tests' wait.
pub const PAGE_WAIT: Duration = Duration::from_secs(60);

/// At most two browsers at once: the machine has two cores, shared.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// One chromedriver process (in its own process group, so that dropping it
/// also ends the Chromium it started, even when a test panics).
struct Driver {
    child: tokio::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The group id is the driver's pid (process_group(0) below).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A headless Chromium session on a fresh profile.
pub struct Browser {
    client: Client,
    /// chromedriver's base URL (for the log endpoint fantoccini lacks).
    driver_url: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
    _permit: SemaphorePermit<'static>,
}

/// Whether the tests run under CI (where a missing browser is a failure).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl Browser {
    /// Start chromedriver and a headless Chromium. Without them this returns
    /// `None` after printing why, except under `CI=true`, where it panics:
    /// CI must run these tests, never skip them.
    pub async fn launch() -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not found; install Debian's `chromium` and `chromium-driver` \
                 (apt-get install -y chromium chromium-driver)",
                missing.join(" and ")
            );
            assert!(!in_ci(), "CI=true but the browser tests cannot run: {why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let permit = BROWSERS.acquire().await.expect("semaphore is never closed");
        let profile = tempfile::tempdir().expect("profile dir");
        let (driver, url) = start_driver(profile.path()).await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1360,900",
                    format!("--user-data-dir={}", profile.path().join("chromium").display()),
                ],
            }),
        );
        // Console messages are collected so that tests can fail on script errors.
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session on chromedriver");
        Some(Browser {
            client,
            driver_url: url,
            _driver: driver,
            _profile: profile,
            _permit: permit,
        })
    }

    /// Check that the page logged no script error, then end the WebDriver
    /// session (Chromium quits); the driver goes on drop.
    pub async fn close(self) {
        let errors = self.script_errors().await;
        let Browser { client, .. } = self;
        let _ = client.close().await;
        assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    }

    /// Console errors so far, except failed network requests: those are
    /// expected while a node is down, and the tests check what the page
    /// shows about them instead.
    pub async fn script_errors(&self) -> Vec<String> {
        let Ok(Some(session)) = self.client.session_id().await else {
            return vec![];
        };
        let url = format!("{}/session/{session}/se/log", self.driver_url);
        let Ok(resp) = reqwest::Client::new()
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
        else {
            return vec![];
        };
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        body["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                !m.contains("Failed to load resource") && !m.contains("WebSocket connection")
            })
            .map(str::to_owned)
            .collect()
    }

    /// Load a URL.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Run a script in the page (`return ...` gives its value).
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Poll `script` until it returns something truthy (not null, false,
    /// 0 or ""), and return that. Panics after [`PAGE_WAIT`] with `what`,
    /// the last value and what the page showed.
    pub async fn wait_js(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            // A script can fail while the page reloads; that is "not yet".
            let value = self
                .client
                .execute(script, vec![])
                .await
                .unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nlast value: {value}\npage: {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the text of the first element matching `css` is `expected`.
    pub async fn wait_text(&self, css: &str, expected: &str) {
        let script = format!(
            "const e = document.querySelector({sel}); return !!e && e.textContent.trim() === {want};",
            sel = json!(css),
            want = json!(expected),
        );
        self.wait_js(&format!("{css} to read {expected:?}"), &script)
            .await;
    }

    /// The trimmed text of the first element matching `css` ("" when none).
    pub async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent.trim() : '';",
            json!(css)
        );
        self.js(&script).await.as_str().unwrap_or("").to_owned()
    }

    /// Whether an element matching `css` is in the page and rendered (not
    /// `hidden`, not inside something hidden).
    pub async fn visible(&self, css: &str) -> bool {
        let script = format!(
            "const e = document.querySelector({}); return !!e && e.getClientRects().length > 0;",
            json!(css)
        );
        self.js(&script).await == Value::Bool(true)
    }

    /// Click the element matching `css` as a user would (it must be visible
    /// and enabled: WebDriver refuses otherwise).
    pub async fn click(&self, css: &str) {
        self.wait_js(
            &format!("{css} to be clickable"),
            &format!(
                "const e = document.querySelector({}); return !!e && !e.disabled && e.getClientRects().length > 0;",
                json!(css)
            ),
        )
        .await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replace the value of an input or textarea by typing into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Save a PNG of the window as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// A short account of the page for failure messages.
    async fn describe(&self) -> String {
        let script = r#"
            const t = (s) => (document.querySelector(s)?.textContent || '').trim();
            return JSON.stringify({
              url: location.href,
              conn: t('#conn-state'),
              user: t('#user-id'),
              signin_error: t('#signin-error'),
              detail_state: t('#task-state'),
              detail_status: t('#detail-status'),
              toasts: [...document.querySelectorAll('#toasts .toast-text')].map((e) => e.textContent),
            });
        "#;
        match self.client.execute(script, vec![]).await {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => format!("(could not read the page: {e})"),
        }
    }
}

/// `target/screenshots/`, next to the build output.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// chromedriver on a free loopback port; returns it and its URL once it
/// answers `/status` as ready. A port taken between [`free_port`] and the
/// driver's bind makes the driver exit: then it tries another port.
async fn start_driver(profile: &Path) -> (Driver, String) {
    for _ in 0..3 {
        if let Some(started) = try_start_driver(profile).await {
            return started;
        }
    }
    panic!(
        "chromedriver did not start; see {}",
        profile.join("chromedriver.log").display()
    );
}

async fn try_start_driver(profile: &Path) -> Option<(Driver, String)> {
    let port = free_port();
    let log = std::fs::File::create(profile.join("chromedriver.log")).expect("driver log");
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chromedriver");
    let mut driver = Driver { child };
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Exited: its port was taken (and whatever answers there is not ours).
        if !matches!(driver.child.try_wait(), Ok(None)) {
            return None;
        }
        if let Ok(r) = http.get(format!("{url}/status")).send().await {
            if let Ok(body) = r.json::<Value>().await {
                if body["value"]["ready"] == true && matches!(driver.child.try_wait(), Ok(None)) {
                    return Some((driver, url));
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not become ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
