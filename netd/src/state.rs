//! What `rnetd` must remember across a restart: the attached machines. Written atomically (temp
//! file, rename), so a crash of rnetd leaves the old or the new state, never a torn file.
//!
//! The state file lives in the runtime directory (`/run/rnet`, emptied at boot), and what it
//! describes (containers' processes, links, tables) does not outlive the kernel either: what an
//! fsync protects against, a power loss or a kernel crash, ends every machine it lists. So it is
//! written without fsync; a write in the page cache survives `kill -9` of rnetd, which is what
//! the restart path must handle. Writes are ordered by a generation number: an older snapshot
//! never replaces a newer one. A change that must be on file before it is answered (an attach)
//! writes at once ([`StateFile::save`]); removals hand their snapshot to a background writer
//! ([`StateFile::save_behind`]), which writes only the newest of those waiting, so a burst of
//! exits costs a few writes, not one each. The explicit zones' file, which must outlive a reboot,
//! is written with fsync.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

use serde::{Deserialize, Serialize};

use crate::api::fsutil::{self, WriteError};
use crate::api::{Machine, ZoneConfig};

/// Version of the state file format.
const VERSION: u32 = 1;

/// File name of the state inside the runtime directory.
pub const FILE_NAME: &str = "state.json";

/// One attached machine as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMachine {
    /// What was built.
    pub machine: Machine,
    /// Start time of the watched pid (field 22 of `/proc/PID/stat`), so a reused pid is not
    /// mistaken for the container after a restart.
    pub pid_start_time: u64,
    /// For an attachment no process owns (`machine.held`): the namespace's identity (device
    /// and inode of its nsfs file), so that a restart adopts it only if the path still names
    /// that namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ns: Option<(u64, u64)>,
    /// What the process is, for `Stop`.
    #[serde(default, skip_serializing_if = "crate::api::InitKind::is_other")]
    pub init: crate::api::InitKind,
}

/// A zone as saved: its settings with the subnet in use filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedZone {
    /// Settings; `subnet` is the subnet in use.
    pub config: ZoneConfig,
    /// Created with `rnet zone create`.
    pub explicit: bool,
}

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Attached machines.
    pub machines: Vec<SavedMachine>,
    /// Zones that exist (explicit ones, and implicit ones with members).
    #[serde(default)]
    pub zones: Vec<SavedZone>,
    /// `net.ipv4.ip_forward` as it was before rnetd turned it on, restored when the last
    /// masqueraded link goes.
    #[serde(default)]
    pub forward_restore: Option<String>,
    /// IPv6 forwarding and `accept_ra` as they were before rnetd changed them
    /// (`crate::forward6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward6_restore: Option<crate::forward6::Saved6>,
}

/// Reading or writing the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the file.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Replacing the file failed; the previous file is intact.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The state could not be turned into JSON (nothing was written).
    #[error("serialising the state for {path}: {reason}")]
    Serialize {
        /// The file that was to be written.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not a state file we understand.
    #[error("state file {path} is unreadable: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The state file in a runtime directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    writes: Arc<Writes>,
}

/// The ordering of writes: generations handed out, the newest written, the newest snapshot
/// waiting for the background writer.
#[derive(Debug, Default)]
struct Writes {
    next: AtomicU64,
    /// The generation on file; held while writing, so writes never interleave.
    written: Mutex<u64>,
    pending: Mutex<Option<(u64, State)>>,
    /// A background writer is running (or about to).
    scheduled: AtomicBool,
}

