//! A DNS forwarder on every link rnetd serves: it answers on the link's gateway address (the
//! address its DHCP server serves from), UDP and TCP port 53, and is started and stopped with
//! that link's DHCP server (`DhcpService::add_link`/`remove_link`).
//!
//! - **Local names.** On a zone bridge it answers itself for the zone's members (A and PTR): a
//!   member's name is its machine name, set when its lease is recorded at attach (and again at
//!   adoption) and dropped when it is released (a DHCP client cannot set it), asked for as `NAME`
//!   or `NAME.ZONE` (the zone
//!   is the search domain of the resolv.conf the launcher writes). On every link `_gateway` is
//!   the host, as systemd-resolved answers it. Only the link's own names are known: a listener is
//!   bound to its device, so a container reaching another link's gateway address gets nothing.
//! - **Everything else** is forwarded to the host's upstream servers: those of `/etc/resolv.conf`,
//!   or of `/run/systemd/resolve/resolv.conf` when the former names only systemd-resolved's
//!   stub (127.0.0.53, 127.0.0.54), which containers could not reach. Both files are reread
//!   when their modification time changes (checked at most once a second).
//! - **Malformed queries** (not decodable, responses, not exactly one question) are dropped and
//!   counted; the decision is the pure [`decide`], fuzzed in `fuzz/`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnetwork::Ipv4Network;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tracing::{debug, trace, warn};

/// The DNS port.
const PORT: u16 = 53;

/// systemd-resolved's stub listeners: a resolv.conf naming only these sends us to resolved's
/// own list of upstream servers (`/run/systemd/resolve/resolv.conf`, see systemd-resolved(8)).
const RESOLVED_STUBS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(127, 0, 0, 54)];

/// The host, as systemd-resolved names it (systemd-resolved(8), "Synthetic Records").
pub const GATEWAY_NAME: &str = "_gateway";

/// How long one upstream server has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a TCP client may take to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Queries being forwarded at once (each holds a socket); more are dropped (clients retry).
const IN_FLIGHT: usize = 1024;

/// TCP connections at once.
const TCP_CONNECTIONS: usize = 128;

/// How often the resolv.conf files are checked for changes, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// Local answers are not cached: a machine's address goes with it.
const TTL: u32 = 0;

/// The largest UDP query read from a container (EDNS's usual payload limit, RFC 6891 6.2.5): a
/// question is far smaller, and the buffer lives as long as each link's listener (two per
/// link, one per family), so 64 KiB each made up most of rnetd's memory per container. A
/// longer datagram is cut and, no longer a valid message, dropped as malformed.
const UDP_QUERY_MAX: usize = 4096;

/// Where the upstream servers come from.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The host's resolv.conf (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// systemd-resolved's list of upstreams (`/run/systemd/resolve/resolv.conf`).
    pub resolved_conf: PathBuf,
    /// Fixed upstream servers (`rnetd --dns`); the files are not read when given.
    pub servers: Vec<IpAddr>,
}

/// A link as the forwarder serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLink {
    /// The link (the listeners are bound to it).
    pub ifname: String,
    /// The host's address on it, where the forwarder listens.
    pub gateway: Ipv4Addr,
    /// The link's subnet (reverse lookups in it are answered here, never forwarded).
    pub subnet: Ipv4Network,
    /// The zone, for a zone bridge (`vz-ZONE`): its members' names are answered.
    pub zone: Option<String>,
    /// The host's IPv6 address on it (`PREFIX::1`, named by the router advertisements' RDNSS
    /// option), where the forwarder also listens; `_gateway` has it as AAAA.
    pub gateway6: Option<std::net::Ipv6Addr>,
}

impl DnsLink {
    /// The view of a served link: a zone bridge is `vz-ZONE` (`api::ZoneName::bridge`; zone names
    /// are short enough never to be shortened).
    pub fn new(ifname: &str, gateway: Ipv4Addr, subnet: Ipv4Network) -> Self {
        Self {
            ifname: ifname.to_owned(),
            gateway,
            subnet,
            zone: ifname
                .strip_prefix("vz-")
                .filter(|z| !z.is_empty())
                .map(str::to_ascii_lowercase),
            gateway6: None,
        }
    }

