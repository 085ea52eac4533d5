//! The composition root: builds every adapter, hands them to the actors, and plugs the
//! pieces into the server as [`Module`]s. `infragpt serve` and `infragpt demo` both start
//! the service through [`start`].

pub mod housekeeping;
pub mod integrations;
pub mod openapi;

use std::sync::Arc;

use anyhow::Context as _;
use infragpt_actors::approvals::{ApprovalPorts, ApprovalService};
use infragpt_actors::conversation::{
    Agent, AnswerStyle, ConversationHandler, Progress, RepliesHere, ReplyService,
};
use infragpt_actors::partitions::{ReplicaId, host_name};
use infragpt_actors::{Cluster, HealthRegistry, Metrics, StreamSpec};
use infragpt_actors::{kinds, sources};

use self::housekeeping::{Housekeeping, StopHousekeeping};
use self::integrations::{IntegrationParts, IntegrationsModule, load_keyring, state_key};
use crate::agent_client::{GrpcAgent, GrpcAgentOptions};
use crate::approvals::ApprovalsModule;
use crate::approvals::store::PgApprovalStore;
use crate::config::Config;
use crate::conversations::ConversationsModule;
use crate::db::Database;
use crate::db::audit::PgAudit;
use crate::db::cluster::PgMembership;
use crate::db::conversations::PgConversationStore;
use crate::db::inbox::PgInbox;
use crate::db::progress::PgProgressStore;
use crate::events::{EventsModule, EventsParts, TriagePorts};
use crate::grpc::server::GrpcShell;
use crate::http::{HttpShell, ReadinessCheck};
use crate::identity::wiring::IdentityModule;
use crate::ops::{self, OpsState, ReadAccess};
use crate::reply::{ReplyAuth, ReplyModule};
use crate::server::{self, AppState, Module, RunningServer, ShutdownSignals};
use crate::slack::integration::VaultSlackTokens;
use crate::slack::transport::SlackModule;

/// The actor system and what every module shares with it.
#[derive(Clone, Debug)]
pub struct Core {
    /// The actor system (routers, workers, supervisors).
    pub cluster: Cluster,
    pub audit: Arc<PgAudit>,
}

impl Core {
    /// Starts the actor system over the database as one replica among any others on it.
    /// Must run inside an actix System.
    pub fn start(config: &Config, db: &Database) -> anyhow::Result<Self> {
        let metrics = Metrics::new().context("registering metrics")?;
        let host = host_name();
        let replica = ReplicaId::generate(&host);
        let margin = std::time::Duration::from_millis(config.cluster.safety_margin_ms);
        let mut inbox = PgInbox::fenced(db.pool().clone(), &replica, margin);
        if config.actors.inbox_group_commit {
            // The record and done-mark writers keep one batch in flight each; a third
            // connection covers a reconnect.
            let writer_pool = crate::db::build_writer_pool(db.url(), 3, db.connect_timeout())
                .context("the inbox writer's connections")?;
            inbox = inbox.with_record_pool(writer_pool);
        }
        let inbox = Arc::new(inbox);
        let membership = Arc::new(PgMembership::new(
            db.pool().clone(),
            db.url().clone(),
            db.connect_timeout(),
            replica.clone(),
            host,
        ));
        tracing::info!(replica = %replica, "this process is replica {replica}");
        let cluster = Cluster::start_replicated(
            config.actors.clone(),
            config.cluster.clone(),
            inbox,
            HealthRegistry::new(),
            metrics,
            membership,
        )
        .context("starting the actor system")?;
        Ok(Self {
            cluster,
            audit: Arc::new(PgAudit::new(db.pool().clone())),
        })
    }
}

/// `actors` in `/readyz`: not ready once the actor system shuts down. A backlog past the
/// routers' high-water mark shows as `degraded` but keeps the service ready: events are still
/// recorded durably and drain in the background, and a replica that stops taking traffic in a
/// burst only moves the burst elsewhere (or turns it into an outage when there is nowhere
/// else). Likewise a restart with a large backlog is ready as soon as it can record.
struct ActorsCheck(Cluster);

