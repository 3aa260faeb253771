//! Attachments that no process owns: the doors for other runtimes (a CNI plugin's container,
//! a named namespace at `/run/netns/NAME`) attach a network namespace identified by a path and
//! an owner key ([`Holder`]) instead of a pid. rnetd keeps such an attachment until it is
//! released (`Release`, `ReleaseExcept`) or detached, and across its own restarts while the path
//! still names the same namespace (its nsfs device and inode are kept in the state file).
//!
//! The attach itself is the ordinary one (`Machines::attach`); only the checks differ: the fd
//! must be the namespace at the holder's path (not "the pid's own"), and no pidfd is watched.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use tracing::{info, warn};

use crate::api::{ApiError, ErrorKind, Holder, MachineName};

use super::apply::Deletes;
use super::registry::Registry;
use super::system::{Procs, System};
use super::{Machines, bad};

/// Refuses a second attachment for the same owner (a CNI ADD repeated without a DEL).
pub(super) fn check_owner_free(registry: &Registry, holder: &Holder) -> Result<(), ApiError> {
    let taken = registry.machines.iter().find(|(_, e)| {
        e.saved
            .machine
            .held
            .as_ref()
            .is_some_and(|h| h.owner == holder.owner)
    });
    match taken {
        Some((name, _)) => Err(ApiError::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} is already attached (as machine {name}); release it first",
                holder.owner
            ),
        )),
        None => Ok(()),
    }
}

/// The machines held for owners that `pick` selects.
fn held_by(registry: &Registry, pick: impl Fn(&str) -> bool) -> Vec<MachineName> {
    registry
        .machines
        .iter()
        .filter(|(_, e)| {
            e.saved
                .machine
                .held
                .as_ref()
                .is_some_and(|h| pick(&h.owner))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

impl<S: System> Machines<S> {
    /// Checks the namespace passed for a held attachment: no pid, a network namespace, the one
    /// at the holder's path, not rnetd's own. Returns its identity, for the state file.
    pub(super) fn check_held(
        &self,
        pid: u32,
        holder: &Holder,
        netns: &OwnedFd,
    ) -> Result<(u64, u64), ApiError> {
        if pid != 0 {
            return Err(bad(format!(
                "an attachment held for {} has no process: pid must be 0, not {pid}",
                holder.owner
            )));
        }
        self.procs
            .check_netns(netns.as_fd())
            .map_err(|e| bad(e.to_string()))?;
        let ns = self
            .procs
            .ns_id(netns.as_fd())
            .map_err(|e| bad(format!("cannot inspect the passed fd: {e}")))?;
        let path = &holder.netns;
        let at_path = File::open(path).map_err(|e| {
            bad(format!(
                "cannot open network namespace {}: {e}",
                path.display()
            ))
        })?;
        self.procs.check_netns(at_path.as_fd()).map_err(|e| {
            bad(format!(
                "{} is not a network namespace: {e}",
                path.display()
            ))
        })?;
        let path_ns = self
            .procs
            .ns_id(at_path.as_fd())
            .map_err(|e| bad(format!("cannot inspect {}: {e}", path.display())))?;
        if ns != path_ns {
            return Err(bad(format!(
                "the passed fd is not the network namespace at {}",
                path.display()
            )));
        }
        if self.procs.own_netns_id().ok() == Some(ns) {
            return Err(bad(
                "the passed network namespace is rnetd's own; a container needs a private one"
                    .into(),
            ));
        }
        Ok(ns)
    }

    /// Whether a held attachment's namespace is still there at its path, the same one (a
    /// restart adopts it then; otherwise it is torn down).
    pub(super) fn held_alive(&self, holder: &Holder, saved: Option<(u64, u64)>) -> bool {
        let Ok(file) = File::open(&holder.netns) else {
            return false;
        };
        self.procs.check_netns(file.as_fd()).is_ok()
            && saved.is_some()
            && self.procs.ns_id(file.as_fd()).ok() == saved
    }

    /// `Release`: detaches what is held for `owner`; nothing held is not an error (CNI's DEL is
    /// idempotent).
    pub async fn release(&self, owner: &str) -> Result<Vec<MachineName>, ApiError> {
        Holder::check_owner(owner).map_err(bad)?;
        self.release_where(|o| o == owner).await
    }

    /// `ReleaseExcept`: detaches what is held for owners starting with `prefix` but not in
    /// `keep` (CNI's GC with `cni.dev/valid-attachments`).
    pub async fn release_except(
        &self,
        prefix: &str,
        keep: &[String],
    ) -> Result<Vec<MachineName>, ApiError> {
        if prefix.is_empty() {
            return Err(bad(
                "release needs an owner prefix (e.g. cni/NETWORK/)".into()
            ));
        }
        self.release_where(|o| o.starts_with(prefix) && !keep.iter().any(|k| k == o))
            .await
    }

    async fn release_where(
        &self,
        pick: impl Fn(&str) -> bool,
    ) -> Result<Vec<MachineName>, ApiError> {
        let mut registry = self.registry.lock().await;
        let names = held_by(&registry, pick);
        let mut failed = Vec::new();
        for name in &names {
            if let Err(e) = self
                .remove_machine(&mut registry, name, Deletes::Wait)
                .await
            {
                failed.push(e.message);
            }
        }
        if !names.is_empty() {
            self.save(&mut registry).await?;
            info!(count = names.len(), "released held attachments");
        }
        if failed.is_empty() {
            Ok(names)
        } else {
            for f in &failed {
                warn!(failure = %f, "releasing a held attachment failed");
            }
            Err(ApiError::new(ErrorKind::Internal, failed.join("; ")))
        }
    }
}
