//! Machine images: OS trees (and raw disk images) under one directory, `/var/lib/machines` by
//! default as for systemd-nspawn and machinectl, so the two tools see the same images.
//!
//! `rnet images`, `import-tar`, `export-tar`, `pull-tar`, `remove`, `clone`, `rename` follow
//! machinectl(1)'s verbs. Every change is made on a hidden temp name beside the image
//! (`.#NAME...`, which listings skip) and renamed into place with `RENAME_NOREPLACE`, so an
//! interrupted import or clone never leaves a half image under a real name, and two of them
//! cannot replace each other's image. An image's settings file `NAME.nspawn` and its kept
//! resource properties `NAME.rnet-properties` (`crate::properties`) beside it move, copy and go
//! with it.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use api::MachineName;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use sha2::{Digest, Sha256};

/// Where images live unless `--machines-dir` says otherwise.
pub const DEFAULT_MACHINES_DIR: &str = "/var/lib/machines";

/// Why an image operation failed. Nothing was changed unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image {0:?} in {1}")]
    NotFound(String, PathBuf),
    #[error("an image {0:?} already exists in {1}")]
    Exists(String, PathBuf),
    #[error("{0:?} is not a valid image name: {1}")]
    BadName(String, String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Archive(String),
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("checksum of {file} does not match {sums}: expected {expected}, got {actual}")]
    Checksum {
        file: String,
        sums: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Refused(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An OS tree (`NAME/`).
    Directory,
    /// A disk image (`NAME.raw`): listed, moved and removed, not started by rnet.
    Raw,
}

/// One image as `rnet images` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub path: PathBuf,
    /// Size in bytes for raw images (a tree's usage is not summed: that walks every file).
    pub usage: Option<u64>,
    /// Last modification, seconds since the epoch.
    pub modified: Option<u64>,
    /// Whether a settings file `NAME.nspawn` sits beside it.
    pub settings: bool,
}

/// How `pull-tar` checks what it downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// Import without checking (say so explicitly).
    No,
    /// The file's SHA-256 must match its line in `SHA256SUMS` beside the URL (the default; no
    /// `SHA256SUMS` is an error, as machinectl's `--verify=checksum`).
    Checksum,
}

/// Compression of an exported archive, chosen by the file name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// `.tar.gz`/`.tgz` gzip, `.tar.xz`/`.txz` xz, `.tar.zst`/`.tar.zstd`/`.tzst` zstd, else none.
    pub fn from_name(name: &str) -> Self {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".gz") || n.ends_with(".tgz") {
            Compression::Gzip
        } else if n.ends_with(".xz") || n.ends_with(".txz") {
            Compression::Xz
        } else if n.ends_with(".zst") || n.ends_with(".zstd") || n.ends_with(".tzst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression an archive starts with (its magic bytes), whatever it is called.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A decompressing reader over `r`, by its first bytes.
fn decompressed<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::Archive(format!("reading the archive: {e}")))?;
    Ok(match Compression::sniff(head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| ImageError::Archive(format!("starting zstd: {e}")))?,
        ),
    })
}

/// A hidden work directory or file beside the images, removed on drop unless committed.
struct Temp {
    path: PathBuf,
    committed: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let _ = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&self.path),
            Ok(_) => fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
    }
}

/// The image directory.
pub struct Images {
    root: PathBuf,
}

