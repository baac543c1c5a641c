//! The manifest folder's own settings file, `standalone.yaml`: which agent config to use, how long a
//! vanished device keeps its instances, and which files the demo simulates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::simulate::Simulation;

/// File name of the settings inside the manifest folder; it is not a manifest.
pub const SETTINGS_FILE: &str = "standalone.yaml";

/// Default time a placement outlives its device's absence.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The contents of `standalone.yaml` (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Discovery agent configuration (the chart's format), relative to the folder.
    #[serde(default)]
    pub agent_config: Option<PathBuf>,
    /// How long a placement outlives its device's absence.
    #[serde(default)]
    pub device_grace_seconds: Option<u64>,
    /// Files a background task keeps updating, standing in for real devices.
    #[serde(default)]
    pub simulate: Vec<Simulation>,
}

impl Settings {
    /// Reads `DIR/standalone.yaml`; a missing file means defaults. Relative paths are resolved
    /// against `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SETTINGS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        let mut settings: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(&text).map_err(|e| {
                let line = e.location().map_or(1, |l| l.line());
                anyhow::anyhow!("{}:{line}: {e}", path.display())
            })?
        };
        if let Some(agent) = &mut settings.agent_config {
            *agent = dir.join(&*agent);
        }
        for sim in &mut settings.simulate {
            sim.path = dir.join(&sim.path);
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Settings::default());
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "agentConfig: agent.yaml\ndeviceGraceSeconds: 3\nsimulate:\n  - {path: data/cam, kind: frames}\n",
        )
        .unwrap();
        let s = Settings::load(dir.path()).unwrap();
        assert_eq!(s.agent_config.unwrap(), dir.path().join("agent.yaml"));
        assert_eq!(s.device_grace_seconds, Some(3));
        assert_eq!(s.simulate[0].path, dir.path().join("data/cam"));
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "agentConfig: a\ncolour: red\n",
        )
        .unwrap();
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("standalone.yaml:2"), "{err}");
    }
}
