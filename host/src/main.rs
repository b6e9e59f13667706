//! The `ef-backup` command: parses arguments once, loads the configuration once, and hands
//! both to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ef_backup::config::{Config, LogFormat};
use ef_backup::policy::{self, Policy};

#[derive(Parser)]
#[command(name = "ef-backup", version, about = "PostgreSQL backups to gzip files and S3; the backup policy is a WebAssembly component")]
struct Cli {
    /// Read variables from this file (default: ./.env when present). The environment wins.
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Policy component (.wasm); overrides EF__BACKUP_POLICY.
    #[arg(long, global = true, value_name = "PATH")]
    policy: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a component, call every export with sample inputs and print what it decided.
    Check {
        /// The component (default: --policy, EF__BACKUP_POLICY, or the built default policy).
        path: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EF__LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn policy_path(cli_policy: Option<PathBuf>, config: &Config) -> PathBuf {
    cli_policy.or_else(|| config.policy_path.clone()).unwrap_or_else(policy::default_policy_path)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(cli.env_file.as_deref()).context("invalid configuration")?;
    init_logging(config.log_format);
    match cli.command {
        Command::Policy { command: PolicyCommand::Check { path } } => {
            let path = policy_path(path.or(cli.policy), &config);
            let policy = Policy::load(&path)?;
            let report = policy::check::run(&policy, &policy::policy_config(&config), now())?;
            for line in report.lines {
                println!("{line}");
            }
            println!("ok: the policy answered every call with valid values");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole cause chain; never a backtrace.
            eprintln!("ef-backup: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
