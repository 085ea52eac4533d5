//! `infragpt`: the service binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use infragpt::config::{self, Config};

/// jemalloc rather than the system allocator: a sixth less of the service's CPU per turn,
/// and less memory per idle conversation actor (BENCHMARKS.md, "jemalloc and fat LTO").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// InfraGPT: an AI operations assistant that lives in Slack.
#[derive(Debug, Parser)]
#[command(name = "infragpt", version, about)]
struct Cli {
    /// Configuration file (default: $INFRAGPT_CONFIG, else config/default.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `port` (HTTP).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Override `grpc_port`.
    #[arg(long, global = true)]
    grpc_port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply pending database migrations.
    Migrate {
        /// Print applied and pending migrations instead of applying.
        #[arg(long)]
        status: bool,
    },
    /// Try the whole product locally: a simulated Slack workspace, the service and a
    /// development agent, with a terminal chat in #ops.
    Demo {
        /// Run the lines of FILE instead of reading the terminal; exits non-zero unless
        /// every turn got a reply.
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
        /// Delete the demo's data (its database) and exit.
        #[arg(long)]
        reset: bool,
        /// Talk to this agent (`host:port` or URI) instead of the development agent.
        #[arg(long, value_name = "ENDPOINT")]
        agent: Option<String>,
        /// Seconds to wait for each reply.
        #[arg(long, default_value_t = 60)]
        reply_timeout: u64,
    },
    /// Run the development agent (keyword answers, no model) for compose files and trials:
    /// serves the agent's gRPC `ProcessMessage` and answers through the backend's SendReply.
    Devagent {
        /// Where to serve `agent.AgentService` (point `agent.endpoint` here).
        #[arg(
            long,
            default_value = "127.0.0.1:50052",
            env = "INFRAGPT_DEVAGENT_LISTEN"
        )]
        listen: std::net::SocketAddr,
        /// The service's gRPC address for SendReply (`host:port` or `http://host:port`).
        #[arg(
            long,
            default_value = "http://127.0.0.1:50051",
            env = "INFRAGPT_DEVAGENT_BACKEND"
        )]
        backend: String,
        /// Sent as the bearer token on SendReply (`agent.reply_token`).
        #[arg(long, env = "INFRAGPT_DEVAGENT_REPLY_TOKEN", hide_env_values = true)]
        reply_token: Option<String>,
        /// Milliseconds spent "thinking" before each answer.
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
    },
    /// Credential vault maintenance.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Re-encrypt every credential under the active key (resumable; safe to run again).
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// How many credentials each key seals; a key with no rows can be removed.
    Status,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Yaml)]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Yaml,
    Json,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let path = config::resolve_path(cli.config.as_deref());
    // The error already names the file, key and reason.
    let mut config = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(p) = cli.port {
        config.port = p;
    }
    if let Some(p) = cli.grpc_port {
        config.grpc_port = p;
    }
    Ok(config)
}

fn main() -> ExitCode {
    // One rustls provider for the whole process (two compiled-in providers panic at first use).
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(Command::Serve);
    // Read by every command but the development agent, whose flags are all it needs.
    let config = || load_config(&cli);
    match command {
        Command::Devagent {
            listen,
            backend,
            reply_token,
            think_ms,
        } => devagent(listen, backend, reply_token, think_ms),
        Command::Config {
            command: ConfigCommand::Check { format },
        } => {
            let config = config()?;
            let text = match format {
                OutputFormat::Yaml => config::to_yaml(&config)?,
                OutputFormat::Json => serde_json::to_string_pretty(&config)? + "\n",
            };
            print!("{text}");
            Ok(())
        }
        Command::Serve => {
            let config = config()?;
            let _telemetry = infragpt::telemetry::init(&(&config).into())?;
            block_on(infragpt::app::serve(config))
        }
        Command::Demo {
            script,
            reset,
            agent,
            reply_timeout,
        } => {
            let mut config = config()?;
            // The chat owns the terminal: service logs go to stderr, warnings only, unless
            // RUST_LOG asks for more.
            config.log_level = "warn".to_owned();
            config.http_log = false;
            let mut telemetry: infragpt::telemetry::TelemetryConfig = (&config).into();
            telemetry.to_stderr = true;
            let _telemetry = infragpt::telemetry::init(&telemetry)?;
            if reset {
                return block_on(async move {
                    println!("{}", infragpt::demo::reset(&config).await?);
                    Ok(())
                });
            }
            let options = infragpt::demo::DemoOptions {
                script,
                reset,
                agent_endpoint: agent,
                reply_timeout: std::time::Duration::from_secs(reply_timeout.max(1)),
            };
            block_on(async move {
                let summary = infragpt::demo::run(config, options).await?;
                if summary.answered < summary.turns {
                    anyhow::bail!(
                        "{} of {} turns got no reply",
                        summary.turns - summary.answered,
                        summary.turns
                    );
                }
                Ok(())
            })
        }
        Command::Vault { command } => {
            let config = config()?;
            let mut telemetry: infragpt::telemetry::TelemetryConfig = (&config).into();
            telemetry.to_stderr = true;
            let _telemetry = infragpt::telemetry::init(&telemetry)?;
            block_on(vault(config, command))
        }
        Command::Migrate { status } => {
            let config = config()?;
            let mut telemetry: infragpt::telemetry::TelemetryConfig = (&config).into();
            telemetry.to_stderr = true;
            let _telemetry = infragpt::telemetry::init(&telemetry)?;
            block_on(migrate(config, status))
        }
    }
}

