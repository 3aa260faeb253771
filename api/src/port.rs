//! `-p/--port [tcp:|udp:][ADDR:]HOST[:CONT]` — nspawn's syntax plus a host address and port
//! ranges (`8000-8009:9000-9009`, shifted 1:1). An IPv6 host address is written in brackets
//! (`[2001:db8::2]:8080:80`, `[::1]:8080:80`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a published port (nft `inet_proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The spelling of `--port`, serde and nft: `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A published port or port range, as asked for (the container address is the daemon's to fill).
/// A decoded spec is checked like a parsed one ([`PortSpec::check`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPortSpec")]
pub struct PortSpec {
    /// Protocol.
    pub proto: Proto,
    /// Host address the port is bound to; `None` for every local address (127.0.0.1 included).
    pub host_address: Option<IpAddr>,
    /// First host port.
    pub host_first: u16,
    /// Last host port (equal to `host_first` for a single port).
    pub host_last: u16,
    /// Container port the first host port maps to.
    pub container_port: u16,
}

/// [`PortSpec`] as it arrives, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortSpec {
    proto: Proto,
    host_address: Option<IpAddr>,
    host_first: u16,
    host_last: u16,
    container_port: u16,
}

impl TryFrom<RawPortSpec> for PortSpec {
    type Error = PortError;

    fn try_from(raw: RawPortSpec) -> Result<Self, PortError> {
        let spec = PortSpec {
            proto: raw.proto,
            host_address: raw.host_address,
            host_first: raw.host_first,
            host_last: raw.host_last,
            container_port: raw.container_port,
        };
        spec.check().map_err(|reason| PortError {
            spec: spec.raw_text(),
            reason,
        })?;
        Ok(spec)
    }
}

/// Why a `--port` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {spec:?}: {reason}")]
pub struct PortError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

fn port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{text:?} is not a port number (1-65535)")),
    }
}

fn range(text: &str) -> Result<(u16, u16), String> {
    match text.split_once('-') {
        None => port(text).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            Ok((a, b))
        }
    }
}

impl FromStr for PortSpec {
    type Err = PortError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PortError {
            spec: spec.to_owned(),
            reason,
        };
        let (proto, rest) = if let Some(r) = spec.strip_prefix("tcp:") {
            (Proto::Tcp, r)
        } else if let Some(r) = spec.strip_prefix("udp:") {
            (Proto::Udp, r)
        } else {
            (Proto::Tcp, spec)
        };
        // A bracketed IPv6 host address first, else split on ':'.
        let (host_address, ports) = if let Some(r) = rest.strip_prefix('[') {
            let (addr, after) = r
                .split_once("]:")
                .ok_or_else(|| err("an IPv6 address must be written [ADDR]:PORT".into()))?;
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| err(format!("{addr:?} is not an IP address")))?;
            (Some(addr), after)
        } else {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.as_slice() {
                [a, _] | [a, _, _] if a.parse::<IpAddr>().is_ok() => {
                    (a.parse().ok(), &rest[a.len() + 1..])
                }
                [a, _, _] => return Err(err(format!("{a:?} is not an IP address"))),
                _ => (None, rest),
            }
        };
        let (host, cont) = match ports.split_once(':') {
            Some((h, c)) => (range(h).map_err(err)?, Some(range(c).map_err(err)?)),
            None => (range(ports).map_err(err)?, None),
        };
        let container_port = match cont {
            None => host.0,
            Some((c0, c1)) => {
                if c1 != c0 && c1 - c0 != host.1 - host.0 {
                    return Err(err(format!(
                        "host range has {} ports but container range has {}",
                        u32::from(host.1 - host.0) + 1,
                        u32::from(c1 - c0) + 1
                    )));
                }
                c0
            }
        };
        let parsed = PortSpec {
            proto,
            host_address,
            host_first: host.0,
            host_last: host.1,
            container_port,
        };
        parsed.check().map_err(err)?;
        Ok(parsed)
    }
}

