//! Which backups a scheduled restore drill restores: the newest dump of every database each
//! time, and on Sundays (Beijing time) also one older dump picked at random, so a backup that
//! went bad after it was written is found before it is the only one left.

use crate::types::{BackupEntry, BackupKind};

const DAY: i64 = 86_400;

/// `backups` is newest first; `seed` is the host's fresh randomness for this call.
pub fn select(backups: &[BackupEntry], now: i64, seed: u64) -> Vec<String> {
    let dumps: Vec<&BackupEntry> = backups.iter().filter(|b| b.info.kind == BackupKind::Database).collect();
    let mut picked: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for b in &dumps {
        if !seen.contains(&b.info.database.as_str()) {
            seen.push(&b.info.database);
            picked.push(b.name.clone());
        }
    }
    // 1970-01-01 was a Thursday: day 3 after it was a Sunday.
    let beijing_day = (now + crate::policy::ZONE_OFFSET_SECS).div_euclid(DAY);
    if beijing_day.rem_euclid(7) == 3 {
        let older: Vec<&&BackupEntry> = dumps.iter().filter(|b| !picked.contains(&b.name)).collect();
        if !older.is_empty() {
            picked.push(older[(seed % older.len() as u64) as usize].name.clone());
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NameInfo;

    fn dump(db: &str, run_at: i64) -> BackupEntry {
        BackupEntry {
            name: format!("{db}_backup_{run_at}.sql.gz"),
            size_bytes: 1,
            modified: run_at,
            info: NameInfo { database: db.into(), kind: BackupKind::Database, run_at },
        }
    }

    /// 2026-12-07 04:00 Beijing time, a Monday; a day earlier, a Sunday.
    const MONDAY: i64 = 1_796_616_000 - 8 * 3600;
    const SUNDAY: i64 = MONDAY - DAY;

    #[test]
    fn the_newest_of_each_database_and_never_the_globals() {
        let globals = BackupEntry { info: NameInfo { kind: BackupKind::Globals, ..dump("pg1", 30).info }, ..dump("pg1", 30) };
        let backups = [globals, dump("a", 20), dump("b", 19), dump("a", 10), dump("b", 9)];
        assert_eq!(select(&backups, MONDAY, 7), ["a_backup_20.sql.gz", "b_backup_19.sql.gz"]);
        assert!(select(&[], MONDAY, 7).is_empty());
    }

    #[test]
    fn on_sundays_one_older_dump_too_chosen_by_the_seed() {
        let backups = [dump("a", 30), dump("a", 20), dump("a", 10)];
        assert_eq!(select(&backups, SUNDAY, 0), ["a_backup_30.sql.gz", "a_backup_20.sql.gz"]);
        assert_eq!(select(&backups, SUNDAY, 1), ["a_backup_30.sql.gz", "a_backup_10.sql.gz"]);
        assert_eq!(select(&backups[..1], SUNDAY, 1), ["a_backup_30.sql.gz"], "nothing older to pick");
    }
}
