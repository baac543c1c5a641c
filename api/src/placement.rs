//! `plan()`: which instance of which workload runs on which device and node, given capacity and priority.
//!
//! The plan is a pure function of the workloads, the devices (with their current allocations) and the
//! time, so the operator and standalone mode decide identically, and planning twice changes nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::capabilities::{env_for, grants_for};
use crate::device::{Allocation, Device};
use crate::grants::Grants;
use crate::selector::CompiledSelector;
use crate::validation::{SpecError, validate};
use crate::workload::{PlacementMode, WasmWorkload};

/// What the planner needs besides the objects themselves.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// The current time, used against devices' `Present=False` transition time.
    pub now: Timestamp,
    /// How long a placement outlives its device's absence before it is removed.
    pub grace: Duration,
}

/// The decided placements and device allocations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Per workload key (`namespace/name`).
    pub workloads: BTreeMap<String, WorkloadPlan>,
    /// The allocations every device should carry (an empty list releases all of a device's allocations).
    pub allocations: BTreeMap<String, Vec<Allocation>>,
}

/// The plan for one workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadPlan {
    pub placements: Vec<Placement>,
    pub waiting: Vec<Waiting>,
    /// Approved, present devices the selector matches.
    pub matched_devices: u32,
    /// Matching devices that are not approved yet (to explain a workload that waits for approval).
    pub unapproved_devices: u32,
    /// Set when the spec cannot be planned; the workload then gets no placements.
    pub invalid: Option<SpecError>,
}

/// One instance to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Stable id: the device name (`perDevice`), the node (`perNode`) or the index (`count`).
    pub id: String,
    pub workload: String,
    pub devices: Vec<String>,
    /// The node to pin to; `None` for a `count` placement without devices (any node may run it).
    pub node: Option<String>,
    /// The device is gone but still inside the grace period; the instance is kept for now.
    pub device_absent: bool,
    pub grants: Grants,
    pub env: Vec<(String, String)>,
}

/// A placement that could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub id: String,
    pub device: Option<String>,
    pub reason: WaitReason,
    pub message: String,
}

/// Why a placement waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// The device's capacity is used by placements that rank higher.
    CapacityExhausted,
    /// `count` mode wants more instances than matching devices can hold.
    NotEnoughDevices,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CapacityExhausted => "CapacityExhausted",
            Self::NotEnoughDevices => "NotEnoughDevices",
        }
    }
}

/// Existing allocations: (workload key, placement id) → the devices it holds and the node it runs on.
type Held<'a> = BTreeMap<(String, String), Vec<(&'a Device, Option<String>)>>;

/// A request for one unit of one device's capacity, ranked against all others.
struct Claim<'a> {
    rank: (Reverse<i32>, bool, Option<Timestamp>, String, String),
    workload: &'a WasmWorkload,
    key: String,
    id: String,
    /// The device, or `None` for a `count` claim that may take any matching device.
    device: Option<&'a Device>,
    candidates: Vec<&'a Device>,
}