    /// The link with its IPv6 gateway address.
    pub fn with_gateway6(mut self, gateway6: Option<std::net::Ipv6Addr>) -> Self {
        self.gateway6 = gateway6;
        self
    }
}

/// What to do with a datagram received on a link.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered here.
    Reply(Vec<u8>),
    /// Not ours: forward it upstream as it is.
    Forward,
    /// Malformed: drop it (and count it).
    Drop(&'static str),
}

/// Decides what to do with `query` received on `link`; `names` lists the link's machines (name,
/// address). Pure: the query path the fuzz target runs.
pub fn decide(link: &DnsLink, names: &[(String, Ipv4Addr)], query: &[u8]) -> Decision {
    decide6(link, names, &[], query)
}

/// [`decide`] with the machines' IPv6 addresses too (`names6`: name, address), answered as
/// AAAA.
pub fn decide6(
    link: &DnsLink,
    names: &[(String, Ipv4Addr)],
    names6: &[(String, std::net::Ipv6Addr)],
    query: &[u8],
) -> Decision {
    let Ok(msg) = Message::from_vec(query) else {
        return Decision::Drop("undecodable");
    };
    if msg.metadata.message_type != MessageType::Query {
        return Decision::Drop("not a query");
    }
    if msg.metadata.op_code != OpCode::Query {
        return reply(&msg, ResponseCode::NotImp, Vec::new());
    }
    let [q] = msg.queries.as_slice() else {
        return Decision::Drop("not exactly one question");
    };
    if q.query_class != DNSClass::IN {
        return Decision::Forward;
    }
    let qname = q.name.to_lowercase().to_ascii();
    let qname = qname.trim_end_matches('.');
    let qtype = q.query_type;
    // Forward lookups: _gateway, and a zone's members as NAME or NAME.ZONE.
    let local = |name: &str| -> Option<(Ipv4Addr, Option<std::net::Ipv6Addr>)> {
        let bare = match &link.zone {
            Some(zone) => name
                .strip_suffix(zone.as_str())
                .and_then(|n| n.strip_suffix('.'))
                .unwrap_or(name),
            None => name,
        };
        if bare == GATEWAY_NAME {
            return Some((link.gateway, link.gateway6));
        }
        link.zone.as_ref()?;
        let addr6 = names6
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(bare))
            .map(|(_, a)| *a);
        names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(bare))
            .map(|(_, a)| (*a, addr6))
    };
    if let Some((addr, addr6)) = local(qname) {
        let a = || Record::from_rdata(q.name.clone(), TTL, RData::A(A(addr)));
        let aaaa = addr6.map(|a6| Record::from_rdata(q.name.clone(), TTL, RData::AAAA(AAAA(a6))));
        let answers = match qtype {
            RecordType::A => vec![a()],
            RecordType::AAAA => aaaa.into_iter().collect(),
            RecordType::ANY => std::iter::once(a()).chain(aaaa).collect(),
            // The name exists, without data of that type (NODATA).
            _ => Vec::new(),
        };
        return reply(&msg, ResponseCode::NoError, answers);
    }
    // Reverse lookups in the link's subnet are answered here (known or not): never leaked.
    if let Some(addr) = arpa_v4(qname).filter(|a| link.subnet.contains(*a)) {
        let target = if addr == link.gateway {
            Some(format!("{GATEWAY_NAME}."))
        } else {
            names
                .iter()
                .find(|(_, a)| *a == addr)
                .map(|(n, _)| match &link.zone {
                    Some(zone) => format!("{n}.{zone}."),
                    None => format!("{n}."),
                })
        };
        let Some(target) = target.and_then(|t| Name::from_ascii(t).ok()) else {
            return reply(&msg, ResponseCode::NXDomain, Vec::new());
        };
        let answers = match qtype {
            RecordType::PTR | RecordType::ANY => vec![Record::from_rdata(
                q.name.clone(),
                TTL,
                RData::PTR(PTR(target)),
            )],
            _ => Vec::new(),
        };
        return reply(&msg, ResponseCode::NoError, answers);
    }
    // NAME.ZONE that is none of ours: a name of this zone that does not exist (glibc tries it
    // first for a single label). Never asked upstream.
    if let Some(zone) = &link.zone
        && qname
            .strip_suffix(zone.as_str())
            .is_some_and(|n| n.is_empty() || n.ends_with('.'))
    {
        return reply(&msg, ResponseCode::NXDomain, Vec::new());
    }
    Decision::Forward
}

