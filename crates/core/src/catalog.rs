//! What is in the stores, as the policy sees it: the backups it recognises (newest first) and
//! how many other files sit beside them, per store. `list`, `verify` (its default: the newest)
//! and a dashboard read the same answer.

use crate::codec::Format;
use crate::config::Config;
use crate::model::{BackupEntry, NameInfo, PolicyConfig, Target};
use crate::policy::{Policy, PolicyError};
use crate::store::{BackupStore, StoredBackup};

/// A listed backup the policy recognises, with what its name says (database, kind, run time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    pub backup: StoredBackup,
    pub info: NameInfo,
}

/// The backups among `listing` that the policy recognises, newest first (by the time in the
/// name, then by name).
pub fn recognised(policy: &dyn Policy, config: &PolicyConfig, listing: &[StoredBackup]) -> Result<Vec<Recognised>, PolicyError> {
    let entries: Vec<BackupEntry> = listing.iter().map(BackupEntry::from).collect();
    let mut out: Vec<Recognised> = policy
        .recognise(config, &entries)?
        .into_iter()
        .map(|(e, info)| {
            let manifest = listing.iter().any(|l| l.name == e.name && l.manifest);
            Recognised { backup: StoredBackup { name: e.name, size_bytes: e.size_bytes, modified: e.modified, manifest }, info }
        })
        .collect();
    out.sort_by(|a, b| b.info.run_at.cmp(&a.info.run_at).then_with(|| b.backup.name.cmp(&a.backup.name)));
    Ok(out)
}

