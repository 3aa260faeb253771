//! The seams between the machine logic and the host: links (rtnetlink), process facts
//! (`/proc`, pidfds), the DHCP service, and nftables (`nat::AsyncNft`). The daemon runs on
//! [`Host`]; unit tests run the same logic on the recording fakes of `fake.rs`, without root.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use ipnetwork::Ipv4Network;

use crate::api::Mac;
use crate::dhcp_glue::{DhcpError, DhcpLink, DhcpService};
use crate::procfs::{self, NetnsFdError};
use crate::rtnl::{Rtnl, RtnlError};

/// Result of a link operation.
pub type LinkResult<T> = Result<T, RtnlError>;

/// The host's links as the machine logic uses them; each method is one `ip` command.
pub trait Links: Send + Sync + 'static {
    /// Every IPv4 network in use here (`ip -4 addr` + `ip -4 route show table all`).
    fn ipv4_in_use(&self) -> impl Future<Output = LinkResult<Vec<Ipv4Network>>> + Send;
    /// `ip link add HOST address HOST_MAC group rnet type veth peer name PEER address PEER_MAC
    /// netns FD`; returns the host end's ifindex.
    fn add_veth(
        &self,
        host: &str,
        host_mac: Mac,
        peer: &str,
        peer_mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> impl Future<Output = LinkResult<u32>> + Send;
    /// `ip link add NAME group rnet type bridge`; returns its ifindex.
    fn add_bridge(&self, name: &str) -> impl Future<Output = LinkResult<u32>> + Send;
    /// `ip link property add dev INDEX altname NAME`.
    fn add_altname(&self, index: u32, name: &str) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip addr add NET dev INDEX`.
    fn add_address(
        &self,
        index: u32,
        net: Ipv4Network,
    ) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip link set dev INDEX up`.
    fn set_up(&self, index: u32) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip link set dev INDEX master BRIDGE up`.
    fn set_master_up(&self, index: u32, bridge: u32)
    -> impl Future<Output = LinkResult<()>> + Send;
    /// `bridge link set dev INDEX isolated on`.
    fn set_port_isolated(&self, index: u32) -> impl Future<Output = LinkResult<()>> + Send;
    /// The ifindex of link `name` and whether it is a bridge, if it exists.
    fn lookup(&self, name: &str) -> impl Future<Output = LinkResult<Option<(u32, bool)>>> + Send;
    /// `ip link del NAME`; a link already gone counts as deleted.
    fn del_link(&self, name: &str) -> impl Future<Output = LinkResult<()>> + Send;
    /// The names of the links in rnet's link group: every link of ours.
    fn marked_links(&self) -> impl Future<Output = LinkResult<Vec<String>>> + Send;
    /// `ip link add NAME link PARENT address MAC netns FD type macvlan mode bridge`.
    fn add_macvlan(
        &self,
        name: &str,
        parent: u32,
        mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip link add NAME link PARENT netns FD type ipvlan mode l2`.
    fn add_ipvlan(
        &self,
        name: &str,
        parent: u32,
        netns: BorrowedFd<'_>,
    ) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip link set dev INDEX netns FD name NAME`.
    fn move_link(
        &self,
        index: u32,
        netns: BorrowedFd<'_>,
        name: &str,
    ) -> impl Future<Output = LinkResult<()>> + Send;
    /// `ip link set dev INDEX name NAME`.
    fn rename(&self, index: u32, name: &str) -> impl Future<Output = LinkResult<()>> + Send;
}

impl Links for Rtnl {
    async fn ipv4_in_use(&self) -> LinkResult<Vec<Ipv4Network>> {
        Rtnl::ipv4_in_use(self).await
    }

    async fn add_veth(
        &self,
        host: &str,
        host_mac: Mac,
        peer: &str,
        peer_mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> LinkResult<u32> {
        Rtnl::add_veth(self, host, host_mac, peer, peer_mac, netns).await
    }

    async fn add_bridge(&self, name: &str) -> LinkResult<u32> {
        Rtnl::add_bridge(self, name).await
    }

    async fn add_altname(&self, index: u32, name: &str) -> LinkResult<()> {
        Rtnl::add_altname(self, index, name).await
    }

    async fn add_address(&self, index: u32, net: Ipv4Network) -> LinkResult<()> {
        Rtnl::add_address(self, index, net).await
    }

    async fn set_up(&self, index: u32) -> LinkResult<()> {
        Rtnl::set_up(self, index).await
    }

    async fn set_master_up(&self, index: u32, bridge: u32) -> LinkResult<()> {
        Rtnl::set_master_up(self, index, bridge).await
    }

    async fn set_port_isolated(&self, index: u32) -> LinkResult<()> {
        Rtnl::set_port_isolated(self, index).await
    }

    async fn lookup(&self, name: &str) -> LinkResult<Option<(u32, bool)>> {
        Ok(self
            .link(name)
            .await?
            .map(|m| (m.header.index, Rtnl::is_bridge(&m))))
    }

    async fn del_link(&self, name: &str) -> LinkResult<()> {
        Rtnl::del_link(self, name).await
    }

    async fn marked_links(&self) -> LinkResult<Vec<String>> {
        Rtnl::marked_links(self).await
    }

    async fn add_macvlan(
        &self,
        name: &str,
        parent: u32,
        mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> LinkResult<()> {
        Rtnl::add_macvlan(self, name, parent, mac, netns).await
    }

    async fn add_ipvlan(&self, name: &str, parent: u32, netns: BorrowedFd<'_>) -> LinkResult<()> {
        Rtnl::add_ipvlan(self, name, parent, netns).await
    }

    async fn move_link(&self, index: u32, netns: BorrowedFd<'_>, name: &str) -> LinkResult<()> {
        Rtnl::move_link(self, index, netns, name).await
    }

    async fn rename(&self, index: u32, name: &str) -> LinkResult<()> {
        Rtnl::rename(self, index, name).await
    }
}

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
}

/// The real host: rtnetlink, `/proc`, the DHCP service, the `nft` program.
#[derive(Debug)]
pub struct Host;

impl System for Host {
    type Links = Rtnl;
    type Procs = HostProcs;
    type Leases = Arc<DhcpService>;
    type Nft = nat::NftCli;
}
