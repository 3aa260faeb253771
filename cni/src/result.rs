//! The success result of ADD ("Success" in section "Section 5: Result Types"): interfaces
//! (the host side, then the container side with its sandbox), ips, routes, dns; appended to a
//! previous plugin's result when rnet is not first in a chain. Pure.

use std::path::Path;

use api::{Machine, NetworkSpec};
use serde_json::{Value, json};

/// The result of attaching `m` as `ifname` in the namespace at `netns`, in `version`.
pub fn add_result(
    version: &str,
    m: &Machine,
    ifname: &str,
    netns: &Path,
    prev: Option<&Value>,
) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(host) = &m.host_ifname {
        let mut i = json!({ "name": host });
        if let Some(mac) = &m.host_mac {
            i["mac"] = json!(mac);
        }
        interfaces.push(i);
    }
    let container = interfaces.len();
    let mut i = json!({ "name": ifname, "sandbox": netns.to_string_lossy() });
    if let Some(mac) = &m.container_mac {
        i["mac"] = json!(mac);
    }
    interfaces.push(i);
    if let (Some(addr), Some(subnet)) = (m.container_address, m.subnet) {
        let mut ip = json!({
            "address": format!("{addr}/{}", subnet.prefix()),
            "interface": container,
        });
        if let Some(gw) = m.host_address {
            ip["gateway"] = json!(gw.to_string());
            routes.push(json!({ "dst": "0.0.0.0/0", "gw": gw.to_string() }));
        }
        ips.push(ip);
    }
    // IPv6: the address the container's SLAAC forms from rnetd's router advertisements (the
    // EUI-64 of its MAC in the link's /64), which rnetd reports.
    if let (Some(addr), Some(subnet)) = (m.container_address6, m.subnet6) {
        let mut ip = json!({
            "address": format!("{addr}/{}", subnet.prefix()),
            "interface": container,
        });
        if let Some(gw) = m.host_address6 {
            ip["gateway"] = json!(gw.to_string());
            routes.push(json!({ "dst": "::/0", "gw": gw.to_string() }));
        }
        ips.push(ip);
    }
    let mut result = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    });
    let mut dns = prev
        .and_then(|p| p.get("dns"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !m.dns.is_empty() {
        let servers: Vec<String> = m.dns.iter().map(ToString::to_string).collect();
        dns["nameservers"] = json!(servers);
        if let NetworkSpec::Zone(z) = &m.network {
            dns["search"] = json!([z.as_str()]);
        }
    }
    if dns.as_object().is_some_and(|o| !o.is_empty()) {
        result["dns"] = dns;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::MachineName;

    fn machine() -> Machine {
        Machine {
            machine: MachineName::new("web").unwrap(),
            pid: 0,
            network: NetworkSpec::Veth,
            host_ifname: Some("ve-web".into()),
            host_altname: None,
            container_ifname: Some("host0".into()),
            host_mac: Some("02:00:00:00:00:01".into()),
            container_mac: Some("02:00:00:00:00:02".into()),
            subnet: Some("192.168.0.0/28".parse().unwrap()),
            host_address: Some("192.168.0.1".parse().unwrap()),
            container_address: Some("192.168.0.7".parse().unwrap()),
            dns: vec!["192.168.0.1".parse().unwrap()],
            ports: vec![],
            links: vec![],
            teardown_errors: vec![],
            host_firewall: vec![],
            held: None,
            subnet6: None,
            host_address6: None,
            container_address6: None,
        }
    }

    #[test]
    fn an_ipv6_address_is_listed_with_its_default_route() {
        let mut m = machine();
        m.subnet6 = Some("fd00:1:2:3::/64".parse().unwrap());
        m.host_address6 = Some("fd00:1:2:3::1".parse().unwrap());
        m.container_address6 = Some("fd00:1:2:3::5".parse().unwrap());
        let r = add_result("1.0.0", &m, "eth0", Path::new("/run/netns/x"), None);
        assert_eq!(
            r["ips"][1],
            json!({"address": "fd00:1:2:3::5/64", "interface": 1, "gateway": "fd00:1:2:3::1"})
        );
        assert_eq!(
            r["routes"][1],
            json!({"dst": "::/0", "gw": "fd00:1:2:3::1"})
        );
    }

    #[test]
    fn the_result_names_both_ends_the_address_route_and_dns() {
        let r = add_result("1.0.0", &machine(), "eth0", Path::new("/run/netns/x"), None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "ve-web", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/x"}
                ],
                "ips": [{"address": "192.168.0.7/28", "gateway": "192.168.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.0.1"}],
                "dns": {"nameservers": ["192.168.0.1"]}
            })
        );
    }

    #[test]
    fn a_previous_result_is_kept_and_indexes_follow_it() {
        let prev = json!({"interfaces": [{"name": "lo"}], "ips": [], "dns": {"search": ["x"]}});
        let r = add_result("1.1.0", &machine(), "eth0", Path::new("/n"), Some(&prev));
        assert_eq!(r["interfaces"][0]["name"], "lo");
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["dns"]["search"], json!(["x"]));
        assert_eq!(r["dns"]["nameservers"], json!(["192.168.0.1"]));
    }
}
