//! `rnet`: the container launcher and CLI client of `rnetd`.

mod cgroup;
mod cli;
mod container;
mod images;
mod ipv6;
mod machines;
mod netconf;
mod netns;
mod oci;
mod properties;
mod run;
mod settings;
mod timing;

use std::process::ExitCode;

use api::{Client, Machine, Request, Response, Span, Zone, ZoneConfig};
use clap::Parser;

use crate::cli::{Cli, Command, ZoneCommand};

fn main() -> ExitCode {
    timing::init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line: clap's first line names the problem; the usage block is noise.
            let text = e.render().to_string();
            let mut lines = text.lines();
            let mut first = lines.next().unwrap_or("invalid arguments").to_owned();
            // "the following required arguments were not provided:" names them on the next line.
            if first.ends_with(':')
                && let Some(next) = lines.next()
            {
                first = format!("{first} {}", next.trim());
            }
            eprintln!("rnet: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    timing::mark("arguments parsed");
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rnet: {e}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    let client = Client::new(&cli.runtime_dir);
    let images = images::Images::new(&cli.machines_dir);
    match cli.command {
        Command::Run(args) => run::run(args, &client, &cli.runtime_dir).map(ExitCode::from),
        Command::List { json } => {
            let list = machines::all(&client, &cli.runtime_dir)?;
            if json {
                let v: Vec<serde_json::Value> = list.iter().map(machines::Shown::json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_table(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Zone(cmd) => zone(&client, cmd),
        Command::SetProperty {
            runtime,
            machine,
            properties,
        } => set_property(
            &client,
            &cli.runtime_dir,
            &images,
            runtime,
            &machine,
            &properties,
        ),
        Command::Top { once } => top(&client, &cli.runtime_dir, once),
        cmd @ (Command::Images { .. }
        | Command::ImportTar { .. }
        | Command::ExportTar { .. }
        | Command::PullTar { .. }
        | Command::Remove { .. }
        | Command::Clone { .. }
        | Command::Rename { .. }) => {
            image_command(&images, &client, &cli.runtime_dir, cmd).map_err(|e| e.to_string())
        }
        Command::Netns(cmd) => netns::run(&client, cmd).map(|()| ExitCode::SUCCESS),
        Command::OciHook { stage } => oci::run(&client, stage).map(|()| ExitCode::SUCCESS),
        Command::Stop { machine } => {
            machines::act(
                &client,
                &cli.runtime_dir,
                machines::Verb::Poweroff,
                &machine,
                false,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { machine, json } => {
            let m = machines::one(&client, &cli.runtime_dir, &machine)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&m.status_json()).unwrap_or_default()
                );
            } else {
                match &m.attached {
                    Some(a) => print_status(a),
                    None => machines::print_status_head(&m),
                }
                machines::print_status_extra(&m);
            }
            Ok(ExitCode::SUCCESS)
        }
        cmd @ (Command::Start { .. }
        | Command::Poweroff { .. }
        | Command::Reboot { .. }
        | Command::Terminate { .. }
        | Command::Shell { .. }
        | Command::Login { .. }
        | Command::Enable { .. }
        | Command::Disable { .. }) => {
            machine_command(&cli.runtime_dir, &cli.machines_dir, &client, cmd)
        }
    }
}

/// `rnet set-property`: the running machine's cgroup (if it runs) and, without `--runtime`, the
/// properties kept beside its image for its next runs (`launcher/src/properties.rs`). A machine
/// that neither runs nor has an image is refused, and nothing is written.
fn set_property(
    client: &Client,
    runtime_dir: &std::path::Path,
    images: &images::Images,
    runtime: bool,
    machine: &api::MachineName,
    properties: &[cgroup::Property],
) -> Result<ExitCode, String> {
    let running = machine_cgroup(client, runtime_dir, machine);
    if runtime {
        apply_properties(&running?, properties)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (running, images.find(machine.as_str())) {
        (Err(_), Err(images::ImageError::NotFound(_, dir))) => Err(format!(
            "no running machine {machine} and no image {machine} in {}: nothing changed",
            dir.display()
        )),
        (Ok(cg), Err(images::ImageError::NotFound(_, dir))) => {
            apply_properties(&cg, properties)?;
            eprintln!(
                "rnet: note: no image {machine} in {}: the change applies to the running machine only",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        (_, Err(e)) => Err(e.to_string()),
        (running, Ok(image)) => {
            if let Ok(cg) = &running {
                apply_properties(cg, properties)?;
            }
            crate::properties::update(&images.properties_path(&image.name), properties)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn apply_properties(cg: &cgroup::Cgroup, properties: &[cgroup::Property]) -> Result<(), String> {
    for note in cg.apply(properties).map_err(|e| e.to_string())? {
        eprintln!("rnet: note: {note}");
    }
    Ok(())
}

/// The cgroup of a running machine: from its pid when rnetd lists it, else `rnet-NAME` beside
/// the caller's own cgroup (a container without a link of rnetd's started from the same place).
/// None for a machine run with `--keep-unit`: the cgroup it is in is its caller's.
fn machine_cgroup(
    client: &Client,
    runtime_dir: &std::path::Path,
    machine: &api::MachineName,
) -> Result<cgroup::Cgroup, String> {
    if machines::registry::get(runtime_dir, machine.as_str()).is_some_and(|e| e.keep_unit) {
        return Err(format!(
            "machine {machine} runs in its caller's cgroup (--keep-unit): it has no cgroup of \
             its own to change"
        ));
    }
    if let Ok(Response::Status(m)) = client.call(
        &Request::Status {
            machine: machine.clone(),
        },
        None,
    ) && let Ok(cg) = cgroup::Cgroup::of_pid(m.pid)
    {
        return Ok(cg);
    }
    cgroup::Cgroup::find(machine.as_str())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no running machine {machine}"))
}

/// `rnet top`: per-machine CPU, memory and tasks from their cgroups, like systemd-cgtop.
fn top(client: &Client, runtime_dir: &std::path::Path, once: bool) -> Result<ExitCode, String> {
    let mut last: std::collections::HashMap<String, (u64, std::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        // Every machine: the registry's and rnetd's.
        let list = machines::all(client, runtime_dir)?;
        let mut rows = Vec::new();
        for m in &list {
            let Some(cg) = m.cgroup() else {
                continue;
            };
            let (cpu, mem, tasks) = cg.usage();
            let now = std::time::Instant::now();
            let name = m.name.clone();
            let pct = match (cpu, last.get(&name)) {
                (Some(c), Some((c0, t0))) => {
                    let wall = now.duration_since(*t0).as_nanos() as f64;
                    (wall > 0.0).then(|| (c.saturating_sub(*c0)) as f64 / wall * 100.0)
                }
                _ => None,
            };
            if let Some(c) = cpu {
                last.insert(name.clone(), (c, now));
            }
            rows.push((name, tasks, pct, mem));
        }
        if !once {
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "{:<24} {:>6} {:>8} {:>12}",
            "MACHINE", "TASKS", "%CPU", "MEMORY"
        );
        let dash = || "-".to_owned();
        for (name, tasks, pct, mem) in rows {
            println!(
                "{:<24} {:>6} {:>8} {:>12}",
                name,
                tasks.map_or_else(dash, |t| t.to_string()),
                pct.map_or_else(dash, |p| format!("{p:.1}")),
                mem.map_or_else(dash, |b| format!("{:.1}M", b as f64 / 1048576.0)),
            );
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The image verbs (machinectl's names).
fn image_command(
    images: &images::Images,
    client: &Client,
    runtime_dir: &std::path::Path,
    command: Command,
) -> Result<ExitCode, images::ImageError> {
    match command {
        Command::Images { json } => {
            let list = images.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print_images(&list);
            }
        }
        Command::ImportTar { file, name } => {
            let image = if file == "-" {
                images.import_tar(std::io::stdin().lock(), name.as_str())?
            } else {
                let f = std::fs::File::open(&file).map_err(|source| images::ImageError::Io {
                    what: "opening",
                    path: file.into(),
                    source,
                })?;
                images.import_tar(f, name.as_str())?
            };
            eprintln!("image {} imported to {}", image.name, image.path.display());
        }
        Command::ExportTar { name, file } => images.export_tar(name.as_str(), &file)?,
        Command::PullTar { url, name, verify } => {
            let image = images.pull_tar(&url, name.as_ref().map(|n| n.as_str()), verify)?;
            eprintln!("image {} pulled to {}", image.name, image.path.display());
        }
        Command::Remove { names } => {
            for name in &names {
                refuse_running(client, runtime_dir, name)?;
                images.remove(name.as_str())?;
            }
        }
        Command::Clone { name, new } => images.clone_image(name.as_str(), new.as_str())?,
        Command::Rename { name, new } => {
            refuse_running(client, runtime_dir, &name)?;
            images.rename(name.as_str(), new.as_str())?;
        }
        _ => unreachable!("not an image command"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses to remove or rename the image of a machine rnetd lists as running (when rnetd runs).
fn refuse_running(
    client: &Client,
    runtime_dir: &std::path::Path,
    name: &api::MachineName,
) -> Result<(), images::ImageError> {
    let attached = || {
        matches!(client.call(&Request::List, None),
            Ok(Response::Machines(list)) if list.iter().any(|m| &m.machine == name))
    };
    if machines::registry::get(runtime_dir, name.as_str()).is_some() || attached() {
        return Err(images::ImageError::Refused(format!(
            "machine {name} is running; stop it first"
        )));
    }
    Ok(())
}

fn print_images(list: &[images::Image]) {
    println!(
        "{:<24} {:<10} {:>12} {:<8} {:<}",
        "NAME", "TYPE", "USAGE", "SETTINGS", "MODIFIED"
    );
    for i in list {
        let kind = match i.kind {
            images::Kind::Directory => "directory",
            images::Kind::Raw => "raw",
        };
        println!(
            "{:<24} {:<10} {:>12} {:<8} {:<}",
            i.name,
            kind,
            i.usage.map_or("-".into(), |u| u.to_string()),
            if i.settings { "yes" } else { "no" },
            i.modified.map_or("-".into(), |m| m.to_string())
        );
    }
    println!("\n{} image(s) listed.", list.len());
}

fn zone(client: &Client, cmd: ZoneCommand) -> Result<ExitCode, String> {
    match cmd {
        ZoneCommand::Create {
            name,
            subnet,
            no_masquerade,
            no_dhcp,
            isolated,
            distributed,
            vni,
        } => {
            let (subnet, span) = if distributed {
                (None, Some(Span { subnet, vni }))
            } else {
                (subnet, None)
            };
            let req = Request::ZoneCreate(ZoneConfig {
                name,
                subnet,
                masquerade: !no_masquerade,
                dhcp: !no_dhcp,
                isolated,
                subnet6: None,
                span,
            });
            let Response::Zone(z) = call(client, &req)? else {
                return Err("rnetd sent an unexpected answer to zone create".into());
            };
            match &z.span {
                Some(s) => println!(
                    "zone {} joined: bridge {}, subnet {} (VNI {}), this host's slice {}",
                    z.name, z.bridge, s.subnet, s.vni, z.subnet
                ),
                None => println!(
                    "zone {} created: bridge {}, subnet {}",
                    z.name, z.bridge, z.subnet
                ),
            }
        }
        ZoneCommand::List { json } => {
            let Response::Zones(list) = call(client, &Request::ZoneList)? else {
                return Err("rnetd sent an unexpected answer to zone list".into());
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print_zones(&list);
            }
        }
        ZoneCommand::Show { name, json } => {
            let Response::Zone(z) = call(client, &Request::ZoneShow { zone: name })? else {
                return Err("rnetd sent an unexpected answer to zone show".into());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&z).unwrap_or_default());
            } else {
                print_zones(std::slice::from_ref(&z));
            }
        }
        ZoneCommand::Delete { name, force } => {
            call(client, &Request::ZoneDelete { zone: name, force })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_zones(list: &[Zone]) {
    println!(
        "{:<13} {:<16} {:<18} {:>7} {:>6} {:<8} {:<24} {:<22}",
        "ZONE", "BRIDGE", "SUBNET", "MEMBERS", "LEASES", "KIND", "FLAGS", "SUBNET6"
    );
    for z in list {
        let mut flags = Vec::new();
        if z.masquerade {
            flags.push("masquerade");
        }
        if z.dhcp {
            flags.push("dhcp");
        }
        if z.isolated {
            flags.push("isolated");
        }
        println!(
            "{:<13} {:<16} {:<18} {:>7} {:>6} {:<8} {:<24} {:<22}",
            z.name,
            z.bridge,
            z.subnet.to_string(),
            z.members.len(),
            z.leases,
            if z.explicit { "explicit" } else { "implicit" },
            flags.join(","),
            z.subnet6.map_or_else(|| "-".into(), |s| s.to_string())
        );
        if let Some(span) = &z.span {
            println!(
                "  distributed: subnet {}, VNI {}, this host {}",
                span.subnet, span.vni, span.node
            );
            for h in &span.hosts {
                println!(
                    "    host {:<20} underlay {:<16} slice {}",
                    h.node, h.underlay, h.slice
                );
            }
        }
    }
    println!("\n{} zone(s) listed.", list.len());
}

fn call(client: &Client, req: &Request) -> Result<Response, String> {
    client.call(req, None).map_err(|e| e.to_string())
}

fn print_table(list: &[machines::Shown]) {
    println!(
        "{:<24} {:>8} {:<16} {:<18} {:<16} {:<39} {:<10} {:<14} {:<10} {:<8}",
        "MACHINE",
        "PID",
        "HOST-IF",
        "SUBNET",
        "ADDRESS",
        "ADDRESS6",
        "CLASS",
        "NETWORK",
        "UPTIME",
        "STATE"
    );
    let dash = || "-".to_owned();
    for s in list {
        let m: Option<&Machine> = s.attached.as_ref();
        println!(
            "{:<24} {:>8} {:<16} {:<18} {:<16} {:<39} {}",
            s.name,
            s.entry
                .as_ref()
                .map(|e| e.leader)
                .or(m.map(|m| m.pid))
                .unwrap_or_default(),
            m.and_then(|m| m.host_ifname.as_deref()).unwrap_or("-"),
            m.and_then(|m| m.subnet)
                .map_or_else(dash, |s| s.to_string()),
            m.and_then(|m| m.container_address)
                .map_or_else(dash, |a| a.to_string()),
            m.and_then(|m| m.container_address6)
                .map_or_else(dash, |a| a.to_string()),
            machines::table_extra(s)
        );
    }
    println!("\n{} machine(s) listed.", list.len());
}

/// machinectl's verbs for running machines.
fn machine_command(
    runtime_dir: &std::path::Path,
    machines_dir: &std::path::Path,
    client: &Client,
    command: Command,
) -> Result<ExitCode, String> {
    use machines::Verb;
    let act = |verb, names: Vec<api::MachineName>, no_wait| -> Result<ExitCode, String> {
        for name in &names {
            machines::act(client, runtime_dir, verb, name, no_wait)?;
        }
        Ok(ExitCode::SUCCESS)
    };
    match command {
        Command::Start {
            names,
            foreground: true,
            log,
        } => {
            let [name] = &names[..] else {
                return Err("start --foreground takes one machine".into());
            };
            machines::supervisor::foreground(
                runtime_dir,
                machines_dir,
                name.as_str(),
                log.as_deref(),
            )
        }
        Command::Start { names, .. } => {
            for name in &names {
                machines::supervisor::start(runtime_dir, machines_dir, name.as_str())?;
                if let Some(e) = machines::registry::get(runtime_dir, name.as_str()) {
                    eprintln!("machine {name} started (leader pid {})", e.leader);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Poweroff { names, no_wait } => act(Verb::Poweroff, names, no_wait),
        Command::Reboot { names, no_wait } => act(Verb::Reboot, names, no_wait),
        Command::Terminate { names, no_wait } => act(Verb::Terminate, names, no_wait),
        Command::Shell {
            uid,
            target,
            command,
        } => {
            let (user, name) = machines::shell::split_target(&target);
            let name = api::MachineName::new(name).map_err(|e| e.to_string())?;
            let user = uid.as_deref().or(user);
            let what = if command.is_empty() {
                machines::shell::What::Shell
            } else {
                machines::shell::What::Command(command)
            };
            machines::shell::run(runtime_dir, name.as_str(), user, what).map(ExitCode::from)
        }
        Command::Login { machine } => machines::shell::run(
            runtime_dir,
            machine.as_str(),
            None,
            machines::shell::What::Login,
        )
        .map(ExitCode::from),
        Command::Enable { names, root } => {
            let images = images::Images::new(machines_dir);
            for name in &names {
                images.find(name.as_str()).map_err(|e| e.to_string())?;
                let link = machines::unit::enable(&root, name.as_str())?;
                eprintln!("rnet@{name}.service enabled ({})", link.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Disable { names, root } => {
            for name in &names {
                if !machines::unit::disable(&root, name.as_str())? {
                    eprintln!("rnet@{name}.service was not enabled");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("not a machine command"),
    }
}

fn print_status(m: &Machine) {
    println!("{}", m.machine);
    println!("          PID: {}", m.pid);
    if let Some(h) = &m.held {
        println!("      Held by: {} ({})", h.owner, h.netns.display());
    }
    if let (Some(ifname), Some(mac)) = (&m.host_ifname, &m.host_mac) {
        match &m.host_altname {
            Some(alt) => println!("    Host link: {ifname} (altname {alt}), {mac}"),
            None => println!("    Host link: {ifname}, {mac}"),
        }
    }
    if let (Some(ifname), Some(mac)) = (&m.container_ifname, &m.container_mac) {
        println!("    Container: {ifname}, {mac}");
    }
    for l in &m.links {
        println!("   Extra link: {} ({:?})", l.container_ifname, l.spec);
    }
    match &m.network {
        api::NetworkSpec::Veth | api::NetworkSpec::None => {}
        api::NetworkSpec::Zone(z) => println!("         Zone: {z} (bridge {})", z.bridge()),
        api::NetworkSpec::Bridge(b) => println!("       Bridge: {b}"),
    }
    if let Some(subnet) = m.subnet {
        println!("       Subnet: {subnet}");
    }
    if let (Some(addr), Some(gw)) = (m.container_address, m.host_address) {
        println!("      Address: {addr} via {gw}");
    }
    if let Some(subnet6) = m.subnet6 {
        println!("      Subnet6: {subnet6}");
    }
    if let (Some(addr), Some(gw)) = (m.container_address6, m.host_address6) {
        println!("     Address6: {addr} via {gw}");
    }
    for p in &m.ports {
        println!("         Port: {p}");
    }
    if !m.dns.is_empty() {
        let dns: Vec<String> = m.dns.iter().map(ToString::to_string).collect();
        println!("          DNS: {}", dns.join(" "));
    }
    for chain in &m.host_firewall {
        println!("Host firewall: {chain}");
    }
}
