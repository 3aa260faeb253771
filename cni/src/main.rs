//! `rnet-cni`: a CNI plugin (spec 1.0.0 and 1.1.0: ADD, DEL, CHECK, STATUS, GC, VERSION) that
//! gives containers rnet's networking through rnetd's socket. The container is identified by
//! `CNI_CONTAINERID`, `CNI_IFNAME` and the network's name (the owner key
//! `cni/NETWORK/CONTAINERID/IFNAME`), not by a pid: rnetd holds the attachment until DEL or GC,
//! across its own restarts while the namespace at `CNI_NETNS` exists.
//!
//! Alone in a conflist it is a complete network: rnetd builds the veth (`host0` renamed to
//! `CNI_IFNAME` here), the address and default route (configured here, inside the namespace),
//! DHCP, DNS, masquerade and the published ports of the `portMappings` capability.
//!
//! Errors are the spec's JSON on stdout with its codes, and exit status 1; nothing is changed
//! by a refused call.

mod conf;
mod error;
mod result;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use api::{AttachRequest, Client, ClientError, Holder, Machine, Request, Response};
use netlink_sync::{ContainerLink, configure_in};
use serde_json::{Value, json};

use conf::{Command, Env, NetConf, SUPPORTED};
use error::{CniError, Code};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    // Errors are answered in the version asked for when it is one of ours.
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| SUPPORTED[1].to_owned());
    match run(&stdin, &version) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::from(1)
        }
    }
}

fn run(stdin: &[u8], version: &str) -> Result<Option<Value>, CniError> {
    let env = Env::from(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    let dir = conf
        .runtime_dir
        .clone()
        .or_else(|| std::env::var_os("RNET_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(api::DEFAULT_RUNTIME_DIR));
    let client = Client::new(&dir);
    match env.command {
        Command::Add => add(&client, &env, &conf).map(Some),
        Command::Del => release(&client, &env.owner(&conf.name)).map(|_| None),
        Command::Check => check(&client, &env, &conf).map(|()| None),
        Command::Status => match client.ping() {
            Ok(()) => Ok(None),
            Err(e) => Err(CniError::new(Code::NotAvailable, e.to_string())),
        },
        Command::Gc => gc(&client, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// An error of rnetd's as a CNI error: not running means "try again later".
fn rnetd_error(e: ClientError) -> CniError {
    match e {
        ClientError::NotRunning { .. } => CniError::new(Code::TryAgainLater, e.to_string()),
        ClientError::Api(e) => CniError::new(Code::Rnetd, format!("rnetd: {}", e.message)),
        e => CniError::new(Code::Io, e.to_string()),
    }
}

/// Opens `CNI_NETNS` and checks it is a network namespace (an nsfs file).
fn open_netns(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            Code::UnknownContainer
        } else {
            Code::Io
        };
        CniError::new(code, format!("CNI_NETNS {}: {e}", path.display()))
    })?;
    if !is_nsfs(file.as_fd()) {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {} is not a network namespace", path.display()),
        ));
    }
    Ok(file)
}

/// Whether `fd` is a namespace file (nsfs).
fn is_nsfs(fd: BorrowedFd<'_>) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // SAFETY: statfs is plain data for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is a valid, writable statfs.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// How the container end is configured: renamed to `CNI_IFNAME`, addressed, routed.
fn container_link(m: &Machine, ifname: &str) -> Option<ContainerLink> {
    Some(ContainerLink {
        ifname: m.container_ifname.clone()?,
        rename: ifname.to_owned(),
        address: m.container_address.zip(m.subnet.map(|s| s.prefix())),
        gateway: m.host_address.filter(|_| m.container_address.is_some()),
    })
}

fn add(client: &Client, env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let network = conf.network()?;
    let ports = conf.ports()?;
    let machine = env.machine()?;
    let netns = env.netns.clone().unwrap_or_default();
    let ns = open_netns(&netns)?;
    let owner = env.owner(&conf.name);
    let req = AttachRequest {
        machine,
        pid: 0,
        network,
        ports,
        links: Vec::new(),
        held: Some(Holder {
            owner: owner.clone(),
            netns: netns.clone(),
        }),
        init: Default::default(),
        ipv6: true,
    };
    let m = match client.call(&Request::Attach(req), Some(ns.as_fd())) {
        Ok(Response::Attached(m)) => m,
        Ok(_) => {
            return Err(CniError::new(
                Code::Rnetd,
                "rnetd sent an unexpected answer",
            ));
        }
        Err(e) => return Err(rnetd_error(e)),
    };
    for unmet in conf.unmet_requests(&m) {
        eprintln!("rnet-cni: warning: {unmet}");
    }
    if let Err(e) = configure_in(ns.as_fd(), container_link(&m, &env.ifname).as_ref()) {
        let _ = release(client, &owner);
        return Err(CniError::new(
            Code::Io,
            format!("configuring {} in {}: {e}", env.ifname, netns.display()),
        ));
    }
    Ok(result::add_result(
        &conf.cni_version,
        &m,
        &env.ifname,
        &netns,
        conf.prev_result.as_ref(),
    ))
}

/// DEL: releases what rnetd holds for `owner`; nothing held is success (DEL is idempotent).
fn release(client: &Client, owner: &str) -> Result<(), CniError> {
    client
        .call(
            &Request::Release {
                owner: owner.to_owned(),
            },
            None,
        )
        .map(drop)
        .map_err(rnetd_error)
}

fn check(client: &Client, env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let owner = env.owner(&conf.name);
    let list = match client.call(&Request::List, None) {
        Ok(Response::Machines(list)) => list,
        Ok(_) => {
            return Err(CniError::new(
                Code::Rnetd,
                "rnetd sent an unexpected answer",
            ));
        }
        Err(e) => return Err(rnetd_error(e)),
    };
    let found = list
        .iter()
        .any(|m| m.held.as_ref().is_some_and(|h| h.owner == owner));
    if !found {
        return Err(CniError::new(
            Code::CheckFailed,
            format!("{owner} is not attached by rnetd"),
        ));
    }
    let netns = env.netns.clone().unwrap_or_default();
    let ns = open_netns(&netns)?;
    if !has_link(ns.as_fd(), &env.ifname) {
        return Err(CniError::new(
            Code::CheckFailed,
            format!("{} has no link {}", netns.display(), env.ifname),
        ));
    }
    Ok(())
}

/// Whether the namespace `ns` has a link called `name` (looked up from a thread that entered
/// it).
fn has_link(ns: BorrowedFd<'_>, name: &str) -> bool {
    let Ok(ns) = ns.try_clone_to_owned() else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    std::thread::spawn(move || {
        // SAFETY: setns on an open fd changes only this thread, which ends here; `name` is a
        // valid C string for if_nametoindex.
        unsafe {
            libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0
                && libc::if_nametoindex(name.as_ptr()) != 0
        }
    })
    .join()
    .unwrap_or(false)
}

fn gc(client: &Client, conf: &NetConf) -> Result<(), CniError> {
    let keep: Vec<String> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| conf::owner(&conf.name, &a.container_id, &a.ifname))
        .collect();
    client
        .call(
            &Request::ReleaseExcept {
                prefix: format!("cni/{}/", conf.name),
                keep,
            },
            None,
        )
        .map(drop)
        .map_err(rnetd_error)
}
