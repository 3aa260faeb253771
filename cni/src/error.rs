//! The spec's error result ("Error" in section "Section 5: Result Types"): JSON on stdout
//! with a well-known code, and a non-zero exit.

use serde::Serialize;

/// The spec's error codes (section "Error"), and ours from 100 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 3: container unknown or does not exist (no cleanup needed).
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnv,
    /// 5: I/O failure.
    Io,
    /// 6: failed to decode content.
    DecodeFailed,
    /// 7: invalid network configuration.
    InvalidConfig,
    /// 11: try again later (rnetd is not running).
    TryAgainLater,
    /// 50: the plugin is not available (STATUS: rnetd is not running).
    NotAvailable,
    /// 100: rnetd refused or failed.
    Rnetd,
    /// 101: CHECK found the attachment missing or different.
    CheckFailed,
}

impl Code {
    /// The number on the wire.
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnknownContainer => 3,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::DecodeFailed => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::Rnetd => 100,
            Code::CheckFailed => 101,
        }
    }
}

/// A failed call: what the plugin prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The code.
    pub code: Code,
    /// One line saying what failed.
    pub msg: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// The error as the spec's JSON, in `version`.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code.number(),
            msg: &self.msg,
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_specs_json() {
        let e = CniError::new(Code::InvalidEnv, "CNI_IFNAME is not set");
        assert_eq!(
            e.to_json("1.1.0"),
            r#"{"cniVersion":"1.1.0","code":4,"msg":"CNI_IFNAME is not set"}"#
        );
    }
}
