//! The dashboard in real headless Chromium against real nodes.

mod common;
#[path = "browser/harness.rs"]
mod harness;

use common::{ADMIN_TOKEN, TestServer};
use harness::Browser;

/// The first-start link signs the admin in from the URL fragment, which is
/// cleared at once, and the token lives only in sessionStorage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_from_the_url_fragment() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let server = TestServer::spawn().await;
    browser
        .goto(&format!("{}/#token={ADMIN_TOKEN}", server.base))
        .await;
    browser.wait_text("#conn-state", "live").await;
    browser.wait_text("#user-id", "admin").await;
    let page = browser
        .js("return {href: location.href, hash: location.hash, token: sessionStorage.getItem('switchboard.token')};")
        .await;
    assert_eq!(page["hash"], "", "{page}");
    assert!(!page["href"].as_str().unwrap().contains("token"), "{page}");
    assert_eq!(page["token"], ADMIN_TOKEN);
    browser.screenshot("probe").await;
    browser.close().await;
    server.stop().await;
}
