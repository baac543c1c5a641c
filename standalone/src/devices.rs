//! The devices this machine sees, kept in memory as `Device` objects: discovery events and the folder's
//! Device manifests go in, allocations from each plan are fed back so placements stay where they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgewasm_api::device::{CONDITION_HEALTHY, CONDITION_PRESENT};
use edgewasm_api::{Allocation, Device, DeviceSpec, DeviceStatus};
use edgewasm_discovery_agent::{DeviceEvent, DiscoveredDevice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Device properties that name host paths; relative ones are resolved against the devices file.
const PATH_PROPERTIES: [&str; 2] = ["devnode", "syspath"];

/// Where a device comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A discovery handler; `identity` is what the handler calls it.
    Discovered { identity: String },
    /// A Device manifest in the folder.
    Manifest,
}

/// One device and how to show it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub device: Device,
    pub source: Source,
}

impl Entry {
    /// The short name a person recognises: the handler's identity, or the manifest's name.
    pub fn label(&self) -> &str {
        match &self.source {
            Source::Discovered { identity } => identity,
            Source::Manifest => self.device.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}

/// A change worth telling the user about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Appeared { name: String },
    Updated { name: String },
    Absent { name: String },
    Removed { name: String, label: String },
}

/// All devices by resource name.
#[derive(Debug)]
pub struct DeviceSet {
    node: String,
    entries: BTreeMap<String, Entry>,
    /// Allocations of devices not seen yet (from the state dir of a previous run).
    resumed: BTreeMap<String, Vec<Allocation>>,
}

impl DeviceSet {
    pub fn new(node: impl Into<String>, resumed: BTreeMap<String, Vec<Allocation>>) -> Self {
        Self {
            node: node.into(),
            entries: BTreeMap::new(),
            resumed,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// The devices to plan with.
    pub fn devices(&self) -> Vec<Device> {
        self.entries.values().map(|e| e.device.clone()).collect()
    }

    /// Whether some device is absent and waiting for its grace period to end.
    pub fn any_absent(&self) -> bool {
        self.entries.values().any(|e| !e.device.is_present())
    }

    /// Applies one discovery event. `approved` says whether the handler's devices are approved
    /// automatically; `base` resolves relative path properties (the static devices file's folder).
    pub fn apply(
        &mut self,
        event: DeviceEvent,
        approved: bool,
        base: Option<&Path>,
        now: Timestamp,
    ) -> Vec<Change> {
        match event {
            DeviceEvent::Seen(d) => self.seen(d, approved, base, now).into_iter().collect(),
            DeviceEvent::Gone { handler, identity } => {
                let name = edgewasm_api::device_name(&handler, &identity);
                self.gone(&name, now).into_iter().collect()
            }
            DeviceEvent::Resync { handler, devices } => {
                let keep: Vec<String> = devices.iter().map(DiscoveredDevice::name).collect();
                let stale: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|(name, e)| {
                        e.device.spec.handler == handler
                            && matches!(e.source, Source::Discovered { .. })
                            && !keep.contains(name)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                let mut changes: Vec<Change> =
                    stale.iter().filter_map(|n| self.gone(n, now)).collect();
                for d in devices {
                    changes.extend(self.seen(d, approved, base, now));
                }
                changes
            }
        }
    }

    fn seen(
        &mut self,
        d: DiscoveredDevice,
        approved: bool,
        base: Option<&Path>,
        now: Timestamp,
    ) -> Option<Change> {
        let name = d.name();
        let mut properties = d.properties;
        if let Some(base) = base {
            for key in PATH_PROPERTIES {
                if let Some(v) = properties.get_mut(key)
                    && !Path::new(v.as_str()).is_absolute()
                {
                    *v = base.join(&*v).display().to_string();
                }
            }
        }
        let spec = DeviceSpec {
            handler: d.handler,
            nodes: vec![self.node.clone()],
            properties,
            capacity: 1,
            approved,
        };
        let previous = self.entries.get(&name);
        let allocations = previous
            .map(|e| e.device.allocations().to_vec())
            .or_else(|| self.resumed.remove(&name))
            .unwrap_or_default();
        let was_present = previous.map(|e| e.device.is_present());
        let unchanged = previous.is_some_and(|e| {
            e.device.spec == spec
                && e.device.is_present()
                && e.device
                    .condition(CONDITION_HEALTHY)
                    .map(|c| c.status == "True")
                    == Some(d.healthy)
        });
        if unchanged {
            return None;
        }
        let mut device = Device::new(&name, spec);
        device.status = Some(DeviceStatus {
            conditions: vec![
                condition(
                    CONDITION_PRESENT,
                    true,
                    "Discovered",
                    "seen by the discovery handler",
                    now,
                ),
                condition(
                    CONDITION_HEALTHY,
                    d.healthy,
                    "Reported",
                    "as reported by the handler",
                    now,
                ),
            ],
            last_seen: Some(Time(now)),
            allocations,
        });
        self.entries.insert(
            name.clone(),
            Entry {
                device,
                source: Source::Discovered {
                    identity: d.identity,
                },
            },
        );
        Some(match was_present {
            Some(true) => Change::Updated { name },
            _ => Change::Appeared { name },
        })
    }

    fn gone(&mut self, name: &str, now: Timestamp) -> Option<Change> {
        let entry = self.entries.get_mut(name)?;
        if !entry.device.is_present() {
            return None;
        }
        let status = entry
            .device
            .status
            .get_or_insert_with(DeviceStatus::default);
        status.conditions.retain(|c| c.type_ != CONDITION_PRESENT);
        status.conditions.push(condition(
            CONDITION_PRESENT,
            false,
            "Gone",
            "the discovery handler lost it",
            now,
        ));
        Some(Change::Absent {
            name: name.to_owned(),
        })
    }

    /// Replaces the devices that come from manifests (present on this node unless they name nodes).
    pub fn set_manifest_devices(&mut self, devices: Vec<Device>) -> bool {
        let before: Vec<(String, DeviceSpec)> = self.manifest_specs();
        let old: BTreeMap<String, Vec<Allocation>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.source == Source::Manifest)
            .map(|(n, e)| (n.clone(), e.device.allocations().to_vec()))
            .collect();
        self.entries.retain(|_, e| e.source != Source::Manifest);
        for mut device in devices {
            let Some(name) = device.metadata.name.clone() else {
                continue;
            };
            if device.spec.nodes.is_empty() {
                device.spec.nodes.push(self.node.clone());
            }
            let allocations = old
                .get(&name)
                .cloned()
                .or_else(|| self.resumed.remove(&name))
                .unwrap_or_default();
            device
                .status
                .get_or_insert_with(DeviceStatus::default)
                .allocations = allocations;
            self.entries.insert(
                name,
                Entry {
                    device,
                    source: Source::Manifest,
                },
            );
        }
        before != self.manifest_specs()
    }

    fn manifest_specs(&self) -> Vec<(String, DeviceSpec)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.source == Source::Manifest)
            .map(|(n, e)| (n.clone(), e.device.spec.clone()))
            .collect()
    }

