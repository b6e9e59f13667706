//! A streaming scanner for pg_dump's plain SQL format: splits the byte stream into top-level
//! statements, psql backslash meta-commands and COPY data, the way psql itself reads it
//! (quotes, dollar quotes, comments and parentheses tracked), so that restore can strip the
//! dump's own `\restrict` lines, filter owner/privilege statements, and hand independent
//! parts of the dump to parallel sessions.
//!
//! Every input byte appears in exactly one emitted Statement / Meta / Incomplete / CopyData /
//! CopyEnd event, in input order (Toc events are annotations only: their comment bytes stay in
//! the text of the event that follows them).
//!
//! The lexing rules are those of psql's `src/fe_utils/psqlscan.l` (PostgreSQL 15): `--` and
//! nested `/* */` comments, `'...'` strings (backslash escapes after a stand-alone `E`, or in
//! every plain string once `standard_conforming_strings` was turned off; `B'`, `X'` and `U&'`
//! strings never have them), a string continued after a newline (`E'a'\n'b'` is one string),
//! `"..."` identifiers, `$tag$` dollar quotes, parentheses, and psql's `BEGIN ... END` tracking
//! inside `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (SQL-standard bodies, `BEGIN ATOMIC`), whose
//! `;` do not end the statement either. `\;` and `\:` are statement text, as in psql.

use memchr::{memchr, memchr2, memmem, memrchr};

/// What a complete top-level statement does, as far as restore needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// `COPY <table> [(<cols>)] FROM stdin[ ...];` (keywords in any case): the lines that follow
    /// are COPY data (CopyData events) up to a `\.` line (CopyEnd). `table` is the table as
    /// written, unquoted: `"My Schema"."t ""x"""` gives `My Schema.t "x"`; `public.t` gives
    /// `public.t` (schema and name joined by '.', the way `format('%s.%s')` would show them).
    CopyFromStdin {
        table: String,
    },
    /// Any other COPY (`COPY BINARY t FROM stdin`, `COPY (query) TO stdout`, …): pg_dump never
    /// writes one, and psql may read what follows it as data where this scanner sees SQL.
    OtherCopy,
    /// A session setting every session of a restore must share: `SET [SESSION] name {=|TO} ...`,
    /// `RESET name`, `SET SESSION AUTHORIZATION ...` / `RESET SESSION AUTHORIZATION`
    /// (name `session_authorization`), `SET ROLE ...` (name `role`), and
    /// `SELECT pg_catalog.set_config('name', <value>, false);` (only with `false`, the
    /// session-wide form). `name` is lower-cased. `SET LOCAL ...` and `SET TRANSACTION ...` are
    /// `Other`. `SET TIME ZONE` gives `timezone`, `SET NAMES` `client_encoding`, `SET SCHEMA`
    /// `search_path`, `SET XML OPTION` `xmloption`, `RESET ALL` `all`.
    SessionSetting {
        name: String,
    },
    /// `ALTER <anything> OWNER TO <role>;` (what pg_dump's --no-owner leaves out).
    Owner,
    /// `GRANT ...`, `REVOKE ...`, `ALTER DEFAULT PRIVILEGES ...` (what --no-privileges leaves out).
    Privilege,
    Other,
}