impl PortSpec {
    /// Checks what parsing and decoding both must hold: no port 0, a forward host range, a
    /// container range within 65535, and a specific IPv4 host address (not `0.0.0.0` or
    /// multicast; leaving it out means every local address).
    pub fn check(&self) -> Result<(), String> {
        if self.host_first == 0 || self.container_port == 0 {
            return Err("port 0 is not a port".into());
        }
        if self.host_first > self.host_last {
            return Err(format!(
                "range {}-{} runs backwards",
                self.host_first, self.host_last
            ));
        }
        if u32::from(self.container_port) + u32::from(self.host_last - self.host_first) > 65535 {
            return Err("container range runs past 65535".into());
        }
        if self
            .host_address
            .is_some_and(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err("leave the address out to publish on every local address".into());
        }
        Ok(())
    }

    /// The fields as text without any arithmetic, for errors about specs that are not valid.
    fn raw_text(&self) -> String {
        let addr = match self.host_address {
            Some(IpAddr::V6(a)) => format!("[{a}]:"),
            Some(IpAddr::V4(a)) => format!("{a}:"),
            None => String::new(),
        };
        format!(
            "{}:{addr}{}-{}:{}",
            self.proto, self.host_first, self.host_last, self.container_port
        )
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.proto)?;
        match self.host_address {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            Some(IpAddr::V4(a)) => write!(f, "{a}:")?,
            None => {}
        }
        let span = self.host_last - self.host_first;
        if span == 0 {
            write!(f, "{}:{}", self.host_first, self.container_port)
        } else {
            write!(
                f,
                "{}-{}:{}-{}",
                self.host_first,
                self.host_last,
                self.container_port,
                u32::from(self.container_port) + u32::from(span)
            )
        }
    }
}

