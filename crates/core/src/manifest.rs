//! The manifest beside every backup (`NAME.manifest.json`): what the backup is (format, sizes,
//! SHA-256 of the stored bytes, versions, times) and what it holds (every table's COPY row count
//! and order-independent content hash, every sequence, every large object), computed from the
//! dump stream while it was written. `verify --offline` checks a backup against it without a
//! database; a later restore can prove itself faithful by recomputing the table hashes.
//!
//! With encryption, what reveals content (table names, counts, hashes) is sealed with age to the
//! backup's recipients (`sealed_content`); what an integrity check needs without the key stays
//! plain (hash, sizes, times, format, recipients).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::codec::{EncodeSettings, Format, Keys};
use crate::dump::{DumpFacts, QualifiedName};

/// The version of the manifest's own layout.
pub const MANIFEST_VERSION: u32 = 1;
/// What ends a manifest's name (after the backup's).
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// A manifest larger than this is refused when read (a planted file must not exhaust memory).
pub const MANIFEST_MAX: u64 = 64 << 20;

/// The manifest's name for a backup's.
pub fn manifest_name(backup: &str) -> String {
    format!("{backup}{MANIFEST_SUFFIX}")
}

/// True for the names of the files that accompany backups (manifests, their signatures): a
/// listing of backups leaves them out.
pub fn is_companion(name: &str) -> bool {
    name.ends_with(MANIFEST_SUFFIX) || name.ends_with(crate::sign::SIGNATURE_SUFFIX)
}

