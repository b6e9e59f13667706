//! Putting a restored scratch database in place of its target: rename the target aside,
//! rename the scratch database to the target's name, drop the old one. Every step is checked;
//! a failure after the target was renamed aside puts it back, and an error always says what
//! each database is called now, so the production database is never silently left under a
//! temporary name.
//!
//! A failed statement does not prove that nothing happened: a rename can commit on the server
//! and its reply be lost with the connection (a server restart, a proxy reset), and a retry on
//! a new connection then finds the name gone. So after every failed step the swap asks again
//! (on a new connection when the old one is gone) which of the databases exist, and goes on
//! from what it finds; when it cannot tell, it stops and names every database involved with
//! the query that tells.
//!
//! The statements run through closures so the failure paths can be tested without a server.

use crate::db::{quote_ident, quote_literal, DbError};

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
    #[error("restored into {scratch}, but cannot rename it to {target}: {err} — {target} was not created and {scratch} is being dropped; fix the cause and run the restore again")]
    Install { target: String, scratch: String, err: DbError },
    #[error("restored into {scratch}, but cannot rename {target} to {old} to make room: {err} — nothing changed: {target} still holds its previous contents under its own name and {scratch} is being dropped; close the other connections to {target} (stop the application) and run the restore again")]
    MoveAside { target: String, scratch: String, old: String, err: DbError },
    #[error("restored into {scratch} and renamed {target} to {old}, but cannot rename {scratch} to {target}: {err} — rolled back: {target} holds its previous contents under its own name again and {scratch} is being dropped; fix the cause and run the restore again")]
    RolledBack { target: String, scratch: String, old: String, err: DbError },
    #[error("THE DATABASE {target} IS NOW NAMED {old}: the restore renamed it to make room, could not rename {scratch} to {target} ({err}) and could not rename it back ({rollback_err}) — connected to another database of the server, run now: {fix} (the restored copy {scratch} is being dropped)")]
    RollbackFailed { target: String, scratch: String, old: String, err: DbError, rollback_err: DbError, fix: String },
    #[error("THE RESTORE STOPPED HALFWAY AND CANNOT TELL WHERE: {step} failed ({err}) and what that left could not be told ({check}) — {target} may now be named {old_or_nothing}, and the restored copy may be {scratch} or already {target}; connected to any database of the server, look with: {look} — then rename the previous contents back to {target} if that is where they are (ALTER DATABASE … RENAME TO …), and drop what is left of {scratch}")]
    Unknown { step: String, target: String, scratch: String, old_or_nothing: String, err: DbError, check: String, look: String },
}

fn rename(from: &str, to: &str) -> String {
    format!("ALTER DATABASE {} RENAME TO {}", quote_ident(from), quote_ident(to))
}

/// Which of `names` exist: the query `exists` runs, and that an operator can run.
pub fn exists_query(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
    format!("SELECT datname FROM pg_catalog.pg_database WHERE datname IN ({})", list.join(", "))
}

/// What a failed rename left: the `from` name still there and `to` not (it did not happen),
/// the other way round (it did, the reply was lost), or anything else.
#[derive(Debug, PartialEq, Eq)]
enum After {
    NotDone,
    Done,
    Unclear,
}