impl PortSpec {
    /// Whether two specs claim a common host port (same protocol and address, overlapping
    /// ranges; "every address" overlaps any specific address).
    pub fn overlaps(&self, other: &PortSpec) -> bool {
        self.proto == other.proto
            && (self.host_address.is_none()
                || other.host_address.is_none()
                || self.host_address == other.host_address)
            && self.host_first <= other.host_last
            && other.host_first <= self.host_last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn nspawn_forms() {
        assert_eq!(p("8080").to_string(), "tcp:8080:8080");
        assert_eq!(p("8080:80").to_string(), "tcp:8080:80");
        assert_eq!(p("udp:53").to_string(), "udp:53:53");
        assert_eq!(p("tcp:2222:22").to_string(), "tcp:2222:22");
    }

    #[test]
    fn extensions() {
        let s = p("203.0.113.2:8080:80");
        assert_eq!(s.host_address, Some("203.0.113.2".parse().unwrap()));
        assert_eq!(
            (s.host_first, s.host_last, s.container_port),
            (8080, 8080, 80)
        );
        assert_eq!(p("127.0.0.1:8080").container_port, 8080);
        assert_eq!(
            p("8000-8009:9000-9009").to_string(),
            "tcp:8000-8009:9000-9009"
        );
        assert_eq!(p("8000-8009:9000").to_string(), "tcp:8000-8009:9000-9009");
        assert_eq!(p("8000-8009").to_string(), "tcp:8000-8009:8000-8009");
    }

    #[test]
    fn ipv6_host_addresses_are_parsed_and_printed_in_brackets() {
        let p = "udp:[fd00::1]:53:5353".parse::<PortSpec>().unwrap();
        assert_eq!(p.host_address, Some("fd00::1".parse().unwrap()));
        assert_eq!(p.to_string(), "udp:[fd00::1]:53:5353");
        let p = "[::1]:8000-8002:80".parse::<PortSpec>().unwrap();
        assert_eq!(p.to_string(), "tcp:[::1]:8000-8002:80-82");
        let json = r#"{"proto":"tcp","host_address":"2001:db8::2","host_first":80,"host_last":80,"container_port":80}"#;
        let p = serde_json::from_str::<PortSpec>(json).unwrap();
        assert_eq!(p.to_string(), "tcp:[2001:db8::2]:80:80");
        let e = "[::]:80".parse::<PortSpec>().unwrap_err().to_string();
        assert!(e.contains("leave the address out"), "{e}");
        let e = "[ff02::1]:80".parse::<PortSpec>().unwrap_err().to_string();
        assert!(e.contains("leave the address out"), "{e}");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = |s: &str| s.parse::<PortSpec>().unwrap_err().to_string();
        assert_eq!(e("0"), r#"invalid port mapping "0": port 0 is not a port"#);
        assert!(e("70000").contains("not a port number"));
        assert!(e("http").contains("not a port number"));
        assert!(e("9-8").contains("runs backwards"));
        assert!(
            e("8000-8009:9000-9001").contains("host range has 10 ports but container range has 2")
        );
        assert!(e("host:1:2").contains("not an IP address"));
        assert!(e("65530-65535:65533").contains("past 65535"));
        assert!(e("0.0.0.0:80").contains("leave the address out"));
        assert!(e("[::1:80").contains("[ADDR]:PORT"));
        assert!(e("sctp:80").contains(r#""sctp" is not a port number"#));
    }

    #[test]
    fn decoding_checks_like_parsing() {
        let ok = r#"{"proto":"udp","host_address":"127.0.0.1","host_first":53,"host_last":53,"container_port":5353}"#;
        assert_eq!(
            serde_json::from_str::<PortSpec>(ok).unwrap().to_string(),
            "udp:127.0.0.1:53:5353"
        );
        let e = |host_address: &str, first: u16, last: u16, cont: u16| {
            let json = format!(
                r#"{{"proto":"tcp","host_address":{host_address},"host_first":{first},"host_last":{last},"container_port":{cont}}}"#
            );
            let err = serde_json::from_str::<PortSpec>(&json)
                .unwrap_err()
                .to_string();
            err.split(" at line ").next().unwrap().to_owned()
        };
        assert_eq!(
            e("null", 0, 0, 80),
            r#"invalid port mapping "tcp:0-0:80": port 0 is not a port"#
        );
        assert_eq!(
            e("null", 80, 80, 0),
            r#"invalid port mapping "tcp:80-80:0": port 0 is not a port"#
        );
        assert_eq!(
            e("null", 90, 80, 80),
            r#"invalid port mapping "tcp:90-80:80": range 90-80 runs backwards"#
        );
        assert_eq!(
            e("null", 1, 65535, 2),
            r#"invalid port mapping "tcp:1-65535:2": container range runs past 65535"#
        );
        assert_eq!(
            e(r#""::""#, 80, 80, 80),
            r#"invalid port mapping "tcp:[::]:80-80:80": leave the address out to publish on every local address"#
        );
        assert_eq!(
            e(r#""224.0.0.1""#, 80, 80, 80),
            r#"invalid port mapping "tcp:224.0.0.1:80-80:80": leave the address out to publish on every local address"#
        );
        let extra = r#"{"proto":"tcp","host_address":null,"host_first":1,"host_last":1,"container_port":1,"x":0}"#;
        assert!(
            serde_json::from_str::<PortSpec>(extra)
                .unwrap_err()
                .to_string()
                .contains("unknown field `x`")
        );
    }

    #[test]
    fn overlap() {
        assert!(p("8080").overlaps(&p("8000-8100:80")));
        assert!(p("8080").overlaps(&p("127.0.0.1:8080")));
        assert!(!p("8080").overlaps(&p("udp:8080")));
        assert!(!p("127.0.0.1:8080").overlaps(&p("203.0.113.2:8080")));
        assert!(!p("8080").overlaps(&p("8081")));
    }
}
