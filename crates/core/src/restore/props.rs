//! Database-level properties: what a database carries outside its own contents (owner, ACL,
//! `ALTER DATABASE … SET` and `ALTER ROLE … IN DATABASE … SET` settings, comment, encoding,
//! locale, connection limit, tablespace, template flags). A plain `pg_dump` holds none of them,
//! so every backup starts with one comment line that carries them ([`header_line`], written by
//! the engine before pg_dump's output), `restore --drop-existing` keeps those of the database it
//! replaces, and `--create` takes them from the backup (or, for an older backup, defaults);
//! options win over both.
//!
//! Reading is a thin layer over [`PgTools::query`]; turning them into SQL is pure, so every
//! quoting rule is unit-tested.

use crate::db::{quote_ident, quote_literal, DbError, PgTools};

/// A database's properties, as the catalogs hold them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbProps {
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `datlocprovider`: `c` (libc), `i` (ICU), `b` (builtin, 17+); `None` before 15, which
    /// has no providers.
    pub provider: Option<String>,
    /// The ICU or builtin locale (`daticulocale`, `datlocale` from 17).
    pub locale: Option<String>,
    /// `daticurules` (16+).
    pub icu_rules: Option<String>,
    pub connection_limit: i32,
    pub tablespace: String,
    pub is_template: bool,
    pub allow_connections: bool,
    /// `None`: the default ACL (owner all, PUBLIC CONNECT and TEMPORARY).
    pub acl: Option<Vec<Grant>>,
    pub comment: Option<String>,
    /// In `pg_db_role_setting` order.
    pub settings: Vec<Setting>,
    /// The roles the database's contents name (filled for a backup's properties line only).
    pub object_roles: ObjectRoles,
}

/// The roles a dump of the database names: as owners (`ALTER … OWNER TO`) and in grants,
/// default privileges and policies. A restore onto a server without them fails on the first
/// such statement; knowing them up front lets it say which before it starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectRoles {
    pub owners: Vec<String>,
    pub grantees: Vec<String>,
}

/// The roles the objects of the database `tools` connects to as `db` depend on: `pg_shdepend`
/// (owners `o`; grants, initial privileges and policies `a`, `i`, `r`), plus the bootstrap
/// superuser when it owns user objects (the catalog records no dependency on it).
pub fn object_roles(tools: &PgTools, db: &str) -> Result<ObjectRoles, DbError> {
    const SQL: &str = "SELECT DISTINCT r.rolname, d.deptype = 'o' FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid \
        WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND d.refclassid = 'pg_authid'::regclass \
        AND d.deptype IN ('o', 'a', 'i', 'r') \
        UNION SELECT rolname, true FROM pg_roles WHERE oid = 10 AND ( \
          EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relowner = 10 \
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%') \
          OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proowner = 10 \
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%') \
          OR EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspowner = 10 \
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname NOT LIKE 'pg\\_%')) \
        ORDER BY 1";
    let mut roles = ObjectRoles::default();
    for row in tools.query(db, SQL)? {
        let (Some(name), Some(owner)) = (row.first(), row.get(1)) else { continue };
        let list = if owner == "t" { &mut roles.owners } else { &mut roles.grantees };
        if !list.contains(name) {
            list.push(name.clone());
        }
    }
    Ok(roles)
}

/// The roles of `needed` this server lacks: (owners, others). `--no-owner` and
/// `--no-privileges` leave out the statements that would need them.
pub fn missing_roles(
    tools: &PgTools,
    admin_db: &str,
    needed: &ObjectRoles,
    no_owner: bool,
    no_privileges: bool,
) -> Result<(Vec<String>, Vec<String>), DbError> {
    if (needed.owners.is_empty() || no_owner) && (needed.grantees.is_empty() || no_privileges) {
        return Ok((Vec::new(), Vec::new()));
    }
    let have: Vec<String> = tools.query(admin_db, "SELECT rolname FROM pg_roles")?.into_iter().filter_map(|r| r.into_iter().next()).collect();
    let lacking = |list: &[String], skip: bool| -> Vec<String> {
        if skip {
            Vec::new()
        } else {
            list.iter().filter(|r| !have.contains(r)).cloned().collect()
        }
    };
    Ok((lacking(&needed.owners, no_owner), lacking(&needed.grantees, no_privileges)))
}

/// One privilege of a database's ACL.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// `None`: PUBLIC.
    pub grantee: Option<String>,
    /// As `aclexplode` names it: `CONNECT`, `CREATE`, `TEMPORARY`.
    pub privilege: String,
    pub grantable: bool,
}

/// One `name=value` item of `pg_db_role_setting.setconfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// `None`: for every role (`ALTER DATABASE … SET`).
    pub role: Option<String>,
    pub item: String,
}

/// `restore` options for a database that is created rather than kept.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `--no-owner`: a created database is the connecting role's, not the backup's owner's.
    pub no_owner: bool,
    /// `--no-privileges`: a created database gets the default ACL, not the backup's.
    pub no_privileges: bool,
    pub owner: Option<String>,
    pub encoding: Option<String>,
    /// A libc locale, for LC_COLLATE and LC_CTYPE.
    pub locale: Option<String>,
    pub tablespace: Option<String>,
    pub connection_limit: Option<i32>,
}

/// One property the restored database got, and where it came from (for the report).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyUsed {
    pub name: &'static str,
    pub value: String,
    pub from: String,
}

/// What the new database starts from.
#[derive(Debug, Clone)]
pub enum Base {
    /// The database being replaced: everything is kept.
    Existing(DbProps),
    /// A new database: template0's encoding, locale and tablespace, the connecting role as
    /// owner, the defaults for the rest.
    New { template0: DbProps, current_user: String },
    /// A new database, given the properties the backup carries where this server can take
    /// them: roles and tablespaces it lacks fall back to the new-database defaults, and a
    /// locale other than C/POSIX or template0's (which this server may not have) stays
    /// template0's, with the encoding that goes with it. Each fallback says so in its source.
    FromBackup {
        backup: Box<DbProps>,
        template0: DbProps,
        current_user: String,
        roles: Vec<String>,
        /// The roles the restoring role may make owner (itself and those it is a member of;
        /// every role for a superuser).
        can_own: Vec<String>,
        tablespaces: Vec<String>,
        /// `--no-owner`: the connecting role owns the database, as it owns the objects.
        no_owner: bool,
        /// `--no-privileges`: the default ACL, as the objects get theirs.
        no_privileges: bool,
    },
}

/// The properties the restored database gets.
#[derive(Debug, Clone)]
pub struct DbPlan {
    pub props: DbProps,
    pub used: Vec<PropertyUsed>,
    /// The after-load statements come from a backup, not from a database this server had: one
    /// the restoring role may not run (a per-role setting, a superuser-only setting) is left out
    /// and reported instead of failing the restore.
    pub best_effort: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot give the restored database {db} the properties of {target}: `{sql}` failed: {err} — {target} was not touched and {db} is dropped; restore as a role that may run it (see README, \"What role a restore needs\") or change it on {target} first")]
