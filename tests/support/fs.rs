//! The file system a deployment backs up into: scratch directories the postgres user can
//! reach, directory listings, and small tmpfs mounts to fill up or make read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env;

/// A scratch directory under the test state dir (traversable by the postgres user).
pub fn tempdir() -> tempfile::TempDir {
    let base = env().state.join("e2e");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("t").tempdir_in(base).unwrap()
}

/// Files in a directory, sorted, without the manifests and signatures beside the backups
/// (only the manifest suite looks at those: [`all_files`]).
pub fn files(dir: &Path) -> Vec<String> {
    all_files(dir).into_iter().filter(|f| !(f.ends_with(".manifest.json") || f.ends_with(".manifest.json.minisig"))).collect()
}

/// Every file in a directory, sorted.
pub fn all_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Mounts a tmpfs of `size` at `dir`; unmounted on drop. The tests run as root (CI does).
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(st.success(), "mount tmpfs on {} failed: the file-system tests need root", dir.display());
        Mount(dir.to_path_buf())
    }
    pub fn remount_ro(&self) {
        let st = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The SQL of a backup file (every gzip member).
pub fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()), &mut out).unwrap();
    out
}

/// A fresh minisign key pair without a password: (secret key file, public key file, key).
pub fn minisign_key(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (sk, pk) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    let out = std::process::Command::new("minisign")
        .args(["-G", "-W", "-f", "-s"])
        .arg(&sk)
        .arg("-p")
        .arg(&pk)
        .output()
        .expect("minisign (apt-get install minisign)");
    assert!(out.status.success(), "minisign -G: {}", String::from_utf8_lossy(&out.stderr));
    // Only its owner may read a signing key (ef-backup refuses one others can read).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = std::fs::read_to_string(&pk).unwrap().lines().nth(1).unwrap().to_string();
    (sk, pk, public)
}

/// A fresh age identity file in `dir` and its public key (`age1…`).
pub fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen").arg("-o").arg(&path).output().expect("age-keygen (apt-get install age)");
    assert!(out.status.success(), "age-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let public = Command::new("age-keygen").arg("-y").arg(&path).output().unwrap();
    (path, String::from_utf8(public.stdout).unwrap().trim().to_string())
}

/// The SHA-256 of `bytes`, lower-case hex, by the stock `sha256sum`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}
