//! machinectl's verbs (`docs/architecture.md#machines`): the registry of running machines,
//! `list`/`status` as the union of the registry and rnetd's attachments, `start` with its
//! supervisor, `poweroff`/`reboot`/`terminate`, `shell`/`login` and `enable`/`disable`.

pub mod registry;
pub mod shell;
pub mod supervisor;
pub mod unit;

use std::path::Path;
use std::time::{Duration, Instant};

use api::{Client, Machine, MachineName, Request, Response};
use serde_json::{Map, Value};

use registry::Entry;

/// The supervisor's pid, set by it for the launchers it starts (recorded in their entry).
pub const SUPERVISOR_ENV: &str = "RNET_SUPERVISOR";
/// The log file of a started machine, set by its supervisor.
pub const LOG_ENV: &str = "RNET_MACHINE_LOG";
/// How long `poweroff`, `terminate` and `reboot` wait for the machine.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// One machine as `list` and `status` show it: its registry entry, rnetd's attachment, or both.
#[derive(Debug)]
pub struct Shown {
    pub name: String,
    pub entry: Option<Entry>,
    pub attached: Option<Machine>,
}

impl Shown {
    /// The leader's pid (rnetd's pid is the same process when both know it).
    pub fn pid(&self) -> u32 {
        self.entry
            .as_ref()
            .map(|e| e.leader)
            .or(self.attached.as_ref().map(|m| m.pid))
            .unwrap_or_default()
    }

    fn state(&self) -> &'static str {
        match (&self.entry, &self.attached) {
            (None, Some(m)) if m.held.is_some() => "held",
            (Some(e), _) if !e.ready => "starting",
            _ => "running",
        }
    }

    /// CPU time (ns), memory (bytes) and tasks of the machine's own cgroup (none for a machine
    /// without one, e.g. host mode: its leader's cgroup is the caller's session's).
    fn usage(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        self.cgroup().map_or((None, None, None), |cg| cg.usage())
    }

    /// The machine's cgroup: for a launcher's machine its own `rnet-NAME` (where its leader
    /// is), if it has one; for another runtime's attachment the cgroup of its process.
    pub fn cgroup(&self) -> Option<crate::cgroup::Cgroup> {
        let pid = self.pid();
        if pid == 0 || (self.entry.is_some() && !own_cgroup(pid, &self.name)) {
            return None;
        }
        crate::cgroup::Cgroup::of_pid(pid).ok()
    }

    /// `list --json`: rnetd's JSON of the machine (today's fields) and the registry's that do
    /// not change while it runs: `leader`, `image`, `class`, `network_mode`, `started`,
    /// `launcher`, `supervisor`, `unit`, `log`.
    pub fn json(&self) -> Value {
        let mut v = self.status_json();
        if let Value::Object(o) = &mut v {
            for k in ["state", "uptime_secs", "cpu_ns", "memory_bytes", "tasks"] {
                o.remove(k);
            }
        }
        v
    }

    /// `status --json`: [`Self::json`] plus `state`, `uptime_secs`, `cpu_ns`, `memory_bytes`,
    /// `tasks`.
    pub fn status_json(&self) -> Value {
        let mut obj = match self.attached.as_ref().map(serde_json::to_value) {
            Some(Ok(Value::Object(o))) => o,
            _ => {
                let mut o = Map::new();
                o.insert("machine".into(), self.name.clone().into());
                o.insert("pid".into(), self.pid().into());
                o
            }
        };
        let (cpu, mem, tasks) = self.usage();
        obj.insert("leader".into(), self.pid().into());
        obj.insert("state".into(), self.state().into());
        obj.insert("cpu_ns".into(), cpu.into());
        obj.insert("memory_bytes".into(), mem.into());
        obj.insert("tasks".into(), tasks.into());
        let e = self.entry.as_ref();
        obj.insert(
            "image".into(),
            e.and_then(|e| e.image.as_ref())
                .map(|p| p.display().to_string())
                .into(),
        );
        obj.insert(
            "class".into(),
            e.map_or("attachment", |e| e.class.as_str()).into(),
        );
        obj.insert("network_mode".into(), e.map(|e| e.network.clone()).into());
        obj.insert("started".into(), e.map(|e| e.started).into());
        obj.insert(
            "uptime_secs".into(),
            e.map(|e| e.uptime(registry::now())).into(),
        );
        obj.insert("launcher".into(), e.map(|e| e.launcher).into());
        obj.insert("supervisor".into(), e.and_then(|e| e.supervisor).into());
        obj.insert("unit".into(), e.and_then(|e| e.unit.clone()).into());
        obj.insert(
            "log".into(),
            e.and_then(|e| e.log.as_ref())
                .map(|p| p.display().to_string())
                .into(),
        );
        Value::Object(obj)
    }
}

