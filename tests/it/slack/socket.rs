//! Socket Mode against the simulator, with real PostgreSQL behind the inbox: record then ack,
//! deduplication, several connections, every disconnect reason, dropped sockets, and the
//! fatal `link_disabled`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use infragpt::config::SlackConfig;
use infragpt::db::PgInbox;
use infragpt::http::ReadinessCheck;
use infragpt::slack::socket::SocketSettings;
use infragpt::slack::transport::SlackModule;
use infragpt::slack::web::WebSettings;
use infragpt::testkit::slack_sim::{ConnState, SimConfig, SlackSim, Subscriptions};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::InboundEvents;
use infragpt_actors::slack_connection::ConnectionSettings;
use infragpt_actors::testing::{MemoryInbox, RecordingHandler};
use infragpt_actors::{ActorState, Cluster, ClusterConfig, HealthRegistry, Metrics, StreamSpec};
use infragpt_actors::{kinds, sources};

use crate::support::wait::{eventually, poll};

const ACME: &str = "T0SIMACME1";
const GENERAL: &str = "C0GENERAL1";
const ALICE: &str = "U0ALICE001";
const WAIT: Duration = Duration::from_secs(20);

fn sim_config(mentions_only: bool) -> SimConfig {
    let mut cfg = SimConfig::default()
        .with_echo_bot_messages(false)
        .with_ack_timeout(Duration::from_millis(700));
    if mentions_only {
        cfg.subscriptions = Subscriptions {
            app_mention: true,
            message: false,
        };
    }
    cfg
}

fn socket_settings(connections: u32) -> SocketSettings {
    SocketSettings {
        connections,
        connection: ConnectionSettings {
            ping_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            too_many_base: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(3),
        },
    }
}

struct Harness {
    sim: SlackSim,
    cluster: Cluster,
    handler: Arc<RecordingHandler>,
    module: SlackModule,
}

fn cluster_with(inbox: Arc<dyn InboundEvents>) -> (Cluster, Arc<RecordingHandler>) {
    let cluster = Cluster::start(
        ClusterConfig::default(),
        inbox,
        HealthRegistry::new(),
        Metrics::new().unwrap(),
    )
    .unwrap();
    let handler = RecordingHandler::new();
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: kinds::CONVERSATION_THREAD,
            source: sources::SLACK,
            handler: handler.clone(),
        })
        .unwrap();
    (cluster, handler)
}

fn harness(sim: SlackSim, inbox: Arc<dyn InboundEvents>, connections: u32) -> Harness {
    let (cluster, handler) = cluster_with(inbox);
    let cfg = SlackConfig {
        app_token: Some(sim.config().apps[0].app_token.clone()),
        socket_mode: true,
        connections,
        api_url: sim.base_url(),
        ..SlackConfig::default()
    };
    let web = SlackModule::build_web_with(
        &cfg,
        None,
        None,
        WebSettings {
            retry_base: Duration::from_millis(10),
            ..WebSettings::default()
        },
    )
    .unwrap();
    let mut module = SlackModule::new(cfg, cluster.clone(), web)
        .with_socket_settings(socket_settings(connections));
    assert_eq!(module.start_socket_mode(), connections as usize);
    Harness {
        sim,
        cluster,
        handler,
        module,
    }
}

async fn wait_open(sim: &SlackSim, n: usize) {
    sim.wait_for(|st| st.open_connections().len() == n, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{n} open connections: {e}"));
}

async fn wait_all_acked(sim: &SlackSim, deliveries: usize) {
    sim.wait_for(
        |st| st.deliveries().len() == deliveries && st.deliveries().iter().all(|d| d.acked),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "all {deliveries} deliveries acked: {e}; {:?}",
            sim.deliveries()
        )
    });
}

async fn stored(cluster: &Cluster) -> i64 {
    cluster
        .inbox()
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .sum()
}

