//! `rnetd`: the rnet network daemon.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnetwork::Ipv4Network;
use netd::api::{self, SOCKET_NAME};
use netd::firewall::hostfw::HostFwMode;
use netd::machines::{Machines, Settings};
use netd::rtnl::Rtnl;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

/// The rnet network daemon: owns the host side of container networking.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Runtime directory: socket, attachments, leases (survives a restart, not a reboot).
    #[arg(long, env = "RNET_RUNTIME_DIR", default_value = api::DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// State directory: explicitly created zones, fallback machine id.
    #[arg(long, env = "RNET_STATE_DIR", default_value = api::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Address ranges the container subnets are cut from, in order (repeatable).
    #[arg(long = "pool", value_name = "CIDR")]
    pools: Vec<Ipv4Network>,
    /// Prefix length of each `ve-` link's subnet (networkd uses /28: 13 clients).
    #[arg(long, value_name = "BITS", default_value_t = netd::machines::VETH_PREFIX,
          value_parser = clap::value_parser!(u8).range(8..=30))]
    veth_prefix: u8,
    /// Upstream DNS servers of the forwarder containers ask at their gateway (repeatable);
    /// default: the nameservers of --resolv-conf, or of --resolved-conf when that names only
    /// systemd-resolved's stub (127.0.0.53).
    #[arg(long = "dns", value_name = "ADDR")]
    dns: Vec<IpAddr>,
    /// The host's resolv.conf, read for the upstream DNS servers (reread when it changes).
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// systemd-resolved's list of upstream servers, used when --resolv-conf names only its stub.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/systemd/resolve/resolv.conf"
    )]
    resolved_conf: PathBuf,
    /// Other firewalls on the host (Docker's iptables FORWARD DROP, an input chain with policy
    /// drop, firewalld): `auto` puts accept rules for exactly our links' traffic at the head of
    /// their dropping chains (comment "rnet: ...") and keeps them there, and while firewalld
    /// runs binds our links to its zone `trusted` at runtime (over D-Bus); `off` leaves them
    /// alone (and removes rules and bindings of ours left in them).
    #[arg(long, value_name = "auto|off", default_value = "auto")]
    host_firewall: HostFwMode,
    /// IPv6 for containers: a /64 per `ve-` link and zone, router advertisements, NAT66,
    /// published ports over IPv6 and on [::1]. `no` gives them IPv4 only.
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = yes_no,
          action = clap::ArgAction::Set)]
    ipv6: bool,
    /// The prefix (/16 to /63) the /64s are cut from; default: a ULA /48 derived from the
    /// machine id (stable across restarts and reboots).
    #[arg(long, value_name = "PREFIX")]
    pool6: Option<ipnetwork::Ipv6Network>,
    /// Seconds between unsolicited router advertisements (RFC 4861's MaxRtrAdvInterval; router
    /// and DNS lifetimes are three times this). Solicitations are answered at once.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=1800))]
    ra_interval: u64,
    /// etcd client URLs (comma-separated), for zones across hosts (`rnet zone create
    /// --distributed`), e.g. `http://10.0.0.1:2379,http://10.0.0.2:2379`.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// This host's name in etcd (default: the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// The underlay of zones across hosts: an interface (its first IPv4 address) or an IPv4
    /// address; VXLAN packets leave from it. Needed with --etcd.
    #[arg(long, value_name = "IF|ADDR")]
    underlay: Option<String>,
    /// Seconds of the lease that keeps this host's keys in etcd: after a crash the other hosts
    /// drop its entries this long after its last renewal.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    etcd_ttl: u64,
    /// Accept VXLAN (UDP 4789) only from the underlay addresses of the hosts of this host's
    /// distributed zones (table `inet rnet_underlay`); without it any sender on the underlay
    /// can inject frames into them.
    #[arg(long)]
    underlay_filter: bool,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `netd=debug`.
    #[arg(long, env = "RNET_LOG", default_value = "info")]
    log: String,
}

