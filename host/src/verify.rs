//! `ef-backup verify`: proves a backup restores. Restores it into a scratch database and
//! compares every table's row count and content checksum with the live database (or the row
//! counts with the dump's own COPY blocks).

use std::collections::BTreeMap;

use crate::db::{quote_ident, DbError, PgTools};
use crate::restore::{restore_into_new, scratch_name, RestoreError, Source};

/// Per-table row count and an order-independent checksum: the sum of the first 60 bits of
/// each row's md5. Constant memory, whatever the table size. The session settings make
/// `row::text` render the same in both databases.
fn table_stats(tools: &PgTools, db: &str) -> Result<BTreeMap<String, (u64, String)>, DbError> {
    let tables = tools.query(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1",
    )?;
    let mut out = BTreeMap::new();
    // Batches keep each statement a reasonable size on databases with many tables.
    for batch in tables.chunks(200) {
        let selects: Vec<String> = batch
            .iter()
            .filter_map(|row| row.first())
            .map(|name| {
                format!(
                    "SELECT {lit}, count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {name} t",
                    lit = crate::db::quote_literal(name),
                )
            })
            .collect();
        let sql = format!(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
             SET bytea_output = 'hex'; {}",
            selects.join(" UNION ALL ")
        );
        for row in tools.query(db, &sql)? {
            if let [name, count, sum] = row.as_slice() {
                out.insert(name.clone(), (count.parse().unwrap_or(u64::MAX), sum.clone()));
            }
        }
    }
    Ok(out)
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

#[derive(Debug)]
pub struct VerifyReport {
    pub backup: String,
    pub reference: String,
    pub tables: Vec<TableResult>,
    pub dump_bytes: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        !self.tables.is_empty() && self.tables.iter().all(TableResult::ok)
    }
}

/// Restores `path` into a scratch database (always dropped afterwards) and compares.
pub fn verify(tools: &PgTools, live_db: &str, source: &Source, against_dump: bool) -> Result<VerifyReport, RestoreError> {
    let scratch_db = scratch_name("verify");
    tracing::info!("verifying {}: restoring into scratch database {scratch_db}", source.label());
    let create_sql = format!("CREATE DATABASE {} TEMPLATE template0", crate::db::quote_ident(&scratch_db));
    let (scratch, check) = restore_into_new(tools, source, &scratch_db, &create_sql)?;
    let restored = table_stats(tools, &scratch.name)?;
    drop(scratch);
    let mut tables = Vec::new();
    let reference = if against_dump {
        // The dump's COPY counts cover plain tables; materialized views have no COPY block.
        let mut dump: BTreeMap<String, u64> = BTreeMap::new();
        for (t, n) in &check.copy_counts {
            *dump.entry(t.clone()).or_default() += n;
        }
        for (name, n) in &dump {
            tables.push(TableResult {
                table: name.clone(),
                restored: restored.get(name).map(|r| r.0),
                reference: Some(*n),
                checksum_equal: None,
            });
        }
        "the dump's COPY blocks".to_string()
    } else {
        let live = table_stats(tools, live_db)?;
        let names: std::collections::BTreeSet<&String> = restored.keys().chain(live.keys()).collect();
        for name in names {
            let (r, l) = (restored.get(name), live.get(name));
            tables.push(TableResult {
                table: name.clone(),
                restored: r.map(|x| x.0),
                reference: l.map(|x| x.0),
                checksum_equal: match (r, l) {
                    (Some(r), Some(l)) => Some(r.1 == l.1),
                    _ => Some(false),
                },
            });
        }
        format!("live database {}", quote_ident(live_db))
    };
    Ok(VerifyReport { backup: source.label(), reference, tables, dump_bytes: check.dump_bytes })
}
