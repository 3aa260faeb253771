//! Running blocking work inside another network namespace, on a dedicated thread: `setns` on
//! a tokio worker would leave that worker in the wrong namespace.

use std::io;
use std::os::fd::OwnedFd;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a fresh thread that entered the network namespace `ns`; the thread ends with
/// `f`, so no thread outlives its visit.
pub async fn run_in<T, F>(ns: &OwnedFd, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = ns.try_clone()?;
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
    .await
    .map_err(io::Error::other)?
}
