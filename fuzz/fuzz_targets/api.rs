//! Arbitrary bytes into what rnetd does with a client's bytes before any kernel work: the frame
//! header (`wire::body_len`), the body (`wire::decode::<Request>`), then for what decodes, the
//! pure steps a request goes through (link names, default extra-link names, port mappings and
//! their firewall form, zone bridges). Must never panic; what decodes must be valid and must
//! survive encode/decode unchanged.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use netd::api::{ExtraLink, IfName, NetworkSpec, PortSpec, Request, ZoneConfig, wire};
use netd::firewall::LinkRules;
use netd::naming::{LinkName, MacKey, MachineId, generate_mac, shorten_ifname};

fuzz_target!(|data: &[u8]| {
    // As a frame: header, then as much body as the header announces and the input holds.
    if let Some((header, rest)) = data.split_first_chunk::<4>()
        && let Ok(len) = wire::body_len(*header)
    {
        assert!(len <= wire::MAX_FRAME);
        request(&rest[..len.min(rest.len())]);
    }
    // As a body alone (the seeds are bodies).
    request(data);
});

fn request(body: &[u8]) {
    let Ok(req) = wire::decode::<Request>(body) else {
        return;
    };
    let _ = req.is_change();
    match &req {
        Request::Attach(a) => {
            let machine = a.machine.as_str();
            for prefix in ["ve-", "vb-"] {
                let name = LinkName::new(prefix, machine);
                assert_eq!(IfName::new(&name.ifname).err(), None, "{name:?}");
            }
            let id = MachineId([7; 16]);
            let _ = generate_mac(id, machine, MacKey::Host, 0);
            network(&a.network);
            for l in &a.links {
                link(l);
            }
            for (i, p) in a.ports.iter().enumerate() {
                port(p);
                for q in &a.ports[..i] {
                    assert_eq!(p.overlaps(q), q.overlaps(p));
                }
            }
            let subnet = "192.168.7.16/28".parse().expect("valid subnet");
            let container = IpAddr::V4(Ipv4Addr::new(192, 168, 7, 18));
            let _ = LinkRules::new("ve-fuzz", subnet, container, &a.ports);
        }
        Request::ZoneCreate(config) => zone(config),
        Request::ZoneShow { zone } | Request::ZoneDelete { zone, .. } => {
            assert_eq!(IfName::new(&zone.bridge()).err(), None);
        }
        Request::Detach { .. } | Request::Stop { .. } | Request::Status { .. } => {}
        Request::List | Request::ZoneList => {}
    }
    let frame = wire::encode(&req);
    let header = *frame.first_chunk::<4>().expect("a frame has a header");
    assert_eq!(wire::body_len(header).ok(), Some(frame.len() - 4));
    let again = wire::decode::<Request>(&frame[4..]).expect("an encoded request decodes");
    assert_eq!(again, req);
}

fn network(spec: &NetworkSpec) {
    match spec {
        NetworkSpec::Bridge(b) => assert_eq!(IfName::new(b).err(), None),
        NetworkSpec::Zone(z) => assert_eq!(IfName::new(&z.bridge()).err(), None),
        NetworkSpec::Veth | NetworkSpec::None => {}
    }
}

fn link(l: &ExtraLink) {
    let (given, default) = match l {
        ExtraLink::Macvlan { parent, name } => (name, shorten_ifname(&format!("mv-{parent}"))),
        ExtraLink::Ipvlan { parent, name } => (name, shorten_ifname(&format!("iv-{parent}"))),
        ExtraLink::Interface { name, rename } => (rename, name.clone()),
        ExtraLink::VethExtra { host, container } => (container, host.clone()),
    };
    let inside = given.clone().unwrap_or(default);
    assert_eq!(IfName::new(&inside).err(), None, "{l:?}");
}

fn port(p: &PortSpec) {
    assert_eq!(p.check(), Ok(()));
    let text = p.to_string();
    let parsed: PortSpec = text.parse().expect("a port spec's text parses");
    assert_eq!(&parsed, p, "{text}");
}

fn zone(config: &ZoneConfig) {
    assert_eq!(IfName::new(&config.name.bridge()).err(), None);
    if let Some(net) = config.subnet {
        assert_eq!(ZoneConfig::check_subnet(net), Ok(()));
    }
}