/// Plans every workload against every device.
pub fn plan(workloads: &[WasmWorkload], devices: &[Device], opts: PlanOptions) -> Plan {
    let mut out = Plan::default();
    let by_name: BTreeMap<&str, &Device> = devices
        .iter()
        .filter_map(|d| Some((d.metadata.name.as_deref()?, d)))
        .collect();
    // Existing allocations: (workload key, placement id) -> (device, node).
    let mut held: Held<'_> = BTreeMap::new();
    for device in by_name.values() {
        for a in device.allocations() {
            held.entry((a.workload.clone(), a.placement.clone()))
                .or_default()
                .push((device, a.node.clone()));
        }
    }
    let usable = |d: &Device| d.spec.approved && within_grace(d, opts);

    let mut claims: Vec<Claim<'_>> = Vec::new();
    for w in workloads {
        let key = w.key();
        let mut wp = WorkloadPlan::default();
        if let Err(e) = validate(w) {
            wp.invalid = Some(e);
            out.workloads.insert(key, wp);
            continue;
        }
        let selector = w
            .spec
            .device_selector
            .as_ref()
            .map(|s| s.compile().expect("validated above"));
        let mut matching: Vec<&Device> = Vec::new();
        if let Some(sel) = &selector {
            match matching_devices(sel, by_name.values().copied()) {
                Ok(m) => matching = m,
                Err(e) => {
                    wp.invalid = Some(e);
                    out.workloads.insert(key, wp);
                    continue;
                }
            }
        }
        wp.matched_devices = matching
            .iter()
            .filter(|d| d.spec.approved && d.is_present())
            .count() as u32;
        wp.unapproved_devices = matching.iter().filter(|d| !d.spec.approved).count() as u32;
        // Absent devices keep only the placements they already had.
        matching.retain(|d| usable(d) && (d.is_present() || held_by(&held, &key, d)));
        let rank = |id: &str, existing: bool| {
            (
                Reverse(w.spec.priority),
                !existing,
                w.metadata.creation_timestamp.as_ref().map(|t| t.0),
                key.clone(),
                id.to_owned(),
            )
        };
        match w.spec.placement.mode {
            PlacementMode::PerDevice | PlacementMode::PerNode => {
                for d in &matching {
                    let id = if w.spec.placement.mode == PlacementMode::PerDevice {
                        d.metadata.name.clone().unwrap_or_default()
                    } else {
                        node_for(d, &key, &node_key(d, &key), None, &held).unwrap_or_default()
                    };
                    let existing = held_by(&held, &key, d);
                    claims.push(Claim {
                        rank: rank(&id, existing),
                        workload: w,
                        key: key.clone(),
                        id,
                        device: Some(d),
                        candidates: vec![],
                    });
                }
            }
            PlacementMode::Count => {
                for i in 0..w.spec.placement.replicas.unwrap_or(0) {
                    let id = i.to_string();
                    let previous = held
                        .get(&(key.clone(), id.clone()))
                        .and_then(|v| v.first())
                        .map(|(d, _)| *d);
                    let existing =
                        previous.is_some_and(|p| matching.iter().any(|m| std::ptr::eq(*m, p)));
                    let device = if selector.is_some() {
                        previous.filter(|_| existing)
                    } else {
                        None
                    };
                    claims.push(Claim {
                        rank: rank(&id, existing),
                        workload: w,
                        key: key.clone(),
                        id,
                        device,
                        candidates: matching.clone(),
                    });
                }
            }
        }
        out.workloads.insert(key, wp);
    }

    claims.sort_by(|a, b| a.rank.cmp(&b.rank));
    let mut used: BTreeMap<&str, Vec<(String, i32)>> = BTreeMap::new();
    // perNode placements collect their devices before they are emitted.
    let mut per_node: BTreeMap<(String, String), (&WasmWorkload, Vec<&Device>)> = BTreeMap::new();
    for claim in claims {
        let has_room = |d: &Device, used: &BTreeMap<&str, Vec<(String, i32)>>| {
            let n = used
                .get(d.metadata.name.as_deref().unwrap_or_default())
                .map_or(0, Vec::len);
            n < d.spec.capacity as usize
        };
        let pinned_to_selector = claim.workload.spec.device_selector.is_some();
        let chosen = match claim.device {
            Some(d) if has_room(d, &used) => Some(d),
            Some(_) if !claim.candidates.is_empty() => claim
                .candidates
                .iter()
                .copied()
                .find(|d| d.is_present() && has_room(d, &used)),
            Some(_) => None,
            None if pinned_to_selector => claim
                .candidates
                .iter()
                .copied()
                .find(|d| d.is_present() && has_room(d, &used)),
            None => {
                // A count placement without a selector needs no device.
                emit(
                    &mut out,
                    claim.workload,
                    &claim.key,
                    claim.id,
                    &[],
                    None,
                    &held,
                );
                continue;
            }
        };
        let wp_key = claim.key.clone();
        let Some(device) = chosen else {
            let wp = out.workloads.get_mut(&wp_key).expect("inserted above");
            wp.waiting.push(waiting_for(&claim, &used));
            continue;
        };
        let device_name = device.metadata.name.as_deref().unwrap_or_default();
        used.entry(device_name)
            .or_default()
            .push((claim.key.clone(), claim.workload.spec.priority));
        if claim.workload.spec.placement.mode == PlacementMode::PerNode {
            per_node
                .entry((claim.key.clone(), claim.id.clone()))
                .or_insert_with(|| (claim.workload, vec![]))
                .1
                .push(device);
        } else {
            emit(
                &mut out,
                claim.workload,
                &claim.key,
                claim.id,
                &[device],
                None,
                &held,
            );
        }
    }
    for ((key, id), (w, devices)) in per_node {
        let node = Some(id.clone());
        emit(&mut out, w, &key, id, &devices, node, &held);
    }

    for name in by_name.keys() {
        out.allocations.insert((*name).to_owned(), vec![]);
    }
    for wp in out.workloads.values_mut() {
        wp.placements.sort_by(|a, b| a.id.cmp(&b.id));
        wp.waiting.sort_by(|a, b| a.id.cmp(&b.id));
        for p in &wp.placements {
            for d in &p.devices {
                out.allocations
                    .entry(d.clone())
                    .or_default()
                    .push(Allocation {
                        workload: p.workload.clone(),
                        placement: p.id.clone(),
                        node: p.node.clone(),
                    });
            }
        }
    }
    for list in out.allocations.values_mut() {
        list.sort();
    }
    out
}

