//! `IF[:NAME]` arguments (`--network-macvlan`, `--network-ipvlan`, `--network-interface`,
//! `--network-veth-extra`), with interface names checked like the kernel does.

use std::str::FromStr;

/// Checks an interface name as the kernel's `dev_valid_name()` (and systemd's
/// `ifname_valid()`): 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name {name:?} contains {c:?}"));
    }
    Ok(())
}

/// `FIRST[:SECOND]`, both valid interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfPair {
    /// The name before the colon.
    pub first: String,
    /// The name after it, if any.
    pub second: Option<String>,
}

impl FromStr for IfPair {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (first, second) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        valid_ifname(first)?;
        if let Some(b) = second {
            valid_ifname(b)?;
        }
        Ok(Self {
            first: first.to_owned(),
            second: second.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let p: IfPair = "eth1:wan".parse().unwrap();
        assert_eq!(
            (p.first.as_str(), p.second.as_deref()),
            ("eth1", Some("wan"))
        );
        let p: IfPair = "eth1".parse().unwrap();
        assert_eq!(p.second, None);
        assert_eq!(
            "eth1:".parse::<IfPair>().unwrap_err(),
            r#"interface name "" must be 1 to 15 characters"#
        );
        assert!(
            "a:b:c"
                .parse::<IfPair>()
                .unwrap_err()
                .contains("contains ':'")
        );
        assert!("averyveryverylongname".parse::<IfPair>().is_err());
        assert!("a b".parse::<IfPair>().is_err());
        assert!("..".parse::<IfPair>().is_err());
    }
}