#[actix_rt::test]
async fn mention_is_recorded_then_acked_and_handled_once_despite_redelivery() {
    let db = TestDb::new().await;
    let sim = SlackSim::start(sim_config(false)).unwrap();
    let h = harness(sim, Arc::new(PgInbox::new(db.pool().clone())), 1);
    wait_open(&h.sim, 1).await;

    h.sim
        .post_user_message(ACME, GENERAL, ALICE, "<@U0ACMEBOT1> is prod up?", None)
        .unwrap();
    // app_mention + message: two envelopes, two events.
    wait_all_acked(&h.sim, 2).await;
    eventually("both events are handled", async || {
        h.handler.handled_count() == 2
    })
    .await;
    assert_eq!(stored(&h.cluster).await, 2);
    let handled = h.handler.handled();
    let kinds: BTreeSet<&str> = handled.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["app_mention", "message"]));
    let mention = handled.iter().find(|e| e.kind == "app_mention").unwrap();
    let delivery = h
        .sim
        .deliveries()
        .into_iter()
        .find(|d| d.event_type == "app_mention")
        .unwrap();
    assert_eq!(mention.source_id, delivery.event_id);
    assert_eq!(mention.payload, delivery.payload);
    let ts = delivery.ts.unwrap();
    assert_eq!(mention.routing_key.0, format!("{ACME}/{GENERAL}/{ts}"));
    // Both twins of the human message go to the same thread key.
    assert!(handled.iter().all(|e| e.routing_key == mention.routing_key));

    // The same envelope twice more: acked each time, never dispatched again.
    h.sim.redeliver(&delivery.envelope_id, 2).unwrap();
    h.sim
        .wait_for(
            |st| {
                st.acks()
                    .iter()
                    .filter(|a| a.envelope_id == delivery.envelope_id)
                    .count()
                    == 3
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(stored(&h.cluster).await, 2);
    assert_eq!(h.handler.total_calls(), 2);
    assert_eq!(h.handler.handled_count(), 2);

    // The connection publishes its counters once an ack's write completes, which can be a
    // moment after the simulator has read the ack.
    eventually(
        "the connection counts four envelopes received and acked",
        async || {
            let detail = &h
                .cluster
                .health()
                .get(kinds::SLACK_CONNECTION, "conn-1")
                .unwrap()
                .detail;
            detail["envelopes_received"] == 4 && detail["envelopes_acked"] == 4
        },
    )
    .await;
    let conn = h
        .cluster
        .health()
        .get(kinds::SLACK_CONNECTION, "conn-1")
        .unwrap();
    assert_eq!(conn.state, ActorState::Running);
    assert_eq!(conn.detail["state"], "connected");
    assert!(conn.detail["connected_since"].is_string());
    assert!(conn.detail["last_frame_at"].is_string());
    assert!(h.module.readiness().check().await.is_ok());
}

#[actix_rt::test]
async fn no_ack_while_the_inbox_is_down_and_redelivery_records_it() {
    let inbox = MemoryInbox::new();
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let h = harness(sim, inbox.clone(), 1);
    wait_open(&h.sim, 1).await;
    inbox.set_unavailable(true);
    h.sim
        .post_user_message(ACME, GENERAL, ALICE, "<@U0ACMEBOT1> hi", None)
        .unwrap();
    // Slack's ack timer fires and redelivers while the inbox is still down.
    h.sim
        .wait_for(
            |st| {
                st.deliveries()
                    .first()
                    .is_some_and(|d| d.retry_attempt >= 1)
            },
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        h.sim.acks().is_empty(),
        "nothing acked before it is recorded"
    );
    let conn = h
        .cluster
        .health()
        .get(kinds::SLACK_CONNECTION, "conn-1")
        .unwrap();
    assert!(conn.detail["ingest_failures"].as_u64().unwrap() >= 1);
    inbox.set_unavailable(false);
    wait_all_acked(&h.sim, 1).await;
    eventually("the event is handled", async || {
        h.handler.handled_count() == 1
    })
    .await;
    assert_eq!(inbox.all().len(), 1);
}

#[actix_rt::test]
async fn two_connections_share_the_events() {
    let db = TestDb::new().await;
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let h = harness(sim, Arc::new(PgInbox::new(db.pool().clone())), 2);
    wait_open(&h.sim, 2).await;
    for i in 0..10 {
        h.sim
            .post_user_message(ACME, GENERAL, ALICE, &format!("<@U0ACMEBOT1> q{i}"), None)
            .unwrap();
    }
    wait_all_acked(&h.sim, 10).await;
    let used: BTreeSet<u64> = h.sim.acks().iter().map(|a| a.connection_id).collect();
    assert_eq!(used.len(), 2, "both connections carried events: {used:?}");
    eventually("ten events are handled", async || {
        h.handler.handled_count() == 10
    })
    .await;
    assert_eq!(stored(&h.cluster).await, 10);
    let conns = h.cluster.health().group(kinds::SLACK_CONNECTION);
    let keys: Vec<&str> = conns.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, vec!["conn-1", "conn-2"]);
    assert!(conns.iter().all(|c| c.state == ActorState::Running));
}