/// A TOC comment pg_dump writes before each entry, seen outside quotes at the start of a
/// statement (and at the start of a line): `-- Name: t; Type: TABLE; Schema: public; Owner: app`
/// or `-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: app`.
/// (Older dumps may lack `Owner:` (then `owner` is empty; `Owner: -` is also common); fields are
/// taken as written, UTF-8 lossily; a trailing `; Tablespace: ...` is dropped. Schema `-` means
/// none.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub name: String,
    /// The `Type:` field: `TABLE`, `TABLE DATA`, `INDEX`, `CONSTRAINT`, `FK CONSTRAINT`,
    /// `SEQUENCE SET`, `COMMENT`, `ACL`, `BLOB`, `BLOBS`, `MATERIALIZED VIEW DATA`, ...
    pub kind: String,
    pub schema: String,
    pub owner: String,
    /// The comment read `-- Data for Name:` rather than `-- Name:`.
    pub data: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Annotation: a TOC comment was seen. Emitted as soon as the comment line is complete,
    /// before the Statement (or Meta, or final Incomplete) whose text contains the comment.
    Toc(Toc),
    /// A complete top-level statement: everything since the end of the previous event (leading
    /// whitespace and comments included) through the terminating `;` (psql ends a statement at a
    /// `;` outside quotes, comments and parentheses) and the rest of that line if it is only
    /// whitespace/newline (so that the text ends with the newline when the line ends there).
    /// A `CopyFromStdin` statement always runs to the end of its line, since its data starts
    /// on the next one.
    Statement { text: &'a [u8], kind: StatementKind },
    /// A backslash meta-command outside quotes, through the end of its line, newline included.
    /// When only whitespace and comments came since the previous event, `text` starts with
    /// them (as a Statement's does), otherwise it starts at the `\`. `command` is the word after
    /// the backslash (`restrict`, `unrestrict`, `!`, `copy`, `o`, `connect`, ...: letters, or
    /// the single non-letter character that follows the backslash, e.g. `!`). `arg` is the rest
    /// of the line, trimmed. Both are sub-slices of `text`.
    /// Statement text pending before it (psql keeps that in its query buffer) is emitted first
    /// as Incomplete.
    Meta { text: &'a [u8], command: &'a [u8], arg: &'a [u8] },
    /// Statement text that a meta-command or the end of the input cut short (psql would keep it
    /// in its query buffer / send it at end of input). Passed on, in order, as is. Never emitted
    /// for text that is only whitespace and comments, except at the end of the input (the
    /// trailing comments/whitespace after the last statement are emitted as Incomplete by
    /// `finish`, so no byte is lost).
    Incomplete { text: &'a [u8] },
    /// COPY data: one or more complete rows, each ending with `\n`, between a CopyFromStdin
    /// statement and its CopyEnd. (A last row without `\n` at the end of input is emitted by
    /// `finish` as CopyData without the newline.)
    CopyData(&'a [u8]),
    /// The `\.` line ending COPY data (`\.\n` or `\.\r\n`, or `\.` at end of input).
    CopyEnd(&'a [u8]),
}

/// Streaming: feed chunks of any size (a chunk may end anywhere, even inside a multi-byte
/// token such as `$tag$` or `--` or `\.`), get events. Memory is bounded by the longest single
/// statement or COPY row, not by the dump.
pub struct Scanner {
    /// The bytes not emitted yet: a partial statement (from the end of the previous event) or
    /// a partial COPY row. Empty most of the time, so that chunks are scanned where they lie.
    pending: Vec<u8>,
    lex: Lex,
    /// `\n\.`: in COPY data only a line starting with `\.` can end it, and searching for this
    /// pattern is much faster than looking at every line.
    copy_end: memmem::Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            pending: Vec::new(),
            lex: Lex {
                mode: Mode::Sql,
                scan: 0,
                at_line_start: true,
                std_strings: true,
                first_tok: None,
                paren: 0,
                begin_depth: 0,
                ident_count: 0,
                idents: [0; 4],
                dollar_tag: Vec::new(),
            },
            copy_end: memmem::Finder::new(b"\n\\.").into_owned(),
        }
    }

    /// Scans `data`, calling `emit` for every event completed by it. An error from `emit` stops
    /// the scan and is returned.
    pub fn feed<E>(&mut self, mut data: &[u8], emit: &mut impl FnMut(Event<'_>) -> Result<(), E>) -> Result<(), E> {
        if self.lex.mode == Mode::Copy && !self.pending.is_empty() {
            // Only the partial row needs copying: complete it, and scan the rest where it lies.
            let Some(nl) = memchr(b'\n', data) else {
                self.pending.extend_from_slice(data);
                return Ok(());
            };
            self.pending.extend_from_slice(&data[..=nl]);
            let done = self.lex.run(&self.copy_end, &self.pending, false, emit)?;
            debug_assert_eq!(done, self.pending.len());
            self.pending.clear();
            self.lex.scan = 0;
            self.lex.at_line_start = true;
            data = &data[nl + 1..];
        }
        if self.pending.is_empty() {
            let done = self.lex.run(&self.copy_end, data, false, emit)?;
            self.pending.extend_from_slice(&data[done..]);
        } else {
            self.pending.extend_from_slice(data);
            let done = self.lex.run(&self.copy_end, &self.pending, false, emit)?;
            self.pending.drain(..done);
        }
        Ok(())
    }

    /// End of input: emits what is pending (Incomplete text, or the last COPY row / CopyEnd).
    pub fn finish<E>(&mut self, emit: &mut impl FnMut(Event<'_>) -> Result<(), E>) -> Result<(), E> {
        let done = self.lex.run(&self.copy_end, &self.pending, true, emit)?;
        if done < self.pending.len() {
            emit(Event::Incomplete { text: &self.pending[done..] })?;
        }
        self.pending.clear();
        self.lex.scan = 0;
        Ok(())
    }

    /// Bytes held back: a statement or COPY row not complete yet.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// True while inside COPY data (the input ended there if this is true after `finish`...
    /// i.e. the dump is truncated).
    pub fn in_copy(&self) -> bool {
        self.lex.mode == Mode::Copy
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sql,
    Str { esc: bool },
    QuotedIdent,
    Dollar,
    BlockComment { depth: u32 },
    Copy,
}

/// The lexer state between two bytes of the input. `run` stops either at the end of the text
/// or before a token it cannot classify without the bytes that follow (`--`, `$tag$`, `E'`, a
/// word, a `;` whose line goes on...): it resumes there with more input, so the events never
/// depend on where the chunks were cut.
struct Lex {
    mode: Mode,
    /// Where scanning resumes, as an offset from the first pending byte.
    scan: usize,
    /// The byte before the first pending one was a newline (or there was none).
    at_line_start: bool,
    /// psql's `std_strings`: off after `SET standard_conforming_strings = off`.
    std_strings: bool,
    /// Offset (from the first pending byte) of the current statement's first token other than
    /// whitespace and comments.
    first_tok: Option<usize>,
    // psql's own statement state: a `;` ends a statement only outside parentheses and outside
    // BEGIN ... END of a CREATE FUNCTION/PROCEDURE.
    paren: u32,
    begin_depth: u32,
    ident_count: u32,
    idents: [u8; 4],
    /// The `$tag$` of the dollar quote we are in.
    dollar_tag: Vec<u8>,
}

enum Marker {
    End(usize),
    NotEnd,
    NeedMore,
}

enum Continued {
    /// The string goes on after the quote at this offset.
    At(usize),
    No,
    NeedMore,
}

impl Lex {
    fn significant(&mut self, at: usize) {
        if self.first_tok.is_none() {
            self.first_tok = Some(at);
        }
    }

    fn reset_statement(&mut self) {
        self.first_tok = None;
        self.paren = 0;
        self.begin_depth = 0;
        self.ident_count = 0;
    }

    /// psql's heuristic for SQL-standard function bodies (psqlscan.l, `{identifier}` rule).
    fn identifier(&mut self, word: &[u8]) {
        if self.ident_count == 0 {
            self.idents = [0; 4];
        }
        if (self.ident_count as usize) < self.idents.len()
            && [&b"create"[..], b"function", b"procedure", b"or", b"replace"].iter().any(|k| word.eq_ignore_ascii_case(k))
        {
            self.idents[self.ident_count as usize] = word[0].to_ascii_lowercase();
        }
        self.ident_count = self.ident_count.saturating_add(1);
        let id = self.idents;
        if id[0] == b'c'
            && (id[1] == b'f' || id[1] == b'p' || (id[1] == b'o' && id[2] == b'r' && (id[3] == b'f' || id[3] == b'p')))
            && self.paren == 0
        {
            if word.eq_ignore_ascii_case(b"begin") {
                self.begin_depth += 1;
            } else if word.eq_ignore_ascii_case(b"case") {
                if self.begin_depth >= 1 {
                    self.begin_depth += 1;
                }
            } else if word.eq_ignore_ascii_case(b"end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
    }

    /// Scans `text` (whose first byte is the first pending one) from `self.scan`, emitting the
    /// events it completes. Returns the offset of the first byte not emitted.
    fn run<E>(
        &mut self,
        copy_end: &memmem::Finder<'_>,
        text: &[u8],
        eof: bool,
        emit: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let len = text.len();
        let mut start = 0;
        let mut i = self.scan;
        'outer: loop {
            match self.mode {
                Mode::Copy => {
                    start = self.copy(copy_end, text, start, eof, emit)?;
                    i = start;
                    if self.mode == Mode::Copy {
                        break 'outer;
                    }
                }
                Mode::Str { esc } => loop {
                    let found = if esc { memchr2(b'\'', b'\\', &text[i..]) } else { memchr(b'\'', &text[i..]) };
                    let Some(k) = found else {
                        i = len;
                        break 'outer;
                    };
                    let q = i + k;
                    if q + 1 >= len && !eof {
                        i = q;
                        break 'outer;
                    }
                    if text[q] == b'\\' {
                        i = (q + 2).min(len);
                    } else if text.get(q + 1) == Some(&b'\'') {
                        i = q + 2;
                    } else {
                        match continued(text, q + 1, eof) {
                            Continued::At(j) => i = j + 1,
                            Continued::No => {
                                i = q + 1;
                                self.mode = Mode::Sql;
                                continue 'outer;
                            }
                            Continued::NeedMore => {
                                i = q;
                                break 'outer;
                            }
                        }
                    }
                },
                Mode::QuotedIdent => loop {
                    let Some(k) = memchr(b'"', &text[i..]) else {
                        i = len;
                        break 'outer;
                    };
                    let q = i + k;
                    if q + 1 >= len && !eof {
                        i = q;
                        break 'outer;
                    }
                    if text.get(q + 1) == Some(&b'"') {
                        i = q + 2;
                    } else {
                        i = q + 1;
                        self.mode = Mode::Sql;
                        continue 'outer;
                    }
                },
                Mode::Dollar => loop {
                    let Some(k) = memchr(b'$', &text[i..]) else {
                        i = len;
                        break 'outer;
                    };
                    let q = i + k;
                    let tag_end = q + self.dollar_tag.len();
                    if tag_end > len {
                        i = if eof { len } else { q };
                        break 'outer;
                    }
                    if text[q..tag_end] == self.dollar_tag[..] {
                        i = tag_end;
                        self.mode = Mode::Sql;
                        continue 'outer;
                    }
                    i = q + 1;
                },
                Mode::BlockComment { mut depth } => loop {
                    let Some(k) = memchr2(b'*', b'/', &text[i..]) else {
                        i = len;
                        break 'outer;
                    };
                    let q = i + k;
                    if q + 1 >= len {
                        i = if eof { len } else { q };
                        break 'outer;
                    }
                    match (text[q], text[q + 1]) {
                        (b'*', b'/') => {
                            i = q + 2;
                            if depth == 0 {
                                self.mode = Mode::Sql;
                                continue 'outer;
                            }
                            depth -= 1;
                            self.mode = Mode::BlockComment { depth };
                        }
                        (b'/', b'*') => {
                            i = q + 2;
                            depth += 1;
                            self.mode = Mode::BlockComment { depth };
                        }
                        _ => i = q + 1,
                    }
                },
                Mode::Sql => loop {
                    if i >= len {
                        break 'outer;
                    }
                    let b = text[i];
                    match CLASS[b as usize] {
                        SPACE => {
                            i += 1;
                            while i < len && CLASS[text[i] as usize] == SPACE {
                                i += 1;
                            }
                        }
                        IDENT => {
                            // E'..', B'..', X'..', N'..', U&'..': a prefix only where a word starts.
                            let prefix = match b | 0x20 {
                                b'e' => Some((1, true)),
                                b'b' | b'x' => Some((1, false)),
                                b'n' => Some((1, !self.std_strings)),
                                b'u' => Some((2, false)),
                                _ => None,
                            };
                            if let Some((n, esc)) = prefix {
                                if i + n >= len && !eof {
                                    break 'outer;
                                }
                                let quoted = if n == 1 { text.get(i + 1) == Some(&b'\'') } else { text.get(i + 1..i + 3) == Some(b"&'") };
                                if quoted {
                                    self.significant(i - start);
                                    i += n + 1;
                                    self.mode = Mode::Str { esc };
                                    continue 'outer;
                                }
                            }
                            let mut j = i + 1;
                            while j < len && IDENT_CONT[text[j] as usize] {
                                j += 1;
                            }
                            if j == len && !eof {
                                break 'outer;
                            }
                            self.significant(i - start);
                            self.identifier(&text[i..j]);
                            i = j;
                        }
                        DIGIT => {
                            let mut j = i + 1;
                            while j < len && text[j].is_ascii_digit() {
                                j += 1;
                            }
                            if j == len && !eof {
                                break 'outer;
                            }
                            self.significant(i - start);
                            i = j;
                        }
                        QUOTE => {
                            self.significant(i - start);
                            i += 1;
                            self.mode = Mode::Str { esc: !self.std_strings };
                            continue 'outer;
                        }
                        DQUOTE => {
                            self.significant(i - start);
                            i += 1;
                            self.mode = Mode::QuotedIdent;
                            continue 'outer;
                        }
                        DOLLAR => {
                            if i + 1 >= len && !eof {
                                break 'outer;
                            }
                            match text.get(i + 1) {
                                Some(d) if d.is_ascii_digit() => {
                                    // `$1`: a parameter, not a quote.
                                    let mut j = i + 2;
                                    while j < len && text[j].is_ascii_digit() {
                                        j += 1;
                                    }
                                    if j == len && !eof {
                                        break 'outer;
                                    }
                                    self.significant(i - start);
                                    i = j;
                                }
                                Some(&c) if c == b'$' || CLASS[c as usize] == IDENT => {
                                    let mut j = i + 1;
                                    if c != b'$' {
                                        j += 1;
                                        while j < len && DOLQ_CONT[text[j] as usize] {
                                            j += 1;
                                        }
                                        if j == len && !eof {
                                            break 'outer;
                                        }
                                    }
                                    self.significant(i - start);
                                    if text.get(j) == Some(&b'$') {
                                        self.dollar_tag.clear();
                                        self.dollar_tag.extend_from_slice(&text[i..=j]);
                                        i = j + 1;
                                        self.mode = Mode::Dollar;
                                        continue 'outer;
                                    }
                                    i = j;
                                }
                                _ => {
                                    self.significant(i - start);
                                    i += 1;
                                }
                            }
                        }
                        DASH => {
                            if i + 1 >= len && !eof {
                                break 'outer;
                            }
                            if text.get(i + 1) != Some(&b'-') {
                                self.significant(i - start);
                                i += 1;
                                continue;
                            }
                            let end = match memchr(b'\n', &text[i + 2..]) {
                                Some(k) => i + 2 + k,
                                None if eof => len,
                                None => break 'outer,
                            };
                            let line_start = if i > 0 { text[i - 1] == b'\n' } else { self.at_line_start };
                            if self.first_tok.is_none() && line_start {
                                if let Some(toc) = parse_toc(&text[i + 2..end]) {
                                    emit(Event::Toc(toc))?;
                                }
                            }
                            i = end;
                        }
                        SLASH => {
                            if i + 1 >= len && !eof {
                                break 'outer;
                            }
                            if text.get(i + 1) == Some(&b'*') {
                                i += 2;
                                self.mode = Mode::BlockComment { depth: 0 };
                                continue 'outer;
                            }
                            self.significant(i - start);
                            i += 1;
                        }
                        BACKSLASH => {
                            if i + 1 >= len && !eof {
                                break 'outer;
                            }
                            match text.get(i + 1) {
                                // psql puts a bare `:` into the query buffer. (`\;` too, joining
                                // two statements into one query; pg_dump never writes it, and a
                                // COPY joined that way would read data this scanner takes for SQL,
                                // so it is reported as a meta-command, which restore refuses.)
                                Some(b':') => {
                                    self.significant(i - start);
                                    i += 2;
                                }
                                _ => {
                                    let end = match memchr(b'\n', &text[i + 1..]) {
                                        Some(k) => i + 1 + k + 1,
                                        None if eof => len,
                                        None => break 'outer,
                                    };
                                    if self.first_tok.is_some() {
                                        emit(Event::Incomplete { text: &text[start..i] })?;
                                        start = i;
                                    }
                                    let (command, arg) = meta_parts(&text[i..end]);
                                    emit(Event::Meta { text: &text[start..end], command, arg })?;
                                    // psql keeps its parenthesis/BEGIN state across a meta-command.
                                    self.first_tok = None;
                                    start = end;
                                    i = end;
                                }
                            }
                        }
                        SEMI if self.paren == 0 && self.begin_depth == 0 => {
                            self.significant(i - start);
                            let mut j = i + 1;
                            while j < len && matches!(text[j], b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c') {
                                j += 1;
                            }
                            if j == len && !eof {
                                break 'outer;
                            }
                            let blank_rest = j == len || text[j] == b'\n';
                            let first = start + self.first_tok.unwrap_or(i - start);
                            let (kind, std_strings) = classify(&text[first..=i], self.std_strings);
                            let end = if blank_rest {
                                (j + 1).min(len)
                            } else if matches!(kind, StatementKind::CopyFromStdin { .. }) {
                                match memchr(b'\n', &text[i + 1..]) {
                                    Some(k) => i + 1 + k + 1,
                                    None if eof => len,
                                    None => break 'outer,
                                }
                            } else {
                                i + 1
                            };
                            if let Some(on) = std_strings {
                                self.std_strings = on;
                            }
                            let copy = matches!(kind, StatementKind::CopyFromStdin { .. });
                            emit(Event::Statement { text: &text[start..end], kind })?;
                            self.reset_statement();
                            start = end;
                            i = end;
                            if copy {
                                self.mode = Mode::Copy;
                                continue 'outer;
                            }
                        }
                        OPEN => {
                            self.significant(i - start);
                            self.paren += 1;
                            i += 1;
                        }
                        CLOSE => {
                            self.significant(i - start);
                            self.paren = self.paren.saturating_sub(1);
                            i += 1;
                        }
                        _ => {
                            self.significant(i - start);
                            i += 1;
                        }
                    }
                },
            }
        }
        self.scan = i - start;
        if start > 0 {
            self.at_line_start = text[start - 1] == b'\n';
        }
        Ok(start)
    }

    /// COPY data from `start` (a line start): emits the complete rows and the end marker if it
    /// is there. Returns where the unemitted bytes (a partial row) begin.
    fn copy<E>(
        &mut self,
        copy_end: &memmem::Finder<'_>,
        text: &[u8],
        start: usize,
        eof: bool,
        emit: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let len = text.len();
        let mut line = start;
        loop {
            match end_marker(&text[line..], eof) {
                Marker::End(n) => {
                    if line > start {
                        emit(Event::CopyData(&text[start..line]))?;
                    }
                    emit(Event::CopyEnd(&text[line..line + n]))?;
                    self.mode = Mode::Sql;
                    return Ok(line + n);
                }
                Marker::NeedMore => {
                    if line > start {
                        emit(Event::CopyData(&text[start..line]))?;
                    }
                    return Ok(line);
                }
                Marker::NotEnd => {}
            }
            match copy_end.find(&text[line..]) {
                Some(k) => line += k + 1,
                None => break,
            }
        }
        let rows_end = match memrchr(b'\n', &text[line..]) {
            Some(k) => line + k + 1,
            None => line,
        };
        if rows_end > start {
            emit(Event::CopyData(&text[start..rows_end]))?;
        }
        if eof && rows_end < len {
            emit(Event::CopyData(&text[rows_end..]))?;
            return Ok(len);
        }
        Ok(rows_end)
    }
}

/// Whether the line at the start of `r` is psql's end of COPY data: exactly `\.` (psql's
/// copy.c compares whole lines with `\.\n` and `\.\r\n`).
fn end_marker(r: &[u8], eof: bool) -> Marker {
    let more = if eof { Marker::NotEnd } else { Marker::NeedMore };
    match r {
        [] | [b'\\'] => more,
        [b'\\', b'.'] => {
            if eof {
                Marker::End(2)
            } else {
                Marker::NeedMore
            }
        }
        [b'\\', b'.', b'\n', ..] => Marker::End(3),
        [b'\\', b'.', b'\r'] => more,
        [b'\\', b'.', b'\r', b'\n', ..] => Marker::End(4),
        _ => Marker::NotEnd,
    }
}

/// After a string's closing quote at `e - 1`: psql's `{quotecontinue}`, i.e. whitespace and
/// `--` comments that include a newline, then a quote, continue the same string.
fn continued(text: &[u8], mut j: usize, eof: bool) -> Continued {
    let more = if eof { Continued::No } else { Continued::NeedMore };
    let mut newline = false;
    loop {
        let Some(&b) = text.get(j) else { return more };
        match b {
            b' ' | b'\t' | b'\x0c' => j += 1,
            b'\n' | b'\r' => {
                newline = true;
                j += 1;
            }
            b'-' => match text.get(j + 1) {
                None => return more,
                Some(b'-') => match memchr2(b'\n', b'\r', &text[j + 2..]) {
                    Some(k) => j += 2 + k,
                    None => return more,
                },
                Some(_) => return Continued::No,
            },
            b'\'' if newline => return Continued::At(j),
            _ => return Continued::No,
        }
    }
}

fn meta_parts(line: &[u8]) -> (&[u8], &[u8]) {
    let rest = &line[1..];
    let n = match rest.first() {
        Some(c) if c.is_ascii_alphabetic() => rest.iter().take_while(|c| c.is_ascii_alphabetic()).count(),
        Some(c) if !c.is_ascii_whitespace() => 1,
        _ => 0,
    };
    (&rest[..n], rest[n..].trim_ascii())
}

/// `comment` is what follows the `--`.
fn parse_toc(comment: &[u8]) -> Option<Toc> {
    let s = comment.strip_suffix(b"\r").unwrap_or(comment);
    let s = s.strip_prefix(b" ")?;
    let (data, rest) = match s.strip_prefix(b"Data for Name: ") {
        Some(r) => (true, r),
        None => (false, s.strip_prefix(b"Name: ")?),
    };
    // A name may itself contain "; Type: "; the type is always upper-case words.
    let mut from = 0;
    let (name, kind, after) = loop {
        let t = from + memmem::find(&rest[from..], b"; Type: ")?;
        let tail = &rest[t + 8..];
        if let Some(sc) = memmem::find(tail, b"; Schema: ") {
            let kind = &tail[..sc];
            if !kind.is_empty() && kind.iter().all(|c| c.is_ascii_uppercase() || *c == b' ') {
                break (&rest[..t], kind, &tail[sc + 10..]);
            }
        }
        from = t + 1;
    };
    let after = match memmem::rfind(after, b"; Tablespace: ") {
        Some(k) => &after[..k],
        None => after,
    };
    let (schema, owner) = match memmem::rfind(after, b"; Owner: ") {
        Some(k) => (&after[..k], &after[k + 9..]),
        None => (after, &b""[..]),
    };
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(Toc { name: s(name), kind: s(kind), schema: s(schema), owner: s(owner), data })
}

// Byte classes of the SQL state.
const OTHER: u8 = 0;
const SPACE: u8 = 1;
const IDENT: u8 = 2;
const DIGIT: u8 = 3;
const QUOTE: u8 = 4;
const DQUOTE: u8 = 5;
const DOLLAR: u8 = 6;
const DASH: u8 = 7;
const SLASH: u8 = 8;
const BACKSLASH: u8 = 9;
const SEMI: u8 = 10;
const OPEN: u8 = 11;
const CLOSE: u8 = 12;

static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            // psql's {space} (PostgreSQL 15 has no \v in it, but \v is harmless either way).
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => SPACE,
            b'A'..=b'Z' | b'a'..=b'z' | b'_' | 0x80..=0xff => IDENT,
            b'0'..=b'9' => DIGIT,
            b'\'' => QUOTE,
            b'"' => DQUOTE,
            b'$' => DOLLAR,
            b'-' => DASH,
            b'/' => SLASH,
            b'\\' => BACKSLASH,
            b';' => SEMI,
            b'(' => OPEN,
            b')' => CLOSE,
            _ => OTHER,
        };
        b += 1;
    }
    t
};

/// psql's {ident_cont}: letters, digits, `_`, `$` and non-ASCII bytes.
static IDENT_CONT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(CLASS[b], IDENT | DIGIT) || b == b'$' as usize;
        b += 1;
    }
    t
};

/// psql's {dolq_cont}: like an identifier, without `$`.
static DOLQ_CONT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = matches!(CLASS[b], IDENT | DIGIT);
        b += 1;
    }
    t
};

