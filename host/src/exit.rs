//! The exit codes of the `ef-backup` command, in one place (the README's table is this one).
//!
//! | code    | meaning |
//! |---------|---------|
//! | 0       | success |
//! | 1       | failed (the error is printed); `verify` found a mismatch |
//! | 2       | invalid command line (clap) |
//! | 3       | busy: another ef-backup process is backing up this database; nothing was started |
//! | 4       | `backup`: the local backup succeeded but the S3 upload failed |
//! | 128 + N | ended by signal N (130 SIGINT, 143 SIGTERM); a `backup` removed its `.partial` file, a `restore`/`verify` dropped its scratch database |

use crate::engine::BackupReport;
use crate::model::{BackupOutcome, S3Outcome};

pub const OK: u8 = 0;
pub const FAILED: u8 = 1;
pub const BUSY: u8 = 3;
pub const S3_FAILED: u8 = 4;

/// The exit code for ending on signal `sig`.
pub fn signalled(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}

/// The exit code of a `backup` run.
pub fn of_backup(report: &BackupReport) -> u8 {
    match &report.outcome {
        BackupOutcome::Done(d) if matches!(d.s3, S3Outcome::Failed(_)) => S3_FAILED,
        BackupOutcome::Done(_) => OK,
        BackupOutcome::Busy(_) => BUSY,
        BackupOutcome::Failed(_) => FAILED,
        BackupOutcome::Several(run) if !run.succeeded() => FAILED,
        BackupOutcome::Several(run) if run.entries.iter().any(|e| matches!(&e.outcome, Ok(d) if matches!(d.s3, S3Outcome::Failed(_)))) => S3_FAILED,
        BackupOutcome::Several(_) => OK,
    }
}
