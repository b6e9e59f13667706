//! Putting a restored scratch database in place of its target: rename the target aside,
//! rename the scratch database to the target's name, drop the old one. Every step is checked;
//! a failure after the target was renamed aside puts it back, and an error always says what
//! each database is called now, so the production database is never silently left under a
//! temporary name.
//!
//! The statements run through a closure so the failure paths can be tested without a server.

use crate::db::{quote_ident, DbError};

/// The databases involved in one swap.
#[derive(Debug, Clone)]
pub struct Swap<'a> {
    pub target: &'a str,
    pub scratch: &'a str,
    /// The name the target is moved to while the scratch database takes its place; `None`
    /// when the target does not exist.
    pub old: Option<&'a str>,
    /// A template database cannot be dropped until it is unmarked.
    pub old_is_template: bool,
}

/// The replaced database, when it could not be dropped after the swap succeeded.
#[derive(Debug)]
pub struct Leftover {
    pub name: String,
    pub err: DbError,
}

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("restored into {scratch}, but cannot rename it to {target}: {err} — {target} was not created and {scratch} is dropped; fix the cause and run the restore again")]
    Install { target: String, scratch: String, err: DbError },
    #[error("restored into {scratch}, but cannot rename {target} to {old} to make room: {err} — nothing changed: {target} still holds its previous contents under its own name and {scratch} is dropped; close the other connections to {target} (stop the application) and run the restore again")]
    MoveAside { target: String, scratch: String, old: String, err: DbError },
    #[error("restored into {scratch} and renamed {target} to {old}, but cannot rename {scratch} to {target}: {err} — rolled back: {target} holds its previous contents under its own name again and {scratch} is dropped; fix the cause and run the restore again")]
    RolledBack { target: String, scratch: String, old: String, err: DbError },
    #[error("THE DATABASE {target} IS NOW NAMED {old}: the restore renamed it to make room, could not rename {scratch} to {target} ({err}) and could not rename it back ({rollback_err}) — connected to another database of the server, run now: {fix} (the restored copy {scratch} is being dropped)")]
    RollbackFailed { target: String, scratch: String, old: String, err: DbError, rollback_err: DbError, fix: String },
}

fn rename(from: &str, to: &str) -> String {
    format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from), quote_ident(to))
}

