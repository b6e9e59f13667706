//! S3 stores to back up to: the shared moto server `scripts/test.sh` starts, and private ones
//! for tests that stop a server or move its clock (which would break every other test).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{env, var};

/// The S3 test server (moto with SigV4 authentication) that scripts/test.sh starts, or one a
/// test starts for itself.
#[derive(Clone)]
pub struct S3 {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

pub fn s3() -> S3 {
    S3 {
        endpoint: var("EF_TEST_S3_ENDPOINT"),
        access_key: var("EF_TEST_S3_ACCESS_KEY"),
        secret_key: var("EF_TEST_S3_SECRET_KEY"),
        bucket: var("EF_TEST_S3_BUCKET"),
    }
}

impl S3 {
    /// The `EF__AWS_*` settings for ef-backup, keys below `prefix`.
    pub fn vars(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("EF__AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("EF__AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("EF__AWS_S3_BACKUP_BUCKET", self.bucket.clone()),
            ("EF__AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("EF__S3_PREFIX", prefix.to_string()),
        ]
    }

    /// Runs tests/support/s3probe.py against this server.
    pub fn probe(&self, args: &[&str]) -> String {
        let out = Command::new(var("EF_TEST_S3_PYTHON"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("support/s3probe.py"))
            .args(args)
            .env("EF_PROBE_ENDPOINT", &self.endpoint)
            .env("EF_PROBE_ACCESS_KEY", &self.access_key)
            .env("EF_PROBE_SECRET_KEY", &self.secret_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "s3probe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn probe_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.probe(args)).unwrap()
    }

    /// Keys of the incomplete multipart uploads in the bucket under `prefix`.
    pub fn open_uploads(&self, prefix: &str) -> Vec<String> {
        let uploads = self.probe_json(&["uploads", &self.bucket]);
        uploads.as_array().unwrap().iter().map(|u| u["key"].as_str().unwrap().to_string()).filter(|k| k.starts_with(prefix)).collect()
    }
}

/// A private moto server for tests that stop it or move its clock; stopped on drop.
pub struct PrivateS3 {
    pub s3: S3,
    dir: PathBuf,
}

fn s3_script() -> PathBuf {
    env().testenv.join("s3-server.sh")
}

impl PrivateS3 {
    /// With `faketime`, the server runs under libfaketime so [`PrivateS3::clock`] can move
    /// the time it stamps on uploads and objects.
    pub fn start(dir: &Path, port: u16, faketime: bool) -> PrivateS3 {
        std::fs::create_dir_all(dir).unwrap();
        // Share the installed venv (see scripts/test.sh).
        let venv = Path::new(&var("EF_TEST_S3_PYTHON")).parent().unwrap().parent().unwrap().to_path_buf();
        let _ = std::os::unix::fs::symlink(&venv, dir.join("venv"));
        let out = Command::new("bash")
            .arg(s3_script())
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .env("BUCKET", "private-bucket")
            .env("S3_FAKETIME", if faketime { "1" } else { "0" })
            .output()
            .unwrap();
        assert!(out.status.success(), "private S3 server: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("export {k}="))).unwrap_or_else(|| panic!("{k} in {text}")).to_string();
        PrivateS3 {
            s3: S3 {
                endpoint: get("AWS_ENDPOINT_URL_S3"),
                access_key: get("EF__AWS_ACCESS_KEY_ID"),
                secret_key: get("EF__AWS_SECRET_ACCESS_KEY"),
                bucket: "private-bucket".into(),
            },
            dir: dir.to_path_buf(),
        }
    }

    /// Moves the server's clock, e.g. `-1d` or `+0`.
    pub fn clock(&self, offset: &str) {
        let st = Command::new("bash").arg(s3_script()).args(["clock", self.dir.to_str().unwrap(), offset]).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(s3_script()).args(["stop", self.dir.to_str().unwrap()]).status();
    }
}
