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
//!
//! And rnetd keeps one arena ([`configure`], before any thread starts): glibc gives each new
//! thread an arena of its own (up to 8 per core), and what a thread frees into its arena only
//! that arena's threads reuse. The two runtime workers' arenas held 25.9 of rnetd's 26.8 MB of
//! anonymous memory at 1000 containers (issue 15); with one arena, work that allocates without
//! a request (the periodic firewall check's listings) reuses the chunks the other worker freed
//! instead of faulting in pages the trim gave back: 29.4–32.4 MiB instead of 37.7–40.1 at 1000
//! containers. Its cost to DHCP (two workers sharing one arena's lock) was within the
//! machine's drift: the same leases/s at 8000/s, 0–15 % more CPU per lease
//! (`docs/benchmarks.md`, item 20).

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

/// How many malloc arenas rnetd keeps: one (see the module's documentation).
pub const ARENAS: i32 = 1;

/// Sets glibc's arena limit to [`ARENAS`] (a no-op elsewhere). Call it before any thread is
/// started: arenas already made stay. `MALLOC_ARENA_MAX` in the environment still overrides it
/// for a run (glibc reads the environment at the first allocation, before this call: the
/// later `mallopt` wins, so it is applied only when neither it nor `GLIBC_TUNABLES`'
/// `glibc.malloc.arena_max` is set). True if set.
pub fn configure() -> bool {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.arena_max"));
    if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes glibc's malloc parameters under its own lock; M_ARENA_MAX
        // takes any positive count.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
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

    /// The arenas glibc has now, as `malloc_info` lists them.
    #[cfg(target_env = "gnu")]
    fn arenas() -> usize {
        let path = std::env::temp_dir().join(format!("rnet-arenas-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a FILE opened here, written by malloc_info and closed before it is read.
        unsafe {
            let f = libc::fopen(c.as_ptr(), c"w".as_ptr());
            assert!(!f.is_null(), "fopen {}", path.display());
            assert_eq!(libc::malloc_info(0, f), 0);
            libc::fclose(f);
        }
        let xml = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        xml.matches("<heap nr=").count()
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn threads_started_after_configure_make_no_arena() {
        if !configure() {
            eprintln!("skipped: MALLOC_ARENA_MAX or GLIBC_TUNABLES' arena_max set for this run");
            return;
        }
        let before = arenas();
        // Eight threads allocating at once: without the limit, each gets an arena of its own.
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let v: Vec<Vec<u8>> = (0..256).map(|j| vec![(i + j) as u8; 512]).collect();
                    start.wait();
                    v.len()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 256);
        }
        assert_eq!(arenas(), before, "threads made arenas past the limit");
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
