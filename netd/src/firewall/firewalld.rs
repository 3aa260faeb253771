//! firewalld through its own D-Bus API (`firewalld.dbus(5)`): when firewalld runs, our links are
//! bound to its `trusted` zone at runtime (`zone.addInterface`), one by one, and unbound with
//! their link, instead of accept rules of ours in firewalld's `inet firewalld` table (which
//! firewalld flushes on every reload).
//!
//! Why `trusted`: firewalld 1.3 (Debian bookworm) creates zones and policies only in its permanent
//! configuration (`config.addZone2`, `config.addPolicy`, then a reload, as netavark's firewalld
//! driver does); a runtime-only change can only bind interfaces or sources to an existing zone,
//! and of the built-in zones only `trusted` (target `ACCEPT`) forwards traffic that enters
//! through its interfaces. Traffic into our links is let through by firewalld itself (`ct state
//! established,related accept`, `ct status dnat accept` for published ports), and our own
//! `forward` chain still decides what of it passes. What it also allows: containers reach every
//! port of the host over their link (input from a `trusted` interface is accepted), as on a host
//! without a firewall. Nothing is written to firewalld's permanent configuration; a link bound
//! to another zone by the admin is left there.
//!
//! firewalld drops runtime bindings on `--reload` and on restart, so the task here binds our
//! links again on its `Reloaded` signal, when its bus name gets an owner (`NameOwnerChanged`),
//! and on changes of interface bindings. The links it bound are recorded in the runtime
//! directory, so a restarted rnetd unbinds those that are no longer ours. Without a system bus
//! (or without firewalld) nothing here waits: the task connects on its own, and the firewall
//! waits for a binding only while firewalld runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use nat::IfName;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, Message, MessageStream};

/// firewalld's bus name (and the interface of its main object).
pub const NAME: &str = "org.fedoraproject.FirewallD1";
/// firewalld's main object.
const PATH: &str = "/org/fedoraproject/FirewallD1";
/// The interface of its zone methods.
const ZONE_INTERFACE: &str = "org.fedoraproject.FirewallD1.zone";
/// The zone our links are bound to (see the module's comment for why).
pub const ZONE: &str = "trusted";
/// The record of the links we bound, in the runtime directory.
pub const RECORD: &str = "firewalld.json";

/// How long one D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a change of our links waits for firewalld to have bound them.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How long to wait before connecting to the system bus again.
const RECONNECT: Duration = Duration::from_secs(10);

/// A D-Bus step failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewalldError {
    /// The bus or firewalld refused a call.
    #[error("firewalld: {step}: {source}")]
    Bus {
        /// What was being done, e.g. `zone.addInterface trusted ve-web`.
        step: String,
        /// The cause.
        source: zbus::Error,
    },
    /// No answer in time.
    #[error("firewalld: {step}: no answer within {CALL_TIMEOUT:?}")]
    Timeout {
        /// What was being done.
        step: String,
    },
}

/// What the task and the firewall share.
#[derive(Debug, Default)]
struct Shared {
    /// firewalld's name has an owner (and we are connected to its bus).
    running: AtomicBool,
    /// We have links bound in firewalld.
    bound: AtomicBool,
}

/// The firewall's handle on the firewalld task.
#[derive(Debug)]
pub struct Firewalld {
    desired: watch::Sender<(u64, BTreeSet<IfName>)>,
    applied: watch::Receiver<u64>,
    shared: Arc<Shared>,
    generation: u64,
}

impl Firewalld {
    /// Starts the task that keeps `links` (as changed by [`Firewalld::update`]) bound in
    /// firewalld while it runs; `record` is the file of the links it bound, `checks` is told
    /// when firewalld appears, goes or reloads (the firewall's check then looks at the nft
    /// tables again: firewalld's own table is left to firewalld only while it runs).
    pub fn spawn(record: PathBuf, links: BTreeSet<IfName>, checks: mpsc::Sender<()>) -> Self {
        Self::spawn_on(None, record, links, checks)
    }

