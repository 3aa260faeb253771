//! `rnet oci-hook`: rnet as the network of an OCI runtime (crun, runc), as a hook in the
//! bundle's `config.json` (OCI runtime spec, config.md "POSIX-platform Hooks"):
//!
//! - `createRuntime` (after the runtime created the container's namespaces, before
//!   `pivot_root`): attaches the container's network namespace (`/proc/PID/ns/net` of the pid
//!   in the state on stdin) and configures its side (`lo`, `host0`, default route). The
//!   attachment is owned by that pid, as `rnet run`'s are: rnetd watches it and cleans up when
//!   the container's process ends, even if no `poststop` runs.
//! - `poststop`: detaches (nothing attached is not an error).
//!
//! The network comes from the container's annotations (in the state, or else in the bundle's
//! `config.json`): `rnet.network` = `veth` | `zone:Z` | `bridge:BR` (none: the hook does
//! nothing), `rnet.ports` = port specs separated by commas (`tcp:8080:80,udp:53`),
//! `rnet.machine` = the machine name (default: the container id).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use api::{
    AttachRequest, Client, ClientError, ErrorKind, IfName, MachineName, NetworkSpec, PortSpec,
    Request, Response, ZoneName,
};
use clap::ValueEnum;
use netlink_sync::configure_in;
use serde::Deserialize;

use crate::netns::container_link;

/// Which hook the call is; inferred from the state's `status` when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// `createRuntime`: attach.
    #[value(name = "createRuntime")]
    CreateRuntime,
    /// `poststop`: detach.
    #[value(name = "poststop")]
    Poststop,
}

/// The state of the container, as the runtime passes it on the hook's stdin (runtime.md
/// "State").
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    id: String,
    status: String,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    bundle: Option<PathBuf>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The part of a bundle's `config.json` the hook reads.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What the annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    machine: MachineName,
    network: NetworkSpec,
    ports: Vec<PortSpec>,
}

/// Reads the annotations: `None` when `rnet.network` is absent (not ours to network).
fn wanted(id: &str, notes: &BTreeMap<String, String>) -> Result<Option<Wanted>, String> {
    let Some(net) = notes.get("rnet.network") else {
        return Ok(None);
    };
    let network = match net.split_once(':') {
        None if net == "veth" => NetworkSpec::Veth,
        Some(("zone", z)) => {
            NetworkSpec::Zone(ZoneName::new(z).map_err(|e| format!("rnet.network: {e}"))?)
        }
        Some(("bridge", b)) => NetworkSpec::Bridge(
            IfName::new(b)
                .map_err(|e| format!("rnet.network: {e}"))?
                .into(),
        ),
        _ => {
            return Err(format!(
                "rnet.network {net:?}: use veth, zone:NAME or bridge:NAME"
            ));
        }
    };
    let ports = match notes.get("rnet.ports") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<PortSpec>()
                    .map_err(|e| format!("rnet.ports: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let name = notes.get("rnet.machine").map_or(id, String::as_str);
    let machine = MachineName::new(name).map_err(|e| {
        format!("{e} (the container id is the machine name unless rnet.machine is set)")
    })?;
    Ok(Some(Wanted {
        machine,
        network,
        ports,
    }))
}

/// The container's annotations: the state's, or else the bundle's `config.json`'s.
fn annotations(state: &State) -> Result<BTreeMap<String, String>, String> {
    if let Some(a) = &state.annotations
        && !a.is_empty()
    {
        return Ok(a.clone());
    }
    let Some(bundle) = &state.bundle else {
        return Ok(BTreeMap::new());
    };
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config: Config =
        serde_json::from_slice(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    Ok(config.annotations)
}

/// Runs the hook with the state read from stdin.
pub fn run(client: &Client, stage: Option<Stage>) -> Result<(), String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the container state from stdin: {e}"))?;
    let state: State = serde_json::from_slice(&input)
        .map_err(|e| format!("the container state on stdin is not valid: {e}"))?;
    let stage = stage.unwrap_or(if state.status == "stopped" {
        Stage::Poststop
    } else {
        Stage::CreateRuntime
    });
    let Some(want) = wanted(&state.id, &annotations(&state)?)? else {
        return Ok(());
    };
    match stage {
        Stage::CreateRuntime => attach(client, &state, want),
        Stage::Poststop => detach(client, &want.machine),
    }
}

fn attach(client: &Client, state: &State, want: Wanted) -> Result<(), String> {
    if state.pid == 0 {
        return Err(format!(
            "the state of container {} has no pid (is the hook in createRuntime?)",
            state.id
        ));
    }
    let path = Path::new("/proc")
        .join(state.pid.to_string())
        .join("ns/net");
    let ns = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let name = want.machine.clone();
    let req = AttachRequest {
        machine: want.machine,
        pid: state.pid,
        network: want.network,
        ports: want.ports,
        links: Vec::new(),
        held: None,
        init: Default::default(),
        ipv6: true,
    };
    let machine = match client.call(&Request::Attach(req), Some(ns.as_fd())) {
        Ok(Response::Attached(m)) => m,
        Ok(_) => return Err("rnetd sent an unexpected answer to attach".into()),
        Err(e) => return Err(e.to_string()),
    };
    if let Err(e) = configure_in(ns.as_fd(), container_link(&machine, None).as_ref()) {
        let _ = detach(client, &name);
        return Err(format!(
            "configuring the network of container {}: {e}",
            state.id
        ));
    }
    Ok(())
}

fn detach(client: &Client, machine: &MachineName) -> Result<(), String> {
    match client.call(
        &Request::Detach {
            machine: machine.clone(),
        },
        None,
    ) {
        Ok(_) => Ok(()),
        // Already gone: the pidfd watch cleaned up when the container's process ended.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn annotations_select_the_network() {
        assert_eq!(wanted("c1", &notes(&[])).unwrap(), None);
        let w = wanted(
            "c1",
            &notes(&[
                ("rnet.network", "zone:lab"),
                ("rnet.ports", "tcp:8080:80, udp:53"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(w.machine.as_str(), "c1");
        assert_eq!(w.network, NetworkSpec::Zone(ZoneName::new("lab").unwrap()));
        assert_eq!(w.ports.len(), 2);
        let w = wanted(
            "c1",
            &notes(&[("rnet.network", "veth"), ("rnet.machine", "web")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((w.machine.as_str(), w.network), ("web", NetworkSpec::Veth));
    }

    #[test]
    fn bad_annotations_are_one_clear_line() {
        assert_eq!(
            wanted("c1", &notes(&[("rnet.network", "vlan:3")])).unwrap_err(),
            r#"rnet.network "vlan:3": use veth, zone:NAME or bridge:NAME"#
        );
        assert_eq!(
            wanted("c_1", &notes(&[("rnet.network", "veth")])).unwrap_err(),
            r#"machine name "c_1" contains '_'; use letters, digits, '-' and '.' (a valid hostname) (the container id is the machine name unless rnet.machine is set)"#
        );
        assert!(
            wanted(
                "c1",
                &notes(&[("rnet.network", "veth"), ("rnet.ports", "x")])
            )
            .unwrap_err()
            .starts_with("rnet.ports: ")
        );
    }
}
