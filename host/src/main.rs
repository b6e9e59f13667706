//! The `ef-backup` command: parses arguments once, loads the configuration once, and hands
//! both to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ef_backup::config::{Config, LogFormat};
use ef_backup::policy::{self, Policy};
use ef_backup::store::local::LocalStore;
use ef_backup::db::PgTools;
use ef_backup::{cli, engine, restore, verify};

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
    /// Back up the database now: pg_dump → gzip → EF__BACKUP_DIR, then local retention.
    Backup {
        /// Print the response JSON (success, message, data) instead of a summary.
        #[arg(long)]
        json: bool,
        /// Take "now" from this Unix time instead of the clock (names and retention use it).
        #[arg(long, value_name = "UNIX_SECONDS", hide = true)]
        now: Option<i64>,
    },
    /// Restore a backup into a database, atomically: into a scratch database first, then
    /// renamed into place.
    Restore {
        /// Backup file: a path, or a name in EF__BACKUP_DIR.
        backup: String,
        /// Database to restore into.
        #[arg(long, value_name = "NAME")]
        target_db: String,
        /// Create the target database when it does not exist.
        #[arg(long)]
        create: bool,
        /// Replace a non-empty target database (dropped only after the restore succeeded).
        #[arg(long)]
        drop_existing: bool,
    },
    /// Prove a backup restores: restore into a scratch database and compare every table.
    Verify {
        /// Backup file: a path, or a name in EF__BACKUP_DIR (default: the newest backup).
        backup: Option<String>,
        /// Compare row counts with the dump's own COPY blocks instead of the live database.
        #[arg(long)]
        against_dump: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the backups the policy recognises.
    List {
        #[arg(long)]
        json: bool,
    },
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

fn load_policy(cli_policy: Option<PathBuf>, config: &Config) -> Result<Policy> {
    Ok(Policy::load(&policy_path(cli_policy, config))?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(cli.env_file.as_deref()).context("invalid configuration")?;
    init_logging(config.log_format);
    match cli.command {
        Command::Backup { json, now: at } => {
            let policy = load_policy(cli.policy, &config)?;
            let report = engine::run(&config, &policy, engine::BackupOptions { now: at.unwrap_or_else(now), progress: !json });
            let response = policy.shape_backup_response(&report.outcome).unwrap_or_else(|e| {
                tracing::error!("{e}");
                policy::fallback_backup_response(&report.outcome)
            });
            if json {
                println!("{}", response.body);
            } else {
                cli::print_backup_summary(&report, &response);
            }
            Ok(if matches!(report.outcome, policy::BackupOutcome::Done(_)) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Restore { backup, target_db, create, drop_existing } => {
            let path = cli::resolve_backup(&config, &backup)?;
            let tools = PgTools::for_server(&config.db, config.pg_bin.as_deref())?;
            let report = restore::restore(&tools, &path, &target_db, restore::RestoreOptions { create, drop_existing })?;
            println!(
                "restored {} into database {} ({} of SQL, {:.1} s){}",
                path.display(),
                report.target,
                cli::mb(report.check.dump_bytes),
                report.elapsed.as_secs_f64(),
                if report.replaced_existing { "; its previous contents were dropped" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { backup, against_dump, json } => {
            let path = match backup {
                Some(b) => cli::resolve_backup(&config, &b)?,
                None => {
                    let policy = load_policy(cli.policy, &config)?;
                    let listing = LocalStore::new(&config.backup_dir).list()?;
                    let newest = cli::recognised(&policy, &listing)?.into_iter().next().with_context(|| {
                        format!("no backups in {} to verify (run `ef-backup backup` first)", config.backup_dir.display())
                    })?;
                    config.backup_dir.join(newest.backup.name)
                }
            };
            let tools = PgTools::for_server(&config.db, config.pg_bin.as_deref())?;
            let report = verify::verify(&tools, &config.db.name, &path, against_dump)?;
            cli::print_verify(&report, json);
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::List { json } => {
            let policy = load_policy(cli.policy, &config)?;
            let listing = LocalStore::new(&config.backup_dir).list()?;
            let backups = cli::recognised(&policy, &listing)?;
            cli::print_list(&config, &backups, listing.len() - backups.len(), json);
            Ok(ExitCode::SUCCESS)
        }
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
