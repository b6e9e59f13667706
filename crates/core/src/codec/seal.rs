//! Encryption with age (<https://age-encryption.org/v1>) after compression: the backup host
//! holds only public keys (recipients), so a stolen backup host or bucket reveals nothing, and
//! the file is a standard age file `age -d -i key.txt` decrypts. The private key (identity) is
//! needed only where a backup is restored or verified.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The age X25519 public keys backups are encrypted to (any one of their identities decrypts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients(Vec<String>);

impl Recipients {
    /// Parses `age1…` keys separated by commas, spaces or lines; `#` starts a comment (the
    /// format of an age recipients file). Nothing else is accepted: a typo must not become a
    /// backup nobody can decrypt, or an unencrypted one.
    pub fn parse(text: &str) -> Result<Recipients, String> {
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            for key in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|k| !k.is_empty()) {
                age::x25519::Recipient::from_str(key).map_err(|e| {
                    let shown: String = key.chars().take(12).collect();
                    format!("{shown:?}… is not an age X25519 public key (age1…, from `age-keygen -y`): {e}")
                })?;
                if !keys.iter().any(|k| k == key) {
                    keys.push(key.to_string());
                }
            }
        }
        Ok(Recipients(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The public keys, for the manifest, `list` and logs (public keys are no secret).
    pub fn keys(&self) -> &[String] {
        &self.0
    }
}

/// Where the identities (private keys) that decrypt backups are: `--identity FILE` or
/// `EF__BACKUP_AGE_IDENTITY_FILE`. Read only when an encrypted backup is opened.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    identity_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("it is encrypted with age and no identity was given: pass --identity FILE (or set EF__BACKUP_AGE_IDENTITY_FILE) with the private key of one of its recipients")]
    NoIdentity,
    #[error("cannot read the age identity file {path}: {reason}")]
    IdentityFile { path: PathBuf, reason: String },
    #[error("none of the identities in {path} can decrypt it (it was encrypted to other recipients): use the identity file of a recipient it was written for")]
    WrongIdentity { path: PathBuf },
    #[error("it is not a readable age file ({0})")]
    NotAge(String),
    #[error("{0}")]
    Io(io::Error),
}

/// One parsed line of an identity file.
type Identity = Box<dyn age::Identity + Send + Sync>;

impl Keys {
    pub fn none() -> Keys {
        Keys::default()
    }

    pub fn from_file(path: impl Into<PathBuf>) -> Keys {
        Keys { identity_file: Some(path.into()) }
    }

    pub fn identity_file(&self) -> Option<&Path> {
        self.identity_file.as_deref()
    }

    fn identities(&self) -> Result<(&Path, Vec<Identity>), DecodeError> {
        let path = self.identity_file.as_deref().ok_or(DecodeError::NoIdentity)?;
        let failed = |reason: String| DecodeError::IdentityFile { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
        // The parser's own errors may quote the line; only say which kind of problem it was.
        let parsed =
            age::IdentityFile::from_buffer(io::BufReader::new(file)).map_err(|e| failed(format!("not an age identity file ({:?})", e.kind())))?;
        let identities =
            parsed.into_identities().map_err(|_| failed("it holds an identity this build cannot use (only X25519 keys from age-keygen)".into()))?;
        if identities.is_empty() {
            return Err(failed("it holds no identity (AGE-SECRET-KEY-1… lines from age-keygen)".into()));
        }
        Ok((path, identities))
    }

    /// The plaintext of an age file.
    pub fn open<'a, R: Read + 'a>(&self, encoded: R) -> Result<Box<dyn Read + 'a>, DecodeError> {
        let (path, identities) = self.identities()?;
        let decryptor = age::Decryptor::new_buffered(io::BufReader::with_capacity(256 * 1024, encoded)).map_err(not_age)?;
        let reader = decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => DecodeError::WrongIdentity { path: path.to_path_buf() },
            other => not_age(other),
        })?;
        Ok(Box::new(reader))
    }
}

fn not_age(e: age::DecryptError) -> DecodeError {
    match e {
        age::DecryptError::Io(e) => DecodeError::Io(e),
        other => DecodeError::NotAge(other.to_string()),
    }
}

/// The sink under the compressor: the store's writer itself, or age encrypting into it.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    pub fn age(sink: W, recipients: &Recipients) -> io::Result<Sealed<W>> {
        let keys = recipients.0.iter().map(|k| age::x25519::Recipient::from_str(k).map_err(io::Error::other)).collect::<io::Result<Vec<_>>>()?;
        let encryptor = age::Encryptor::with_recipients(keys.iter().map(|k| k as &dyn age::Recipient)).map_err(io::Error::other)?;
        Ok(Sealed::Age(encryptor.wrap_output(sink)?))
    }

    /// Writes age's last chunk (without it the file does not decrypt) and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// Reads only the beginning of a file: whether it is an age file at all.
pub fn looks_like_age(mut head: impl BufRead) -> bool {
    head.fill_buf().map(|b| b.starts_with(b"age-encryption.org/v1")).unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    /// A fresh key pair: the recipients and keys reading an identity file written for the test
    /// (kept alive for the process: tests only).
    pub fn key_pair() -> (Recipients, Keys) {
        let identity = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("key.txt");
        std::fs::write(&path, format!("# test key\n{}\n", identity.to_string().expose_secret())).unwrap();
        (Recipients::parse(&identity.to_public().to_string()).unwrap(), Keys::from_file(path))
    }

    #[test]
    fn recipients_parse_lists_and_files_and_refuse_anything_else() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        for text in [format!("{a},{b}"), format!("{a} {b}"), format!("# keys\n{a}\n\n{b} # ops\n{a}\n")] {
            assert_eq!(Recipients::parse(&text).unwrap().keys(), [a.clone(), b.clone()], "{text:?}");
        }
        assert!(Recipients::parse("").unwrap().is_empty());
        for bad in ["age1nope", "ssh-ed25519 AAAA", &format!("{a},{}", &b[..20]), "AGE-SECRET-KEY-1QQQ"] {
            let err = Recipients::parse(bad).unwrap_err();
            assert!(err.contains("not an age X25519 public key"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_identity_file_error_names_the_file_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(&path, "AGE-SECRET-KEY-1THISISNOTAVALIDKEYBUTLOOKSSECRET\n").unwrap();
        let err = Keys::from_file(&path).open(&b"age-encryption.org/v1\n"[..]).err().unwrap().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains("THISISNOT"), "the key's text leaked: {err}");
        let missing = Keys::from_file(dir.path().join("absent")).open(&b""[..]).err().unwrap().to_string();
        assert!(missing.contains("absent") && missing.contains("No such file"), "{missing}");
    }
}
