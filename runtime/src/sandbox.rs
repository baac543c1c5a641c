//! Path grants as WASI preopens: granted directories are preopened as they are, granted files and device
//! nodes are placed in private per-instance directories preopened at their guest parent path.
//!
//! A granted `/dev/video0` makes the guest see a `/dev` holding only `video0`. The entry is the same inode
//! when a hard link is possible (same filesystem), otherwise a fresh device node with the same
//! major/minor (`mknod`), otherwise a bind mount of the host file (fifos, ptys, regular files on another
//! filesystem). Nothing else of the host is reachable: WASI resolves every path beneath a preopen.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use edgewasm_api::{Access, PathGrant};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::Error;

/// One directory the guest sees.
#[derive(Clone, Debug)]
struct Preopen {
    host: PathBuf,
    guest: String,
    perms: FsPerms,
}

/// The filesystem view of one instance; removes its private directories (and unmounts) on drop.
#[derive(Debug, Default)]
pub(crate) struct Sandbox {
    preopens: Vec<Preopen>,
    root: Option<PathBuf>,
    mounts: Vec<PathBuf>,
}

/// How a granted file is made visible inside a private directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    HardLink,
    Mknod,
    BindMount,
}

impl Sandbox {
    /// Builds the view for `grants` under `base` (a directory on a filesystem without `nodev` when device
    /// nodes are granted).
    pub(crate) fn build(base: &Path, id: &str, grants: &[PathGrant]) -> Result<Self, Error> {
        let mut sandbox = Self::default();
        // guest parent directory -> files to place in it
        let mut files: BTreeMap<String, Vec<(String, PathBuf, std::fs::Metadata, Access)>> =
            BTreeMap::new();
        for grant in grants {
            let invalid = |reason: String| Error::InvalidGrant {
                grant: format!("path {:?} -> {:?}", grant.host, grant.guest_path()),
                reason,
            };
            if !Path::new(&grant.host).is_absolute() {
                return Err(invalid("the host path must be absolute".into()));
            }
            let guest = normalize_guest(grant.guest_path()).map_err(invalid)?;
            let host = std::fs::canonicalize(&grant.host)
                .map_err(|e| invalid(format!("the host path cannot be resolved: {e}")))?;
            let meta = std::fs::metadata(&host)
                .map_err(|e| invalid(format!("the host path cannot be read: {e}")))?;
            if meta.is_dir() {
                sandbox.preopens.push(Preopen {
                    host,
                    guest,
                    perms: perms(grant.access),
                });
            } else {
                if guest == "/" {
                    return Err(invalid("a file cannot be mounted at the guest root".into()));
                }
                let (parent, name) = guest.rsplit_once('/').expect("absolute");
                let parent = if parent.is_empty() { "/" } else { parent };
                files.entry(parent.to_string()).or_default().push((
                    name.to_string(),
                    host,
                    meta,
                    grant.access,
                ));
            }
        }
        if files.is_empty() {
            return Ok(sandbox);
        }

        let root = private_root(base, id)?;
        sandbox.root = Some(root.clone());
        let nodev = is_nodev(&root);
        for (i, (parent, entries)) in files.iter().enumerate() {
            if let Some(dir) = sandbox.preopens.iter().find(|p| &p.guest == parent) {
                return Err(Error::InvalidGrant {
                    grant: format!("{} -> {parent}", dir.host.display()),
                    reason: format!(
                        "{parent} is both a granted directory and the parent of granted files ({}); grant them at another guest path",
                        names(entries)
                    ),
                });
            }
            let access = entries[0].3;
            if entries.iter().any(|e| e.3 != access) {
                return Err(Error::InvalidGrant {
                    grant: format!("files in {parent}"),
                    reason: format!(
                        "read-only and read-write files share the guest directory {parent} ({}); give them different guest directories",
                        names(entries)
                    ),
                });
            }
            let dir = root.join(i.to_string());
            std::fs::create_dir(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            for (name, host, meta, _) in entries {
                let entry = dir.join(name);
                let how =
                    place(host, &entry, meta, nodev).map_err(|reason| Error::InvalidGrant {
                        grant: format!("path {} -> {parent}/{name}", host.display()),
                        reason,
                    })?;
                tracing::debug!(host = %host.display(), guest = %format!("{parent}/{name}"), ?how, "granted file");
                if how == Placement::BindMount {
                    sandbox.mounts.push(entry);
                }
            }
            sandbox.preopens.push(Preopen {
                host: dir,
                guest: parent.clone(),
                perms: perms(access),
            });
        }
        Ok(sandbox)
    }

    /// Adds the preopens to a WASI context.
    pub(crate) fn apply(&self, builder: &mut WasiCtxBuilder) -> Result<(), Error> {
        for p in &self.preopens {
            builder
                .preopened_dir(&p.host, &p.guest, p.perms)
                .map_err(|e| Error::InvalidGrant {
                    grant: format!("{} -> {}", p.host.display(), p.guest),
                    reason: format!("cannot open the directory: {e:#}"),
                })?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for mount in &self.mounts {
            if let Err(e) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %mount.display(), error = %e, "cannot unmount granted file");
            }
        }
        if let Some(root) = &self.root
            && let Err(e) = std::fs::remove_dir_all(root)
        {
            tracing::warn!(path = %root.display(), error = %e, "cannot remove sandbox directory");
        }
    }
}

