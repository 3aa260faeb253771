//! Resource properties kept for a machine image: `rnet set-property NAME KEY=VALUE...` without
//! `--runtime` writes them to `NAME.rnet-properties` beside the image (in the machines
//! directory, next to its `NAME.nspawn`), and every later `rnet run -D .../NAME` of that image
//! starts with them (the command line's `--property=` wins for the same key). machinectl keeps
//! them as a drop-in of the machine's `systemd-nspawn@NAME.service`; rnet has no unit, so they
//! live with the image and follow it through `rename`, `clone` and `remove`.
//!
//! The file holds one `KEY=VALUE` per line (`#` comments), as `--property=` takes them.

use std::path::{Path, PathBuf};

use crate::cgroup::Property;
use crate::cli::RunArgs;

/// The file's suffix: `NAME.rnet-properties`.
pub const SUFFIX: &str = "rnet-properties";

/// The properties file of image `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.{SUFFIX}"))
}

/// Parses a properties file's text; errors name `path:line`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Property>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !(l.trim().is_empty() || l.trim_start().starts_with('#')))
        .map(|(i, l)| {
            l.trim()
                .parse::<Property>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The properties kept at `path` (none when there is no file).
pub fn load(path: &Path) -> Result<Vec<Property>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// `base` with `changes` applied: a key already there takes the new value in its place, a new
/// key is appended; the last of several changes of a key wins.
pub fn merge(base: &[Property], changes: &[Property]) -> Vec<Property> {
    let mut out = base.to_vec();
    for c in changes {
        match out.iter_mut().find(|p| p.key() == c.key()) {
            Some(p) => *p = *c,
            None => out.push(*c),
        }
    }
    out
}

/// The file's text.
pub fn render(props: &[Property]) -> String {
    let mut text =
        String::from("# Resource properties of this image, kept by `rnet set-property`\n");
    for p in props {
        text.push_str(&format!("{p}\n"));
    }
    text
}

/// Adds `changes` to the properties kept at `path` (atomically: the file is replaced whole).
pub fn update(path: &Path, changes: &[Property]) -> Result<(), String> {
    let kept = load(path)?;
    api::fsutil::write_atomic(path, render(&merge(&kept, changes)).as_bytes())
        .map_err(|e| e.to_string())
}

/// For `rnet run -D TREE`: the properties kept beside the tree for its machine name (the
/// `.nspawn` file's place), with the command line's `--property=` applied over them.
pub fn apply(args: &mut RunArgs, default_name: impl FnOnce(&Path) -> String) -> Result<(), String> {
    let Some(dir) = args.directory.clone() else {
        return Ok(());
    };
    let name = match &args.machine {
        Some(m) => m.to_string(),
        None => default_name(&dir),
    };
    let Some(beside) = std::path::absolute(&dir)
        .ok()
        .and_then(|d| d.parent().map(Path::to_owned))
    else {
        return Ok(());
    };
    let kept = load(&path(&beside, &name))?;
    if !kept.is_empty() {
        args.properties = merge(&kept, &args.properties);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(list: &[&str]) -> Vec<Property> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn a_kept_file_round_trips_and_changes_merge_by_key() {
        let kept = props(&[
            "MemoryMax=2G",
            "CPUQuota=150%",
            "TasksMax=infinity",
            "CPUWeight=50",
            "MemoryHigh=1M",
            "CPUQuota=",
        ]);
        let text = render(&kept);
        assert_eq!(parse(Path::new("/x"), &text).unwrap(), kept);
        assert!(text.contains("MemoryMax=2147483648\n"), "{text}");
        let merged = merge(&kept[..2], &props(&["MemoryLimit=32M", "TasksMax=10"]));
        assert_eq!(
            merged,
            props(&["MemoryMax=32M", "CPUQuota=150%", "TasksMax=10"])
        );
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let e = parse(
            Path::new("/m/web.rnet-properties"),
            "# c\n\nMemoryMax=lots\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("/m/web.rnet-properties:3: invalid property \"MemoryMax=lots\""),
            "{e}"
        );
    }

    #[test]
    fn update_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "web");
        assert_eq!(load(&p).unwrap(), Vec::new());
        update(&p, &props(&["MemoryMax=1G", "TasksMax=5"])).unwrap();
        update(&p, &props(&["MemoryMax=2G"])).unwrap();
        assert_eq!(load(&p).unwrap(), props(&["MemoryMax=2G", "TasksMax=5"]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
