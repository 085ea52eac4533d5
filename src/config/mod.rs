//! Service configuration: one YAML file, `${VAR}` substitution, strict keys, semantic checks.
//!
//! [`load`] / [`load_str`] are the only functions that touch the YAML parser (serde_yaml is
//! archived; keeping it behind these two functions lets it be swapped without touching anything
//! else). Every error names the file, the key path and the reason:
//! `config/x.yaml: database.port: invalid type: string "x", expected u16`.

mod env;
mod networks;
mod types;
mod validate;

pub use networks::{NetworkParseError, Networks};

pub use validate::{FilterError, normalize_endpoint, parse_filter, unauthenticated_reply_networks};

pub use types::*;

use std::path::{Path, PathBuf};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "INFRAGPT_CONFIG";
/// The configuration file used when neither `--config` nor `INFRAGPT_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.yaml";

/// A configuration that could not be loaded. The `Display` form is the whole message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// `${VAR}` without a default, and `VAR` is not set.
    #[error(
        "{file}: line {line}: environment variable `{var}` is not set (set it, or write ${{{var}:-default}})"
    )]
    MissingEnv {
        file: String,
        var: String,
        /// 1-based line.
        line: usize,
    },
    /// A `${...}` reference that cannot be substituted.
    #[error("{file}: line {line}: {reason}")]
    Substitution {
        file: String,
        /// 1-based line.
        line: usize,
        reason: String,
    },
    /// A key with a bad value, an unknown key, or invalid YAML (then `path` is `(top level)`).
    #[error("{file}: {path}: {reason}")]
    Invalid {
        file: String,
        /// Dotted key path (`database.port`, `cors.allowed_origins[1]`).
        path: String,
        reason: String,
    },
}

/// Where the configuration comes from: `--config`, else `INFRAGPT_CONFIG`, else
/// [`DEFAULT_CONFIG_PATH`].
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Reads, substitutes, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: origin.clone(),
        source,
    })?;
    load_str(&text, &origin)
}

/// Like [`load`] for text already in memory; `origin` names it in errors.
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    load_str_with_env(text, origin, |k| std::env::var(k).ok())
}

/// Like [`load_str`] with an explicit environment (tests avoid touching the process env).
pub fn load_str_with_env(
    text: &str,
    origin: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = env::substitute(text, lookup).map_err(|e| match e {
        env::SubstError::Missing { var, line } => ConfigError::MissingEnv {
            file: origin.to_owned(),
            var,
            line,
        },
        env::SubstError::Malformed { line, reason } => ConfigError::Substitution {
            file: origin.to_owned(),
            line,
            reason,
        },
        env::SubstError::Unsafe { var, line, reason } => ConfigError::Substitution {
            file: origin.to_owned(),
            line,
            reason: format!("${{{var}}}: {reason}"),
        },
    })?;
    let mut config = parse(&text, origin)?;
    validate::validate(&mut config).map_err(|(path, reason)| ConfigError::Invalid {
        file: origin.to_owned(),
        path,
        reason,
    })?;
    Ok(config)
}

/// The one place that knows the YAML parser.
fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    // An empty document (or only comments) means "all defaults".
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
    if !has_content {
        return Ok(Config::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => "(top level)".to_owned(),
            p => p,
        };
        let inner = e.into_inner();
        let location = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let mut reason = inner.to_string();
        // serde_yaml prefixes its own path and appends its own position; keep the bare reason
        // so the message has one path and one position whatever the parser.
        if let Some((prefix, rest)) = reason.split_once(": ")
            && (prefix == path
                || path.starts_with(&format!("{prefix}."))
                || path.starts_with(&format!("{prefix}[")))
        {
            reason = rest.to_owned();
        }
        if let Some(idx) = reason.find(" at line ") {
            reason.truncate(idx);
        }
        ConfigError::Invalid {
            file: origin.to_owned(),
            path,
            reason: format!("{reason}{location}"),
        }
    })
}

/// Renders the effective configuration (secrets print as `[redacted]`).
pub fn to_yaml(config: &Config) -> Result<String, ConfigError> {
    serde_yaml::to_string(config).map_err(|e| ConfigError::Invalid {
        file: "<effective config>".to_owned(),
        path: "(top level)".to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_str_with_env(text, "t.yaml", move |k| map.get(k).cloned())
    }

    #[test]
    fn empty_document_is_defaults() {
        let c = load_env("# nothing\n", &[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.grpc_port, 50051);
    }

    #[test]
    fn type_error_names_file_path_and_reason() {
        let err = load_env("database:\n  port: x\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.yaml: database.port: invalid type: string \"x\", expected u16"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = load_env("slack:\n  conections: 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml: slack"), "{err}");
        assert!(err.contains("unknown field `conections`"), "{err}");
    }
}
