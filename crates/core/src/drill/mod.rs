//! Restore drills: prove a backup restores, without the live database (which has moved on since
//! the backup), on a server that is not production — a throwaway cluster of our own
//! ([`cluster`]), or `EF__DRILL_DB_*`.
//!
//! A drill restores the backup into a scratch database and compares what came back with what the
//! backup says it holds: with a manifest, the stored bytes' SHA-256 and every table's row count
//! and content hash (recomputed with `COPY … TO STDOUT` under the dump's own session settings,
//! so the rows render to the same text), every sequence and every large object; without one (a
//! backup written before manifests), the row counts, sequences and large objects of the dump's
//! own COPY blocks and calls. The scratch database is always dropped, the throwaway server
//! stopped and removed.

pub mod cluster;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use crate::config::drill::DrillPlace;
use crate::config::DbConfig;
use crate::db::{quote_ident, quote_literal, DbError, PgTools};
use crate::manifest::Content;
use crate::provenance::{self, ProvenanceError, Purpose, Trust};
use crate::restore::parallel::LoadOptions;
use crate::restore::{self, RestoreError, Source, MAINTENANCE_DB};
use crate::sign::TrustedKeys;

/// The role the backup's SQL runs as on a throwaway server: no superuser, so nothing the
/// backup's own functions do during the load (a CHECK constraint or index expression calling
/// `COPY … TO PROGRAM`) reaches the OS; it owns the scratch database and is a member of the
/// roles the backup names, so owners and grants restore as on production.
pub const LOADER: &str = "ef_drill_loader";

/// At most this many differences are listed in a report.
const MAX_PROBLEMS: usize = 20;

/// The settings a drill session may take from a manifest (anything else in it is ignored: an
/// unsigned manifest is untrusted input). Not `search_path`: it is always empty (as pg_dump has
/// it), so no name the backup created can stand in for a catalog function or operator.
const COPY_SETTINGS: [&str; 8] =
    ["datestyle", "intervalstyle", "extra_float_digits", "row_security", "timezone", "bytea_output", "lc_monetary", "client_encoding"];

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Provenance(#[from] ProvenanceError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the drill server: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("reading the restored database {db} failed: {err} (the drill server broke off; run the drill again)")]
    Read { db: String, err: String },
    #[error("the drill server {drill} is the production server {production} or a replica of it (both report system identifier {id}): a drill runs the backup's SQL, so it needs a server of its own — point EF__DRILL_DB_HOST at another server, or unset it to drill on a throwaway server ef-backup starts itself")]
    ProductionServer { drill: String, production: String, id: String },
}

/// What one drill found and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillReport {
    pub backup: String,
    /// The database the backup is of, as its manifest says (None without one).
    pub database: Option<String>,
    /// Where it was restored: "a throwaway PostgreSQL 15 server", or the drill server.
    pub server: String,
    /// What the restore was compared with: "its signed manifest", "its manifest (unsigned)",
    /// "its dump's COPY blocks (no manifest)".
    pub reference: String,
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    pub tables: usize,
    pub rows: u64,
    /// The plain dump's size (the SQL that was run).
    pub dump_bytes: u64,
    pub stored_bytes: u64,
    /// Every difference found, the first [`MAX_PROBLEMS`]; empty when the drill passed.
    pub problems: Vec<String>,
    /// How many differences there were in all.
    pub problem_count: usize,
    /// What was not compared, and why.
    pub notes: Vec<String>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.problem_count == 0
    }

    /// One line for logs, history and notifications.
    pub fn summary(&self) -> String {
        let head = format!(
            "{}: restored in {:.1} s on {} and checked against {} in {:.1} s ({} tables, {} rows)",
            self.backup, self.restore_seconds, self.server, self.reference, self.verify_seconds, self.tables, self.rows
        );
        if self.passed() {
            format!("{head}: OK")
        } else {
            format!("{head}: {} difference(s): {}", self.problem_count, self.problems.join("; "))
        }
    }

    /// The history's detail of this drill.
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.server, "reference": self.reference,
            "restore_seconds": self.restore_seconds, "verify_seconds": self.verify_seconds,
            "tables": self.tables, "rows": self.rows, "dump_bytes": self.dump_bytes, "stored_bytes": self.stored_bytes,
            "problems": self.problems, "problem_count": self.problem_count, "notes": self.notes,
        })
    }
}

