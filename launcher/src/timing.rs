//! Where a start's time goes: with `RNET_TIMINGS` in the launcher's environment, `rnet run`
//! prints to stderr when each of its steps ends, in milliseconds since `main` began, with the
//! pid of the process that took it (the launcher, or the child it forked):
//! `rnet timing:    4.31 ms 1234 attach answered`. The counterpart of rnetd's timing lines
//! (`netd/src/timing.rs`); a diagnosis aid (`docs/benchmarks.md`), never a condition of
//! behaviour.

use std::sync::OnceLock;
use std::time::Instant;

/// When `main` began, if timings are on.
static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (first thing in `main`).
pub fn init() {
    START.get_or_init(|| std::env::var_os("RNET_TIMINGS").map(|_| Instant::now()));
}

/// Prints that step `what` ended, if timings are on.
pub fn mark(what: &str) {
    if let Some(Some(start)) = START.get() {
        // One write: the launcher and its child print to the same stderr at once.
        let line = format!(
            "rnet timing: {:8.2} ms {} {what}\n",
            start.elapsed().as_secs_f64() * 1e3,
            std::process::id()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
}
