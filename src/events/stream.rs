//! The stream handlers of event routing: one keyed worker per organization source
//! (`alertmanager:{id}`, `pagerduty:{id}`: a source's deliveries in order), the GitHub
//! stream's hook (per repository, like its deliveries), and the queue of triage turns.

use std::sync::Arc;

use async_trait::async_trait;
use infragpt_actors::conversation::{BeforePost, FenceError};
use infragpt_actors::events::normalize::{self, GITHUB_ROUTED_EVENTS};
use infragpt_actors::events::{
    EventRouter, OpsEvent, RouteError, SourceKind, StoreFailure, TriagePayload, TriageQueue,
    TriageRequest,
};
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId, ThreadKey};
use infragpt_actors::inbox::{Claim, EventPayload, InboundEvent, InboundEvents, NewInboundEvent};
use infragpt_actors::{Cluster, EventHandler, HandleOutcome, HandlerError, IngestError, sources};
use uuid::Uuid;

use super::metrics::EventMetrics;
use super::store::PgEvents;
use crate::github::stream::GithubEvents;

/// Checks, right before a post, that the worker still holds the event (several replicas).
pub(crate) struct ClaimFence<'a> {
    pub inbox: &'a dyn InboundEvents,
    pub claim: Claim,
}

#[async_trait]
impl BeforePost for ClaimFence<'_> {
    async fn check(&self) -> Result<(), FenceError> {
        self.inbox
            .confirm(self.claim)
            .await
            .map_err(|e| FenceError(e.to_string()))
    }
}

fn route_error(e: RouteError) -> HandlerError {
    if e.is_transient() {
        HandlerError::retryable(e)
    } else {
        HandlerError::permanent(e)
    }
}

/// Routes events and counts what happened.
#[derive(Clone)]
pub struct EventDispatch {
    pub(crate) router: EventRouter,
    pub(crate) inbox: Arc<dyn InboundEvents>,
    pub(crate) metrics: EventMetrics,
}

impl std::fmt::Debug for EventDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDispatch").finish_non_exhaustive()
    }
}

impl EventDispatch {
    /// Routes `ops` of `organization`, carried by inbox event `event`.
    pub(crate) async fn dispatch(
        &self,
        organization: Uuid,
        ops: &OpsEvent,
        event: &InboundEvent,
    ) -> Result<HandleOutcome, HandlerError> {
        let fence = ClaimFence {
            inbox: self.inbox.as_ref(),
            claim: event.claim(),
        };
        let report = self
            .router
            .route(organization, ops, event.id.0, &fence)
            .await
            .map_err(route_error)?;
        self.metrics.record(ops.source, &report);
        tracing::info!(
            organization_id = %organization,
            event = %ops.event,
            thing = %ops.thing_key,
            matched = report.matched,
            posted = report.posted,
            updated = report.updated,
            digested = report.digested,
            "event routed"
        );
        if report.matched == 0 {
            return Ok(HandleOutcome::Ignored("no rule matches".to_owned()));
        }
        Ok(HandleOutcome::Done)
    }
}

/// The stream of one kind of organization source (Alertmanager or PagerDuty).
#[derive(Clone)]
pub struct SourceStreamHandler {
    pub(crate) kind: SourceKind,
    pub(crate) store: PgEvents,
    pub(crate) dispatch: EventDispatch,
}

impl std::fmt::Debug for SourceStreamHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceStreamHandler")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventHandler for SourceStreamHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let prefix = format!("{}:", self.kind.as_str());
        let source_id = event
            .routing_key
            .0
            .strip_prefix(&prefix)
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| {
                HandlerError::permanent(format!(
                    "routing key {} names no source",
                    event.routing_key
                ))
            })?;
        let Some(organization) = self
            .store
            .source_organization(source_id)
            .await
            .map_err(HandlerError::retryable)?
        else {
            return Ok(HandleOutcome::Ignored("the source was deleted".to_owned()));
        };
        let ops = match self.kind {
            SourceKind::Alertmanager => Some(
                normalize::alertmanager(source_id, &event.payload)
                    .map_err(HandlerError::permanent)?,
            ),
            SourceKind::Pagerduty => {
                normalize::pagerduty(source_id, &event.payload).map_err(HandlerError::permanent)?
            }
            SourceKind::Github => None,
        };
        let Some(ops) = ops else {
            return Ok(HandleOutcome::Ignored(format!(
                "{} is not routed",
                event.kind
            )));
        };
        self.dispatch.dispatch(organization, &ops, event).await
    }
}

#[async_trait]
impl GithubEvents for EventDispatch {
    fn routes(&self, event_name: &str) -> bool {
        GITHUB_ROUTED_EVENTS.contains(&event_name)
    }

    async fn route(
        &self,
        organization: Uuid,
        event_name: &str,
        event: &InboundEvent,
    ) -> Result<(), HandlerError> {
        let Some(ops) = normalize::github(event_name, &event.payload, &event.source_id) else {
            return Ok(());
        };
        self.dispatch(organization, &ops, event).await.map(drop)
    }
}

/// Triage turns go to the inbox, one per message (`event_message:{id}`), on the thread's
/// routing key.
#[derive(Clone, Debug)]
pub struct InboxTriage {
    pub(crate) cluster: Cluster,
}

#[async_trait]
impl TriageQueue for InboxTriage {
    async fn enqueue(
        &self,
        message_id: Uuid,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        request: &TriageRequest,
    ) -> Result<(), StoreFailure> {
        let payload = TriagePayload {
            message_id,
            team_id: team.to_string(),
            channel_id: channel.to_string(),
            ts: ts.to_string(),
            organization_id: request.organization_id,
            description: request.description.clone(),
            event: request.event.clone(),
        };
        let key = ThreadKey::new(team.clone(), channel.clone(), ts.clone());
        let json = serde_json::to_value(&payload).map_err(|e| StoreFailure(Box::new(e)))?;
        match self
            .cluster
            .ingest(NewInboundEvent {
                source: sources::TRIAGE,
                source_id: format!("event_message:{message_id}"),
                routing_key: key.to_routing_key(),
                kind: "triage".to_owned(),
                payload: EventPayload::Json(json),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(IngestError::Store(e)) => Err(StoreFailure(Box::new(e))),
            Err(e) => Err(StoreFailure(Box::new(e))),
        }
    }
}