/// The address of `d.c.b.a.in-addr.arpa`.
fn arpa_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for o in octets.iter_mut().rev() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// A response to `req` with `answers`, authoritative.
fn reply(req: &Message, code: ResponseCode, answers: Vec<Record>) -> Decision {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.metadata.response_code = code;
    resp.add_queries(req.queries.iter().cloned());
    resp.add_answers(answers);
    match resp.to_vec() {
        Ok(bytes) => Decision::Reply(bytes),
        Err(_) => Decision::Drop("unencodable answer"),
    }
}

/// The nameservers of a resolv.conf text, in order (IPv6 with a zone index is skipped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified())
        .collect()
}

/// The upstreams to use: those of `resolv`, or of `resolved` when `resolv` names only
/// systemd-resolved's stub (or nothing at all).
pub fn upstreams(resolv: &str, resolved: Option<&str>) -> Vec<IpAddr> {
    let listed = nameservers(resolv);
    let only_stub = listed.iter().all(|a| match a {
        IpAddr::V4(v4) => RESOLVED_STUBS.contains(v4),
        IpAddr::V6(_) => false,
    });
    if only_stub && let Some(text) = resolved {
        let theirs: Vec<IpAddr> = nameservers(text)
            .into_iter()
            .filter(|a| !matches!(a, IpAddr::V4(v4) if RESOLVED_STUBS.contains(v4)))
            .collect();
        if !theirs.is_empty() {
            return theirs;
        }
    }
    listed
}

/// The upstream list, reread when a file changes.
struct Upstreams {
    config: DnsConfig,
    cache: StdMutex<Cached>,
}

struct Cached {
    checked: Option<Instant>,
    stamps: [Option<SystemTime>; 2],
    servers: Arc<[SocketAddr]>,
}

impl Upstreams {
    fn current(&self) -> Arc<[SocketAddr]> {
        if !self.config.servers.is_empty() {
            let mut c = lock(&self.cache);
            if c.servers.is_empty() {
                c.servers = self
                    .config
                    .servers
                    .iter()
                    .map(|a| (*a, PORT).into())
                    .collect();
            }
            return Arc::clone(&c.servers);
        }
        let mut c = lock(&self.cache);
        if c.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return Arc::clone(&c.servers);
        }
        let first = c.checked.is_none();
        c.checked = Some(Instant::now());
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamps = [
            stamp(&self.config.resolv_conf),
            stamp(&self.config.resolved_conf),
        ];
        // Read once, then again only when a file changed: an empty list warns once, not once a
        // second.
        if first || stamps != c.stamps {
            let resolv = std::fs::read_to_string(&self.config.resolv_conf).unwrap_or_default();
            let resolved = std::fs::read_to_string(&self.config.resolved_conf).ok();
            let servers: Arc<[SocketAddr]> = upstreams(&resolv, resolved.as_deref())
                .into_iter()
                .map(|a| (a, PORT).into())
                .collect();
            if servers != c.servers {
                debug!(?servers, "DNS upstream servers");
            }
            if servers.is_empty() {
                warn!(
                    resolv_conf = %self.config.resolv_conf.display(),
                    resolved_conf = %self.config.resolved_conf.display(),
                    "no upstream DNS server: names outside the fabric will not resolve"
                );
            }
            c.servers = servers;
            c.stamps = stamps;
        }
        Arc::clone(&c.servers)
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters of the forwarder (all links).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Queries answered here.
    pub local: AtomicU64,
    /// Queries forwarded upstream.
    pub forwarded: AtomicU64,
    /// Forwarded queries no upstream answered.
    pub failed: AtomicU64,
    /// Malformed queries dropped.
    pub malformed: AtomicU64,
}