fn main() -> Result<()> {
    // Before any thread exists: the arena limit applies to threads not yet started.
    netd::trim::configure();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&args.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !nix::unistd::geteuid().is_root() {
        bail!("rnetd must run as root (it creates links and firewall rules)");
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// `yes`/`no` (also `true`/`false`, `1`/`0`), as systemd spells booleans.
fn yes_no(text: &str) -> Result<bool, String> {
    match text {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not yes or no")),
    }
}

/// The `--log` filter, or an error that names the option.
fn log_filter(text: &str) -> Result<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::try_new(text)
        .with_context(|| format!("--log {text:?} is not a valid filter"))
}

/// Creates `--runtime-dir` (mode 0755) and `--state-dir`; an error names the option.
fn prepare_dirs(args: &Args) -> Result<()> {
    let runtime = args.runtime_dir.display();
    fs::create_dir_all(&args.runtime_dir)
        .with_context(|| format!("--runtime-dir {runtime}: creating the directory"))?;
    fs::set_permissions(&args.runtime_dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("--runtime-dir {runtime}: setting its mode to 0755"))?;
    fs::create_dir_all(&args.state_dir).with_context(|| {
        format!(
            "--state-dir {}: creating the directory",
            args.state_dir.display()
        )
    })
}

async fn run(args: Args) -> Result<()> {
    prepare_dirs(&args)?;
    let machine_id = netd::hostid::load(Path::new("/etc/machine-id"), &args.state_dir)
        .with_context(|| {
            format!(
                "reading /etc/machine-id, or creating machine-id in --state-dir {}",
                args.state_dir.display()
            )
        })?;
    let dns = netd::dns::DnsConfig {
        resolv_conf: args.resolv_conf.clone(),
        resolved_conf: args.resolved_conf.clone(),
        servers: args.dns.clone(),
    };
    let settings = Settings {
        runtime_dir: args.runtime_dir.clone(),
        state_dir: args.state_dir.clone(),
        machine_id,
        pool_ranges: if args.pools.is_empty() {
            netd::pool::default_ranges()
        } else {
            args.pools.clone()
        },
        // Containers ask their gateway (the forwarder).
        dns: Vec::new(),
        veth_prefix: args.veth_prefix,
        host_firewall: args.host_firewall,
        pool6: if args.ipv6 {
            Some(match args.pool6 {
                Some(p) => netd::ipv6::check_pool6(p).map_err(anyhow::Error::msg)?,
                None => netd::ipv6::ula_prefix(machine_id),
            })
        } else {
            None
        },
    };
    if let Some(p) = settings.pool6 {
        info!(pool6 = %p, "IPv6 /64s are cut from this prefix");
    }
    let listener = bind(&args.runtime_dir.join(SOCKET_NAME))?;
    let rtnl = Rtnl::connect()
        .context("opening an rtnetlink socket")?
        .follow_in_use();
    let ra_interval = std::time::Duration::from_secs(args.ra_interval);
    let machines = Machines::start(settings, rtnl, dns, ra_interval)
        .await
        .map_err(|e| anyhow::anyhow!("restoring state: {e}"))?;
    if !args.etcd.is_empty() {
        let fabric = fabric(&args).await?;
        machines.set_fabric(fabric);
        machines.resume_spans().await;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!(socket = %args.runtime_dir.join(SOCKET_NAME).display(), "rnetd listening");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::spawn(netd::trim::run());
    netd::server::run(machines, listener, shutdown).await;
    let _ = fs::remove_file(args.runtime_dir.join(SOCKET_NAME));
    Ok(())
}

/// The fabric of zones across hosts, from `--etcd`, `--node-name`, `--underlay`, `--etcd-ttl`;
/// an error names the option.
async fn fabric(args: &Args) -> Result<std::sync::Arc<netd::distributed::Fabric>> {
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("--node-name not given and the hostname cannot be read")?
            .to_string_lossy()
            .into_owned(),
    };
    netd::distributed::keys::check_node(&node).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    let Some(underlay) = &args.underlay else {
        bail!("--etcd needs --underlay IF|ADDR (where VXLAN packets leave from)");
    };
    let underlay = match underlay.parse::<std::net::Ipv4Addr>() {
        Ok(a) => a,
        Err(_) => Rtnl::connect()
            .context("opening an rtnetlink socket")?
            .first_ipv4(underlay)
            .await
            .with_context(|| format!("--underlay {underlay}"))?
            .with_context(|| {
                format!("--underlay {underlay}: no such interface with an IPv4 address")
            })?,
    };
    let vtep = Rtnl::connect().context("opening an rtnetlink socket")?;
    info!(node = %node, %underlay, etcd = %args.etcd.join(","), "zones across hosts enabled");
    Ok(netd::distributed::Fabric::new(
        netd::distributed::Options {
            endpoints: args.etcd.clone(),
            node,
            underlay,
            ttl: std::time::Duration::from_secs(args.etcd_ttl),
            dir: args.runtime_dir.join("span"),
            underlay_filter: args.underlay_filter,
        },
        vtep,
    ))
}

/// Raises the soft limit on open files to the hard one: every client connection, netns fd and
/// pidfd is an fd, and the usual soft limit of 1024 is too low for many clients at once.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => debug!(limit = soft, "open-file limit already at its maximum"),
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Binds the socket, refusing to steal it from a running daemon and replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another rnetd is already listening on {}", path.display());
    }
    let _ = fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("--runtime-dir: binding the socket {}", path.display()))?;
    // Anyone may connect: reads are open, changes are checked per request with SO_PEERCRED.
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).with_context(|| {
        format!(
            "--runtime-dir: setting the mode of the socket {} to 0666",
            path.display()
        )
    })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_errors_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let parse = |runtime: &Path, state: &Path| {
            Args::try_parse_from([
                "rnetd".as_ref(),
                "--runtime-dir".as_ref(),
                runtime.as_os_str(),
                "--state-dir".as_ref(),
                state.as_os_str(),
            ])
            .unwrap()
        };
        let under_file = file.join("run");
        let err = prepare_dirs(&parse(&under_file, dir.path())).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "--runtime-dir {}: creating the directory: Not a directory (os error 20)",
                under_file.display()
            )
        );
        let err = prepare_dirs(&parse(&dir.path().join("run"), &under_file)).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "--state-dir {}: creating the directory: Not a directory (os error 20)",
                under_file.display()
            )
        );
        let err = log_filter("netd=loud").unwrap_err();
        assert!(
            format!("{err:#}").starts_with(r#"--log "netd=loud" is not a valid filter: "#),
            "{err:#}"
        );
    }
}
