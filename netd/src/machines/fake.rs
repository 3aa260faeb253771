//! Recording fakes of the seams (in the style of `nat::FakeNft`), so the machine logic —
//! rollback, EEXIST, adoption, port conflicts, zone lifecycles — is tested in milliseconds
//! without root: links as a table of names, processes as pipes (a pidfd is the read end of a
//! pipe whose write end "exits" the process), leases as a map, nft as a shared `FakeNft`.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnetwork::{Ipv4Network, Ipv6Network};
use nat::{AsyncNft, FakeNft, Nft};
use nftables::schema::Nftables;

use crate::api::Mac;
use crate::dhcp_glue::{DhcpError, DhcpLink};
use crate::procfs::NetnsFdError;
use crate::rtnl::RtnlError;

use super::system::{Ipv6Services, Leases, LinkResult, Links, Procs, System};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fakes, as one [`System`].
pub struct Fake;

impl System for Fake {
    type Links = FakeLinks;
    type Procs = FakeProcs;
    type Leases = FakeLeases;
    type Nft = SharedNft;
    type Ipv6 = FakeIpv6;
}

/// Router advertisements and `[::1]` relays as lists of what runs.
#[derive(Clone, Debug, Default)]
pub struct FakeIpv6 {
    state: Arc<Mutex<Ipv6State>>,
}

#[derive(Debug, Default)]
struct Ipv6State {
    adverts: BTreeMap<String, crate::ra::RaLink>,
    relays: Vec<(crate::api::PortSpec, std::net::IpAddr)>,
    /// The next relay fails (a host service has the port on ::1).
    fail_relay: bool,
}

impl FakeIpv6 {
    /// The links advertised on, with what they advertise.
    pub fn adverts(&self) -> Vec<crate::ra::RaLink> {
        lock(&self.state).adverts.values().cloned().collect()
    }

    /// The next relay fails with EADDRINUSE.
    pub fn fail_next_relay(&self) {
        lock(&self.state).fail_relay = true;
    }

    /// The relayed specs and their targets.
    pub fn relays(&self) -> Vec<(crate::api::PortSpec, std::net::IpAddr)> {
        lock(&self.state).relays.clone()
    }
}

impl Ipv6Services for FakeIpv6 {
    fn advertise(&self, link: &crate::ra::RaLink) -> io::Result<()> {
        lock(&self.state)
            .adverts
            .insert(link.ifname.clone(), link.clone());
        Ok(())
    }

    fn stop_advertising(&self, ifname: &str) {
        lock(&self.state).adverts.remove(ifname);
    }

    fn relay(&self, spec: &crate::api::PortSpec, target: std::net::IpAddr) -> io::Result<()> {
        let mut s = lock(&self.state);
        if std::mem::take(&mut s.fail_relay) {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        s.relays.push((spec.clone(), target));
        Ok(())
    }

    fn stop_relay(&self, spec: &crate::api::PortSpec) {
        lock(&self.state).relays.retain(|(s, _)| s != spec);
    }
}

/// A link of the fake host.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeLink {
    pub index: u32,
    pub bridge: bool,
    pub master: Option<u32>,
    pub up: bool,
    pub isolated: bool,
    pub addrs: Vec<Ipv4Network>,
    pub addrs6: Vec<Ipv6Network>,
    pub altname: Option<String>,
    pub marked: bool,
}

#[derive(Debug, Default)]
struct LinksState {
    links: BTreeMap<String, FakeLink>,
    next: u32,
    calls: Vec<String>,
    /// Operation name → errno of its next call.
    fail: BTreeMap<String, i32>,
}

/// Links as a table of names; every call recorded as its `ip` command's words.
#[derive(Clone, Debug, Default)]
pub struct FakeLinks {
    state: Arc<Mutex<LinksState>>,
    /// Where per-link sysctl files are made for new links (the firewall sets
    /// `route_localnet`).
    sysctl_root: Option<PathBuf>,
}

impl FakeLinks {
    pub fn new(sysctl_root: PathBuf) -> Self {
        Self {
            state: Arc::default(),
            sysctl_root: Some(sysctl_root),
        }
    }

    /// The next call of `op` (e.g. "add_address") fails with `errno`.
    pub fn fail_next(&self, op: &str, errno: i32) {
        lock(&self.state).fail.insert(op.to_owned(), errno);
    }

