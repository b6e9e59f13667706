//! Small helpers that several modules share and no one concept owns: sizes for people, the clock
//! as Unix seconds, hex digests. (Tool output for logs — [`crate::db::tail_lines`],
//! [`crate::db::escape_controls`] — stays with the client tools in [`crate::db`].)

/// `bytes` in MiB for messages and listings, as `12.34 MB`.
pub fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1048576.0)
}

/// Now, in Unix seconds (UTC), the unit of every time the state store and the policy see.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Unix seconds as `2025-11-04 01:30:00 UTC`, for people.
pub fn format_time(unix: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// Locks `m`, also after a thread panicked while holding it: every lock of this program guards
/// data that stays consistent between statements (a counter, a queue, a handle), and a backup
/// tool that stops working because one thread panicked is worse than one that goes on.
pub fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `bytes` in lowercase hex, two digits a byte (digests in file names and checksums).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_mb() {
        assert_eq!(mb(0), "0.00 MB");
        assert_eq!(mb(3 * 1048576), "3.00 MB");
        assert_eq!(mb(1536 * 1024), "1.50 MB");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn now_is_unix_seconds() {
        let system = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now() - system).abs() <= 1, "{} vs {system}", now());
    }
}
