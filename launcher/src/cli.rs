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
    /// Where machine images live (shared with systemd-nspawn and machinectl).
    #[arg(long, global = true, env = "RNET_MACHINES_DIR", default_value = crate::images::DEFAULT_MACHINES_DIR)]
    pub machines_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
// Parsed once; its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a command in a new container (host network unless a network option is given).
    Run(RunArgs),
    /// List the running machines (rnet's launchers and rnetd's attachments).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage zones (shared bridges `vz-NAME` with a /24, DHCP and masquerade).
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Stop a machine: `poweroff` (SIGRTMIN+3 to a systemd init, else SIGTERM; its networking
    /// goes with it).
    Stop {
        /// The machine.
        machine: MachineName,
    },
    /// Named network namespaces (/run/netns/NAME) that rnetd networks and holds.
    #[command(subcommand)]
    Netns(crate::netns::NetnsCommand),
    /// OCI runtime hook (createRuntime: attach; poststop: detach); reads the state on stdin.
    OciHook {
        /// The hook (default: from the state's status).
        stage: Option<crate::oci::Stage>,
    },
    /// Show one machine: leader, image, network, addresses, uptime, resource use.
    Status {
        /// The machine.
        machine: MachineName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change resource limits of a machine (`MemoryMax=2G`, `CPUQuota=50%`, ...): the running
    /// machine's, and those its image keeps for later runs (`NAME.rnet-properties` beside it).
    SetProperty {
        /// Change the running machine only: nothing is kept for later runs.
        #[arg(long)]
        runtime: bool,
        /// The machine.
        machine: MachineName,
        /// `KEY=VALUE` properties.
        #[arg(required = true, value_name = "KEY=VALUE")]
        properties: Vec<crate::cgroup::Property>,
    },
    /// Show CPU, memory and tasks of running machines, refreshed every second (like systemd-cgtop).
    Top {
        /// Print once and exit.
        #[arg(long)]
        once: bool,
    },
    /// List the machine images (OS trees and raw images in the machines directory).
    Images {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a tar archive (plain, gzip, xz or zstd) as a new image.
    ImportTar {
        /// The archive, or `-` for standard input.
        file: String,
        /// The new image's name.
        name: MachineName,
    },
    /// Export an image as a tar archive, compressed by the file's suffix (.gz, .xz, .zst).
    ExportTar {
        /// The image.
        name: MachineName,
        /// The archive to write, or `-` for standard output (uncompressed).
        file: String,
    },
    /// Download a tar archive and import it as a new image.
    PullTar {
        /// http:// or https:// URL of the archive.
        url: String,
        /// The new image's name (default: the archive's file name without its suffixes).
        name: Option<MachineName>,
        /// Check the download against SHA256SUMS beside the URL (`checksum`) or not (`no`).
        #[arg(long, value_enum, default_value = "checksum")]
        verify: crate::images::Verify,
    },
    /// Remove images (and their settings files).
    Remove {
        /// The images.
        #[arg(required = true)]
        names: Vec<MachineName>,
    },
    /// Copy an image (and its settings file) to a new name.
    Clone {
        /// The image.
        name: MachineName,
        /// The copy's name.
        new: MachineName,
    },
    /// Rename an image (and its settings file).
    Rename {
        /// The image.
        name: MachineName,
        /// Its new name.
        new: MachineName,
    },
    /// Start machine images in the background as machinectl does (`-b --network-veth -U`; the
    /// `.nspawn` file decides over these), supervised (a reboot starts them again); returns
    /// when they run. Their output goes to RUNTIME_DIR/logs/NAME.log.
    Start {
        /// The images.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// Be the supervisor, in the foreground (as `rnet@NAME.service` runs it; one machine,
        /// output on stdout and stderr).
        #[arg(long)]
        foreground: bool,
        /// The log file the supervisor records in the machine's entry.
        #[arg(long, hide = true, requires = "foreground")]
        log: Option<PathBuf>,
    },
    /// Power machines off (SIGRTMIN+3 to a systemd init, else SIGTERM) and wait for them.
    Poweroff {
        /// The machines.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reboot machines (SIGINT to a systemd init, else a restart by the supervisor) and wait
    /// until they run again.
    Reboot {
        /// The machines.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Kill machines at once (SIGKILL to the whole container) and wait for them to end.
    Terminate {
        /// The machines.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// Return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run a command (default: the user's shell) in a running machine, with a pty on a terminal.
    Shell {
        /// The user (a name or UID of the machine's /etc/passwd; default root; also `USER@NAME`).
        #[arg(long)]
        uid: Option<String>,
        /// `[USER@]NAME`.
        #[arg(value_name = "[USER@]NAME")]
        target: String,
        /// The command and its arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// The machine's login prompt on a pty (interactive only).
    Login {
        /// The machine.
        machine: MachineName,
    },
    /// Start a machine image at boot: install `rnet@.service` and link `rnet@NAME.service`
    /// into `machines.target.wants/`.
    Enable {
        /// The images.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// The root the units are installed below (default `/`).
        #[arg(long, env = "RNET_SYSTEMD_ROOT", default_value = "/")]
        root: PathBuf,
    },
    /// Stop starting machine images at boot (removes the `machines.target.wants/` link).
    Disable {
        /// The images.
        #[arg(required = true)]
        names: Vec<MachineName>,
        /// The root the units are installed below (default `/`).
        #[arg(long, env = "RNET_SYSTEMD_ROOT", default_value = "/")]
        root: PathBuf,
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
        /// A zone spanning hosts: its definition and hosts are kept in etcd (rnetd started
        /// with --etcd), members on different hosts reach each other over VXLAN. --subnet is
        /// then the whole zone's subnet, of which this host takes a slice.
        #[arg(long)]
        distributed: bool,
        /// The VXLAN network identifier of a distributed zone (default: the zone's record in
        /// etcd, or one derived from the name).
        #[arg(long, value_name = "N", requires = "distributed")]
        vni: Option<u32>,
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
    /// Whether the machine's `.nspawn` settings file is read (`yes`: trusted only from
    /// /etc/systemd/nspawn and /run/systemd/nspawn, the command line wins), ignored (`no`),
    /// trusted wherever it is (`trusted`), or wins over the command line (`override`); with
    /// --directory.
    #[arg(
        long = "settings",
        value_enum,
        default_value = "yes",
        value_name = "MODE"
    )]
    pub settings: SettingsMode,
    /// A resource limit of the container's cgroup, as systemd-nspawn's `--property=`:
    /// `MemoryMax=`, `MemoryHigh=`, `CPUQuota=`, `TasksMax=`, `CPUWeight=` (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<crate::cgroup::Property>,
    /// Run the container in the caller's cgroup, as systemd-nspawn's `--keep-unit`: no cgroup
    /// `rnet-NAME` of its own, so the unit that runs `rnet` (e.g. a systemd service with its
    /// `MemoryMax=`) accounts and limits it. Such a machine takes no `--property` and no
    /// `rnet set-property`, and `rnet top` shows no usage for it.
    #[arg(long = "keep-unit", conflicts_with_all = ["properties", "boot"])]
    pub keep_unit: bool,
    /// Run the container in DIR, an OS tree (a directory with `/usr/`; with --boot also an
    /// os-release file): its own mount, PID, UTS and IPC namespaces, DIR as root, `/proc`,
    /// read-only `/sys`, a minimal `/dev`, tmpfs `/run` and `/tmp`, nspawn's isolation.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Boot the tree's init (`/usr/lib/systemd/systemd`, `/lib/systemd/systemd`, `/sbin/init`) as
    /// PID 1; CMD are its arguments (needs --directory).
    #[arg(short = 'b', long = "boot", requires = "directory", conflicts_with_all = ["as_pid1", "as_pid2"])]
    pub boot: bool,
    /// Run CMD as PID 2 under rnet's minimal init (the default with --directory).
    #[arg(long = "as-pid2", requires = "directory", conflicts_with = "as_pid1")]
    pub as_pid2: bool,
    /// Run CMD as PID 1 (for a payload that is an init: it must reap zombies).
    #[arg(long = "as-pid1", requires = "directory")]
    pub as_pid1: bool,
    /// Bind SRC of the host on DST (default SRC) in the container; OPTS: `rbind` (default) or
    /// `norbind` (repeatable; needs --directory).
    #[arg(long = "bind", value_name = "SRC[:DST[:OPTS]]", requires = "directory")]
    pub bind: Vec<String>,
    /// As --bind, read-only.
    #[arg(
        long = "bind-ro",
        value_name = "SRC[:DST[:OPTS]]",
        requires = "directory"
    )]
    pub bind_ro: Vec<String>,
    /// Mount a tmpfs on PATH in the container, OPTS its mount options (default `mode=0755`)
    /// (repeatable; needs --directory).
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]", requires = "directory")]
    pub tmpfs: Vec<String>,
    /// Set an environment variable of the payload (repeatable; needs --directory).
    #[arg(
        short = 'E',
        long = "setenv",
        value_name = "NAME[=VALUE]",
        requires = "directory"
    )]
    pub setenv: Vec<String>,
    /// The payload's working directory in the container (needs --directory).
    #[arg(long = "chdir", value_name = "PATH", requires = "directory")]
    pub chdir: Option<PathBuf>,
    /// Run the payload as USER (a name or UID of the tree's /etc/passwd; needs --directory).
    #[arg(
        short = 'u',
        long = "user",
        value_name = "USER",
        requires = "directory"
    )]
    pub user: Option<String>,
    /// The container's hostname (default: the machine name; needs --directory).
    #[arg(long = "hostname", value_name = "NAME", requires = "directory")]
    pub hostname: Option<String>,
    /// Mount the container's root read-only (needs --directory).
    #[arg(long = "read-only", requires = "directory")]
    pub read_only: bool,
    /// How the payload's standard input and output are connected: `interactive` (a pty
    /// relayed to the terminal; Ctrl-] three times detaches), `read-only` (a pty, output only),
    /// `passive` (a pty connected nowhere), `pipe` (rnet's own stdio); default `interactive`
    /// on a terminal, else `pipe` (needs --directory).
    #[arg(long = "console", value_name = "MODE", requires = "directory")]
    pub console: Option<String>,
    /// Run on an overlay of DIR whose changes live in memory and are gone at exit.
    #[arg(short = 'x', long = "ephemeral", requires = "directory")]
    pub ephemeral: bool,
    /// A user namespace for the container: `no` (the default), `yes` (the range the tree's root
    /// directory's owner tells), `pick` (that, or a free 64K range), `identity` (UIDs map to
    /// themselves), or `UID[:RANGE]` (container UID 0 is host UID UID; RANGE 65536 by default).
    #[arg(long = "private-users", value_name = "MODE", requires = "directory")]
    pub private_users: Option<String>,
    /// How the tree's file ownership follows the user namespace's range: `off`, `chown`
    /// (rewritten once, on disk), `map` (an idmapped mount, the tree unchanged) or `auto` (map
    /// where the kernel and filesystem allow it, else chown); default `auto` with `pick`, else
    /// `off`.
    #[arg(
        long = "private-users-ownership",
        value_name = "MODE",
        requires = "directory"
    )]
    pub private_users_ownership: Option<String>,
    /// `--private-users=pick --private-users-ownership=auto`.
    #[arg(short = 'U', requires = "directory", conflicts_with = "private_users")]
    pub userns: bool,
    /// Set the payload's no_new_privs flag (`yes`, the default, or `no`; needs --directory).
    #[arg(
        long = "no-new-privileges",
        value_name = "BOOL",
        requires = "directory"
    )]
    pub no_new_privileges: Option<String>,
    /// The container's /etc/resolv.conf, as systemd-nspawn's `--resolv-conf=`: `off`, `delete`,
    /// `copy-SRC`, `replace-SRC` (over a symlink too), `bind-SRC` (read-only), SRC one of `host`
    /// (/etc/resolv.conf), `static` (/usr/lib/systemd/resolv.conf), `uplink` and `stub`
    /// (systemd-resolved's /run/systemd/resolve/resolv.conf, stub-resolv.conf); or `auto` (the
    /// default): with a private network rnet configured, a file naming its DNS server, else as
    /// nspawn picks (needs --directory).
    #[arg(long = "resolv-conf", value_name = "MODE", requires = "directory")]
    pub resolv_conf: Option<String>,
    /// The container's /etc/localtime, as systemd-nspawn's `--timezone=`: `off`, `copy`, `bind`,
    /// `symlink`, `delete`, or `auto` (the default: a symlink into the tree's zoneinfo for the
    /// host's zone, the host's file where the tree lacks the zone; needs --directory).
    #[arg(long = "timezone", value_name = "MODE", requires = "directory")]
    pub timezone: Option<String>,
    /// IPv6 on the container's veth (default yes): its address in a /64 of rnetd's, a default
    /// route, router advertisements. `no`: IPv4 only (IPv6 switched off on host0).
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = yes_no,
          action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// The command and its arguments (with --directory: default `/bin/sh`; with --boot: the
    /// init's arguments).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--settings=`: whether settings files are read, trusted, and win over the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SettingsMode {
    /// Read them; a file beside the image is untrusted; the command line wins.
    #[default]
    Yes,
    /// Ignore settings files.
    No,
    /// Read them and trust every file, also one beside the image.
    Trusted,
    /// Read them; the file wins over the command line (as `systemd-nspawn@.service` runs).
    Override,
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
