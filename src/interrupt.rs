//! Ctrl-C and `kill` (SIGINT, SIGTERM) ask a training run to stop at the end
//! of its current step instead of dying mid-write: the handler only sets a
//! flag, the training loop reads it after every step. A second signal ends
//! the process at once (exit status 130), for a user who will not wait for
//! the step. No dependency: the C library's `signal` and `_exit` are
//! declared here (std links libc on Unix).

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(unix)]
extern "C" fn on_signal(_signum: i32) {
    // Async-signal-safe: an atomic swap, and `_exit` on the second signal.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { _exit(130) }
    }
}

#[cfg(unix)]
extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

/// Route SIGINT and SIGTERM to the stop flag. The CLI calls this for the
/// verbs that train; the others keep the default (the signal ends them).
pub fn install_handlers() {
    #[cfg(unix)]
    {
        const SIGINT: i32 = 2;
        const SIGTERM: i32 = 15;
        // SAFETY: `on_signal` is an `extern "C" fn(i32)` that performs one
        // atomic store, which is async-signal-safe.
        unsafe {
            signal(SIGINT, on_signal);
            signal(SIGTERM, on_signal);
        }
    }
}