// ---------------------------------------------------------------------------------------------
// Classification of a complete statement. It re-reads only the statements whose first word
// needs it (COPY, SET, RESET, SELECT, ALTER), so DDL is still read about once.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    Word,
    QuotedIdent,
    /// A string literal; `esc`: backslash escapes apply.
    Str {
        esc: bool,
    },
    Punct(u8),
    /// Numbers, parameters, dollar-quoted strings, `\;`.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    t: T,
    s: usize,
    e: usize,
}

/// Tokens of a complete statement (the text begins at a token start, outside quotes).
struct Tokens<'a> {
    text: &'a [u8],
    i: usize,
    std_strings: bool,
}

impl<'a> Tokens<'a> {
    /// End (after the closing quote) of a string whose body starts at `i`.
    fn string_end(&self, mut i: usize, esc: bool) -> usize {
        let text = self.text;
        loop {
            let found = if esc { memchr2(b'\'', b'\\', &text[i..]) } else { memchr(b'\'', &text[i..]) };
            let Some(k) = found else { return text.len() };
            let q = i + k;
            if text[q] == b'\\' {
                i = (q + 2).min(text.len());
            } else if text.get(q + 1) == Some(&b'\'') {
                i = q + 2;
            } else {
                match continued(text, q + 1, true) {
                    Continued::At(j) => i = j + 1,
                    _ => return q + 1,
                }
            }
        }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let text = self.text;
        let len = text.len();
        loop {
            let s = self.i;
            let &b = text.get(s)?;
            let next = text.get(s + 1).copied();
            let (t, e) = match CLASS[b as usize] {
                SPACE => {
                    self.i += 1;
                    continue;
                }
                DASH if next == Some(b'-') => {
                    self.i = memchr(b'\n', &text[s..]).map_or(len, |k| s + k);
                    continue;
                }
                SLASH if next == Some(b'*') => {
                    let mut depth = 0u32;
                    let mut i = s + 2;
                    self.i = loop {
                        let Some(k) = memchr2(b'*', b'/', &text[i..]) else { break len };
                        let q = i + k;
                        match (text[q], text.get(q + 1)) {
                            (b'*', Some(b'/')) if depth == 0 => break q + 2,
                            (b'*', Some(b'/')) => {
                                depth -= 1;
                                i = q + 2;
                            }
                            (b'/', Some(b'*')) => {
                                depth += 1;
                                i = q + 2;
                            }
                            _ => i = q + 1,
                        }
                    };
                    continue;
                }
                IDENT => {
                    let esc = match b | 0x20 {
                        b'e' if next == Some(b'\'') => Some(true),
                        b'b' | b'x' if next == Some(b'\'') => Some(false),
                        b'n' if next == Some(b'\'') => Some(!self.std_strings),
                        b'u' if text.get(s + 1..s + 3) == Some(b"&'") => Some(false),
                        _ => None,
                    };
                    match esc {
                        Some(esc) => {
                            let body = if b | 0x20 == b'u' { s + 3 } else { s + 2 };
                            (T::Str { esc }, self.string_end(body, esc))
                        }
                        None => {
                            let n = text[s..].iter().take_while(|c| IDENT_CONT[**c as usize]).count();
                            (T::Word, s + n)
                        }
                    }
                }
                DIGIT => (T::Other, s + text[s..].iter().take_while(|c| c.is_ascii_digit()).count()),
                QUOTE => (T::Str { esc: !self.std_strings }, self.string_end(s + 1, !self.std_strings)),
                DQUOTE => {
                    let mut i = s + 1;
                    let e = loop {
                        let Some(k) = memchr(b'"', &text[i..]) else { break len };
                        let q = i + k;
                        if text.get(q + 1) == Some(&b'"') {
                            i = q + 2;
                        } else {
                            break q + 1;
                        }
                    };
                    (T::QuotedIdent, e)
                }
                DOLLAR => match next {
                    Some(d) if d.is_ascii_digit() => (T::Other, s + 1 + text[s + 1..].iter().take_while(|c| c.is_ascii_digit()).count()),
                    Some(c) if c == b'$' || CLASS[c as usize] == IDENT => {
                        let mut j = s + 1;
                        if c != b'$' {
                            j += 1 + text[s + 2..].iter().take_while(|c| DOLQ_CONT[**c as usize]).count();
                        }
                        if text.get(j) == Some(&b'$') {
                            let tag = &text[s..=j];
                            let e = memmem::find(&text[j + 1..], tag).map_or(len, |k| j + 1 + k + tag.len());
                            (T::Other, e)
                        } else {
                            (T::Other, j)
                        }
                    }
                    _ => (T::Other, s + 1),
                },
                BACKSLASH => (T::Other, (s + 2).min(len)),
                _ => (T::Punct(b), s + 1),
            };
            self.i = e;
            return Some(Tok { t, s, e });
        }
    }
}

