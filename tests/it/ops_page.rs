//! `GET /ops` in a real browser (headless Chromium over the DevTools protocol) against the
//! assembled service with live Slack traffic: the page asks for the admin token once, shows
//! what `/actors` shows, retries a dead letter with a mouse click, fits a phone's screen,
//! and leaves a screenshot (`target/ops-page.png`; with `INFRAGPT_UPDATE_SCREENSHOT=1` also
//! `deploy/ops-page.png`, the one the README shows).

use std::collections::BTreeSet;

use infragpt::testkit::devagent::FailMode;
use infragpt::testkit::slack_sim::SimConfig;
use serde_json::Value;

use crate::e2e::conversations::{ALICE, Chat, service};
use crate::support::app::{ADMIN, TestApp};
use crate::support::browser::Browser;
use crate::support::wait::eventually;

/// Every actor of the tree as `(kind, key, state)`.
fn tree_nodes(nodes: &Value, out: &mut BTreeSet<(String, String, String)>) {
    for n in nodes.as_array().into_iter().flatten() {
        out.insert((
            n["kind"].as_str().unwrap_or_default().to_owned(),
            n["key"].as_str().unwrap_or_default().to_owned(),
            n["state"].as_str().unwrap_or_default().to_owned(),
        ));
        tree_nodes(&n["children"], out);
    }
}

/// Live actors per kind from `/actors`' counts (not stopped or failed).
fn live_per_kind(tree: &Value) -> BTreeSet<(String, u64)> {
    tree["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(kind, states)| {
            let live = states
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(s, _)| *s != "stopped" && *s != "failed")
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum();
            (kind.clone(), live)
        })
        .collect()
}

const PAGE_NODES: &str = "JSON.stringify([...document.querySelectorAll('#tree li[data-kind]')]\
    .map(li => [li.dataset.kind, li.dataset.key, li.dataset.state]))";
const PAGE_KINDS: &str = "JSON.stringify([...document.querySelectorAll('#kinds tr[data-kind]')]\
    .map(tr => [tr.dataset.kind, Number(tr.dataset.live)]))";