    /// [`Firewalld::spawn`] on the bus at `address` (`None`: the system bus).
    fn spawn_on(
        address: Option<String>,
        record: PathBuf,
        links: BTreeSet<IfName>,
        checks: mpsc::Sender<()>,
    ) -> Self {
        let (desired, desired_rx) = watch::channel((0, links));
        let (applied_tx, applied) = watch::channel(0);
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(
            address,
            Task {
                record,
                bound: BTreeSet::new(),
                conflicts: BTreeSet::new(),
                shared: shared.clone(),
            },
            desired_rx,
            applied_tx,
            checks,
        ));
        Self {
            desired,
            applied,
            shared,
            generation: 0,
        }
    }

    /// True while firewalld runs and handles our links (its own tables are then not ours to
    /// put rules in).
    pub fn handles(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// What `rnet status` shows, when firewalld runs and holds links of ours.
    pub fn describe(&self) -> Option<String> {
        (self.handles() && self.shared.bound.load(Ordering::Acquire))
            .then(|| format!("firewalld: zone {ZONE} (runtime)"))
    }

    /// Adds (true) or removes (false) links to bind in firewalld; while firewalld runs, waits
    /// (at most [`SYNC_WAIT`]) until they are, so a container's first packet passes.
    pub async fn update(&mut self, links: &[(bool, IfName)]) {
        let generation = self.generation + 1;
        let modified = self.desired.send_if_modified(|(g, desired)| {
            let mut modified = false;
            for (add, name) in links {
                modified |= if *add {
                    desired.insert(name.clone())
                } else {
                    desired.remove(name)
                };
            }
            if modified {
                *g = generation;
            }
            modified
        });
        if modified {
            self.generation = generation;
            if self.handles()
                && tokio::time::timeout(SYNC_WAIT, self.applied.wait_for(|g| *g >= generation))
                    .await
                    .is_err()
            {
                warn!(
                    "firewalld did not bind our links within {SYNC_WAIT:?}; it goes on meanwhile"
                );
            }
        }
    }
}

/// The task's own state.
struct Task {
    record: PathBuf,
    /// The links we bound to [`ZONE`] (as recorded).
    bound: BTreeSet<String>,
    /// Links the admin bound to another zone (warned about once).
    conflicts: BTreeSet<String>,
    shared: Arc<Shared>,
}

/// Why the task woke up.
enum Wake {
    /// Our links changed.
    Links,
    /// firewalld got an owner (`true`) or lost it.
    Owner(bool),
    /// firewalld reloaded or an interface binding changed.
    Changed(String),
    /// The bus connection ended.
    Lost,
    /// The firewall is gone: stop.
    Stop,
}

async fn run(
    address: Option<String>,
    mut task: Task,
    mut desired: watch::Receiver<(u64, BTreeSet<IfName>)>,
    applied: watch::Sender<u64>,
    checks: mpsc::Sender<()>,
) {
    task.bound = task.load();
    let mut warned = false;
    loop {
        match connect(address.as_deref()).await {
            Ok((conn, mut owners, mut signals, mut running)) => {
                warned = false;
                debug!(running, "watching firewalld on the system bus");
                let mut dirty = true;
                loop {
                    let (generation, links) = desired.borrow_and_update().clone();
                    if dirty && running {
                        task.apply(&conn, &links).await;
                    }
                    dirty = true;
                    // Only now (our links bound) is firewalld's table left to it: the check this
                    // triggers removes our rules there.
                    task.set_running(running, &checks);
                    applied.send_replace(generation);
                    let wake = tokio::select! {
                        changed = desired.changed() => match changed {
                            Ok(()) => Wake::Links,
                            Err(_) => Wake::Stop,
                        },
                        m = owners.next() => match m {
                            Some(Ok(m)) => Wake::Owner(owner_present(&m)),
                            _ => Wake::Lost,
                        },
                        m = signals.next() => match m {
                            Some(Ok(m)) => Wake::Changed(member(&m)),
                            _ => Wake::Lost,
                        },
                    };
                    match wake {
                        Wake::Links => {}
                        Wake::Owner(present) => {
                            if present {
                                info!("firewalld started; binding our links to its zone {ZONE}");
                            }
                            running = present;
                        }
                        Wake::Changed(what) => match what.as_str() {
                            "Reloaded" => {
                                info!("firewalld reloaded; binding our links again");
                                let _ = checks.try_send(());
                            }
                            // A binding changed (ours included): look again.
                            "InterfaceRemoved" | "ZoneOfInterfaceChanged" | "ZoneChanged" => {}
                            // Anything else (our own additions too) changes no binding.
                            _ => dirty = false,
                        },
                        Wake::Lost => {
                            warn!("lost the system bus; firewalld is not watched until it is back");
                            task.set_running(false, &checks);
                            break;
                        }
                        Wake::Stop => return,
                    }
                }
            }
            Err(e) => {
                if !warned {
                    debug!(error = %e, "no system bus; firewalld is not watched (trying again every {RECONNECT:?})");
                    warned = true;
                }
            }
        }
        // Wait for the bus to come (back), still answering changes of our links at once.
        let retry = tokio::time::sleep(RECONNECT);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => break,
                changed = desired.changed() => match changed {
                    Ok(()) => {
                        applied.send_replace(desired.borrow_and_update().0);
                    }
                    Err(_) => return,
                },
            }
        }
    }
}

