//! Events that reach people (issue 15): Alertmanager and PagerDuty webhooks of an
//! organization's sources and the GitHub App's deliveries go through the organization's
//! routing rules into Slack channels, one Block Kit message per thing (updated in place),
//! storms folded into a digest, and, where a rule asks, the agent triaging in the message's
//! thread. The logic is `infragpt_actors::events`; here are its adapters:
//!
//! - [`store`]: sources (secrets sealed), rules (changes audited in their transaction), the
//!   event messages with their claims, the storm windows;
//! - [`webhook`]: `POST /webhooks/alertmanager/{id}` and `/webhooks/pagerduty/{id}`;
//! - [`api`]: `/event-rules` and `/event-sources`;
//! - [`stream`]: the source streams, the GitHub stream's hook, the triage queue;
//! - [`flusher`]: deferred and interrupted updates;
//! - [`EventsModule`]: plugs them into the server.

pub mod api;
pub mod flusher;
pub mod metrics;
pub mod store;
pub mod stream;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use infragpt_actors::conversation::{Agent, ConversationStore, ReplyService, SlackApi};
use infragpt_actors::events::{EventRouter, EventSlack, RouterSettings, SourceKind, TriageHandler};
use infragpt_actors::inbox::InboundEvents;
use infragpt_actors::{Cluster, ClusterError, StreamSpec, kinds, sources};

use self::flusher::{Flusher, StopFlusher};
use self::metrics::EventMetrics;
use self::store::PgEvents;
use self::stream::{EventDispatch, InboxTriage, SourceStreamHandler};
use self::webhook::SourceWebhooks;
use crate::config::EventsConfig;
use crate::crypto::vault::KeyRing;
use crate::db::Pool;
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::server::{AppState, Module};

/// The conversation side a triage turn needs (the composition root's adapters).
#[derive(Clone)]
pub struct TriagePorts {
    pub store: Arc<dyn ConversationStore>,
    pub slack: Arc<dyn SlackApi>,
    pub agent: Arc<dyn Agent>,
    pub replies: Arc<ReplyService>,
}

impl std::fmt::Debug for TriagePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriagePorts").finish_non_exhaustive()
    }
}

/// Everything event routing is made of.
#[derive(Clone)]
pub struct EventsParts {
    pub store: PgEvents,
    pub router: EventRouter,
    /// Routes events (also the GitHub stream's hook).
    pub dispatch: EventDispatch,
    triage: Arc<TriageHandler>,
    flush_interval: Duration,
    cluster: Cluster,
}

impl std::fmt::Debug for EventsParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsParts").finish_non_exhaustive()
    }
}

impl EventsParts {
    /// Builds the parts; `owner` names this process in message claims.
    pub fn build(
        pool: Pool,
        keyring: Arc<KeyRing>,
        cluster: &Cluster,
        config: &EventsConfig,
        owner: String,
        slack: Arc<dyn EventSlack>,
        triage: TriagePorts,
    ) -> Result<Self, prometheus::Error> {
        let store = PgEvents::new(pool, keyring, owner);
        let router = EventRouter::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            slack,
            Arc::new(InboxTriage {
                cluster: cluster.clone(),
            }),
            RouterSettings {
                storm_threshold: i64::from(config.storm_threshold),
                lease: Duration::from_millis(config.claim_lease_ms),
                busy_wait: Duration::from_millis(config.busy_wait_ms),
                digest_interval: Duration::from_millis(config.digest_update_interval_ms),
            },
        )
        .with_standing(Arc::new(cluster.clone()));
        let inbox: Arc<dyn InboundEvents> = cluster.inbox().clone();
        let dispatch = EventDispatch {
            router: router.clone(),
            inbox: inbox.clone(),
            metrics: EventMetrics::register(cluster.metrics())?,
        };
        let triage = TriageHandler::new(triage.store, triage.slack, triage.agent, triage.replies)
            .with_claim_fence(inbox);
        Ok(Self {
            store,
            router,
            dispatch,
            triage: Arc::new(triage),
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            cluster: cluster.clone(),
        })
    }

    /// Registers the Alertmanager, PagerDuty and triage streams.
    pub fn register_streams(&self) -> Result<(), ClusterError> {
        for (kind, source, name) in [
            (
                SourceKind::Alertmanager,
                sources::ALERTMANAGER,
                "alertmanager_sources",
            ),
            (
                SourceKind::Pagerduty,
                sources::PAGERDUTY,
                "pagerduty_sources",
            ),
        ] {
            self.cluster.register_stream(StreamSpec {
                name: name.to_owned(),
                kind: kinds::EVENT_SOURCE_STREAM,
                source,
                handler: Arc::new(SourceStreamHandler {
                    kind,
                    store: self.store.clone(),
                    dispatch: self.dispatch.clone(),
                }),
            })?;
        }
        self.cluster.register_stream(StreamSpec {
            name: "event_triage".to_owned(),
            kind: kinds::EVENT_TRIAGE,
            source: sources::TRIAGE,
            handler: self.triage.clone(),
        })
    }

    /// Adds the webhook and REST routes.
    pub fn configure(&self, cfg: &mut actix_web::web::ServiceConfig) {
        api::configure(cfg, self.store.clone());
        webhook::configure(
            cfg,
            SourceWebhooks {
                store: self.store.clone(),
                cluster: self.cluster.clone(),
            },
        );
    }
}

/// Event routing as a server module: its streams, routes and flusher.
pub struct EventsModule {
    parts: EventsParts,
    flusher: Option<actix::Addr<Flusher>>,
}

impl std::fmt::Debug for EventsModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsModule").finish_non_exhaustive()
    }
}

impl EventsModule {
    /// The module over its parts.
    pub fn new(parts: EventsParts) -> Self {
        Self {
            parts,
            flusher: None,
        }
    }
}

#[async_trait::async_trait]
impl Module for EventsModule {
    fn name(&self) -> &str {
        "events"
    }

    async fn start(
        &mut self,
        _state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        use actix::Actor as _;
        self.parts.register_streams()?;
        let parts = self.parts.clone();
        http.add_routes(Arc::new(move |cfg| parts.configure(cfg)));
        self.flusher = Some(
            Flusher::new(
                self.parts.router.clone(),
                self.parts.store.clone(),
                self.parts.flush_interval,
            )
            .start(),
        );
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.do_send(StopFlusher);
        }
    }
}
