//! The default policy's decisions: schedule, names, retention and notifications of the EuraFlow
//! plugin.

use crate::civil::DateTime;
use crate::retention::{Keep, Why};
use crate::types::{BackupEntry, BackupKind, BackupSchedule, Config, NameInfo, NameRequest, RetentionDecision};

/// Asia/Shanghai is UTC+8 all year (see `civil`).
pub const ZONE: &str = "Asia/Shanghai";
pub const ZONE_OFFSET_SECS: i64 = 8 * 3600;
/// Between the database and the time: `<db>_backup_YYYYMMDD_HHMMSS<suffix>`.
pub const NAME_INFIX: &str = "_backup_";
/// The same for the server's globals: `<label>_globals_YYYYMMDD_HHMMSS<suffix>`.
pub const GLOBALS_INFIX: &str = "_globals_";
/// The suffix of gzip dumps, the only one of the original plugin (and of legacy names).
pub const NAME_SUFFIX: &str = ".sql.gz";
/// Every suffix a name of ours may end with: the formats the host writes (`format.suffix`),
/// today `.sql.gz`, and those announced for later (zstd, and both encrypted with age).
pub const SUFFIXES: [&str; 4] = [".sql.gz", ".sql.zst", ".sql.gz.age", ".sql.zst.age"];
/// Restore drills every day at 05:00 Beijing time, between the backups of 01:00 and 13:00.
pub const DEFAULT_DRILL_CRON: &str = "0 5 * * *";
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
    /// `drill_cron`: when to run restore drills (same time zone), 05:00 daily by default;
    /// `off` for never.
    pub drill_cron: Option<String>,
    /// `alert_size_drop_percent`: a backup this much smaller (bytes or rows) than the previous
    /// good one of its database is alerted (50); 0 for never.
    pub alert_size_drop_percent: u32,
    /// `legacy_prefix`: names `<legacy_prefix>_backup_YYYYMMDD_HHMMSS.sql.gz` are recognised
    /// as backups of this deployment's (first) database too (backups written before names
    /// carried the database, which were all `euraflow_backup_...`).
    pub legacy_prefix: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            local_retention_days: 7,
            local_keep_last: 14,
            s3_keep_last: 14,
            s3_retention_days: 30,
            schedule_cron: None,
            drill_cron: Some(DEFAULT_DRILL_CRON.to_string()),
            alert_size_drop_percent: 50,
            legacy_prefix: None,
        }
    }
}