/// The streams of a connection: firewalld's owner changes and its signals.
type Connected = (Connection, MessageStream, MessageStream, bool);

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, or the default socket), subscribes
/// to firewalld's owner changes and signals, then asks whether it runs (in that order, so an
/// appearance between the two is not missed).
async fn connect(address: Option<&str>) -> Result<Connected, FirewalldError> {
    let conn = match address {
        None => timed("connecting to the system bus", Connection::system()).await?,
        Some(address) => {
            let builder = zbus::connection::Builder::address(address)
                .map_err(|source| bus_error(format!("the bus address {address}"), source))?;
            timed(format!("connecting to {address}"), builder.build()).await?
        }
    };
    let owners = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender("org.freedesktop.DBus")
        .and_then(|b| b.interface("org.freedesktop.DBus"))
        .and_then(|b| b.member("NameOwnerChanged"))
        .and_then(|b| b.arg(0, NAME))
        .map(|b| b.build())
        .map_err(|source| bus_error("a match rule for NameOwnerChanged", source))?;
    let owners = timed(
        "subscribing to NameOwnerChanged",
        MessageStream::for_match_rule(owners, &conn, Some(64)),
    )
    .await?;
    let signals = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(NAME)
        .and_then(|b| b.path(PATH))
        .map(|b| b.build())
        .map_err(|source| bus_error("a match rule for firewalld's signals", source))?;
    let signals = timed(
        "subscribing to firewalld's signals",
        MessageStream::for_match_rule(signals, &conn, Some(64)),
    )
    .await?;
    let reply: Message = timed(
        "NameHasOwner",
        conn.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "NameHasOwner",
            &(NAME,),
        ),
    )
    .await?;
    let running: bool = reply
        .body()
        .deserialize()
        .map_err(|source| bus_error("reading NameHasOwner's answer", source))?;
    Ok((conn, owners, signals, running))
}

/// True if a `NameOwnerChanged` signal gives the name a new owner.
fn owner_present(message: &Message) -> bool {
    message
        .body()
        .deserialize::<(String, String, String)>()
        .is_ok_and(|(_, _, new)| !new.is_empty())
}

/// The member of a signal.
fn member(message: &Message) -> String {
    message
        .header()
        .member()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

fn bus_error(step: impl Into<String>, source: zbus::Error) -> FirewalldError {
    FirewalldError::Bus {
        step: step.into(),
        source,
    }
}

/// Runs `call`, failing after [`CALL_TIMEOUT`].
async fn timed<T>(
    step: impl Into<String>,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, FirewalldError> {
    let step = step.into();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(FirewalldError::Bus { step, source }),
        Err(_) => Err(FirewalldError::Timeout { step }),
    }
}

/// Calls `method` (`addInterface`, `removeInterface`) of firewalld's zone interface for
/// `interface` in zone [`ZONE`] (a runtime change).
async fn zone_call(conn: &Connection, method: &str, interface: &str) -> Result<(), FirewalldError> {
    timed(
        format!("zone.{method} {ZONE} {interface}"),
        conn.call_method(
            Some(NAME),
            PATH,
            Some(ZONE_INTERFACE),
            method,
            &(ZONE, interface),
        ),
    )
    .await
    .map(drop)
}

/// firewalld's active zones as interface -> zone (`zone.getActiveZones`: zone -> {"interfaces":
/// [...], "sources": [...]}).
async fn active_zones(conn: &Connection) -> Result<BTreeMap<String, String>, FirewalldError> {
    let step = "zone.getActiveZones";
    let reply: Message = timed(
        step,
        conn.call_method(
            Some(NAME),
            PATH,
            Some(ZONE_INTERFACE),
            "getActiveZones",
            &(),
        ),
    )
    .await?;
    let zones: HashMap<String, HashMap<String, Vec<String>>> = reply
        .body()
        .deserialize()
        .map_err(|source| bus_error(step, source))?;
    let mut out = BTreeMap::new();
    for (zone, settings) in zones {
        for interface in settings.get("interfaces").into_iter().flatten() {
            out.insert(interface.clone(), zone.clone());
        }
    }
    Ok(out)
}

/// What [`Task::apply`] does, decided from firewalld's bindings (interface -> zone), our links
/// and the links we bound.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Our links in no zone: bind them to [`ZONE`].
    bind: Vec<String>,
    /// Our links already in [`ZONE`] (bound by us before a restart of rnetd): ours.
    adopt: Vec<String>,
    /// Links we bound that are no longer ours and still in [`ZONE`]: unbind them.
    unbind: Vec<String>,
    /// Links we bound that firewalld no longer has in [`ZONE`] (a reload, a restart, the
    /// admin): no longer ours to unbind.
    forget: Vec<String>,
    /// Our links the admin bound to another zone, with that zone: left there.
    elsewhere: Vec<(String, String)>,
}

