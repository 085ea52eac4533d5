//! `replicas` mode: several `infragpt serve` processes (the release binary this bench was
//! built with, `CARGO_BIN_EXE_infragpt`) on one database, the Slack simulator and the
//! development agent in this process, replying through every replica. See `BENCHMARKS.md`.
//!
//! 1. Throughput with 1, 2 and 3 replicas: K closed-loop threads of mentions run throughout;
//!    a replica is added between windows (each window starts once the new replica holds its
//!    partitions and the load has settled).
//! 2. Failover: with 3 replicas, a replica is SIGKILLed and, at the same instant, one mention
//!    is posted in each idle probe thread whose partition the killed replica held (read from
//!    `/cluster` just before). Failover time = kill → the first of those answers (and → the
//!    last). The replica is started again before the next kill.
//! 3. Rolling restart: turn latency in a steady window, then while the replicas are
//!    SIGTERMed and started again one after the other.
//!
//! Afterwards every mention (load and probes) must have been answered exactly once in its
//! thread, and the inbox must hold nothing unfinished and no dead letter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::inbound_events;
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
use infragpt::testkit::replicas::{
    self, Holdings, Load, LoadConfig, ReplicaSet, ReplicaSetConfig, SlackSetup, ThreadLog, Turn,
};
use infragpt::testkit::slack_sim::{BotPost, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::{Partition, RoutingKey};
use serde::Serialize;

use super::{Args, Latency};

const REPLICAS: usize = 3;
/// Probe threads (idle between kills), about a third of them on each replica.
const PROBES: usize = 24;

#[derive(Debug, Serialize)]
pub struct ThroughputPoint {
    pub replicas: usize,
    pub answered: usize,
    pub seconds: f64,
    pub mentions_per_s: f64,
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
pub struct Failover {
    /// Kill → first answer in a thread of the killed replica.
    pub first_ms: f64,
    /// Kill → last of those answers.
    pub all_ms: f64,
    pub probes: usize,
}

#[derive(Debug, Serialize)]
pub struct ReplicasReport {
    pub binary: String,
    pub threads: usize,
    pub connections: u32,
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    pub window_s: u64,
    pub throughput: Vec<ThroughputPoint>,
    pub failovers: Vec<Failover>,
    pub failover_first_p50_ms: f64,
    pub failover_first_max_ms: f64,
    pub steady: Latency,
    pub rolling: Latency,
    pub rolling_seconds: f64,
    pub mentions: usize,
    pub violations: Vec<String>,
    pub unfinished: i64,
    pub dead_letters: i64,
}

fn latency_of(logs: &[ThreadLog], from: Instant, to: Instant) -> Latency {
    let ms = replicas::latencies_ms(logs, from, to);
    Latency {
        samples: ms.len(),
        p50_ms: replicas::quantile(&ms, 0.50),
        p99_ms: replicas::quantile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
    }
}

fn answered_between(logs: &[ThreadLog], from: Instant, to: Instant) -> usize {
    logs.iter()
        .flat_map(|l| &l.turns)
        .filter(|t| t.answered_at.is_some_and(|a| a >= from && a < to))
        .count()
}

/// Idle threads for the failover probes; thread numbers after the load's, so the checks
/// cover them.
struct Probes {
    config: LoadConfig,
    first: usize,
    logs: Vec<ThreadLog>,
    posts: tokio::sync::mpsc::UnboundedReceiver<BotPost>,
}

impl Probes {
    fn routing_key(&self, i: usize) -> RoutingKey {
        let log = &self.logs[i];
        RoutingKey(format!(
            "{}/{}/{}",
            self.config.team,
            log.channel,
            log.root_ts.as_deref().unwrap_or_default()
        ))
    }

    /// Posts the next mention of probe `i` (its first starts the thread).
    fn post(&mut self, sim: &SlackSim, i: usize) -> anyhow::Result<()> {
        let thread = self.first + i;
        let turn = self.logs[i].turns.len();
        let text = format!(
            "<@{}> ping {}",
            self.config.bot_user,
            replicas::tag(thread, turn)
        );
        let channel = self.config.channels[i % self.config.channels.len()].clone();
        let posted_at = Instant::now();
        let ts = sim.post_user_message(
            &self.config.team,
            &channel,
            &self.config.user,
            &text,
            self.logs[i].root_ts.as_deref(),
        )?;
        let log = &mut self.logs[i];
        log.channel = channel;
        log.root_ts.get_or_insert_with(|| ts.clone());
        log.turns.push(Turn {
            posted_at,
            answered_at: None,
            ts,
        });
        Ok(())
    }

    /// Waits until the last mention of each of `probes` is answered; returns the answer times.
    async fn answers(
        &mut self,
        probes: &[usize],
        within: Duration,
    ) -> anyhow::Result<Vec<Instant>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut times = Vec::new();
        while times.len() < probes.len() {
            let post = tokio::time::timeout_at(deadline, self.posts.recv())
                .await
                .context("probe answers")?
                .context("the simulator stopped")?;
            let Some((thread, turn)) = replicas::parse_tag(&post.text) else {
                continue;
            };
            let Some(i) = thread
                .checked_sub(self.first)
                .filter(|i| *i < self.logs.len())
            else {
                continue;
            };
            if turn + 1 == self.logs[i].turns.len()
                && self.logs[i].turns[turn].answered_at.is_none()
            {
                self.logs[i].turns[turn].answered_at = Some(post.at);
                if probes.contains(&i) {
                    times.push(post.at);
                }
            }
        }
        Ok(times)
    }
}

async fn owner_of_partitions(set: &ReplicaSet, ask: usize) -> anyhow::Result<Holdings> {
    let view = set
        .cluster_view(ask)
        .await
        .map_err(|e| anyhow::anyhow!("/cluster: {e}"))?;
    Ok(Holdings::of(&view))
}

async fn wait_all_held(set: &ReplicaSet, ask: usize, live: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = owner_of_partitions(set, ask).await?;
        match h.all_held_by(live) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("partitions not settled: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn run(args: &Args) -> anyhow::Result<ReplicasReport> {
    let db = TestDb::new().await;
    let sim = Arc::new(SlackSim::start(replicas::sim_config()).context("Slack simulator")?);
    let agent_addr = replicas::free_port();
    let binary = env!("CARGO_BIN_EXE_infragpt");
    let mut config = ReplicaSetConfig::new(binary, REPLICAS, db.url.clone(), agent_addr);
    config.slack = Some(SlackSetup::of(&sim, args.connections));
    config.pool_size = args.pool_size;
    let timings = config.timings;
    let mut set = ReplicaSet::new(config)?;
    let mut endpoints = set.grpc_endpoints();
    let first = endpoints.remove(0);
    let agent = DevAgent::start(DevAgentConfig {
        bind: agent_addr,
        reply_endpoint: Some(first),
        more_reply_endpoints: endpoints,
        think_time: Duration::from_millis(args.think_time_ms),
        record_requests: false,
        ..DevAgentConfig::default()
    })?;
    let window = Duration::from_secs(args.window_s);
    let settle = Duration::from_secs(3);

    // 1. Throughput with 1, 2, 3 replicas.
    set.start(0).await?;
    let threads = args.concurrency;
    let load = Load::start(sim.clone(), LoadConfig::for_sim(&sim, threads, usize::MAX));
    let mut throughput = Vec::new();
    for n in 1..=REPLICAS {
        if n > 1 {
            set.start(n - 1).await?;
            wait_all_held(&set, 0, n).await?;
        }
        tokio::time::sleep(settle).await;
        let from = Instant::now();
        tokio::time::sleep(window).await;
        let to = Instant::now();
        let logs = load.snapshot();
        let answered = answered_between(&logs, from, to);
        let seconds = (to - from).as_secs_f64();
        throughput.push(ThroughputPoint {
            replicas: n,
            answered,
            seconds,
            mentions_per_s: answered as f64 / seconds,
            latency: latency_of(&logs, from, to),
        });
        eprintln!(
            "{n} replica(s): {answered} answered in {seconds:.1} s ({:.1}/s)",
            answered as f64 / seconds
        );
    }

    // 2. Failover after SIGKILL.
    let load_config = LoadConfig::for_sim(&sim, threads, 0);
    let mut probes = Probes {
        config: load_config.clone(),
        first: threads,
        logs: vec![ThreadLog::default(); PROBES],
        posts: sim.subscribe_bot_posts(),
    };
    let all: Vec<usize> = (0..PROBES).collect();
    for i in 0..PROBES {
        probes.post(&sim, i)?;
    }
    probes.answers(&all, Duration::from_secs(60)).await?;
    let mut failovers = Vec::new();
    for k in 0..args.kills {
        let victim = k % REPLICAS;
        let ask = (victim + 1) % REPLICAS;
        wait_all_held(&set, ask, REPLICAS).await?;
        let victim_id = set
            .replica_id(victim)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let holdings = owner_of_partitions(&set, ask).await?;
        let held = holdings.live.get(&victim_id).cloned().unwrap_or_default();
        let targets: Vec<usize> = (0..PROBES)
            .filter(|i| held.contains(&Partition::of(&probes.routing_key(*i)).0))
            .collect();
        if targets.is_empty() {
            bail!("no probe thread on replica {victim} ({victim_id})");
        }
        set.kill(victim);
        let killed = Instant::now();
        for i in &targets {
            probes.post(&sim, *i)?;
        }
        let times = probes.answers(&targets, Duration::from_secs(60)).await?;
        let first = times
            .iter()
            .min()
            .map_or(f64::NAN, |t| (*t - killed).as_secs_f64() * 1e3);
        let last = times
            .iter()
            .max()
            .map_or(f64::NAN, |t| (*t - killed).as_secs_f64() * 1e3);
        eprintln!(
            "kill {k} (replica {victim}): first answer after {first:.0} ms, all {} after {last:.0} ms",
            targets.len()
        );
        failovers.push(Failover {
            first_ms: first,
            all_ms: last,
            probes: targets.len(),
        });
        set.start(victim).await?;
    }
    wait_all_held(&set, 0, REPLICAS).await?;

    // 3. Rolling restart with SIGTERM.
    tokio::time::sleep(settle).await;
    let steady_from = Instant::now();
    tokio::time::sleep(window).await;
    let steady_to = Instant::now();
    let mut stops = Vec::new();
    for i in 0..REPLICAS {
        let asked = Instant::now();
        set.terminate(i, Duration::from_secs(60)).await?;
        let exited = Instant::now();
        set.start(i).await?;
        stops.push((i, asked, exited, Instant::now()));
    }
    let rolling_to = Instant::now();
    let logs = load.stop().await;
    let steady = latency_of(&logs, steady_from, steady_to);
    let rolling = latency_of(&logs, steady_to, rolling_to);
    print_slowest(&logs, steady_to, rolling_to, &stops);

    // Checks.
    let mut all_logs = logs;
    all_logs.extend(probes.logs);
    let mut check = load_config;
    check.threads = all_logs.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (unfinished, dead_letters) = loop {
        let counts = inbox_counts(&db).await?;
        if counts.0 == 0 || Instant::now() >= deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let violations = replicas::check_answers(&sim, &check, &all_logs);
    drop(agent);
    let mut firsts: Vec<f64> = failovers.iter().map(|f| f.first_ms).collect();
    firsts.sort_by(f64::total_cmp);
    Ok(ReplicasReport {
        binary: binary.to_owned(),
        threads,
        connections: args.connections,
        lease_ms: timings.lease_ms,
        heartbeat_ms: timings.heartbeat_ms,
        window_s: args.window_s,
        throughput,
        failover_first_p50_ms: replicas::quantile(&firsts, 0.5),
        failover_first_max_ms: firsts.last().copied().unwrap_or(f64::NAN),
        failovers,
        steady,
        rolling,
        rolling_seconds: (rolling_to - steady_to).as_secs_f64(),
        mentions: replicas::mentions(&all_logs),
        violations,
        unfinished,
        dead_letters,
    })
}

/// The slowest turns of the rolling restart, placed against the SIGTERMs (on stderr: where
/// a rolling restart's latency comes from).
fn print_slowest(
    logs: &[ThreadLog],
    from: Instant,
    to: Instant,
    stops: &[(usize, Instant, Instant, Instant)],
) {
    for (i, asked, exited, ready) in stops {
        eprintln!(
            "rolling: replica {i} SIGTERM at +{:.0} ms, exited after {:.0} ms, ready again after {:.0} ms",
            (*asked - from).as_secs_f64() * 1e3,
            (*exited - *asked).as_secs_f64() * 1e3,
            (*ready - *asked).as_secs_f64() * 1e3,
        );
    }
    let mut slow: Vec<(f64, f64, &str)> = logs
        .iter()
        .flat_map(|l| l.turns.iter().map(move |t| (l, t)))
        .filter(|(_, t)| t.posted_at >= from && t.posted_at < to)
        .filter_map(|(l, t)| {
            let latency = (t.answered_at? - t.posted_at).as_secs_f64() * 1e3;
            Some((
                latency,
                (t.posted_at - from).as_secs_f64() * 1e3,
                l.channel.as_str(),
            ))
        })
        .collect();
    slow.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (latency, posted, channel) in slow.iter().take(8) {
        eprintln!("rolling: slow turn {latency:.0} ms, posted at +{posted:.0} ms in {channel}");
    }
}

async fn inbox_counts(db: &TestDb) -> anyhow::Result<(i64, i64)> {
    let mut conn = db.pool().get().await.context("a connection")?;
    let unfinished: i64 = inbound_events::table
        .filter(inbound_events::status.eq_any(["pending", "processing"]))
        .count()
        .get_result(&mut conn)
        .await?;
    let failed: i64 = inbound_events::table
        .filter(inbound_events::status.eq("failed"))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok((unfinished, failed))
}

pub fn print(r: &ReplicasReport, row: &dyn Fn(&str, String)) {
    println!(
        "replicas: {} closed-loop threads, {} Socket Mode connections per replica, lease {} ms, heartbeat {} ms, release binary {}",
        r.threads, r.connections, r.lease_ms, r.heartbeat_ms, r.binary
    );
    for p in &r.throughput {
        row(
            &format!("throughput, {} replica(s)", p.replicas),
            format!(
                "{:.1} mentions/s ({} answered in {:.1} s; latency p50/p99/max {:.1} / {:.1} / {:.1} ms)",
                p.mentions_per_s,
                p.answered,
                p.seconds,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms
            ),
        );
    }
    for (k, f) in r.failovers.iter().enumerate() {
        row(
            &format!("failover after SIGKILL #{}", k + 1),
            format!(
                "first answer {:.0} ms, all {} probes {:.0} ms",
                f.first_ms, f.probes, f.all_ms
            ),
        );
    }
    row(
        "failover (first answer) p50 / max",
        format!(
            "{:.0} / {:.0} ms",
            r.failover_first_p50_ms, r.failover_first_max_ms
        ),
    );
    row(
        "turn latency, steady (3 replicas)",
        format!(
            "p50/p99/max {:.1} / {:.1} / {:.1} ms ({} turns)",
            r.steady.p50_ms, r.steady.p99_ms, r.steady.max_ms, r.steady.samples
        ),
    );
    row(
        "turn latency, rolling SIGTERM restart",
        format!(
            "p50/p99/max {:.1} / {:.1} / {:.1} ms ({} turns in {:.1} s)",
            r.rolling.p50_ms,
            r.rolling.p99_ms,
            r.rolling.max_ms,
            r.rolling.samples,
            r.rolling_seconds
        ),
    );
    row(
        "replies check",
        if r.violations.is_empty() {
            format!("PASS: {} mentions answered exactly once", r.mentions)
        } else {
            format!(
                "FAIL: {} violations over {} mentions; first: {:?}",
                r.violations.len(),
                r.mentions,
                r.violations.iter().take(5).collect::<Vec<_>>()
            )
        },
    );
    row(
        "inbox unfinished / dead letters",
        format!("{} / {}", r.unfinished, r.dead_letters),
    );
}