/// Five fields (or six, seconds first) of digits, `*`, `,`, `-` and `/`: the syntax the
/// contract allows (the host's scheduler parses the rest).
pub fn validate_cron(cron: &str) -> Result<(), &'static str> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err("expected five fields (minute hour day-of-month month day-of-week), or six with seconds first");
    }
    if fields.iter().any(|f| !f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c))) {
        return Err("fields may only contain digits and * , - /");
    }
    Ok(())
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
            if key == "schedule_cron" || key == "drill_cron" {
                let v = value.trim();
                let (slot, otherwise) =
                    if key == "schedule_cron" { (&mut s.schedule_cron, "the default schedule") } else { (&mut s.drill_cron, "no restore drills") };
                if key == "drill_cron" && (v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none")) {
                    s.drill_cron = None;
                    continue;
                }
                match validate_cron(v) {
                    Ok(()) => *slot = Some(v.to_string()),
                    Err(why) => {
                        // An unusable drill cron turns drills off (as the warning says) rather
                        // than drilling at a time the operator did not choose.
                        if key == "drill_cron" {
                            *slot = None;
                        }
                        warnings.push(format!("EF__POLICY_{}={value:?}: {why}; using {otherwise}", key.to_uppercase()))
                    }
                }
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
                "alert_size_drop_percent" => match value.trim().parse::<u32>() {
                    Ok(v) if v <= 100 => {
                        s.alert_size_drop_percent = v;
                        continue;
                    }
                    _ => {
                        warnings.push(format!("EF__POLICY_ALERT_SIZE_DROP_PERCENT={value:?}: expected a whole number from 0 to 100; using 50"));
                        continue;
                    }
                },
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
/// operator's `EF__POLICY_SCHEDULE_CRON` in the same zone. Restore drills at
/// `EF__POLICY_DRILL_CRON` (05:00 daily unless `off`).
pub fn schedule(settings: &Settings) -> BackupSchedule {
    let drill_crons: Vec<String> = settings.drill_cron.iter().cloned().collect();
    match &settings.schedule_cron {
        Some(cron) => {
            BackupSchedule {
                crons: vec![cron.clone()], timezone: ZONE.to_string(), description: format!("按北京时间 cron `{cron}`"), drill_crons
            }
        }
        None => BackupSchedule {
            crons: vec!["0 1,13 * * *".to_string()],
            timezone: ZONE.to_string(),
            description: "每天北京时间 01:00 和 13:00".to_string(),
            drill_crons,
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

/// The inverse of [`encode_database`], for names it produced only: anything else (lower-case
/// hex, an encoded letter, a bare `.`, bytes that are not UTF-8) is none, so every database
/// has exactly one spelling in names.
pub fn decode_database(encoded: &str) -> Option<String> {
    let b = encoded.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            let (hi, lo) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            bytes.push(hi << 4 | lo);
            i += 3;
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(bytes).ok()?;
    (encode_database(&decoded) == encoded).then_some(decoded)
}

/// The name of one file of a run: `<database>_backup_YYYYMMDD_HHMMSS<suffix>` (the globals:
/// `<label>_globals_...`), Beijing time of the run's start; for the database `euraflow` and
/// gzip exactly the original plugin's names.
pub fn backup_name(request: &NameRequest) -> String {
    let infix = match request.kind {
        BackupKind::Database => NAME_INFIX,
        BackupKind::Globals => GLOBALS_INFIX,
    };
    let stamp = DateTime::from_unix(request.run_at, ZONE_OFFSET_SECS).compact();
    format!("{}{infix}{stamp}{}", encode_database(&request.database), request.format.suffix)
}

/// The parts of a name of our shape, whatever its database: (encoded database, kind, stamp).
/// Works on bytes (`get`), so no name, however odd, can panic.
fn split_name(name: &str) -> Option<(&str, BackupKind, &str)> {
    let rest = SUFFIXES.iter().find_map(|s| name.strip_suffix(s))?;
    let cut = rest.len().checked_sub(STAMP_LEN)?;
    let (before, stamp) = (rest.get(..cut)?, rest.get(cut..)?);
    let (db, kind) = match before.strip_suffix(NAME_INFIX) {
        Some(db) => (db, BackupKind::Database),
        None => (before.strip_suffix(GLOBALS_INFIX)?, BackupKind::Globals),
    };
    (!db.is_empty()).then_some((db, kind, stamp))
}

/// How this deployment's backups are named, and which names are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The databases this deployment backs up (`config.databases`).
    databases: Vec<String>,
    /// The label its globals backups go under (`config.globals-label`).
    globals_label: Option<String>,
    /// `<legacy_prefix>_backup_`, when the operator adopted the old names.
    legacy: Option<String>,
}

impl Names {
    pub fn new(databases: &[String], legacy_prefix: Option<&str>) -> Names {
        Names { databases: databases.to_vec(), globals_label: None, legacy: legacy_prefix.map(|p| format!("{p}{NAME_INFIX}")) }
    }

    /// The same, with the globals under `label` recognised too.
    pub fn with_globals(self, label: Option<&str>) -> Names {
        Names { globals_label: label.map(str::to_string), ..self }
    }

    pub fn of(config: &Config) -> Names {
        let (settings, _) = Settings::parse(config);
        Names::new(&config.databases, settings.legacy_prefix.as_deref()).with_globals(config.globals_label.as_deref())
    }

    /// What one of our names says. Only this deployment's databases count (and the adopted
    /// legacy prefix, for its first database): another deployment's backups in the same place
    /// are foreign. The globals are recognised only under `config.globals-label`.
    pub fn parse(&self, name: &str) -> Option<NameInfo> {
        if let Some(info) = self.parse_current(name) {
            return Some(info);
        }
        let stamp = name.strip_prefix(self.legacy.as_deref()?)?.strip_suffix(NAME_SUFFIX)?;
        let run_at = DateTime::parse_compact(stamp, ZONE_OFFSET_SECS)?;
        Some(NameInfo { database: self.databases.first()?.clone(), kind: BackupKind::Database, run_at })
    }

    fn parse_current(&self, name: &str) -> Option<NameInfo> {
        let (db, kind, stamp) = split_name(name)?;
        let run_at = DateTime::parse_compact(stamp, ZONE_OFFSET_SECS)?;
        let database = decode_database(db)?;
        let ours = match kind {
            BackupKind::Database => self.databases.contains(&database),
            BackupKind::Globals => self.globals_label.as_ref() == Some(&database),
        };
        ours.then_some(NameInfo { database, kind, run_at })
    }
}

/// The `YYYYMMDD_HHMMSS` part of a name of our shape, whatever its database (for responses,
/// which do not see the configuration).
pub fn name_timestamp(name: &str) -> Option<&str> {
    let (_, _, stamp) = split_name(name)?;
    DateTime::parse_compact(stamp, ZONE_OFFSET_SECS).map(|_| stamp)
}

/// The retention rule of one store, and how its reasons name the settings behind it.
pub struct StoreRule {
    pub keep: Keep,
    /// How reasons call the store's backups: `local`, `S3`.
    pub label: &'static str,
    /// The variable that sets `keep.within_secs`, and the one that sets `keep.last`.
    pub days_var: &'static str,
    pub last_var: &'static str,
    pub days: u32,
}

/// `local` and `s3` have the original's rules; any other store is unknown (none).
pub fn rule_for(store: &str, settings: &Settings) -> Option<StoreRule> {
    match store {
        "local" => Some(StoreRule {
            keep: Keep::days(settings.local_retention_days, settings.local_keep_last as usize),
            label: "local",
            days_var: "EF__POLICY_LOCAL_RETENTION_DAYS",
            last_var: "EF__POLICY_LOCAL_KEEP_LAST",
            days: settings.local_retention_days,
        }),
        "s3" => Some(StoreRule {
            keep: Keep::days(settings.s3_retention_days, settings.s3_keep_last as usize),
            label: "S3",
            days_var: "EF__BACKUP_RETENTION_DAYS",
            last_var: "EF__POLICY_S3_KEEP_LAST",
            days: settings.s3_retention_days,
        }),
        _ => None,
    }
}

fn kind_label(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Database => "database",
        BackupKind::Globals => "globals",
    }
}

/// A database (or the globals of a server label) and its kind: retention counts each on its own.
type Group<'a> = (&'a str, BackupKind);

/// A decision for every backup given. The rule of the store applies to each database (and to
/// the globals) on its own: for one database, exactly the original's rule. A backup's age is
/// its run time (from the name: an mtime changes when files are copied around, the name does
/// not). In a store the policy does not know, everything is kept.
pub fn select_expired(backups: &[BackupEntry], now: i64, store: &str, settings: &Settings) -> Vec<RetentionDecision> {
    let keep = |b: &BackupEntry, reason: String| RetentionDecision { name: b.name.clone(), delete: false, reason };
    let Some(rule) = rule_for(store, settings) else {
        let why = format!("store `{store}` is not one the default policy knows (`local`, `s3`): everything in it is kept");
        return backups.iter().map(|b| keep(b, why.clone())).collect();
    };
    // (database, kind) groups in order of first appearance.
    let mut groups: Vec<(Group, Vec<(String, i64)>)> = Vec::new();
    for b in backups {
        let key = (b.info.database.as_str(), b.info.kind);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, set)) => set.push((b.name.clone(), b.info.run_at)),
            None => groups.push((key, vec![(b.name.clone(), b.info.run_at)])),
        }
    }
    let several = groups.len() > 1;
    let mut out = Vec::with_capacity(backups.len());
    for ((database, kind), set) in &groups {
        // With several databases (or the globals) in a store, a reason says whose set it counts in.
        let of = if several { format!(" of {} `{database}`", kind_label(*kind)) } else { String::new() };
        let (label, last, days) = (rule.label, rule.keep.last.max(1), rule.days);
        for (name, why) in rule.keep.decide(set, now) {
            let reason = match why {
                Why::Future => "dated more than a day ahead of the host's clock: kept, and not counted among the newest".to_string(),
                Why::Newest => format!("the newest backup{of}"),
                Why::Last => format!("one of the {last} newest {label} backups{of} ({})", rule.last_var),
                Why::Within => format!("not older than {days} days ({})", rule.days_var),
                Why::Expired => {
                    format!("older than {days} days ({}) and not one of the {last} newest {label} backups{of} ({})", rule.days_var, rule.last_var)
                }
            };
            out.push(RetentionDecision { name: name.to_string(), delete: why.expires(), reason });
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{Format, S3Config};

    const NOW: i64 = 1_762_191_000; // 2025-11-04 01:30:00 Beijing
    const DAY: i64 = 86_400;

    pub(crate) fn config(settings: &[(&str, &str)], s3_days: Option<u32>) -> Config {
        Config {
            databases: vec!["euraflow".into()],
            globals_label: Some("pg42".into()),
            backup_dir: "/var/backups".into(),
            s3: s3_days.map(|d| S3Config { bucket: "b".into(), region: "us-east-1".into(), prefix: String::new(), retention_days: d }),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub(crate) fn gzip() -> Format {
        Format { suffix: ".sql.gz".into(), codec: "gzip".into(), encrypted: false }
    }

    pub(crate) fn request(database: &str, kind: BackupKind, suffix: &str, run_at: i64) -> NameRequest {
        NameRequest { database: database.into(), kind, format: Format { suffix: suffix.into(), ..gzip() }, run_at }
    }

    pub(crate) fn info(database: &str, run_at: i64) -> NameInfo {
        NameInfo { database: database.into(), kind: BackupKind::Database, run_at }
    }

    /// An entry as the host passes it: recognised, with what `parse-name` said.
    pub(crate) fn entry(name: &str) -> BackupEntry {
        let info = euraflow().parse(name).unwrap_or_else(|| panic!("{name} is not ours"));
        BackupEntry { name: name.into(), size_bytes: 1, modified: NOW, info }
    }

    fn dbs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn schedule_can_be_overridden() {
        let (settings, w) = Settings::parse(&config(&[("schedule_cron", " */5 * * * * * ")], None));
        assert!(w.is_empty());
        let s = schedule(&settings);
        assert_eq!(s.crons, ["*/5 * * * * *"]);
        assert_eq!(s.timezone, "Asia/Shanghai");
        assert_eq!(s.drill_crons, [DEFAULT_DRILL_CRON]);
    }

    #[test]
    fn schedule_is_the_originals() {
        let s = schedule(&Settings::default());
        assert_eq!(s.crons, ["0 1,13 * * *"]);
        assert_eq!(s.timezone, "Asia/Shanghai");
        assert_eq!(s.description, "每天北京时间 01:00 和 13:00");
        assert_eq!(s.drill_crons, [DEFAULT_DRILL_CRON], "a drill every day unless turned off");
    }

    #[test]
    fn drill_cron_setting() {
        let (settings, w) = Settings::parse(&config(&[("drill_cron", " 0 4 * * 0 ")], None));
        assert!(w.is_empty(), "{w:?}");
        let s = schedule(&settings);
        assert_eq!(s.drill_crons, ["0 4 * * 0"]);
        assert_eq!((s.crons, s.description), (vec!["0 1,13 * * *".to_string()], "每天北京时间 01:00 和 13:00".to_string()), "the backups' own");
        // `off`: no drills, and nothing to warn about.
        for off in ["off", " OFF ", "none"] {
            let (settings, w) = Settings::parse(&config(&[("drill_cron", off)], None));
            assert!(w.is_empty() && schedule(&settings).drill_crons.is_empty(), "{off}: {w:?}");
        }
        for bad in ["@weekly", "0 4 * *", "0 4 * * SUN", "0 0 4 * * * *"] {
            let (settings, w) = Settings::parse(&config(&[("drill_cron", bad)], None));
            assert!(schedule(&settings).drill_crons.is_empty(), "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
            assert!(w[0].contains("EF__POLICY_DRILL_CRON") && w[0].contains("no restore drills"), "{}", w[0]);
        }
    }

    #[test]
    fn an_invalid_schedule_cron_is_reported() {
        let (settings, w) = Settings::parse(&config(&[("schedule_cron", "0 1 * * MON")], None));
        assert_eq!(settings.schedule_cron, None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("EF__POLICY_SCHEDULE_CRON") && w[0].contains("the default schedule"), "{}", w[0]);
        assert_eq!(schedule(&settings).crons, ["0 1,13 * * *"]);
    }

    fn euraflow() -> Names {
        Names::new(&dbs(&["euraflow"]), None)
    }

    fn backup_name_at(now: i64) -> String {
        backup_name(&request("euraflow", BackupKind::Database, ".sql.gz", now))
    }

    #[test]
    fn names() {
        let n = euraflow();
        assert_eq!(backup_name_at(NOW), "euraflow_backup_20251104_013000.sql.gz");
        // 17:00 UTC is 01:00 the next day in Beijing.
        assert_eq!(backup_name_at(1_762_275_600), "euraflow_backup_20251105_010000.sql.gz");
        assert_eq!(n.parse("euraflow_backup_20251104_013000.sql.gz"), Some(info("euraflow", NOW)));
        assert_eq!(name_timestamp("euraflow_backup_20251104_013000.sql.gz"), Some("20251104_013000"));
        assert_eq!(name_timestamp("shop%2Eeu_backup_20251104_013000.sql.gz"), Some("20251104_013000"));
        assert_eq!(name_timestamp("srv_globals_20251104_013000.sql.zst.age"), Some("20251104_013000"));
        for foreign in [
            "euraflow_backup_20251104_013000.sql.gz.partial",
            "euraflow_backup_20251104_013000.sql",
            "euraflow_backup_20251104_013000.sql.bz2",
            "euraflow_backup_20251104_013000.gz",
            "Euraflow_backup_20251104_013000.sql.gz",
            "euraflow_backup_20251304_013000.sql.gz",
            "euraflow_backup_latest.sql.gz",
            "other_20251104_013000.sql.gz",
            "euraflow_backup_20251104_013000.sql.gz.bak",
            "x/euraflow_backup_20251104_013000.sql.gz",
            "euraflow2_backup_20251104_013000.sql.gz",
            "euraflow_backup_backup_20251104_013000.sql.gz",
            "euraflow_dump_20251104_013000.sql.gz",
            "%65uraflow_backup_20251104_013000.sql.gz",
            "",
        ] {
            assert_eq!(n.parse(foreign), None, "{foreign}");
        }
    }

    /// The format's suffix ends the name; `parse-name` takes every suffix the host may use.
    #[test]
    fn names_end_with_the_format_suffix() {
        let n = euraflow();
        for suffix in SUFFIXES {
            let name = backup_name(&request("euraflow", BackupKind::Database, suffix, NOW));
            assert_eq!(name, format!("euraflow_backup_20251104_013000{suffix}"));
            assert_eq!(n.parse(&name), Some(info("euraflow", NOW)), "{name}");
        }
        // A suffix the policy does not know is used as asked, but such names are not ours.
        let odd = backup_name(&request("euraflow", BackupKind::Database, ".dump", NOW));
        assert_eq!(odd, "euraflow_backup_20251104_013000.dump");
        assert_eq!(n.parse(&odd), None);
    }

    #[test]
    fn globals_names() {
        let n = Names::new(&dbs(&["euraflow"]), None).with_globals(Some("db.example:5432"));
        let name = backup_name(&request("db.example:5432", BackupKind::Globals, ".sql.gz", NOW));
        assert_eq!(name, "db%2Eexample%3A5432_globals_20251104_013000.sql.gz");
        let want = NameInfo { database: "db.example:5432".into(), kind: BackupKind::Globals, run_at: NOW };
        assert_eq!(n.parse(&name), Some(want));
        assert_eq!(euraflow().parse(&name), None, "globals under another label are foreign");
        // The label is only a globals label: a database of that name is another deployment's.
        let dump = backup_name(&request("db.example:5432", BackupKind::Database, ".sql.gz", NOW));
        assert_eq!(n.parse(&dump), None);
        // And a database's name is no globals label.
        let euraflow_globals = backup_name(&request("euraflow", BackupKind::Globals, ".sql.gz", NOW));
        assert_eq!(euraflow_globals, "euraflow_globals_20251104_013000.sql.gz");
        assert_eq!(n.parse(&euraflow_globals), None);
        let sysid = Names::new(&dbs(&["euraflow"]), None).with_globals(Some("pg7716027164675544903"));
        let name = backup_name(&request("pg7716027164675544903", BackupKind::Globals, ".sql.gz", NOW));
        assert_eq!(name, "pg7716027164675544903_globals_20251104_013000.sql.gz");
        assert_eq!(sysid.parse(&name).map(|i| i.kind), Some(BackupKind::Globals));
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
            "%_backup_20251104_013000.sql.gz",
            "%E_backup_20251104_013000.sql.gz",
            "%FF_backup_20251104_013000.sql.gz",
            "%e6%95%b0_backup_20251104_013000.sql.gz",
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
        let adopted = Names::new(&dbs(&["euraflow"]), Some("euraflow"));
        for name in &odd {
            assert_eq!(n.parse(name), None, "{name:?}");
            assert_eq!(adopted.parse(name), None, "{name:?}");
            // Database-agnostic (responses do not see the config): it may find a time, but never panics.
            let _ = name_timestamp(name);
            let _ = decode_database(name);
        }
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
            ("x_backup", "x_backup_backup_20251104_013000.sql.gz"),
        ];
        for (db, want) in table {
            let n = Names::new(&dbs(&[db]), None);
            assert_eq!(backup_name(&request(db, BackupKind::Database, ".sql.gz", NOW)), want, "{db}");
            assert_eq!(n.parse(want), Some(info(db, NOW)), "{db}");
            assert_eq!(decode_database(&encode_database(db)).as_deref(), Some(db));
            for (other, theirs) in table {
                if other != db {
                    assert_eq!(n.parse(theirs), None, "{db} must not recognise {other}'s {theirs}");
                }
            }
        }
        // Several databases in one deployment: each name says whose it is.
        let all: Vec<&str> = table.iter().map(|(db, _)| *db).collect();
        let n = Names::new(&dbs(&all), None);
        for (db, name) in table {
            assert_eq!(n.parse(name), Some(info(db, NOW)), "{name}");
        }
        // Injective: `%` is itself encoded, so a literal "%2E" and "." never meet.
        assert_ne!(encode_database("a.b"), encode_database("a%2Eb"));
        // The longest database name PostgreSQL allows (63 bytes), all multi-byte.
        let longest = "数".repeat(21);
        let name = backup_name(&request(&longest, BackupKind::Database, ".sql.zst.age", NOW));
        assert!(name.len() + ".partial".len() <= 255, "{} bytes", name.len());
    }

    #[test]
    fn legacy_names_are_recognised_only_when_adopted() {
        let old = "euraflow_backup_20251104_013000.sql.gz";
        let shop = |settings: &[(&str, &str)]| Config { databases: dbs(&["shop"]), ..config(settings, None) };
        assert_eq!(Names::of(&shop(&[])).parse(old), None);
        let n = Names::of(&shop(&[("legacy_prefix", "euraflow")]));
        assert_eq!(n.parse(old), Some(info("shop", NOW)), "a legacy name is a backup of the (first) database");
        assert_eq!(n.parse("shop_backup_20251104_013000.sql.gz"), Some(info("shop", NOW)));
        assert_eq!(n.parse("euraflow_backup_20251104_013000.sql.zst"), None, "legacy names were all .sql.gz");
        assert_eq!(backup_name(&request("shop", BackupKind::Database, ".sql.gz", NOW)), "shop_backup_20251104_013000.sql.gz");
        let (s, w) = Settings::parse(&shop(&[("legacy_prefix", "../x")]));
        assert_eq!((s.legacy_prefix, w.len()), (None, 1));
    }

    fn expired(decisions: &[RetentionDecision]) -> Vec<String> {
        let mut names: Vec<String> = decisions.iter().filter(|d| d.delete).map(|d| d.name.clone()).collect();
        names.sort();
        names.reverse();
        names
    }

    fn reason<'a>(decisions: &'a [RetentionDecision], name: &str) -> &'a str {
        &decisions.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no decision for {name}")).reason
    }

    #[test]
    fn local_retention_is_the_originals_with_a_reason_for_every_backup() {
        let old = |days: i64| backup_name_at(NOW - days * DAY);
        let listing: Vec<BackupEntry> = (0..40).map(|d| entry(&old(d))).collect();
        let (s, _) = Settings::parse(&config(&[], None));
        let got = select_expired(&listing, NOW, "local", &s);
        assert_eq!(got.len(), listing.len(), "a decision for every backup");
        // 0..=7 days are within the window, 14 newest are 0..=13: days 14..39 expire.
        let mut want: Vec<String> = (14..40).map(old).collect();
        want.sort();
        want.reverse();
        assert_eq!(expired(&got), want);
        assert_eq!(reason(&got, &old(0)), "the newest backup");
        assert_eq!(reason(&got, &old(5)), "one of the 14 newest local backups (EF__POLICY_LOCAL_KEEP_LAST)");
        assert_eq!(
            reason(&got, &old(20)),
            "older than 7 days (EF__POLICY_LOCAL_RETENTION_DAYS) and not one of the 14 newest local backups (EF__POLICY_LOCAL_KEEP_LAST)"
        );
        let (s, _) = Settings::parse(&config(&[("local_keep_last", "2")], None));
        let got = select_expired(&listing, NOW, "local", &s);
        assert_eq!(reason(&got, &old(6)), "not older than 7 days (EF__POLICY_LOCAL_RETENTION_DAYS)");
        assert!(got.iter().find(|d| d.name == old(8)).unwrap().delete);
    }

    #[test]
    fn s3_uses_retention_days_from_config() {
        let listing: Vec<BackupEntry> = (0..50).map(|d| entry(&backup_name_at(NOW - d * DAY))).collect();
        let (s, w) = Settings::parse(&config(&[("s3_keep_last", "2")], Some(30)));
        assert!(w.is_empty());
        let got = select_expired(&listing, NOW, "s3", &s);
        assert_eq!(got.len(), 50);
        let mut want: Vec<String> = (31..50).map(|d| backup_name_at(NOW - d * DAY)).collect();
        want.sort();
        want.reverse();
        assert_eq!(expired(&got), want);
        assert_eq!(
            reason(&got, &backup_name_at(NOW - 40 * DAY)),
            "older than 30 days (EF__BACKUP_RETENTION_DAYS) and not one of the 2 newest S3 backups (EF__POLICY_S3_KEEP_LAST)"
        );
        assert_eq!(reason(&got, &backup_name_at(NOW - DAY)), "one of the 2 newest S3 backups (EF__POLICY_S3_KEEP_LAST)");
        assert_eq!(reason(&got, &backup_name_at(NOW - 29 * DAY)), "not older than 30 days (EF__BACKUP_RETENTION_DAYS)");
    }

    #[test]
    fn all_old_keeps_minimum() {
        let listing: Vec<BackupEntry> = (100..120).map(|d| entry(&backup_name_at(NOW - d * DAY))).collect();
        let (s, _) = Settings::parse(&config(&[], Some(30)));
        for store in ["local", "s3"] {
            let got = select_expired(&listing, NOW, store, &s);
            assert_eq!(expired(&got).len(), 6, "{store}");
            assert_eq!(reason(&got, &backup_name_at(NOW - 100 * DAY)), "the newest backup", "newest must survive");
        }
    }

    #[test]
    fn an_unknown_store_keeps_everything_and_says_why() {
        let listing: Vec<BackupEntry> = (100..120).map(|d| entry(&backup_name_at(NOW - d * DAY))).collect();
        let got = select_expired(&listing, NOW, "gcs", &Settings::default());
        assert_eq!(got.len(), listing.len());
        for d in &got {
            assert!(!d.delete, "{}", d.name);
            assert!(d.reason.contains("`gcs`") && d.reason.contains("kept"), "{}", d.reason);
        }
    }

    #[test]
    fn future_names_are_kept_and_take_no_place() {
        let listing: Vec<BackupEntry> = [-30, 9, 10].iter().map(|d| entry(&backup_name_at(NOW - d * DAY))).collect();
        let (s, _) = Settings::parse(&config(&[("local_keep_last", "1"), ("local_retention_days", "0")], None));
        let got = select_expired(&listing, NOW, "local", &s);
        assert_eq!(expired(&got), [backup_name_at(NOW - 10 * DAY)]);
        assert!(reason(&got, &backup_name_at(NOW + 30 * DAY)).contains("ahead of the host's clock"));
        assert_eq!(reason(&got, &backup_name_at(NOW - 9 * DAY)), "the newest backup");
    }

    /// Each database (and the globals) keeps its own newest backups: a busy database never
    /// ages out a quiet one's.
    #[test]
    fn retention_counts_each_database_on_its_own() {
        let name = |db: &str, kind: BackupKind, days: i64| backup_name(&request(db, kind, ".sql.gz", NOW - days * DAY));
        let mut listing = Vec::new();
        for (db, kind, ages) in
            [("euraflow", BackupKind::Database, 0..30), ("shop", BackupKind::Database, 25..27), ("euraflow", BackupKind::Globals, 0..20)]
        {
            for d in ages {
                let n = name(db, kind, d);
                listing.push(BackupEntry {
                    name: n,
                    size_bytes: 1,
                    modified: NOW,
                    info: NameInfo { database: db.into(), kind, run_at: NOW - d * DAY },
                });
            }
        }
        let got = select_expired(&listing, NOW, "local", &Settings::default());
        assert_eq!(got.len(), listing.len());
        let deleted = |db: &str, kind: BackupKind| {
            got.iter().filter(|d| d.delete && listing.iter().any(|b| b.name == d.name && b.info.database == db && b.info.kind == kind)).count()
        };
        assert_eq!(deleted("euraflow", BackupKind::Database), 16);
        assert_eq!(deleted("shop", BackupKind::Database), 0, "shop's two old backups are its newest");
        assert_eq!(deleted("euraflow", BackupKind::Globals), 6);
        assert_eq!(reason(&got, &name("shop", BackupKind::Database, 25)), "the newest backup of database `shop`");
        assert_eq!(
            reason(&got, &name("euraflow", BackupKind::Globals, 3)),
            "one of the 14 newest local backups of globals `euraflow` (EF__POLICY_LOCAL_KEEP_LAST)"
        );
    }

    #[test]
    fn settings_parse_and_warn() {
        let (s, w) = Settings::parse(&config(
            &[
                ("local_retention_days", "3"),
                ("local_keep_last", "x"),
                ("colour", "blue"),
                ("s3_keep_last", "99999999"),
                ("alert_size_drop_percent", "30"),
            ],
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
                drill_cron: Some(DEFAULT_DRILL_CRON.into()),
                alert_size_drop_percent: 30,
                legacy_prefix: None
            }
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("EF__POLICY_LOCAL_KEEP_LAST") && w[0].contains("using 14"), "{}", w[0]);
        assert!(w[1].contains("EF__POLICY_COLOUR"), "{}", w[1]);
        let (s, w) = Settings::parse(&config(&[("alert_size_drop_percent", "101")], None));
        assert_eq!((s.alert_size_drop_percent, w.len()), (50, 1), "{w:?}");
    }
}
