//! Configuration: error messages, strict keys, environment substitution, redaction.

use std::path::Path;
use std::process::Command;

use infragpt::config::{self, ConfigError, LogFormat, ReplyMode};

fn load_with(text: &str, env: &[(&str, &str)]) -> Result<config::Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    config::load_str_with_env(text, "config/x.yaml", move |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

fn err(text: &str) -> String {
    load_with(text, &[]).unwrap_err().to_string()
}

#[test]
fn type_error_names_file_key_path_and_reason() {
    let e = err("database:\n  port: x\n");
    assert!(
        e.starts_with(r#"config/x.yaml: database.port: invalid type: string "x", expected u16"#),
        "{e}"
    );
}

#[test]
fn nested_list_paths_are_named() {
    let e = err("cors:\n  allowed_origins:\n    - https://ok.example.com\n    - 7\n");
    assert!(
        e.starts_with("config/x.yaml: cors.allowed_origins[1]: "),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let e = err("prot: 1\n");
    assert!(
        e.starts_with("config/x.yaml: prot: unknown field `prot`"),
        "{e}"
    );
    let e = err("agent:\n  endpont: x:1\n");
    assert!(
        e.starts_with("config/x.yaml: agent.endpont: unknown field `endpont`"),
        "{e}"
    );
    let e = err("actors:\n  idle_timeout: 5\n");
    assert!(
        e.starts_with("config/x.yaml: actors.idle_timeout: unknown field"),
        "{e}"
    );
    let e = err("identity:\n  clerk:\n    secret: x\n");
    assert!(
        e.starts_with("config/x.yaml: identity.clerk.secret: unknown field"),
        "{e}"
    );
}

#[test]
fn semantic_errors_use_the_same_shape() {
    let e = err("slack:\n  connections: 11\n");
    assert!(
        e.starts_with("config/x.yaml: slack.connections: 11 is out of range"),
        "{e}"
    );
    let e = err("slack:\n  connections: 0\n");
    assert!(e.starts_with("config/x.yaml: slack.connections: "), "{e}");
    let e = err("slack:\n  progress_delay_ms: 60001\n");
    assert!(
        e.starts_with("config/x.yaml: slack.progress_delay_ms: must be at most 60000"),
        "{e}"
    );
    let e = err("cors:\n  allowed_origins: ['*']\n  allow_credentials: true\n");
    assert!(
        e.starts_with("config/x.yaml: cors.allowed_origins[0]: `*` cannot be combined"),
        "{e}"
    );
    let e = err("integrations:\n  github:\n    api_url: not a url\n");
    assert!(
        e.starts_with("config/x.yaml: integrations.github.api_url: "),
        "{e}"
    );
    for limit in [1, 10_001] {
        let e = err(&format!("agent:\n  history_limit: {limit}\n"));
        assert!(
            e.starts_with("config/x.yaml: agent.history_limit: must be between 2"),
            "{e}"
        );
    }
    let e = err("agent:\n  history_cache_mib: 4097\n");
    assert!(
        e.starts_with("config/x.yaml: agent.history_cache_mib: must be at most 4096"),
        "{e}"
    );
    let e = err("agent:\n  endpoint: agent\n");
    assert!(
        e.starts_with("config/x.yaml: agent.endpoint: `agent` needs a port"),
        "{e}"
    );
    let e = err("port: 9000\ngrpc_port: 9000\n");
    assert!(
        e.starts_with("config/x.yaml: grpc_port: must differ"),
        "{e}"
    );
    let e = err("vault:\n  keys:\n    k1: c2hvcnQ=\n  active_key: k1\n");
    assert!(
        e.starts_with("config/x.yaml: vault.keys.k1: must be 32 bytes, got 5"),
        "{e}"
    );
    let e = err("slack:\n  socket_mode: true\n");
    assert!(
        e.starts_with("config/x.yaml: slack.app_token: required"),
        "{e}"
    );
    let e = err("log_format: xml\n");
    assert!(
        e.starts_with("config/x.yaml: log_format: unknown variant `xml`"),
        "{e}"
    );
}

#[test]
fn actor_rules_come_from_the_actor_core() {
    let e = err("actors:\n  backoff_base_ms: 10\n  backoff_max_ms: 5\n");
    assert!(
        e.starts_with("config/x.yaml: actors.backoff_base_ms: backoff_base_ms must not exceed"),
        "{e}"
    );
    let e = err("actors:\n  drain_page_size: 0\n");
    assert!(
        e.starts_with("config/x.yaml: actors.drain_page_size: "),
        "{e}"
    );
}

#[test]
fn database_url_errors_never_echo_the_url() {
    let e = err("database:\n  url: mysql://u:hunter2@h/db\n");
    assert!(e.starts_with("config/x.yaml: database.url: "), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn env_substitution_with_defaults() {
    let c = load_with(
        "port: ${PORT:-9001}\ngrpc_port: ${GRPC:-9002}\nlog_format: ${FMT:-pretty}\n",
        &[("GRPC", "9100")],
    )
    .unwrap();
    assert_eq!(c.port, 9001);
    assert_eq!(c.grpc_port, 9100);
    assert_eq!(c.log_format, LogFormat::Pretty);
}

#[test]
fn env_substitution_set_and_missing() {
    let c = load_with(
        "admin:\n  token: ${ADMIN_TOKEN}\n",
        &[("ADMIN_TOKEN", "tok")],
    )
    .unwrap();
    assert_eq!(c.admin.token.as_ref().map(|t| t.expose()), Some("tok"));

    let e = load_with("a: 1\nadmin:\n  token: ${ADMIN_TOKEN}\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config/x.yaml: line 3: environment variable `ADMIN_TOKEN` is not set"),
        "{e}"
    );
}

#[test]
fn empty_default_means_unset() {
    let c = load_with("slack:\n  bot_token: ${SLACK_BOT_TOKEN:-}\n", &[]).unwrap();
    assert!(c.slack.bot_token.is_none());
}

#[test]
fn multiline_pem_from_env_stays_one_value() {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIabc: # not yaml\n-----END PRIVATE KEY-----\n";
    let c = load_with(
        "integrations:\n  github:\n    private_key: ${GH_KEY}\n    app_id: 1\n",
        &[("GH_KEY", pem)],
    )
    .unwrap();
    let key = c.integrations.github.private_key.expect("key");
    assert_eq!(key.expose(), pem);
    assert_eq!(c.integrations.github.app_id, Some(1));
}

#[test]
fn agent_endpoint_is_normalized() {
    let c = load_with(
        "agent:\n  endpoint: '[::]:50051'\n  reply_mode: response\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.agent.endpoint, "http://[::1]:50051");
    assert_eq!(c.agent.reply_mode, ReplyMode::Response);
    assert_eq!(c.agent.call_timeout_ms, 300_000);
}

#[test]
fn secrets_do_not_show_in_debug() {
    let c = load_with(
        "admin:\n  token: adm-s3cret\nslack:\n  bot_token: xoxb-s3cret\ndatabase:\n  url: postgres://u:pw-s3cret@h/db\n",
        &[],
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
}

#[test]
fn missing_file_is_named() {
    let e = config::load(Path::new("config/does-not-exist.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config/does-not-exist.yaml: cannot read the file"),
        "{e}"
    );
}

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn default_yaml_loads_without_secrets() {
    let c = config::load(&repo_file("config/default.yaml")).unwrap();
    assert!(c.database.url.is_none() && c.database.host.is_none());
    assert_eq!(
        c.vault.dev_key_file.as_deref(),
        Some(Path::new(".infragpt/vault.key"))
    );
}

#[test]
fn example_yaml_loads_and_sets_every_section() {
    let path = repo_file("config/example.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Only the vault key has no default; everything else comes from the file.
    let e = config::load_str_with_env(&text, "config/example.yaml", |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("environment variable `VAULT_KEY_2026` is not set"),
        "{e}"
    );
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // base64 of 32 bytes
    let c = config::load_str_with_env(&text, "config/example.yaml", |k| {
        (k == "VAULT_KEY_2026").then(|| key.to_owned())
    })
    .unwrap();
    assert_eq!(c.slack.connections, 2);
    assert_eq!(c.integrations.github.api_url, "https://api.github.com");
    assert_eq!(c.vault.active_key.as_deref(), Some("k2026"));
    assert_eq!(c.actors.mailbox_capacity, 1024);
    assert_eq!(c.actors.clone(), infragpt_actors::ClusterConfig::default());
}

/// Every key of the effective config appears in example.yaml (documented there).
#[test]
fn example_yaml_documents_every_key() {
    let text = std::fs::read_to_string(repo_file("config/example.yaml")).unwrap();
    let value = serde_json::to_value(config::Config::default()).unwrap();
    let mut missing = Vec::new();
    fn walk(v: &serde_json::Value, text: &str, path: &str, missing: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                // Sections must be written; leaf keys with a comment line right above them.
                let is_section =
                    child.is_object() && !child.as_object().is_some_and(|m| m.is_empty());
                let lines: Vec<&str> = text.lines().collect();
                let documented = lines.windows(2).any(|w| {
                    (is_section || w[0].trim_start().starts_with('#'))
                        && w[1].trim_start().starts_with(&format!("{k}:"))
                });
                if !documented {
                    missing.push(p.clone());
                }
                walk(child, text, &p, missing);
            }
        }
    }
    walk(&value, &text, "", &mut missing);
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

#[test]
fn config_check_prints_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "admin:\n  token: ${ADM}\nslack:\n  bot_token: xoxb-visible-s3cret\n  signing_secret: sig-s3cret\ndatabase:\n  url: postgres://u:db-s3cret@localhost/x\nagent:\n  reply_token: rep-s3cret\n",
    )
    .unwrap();
    for format in ["yaml", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_infragpt"))
            .args(["--config"])
            .arg(&path)
            .args(["config", "check", "--format", format])
            .env("ADM", "adm-s3cret")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "{stdout}{stderr}"
        );
        assert!(stdout.contains("[redacted]"), "{stdout}");
        assert!(stdout.contains("grpc_port"), "{stdout}");
    }
}

#[test]
fn config_check_fails_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "slack:\n  connections: 42\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infragpt"))
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: slack.connections: 42 is out of range"),
        "{stderr}"
    );
}

