//! A libpq connection in this process, for the one job psql is slow at: streaming COPY rows.
//!
//! A restore's table data is most of its bytes. Through psql every byte crosses a pipe, is
//! read line by line and written again to the server: about half the client CPU of a restore,
//! on the same cores the server needs. Here the rows go from our buffer to the socket.
//!
//! Safety is not weakened: libpq has no meta-commands at all (the COPY rows are data in the
//! protocol, never read as commands), and the connection is made with the very parameters psql
//! gets (host, port, user, database, application name; the operator's `PG*` variables — TLS
//! mode, root certificate, service file — are read by the same libpq), the password given in
//! memory, never through the environment.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use pq_sys as ffi;

#[derive(Debug, thiserror::Error)]
pub enum PqError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Server(String),
    #[error("the connection broke while sending: {0}")]
    Send(String),
}

/// One open connection. Used by one thread at a time (libpq's rule), never shared.
pub struct Conn {
    raw: *mut ffi::PGconn,
    /// Set when the connection was left in a state no further command can run in (a COPY the
    /// caller did not ask for): every later call fails instead of waiting on it.
    broken: bool,
}

/// Server notices (NOTICE, WARNING raised by the SQL being run — a backup's own functions
/// included) go to the debug log, escaped and cut, instead of libpq's default of printing them
/// raw on stderr: a crafted file must not write terminal escapes or millions of lines there.
unsafe extern "C" fn notice(_arg: *mut std::os::raw::c_void, message: *const c_char) {
    let mut m = text(message);
    if m.len() > 1024 {
        let mut cut = 1024;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    tracing::debug!(target: "postgres", "{m}");
}

// A PGconn may move between threads as long as one thread uses it at a time: `&mut self` on
// every call enforces that.
unsafe impl Send for Conn {}

fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: libpq returns NUL-terminated strings that live as long as the object they
    // belong to; copied out at once.
    let s = unsafe { CStr::from_ptr(ptr) }.to_string_lossy();
    crate::db::escape_controls(s.trim_end())
}

impl Conn {
    /// Connects with these conninfo parameters (keyword, value); values may not hold NUL.
    pub fn connect(params: &[(&str, &str)]) -> Result<Conn, PqError> {
        let owned: Vec<(CString, CString)> = params
            .iter()
            .map(|(k, v)| Ok((CString::new(*k)?, CString::new(*v)?)))
            .collect::<Result<_, std::ffi::NulError>>()
            .map_err(|_| PqError::Connect("a connection parameter holds a NUL byte".into()))?;
        let mut keys: Vec<*const c_char> = owned.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const c_char> = owned.iter().map(|(_, v)| v.as_ptr()).collect();
        keys.push(std::ptr::null());
        values.push(std::ptr::null());
        // SAFETY: both arrays are NULL-terminated and point into `owned`, alive for the call;
        // expand_dbname 0: `dbname` is a name, never a conninfo string.
        let raw = unsafe { ffi::PQconnectdbParams(keys.as_ptr(), values.as_ptr(), 0) };
        if raw.is_null() {
            return Err(PqError::Connect("libpq could not allocate a connection".into()));
        }
        let conn = Conn { raw, broken: false };
        // SAFETY: raw is a live connection until Drop.
        if unsafe { ffi::PQstatus(conn.raw) } != ffi::ConnStatusType::CONNECTION_OK {
            return Err(PqError::Connect(conn.error()));
        }
        // SAFETY: raw is live; the processor is a plain function that keeps no pointer.
        unsafe { ffi::PQsetNoticeProcessor(conn.raw, Some(notice), std::ptr::null_mut()) };
        Ok(conn)
    }

    /// Whether another command may run on this connection with nothing left of the last one:
    /// the connection is up, no COPY was left half-done, and no transaction is open.
    pub fn reusable(&self) -> bool {
        // SAFETY: raw is live until Drop.
        let (status, transaction) = unsafe { (ffi::PQstatus(self.raw), ffi::PQtransactionStatus(self.raw)) };
        !self.broken && status == ffi::ConnStatusType::CONNECTION_OK && transaction == ffi::PGTransactionStatusType::PQTRANS_IDLE
    }

    /// Whether the connection itself is gone (the server went away), as opposed to a statement
    /// having failed on a live one.
    pub fn lost(&self) -> bool {
        // SAFETY: raw is live until Drop.
        let status = unsafe { ffi::PQstatus(self.raw) };
        status == ffi::ConnStatusType::CONNECTION_BAD
    }

    fn error(&self) -> String {
        // SAFETY: raw is live; the message is copied out.
        text(unsafe { ffi::PQerrorMessage(self.raw) })
    }