pub struct ApplyError {
    pub db: String,
    pub target: String,
    pub sql: String,
    pub err: DbError,
}

/// The first line of every backup ef-backup writes: a SQL comment (so `zcat | psql` and
/// every tool that reads the file as SQL ignore it) with the database's properties as JSON.
pub const HEADER_PREFIX: &str = "-- ef-backup database properties v1: ";
/// The longest properties line read back (a database's ACL and settings are small).
pub const HEADER_MAX: usize = 256 << 10;

/// `props` as the backup's first line, newline included.
pub fn header_line(props: &DbProps) -> String {
    let opt = |v: &Option<String>| v.as_ref().map_or(serde_json::Value::Null, |s| s.as_str().into());
    let json = serde_json::json!({
        "owner": props.owner,
        "encoding": props.encoding,
        "collate": props.collate,
        "ctype": props.ctype,
        "provider": opt(&props.provider),
        "locale": opt(&props.locale),
        "icu_rules": opt(&props.icu_rules),
        "connection_limit": props.connection_limit,
        "tablespace": props.tablespace,
        "is_template": props.is_template,
        "allow_connections": props.allow_connections,
        "acl": props.acl.as_ref().map(|acl| acl.iter().map(|g| serde_json::json!({
            "grantee": g.grantee, "privilege": g.privilege, "grantable": g.grantable})).collect::<Vec<_>>()),
        "comment": opt(&props.comment),
        "settings": props.settings.iter().map(|s| serde_json::json!({"role": s.role, "item": s.item})).collect::<Vec<_>>(),
        "object_roles": {"owners": props.object_roles.owners, "grantees": props.object_roles.grantees},
    });
    // serde_json escapes every control character: the JSON is one line.
    format!("{HEADER_PREFIX}{json}\n")
}

/// The properties in `first`, a backup's first line as read (at most [`HEADER_MAX`] bytes);
/// `None` when it is not ef-backup's properties line.
pub fn properties_of(first: &[u8]) -> Result<Option<DbProps>, String> {
    if !first.starts_with(HEADER_PREFIX.as_bytes()) {
        return Ok(None);
    }
    if !first.ends_with(b"\n") {
        return Err(format!("its database properties line is longer than {} KiB, which ef-backup never writes", HEADER_MAX >> 10));
    }
    let line = std::str::from_utf8(first).map_err(|_| "its database properties line is not UTF-8".to_string())?;
    parse_header(line)
}

