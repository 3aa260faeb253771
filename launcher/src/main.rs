//! `rnet`: the container launcher and CLI client of `rnetd`.

mod cli;
mod ipv6;
mod run;

use std::process::ExitCode;

use api::{Client, Machine, Request, Response, Zone, ZoneConfig};
use clap::Parser;

use crate::cli::{Cli, Command, ZoneCommand};

fn main() -> ExitCode {
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
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("rnet: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
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
    match cli.command {
        Command::Run(args) => run::run(args, &client).map(ExitCode::from),
        Command::List { json } => {
            let Response::Machines(list) = call(&client, &Request::List)? else {
                return Err("rnetd sent an unexpected answer to list".into());
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print_table(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Zone(cmd) => zone(&client, cmd),
        Command::Stop { machine } => {
            call(&client, &Request::Stop { machine })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { machine, json } => {
            let Response::Status(m) = call(&client, &Request::Status { machine })? else {
                return Err("rnetd sent an unexpected answer to status".into());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            } else {
                print_status(&m);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn zone(client: &Client, cmd: ZoneCommand) -> Result<ExitCode, String> {
    match cmd {
        ZoneCommand::Create {
            name,
            subnet,
            no_masquerade,
            no_dhcp,
            isolated,
        } => {
            let req = Request::ZoneCreate(ZoneConfig {
                name,
                subnet,
                masquerade: !no_masquerade,
                dhcp: !no_dhcp,
                isolated,
                subnet6: None,
            });
            let Response::Zone(z) = call(client, &req)? else {
                return Err("rnetd sent an unexpected answer to zone create".into());
            };
            println!(
                "zone {} created: bridge {}, subnet {}",
                z.name, z.bridge, z.subnet
            );
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
    }
    println!("\n{} zone(s) listed.", list.len());
}

fn call(client: &Client, req: &Request) -> Result<Response, String> {
    client.call(req, None).map_err(|e| e.to_string())
}

fn print_table(list: &[Machine]) {
    println!(
        "{:<24} {:>8} {:<16} {:<18} {:<16} {:<39}",
        "MACHINE", "PID", "HOST-IF", "SUBNET", "ADDRESS", "ADDRESS6"
    );
    for m in list {
        println!(
            "{:<24} {:>8} {:<16} {:<18} {:<16} {:<39}",
            m.machine,
            m.pid,
            m.host_ifname.as_deref().unwrap_or("-"),
            m.subnet
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            m.container_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            m.container_address6
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("\n{} machine(s) listed.", list.len());
}

fn print_status(m: &Machine) {
    println!("{}", m.machine);
    println!("          PID: {}", m.pid);
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