/// One store's backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Directory path or `s3://bucket/prefix`.
    pub location: String,
    pub target: Target,
    /// This deployment's backups, newest first.
    pub backups: Vec<Recognised>,
    /// Other files of a backup format there, which this deployment leaves alone.
    pub foreign: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{location}: could not be listed: {err}")]
    List { location: String, err: String },
    #[error("no backups in {location} (run `ef-backup backup` first)")]
    Empty { location: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Lists one store as the policy sees it; warns about names of the original's that no longer
/// belong to this deployment ([`legacy_notice`]).
pub fn place(policy: &dyn Policy, config: &Config, store: &dyn BackupStore, location: &str) -> Result<Place, CatalogError> {
    let listing = store.list_backups().map_err(|err| CatalogError::List { location: location.to_string(), err })?;
    warn_legacy_names(policy, config, location, &listing);
    let backups = recognised(policy, &config.policy, &listing)?;
    Ok(Place { location: location.to_string(), target: store.target(), foreign: listing.len() - backups.len(), backups })
}

/// The newest backup of this deployment in a store: what `verify` checks when it is given none.
pub fn newest(policy: &dyn Policy, config: &Config, store: &dyn BackupStore, location: &str) -> Result<Recognised, CatalogError> {
    let listing = store.list_backups().map_err(|err| CatalogError::List { location: location.to_string(), err })?;
    // A database's dump: the globals are no database to verify.
    let dumps = recognised(policy, &config.policy, &listing)?.into_iter().filter(|r| r.info.kind == crate::model::BackupKind::Database);
    dumps.into_iter().next().ok_or_else(|| CatalogError::Empty { location: location.to_string() })
}

/// The original service named every backup `euraflow_backup_…`, whatever its database.
pub const LEGACY_PREFIX: &str = "euraflow_backup_";

/// What to tell the operator when `listing` holds files with the original's names that the
/// policy does not recognise: since names carry the database, a deployment of another database
/// no longer manages them, and they must not be orphaned silently. None when there are none.
pub fn legacy_notice(policy: &dyn Policy, config: &Config, place: &str, listing: &[StoredBackup]) -> Option<String> {
    let legacy: Vec<BackupEntry> = listing
        .iter()
        .filter(|b| b.name.starts_with(LEGACY_PREFIX) && Format::of_name(&b.name) == Some(Format::GZIP))
        .map(BackupEntry::from)
        .collect();
    if legacy.is_empty() {
        return None;
    }
    let pc = &config.policy;
    let recognised = policy.recognise(pc, &legacy).map(|r| r.len()).unwrap_or(0);
    let unmanaged = legacy.len() - recognised;
    if unmanaged == 0 {
        return None;
    }
    // The rename target: the policy's own name, less its `YYYYMMDD_HHMMSS.sql.gz`.
    let rename = policy
        .backup_name(pc, 0)
        .ok()
        .filter(|_| !place.starts_with("s3://"))
        .and_then(|n| {
            let cut = n.len().checked_sub("YYYYMMDD_HHMMSS.sql.gz".len())?;
            let stamp = n.get(cut..)?;
            stamp.bytes().take(15).all(|c| c.is_ascii_digit() || c == b'_').then(|| n[..cut].to_string())
        })
        .filter(|prefix| prefix.ends_with("_backup_") && prefix != LEGACY_PREFIX)
        .map(|prefix| {
            format!(
                ", or rename them to this deployment's names: `cd {place} && for f in {LEGACY_PREFIX}*.sql.gz; do mv -n \"$f\" \
                 \"{prefix}${{f#{LEGACY_PREFIX}}}\"; done`"
            )
        })
        .unwrap_or_default();
    Some(format!(
        "{unmanaged} backup(s) named {LEGACY_PREFIX}*.sql.gz in {place} are not managed by this deployment (database {db:?}): \
         backup names now carry the database, so they are not listed, counted, verified or deleted here. If they are backups \
         of {db:?} made before the rename, set EF__POLICY_LEGACY_PREFIX=euraflow so this deployment manages them again{rename}. \
         If they belong to a deployment of the database \"euraflow\", leave them: that one manages them",
        db = config.db.name
    ))
}

/// Logs [`legacy_notice`] for the backup directory (start-up of `serve`, `list`).
pub fn warn_legacy_names(policy: &dyn Policy, config: &Config, place: &str, listing: &[StoredBackup]) {
    if let Some(notice) = legacy_notice(policy, config, place, listing) {
        tracing::warn!("{notice}");
    }
}

/// The globals backup of the run `dump` (a database's backup listed in `listing`) belongs to:
/// its name, when the policy recognises one of the same run beside it. Tried under this
/// deployment's label first, then under each label a globals name there carries (a restore on
/// a new server does not know the old server's): the policy decides what a name is.
pub fn globals_of_run(policy: &dyn Policy, view: &PolicyConfig, listing: &[StoredBackup], dump: &str) -> Option<String> {
    let mut labels: Vec<Option<String>> = vec![view.globals_label.clone()];
    for b in listing {
        if let Some((label, _)) = b.name.split_once("_globals_") {
            if !labels.iter().any(|l| l.as_deref() == Some(label)) {
                labels.push(Some(label.to_string()));
            }
        }
    }
    for label in labels {
        let v = PolicyConfig { globals_label: label, ..view.clone() };
        let Ok(Some(info)) = policy.parse_name(&v, dump) else { continue };
        let found = recognised(policy, &v, listing)
            .ok()?
            .into_iter()
            .find(|r| r.info.kind == crate::model::BackupKind::Globals && r.info.run_at == info.run_at);
        if let Some(g) = found {
            return Some(g.backup.name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::policy::native::NativePolicy;
    use crate::store::memory::MemoryStore;

    fn config() -> Config {
        let vars: BTreeMap<String, String> = [("EF__DB_NAME", "app")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_vars(&vars, std::path::Path::new("/srv")).unwrap()
    }

    fn store(names: &[(&str, i64)]) -> MemoryStore {
        let s = MemoryStore::new(Target::S3);
        for (n, t) in names {
            s.put(n, b"x", *t);
        }
        s
    }

    #[test]
    fn a_place_lists_this_deployments_backups_newest_first_and_counts_the_rest() {
        // The time in the name orders them, not the modification time.
        let s = store(&[("app_backup_300.sql.gz", 1), ("app_backup_100.sql.gz", 3), ("app_backup_200.sql.gz", 2), ("db_backup_999.sql.gz", 9)]);
        let place = place(&NativePolicy::keeping(1), &config(), &s, "memory://s3/").unwrap();
        let names: Vec<(&str, i64)> = place.backups.iter().map(|r| (r.backup.name.as_str(), r.info.run_at)).collect();
        assert_eq!(names, [("app_backup_300.sql.gz", 300), ("app_backup_200.sql.gz", 200), ("app_backup_100.sql.gz", 100)]);
        assert_eq!(place.foreign, 1);
        assert_eq!(place.target, Target::S3);
        assert_eq!(newest(&NativePolicy::keeping(1), &config(), &s, "here").unwrap().backup.name, "app_backup_300.sql.gz");
    }

    #[test]
    fn an_unlistable_or_empty_store_is_an_error_that_names_it() {
        let s = store(&[("db_backup_1.sql.gz", 1)]);
        let e = newest(&NativePolicy::keeping(1), &config(), &s, "memory://s3/").unwrap_err();
        assert!(matches!(&e, CatalogError::Empty { location } if location == "memory://s3/"), "{e}");
        s.fail_list.store(true, Ordering::SeqCst);
        let e = place(&NativePolicy::keeping(1), &config(), &s, "memory://s3/").unwrap_err();
        assert!(matches!(e, CatalogError::List { .. }), "{e}");
        assert!(e.to_string().starts_with("memory://s3/: could not be listed: listing the s3 store failed"), "{e}");
    }

    #[test]
    fn equal_times_order_by_name() {
        let s = store(&[("app_backup_5.sql.gz", 1), ("app_backup_05.sql.gz", 1)]);
        let place = place(&NativePolicy::keeping(1), &config(), &s, "x").unwrap();
        assert_eq!(place.backups[0].backup.name, "app_backup_5.sql.gz");
        assert_eq!(place.backups[1].backup.name, "app_backup_05.sql.gz");
    }

    #[test]
    fn the_globals_of_a_dumps_run_are_found_under_whatever_label_they_carry() {
        let policy = crate::policy::native::NativePolicy::keeping(1);
        let listing: Vec<StoredBackup> =
            ["app_backup_100.sql.gz", "app_backup_200.sql.gz", "pgold-1_globals_100.sql.gz", "pgold-1_globals_300.sql.gz"]
                .iter()
                .map(|n| StoredBackup { name: n.to_string(), size_bytes: 1, modified: 0, manifest: false })
                .collect();
        let view = PolicyConfig {
            database: "app".into(),
            databases: vec!["app".into()],
            globals_label: Some("pgnew-2".into()),
            backup_dir: String::new(),
            s3: None,
            settings: vec![],
            format: crate::codec::Format::GZIP,
        };
        assert_eq!(globals_of_run(&policy, &view, &listing, "app_backup_100.sql.gz").as_deref(), Some("pgold-1_globals_100.sql.gz"));
        assert_eq!(globals_of_run(&policy, &view, &listing, "app_backup_200.sql.gz"), None, "no globals of that run");
        assert_eq!(globals_of_run(&policy, &view, &listing, "other_backup_100.sql.gz"), None, "not a dump of ours");
    }
}
