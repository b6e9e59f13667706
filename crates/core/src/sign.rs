//! Provenance: every manifest signed with the backup host's ed25519 key in minisign's format
//! (`NAME.manifest.json.minisig`, checked by stock `minisign -Vm NAME.manifest.json -P KEY`),
//! and restore / verify refusing a backup whose manifest is not signed by a trusted key. age
//! is not sender-authenticated and anyone who can write to the bucket can plant a backup: the
//! signature over the manifest, which holds the SHA-256 of the stored bytes, is what ties a
//! backup to the host that made it.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// What ends a signature's name (after the manifest's).
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// A signature file is a few hundred bytes; a larger one is not ours.
pub const SIGNATURE_MAX: u64 = 8 << 10;

pub fn signature_name(manifest: &str) -> String {
    format!("{manifest}{SIGNATURE_SUFFIX}")
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("EF__BACKUP_SIGNING_KEY {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("signing the manifest failed: {0}")]
    Sign(String),
    #[error("{0}")]
    Trusted(String),
    #[error("the manifest's signature is not valid: {0}")]
    Invalid(String),
}

/// The backup host's minisign secret key (unencrypted: the service signs unattended; the
/// file's permissions protect it).
pub struct SigningKey {
    sk: minisign::SecretKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.path.display())
    }
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey, SignError> {
        let failed = |reason: String| SignError::Key { path: path.to_path_buf(), reason };
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(failed(format!(
                "other users may read it (mode {:o}): `chmod 600` it — whoever reads it can sign backups",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
        // The second line is the key. Read directly rather than through minisign's "box":
        // stock minisign 0.11 writes a password-less key (`-W`) without the checksum the crate
        // insists on; the key is checked below by signing with it instead.
        let not_a_key = || failed("not a minisign secret key file (from `minisign -G -W`)".into());
        let line = text.lines().find(|l| !l.trim().is_empty() && !l.starts_with("untrusted comment:")).ok_or_else(not_a_key)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(line.trim()).map_err(|_| not_a_key())?;
        let sk = minisign::SecretKey::from_bytes(&bytes).map_err(|_| not_a_key())?;
        // Never the password prompt minisign would show: the service runs unattended.
        if sk.is_encrypted() {
            return Err(failed(
                "it is protected by a password: ef-backup signs unattended and takes only a key without one — create it with \
                 `minisign -G -W -s FILE -p FILE.pub` and protect the file instead (mode 0600)"
                    .into(),
            ));
        }
        // A damaged key (its secret and public halves disagree) signs nothing that verifies.
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|_| not_a_key())?;
        minisign::sign(Some(&pk), &sk, &b"ef-backup key check"[..], None, None)
            .map_err(|_| failed("the key is damaged: a signature made with it does not verify".into()))?;
        Ok(SigningKey { sk, path: path.to_path_buf() })
    }

    /// A minisign signature (the file's text) of `data`; the trusted comment names the backup.
    pub fn sign(&self, data: &[u8], backup: &str) -> Result<String, SignError> {
        let comment = format!("ef-backup manifest of {}", crate::policy::escape_log(backup));
        minisign::sign(None, &self.sk, data, Some(&comment), Some("signature from ef-backup"))
            .map(|s| s.into_string())
            .map_err(|e| SignError::Sign(e.to_string()))
    }
}

/// The public keys whose signatures restore and verify accept (`EF__BACKUP_TRUSTED_KEYS`).
#[derive(Clone, Default)]
pub struct TrustedKeys(Vec<(String, minisign::PublicKey)>);

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(id, _)| id)).finish()
    }
}

fn key_id(keynum: &[u8]) -> String {
    let mut id = [0u8; 8];
    id.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(id))
}