    /// Records the plan's allocations, so the next plan keeps the same placements.
    pub fn set_allocations(&mut self, allocations: &BTreeMap<String, Vec<Allocation>>) {
        for (name, list) in allocations {
            if let Some(e) = self.entries.get_mut(name) {
                e.device
                    .status
                    .get_or_insert_with(DeviceStatus::default)
                    .allocations
                    .clone_from(list);
            }
        }
    }

    /// All allocations, to persist in the state dir.
    pub fn allocations(&self) -> BTreeMap<String, Vec<Allocation>> {
        let mut out = self.resumed.clone();
        for (name, e) in &self.entries {
            if !e.device.allocations().is_empty() {
                out.insert(name.clone(), e.device.allocations().to_vec());
            }
        }
        out
    }

    /// Forgets devices absent for longer than `grace`.
    pub fn expire(&mut self, now: Timestamp, grace: Duration) -> Vec<Change> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.device.absent_since().is_some_and(|since| {
                    now.as_second().saturating_sub(since.0.as_second())
                        >= i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|name| {
                let e = self.entries.remove(&name)?;
                Some(Change::Removed {
                    label: e.label().to_owned(),
                    name,
                })
            })
            .collect()
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, now: Timestamp) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(now),
        observed_generation: None,
    }
}

/// The folder the static handler's relative paths are resolved against.
pub fn static_base(file: &Path) -> Option<PathBuf> {
    file.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered(id: &str, devnode: &str) -> DiscoveredDevice {
        let mut d = DiscoveredDevice::new("static", id);
        d.properties.insert("devnode".into(), devnode.into());
        d
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn events_resolve_paths_and_expire_after_grace() {
        let mut set = DeviceSet::new("here", BTreeMap::new());
        let base = Path::new("/demo");
        let ev = DeviceEvent::Resync {
            handler: "static".into(),
            devices: vec![discovered("cam", "data/cam")],
        };
        let changes = set.apply(ev.clone(), true, Some(base), at(0));
        assert!(matches!(&changes[..], [Change::Appeared { .. }]));
        let name = discovered("cam", "").name();
        let entry = set.get(&name).unwrap();
        assert_eq!(entry.device.spec.properties["devnode"], "/demo/data/cam");
        assert_eq!(entry.device.spec.nodes, ["here"]);
        assert_eq!(entry.label(), "cam");
        assert!(
            set.apply(ev, true, Some(base), at(1)).is_empty(),
            "no change, no event"
        );

        let gone = DeviceEvent::Resync {
            handler: "static".into(),
            devices: vec![],
        };
        assert_eq!(
            set.apply(gone, true, Some(base), at(2)),
            vec![Change::Absent { name: name.clone() }]
        );
        assert!(set.any_absent());
        assert!(set.expire(at(3), Duration::from_secs(5)).is_empty());
        assert_eq!(
            set.expire(at(7), Duration::from_secs(5)),
            vec![Change::Removed {
                name: name.clone(),
                label: "cam".into()
            }]
        );
        assert!(set.get(&name).is_none());
    }

    #[test]
    fn allocations_survive_updates_and_resume() {
        let name = discovered("cam", "/dev/x").name();
        let alloc = Allocation {
            workload: "default/w".into(),
            placement: name.clone(),
            node: Some("here".into()),
        };
        let mut set = DeviceSet::new("here", [(name.clone(), vec![alloc.clone()])].into());
        set.apply(
            DeviceEvent::Seen(discovered("cam", "/dev/x")),
            true,
            None,
            at(0),
        );
        assert_eq!(
            set.get(&name).unwrap().device.allocations(),
            std::slice::from_ref(&alloc)
        );
        set.apply(
            DeviceEvent::Seen(discovered("cam", "/dev/y")),
            true,
            None,
            at(1),
        );
        assert_eq!(set.get(&name).unwrap().device.allocations(), [alloc]);
        set.set_allocations(&[(name.clone(), vec![])].into());
        assert!(set.allocations().is_empty());
    }
}
