//! `ef-backup serve`, and [`Server`] for an app that embeds it: start-up checks, the HTTP
//! server, the scheduler, policy hot reload and graceful shutdown.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use crate::config::Config;
use crate::policy::Policy as _;
use crate::schedule::{self, Schedule, Scheduler};
use crate::service::{load_checked, Service};
use crate::state::StateStore;
use crate::store::s3::S3Store;
use crate::store::Mirror;
use crate::util::lock;
use crate::{api, engine};

/// How long shutdown waits for queued notifications.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// How often the policy file is looked at for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);

/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

fn check_token(config: &Config) -> Result<()> {
    match &config.admin_token {
        None => bail!(
            "EF__ADMIN_TOKEN is not set: the admin API needs a token of at least {MIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 32` and set EF__ADMIN_TOKEN (environment or .env)"
        ),
        // A token is sent in a header: a non-ASCII or whitespace character would be mangled
        // by some client or proxy, and a copy-paste accident is better found now.
        Some(t) if t.expose().chars().any(|c| !c.is_ascii_graphic()) => bail!(
            "EF__ADMIN_TOKEN contains a space, a control or a non-ASCII character: use printable ASCII only (e.g. `openssl rand -hex 32`)"
        ),
        Some(t) if t.expose().chars().count() < MIN_TOKEN_LEN => bail!(
            "EF__ADMIN_TOKEN is too short ({} characters, at least {MIN_TOKEN_LEN} needed); generate one with `openssl rand -hex 32`",
            t.expose().chars().count()
        ),
        Some(_) => Ok(()),
    }
}

/// Resolves on `signal` (default: SIGTERM or SIGINT); then gives a running backup `grace` to
/// finish before cancelling it.
async fn graceful_stop(service: Arc<Service>, grace: Duration, signal: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>) {
    let name = match signal {
        Some(signal) => {
            signal.await;
            "shutdown requested"
        }
        None => {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            }
        }
    };
    match service.running() {
        Some(b) => tracing::info!("{name}: shutting down; no new requests; backup {b} gets up to {}s to finish", grace.as_secs()),
        None => tracing::info!("{name}: shutting down; no backup is running"),
    }
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if let Some(b) = service.running() {
            tracing::warn!("grace period over: cancelling backup {b} (pg_dump is stopped, its partial file removed, its S3 upload aborted)");
            service.cancel_running();
        }
    });
}

/// Watches the policy file (polling its size and mtime; with `sighup`, SIGHUP forces a check)
/// and swaps in a new policy that passes `policy check` and whose schedule is valid; the new
/// schedule's timer starts before the old one stops. A rejected file leaves the running policy
/// and schedule alone.
async fn watch_policy(service: Arc<Service>, scheduler: Arc<Mutex<Option<Scheduler>>>, path: PathBuf, sighup: bool) {
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let mut last = stamp(&path);
    // A process-wide handler: installed only when asked (the binary), never behind the back
    // of an app that embeds the server and has its own idea of SIGHUP.
    let mut hup = sighup.then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler"));
    loop {
        let hangup = async {
            match &mut hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = hangup => true,
            _ = tokio::time::sleep(POLICY_POLL) => false,
        };
        let now = stamp(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        if forced {
            tracing::info!("SIGHUP: checking the policy file {}", path.display());
        }
        let (svc, file) = (Arc::clone(&service), path.clone());
        let reloaded = tokio::task::spawn_blocking(move || svc.reload(&file)).await;
        match reloaded {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(schedule))) => {
                tracing::info!("schedule: {}", schedule.description);
                let new = schedule::start(Arc::clone(&service), schedule);
                let old = lock(&scheduler).replace(new);
                if let Some(old) = old {
                    old.stop();
                }
            }
            Ok(Err(e)) => {
                tracing::error!("policy reload rejected, the running policy stays (and its schedule): {e}");
                service.announce(crate::model::EventKind::PolicyRejected, format!("{}: {e}", path.display())).await;
            }
            Err(e) => tracing::error!("policy reload failed, the running policy stays (and its schedule): {e}"),
        }
    }
}

/// A client has this long to send a request's headers (also the idle limit between requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may wait for its request before it can be closed to make room
/// (a legitimate client sends its request right after connecting).
const IDLE_GRACE: Duration = Duration::from_millis(200);
/// Pause after a failed accept (e.g. EMFILE), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this long about refused or dropped connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections that have not sent a request yet, oldest first, with the switch that closes
/// each: when the cap is reached, those idle for longer than [`IDLE_GRACE`] make room for new
/// ones, so idle or half-open connections can never lock the API out.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<(u64, Instant, oneshot::Sender<()>)>>);

