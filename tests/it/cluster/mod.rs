//! Several real `infragpt serve` processes on one database (`processes`): the replica core
//! under kills, rolling restarts, a cut database connection and a paused process, checked
//! end to end through the Slack simulator, a real gRPC agent and the database.
//!
//! The process handling, the closed-loop load and the answer checks are
//! `infragpt::testkit::replicas` (shared with the `replicas` benchmark); this module adds the
//! test harness around them, a TCP relay that can cut one replica off PostgreSQL, and the
//! database checks.

mod drills;
mod processes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::inbound_events;
use infragpt::grpc::pb::agent::AgentRequest;
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig, DevAgentHandle};
use infragpt::testkit::replicas::{
    self, Holdings, Load, LoadConfig, Repeats, ReplicaSet, ReplicaSetConfig, SlackSetup, ThreadLog,
};
use infragpt::testkit::slack_sim::SlackSim;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::wait::eventually;

/// Replicas per test.
pub const REPLICAS: usize = 3;
/// Socket Mode connections per replica.
const CONNECTIONS: u32 = 2;

/// One database, a Slack simulator, the development agent replying through every replica
/// (round robin, failing over), and [`REPLICAS`] replicas.
pub struct Harness {
    pub db: TestDb,
    pub sim: Arc<SlackSim>,
    pub agent: DevAgentHandle,
    pub set: ReplicaSet,
}

impl Harness {
    /// Builds everything but starts no replica: `prepare` may change the set first.
    pub async fn new(extra_yaml: &str) -> Self {
        let db = TestDb::new().await;
        let sim = Arc::new(SlackSim::start(replicas::sim_config()).expect("Slack simulator"));
        let agent_addr = replicas::free_port();
        let mut config = ReplicaSetConfig::new(
            env!("CARGO_BIN_EXE_infragpt"),
            REPLICAS,
            db.url.clone(),
            agent_addr,
        );
        config.slack = Some(SlackSetup::of(&sim, CONNECTIONS));
        config.extra_yaml = extra_yaml.to_owned();
        let set = ReplicaSet::new(config).expect("replica set");
        let mut endpoints = set.grpc_endpoints();
        let first = endpoints.remove(0);
        let agent = DevAgent::start(DevAgentConfig {
            bind: agent_addr,
            reply_endpoint: Some(first),
            more_reply_endpoints: endpoints,
            ..DevAgentConfig::default()
        })
        .expect("dev agent");
        Self {
            db,
            sim,
            agent,
            set,
        }
    }

    /// [`Harness::new`] with every replica started, ready and holding partitions, and every
    /// Socket Mode connection open.
    pub async fn start(extra_yaml: &str) -> Self {
        let mut h = Self::new(extra_yaml).await;
        h.start_all().await;
        h
    }

    pub async fn start_all(&mut self) {
        self.set.start_all().await.unwrap_or_else(|e| panic!("{e}"));
        self.wait_connections().await;
    }

    /// Waits until every replica's Socket Mode connections are open.
    pub async fn wait_connections(&self) {
        wait_connections(&self.sim, REPLICAS).await;
    }

    /// Starts (again) replica `index`: ready, holding partitions, its connections open.
    pub async fn restart(&mut self, index: usize) {
        self.set
            .start(index)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.wait_connections().await;
    }

    /// SIGTERM, and the exit must be clean (code 0) and come within the drain's bound.
    pub async fn terminate(&mut self, index: usize) {
        let (status, took) = self
            .set
            .terminate(index, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "replica {index} exited with {status} after SIGTERM ({took:?}); its log:\n{}",
            self.set.log_tail(index, 40)
        );
    }

    /// A closed-loop load of `threads` threads of up to `max_turns` mentions.
    pub fn start_load(&self, threads: usize, max_turns: usize) -> Load {
        Load::start(
            self.sim.clone(),
            LoadConfig::for_sim(&self.sim, threads, max_turns),
        )
    }

