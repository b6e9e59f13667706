//! The default policy's decisions: schedule, names and retention of the EuraFlow plugin.

use crate::civil::DateTime;
use crate::retention::Keep;
use crate::types::{BackupEntry, BackupSchedule, Config, Target};

/// Asia/Shanghai is UTC+8 all year (see `civil`).
pub const ZONE: &str = "Asia/Shanghai";
pub const ZONE_OFFSET_SECS: i64 = 8 * 3600;
/// Between the database and the time: `<db>_backup_YYYYMMDD_HHMMSS.sql.gz`.
pub const NAME_INFIX: &str = "_backup_";
pub const NAME_SUFFIX: &str = ".sql.gz";
/// `YYYYMMDD_HHMMSS`.
const STAMP_LEN: usize = 15;

/// Tunables, from `EF__POLICY_<KEY>` variables; the defaults are the original plugin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `local_retention_days`: local backups younger than this are kept (7).
    pub local_retention_days: u32,
    /// `local_keep_last`: the newest N local backups are kept whatever their age (14).
    pub local_keep_last: u32,
    /// `s3_keep_last`: the newest N S3 backups are kept whatever their age (14).
    pub s3_keep_last: u32,
    /// `EF__BACKUP_RETENTION_DAYS`, from the host's S3 config (30).
    pub s3_retention_days: u32,
    /// `schedule_cron`: replaces the default schedule's cron expression (same time zone).
    pub schedule_cron: Option<String>,
    /// `legacy_prefix`: names `<legacy_prefix>_backup_YYYYMMDD_HHMMSS.sql.gz` are recognised
    /// as this deployment's too (backups written before names carried the database, which
    /// were all `euraflow_backup_...`).
    pub legacy_prefix: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { local_retention_days: 7, local_keep_last: 14, s3_keep_last: 14, s3_retention_days: 30, schedule_cron: None, legacy_prefix: None }
    }
}

impl Settings {
    /// Reads the settings; unknown keys and unparsable values are reported as warnings (the
    /// default is used instead), because a policy call has no error channel.
    pub fn parse(config: &Config) -> (Settings, Vec<String>) {
        let mut s = Settings::default();
        let mut warnings = Vec::new();
        if let Some(s3) = &config.s3 {
            s.s3_retention_days = s3.retention_days;
        }
        for (key, value) in &config.settings {
            if key == "schedule_cron" {
                s.schedule_cron = Some(value.trim().to_string());
                continue;
            }
            if key == "legacy_prefix" {
                let v = value.trim();
                if v.is_empty() || v.len() > 200 || !v.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-%".contains(&c)) {
                    warnings.push(format!(
                        "EF__POLICY_LEGACY_PREFIX={value:?}: expected the part of the old names before `_backup_` \
                         (letters, digits, `_`, `-`, `%`), e.g. `euraflow`; legacy names are not recognised"
                    ));
                } else {
                    s.legacy_prefix = Some(v.to_string());
                }
                continue;
            }
            let slot = match key.as_str() {
                "local_retention_days" => &mut s.local_retention_days,
                "local_keep_last" => &mut s.local_keep_last,
                "s3_keep_last" => &mut s.s3_keep_last,
                _ => {
                    warnings.push(format!("EF__POLICY_{}: not a setting of the default policy; ignored", key.to_uppercase()));
                    continue;
                }
            };
            match value.trim().parse::<u32>() {
                Ok(v) if v <= 36_500 => *slot = v,
                _ => warnings.push(format!("EF__POLICY_{}={value:?}: expected a whole number from 0 to 36500; using {}", key.to_uppercase(), slot)),
            }
        }
        (s, warnings)
    }
}

/// 01:00 and 13:00 in Beijing, which is the original's `0 17,5 * * *` in UTC; or the
/// operator's `EF__POLICY_SCHEDULE_CRON` in the same zone.
pub fn schedule(settings: &Settings) -> BackupSchedule {
    match &settings.schedule_cron {
        Some(cron) => BackupSchedule { crons: vec![cron.clone()], timezone: ZONE.to_string(), description: format!("按北京时间 cron `{cron}`") },
        None => BackupSchedule {
            crons: vec!["0 1,13 * * *".to_string()],
            timezone: ZONE.to_string(),
            description: "每天北京时间 01:00 和 13:00".to_string(),
        },
    }
}

