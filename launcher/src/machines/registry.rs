//! The machine registry: one JSON file per running machine in `RUNTIME_DIR/machines/NAME`,
//! what systemd-machined keeps in `/run/systemd/machines/NAME` for nspawn.
//!
//! The launcher of every `rnet run` registers its machine once the container runs (and is
//! networked) and removes the entry when it ends. An entry whose leader is gone (a launcher that
//! was SIGKILLed cannot remove its own) is stale: readers ignore it and remove it. The leader is
//! recognised by its pid *and* its start time (`/proc/PID/stat` field 22), so a recycled pid is
//! not taken for the machine. Entries are replaced atomically but not fsynced: the runtime
//! directory is cleared by a reboot, and every run writes here on its start path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The machine's name.
    pub name: String,
    /// The container's first process (its PID 1 with `-D`) as the host sees it.
    pub leader: u32,
    /// The leader's start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub leader_start: u64,
    /// The launcher (`rnet run`) that waits for the leader; the leader itself in host mode.
    pub launcher: u32,
    /// The supervisor of a machine started with `rnet start` (it restarts it on reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<u32>,
    /// The OS tree (`-D`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    /// `container` (an OS tree of its own) or `host` (a process on the host's filesystem).
    pub class: String,
    /// `host`, `private`, `veth`, `zone:Z`, `bridge:BR` or `links` (extra links only).
    pub network: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started: u64,
    /// The systemd unit the launcher runs in (`rnet@NAME.service`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The tree's init is systemd (poweroff is SIGRTMIN+3, reboot SIGINT).
    pub systemd: bool,
    /// Where a started machine's output goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// The payload runs (registered before rnetd attaches; ready once the payload exec'd).
    #[serde(default)]
    pub ready: bool,
    /// `--keep-unit`: the machine has no cgroup of its own (it is in its caller's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_unit: bool,
}

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("machine {name} is already running")]
    Running { name: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The registry directory of a runtime directory.
pub fn dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("machines")
}

/// The start time of `pid` in clock ticks after boot, if it runs (a zombie has ended).
pub fn start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Whether `pid` runs (exists and is no zombie).
pub fn running(pid: u32) -> bool {
    start_time(pid).is_some()
}

/// Field 22 of a `/proc/PID/stat` line (the command may contain spaces and parentheses); none
/// for a zombie (state `Z` or `X`, field 3).
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Fields after the command start at 3 (state); starttime is 22.
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(22 - 4)?.parse().ok()
}

/// Whether `pid` runs and is the process that started at `start`.
pub fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

impl Entry {
    /// Whether the leader still runs.
    pub fn alive(&self) -> bool {
        alive(self.leader, self.leader_start)
    }

    /// Seconds since it started.
    pub fn uptime(&self, now: u64) -> u64 {
        now.saturating_sub(self.started)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The systemd unit of the calling process, from `/proc/self/cgroup` (the last path component
/// ending in `.service`).
pub fn own_unit() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let path = l.splitn(3, ':').nth(2)?;
        path.rsplit('/')
            .find(|c| c.ends_with(".service"))
            .map(str::to_owned)
    })
}