fn emit(
    out: &mut Plan,
    w: &WasmWorkload,
    key: &str,
    id: String,
    devices: &[&Device],
    node: Option<String>,
    held: &Held<'_>,
) {
    let node = node.or_else(|| {
        devices
            .first()
            .and_then(|d| node_for(d, key, &id, Some(&id), held))
    });
    let placement = Placement {
        workload: key.to_owned(),
        devices: devices
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect(),
        node,
        device_absent: devices.iter().any(|d| !d.is_present()),
        grants: grants_for(w, devices),
        env: env_for(w, devices),
        id,
    };
    out.workloads
        .get_mut(key)
        .expect("inserted by plan")
        .placements
        .push(placement);
}

fn waiting_for(claim: &Claim<'_>, used: &BTreeMap<&str, Vec<(String, i32)>>) -> Waiting {
    match claim.device {
        Some(d) => {
            let name = d.metadata.name.clone().unwrap_or_default();
            let holders: BTreeSet<String> = used
                .get(name.as_str())
                .into_iter()
                .flatten()
                .map(|(w, p)| format!("{w} (priority {p})"))
                .collect();
            Waiting {
                id: claim.id.clone(),
                message: format!(
                    "device {name} (capacity {}) is used by {}",
                    d.spec.capacity,
                    holders.into_iter().collect::<Vec<_>>().join(", ")
                ),
                device: Some(name),
                reason: WaitReason::CapacityExhausted,
            }
        }
        None => Waiting {
            id: claim.id.clone(),
            device: None,
            reason: WaitReason::NotEnoughDevices,
            message: format!(
                "{} matching device(s) have no capacity left for instance {}",
                claim.candidates.len(),
                claim.id
            ),
        },
    }
}

fn matching_devices<'a>(
    sel: &CompiledSelector<'_>,
    devices: impl Iterator<Item = &'a Device>,
) -> Result<Vec<&'a Device>, SpecError> {
    let mut out = Vec::new();
    for d in devices {
        if sel.matches(d).map_err(SpecError::Selector)? {
            out.push(d);
        }
    }
    Ok(out)
}

fn within_grace(d: &Device, opts: PlanOptions) -> bool {
    match d.absent_since() {
        // Present, or gone from every node without a recorded `Present=False` yet: the agent writes a
        // device's nodes before its status, so such an absence has only just begun.
        None => true,
        Some(since) => {
            let grace = i64::try_from(opts.grace.as_secs()).unwrap_or(i64::MAX);
            opts.now.as_second().saturating_sub(since.0.as_second()) < grace
        }
    }
}

