//! `ef-backup verify`: proves a backup restores. Restores it into a scratch database and
//! compares, kind by kind, what came back with the live database: every table's rows, the large
//! objects, every sequence's position, the schema (a normalised `pg_dump --schema-only`) and which
//! materialized views are populated. With `--against-dump` the reference is what the dump itself
//! says: its COPY row counts, `setval` calls and large objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::db::{quote_ident, quote_literal, tail_lines, DbError, PgTools};
use crate::dump::{DumpFacts, QualifiedName, SequenceState};
use crate::restore::parallel::LoadOptions;
use crate::restore::props::{self, CreateOptions};
use crate::restore::{restore_into_new, scratch_name, Facts, RestoreError, Source, MAINTENANCE_DB};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("reading the {what} of database {db} failed: {err} — verify must read every table, sequence and large object: run it as the database owner or a superuser")]
    Read { what: &'static str, db: String, err: DbError },
    #[error("pg_dump --schema-only of database {db} failed: {detail} — verify compares the schema through pg_dump: run it as a role that can dump the whole database (the owner of every object or a superuser)")]
    SchemaDump { db: String, detail: String },
}

/// User relations: not in the system schemas, not part of an extension (pg_dump leaves those to
/// CREATE EXTENSION).
const USER_RELATIONS: &str = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Statements per query: keeps each one a reasonable size on databases with many relations.
const BATCH: usize = 200;

/// Differences listed per kind; the counts say how many there were in all.
const MAX_DIFFERENCES: usize = 10;

fn names(rows: Vec<Vec<String>>) -> Vec<QualifiedName> {
    rows.into_iter()
        .filter_map(|r| match r.as_slice() {
            [schema, name, ..] => Some(QualifiedName::new(schema, name)),
            _ => None,
        })
        .collect()
}

fn relation(n: &QualifiedName) -> String {
    format!("{}.{}", quote_ident(&n.schema), quote_ident(&n.name))
}

/// Runs one `SELECT schema, name, ... FROM relation` per name, `BATCH` at a time, and hands
/// each row's remaining fields to `take`.
fn per_relation(
    tools: &PgTools,
    db: &str,
    prelude: &str,
    list: &[QualifiedName],
    select: impl Fn(&QualifiedName) -> String,
    mut take: impl FnMut(QualifiedName, &[String]),
) -> Result<(), DbError> {
    for batch in list.chunks(BATCH) {
        let selects: Vec<String> =
            batch.iter().map(|n| format!("SELECT {}, {}, {}", quote_literal(&n.schema), quote_literal(&n.name), select(n))).collect();
        for row in tools.query(db, &format!("{prelude}{}", selects.join(" UNION ALL ")))? {
            if let [schema, name, rest @ ..] = row.as_slice() {
                take(QualifiedName::new(schema, name), rest);
            }
        }
    }
    Ok(())
}

/// Per-table row count and an order-independent checksum: the sum of the first 60 bits of
/// each row's md5. Constant memory, whatever the table size. The session settings make
/// `row::text` render the same in both databases. Materialized views that are not populated
/// cannot be read and are left out (the matview state comparison covers them).
fn table_stats(tools: &PgTools, db: &str) -> Result<BTreeMap<QualifiedName, (u64, String)>, DbError> {
    let list = names(tools.query(
        db,
        &format!("SELECT n.nspname, c.relname {USER_RELATIONS} AND (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) ORDER BY 1, 2"),
    )?);
    let prelude = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
                   SET bytea_output = 'hex'; ";
    let mut out = BTreeMap::new();
    per_relation(
        tools,
        db,
        prelude,
        &list,
        |n| format!("count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {} t", relation(n)),
        |name, rest| {
            if let [count, sum] = rest {
                out.insert(name, (count.parse().unwrap_or(u64::MAX), sum.clone()));
            }
        },
    )?;
    Ok(out)
}

