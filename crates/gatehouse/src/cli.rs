//! Commands and flags. Every serving command takes `--listen`; all take
//! `--config` and `--data-dir`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{Application, ConfigSource, Role};
use crate::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "Authentication service and API gateway")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the SQLite database and development keys (default ./data).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve on, e.g. 127.0.0.1:8080; port 0 picks a free one.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process (the default).
    Up,
    /// The auth-service alone.
    AuthService,
    /// The gateway alone, in front of a remote auth-service.
    Gateway,
    /// Apply database migrations and exit.
    Migrate,
    /// Signing-key rotation.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Accounts and their roles, on the database (make the first admin).
    #[command(subcommand)]
    Users(UsersCommand),
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Give the account of EMAIL a role (e.g. admin).
    GrantRole { email: String, role: String },
    /// Take a role from the account of EMAIL.
    RevokeRole { email: String, role: String },
    /// Accounts by email, with their roles.
    List {
        /// Only emails starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key; the old one verifies until its tokens expire.
    Rotate,
    /// Show the signing keys.
    List,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Up);
    let source = ConfigSource { file: cli.config, overrides: Overrides { listen: cli.listen, data_dir: cli.data_dir } };
    let config: Config = source.load()?;
    crate::telemetry::init(&config.log)?;
    // The gateway roles serve on single-threaded runtimes, this one and one
    // per extra worker (see app::spawn_worker); the rest use a shared pool.
    let runtime = match command {
        Command::Up | Command::Gateway => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .context("start the runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Up | Command::AuthService | Command::Gateway => {
                let role = match command {
                    Command::AuthService => Role::AuthService,
                    Command::Gateway => Role::Gateway,
                    _ => Role::Up,
                };
                let shutdown = shutdown_signal();
                let app = Application::build(config, role).await?;
                app.run_until_stopped(source, shutdown).await
            }
            Command::Migrate => crate::app::migrate(&config).await,
            Command::Keys(KeysCommand::Rotate) => crate::keys::rotate(&config),
            Command::Keys(KeysCommand::List) => crate::keys::list(&config),
            Command::Users(UsersCommand::GrantRole { email, role }) => {
                crate::users::change_role(&config, &email, &role, true).await
            }
            Command::Users(UsersCommand::RevokeRole { email, role }) => {
                crate::users::change_role(&config, &email, &role, false).await
            }
            Command::Users(UsersCommand::List { prefix }) => crate::users::list(&config, &prefix).await,
        }
    })
}

/// Resolves on SIGINT or SIGTERM. The SIGTERM handler is installed here,
/// before the server says it is listening: a SIGTERM sent as soon as it
/// says so still stops it gracefully.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match term {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
            tokio::select! {
                _ = interrupt => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        tracing::info!("shutting down: finishing in-flight requests");
    }
}