#[actix_rt::test]
async fn every_disconnect_reason_and_a_dropped_socket_lose_nothing() {
    let db = TestDb::new().await;
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let h = harness(sim, Arc::new(PgInbox::new(db.pool().clone())), 1);
    wait_open(&h.sim, 1).await;
    let mut posted = 0usize;
    let mut post = |h: &Harness| {
        posted += 1;
        h.sim
            .post_user_message(
                ACME,
                GENERAL,
                ALICE,
                &format!("<@U0ACMEBOT1> m{posted}"),
                None,
            )
            .unwrap();
        posted
    };
    for reason in [
        "warning",
        "refresh_requested",
        "too_many_websockets",
        "dropped",
    ] {
        let before = h.sim.connections().len();
        let old = h.sim.with_state(|st| st.open_connections()[0].id);
        post(&h);
        if reason == "dropped" {
            h.sim.drop_connection(old).unwrap();
        } else {
            h.sim.disconnect(old, reason).unwrap();
        }
        // Mid-stream: events keep coming while the connection is replaced.
        let n = post(&h);
        h.sim
            .wait_for(
                |st| {
                    st.connections().len() > before
                        && st.open_connections().len() == 1
                        && st.open_connections()[0].id != old
                },
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("reconnect after {reason}: {e}"));
        wait_all_acked(&h.sim, n).await;
    }
    eventually("every posted event is handled", async || {
        h.handler.handled_count() == posted
    })
    .await;
    assert_eq!(stored(&h.cluster).await, posted as i64);
    let ends: Vec<String> = h
        .sim
        .connections()
        .iter()
        .filter(|c| c.state == ConnState::Closed)
        .filter_map(|c| c.end_reason.clone())
        .collect();
    for expected in [
        "disconnect:warning",
        "disconnect:refresh_requested",
        "disconnect:too_many_websockets",
        "dropped",
    ] {
        assert!(ends.iter().any(|e| e == expected), "{expected} in {ends:?}");
    }
    let conn = h
        .cluster
        .health()
        .get(kinds::SLACK_CONNECTION, "conn-1")
        .unwrap();
    assert!(conn.detail["reconnects"].as_u64().unwrap() >= 4, "{conn:?}");
    assert!(conn.restarts >= 4);
    assert!(h.module.readiness().check().await.is_ok());
}

#[actix_rt::test]
async fn link_disabled_is_fatal_and_fails_readiness() {
    let inbox = MemoryInbox::new();
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let mut h = harness(sim, inbox, 2);
    wait_open(&h.sim, 2).await;
    let opened = h.sim.connections().len();
    h.sim.set_link_disabled(true);
    let health = h.cluster.health().clone();
    eventually("both connections fail", async || {
        health.count(kinds::SLACK_CONNECTION, ActorState::Failed) == 2
    })
    .await;
    for key in ["conn-1", "conn-2"] {
        let conn = health.get(kinds::SLACK_CONNECTION, key).unwrap();
        assert!(
            conn.last_error
                .as_deref()
                .unwrap()
                .contains("link_disabled"),
            "{conn:?}"
        );
        assert_eq!(conn.detail["state"], "failed");
        assert_eq!(conn.detail["last_disconnect_reason"], "link_disabled");
    }
    let why = h.module.readiness().check().await.unwrap_err();
    assert!(
        why.contains("conn-1") && why.contains("link_disabled"),
        "{why}"
    );
    // No reconnect attempts after a fatal disconnect.
    let module = &h.module;
    let recovered = poll(Duration::from_millis(300), async || {
        module.readiness().check().await.is_ok()
    })
    .await;
    assert!(recovered.is_err(), "a fatal connection stays failed");
    assert_eq!(h.sim.connections().len(), opened);
    h.module.stop_socket_mode().await;
}

