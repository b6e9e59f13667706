//! Runs backups on the policy's schedule, in the time zone it names (whatever the machine's
//! zone). Several replicas may share a database: each scheduled slot is claimed with a
//! PostgreSQL advisory lock, so it produces one backup. A failed scheduled backup is retried
//! once after EF__BACKUP_RETRY_DELAY_SECS.
//!
//! The timer is ours rather than a cron crate's scheduler: the crons are parsed once, here,
//! with standard cron's day rule (day-of-month OR day-of-week when both are restricted), and
//! exactly what was validated is what runs.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::model::{BackupOutcome, BackupSchedule, EventKind};
use crate::service::Service;
use crate::state::Trigger;

/// A cron expression must fire within this (from now) to be accepted.
pub const MUST_FIRE_WITHIN_DAYS: i64 = 366;

/// The longest the timer sleeps before looking at the wall clock again (it may be stepped).
const CLOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the policy's schedule names time zone {0:?}, which is not an IANA zone this build knows")]
    Zone(String),
    #[error("the policy's cron expression {expr:?} is invalid: {reason}")]
    Cron { expr: String, reason: String },
    #[error("the policy's cron expression {expr:?} never fires in the next {MUST_FIRE_WITHIN_DAYS} days (in {zone}); fix the policy's schedule")]
    Never { expr: String, zone: String },
}

/// A parsed schedule: six-field crons (seconds first) in one zone, and the restore drills'.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub exprs: Vec<String>,
    pub zone: Tz,
    pub description: String,
    crons: Vec<Cron>,
    /// The drill schedule (same zone); None when the policy schedules no drills.
    pub drills: Option<Arc<Schedule>>,
}

/// Parses crons (five fields, or six with seconds first) into six-field expressions.
fn parse_crons(list: &[String]) -> Result<(Vec<String>, Vec<Cron>), ScheduleError> {
    let mut exprs = Vec::new();
    let mut crons = Vec::new();
    for expr in list {
        // Five fields are standard cron; the parser wants seconds first.
        let six = if expr.split_whitespace().count() == 5 { format!("0 {expr}") } else { expr.clone() };
        let cron = parser().parse(&six).map_err(|e| ScheduleError::Cron { expr: expr.clone(), reason: e.to_string() })?;
        exprs.push(six);
        crons.push(cron);
    }
    Ok((exprs, crons))
}

fn parser() -> CronParser {
    // dom_and_dow(false): standard cron ("either matches"), as the WIT promises.
    CronParser::builder().seconds(Seconds::Required).dom_and_dow(false).build()
}

impl Schedule {
    pub fn from_policy(s: &BackupSchedule) -> Result<Schedule, ScheduleError> {
        let zone = Tz::from_str(&s.timezone).map_err(|_| ScheduleError::Zone(s.timezone.clone()))?;
        let (exprs, crons) = parse_crons(&s.crons)?;
        let drills = if s.drill_crons.is_empty() {
            None
        } else {
            let (exprs, crons) = parse_crons(&s.drill_crons)?;
            Some(Arc::new(Schedule { exprs, zone, description: "restore drills".into(), crons, drills: None }))
        };
        Ok(Schedule { exprs, zone, description: s.description.clone(), crons, drills })
    }

    /// Every cron fires at least once in the [`MUST_FIRE_WITHIN_DAYS`] after `now`: a
    /// schedule such as "0 0 31 2 *" parses, but would silently never back up.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ScheduleError> {
        let local = now.trunc_subsecs(0).with_timezone(&self.zone);
        let horizon = now + Duration::days(MUST_FIRE_WITHIN_DAYS);
        for (cron, expr) in self.crons.iter().zip(&self.exprs) {
            let next = cron.find_next_occurrence(&local, false).ok().map(|d| d.with_timezone(&Utc));
            if next.is_none_or(|t| t > horizon) {
                return Err(ScheduleError::Never { expr: expr.clone(), zone: self.zone.to_string() });
            }
        }
        match &self.drills {
            Some(d) => d.validate(now),
            None => Ok(()),
        }
    }

    /// The latest slot not after `t`.
    pub fn latest_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.zone);
        self.crons.iter().filter_map(|c| c.find_previous_occurrence(&local, true).ok()).max().map(|d| d.with_timezone(&Utc))
    }

    /// The slot to run when the wall clock reads `now` and `last` ran last: the latest slot not
    /// after `now`, unless that one ran already.
    pub fn due(&self, now: DateTime<Utc>, last: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        self.latest_at(now).filter(|slot| Some(*slot) != last)
    }

    /// The next run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.zone);
        self.crons.iter().filter_map(|c| c.find_next_occurrence(&local, false).ok()).min().map(|d| d.with_timezone(&Utc))
    }
}

