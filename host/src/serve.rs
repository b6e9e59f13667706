//! `ef-backup serve`: start-up checks, the HTTP server, the scheduler and graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::policy;
use crate::schedule::{self, Schedule};
use crate::service::{load_checked, Service};
use tokio_cron_scheduler::JobScheduler;
use crate::store::s3::S3Store;
use crate::{api, engine};

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

/// Resolves on SIGTERM or SIGINT; then gives a running backup `grace` to finish before
/// cancelling it.
async fn shutdown_signal(service: Arc<Service>, grace: Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
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

/// Watches the policy file (polling its size and mtime; SIGHUP forces a check) and swaps in
/// a new policy that passes `policy check`; a rejected file leaves the running policy alone.
async fn watch_policy(service: Arc<Service>, scheduler: Arc<tokio::sync::Mutex<JobScheduler>>, path: PathBuf) {
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        let forced = tokio::select! {
            _ = hup.recv() => true,
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
        let svc = Arc::clone(&service);
        let reloaded = tokio::task::spawn_blocking(move || svc.reload()).await;
        match reloaded {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(new))) => match Schedule::from_policy(&new) {
                Ok(schedule) => {
                    let mut sched = scheduler.lock().await;
                    let _ = sched.shutdown().await;
                    match schedule::start(Arc::clone(&service), schedule).await {
                        Ok(s) => *sched = s,
                        Err(e) => tracing::error!("the new policy's schedule could not be started: {e}"),
                    }
                }
                Err(e) => tracing::error!("the new policy's schedule is invalid ({e}); backups keep the old schedule"),
            },
            Ok(Err(e)) => tracing::error!("policy reload rejected, the running policy stays: {e}"),
            Err(e) => tracing::error!("policy reload failed: {e}"),
        }
    }
}

pub fn run(config: Config, policy_path: &Path) -> Result<()> {
    tracing::info!("Database backup plugin initializing...");
    check_token(&config)?;
    let policy = load_checked(&config, policy_path)?;
    let info = policy.info().clone();
    tracing::info!("policy {} (euraflow:backup@{}, sha256 {})", info.path.display(), info.wit_version, info.sha256);
    let schedule = Schedule::from_policy(&policy.schedule(&policy::policy_config(&config))?)?;
    engine::log_s3_state(&config);
    if let Ok(listing) = crate::store::local::LocalStore::new(&config.backup_dir).list() {
        crate::retention::warn_legacy_names(&policy, &config, &config.backup_dir.display().to_string(), &listing);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let s3 = config.s3.as_ref().map(|c| S3Store::new(c, config.s3_part_size, tokio::runtime::Handle::current()));
        let addr = config.http_addr.clone();
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let service = Service::new(config, policy, s3);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (EF__HTTP_ADDR): is another process using it?"))?;
        let zone = schedule.zone;
        let description = schedule.description.clone();
        let scheduler = Arc::new(tokio::sync::Mutex::new(schedule::start(Arc::clone(&service), schedule).await?));
        let watcher = tokio::spawn(watch_policy(Arc::clone(&service), Arc::clone(&scheduler), policy_path.to_path_buf()));
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
        axum::serve(listener, api::router(Arc::clone(&service)))
            .with_graceful_shutdown(shutdown_signal(Arc::clone(&service), grace))
            .await
            .context("the HTTP server failed")?;
        // No new scheduled runs, then let the running one end (or be cancelled).
        watcher.abort();
        let _ = scheduler.lock().await.shutdown().await;
        let was_running = service.running();
        service.wait_idle().await;
        match was_running {
            Some(b) => tracing::info!("shutdown complete: backup {b} ended ({})", service.last_message().unwrap_or_default()),
            None => tracing::info!("shutdown complete"),
        }
        Ok(())
    })
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
