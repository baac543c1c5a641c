//! The `static` handler: devices listed in a YAML or JSON file, reloaded when the file changes.
//!
//! The handler watches the file's directory with inotify (through `notify`), not the file itself, so
//! editors that replace the file and Kubernetes ConfigMap updates (a symlink swap) are seen too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_trait::async_trait;
use notify::Watcher as _;
use serde::Deserialize;
use tokio::sync::mpsc::{self, Sender};
use tokio_util::sync::CancellationToken;

use crate::{DeviceEvent, DiscoveredDevice, Handler};

/// Handler name of statically listed devices.
pub const HANDLER: &str = "static";
/// Files bigger than this are rejected rather than read.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// How long a read that drops devices waits for a writer to finish before it is read again.
const REMOVAL_SETTLE: std::time::Duration = std::time::Duration::from_millis(150);

/// One device entry in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    /// Identity of the device; `name` is accepted when `id` is absent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default = "healthy")]
    healthy: bool,
}

fn healthy() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileFormat {
    List(Vec<Entry>),
    Wrapped {
        #[serde(default)]
        devices: Vec<Entry>,
    },
}

/// Parse a static device file (YAML, which includes JSON). Duplicate identities are an error.
pub fn parse(text: &str) -> anyhow::Result<Vec<DiscoveredDevice>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries = match serde_yaml::from_str::<FileFormat>(text)
        .context("expected a list of devices or {devices: [...]} with id, properties, healthy")?
    {
        FileFormat::List(e) | FileFormat::Wrapped { devices: e } => e,
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut devices = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let identity =
            e.id.or(e.name)
                .filter(|s| !s.trim().is_empty())
                .with_context(|| format!("device #{i} has neither id nor name"))?;
        anyhow::ensure!(
            seen.insert(identity.clone()),
            "duplicate device id {identity:?}"
        );
        devices.push(DiscoveredDevice {
            handler: HANDLER.to_string(),
            identity,
            properties: e.properties,
            healthy: e.healthy,
        });
    }
    Ok(devices)
}

/// Read and parse the file; a missing file is an empty list (the devices are gone).
pub fn load(path: &Path) -> anyhow::Result<Vec<DiscoveredDevice>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            anyhow::bail!("{} is larger than {MAX_FILE_BYTES} bytes", path.display())
        }
        Ok(_) => {}
    }
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("reading {}", path.display()))?,
    };
    parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads the file; `None` (logged) when it does not parse, so the last good list stays in use: a
/// half-written file must not make devices vanish.
fn load_or_keep(path: &Path) -> Option<Vec<DiscoveredDevice>> {
    load(path)
        .map_err(|e| {
            tracing::error!(
                error = format!("{e:#}"),
                "static device file unusable; keeping previous devices"
            );
            crate::metrics::bad_input(HANDLER, "file");
        })
        .ok()
}

fn removes_some(old: &[DiscoveredDevice], new: &[DiscoveredDevice]) -> bool {
    old.iter()
        .any(|o| !new.iter().any(|n| n.identity == o.identity))
}

/// The events that turn the `old` set into the `new` set.
pub fn diff(old: &[DiscoveredDevice], new: &[DiscoveredDevice]) -> Vec<DeviceEvent> {
    let old: BTreeMap<&str, &DiscoveredDevice> =
        old.iter().map(|d| (d.identity.as_str(), d)).collect();
    let new_ids: BTreeMap<&str, &DiscoveredDevice> =
        new.iter().map(|d| (d.identity.as_str(), d)).collect();
    let mut events = Vec::new();
    for (id, d) in &old {
        if !new_ids.contains_key(id) {
            events.push(DeviceEvent::Gone {
                handler: d.handler.clone(),
                identity: (*id).to_string(),
            });
        }
    }
    for d in new {
        if old.get(d.identity.as_str()) != Some(&d) {
            events.push(DeviceEvent::Seen(d.clone()));
        }
    }
    events
}

/// Watches one file of devices.
pub struct StaticHandler {
    file: PathBuf,
}

impl StaticHandler {
    pub fn new(file: PathBuf) -> Self {
        Self { file }
    }
}

#[async_trait]
impl Handler for StaticHandler {
    fn name(&self) -> &str {
        HANDLER
    }

    async fn run(
        self: Box<Self>,
        events: Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let file = if self.file.is_absolute() {
            self.file.clone()
        } else {
            std::env::current_dir()
                .context("current directory")?
                .join(&self.file)
        };
        let dir = file
            .parent()
            .with_context(|| format!("static device file {} has no directory", file.display()))?
            .to_path_buf();
        // One pending "something changed" is enough: a reload reads the latest file anyway.
        let (dirty_tx, mut dirty_rx) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(_) => {
                    let _ = dirty_tx.try_send(());
                }
                Err(e) => tracing::warn!(error = %e, "static device file watch error"),
            })
            .context("creating inotify watcher")?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;

        let mut current = match load(&file) {
            Ok(devices) => devices,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "static device file unusable; starting empty"
                );
                crate::metrics::bad_input(HANDLER, "file");
                Vec::new()
            }
        };
        tracing::info!(file = %file.display(), devices = current.len(), "static devices loaded");
        if events
            .send(DeviceEvent::Resync {
                handler: HANDLER.into(),
                devices: current.clone(),
            })
            .await
            .is_err()
        {
            return Ok(());
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                msg = dirty_rx.recv() => if msg.is_none() { return Ok(()) },
            }
            let Some(mut next) = load_or_keep(&file) else {
                continue;
            };
            // A file rewritten in place (truncate, then write) reads empty or cut short for a moment.
            // New and changed devices go out at once; a removal waits until a second read agrees,
            // so one editor save never stops the instances of the devices it kept.
            if removes_some(&current, &next) {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(REMOVAL_SETTLE) => {}
                }
                while dirty_rx.try_recv().is_ok() {}
                let Some(again) = load_or_keep(&file) else {
                    continue;
                };
                next = again;
            }
            for ev in diff(&current, &next) {
                tracing::info!(event = ?ev, "static device change");
                if events.send(ev).await.is_err() {
                    return Ok(());
                }
            }
            current = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_wrapped_forms() {
        let a =
            parse("- id: cam1\n  properties: {ip: 10.0.0.5}\n- name: sensor\n  healthy: false\n")
                .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].identity, "cam1");
        assert_eq!(a[0].properties["ip"], "10.0.0.5");
        assert_eq!(a[1].identity, "sensor");
        assert!(!a[1].healthy);
        let b =
            parse(r#"{"devices": [{"id": "cam1", "properties": {"ip": "10.0.0.5"}}]}"#).unwrap();
        assert_eq!(b[0], a[0]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse("- properties: {}\n").is_err());
        assert!(parse("- id: a\n- id: a\n").is_err());
        assert!(parse("- id: a\n  colour: red\n").is_err());
        assert!(parse("just a string").is_err());
    }

    #[test]
    fn diff_reports_added_changed_and_removed() {
        let old = parse("- id: a\n- id: b\n  properties: {x: '1'}\n").unwrap();
        let new = parse("- id: b\n  properties: {x: '2'}\n- id: c\n").unwrap();
        let ev = diff(&old, &new);
        assert_eq!(ev.len(), 3);
        assert!(matches!(&ev[0], DeviceEvent::Gone { identity, .. } if identity == "a"));
        assert!(matches!(&ev[1], DeviceEvent::Seen(d) if d.identity == "b"));
        assert!(matches!(&ev[2], DeviceEvent::Seen(d) if d.identity == "c"));
        assert!(diff(&new, &new).is_empty());
    }
}
