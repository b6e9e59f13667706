//! The safety rules the host enforces on every retention decision, whatever the policy answers
//! (in the spirit of rustic_core's `KeepOptions`: every listed backup gets a decision and the
//! reason for it, so a log line can say why a file was kept).
//!
//! The policy proposes (`select-expired`); these rules dispose. They only ever turn a proposed
//! deletion into a keep, never the other way round.

use std::collections::BTreeMap;

use crate::model::{BackupEntry, BackupKind, NameInfo, Target};
use crate::store::BackupStore;

/// A recognised name dated more than this after `now` is "future-dated": a clock that was
/// wrong when it was written, or a file put there by hand. It never counts as the newest
/// backup (that would let it shield nothing while the real newest ages out).
pub const FUTURE_SLACK_SECS: i64 = 86_400;

/// Why a listed backup stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// The policy did not select it.
    NotSelected,
    /// The policy does not recognise the name: another deployment's file, or no backup at all.
    Foreign,
    /// The backup this run has just written.
    JustWritten,
    /// The newest recognised backup by the time its name carries (future-dated names excluded).
    NewestByName,
    /// The most recently modified recognised backup (file mtime, S3 LastModified).
    NewestByModified,
    /// Among the newest `EF__BACKUP_MIN_KEEP` recognised backups.
    MinKeep,
    /// The clock is earlier than the last recorded run: nothing is deleted until it catches up.
    ClockBehind,
    /// Its database (or the globals) got no new backup in this run (its dump failed, or it is
    /// no longer backed up): a run deletes only where it wrote.
    NotBackedUpNow,
}

impl KeepReason {
    /// A rule of the host overruled the policy's selection (as opposed to the policy keeping it).
    pub fn is_safety_rule(self) -> bool {
        !matches!(self, KeepReason::NotSelected | KeepReason::Foreign)
    }
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeepReason::NotSelected => "not selected by the policy",
            KeepReason::Foreign => "not a name of this deployment",
            KeepReason::JustWritten => "it is the backup just written",
            KeepReason::NewestByName => "it is the newest backup by the time in its name",
            KeepReason::NewestByModified => "it is the most recently modified backup",
            KeepReason::MinKeep => "it is among the newest EF__BACKUP_MIN_KEEP backups",
            KeepReason::ClockBehind => "the clock is behind the last recorded run",
            KeepReason::NotBackedUpNow => "its database got no new backup in this run",
        })
    }
}

/// Why a listed backup goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// The policy selected it and no safety rule keeps it.
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Keep(KeepReason),
    Delete(DeleteReason),
}

/// What the rules decided for one place (the backup directory or the bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One decision per listed backup, in listing order.
    pub decisions: Vec<(String, Decision)>,
    /// Recognised names dated more than [`FUTURE_SLACK_SECS`] after `now`.
    pub future_dated: Vec<String>,
    /// `now` is earlier than the last recorded run: everything is kept.
    pub clock_behind: bool,
}

impl Plan {
    pub fn to_delete(&self) -> Vec<String> {
        self.decisions.iter().filter(|(_, d)| matches!(d, Decision::Delete(_))).map(|(n, _)| n.clone()).collect()
    }

    /// Names the policy selected that a safety rule keeps, with the rule.
    pub fn overruled(&self) -> Vec<(&str, KeepReason)> {
        self.decisions
            .iter()
            .filter_map(|(n, d)| match d {
                Decision::Keep(r) if r.is_safety_rule() && *r != KeepReason::ClockBehind => Some((n.as_str(), *r)),
                _ => None,
            })
            .collect()
    }
}

/// The host's side of a retention run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub now: i64,
    /// `EF__BACKUP_MIN_KEEP`.
    pub min_keep: u32,
    /// When the last run recorded in the state store started.
    pub last_recorded_run: Option<i64>,
}

impl Guard {
    /// The clock went backwards: `now` is earlier than a run already recorded. A jump forward
    /// cannot be told from time passing; `min_keep` bounds what it can cost.
    pub fn clock_behind(&self) -> bool {
        self.last_recorded_run.is_some_and(|last| self.now < last)
    }

