//! End-to-end benchmark of the assembled service (not a test). See `BENCHMARKS.md`.
//!
//! Run: `cargo bench --bench e2e -- [conversations|webhooks|memory|replicas|soak|bolt] [options]`
//! (`cargo bench --bench e2e -- --help` lists the options).
//!
//! Everything runs in this process on loopback: the service (`infragpt::app::start`, the same
//! composition root as `infragpt serve`), the Slack simulator, the development agent and a
//! load generator on a tokio runtime of its own. Each run gets a fresh database (`TestDb`).
//! Every mode measures a *ceiling* next to its end-to-end figure: the bare database work of
//! one event driven through a pool of the same size at the same concurrency, so the ratio
//! says how much of the database's capacity the pipeline turns into finished work.

// Tests read rows after the service has committed them; `get_result` (which answers
// before a commit, clippy.toml) is fine for them.
#![allow(clippy::disallowed_methods)]

#[path = "e2e/bolt.rs"]
mod bolt;
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "e2e/soak.rs"]
mod soak;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use infragpt::config::{self, Config};
use infragpt::db::schema::{conversations, inbound_events, messages};
use infragpt::db::{Pool, build_pool};
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
use infragpt::testkit::slack_sim::{ConnState, SimChannel, SimConfig, SimTeam, SimUser, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;
use infragpt_actors::conversation::ProgressMode;
use infragpt_actors::health::ActorState;
use infragpt_actors::inbox::{NewInboundEvent, RoutingKey};
use infragpt_actors::{kinds, sources};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

/// The allocator the service ships with (`src/main.rs`), so the modes that run the service
/// in this process measure what an operator runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A benchmark-only vault key (32 bytes, base64); the database is thrown away after the run.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const TEAM: &str = "T0BENCH001";
const BOT_USER: &str = "U0BENCHBOT";
const WEBHOOK_SECRET: &str = "bench-github-webhook-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Slack message → Socket Mode → actors → agent (gRPC) → SendReply → reply in the thread.
    Conversations,
    /// Signed GitHub deliveries over HTTP.
    Webhooks,
    /// RSS of the idle service and per live conversation actor.
    Memory,
    /// Three `infragpt serve` processes (the release binary) on one database: throughput with
    /// 1, 2 and 3 replicas, failover after SIGKILL, latency during a rolling SIGTERM restart.
    Replicas,
    /// One `infragpt serve` process (the release binary) under steady load for
    /// `--duration-s`: RSS, open files, database connections and inbox backlog sampled every
    /// `--sample-s`, and whether each is flat at the end.
    Soak,
    /// The same closed loop of mentions against `infragpt serve`, bolt-python and bolt-js,
    /// each a separate process on Socket Mode to the simulator (issue 12's comparison).
    Bolt,
}

