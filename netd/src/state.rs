//! What `rnetd` must remember across a restart: the attached machines, the zones, and the
//! forwarding values to restore. Kept as a snapshot (`state.json`) and an append journal beside
//! it (`state.GEN.journal`), so that a change costs one short append, whatever the number of
//! machines.
//!
//! # Files
//!
//! The snapshot is the whole state with a generation number `S`, written atomically (temp
//! file, rename). Journal `state.G.journal` holds one JSON line per change (a machine recorded
//! with its saved record or forgotten, a zone recorded or forgotten, the forwarding values),
//! appended with one `write` to an `O_APPEND` file; the lines of one [`StateFile::record`] go
//! out in that one `write`. Journal `G` continues exactly where the state of generation `G`
//! stops (the snapshot of generation `G`, whether or not that snapshot reached the disk). Load
//! is the snapshot, then the journals of generations `S`, `S+1`, ... replayed in order;
//! journals older than `S` are skipped (and removed by the next snapshot). A last line without
//! its newline (a write cut short) is ignored with a warning; any other line that does not
//! parse makes the state unreadable, as a corrupt snapshot does. A missing generation between
//! `S` and the newest journal is an error too.
//!
//! # Compaction, and why a crash at any point loses nothing
//!
//! The writer keeps the state as it should be on file (the mirror: each machine's and zone's
//! record already serialised). When a journal has more than twice as many lines as there are
//! machines, plus [`JOURNAL_SLACK`], a background task (`spawn_blocking`) compacts:
//!
//! 1. under the writer's lock: generation `G+1`, a new empty journal `G+1` opened (later
//!    changes go there), and the mirror serialised as snapshot `G+1`; the lock is released;
//! 2. the snapshot is written to a temp file and renamed over `state.json`;
//! 3. journals older than `G+1` are removed.
//!
//! A crash before 1 leaves snapshot `S` and journals up to `G`; during or after 1 and before
//! the rename in 2, snapshot `S` and journals up to `G+1`, and since journal `G+1` starts where
//! journal `G` ends, the replay is complete; after the rename, snapshot `G+1`, whose load skips
//! every older journal still there. A failed snapshot write leaves the same files as a crash
//! before the rename, so nothing is lost either; the next compaction writes a newer one.
//! Snapshots are written one at a time, and an older one never replaces a newer one.
//!
//! A full rewrite ([`StateFile::rewrite`]: at start, after reconciling; and after an append
//! failed) writes the snapshot first and only then starts its journal: a crash between the two
//! leaves a snapshot newer than every journal, which is then the whole state.
//!
//! # No fsync
//!
//! The state lives in the runtime directory (`/run/rnet`, emptied at boot), and what it
//! describes (containers' processes, links, tables) does not outlive the kernel either: what an
//! fsync protects against, a power loss or a kernel crash, ends every machine it lists. So
//! neither the snapshot nor the journal is fsynced; a write in the page cache survives
//! `kill -9` of rnetd, which is what the restart path must handle. An attach is answered only
//! after its line is written ([`StateFile::record`] returns after the `write`); a removal lost
//! by a crash is harmless (a restart tears down what it finds dead). The explicit zones' file,
//! which must outlive a reboot, is written with fsync.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

use serde::{Deserialize, Serialize};

use crate::api::fsutil::{self, WriteError};
use crate::api::{Machine, MachineName, ZoneConfig, ZoneName};
use crate::forward6::Saved6;

/// Version of the snapshot written (2: with a generation and journals). Version 1 (a whole
/// snapshot, no journal) is read too, as generation 0.
const VERSION: u32 = 2;

/// Versions this rnetd reads.
const READS: [u32; 2] = [1, 2];

/// File name of the snapshot inside the runtime directory.
pub const FILE_NAME: &str = "state.json";

/// Lines a journal may hold beyond twice the number of machines before it is compacted.
pub const JOURNAL_SLACK: usize = 64;

/// File name of journal `generation`.
fn journal_name(generation: u64) -> String {
    format!("state.{generation}.journal")
}