enum Room {
    /// An idle connection was closed: its slot is free in a moment.
    Made,
    /// The oldest waiting connection is younger than the grace: look again after this.
    Later(Duration),
    /// Every open connection is serving a request.
    None,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Instant, oneshot::Sender<()>)>> {
        lock(&self.0)
    }
    /// Closes the oldest connection that has waited at least `grace` for its request.
    fn make_room(&self, grace: Duration) -> Room {
        let mut waiting = self.lock();
        while let Some((_, since, close)) = waiting.front() {
            if close.is_closed() {
                waiting.pop_front();
                continue;
            }
            let age = since.elapsed();
            if age < grace {
                return Room::Later(grace - age);
            }
            let (_, _, close) = waiting.pop_front().expect("front exists");
            if close.send(()).is_ok() {
                return Room::Made;
            }
        }
        Room::None
    }
    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _, _)| *i != id);
    }
}

struct RateLimitedWarn(Option<Instant>);

impl RateLimitedWarn {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests in flight
/// finish. At most `max_connections` connections are open at once; a client must send its
/// headers within [`HEADER_READ_TIMEOUT`]; an accept error (EMFILE...) is logged and retried
/// after a pause.
pub async fn serve_http(listener: TcpListener, router: axum::Router, max_connections: usize, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let waiting = Arc::new(Waiting::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let mut accept_warn = RateLimitedWarn(None);
    let mut cap_warn = RateLimitedWarn(None);
    tokio::pin!(shutdown);
    'accept: for id in 0u64.. {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors: an idle connection gives its one back.
                waiting.make_room(Duration::ZERO);
                if accept_warn.due() {
                    tracing::error!("cannot accept admin API connections: {e}; retrying (raise LimitNOFILE, or lower EF__HTTP_MAX_CONNECTIONS)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = loop {
            if let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
                break p;
            }
            let room = waiting.make_room(IDLE_GRACE);
            if cap_warn.due() {
                tracing::warn!(
                    "{max_connections} admin API connections open (EF__HTTP_MAX_CONNECTIONS); new ones wait, and connections idle for {}ms or more are closed to make room",
                    IDLE_GRACE.as_millis()
                );
            }
            let look_again = match room {
                Room::Later(after) => after,
                Room::Made | Room::None => Duration::MAX,
            };
            tokio::select! {
                p = Arc::clone(&slots).acquire_owned() => break p.expect("the semaphore is never closed"),
                _ = tokio::time::sleep(look_again), if look_again != Duration::MAX => {}
                _ = &mut shutdown => break 'accept,
            }
        };
        let (close, mut closed) = oneshot::channel();
        waiting.lock().push_back((id, Instant::now(), close));
        let (w, tower) = (Arc::clone(&waiting), TowerToHyperService::new(router.clone()));
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            w.remove(id);
            tower.call(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let w = Arc::clone(&waiting);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!("admin API connection ended: {e}") },
                Ok(()) = &mut closed => tracing::debug!("closed an idle admin API connection to make room"),
            }
            w.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// `ef-backup serve` as a library: an embedding app (the EuraFlow backend, a dashboard) gets the
/// same start-up checks, policy hot reload, scheduler and graceful shutdown as the binary, on
/// its own runtime, listener and shutdown signal.
///
/// ```no_run
/// # async fn app(config: ef_backup::config::Config) -> anyhow::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// ef_backup::serve::Server::new(config, "policy.wasm".as_ref())
///     .listener(listener)
///     .shutdown_on(async move { let _ = stopped.await; })
///     .run()
///     .await?;
/// # drop(stop); Ok(()) }
/// ```
pub struct Server {
    config: Config,
    policy_path: PathBuf,
    listener: Option<TcpListener>,
    shutdown: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    sighup: bool,
}

impl Server {
    pub fn new(config: Config, policy_path: &Path) -> Server {
        Server { config, policy_path: policy_path.to_path_buf(), listener: None, shutdown: None, sighup: false }
    }

    /// Also check the policy file on SIGHUP (the binary does; an embedding app decides, since
    /// the handler is process-wide). The file is polled every 2 s either way.
    pub fn reload_on_sighup(mut self, yes: bool) -> Server {
        self.sighup = yes;
        self
    }

    /// Serve the admin API on this listener instead of binding `EF__HTTP_ADDR`.
    pub fn listener(mut self, listener: TcpListener) -> Server {
        self.listener = Some(listener);
        self
    }

    /// Shut down when this resolves instead of on SIGTERM/SIGINT. Either way a running backup
    /// gets `EF__SHUTDOWN_GRACE_SECS` to finish before it is cancelled.
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Server {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Checks, starts, serves until the shutdown signal, and returns once the running backup
    /// (if any) has ended and been recorded.
    pub async fn run(self) -> Result<()> {
        let Server { config, policy_path, listener, shutdown, sighup } = self;
        tracing::info!("Database backup plugin initializing...");
        check_token(&config)?;
        // Compiling the policy and opening the state store block: off the async threads.
        let (config, policy, schedule, state) = {
            let path = policy_path.clone();
            tokio::task::spawn_blocking(move || start_up(config, &path)).await.context("the start-up task failed")??
        };
        let s3 = config.s3.as_ref().map(|c| Arc::new(S3Store::new(c, config.s3_part_size, tokio::runtime::Handle::current())) as Arc<dyn Mirror>);
        let addr = config.http_addr.clone();
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let max_connections = config.http_max_connections;
        let alerts = crate::alerts::Alerts::start(&config, crate::state::Trigger::Service);
        let service = Service::new(config, Arc::new(policy), s3, state, alerts);
        service.resolve_view_in_background();
        match service.drills() {
            Ok(on) => tracing::info!("restore drills run {on}"),
            Err(why) => tracing::warn!("restore drills are off: {why}"),
        }
        let listener = match listener {
            Some(l) => l,
            None => {
                TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr} (EF__HTTP_ADDR): is another process using it?"))?
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        let zone = schedule.zone;
        let description = schedule.description.clone();
        service.check_missed_at_start(&schedule).await;
        let scheduler = Arc::new(Mutex::new(Some(schedule::start(Arc::clone(&service), schedule))));
        let watcher = tokio::spawn(watch_policy(Arc::clone(&service), Arc::clone(&scheduler), policy_path, sighup));
        let next = service.status_next_run();
        match next.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
            Some(t) => tracing::info!(
                "schedule: {description}; next backup at {} ({})",
                t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z"),
                t.format("%H:%M:%S UTC")
            ),
            None => tracing::warn!("schedule: {description}; it never fires"),
        }
        tracing::info!("admin API listening on http://{addr}");
        service.announce(crate::model::EventKind::ServiceStarted, format!("ef-backup started; schedule: {description}")).await;
        let stop = graceful_stop(Arc::clone(&service), grace, shutdown);
        serve_http(listener, api::router(Arc::clone(&service)), max_connections, stop).await;
        // No new scheduled runs, then let the running one end (or be cancelled).
        watcher.abort();
        let stopped = lock(&scheduler).take();
        if let Some(s) = stopped {
            s.stop();
        }
        let was_running = service.running();
        service.wait_idle().await;
        service.announce(crate::model::EventKind::ServiceStopped, "ef-backup stopped".into()).await;
        // Messages of the last run (and the stop) get a little time; a channel that is down
        // cannot hold the shutdown up for longer.
        service.flush_notifications(SHUTDOWN_FLUSH).await;
        match was_running {
            Some(b) => tracing::info!("shutdown complete: backup {b} ended ({})", service.last_message().unwrap_or_default()),
            None => tracing::info!("shutdown complete"),
        }
        Ok(())
    }
}

/// The blocking half of start-up: the policy (compiled, checked, pinned), its schedule, the
/// state store, and the start-up log lines the original printed.
fn start_up(config: Config, policy_path: &Path) -> Result<(Config, crate::policy::WasmPolicy, Schedule, StateStore)> {
    let policy = load_checked(&config, policy_path)?;
    let info = policy.info().clone();
    tracing::info!("policy {} (euraflow:backup@{}, sha256 {})", info.path.display(), info.wit_version, info.sha256);
    let schedule = Schedule::from_policy(&policy.schedule(&config.policy)?)?;
    schedule.validate(chrono::Utc::now())?;
    let state =
        StateStore::open(&config).with_context(|| format!("cannot use the state directory {} (EF__STATE_DIR)", config.state_dir.display()))?;
    tracing::info!("state: {}", state.path().display());
    engine::log_s3_state(&config);
    if let Ok(listing) = crate::store::local::LocalStore::new(&config.backup_dir).list() {
        crate::catalog::warn_legacy_names(&policy, &config, &config.backup_dir.display().to_string(), &listing);
    }
    Ok((config, policy, schedule, state))
}

/// `ef-backup serve`: [`Server`] on a runtime of its own, bound to `EF__HTTP_ADDR`, stopped by
/// SIGTERM or SIGINT.
pub fn run(config: Config, policy_path: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let result = rt.block_on(Server::new(config, policy_path).reload_on_sighup(true).run());
    // A restore drill may still run on a blocking thread (shutdown waits for backups, not for
    // drills): it is abandoned, its throwaway server dies with the process, and the next start
    // records it as interrupted.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> Result<()> {
        let vars = [("EF__ADMIN_TOKEN".to_string(), token.to_string())].into_iter().collect();
        check_token(&Config::from_vars(&vars, Path::new("/")).unwrap())
    }

    /// Pins issue 12: a token with a space or a non-ASCII character was accepted at start-up
    /// and then never matched what clients could send.
    #[test]
    fn tokens_must_be_printable_ascii() {
        assert!(with_token("0123456789abcdef0123").is_ok());
        for bad in ["0123456789 abcdef0123", "0123456789abcdef012é", "0123456789\tabcdef0123"] {
            let err = with_token(bad).unwrap_err().to_string();
            assert!(err.contains("printable ASCII"), "{bad:?}: {err}");
        }
        assert!(with_token("short").unwrap_err().to_string().contains("too short"));
    }
}
