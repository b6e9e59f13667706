//! Runs backups on the policy's schedule, in the time zone it names (whatever the machine's
//! zone), with tokio-cron-scheduler. Several replicas may share a database: each scheduled
//! slot is claimed with a PostgreSQL advisory lock, so it produces one backup.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::policy::BackupSchedule;
use crate::service::Service;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the policy's schedule names time zone {0:?}, which is not an IANA zone this build knows")]
    Zone(String),
    #[error("the policy's cron expression {expr:?} is invalid: {reason}")]
    Cron { expr: String, reason: String },
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
}

/// A parsed schedule: six-field crons (seconds first) in one zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub exprs: Vec<String>,
    pub zone: Tz,
    pub description: String,
    crons: Vec<Cron>,
}

fn parser() -> CronParser {
    // The same settings as tokio-cron-scheduler, so what is validated here is what runs.
    CronParser::builder().seconds(Seconds::Required).dom_and_dow(true).build()
}

impl Schedule {
    pub fn from_policy(s: &BackupSchedule) -> Result<Schedule, ScheduleError> {
        let zone = Tz::from_str(&s.timezone).map_err(|_| ScheduleError::Zone(s.timezone.clone()))?;
        let mut exprs = Vec::new();
        let mut crons = Vec::new();
        for expr in &s.crons {
            // Five fields are standard cron; the scheduler wants seconds first.
            let six = if expr.split_whitespace().count() == 5 { format!("0 {expr}") } else { expr.clone() };
            let cron = parser().parse(&six).map_err(|e| ScheduleError::Cron { expr: expr.clone(), reason: e.to_string() })?;
            exprs.push(six);
            crons.push(cron);
        }
        Ok(Schedule { exprs, zone, description: s.description.clone(), crons })
    }

    /// The next run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.zone);
        self.crons.iter().filter_map(|c| c.find_next_occurrence(&local, false).ok()).min().map(|d| d.with_timezone(&Utc))
    }

    /// The slot a tick at `t` belongs to: the latest scheduled time not after `t` (plus a
    /// second of slack for timers that fire early). Every replica computes the same slot.
    pub fn slot_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = (t + Duration::seconds(1)).trunc_subsecs(0).with_timezone(&self.zone);
        self.crons.iter().filter_map(|c| c.find_previous_occurrence(&local, true).ok()).max().map(|d| d.with_timezone(&Utc))
    }
}

async fn tick(service: Arc<Service>, schedule: Arc<Schedule>) {
    let now = Utc::now();
    service.set_next_run(schedule.next_after(now + Duration::seconds(1)).map(|t| t.timestamp()));
    let Some(slot) = schedule.slot_at(now) else { return };
    let slot_label = slot.with_timezone(&schedule.zone).format("%Y-%m-%d %H:%M:%S %Z");
    if !service.claim_slot(slot.timestamp()).await {
        tracing::info!("another ef-backup instance is running the {slot_label} backup; this one skips it");
        return;
    }
    tracing::info!("scheduled backup for {slot_label}");
    let run = service.backup().await;
    if let crate::policy::BackupOutcome::Busy(name) = run.outcome {
        tracing::info!("skipping the {slot_label} backup: {name} is still running");
    }
}

/// Starts one job per cron expression; returns the running scheduler (shut it down on exit).
pub async fn start(service: Arc<Service>, schedule: Schedule) -> Result<JobScheduler, ScheduleError> {
    let err = |e: tokio_cron_scheduler::JobSchedulerError| ScheduleError::Scheduler(e.to_string());
    let sched = JobScheduler::new().await.map_err(err)?;
    let schedule = Arc::new(schedule);
    for expr in &schedule.exprs {
        let (svc, sch) = (Arc::clone(&service), Arc::clone(&schedule));
        let job = Job::new_async_tz(expr.as_str(), schedule.zone, move |_id, _sched| {
            let (svc, sch) = (Arc::clone(&svc), Arc::clone(&sch));
            Box::pin(async move { tick(svc, sch).await })
        })
        .map_err(err)?;
        sched.add(job).await.map_err(err)?;
    }
    service.set_next_run(schedule.next_after(Utc::now()).map(|t| t.timestamp()));
    sched.start().await.map_err(err)?;
    Ok(sched)
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
        })
        .unwrap()
    }

    #[test]
    fn beijing_01_and_13_are_17_and_05_utc_whatever_the_host_zone() {
        let s = default_schedule();
        let t = Utc.with_ymd_and_hms(2025, 11, 4, 3, 0, 0).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 11, 4, 5, 0, 0).unwrap()));
        let t = Utc.with_ymd_and_hms(2025, 11, 4, 5, 0, 0).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 11, 4, 17, 0, 0).unwrap()));
        assert_eq!(s.slot_at(Utc.with_ymd_and_hms(2025, 11, 4, 17, 0, 0).unwrap() + Duration::milliseconds(300)),
            Some(Utc.with_ymd_and_hms(2025, 11, 4, 17, 0, 0).unwrap()));
        // A timer firing a little early still lands in its slot.
        assert_eq!(s.slot_at(Utc.with_ymd_and_hms(2025, 11, 4, 16, 59, 59).unwrap() + Duration::milliseconds(500)),
            Some(Utc.with_ymd_and_hms(2025, 11, 4, 17, 0, 0).unwrap()));
    }

    #[test]
    fn invalid_schedules_are_named() {
        let bad_zone = BackupSchedule { crons: vec!["0 1 * * *".into()], timezone: "Mars/Olympus".into(), description: String::new() };
        assert!(matches!(Schedule::from_policy(&bad_zone), Err(ScheduleError::Zone(_))));
        let bad_cron = BackupSchedule { crons: vec!["0 25 * * *".into()], timezone: "UTC".into(), description: String::new() };
        assert!(matches!(Schedule::from_policy(&bad_cron), Err(ScheduleError::Cron { .. })));
        let seconds = BackupSchedule { crons: vec!["*/5 * * * * *".into()], timezone: "UTC".into(), description: String::new() };
        let s = Schedule::from_policy(&seconds).unwrap();
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(s.next_after(t), Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 5).unwrap()));
    }
}
