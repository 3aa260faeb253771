//! What the runtime hands the plugin, parsed once: the environment (CNI spec, section
//! "Parameters") and the network configuration on stdin (section "Section 1: Network
//! configuration format", with `runtimeConfig`, `prevResult` and, for GC,
//! `cni.dev/valid-attachments`). Pure: no I/O, unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;

use api::{IfName, MachineName, NetworkSpec, PortSpec, ZoneName};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code};

/// The CNI versions this plugin implements (spec 1.0.0 and 1.1.0).
pub const SUPPORTED: [&str; 2] = ["1.0.0", "1.1.0"];

/// The operation asked for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Check it is attached as the result said.
    Check,
    /// Is the plugin ready to ADD?
    Status,
    /// Remove every attachment of the network that is not valid.
    Gc,
    /// Which versions are supported.
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
                ));
            }
        })
    }
}

/// The environment of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (ADD, CHECK; may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Reads and checks the variables `command` needs from `get` (the process environment in
    /// `main`, a map in tests).
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let need = |name: &str| -> Result<String, CniError> {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::new(Code::InvalidEnv, format!("{name} is not set")))
        };
        let command = Command::parse(&need("CNI_COMMAND")?)?;
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: get("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ifname: String::new(),
            args: BTreeMap::new(),
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            env.container_id = need("CNI_CONTAINERID")?;
            check_container_id(&env.container_id)?;
            env.ifname = need("CNI_IFNAME")?;
            IfName::new(&env.ifname)
                .map_err(|e| CniError::new(Code::InvalidEnv, format!("CNI_IFNAME: {e}")))?;
            if command != Command::Del {
                let netns = env
                    .netns
                    .as_ref()
                    .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_NETNS is not set"))?;
                if !netns.is_absolute() {
                    return Err(CniError::new(
                        Code::InvalidEnv,
                        format!("CNI_NETNS {} is not an absolute path", netns.display()),
                    ));
                }
            }
            env.args = get("CNI_ARGS")
                .unwrap_or_default()
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
        Ok(env)
    }

    /// The owner key of this attachment in rnetd: `cni/NETWORK/CONTAINERID/IFNAME`.
    pub fn owner(&self, network: &str) -> String {
        owner(network, &self.container_id, &self.ifname)
    }

    /// The machine name: the pod or container name the runtime passes in `CNI_ARGS`
    /// (`K8S_POD_NAME`, which Podman sets to the container's name) when it is a valid
    /// hostname, else `cni-` and the container id's first 12 characters; `-IFNAME` added for an
    /// interface other than `eth0` (a second network of the same container).
    pub fn machine(&self) -> Result<MachineName, CniError> {
        let base = self
            .args
            .get("K8S_POD_NAME")
            .filter(|n| MachineName::new(n).is_ok())
            .cloned()
            .unwrap_or_else(|| {
                let id: String = self
                    .container_id
                    .chars()
                    .take(12)
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                format!("cni-{}", id.trim_end_matches('-'))
            });
        let name = if self.ifname == "eth0" {
            base
        } else {
            let suffix: String = self
                .ifname
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            format!("{base}-{}", suffix.trim_matches('-'))
        };
        MachineName::new(&name)
            .map_err(|e| CniError::new(Code::InvalidEnv, format!("machine name: {e}")))
    }
}

/// The owner key of an attachment.
pub fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    format!("cni/{network}/{container_id}/{ifname}")
}

/// The spec's container id: an alphanumeric, then alphanumerics, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_CONTAINERID {id:?} is not a container id (an alphanumeric, then alphanumerics, '_', '.' and '-')"
            ),
        ))
    }
}

/// A port mapping of the `portMappings` capability (CONVENTIONS.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host address; empty or `0.0.0.0` for every address.
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// `runtimeConfig`: the capabilities' arguments.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// `ips`: rnet picks addresses as its DHCP server would and cannot take others; a request
    /// for other addresses (`podman network reload` asks for the previous ADD's, which a zone
    /// re-created in the meantime no longer has) is answered with rnet's own, reported in the
    /// result and named in a warning on stderr.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac`: likewise: rnet derives MACs as systemd does.
    #[serde(default)]
    pub mac: Option<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    /// `containerID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

