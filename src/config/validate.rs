//! Checks that need more than types: ranges, URLs, combinations.

use base64::Engine as _;

use super::{
    AgentConfig, Config, CorsConfig, DatabaseConfig, EventsConfig, GrpcConfig, GrpcTlsConfig,
    RetentionConfig, SlackConfig, VaultConfig, WebhooksConfig,
};

type Failure = (String, String);

fn fail(path: &str, reason: impl Into<String>) -> Result<(), Failure> {
    Err((path.to_owned(), reason.into()))
}

/// Validates `config`, normalising the agent endpoint to a URI. Sections are checked in file
/// order; the first failure is reported.
pub(super) fn validate(config: &mut Config) -> Result<(), Failure> {
    check_listeners(config)?;
    check_cors(&config.cors)?;
    check_slack(&config.slack)?;
    check_database(&config.database)?;
    check_agent(&mut config.agent)?;
    check_grpc_tls(&config.grpc_tls)?;
    check_reply_exposure(config)?;
    check_grpc(&config.grpc)?;
    check_identity(config)?;
    check_integrations(config)?;
    check_vault(&config.vault)?;
    // The actor core owns the rules of these sections.
    check_core_section("actors", config.actors.validate())?;
    check_core_section("cluster", config.cluster.validate())?;
    check_webhooks(&config.webhooks)?;
    check_retention(&config.retention)?;
    check_events(&config.events)
}

/// `events.*`: a zero threshold would digest everything, zero intervals would spin.
fn check_events(events: &EventsConfig) -> Result<(), Failure> {
    if events.storm_threshold == 0 || events.storm_threshold > 10_000 {
        fail("events.storm_threshold", "must be between 1 and 10000")?;
    }
    if events.flush_interval_ms < 50 || events.flush_interval_ms > 3_600_000 {
        fail("events.flush_interval_ms", "must be between 50 and 3600000")?;
    }
    if events.digest_update_interval_ms > 3_600_000 {
        fail(
            "events.digest_update_interval_ms",
            "must be at most 3600000",
        )?;
    }
    if events.claim_lease_ms < 1000 {
        fail("events.claim_lease_ms", "must be at least 1000")?;
    }
    if events.busy_wait_ms == 0 || events.busy_wait_ms > events.claim_lease_ms {
        fail(
            "events.busy_wait_ms",
            "must be greater than 0 and at most events.claim_lease_ms",
        )?;
    }
    Ok(())
}

/// The networks from which SendReply (and the agent's other calls) would be accepted without
/// any credential: `agent.reply_allowed_networks` beyond loopback, when neither
/// `agent.reply_token` nor client certificates are configured.
pub fn unauthenticated_reply_networks(config: &Config) -> Vec<ipnet::IpNet> {
    let agent = &config.agent;
    if agent.reply_token.is_some() || config.grpc_tls.client_certificates_required() {
        return Vec::new();
    }
    // A bad entry is reported by `check_agent`.
    super::Networks::parse(&agent.reply_allowed_networks)
        .map(|n| n.beyond_loopback())
        .unwrap_or_default()
}

/// Fail closed: these calls post into customers' threads, so opening them to networks beyond
/// this host without a credential needs an explicit yes (the reply module warns about it on
/// every start).
fn check_reply_exposure(config: &Config) -> Result<(), Failure> {
    let open = unauthenticated_reply_networks(config);
    if open.is_empty() || config.agent.allow_unauthenticated_replies {
        return Ok(());
    }
    let listed = open
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    fail(
        "agent.reply_allowed_networks",
        format!(
            "lets callers from {listed} post into Slack threads without a token: set \
             agent.reply_token (or grpc_tls.client_ca_file), or, if those networks are trusted, \
             agent.allow_unauthenticated_replies: true"
        ),
    )
}

/// Largest `retention.inbound_events_days` and `retention.conversations_days` (100 years):
/// beyond it the cut-off is not a date.
const MAX_RETENTION_DAYS: u32 = 36_500;
/// Largest `retention.batch_size`: a bigger batch is one long transaction, what batching avoids.
const MAX_RETENTION_BATCH: u32 = 100_000;

