//! Runs the DHCPv4 engine (`dhcp::Server`) on the links rnetd manages: one UDP socket per link
//! bound to the device, a thin pump of packets and time into the engine, and lease files
//! written by group commit: a reply that binds or frees a lease (an ACK) is held until a journal
//! append that contains the change has reached the disk, and appends run back to back, each
//! taking every change made meanwhile. So an ACKed lease survives a crash, the cost of a write
//! does not grow with the number of leases (dnsmasq rewrites its whole file per lease), and the
//! journal is folded into a snapshot when it grows past twice the live leases.
//!
//! # Ownership: who may touch what (the one rule of this module)
//!
//! - **The engine** — `dhcp::Server`, the journal entries not yet written and the replies held
//!   for them — sits behind one `std::sync::Mutex` (`Shared::engine`). It is held only for
//!   in-memory work: never across an `.await`, a file operation or netlink, and no other lock is
//!   taken while it is held. Journal entries and the replies that wait for them are queued in
//!   the same critical section as the change that made them, so the writer always takes a reply
//!   together with its entries.
//! - **The lease files** belong to one thread, `rnetd-leases` (the writer). Nothing else opens
//!   them: loading a link's saved leases, compaction, removal and the journal appends are jobs
//!   sent to it over a channel and done in the order sent. The writer takes the engine lock
//!   only briefly, between file operations.
//! - **Sockets** are read by one task per link; held replies are sent by one sender task.
//! - **The DNS forwarder** (`crate::dns`) of a link starts and stops with its DHCP server; the
//!   machines' names it answers for are set where their leases are recorded and released. They
//!   are kept apart from `Lease::hostname`, which a DHCP client's hostname option overwrites.
//!
//! Before this rule the engine, the journal bookkeeping and the pending entries had one lock
//! each, taken in different orders by the packet path and the writer: DHCP traffic plus an
//! attach deadlocked the daemon (issue 8).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use dhcp::{
    ClientId, Destination, Inbound, JournalEntry, Lease, LeaseChange, LeaseStore, LinkConfig,
    LinkId, Saved, Server,
};
use ipnetwork::Ipv4Network;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, trace, warn};

use crate::dns::{DnsConfig, DnsLink, DnsService};

/// A journal is compacted when it has more entries than this and twice the live leases.
const COMPACT_MIN: usize = 4096;

/// Receive buffer of a link's socket: bursts queue rather than being dropped.
const RECV_BUFFER: usize = 4 << 20;

/// Most datagrams handled per wakeup: a burst is drained under one lock, not one wakeup and
/// one lock per packet.
const BATCH: usize = 64;

/// A reply waiting for its lease change to be on disk.
struct Held {
    socket: Arc<UdpSocket>,
    to: SocketAddrV4,
    payload: Vec<u8>,
}

/// A DHCP setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket for a link could not be set up.
    #[error("starting the DHCP server on {ifname}: {source}")]
    Socket {
        /// The link.
        ifname: String,
        /// The cause.
        source: io::Error,
    },
    /// The link's configuration was refused.
    #[error("configuring the DHCP server on {ifname}: {reason}")]
    Config {
        /// The link.
        ifname: String,
        /// Why.
        reason: String,
    },
    /// The lease writer is gone (the daemon is shutting down).
    #[error("the DHCP lease writer has stopped")]
    WriterGone,
    /// The link's DNS forwarder could not listen.
    #[error("starting the DNS forwarder on {ifname}: {source}")]
    Dns {
        /// The link.
        ifname: String,
        /// The cause.
        source: io::Error,
    },
}

