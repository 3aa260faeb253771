//! Runs the DHCPv4 engine (`dhcp::Server`) on the links rnetd manages: one UDP socket per link
//! bound to the device, a thin pump of packets and time into the engine, and lease files
//! written by group commit: a reply that binds or frees a lease (an ACK) is held until a journal
//! append that contains the change has reached the disk, and appends run back to back, each
//! taking every change made meanwhile. So an ACKed lease survives a crash, the cost of a write
//! does not grow with the number of leases (dnsmasq rewrites its whole file per lease), and the
//! journal is folded into a snapshot when it grows past twice the live leases.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use dhcp::{
    ClientId, Destination, Inbound, JournalEntry, Lease, LeaseChange, LeaseStore, LinkConfig,
    LinkId, Server,
};
use ipnetwork::Ipv4Network;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, info, trace, warn};

/// A journal is compacted when it has more entries than this and twice the live leases.
const COMPACT_MIN: usize = 4096;

/// Receive buffer of a link's socket: bursts queue rather than being dropped.
const RECV_BUFFER: usize = 4 << 20;

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
    /// DNS servers handed out.
    pub dns: Vec<Ipv4Addr>,
    /// A lease to record for the container the launcher configured (client id 0x01+MAC), so a
    /// DHCP client inside it later gets the same address.
    pub container: Option<([u8; 6], Ipv4Addr)>,
}

struct Shared {
    server: StdMutex<Server>,
    store: LeaseStore,
    names: StdMutex<HashMap<u32, String>>,
    /// Replies held until the next write is on disk.
    held: StdMutex<Vec<Held>>,
    /// Journal entries not yet appended, per link, in the order the changes happened (pushed
    /// under the server lock).
    pending: StdMutex<HashMap<u32, Vec<JournalEntry>>>,
    /// Entries in each link's journal file, and the lock that orders file operations.
    journal_len: StdMutex<HashMap<u32, usize>>,
    dirty: Notify,
}