/// The major version of the server a backup was dumped from: from its manifest, else from the
/// dump's head (`-- Dumped from database version 15.18 …`).
fn dumped_from_major(source: &Source, trust: &Trust) -> Result<Option<u32>, RestoreError> {
    let from_text = |v: &str| v.split(['.', ' ']).next().and_then(|m| m.parse::<u32>().ok());
    if let Some(v) = trust.manifest().and_then(|m| m.server_version.as_deref()) {
        return Ok(from_text(v));
    }
    let mut head = Vec::with_capacity(64 * 1024);
    source.decoded()?.take(64 * 1024).read_to_end(&mut head).map_err(|e| RestoreError::Open { backup: source.label(), err: e.to_string() })?;
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().find_map(|l| l.strip_prefix("-- Dumped from database version ")).and_then(from_text))
}

/// The configuration refuses the production server's host and port as the drill server; another
/// name for it (`localhost` for `127.0.0.1`, a DNS alias) or a replica of it is found here by the
/// cluster's system identifier. Checked only when both servers tell it: a production server that
/// is down, or a role that may not read it, must not stop a drill.
fn refuse_production(drill: &PgTools, server: &str, production: &DbConfig) -> Result<(), DrillError> {
    const IDENTIFIER: &str = "SELECT system_identifier::text FROM pg_control_system()";
    let Ok(here) = drill.query_value(MAINTENANCE_DB, IDENTIFIER) else { return Ok(()) };
    // One query over libpq: production's client tools need not be installed on the drill host.
    let there = PgTools::queries_only(production).query_value(&production.name, IDENTIFIER);
    match there {
        Ok(id) if !id.is_empty() && id == here => {
            Err(DrillError::ProductionServer { drill: server.to_string(), production: format!("{}:{}", production.host, production.port), id })
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!("cannot tell whether the drill server is the production server: {e}");
            Ok(())
        }
    }
}

/// Restores `source` on `place` and checks it. `Err` when the drill could not run or the backup
/// did not restore; `Ok` with problems when it restored differently from what it says.
pub fn drill(
    source: &mut Source,
    trusted: &TrustedKeys,
    place: &DrillPlace,
    production: &DbConfig,
    pg_bin: Option<&Path>,
) -> Result<DrillReport, DrillError> {
    // A drill runs the backup's SQL: an untrusted backup is refused like a restore refuses it.
    let trust = provenance::establish(source, trusted, false, Purpose::Load)?;
    let reference = match &trust {
        Trust::Signed { .. } => "its signed manifest",
        Trust::NotRequired { manifest: Some(_) } | Trust::Overridden { manifest: Some(_), .. } => "its manifest (signature not checked)",
        _ => "its dump's COPY blocks (no manifest)",
    };
    let content = match trust.manifest() {
        Some(m) => Some(m.open_content(&source.keys).map_err(|e| RestoreError::Key { backup: source.label(), reason: e.to_string() })?),
        None => None,
    };
    // Every backup this release writes has a manifest: one that is there but unusable (cut
    // off, not JSON, a bad hash) is damage, not an older backup, and must not lower the bar to
    // row counts.
    if content.is_none() {
        let present = source.companion(crate::manifest::MANIFEST_SUFFIX, crate::manifest::MANIFEST_MAX);
        if !matches!(present, Ok(None)) {
            let why = match present {
                Err(e) => e,
                _ => "it cannot be read as a manifest ef-backup wrote (see the warning above)".into(),
            };
            return Err(RestoreError::Damaged { backup: source.label(), reason: format!("its manifest is unusable: {why}") }.into());
        }
    }
    match place {
        DrillPlace::Server(db) => {
            let tools = PgTools::for_maintenance(db, pg_bin)?;
            let server = format!("drill server {}:{}", db.host, db.port);
            refuse_production(&tools, &server, production)?;
            run(&tools, &tools, source, &trust, content.as_ref(), reference, server, false)
        }
        DrillPlace::Throwaway { os_user } => {
            let major = dumped_from_major(source, &trust)?;
            let bins = server_bins(major, pg_bin)?;
            let server = format!("a throwaway PostgreSQL {} server", bins.major);
            let throwaway = cluster::Throwaway::start(&bins, os_user, None)?;
            let db = DbConfig {
                host: throwaway.socket_dir().display().to_string(),
                port: throwaway.port(),
                name: MAINTENANCE_DB.into(),
                user: throwaway.superuser().into(),
                password: None,
            };
            let result = (|| {
                let admin = PgTools::for_maintenance(&db, Some(&bins.dir))?;
                admin.execute(MAINTENANCE_DB, &format!("CREATE ROLE {LOADER} LOGIN CREATEDB NOSUPERUSER"))?;
                let loader = PgTools::for_maintenance(&DbConfig { user: LOADER.into(), ..db.clone() }, Some(&bins.dir))?;
                run(&admin, &loader, source, &trust, content.as_ref(), reference, server, true)
            })();
            // The server goes whatever happened; a failure to stop it is logged, not the verdict.
            if let Err(e) = throwaway.stop() {
                tracing::warn!("{e}");
            }
            result
        }
    }
}