/// `retention.*`: a zero batch or interval would never finish or spin.
fn check_retention(retention: &RetentionConfig) -> Result<(), Failure> {
    if retention.inbound_events_days > MAX_RETENTION_DAYS {
        fail(
            "retention.inbound_events_days",
            format!("must be at most {MAX_RETENTION_DAYS} (0 keeps events forever)"),
        )?;
    }
    if retention.conversations_days > MAX_RETENTION_DAYS {
        fail(
            "retention.conversations_days",
            format!("must be at most {MAX_RETENTION_DAYS} (0 keeps conversations forever)"),
        )?;
    }
    if retention.batch_size == 0 || retention.batch_size > MAX_RETENTION_BATCH {
        fail(
            "retention.batch_size",
            format!("must be between 1 and {MAX_RETENTION_BATCH}"),
        )?;
    }
    if retention.interval_secs == 0 {
        fail("retention.interval_secs", "must be greater than 0")?;
    }
    if retention.batch_pause_ms > 60_000 {
        fail("retention.batch_pause_ms", "must be at most 60000")?;
    }
    Ok(())
}

/// `webhooks.*`: a budget too small for a Slack or Clerk event, or one tokio's semaphore
/// cannot count, is a mistake.
fn check_webhooks(webhooks: &WebhooksConfig) -> Result<(), Failure> {
    if webhooks.body_timeout_ms == 0 {
        fail("webhooks.body_timeout_ms", "must be greater than 0")?;
    }
    if webhooks.max_unverified_bytes < 1 << 20 {
        fail(
            "webhooks.max_unverified_bytes",
            "must be at least 1048576 (1 MiB)",
        )?;
    }
    if webhooks.max_unverified_bytes > u64::from(u32::MAX) {
        fail(
            "webhooks.max_unverified_bytes",
            "must be at most 4294967295",
        )?;
    }
    if webhooks.max_unverified_uploads == 0 {
        fail("webhooks.max_unverified_uploads", "must be at least 1")?;
    }
    let limits = &webhooks.rate_limits;
    for (route, limit) in [
        ("slack", &limits.slack),
        ("github", &limits.github),
        ("clerk", &limits.clerk),
        ("sources", &limits.sources),
    ] {
        if !limit.per_second.is_finite() || limit.per_second < 0.0 {
            fail(
                &format!("webhooks.rate_limits.{route}.per_second"),
                "must be a number of at least 0 (0 turns the limit off)",
            )?;
        }
        if limit.per_second > 0.0 && limit.per_second < 0.001 {
            fail(
                &format!("webhooks.rate_limits.{route}.per_second"),
                "must be at least 0.001 (one delivery in about 17 minutes), or 0 for no limit",
            )?;
        }
        if limit.burst == 0 {
            fail(
                &format!("webhooks.rate_limits.{route}.burst"),
                "must be at least 1",
            )?;
        }
    }
    if limits.max_sources == 0 {
        fail("webhooks.rate_limits.max_sources", "must be at least 1")?;
    }
    Ok(())
}

/// `bind_address`, `port`/`grpc_port`, `log_level`.
fn check_listeners(config: &Config) -> Result<(), Failure> {
    if config.bind_address.parse::<std::net::IpAddr>().is_err() {
        fail(
            "bind_address",
            format!("`{}` is not an IP address", config.bind_address),
        )?;
    }
    if config.port != 0 && config.port == config.grpc_port {
        fail(
            "grpc_port",
            format!("must differ from port ({})", config.port),
        )?;
    }
    if config.ops.bind_address.parse::<std::net::IpAddr>().is_err() {
        fail(
            "ops.bind_address",
            format!("`{}` is not an IP address", config.ops.bind_address),
        )?;
    }
    if let Some(p) = config.ops.port
        && p != 0
        && (p == config.port || p == config.grpc_port)
    {
        fail(
            "ops.port",
            format!("{p} is already used by port/grpc_port; pick another port or leave it unset"),
        )?;
    }
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        match url::Url::parse(endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => fail(
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http(s):// URL with a host"),
            )?,
        }
    }
    if let Err(e) = parse_config_filter(&config.telemetry.otlp_filter) {
        fail(
            "telemetry.otlp_filter",
            format!("invalid filter `{}`: {e}", config.telemetry.otlp_filter),
        )?;
    }
    if config.telemetry.export_timeout_ms == 0 {
        fail(
            "telemetry.export_timeout_ms",
            "must be at least 1".to_owned(),
        )?;
    }
    if let Err(e) = parse_config_filter(&config.log_level) {
        fail(
            "log_level",
            format!("invalid filter `{}`: {e}", config.log_level),
        )?;
    }
    Ok(())
}