impl Images {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Images { root: root.into() }
    }

    fn check_name(name: &str) -> Result<(), ImageError> {
        MachineName::new(name)
            .map(|_| ())
            .map_err(|e| ImageError::BadName(name.to_owned(), e.to_string()))
    }

    fn settings_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.nspawn"))
    }

    /// The resource properties `rnet set-property` keeps for image `name`.
    pub fn properties_path(&self, name: &str) -> PathBuf {
        crate::properties::path(&self.root, name)
    }

    /// The files beside image `name` that belong to it.
    fn companions(&self, name: &str) -> [PathBuf; 2] {
        [self.settings_path(name), self.properties_path(name)]
    }

    /// Every image, sorted by name. A missing directory has none.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("reading", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                continue;
            }
            // Follow a symlinked image, as machined does.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            let (name, kind) = if meta.is_dir() {
                (file.clone(), Kind::Directory)
            } else if let Some(stem) = file.strip_suffix(".raw")
                && meta.is_file()
            {
                (stem.to_owned(), Kind::Raw)
            } else {
                continue;
            };
            if Self::check_name(&name).is_err() {
                continue;
            }
            out.push(Image {
                settings: self.settings_path(&name).exists(),
                usage: (kind == Kind::Raw).then_some(meta.len()),
                modified: meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                path: entry.path(),
                name,
                kind,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The image called `name`.
    pub fn find(&self, name: &str) -> Result<Image, ImageError> {
        Self::check_name(name)?;
        self.list()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| ImageError::NotFound(name.to_owned(), self.root.clone()))
    }

    fn refuse_existing(&self, name: &str) -> Result<(), ImageError> {
        Self::check_name(name)?;
        let taken = [self.root.join(name), self.root.join(format!("{name}.raw"))]
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok());
        if taken {
            return Err(ImageError::Exists(name.to_owned(), self.root.clone()));
        }
        Ok(())
    }

    /// A fresh hidden path for work on image `name`.
    fn temp(&self, name: &str, dir: bool) -> Result<Temp, ImageError> {
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let mut r = [0u8; 6];
        api::fsutil::random_bytes(&mut r).map_err(io_err("reading randomness for", &self.root))?;
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.root.join(format!(".#{name}.{hex}"));
        if dir {
            fs::create_dir(&path).map_err(io_err("creating", &path))?;
            // The tree's root gets its mode from the archive (`./`) or the source.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", &path))?;
        }
        Ok(Temp {
            path,
            committed: false,
        })
    }

    /// Moves the finished `temp` to `name`, failing if something took the name meanwhile.
    fn commit(&self, mut temp: Temp, name: &str) -> Result<PathBuf, ImageError> {
        let dest = self.root.join(name);
        renameat2(
            AT_FDCWD,
            &temp.path,
            AT_FDCWD,
            &dest,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST => ImageError::Exists(name.to_owned(), self.root.clone()),
            e => ImageError::Io {
                what: "moving the new image into place at",
                path: dest.clone(),
                source: e.into(),
            },
        })?;
        temp.committed = true;
        Ok(dest)
    }

    /// Unpacks a tar archive (plain, gzip, xz or zstd, by content) from `src` as image `name`,
    /// keeping modes, owners, times and extended attributes.
    pub fn import_tar(&self, src: impl Read, name: &str) -> Result<Image, ImageError> {
        self.refuse_existing(name)?;
        let temp = self.temp(name, true)?;
        let reader = decompressed(BufReader::with_capacity(1 << 16, src))?;
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let bad = |e: io::Error| ImageError::Archive(format!("unpacking the archive: {e}"));
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let kind = entry.header().entry_type();
            if kind.is_fifo() || kind.is_character_special() || kind.is_block_special() {
                // The tar crate would write these as regular files.
                unpack_special(&entry, &temp.path)?;
            } else {
                // `unpack_in` skips entries that would land outside the tree (`..`, absolute
                // paths) and refuses writes through a symlink pointing out of it.
                entry.unpack_in(&temp.path).map_err(bad)?;
            }
        }
        if !temp.path.join("etc/os-release").exists()
            && !temp.path.join("usr/lib/os-release").exists()
        {
            eprintln!(
                "rnet: warning: image {name} has no /etc/os-release or /usr/lib/os-release: it may not be an OS tree"
            );
        }
        self.commit(temp, name)?;
        self.find(name)
    }

    /// Writes image `name` as a tar archive to `dest` (`-`: standard output), compressed by
    /// `dest`'s suffix. A file is written under a temp name and renamed when complete.
    pub fn export_tar(&self, name: &str, dest: &str) -> Result<(), ImageError> {
        let image = self.find(name)?;
        if image.kind != Kind::Directory {
            return Err(ImageError::Refused(format!(
                "image {name} is a raw disk image; export-tar exports directory trees"
            )));
        }
        if dest == "-" {
            let out = io::stdout().lock();
            return write_tar(&image.path, out, Compression::None);
        }
        let dest = Path::new(dest);
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let file_name = dest
            .file_name()
            .map_or("archive".into(), |n| n.to_string_lossy());
        let tmp = dir.join(format!(".#{file_name}.{}", std::process::id()));
        let temp = Temp {
            path: tmp.clone(),
            committed: false,
        };
        let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        write_tar(
            &image.path,
            io::BufWriter::new(file),
            Compression::from_name(&file_name),
        )?;
        fs::rename(&tmp, dest).map_err(io_err("renaming the archive to", dest))?;
        let mut temp = temp;
        temp.committed = true;
        Ok(())
    }

    /// Downloads the tar archive at `url` and imports it as `name` (default: the file name
    /// without its archive suffixes), checked against `SHA256SUMS` beside it unless `verify` is
    /// [`Verify::No`].
    pub fn pull_tar(
        &self,
        url: &str,
        name: Option<&str>,
        verify: Verify,
    ) -> Result<Image, ImageError> {
        let file = url_file_name(url).ok_or_else(|| ImageError::Download {
            url: url.to_owned(),
            message: "the URL names no file".into(),
        })?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => image_name_from_file(&file),
        };
        self.refuse_existing(&name)?;
        // The download goes to a hidden file first: the checksum is known only at its end.
        let download = self.temp(&format!("{name}.download"), false)?;
        let mut out = File::create(&download.path).map_err(io_err("creating", &download.path))?;
        let mut body = http_get(url)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf).map_err(|e| ImageError::Download {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_err("writing", &download.path))?;
        }
        drop(out);
        let actual = hex(&hasher.finalize());
        if verify == Verify::Checksum {
            let sums_url = sibling_url(url, "SHA256SUMS");
            let mut sums = String::new();
            http_get(&sums_url)
                .map_err(|e| match e {
                    ImageError::Download { url, message } => ImageError::Download {
                        url,
                        message: format!(
                            "{message} (no checksum to verify against; --verify=no imports without one)"
                        ),
                    },
                    e => e,
                })?
                .take(1 << 20)
                .read_to_string(&mut sums)
                .map_err(|e| ImageError::Download {
                    url: sums_url.clone(),
                    message: e.to_string(),
                })?;
            let expected = checksum_for(&sums, &file).ok_or_else(|| ImageError::Download {
                url: sums_url.clone(),
                message: format!("it lists no checksum for {file}"),
            })?;
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(ImageError::Checksum {
                    file,
                    sums: sums_url,
                    expected,
                    actual,
                });
            }
        }
        let src = File::open(&download.path).map_err(io_err("opening", &download.path))?;
        self.import_tar(src, &name)
    }

    /// Removes image `name` and its settings file.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let image = self.find(name)?;
        // Out of the way first (one rename), then deleted: a crash leaves a hidden leftover,
        // never a half-deleted image under its name.
        let temp = self.temp(&format!("{name}.removing"), false)?;
        fs::rename(&image.path, &temp.path).map_err(io_err("moving aside", &image.path))?;
        drop(temp);
        for file in self.companions(name) {
            match fs::remove_file(&file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &file)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Renames image `name` (and its settings file) to `new`.
    pub fn rename(&self, name: &str, new: &str) -> Result<(), ImageError> {
        let image = self.find(name)?;
        self.refuse_existing(new)?;
        let dest = match image.kind {
            Kind::Directory => self.root.join(new),
            Kind::Raw => self.root.join(format!("{new}.raw")),
        };
        renameat2(
            AT_FDCWD,
            &image.path,
            AT_FDCWD,
            &dest,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| ImageError::Io {
            what: "renaming the image to",
            path: dest.clone(),
            source: e.into(),
        })?;
        for (file, to) in self.companions(name).into_iter().zip(self.companions(new)) {
            if file.exists() {
                fs::rename(&file, to).map_err(io_err("renaming", &file))?;
            }
        }
        Ok(())
    }

    /// Copies image `name` (a tree: modes, owners, times, symlinks, device nodes; extended
    /// attributes are not copied) and its settings file to `new`.
    pub fn clone_image(&self, name: &str, new: &str) -> Result<(), ImageError> {
        let image = self.find(name)?;
        self.refuse_existing(new)?;
        if image.kind != Kind::Directory {
            let temp = self.temp(new, false)?;
            fs::copy(&image.path, &temp.path).map_err(io_err("copying", &image.path))?;
            let mut temp = temp;
            fs::rename(&temp.path, self.root.join(format!("{new}.raw")))
                .map_err(io_err("moving into place", &temp.path))?;
            temp.committed = true;
        } else {
            let temp = self.temp(new, true)?;
            copy_tree(&image.path, &temp.path)?;
            self.commit(temp, new)?;
        }
        for (file, to) in self.companions(name).into_iter().zip(self.companions(new)) {
            if file.exists() {
                fs::copy(&file, to).map_err(io_err("copying", &file))?;
            }
        }
        Ok(())
    }
}