/// Every sequence's `last_value` and `is_called`, read from the sequence itself.
fn sequence_states(tools: &PgTools, db: &str) -> Result<BTreeMap<QualifiedName, SequenceState>, DbError> {
    let list = names(tools.query(db, &format!("SELECT n.nspname, c.relname {USER_RELATIONS} AND c.relkind = 'S' ORDER BY 1, 2"))?);
    let mut out = BTreeMap::new();
    per_relation(
        tools,
        db,
        "",
        &list,
        |n| format!("last_value, is_called FROM {}", relation(n)),
        |name, rest| {
            if let [last_value, is_called] = rest {
                // An unparsable value becomes one no real sequence has: it shows as a difference.
                out.insert(name, SequenceState { last_value: last_value.parse().unwrap_or(i64::MIN), is_called: is_called == "t" });
            }
        },
    )?;
    Ok(out)
}

/// Large objects: how many, and the sum of a 60-bit hash of each one's oid and content. The
/// server reads one object at a time, so memory stays flat.
fn large_objects(tools: &PgTools, db: &str) -> Result<(u64, String), DbError> {
    let row = tools.query(
        db,
        "SELECT count(*), coalesce(sum(('x' || substr(md5(m.oid::text || ':' || md5(lo_get(m.oid))), 1, 15))::bit(60)::bigint), 0) \
         FROM pg_largeobject_metadata m",
    )?;
    match row.first().map(Vec::as_slice) {
        Some([count, hash]) => Ok((count.parse().unwrap_or(u64::MAX), hash.clone())),
        _ => Err(DbError::Tool { tool: "psql".into(), detail: "the large-object query returned no row".into() }),
    }
}

/// Whether each materialized view is populated: a schema dump does not say.
fn matview_states(tools: &PgTools, db: &str) -> Result<BTreeMap<QualifiedName, bool>, DbError> {
    let rows = tools.query(db, &format!("SELECT n.nspname, c.relname, c.relispopulated {USER_RELATIONS} AND c.relkind = 'm' ORDER BY 1, 2"))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [schema, name, populated] => Some((QualifiedName::new(schema, name), populated == "t")),
            _ => None,
        })
        .collect())
}

/// `pg_dump --schema-only` without what differs between two dumps of the same schema: comment
/// lines (pg_dump's headers and version), blank lines, the random `\restrict` key and the
/// session-settings prelude (its client_encoding follows the database's).
fn normalise_schema(dump: &str) -> Vec<String> {
    // The prelude is the first unbroken run of settings; later `SET default_tablespace` and the
    // like belong to the objects that follow them.
    #[derive(PartialEq)]
    enum Prelude {
        Before,
        In,
        Over,
    }
    let mut prelude = Prelude::Before;
    let mut out = Vec::new();
    for line in dump.lines() {
        let noise = line.trim().is_empty() || line.starts_with("--") || line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ");
        let setting = line.starts_with("SET ") || line.starts_with("SELECT pg_catalog.set_config(");
        if setting && prelude != Prelude::Over {
            prelude = Prelude::In;
        } else if noise {
            if prelude == Prelude::In {
                prelude = Prelude::Over;
            }
        } else {
            prelude = Prelude::Over;
            out.push(line.to_string());
        }
    }
    out
}

fn schema_lines(tools: &PgTools, db: &str) -> Result<Vec<String>, VerifyError> {
    let out = tools
        .command("pg_dump", db)
        .args(["--schema-only", "--no-password"])
        .output()
        .map_err(|err| DbError::Spawn { tool: tools.tool("pg_dump").display().to_string(), err })?;
    if !out.status.success() {
        return Err(VerifyError::SchemaDump { db: db.to_string(), detail: tail_lines(&out.stderr, 4) });
    }
    Ok(normalise_schema(&String::from_utf8_lossy(&out.stdout)))
}

/// Everything verify compares, read from one database.
struct DbState {
    tables: BTreeMap<QualifiedName, (u64, String)>,
    sequences: BTreeMap<QualifiedName, SequenceState>,
    large_objects: (u64, String),
    matviews: BTreeMap<QualifiedName, bool>,
    /// None when not read (against the dump there is nothing to compare it with).
    schema: Option<Vec<String>>,
}