async fn polls(browser: &mut Browser) -> u64 {
    browser
        .eval("Number(document.body.dataset.polls || 0)")
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the page's next completed poll.
async fn next_poll(browser: &mut Browser) {
    let seen = polls(browser).await;
    eventually("the page polls again", async || polls(browser).await > seen).await;
}

#[actix_rt::test]
async fn the_ops_page_shows_the_tree_and_retries_a_dead_letter() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;

    // Live traffic: answered turns, and one the agent fails for good (a dead letter).
    for i in 0..3 {
        let ts = app.mention(ALICE, &format!("status of service {i}?"));
        app.wait_replies(&ts, 1).await;
    }
    app.agent()
        .set_fail_mode(FailMode::Exception("the model is down".to_owned()));
    let failed_ts = app.mention(ALICE, "why is checkout slow?");
    app.wait_replies(&failed_ts, 1).await;
    let dead_id = eventually("a dead letter is listed", async || {
        let (status, body) = app.admin_get("/admin/events").await;
        (status == 200)
            .then(|| body["events"][0]["id"].as_i64())
            .flatten()
    })
    .await;
    app.agent().set_fail_mode(FailMode::None);
    app.settle().await;

    let mut browser = Browser::start().await;
    browser.navigate(&format!("{}/ops", app.base_url())).await;

    // The public port needs the admin token for the data: the page asks once.
    eventually("the page asks for the admin token", async || {
        browser
            .eval("getComputedStyle(document.getElementById('token-form')).display")
            .await
            == "flex"
    })
    .await;
    browser.type_into("#token-input", ADMIN).await;
    browser.click("#token-form button[type=submit]").await;
    eventually("the page shows the tree", async || {
        browser
            .eval("document.querySelectorAll('#tree li').length")
            .await
            .as_u64()
            > Some(0)
    })
    .await;
    let kept = browser
        .eval("[sessionStorage.getItem('infragpt.adminToken'), localStorage.length]")
        .await;
    assert_eq!(
        kept,
        serde_json::json!([ADMIN, 0]),
        "the token is kept in the session only"
    );

    // More traffic while the page is open: it keeps up.
    for i in 3..6 {
        let ts = app.mention(ALICE, &format!("status of service {i}?"));
        app.wait_replies(&ts, 1).await;
    }
    app.settle().await;

    // What the page shows is what /actors says (compared until a poll after the same state).
    eventually("the page agrees with /actors", async || {
        next_poll(&mut browser).await;
        let (_, tree) = app.admin_get("/actors").await;
        let mut want = BTreeSet::new();
        tree_nodes(&tree["roots"], &mut want);
        let shown: Vec<(String, String, String)> =
            serde_json::from_str(browser.eval(PAGE_NODES).await.as_str().unwrap_or("[]"))
                .expect("nodes");
        let kinds: Vec<(String, u64)> =
            serde_json::from_str(browser.eval(PAGE_KINDS).await.as_str().unwrap_or("[]"))
                .expect("kinds");
        let shown: BTreeSet<_> = shown.into_iter().collect();
        let kinds: BTreeSet<_> = kinds.into_iter().collect();
        if shown == want && kinds == live_per_kind(&tree) && !want.is_empty() {
            Ok(())
        } else {
            Err(format!("page {shown:?} {kinds:?} vs /actors {want:?}"))
        }
    })
    .await;
    let slack_rows = browser
        .eval("document.querySelectorAll('#slack tr[data-state=running]').length")
        .await;
    assert_eq!(
        slack_rows,
        Value::from(1),
        "the one Socket Mode connection, running"
    );

    // The dead letter is listed; a click on Retry requeues it and the turn is answered.
    let row = format!("#dead tr[data-id='{dead_id}']");
    eventually("the dead letter is on the page", async || {
        browser
            .eval(&format!("!!document.querySelector(\"{row}\")"))
            .await
            == Value::Bool(true)
    })
    .await;
    // The laptop screenshot the README shows: the dead letter with its buttons.
    let form_shown = browser
        .eval("getComputedStyle(document.getElementById('token-form')).display")
        .await;
    assert_eq!(
        form_shown,
        Value::from("none"),
        "the token form is gone once used"
    );
    let png = browser.screenshot(1280).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("target/ops-page.png"), &png).expect("write the screenshot");
    if std::env::var_os("INFRAGPT_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root.join("deploy/ops-page.png"), &png).expect("update the screenshot");
    }

    let asked_before = app.agent().requests().len();
    browser.click(&format!("{row} button.retry")).await;
    eventually("the retried event is done", async || {
        let (_, event) = app.admin_get(&format!("/admin/events/{dead_id}")).await;
        (event["status"] == "done").then_some(()).ok_or(event)
    })
    .await;
    assert!(
        app.agent().requests().len() > asked_before,
        "the retried turn went to the agent again"
    );
    let (_, audit) = app.admin_get("/admin/audit?action=event.requeued").await;
    assert_eq!(
        audit["entries"][0]["target"],
        format!("inbound_event:{dead_id}"),
        "{audit}"
    );
    eventually("the page shows no dead letter", async || {
        next_poll(&mut browser).await;
        browser
            .eval("document.querySelectorAll('#dead tr[data-id]').length")
            .await
            == 0
    })
    .await;
    let note = browser
        .eval("document.getElementById('dead-note').textContent")
        .await;
    assert_eq!(note, Value::from(format!("event {dead_id}: requeued")));

    // The laptop screenshot the README shows.
    // A phone: one column, nothing wider than the screen.
    browser.viewport(390, 844, true).await;
    next_poll(&mut browser).await;
    let fits = browser
        .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(
        fits,
        Value::Bool(true),
        "the page scrolls sideways on a phone"
    );

    drop(browser);
    app.stop().await;
}

#[actix_rt::test]
async fn the_page_is_served_with_its_assets_and_a_strict_policy() {
    let app = TestApp::builder().core_only().start().await;
    for (base, path, kind) in [
        (app.base_url(), "/ops", "text/html"),
        (app.base_url(), "/ops/ops.js", "text/javascript"),
        (app.base_url(), "/ops/ops.css", "text/css"),
        (app.ops_url(), "/ops", "text/html"),
    ] {
        // No token: the page holds no data.
        let r = app
            .http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{base}{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
    app.stop().await;
}
