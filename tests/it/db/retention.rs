//! Retention against real PostgreSQL: which inbox rows and conversations go, in how many
//! batches, the advisory lock that keeps it to one process, and the housekeeping actor in the
//! served app.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;
use infragpt::db::Pool;
use infragpt::db::retention::{
    RETENTION_LOCK_KEY, RetentionOutcome, RetentionSettings, run_retention_once,
};
use infragpt::db::schema::inbound_events;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::EventStatus;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::conversations::{
    AGENT, Intent, conversation_ids, days_ago as days_before, insert_event, insert_intent, key,
    rows_of, seed_conversation, set_event_status, set_times,
};
use crate::support::wait::eventually;

fn settings(days: u32, batch_size: u32) -> RetentionSettings {
    RetentionSettings {
        inbound_events_days: days,
        conversations_days: 0,
        batch_size,
        batch_pause: Duration::ZERO,
    }
}

/// Conversation retention only.
fn conversation_settings(days: u32, batch_size: u32) -> RetentionSettings {
    RetentionSettings {
        inbound_events_days: 0,
        conversations_days: days,
        batch_size,
        batch_pause: Duration::ZERO,
    }
}

/// Stores one event as it would be after processing (or not) at `processed_at`.
async fn insert(pool: &Pool, source_id: &str, status: &str, processed_at: Option<DateTime<Utc>>) {
    let mut conn = pool.get().await.expect("connection");
    diesel::insert_into(inbound_events::table)
        .values((
            inbound_events::source.eq("slack"),
            inbound_events::source_id.eq(source_id),
            inbound_events::routing_key.eq("T1/C1/1700000000.000100"),
            inbound_events::partition.eq(0i16),
            inbound_events::kind.eq("app_mention"),
            inbound_events::payload.eq(json!({"event_id": source_id})),
            inbound_events::status.eq(status),
            inbound_events::processed_at.eq(processed_at),
        ))
        .execute(&mut conn)
        .await
        .expect("insert");
}

fn days_ago(days: i64) -> Option<DateTime<Utc>> {
    Some(Utc::now() - TimeDelta::days(days))
}

/// Five finished events past 14 days, and everything retention must keep.
async fn seed(pool: &Pool) {
    for id in ["old-done-1", "old-done-2", "old-done-3"] {
        insert(pool, id, "done", days_ago(30)).await;
    }
    for id in ["old-ignored-1", "old-ignored-2"] {
        insert(pool, id, "ignored", days_ago(15)).await;
    }
    insert(pool, "recent-done", "done", days_ago(13)).await;
    insert(pool, "recent-ignored", "ignored", days_ago(1)).await;
    insert(pool, "old-failed", "failed", days_ago(90)).await;
    insert(pool, "old-processing", "processing", days_ago(90)).await;
    insert(pool, "pending", "pending", None).await;
}

const ALL: [&str; 10] = [
    "old-done-1",
    "old-done-2",
    "old-done-3",
    "old-ignored-1",
    "old-ignored-2",
    "recent-done",
    "recent-ignored",
    "old-failed",
    "old-processing",
    "pending",
];
const KEPT: [&str; 5] = [
    "recent-done",
    "recent-ignored",
    "old-failed",
    "old-processing",
    "pending",
];

