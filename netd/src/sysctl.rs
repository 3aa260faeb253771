//! Kernel knobs under `/proc/sys`, read-compare-write, under an injectable root so tests can
//! point it at a temporary directory. Values are those of the calling process's network
//! namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

    /// Reads a knob, e.g. `net.ipv4.ip_forward`; an error names the key and its file.
    pub fn get(&self, key: &str) -> io::Result<String> {
        read(key, &self.path(key))
    }

    /// Writes a knob if it differs; returns the previous value. An error names the key and its
    /// file.
    pub fn set(&self, key: &str, value: &str) -> io::Result<String> {
        set_at(key, &self.path(key), value)
    }

    /// Sets a per-link IPv4 knob, `net.ipv4.conf.IFNAME.KNOB` (the path keeps the link name
    /// whole, dots included).
    pub fn set_link(&self, ifname: &str, knob: &str, value: &str) -> io::Result<String> {
        let path = self.root.join("net/ipv4/conf").join(ifname).join(knob);
        set_at(&format!("net.ipv4.conf.{ifname}.{knob}"), &path, value)
    }

    /// Reads a per-link IPv6 knob, `net.ipv6.conf.IFNAME.KNOB`.
    pub fn get_link6(&self, ifname: &str, knob: &str) -> io::Result<String> {
        let path = self.root.join("net/ipv6/conf").join(ifname).join(knob);
        read(&format!("net.ipv6.conf.{ifname}.{knob}"), &path)
    }

    /// Sets a per-link IPv6 knob, `net.ipv6.conf.IFNAME.KNOB`; returns the previous value.
    pub fn set_link6(&self, ifname: &str, knob: &str, value: &str) -> io::Result<String> {
        let path = self.root.join("net/ipv6/conf").join(ifname).join(knob);
        set_at(&format!("net.ipv6.conf.{ifname}.{knob}"), &path, value)
    }

    /// The entries of `net.ipv6.conf` (every link with IPv6, plus `all` and `default`); none
    /// when IPv6 is off in the kernel.
    pub fn links6(&self) -> io::Result<Vec<String>> {
        let dir = self.root.join("net/ipv6/conf");
        match fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("listing {}: {e}", dir.display()),
            )),
        }
    }
}

fn read(key: &str, path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading sysctl {key} ({}): {e}", path.display()),
            )
        })
}

fn set_at(key: &str, path: &Path, value: &str) -> io::Result<String> {
    let old = read(key, path)?;
    if old != value {
        fs::write(path, value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing {value} to sysctl {key} ({}): {e}", path.display()),
            )
        })?;
    }
    Ok(old)
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

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sysctl::new(dir.path());
        let root = dir.path().display();
        assert_eq!(
            s.get("net.ipv4.nope").unwrap_err().to_string(),
            format!(
                "reading sysctl net.ipv4.nope ({root}/net/ipv4/nope): No such file or directory (os error 2)"
            )
        );
        assert_eq!(
            s.set_link("ve-a.b", "route_localnet", "1")
                .unwrap_err()
                .to_string(),
            format!(
                "reading sysctl net.ipv4.conf.ve-a.b.route_localnet ({root}/net/ipv4/conf/ve-a.b/route_localnet): No such file or directory (os error 2)"
            )
        );
        // A directory where the knob should be: reading it fails with EISDIR.
        fs::create_dir_all(dir.path().join("net/ipv4/ip_forward")).unwrap();
        let err = s.set("net.ipv4.ip_forward", "1").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "reading sysctl net.ipv4.ip_forward ({root}/net/ipv4/ip_forward): "
            )),
            "{err}"
        );
    }
}
