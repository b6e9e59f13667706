//! Which events the default policy tells whom, and how the messages read (in Chinese, like its
//! responses): failures and recoveries go to every channel, a backup that shrank sharply too;
//! successes only ping the heartbeat, so a silent heartbeat means something stopped.

use crate::policy::Settings;
use crate::response::{kind_label, kind_name, mb};
use crate::types::{BackupOutcome, Channel, Config, Event, EventKind, Notification, SizeChange};

/// Every channel that carries words (the heartbeat carries pings).
const TOLD: [Channel; 4] = [Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email];

fn to(channels: &[Channel], subject: &str, body: &str) -> Vec<Notification> {
    channels.iter().map(|&channel| Notification { channel, subject: subject.to_string(), body: body.to_string() }).collect()
}

fn what(config: &Config, event: &Event) -> String {
    let dbs = if event.databases.is_empty() { &config.databases } else { &event.databases };
    if dbs.is_empty() {
        "?".to_string()
    } else {
        dbs.join(", ")
    }
}

/// The share by which `now` fell below `before`, in percent (0 when it grew).
fn drop_percent(before: u64, now: u64) -> u64 {
    if before == 0 || now >= before {
        0
    } else {
        (before - now).saturating_mul(100) / before
    }
}

/// The databases whose backup fell by at least the threshold in bytes or rows, as lines.
fn shrunk(changes: &[SizeChange], threshold: u32) -> Vec<String> {
    if threshold == 0 {
        return Vec::new();
    }
    let threshold = u64::from(threshold);
    let mut lines = Vec::new();
    for c in changes {
        let bytes = drop_percent(c.previous_bytes, c.bytes);
        let rows = match (c.previous_rows, c.rows) {
            (Some(before), Some(now)) => drop_percent(before, now),
            _ => 0,
        };
        if bytes >= threshold || rows >= threshold {
            let mut line = format!("{}: {} MB → {} MB（-{bytes}%）", c.database, mb(c.previous_bytes), mb(c.bytes));
            if let (Some(before), Some(now)) = (c.previous_rows, c.rows) {
                line.push_str(&format!("，行数 {before} → {now}（-{rows}%）"));
            }
            lines.push(line);
        }
    }
    lines
}

fn failure_body(event: &Event) -> String {
    match &event.outcome {
        Some(BackupOutcome::Failed(f)) => {
            let mut body = format!("数据库备份失败: {}\n错误类型: {}", f.message, kind_name(f.kind));
            if let Some(name) = &f.file_name {
                body.push_str(&format!("\n备份文件: {name}"));
            }
            body
        }
        Some(BackupOutcome::Several(run)) => {
            let lines: Vec<String> = run
                .entries
                .iter()
                .filter_map(|e| Some(format!("{} ({}): {}", e.database, kind_label(e.kind), e.outcome.as_ref().err()?.message)))
                .collect();
            format!("数据库备份失败:\n{}", lines.join("\n"))
        }
        _ => format!("数据库备份失败: {}", event.detail),
    }
}