async fn stored(pool: &Pool) -> BTreeSet<String> {
    let mut conn = pool.get().await.expect("connection");
    inbound_events::table
        .select(inbound_events::source_id)
        .load::<String>(&mut conn)
        .await
        .expect("select")
        .into_iter()
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Advisory locks held in this test's database (each test has its own database).
async fn advisory_locks(pool: &Pool) -> i64 {
    let mut conn = pool.get().await.expect("connection");
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .get_result::<Count>(&mut conn)
    .await
    .expect("pg_locks")
    .n
}

#[tokio::test]
async fn retention_deletes_old_done_and_ignored_events_in_batches() {
    let db = TestDb::new().await;
    seed(db.pool()).await;

    let report = run_retention_once(db.pool(), &settings(14, 2))
        .await
        .expect("retention");

    assert_eq!(report.outcome, RetentionOutcome::Ran);
    assert_eq!(report.deleted, 5);
    assert_eq!(report.batches, 3, "5 rows in batches of 2: 2, 2, 1");
    assert_eq!(stored(db.pool()).await, set(&KEPT));
    let count = |status| {
        report
            .rows
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count(EventStatus::Done), 1);
    assert_eq!(count(EventStatus::Ignored), 1);
    assert_eq!(count(EventStatus::Failed), 1);
    assert_eq!(count(EventStatus::Processing), 1);
    assert_eq!(count(EventStatus::Pending), 1);
    assert!(report.bytes > 0, "the table size is measured");
    assert_eq!(
        advisory_locks(db.pool()).await,
        0,
        "the retention lock is released with the run"
    );

    // Nothing is due any more: one short batch, nothing deleted.
    let again = run_retention_once(db.pool(), &settings(14, 2))
        .await
        .expect("retention");
    assert_eq!((again.deleted, again.batches), (0, 1));
    assert_eq!(stored(db.pool()).await, set(&KEPT));
}

#[tokio::test]
async fn retention_skips_the_run_while_another_process_holds_the_lock() {
    let db = TestDb::new().await;
    seed(db.pool()).await;

    // Another replica's run: the same key on another session.
    let mut other = db.pool().get().await.expect("connection");
    let held = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(RETENTION_LOCK_KEY)
        .get_result::<Flag>(&mut other)
        .await
        .expect("lock");
    assert!(held.flag);

    let report = run_retention_once(db.pool(), &settings(14, 2))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Locked);
    assert_eq!((report.deleted, report.batches), (0, 0));
    assert_eq!(stored(db.pool()).await, set(&ALL));

    let released = diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(RETENTION_LOCK_KEY)
        .get_result::<Flag>(&mut other)
        .await
        .expect("unlock");
    assert!(released.flag);
    drop(other);

    let report = run_retention_once(db.pool(), &settings(14, 1000))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Ran);
    assert_eq!((report.deleted, report.batches), (5, 1));
    assert_eq!(stored(db.pool()).await, set(&KEPT));
}

#[tokio::test]
async fn retention_zero_keeps_every_event() {
    let db = TestDb::new().await;
    seed(db.pool()).await;

    let report = run_retention_once(db.pool(), &settings(0, 2))
        .await
        .expect("retention");

    assert_eq!(report.outcome, RetentionOutcome::Disabled);
    assert_eq!((report.deleted, report.batches), (0, 0));
    assert_eq!(report.cutoff, None);
    assert_eq!(stored(db.pool()).await, set(&ALL));
    assert!(
        report.bytes > 0,
        "the gauges are kept up to date when disabled"
    );
}

/// A conversation in `T1/C1` whose last message is `age` days old: a question, an answer and
/// its posted reply intent.
async fn aged_conversation(pool: &Pool, n: u32, age: i64) -> Uuid {
    let ts = format!("1700000{n:03}.000100");
    let answer = format!("1700000{n:03}.000200");
    let id = seed_conversation(
        pool,
        "T1",
        "C1",
        &ts,
        &[(&ts, "U1", "question"), (&answer, AGENT, "answer")],
    )
    .await;
    insert_intent(pool, id, &ts, "answer", Intent::Posted).await;
    set_times(pool, id, days_before(age + 1), days_before(age)).await;
    id
}

fn ids(list: &[Uuid]) -> Vec<Uuid> {
    let mut list = list.to_vec();
    list.sort();
    list
}

