//! `ef-backup serve`: start-up checks, the HTTP server, the scheduler and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::policy::{self, Policy};
use crate::schedule::{self, Schedule};
use crate::service::Service;
use crate::store::s3::S3Store;
use crate::{api, engine};

/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

fn check_token(config: &Config) -> Result<()> {
    match &config.admin_token {
        None => bail!(
            "EF__ADMIN_TOKEN is not set: the admin API needs a token of at least {MIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 32` and set EF__ADMIN_TOKEN (environment or .env)"
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

pub fn run(config: Config, policy: Policy) -> Result<()> {
    tracing::info!("Database backup plugin initializing...");
    check_token(&config)?;
    let info = policy.info().clone();
    tracing::info!("policy {} (euraflow:backup@{}, sha256 {})", info.path.display(), info.wit_version, info.sha256);
    let schedule = Schedule::from_policy(&policy.schedule(&policy::policy_config(&config))?)?;
    engine::log_s3_state(&config);
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
        let mut scheduler = schedule::start(Arc::clone(&service), schedule).await?;
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
        let _ = scheduler.shutdown().await;
        let was_running = service.running();
        service.wait_idle().await;
        match was_running {
            Some(b) => tracing::info!("shutdown complete: backup {b} ended ({})", service.last_message().unwrap_or_default()),
            None => tracing::info!("shutdown complete"),
        }
        Ok(())
    })
}