fn classify(text: &[u8], std_strings: bool) -> (StatementKind, Option<bool>) {
    let mut toks = Tokens { text, i: 0, std_strings };
    let Some(first) = toks.next() else { return (StatementKind::Other, None) };
    if first.t != T::Word {
        return (StatementKind::Other, None);
    }
    let w = &text[first.s..first.e];
    let is = |k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    if is("grant") || is("revoke") {
        (StatementKind::Privilege, None)
    } else if is("copy") {
        match copy_kind(text, &toks.collect::<Vec<_>>()) {
            StatementKind::Other => (StatementKind::OtherCopy, None),
            kind => (kind, None),
        }
    } else if is("set") {
        setting(text, &toks.take(12).collect::<Vec<_>>(), false)
    } else if is("reset") {
        setting(text, &toks.take(12).collect::<Vec<_>>(), true)
    } else if is("select") {
        set_config(text, toks)
    } else if is("alter") {
        (alter_kind(text, &toks.collect::<Vec<_>>()), None)
    } else {
        (StatementKind::Other, None)
    }
}

fn word_is(text: &[u8], tok: Option<&Tok>, k: &str) -> bool {
    tok.is_some_and(|t| t.t == T::Word && text[t.s..t.e].eq_ignore_ascii_case(k.as_bytes()))
}

fn punct_is(tok: Option<&Tok>, c: u8) -> bool {
    tok.is_some_and(|t| t.t == T::Punct(c))
}

/// An identifier as PostgreSQL would name it: quotes removed, `""` undoubled.
fn ident_name(text: &[u8], t: &Tok) -> Option<Vec<u8>> {
    match t.t {
        T::Word => Some(text[t.s..t.e].to_vec()),
        T::QuotedIdent if t.e >= t.s + 2 && text[t.e - 1] == b'"' => {
            let mut out = Vec::with_capacity(t.e - t.s);
            let inner = &text[t.s + 1..t.e - 1];
            let mut k = 0;
            while k < inner.len() {
                out.push(inner[k]);
                k += if inner[k] == b'"' { 2 } else { 1 };
            }
            Some(out)
        }
        _ => None,
    }
}

/// The value of a string literal token (quotes removed, `''` undoubled; backslash escapes are
/// only undone for the simple `\x` → `x` case, enough for setting values such as `'off'`).
fn string_value(text: &[u8], t: &Tok) -> Option<Vec<u8>> {
    let T::Str { esc } = t.t else { return None };
    let open = t.s + memchr(b'\'', &text[t.s..t.e])?;
    let inner = text.get(open + 1..t.e.checked_sub(1)?)?;
    let mut out = Vec::new();
    let mut k = 0;
    while k < inner.len() {
        match inner[k] {
            b'\\' if esc && k + 1 < inner.len() => {
                out.push(inner[k + 1]);
                k += 2;
            }
            b'\'' => {
                // `''`, or a string continued over a newline: keep the next segment's bytes.
                let next = inner[k + 1..].iter().position(|c| *c == b'\'').map_or(inner.len(), |p| k + 1 + p);
                if next == k + 1 {
                    out.push(b'\'');
                }
                k = next + 1;
            }
            c => {
                out.push(c);
                k += 1;
            }
        }
    }
    Some(out)
}

/// A possibly qualified name starting at token `k`: the name joined by '.' (the form of
/// [`StatementKind::CopyFromStdin`]'s `table`) and the index of the token after it.
fn qualified_name(text: &[u8], v: &[Tok], mut k: usize) -> Option<(String, usize)> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    loop {
        parts.push(v.get(k).and_then(|t| ident_name(text, t))?);
        k += 1;
        if !punct_is(v.get(k), b'.') {
            break;
        }
        k += 1;
    }
    Some((String::from_utf8_lossy(&parts.join(&b'.')).into_owned(), k))
}