/// The backup a manifest or signature name belongs to.
pub fn backup_of_companion(name: &str) -> Option<&str> {
    name.strip_suffix(crate::sign::SIGNATURE_SUFFIX).unwrap_or(name).strip_suffix(MANIFEST_SUFFIX)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    /// The backup's file (object) name.
    pub backup: String,
    /// The database, or `""` for the globals.
    pub database: String,
    /// `database` or `globals`.
    pub kind: String,
    /// `gzip`, `zstd`, `gzip+age`, `zstd+age`.
    pub format: String,
    pub level: u32,
    /// The age public keys it is encrypted to (none when it is not).
    pub recipients: Vec<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
    pub ef_backup_version: String,
    /// The plain dump's size.
    pub dump_bytes: u64,
    /// The stored file's size and SHA-256 (lower-case hex).
    pub stored_bytes: u64,
    pub sha256: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: String,
    /// The content, in the clear (unencrypted backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// The content as JSON encrypted with age to `recipients`, base64 (encrypted backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Content {
    /// The settings that shape COPY text in pg_dump's session: pg_dump sets DateStyle,
    /// IntervalStyle and extra_float_digits itself; TimeZone is the session's default, recorded
    /// as the server reported it.
    pub copy_settings: BTreeMap<String, String>,
    pub tables: Vec<TableContent>,
    pub sequences: Vec<SequenceContent>,
    pub large_objects: Vec<LargeObjectContent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableContent {
    /// `schema.name`, unquoted, as PostgreSQL stores them.
    pub schema: String,
    pub name: String,
    pub rows: u64,
    /// The wrapping sum of every COPY row's XXH3-128, 32 hex digits.
    pub rows_xxh3_sum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceContent {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeObjectContent {
    pub oid: u32,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of a manifest: {0}")]
    Parse(String),
    #[error("the manifest is larger than {} MiB: it is not one ef-backup wrote", MANIFEST_MAX >> 20)]
    TooLarge,
    #[error("the manifest's layout version {0} is newer than this ef-backup reads ({MANIFEST_VERSION}): upgrade ef-backup")]
    Version(u32),
    #[error("the manifest's content is encrypted and cannot be opened: {0}")]
    Sealed(String),
    #[error("cannot encrypt the manifest's content: {0}")]
    Seal(String),
}

/// The settings pg_dump's `setup_connection` gives every session that shape what COPY writes:
/// dates, intervals, floats, schema-qualified regclass/regproc values (an empty search_path),
/// and every row regardless of row security. The session's own defaults that matter too
/// (TimeZone, bytea_output, lc_monetary) are read from the server and recorded beside them.
const PG_DUMP_SETTINGS: [(&str, &str); 5] =
    [("datestyle", "ISO"), ("intervalstyle", "postgres"), ("extra_float_digits", "3"), ("search_path", ""), ("row_security", "off")];

impl Content {
    /// The content of a dump as its stream said it; `session`: the dump session's own
    /// settings that shape COPY text (`timezone`, `bytea_output`, `lc_monetary`).
    pub fn of(facts: &DumpFacts, session: &BTreeMap<String, String>) -> Content {
        let mut copy_settings: BTreeMap<String, String> = PG_DUMP_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        copy_settings.extend(session.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(encoding) = &facts.client_encoding {
            copy_settings.insert("client_encoding".into(), encoding.clone());
        }
        let tables = facts
            .table_totals()
            .into_iter()
            .map(|(t, (rows, hash))| TableContent { schema: t.schema.clone(), name: t.name.clone(), rows, rows_xxh3_sum: format!("{hash:032x}") })
            .collect();
        // The last setval of a sequence is the one that stands.
        let set: BTreeMap<&QualifiedName, _> = facts.sequences.iter().map(|(n, s)| (n, *s)).collect();
        let sequences = set
            .into_iter()
            .map(|(n, s)| SequenceContent { schema: n.schema.clone(), name: n.name.clone(), last_value: s.last_value, is_called: s.is_called })
            .collect();
        let large_objects = facts
            .lo_content
            .iter()
            .map(|(oid, c)| {
                use sha2::Digest;
                LargeObjectContent { oid: *oid, bytes: c.bytes, sha256: crate::util::hex(&c.sha256.clone().finalize()) }
            })
            .collect();
        Content { copy_settings, tables, sequences, large_objects }
    }

    /// Where this content and another differ, one line each (the first `limit`), and how many.
    pub fn differences(&self, other: &Content, limit: usize) -> (usize, Vec<String>) {
        let mut lines = Vec::new();
        let tables = |c: &Content| {
            c.tables
                .iter()
                .map(|t| (format!("{}", QualifiedName::new(&t.schema, &t.name)), (t.rows, t.rows_xxh3_sum.clone())))
                .collect::<BTreeMap<_, _>>()
        };
        let (a, b) = (tables(self), tables(other));
        for name in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
            match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y)) if x.0 != y.0 => lines.push(format!("table {name}: {} rows in the backup, {} in the manifest", x.0, y.0)),
                (Some(_), Some(_)) => lines.push(format!("table {name}: same row count, different content (row hash differs)")),
                (Some(_), None) => lines.push(format!("table {name}: in the backup, not in the manifest")),
                (None, _) => lines.push(format!("table {name}: in the manifest, missing from the backup")),
            }
        }
        if self.sequences != other.sequences {
            lines.push(format!("sequences differ ({} in the backup, {} in the manifest)", self.sequences.len(), other.sequences.len()));
        }
        if self.large_objects != other.large_objects {
            lines.push(format!("large objects differ ({} in the backup, {} in the manifest)", self.large_objects.len(), other.large_objects.len()));
        }
        let count = lines.len();
        lines.truncate(limit);
        (count, lines)
    }
}

