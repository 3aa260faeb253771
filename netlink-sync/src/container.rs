//! The container side of an attachment, configured from outside the container: what the
//! launcher's child does for `rnet run`, done for a namespace that no child of ours lives in
//! (a named namespace, an OCI runtime's container, a CNI plugin's container).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::BlockingRtnl;

/// How the container's end of its veth is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLink {
    /// The name rnetd gave it (`host0`).
    pub ifname: String,
    /// The name it should have (`eth0` for CNI's `CNI_IFNAME`); the same to keep it.
    pub rename: String,
    /// Its address and prefix length, if it gets one.
    pub address: Option<(Ipv4Addr, u8)>,
    /// The default route's gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// The index of link `name` in the calling thread's namespace.
fn index_of(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!(
            "no link {name}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(index)
}

/// In the network namespace `netns` (entered by a thread of its own, which ends with the
/// work): `lo` up; `link` (if given) renamed, addressed, up, with its default route. Each
/// failure names its step (`renaming host0 to eth0: File exists`).
pub fn configure_in(netns: BorrowedFd<'_>, link: Option<&ContainerLink>) -> io::Result<()> {
    let netns: OwnedFd = netns.try_clone_to_owned()?;
    let link = link.cloned();
    std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: setns on a valid fd affects only this thread, which ends with this closure.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("entering the network namespace: {e}"),
            ));
        }
        let step =
            |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let mut rtnl = BlockingRtnl::open().map_err(step("opening rtnetlink".into()))?;
        let lo = index_of("lo")?;
        rtnl.set_up(lo).map_err(step("bringing lo up".into()))?;
        let Some(link) = link else { return Ok(()) };
        let index = index_of(&link.ifname)?;
        if link.rename != link.ifname {
            rtnl.set_name(index, &link.rename)
                .map_err(step(format!("renaming {} to {}", link.ifname, link.rename)))?;
        }
        if let Some((addr, prefix)) = link.address {
            rtnl.add_address(index, addr, prefix)
                .map_err(step(format!("adding {addr}/{prefix} to {}", link.rename)))?;
        }
        rtnl.set_up(index)
            .map_err(step(format!("bringing {} up", link.rename)))?;
        if let Some(gw) = link.gateway {
            rtnl.add_default_route(index, gw)
                .map_err(step(format!("adding the default route via {gw}")))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}