#[tokio::test]
async fn conversation_retention_deletes_old_conversations_in_batches() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let mut old = Vec::new();
    for (n, age) in [(1, 40), (2, 35), (3, 31)] {
        old.push(aged_conversation(pool, n, age).await);
    }
    let mut recent = Vec::new();
    for (n, age) in [(4, 29), (5, 1)] {
        recent.push(aged_conversation(pool, n, age).await);
    }
    // Created long ago, but its last message is recent: kept.
    let revived = aged_conversation(pool, 9, 1).await;
    set_times(pool, revived, days_before(90), days_before(1)).await;
    recent.push(revived);
    // Old, but with a turn in flight: a queued event, a running one, a reply being posted.
    let queued = aged_conversation(pool, 6, 60).await;
    let queued_event = insert_event(
        pool,
        "Ev-6",
        &key("T1", "C1", "1700000006.000100"),
        "pending",
        None,
    )
    .await;
    let running = aged_conversation(pool, 7, 50).await;
    let running_event = insert_event(
        pool,
        "Ev-7",
        &key("T1", "C1", "1700000007.000100"),
        "processing",
        None,
    )
    .await;
    let posting = aged_conversation(pool, 8, 45).await;
    insert_intent(
        pool,
        posting,
        "1700000008.000100",
        "another answer",
        Intent::Claimed(30),
    )
    .await;
    let in_flight = [queued, running, posting];
    let all: Vec<Uuid> = [&old[..], &recent[..], &in_flight[..]].concat();

    // Another replica's run holds the lock: this one skips.
    let mut other = pool.get().await.expect("connection");
    let held = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(RETENTION_LOCK_KEY)
        .get_result::<Flag>(&mut other)
        .await
        .expect("lock");
    assert!(held.flag);
    let report = run_retention_once(pool, &conversation_settings(30, 2))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Locked);
    assert_eq!(report.conversations.deleted, 0);
    assert_eq!(conversation_ids(pool).await, ids(&all));
    let released = diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(RETENTION_LOCK_KEY)
        .get_result::<Flag>(&mut other)
        .await
        .expect("unlock");
    assert!(released.flag);
    drop(other);

    let report = run_retention_once(pool, &conversation_settings(30, 2))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Ran);
    let run = &report.conversations;
    assert!(run.cutoff.is_some());
    assert_eq!(
        (run.deleted, run.messages, run.reply_intents, run.batches),
        (3, 6, 3, 2),
        "3 conversations in batches of 2: 2, 1"
    );
    assert_eq!((report.deleted, report.batches), (0, 0), "the inbox is off");
    assert_eq!(report.cutoff, None);
    let kept: Vec<Uuid> = [&recent[..], &in_flight[..]].concat();
    assert_eq!(conversation_ids(pool).await, ids(&kept));
    for id in &old {
        assert_eq!(rows_of(pool, *id).await, (0, 0, 0), "{id}: with its rows");
    }
    for id in &kept {
        assert_eq!(
            rows_of(pool, *id).await,
            (1, 2, 1 + i64::from(*id == posting)),
            "{id}"
        );
    }
    assert_eq!(advisory_locks(pool).await, 0, "the lock is released");

    // Once their turns are over, the old ones in flight go too.
    set_event_status(pool, queued_event, "done").await;
    set_event_status(pool, running_event, "failed").await;
    let mut conn = pool.get().await.expect("connection");
    diesel::sql_query("UPDATE reply_intents SET claimed_until = now() WHERE posted_at IS NULL")
        .execute(&mut conn)
        .await
        .expect("lapse");
    drop(conn);
    let report = run_retention_once(pool, &conversation_settings(30, 1000))
        .await
        .expect("retention");
    assert_eq!(
        (report.conversations.deleted, report.conversations.batches),
        (3, 1)
    );
    assert_eq!(conversation_ids(pool).await, ids(&recent));
}

