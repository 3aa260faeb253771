//! Interface names, checked once for every path they come in by: `IF[:NAME]` arguments
//! (`--network-macvlan`, `--network-ipvlan`, `--network-interface`, `--network-veth-extra`),
//! and the names in a decoded request (extra links, `--network-bridge`).

use std::str::FromStr;

/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = 15;

/// Why an interface name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than [`MAX_IFNAME`] bytes.
    #[error("interface name {name:?} is {len} bytes long; at most {MAX_IFNAME} are allowed")]
    TooLong {
        /// The refused name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// `.` or `..`.
    #[error("interface name {name:?} is not allowed (it names a directory in /sys/class/net)")]
    Reserved {
        /// The refused name.
        name: String,
    },
    /// A character the kernel or `ip` cannot take.
    #[error(
        "interface name {name:?} contains {ch:?}; use printable ASCII other than '/', ':', '%' and spaces"
    )]
    BadChar {
        /// The refused name.
        name: String,
        /// The first offending character.
        ch: char,
    },
}

/// Checks an interface name as the kernel's `dev_valid_name()` and systemd's `ifname_valid()`
/// do: 1 to 15 bytes, not `.` or `..`, printable ASCII without `/`, `:` (alias syntax), `%`
/// (the kernel would expand `%d` into a number of its choosing) or spaces.
pub fn valid_ifname(name: &str) -> Result<(), IfNameError> {
    if name.is_empty() {
        return Err(IfNameError::Empty);
    }
    if name.len() > MAX_IFNAME {
        return Err(IfNameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(IfNameError::Reserved {
            name: name.to_owned(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':' | '%'))
    {
        return Err(IfNameError::BadChar {
            name: name.to_owned(),
            ch,
        });
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
        valid_ifname(first).map_err(|e| e.to_string())?;
        if let Some(b) = second {
            valid_ifname(b).map_err(|e| e.to_string())?;
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
            "interface name is empty"
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

    #[test]
    fn accepts_what_the_kernel_accepts() {
        for n in [
            "eth0",
            "enp0s31f6",
            "br-lan.10",
            "x",
            "a-b_c@d",
            &"x".repeat(15),
        ] {
            assert_eq!(valid_ifname(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn each_refusal_has_its_own_line() {
        let e = |n: &str| valid_ifname(n).unwrap_err().to_string();
        assert_eq!(e(""), "interface name is empty");
        assert_eq!(
            e("sixteen-chars-xx"),
            r#"interface name "sixteen-chars-xx" is 16 bytes long; at most 15 are allowed"#
        );
        // Bytes, not characters: the kernel counts bytes.
        assert_eq!(
            e("ééééééééé"),
            r#"interface name "ééééééééé" is 18 bytes long; at most 15 are allowed"#
        );
        for reserved in [".", ".."] {
            assert_eq!(
                e(reserved),
                format!(
                    "interface name {reserved:?} is not allowed (it names a directory in /sys/class/net)"
                )
            );
        }
        let tail = "use printable ASCII other than '/', ':', '%' and spaces";
        for (name, ch) in [
            ("a/b", "'/'"),
            ("eth0:1", "':'"),
            ("veth%d", "'%'"),
            ("a b", "' '"),
            ("a\tb", r"'\t'"),
            ("a\nb", r"'\n'"),
            ("a\0b", r"'\0'"),
            ("a\u{7f}", r"'\u{7f}'"),
            ("é", "'é'"),
        ] {
            assert_eq!(
                e(name),
                format!("interface name {name:?} contains {ch}; {tail}"),
                "{name:?}"
            );
        }
    }
}
