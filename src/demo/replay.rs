//! `/replay workflow-failure` and `/replay alert`: the demo seeds an organization ("Demo
//! Org") with a linked GitHub installation, an Alertmanager source and two routing rules into
//! `#ops` with triage on, then replays a sample failing workflow run (signed as GitHub signs)
//! and a firing alert (with the source's bearer token) through the service's real webhook
//! routes. The service posts the event in `#ops` and the agent triages it in the thread.

use std::sync::Arc;

use anyhow::Context as _;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use infragpt_actors::Secret;
use infragpt_actors::events::{RuleSource, RuleSpec, SlackTarget, SourceKind};
use serde_json::Value;
use uuid::Uuid;

use super::{OPS_CHANNEL, TEAM_ID};
use crate::config::Config;
use crate::db::Pool;
use crate::db::committed::CommittedExt as _;
use crate::events::store::{PgEvents, SourceAuth};

/// The demo's GitHub App installation.
const INSTALLATION: i64 = 9_000_001;
/// The demo organization's Clerk id.
const ORG_CLERK_ID: &str = "org_infragpt_demo";
/// Audit actor of the demo's seeding.
const ACTOR: &str = "demo";
/// The webhook secret the demo configures when none is.
pub(crate) const GITHUB_SECRET: &str = "infragpt-demo-github-webhook-secret";

const WORKFLOW_FAILURE: &str = include_str!("samples/workflow_run_failure.json");
const ALERT_FIRING: &str = include_str!("samples/alert_firing.json");

/// What can be replayed.
pub(crate) const WHAT: &str = "workflow-failure, alert";

