//! `GrpcAgent` against a real tonic agent server (the dev agent) on loopback.

use std::sync::Arc;
use std::time::Duration;

use infragpt::agent_client::{GrpcAgent, GrpcAgentOptions, HEALTH_KEY};
use infragpt::testkit::devagent::{AGENT_TYPE, DEMO_LABEL, DevAgent, DevAgentConfig, FailMode};
use infragpt_actors::circuit::{CircuitConfig, CircuitState, ManualClock};
use infragpt_actors::conversation::{Agent, AgentError, AgentTurn, PastMessage};
use infragpt_actors::ids::ConversationId;
use infragpt_actors::kinds;
use infragpt_actors::{ActorState, HealthRegistry, Metrics};
use serde_json::json;
use tonic::Code;

fn dev_agent(fail_mode: FailMode) -> infragpt::testkit::devagent::DevAgentHandle {
    DevAgent::start(DevAgentConfig {
        call_send_reply: false,
        fail_mode,
        ..DevAgentConfig::default()
    })
    .expect("dev agent starts")
}

fn options(endpoint: String) -> GrpcAgentOptions {
    GrpcAgentOptions {
        endpoint,
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(30),
        retry_attempts: 3,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        circuit: CircuitConfig {
            failure_threshold: 2,
            initial_cool_down: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
        },
        health_parent: None,
    }
}

struct Client {
    agent: GrpcAgent,
    health: HealthRegistry,
    metrics: Metrics,
    clock: ManualClock,
}

fn client(options: GrpcAgentOptions) -> Client {
    let health = HealthRegistry::new();
    let metrics = Metrics::new().unwrap();
    let clock = ManualClock::new();
    let agent = GrpcAgent::with_clock(options, &health, &metrics, Arc::new(clock.clone())).unwrap();
    Client {
        agent,
        health,
        metrics,
        clock,
    }
}

