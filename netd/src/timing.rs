//! Where a change's time goes: a per-phase breakdown of attach, detach and zone changes.
//!
//! With `RNET_TIMINGS` in rnetd's environment (or debug logs for target `netd::timing`), every
//! change run through [`timed`] logs one line at the end, e.g.
//! `attach web: 3.21 ms = check 0.05, lock 0.01, observe 0.40, plan 0.02, add-veth 1.10, ...`:
//! the time from one [`lap`] to the next, summed per phase name (in the order each name first
//! appeared). Laps outside a timed change, or with timings off, cost one task-local look.
//! A diagnosis aid for profiling (`docs/benchmarks.md`), never a condition of behaviour.

use std::cell::RefCell;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{Level, info};

tokio::task_local! {
    static PHASES: RefCell<Phases>;
}

/// The laps of one change.
#[derive(Debug)]
struct Phases {
    start: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        match self.laps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, d)) => *d += took,
            None => self.laps.push((name, took)),
        }
    }

    /// `3.21 ms = check 0.05, lock 0.01, ...` (milliseconds).
    fn render(&self) -> String {
        let total = self.last.duration_since(self.start).as_secs_f64() * 1e3;
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(n, d)| format!("{n} {:.2}", d.as_secs_f64() * 1e3))
            .collect();
        format!("{total:.2} ms = {}", parts.join(", "))
    }
}

/// Whether timings are on: `RNET_TIMINGS` in the environment (read once), or debug logs for
/// target `netd::timing`.
pub fn enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| std::env::var_os("RNET_TIMINGS").is_some())
        || tracing::enabled!(target: "netd::timing", Level::DEBUG)
}

/// Runs `change` (what: `attach`, `detach`, ...; object: the machine or zone) and, with timings
/// on, logs its per-phase breakdown when it ends. A change inside a timed one (a zone removed
/// with its last member) adds its laps to the outer one.
pub async fn timed<T>(what: &'static str, object: &str, change: impl Future<Output = T>) -> T {
    if !enabled() || PHASES.try_with(|_| ()).is_ok() {
        return change.await;
    }
    let (out, phases) = PHASES
        .scope(RefCell::new(Phases::new()), async {
            let out = change.await;
            lap("rest");
            let phases = PHASES.with(|p| p.replace(Phases::new()));
            (out, phases)
        })
        .await;
    info!(target: "netd::timing", "{what} {object}: {}", phases.render());
    out
}

/// Ends the current phase of the timed change, if any, under `name`.
pub fn lap(name: &'static str) {
    let _ = PHASES.try_with(|p| p.borrow_mut().lap(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_of_one_name_add_up_in_first_seen_order() {
        let mut p = Phases::new();
        p.lap("observe");
        p.lap("nft");
        p.lap("observe");
        let names: Vec<&str> = p.laps.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["observe", "nft"]);
        let text = p.render();
        assert!(text.contains(" ms = observe "), "{text}");
        assert!(text.contains(", nft "), "{text}");
    }

    #[tokio::test]
    async fn a_lap_outside_a_timed_change_is_ignored() {
        lap("nothing");
        let out = PHASES
            .scope(RefCell::new(Phases::new()), async {
                lap("inside");
                PHASES.with(|p| p.borrow().laps.len())
            })
            .await;
        assert_eq!(out, 1);
    }
}
