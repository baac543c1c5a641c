//! OCI image layout tars built from local files (no registry, no daemon), importable with
//! `ctr image import`: one ordinary tar layer, which is what containerd 1.6 accepts for Wasm images too.
//!
//! ```no_run
//! # fn demo(wasm: &std::path::Path, work: &std::path::Path) -> anyhow::Result<()> {
//! use edgewasm_testkit::oci::ImageBuilder;
//! let tar = ImageBuilder::new("docker.io/edgewasm/hello:test")
//!     .file("hello.wasm", std::fs::read(wasm)?)
//!     .entrypoint(["hello.wasm"])
//!     .write_tar(&work.join("hello.tar"))?;
//! # let _ = tar; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::json;

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A one-layer image: files at paths in the rootfs plus the image config's entrypoint/cmd/env.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    name: String,
    files: Vec<(String, Vec<u8>, u32)>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
}

impl ImageBuilder {
    /// An empty image named `name` (a full reference such as `docker.io/edgewasm/x:test`).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            files: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            // One empty entry: containerd then adds no PATH (see ctr's env defaulting).
            env: vec![String::new()],
        }
    }

    /// Adds a regular file (mode 0644) at `path` inside the rootfs (leading `/` optional).
    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(path, contents, 0o644)
    }

    /// Adds an executable file (mode 0755) at `path` inside the rootfs.
    pub fn executable(self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(path, contents, 0o755)
    }

    fn file_with_mode(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((
            path.trim_start_matches('/').to_owned(),
            contents.into(),
            mode,
        ));
        self
    }

    /// The config's `Entrypoint` (for Wasm images: `[<path of the .wasm>]`).
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    /// The config's `Cmd`.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// The config's `Env` (`K=V` entries), replacing the default of none.
    pub fn env<I: IntoIterator<Item = S>, S: Into<String>>(mut self, env: I) -> Self {
        self.env = env.into_iter().map(Into::into).collect();
        if self.env.is_empty() {
            self.env.push(String::new());
        }
        self
    }

    /// Writes the OCI image layout tar to `out` and returns `out`.
    pub fn write_tar(&self, out: &Path) -> Result<PathBuf> {
        let layer = tar_bytes(
            &self
                .files
                .iter()
                .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
                .collect::<Vec<_>>(),
        )?;
        let layer_digest = sha256(&layer);
        let config = json!({
            "architecture": goarch(), "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string()
        .into_bytes();
        let config_digest = sha256(&config);
        let manifest = json!({
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = sha256(&manifest);
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"io.containerd.image.name": self.name, "org.opencontainers.image.ref.name": tag},
            }],
        })
        .to_string()
        .into_bytes();
        let blob = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
        let entries: Vec<(String, &[u8], u32)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            ),
            ("index.json".into(), &index, 0o644),
            (blob(&manifest_digest), &manifest, 0o644),
            (blob(&config_digest), &config, 0o644),
            (blob(&layer_digest), &layer, 0o644),
        ];
        let outer = tar_bytes(
            &entries
                .iter()
                .map(|(p, c, m)| (p.as_str(), *c, *m))
                .collect::<Vec<_>>(),
        )?;
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, outer).with_context(|| format!("writing {}", out.display()))?;
        Ok(out.to_owned())
    }

    /// Writes the tar next to `work` and imports it into containerd namespace `namespace`.
    pub fn import(
        &self,
        containerd: &crate::containerd::Containerd,
        namespace: &str,
        work: &Path,
    ) -> Result<()> {
        let tar = self.write_tar(&work.join(format!("{}.tar", sanitize(&self.name))))?;
        import(containerd, namespace, &tar)
    }
}

/// `ctr -n <namespace> image import <tar>`.
pub fn import(
    containerd: &crate::containerd::Containerd,
    namespace: &str,
    tar: &Path,
) -> Result<()> {
    containerd
        .ctr(namespace)
        .run(&["image", "import", &tar.display().to_string()])
        .with_context(|| format!("importing {}", tar.display()))
        .map(drop)
}

/// A pause image for CRI sandboxes: a static C program that sleeps until SIGTERM/SIGINT, at `/pause`.
/// Needs gcc and the static libc (`libc6-dev`). Wasm sandboxes never run it; runc sandboxes do.
pub fn pause_image(name: &str, work: &Path) -> Result<ImageBuilder> {
    const PAUSE_C: &str = "#include <signal.h>\n#include <unistd.h>\n\
        static void done(int s) { (void)s; _exit(0); }\n\
        int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }\n";
    std::fs::create_dir_all(work)?;
    let src = work.join("pause.c");
    let bin = work.join("pause");
    std::fs::write(&src, PAUSE_C)?;
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("running gcc for the pause image (scripts/deps.d/harness.sh installs gcc and libc6-dev)")?;
    ensure!(status.success(), "gcc failed to build {}", src.display());
    Ok(ImageBuilder::new(name)
        .executable("pause", std::fs::read(&bin)?)
        .entrypoint(["/pause"]))
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A ustar archive of regular files (parent directories added), fixed mtime and root ownership.
fn tar_bytes(files: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (path, _, _) in files {
        let mut prefix = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            prefix.push_str(part);
            prefix.push('/');
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
            }
        }
    }
    for dir in &dirs {
        out.extend(header(dir, 0, 0o755, b'5')?);
    }
    for (path, contents, mode) in files {
        out.extend(header(path, contents.len(), *mode, b'0')?);
        out.extend_from_slice(contents);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

fn header(path: &str, size: usize, mode: u32, kind: u8) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let (prefix, name) = if path.len() <= 100 {
        ("", path)
    } else {
        let split = path[..path.len().min(156)]
            .rfind('/')
            .filter(|&i| path.len() - i - 1 <= 100)
            .with_context(|| format!("path too long for a ustar header: {path}"))?;
        (&path[..split], &path[split + 1..])
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
        let s = format!("{value:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 0);
    h[148..156].fill(b' ');
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_lists_files_with_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let out = ImageBuilder::new("docker.io/edgewasm/t:1")
            .file("app/x.wasm", b"\0asm".to_vec())
            .entrypoint(["app/x.wasm"])
            .write_tar(&dir.path().join("t.tar"))
            .unwrap();
        let listing = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(listing.contains("index.json"), "{listing}");
        assert_eq!(
            listing
                .lines()
                .filter(|l| l.len() > "blobs/sha256/".len() && l.starts_with("blobs/sha256/"))
                .count(),
            3,
            // config, manifest, layer (the folder entry itself is not a blob)
            "{listing}"
        );
        let layer = tar_bytes(&[("app/x.wasm", b"\0asm", 0o644)]).unwrap();
        std::fs::write(dir.path().join("layer.tar"), layer).unwrap();
        let listing = Command::new("tar")
            .arg("-tvf")
            .arg(dir.path().join("layer.tar"))
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(
            listing.contains("app/\n") && listing.contains("app/x.wasm"),
            "{listing}"
        );
    }
}