/// What a link's server hands out.
#[derive(Debug, Clone)]
pub struct DhcpLink {
    /// Link name (also the lease file's name).
    pub ifname: String,
    /// ifindex, the engine's link id.
    pub index: u32,
    /// The link's subnet.
    pub subnet: Ipv4Network,
    /// The server's (host side's) address; also the router.
    pub server: Ipv4Addr,
    /// DNS servers handed out; empty: the server's address, where the link's DNS forwarder
    /// answers.
    pub dns: Vec<Ipv4Addr>,
    /// A lease to record for the container the launcher configured (client id 0x01+MAC), so a
    /// DHCP client inside it later gets the same address.
    pub container: Option<([u8; 6], Ipv4Addr)>,
    /// The host side's IPv6 address, where the link's DNS forwarder also answers.
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// The engine and what waits for the disk: one lock (see the module docs).
struct Engine {
    server: Server,
    /// Journal entries not yet appended, per link, in the order the changes happened.
    pending: HashMap<u32, Vec<JournalEntry>>,
    /// Replies held until the append that contains their entries is on disk.
    held: Vec<Held>,
}

impl Engine {
    /// Queues journal entries for `id`, right after the change that made them.
    fn journal(&mut self, id: LinkId, entries: impl IntoIterator<Item = JournalEntry>) {
        self.pending.entry(id.0).or_default().extend(entries);
    }
}

struct Shared {
    engine: StdMutex<Engine>,
    /// Jobs for the writer thread.
    writer: std_mpsc::Sender<Job>,
}

impl Shared {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // The engine never panics on input (it is fuzzed); if a panic ever poisoned the lock the
        // state is still consistent enough to keep serving.
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a job to the writer thread.
    fn send(&self, job: Job) -> Result<(), DhcpError> {
        self.writer.send(job).map_err(|_| DhcpError::WriterGone)
    }
}

/// Work for the writer thread, done in the order sent.
enum Job {
    /// Journal entries (and maybe held replies) are waiting.
    Wake,
    /// Start a link's files: load its saved leases into the engine, record the container's
    /// lease, write a fresh snapshot.
    Open {
        link: DhcpLink,
        done: oneshot::Sender<Result<(), DhcpError>>,
    },
    /// Forget a link's files (the engine already forgot the link).
    Close {
        index: u32,
        ifname: String,
        done: oneshot::Sender<()>,
    },
    /// Answer once everything queued before is on disk.
    Sync(oneshot::Sender<()>),
}

/// The DHCP servers of all managed links.
pub struct DhcpService {
    shared: Arc<Shared>,
    tasks: StdMutex<HashMap<String, AbortHandle>>,
    dns: DnsService,
}

impl DhcpService {
    /// A service keeping lease files in `lease_dir`, with a DNS forwarder per link as `dns`
    /// says; starts its writer thread, its reply sender and its expiry task.
    pub fn start(lease_dir: &Path, dns: DnsConfig) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(lease_dir)?;
        let (jobs, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            engine: StdMutex::new(Engine {
                server: Server::new(),
                pending: HashMap::new(),
                held: Vec::new(),
            }),
            writer: jobs,
        });
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            // rnetd's leases live in its runtime directory (`RUNTIME_DIR/leases`), as its state
            // file does: written without fsync for the same reason (docs/architecture.md).
            store: LeaseStore::new(lease_dir).without_fsync(),
            files: HashMap::new(),
            replies,
        };
        std::thread::Builder::new()
            .name("rnetd-leases".into())
            .spawn(move || writer.run(&rx))?;
        tokio::spawn(sender(replies_rx));
        tokio::spawn(expirer(Arc::clone(&shared)));
        let dns = DnsService::new(dns);
        Ok(Arc::new(Self {
            shared,
            tasks: StdMutex::new(HashMap::new()),
            dns,
        }))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts serving `link`: its DNS forwarder, then DHCP: loads its saved leases (a restart
    /// loses none), records the container's lease, opens the socket. Returns once the leases
    /// are on disk.
    pub async fn add_link(&self, link: &DhcpLink) -> Result<(), DhcpError> {
        let dns = DnsLink::new(&link.ifname, link.server, link.subnet).with_gateway6(link.gateway6);
        self.dns
            .add_link(link.index, dns)
            .map_err(|source| DhcpError::Dns {
                ifname: link.ifname.clone(),
                source,
            })?;
        crate::timing::lap("dns start");
        if let Err(e) = self.open(link).await {
            self.dns.remove_link(&link.ifname, link.index);
            return Err(e);
        }
        Ok(())
    }

    /// The DHCP half of [`DhcpService::add_link`].
    async fn open(&self, link: &DhcpLink) -> Result<(), DhcpError> {
        let socket = open_socket(&link.ifname).map_err(|source| DhcpError::Socket {
            ifname: link.ifname.clone(),
            source,
        })?;
        let (done, opened) = oneshot::channel();
        self.shared.send(Job::Open {
            link: link.clone(),
            done,
        })?;
        opened.await.map_err(|_| DhcpError::WriterGone)??;
        let task = tokio::spawn(serve(
            Arc::clone(&self.shared),
            LinkId(link.index),
            link.ifname.clone(),
            socket,
        ));
        if let Some(old) = self
            .tasks()
            .insert(link.ifname.clone(), task.abort_handle())
        {
            old.abort();
        }
        debug!(ifname = %link.ifname, subnet = %link.subnet, "DHCP server started");
        Ok(())
    }

    /// Stops serving a link and forgets its leases (the subnet goes back to the pool); its lease
    /// files are removed by the writer thread after the jobs queued before.
    pub async fn remove_link(&self, ifname: &str, index: u32) {
        self.dns.remove_link(ifname, index);
        crate::timing::lap("dns stop");
        if let Some(t) = self.tasks().remove(ifname) {
            t.abort();
        }
        {
            let mut engine = self.shared.engine();
            engine.server.remove_link(LinkId(index));
            engine.pending.remove(&index);
        }
        let (done, closed) = oneshot::channel();
        let job = Job::Close {
            index,
            ifname: ifname.to_owned(),
            done,
        };
        // Not waited for: the writer does its jobs in order, so a link opened again later (a
        // new machine of the same name) finds the files gone, and the detach does not wait for
        // a directory fsync.
        let _ = self.shared.send(job);
        drop(closed);
    }

    /// The address the container with `mac` would get on a served link now (its lease, or the
    /// free address systemd's hash picks), recording nothing: what an attach plans with.
    pub fn pick(&self, index: u32, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.shared
            .engine()
            .server
            .pick(LinkId(index), mac, SystemTime::now())
            .map(|(addr, _)| addr)
    }

    /// Records that the client with `mac`, machine `hostname`, holds `addr` on a served link,
    /// unless it already does (an adopted zone member whose lease was not yet on disk when rnetd
    /// stopped). Returns once it is on disk; false if the address belongs to another client.
    pub async fn ensure(&self, index: u32, mac: [u8; 6], addr: Ipv4Addr, hostname: &str) -> bool {
        let id = LinkId(index);
        let now = SystemTime::now();
        let client = ClientId::from_mac(mac);
        let recorded = {
            let mut engine = self.shared.engine();
            let leases = engine.server.leases(id, now);
            // Already recorded for the container (a lease saved before container leases were
            // marked is marked now, so it counts against no limit).
            if leases
                .iter()
                .any(|l| l.client_id == client && l.address == addr && l.container)
            {
                self.dns.set_name(index, mac, hostname, addr);
                return true;
            }
            if leases
                .iter()
                .any(|l| l.address == addr && l.client_id != client)
            {
                return false;
            }
            let Some(max) = engine.server.config(id).map(|c| c.max_lease_time) else {
                return false;
            };
            let mut lease = Lease::new(client, addr, now + max);
            lease.hostname = Some(hostname.to_owned());
            let ok = engine.server.record_lease(id, lease.clone(), now).is_ok();
            if ok {
                engine.journal(id, [JournalEntry::Bind(lease)]);
            }
            ok
        };
        if recorded {
            self.dns.set_name(index, mac, hostname, addr);
            self.sync().await;
        }
        recorded
    }

    /// Drops the lease of the client with `mac` on a link (its container is gone).
    pub fn release(&self, index: u32, mac: [u8; 6]) {
        self.dns.forget_name(index, mac);
        let client = ClientId::from_mac(mac);
        let freed = {
            let mut engine = self.shared.engine();
            let freed = engine
                .server
                .release_lease(LinkId(index), &client)
                .is_some();
            if freed {
                engine.journal(LinkId(index), [JournalEntry::Free(client)]);
            }
            freed
        };
        if freed {
            let _ = self.shared.send(Job::Wake);
        }
    }

    /// The leases of a link.
    pub fn leases(&self, index: u32) -> Vec<Lease> {
        self.shared
            .engine()
            .server
            .leases(LinkId(index), SystemTime::now())
    }

    /// Waits until every lease change made so far is on disk (also used on shutdown).
    pub async fn sync(&self) {
        let (done, synced) = oneshot::channel();
        if self.shared.send(Job::Sync(done)).is_ok() {
            let _ = synced.await;
        }
    }
}