/// Creates the fifo or device node `entry` under `root`, with its owner, mode and time; an
/// entry whose path leaves the tree (`..`, or a parent that resolves outside it) is refused.
fn unpack_special<R: Read>(entry: &tar::Entry<'_, R>, root: &Path) -> Result<(), ImageError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    use std::path::Component;
    let bad = |m: String| ImageError::Archive(format!("unpacking the archive: {m}"));
    let header = entry.header();
    let path = entry.path().map_err(|e| bad(e.to_string()))?;
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad(format!("{} leaves the tree", path.display())));
            }
        }
    }
    let Some(name) = rel.file_name().map(ToOwned::to_owned) else {
        return Ok(());
    };
    let parent = root.join(rel.parent().unwrap_or(Path::new("")));
    fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    let (real_parent, real_root) = (
        fs::canonicalize(&parent).map_err(io_err("resolving", &parent))?,
        fs::canonicalize(root).map_err(io_err("resolving", root))?,
    );
    if !real_parent.starts_with(&real_root) {
        return Err(bad(format!("{} resolves outside the tree", path.display())));
    }
    let dest = real_parent.join(name);
    let kind = header.entry_type();
    let sflag = if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_character_special() {
        SFlag::S_IFCHR
    } else {
        SFlag::S_IFBLK
    };
    let num = |v: io::Result<Option<u32>>| u64::from(v.ok().flatten().unwrap_or(0));
    let dev = makedev(num(header.device_major()), num(header.device_minor()));
    let mode = header.mode().map_err(|e| bad(e.to_string()))?;
    let _ = fs::remove_file(&dest);
    mknod(&dest, sflag, Mode::from_bits_truncate(mode), dev)
        .map_err(|e| io_err("creating", &dest)(e.into()))?;
    let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok());
    nix::unistd::chown(
        &dest,
        id(header.uid()).map(nix::unistd::Uid::from_raw),
        id(header.gid()).map(nix::unistd::Gid::from_raw),
    )
    .map_err(|e| io_err("setting the owner of", &dest)(e.into()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("setting the mode of", &dest))?;
    Ok(())
}

