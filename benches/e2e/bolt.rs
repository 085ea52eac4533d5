//! `bolt` mode: the same closed loop of Slack mentions against InfraGPT and against the two
//! Slack Bolt SDKs, each bot a separate process on a real Socket Mode connection to the
//! simulator in this process (issue 12: "at least 1.5x the better of bolt-python and
//! bolt-js"). See `BENCHMARKS.md`.
//!
//! * `infragpt`: one `infragpt serve` of the release binary this bench was built with
//!   (`CARGO_BIN_EXE_infragpt`, the replica harness as `replicas` mode uses it) on a fresh
//!   database, doing its full turn: inbox, store, the development agent over gRPC (in this
//!   process), SendReply, `chat.postMessage`.
//! * `bolt-python`: `benches/bolt/app.py` (slack_bolt `AsyncApp` + `AsyncSocketModeHandler` on
//!   aiohttp, uvloop). Bolt acks the `app_mention`, the listener `say`s the answer in the
//!   thread. Nothing is stored.
//! * `bolt-js`: `benches/bolt/app.js` (`@slack/bolt`, `socketMode: true`), the same app.
//!
//! Every run (a bot at a concurrency) gets its own app and workspace in the simulator, so its
//! envelopes go to its connections only and the checks read its channels only. The runs go
//! one after the other (the machine is shared by all of them, never by two at once).
//!
//! The load: `--mention-threads` Slack threads (100) and K slots (`--concurrency`, 10); slot
//! `s` owns the threads `t` with `t % K == s` and goes round them, posting a mention in the
//! next one once the previous mention is answered, so K mentions are in flight and a thread
//! never has two. `--warmup-s` of load first, then the measuring window (`--window-s`): a
//! mention counts when its answer is stored within the window, turn latency is that of the
//! mentions posted within it. Then the slots finish their mention and stop, and every mention
//! of the run must be answered exactly once in its own thread (`check_answers`).
//!
//! The bench installs nothing: a bot whose runtime or packages are missing is reported as
//! skipped, with the reason, and the run fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
use infragpt::testkit::replicas::{
    self, LoadConfig, ReplicaSet, ReplicaSetConfig, SlackSetup, ThreadLog, Turn,
};
use infragpt::testkit::slack_sim::{
    BotPost, ConnState, SimApp, SimChannel, SimConfig, SimTeam, SimUser, SlackSim,
};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;
use parking_lot::Mutex;
use serde::Serialize;

use super::{Args, Latency};

/// The bots this mode can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bot {
    /// `infragpt serve` (the release binary).
    Infragpt,
    /// `benches/bolt/app.py` (slack_bolt, aiohttp, uvloop).
    BoltPython,
    /// `benches/bolt/app.js` (@slack/bolt).
    BoltJs,
}

impl Bot {
    fn name(self) -> &'static str {
        match self {
            Self::Infragpt => "infragpt",
            Self::BoltPython => "bolt-python",
            Self::BoltJs => "bolt-js",
        }
    }

    fn is_bolt(self) -> bool {
        self != Self::Infragpt
    }
}

/// One bot at one concurrency.
#[derive(Debug, Serialize)]
pub struct BotRun {
    pub bot: Bot,
    /// Runtime and package versions (or the binary).
    pub runtime: String,
    /// Why the bot was not measured (its runtime or packages are missing, or it failed to
    /// connect).
    pub skipped: Option<String>,
    pub concurrency: usize,
    pub threads: usize,
    /// Socket Mode connections the bot opened.
    pub connections: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    /// Answers stored by the simulator within the window.
    pub answered: usize,
    pub answered_per_s: f64,
    /// Mention posted → answer stored, for mentions posted within the window.
    pub turn: Latency,
    /// Envelope first written to the socket → ack received, for envelopes first sent within
    /// the window.
    pub ack: Latency,
    /// Envelopes of the run never acknowledged, and sent more than once.
    pub unacked: usize,
    pub redelivered: usize,
    /// Mentions posted over the whole run (warm-up, window, the last round).
    pub mentions: usize,
    /// Reply check: every mention answered exactly once, in its own thread, no other bot post.
    pub violations: Vec<String>,
    /// CPU used during the window, in cores (CPU seconds ÷ window): the bot's process, this
    /// process (simulator, load, and for infragpt the development agent), and the whole
    /// machine (everything, PostgreSQL and other users included).
    pub cpu_bot: f64,
    pub cpu_bench: f64,
    /// Every `postgres` process on the machine (other users' sessions included).
    pub cpu_postgres: f64,
    pub cpu_machine: f64,
    /// infragpt only: where its turns' time went within the window (`infragpt_stage_seconds`
    /// from its ops `/metrics`, the difference between the window's ends). Stages overlap
    /// (`agent_call` includes the agent's SendReply).
    pub stages: Vec<super::Stage>,
}