/// The journal entries that make lease changes durable. Expiry needs none: expired leases and
/// quarantines are dropped when a file is loaded.
fn entries(changes: &[LeaseChange]) -> impl Iterator<Item = JournalEntry> + '_ {
    changes.iter().flat_map(|c| match c {
        LeaseChange::Bound(l) => vec![JournalEntry::Bind(l.clone())],
        LeaseChange::Released(l) => vec![JournalEntry::Free(l.client_id.clone())],
        LeaseChange::Declined {
            address,
            until,
            lease,
            released,
        } => lease
            .iter()
            .map(|l| JournalEntry::Free(l.client_id.clone()))
            .chain(released.map(JournalEntry::Unquarantine))
            .chain([JournalEntry::Quarantine {
                address: *address,
                until: *until,
            }])
            .collect(),
        LeaseChange::Expired(_) => Vec::new(),
    })
}

/// A UDP socket on port 67 bound to one device, allowed to broadcast.
fn open_socket(ifname: &str) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    s.bind_device(Some(ifname.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67)).into())?;
    UdpSocket::from_std(s.into())
}

/// Where a reply goes. A client without an address cannot answer ARP: broadcast on the link
/// (every client accepts it; RFC 2131 §4.1 allows it).
fn reply_address(r: &dhcp::Outbound) -> SocketAddrV4 {
    let ip = match r.destination {
        Destination::Broadcast | Destination::Hardware { .. } => Ipv4Addr::BROADCAST,
        Destination::Unicast(ip) | Destination::Relay(ip) => ip,
    };
    SocketAddrV4::new(ip, r.destination.port())
}

