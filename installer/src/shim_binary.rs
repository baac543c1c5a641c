//! Puts the shim binary into the host's shim folder, replacing it atomically and only when it differs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// Copies `source` to `dest` when their contents differ; returns whether it wrote anything.
///
/// The new file is written next to `dest` and renamed over it, so a shim process that is running
/// the old binary keeps it ("text file busy" never happens) and containerd never sees half a file.
pub fn install(source: &Path, dest: &Path) -> anyhow::Result<bool> {
    let wanted = fs::read(source)
        .with_context(|| format!("reading the shim binary {}", source.display()))?;
    if let Ok(present) = fs::read(dest)
        && present == wanted
        && is_executable(dest)
    {
        return Ok(false);
    }
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent folder", dest.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(dest, &wanted, 0o755)?;
    Ok(true)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o111 == 0o111)
}

/// Writes `contents` to a temporary file beside `dest`, syncs it and renames it over `dest`.
pub fn write_atomically(dest: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    let tmp = dest.with_file_name(format!(".{}.edgewasm-tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, dest)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_once_then_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("containerd-shim-edgewasm-v1");
        fs::write(&source, b"\x7fELF shim v1").unwrap();
        let dest = dir
            .path()
            .join("host/usr/local/bin/containerd-shim-edgewasm-v1");

        assert!(install(&source, &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"\x7fELF shim v1");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(!install(&source, &dest).unwrap());

        fs::write(&source, b"\x7fELF shim v2").unwrap();
        assert!(install(&source, &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"\x7fELF shim v2");
    }

    #[test]
    fn missing_source_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = install(&dir.path().join("nope"), &dir.path().join("dest")).unwrap_err();
        assert!(
            format!("{err:#}").contains("reading the shim binary"),
            "{err:#}"
        );
    }
}