    /// `/cluster` from replica `index` shows every partition held by the `live` live
    /// replicas, each holding some.
    pub async fn wait_partitions_held_by(&self, index: usize, live: usize) -> Holdings {
        eventually(
            format!("replica {index}'s /cluster shows 64 partitions held by {live} live replicas"),
            async || {
                let view = self.set.cluster_view(index).await?;
                let h = Holdings::of(&view);
                h.all_held_by(live).map(|()| h)
            },
        )
        .await
    }

    /// Waits until the inbox has nothing pending or processing.
    pub async fn wait_inbox_idle(&self) {
        eventually("no inbox event is pending or processing", async || {
            let unfinished = unfinished_events(&self.db).await;
            if unfinished.is_empty() {
                Ok(())
            } else {
                Err(unfinished)
            }
        })
        .await;
    }

    /// Every invariant of a finished load: each mention answered exactly once in its own
    /// thread, the agent saw every thread's turns in order, nothing unfinished or dead in the
    /// inbox. Fails the test with every violation found.
    pub async fn check(&self, logs: &[ThreadLog], at_least: usize) {
        self.check_with(logs, at_least, Repeats::Adjacent).await;
    }

    /// [`Self::check`], accepting the repeated asks `repeats` says.
    pub async fn check_with(&self, logs: &[ThreadLog], at_least: usize, repeats: Repeats) {
        check_load(
            &self.db,
            &self.sim,
            &self.agent.requests(),
            logs,
            at_least,
            repeats,
        )
        .await;
    }
}

/// Waits until `replicas` replicas' Socket Mode connections are open.
pub async fn wait_connections(sim: &SlackSim, replicas: usize) {
    let want = replicas * CONNECTIONS as usize;
    eventually(
        format!("{want} Socket Mode connections are open"),
        async || {
            let open = sim.with_state(|s| s.open_connections().len());
            if open >= want { Ok(()) } else { Err(open) }
        },
    )
    .await;
}

