//! `infragpt demo`: the whole product on one machine with nothing to sign up for. One
//! process runs the service (with its private PostgreSQL, as `serve` does), the Slack
//! simulator as a local workspace ("Demo Workspace", `#ops`, alice and bob), and the
//! development agent (a real tonic `AgentService` that calls SendReply before it returns,
//! like the upstream agent). The service reaches both over loopback exactly as it would
//! reach Slack and a real agent: Socket Mode, the Web API and gRPC. Nothing is short-cut.

mod approvals;
pub mod chat;
pub mod replay;

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use infragpt_actors::Secret;
use infragpt_actors::ids::MessageTs;

use crate::config::Config;
use crate::testkit::devagent::{DevAgent, DevAgentConfig, DevAgentHandle};
use crate::testkit::slack_sim::{SimChannel, SimConfig, SimState, SimTeam, SimUser, SlackSim};
use chat::{HELP, Line, Threads, parse_line};

/// The demo workspace.
pub(crate) const TEAM_ID: &str = "T0DEMO0001";
/// `#ops`.
pub(crate) const OPS_CHANNEL: &str = "C0DEMOOPS1";
/// The bot's user id in the demo workspace.
pub const BOT_USER: &str = "U0DEMOBOT1";
/// Database the demo keeps its data in.
pub(crate) const DEMO_DB: &str = "infragpt_demo";
/// Private cluster folder of the demo (when no PostgreSQL answers on 127.0.0.1:5432).
pub(crate) const DEMO_DATA_DIR: &str = ".infragpt/demo-pg";

/// Command-line options of `infragpt demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Run these lines instead of reading the terminal; exit non-zero unless every turn got
    /// a reply.
    pub script: Option<PathBuf>,
    /// Drop the demo database and exit.
    pub reset: bool,
    /// Use this agent instead of the development agent.
    pub agent_endpoint: Option<String>,
    /// How long to wait for each reply.
    pub reply_timeout: Duration,
}

/// The demo workspace: one team with `#ops`, two people and the bot.
pub fn sim_config() -> SimConfig {
    let mut config = SimConfig::default();
    let app_id = config.apps[0].app_id.clone();
    let user = |id: &str, name: &str, real: &str| SimUser {
        id: id.to_owned(),
        name: name.to_owned(),
        real_name: real.to_owned(),
        email: format!("{name}@demo.example"),
    };
    config.teams = vec![SimTeam {
        id: TEAM_ID.to_owned(),
        name: "Demo Workspace".to_owned(),
        domain: "demo".to_owned(),
        app_id,
        bot_user_id: BOT_USER.to_owned(),
        bot_id: "B0DEMOBOT1".to_owned(),
        bot_name: "infragpt".to_owned(),
        bot_token: Secret::new("xoxb-1000000000009-T0DEMO0001-demo"),
        users: vec![
            user("U0DEMOALI1", "alice", "Alice Liddell"),
            user("U0DEMOBOB1", "bob", "Bob Builder"),
        ],
        channels: vec![SimChannel {
            id: OPS_CHANNEL.to_owned(),
            name: "ops".to_owned(),
            is_private: false,
        }],
    }];
    config
}