impl StateFile {
    /// The state file under `runtime_dir`.
    pub fn new(runtime_dir: &Path) -> Self {
        Self {
            path: runtime_dir.join(FILE_NAME),
            writes: Arc::default(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State, StateError> {
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StateError::Io {
                    step: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let state: State = serde_json::from_slice(&text).map_err(|e| StateError::Parse {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Parse {
                path: self.path.clone(),
                reason: format!("version {} (this rnetd reads {VERSION})", state.version),
            });
        }
        Ok(state)
    }

    /// Saves the state atomically before returning (the version is set here).
    pub fn save(&self, state: State) -> Result<(), StateError> {
        let generation = self.writes.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.write(generation, state)
    }

    /// Hands the state to the background writer and returns at once (must be called within a
    /// tokio runtime); a failed write is logged. Snapshots are taken in the order of changes
    /// (under the registry's lock), so the newest waiting is the one written.
    pub fn save_behind(&self, state: State) {
        let generation = self.writes.next.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.writes.pending) = Some((generation, state));
        if self.writes.scheduled.swap(true, Ordering::SeqCst) {
            return; // the running writer takes it
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write_pending());
    }

    /// Writes what waits for the background writer, until nothing does.
    fn write_pending(&self) {
        loop {
            let next = lock(&self.writes.pending).take();
            match next {
                Some((generation, state)) => {
                    if let Err(e) = self.write(generation, state) {
                        warn!(error = %e, "saving state failed");
                    }
                }
                None => {
                    self.writes.scheduled.store(false, Ordering::SeqCst);
                    // A snapshot handed over between the take and the store finds the flag
                    // still set and leaves it to us.
                    let more = lock(&self.writes.pending).is_some();
                    if !more || self.writes.scheduled.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
    }

    /// Writes anything still waiting for the background writer, and waits for a write in
    /// progress (at shutdown).
    pub fn flush(&self) {
        let next = lock(&self.writes.pending).take();
        if let Some((generation, state)) = next
            && let Err(e) = self.write(generation, state)
        {
            warn!(error = %e, "saving state failed");
        }
        // The background writer may hold a snapshot it took before us: wait until it is done
        // (bounded: a writer stuck in the file system must not hold up shutdown forever).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.writes.scheduled.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Writes generation `generation` unless a newer one is on file already.
    fn write(&self, generation: u64, mut state: State) -> Result<(), StateError> {
        let mut written = lock(&self.writes.written);
        if *written > generation {
            return Ok(());
        }
        state.version = VERSION;
        let body = serde_json::to_vec(&state).map_err(|e| StateError::Serialize {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        replace(&self.path, &body)?;
        *written = generation;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replaces `path` with `body` atomically for readers (a temp file beside it, renamed over it),
/// without fsync (see the module's documentation).
fn replace(path: &Path, body: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("json.tmp");
    let fail = |step, source| StateError::Io {
        step,
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::create(&tmp).map_err(|e| fail("creating a temp file for", e))?;
    let written = file
        .write_all(body)
        .map_err(|e| fail("writing", e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| fail("renaming the temp file to", e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The explicitly created zones, in the state directory: they come back after a reboot.
#[derive(Debug, Clone)]
pub struct ZoneFile {
    path: PathBuf,
}

impl ZoneFile {
    /// `zones.json` under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("zones.json"),
        }
    }

    /// The saved zones; none when the file does not exist.
    pub fn load(&self) -> Result<Vec<ZoneConfig>, StateError> {
        match fs::read(&self.path) {
            Ok(t) => serde_json::from_slice(&t).map_err(|e| StateError::Parse {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io {
                step: "reading",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Saves the zones atomically.
    pub fn save(&self, zones: &[ZoneConfig]) -> Result<(), StateError> {
        write_json(&self.path, zones)
    }
}

/// Writes `value` as pretty JSON to `path` atomically; a value that does not serialise is an
/// error, never an empty file.
fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StateError> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| StateError::Serialize {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(fsutil::write_atomic(path, &body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MachineName, NetworkSpec};

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let with = |names: &[&str]| State {
            machines: names.iter().map(|n| machine(n)).collect(),
            ..State::default()
        };
        file.write(2, with(&["a", "b"])).unwrap();
        file.write(1, with(&["a"])).unwrap();
        assert_eq!(
            file.load().unwrap().machines.len(),
            2,
            "generation 1 replaced 2"
        );

        // Behind, then at once: the later call wins whatever the writer's timing.
        file.save_behind(with(&[]));
        file.save(with(&["c"])).unwrap();
        file.flush();
        let names: Vec<String> = file
            .load()
            .unwrap()
            .machines
            .iter()
            .map(|m| m.machine.machine.to_string())
            .collect();
        assert_eq!(names, ["c"]);

        // A burst handed to the background writer ends with the newest on file.
        for n in 0..20 {
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            file.save_behind(with(&refs));
        }
        file.flush();
        assert_eq!(file.load().unwrap().machines.len(), 19);
        assert!(
            !dir.path().join("state.json.tmp").exists(),
            "temp file left"
        );
    }

    fn machine(name: &str) -> SavedMachine {
        SavedMachine {
            machine: Machine {
                machine: MachineName::new(name).unwrap(),
                pid: 7,
                network: NetworkSpec::Veth,
                host_ifname: Some(format!("ve-{name}")),
                host_altname: None,
                container_ifname: Some("host0".into()),
                host_mac: Some("02:00:00:00:00:01".into()),
                container_mac: Some("02:00:00:00:00:02".into()),
                subnet: Some("192.168.0.0/28".parse().unwrap()),
                host_address: Some("192.168.0.1".parse().unwrap()),
                container_address: Some("192.168.0.7".parse().unwrap()),
                subnet6: Some("fd00:1:2:3::/64".parse().unwrap()),
                host_address6: Some("fd00:1:2:3::1".parse().unwrap()),
                container_address6: Some("fd00:1:2:3::7".parse().unwrap()),
                dns: vec![],
                ports: vec![],
                links: vec![],
                teardown_errors: vec![],
                host_firewall: vec![],
                held: None,
            },
            pid_start_time: 99,
            held_ns: None,
            init: crate::api::InitKind::Other,
        }
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), State::default());
        f.save(State {
            machines: vec![machine("a"), machine("b")],
            forward_restore: Some("0".into()),
            ..State::default()
        })
        .unwrap();
        let s = f.load().unwrap();
        assert_eq!(s.machines, vec![machine("a"), machine("b")]);
        assert_eq!(s.forward_restore.as_deref(), Some("0"));
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn a_failed_save_names_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(&dir.path().join("gone"));
        let err = f.save(State::default()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "creating a temp file for {}: No such file or directory (os error 2)",
                f.path().display()
            )
        );
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        fs::write(f.path(), b"{\"version\":1,\"machines\":[").unwrap();
        let err = f.load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("state file {} is unreadable", f.path().display())),
            "{err}"
        );
        fs::write(f.path(), b"{\"version\":9,\"machines\":[]}").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("version 9"));
    }
}
