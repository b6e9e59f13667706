//! A running `ef-backup serve` the test owns: started on a free port with an admin token, and
//! never left behind (killed on drop), with its log at hand for the assertions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ef_command, free_port, http, HttpReply};

/// A running `ef-backup serve`; killed (SIGKILL) on drop if still running. Its log goes to
/// `log` in its directory.
pub struct Serve {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
    pub token: String,
}

pub const TOKEN: &str = "test-token-0123456789abcdef";

impl Serve {
    pub fn start(db: &str, dir: &Path, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let log = dir.join(format!("serve-{port}.log"));
        std::fs::create_dir_all(dir).unwrap();
        let backups = dir.join("backups");
        let addr = format!("127.0.0.1:{port}");
        let mut vars: Vec<(&str, &str)> = vec![("EF__ADMIN_TOKEN", TOKEN), ("EF__HTTP_ADDR", &addr)];
        vars.extend_from_slice(extra);
        let child = ef_command(db, &backups, &vars)
            .arg("serve")
            .stdout(std::fs::File::create(dir.join(format!("serve-{port}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let serve = Serve { child, port, log, token: TOKEN.to_string() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "serve did not come up: {}", serve.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        serve
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn get(&self, path: &str) -> HttpReply {
        http(self.port, "GET", path, &[("Authorization", &self.auth())], b"")
    }

    pub fn post(&self, path: &str) -> HttpReply {
        http(self.port, "POST", path, &[("Authorization", &self.auth())], b"")
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit code.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<i32> {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(std::time::Instant::now() < deadline, "serve did not exit after SIGTERM: {}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
