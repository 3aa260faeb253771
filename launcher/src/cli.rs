//! Command-line arguments, nspawn-compatible where nspawn has the option.

use std::path::PathBuf;

use api::{self, IfName, IfPair, MachineName, PortSpec, ZoneName};
use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;

/// rnet: a lean container launcher and the client of rnetd.
#[derive(Debug, Parser)]
#[command(name = "rnet", version, about, propagate_version = true)]
pub struct Cli {
    /// rnetd's runtime directory (where its socket is).
    #[arg(long, global = true, env = "RNET_RUNTIME_DIR", default_value = api::DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new container (host network unless a network option is given).
    Run(RunArgs),
    /// List the machines rnetd has attached.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage zones (shared bridges `vz-NAME` with a /24, DHCP and masquerade).
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Stop a machine (SIGTERM to its payload; its networking goes with it).
    Stop {
        /// The machine.
        machine: MachineName,
    },
    /// Show one attached machine.
    Status {
        /// The machine.
        machine: MachineName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `rnet zone ...`.
#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// Create a zone that stays without members and across restarts.
    Create {
        /// Zone name (at most 12 characters).
        name: ZoneName,
        /// A fixed subnet (default: a /24 from the pool).
        #[arg(long, value_name = "CIDR")]
        subnet: Option<Ipv4Network>,
        /// Do not masquerade the zone's traffic to the outside.
        #[arg(long)]
        no_masquerade: bool,
        /// Do not run a DHCP server on the zone.
        #[arg(long)]
        no_dhcp: bool,
        /// Members cannot reach each other.
        #[arg(long)]
        isolated: bool,
    },
    /// List zones.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one zone.
    Show {
        /// The zone.
        name: ZoneName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a zone.
    Delete {
        /// The zone.
        name: ZoneName,
        /// Detach its members first.
        #[arg(long)]
        force: bool,
    },
}

/// `rnet run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Machine name (a valid hostname of at most 64 characters); default: the command's name
    /// plus a short random suffix.
    #[arg(short = 'M', long = "machine", value_name = "NAME")]
    pub machine: Option<MachineName>,
    /// Give the container its own network namespace with only `lo`.
    #[arg(long)]
    pub private_network: bool,
    /// Give the container a veth pair: `ve-NAME` on the host, `host0` inside, with a subnet,
    /// addresses and a default route via the host (implies --private-network).
    #[arg(short = 'n', long = "network-veth")]
    pub network_veth: bool,
    /// Put the container in zone Z: `vb-NAME` on bridge `vz-Z` (created with the first member),
    /// a /24 shared by the zone, DHCP and masquerade (implies --network-veth).
    #[arg(long = "network-zone", value_name = "Z")]
    pub network_zone: Option<ZoneName>,
    /// Attach the container to the admin's existing bridge BR: `vb-NAME` on BR, no address,
    /// DHCP or NAT from rnet (implies --network-veth).
    #[arg(long = "network-bridge", value_name = "BR")]
    pub network_bridge: Option<IfName>,
    /// Give the container a macvlan (bridge mode) on host link IF, named mv-IF or NAME
    /// (repeatable; implies --private-network).
    #[arg(long = "network-macvlan", value_name = "IF[:NAME]")]
    pub network_macvlan: Vec<IfPair>,
    /// Give the container an ipvlan (L2) on host link IF, named iv-IF or NAME (repeatable;
    /// implies --private-network).
    #[arg(long = "network-ipvlan", value_name = "IF[:NAME]")]
    pub network_ipvlan: Vec<IfPair>,
    /// Move host link IF into the container (renamed NEW), and back with its name when the
    /// container ends (repeatable; implies --private-network).
    #[arg(long = "network-interface", value_name = "IF[:NEW]")]
    pub network_interface: Vec<IfPair>,
    /// An extra veth pair: HOST on the host, CONT (default HOST) in the container, no address
    /// from rnet (repeatable; implies --private-network).
    #[arg(long = "network-veth-extra", value_name = "HOST[:CONT]")]
    pub network_veth_extra: Vec<IfPair>,
    /// Publish a host port to the container: `[tcp:|udp:][ADDR:]HOST[:CONT]`, ranges
    /// `8000-8009:9000-9009`, ADDR an IPv4 address or `[IPv6]` (repeatable; needs
    /// --network-veth). Reachable on every local address of the host, IPv4 and IPv6,
    /// 127.0.0.1 and [::1] included, unless ADDR is given.
    #[arg(short = 'p', long = "port", value_name = "SPEC")]
    pub ports: Vec<PortSpec>,
    /// IPv6 on the container's veth (default yes): its address in a /64 of rnetd's, a default
    /// route, router advertisements. `no`: IPv4 only (IPv6 switched off on host0).
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = yes_no,
          action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `yes`/`no` (also `true`/`false`, `1`/`0`, `on`/`off`), as systemd spells booleans.
fn yes_no(text: &str) -> Result<bool, String> {
    match text {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not yes or no")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// The first line of clap's error for `args`, as `main` prints it.
    fn refusal(args: &[&str]) -> String {
        let err = Cli::try_parse_from(args).unwrap_err().render().to_string();
        err.lines().next().unwrap().to_owned()
    }

    #[test]
    fn ipv6_ports_and_the_ipv6_switch_parse() {
        let cli = Cli::try_parse_from([
            "rnet",
            "run",
            "-n",
            "-p",
            "[fd00::1]:80",
            "--ipv6=no",
            "--",
            "true",
        ])
        .unwrap();
        let super::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(!run.ipv6);
        assert_eq!(run.ports[0].to_string(), "tcp:[fd00::1]:80:80");
        let cli = Cli::try_parse_from(["rnet", "run", "-n", "--", "true"]).unwrap();
        let super::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.ipv6);
        assert_eq!(
            refusal(&["rnet", "run", "--ipv6=maybe", "--", "true"]),
            r#"error: invalid value 'maybe' for '--ipv6 <yes|no>': "maybe" is not yes or no"#
        );
    }

    #[test]
    fn a_bad_bridge_name_is_refused_when_parsed() {
        assert_eq!(
            refusal(&["rnet", "run", "--network-bridge", "br/0", "--", "true"]),
            r#"error: invalid value 'br/0' for '--network-bridge <BR>': interface name "br/0" contains '/'; use printable ASCII other than '/', ':', '%' and spaces"#
        );
    }
}
