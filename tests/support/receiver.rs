//! A local HTTP receiver standing in for webhook, Slack, Telegram and heartbeat endpoints: it
//! records every request (method, path, headers, body) and answers as told — 200 with a
//! Telegram-style `{"ok":true}`, another status, or never (a channel that is down).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Status(u16),
    /// Reads the request, then never answers (the connection stays open).
    Hang,
}

pub struct Receiver {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
    /// Requests read but left unanswered ([`Answer::Hang`]).
    hanging: Arc<Mutex<usize>>,
}

fn read_request(stream: &std::net::TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received { method, path, headers, body })
}

impl Receiver {
    pub fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let hanging = Arc::new(Mutex::new(0));
        let (r, a, h) = (Arc::clone(&received), Arc::clone(&answer), Arc::clone(&hanging));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, a, h) = (Arc::clone(&r), Arc::clone(&a), Arc::clone(&h));
                std::thread::spawn(move || {
                    let mut stream = stream;
                    while let Some(req) = read_request(&stream) {
                        let how = *a.lock().unwrap();
                        r.lock().unwrap().push(req);
                        let status = match how {
                            Answer::Hang => {
                                *h.lock().unwrap() += 1;
                                std::thread::sleep(Duration::from_secs(3600));
                                return;
                            }
                            Answer::Ok => 200,
                            Answer::Status(s) => s,
                        };
                        let body = if status == 200 { r#"{"ok":true}"# } else { r#"{"ok":false}"# };
                        let reply = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { port, received, answer, hanging }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests were read and are left hanging.
    pub fn hanging(&self) -> usize {
        *self.hanging.lock().unwrap()
    }

    /// Waits (up to `limit`) for a request `pred` accepts; the requests so far on timeout.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&Received) -> bool) -> Result<Received, Vec<Received>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(r) = self.received().into_iter().find(&pred) {
                return Ok(r);
            }
            if Instant::now() > end {
                return Err(self.received());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