impl BotRun {
    fn measured(&self) -> bool {
        self.skipped.is_none()
    }
}

#[derive(Debug, Serialize)]
pub struct BoltReport {
    pub concurrency: usize,
    pub threads: usize,
    pub infragpt_connections: u32,
    pub runs: Vec<BotRun>,
    /// infragpt answered/s ÷ the better Bolt's, at `concurrency` (`None`: one side missing).
    pub ratio: Option<f64>,
    /// The bar of issue 12.
    pub target: f64,
}

impl BoltReport {
    /// True when every selected bot was measured and passed the reply check.
    pub fn passed(&self) -> bool {
        self.runs
            .iter()
            .all(|r| r.measured() && r.violations.is_empty() && r.unacked == 0)
    }
}

const TARGET: f64 = 1.5;
const CHANNELS: usize = 10;

/// The simulator: one app and one workspace per run (mentions only, bot posts not echoed,
/// Slack's ack timeout and redeliveries).
fn sim_config(runs: usize) -> SimConfig {
    let mut config = replicas::sim_config().with_ack_timeout(Duration::from_secs(3));
    config.max_redeliveries = 3;
    let template = config.apps[0].clone();
    config.apps = (0..runs)
        .map(|i| SimApp {
            app_id: format!("A0BOLT{i:04}"),
            app_token: Secret::new(format!("xapp-1-A0BOLT{i:04}-10000000000{i:02}-sim")),
            ..template.clone()
        })
        .collect();
    config.teams = (0..runs)
        .map(|i| SimTeam {
            id: format!("T0BOLT{i:04}"),
            name: format!("Bolt bench {i}"),
            domain: format!("boltbench{i}"),
            app_id: format!("A0BOLT{i:04}"),
            bot_user_id: format!("U0BOT{i:05}"),
            bot_id: format!("B0BOT{i:05}"),
            bot_name: "benchbot".into(),
            bot_token: Secret::new(format!("xoxb-10000000000{i:02}-T0BOLT{i:04}-sim")),
            users: vec![SimUser {
                id: format!("U0USR{i:05}"),
                name: format!("user{i}"),
                real_name: format!("User {i}"),
                email: format!("user{i}@boltbench{i}.example"),
            }],
            channels: (0..CHANNELS)
                .map(|c| SimChannel {
                    id: format!("C0R{i:02}CH{c:03}"),
                    name: format!("bench-{c}"),
                    is_private: false,
                })
                .collect(),
        })
        .collect();
    config
}

fn bolt_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bolt")
}

fn python() -> String {
    std::env::var("BOLT_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn node() -> String {
    std::env::var("BOLT_NODE").unwrap_or_else(|_| "node".into())
}

/// The versions of a Bolt bot's runtime and packages, or why it cannot run.
fn probe(bot: Bot) -> Result<String, String> {
    let run = |program: &str, args: &[&str]| -> Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(bolt_dir())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
                .to_owned())
        }
    };
    match bot {
        Bot::Infragpt => Ok(env!("CARGO_BIN_EXE_infragpt").to_owned()),
        Bot::BoltPython => run(
            &python(),
            &[
                "-c",
                "import sys, slack_bolt.version as b, slack_sdk.version as s, aiohttp, uvloop; \
                 print(f'python {sys.version.split()[0]}, slack_bolt {b.__version__}, slack_sdk {s.__version__}, aiohttp {aiohttp.__version__}, uvloop {uvloop.__version__}')",
            ],
        )
        .map_err(|e| {
            format!(
                "{}: {e} (install: {} -m pip install -r benches/bolt/requirements.txt)",
                python(),
                python()
            )
        }),
        Bot::BoltJs => {
            let version = run(&node(), &["--version"])
                .map_err(|e| format!("{e} (bolt-js needs node 20 or later)"))?;
            let package = bolt_dir().join("node_modules/@slack/bolt/package.json");
            let text = std::fs::read_to_string(&package).map_err(|_| {
                format!(
                    "{} is missing (install: cd benches/bolt && npm ci)",
                    package.display()
                )
            })?;
            let bolt = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            let socket = std::fs::read_to_string(
                bolt_dir().join("node_modules/@slack/socket-mode/package.json"),
            )
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
            Ok(format!(
                "node {version}, @slack/bolt {bolt}, @slack/socket-mode {socket}"
            ))
        }
    }
}

