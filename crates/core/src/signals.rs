//! SIGINT and SIGTERM for the one-shot commands (`backup`, `restore`, `verify`): the first
//! signal is handed to the command so it can stop cleanly (a backup removes its partial file,
//! a restore drops its scratch database); a second one ends the process at once.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signal the watcher took, if one came.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Blocks SIGINT and SIGTERM in this thread — and so in every thread started after it: call
/// before any is — and takes them on a watcher thread: the first is recorded ([`received`]) and
/// passed to `first`; a second ends the process with 128 + the signal.
pub fn on_first(first: impl FnOnce(i32) + Send + 'static) {
    // SAFETY: plain sigset/sigmask calls on a local set; the watcher thread only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                return;
            }
            RECEIVED.store(sig, Ordering::SeqCst);
            first(sig);
            if libc::sigwait(&set, &mut sig) == 0 {
                std::process::exit(128 + sig);
            }
        });
    }
}
