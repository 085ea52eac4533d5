//! Events that reach people (issue 15): GitHub, Alertmanager and PagerDuty deliveries through
//! the routing rules into the Slack simulator, with the development agent triaging
//! ([`e2e`]); the rules and sources API ([`api`]).

mod api;
mod demo;
mod e2e;
mod replicas;
