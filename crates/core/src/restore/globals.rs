//! The server's globals (`pg_dumpall --globals-only`: roles, memberships, role settings,
//! tablespaces) restored onto a server, statement by statement rather than through psql with
//! `ON_ERROR_STOP` — the file always starts with `CREATE ROLE postgres;`, which a server has —
//! and without ever touching what is already there:
//!
//! - a role that exists is left exactly as it is (attributes, password, comment), unless
//!   `--overwrite-roles`, and reported;
//! - memberships and role settings missing on the server are added; a setting the role already
//!   has keeps its value;
//! - a tablespace that exists is left alone; one whose location is missing is reported;
//! - only the statements a globals backup holds run at all (no psql meta-command, no DDL on
//!   databases or tables): anything else is refused and reported.
//!
//! A backup ef-backup wrote starts with one comment line of its own (the databases of the run
//! and whether role passwords were taken): [`header_line`].

use std::io::Read;

use crate::db::{quote_literal, DbError, PgTools};
use crate::dump::Completeness;

use super::sqlscan::{Event, Scanner, StatementKind};
use super::{damaged, RestoreError, Source, MAINTENANCE_DB};

pub const HEADER_PREFIX: &str = "-- ef-backup globals v1: ";
/// A globals backup larger than this is no globals backup (thousands of roles take a few MiB).
pub const MAX_BYTES: u64 = 256 << 20;

/// What ef-backup's first line of a globals backup says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobalsHeader {
    /// The databases of the run the globals belong to.
    pub databases: Vec<String>,
    /// Whether role passwords were taken (false: `--no-role-passwords`).
    pub passwords: bool,
}

pub fn header_line(h: &GlobalsHeader) -> String {
    format!("{HEADER_PREFIX}{}\n", serde_json::json!({"databases": h.databases, "passwords": h.passwords}))
}

/// The header in `line` (the decoded stream's first line); None when it is not ours.
pub fn parse_header(line: &[u8]) -> Result<Option<GlobalsHeader>, String> {
    let Some(json) = line.strip_prefix(HEADER_PREFIX.as_bytes()) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("its ef-backup globals line is not JSON ({e})"))?;
    let databases = v.get("databases").and_then(|d| d.as_array()).ok_or("its ef-backup globals line has no database list")?;
    let databases =
        databases.iter().map(|d| d.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or("its database list holds a non-string")?;
    let passwords = v.get("passwords").and_then(|p| p.as_bool()).ok_or("its ef-backup globals line has no `passwords`")?;
    Ok(Some(GlobalsHeader { databases, passwords }))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalsOptions {
    /// Roles that exist get the backup's attributes, password, settings and comment.
    pub overwrite_roles: bool,
}

/// What restoring the globals did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalsReport {
    pub header: Option<GlobalsHeader>,
    pub created_roles: Vec<String>,
    /// Roles that were there already and were left exactly as they were.
    pub existing_roles: Vec<String>,
    /// Roles that were there and got the backup's attributes (`--overwrite-roles`).
    pub overwritten_roles: Vec<String>,
    /// Roles created with LOGIN but no password in the backup.
    pub without_password: Vec<String>,
    pub memberships_added: usize,
    pub settings_added: usize,
    pub tablespaces_created: Vec<String>,
    /// Statements that failed on the server or were refused, each with why.
    pub problems: Vec<String>,
}

/// The role a statement is about: the identifier after `prefix` (quoted or bare), folded as
/// PostgreSQL folds it.
fn role_after<'a>(sql: &'a str, prefix: &str) -> Option<(String, &'a str)> {
    let rest = sql.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &sql[prefix.len()..])?;
    if rest.starts_with('"') {
        return crate::db::unquote(rest, '"');
    }
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(rest.len());
    (end > 0).then(|| (rest[..end].to_lowercase(), &rest[end..]))
}

/// The statement without the comments and blank lines pg_dumpall puts before it.
fn statement_text(text: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(text).map_err(|_| "a statement is not UTF-8".to_string())?;
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty() || l.trim_start().starts_with("--"));
    let first = lines.next().unwrap_or_default();
    Ok(std::iter::once(first).chain(lines).collect::<Vec<_>>().join("\n").trim().to_string())
}