fn read_state(tools: &PgTools, db: &str, with_schema: bool) -> Result<DbState, VerifyError> {
    // A connection failure says for itself what to check; an SQL error here is most likely a
    // missing privilege.
    let read = |what| {
        move |err| match err {
            DbError::Tool { .. } | DbError::Sql { .. } => VerifyError::Read { what, db: db.to_string(), err },
            other => VerifyError::Db(other),
        }
    };
    Ok(DbState {
        tables: table_stats(tools, db).map_err(read("tables"))?,
        sequences: sequence_states(tools, db).map_err(read("sequences"))?,
        large_objects: large_objects(tools, db).map_err(read("large objects"))?,
        matviews: matview_states(tools, db).map_err(read("materialized views"))?,
        schema: if with_schema { Some(schema_lines(tools, db)?) } else { None },
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableResult {
    pub table: String,
    /// Rows in the restored backup (None: the table is missing from it).
    pub restored: Option<u64>,
    /// Rows in the reference: the live database or the dump's COPY block.
    pub reference: Option<u64>,
    /// Content checksums equal (None when comparing against the dump: counts only).
    pub checksum_equal: Option<bool>,
}

impl TableResult {
    pub fn ok(&self) -> bool {
        self.restored.is_some() && self.restored == self.reference && self.checksum_equal != Some(false)
    }
}

/// What verify compares, one report line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tables,
    LargeObjects,
    Sequences,
    Schema,
    MatviewState,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tables => "tables",
            Kind::LargeObjects => "large objects",
            Kind::Sequences => "sequences",
            Kind::Schema => "schema",
            Kind::MatviewState => "matview state",
        }
    }

    /// The name in JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Tables => "tables",
            Kind::LargeObjects => "large_objects",
            Kind::Sequences => "sequences",
            Kind::Schema => "schema",
            Kind::MatviewState => "matview_state",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Mismatch,
    /// The reference has nothing to compare this kind with (the dump has no schema of its own).
    NotCompared,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Mismatch => "MISMATCH",
            Outcome::NotCompared => "not compared",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCheck {
    pub kind: Kind,
    pub outcome: Outcome,
    /// How many the restored backup holds: tables, large objects, sequences, normalised schema
    /// lines, materialized views.
    pub restored: Option<u64>,
    pub reference: Option<u64>,
    /// What was compared and, on a mismatch, how much differs.
    pub summary: String,
    /// The first differences (at most [`MAX_DIFFERENCES`]).
    pub differences: Vec<String>,
}

impl KindCheck {
    fn new(kind: Kind, restored: u64, reference: u64, differences: (usize, Vec<String>), what: String) -> KindCheck {
        let (count, differences) = differences;
        let outcome = if count == 0 && restored == reference { Outcome::Ok } else { Outcome::Mismatch };
        let summary = match count {
            _ if outcome == Outcome::Ok => what,
            1 => format!("{what}: 1 difference"),
            n => format!("{what}: {n} differences"),
        };
        KindCheck { kind, outcome, restored: Some(restored), reference: Some(reference), summary, differences }
    }

    fn not_compared(kind: Kind, restored: Option<u64>, why: &str) -> KindCheck {
        KindCheck { kind, outcome: Outcome::NotCompared, restored, reference: None, summary: why.to_string(), differences: Vec::new() }
    }
}

#[derive(Debug)]
pub struct VerifyReport {
    pub backup: String,
    pub reference: String,
    pub tables: Vec<TableResult>,
    /// One entry per [`Kind`], in the order of the enum.
    pub kinds: Vec<KindCheck>,
    pub dump_bytes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        !self.tables.is_empty() && self.kinds.iter().all(|k| k.outcome != Outcome::Mismatch)
    }

    pub fn mismatched(&self) -> Vec<Kind> {
        self.kinds.iter().filter(|k| k.outcome == Outcome::Mismatch).map(|k| k.kind).collect()
    }
}