    /// Decides every listed backup. `recognised` holds the listed names the policy recognises
    /// with what each name says (database, kind, run time); `selected` is the policy's answer;
    /// `just_written` the name this run wrote, if any. The rules hold per database and kind:
    /// the newest dump of each database and the newest globals are kept, and the minimum count
    /// is counted in each.
    pub fn decide(&self, listing: &[BackupEntry], recognised: &[(BackupEntry, NameInfo)], selected: &[String], just_written: Option<&str>) -> Plan {
        let written: Vec<&str> = just_written.into_iter().collect();
        self.decide_run(listing, recognised, selected, &written, None)
    }

    /// [`Guard::decide`] after a run that wrote `written`; with `only`, deletions are limited
    /// to those databases and kinds (the ones the run wrote a new backup of).
    pub fn decide_run(
        &self,
        listing: &[BackupEntry],
        recognised: &[(BackupEntry, NameInfo)],
        selected: &[String],
        written: &[&str],
        only: Option<&[(&str, BackupKind)]>,
    ) -> Plan {
        if self.clock_behind() {
            let decisions = listing.iter().map(|b| (b.name.clone(), Decision::Keep(KeepReason::ClockBehind))).collect();
            return Plan { decisions, future_dated: Vec::new(), clock_behind: true };
        }
        let future = |t: i64| t > self.now.saturating_add(FUTURE_SLACK_SECS);
        let mut groups: BTreeMap<(&str, BackupKind), Vec<&(BackupEntry, NameInfo)>> = BTreeMap::new();
        for r in recognised {
            groups.entry((r.1.database.as_str(), r.1.kind)).or_default().push(r);
        }
        let (mut newest_by_name, mut newest_modified, mut protected_by_count) = (Vec::new(), Vec::new(), Vec::new());
        for group in groups.values() {
            let mut dated: Vec<(&str, i64)> = group.iter().filter(|(_, i)| !future(i.run_at)).map(|(b, i)| (b.name.as_str(), i.run_at)).collect();
            // Newest first; the name breaks ties so the outcome never depends on listing order.
            dated.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
            newest_by_name.extend(dated.first().map(|(n, _)| *n));
            protected_by_count.extend(dated.iter().take(self.min_keep as usize).map(|(n, _)| *n));
            // One backup, not every one sharing the newest mtime: files copied in one go (a
            // restore from tape, `cp` without `-p`) share a second, and would all be kept for ever.
            let newest =
                group.iter().max_by(|(a, ia), (b, ib)| a.modified.cmp(&b.modified).then(ia.run_at.cmp(&ib.run_at)).then_with(|| a.name.cmp(&b.name)));
            newest_modified.extend(newest.map(|(b, _)| b.name.as_str()));
        }
        let ours = |name: &str| recognised.iter().any(|(b, _)| b.name == name);
        let written_now = |name: &str| {
            only.is_none_or(|only| {
                recognised.iter().any(|(b, i)| b.name == name && only.iter().any(|(db, kind)| *db == i.database && *kind == i.kind))
            })
        };

        let decisions = listing
            .iter()
            .map(|b| {
                let name = b.name.as_str();
                // The policy's own keeps first, so a safety rule is named only when it overrules.
                let decision = if !ours(name) {
                    Decision::Keep(KeepReason::Foreign)
                } else if !selected.iter().any(|s| s == name) {
                    Decision::Keep(KeepReason::NotSelected)
                } else if written.contains(&name) {
                    Decision::Keep(KeepReason::JustWritten)
                } else if !written_now(name) {
                    Decision::Keep(KeepReason::NotBackedUpNow)
                } else if newest_by_name.contains(&name) {
                    Decision::Keep(KeepReason::NewestByName)
                } else if newest_modified.contains(&name) {
                    Decision::Keep(KeepReason::NewestByModified)
                } else if protected_by_count.contains(&name) {
                    Decision::Keep(KeepReason::MinKeep)
                } else {
                    Decision::Delete(DeleteReason::Expired)
                };
                (b.name.clone(), decision)
            })
            .collect();
        let future_dated = recognised.iter().filter(|(_, i)| future(i.run_at)).map(|(b, _)| b.name.clone()).collect();
        Plan { decisions, future_dated, clock_behind: false }
    }
}

