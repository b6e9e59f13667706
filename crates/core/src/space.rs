//! Free space in the backup directory: checked before a backup starts (against the last
//! backup's size), and described when it runs out, so the error says what fills the disk.

use std::path::{Path, PathBuf};

use crate::util::mb;

/// A backup needs room for about its predecessor's size and this much more (databases grow).
const GROWTH_PERCENT: u64 = 10;

#[derive(Debug, thiserror::Error)]
#[error("not enough free space in {dir} for the next backup: the last one was {last}, so about {need} is needed, but only {free} is free — the directory holds {occupancy}; free space there or point EF__BACKUP_DIR at a larger disk")]
pub struct NoRoom {
    pub dir: PathBuf,
    pub last: String,
    pub need: String,
    pub free: String,
    pub occupancy: String,
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Bytes needed for a backup whose predecessor took `last` bytes.
pub fn needed(last: u64) -> u64 {
    last.saturating_add(last / 100 * GROWTH_PERCENT)
}

/// Refuses to start a backup when `dir` has less room than [`needed`] for a predecessor of
/// `last` bytes. A file system that cannot be asked does not stop the backup (writing will
/// tell).
pub fn check_room(dir: &Path, last: u64) -> Result<(), NoRoom> {
    let Ok(free) = free_bytes(dir) else { return Ok(()) };
    let need = needed(last);
    if free >= need {
        return Ok(());
    }
    Err(NoRoom { dir: dir.to_path_buf(), last: mb(last), need: mb(need), free: mb(free), occupancy: occupancy(dir) })
}

/// What occupies `dir`: file count and total, the largest files, and leftover `.partial`s.
pub fn occupancy(dir: &Path) -> String {
    let mut files: Vec<(u64, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (meta.len(), e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    if files.is_empty() {
        return "no files (the space is used elsewhere on that file system)".into();
    }
    files.sort_by(|a, b| b.cmp(a));
    let total: u64 = files.iter().map(|f| f.0).sum();
    let partials: Vec<&(u64, String)> = files.iter().filter(|f| f.1.ends_with(".partial")).collect();
    let largest: Vec<String> = files.iter().take(3).map(|(size, name)| format!("{} ({})", crate::db::escape_controls(name), mb(*size))).collect();
    let mut text = format!("{} file(s), {} in total; largest: {}", files.len(), mb(total), largest.join(", "));
    if !partials.is_empty() {
        text.push_str(&format!("; {} .partial file(s) of interrupted backups, {}", partials.len(), mb(partials.iter().map(|f| f.0).sum())));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_checked_against_the_last_backup_and_the_error_says_what_fills_the_directory() {
        assert_eq!(needed(1000), 1100);
        assert_eq!(needed(0), 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.sql.gz"), vec![0u8; 3 * 1048576]).unwrap();
        std::fs::write(dir.path().join("small.sql.gz"), b"x").unwrap();
        std::fs::write(dir.path().join("cut.sql.gz.partial"), vec![0u8; 1048576]).unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(check_room(dir.path(), 0).is_ok());
        let err = check_room(dir.path(), free).unwrap_err().to_string();
        for part in ["not enough free space", "3 file(s), 4.00 MB in total", "largest: big.sql.gz (3.00 MB)", "1 .partial file(s)", "EF__BACKUP_DIR"]
        {
            assert!(err.contains(part), "{part:?} not in {err}");
        }
        assert!(occupancy(&dir.path().join("missing")).contains("no files"));
    }
}
