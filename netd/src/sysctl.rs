//! Kernel knobs under `/proc/sys`, read-compare-write, under an injectable root so tests can
//! point it at a temporary directory. Values are those of the calling process's network
//! namespace.

use std::fs;
use std::io;
use std::path::PathBuf;

/// A `/proc/sys`-like tree.
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctl {
    /// Knobs under `root` (normally `/proc/sys`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    /// Reads a knob, e.g. `net.ipv4.ip_forward`.
    pub fn get(&self, key: &str) -> io::Result<String> {
        Ok(fs::read_to_string(self.path(key))?.trim().to_owned())
    }

    /// Writes a knob if it differs; returns the previous value.
    pub fn set(&self, key: &str, value: &str) -> io::Result<String> {
        let old = self.get(key)?;
        if old != value {
            fs::write(self.path(key), value)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {key}={value}: {e}")))?;
        }
        Ok(old)
    }

    /// Sets a per-link IPv4 knob (the path keeps the link name whole).
    pub fn set_link(&self, ifname: &str, knob: &str, value: &str) -> io::Result<String> {
        let path = self.root.join("net/ipv4/conf").join(ifname).join(knob);
        let old = fs::read_to_string(&path)?.trim().to_owned();
        if old != value {
            fs::write(&path, value)?;
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_compare_write() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/ipv4/conf/ve-a.b")).unwrap();
        fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        fs::write(
            dir.path().join("net/ipv4/conf/ve-a.b/route_localnet"),
            "0\n",
        )
        .unwrap();
        let s = Sysctl::new(dir.path());
        assert_eq!(s.set("net.ipv4.ip_forward", "1").unwrap(), "0");
        assert_eq!(s.get("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(s.set("net.ipv4.ip_forward", "1").unwrap(), "1");
        assert_eq!(s.set_link("ve-a.b", "route_localnet", "1").unwrap(), "0");
        assert_eq!(
            fs::read_to_string(dir.path().join("net/ipv4/conf/ve-a.b/route_localnet")).unwrap(),
            "1"
        );
        assert!(s.get("net.ipv4.nope").is_err());
    }
}