/// Whether `pid` is in a cgroup `rnet-NAME` (or below it) of some hierarchy.
fn own_cgroup(pid: u32, name: &str) -> bool {
    let leaf = format!("rnet-{name}");
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path.split('/').any(|c| c == leaf))
    })
}

/// Every machine: rnetd's attachments (when rnetd answers) and the registry's entries, by name.
pub fn all(client: &Client, runtime_dir: &Path) -> Result<Vec<Shown>, String> {
    // rnetd first: a launcher registers before it attaches, so every attachment listed has its
    // entry in the registry read after it (read before, a run registering in between would be
    // shown without its entry).
    let answer = client.call(&Request::List, None);
    let entries = registry::list(runtime_dir);
    let attached = match answer {
        Ok(Response::Machines(list)) => list,
        Ok(_) => return Err("rnetd sent an unexpected answer to list".into()),
        // Without rnetd, the machines that need none are still shown.
        Err(e) if !entries.is_empty() => {
            eprintln!("rnet: warning: {e}: only machines without rnetd's links are shown");
            Vec::new()
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut shown: Vec<Shown> = attached
        .into_iter()
        .map(|m| Shown {
            name: m.machine.to_string(),
            entry: None,
            attached: Some(m),
        })
        .collect();
    for e in entries {
        match shown.iter_mut().find(|s| s.name == e.name) {
            Some(s) => s.entry = Some(e),
            None => shown.push(Shown {
                name: e.name.clone(),
                entry: Some(e),
                attached: None,
            }),
        }
    }
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(shown)
}

/// One machine: the registry's entry and rnetd's status; rnetd's error when neither knows it.
pub fn one(client: &Client, runtime_dir: &Path, name: &MachineName) -> Result<Shown, String> {
    // rnetd first, as in [`all`].
    let answer = client.call(
        &Request::Status {
            machine: name.clone(),
        },
        None,
    );
    let entry = registry::get(runtime_dir, name.as_str());
    let attached = match answer {
        Ok(Response::Status(m)) => Some(m),
        Ok(_) => return Err("rnetd sent an unexpected answer to status".into()),
        Err(_) if entry.is_some() => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(Shown {
        name: name.to_string(),
        entry,
        attached,
    })
}

/// `1d 2h`, `3h 4min`, `5min 6s`, `7s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}min")
    } else if m > 0 {
        format!("{m}min {s}s")
    } else {
        format!("{s}s")
    }
}

fn bytes(b: u64) -> String {
    format!("{:.1}M", b as f64 / 1048576.0)
}

/// The registry's lines of `rnet status` (after rnetd's).
pub fn print_status_extra(s: &Shown) {
    println!("        State: {}", s.state());
    let Some(e) = &s.entry else {
        return;
    };
    println!("       Leader: {} (launcher {})", e.leader, e.launcher);
    println!("        Class: {}", e.class);
    if let Some(i) = &e.image {
        println!("        Image: {}", i.display());
    }
    println!("      Network: {}", e.network);
    println!("       Uptime: {}", duration(e.uptime(registry::now())));
    if let Some(u) = &e.unit {
        println!("         Unit: {u}");
    }
    if let Some(p) = e.supervisor {
        println!("   Supervisor: {p}");
    }
    if let Some(l) = &e.log {
        println!("          Log: {}", l.display());
    }
    let (cpu, mem, tasks) = s.usage();
    if let Some(t) = tasks {
        println!("        Tasks: {t}");
    }
    if let Some(m) = mem {
        println!("       Memory: {}", bytes(m));
    }
    if let Some(c) = cpu {
        println!("          CPU: {:.3}s", c as f64 / 1e9);
    }
}

/// A registry-only machine's first `rnet status` lines.
pub fn print_status_head(s: &Shown) {
    println!("{}", s.name);
    println!("          PID: {}", s.pid());
}

/// The table columns after rnetd's: class, network, uptime, state.
pub fn table_extra(s: &Shown) -> String {
    let e = s.entry.as_ref();
    format!(
        "{:<10} {:<14} {:<10} {:<8}",
        e.map_or("-", |e| e.class.as_str()),
        e.map_or("-", |e| e.network.as_str()),
        e.map_or_else(|| "-".into(), |e| duration(e.uptime(registry::now()))),
        s.state()
    )
}

/// Sends `signal` to `pid` (0: nothing); the error is one line.
fn signal(pid: u32, signal: i32, name: &str) -> Result<(), String> {
    // SAFETY: kill with a pid and a signal number.
    let r = unsafe { libc::kill(i32::try_from(pid).unwrap_or(-1), signal) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(format!("permission denied: signalling machine {name}"));
        }
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(format!("signalling machine {name}: {e}"));
        }
    }
    Ok(())
}