/// What retention did in one store after a good backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted: Vec<String>,
    /// Set when retention was skipped or partly failed; the backup itself is still good.
    pub error: Option<String>,
    /// Retention was skipped because the clock is earlier than the last recorded run.
    pub clock_behind: bool,
    /// Recognised names dated more than a day in the future (never counted as the newest).
    pub future_dated: Vec<String>,
}

/// The policy's half of retention: which listed names are its own (with the time each
/// carries), and which of those it would delete. Errors are whole answers refused.
pub trait Selection {
    fn recognise(&self, listing: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, String>;
    fn select_expired(&self, listing: &[BackupEntry], ours: &[(BackupEntry, NameInfo)], now: i64, target: Target) -> Result<Vec<String>, String>;
}

/// The original's log lines, which operators' log searches rely on, per store.
fn place(target: Target) -> &'static str {
    match target {
        Target::Local => "local",
        Target::S3 => "S3",
    }
}

/// Retention in one store: the policy proposes, [`Guard::decide`] disposes, the store deletes.
/// Never fails the backup: whatever goes wrong is logged and reported, and a listing or an
/// answer that cannot be trusted deletes nothing. `retention_days` is only for the original's
/// S3 log line.
/// `written`: the files the run wrote in this store, with what each is; only their databases
/// (and the globals, when written) lose old backups.
pub fn apply(store: &dyn BackupStore, policy: &dyn Selection, guard: &Guard, written: &[(String, NameInfo)], retention_days: u32) -> RetentionReport {
    let target = store.target();
    let place = place(target);
    if guard.clock_behind() {
        let message = format!(
            "{place} retention skipped, nothing deleted: the clock says {} but a run was already recorded at {}; the clock went \
             backwards (check NTP / the system clock). Retention resumes once the clock has caught up",
            crate::util::format_time(guard.now),
            guard.last_recorded_run.map(crate::util::format_time).unwrap_or_default()
        );
        tracing::error!("{message}");
        return RetentionReport { error: Some(message), clock_behind: true, ..RetentionReport::default() };
    }
    let skipped = |e: String, listing_failed: bool| {
        match (target, listing_failed) {
            (Target::Local, true) => tracing::warn!("本地备份清理已跳过: {e}"),
            (Target::Local, false) => tracing::error!("本地备份清理已跳过 (retention skipped, nothing deleted): {e}"),
            (Target::S3, _) => tracing::error!("S3 备份清理已跳过 (retention skipped, nothing deleted): {e}"),
        }
        RetentionReport { error: Some(e), ..RetentionReport::default() }
    };
    let listing = match store.list_backups() {
        Ok(l) => l,
        Err(e) => return skipped(e, true),
    };
    let entries: Vec<BackupEntry> = listing.iter().map(BackupEntry::from).collect();
    let plan = match policy.recognise(&entries).and_then(|ours| {
        let selected = policy.select_expired(&entries, &ours, guard.now, target)?;
        let names: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
        let groups: Vec<(&str, BackupKind)> = written.iter().map(|(_, i)| (i.database.as_str(), i.kind)).collect();
        Ok(guard.decide_run(&entries, &ours, &selected, &names, Some(&groups)))
    }) {
        Ok(p) => p,
        Err(e) => return skipped(e, false),
    };
    for name in &plan.future_dated {
        tracing::warn!(
            "{place} backup {name:?} is dated more than a day in the future (a wrong clock when it was written?); it never counts \
             as the newest backup, and deleting it is the policy's call"
        );
    }
    for (name, reason) in plan.overruled() {
        tracing::warn!("{place} retention keeps {name:?}, which the policy selected: {reason}");
    }
    let mut report = RetentionReport { future_dated: plan.future_dated.clone(), ..RetentionReport::default() };
    let expired = plan.to_delete();
    if expired.is_empty() {
        return report;
    }
    if target == Target::S3 {
        tracing::info!("开始删除 S3 中 {} 个超过{}天的旧备份...", expired.len(), retention_days);
    }
    let mut deleted = store.delete_backups(&expired);
    for (name, why) in &deleted.kept {
        tracing::info!("{place} retention keeps {name:?}, which the policy selected: {why}");
    }
    if deleted.not_permitted {
        let refused = deleted.error.take().unwrap_or_default();
        // An immutable deployment (no delete permission, a lifecycle rule expires objects)
        // is a supported setup: the backups are safe, so this is not a failed run.
        tracing::warn!(
            "{place} retention skipped: this deployment may not delete objects ({}); expected when the bucket is meant to be \
             immutable, with a lifecycle rule expiring old backups. Grant s3:DeleteObject if ef-backup should delete them",
            refused
        );
    }
    if let (Target::S3, Some(e)) = (target, &deleted.error) {
        tracing::error!("S3 备份清理失败: {e}");
    }
    for name in &deleted.names {
        match target {
            Target::Local => tracing::info!("已删除过期本地备份: {name}"),
            Target::S3 => tracing::info!("S3 retention deleted: {name}"),
        }
    }
    match target {
        Target::Local if !deleted.names.is_empty() => tracing::info!("✓ 本地备份清理完成，删除了 {} 个旧备份", deleted.names.len()),
        Target::S3 => tracing::info!("✓ S3 备份清理完成，删除了 {} 个旧备份", deleted.names.len()),
        _ => {}
    }
    report.deleted = deleted.names;
    report.error = deleted.error;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Delete, Keep};
    use KeepReason::*;

    const NOW: i64 = 1_762_191_000;
    const DAY: i64 = 86_400;
    const DEL: Decision = Delete(DeleteReason::Expired);

    /// A backup `age` days old by name (None: not recognised), modified `mtime_age` days ago.
    struct B(&'static str, Option<i64>, i64);

    fn run(guard: Guard, backups: &[B], selected: &[&str], just_written: Option<&str>) -> Plan {
        let listing: Vec<BackupEntry> =
            backups.iter().map(|B(n, _, m)| BackupEntry { name: n.to_string(), size_bytes: 1, modified: NOW - m * DAY }).collect();
        // `globals` in a name makes it the globals of the run; `other_` another database's dump.
        let info = |name: &str, at: i64| {
            let kind = if name.contains("globals") { BackupKind::Globals } else { BackupKind::Database };
            NameInfo { database: if name.starts_with("other_") { "other" } else { "db" }.into(), kind, run_at: at }
        };
        let recognised: Vec<(BackupEntry, NameInfo)> =
            backups.iter().zip(&listing).filter_map(|(B(n, age, _), e)| Some((e.clone(), info(n, NOW - (*age)? * DAY)))).collect();
        let selected: Vec<String> = selected.iter().map(|s| s.to_string()).collect();
        guard.decide(&listing, &recognised, &selected, just_written)
    }

    fn guard(min_keep: u32) -> Guard {
        Guard { now: NOW, min_keep, last_recorded_run: Some(NOW - DAY) }
    }

    /// Pins issue 15 item 6: the rules hold per database and kind. The newest globals and the
    /// newest dump of each database stay whatever the policy selects, and the minimum count is
    /// counted in each, so files of another kind or database never stand in for them.
    #[test]
    fn the_rules_hold_per_database_and_kind() {
        let backups = [
            B("db_3", Some(3), 3),
            B("db_globals_3", Some(3), 3),
            B("db_5", Some(5), 5),
            B("db_globals_5", Some(5), 5),
            B("other_2", Some(2), 2),
            B("other_9", Some(9), 9),
        ];
        let all = ["db_3", "db_globals_3", "db_5", "db_globals_5", "other_2", "other_9"];
        let plan = run(guard(1), &backups, &all, None);
        let expect = [
            ("db_3", Keep(NewestByName)),
            ("db_globals_3", Keep(NewestByName)),
            ("db_5", DEL),
            ("db_globals_5", DEL),
            ("other_2", Keep(NewestByName)),
            ("other_9", DEL),
        ];
        assert_eq!(plan.decisions, expect.map(|(n, d)| (n.to_string(), d)));
        // With a minimum of 2, each group keeps two: here everything.
        let plan = run(guard(2), &backups, &all, None);
        assert!(plan.to_delete().is_empty(), "{:?}", plan.decisions);
    }

    /// Pins issue 12 item 6: the host's rules hold whatever the policy selects.
    #[test]
    fn table() {
        // (min_keep, backups, policy's selection, just written, expected decision per backup)
        type Row<'a> = (u32, &'a [B], &'a [&'a str], Option<&'a str>, &'a [Decision]);
        let table: &[Row] = &[
            // The policy's selection is carried out when no rule objects.
            (1, &[B("a", Some(0), 0), B("b", Some(5), 5), B("c", Some(9), 9)], &["b", "c"], Some("a"), &[Keep(NotSelected), DEL, DEL]),
            // A policy that selects everything: the newest by name stays.
            (0, &[B("a", Some(0), 0), B("b", Some(5), 5)], &["a", "b"], None, &[Keep(NewestByName), DEL]),
            // ... and the newest by mtime, even when its name is older.
            (
                0,
                &[B("a", Some(0), 3), B("b", Some(5), 1), B("c", Some(9), 9)],
                &["a", "b", "c"],
                None,
                &[Keep(NewestByName), Keep(NewestByModified), DEL],
            ),
            // Copied in one go, all share an mtime: one of them (the newest by name) is the newest by mtime, not all.
            (0, &[B("a", Some(1), 0), B("b", Some(2), 0), B("c", Some(3), 0)], &["a", "b", "c"], None, &[Keep(NewestByName), DEL, DEL]),
            (
                0,
                &[B("a", Some(1), 0), B("b", Some(2), 0), B("n", Some(0), 1)],
                &["a", "b", "n"],
                None,
                &[Keep(NewestByModified), DEL, Keep(NewestByName)],
            ),
            // The backup just written is kept even if it is older by name and mtime (a clock that
            // went back within the guard); one the policy does not recognise is foreign, kept too.
            (
                0,
                &[B("new", Some(3), 3), B("b", Some(1), 1), B("c", Some(5), 5)],
                &["new", "c"],
                Some("new"),
                &[Keep(JustWritten), Keep(NotSelected), DEL],
            ),
            (0, &[B("new", None, 0), B("b", Some(5), 5)], &["new"], Some("new"), &[Keep(Foreign), Keep(NotSelected)]),
            // Not selected stays "not selected" even when it is also the one just written.
            (0, &[B("new", Some(0), 0)], &[], Some("new"), &[Keep(NotSelected)]),
            // min_keep: the three newest by name stay, whatever is selected.
            (
                3,
                &[B("a", Some(1), 1), B("b", Some(2), 2), B("c", Some(3), 3), B("d", Some(4), 4)],
                &["a", "b", "c", "d"],
                None,
                &[Keep(NewestByName), Keep(MinKeep), Keep(MinKeep), DEL],
            ),
            // A future-dated name never counts as newest nor fills the minimum: the real ones are kept.
            (
                2,
                &[B("future", Some(-30), 0), B("a", Some(1), 1), B("b", Some(2), 2), B("c", Some(3), 3)],
                &["a", "b", "c"],
                None,
                &[Keep(NotSelected), Keep(NewestByName), Keep(MinKeep), DEL],
            ),
            // Deleting a future-dated name stays the policy's call (mtime is not the newest here).
            (1, &[B("future", Some(-30), 2), B("a", Some(1), 1)], &["future"], None, &[DEL, Keep(NotSelected)]),
            // Less than a day ahead is not future-dated: it is the newest.
            (0, &[B("soon", Some(0), 2), B("a", Some(1), 1)], &["soon"], None, &[Keep(NewestByName), Keep(NotSelected)]),
            // Foreign names are never deleted, even if a policy named them.
            (0, &[B("x", None, 9), B("a", Some(0), 0)], &["x"], None, &[Keep(Foreign), Keep(NotSelected)]),
            (3, &[], &[], None, &[]),
        ];
        for (i, (min_keep, backups, selected, written, want)) in table.iter().enumerate() {
            let plan = run(guard(*min_keep), backups, selected, *written);
            let got: Vec<Decision> = plan.decisions.iter().map(|(_, d)| *d).collect();
            assert_eq!(&got, want, "row {i}");
            assert!(!plan.clock_behind);
        }
    }

    #[test]
    fn future_dated_names_are_reported() {
        let plan = run(guard(1), &[B("f", Some(-2), 0), B("a", Some(0), 0), B("x", None, 0)], &[], None);
        assert_eq!(plan.future_dated, ["f"]);
        let plan = run(guard(1), &[B("soon", Some(0), 0)], &[], None);
        assert!(plan.future_dated.is_empty());
    }

    /// Pins issue 12 item 6: a clock earlier than the last recorded run deletes nothing.
    #[test]
    fn clock_behind_keeps_everything() {
        let g = Guard { now: NOW, min_keep: 0, last_recorded_run: Some(NOW + 1) };
        let plan = run(g, &[B("a", Some(0), 0), B("b", Some(90), 90)], &["b"], None);
        assert!(plan.clock_behind);
        assert!(plan.decisions.iter().all(|(_, d)| *d == Keep(ClockBehind)), "{plan:?}");
        assert!(plan.to_delete().is_empty() && plan.overruled().is_empty());
        // Equal or no record: not behind.
        assert!(!Guard { last_recorded_run: Some(NOW), ..g }.clock_behind());
        assert!(!Guard { last_recorded_run: None, ..g }.clock_behind());
    }

    /// A clock a month ahead makes every backup look old: the policy may select them all, the
    /// minimum count still stands.
    #[test]
    fn clock_forward_never_leaves_fewer_than_min_keep() {
        let backups: Vec<B> = (0..10).map(|d| B(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"][d], Some(30 + d as i64), 30 + d as i64)).collect();
        let all: Vec<&str> = backups.iter().map(|b| b.0).collect();
        for min_keep in 0..=12u32 {
            let plan = run(guard(min_keep), &backups, &all, None);
            let kept = plan.decisions.len() - plan.to_delete().len();
            assert_eq!(kept, (min_keep as usize).clamp(1, 10), "min_keep {min_keep}");
        }
    }

    #[test]
    fn overruled_names_say_why_and_listing_order_does_not_matter() {
        let backups = [B("b", Some(2), 2), B("a", Some(1), 1), B("c", Some(3), 3)];
        let plan = run(guard(2), &backups, &["a", "b", "c"], None);
        assert_eq!(plan.overruled(), [("b", MinKeep), ("a", NewestByName)]);
        assert_eq!(plan.to_delete(), ["c"]);
        let reversed = [B("c", Some(3), 3), B("a", Some(1), 1), B("b", Some(2), 2)];
        assert_eq!(run(guard(2), &reversed, &["a", "b", "c"], None).to_delete(), ["c"]);
    }
}

/// [`apply`] against an in-memory store and a native policy: the same rules whichever store.
#[cfg(test)]
mod apply_tests {
    use std::cell::RefCell;

    use crate::store::{Deleted, StoredBackup};

    use super::*;

    /// A store in memory; `fail_list` and `fail_delete` make it misbehave, `locked` names it
    /// keeps (an object lock) and `deny` refuses every delete (no permission).
    struct MemStore {
        target: Target,
        items: RefCell<Vec<StoredBackup>>,
        fail_list: bool,
        fail_delete: Vec<&'static str>,
        locked: Vec<&'static str>,
        deny: bool,
    }

    impl MemStore {
        fn new(target: Target, names: &[(&str, i64)]) -> MemStore {
            let items = names.iter().map(|(n, t)| StoredBackup { name: n.to_string(), size_bytes: 1, modified: *t, manifest: false }).collect();
            MemStore { target, items: RefCell::new(items), fail_list: false, fail_delete: Vec::new(), locked: Vec::new(), deny: false }
        }

        fn names(&self) -> Vec<String> {
            self.items.borrow().iter().map(|b| b.name.clone()).collect()
        }
    }

    impl BackupStore for MemStore {
        fn target(&self) -> Target {
            self.target
        }

        fn list_backups(&self) -> Result<Vec<StoredBackup>, String> {
            if self.fail_list {
                return Err("listing refused".into());
            }
            Ok(self.items.borrow().clone())
        }

        fn delete_backups(&self, names: &[String]) -> Deleted {
            let mut out = Deleted::default();
            if self.deny {
                return Deleted { error: Some("AccessDenied".into()), not_permitted: true, ..Deleted::default() };
            }
            for n in names {
                if self.locked.contains(&n.as_str()) {
                    out.kept.push((n.clone(), "locked until tomorrow".into()));
                    continue;
                }
                if self.fail_delete.contains(&n.as_str()) {
                    out.error = Some(format!("cannot delete {n}"));
                    continue;
                }
                self.items.borrow_mut().retain(|b| &b.name != n);
                out.names.push(n.clone());
            }
            out
        }
    }

    /// Recognises `db_backup_<unix>`; selects what `select` names (or fails).
    struct Native {
        select: Result<Vec<&'static str>, &'static str>,
        recognise_fails: bool,
    }

    impl Selection for Native {
        fn recognise(&self, listing: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, String> {
            if self.recognise_fails {
                return Err("recognition refused".into());
            }
            Ok(listing.iter().filter_map(|b| Some((b.clone(), NameInfo::dump("db", b.name.strip_prefix("db_backup_")?.parse().ok()?)))).collect())
        }

        fn select_expired(&self, _: &[BackupEntry], _: &[(BackupEntry, NameInfo)], _: i64, _: Target) -> Result<Vec<String>, String> {
            self.select.clone().map(|v| v.into_iter().map(String::from).collect()).map_err(String::from)
        }
    }

    fn select(names: &[&'static str]) -> Native {
        Native { select: Ok(names.to_vec()), recognise_fails: false }
    }

    const LISTING: &[(&str, i64)] =
        &[("db_backup_100", 100), ("db_backup_200", 200), ("db_backup_300", 300), ("db_backup_400", 400), ("other.sql.gz", 50)];
    const GUARD: Guard = Guard { now: 1000, min_keep: 1, last_recorded_run: Some(900) };

    /// The run wrote `name`, a dump of `db`.
    fn wrote(name: &str) -> Vec<(String, NameInfo)> {
        vec![(name.to_string(), NameInfo::dump("db", 0))]
    }

    #[test]
    fn the_same_rules_hold_in_every_store() {
        for target in [Target::Local, Target::S3] {
            // The policy asks for everything, the foreign file and the backup just written included.
            let store = MemStore::new(target, LISTING);
            let all = ["db_backup_100", "db_backup_200", "db_backup_300", "db_backup_400", "other.sql.gz"];
            let report = apply(&store, &select(&all), &GUARD, &wrote("db_backup_300"), 7);
            assert_eq!(report.deleted, ["db_backup_100", "db_backup_200"], "{target:?}");
            assert_eq!(store.names(), ["db_backup_300", "db_backup_400", "other.sql.gz"], "{target:?}: just written, newest and foreign stay");
            assert_eq!(report.error, None);
        }
    }

    #[test]
    fn nothing_is_deleted_when_anything_before_the_deletions_fails() {
        let cases: Vec<(&str, MemStore, Native, Guard)> = vec![
            ("clock behind", MemStore::new(Target::Local, LISTING), select(&["db_backup_100"]), Guard { now: 800, ..GUARD }),
            ("listing fails", MemStore { fail_list: true, ..MemStore::new(Target::S3, LISTING) }, select(&["db_backup_100"]), GUARD),
            ("recognition fails", MemStore::new(Target::Local, LISTING), Native { select: Ok(vec!["db_backup_100"]), recognise_fails: true }, GUARD),
            ("selection refused", MemStore::new(Target::S3, LISTING), Native { select: Err("confused"), recognise_fails: false }, GUARD),
        ];
        for (case, store, policy, guard) in cases {
            let before = store.items.borrow().len();
            let report = apply(&store, &policy, &guard, &wrote("db_backup_400"), 7);
            assert!(report.deleted.is_empty(), "{case}");
            assert!(report.error.is_some(), "{case}: the report says why");
            assert_eq!(report.clock_behind, case == "clock behind", "{case}");
            assert_eq!(store.items.borrow().len(), before, "{case}");
        }
    }

    /// A run deletes only where it wrote: the dumps of a database whose backup failed this run
    /// (or that is no longer backed up) keep every old backup, whatever the policy selects.
    #[test]
    fn only_the_databases_a_run_wrote_lose_old_backups() {
        let listing = [("db_backup_100", 100), ("db_backup_200", 200), ("db_backup_300", 300), ("other_backup_100", 100), ("other_backup_200", 200)];
        let store = MemStore::new(Target::Local, &listing);
        struct Two;
        impl Selection for Two {
            fn recognise(&self, listing: &[BackupEntry]) -> Result<Vec<(BackupEntry, NameInfo)>, String> {
                Ok(listing
                    .iter()
                    .filter_map(|b| {
                        let (db, t) = b.name.split_once("_backup_")?;
                        Some((b.clone(), NameInfo::dump(db, t.parse().ok()?)))
                    })
                    .collect())
            }
            fn select_expired(&self, _: &[BackupEntry], ours: &[(BackupEntry, NameInfo)], _: i64, _: Target) -> Result<Vec<String>, String> {
                Ok(ours.iter().map(|(b, _)| b.name.clone()).collect())
            }
        }
        let report = apply(&store, &Two, &GUARD, &wrote("db_backup_300"), 7);
        assert_eq!(report.deleted, ["db_backup_100", "db_backup_200"]);
        assert_eq!(store.names(), ["db_backup_300", "other_backup_100", "other_backup_200"], "`other` got no new backup: all of it stays");
    }

    #[test]
    fn a_failed_deletion_is_reported_and_the_others_still_go() {
        let store = MemStore { fail_delete: vec!["db_backup_100"], ..MemStore::new(Target::Local, LISTING) };
        let report = apply(&store, &select(&["db_backup_100", "db_backup_200"]), &GUARD, &wrote("db_backup_400"), 7);
        assert_eq!(report.deleted, ["db_backup_200"]);
        assert_eq!(report.error.as_deref(), Some("cannot delete db_backup_100"));
        assert!(store.names().contains(&"db_backup_100".to_string()));
    }

    /// Issue 16: an object lock keeps a selected backup without failing the run, and a
    /// deployment that may not delete at all (immutable on purpose) is warned about, not failed.
    #[test]
    fn locked_and_undeletable_backups_are_kept_without_an_error() {
        let store = MemStore { locked: vec!["db_backup_100"], ..MemStore::new(Target::S3, LISTING) };
        let report = apply(&store, &select(&["db_backup_100", "db_backup_200"]), &GUARD, &wrote("db_backup_400"), 7);
        assert_eq!((report.deleted, report.error), (vec!["db_backup_200".to_string()], None));
        assert!(store.names().contains(&"db_backup_100".to_string()));
        let store = MemStore { deny: true, ..MemStore::new(Target::S3, LISTING) };
        let report = apply(&store, &select(&["db_backup_100"]), &GUARD, &wrote("db_backup_400"), 7);
        assert_eq!((report.deleted.len(), report.error), (0, None));
        assert_eq!(store.names().len(), LISTING.len());
        // Any other failure still is one.
        let store = MemStore { fail_delete: vec!["db_backup_100"], ..MemStore::new(Target::S3, LISTING) };
        assert!(apply(&store, &select(&["db_backup_100"]), &GUARD, &wrote("db_backup_400"), 7).error.is_some());
    }

    #[test]
    fn the_minimum_count_and_future_dates_hold_through_apply() {
        let store = MemStore::new(Target::S3, &[("db_backup_100", 100), ("db_backup_200", 200), ("db_backup_300", 300), ("db_backup_999999", 300)]);
        let guard = Guard { min_keep: 3, ..GUARD };
        let report = apply(&store, &select(&["db_backup_100", "db_backup_200", "db_backup_300"]), &guard, &wrote("none"), 7);
        // The future-dated name never counts among the newest: the three real ones are the
        // minimum, and only the oldest of them cannot be protected by anything but the count.
        assert_eq!(report.future_dated, ["db_backup_999999"]);
        assert!(report.deleted.is_empty(), "{report:?}");
        assert_eq!(store.names().len(), 4);
    }
}