/// The properties a backup's first line carries; `None` when it has no such line (backups of
/// earlier releases, plain dumps of other tools). A line that is there but unreadable is an
/// error: the backup was changed by hand or by something else.
pub fn parse_header(line: &str) -> Result<Option<DbProps>, String> {
    let Some(json) = line.strip_prefix(HEADER_PREFIX) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(json.trim_end()).map_err(|e| format!("its database properties line is not JSON ({e})"))?;
    let bad = |field: &str| format!("its database properties line has no valid {field:?}");
    let text = |field: &str| v.get(field).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| bad(field));
    let opt = |field: &str| match v.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x.as_str().map(|s| Some(s.to_string())).ok_or_else(|| bad(field)),
    };
    let flag = |field: &str| v.get(field).and_then(|x| x.as_bool()).ok_or_else(|| bad(field));
    let role = |x: &serde_json::Value, field: &str| match x.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(r) => r.as_str().map(|s| Some(s.to_string())).ok_or_else(|| bad(field)),
    };
    let acl = match v.get("acl") {
        None | Some(serde_json::Value::Null) => None,
        Some(list) => Some(
            list.as_array()
                .ok_or_else(|| bad("acl"))?
                .iter()
                .map(|g| {
                    Ok(Grant {
                        grantee: role(g, "grantee")?,
                        privilege: g.get("privilege").and_then(|p| p.as_str()).ok_or_else(|| bad("privilege"))?.to_string(),
                        grantable: g.get("grantable").and_then(|p| p.as_bool()).ok_or_else(|| bad("grantable"))?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    let settings = v
        .get("settings")
        .and_then(|x| x.as_array())
        .ok_or_else(|| bad("settings"))?
        .iter()
        .map(|s| Ok(Setting { role: role(s, "role")?, item: s.get("item").and_then(|i| i.as_str()).ok_or_else(|| bad("item"))?.to_string() }))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(DbProps {
        owner: text("owner")?,
        encoding: text("encoding")?,
        collate: text("collate")?,
        ctype: text("ctype")?,
        provider: opt("provider")?,
        locale: opt("locale")?,
        icu_rules: opt("icu_rules")?,
        connection_limit: v
            .get("connection_limit")
            .and_then(|x| x.as_i64())
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= -1)
            .ok_or_else(|| bad("connection_limit"))?,
        tablespace: text("tablespace")?,
        is_template: flag("is_template")?,
        allow_connections: flag("allow_connections")?,
        acl,
        comment: opt("comment")?,
        settings,
        object_roles: object_roles_of(&v).ok_or_else(|| bad("object_roles"))?,
    }))
}

/// `object_roles` of a properties line; absent is empty.
fn object_roles_of(v: &serde_json::Value) -> Option<ObjectRoles> {
    let Some(o) = v.get("object_roles") else { return Some(ObjectRoles::default()) };
    let names = |field: &str| -> Option<Vec<String>> { o.get(field)?.as_array()?.iter().map(|n| n.as_str().map(str::to_string)).collect() };
    Some(ObjectRoles { owners: names("owners")?, grantees: names("grantees")? })
}

/// The catalog query for one database's main properties; the version-dependent columns
/// (providers from 15, ICU rules from 16, `datlocale` from 17) read as empty before them.
pub fn props_query(server_major: u32, db: &str) -> String {
    let provider = if server_major >= 15 { "d.datlocprovider::text" } else { "''" };
    let locale = match server_major {
        17.. => "coalesce(d.datlocale, '')",
        15 | 16 => "coalesce(d.daticulocale, '')",
        _ => "''",
    };
    let rules = if server_major >= 16 { "coalesce(d.daticurules, '')" } else { "''" };
    format!(
        "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, {provider}, {locale}, {rules}, \
         d.datconnlimit, t.spcname, d.datistemplate, d.datallowconn, d.datacl IS NULL, coalesce(shobj_description(d.oid, 'pg_database'), '') \
         FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = {}",
        quote_literal(db)
    )
}

fn acl_query(db: &str) -> String {
    format!(
        "SELECT a.grantee = 0, coalesce(r.rolname, ''), a.privilege_type, a.is_grantable \
         FROM pg_database d, aclexplode(d.datacl) WITH ORDINALITY a(grantor, grantee, privilege_type, is_grantable, n) \
         LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE d.datname = {} AND (a.grantee = 0 OR r.oid IS NOT NULL) ORDER BY a.n",
        quote_literal(db)
    )
}

fn settings_query(db: &str) -> String {
    format!(
        "SELECT s.setrole = 0, coalesce(r.rolname, ''), c.v \
         FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole, \
         unnest(s.setconfig) WITH ORDINALITY c(v, n) WHERE d.datname = {} AND (s.setrole = 0 OR r.oid IS NOT NULL) ORDER BY s.setrole, c.n",
        quote_literal(db)
    )
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Turns the rows of [`props_query`], [`acl_query`] and [`settings_query`] into properties;
/// `None` when the database does not exist.
fn parse_props(main: &[Vec<String>], acl: &[Vec<String>], settings: &[Vec<String>]) -> Option<DbProps> {
    let row = main.first()?;
    let col = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
    let everyone = |row: &[String]| row.first().map(String::as_str) == Some("t");
    let role = |row: &[String]| if everyone(row) { None } else { row.get(1).cloned() };
    Some(DbProps {
        owner: col(0).into(),
        encoding: col(1).into(),
        collate: col(2).into(),
        ctype: col(3).into(),
        provider: non_empty(col(4)),
        locale: non_empty(col(5)),
        icu_rules: non_empty(col(6)),
        connection_limit: col(7).parse().unwrap_or(-1),
        tablespace: col(8).into(),
        is_template: col(9) == "t",
        allow_connections: col(10) == "t",
        acl: (col(11) != "t").then(|| {
            acl.iter()
                .map(|r| Grant {
                    grantee: role(r),
                    privilege: r.get(2).cloned().unwrap_or_default(),
                    grantable: r.get(3).map(String::as_str) == Some("t"),
                })
                .collect()
        }),
        comment: non_empty(col(12)),
        settings: settings.iter().map(|r| Setting { role: role(r), item: r.get(2).cloned().unwrap_or_default() }).collect(),
        object_roles: ObjectRoles::default(),
    })
}

/// Reads `db`'s properties; `None` when it does not exist.
pub fn read(tools: &PgTools, admin_db: &str, db: &str) -> Result<Option<DbProps>, DbError> {
    let main = tools.query(admin_db, &props_query(tools.server_major, db))?;
    if main.is_empty() {
        return Ok(None);
    }
    let acl = tools.query(admin_db, &acl_query(db))?;
    let settings = tools.query(admin_db, &settings_query(db))?;
    Ok(parse_props(&main, &acl, &settings))
}

/// What the restored database of `target` gets: the existing target's properties; for a new
/// one, those `from_backup` carries (see [`Base::FromBackup`]), else template0's and the
/// connecting role's; `opts` win in every case.
pub fn plan(
    tools: &PgTools,
    admin_db: &str,
    target: &str,
    exists: bool,
    opts: &CreateOptions,
    from_backup: Option<&DbProps>,
) -> Result<DbPlan, DbError> {
    let gone = |db: &str| DbError::Tool {
        tool: "psql".into(),
        detail: format!("database {db} is not in pg_database (dropped meanwhile?); run the restore again"),
    };
    let base = if exists {
        Base::Existing(read(tools, admin_db, target)?.ok_or_else(|| gone(target))?)
    } else {
        let template0 = read(tools, admin_db, "template0")?.ok_or_else(|| gone("template0"))?;
        let current_user = tools.query_value(admin_db, "SELECT current_user")?;
        match from_backup {
            None => Base::New { template0, current_user },
            Some(backup) => {
                let names = |sql: &str| -> Result<Vec<String>, DbError> {
                    Ok(tools.query(admin_db, sql)?.into_iter().filter_map(|r| r.into_iter().next()).collect())
                };
                let roles = names("SELECT rolname FROM pg_roles")?;
                let can_own = names("SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER')")?;
                let tablespaces = names("SELECT spcname FROM pg_tablespace")?;
                Base::FromBackup {
                    backup: Box::new(backup.clone()),
                    template0,
                    current_user,
                    roles,
                    can_own,
                    tablespaces,
                    no_owner: opts.no_owner,
                    no_privileges: opts.no_privileges,
                }
            }
        }
    };
    Ok(choose(base, opts))
}

/// Where each property of a new database comes from: owner, encoding, locale, tablespace,
/// connection limit.
const NEW_FROM: [&str; 5] = ["the connecting role", "template0's", "template0's", "template0's", "default"];

/// What a new database inherits from template0 (not its comment, ACL and template flags,
/// which are template0's own), owned by the connecting role.
fn new_database(template0: DbProps, current_user: String) -> DbProps {
    DbProps {
        owner: current_user,
        connection_limit: -1,
        is_template: false,
        allow_connections: true,
        acl: None,
        comment: None,
        settings: Vec::new(),
        ..template0
    }
}

/// The backup's properties on top of a new database's, where this server can take them.
/// `owner`: Ok to take the backup's owner, else why the connecting role keeps it. Also returns
/// what of the backup's could not be given (grants and settings of missing roles).
fn from_backup(
    backup: DbProps,
    new: DbProps,
    owner: Result<(), String>,
    roles: &[String],
    tablespaces: &[String],
) -> (DbProps, [String; 5], Vec<String>) {
    const BACKUP: &str = "the backup's";
    let mut from = NEW_FROM.map(String::from);
    let role_exists = |r: &Option<String>| r.as_ref().is_none_or(|r| roles.contains(r));
    let mut p = new;
    match owner {
        Ok(()) => {
            p.owner = backup.owner.clone();
            from[0] = BACKUP.into();
        }
        Err(why) => from[0] = why,
    }
    let portable = |l: &str| matches!(l, "C" | "POSIX" | "C.UTF-8" | "C.utf8");
    let same_locale = backup.collate == p.collate && backup.ctype == p.ctype && backup.provider == p.provider && backup.locale == p.locale;
    let libc_portable = backup.provider.as_deref().is_none_or(|x| x == "c") && portable(&backup.collate) && portable(&backup.ctype);
    if same_locale || libc_portable {
        p.encoding = backup.encoding.clone();
        p.collate = backup.collate.clone();
        p.ctype = backup.ctype.clone();
        p.provider = p.provider.as_ref().and(backup.provider.clone().or(Some("c".into())));
        p.locale = backup.locale.clone();
        p.icu_rules = backup.icu_rules.clone();
        from[1] = BACKUP.into();
        from[2] = BACKUP.into();
    } else {
        let was = format!("the backup's is {} with LC_COLLATE {}, LC_CTYPE {}", backup.encoding, backup.collate, backup.ctype);
        from[1] = format!("template0's ({was}: pass --encoding and --locale to have it, if this server has that locale)");
        from[2] = format!("template0's ({was})");
    }
    if tablespaces.contains(&backup.tablespace) {
        p.tablespace = backup.tablespace.clone();
        from[3] = BACKUP.into();
    } else {
        from[3] =
            format!("template0's: the backup's tablespace {:?} does not exist on this server (create it, or pass --tablespace)", backup.tablespace);
    }
    p.connection_limit = backup.connection_limit;
    from[4] = BACKUP.into();
    p.comment = backup.comment.clone();
    // Grants and settings of roles this server lacks cannot be given; the report lists them.
    let mut left_out = Vec::new();
    let (acl, settings) = (backup.acl, backup.settings);
    p.acl = acl.map(|acl| {
        let (ok, missing): (Vec<Grant>, Vec<Grant>) = acl.into_iter().partition(|g| role_exists(&g.grantee));
        left_out.extend(missing.iter().map(|g| format!("GRANT {} TO {}", g.privilege, g.grantee.as_deref().unwrap_or_default())));
        ok
    });
    let (ok, missing): (Vec<Setting>, Vec<Setting>) = settings.into_iter().partition(|s| role_exists(&s.role));
    // The setting's name only: its value may be a secret (`app.api_key=…`).
    let name = |item: &str| item.split('=').next().unwrap_or_default().to_string();
    left_out.extend(missing.iter().map(|s| format!("SET {} FOR ROLE {}", name(&s.item), s.role.as_deref().unwrap_or_default())));
    p.settings = ok;
    (p, from, left_out)
}

/// The properties the restored database gets, and where each came from.
pub fn choose(base: Base, opts: &CreateOptions) -> DbPlan {
    let best_effort = matches!(base, Base::FromBackup { .. });
    let (mut props, mut from, left_out) = match base {
        Base::Existing(p) => (p, ["kept from the replaced database"; 5].map(String::from), Vec::new()),
        Base::New { template0, current_user } => (new_database(template0, current_user), NEW_FROM.map(String::from), Vec::new()),
        Base::FromBackup { backup, template0, current_user, roles, can_own, tablespaces, no_owner, no_privileges } => {
            let backup = DbProps { acl: if no_privileges { None } else { backup.acl.clone() }, ..*backup };
            let new = new_database(template0, current_user);
            let owner = if no_owner {
                Err("the connecting role (--no-owner)".to_string())
            } else if !roles.contains(&backup.owner) {
                Err(format!(
                    "the connecting role: the backup's owner {:?} is not a role on this server — create it (the roles are in a globals \
                     backup) and restore again, or pass --owner",
                    backup.owner
                ))
            } else if !can_own.contains(&backup.owner) {
                Err(format!(
                    "the connecting role: the backup's owner {:?} exists, but {:?} may not make it the owner (it is not a member of it) — \
                     restore as that role or a member of it, or pass --owner",
                    backup.owner, new.owner
                ))
            } else {
                Ok(())
            };
            from_backup(backup, new, owner, &roles, &tablespaces)
        }
    };
    if let Some(o) = &opts.owner {
        props.owner = o.clone();
        from[0] = "--owner".into();
    }
    if let Some(e) = &opts.encoding {
        props.encoding = e.clone();
        from[1] = "--encoding".into();
    }
    if let Some(l) = &opts.locale {
        props.collate = l.clone();
        props.ctype = l.clone();
        // A libc locale: the ICU/builtin settings would contradict it.
        props.provider = props.provider.as_ref().map(|_| "c".to_string());
        props.locale = None;
        props.icu_rules = None;
        from[2] = "--locale".into();
    }
    if let Some(t) = &opts.tablespace {
        props.tablespace = t.clone();
        from[3] = "--tablespace".into();
    }
    if let Some(n) = opts.connection_limit {
        props.connection_limit = n;
        from[4] = "--connection-limit".into();
    }
    let provider = match (props.provider.as_deref(), &props.locale) {
        (Some("i"), Some(l)) => format!(", ICU locale {l}"),
        (Some("b"), Some(l)) => format!(", builtin locale {l}"),
        _ => String::new(),
    };
    let [owner, encoding, locale, tablespace, limit] = from;
    let mut used = vec![
        PropertyUsed { name: "owner", value: props.owner.clone(), from: owner },
        PropertyUsed { name: "encoding", value: props.encoding.clone(), from: encoding },
        PropertyUsed { name: "locale", value: format!("LC_COLLATE {}, LC_CTYPE {}{provider}", props.collate, props.ctype), from: locale },
        PropertyUsed { name: "tablespace", value: props.tablespace.clone(), from: tablespace },
        PropertyUsed {
            name: "connection limit",
            value: if props.connection_limit < 0 { "none".into() } else { props.connection_limit.to_string() },
            from: limit,
        },
    ];
    if !left_out.is_empty() {
        let value = left_out.join("; ");
        used.push(PropertyUsed { name: "left out", value, from: "the backup's, for roles this server does not have".into() });
    }
    DbPlan { props, used, best_effort }
}

/// The list variables whose values PostgreSQL stores element by element quoted (pg_dump's
/// `variable_is_guc_list_quote`).
const LIST_QUOTE_GUCS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// Splits a stored list value (`"$user", public`) into its elements the way pg_dump's
/// `SplitGUCList` does: double-quoted elements keep their case and collapse `""`, unquoted
/// ones end at a comma or space. `None` on a syntax error.
pub fn split_guc_list(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = value.trim_start();
    if rest.is_empty() {
        return Some(out);
    }
    loop {
        let element;
        if rest.starts_with('"') {
            (element, rest) = crate::db::unquote(rest, '"')?;
        } else {
            let end = rest.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            element = rest[..end].to_string();
            rest = &rest[end..];
        }
        out.push(element);
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if rest.is_empty() => return Some(out),
            None => return None,
        }
    }
}

/// `{prefix} SET name TO value` for one `name=value` setting item, quoted the way pg_dump's
/// `makeAlterConfigCommand` does; `None` for an item without `=`, which pg_dump skips too.
pub fn alter_config_sql(prefix: &str, item: &str) -> Option<String> {
    let (name, value) = item.split_once('=')?;
    let list = LIST_QUOTE_GUCS.iter().any(|g| g.eq_ignore_ascii_case(name));
    let elements = if list { split_guc_list(value).filter(|v| !v.is_empty()) } else { None };
    let value = match elements {
        Some(elements) => elements.iter().map(|e| quote_literal(e)).collect::<Vec<_>>().join(", "),
        None => quote_literal(value),
    };
    Some(format!("{prefix} SET {} TO {value}", quote_ident(name)))
}

/// The privileges `aclexplode` reports for a database; anything else is not emitted into SQL.
const DATABASE_PRIVILEGES: [&str; 3] = ["CONNECT", "CREATE", "TEMPORARY"];

impl DbPlan {
    /// `CREATE DATABASE name …` with the properties that can only be set at creation.
    pub fn create_sql(&self, name: &str) -> String {
        let p = &self.props;
        let mut sql = format!(
            "CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(name),
            quote_ident(&p.owner),
            quote_literal(&p.encoding),
            quote_literal(&p.collate),
            quote_literal(&p.ctype)
        );
        // From 15 the provider defaults to template0's, which may differ: always say it.
        match (p.provider.as_deref(), &p.locale) {
            (Some("i"), locale) => {
                sql += " LOCALE_PROVIDER icu";
                if let Some(l) = locale {
                    sql += &format!(" ICU_LOCALE {}", quote_literal(l));
                }
                if let Some(r) = &p.icu_rules {
                    sql += &format!(" ICU_RULES {}", quote_literal(r));
                }
            }
            (Some("b"), locale) => {
                sql += " LOCALE_PROVIDER builtin";
                if let Some(l) = locale {
                    sql += &format!(" BUILTIN_LOCALE {}", quote_literal(l));
                }
            }
            (Some(_), _) => sql += " LOCALE_PROVIDER libc",
            (None, _) => {}
        }
        // pg_default is where template0 lives, so the new database lands there anyway; naming it
        // would need CREATE on it, which a non-superuser with CREATEDB lacks.
        if p.tablespace != "pg_default" {
            sql += &format!(" TABLESPACE {}", quote_ident(&p.tablespace));
        }
        sql
    }

    /// The statements that give the loaded database `name` the rest of its properties. They
    /// run after the load because some would break it: `default_transaction_read_only`, a
    /// connection limit the load's sessions exceed, ALLOW_CONNECTIONS false.
    pub fn after_load_sql(&self, name: &str) -> Vec<String> {
        self.after_load(name).into_iter().map(|s| s.sql).collect()
    }

    /// [`DbPlan::after_load_sql`], each statement with how a report names it: without the
    /// (scratch) database's name, a setting's value or a comment's text (they may be secrets).
    fn after_load(&self, name: &str) -> Vec<Statement> {
        let p = &self.props;
        let db = format!(" {}", quote_ident(name));
        // A statement whose only part not to show is the database's name.
        let plain = |text: &dyn Fn(&str) -> String| Statement { sql: text(&db), what: text("") };
        let mut out: Vec<Statement> = p
            .settings
            .iter()
            .filter_map(|s| {
                let prefix = |on: &str| match &s.role {
                    None => format!("ALTER DATABASE{on}"),
                    Some(r) => format!("ALTER ROLE {} IN DATABASE{on}", quote_ident(r)),
                };
                let setting = s.item.split_once('=')?.0;
                Some(Statement { sql: alter_config_sql(&prefix(&db), &s.item)?, what: format!("{} SET {}", prefix(""), quote_ident(setting)) })
            })
            .collect();
        if let Some(c) = &p.comment {
            out.push(Statement { sql: format!("COMMENT ON DATABASE{db} IS {}", quote_literal(c)), what: "COMMENT ON DATABASE".into() });
        }
        if let Some(acl) = &p.acl {
            out.push(plain(&|on| format!("REVOKE ALL ON DATABASE{on} FROM PUBLIC")));
            out.push(plain(&|on| format!("REVOKE ALL ON DATABASE{on} FROM {}", quote_ident(&p.owner))));
            // One GRANT per grantee and grant option, in ACL order.
            let mut groups: Vec<(&Option<String>, bool, Vec<&str>)> = Vec::new();
            for g in acl.iter().filter(|g| DATABASE_PRIVILEGES.contains(&g.privilege.as_str())) {
                match groups.iter_mut().find(|(who, opt, _)| *who == &g.grantee && *opt == g.grantable) {
                    Some((_, _, privileges)) => privileges.push(&g.privilege),
                    None => groups.push((&g.grantee, g.grantable, vec![&g.privilege])),
                }
            }
            for (who, grantable, privileges) in groups {
                let who = who.as_deref().map(quote_ident).unwrap_or_else(|| "PUBLIC".into());
                let option = if grantable { " WITH GRANT OPTION" } else { "" };
                out.push(plain(&|on| format!("GRANT {} ON DATABASE{on} TO {who}{option}", privileges.join(", "))));
            }
        }
        if p.connection_limit != -1 {
            out.push(plain(&|on| format!("ALTER DATABASE{on} CONNECTION LIMIT {}", p.connection_limit)));
        }
        if !p.allow_connections {
            out.push(plain(&|on| format!("ALTER DATABASE{on} ALLOW_CONNECTIONS false")));
        }
        if p.is_template {
            out.push(plain(&|on| format!("ALTER DATABASE{on} IS_TEMPLATE true")));
        }
        out
    }

    /// Runs [`DbPlan::after_load_sql`] for the loaded database `name`, from `admin_db`. Returns
    /// the statements refused in a best-effort plan, described without their values.
    pub fn apply_after_load(&self, tools: &PgTools, admin_db: &str, name: &str, target: &str) -> Result<Vec<String>, ApplyError> {
        let mut refused = Vec::new();
        for Statement { sql, what } in self.after_load(name) {
            match tools.execute(admin_db, &sql) {
                Ok(()) => {}
                Err(err @ DbError::Sql { .. }) if self.best_effort => {
                    tracing::warn!("the restored database goes without the backup's `{what}`: {err}");
                    refused.push(what);
                }
                Err(err) => return Err(ApplyError { db: name.into(), target: target.into(), sql, err }),
            }
        }
        Ok(refused)
    }
}

/// One statement of [`DbPlan::after_load_sql`] and how a report names it.
struct Statement {
    sql: String,
    what: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &[&[&str]]) -> Vec<Vec<String>> {
        text.iter().map(|r| r.iter().map(|s| s.to_string()).collect()).collect()
    }

    fn libc_utf8() -> DbProps {
        DbProps {
            owner: "postgres".into(),
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            provider: Some("c".into()),
            connection_limit: -1,
            tablespace: "pg_default".into(),
            allow_connections: true,
            ..DbProps::default()
        }
    }

    #[test]
    fn the_catalog_query_follows_the_server_version() {
        // (server major, column expected, column that must not appear)
        let table = [
            (13, "''", "datlocprovider"),
            (14, "''", "daticulocale"),
            (15, "d.datlocprovider::text, coalesce(d.daticulocale, ''), ''", "datlocale,"),
            (16, "coalesce(d.daticulocale, ''), coalesce(d.daticurules, '')", "datlocale,"),
            (17, "coalesce(d.datlocale, ''), coalesce(d.daticurules, '')", "daticulocale"),
            (18, "coalesce(d.datlocale, '')", "daticulocale"),
        ];
        for (major, has, lacks) in table {
            let q = props_query(major, "it's");
            assert!(q.contains(has), "{major}: {q}");
            assert!(!q.contains(lacks), "{major}: {q}");
            assert!(q.ends_with("WHERE d.datname = 'it''s'"), "{q}");
        }
    }

    #[test]
    fn catalog_rows_become_properties() {
        let main = rows(&[&["app owner", "LATIN1", "C", "C", "c", "", "", "7", "ts one", "f", "t", "f", "the app's db"]]);
        let acl = rows(&[&["f", "app owner", "CONNECT", "f"], &["f", "app owner", "CREATE", "t"], &["f", "reader", "CONNECT", "f"]]);
        let settings = rows(&[&["t", "", "search_path=\"$user\", public"], &["f", "reader", "work_mem=64MB"]]);
        let p = parse_props(&main, &acl, &settings).unwrap();
        assert_eq!(p.owner, "app owner");
        assert_eq!((p.encoding.as_str(), p.provider.as_deref(), p.locale.as_deref()), ("LATIN1", Some("c"), None));
        assert_eq!((p.connection_limit, p.tablespace.as_str(), p.is_template, p.allow_connections), (7, "ts one", false, true));
        assert_eq!(p.comment.as_deref(), Some("the app's db"));
        let acl = p.acl.unwrap();
        assert_eq!(acl[1], Grant { grantee: Some("app owner".into()), privilege: "CREATE".into(), grantable: true });
        assert_eq!(p.settings[0], Setting { role: None, item: "search_path=\"$user\", public".into() });
        assert_eq!(p.settings[1].role.as_deref(), Some("reader"));

        let default_acl = rows(&[&["o", "UTF8", "C", "C", "", "", "", "-1", "pg_default", "t", "f", "t", ""]]);
        let p = parse_props(&default_acl, &[], &[]).unwrap();
        assert_eq!((p.acl, p.provider, p.comment, p.is_template, p.allow_connections), (None, None, None, true, false));
        assert!(parse_props(&[], &[], &[]).is_none());
    }

    #[test]
    fn guc_lists_split_like_pg_dump() {
        let table: &[(&str, Option<&[&str]>)] = &[
            ("\"$user\", public", Some(&["$user", "public"])),
            ("a,b , c", Some(&["a", "b", "c"])),
            ("\"My Schema\", \"q\"\"uote\"", Some(&["My Schema", "q\"uote"])),
            ("\"\"", Some(&[""])),
            ("", Some(&[])),
            ("  ", Some(&[])),
            ("Upper", Some(&["Upper"])),
            ("\"unterminated", None),
            ("a,,b", None),
            ("a b", None),
            ("a,", None),
        ];
        for (value, expected) in table {
            let got = split_guc_list(value);
            assert_eq!(got.as_deref().map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()), expected.map(|e| e.to_vec()), "{value:?}");
        }
    }

    #[test]
    fn settings_are_quoted_like_pg_dump() {
        let p = "ALTER DATABASE \"d\"";
        let table = [
            ("search_path=\"$user\", public", "ALTER DATABASE \"d\" SET \"search_path\" TO '$user', 'public'"),
            ("search_path=\"My Schema\"", "ALTER DATABASE \"d\" SET \"search_path\" TO 'My Schema'"),
            ("search_path=\"\"", "ALTER DATABASE \"d\" SET \"search_path\" TO ''"),
            ("SEARCH_PATH=a", "ALTER DATABASE \"d\" SET \"SEARCH_PATH\" TO 'a'"),
            ("temp_tablespaces=ts1, \"ts 2\"", "ALTER DATABASE \"d\" SET \"temp_tablespaces\" TO 'ts1', 'ts 2'"),
            ("session_preload_libraries=auto_explain", "ALTER DATABASE \"d\" SET \"session_preload_libraries\" TO 'auto_explain'"),
            ("default_transaction_read_only=on", "ALTER DATABASE \"d\" SET \"default_transaction_read_only\" TO 'on'"),
            // Not a list variable: the whole value is one literal, commas and all.
            ("DateStyle=ISO, MDY", "ALTER DATABASE \"d\" SET \"DateStyle\" TO 'ISO, MDY'"),
            ("app.note=it's = fine", "ALTER DATABASE \"d\" SET \"app.note\" TO 'it''s = fine'"),
            ("statement_timeout=5s", "ALTER DATABASE \"d\" SET \"statement_timeout\" TO '5s'"),
            // A list value that does not parse is kept whole rather than lost.
            ("search_path=\"broken", "ALTER DATABASE \"d\" SET \"search_path\" TO '\"broken'"),
        ];
        for (item, sql) in table {
            assert_eq!(alter_config_sql(p, item).as_deref(), Some(sql), "{item}");
        }
        assert_eq!(alter_config_sql(p, "no equals sign"), None);
    }

    #[test]
    fn create_statements_carry_the_create_time_properties() {
        let plan = |props: DbProps| DbPlan { props, used: Vec::new(), best_effort: false };
        let base = "CREATE DATABASE \"s\" TEMPLATE template0 OWNER \"postgres\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'";
        let table = [
            // pg_default is left out: naming it needs CREATE on it, which CREATEDB alone lacks.
            (libc_utf8(), format!("{base} LOCALE_PROVIDER libc")),
            (DbProps { provider: None, ..libc_utf8() }, base.to_string()),
            (
                DbProps { provider: Some("i".into()), locale: Some("de-DE".into()), icu_rules: Some("&a < b".into()), ..libc_utf8() },
                format!("{base} LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' ICU_RULES '&a < b'"),
            ),
            (
                DbProps { provider: Some("b".into()), locale: Some("C.UTF-8".into()), ..libc_utf8() },
                format!("{base} LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'"),
            ),
            (
                DbProps {
                    owner: "o\"wner".into(),
                    encoding: "LATIN1".into(),
                    collate: "de_DE'x".into(),
                    ctype: "C".into(),
                    tablespace: "my ts".into(),
                    connection_limit: 3,
                    ..libc_utf8()
                },
                "CREATE DATABASE \"s\" TEMPLATE template0 OWNER \"o\"\"wner\" ENCODING 'LATIN1' LC_COLLATE 'de_DE''x' LC_CTYPE 'C' \
                 LOCALE_PROVIDER libc TABLESPACE \"my ts\""
                    .to_string(),
            ),
        ];
        for (props, sql) in table {
            assert_eq!(plan(props).create_sql("s"), sql);
        }
    }

    #[test]
    fn after_load_statements_restore_settings_comment_acl_and_limits() {
        let grant = |who: Option<&str>, privilege: &str, grantable| Grant { grantee: who.map(String::from), privilege: privilege.into(), grantable };
        let props = DbProps {
            owner: "app".into(),
            settings: vec![
                Setting { role: None, item: "search_path=\"$user\", public".into() },
                Setting { role: Some("rep\"orter".into()), item: "work_mem=64MB".into() },
                Setting { role: None, item: "default_transaction_read_only=on".into() },
            ],
            comment: Some("it's ours".into()),
            acl: Some(vec![
                grant(Some("app"), "CREATE", false),
                grant(Some("app"), "TEMPORARY", false),
                grant(Some("app"), "CONNECT", false),
                grant(Some("reader"), "CONNECT", false),
                grant(Some("reader"), "CREATE", true),
                grant(None, "TEMPORARY", false),
                grant(None, "DROP TABLE x; --", false),
            ]),
            connection_limit: 5,
            allow_connections: false,
            is_template: true,
            ..libc_utf8()
        };
        let sql = DbPlan { props, used: Vec::new(), best_effort: false }.after_load_sql("s");
        assert_eq!(
            sql,
            [
                "ALTER DATABASE \"s\" SET \"search_path\" TO '$user', 'public'",
                "ALTER ROLE \"rep\"\"orter\" IN DATABASE \"s\" SET \"work_mem\" TO '64MB'",
                "ALTER DATABASE \"s\" SET \"default_transaction_read_only\" TO 'on'",
                "COMMENT ON DATABASE \"s\" IS 'it''s ours'",
                "REVOKE ALL ON DATABASE \"s\" FROM PUBLIC",
                "REVOKE ALL ON DATABASE \"s\" FROM \"app\"",
                "GRANT CREATE, TEMPORARY, CONNECT ON DATABASE \"s\" TO \"app\"",
                "GRANT CONNECT ON DATABASE \"s\" TO \"reader\"",
                "GRANT CREATE ON DATABASE \"s\" TO \"reader\" WITH GRANT OPTION",
                "GRANT TEMPORARY ON DATABASE \"s\" TO PUBLIC",
                "ALTER DATABASE \"s\" CONNECTION LIMIT 5",
                "ALTER DATABASE \"s\" ALLOW_CONNECTIONS false",
                "ALTER DATABASE \"s\" IS_TEMPLATE true",
            ]
        );
        // The defaults need nothing; an empty ACL (everything revoked) only revokes.
        assert!(DbPlan { props: libc_utf8(), used: Vec::new(), best_effort: false }.after_load_sql("s").is_empty());
        let revoked = DbPlan { props: DbProps { acl: Some(Vec::new()), ..libc_utf8() }, used: Vec::new(), best_effort: false }.after_load_sql("s");
        assert_eq!(revoked, ["REVOKE ALL ON DATABASE \"s\" FROM PUBLIC", "REVOKE ALL ON DATABASE \"s\" FROM \"postgres\""]);
    }

    #[test]
    fn a_new_database_takes_options_then_template0_and_says_which() {
        let template0 = DbProps {
            is_template: true,
            allow_connections: false,
            comment: Some("unmodifiable empty database".into()),
            acl: Some(vec![]),
            ..libc_utf8()
        };
        let new = || Base::New { template0: template0.clone(), current_user: "restorer".into() };
        let plan = choose(new(), &CreateOptions::default());
        assert_eq!(plan.props, DbProps { owner: "restorer".into(), ..libc_utf8() }, "template0's comment, ACL and flags are not a new database's");
        let from: Vec<(&str, &str)> = plan.used.iter().map(|u| (u.name, u.from.as_str())).collect();
        assert_eq!(
            from,
            [
                ("owner", "the connecting role"),
                ("encoding", "template0's"),
                ("locale", "template0's"),
                ("tablespace", "template0's"),
                ("connection limit", "default")
            ]
        );

        let opts = CreateOptions {
            owner: Some("app".into()),
            encoding: Some("LATIN1".into()),
            locale: Some("C".into()),
            tablespace: Some("fast".into()),
            connection_limit: Some(4),
            ..CreateOptions::default()
        };
        let icu = Base::New {
            template0: DbProps { provider: Some("i".into()), locale: Some("und".into()), ..template0.clone() },
            current_user: "r".into(),
        };
        let plan = choose(icu, &opts);
        assert_eq!((plan.props.provider.as_deref(), plan.props.locale.as_deref()), (Some("c"), None), "--locale is a libc locale");
        assert_eq!((plan.props.owner.as_str(), plan.props.encoding.as_str(), plan.props.connection_limit), ("app", "LATIN1", 4));
        let used: Vec<String> = plan.used.iter().map(|u| format!("{} {} ({})", u.name, u.value, u.from)).collect();
        assert_eq!(
            used,
            [
                "owner app (--owner)",
                "encoding LATIN1 (--encoding)",
                "locale LC_COLLATE C, LC_CTYPE C (--locale)",
                "tablespace fast (--tablespace)",
                "connection limit 4 (--connection-limit)"
            ]
        );

        let existing = DbProps { comment: Some("kept".into()), connection_limit: 9, ..libc_utf8() };
        let plan = choose(Base::Existing(existing.clone()), &CreateOptions { owner: Some("new".into()), ..CreateOptions::default() });
        assert_eq!(plan.props, DbProps { owner: "new".into(), ..existing });
        assert_eq!(plan.used[0].from, "--owner");
        assert!(plan.used[1..].iter().all(|u| u.from == "kept from the replaced database"), "{:?}", plan.used);
    }

    fn travelled() -> DbProps {
        DbProps {
            owner: "app".into(),
            encoding: "LATIN1".into(),
            connection_limit: 7,
            tablespace: "fast".into(),
            acl: Some(vec![
                Grant { grantee: None, privilege: "TEMPORARY".into(), grantable: false },
                Grant { grantee: Some("reader".into()), privilege: "CONNECT".into(), grantable: true },
                Grant { grantee: Some("gone".into()), privilege: "CONNECT".into(), grantable: false },
            ]),
            comment: Some("line one\nline \"two\" ü".into()),
            settings: vec![
                Setting { role: None, item: "search_path=\"$user\", public".into() },
                Setting { role: Some("gone".into()), item: "work_mem=3MB".into() },
            ],
            object_roles: ObjectRoles { owners: vec!["app".into(), "odd \"name\"".into()], grantees: vec!["reader".into()] },
            ..libc_utf8()
        }
    }

    #[test]
    fn the_properties_line_round_trips_and_is_one_line() {
        for props in [travelled(), libc_utf8(), DbProps { provider: None, locale: Some("und".into()), icu_rules: Some("&a<b".into()), ..travelled() }]
        {
            let line = header_line(&props);
            assert!(line.starts_with(HEADER_PREFIX) && line.ends_with('\n') && line.matches('\n').count() == 1, "{line}");
            assert_eq!(parse_header(&line).unwrap(), Some(props));
        }
        assert_eq!(parse_header("--\n").unwrap(), None, "a dump without the line");
        assert_eq!(properties_of(b"--\n").unwrap(), None);
        // (Built from the JSON, not by editing the text: the key order depends on serde_json's
        // features, which the workspace's other crates may switch on.)
        let mut v: serde_json::Value = serde_json::from_str(header_line(&libc_utf8()).strip_prefix(HEADER_PREFIX).unwrap().trim_end()).unwrap();
        v.as_object_mut().unwrap().remove("object_roles");
        let without_roles = format!("{HEADER_PREFIX}{v}\n");
        assert!(!without_roles.contains("object_roles"), "{without_roles}");
        assert_eq!(properties_of(without_roles.as_bytes()).unwrap(), Some(libc_utf8()), "a line without the roles reads as none");
        let line = header_line(&travelled());
        assert_eq!(properties_of(line.as_bytes()).unwrap(), Some(travelled()));
        let cut = &line.as_bytes()[..line.len() - 1];
        assert!(properties_of(cut).unwrap_err().contains("longer than 256 KiB"), "a line without its end is refused");
        let negative = line.replace("\"connection_limit\":7", "\"connection_limit\":-5");
        assert!(properties_of(negative.as_bytes()).is_err(), "{negative}");
        for bad in ["{", "{}", r#"{"owner": 1}"#, "[]"] {
            let err = parse_header(&format!("{HEADER_PREFIX}{bad}\n")).unwrap_err();
            assert!(err.contains("database properties line"), "{bad}: {err}");
        }
    }

    #[test]
    fn refused_statements_are_described_without_their_values() {
        // A comment and a role name that read like the statements' own words.
        let comment = Some("secret note SET x TO y IS z".into());
        let settings = vec![Setting { role: Some("gone SET a TO".into()), item: "work_mem=3MB".into() }];
        let plan = DbPlan { props: DbProps { comment, ..travelled() }, used: Vec::new(), best_effort: true };
        let mut described: Vec<String> = plan.after_load("scratch_1").into_iter().map(|s| s.what).collect();
        let odd = DbPlan { props: DbProps { settings, ..travelled() }, used: Vec::new(), best_effort: true };
        described.extend(odd.after_load("scratch_1").into_iter().map(|s| s.what));
        for d in &described {
            assert!(!d.contains("scratch_1") && !d.contains("secret") && !d.contains("$user") && !d.contains("3MB"), "{d}");
        }
        assert!(described.contains(&"ALTER ROLE \"gone\" IN DATABASE SET \"work_mem\"".to_string()), "{described:?}");
        assert!(described.contains(&"COMMENT ON DATABASE".to_string()), "{described:?}");
        assert!(described.contains(&"ALTER ROLE \"gone SET a TO\" IN DATABASE SET \"work_mem\"".to_string()), "{described:?}");
    }

    #[test]
    fn a_new_database_takes_what_this_server_can_give_of_the_backups_properties() {
        let template0 = DbProps { collate: "en_US.UTF-8".into(), ctype: "en_US.UTF-8".into(), ..libc_utf8() };
        let base = |backup: DbProps, roles: &[&str], tablespaces: &[&str]| Base::FromBackup {
            backup: Box::new(backup),
            template0: template0.clone(),
            current_user: "restorer".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            can_own: roles.iter().map(|r| r.to_string()).collect(),
            tablespaces: tablespaces.iter().map(|t| t.to_string()).collect(),
            no_owner: false,
            no_privileges: false,
        };
        // Everything there: the backup's properties, each said to be the backup's.
        let plan = choose(base(travelled(), &["app", "reader", "gone"], &["pg_default", "fast"]), &CreateOptions::default());
        assert_eq!(plan.props, DbProps { is_template: false, object_roles: ObjectRoles::default(), ..travelled() });
        assert!(plan.used.iter().all(|u| u.from == "the backup's"), "{:?}", plan.used);

        // No owner role, no tablespace, a grantee and a per-role setting missing: those fall
        // back (and say why); what this server can take is still given.
        let plan = choose(base(travelled(), &["reader"], &["pg_default"]), &CreateOptions::default());
        assert_eq!(plan.props.owner, "restorer");
        assert!(plan.used[0].from.contains("the backup's owner \"app\" is not a role on this server"), "{}", plan.used[0].from);
        assert_eq!(plan.props.tablespace, "pg_default");
        assert!(plan.used[3].from.contains("tablespace \"fast\" does not exist"), "{}", plan.used[3].from);
        assert_eq!(plan.props.acl.as_ref().map(|a| a.len()), Some(2), "PUBLIC and reader stay");
        assert_eq!(plan.props.settings.len(), 1, "the database-wide setting stays");
        assert_eq!(plan.props.comment, travelled().comment);
        assert_eq!(plan.props.connection_limit, 7);
        let left = plan.used.iter().find(|u| u.name == "left out").expect("the report lists what was left out");
        assert_eq!(left.value, "GRANT CONNECT TO gone; SET work_mem FOR ROLE gone", "setting values are not shown");

        // A locale this server may lack stays template0's, with its encoding.
        let de = DbProps { collate: "de_DE.ISO-8859-1".into(), ctype: "de_DE.ISO-8859-1".into(), ..travelled() };
        let plan = choose(base(de, &["app", "reader", "gone"], &["fast"]), &CreateOptions::default());
        assert_eq!((plan.props.encoding.as_str(), plan.props.collate.as_str()), ("UTF8", "en_US.UTF-8"));
        assert!(
            plan.used[1].from.contains("LATIN1 with LC_COLLATE de_DE.ISO-8859-1") && plan.used[1].from.contains("--locale"),
            "{}",
            plan.used[1].from
        );

        // An owner the restoring role may not give the database to (not a member of it), and
        // --no-owner / --no-privileges: the connecting role, the default ACL.
        let not_member = match base(travelled(), &["app", "reader", "gone"], &["fast"]) {
            Base::FromBackup { backup, template0, current_user, roles, tablespaces, .. } => Base::FromBackup {
                backup,
                template0,
                current_user,
                roles,
                can_own: vec!["restorer".into()],
                tablespaces,
                no_owner: false,
                no_privileges: false,
            },
            _ => unreachable!(),
        };
        let plan = choose(not_member, &CreateOptions::default());
        assert_eq!(plan.props.owner, "restorer");
        assert!(plan.used[0].from.contains("may not make it the owner (it is not a member of it)"), "{}", plan.used[0].from);
        let flags = CreateOptions { no_owner: true, no_privileges: true, ..CreateOptions::default() };
        let with_flags = match base(travelled(), &["app", "reader", "gone"], &["fast"]) {
            Base::FromBackup { backup, template0, current_user, roles, can_own, tablespaces, .. } => {
                Base::FromBackup { backup, template0, current_user, roles, can_own, tablespaces, no_owner: true, no_privileges: true }
            }
            _ => unreachable!(),
        };
        let plan = choose(with_flags, &flags);
        assert_eq!((plan.props.owner.as_str(), plan.used[0].from.as_str()), ("restorer", "the connecting role (--no-owner)"));
        assert_eq!(plan.props.acl, None, "--no-privileges: the default ACL");
        assert!(plan.best_effort, "a plan from a backup applies its statements best-effort");

        // Options still win.
        let plan = choose(base(travelled(), &["app"], &["fast"]), &CreateOptions { owner: Some("other".into()), ..CreateOptions::default() });
        assert_eq!((plan.props.owner.as_str(), plan.used[0].from.as_str()), ("other", "--owner"));
    }
}
