//! Inbox retention against real PostgreSQL: which rows go, in how many batches, the advisory
//! lock that keeps it to one process, and the housekeeping actor in the served app.

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

use crate::support::app::TestApp;
use crate::support::wait::eventually;

fn settings(days: u32, batch_size: u32) -> RetentionSettings {
    RetentionSettings {
        inbound_events_days: days,
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

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[actix_rt::test]
async fn served_app_runs_the_housekeeping_actor_with_its_metrics() {
    let app = TestApp::builder()
        .core_only()
        .configure(|c| {
            c.retention.first_run_delay_secs = 0;
            c.retention.batch_pause_ms = 0;
        })
        .start()
        .await;
    let ops = app.ops_url();
    let client = app.http().clone();

    let actor = eventually("the first retention run is published", async || {
        let group: Value = client
            .get(format!("{ops}/actors/housekeeping"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let actor = group["actors"].get(0)?.clone();
        (actor["detail"]["last_run"]["outcome"] == "ran").then_some(actor)
    })
    .await;
    assert_eq!(actor["key"], "inbox_retention");
    assert_eq!(actor["state"], "running");
    assert_eq!(actor["detail"]["inbound_events_days"], 14);
    assert_eq!(actor["detail"]["interval_secs"], 3600);
    assert!(actor["detail"]["next_run_at"].is_string(), "{actor}");
    let last_run = &actor["detail"]["last_run"];
    let bytes = last_run["inbox_bytes"].as_f64().expect("inbox_bytes");
    assert!(bytes > 0.0, "{actor}");

    let text = client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert_eq!(
        sample(&text, "infragpt_retention_deleted_total"),
        last_run["deleted"].as_f64(),
        "{text}"
    );
    assert_eq!(sample(&text, "infragpt_inbox_bytes"), Some(bytes), "{text}");
    assert!(
        text.contains("infragpt_inbox_events{status=\"done\"}"),
        "{text}"
    );
}
