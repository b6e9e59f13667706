//! The `ef-backup` command: parses arguments once, loads the configuration once, and hands
//! both to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ef_backup::catalog::{self, CatalogError};
use ef_backup::config::{Config, LogFormat};
use ef_backup::db::PgTools;
use ef_backup::policy::{self, Policy as _, WasmPolicy};
use ef_backup::provenance::Purpose;
use ef_backup::store::local::LocalStore;
use ef_backup::store::s3::{self, S3Store};
use ef_backup::util::now;
use ef_backup::{cli, engine, exit, lock, restore, serve, verify};

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
        /// Local backup only, even when S3 is configured.
        #[arg(long)]
        no_s3: bool,
        /// Take "now" from this Unix time instead of the clock (names and retention use it).
        #[arg(long, value_name = "UNIX_SECONDS", hide = true)]
        now: Option<i64>,
    },
    /// Restore a backup into a database, atomically: into a scratch database first, then
    /// renamed into place.
    Restore {
        /// Backup: a path, a name in EF__BACKUP_DIR, or s3://bucket/key.
        #[arg(required_unless_present = "all")]
        backup: Option<String>,
        /// BACKUP is a name in the configured bucket (EF__AWS_S3_BACKUP_BUCKET, EF__S3_PREFIX);
        /// with --all, the set is taken from the bucket.
        #[arg(long)]
        from_s3: bool,
        /// Database to restore into.
        #[arg(long, value_name = "NAME", required_unless_present = "all")]
        target_db: Option<String>,
        /// Restore a whole run onto this server: its globals (roles, memberships, role settings,
        /// tablespaces) statement by statement, then every database of the run, each created.
        #[arg(long, conflicts_with_all = ["backup", "target_db", "create"])]
        all: bool,
        /// With --all: the set taken at this time (Unix seconds, as `list --json` shows
        /// `created_at`); default: the newest complete set.
        #[arg(long, value_name = "UNIX_SECONDS", requires = "all")]
        at: Option<i64>,
        /// With --all: the label of the globals backups (default: EF__DEPLOYMENT_NAME, else
        /// `pg` and this server's system identifier — give the old server's on a new server).
        #[arg(long, value_name = "LABEL", requires = "all")]
        label: Option<String>,
        /// With --all: roles that exist get the backup's attributes, password, settings and
        /// comment (by default they are left exactly as they are).
        #[arg(long, requires = "all")]
        overwrite_roles: bool,
        /// Create the target database when it does not exist.
        #[arg(long)]
        create: bool,
        /// Replace a non-empty target database (dropped only after the restore succeeded).
        /// The database-level properties (owner, ACL, settings, comment, locale...) are kept.
        #[arg(long)]
        drop_existing: bool,
        /// Allow template0, template1 or postgres as the target.
        #[arg(long)]
        allow_system_db: bool,
        #[command(flatten)]
        props: PropsArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Prove a backup restores: restore into a scratch database and compare tables, large
    /// objects, sequences, the schema and matview state with the live database.
    Verify {
        /// Backup: a path, a name in EF__BACKUP_DIR, or s3://bucket/key (default: the newest
        /// local backup, or the newest in S3 with --from-s3).
        backup: Option<String>,
        /// BACKUP is a name in the configured bucket.
        #[arg(long)]
        from_s3: bool,
        /// Compare with what the dump itself says (COPY row counts, setval calls, large objects)
        /// instead of the live database; the schema is then not compared.
        #[arg(long, conflicts_with = "offline")]
        against_dump: bool,
        /// Check the backup against its manifest without a database: SHA-256 and size, that it
        /// decodes to the end and is complete, every table's row count and content hash, every
        /// sequence and large object.
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// List the backups the policy recognises, local and in S3.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Restore drill: restore a backup into a scratch database on a throwaway PostgreSQL server
    /// (or EF__DRILL_DB_HOST), never the production server, and prove it faithful to its
    /// manifest: the stored bytes' SHA-256, every table's rows and content hash, sequences and
    /// large objects. Recorded in the history; failures notify. Exit code 1 when one fails.
    Drill {
        /// Backups: paths or names in EF__BACKUP_DIR (default: the newest of each database).
        backups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The run history: backups, drills, restores, verifies, notifications, newest first.
    History {
        /// How many runs to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=5000))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Run the service: the admin HTTP API on EF__HTTP_ADDR and the policy's schedule.
    Serve,
    /// Inspect policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

/// Properties of the restored database; each wins over the replaced database's (default: the
/// replaced database's, or for --create the connecting role and template0's).
#[derive(clap::Args)]
struct PropsArgs {
    /// Owner of the restored database.
    #[arg(long, value_name = "ROLE")]
    owner: Option<String>,
    /// Encoding of the restored database, e.g. UTF8.
    #[arg(long, value_name = "ENCODING")]
    encoding: Option<String>,
    /// libc locale (LC_COLLATE and LC_CTYPE) of the restored database.
    #[arg(long, value_name = "LOCALE")]
    locale: Option<String>,
    /// Tablespace of the restored database.
    #[arg(long, value_name = "NAME")]
    tablespace: Option<String>,
    /// Connection limit of the restored database (-1: none).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    connection_limit: Option<i32>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a component, call every export with sample inputs and print what it decided.
    Check {
        /// The component (default: --policy, EF__BACKUP_POLICY, or the built default policy).
        path: Option<PathBuf>,
    },
    /// Time the policy's load (compile, then from the cache) and its calls per backup.
    Bench {
        path: Option<PathBuf>,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EF__LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn policy_path(cli_policy: Option<PathBuf>, config: &Config) -> PathBuf {
    cli_policy.or_else(|| config.policy_path.clone()).unwrap_or_else(policy::default_policy_path)
}

/// A private scratch directory for the benchmark's compile cache.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ef-backup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn load_policy(cli_policy: Option<PathBuf>, config: &Config) -> Result<WasmPolicy> {
    let policy = WasmPolicy::load_cached(&policy_path(cli_policy, config), config.policy_cache_dir.as_deref())?;
    ef_backup::policy::check_fits(&policy, config)?;
    Ok(policy)
}

/// The S3 client, when S3 is configured, with a runtime for its I/O.
fn s3_store(config: &Config) -> Result<Option<(tokio::runtime::Runtime, S3Store)>> {
    let Some(cfg) = &config.s3 else { return Ok(None) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3")
        .enable_all()
        .build()
        .context("cannot start the async runtime for S3")?;
    let store = S3Store::new(cfg, config.s3_part_size, rt.handle().clone());
    Ok(Some((rt, store)))
}

/// How a restore or verify loads the dump.
#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// psql sessions loading in parallel (table data in row batches, then index and key builds);
    /// default: the number of CPUs. 1 loads the dump in order on one session.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: Option<u16>,
    /// Leave out the dump's `ALTER … OWNER TO` statements: everything restored belongs to the
    /// restoring role (EF__DB_USER), which then needs no membership in the original owners.
    #[arg(long)]
    no_owner: bool,
    /// Leave out the dump's GRANT/REVOKE statements (privileges stay the restoring role's defaults).
    #[arg(long)]
    no_privileges: bool,
    /// age identity file (from `age-keygen`) that decrypts encrypted backups; overrides
    /// EF__BACKUP_AGE_IDENTITY_FILE.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// With EF__BACKUP_TRUSTED_KEYS set: go on with a backup whose manifest is missing or not
    /// signed by a trusted key (logged as a warning).
    #[arg(long)]
    allow_unsigned: bool,
}

impl LoadArgs {
    fn options(&self) -> restore::parallel::LoadOptions {
        restore::parallel::LoadOptions {
            jobs: self.jobs.map(usize::from).unwrap_or_else(restore::parallel::default_jobs),
            no_owner: self.no_owner,
            no_privileges: self.no_privileges,
        }
    }
}

/// The globals backup of the run `source` belongs to, in the same place (directory or bucket).
fn globals_beside(config: &Config, cli_policy: Option<PathBuf>, source: &restore::Source) -> Option<String> {
    use ef_backup::store::BackupStore as _;
    let policy = load_policy(cli_policy, config).ok()?;
    let (listing, name) = match &source.origin {
        restore::Origin::File(path) => {
            let dir = path.parent()?;
            (LocalStore::new(dir).list_backups().ok()?, path.file_name()?.to_str()?.to_string())
        }
        restore::Origin::Store { store, name } => (store.list_backups().ok()?, name.clone()),
    };
    ef_backup::catalog::globals_of_run(&policy, &config.policy, &listing, &name)
}

/// Where a restore/verify reads from: `s3://bucket/key`, a name in the configured bucket
/// (`--from-s3`), or a local path or name.
fn source(config: &Config, s3: Option<&S3Store>, backup: &str, from_s3: bool) -> Result<restore::Source> {
    let need_s3 = || s3.cloned().context("S3 is not configured: set EF__AWS_ACCESS_KEY_ID, EF__AWS_SECRET_ACCESS_KEY and EF__AWS_S3_BACKUP_BUCKET");
    if backup.starts_with("s3://") {
        let (bucket, key) = s3::parse_url(backup).with_context(|| format!("{backup:?} is not an s3://bucket/key URL"))?;
        return Ok(restore::Source::store(Arc::new(need_s3()?.in_bucket(bucket)), key, &config.keys));
    }
    if from_s3 {
        return Ok(restore::Source::store(Arc::new(need_s3()?), backup, &config.keys));
    }
    Ok(restore::Source::file(cli::resolve_backup(config, backup)?, &config.keys))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut config = Config::load(cli.env_file.as_deref()).context("invalid configuration")?;
    if let Command::Restore { load, .. } | Command::Verify { load, .. } = &cli.command {
        if let Some(path) = &load.identity {
            config.keys = ef_backup::codec::Keys::from_file(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
        }
    }
    let config = config;
    init_logging(config.log_format);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // Restores and verifies are the audit trail: each is a run of the history, whatever ends it.
    let audit = Audit::begin(&config, &cli.command);
    let cli_policy = cli.policy;
    let result = (move || -> Result<ExitCode> {
        match cli.command {
            Command::Backup { json, no_s3, now: at } => {
                let cancel = cancel_backup_on_signal();
                let policy = load_policy(cli_policy, &config)?;
                let s3 = if no_s3 { None } else { s3_store(&config)? };
                if !no_s3 {
                    engine::log_s3_state(&config);
                }
                let started = at.unwrap_or_else(now);
                // Cron users run the CLI: it notifies like serve, and waits for delivery before it
                // exits (at most a minute; a channel that is down delays nothing else).
                let (notify_rt, alerts) = start_alerts(&config)?;
                // The same run lock as `serve`: never a second pg_dump of this database. Busy is not
                // a run (nothing is recorded); a lock that cannot be taken is a failed run.
                let report = match lock::acquire(&config) {
                    Ok(run_lock) => {
                        let recording = ef_backup::state::Recording::begin(&config, ef_backup::state::Trigger::Cli, started);
                        let started_event = ef_backup::model::Event {
                            databases: config.policy.databases.clone(),
                            ..ef_backup::model::Event::new(ef_backup::model::EventKind::BackupStarted, started, "backup started (ef-backup backup)")
                        };
                        alerts.emit(&policy, &config.policy, &started_event);
                        let last_recorded_run = recording.last_recorded_run();
                        let previous = recording.previous();
                        let run_lock = Some(Arc::new(run_lock));
                        let opts = engine::BackupOptions { now: started, progress: !json, cancel, run_lock, last_recorded_run };
                        let report = engine::run(&config, &policy, s3.as_ref().map(|(_, s)| s as &dyn ef_backup::store::Mirror), opts);
                        recording.finish(&report);
                        emit_backup_events(&config, &policy, &alerts, &report, previous);
                        report
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        let report = e.into_report(None);
                        if matches!(report.outcome, ef_backup::model::BackupOutcome::Failed(_)) {
                            let recording = ef_backup::state::Recording::begin(&config, ef_backup::state::Trigger::Cli, started);
                            let previous = recording.previous();
                            recording.finish(&report);
                            emit_backup_events(&config, &policy, &alerts, &report, previous);
                        }
                        report
                    }
                };
                notify_rt.block_on(alerts.flush(NOTIFY_FLUSH));
                let response = policy.shape_backup_response(&report.outcome).unwrap_or_else(|e| {
                    tracing::error!("{e}");
                    policy::fallback_backup_response(&report.outcome)
                });
                if json {
                    println!("{}", response.body);
                } else {
                    cli::print_backup_summary(&report, &response);
                }
                if let Some(sig) = ef_backup::signals::received().filter(|_| !matches!(report.outcome, ef_backup::model::BackupOutcome::Done(_))) {
                    eprintln!("ef-backup: interrupted by signal {sig}; pg_dump was stopped and the partial backup file removed");
                    return Ok(ExitCode::from(exit::signalled(sig)));
                }
                Ok(ExitCode::from(exit::of_backup(&report)))
            }
            Command::Restore { all: true, from_s3, at, label, overwrite_roles, drop_existing, allow_system_db, load, .. } => {
                restore::drop_scratch_on_signal();
                let policy = load_policy(cli_policy, &config)?;
                let s3 = s3_store(&config)?;
                let tools = PgTools::for_maintenance(&config.db, config.pg_bin.as_deref())?;
                let all = cli::RestoreAll {
                    from_s3,
                    at,
                    label,
                    overwrite_roles,
                    drop_existing,
                    allow_system_db,
                    load: load.options(),
                    allow_unsigned: load.allow_unsigned,
                };
                let s3 = s3.as_ref().map(|(_, s)| Arc::new(s.clone()) as Arc<dyn ef_backup::store::Mirror>);
                cli::restore_all(&config, &policy, s3, &tools, all)
            }
            Command::Restore { backup, from_s3, target_db, create, drop_existing, allow_system_db, props, load, .. } => {
                restore::drop_scratch_on_signal();
                let (Some(backup), Some(target_db)) = (backup, target_db) else { anyhow::bail!("restore needs BACKUP and --target-db, or --all") };
                let s3 = s3_store(&config)?;
                let mut source = source(&config, s3.as_ref().map(|(_, s)| s), &backup, from_s3)?;
                let trust = ef_backup::provenance::establish(&mut source, &config.trusted_keys, load.allow_unsigned, Purpose::Load)?;
                // The target (EF__DB_NAME by default) may not exist yet: the restore creates it.
                let tools = PgTools::for_maintenance(&config.db, config.pg_bin.as_deref())?;
                let create_with = restore::props::CreateOptions {
                    owner: props.owner,
                    encoding: props.encoding,
                    locale: props.locale,
                    tablespace: props.tablespace,
                    connection_limit: props.connection_limit,
                    // From the load options, in restore.
                    ..Default::default()
                };
                let opts = restore::RestoreOptions { create, drop_existing, allow_system_db, create_with, load: load.options() };
                let report =
                    match restore::restore(&tools, &source, &target_db, &opts) {
                        Ok(r) => r,
                        Err(e @ restore::RestoreError::MissingRoles { .. }) => {
                            // The roles are in the globals backup of the same run, when there is one beside it.
                            let hint = globals_beside(&config, cli_policy.clone(), &source).map(|g| {
                        format!("\nthe globals backup of the same run is {g}: `ef-backup restore --all` restores its roles (and the run's databases)")
                    });
                            return Err(anyhow::anyhow!("{e}{}", hint.unwrap_or_default()));
                        }
                        Err(e) => return Err(e.into()),
                    };
                println!(
                    "restored {} into database {} ({} of SQL, {:.1} s; {}){}",
                    source.label(),
                    report.target,
                    cli::mb(report.check.dump_bytes),
                    report.elapsed.as_secs_f64(),
                    cli::load_summary(&report.check.load),
                    cli::replaced_note(report.replaced_existing, report.leftover.as_ref())
                );
                println!("  provenance: {}", trust.describe());
                // Values come from the backup file: shown escaped, so none can drive the terminal.
                for p in &report.properties {
                    println!("  {}: {} ({})", p.name, ef_backup::db::escape_controls(&p.value), ef_backup::db::escape_controls(&p.from));
                }
                if let Some(left) = &report.leftover {
                    println!("{}", cli::leftover_warning(&report.target, left));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Verify { backup, from_s3, against_dump, offline, json, load } => {
                restore::drop_scratch_on_signal();
                let s3 = s3_store(&config)?;
                let s3 = s3.as_ref().map(|(_, s)| s);
                // Needed to pick the newest backup, and to tell a named one's database; a named
                // backup of one database (EF__DB_NAME) verifies without it.
                let policy = load_policy(cli_policy, &config);
                let config = Config { policy: engine::resolved_view(&config), ..config };
                let backup = match backup {
                    Some(b) => b,
                    None => {
                        let policy = policy.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                        let local = LocalStore::new(&config.backup_dir);
                        let (store, place): (&dyn ef_backup::store::BackupStore, String) = match (from_s3, s3) {
                            (true, Some(s3)) => (s3, s3.url("")),
                            (true, None) => anyhow::bail!("--from-s3, but S3 is not configured"),
                            (false, _) => (&local, config.backup_dir.display().to_string()),
                        };
                        match catalog::newest(policy, &config, store, &place) {
                            Err(CatalogError::Empty { location }) => {
                                anyhow::bail!("no backups in {location} to verify (run `ef-backup backup` first)")
                            }
                            r => r?.backup.name,
                        }
                    }
                };
                let mut source = source(&config, s3, &backup, from_s3)?;
                let purpose = if offline { Purpose::Inspect } else { Purpose::Load };
                let trust = ef_backup::provenance::establish(&mut source, &config.trusted_keys, load.allow_unsigned, purpose)?;
                if offline {
                    let report = ef_backup::provenance::verify_offline(&source, &trust);
                    cli::print_offline(&report, json);
                    return Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
                }
                // Verify restores into a scratch database, made from `postgres` like a restore's.
                let tools = PgTools::for_maintenance(&config.db, config.pg_bin.as_deref())?;
                // The live database to compare with: the one the backup's name says (several are
                // backed up with EF__DB_NAMES), else EF__DB_NAME.
                let file_name = std::path::Path::new(&backup).file_name().and_then(|n| n.to_str()).unwrap_or(&backup);
                let named = policy.as_ref().ok().and_then(|p| p.parse_name(&config.policy, file_name).ok().flatten());
                let live = match named {
                    Some(info) if info.kind == ef_backup::model::BackupKind::Database => info.database,
                    _ if config.several_databases() => anyhow::bail!(
                        "cannot tell which database {backup} is a backup of (its name is not one of this deployment's dumps): \
                     verify it with EF__DB_NAME set to that database (and EF__DB_NAMES unset)"
                    ),
                    _ => config.db.name.clone(),
                };
                let report = verify::verify(&tools, &live, &source, against_dump, load.options())?;
                cli::print_verify(&report, json);
                if !json {
                    println!("provenance: {}", trust.describe());
                }
                Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            Command::List { json } => {
                let policy = load_policy(cli_policy, &config)?;
                let config = Config { policy: engine::resolved_view(&config), ..config };
                let location = config.backup_dir.display().to_string();
                let mut places = vec![catalog::place(&policy, &config, &LocalStore::new(&config.backup_dir), &location)?];
                // An unreachable store must not hide the local backups: they are listed, the S3
                // error follows, and the exit code (1) says the listing is incomplete.
                let mut s3_error = None;
                if let Some((_rt, s3)) = s3_store(&config)? {
                    match catalog::place(&policy, &config, &s3, &s3.url("")) {
                        Ok(place) => places.push(place),
                        Err(e @ CatalogError::List { .. }) => s3_error = Some(format!("S3 {e}")),
                        Err(e) => return Err(e.into()),
                    }
                }
                cli::print_list(&places, json);
                match s3_error {
                    None => Ok(ExitCode::SUCCESS),
                    Some(e) => {
                        // With --json, stdout stays one JSON document (the local rows).
                        if json {
                            eprintln!("ef-backup: {e}");
                        } else {
                            println!("{e}");
                        }
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            Command::Drill { backups, json } => {
                restore::drop_scratch_on_signal();
                let policy = load_policy(cli_policy, &config)?;
                let config = Config { policy: engine::resolved_view(&config), ..config };
                if let Err(why) = ef_backup::drills::availability(&config) {
                    anyhow::bail!("restore drills cannot run here: {why}");
                }
                let names = if backups.is_empty() {
                    let listing = LocalStore::new(&config.backup_dir).list().map_err(|e| anyhow::anyhow!("{e}"))?;
                    let ours = cli::recognised(&policy, &config.policy, &listing)?;
                    let ours: Vec<_> = ours.into_iter().map(|r| (ef_backup::model::BackupEntry::from(&r.backup), r.info)).collect();
                    let names = policy::fallback_drill_selection(&ours);
                    if names.is_empty() {
                        anyhow::bail!("no backups in {} to drill (run `ef-backup backup` first)", config.backup_dir.display());
                    }
                    names
                } else {
                    backups.iter().map(|b| cli::resolve_backup(&config, b).map(|p| p.display().to_string())).collect::<Result<Vec<_>>>()?
                };
                let (notify_rt, alerts) = start_alerts(&config)?;
                let state = ef_backup::state::StateStore::open(&config).map_err(|e| tracing::error!("{e}; this drill is not recorded")).ok();
                let drilled =
                    ef_backup::drills::run(&config, &policy, &config.policy, &names, ef_backup::state::Trigger::Cli, &alerts, state.as_ref());
                notify_rt.block_on(alerts.flush(NOTIFY_FLUSH));
                cli::print_drills(&drilled, json);
                if let Some(sig) = restore::interrupted_by() {
                    anyhow::bail!("interrupted by signal {sig}; the scratch database was dropped");
                }
                Ok(if !drilled.is_empty() && drilled.iter().all(ef_backup::drills::Drilled::passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            Command::History { limit, json } => {
                let state = ef_backup::state::StateStore::open(&config)?;
                cli::print_history(&state.recent(limit as usize)?, json);
                Ok(ExitCode::SUCCESS)
            }
            Command::Serve => {
                let path = policy_path(cli_policy, &config);
                serve::run(config, &path)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Policy { command: PolicyCommand::Check { path } } => {
                let path = policy_path(path.or(cli_policy), &config);
                let policy = WasmPolicy::load_cached(&path, config.policy_cache_dir.as_deref())?;
                let report = policy::check::run(&policy, &config.policy, now())?;
                for line in report.lines {
                    println!("{line}");
                }
                println!("ok: the policy answered every call with valid values");
                Ok(ExitCode::SUCCESS)
            }
            Command::Policy { command: PolicyCommand::Bench { path, rounds } } => {
                let path = policy_path(path.or(cli_policy), &config);
                let t = std::time::Instant::now();
                let policy = WasmPolicy::load(&path)?;
                let compile = t.elapsed();
                let cache = tempfile_dir()?;
                WasmPolicy::load_cached(&path, Some(&cache))?;
                let t = std::time::Instant::now();
                WasmPolicy::load_cached(&path, Some(&cache))?;
                let cached = t.elapsed();
                let _ = std::fs::remove_dir_all(&cache);
                let (mean, max, calls) = policy::check::bench(&policy, &config.policy, now(), rounds, 100)?;
                println!("policy load: compile {:.1} ms, from the compile cache {:.1} ms", compile.as_secs_f64() * 1e3, cached.as_secs_f64() * 1e3);
                println!(
                "policy calls per backup ({calls} calls, each a fresh instance, 100 backups listed): mean {:.3} ms, max {:.3} ms over {rounds} backups",
                mean.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
                Ok(ExitCode::SUCCESS)
            }
        }
    })();
    audit.finish(&result);
    result
}

/// A restore or verify as a run of the history (kind `restore` or `verify`, trigger `cli`).
struct Audit {
    open: Option<Audited>,
}

struct Audited {
    store: ef_backup::state::StateStore,
    id: Option<i64>,
    kind: ef_backup::state::RunKind,
    database: Option<String>,
    started: i64,
    detail: serde_json::Value,
    clock: std::time::Instant,
}

impl Audit {
    fn begin(config: &Config, command: &Command) -> Audit {
        use ef_backup::state::RunKind;
        let (kind, database, detail) = match command {
            Command::Restore { all: true, from_s3, .. } => (RunKind::Restore, None, serde_json::json!({"all": true, "from_s3": from_s3})),
            Command::Restore { backup, target_db, from_s3, .. } => {
                (RunKind::Restore, target_db.clone(), serde_json::json!({"backup": backup, "from_s3": from_s3}))
            }
            Command::Verify { backup, from_s3, offline, against_dump, .. } => {
                (RunKind::Verify, None, serde_json::json!({"backup": backup, "from_s3": from_s3, "offline": offline, "against_dump": against_dump}))
            }
            _ => return Audit { open: None },
        };
        let store = match ef_backup::state::StateStore::open(config) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}; this {} is not recorded in the history", kind.as_str());
                return Audit { open: None };
            }
        };
        let started = now();
        let id = store.begin_run(kind, ef_backup::state::Trigger::Cli, database.as_deref(), started).ok();
        Audit { open: Some(Audited { store, id, kind, database, started, detail, clock: std::time::Instant::now() }) }
    }

    fn finish(self, result: &Result<ExitCode>) {
        use ef_backup::state::{RunOutcome, RunRecord};
        let Some(Audited { store, id, kind, database, started, detail, clock }) = self.open else { return };
        let (outcome, message) = match result {
            Ok(code) if *code == ExitCode::SUCCESS => (RunOutcome::Ok, "ok".to_string()),
            Ok(_) => (RunOutcome::Failed, if kind == ef_backup::state::RunKind::Verify { "mismatch" } else { "failed" }.to_string()),
            Err(e) => (RunOutcome::Failed, format!("{e:#}")),
        };
        let finished = now();
        let r = RunRecord {
            finished_at: finished,
            outcome,
            file_name: None,
            size_bytes: None,
            duration_ms: clock.elapsed().as_millis() as u64,
            message,
            detail: Some(detail),
        };
        if let Err(e) = store.finish_run(id, kind, ef_backup::state::Trigger::Cli, database.as_deref(), started, &r) {
            tracing::warn!("{e}; this {} is missing from the history", kind.as_str());
        }
    }
}

/// How long a command waits for its notifications before it exits.
const NOTIFY_FLUSH: std::time::Duration = std::time::Duration::from_secs(60);

/// The notification channels of a one-shot command, on a runtime of their own so that delivery
/// goes on while the command works.
fn start_alerts(config: &Config) -> Result<(tokio::runtime::Runtime, ef_backup::alerts::Alerts)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("notify")
        .enable_all()
        .build()
        .context("cannot start the async runtime for notifications")?;
    let alerts = rt.block_on(async { ef_backup::alerts::Alerts::start(config, ef_backup::state::Trigger::Cli) });
    Ok((rt, alerts))
}

/// The events of a finished CLI backup, shaped by the policy and queued.
fn emit_backup_events(
    config: &Config,
    policy: &dyn ef_backup::policy::Policy,
    alerts: &ef_backup::alerts::Alerts,
    report: &engine::BackupReport,
    previous: Option<ef_backup::model::LastRun>,
) {
    if !alerts.is_active() {
        return;
    }
    let view = report.view.clone().unwrap_or_else(|| config.policy.clone());
    let recognised = LocalStore::new(&config.backup_dir)
        .list()
        .ok()
        .map(|l| l.iter().map(ef_backup::model::BackupEntry::from).collect::<Vec<_>>())
        .and_then(|entries| policy.recognise(&view, &entries).ok())
        .unwrap_or_default();
    let changes = ef_backup::events::size_changes(report, &config.backup_dir, &recognised);
    for event in ef_backup::events::of_backup(report, now(), &view.databases, previous, changes) {
        alerts.emit(policy, &view, &event);
    }
}

/// The signal that stopped a `backup`, if one did.
/// For `backup`: SIGINT and SIGTERM cancel the run (pg_dump's process group is killed, the
/// `.partial` file removed, the S3 upload aborted) instead of killing the process mid-write and
/// leaving the partial file behind. A signal after the dump finished lets the run complete.
fn cancel_backup_on_signal() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    ef_backup::signals::on_first(move |sig| {
        flag.store(true, Ordering::SeqCst);
        eprintln!("ef-backup: interrupted by signal {sig}: stopping the backup (a second signal ends ef-backup at once)");
    });
    cancel
}

fn main() -> ExitCode {
    // The password comes only from EF__DB_PASSWORD: child tools get PGPASSWORD removed, and
    // the in-process libpq (restore's COPY path) must not fall back to a stray one either.
    // Done first, while this is the only thread.
    std::env::remove_var("PGPASSWORD");
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole cause chain; never a backtrace.
            eprintln!("ef-backup: error: {e:#}");
            match restore::interrupted_by() {
                Some(sig) => {
                    eprintln!("ef-backup: interrupted by signal {sig}; the scratch database was dropped, the target is as it was");
                    ExitCode::from(128 + sig as u8)
                }
                None => ExitCode::FAILURE,
            }
        }
    }
}