/// The table an index or key build works on, named as [`StatementKind::CopyFromStdin`] names
/// the table a COPY loads: `CREATE [UNIQUE] INDEX name ON [ONLY] table …` or
/// `ALTER TABLE [ONLY] table …` (pg_dump's forms for `INDEX` and `CONSTRAINT` entries). None for
/// any other statement.
pub fn build_table(text: &[u8]) -> Option<String> {
    let v: Vec<Tok> = Tokens { text, i: 0, std_strings: true }.take(16).collect();
    let w = |k: usize, s: &str| word_is(text, v.get(k), s);
    let at = if w(0, "create") {
        let k = if w(1, "unique") { 2 } else { 1 };
        if !w(k, "index") {
            return None;
        }
        // `INDEX name ON`: pg_dump always names the index.
        let (_, after) = qualified_name(text, &v, k + 1)?;
        if !w(after, "on") {
            return None;
        }
        after + 1
    } else if w(0, "alter") && w(1, "table") {
        2
    } else {
        return None;
    };
    let at = if w(at, "only") { at + 1 } else { at };
    qualified_name(text, &v, at).map(|(name, _)| name)
}

/// True for the statements pg_dump writes after the tables' rows that read and write no table:
/// `SELECT pg_catalog.setval(…);` (`SEQUENCE SET`), `SELECT pg_catalog.lo_open|lowrite|lo_close(…);`,
/// `BEGIN;` and `COMMIT;` (`BLOBS`) — with literal arguments only (numbers, strings,
/// `true`/`false`). A TOC comment may say anything; this looks at the statement itself.
pub fn touches_no_table(text: &[u8]) -> bool {
    let v: Vec<Tok> = Tokens { text, i: 0, std_strings: true }.collect();
    let w = |k: usize, s: &str| word_is(text, v.get(k), s);
    if v.len() == 2 && (w(0, "begin") || w(0, "commit")) && punct_is(v.get(1), b';') {
        return true;
    }
    let n = v.len();
    if n < 7 || !w(0, "select") || !w(1, "pg_catalog") || !punct_is(v.get(2), b'.') || !punct_is(v.get(4), b'(') {
        return false;
    }
    if !["setval", "lo_open", "lowrite", "lo_close"].iter().any(|f| w(3, f)) {
        return false;
    }
    if !punct_is(v.get(n - 1), b';') || !punct_is(v.get(n - 2), b')') {
        return false;
    }
    v[5..n - 2].iter().enumerate().all(|(k, t)| match t.t {
        T::Punct(b',') => k % 2 == 1,
        T::Str { .. } | T::Other => k % 2 == 0,
        T::Word => k % 2 == 0 && (w(5 + k, "true") || w(5 + k, "false")),
        _ => false,
    })
}

fn copy_kind(text: &[u8], v: &[Tok]) -> StatementKind {
    let Some((table, mut k)) = qualified_name(text, v, 0) else { return StatementKind::Other };
    if punct_is(v.get(k), b'(') {
        let mut depth = 0;
        loop {
            match v.get(k).map(|t| t.t) {
                None => return StatementKind::Other,
                Some(T::Punct(b'(')) => depth += 1,
                Some(T::Punct(b')')) => {
                    depth -= 1;
                    if depth == 0 {
                        k += 1;
                        break;
                    }
                }
                Some(_) => {}
            }
            k += 1;
        }
    }
    if word_is(text, v.get(k), "from") && word_is(text, v.get(k + 1), "stdin") {
        StatementKind::CopyFromStdin { table }
    } else {
        StatementKind::Other
    }
}

/// `SET ...` / `RESET ...` (`v` are the tokens after the first word). Also returns the new
/// `standard_conforming_strings` when the statement sets it.
fn setting(text: &[u8], v: &[Tok], reset: bool) -> (StatementKind, Option<bool>) {
    let w = |k: usize, s: &str| word_is(text, v.get(k), s);
    let session = |name: &str| StatementKind::SessionSetting { name: name.to_string() };
    if w(0, "local") || w(0, "transaction") || w(0, "constraints") {
        return (StatementKind::Other, None);
    }
    let mut k = 0;
    if w(0, "session") {
        if w(1, "authorization") {
            return (session("session_authorization"), None);
        }
        if w(1, "characteristics") {
            return (StatementKind::Other, None);
        }
        // `SET SESSION name ...`; `RESET SESSION` alone is not valid SQL.
        k = 1;
    }
    if reset && w(k, "all") {
        return (session("all"), Some(true));
    }
    let special = [
        ("role", "", "role"),
        ("time", "zone", "timezone"),
        ("names", "", "client_encoding"),
        ("schema", "", "search_path"),
        ("xml", "option", "xmloption"),
    ];
    for (a, b, name) in special {
        if w(k, a) && (b.is_empty() || w(k + 1, b)) {
            return (session(name), None);
        }
    }
    let Some(mut name) = v.get(k).and_then(|t| ident_name(text, t)) else { return (StatementKind::Other, None) };
    k += 1;
    // Custom settings are dotted: `SET myext.flag = on`.
    while punct_is(v.get(k), b'.') {
        let Some(part) = v.get(k + 1).and_then(|t| ident_name(text, t)) else { break };
        name.push(b'.');
        name.extend_from_slice(&part);
        k += 2;
    }
    name.make_ascii_lowercase();
    let name = String::from_utf8_lossy(&name).into_owned();
    let mut std_strings = None;
    if name == "standard_conforming_strings" {
        std_strings = if reset {
            Some(true)
        } else if punct_is(v.get(k), b'=') || w(k, "to") {
            v.get(k + 1).and_then(|t| setting_bool(text, t))
        } else {
            None
        };
    }
    (StatementKind::SessionSetting { name }, std_strings)
}

/// A boolean setting value as PostgreSQL's parse_bool reads it (`DEFAULT` is on, the default of
/// standard_conforming_strings).
fn setting_bool(text: &[u8], t: &Tok) -> Option<bool> {
    let mut v = match t.t {
        T::Word | T::Other => text[t.s..t.e].to_vec(),
        T::Str { .. } => string_value(text, t)?,
        _ => return None,
    };
    v.make_ascii_lowercase();
    let v = v.trim_ascii();
    let prefix_of = |full: &str, min: usize| v.len() >= min && full.as_bytes().starts_with(v);
    if v == b"default" || prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || v == b"1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || v == b"0" {
        Some(false)
    } else {
        None
    }
}

/// `SELECT [pg_catalog.]set_config('name', <value>, false);`, and the new
/// `standard_conforming_strings` when it sets that.
fn set_config(text: &[u8], mut toks: Tokens<'_>) -> (StatementKind, Option<bool>) {
    let other = (StatementKind::Other, None);
    let mut t = toks.next();
    if word_is(text, t.as_ref(), "pg_catalog") {
        if !punct_is(toks.next().as_ref(), b'.') {
            return other;
        }
        t = toks.next();
    }
    if !word_is(text, t.as_ref(), "set_config") || !punct_is(toks.next().as_ref(), b'(') {
        return other;
    }
    let Some(mut name) = toks.next().and_then(|t| string_value(text, &t)) else { return other };
    if !punct_is(toks.next().as_ref(), b',') {
        return other;
    }
    // The value: anything up to the next top-level comma.
    let mut value = Vec::new();
    let mut depth = 0u32;
    loop {
        let Some(t) = toks.next() else { return other };
        match t.t {
            T::Punct(b',') if depth == 0 => break,
            T::Punct(b'(') => depth += 1,
            T::Punct(b')') => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return other,
            },
            _ => {}
        }
        value.push(t);
    }
    let is_local = toks.next();
    if !word_is(text, is_local.as_ref(), "false") || !punct_is(toks.next().as_ref(), b')') || !punct_is(toks.next().as_ref(), b';') {
        return other;
    }
    if toks.next().is_some() {
        return other;
    }
    name.make_ascii_lowercase();
    let std_strings = match &value[..] {
        [v] if name == b"standard_conforming_strings" => setting_bool(text, v),
        _ => None,
    };
    (StatementKind::SessionSetting { name: String::from_utf8_lossy(&name).into_owned() }, std_strings)
}

/// `ALTER DEFAULT PRIVILEGES ...` or `ALTER <object> OWNER TO <role>;`, read on the tokens
/// outside quotes (`ADD COLUMN "OWNER TO x"` is not an owner change) and excluding
/// `RENAME [COLUMN] owner TO x`.
fn alter_kind(text: &[u8], v: &[Tok]) -> StatementKind {
    let w = |k: usize, s: &str| word_is(text, v.get(k), s);
    if w(0, "default") && w(1, "privileges") {
        return StatementKind::Privilege;
    }
    let n = v.len();
    if n < 6 || !punct_is(v.get(n - 1), b';') || !matches!(v[n - 2].t, T::Word | T::QuotedIdent) || !w(n - 3, "to") || !w(n - 4, "owner") {
        return StatementKind::Other;
    }
    let before = n - 5;
    if w(before, "column") || w(before, "constraint") || w(before, "attribute") {
        return StatementKind::Other;
    }
    // `... t RENAME owner TO x` renames a column; `ALTER TABLE rename OWNER TO x` has an object
    // type, or a schema and a dot, before the word.
    if w(before, "rename") && before >= 1 && !punct_is(v.get(before - 1), b'.') && !OBJECT_TYPE_LAST_WORDS.iter().any(|k| w(before - 1, k)) {
        return StatementKind::Other;
    }
    StatementKind::Owner
}

