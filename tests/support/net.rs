//! Loopback networking: ports for the servers a test starts, and a proxy in front of a store
//! that the test can cut, slow down or make lie, which a real network does at will.

/// A free TCP port on loopback (bind, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP proxy on loopback in front of a server, which the test can cut: every connection is
/// closed and new ones are refused, as when the network to S3 goes away.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    /// Bytes forwarded towards the server.
    upstream_bytes: std::sync::atomic::AtomicU64,
    /// Cut automatically once this many bytes went upstream (0: never).
    cut_after: std::sync::atomic::AtomicU64,
    /// Forwarding rate limit per connection and direction, bytes per second (0: none).
    throttle: std::sync::atomic::AtomicU64,
    /// Change the first hex digit of every `<ETag>` element in responses: a store that
    /// reports an object other than the one uploaded.
    corrupt_etags: std::sync::atomic::AtomicBool,
    /// Hold every answer to the start of a multipart upload this many milliseconds (0: none):
    /// the store has made the upload, the client does not know it yet.
    hold_upload_starts_ms: std::sync::atomic::AtomicU64,
}

/// Flips the first hex digit after each `<ETag>` in `buf` (lengths stay the same, so the
/// response's Content-Length stays right). The element sits in one small XML body, which
/// arrives in one read.
fn corrupt_etags(buf: &mut [u8]) {
    const TAG: &[u8] = b"<ETag>";
    let mut i = 0;
    while let Some(at) = buf[i..].windows(TAG.len()).position(|w| w == TAG) {
        i += at + TAG.len();
        let quote = [&b"&quot;"[..], b"&#34;", b"&#x22;", b"\""].into_iter().find(|q| buf[i..].starts_with(q));
        let j = i + quote.map_or(0, <[u8]>::len);
        if let Some(c) = buf.get_mut(j).filter(|c| c.is_ascii_hexdigit()) {
            *c = if *c == b'0' { b'1' } else { b'0' };
        }
    }
}

impl Proxy {
    pub fn start(target: std::net::SocketAddr) -> Proxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.cut.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                for (mut from, mut to, up) in [(client.try_clone().unwrap(), server.try_clone().unwrap(), true), (server, client, false)] {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if st.cut.load(SeqCst) {
                                break;
                            }
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if up {
                                let total = st.upstream_bytes.fetch_add(n as u64, SeqCst) + n as u64;
                                let limit = st.cut_after.load(SeqCst);
                                if limit > 0 && total >= limit {
                                    st.cut.store(true, SeqCst);
                                    break;
                                }
                            }
                            if !up && st.corrupt_etags.load(SeqCst) {
                                corrupt_etags(&mut buf[..n]);
                            }
                            let hold = st.hold_upload_starts_ms.load(SeqCst);
                            if !up && hold > 0 && buf[..n].windows(30).any(|w| w == b"<InitiateMultipartUploadResult") {
                                std::thread::sleep(std::time::Duration::from_millis(hold));
                            }
                            let bps = st.throttle.load(SeqCst);
                            if bps > 0 {
                                std::thread::sleep(std::time::Duration::from_secs_f64(n as f64 / bps as f64));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut_after(&self, bytes: u64) {
        self.state.cut_after.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.state.cut_after.store(0, std::sync::atomic::Ordering::SeqCst);
        self.state.throttle.store(0, std::sync::atomic::Ordering::SeqCst);
        self.state.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection now and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every `<ETag>` in the store's XML answers wrong (see [`ProxyState`]).
    pub fn corrupt_etags(&self) {
        self.state.corrupt_etags.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds the store's answers to the start of a multipart upload for `hold` (see [`ProxyState`]).
    pub fn hold_upload_starts(&self, hold: std::time::Duration) {
        self.state.hold_upload_starts_ms.store(hold.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Slows forwarding to `bytes_per_sec` per connection and direction.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.throttle.store(bytes_per_sec, std::sync::atomic::Ordering::SeqCst);
    }
}