/// The statements of a globals backup, checked whole (pg_dumpall's completion footer) before
/// any of them runs.
fn statements(source: &Source) -> Result<(Option<GlobalsHeader>, Vec<String>), RestoreError> {
    let mut decoded = Vec::new();
    let reader = source.decoded()?;
    reader.take(MAX_BYTES + 1).read_to_end(&mut decoded).map_err(|e| super::corrupt(source, e))?;
    if decoded.len() as u64 > MAX_BYTES {
        return Err(damaged(source, format!("it is larger than {} MiB, which no globals backup is", MAX_BYTES >> 20)));
    }
    let first_end = decoded.iter().position(|&b| b == b'\n').map_or(decoded.len(), |i| i + 1);
    let header = parse_header(&decoded[..first_end]).map_err(|r| damaged(source, r))?;
    let body = if header.is_some() { &decoded[first_end..] } else { &decoded[..] };
    let mut complete = Completeness::cluster();
    complete.update(body);
    complete.verify().map_err(|r| damaged(source, format!("{r} (is it a globals backup?)")))?;
    let mut out = Vec::new();
    let mut scanner = Scanner::new();
    let mut take = |e: Event<'_>| -> Result<(), String> {
        match e {
            Event::Statement { text, kind: StatementKind::CopyFromStdin { .. } | StatementKind::OtherCopy } => {
                Err(format!("it holds a COPY ({}), which no globals backup does", String::from_utf8_lossy(&text[..text.len().min(80)])))
            }
            Event::Statement { text, .. } => {
                out.push(statement_text(text)?);
                Ok(())
            }
            // pg_dumpall's own `\restrict`/`\unrestrict`; nothing else runs.
            Event::Meta { command, .. } if command == b"restrict" || command == b"unrestrict" => Ok(()),
            Event::Meta { command, .. } => {
                Err(format!("it holds the psql meta-command \\{}, which no globals backup does", String::from_utf8_lossy(command)))
            }
            Event::Incomplete { text } if statement_text(text)?.is_empty() => Ok(()),
            Event::Incomplete { .. } => Err("it ends in the middle of a statement".into()),
            Event::Toc(_) => Ok(()),
            Event::CopyData(_) | Event::CopyEnd(_) => Err("it holds COPY data, which no globals backup does".into()),
        }
    };
    scanner.feed(body, &mut take).and_then(|()| scanner.finish(&mut take)).map_err(|r| damaged(source, r))?;
    Ok((header, out))
}

/// What a statement of a globals backup is.
#[derive(Debug, PartialEq, Eq)]
enum Stmt {
    Session,
    CreateRole(String),
    /// `ALTER ROLE r WITH …` (attributes, password).
    RoleAttributes(String, bool),
    /// `ALTER ROLE r SET name …`.
    RoleSetting(String, String),
    /// `ALTER ROLE r IN DATABASE d SET …`: applied with the database's own restore.
    RoleInDatabase,
    Membership,
    CommentOnRole(String),
    CreateTablespace(String),
    /// Other statements about tablespaces (owner, options, grants).
    Tablespace,
    Other,
}

fn classify(sql: &str) -> Stmt {
    let upper = sql.to_ascii_uppercase();
    if upper.starts_with("SET ") || upper.starts_with("SELECT PG_CATALOG.SET_CONFIG(") {
        return Stmt::Session;
    }
    if let Some((role, rest)) = role_after(sql, "CREATE ROLE ") {
        if rest.trim() == ";" {
            return Stmt::CreateRole(role);
        }
    }
    if let Some((role, rest)) = role_after(sql, "ALTER ROLE ") {
        let rest_upper = rest.trim_start().to_ascii_uppercase();
        if rest_upper.starts_with("WITH ") {
            return Stmt::RoleAttributes(role, rest_upper.contains(" PASSWORD "));
        }
        if rest_upper.starts_with("IN DATABASE ") {
            return Stmt::RoleInDatabase;
        }
        if let Some(setting) = rest.trim_start().get(4..).filter(|_| rest_upper.starts_with("SET ")) {
            let name = setting.trim_start().split(|c: char| c.is_whitespace() || c == '=').next().unwrap_or_default();
            return Stmt::RoleSetting(role, name.trim_matches('"').to_lowercase());
        }
    }
    if upper.starts_with("GRANT ") && !upper.contains(" ON ") {
        return Stmt::Membership;
    }
    if let Some((role, _)) = role_after(sql, "COMMENT ON ROLE ") {
        return Stmt::CommentOnRole(role);
    }
    if let Some((space, _)) = role_after(sql, "CREATE TABLESPACE ") {
        return Stmt::CreateTablespace(space);
    }
    if upper.starts_with("ALTER TABLESPACE ")
        || (upper.starts_with("GRANT ") && upper.contains(" ON TABLESPACE "))
        || upper.starts_with("COMMENT ON TABLESPACE ")
    {
        return Stmt::Tablespace;
    }
    Stmt::Other
}

