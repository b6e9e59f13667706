//! Real local servers for the delivery tests: a tiny HTTP/1.1 receiver, a server that accepts
//! and never answers, and a minimal SMTP responder; all on 127.0.0.1, recording what arrives.

#![allow(dead_code)] // each test file uses a part

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Answers each request with the next scripted `(status, body)`, then with `default`.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    pub async fn ok() -> Receiver {
        Receiver::start(vec![], (200, "ok")).await
    }

    pub async fn start(script: Vec<(u16, &'static str)>, default: (u16, &'static str)) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let script = Arc::new(Mutex::new(script.into_iter().collect::<std::collections::VecDeque<_>>()));
        let (reqs, notify) = (requests.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (reqs, notify, script) = (reqs.clone(), notify.clone(), script.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    if let Some(request) = read_request(&mut stream).await {
                        let (status, body) = script.lock().unwrap().pop_front().unwrap_or(default);
                        reqs.lock().unwrap().push(request);
                        notify.notify_waiters();
                        let response = format!(
                            "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.get_mut().write_all(response.as_bytes()).await;
                        let _ = stream.get_mut().shutdown().await;
                    }
                });
            }
        });
        Receiver { addr, requests, arrived }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The first `n` requests, once they have arrived; panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{} of {n} requests within {within:?}: {got:?}", got.len());
            }
        }
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, headers, body })
}

/// Accepts connections and never answers: a service that hangs.
pub async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A port nothing listens on: connections are refused.
pub async fn refused() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A minimal SMTP server: records every line the client sends and each message's data.
pub struct SmtpSink {
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    /// `ehlo_extensions`: what EHLO advertises after the greeting line, e.g. `["AUTH PLAIN LOGIN"]`.
    pub async fn start(ehlo_extensions: &'static [&'static str]) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (l, m) = (lines.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(smtp_session(stream, ehlo_extensions, l.clone(), m.clone()));
            }
        });
        SmtpSink { addr, lines, messages }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

async fn smtp_session(stream: TcpStream, extensions: &[&str], lines: Arc<Mutex<Vec<String>>>, messages: Arc<Mutex<Vec<String>>>) {
    let mut stream = BufReader::new(stream);
    if stream.get_mut().write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        lines.lock().unwrap().push(line.clone());
        let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let mut reply = String::new();
                let all: Vec<&str> = std::iter::once("sink.test").chain(extensions.iter().copied()).collect();
                for (i, ext) in all.iter().enumerate() {
                    let sep = if i + 1 == all.len() { ' ' } else { '-' };
                    reply.push_str(&format!("250{sep}{ext}\r\n"));
                }
                reply
            }
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => "250 OK\r\n".into(),
            "AUTH" => "235 accepted\r\n".into(),
            "STARTTLS" => "454 not available\r\n".into(),
            "DATA" => {
                if stream.get_mut().write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if stream.read_line(&mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if l.trim_end_matches(['\r', '\n']) == "." {
                        break;
                    }
                    data.push_str(&l);
                }
                messages.lock().unwrap().push(data);
                "250 queued\r\n".into()
            }
            "QUIT" => {
                let _ = stream.get_mut().write_all(b"221 bye\r\n").await;
                return;
            }
            _ => "500 unknown\r\n".into(),
        };
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Everything logged in this test process (the subscriber is process-wide, so tests running in
/// parallel share it: look for text only one test produces).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let log = Capture::default();
            let writer = log.clone();
            tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).init();
            log
        })
        .clone()
}
