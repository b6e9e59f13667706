//! Which backups to keep: a small pure rule, in the spirit of rustic's `KeepOptions`.

/// Keep every backup younger than `within_secs`, and the `last` newest ones whatever their
/// age. Everything else expires. `last` is at least 1: the newest backup never expires, so a
/// run of failing backups cannot age out the last good one. A name dated more than
/// [`FUTURE_SLACK_SECS`] ahead is kept but takes none of the `last` places: otherwise one
/// such file (a wrong clock, a file put there by hand) would age out the real newest.
pub const FUTURE_SLACK_SECS: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub within_secs: i64,
    pub last: usize,
}

impl Keep {
    pub fn days(days: u32, last: usize) -> Self {
        Keep { within_secs: i64::from(days) * 86_400, last }
    }

    /// `backups` holds (name, creation time) of recognised backups only. Returns the names
    /// that expire at `now`, oldest first.
    pub fn expired<'a>(&self, backups: &'a [(String, i64)], now: i64) -> Vec<&'a str> {
        let future = now.saturating_add(FUTURE_SLACK_SECS);
        let mut sorted: Vec<&(String, i64)> = backups.iter().filter(|(_, t)| *t <= future).collect();
        // Newest first; the name breaks ties so the outcome never depends on listing order.
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let cutoff = now.saturating_sub(self.within_secs);
        let mut out: Vec<&str> = sorted
            .iter()
            .enumerate()
            .filter(|(rank, (_, created))| *rank >= self.last.max(1) && *created < cutoff)
            .map(|(_, (name, _))| name.as_str())
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_762_191_000;

    fn set(ages_days: &[i64]) -> Vec<(String, i64)> {
        ages_days.iter().map(|a| (format!("b{a:03}"), NOW - a * DAY)).collect()
    }

    #[test]
    fn table() {
        // (keep, ages of the backups in days, ages expected to expire)
        let table: &[(Keep, &[i64], &[i64])] = &[
            (Keep::days(7, 14), &[], &[]),
            (Keep::days(7, 14), &[0], &[]),
            // Twice a day for 10 days: 20 backups, 14 newest + everything within 7 days kept.
            (Keep::days(7, 3), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[8, 9, 10]),
            // All old: the newest `last` survive.
            (Keep::days(7, 3), &[40, 41, 42, 43, 44], &[43, 44]),
            (Keep::days(30, 1), &[31, 32, 33], &[32, 33]),
            // `last` 0 is treated as 1: the newest survives even when everything is old.
            (Keep { within_secs: 0, last: 0 }, &[5, 6], &[6]),
            // Window boundary: exactly 7 days old is still within (cutoff is exclusive).
            (Keep::days(7, 1), &[0, 7, 8], &[8]),
            // Backups "from the future" (clock skew) are kept, never expired.
            (Keep::days(7, 1), &[-1, 9], &[9]),
            // ... but more than a day ahead takes no `last` place: the real newest stays.
            (Keep::days(0, 1), &[-30, 9, 10], &[10]),
            (Keep::days(0, 2), &[-2, -30, 9, 10, 11], &[11]),
            (Keep::days(0, 2), &[1, 2, 3, 4], &[3, 4]),
        ];
        for (keep, ages, want) in table {
            let backups = set(ages);
            let got = keep.expired(&backups, NOW);
            let want: Vec<String> = want.iter().rev().map(|a| format!("b{a:03}")).collect();
            assert_eq!(got, want, "{keep:?} on ages {ages:?}");
        }
    }

    #[test]
    fn listing_order_does_not_matter() {
        let mut backups = set(&[12, 1, 30, 8, 0, 15, 9]);
        let want = Keep::days(7, 2).expired(&backups, NOW).iter().map(|s| s.to_string()).collect::<Vec<_>>();
        backups.reverse();
        let got = Keep::days(7, 2).expired(&backups, NOW);
        assert_eq!(got, want);
        assert_eq!(want, ["b030", "b015", "b012", "b009", "b008"]);
    }

    #[test]
    fn equal_times_break_ties_by_name() {
        let backups = vec![("a".to_string(), NOW - 40 * DAY), ("b".to_string(), NOW - 40 * DAY)];
        assert_eq!(Keep::days(7, 1).expired(&backups, NOW), ["a"]);
    }
}
