//! Command-line arguments, nspawn-compatible where nspawn has the option.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use netd::api::{self, MachineName, PortSpec};

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
    /// Show one attached machine.
    Status {
        /// The machine.
        machine: MachineName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    /// Publish a host port to the container: `[tcp:|udp:][ADDR:]HOST[:CONT]`, ranges
    /// `8000-8009:9000-9009`, an IPv6 ADDR in brackets (repeatable; needs --network-veth).
    /// Reachable on every local address of the host, 127.0.0.1 included, unless ADDR is given.
    #[arg(short = 'p', long = "port", value_name = "SPEC")]
    pub ports: Vec<PortSpec>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}
