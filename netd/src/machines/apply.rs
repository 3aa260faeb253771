//! Applying plans: [`Machines::apply`] runs [`Step`]s in order with one undo list, undone in
//! reverse when a step fails; [`Machines::remove`] runs [`Removal`]s, every one of them, and
//! returns every failure (a link or element that is already gone counts as removed).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use tokio::sync::Notify;

use tracing::warn;

use crate::api::{ApiError, AttachedLink, ErrorKind, MachineName};
use crate::rtnl::RtnlError;

use super::plan::{Removal, Step};
use super::system::{Ipv6Services, Leases, Links, System};
use super::{Machines, internal};
use crate::timing;

/// What applying steps built so far: ifindexes by name, the extra links made, and how to undo.
#[derive(Debug, Default)]
pub struct Applied {
    /// ifindexes of the links made or known, by name.
    pub indexes: BTreeMap<String, u32>,
    /// Extra links made.
    pub extras: Vec<AttachedLink>,
    /// How to undo what was done, in the order done.
    pub undo: Vec<Removal>,
}

impl Applied {
    /// Starts with links whose ifindex is known (an existing zone's bridge).
    pub fn knowing(known: impl IntoIterator<Item = (String, u32)>) -> Self {
        Self {
            indexes: known.into_iter().collect(),
            ..Self::default()
        }
    }

    fn index(&self, ifname: &str) -> Result<u32, ApiError> {
        self.indexes
            .get(ifname)
            .copied()
            .ok_or_else(|| internal(format!("link {ifname} is not known to the plan")))
    }
}

/// A link error named by the link's name rather than its ifindex.
fn on(ifname: &str) -> impl Fn(RtnlError) -> ApiError + '_ {
    move |e| {
        internal(RtnlError {
            object: ifname.to_owned(),
            ..e
        })
    }
}

/// "interface X already exists" for EEXIST, naming the interface.
fn link_error(e: RtnlError, ifname: &str) -> ApiError {
    if e.errno == Some(libc::EEXIST) {
        ApiError::new(
            ErrorKind::AlreadyExists,
            format!(
                "interface {ifname} already exists on the host; is another container using this name?"
            ),
        )
    } else {
        internal(e)
    }
}