/// Entries of two maps that differ or exist on one side only, described by `show` (given the
/// restored and the reference value); the total and the first `MAX_DIFFERENCES`.
fn map_diff<V: PartialEq>(
    restored: &BTreeMap<QualifiedName, V>,
    reference: &BTreeMap<QualifiedName, V>,
    show: impl Fn(&V) -> String,
) -> (usize, Vec<String>) {
    let all: BTreeSet<&QualifiedName> = restored.keys().chain(reference.keys()).collect();
    let mut count = 0;
    let mut listed = Vec::new();
    for name in all {
        let line = match (restored.get(name), reference.get(name)) {
            (Some(r), Some(l)) if r == l => continue,
            (Some(r), Some(l)) => format!("{name}: backup {}, reference {}", show(r), show(l)),
            (Some(_), None) => format!("{name}: only in the backup"),
            (None, _) => format!("{name}: missing from the backup"),
        };
        count += 1;
        if listed.len() < MAX_DIFFERENCES {
            listed.push(line);
        }
    }
    (count, listed)
}

fn show_sequence(s: &SequenceState) -> String {
    format!("last_value {} is_called {}", s.last_value, s.is_called)
}

/// Lines only in `restored` and only in `reference`, each side as a multiset (a line that moved
/// is no difference), in the order they appear: the total and the first `MAX_DIFFERENCES`.
fn line_diff(restored: &[String], reference: &[String]) -> (usize, Vec<String>) {
    let mut balance: HashMap<&str, i64> = HashMap::new();
    for l in restored {
        *balance.entry(l).or_default() += 1;
    }
    for l in reference {
        *balance.entry(l).or_default() -= 1;
    }
    let mut count = 0;
    let mut listed = Vec::new();
    let mut note = |side: &str, line: &str| {
        count += 1;
        if listed.len() < MAX_DIFFERENCES {
            let cut: String = line.chars().take(160).collect();
            listed.push(format!("only in the {side}: {cut}{}", if cut.len() < line.len() { "…" } else { "" }));
        }
    };
    for l in restored {
        if let Some(b) = balance.get_mut(l.as_str()).filter(|b| **b > 0) {
            *b -= 1;
            note("backup", l);
        }
    }
    for l in reference {
        if let Some(b) = balance.get_mut(l.as_str()).filter(|b| **b < 0) {
            *b += 1;
            note("reference", l);
        }
    }
    (count, listed)
}

fn tables_check(tables: &[TableResult], what: &str) -> KindCheck {
    let bad = tables.iter().filter(|t| !t.ok()).count();
    let count = |f: fn(&TableResult) -> Option<u64>| tables.iter().filter(|t| f(t).is_some()).count() as u64;
    let (restored, reference) = (count(|t| t.restored), count(|t| t.reference));
    let listed = tables.iter().filter(|t| !t.ok()).take(MAX_DIFFERENCES).map(|t| format!("{} (see above)", t.table)).collect();
    let mut check = KindCheck::new(Kind::Tables, restored, reference, (bad, listed), what.to_string());
    if tables.is_empty() {
        check.outcome = Outcome::Mismatch;
        check.summary = "the backup restored no tables".into();
    }
    check
}

