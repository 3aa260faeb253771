//! Links besides the primary veth: macvlan and ipvlan links created inside the container,
//! host interfaces moved in (and back out, with their names, when the container ends — also
//! when its launcher was SIGKILLed: rnetd holds the container's namespace for that), and extra
//! veth pairs. Behaviour as systemd-nspawn's `--network-macvlan=`, `--network-ipvlan=`,
//! `--network-interface=` and `--network-veth-extra=` (systemd-nspawn(1)).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use tracing::{info, warn};

use crate::api::{ApiError, AttachedLink, ErrorKind, ExtraLink, MachineName};
use crate::naming::{MacKey, generate_mac, shorten_ifname};
use crate::netlink_sync;
use crate::netns::run_in;
use crate::rtnl::RtnlError;

use super::system::{Links, System};
use super::{Machines, bad, internal};

/// Whether a machine's extras need its namespace held (to move interfaces back).
pub(crate) fn needs_netns(links: &[AttachedLink]) -> bool {
    links
        .iter()
        .any(|l| matches!(l.spec, ExtraLink::Interface { .. }))
}

impl<S: System> Machines<S> {
    async fn host_index(&self, name: &str) -> Result<u32, ApiError> {
        self.links
            .lookup(name)
            .await
            .map_err(internal)?
            .map(|(index, _)| index)
            .ok_or_else(|| bad(format!("host link {name} does not exist")))
    }

