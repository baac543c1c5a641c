//! The on-disk cache of precompiled code, keyed by the wasm's sha256 and the engine's compatibility hash.
//!
//! An entry is `MAGIC || sha256(artifact) || artifact`, written to a temporary file and renamed into place,
//! so readers never see a half-written entry. The embedded digest catches corruption (a flipped byte would
//! otherwise reach `deserialize` and run as machine code); a foreign or stale entry fails to deserialize.
//! Either way the caller recompiles and overwrites the entry.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"EWCACHE1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A directory of precompiled artifacts for one engine configuration.
#[derive(Debug)]
pub(crate) struct CodeCache {
    dir: PathBuf,
    engine_hash: String,
}

impl CodeCache {
    /// Creates the directory if needed.
    pub(crate) fn open(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_hash: engine_hash(engine),
        })
    }

    /// The file an artifact for `digest` lives in.
    pub(crate) fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    /// The verified artifact for `digest`, or `None` when absent or corrupt (a corrupt entry is removed).
    pub(crate) fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.entry_path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable cache entry, recompiling");
                return None;
            }
        };
        if let Some(artifact) = verify(&bytes) {
            Some(artifact.to_vec())
        } else {
            tracing::warn!(path = %path.display(), "corrupt cache entry, recompiling");
            self.remove(digest);
            None
        }
    }

    /// Drops an entry that turned out unusable (e.g. it does not deserialize with this engine).
    pub(crate) fn remove(&self, digest: &str) {
        let path = self.entry_path(digest);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove cache entry");
        }
    }

    /// Stores an artifact atomically (temp file + fsync + rename).
    pub(crate) fn put(&self, digest: &str, artifact: &[u8]) -> std::io::Result<()> {
        let path = self.entry_path(digest);
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(MAGIC)?;
        tmp.1.write_all(&Sha256::digest(artifact))?;
        tmp.1.write_all(artifact)?;
        tmp.1.sync_all()?;
        drop(tmp.1);
        std::fs::rename(&tmp.0, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp.0);
        })
    }
}

/// The artifact inside an entry when its header and digest check out.
fn verify(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (header, artifact) = bytes.split_at(HEADER_LEN);
    (Sha256::digest(artifact).as_slice() == &header[MAGIC.len()..]).then_some(artifact)
}

/// A unique temporary file next to the final entry (same filesystem, so the rename is atomic).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// A stable hex rendering of `Engine::precompile_compatibility_hash` (wasmtime version, target, config).
fn engine_hash(engine: &wasmtime::Engine) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// Feeds `Hash` output into sha256, which (unlike `DefaultHasher`) is stable across Rust releases.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Hex sha256 of the wasm bytes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_only_intact_entries() {
        let artifact = b"machine code".as_slice();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(artifact));
        entry.extend_from_slice(artifact);
        assert_eq!(verify(&entry), Some(artifact));

        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&flipped), None);
        assert_eq!(verify(&entry[..HEADER_LEN - 1]), None);
        assert_eq!(
            verify(b"not an entry at all, but long enough to have a header"),
            None
        );
    }
}
