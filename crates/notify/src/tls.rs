//! TLS for the HTTP channels: rustls with the aws-lc-rs provider passed explicitly (the process
//! has no default provider to rely on, see Cargo.toml), trusting the system's CA store so an
//! operator's own CA works, or Mozilla's roots (webpki-roots) where the system has none (a
//! minimal container without ca-certificates).

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;

pub(crate) struct Roots {
    pub(crate) store: Arc<RootCertStore>,
    /// False: the system store was empty or unreadable and the built-in roots are used.
    pub(crate) native: bool,
}

/// Loaded once per process: reading the system store parses a few hundred certificates.
pub(crate) fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
        if added > 0 {
            return Roots { store: Arc::new(store), native: true };
        }
        tracing::info!(
            "no CA certificates found in the system store ({} errors); notifications over TLS trust the built-in Mozilla roots",
            loaded.errors.len()
        );
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Roots { store: Arc::new(store), native: false }
    })
}

pub(crate) fn client_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots().store.clone())
        .with_no_client_auth();
    Ok(config)
}
