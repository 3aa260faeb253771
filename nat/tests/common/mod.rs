//! Shared by the privileged tests: a private network namespace per test, and threads that live in
//! namespaces of their own ("containers").
//!
//! Each Rust test runs on its own thread. `unshare(CLONE_NEWNET)` moves only the calling thread
//! into a new, empty network namespace; processes it spawns (`nft`, `ip`, `sysctl`) inherit it.
//! The namespace disappears with the thread, so nothing ever touches the host's ruleset.

#![allow(dead_code)] // each test binary uses a part

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use nix::sched::{CloneFlags, unshare};

/// The `nft` program: `/usr/sbin/nft` if present, else `nft` from `PATH`.
pub fn nft_program() -> &'static str {
    if Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

fn required() -> bool {
    std::env::var("RNET_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

fn skip(test: &str, reason: &str) -> bool {
    assert!(
        !required(),
        "{test}: {reason} (RNET_REQUIRE_PRIVILEGED=1 forbids skipping)"
    );
    // Straight to the stderr stream, not eprintln!: libtest captures the macros, and a skip
    // must show in a normal `cargo test` run.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
    false
}

/// Identity of the network namespace of the calling thread (`net:[4026531840]`).
pub fn thread_netns() -> String {
    fs::read_link("/proc/thread-self/ns/net")
        .expect("read /proc/thread-self/ns/net")
        .to_string_lossy()
        .into_owned()
}

/// Moves the calling test thread into a fresh network namespace, or explains why not: prints
/// `SKIP <test>: <reason>` and returns false (panics instead with RNET_REQUIRE_PRIVILEGED=1).
pub fn enter_private_netns(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            test,
            "needs root (CAP_NET_ADMIN) for a private network namespace",
        );
    }
    let version = Command::new(nft_program()).arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return skip(
            test,
            "the nft program is not installed (apt-get install nftables)",
        );
    }
    let before = thread_netns();
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        return skip(test, &format!("unshare(CLONE_NEWNET) failed: {e}"));
    }
    assert_ne!(
        before,
        thread_netns(),
        "{test}: still in the original netns"
    );
    sh("ip link set lo up");
    true
}

/// Runs a shell command in the calling thread's namespace; panics with its stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a network namespace of its own: a stand-in for a container. Closures given to
/// [`NetnsThread::run`] execute there.
pub struct NetnsThread {
    tid: i32,
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl NetnsThread {
    /// Starts the thread and its namespace (with `lo` up).
    pub fn new() -> Self {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) for a container");
            sh("ip link set lo up");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            for job in inbox {
                job();
            }
        });
        let tid = tid_rx.recv().expect("container thread started");
        Self {
            tid,
            jobs: Some(jobs),
            handle: Some(handle),
        }
    }

    /// Thread id: what `ip link set ... netns <tid>` takes.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Runs `f` in this namespace and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.as_ref().unwrap().send(job).unwrap();
        rx.recv().expect("job ran in the container thread")
    }
}

impl Drop for NetnsThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