/// A machine's name on a link.
#[derive(Debug, Clone)]
struct Named {
    mac: [u8; 6],
    name: String,
    addr: Ipv4Addr,
}

struct Shared {
    upstreams: Upstreams,
    stats: DnsStats,
    /// The machines' names, by ifindex.
    names: StdMutex<HashMap<u32, Vec<Named>>>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

/// The forwarders of all served links.
pub struct DnsService {
    shared: Arc<Shared>,
    tasks: StdMutex<HashMap<String, Vec<AbortHandle>>>,
}

impl DnsService {
    /// A service forwarding as `config` says.
    pub fn new(config: DnsConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                upstreams: Upstreams {
                    config,
                    cache: StdMutex::new(Cached {
                        checked: None,
                        stamps: [None, None],
                        servers: Arc::from(Vec::new()),
                    }),
                },
                stats: DnsStats::default(),
                names: StdMutex::new(HashMap::new()),
                in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
                connections: Arc::new(Semaphore::new(TCP_CONNECTIONS)),
            }),
            tasks: StdMutex::new(HashMap::new()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &DnsStats {
        &self.shared.stats
    }

    /// Starts answering on `link` (ifindex `index`): UDP and TCP on its gateway, port 53.
    pub fn add_link(&self, index: u32, link: DnsLink) -> io::Result<()> {
        let addr = SocketAddr::from((link.gateway, PORT));
        let mut addrs = vec![addr];
        addrs.extend(link.gateway6.map(|a| SocketAddr::from((a, PORT))));
        let mut sockets = Vec::new();
        for a in &addrs {
            let udp = bound(&link.ifname, *a, Type::DGRAM)?;
            let tcp = bound(&link.ifname, *a, Type::STREAM)?;
            tcp.listen(128)?;
            sockets.push((
                UdpSocket::from_std(udp.into())?,
                TcpListener::from_std(tcp.into())?,
            ));
        }
        let link = Arc::new(link);
        let mut tasks = Vec::new();
        for (udp, tcp) in sockets {
            tasks.push(
                tokio::spawn(serve_udp(
                    Arc::clone(&self.shared),
                    index,
                    Arc::clone(&link),
                    udp,
                ))
                .abort_handle(),
            );
            tasks.push(
                tokio::spawn(serve_tcp(
                    Arc::clone(&self.shared),
                    index,
                    Arc::clone(&link),
                    tcp,
                ))
                .abort_handle(),
            );
        }
        if let Some(old) = lock(&self.tasks).insert(link.ifname.clone(), tasks) {
            old.iter().for_each(AbortHandle::abort);
        }
        debug!(ifname = %link.ifname, %addr, zone = ?link.zone, "DNS forwarder started");
        Ok(())
    }

    /// Stops answering on a link and forgets its names.
    pub fn remove_link(&self, ifname: &str, index: u32) {
        if let Some(tasks) = lock(&self.tasks).remove(ifname) {
            tasks.iter().for_each(AbortHandle::abort);
        }
        lock(&self.shared.names).remove(&index);
    }

    /// Machine `name` (MAC `mac`) has `addr` on link `index` (answered on a zone bridge).
    pub fn set_name(&self, index: u32, mac: [u8; 6], name: &str, addr: Ipv4Addr) {
        let mut names = lock(&self.shared.names);
        let link = names.entry(index).or_default();
        link.retain(|n| n.mac != mac);
        link.push(Named {
            mac,
            name: name.to_owned(),
            addr,
        });
    }

    /// The machine with `mac` left link `index`.
    pub fn forget_name(&self, index: u32, mac: [u8; 6]) {
        if let Some(link) = lock(&self.shared.names).get_mut(&index) {
            link.retain(|n| n.mac != mac);
        }
    }
}

/// A socket bound to `addr` on device `ifname`: a packet for this address arriving over another
/// link (a container asking another link's gateway) does not reach it.
fn bound(ifname: &str, addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let proto = if ty == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(ifname.as_bytes()))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        // Our address may still be tentative on a link without carrier yet.
        s.set_freebind_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

thread_local! {
    /// A query as received: one buffer per thread, used without an `.await` in between (a
    /// buffer per link would cost 4 KiB per family per container).
    static RECEIVE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; UDP_QUERY_MAX]);
}

