//! Calendar arithmetic on fixed UTC offsets. The guest has no time-zone database (and must
//! not need one to stay small and deterministic); the default policy's zone, Asia/Shanghai,
//! has been UTC+8 without daylight saving since 1991.

/// A wall-clock date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl DateTime {
    /// The wall-clock time at `offset_secs` east of UTC for a Unix timestamp.
    pub fn from_unix(unix: i64, offset_secs: i64) -> Self {
        let local = unix + offset_secs;
        let (year, month, day) = civil_from_days(local.div_euclid(86_400));
        let sod = local.rem_euclid(86_400) as u32;
        DateTime { year, month, day, hour: sod / 3600, minute: sod / 60 % 60, second: sod % 60 }
    }

    /// The Unix timestamp of this wall-clock time at `offset_secs` east of UTC, or none for an
    /// impossible date (Feb 30th, hour 24...).
    pub fn to_unix(self, offset_secs: i64) -> Option<i64> {
        if !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in_month(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        Some(days * 86_400 + (self.hour * 3600 + self.minute * 60 + self.second) as i64 - offset_secs)
    }

    /// `YYYYMMDD_HHMMSS`.
    pub fn compact(&self) -> String {
        format!("{:04}{:02}{:02}_{:02}{:02}{:02}", self.year, self.month, self.day, self.hour, self.minute, self.second)
    }

    /// Parses exactly `YYYYMMDD_HHMMSS` (ASCII digits only), validating the date. Works on
    /// bytes: a `str` slice inside a multi-byte character would panic, and a panic is a trap
    /// that ends every call of the policy that meets such a name.
    pub fn parse_compact(s: &str, offset_secs: i64) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() != 15 || b[8] != b'_' || b.iter().enumerate().any(|(i, c)| i != 8 && !c.is_ascii_digit()) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
        DateTime { year: num(0..4) as i64, month: num(4..6), day: num(6..8), hour: num(9..11), minute: num(11..13), second: num(13..15) }
            .to_unix(offset_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHANGHAI: i64 = 8 * 3600;

    #[test]
    fn known_instants() {
        // (unix, offset, expected compact)
        let table = [
            (0, 0, "19700101_000000"),
            (0, SHANGHAI, "19700101_080000"),
            (1_762_191_000, SHANGHAI, "20251104_013000"), // the original README's example name
            (951_782_400, 0, "20000229_000000"),          // leap day of a century leap year
            (4_102_444_799, 0, "20991231_235959"),
            (-1, 0, "19691231_235959"),
            (1_709_251_199, SHANGHAI, "20240301_075959"),
        ];
        for (unix, off, want) in table {
            let dt = DateTime::from_unix(unix, off);
            assert_eq!(dt.compact(), want, "from_unix({unix}, {off})");
            assert_eq!(DateTime::parse_compact(want, off), Some(unix), "parse_compact({want})");
        }
    }

    #[test]
    fn round_trips_every_hour_over_years() {
        let mut t = 946_684_800; // 2000-01-01
        while t < 1_893_456_000 {
            let dt = DateTime::from_unix(t, SHANGHAI);
            assert_eq!(dt.to_unix(SHANGHAI), Some(t));
            t += 3_607; // odd step so every second/minute value occurs
        }
    }

    #[test]
    fn rejects_impossible_and_malformed() {
        for bad in [
            "20250230_010000", // Feb 30th
            "20230229_010000", // not a leap year
            "21000229_010000", // century, not a leap year
            "20251304_013000",
            "20251100_013000",
            "20251104_243000",
            "20251104_016000",
            "20251104_013060",
            "20251104-013000",
            "2025110_4013000",
            "20251104_01300",
            "2025110401300000",
            "+0251104_013000",
            "２0251104_013000",
            "2025年1_013000", // 15 bytes with `_` at byte 8, but `年` spans bytes 4..7
            "20251104_01300é",
            "é0251104_01300",
            "",
        ] {
            assert_eq!(DateTime::parse_compact(bad, 0), None, "{bad:?}");
        }
    }
}