/// The database as it appears in a name: ASCII letters, digits, `-` and `_` as they are, every
/// other byte (of the UTF-8 name) as `%XX`, `%` included. This is injective (percent-encoding
/// with `%` itself encoded), so two databases never share a name prefix; and the result is
/// a plain file name and S3 key (no `/`, `.`, whitespace or control characters).
pub fn encode_database(database: &str) -> String {
    let mut out = String::with_capacity(database.len());
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How this deployment's backups are named, and which names are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `<encoded db>_backup_`.
    prefix: String,
    /// `<legacy_prefix>_backup_`, when the operator adopted the old names.
    legacy: Option<String>,
}

impl Names {
    pub fn new(database: &str, legacy_prefix: Option<&str>) -> Names {
        Names { prefix: format!("{}{NAME_INFIX}", encode_database(database)), legacy: legacy_prefix.map(|p| format!("{p}{NAME_INFIX}")) }
    }

    pub fn of(config: &Config) -> Names {
        let (settings, _) = Settings::parse(config);
        Names::new(&config.database, settings.legacy_prefix.as_deref())
    }

    /// `<db>_backup_YYYYMMDD_HHMMSS.sql.gz`, Beijing time (for the database `euraflow`
    /// exactly the original plugin's names).
    pub fn backup_name(&self, now: i64) -> String {
        format!("{}{}{NAME_SUFFIX}", self.prefix, DateTime::from_unix(now, ZONE_OFFSET_SECS).compact())
    }

    /// The creation time one of our names carries. Only this database's prefix (and the
    /// adopted legacy one) counts: another deployment's backups in the same place are foreign.
    pub fn parse(&self, name: &str) -> Option<i64> {
        let stamp =
            std::iter::once(&self.prefix).chain(self.legacy.as_ref()).find_map(|p| name.strip_prefix(p.as_str())?.strip_suffix(NAME_SUFFIX))?;
        DateTime::parse_compact(stamp, ZONE_OFFSET_SECS)
    }
}

/// The `YYYYMMDD_HHMMSS` part of a name of this shape, whatever its database (for responses,
/// which do not see the configuration).
pub fn name_timestamp(name: &str) -> Option<&str> {
    let rest = name.strip_suffix(NAME_SUFFIX)?;
    let stamp = rest.get(rest.len().checked_sub(STAMP_LEN)?..)?;
    let db_part = rest.get(..rest.len() - STAMP_LEN)?.strip_suffix(NAME_INFIX)?;
    (!db_part.is_empty() && DateTime::parse_compact(stamp, ZONE_OFFSET_SECS).is_some()).then_some(stamp)
}

pub fn keep_for(target: Target, settings: &Settings) -> Keep {
    match target {
        Target::Local => Keep::days(settings.local_retention_days, settings.local_keep_last as usize),
        Target::S3 => Keep::days(settings.s3_retention_days, settings.s3_keep_last as usize),
    }
}