/// The UDP listener of one link.
async fn serve_udp(shared: Arc<Shared>, index: u32, link: Arc<DnsLink>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    loop {
        if let Err(e) = socket.readable().await {
            warn!(ifname = %link.ifname, error = %e, "DNS receive failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // The decision, with the query copied out of the buffer only when it is forwarded.
        let received = RECEIVE.with_borrow_mut(|buf| {
            let (n, from) = socket.try_recv_from(buf)?;
            let query = &buf[..n];
            let decided = match handle(&shared, index, &link, query) {
                Some(Decision::Reply(bytes)) => Some(Err(bytes)),
                Some(_) => Some(Ok(query.to_vec())),
                None => None,
            };
            Ok::<_, io::Error>((from, decided))
        });
        let (from, decided) = match received {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!(ifname = %link.ifname, error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match decided {
            Some(Err(reply)) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Some(Ok(query)) => {
                let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
                    trace!(ifname = %link.ifname, "too many queries in flight; dropped one");
                    continue;
                };
                let shared = Arc::clone(&shared);
                let socket = Arc::clone(&socket);
                tokio::spawn(async move {
                    if let Some(answer) = forward_udp(&shared, &query).await {
                        let _ = socket.send_to(&answer, from).await;
                    }
                    drop(permit);
                });
            }
            None => {}
        }
    }
}

/// Decides and counts; `None` for a dropped query, `Some(Forward)` for one to forward.
fn handle(shared: &Shared, index: u32, link: &DnsLink, query: &[u8]) -> Option<Decision> {
    let named: Vec<Named> = if link.zone.is_some() {
        lock(&shared.names).get(&index).cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let names: Vec<(String, Ipv4Addr)> = named.iter().map(|n| (n.name.clone(), n.addr)).collect();
    // A member's IPv6 address is the zone's /64 and the EUI-64 of its MAC (crate::ipv6).
    let names6: Vec<(String, std::net::Ipv6Addr)> = link
        .gateway6
        .and_then(|gw| ipnetwork::Ipv6Network::new(gw, crate::ipv6::LINK_PREFIX).ok())
        .map(|net| {
            named
                .iter()
                .map(|n| (n.name.clone(), crate::ipv6::eui64(net, n.mac)))
                .collect()
        })
        .unwrap_or_default();
    match decide6(link, &names, &names6, query) {
        Decision::Drop(reason) => {
            let n = shared.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
            // Counted always, logged sparingly: a flood must not flood the log.
            if n.is_power_of_two() {
                debug!(ifname = %link.ifname, reason, dropped = n, "dropped malformed DNS queries");
            }
            None
        }
        Decision::Reply(b) => {
            shared.stats.local.fetch_add(1, Ordering::Relaxed);
            Some(Decision::Reply(b))
        }
        Decision::Forward => {
            shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            Some(Decision::Forward)
        }
    }
}

/// Asks the upstreams in turn over UDP; the first answer with the query's id wins.
async fn forward_udp(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for server in shared.upstreams.current().iter() {
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let s = UdpSocket::bind(local).await.ok()?;
            s.connect(server).await.ok()?;
            s.send(query).await.ok()?;
            // Not zeroed: a query costs no 64 KiB memset.
            let mut buf = Vec::with_capacity(65536);
            loop {
                buf.clear();
                s.recv_buf(&mut buf).await.ok()?;
                if buf.get(..2) == Some(id) {
                    return Some(buf);
                }
            }
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(answer);
        }
        trace!(%server, "DNS upstream did not answer");
    }
    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
    None
}

/// The TCP listener of one link.
async fn serve_tcp(shared: Arc<Shared>, index: u32, link: Arc<DnsLink>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(ifname = %link.ifname, error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.connections).try_acquire_owned() else {
            continue; // closed at once
        };
        let shared = Arc::clone(&shared);
        let link = Arc::clone(&link);
        tokio::spawn(async move {
            serve_connection(&shared, index, &link, stream).await;
            drop(permit);
        });
    }
}

/// Reads a length-prefixed message (RFC 1035 §4.2.2).
async fn read_msg(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

async fn write_msg(stream: &mut TcpStream, msg: &[u8]) -> Option<()> {
    let len = u16::try_from(msg.len()).ok()?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await.ok()
}

/// Queries of one TCP client, in turn, until it closes or idles.
async fn serve_connection(shared: &Shared, index: u32, link: &DnsLink, mut stream: TcpStream) {
    while let Ok(Some(query)) = tokio::time::timeout(TCP_IDLE, read_msg(&mut stream)).await {
        let answer = match handle(shared, index, link, &query) {
            Some(Decision::Reply(bytes)) => Some(bytes),
            Some(_) => forward_tcp(shared, &query).await,
            None => return, // a malformed stream is closed
        };
        if let Some(a) = answer
            && write_msg(&mut stream, &a).await.is_none()
        {
            return;
        }
    }
}

/// Asks the upstreams in turn over TCP.
async fn forward_tcp(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    for server in shared.upstreams.current().iter() {
        let attempt = async {
            let mut s = TcpStream::connect(server).await.ok()?;
            write_msg(&mut s, query).await?;
            read_msg(&mut s).await
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(answer);
        }
    }
    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zone_link() -> DnsLink {
        DnsLink::new(
            "vz-blue",
            Ipv4Addr::new(10, 0, 0, 1),
            "10.0.0.0/24".parse().unwrap(),
        )
    }

    fn names() -> Vec<(String, Ipv4Addr)> {
        vec![("web".into(), Ipv4Addr::new(10, 0, 0, 7))]
    }

    fn query(name: &str, ty: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        m.to_vec().unwrap()
    }

    /// The answer's code and its records as text.
    fn answer(link: &DnsLink, q: &[u8]) -> (ResponseCode, Vec<String>) {
        let Decision::Reply(bytes) = decide(link, &names(), q) else {
            panic!("not answered: {:?}", decide(link, &names(), q));
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        let records = m.answers.iter().map(|r| r.data.to_string()).collect();
        (m.metadata.response_code, records)
    }

    #[test]
    fn zone_members_and_the_gateway_are_answered_here() {
        let link = zone_link();
        let ok = |r: &[&str]| {
            (
                ResponseCode::NoError,
                r.iter().map(|s| s.to_string()).collect(),
            )
        };
        assert_eq!(
            answer(&link, &query("web.", RecordType::A)),
            ok(&["10.0.0.7"])
        );
        assert_eq!(
            answer(&link, &query("WEB.blue.", RecordType::A)),
            ok(&["10.0.0.7"])
        );
        assert_eq!(
            answer(&link, &query("web.blue.", RecordType::AAAA)),
            ok(&[])
        );
        // With IPv6: members' and the gateway's AAAA.
        let link6 = zone_link().with_gateway6(Some("fd00:1:2:3::1".parse().unwrap()));
        let names6 = [("web".to_owned(), "fd00:1:2:3::7".parse().unwrap())];
        let answer6 = |q: &[u8]| match decide6(&link6, &names(), &names6, q) {
            Decision::Reply(b) => Message::from_vec(&b)
                .unwrap()
                .answers
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            answer6(&query("web.blue.", RecordType::AAAA)),
            ["fd00:1:2:3::7"]
        );
        assert_eq!(
            answer6(&query("_gateway.", RecordType::AAAA)),
            ["fd00:1:2:3::1"]
        );
        assert_eq!(
            answer6(&query("web.", RecordType::ANY)),
            ["10.0.0.7", "fd00:1:2:3::7"]
        );
        assert_eq!(answer6(&query("web.", RecordType::A)), ["10.0.0.7"]);
        assert_eq!(
            answer(&link, &query("_gateway.", RecordType::A)),
            ok(&["10.0.0.1"])
        );
        assert_eq!(
            answer(&link, &query("7.0.0.10.in-addr.arpa.", RecordType::PTR)),
            ok(&["web.blue."])
        );
        assert_eq!(
            answer(&link, &query("1.0.0.10.in-addr.arpa.", RecordType::PTR)),
            ok(&["_gateway."])
        );
        // Names of the zone that do not exist, and unknown addresses of its subnet: NXDOMAIN
        // here, never asked upstream.
        for q in ["db.blue.", "9.0.0.10.in-addr.arpa."] {
            assert_eq!(
                answer(&link, &query(q, RecordType::A)).0,
                ResponseCode::NXDomain
            );
        }
        assert_eq!(
            decide(&link, &names(), &query("www.example.test.", RecordType::A)),
            Decision::Forward
        );
        assert_eq!(
            decide(
                &link,
                &names(),
                &query("8.8.8.8.in-addr.arpa.", RecordType::PTR)
            ),
            Decision::Forward
        );
    }

    #[test]
    fn a_veth_link_knows_only_the_gateway() {
        let link = DnsLink::new(
            "ve-web",
            Ipv4Addr::new(10, 0, 1, 1),
            "10.0.1.0/28".parse().unwrap(),
        );
        assert_eq!(link.zone, None);
        assert_eq!(
            answer(&link, &query("_gateway.", RecordType::A)).1,
            vec!["10.0.1.1".to_owned()]
        );
        assert_eq!(
            decide(&link, &names(), &query("web.", RecordType::A)),
            Decision::Forward
        );
    }

    #[test]
    fn malformed_queries_are_dropped() {
        let link = zone_link();
        let good = query("web.", RecordType::A);
        assert_eq!(decide(&link, &[], &[]), Decision::Drop("undecodable"));
        assert_eq!(
            decide(&link, &[], &good[..good.len() - 1]),
            Decision::Drop("undecodable")
        );
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(decide(&link, &[], &response), Decision::Drop("not a query"));
        let mut none = Message::query();
        none.metadata.id = 1;
        assert_eq!(
            decide(&link, &[], &none.to_vec().unwrap()),
            Decision::Drop("not exactly one question")
        );
    }

    #[test]
    fn upstream_files_are_reread_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let (resolv, resolved) = (dir.path().join("resolv"), dir.path().join("resolved"));
        std::fs::write(&resolv, "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(&resolved, "nameserver 192.0.2.1\n").unwrap();
        let up = Upstreams {
            config: DnsConfig {
                resolv_conf: resolv.clone(),
                resolved_conf: resolved.clone(),
                servers: Vec::new(),
            },
            cache: StdMutex::new(Cached {
                checked: None,
                stamps: [None, None],
                servers: Arc::from(Vec::new()),
            }),
        };
        let addr = |a: &str| -> SocketAddr { (a.parse::<IpAddr>().unwrap(), PORT).into() };
        assert_eq!(*up.current(), [addr("192.0.2.1")]);
        // Changed, with a later modification time: read again once the check is due.
        std::fs::write(&resolved, "nameserver 192.0.2.2\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&resolved)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            *up.current(),
            [addr("192.0.2.1")],
            "checked at most once a second"
        );
        lock(&up.cache).checked = None;
        assert_eq!(*up.current(), [addr("192.0.2.2")]);
        // The host's file now names a real server: resolved's file no longer matters.
        std::fs::write(&resolv, "nameserver 198.51.100.1\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&resolv)
            .unwrap()
            .set_modified(later)
            .unwrap();
        lock(&up.cache).checked = None;
        assert_eq!(*up.current(), [addr("198.51.100.1")]);
    }

    #[test]
    fn upstreams_skip_the_resolved_stub() {
        let stub =
            "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let resolved = "nameserver 203.0.113.1\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\n";
        let ips = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            upstreams(stub, Some(resolved)),
            ips(&["203.0.113.1", "2001:db8::1"])
        );
        // A real server beside the stub is used as it is; so is a local resolver.
        let mixed = "nameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            upstreams(mixed, Some(resolved)),
            ips(&["127.0.0.53", "192.0.2.1"])
        );
        assert_eq!(
            upstreams("nameserver 127.0.0.1\n", None),
            ips(&["127.0.0.1"])
        );
        // No resolved file: the stub is all there is.
        assert_eq!(upstreams(stub, None), ips(&["127.0.0.53"]));
        assert_eq!(
            upstreams("", Some(resolved)),
            ips(&["203.0.113.1", "2001:db8::1"])
        );
    }
}
