//! Lease files: one JSON file per link in a directory, replaced atomically
//! ([`api::fsutil::write_atomic`]: temp file in the same directory, fsync, rename, fsync of the
//! directory), so that a crash leaves either the old or the new file, never a torn one. This is the only part of the crate that touches the filesystem.
//!
//! Beside each snapshot sits a journal, `<link>.journal`: one JSON line per lease change,
//! appended and fsynced in batches ([`LeaseStore::append`]), so the cost of making a change
//! durable does not grow with the number of leases (dnsmasq rewrites its whole file per lease).
//! [`LeaseStore::compact`] folds the journal into a new snapshot. Every journal entry carries the
//! whole state of one client, so replaying a journal over a snapshot taken after some of its
//! entries gives the same result: a crash between the snapshot and the journal's truncation is
//! harmless. A torn last line (a crash mid-append) is ignored.
//!
//! Addresses quarantined after a DECLINE are saved the same way (snapshot field `quarantined`,
//! journal lines `quarantine` and `unquarantine`, the latter for a quarantine released early
//! to stay within the link's limit), so a restart does not hand a declined address out again;
//! ended quarantines are dropped on load, and the engine applies its limit again when they are
//! restored.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use api::fsutil;
use serde::{Deserialize, Serialize};

use crate::{ClientId, Lease, ParseClientIdError};

/// Format version written in every file.
const VERSION: u32 = 1;

/// The on-disk form of a link's leases.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    leases: Vec<LeaseRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantined: Vec<QuarantineRecord>,
}

/// The on-disk form of one quarantined address; its end in whole seconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineRecord {
    address: Ipv4Addr,
    until_unix: u64,
}

/// The on-disk form of one lease. Expiry is whole seconds since the Unix epoch (rounded down).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRecord {
    client_id: String,
    address: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hwaddr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    expires_unix: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    container: bool,
}

/// One journal line: the new state of one client's lease, or a new quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// The client holds this lease (created or extended).
    Bind(Lease),
    /// The client holds no lease any more.
    Free(ClientId),
    /// `address` is quarantined until `until` (a DECLINE).
    Quarantine {
        /// The declined address.
        address: Ipv4Addr,
        /// When its quarantine ends.
        until: SystemTime,
    },
    /// `address` is quarantined no more (released early for the link's limit).
    Unquarantine(Ipv4Addr),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum JournalLine {
    Bind(LeaseRecord),
    Free(String),
    Quarantine(QuarantineRecord),
    Unquarantine(Ipv4Addr),
}

/// What a link has saved: its unexpired leases and quarantines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// Leases, by address.
    pub leases: Vec<Lease>,
    /// Quarantined addresses and the end of each quarantine, by address.
    pub quarantined: Vec<(Ipv4Addr, SystemTime)>,
}