/// The DHCP servers of all managed links.
pub struct DhcpService {
    shared: Arc<Shared>,
    tasks: StdMutex<HashMap<String, AbortHandle>>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The engine never panics on input (it is fuzzed); if a panic ever poisoned the lock the
    // state is still consistent enough to keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DhcpService {
    /// A service keeping lease files in `lease_dir`; starts its writer and expiry tasks.
    pub fn start(lease_dir: &Path) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(lease_dir)?;
        let shared = Arc::new(Shared {
            server: StdMutex::new(Server::new()),
            store: LeaseStore::new(lease_dir),
            names: StdMutex::new(HashMap::new()),
            held: StdMutex::new(Vec::new()),
            pending: StdMutex::new(HashMap::new()),
            journal_len: StdMutex::new(HashMap::new()),
            dirty: Notify::new(),
        });
        tokio::spawn(writer(Arc::clone(&shared)));
        tokio::spawn(expirer(Arc::clone(&shared)));
        Ok(Arc::new(Self {
            shared,
            tasks: StdMutex::new(HashMap::new()),
        }))
    }

    /// Starts serving `link`: loads its saved leases (a restart loses none), records the
    /// container's lease, opens the socket.
    pub fn add_link(&self, link: &DhcpLink) -> Result<(), DhcpError> {
        let id = LinkId(link.index);
        let cfg_err = |reason: String| DhcpError::Config {
            ifname: link.ifname.clone(),
            reason,
        };
        let socket = open_socket(&link.ifname).map_err(|source| DhcpError::Socket {
            ifname: link.ifname.clone(),
            source,
        })?;
        let now = SystemTime::now();
        {
            let mut server = lock(&self.shared.server);
            let mut cfg = LinkConfig::new(link.subnet, link.server);
            cfg.dns = link.dns.clone();
            let max = cfg.max_lease_time;
            server
                .add_link(id, cfg)
                .map_err(|e| cfg_err(e.to_string()))?;
            match self.shared.store.load(&link.ifname, now) {
                Ok(leases) => {
                    for l in leases {
                        if let Err(e) = server.record_lease(id, l, now) {
                            warn!(ifname = %link.ifname, error = %e, "skipping a saved lease");
                        }
                    }
                }
                Err(e) => warn!(ifname = %link.ifname, error = %e, "cannot read saved leases"),
            }
            if let Some((mac, addr)) = link.container {
                let client = ClientId::from_mac(mac);
                let existing = server
                    .leases(id, now)
                    .into_iter()
                    .any(|l| l.client_id == client && l.address == addr);
                if !existing {
                    let lease = Lease::new(client, addr, now + max);
                    server
                        .record_lease(id, lease, now)
                        .map_err(|e| cfg_err(e.to_string()))?;
                }
            }
            // Start from a fresh snapshot with an empty journal.
            let mut files = lock(&self.shared.journal_len);
            if let Err(e) = self
                .shared
                .store
                .compact(&link.ifname, &server.leases(id, now))
            {
                warn!(ifname = %link.ifname, error = %e, "saving leases failed");
            }
            files.insert(link.index, 0);
        }
        lock(&self.shared.names).insert(link.index, link.ifname.clone());
        let task = tokio::spawn(serve(
            Arc::clone(&self.shared),
            id,
            link.ifname.clone(),
            socket,
        ));
        if let Some(old) = lock(&self.tasks).insert(link.ifname.clone(), task.abort_handle()) {
            old.abort();
        }
        debug!(ifname = %link.ifname, subnet = %link.subnet, "DHCP server started");
        Ok(())
    }

    /// Stops serving a link and forgets its leases (the subnet goes back to the pool).
    pub fn remove_link(&self, ifname: &str, index: u32) {
        if let Some(t) = lock(&self.tasks).remove(ifname) {
            t.abort();
        }
        lock(&self.shared.server).remove_link(LinkId(index));
        lock(&self.shared.names).remove(&index);
        lock(&self.shared.pending).remove(&index);
        let mut files = lock(&self.shared.journal_len);
        files.remove(&index);
        if let Err(e) = self.shared.store.remove(ifname) {
            warn!(ifname, error = %e, "removing the lease file failed");
        }
    }

    /// The address of the client with `mac` on a served link: its lease if it has one, else a
    /// free address picked as the server would (systemd's hash), recorded as its lease so a
    /// DHCP client in the container later gets the same. `None` when the pool is full.
    pub fn assign(&self, index: u32, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let id = LinkId(index);
        let now = SystemTime::now();
        let client = ClientId::from_mac(mac);
        let mut server = lock(&self.shared.server);
        let leases = server.leases(id, now);
        if let Some(l) = leases.iter().find(|l| l.client_id == client) {
            return Some(l.address);
        }
        let cfg = server.config(id)?;
        let (subnet, me, max) = (cfg.subnet, cfg.server_address, cfg.max_lease_time);
        let addr = dhcp::pick_address(subnet, client.as_bytes(), |a| {
            a != me && !leases.iter().any(|l| l.address == a)
        })?;
        let lease = Lease::new(client, addr, now + max);
        server.record_lease(id, lease.clone(), now).ok()?;
        self.shared.journal(id, [JournalEntry::Bind(lease)]);
        drop(server);
        Some(addr)
    }

    /// Drops the lease of the client with `mac` on a link (its container is gone).
    pub fn release(&self, index: u32, mac: [u8; 6]) {
        let client = ClientId::from_mac(mac);
        let mut server = lock(&self.shared.server);
        if server.release_lease(LinkId(index), &client).is_some() {
            self.shared
                .journal(LinkId(index), [JournalEntry::Free(client)]);
        }
    }

    /// The leases of a link.
    pub fn leases(&self, index: u32) -> Vec<Lease> {
        lock(&self.shared.server).leases(LinkId(index), SystemTime::now())
    }

    /// Writes every pending lease change now (on shutdown).
    pub fn flush(&self) {
        flush(&self.shared);
    }
}

impl Shared {
    /// Queues journal entries for `id` and wakes the writer. Call with the server lock held,
    /// right after the change, so entries keep the order of the changes.
    fn journal(&self, id: LinkId, entries: impl IntoIterator<Item = JournalEntry>) {
        lock(&self.pending).entry(id.0).or_default().extend(entries);
        self.dirty.notify_one();
    }
}

