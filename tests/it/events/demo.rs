//! `infragpt demo --script` with `/replay`: the real binary seeds the demo organization's
//! rules and sources, replays a failing workflow run and a firing alert through its own
//! webhook routes into `#ops`, and the development agent triages both in their threads.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{event_messages, inbound_events};
use infragpt::testkit::test_db::TestDb;

use crate::e2e::demo::{run_scripted_demo, thread_labels};

#[tokio::test]
async fn demo_replays_a_workflow_failure_and_an_alert_into_ops() {
    let db = TestDb::new().await;
    let stdout = run_scripted_demo(&db, "demo-events.script").await;
    assert!(stdout.contains("3 of 3 turns answered"), "{stdout}");
    assert!(stdout.contains("replayed GitHub: workflow run"), "{stdout}");
    assert!(stdout.contains("failure"), "{stdout}");
    assert!(stdout.contains("ApiHighErrorRate"), "{stdout}");
    let labels = thread_labels(&stdout);
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
