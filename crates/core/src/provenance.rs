//! Whether a backup is what its manifest says and who made it: the trust check restore and
//! verify run first (`EF__BACKUP_TRUSTED_KEYS`), and `verify --offline`, which checks a backup
//! against its manifest without a database.

use crate::manifest::{Manifest, MANIFEST_MAX, MANIFEST_SUFFIX};
use crate::restore::{RestoreError, Source};
use crate::sign::{TrustedKeys, SIGNATURE_MAX, SIGNATURE_SUFFIX};

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(
        "refusing {backup}: {why}. EF__BACKUP_TRUSTED_KEYS is set, so only backups whose manifest is signed by one of those keys are \
         restored or verified — use a backup this deployment signed, or pass --allow-unsigned if you know where this one came from"
    )]
    Untrusted { backup: String, why: String },
    #[error("cannot read the manifest of {backup}: {err}")]
    Read { backup: String, err: String },
    /// The signed manifest holds, the bytes do not (checked before anything runs).
    #[error(transparent)]
    Bytes(Box<RestoreError>),
}

impl From<RestoreError> for ProvenanceError {
    fn from(e: RestoreError) -> Self {
        ProvenanceError::Bytes(Box::new(e))
    }
}

/// What the trust check found.
#[derive(Debug)]
pub enum Trust {
    /// Signed by this trusted key; the source now expects the manifest's SHA-256.
    Signed { key_id: String, manifest: Manifest },
    /// No trusted keys are configured; the manifest (if any) was read without a signature
    /// check, and its SHA-256 still catches damage.
    NotRequired { manifest: Option<Manifest> },
    /// Not signed by a trusted key, accepted because of `--allow-unsigned`.
    Overridden { why: String, manifest: Option<Manifest> },
}

impl Trust {
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Trust::Signed { manifest, .. } => Some(manifest),
            Trust::NotRequired { manifest } | Trust::Overridden { manifest, .. } => manifest.as_ref(),
        }
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        match self {
            Trust::Signed { key_id, .. } => format!("manifest signed by trusted key {key_id}"),
            Trust::NotRequired { manifest: Some(_) } => "manifest present; signatures not checked (EF__BACKUP_TRUSTED_KEYS is not set)".into(),
            Trust::NotRequired { manifest: None } => "no manifest (a backup written before manifests, or by another tool)".into(),
            Trust::Overridden { why, .. } => format!("NOT trusted, accepted with --allow-unsigned: {why}"),
        }
    }
}

fn read_manifest(source: &Source) -> Result<Option<(Manifest, Vec<u8>)>, ProvenanceError> {
    let read_err = |err: String| ProvenanceError::Read { backup: source.label(), err };
    let Some(bytes) = source.companion(MANIFEST_SUFFIX, MANIFEST_MAX).map_err(read_err)? else { return Ok(None) };
    let manifest = Manifest::parse(&bytes).map_err(|e| read_err(e.to_string()))?;
    Ok(Some((manifest, bytes)))
}