#[test]
fn config_path_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(&path, "port: 7777\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infragpt"))
        .args(["config", "check", "--format", "json", "--grpc-port", "7778"])
        .env("INFRAGPT_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["port"], 7777);
    assert_eq!(v["grpc_port"], 7778);
}

/// The `grpc:` section: defaults, and the values that cannot work are refused by path.
#[test]
fn grpc_connection_limits() {
    let c = load_with("grpc:\n  idle_timeout_ms: 0\n", &[]).unwrap();
    assert_eq!(
        c.grpc.handshake_timeout(),
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(c.grpc.idle_timeout(), None, "0 turns the idle timeout off");
    assert_eq!(c.grpc.max_connections, 1024);
    assert_eq!(
        c.grpc.keepalive_interval(),
        None,
        "HTTP/2 pings are off by default"
    );
    let e = err("grpc:\n  max_connections: 0\n");
    assert!(e.contains("grpc.max_connections"), "{e}");
    let e = err("grpc:\n  keepalive_interval_ms: 1000\n  keepalive_timeout_ms: 0\n");
    assert!(e.contains("grpc.keepalive_timeout_ms"), "{e}");
    let e = err("grpc:\n  handshake_timeout: 5\n");
    assert!(e.contains("grpc"), "unknown keys are errors: {e}");
}

/// The `retention:` section: defaults, 0 keeps events forever, and values that cannot work are
/// refused by path.
#[test]
fn retention_defaults_and_limits() {
    let c = load_with("", &[]).unwrap();
    assert_eq!(c.retention.inbound_events_days, 14);
    assert_eq!(
        c.retention.conversations_days, 0,
        "conversations are kept by default"
    );
    assert_eq!(c.retention.batch_size, 1000);
    assert_eq!(c.retention.interval(), std::time::Duration::from_secs(3600));
    let c = load_with("retention:\n  inbound_events_days: 0\n", &[]).unwrap();
    assert_eq!(c.retention.inbound_events_days, 0, "0 keeps events forever");
    let e = err("retention:\n  batch_size: 0\n");
    assert!(
        e.starts_with("config/x.yaml: retention.batch_size: must be between 1"),
        "{e}"
    );
    let e = err("retention:\n  interval_secs: 0\n");
    assert!(
        e.starts_with("config/x.yaml: retention.interval_secs: "),
        "{e}"
    );
    let e = err("retention:\n  inbound_events_days: 40000\n");
    assert!(
        e.starts_with("config/x.yaml: retention.inbound_events_days: "),
        "{e}"
    );
    let c = load_with("retention:\n  conversations_days: 90\n", &[]).unwrap();
    assert_eq!(c.retention.conversations_days, 90);
    let e = err("retention:\n  conversations_days: 40000\n");
    assert!(
        e.starts_with("config/x.yaml: retention.conversations_days: "),
        "{e}"
    );
    let e = err("retention:\n  days: 3\n");
    assert!(e.contains("retention"), "unknown keys are errors: {e}");
}

#[test]
fn alert_sources_need_a_bot_or_app_id() {
    let c = config::load_str(
        "slack:\n  alert_sources:\n    - bot_id: B0DATADOG\n    - app_id: A0HOOKS\n      name: Alertmanager\n",
        "config/x.yaml",
    )
    .expect("valid alert sources");
    assert_eq!(c.slack.alert_sources.len(), 2);
    assert_eq!(
        c.slack.alert_sources[1].name.as_deref(),
        Some("Alertmanager")
    );
    let e = err("slack:\n  alert_sources:\n    - name: Grafana\n");
    assert!(
        e.starts_with("config/x.yaml: slack.alert_sources[0]: needs a bot_id"),
        "{e}"
    );
    let e = err("slack:\n  alert_sources:\n    - bot_id: U0NOTABOT\n");
    assert!(
        e.starts_with("config/x.yaml: slack.alert_sources[0].bot_id: "),
        "{e}"
    );
    let e = err("slack:\n  alert_sources:\n    - bot: B1\n");
    assert!(e.contains("unknown field"), "{e}");
}

/// tracing-subscriber panics on some non-ASCII filters (the `config` fuzz target's crash):
/// such a `log_level` or `telemetry.otlp_filter` is a clear error naming the key.
#[test]
fn non_ascii_log_filters_are_errors_not_panics() {
    for (text, key) in [
        ("log_level: \"S¬TTS¬T=S¬TTS¬T=\"\n", "log_level"),
        ("log_level: \"info,é=debug\"\n", "log_level"),
        (
            "telemetry:\n  otlp_filter: \"S¬TTS¬T=\"\n",
            "telemetry.otlp_filter",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(key) && e.contains("ASCII"), "{text}: {e}");
    }
    assert!(load_with("log_level: \"info,infragpt=debug\"\n", &[]).is_ok());
}

/// Span and field filters compile their values as regular expressions; a pathological one
/// took the `config` fuzz target over 10 s. Configuration keys take plain directives only.
#[test]
fn log_filters_in_the_config_are_plain_directives() {
    let e = err("log_level: \"d[0s8v{<<=<<<<<<<<<<<<<}\"\n");
    assert!(e.contains("log_level") && e.contains("RUST_LOG"), "{e}");
    let started = std::time::Instant::now();
    let slow = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/regressions/config/regex-field-filter-timeout"),
    )
    .unwrap();
    assert!(load_with(&String::from_utf8_lossy(&slow), &[]).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    for ok in [
        "info",
        "warn,infragpt=debug",
        "infragpt::slack=trace,actix_server=off",
    ] {
        assert!(
            load_with(&format!("log_level: \"{ok}\"\n"), &[]).is_ok(),
            "{ok}"
        );
    }
}
