//! IPv6 of `host0`, in the container's namespace before the payload starts: the address rnetd
//! planned (the `/64` and the EUI-64 identifier of host0's MAC, what the kernel's SLAAC would
//! form from rnetd's router advertisements) without duplicate address detection, and the
//! default route via the gateway `PREFIX::1`. No round trip: the payload's first packet has
//! them. Router advertisements then keep the lifetimes fresh and give a booted container's own
//! network manager the same configuration.
//!
//! A machine rnetd gave no IPv6 (`rnet run --ipv6=no`, or `rnetd --ipv6=no`) gets IPv6 switched
//! off on `host0` (`disable_ipv6`), so a zone's advertisements do not configure it either. On
//! an admin's bridge (`--network-bridge`) the admin's network decides: nothing is changed.

use api::{Machine, NetworkSpec};
use netlink_sync::BlockingRtnl;

/// IPv6 of `host0` (ifindex `index`) before it is brought up: the planned address (or IPv6
/// switched off). Before, not after: once host0 is up, rnetd's router advertisement can arrive
/// first, the kernel's SLAAC then forms the same address with duplicate address detection, and
/// adding it again without detection does not end that (the kernel keeps the tentative flag):
/// for about a second the container had no usable IPv6 source, and its first connections were
/// lost.
pub fn address_host0(rtnl: &mut BlockingRtnl, index: u32, machine: &Machine) -> Result<(), String> {
    let ifname = machine.container_ifname.as_deref().unwrap_or("host0");
    let (Some(subnet), Some(addr), Some(_)) = (
        machine.subnet6,
        machine.container_address6,
        machine.host_address6,
    ) else {
        if matches!(machine.network, NetworkSpec::Bridge(_)) {
            return Ok(());
        }
        return disable(ifname);
    };
    rtnl.replace_address6(index, addr, subnet.prefix())
        .map_err(|e| format!("adding {addr}/{} to {ifname}: {e}", subnet.prefix()))
}

/// The IPv6 default route of `host0` via the gateway, once it is up.
pub fn route_host0(rtnl: &mut BlockingRtnl, index: u32, machine: &Machine) -> Result<(), String> {
    let (Some(_), Some(_), Some(gw)) = (
        machine.subnet6,
        machine.container_address6,
        machine.host_address6,
    ) else {
        return Ok(());
    };
    rtnl.replace_default_route6(index, gw)
        .map_err(|e| format!("adding the IPv6 default route via {gw}: {e}"))
}

/// `sysctl net.ipv6.conf.IFNAME.disable_ipv6=1` (in the calling process's network namespace);
/// nothing to do where the kernel has no IPv6.
fn disable(ifname: &str) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("switching IPv6 off on {ifname} ({path}): {e}")),
    }
}
