//! Interface names, checked once for every path they come in by: `IF[:NAME]` arguments
//! (`--network-macvlan`, `--network-ipvlan`, `--network-interface`, `--network-veth-extra`),
//! `--network-bridge`, the names in a decoded request (extra links, bridges), and the names
//! `nat` puts in its sets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

/// A valid Linux interface name: checked as the kernel's `dev_valid_name()` and systemd's
/// `ifname_valid()` check: 1 to 15 bytes, not `.` or `..`, printable ASCII without `/`, `:`
/// (alias syntax, and what nft cannot quote everywhere), `%` (the kernel would expand `%d` into a
/// number of its choosing) or spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IfName(String);

impl IfName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME {
            let len = name.len();
            return Err(IfNameError::TooLong { name, len });
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved { name });
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':' | '%'))
        {
            return Err(IfNameError::BadChar { name, ch });
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for IfName {
    type Err = IfNameError;

    fn from_str(s: &str) -> Result<Self, IfNameError> {
        Self::new(s)
    }
}

impl TryFrom<&str> for IfName {
    type Error = IfNameError;

    fn try_from(s: &str) -> Result<Self, IfNameError> {
        Self::new(s)
    }
}

impl From<IfName> for String {
    fn from(name: IfName) -> String {
        name.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IfName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `FIRST[:SECOND]`, both valid interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfPair {
    /// The name before the colon.
    pub first: IfName,
    /// The name after it, if any.
    pub second: Option<IfName>,
}

impl FromStr for IfPair {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (first, second) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        Ok(Self {
            first: IfName::new(first).map_err(|e| e.to_string())?,
            second: second
                .map(IfName::new)
                .transpose()
                .map_err(|e| e.to_string())?,
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
            (p.first.as_str(), p.second.as_ref().map(IfName::as_str)),
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
            assert_eq!(IfName::new(n).map(String::from), Ok(n.to_owned()), "{n}");
        }
    }

    #[test]
    fn decoding_validates() {
        let name: IfName = serde_json::from_str(r#""ve-web""#).unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""ve-web""#);
        let err = serde_json::from_str::<IfName>(r#""a/b""#).unwrap_err();
        assert!(err.to_string().contains("contains '/'"), "{err}");
    }

    #[test]
    fn each_refusal_has_its_own_line() {
        let e = |n: &str| IfName::new(n).unwrap_err().to_string();
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