/// `wanted` when it can be bound (0 means any), else a free port: the demo should start even
/// when a real service already holds the default ports.
fn usable_port(wanted: u16) -> anyhow::Result<u16> {
    if wanted != 0 && std::net::TcpListener::bind(("0.0.0.0", wanted)).is_ok() {
        return Ok(wanted);
    }
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Points the configuration at the simulator and the agent, and at the demo's own database.
fn demo_config(mut config: Config, sim: &SlackSim, agent_endpoint: &str) -> Config {
    let sim_config = sim.config();
    let team = &sim_config.teams[0];
    config.slack.api_url = sim.base_url();
    config.slack.app_token = Some(sim_config.apps[0].app_token.clone());
    config.slack.bot_token = Some(team.bot_token.clone());
    config.slack.signing_secret = Some(sim_config.apps[0].signing_secret.clone());
    config.slack.socket_mode = true;
    config.slack.connections = 1;
    config.agent.endpoint = agent_endpoint.to_owned();
    // `/replay workflow-failure` signs its delivery with this secret.
    if config.integrations.github.webhook_secret.is_none() {
        config.integrations.github.webhook_secret = Some(Secret::new(replay::GITHUB_SECRET));
    }
    // The actor tree and metrics are on the public port only with the admin token, which a
    // browser cannot send: the demo serves them on a loopback ops listener it can print.
    if config.ops.port.is_none() {
        config.ops.port = Some(0);
    }
    if config.database.url.is_none() && config.database.host.is_none() {
        config.database.db_name = DEMO_DB.to_owned();
        config.database.data_dir = PathBuf::from(DEMO_DATA_DIR);
    }
    config
}

/// `infragpt demo --reset`: drops the demo database.
pub async fn reset(config: &Config) -> anyhow::Result<String> {
    use diesel_async::RunQueryDsl;
    let mut settings = crate::server::db_settings(config);
    if settings.url.is_none() && settings.host.is_none() {
        settings.data_dir = PathBuf::from(DEMO_DATA_DIR);
    }
    let target = if settings.url.is_some() {
        settings.db_name.clone()
    } else {
        DEMO_DB.to_owned()
    };
    settings.db_name = "postgres".to_owned();
    let db = crate::db::Database::open(&settings)
        .await
        .context("opening the database")?;
    let where_ = db.describe();
    let mut conn = db.pool().get().await.context("connecting")?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{target}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {target}"))?;
    drop(conn);
    db.shutdown().await;
    Ok(format!("dropped database {target} on {where_}"))
}

/// What a finished demo reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Lines that expected an answer.
    pub turns: usize,
    /// Of those, how many got one in time.
    pub answered: usize,
}

/// Runs the demo until the script ends, `/quit`, or end of input.
pub async fn run(config: Config, options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let sim = SlackSim::start(sim_config()).context("starting the Slack simulator")?;
    let mut config = config;
    // The development agent calls SendReply on our gRPC port, so fix that port first.
    config.grpc_port = usable_port(config.grpc_port)?;
    if config.port != 0 {
        config.port = usable_port(config.port)?;
    }
    run_with(config, options, sim).await
}

async fn run_with(
    config: Config,
    options: DemoOptions,
    sim: SlackSim,
) -> anyhow::Result<DemoSummary> {
    let dev_agent: Option<DevAgentHandle> = match &options.agent_endpoint {
        Some(_) => None,
        None => Some(
            DevAgent::start(DevAgentConfig {
                reply_endpoint: Some(format!("http://127.0.0.1:{}", config.grpc_port)),
                reply_token: config.agent.reply_token.clone(),
                // Shows the thread's progress status ("running demo.service_status…").
                progress_step: Some(Duration::from_millis(1_100)),
                ..DevAgentConfig::default()
            })
            .context("starting the development agent")?,
        ),
    };
    let agent_endpoint = match (&options.agent_endpoint, &dev_agent) {
        (Some(e), _) => e.clone(),
        (None, Some(d)) => d.endpoint(),
        (None, None) => anyhow::bail!("no agent: neither --agent nor the development agent"),
    };
    let config = demo_config(config, &sim, &agent_endpoint);
    let (running, _core) = crate::app::start(config.clone())
        .await
        .context("starting the service")?;
    let mut shown = running.http_addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let base = format!("http://{shown}");
    let ops = running
        .ops_addr
        .map_or_else(|| base.clone(), |a| format!("http://{a}"));
    let database = running.database_description();
    let replay = match replay::seed(&config, running.state.db.pool().clone(), base.clone()).await {
        Ok(r) => r,
        Err(e) => {
            running.stop().await?;
            return Err(e.context("seeding the demo's event sources and rules"));
        }
    };

    // Wait until the service's Socket Mode connection is open, so the first line is heard.
    let connected = sim
        .wait_for(
            |s| {
                s.connections
                    .iter()
                    .any(|c| c.state == crate::testkit::slack_sim::ConnState::Open)
                    && s.frames.iter().any(|f| f.kind == "hello")
            },
            Duration::from_secs(30),
        )
        .await;
    let summary = match connected {
        Ok(()) => {
            println!(
                "InfraGPT demo · workspace \"Demo Workspace\", #ops, you are alice\n  service {base}   actors {ops}/actors   metrics {ops}/metrics\n  agent: {}\n  type /help for commands",
                if dev_agent.is_some() {
                    format!("development agent at {agent_endpoint}")
                } else {
                    agent_endpoint.clone()
                }
            );
            chat_loop(&sim, &options, &replay).await
        }
        Err(e) => Err(anyhow::anyhow!(
            "the service did not connect to the Slack simulator: {e}"
        )),
    };
    running.stop().await?;
    if let Some(agent) = dev_agent {
        agent.stop();
    }
    println!("Demo data: database {DEMO_DB} on {database}. `infragpt demo --reset` clears it.");
    summary
}

