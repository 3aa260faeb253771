//! The host's other firewalls (`--host-firewall`): keeps rnet's accept rules in the foreign
//! chains that would drop our traffic (Docker's `FORWARD`/`DOCKER-USER`, an input chain with
//! policy drop, firewalld's tables), exactly one set per link of ours, and none without links
//! or with `--host-firewall=off`. What goes where is decided by the pure `nat::hostfw`; this
//! module runs it, and watches `nft monitor` so a reloaded foreign firewall gets ours back at
//! once (the periodic check is the fallback).

use std::fmt;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
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

/// True if a line of `nft monitor` may concern a foreign firewall: anything but element
/// changes (ours, with every attach) and the generation comments that follow every batch.
pub fn relevant(line: &str) -> bool {
    let line = line.trim();
    !(line.is_empty()
        || line.starts_with('#')
        || line.starts_with("add element")
        || line.starts_with("delete element"))
}

/// How long events are gathered after the first one before a check runs: a reload (an
/// `iptables-restore`, a Docker restart) is a burst of events, one check serves them all.
const SETTLE: Duration = Duration::from_millis(50);

/// How long to wait before starting `nft monitor` again after it ended or failed to start.
const RESTART: Duration = Duration::from_secs(5);

/// Runs `program monitor` (in the daemon's network namespace) for as long as `events` is open,
/// sending `()` after each burst of relevant events; restarts it when it ends.
pub async fn monitor(program: &str, events: mpsc::Sender<()>) {
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
                        Ok(Some(line)) if relevant(&line) => {
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

/// `iptables-save` (family `ip`) and `ip6tables-save` (`ip6`) of the iptables-nft tables, for
/// the `families` given ([`nat::restored_families`]): iptables-restore turns the comment of a
/// rule of ours into an `xt` match that only iptables reads back. The iptables-nft variant is
/// run where it is installed under its own name (`iptables-nft-save`), so hosts whose
/// `iptables` is the legacy one still read the nft tables. A save that cannot run is left out
/// (logged at debug): those rules are then not recognised, as before.
pub async fn iptables_saves(families: &[&'static str]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for family in families {
        let programs: &[&str] = match *family {
            "ip" => &["iptables-nft-save", "iptables-save"],
            "ip6" => &["ip6tables-nft-save", "ip6tables-save"],
            _ => continue,
        };
        for program in programs {
            let run = tokio::process::Command::new(program)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(Duration::from_secs(5), run).await {
                Ok(Ok(o)) if o.status.success() => {
                    out.push((*family, String::from_utf8_lossy(&o.stdout).into_owned()));
                    break;
                }
                Ok(Ok(o)) => debug!(program, status = %o.status, "iptables-save failed"),
                Ok(Err(e)) => debug!(program, error = %e, "cannot run iptables-save"),
                Err(_) => debug!(program, "iptables-save took more than 5 s"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_changes_and_generations_are_not_events() {
        assert!(!relevant("add element inet rnet ifaces { \"ve-a\" }"));
        assert!(!relevant("delete element inet rnet masq4 { 10.0.0.0/28 }"));
        assert!(!relevant("# new generation 12 by process 345 (nft)"));
        assert!(relevant(
            "add rule ip filter FORWARD counter jump DOCKER-USER"
        ));
        assert!(relevant("delete table ip filter"));
        assert!(relevant(
            "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"
        ));
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