#[async_trait::async_trait]
impl ReadinessCheck for ActorsCheck {
    fn name(&self) -> &str {
        "actors"
    }

    async fn check(&self) -> Result<(), String> {
        if !self.0.is_accepting() {
            Err("the actor system is shutting down".to_owned())
        } else if !self.0.is_in_contact() {
            Err("no partition lease renewed within the lease: this replica gave up its partitions until the database answers".to_owned())
        } else if self.0.is_overloaded() {
            Err(
                "backlog past the high-water mark: events are recorded and drain in the background"
                    .to_owned(),
            )
        } else {
            Ok(())
        }
    }

    fn advisory(&self) -> bool {
        // Shutting down is covered by the readiness shell itself (`shutdown`); a replica
        // that lost its leases must leave the load balancer's rotation.
        self.0.is_accepting() && self.0.is_in_contact()
    }
}

/// The actor system's module: ops routes, the actors readiness check, the housekeeping actor
/// (inbox and conversation retention), the hand-over of partitions on a graceful stop, and an
/// orderly actor shutdown after the listeners have drained.
#[derive(Debug)]
pub struct CoreModule {
    core: Core,
    housekeeping: Option<actix::Addr<Housekeeping>>,
}

impl CoreModule {
    /// Wraps the core.
    pub fn new(core: Core) -> Self {
        Self {
            core,
            housekeeping: None,
        }
    }
}

#[async_trait::async_trait]
impl Module for CoreModule {
    fn name(&self) -> &str {
        "actors"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let admin_token = state.config.admin.token.clone();
        if admin_token.is_none() {
            tracing::warn!("admin.token is not set: the admin API (/admin/events) is disabled");
        }
        let ops_state = OpsState {
            cluster: self.core.cluster.clone(),
            read_access: ReadAccess::AdminToken,
            admin_token,
            audit: self.core.audit.clone(),
        };
        http.add_ops_routes(Arc::new(ops::routes(OpsState {
            read_access: ReadAccess::Open,
            ..ops_state.clone()
        })));
        http.add_routes(Arc::new(ops::routes(ops_state)));
        http.add_routes(Arc::new(openapi::routes));
        state.readiness.add(ActorsCheck(self.core.cluster.clone()));
        for collector in http.webhooks.collectors() {
            self.core
                .cluster
                .metrics()
                .registry()
                .register(collector)
                .context("registering the webhook intake metrics")?;
        }
        let report = self
            .core
            .cluster
            .recover()
            .await
            .context("recovering unfinished events")?;
        tracing::info!(unfinished = report.unfinished, "inbox recovered");
        let cluster = &self.core.cluster;
        self.housekeeping = Some(
            Housekeeping::start(
                state.db.pool().clone(),
                &state.config.retention,
                cluster.health(),
                cluster.metrics(),
            )
            .context("registering the retention metrics")?,
        );
        Ok(())
    }

    async fn drain(&mut self) {
        self.core.cluster.drain().await;
    }

    async fn stop(&mut self) {
        if let Some(housekeeping) = self.housekeeping.take() {
            // Its connection (and retention lock) go with it; the pool closes after this.
            housekeeping.do_send(StopHousekeeping);
        }
        self.core.cluster.shutdown().await;
    }
}

/// Opens the database, builds every module and starts the listeners.
pub async fn start(config: Config) -> anyhow::Result<(RunningServer, Core)> {
    let db = server::open_database(&config).await?;
    let core = match Core::start(&config, &db) {
        Ok(core) => core,
        Err(e) => {
            db.shutdown().await;
            return Err(e);
        }
    };
    let modules = match build_modules(&config, &db, &core) {
        Ok(modules) => modules,
        Err(e) => {
            // Stop the actors while the runtime still runs them.
            core.cluster.shutdown().await;
            db.shutdown().await;
            return Err(e);
        }
    };
    let running = server::start_prepared(config, modules, db).await?;
    Ok((running, core))
}