/// The generation of a journal's file name.
fn journal_generation(name: &str) -> Option<u64> {
    name.strip_prefix("state.")?
        .strip_suffix(".journal")?
        .parse()
        .ok()
}

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

/// [`SavedZone`] borrowed, to serialise.
#[derive(Serialize)]
struct ZoneRef<'a> {
    config: &'a ZoneConfig,
    explicit: bool,
}

/// The forwarding values rnetd restores when its last link goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// `net.ipv4.ip_forward` as it was before rnetd turned it on, restored when the last
    /// masqueraded link goes.
    #[serde(default)]
    pub forward_restore: Option<String>,
    /// IPv6 forwarding and `accept_ra` as they were before rnetd changed them
    /// (`crate::forward6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward6_restore: Option<Saved6>,
}

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Generation of the snapshot (0: version 1, or none on file): journals of this generation
    /// and newer follow it.
    #[serde(default)]
    pub generation: u64,
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
    pub forward6_restore: Option<Saved6>,
}

/// One change of what the state keeps, for [`StateFile::record`].
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// A machine attached (its record replaces any of the same name).
    Machine(&'a SavedMachine),
    /// A machine gone.
    Forget(MachineName),
    /// A zone that exists, and whether it is explicit.
    Zone(&'a ZoneConfig, bool),
    /// A zone gone.
    ForgetZone(ZoneName),
}

/// A journal line as read back.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Machine { machine: Box<SavedMachine> },
    Forget { machine: MachineName },
    Zone { zone: SavedZone },
    ForgetZone { zone: ZoneName },
    Forward(Forward),
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

/// The state as it should be on file, each record serialised once, when it changes.
#[derive(Debug, Default)]
struct Mirror {
    /// Machine name → its [`SavedMachine`] as JSON.
    machines: BTreeMap<String, String>,
    /// Zone name → its [`SavedZone`] as JSON.
    zones: BTreeMap<String, String>,
    forward: Forward,
}

impl Mirror {
    /// The snapshot of generation `generation`: the JSON of a [`State`], built from the
    /// records' JSON without serialising them again.
    fn snapshot(&self, generation: u64) -> Result<Vec<u8>, serde_json::Error> {
        let size: usize = self.machines.values().map(|m| m.len() + 1).sum::<usize>()
            + self.zones.values().map(|z| z.len() + 1).sum::<usize>()
            + 256;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(
            format!("{{\"version\":{VERSION},\"generation\":{generation},\"machines\":[")
                .as_bytes(),
        );
        join(&mut out, self.machines.values());
        out.extend_from_slice(b"],\"zones\":[");
        join(&mut out, self.zones.values());
        out.extend_from_slice(b"],\"forward_restore\":");
        serde_json::to_writer(&mut out, &self.forward.forward_restore)?;
        if let Some(f6) = &self.forward.forward6_restore {
            out.extend_from_slice(b",\"forward6_restore\":");
            serde_json::to_writer(&mut out, f6)?;
        }
        out.push(b'}');
        Ok(out)
    }

    /// The mirror of a whole state.
    fn of(state: &State) -> Result<Self, serde_json::Error> {
        let mut mirror = Self {
            forward: Forward {
                forward_restore: state.forward_restore.clone(),
                forward6_restore: state.forward6_restore.clone(),
            },
            ..Self::default()
        };
        for m in &state.machines {
            mirror.machines.insert(
                m.machine.machine.as_str().to_owned(),
                serde_json::to_string(m)?,
            );
        }
        for z in &state.zones {
            mirror
                .zones
                .insert(z.config.name.as_str().to_owned(), serde_json::to_string(z)?);
        }
        Ok(mirror)
    }
}

/// Appends `items` to `out`, comma-separated.
fn join<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a String>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
}

/// A change to the mirror, made when its line is appended.
enum Update {
    Machine(String, Option<String>),
    Zone(String, Option<String>),
    Forward(Forward),
}