/// Runs the swap with `exec` (SQL on a maintenance database) and `exists` (the names among
/// those given that exist, asked after a failed step — on a new connection when the old one is
/// gone). `Ok` once the scratch database carries
/// the target's name, with the old database when it could not be dropped.
pub fn swap(
    plan: &Swap,
    mut exec: impl FnMut(&str) -> Result<(), DbError>,
    mut exists: impl FnMut(&[&str]) -> Result<Vec<String>, DbError>,
) -> Result<Option<Leftover>, SwapError> {
    let (target, scratch) = (plan.target.to_string(), plan.scratch.to_string());
    let all: Vec<&str> = [Some(plan.target), Some(plan.scratch), plan.old].into_iter().flatten().collect();
    let unknown = |step: String, err: DbError, after: Result<After, DbError>| SwapError::Unknown {
        step,
        target: plan.target.into(),
        scratch: plan.scratch.into(),
        old_or_nothing: plan.old.map_or_else(|| "nothing (it did not exist)".into(), |o| format!("{o} or still {}", plan.target)),
        err,
        check: match after {
            Err(e) => format!("asking the server failed: {e}"),
            Ok(_) => "the server shows both names or neither".into(),
        },
        look: format!("{};", exists_query(&all)),
    };
    // Runs one rename; on failure, finds out whether it happened after all.
    let mut rename_checked = |from: &str, to: &str| -> Result<(), (DbError, Result<After, DbError>)> {
        let Err(err) = exec(&rename(from, to)) else { return Ok(()) };
        let after = exists(&[from, to]).map(|found| {
            let (has_from, has_to) = (found.iter().any(|n| n == from), found.iter().any(|n| n == to));
            match (has_from, has_to) {
                (true, false) => After::NotDone,
                (false, true) => After::Done,
                _ => After::Unclear,
            }
        });
        match after {
            Ok(After::Done) => {
                tracing::warn!("renaming {from} to {to} reported an error ({err}), but the server shows it done: going on");
                Ok(())
            }
            other => Err((err, other)),
        }
    };
    let Some(old) = plan.old else {
        return match rename_checked(plan.scratch, plan.target) {
            Ok(()) => Ok(None),
            Err((err, Ok(After::NotDone))) => Err(SwapError::Install { target, scratch, err }),
            Err((err, after)) => Err(unknown(format!("renaming {} to {}", plan.scratch, plan.target), err, after)),
        };
    };
    match rename_checked(plan.target, old) {
        Ok(()) => {}
        Err((err, Ok(After::NotDone))) => return Err(SwapError::MoveAside { target, scratch, old: old.into(), err }),
        Err((err, after)) => return Err(unknown(format!("renaming {} to {old}", plan.target), err, after)),
    }
    match rename_checked(plan.scratch, plan.target) {
        Ok(()) => {}
        Err((err, Ok(After::NotDone))) => {
            let fix = format!("{};", rename(old, plan.target));
            return Err(match rename_checked(old, plan.target) {
                Ok(()) => SwapError::RolledBack { target, scratch, old: old.into(), err },
                Err((rollback_err, Ok(After::NotDone))) => SwapError::RollbackFailed { target, scratch, old: old.into(), err, rollback_err, fix },
                Err((rollback_err, after)) => unknown(format!("renaming {old} back to {}", plan.target), rollback_err, after),
            });
        }
        Err((err, after)) => {
            return Err(unknown(format!("renaming {} to {} (after renaming {} to {old})", plan.scratch, plan.target, plan.target), err, after))
        }
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
    use std::collections::BTreeSet;

    /// What the fake server does with a statement: runs it, refuses it, or runs it and loses
    /// the reply (the error a client sees when the connection drops after the commit).
    #[derive(Clone, Copy, PartialEq)]
    enum Stmt {
        Ok,
        Fail,
        Lost,
    }

    /// Runs a swap against a fake server holding `dbs`; statement `i` does `stmts[i]` (Ok past
    /// the end), and asking which databases exist fails while `server_down_for_checks`.
    /// Returns the statements run, the outcome and the databases left.
    fn run(
        plan: &Swap,
        dbs: &[&str],
        stmts: &[Stmt],
        server_down_for_checks: bool,
    ) -> (Vec<String>, Result<Option<Leftover>, SwapError>, Vec<String>) {
        let state = std::cell::RefCell::new(dbs.iter().map(|d| d.to_string()).collect::<BTreeSet<String>>());
        let mut ran = Vec::new();
        let result = swap(
            plan,
            |sql| {
                ran.push(sql.to_string());
                let what = stmts.get(ran.len() - 1).copied().unwrap_or(Stmt::Ok);
                if what != Stmt::Fail {
                    let names: Vec<String> = sql.split('"').skip(1).step_by(2).map(str::to_string).collect();
                    let mut st = state.borrow_mut();
                    if sql.contains(" RENAME TO ") {
                        assert!(st.remove(&names[0]), "renaming a database that does not exist: {sql}");
                        assert!(st.insert(names[1].clone()), "renaming onto a database that exists: {sql}");
                    } else if sql.starts_with("DROP DATABASE") {
                        st.remove(&names[0]);
                    }
                }
                match what {
                    Stmt::Ok => Ok(()),
                    Stmt::Fail => Err(DbError::Tool { tool: "psql".into(), detail: format!("fake failure of statement {}", ran.len() - 1) }),
                    Stmt::Lost => Err(DbError::Tool { tool: "psql".into(), detail: format!("connection lost after statement {}", ran.len() - 1) }),
                }
            },
            |names| {
                if server_down_for_checks {
                    return Err(DbError::Tool { tool: "libpq".into(), detail: "fake: the server is down".into() });
                }
                Ok(names.iter().filter(|n| state.borrow().contains(**n)).map(|n| n.to_string()).collect())
            },
        );
        let left = state.into_inner().into_iter().collect();
        (ran, result, left)
    }

    const T_TO_O: &str = r#"ALTER DATABASE "app" RENAME TO "ef_replaced""#;
    const S_TO_T: &str = r#"ALTER DATABASE "ef_restore" RENAME TO "app""#;
    const O_TO_T: &str = r#"ALTER DATABASE "ef_replaced" RENAME TO "app""#;
    const DROP_O: &str = r#"DROP DATABASE "ef_replaced" WITH (FORCE)"#;
    const UNTEMPLATE_O: &str = r#"ALTER DATABASE "ef_replaced" IS_TEMPLATE false"#;

    #[test]
    fn every_step_is_checked_and_a_failure_rolls_back_goes_on_or_says_where_everything_is() {
        use Stmt::{Fail, Lost, Ok as Run};
        let replace = Swap { target: "app", scratch: "ef_restore", old: Some("ef_replaced"), old_is_template: false };
        let template = Swap { old_is_template: true, ..replace.clone() };
        let create = Swap { old: None, ..replace.clone() };
        let both: &[&str] = &["app", "ef_restore"];
        let scratch_only: &[&str] = &["ef_restore"];
        let look = r#"SELECT datname FROM pg_catalog.pg_database WHERE datname IN ('app', 'ef_restore', 'ef_replaced');"#;
        // (plan, databases before, statements' fates, checks fail, statements run, outcome: "ok",
        // "leftover" or the error variant, databases after, texts the message must hold)
        #[allow(clippy::type_complexity)]
        let table: &[(&Swap, &[&str], &[Stmt], bool, &[&str], &str, &[&str], &[&str])] = &[
            (&replace, both, &[], false, &[T_TO_O, S_TO_T, DROP_O], "ok", &["app"], &[]),
            (
                &replace,
                both,
                &[Fail],
                false,
                &[T_TO_O],
                "MoveAside",
                both,
                &["app", "ef_restore", "ef_replaced", "nothing changed", "fake failure of statement 0"],
            ),
            (&replace, both, &[Run, Fail], false, &[T_TO_O, S_TO_T, O_TO_T], "RolledBack", both, &["rolled back", "statement 1"]),
            (
                &replace,
                both,
                &[Run, Fail, Fail],
                false,
                &[T_TO_O, S_TO_T, O_TO_T],
                "RollbackFailed",
                &["ef_replaced", "ef_restore"],
                &["THE DATABASE app IS NOW NAMED ef_replaced", "ef_restore", "statement 1", "statement 2", &format!("run now: {O_TO_T};")],
            ),
            (&replace, both, &[Run, Run, Fail], false, &[T_TO_O, S_TO_T, DROP_O], "leftover", &["app", "ef_replaced"], &[]),
            (&template, both, &[], false, &[T_TO_O, S_TO_T, UNTEMPLATE_O, DROP_O], "ok", &["app"], &[]),
            (&template, both, &[Run, Run, Fail], false, &[T_TO_O, S_TO_T, UNTEMPLATE_O], "leftover", &["app", "ef_replaced"], &[]),
            // A rename that happened though its reply was lost: the swap goes on as if it had
            // answered (it said "nothing changed" and the restored copy was dropped, production
            // left as ef_replaced, unnamed).
            (&replace, both, &[Lost], false, &[T_TO_O, S_TO_T, DROP_O], "ok", &["app"], &[]),
            (&replace, both, &[Run, Lost], false, &[T_TO_O, S_TO_T, DROP_O], "ok", &["app"], &[]),
            (&replace, both, &[Run, Fail, Lost], false, &[T_TO_O, S_TO_T, O_TO_T], "RolledBack", both, &["rolled back"]),
            // And when the server cannot be asked, nothing more is run and every name is given.
            (
                &replace,
                both,
                &[Lost],
                true,
                &[T_TO_O],
                "Unknown",
                &["ef_replaced", "ef_restore"],
                &["CANNOT TELL WHERE", "renaming app to ef_replaced", "fake: the server is down", look],
            ),
            (
                &replace,
                both,
                &[Run, Fail],
                true,
                &[T_TO_O, S_TO_T],
                "Unknown",
                &["ef_replaced", "ef_restore"],
                &["CANNOT TELL WHERE", "app may now be named ef_replaced", look],
            ),
            (&create, scratch_only, &[], false, &[S_TO_T], "ok", &["app"], &[]),
            (&create, scratch_only, &[Fail], false, &[S_TO_T], "Install", scratch_only, &["app", "ef_restore", "was not created"]),
            (&create, scratch_only, &[Lost], false, &[S_TO_T], "ok", &["app"], &[]),
            (&create, scratch_only, &[Lost], true, &[S_TO_T], "Unknown", &["app"], &["CANNOT TELL WHERE", "app may now be named nothing"]),
        ];
        for (i, (plan, before, stmts, down, expect_ran, outcome, after, texts)) in table.iter().enumerate() {
            let (ran, result, left) = run(plan, before, stmts, *down);
            assert_eq!(ran, *expect_ran, "case {i}");
            let (got, message) = match &result {
                Ok(None) => ("ok", String::new()),
                Ok(Some(leftover)) => {
                    assert_eq!(leftover.name, "ef_replaced", "case {i}");
                    ("leftover", String::new())
                }
                Err(e @ SwapError::Install { .. }) => ("Install", e.to_string()),
                Err(e @ SwapError::MoveAside { .. }) => ("MoveAside", e.to_string()),
                Err(e @ SwapError::RolledBack { .. }) => ("RolledBack", e.to_string()),
                Err(e @ SwapError::RollbackFailed { .. }) => ("RollbackFailed", e.to_string()),
                Err(e @ SwapError::Unknown { .. }) => ("Unknown", e.to_string()),
            };
            assert_eq!(got, *outcome, "case {i}: {result:?}");
            assert_eq!(left, *after, "case {i}");
            for text in *texts {
                assert!(message.contains(text), "case {i}: {text:?} not in {message}");
            }
        }
    }

    #[test]
    fn names_are_quoted() {
        let plan = Swap { target: "we\"ird", scratch: "s", old: None, old_is_template: false };
        let (ran, _, _) = run(&plan, &["s"], &[], false);
        assert_eq!(ran, [r#"ALTER DATABASE "s" RENAME TO "we""ird""#]);
        assert_eq!(exists_query(&["it's"]), "SELECT datname FROM pg_catalog.pg_database WHERE datname IN ('it''s')");
    }
}
