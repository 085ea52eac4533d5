//! `soak` mode: one `infragpt serve` process (the binary this bench was built with) under a
//! steady load for `--duration-s` (30 minutes by default), sampled every `--sample-s`
//! (10 s): its resident memory and open file descriptors (from `/proc`), its database
//! connections (`pg_stat_activity`) and the inbox backlog (events pending or processing).
//! See `BENCHMARKS.md`.
//!
//! The load is `--concurrency` closed-loop Slack threads of `--soak-turns` mentions each,
//! started afresh when they end (so a thread's history, which every turn sends to the agent,
//! stays bounded and the work per turn is the same at minute 1 and minute 30), with the
//! development agent thinking `--think-time-ms` per turn.
//!
//! **Flat**: a series is flat when the mean of its last third is within a tolerance of the
//! mean of its middle third (the first third is warm-up: pools filling, caches, the
//! allocator reaching its working set). Tolerances: RSS 10 % (at least 2 MiB), file
//! descriptors 10 % (at least 4), database connections 20 % (at least 2), backlog 50 % (at
//! least 10 events; it moves with the turns in flight). The run fails when any is not flat,
//! when a mention went unanswered, or when the inbox holds an unfinished event or a dead
//! letter at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
use infragpt::testkit::replicas::{
    self, Load, LoadConfig, ReplicaSet, ReplicaSetConfig, SlackSetup,
};
use infragpt::testkit::slack_sim::SlackSim;
use infragpt::testkit::test_db::TestDb;
use serde::Serialize;

use super::Args;

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub db_connections: i64,
    pub backlog: i64,
    /// Mentions answered since the previous sample.
    pub answered: usize,
}

/// Whether one series is flat.
#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub series: &'static str,
    pub middle_mean: f64,
    pub last_mean: f64,
    pub tolerance: f64,
    pub flat: bool,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub binary: String,
    pub duration_s: u64,
    pub sample_s: u64,
    pub threads: usize,
    pub turns_per_thread: usize,
    pub think_time_ms: u64,
    pub answered: usize,
    pub mentions_per_s: f64,
    pub unanswered: usize,
    pub samples: Vec<Sample>,
    pub verdicts: Vec<Flatness>,
    pub unfinished: i64,
    pub dead_letters: i64,
}

impl SoakReport {
    /// True when every series is flat and nothing was lost or left over.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.flat)
            && self.unanswered == 0
            && self.unfinished == 0
            && self.dead_letters == 0
    }
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Connections to the database other than the sampler's own.
async fn db_connections(db: &TestDb) -> anyhow::Result<i64> {
    let mut conn = db.pool().get().await.context("a connection")?;
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .get_result(&mut conn)
    .await?;
    Ok(row.n)
}

