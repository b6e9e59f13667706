//! Where restore drills run. By default on a throwaway PostgreSQL that ef-backup starts itself
//! (initdb as `EF__DRILL_OS_USER` into a temporary directory, a private socket); with
//! `EF__DRILL_DB_HOST` on a separate drill server instead. Never the production server: a drill
//! runs the backup's SQL.

use super::{ConfigError, DbConfig, Secret, Vars};

/// A user of its own, not `postgres`: the drill server's superuser can run programs as this
/// user (`COPY … FROM PROGRAM` in a crafted backup), and as `postgres` that would reach a
/// production server's data directory on the same host.
pub const DEFAULT_OS_USER: &str = "ef-drill";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillPlace {
    /// `initdb` and `postgres` of the backup's major version, run as this OS user when
    /// ef-backup runs as root (they refuse root).
    Throwaway { os_user: String },
    /// `EF__DRILL_DB_HOST`, `_PORT` (5432), `_USER` (postgres), `_PASSWORD`; the database
    /// sessions connect to first is `postgres`.
    Server(DbConfig),
}

pub(super) fn parse(v: &Vars<'_>, production: &DbConfig) -> Result<DrillPlace, ConfigError> {
    let Some(host) = v.get("EF__DRILL_DB_HOST").map(str::trim) else {
        return Ok(DrillPlace::Throwaway { os_user: v.string("EF__DRILL_OS_USER", DEFAULT_OS_USER) });
    };
    let port = v.number("EF__DRILL_DB_PORT", 5432u16, 1, 65535)?;
    if host == production.host && port == production.port {
        return Err(ConfigError::Invalid {
            var: "EF__DRILL_DB_HOST",
            reason: format!(
                "{host}:{port} is the production server (EF__DB_HOST, EF__DB_PORT): a drill runs the backup's SQL, so it needs a server of its own; unset it to drill on a throwaway server ef-backup starts itself"
            ),
        });
    }
    Ok(DrillPlace::Server(DbConfig {
        host: host.to_string(),
        port,
        name: "postgres".into(),
        user: v.string("EF__DRILL_DB_USER", "postgres"),
        password: v.get("EF__DRILL_DB_PASSWORD").map(Secret::new),
    }))
}