/// When a scheduled run that ended with `outcome` at `now` is tried again: once, after
/// `delay_secs` (0: never), and only when that is before the next slot (which will run anyway).
pub fn retry_at(outcome: &BackupOutcome, delay_secs: u64, now: DateTime<Utc>, next_slot: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    let failed = match outcome {
        BackupOutcome::Failed(_) => true,
        BackupOutcome::Several(run) => !run.succeeded(),
        _ => false,
    };
    if !failed || delay_secs == 0 {
        return None;
    }
    let at = now + Duration::seconds(delay_secs as i64);
    match next_slot {
        Some(next) if next <= at => None,
        _ => Some(at),
    }
}

/// Sleeps until the wall clock reaches `t`.
async fn sleep_until(t: DateTime<Utc>) {
    loop {
        let left = t - Utc::now();
        let Ok(left) = left.to_std() else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(CLOCK_CHECK)).await;
    }
}

async fn tick(service: Arc<Service>, schedule: Arc<Schedule>, slot: DateTime<Utc>) {
    let slot_label = slot.with_timezone(&schedule.zone).format("%Y-%m-%d %H:%M:%S %Z");
    if !service.claim_slot(slot.timestamp()).await {
        tracing::info!("another ef-backup instance is running the {slot_label} backup; this one skips it");
        return;
    }
    tracing::info!("scheduled backup for {slot_label}");
    let run = service.backup(Trigger::Scheduled).await;
    if let BackupOutcome::Busy(name) = &run.outcome {
        tracing::warn!("skipping the {slot_label} backup: {name} is still running");
        // Another instance taking the run is no miss; this process's own backup still
        // running when the slot came is one.
        if name != crate::service::OTHER_INSTANCE && !service.closing() {
            service.announce(EventKind::MissedSlot, format!("the {slot_label} backup did not start: {name} was still running")).await;
        }
        return;
    }
    let delay = service.config().retry_delay_secs;
    let now = Utc::now();
    let Some(at) = retry_at(&run.outcome, delay, now, schedule.next_after(now)) else {
        if matches!(&run.outcome, BackupOutcome::Failed(_)) || matches!(&run.outcome, BackupOutcome::Several(r) if !r.succeeded()) {
            tracing::error!("the {slot_label} backup failed and is not retried (EF__BACKUP_RETRY_DELAY_SECS={delay}, or the next slot comes first)");
        }
        return;
    };
    tracing::warn!("the {slot_label} backup failed; retrying once in {delay}s (EF__BACKUP_RETRY_DELAY_SECS)");
    sleep_until(at).await;
    let retry = service.backup(Trigger::Retry).await;
    match &retry.outcome {
        BackupOutcome::Done(d) => tracing::info!("the retry of the {slot_label} backup succeeded: {}", d.file_name),
        BackupOutcome::Failed(f) => tracing::error!("the retry of the {slot_label} backup failed too: {}", f.message),
        BackupOutcome::Busy(name) => tracing::info!("the retry of the {slot_label} backup was not needed: {name} is running"),
        BackupOutcome::Several(r) if r.succeeded() => tracing::info!("the retry of the {slot_label} backup succeeded: {} files", r.entries.len()),
        BackupOutcome::Several(r) => {
            let failed = r.entries.iter().filter(|e| e.outcome.is_err()).count();
            tracing::error!("the retry of the {slot_label} backup failed too: {failed} of {} files failed", r.entries.len())
        }
    }
}