async fn inbox(db: &TestDb, statuses: &[&str]) -> anyhow::Result<i64> {
    use infragpt::db::schema::inbound_events;
    let mut conn = db.pool().get().await.context("a connection")?;
    Ok(inbound_events::table
        .filter(inbound_events::status.eq_any(statuses))
        .count()
        .get_result(&mut conn)
        .await?)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Last third against middle third (see the module docs).
pub fn flatness(series: &'static str, values: &[f64], rel: f64, abs: f64) -> Flatness {
    let third = values.len() / 3;
    let middle = mean(&values[third..2 * third]);
    let last = mean(&values[2 * third..]);
    let tolerance = (middle.abs() * rel).max(abs);
    Flatness {
        series,
        middle_mean: middle,
        last_mean: last,
        tolerance,
        // Too few samples to have thirds: not flat (the run was too short to say).
        flat: third > 0 && (last - middle).abs() <= tolerance,
    }
}

pub async fn run(args: &Args) -> anyhow::Result<SoakReport> {
    if args.sample_s == 0 || args.duration_s < 3 * args.sample_s {
        bail!("--duration-s must cover at least three samples of --sample-s");
    }
    let db = TestDb::new().await;
    let sim = Arc::new(SlackSim::start(replicas::sim_config()).context("Slack simulator")?);
    let agent_addr = replicas::free_port();
    let binary = env!("CARGO_BIN_EXE_infragpt");
    let mut config = ReplicaSetConfig::new(binary, 1, db.url.clone(), agent_addr);
    config.slack = Some(SlackSetup::of(&sim, args.connections));
    config.pool_size = args.pool_size;
    let mut set = ReplicaSet::new(config)?;
    let agent = DevAgent::start(DevAgentConfig {
        bind: agent_addr,
        reply_endpoint: set.grpc_endpoints().into_iter().next(),
        think_time: Duration::from_millis(args.think_time_ms),
        record_requests: false,
        ..DevAgentConfig::default()
    })?;
    set.start(0).await?;
    let pid = set.pid(0).context("the service's pid")?;

    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_s);
    let threads = args.concurrency;
    let turns = args.soak_turns.max(1);
    // The load: rounds of fresh threads until the time is up.
    let answered_total = Arc::new(AtomicUsize::new(0));
    let unanswered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (sim, answered_total, unanswered) =
            (sim.clone(), answered_total.clone(), unanswered.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                let load = Load::start(sim.clone(), LoadConfig::for_sim(&sim, threads, turns));
                let logs = load.finish().await;
                let mentions = replicas::mentions(&logs);
                let answered = logs
                    .iter()
                    .flat_map(|l| &l.turns)
                    .filter(|t| t.answered_at.is_some())
                    .count();
                answered_total.fetch_add(answered, Ordering::Relaxed);
                unanswered.fetch_add(mentions - answered, Ordering::Relaxed);
                for e in logs.iter().filter_map(|l| l.error.as_ref()) {
                    eprintln!("soak: {e}");
                }
            }
        })
    };

    let mut samples = Vec::new();
    let mut previous = 0;
    let mut next = started + Duration::from_secs(args.sample_s);
    while next <= until {
        tokio::time::sleep_until(next.into()).await;
        let total = AtomicUsize::load(&answered_total, Ordering::Relaxed);
        let sample = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_kib: proc_rss_kib(pid),
            fds: proc_fds(pid),
            db_connections: db_connections(&db).await?,
            backlog: inbox(&db, &["pending", "processing"]).await?,
            answered: total - previous,
        };
        previous = total;
        eprintln!(
            "soak {:>6.0} s: rss {:>8} KiB, fds {:>4}, db connections {:>3}, backlog {:>4}, answered {:>6}",
            sample.at_s,
            sample.rss_kib,
            sample.fds,
            sample.db_connections,
            sample.backlog,
            sample.answered
        );
        samples.push(sample);
        next += Duration::from_secs(args.sample_s);
    }
    load.await.context("the load panicked")?;
    let seconds = started.elapsed().as_secs_f64();

    // Everything recorded must finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    let unfinished = loop {
        let n = inbox(&db, &["pending", "processing"]).await?;
        if n == 0 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dead_letters = inbox(&db, &["failed"]).await?;
    set.terminate(0, Duration::from_secs(60)).await?;
    agent.stop();

    let series = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    let verdicts = vec![
        flatness("rss_kib", &series(|s| s.rss_kib as f64), 0.10, 2048.0),
        flatness("open_fds", &series(|s| s.fds as f64), 0.10, 4.0),
        flatness(
            "db_connections",
            &series(|s| s.db_connections as f64),
            0.20,
            2.0,
        ),
        flatness("inbox_backlog", &series(|s| s.backlog as f64), 0.50, 10.0),
    ];
    let answered = AtomicUsize::load(&answered_total, Ordering::Relaxed);
    Ok(SoakReport {
        binary: binary.to_owned(),
        duration_s: args.duration_s,
        sample_s: args.sample_s,
        threads,
        turns_per_thread: turns,
        think_time_ms: args.think_time_ms,
        answered,
        mentions_per_s: answered as f64 / seconds,
        unanswered: AtomicUsize::load(&unanswered, Ordering::Relaxed),
        samples,
        verdicts,
        unfinished,
        dead_letters,
    })
}

pub fn print(r: &SoakReport, row: &dyn Fn(&str, String)) {
    println!(
        "soak: one `infragpt serve` ({}), {} closed-loop threads of {} mentions, agent think time {} ms, {} s sampled every {} s",
        r.binary, r.threads, r.turns_per_thread, r.think_time_ms, r.duration_s, r.sample_s
    );
    println!(
        "{:>8} {:>10} {:>6} {:>8} {:>8} {:>9}",
        "t (s)", "RSS (MiB)", "fds", "db conn", "backlog", "answered"
    );
    for s in &r.samples {
        println!(
            "{:>8.0} {:>10.1} {:>6} {:>8} {:>8} {:>9}",
            s.at_s,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.db_connections,
            s.backlog,
            s.answered
        );
    }
    for v in &r.verdicts {
        row(
            &format!("{} flat?", v.series),
            format!(
                "{}: last third {:.1} vs middle third {:.1} (tolerance ±{:.1})",
                if v.flat { "FLAT" } else { "NOT FLAT" },
                v.last_mean,
                v.middle_mean,
                v.tolerance
            ),
        );
    }
    row(
        "mentions answered",
        format!(
            "{} ({:.1}/s), {} unanswered",
            r.answered, r.mentions_per_s, r.unanswered
        ),
    );
    row(
        "inbox unfinished / dead letters at the end",
        format!("{} / {}", r.unfinished, r.dead_letters),
    );
}