    fn usable(&self) -> Result<(), PqError> {
        if self.broken {
            return Err(PqError::Server("the connection was left in an unexpected COPY state and is closed".into()));
        }
        Ok(())
    }

    /// Runs SQL (one or more statements) and fails on the first error.
    pub fn execute(&mut self, sql: &[u8]) -> Result<(), PqError> {
        self.usable()?;
        let sql = CString::new(sql).map_err(|_| PqError::Server("the SQL holds a NUL byte".into()))?;
        // SAFETY: raw is live; sql is NUL-terminated and outlives the call.
        let res = unsafe { ffi::PQexec(self.raw, sql.as_ptr()) };
        self.finish_result(res, STATEMENT_OK)
    }

    /// Runs exactly one statement, over the extended protocol: text that holds several (a
    /// scanner and the server disagreeing on where one ends) is refused whole by the server.
    pub fn execute_one(&mut self, sql: &[u8]) -> Result<(), PqError> {
        self.usable()?;
        let sql = CString::new(sql).map_err(|_| PqError::Server("the SQL holds a NUL byte".into()))?;
        // SAFETY: raw is live; sql is NUL-terminated and outlives the call; no parameters.
        let res = unsafe { ffi::PQexecParams(self.raw, sql.as_ptr(), 0, std::ptr::null(), std::ptr::null(), std::ptr::null(), std::ptr::null(), 0) };
        self.finish_result(res, STATEMENT_OK)
    }