/// Prints bot messages as they arrive and tracks which user messages were answered.
struct Printer {
    /// `ts/updates` of every message printed: a message changed since (a placeholder the
    /// answer replaced) is printed again.
    printed: HashSet<String>,
    /// Thread statuses printed so far (an index into the simulator's list).
    statuses: usize,
    started: Instant,
}

impl Printer {
    /// Prints every bot message not printed yet; returns the thread roots they answered.
    fn print_new(&mut self, sim: &SlackSim, threads: &Threads, since: &[(String, Instant)]) {
        // What the thread showed while the agent worked ("is thinking…", its progress).
        let statuses = sim.statuses();
        for change in statuses.iter().skip(self.statuses) {
            if change.status.is_empty() {
                continue;
            }
            let label = threads
                .number_of(&change.thread_ts)
                .map_or_else(|| "channel".to_owned(), |n| format!("thread {n}"));
            println!("[{label}] infragpt {}", change.status);
        }
        self.statuses = statuses.len();
        let key = |m: &crate::testkit::slack_sim::SimMessage| format!("{}/{}", m.ts, m.updates);
        let mut fresh: Vec<_> = sim
            .messages_in(TEAM_ID, OPS_CHANNEL)
            .into_iter()
            .filter(|m| m.bot_id.is_some() && !self.printed.contains(&key(m)))
            .collect();
        fresh.sort_by(|a, b| a.ts.cmp(&b.ts));
        for m in fresh {
            self.printed.insert(key(&m));
            let thread = m.thread_ts.as_deref().unwrap_or(&m.ts);
            let label = threads
                .number_of(thread)
                .map_or_else(|| "channel".to_owned(), |n| format!("thread {n}"));
            let waited = since
                .iter()
                .rev()
                .find(|(t, _)| t == thread)
                .map(|(_, at)| at.elapsed())
                .unwrap_or_else(|| self.started.elapsed());
            println!("[{label}] infragpt ({:.1}s):", waited.as_secs_f64());
            let lines = m
                .blocks
                .as_ref()
                .map(replay::block_lines)
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| m.text.lines().map(str::to_owned).collect());
            for line in lines {
                println!("    {line}");
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// True when the thread `thread_ts` holds a bot message newer than `after_ts`.
/// An approval request the agent posts while it works is not its answer: the answer comes
/// after it.
fn answered(s: &SimState, thread_ts: &str, after_ts: &MessageTs) -> bool {
    s.messages
        .get(&(TEAM_ID.to_owned(), OPS_CHANNEL.to_owned()))
        .is_some_and(|msgs| {
            msgs.iter().any(|m| {
                m.bot_id.is_some()
                    && m.thread_ts.as_deref() == Some(thread_ts)
                    && !is_approval_request(m)
                    && MessageTs::parse(m.ts.as_str()).is_ok_and(|t| t.chrono_cmp(after_ts).is_gt())
            })
        })
}

fn is_approval_request(m: &crate::testkit::slack_sim::SimMessage) -> bool {
    m.metadata
        .as_ref()
        .is_some_and(|meta| meta["event_type"] == infragpt_actors::approvals::APPROVAL_EVENT_TYPE)
}

/// The ts of the bot's top-level messages in #ops (event messages).
fn top_level_posts(s: &SimState) -> Vec<(String, String)> {
    s.messages
        .get(&(TEAM_ID.to_owned(), OPS_CHANNEL.to_owned()))
        .map(|msgs| {
            msgs.iter()
                .filter(|m| m.bot_id.is_some() && m.thread_ts.is_none())
                .map(|m| (m.ts.clone(), m.text.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn chat_loop(
    sim: &SlackSim,
    options: &DemoOptions,
    replay: &replay::Replay,
) -> anyhow::Result<DemoSummary> {
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = match &options.script {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading script {}", path.display()))?;
            Box::new(
                text.lines()
                    .map(|l| Ok(l.to_owned()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        }
        None => Box::new(std::io::stdin().lock().lines()),
    };
    let scripted = options.script.is_some();
    let users = sim.config().teams[0].users.clone();
    let mut user = users[0].clone();
    let mut threads = Threads::default();
    let mut printer = Printer {
        printed: HashSet::new(),
        statuses: 0,
        started: Instant::now(),
    };
    let mut asked: Vec<(String, Instant)> = Vec::new();
    let mut summary = DemoSummary {
        turns: 0,
        answered: 0,
    };
    let timeout = if options.reply_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        options.reply_timeout
    };
    let prompt = |threads: &Threads, user: &SimUser| {
        if scripted {
            return;
        }
        let place = threads
            .current
            .map_or_else(|| "#ops".to_owned(), |i| format!("#ops thread {}", i + 1));
        print!("{} @ {place}> ", user.name);
        let _ = std::io::stdout().flush();
    };
    prompt(&threads, &user);
    for line in lines {
        let raw = line.context("reading input")?;
        if scripted && !raw.trim().is_empty() && !raw.trim().starts_with('#') {
            println!("{} > {}", user.name, raw.trim());
        }
        let parsed = match parse_line(&raw) {
            Ok(p) => p,
            Err(e) => {
                println!("  ! {e}");
                if scripted {
                    anyhow::bail!("script line {raw:?}: {e}");
                }
                prompt(&threads, &user);
                continue;
            }
        };
        let (text, mention) = match parsed {
            Line::Nothing => {
                prompt(&threads, &user);
                continue;
            }
            Line::Quit => break,
            Line::Help => {
                println!("{HELP}");
                prompt(&threads, &user);
                continue;
            }
            Line::Threads => {
                for (i, t) in threads.list.iter().enumerate() {
                    println!("  {}. {}", i + 1, t.title);
                }
                if threads.list.is_empty() {
                    println!("  no threads yet: mention @infragpt to start one");
                }
                prompt(&threads, &user);
                continue;
            }
            Line::New => {
                threads.current = None;
                prompt(&threads, &user);
                continue;
            }
            Line::Thread(n) => {
                if let Err(e) = threads.switch(n) {
                    println!("  ! {e}");
                    if scripted {
                        anyhow::bail!("script line {raw:?}: {e}");
                    }
                }
                prompt(&threads, &user);
                continue;
            }
            Line::As(name) => {
                match users.iter().find(|u| u.name == name) {
                    Some(u) => user = u.clone(),
                    None => println!(
                        "  ! no user {name}; try {}",
                        users
                            .iter()
                            .map(|u| u.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
                prompt(&threads, &user);
                continue;
            }
            Line::Replay(what) => {
                let before: HashSet<String> = sim
                    .with_state(top_level_posts)
                    .into_iter()
                    .map(|(ts, _)| ts)
                    .collect();
                match replay.replay(&what).await {
                    Ok(said) => println!("  > replayed {said}"),
                    Err(e) => {
                        println!("  ! {e}");
                        if scripted {
                            anyhow::bail!("script line {raw:?}: {e}");
                        }
                        prompt(&threads, &user);
                        continue;
                    }
                }
                summary.turns += 1;
                let started = Instant::now();
                let new_post = |s: &SimState| {
                    top_level_posts(s)
                        .into_iter()
                        .find(|(ts, _)| !before.contains(ts))
                };
                let posted = sim.wait_for(|s| new_post(s).is_some(), timeout).await;
                let Some((ts, text)) = posted.ok().and_then(|()| sim.with_state(new_post)) else {
                    println!("  ! the event was not posted within {}s", timeout.as_secs());
                    prompt(&threads, &user);
                    continue;
                };
                // The event's message starts a thread: the agent triages there, and what is
                // typed next continues it.
                threads.started(&ts, &text);
                asked.push((ts.clone(), started));
                let after = MessageTs::parse(ts.as_str()).context("the simulator's message ts")?;
                let got = sim
                    .wait_for(|s| answered(s, &ts, &after), timeout)
                    .await
                    .is_ok();
                tokio::time::sleep(Duration::from_millis(150)).await;
                printer.print_new(sim, &threads, &asked);
                if got {
                    summary.answered += 1;
                } else {
                    println!("  ! no triage within {}s", timeout.as_secs());
                }
                prompt(&threads, &user);
                continue;
            }
            Line::Approve | Line::Deny(_) => {
                let deny = match parsed {
                    Line::Deny(reason) => Some(reason),
                    _ => None,
                };
                match approvals::decide(sim, &user, deny, timeout).await {
                    Ok(decided) => {
                        for l in decided.lines {
                            println!("  > {l}");
                        }
                        // A decision goes to the agent as a turn: wait for its answer.
                        if let Some((thread, after)) = decided.awaits {
                            if sim
                                .wait_for(|s| answered(s, &thread, &after), timeout)
                                .await
                                .is_err()
                            {
                                println!(
                                    "  ! the agent did not answer the decision within {}s",
                                    timeout.as_secs()
                                );
                            }
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                        printer.print_new(sim, &threads, &asked);
                    }
                    Err(e) => {
                        println!("  ! {e}");
                        if scripted {
                            anyhow::bail!("script line {raw:?}: {e}");
                        }
                    }
                }
                prompt(&threads, &user);
                continue;
            }
            Line::Mention(text) => (text, true),
            Line::Message(text) => (text, false),
        };
        let thread_ts = threads.current_ts().map(str::to_owned);
        let body = if mention {
            format!("<@{BOT_USER}> {text}")
        } else {
            text.clone()
        };
        let ts = sim
            .post_user_message(TEAM_ID, OPS_CHANNEL, &user.id, &body, thread_ts.as_deref())
            .context("posting to the Slack simulator")?;
        let root = match &thread_ts {
            Some(t) => t.clone(),
            None => {
                if mention || threads.monitored {
                    threads.started(&ts, &text);
                }
                ts.clone()
            }
        };
        // Which lines the service answers: mentions, replies in the bot's threads, and
        // channel messages once the bot monitors #ops.
        let expects_reply = mention || thread_ts.is_some() || threads.monitored;
        if mention {
            threads.monitored = true;
        }
        if expects_reply {
            summary.turns += 1;
            asked.push((root.clone(), Instant::now()));
            // The simulator wakes the wait on every change; no polling.
            let after = MessageTs::parse(ts.as_str()).context("the simulator's message ts")?;
            let got = sim
                .wait_for(|s| answered(s, &root, &after), timeout)
                .await
                .is_ok();
            // Answers can come in several messages; give the rest a moment to land.
            tokio::time::sleep(Duration::from_millis(150)).await;
            printer.print_new(sim, &threads, &asked);
            if got {
                summary.answered += 1;
            } else {
                println!("  ! no reply within {}s", timeout.as_secs());
            }
        }
        prompt(&threads, &user);
    }
    printer.print_new(sim, &threads, &asked);
    println!("{} of {} turns answered", summary.answered, summary.turns);
    Ok(summary)
}
