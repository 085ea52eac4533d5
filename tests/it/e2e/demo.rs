//! `infragpt demo --script`: the real binary runs the service, the simulated workspace and
//! the development agent in one process; every turn must be answered in the right thread and
//! the conversations stored.

use std::process::Command;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{conversations, messages};
use infragpt::testkit::test_db::TestDb;

use crate::support::app::VAULT_KEY;

/// Runs `infragpt demo --script tests/data/{script}` on `db` and returns its output, after
/// checking the process succeeded.
pub(crate) async fn run_scripted_demo(db: &TestDb, script: &str) -> String {
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
    let script = format!("{}/tests/data/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_infragpt"))
            .args(["--config", config.to_str().expect("utf-8 path")])
            .args(["demo", "--script", &script, "--reply-timeout", "60"])
            .output()
            .expect("run the demo")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The `[label]` of each labelled line of the demo's output, in order.
pub(crate) fn thread_labels(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix('[').and_then(|l| l.split_once(']')))
        // The posts, not the thread's status lines ("[thread 1] infragpt is thinking…").
        .filter(|(_, rest)| rest.starts_with(" infragpt ("))
        .map(|(label, _)| label)
        .collect()
}

#[tokio::test]
async fn scripted_demo_answers_every_turn_in_its_thread() {
    let db = TestDb::new().await;
    let stdout = run_scripted_demo(&db, "demo.script").await;
    assert!(stdout.contains("6 of 6 turns answered"), "{stdout}");
    // Progress: the thread's status shows the agent's own steps while it works. The
    // development agent reports its first step at once, within the indicator's delay, so
    // that step is what the thread shows first rather than "is thinking…".
    assert!(
        stdout.contains("] infragpt running demo.")
            || stdout.contains("] infragpt writing the answer…"),
        "the agent's progress shows: {stdout}"
    );
    assert!(
        stdout.contains("/actors"),
        "the status line names /actors: {stdout}"
    );

    // Replies arrive in the thread of the line that asked, in order.
    let labels = thread_labels(&stdout);
    assert_eq!(
        labels,
        [
            "thread 1", "thread 1", "thread 2", "thread 2", "thread 1", "thread 1"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("Thread summary"), "{stdout}");
    assert!(stdout.contains("[demo agent]"), "{stdout}");

    // Two conversations, each message stored: 6 user messages and 6 agent replies.
    let mut conn = db.pool().get().await.expect("conn");
    let threads: i64 = conversations::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(threads, 2);
    let by_kind: Vec<(String, i64)> = messages::table
        .group_by(messages::sender_kind)
        .select((messages::sender_kind, diesel::dsl::count_star()))
        .order(messages::sender_kind)
        .load(&mut conn)
        .await
        .expect("messages");
    assert_eq!(
        by_kind,
        [("agent".to_owned(), 6), ("user".to_owned(), 6)],
        "{stdout}"
    );
}

#[tokio::test]
async fn scripted_demo_approvals_refuse_bob_then_alice_decides() {
    let db = TestDb::new().await;
    let stdout = run_scripted_demo(&db, "demo-approvals.script").await;
    assert!(stdout.contains("2 of 2 turns answered"), "{stdout}");
    assert!(stdout.contains("Approval needed"), "{stdout}");
    assert!(
        stdout.contains("(only bob sees this)") && stdout.contains("cannot decide"),
        "bob is refused: {stdout}"
    );
    assert!(stdout.contains("Denied by"), "{stdout}");
    assert!(stdout.contains("change freeze until Monday"), "{stdout}");
    assert!(
        stdout.contains("did not do it"),
        "the agent's decision turn: {stdout}"
    );
    assert!(stdout.contains("Approved by"), "{stdout}");
    assert!(
        stdout.contains("Done: Restart payments in staging"),
        "{stdout}"
    );
}