/// End-to-end benchmark of InfraGPT (service, Slack simulator and dev agent in one process).
#[derive(Debug, Parser)]
#[command(name = "e2e")]
struct Args {
    /// What to measure.
    #[arg(value_enum, default_value_t = Mode::Conversations)]
    mode: Mode,
    /// Events (conversations) or deliveries (webhooks) to drive.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    events: usize,
    /// Turns (or deliveries) in flight at once.
    #[arg(long, short = 'k', default_value_t = 10)]
    concurrency: usize,
    /// Socket Mode connections the service opens (Slack allows 10).
    #[arg(long, short = 'm', default_value_t = 4)]
    connections: u32,
    /// Worker threads of the load generator's runtime.
    #[arg(long, short = 't', default_value_t = 2)]
    threads: usize,
    /// Agent think time per turn, in milliseconds.
    #[arg(long, default_value_t = 0)]
    think_time_ms: u64,
    /// Channels the events are spread over.
    #[arg(long, default_value_t = 20)]
    channels: usize,
    /// Database pool size of the service (and of the ceiling's pool).
    #[arg(long, default_value_t = 10)]
    pool_size: usize,
    /// A turn without a reply after this many seconds counts as an error.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Live actor counts to measure in `memory` mode.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    actors: Vec<usize>,
    /// GitHub webhook fixtures (one folder per event); default: the repository's
    /// `tests/data/github-webhooks`.
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Webhooks mode: spread the deliveries that name a repository over this many
    /// repositories of the installation (0: as in the fixtures). 1 against N shows what
    /// per-repository routing buys: with one repository every delivery shares one worker.
    #[arg(long, default_value_t = 0)]
    repositories: usize,
    /// Replicas and bolt modes: seconds of each measuring window (throughput per replica count,
    /// steady latency; each bot's window).
    #[arg(long, default_value_t = 15)]
    window_s: u64,
    /// Replicas mode: SIGKILLs for the failover figure.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Soak mode: how long the load runs, in seconds.
    #[arg(long, default_value_t = 1800)]
    duration_s: u64,
    /// Soak mode: seconds between two samples.
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// Soak mode: mentions per Slack thread before the load starts a fresh thread (keeps the
    /// history each turn sends to the agent bounded).
    #[arg(long, default_value_t = 20)]
    soak_turns: usize,
    /// Bolt mode: the bots to measure, in this order (each at `--concurrency`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [bolt::Bot::Infragpt, bolt::Bot::BoltPython, bolt::Bot::BoltJs])]
    bots: Vec<bolt::Bot>,
    /// Bolt mode: Slack threads the mentions go round (one mention in flight per thread).
    #[arg(long, default_value_t = 100)]
    mention_threads: usize,
    /// Bolt mode: seconds of load before the measuring window (`--window-s`).
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// Bolt mode: also measure infragpt at this concurrency, right after its run (0: no).
    #[arg(long, default_value_t = 100)]
    infragpt_extra_k: usize,
    /// Keep the Slack Web API throttle on (Slack's per-workspace limits).
    #[arg(long)]
    slack_throttle: bool,
    /// Conversations mode: how turns show progress (`slack.progress`): `status` (the
    /// default, as the service ships) or `off`, to see what the indicator costs. Placeholder
    /// mode is refused: this mode times an answer by the thread's first bot post.
    #[arg(long, default_value = "status", value_parser = parse_progress)]
    progress: ProgressMode,
    /// Conversations mode: `slack.progress_delay_ms`, how long the agent works before the
    /// indicator is shown (the service's default unless given; 0: at once, as before the
    /// delay existed).
    #[arg(long)]
    progress_delay_ms: Option<u64>,
    /// Conversations mode: subscribe to `message` events too, so every mention also arrives
    /// as its `message` twin (as in a workspace where the app watches monitored channels).
    #[arg(long)]
    twins: bool,
    /// Conversations and webhooks modes: `actors.inbox_group_commit` (`on`, as the service
    /// ships, or `off`: one insert per event through the shared pool), to compare the two
    /// in one session.
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    group_commit: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Conversations and webhooks modes: also print where the time went, stage by stage (the
    /// service's `infragpt_stage_seconds`: count, mean, and time per completed turn or
    /// accepted delivery).
    #[arg(long)]
    profile: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_progress(text: &str) -> Result<ProgressMode, String> {
    match text {
        "status" => Ok(ProgressMode::Status),
        "off" => Ok(ProgressMode::Off),
        "placeholder" => Err(
            "placeholder mode posts before the answer, and this benchmark times an answer by the thread's first bot post: use status or off".to_owned(),
        ),
        other => Err(format!("unknown progress mode {other:?}: status or off")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.events == 0 || args.concurrency == 0 || args.threads == 0 {
        bail!("--events, --concurrency and --threads must be at least 1");
    }
    // One rustls provider (ring), as `infragpt` does at the top of main.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("E2E_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The service runs as `infragpt serve` does: an actix system on a multi-threaded runtime.
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    })
    .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let machine = Machine::probe();
    let report = match args.mode {
        Mode::Conversations => Report::Conversations(conversations(&args).await?),
        Mode::Webhooks => Report::Webhooks(webhooks(&args).await?),
        Mode::Memory => Report::Memory(memory(&args).await?),
        Mode::Replicas => Report::Replicas(replicas::run(&args).await?),
        Mode::Soak => Report::Soak(soak::run(&args).await?),
        Mode::Bolt => Report::Bolt(bolt::run(&args).await?),
    };
    let out = Output {
        mode: args.mode,
        machine,
        report,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&out, args.profile);
    }
    let failed = match &out.report {
        Report::Conversations(r) => !r.check.passed || r.errors > 0,
        Report::Webhooks(r) => r.errors > 0,
        Report::Memory(_) => false,
        Report::Replicas(r) => !r.violations.is_empty() || r.unfinished > 0 || r.dead_letters > 0,
        Report::Soak(r) => !r.passed(),
        Report::Bolt(r) => !r.passed(),
    };
    if failed {
        bail!("the run had errors (see above)");
    }
    Ok(())
}

// ----- reports ---------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Output {
    mode: Mode,
    machine: Machine,
    report: Report,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Report {
    Conversations(ConversationsReport),
    Webhooks(WebhooksReport),
    Memory(MemoryReport),
    Replicas(replicas::ReplicasReport),
    Soak(soak::SoakReport),
    Bolt(bolt::BoltReport),
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
    date: String,
    commit: String,
}

impl Machine {
    fn probe() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit,
        }
    }
}

/// p50/p99/max in milliseconds.
#[derive(Debug, Serialize, Default, Clone, Copy)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut d: Vec<Duration>) -> Self {
        if d.is_empty() {
            return Self::default();
        }
        d.sort_unstable();
        let pick = |q: f64| {
            let i = ((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1;
            d[i].as_secs_f64() * 1e3
        };
        Self {
            samples: d.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: d[d.len() - 1].as_secs_f64() * 1e3,
        }
    }
}