/// Why a tracing filter (`log_level`, `telemetry.otlp_filter`, `RUST_LOG`) was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Filters are ASCII: tracing-subscriber 0.3 panics on some non-ASCII directives (it
    /// slices at a byte inside a character; found by the `config` fuzz target), and targets,
    /// levels and field names are ASCII anyway.
    #[error("only ASCII is allowed (found {0:?})")]
    NotAscii(char),
    /// A span or field filter (`[span{field=value}]`) in a configuration key. Field values
    /// are compiled as regular expressions, and a pathological one took the `config` fuzz
    /// target over 10 s to load; `RUST_LOG` still takes them.
    #[error(
        "`{0}` is not a `level` or `target=level` directive (span and field filters are \
         accepted in RUST_LOG only)"
    )]
    NotSimple(String),
    /// tracing-subscriber's own parse error.
    #[error(transparent)]
    Parse(#[from] tracing_subscriber::filter::ParseError),
}

/// [`parse_filter`] for a configuration key: comma-separated `level` or `target=level`
/// directives, where a target is a Rust module path (letters, digits, `_`, `-`, `::`).
fn parse_config_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, FilterError> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii()) {
        return Err(FilterError::NotAscii(c));
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let target_ok = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
        };
        let simple = match directive.split_once('=') {
            Some((target, level)) => target_ok(target) && target_ok(level),
            None => target_ok(directive),
        };
        if !simple {
            return Err(FilterError::NotSimple(directive.chars().take(80).collect()));
        }
    }
    parse_filter(text)
}

/// Parses a tracing filter directive list, refusing what would make tracing-subscriber panic.
pub fn parse_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, FilterError> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii()) {
        return Err(FilterError::NotAscii(c));
    }
    Ok(tracing_subscriber::EnvFilter::try_new(text)?)
}

fn check_cors(cors: &CorsConfig) -> Result<(), Failure> {
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        let path = format!("cors.allowed_origins[{i}]");
        if origin == "*" {
            if cors.allow_credentials {
                fail(
                    &path,
                    "`*` cannot be combined with cors.allow_credentials: true (browsers reject it and it would expose credentials to any site); list the origins",
                )?;
            }
            continue;
        }
        match url::Url::parse(origin) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/') => {}
            _ => fail(
                &path,
                format!(
                    "`{origin}` is not an origin like https://app.example.com (scheme and host, no path)"
                ),
            )?,
        }
    }
    Ok(())
}

/// Longest wait before a turn's indicator: past a minute the thread would look dead.
const MAX_PROGRESS_DELAY_MS: u64 = 60_000;

fn check_slack(slack: &SlackConfig) -> Result<(), Failure> {
    if !(1..=10).contains(&slack.connections) {
        fail(
            "slack.connections",
            format!(
                "{} is out of range: Slack allows 1 to 10 Socket Mode connections",
                slack.connections
            ),
        )?;
    }
    for (i, source) in slack.alert_sources.iter().enumerate() {
        let key = format!("slack.alert_sources[{i}]");
        if !source.is_valid() {
            fail(&key, "needs a bot_id (B…) or an app_id (A…)")?;
        }
        if source
            .bot_id
            .as_ref()
            .is_some_and(|b| !b.as_str().starts_with('B'))
        {
            fail(&format!("{key}.bot_id"), "a Slack bot id starts with B")?;
        }
        if source
            .app_id
            .as_ref()
            .is_some_and(|a| !a.as_str().starts_with('A'))
        {
            fail(&format!("{key}.app_id"), "a Slack app id starts with A")?;
        }
    }
    if slack.progress_delay_ms > MAX_PROGRESS_DELAY_MS {
        fail(
            "slack.progress_delay_ms",
            format!("must be at most {MAX_PROGRESS_DELAY_MS} (0 shows the indicator at once)"),
        )?;
    }
    check_http_url("slack.api_url", &slack.api_url)?;
    if !slack.api_url.ends_with('/') {
        fail(
            "slack.api_url",
            "must end with `/` (e.g. https://slack.com/api/)",
        )?;
    }
    if slack.socket_mode && slack.app_token.is_none() {
        fail("slack.app_token", "required when slack.socket_mode is true")?;
    }
    Ok(())
}

