//! `deploy/observability/`: the alert rules pass `promtool check rules`, and every metric
//! the rules and the Grafana dashboard query is one a running service exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use infragpt::testkit::slack_sim::SimConfig;
use serde_json::Value;

use crate::e2e::conversations::{ALICE, Chat, service};

const RULES: &str = "deploy/observability/alerts.yaml";
const DASHBOARD: &str = "deploy/observability/grafana-dashboard.json";
/// Series Prometheus itself makes, not the service.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metric names a PromQL expression selects: identifiers followed by `{`, `[` or an
/// operator, leaving out functions (followed by `(`), label names inside `{}` and `by (…)`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    // Inside `{}` (matchers) and `[]` (ranges) nothing is a metric name.
    let (mut i, mut depth_braces, mut in_string) = (0, 0, false);
    let mut after_grouping = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_string = !in_string;
        } else if !in_string && (c == '{' || c == '[') {
            depth_braces += 1;
        } else if !in_string && (c == '}' || c == ']') {
            depth_braces -= 1;
        } else if !in_string && depth_braces == 0 && c.is_ascii_digit() {
            // A number (0.95, 1e-9): none of it is a name.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
            continue;
        } else if !in_string && depth_braces == 0 && (c.is_ascii_alphabetic() || c == '_') {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes[i..].iter().find(|c| !c.is_whitespace()).copied();
            let keyword = matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" | "and" | "or" | "unless" | "bool" | "offset"
                    // Aggregations may be followed by `by (…)` rather than `(`.
                    | "sum" | "min" | "max" | "avg" | "count" | "group" | "stddev" | "stdvar" | "topk" | "bottomk" | "quantile" | "count_values"
            );
            if keyword {
                after_grouping = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                continue;
            }
            if after_grouping && next == Some(')') || next == Some('(') {
                // a function, or the last label of a grouping list
            } else if !after_grouping && !word.starts_with('$') {
                out.insert(word);
            }
            if next == Some(')') {
                after_grouping = false;
            }
            continue;
        } else if !in_string && c == ')' {
            after_grouping = false;
        }
        i += 1;
    }
    out
}

fn rule_exprs() -> Vec<String> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(RULES)).expect("rules parse");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| r["expr"].as_str().expect("expr").to_owned())
        .collect()
}

fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard parses");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        out.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().expect("expr").to_owned()),
        );
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

#[test]
fn the_expression_reader_finds_metric_names() {
    let names = metric_names(
        r#"sum by (kind, le) (rate(infragpt_a_bucket{kind="x", instance=~"$instance"}[5m])) / clamp_min(sum(infragpt_b), 1e-9) > 0.5 or on() up{job="j"} == 0"#,
    );
    assert_eq!(
        names,
        ["infragpt_a_bucket", "infragpt_b", "up"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        metric_names("label_values(infragpt_c, instance)"),
        ["infragpt_c", "instance"].map(String::from).into()
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(RULES))
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool ({e}): install it with `apt-get install prometheus` (.ci/run does)")
        });
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = rule_exprs();
    for alert in [
        "AgentFailing",
        "DeadLettersGrowing",
        "InboxBacklog",
        "SlackDisconnected",
        "ReplicaDown",
    ] {
        assert!(
            read(RULES).contains(&format!("alert: InfraGPT{alert}")),
            "no {alert} alert"
        );
    }
    assert!(rules.len() >= 5);
}

#[actix_rt::test]
async fn every_queried_metric_is_exported() {
    let app = service(SimConfig::default())
        .with_dev_agent()
        .configure(|c| c.retention.first_run_delay_secs = 0)
        .start()
        .await;
    // One answered turn, so the per-outcome agent series exist.
    let ts = app.mention(ALICE, "status?");
    app.wait_replies(&ts, 1).await;
    app.settle().await;
    let text = app.metrics_text().await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().expect("name"))
        .collect();
    let mut used = BTreeSet::new();
    for expr in rule_exprs().iter().chain(dashboard_exprs().iter()) {
        used.extend(metric_names(expr));
    }
    // label_values(metric, label): the second argument is a label.
    used.remove("instance");
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()) && !PROMETHEUS_OWN.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The turn's stages were timed, its acknowledgement among them (recorded over Socket
    // Mode, so its ingest-to-ack time is the `ack` stage).
    for stage in ["inbox_write", "ack", "begin_turn", "agent_call", "mark"] {
        let count = app
            .metric("infragpt_stage_seconds_count", Some(("stage", stage)))
            .await;
        assert!(count >= 1.0, "stage {stage}: {count}\n{text}");
    }
    // The Slack alert's series exists (the connection is up).
    assert!(
        text.contains(r#"infragpt_actors{kind="slack_connection",state="running"} 1"#),
        "{text}"
    );
    app.stop().await;
}
