//! Resource control of a machine: systemd's resource properties (`MemoryMax=`, `MemoryHigh=`,
//! `CPUQuota=`, `TasksMax=`, `CPUWeight=`; systemd.resource-control(5)) written to the machine's
//! own cgroup, through cgroup v2 where its controllers are available and through the v1
//! controllers otherwise.
//!
//! A machine's cgroup is `rnet-NAME` below the cgroup the launcher runs in, in every hierarchy
//! that has a controller we write (v1: `memory`, `cpu`, `pids`, each a directory of its own;
//! v2: one directory with those controllers enabled in the parent's `cgroup.subtree_control`).
//! Another process finds it again from the machine's leader pid (`/proc/PID/cgroup`).
//!
//! v1 has no `memory.high`: `MemoryHigh=` becomes `memory.soft_limit_in_bytes`, which reclaims
//! under global pressure rather than throttling; [`Cgroup::apply`] says so in its notes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One resource property, parsed and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// `MemoryMax=`: bytes, or `None` for `infinity`.
    MemoryMax(Option<u64>),
    /// `MemoryHigh=`: bytes, or `None` for `infinity`.
    MemoryHigh(Option<u64>),
    /// `CPUQuota=`: percent of one CPU (200 = two CPUs), or `None` for no quota (an empty value).
    CpuQuota(Option<u32>),
    /// `TasksMax=`: tasks, or `None` for `infinity`.
    TasksMax(Option<u64>),
    /// `CPUWeight=`: 1..=10000 (default 100).
    CpuWeight(u32),
}

/// A property that could not be parsed or applied.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(&'static str),
}

fn invalid(text: &str, why: &str) -> CgroupError {
    CgroupError::Invalid(format!("invalid property {text:?}: {why}"))
}

/// Bytes from `512`, `64K`, `2G`, `1.5G` (base 1024, as systemd), or `None` for `infinity`.
fn parse_bytes(v: &str) -> Option<Option<u64>> {
    if v == "infinity" {
        return Some(None);
    }
    let (num, mult) = match v.chars().last()? {
        'K' => (&v[..v.len() - 1], 1u64 << 10),
        'M' => (&v[..v.len() - 1], 1 << 20),
        'G' => (&v[..v.len() - 1], 1 << 30),
        'T' => (&v[..v.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (v, 1),
        _ => return None,
    };
    if num.is_empty() || num.starts_with(['-', '+']) {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let bytes = value * mult as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(Some(bytes as u64))
}

impl std::str::FromStr for Property {
    type Err = CgroupError;

    /// `KEY=VALUE` as systemd-nspawn's `--property=` takes it.
    fn from_str(text: &str) -> Result<Self, CgroupError> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| invalid(text, "expected KEY=VALUE"))?;
        let value = value.trim();
        match key.trim() {
            "MemoryMax" | "MemoryLimit" => parse_bytes(value)
                .map(Property::MemoryMax)
                .ok_or_else(|| invalid(text, "expected bytes (K, M, G, T suffixes) or infinity")),
            "MemoryHigh" => parse_bytes(value)
                .map(Property::MemoryHigh)
                .ok_or_else(|| invalid(text, "expected bytes (K, M, G, T suffixes) or infinity")),
            "CPUQuota" => {
                if value.is_empty() {
                    return Ok(Property::CpuQuota(None));
                }
                let pct = value
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| invalid(text, "expected a percentage above 0, e.g. 200%"))?;
                Ok(Property::CpuQuota(Some(pct)))
            }
            "TasksMax" => {
                if value == "infinity" {
                    return Ok(Property::TasksMax(None));
                }
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| Property::TasksMax(Some(n)))
                    .ok_or_else(|| invalid(text, "expected a number of tasks or infinity"))
            }
            "CPUWeight" => value
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=10000).contains(w))
                .map(Property::CpuWeight)
                .ok_or_else(|| invalid(text, "expected a weight from 1 to 10000")),
            other => Err(invalid(
                text,
                &format!(
                    "unknown property {other:?} (known: MemoryMax, MemoryHigh, CPUQuota, TasksMax, CPUWeight)"
                ),
            )),
        }
    }
}

impl Property {
    /// systemd's name of the property (`MemoryLimit=` is an alias of `MemoryMax=`).
    pub fn key(&self) -> &'static str {
        match self {
            Property::MemoryMax(_) => "MemoryMax",
            Property::MemoryHigh(_) => "MemoryHigh",
            Property::CpuQuota(_) => "CPUQuota",
            Property::TasksMax(_) => "TasksMax",
            Property::CpuWeight(_) => "CPUWeight",
        }
    }
}