/// Builds the adapters, registers the event streams on the cluster and returns the modules
/// in start order.
fn build_modules(
    config: &Config,
    db: &Database,
    core: &Core,
) -> anyhow::Result<Vec<Box<dyn Module>>> {
    let pool = db.pool().clone();
    let cluster = &core.cluster;

    // Integrations first: the vault holds the bot tokens of installed Slack workspaces.
    let keyring = Arc::new(load_keyring(&config.vault).context("loading the vault keys")?);
    let mut integrations = IntegrationParts::build(
        pool.clone(),
        config,
        cluster,
        keyring.clone(),
        &state_key(&config.vault).context("deriving the OAuth state key")?,
        None,
    )
    .context("building the integrations")?;
    let vault_tokens = Arc::new(VaultSlackTokens::new(
        integrations.service.store.clone(),
        integrations.service.vaults.clone(),
    ));

    // Conversations: Slack events → thread actors → agent → reply in the thread.
    // The parts SendReplies post at the same moment are recorded together, on connections
    // whose kept plans cannot scan (one batch in flight, a second for a reconnect).
    let parts_pool = crate::db::build_writer_pool(db.url(), 2, db.connect_timeout())
        .context("the posted parts writer's connections")?;
    let mut store = PgConversationStore::new(pool.clone())
        .with_history_limit(config.agent.history_limit)
        .with_history_cache(config.agent.history_cache_mib as usize * 1024 * 1024)
        .with_grouped_parts(
            parts_pool,
            cluster.health().register_supervisor("reply_parts"),
        );
    if let Some(status) = cluster.replica_status() {
        // Reply claims carry the replica's name, as leases do; a turn starts only under the
        // replica's lease, as claims and marks do.
        let margin = std::time::Duration::from_millis(config.cluster.safety_margin_ms);
        let lease = std::time::Duration::from_millis(config.cluster.lease_ms);
        store = store
            .with_lease_fence(&status.replica, margin, lease)
            .with_owner(status.replica.0);
    }
    let owner = store.owner().to_owned();
    cluster
        .metrics()
        .registry()
        .register(Box::new(store.history_counter()))
        .context("registering the turn history metric")?;
    let store = Arc::new(store);
    let slack_web = SlackModule::build_web(&config.slack, Some(pool.clone()), Some(vault_tokens))
        .context("building the Slack Web API client")?;
    let agent = GrpcAgent::new(
        GrpcAgentOptions::from_config(&config.agent),
        cluster.health(),
        cluster.metrics(),
    )
    .context("building the agent client")?;
    let answer_style = AnswerStyle {
        format: config.agent.answer_format,
        file_threshold: config.slack.answer_file_threshold,
    };
    let agent: Arc<dyn Agent> = Arc::new(agent);
    // One per process: the worker opens each turn's indicator, the agent's SendProgress
    // changes it, and answers (worker or SendReply) end it.
    let progress = Arc::new(
        Progress::new(
            config.slack.progress,
            Arc::new(PgProgressStore::new(pool.clone())),
            store.clone(),
            slack_web.clone(),
        )
        .with_delay(std::time::Duration::from_millis(
            config.slack.progress_delay_ms,
        )),
    );
    let approval_ports = ApprovalPorts {
        store: Arc::new(PgApprovalStore::new(pool.clone())),
        slack: slack_web.clone(),
    };
    let approvals = Arc::new(ApprovalService::new(
        approval_ports.clone(),
        store.clone(),
        slack_web.clone(),
    ));
    // What this process's SendReplies posted, read by the turns' workers here.
    let replies_here = Arc::new(RepliesHere::new());
    let handler = ConversationHandler::new(
        store.clone(),
        slack_web.clone(),
        agent.clone(),
        config.agent.reply_mode,
    )
    .with_claim_fence(cluster.inbox().clone())
    .with_standing(Arc::new(cluster.clone()))
    .with_metrics(cluster.metrics().clone())
    .with_failure_notice(config.agent.failure_notice.clone())
    .with_history_sender(config.agent.history_sender)
    .with_answer_style(answer_style)
    .with_agent_retries(config.actors.retry_budget)
    .with_alert_sources(config.slack.alert_sources.clone())
    .with_progress(progress.clone())
    .with_seen_delay(std::time::Duration::from_millis(
        config.slack.progress_delay_ms,
    ))
    .with_replies_here(replies_here.clone())
    .with_approvals(approval_ports);
    // The slash command and the assistant pane share the stream (slash::SlackStreamHandler).
    let handler = Arc::new(handler);
    let slash = infragpt_actors::slash::SlashHandler::new(
        infragpt_actors::slash::SlashPorts {
            store: Arc::new(crate::db::slash::PgSlashStore::new(pool.clone())),
            slack: Arc::new(
                crate::slack::commands::SlashWeb::new(slack_web.clone(), &config.slack.api_url)
                    .context("building the response_url client")?,
            ),
            web: slack_web.clone(),
            conversation_store: store.clone(),
            ingest: Arc::new(cluster.clone()),
        },
        handler.clone(),
    )
    .with_claim_fence(cluster.inbox().clone())
    .with_health(cluster.health().clone())
    .with_prompts(config.slack.suggested_prompts.clone());
    cluster
        .register_stream(StreamSpec {
            name: "conversations".to_owned(),
            kind: kinds::CONVERSATION_THREAD,
            source: sources::SLACK,
            handler: Arc::new(infragpt_actors::slash::SlackStreamHandler::new(
                handler,
                Arc::new(slash),
            )),
        })
        .context("registering the conversation stream")?;
    let replies = Arc::new(
        ReplyService::new(store.clone(), slack_web.clone())
            .with_answer_style(answer_style)
            .with_standing(Arc::new(cluster.clone()))
            .with_metrics(cluster.metrics().clone())
            .with_progress(progress)
            .with_replies_here(replies_here),
    );

    // Events: GitHub, Alertmanager and PagerDuty through the organizations' rules into Slack.
    let events = EventsParts::build(
        pool.clone(),
        keyring.clone(),
        cluster,
        &config.events,
        owner,
        slack_web.clone(),
        TriagePorts {
            store,
            slack: slack_web.clone(),
            agent,
            replies: replies.clone(),
        },
    )
    .context("registering the event routing metrics")?;
    integrations.stream = integrations
        .stream
        .clone()
        .with_events(Arc::new(events.dispatch.clone()));

    Ok(vec![
        Box::new(CoreModule::new(core.clone())),
        // Identity before the REST modules: it adds the JWT authenticator as app data.
        Box::new(IdentityModule::new(
            config.identity.clone(),
            cluster.clone(),
        )),
        Box::new(ConversationsModule::new()),
        Box::new(SlackModule::new(
            config.slack.clone(),
            cluster.clone(),
            slack_web,
        )),
        Box::new(
            ReplyModule::new(
                replies,
                ReplyAuth::from_config(config).context("agent.reply_allowed_networks")?,
            )
            .with_approvals(approvals.clone()),
        ),
        Box::new(ApprovalsModule::new(
            approvals,
            cluster.metrics().clone(),
            std::time::Duration::from_millis(config.approvals.expiry_interval_ms),
        )),
        Box::new(
            IntegrationsModule::new(Arc::new(config.clone()), cluster.clone(), keyring)
                .with_parts(integrations),
        ),
        Box::new(EventsModule::new(events)),
    ])
}

/// `infragpt serve`: starts everything, waits for SIGINT/SIGTERM, stops gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed before starting, so a signal during start-up is not lost.
    let mut signals = ShutdownSignals::install()?;
    let (running, _core) = start(config).await?;
    server::run_until_signal(running, &mut signals).await
}