/// Archives the tree at `root` into `out` (entries relative to `./`, symlinks as symlinks).
fn write_tar<W: Write>(root: &Path, out: W, compression: Compression) -> Result<(), ImageError> {
    let archive_err = |e: io::Error| ImageError::Archive(format!("writing the archive: {e}"));
    let encoder: Box<dyn Write> = match compression {
        Compression::None => Box::new(out),
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::default(),
        )),
        Compression::Xz => Box::new(xz2::write::XzEncoder::new(out, 6)),
        Compression::Zstd => Box::new(
            zstd::stream::write::Encoder::new(out, 3)
                .map_err(archive_err)?
                .auto_finish(),
        ),
    };
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder.append_dir_all(".", root).map_err(archive_err)?;
    let mut encoder = builder.into_inner().map_err(archive_err)?;
    encoder.flush().map_err(archive_err)?;
    // Dropping finishes the compressed stream (the encoders finish on drop).
    drop(encoder);
    Ok(())
}

/// Copies the tree `src` into the existing directory `dst`, keeping modes, owners, times,
/// symlinks, fifos and device nodes.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let meta = fs::symlink_metadata(src).map_err(io_err("reading", src))?;
    for entry in fs::read_dir(src).map_err(io_err("reading", src))? {
        let entry = entry.map_err(io_err("reading", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let m = fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(io_err("creating", &to))?;
            copy_tree(&from, &to)?;
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("reading", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("creating", &to))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(io_err("copying", &from))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                SFlag::S_IFIFO
            } else if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(&to, kind, Mode::from_bits_truncate(m.mode()), m.rdev())
                .map_err(|e| io_err("creating", &to)(e.into()))?;
        } else {
            // Sockets belong to a running system, not to an image.
            continue;
        }
        finish_copy(&to, &m)?;
    }
    finish_copy(dst, &meta)
}

