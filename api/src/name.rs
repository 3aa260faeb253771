//! Machine names: validated once at the boundary, like systemd's `hostname_is_valid()`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest machine name accepted (systemd's `HOST_NAME_MAX`).
pub const MAX_LEN: usize = 64;

/// Why a machine name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("machine name is empty")]
    Empty,
    /// The name is longer than [`MAX_LEN`].
    #[error("machine name {name:?} is {len} characters long; at most {MAX_LEN} are allowed")]
    TooLong {
        /// The refused name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The name contains a character a hostname cannot hold.
    #[error(
        "machine name {name:?} contains {ch:?}; use letters, digits, '-' and '.' (a valid hostname)"
    )]
    BadChar {
        /// The refused name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// A label is empty or starts or ends with '-'.
    #[error(
        "machine name {name:?} is not a valid hostname: labels between dots must be non-empty and must not start or end with '-'"
    )]
    BadLabel {
        /// The refused name.
        name: String,
    },
}

/// A machine name that is a valid hostname of at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MachineName(String);

impl MachineName {
    /// Validates `name`: ASCII letters, digits, `-` and `.`, dot-separated labels that neither
    /// are empty nor start or end with `-`, at most [`MAX_LEN`] characters.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(NameError::TooLong {
                name: name.to_owned(),
                len: name.chars().count(),
            });
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(NameError::BadChar {
                name: name.to_owned(),
                ch,
            });
        }
        if name
            .split('.')
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        {
            return Err(NameError::BadLabel {
                name: name.to_owned(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for MachineName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MachineName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for MachineName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostnames() {
        for n in [
            "a",
            "web-1",
            "debian.bookworm",
            "x".repeat(64).as_str(),
            "0abc",
        ] {
            assert!(MachineName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names_with_a_clear_reason() {
        assert_eq!(MachineName::new(""), Err(NameError::Empty));
        let long = "x".repeat(65);
        assert_eq!(
            MachineName::new(&long).unwrap_err().to_string(),
            format!("machine name {long:?} is 65 characters long; at most 64 are allowed")
        );
        assert!(matches!(
            MachineName::new("a b"),
            Err(NameError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            MachineName::new("a/b"),
            Err(NameError::BadChar { ch: '/', .. })
        ));
        for bad in ["-a", "a-", "a..b", ".a", "a."] {
            assert!(
                matches!(MachineName::new(bad), Err(NameError::BadLabel { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<MachineName>("\"ok-name\"").is_ok());
        let err = serde_json::from_str::<MachineName>("\"bad name\"").unwrap_err();
        assert!(err.to_string().contains("contains ' '"), "{err}");
    }
}