/// `KEY=VALUE` as [`Property::from_str`] reads it back (bytes and tasks as numbers).
impl std::fmt::Display for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<u64>| v.map_or("infinity".to_owned(), |v| v.to_string());
        let value = match *self {
            Property::MemoryMax(b) | Property::MemoryHigh(b) | Property::TasksMax(b) => n(b),
            Property::CpuQuota(p) => p.map_or(String::new(), |p| format!("{p}%")),
            Property::CpuWeight(w) => w.to_string(),
        };
        write!(f, "{}={value}", self.key())
    }
}

/// The scheduler period CPUQuota= is expressed in (systemd's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// One file write a property becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The controller whose directory holds the file.
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

fn w(controller: &'static str, file: &'static str, value: impl Into<String>) -> Write {
    Write {
        controller,
        file,
        value: value.into(),
    }
}

/// Which cgroup interface a machine's properties are written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Property {
    /// The writes that apply this property, and a note when the interface can only approximate
    /// it.
    pub fn writes(&self, version: Version) -> (Vec<Write>, Option<&'static str>) {
        let bytes =
            |b: Option<u64>, unlimited: &str| b.map_or(unlimited.to_owned(), |b| b.to_string());
        match (version, *self) {
            (Version::V2, Property::MemoryMax(b)) => {
                (vec![w("memory", "memory.max", bytes(b, "max"))], None)
            }
            (Version::V2, Property::MemoryHigh(b)) => {
                (vec![w("memory", "memory.high", bytes(b, "max"))], None)
            }
            (Version::V2, Property::CpuQuota(p)) => (
                vec![w(
                    "cpu",
                    "cpu.max",
                    match p {
                        Some(p) => {
                            format!("{} {CPU_PERIOD_US}", u64::from(p) * CPU_PERIOD_US / 100)
                        }
                        None => format!("max {CPU_PERIOD_US}"),
                    },
                )],
                None,
            ),
            (Version::V2, Property::TasksMax(n)) => {
                (vec![w("pids", "pids.max", bytes(n, "max"))], None)
            }
            (Version::V2, Property::CpuWeight(n)) => {
                (vec![w("cpu", "cpu.weight", n.to_string())], None)
            }
            (Version::V1, Property::MemoryMax(b)) => (
                vec![w("memory", "memory.limit_in_bytes", bytes(b, "-1"))],
                None,
            ),
            (Version::V1, Property::MemoryHigh(b)) => (
                vec![w("memory", "memory.soft_limit_in_bytes", bytes(b, "-1"))],
                Some(
                    "cgroup v1 has no memory.high: MemoryHigh= is set as memory.soft_limit_in_bytes (reclaimed under memory pressure, not throttled)",
                ),
            ),
            (Version::V1, Property::CpuQuota(p)) => (
                vec![
                    w("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    w(
                        "cpu",
                        "cpu.cfs_quota_us",
                        p.map_or("-1".to_owned(), |p| {
                            (u64::from(p) * CPU_PERIOD_US / 100).to_string()
                        }),
                    ),
                ],
                None,
            ),
            (Version::V1, Property::TasksMax(n)) => {
                (vec![w("pids", "pids.max", bytes(n, "max"))], None)
            }
            // systemd's mapping (cgroup_cpu_weight_to_shares): shares = weight * 1024 / 100.
            (Version::V1, Property::CpuWeight(n)) => (
                vec![w(
                    "cpu",
                    "cpu.shares",
                    (u64::from(n) * 1024 / 100).max(2).to_string(),
                )],
                None,
            ),
        }
    }
}

/// The controllers a machine's cgroup is made in.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The v1 hierarchies: ours, plus `cpuacct` for the CPU time (mounted with `cpu` on most
/// hosts, on its own on some).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// The v2 mount, if any.
    pub v2: Option<PathBuf>,
    /// v1 mounts by controller.
    pub v1: Vec<(String, PathBuf)>,
}

