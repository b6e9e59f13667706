//! The default policy's decisions: schedule, names and retention of the EuraFlow plugin.

use crate::civil::DateTime;
use crate::retention::Keep;
use crate::types::{BackupEntry, Config, BackupSchedule, Target};

/// Asia/Shanghai is UTC+8 all year (see `civil`).
pub const ZONE: &str = "Asia/Shanghai";
pub const ZONE_OFFSET_SECS: i64 = 8 * 3600;
pub const NAME_PREFIX: &str = "euraflow_backup_";
pub const NAME_SUFFIX: &str = ".sql.gz";

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings { local_retention_days: 7, local_keep_last: 14, s3_keep_last: 14, s3_retention_days: 30, schedule_cron: None }
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
                _ => warnings.push(format!(
                    "EF__POLICY_{}={value:?}: expected a whole number from 0 to 36500; using {}",
                    key.to_uppercase(),
                    slot
                )),
            }
        }
        (s, warnings)
    }
}

/// 01:00 and 13:00 in Beijing, which is the original's `0 17,5 * * *` in UTC; or the
/// operator's `EF__POLICY_SCHEDULE_CRON` in the same zone.
pub fn schedule(settings: &Settings) -> BackupSchedule {
    match &settings.schedule_cron {
        Some(cron) => BackupSchedule {
            crons: vec![cron.clone()],
            timezone: ZONE.to_string(),
            description: format!("按北京时间 cron `{cron}`"),
        },
        None => BackupSchedule {
            crons: vec!["0 1,13 * * *".to_string()],
            timezone: ZONE.to_string(),
            description: "每天北京时间 01:00 和 13:00".to_string(),
        },
    }
}

/// `euraflow_backup_YYYYMMDD_HHMMSS.sql.gz`, Beijing time.
pub fn backup_name(now: i64) -> String {
    format!("{NAME_PREFIX}{}{NAME_SUFFIX}", DateTime::from_unix(now, ZONE_OFFSET_SECS).compact())
}

/// The `YYYYMMDD_HHMMSS` part of one of our names.
pub fn name_timestamp(name: &str) -> Option<&str> {
    let stamp = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    DateTime::parse_compact(stamp, ZONE_OFFSET_SECS).map(|_| stamp)
}

pub fn parse_name(name: &str) -> Option<i64> {
    DateTime::parse_compact(name_timestamp(name)?, ZONE_OFFSET_SECS)
}

pub fn keep_for(target: Target, settings: &Settings) -> Keep {
    match target {
        Target::Local => Keep::days(settings.local_retention_days, settings.local_keep_last as usize),
        Target::S3 => Keep::days(settings.s3_retention_days, settings.s3_keep_last as usize),
    }
}

/// Only names this policy produced take part; their age is the time in the name (an mtime
/// changes when files are copied around, the name does not).
pub fn select_expired(backups: &[BackupEntry], now: i64, target: Target, settings: &Settings) -> Vec<String> {
    let ours: Vec<(String, i64)> =
        backups.iter().filter_map(|b| parse_name(&b.name).map(|t| (b.name.clone(), t))).collect();
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
            s3: s3_days.map(|d| S3Config {
                bucket: "b".into(),
                region: "us-east-1".into(),
                prefix: String::new(),
                retention_days: d,
            }),
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

    #[test]
    fn names() {
        assert_eq!(backup_name(NOW), "euraflow_backup_20251104_013000.sql.gz");
        // 17:00 UTC is 01:00 the next day in Beijing.
        assert_eq!(backup_name(1_762_275_600), "euraflow_backup_20251105_010000.sql.gz");
        assert_eq!(parse_name("euraflow_backup_20251104_013000.sql.gz"), Some(NOW));
        assert_eq!(name_timestamp("euraflow_backup_20251104_013000.sql.gz"), Some("20251104_013000"));
        for foreign in [
            "euraflow_backup_20251104_013000.sql.gz.partial",
            "euraflow_backup_20251104_013000.sql",
            "Euraflow_backup_20251104_013000.sql.gz",
            "euraflow_backup_20251304_013000.sql.gz",
            "euraflow_backup_latest.sql.gz",
            "other_20251104_013000.sql.gz",
            "euraflow_backup_20251104_013000.sql.gz.bak",
            "x/euraflow_backup_20251104_013000.sql.gz",
            "",
        ] {
            assert_eq!(parse_name(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn foreign_names_are_never_selected() {
        let old = |days: i64| backup_name(NOW - days * DAY);
        let mut listing: Vec<BackupEntry> = (0..40).map(|d| entry(&old(d))).collect();
        for foreign in ["notes.txt", "manual_dump.sql.gz", "euraflow_backup_old.sql.gz"] {
            listing.push(BackupEntry { name: foreign.into(), size_bytes: 1, modified: 0 });
        }
        let (s, _) = Settings::parse(&config(&[], None));
        let got = select_expired(&listing, NOW, Target::Local, &s);
        // 0..=7 days are within the window, 14 newest are 0..=13: days 14..39 expire.
        let want: Vec<String> = (14..40).rev().map(old).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn s3_uses_retention_days_from_config() {
        let listing: Vec<BackupEntry> = (0..50).map(|d| entry(&backup_name(NOW - d * DAY))).collect();
        let (s, w) = Settings::parse(&config(&[("s3_keep_last", "2")], Some(30)));
        assert!(w.is_empty());
        let got = select_expired(&listing, NOW, Target::S3, &s);
        let want: Vec<String> = (31..50).rev().map(|d| backup_name(NOW - d * DAY)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn all_old_keeps_minimum() {
        let listing: Vec<BackupEntry> = (100..120).map(|d| entry(&backup_name(NOW - d * DAY))).collect();
        let (s, _) = Settings::parse(&config(&[], Some(30)));
        for target in [Target::Local, Target::S3] {
            let got = select_expired(&listing, NOW, target, &s);
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
            Settings { local_retention_days: 3, local_keep_last: 14, s3_keep_last: 14, s3_retention_days: 10, schedule_cron: None }
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("EF__POLICY_LOCAL_KEEP_LAST") && w[0].contains("using 14"), "{}", w[0]);
        assert!(w[1].contains("EF__POLICY_COLOUR"), "{}", w[1]);
    }
}