pub fn notifications(config: &Config, settings: &Settings, event: &Event) -> Vec<Notification> {
    let dbs = what(config, event);
    let recovered = event.previous.as_ref().filter(|p| !p.succeeded);
    let file = event.file_name.as_deref().map(|f| format!("\n备份文件: {f}")).unwrap_or_default();
    match event.kind {
        EventKind::BackupStarted => to(&[Channel::Heartbeat], &format!("[ef-backup] 开始备份: {dbs}"), &event.detail),
        EventKind::BackupFailed => {
            let body = failure_body(event);
            let mut out = to(&[Channel::Heartbeat], &format!("[ef-backup] 数据库备份失败: {dbs}"), &body);
            out.extend(to(&TOLD, &format!("[ef-backup] 数据库备份失败: {dbs}"), &body));
            out
        }
        EventKind::BackupSucceeded => {
            let mut out = to(&[Channel::Heartbeat], &format!("[ef-backup] 备份成功: {dbs}"), &event.detail);
            if let Some(previous) = recovered {
                let body = match &event.outcome {
                    Some(BackupOutcome::Done(d)) => {
                        format!("数据库备份已恢复正常: {}（{} MB）\n上次备份失败: {}", d.file_name, mb(d.size_bytes), previous.message)
                    }
                    Some(BackupOutcome::Several(run)) => {
                        format!("数据库备份已恢复正常: {} 个文件\n上次备份失败: {}", run.entries.len(), previous.message)
                    }
                    _ => format!("数据库备份已恢复正常\n上次备份失败: {}", previous.message),
                };
                out.extend(to(&TOLD, &format!("[ef-backup] 数据库备份已恢复: {dbs}"), &body));
            }
            let lines = shrunk(&event.changes, settings.alert_size_drop_percent);
            if !lines.is_empty() {
                let body =
                    format!("备份比上一次成功的备份小了 {}% 以上，请确认数据是否被删除:\n{}", settings.alert_size_drop_percent, lines.join("\n"));
                out.extend(to(&TOLD, &format!("[ef-backup] 备份大小骤降: {dbs}"), &body));
            }
            out
        }
        EventKind::S3UploadFailed => {
            to(&TOLD, &format!("[ef-backup] S3 上传失败: {dbs}"), &format!("本地备份成功，S3 上传失败: {}{file}", event.detail))
        }
        EventKind::RetentionSkipped => to(&TOLD, &format!("[ef-backup] 备份清理已跳过: {dbs}"), &format!("未删除任何旧备份: {}", event.detail)),
        EventKind::DrillFailed => to(&TOLD, &format!("[ef-backup] 恢复演练失败: {dbs}"), &format!("恢复演练失败: {}{file}", event.detail)),
        EventKind::DrillSucceeded => match recovered {
            Some(previous) => to(
                &TOLD,
                &format!("[ef-backup] 恢复演练已恢复正常: {dbs}"),
                &format!("恢复演练成功: {}{file}\n上次演练失败: {}", event.detail, previous.message),
            ),
            None => Vec::new(),
        },
        EventKind::MissedSlot => to(&TOLD, &format!("[ef-backup] 定时备份未执行: {dbs}"), &format!("计划的备份没有按时开始: {}", event.detail)),
        EventKind::PolicyRejected => to(&TOLD, "[ef-backup] 策略重新加载被拒绝", &format!("新的策略未被加载，仍在使用原策略: {}", event.detail)),
        EventKind::ServiceStarted | EventKind::ServiceStopped => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::config;
    use crate::types::{BackupDone, BackupFailed, ErrorKind, LastRun};

    fn run(succeeded: bool, message: &str) -> LastRun {
        LastRun { started_at: 1, finished_at: 2, succeeded, file_name: None, message: message.into() }
    }

    fn event(kind: EventKind, outcome: Option<BackupOutcome>, previous: Option<LastRun>) -> Event {
        Event { kind, at: 1_762_191_010, detail: "detail".into(), databases: vec![], file_name: None, outcome, previous, changes: vec![] }
    }

    fn done() -> BackupOutcome {
        BackupOutcome::Done(BackupDone {
            file_name: "euraflow_backup_20251104_013000.sql.gz".into(),
            path: "/b/euraflow_backup_20251104_013000.sql.gz".into(),
            size_bytes: 12_345_678,
            started_at: 1_762_191_000,
            finished_at: 1_762_191_010,
            copies: vec![],
        })
    }

    fn channels(n: &[Notification]) -> Vec<Channel> {
        n.iter().map(|n| n.channel).collect()
    }

    #[test]
    fn failures_go_everywhere_with_the_originals_wording() {
        let c = config(&[], None);
        let s = Settings::default();
        let failed = BackupOutcome::Failed(BackupFailed {
            kind: ErrorKind::Dump,
            message: "pg_dump exited with status 1".into(),
            file_name: Some("euraflow_backup_20251104_013000.sql.gz".into()),
        });
        for previous in [None, Some(run(true, "ok")), Some(run(false, "disk full"))] {
            let n = notifications(&c, &s, &event(EventKind::BackupFailed, Some(failed.clone()), previous));
            assert_eq!(channels(&n), [Channel::Heartbeat, Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email]);
            assert_eq!(n[1].subject, "[ef-backup] 数据库备份失败: euraflow");
            assert_eq!(n[1].body, "数据库备份失败: pg_dump exited with status 1\n错误类型: dump\n备份文件: euraflow_backup_20251104_013000.sql.gz");
        }
        for kind in [EventKind::S3UploadFailed, EventKind::RetentionSkipped, EventKind::DrillFailed, EventKind::MissedSlot, EventKind::PolicyRejected]
        {
            assert_eq!(channels(&notifications(&c, &s, &event(kind, None, None))), TOLD, "{kind:?}");
        }
        // Several databases: the subject names them all.
        let several = Config { databases: vec!["euraflow".into(), "shop".into()], ..c };
        let n = notifications(&several, &s, &event(EventKind::BackupFailed, Some(failed), None));
        assert_eq!(n[1].subject, "[ef-backup] 数据库备份失败: euraflow, shop");
    }

    #[test]
    fn successes_only_ping_the_heartbeat_unless_they_recover() {
        let c = config(&[], None);
        let s = Settings::default();
        for previous in [None, Some(run(true, "ok"))] {
            let n = notifications(&c, &s, &event(EventKind::BackupSucceeded, Some(done()), previous));
            assert_eq!(channels(&n), [Channel::Heartbeat]);
        }
        assert_eq!(channels(&notifications(&c, &s, &event(EventKind::BackupStarted, None, None))), [Channel::Heartbeat]);
        let n = notifications(&c, &s, &event(EventKind::BackupSucceeded, Some(done()), Some(run(false, "pg_dump exited with status 1"))));
        assert_eq!(channels(&n), [Channel::Heartbeat, Channel::Webhook, Channel::Slack, Channel::Telegram, Channel::Email]);
        assert_eq!(n[1].subject, "[ef-backup] 数据库备份已恢复: euraflow");
        assert_eq!(n[1].body, "数据库备份已恢复正常: euraflow_backup_20251104_013000.sql.gz（11.77 MB）\n上次备份失败: pg_dump exited with status 1");
        // Drills: quiet when they pass, told when they recover.
        assert!(notifications(&c, &s, &event(EventKind::DrillSucceeded, None, Some(run(true, "ok")))).is_empty());
        assert_eq!(channels(&notifications(&c, &s, &event(EventKind::DrillSucceeded, None, Some(run(false, "x"))))), TOLD);
        for kind in [EventKind::ServiceStarted, EventKind::ServiceStopped] {
            assert!(notifications(&c, &s, &event(kind, None, None)).is_empty());
        }
    }

    #[test]
    fn a_sharp_drop_in_size_or_rows_is_told() {
        let c = config(&[], None);
        let change =
            |previous_bytes, bytes, previous_rows, rows| SizeChange { database: "euraflow".into(), previous_bytes, bytes, previous_rows, rows };
        let with = |changes: Vec<SizeChange>, settings: &Settings| {
            let e = Event { changes, ..event(EventKind::BackupSucceeded, Some(done()), None) };
            channels(&notifications(&c, settings, &e))
        };
        let s = Settings::default();
        assert_eq!(with(vec![change(1000, 600, Some(100), Some(90))], &s), [Channel::Heartbeat], "40% smaller: under 50");
        assert_eq!(with(vec![change(1000, 1500, None, None)], &s), [Channel::Heartbeat], "grew");
        assert_eq!(with(vec![change(0, 0, Some(0), Some(0))], &s), [Channel::Heartbeat], "empty before");
        assert_eq!(with(vec![change(1000, 500, None, None)], &s)[1..], TOLD, "half the bytes");
        assert_eq!(with(vec![change(1000, 990, Some(1000), Some(10))], &s)[1..], TOLD, "rows fell, bytes did not");
        let off = Settings { alert_size_drop_percent: 0, ..Settings::default() };
        assert_eq!(with(vec![change(1000, 1, Some(1000), Some(0))], &off), [Channel::Heartbeat], "0 turns it off");
        let e = Event { changes: vec![change(10 << 20, 1 << 20, Some(1000), Some(100))], ..event(EventKind::BackupSucceeded, Some(done()), None) };
        let n = notifications(&c, &s, &e);
        assert_eq!(n[1].subject, "[ef-backup] 备份大小骤降: euraflow");
        assert!(n[1].body.contains("euraflow: 10 MB → 1 MB（-90%），行数 1000 → 100（-90%）"), "{}", n[1].body);
    }
}