/// Only names this policy produced take part; their age is the time in the name (an mtime
/// changes when files are copied around, the name does not).
pub fn select_expired(backups: &[BackupEntry], now: i64, target: Target, settings: &Settings, names: &Names) -> Vec<String> {
    let ours: Vec<(String, i64)> = backups.iter().filter_map(|b| names.parse(&b.name).map(|t| (b.name.clone(), t))).collect();
    keep_for(target, settings).expired(&ours, now).into_iter().map(str::to_string).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::S3Config;

    const NOW: i64 = 1_762_191_000; // 2025-11-04 01:30:00 Beijing
    const DAY: i64 = 86_400;

    pub(crate) fn config(settings: &[(&str, &str)], s3_days: Option<u32>) -> Config {
        Config {
            database: "euraflow".into(),
            backup_dir: "/var/backups".into(),
            s3: s3_days.map(|d| S3Config { bucket: "b".into(), region: "us-east-1".into(), prefix: String::new(), retention_days: d }),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn entry(name: &str) -> BackupEntry {
        BackupEntry { name: name.into(), size_bytes: 1, modified: NOW }
    }

    #[test]
    fn schedule_can_be_overridden() {
        let (settings, w) = Settings::parse(&config(&[("schedule_cron", " */5 * * * * * ")], None));
        assert!(w.is_empty());
        let s = schedule(&settings);
        assert_eq!(s.crons, ["*/5 * * * * *"]);
        assert_eq!(s.timezone, "Asia/Shanghai");
    }

    #[test]
    fn schedule_is_the_originals() {
        let s = schedule(&Settings::default());
        assert_eq!(s.crons, ["0 1,13 * * *"]);
        assert_eq!(s.timezone, "Asia/Shanghai");
        assert_eq!(s.description, "每天北京时间 01:00 和 13:00");
    }

    fn euraflow() -> Names {
        Names::new("euraflow", None)
    }

    fn backup_name(now: i64) -> String {
        euraflow().backup_name(now)
    }

    #[test]
    fn names() {
        let n = euraflow();
        assert_eq!(backup_name(NOW), "euraflow_backup_20251104_013000.sql.gz");
        // 17:00 UTC is 01:00 the next day in Beijing.
        assert_eq!(backup_name(1_762_275_600), "euraflow_backup_20251105_010000.sql.gz");
        assert_eq!(n.parse("euraflow_backup_20251104_013000.sql.gz"), Some(NOW));
        assert_eq!(name_timestamp("euraflow_backup_20251104_013000.sql.gz"), Some("20251104_013000"));
        assert_eq!(name_timestamp("shop%2Eeu_backup_20251104_013000.sql.gz"), Some("20251104_013000"));
        for foreign in [
            "euraflow_backup_20251104_013000.sql.gz.partial",
            "euraflow_backup_20251104_013000.sql",
            "Euraflow_backup_20251104_013000.sql.gz",
            "euraflow_backup_20251304_013000.sql.gz",
            "euraflow_backup_latest.sql.gz",
            "other_20251104_013000.sql.gz",
            "euraflow_backup_20251104_013000.sql.gz.bak",
            "x/euraflow_backup_20251104_013000.sql.gz",
            "euraflow2_backup_20251104_013000.sql.gz",
            "euraflow_backup_backup_20251104_013000.sql.gz",
            "",
        ] {
            assert_eq!(n.parse(foreign), None, "{foreign}");
        }
    }

    /// Pins issue 12 item 5: no name, however odd, makes parse-name panic (a trap in the
    /// component, which stopped retention for good); every one is simply not ours.
    #[test]
    fn odd_names_are_not_ours_and_never_panic() {
        let n = euraflow();
        let good = "euraflow_backup_20251104_013000.sql.gz";
        let huge = format!("euraflow_backup_{}.sql.gz", "9".repeat(1 << 16));
        let mut odd: Vec<String> = [
            "euraflow_backup_2025年1_013000.sql.gz",
            "euraflow_backup_年年年年年_.sql.gz",
            "euraflow_backup_20251104_01300é.sql.gz",
            "euraflow_backup_😀0251104_01300.sql.gz",
            "euraflow_backup_.sql.gz",
            "euraflow_backup_",
            "euraflow_backup_20251104013000_.sql.gz",
            "euraflow_backup_2025_1104013000.sql.gz",
            "euraflow_backup_99999999_999999.sql.gz",
            "euraflow_backup_00000000_000000.sql.gz",
            "euraflow_backup_-0251104_013000.sql.gz",
            "euraflow_backup_ 0251104_013000.sql.gz",
            "euraflow_backup_20251104_013000.sql.gz\0",
            ".sql.gz",
            "_backup_20251104_013000.sql.gz",
            "\u{0}",
            "",
            huge.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every byte position of a good name replaced by, or followed by, multi-byte characters.
        for i in 0..good.len() {
            for c in ["年", "é", "😀", "\u{feff}"] {
                odd.push(format!("{}{c}{}", &good[..i], &good[i + 1..]));
                odd.push(format!("{}{c}{}", &good[..i], &good[i..]));
            }
        }
        for name in &odd {
            assert_eq!(n.parse(name), None, "{name:?}");
            assert_eq!(Names::new("euraflow", Some("euraflow")).parse(name), None, "{name:?}");
            // Database-agnostic (responses do not see the config): it may find a time, but never panics.
            let _ = name_timestamp(name);
        }
        let listing: Vec<BackupEntry> = odd.iter().map(|o| entry(o)).chain([entry(good)]).collect();
        assert!(select_expired(&listing, NOW, Target::Local, &Settings::default(), &n).is_empty());
    }

    /// Pins issue 12 item 7: names carry the database, and a deployment only recognises its
    /// own, so two databases sharing a directory never count or delete each other's backups.
    #[test]
    fn names_carry_the_database_and_recognise_only_it() {
        let table = [
            ("euraflow", "euraflow_backup_20251104_013000.sql.gz"),
            ("shop", "shop_backup_20251104_013000.sql.gz"),
            ("Shop-EU_2", "Shop-EU_2_backup_20251104_013000.sql.gz"),
            ("my.db", "my%2Edb_backup_20251104_013000.sql.gz"),
            ("a/b c", "a%2Fb%20c_backup_20251104_013000.sql.gz"),
            ("50%", "50%25_backup_20251104_013000.sql.gz"),
            ("..", "%2E%2E_backup_20251104_013000.sql.gz"),
            ("数据", "%E6%95%B0%E6%8D%AE_backup_20251104_013000.sql.gz"),
        ];
        for (db, want) in table {
            let n = Names::new(db, None);
            assert_eq!(n.backup_name(NOW), want, "{db}");
            assert_eq!(n.parse(want), Some(NOW), "{db}");
            for (other, theirs) in table {
                if other != db {
                    assert_eq!(n.parse(theirs), None, "{db} must not recognise {other}'s {theirs}");
                }
            }
        }
        // Injective: `%` is itself encoded, so a literal "%2E" and "." never meet.
        assert_ne!(encode_database("a.b"), encode_database("a%2Eb"));
        // The longest database name PostgreSQL allows (63 bytes), all multi-byte.
        let longest = "数".repeat(21);
        let name = Names::new(&longest, None).backup_name(NOW);
        assert!(name.len() + ".partial".len() <= 255, "{} bytes", name.len());
    }

    #[test]
    fn legacy_names_are_recognised_only_when_adopted() {
        let old = "euraflow_backup_20251104_013000.sql.gz";
        assert_eq!(Names::of(&Config { database: "shop".into(), ..config(&[], None) }).parse(old), None);
        let adopted = Config { database: "shop".into(), ..config(&[("legacy_prefix", "euraflow")], None) };
        let n = Names::of(&adopted);
        assert_eq!(n.parse(old), Some(NOW));
        assert_eq!(n.parse("shop_backup_20251104_013000.sql.gz"), Some(NOW));
        assert_eq!(n.backup_name(NOW), "shop_backup_20251104_013000.sql.gz", "new backups get the new name");
        let (s, w) = Settings::parse(&Config { database: "shop".into(), ..config(&[("legacy_prefix", "../x")], None) });
        assert_eq!((s.legacy_prefix, w.len()), (None, 1));
    }

    #[test]
    fn foreign_names_are_never_selected() {
        let old = |days: i64| backup_name(NOW - days * DAY);
        let mut listing: Vec<BackupEntry> = (0..40).map(|d| entry(&old(d))).collect();
        for foreign in ["notes.txt", "manual_dump.sql.gz", "euraflow_backup_old.sql.gz"] {
            listing.push(BackupEntry { name: foreign.into(), size_bytes: 1, modified: 0 });
        }
        let (s, _) = Settings::parse(&config(&[], None));
        let got = select_expired(&listing, NOW, Target::Local, &s, &euraflow());
        // 0..=7 days are within the window, 14 newest are 0..=13: days 14..39 expire.
        let want: Vec<String> = (14..40).rev().map(old).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn s3_uses_retention_days_from_config() {
        let listing: Vec<BackupEntry> = (0..50).map(|d| entry(&backup_name(NOW - d * DAY))).collect();
        let (s, w) = Settings::parse(&config(&[("s3_keep_last", "2")], Some(30)));
        assert!(w.is_empty());
        let got = select_expired(&listing, NOW, Target::S3, &s, &euraflow());
        let want: Vec<String> = (31..50).rev().map(|d| backup_name(NOW - d * DAY)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn all_old_keeps_minimum() {
        let listing: Vec<BackupEntry> = (100..120).map(|d| entry(&backup_name(NOW - d * DAY))).collect();
        let (s, _) = Settings::parse(&config(&[], Some(30)));
        for target in [Target::Local, Target::S3] {
            let got = select_expired(&listing, NOW, target, &s, &euraflow());
            assert_eq!(got.len(), 6, "{target:?}");
            assert!(!got.contains(&backup_name(NOW - 100 * DAY)), "newest must survive");
        }
    }

    #[test]
    fn settings_parse_and_warn() {
        let (s, w) = Settings::parse(&config(
            &[("local_retention_days", "3"), ("local_keep_last", "x"), ("colour", "blue"), ("s3_keep_last", "99999999")],
            Some(10),
        ));
        assert_eq!(
            s,
            Settings {
                local_retention_days: 3,
                local_keep_last: 14,
                s3_keep_last: 14,
                s3_retention_days: 10,
                schedule_cron: None,
                legacy_prefix: None
            }
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("EF__POLICY_LOCAL_KEEP_LAST") && w[0].contains("using 14"), "{}", w[0]);
        assert!(w[1].contains("EF__POLICY_COLOUR"), "{}", w[1]);
    }
}