#[tokio::test]
async fn conversation_retention_zero_keeps_every_conversation() {
    let db = TestDb::new().await;
    let pool = db.pool();
    seed(pool).await;
    let mut all = Vec::new();
    for (n, age) in [(1, 4000), (2, 400), (3, 40)] {
        all.push(aged_conversation(pool, n, age).await);
    }

    // The inbox's retention runs; the conversations' is off.
    let report = run_retention_once(pool, &settings(14, 1000))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Ran);
    assert_eq!(report.deleted, 5);
    assert_eq!(report.conversations, Default::default());
    assert_eq!(conversation_ids(pool).await, ids(&all));

    let report = run_retention_once(pool, &conversation_settings(0, 1000))
        .await
        .expect("retention");
    assert_eq!(report.outcome, RetentionOutcome::Disabled);
    assert_eq!(conversation_ids(pool).await, ids(&all));
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The housekeeping actor's entry once a run is published with `deleted` conversations.
async fn published_run(app: &TestApp, conversations_deleted: u64) -> Value {
    let ops = app.ops_url();
    let client = app.http().clone();
    eventually("a retention run is published", async || {
        let group: Value = client
            .get(format!("{ops}/actors/housekeeping"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let actor = group["actors"].get(0)?.clone();
        let last_run = &actor["detail"]["last_run"];
        (last_run["outcome"] == "ran"
            && last_run["conversations"]["deleted"] == conversations_deleted)
            .then_some(actor)
    })
    .await
}

fn deleted_total(text: &str, table: &str) -> Option<f64> {
    sample(
        text,
        &format!("infragpt_retention_deleted_total{{table=\"{table}\"}}"),
    )
}

#[actix_rt::test]
async fn served_app_runs_the_housekeeping_actor_with_its_metrics() {
    let mut app = TestApp::builder()
        .core_only()
        .configure(|c| {
            c.retention.first_run_delay_secs = 0;
            c.retention.batch_pause_ms = 0;
            c.retention.conversations_days = 30;
        })
        .start()
        .await;

    let actor = published_run(&app, 0).await;
    assert_eq!(actor["key"], "inbox_retention");
    assert_eq!(actor["state"], "running");
    assert_eq!(actor["detail"]["inbound_events_days"], 14);
    assert_eq!(actor["detail"]["conversations_days"], 30);
    assert_eq!(actor["detail"]["interval_secs"], 3600);
    assert!(actor["detail"]["next_run_at"].is_string(), "{actor}");
    let last_run = &actor["detail"]["last_run"];
    let bytes = last_run["inbox_bytes"].as_f64().expect("inbox_bytes");
    assert!(bytes > 0.0, "{actor}");
    assert!(last_run["conversations"]["cutoff"].is_string(), "{actor}");

    let text = app.metrics_text().await;
    assert_eq!(
        deleted_total(&text, "inbound_events"),
        last_run["deleted"].as_f64(),
        "{text}"
    );
    for table in ["conversations", "messages", "reply_intents"] {
        assert_eq!(deleted_total(&text, table), Some(0.0), "{table}: {text}");
    }
    assert_eq!(sample(&text, "infragpt_inbox_bytes"), Some(bytes), "{text}");
    assert!(
        text.contains("infragpt_inbox_events{status=\"done\"}"),
        "{text}"
    );

    // An old conversation: the next start's first run deletes it and counts its rows.
    let old = aged_conversation(app.pool(), 1, 31).await;
    let recent = aged_conversation(app.pool(), 2, 29).await;
    app.stop_service().await;
    app.start_service().await;
    let actor = published_run(&app, 1).await;
    let run = &actor["detail"]["last_run"]["conversations"];
    assert_eq!(
        (&run["messages"], &run["reply_intents"]),
        (&json!(2), &json!(1)),
        "{actor}"
    );
    assert_eq!(conversation_ids(app.pool()).await, vec![recent]);
    assert_eq!(rows_of(app.pool(), old).await, (0, 0, 0));
    let text = app.metrics_text().await;
    for (table, n) in [
        ("conversations", 1.0),
        ("messages", 2.0),
        ("reply_intents", 1.0),
    ] {
        assert_eq!(deleted_total(&text, table), Some(n), "{table}: {text}");
    }
}

#[tokio::test]
async fn slash_questions_go_with_their_commands_unless_the_command_may_run_again() {
    use infragpt::db::schema::slash_questions;
    let db = TestDb::new().await;
    let pool = db.pool();
    let question = |trigger: &'static str, age: i64| async move {
        let mut conn = pool.get().await.expect("connection");
        diesel::insert_into(slash_questions::table)
            .values((
                slash_questions::trigger_id.eq(trigger),
                slash_questions::team_id.eq("T1"),
                slash_questions::channel_id.eq("C1"),
                slash_questions::user_id.eq("U1"),
                slash_questions::question.eq("why?"),
                slash_questions::created_at.eq(Utc::now() - TimeDelta::days(age)),
            ))
            .execute(&mut conn)
            .await
            .expect("insert");
    };
    question("old-done", 30).await;
    question("old-dead-letter", 30).await;
    question("recent", 1).await;
    insert(pool, "slash:old-done", "done", days_ago(30)).await;
    insert(pool, "slash:old-dead-letter", "failed", days_ago(30)).await;
    run_retention_once(pool, &settings(14, 100))
        .await
        .expect("retention");
    let mut conn = pool.get().await.expect("connection");
    let mut left: Vec<String> = slash_questions::table
        .select(slash_questions::trigger_id)
        .load(&mut conn)
        .await
        .expect("load");
    left.sort();
    assert_eq!(left, ["old-dead-letter", "recent"]);
}
