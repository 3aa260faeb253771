//! The vocabulary rnet's crates share: the wire API between `rnet` (and any other client) and
//! `rnetd`, and the typed values both sides and `nat` speak.
//!
//! One request per connection: a length-prefixed JSON [`Request`] (the container's network
//! namespace travels with it as an `SCM_RIGHTS` fd), then one [`Response`]. Types reject unknown
//! fields, so a client and a daemon that disagree fail loudly instead of half-working.
//!
//! No async runtime and no netlink: the launcher links this crate and stays lean.

pub mod fsutil;
mod ifname;
mod mac;
mod name;
mod port;
mod types;
pub mod wire;

pub use ifname::{IfName, IfNameError, IfPair, MAX_IFNAME};
pub use mac::{Mac, MacError};
pub use name::{MachineName, NameError};
pub use port::{PortError, PortSpec, Proto};
pub use types::*;
pub use wire::{Client, ClientError, Pending};

/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "rnetd.sock";

/// The default runtime directory (`--runtime-dir`, `RNET_RUNTIME_DIR`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/rnet";

/// The default state directory (`--state-dir`, `RNET_STATE_DIR`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rnet";
