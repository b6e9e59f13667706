//! Counters and gauges of the service, rendered in the Prometheus text format. Only numbers:
//! nothing here can carry a secret.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::state::{Finished, Loaded, RunOutcome};

#[derive(Debug, Default)]
pub struct Metrics {
    pub last_success_timestamp: AtomicI64,
    pub last_duration_ms: AtomicU64,
    pub last_size_bytes: AtomicU64,
    pub successes_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub s3_upload_failures_total: AtomicU64,
    pub busy_rejections_total: AtomicU64,
    pub retention_clock_skips_total: AtomicU64,
}

/// Values read at scrape time rather than kept as counters.
#[derive(Debug, Default)]
pub struct Gauges {
    pub backups_on_disk: u64,
    pub running: bool,
    pub next_run: Option<i64>,
    /// Per database (and the globals, kind `globals`): recognised backups on disk and the run
    /// time of the newest, from the backup directory (so they survive restarts).
    pub per_database: Vec<PerDatabase>,
    /// Restore drills per database, from the history (so they survive restarts).
    pub drills: Vec<crate::state::DrillStats>,
    /// Notifications given up per channel (after retries, or dropped), from the history.
    pub notification_failures: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerDatabase {
    pub database: String,
    pub kind: &'static str,
    pub on_disk: u64,
    pub newest_run_at: i64,
    /// Whether this database's file of the last run was written; None when the last run of
    /// this process did not include it.
    pub last_run_ok: Option<bool>,
}

/// One family's value for a database; None for no sample.
type SampleOf = fn(&PerDatabase) -> Option<String>;

/// A label value as the Prometheus text format wants it: `\`, `"` and line breaks escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Starts from what the state store recorded, so a restart resets nothing.
    pub fn load(&self, loaded: &Loaded) {
        let t = &loaded.totals;
        self.successes_total.store(t.successes, Ordering::Relaxed);
        self.failures_total.store(t.failures, Ordering::Relaxed);
        self.s3_upload_failures_total.store(t.s3_upload_failures, Ordering::Relaxed);
        self.retention_clock_skips_total.store(t.retention_clock_skips, Ordering::Relaxed);
        if let Some(s) = &loaded.last_success {
            self.last_success_timestamp.store(s.finished_at, Ordering::Relaxed);
            self.last_size_bytes.store(s.size_bytes, Ordering::Relaxed);
            self.last_duration_ms.store(s.duration_ms, Ordering::Relaxed);
        }
    }