/// The server binaries for a dump of `major`: that major's, else the nearest newer one installed
/// (a newer server restores an older plain dump); for an unknown major, the newest installed.
fn server_bins(major: Option<u32>, pg_bin: Option<&Path>) -> Result<cluster::ServerBins, cluster::ClusterError> {
    const NEWEST: u32 = 40;
    let first_err = match cluster::find_server_bins(major.unwrap_or(NEWEST), pg_bin) {
        Ok(bins) => return Ok(bins),
        Err(e) => e,
    };
    let others: Vec<u32> = match major {
        Some(m) => (m + 1..=NEWEST).collect(),
        None => (13..NEWEST).rev().collect(),
    };
    for m in others {
        if let Ok(bins) = cluster::find_server_bins(m, pg_bin) {
            tracing::info!("drill: no PostgreSQL {} server binaries; using {m}'s", major.map_or("?".into(), |m| m.to_string()));
            return Ok(bins);
        }
    }
    Err(first_err)
}

/// Restores and checks with `loader` (the backup's SQL runs as it); `admin` only creates the roles the backup names and the template that lets them own objects in `public`.
#[allow(clippy::too_many_arguments)]
fn run(
    admin: &PgTools,
    loader: &PgTools,
    source: &Source,
    trust: &Trust,
    content: Option<&Content>,
    reference: &str,
    server: String,
    own_server: bool,
) -> Result<DrillReport, DrillError> {
    let mut notes = Vec::new();
    // Owners and grants name roles of the production server. On our own throwaway server they
    // are created (without login), so the restore runs as the real one would; on a shared
    // drill server ownership and grants are left out instead when roles are missing.
    let properties = restore::backup_properties(source)?;
    let mut load = LoadOptions::default();
    // Roles created here, which will own objects in the pre-existing schema `public`.
    let mut created: Vec<String> = Vec::new();
    match &properties {
        Some(p) => {
            let (owners, grantees) = restore::props::missing_roles(admin, MAINTENANCE_DB, &p.object_roles, false, false)?;
            let mut missing: Vec<String> = owners.into_iter().chain(grantees).collect();
            missing.sort();
            missing.dedup();
            if !missing.is_empty() && own_server {
                // Plain roles, no login, nothing but membership for the loader: whatever the
                // backup names, it cannot make the loader more than it is.
                for role in &missing {
                    let role = quote_ident(role);
                    admin.execute(MAINTENANCE_DB, &format!("CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"))?;
                    admin.execute(MAINTENANCE_DB, &format!("GRANT {role} TO {LOADER}"))?;
                }
                created = missing;
            } else if !missing.is_empty() {
                load.no_owner = true;
                load.no_privileges = true;
                notes.push(format!("owners and grants left out: the drill server lacks the roles {}", missing.join(", ")));
            }
        }
        None => {
            load.no_owner = true;
            load.no_privileges = true;
            notes.push("owners and grants left out: the backup does not list the roles it names".into());
        }
    }
    // The database is created as the backup's had it where that matters for the text of its
    // rows (the encoding); the C locale accepts every encoding.
    let scratch_db = restore::scratch_name("drill");
    let encoding = properties.as_ref().map(|p| format!(" ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C'", quote_literal(&p.encoding))).unwrap_or_default();
    let template = if created.is_empty() {
        "template0".to_string()
    } else {
        // `ALTER … OWNER TO r` needs r to have CREATE on the object's schema; on production the
        // owners usually have it on `public` (its owner, a superuser, PostgreSQL 14's default),
        // on a new PostgreSQL 15 database only the database owner does. A template of our own
        // gives the roles the backup names that right in `public`.
        let template = restore::scratch_name("drilltpl");
        admin.execute(MAINTENANCE_DB, &format!("CREATE DATABASE {} TEMPLATE template0{encoding} IS_TEMPLATE true", quote_ident(&template)))?;
        let roles: Vec<String> = created.iter().map(|r| quote_ident(r)).collect();
        admin.execute(&template, &format!("GRANT CREATE ON SCHEMA public TO {}", roles.join(", ")))?;
        template
    };
    let create_sql = if created.is_empty() {
        format!("CREATE DATABASE {} TEMPLATE template0{encoding}", quote_ident(&scratch_db))
    } else {
        format!("CREATE DATABASE {} TEMPLATE {}", quote_ident(&scratch_db), quote_ident(&template))
    };
    tracing::info!("drill: restoring {} into {scratch_db} on {server}", source.label());
    let started = Instant::now();
    let (scratch, check) = restore::restore_into_new(loader, source, &scratch_db, &create_sql, load, restore::Facts::Collect)?;
    let restore_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut problems = Vec::new();
    let (tables, rows) = match content {
        Some(want) => {
            // The stream itself against the manifest first: a dump that says something else
            // than its manifest is wrong whatever the database makes of it.
            let session: BTreeMap<String, String> =
                want.copy_settings.iter().filter(|(k, _)| k.as_str() != "client_encoding").map(|(k, v)| (k.clone(), v.clone())).collect();
            let (_, lines) = Content::of(&check.facts, &session).differences(want, MAX_PROBLEMS);
            problems.extend(lines.into_iter().map(|l| format!("the dump's stream: {l}")));
            compare(loader, &scratch.name, want, true, &mut problems)?
        }
        None => {
            notes.push("table contents compared by row count only: without a manifest the dump session's TimeZone is unknown".into());
            let want = Content::of(&check.facts, &BTreeMap::new());
            compare(loader, &scratch.name, &want, false, &mut problems)?
        }
    };
    drop(scratch);
    let verify_seconds = started.elapsed().as_secs_f64();
    let problem_count = problems.len();
    problems.truncate(MAX_PROBLEMS);
    Ok(DrillReport {
        backup: source.label(),
        database: trust.manifest().map(|m| m.database.clone()),
        server,
        reference: reference.to_string(),
        restore_seconds,
        verify_seconds,
        tables,
        rows,
        dump_bytes: check.dump_bytes,
        stored_bytes: check.compressed_bytes,
        problems,
        problem_count,
        notes,
    })
}

