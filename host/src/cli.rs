//! Human-readable output of the command-line tool.

use crate::catalog::Place;
use crate::config::Config;
use crate::engine::BackupReport;
use crate::model::{BackupOutcome, HttpResponse, S3Outcome, Target};
use crate::verify::{Kind, Outcome, VerifyReport};

pub use crate::catalog::{recognised, Recognised};
pub use crate::util::format_time;

pub use crate::util::mb;

pub fn print_backup_summary(report: &BackupReport, response: &HttpResponse) {
    let message = serde_json::from_str::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_default();
    match &report.outcome {
        BackupOutcome::Done(d) => {
            println!("{message}");
            println!("  file:      {}", d.path);
            let ratio = if d.size_bytes > 0 { report.dump_bytes as f64 / d.size_bytes as f64 } else { 0.0 };
            println!("  size:      {} (dump {}, {ratio:.1}:1)", mb(d.size_bytes), mb(report.dump_bytes));
            println!("  took:      {:.1} s", report.elapsed.as_secs_f64());
            match &d.s3 {
                S3Outcome::Disabled => println!("  S3:        disabled"),
                S3Outcome::Uploaded(url) => println!("  S3:        {url}"),
                S3Outcome::Failed(e) => println!("  S3:        upload FAILED: {e}"),
            }
            println!("  retention: {} old local backup(s) deleted", report.retention.deleted.len());
            if let Some(e) = &report.retention.error {
                println!("  retention problem: {e}");
            }
            if matches!(d.s3, S3Outcome::Uploaded(_)) {
                println!("  S3 retention: {} old backup(s) deleted", report.s3_retention.deleted.len());
            }
            if let Some(e) = &report.s3_retention.error {
                println!("  S3 retention problem: {e}");
            }
        }
        BackupOutcome::Failed(f) => eprintln!("ef-backup: error: {}", if message.is_empty() { &f.message } else { &message }),
        BackupOutcome::Busy(name) => eprintln!("ef-backup: error: a backup is already running: {name}"),
        BackupOutcome::Several(run) => {
            println!("{message}");
            for e in &run.entries {
                let what = format!("{} ({})", e.database, crate::policy::kind_id(e.kind));
                match &e.outcome {
                    Ok(d) => {
                        let s3 = match &d.s3 {
                            S3Outcome::Disabled => String::new(),
                            S3Outcome::Uploaded(_) => ", uploaded to S3".into(),
                            S3Outcome::Failed(e) => format!(", S3 upload FAILED: {e}"),
                        };
                        println!("  ok      {what:<32} {} ({}{s3})", d.path, mb(d.size_bytes));
                    }
                    Err(f) => println!("  FAILED  {what:<32} {}", f.message),
                }
            }
            println!("  took:      {:.1} s", report.elapsed.as_secs_f64());
            println!("  retention: {} old local backup(s) deleted, {} in S3", report.retention.deleted.len(), report.s3_retention.deleted.len());
        }
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
}

pub fn print_list(places: &[Place], json: bool) {
    let foreign: usize = places.iter().map(|p| p.foreign).sum();
    if json {
        let rows: Vec<serde_json::Value> = places
            .iter()
            .flat_map(|p| {
                p.backups.iter().map(move |r| {
                    serde_json::json!({"name": r.backup.name, "location": p.target.id(),
                        "url": format!("{}{}{}", p.location, if p.target == Target::S3 || p.location.ends_with('/') { "" } else { "/" }, r.backup.name),
                        "size_bytes": r.backup.size_bytes, "created_at": r.info.run_at, "modified_at": r.backup.modified,
                        "format": format_of(&r.backup.name).map(|f| f.id()),
                        "encrypted": format_of(&r.backup.name).map(|f| f.encrypted),
                        "manifest": r.backup.manifest})
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!("{:<48} {:>12}  {:<24} {:<9} {:<9} where", "backup", "size", "created", "format", "manifest");
    for p in places {
        for r in &p.backups {
            let format = format_of(&r.backup.name).map_or_else(|| "?".to_string(), |f| f.describe());
            let manifest = if r.backup.manifest { "yes" } else { "no" };
            println!(
                "{:<48} {:>12}  {:<24} {:<9} {:<9} {}",
                r.backup.name,
                mb(r.backup.size_bytes),
                format_time(r.info.run_at),
                format,
                manifest,
                p.target.id()
            );
        }
    }
    for p in places {
        println!("{} backup(s) in {}", p.backups.len(), p.location);
    }
    if foreign > 0 {
        println!("({foreign} other backup file(s) there are not this policy's and are left alone)");
    }
}

fn format_of(name: &str) -> Option<crate::codec::Format> {
    crate::codec::Format::of_name(name)
}

/// A backup argument: an existing path, or a file name in the backup directory.
pub fn resolve_backup(config: &Config, arg: &str) -> anyhow::Result<std::path::PathBuf> {
    let as_path = std::path::Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let in_dir = config.backup_dir.join(arg);
    if !arg.contains('/') && in_dir.is_file() {
        return Ok(in_dir);
    }
    anyhow::bail!("backup {arg:?} not found (neither a file nor a backup in {}; see `ef-backup list`)", config.backup_dir.display())
}

pub fn print_offline(report: &crate::provenance::OfflineReport, json: bool) {
    if json {
        let checks: Vec<serde_json::Value> =
            report.checks.iter().map(|c| serde_json::json!({"check": c.what, "ok": c.ok, "detail": c.detail})).collect();
        println!(
            "{}",
            serde_json::json!({"backup": report.backup, "ok": report.ok(), "manifest": report.manifest, "signed": report.signed, "checks": checks})
        );
        return;
    }
    println!("verify --offline {}", report.backup);
    for c in &report.checks {
        println!("  {:<13} {} — {}", c.what, if c.ok { "ok" } else { "FAILED" }, crate::db::escape_controls(&c.detail));
    }
    println!("{}", report.verdict());
}

pub fn print_verify(report: &VerifyReport, json: bool) {
    if json {
        let tables: Vec<serde_json::Value> = report
            .tables
            .iter()
            .map(|t| {
                serde_json::json!({"table": t.table, "restored_rows": t.restored, "reference_rows": t.reference,
                "checksum_equal": t.checksum_equal, "ok": t.ok()})
            })
            .collect();
        let kinds: Vec<serde_json::Value> = report
            .kinds
            .iter()
            .map(|k| {
                serde_json::json!({"kind": k.kind.key(), "result": k.outcome.label(), "ok": k.outcome != Outcome::Mismatch,
                "restored": k.restored, "reference": k.reference, "summary": k.summary, "differences": k.differences})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"backup": report.backup, "reference": report.reference, "ok": report.ok(), "tables": tables, "kinds": kinds})
        );
        return;
    }
    let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "missing".into());
    println!("{:<44} {:>12} {:>12}  {:<9} result", "table", "restored", "reference", "checksum");
    for t in &report.tables {
        let sum = match t.checksum_equal {
            Some(true) => "equal",
            Some(false) => "DIFFERS",
            None => "-",
        };
        println!("{:<44} {:>12} {:>12}  {:<9} {}", t.table, n(t.restored), n(t.reference), sum, if t.ok() { "ok" } else { "MISMATCH" });
    }
    println!();
    let count = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    println!("{:<14} {:<12} {:>9} {:>10}  compared", "kind", "result", "restored", "reference");
    for k in &report.kinds {
        println!("{:<14} {:<12} {:>9} {:>10}  {}", k.kind.label(), k.outcome.label(), count(k.restored), count(k.reference), k.summary);
        for d in &k.differences {
            println!("    {d}");
        }
    }
    let bad: Vec<&str> = report.mismatched().into_iter().map(Kind::label).collect();
    if report.ok() {
        println!(
            "verify: OK — {} restores; all {} tables and every other kind compared match {}",
            report.backup,
            report.tables.len(),
            report.reference
        );
    } else if report.tables.is_empty() {
        println!("verify: FAILED — {} restored no tables", report.backup);
    } else {
        println!("verify: FAILED — MISMATCH in {} against {}", bad.join(", "), report.reference);
    }
}

/// What became of the database a restore replaced, for the end of its summary line.
pub fn replaced_note(replaced_existing: bool, leftover: Option<&crate::restore::swap::Leftover>) -> String {
    match (replaced_existing, leftover) {
        (_, Some(left)) => format!("; its previous contents are still there as database {} (see the warning)", left.name),
        (true, None) => "; its previous contents were dropped".into(),
        (false, None) => String::new(),
    }
}

/// The warning for a replaced database that could not be dropped.
pub fn leftover_warning(target: &str, left: &crate::restore::swap::Leftover) -> String {
    format!(
        "warning: the previous contents of {} are still there as database {}: {} — drop it by hand (DROP DATABASE {} WITH (FORCE);) once the restore is checked",
        crate::db::escape_controls(target),
        left.name,
        left.err,
        crate::db::quote_ident(&left.name)
    )
}

/// How a dump was loaded, for the restore's summary line.
pub fn load_summary(load: &crate::restore::parallel::LoadStats) -> String {
    let mut parts = vec![format!(
        "{} session{}: {} COPY batches, {} tables read ahead, {} parallel builds",
        load.sessions,
        if load.sessions == 1 { "" } else { "s" },
        load.copy_batches,
        load.tables_read_ahead,
        load.parallel_builds
    )];
    if load.owner_statements_skipped > 0 {
        parts.push(format!("{} OWNER TO statements left out", load.owner_statements_skipped));
    }
    if load.privilege_statements_skipped > 0 {
        parts.push(format!("{} GRANT/REVOKE statements left out", load.privilege_statements_skipped));
    }
    parts.join(", ")
}

/// Opens a listed backup of the store `restore --all` reads.
type Opener = Box<dyn Fn(&str) -> crate::restore::Source>;

/// What `restore --all` was asked.
pub struct RestoreAll {
    pub from_s3: bool,
    pub at: Option<i64>,
    pub label: Option<String>,
    pub overwrite_roles: bool,
    pub drop_existing: bool,
    pub allow_system_db: bool,
    pub load: crate::restore::parallel::LoadOptions,
    pub allow_unsigned: bool,
}

/// `restore --all`: the globals of a set, then each of its databases (each atomically, as a
/// single restore). Exit code 0 when every database came back; the globals' problems (a
/// statement the server refused, a tablespace directory missing) are reported and do not stop
/// the databases.
pub fn restore_all(
    config: &Config,
    policy: &dyn crate::policy::Policy,
    s3: Option<std::sync::Arc<dyn crate::store::Mirror>>,
    tools: &crate::db::PgTools,
    args: RestoreAll,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::restore::{self, all, globals, Source};
    use crate::store::local::LocalStore;
    use crate::store::BackupStore;
    let local = LocalStore::new(&config.backup_dir);
    let keys = config.keys.clone();
    let (listing, location, open): (Vec<crate::store::StoredBackup>, String, Opener) = match (args.from_s3, &s3) {
        (true, None) => anyhow::bail!("--from-s3, but S3 is not configured"),
        (true, Some(s3)) => {
            let store = std::sync::Arc::clone(s3);
            let listing = s3.list_backups().map_err(|e| anyhow::anyhow!("{}: could not be listed: {e}", s3.url("")))?;
            (listing, s3.url(""), Box::new(move |name: &str| Source::store(std::sync::Arc::clone(&store), name, &keys)))
        }
        (false, _) => {
            let listing = local.list_backups().map_err(|e| anyhow::anyhow!("{}: could not be listed: {e}", config.backup_dir.display()))?;
            let dir = config.backup_dir.clone();
            (listing, dir.display().to_string(), Box::new(move |name: &str| Source::file(dir.join(name), &keys)))
        }
    };
    // The old server's label: given, configured, or (restoring onto the same server) this one's.
    let view = match &args.label {
        Some(label) => crate::model::PolicyConfig { globals_label: Some(label.clone()), ..config.policy.clone() },
        None => crate::engine::resolved_view(config),
    };
    let set = all::choose(policy, &view, &listing, &location, args.at, &*open)?;
    println!(
        "restoring the set taken at {} ({}) from {location}: globals {}, then {} database(s)",
        set.run_at,
        format_time(set.run_at),
        set.globals.backup.name,
        set.dumps.len()
    );
    // Every file of the set is checked before anything is restored: a set is trusted whole.
    // A signed file's bytes are checked then and pinned, so what is restored is what was
    // checked (the globals are applied statement by statement as they are read).
    let trusted = |name: &str| -> anyhow::Result<Source> {
        let mut source = open(name);
        let trust = crate::provenance::establish(&mut source, &config.trusted_keys, args.allow_unsigned, crate::provenance::Purpose::Load)?;
        println!("  {name}: {}", trust.describe());
        Ok(source)
    };
    let globals_source = trusted(&set.globals.backup.name)?;
    let dump_sources = set.dumps.iter().map(|d| trusted(&d.backup.name)).collect::<anyhow::Result<Vec<Source>>>()?;
    let report = globals::restore_globals(tools, &globals_source, globals::GlobalsOptions { overwrite_roles: args.overwrite_roles })?;
    let esc = |s: &str| crate::db::escape_controls(s);
    let names = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.iter().map(|r| esc(r)).collect::<Vec<_>>().join(", ") };
    println!("  roles created: {}", names(&report.created_roles));
    if !report.existing_roles.is_empty() {
        println!(
            "  roles already there, left exactly as they were: {} (--overwrite-roles gives them the backup's attributes)",
            names(&report.existing_roles)
        );
    }
    if !report.overwritten_roles.is_empty() {
        println!("  roles already there, given the backup's attributes: {}", names(&report.overwritten_roles));
    }
    println!(
        "  memberships added: {}, role settings added: {}, tablespaces created: {}",
        report.memberships_added,
        report.settings_added,
        names(&report.tablespaces_created)
    );
    let taken_without = report.header.as_ref().is_some_and(|h| !h.passwords);
    if taken_without || !report.without_password.is_empty() {
        let why = if taken_without { "the backup was taken without role passwords" } else { "they had none in the backup" };
        println!("  roles that can log in but got no password ({why}): {} — set them with ALTER ROLE … PASSWORD", names(&report.without_password));
    }
    for p in &report.problems {
        println!("  problem: {}", esc(p));
    }
    let (mut failed, mut restored, mut skipped) = (Vec::new(), 0, 0);
    for (dump, source) in set.dumps.iter().zip(&dump_sources) {
        let db = &dump.info.database;
        let opts = restore::RestoreOptions {
            create: true,
            drop_existing: args.drop_existing,
            allow_system_db: args.allow_system_db,
            create_with: Default::default(),
            load: args.load,
        };
        match restore::restore(tools, source, db, &opts) {
            Ok(r) => {
                restored += 1;
                println!(
                    "  database {}: restored from {} ({:.1} s; {}){}",
                    esc(db),
                    dump.backup.name,
                    r.elapsed.as_secs_f64(),
                    load_summary(&r.check.load),
                    replaced_note(r.replaced_existing, r.leftover.as_ref())
                );
                if let Some(left) = &r.leftover {
                    println!("  {}", leftover_warning(db, left));
                }
            }
            // `postgres` of an `EF__DB_NAMES=*` run: the new server has its own.
            Err(e @ restore::RestoreError::SystemDb { .. }) => {
                skipped += 1;
                println!("  database {}: skipped: {e}", esc(db))
            }
            Err(e) => {
                println!("  database {}: FAILED: {e}", esc(db));
                failed.push(db.clone());
            }
        }
        if let Some(sig) = restore::interrupted_by() {
            anyhow::bail!("interrupted by signal {sig}; the databases restored so far stay, the one in progress was dropped");
        }
    }
    let skipped = if skipped > 0 { format!(", {skipped} system database(s) skipped") } else { String::new() };
    if failed.is_empty() {
        println!("done: the globals and {restored} database(s) restored{skipped}");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("{} of {} database(s) failed: {}; {restored} restored{skipped}", failed.len(), set.dumps.len(), names(&failed));
        Ok(std::process::ExitCode::FAILURE)
    }
}

/// `ef-backup drill`: one block per backup, then the verdict.
pub fn print_drills(drilled: &[crate::drills::Drilled], json: bool) {
    if json {
        let rows: Vec<serde_json::Value> = drilled
            .iter()
            .map(|d| {
                let mut v = match &d.result {
                    Ok(r) => r.detail(),
                    Err(e) => serde_json::json!({"error": e}),
                };
                v["backup"] = serde_json::json!(d.backup);
                v["database"] = serde_json::json!(d.database);
                v["ok"] = serde_json::json!(d.passed());
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    // Names and messages come from the backup and the server: shown escaped, so none can
    // drive the terminal.
    let esc = |s: &str| crate::db::escape_controls(s);
    for d in drilled {
        match &d.result {
            Ok(r) => {
                println!("{}: {}", if r.passed() { "PASSED" } else { "FAILED" }, esc(&r.backup));
                println!("  restored on:   {}", esc(&r.server));
                println!("  checked with:  {}", r.reference);
                println!("  restore:       {:.1} s ({} of SQL from {})", r.restore_seconds, mb(r.dump_bytes), mb(r.stored_bytes));
                println!("  verify:        {:.1} s ({} tables, {} rows)", r.verify_seconds, r.tables, r.rows);
                for p in &r.problems {
                    println!("  DIFFERENCE:    {}", esc(p));
                }
                if r.problem_count > r.problems.len() {
                    println!("  … and {} more", r.problem_count - r.problems.len());
                }
                for n in &r.notes {
                    println!("  note:          {}", esc(n));
                }
            }
            Err(e) => println!("FAILED: {}\n  {}", esc(&d.backup), esc(e)),
        }
    }
    let failed = drilled.iter().filter(|d| !d.passed()).count();
    if failed == 0 {
        println!("drill: OK — {} backup(s) restore faithfully", drilled.len());
    } else {
        println!("drill: FAILED — {failed} of {} backup(s) did not restore as they should", drilled.len());
    }
}

/// `ef-backup history`.
pub fn print_history(runs: &[crate::state::HistoryEntry], json: bool) {
    if json {
        println!("{}", serde_json::to_string(runs).unwrap_or_else(|_| "[]".into()));
        return;
    }
    println!("{:<23} {:<12} {:<9} {:<11} {:<16} {:>8}  message", "started", "kind", "trigger", "outcome", "database", "took");
    for r in runs {
        let took = r.duration_ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let message = crate::db::escape_controls(r.message.as_deref().unwrap_or(""));
        let message: String = message.chars().take(160).collect();
        println!(
            "{:<23} {:<12} {:<9} {:<11} {:<16} {:>8}  {}",
            format_time(r.started_at),
            r.kind,
            r.trigger,
            r.outcome.as_deref().unwrap_or("running"),
            crate::db::escape_controls(r.database.as_deref().unwrap_or("-")),
            took,
            message
        );
    }
    if runs.is_empty() {
        println!("(no runs recorded yet)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::swap::Leftover;

    /// A replaced database that could not be dropped was reported as "its previous contents
    /// were dropped" next to a warning saying they were still there, and `restore --all` did
    /// not mention it at all (found by review).
    #[test]
    fn a_replaced_database_left_behind_is_named_not_called_dropped() {
        let left = Leftover { name: "ef_replaced_1_2".into(), err: crate::db::DbError::Tool { tool: "libpq".into(), detail: "fake".into() } };
        assert_eq!(replaced_note(true, None), "; its previous contents were dropped");
        assert_eq!(replaced_note(false, None), "");
        let note = replaced_note(true, Some(&left));
        assert!(note.contains("still there as database ef_replaced_1_2") && !note.contains("dropped"), "{note}");
        let warning = leftover_warning("app\u{1b}[2J", &left);
        assert!(warning.contains("ef_replaced_1_2") && warning.contains(r#"DROP DATABASE "ef_replaced_1_2" WITH (FORCE);"#), "{warning}");
        assert!(!warning.contains('\u{1b}'), "{warning}");
    }
}