/// The journal entries that make lease changes durable. Expiry needs none: expired leases are
/// dropped when a file is loaded.
fn entries(changes: &[LeaseChange]) -> impl Iterator<Item = JournalEntry> + '_ {
    changes.iter().filter_map(|c| match c {
        LeaseChange::Bound(l) => Some(JournalEntry::Bind(l.clone())),
        LeaseChange::Released(l) => Some(JournalEntry::Free(l.client_id.clone())),
        LeaseChange::Declined { lease, .. } => lease
            .as_ref()
            .map(|l| JournalEntry::Free(l.client_id.clone())),
        LeaseChange::Expired(_) => None,
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

/// Most datagrams handled per wakeup: a burst is drained under one lock, not one wakeup and
/// one lock per packet.
const BATCH: usize = 64;

async fn serve(shared: Arc<Shared>, id: LinkId, ifname: String, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096 + 1];
    loop {
        if let Err(e) = socket.readable().await {
            warn!(ifname, error = %e, "DHCP socket failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // (destination, payload, durable: wait for the journal)
        let mut out: Vec<(SocketAddrV4, Vec<u8>, bool)> = Vec::new();
        {
            let mut server = lock(&shared.server);
            for _ in 0..BATCH {
                let (n, from) = match socket.try_recv_from(&mut buf) {
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
                let handled = server.handle(SystemTime::now(), id, &inbound);
                if let Some(reason) = handled.dropped {
                    trace!(ifname, ?reason, %source, "dropped a DHCP packet");
                }
                let durable = !handled.changes.is_empty();
                if durable {
                    debug!(ifname, changes = ?handled.changes, "lease change");
                    shared.journal(id, entries(&handled.changes));
                }
                out.extend(handled.replies.into_iter().map(|r| {
                    let ip = match r.destination {
                        // A client without an address cannot answer ARP: broadcast on the
                        // link (every client accepts it; RFC 2131 §4.1 allows it).
                        Destination::Broadcast | Destination::Hardware { .. } => {
                            Ipv4Addr::BROADCAST
                        }
                        Destination::Unicast(ip) | Destination::Relay(ip) => ip,
                    };
                    (
                        SocketAddrV4::new(ip, r.destination.port()),
                        r.payload,
                        durable,
                    )
                }));
            }
        }
        let mut held = Vec::new();
        for (to, payload, durable) in out {
            if durable {
                held.push(Held {
                    socket: Arc::clone(&socket),
                    to,
                    payload,
                });
            } else {
                // OFFERs, NAKs, INFORM answers: nothing to make durable.
                send(&socket, &payload, to).await;
            }
        }
        if !held.is_empty() {
            lock(&shared.held).extend(held);
            // Wake the writer after holding: the round that takes these replies runs after
            // their journal entries were queued.
            shared.dirty.notify_one();
        }
    }
}

async fn send(socket: &UdpSocket, payload: &[u8], to: SocketAddrV4) {
    if let Err(e) = socket.send_to(payload, to).await {
        warn!(error = %e, %to, "DHCP send failed");
    }
}

/// Group commit: appends the pending journal entries, then sends the replies held for them.
/// A reply is held after its entries were queued and the writer takes the replies before the
/// entries, so the append it waits for contains its change; replies held during an append wait
/// for the next one, which starts at once.
async fn writer(shared: Arc<Shared>) {
    loop {
        shared.dirty.notified().await;
        let held = std::mem::take(&mut *lock(&shared.held));
        let s = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || flush(&s)).await;
        // Sent even if the write failed (logged): the client must not be left unanswered.
        for h in held {
            send(&h.socket, &h.payload, h.to).await;
        }
    }
}

/// Appends every pending journal entry (one fsync per link) and compacts grown journals.
fn flush(shared: &Shared) {
    let pending = std::mem::take(&mut *lock(&shared.pending));
    // Held across the file operations: a link removed meanwhile cannot get its files back.
    let mut files = lock(&shared.journal_len);
    for (index, entries) in pending {
        let Some(len) = files.get_mut(&index) else {
            continue; // the link is gone
        };
        let Some(name) = lock(&shared.names).get(&index).cloned() else {
            continue;
        };
        if let Err(e) = shared.store.append(&name, &entries) {
            warn!(ifname = %name, error = %e, "appending to the lease journal failed");
            continue;
        }
        *len += entries.len();
        let count = lock(&shared.server).lease_count(LinkId(index));
        if *len > COMPACT_MIN.max(2 * count) {
            let live = lock(&shared.server).leases(LinkId(index), SystemTime::now());
            match shared.store.compact(&name, &live) {
                Ok(()) => *len = 0,
                Err(e) => warn!(ifname = %name, error = %e, "compacting the lease journal failed"),
            }
        }
    }
}

/// Expires leases when they run out.
async fn expirer(shared: Arc<Shared>) {
    loop {
        let next = lock(&shared.server).poll_timeout();
        let wait = next
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::time::sleep(wait).await;
        let expired = lock(&shared.server).expire(SystemTime::now());
        if !expired.is_empty() {
            info!(count = expired.len(), "leases expired");
        }
    }
}