/// Owner, mode and times of a copied entry from the source's metadata (the symlink itself for
/// a symlink).
fn finish_copy(path: &Path, m: &fs::Metadata) -> Result<(), ImageError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use nix::unistd::{Gid, Uid};
    let is_link = m.file_type().is_symlink();
    let chown = if is_link {
        nix::unistd::fchownat(
            AT_FDCWD,
            path,
            Some(Uid::from_raw(m.uid())),
            Some(Gid::from_raw(m.gid())),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    } else {
        nix::unistd::chown(
            path,
            Some(Uid::from_raw(m.uid())),
            Some(Gid::from_raw(m.gid())),
        )
    };
    chown.map_err(|e| io_err("setting the owner of", path)(e.into()))?;
    if !is_link {
        // After chown, which clears set-id bits.
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(io_err("setting the mode of", path))?;
    }
    let flag = if is_link {
        UtimensatFlags::NoFollowSymlink
    } else {
        UtimensatFlags::FollowSymlink
    };
    utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::new(m.atime(), m.atime_nsec()),
        &TimeSpec::new(m.mtime(), m.mtime_nsec()),
        flag,
    )
    .map_err(|e| io_err("setting the times of", path)(e.into()))
}

/// An HTTP(S) GET whose body is read as it arrives.
fn http_get(url: &str) -> Result<impl Read, ImageError> {
    let fail = |message: String| ImageError::Download {
        url: url.to_owned(),
        message,
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    Ok(response.into_body().into_reader())
}

/// The last path segment of `url` (query and fragment removed).
fn url_file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let (_, rest) = path.split_once("://")?;
    let (_, path) = rest.split_once('/')?;
    let file = path.rsplit('/').next()?;
    (!file.is_empty()).then(|| file.to_owned())
}

/// The URL of `file` in the same directory as `url`.
fn sibling_url(url: &str, file: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file}"),
        None => file.to_owned(),
    }
}

/// An image name from an archive's file name: its archive suffixes removed, as machinectl does.
fn image_name_from_file(file: &str) -> String {
    let mut name = file;
    for suffix in [
        ".gz", ".xz", ".zst", ".zstd", ".tgz", ".txz", ".tzst", ".tar",
    ] {
        if let Some(stem) = name.strip_suffix(suffix) {
            name = stem;
        }
    }
    name.to_owned()
}

