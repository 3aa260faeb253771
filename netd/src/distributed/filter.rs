//! `rnetd --underlay-filter`: VXLAN (UDP 4789) is accepted on this host only from the underlay
//! addresses of the hosts of its distributed zones. A table of its own, `inet rnet_underlay`,
//! replaced whole in one `nft -f` transaction whenever the set of hosts changes, and deleted
//! with the last distributed zone. Its input chain runs before other filters (priority
//! `filter - 10`) and only drops: what it lets through still meets the host's other rules.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::vxlan::VXLAN_PORT;

/// The table's name (family `inet`); `nat`'s detection of other firewalls skips it.
pub const TABLE: &str = nat::names::UNDERLAY_TABLE;

/// The nft script that makes the table hold exactly `hosts` (created if absent, replaced
/// atomically if present).
pub fn render(hosts: &BTreeSet<Ipv4Addr>) -> String {
    let elements = if hosts.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        format!("\n\t\telements = {{ {} }}", list.join(", "))
    };
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tset hosts {{\n\t\ttype ipv4_addr{elements}\n\t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tudp dport {VXLAN_PORT} ip saddr != @hosts counter drop comment \"VXLAN only from the hosts of rnet zones\"\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script`; the error is nft's message.
async fn nft(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Makes the table hold exactly `hosts`.
pub async fn apply(hosts: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    nft(&render(hosts)).await
}

/// Deletes the table (absent counts as deleted).
pub async fn remove() -> Result<(), String> {
    nft(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_exactly_the_hosts() {
        let hosts: BTreeSet<Ipv4Addr> = ["198.51.100.13", "198.51.100.12"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let script = render(&hosts);
        assert!(script.starts_with(
            "table inet rnet_underlay {}\ndelete table inet rnet_underlay\ntable inet rnet_underlay {\n"
        ));
        assert!(script.contains("elements = { 198.51.100.12, 198.51.100.13 }"));
        assert!(script.contains("udp dport 4789 ip saddr != @hosts counter drop"));
        // No host: no elements line (nft refuses an empty list), so every VXLAN packet drops.
        assert!(!render(&BTreeSet::new()).contains("elements"));
    }
}