    /// A link that exists on the host already (someone else's, or one we made earlier).
    pub fn put(&self, name: &str, bridge: bool, marked: bool) -> u32 {
        Self::insert(&mut lock(&self.state), name, bridge, marked)
    }

    fn insert(s: &mut LinksState, name: &str, bridge: bool, marked: bool) -> u32 {
        s.next += 1;
        let index = s.next;
        s.links.insert(
            name.to_owned(),
            FakeLink {
                index,
                bridge,
                master: None,
                up: false,
                isolated: false,
                addrs: Vec::new(),
                addrs6: Vec::new(),
                altname: None,
                marked,
            },
        );
        index
    }

    pub fn link(&self, name: &str) -> Option<FakeLink> {
        lock(&self.state).links.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        lock(&self.state).links.keys().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    fn call(&self, op: &str, object: &str) -> LinkResult<MutexGuard<'_, LinksState>> {
        let mut s = lock(&self.state);
        s.calls.push(format!("{op} {object}"));
        if let Some(errno) = s.fail.remove(op) {
            return Err(RtnlError {
                step: "fake",
                object: object.to_owned(),
                errno: Some(errno),
                reason: io::Error::from_raw_os_error(errno).to_string(),
            });
        }
        Ok(s)
    }

    fn create(&self, op: &str, name: &str, bridge: bool) -> LinkResult<u32> {
        let mut s = self.call(op, name)?;
        if s.links.contains_key(name) {
            return Err(RtnlError {
                step: "fake",
                object: name.to_owned(),
                errno: Some(libc::EEXIST),
                reason: "File exists".into(),
            });
        }
        let index = Self::insert(&mut s, name, bridge, true);
        if let Some(root) = &self.sysctl_root {
            let dir = root.join("net/ipv4/conf").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("route_localnet"), "0").unwrap();
        }
        Ok(index)
    }

    fn by_index(s: &mut LinksState, index: u32) -> LinkResult<&mut FakeLink> {
        s.links
            .values_mut()
            .find(|l| l.index == index)
            .ok_or_else(|| RtnlError {
                step: "fake",
                object: index.to_string(),
                errno: Some(libc::ENODEV),
                reason: "No such device".into(),
            })
    }
}

impl Links for FakeLinks {
    async fn ipv4_in_use(&self) -> LinkResult<Vec<Ipv4Network>> {
        let s = self.call("ipv4_in_use", "-")?;
        Ok(s.links.values().flat_map(|l| l.addrs.clone()).collect())
    }

    async fn add_veth(
        &self,
        host: &str,
        _host_mac: Mac,
        _peer: &str,
        _peer_mac: Mac,
        _netns: BorrowedFd<'_>,
    ) -> LinkResult<u32> {
        self.create("add_veth", host, false)
    }

    async fn add_bridge(&self, name: &str) -> LinkResult<u32> {
        self.create("add_bridge", name, true)
    }

    async fn add_altname(&self, index: u32, name: &str) -> LinkResult<()> {
        let mut s = self.call("add_altname", name)?;
        Self::by_index(&mut s, index)?.altname = Some(name.to_owned());
        Ok(())
    }

    async fn add_address(&self, index: u32, net: Ipv4Network) -> LinkResult<()> {
        let mut s = self.call("add_address", &net.to_string())?;
        Self::by_index(&mut s, index)?.addrs.push(net);
        Ok(())
    }

    async fn add_address6(&self, index: u32, _ifname: &str, net: Ipv6Network) -> LinkResult<()> {
        let mut s = self.call("add_address6", &net.to_string())?;
        Self::by_index(&mut s, index)?.addrs6.push(net);
        Ok(())
    }

    async fn set_up(&self, index: u32) -> LinkResult<()> {
        let mut s = self.call("set_up", &index.to_string())?;
        Self::by_index(&mut s, index)?.up = true;
        Ok(())
    }

    async fn set_master_up(&self, index: u32, bridge: u32) -> LinkResult<()> {
        let mut s = self.call("set_master_up", &format!("{index} {bridge}"))?;
        let l = Self::by_index(&mut s, index)?;
        l.master = Some(bridge);
        l.up = true;
        Ok(())
    }

    async fn set_port_isolated(&self, index: u32) -> LinkResult<()> {
        let mut s = self.call("set_port_isolated", &index.to_string())?;
        Self::by_index(&mut s, index)?.isolated = true;
        Ok(())
    }

