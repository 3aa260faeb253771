//! The kernel boundary for links, addresses and routes (rtnetlink). Each method is one request,
//! named after the `ip` command it replaces.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoBridgePort, InfoKind, LinkInfo};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::link::{IpVlanMode, MacVlanMode};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec,
    LinkVeth,
};

use crate::api::Mac;
use crate::inuse::{self, InUse, Watch};

/// A failed netlink request: which step, on which object, and the kernel's reason.
#[derive(Debug, thiserror::Error)]
#[error("{step} {object}: {reason}")]
pub struct RtnlError {
    /// What was being done (e.g. "creating veth").
    pub step: &'static str,
    /// What it was done to (e.g. "ve-web:host0").
    pub object: String,
    /// The kernel's error number, when it sent one.
    pub errno: Option<i32>,
    /// Human-readable cause.
    pub reason: String,
}

impl RtnlError {
    pub(crate) fn new(
        step: &'static str,
        object: impl Into<String>,
        err: &rtnetlink::Error,
    ) -> Self {
        let (errno, reason) = match err {
            rtnetlink::Error::NetlinkError(m) => (Some(-m.raw_code()), m.to_io().to_string()),
            other => (None, other.to_string()),
        };
        Self {
            step,
            object: object.into(),
            errno,
            reason,
        }
    }

    /// Whether the kernel said "no such device" (the object is already gone).
    pub fn is_gone(&self) -> bool {
        matches!(self.errno, Some(libc::ENODEV) | Some(libc::ENOENT))
    }
}

/// The link group rnetd puts every host-side link it creates in (`ip link show group
/// 1919837556`, "rnet" in ASCII). Set in the request that creates the link, so there is no
/// moment in which a link of ours exists unmarked: after a crash, a marked link that no saved
/// state explains is known to be ours and stale, while links with the same names made by
/// someone else (systemd-nspawn also names links `ve-`/`vb-`/`vz-`) are left alone. Other
/// firewalls' chains let our traffic through by this group too (`iifgroup`/`-m devgroup`,
/// [`nat::plan_host`]), with rules that do not change as links come and go.
pub const LINK_GROUP: u32 = 0x726e_6574;

/// Result of rtnetlink calls.
pub type Result<T> = std::result::Result<T, RtnlError>;

/// Result of a link operation (the name the seams use).
pub type LinkResult<T> = Result<T>;

/// The host's links as the machine logic uses them; each method is one `ip` command. [`Rtnl`]
/// is the real one; the machine logic's unit tests use a recording fake.
pub trait Links: Send + Sync + 'static {
    /// Every IPv4 network in use here (`ip -4 addr` + `ip -4 route show table all`), each once;
    /// a network inside another one listed may be left out (it overlaps nothing its cover does
    /// not). [`Rtnl`] answers from the map kept from notifications when it follows them
    /// ([`Rtnl::follow_in_use`]), else from a dump.
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
    /// `sysctl net.ipv6.conf.IFNAME.accept_dad=0; ip -6 addr add NET dev INDEX nodad`: no
    /// duplicate address detection on a link of ours, so its link-local address (the source of
    /// router advertisements) and `NET` are usable at once.
    fn add_address6(
        &self,
        index: u32,
        ifname: &str,
        net: Ipv6Network,
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

/// An rtnetlink connection in the daemon's network namespace.
#[derive(Clone, Debug)]
pub struct Rtnl {
    handle: Handle,
    /// The networks in use, followed from notifications ([`Rtnl::follow_in_use`]); without
    /// it (or while it is being rebuilt) [`Links::ipv4_in_use`] dumps.
    in_use: Option<Arc<Watch>>,
}

impl Rtnl {
    /// Opens a connection; its I/O task runs on the current tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            in_use: None,
        })
    }

    /// Keeps the host's IPv4 addresses and routes from rtnetlink notifications from now on,
    /// so that [`Links::ipv4_in_use`] answers without a dump (`inuse.rs`).
    pub fn follow_in_use(mut self) -> Self {
        self.in_use = Some(inuse::watch());
        self
    }

    /// The rtnetlink handle, for the requests of other modules (`distributed::vxlan`).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `RTM_NEWLINK` with create/exclusive flags.
    async fn link_add(
        &self,
        msg: LinkMessage,
        step: &'static str,
        object: impl Into<String>,
    ) -> Result<()> {
        let object = object.into();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| RtnlError::new(step, object, &e))
    }

    /// `RTM_SETLINK`.
    async fn link_set(
        &self,
        msg: LinkMessage,
        step: &'static str,
        object: impl Into<String>,
    ) -> Result<()> {
        let object = object.into();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| RtnlError::new(step, object, &e))
    }

    /// Whether the link is a bridge.
    pub fn is_bridge(msg: &LinkMessage) -> bool {
        msg.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos
                .iter()
                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
            _ => false,
        })
    }

    /// The ifindex of the link called `name` (or with that altname), if any.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name).await?.map(|m| m.header.index))
    }

    /// The link called `name`, if any (`ip link show NAME`).
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) => {
                let err = RtnlError::new("looking up link", name, &e);
                if err.is_gone() { Ok(None) } else { Err(err) }
            }
        }
    }
}

impl Links for Rtnl {
    async fn ipv4_in_use(&self) -> Result<Vec<Ipv4Network>> {
        if let Some(nets) = self.in_use.as_ref().and_then(|w| w.networks()) {
            return Ok(nets);
        }
        let mut map = InUse::default();
        inuse::dump(&self.handle, &mut map).await?;
        Ok(map.networks())
    }