/// The checksum `SHA256SUMS` gives for `file` (`HASH  FILE` or `HASH *FILE` lines).
fn checksum_for(sums: &str, file: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let (hash, rest) = line.trim().split_once(char::is_whitespace)?;
        let name = rest.trim_start().trim_start_matches('*');
        (name == file && hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| hash.to_owned())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_suffix_and_by_content() {
        assert_eq!(Compression::from_name("a.tar.gz"), Compression::Gzip);
        assert_eq!(Compression::from_name("a.tgz"), Compression::Gzip);
        assert_eq!(Compression::from_name("a.tar.xz"), Compression::Xz);
        assert_eq!(Compression::from_name("a.tar.zst"), Compression::Zstd);
        assert_eq!(Compression::from_name("a.tar"), Compression::None);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Compression::Xz
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"./\0\0"), Compression::None);
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            url_file_name("http://h:8080/d/img.tar.xz?x=1").as_deref(),
            Some("img.tar.xz")
        );
        assert_eq!(url_file_name("http://h/"), None);
        assert_eq!(url_file_name("http://h"), None);
        assert_eq!(
            sibling_url("https://h/a/b/img.tar.gz", "SHA256SUMS"),
            "https://h/a/b/SHA256SUMS"
        );
        assert_eq!(image_name_from_file("debian-12.tar.xz"), "debian-12");
        assert_eq!(image_name_from_file("x.tgz"), "x");
    }

    #[test]
    fn checksum_lines() {
        let h = "a".repeat(64);
        let sums = format!("{h}  img.tar.gz\n{}  *other.tar\n", "b".repeat(64));
        assert_eq!(checksum_for(&sums, "img.tar.gz"), Some(h));
        assert_eq!(checksum_for(&sums, "other.tar"), Some("b".repeat(64)));
        assert_eq!(checksum_for(&sums, "img.tar"), None);
        assert_eq!(checksum_for("short  img.tar\n", "img.tar"), None);
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("etc/os-release"), "ID=test\n").unwrap();
        fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        nix::unistd::mkfifo(
            &root.join("etc/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
    }

    /// Relative path, kind, mode and link target of every entry under `root`.
    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let link = fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                out.push(format!("{rel} {:o} {link}", m.mode()));
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn export_import_clone_rename_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("machines"));
        let src = dir.path().join("src");
        tree(&src);
        // A tree placed by hand is an image.
        fs::create_dir_all(dir.path().join("machines")).unwrap();
        copy_tree(&src, &{
            let p = dir.path().join("machines/orig");
            fs::create_dir(&p).unwrap();
            p
        })
        .unwrap();
        fs::write(dir.path().join("machines/orig.nspawn"), "[Exec]\n").unwrap();
        fs::write(
            dir.path().join("machines/orig.rnet-properties"),
            "MemoryMax=1G\n",
        )
        .unwrap();
        let want = listing(&src);
        assert_eq!(listing(&dir.path().join("machines/orig")), want);
        for suffix in ["tar", "tar.gz", "tar.xz", "tar.zst"] {
            let archive = dir.path().join(format!("orig.{suffix}"));
            images
                .export_tar("orig", archive.to_str().unwrap())
                .unwrap();
            let name = format!("imp-{}", suffix.replace('.', "-"));
            let img = images
                .import_tar(File::open(&archive).unwrap(), &name)
                .unwrap();
            assert_eq!(listing(&img.path), want, "{suffix}");
        }
        images.clone_image("orig", "copy").unwrap();
        assert_eq!(listing(&dir.path().join("machines/copy")), want);
        assert!(dir.path().join("machines/copy.nspawn").exists());
        assert!(dir.path().join("machines/copy.rnet-properties").exists());
        images.rename("copy", "moved").unwrap();
        assert!(images.find("copy").is_err());
        assert!(dir.path().join("machines/moved.nspawn").exists());
        assert!(dir.path().join("machines/moved.rnet-properties").exists());
        assert!(!dir.path().join("machines/copy.rnet-properties").exists());
        images.remove("moved").unwrap();
        assert!(!dir.path().join("machines/moved.nspawn").exists());
        assert!(!dir.path().join("machines/moved.rnet-properties").exists());
        assert!(dir.path().join("machines/orig.rnet-properties").exists());
        let names: Vec<String> = images.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            ["imp-tar", "imp-tar-gz", "imp-tar-xz", "imp-tar-zst", "orig"]
        );
        // Nothing hidden is left over.
        let hidden = fs::read_dir(dir.path().join("machines"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(hidden, 0);
    }

    #[test]
    fn refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path());
        tree(&dir.path().join("a"));
        assert!(matches!(
            images.import_tar(&b"not a tar archive at all"[..], "b"),
            Err(ImageError::Archive(_))
        ));
        assert!(matches!(
            images.import_tar(&b""[..], "a"),
            Err(ImageError::Exists(..))
        ));
        assert!(matches!(
            images.import_tar(&b""[..], "bad/name"),
            Err(ImageError::BadName(..))
        ));
        assert!(matches!(
            images.rename("a", "a"),
            Err(ImageError::Exists(..))
        ));
        assert!(matches!(
            images.remove("nothere"),
            Err(ImageError::NotFound(..))
        ));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn an_archive_escaping_the_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("m"));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let body = b"x";
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the name bytes directly.
        h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
        h.set_cksum();
        b.append(&h, &body[..]).unwrap();
        let data = b.into_inner().unwrap();
        let r = images.import_tar(&data[..], "evil");
        assert!(!dir.path().join("m/escaped").exists());
        assert!(!dir.path().join("escaped").exists());
        // tar skips such entries or fails; either way nothing lands outside.
        if let Ok(img) = r {
            assert!(!img.path.join("../escaped").exists());
        }
    }
}
