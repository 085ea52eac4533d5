//! Fault drills: one real `infragpt serve` process under a sustained closed-loop load through
//! the Slack simulator (Socket Mode) and the development agent (a real tonic server), while
//! one thing fails on purpose:
//!
//! * PostgreSQL restarted (a private cluster this test owns, down for 10 s), and crashed
//!   three times under load (recovering from its WAL);
//! * the agent's gRPC server stopped and started again every few seconds;
//! * Slack's Web API answering 429 with Retry-After, and bursts of 5xx (some after the
//!   message was posted, so only the answer is lost);
//! * the process SIGKILLed at random points of its turns, 20 times, restarted each time.
//!
//! After each, the invariant of issue 16: every mention answered exactly once in its own
//! thread (no notice instead of an answer: an "assistant unavailable" notice counts as a
//! violation, as does any bot message that is not an answer), the agent asked about each
//! thread's turns in order, nothing pending or processing in the inbox and no dead letter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::private_pg::PrivateCluster;
use infragpt::db::schema::{inbound_events, messages};
use infragpt::grpc::pb::agent::AgentRequest;
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig, DevAgentHandle};
use infragpt::testkit::replicas::{
    self, Load, LoadConfig, Repeats, ReplicaSet, ReplicaSetConfig, SlackSetup,
};
use infragpt::testkit::slack_sim::SlackSim;
use infragpt::testkit::test_db::TestDb;
use rand::Rng as _;

use super::{CONNECTIONS, Relay, check_load, wait_connections};
use crate::support::wait::{eventually, poll};

/// Closed-loop threads of the load.
const THREADS: usize = 6;

/// One replica, the simulator and the agent (which a drill may stop and start again on the
/// same address).
struct Drill {
    sim: Arc<SlackSim>,
    agent: Option<DevAgentHandle>,
    agent_config: DevAgentConfig,
    /// Requests of the agent instances stopped so far, in order.
    past_requests: Vec<AgentRequest>,
    set: ReplicaSet,
    db: TestDb,
}

impl Drill {
    async fn start(db: TestDb) -> Self {
        let sim = Arc::new(SlackSim::start(replicas::sim_config()).expect("Slack simulator"));
        let agent_addr = replicas::free_port();
        let mut config = ReplicaSetConfig::new(
            env!("CARGO_BIN_EXE_infragpt"),
            1,
            db.url.clone(),
            agent_addr,
        );
        config.slack = Some(SlackSetup::of(&sim, CONNECTIONS));
        let mut set = ReplicaSet::new(config).expect("replica set");
        let agent_config = DevAgentConfig {
            bind: agent_addr,
            reply_endpoint: set.grpc_endpoints().into_iter().next(),
            // A little thinking, so turns overlap the faults rather than racing past them.
            think_time: Duration::from_millis(20),
            ..DevAgentConfig::default()
        };
        let agent = DevAgent::start(agent_config.clone()).expect("dev agent");
        set.start(0).await.unwrap_or_else(|e| panic!("{e}"));
        wait_connections(&sim, 1).await;
        Self {
            sim,
            agent: Some(agent),
            agent_config,
            past_requests: Vec::new(),
            set,
            db,
        }
    }

    fn start_load(&self) -> Load {
        Load::start(
            self.sim.clone(),
            LoadConfig::for_sim(&self.sim, THREADS, 10_000),
        )
    }

    fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            // Read after the stop: a request can arrive while it stops.
            self.past_requests.extend(agent.stop());
        }
    }

    fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent runs already");
        self.agent = Some(DevAgent::start(self.agent_config.clone()).expect("dev agent again"));
    }

    async fn restart_process(&mut self) {
        self.set.start(0).await.unwrap_or_else(|e| panic!("{e}"));
        wait_connections(&self.sim, 1).await;
    }

    /// Stops the load and checks every invariant, then that no notice was stored and that
    /// every envelope the service acknowledged is in the inbox.
    async fn check(mut self, load: Load, at_least: usize, repeats: Repeats) {
        let logs = load.stop().await;
        self.stop_agent();
        check_load(
            &self.db,
            &self.sim,
            &self.past_requests,
            &logs,
            at_least,
            repeats,
        )
        .await;
        let mut conn = self.db.pool().get().await.expect("a connection");
        let notices: i64 = messages::table
            .filter(messages::kind.eq("notice"))
            .count()
            .get_result(&mut conn)
            .await
            .expect("notices");
        assert_eq!(notices, 0, "the service posted notices");
        // Acknowledged only once recorded: every acked envelope's event is in the inbox.
        let acked: Vec<String> = self.sim.with_state(|s| {
            s.deliveries()
                .iter()
                .filter(|d| d.acked)
                .map(|d| d.event_id.clone())
                .collect()
        });
        let recorded: Vec<String> = inbound_events::table
            .filter(inbound_events::source.eq("slack"))
            .select(inbound_events::source_id)
            .load(&mut conn)
            .await
            .expect("recorded events");
        let recorded: std::collections::HashSet<_> = recorded.into_iter().collect();
        let missing: Vec<_> = acked.iter().filter(|e| !recorded.contains(*e)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged but not recorded: {missing:?}"
        );
        eprintln!(
            "drill checked: {} mentions answered exactly once, {} envelopes acknowledged",
            replicas::mentions(&logs),
            acked.len()
        );
    }
}

/// Waits until the load has answered `n` mentions; fails if it stalled.
async fn answered(load: &Load, n: usize) {
    assert!(
        load.wait_answered(n, Duration::from_secs(120)).await,
        "the load answered {} mentions, not {n}; thread errors: {:?}",
        load.answered(),
        load.snapshot()
            .iter()
            .filter_map(|l| l.error.clone())
            .collect::<Vec<_>>()
    );
}

/// A private cluster of the test's own (a drill stops it), behind a relay so the service
/// keeps one address while a restarted server listens on another port, and a test database
/// on it.
async fn on_private_cluster() -> (tempfile::TempDir, PrivateCluster, Relay, TestDb) {
    let root = tempfile::tempdir().expect("a directory for the cluster");
    let dir = root.path().to_owned();
    let pg = tokio::task::spawn_blocking(move || PrivateCluster::start(&dir))
        .await
        .expect("the start task")
        .expect("a private PostgreSQL cluster (needs the postgresql package)");
    let relay = Relay::start(([127, 0, 0, 1], pg.port()).into()).await;
    let admin = relay.url_for(&infragpt_actors::Secret::new(pg.url("postgres")));
    let db = TestDb::on_server(admin)
        .await
        .expect("a database on the private cluster");
    (root, pg, relay, db)
}

/// Starts the cluster in `root` again (recovering from its WAL after a crash) and points
/// the relay at it.
async fn start_again(root: &tempfile::TempDir, relay: &Relay) -> PrivateCluster {
    let dir = root.path().to_owned();
    let restarted = tokio::task::spawn_blocking(move || PrivateCluster::start(&dir))
        .await
        .expect("the start task")
        .expect("PostgreSQL starts again");
    relay.set_upstream(([127, 0, 0, 1], restarted.port()).into());
    restarted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_postgres_restarted_for_ten_seconds() {
    let started = Instant::now();
    let (root, pg, relay, db) = on_private_cluster().await;
    let mut pg = Some(pg);
    let d = Drill::start(db).await;
    let load = d.start_load();
    answered(&load, 60).await;

    let before = load.answered();
    let mut stopping = pg.take().expect("the cluster");
    tokio::task::spawn_blocking(move || stopping.stop().expect("pg_ctl stop"))
        .await
        .expect("the stop task");
    let down_at = Instant::now();
    // Not ready while the database is gone (after the lease, at the latest).
    let status = poll(Duration::from_secs(9), async || {
        match d.set.readyz(0).await {
            Ok((200, _)) => Err("still ready".to_owned()),
            Ok((status, body)) => Ok(format!("{status} {body}")),
            Err(e) => Ok(e),
        }
    })
    .await
    .expect("/readyz reports not ready while PostgreSQL is down");
    eprintln!("postgres down: /readyz {status}");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed())).await;
    pg = Some(start_again(&root, &relay).await);
    eprintln!("postgres back after {:?}", down_at.elapsed());
    // It recovers by itself: ready again, and the load goes on.
    eventually("the service is ready again", async || {
        matches!(d.set.readyz(0).await, Ok((200, _)))
    })
    .await;
    answered(&load, before + 100).await;
    d.check(load, before + 100, Repeats::Adjacent).await;
    drop(pg);
    eprintln!("postgres restart drill: {:?}", started.elapsed());
}