fn check_database(db: &DatabaseConfig) -> Result<(), Failure> {
    if let Some(url) = &db.url {
        if db.host.is_some() {
            fail(
                "database.host",
                "set either database.url or database.host, not both",
            )?;
        }
        match url::Url::parse(url.expose()) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
            // The URL may carry a password: never echo it.
            _ => fail("database.url", "not a postgres:// or postgresql:// URL")?,
        }
    }
    if db.port == Some(0) {
        fail("database.port", "must not be 0")?;
    }
    if db.db_name.trim().is_empty() {
        fail("database.db_name", "must not be empty")?;
    }
    if db.pool_size == 0 {
        fail("database.pool_size", "must be at least 1")?;
    }
    if db.connect_timeout_ms == 0 {
        fail("database.connect_timeout_ms", "must be greater than 0")?;
    }
    Ok(())
}

/// Also normalises `agent.endpoint` to a URI.
fn check_agent(agent: &mut AgentConfig) -> Result<(), Failure> {
    match normalize_endpoint(&agent.endpoint) {
        Ok(uri) => agent.endpoint = uri,
        Err(reason) => fail("agent.endpoint", reason)?,
    }
    if agent.connect_timeout_ms == 0 {
        fail("agent.connect_timeout_ms", "must be greater than 0")?;
    }
    if agent.call_timeout_ms == 0 {
        fail("agent.call_timeout_ms", "must be greater than 0")?;
    }
    if agent.retry_attempts == 0 {
        fail("agent.retry_attempts", "must be at least 1")?;
    }
    if !(2..=10_000).contains(&agent.history_limit) {
        fail(
            "agent.history_limit",
            "must be between 2 (the turn and the message before it) and 10000",
        )?;
    }
    if agent.history_cache_mib > 4096 {
        fail(
            "agent.history_cache_mib",
            "must be at most 4096 (MiB; 0 turns the cache off)",
        )?;
    }
    for (i, entry) in agent.reply_allowed_networks.iter().enumerate() {
        if let Err(e) = super::Networks::parse([entry]) {
            fail(&format!("agent.reply_allowed_networks[{i}]"), e.to_string())?;
        }
    }
    if agent.failure_notice.trim().is_empty() {
        fail(
            "agent.failure_notice",
            "must not be empty: it is what the thread sees when the agent fails",
        )?;
    }
    Ok(())
}

/// `grpc`: a connection cap of at least one, keepalive that can fire.
fn check_grpc(grpc: &GrpcConfig) -> Result<(), Failure> {
    if grpc.max_connections == 0 {
        fail(
            "grpc.max_connections",
            "must be at least 1 (0 would refuse every connection)",
        )?;
    }
    if grpc.max_message_bytes < 64 * 1024 {
        fail(
            "grpc.max_message_bytes",
            "must be at least 65536 (an answer of Slack's size must fit)",
        )?;
    }
    if grpc.max_concurrent_streams == 0 {
        fail("grpc.max_concurrent_streams", "must be at least 1")?;
    }
    if grpc.keepalive_interval_ms > 0 && grpc.keepalive_timeout_ms == 0 {
        fail(
            "grpc.keepalive_timeout_ms",
            "must be above 0 when grpc.keepalive_interval_ms is set",
        )?;
    }
    Ok(())
}

/// `grpc_tls`: key and certificate together; client CAs only with TLS.
fn check_grpc_tls(tls: &GrpcTlsConfig) -> Result<(), Failure> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => fail(
            "grpc_tls.key_file",
            "required when grpc_tls.cert_file is set",
        )?,
        (None, Some(_)) => fail(
            "grpc_tls.cert_file",
            "required when grpc_tls.key_file is set",
        )?,
        _ => {}
    }
    if tls.client_ca_file.is_some() && tls.cert_file.is_none() {
        fail(
            "grpc_tls.client_ca_file",
            "needs grpc_tls.cert_file and grpc_tls.key_file (mutual TLS is TLS with client certificates)",
        )?;
    }
    Ok(())
}

fn check_identity(config: &Config) -> Result<(), Failure> {
    let clerk = &config.identity.clerk;
    if let Some(u) = &clerk.jwks_url {
        check_http_url("identity.clerk.jwks_url", u)?;
    }
    if let Some(u) = &clerk.issuer {
        check_http_url("identity.clerk.issuer", u)?;
    }
    if let Some(s) = &clerk.webhook_secret
        && !s.expose().starts_with("whsec_")
    {
        fail("identity.clerk.webhook_secret", "must start with `whsec_`")?;
    }
    check_port("identity.clerk.port", clerk.port, config)?;
    Ok(())
}