/// The seeded sources and how to reach the service.
pub(crate) struct Replay {
    http: reqwest::Client,
    base: String,
    github_secret: Secret,
    alert_source: Uuid,
    alert_token: Secret,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Seeds the demo organization, its GitHub installation, an Alertmanager source and the
/// rules (replacing those of an earlier run: a source's secret is only known when created).
pub(crate) async fn seed(config: &Config, pool: Pool, base: String) -> anyhow::Result<Replay> {
    let mut conn = pool
        .get()
        .await
        .context("connecting to the demo database")?;
    let org: IdRow = diesel::sql_query(
        "INSERT INTO organizations (clerk_id, name) VALUES ($1, 'Demo Org') \
         ON CONFLICT (clerk_id) DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind::<diesel::sql_types::Text, _>(ORG_CLERK_ID)
    .get_committed(&mut conn)
    .await
    .context("seeding the demo organization")?;
    diesel::sql_query(
        "INSERT INTO integrations (organization_id, connector_type, status, external_id) \
         VALUES ($1, 'github', 'active', $2) ON CONFLICT (organization_id, connector_type) \
         DO UPDATE SET status = 'active', external_id = excluded.external_id",
    )
    .bind::<diesel::sql_types::Uuid, _>(org.id)
    .bind::<diesel::sql_types::Text, _>(INSTALLATION.to_string())
    .execute(&mut conn)
    .await
    .context("linking the demo GitHub installation")?;
    drop(conn);
    let keyring =
        crate::app::integrations::load_keyring(&config.vault).context("loading the vault keys")?;
    let store = PgEvents::new(pool, Arc::new(keyring), "demo");
    for rule in store.list_rules(org.id).await? {
        store.delete_rule(org.id, rule.rule.id, ACTOR).await?;
    }
    for source in store.list_sources(org.id).await? {
        store.delete_source(org.id, source.id, ACTOR).await?;
    }
    let alert_token = Secret::new(format!("igs_demo_{}", Uuid::new_v4().simple()));
    let source = store
        .create_source(
            org.id,
            SourceKind::Alertmanager,
            "demo prometheus",
            SourceAuth::Bearer,
            &alert_token,
            ACTOR,
        )
        .await?;
    let ops = SlackTarget {
        team_id: TEAM_ID.to_owned(),
        channel_id: OPS_CHANNEL.to_owned(),
    };
    for (name, kind, source_id, events) in [
        (
            "CI failures",
            "github",
            None,
            vec!["workflow_run.completed/failure".to_owned()],
        ),
        (
            "Critical alerts",
            "alertmanager",
            Some(source.id),
            vec!["alert.firing".to_owned()],
        ),
    ] {
        let spec = RuleSpec {
            name: name.to_owned(),
            enabled: true,
            source: RuleSource {
                kind: kind.to_owned(),
                source_id,
            },
            events,
            slack: ops.clone(),
            triage: true,
            ..RuleSpec::default()
        };
        spec.validate()
            .map_err(|e| anyhow::anyhow!("demo rule {name}: {e}"))?;
        store
            .create_rule(org.id, spec, ACTOR)
            .await
            .map_err(|e| anyhow::anyhow!("demo rule {name}: {e}"))?;
    }
    let github_secret = config
        .integrations
        .github
        .webhook_secret
        .clone()
        .unwrap_or_else(|| Secret::new(GITHUB_SECRET));
    Ok(Replay {
        http: reqwest::Client::new(),
        base,
        github_secret,
        alert_source: source.id,
        alert_token,
    })
}

fn fresh_id() -> i64 {
    // A run id no earlier replay used (microseconds since the epoch fit GitHub's ids).
    chrono::Utc::now().timestamp_micros()
}

impl Replay {
    /// Replays `what` through the service's webhook route; returns what was sent.
    pub(crate) async fn replay(&self, what: &str) -> anyhow::Result<String> {
        let (path, body, headers, said) = match what {
            "workflow-failure" | "workflow" | "ci" => {
                let mut v: Value = serde_json::from_str(WORKFLOW_FAILURE)?;
                let run = fresh_id();
                v["workflow_run"]["id"] = run.into();
                v["workflow_run"]["html_url"] =
                    format!("https://github.com/octo-org/octo-repo/actions/runs/{run}").into();
                let body = serde_json::to_vec(&v)?;
                let signature = crate::github::signature::sign(&self.github_secret, &body);
                (
                    "/webhooks/github".to_owned(),
                    body,
                    vec![
                        ("X-GitHub-Event", "workflow_run".to_owned()),
                        ("X-GitHub-Delivery", Uuid::new_v4().to_string()),
                        ("X-Hub-Signature-256", signature),
                    ],
                    format!("GitHub: workflow run {run} of octo-org/octo-repo failed"),
                )
            }
            "alert" | "alert-firing" => {
                let mut v: Value = serde_json::from_str(ALERT_FIRING)?;
                let group = fresh_id();
                v["groupKey"] =
                    format!("{{}}/{{severity=\"critical\"}}:{{replay=\"{group}\"}}").into();
                let body = serde_json::to_vec(&v)?;
                (
                    format!("/webhooks/alertmanager/{}", self.alert_source),
                    body,
                    vec![(
                        "Authorization",
                        format!("Bearer {}", self.alert_token.expose()),
                    )],
                    "Alertmanager: ApiHighErrorRate is firing".to_owned(),
                )
            }
            other => anyhow::bail!("nothing to replay called {other:?}; try {WHAT}"),
        };
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.context("calling the service's webhook")?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("the service answered {status}: {text}");
        }
        Ok(said)
    }
}

/// The lines a Block Kit message shows (its sections' and context texts), for the terminal.
pub(crate) fn block_lines(blocks: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for block in blocks.as_array().into_iter().flatten() {
        if let Some(text) = block["text"]["text"].as_str() {
            out.extend(text.lines().map(str::to_owned));
        }
        for field in block["fields"].as_array().into_iter().flatten() {
            if let Some(text) = field["text"].as_str() {
                out.push(text.replace('\n', ": "));
            }
        }
        for element in block["elements"].as_array().into_iter().flatten() {
            if let Some(text) = element["text"].as_str() {
                out.push(text.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_the_events_the_rules_ask_for() {
        let v: Value = serde_json::from_str(WORKFLOW_FAILURE).unwrap();
        let e = infragpt_actors::events::normalize::github("workflow_run", &v, "d").unwrap();
        assert_eq!(e.event, "workflow_run.completed");
        assert_eq!(e.conclusion.as_deref(), Some("failure"));
        assert_eq!(v["installation"]["id"], INSTALLATION);
        let a: Value = serde_json::from_str(ALERT_FIRING).unwrap();
        let e = infragpt_actors::events::normalize::alertmanager(Uuid::nil(), &a).unwrap();
        assert_eq!(e.event, "alert.firing");
    }

    #[test]
    fn block_lines_read_sections_fields_and_context() {
        let blocks = serde_json::json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": "title"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "*A*\nb"}]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "links"}]}
        ]);
        assert_eq!(block_lines(&blocks), ["title", "*A*: b", "links"]);
    }
}