thread_local! {
    /// A datagram as received: one buffer per thread, used without an `.await` in between.
    static RECEIVE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 4096 + 1]);
}

/// The packet pump of one link.
async fn serve(shared: Arc<Shared>, id: LinkId, ifname: String, socket: UdpSocket) {
    let socket = Arc::new(socket);
    loop {
        if let Err(e) = socket.readable().await {
            warn!(ifname, error = %e, "DHCP socket failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // Replies with nothing to make durable (OFFERs, NAKs, INFORM answers).
        let mut now_out: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
        // Whether a lease changed: the writer must run even when no reply waits (a RELEASE).
        let mut changed = false;
        // The receive buffer is the thread's, not the link's: with 1000 links, 4 MiB less.
        RECEIVE.with_borrow_mut(|buf| {
            let mut engine = shared.engine();
            for _ in 0..BATCH {
                let (n, from) = match socket.try_recv_from(buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(ifname, error = %e, "DHCP receive failed");
                        break;
                    }
                };
                let SocketAddr::V4(source) = from else {
                    continue;
                };
                let inbound = Inbound {
                    payload: &buf[..n],
                    source,
                };
                let handled = engine.server.handle(SystemTime::now(), id, &inbound);
                if let Some(reason) = handled.dropped {
                    trace!(ifname, ?reason, %source, "dropped a DHCP packet");
                }
                let durable = !handled.changes.is_empty();
                if durable {
                    debug!(ifname, changes = ?handled.changes, "lease change");
                    engine.journal(id, entries(&handled.changes));
                    changed = true;
                }
                for r in handled.replies {
                    let to = reply_address(&r);
                    if durable {
                        engine.held.push(Held {
                            socket: Arc::clone(&socket),
                            to,
                            payload: r.payload,
                        });
                    } else {
                        now_out.push((to, r.payload));
                    }
                }
            }
        });
        if changed && shared.send(Job::Wake).is_err() {
            return;
        }
        for (to, payload) in now_out {
            send(&socket, &payload, to).await;
        }
    }
}

async fn send(socket: &UdpSocket, payload: &[u8], to: SocketAddrV4) {
    if let Err(e) = socket.send_to(payload, to).await {
        warn!(error = %e, %to, "DHCP send failed");
    }
}

/// Sends the replies the writer released.
async fn sender(mut rx: mpsc::UnboundedReceiver<Held>) {
    while let Some(h) = rx.recv().await {
        send(&h.socket, &h.payload, h.to).await;
    }
}

/// Expires leases when they run out.
async fn expirer(shared: Arc<Shared>) {
    loop {
        let next = shared.engine().server.poll_timeout();
        let wait = next
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::time::sleep(wait).await;
        let expired = shared.engine().server.expire(SystemTime::now());
        if !expired.is_empty() {
            info!(count = expired.len(), "leases expired");
        }
    }
}

/// A link's lease files, as the writer knows them.
struct LinkFiles {
    name: String,
    /// Entries in its journal file.
    journal_len: usize,
}

/// The owner of the lease files (thread `rnetd-leases`).
struct Writer {
    shared: Arc<Shared>,
    store: LeaseStore,
    files: HashMap<u32, LinkFiles>,
    replies: mpsc::UnboundedSender<Held>,
}

impl Writer {
    /// Does jobs until every sender is gone. Each round takes every job queued, does them in
    /// order, then appends every pending journal entry (one fsync per link) and releases the
    /// replies held for them: group commit.
    fn run(mut self, rx: &std_mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut synced = Vec::new();
            let mut job = Some(first);
            while let Some(j) = job {
                match j {
                    Job::Wake => {}
                    Job::Open { link, done } => match self.open(&link) {
                        Ok(live) => {
                            // Served from the engine from now on: the attach goes on while the
                            // files are written (before any later job of the link). A crash
                            // before they are loses nothing: the container's lease is recorded
                            // again when the link is adopted.
                            let _ = done.send(Ok(()));
                            self.start_files(&link, live.as_ref());
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                        }
                    },
                    Job::Close {
                        index,
                        ifname,
                        done,
                    } => {
                        self.files.remove(&index);
                        if let Err(e) = self.store.remove(&ifname) {
                            warn!(ifname, error = %e, "removing the lease file failed");
                        }
                        let _ = done.send(());
                    }
                    Job::Sync(done) => synced.push(done),
                }
                job = rx.try_recv().ok();
            }
            self.commit();
            for done in synced {
                let _ = done.send(());
            }
        }
    }

    /// Loads a link's saved leases into the engine and records the container's lease; returns
    /// what the link's files start from ([`Writer::start_files`]), `None` when nothing was on
    /// file.
    fn open(&mut self, link: &DhcpLink) -> Result<Option<Saved>, DhcpError> {
        let id = LinkId(link.index);
        let cfg_err = |reason: String| DhcpError::Config {
            ifname: link.ifname.clone(),
            reason,
        };
        let now = SystemTime::now();
        let loaded = self.store.load_saved(&link.ifname, now);
        // Nothing on file (a new link): nothing needs writing yet. The container's own lease is
        // recorded again whenever the link is served (adoption included), and what DHCP clients
        // get is journaled (held until it is on disk).
        let fresh = matches!(&loaded, Ok(s) if s.leases.is_empty() && s.quarantined.is_empty());
        let saved = loaded.unwrap_or_else(|e| {
            warn!(ifname = %link.ifname, error = %e, "cannot read saved leases");
            Saved::default()
        });
        let live = {
            let mut engine = self.shared.engine();
            let server = &mut engine.server;
            let mut cfg = LinkConfig::new(link.subnet, link.server);
            cfg.dns = if link.dns.is_empty() {
                vec![link.server]
            } else {
                link.dns.clone()
            };
            if link.container.is_some() {
                // A `ve-` link has one container, recorded below before any DHCP traffic: no
                // container attaches later, so a sliver is kept (one address on a /28), and a
                // DHCP-only client there may use the rest (the throughput benchmark's 50000
                // clients on a /16). A zone keeps the default half for the members to come.
                cfg.container_reserve_permille = 1;
            }
            let max = cfg.max_lease_time;
            server
                .add_link(id, cfg)
                .map_err(|e| cfg_err(e.to_string()))?;
            for l in saved.leases {
                if let Err(e) = server.restore_lease(id, l, now) {
                    warn!(ifname = %link.ifname, error = %e, "skipping a saved lease");
                }
            }
            for (address, until) in saved.quarantined {
                if !server.restore_quarantine(id, address, until) {
                    warn!(ifname = %link.ifname, %address, "skipping a saved quarantine");
                }
            }
            if let Some((mac, addr)) = link.container {
                let client = ClientId::from_mac(mac);
                let existing = server
                    .leases(id, now)
                    .into_iter()
                    .any(|l| l.client_id == client && l.address == addr && l.container);
                if !existing {
                    let lease = Lease::new(client, addr, now + max);
                    if let Err(e) = server.record_lease(id, lease, now) {
                        server.remove_link(id);
                        return Err(cfg_err(e.to_string()));
                    }
                }
            }
            Saved {
                leases: server.leases(id, now),
                quarantined: server.quarantined(id, now),
            }
        };
        Ok((!fresh).then_some(live))
    }

    /// Starts a link's files from a fresh snapshot of `live` with an empty journal (with no
    /// `live`, from none: the journal starts when something is to be written).
    fn start_files(&mut self, link: &DhcpLink, live: Option<&Saved>) {
        if let Some(live) = live
            && let Err(e) = self.store.compact(&link.ifname, live)
        {
            warn!(ifname = %link.ifname, error = %e, "saving leases failed");
        }
        self.files.insert(
            link.index,
            LinkFiles {
                name: link.ifname.clone(),
                journal_len: 0,
            },
        );
    }

    /// Appends every pending journal entry, compacts grown journals, then releases the replies
    /// that waited for them (sent even if a write failed, which is logged: a client must not be
    /// left unanswered).
    fn commit(&mut self) {
        let (pending, held) = {
            let mut engine = self.shared.engine();
            (
                std::mem::take(&mut engine.pending),
                std::mem::take(&mut engine.held),
            )
        };
        for (index, entries) in pending {
            let Some(files) = self.files.get_mut(&index) else {
                continue; // the link is gone
            };
            if let Err(e) = self.store.append(&files.name, &entries) {
                warn!(ifname = %files.name, error = %e, "appending to the lease journal failed");
                continue;
            }
            files.journal_len += entries.len();
            let count = self.shared.engine().server.lease_count(LinkId(index));
            if files.journal_len > COMPACT_MIN.max(2 * count) {
                let live = {
                    let engine = self.shared.engine();
                    let now = SystemTime::now();
                    Saved {
                        leases: engine.server.leases(LinkId(index), now),
                        quarantined: engine.server.quarantined(LinkId(index), now),
                    }
                };
                match self.store.compact(&files.name, &live) {
                    Ok(()) => files.journal_len = 0,
                    Err(e) => {
                        warn!(ifname = %files.name, error = %e, "compacting the lease journal failed");
                    }
                }
            }
        }
        for h in held {
            let _ = self.replies.send(h);
        }
    }
}
