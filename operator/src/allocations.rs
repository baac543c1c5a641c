//! The allocation ledger in `Device.status.allocations`: one workload's share, written with optimistic
//! concurrency so two writers never push a device past its capacity.

use std::collections::{BTreeMap, BTreeSet};

use edgewasm_api::{Allocation, Device, Placement, WaitReason, Waiting};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::FIELD_MANAGER;
use crate::error::{Error, Result, is_conflict, is_not_found};

/// The outcome of writing one workload's allocations.
#[derive(Debug, Default, PartialEq)]
pub struct Held {
    /// Placement ids whose every device records their allocation.
    pub confirmed: BTreeSet<String>,
    /// Planned placements whose device is still held by others (they wait until it is released).
    pub blocked: Vec<Waiting>,
    /// The workloads (`namespace/name`) holding those devices: their own reconcile releases them.
    pub holders: BTreeSet<String>,
}

/// What a sync ended with.
#[derive(Debug, PartialEq)]
pub enum Synced {
    Done(Held),
    /// A device changed since it was read: re-read it, re-plan, and sync again.
    Conflict(String),
}

/// The allocations of workload `key` per device, as its planned placements want them.
pub fn wanted(key: &str, placements: &[Placement]) -> BTreeMap<String, Vec<Allocation>> {
    let mut out: BTreeMap<String, Vec<Allocation>> = BTreeMap::new();
    for p in placements {
        for d in &p.devices {
            out.entry(d.clone()).or_default().push(Allocation {
                workload: key.to_owned(),
                placement: p.id.clone(),
                node: p.node.clone(),
            });
        }
    }
    out
}

/// The device's allocations with workload `key`'s entries replaced by `mine`, as far as capacity allows:
/// entries of other workloads are never dropped here (their own reconcile releases them).
pub fn merged(device: &Device, key: &str, mine: &[Allocation]) -> Vec<Allocation> {
    let mut out: Vec<Allocation> = device
        .allocations()
        .iter()
        .filter(|a| a.workload != key)
        .cloned()
        .collect();
    let room = (device.spec.capacity as usize).saturating_sub(out.len());
    // Entries already held come first so a full device keeps what it has.
    let (held, new): (Vec<&Allocation>, Vec<&Allocation>) =
        mine.iter().partition(|a| device.allocations().contains(*a));
    out.extend(held.into_iter().chain(new).take(room).cloned());
    out.sort();
    out
}

/// Writes workload `key`'s allocations (`placements` are its planned ones; empty releases all) to every
/// device that needs a change, updating `devices` with what the apiserver returned.
pub async fn sync(
    api: &Api<Device>,
    devices: &mut [Device],
    key: &str,
    placements: &[Placement],
) -> Result<Synced> {
    let wanted = wanted(key, placements);
    let mut recorded: BTreeSet<(String, String)> = BTreeSet::new();
    for device in devices.iter_mut() {
        let name = device.name_any();
        let mine = wanted.get(&name).map_or(&[][..], Vec::as_slice);
        if mine.is_empty() && !device.allocations().iter().any(|a| a.workload == key) {
            continue;
        }
        let next = merged(device, key, mine);
        if next.as_slice() != device.allocations() {
            let patch = json!({
                "metadata": { "resourceVersion": device.resource_version() },
                "status": { "allocations": next },
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    tracing::info!(device = %name, workload = key, allocations = next.len(), "allocations updated");
                    *device = updated;
                }
                Err(e) if is_conflict(&e) => return Ok(Synced::Conflict(name)),
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(Error::kube("updating allocations of device", name)(e)),
            }
        }
        for a in device.allocations().iter().filter(|a| a.workload == key) {
            recorded.insert((name.clone(), a.placement.clone()));
        }
    }

    let mut held = Held::default();
    for p in placements {
        let missing: Vec<&String> = p
            .devices
            .iter()
            .filter(|d| !recorded.contains(&((*d).clone(), p.id.clone())))
            .collect();
        let Some(device) = missing.first() else {
            held.confirmed.insert(p.id.clone());
            continue;
        };
        let holders: BTreeSet<&str> = devices
            .iter()
            .filter(|d| d.metadata.name.as_ref() == Some(*device))
            .flat_map(|d| {
                d.allocations()
                    .iter()
                    .filter(|a| a.workload != key)
                    .map(|a| a.workload.as_str())
            })
            .collect();
        held.holders.extend(holders.iter().map(|h| (*h).to_owned()));
        held.blocked.push(Waiting {
            id: p.id.clone(),
            device: Some((*device).clone()),
            reason: WaitReason::CapacityExhausted,
            message: format!(
                "device {device} is still held by {}; waiting for it to be released",
                holders.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    Ok(Synced::Done(held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewasm_api::{DeviceSpec, DeviceStatus};

    fn alloc(w: &str, p: &str) -> Allocation {
        Allocation {
            workload: w.into(),
            placement: p.into(),
            node: Some("n".into()),
        }
    }

    fn device(capacity: u32, allocations: Vec<Allocation>) -> Device {
        let mut d = Device::new(
            "d",
            DeviceSpec {
                handler: "static".into(),
                capacity,
                approved: true,
                ..DeviceSpec::default()
            },
        );
        d.status = Some(DeviceStatus {
            allocations,
            ..DeviceStatus::default()
        });
        d
    }

    #[test]
    fn merging_never_exceeds_capacity_nor_drops_others() {
        let d = device(1, vec![alloc("ns/a", "d")]);
        assert_eq!(
            merged(&d, "ns/b", &[alloc("ns/b", "d")]),
            vec![alloc("ns/a", "d")]
        );
        assert_eq!(merged(&d, "ns/a", &[]), vec![]);
        let d = device(2, vec![alloc("ns/a", "d")]);
        assert_eq!(
            merged(&d, "ns/b", &[alloc("ns/b", "d")]),
            vec![alloc("ns/a", "d"), alloc("ns/b", "d")]
        );
    }

    #[test]
    fn a_full_device_keeps_what_the_workload_already_holds() {
        let d = device(1, vec![alloc("ns/a", "1")]);
        assert_eq!(
            merged(&d, "ns/a", &[alloc("ns/a", "0"), alloc("ns/a", "1")]),
            vec![alloc("ns/a", "1")]
        );
    }
}