    async fn add_veth(
        &self,
        host: &str,
        host_mac: Mac,
        peer: &str,
        peer_mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> Result<u32> {
        // One queue each way on both ends, asked for rather than left to the kernel: a veth
        // made without `IFLA_NUM_TX_QUEUES` and `IFLA_NUM_RX_QUEUES` gets one queue per CPU
        // and is then cut to one (`veth_init_queues`), and each cut of a registered device
        // waits for an expedited RCU grace period under the RTNL lock (`synchronize_net`).
        // Same link in the end; half the creation time here (docs/benchmarks.md, item 27).
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .address(peer_mac.0.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .build();
        let msg = LinkVeth::new(host, peer)
            .address(host_mac.0.to_vec())
            .append_extra_attribute(LinkAttribute::Group(LINK_GROUP))
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let object = format!("{host}:{peer}");
        self.link_add(msg, "creating veth", &object).await?;
        self.link_index(host).await?.ok_or_else(|| RtnlError {
            step: "finding new veth",
            object,
            errno: Some(libc::ENODEV),
            reason: "it vanished right after creation".into(),
        })
    }

    async fn add_bridge(&self, name: &str) -> Result<u32> {
        self.handle
            .link()
            .add(
                LinkBridge::new(name)
                    .append_extra_attribute(LinkAttribute::Group(LINK_GROUP))
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| RtnlError::new("creating bridge", name, &e))?;
        self.link_index(name).await?.ok_or_else(|| RtnlError {
            step: "finding new bridge",
            object: name.to_owned(),
            errno: Some(libc::ENODEV),
            reason: "it vanished right after creation".into(),
        })
    }

    async fn set_master_up(&self, index: u32, bridge: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge)
            .up()
            .build();
        self.link_set(msg, "attaching to bridge", index.to_string())
            .await
    }

    async fn set_port_isolated(&self, index: u32) -> Result<()> {
        let msg = LinkBridgePort::new(index)
            .append_info_data(InfoBridgePort::Isolated(true))
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| RtnlError::new("isolating bridge port", index.to_string(), &e))
    }

    async fn add_macvlan(
        &self,
        name: &str,
        parent: u32,
        mac: Mac,
        netns: BorrowedFd<'_>,
    ) -> Result<()> {
        let msg = LinkMacVlan::new(name, parent, MacVlanMode::Bridge)
            .address(mac.0.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.link_add(msg, "creating macvlan", name).await
    }

    async fn add_ipvlan(&self, name: &str, parent: u32, netns: BorrowedFd<'_>) -> Result<()> {
        let msg = LinkIpVlan::new(name, parent, IpVlanMode::L2)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.link_add(msg, "creating ipvlan", name).await
    }

    async fn move_link(&self, index: u32, netns: BorrowedFd<'_>, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .name(name.to_owned())
            .build();
        self.link_set(msg, "moving link", name).await
    }

    async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .name(name.to_owned())
            .build();
        self.link_set(msg, "renaming link to", name).await
    }

    async fn add_altname(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .property_add(index)
            .alt_ifname(&[name])
            .execute()
            .await
            .map_err(|e| RtnlError::new("adding altname", name, &e))
    }

    async fn add_address(&self, index: u32, net: Ipv4Network) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(net.ip()), net.prefix())
            .execute()
            .await
            .map_err(|e| RtnlError::new("adding address", net.to_string(), &e))
    }

    async fn add_address6(&self, index: u32, ifname: &str, net: Ipv6Network) -> Result<()> {
        // The link's sysctl directory appears with the link; the path keeps its name whole.
        let knob = std::path::Path::new("/proc/sys/net/ipv6/conf")
            .join(ifname)
            .join("accept_dad");
        std::fs::write(&knob, "0").map_err(|e| RtnlError {
            step: "disabling duplicate address detection on",
            object: ifname.to_owned(),
            errno: e.raw_os_error(),
            reason: format!("{}: {e}", knob.display()),
        })?;
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V6(net.ip()), net.prefix());
        let msg = req.message_mut();
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute()
            .await
            .map_err(|e| RtnlError::new("adding address", net.to_string(), &e))
    }

    async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.link_set(msg, "setting up link", index.to_string())
            .await
    }

    async fn marked_links(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| RtnlError::new("listing", "links", &e))?
        {
            let ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Group(g) if *g == LINK_GROUP));
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let (true, Some(name)) = (ours, name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    async fn del_link(&self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        // Unregistering a device waits for RCU grace periods inside the request (tens of
        // milliseconds): on a socket of its own on a blocking thread, so that the daemon's
        // connection serves the other requests meanwhile.
        let deleted = tokio::task::spawn_blocking(move || {
            netlink_sync::BlockingRtnl::open().and_then(|mut nl| nl.del_link(index))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match deleted {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = RtnlError {
                    step: "deleting link",
                    object: name.to_owned(),
                    errno: e.raw_os_error(),
                    reason: e.to_string(),
                };
                if err.is_gone() { Ok(()) } else { Err(err) }
            }
        }
    }

    async fn lookup(&self, name: &str) -> Result<Option<(u32, bool)>> {
        Ok(self
            .link(name)
            .await?
            .map(|m| (m.header.index, Rtnl::is_bridge(&m))))
    }
}