/// The running timers of a schedule (backups, drills). Each slot runs in a task of its own,
/// so stopping the timers (a policy reload, shutdown) never cuts a running backup or drill.
pub struct Scheduler {
    timer: tokio::task::JoinHandle<()>,
    drills: Option<tokio::task::JoinHandle<()>>,
}

impl Scheduler {
    pub fn stop(self) {
        self.timer.abort();
        if let Some(d) = self.drills {
            d.abort();
        }
    }
}

/// A slot noticed this long after its time was missed (the process was stopped or suspended,
/// or the clock jumped): it still runs, and the channels hear of it.
pub fn missed(slot: DateTime<Utc>, noticed: DateTime<Utc>, grace: Duration) -> bool {
    noticed - slot > grace
}

async fn timer(service: Arc<Service>, schedule: Arc<Schedule>) {
    // The slot last run; the one before start-up is not run at start.
    let mut last = schedule.latest_at(Utc::now());
    loop {
        let now = Utc::now();
        // The latest slot not after now. Re-derived from the wall clock at every look, so a
        // clock stepped either way (NTP, a resumed VM) is followed within a second: after a step
        // the latest slot of the new time runs once — never a burst of missed ones — and a
        // timer never sleeps towards a slot of a time the clock stepped away from.
        if let Some(slot) = schedule.due(now, last) {
            let grace = Duration::minutes(service.config().missed_slot_minutes as i64);
            if missed(slot, now, grace) {
                let label = slot.with_timezone(&schedule.zone).format("%Y-%m-%d %H:%M:%S %Z");
                let detail = format!(
                    "the {label} backup slot was noticed only at {} (was the process stopped, or the clock stepped?); running it now",
                    now.format("%H:%M:%S UTC")
                );
                tracing::warn!("{detail}");
                let svc = Arc::clone(&service);
                tokio::spawn(async move { svc.announce(EventKind::MissedSlot, detail).await });
            }
            tokio::spawn(tick(Arc::clone(&service), Arc::clone(&schedule), slot));
            last = Some(slot);
        }
        let next = schedule.next_after(now);
        service.set_next_run(next.map(|t| t.timestamp()));
        let until_next = next.and_then(|t| (t - now).to_std().ok()).unwrap_or(CLOCK_CHECK);
        tokio::time::sleep(until_next.min(CLOCK_CHECK)).await;
    }
}

/// Runs the policy's drills at each drill slot, in a task of their own: a drill never holds up
/// a backup slot, and a slot that comes while a drill runs is skipped (one drill at a time).
async fn drill_timer(service: Arc<Service>, drills: Arc<Schedule>) {
    let mut last = drills.latest_at(Utc::now());
    loop {
        let now = Utc::now();
        if let Some(slot) = drills.due(now, last) {
            last = Some(slot);
            let svc = Arc::clone(&service);
            tokio::spawn(async move {
                let drilled = svc.drill(Trigger::Scheduled).await;
                tracing::info!("scheduled restore drill: {} backup(s), {} passed", drilled.len(), drilled.iter().filter(|d| d.passed()).count());
            });
        }
        let next = drills.next_after(now);
        let until_next = next.and_then(|t| (t - now).to_std().ok()).unwrap_or(CLOCK_CHECK);
        tokio::time::sleep(until_next.min(CLOCK_CHECK)).await;
    }
}