#[actix_rt::test]
async fn stopping_closes_the_sockets() {
    let inbox = MemoryInbox::new();
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let mut h = harness(sim, inbox, 2);
    wait_open(&h.sim, 2).await;
    h.module.stop_socket_mode().await;
    h.sim
        .wait_for(|st| st.open_connections().is_empty(), WAIT)
        .await
        .unwrap();
    let health = h.cluster.health().clone();
    eventually("both connections stop", async || {
        health.count(kinds::SLACK_CONNECTION, ActorState::Stopped) == 2
    })
    .await;
}

#[actix_rt::test]
async fn a_refused_app_token_is_retried_and_reported() {
    let inbox = MemoryInbox::new();
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let (cluster, _handler) = cluster_with(inbox);
    let cfg = SlackConfig {
        app_token: Some(infragpt_actors::Secret::new("xapp-1-not-a-real-token")),
        socket_mode: true,
        connections: 1,
        api_url: sim.base_url(),
        ..SlackConfig::default()
    };
    let web = SlackModule::build_web(&cfg, None, None).unwrap();
    let mut module =
        SlackModule::new(cfg, cluster.clone(), web).with_socket_settings(socket_settings(1));
    module.start_socket_mode();
    sim.wait_for(|st| st.calls("apps.connections.open").len() >= 3, WAIT)
        .await
        .unwrap();
    let conn = cluster
        .health()
        .get(kinds::SLACK_CONNECTION, "conn-1")
        .unwrap();
    assert!(conn.restarts >= 2, "{conn:?}");
    assert!(
        conn.last_error.as_deref().unwrap().contains("invalid_auth"),
        "{conn:?}"
    );
    // Not fatal: readiness holds while it keeps trying.
    assert!(module.readiness().check().await.is_ok());
    assert!(sim.connections().is_empty());
    module.stop_socket_mode().await;
}

/// Envelopes already sent on a socket when the connection stops are recorded before it
/// closes, not dropped with the reader and left to Slack's redelivery (seconds later): a
/// rolling restart then adds no latency to them. The inbox's only connection is held so
/// that envelopes pile up in the socket while the first one is being recorded.
#[actix_rt::test]
async fn stopping_records_the_envelopes_already_sent() {
    let db = TestDb::new().await;
    let pool = infragpt::db::build_pool(db.database().url(), 1, Duration::from_secs(5)).unwrap();
    let sim = SlackSim::start(sim_config(true)).unwrap();
    let mut h = harness(sim, Arc::new(PgInbox::new(pool.clone())), 1);
    wait_open(&h.sim, 1).await;

    let held = pool.get().await.unwrap();
    for i in 0..5 {
        h.sim
            .post_user_message(ACME, GENERAL, ALICE, &format!("<@U0ACMEBOT1> n{i}"), None)
            .unwrap();
    }
    h.sim
        .wait_for(
            |st| st.deliveries().iter().filter(|d| d.sends > 0).count() == 5,
            WAIT,
        )
        .await
        .unwrap();
    // The first envelope's record waits for the held connection; the others arrive and wait
    // in the socket. The stop waits behind that record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = actix_rt::spawn(async move {
        h.module.stop_socket_mode().await;
        h
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    let h = stop.await.unwrap();
    let counts = PgInbox::new(db.pool().clone())
        .count_by_status()
        .await
        .unwrap();
    let recorded: i64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(
        recorded, 5,
        "every envelope sent before the close is recorded: {counts:?}"
    );
    drop(h);
}