    async fn lookup(&self, name: &str) -> LinkResult<Option<(u32, bool)>> {
        let s = self.call("lookup", name)?;
        Ok(s.links.get(name).map(|l| (l.index, l.bridge)))
    }

    async fn del_link(&self, name: &str) -> LinkResult<()> {
        let mut s = self.call("del_link", name)?;
        s.links.remove(name);
        Ok(())
    }

    async fn marked_links(&self) -> LinkResult<Vec<String>> {
        let s = self.call("marked_links", "-")?;
        Ok(s.links
            .iter()
            .filter(|(_, l)| l.marked)
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn add_macvlan(
        &self,
        name: &str,
        _parent: u32,
        _mac: Mac,
        _netns: BorrowedFd<'_>,
    ) -> LinkResult<()> {
        self.call("add_macvlan", name).map(drop)
    }

    async fn add_ipvlan(&self, name: &str, _parent: u32, _netns: BorrowedFd<'_>) -> LinkResult<()> {
        self.call("add_ipvlan", name).map(drop)
    }

    async fn move_link(&self, _index: u32, _netns: BorrowedFd<'_>, name: &str) -> LinkResult<()> {
        self.call("move_link", name).map(drop)
    }

    async fn rename(&self, _index: u32, name: &str) -> LinkResult<()> {
        self.call("rename", name).map(drop)
    }
}

/// A process of the fake host.
struct FakeProc {
    start_time: u64,
    netns: (u64, u64),
    /// Dropping it makes the pidfds readable: the process exited.
    alive: Option<OwnedFd>,
    exited: OwnedFd,
}

#[derive(Default)]
struct ProcsState {
    procs: BTreeMap<u32, FakeProc>,
    signals: Vec<(u32, i32)>,
}

/// Processes as pipes; a container's "network namespace" is a pipe of its own, identified by
/// its inode.
#[derive(Clone, Default)]
pub struct FakeProcs {
    state: Arc<Mutex<ProcsState>>,
}

fn fd_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion)]
    Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
}

impl FakeProcs {
    /// Starts process `pid` in a network namespace of its own; returns that namespace's fd.
    pub fn spawn(&self, pid: u32, start_time: u64) -> OwnedFd {
        let (ns_r, _ns_w) = nix::unistd::pipe().unwrap();
        let (exited, alive) = nix::unistd::pipe().unwrap();
        let netns = fd_id(ns_r.as_fd()).unwrap();
        lock(&self.state).procs.insert(
            pid,
            FakeProc {
                start_time,
                netns,
                alive: Some(alive),
                exited,
            },
        );
        ns_r
    }

    /// Process `pid` exits: its pidfds become readable and it is gone from `/proc`.
    pub fn exit(&self, pid: u32) {
        if let Some(p) = lock(&self.state).procs.get_mut(&pid) {
            p.alive = None;
            p.start_time = u64::MAX;
        }
    }

    pub fn signals(&self) -> Vec<(u32, i32)> {
        lock(&self.state).signals.clone()
    }

    fn get<T>(&self, pid: u32, f: impl FnOnce(&FakeProc) -> T) -> io::Result<T> {
        lock(&self.state)
            .procs
            .get(&pid)
            .filter(|p| p.alive.is_some())
            .map(f)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
    }
}

impl Procs for FakeProcs {
    fn check_netns(&self, _fd: BorrowedFd<'_>) -> Result<(), NetnsFdError> {
        Ok(())
    }

    fn ns_id(&self, fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
        fd_id(fd)
    }

    fn pid_netns_id(&self, pid: u32) -> io::Result<(u64, u64)> {
        self.get(pid, |p| p.netns)
    }

    fn own_netns_id(&self) -> io::Result<(u64, u64)> {
        Ok((0, 0))
    }

    fn start_time(&self, pid: u32) -> io::Result<u64> {
        self.get(pid, |p| p.start_time)
    }

    fn pidfd(&self, pid: u32) -> io::Result<OwnedFd> {
        self.get(pid, |p| p.exited.try_clone())?
    }