/// The journal being appended to, and the mirror.
#[derive(Debug, Default)]
struct Journal {
    /// Generation of the open journal (or, before one is open, the newest seen on file).
    generation: u64,
    /// The open journal; none before the first [`StateFile::rewrite`].
    file: Option<File>,
    /// Its length, as far as our appends know.
    len: u64,
    /// Its lines.
    lines: usize,
    mirror: Mirror,
    /// An append failed: the next change rewrites the whole state.
    broken: bool,
}

/// What the clones of a [`StateFile`] share.
#[derive(Debug, Default)]
struct Shared {
    journal: Mutex<Journal>,
    /// The generation of the snapshot on file; held while writing one, so snapshots are
    /// written one at a time and never an older over a newer one.
    written: Mutex<u64>,
    /// A compaction is running (or about to).
    compacting: AtomicBool,
}

/// The state file in a runtime directory: snapshot and journals.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    dir: PathBuf,
    shared: Arc<Shared>,
}

impl StateFile {
    /// The state file under `runtime_dir`.
    pub fn new(runtime_dir: &Path) -> Self {
        Self {
            path: runtime_dir.join(FILE_NAME),
            dir: runtime_dir.to_owned(),
            shared: Arc::default(),
        }
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of journal `generation`.
    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(journal_name(generation))
    }

    /// Loads the state: the snapshot (none on file: an empty state), then the journals from
    /// its generation on, in order. Later writes use newer generations than any seen here.
    pub fn load(&self) -> Result<State, StateError> {
        let mut state = self.load_snapshot()?;
        let journals = self.journals()?;
        let newest = journals.last().copied().unwrap_or(0).max(state.generation);
        let replay: Vec<u64> = journals
            .into_iter()
            .filter(|g| *g >= state.generation)
            .collect();
        let mut machines: BTreeMap<MachineName, SavedMachine> = state
            .machines
            .drain(..)
            .map(|m| (m.machine.machine.clone(), m))
            .collect();
        let mut zones: BTreeMap<ZoneName, SavedZone> = state
            .zones
            .drain(..)
            .map(|z| (z.config.name.clone(), z))
            .collect();
        let mut expected = replay.first().copied();
        for generation in replay {
            let path = self.journal_path(generation);
            if expected != Some(generation) {
                return Err(StateError::Parse {
                    path,
                    reason: format!(
                        "journal generation {} is missing",
                        expected.unwrap_or_default()
                    ),
                });
            }
            expected = Some(generation + 1);
            let text = match fs::read(&path) {
                Ok(t) => t,
                Err(source) => {
                    return Err(StateError::Io {
                        step: "reading",
                        path,
                        source,
                    });
                }
            };
            for line in parse_journal(&path, &text)? {
                match line {
                    Line::Machine { machine } => {
                        machines.insert(machine.machine.machine.clone(), *machine);
                    }
                    Line::Forget { machine } => {
                        machines.remove(&machine);
                    }
                    Line::Zone { zone } => {
                        zones.insert(zone.config.name.clone(), zone);
                    }
                    Line::ForgetZone { zone } => {
                        zones.remove(&zone);
                    }
                    Line::Forward(f) => {
                        state.forward_restore = f.forward_restore;
                        state.forward6_restore = f.forward6_restore;
                    }
                }
            }
        }
        state.machines = machines.into_values().collect();
        state.zones = zones.into_values().collect();
        let mut journal = lock(&self.shared.journal);
        journal.generation = journal.generation.max(newest);
        Ok(state)
    }

    /// The snapshot on file; none is an empty state of generation 0.
    fn load_snapshot(&self) -> Result<State, StateError> {
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
        if !READS.contains(&state.version) {
            return Err(StateError::Parse {
                path: self.path.clone(),
                reason: format!(
                    "version {} (this rnetd reads {})",
                    state.version,
                    READS.map(|v| v.to_string()).join(" and ")
                ),
            });
        }
        Ok(state)
    }