/// Compares a restored database with the live one.
fn compare_live(restored: &DbState, live: &DbState) -> (Vec<TableResult>, Vec<KindCheck>) {
    // An unpopulated materialized view has no rows to count: its state is compared instead.
    let unpopulated: BTreeSet<&QualifiedName> =
        restored.matviews.iter().chain(live.matviews.iter()).filter(|(_, populated)| !**populated).map(|(n, _)| n).collect();
    let names: BTreeSet<&QualifiedName> = restored.tables.keys().chain(live.tables.keys()).filter(|n| !unpopulated.contains(n)).collect();
    let tables: Vec<TableResult> = names
        .into_iter()
        .map(|name| {
            let (r, l) = (restored.tables.get(name), live.tables.get(name));
            TableResult {
                table: name.to_string(),
                restored: r.map(|x| x.0),
                reference: l.map(|x| x.0),
                checksum_equal: match (r, l) {
                    (Some(r), Some(l)) => Some(r.1 == l.1),
                    _ => Some(false),
                },
            }
        })
        .collect();
    let rows: u64 = tables.iter().filter_map(|t| t.restored).sum();
    let tables_kind = tables_check(&tables, &format!("row counts and content checksums ({rows} rows)"));

    let ((r_count, r_hash), (l_count, l_hash)) = (&restored.large_objects, &live.large_objects);
    let lo_diff = match (r_count == l_count, r_hash == l_hash) {
        (true, true) => (0, Vec::new()),
        (false, _) => (1, vec![format!("backup holds {r_count}, the live database {l_count}")]),
        (true, false) => (1, vec!["same number, but the content or oids differ".to_string()]),
    };
    let large_objects = KindCheck::new(Kind::LargeObjects, *r_count, *l_count, lo_diff, "count and content hash (oid + bytes of each)".into());

    let sequences = KindCheck::new(
        Kind::Sequences,
        restored.sequences.len() as u64,
        live.sequences.len() as u64,
        map_diff(&restored.sequences, &live.sequences, show_sequence),
        "last_value and is_called of each".into(),
    );

    let empty = Vec::new();
    let (r_schema, l_schema) = (restored.schema.as_ref().unwrap_or(&empty), live.schema.as_ref().unwrap_or(&empty));
    let schema = KindCheck::new(
        Kind::Schema,
        r_schema.len() as u64,
        l_schema.len() as u64,
        line_diff(r_schema, l_schema),
        "normalised pg_dump --schema-only lines".into(),
    );

    let matviews = KindCheck::new(
        Kind::MatviewState,
        restored.matviews.len() as u64,
        live.matviews.len() as u64,
        map_diff(&restored.matviews, &live.matviews, |p| if *p { "populated".into() } else { "not populated".into() }),
        "whether each materialized view is populated".into(),
    );
    (tables, vec![tables_kind, large_objects, sequences, schema, matviews])
}

/// Compares a restored database with what its dump says.
fn compare_dump(restored: &DbState, dump: &DumpFacts) -> (Vec<TableResult>, Vec<KindCheck>) {
    // Materialized views have no COPY block: only the dump's tables are compared.
    let copied = dump.table_totals();
    let tables: Vec<TableResult> = copied
        .iter()
        .map(|(name, (n, _))| TableResult {
            table: name.to_string(),
            restored: restored.tables.get(*name).map(|r| r.0),
            reference: Some(*n),
            checksum_equal: None,
        })
        .collect();
    let tables_kind = tables_check(&tables, "row counts match the dump's COPY blocks");

    let r_count = restored.large_objects.0;
    let d_count = dump.large_objects.len() as u64;
    let lo_diff = if r_count == d_count { (0, Vec::new()) } else { (1, vec![format!("backup holds {r_count}, the dump creates {d_count}")]) };
    let large_objects = KindCheck::new(Kind::LargeObjects, r_count, d_count, lo_diff, "count matches the dump's lo_create/lo_open calls".into());

    // The dump's last setval of a sequence is the one that stands.
    let set: BTreeMap<QualifiedName, SequenceState> = dump.sequences.iter().cloned().collect();
    let sequences = KindCheck::new(
        Kind::Sequences,
        restored.sequences.len() as u64,
        set.len() as u64,
        map_diff(&restored.sequences, &set, show_sequence),
        "last_value and is_called match the dump's setval calls".into(),
    );
    let schema = KindCheck::not_compared(
        Kind::Schema,
        None,
        "not compared against the dump: the restored schema is the dump's own (compare with the live database for that)",
    );
    let matviews = KindCheck::not_compared(
        Kind::MatviewState,
        Some(restored.matviews.len() as u64),
        "not compared against the dump (compare with the live database for that)",
    );
    (tables, vec![tables_kind, large_objects, sequences, schema, matviews])
}