/// Every invariant of a finished load (see [`Harness::check`]), with the agent's requests
/// given (several agent instances: concatenated in order).
pub async fn check_load(
    db: &TestDb,
    sim: &SlackSim,
    agent_requests: &[AgentRequest],
    logs: &[ThreadLog],
    at_least: usize,
    repeats: Repeats,
) {
    eventually("no inbox event is pending or processing", async || {
        let unfinished = unfinished_events(db).await;
        if unfinished.is_empty() {
            Ok(())
        } else {
            Err(unfinished)
        }
    })
    .await;
    let config = LoadConfig::for_sim(sim, logs.len(), 0);
    let mut violations = replicas::check_answers(sim, &config, logs);
    let (order, repeats) = replicas::check_agent_order(agent_requests, logs, repeats);
    violations.extend(order);
    for (id, status, error) in dead_letters(db).await {
        violations.push(format!("inbox event {id} is {status}: {error:?}"));
    }
    let posted = replicas::mentions(logs);
    if posted < at_least {
        violations.push(format!(
            "only {posted} mentions were posted, the test wants at least {at_least}"
        ));
    }
    let bot_posts = bot_post_count(sim, &config);
    if bot_posts != posted {
        violations.push(format!("{bot_posts} bot messages for {posted} mentions"));
    }
    tracing::info!(mentions = posted, agent_repeats = repeats, "load checked");
    assert!(
        violations.is_empty(),
        "{} violations over {posted} mentions (first 40):\n{}",
        violations.len(),
        violations
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Bot messages in the load's channels.
fn bot_post_count(sim: &SlackSim, config: &LoadConfig) -> usize {
    config
        .channels
        .iter()
        .map(|c| {
            sim.messages_in(&config.team, c)
                .iter()
                .filter(|m| m.bot_id.is_some() && !m.deleted)
                .count()
        })
        .sum()
}

/// `(id, status)` of every pending or processing inbox row.
pub async fn unfinished_events(db: &TestDb) -> Vec<(i64, String)> {
    let mut conn = db.pool().get().await.expect("a connection");
    inbound_events::table
        .filter(inbound_events::status.eq_any(["pending", "processing"]))
        .select((inbound_events::id, inbound_events::status))
        .order(inbound_events::id)
        .load(&mut conn)
        .await
        .expect("unfinished events")
}

/// `(id, status, last_error)` of every dead letter.
pub async fn dead_letters(db: &TestDb) -> Vec<(i64, String, Option<String>)> {
    let mut conn = db.pool().get().await.expect("a connection");
    inbound_events::table
        .filter(inbound_events::status.eq("failed"))
        .select((
            inbound_events::id,
            inbound_events::status,
            inbound_events::last_error,
        ))
        .order(inbound_events::id)
        .load(&mut conn)
        .await
        .expect("dead letters")
}

// ----- a TCP relay in front of PostgreSQL -----------------------------------------------------

/// A TCP relay on a fixed loopback port in front of `upstream`. [`Relay::cut`] closes every
/// relayed connection and the listening socket (new connections are refused);
/// [`Relay::restore`] listens again on the same port. [`Relay::hold`] keeps what clients send
/// (it reaches the server on [`Relay::release`], even from a client that died meanwhile, or
/// never, after a cut).
pub struct Relay {
    addr: SocketAddr,
    held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Read at each new connection, so a restarted upstream on another port can be set.
    upstream: Arc<Mutex<SocketAddr>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let relay = Self {
            addr: replicas::free_port(),
            held: Arc::new(tokio::sync::watch::Sender::new(false)),
            upstream: Arc::new(Mutex::new(upstream)),
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        relay.restore().await;
        relay
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url_for(&self, url: &Secret) -> Secret {
        let mut parsed = url::Url::parse(url.expose()).expect("a database URL");
        parsed.set_host(Some("127.0.0.1")).expect("a host");
        parsed.set_port(Some(self.addr.port())).expect("a port");
        Secret::new(parsed.to_string())
    }

    /// The upstream of a TCP database URL.
    pub fn upstream_of(url: &Secret) -> SocketAddr {
        let parsed = url::Url::parse(url.expose()).expect("a database URL");
        let host = parsed.host_str().expect("a TCP database URL (host)");
        let port = parsed.port().unwrap_or(5432);
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        format!("{host}:{port}").parse().expect("host:port")
    }

    /// Listens (again) and relays.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("relay bind");
        let upstream = self.upstream.clone();
        let connections = self.connections.clone();
        let held = self.held.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = *upstream.lock();
                let held = held.subscribe();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (mut client_in, mut client_out) = inbound.into_split();
                        let (mut server_in, mut server_out) = outbound.into_split();
                        let up = forward_unless_held(&mut client_in, &mut server_out, held);
                        let down = async {
                            let copied = tokio::io::copy(&mut server_in, &mut client_out).await;
                            // The server is gone: so is the client's side of it.
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut client_out).await;
                            copied
                        };
                        let _ = tokio::join!(up, down);
                    }
                });
                connections.lock().push(task);
            }
        });
        *self.accept.lock() = Some(accept);
    }

    /// Keeps what clients send from now on, until [`Relay::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Sends on what was kept, and relays again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Relays new connections to `upstream` from now on (connections open stay where they are).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock() = upstream;
    }

    /// Closes every connection and stops listening.
    pub async fn cut(&self) {
        let accept = self.accept.lock().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let tasks: Vec<_> = self.connections.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Copies client → server, each chunk only while the relay is not held; at the client's end
/// (after what was kept has gone on) the server's side is shut down.
async fn forward_unless_held(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut held: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if held.wait_for(|h| !*h).await.is_err() {
            return Ok(());
        }
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().take() {
            accept.abort();
        }
        for t in self.connections.lock().drain(..) {
            t.abort();
        }
    }
}
