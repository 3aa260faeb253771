//! The data path of a zone across hosts, through rtnetlink: the zone's VXLAN device and, per
//! remote host, the route, permanent neighbour entry and FDB entry of flannel's "vxlan"
//! backend. [`Vtep`] is the seam (one method per `ip`/`bridge` command); [`Rtnl`] the real one,
//! [`FakeVtep`] the recording fake of the unit tests.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use rtnetlink::{LinkVxlan, RouteMessageBuilder};

use super::keys::Peer;
use crate::api::Mac;
use crate::rtnl::{LINK_GROUP, LinkResult, Rtnl, RtnlError};

/// The IANA VXLAN port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// The VXLAN device of zone `zone`: `vx-ZONE` (zone names are at most 12 characters).
pub fn device_name(zone: &crate::api::ZoneName) -> String {
    format!("vx-{zone}")
}

/// The kernel side of a zone's VXLAN data path.
pub trait Vtep: Send + Sync + 'static {
    /// `ip link add NAME address MAC group rnet type vxlan id VNI local LOCAL dstport 4789
    /// nolearning`; returns its ifindex and whether it was created. An existing one is kept
    /// as it is (after a restart its entries are the data path).
    fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        mac: Mac,
    ) -> impl Future<Output = LinkResult<(u32, bool)>> + Send;
    /// `bridge fdb replace MAC dev INDEX dst UNDERLAY self permanent`, `ip neigh replace
    /// NEXT_HOP lladdr MAC dev INDEX nud permanent`, `ip route replace SLICE via NEXT_HOP dev
    /// INDEX onlink`.
    fn add_peer(&self, index: u32, peer: &Peer) -> impl Future<Output = LinkResult<()>> + Send;
    /// The reverse of [`Vtep::add_peer`]; entries already gone count as removed.
    fn del_peer(&self, index: u32, peer: &Peer) -> impl Future<Output = LinkResult<()>> + Send;
}

impl Vtep for Rtnl {
    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        mac: Mac,
    ) -> LinkResult<(u32, bool)> {
        if let Some(index) = self.link_index(name).await? {
            return Ok((index, false));
        }
        let msg = LinkVxlan::new(name, vni)
            .local(local)
            .port(VXLAN_PORT)
            .learning(false)
            .build();
        let mut msg = msg;
        msg.attributes.push(LinkAttribute::Group(LINK_GROUP));
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| RtnlError::new("creating vxlan", name, &e))?;
        let index = self.link_index(name).await?.ok_or_else(|| RtnlError {
            step: "finding new vxlan",
            object: name.to_owned(),
            errno: Some(libc::ENODEV),
            reason: "it vanished right after creation".into(),
        })?;
        Ok((index, true))
    }

    async fn add_peer(&self, index: u32, peer: &Peer) -> LinkResult<()> {
        let object = || format!("{} on {index}", peer.slice);
        self.handle()
            .neighbours()
            .add_bridge(index, &peer.mac.0)
            .destination(IpAddr::V4(peer.underlay))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| RtnlError::new("adding fdb entry", object(), &e))?;
        self.handle()
            .neighbours()
            .add(index, IpAddr::V4(peer.next_hop()))
            .link_layer_address(&peer.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| RtnlError::new("adding neighbour", object(), &e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.slice.network(), peer.slice.prefix())
            .gateway(peer.next_hop())
            .output_interface(index)
            .onlink()
            .build();
        self.handle()
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| RtnlError::new("adding route", object(), &e))
    }

    async fn del_peer(&self, index: u32, peer: &Peer) -> LinkResult<()> {
        let object = || format!("{} on {index}", peer.slice);
        let gone = |r: Result<(), rtnetlink::Error>, step| match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = RtnlError::new(step, object(), &e);
                if err.is_gone() || err.errno == Some(libc::ESRCH) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        };
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.slice.network(), peer.slice.prefix())
            .output_interface(index)
            .build();
        gone(
            self.handle().route().del(route).execute().await,
            "deleting route",
        )?;
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        neigh.header.ifindex = index;
        neigh
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                peer.next_hop(),
            )));
        gone(
            self.handle().neighbours().del(neigh).execute().await,
            "deleting neighbour",
        )?;
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.header.ifindex = index;
        fdb.header.flags = NeighbourFlags::Own;
        fdb.header.kind = RouteType::Unspec;
        fdb.attributes
            .push(NeighbourAttribute::LinkLayerAddress(peer.mac.0.to_vec()));
        fdb.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                peer.underlay,
            )));
        gone(
            self.handle().neighbours().del(fdb).execute().await,
            "deleting fdb entry",
        )
    }
}

impl Rtnl {
    /// The first IPv4 address of link `name` (`--underlay IF`).
    pub async fn first_ipv4(&self, name: &str) -> LinkResult<Option<Ipv4Addr>> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(None);
        };
        let mut addrs = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(|e| RtnlError::new("listing addresses of", name, &e))?
        {
            for a in &msg.attributes {
                if let netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(v4)) = a
                {
                    return Ok(Some(*v4));
                }
            }
        }
        Ok(None)
    }
}

/// One call recorded by [`FakeVtep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VtepCall {
    /// [`Vtep::add_vxlan`].
    AddVxlan(String, u32, Ipv4Addr),
    /// [`Vtep::add_peer`].
    AddPeer(u32, Peer),
    /// [`Vtep::del_peer`].
    DelPeer(u32, Peer),
}

/// A recording fake of [`Vtep`]; `fail_peer` makes adding that slice's peer fail.
#[derive(Debug, Default)]
pub struct FakeVtep {
    /// Every call, in order.
    pub calls: Mutex<Vec<VtepCall>>,
    /// A slice whose [`Vtep::add_peer`] fails (EIO).
    pub fail_peer: Mutex<Option<ipnetwork::Ipv4Network>>,
}

impl FakeVtep {
    /// The calls so far (and forgets them).
    pub fn take(&self) -> Vec<VtepCall> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, call: VtepCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

impl Vtep for FakeVtep {
    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        _mac: Mac,
    ) -> LinkResult<(u32, bool)> {
        self.record(VtepCall::AddVxlan(name.to_owned(), vni, local));
        Ok((77, true))
    }

    async fn add_peer(&self, index: u32, peer: &Peer) -> LinkResult<()> {
        self.record(VtepCall::AddPeer(index, *peer));
        if *self.fail_peer.lock().unwrap_or_else(|p| p.into_inner()) == Some(peer.slice) {
            return Err(RtnlError {
                step: "adding fdb entry",
                object: peer.slice.to_string(),
                errno: Some(libc::EIO),
                reason: "fake failure".into(),
            });
        }
        Ok(())
    }

    async fn del_peer(&self, index: u32, peer: &Peer) -> LinkResult<()> {
        self.record(VtepCall::DelPeer(index, *peer));
        Ok(())
    }
}