/// Runs the swap with `exec` (SQL on a maintenance database). `Ok` once the scratch database
/// carries the target's name, with the old database when it could not be dropped.
pub fn swap(plan: &Swap, mut exec: impl FnMut(&str) -> Result<(), DbError>) -> Result<Option<Leftover>, SwapError> {
    let (target, scratch) = (plan.target.to_string(), plan.scratch.to_string());
    let Some(old) = plan.old else {
        exec(&rename(plan.scratch, plan.target)).map_err(|err| SwapError::Install { target, scratch, err })?;
        return Ok(None);
    };
    exec(&rename(plan.target, old)).map_err(|err| SwapError::MoveAside { target: target.clone(), scratch: scratch.clone(), old: old.into(), err })?;
    if let Err(err) = exec(&rename(plan.scratch, plan.target)) {
        let fix = format!("{};", rename(old, plan.target));
        return Err(match exec(&rename(old, plan.target)) {
            Ok(()) => SwapError::RolledBack { target, scratch, old: old.into(), err },
            Err(rollback_err) => SwapError::RollbackFailed { target, scratch, old: old.into(), err, rollback_err, fix },
        });
    }
    // The restore is in place from here on: a failure only leaves the old copy behind.
    let mut drop_old = Vec::new();
    if plan.old_is_template {
        drop_old.push(format!("ALTER DATABASE {} IS_TEMPLATE false", quote_ident(old)));
    }
    drop_old.push(format!("DROP DATABASE {} WITH (FORCE)", quote_ident(old)));
    for sql in drop_old {
        if let Err(err) = exec(&sql) {
            return Ok(Some(Leftover { name: old.into(), err }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a swap against a fake server that fails the statements numbered in `fail` (from 0)
    /// and returns what was run and the outcome.
    fn run(plan: &Swap, fail: &[usize]) -> (Vec<String>, Result<Option<Leftover>, SwapError>) {
        let mut ran = Vec::new();
        let result = swap(plan, |sql| {
            ran.push(sql.to_string());
            if fail.contains(&(ran.len() - 1)) {
                Err(DbError::Tool { tool: "psql".into(), detail: format!("fake failure of statement {}", ran.len() - 1) })
            } else {
                Ok(())
            }
        });
        (ran, result)
    }

    const T_TO_O: &str = r#"ALTER DATABASE "app" RENAME TO "ef_replaced""#;
    const S_TO_T: &str = r#"ALTER DATABASE "ef_restore" RENAME TO "app""#;
    const O_TO_T: &str = r#"ALTER DATABASE "ef_replaced" RENAME TO "app""#;
    const DROP_O: &str = r#"DROP DATABASE "ef_replaced" WITH (FORCE)"#;
    const UNTEMPLATE_O: &str = r#"ALTER DATABASE "ef_replaced" IS_TEMPLATE false"#;

    #[test]
    fn every_step_is_checked_and_a_failure_rolls_back_or_says_where_everything_is() {
        let replace = Swap { target: "app", scratch: "ef_restore", old: Some("ef_replaced"), old_is_template: false };
        let template = Swap { old_is_template: true, ..replace.clone() };
        let create = Swap { old: None, ..replace.clone() };
        // (plan, failing statements, statements run, outcome: "ok", "leftover" or the error
        // variant, texts the message must hold)
        #[allow(clippy::type_complexity)]
        let table: &[(&Swap, &[usize], &[&str], &str, &[&str])] = &[
            (&replace, &[], &[T_TO_O, S_TO_T, DROP_O], "ok", &[]),
            (&replace, &[0], &[T_TO_O], "MoveAside", &["app", "ef_restore", "ef_replaced", "nothing changed", "fake failure of statement 0"]),
            (&replace, &[1], &[T_TO_O, S_TO_T, O_TO_T], "RolledBack", &["app", "ef_restore", "ef_replaced", "rolled back", "statement 1"]),
            (
                &replace,
                &[1, 2],
                &[T_TO_O, S_TO_T, O_TO_T],
                "RollbackFailed",
                &["THE DATABASE app IS NOW NAMED ef_replaced", "ef_restore", "statement 1", "statement 2", &format!("run now: {O_TO_T};")],
            ),
            (&replace, &[2], &[T_TO_O, S_TO_T, DROP_O], "leftover", &[]),
            (&template, &[], &[T_TO_O, S_TO_T, UNTEMPLATE_O, DROP_O], "ok", &[]),
            (&template, &[2], &[T_TO_O, S_TO_T, UNTEMPLATE_O], "leftover", &[]),
            (&create, &[], &[S_TO_T], "ok", &[]),
            (&create, &[0], &[S_TO_T], "Install", &["app", "ef_restore", "was not created"]),
        ];
        for (i, (plan, fail, expect_ran, outcome, texts)) in table.iter().enumerate() {
            let (ran, result) = run(plan, fail);
            assert_eq!(ran, *expect_ran, "case {i}");
            let (got, message) = match &result {
                Ok(None) => ("ok", String::new()),
                Ok(Some(left)) => {
                    assert_eq!(left.name, "ef_replaced", "case {i}");
                    ("leftover", String::new())
                }
                Err(e @ SwapError::Install { .. }) => ("Install", e.to_string()),
                Err(e @ SwapError::MoveAside { .. }) => ("MoveAside", e.to_string()),
                Err(e @ SwapError::RolledBack { .. }) => ("RolledBack", e.to_string()),
                Err(e @ SwapError::RollbackFailed { .. }) => ("RollbackFailed", e.to_string()),
            };
            assert_eq!(got, *outcome, "case {i}: {result:?}");
            for text in *texts {
                assert!(message.contains(text), "case {i}: {text:?} not in {message}");
            }
        }
    }

    #[test]
    fn names_are_quoted() {
        let plan = Swap { target: "we\"ird", scratch: "s", old: None, old_is_template: false };
        let (ran, _) = run(&plan, &[]);
        assert_eq!(ran, [r#"ALTER DATABASE "s" RENAME TO "we""ird""#]);
    }
}