impl Mounts {
    pub fn read() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses mountinfo lines: `... MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS`.
    pub fn parse(text: &str) -> Self {
        let mut m = Mounts::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let point = left.split(' ').nth(4).map(PathBuf::from);
            let mut r = right.split(' ');
            let (fstype, super_opts) = (r.next(), r.nth(1).unwrap_or(""));
            let Some(point) = point else { continue };
            match fstype {
                Some("cgroup2") => m.v2 = Some(point),
                Some("cgroup") => {
                    for opt in super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            m.v1.push((opt.to_owned(), point.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// v2 when its root offers the controllers we write, else v1 when it has any of them.
    pub fn version(&self) -> Option<Version> {
        if let Some(v2) = &self.v2 {
            let offered = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            if CONTROLLERS
                .iter()
                .all(|c| offered.split_whitespace().any(|o| o == *c))
            {
                return Some(Version::V2);
            }
        }
        (!self.v1.is_empty()).then_some(Version::V1)
    }
}

/// The cgroup path of `pid` in a hierarchy: the v2 line (`0::PATH`) or the v1 line naming
/// `controller`.
fn pid_cgroup(proc_cgroup: &str, version: Version, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2 => id == "0" && ctrls.is_empty(),
            Version::V1 => ctrls.split(',').any(|c| c == controller),
        };
        wanted.then(|| path.to_owned())
    })
}

/// The processes in the cgroup at `dir`, if it can be read.
fn procs(dir: &Path) -> Option<Vec<i32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// How long an empty `rnet-*` cgroup must have been left before [`sweep_stale`] takes it for
/// the leftover of a launcher that was killed (a live one moves its child in at once); also how
/// often at most a launch looks for such leftovers ([`sweep_due`]).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the last sweep, recorded by `stamp`'s modification time, is [`STALE_AFTER`] or more
/// ago (or there was none); if so the stamp is renewed, so that of many launches at once only
/// about one sweeps. The sweep reads every machine's cgroup in every hierarchy: at 1000
/// machines it took half a second, so it must not run on each launch.
pub fn sweep_due(stamp: &Path) -> bool {
    let recent = fs::metadata(stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < STALE_AFTER);
    !recent && fs::write(stamp, b"").is_ok()
}

/// Removes the empty `rnet-*` cgroups below the calling process's own cgroup, in every
/// hierarchy, that launchers killed with SIGKILL left (nothing else removes them: the
/// launcher does it when the machine ends). Errors are ignored: the next sweep tries again.
pub fn sweep_stale_all() {
    let Ok((_, parents)) = locate("self") else {
        return;
    };
    let mut done: Vec<PathBuf> = Vec::new();
    for (_, parent) in parents {
        if !done.contains(&parent) {
            sweep_stale(&parent);
            done.push(parent);
        }
    }
}

/// Removes the empty `rnet-*` cgroups below `parent`: only directories without processes and
/// without child cgroups, unchanged for [`STALE_AFTER`].
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("rnet-") {
            continue;
        }
        let dir = e.path();
        let old = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !old {
            continue;
        }
        // The entry's own type (getdents), not a stat of each of the cgroup's files.
        let has_children = fs::read_dir(&dir)
            .map(|mut d| d.any(|c| c.and_then(|c| c.file_type()).is_ok_and(|t| t.is_dir())))
            .unwrap_or(true);
        if !has_children && procs(&dir).is_some_and(|p| p.is_empty()) {
            // rmdir fails harmlessly if a process arrived meanwhile.
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// A cgroup's directory in each hierarchy, by controller.
type Dirs = Vec<(&'static str, PathBuf)>;

/// The directory of the cgroup `proc_cgroup` (a `/proc/PID/cgroup` text) names, in each
/// hierarchy holding one of our controllers.
fn cgroup_dirs(
    mounts: &Mounts,
    version: Version,
    proc_cgroup: &str,
) -> Vec<(&'static str, PathBuf)> {
    let mut dirs = Vec::new();
    let controllers: &[&'static str] = match version {
        Version::V2 => &CONTROLLERS,
        Version::V1 => &V1_CONTROLLERS,
    };
    for &controller in controllers {
        let mount = match version {
            Version::V2 => mounts.v2.clone(),
            Version::V1 => mounts
                .v1
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, p)| p.clone()),
        };
        if let (Some(mount), Some(rel)) = (mount, pid_cgroup(proc_cgroup, version, controller)) {
            dirs.push((controller, mount.join(rel.trim_start_matches('/'))));
        }
    }
    dirs
}

/// The hierarchies' mounts, the interface to use, and `/proc/PID/cgroup` of `pid` (`self`).
fn locate(pid: &str) -> Result<(Version, Dirs), CgroupError> {
    let mounts = Mounts::read()?;
    let version = mounts
        .version()
        .ok_or(CgroupError::NoController("memory"))?;
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
    Ok((version, cgroup_dirs(&mounts, version, &text)))
}

/// A machine's cgroup: its directory in each hierarchy we write.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub version: Version,
    /// (controller, directory); for v2 one entry per controller, all the same directory.
    dirs: Dirs,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Cgroup {
    /// Creates `rnet-NAME` below the calling process's own cgroup in every hierarchy.
    pub fn create(machine: &str) -> Result<Self, CgroupError> {
        let (version, parents) = locate("self")?;
        let leaf = format!("rnet-{machine}");
        let mut dirs = Vec::new();
        for (controller, parent) in parents {
            if version == Version::V2 {
                // Enable the controller for children (fails harmlessly if already on).
                let _ = fs::write(
                    parent.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
            let dir = parent.join(&leaf);
            if dirs.iter().any(|(_, d)| *d == dir) {
                // Co-mounted controllers (v1 `cpu,cpuacct`, every v2 one): one directory.
                dirs.push((controller, dir));
                continue;
            }
            if dir.is_dir() {
                // A leftover of an earlier machine of this name (its limits must not carry
                // over): removed if empty, refused if something still runs in it.
                if procs(&dir).is_some_and(|p| !p.is_empty()) {
                    return Err(CgroupError::Invalid(format!(
                        "cgroup {} of an earlier machine {machine} still has processes",
                        dir.display()
                    )));
                }
                let _ = fs::remove_dir(&dir);
            }
            fs::create_dir(&dir).map_err(io("creating", &dir))?;
            dirs.push((controller, dir));
        }
        if dirs.is_empty() {
            return Err(CgroupError::NoController("memory"));
        }
        Ok(Cgroup { version, dirs })
    }

    /// The cgroup of a running machine, found from its leader `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, CgroupError> {
        let (version, dirs) = locate(&pid.to_string())?;
        Ok(Cgroup { version, dirs })
    }

    /// `rnet-NAME` below the calling process's own cgroup, if it exists.
    pub fn find(machine: &str) -> Result<Option<Self>, CgroupError> {
        let (version, parents) = locate("self")?;
        let leaf = format!("rnet-{machine}");
        let dirs: Vec<_> = parents
            .into_iter()
            .map(|(c, parent)| (c, parent.join(&leaf)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        Ok((!dirs.is_empty()).then_some(Cgroup { version, dirs }))
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// Moves `pid` into the cgroup (every hierarchy).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let mut done: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if done.contains(&dir.as_path()) {
                continue;
            }
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(io("writing", &procs))?;
            done.push(dir);
        }
        Ok(())
    }

    /// On cgroup v1, the `tasks` file of each of the cgroup's directories: a thread that
    /// writes `0` to them enters the cgroup without the process-wide lock a move through
    /// `cgroup.procs` takes. `None` on v2, where a thread cannot leave its process's cgroup.
    pub fn thread_files(&self) -> Option<Vec<PathBuf>> {
        if self.version != Version::V1 {
            return None;
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for (_, dir) in &self.dirs {
            let tasks = dir.join("tasks");
            if !files.contains(&tasks) {
                files.push(tasks);
            }
        }
        Some(files)
    }

    /// Writes `props`; returns notes on approximations.
    pub fn apply(&self, props: &[Property]) -> Result<Vec<&'static str>, CgroupError> {
        let mut notes = Vec::new();
        for p in props {
            let (writes, note) = p.writes(self.version);
            for wr in writes {
                let dir = self
                    .dir(wr.controller)
                    .ok_or(CgroupError::NoController(wr.controller))?;
                let file = dir.join(wr.file);
                fs::write(&file, &wr.value).map_err(io("writing", &file))?;
            }
            notes.extend(note);
        }
        Ok(notes)
    }

    /// CPU time used (ns), memory in use (bytes) and tasks, where the hierarchy tells them.
    pub fn usage(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        let read =
            |c: &str, f: &str| -> Option<String> { fs::read_to_string(self.dir(c)?.join(f)).ok() };
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        match self.version {
            Version::V2 => {
                let cpu = read("cpu", "cpu.stat").and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us * 1000)
                });
                (
                    cpu,
                    num(read("memory", "memory.current")),
                    num(read("pids", "pids.current")),
                )
            }
            Version::V1 => {
                let cpu = num(read("cpuacct", "cpuacct.usage"));
                (
                    cpu,
                    num(read("memory", "memory.usage_in_bytes")),
                    num(read("pids", "pids.current")),
                )
            }
        }
    }