    /// Counts a finished run.
    pub fn count(&self, f: &Finished) {
        if f.outcome == RunOutcome::Ok {
            self.successes_total.fetch_add(1, Ordering::Relaxed);
            self.last_success_timestamp.store(f.finished_at, Ordering::Relaxed);
            self.last_size_bytes.store(f.size_bytes.unwrap_or(0), Ordering::Relaxed);
            self.last_duration_ms.store(f.duration_ms, Ordering::Relaxed);
        } else {
            self.failures_total.fetch_add(1, Ordering::Relaxed);
        }
        if f.s3 == Some("failed") {
            self.s3_upload_failures_total.fetch_add(1, Ordering::Relaxed);
        }
        self.retention_clock_skips_total.fetch_add(u64::from(f.clock_skips), Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "ef_backup_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful backup (0: none recorded in EF__STATE_DIR).",
            self.last_success_timestamp.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "ef_backup_last_duration_seconds",
            "gauge",
            "Duration of the last successful backup.",
            format!("{:.3}", self.last_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        metric("ef_backup_last_size_bytes", "gauge", "Size of the last successful backup file.", load(&self.last_size_bytes));
        metric("ef_backup_successes_total", "counter", "Backups that succeeded.", load(&self.successes_total));
        metric("ef_backup_failures_total", "counter", "Backups that failed.", load(&self.failures_total));
        metric(
            "ef_backup_s3_upload_failures_total",
            "counter",
            "Backups whose S3 upload failed (the local backup was kept).",
            load(&self.s3_upload_failures_total),
        );
        metric(
            "ef_backup_busy_rejections_total",
            "counter",
            "Backup requests refused because a backup was running.",
            load(&self.busy_rejections_total),
        );
        metric(
            "ef_backup_retention_clock_skips_total",
            "counter",
            "Retention passes skipped because the clock was earlier than the last recorded run.",
            load(&self.retention_clock_skips_total),
        );
        metric("ef_backup_backups_on_disk", "gauge", "Backups in the backup directory that the policy recognises.", g.backups_on_disk.to_string());
        metric("ef_backup_running", "gauge", "1 while a backup runs.", u8::from(g.running).to_string());
        metric(
            "ef_backup_next_run_timestamp_seconds",
            "gauge",
            "Unix time of the next scheduled backup (0: no schedule).",
            g.next_run.unwrap_or(0).to_string(),
        );
        let families: [(&str, &str, SampleOf); 3] = [
            (
                "ef_backup_database_backups_on_disk",
                "Recognised backups in the backup directory, per database (kind globals: the server's roles).",
                |d| Some(d.on_disk.to_string()),
            ),
            (
                "ef_backup_database_newest_backup_timestamp_seconds",
                "Run time of the newest recognised backup in the backup directory, per database: alert when it grows old.",
                |d| Some(d.newest_run_at.to_string()),
            ),
            ("ef_backup_database_last_run_success", "1 when the last run wrote this database's backup, 0 when it failed.", |d| {
                d.last_run_ok.map(|ok| u8::from(ok).to_string())
            }),
        ];
        let total: u64 = g.notification_failures.iter().map(|(_, n)| n).sum();
        let _ = write!(
            out,
            "# HELP ef_backup_notification_failures_total Notifications given up after their retries (or dropped), per channel.\n\
             # TYPE ef_backup_notification_failures_total counter\n{}",
            if g.notification_failures.is_empty() {
                format!("ef_backup_notification_failures_total {total}\n")
            } else {
                g.notification_failures
                    .iter()
                    .map(|(c, n)| format!("ef_backup_notification_failures_total{{channel=\"{}\"}} {n}\n", label(c)))
                    .collect()
            }
        );
        type DrillSample = fn(&crate::state::DrillStats) -> Option<String>;
        let drill_families: [(&str, &str, &str, DrillSample); 3] = [
            (
                "ef_backup_last_drill_success_timestamp_seconds",
                "gauge",
                "Unix time of the last restore drill that passed, per database: alert when it is older than 8 days.",
                |d| d.last_success_at.map(|t| t.to_string()),
            ),
            ("ef_backup_last_drill_restore_seconds", "gauge", "How long the last passing drill took to restore, per database.", |d| {
                d.last_restore_seconds.map(|s| format!("{s:.3}"))
            }),
            ("ef_backup_drill_failures_total", "counter", "Restore drills that failed, per database.", |d| Some(d.failures.to_string())),
        ];
        for (name, kind, help, value) in drill_families {
            let samples: Vec<String> =
                g.drills.iter().filter_map(|d| Some(format!("{name}{{database=\"{}\"}} {}\n", label(&d.database), value(d)?))).collect();
            if !samples.is_empty() {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{}", samples.concat());
            }
        }
        for (name, help, value) in families {
            let samples: Vec<String> = g
                .per_database
                .iter()
                .filter_map(|d| Some(format!("{name}{{database=\"{}\",kind=\"{}\"}} {}\n", label(&d.database), d.kind, value(d)?)))
                .collect();
            if !samples.is_empty() {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{}", samples.concat());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_database_gauges_are_labelled_and_escaped() {
        let odd = PerDatabase { database: "we\"ird\\db".into(), kind: "database", on_disk: 2, newest_run_at: 99, last_run_ok: Some(false) };
        let globals = PerDatabase { database: "pg42".into(), kind: "globals", on_disk: 1, newest_run_at: 98, last_run_ok: None };
        let text = Metrics::default().render(&Gauges { per_database: vec![odd, globals], ..Gauges::default() });
        assert!(text.contains("\nef_backup_database_newest_backup_timestamp_seconds{database=\"we\\\"ird\\\\db\",kind=\"database\"} 99\n"), "{text}");
        assert!(text.contains("\nef_backup_database_backups_on_disk{database=\"pg42\",kind=\"globals\"} 1\n"), "{text}");
        assert!(text.contains("\nef_backup_database_last_run_success{database=\"we\\\"ird\\\\db\",kind=\"database\"} 0\n"), "{text}");
        assert!(!text.contains("last_run_success{database=\"pg42\""), "not in the last run: no sample");
    }

    /// Pins issue 17: drill metrics per database and notification failures per channel.
    #[test]
    fn drill_and_notification_metrics() {
        let drills = vec![
            crate::state::DrillStats {
                database: "app".into(),
                last_success_at: Some(77),
                last_restore_seconds: Some(1.5),
                failures: 2,
                successes: 3,
            },
            crate::state::DrillStats { database: "shop".into(), last_success_at: None, last_restore_seconds: None, failures: 1, successes: 0 },
        ];
        let g = Gauges { drills, notification_failures: vec![("webhook".into(), 4)], ..Gauges::default() };
        let text = Metrics::default().render(&g);
        assert!(text.contains("\nef_backup_last_drill_success_timestamp_seconds{database=\"app\"} 77\n"), "{text}");
        assert!(!text.contains("last_drill_success_timestamp_seconds{database=\"shop\""), "never passed: no sample");
        assert!(text.contains("\nef_backup_last_drill_restore_seconds{database=\"app\"} 1.500\n"), "{text}");
        assert!(text.contains("\nef_backup_drill_failures_total{database=\"shop\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE ef_backup_drill_failures_total counter\n"), "{text}");
        assert!(text.contains("\nef_backup_notification_failures_total{channel=\"webhook\"} 4\n"), "{text}");
        let none = Metrics::default().render(&Gauges::default());
        assert!(none.contains("\nef_backup_notification_failures_total 0\n"), "{none}");
    }

    #[test]
    fn every_metric_has_help_type_and_one_sample() {
        let m = Metrics::default();
        m.failures_total.store(3, Ordering::Relaxed);
        let text = m.render(&Gauges { backups_on_disk: 2, running: true, next_run: Some(10), ..Gauges::default() });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() % 3, 0);
        for chunk in lines.chunks(3) {
            let name = chunk[0].split_whitespace().nth(2).unwrap();
            assert!(chunk[0].starts_with("# HELP ef_backup_"), "{chunk:?}");
            assert!(chunk[1].starts_with(&format!("# TYPE {name} ")), "{chunk:?}");
            let (sample, value) = chunk[2].split_once(' ').unwrap();
            assert_eq!(sample, name);
            assert!(value.parse::<f64>().is_ok(), "{chunk:?}");
        }
        assert!(text.contains("\nef_backup_failures_total 3\n"));
        assert!(text.contains("\nef_backup_running 1\n"));
    }
}
