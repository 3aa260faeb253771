//! Ethernet addresses: the ones rnetd derives for links, and the ones `nat` holds bridge ports to.
//! (The wire struct `Machine` still carries them as text.)

use std::fmt;
use std::str::FromStr;

/// An Ethernet address, written `02:00:5e:10:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// A MAC address that is not six hexadecimal bytes separated by `:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {text:?}")]
pub struct MacError {
    /// The refused text.
    pub text: String,
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = MacError;

    /// Six bytes of two hexadecimal digits each, separated by `:`.
    fn from_str(text: &str) -> Result<Self, MacError> {
        let bad = || MacError {
            text: text.to_owned(),
        };
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            Some(_) => Err(bad()),
            None => Ok(Self(mac)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_prints() {
        let mac: Mac = "02:0A:ff:00:10:01".parse().unwrap();
        assert_eq!(mac, Mac([2, 10, 255, 0, 16, 1]));
        assert_eq!(mac.to_string(), "02:0a:ff:00:10:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:0",
            "zz:00:00:00:00:00",
            "+2:00:00:00:00:00",
        ] {
            let err = bad.parse::<Mac>().unwrap_err();
            assert_eq!(err.to_string(), format!("invalid MAC address {bad:?}"));
        }
    }
}
