//! `restore --all`: which set to restore onto a new server. A set is the files of one run (they
//! share the run's time): the globals and the dump of every database the run backed up, which
//! the globals backup lists in its first line. The newest complete set is the default.

use std::io::BufRead;

use crate::catalog::{recognised, Recognised};
use crate::model::{BackupKind, PolicyConfig};
use crate::policy::{Policy, PolicyError};
use crate::store::StoredBackup;

use super::globals::{parse_header, GlobalsHeader};
use super::{RestoreError, Source};

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no globals backup of this deployment in {location} (globals label {label:?}){seen} — restore --all starts from a run's globals backup: pass --label with the label of the server the backups came from (EF__DEPLOYMENT_NAME, or `pg` and its system identifier, as in the globals backups' names)")]
    NoGlobals { location: String, label: String, seen: String },
    #[error("no set of {location} was taken at {at} (the times of the sets there: {times}); `ef-backup list` shows them")]
    NoSuchSet { location: String, at: i64, times: String },
    #[error("the set taken at {at} in {location} is incomplete: no backup of {missing} (the run failed for it, or it was deleted){older}")]
    Incomplete { location: String, at: i64, missing: String, older: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Read(#[from] Box<RestoreError>),
}

impl From<RestoreError> for SetError {
    fn from(e: RestoreError) -> SetError {
        SetError::Read(Box::new(e))
    }
}

/// One run's files.
#[derive(Debug, Clone)]
pub struct Set {
    pub run_at: i64,
    pub globals: Recognised,
    pub header: Option<GlobalsHeader>,
    /// The dumps, in the order of the run's database list.
    pub dumps: Vec<Recognised>,
}

/// The globals backup's first line, read without reading the rest.
pub fn header_of(source: &Source) -> Result<Option<GlobalsHeader>, RestoreError> {
    let mut first = Vec::new();
    let mut reader = std::io::BufReader::new(source.decoded()?);
    std::io::Read::take(&mut reader, 1 << 20).read_until(b'\n', &mut first).map_err(|e| super::corrupt(source, e))?;
    parse_header(&first).map_err(|r| super::damaged(source, r))
}

/// The set to restore from `listing` (one store, `location`): the one taken at `at`, or the
/// newest complete one. `view` names the deployment's databases (may be empty for `*`) and
/// the globals' label; `open` opens a listed backup.
pub fn choose(
    policy: &dyn Policy,
    view: &PolicyConfig,
    listing: &[StoredBackup],
    location: &str,
    at: Option<i64>,
    open: &dyn Fn(&str) -> Source,
) -> Result<Set, SetError> {
    let label = view.globals_label.clone().unwrap_or_default();
    let globals: Vec<Recognised> = recognised(policy, view, listing)?.into_iter().filter(|r| r.info.kind == BackupKind::Globals).collect();
    if globals.is_empty() {
        // Only a hint for the message: labels of names that look like globals backups.
        let mut seen: Vec<&str> = listing.iter().filter_map(|b| b.name.split_once("_globals_").map(|(l, _)| l)).collect();
        seen.sort_unstable();
        seen.dedup();
        let seen = if seen.is_empty() { String::new() } else { format!("; globals backups there are labelled {}", seen.join(", ")) };
        return Err(SetError::NoGlobals { location: location.into(), label, seen });
    }
    let candidates: Vec<&Recognised> = match at {
        Some(t) => {
            let found: Vec<&Recognised> = globals.iter().filter(|g| g.info.run_at == t).collect();
            if found.is_empty() {
                let times: Vec<String> = globals.iter().map(|g| g.info.run_at.to_string()).collect();
                return Err(SetError::NoSuchSet { location: location.into(), at: t, times: times.join(", ") });
            }
            found
        }
        None => globals.iter().collect(),
    };
    let mut first_incomplete: Option<(i64, String)> = None;
    for g in candidates {
        let header = header_of(&open(&g.backup.name))?;
        // The run's databases as its globals backup lists them, else as configured.
        let databases = header.as_ref().map_or_else(|| view.databases.clone(), |h| h.databases.clone());
        let set_view = PolicyConfig { databases: databases.clone(), ..view.clone() };
        let ours = recognised(policy, &set_view, listing)?;
        let mut dumps = Vec::new();
        let mut missing = Vec::new();
        for db in &databases {
            match ours.iter().find(|r| r.info.kind == BackupKind::Database && &r.info.database == db && r.info.run_at == g.info.run_at) {
                Some(r) => dumps.push(r.clone()),
                None => missing.push(format!("{db:?}")),
            }
        }
        if missing.is_empty() {
            return Ok(Set { run_at: g.info.run_at, globals: g.clone(), header, dumps });
        }
        first_incomplete.get_or_insert((g.info.run_at, missing.join(", ")));
    }
    let (at_time, missing) = first_incomplete.unwrap_or_default();
    let older = if at.is_some() { String::new() } else { "; no older set is complete either".to_string() };
    Err(SetError::Incomplete { location: location.into(), at: at_time, missing, older })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::native::NativePolicy;

    /// A backup directory: globals under `srv` with their run's database list, and dumps.
    fn dir(globals: &[(i64, &[&str])], dumps: &[(&str, i64)]) -> (tempfile::TempDir, Vec<StoredBackup>) {
        let d = tempfile::tempdir().unwrap();
        let mut listing = Vec::new();
        let mut put = |name: String, text: String| {
            let settings = crate::codec::EncodeSettings { level: 1, threads: 1, recipients: Default::default() };
            let mut enc = crate::codec::Format::GZIP.encoder(Vec::new(), &settings, Default::default()).unwrap();
            std::io::Write::write_all(&mut enc, text.as_bytes()).unwrap();
            std::fs::write(d.path().join(&name), enc.finish().unwrap()).unwrap();
            listing.push(StoredBackup { name, size_bytes: 1, modified: 0, manifest: false });
        };
        for (t, dbs) in globals {
            let header = GlobalsHeader { databases: dbs.iter().map(|s| s.to_string()).collect(), passwords: true };
            put(format!("srv_globals_{t}.sql.gz"), super::super::globals::header_line(&header));
        }
        for (db, t) in dumps {
            put(format!("{db}_backup_{t}.sql.gz"), "--\n".into());
        }
        (d, listing)
    }

    fn view(label: &str) -> PolicyConfig {
        PolicyConfig {
            database: "a".into(),
            databases: vec!["a".into()],
            globals_label: Some(label.into()),
            backup_dir: String::new(),
            s3: None,
            settings: vec![],
            format: crate::codec::Format::GZIP,
        }
    }

    #[test]
    fn the_newest_complete_set_or_the_one_asked_for() {
        let policy = NativePolicy::keeping(1);
        // Run 100 backed up a and b, but b's dump is gone; run 50 is whole.
        let (d, listing) = dir(&[(100, &["a", "b"]), (50, &["a", "b"])], &[("a", 100), ("a", 50), ("b", 50)]);
        let open = |name: &str| Source::file(d.path().join(name), &crate::codec::Keys::none());
        let choose_at = |at| choose(&policy, &view("srv"), &listing, "here", at, &open);

        let set = choose_at(None).unwrap();
        assert_eq!(set.run_at, 50, "100 is incomplete");
        assert_eq!(set.dumps.iter().map(|r| r.backup.name.as_str()).collect::<Vec<_>>(), ["a_backup_50.sql.gz", "b_backup_50.sql.gz"]);
        assert_eq!(set.header.unwrap().databases, ["a", "b"], "the run's list, not only the configured database");

        let err = choose_at(Some(100)).unwrap_err().to_string();
        assert!(err.contains("incomplete") && err.contains("\"b\""), "{err}");
        let err = choose_at(Some(7)).unwrap_err().to_string();
        assert!(err.contains("taken at 7") && err.contains("100, 50"), "{err}");
        // Under another label there is nothing: the error names the labels that are there.
        let err = choose(&policy, &view("other"), &listing, "here", None, &open).unwrap_err().to_string();
        assert!(err.contains("labelled srv") && err.contains("--label"), "{err}");
    }
}
