//! An app embedding the service (`ef_backup::serve::Server`) on its own runtime, listener and
//! shutdown signal: it serves the admin API, and its own signal stops it gracefully. Nothing
//! here needs PostgreSQL (no backup runs); it needs the default policy component, which
//! scripts/test.sh builds (EF_TEST_POLICY_WASM).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy() -> PathBuf {
    let path = std::env::var_os("EF_TEST_POLICY_WASM").map(PathBuf::from).unwrap_or_else(ef_backup::policy::default_policy_path);
    assert!(path.is_file(), "{} missing: build it with scripts/build-policy.sh (scripts/test.sh does)", path.display());
    path
}

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await?;
    Ok(out)
}

/// The current disposition of SIGHUP (SIG_DFL, SIG_IGN or a handler's address).
fn sighup_action() -> libc::sighandler_t {
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into a zeroed struct; changes nothing.
    assert_eq!(unsafe { libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut action) }, 0);
    action.sa_sigaction
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_app_serves_the_api_and_stops_it_with_its_own_signal() {
    let dir = tempfile::tempdir().unwrap();
    let vars: BTreeMap<String, String> = [
        ("EF__BACKUP_DIR", dir.path().join("backups").display().to_string()),
        ("EF__STATE_DIR", dir.path().join("state").display().to_string()),
        ("EF__BACKUP_POLICY_CACHE_DIR", "off".to_string()),
        ("EF__ADMIN_TOKEN", "embedded-app-token-0123456789".to_string()),
        // The app's listener is used, not this address.
        ("EF__HTTP_ADDR", "127.0.0.1:1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = ef_backup::config::Config::from_vars(&vars, dir.path()).unwrap();
    // What the app has for SIGHUP before the server starts: the default, or "ignore" when the
    // tests run under nohup.
    let hup_before = sighup_action();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        ef_backup::serve::Server::new(config, &policy())
            .listener(listener)
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );

    // Start-up compiles the policy (seconds in a debug build) before the API answers.
    let started = Instant::now();
    let health = loop {
        match get(addr, "/healthz").await {
            Ok(r) if !r.is_empty() => break r,
            _ if started.elapsed() < Duration::from_secs(60) && !server.is_finished() => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("the embedded API never answered: {other:?}"),
        }
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The embedded server left the app's SIGHUP alone (the binary's reload-on-SIGHUP is opt-in).
    assert_eq!(sighup_action(), hup_before, "an embedded server changed the app's SIGHUP disposition");
    let status = get(addr, "/api/ef/v1/backup/status").await.unwrap();
    assert!(status.starts_with("HTTP/1.1 401"), "the API is protected by the configured token: {status}");

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), server).await.expect("the app's signal stops the server");
    ended.unwrap().expect("a clean shutdown");
    assert!(get(addr, "/healthz").await.is_err(), "the listener is closed after shutdown");
}