fn check_integrations(config: &Config) -> Result<(), Failure> {
    if let Some(u) = &config.integrations.slack.redirect_url {
        check_http_url("integrations.slack.redirect_url", u)?;
    }
    let gh = &config.integrations.github;
    check_http_url("integrations.github.api_url", &gh.api_url)?;
    if let Some(k) = &gh.private_key
        && !k.expose().contains("-----BEGIN")
    {
        fail(
            "integrations.github.private_key",
            "not a PEM key (no -----BEGIN line)",
        )?;
    }
    check_port("integrations.github.webhook_port", gh.webhook_port, config)?;
    Ok(())
}

fn check_vault(vault: &VaultConfig) -> Result<(), Failure> {
    for (id, key) in &vault.keys {
        let path = format!("vault.keys.{id}");
        match base64::engine::general_purpose::STANDARD.decode(key.expose().trim()) {
            Ok(bytes) if bytes.len() == 32 => {}
            Ok(bytes) => fail(&path, format!("must be 32 bytes, got {}", bytes.len()))?,
            Err(_) => fail(&path, "not valid base64")?,
        }
    }
    match &vault.active_key {
        Some(id) if !vault.keys.contains_key(id) => fail(
            "vault.active_key",
            format!("`{id}` is not one of vault.keys"),
        )?,
        None if !vault.keys.is_empty() => {
            fail("vault.active_key", "required when vault.keys is set")?
        }
        _ => {}
    }
    Ok(())
}

/// A section whose rules the actor core owns: its messages start with the field name, so the
/// key is named like every other error.
fn check_core_section(
    section: &str,
    result: Result<(), infragpt_actors::config::ConfigError>,
) -> Result<(), Failure> {
    if let Err(e) = result {
        let reason = e.0;
        let field = reason.split_whitespace().next().unwrap_or_default();
        fail(&format!("{section}.{field}"), reason.clone())?;
    }
    Ok(())
}

fn check_http_url(path: &str, value: &str) -> Result<(), Failure> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => fail(
            path,
            format!(
                "`{value}`: scheme must be http or https, got `{}`",
                u.scheme()
            ),
        ),
        Err(e) => fail(path, format!("`{value}` is not a URL: {e}")),
    }
}

fn check_port(path: &str, port: Option<u16>, config: &Config) -> Result<(), Failure> {
    match port {
        Some(0) => fail(path, "must not be 0"),
        Some(p) if p == config.port || p == config.grpc_port => fail(
            path,
            format!("{p} is already used by port/grpc_port; leave it unset to share the HTTP port"),
        ),
        _ => Ok(()),
    }
}

/// Turns an agent endpoint into a URI tonic can dial: `host:port` gains `http://`, and the
/// unspecified bind addresses `0.0.0.0` / `[::]` (which seed configs use) become loopback.
pub fn normalize_endpoint(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if raw.contains("://") {
        let u = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URI: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("`{raw}`: scheme must be http or https"));
        }
        if u.host().is_none() {
            return Err(format!("`{raw}` has no host"));
        }
        if u.port_or_known_default().is_none() {
            return Err(format!("`{raw}` has no port"));
        }
        return Ok(raw.trim_end_matches('/').to_owned());
    }
    if let Ok(addr) = raw.parse::<std::net::SocketAddr>() {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        return Ok(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, addr.port())
        ));
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!(
            "`{raw}` needs a port (host:port or http://host:port)"
        ));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("`{raw}`: `{port}` is not a port"));
    }
    let uri = format!("http://{host}:{port}");
    match url::Url::parse(&uri) {
        Ok(u) if u.host().is_some() && !host.is_empty() => Ok(uri),
        _ => Err(format!("`{raw}`: `{host}` is not a host name")),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_endpoint;

    #[test]
    fn endpoints() {
        assert_eq!(
            normalize_endpoint("[::]:50051").unwrap(),
            "http://[::1]:50051"
        );
        assert_eq!(
            normalize_endpoint("0.0.0.0:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_endpoint("agent:7000").unwrap(),
            "http://agent:7000"
        );
        assert_eq!(
            normalize_endpoint("https://agent.example.com/").unwrap(),
            "https://agent.example.com"
        );
        assert!(normalize_endpoint("agent").is_err());
        assert!(normalize_endpoint("agent:x").is_err());
        assert!(normalize_endpoint("ftp://agent:1").is_err());
        assert!(normalize_endpoint(":80").is_err());
    }
}