// ----- CPU accounting ----------------------------------------------------------------------

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`, clock ticks of 1/100 s).
pub(crate) fn process_cpu_s(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Busy CPU seconds of the whole machine, all cores (`/proc/stat`: everything but idle and
/// iowait).
fn machine_busy_s() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?;
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is inside user).
            let busy: f64 = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?;
            Some(busy / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds of every process named `postgres` (backends that exit in between are missed;
/// the bots' database connections are pooled and live through the window).
pub(crate) fn postgres_cpu_s() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| process_cpu_s(&pid))
        .sum()
}

#[derive(Clone, Copy)]
struct CpuMark {
    bot: f64,
    bench: f64,
    postgres: f64,
    machine: f64,
}

impl CpuMark {
    fn now(bot_pid: u32) -> Self {
        Self {
            bot: process_cpu_s(&bot_pid.to_string()),
            bench: process_cpu_s("self"),
            postgres: postgres_cpu_s(),
            machine: machine_busy_s(),
        }
    }
}

/// One stage's `infragpt_stage_seconds` figures, cumulative since the replica started.
#[derive(Debug, Clone, Copy, Default)]
struct StageTotals {
    seconds: f64,
    count: f64,
    /// Observations of at most 100 ms (the `STAGE_STALL_SECONDS` bucket).
    within_100ms: f64,
}

/// `infragpt_stage_seconds` per stage, from a replica's ops `/metrics`.
async fn stage_totals(ops: std::net::SocketAddr) -> HashMap<String, StageTotals> {
    let mut out: HashMap<String, StageTotals> = HashMap::new();
    let Ok(response) = reqwest::get(format!("http://{ops}/metrics")).await else {
        return out;
    };
    let Ok(text) = response.text().await else {
        return out;
    };
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) else {
        return out;
    };
    for sample in &scrape.samples {
        let (Some(series), Some(stage)) = (
            sample.metric.strip_prefix("infragpt_stage_seconds"),
            sample.labels.get("stage"),
        ) else {
            continue;
        };
        let total = out.entry(stage.to_owned()).or_default();
        // The histogram's `_sum` and `_count` lines parse as untyped samples of their own.
        match (series, &sample.value) {
            ("", prometheus_parse::Value::Histogram(buckets)) => {
                total.within_100ms = buckets
                    .iter()
                    .find(|b| b.less_than == infragpt_actors::metrics::STAGE_STALL_SECONDS)
                    .map_or(0.0, |b| b.count);
            }
            ("_sum", prometheus_parse::Value::Untyped(v)) => total.seconds = *v,
            ("_count", prometheus_parse::Value::Untyped(v)) => total.count = *v,
            _ => {}
        }
    }
    out
}

fn stage_delta(
    before: &HashMap<String, StageTotals>,
    after: &HashMap<String, StageTotals>,
    answered: usize,
) -> Vec<super::Stage> {
    let mut stages: Vec<super::Stage> = after
        .iter()
        .map(|(stage, a)| {
            let b = before.get(stage).copied().unwrap_or_default();
            let (seconds, count) = (a.seconds - b.seconds, (a.count - b.count).max(0.0));
            let within = (a.within_100ms - b.within_100ms).max(0.0);
            super::Stage {
                stage: stage.clone(),
                count: count as u64,
                over_100ms: (count - within).max(0.0) as u64,
                mean_ms: if count > 0.0 {
                    seconds * 1e3 / count
                } else {
                    0.0
                },
                per_turn_ms: seconds * 1e3 / answered.max(1) as f64,
            }
        })
        .filter(|s| s.count > 0)
        .collect();
    stages.sort_by(|a, b| b.per_turn_ms.total_cmp(&a.per_turn_ms));
    stages
}

// ----- the bots' processes -----------------------------------------------------------------

/// A running bot: the replica set (infragpt, with its agent) or a Bolt process.
enum Running {
    Infragpt {
        set: Box<ReplicaSet>,
        agent: infragpt::testkit::devagent::DevAgentHandle,
    },
    Bolt {
        child: Child,
        log: PathBuf,
    },
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Self::Infragpt { set, .. } => set.pid(0).unwrap_or(0),
            Self::Bolt { child, .. } => child.id(),
        }
    }

    fn ops(&self) -> Option<std::net::SocketAddr> {
        match self {
            Self::Infragpt { set, .. } => Some(set.ports(0).ops),
            Self::Bolt { .. } => None,
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Self::Infragpt { set, .. } => set.log_tail(0, 20),
            Self::Bolt { log, .. } => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
        }
    }

    async fn stop(self) {
        match self {
            Self::Infragpt { mut set, agent } => {
                if let Err(e) = set.terminate(0, Duration::from_secs(30)).await {
                    eprintln!("bolt: infragpt did not stop cleanly: {e}");
                }
                agent.stop();
            }
            Self::Bolt { mut child, .. } => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

struct RunSetup<'a> {
    sim: &'a SlackSim,
    db_url: &'a Secret,
    args: &'a Args,
    dir: &'a Path,
    app: &'a SimApp,
    team: &'a SimTeam,
}

async fn start_bot(bot: Bot, s: &RunSetup<'_>) -> anyhow::Result<(Running, usize)> {
    let running = match bot {
        Bot::Infragpt => {
            let agent_addr = replicas::free_port();
            let mut config = ReplicaSetConfig::new(
                env!("CARGO_BIN_EXE_infragpt"),
                1,
                s.db_url.clone(),
                agent_addr,
            );
            config.slack = Some(SlackSetup {
                api_url: s.sim.base_url(),
                app_token: s.app.app_token.clone(),
                bot_token: s.team.bot_token.clone(),
                signing_secret: s.app.signing_secret.clone(),
                connections: s.args.connections,
            });
            config.pool_size = s.args.pool_size;
            let mut set = ReplicaSet::new(config)?;
            let agent = DevAgent::start(DevAgentConfig {
                bind: agent_addr,
                reply_endpoint: set.grpc_endpoints().into_iter().next(),
                think_time: Duration::from_millis(s.args.think_time_ms),
                record_requests: false,
                ..DevAgentConfig::default()
            })?;
            set.start(0).await?;
            Running::Infragpt {
                set: Box::new(set),
                agent,
            }
        }
        Bot::BoltPython | Bot::BoltJs => {
            let (program, script) = if bot == Bot::BoltPython {
                (python(), "app.py")
            } else {
                (node(), "app.js")
            };
            let log = s.dir.join(format!("{}-{}.log", bot.name(), s.team.id));
            let out = std::fs::File::create(&log).context("the bot's log")?;
            let child = Command::new(&program)
                .arg(script)
                .current_dir(bolt_dir())
                .env("SLACK_API_URL", format!("{}/", s.sim.base_url()))
                .env("SLACK_APP_TOKEN", s.app.app_token.expose())
                .env("SLACK_BOT_TOKEN", s.team.bot_token.expose())
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {program} {script}"))?;
            Running::Bolt { child, log }
        }
    };
    // Ready: the bot's Socket Mode connections are open and greeted.
    let want = if bot == Bot::Infragpt {
        s.args.connections as usize
    } else {
        1
    };
    let app_id = s.app.app_id.clone();
    let open = |st: &infragpt::testkit::slack_sim::SimState| {
        st.connections()
            .iter()
            .filter(|c| c.app_id == app_id && c.state == ConnState::Open)
            .count()
    };
    if s.sim
        .wait_for(|st| open(st) >= want, Duration::from_secs(60))
        .await
        .is_err()
    {
        let tail = running.log_tail();
        running.stop().await;
        bail!(
            "{} did not open {want} Socket Mode connection(s) within 60 s; its log ends:\n{tail}",
            bot.name()
        );
    }
    let connections = s.sim.with_state(|st| open(st));
    Ok((running, connections))
}

// ----- the load ------------------------------------------------------------------------------

struct SlotLoad {
    stop: Arc<AtomicBool>,
    logs: Arc<Mutex<Vec<ThreadLog>>>,
    slots: Vec<tokio::task::JoinHandle<()>>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl SlotLoad {
    fn start(sim: Arc<SlackSim>, config: LoadConfig, k: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let logs = Arc::new(Mutex::new(vec![ThreadLog::default(); config.threads]));
        let mut senders = HashMap::new();
        let mut receivers = Vec::new();
        for s in 0..k {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BotPost>();
            senders.insert(s, tx);
            receivers.push(rx);
        }
        let mut posts = sim.subscribe_bot_posts();
        let team = config.team.clone();
        let dispatcher = tokio::spawn(async move {
            while let Some(post) = posts.recv().await {
                if post.team_id != team {
                    continue;
                }
                if let Some((thread, _)) = replicas::parse_tag(&post.text)
                    && let Some(tx) = senders.get(&(thread % k))
                {
                    let _ = tx.send(post);
                }
            }
        });
        let slots = receivers
            .into_iter()
            .enumerate()
            .map(|(slot, rx)| {
                tokio::spawn(run_slot(
                    sim.clone(),
                    config.clone(),
                    (slot..config.threads).step_by(k).collect(),
                    rx,
                    stop.clone(),
                    logs.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            logs,
            slots,
            dispatcher,
        }
    }

    async fn stop(self) -> Vec<ThreadLog> {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.slots {
            let _ = s.await;
        }
        self.dispatcher.abort();
        self.logs.lock().clone()
    }
}

/// One slot: round its threads, one mention at a time, until told to stop.
async fn run_slot(
    sim: Arc<SlackSim>,
    config: LoadConfig,
    threads: Vec<usize>,
    mut answers: tokio::sync::mpsc::UnboundedReceiver<BotPost>,
    stop: Arc<AtomicBool>,
    logs: Arc<Mutex<Vec<ThreadLog>>>,
) {
    if threads.is_empty() {
        return;
    }
    for &t in &threads {
        logs.lock()[t].channel = config.channels[t % config.channels.len()].clone();
    }
    for &thread in threads.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (channel, root, turn) = {
            let l = &logs.lock()[thread];
            (l.channel.clone(), l.root_ts.clone(), l.turns.len())
        };
        let name = replicas::tag(thread, turn);
        let text = format!("<@{}> ping {name}", config.bot_user);
        let posted_at = Instant::now();
        let ts = match sim.post_user_message(
            &config.team,
            &channel,
            &config.user,
            &text,
            root.as_deref(),
        ) {
            Ok(ts) => ts,
            Err(e) => {
                logs.lock()[thread].error = Some(format!("posting {name}: {e}"));
                return;
            }
        };
        {
            let l = &mut logs.lock()[thread];
            l.root_ts.get_or_insert_with(|| ts.clone());
            l.turns.push(Turn {
                posted_at,
                answered_at: None,
                ts,
            });
        }
        let deadline = tokio::time::Instant::now() + config.turn_timeout;
        loop {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(post)) if replicas::parse_tag(&post.text) == Some((thread, turn)) => {
                    logs.lock()[thread].turns[turn].answered_at = Some(post.at);
                    break;
                }
                // An answer to an earlier mention (a duplicate): the check reports it.
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    logs.lock()[thread].error = Some(format!(
                        "{name} not answered within {:?}",
                        config.turn_timeout
                    ));
                    return;
                }
            }
        }
    }
}

// ----- one run ------------------------------------------------------------------------------

async fn measure(
    bot: Bot,
    k: usize,
    index: usize,
    sim: &Arc<SlackSim>,
    db_url: &Secret,
    args: &Args,
    dir: &Path,
) -> BotRun {
    let config = sim.config();
    let (app, team) = (&config.apps[index], &config.teams[index]);
    let mut run = BotRun {
        bot,
        runtime: String::new(),
        skipped: None,
        concurrency: k,
        threads: args.mention_threads,
        connections: 0,
        warmup_s: args.warmup_s as f64,
        window_s: args.window_s as f64,
        answered: 0,
        answered_per_s: 0.0,
        turn: Latency::default(),
        ack: Latency::default(),
        unacked: 0,
        redelivered: 0,
        mentions: 0,
        violations: Vec::new(),
        cpu_bot: 0.0,
        cpu_bench: 0.0,
        cpu_postgres: 0.0,
        cpu_machine: 0.0,
        stages: Vec::new(),
    };
    match probe(bot) {
        Ok(v) => run.runtime = v,
        Err(why) => {
            eprintln!("bolt: {} SKIPPED: {why}", bot.name());
            run.skipped = Some(why);
            return run;
        }
    }
    eprintln!("bolt: {} at K={k} ({})", bot.name(), run.runtime);
    let setup = RunSetup {
        sim,
        db_url,
        args,
        dir,
        app,
        team,
    };
    let (running, connections) = match start_bot(bot, &setup).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bolt: {} SKIPPED: {e:#}", bot.name());
            run.skipped = Some(format!("{e:#}"));
            return run;
        }
    };
    run.connections = connections;
    let pid = running.pid();

    let mut load_config = LoadConfig::for_sim(sim, args.mention_threads, usize::MAX);
    load_config.team = team.id.clone();
    load_config.channels = team.channels.iter().map(|c| c.id.clone()).collect();
    load_config.user = team.users[0].id.clone();
    load_config.bot_user = team.bot_user_id.clone();
    load_config.turn_timeout = Duration::from_secs(args.timeout_s);
    let load = SlotLoad::start(sim.clone(), load_config.clone(), k);
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    let ops = running.ops();
    let stages0 = match ops {
        Some(ops) => stage_totals(ops).await,
        None => HashMap::new(),
    };
    let (from, cpu0) = (Instant::now(), CpuMark::now(pid));
    tokio::time::sleep(Duration::from_secs(args.window_s)).await;
    let (to, cpu1) = (Instant::now(), CpuMark::now(pid));
    let stages1 = match ops {
        Some(ops) => stage_totals(ops).await,
        None => HashMap::new(),
    };
    let logs = load.stop().await;
    let window = (to - from).as_secs_f64();
    run.window_s = window;
    run.cpu_bot = (cpu1.bot - cpu0.bot) / window;
    run.cpu_bench = (cpu1.bench - cpu0.bench) / window;
    run.cpu_postgres = (cpu1.postgres - cpu0.postgres) / window;
    run.cpu_machine = (cpu1.machine - cpu0.machine) / window;

    run.answered = logs
        .iter()
        .flat_map(|l| &l.turns)
        .filter(|t| t.answered_at.is_some_and(|a| a >= from && a < to))
        .count();
    run.answered_per_s = run.answered as f64 / window;
    run.stages = stage_delta(&stages0, &stages1, run.answered);
    run.turn = Latency::of(
        logs.iter()
            .flat_map(|l| &l.turns)
            .filter(|t| t.posted_at >= from && t.posted_at < to)
            .filter_map(|t| Some(t.answered_at? - t.posted_at))
            .collect(),
    );
    run.mentions = replicas::mentions(&logs);
    // Late acks and stray answers have a moment to arrive before the check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let team_id = team.id.clone();
    let (ack, unacked, redelivered) = sim.with_state(|st| {
        let mut ack = Vec::new();
        let (mut unacked, mut redelivered) = (0, 0);
        for d in st.deliveries().iter().filter(|d| d.team_id == team_id) {
            match (d.first_sent_at, d.acked_at) {
                (Some(sent), Some(acked)) => {
                    if sent >= from && sent < to {
                        ack.push(acked.saturating_duration_since(sent));
                    }
                }
                _ => unacked += 1,
            }
            if d.sends > 1 {
                redelivered += 1;
            }
        }
        (Latency::of(ack), unacked, redelivered)
    });
    run.ack = ack;
    run.unacked = unacked;
    run.redelivered = redelivered;
    run.violations = replicas::check_answers(sim, &load_config, &logs);
    if !run.violations.is_empty() {
        eprintln!(
            "bolt: {} failed the reply check; its log ends:\n{}",
            bot.name(),
            running.log_tail()
        );
    }
    running.stop().await;
    run
}

pub async fn run(args: &Args) -> anyhow::Result<BoltReport> {
    if args.mention_threads < args.concurrency {
        bail!(
            "--mention-threads must be at least --concurrency (a thread has one mention in flight)"
        );
    }
    if args.window_s == 0 {
        bail!("--window-s must be at least 1");
    }
    // The runs, in the order given; infragpt's extra concurrency right after its own run.
    let mut plan: Vec<(Bot, usize)> = Vec::new();
    for &bot in &args.bots {
        plan.push((bot, args.concurrency));
        if bot == Bot::Infragpt
            && args.infragpt_extra_k > 0
            && args.infragpt_extra_k != args.concurrency
        {
            plan.push((bot, args.infragpt_extra_k));
        }
    }
    let db = if plan.iter().any(|(b, _)| *b == Bot::Infragpt) {
        Some(TestDb::new().await)
    } else {
        None
    };
    let sim = Arc::new(SlackSim::start(sim_config(plan.len())).context("Slack simulator")?);
    let dir = std::env::temp_dir().join(format!("e2e-bolt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("the bots' log directory")?;
    let no_db = Secret::new("");
    let mut runs = Vec::new();
    for (index, (bot, k)) in plan.into_iter().enumerate() {
        let url = db.as_ref().map_or(&no_db, |d| &d.url);
        runs.push(measure(bot, k, index, &sim, url, args, &dir).await);
    }
    // The bots' logs stay for a look when something failed.
    if runs.iter().all(|r| r.measured() && r.violations.is_empty()) {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("bolt: the bots' logs are in {}", dir.display());
    }
    let at_k = |bot: Bot| {
        runs.iter()
            .find(|r| r.bot == bot && r.concurrency == args.concurrency && r.measured())
            .map(|r| r.answered_per_s)
    };
    let best_bolt = runs
        .iter()
        .filter(|r| r.bot.is_bolt() && r.concurrency == args.concurrency && r.measured())
        .map(|r| r.answered_per_s)
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    let ratio = match (at_k(Bot::Infragpt), best_bolt) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => Some(ours / theirs),
        _ => None,
    };
    Ok(BoltReport {
        concurrency: args.concurrency,
        threads: args.mention_threads,
        infragpt_connections: args.connections,
        runs,
        ratio,
        target: TARGET,
    })
}

pub fn print(r: &BoltReport, row: &dyn Fn(&str, String)) {
    println!(
        "bolt: {} Slack threads, closed loop, one bot at a time, each its own process on Socket Mode to the simulator in this process",
        r.threads
    );
    for run in &r.runs {
        let label = format!("{} K={}", run.bot.name(), run.concurrency);
        if let Some(why) = &run.skipped {
            row(&label, format!("SKIPPED: {why}"));
            continue;
        }
        println!(
            "  {label} ({}; {} Socket Mode connection(s))",
            run.runtime, run.connections
        );
        row(
            "  answered",
            format!(
                "{:.1}/s ({} in a {:.1} s window after {:.0} s warm-up)",
                run.answered_per_s, run.answered, run.window_s, run.warmup_s
            ),
        );
        row("  turn latency p50/p99/max", super::lat(&run.turn));
        row("  ack latency p50/p99/max", super::lat(&run.ack));
        row(
            "  CPU in the window (cores)",
            format!(
                "bot {:.2}, bench process {:.2}, postgres {:.2}, machine {:.2} (per answer: bot {:.2} ms, postgres {:.2} ms)",
                run.cpu_bot,
                run.cpu_bench,
                run.cpu_postgres,
                run.cpu_machine,
                run.cpu_bot * 1e3 / run.answered_per_s.max(f64::MIN_POSITIVE),
                run.cpu_postgres * 1e3 / run.answered_per_s.max(f64::MIN_POSITIVE)
            ),
        );
        for st in &run.stages {
            row(
                &format!("  stage {}", st.stage),
                format!(
                    "{} × {:.3} ms mean = {:.3} ms per answer ({} over 100 ms)",
                    st.count, st.mean_ms, st.per_turn_ms, st.over_100ms
                ),
            );
        }
        row(
            "  envelopes unacked / redelivered",
            format!("{} / {}", run.unacked, run.redelivered),
        );
        row(
            "  replies check",
            if run.violations.is_empty() {
                format!(
                    "PASS: {} mentions, each answered exactly once in its thread",
                    run.mentions
                )
            } else {
                format!(
                    "FAIL: {} violation(s) over {} mentions, first: {}",
                    run.violations.len(),
                    run.mentions,
                    run.violations[0]
                )
            },
        );
    }
    row(
        &format!("ratio infragpt ÷ best Bolt (K={})", r.concurrency),
        match r.ratio {
            Some(x) => format!(
                "{x:.2} (target {:.1}: {})",
                r.target,
                if x >= r.target { "met" } else { "NOT met" }
            ),
            None => "n/a (infragpt or both Bolts not measured)".into(),
        },
    );
}