/// Waits until `done` or [`WAIT_LIMIT`]; the error names `what`.
fn wait_for(name: &str, what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + WAIT_LIMIT;
    while !done() {
        if Instant::now() > end {
            return Err(format!(
                "machine {name} did not {what} within {}s",
                WAIT_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether the entry's leader, launcher and supervisor are all gone.
fn ended(e: &Entry) -> bool {
    !e.alive() && !registry::running(e.supervisor.unwrap_or(0)) && !registry::running(e.launcher)
}

/// What `poweroff`, `reboot` and `terminate` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Poweroff,
    Reboot,
    Terminate,
}

/// `rnet poweroff|reboot|terminate NAME`; returns when done unless `no_wait`.
pub fn act(
    client: &Client,
    runtime_dir: &Path,
    verb: Verb,
    name: &MachineName,
    no_wait: bool,
) -> Result<(), String> {
    let Some(mut e) = registry::get(runtime_dir, name.as_str()) else {
        return act_attached(client, verb, name, no_wait);
    };
    // A supervisor that was killed cannot pass anything on: the launcher is asked directly.
    e.supervisor = e.supervisor.filter(|p| registry::running(*p));
    match verb {
        // The supervisor stops the launcher and starts nothing again. Without one, rnetd stops
        // what it attached (`rnet stop`'s path: SIGRTMIN+3 to systemd, else SIGTERM, through
        // its pidfd, SIGKILL after 10 s), and the launcher of any other machine does the same
        // on SIGTERM.
        Verb::Poweroff => match e.supervisor {
            Some(s) => signal(s, libc::SIGTERM, name.as_str())?,
            None => {
                let stop = Request::Stop {
                    machine: name.clone(),
                };
                match client.call(&stop, None) {
                    Ok(_) => {}
                    Err(api::ClientError::Api(a)) if a.kind == api::ErrorKind::NotFound => {
                        signal(e.launcher, libc::SIGTERM, name.as_str())?;
                    }
                    // rnetd may not run at all for a machine without its links.
                    Err(_) if e.network == "host" || e.network == "private" => {
                        signal(e.launcher, libc::SIGTERM, name.as_str())?;
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
        },
        Verb::Terminate => {
            if let Some(s) = e.supervisor {
                signal(s, supervisor::SIG_NO_RESTART, name.as_str())?;
            }
            signal(e.leader, libc::SIGKILL, name.as_str())?;
        }
        // systemd reboots on SIGINT (as machinectl asks it); another init is restarted by the
        // supervisor.
        Verb::Reboot => match (e.systemd, e.supervisor) {
            (true, _) => signal(e.leader, libc::SIGINT, name.as_str())?,
            (false, Some(s)) => signal(s, supervisor::SIG_RESTART, name.as_str())?,
            (false, None) => {
                return Err(format!(
                    "machine {name} has no systemd init and was not started with rnet start: nothing would start it again"
                ));
            }
        },
    }
    if no_wait {
        return Ok(());
    }
    match verb {
        Verb::Poweroff => wait_for(name.as_str(), "power off", || ended(&e)),
        Verb::Terminate => wait_for(name.as_str(), "end", || ended(&e)),
        Verb::Reboot => wait_for(name.as_str(), "start again", || {
            registry::get(runtime_dir, name.as_str())
                .is_some_and(|n| n.ready && n.leader != e.leader)
        }),
    }
}

/// A machine rnetd attached but no launcher registered (CNI, OCI hooks, netns).
fn act_attached(
    client: &Client,
    verb: Verb,
    name: &MachineName,
    no_wait: bool,
) -> Result<(), String> {
    let status = client.call(
        &Request::Status {
            machine: name.clone(),
        },
        None,
    );
    match verb {
        Verb::Poweroff => {
            client
                .call(
                    &Request::Stop {
                        machine: name.clone(),
                    },
                    None,
                )
                .map_err(|e| e.to_string())?;
        }
        Verb::Terminate => match &status {
            Ok(Response::Status(m)) if m.pid != 0 => signal(m.pid, libc::SIGKILL, name.as_str())?,
            Ok(_) => return Err(format!("machine {name} has no process to kill")),
            Err(e) => return Err(e.to_string()),
        },
        Verb::Reboot => {
            return Err(match status {
                Ok(_) => format!("machine {name} was not started by rnet: it cannot be rebooted"),
                Err(e) => e.to_string(),
            });
        }
    }
    if no_wait {
        return Ok(());
    }
    let pid = match status {
        Ok(Response::Status(m)) => m.pid,
        _ => 0,
    };
    wait_for(name.as_str(), "end", || !registry::running(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_systemd_prints_them() {
        assert_eq!(duration(7), "7s");
        assert_eq!(duration(367), "6min 7s");
        assert_eq!(duration(3 * 3600 + 240), "3h 4min");
        assert_eq!(duration(86400 + 7200 + 5), "1d 2h");
    }
}
