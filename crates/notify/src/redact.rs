//! Keeping credentials out of logs: error texts from reqwest, lettre and the remote services
//! pass through [`Redactor::scrub`] before they are logged.

/// The configured secrets, to be cut out of any text that is logged.
#[derive(Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

/// Shorter pieces would also match ordinary words (and say little about the secret).
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    /// Adds `secret`; for a URL also its path and query, which an error may quote alone, and
    /// the parts of them that look like tokens (a service may echo just the last segment).
    pub(crate) fn add(&mut self, secret: &str) {
        let mut pieces = vec![secret.to_string()];
        let mut rest = secret;
        if let Some((_, after_scheme)) = secret.split_once("://") {
            let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                pieces.push(userinfo.to_string());
                pieces.extend(userinfo.split_once(':').map(|(_, password)| password.to_string()));
            }
            rest = &after_scheme[authority.len()..];
            pieces.push(rest.to_string());
        }
        pieces.extend(rest.split(['/', '?', '&', '=', ':', '#']).filter(|part| looks_like_a_token(part)).map(str::to_string));
        for piece in pieces {
            let piece = piece.trim_end_matches('/');
            if piece.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|s| s == piece) {
                self.secrets.push(piece.to_string());
            }
        }
        // Longest first, so a URL is replaced whole before its path is looked for.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    #[cfg(test)]
    fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// Ids and keys, not words such as `services` or `hooks` (which would then be cut out of every
/// message): long, or with a digit in them.
fn looks_like_a_token(part: &str) -> bool {
    part.len() >= 16 || (part.len() >= 6 && part.bytes().any(|c| c.is_ascii_digit()))
}

/// An error and its causes on one line, each cause once (reqwest's and hyper's errors nest the
/// useful part, e.g. "connection refused", two levels down).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    one_line(&parts.join(": "), 500)
}

/// `text` on one line, at most `max` bytes (cut on a character boundary, marked with `…`).
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&line, max)
}

/// `text` cut to at most `max` bytes on a character boundary, `…` marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_urls_paths_and_tokens() {
        let mut r = Redactor::default();
        r.add("https://hooks.slack.com/services/T0/B0/xyzsecret");
        r.add("123456:tok-abc");
        r.add("https://user:pw1234@example.com/h");
        r.add("ab");
        let text = r.scrub(
            "POST https://hooks.slack.com/services/T0/B0/xyzsecret failed; path /services/T0/B0/xyzsecret; bot123456:tok-abc; user:pw1234; ab",
        );
        assert_eq!(text, "POST *** failed; path ***; bot***; ***; ab");
        assert_eq!(r.scrub("unknown token xyzsecret for services"), "unknown token xyzsecret for services");
    }

    #[test]
    fn token_like_parts_of_urls() {
        let mut r = Redactor::default();
        r.add("https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx");
        r.add("https://hc-ping.com/5f1e2d3c-aaaa-bbbb-cccc-0123456789ab");
        let text = r.scrub("services T01ABCDEF B02GHIJKL abcdefghijklmnopqrstuvwx 5f1e2d3c-aaaa-bbbb-cccc-0123456789ab hooks");
        assert_eq!(text, "services *** *** *** *** hooks", "{:?}", r.secrets());
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 100), "héllo");
        let t = truncate(&"é".repeat(100), 10);
        assert!(t.len() <= 10 && t.ends_with('…'), "{t}");
        assert_eq!(one_line("a\n  b\tc", 100), "a b c");
    }
}