fn expect(source: &mut Source, manifest: &Manifest) -> Result<(), String> {
    let mut sha = [0u8; 32];
    let hex = manifest.sha256.as_bytes();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!("its manifest's sha256 {:?} is not a SHA-256", manifest.sha256));
    }
    for (i, b) in sha.iter_mut().enumerate() {
        *b = u8::from_str_radix(&manifest.sha256[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    source.sha256 = Some(sha);
    Ok(())
}

/// What the caller does with a trusted backup once it is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Its SQL runs (restore, verify): a signed backup's bytes are read and checked first, then
    /// pinned, so that none of a swapped file's SQL runs.
    Load,
    /// Only read and compared (`verify --offline`): the one read checks the bytes itself, so
    /// an S3 object is streamed once.
    Inspect,
}

/// Decides whether `source` may be restored or verified, and makes it expect the SHA-256 its
/// manifest records (so a swapped or damaged file fails before anything is put in place).
pub fn establish(source: &mut Source, trusted: &TrustedKeys, allow_unsigned: bool, purpose: Purpose) -> Result<Trust, ProvenanceError> {
    if trusted.is_empty() {
        // A broken manifest does not stop a restore nobody asked to be checked: say so, go on.
        let manifest = match read_manifest(source) {
            Ok(m) => m.map(|(m, _)| m),
            Err(e) => {
                tracing::warn!("{e}; going on without it");
                None
            }
        };
        if let Some(m) = &manifest {
            if let Err(why) = expect(source, m) {
                tracing::warn!("the manifest of {} is not usable ({why}); going on without it", source.label());
                return Ok(Trust::NotRequired { manifest: None });
            }
        }
        return Ok(Trust::NotRequired { manifest });
    }
    let checked = check_signed(source, trusted);
    match checked {
        Ok((key_id, manifest)) => {
            expect(source, &manifest).map_err(|why| ProvenanceError::Untrusted { backup: source.label(), why })?;
            // Only bytes that match the signed hash may reach psql: checked now, then pinned.
            if purpose == Purpose::Load {
                source.verify_and_pin()?;
            }
            Ok(Trust::Signed { key_id, manifest })
        }
        Err(why) if allow_unsigned => {
            tracing::warn!("{}: not signed by a trusted key ({why}); going on because of --allow-unsigned", source.label());
            let manifest = read_manifest(source).ok().flatten().map(|(m, _)| m);
            Ok(Trust::Overridden { why, manifest })
        }
        Err(why) => Err(ProvenanceError::Untrusted { backup: source.label(), why }),
    }
}

/// The signer's key id and the manifest, or why not.
fn check_signed(source: &Source, trusted: &TrustedKeys) -> Result<(String, Manifest), String> {
    let Some((manifest, bytes)) = read_manifest(source).map_err(|e| e.to_string())? else {
        return Err("it has no manifest".into());
    };
    let suffix = format!("{MANIFEST_SUFFIX}{SIGNATURE_SUFFIX}");
    let signature = source.companion(&suffix, SIGNATURE_MAX)?.ok_or("its manifest is not signed")?;
    let key_id = trusted.check(&bytes, &String::from_utf8_lossy(&signature)).map_err(|e| e.to_string())?;
    // A signed manifest of another backup, put beside this one, vouches for nothing here.
    if manifest.backup != source.file_name() {
        return Err(format!("its signed manifest is the manifest of {:?}, not of this file", manifest.backup));
    }
    Ok((key_id, manifest))
}

/// One line of `verify --offline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug)]
pub struct OfflineReport {
    pub backup: String,
    pub checks: Vec<Check>,
    /// There was a manifest to compare with.
    pub manifest: bool,
    /// Its manifest is signed by a trusted key (else: where it came from is not proven).
    pub signed: bool,
}

impl OfflineReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The verdict line: what passing means depends on what there was to check.
    pub fn verdict(&self) -> &'static str {
        match (self.ok(), self.manifest, self.signed) {
            (false, _, _) => "FAILED: see above",
            (true, true, true) => "OK: the backup is what its signed manifest says",
            (true, true, false) => {
                "OK: the backup is what its manifest says (the manifest is not signed by a trusted key: where it came from is not proven)"
            }
            (true, false, _) => "OK as far as it goes: it decodes to the end and is complete, but there is no manifest to compare it with",
        }
    }
}

/// The stored bytes' size and SHA-256, read once.
fn stored_digest(source: &Source) -> Result<(u64, String), String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut raw = source.raw().map_err(|e| e.to_string())?;
    let n = std::io::copy(&mut raw, &mut hasher).map_err(|e| format!("reading it failed: {e}"))?;
    Ok((n, crate::util::hex(&hasher.finalize())))
}

fn bytes_check(manifest: &Manifest, size: u64, sha: &str) -> Check {
    let same = sha == manifest.sha256 && size == manifest.stored_bytes;
    Check {
        what: "stored bytes",
        ok: same,
        detail: if same {
            format!("{size} bytes, SHA-256 matches the manifest")
        } else {
            format!(
                "{size} bytes with SHA-256 {sha}; the manifest records {} bytes with {}: the file was changed or damaged after it was written",
                manifest.stored_bytes, manifest.sha256
            )
        },
    }
}