/// Starts the timers of `schedule`.
pub fn start(service: Arc<Service>, schedule: Schedule) -> Scheduler {
    service.set_next_run(schedule.next_after(Utc::now()).map(|t| t.timestamp()));
    let drills = schedule.drills.clone().map(|d| tokio::spawn(drill_timer(Arc::clone(&service), d)));
    Scheduler { timer: tokio::spawn(timer(service, Arc::new(schedule))), drills }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn default_schedule() -> Schedule {
        Schedule::from_policy(&BackupSchedule {
            crons: vec!["0 1,13 * * *".into()],
            timezone: "Asia/Shanghai".into(),
            description: "每天北京时间 01:00 和 13:00".into(),
            drill_crons: Vec::new(),
        })
        .unwrap()
    }

    /// Pins a defect the chaos run found: after the clock stepped a month ahead and back, the
    /// timer slept towards the slot of the future time and every slot was skipped until real
    /// time caught up (or serve restarted). Each look at the clock now decides afresh.
    #[test]
    fn slots_follow_a_clock_stepped_ahead_and_back() {
        let s = utc(&["*/15 * * * * *"]);
        let t = |secs: i64| Utc.with_ymd_and_hms(2026, 11, 30, 2, 0, 0).unwrap() + Duration::seconds(secs);
        let month = 30 * 86_400;
        let mut last = s.latest_at(t(5));
        let mut fired = Vec::new();
        // Clock readings, one per look: steady, then a month ahead for a while, then back.
        for now in [t(5), t(14), t(15), t(16), t(month + 2), t(month + 3), t(20), t(29), t(30), t(44), t(45)] {
            if let Some(slot) = s.due(now, last) {
                fired.push(slot);
                last = Some(slot);
            }
        }
        assert_eq!(fired, vec![t(15), t(month), t(15), t(30), t(45)]);
    }

    #[test]
    fn beijing_01_and_13_are_17_and_05_utc_whatever_the_host_zone() {
        let s = default_schedule();
        let t = Utc.with_ymd_and_hms(2025, 11, 4, 3, 0, 0).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 11, 4, 5, 0, 0).unwrap()));
        let t = Utc.with_ymd_and_hms(2025, 11, 4, 5, 0, 0).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 11, 4, 17, 0, 0).unwrap()));
    }

    fn utc(crons: &[&str]) -> Schedule {
        let crons = crons.iter().map(|c| c.to_string()).collect();
        Schedule::from_policy(&BackupSchedule { crons, timezone: "UTC".into(), description: String::new(), drill_crons: Vec::new() }).unwrap()
    }

    /// Every firing of `s` in [from, from + days), as (day of month, weekday number 0=Sunday).
    fn firings(s: &Schedule, from: DateTime<Utc>, days: i64) -> Vec<(u32, u32)> {
        use chrono::Datelike;
        let mut out = Vec::new();
        let mut t = from - Duration::seconds(1);
        while let Some(next) = s.next_after(t).filter(|n| *n < from + Duration::days(days)) {
            out.push((next.day(), next.weekday().num_days_from_sunday()));
            t = next;
        }
        out
    }

    /// Pins issue 12 (cron): day-of-month and day-of-week follow standard cron — when both
    /// are restricted either one matches; when one is `*`, only the other counts.
    #[test]
    fn day_of_month_or_day_of_week_as_standard_cron() {
        // March 2025: Fridays are the 7th, 14th, 21st, 28th; the 13th is a Thursday.
        let march = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        let table: &[(&str, Vec<u32>)] = &[
            ("0 1 13 * 5", vec![7, 13, 14, 21, 28]),
            ("0 1 13 * *", vec![13]),
            ("0 1 * * 5", vec![7, 14, 21, 28]),
            ("0 1 1,15 * 1", vec![1, 3, 10, 15, 17, 24, 31]),
        ];
        for (expr, days) in table {
            let got: Vec<u32> = firings(&utc(&[expr]), march, 31).into_iter().map(|(d, _)| d).collect();
            assert_eq!(&got, days, "{expr}");
        }
        // Friday the 13th fires once, not twice.
        let june = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        assert_eq!(firings(&utc(&["0 1 13 * 5"]), june, 30).iter().filter(|(d, _)| *d == 13).count(), 1);
    }

    /// Pins issue 12 item 16: a schedule that parses but never fires is refused, so a reload
    /// cannot silently stop the backups.
    #[test]
    fn a_cron_that_never_fires_within_a_year_is_invalid() {
        let now = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        assert!(utc(&["0 1 * * *", "0 0 29 2 *"]).validate(now).is_err(), "29 February is more than 366 days away");
        assert!(matches!(utc(&["0 0 31 2 *"]).validate(now), Err(ScheduleError::Never { .. })));
        assert!(utc(&["0 1,13 * * *"]).validate(now).is_ok());
        assert!(utc(&["0 0 29 2 *"]).validate(Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap()).is_ok(), "2028 is a leap year");
    }

    /// Pins issue 12 (retry): a failed scheduled run is retried once after the delay, unless
    /// the retry is off or the next slot comes first; success and busy are never retried.
    #[test]
    fn retry_decision() {
        use crate::model::{BackupFailed, ErrorKind};
        let failed = BackupOutcome::Failed(BackupFailed { kind: ErrorKind::Dump, message: "x".into(), file_name: None });
        let busy = BackupOutcome::Busy("b".into());
        let now = Utc.with_ymd_and_hms(2025, 3, 1, 1, 0, 0).unwrap();
        let next = Some(now + Duration::hours(12));
        assert_eq!(retry_at(&failed, 600, now, next), Some(now + Duration::seconds(600)));
        assert_eq!(retry_at(&failed, 600, now, None), Some(now + Duration::seconds(600)));
        assert_eq!(retry_at(&failed, 0, now, next), None, "0 disables the retry");
        assert_eq!(retry_at(&failed, 600, now, Some(now + Duration::seconds(600))), None, "the next slot comes first");
        assert_eq!(retry_at(&busy, 600, now, next), None);
    }

    /// Pins issue 17: the drill crons become a timer of their own, validated like the backups'.
    #[test]
    fn drill_crons_are_a_schedule_of_their_own() {
        let s = Schedule::from_policy(&BackupSchedule {
            crons: vec!["0 1 * * *".into()],
            timezone: "Asia/Shanghai".into(),
            description: String::new(),
            drill_crons: vec!["0 5 * * *".into()],
        })
        .unwrap();
        let d = s.drills.clone().expect("a drill schedule");
        let t = Utc.with_ymd_and_hms(2025, 11, 4, 0, 0, 0).unwrap();
        assert_eq!(d.next_after(t), Some(Utc.with_ymd_and_hms(2025, 11, 4, 21, 0, 0).unwrap()), "05:00 in Beijing");
        assert!(default_schedule().drills.is_none());
        let never = BackupSchedule {
            crons: vec!["0 1 * * *".into()],
            timezone: "UTC".into(),
            description: String::new(),
            drill_crons: vec!["0 0 31 2 *".into()],
        };
        assert!(matches!(Schedule::from_policy(&never).unwrap().validate(t), Err(ScheduleError::Never { .. })));
    }

    #[test]
    fn a_slot_noticed_late_is_missed() {
        let slot = Utc.with_ymd_and_hms(2025, 11, 4, 1, 0, 0).unwrap();
        assert!(!missed(slot, slot + Duration::seconds(1), Duration::minutes(30)));
        assert!(!missed(slot, slot + Duration::minutes(30), Duration::minutes(30)));
        assert!(missed(slot, slot + Duration::minutes(31), Duration::minutes(30)));
    }

    #[test]
    fn invalid_schedules_are_named() {
        let bad_zone =
            BackupSchedule { crons: vec!["0 1 * * *".into()], timezone: "Mars/Olympus".into(), description: String::new(), drill_crons: Vec::new() };
        assert!(matches!(Schedule::from_policy(&bad_zone), Err(ScheduleError::Zone(_))));
        let bad_cron =
            BackupSchedule { crons: vec!["0 25 * * *".into()], timezone: "UTC".into(), description: String::new(), drill_crons: Vec::new() };
        assert!(matches!(Schedule::from_policy(&bad_cron), Err(ScheduleError::Cron { .. })));
        let seconds =
            BackupSchedule { crons: vec!["*/5 * * * * *".into()], timezone: "UTC".into(), description: String::new(), drill_crons: Vec::new() };
        let s = Schedule::from_policy(&seconds).unwrap();
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 5).unwrap()));
    }
}