/// Compares the restored database `db` with `want`; returns the tables and rows read. Runs as
/// the role that loaded it (on a throwaway server, no superuser): the restored database is the
/// backup's, and reading it must not run its code with more rights than loading it did.
fn compare(tools: &PgTools, db: &str, want: &Content, hashes: bool, problems: &mut Vec<String>) -> Result<(usize, u64), DrillError> {
    let read_err = |err: String| DrillError::Read { db: db.to_string(), err };
    let mut conn = tools.connect(db, None)?;
    // Before anything else: a database setting the load made (`ALTER DATABASE … SET
    // search_path`) must not decide which functions the checks below call.
    conn.query("SELECT pg_catalog.set_config('search_path', '', false)").map_err(|e| read_err(e.to_string()))?;
    for (key, value) in want.copy_settings.iter().filter(|(k, _)| COPY_SETTINGS.contains(&k.as_str())) {
        let sql = format!("SELECT pg_catalog.set_config({}, {}, false)", quote_literal(key), quote_literal(value));
        if let Err(e) = conn.query(&sql) {
            problems.push(format!("cannot set {key} = {value:?} as the dump's session had it: {e}"));
        }
    }
    let mut rows_total = 0u64;
    for t in &want.tables {
        let name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let Some(kind) = relkind(&mut conn, &t.schema, &t.name).map_err(|e| read_err(e.to_string()))? else {
            problems.push(format!("table {name}: in the backup, missing from the restored database"));
            continue;
        };
        // A partitioned table (a dump made with --load-via-partition-root) has no rows of its
        // own to COPY; its rows are read through a query. Anything else but a table (a view
        // the load put in its place) is not read: its code would run.
        if kind != "r" && kind != "p" {
            problems.push(format!("table {name}: in the backup, not a table in the restored database (relkind {kind})"));
            continue;
        }
        let statement = if kind == "p" { format!("COPY (SELECT * FROM {name}) TO STDOUT") } else { format!("COPY {name} TO STDOUT") };
        let mut sum = 0u128;
        let rows = conn.copy_out(&statement, |row| sum = sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(row))).map_err(|e| read_err(e.to_string()))?;
        rows_total += rows;
        if rows != t.rows {
            problems.push(format!("table {name}: {rows} rows restored, the backup holds {}", t.rows));
        } else if hashes && format!("{sum:032x}") != t.rows_xxh3_sum {
            problems.push(format!("table {name}: {rows} rows as expected, but their content differs from the backup's (row hash)"));
        }
    }
    for s in &want.sequences {
        let name = format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name));
        // Only a sequence is read: a view put in its place by the load would run its code.
        let kind = relkind(&mut conn, &s.schema, &s.name).map_err(|e| read_err(e.to_string()))?;
        if kind.as_deref() != Some("S") {
            problems.push(format!("sequence {name}: in the backup, not a sequence in the restored database"));
            continue;
        }
        match conn.query(&format!("SELECT last_value, is_called FROM {name}")) {
            Ok(r) => {
                let got = r.into_iter().next().unwrap_or_default();
                let want_row = vec![s.last_value.to_string(), if s.is_called { "t".to_string() } else { "f".to_string() }];
                if got != want_row {
                    problems.push(format!(
                        "sequence {name}: restored last_value {} is_called {}, the backup holds {} {}",
                        got.first().map_or("?", |v| v.as_str()),
                        got.get(1).map_or("?", |v| v.as_str()),
                        s.last_value,
                        s.is_called
                    ));
                }
            }
            Err(e) => problems.push(format!("sequence {name}: cannot be read in the restored database: {e}")),
        }
    }
    let restored: BTreeMap<u32, (u64, String)> = conn
        .query(
            "SELECT oid, octet_length(pg_catalog.lo_get(oid)), encode(pg_catalog.sha256(pg_catalog.lo_get(oid)), 'hex') \
             FROM pg_catalog.pg_largeobject_metadata",
        )
        .map_err(|e| read_err(e.to_string()))?
        .into_iter()
        .filter_map(|r| Some((r.first()?.parse().ok()?, (r.get(1)?.parse().ok()?, r.get(2)?.clone()))))
        .collect();
    for lo in &want.large_objects {
        match restored.get(&lo.oid) {
            None => problems.push(format!("large object {}: in the backup, missing from the restored database", lo.oid)),
            Some((bytes, sha)) if *bytes != lo.bytes || *sha != lo.sha256 => {
                problems.push(format!("large object {}: {bytes} bytes restored with another content than the backup's {}", lo.oid, lo.bytes))
            }
            Some(_) => {}
        }
    }
    Ok((want.tables.len(), rows_total))
}

/// The `relkind` of `schema.name`, None when there is no such relation.
fn relkind(conn: &mut crate::libpq::Conn, schema: &str, name: &str) -> Result<Option<String>, crate::libpq::PqError> {
    let rows = conn.query(&format!(
        "SELECT c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) {} AND c.relname OPERATOR(pg_catalog.=) {}",
        quote_literal(schema),
        quote_literal(name)
    ))?;
    Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()))
}