    /// Creates the extra links `specs` of machine `machine` in the container's namespace
    /// `netns`. On error, the ones already made are undone.
    pub(crate) async fn add_extras(
        &self,
        machine: &MachineName,
        specs: &[ExtraLink],
        netns: &OwnedFd,
    ) -> Result<Vec<AttachedLink>, ApiError> {
        let mut made: Vec<AttachedLink> = Vec::new();
        let (mut macvlans, mut extras) = (0u64, 0u64);
        for spec in specs {
            let result = self
                .add_extra(machine, spec, netns, &mut macvlans, &mut extras)
                .await;
            match result {
                Ok(name) => made.push(AttachedLink {
                    spec: spec.clone(),
                    container_ifname: name,
                }),
                Err(e) => {
                    for failure in self.remove_extras(&made, Some(netns)).await {
                        warn!(%machine, %failure, "undoing an extra link failed");
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn add_extra(
        &self,
        machine: &MachineName,
        spec: &ExtraLink,
        netns: &OwnedFd,
        macvlans: &mut u64,
        extras: &mut u64,
    ) -> Result<String, ApiError> {
        let machine = machine.as_str();
        let id = self.settings.machine_id;
        let exists = |what: &str, name: &str, e: RtnlError| {
            if e.errno == Some(libc::EEXIST) {
                ApiError::new(
                    ErrorKind::AlreadyExists,
                    format!("{what} {name}: an interface of that name already exists"),
                )
            } else {
                internal(e)
            }
        };
        match spec {
            ExtraLink::Macvlan { parent, name } => {
                let parent_index = self.host_index(parent).await?;
                let ifname = name
                    .clone()
                    .unwrap_or_else(|| shorten_ifname(&format!("mv-{parent}")));
                let mac = generate_mac(id, machine, MacKey::Macvlan, *macvlans);
                *macvlans += 1;
                self.links
                    .add_macvlan(&ifname, parent_index, mac, netns.as_fd())
                    .await
                    .map_err(|e| exists("macvlan", &ifname, e))?;
                Ok(ifname)
            }
            ExtraLink::Ipvlan { parent, name } => {
                let parent_index = self.host_index(parent).await?;
                let ifname = name
                    .clone()
                    .unwrap_or_else(|| shorten_ifname(&format!("iv-{parent}")));
                match self
                    .links
                    .add_ipvlan(&ifname, parent_index, netns.as_fd())
                    .await
                {
                    Ok(()) => Ok(ifname),
                    Err(e) if matches!(e.errno, Some(libc::EOPNOTSUPP) | Some(libc::ENOENT)) => {
                        Err(bad(
                            "ipvlan is not available: this kernel has no ipvlan support (CONFIG_IPVLAN / modprobe ipvlan)"
                                .into(),
                        ))
                    }
                    Err(e) => Err(exists("ipvlan", &ifname, e)),
                }
            }
            ExtraLink::Interface { name, rename } => {
                if name == "lo" {
                    return Err(bad("the loopback interface cannot be moved".into()));
                }
                let index = self.host_index(name).await?;
                let inside = rename.clone().unwrap_or_else(|| name.clone());
                self.links
                    .move_link(index, netns.as_fd(), &inside)
                    .await
                    .map_err(|e| exists("moving", name, e))?;
                info!(machine, from = %name, to = %inside, "interface moved into the container");
                Ok(inside)
            }
            ExtraLink::VethExtra { host, container } => {
                let inside = container.clone().unwrap_or_else(|| host.clone());
                let host_mac = generate_mac(id, machine, MacKey::VethExtraHost, *extras);
                let cont_mac = generate_mac(id, machine, MacKey::VethExtraContainer, *extras);
                *extras += 1;
                self.links
                    .add_veth(host, host_mac, &inside, cont_mac, netns.as_fd())
                    .await
                    .map_err(|e| exists("extra veth", host, e))?;
                Ok(inside)
            }
        }
    }

    /// Undoes extra links: extra veths are deleted, moved interfaces go back to the host with
    /// their names (from inside `netns` while it lives; once it is gone a physical interface is
    /// back on the host under its container name and is renamed), macvlans and ipvlans are
    /// deleted inside the namespace. Best effort: every step is tried.
    /// Returns what failed, each as one line naming the link.
    pub(crate) async fn remove_extras(
        &self,
        links: &[AttachedLink],
        netns: Option<&OwnedFd>,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for l in links.iter().rev() {
            let inside = l.container_ifname.clone();
            match &l.spec {
                ExtraLink::VethExtra { host, .. } => {
                    if let Err(e) = self.links.del_link(host).await {
                        failed.push(format!("deleting extra veth {host}: {e}"));
                    }
                }
                ExtraLink::Macvlan { .. } | ExtraLink::Ipvlan { .. } => {
                    // They die with the namespace; delete them explicitly while it lives, as
                    // the kernel may pin them (systemd #680).
                    if let Some(ns) = netns {
                        let r = run_in(ns, move || {
                            let idx = nix::net::if_::if_nametoindex(inside.as_str())?;
                            netlink_sync::BlockingRtnl::open()?.del_link(idx)
                        })
                        .await;
                        if let Err(e) = r {
                            failed.push(format!(
                                "deleting {} in the container: {e}",
                                l.container_ifname
                            ));
                        }
                    }
                }
                ExtraLink::Interface { name, .. } => {
                    let moved = match netns {
                        Some(ns) => {
                            let original = name.clone();
                            let inside = inside.clone();
                            run_in(ns, move || {
                                let idx = nix::net::if_::if_nametoindex(inside.as_str())?;
                                // From inside the container, rnetd's own namespace is that of
                                // its process (the thread changed namespace, the process did
                                // not).
                                let host = std::fs::File::open(format!(
                                    "/proc/{}/ns/net",
                                    std::process::id()
                                ))?;
                                netlink_sync::BlockingRtnl::open()?.move_link(
                                    idx,
                                    host.as_raw_fd(),
                                    &original,
                                )
                            })
                            .await
                            .map_err(|e| e.to_string())
                        }
                        None => Err("the container's namespace is gone".into()),
                    };
                    match moved {
                        Ok(()) => info!(ifname = %name, "interface moved back"),
                        Err(why) => {
                            if let Err(e) = self.rename_back(name, &l.container_ifname, &why).await
                            {
                                failed.push(e);
                            }
                        }
                    }
                }
            }
        }
        failed
    }

    /// A physical interface whose namespace died is back on the host under its container
    /// name: give it its own name again.
    async fn rename_back(&self, original: &str, inside: &str, why: &str) -> Result<(), String> {
        if original == inside {
            return Ok(());
        }
        match self.links.lookup(inside).await {
            Ok(Some((idx, _))) => match self.links.rename(idx, original).await {
                Ok(()) => {
                    info!(ifname = %original, "interface renamed back");
                    Ok(())
                }
                Err(e) => Err(format!("renaming {inside} back to {original}: {e}")),
            },
            _ => Err(format!("moving interface {original} back: {why}")),
        }
    }
}