fn plan(
    zones: &BTreeMap<String, String>,
    links: &BTreeSet<IfName>,
    bound: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    for link in links {
        let name = link.as_str().to_owned();
        match zones.get(&name).map(String::as_str) {
            None => plan.bind.push(name),
            Some(ZONE) => plan.adopt.push(name),
            Some(other) => plan.elsewhere.push((name, other.to_owned())),
        }
    }
    let wanted: BTreeSet<&str> = links.iter().map(IfName::as_str).collect();
    for name in bound.iter().filter(|b| !wanted.contains(b.as_str())) {
        if zones.get(name).map(String::as_str) == Some(ZONE) {
            plan.unbind.push(name.clone());
        } else {
            plan.forget.push(name.clone());
        }
    }
    plan
}

impl Task {
    fn set_running(&self, running: bool, checks: &mpsc::Sender<()>) {
        if self.shared.running.swap(running, Ordering::AcqRel) != running {
            // firewalld's table is ours to put rules in again, or no longer: look now.
            let _ = checks.try_send(());
        }
    }

    /// Binds the links of `links` that are in no zone to [`ZONE`], unbinds the ones we bound
    /// that are no longer ours ([`plan`] on firewalld's active zones); failures are logged (the
    /// next change, reload or owner change tries again).
    async fn apply(&mut self, conn: &Connection, links: &BTreeSet<IfName>) {
        let zones = match active_zones(conn).await {
            Ok(z) => z,
            Err(e) => {
                warn!(error = %e, "reading firewalld's zones failed");
                return;
            }
        };
        let plan = plan(&zones, links, &self.bound);
        let before = self.bound.clone();
        self.bound.extend(plan.adopt);
        for name in plan.bind {
            match zone_call(conn, "addInterface", &name).await {
                Ok(_) => {
                    info!(link = %name, "bound our link to firewalld's zone {ZONE} (runtime)");
                    self.bound.insert(name);
                }
                Err(e) => warn!(error = %e, "binding our link in firewalld failed"),
            }
        }
        for name in plan.forget {
            self.bound.remove(&name);
        }
        for name in plan.unbind {
            match zone_call(conn, "removeInterface", &name).await {
                Ok(_) => {
                    info!(link = %name, "unbound our link from firewalld's zone {ZONE}");
                    self.bound.remove(&name);
                }
                Err(e) => warn!(error = %e, "unbinding our link in firewalld failed"),
            }
        }
        let wanted: BTreeSet<&str> = links.iter().map(IfName::as_str).collect();
        self.conflicts.retain(|l| wanted.contains(l.as_str()));
        for (name, zone) in plan.elsewhere {
            if self.conflicts.insert(name.clone()) {
                warn!(
                    link = %name,
                    zone = %zone,
                    "firewalld has our link in another zone (the admin's choice); left there"
                );
            }
        }
        self.shared
            .bound
            .store(!self.bound.is_empty(), Ordering::Release);
        if self.bound != before {
            self.save();
        }
    }

