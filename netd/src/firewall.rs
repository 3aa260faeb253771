//! The daemon's side of the nftables layer: keeps tables `inet rnet` and `bridge rnet` equal to
//! the machines we have, one atomic batch per change, rebuilds them when someone removes them from
//! outside, and removes them (and restores `net.ipv4.ip_forward`) when the last machine goes.
//! With them it keeps our accept rules in other firewalls' chains that would drop our traffic
//! ([`hostfw`]), and, while firewalld runs, our links bound in firewalld ([`firewalld`]).

pub mod firewalld;
pub mod hostfw;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};
use nat::{AsyncNft, Change, GuardedPort, IfName, PortMapping, PortRange, Ruleset, TableRef};
use tracing::{info, warn};

use crate::api::PortSpec;
use crate::rtnl::LINK_GROUP;
use crate::sysctl::Sysctl;
use firewalld::Firewalld;
use hostfw::HostFwMode;

/// A firewall step failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// nft refused or could not run.
    #[error("firewall: {0}")]
    Nft(#[from] nat::Error),
    /// A sysctl could not be written.
    #[error("firewall: {0}")]
    Sysctl(#[from] std::io::Error),
    /// A link name the tables cannot hold.
    #[error("firewall: {0}")]
    IfName(#[from] crate::api::IfNameError),
    /// A container MAC address the tables cannot hold.
    #[error("firewall: {0}")]
    Mac(#[from] crate::api::MacError),
    /// A requested port mapping is not valid for this container.
    #[error("{0}")]
    Mapping(String),
}

/// What one link (a `ve-` link, a zone bridge) or one bridge port contributes to the tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkRules {
    /// A managed host-side link (`ifaces`): `ve-NAME` or `vz-ZONE`; none for a zone member,
    /// whose traffic passes its zone's bridge.
    pub ifname: Option<String>,
    /// A masqueraded subnet.
    pub subnet: Option<Ipv4Network>,
    /// A masqueraded IPv6 subnet (`masq6`).
    pub subnet6: Option<ipnetwork::Ipv6Network>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// A `vb-` port (zone member, admin's bridge) held to its container's MAC address, and for a
    /// zone member to its address (table `bridge rnet`).
    pub guard: Option<GuardedPort>,
}

impl LinkRules {
    /// Rules for a `ve-` link whose container has `container` and asked for `ports`.
    pub fn new(
        ifname: &str,
        subnet: Ipv4Network,
        container: IpAddr,
        ports: &[PortSpec],
    ) -> Result<Self, FirewallError> {
        Ok(Self {
            ifname: Some(ifname.to_owned()),
            subnet: Some(subnet),
            subnet6: None,
            ports: Self::mappings(container, ports)?,
            guard: None,
        })
    }

    /// The mappings of `ports` to `container`.
    pub fn mappings(
        container: IpAddr,
        ports: &[PortSpec],
    ) -> Result<Vec<PortMapping>, FirewallError> {
        ports.iter().map(|p| to_mapping(p, container)).collect()
    }

    fn changes(&self, add: bool) -> Result<Vec<Change>, FirewallError> {
        let mut out = Vec::new();
        if let Some(ifname) = &self.ifname {
            let ifname = IfName::new(ifname.clone())?;
            out.push(if add {
                Change::AddIface(ifname)
            } else {
                Change::DelIface(ifname)
            });
        }
        let subnets = self.subnet.map(IpNetwork::V4).into_iter();
        for subnet in subnets.chain(self.subnet6.map(IpNetwork::V6)) {
            out.push(if add {
                Change::AddSubnet(subnet)
            } else {
                Change::DelSubnet(subnet)
            });
        }
        out.extend(self.ports.iter().cloned().map(if add {
            Change::AddPort
        } else {
            Change::DelPort
        }));
        out.extend(self.guard.iter().cloned().map(if add {
            Change::GuardPort
        } else {
            Change::UnguardPort
        }));
        Ok(out)
    }

    /// True if these rules route or NAT anything (and so need `net.ipv4.ip_forward`); a guarded
    /// port of an admin's bridge alone does not.
    fn forwards(&self) -> bool {
        self.ifname.is_some() || self.subnet.is_some() || !self.ports.is_empty()
    }

    /// True if these rules route IPv6 (and so need `net.ipv6.conf.all.forwarding`).
    fn forwards6(&self) -> bool {
        self.subnet6.is_some() || self.ports.iter().any(|p| p.container_addr().is_ipv6())
    }
}

fn to_mapping(p: &PortSpec, container: IpAddr) -> Result<PortMapping, FirewallError> {
    let range = PortRange::new(p.host_first, p.host_last)?;
    PortMapping::new(p.proto, p.host_address, range, container, p.container_port)
        .map_err(|e| FirewallError::Mapping(e.to_string()))
}

/// The firewall state of the daemon.
pub struct Firewall<N> {
    nft: N,
    sysctl: Sysctl,
    /// What nft has accepted.
    installed: Ruleset,
    /// Whether our table exists (as far as we know).
    present: bool,
    /// `net.ipv4.ip_forward` before we turned it on, to restore when the last link goes.
    forward_restore: Option<String>,
    /// Counts changes of `installed`: a check made without the lock is applied only if
    /// nothing changed meanwhile.
    generation: u64,
    /// `--host-firewall`.
    host_mode: HostFwMode,
    /// The foreign chains that hold our rules, as last synced (`ip filter DOCKER-USER (forward:
    /// policy drop)`).
    host_chains: Vec<String>,
    /// IPv6 forwarding and the `accept_ra` values it made us change.
    forward6: crate::forward6::Forward6,
    /// The last look at the ruleset found no other firewall's chain that would drop our traffic
    /// and no rule of ours in one: a change of our links then needs nothing there, and is not
    /// paid with a look at other tables. The `nft monitor` watch and the periodic check
    /// ([`Firewall::reconcile`]) look again whenever the ruleset changes.
    foreign_quiet: bool,
    /// Whether the last look left our rules in other firewalls' chains as they must be with
    /// some links of ours (`true`) or none (`false`); `None` before the first look or after one
    /// that failed half-way. A change of links that keeps this needs no look at other tables.
    host_synced: Option<bool>,
    /// The rules in other firewalls' chains whose comment the last look read through
    /// `iptables-save` (ours, which iptables added, among them): a look runs the save only for
    /// rules it does not know yet ([`nat::restored_tables`]), not at every look.
    host_comments: Vec<nat::OurRule>,
    /// The other firewalls' tables the last full look listed and will list again: those with a
    /// filter chain on the forward or input hook, and those holding rules of ours. A look right
    /// after a change of our links lists only these (no `list chains`): a table that got such a
    /// chain since is the `nft monitor` watch's to report, which then runs a full look. `None`
    /// until the first full look.
    host_tables: Option<Vec<TableRef>>,
    /// [`Firewall::host_tables`] for the `nft monitor` watch, which ignores changes in other
    /// tables ([`hostfw::relevant`]).
    watched: tokio::sync::watch::Sender<Vec<TableRef>>,
    /// The firewalld task, when rnetd watches the system bus for firewalld.
    firewalld: Option<Firewalld>,
}

/// What a periodic check needs, taken under the firewall's lock and used without it.
pub struct Probe<N> {
    /// A handle to run `nft` with.
    pub nft: N,
    /// The table as it should be.
    pub desired: Ruleset,
    /// The generation the check is valid for.
    pub generation: u64,
    /// firewalld runs and handles our links: its own table is left out.
    pub firewalld: bool,
    /// The other firewalls' tables the last look listed ([`Firewall::host_tables`]).
    pub host_tables: Vec<TableRef>,
    /// The comments the last look read through iptables ([`Firewall::host_comments`]).
    pub known: Vec<nat::OurRule>,
    /// What this check's look read through iptables, if it differs from `known`: for
    /// [`Firewall::learn_comments`], so that the next check needs no `iptables-save` for them.
    pub learned: Option<Vec<nat::OurRule>>,
}

impl<N: AsyncNft> Probe<N> {
    /// Lists the kernel's table (`nft -j list table inet rnet`) and says whether it differs
    /// from the desired one. Runs without any lock of the daemon.
    pub async fn needs_repair(&mut self) -> Result<bool, FirewallError> {
        let listing = self.nft.list_table_async().await?;
        let observed = match &listing {
            Some(l) => Some(nat::observe(l)?),
            None => None,
        };
        Ok(nat::plan(observed.as_ref(), &self.desired).is_some())
    }

    /// Looks at the other firewalls' tables (a full [`host_view`]) and says whether our rules in
    /// their chains differ from what our links need. Runs without any lock of the daemon.
    pub async fn host_needs_sync(&mut self, mode: HostFwMode) -> Result<bool, FirewallError> {
        let group = host_group(mode, &self.desired);
        let look = Look::Full {
            also: &self.host_tables,
        };
        let (view, _) = host_view(&mut self.nft, self.firewalld, look, &self.known).await?;
        if view.read_comments != self.known {
            self.learned = Some(view.read_comments.clone());
        }
        Ok(nat::plan_host(&view, group).is_some())
    }
}

/// Which of the other firewalls' tables a look lists.
#[derive(Clone, Copy)]
enum Look<'a> {
    /// Those with a filter chain on the forward or input hook, from `nft -j list chains`
    /// ([`nat::hooked_tables`]), and `also` (where rules of ours were found before).
    Full { also: &'a [TableRef] },
    /// These (the last full look's): right after a change of our links.
    Known(&'a [TableRef]),
}

/// What the other firewalls' tables say: each table of the `look` listed with
/// `nft -j list table`, with `iptables-save -t TABLE`'s text where rules of ours may have been
/// restored by `iptables-restore` ([`nat::detect_with_saves`]); firewalld's own table left out
/// while firewalld handles our links through its D-Bus API (`firewalld`). Also returns the
/// tables the next look right after a change needs ([`Firewall::host_tables`]).
///
/// Never the whole ruleset: beside a peer with thousands of containers (CNI's nat chains, 2 MB
/// of JSON for 1000) that listing cost nft about 0.3 s of CPU and rnetd a tree of JSON values
/// per look, and a look ran every 2 s and on every change of any table.
async fn host_view<N: AsyncNft>(
    nft: &mut N,
    firewalld: bool,
    look: Look<'_>,
    known: &[nat::OurRule],
) -> Result<(nat::HostView, Vec<TableRef>), FirewallError> {
    let (mut tables, hooked) = match look {
        Look::Known(known) => (known.to_vec(), None),
        Look::Full { also } => {
            let chains = nft.list_chains_async().await?;
            let hooked = nat::hooked_tables(&chains).map_err(|e| nat::Error::Output {
                program: "nft".to_owned(),
                step: "listing the chains".to_owned(),
                detail: e.to_string(),
            })?;
            let mut tables = hooked.clone();
            tables.extend(also.iter().filter(|t| !hooked.contains(t)).cloned());
            (tables, Some(hooked))
        }
    };
    let mut objects = Vec::new();
    for (family, name) in &tables {
        if let Some(mut listing) = nft.list_any_table_async(family, name).await?
            && let serde_json::Value::Array(items) = listing["nftables"].take()
        {
            objects.extend(items);
        }
    }
    let listing = serde_json::json!({ "nftables": objects });
    let restored = nat::restored_tables(&listing, known);
    let saves = if restored.is_empty() {
        Vec::new()
    } else {
        hostfw::iptables_saves(&restored).await
    };
    let saves: Vec<(&str, &str)> = saves.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let view = nat::detect_with_saves(&listing, &saves, known);
    if let Some(hooked) = hooked {
        tables.retain(|t| {
            hooked.contains(t) || view.ours.iter().any(|o| o.family == t.0 && o.table == t.1)
        });
    }
    let view = if firewalld {
        view.without_tables(&FIREWALLD_TABLES)
    } else {
        view
    };
    Ok((view, tables))
}

/// firewalld's nftables tables: `inet firewalld` (`ip`/`ip6 firewalld` in older versions), and
/// `inet firewalld_policy_drop`, which holds traffic with policy drop while it reloads.
const FIREWALLD_TABLES: [&str; 2] = ["firewalld", "firewalld_policy_drop"];

/// The links whose traffic other firewalls must let through: ours, unless `--host-firewall=off`.
fn host_links(mode: HostFwMode, installed: &Ruleset) -> BTreeSet<IfName> {
    match mode {
        HostFwMode::Auto => installed.ifaces().cloned().collect(),
        HostFwMode::Off => BTreeSet::new(),
    }
}

/// The netdev group our rules in other firewalls' chains match ([`nat::plan_host`]): every
/// link of ours is made in it ([`LINK_GROUP`]), so those rules are the same for 1 or 1000
/// links. `None` (no rules) without links of ours or with `--host-firewall=off`.
fn host_group(mode: HostFwMode, installed: &Ruleset) -> Option<u32> {
    let any = match mode {
        HostFwMode::Auto => installed.ifaces().next().is_some(),
        HostFwMode::Off => false,
    };
    any.then_some(LINK_GROUP)
}

impl<N: AsyncNft> Firewall<N> {
    /// A firewall driving `nft`; `forward_restore` is the saved previous forwarding value.
    pub fn new(nft: N, sysctl: Sysctl, forward_restore: Option<String>) -> Self {
        Self {
            nft,
            sysctl,
            installed: Ruleset::new(),
            present: false,
            forward_restore,
            generation: 0,
            host_mode: HostFwMode::Auto,
            host_chains: Vec::new(),
            foreign_quiet: false,
            host_synced: None,
            host_comments: Vec::new(),
            host_tables: None,
            watched: tokio::sync::watch::Sender::new(Vec::new()),
            firewalld: None,
            forward6: crate::forward6::Forward6::default(),
        }
    }

    /// Hands our links to the firewalld task from now on (it was spawned with the links we
    /// had then).
    pub fn attach_firewalld(&mut self, firewalld: Firewalld) {
        self.firewalld = Some(firewalld);
    }

    /// The links other firewalls must let through now.
    pub fn host_links(&self) -> BTreeSet<IfName> {
        host_links(self.host_mode, &self.installed)
    }

    /// True if firewalld runs and handles our links.
    fn firewalld_handles(&self) -> bool {
        self.firewalld.as_ref().is_some_and(Firewalld::handles)
    }

    /// Sets the saved IPv6 forwarding state to restore (the state file's).
    pub fn with_forward6(mut self, saved: Option<crate::forward6::Saved6>) -> Self {
        self.forward6 = crate::forward6::Forward6::new(saved);
        self
    }

    /// The IPv6 forwarding state to restore, for the state file.
    pub fn forward6_restore(&self) -> Option<crate::forward6::Saved6> {
        self.forward6.saved()
    }

    /// Sets `--host-firewall` (default [`HostFwMode::Auto`]).
    pub fn with_host_mode(mut self, mode: HostFwMode) -> Self {
        self.host_mode = mode;
        self
    }

    /// `--host-firewall`.
    pub fn host_mode(&self) -> HostFwMode {
        self.host_mode
    }

    /// Where other firewalls let our traffic through: firewalld's zone (while it runs and holds
    /// links of ours), then the foreign chains holding our rules, as last synced.
    pub fn host_chains(&self) -> Vec<String> {
        let firewalld = self.firewalld.as_ref().and_then(Firewalld::describe);
        firewalld
            .into_iter()
            .chain(self.host_chains.iter().cloned())
            .collect()
    }

    /// The other firewalls' tables to watch for changes ([`Firewall::host_tables`]), for the
    /// `nft monitor` watch.
    pub fn watched_tables(&self) -> tokio::sync::watch::Receiver<Vec<TableRef>> {
        self.watched.subscribe()
    }

    /// Makes our rules in other firewalls' chains exactly what our links need
    /// ([`nat::plan_host`]): inserted at the head of every foreign chain that would drop our
    /// traffic, removed with our last link or with `--host-firewall=off`. Returns whether it
    /// changed anything. A full look: the tables that matter are found again.
    pub async fn sync_host(&mut self) -> Result<bool, FirewallError> {
        let also = self.host_tables.clone().unwrap_or_default();
        self.sync_host_with(Look::Full { also: &also }).await
    }

    /// [`Firewall::sync_host`] with the tables of `look`.
    async fn sync_host_with(&mut self, look: Look<'_>) -> Result<bool, FirewallError> {
        let group = host_group(self.host_mode, &self.installed);
        let firewalld = self.firewalld_handles();
        let (view, tables) = host_view(&mut self.nft, firewalld, look, &self.host_comments).await?;
        self.host_comments.clone_from(&view.read_comments);
        crate::timing::lap("host firewall list");
        self.watched.send_if_modified(|watched| {
            let changed = *watched != tables;
            if changed {
                watched.clone_from(&tables);
            }
            changed
        });
        self.host_tables = Some(tables);
        let chains: Vec<String> = view
            .chains
            .iter()
            .map(nat::ForeignChain::describe)
            .collect();
        let Some(plan) = nat::plan_host(&view, group) else {
            self.host_synced = Some(group.is_some());
            self.foreign_quiet = view.chains.is_empty() && view.ours.is_empty();
            self.host_chains = if group.is_none() { Vec::new() } else { chains };
            return Ok(false);
        };
        self.foreign_quiet = false;
        self.host_synced = None;
        if let Some(batch) = &plan.batch {
            self.nft.apply_async(batch).await?;
        }
        for rule in &plan.iptables {
            if let Err(e) = self.nft.insert_xt(rule).await {
                warn!(
                    error = %e,
                    "iptables could not add our rule; adding it with nft (iptables may no \
                     longer list that chain)"
                );
                self.nft.apply_async(&rule.native).await?;
            }
        }
        self.host_synced = Some(group.is_some());
        if group.is_none() {
            info!(
                removed = view.ours.len(),
                "removed our rules from other firewalls' chains"
            );
            self.host_chains = Vec::new();
        } else {
            info!(
                chains = %chains.join(", "),
                "other firewalls would drop our traffic; our accept rules for our links' group \
                 are in their chains"
            );
            self.host_chains = chains;
        }
        Ok(true)
    }

    /// After a change of our links: firewalld's bindings (when rnetd watches for firewalld),
    /// then [`Firewall::sync_host`], unless the last look found no other firewall to deal with.
    /// After links of ours were added (true) or removed (false): firewalld binds them (by the
    /// change, not the whole list, so that a change costs the same with 1 or 1000 links), and
    /// other firewalls' chains are looked at again.
    async fn sync_host_on_change(&mut self, links: &[(bool, IfName)]) {
        if self.host_mode == HostFwMode::Auto
            && let Some(firewalld) = &mut self.firewalld
        {
            firewalld.update(links).await;
            crate::timing::lap("firewalld");
        }
        // Our rules there match our links' group, not each link: only a change between some
        // links and none changes them.
        let active = host_group(self.host_mode, &self.installed).is_some();
        if !self.foreign_quiet && self.host_synced != Some(active) {
            let known = self.host_tables.clone();
            let look = match &known {
                Some(known) => Look::Known(known),
                None => Look::Full { also: &[] },
            };
            if let Err(e) = self.sync_host_with(look).await {
                warn!(error = %e, "letting our traffic through other firewalls failed");
            }
            crate::timing::lap("host firewall change");
        }
    }

    /// [`Firewall::sync_host`], failures logged: the other firewalls' rules are not ours to
    /// make a change fail for; the periodic check and the monitor try again.
    async fn sync_host_logged(&mut self) {
        if let Err(e) = self.sync_host().await {
            warn!(error = %e, "letting our traffic through other firewalls failed");
        }
    }

    /// Keeps the comments a check read through iptables ([`Probe::learned`]). Always sound:
    /// they are keyed by their table's and their own handle, which no other rule gets.
    pub fn learn_comments(&mut self, comments: Vec<nat::OurRule>) {
        self.host_comments = comments;
    }

    /// The generation of the desired table (changes with every add, remove or adopt).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What a check of the kernel's table needs, or `None` when we have nothing installed
    /// (there is nothing to keep in line).
    pub fn probe(&self) -> Option<Probe<N>>
    where
        N: Clone,
    {
        (!self.installed.is_empty()).then(|| Probe {
            nft: self.nft.clone(),
            desired: self.installed.clone(),
            generation: self.generation,
            firewalld: self.firewalld_handles(),
            host_tables: self.host_tables.clone().unwrap_or_default(),
            known: self.host_comments.clone(),
            learned: None,
        })
    }

    /// The forwarding value to restore, for the state file.
    pub fn forward_restore(&self) -> Option<&str> {
        self.forward_restore.as_deref()
    }

    /// Adds a link's masquerade, interface, ports and guarded port in one atomic batch. On error
    /// nothing is changed.
    pub async fn add(&mut self, link: &LinkRules) -> Result<(), FirewallError> {
        if link.forwards() {
            self.ensure_forwarding()?;
        }
        if link.forwards6() {
            self.forward6.ensure(&self.sysctl)?;
        }
        // Published ports must be reachable from the host's own 127.0.0.1 (systemd #6106):
        // loopback-sourced packets may then leave through this link, where they are
        // masqueraded to the link's address.
        if let Some(ifname) = &link.ifname {
            self.sysctl.set_link(ifname, "route_localnet", "1")?;
        }
        let changes = link.changes(true)?;
        if changes.is_empty() {
            return Ok(());
        }
        crate::timing::lap("sysctl");
        let result = self.change(&changes).await;
        if result.is_err() && self.installed.is_empty() {
            // The first link was refused: nothing of ours needs forwarding.
            self.restore_forwarding();
            self.forward6.restore(&self.sysctl);
        }
        result
    }

    /// Applies element changes that are no link's (a distributed zone's VXLAN device and its
    /// pairs, `machines/span.rs`) in one atomic batch.
    pub async fn change_elements(&mut self, changes: &[Change]) -> Result<(), FirewallError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.change(changes).await
    }

    /// Removes a link's elements; removes the tables when nothing is left.
    pub async fn remove(&mut self, link: &LinkRules) -> Result<(), FirewallError> {
        let changes = link.changes(false)?;
        if changes.is_empty() {
            return Ok(());
        }
        // Each change removes at most one thing: only then can the table be left empty (and
        // only then is the model copied to see).
        if self.installed.len() > changes.len() {
            return self.change(&changes).await;
        }
        let mut desired = self.installed.clone();
        for c in &changes {
            desired.apply(c);
        }
        if desired.is_empty() {
            if self.present {
                self.nft.apply_async(&nat::render_delete_table()).await?;
                info!("last fabric link gone; removed tables inet rnet and bridge rnet");
            }
            let gone: Vec<(bool, IfName)> = self
                .installed
                .ifaces()
                .map(|n| (false, n.clone()))
                .collect();
            self.installed = desired;
            self.generation += 1;
            self.present = false;
            self.restore_forwarding();
            self.forward6.restore(&self.sysctl);
            self.sync_host_on_change(&gone).await;
            return Ok(());
        }
        self.change(&changes).await
    }

    /// Turns `net.ipv4.ip_forward` on, remembering the value to restore the first time; also
    /// turns it back on if it was switched off since (a restart after a crash must not leave
    /// adopted containers without forwarding).
    fn ensure_forwarding(&mut self) -> Result<(), FirewallError> {
        match &self.forward_restore {
            None => {
                let old = self.sysctl.set("net.ipv4.ip_forward", "1")?;
                info!(previous = %old, "enabled net.ipv4.ip_forward");
                self.forward_restore = Some(old);
            }
            Some(_) if self.sysctl.get("net.ipv4.ip_forward")? != "1" => {
                self.sysctl.set("net.ipv4.ip_forward", "1")?;
                warn!("net.ipv4.ip_forward was off with containers attached; turned it on again");
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn restore_forwarding(&mut self) {
        if let Some(old) = self.forward_restore.take() {
            match self.sysctl.set("net.ipv4.ip_forward", &old) {
                Ok(_) => info!(value = %old, "restored net.ipv4.ip_forward"),
                Err(e) => warn!(error = %e, "restoring net.ipv4.ip_forward failed"),
            }
        }
    }

    async fn change(&mut self, changes: &[Change]) -> Result<(), FirewallError> {
        // The usual case, element changes to a table in place, costs nothing per machine: the
        // model is changed in place once the kernel took the batch.
        let applied = if self.present {
            self.nft.apply_changes_async(changes).await.map_err(Some)
        } else {
            Err(None) // no table yet: made whole below
        };
        // Links added (true) or removed (false), for firewalld and other firewalls' chains.
        let links_changed: Vec<(bool, IfName)> = match applied {
            Ok(()) => changes
                .iter()
                .filter(|c| self.installed.apply(c))
                .filter_map(|c| match c {
                    Change::AddIface(name) => Some((true, name.clone())),
                    Change::DelIface(name) => Some((false, name.clone())),
                    _ => None,
                })
                .collect(),
            Err(refused) => {
                let mut desired = self.installed.clone();
                for c in changes {
                    desired.apply(c);
                }
                if let Some(e) = refused {
                    // The table may have been removed from outside: rebuild it whole with the
                    // change included (atomic), or fail if that fails too.
                    warn!(error = %e, "element change refused; rebuilding tables inet and bridge rnet");
                }
                self.nft.apply_async(&nat::render_table(&desired)).await?;
                let old: BTreeSet<&IfName> = self.installed.ifaces().collect();
                let new: BTreeSet<&IfName> = desired.ifaces().collect();
                let links_changed = new
                    .difference(&old)
                    .map(|n| (true, (*n).clone()))
                    .chain(old.difference(&new).map(|n| (false, (*n).clone())))
                    .collect();
                self.installed = desired;
                links_changed
            }
        };
        crate::timing::lap("nft");
        self.generation += 1;
        self.present = true;
        if !links_changed.is_empty() {
            self.sync_host_on_change(&links_changed).await;
        }
        Ok(())
    }

    /// Sets the desired state after a restart (the adopted machines) without applying it;
    /// [`Firewall::reconcile`] then makes the kernel match.
    pub fn adopt(&mut self, links: &[LinkRules]) -> Result<(), FirewallError> {
        let mut r = Ruleset::new();
        for l in links {
            for c in l.changes(true)? {
                r.apply(&c);
            }
        }
        self.installed = r;
        self.generation += 1;
        Ok(())
    }

    /// Makes the kernel's tables match what we have ([`Firewall::reconcile_tables`]), then our
    /// rules in other firewalls' chains ([`Firewall::sync_host`], failures logged). Returns
    /// whether it had to repair the tables.
    pub async fn reconcile(&mut self) -> Result<bool, FirewallError> {
        let repaired = self.reconcile_tables().await?;
        self.sync_host_logged().await;
        Ok(repaired)
    }

    /// Makes the kernel's table match what we have: re-creates it if it is missing or was
    /// changed from outside, removes a stale one when we have nothing. Returns whether it had
    /// to repair anything.
    pub async fn reconcile_tables(&mut self) -> Result<bool, FirewallError> {
        let listing = self.nft.list_table_async().await?;
        if self.installed.is_empty() {
            self.present = false;
            if listing.is_some() {
                self.nft.apply_async(&nat::render_delete_table()).await?;
                info!("removed stale tables inet rnet and bridge rnet");
            }
            self.restore_forwarding();
            self.forward6.restore(&self.sysctl);
            return Ok(listing.is_some());
        }
        if self.installed.ifaces().next().is_some()
            || self.installed.subnets().next().is_some()
            || self.installed.ports().next().is_some()
        {
            self.ensure_forwarding()?;
        }
        if self.installed.subnets().any(|n| n.is_ipv6())
            || self.installed.ports().any(|p| p.container_addr().is_ipv6())
        {
            self.forward6.ensure(&self.sysctl)?;
        }
        let observed = match &listing {
            Some(l) => Some(nat::observe(l)?),
            None => None,
        };
        let repaired = match nat::plan(observed.as_ref(), &self.installed) {
            None => false,
            Some(batch) => {
                self.nft.apply_async(&batch).await?;
                true
            }
        };
        self.present = true;
        Ok(repaired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat::{FakeNft, Nft};

    fn link(name: &str, subnet: &str, ports: &[&str]) -> LinkRules {
        let subnet: Ipv4Network = subnet.parse().unwrap();
        let container = IpAddr::V4(std::net::Ipv4Addr::from(u32::from(subnet.network()) + 2));
        let specs: Vec<PortSpec> = ports.iter().map(|p| p.parse().unwrap()).collect();
        LinkRules::new(name, subnet, container, &specs).unwrap()
    }

    fn sysctl() -> (tempfile::TempDir, Sysctl) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4/conf")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0").unwrap();
        for l in ["ve-a", "ve-b"] {
            std::fs::create_dir_all(dir.path().join("net/ipv4/conf").join(l)).unwrap();
            std::fs::write(
                dir.path()
                    .join("net/ipv4/conf")
                    .join(l)
                    .join("route_localnet"),
                "0",
            )
            .unwrap();
        }
        let s = Sysctl::new(dir.path());
        (dir, s)
    }

    #[tokio::test]
    async fn first_link_creates_the_table_then_elements_only_and_last_removes_it() {
        let (_dir, sys) = sysctl();
        let mut fw = Firewall::new(FakeNft::new(), sys.clone(), None);
        let a = link("ve-a", "192.168.0.0/28", &["8080:80"]);
        let b = link("ve-b", "192.168.0.16/28", &[]);
        fw.add(&a).await.unwrap();
        assert_eq!(sys.get("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(fw.forward_restore(), Some("0"));
        assert_eq!(sys.get("net.ipv4.conf.ve-a.route_localnet").unwrap(), "1");
        fw.add(&b).await.unwrap();
        let batches = fw.nft.batches.clone();
        assert_eq!(batches.len(), 2);
        assert!(
            nat::apply::summarize(&batches[1]).contains("element"),
            "{}",
            nat::apply::summarize(&batches[1])
        );
        assert!(!nat::apply::summarize(&batches[1]).contains("rule"));
        fw.remove(&a).await.unwrap();
        assert!(fw.nft.table_exists());
        fw.remove(&b).await.unwrap();
        assert!(!fw.nft.table_exists());
        assert_eq!(sys.get("net.ipv4.ip_forward").unwrap(), "0");
        assert_eq!(fw.forward_restore(), None);
    }

    fn port(name: &str, addr: Option<&str>) -> LinkRules {
        LinkRules {
            guard: Some(GuardedPort {
                ifname: IfName::new(name).unwrap(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                addr: addr.map(|a| a.parse().unwrap()),
            }),
            ..LinkRules::default()
        }
    }

    #[tokio::test]
    async fn a_guarded_port_of_an_admin_bridge_does_not_turn_on_forwarding() {
        let (_dir, sys) = sysctl();
        let mut fw = Firewall::new(FakeNft::new(), sys.clone(), None);
        let admin = port("vb-adm", None);
        fw.add(&admin).await.unwrap();
        assert_eq!(sys.get("net.ipv4.ip_forward").unwrap(), "0");
        assert_eq!(fw.forward_restore(), None);
        assert!(fw.nft.bridge_table_exists());
        assert_eq!(fw.nft.elements("ports").len(), 1);
        assert_eq!(fw.nft.elements("zone_ports").len(), 0);
        let member = port("vb-m", Some("192.168.5.7"));
        fw.add(&member).await.unwrap();
        assert_eq!(fw.nft.elements("port_addrs").len(), 1);
        fw.remove(&admin).await.unwrap();
        fw.remove(&member).await.unwrap();
        assert!(!fw.nft.table_exists() && !fw.nft.bridge_table_exists());
    }

    #[tokio::test]
    async fn a_flushed_table_is_rebuilt_with_all_elements() {
        let (_dir, sys) = sysctl();
        let mut fw = Firewall::new(FakeNft::new(), sys, None);
        fw.add(&link("ve-a", "192.168.0.0/28", &["8080:80"]))
            .await
            .unwrap();
        fw.add(&port("vb-m", Some("192.168.5.7"))).await.unwrap();
        assert!(!fw.reconcile().await.unwrap());
        fw.nft.flush_ruleset();
        assert!(fw.reconcile().await.unwrap());
        assert!(fw.nft.table_exists());
        assert_eq!(fw.nft.elements("port_macs").len(), 1);
        // The bridge table alone removed from outside is noticed too.
        fw.nft.delete_bridge_table();
        assert!(fw.reconcile().await.unwrap());
        assert_eq!(fw.nft.elements("port_addrs").len(), 1);
        // A change after an unnoticed flush rebuilds the table too.
        fw.nft.flush_ruleset();
        fw.add(&link("ve-b", "192.168.0.16/28", &[])).await.unwrap();
        assert!(fw.nft.table_exists());
        assert!(!fw.reconcile().await.unwrap());
    }

    /// Docker's layout under iptables-nft (FORWARD policy drop jumping to DOCKER-USER, which
    /// holds Docker's `return`) and a hardened host's inet input chain with policy drop.
    fn docker_host() -> FakeNft {
        let mut nft = FakeNft::new();
        nft.add_foreign_chain("ip", "filter", "FORWARD", Some("forward"), "drop");
        nft.add_foreign_chain("ip", "filter", "DOCKER-USER", None, "");
        nft.add_foreign_rule(
            "ip",
            "filter",
            "FORWARD",
            serde_json::json!([{"jump": {"target": "DOCKER-USER"}}]),
        );
        nft.add_foreign_rule(
            "ip",
            "filter",
            "DOCKER-USER",
            serde_json::json!([{"return": null}]),
        );
        nft.add_foreign_chain("inet", "hardened", "input", Some("input"), "drop");
        nft
    }

    #[tokio::test]
    async fn our_rules_in_foreign_chains_match_our_link_group_whatever_the_number_of_links() {
        let (_dir, sys) = sysctl();
        let mut fw = Firewall::new(docker_host(), sys, None);
        let a = link("ve-a", "192.168.0.0/28", &["8080:80"]);
        let b = link("ve-b", "192.168.0.16/28", &[]);
        fw.add(&a).await.unwrap();
        let docker = ["rnet: from our links", "rnet: to our links", ""];
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"),
            docker,
            "at the head, Docker's return kept"
        );
        assert_eq!(fw.nft.xt_inserts, 2, "iptables' table through iptables");
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "FORWARD"),
            [""],
            "DOCKER-USER rather than FORWARD"
        );
        // DHCP, DNS udp and tcp, and ICMPv6 (an inet chain also sees IPv6), natively.
        assert_eq!(
            fw.nft.foreign_comments("inet", "hardened", "input").len(),
            4
        );
        assert_eq!(
            fw.host_chains(),
            [
                "ip filter DOCKER-USER (forward: policy drop)",
                "inet hardened input (input: policy drop)"
            ]
        );
        // A second link, and the first one gone while the second stays, change nothing in
        // foreign tables and look at none of them.
        let lists = fw.nft.ruleset_lists();
        fw.add(&b).await.unwrap();
        fw.remove(&a).await.unwrap();
        assert_eq!(fw.nft.ruleset_lists(), lists, "no look at other tables");
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"),
            docker
        );
        fw.add(&a).await.unwrap();
        // A check with nothing changed does nothing (no batch, no duplicate).
        let batches = fw.nft.batches.len();
        assert!(!fw.sync_host().await.unwrap());
        assert_eq!(fw.nft.batches.len(), batches);

        // Docker re-creates DOCKER-USER: ours come back, once.
        fw.nft.flush_foreign_chain("ip", "filter", "DOCKER-USER");
        assert!(fw.sync_host().await.unwrap());
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"),
            ["rnet: from our links", "rnet: to our links"]
        );
        // `nft flush ruleset` and the other firewall back: the reconcile rebuilds both.
        fw.nft.flush_ruleset();
        let mut host = docker_host();
        std::mem::swap(&mut fw.nft, &mut host);
        assert!(fw.reconcile().await.unwrap());
        assert!(fw.nft.table_exists());
        assert_eq!(
            fw.nft.foreign_comments("inet", "hardened", "input").len(),
            4
        );

        fw.remove(&a).await.unwrap();
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"),
            docker
        );
        fw.remove(&b).await.unwrap();
        assert_eq!(fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"), [""]);
        assert!(
            fw.nft
                .foreign_comments("inet", "hardened", "input")
                .is_empty()
        );
        assert!(fw.host_chains().is_empty());
    }

    #[tokio::test]
    async fn the_per_link_rules_of_an_earlier_rnetd_are_replaced_by_the_group_rules() {
        let (_dir, sys) = sysctl();
        let mut nft = docker_host();
        let old: nftables::schema::Nftables<'static> = serde_json::from_value(serde_json::json!(
            {"nftables": [{"insert": {"rule": {"family": "ip", "table": "filter",
                "chain": "DOCKER-USER", "comment": "rnet: from ve-old",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                    "right": "ve-old"}}, {"accept": null}]}}}]}
        ))
        .unwrap();
        nft.apply(&old).unwrap();
        let mut fw = Firewall::new(nft, sys, None);
        fw.add(&link("ve-a", "192.168.0.0/28", &[])).await.unwrap();
        assert_eq!(
            fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"),
            ["rnet: from our links", "rnet: to our links", ""]
        );
    }

    #[tokio::test]
    async fn a_change_from_some_links_to_none_looks_at_the_tables_the_last_full_look_found() {
        let (_dir, sys) = sysctl();
        let mut fw = Firewall::new(docker_host(), sys, None);
        let watched = fw.watched_tables();
        fw.add(&link("ve-a", "192.168.0.0/28", &[])).await.unwrap();
        let tables = |names: &[(&str, &str)]| -> Vec<TableRef> {
            names
                .iter()
                .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                .collect()
        };
        // The first change had no full look before it: it made one.
        assert_eq!(
            *watched.borrow(),
            tables(&[("ip", "filter"), ("inet", "hardened")])
        );
        // A firewall that appears later (with a nat table beside it, which no look lists) ...
        fw.nft
            .add_foreign_chain("ip", "nat", "POSTROUTING", None, "");
        fw.nft
            .add_foreign_chain("ip6", "strict", "fwd", Some("forward"), "drop");
        // ... is not seen by the next change, which looks at nothing,
        fw.add(&link("ve-b", "192.168.0.16/28", &[])).await.unwrap();
        assert!(fw.nft.foreign_comments("ip6", "strict", "fwd").is_empty());
        // but by the check its `nft monitor` line starts (a full look), and watched after.
        assert!(fw.sync_host().await.unwrap());
        assert_eq!(fw.nft.foreign_comments("ip6", "strict", "fwd").len(), 2);
        assert_eq!(
            *watched.borrow(),
            tables(&[("ip", "filter"), ("inet", "hardened"), ("ip6", "strict")])
        );
        assert!(hostfw::relevant(
            "delete rule ip6 strict fwd handle 3",
            &watched.borrow()
        ));
        assert!(!hostfw::relevant(
            "add rule ip nat POSTROUTING counter masquerade",
            &watched.borrow()
        ));
        // The last link gone: ours leave every known table, with no `list chains`.
        fw.remove(&link("ve-a", "192.168.0.0/28", &[]))
            .await
            .unwrap();
        fw.remove(&link("ve-b", "192.168.0.16/28", &[]))
            .await
            .unwrap();
        for (family, table, chain) in [
            ("ip6", "strict", "fwd"),
            ("ip", "filter", "DOCKER-USER"),
            ("inet", "hardened", "input"),
        ] {
            assert!(
                fw.nft
                    .foreign_comments(family, table, chain)
                    .iter()
                    .all(|c| !c.starts_with("rnet: ")),
                "{family} {table} {chain}"
            );
        }
    }

    #[tokio::test]
    async fn off_touches_no_foreign_chain_and_removes_ours_left_there() {
        let (_dir, sys) = sysctl();
        let mut nft = docker_host();
        // Left by an earlier rnetd with --host-firewall=auto.
        let view = nat::detect(&nft.list_ruleset().unwrap());
        let plan = nat::plan_host(&view, Some(LINK_GROUP)).unwrap();
        for batch in plan
            .batch
            .iter()
            .chain(plan.iptables.iter().map(|x| &x.native))
        {
            nft.apply(batch).unwrap();
        }
        assert_eq!(nft.foreign_comments("ip", "filter", "DOCKER-USER").len(), 3);
        let mut fw = Firewall::new(nft, sys, None).with_host_mode(HostFwMode::Off);
        fw.reconcile().await.unwrap();
        assert_eq!(fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"), [""]);
        fw.add(&link("ve-a", "192.168.0.0/28", &[])).await.unwrap();
        assert!(fw.nft.table_exists());
        assert_eq!(fw.nft.foreign_comments("ip", "filter", "DOCKER-USER"), [""]);
        assert!(
            fw.nft
                .foreign_comments("inet", "hardened", "input")
                .is_empty()
        );
        assert!(fw.host_chains().is_empty());
    }
}