/// Restores `source` into a scratch database (always dropped afterwards) and compares.
pub fn verify(tools: &PgTools, live_db: &str, source: &Source, against_dump: bool, load: LoadOptions) -> Result<VerifyReport, VerifyError> {
    let scratch_db = scratch_name("verify");
    tracing::info!("verifying {}: restoring into scratch database {scratch_db}", source.label());
    // The scratch database takes the live database's encoding and locale, so that text renders
    // to the same bytes on both sides; the verifying role owns it.
    let create_sql = if against_dump {
        format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&scratch_db))
    } else {
        let me = tools.query_value(MAINTENANCE_DB, "SELECT current_user")?;
        props::plan(tools, MAINTENANCE_DB, live_db, true, &CreateOptions { owner: Some(me), ..CreateOptions::default() }, None)?
            .create_sql(&scratch_db)
    };
    let (scratch, check) = restore_into_new(tools, source, &scratch_db, &create_sql, load, if against_dump { Facts::Collect } else { Facts::Skip })?;
    let restored = read_state(tools, &scratch.name, !against_dump)?;
    drop(scratch);
    let (reference, (tables, kinds)) = if against_dump {
        ("the dump".to_string(), compare_dump(&restored, &check.facts))
    } else {
        let live = read_state(tools, live_db, true)?;
        (format!("live database {}", quote_ident(live_db)), compare_live(&restored, &live))
    };
    Ok(VerifyReport { backup: source.label(), reference, tables, kinds, dump_bytes: check.dump_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qn(s: &str) -> QualifiedName {
        QualifiedName::parse(s).unwrap().0
    }

    fn state() -> DbState {
        DbState {
            tables: [(qn("public.t"), (2, "99".to_string())), (qn("public.mv"), (1, "7".to_string()))].into_iter().collect(),
            sequences: [(qn("public.s"), SequenceState { last_value: 5, is_called: true })].into_iter().collect(),
            large_objects: (3, "12345".into()),
            matviews: [(qn("public.mv"), true)].into_iter().collect(),
            schema: Some(vec!["CREATE TABLE public.t (".into(), "    a integer".into(), ");".into()]),
        }
    }

    fn outcomes(kinds: &[KindCheck]) -> Vec<(&'static str, Outcome)> {
        kinds.iter().map(|k| (k.kind.label(), k.outcome)).collect()
    }

    fn mismatched(kinds: &[KindCheck]) -> Vec<Kind> {
        kinds.iter().filter(|k| k.outcome == Outcome::Mismatch).map(|k| k.kind).collect()
    }

    #[test]
    fn equal_states_match_in_every_kind() {
        let (tables, kinds) = compare_live(&state(), &state());
        assert_eq!(tables.len(), 2);
        assert!(kinds.iter().all(|k| k.outcome == Outcome::Ok), "{kinds:?}");
        assert_eq!(
            kinds.iter().map(|k| k.kind).collect::<Vec<_>>(),
            [Kind::Tables, Kind::LargeObjects, Kind::Sequences, Kind::Schema, Kind::MatviewState]
        );
    }

    /// Pins issue 13 item 10: large objects, sequences, schema and matview state used not to be
    /// compared at all.
    #[test]
    fn each_kind_of_difference_is_named() {
        let base = state();
        let mut lo = state();
        lo.large_objects = (1, "5".into());
        let mut lo_content = state();
        lo_content.large_objects.1 = "54321".into();
        let mut seq = state();
        seq.sequences.insert(qn("public.s"), SequenceState { last_value: 100, is_called: true });
        let mut seq_called = state();
        seq_called.sequences.insert(qn("public.s"), SequenceState { last_value: 5, is_called: false });
        let mut schema = state();
        schema.schema.as_mut().unwrap().push("CREATE VIEW public.v AS".into());
        let mut mv = state();
        mv.matviews.insert(qn("public.mv"), false);
        mv.tables.remove(&qn("public.mv"));
        for (live, want) in [
            (&lo, Kind::LargeObjects),
            (&lo_content, Kind::LargeObjects),
            (&seq, Kind::Sequences),
            (&seq_called, Kind::Sequences),
            (&schema, Kind::Schema),
            (&mv, Kind::MatviewState),
        ] {
            let (_, kinds) = compare_live(&base, live);
            assert_eq!(mismatched(&kinds), vec![want], "{kinds:#?}");
        }
        let (_, kinds) = compare_live(&base, &seq);
        assert_eq!(kinds[2].differences, ["public.s: backup last_value 5 is_called true, reference last_value 100 is_called true"]);
        let (_, kinds) = compare_live(&base, &schema);
        assert_eq!(kinds[3].differences, ["only in the reference: CREATE VIEW public.v AS"]);
        assert_eq!((kinds[3].restored, kinds[3].reference), (Some(3), Some(4)));
    }

    #[test]
    fn a_changed_row_is_a_table_mismatch() {
        let mut live = state();
        live.tables.insert(qn("public.t"), (2, "100".into()));
        let (tables, kinds) = compare_live(&state(), &live);
        assert_eq!(mismatched(&kinds), vec![Kind::Tables]);
        assert_eq!(tables.iter().filter(|t| !t.ok()).map(|t| t.table.as_str()).collect::<Vec<_>>(), ["public.t"]);
    }

    #[test]
    fn schema_lines_are_compared_as_multisets_and_capped() {
        let a: Vec<String> = ["x", "y", "y", "z"].map(String::from).to_vec();
        let b: Vec<String> = ["z", "y", "x"].map(String::from).to_vec();
        assert_eq!(line_diff(&a, &b), (1, vec!["only in the backup: y".to_string()]));
        assert_eq!(line_diff(&b, &b), (0, vec![]));
        let many: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let (count, listed) = line_diff(&[], &many);
        assert_eq!((count, listed.len()), (50, MAX_DIFFERENCES));
        assert_eq!(listed[0], "only in the reference: line 0");
    }

    #[test]
    fn schema_normalisation_keeps_only_real_differences() {
        let dump = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n-- Dumped from database version 15.18\n\n\
                    SET statement_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\n\
                    SET row_security = off;\n\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: me\n--\n\n\
                    SET default_tablespace = '';\n\nCREATE TABLE public.t (\n    a integer\n);\n\n\\unrestrict abc\n";
        assert_eq!(normalise_schema(dump), ["SET default_tablespace = '';", "CREATE TABLE public.t (", "    a integer", ");"]);
        let other = dump.replace("abc", "zzz").replace("UTF8", "LATIN1").replace("15.18", "15.19");
        assert_eq!(normalise_schema(dump), normalise_schema(&other));
    }

    /// Pins issue 13 item 11 on the comparison side: names from the dump and from the catalog
    /// meet in one normal form.
    #[test]
    fn against_the_dump_with_quoted_names() {
        let mut restored = state();
        restored.tables = [(QualifiedName::new("my schema", "My \"T\""), (2, "1".to_string()))].into_iter().collect();
        restored.sequences = [(QualifiedName::new("my schema", "Seq"), SequenceState { last_value: 5, is_called: true })].into_iter().collect();
        let mut dump = DumpFacts::default();
        dump.update(
            b"COPY \"my schema\".\"My \"\"T\"\"\" (a, \"b c\") FROM stdin;\n1\n2\n\\.\n\
              SELECT pg_catalog.setval('\"my schema\".\"Seq\"', 5, true);\n\
              SELECT pg_catalog.lo_create('1');\nSELECT pg_catalog.lo_create('2');\nSELECT pg_catalog.lo_open('3', 131072);\n",
        );
        let (tables, kinds) = compare_dump(&restored, &dump);
        assert!(tables.iter().all(TableResult::ok), "{tables:?}");
        assert_eq!(
            outcomes(&kinds),
            [
                ("tables", Outcome::Ok),
                ("large objects", Outcome::Ok),
                ("sequences", Outcome::Ok),
                ("schema", Outcome::NotCompared),
                ("matview state", Outcome::NotCompared)
            ]
        );
        let mut fewer = DumpFacts::default();
        fewer.update(b"COPY \"my schema\".\"My \"\"T\"\"\" (a) FROM stdin;\n1\n\\.\nSELECT pg_catalog.setval('\"my schema\".\"Seq\"', 6, true);\n");
        let (_, kinds) = compare_dump(&restored, &fewer);
        assert_eq!(mismatched(&kinds), [Kind::Tables, Kind::LargeObjects, Kind::Sequences]);
    }

    #[test]
    fn no_tables_is_a_failure() {
        let mut empty = state();
        empty.tables.clear();
        empty.matviews.clear();
        let (tables, kinds) = compare_live(&empty, &empty);
        assert!(tables.is_empty());
        assert_eq!(mismatched(&kinds), [Kind::Tables]);
        assert_eq!(kinds[0].summary, "the backup restored no tables");
    }
}
