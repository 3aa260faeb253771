//! Errors of the nftables layer: each variant names the failed step and carries its object.

use std::io;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the nftables layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An interface name that nftables (and the kernel) would not accept.
    #[error(transparent)]
    IfName(#[from] api::IfNameError),

    /// A port range that is empty, reversed or contains port 0.
    #[error("invalid port range {first}-{last}: {reason}")]
    InvalidPortRange {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A port mapping that cannot be expressed as DNAT (e.g. mixed address families).
    #[error("invalid port mapping {mapping}: {reason}")]
    InvalidPortMapping {
        /// The mapping, as `tcp 203.0.113.2:8080 -> 10.0.0.2:80`.
        mapping: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A MAC address that is not six hexadecimal bytes separated by `:`.
    #[error(transparent)]
    Mac(#[from] api::MacError),

    /// The `nft` program could not be started, or talking to it failed.
    #[error("could not run {program} for {step}")]
    Run {
        /// The program, usually `nft`.
        program: String,
        /// What we were doing: `applying <batch summary>` or `listing table inet rnet`.
        step: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// `nft` ran and refused: the whole batch was rolled back (nft batches are atomic).
    #[error("{program} refused {step}: {stderr}")]
    Refused {
        /// The program, usually `nft`.
        program: String,
        /// What we were doing: `applying <batch summary>` or `listing table inet rnet`.
        step: String,
        /// What `nft` printed on stderr (it names the offending object).
        stderr: String,
    },

    /// `nft` printed something we could not read.
    #[error("could not read the output of {program} for {step}: {detail}")]
    Output {
        /// The program, usually `nft`.
        program: String,
        /// What we were doing.
        step: String,
        /// What was wrong with it (not UTF-8, not the JSON we expect, ...).
        detail: String,
    },

    /// A listing of table `inet rnet` holds an element we did not put there and cannot read.
    #[error("unexpected element in {set} of table inet rnet: {element}")]
    UnexpectedElement {
        /// The set or map.
        set: String,
        /// The element, as JSON.
        element: String,
    },
}