fn held_by(held: &Held<'_>, key: &str, d: &Device) -> bool {
    held.iter()
        .any(|((w, _), v)| w == key && v.iter().any(|(hd, _)| std::ptr::eq(*hd, d)))
}

/// The placement id under which a device's node is looked up for `perNode` (stable per device).
fn node_key(d: &Device, key: &str) -> String {
    format!("{key}\0{}", d.metadata.name.as_deref().unwrap_or_default())
}

/// The node a placement on `d` runs on: where it already runs if the device is still reachable there (or
/// absent within grace), else the node that ranks first by rendezvous hashing, which spreads placements
/// over a multi-node device's nodes and moves as few as possible when the set changes.
///
/// `held_id` names the placement whose previous node counts; `None` takes any placement of the workload
/// on this device (`perNode`, where a device belongs to one placement whose id is the node itself).
fn node_for(
    d: &Device,
    key: &str,
    id: &str,
    held_id: Option<&str>,
    held: &Held<'_>,
) -> Option<String> {
    let previous = held
        .iter()
        .filter(|((w, p), _)| w == key && held_id.is_none_or(|h| h == p))
        .flat_map(|(_, v)| v.iter())
        .filter(|(hd, _)| std::ptr::eq(*hd, d))
        .find_map(|(_, node)| node.clone());
    if let Some(node) = previous
        && (d.spec.nodes.contains(&node) || !d.is_present())
    {
        return Some(node);
    }
    d.spec
        .nodes
        .iter()
        .max_by_key(|n| Sha256::digest(format!("{n}\0{id}").as_bytes()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{CONDITION_PRESENT, DeviceSpec, DeviceStatus};
    use crate::selector::DeviceSelector;
    use crate::workload::{PlacementSpec, WasmWorkloadSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000;

    fn opts(now: i64) -> PlanOptions {
        PlanOptions {
            now: Timestamp::from_second(now).unwrap(),
            grace: Duration::from_mins(1),
        }
    }

    fn dev(name: &str, nodes: &[&str], capacity: u32) -> Device {
        Device::new(
            name,
            DeviceSpec {
                handler: "static".into(),
                nodes: nodes.iter().map(|n| (*n).to_string()).collect(),
                properties: [("devnode".to_string(), format!("/dev/{name}"))].into(),
                capacity,
                approved: true,
            },
        )
    }

    fn absent(mut d: Device, since: i64) -> Device {
        d.spec.nodes.clear();
        d.status
            .get_or_insert_with(DeviceStatus::default)
            .conditions
            .push(Condition {
                type_: CONDITION_PRESENT.into(),
                status: "False".into(),
                reason: "Gone".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::from_second(since).unwrap()),
            });
        d
    }

    fn allocated(mut d: Device, allocs: &[(&str, &str, &str)]) -> Device {
        d.status
            .get_or_insert_with(DeviceStatus::default)
            .allocations = allocs
            .iter()
            .map(|(w, p, n)| Allocation {
                workload: (*w).into(),
                placement: (*p).into(),
                node: Some((*n).into()),
            })
            .collect();
        d
    }

    fn wl(name: &str, mode: PlacementMode, priority: i32, created: i64) -> WasmWorkload {
        let mut w = WasmWorkload::new(
            name,
            WasmWorkloadSpec {
                image: "registry.local/app:1".into(),
                device_selector: Some(DeviceSelector {
                    handler: Some("static".into()),
                    ..Default::default()
                }),
                placement: PlacementSpec {
                    mode,
                    replicas: (mode == PlacementMode::Count).then_some(2),
                },
                priority,
                ..Default::default()
            },
        );
        w.metadata.namespace = Some("default".into());
        w.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        w
    }

    /// Re-runs a plan with its own allocations written back, as the operator does.
    fn settle(
        workloads: &[WasmWorkload],
        mut devices: Vec<Device>,
        o: PlanOptions,
    ) -> (Plan, Vec<Device>) {
        let p = plan(workloads, &devices, o);
        for d in &mut devices {
            let allocs = p.allocations[d.metadata.name.as_deref().unwrap()].clone();
            d.status
                .get_or_insert_with(DeviceStatus::default)
                .allocations = allocs;
        }
        (p, devices)
    }

    fn ids(p: &Plan, w: &str) -> Vec<(String, Option<String>)> {
        p.workloads[w]
            .placements
            .iter()
            .map(|p| (p.id.clone(), p.node.clone()))
            .collect()
    }

    #[test]
    fn per_device_places_one_instance_per_matching_device() {
        let devices = vec![
            dev("cam-a", &["n1"], 1),
            dev("cam-b", &["n2"], 1),
            dev("cam-c", &["n1"], 1),
        ];
        let p = plan(
            &[wl("w", PlacementMode::PerDevice, 0, T0)],
            &devices,
            opts(T0),
        );
        assert_eq!(
            ids(&p, "default/w"),
            vec![
                ("cam-a".into(), Some("n1".into())),
                ("cam-b".into(), Some("n2".into())),
                ("cam-c".into(), Some("n1".into()))
            ]
        );
        assert_eq!(p.workloads["default/w"].matched_devices, 3);
        assert_eq!(p.allocations["cam-b"][0].placement, "cam-b");
        let cam_a = &p.workloads["default/w"].placements[0];
        assert_eq!(cam_a.grants.paths[0].host, "/dev/cam-a");
        assert!(
            cam_a
                .env
                .contains(&("EDGEWASM_DEVICE_NAME".into(), "cam-a".into()))
        );
    }

    #[test]
    fn per_node_groups_devices_by_node() {
        let devices = vec![
            dev("cam-a", &["n1"], 1),
            dev("cam-b", &["n2"], 1),
            dev("cam-c", &["n1"], 1),
        ];
        let p = plan(
            &[wl("w", PlacementMode::PerNode, 0, T0)],
            &devices,
            opts(T0),
        );
        let w = &p.workloads["default/w"];
        assert_eq!(w.placements.len(), 2);
        assert_eq!(w.placements[0].id, "n1");
        assert_eq!(w.placements[0].devices, vec!["cam-a", "cam-c"]);
        assert_eq!(w.placements[0].grants.paths.len(), 2);
        assert_eq!(w.placements[1].devices, vec!["cam-b"]);
    }

    #[test]
    fn count_fills_devices_and_reports_shortfall() {
        let mut w = wl("w", PlacementMode::Count, 0, T0);
        w.spec.placement.replicas = Some(3);
        let devices = vec![dev("cam-a", &["n1"], 2)];
        let p = plan(std::slice::from_ref(&w), &devices, opts(T0));
        let wp = &p.workloads["default/w"];
        assert_eq!(wp.placements.len(), 2);
        assert_eq!(wp.waiting.len(), 1);
        assert_eq!(wp.waiting[0].reason, WaitReason::NotEnoughDevices);

        let mut free = wl("free", PlacementMode::Count, 0, T0);
        free.spec.device_selector = None;
        let p = plan(&[free], &[], opts(T0));
        assert_eq!(p.workloads["default/free"].placements.len(), 2);
        assert!(
            p.workloads["default/free"]
                .placements
                .iter()
                .all(|p| p.node.is_none() && p.devices.is_empty())
        );
    }

    #[test]
    fn priority_wins_then_age_then_name() {
        let devices = vec![dev("cam-a", &["n1"], 1)];
        let low = wl("low", PlacementMode::PerDevice, 0, T0);
        let high = wl("high", PlacementMode::PerDevice, 10, T0 + 100);
        let p = plan(&[low.clone(), high.clone()], &devices, opts(T0));
        assert_eq!(p.workloads["default/high"].placements.len(), 1);
        let waiting = &p.workloads["default/low"].waiting;
        assert_eq!(waiting[0].reason, WaitReason::CapacityExhausted);
        assert!(
            waiting[0].message.contains("default/high (priority 10)"),
            "{}",
            waiting[0].message
        );

        let older = wl("zz-older", PlacementMode::PerDevice, 0, T0 - 10);
        let p = plan(&[low.clone(), older], &devices, opts(T0));
        assert_eq!(p.workloads["default/zz-older"].placements.len(), 1);
        let twin = wl("a-twin", PlacementMode::PerDevice, 0, T0);
        let p = plan(&[low, twin], &devices, opts(T0));
        assert_eq!(p.workloads["default/a-twin"].placements.len(), 1);
    }

    #[test]
    fn equal_priority_keeps_the_current_holder() {
        let holder = wl("zz-holder", PlacementMode::PerDevice, 0, T0 + 50);
        let newcomer = wl("aa-newcomer", PlacementMode::PerDevice, 0, T0);
        let devices = vec![allocated(
            dev("cam-a", &["n1"], 1),
            &[("default/zz-holder", "cam-a", "n1")],
        )];
        let p = plan(&[holder, newcomer], &devices, opts(T0));
        assert_eq!(p.workloads["default/zz-holder"].placements.len(), 1);
        assert_eq!(p.workloads["default/aa-newcomer"].waiting.len(), 1);
    }

    #[test]
    fn multi_node_device_stays_on_its_node_until_that_node_loses_it() {
        let w = wl("w", PlacementMode::PerDevice, 0, T0);
        let fresh = plan(
            std::slice::from_ref(&w),
            &[dev("cam", &["n1", "n2", "n3"], 1)],
            opts(T0),
        );
        let chosen = fresh.workloads["default/w"].placements[0]
            .node
            .clone()
            .unwrap();
        let other = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != chosen)
            .unwrap();
        let sticky = allocated(
            dev("cam", &["n1", "n2", "n3"], 1),
            &[("default/w", "cam", other)],
        );
        let p = plan(std::slice::from_ref(&w), &[sticky], opts(T0));
        assert_eq!(
            p.workloads["default/w"].placements[0].node.as_deref(),
            Some(other)
        );
        let lost: Vec<&str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| *n != other)
            .collect();
        let moved = allocated(dev("cam", &lost, 1), &[("default/w", "cam", other)]);
        let p = plan(&[w], &[moved], opts(T0));
        assert_ne!(
            p.workloads["default/w"].placements[0].node.as_deref(),
            Some(other)
        );
    }

    #[test]
    fn absent_device_keeps_its_placement_for_the_grace_period() {
        let w = wl("w", PlacementMode::PerDevice, 0, T0);
        let gone = absent(
            allocated(dev("cam", &["n1"], 1), &[("default/w", "cam", "n1")]),
            T0,
        );
        let p = plan(
            std::slice::from_ref(&w),
            std::slice::from_ref(&gone),
            opts(T0 + 30),
        );
        let kept = &p.workloads["default/w"].placements;
        assert_eq!(kept.len(), 1);
        assert!(kept[0].device_absent);
        assert_eq!(kept[0].node.as_deref(), Some("n1"));
        assert_eq!(p.workloads["default/w"].matched_devices, 0);
        let p = plan(
            std::slice::from_ref(&w),
            std::slice::from_ref(&gone),
            opts(T0 + 61),
        );
        assert!(p.workloads["default/w"].placements.is_empty());
        assert!(p.allocations["cam"].is_empty());
        // Gone from its nodes while its status still says Present (the agent writes the spec first):
        // the grace period has just begun.
        let mut leaving = allocated(dev("cam", &[], 1), &[("default/w", "cam", "n1")]);
        leaving.status.as_mut().unwrap().conditions.push(Condition {
            type_: CONDITION_PRESENT.into(),
            status: "True".into(),
            reason: "Seen".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::from_second(T0).unwrap()),
        });
        let p = plan(std::slice::from_ref(&w), &[leaving], opts(T0 + 3600));
        assert_eq!(p.workloads["default/w"].placements.len(), 1);
        assert!(p.workloads["default/w"].placements[0].device_absent);
        // A device absent without ever having been placed gets nothing new.
        let stranger = absent(dev("cam", &["n1"], 1), T0);
        assert!(
            plan(&[w], &[stranger], opts(T0 + 1)).workloads["default/w"]
                .placements
                .is_empty()
        );
    }

    #[test]
    fn unapproved_devices_are_not_matched_but_counted() {
        let mut d = dev("cam", &["n1"], 1);
        d.spec.approved = false;
        let p = plan(&[wl("w", PlacementMode::PerDevice, 0, T0)], &[d], opts(T0));
        assert!(p.workloads["default/w"].placements.is_empty());
        assert_eq!(p.workloads["default/w"].unapproved_devices, 1);
    }

    #[test]
    fn invalid_spec_affects_only_that_workload() {
        let mut bad = wl("bad", PlacementMode::PerDevice, 100, T0);
        bad.spec.device_selector.as_mut().unwrap().expression = Some("device.properties[".into());
        let good = wl("good", PlacementMode::PerDevice, 0, T0);
        let p = plan(&[bad, good], &[dev("cam", &["n1"], 1)], opts(T0));
        assert!(matches!(
            p.workloads["default/bad"].invalid,
            Some(SpecError::Selector(_))
        ));
        assert_eq!(p.workloads["default/good"].placements.len(), 1);

        let mut no_selector = wl("nosel", PlacementMode::PerDevice, 0, T0);
        no_selector.spec.device_selector = None;
        let p = plan(&[no_selector], &[], opts(T0));
        assert_eq!(
            p.workloads["default/nosel"].invalid,
            Some(SpecError::SelectorRequired(PlacementMode::PerDevice))
        );
    }

    #[test]
    fn three_devices_two_competing_workloads() {
        // The operator's "done when" scenario: capacity 1 each, the higher priority takes all three.
        let devices = vec![
            dev("cam-a", &["n1"], 1),
            dev("cam-b", &["n1"], 1),
            dev("cam-c", &["n2"], 1),
        ];
        let first = wl("first", PlacementMode::PerDevice, 5, T0);
        let second = wl("second", PlacementMode::PerDevice, 0, T0 - 100);
        let (p, devices) = settle(&[first.clone(), second.clone()], devices, opts(T0));
        assert_eq!(p.workloads["default/first"].placements.len(), 3);
        assert_eq!(p.workloads["default/second"].waiting.len(), 3);
        let (again, _) = settle(&[first, second], devices, opts(T0 + 5));
        assert_eq!(p, again);
    }

    proptest! {
        #[test]
        fn capacity_is_never_exceeded_and_plans_are_idempotent(
            caps in proptest::collection::vec(1u32..3, 1..6),
            nodes in proptest::collection::vec(proptest::collection::btree_set(0u8..3, 1..3), 6),
            specs in proptest::collection::vec((0u8..3, -2i32..3, 0i64..5, 1u32..4), 1..5),
        ) {
            let devices: Vec<Device> = caps.iter().enumerate().map(|(i, c)| {
                let ns: Vec<String> = nodes[i].iter().map(|n| format!("n{n}")).collect();
                let ns: Vec<&str> = ns.iter().map(String::as_str).collect();
                dev(&format!("d{i}"), &ns, *c)
            }).collect();
            let workloads: Vec<WasmWorkload> = specs.iter().enumerate().map(|(i, (m, prio, age, reps))| {
                let mode = [PlacementMode::PerDevice, PlacementMode::PerNode, PlacementMode::Count][*m as usize];
                let mut w = wl(&format!("w{i}"), mode, *prio, T0 + age);
                if mode == PlacementMode::Count { w.spec.placement.replicas = Some(*reps); }
                w
            }).collect();
            let (first, settled) = settle(&workloads, devices, opts(T0));
            for d in &settled {
                let n = first.allocations[d.metadata.name.as_deref().unwrap()].len();
                prop_assert!(n <= d.spec.capacity as usize);
            }
            let (second, _) = settle(&workloads, settled, opts(T0 + 1));
            prop_assert_eq!(first, second);
        }
    }
}
