#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod apply;
pub mod elements;
pub mod error;
mod expr;
#[cfg(any(test, feature = "testing"))]
mod fake;
pub mod hostfw;
pub mod model;
pub mod names;
pub mod netlink;
pub mod observe;
pub mod rules;

#[cfg(any(test, feature = "testing"))]
pub use apply::FakeNft;
pub use apply::{AsyncNft, Nft, NftCli, insert_with_iptables, iptables_programs, run_iptables};
pub use elements::{render_change, render_changes};
pub use error::{Error, Result};
pub use hostfw::{
    ForeignChain, HostPlan, HostView, OurRule, TableRef, XtInsert, detect, detect_with_saves,
    hooked_tables, plan_host, restored_tables,
};
pub use model::{Change, GuardedPort, IfName, Mac, PortMapping, PortRange, Proto, Ruleset};
pub use netlink::NfNetlink;
pub use observe::{Observed, observe, plan};
pub use rules::{render_delete_table, render_table, rule_count};
