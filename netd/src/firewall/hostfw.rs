//! The host's other firewalls (`--host-firewall`): keeps rnet's accept rules in the foreign
//! chains that would drop our traffic (Docker's `FORWARD`/`DOCKER-USER`, an input chain with
//! policy drop, firewalld's tables): one set for all our links (they match our links' netdev
//! group), and none without links or with `--host-firewall=off`. What goes where is decided by
//! the pure `nat::hostfw`; this module runs it, and watches `nft monitor` so a reloaded foreign
//! firewall gets ours back at once (the periodic check is the fallback).

use std::fmt;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use nat::TableRef;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::sync::watch;
use tracing::{debug, warn};

/// `--host-firewall`: whether rnetd lets its traffic through other firewalls' chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostFwMode {
    /// Put our accept rules into foreign chains that would drop our traffic (the default).
    #[default]
    Auto,
    /// Never touch foreign chains; remove rules of ours left in them.
    Off,
}

impl FromStr for HostFwMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not auto or off")),
        }
    }
}

impl fmt::Display for HostFwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
        })
    }
}

/// True if a line of `nft monitor` may concern our tables or a foreign firewall's chains that
/// can see our traffic: any change in our tables or in a `watched` table (the foreign tables the
/// last look listed, [`crate::firewall::Firewall::host_tables`]), and a base chain made in any
/// table (a new firewall). Not: element changes (ours, with every attach), the generation
/// comments that follow every batch, and the rest of the other tables (CNI's and Docker's `nat`
/// chains and rules, changed with each of their containers). A line it cannot read counts.
pub fn relevant(line: &str, watched: &[TableRef]) -> bool {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return false;
    }
    let mut words = line.split_whitespace();
    let (Some(_verb), Some(object), Some(family), Some(table)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return true;
    };
    if object == "element" {
        return false;
    }
    let ours = table == nat::names::TABLE || table == nat::names::UNDERLAY_TABLE;
    ours || watched.iter().any(|(f, t)| f == family && t == table)
        || (object == "chain" && line.contains(" hook "))
}

/// How long events are gathered after the first one before a check runs: a reload (an
/// `iptables-restore`, a Docker restart) is a burst of events, one check serves them all.
const SETTLE: Duration = Duration::from_millis(50);

/// How long to wait before starting `nft monitor` again after it ended or failed to start.
const RESTART: Duration = Duration::from_secs(5);

/// Runs `program monitor` (in the daemon's network namespace) for as long as `events` is open,
/// sending `()` after each burst of relevant events ([`relevant`] to the tables `watched`
/// holds at the time); restarts it when it ends.
pub async fn monitor(
    program: &str,
    events: mpsc::Sender<()>,
    watched: watch::Receiver<Vec<TableRef>>,
) {
    loop {
        let mut command = tokio::process::Command::new(program);
        command
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; run between
        // fork and exec it makes the monitor die with rnetd even when rnetd is killed (-9).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn();
        match child {
            Ok(mut child) => {
                let stdout = child.stdout.take().expect("stdout is piped");
                let mut lines = BufReader::new(stdout).lines();
                debug!("watching nft monitor for changes of other firewalls");
                loop {
                    match lines.next_line().await {
                        Ok(Some(line)) if relevant(&line, &watched.borrow()) => {
                            // Gather the rest of the burst, then one check.
                            let _ = tokio::time::timeout(SETTLE, async {
                                while let Ok(Some(_)) = lines.next_line().await {}
                            })
                            .await;
                            if events.send(()).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = child.kill().await;
                warn!("nft monitor ended; restarting it (the periodic check goes on meanwhile)");
            }
            Err(e) => {
                warn!(program, error = %e, "cannot run nft monitor; relying on the periodic check")
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(RESTART).await;
    }
}

/// `iptables-save -t TABLE` (family `ip`) and `ip6tables-save -t TABLE` (`ip6`) of the
/// iptables-nft tables given ([`nat::restored_tables`]): iptables-restore turns the comment of a
/// rule of ours into an `xt` match that only iptables reads back. The iptables-nft variant is
/// run where it is installed under its own name (`iptables-nft-save`), so hosts whose
/// `iptables` is the legacy one still read the nft tables. A save that cannot run is left out
/// (logged at debug): those rules are then not recognised, as before.
pub async fn iptables_saves(tables: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (family, table) in tables {
        let Some(programs) = nat::iptables_programs(family, "-save") else {
            continue;
        };
        let args = ["-t".to_owned(), table.clone()];
        for program in &programs {
            match nat::run_iptables(program, &args, "reading our comments").await {
                Ok(text) => {
                    out.push((*family, text));
                    break;
                }
                Err(e) => debug!(error = %e, "iptables-save did not run"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_changes_generations_and_unwatched_tables_are_not_events() {
        let watched = [("ip".to_owned(), "filter".to_owned())];
        let relevant = |line: &str| relevant(line, &watched);
        assert!(!relevant("add element inet rnet ifaces { \"ve-a\" }"));
        assert!(!relevant("delete element inet rnet masq4 { 10.0.0.0/28 }"));
        assert!(!relevant("add element ip filter blocked { 10.0.0.1 }"));
        assert!(!relevant("# new generation 12 by process 345 (nft)"));
        assert!(!relevant(""));
        // The watched table, whatever changes in it.
        assert!(relevant(
            "add rule ip filter FORWARD counter jump DOCKER-USER"
        ));
        assert!(relevant("delete rule ip filter DOCKER-USER handle 6"));
        assert!(relevant("delete table ip filter"));
        assert!(relevant("create chain ip filter DOCKER-USER"));
        // Ours, whatever changes in them (the table check).
        assert!(relevant("delete chain inet rnet forward"));
        assert!(relevant("delete table bridge rnet"));
        // A base chain anywhere: a firewall that was not there.
        assert!(relevant(
            "add chain ip6 zz in { type filter hook input priority filter; policy accept; }"
        ));
        // Another table's chains and rules: CNI's and Docker's nat, per container.
        assert!(!relevant("create chain ip nat CNI-0123456789abcdef"));
        assert!(!relevant(
            "add rule ip nat POSTROUTING ip saddr 10.88.0.2 counter jump CNI-0123456789abcdef"
        ));
        assert!(!relevant("delete rule ip6 filter FORWARD handle 4"));
        assert!(!relevant("add table ip6 zz"));
        // What it cannot read counts.
        assert!(relevant("flush ruleset"));
    }

    #[test]
    fn the_option_reads_auto_and_off() {
        assert_eq!("auto".parse(), Ok(HostFwMode::Auto));
        assert_eq!("off".parse(), Ok(HostFwMode::Off));
        assert_eq!(
            "on".parse::<HostFwMode>(),
            Err("\"on\" is not auto or off".to_owned())
        );
        assert_eq!(HostFwMode::default().to_string(), "auto");
    }
}