/// What the engine knows of a finished backup, for its manifest.
#[derive(Debug, Clone)]
pub struct Written<'a> {
    pub backup: &'a str,
    pub database: &'a str,
    pub globals: bool,
    pub format: Format,
    pub settings: &'a EncodeSettings,
    pub dump_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: [u8; 32],
    pub started: i64,
    pub finished: i64,
    /// The dump session's settings that shape COPY text (see [`Content::of`]).
    pub session: &'a BTreeMap<String, String>,
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Manifest {
    pub fn new(w: &Written<'_>, facts: &DumpFacts) -> Result<Manifest, ManifestError> {
        let content = Content::of(facts, w.session);
        let recipients = if w.format.encrypted { w.settings.recipients.keys().to_vec() } else { Vec::new() };
        let (content, sealed_content) = if w.format.encrypted { (None, Some(seal(&content, w.settings)?)) } else { (Some(content), None) };
        Ok(Manifest {
            manifest_version: MANIFEST_VERSION,
            backup: w.backup.to_string(),
            database: if w.globals { String::new() } else { w.database.to_string() },
            kind: if w.globals { "globals" } else { "database" }.into(),
            format: w.format.describe(),
            level: w.settings.level,
            recipients,
            server_version: facts.server_version.clone(),
            pg_dump_version: facts.pg_dump_version.clone(),
            ef_backup_version: env!("CARGO_PKG_VERSION").into(),
            dump_bytes: w.dump_bytes,
            stored_bytes: w.stored_bytes,
            sha256: crate::util::hex(&w.sha256),
            started: rfc3339(w.started),
            finished: rfc3339(w.finished),
            content,
            sealed_content,
        })
    }

    /// The bytes written (and signed): pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        out.push(b'\n');
        out
    }

    /// Reads a manifest (at most [`MANIFEST_MAX`] bytes).
    pub fn read(from: impl Read) -> Result<(Manifest, Vec<u8>), ManifestError> {
        let mut bytes = Vec::new();
        from.take(MANIFEST_MAX + 1).read_to_end(&mut bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if bytes.len() as u64 > MANIFEST_MAX {
            return Err(ManifestError::TooLarge);
        }
        let manifest = Manifest::parse(&bytes)?;
        Ok((manifest, bytes))
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if m.manifest_version > MANIFEST_VERSION {
            return Err(ManifestError::Version(m.manifest_version));
        }
        Ok(m)
    }

    /// The content, opened with `keys` when it is sealed.
    pub fn open_content(&self, keys: &Keys) -> Result<Content, ManifestError> {
        if let Some(c) = &self.content {
            return Ok(c.clone());
        }
        let Some(sealed) = &self.sealed_content else { return Ok(Content::default()) };
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|e| ManifestError::Sealed(format!("not base64: {e}")))?;
        let mut plain = Vec::new();
        keys.open(&bytes[..])
            .map_err(|e| ManifestError::Sealed(e.to_string()))?
            .read_to_end(&mut plain)
            .map_err(|e| ManifestError::Sealed(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| ManifestError::Sealed(format!("its content is not a manifest's: {e}")))
    }
}

