//! Gives the heap memory freed after a burst of requests back to the kernel.
//!
//! An attach runs a large state machine (about 15 KiB per request in flight) and many short
//! allocations (netlink messages, nftables batches, JSON); a burst of hundreds of `rnet run`s
//! has hundreds of them alive at once. Freed, that memory stays in glibc's arenas: glibc gives
//! back only the free space at the top of the main heap, not the free pages between live
//! chunks nor those of the other threads' arenas. Measured with heaptrack at 300 containers
//! (issue 15), rnetd's live heap was about 5 MB while its anonymous memory was 15.7 MB, and
//! `malloc_trim(0)` brought that to 7 MB. So once requests pause for [`QUIET`], rnetd calls
//! `malloc_trim(0)` (glibc; a no-op elsewhere), which returns every free page of every arena,
//! on a blocking thread. A request never waits for it: the trim runs only after a pause, once
//! per pause.

use std::time::Duration;

use tokio::sync::Notify;

/// How long requests must pause before the trim runs.
pub const QUIET: Duration = Duration::from_secs(1);

/// Requests finished since the last trim (a stored permit: none is lost).
static ACTIVITY: Notify = Notify::const_new();

/// A request or a container's exit is done: what its work freed may be trimmed once requests
/// pause.
pub fn poke() {
    ACTIVITY.notify_one();
}

/// Trims after each pause in activity, for the daemon's life (spawned once by `rnetd`).
pub async fn run() {
    debounce(&ACTIVITY, QUIET, || async {
        let _ = tokio::task::spawn_blocking(release).await;
    })
    .await;
}

/// Waits for a notification, then until `quiet` passes without one, then runs `act`; again.
async fn debounce<F, Fut>(activity: &Notify, quiet: Duration, mut act: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        activity.notified().await;
        while tokio::time::timeout(quiet, activity.notified())
            .await
            .is_ok()
        {}
        act().await;
    }
}

/// Returns the free pages of every arena to the kernel; true if any was returned.
pub fn release() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks; any argument is
        // valid (0: keep no extra padding at the top of the heap).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Waits (without a deadline that could fail on a slow machine) until `trims` is `n`.
    async fn until(trims: &AtomicUsize, n: usize) {
        while trims.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_burst_is_trimmed_once_and_quiet_is_never_trimmed() {
        let quiet = Duration::from_millis(20);
        let activity = Arc::new(Notify::new());
        let trims = Arc::new(AtomicUsize::new(0));
        let task = {
            let (activity, trims) = (Arc::clone(&activity), Arc::clone(&trims));
            tokio::spawn(async move {
                debounce(&activity, quiet, || {
                    trims.fetch_add(1, Ordering::SeqCst);
                    async {}
                })
                .await;
            })
        };
        // Nothing requested: nothing trimmed.
        tokio::time::sleep(quiet * 5).await;
        assert_eq!(trims.load(Ordering::SeqCst), 0);
        // A burst of requests finishing together is one trim.
        for _ in 0..10 {
            activity.notify_one();
        }
        until(&trims, 1).await;
        tokio::time::sleep(quiet * 5).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        // The next request, the next trim.
        activity.notify_one();
        until(&trims, 2).await;
        tokio::time::sleep(quiet * 5).await;
        assert_eq!(trims.load(Ordering::SeqCst), 2);
        task.abort();
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn freed_pages_between_live_chunks_are_returned() {
        // 8 MiB in 4 KiB chunks (below the mmap threshold: from the arena), every chunk freed
        // but the last, which pins the top of the heap so glibc's own top trim cannot return
        // the rest.
        std::thread::spawn(|| {
            let mut chunks: Vec<Vec<u8>> = (0..2048).map(|i| vec![i as u8; 4096]).collect();
            let last = chunks.pop();
            drop(chunks);
            let returned = release();
            drop(last);
            assert!(returned, "malloc_trim returned nothing");
        })
        .join()
        .unwrap();
    }
}