impl TrustedKeys {
    /// Public keys (`RW…`, as `minisign -G` prints them) separated by commas, spaces or lines;
    /// a minisign `.pub` file's `untrusted comment:` lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.starts_with("untrusted comment:") {
                continue;
            }
            for word in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()) {
                let pk = minisign::PublicKey::from_base64(word).map_err(|_| {
                    let shown: String = word.chars().take(12).collect();
                    format!("{shown:?}… is not a minisign public key (RW…, the second line of the .pub file `minisign -G` writes)")
                })?;
                let id = key_id(pk.keynum());
                if !keys.iter().any(|(k, _)| *k == id) {
                    keys.push((id, pk));
                }
            }
        }
        Ok(TrustedKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key id (as minisign shows it) of the trusted key that signed `data`.
    pub fn check(&self, data: &[u8], signature: &str) -> Result<String, SignError> {
        // The crate takes the signature lines' lengths on trust (a short last line makes it
        // panic): a minisign signature is 74 bytes, its trusted comment's signature 64.
        let lines: Vec<&str> = signature.lines().collect();
        let decoded = |i: usize| lines.get(i).and_then(|l| base64::engine::general_purpose::STANDARD.decode(l.trim()).ok()).map(|b| b.len());
        if lines.len() < 4 || decoded(1) != Some(74) || decoded(3) != Some(64) {
            return Err(SignError::Invalid("not a minisign signature file (four lines: comment, signature, trusted comment, its signature)".into()));
        }
        let sig = minisign::SignatureBox::from_string(signature).map_err(|e| SignError::Invalid(format!("not a minisign signature ({e})")))?;
        let signer = key_id(sig.keynum());
        let Some((id, pk)) = self.0.iter().find(|(id, _)| *id == signer) else {
            let trusted: Vec<&str> = self.0.iter().map(|(id, _)| id.as_str()).collect();
            return Err(SignError::Invalid(format!("it was made by key {signer}, which is not in EF__BACKUP_TRUSTED_KEYS ({})", trusted.join(", "))));
        };
        minisign::verify(pk, &sig, std::io::Cursor::new(data), true, false, false).map_err(|e| {
            SignError::Invalid(format!("key {id}: {e} — the manifest was changed after it was signed, or the signature belongs to another file"))
        })?;
        Ok(id.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh key pair: the secret key written 0600 in a directory kept for the process, and
    /// the public key's text.
    pub fn key_pair() -> (SigningKey, String) {
        use std::os::unix::fs::PermissionsExt;
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("sign.key");
        std::fs::write(&path, kp.sk.to_box(None).unwrap().to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (SigningKey::load(&path).unwrap(), kp.pk.to_base64())
    }

    #[test]
    fn a_signature_checks_only_with_its_key_and_its_data() {
        let (key, public) = key_pair();
        let (_, other) = key_pair();
        let sig = key.sign(b"manifest", "db_backup.sql.gz").unwrap();
        let trusted = TrustedKeys::parse(&format!("untrusted comment: minisign public key\n{public}\n")).unwrap();
        assert!(trusted.check(b"manifest", &sig).is_ok());
        let err = trusted.check(b"manifesT", &sig).unwrap_err().to_string();
        assert!(err.contains("changed after it was signed"), "{err}");
        let stranger = TrustedKeys::parse(&other).unwrap();
        let err = stranger.check(b"manifest", &sig).unwrap_err().to_string();
        assert!(err.contains("not in EF__BACKUP_TRUSTED_KEYS"), "{err}");
        assert!(TrustedKeys::parse(&format!("{other}, {public}")).unwrap().check(b"manifest", &sig).is_ok());
        assert!(trusted.check(b"manifest", "garbage").is_err());
        // Lines cut short (the crate would panic on them): refused with a reason.
        let lines: Vec<&str> = sig.lines().collect();
        for (i, cut) in [(3, "AAAA"), (1, "RW")] {
            let mut damaged = lines.clone();
            damaged[i] = cut;
            let err = trusted.check(b"manifest", &damaged.join("\n")).unwrap_err().to_string();
            assert!(err.contains("not a minisign signature"), "{err}");
        }
        assert!(TrustedKeys::parse("RWnope").unwrap_err().contains("not a minisign public key"));
    }

    #[test]
    fn a_key_others_can_read_or_with_a_password_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, kp.sk.to_box(None).unwrap().to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SigningKey::load(&path).unwrap_err().to_string().contains("chmod 600"));
        let kp = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).unwrap();
        std::fs::write(&path, kp.sk.to_box(None).unwrap().to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SigningKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("password") && err.contains("minisign -G -W"), "{err}");
        // Stock minisign 0.11's `-W` key: no checksum (zeros), which the crate's own reader
        // refuses; it signs, and the signature checks with its public key.
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let mut bytes = kp.sk.to_bytes();
        let len = bytes.len();
        bytes[len - 32..].fill(0);
        let stock = format!("untrusted comment: minisign encrypted secret key\n{}\n", base64::engine::general_purpose::STANDARD.encode(&bytes));
        std::fs::write(&path, stock).unwrap();
        let key = SigningKey::load(&path).unwrap();
        let sig = key.sign(b"m", "b").unwrap();
        assert!(TrustedKeys::parse(&kp.pk.to_base64()).unwrap().check(b"m", &sig).is_ok());
        // A damaged one (a flipped bit in the secret half) is refused.
        bytes[70] ^= 1; // in the seed (the secret half starts at byte 62)
        std::fs::write(&path, format!("untrusted comment: x\n{}\n", base64::engine::general_purpose::STANDARD.encode(&bytes))).unwrap();
        assert!(SigningKey::load(&path).is_err());
    }
}