/// Runs `fut` in an actix system on a multi-threaded tokio runtime (actix actors and HTTP
/// workers need the system; tonic and blocking work use the runtime's worker threads).
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    })
    .block_on(fut)
}

async fn vault(config: Config, command: VaultCommand) -> anyhow::Result<()> {
    use infragpt::app::integrations::load_keyring;
    use infragpt::integrations::vault_cli;
    let db = infragpt::server::open_database(&config).await?;
    let result = async {
        match command {
            VaultCommand::Rotate { batch } => {
                let keyring = load_keyring(&config.vault).context("loading the vault keys")?;
                let report = vault_cli::rotate(&db, &keyring, batch).await?;
                println!(
                    "active key {}: {} examined, {} rotated, {} skipped, {} failed in {} batches",
                    report.active_key,
                    report.examined,
                    report.rotated,
                    report.skipped,
                    report.failed,
                    report.batches
                );
                for id in &report.failed_ids {
                    println!("failed   {id}");
                }
                if report.failed > 0 {
                    anyhow::bail!("{} credentials could not be re-encrypted", report.failed);
                }
            }
            VaultCommand::Status => {
                let keyring = load_keyring(&config.vault).ok();
                let status = vault_cli::status(&db, keyring.as_ref()).await?;
                println!(
                    "active key: {}",
                    status
                        .active_key
                        .as_deref()
                        .unwrap_or("(no key configured)")
                );
                for (key, rows) in &status.rows_per_key {
                    println!("{key}: {rows} credentials");
                }
                if status.keys_pending_rotation.is_empty() {
                    println!("no credential uses an old key");
                } else {
                    println!(
                        "still in use, run `infragpt vault rotate`: {}",
                        status.keys_pending_rotation.join(", ")
                    );
                }
            }
        }
        Ok(())
    }
    .await;
    db.shutdown().await;
    result
}

/// `infragpt devagent`: serves until SIGINT/SIGTERM.
fn devagent(
    listen: std::net::SocketAddr,
    backend: String,
    reply_token: Option<String>,
    think_ms: u64,
) -> anyhow::Result<()> {
    use infragpt::testkit::devagent::{DevAgent, DevAgentConfig};
    let _telemetry = infragpt::telemetry::init(&infragpt::telemetry::TelemetryConfig {
        level: "info".to_owned(),
        format: infragpt::config::LogFormat::Json,
        to_stderr: false,
        export: Default::default(),
    })?;
    block_on(async move {
        let mut signals = infragpt::server::ShutdownSignals::install()?;
        let agent = DevAgent::start(DevAgentConfig {
            bind: listen,
            reply_endpoint: Some(backend.clone()),
            reply_token: reply_token.map(infragpt_actors::Secret::from),
            think_time: std::time::Duration::from_millis(think_ms),
            // A long-running agent keeps no history of requests.
            record_requests: false,
            ..DevAgentConfig::default()
        })
        .context("starting the development agent")?;
        tracing::info!(listen = %agent.addr(), backend = %backend, "development agent serving");
        println!(
            "development agent on {} (SendReply to {backend})",
            agent.addr()
        );
        let signal = signals.recv().await;
        tracing::info!(signal, "stopping the development agent");
        // Joining its thread blocks: off the async workers.
        tokio::task::spawn_blocking(move || agent.stop())
            .await
            .context("stopping the development agent")?;
        Ok(())
    })
}

async fn migrate(config: Config, status_only: bool) -> anyhow::Result<()> {
    let db = infragpt::db::Database::open(&infragpt::server::db_settings(&config))
        .await
        .context("opening the database")?;
    let result = async {
        if status_only {
            let status = db.migration_status().await?;
            println!("database: {}", db.describe());
            for v in &status.applied {
                println!("applied  {v}");
            }
            for v in &status.pending {
                println!("pending  {v}");
            }
            println!(
                "{} applied, {} pending",
                status.applied.len(),
                status.pending.len()
            );
        } else {
            let applied = db.run_migrations().await?;
            println!("database: {}", db.describe());
            if applied.is_empty() {
                println!("up to date");
            }
            for v in &applied {
                println!("applied  {v}");
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    db.shutdown().await;
    result
}