/// Why leases could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The link name cannot be a file name.
    #[error("link name {0:?} cannot name a lease file")]
    InvalidName(String),
    /// The lease directory cannot be created.
    #[error("cannot create lease directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Appending to the journal, syncing it or removing a file failed.
    #[error("cannot write lease file {path}")]
    Write {
        /// The lease file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Replacing the lease file failed at the step named; the previous file is intact.
    #[error(transparent)]
    Replace(#[from] fsutil::WriteError),
    /// Reading the file failed.
    #[error("cannot read lease file {path}")]
    Read {
        /// The lease file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON of the expected shape (truncated or corrupt). It is left as
    /// it is.
    #[error("lease file {path} is corrupt")]
    Corrupt {
        /// The lease file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("lease file {path} has unsupported version {version}")]
    Version {
        /// The lease file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// An entry holds an invalid client id or hardware address.
    #[error("lease file {path} has an invalid entry")]
    Entry {
        /// The lease file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ParseClientIdError,
    },
}

/// A directory of lease files, one per link, named after the link.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
    /// Writes are fsynced before they count (see [`LeaseStore::without_fsync`]).
    durable: bool,
}

impl LeaseStore {
    /// A store in `dir` (e.g. `/var/lib/rnet/dhcp-leases`), created on first save. Every write
    /// is fsynced (file and directory) before it returns.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LeaseStore {
            dir: dir.into(),
            durable: true,
        }
    }

    /// Writes without fsync, for a store in a runtime directory (`/run`, emptied at boot): a
    /// write is in the page cache when it returns, which any crash of the server's process
    /// keeps; only the end of the kernel (power loss, kernel crash) can lose it, and that ends
    /// the leases' holders as well when they are containers on this host. An fsync costs
    /// milliseconds on a busy disk, on every lease a client binds or frees.
    pub fn without_fsync(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Makes a rename or unlink in the store's directory durable, if the store is.
    fn sync_dir(&self) -> io::Result<()> {
        if self.durable {
            sync_dir(&self.dir)
        } else {
            Ok(())
        }
    }

    /// The file holding the leases of `link_name`.
    pub fn path(&self, link_name: &str) -> Result<PathBuf, StoreError> {
        let valid = !link_name.is_empty()
            && link_name.len() <= 255
            && !link_name.starts_with('.')
            && !link_name.contains(['/', '\0']);
        if !valid {
            return Err(StoreError::InvalidName(link_name.to_owned()));
        }
        Ok(self.dir.join(link_name))
    }

    fn journal_path(&self, link_name: &str) -> Result<PathBuf, StoreError> {
        let mut p = self.path(link_name)?.into_os_string();
        p.push(".journal");
        Ok(PathBuf::from(p))
    }

    /// Appends `entries` to the journal of `link_name` and makes them durable (one fdatasync
    /// for the batch, unless [`LeaseStore::without_fsync`]).
    pub fn append(&self, link_name: &str, entries: &[JournalEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.journal_path(link_name)?;
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let mut buf = Vec::with_capacity(entries.len() * 128);
        for e in entries {
            let line = match e {
                JournalEntry::Bind(l) => JournalLine::Bind(to_record(l)),
                JournalEntry::Free(id) => JournalLine::Free(id.to_string()),
                JournalEntry::Quarantine { address, until } => {
                    JournalLine::Quarantine(QuarantineRecord {
                        address: *address,
                        until_unix: unix_secs(*until),
                    })
                }
                JournalEntry::Unquarantine(address) => JournalLine::Unquarantine(*address),
            };
            // Our own plain records always serialise.
            serde_json::to_writer(&mut buf, &line).map_err(|e| StoreError::Write {
                path: path.clone(),
                source: e.into(),
            })?;
            buf.push(b'\n');
        }
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let created = !path.exists();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(write_err)?;
        f.write_all(&buf).map_err(write_err)?;
        if self.durable {
            f.sync_data().map_err(write_err)?;
        }
        if created {
            self.sync_dir().map_err(write_err)?;
        }
        Ok(())
    }

    /// Writes `saved` as the new snapshot of `link_name`, then empties its journal.
    pub fn compact(&self, link_name: &str, saved: &Saved) -> Result<(), StoreError> {
        self.save(link_name, saved)?;
        let path = self.journal_path(link_name)?;
        match fs::remove_file(&path) {
            Ok(()) => self
                .sync_dir()
                .map_err(|source| StoreError::Write { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write { path, source }),
        }
    }

    /// Atomically replaces the lease file of `link_name` with `saved`.
    pub fn save(&self, link_name: &str, saved: &Saved) -> Result<(), StoreError> {
        let path = self.path(link_name)?;
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let file = LeaseFile {
            version: VERSION,
            leases: saved.leases.iter().map(to_record).collect(),
            quarantined: saved
                .quarantined
                .iter()
                .map(|&(address, until)| QuarantineRecord {
                    address,
                    until_unix: unix_secs(until),
                })
                .collect(),
        };
        let mut json = serde_json::to_vec(&file).map_err(|e| StoreError::Write {
            path: path.clone(),
            source: e.into(),
        })?;
        json.push(b'\n');
        if self.durable {
            Ok(fsutil::write_atomic(&path, &json)?)
        } else {
            Ok(fsutil::write_replace(&path, &json)?)
        }
    }

    /// The unexpired leases of `link_name` at `now`; none if there is no file.
    pub fn load(&self, link_name: &str, now: SystemTime) -> Result<Vec<Lease>, StoreError> {
        self.load_saved(link_name, now).map(|s| s.leases)
    }

    /// The unexpired leases and quarantines of `link_name` at `now`; none if there is no file.
    pub fn load_saved(&self, link_name: &str, now: SystemTime) -> Result<Saved, StoreError> {
        let path = self.path(link_name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                br#"{"version":1,"leases":[]}"#.to_vec()
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let file: LeaseFile = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(source) => return Err(StoreError::Corrupt { path, source }),
        };
        if file.version != VERSION {
            return Err(StoreError::Version {
                path,
                version: file.version,
            });
        }
        let mut by_client = BTreeMap::new();
        for record in file.leases {
            let lease = from_record(record).map_err(|source| StoreError::Entry {
                path: path.clone(),
                source,
            })?;
            by_client.insert(lease.client_id.clone(), lease);
        }
        let mut quarantined: BTreeMap<Ipv4Addr, SystemTime> = file
            .quarantined
            .into_iter()
            .map(|q| (q.address, from_unix(q.until_unix)))
            .collect();
        self.replay(link_name, &mut by_client, &mut quarantined)?;
        let mut leases: Vec<Lease> = by_client
            .into_values()
            .filter(|l| !l.is_expired(now))
            .collect();
        leases.sort_by_key(|l| l.address);
        Ok(Saved {
            leases,
            quarantined: quarantined.into_iter().filter(|&(_, t)| t > now).collect(),
        })
    }

    /// Applies the journal of `link_name` to `leases` and `quarantined`. A torn last line is
    /// ignored.
    fn replay(
        &self,
        link_name: &str,
        leases: &mut BTreeMap<ClientId, Lease>,
        quarantined: &mut BTreeMap<Ipv4Addr, SystemTime>,
    ) -> Result<(), StoreError> {
        let path = self.journal_path(link_name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let line: JournalLine =
                serde_json::from_slice(line).map_err(|source| StoreError::Corrupt {
                    path: path.clone(),
                    source,
                })?;
            match line {
                JournalLine::Bind(r) => {
                    let lease = from_record(r).map_err(|source| StoreError::Entry {
                        path: path.clone(),
                        source,
                    })?;
                    leases.insert(lease.client_id.clone(), lease);
                }
                JournalLine::Free(id) => {
                    let id: ClientId = id.parse().map_err(|source| StoreError::Entry {
                        path: path.clone(),
                        source,
                    })?;
                    leases.remove(&id);
                }
                JournalLine::Quarantine(q) => {
                    quarantined.insert(q.address, from_unix(q.until_unix));
                }
                JournalLine::Unquarantine(address) => {
                    quarantined.remove(&address);
                }
            }
        }
        Ok(())
    }

    /// Deletes the lease file and journal of `link_name`; missing files are not an error.
    pub fn remove(&self, link_name: &str) -> Result<(), StoreError> {
        let journal = self.journal_path(link_name)?;
        match fs::remove_file(&journal) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Write {
                    path: journal,
                    source,
                });
            }
        }
        let path = self.path(link_name)?;
        match fs::remove_file(&path) {
            Ok(()) => self
                .sync_dir()
                .map_err(|source| StoreError::Write { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write { path, source }),
        }
    }
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn to_record(lease: &Lease) -> LeaseRecord {
    LeaseRecord {
        client_id: lease.client_id.to_string(),
        address: lease.address,
        hwaddr: lease.hwaddr.map(|m| ClientId::new(m.to_vec()).to_string()),
        hostname: lease.hostname.clone(),
        expires_unix: unix_secs(lease.expires),
        container: lease.container,
    }
}

/// Whole seconds since the Unix epoch, rounded down (0 before it).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn from_unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn from_record(r: LeaseRecord) -> Result<Lease, ParseClientIdError> {
    let hwaddr = match r.hwaddr {
        None => None,
        Some(text) => {
            let bytes = text.parse::<ClientId>()?;
            Some(
                <[u8; 6]>::try_from(bytes.as_bytes())
                    .map_err(|_| ParseClientIdError(text.clone()))?,
            )
        }
    };
    Ok(Lease {
        client_id: r.client_id.parse()?,
        address: r.address,
        hwaddr,
        hostname: r.hostname,
        expires: from_unix(r.expires_unix),
        container: r.container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn only(leases: &[Lease]) -> Saved {
        Saved {
            leases: leases.to_vec(),
            quarantined: Vec::new(),
        }
    }

    fn lease(n: u8, expires: u64) -> Lease {
        let mut l = Lease::new(
            ClientId::from_mac([2, 0, 0, 0, 0, n]),
            Ipv4Addr::new(10, 0, 0, n),
            t(expires),
        );
        l.hostname = Some(format!("host{n}"));
        l
    }

    #[test]
    fn save_and_load_round_trip_minus_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path().join("leases"));
        let mut odd = lease(3, 2000);
        odd.client_id = ClientId::new(vec![0xff, 0, 1, 2, 3]);
        odd.hwaddr = None;
        odd.hostname = None;
        let leases = vec![lease(1, 1000), lease(2, 500), odd.clone()];
        store.save("ve-web", &only(&leases)).unwrap();
        assert_eq!(store.load("ve-web", t(0)).unwrap(), leases);
        assert_eq!(
            store.load("ve-web", t(500)).unwrap(),
            vec![lease(1, 1000), odd]
        );
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("leases"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ve-web"]);
    }

    #[test]
    fn a_store_without_fsync_writes_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path()).without_fsync();
        let durable = LeaseStore::new(dir.path());
        store.save("ve-a", &only(&[lease(1, 1000)])).unwrap();
        store
            .append("ve-a", &[JournalEntry::Bind(lease(2, 1000))])
            .unwrap();
        // What one writes the other reads.
        assert_eq!(
            durable.load("ve-a", t(0)).unwrap(),
            vec![lease(1, 1000), lease(2, 1000)]
        );
        store
            .compact("ve-a", &durable.load_saved("ve-a", t(0)).unwrap())
            .unwrap();
        assert!(!store.journal_path("ve-a").unwrap().exists());
        assert_eq!(store.load("ve-a", t(0)).unwrap().len(), 2);
        store.remove("ve-a").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_file_is_empty_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        assert!(store.load("ve-x", t(0)).unwrap().is_empty());
        store.save("ve-x", &only(&[lease(1, 10)])).unwrap();
        store.remove("ve-x").unwrap();
        store.remove("ve-x").unwrap();
        assert!(store.load("ve-x", t(0)).unwrap().is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        store.save("ve-a", &only(&[lease(1, 1000)])).unwrap();
        let path = store.path("ve-a").unwrap();
        let good = fs::read(&path).unwrap();

        // Truncated: a clear error, no panic, the file untouched.
        fs::write(&path, &good[..good.len() / 2]).unwrap();
        let err = store.load("ve-a", t(0)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert_eq!(
            err.to_string(),
            format!("lease file {} is corrupt", path.display())
        );
        assert_eq!(fs::read(&path).unwrap(), &good[..good.len() / 2]);

        for garbage in [&b"\xff\xfe"[..], b"{\"version\":1}", b"[]", b""] {
            fs::write(&path, garbage).unwrap();
            assert!(matches!(
                store.load("ve-a", t(0)),
                Err(StoreError::Corrupt { .. })
            ));
        }
        fs::write(&path, br#"{"version":7,"leases":[]}"#).unwrap();
        assert!(matches!(
            store.load("ve-a", t(0)),
            Err(StoreError::Version { version: 7, .. })
        ));
        fs::write(
            &path,
            br#"{"version":1,"leases":[{"client_id":"zz","address":"10.0.0.1","expires_unix":9}]}"#,
        )
        .unwrap();
        assert!(matches!(
            store.load("ve-a", t(0)),
            Err(StoreError::Entry { .. })
        ));
    }

    #[test]
    fn interrupted_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        store.save("ve-a", &only(&[lease(1, 1000)])).unwrap();
        // A crash between writing the temp file and the rename leaves a torn temp file.
        fs::write(dir.path().join(".ve-a.XXXX.tmp"), b"{\"version\":1,\"lea").unwrap();
        assert_eq!(store.load("ve-a", t(0)).unwrap(), vec![lease(1, 1000)]);
        // A failed save (directory made read-only is not reliable as root: use a file where
        // the directory should be) reports an error and leaves nothing behind.
        let blocked = LeaseStore::new(dir.path().join("ve-a"));
        assert!(matches!(
            blocked.save("x", &only(&[])),
            Err(StoreError::CreateDir { .. })
        ));
        assert_eq!(store.load("ve-a", t(0)).unwrap(), vec![lease(1, 1000)]);
    }

    #[test]
    fn the_journal_replays_over_the_snapshot_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        store
            .save("ve-a", &only(&[lease(1, 1000), lease(2, 1000)]))
            .unwrap();
        store
            .append(
                "ve-a",
                &[
                    JournalEntry::Bind(lease(3, 2000)),
                    JournalEntry::Free(lease(1, 0).client_id),
                    JournalEntry::Bind(lease(2, 3000)),
                ],
            )
            .unwrap();
        let got = store.load("ve-a", t(10)).unwrap();
        assert_eq!(got, vec![lease(2, 3000), lease(3, 2000)]);
        // A crash mid-append leaves a torn line: it is ignored.
        let mut j = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("ve-a.journal"))
            .unwrap();
        j.write_all(br#"{"bind":{"client_id":"01:"#).unwrap();
        assert_eq!(store.load("ve-a", t(10)).unwrap(), got);
        // Compaction folds it into the snapshot; replaying an old journal over a newer snapshot
        // changes nothing.
        let old_journal = fs::read(dir.path().join("ve-a.journal")).unwrap();
        store.compact("ve-a", &only(&got)).unwrap();
        assert!(!dir.path().join("ve-a.journal").exists());
        assert_eq!(store.load("ve-a", t(10)).unwrap(), got);
        fs::write(dir.path().join("ve-a.journal"), old_journal).unwrap();
        assert_eq!(store.load("ve-a", t(10)).unwrap(), got);
        // A journal without a snapshot is enough; remove takes both.
        store
            .append("ve-b", &[JournalEntry::Bind(lease(5, 100))])
            .unwrap();
        assert_eq!(store.load("ve-b", t(10)).unwrap(), vec![lease(5, 100)]);
        store.remove("ve-b").unwrap();
        assert!(store.load("ve-b", t(10)).unwrap().is_empty());
        // A corrupt line in the middle is an error, not silently skipped.
        fs::write(
            dir.path().join("ve-c.journal"),
            b"garbage\n{\"free\":\"01:02\"}\n",
        )
        .unwrap();
        assert!(matches!(
            store.load("ve-c", t(10)),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn quarantines_and_container_flags_are_saved_and_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        let mut c = lease(1, 1000);
        c.container = true;
        let q = |n: u8, until| (Ipv4Addr::new(10, 0, 0, n), t(until));
        let saved = Saved {
            leases: vec![c.clone(), lease(2, 1000)],
            quarantined: vec![q(7, 100), q(8, 600)],
        };
        store.save("ve-a", &saved).unwrap();
        assert_eq!(store.load_saved("ve-a", t(0)).unwrap(), saved);
        let text = fs::read_to_string(store.path("ve-a").unwrap()).unwrap();
        assert!(text.contains(r#""container":true"#), "{text}");
        assert!(
            text.contains(r#""quarantined":[{"address":"10.0.0.7","until_unix":100}"#),
            "{text}"
        );
        // Journaled quarantines replay over the snapshot; ended ones are dropped on load.
        store
            .append(
                "ve-a",
                &[
                    JournalEntry::Quarantine {
                        address: Ipv4Addr::new(10, 0, 0, 9),
                        until: t(700),
                    },
                    JournalEntry::Quarantine {
                        address: Ipv4Addr::new(10, 0, 0, 7),
                        until: t(800),
                    },
                    JournalEntry::Quarantine {
                        address: Ipv4Addr::new(10, 0, 0, 10),
                        until: t(800),
                    },
                    JournalEntry::Unquarantine(Ipv4Addr::new(10, 0, 0, 10)),
                ],
            )
            .unwrap();
        let got = store.load_saved("ve-a", t(650)).unwrap();
        assert_eq!(got.quarantined, vec![q(7, 800), q(9, 700)]);
        assert_eq!(got.leases, vec![c, lease(2, 1000)]);
        // A file of the previous format (no quarantines, no flags) still loads.
        fs::remove_file(dir.path().join("ve-a.journal")).unwrap();
        fs::write(
            store.path("ve-a").unwrap(),
            br#"{"version":1,"leases":[{"client_id":"01:02","address":"10.0.0.3","expires_unix":9}]}"#,
        )
        .unwrap();
        let old = store.load_saved("ve-a", t(0)).unwrap();
        assert!(!old.leases[0].container && old.quarantined.is_empty());
    }

    #[test]
    fn link_names_that_are_not_file_names_are_refused() {
        let store = LeaseStore::new("/nonexistent");
        for bad in ["", ".", "..", ".hidden", "a/b", "a\0b"] {
            let err = store.save(bad, &only(&[])).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName(_)), "{bad:?}");
        }
        assert_eq!(
            store.path("a/b").unwrap_err().to_string(),
            "link name \"a/b\" cannot name a lease file"
        );
    }
}
