//! `infragpt demo --script` with `/replay`: the real binary seeds the demo organization's
//! rules and sources, replays a failing workflow run and a firing alert through its own
//! webhook routes into `#ops`, and the development agent triages both in their threads.

use std::process::Command;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{event_messages, inbound_events};
use infragpt::testkit::test_db::TestDb;

use crate::support::app::VAULT_KEY;

#[tokio::test]
async fn demo_replays_a_workflow_failure_and_an_alert_into_ops() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("demo.yaml");
    std::fs::write(
        &config,
        format!(
            "port: 0\ngrpc_port: 0\nlog_level: warn\nvault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\ndatabase:\n  url: \"{}\"\n",
            db.url.expose()
        ),
    )
    .expect("config");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/demo-events.script");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_infragpt"))
            .args(["--config", config.to_str().expect("utf-8 path")])
            .args(["demo", "--script", script, "--reply-timeout", "60"])
            .output()
            .expect("run the demo")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("3 of 3 turns answered"), "{stdout}");
    assert!(stdout.contains("replayed GitHub: workflow run"), "{stdout}");
    assert!(stdout.contains("failure"), "{stdout}");
    assert!(stdout.contains("ApiHighErrorRate"), "{stdout}");
    let labels: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix('[').and_then(|l| l.split_once(']')))
        .map(|(label, _)| label)
        .collect();
    // Each event message, then the agent's triage in its thread; the follow-up in the
    // alert's thread.
    assert_eq!(
        labels,
        ["thread 1", "thread 1", "thread 2", "thread 2", "thread 2"],
        "{stdout}"
    );
    let mut conn = db.pool().get().await.expect("conn");
    let posted: i64 = event_messages::table
        .filter(event_messages::slack_ts.is_not_null())
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(posted, 2, "{stdout}");
    let triage: i64 = inbound_events::table
        .filter(inbound_events::source.eq("triage"))
        .filter(inbound_events::status.eq("done"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(triage, 2, "{stdout}");
}