    fn signal(&self, pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
        let id = fd_id(pidfd.as_fd())?;
        let mut s = lock(&self.state);
        let pid = s
            .procs
            .iter()
            .find(|(_, p)| fd_id(p.exited.as_fd()).ok() == Some(id))
            .map(|(pid, _)| *pid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        s.signals.push((pid, signal));
        Ok(())
    }

    fn open_netns(&self, _pid: u32) -> io::Result<OwnedFd> {
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
}

#[derive(Debug, Default)]
struct LeasesState {
    /// Served links: ifindex → (ifname, subnet, server).
    served: BTreeMap<u32, (String, Ipv4Network, Ipv4Addr)>,
    leases: BTreeMap<(u32, [u8; 6]), Ipv4Addr>,
    fail_serve: bool,
    /// The next `record` finds its address taken by another client (a DHCP client won the
    /// race between the look and the lease).
    steal_next: bool,
}

/// The DHCP service as a map of leases.
#[derive(Clone, Debug, Default)]
pub struct FakeLeases {
    state: Arc<Mutex<LeasesState>>,
}

impl FakeLeases {
    pub fn fail_next_serve(&self) {
        lock(&self.state).fail_serve = true;
    }

    pub fn served(&self) -> Vec<String> {
        lock(&self.state)
            .served
            .values()
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    /// The next recorded address is taken by another client just before.
    pub fn steal_next_record(&self) {
        lock(&self.state).steal_next = true;
    }
}

impl Leases for FakeLeases {
    async fn serve(&self, link: &DhcpLink) -> Result<(), DhcpError> {
        let mut s = lock(&self.state);
        if std::mem::take(&mut s.fail_serve) {
            return Err(DhcpError::Config {
                ifname: link.ifname.clone(),
                reason: "refused by the fake".into(),
            });
        }
        s.served
            .insert(link.index, (link.ifname.clone(), link.subnet, link.server));
        if let Some((mac, addr)) = link.container {
            s.leases.insert((link.index, mac), addr);
        }
        Ok(())
    }

    async fn stop(&self, _ifname: &str, index: u32) {
        let mut s = lock(&self.state);
        s.served.remove(&index);
        s.leases.retain(|(i, _), _| *i != index);
    }

    fn pick(&self, index: u32, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let s = lock(&self.state);
        if let Some(a) = s.leases.get(&(index, mac)) {
            return Some(*a);
        }
        let (_, subnet, server) = s.served.get(&index)?;
        let taken: Vec<Ipv4Addr> = s
            .leases
            .iter()
            .filter(|((i, _), _)| *i == index)
            .map(|(_, a)| *a)
            .collect();
        dhcp::pick_address(*subnet, &dhcp::client_id_from_mac(mac), |a| {
            a != *server && !taken.contains(&a)
        })
    }

    async fn record(&self, index: u32, mac: [u8; 6], addr: Ipv4Addr, _hostname: &str) -> bool {
        let mut s = lock(&self.state);
        if std::mem::take(&mut s.steal_next) {
            s.leases.insert((index, [2, 0xff, 0, 0, 0, 1]), addr);
        }
        if s.leases
            .iter()
            .any(|((i, m), a)| *i == index && *a == addr && *m != mac)
        {
            return false;
        }
        s.leases.insert((index, mac), addr);
        true
    }

    fn release(&self, index: u32, mac: [u8; 6]) {
        lock(&self.state).leases.remove(&(index, mac));
    }

    fn lease_count(&self, index: u32) -> usize {
        lock(&self.state)
            .leases
            .keys()
            .filter(|(i, _)| *i == index)
            .count()
    }

    async fn sync(&self) {}
}

/// A `FakeNft` shared between the daemon under test and the test.
#[derive(Clone, Debug, Default)]
pub struct SharedNft(pub Arc<Mutex<FakeNft>>);

impl SharedNft {
    pub fn get(&self) -> MutexGuard<'_, FakeNft> {
        lock(&self.0)
    }
}

impl AsyncNft for SharedNft {
    async fn apply_async(&mut self, batch: &Nftables<'_>) -> nat::Result<()> {
        lock(&self.0).apply(batch)
    }

    async fn list_table_async(&mut self) -> nat::Result<Option<Nftables<'static>>> {
        lock(&self.0).list_table()
    }

    async fn list_ruleset_async(&mut self) -> nat::Result<serde_json::Value> {
        lock(&self.0).list_ruleset()
    }

    fn generation(&mut self) -> Option<u32> {
        Some(lock(&self.0).generation())
    }

    async fn insert_xt(&mut self, rule: &nat::XtInsert) -> nat::Result<()> {
        lock(&self.0).apply_xt(rule)
    }
}
