//! The compile cache: machine code of a policy compiled by an earlier start, in a private
//! directory, so start-up and reload skip Cranelift.

use std::path::Path;

use wasmtime::component::Component;

/// A cache directory is used only if it is missing (it will be created 0700) or belongs to
/// this user and nobody else can write to it: its files are loaded as native code.
pub(crate) fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Err(_) => true,
        // SAFETY: geteuid has no preconditions.
        Ok(m) => {
            let mine = m.uid() == unsafe { libc::geteuid() };
            let ok = m.is_dir() && mine && m.mode() & 0o022 == 0;
            if !ok {
                tracing::warn!("not using {} as the policy cache: it must be a directory of this user that others cannot write", dir.display());
            }
            ok
        }
    }
}

/// Writes a compiled component atomically into a private (0700) cache directory.
pub(crate) fn store_artifact(file: &Path, component: &Component) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let bytes = component.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, &bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}