fn names(entries: &[(String, PathBuf, std::fs::Metadata, Access)]) -> String {
    entries
        .iter()
        .map(|e| e.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn perms(access: Access) -> FsPerms {
    match access {
        Access::ReadOnly => FsPerms::ReadOnly,
        Access::ReadWrite => FsPerms::ReadWrite,
    }
}

/// `/a/b/` -> `/a/b`; rejects relative paths and `..`.
fn normalize_guest(guest: &str) -> Result<String, String> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err(format!("the guest path {guest:?} must be absolute"));
    }
    let mut out = String::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => {
                out.push('/');
                out.push_str(
                    s.to_str()
                        .ok_or_else(|| format!("the guest path {guest:?} is not UTF-8"))?,
                );
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("the guest path {guest:?} must not contain `..`"));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A fresh, private (0700) directory for one instance.
fn private_root(base: &Path, id: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(base)
        .map_err(io(base))?;
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let root = base.join(format!(
        "{safe}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(io(&root))?;
    Ok(root)
}

fn is_nodev(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV))
}

/// Makes `host` visible at `entry`, preferring what keeps the exact host object.
fn place(
    host: &Path,
    entry: &Path,
    meta: &std::fs::Metadata,
    nodev: bool,
) -> Result<Placement, String> {
    let ft = meta.file_type();
    let is_device = ft.is_char_device() || ft.is_block_device();
    let link_err = match std::fs::hard_link(host, entry) {
        Ok(()) => return Ok(Placement::HardLink),
        Err(e) => e,
    };
    if is_device && !nodev {
        use nix::sys::stat::{Mode, SFlag, mknod};
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        match mknod(
            entry,
            kind,
            Mode::from_bits_truncate(meta.mode() & 0o777),
            meta.rdev(),
        ) {
            Ok(()) => {
                let _ = std::os::unix::fs::chown(entry, Some(meta.uid()), Some(meta.gid()));
                return Ok(Placement::Mknod);
            }
            Err(e) => {
                tracing::debug!(entry = %entry.display(), error = %e, "mknod failed, trying a bind mount");
            }
        }
    }
    std::fs::File::create(entry).map_err(|e| format!("cannot create {}: {e}", entry.display()))?;
    match nix::mount::mount(
        Some(host),
        entry,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) => Ok(Placement::BindMount),
        Err(mount_err) => {
            let _ = std::fs::remove_file(entry);
            Err(format!(
                "cannot expose it to the guest (hard link: {link_err}; bind mount: {mount_err}); the runtime needs to run as root or the sandbox directory must be on the same filesystem"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_normalized() {
        assert_eq!(normalize_guest("/dev/video0").unwrap(), "/dev/video0");
        assert_eq!(normalize_guest("/data/").unwrap(), "/data");
        assert_eq!(normalize_guest("/").unwrap(), "/");
        assert!(normalize_guest("dev/x").is_err());
        assert!(normalize_guest("/dev/../etc").is_err());
    }

    #[test]
    fn files_land_in_a_private_directory_and_are_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("reading");
        std::fs::write(&file, "42\n").unwrap();
        let grants = [PathGrant {
            host: file.to_str().unwrap().into(),
            guest: Some("/sys/temp".into()),
            access: Access::ReadOnly,
        }];
        let base = tmp.path().join("sandboxes");
        let sandbox = Sandbox::build(&base, "t/1", &grants).unwrap();
        assert_eq!(sandbox.preopens.len(), 1);
        assert_eq!(sandbox.preopens[0].guest, "/sys");
        let placed = sandbox.preopens[0].host.join("temp");
        assert_eq!(std::fs::read_to_string(&placed).unwrap(), "42\n");
        let root = sandbox.root.clone().unwrap();
        drop(sandbox);
        assert!(!root.exists());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "42\n",
            "host file survives"
        );
    }

    #[test]
    fn conflicting_grants_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let grant = |host: &Path, guest: &str, access| PathGrant {
            host: host.to_str().unwrap().into(),
            guest: Some(guest.into()),
            access,
        };
        let base = tmp.path().join("s");
        let mixed = [
            grant(&a, "/dev/a", Access::ReadOnly),
            grant(&b, "/dev/b", Access::ReadWrite),
        ];
        assert!(matches!(
            Sandbox::build(&base, "x", &mixed),
            Err(Error::InvalidGrant { .. })
        ));
        let dir_and_file = [
            grant(tmp.path(), "/data", Access::ReadOnly),
            grant(&a, "/data/a", Access::ReadOnly),
        ];
        assert!(Sandbox::build(&base, "x", &dir_and_file).is_err());
        let missing = [grant(&tmp.path().join("nope"), "/x", Access::ReadOnly)];
        assert!(Sandbox::build(&base, "x", &missing).is_err());
    }
}