/// Registers `entry`: atomically (written beside, then hard-linked to its name, so readers never
/// see half a file and two launchers of one name cannot both win). A stale entry of that name is
/// replaced; a live one is refused.
pub fn register(runtime_dir: &Path, entry: &Entry) -> Result<(), RegistryError> {
    let dir = dir(runtime_dir);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| RegistryError::Io { what, path, source }
    };
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let path = dir.join(&entry.name);
    let tmp = dir.join(format!(".{}.{}.tmp", entry.name, std::process::id()));
    let body = serde_json::to_vec_pretty(entry).unwrap_or_default();
    api::fsutil::write_replace(&tmp, &body).map_err(|e| RegistryError::Io {
        what: "writing",
        path: tmp.clone(),
        source: e.source,
    })?;
    let result = (|| {
        for _ in 0..2 {
            match fs::hard_link(&tmp, &path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_entry(&path) {
                    Some(old) if old.alive() => {
                        return Err(RegistryError::Running { name: old.name });
                    }
                    old => {
                        if let Some(old) = old {
                            let _ = fs::remove_file(resolv_conf_path(runtime_dir, old.leader));
                        }
                        let _ = fs::remove_file(&path);
                    }
                },
                Err(e) => return Err(io("registering", &path)(e)),
            }
        }
        Err(io("registering", &path)(io::Error::from(
            io::ErrorKind::AlreadyExists,
        )))
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Rewrites the registered `entry` (its launcher registered it).
pub fn update(runtime_dir: &Path, entry: &Entry) -> Result<(), RegistryError> {
    let path = dir(runtime_dir).join(&entry.name);
    let body = serde_json::to_vec_pretty(entry).unwrap_or_default();
    api::fsutil::write_replace(&path, &body).map_err(|e| RegistryError::Io {
        what: "writing",
        path,
        source: e.source,
    })
}

/// Removes the entry of `name` if it is the one of `leader` (a newer machine of the same name
/// keeps its own), and the resolv.conf written for `leader`.
pub fn unregister(runtime_dir: &Path, name: &str, leader: u32) {
    let path = dir(runtime_dir).join(name);
    if read_entry(&path).is_some_and(|e| e.leader == leader) {
        let _ = fs::remove_file(&path);
    }
    let _ = fs::remove_file(resolv_conf_path(runtime_dir, leader));
}

/// The resolv.conf a machine's leader writes (where its launcher says) and binds over
/// `/etc/resolv.conf` (`crate::netconf`). It stays while the machine runs, so that the payload
/// may mount over that file in turn (a mount point whose file is deleted refuses mounts);
/// it goes with the entry: removed by the launcher, or with the stale entry of a killed one.
pub fn resolv_conf_path(runtime_dir: &Path, leader: u32) -> PathBuf {
    dir(runtime_dir).join(format!(".{leader}.resolv.conf"))
}

fn read_entry(path: &Path) -> Option<Entry> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// The live entry of `name`; a stale one is removed (when the caller may).
pub fn get(runtime_dir: &Path, name: &str) -> Option<Entry> {
    if name.starts_with('.') || name.contains('/') {
        return None;
    }
    let path = dir(runtime_dir).join(name);
    let entry = read_entry(&path)?;
    if entry.alive() {
        Some(entry)
    } else {
        let _ = fs::remove_file(resolv_conf_path(runtime_dir, entry.leader));
        let _ = fs::remove_file(&path);
        None
    }
}

/// Every live entry, by name; stale ones (and unreadable leftovers) are removed.
pub fn list(runtime_dir: &Path) -> Vec<Entry> {
    let Ok(rd) = fs::read_dir(dir(runtime_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".log") {
            continue;
        }
        if let Some(entry) = get(runtime_dir, &name) {
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, leader: u32) -> Entry {
        Entry {
            name: name.into(),
            leader,
            leader_start: start_time(leader).unwrap_or(1),
            launcher: leader,
            supervisor: None,
            image: None,
            class: "host".into(),
            network: "host".into(),
            started: now(),
            unit: None,
            systemd: false,
            log: None,
            ready: true,
            keep_unit: false,
        }
    }

    #[test]
    fn the_start_time_is_field_22_even_with_odd_commands() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 \
                    200 18446744073709551615";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time(&line.replace(") S", ") Z")), None);
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn a_live_entry_refuses_a_second_and_a_stale_one_is_replaced_and_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::process::id();
        register(tmp.path(), &entry("a", me)).unwrap();
        let err = register(tmp.path(), &entry("a", me)).unwrap_err();
        assert_eq!(err.to_string(), "machine a is already running");
        assert_eq!(list(tmp.path()), [entry("a", me)]);
        // A leader that is gone (a start time that is not its own): ignored, then removed.
        let mut stale = entry("b", me);
        stale.leader_start += 1;
        register(tmp.path(), &stale).unwrap();
        assert!(dir(tmp.path()).join("b").exists());
        assert_eq!(get(tmp.path(), "b"), None);
        assert!(!dir(tmp.path()).join("b").exists());
        register(tmp.path(), &stale).unwrap();
        assert_eq!(list(tmp.path()).len(), 1);
        assert!(!dir(tmp.path()).join("b").exists());
        // Registering over a stale entry works; unregister only removes its own.
        register(tmp.path(), &stale).unwrap();
        register(tmp.path(), &entry("b", me)).unwrap();
        unregister(tmp.path(), "b", me + 1);
        assert!(get(tmp.path(), "b").is_some());
        unregister(tmp.path(), "b", me);
        assert!(get(tmp.path(), "b").is_none());
        // No temp files are left.
        let left: Vec<_> = fs::read_dir(dir(tmp.path()))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["a"]);
    }

    #[test]
    fn a_machines_resolv_conf_goes_with_its_entry_live_stale_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let resolv = |leader| resolv_conf_path(tmp.path(), leader);
        let write = |leader| fs::write(resolv(leader), "nameserver 10.0.0.1\n").unwrap();
        // Listed as no machine; removed when its launcher unregisters.
        register(tmp.path(), &entry("a", me)).unwrap();
        write(me);
        assert_eq!(list(tmp.path()), [entry("a", me)]);
        unregister(tmp.path(), "a", me);
        assert!(!resolv(me).exists());
        // A killed launcher's: with its stale entry, when read or when replaced.
        let mut stale = entry("b", me + 1);
        stale.leader_start = 1;
        for replaced in [false, true] {
            register(tmp.path(), &stale).unwrap();
            write(me + 1);
            if replaced {
                register(tmp.path(), &entry("b", me)).unwrap();
            } else {
                assert_eq!(get(tmp.path(), "b"), None);
            }
            assert!(!resolv(me + 1).exists(), "replaced: {replaced}");
        }
    }
}
