//! Reads a `.env` file the way systemd's `EnvironmentFile=` reads the same file (systemd.exec(5)),
//! so one file serves both: no `$` expansion (`EF__DB_PASSWORD=pa$word1` is that password),
//! `#`/`;` comment lines, single quotes verbatim, double quotes with shell escapes, a trailing
//! backslash continues the line, and `export ` is not special (systemd would keep it in the name).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct EnvFileError {
    pub line: usize,
    pub reason: String,
}

/// The assignments in `text`, in file order (a later one wins when the caller collects them).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let start_line = line;
        // Leading whitespace, then the key up to '=' or the end of the line.
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' {
            i += 1;
            line += 1;
            continue;
        }
        if chars[i] == '#' || chars[i] == ';' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && chars[i] != '\n' {
            i += 1;
        }
        if i >= chars.len() || chars[i] == '\n' {
            // No '=': systemd ignores the line.
            continue;
        }
        let key: String = chars[key_start..i].iter().collect::<String>().trim_end().to_string();
        i += 1; // '='
        let mut value = String::new();
        // Whitespace after '=' is dropped.
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        let mut pending_ws = String::new();
        while i < chars.len() && chars[i] != '\n' {
            let c = chars[i];
            match c {
                '\'' if value.is_empty() && pending_ws.is_empty() => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => return Err(EnvFileError { line: start_line, reason: format!("{key}: the single quote is not closed") }),
                            Some('\'') => break,
                            Some(&c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                value.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    skip_trailing(&chars, &mut i, &key, start_line)?;
                    break;
                }
                '"' if value.is_empty() && pending_ws.is_empty() => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => return Err(EnvFileError { line: start_line, reason: format!("{key}: the double quote is not closed") }),
                            Some('"') => break,
                            Some('\\') => match chars.get(i + 1) {
                                Some('\n') => {
                                    line += 1;
                                    i += 2;
                                }
                                Some(&e @ ('"' | '\\' | '`' | '$')) => {
                                    value.push(e);
                                    i += 2;
                                }
                                Some(&e) => {
                                    value.push('\\');
                                    value.push(e);
                                    i += 2;
                                }
                                None => i += 1,
                            },
                            Some(&c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                value.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    skip_trailing(&chars, &mut i, &key, start_line)?;
                    break;
                }
                '\\' => {
                    value.push_str(&std::mem::take(&mut pending_ws));
                    match chars.get(i + 1) {
                        Some('\n') => {
                            line += 1;
                            i += 2;
                        }
                        Some(&e) => {
                            value.push(e);
                            i += 2;
                        }
                        None => i += 1,
                    }
                }
                ' ' | '\t' | '\r' => {
                    pending_ws.push(c);
                    i += 1;
                }
                _ => {
                    value.push_str(&std::mem::take(&mut pending_ws));
                    value.push(c);
                    i += 1;
                }
            }
        }
        if let Some(name) = key.strip_prefix("export ") {
            return Err(EnvFileError {
                line: start_line,
                reason: format!("`export {}`: remove `export ` (systemd's EnvironmentFile= reads the same file and has no `export`)", name.trim()),
            });
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(EnvFileError { line: start_line, reason: format!("{key:?} is not a variable name (letters, digits and _)") });
        }
        out.push((key, value));
    }
    Ok(out)
}

/// After a closing quote only whitespace may follow on the line.
fn skip_trailing(chars: &[char], i: &mut usize, key: &str, line: usize) -> Result<(), EnvFileError> {
    while *i < chars.len() && chars[*i] != '\n' {
        if !matches!(chars[*i], ' ' | '\t' | '\r') {
            return Err(EnvFileError { line, reason: format!("{key}: text after the closing quote") });
        }
        *i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn one(text: &str) -> String {
        let vars = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(vars.len(), 1, "{text:?}: {vars:?}");
        vars[0].1.clone()
    }

    /// Pins issue 12 ("`.env` is parsed the way systemd's EnvironmentFile= reads it"): dotenvy
    /// expanded `$word1` to nothing, so this password reached PostgreSQL as `pa`.
    #[test]
    fn dollar_signs_are_literal() {
        assert_eq!(one("EF__DB_PASSWORD=pa$word1\n"), "pa$word1");
        assert_eq!(one("EF__DB_PASSWORD=\"pa$word1\"\n"), "pa$word1");
        assert_eq!(one("EF__DB_PASSWORD='pa${HOME}'\n"), "pa${HOME}");
    }

    #[test]
    fn systemd_rules() {
        // (file text, value) as systemd.exec(5) describes EnvironmentFile=.
        let table: &[(&str, &str)] = &[
            ("A=plain", "plain"),
            ("A=  spaced out  \n", "spaced out"),
            ("A=a\\ b\\\\c", "a b\\c"),
            ("A='sq \\n \" kept'", "sq \\n \" kept"),
            ("A=\"dq \\\" \\\\ \\$ \\n\"", "dq \" \\ $ \\n"),
            ("A=\"two\nlines\"", "two\nlines"),
            ("A=cont\\\ninued", "continued"),
            ("A=it's \"inner\" quotes", "it's \"inner\" quotes"),
            ("A=", ""),
            ("A=x # not a comment", "x # not a comment"),
            ("  A = v", "v"),
        ];
        for (text, want) in table {
            assert_eq!(one(text), *want, "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_lines_without_equals_are_skipped() {
        let vars = parse("# c\n; c\n\nnot an assignment\nA=1\r\nB=2\n").unwrap();
        assert_eq!(vars, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A=1\nB='open\n").unwrap_err().line, 2);
        assert!(parse("A=\"x\" y").unwrap_err().reason.contains("after the closing quote"));
        assert!(parse("BAD-NAME=1").unwrap_err().reason.contains("not a variable name"));
        assert!(parse("export A=1").unwrap_err().reason.contains("remove `export `"));
    }
}