fn seal(content: &Content, settings: &EncodeSettings) -> Result<String, ManifestError> {
    let failed = |e: std::io::Error| ManifestError::Seal(e.to_string());
    let mut sealed = crate::codec::seal::Sealed::age(Vec::new(), &settings.recipients).map_err(failed)?;
    sealed.write_all(&serde_json::to_vec(content).expect("content serialises")).map_err(failed)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed.finish().map_err(failed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &[u8] = b"--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)\n\
        -- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)\n\nCOPY public.t (a, b) FROM stdin;\n1\tx\n2\ty\n\\.\n\n\
        SELECT pg_catalog.setval('public.s', 7, true);\nSELECT pg_catalog.lo_create('42');\n\
        SELECT pg_catalog.lo_open('42', 131072);\nSELECT pg_catalog.lowrite(0, '\\x68656c6c6f');\nSELECT pg_catalog.lo_close(0);\n";

    fn facts(dump: &[u8]) -> DumpFacts {
        let mut f = DumpFacts::default();
        // Fed in small pieces: a line may be cut anywhere.
        for chunk in dump.chunks(7) {
            f.update(chunk);
        }
        f
    }

    fn session() -> &'static BTreeMap<String, String> {
        static S: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
        S.get_or_init(|| [("timezone".to_string(), "Asia/Shanghai".to_string())].into_iter().collect())
    }

    fn tz(zone: &str) -> BTreeMap<String, String> {
        [("timezone".to_string(), zone.to_string())].into_iter().collect()
    }

    fn written<'a>(format: Format, settings: &'a EncodeSettings) -> Written<'a> {
        Written {
            backup: "db_backup_20260101_000000.sql.gz",
            database: "db",
            globals: false,
            format,
            settings,
            dump_bytes: DUMP.len() as u64,
            stored_bytes: 10,
            sha256: [7; 32],
            started: 1_767_225_600,
            finished: 1_767_225_601,
            session: session(),
        }
    }

    #[test]
    fn the_content_is_read_from_the_stream() {
        let c = Content::of(&facts(DUMP), &tz("UTC"));
        assert_eq!(c.tables.len(), 1);
        assert_eq!((c.tables[0].name.as_str(), c.tables[0].rows), ("t", 2));
        assert_eq!(c.sequences, [SequenceContent { schema: "public".into(), name: "s".into(), last_value: 7, is_called: true }]);
        // sha256("hello")
        assert_eq!(c.large_objects[0].bytes, 5);
        assert_eq!(c.large_objects[0].sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(c.copy_settings["timezone"], "UTC");
        let f = facts(DUMP);
        assert_eq!(f.server_version.as_deref(), Some("15.18 (Debian 15.18-0+deb12u1)"));
    }

    /// The row hash ignores order but not content, loss or duplication.
    #[test]
    fn the_row_hash_is_order_independent_and_sees_every_change() {
        let hash =
            |rows: &str| Content::of(&facts(format!("COPY public.t (a) FROM stdin;\n{rows}\\.\n").as_bytes()), &BTreeMap::new()).tables[0].clone();
        let base = hash("1\n2\n3\n");
        assert_eq!(hash("3\n1\n2\n"), base);
        for other in ["1\n2\n4\n", "1\n2\n", "1\n2\n3\n3\n", "1\n3\n2\n2\n"] {
            assert_ne!(hash(other).rows_xxh3_sum, base.rows_xxh3_sum, "{other:?}");
        }
        let (count, lines) = Content::of(&facts(b"COPY public.t (a) FROM stdin;\n1\n2\n4\n\\.\n"), &BTreeMap::new())
            .differences(&Content::of(&facts(b"COPY public.t (a) FROM stdin;\n1\n2\n3\n\\.\n"), &BTreeMap::new()), 10);
        assert_eq!((count, lines), (1, vec!["table public.t: same row count, different content (row hash differs)".to_string()]));
    }

    /// A row longer than the line buffer counts whole (a cut row would hash differently from
    /// the same row read back from the database).
    #[test]
    fn long_rows_are_hashed_whole() {
        let long: String = (0..200_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let other = format!("{}X", &long[..long.len() - 1]);
        let dump = |row: &str| format!("COPY public.t (a) FROM stdin;\nshort\n{row}\n\\.\n");
        let content = |d: &str| {
            let mut f = DumpFacts::default();
            for chunk in d.as_bytes().chunks(4096) {
                f.update(chunk);
            }
            Content::of(&f, &BTreeMap::new()).tables[0].clone()
        };
        let want = xxhash_rust::xxh3::xxh3_128(b"short").wrapping_add(xxhash_rust::xxh3::xxh3_128(long.as_bytes()));
        let got = content(&dump(&long));
        assert_eq!((got.rows, got.rows_xxh3_sum.clone()), (2, format!("{want:032x}")));
        assert_ne!(content(&dump(&other)).rows_xxh3_sum, got.rows_xxh3_sum, "a difference past the line buffer counts");
    }

    #[test]
    fn a_plain_manifest_round_trips_and_a_sealed_one_hides_its_content() {
        let settings = EncodeSettings { level: 4, threads: 1, recipients: Default::default() };
        let m = Manifest::new(&written(Format::GZIP, &settings), &facts(DUMP)).unwrap();
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.open_content(&Keys::none()).unwrap().tables[0].rows, 2);
        assert_eq!(back.started, "2026-01-01T00:00:00Z");

        let (recipients, keys) = crate::codec::seal::tests::key_pair();
        let settings = EncodeSettings { level: 4, threads: 1, recipients };
        let m = Manifest::new(&written(Format::GZIP.sealed(), &settings), &facts(DUMP)).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(!text.contains("\"public\"") && !text.contains("rows_xxh3_sum"), "content in the clear: {text}");
        assert!(text.contains(&m.recipients[0]) && text.contains(&m.sha256));
        let content = Manifest::parse(text.as_bytes()).unwrap().open_content(&keys).unwrap();
        assert_eq!(content, Content::of(&facts(DUMP), session()));
        let err = m.open_content(&Keys::none()).unwrap_err().to_string();
        assert!(err.contains("no identity"), "{err}");
    }

    #[test]
    fn a_newer_or_broken_manifest_is_refused_with_its_reason() {
        let settings = EncodeSettings { level: 4, threads: 1, recipients: Default::default() };
        let mut m = Manifest::new(&written(Format::GZIP, &settings), &facts(DUMP)).unwrap();
        m.manifest_version = MANIFEST_VERSION + 1;
        assert!(matches!(Manifest::parse(&m.to_bytes()), Err(ManifestError::Version(_))));
        assert!(matches!(Manifest::parse(b"{\"manifest_version\": 1}"), Err(ManifestError::Parse(_))));
        let huge = std::io::repeat(b' ').take(MANIFEST_MAX + 10);
        assert!(matches!(Manifest::read(huge), Err(ManifestError::TooLarge)));
    }
}
