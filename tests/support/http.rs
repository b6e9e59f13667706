//! A client for the service's HTTP API, on a bare TCP connection: enough for its few plain
//! requests, and it can see what a client library would hide (a dropped connection, a
//! chunked reply).

/// A response read by [`http`].
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", self.body))
    }
}

/// A plain HTTP/1.1 request (one connection, `Connection: close`): enough to talk to the
/// service without an HTTP client library.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    try_http(port, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

/// [`http`] that reports a broken connection (the server was killed) instead of panicking.
pub fn try_http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpReply, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    assert!(
        headers.iter().all(|(k, v)| !(k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))),
        "chunked responses are not expected"
    );
    Ok(HttpReply { status, headers, body: body.to_string() })
}

/// Fires `n` authorized POSTs to `path` at once; join the handles for (status, JSON body).
pub fn post_concurrently(port: u16, auth: &str, path: &'static str, n: usize) -> Vec<std::thread::JoinHandle<(u16, serde_json::Value)>> {
    (0..n)
        .map(|_| {
            let auth = auth.to_string();
            std::thread::spawn(move || {
                let r = http(port, "POST", path, &[("Authorization", &auth)], b"");
                (r.status, r.json())
            })
        })
        .collect()
}