/// PostgreSQL crashes under load (`pg_ctl stop -m immediate`: no shutdown checkpoint) three
/// times and recovers from its WAL at once, while statements are in flight on every
/// connection. Every acknowledged envelope is still recorded and every mention answered
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_postgres_crashed_three_times() {
    let started = Instant::now();
    let (root, pg, relay, db) = on_private_cluster().await;
    let mut pg = Some(pg);
    let d = Drill::start(db).await;
    let load = d.start_load();
    answered(&load, 30).await;
    for round in 0..3 {
        let before = load.answered();
        let mut crashing = pg.take().expect("the cluster");
        tokio::task::spawn_blocking(move || crashing.crash().expect("pg_ctl stop -m immediate"))
            .await
            .expect("the crash task");
        pg = Some(start_again(&root, &relay).await);
        eprintln!("postgres crash {round}: back after {before} answers");
        answered(&load, before + 30).await;
    }
    let at_least = load.answered() + 10;
    answered(&load, at_least).await;
    d.check(load, at_least, Repeats::Adjacent).await;
    drop(pg);
    eprintln!("postgres crash drill: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_agent_flapping() {
    let started = Instant::now();
    let mut d = Drill::start(TestDb::new().await).await;
    let load = d.start_load();
    answered(&load, 30).await;
    // Down for 1 s (less than the agent client's retries: 200 + 400 + 800 ms), up for 2 s.
    for _ in 0..6 {
        d.stop_agent();
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.start_agent();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let at_least = load.answered() + 30;
    answered(&load, at_least).await;
    d.check(load, at_least, Repeats::Adjacent).await;
    eprintln!("agent flapping drill: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_slack_rate_limits_and_server_errors() {
    let started = Instant::now();
    let d = Drill::start(TestDb::new().await).await;
    let load = d.start_load();
    answered(&load, 30).await;
    for round in 0..4 {
        d.sim.inject_rate_limit("chat.postMessage", 4, 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        d.sim
            .inject_server_error("chat.postMessage", 4, [500, 502, 503][round % 3], false);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Posted, but the answer is lost: the service must find it in the thread.
        d.sim.inject_server_error("chat.postMessage", 2, 500, true);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        d.sim
            .inject_server_error("conversations.replies", 2, 503, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let at_least = load.answered() + 30;
    answered(&load, at_least).await;
    // Every fault of chat.postMessage was met (conversations.replies is read only when a
    // post's outcome is unknown, so its faults may stay unused).
    assert_eq!(
        d.sim.pending_faults("chat.postMessage"),
        0,
        "the service did not meet every injected fault"
    );
    d.check(load, at_least, Repeats::Adjacent).await;
    eprintln!("slack faults drill: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_process_killed_twenty_times() {
    let started = Instant::now();
    let mut d = Drill::start(TestDb::new().await).await;
    let load = d.start_load();
    answered(&load, 20).await;
    let mut rng = rand::rng();
    for kill in 0..20 {
        // Anywhere in a turn: the load keeps every thread's next mention coming.
        let after = Duration::from_millis(rng.random_range(50..700));
        tokio::time::sleep(after).await;
        d.set.kill(0);
        tracing::info!(kill, after_ms = after.as_millis() as u64, "killed");
        d.restart_process().await;
    }
    let at_least = load.answered() + 30;
    answered(&load, at_least).await;
    d.check(load, at_least, Repeats::Adjacent).await;
    eprintln!("SIGKILL drill (20 kills): {:?}", started.elapsed());
}