    /// The generations of the journals on file, oldest first.
    fn journals(&self) -> Result<Vec<u64>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    step: "listing",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut found: Vec<u64> = entries
            .filter_map(Result::ok)
            .filter_map(|e| journal_generation(e.file_name().to_str()?))
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// Replaces the whole state (at start, once reconciled): the snapshot is written first,
    /// then a new journal is started, and older journals are removed.
    pub fn rewrite(&self, state: &State) -> Result<(), StateError> {
        let mirror = Mirror::of(state).map_err(|e| self.serialize_error(&e))?;
        let mut journal = lock(&self.shared.journal);
        journal.mirror = mirror;
        self.rewrite_locked(&mut journal)
    }

    /// Writes the mirror as a snapshot of a new generation, then opens that generation's
    /// journal (a crash in between leaves a snapshot newer than every journal).
    fn rewrite_locked(&self, journal: &mut Journal) -> Result<(), StateError> {
        let newest = self.journals()?.last().copied().unwrap_or(0);
        let generation = journal.generation.max(newest) + 1;
        let body = journal
            .mirror
            .snapshot(generation)
            .map_err(|e| self.serialize_error(&e))?;
        journal.generation = generation;
        journal.broken = true; // until the journal is open
        journal.file = None;
        self.write_snapshot(generation, &body)?;
        journal.file = Some(self.open_journal(generation)?);
        journal.len = 0;
        journal.lines = 0;
        journal.broken = false;
        Ok(())
    }