    /// The recorded links (none if there is no record or it cannot be read).
    fn load(&self) -> BTreeSet<String> {
        match std::fs::read(&self.record) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %self.record.display(), error = %e, "ignoring an unreadable record of our firewalld bindings");
                BTreeSet::new()
            }),
            Err(_) => BTreeSet::new(),
        }
    }

    fn save(&self) {
        let result = if self.bound.is_empty() {
            match std::fs::remove_file(&self.record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            let body = serde_json::to_vec(&self.bound).expect("a set of strings serializes");
            crate::api::fsutil::write_atomic(&self.record, &body).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            warn!(path = %self.record.display(), error = %e, "recording our firewalld bindings failed");
        }
    }
}

/// True if a record of our firewalld bindings lists any link (so `--host-firewall=off` has
/// something to undo).
pub fn recorded(record: &std::path::Path) -> bool {
    std::fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice::<BTreeSet<String>>(&b).ok())
        .is_some_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(names: &[&str]) -> BTreeSet<IfName> {
        names.iter().map(|n| IfName::new(*n).unwrap()).collect()
    }

    #[tokio::test]
    async fn without_a_bus_changes_do_not_wait_and_nothing_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let (checks, _events) = mpsc::channel(1);
        let bus = format!("unix:path={}", dir.path().join("no-bus").display());
        let mut fw =
            Firewalld::spawn_on(Some(bus), dir.path().join(RECORD), BTreeSet::new(), checks);
        // A hang guard, not a timing assertion: a change never waits for a firewalld that is not
        // running.
        let added: Vec<(bool, IfName)> = links(&["ve-a", "vz-b"])
            .into_iter()
            .map(|l| (true, l))
            .collect();
        tokio::time::timeout(Duration::from_secs(30), fw.update(&added))
            .await
            .expect("a change waited for a bus that is not there");
        assert!(!fw.handles());
        assert_eq!(fw.describe(), None);
        assert!(!dir.path().join(RECORD).exists());
    }

    #[test]
    fn links_are_bound_adopted_unbound_or_left_to_the_admin() {
        let zones: BTreeMap<String, String> = [
            ("ve-old", "trusted"),
            ("ve-adopted", "trusted"),
            ("ve-admin", "internal"),
            ("eth0", "public"),
        ]
        .into_iter()
        .map(|(i, z)| (i.to_owned(), z.to_owned()))
        .collect();
        let bound: BTreeSet<String> = ["ve-old", "ve-reloaded", "ve-adopted"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let p = plan(
            &zones,
            &links(&["ve-new", "ve-adopted", "ve-admin"]),
            &bound,
        );
        assert_eq!(
            p,
            Plan {
                bind: vec!["ve-new".to_owned()],
                adopt: vec!["ve-adopted".to_owned()],
                unbind: vec!["ve-old".to_owned()],
                forget: vec!["ve-reloaded".to_owned()],
                elsewhere: vec![("ve-admin".to_owned(), "internal".to_owned())],
            }
        );
        // Nothing to do when all is in place; everything of ours goes with no links.
        let done = plan(
            &zones,
            &links(&["ve-adopted"]),
            &["ve-adopted".to_owned()].into(),
        );
        assert_eq!(
            done,
            Plan {
                adopt: vec!["ve-adopted".to_owned()],
                ..Plan::default()
            }
        );
        let none = plan(&zones, &BTreeSet::new(), &bound);
        assert_eq!(none.unbind, ["ve-adopted", "ve-old"]);
        assert_eq!(none.forget, ["ve-reloaded"]);
        assert!(none.bind.is_empty() && none.elsewhere.is_empty());
    }

    #[test]
    fn the_record_lists_what_we_bound_and_goes_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(RECORD);
        let mut task = Task {
            record: record.clone(),
            bound: ["ve-a".to_owned(), "vz-b".to_owned()].into(),
            conflicts: BTreeSet::new(),
            shared: Arc::default(),
        };
        task.save();
        assert!(recorded(&record));
        assert_eq!(task.load(), task.bound);
        task.bound.clear();
        task.save();
        assert!(!record.exists());
        assert!(!recorded(&record));
        // An unreadable record is ignored (nothing to unbind), not fatal.
        std::fs::write(&record, b"{").unwrap();
        assert!(!recorded(&record));
        assert!(task.load().is_empty());
    }
}