fn first_line_of(sql: &str) -> String {
    let mut line = sql.lines().next().unwrap_or_default().to_string();
    // A role's password (its SCRAM verifier or md5 hash) is a secret: a report never shows it.
    if let Some(at) = line.to_ascii_uppercase().find(" PASSWORD ") {
        line.truncate(at);
        line.push_str(" PASSWORD (not shown)");
    }
    let cut: String = line.chars().take(120).collect();
    if cut.len() < sql.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Restores the globals of `source` onto the server `tools` reaches, as described above.
/// Fails only when the backup cannot be read or the server cannot be reached; every statement
/// that fails on the server is reported and the others still run.
pub fn restore_globals(tools: &PgTools, source: &Source, opts: GlobalsOptions) -> Result<GlobalsReport, RestoreError> {
    let (header, statements) = statements(source)?;
    let mut conn = tools.connect(MAINTENANCE_DB, Some("-c standard_conforming_strings=on"))?;
    let sql_err = |e: crate::libpq::PqError| DbError::Sql { detail: e.to_string() };
    let existing: Vec<String> =
        conn.query("SELECT rolname FROM pg_roles").map_err(sql_err)?.into_iter().filter_map(|r| r.into_iter().next()).collect();
    let spaces: Vec<String> =
        conn.query("SELECT spcname FROM pg_tablespace").map_err(sql_err)?.into_iter().filter_map(|r| r.into_iter().next()).collect();
    let mut report = GlobalsReport { header: header.clone(), ..GlobalsReport::default() };
    let mut with_password: Vec<String> = Vec::new();
    let mut login: Vec<String> = Vec::new();
    let writable = |report: &GlobalsReport, role: &str| {
        report.created_roles.iter().any(|r| r == role) || (opts.overwrite_roles && existing.iter().any(|r| r == role))
    };
    for sql in &statements {
        let stmt = classify(sql);
        let run = match &stmt {
            Stmt::Session | Stmt::Membership | Stmt::Tablespace => true,
            Stmt::CreateRole(role) if existing.contains(role) => {
                if opts.overwrite_roles {
                    report.overwritten_roles.push(role.clone());
                } else {
                    report.existing_roles.push(role.clone());
                }
                false
            }
            Stmt::CreateRole(_) => true,
            Stmt::RoleAttributes(role, password) => {
                if *password {
                    with_password.push(role.clone());
                }
                if sql.to_ascii_uppercase().contains(" LOGIN") && !sql.to_ascii_uppercase().contains(" NOLOGIN") {
                    login.push(role.clone());
                }
                writable(&report, role)
            }
            Stmt::RoleSetting(role, name) => {
                writable(&report, role) || {
                    // A setting the role already has keeps its value; a missing one is added.
                    let has = format!(
                        "SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) c \
                         WHERE r.rolname = {} AND s.setdatabase = 0 AND lower(split_part(c, '=', 1)) = {}",
                        quote_literal(role),
                        quote_literal(name)
                    );
                    conn.query(&has).map(|rows| rows.is_empty()).unwrap_or(false)
                }
            }
            Stmt::RoleInDatabase => false,
            Stmt::CommentOnRole(role) => writable(&report, role),
            Stmt::CreateTablespace(space) => !spaces.contains(space),
            Stmt::Other => {
                report.problems.push(format!("refused (not a statement a globals backup holds): {}", first_line_of(sql)));
                false
            }
        };
        if !run {
            continue;
        }
        // One statement per call, as classified: never a second one riding along.
        match conn.execute_one(sql.as_bytes()) {
            Ok(()) => match stmt {
                Stmt::CreateRole(role) => report.created_roles.push(role),
                Stmt::Membership => report.memberships_added += 1,
                Stmt::RoleSetting(..) => report.settings_added += 1,
                Stmt::CreateTablespace(space) => report.tablespaces_created.push(space),
                _ => {}
            },
            Err(e) => {
                let why = e.to_string();
                let hint = match stmt {
                    Stmt::CreateTablespace(_) if why.contains("No such file") || why.contains("does not exist") => {
                        " — create the directory on the new server (owned by the postgres OS user) and run the restore again, or leave the tablespace out"
                    }
                    _ => "",
                };
                report.problems.push(format!("{}: {}{hint}", first_line_of(sql), why.trim()));
            }
        }
    }
    report.without_password = report.created_roles.iter().filter(|r| login.contains(r) && !with_password.contains(r)).cloned().collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed statement is reported by its first line: a role's password hash was in it, up
    /// to 120 characters of it (found by review).
    #[test]
    fn a_reported_statement_never_shows_a_password() {
        let table = [
            (
                "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy';",
                "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD (not shown)…",
            ),
            ("ALTER ROLE \"we ird\" WITH LOGIN password 'md5deadbeefdeadbeefdeadbeefdeadbeef';", "ALTER ROLE \"we ird\" WITH LOGIN PASSWORD (not shown)…"),
            ("CREATE ROLE app;", "CREATE ROLE app;"),
            ("GRANT app TO ops GRANTED BY postgres;\nmore", "GRANT app TO ops GRANTED BY postgres;…"),
        ];
        for (sql, shown) in table {
            assert_eq!(first_line_of(sql), shown);
            assert!(!first_line_of(sql).contains("SCRAM") && !first_line_of(sql).contains("md5"));
        }
    }

    #[test]
    fn header_round_trip() {
        let h = GlobalsHeader { databases: vec!["a".into(), "b c\"".into()], passwords: false };
        let line = header_line(&h);
        assert!(line.starts_with(HEADER_PREFIX) && line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(parse_header(line.as_bytes()).unwrap(), Some(h));
        assert_eq!(parse_header(b"--\n").unwrap(), None);
        assert!(parse_header(format!("{HEADER_PREFIX}{{}}\n").as_bytes()).is_err());
    }

    #[test]
    fn statements_are_told_apart() {
        for (sql, want) in [
            ("SET client_encoding = 'UTF8';", Stmt::Session),
            ("CREATE ROLE app;", Stmt::CreateRole("app".into())),
            ("CREATE ROLE \"Odd \"\"Role\";", Stmt::CreateRole("Odd \"Role".into())),
            ("ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$x';", Stmt::RoleAttributes("app".into(), true)),
            ("ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN;", Stmt::RoleAttributes("app".into(), false)),
            ("ALTER ROLE app SET work_mem TO '8MB';", Stmt::RoleSetting("app".into(), "work_mem".into())),
            ("ALTER ROLE app IN DATABASE shop SET work_mem TO '8MB';", Stmt::RoleInDatabase),
            ("GRANT r2 TO app GRANTED BY postgres;", Stmt::Membership),
            ("COMMENT ON ROLE app IS 'x';", Stmt::CommentOnRole("app".into())),
            ("CREATE TABLESPACE fast OWNER app LOCATION '/srv/fast';", Stmt::CreateTablespace("fast".into())),
            ("GRANT ALL ON TABLESPACE fast TO app;", Stmt::Tablespace),
            // What no globals backup holds.
            ("CREATE ROLE evil SUPERUSER;", Stmt::Other),
            ("DROP DATABASE shop;", Stmt::Other),
            ("COPY t FROM PROGRAM 'id';", Stmt::Other),
            ("GRANT SELECT ON t TO app;", Stmt::Other),
        ] {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }
}