    /// Runs SQL (one or more statements) and returns the rows of the last one as text (NULL as
    /// an empty string).
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>, PqError> {
        self.usable()?;
        let sql = CString::new(sql).map_err(|_| PqError::Server("the SQL holds a NUL byte".into()))?;
        // SAFETY: raw is live; sql is NUL-terminated and outlives the call.
        let res = unsafe { ffi::PQexec(self.raw, sql.as_ptr()) };
        let mut rows = Vec::new();
        if !res.is_null() && unsafe { ffi::PQresultStatus(res) } == ffi::ExecStatusType::PGRES_TUPLES_OK {
            // SAFETY: res is a live result until finish_result clears it; every index is in range.
            let (n, m) = unsafe { (ffi::PQntuples(res), ffi::PQnfields(res)) };
            for r in 0..n {
                let row = (0..m)
                    .map(|f| {
                        // SAFETY: as above; the value is NUL-terminated text (text-format result).
                        let v = unsafe { ffi::PQgetvalue(res, r, f) };
                        if v.is_null() {
                            String::new()
                        } else {
                            unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned()
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        self.finish_result(res, STATEMENT_OK)?;
        Ok(rows)
    }

    /// Runs `statement` (a `COPY … FROM stdin`) with `rows` as its data (text format, without
    /// the `\.` line) and waits until the server has stored them.
    pub fn copy_in(&mut self, statement: &[u8], rows: &[u8]) -> Result<(), PqError> {
        self.usable()?;
        let sql = CString::new(statement).map_err(|_| PqError::Server("the COPY statement holds a NUL byte".into()))?;
        // The extended protocol runs exactly one statement: text the scanner took for one COPY
        // but the server would read as several (settings the two disagree on) is refused whole.
        // SAFETY: raw is live; sql is NUL-terminated and outlives the call; no parameters.
        let res = unsafe { ffi::PQexecParams(self.raw, sql.as_ptr(), 0, std::ptr::null(), std::ptr::null(), std::ptr::null(), std::ptr::null(), 0) };
        self.finish_result(res, &[ffi::ExecStatusType::PGRES_COPY_IN])?;
        // libpq keeps what it cannot send at once; chunks bound the copies it makes.
        for chunk in rows.chunks(1 << 20) {
            // SAFETY: raw is live; the chunk is valid for its length (< 2^31).
            let sent = unsafe { ffi::PQputCopyData(self.raw, chunk.as_ptr().cast(), chunk.len() as i32) };
            if sent != 1 {
                // Still inside the COPY as far as libpq knows: nothing else may run on it.
                self.broken = true;
                return Err(PqError::Send(self.error()));
            }
        }
        // SAFETY: raw is live; a null message ends the COPY normally.
        if unsafe { ffi::PQputCopyEnd(self.raw, std::ptr::null()) } != 1 {
            self.broken = true;
            return Err(PqError::Send(self.error()));
        }
        // SAFETY: raw is live.
        let res = unsafe { ffi::PQgetResult(self.raw) };
        self.finish_result(res, &[ffi::ExecStatusType::PGRES_COMMAND_OK])
    }

    /// Runs `statement` (a `COPY … TO STDOUT`, text format) and hands each row to `row`, without
    /// its newline. Rows are never held together: memory stays flat whatever the table's size.
    pub fn copy_out(&mut self, statement: &str, mut row: impl FnMut(&[u8])) -> Result<u64, PqError> {
        self.usable()?;
        let sql = CString::new(statement).map_err(|_| PqError::Server("the COPY statement holds a NUL byte".into()))?;
        // SAFETY: raw is live; sql is NUL-terminated and outlives the call; no parameters.
        let res = unsafe { ffi::PQexecParams(self.raw, sql.as_ptr(), 0, std::ptr::null(), std::ptr::null(), std::ptr::null(), std::ptr::null(), 0) };
        if res.is_null() || unsafe { ffi::PQresultStatus(res) } != ffi::ExecStatusType::PGRES_COPY_OUT {
            return self.finish_result(res, &[ffi::ExecStatusType::PGRES_COPY_OUT]).map(|_| 0);
        }
        // SAFETY: res is not used after this.
        unsafe { ffi::PQclear(res) };
        let mut rows = 0u64;
        loop {
            let mut buf: *mut c_char = std::ptr::null_mut();
            // SAFETY: raw is live; blocking mode (async = 0); libpq allocates buf, freed below.
            let n = unsafe { ffi::PQgetCopyData(self.raw, &mut buf, 0) };
            if n == -1 {
                break; // the COPY is done; its result follows
            }
            if n < 0 || buf.is_null() {
                self.broken = true;
                return Err(PqError::Server(self.error()));
            }
            // SAFETY: libpq returned n bytes at buf; one row per call in text format.
            let data = unsafe { std::slice::from_raw_parts(buf as *const u8, n as usize) };
            row(data.strip_suffix(b"\n").unwrap_or(data));
            rows += 1;
            // SAFETY: buf came from PQgetCopyData and is not used after this.
            unsafe { ffi::PQfreemem(buf.cast()) };
        }
        // SAFETY: raw is live.
        let res = unsafe { ffi::PQgetResult(self.raw) };
        self.finish_result(res, &[ffi::ExecStatusType::PGRES_COMMAND_OK])?;
        Ok(rows)
    }

    /// A COPY we did not start: libpq would answer every later PQgetResult with it for ever.
    /// The connection is given up (the caller fails; Drop closes it).
    fn unasked_copy(&mut self) -> PqError {
        self.broken = true;
        PqError::Server("the SQL started a COPY that was not asked for (a statement the backup hid in another)".into())
    }

    /// Checks a result's status, frees it, and drains any results after it (libpq requires
    /// that before the next command).
    fn finish_result(&mut self, res: *mut ffi::PGresult, ok: &[ffi::ExecStatusType]) -> Result<(), PqError> {
        if res.is_null() {
            return Err(PqError::Server(self.error()));
        }
        // SAFETY: res is a live result until PQclear.
        let status = unsafe { ffi::PQresultStatus(res) };
        let copy_state = is_copy(status);
        let outcome = if ok.contains(&status) {
            Ok(())
        } else if copy_state {
            Err(self.unasked_copy())
        } else {
            // SAFETY: as above; the message is copied out before PQclear.
            let msg = text(unsafe { ffi::PQresultErrorMessage(res) });
            Err(PqError::Server(if msg.is_empty() { self.error() } else { msg }))
        };
        // SAFETY: res is not used after this.
        unsafe { ffi::PQclear(res) };
        if !copy_state {
            loop {
                // SAFETY: raw is live; each result is cleared at once.
                let more = unsafe { ffi::PQgetResult(self.raw) };
                if more.is_null() {
                    break;
                }
                // A later statement of the same string may have started a COPY: see above.
                let status = unsafe { ffi::PQresultStatus(more) };
                unsafe { ffi::PQclear(more) };
                if is_copy(status) {
                    return Err(self.unasked_copy());
                }
            }
        }
        outcome
    }
}

/// What a statement that ran to its end may answer.
const STATEMENT_OK: &[ffi::ExecStatusType] =
    &[ffi::ExecStatusType::PGRES_COMMAND_OK, ffi::ExecStatusType::PGRES_TUPLES_OK, ffi::ExecStatusType::PGRES_EMPTY_QUERY];

fn is_copy(status: ffi::ExecStatusType) -> bool {
    matches!(status, ffi::ExecStatusType::PGRES_COPY_IN | ffi::ExecStatusType::PGRES_COPY_OUT | ffi::ExecStatusType::PGRES_COPY_BOTH)
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: raw is live and not used after this.
        unsafe { ffi::PQfinish(self.raw) };
    }
}