/// The network configuration on stdin. Keys of other plugins and of the runtime are ignored,
/// as the spec asks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// `type`: `rnet`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `veth` (the default: a `/28` of its own), `zone` (with `zone`), `bridge` (with
    /// `bridge`).
    #[serde(default)]
    pub mode: Option<String>,
    /// The zone (implies mode `zone`).
    #[serde(default)]
    pub zone: Option<String>,
    /// The admin's bridge (implies mode `bridge`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// rnetd's runtime directory (default: `RNET_RUNTIME_DIR`, else `/run/rnet`).
    #[serde(default, rename = "runtimeDir")]
    pub runtime_dir: Option<PathBuf>,
    /// The capabilities' arguments.
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    /// The result of the plugins before this one in a chain.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    /// Parses stdin and checks the version, the name and the type.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodeFailed,
                format!("the network configuration on stdin is not valid: {e}"),
            )
        })?;
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {:?} is not supported; rnet-cni implements {}",
                    conf.cni_version,
                    SUPPORTED.join(" and ")
                ),
            ));
        }
        let name_ok = conf
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !conf.name.is_empty();
        if !name_ok {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!(
                    "network name {:?} must be alphanumerics, '_', '.' and '-'",
                    conf.name
                ),
            ));
        }
        Ok(conf)
    }

    /// The network the configuration asks for.
    pub fn network(&self) -> Result<NetworkSpec, CniError> {
        let bad = |m: String| CniError::new(Code::InvalidConfig, m);
        let mode = match (&self.mode, &self.zone, &self.bridge) {
            (Some(m), _, _) => m.as_str(),
            (None, Some(_), None) => "zone",
            (None, None, Some(_)) => "bridge",
            (None, Some(_), Some(_)) => {
                return Err(bad("zone and bridge exclude each other".into()));
            }
            (None, None, None) => "veth",
        };
        match mode {
            "veth" => Ok(NetworkSpec::Veth),
            "zone" => {
                let z = self
                    .zone
                    .as_deref()
                    .ok_or_else(|| bad("mode zone needs \"zone\"".into()))?;
                ZoneName::new(z).map(NetworkSpec::Zone).map_err(bad)
            }
            "bridge" => {
                let b = self
                    .bridge
                    .as_deref()
                    .ok_or_else(|| bad("mode bridge needs \"bridge\"".into()))?;
                IfName::new(b)
                    .map(|b| NetworkSpec::Bridge(b.into()))
                    .map_err(|e| bad(format!("bridge: {e}")))
            }
            other => Err(bad(format!("mode {other:?}: use veth, zone or bridge"))),
        }
    }

    /// Warnings for `ips`/`mac` that are not what rnet gave the container `m` (rnet keeps its
    /// own; the result tells the runtime what the container has).
    pub fn unmet_requests(&self, m: &api::Machine) -> Vec<String> {
        let mut unmet = Vec::new();
        let rc = &self.runtime_config;
        let given: Vec<std::net::IpAddr> = m
            .container_address
            .map(std::net::IpAddr::V4)
            .into_iter()
            .chain(m.container_address6.map(std::net::IpAddr::V6))
            .collect();
        for ip in &rc.ips {
            let addr = ip.split('/').next().unwrap_or(ip);
            let ok = addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| given.contains(&a));
            if !ok {
                unmet.push(format!(
                    "the ips capability asks for {ip}, but rnet gives this container {}: it picks addresses as its DHCP server would and cannot take others",
                    given
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if let Some(mac) = &rc.mac
            && !m
                .container_mac
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(mac))
        {
            unmet.push(format!(
                "the mac capability asks for {mac}, but rnet derives {} for this container (as systemd does)",
                m.container_mac.as_deref().unwrap_or("none")
            ));
        }
        unmet
    }

    /// The published ports (`portMappings`), as rnet's port specs.
    pub fn ports(&self) -> Result<Vec<PortSpec>, CniError> {
        let rc = &self.runtime_config;
        rc.port_mappings
            .iter()
            .map(|p| {
                let addr = match p.host_ip.as_str() {
                    "" | "0.0.0.0" => String::new(),
                    a => format!("{a}:"),
                };
                let text = format!(
                    "{}:{addr}{}:{}",
                    p.protocol.to_ascii_lowercase(),
                    p.host_port,
                    p.container_port
                );
                text.parse::<PortSpec>()
                    .map_err(|e| CniError::new(Code::InvalidConfig, format!("portMappings: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::from(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "0123456789abcdef0123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn the_environment_is_checked() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.owner("net"), "cni/net/0123456789abcdef0123/eth0");
        assert_eq!(e.machine().unwrap().as_str(), "cni-0123456789ab");
        let err = env(&[]).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (Code::InvalidEnv, "CNI_COMMAND is not set")
        );
        let err = env(&ADD[..3]).unwrap_err();
        assert_eq!(err.msg, "CNI_IFNAME is not set");
        let err = env(&[("CNI_COMMAND", "PATCH")]).unwrap_err();
        assert_eq!(
            err.msg,
            r#"CNI_COMMAND "PATCH" is not ADD, DEL, CHECK, STATUS, GC or VERSION"#
        );
        let mut bad = ADD;
        bad[1] = ("CNI_CONTAINERID", "-x");
        assert!(
            env(&bad)
                .unwrap_err()
                .msg
                .starts_with("CNI_CONTAINERID \"-x\"")
        );
        // DEL without a netns is fine; STATUS and VERSION need no container.
        let del = [ADD[1], ADD[3], ("CNI_COMMAND", "DEL")];
        assert_eq!(env(&del).unwrap().netns, None);
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }

    #[test]
    fn the_machine_name_comes_from_the_pod_name() {
        let mut pairs = ADD.to_vec();
        pairs.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=web",
        ));
        assert_eq!(env(&pairs).unwrap().machine().unwrap().as_str(), "web");
        pairs[3] = ("CNI_IFNAME", "eth1");
        assert_eq!(env(&pairs).unwrap().machine().unwrap().as_str(), "web-eth1");
    }

    #[test]
    fn the_configuration_is_checked() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"rnet","zone":"lab","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"203.0.113.2"}]}}"#).unwrap();
        assert_eq!(
            c.network().unwrap(),
            NetworkSpec::Zone(ZoneName::new("lab").unwrap())
        );
        let ports: Vec<String> = c.ports().unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["tcp:8080:80", "udp:203.0.113.2:53:53"]);
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"rnet"}"#).unwrap();
        assert_eq!(c.network().unwrap(), NetworkSpec::Veth);

        let err = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err();
        assert_eq!(err.code, Code::IncompatibleVersion);
        assert_eq!(
            err.msg,
            r#"cniVersion "0.3.1" is not supported; rnet-cni implements 1.0.0 and 1.1.0"#
        );
        let err = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, Code::DecodeFailed);
        let err = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a/b"}"#).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mode":"macvlan"}"#).unwrap();
        assert_eq!(
            c.network().unwrap_err().msg,
            r#"mode "macvlan": use veth, zone or bridge"#
        );
        // ips and mac: rnet keeps its own and names what it could not give.
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.0.0.5/24"],"mac":"02:00:00:00:00:0A"}}"#,
        )
        .unwrap();
        let mut m: api::Machine = serde_json::from_str(
            r#"{"machine":"m","pid":0,"network":"veth","container_address":"10.0.0.5","container_mac":"02:00:00:00:00:0a","dns":[],"ports":[],"links":[]}"#,
        )
        .unwrap();
        assert!(c.unmet_requests(&m).is_empty());
        m.container_address = Some("10.0.0.6".parse().unwrap());
        let unmet = c.unmet_requests(&m);
        assert!(unmet[0].contains("asks for 10.0.0.5/24, but rnet gives this container 10.0.0.6"));
        m.container_address = Some("10.0.0.5".parse().unwrap());
        m.container_mac = Some("02:00:00:00:00:0b".into());
        assert!(c.unmet_requests(&m)[0].contains("mac capability"));
    }
}
