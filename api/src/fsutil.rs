//! Small filesystem and randomness helpers that rnetd's state and the DHCP lease store (and the
//! launcher, for randomness) share.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of [`write_atomic`] failed; the file at `path` is as it was before.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct WriteError {
    /// What was being done, e.g. "renaming the temp file to".
    pub step: &'static str,
    /// The file being replaced.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

/// Replaces `path` with `body` atomically: a temp file beside it (hidden, unique to this
/// process and call), fsync, rename over `path`, fsync of the directory. A crash leaves the old
/// or the new file, never a torn one; on an error the temp file is removed.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), WriteError> {
    replace(path, body, true)
}

/// Replaces `path` with `body` atomically for readers (a temp file renamed over it), without
/// fsyncs: for runtime state that a reboot clears anyway (the runtime directory), where a
/// crash of the machine may lose the change but a reader never sees a torn file.
pub fn write_replace(path: &Path, body: &[u8]) -> Result<(), WriteError> {
    replace(path, body, false)
}

fn replace(path: &Path, body: &[u8], durable: bool) -> Result<(), WriteError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let fail = |step, source| WriteError {
        step,
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| fail("creating a temp file for", e))?;
    let written = f
        .write_all(body)
        .map_err(|e| fail("writing", e))
        .and_then(|()| {
            if durable {
                f.sync_all().map_err(|e| fail("syncing", e))
            } else {
                Ok(())
            }
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| fail("renaming the temp file to", e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if !durable {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("syncing the directory of", e))
}

/// The kernel's random source.
const URANDOM: &str = "/dev/urandom";

/// Fills `buf` from the kernel's random source; the error names it.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    File::open(URANDOM)
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| io::Error::new(e.kind(), format!("reading {URANDOM}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn errors_name_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "creating a temp file for {}: No such file or directory (os error 2)",
                path.display()
            )
        );
        // A directory in the way of the rename: the old content stays, no temp file is left.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"").unwrap();
        let err = write_atomic(&blocked, b"x").unwrap_err();
        assert_eq!(err.step, "renaming the temp file to");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn random_bytes_fill() {
        let mut a = [0u8; 32];
        random_bytes(&mut a).unwrap();
        assert_ne!(a, [0u8; 32]);
    }
}