fn metric(metrics: &Metrics, line_start: &str) -> Option<f64> {
    metrics
        .encode_text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn turn(text: &str) -> AgentTurn {
    AgentTurn {
        conversation_id: ConversationId::new_random(),
        current_message: text.to_owned(),
        past_messages: vec![
            PastMessage {
                message_id: "11111111-1111-1111-1111-111111111111".into(),
                content: "the API is slow".into(),
                sender: "user/U0ALICE001".into(),
                timestamp: "2026-11-25T10:00:00.000Z".into(),
            },
            PastMessage {
                message_id: "22222222-2222-2222-2222-222222222222".into(),
                content: "Looking into it".into(),
                sender: "agent".into(),
                timestamp: "2026-11-25T10:00:05.250Z".into(),
            },
        ],
        context: json!({
            "team_id": "T0SIMACME1",
            "channel_id": "C0OPS00001",
            "thread_ts": "1700000000.000100",
            "message_ts": "1700000000.000300",
            "sender": {"user_id": "U0ALICE001", "name": "Alice", "username": "alice", "email": null},
            "source": "slack",
        }),
        user_id: "U0ALICE001".into(),
        channel_id: "C0OPS00001".into(),
    }
}

#[tokio::test]
async fn request_and_response_mapping() {
    let dev = dev_agent(FailMode::None);
    let c = client(options(dev.endpoint()));
    let t = turn("summarize this thread");
    let answer = c.agent.process(t.clone()).await.unwrap();

    let requests = dev.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.conversation_id, t.conversation_id.to_string());
    assert_eq!(r.current_message, "summarize this thread");
    assert_eq!(r.user_id, "U0ALICE001");
    assert_eq!(r.channel_id, "C0OPS00001");
    let past: Vec<(&str, &str, &str, &str)> = r
        .past_messages
        .iter()
        .map(|m| {
            (
                m.message_id.as_str(),
                m.content.as_str(),
                m.sender.as_str(),
                m.timestamp.as_str(),
            )
        })
        .collect();
    assert_eq!(
        past,
        vec![
            (
                "11111111-1111-1111-1111-111111111111",
                "the API is slow",
                "user/U0ALICE001",
                "2026-11-25T10:00:00.000Z"
            ),
            (
                "22222222-2222-2222-2222-222222222222",
                "Looking into it",
                "agent",
                "2026-11-25T10:00:05.250Z"
            ),
        ]
    );
    for m in &r.past_messages {
        chrono::DateTime::parse_from_rfc3339(&m.timestamp).expect("RFC 3339 timestamp");
    }
    let context: serde_json::Value = serde_json::from_str(&r.context).expect("context is JSON");
    assert_eq!(context, t.context);
    assert!(context.is_object());

    assert!(answer.success);
    assert_eq!(answer.agent_type, AGENT_TYPE);
    assert!(answer.response_text.starts_with(DEMO_LABEL));
    assert!(
        answer.response_text.contains("2 earlier messages"),
        "{}",
        answer.response_text
    );
    assert_eq!(answer.tools_used, vec!["thread.history".to_owned()]);
    assert!(answer.confidence > 0.0);
    assert!(answer.error_message.is_empty());

    let snap = c.health.get(kinds::AGENT_CLIENT, HEALTH_KEY).unwrap();
    assert_eq!(snap.state, ActorState::Running);
    assert_eq!(snap.detail["calls"], 1);
    assert_eq!(snap.detail["failures"], 0);
    assert_eq!(snap.detail["circuit"], "closed");
    assert_eq!(snap.detail["endpoint"], dev.endpoint());
    assert_eq!(
        metric(
            &c.metrics,
            "infragpt_agent_calls_total{outcome=\"success\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &c.metrics,
            "infragpt_agent_call_seconds_count{outcome=\"success\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn host_port_endpoint_form_works() {
    let dev = dev_agent(FailMode::None);
    // The seed's form, as written in config files.
    let c = client(options(dev.addr().to_string()));
    assert_eq!(c.agent.endpoint(), dev.endpoint());
    assert!(c.agent.process(turn("help")).await.unwrap().success);
    // And through the config loader's normaliser (unspecified address → loopback).
    let raw = format!("0.0.0.0:{}", dev.addr().port());
    let normalized = infragpt::config::normalize_endpoint(&raw).unwrap();
    let c = client(options(normalized));
    assert!(c.agent.process(turn("help")).await.unwrap().success);
    assert_eq!(dev.requests().len(), 2);
}

#[tokio::test]
async fn unsuccessful_answer_is_returned_as_is() {
    let dev = dev_agent(FailMode::Unsuccessful("model overloaded".into()));
    let c = client(options(dev.endpoint()));
    let answer = c.agent.process(turn("status")).await.unwrap();
    assert!(!answer.success);
    assert_eq!(answer.error_message, "model overloaded");
    assert_eq!(c.agent.circuit_state(), CircuitState::Closed);
    assert_eq!(
        metric(
            &c.metrics,
            "infragpt_agent_calls_total{outcome=\"unsuccessful\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn unavailable_is_retried_then_succeeds() {
    let dev = dev_agent(FailMode::Status {
        code: Code::Unavailable,
        times: Some(2),
    });
    let c = client(options(dev.endpoint()));
    let answer = c.agent.process(turn("status")).await.unwrap();
    assert!(answer.success);
    let requests = dev.requests();
    assert_eq!(requests.len(), 3, "two failures, then the answer");
    assert!(
        requests.iter().all(|r| r == &requests[0]),
        "same request each attempt"
    );
    assert_eq!(
        metric(&c.metrics, "infragpt_agent_retries_total"),
        Some(2.0)
    );
    assert_eq!(c.agent.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn retries_stop_at_the_attempt_budget() {
    let dev = dev_agent(FailMode::Status {
        code: Code::Unavailable,
        times: None,
    });
    let c = client(options(dev.endpoint()));
    let err = c.agent.process(turn("status")).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Unavailable(m) if m.contains("after 3 attempt")),
        "{err:?}"
    );
    assert_eq!(dev.requests().len(), 3);
}

#[tokio::test]
async fn other_errors_are_not_retried() {
    for code in [Code::Internal, Code::InvalidArgument] {
        let dev = dev_agent(FailMode::Status { code, times: None });
        let c = client(options(dev.endpoint()));
        let err = c.agent.process(turn("status")).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::Failed(m) if m.contains(&format!("{code:?}"))),
            "{err:?}"
        );
        assert_eq!(dev.requests().len(), 1, "{code:?} must not be retried");
        // The agent answered: it is reachable, the circuit stays closed.
        c.agent.process(turn("status")).await.unwrap_err();
        assert_eq!(c.agent.circuit_state(), CircuitState::Closed);
        assert_eq!(
            metric(&c.metrics, "infragpt_agent_calls_total{outcome=\"failed\"}"),
            Some(2.0)
        );
    }
}

#[tokio::test]
async fn slow_agent_times_out_without_retry() {
    let dev = DevAgent::start(DevAgentConfig {
        call_send_reply: false,
        think_time: Duration::from_secs(10),
        ..DevAgentConfig::default()
    })
    .unwrap();
    let mut o = options(dev.endpoint());
    o.call_timeout = Duration::from_millis(300);
    let c = client(o);
    let err = c.agent.process(turn("status")).await.unwrap_err();
    assert_eq!(err, AgentError::Timeout(Duration::from_millis(300)));
    assert_eq!(dev.requests().len(), 1, "a timeout is not retried");
    assert_eq!(
        metric(
            &c.metrics,
            "infragpt_agent_calls_total{outcome=\"timeout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(c.agent.circuit_state(), CircuitState::Closed);
    assert_eq!(c.agent.process(turn("x")).await.unwrap_err(), err);
    assert_eq!(
        c.agent.circuit_state(),
        CircuitState::Open,
        "timeouts count"
    );
}

/// An agent that goes away in the middle of a call (restarted, crashed) leaves the call
/// `Unavailable`, so the turn is retried later, but not inside the call: the agent may have
/// answered through SendReply first, which the turn's retry looks for.
#[tokio::test]
async fn a_call_cut_by_the_agent_going_away_is_unavailable() {
    let dev = DevAgent::start(DevAgentConfig {
        call_send_reply: false,
        think_time: Duration::from_secs(30),
        ..DevAgentConfig::default()
    })
    .unwrap();
    let requests = {
        let dev = &dev;
        move || dev.requests().len()
    };
    let c = client(options(dev.endpoint()));
    let call = c.agent.process(turn("status"));
    tokio::pin!(call);
    // Wait until the agent has the request, then stop it under the call.
    let asked = async {
        while requests() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = &mut call => panic!("the call ended before the agent went away: {r:?}"),
        () = asked => {}
    }
    assert_eq!(requests(), 1);
    let stopping = tokio::task::spawn_blocking(move || dev.stop());
    let err = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the cut call ends")
        .unwrap_err();
    stopping.await.unwrap();
    assert!(
        matches!(&err, AgentError::Unavailable(m) if m.contains("broke during the call")),
        "{err:?}"
    );
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn circuit_opens_fails_fast_and_closes_when_the_agent_returns() {
    let addr = closed_port();
    let mut o = options(format!("http://{addr}"));
    o.retry_attempts = 2;
    let c = client(o);

    for _ in 0..2 {
        let err = c.agent.process(turn("status")).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::Unavailable(m) if m.contains("after 2 attempt")),
            "connection refused is UNAVAILABLE and retried: {err:?}"
        );
    }
    assert_eq!(
        metric(&c.metrics, "infragpt_agent_retries_total"),
        Some(2.0)
    );
    assert_eq!(c.agent.circuit_state(), CircuitState::Open);
    let snap = c.health.get(kinds::AGENT_CLIENT, HEALTH_KEY).unwrap();
    assert_eq!(snap.state, ActorState::Failed);
    assert_eq!(snap.detail["circuit"], "open");
    assert_eq!(snap.detail["failures"], 2);
    assert!(snap.last_error.is_some());

    // Open: fails at once, without touching the network.
    let err = c.agent.process(turn("status")).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Unavailable(m) if m.contains("circuit open")),
        "{err:?}"
    );
    assert_eq!(
        metric(
            &c.metrics,
            "infragpt_agent_calls_total{outcome=\"circuit_open\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&c.metrics, "infragpt_agent_retries_total"),
        Some(2.0)
    );

    // The agent comes back on the same address; after the cool-down one probe closes it.
    let dev = DevAgent::start(DevAgentConfig {
        bind: addr,
        call_send_reply: false,
        ..DevAgentConfig::default()
    })
    .unwrap();
    assert!(
        c.agent.process(turn("status")).await.is_err(),
        "still cooling down"
    );
    assert!(dev.requests().is_empty());
    c.clock.advance(Duration::from_secs(30));
    assert_eq!(c.agent.circuit_state(), CircuitState::HalfOpen);
    let answer = c.agent.process(turn("status")).await.unwrap();
    assert!(answer.success);
    assert_eq!(c.agent.circuit_state(), CircuitState::Closed);
    let snap = c.health.get(kinds::AGENT_CLIENT, HEALTH_KEY).unwrap();
    assert_eq!(snap.state, ActorState::Running);
    assert_eq!(snap.detail["circuit"], "closed");
    assert_eq!(dev.requests().len(), 1);
}

#[tokio::test]
async fn health_entry_survives_pruning() {
    let addr = closed_port();
    let mut o = options(format!("http://{addr}"));
    o.retry_attempts = 1;
    o.circuit.failure_threshold = 1;
    let c = client(o);
    c.agent.process(turn("x")).await.unwrap_err();
    assert_eq!(
        c.health.get(kinds::AGENT_CLIENT, HEALTH_KEY).unwrap().state,
        ActorState::Failed
    );
    assert_eq!(c.health.prune(Duration::ZERO), 1);
    c.agent.process(turn("x")).await.unwrap_err();
    let snap = c.health.get(kinds::AGENT_CLIENT, HEALTH_KEY).unwrap();
    assert_eq!(snap.detail["circuit"], "open");
}

#[test]
fn invalid_endpoints_and_missing_runtime_are_clear_errors() {
    let health = HealthRegistry::new();
    let metrics = Metrics::new().unwrap();
    let err = GrpcAgent::new(options("http://127.0.0.1:1".into()), &health, &metrics).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for bad in ["", "ftp://x:1", "not an endpoint"] {
            let err = GrpcAgent::new(options(bad.into()), &health, &metrics).unwrap_err();
            assert!(err.to_string().contains("invalid"), "{bad}: {err}");
        }
        GrpcAgent::new(options("http://127.0.0.1:1".into()), &health, &metrics).unwrap();
        // A second client on the same metrics registry is refused, not silently merged.
        let err =
            GrpcAgent::new(options("http://127.0.0.1:1".into()), &health, &metrics).unwrap_err();
        assert!(err.to_string().contains("metrics"), "{err}");
    });
}
