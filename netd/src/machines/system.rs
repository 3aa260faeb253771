//! The seams between the machine logic and the host: links (`Links`, declared beside its real
//! implementation in `rtnl.rs` and re-exported here), process facts (`/proc`, pidfds), the DHCP
//! service, and nftables (`nat::AsyncNft`). The daemon runs on
//! [`Host`]; unit tests run the same logic on the recording fakes of `fake.rs`, without root.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::api::PortSpec;
use crate::dhcp_glue::{DhcpError, DhcpLink, DhcpService};
use crate::procfs::{self, NetnsFdError};
use crate::ra::{RaLink, RaService};
use crate::relay6::Relays;
use crate::rtnl::Rtnl;
pub use crate::rtnl::{LinkResult, Links};

/// Facts about processes and namespaces (`/proc`, pidfds).
pub trait Procs: Send + Sync + 'static {
    /// Checks that `fd` is a network namespace.
    fn check_netns(&self, fd: BorrowedFd<'_>) -> Result<(), NetnsFdError>;
    /// The (device, inode) identity of the namespace `fd`.
    fn ns_id(&self, fd: BorrowedFd<'_>) -> io::Result<(u64, u64)>;
    /// The identity of the network namespace of process `pid`.
    fn pid_netns_id(&self, pid: u32) -> io::Result<(u64, u64)>;
    /// The identity of rnetd's own network namespace.
    fn own_netns_id(&self) -> io::Result<(u64, u64)>;
    /// The start time of process `pid` (field 22 of its stat), which tells a reused pid apart.
    fn start_time(&self, pid: u32) -> io::Result<u64>;
    /// A pidfd of process `pid`: readable when it exits.
    fn pidfd(&self, pid: u32) -> io::Result<OwnedFd>;
    /// Sends `signal` through a pidfd.
    fn signal(&self, pidfd: &OwnedFd, signal: i32) -> io::Result<()>;
    /// Opens the network namespace of process `pid` (to move interfaces back out of it).
    fn open_netns(&self, pid: u32) -> io::Result<OwnedFd>;
}

/// The real process facts, from `/proc` and pidfds.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostProcs;

impl Procs for HostProcs {
    fn check_netns(&self, fd: BorrowedFd<'_>) -> Result<(), NetnsFdError> {
        procfs::check_netns(fd)
    }

    fn ns_id(&self, fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
        procfs::ns_id(fd)
    }

    fn pid_netns_id(&self, pid: u32) -> io::Result<(u64, u64)> {
        procfs::pid_netns_id(pid)
    }

    fn own_netns_id(&self) -> io::Result<(u64, u64)> {
        procfs::pid_netns_id(std::process::id())
    }

    fn start_time(&self, pid: u32) -> io::Result<u64> {
        procfs::pid_start_time(pid)
    }

    fn pidfd(&self, pid: u32) -> io::Result<OwnedFd> {
        procfs::pidfd_open(pid)
    }

    fn signal(&self, pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
        procfs::pidfd_send_signal(pidfd, signal)
    }

    fn open_netns(&self, pid: u32) -> io::Result<OwnedFd> {
        std::fs::File::open(format!("/proc/{pid}/ns/net")).map(OwnedFd::from)
    }
}

/// The DHCP service as the machine logic uses it.
pub trait Leases: Send + Sync + 'static {
    /// Starts serving a link (loading its saved leases).
    fn serve(&self, link: &DhcpLink) -> impl Future<Output = Result<(), DhcpError>> + Send;
    /// Stops serving a link and forgets its leases.
    fn stop(&self, ifname: &str, index: u32) -> impl Future<Output = ()> + Send;
    /// The address the client with `mac` would get on a served link (its lease, or a free one
    /// picked as the server would), without recording anything.
    fn pick(&self, index: u32, mac: [u8; 6]) -> Option<Ipv4Addr>;
    /// Records that `mac`, machine `hostname`, holds `addr` (once on disk); false if another
    /// client holds it. The name is what the link's DNS forwarder answers for.
    fn record(
        &self,
        index: u32,
        mac: [u8; 6],
        addr: Ipv4Addr,
        hostname: &str,
    ) -> impl Future<Output = bool> + Send;
    /// Drops the lease of `mac`.
    fn release(&self, index: u32, mac: [u8; 6]);
    /// How many leases a link has.
    fn lease_count(&self, index: u32) -> usize;
    /// Waits until every lease change is on disk.
    fn sync(&self) -> impl Future<Output = ()> + Send;
}

impl Leases for Arc<DhcpService> {
    async fn serve(&self, link: &DhcpLink) -> Result<(), DhcpError> {
        self.add_link(link).await
    }

    async fn stop(&self, ifname: &str, index: u32) {
        self.remove_link(ifname, index).await;
    }

    fn pick(&self, index: u32, mac: [u8; 6]) -> Option<Ipv4Addr> {
        DhcpService::pick(self, index, mac)
    }

    async fn record(&self, index: u32, mac: [u8; 6], addr: Ipv4Addr, hostname: &str) -> bool {
        self.ensure(index, mac, addr, hostname).await
    }

    fn release(&self, index: u32, mac: [u8; 6]) {
        DhcpService::release(self, index, mac);
    }

    fn lease_count(&self, index: u32) -> usize {
        self.leases(index).len()
    }

    async fn sync(&self) {
        DhcpService::sync(self).await;
    }
}

/// The IPv6 services: router advertisements on a served link (`crate::ra`) and the `[::1]`
/// relays of published ports (`crate::relay6`).
pub trait Ipv6Services: Send + Sync + 'static {
    /// Starts sending router advertisements on a link (and answering its solicitations).
    fn advertise(&self, link: &RaLink) -> io::Result<()>;
    /// Stops them.
    fn stop_advertising(&self, ifname: &str);
    /// Relays the `[::1]` ports of `spec` to `target`.
    fn relay(&self, spec: &PortSpec, target: IpAddr) -> io::Result<()>;
    /// Stops the relays of `spec`.
    fn stop_relay(&self, spec: &PortSpec);
}

/// The real IPv6 services.
pub struct HostIpv6 {
    ra: RaService,
    relays: Relays,
}

impl HostIpv6 {
    /// Advertisements every `interval` (`MaxRtrAdvInterval`).
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            ra: RaService::new(interval),
            relays: Relays::new(),
        }
    }
}

impl Ipv6Services for HostIpv6 {
    fn advertise(&self, link: &RaLink) -> io::Result<()> {
        self.ra.start(link.clone())
    }

    fn stop_advertising(&self, ifname: &str) {
        self.ra.stop(ifname);
    }

    fn relay(&self, spec: &PortSpec, target: IpAddr) -> io::Result<()> {
        self.relays.start(spec, target)
    }

    fn stop_relay(&self, spec: &PortSpec) {
        self.relays.stop(spec);
    }
}

/// Everything the machine logic touches outside itself.
pub trait System: Send + Sync + 'static {
    /// Links.
    type Links: Links;
    /// Process facts.
    type Procs: Procs;
    /// The DHCP service.
    type Leases: Leases;
    /// nftables.
    type Nft: nat::AsyncNft + Clone + Send + Sync + 'static;
    /// Router advertisements and `[::1]` relays.
    type Ipv6: Ipv6Services;
}

/// The real host: rtnetlink, `/proc`, the DHCP service, the `nft` program.
#[derive(Debug)]
pub struct Host;

impl System for Host {
    type Links = Rtnl;
    type Procs = HostProcs;
    type Leases = Arc<DhcpService>;
    type Nft = nat::NftCli;
    type Ipv6 = HostIpv6;
}