    /// Ends what is left in the cgroup (the machine is over: a payload's children that outlive
    /// it are killed, as systemd stops a machine's scope) and removes the directories, retrying
    /// for up to a second while the killed processes exit.
    pub fn remove(&self) {
        for _ in 0..100 {
            let mut left = false;
            for (_, dir) in &self.dirs {
                // Empty (the payload alone and reaped), it goes at the first try.
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    continue;
                }
                for pid in procs(dir).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if fs::remove_dir(dir).is_err() && dir.exists() {
                    left = true;
                }
            }
            if !left {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Property {
        s.parse().unwrap()
    }

    #[test]
    fn properties_parse_as_systemd_writes_them() {
        assert_eq!(p("MemoryMax=2G"), Property::MemoryMax(Some(2 << 30)));
        assert_eq!(p("MemoryMax=1.5K"), Property::MemoryMax(Some(1536)));
        assert_eq!(p("MemoryMax=infinity"), Property::MemoryMax(None));
        assert_eq!(p("MemoryHigh=512M"), Property::MemoryHigh(Some(512 << 20)));
        assert_eq!(p("CPUQuota=200%"), Property::CpuQuota(Some(200)));
        assert_eq!(p("CPUQuota="), Property::CpuQuota(None));
        assert_eq!(p("TasksMax=64"), Property::TasksMax(Some(64)));
        assert_eq!(p("CPUWeight=500"), Property::CpuWeight(500));
        for bad in [
            "MemoryMax=",
            "MemoryMax=-1",
            "MemoryMax=2X",
            "MemoryMax=G",
            "CPUQuota=0%",
            "CPUQuota=200",
            "TasksMax=0",
            "CPUWeight=0",
            "CPUWeight=10001",
            "Nice=5",
            "MemoryMax",
        ] {
            let err = bad.parse::<Property>().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid property {bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn writes_for_both_versions() {
        let (v2, _) = p("CPUQuota=150%").writes(Version::V2);
        assert_eq!(v2, [w("cpu", "cpu.max", "150000 100000")]);
        let (v1, _) = p("CPUQuota=150%").writes(Version::V1);
        assert_eq!(
            v1,
            [
                w("cpu", "cpu.cfs_period_us", "100000"),
                w("cpu", "cpu.cfs_quota_us", "150000")
            ]
        );
        assert_eq!(
            p("MemoryMax=1M").writes(Version::V1).0,
            [w("memory", "memory.limit_in_bytes", "1048576")]
        );
        assert_eq!(
            p("MemoryMax=infinity").writes(Version::V2).0,
            [w("memory", "memory.max", "max")]
        );
        assert!(p("MemoryHigh=1M").writes(Version::V1).1.is_some());
        assert_eq!(
            p("CPUWeight=100").writes(Version::V1).0,
            [w("cpu", "cpu.shares", "1024")]
        );
        assert_eq!(
            p("TasksMax=infinity").writes(Version::V1).0,
            [w("pids", "pids.max", "max")]
        );
    }

    #[test]
    fn mountinfo_and_proc_cgroup() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids";
        let m = Mounts::parse(mi);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.v1,
            [
                ("memory".to_owned(), PathBuf::from("/sys/fs/cgroup/memory")),
                (
                    "cpu".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
                ),
                (
                    "cpuacct".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
                ),
                ("pids".to_owned(), PathBuf::from("/sys/fs/cgroup/pids")),
            ]
        );
        // One directory per co-mounted hierarchy; cpuacct on its own is found too.
        let dirs = cgroup_dirs(&m, Version::V1, "4:memory:/a\n1:cpu,cpuacct:/c\n9:pids:/p");
        assert_eq!(
            dirs.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            ["memory", "cpu", "cpuacct", "pids"]
        );
        assert_eq!(dirs[1].1, dirs[2].1);
        let apart = Mounts::parse(
            "31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             32 25 0:28 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct",
        );
        let dirs = cgroup_dirs(&apart, Version::V1, "3:cpu:/x\n2:cpuacct:/x");
        assert_eq!(
            dirs,
            [
                ("cpu", PathBuf::from("/sys/fs/cgroup/cpu/x")),
                ("cpuacct", PathBuf::from("/sys/fs/cgroup/cpuacct/x")),
            ]
        );
        let pc = "9:pids:/\n4:memory:/a/b\n1:cpu,cpuacct:/c\n0::/u";
        assert_eq!(
            pid_cgroup(pc, Version::V1, "memory").as_deref(),
            Some("/a/b")
        );
        assert_eq!(pid_cgroup(pc, Version::V1, "cpu").as_deref(), Some("/c"));
        assert_eq!(pid_cgroup(pc, Version::V2, "memory").as_deref(), Some("/u"));
    }
}