/// Reads the backup once, without a database: its SHA-256 and size against the manifest,
/// that it decodes to the end and is a complete dump, and every table's row count and content
/// hash, every sequence and large object against the manifest's.
pub fn verify_offline(source: &Source, trust: &Trust) -> OfflineReport {
    let mut checks = vec![Check { what: "provenance", ok: true, detail: trust.describe() }];
    let manifest = trust.manifest();
    let report =
        |checks| OfflineReport { backup: source.label(), checks, manifest: manifest.is_some(), signed: matches!(trust, Trust::Signed { .. }) };
    // The SHA-256 is compared below, with a clearer line than scan's error.
    let mut unchecked = source.clone();
    unchecked.sha256 = None;
    let scanned = crate::restore::scan(&unchecked, |_| Ok(()));
    let check = match scanned {
        Ok(c) => c,
        // Not a database dump (the globals), or no key to decrypt it: its bytes are what can
        // be checked here.
        Err(e @ (RestoreError::GlobalsBackup { .. } | RestoreError::Key { .. })) => {
            match (manifest, stored_digest(&unchecked)) {
                (_, Err(why)) => checks.push(Check { what: "stored bytes", ok: false, detail: why }),
                (Some(m), Ok((size, sha))) => checks.push(bytes_check(m, size, &sha)),
                (None, Ok((size, sha))) => checks.push(Check {
                    what: "stored bytes",
                    ok: true,
                    detail: format!("{size} bytes, SHA-256 {sha} (no manifest to compare with)"),
                }),
            }
            let (ok, detail) = match e {
                RestoreError::GlobalsBackup { .. } => {
                    (true, "a globals backup: its statements are checked when `restore --all` applies them".to_string())
                }
                other => (false, other.to_string()),
            };
            checks.push(Check { what: "content", ok, detail });
            return report(checks);
        }
        Err(e) => {
            let detail = match e {
                RestoreError::Damaged { reason, .. } => reason,
                other => other.to_string(),
            };
            checks.push(Check { what: "readable", ok: false, detail });
            return report(checks);
        }
    };
    let sha = crate::util::hex(&check.sha256);
    let Some(manifest) = manifest else {
        checks.push(Check {
            what: "stored bytes",
            ok: true,
            detail: format!("{} bytes, SHA-256 {sha} (no manifest to compare with)", check.compressed_bytes),
        });
        checks.push(Check { what: "complete", ok: true, detail: format!("decodes to the end; a complete dump ({} bytes of SQL)", check.dump_bytes) });
        return report(checks);
    };
    checks.push(bytes_check(manifest, check.compressed_bytes, &sha));
    checks.push(Check {
        what: "complete",
        ok: check.dump_bytes == manifest.dump_bytes,
        detail: format!("decodes to the end; a complete dump of {} bytes of SQL (the manifest: {})", check.dump_bytes, manifest.dump_bytes),
    });
    match manifest.open_content(&source.keys) {
        Err(e) => checks.push(Check { what: "content", ok: false, detail: e.to_string() }),
        Ok(recorded) => {
            let found = crate::manifest::Content::of(&check.facts, &recorded.copy_settings);
            let (count, lines) = found.differences(&recorded, 10);
            let rows: u64 = found.tables.iter().map(|t| t.rows).sum();
            checks.push(Check {
                what: "content",
                ok: count == 0,
                detail: if count == 0 {
                    format!(
                        "{} tables ({rows} rows), {} sequences and {} large objects match the manifest's counts and hashes",
                        found.tables.len(),
                        found.sequences.len(),
                        found.large_objects.len()
                    )
                } else {
                    format!("{count} difference(s) from the manifest: {}", lines.join("; "))
                },
            });
        }
    }
    report(checks)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use sha2::Digest;

    use crate::codec::Keys;
    use crate::model::Target;
    use crate::restore::{RestoreError, Source};
    use crate::store::memory::MemoryStore;

    /// The bytes a signed restore checks are the bytes it reads: a mismatch is refused before
    /// anything is read for psql, and an object replaced after the check is not read at all.
    #[test]
    fn checked_bytes_are_pinned() {
        let store = MemoryStore::new(Target::S3);
        store.put("b.sql.gz", b"good bytes", 1);
        let source = |sha: [u8; 32]| {
            let mut s = Source::store(Arc::new(store.clone()), "b.sql.gz", &Keys::none());
            s.sha256 = Some(sha);
            s
        };
        let good: [u8; 32] = sha2::Sha256::digest(b"good bytes").into();
        let err = source(sha2::Sha256::digest(b"other").into()).verify_and_pin().unwrap_err();
        assert!(matches!(&err, RestoreError::Damaged { reason, .. } if reason.contains("its manifest records")), "{err}");

        let mut pinned = source(good);
        pinned.verify_and_pin().unwrap();
        let mut read = Vec::new();
        pinned.raw().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"good bytes");
        store.put("b.sql.gz", b"swapped in", 2);
        let err = pinned.raw().err().expect("the replaced object is not read");
        assert!(err.to_string().contains("replaced"), "{err}");
    }
}
