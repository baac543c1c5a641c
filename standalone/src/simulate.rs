//! Simulated devices for the demo: a camera file that gets a new frame, and a sysfs-like temperature
//! file that gets a new reading, at a fixed interval.
//!
//! Both files are rewritten in place with content of constant length (never truncated or replaced),
//! so a guest that was granted the file itself (a hard link in its sandbox) sees every update and
//! never reads a half-empty file.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// One simulated device file.
// The lint sees the `unsafe` inside `tokio::select!`'s expansion in `run`; nothing here relies on
// invariants a deserialized value could break.
#[allow(clippy::unsafe_derive_deserialize)]
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Simulation {
    /// The file to keep updated (relative to the manifest folder).
    pub path: PathBuf,
    pub kind: SimulationKind,
    /// Time between updates.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Size of one camera frame.
    #[serde(default = "default_frame_bytes")]
    pub frame_bytes: usize,
}

fn default_interval() -> u64 {
    1000
}
fn default_frame_bytes() -> usize {
    4096
}

/// What the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SimulationKind {
    /// One camera frame: a `FRAME n` header and pseudo-random pixels.
    Frames,
    /// A temperature in millidegrees Celsius, as `/sys/class/thermal/*/temp` has it.
    Temperature,
}

impl Simulation {
    /// Creates the file (and its directory) with its first content, so devices naming it can be
    /// granted right away.
    pub fn prepare(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.write(0)
    }

    /// Updates the file every `interval_ms` until cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.interval_ms.max(10)));
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            n += 1;
            if let Err(e) = self.write(n) {
                tracing::warn!(file = %self.path.display(), error = format!("{e:#}"), "simulated device not updated");
            }
        }
    }

    fn write(&self, n: u64) -> anyhow::Result<()> {
        let content = match self.kind {
            SimulationKind::Frames => frame(n, self.frame_bytes),
            SimulationKind::Temperature => temperature(n).into_bytes(),
        };
        write_in_place(&self.path, &content)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn write_in_place(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.write_all_at(content, 0)?;
    file.set_len(content.len() as u64)
}

/// Frame `n`: a text header a person can recognise, then deterministic noise.
fn frame(n: u64, size: usize) -> Vec<u8> {
    let mut out = format!("FRAME {n:08}\n").into_bytes();
    let mut state = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(state as u8);
    }
    out.truncate(size);
    out
}

/// Reading `n`: a slow wave around 22.5 °C, in millidegrees, always five digits and a newline.
fn temperature(n: u64) -> String {
    let t = n as f64;
    let value = 22_500.0 + 2_500.0 * (t / 15.0).sin() + 150.0 * (t * 1.7).sin();
    format!("{:05}\n", value.round().clamp(10_000.0, 99_999.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_have_constant_length() {
        assert_eq!(frame(3, 4096).len(), 4096);
        assert!(frame(3, 4096).starts_with(b"FRAME 00000003\n"));
        assert_ne!(frame(3, 64), frame(4, 64));
        for n in 0..200 {
            let t = temperature(n);
            assert_eq!(t.len(), 6, "{t:?}");
            assert!(t.trim().parse::<u32>().is_ok());
        }
    }

    #[test]
    fn prepare_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulation {
            path: dir.path().join("a/temp"),
            kind: SimulationKind::Temperature,
            interval_ms: 10,
            frame_bytes: 0,
        };
        sim.prepare().unwrap();
        assert_eq!(std::fs::read_to_string(&sim.path).unwrap().len(), 6);
    }
}