/// The last word of every `ALTER <object type>` that has an OWNER TO form.
const OBJECT_TYPE_LAST_WORDS: &[&str] = &[
    "aggregate",
    "class",
    "collation",
    "configuration",
    "conversion",
    "database",
    "dictionary",
    "domain",
    "extension",
    "family",
    "function",
    "index",
    "language",
    "object",
    "operator",
    "procedure",
    "publication",
    "routine",
    "schema",
    "sequence",
    "server",
    "statistics",
    "subscription",
    "table",
    "tablespace",
    "template",
    "trigger",
    "type",
    "view",
    "wrapper",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// An owned event, with consecutive CopyData merged (their batching follows the chunking).
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Toc(Toc),
        Statement(Vec<u8>, StatementKind),
        Meta(Vec<u8>, Vec<u8>, Vec<u8>),
        Incomplete(Vec<u8>),
        CopyData(Vec<u8>),
        CopyEnd(Vec<u8>),
    }

    struct Run {
        events: Vec<Ev>,
        in_copy: bool,
    }

    /// Scans `input` cut at `cuts`, checking the invariants every event sequence must hold.
    fn scan_cut(input: &[u8], cuts: &[usize]) -> Run {
        let mut s = Scanner::new();
        let mut events: Vec<Ev> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let finishing = std::cell::Cell::new(false);
        let mut emit = |ev: Event<'_>| -> Result<(), Infallible> {
            let ev = match ev {
                Event::Toc(t) => Ev::Toc(t),
                Event::Statement { text, kind } => {
                    bytes.extend_from_slice(text);
                    Ev::Statement(text.to_vec(), kind)
                }
                Event::Meta { text, command, arg } => {
                    let at = |sub: &[u8]| sub.as_ptr() as usize - text.as_ptr() as usize;
                    assert!(at(command) <= text.len() && at(arg) <= text.len(), "command and arg are sub-slices of the text");
                    bytes.extend_from_slice(text);
                    Ev::Meta(text.to_vec(), command.to_vec(), arg.to_vec())
                }
                Event::Incomplete { text } => {
                    bytes.extend_from_slice(text);
                    Ev::Incomplete(text.to_vec())
                }
                Event::CopyData(d) => {
                    assert!(!d.is_empty());
                    assert!(d.ends_with(b"\n") || finishing.get(), "CopyData ends with a complete row: {d:?}");
                    bytes.extend_from_slice(d);
                    if let Some(Ev::CopyData(prev)) = events.last_mut() {
                        prev.extend_from_slice(d);
                        return Ok(());
                    }
                    Ev::CopyData(d.to_vec())
                }
                Event::CopyEnd(d) => {
                    bytes.extend_from_slice(d);
                    Ev::CopyEnd(d.to_vec())
                }
            };
            events.push(ev);
            Ok(())
        };
        let mut at = 0;
        for &c in cuts.iter().chain([input.len()].iter()) {
            s.feed(&input[at..c], &mut emit).unwrap();
            at = c;
        }
        finishing.set(true);
        s.finish(&mut emit).unwrap();
        let in_copy = s.in_copy();
        assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(input), "emitted bytes == input");
        Run { events, in_copy }
    }

    /// xorshift64*: deterministic chunk sizes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Scans `input` whole, and checks that every chunking (each single cut point, byte at a
    /// time, random chunks) gives the same events.
    fn scan(input: &str) -> Run {
        let input = input.as_bytes();
        let whole = scan_cut(input, &[]);
        let same = |cuts: &[usize], how: &str| {
            let r = scan_cut(input, cuts);
            assert_eq!(r.events, whole.events, "{how} cuts {cuts:?} of {:?}", String::from_utf8_lossy(input));
            assert_eq!(r.in_copy, whole.in_copy, "{how}");
        };
        if input.len() <= 2000 {
            for c in 0..=input.len() {
                same(&[c], "one cut");
            }
        }
        same(&(1..input.len()).collect::<Vec<_>>(), "byte at a time");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ input.len() as u64);
        for _ in 0..20 {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += 1 + (rng.next() % 40) as usize;
                if at >= input.len() {
                    break;
                }
                cuts.push(at);
            }
            same(&cuts, "random");
        }
        whole
    }

    fn kind_label(k: &StatementKind) -> String {
        match k {
            StatementKind::CopyFromStdin { table } => format!("copy:{table}"),
            StatementKind::SessionSetting { name } => format!("set:{name}"),
            StatementKind::Owner => "owner".into(),
            StatementKind::Privilege => "priv".into(),
            StatementKind::OtherCopy => "othercopy".into(),
            StatementKind::Other => "other".into(),
        }
    }

    /// One line per event: `label|text`.
    fn show(events: &[Ev]) -> Vec<String> {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        events
            .iter()
            .map(|e| match e {
                Ev::Toc(t) => format!("toc|{}|{}|{}|{}|{}", t.name, t.kind, t.schema, t.owner, if t.data { "data" } else { "" }),
                Ev::Statement(text, kind) => format!("{}|{}", kind_label(kind), s(text)),
                Ev::Meta(text, c, a) => format!("meta:{}:{}|{}", s(c), s(a), s(text)),
                Ev::Incomplete(text) => format!("inc|{}", s(text)),
                Ev::CopyData(d) => format!("data|{}", s(d)),
                Ev::CopyEnd(d) => format!("end|{}", s(d)),
            })
            .collect()
    }

    fn check(input: &str, expected: &[&str]) {
        assert_eq!(show(&scan(input).events), expected, "input {input:?}");
    }

    fn kind_of(sql: &str) -> String {
        let r = scan(sql);
        match &r.events[..] {
            [Ev::Statement(_, k)] => kind_label(k),
            other => panic!("{sql:?} is not one statement: {other:?}"),
        }
    }

    #[test]
    fn sqlscan_statements_and_the_rest_of_their_line() {
        check(
            "select 1;  \nselect 2; select 3;\r\nselect 4;",
            &["other|select 1;  \n", "other|select 2;", "other| select 3;\r\n", "other|select 4;"],
        );
        check("select 1;\n\n  -- bye\n", &["other|select 1;\n", "inc|\n  -- bye\n"]);
        check("select 1", &["inc|select 1"]);
        check("", &[]);
        check("select 1\\; select 2;\n", &["inc|select 1", "meta:;:select 2;|\\; select 2;\n"]);
        check("select x::text, :'v', :\"w\" ; select 2;", &["other|select x::text, :'v', :\"w\" ;", "other| select 2;"]);
    }

    #[test]
    fn sqlscan_comments() {
        check("/* a /* b */ ; */ select 1; /* x */", &["other|/* a /* b */ ; */ select 1;", "inc| /* x */"]);
        check("select 1 -- ; still a comment\n;\n", &["other|select 1 -- ; still a comment\n;\n"]);
        check("select 1 /* ; */ + 2;\n", &["other|select 1 /* ; */ + 2;\n"]);
        check("select 1+/*x*/2, 3--4;\n;", &["other|select 1+/*x*/2, 3--4;\n;"]);
        check("/* unterminated ; \n select 1;", &["inc|/* unterminated ; \n select 1;"]);
        check("select '/*'; select 2;", &["other|select '/*';", "other| select 2;"]);
        check("/**/select 1;/***/select 2;", &["other|/**/select 1;", "other|/***/select 2;"]);
    }

    #[test]
    fn sqlscan_strings_and_identifiers() {
        check("select 'a;''b'; select 2;", &["other|select 'a;''b';", "other| select 2;"]);
        check("select E'\\''; select 2;", &["other|select E'\\'';", "other| select 2;"]);
        check("select e'\\\\'; select 2;", &["other|select e'\\\\';", "other| select 2;"]);
        // `xe` is an identifier, so the string after it is a plain one: '\' ends at the 2nd quote.
        check("select xe'\\''; select 2;", &["inc|select xe'\\''; select 2;"]);
        // psql's string continuation: E'a' newline '\'' is one escape string.
        check("select E'a'\n'\\'';\nselect 2;", &["other|select E'a'\n'\\'';\n", "other|select 2;"]);
        check("select E'a' -- c\n  '\\'';\nselect 2;", &["other|select E'a' -- c\n  '\\'';\n", "other|select 2;"]);
        // Without a newline it is not a continuation: '\'' is a plain string and a quote.
        check("select E'a' '\\'';\nselect 2;", &["inc|select E'a' '\\'';\nselect 2;"]);
        check("select B'01', X'1f', U&'\\0041', N'x'; select 2;", &["other|select B'01', X'1f', U&'\\0041', N'x';", "other| select 2;"]);
        check("select \"a;\"\"b\" from \"t\"\"\"; select 2;", &["other|select \"a;\"\"b\" from \"t\"\"\";", "other| select 2;"]);
        check("select 'unterminated;", &["inc|select 'unterminated;"]);
    }

    #[test]
    fn sqlscan_standard_conforming_strings_off() {
        check(
            "SET standard_conforming_strings = off;\nselect '\\'';\nselect b'\\';\nSET standard_conforming_strings = on;\nselect '\\';\n",
            &[
                "set:standard_conforming_strings|SET standard_conforming_strings = off;\n",
                "other|select '\\'';\n",
                "other|select b'\\';\n",
                "set:standard_conforming_strings|SET standard_conforming_strings = on;\n",
                "other|select '\\';\n",
            ],
        );
        check(
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\nselect '\\'';\nRESET standard_conforming_strings;\nselect '\\';\n",
            &[
                "set:standard_conforming_strings|SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\n",
                "other|select '\\'';\n",
                "set:standard_conforming_strings|RESET standard_conforming_strings;\n",
                "other|select '\\';\n",
            ],
        );
        // SET LOCAL is not a session setting; the mode stays on.
        check(
            "SET LOCAL standard_conforming_strings TO off;\nselect '\\';\n",
            &["other|SET LOCAL standard_conforming_strings TO off;\n", "other|select '\\';\n"],
        );
    }

    #[test]
    fn sqlscan_dollar_quotes() {
        let body = "CREATE FUNCTION public.f() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $_$\nbegin\n--\n-- Name: x; Type: TABLE; Schema: public; Owner: app\n--\n  raise notice 'it''s; %', ';';\n  return new; $a$ $ $$\nend;\n$_$;\n";
        check(body, &[&format!("other|{body}")]);
        let body = "CREATE FUNCTION g() RETURNS text AS $body$ select '-- Name: t; Type: TABLE; Schema: public; Owner: o\n' $body$ LANGUAGE sql;\n";
        check(body, &[&format!("other|{body}")]);
        check("select $$a;'b$$, $x$ $$ ; $x$; select 2;", &["other|select $$a;'b$$, $x$ $$ ; $x$;", "other| select 2;"]);
        // `a$b$` is one identifier, `$1` a parameter: neither starts a quote.
        check("select a$b$ from t; select 'x';", &["other|select a$b$ from t;", "other| select 'x';"]);
        check("prepare p as select $1; select 2;", &["other|prepare p as select $1;", "other| select 2;"]);
        // After a number, `$a$` does start one (psql: integer, then a delimiter).
        check("select 1$a$;$a$; select 2;", &["other|select 1$a$;$a$;", "other| select 2;"]);
        check("select $a$ unterminated;", &["inc|select $a$ unterminated;"]);
        check("select $ab$ x $a$ $ab $ab$;", &["other|select $ab$ x $a$ $ab $ab$;"]);
    }

    #[test]
    fn sqlscan_parentheses_and_begin_atomic() {
        let rule = "CREATE RULE r AS ON INSERT TO t DO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));\n";
        check(rule, &[&format!("other|{rule}")]);
        let f = "CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN true THEN 1 ELSE 2 END;\n SELECT 2;\nEND;\n";
        check(&format!("{f}select 3;\n"), &[&format!("other|{f}"), "other|select 3;\n"]);
        let p = "create or replace procedure p() begin atomic insert into t values (1); end;\n";
        check(&format!("{p}select 3;\n"), &[&format!("other|{p}"), "other|select 3;\n"]);
        // BEGIN only counts in CREATE FUNCTION/PROCEDURE.
        check("begin; create table begin (a int); end;\n", &["other|begin;", "other| create table begin (a int);", "other| end;\n"]);
        check("select (1;\nselect 2);\n", &["other|select (1;\nselect 2);\n"]);
        check("select 1);\nselect 2;\n", &["other|select 1);\n", "other|select 2;\n"]);
    }

    #[test]
    fn sqlscan_meta_commands() {
        check("\\restrict abc\n", &["meta:restrict:abc|\\restrict abc\n"]);
        check("\\unrestrict abc", &["meta:unrestrict:abc|\\unrestrict abc"]);
        check("select 1; \\! id\nselect 2;\n", &["other|select 1;", "meta:!:id| \\! id\n", "other|select 2;\n"]);
        check("select 1 \\! id\n;\n", &["inc|select 1 ", "meta:!:id|\\! id\n", "other|;\n"]);
        check("select 1\\!id\r\n", &["inc|select 1", "meta:!:id|\\!id\r\n"]);
        check("\\copy t from program 'id'\n", &["meta:copy:t from program 'id'|\\copy t from program 'id'\n"]);
        check("-- hi\n  \\o |id\n", &["meta:o:|id|-- hi\n  \\o |id\n"]);
        check("select (\n\\echo x\n1);\n", &["inc|select (\n", "meta:echo:x|\\echo x\n", "other|1);\n"]);
        check(
            "select '\\! id'; select \"\\o\"; select $$\\!$$;\n",
            &["other|select '\\! id';", "other| select \"\\o\";", "other| select $$\\!$$;\n"],
        );
        check("\\", &["meta::|\\"]);
    }

    #[test]
    fn sqlscan_copy() {
        let input = "COPY \"my schema\".\"my \"\"t\"\"\" (a, \"b c\") FROM stdin;\n\\restrict x\n\\unrestrict x\n\\.x\n\\\\.\n a\n\\.\r\nselect 1;\n";
        check(
            input,
            &[
                "copy:my schema.my \"t\"|COPY \"my schema\".\"my \"\"t\"\"\" (a, \"b c\") FROM stdin;\n",
                "data|\\restrict x\n\\unrestrict x\n\\.x\n\\\\.\n a\n",
                "end|\\.\r\n",
                "other|select 1;\n",
            ],
        );
        check("copy public.t from STDIN;\n\\.\n", &["copy:public.t|copy public.t from STDIN;\n", "end|\\.\n"]);
        check("Copy T (a) From Stdin With (format text);\n1\n\\.", &["copy:T|Copy T (a) From Stdin With (format text);\n", "data|1\n", "end|\\."]);
        // Rest of the COPY line is not data: the data starts on the next line.
        check("COPY t FROM stdin; -- x\n1\n\\.\n", &["copy:t|COPY t FROM stdin; -- x\n", "data|1\n", "end|\\.\n"]);
        check("COPY t TO stdout;\nCOPY t FROM '/f';\n", &["othercopy|COPY t TO stdout;\n", "othercopy|COPY t FROM '/f';\n"]);
        check("COPY t FROM stdin;\n\n\\.\n", &["copy:t|COPY t FROM stdin;\n", "data|\n", "end|\\.\n"]);
    }

    #[test]
    fn sqlscan_input_ending_in_copy() {
        let r = scan("COPY t FROM stdin;\n1\n2");
        assert!(r.in_copy);
        assert_eq!(show(&r.events), ["copy:t|COPY t FROM stdin;\n", "data|1\n2"]);
        let r = scan("COPY t FROM stdin;\n1\n");
        assert!(r.in_copy);
        let r = scan("COPY t FROM stdin;\n1\n\\.\r");
        assert!(r.in_copy, "\\.\\r without \\n is a row");
        let r = scan("COPY t FROM stdin;\n1\n\\.");
        assert!(!r.in_copy);
        let r = scan("COPY t FROM stdin;");
        assert!(r.in_copy);
        assert!(!scan("select 1").in_copy);
    }

    #[test]
    fn sqlscan_session_settings() {
        let cases = [
            ("SET statement_timeout = 0;", "set:statement_timeout"),
            ("set Client_Encoding to 'UTF8';", "set:client_encoding"),
            ("SET SESSION search_path TO public;", "set:search_path"),
            ("SET \"Foo\" = 1;", "set:foo"),
            ("SET myext.flag = on;", "set:myext.flag"),
            ("RESET lock_timeout;", "set:lock_timeout"),
            ("RESET ALL;", "set:all"),
            ("SELECT pg_catalog.set_config('search_path', '', false);", "set:search_path"),
            ("select set_config('Search_Path', concat('a', ',b'), FALSE);", "set:search_path"),
            ("SELECT pg_catalog.set_config('search_path', '', true);", "other"),
            ("SELECT pg_catalog.set_config('search_path', '', false), 1;", "other"),
            ("SELECT pg_catalog.setval('public.s', 1, false);", "other"),
            ("SET LOCAL search_path = x;", "other"),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;", "other"),
            ("SET CONSTRAINTS ALL DEFERRED;", "other"),
            ("SET SESSION AUTHORIZATION 'app';", "set:session_authorization"),
            ("RESET SESSION AUTHORIZATION;", "set:session_authorization"),
            ("SET ROLE app;", "set:role"),
            ("RESET ROLE;", "set:role"),
            ("SET TIME ZONE 'UTC';", "set:timezone"),
            ("SET NAMES 'UTF8';", "set:client_encoding"),
            ("SET default_tablespace = '';", "set:default_tablespace"),
            ("SET session_replication_role = replica;", "set:session_replication_role"),
        ];
        for (sql, want) in cases {
            assert_eq!(kind_of(sql), want, "{sql}");
        }
    }

    #[test]
    fn sqlscan_owner_and_privilege() {
        let cases = [
            ("ALTER TABLE public.t OWNER TO app;", "owner"),
            ("ALTER FUNCTION public.f(a integer, b text) OWNER TO \"App\";", "owner"),
            ("alter large object 16393 owner to app;", "owner"),
            ("ALTER SCHEMA rename OWNER TO x;", "owner"),
            ("ALTER TABLE public.rename OWNER TO x;", "owner"),
            ("ALTER TEXT SEARCH CONFIGURATION public.c OWNER TO CURRENT_USER;", "owner"),
            ("ALTER TABLE t ADD COLUMN \"OWNER TO x\" int;", "other"),
            ("ALTER TABLE t ADD COLUMN c text DEFAULT ' OWNER TO x';", "other"),
            ("ALTER TABLE t RENAME COLUMN owner TO x;", "other"),
            ("ALTER TABLE t RENAME owner TO x;", "other"),
            ("ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (a);", "other"),
            ("GRANT ALL ON TABLE public.t TO app;", "priv"),
            ("revoke all on schema public from public;", "priv"),
            ("ALTER DEFAULT PRIVILEGES FOR ROLE app GRANT SELECT ON TABLES TO r;", "priv"),
            ("\"grant\";", "other"),
        ];
        for (sql, want) in cases {
            assert_eq!(kind_of(sql), want, "{sql}");
        }
    }

    #[test]
    fn sqlscan_toc_comments() {
        let toc = |name: &str, kind: &str, schema: &str, owner: &str, data: bool| {
            format!("toc|{name}|{kind}|{schema}|{owner}|{}", if data { "data" } else { "" })
        };
        let cases = [
            ("-- Name: t; Type: TABLE; Schema: public; Owner: app", toc("t", "TABLE", "public", "app", false)),
            ("-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: app", toc("t", "TABLE DATA", "public", "app", true)),
            ("-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -", toc("t t_pkey", "CONSTRAINT", "public", "-", false)),
            ("-- Name: x; Type: TABLE; Schema: s; Owner: o; Tablespace: ts", toc("x", "TABLE", "s", "o", false)),
            ("-- Name: old; Type: TABLE; Schema: public", toc("old", "TABLE", "public", "", false)),
            ("-- Name: a; Type: b; Type: FK CONSTRAINT; Schema: public; Owner: o", toc("a; Type: b", "FK CONSTRAINT", "public", "o", false)),
            ("-- Name: BLOBS; Type: BLOBS; Schema: -; Owner: -\r", toc("BLOBS", "BLOBS", "-", "-", false)),
        ];
        for (line, want) in cases {
            let input = format!("--\n{line}\n--\n\nCREATE TABLE t (a int);\n");
            let r = scan(&input);
            assert_eq!(show(&r.events), [want, format!("other|{input}")], "{line}");
        }
        // Not at the start of a statement, not at the start of a line, or inside quotes: no Toc.
        for input in [
            "CREATE TABLE t (\n-- Name: t; Type: TABLE; Schema: public; Owner: app\na int);\n",
            "select 1; -- Name: t; Type: TABLE; Schema: public; Owner: app\nselect 2;\n",
            "select '\n-- Name: t; Type: TABLE; Schema: public; Owner: app\n';\n",
            "select \"\n-- Name: t; Type: TABLE; Schema: public; Owner: app\n\";\n",
            "/*\n-- Name: t; Type: TABLE; Schema: public; Owner: app\n*/ select 1;\n",
            "-- Name: t; Type: table; Schema: public; Owner: app\n",
            "-- Names: t; Type: TABLE; Schema: public; Owner: app\n",
        ] {
            assert!(!scan(input).events.iter().any(|e| matches!(e, Ev::Toc(_))), "{input:?}");
        }
        check(
            "-- Name: t; Type: TABLE; Schema: public; Owner: app\n\\unrestrict k\n",
            &["toc|t|TABLE|public|app|", "meta:unrestrict:k|-- Name: t; Type: TABLE; Schema: public; Owner: app\n\\unrestrict k\n"],
        );
    }

    const DUMP: &str =
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n-- Dumped from database version 15.14\n-- Dumped by pg_dump version 15.14\n\n\
SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\nSET client_encoding = 'UTF8';\n\
SET standard_conforming_strings = on;\nSELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n\
SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n\n\
SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n\
--\n-- Name: t; Type: TABLE; Schema: public; Owner: app\n--\n\nCREATE TABLE public.t (\n    a integer,\n    b text\n);\n\n\n\
ALTER TABLE public.t OWNER TO app;\n\n\
--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: app\n--\n\nCOPY public.t (a, b) FROM stdin;\n1\t\\\\restrict x\n2\t\\N\n\\.\n\n\n\
--\n-- Name: TABLE t; Type: ACL; Schema: public; Owner: app\n--\n\nGRANT SELECT ON TABLE public.t TO reader;\n\n\n\
--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n";

    #[test]
    fn sqlscan_pg_dump_shape() {
        let r = scan(DUMP);
        assert!(!r.in_copy);
        let shown = show(&r.events);
        let labels: Vec<&str> = shown.iter().map(|s| s.split('|').next().unwrap()).collect();
        assert_eq!(
            labels,
            [
                "meta:restrict:abc",
                "set:statement_timeout",
                "set:lock_timeout",
                "set:idle_in_transaction_session_timeout",
                "set:client_encoding",
                "set:standard_conforming_strings",
                "set:search_path",
                "set:check_function_bodies",
                "set:xmloption",
                "set:client_min_messages",
                "set:row_security",
                "set:default_tablespace",
                "set:default_table_access_method",
                "toc",
                "other",
                "owner",
                "toc",
                "copy:public.t",
                "data",
                "end",
                "toc",
                "priv",
                "meta:unrestrict:abc",
                "inc",
            ]
        );
        assert_eq!(shown[0], "meta:restrict:abc|--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n");
        assert_eq!(shown[13], "toc|t|TABLE|public|app|");
        assert_eq!(shown[18], "data|1\t\\\\restrict x\n2\t\\N\n");
        assert_eq!(shown[22], "meta:unrestrict:abc|\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n");
        assert_eq!(shown[23], "inc|\n");
    }

    /// A pseudo-random mix of the constructs above, to check chunking on longer inputs.
    #[test]
    fn sqlscan_chunking_of_a_mixed_dump() {
        let pieces = [
            "select 1;\n",
            "CREATE FUNCTION f() RETURNS int AS $_$ select 1; -- x\n $_$ LANGUAGE sql;\n",
            "COPY t FROM stdin;\n1\t\\restrict x\n\\.x\n\\.\n",
            "-- Name: t; Type: TABLE; Schema: public; Owner: app\n",
            "select E'\\'' , 'a''b', \"c;\"\"d\";\n",
            "/* a /* b */ c */ select 2; \\! id\n",
            "SET standard_conforming_strings = off;\nselect '\\';';\nSET standard_conforming_strings = on;\n",
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n",
            "\\restrict k\r\n",
            "select (1;\n2);\n",
            "select E'a'\n  '\\'';\n",
        ];
        let mut rng = Rng(42);
        for round in 0..30 {
            let mut input = String::new();
            for _ in 0..(5 + round) {
                input.push_str(pieces[(rng.next() % pieces.len() as u64) as usize]);
            }
            input.push_str("select 0;\n");
            let r = scan(&input);
            // Every piece is complete, so nothing is Incomplete and COPY always ends.
            assert!(!r.in_copy);
            assert!(!r.events.iter().any(|e| matches!(e, Ev::Incomplete(_))), "{input:?}: {:?}", show(&r.events));
        }
    }

    #[test]
    fn build_tables_are_named_as_copy_names_them() {
        let table = [
            ("\n--\n-- Name: t_pkey; Type: CONSTRAINT; Schema: public; Owner: o\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n", Some("public.t")),
            ("CREATE INDEX big_h ON public.big USING btree (h);\n", Some("public.big")),
            ("CREATE UNIQUE INDEX \"x y\" ON ONLY \"Odd Schema\".\"my \"\"table\"\"\" USING btree (id);", Some("Odd Schema.my \"table\"")),
            ("ALTER TABLE \"S\".\"T\" ADD CONSTRAINT c UNIQUE (a);", Some("S.T")),
            ("ALTER INDEX public.p ATTACH PARTITION public.c;", None),
            ("CREATE INDEX ON public.t (a);", None),
            ("CREATE TRIGGER tr AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f();", None),
            ("COMMENT ON INDEX public.i IS 'CREATE INDEX i ON public.t';", None),
        ];
        for (sql, want) in table {
            assert_eq!(build_table(sql.as_bytes()).as_deref(), want, "{sql:?}");
        }
        // The same name a COPY of that table gives.
        let copy = |sql: &str| match classify(sql.as_bytes(), true).0 {
            StatementKind::CopyFromStdin { table } => table,
            other => panic!("{other:?}"),
        };
        assert_eq!(copy("COPY \"Odd Schema\".\"my \"\"table\"\"\" (id) FROM stdin;\n"), "Odd Schema.my \"table\"");
    }

    #[test]
    fn only_table_free_statements_are_table_free() {
        let table = [
            ("\n--\n-- Name: s; Type: SEQUENCE SET; Schema: public; Owner: o\n--\n\nSELECT pg_catalog.setval('public.s', 42, true);\n", true),
            ("SELECT pg_catalog.setval('\"Odd\".\"s q\"', 1, false);", true),
            ("SELECT pg_catalog.lo_open('16401', 131072);", true),
            ("SELECT pg_catalog.lowrite(0, '\\x6c61726765');", true),
            ("SELECT pg_catalog.lo_close(0);", true),
            ("BEGIN;", true),
            ("COMMIT;\n", true),
            ("SELECT pg_catalog.setval('s', (SELECT max(id) FROM t), true);", false),
            ("SELECT pg_catalog.setval('s', 1, true); DELETE FROM t;", false),
            ("SELECT setval('s', 1, true);", false),
            ("SELECT pg_catalog.set_config('search_path', '', false);", false),
            ("SELECT pg_catalog.setval('s', 1, x);", false),
            ("SELECT pg_catalog.setval('s' 1);", false),
            ("INSERT INTO t VALUES (1);", false),
            ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f();", false),
        ];
        for (sql, want) in table {
            assert_eq!(touches_no_table(sql.as_bytes()), want, "{sql:?}");
        }
    }
}
