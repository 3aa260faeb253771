//! What `rnetd` must remember across a restart: the attached machines. Written atomically (temp
//! file, fsync, rename, fsync of the directory), so a crash leaves the old or the new state,
//! never a torn file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
}

impl StateFile {
    /// The state file under `runtime_dir`.
    pub fn new(runtime_dir: &Path) -> Self {
        Self {
            path: runtime_dir.join(FILE_NAME),
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

    /// Saves the state atomically (the version is set here).
    pub fn save(&self, mut state: State) -> Result<(), StateError> {
        state.version = VERSION;
        write_json(&self.path, &state)
    }
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