impl<S: System> Machines<S> {
    /// Runs `steps` in order for machine `machine` (whose namespace is `netns`, if it has
    /// one). When a step fails, what was done is undone in reverse and the step's error is
    /// returned (with what could not be undone, if anything).
    pub(super) async fn apply(
        &self,
        machine: Option<&MachineName>,
        steps: &[Step],
        netns: Option<&OwnedFd>,
        done: &mut Applied,
    ) -> Result<(), ApiError> {
        for step in steps {
            let result = self.step(machine, step, netns, done).await;
            timing::lap(step_label(step));
            if let Err(e) = result {
                let undo = std::mem::take(&mut done.undo);
                let failed = self
                    .remove(undo.into_iter().rev(), netns, Deletes::Wait)
                    .await;
                if failed.is_empty() {
                    return Err(e);
                }
                for f in &failed {
                    warn!(failure = %f, "undoing a half-done change failed");
                }
                return Err(ApiError::new(
                    e.kind,
                    format!(
                        "{}; undoing it also failed: {}",
                        e.message,
                        failed.join("; ")
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn step(
        &self,
        machine: Option<&MachineName>,
        step: &Step,
        netns: Option<&OwnedFd>,
        done: &mut Applied,
    ) -> Result<(), ApiError> {
        let netns_of = || {
            netns.ok_or_else(|| internal("the plan needs the container's namespace but has none"))
        };
        match step {
            Step::AddExtras(specs) => {
                let machine =
                    machine.ok_or_else(|| internal("extra links need a machine to belong to"))?;
                let made = self.add_extras(machine, specs, netns_of()?).await?;
                done.extras.extend(made.iter().cloned());
                done.undo.push(Removal::Extras(made));
            }
            Step::AddVeth {
                ifname,
                altname,
                host_mac,
                peer,
                peer_mac,
            } => {
                self.deleted(ifname).await;
                let index = self
                    .links
                    .add_veth(ifname, *host_mac, peer, *peer_mac, netns_of()?.as_fd())
                    .await
                    .map_err(|e| link_error(e, ifname))?;
                done.indexes.insert(ifname.clone(), index);
                done.undo.push(Removal::DelLink(ifname.clone()));
                if let Some(alt) = altname {
                    self.links
                        .add_altname(index, alt)
                        .await
                        .map_err(on(ifname))?;
                }
            }
            Step::AddBridge { ifname } => {
                self.deleted(ifname).await;
                let index = self
                    .links
                    .add_bridge(ifname)
                    .await
                    .map_err(|e| link_error(e, ifname))?;
                done.indexes.insert(ifname.clone(), index);
                done.undo.push(Removal::DelLink(ifname.clone()));
            }
            Step::AddAddress { ifname, net } => {
                let index = done.index(ifname)?;
                self.links
                    .add_address(index, *net)
                    .await
                    .map_err(on(ifname))?;
            }
            Step::AddAddress6 { ifname, net } => {
                let index = done.index(ifname)?;
                self.links
                    .add_address6(index, ifname, *net)
                    .await
                    .map_err(on(ifname))?;
            }
            Step::Advertise(plan) => {
                let index = done.index(&plan.ifname)?;
                self.ipv6.advertise(&plan.link(index)).map_err(|e| {
                    internal(format!(
                        "starting router advertisements on {}: {e}",
                        plan.ifname
                    ))
                })?;
                done.undo
                    .push(Removal::StopAdvertising(plan.ifname.clone()));
            }
            Step::Relay(relays) => {
                // A host service already on [::1]:PORT (sshd on [::]:22) keeps it: the port
                // still works on every other address, so the attach goes on, with a warning.
                let mut started = Vec::new();
                for (spec, target) in relays {
                    match self.ipv6.relay(spec, *target) {
                        Ok(()) => started.push(spec.clone()),
                        Err(e) => warn!(
                            machine = machine.map(MachineName::as_str).unwrap_or("-"),
                            error = %e,
                            "published port not relayed on [::1] (a host service has it)"
                        ),
                    }
                }
                done.undo.push(Removal::StopRelay(started));
            }
            Step::SetUp { ifname } => {
                self.links
                    .set_up(done.index(ifname)?)
                    .await
                    .map_err(on(ifname))?;
            }
            Step::JoinBridge {
                ifname,
                bridge,
                isolated,
            } => {
                let index = done.index(ifname)?;
                let bridge_index = match done.indexes.get(bridge) {
                    Some(i) => *i,
                    None => self
                        .links
                        .lookup(bridge)
                        .await
                        .map_err(internal)?
                        .map(|(i, _)| i)
                        .ok_or_else(|| internal(format!("bridge {bridge} vanished")))?,
                };
                self.links
                    .set_master_up(index, bridge_index)
                    .await
                    .map_err(on(ifname))?;
                if *isolated {
                    self.links
                        .set_port_isolated(index)
                        .await
                        .map_err(on(ifname))?;
                }
            }
            Step::Serve(plan) => {
                let index = done.index(&plan.ifname)?;
                self.leases
                    .serve(&plan.link(index))
                    .await
                    .map_err(internal)?;
                done.undo.push(Removal::StopServing {
                    ifname: plan.ifname.clone(),
                    index,
                });
            }
            Step::RecordLease {
                bridge,
                mac,
                addr,
                hostname,
            } => {
                let index = done.index(bridge)?;
                if !self.leases.record(index, *mac, *addr, hostname).await {
                    return Err(ApiError::new(
                        ErrorKind::PoolExhausted,
                        format!(
                            "address {addr} on {bridge} was leased to another client meanwhile; try again"
                        ),
                    ));
                }
                done.undo.push(Removal::Release { index, mac: *mac });
            }
            Step::AddRules(rules) => {
                let mut firewall = self.firewall.lock().await;
                timing::lap("firewall lock");
                firewall.add(rules).await.map_err(internal)?;
                done.undo.push(Removal::Rules(rules.clone()));
            }
        }
        Ok(())
    }

    /// Runs every removal, whatever fails; returns the failures, one line each. With
    /// [`Deletes::Behind`] links are deleted in the background ([`Machines::delete_behind`]).
    pub(super) async fn remove(
        &self,
        removals: impl IntoIterator<Item = Removal>,
        netns: Option<&OwnedFd>,
        deletes: Deletes,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for r in removals {
            let label = removal_label(&r);
            match r {
                Removal::Rules(rules) => {
                    if let Err(e) = self.firewall.lock().await.remove(&rules).await {
                        failed.push(format!("removing firewall elements: {e}"));
                    }
                }
                Removal::Extras(links) => {
                    failed.extend(self.remove_extras(&links, netns).await);
                }
                Removal::StopServing { ifname, index } => {
                    self.leases.stop(&ifname, index).await;
                }
                Removal::Release { index, mac } => self.leases.release(index, mac),
                Removal::StopAdvertising(ifname) => self.ipv6.stop_advertising(&ifname),
                Removal::StopRelay(specs) => specs.iter().for_each(|s| self.ipv6.stop_relay(s)),
                Removal::DelLink(ifname) if deletes == Deletes::Behind => {
                    self.delete_behind(ifname);
                }
                Removal::DelLink(ifname) => {
                    if let Err(e) = self.links.del_link(&ifname).await {
                        failed.push(format!("deleting link {ifname}: {e}"));
                    }
                }
            }
            timing::lap(label);
        }
        failed
    }
}

/// How a removal deletes links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletes {
    /// Before it returns, failures reported (a detach asked for, an undo, a restart).
    Wait,
    /// In the background (a machine whose process ended: nobody waits for the answer).
    Behind,
}

impl<S: System> Machines<S> {
    /// Deletes link `ifname` in a task of its own. Unregistering a device waits for RCU grace
    /// periods in the kernel (tens of milliseconds), which would otherwise hold the registry's
    /// lock, and every attach behind it, after a container's exit or a detach. A link of the
    /// same name is created only once the deletion is done ([`Machines::deleted`]). A failure is
    /// logged and remembered: the next attach of the name tries once more before it creates
    /// the link (and fails with "interface ... already exists" if that fails too); the next
    /// restart removes the link (it is in our link group) otherwise.
    fn delete_behind(&self, ifname: String) {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let done = Arc::new(Notify::new());
        lock(&self.deleting).insert(ifname.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            if let Err(e) = me.links.del_link(&ifname).await {
                warn!(%ifname, error = %e, "deleting a link in the background failed; the next attach of its name or restart tries again");
                lock(&me.undeleted).insert(ifname.clone());
            }
            let mut deleting = lock(&me.deleting);
            if deleting.get(&ifname).is_some_and(|d| Arc::ptr_eq(d, &done)) {
                deleting.remove(&ifname);
            }
            drop(deleting);
            done.notify_waiters();
        });
    }

    /// Waits until no background deletion of link `ifname` is in progress; deletes it again if
    /// that deletion failed.
    pub(super) async fn deleted(&self, ifname: &str) {
        loop {
            let Some(done) = lock(&self.deleting).get(ifname).cloned() else {
                break;
            };
            let notified = done.notified();
            if !lock(&self.deleting).contains_key(ifname) {
                break;
            }
            notified.await;
        }
        let failed = lock(&self.undeleted).remove(ifname);
        if failed && let Err(e) = self.links.del_link(ifname).await {
            warn!(%ifname, error = %e, "deleting a link again failed");
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A step's phase name in timings (`crate::timing`).
fn step_label(step: &Step) -> &'static str {
    match step {
        Step::AddExtras(_) => "add extras",
        Step::AddVeth { .. } => "add veth",
        Step::AddBridge { .. } => "add bridge",
        Step::AddAddress { .. } => "add address",
        Step::AddAddress6 { .. } => "add address6",
        Step::Advertise(_) => "start ra",
        Step::Relay(_) => "start relay",
        Step::SetUp { .. } => "set up",
        Step::JoinBridge { .. } => "join bridge",
        Step::Serve(_) => "start dhcp+dns",
        Step::RecordLease { .. } => "record lease",
        Step::AddRules(_) => "nft add",
    }
}

/// A removal's phase name in timings (`crate::timing`).
fn removal_label(removal: &Removal) -> &'static str {
    match removal {
        Removal::Rules(_) => "nft remove",
        Removal::Extras(_) => "remove extras",
        Removal::StopServing { .. } => "stop dhcp+dns",
        Removal::Release { .. } => "release lease",
        Removal::StopAdvertising(_) => "stop ra",
        Removal::StopRelay(_) => "stop relay",
        Removal::DelLink(_) => "delete link",
    }
}