#[derive(Debug, Serialize)]
struct Ceiling {
    transactions: usize,
    seconds: f64,
    tx_per_s: f64,
    errors: usize,
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct ReplyCheck {
    user_messages: usize,
    answered_once: usize,
    lost: usize,
    duplicated: usize,
    stray_bot_messages: usize,
    passed: bool,
}

#[derive(Debug, Serialize)]
struct Rows {
    conversations: i64,
    messages: i64,
    inbound_events: i64,
    inbound_not_done: i64,
}

#[derive(Debug, Serialize)]
struct ConversationsReport {
    /// `slack.progress` of the run.
    progress: ProgressMode,
    /// `slack.progress_delay_ms` of the run.
    progress_delay_ms: u64,
    /// Every mention also arrived as its `message` twin.
    twins: bool,
    /// `actors.inbox_group_commit` of the run.
    group_commit: bool,
    events: usize,
    concurrency: usize,
    connections: u32,
    threads: usize,
    think_time_ms: u64,
    pool_size: usize,
    completed: usize,
    seconds: f64,
    events_per_s: f64,
    ack: Latency,
    unacked_envelopes: usize,
    redelivered_envelopes: usize,
    end_to_end: Latency,
    errors: usize,
    post_errors: usize,
    timeouts: usize,
    check: ReplyCheck,
    rows: Rows,
    rss_start_kib: u64,
    rss_end_kib: u64,
    peak_rss_kib: u64,
    ceiling: Ceiling,
    ratio: f64,
    /// CPU spent per completed turn while the turns ran.
    cpu_per_turn: CpuPerTurn,
    /// Where a turn's time went (`infragpt_stage_seconds`).
    stages: Vec<Stage>,
}

/// CPU milliseconds per completed turn: this process (service, simulator, agent and load
/// together) and every `postgres` process (backends that exit meanwhile are missed; the
/// service's are pooled and live through the run).
#[derive(Debug, Serialize)]
struct CpuPerTurn {
    process_ms: f64,
    postgres_ms: f64,
}

/// One stage of the service's work over the whole run.
#[derive(Debug, Serialize)]
struct Stage {
    stage: String,
    count: u64,
    /// Observations above 100 ms.
    over_100ms: u64,
    mean_ms: f64,
    /// Time in this stage per completed turn (conversations) or accepted delivery
    /// (webhooks).
    per_turn_ms: f64,
}

#[derive(Debug, Serialize)]
struct WebhooksReport {
    deliveries: usize,
    /// Repositories the deliveries were spread over (0: as in the fixtures).
    repositories: usize,
    concurrency: usize,
    threads: usize,
    pool_size: usize,
    /// `actors.inbox_group_commit` of the run.
    group_commit: bool,
    fixtures: usize,
    seconds: f64,
    deliveries_per_s: f64,
    response: Latency,
    errors: usize,
    processed_seconds: f64,
    processed_per_s: f64,
    inbound_events: i64,
    inbound_not_done: i64,
    peak_rss_kib: u64,
    ceiling: Ceiling,
    ratio: f64,
    /// The service's stages over the whole run.
    stages: Vec<Stage>,
}

#[derive(Debug, Serialize)]
struct MemoryPoint {
    actors: usize,
    live_actors: usize,
    rss_kib: u64,
    bytes_per_actor: f64,
    bytes_per_actor_incremental: f64,
    ingest_seconds: f64,
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    rss_before_service_kib: u64,
    idle_service_rss_kib: u64,
    points: Vec<MemoryPoint>,
    peak_rss_kib: u64,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn lat(l: &Latency) -> String {
    format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms)
}

/// One line per stage: count, mean, time per `per` (a completed turn, an accepted delivery).
fn print_stages(stages: &[Stage], per: &str, row: &dyn Fn(&str, String)) {
    for st in stages {
        row(
            &format!("stage {}", st.stage),
            format!(
                "{} × {:.3} ms mean = {:.3} ms per {per} ({} over 100 ms)",
                st.count, st.mean_ms, st.per_turn_ms, st.over_100ms
            ),
        );
    }
}

fn print_table(out: &Output, profile: bool) {
    let m = &out.machine;
    println!(
        "machine: {} cores ({}), {}, commit {}",
        m.cores, m.cpu, m.date, m.commit
    );
    let row = |k: &str, v: String| println!("  {k:<34} {v}");
    match &out.report {
        Report::Conversations(r) => {
            println!(
                "conversations: {} events, concurrency {}, {} Socket Mode connections, {} load threads, think time {} ms, pool {}, progress {:?} after {} ms, group commit {}, twins {}",
                r.events,
                r.concurrency,
                r.connections,
                r.threads,
                r.think_time_ms,
                r.pool_size,
                r.progress,
                r.progress_delay_ms,
                on_off(r.group_commit),
                on_off(r.twins)
            );
            row(
                "end to end",
                format!(
                    "{:.0} events/s ({} completed in {:.2} s)",
                    r.events_per_s, r.completed, r.seconds
                ),
            );
            row("ack latency p50/p99/max", lat(&r.ack));
            row("end-to-end latency p50/p99/max", lat(&r.end_to_end));
            row(
                "envelopes unacked / redelivered",
                format!("{} / {}", r.unacked_envelopes, r.redelivered_envelopes),
            );
            row(
                "errors",
                format!(
                    "{} (post {}, timeouts {}, lost {}, duplicated {}, inbox not done {})",
                    r.errors,
                    r.post_errors,
                    r.timeouts,
                    r.check.lost,
                    r.check.duplicated,
                    r.rows.inbound_not_done
                ),
            );
            row(
                "replies check",
                format!(
                    "{}: {} user messages, {} answered exactly once, {} lost, {} duplicated, {} stray",
                    if r.check.passed { "PASS" } else { "FAIL" },
                    r.check.user_messages,
                    r.check.answered_once,
                    r.check.lost,
                    r.check.duplicated,
                    r.check.stray_bot_messages
                ),
            );
            row(
                "rows written",
                format!(
                    "conversations {}, messages {}, inbound_events {}",
                    r.rows.conversations, r.rows.messages, r.rows.inbound_events
                ),
            );
            row(
                "RSS start / end / peak (VmHWM)",
                format!(
                    "{} / {} / {} (process: service + simulator + agent + load)",
                    mib(r.rss_start_kib),
                    mib(r.rss_end_kib),
                    mib(r.peak_rss_kib)
                ),
            );
            row(
                "CPU per turn process / postgres",
                format!(
                    "{:.2} / {:.2} ms (process: service + simulator + agent + load)",
                    r.cpu_per_turn.process_ms, r.cpu_per_turn.postgres_ms
                ),
            );
            row(
                "ceiling (upsert + 2 inserts, 1 tx)",
                format!(
                    "{:.0} tx/s ({} tx in {:.2} s, {} errors, p50/p99 {:.2}/{:.2} ms)",
                    r.ceiling.tx_per_s,
                    r.ceiling.transactions,
                    r.ceiling.seconds,
                    r.ceiling.errors,
                    r.ceiling.latency.p50_ms,
                    r.ceiling.latency.p99_ms
                ),
            );
            row(
                "ratio e2e events/s ÷ ceiling tx/s",
                format!("{:.3}", r.ratio),
            );
            if profile {
                print_stages(&r.stages, "turn", &row);
            }
        }
        Report::Webhooks(r) => {
            println!(
                "webhooks: {} signed deliveries ({} fixtures, {} repositories), concurrency {}, {} load threads, pool {}, group commit {}",
                r.deliveries,
                r.fixtures,
                r.repositories,
                r.concurrency,
                r.threads,
                r.pool_size,
                on_off(r.group_commit)
            );
            row(
                "accepted (202)",
                format!(
                    "{:.0} deliveries/s ({} in {:.2} s)",
                    r.deliveries_per_s, r.deliveries, r.seconds
                ),
            );
            row("response time p50/p99/max", lat(&r.response));
            row(
                "processed (routed, marked done)",
                format!(
                    "{:.0} deliveries/s (all done {:.2} s after the first request)",
                    r.processed_per_s, r.processed_seconds
                ),
            );
            row(
                "errors",
                format!("{} (inbox not done {})", r.errors, r.inbound_not_done),
            );
            row("inbound_events rows", r.inbound_events.to_string());
            row("peak RSS (VmHWM)", mib(r.peak_rss_kib));
            row(
                "ceiling (1 insert per delivery)",
                format!(
                    "{:.0} tx/s ({} in {:.2} s, {} errors, p50/p99 {:.2}/{:.2} ms)",
                    r.ceiling.tx_per_s,
                    r.ceiling.transactions,
                    r.ceiling.seconds,
                    r.ceiling.errors,
                    r.ceiling.latency.p50_ms,
                    r.ceiling.latency.p99_ms
                ),
            );
            row(
                "ratio deliveries/s ÷ ceiling tx/s",
                format!("{:.3}", r.ratio),
            );
            if profile {
                print_stages(&r.stages, "delivery", &row);
            }
        }
        Report::Memory(r) => {
            println!("memory: live ConversationThread actors over the PostgreSQL inbox");
            row("RSS before the service", mib(r.rss_before_service_kib));
            row("RSS of the idle service", mib(r.idle_service_rss_kib));
            for p in &r.points {
                row(
                    &format!("RSS with {} live actors", p.actors),
                    format!(
                        "{} ({} live; {:.0} B/actor over idle, {:.0} B/actor over the previous point; ingest {:.1} s)",
                        mib(p.rss_kib),
                        p.live_actors,
                        p.bytes_per_actor,
                        p.bytes_per_actor_incremental,
                        p.ingest_seconds
                    ),
                );
            }
            row("peak RSS (VmHWM)", mib(r.peak_rss_kib));
        }
        Report::Replicas(r) => replicas::print(r, &row),
        Report::Soak(r) => soak::print(r, &row),
        Report::Bolt(r) => bolt::print(r, &row),
    }
}

// ----- process and database helpers ------------------------------------------------------------

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| {
                v.trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    proc_status_kib("VmRSS")
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: on or off")),
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn peak_rss_kib() -> u64 {
    proc_status_kib("VmHWM")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn base_config(db: &TestDb, args: &Args, grpc_port: u16) -> anyhow::Result<Config> {
    let yaml = format!(
        "port: 0\ngrpc_port: {grpc_port}\nlog_level: warn\nhttp_log: false\nvault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\ndatabase:\n  url: \"{}\"\n  pool_size: {}\nactors:\n  inbox_group_commit: {}\n",
        db.url.expose(),
        args.pool_size,
        args.group_commit
    );
    config::load_str(&yaml, "e2e-bench.yaml").context("bench configuration")
}

/// A load generator runtime separate from the service's, so `--threads` is what drives load.
fn load_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("e2e-load")
        .enable_all()
        .build()
        .context("building the load runtime")
}

async fn count_rows(pool: &Pool) -> anyhow::Result<Rows> {
    let mut conn = pool.get().await.context("connection for counting")?;
    let conversations: i64 = conversations::table.count().get_result(&mut conn).await?;
    let messages: i64 = messages::table.count().get_result(&mut conn).await?;
    let inbound: i64 = inbound_events::table.count().get_result(&mut conn).await?;
    // Twins (`--twins`) end `ignored`, which is finished too.
    let not_done: i64 = inbound_events::table
        .filter(inbound_events::status.ne_all(["done", "ignored"]))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(Rows {
        conversations,
        messages,
        inbound_events: inbound,
        inbound_not_done: not_done,
    })
}

/// Runs `n` jobs at `concurrency` on the current runtime; returns the wall time, per-job
/// latencies and the error count.
async fn drive<F, Fut>(n: usize, concurrency: usize, job: F) -> (Duration, Vec<Duration>, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(n) {
        let (job, next, errors) = (job.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                match job(i).await {
                    Ok(()) => lat.push(t0.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("job {i} failed: {e:#}");
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    (
        started.elapsed(),
        all,
        AtomicUsize::load(&errors, Ordering::Relaxed),
    )
}

fn ceiling_of(n: usize, (wall, lat, errors): (Duration, Vec<Duration>, usize)) -> Ceiling {
    Ceiling {
        transactions: n,
        seconds: wall.as_secs_f64(),
        tx_per_s: (n - errors) as f64 / wall.as_secs_f64(),
        errors,
        latency: Latency::of(lat),
    }
}

/// The database work of one conversation turn, bare: conversation upsert + the user's message
/// + the agent's message, in one transaction, through a pool like the service's.
async fn conversation_ceiling(db: &TestDb, args: &Args) -> anyhow::Result<Ceiling> {
    let pool = build_pool(&db.url, args.pool_size, Duration::from_secs(5))?;
    let channels = args.channels.max(1);
    let p = pool.clone();
    let result = drive(args.events, args.concurrency, move |i| {
        let pool = p.clone();
        async move {
            let mut conn = pool.get().await?;
            let thread_ts = format!("1900000000.{i:06}");
            let channel = format!("C0CEIL{:03}", i % channels);
            conn.transaction(async |c| {
                let id: uuid::Uuid = diesel::insert_into(conversations::table)
                    .values((
                        conversations::team_id.eq("T0CEILING1"),
                        conversations::channel_id.eq(&channel),
                        conversations::thread_ts.eq(&thread_ts),
                    ))
                    .on_conflict((
                        conversations::team_id,
                        conversations::channel_id,
                        conversations::thread_ts,
                    ))
                    .do_update()
                    .set(conversations::updated_at.eq(now))
                    .returning(conversations::id)
                    .get_result(c)
                    .await?;
                diesel::insert_into(messages::table)
                    .values((
                        messages::conversation_id.eq(id),
                        messages::slack_ts.eq(&thread_ts),
                        messages::sender_kind.eq("user"),
                        messages::sender_id.eq("U0BENCHU01"),
                        messages::text.eq(format!("<@{BOT_USER}> what is the status of api-{i}?")),
                    ))
                    .execute(c)
                    .await?;
                diesel::insert_into(messages::table)
                    .values((
                        messages::conversation_id.eq(id),
                        messages::slack_ts.eq(format!("1900000001.{i:06}")),
                        messages::sender_kind.eq("agent"),
                        messages::sender_id.eq("agent"),
                        messages::text.eq("[demo agent] All services are healthy."),
                        messages::in_reply_to.eq(&thread_ts),
                    ))
                    .execute(c)
                    .await?;
                Ok::<_, diesel::result::Error>(())
            })
            .await?;
            Ok(())
        }
    })
    .await;
    pool.close();
    Ok(ceiling_of(args.events, result))
}

// ----- conversations ---------------------------------------------------------------------------

fn bench_sim_config(channels: usize, twins: bool) -> SimConfig {
    let mut config = SimConfig::default()
        .with_echo_bot_messages(false)
        .with_record_traffic(false);
    // One envelope per mention (`app_mention`) unless asked for the `message` copy Slack also
    // sends when both are subscribed (as monitored channels need): recorded, acknowledged
    // and marked ignored, never answered.
    config.subscriptions.message = twins;
    let app_id = config.apps[0].app_id.clone();
    let users = (1..=5)
        .map(|i| SimUser {
            id: format!("U0BENCHU{i:02}"),
            name: format!("user{i}"),
            real_name: format!("Bench User {i}"),
            email: format!("user{i}@bench.example"),
        })
        .collect();
    let channels = (0..channels.max(1))
        .map(|i| SimChannel {
            id: format!("C0BENCH{i:03}"),
            name: format!("bench-{i}"),
            is_private: false,
        })
        .collect();
    config.teams = vec![SimTeam {
        id: TEAM.to_owned(),
        name: "Bench".to_owned(),
        domain: "bench".to_owned(),
        app_id,
        bot_user_id: BOT_USER.to_owned(),
        bot_id: "B0BENCHBOT".to_owned(),
        bot_name: "infragpt".to_owned(),
        bot_token: Secret::new("xoxb-1000000000042-T0BENCH001-bench"),
        users,
        channels,
    }];
    config
}

/// A reply the load generator waits for, or one that arrived first.
enum Slot {
    Waiting(tokio::sync::oneshot::Sender<Instant>),
    Arrived(Instant),
}

type Slots = Arc<Mutex<HashMap<String, Slot>>>;

struct TurnStats {
    e2e: Vec<Duration>,
    post_errors: usize,
    timeouts: usize,
    first_start: Option<Instant>,
    last_done: Option<Instant>,
}

async fn conversations(args: &Args) -> anyhow::Result<ConversationsReport> {
    let rss_start = rss_kib();
    let db = TestDb::try_new().await.context("creating the database")?;
    let sim = Arc::new(SlackSim::start(bench_sim_config(
        args.channels,
        args.twins,
    ))?);
    let grpc_port = free_port()?;
    let agent = DevAgent::start(DevAgentConfig {
        reply_endpoint: Some(format!("http://127.0.0.1:{grpc_port}")),
        think_time: Duration::from_millis(args.think_time_ms),
        record_requests: false,
        ..DevAgentConfig::default()
    })?;
    let mut config = base_config(&db, args, grpc_port)?;
    let sim_config = sim.config();
    config.slack.api_url = sim.base_url();
    config.slack.app_token = Some(sim_config.apps[0].app_token.clone());
    config.slack.bot_token = Some(sim_config.teams[0].bot_token.clone());
    config.slack.signing_secret = Some(sim_config.apps[0].signing_secret.clone());
    config.slack.socket_mode = true;
    config.slack.connections = args.connections;
    // Slack's per-workspace limits would cap one simulated workspace at a few posts per
    // second: the benchmark measures the pipeline, not the throttle (see BENCHMARKS.md).
    config.slack.throttle = args.slack_throttle;
    config.slack.progress = args.progress;
    if let Some(delay) = args.progress_delay_ms {
        config.slack.progress_delay_ms = delay;
    }
    config.agent.endpoint = agent.endpoint();
    let (running, core) = infragpt::app::start(config)
        .await
        .context("starting the service")?;

    let want = args.connections as usize;
    sim.wait_for(
        |s| {
            s.connections()
                .iter()
                .filter(|c| c.state == ConnState::Open)
                .count()
                >= want
                && s.frames().iter().filter(|f| f.kind == "hello").count() >= want
        },
        Duration::from_secs(30),
    )
    .await
    .context("the service did not open its Socket Mode connections")?;

    let load = load_runtime(args.threads)?;
    let slots: Slots = Arc::new(Mutex::new(HashMap::with_capacity(args.events)));
    let mut posts = sim.subscribe_bot_posts();
    let dispatcher = {
        let slots = slots.clone();
        load.spawn(async move {
            while let Some(post) = posts.recv().await {
                let Some(thread) = post.thread_ts else {
                    continue;
                };
                let mut map = slots.lock();
                match map.remove(&thread) {
                    Some(Slot::Waiting(tx)) => {
                        let _ = tx.send(post.at);
                    }
                    Some(Slot::Arrived(at)) => {
                        map.insert(thread, Slot::Arrived(at));
                    }
                    None => {
                        map.insert(thread, Slot::Arrived(post.at));
                    }
                }
            }
        })
    };

    let channels: Arc<Vec<String>> = Arc::new(
        sim_config.teams[0]
            .channels
            .iter()
            .map(|c| c.id.clone())
            .collect(),
    );
    let users: Arc<Vec<String>> = Arc::new(
        sim_config.teams[0]
            .users
            .iter()
            .map(|u| u.id.clone())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_secs(args.timeout_s);
    let n = args.events;
    // CPU of this process (service, simulator, agent and load) and of PostgreSQL while the
    // turns run: steadier than a throughput on a shared machine for comparing two builds.
    let cpu_start = (bolt::process_cpu_s("self"), bolt::postgres_cpu_s());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(n) {
        let (sim, slots, next, channels, users) = (
            sim.clone(),
            slots.clone(),
            next.clone(),
            channels.clone(),
            users.clone(),
        );
        tasks.push(load.spawn(async move {
            let mut stats = TurnStats {
                e2e: Vec::new(),
                post_errors: 0,
                timeouts: 0,
                first_start: None,
                last_done: None,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let channel = &channels[i % channels.len()];
                let user = &users[i % users.len()];
                let text = format!("<@{BOT_USER}> what is the status of api-{i}?");
                let t0 = Instant::now();
                stats.first_start.get_or_insert(t0);
                let ts = match sim.post_user_message(TEAM, channel, user, &text, None) {
                    Ok(ts) => ts,
                    Err(e) => {
                        if stats.post_errors < 3 {
                            eprintln!("posting event {i} failed: {e}");
                        }
                        stats.post_errors += 1;
                        continue;
                    }
                };
                let rx = {
                    let mut map = slots.lock();
                    match map.remove(&ts) {
                        Some(Slot::Arrived(at)) => {
                            map.insert(ts, Slot::Arrived(at));
                            Err(at)
                        }
                        _ => {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            map.insert(ts, Slot::Waiting(tx));
                            Ok(rx)
                        }
                    }
                };
                let done = match rx {
                    Err(at) => Some(at),
                    Ok(rx) => match tokio::time::timeout(timeout, rx).await {
                        Ok(Ok(at)) => Some(at),
                        _ => None,
                    },
                };
                match done {
                    Some(at) => {
                        stats.e2e.push(at.saturating_duration_since(t0));
                        stats.last_done = Some(stats.last_done.map_or(at, |l| l.max(at)));
                    }
                    None => stats.timeouts += 1,
                }
            }
            stats
        }));
    }
    let mut e2e = Vec::with_capacity(n);
    let (mut post_errors, mut timeouts) = (0, 0);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in tasks {
        let s = t.await.context("a load task panicked")?;
        e2e.extend(s.e2e);
        post_errors += s.post_errors;
        timeouts += s.timeouts;
        first = match (first, s.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = match (last, s.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let cpu_end = (bolt::process_cpu_s("self"), bolt::postgres_cpu_s());
    let completed = e2e.len();
    let per_turn_ms = |start: f64, end: f64| (end - start) * 1000.0 / completed.max(1) as f64;
    let cpu_per_turn = CpuPerTurn {
        process_ms: per_turn_ms(cpu_start.0, cpu_end.0),
        postgres_ms: per_turn_ms(cpu_start.1, cpu_end.1),
    };
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f),
        _ => Duration::ZERO,
    };

    // Let late duplicates (if any) land before checking, and every inbox row reach `done`.
    let settle_until = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rows = count_rows(db.pool()).await?;
        if rows.inbound_not_done == 0 || Instant::now() > settle_until {
            break;
        }
    }
    let check = sim.with_state(|s| {
        let mut replies: HashMap<&str, usize> = HashMap::new();
        let mut user_ts = Vec::new();
        for ch in channels.iter() {
            for m in s.messages_in(TEAM, ch) {
                if m.bot_id.is_some() {
                    if let Some(t) = m.thread_ts.as_deref() {
                        *replies.entry(t).or_default() += 1;
                    } else {
                        *replies.entry("").or_default() += 1;
                    }
                } else if m.thread_ts.is_none() {
                    user_ts.push(m.ts.as_str());
                }
            }
        }
        let (mut once, mut lost, mut dup) = (0, 0, 0);
        for ts in &user_ts {
            match replies.remove(ts).unwrap_or(0) {
                0 => lost += 1,
                1 => once += 1,
                _ => dup += 1,
            }
        }
        let stray: usize = replies.values().sum();
        ReplyCheck {
            user_messages: user_ts.len(),
            answered_once: once,
            lost,
            duplicated: dup,
            stray_bot_messages: stray,
            passed: lost == 0 && dup == 0 && stray == 0 && user_ts.len() == n,
        }
    });
    let (ack, unacked, redelivered) = sim.with_state(|s| {
        let mut ack = Vec::with_capacity(n);
        let (mut unacked, mut redelivered) = (0, 0);
        for d in s.deliveries() {
            match (d.first_sent_at, d.acked_at) {
                (Some(sent), Some(acked)) => ack.push(acked.saturating_duration_since(sent)),
                _ => unacked += 1,
            }
            if d.sends > 1 {
                redelivered += 1;
            }
        }
        (Latency::of(ack), unacked, redelivered)
    });
    let rows = count_rows(db.pool()).await?;
    let rss_end = rss_kib();
    let peak = peak_rss_kib();
    let stages = stages_of(&core.cluster, completed);
    dispatcher.abort();
    load.shutdown_background();
    running.stop().await.context("stopping the service")?;
    agent.stop();
    drop(sim);

    let ceiling = conversation_ceiling(&db, args).await?;
    let events_per_s = if wall.is_zero() {
        0.0
    } else {
        completed as f64 / wall.as_secs_f64()
    };
    let errors = post_errors
        + timeouts
        + check.lost
        + check.duplicated
        + check.stray_bot_messages
        + unacked
        + rows.inbound_not_done as usize;
    Ok(ConversationsReport {
        events: n,
        concurrency: args.concurrency,
        connections: args.connections,
        threads: args.threads,
        think_time_ms: args.think_time_ms,
        pool_size: args.pool_size,
        group_commit: args.group_commit,
        progress: args.progress,
        progress_delay_ms: args
            .progress_delay_ms
            .unwrap_or(infragpt::config::SlackConfig::default().progress_delay_ms),
        twins: args.twins,
        completed,
        seconds: wall.as_secs_f64(),
        events_per_s,
        ack,
        unacked_envelopes: unacked,
        redelivered_envelopes: redelivered,
        end_to_end: Latency::of(e2e),
        errors,
        post_errors,
        timeouts,
        check,
        rows,
        rss_start_kib: rss_start,
        rss_end_kib: rss_end,
        peak_rss_kib: peak,
        ratio: events_per_s / ceiling.tx_per_s,
        ceiling,
        cpu_per_turn,
        stages,
    })
}

// ----- webhooks --------------------------------------------------------------------------------

/// The repository's `tests/data/github-webhooks`.
fn default_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/github-webhooks")
}

/// `(event, file, body)` of every fixture.
fn load_fixtures(dir: &Path) -> anyhow::Result<Vec<(String, String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut events: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading fixtures in {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    events.sort_by_key(|e| e.file_name());
    for event in events {
        let name = event.file_name().to_string_lossy().into_owned();
        let mut files: Vec<_> = std::fs::read_dir(event.path())?
            .filter_map(Result::ok)
            .filter(|f| f.path().extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort_by_key(|f| f.file_name());
        for f in files {
            let body = std::fs::read(f.path())?;
            out.push((
                name.clone(),
                f.file_name().to_string_lossy().into_owned(),
                body,
            ));
        }
    }
    if out.is_empty() {
        bail!("no fixtures under {}", dir.display());
    }
    Ok(out)
}

/// The service's `infragpt_stage_seconds` so far, each stage's time also divided by `done`
/// (completed turns or accepted deliveries).
fn stages_of(cluster: &infragpt_actors::Cluster, done: usize) -> Vec<Stage> {
    cluster
        .metrics()
        .stage_totals()
        .into_iter()
        .map(|t| Stage {
            mean_ms: if t.count == 0 {
                0.0
            } else {
                t.seconds * 1e3 / t.count as f64
            },
            per_turn_ms: t.seconds * 1e3 / done.max(1) as f64,
            stage: t.stage,
            count: t.count,
            over_100ms: t.over_100ms,
        })
        .collect()
}

async fn webhooks(args: &Args) -> anyhow::Result<WebhooksReport> {
    let dir = match &args.fixtures {
        Some(dir) => dir.clone(),
        None => default_fixtures(),
    };
    let fixtures = Arc::new(load_fixtures(&dir)?);
    let db = TestDb::try_new().await.context("creating the database")?;
    let mut config = base_config(&db, args, free_port()?)?;
    config.integrations.github.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    // One installation sends every delivery: the benchmark measures the pipeline, not the
    // per-installation rate limit (which would cap it at 20/s).
    config.webhooks.rate_limits.github.per_second = 0.0;
    let (running, core) = infragpt::app::start(config)
        .await
        .context("starting the service")?;
    let url = format!(
        "http://127.0.0.1:{}/webhooks/github",
        running.http_addr.port()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let secret = Secret::new(WEBHOOK_SECRET);
    // Signatures are computed before the clock starts: the sender's cost is not the service's.
    let signed: Arc<Vec<(String, Vec<u8>, String)>> = Arc::new(
        fixtures
            .iter()
            .flat_map(|(event, _, body)| {
                spread_over_repositories(body, args.repositories)
                    .into_iter()
                    .map(|body| {
                        let signature = infragpt::github::signature::sign(&secret, &body);
                        (event.clone(), body, signature)
                    })
            })
            .collect(),
    );
    let load = load_runtime(args.threads)?;
    let n = args.events;
    let rejected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (wall, response, errors) = {
        let (client, url, signed, rejected) = (
            client.clone(),
            url.clone(),
            signed.clone(),
            rejected.clone(),
        );
        let concurrency = args.concurrency;
        load.spawn(drive(n, concurrency, move |i| {
            let (client, url, signed, rejected) = (
                client.clone(),
                url.clone(),
                signed.clone(),
                rejected.clone(),
            );
            async move {
                let (event, body, sig) = &signed[i % signed.len()];
                let resp = client
                    .post(&url)
                    .header("X-GitHub-Event", event)
                    .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
                    .header("X-Hub-Signature-256", sig)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = resp.status();
                let answer: Value = resp.json().await.unwrap_or(Value::Null);
                if status.as_u16() != 202 || answer["status"] != "recorded" {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    bail!("{event}: HTTP {status}: {answer}");
                }
                Ok(())
            }
        }))
        .await
        .context("the load task panicked")?
    };
    // Processing (routing to the stream, normalizing, marking done) continues after the 202.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = count_rows(db.pool()).await?;
    while rows.inbound_not_done > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = count_rows(db.pool()).await?;
    }
    let processed = started.elapsed();
    let peak = peak_rss_kib();
    let stages = stages_of(&core.cluster, n - errors);
    load.shutdown_background();
    running.stop().await.context("stopping the service")?;

    // Ceiling: one insert per delivery into inbound_events, same pool size and concurrency.
    let pool = build_pool(&db.url, args.pool_size, Duration::from_secs(5))?;
    let payloads: Arc<Vec<(String, Value)>> = Arc::new(
        fixtures
            .iter()
            .map(|(event, _, body)| {
                (
                    event.clone(),
                    serde_json::from_slice(body).unwrap_or_else(|_| json!({})),
                )
            })
            .collect(),
    );
    let p = pool.clone();
    let ceiling = ceiling_of(
        n,
        drive(n, args.concurrency, move |i| {
            let (pool, payloads) = (p.clone(), payloads.clone());
            async move {
                let (event, payload) = &payloads[i % payloads.len()];
                let mut conn = pool.get().await?;
                diesel::insert_into(inbound_events::table)
                    .values((
                        inbound_events::source.eq("github"),
                        inbound_events::source_id.eq(format!("ceiling-{}", uuid::Uuid::new_v4())),
                        inbound_events::routing_key.eq("github/ceiling"),
                        inbound_events::partition.eq(0i16),
                        inbound_events::kind.eq(event),
                        inbound_events::payload.eq(payload),
                    ))
                    .execute(&mut conn)
                    .await?;
                Ok(())
            }
        })
        .await,
    );
    pool.close();
    let accepted = n - errors;
    let deliveries_per_s = accepted as f64 / wall.as_secs_f64();
    Ok(WebhooksReport {
        deliveries: n,
        repositories: args.repositories,
        concurrency: args.concurrency,
        threads: args.threads,
        pool_size: args.pool_size,
        group_commit: args.group_commit,
        fixtures: fixtures.len(),
        seconds: wall.as_secs_f64(),
        deliveries_per_s,
        response: Latency::of(response),
        errors: errors + rows.inbound_not_done as usize,
        processed_seconds: processed.as_secs_f64(),
        processed_per_s: accepted as f64 / processed.as_secs_f64(),
        inbound_events: rows.inbound_events,
        inbound_not_done: rows.inbound_not_done,
        peak_rss_kib: peak,
        ratio: deliveries_per_s / ceiling.tx_per_s,
        ceiling,
        stages,
    })
}

/// `body` once per repository id `1..=n` when it names a repository (interleaved by the
/// caller's order, so consecutive deliveries hit different repositories), else once.
fn spread_over_repositories(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return vec![body.to_vec()];
    };
    if n == 0 || value.pointer("/repository/id").is_none() {
        return vec![body.to_vec()];
    }
    (1..=n)
        .map(|r| {
            value["repository"]["id"] = json!(900_000_000 + r);
            serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
        })
        .collect()
}

// ----- memory ----------------------------------------------------------------------------------

/// Counts events and does nothing else: the actor, not the handler, is what is measured.
/// Inbound events not finished yet.
async fn unfinished(pool: &Pool) -> anyhow::Result<i64> {
    let mut conn = pool.get().await.context("connection for counting")?;
    Ok(inbound_events::table
        .filter(inbound_events::status.eq_any(["pending", "processing"]))
        .count()
        .get_result(&mut conn)
        .await?)
}

async fn memory(args: &Args) -> anyhow::Result<MemoryReport> {
    let mut targets = args.actors.clone();
    targets.sort_unstable();
    targets.dedup();
    let max = targets.last().copied().unwrap_or(0);
    let db = TestDb::try_new().await.context("creating the database")?;
    let mut config = base_config(&db, args, free_port()?)?;
    // Keep every actor alive and every event in the mailboxes (no overload deferral).
    config.actors.idle_timeout_ms = 3_600_000;
    config.actors.high_water_mark = max + 1;
    config.actors.mailbox_capacity = max + 1;
    let rss_before = rss_kib();
    let (running, core) = infragpt::app::start(config)
        .await
        .context("starting the service")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib();

    // Every source has its stream in the assembled service, so the actors are the real
    // conversation threads: Slack events whose body the conversation handler ignores at once
    // (an unknown body type: no Slack call, no store), which leaves each thread's worker idle
    // and alive. The handler is one shared object, so per-thread memory is the worker, its
    // mailbox, its router slot and its health entry.
    let health = core.cluster.health().clone();
    let mut points = Vec::new();
    let mut made = 0usize;
    let (mut prev_rss, mut prev_actors) = (idle, 0usize);
    for target in targets {
        let started = Instant::now();
        let from = made;
        let cluster = core.cluster.clone();
        let (_, _, errors) = drive(target - from, args.concurrency.max(16), move |i| {
            let cluster = cluster.clone();
            async move {
                let k = from + i;
                cluster
                    .ingest(NewInboundEvent {
                        source: sources::SLACK,
                        source_id: format!("bench-{k}"),
                        routing_key: RoutingKey(format!("{TEAM}/C0BENCH000/{k}.000100")),
                        kind: "bench.turn".to_owned(),
                        payload: json!({"type": "bench_idle"}).into(),
                    })
                    .await?;
                Ok(())
            }
        })
        .await;
        if errors > 0 {
            bail!("{errors} ingests failed");
        }
        made = target;
        let deadline = Instant::now() + Duration::from_secs(300);
        while (health.count(kinds::CONVERSATION_THREAD, ActorState::Running) < target
            || unfinished(running.state.db.pool()).await? > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ingest_seconds = started.elapsed().as_secs_f64();
        // Let the last frees settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib();
        let live = health.count(kinds::CONVERSATION_THREAD, ActorState::Running);
        points.push(MemoryPoint {
            actors: target,
            live_actors: live,
            rss_kib: rss,
            bytes_per_actor: rss.saturating_sub(idle) as f64 * 1024.0 / target as f64,
            bytes_per_actor_incremental: rss.saturating_sub(prev_rss) as f64 * 1024.0
                / (target - prev_actors) as f64,
            ingest_seconds,
        });
        prev_rss = rss;
        prev_actors = target;
    }
    let peak = peak_rss_kib();
    running.stop().await.context("stopping the service")?;
    Ok(MemoryReport {
        rss_before_service_kib: rss_before,
        idle_service_rss_kib: idle,
        points,
        peak_rss_kib: peak,
    })
}
