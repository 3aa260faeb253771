//! IPv6 forwarding: `net.ipv6.conf.all.forwarding=1` with the first link that routes IPv6,
//! its previous value restored with the last (kept in the state file across restarts), as
//! `net.ipv4.ip_forward` is handled in `crate::firewall`.
//!
//! Turning forwarding on has a side effect IPv4 does not have: an interface with `accept_ra=1`
//! (the default) ignores router advertisements while forwarding is on, so a host that got its
//! own IPv6 default route by SLAAC would lose it when the route's lifetime runs out
//! (systemd#37029). So before forwarding goes on, every host interface whose `accept_ra` is 1
//! is set to 2 ("accept even when forwarding"), and set back to 1 when forwarding is restored.
//! Our own links (`ve-`, `vb-`, `vz-`) and `conf/default` are left alone: a host accepting
//! router advertisements from a container would route through it.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::sysctl::Sysctl;

const FORWARDING: &str = "net.ipv6.conf.all.forwarding";

/// What must be restored: forwarding's previous value and the interfaces whose `accept_ra` was
/// raised from 1 to 2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved6 {
    /// `net.ipv6.conf.all.forwarding` before rnetd set it.
    pub forwarding: String,
    /// Interface → its `accept_ra` before (always "1").
    #[serde(default)]
    pub accept_ra: BTreeMap<String, String>,
}

/// Whether an interface is one of ours or a pseudo entry whose `accept_ra` must stay.
fn left_alone(ifname: &str) -> bool {
    matches!(ifname, "all" | "default" | "lo")
        || ["ve-", "vb-", "vz-"].iter().any(|p| ifname.starts_with(p))
}

/// IPv6 forwarding as rnetd changed it.
#[derive(Debug, Default)]
pub struct Forward6 {
    saved: Option<Saved6>,
}

impl Forward6 {
    /// With the saved state of a previous run (forwarding on since then), or none.
    pub fn new(saved: Option<Saved6>) -> Self {
        Self { saved }
    }

    /// What to restore, for the state file.
    pub fn saved(&self) -> Option<Saved6> {
        self.saved.clone()
    }

    /// Turns forwarding on (raising `accept_ra` 1 to 2 first), remembering what to restore;
    /// turns it on again if it was switched off since.
    pub fn ensure(&mut self, sysctl: &Sysctl) -> io::Result<()> {
        if self.saved.is_some() {
            if sysctl.get(FORWARDING)? != "1" {
                sysctl.set(FORWARDING, "1")?;
                warn!("{FORWARDING} was off with containers attached; turned it on again");
            }
            return Ok(());
        }
        let mut accept_ra = BTreeMap::new();
        for ifname in sysctl.links6()? {
            if left_alone(&ifname) {
                continue;
            }
            if sysctl.get_link6(&ifname, "accept_ra").ok().as_deref() == Some("1") {
                sysctl.set_link6(&ifname, "accept_ra", "2")?;
                info!(%ifname, "accept_ra 1 -> 2, so the host keeps taking router advertisements with IPv6 forwarding on");
                accept_ra.insert(ifname, "1".to_owned());
            }
        }
        let forwarding = sysctl.set(FORWARDING, "1")?;
        info!(previous = %forwarding, "enabled {FORWARDING}");
        self.saved = Some(Saved6 {
            forwarding,
            accept_ra,
        });
        Ok(())
    }

    /// Restores forwarding, then `accept_ra` where we raised it (and it is still 2).
    pub fn restore(&mut self, sysctl: &Sysctl) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        match sysctl.set(FORWARDING, &saved.forwarding) {
            Ok(_) => info!(value = %saved.forwarding, "restored {FORWARDING}"),
            Err(e) => warn!(error = %e, "restoring {FORWARDING} failed"),
        }
        for (ifname, old) in &saved.accept_ra {
            if sysctl.get_link6(ifname, "accept_ra").ok().as_deref() != Some("2") {
                continue; // gone, or changed by someone else since
            }
            if let Err(e) = sysctl.set_link6(ifname, "accept_ra", old) {
                warn!(%ifname, error = %e, "restoring accept_ra failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (link, ra) in [
            ("all", "1"),
            ("default", "1"),
            ("lo", "1"),
            ("eth0", "1"),
            ("eth1", "0"),
            ("ve-web", "1"),
        ] {
            let d = dir.path().join("net/ipv6/conf").join(link);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("accept_ra"), ra).unwrap();
            fs::write(d.join("forwarding"), "0").unwrap();
        }
        dir
    }

    fn get(dir: &tempfile::TempDir, link: &str) -> String {
        fs::read_to_string(
            dir.path()
                .join("net/ipv6/conf")
                .join(link)
                .join("accept_ra"),
        )
        .unwrap()
    }

    #[test]
    fn forwarding_on_keeps_the_hosts_router_advertisements_and_is_restored() {
        let dir = root();
        let s = Sysctl::new(dir.path());
        let mut f = Forward6::default();
        f.ensure(&s).unwrap();
        assert_eq!(s.get(FORWARDING).unwrap(), "1");
        assert_eq!(get(&dir, "eth0"), "2");
        // Left alone: off already, ours, the pseudo entries.
        for (link, v) in [
            ("eth1", "0"),
            ("ve-web", "1"),
            ("default", "1"),
            ("lo", "1"),
        ] {
            assert_eq!(get(&dir, link), v, "{link}");
        }
        let saved = f.saved().unwrap();
        assert_eq!(saved.forwarding, "0");
        assert_eq!(saved.accept_ra.keys().collect::<Vec<_>>(), ["eth0"]);
        // A second link changes nothing; forwarding switched off meanwhile is switched on.
        s.set(FORWARDING, "0").unwrap();
        f.ensure(&s).unwrap();
        assert_eq!(s.get(FORWARDING).unwrap(), "1");
        // A restart carries the saved state.
        let mut f = Forward6::new(Some(saved));
        f.restore(&s);
        assert_eq!(s.get(FORWARDING).unwrap(), "0");
        assert_eq!(get(&dir, "eth0"), "1");
        assert_eq!(f.saved(), None);
    }

    #[test]
    fn accept_ra_changed_by_someone_else_is_not_restored() {
        let dir = root();
        let s = Sysctl::new(dir.path());
        let mut f = Forward6::default();
        f.ensure(&s).unwrap();
        s.set_link6("eth0", "accept_ra", "0").unwrap();
        f.restore(&s);
        assert_eq!(get(&dir, "eth0"), "0");
    }
}