    /// Records changes: their lines appended in one `write` before returning, plus a line for
    /// the forwarding values when they differ from those on file. Schedules a compaction when
    /// the journal is long (within a tokio runtime in the background, else at once).
    pub fn record(&self, changes: &[Change<'_>], forward: &Forward) -> Result<(), StateError> {
        let mut body = Vec::new();
        let mut updates = Vec::with_capacity(changes.len() + 1);
        for change in changes {
            self.line(change, &mut body, &mut updates)
                .map_err(|e| self.serialize_error(&e))?;
        }
        let mut journal = lock(&self.shared.journal);
        if journal.mirror.forward != *forward {
            body.extend_from_slice(b"{\"op\":\"forward\",");
            let fields = serde_json::to_vec(forward).map_err(|e| self.serialize_error(&e))?;
            body.extend_from_slice(&fields[1..]);
            body.push(b'\n');
            updates.push(Update::Forward(forward.clone()));
        }
        if updates.is_empty() {
            return Ok(());
        }
        let lines = updates.len();
        for update in updates {
            let mirror = &mut journal.mirror;
            match update {
                Update::Machine(name, Some(json)) => {
                    mirror.machines.insert(name, json);
                }
                Update::Machine(name, None) => {
                    mirror.machines.remove(&name);
                }
                Update::Zone(name, Some(json)) => {
                    mirror.zones.insert(name, json);
                }
                Update::Zone(name, None) => {
                    mirror.zones.remove(&name);
                }
                Update::Forward(f) => mirror.forward = f,
            }
        }
        if journal.broken || journal.file.is_none() {
            // The journal lacks an earlier change: the whole state, now.
            return self.rewrite_locked(&mut journal);
        }
        if let Err(e) = self.append(&mut journal, &body) {
            journal.broken = true;
            return Err(e);
        }
        journal.lines += lines;
        let long = journal.lines > 2 * journal.mirror.machines.len() + JOURNAL_SLACK;
        drop(journal);
        if long && !self.shared.compacting.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            let run = move || {
                if let Err(e) = me.compact() {
                    warn!(error = %e, "compacting the state journal failed");
                }
                me.shared.compacting.store(false, Ordering::SeqCst);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(run);
                }
                Err(_) => run(),
            }
        }
        Ok(())
    }

    /// Serialises one change's line into `body` and notes its update of the mirror.
    fn line(
        &self,
        change: &Change<'_>,
        body: &mut Vec<u8>,
        updates: &mut Vec<Update>,
    ) -> Result<(), serde_json::Error> {
        match change {
            Change::Machine(m) => {
                let json = serde_json::to_string(m)?;
                body.extend_from_slice(b"{\"op\":\"machine\",\"machine\":");
                body.extend_from_slice(json.as_bytes());
                updates.push(Update::Machine(
                    m.machine.machine.as_str().to_owned(),
                    Some(json),
                ));
            }
            Change::Forget(name) => {
                body.extend_from_slice(b"{\"op\":\"forget\",\"machine\":");
                serde_json::to_writer(&mut *body, name)?;
                updates.push(Update::Machine(name.as_str().to_owned(), None));
            }
            Change::Zone(config, explicit) => {
                let json = serde_json::to_string(&ZoneRef {
                    config,
                    explicit: *explicit,
                })?;
                body.extend_from_slice(b"{\"op\":\"zone\",\"zone\":");
                body.extend_from_slice(json.as_bytes());
                updates.push(Update::Zone(config.name.as_str().to_owned(), Some(json)));
            }
            Change::ForgetZone(name) => {
                body.extend_from_slice(b"{\"op\":\"forget_zone\",\"zone\":");
                serde_json::to_writer(&mut *body, name)?;
                updates.push(Update::Zone(name.as_str().to_owned(), None));
            }
        }
        body.extend_from_slice(b"}\n");
        Ok(())
    }

    /// Appends `body` to the open journal in one `write`; a write cut short is taken back.
    fn append(&self, journal: &mut Journal, body: &[u8]) -> Result<(), StateError> {
        let path = self.journal_path(journal.generation);
        let Some(file) = journal.file.as_mut() else {
            return Err(StateError::Io {
                step: "appending to",
                path,
                source: io::Error::other("no journal is open"),
            });
        };
        let written = match file.write(body) {
            Ok(n) if n == body.len() => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {n} of {} bytes", body.len()),
            )),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                journal.len += body.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Best effort: the next change rewrites the whole state anyway.
                let _ = file.set_len(journal.len);
                Err(StateError::Io {
                    step: "appending to",
                    path,
                    source,
                })
            }
        }
    }

    /// Compacts: a new journal for the changes from now on, then the snapshot of the state
    /// it starts from, then older journals removed (see the module's documentation).
    fn compact(&self) -> Result<(), StateError> {
        let (generation, body) = {
            let mut journal = lock(&self.shared.journal);
            if journal.broken || journal.file.is_none() {
                return Ok(()); // the next change rewrites the whole state
            }
            let generation = journal.generation + 1;
            let body = journal
                .mirror
                .snapshot(generation)
                .map_err(|e| self.serialize_error(&e))?;
            journal.file = Some(self.open_journal(generation)?);
            journal.generation = generation;
            journal.len = 0;
            journal.lines = 0;
            (generation, body)
        };
        self.write_snapshot(generation, &body)
    }

    /// Creates journal `generation`, empty, for appending.
    fn open_journal(&self, generation: u64) -> Result<File, StateError> {
        let path = self.journal_path(generation);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|f| f.set_len(0).map(|()| f));
        file.map_err(|source| StateError::Io {
            step: "creating",
            path,
            source,
        })
    }

    /// Writes snapshot `generation` unless a newer one is on file, then removes the journals
    /// it makes useless.
    fn write_snapshot(&self, generation: u64, body: &[u8]) -> Result<(), StateError> {
        let mut written = lock(&self.shared.written);
        if *written >= generation {
            return Ok(());
        }
        replace(&self.path, body)?;
        *written = generation;
        for old in self.journals().unwrap_or_default() {
            if old < generation
                && let Err(e) = fs::remove_file(self.journal_path(old))
            {
                warn!(journal = %self.journal_path(old).display(), error = %e, "removing an old state journal failed");
            }
        }
        Ok(())
    }

    /// Waits for a compaction in progress (at shutdown; bounded, so a writer stuck in the
    /// file system does not hold up shutdown forever). Every recorded change is on file
    /// already.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.shared.compacting.load(Ordering::SeqCst) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn serialize_error(&self, e: &serde_json::Error) -> StateError {
        StateError::Serialize {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// The lines of a journal. A last line without its newline (a write cut short by a crash) is
/// ignored with a warning; any other line that does not parse is an error naming it.
fn parse_journal(path: &Path, text: &[u8]) -> Result<Vec<Line>, StateError> {
    let mut lines = Vec::new();
    let mut rest = text;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            warn!(journal = %path.display(), line = number, "ignoring a torn last line of the state journal (a write cut short)");
            break;
        };
        let line = serde_json::from_slice(&rest[..end]).map_err(|e| StateError::Parse {
            path: path.to_owned(),
            reason: format!("line {number}: {e}"),
        })?;
        lines.push(line);
        rest = &rest[end + 1..];
    }
    Ok(lines)
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
    use crate::api::NetworkSpec;

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

    fn zone(name: &str) -> ZoneConfig {
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
    }

    fn names(state: &State) -> Vec<String> {
        state
            .machines
            .iter()
            .map(|m| m.machine.machine.to_string())
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Records machines `names` attached, one `record` each.
    fn attach(file: &StateFile, names: &[&str]) {
        for n in names {
            let m = machine(n);
            file.record(&[Change::Machine(&m)], &Forward::default())
                .unwrap();
        }
    }

    fn forget(file: &StateFile, name: &str) {
        file.record(
            &[Change::Forget(MachineName::new(name).unwrap())],
            &Forward::default(),
        )
        .unwrap();
    }

    #[test]
    fn changes_are_replayed_over_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), State::default());
        f.rewrite(&State {
            machines: vec![machine("a"), machine("b")],
            ..State::default()
        })
        .unwrap();
        let lab = zone("lab");
        let forward = Forward {
            forward_restore: Some("0".into()),
            forward6_restore: None,
        };
        let c = machine("c");
        f.record(&[Change::Zone(&lab, true), Change::Machine(&c)], &forward)
            .unwrap();
        forget(&f, "a");
        let mut b = machine("b");
        b.pid_start_time = 5;
        f.record(&[Change::Machine(&b)], &Forward::default())
            .unwrap();
        f.record(&[Change::ForgetZone(lab.name.clone())], &forward)
            .unwrap();
        f.record(&[Change::Zone(&zone("web"), false)], &forward)
            .unwrap();

        let s = StateFile::new(dir.path()).load().unwrap();
        assert_eq!(s.machines, vec![b, c]);
        assert_eq!(s.zones.len(), 1);
        assert_eq!(s.zones[0].config.name.as_str(), "web");
        assert!(!s.zones[0].explicit);
        assert_eq!(s.forward_restore.as_deref(), Some("0"));
        assert_eq!(s.version, VERSION);
        assert_eq!(s.generation, 1);
        // One line per change, plus the forwarding values each time they changed (3 times).
        let journal = fs::read_to_string(dir.path().join("state.1.journal")).unwrap();
        assert_eq!(journal.lines().count(), 9, "{journal}");
        assert_eq!(files(dir.path()), ["state.1.journal", "state.json"]);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.load().unwrap();
        f.rewrite(&State::default()).unwrap();
        attach(&f, &["a", "b"]);
        let path = dir.path().join("state.1.journal");
        let text = fs::read(&path).unwrap();
        // The second line cut in the middle, as a crash during its write leaves it.
        let first = text.iter().position(|b| *b == b'\n').unwrap() + 1;
        fs::write(&path, &text[..first + 20]).unwrap();
        assert_eq!(names(&StateFile::new(dir.path()).load().unwrap()), ["a"]);
        // Even a whole line without its newline: the write did not finish.
        fs::write(&path, &text[..text.len() - 1]).unwrap();
        assert_eq!(names(&StateFile::new(dir.path()).load().unwrap()), ["a"]);
    }

    #[test]
    fn a_corrupt_line_before_the_last_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.rewrite(&State::default()).unwrap();
        attach(&f, &["a"]);
        let path = dir.path().join("state.1.journal");
        let mut text = fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"op\":\"machine\",\"machine\":{\"pid\n");
        text.extend_from_slice(&fs::read(&path).unwrap());
        fs::write(&path, &text).unwrap();
        let err = StateFile::new(dir.path()).load().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "state file {} is unreadable: line 2: ",
                path.display()
            )),
            "{err}"
        );
        // A complete last line that does not parse is corrupt too, not torn.
        fs::write(&path, b"{\"op\":\"launch\"}\n").unwrap();
        let err = StateFile::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("line 1: unknown variant `launch`"), "{err}");
    }

    #[test]
    fn a_missing_journal_generation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.rewrite(&State::default()).unwrap();
        attach(&f, &["a"]);
        f.compact().unwrap();
        f.compact().unwrap();
        // Snapshot 3 is on file; journals 3 and a stray 5 (4 missing).
        fs::write(dir.path().join("state.5.journal"), b"").unwrap();
        let err = StateFile::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("journal generation 4 is missing"), "{err}");
    }

    #[test]
    fn a_long_journal_is_compacted_into_a_new_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.load().unwrap();
        f.rewrite(&State::default()).unwrap();
        // Outside a tokio runtime the compaction runs at once.
        let all: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        for _ in 0..3 {
            for (i, n) in all.iter().enumerate() {
                attach(&f, &[n]);
                if i % 2 == 1 {
                    forget(&f, n);
                }
            }
        }
        let s = StateFile::new(dir.path()).load().unwrap();
        assert_eq!(s.machines.len(), 20);
        assert!(s.generation > 1, "never compacted: {}", s.generation);
        let journals: Vec<String> = files(dir.path())
            .into_iter()
            .filter(|n| n.ends_with(".journal"))
            .collect();
        assert_eq!(journals, [journal_name(s.generation)]);
        let lines = fs::read_to_string(dir.path().join(journal_name(s.generation)))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * 20 + JOURNAL_SLACK, "{lines}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_in_the_background_loses_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.load().unwrap();
        f.rewrite(&State::default()).unwrap();
        for i in 0..500 {
            let n = format!("m{}", i % 37);
            if i % 3 == 0 {
                forget(&f, &n);
            } else {
                attach(&f, &[&n]);
            }
        }
        f.flush();
        let mut expected = BTreeMap::new();
        for i in 0..500 {
            let n = format!("m{}", i % 37);
            if i % 3 == 0 {
                expected.remove(&n);
            } else {
                expected.insert(n, ());
            }
        }
        let s = StateFile::new(dir.path()).load().unwrap();
        assert_eq!(names(&s), expected.keys().cloned().collect::<Vec<_>>());
        assert!(s.generation >= 2, "never compacted: {}", s.generation);
    }

    /// The files a crash leaves at each step of a compaction load as the state of that moment.
    #[test]
    fn a_crash_at_any_step_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.load().unwrap();
        f.rewrite(&State {
            machines: vec![machine("a")],
            ..State::default()
        })
        .unwrap();
        attach(&f, &["b", "c"]);
        forget(&f, "a");
        let before = dir.path().join("before");
        let snap1 = fs::read(dir.path().join(FILE_NAME)).unwrap();
        let j1 = fs::read(dir.path().join("state.1.journal")).unwrap();
        f.compact().unwrap();
        assert_eq!(files(dir.path()), ["state.2.journal", "state.json"]);
        attach(&f, &["d"]);
        forget(&f, "b");
        let snap2 = fs::read(dir.path().join(FILE_NAME)).unwrap();
        let j2 = fs::read(dir.path().join("state.2.journal")).unwrap();
        let after = ["c", "d"];

        let crash = |files: &[(&str, &[u8])]| {
            fs::create_dir(&before).unwrap();
            for (name, body) in files {
                fs::write(before.join(name), body).unwrap();
            }
            let loaded = StateFile::new(&before).load();
            fs::remove_dir_all(&before).unwrap();
            names(&loaded.unwrap())
        };
        // Before step 1: the old snapshot and journal.
        assert_eq!(
            crash(&[(FILE_NAME, &snap1), ("state.1.journal", &j1)]),
            ["b", "c"]
        );
        // After step 1 (new journal, changes in it), the snapshot not yet renamed (a temp
        // file half written).
        assert_eq!(
            crash(&[
                (FILE_NAME, &snap1),
                ("state.json.tmp", &snap2[..10]),
                ("state.1.journal", &j1),
                ("state.2.journal", &j2),
            ]),
            after
        );
        // After step 2, before step 3: the old journal is skipped.
        assert_eq!(
            crash(&[
                (FILE_NAME, &snap2),
                ("state.1.journal", &j1),
                ("state.2.journal", &j2),
            ]),
            after
        );
        // After step 3.
        assert_eq!(
            crash(&[(FILE_NAME, &snap2), ("state.2.journal", &j2)]),
            after
        );
        // A rewrite: its snapshot is on file before its journal exists.
        assert_eq!(crash(&[(FILE_NAME, &snap2)]), ["b", "c"]);
        // What the writer itself left.
        assert_eq!(names(&StateFile::new(dir.path()).load().unwrap()), after);
    }

    #[test]
    fn a_failed_append_is_reported_and_the_next_change_rewrites_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.load().unwrap();
        f.rewrite(&State::default()).unwrap();
        attach(&f, &["a"]);
        // The journal's handle replaced by a read-only one: the next write fails.
        let path = dir.path().join("state.1.journal");
        lock(&f.shared.journal).file = Some(File::open(&path).unwrap());
        let b = machine("b");
        let err = f
            .record(&[Change::Machine(&b)], &Forward::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("appending to {}: ", path.display())),
            "{err}"
        );
        attach(&f, &["c"]);
        assert_eq!(files(dir.path()), ["state.2.journal", "state.json"]);
        assert_eq!(
            names(&StateFile::new(dir.path()).load().unwrap()),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        let body = |machines: &[&str], generation| {
            let state = State {
                machines: machines.iter().map(|n| machine(n)).collect(),
                ..State::default()
            };
            Mirror::of(&state).unwrap().snapshot(generation).unwrap()
        };
        f.write_snapshot(2, &body(&["a", "b"], 2)).unwrap();
        f.write_snapshot(1, &body(&["a"], 1)).unwrap();
        assert_eq!(
            names(&f.load().unwrap()),
            ["a", "b"],
            "generation 1 replaced 2"
        );
    }

    #[test]
    fn a_version_1_state_is_read_and_unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        let v1 = serde_json::json!({
            "version": 1,
            "machines": [machine("a")],
            "zones": [],
            "forward_restore": "0",
        });
        fs::write(f.path(), serde_json::to_vec(&v1).unwrap()).unwrap();
        let s = f.load().unwrap();
        assert_eq!((names(&s), s.generation), (vec!["a".to_owned()], 0));
        assert_eq!(s.forward_restore.as_deref(), Some("0"));
        // The first rewrite moves it to version 2.
        f.rewrite(&s).unwrap();
        assert_eq!(StateFile::new(dir.path()).load().unwrap().version, VERSION);

        fs::write(f.path(), b"{\"version\":9,\"machines\":[]}").unwrap();
        let err = f.load().unwrap_err().to_string();
        assert!(
            err.contains("version 9 (this rnetd reads 1 and 2)"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_save_names_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(&dir.path().join("gone"));
        let err = f.rewrite(&State::default()).unwrap_err().to_string();
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
    }

    #[test]
    fn the_snapshot_is_the_json_of_a_state() {
        let state = State {
            version: VERSION,
            generation: 4,
            machines: vec![machine("a"), machine("b")],
            zones: vec![SavedZone {
                config: zone("lab"),
                explicit: true,
            }],
            forward_restore: Some("1".into()),
            forward6_restore: Some(Saved6 {
                forwarding: "0".into(),
                accept_ra: BTreeMap::from([("eth0".into(), "1".into())]),
            }),
        };
        let body = Mirror::of(&state).unwrap().snapshot(4).unwrap();
        assert_eq!(serde_json::from_slice::<State>(&body).unwrap(), state);
        assert_eq!(body, serde_json::to_vec(&state).unwrap());
    }
}
