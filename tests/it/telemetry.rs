//! OpenTelemetry export: a real `infragpt serve` process with `telemetry.otlp_endpoint`
//! pointed at a tiny OTLP/gRPC collector in the test (a tonic `TraceService`) exports the
//! spans of a Slack turn, and they can be followed: the envelope's `event_id` is the
//! handling's `source_id`, the agent call is a child of the handling, and SendReply names
//! the conversation the agent call named.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
use infragpt::testkit::replicas::{self, ReplicaSet, ReplicaSetConfig, SlackSetup};
use infragpt::testkit::slack_sim::SlackSim;
use infragpt::testkit::test_db::TestDb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;

use crate::e2e::conversations::{ACME, ALICE, OPS};
use crate::support::wait::eventually;

/// One received span: name, ids, attributes as strings.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: BTreeMap<String, String>,
    service: String,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for s in scope.spans {
                    spans.push(Span {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attributes: s
                            .attributes
                            .iter()
                            .filter_map(|a| {
                                Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))
                            })
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

#[actix_rt::test]
async fn a_turn_is_exported_as_spans_that_can_be_followed() {
    // The collector.
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // One replica process exporting to it, with Slack and the development agent.
    let db = TestDb::new().await;
    let sim = Arc::new(SlackSim::start(replicas::sim_config()).expect("Slack simulator"));
    let agent_addr = replicas::free_port();
    let mut config = ReplicaSetConfig::new(
        env!("CARGO_BIN_EXE_infragpt"),
        1,
        db.url.clone(),
        agent_addr,
    );
    config.slack = Some(SlackSetup::of(&sim, 1));
    config.extra_yaml = format!(
        "telemetry:\n  otlp_endpoint: http://{collector_addr}\n  service_name: infragpt-under-test\n  otlp_filter: info\n"
    );
    let mut set = ReplicaSet::new(config).expect("replica set");
    let _agent = DevAgent::start(DevAgentConfig {
        bind: agent_addr,
        reply_endpoint: Some(set.grpc_endpoints().remove(0)),
        ..DevAgentConfig::default()
    })
    .expect("dev agent");
    set.start_all().await.unwrap_or_else(|e| panic!("{e}"));
    eventually("Socket Mode is connected", async || {
        sim.with_state(|s| !s.open_connections().is_empty())
    })
    .await;

    let sim_config = sim.config();
    let bot = &sim_config
        .teams
        .iter()
        .find(|t| t.id == ACME)
        .expect("Acme")
        .bot_user_id;
    let (team, channel, user) = (ACME, OPS, ALICE);
    let ts = sim
        .post_user_message(
            team,
            channel,
            user,
            &format!("<@{bot}> what is on call?"),
            None,
        )
        .expect("post");
    sim.wait_for(
        |s| {
            s.messages_in(team, channel)
                .iter()
                .any(|m| m.bot_id.is_some() && m.thread_ts.as_deref() == Some(ts.as_str()))
        },
        Duration::from_secs(60),
    )
    .await
    .expect("the turn is answered");
    // SIGTERM flushes the spans not exported yet.
    let (status, _) = set
        .terminate(0, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "the replica exited with {status}");

    let spans = eventually("the turn's spans arrived", async || {
        let spans = collector.spans.lock().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if [
            "slack_envelope",
            "inbound_event",
            "agent_call",
            "send_reply",
        ]
        .iter()
        .all(|n| names.contains(n))
        {
            Ok(spans)
        } else {
            Err(names.join(","))
        }
    })
    .await;
    assert!(spans.iter().all(|s| s.service == "infragpt-under-test"));
    let one = |name: &str| -> &Span {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let envelope = one("slack_envelope");
    let event_id = &envelope.attributes["event_id"];
    let handling = spans
        .iter()
        .find(|s| s.name == "inbound_event" && s.attributes.get("source_id") == Some(event_id))
        .unwrap_or_else(|| panic!("no inbound_event for {event_id}: {spans:#?}"));
    assert_eq!(handling.attributes["source"], "slack");
    let agent_call = one("agent_call");
    assert_eq!(
        agent_call.trace_id, handling.trace_id,
        "the agent call is in the handling's trace"
    );
    assert_eq!(
        agent_call.parent_span_id, handling.span_id,
        "a child of the handling"
    );
    let reply = one("send_reply");
    assert_eq!(
        reply.attributes["conversation_id"],
        agent_call.attributes["conversation_id"]
    );

    server.abort();
}
