//! A workload's status from its plan and its Pods: conditions a user can act on, per-placement phases.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use edgewasm_api::{
    Placement, PlacementStatus, Waiting, WasmWorkload, WasmWorkloadStatus, WorkloadPlan,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

pub const PHASE_PENDING: &str = "Pending";
pub const PHASE_RUNNING: &str = "Running";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED: &str = "Failed";
pub const PHASE_WAITING: &str = "Waiting";
pub const PHASE_DEVICE_ABSENT: &str = "DeviceAbsent";

/// What the reconciler observed for one workload after acting on it.
#[derive(Debug)]
pub struct Observed<'a> {
    pub plan: &'a WorkloadPlan,
    /// Placements that hold their allocation (and so have, or are getting, a Pod).
    pub placements: &'a [Placement],
    /// Placements that wait: the plan's, plus planned ones whose device another workload still holds.
    pub waiting: &'a [Waiting],
    /// The workload's Pods by placement id.
    pub pods: &'a BTreeMap<String, Pod>,
}

/// The status the workload should have; conditions keep their transition time while unchanged.
pub fn desired_status(w: &WasmWorkload, obs: &Observed<'_>, now: &Time) -> WasmWorkloadStatus {
    let generation = w.metadata.generation;
    let mut placements: Vec<PlacementStatus> = obs
        .placements
        .iter()
        .map(|p| {
            let pod = obs.pods.get(&p.id);
            let (phase, message) = if p.device_absent {
                (
                    PHASE_DEVICE_ABSENT,
                    Some(format!(
                        "device {} is absent; the Pod is kept for the grace period",
                        p.devices.join(",")
                    )),
                )
            } else {
                pod.map_or(
                    (PHASE_PENDING, Some("creating the Pod".to_owned())),
                    pod_phase,
                )
            };
            PlacementStatus {
                id: p.id.clone(),
                device: p.devices.first().cloned(),
                node: p.node.clone(),
                pod: pod.map(ResourceExt::name_any),
                phase: phase.to_owned(),
                message,
            }
        })
        .collect();
    placements.extend(obs.waiting.iter().map(|wt| PlacementStatus {
        id: wt.id.clone(),
        device: wt.device.clone(),
        node: None,
        pod: None,
        phase: PHASE_WAITING.to_owned(),
        message: Some(wt.message.clone()),
    }));
    placements.sort_by(|a, b| a.id.cmp(&b.id));

    let ready = placements
        .iter()
        .filter(|p| p.phase == PHASE_RUNNING || p.phase == PHASE_SUCCEEDED)
        .count();
    let conditions = conditions(obs, &placements, ready);
    let previous = w
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    WasmWorkloadStatus {
        conditions: conditions
            .into_iter()
            .map(|(type_, status, reason, message)| {
                let status = if status { "True" } else { "False" };
                let last_transition_time = previous
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
                Condition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                    reason: reason.to_owned(),
                    message,
                    observed_generation: generation,
                    last_transition_time,
                }
            })
            .collect(),
        matched_devices: obs.plan.matched_devices,
        ready_placements: ready as u32,
        observed_generation: generation,
        placements,
    }
}

/// Whether two statuses differ in anything but condition transition times (which follow the rest).
pub fn same_status(a: &WasmWorkloadStatus, b: &WasmWorkloadStatus) -> bool {
    let strip = |s: &WasmWorkloadStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

type Cond = (&'static str, bool, &'static str, String);

fn conditions(obs: &Observed<'_>, placements: &[PlacementStatus], ready: usize) -> Vec<Cond> {
    if let Some(e) = &obs.plan.invalid {
        let msg = e.to_string();
        return vec![
            (READY, false, "InvalidSpec", msg.clone()),
            (PROGRESSING, false, "InvalidSpec", msg.clone()),
            (DEGRADED, true, "InvalidSpec", msg),
        ];
    }
    if placements.is_empty() {
        let mut msg = "no approved, present Device matches spec.deviceSelector".to_owned();
        match obs.plan.unapproved_devices {
            0 => {}
            1 => msg.push_str("; 1 matching device awaits approval"),
            n => {
                let _ = write!(msg, "; {n} matching devices await approval");
            }
        }
        return vec![
            (READY, false, "NoMatchingDevices", msg.clone()),
            (PROGRESSING, false, "NoMatchingDevices", msg.clone()),
            (DEGRADED, false, "NoMatchingDevices", msg),
        ];
    }
    let describe = |phase: &str| -> Vec<String> {
        placements
            .iter()
            .filter(|p| p.phase == phase)
            .map(|p| format!("{}: {}", p.id, p.message.as_deref().unwrap_or(phase)))
            .collect()
    };
    let failed = describe(PHASE_FAILED);
    let absent = describe(PHASE_DEVICE_ABSENT);
    let waiting = describe(PHASE_WAITING);
    let pending = describe(PHASE_PENDING);
    let total = placements.len();

    let degraded = if !failed.is_empty() {
        (DEGRADED, true, "PodFailed", failed.join("; "))
    } else if !absent.is_empty() {
        (DEGRADED, true, "DeviceAbsent", absent.join("; "))
    } else {
        (
            DEGRADED,
            false,
            "AsExpected",
            "no placement failed".to_owned(),
        )
    };
    let ready_cond = if ready == total {
        (
            READY,
            true,
            "AllPlacementsReady",
            format!("{ready}/{total} placements ready"),
        )
    } else {
        let (reason, why) = if !failed.is_empty() {
            ("PodFailed", failed)
        } else if !absent.is_empty() {
            ("DeviceAbsent", absent)
        } else if !waiting.is_empty() {
            let reason = obs
                .waiting
                .first()
                .map_or("CapacityExhausted", |w| w.reason.as_str());
            (reason, waiting)
        } else {
            ("PodPending", pending.clone())
        };
        (
            READY,
            false,
            reason,
            format!("{ready}/{total} placements ready; {}", why.join("; ")),
        )
    };
    let progressing = if pending.is_empty() {
        (PROGRESSING, false, ready_cond.2, ready_cond.3.clone())
    } else {
        (PROGRESSING, true, "PodPending", pending.join("; "))
    };
    vec![ready_cond, progressing, degraded]
}

/// A Pod's phase as a placement phase, with the container's own explanation when it has one.
fn pod_phase(pod: &Pod) -> (&'static str, Option<String>) {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first());
    let terminated = container.and_then(|c| {
        let state = c.state.as_ref();
        state
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
    });
    let terminated_message = terminated.map(|t| {
        let why = t
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| t.reason.clone())
            .unwrap_or_default();
        format!("container exited with code {}: {why}", t.exit_code)
            .trim_end_matches(": ")
            .to_owned()
    });
    let waiting = container.and_then(|c| c.state.as_ref()?.waiting.as_ref());
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => (PHASE_SUCCEEDED, terminated_message),
        Some("Failed") => (
            PHASE_FAILED,
            terminated_message
                .or_else(|| status.and_then(|s| s.message.clone()))
                .or(Some("Pod failed".into())),
        ),
        Some("Running")
            if waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff")) =>
        {
            (
                PHASE_FAILED,
                terminated_message.or(Some("CrashLoopBackOff".into())),
            )
        }
        Some("Running") => (PHASE_RUNNING, None),
        _ => {
            let why = waiting
                .and_then(|w| w.message.clone().or_else(|| w.reason.clone()))
                .or_else(|| status.and_then(|s| s.message.clone()))
                .unwrap_or_else(|| "Pod is pending".into());
            (PHASE_PENDING, Some(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewasm_api::{Grants, SpecError, WaitReason, WasmWorkloadSpec};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn placement(id: &str) -> Placement {
        Placement {
            id: id.into(),
            workload: "ns/w".into(),
            devices: vec![id.into()],
            node: Some("edge-1".into()),
            device_absent: false,
            grants: Grants::default(),
            env: vec![],
        }
    }

    fn pod(phase: &str, terminated: Option<(i32, &str)>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: terminated.map(|(code, msg)| {
                    vec![ContainerStatus {
                        name: "app".into(),
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                message: Some(msg.into()),
                                ..ContainerStateTerminated::default()
                            }),
                            ..ContainerState::default()
                        }),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn workload() -> WasmWorkload {
        let mut w = WasmWorkload::new("w", WasmWorkloadSpec::default());
        w.metadata.generation = Some(3);
        w
    }

    fn cond<'a>(s: &'a WasmWorkloadStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn status(
        w: &WasmWorkload,
        plan: &WorkloadPlan,
        ps: &[Placement],
        wt: &[Waiting],
        pods: &[(&str, Pod)],
        now: &Time,
    ) -> WasmWorkloadStatus {
        let pods: BTreeMap<String, Pod> = pods
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        desired_status(
            w,
            &Observed {
                plan,
                placements: ps,
                waiting: wt,
                pods: &pods,
            },
            now,
        )
    }

    #[test]
    fn no_matching_devices_mentions_devices_awaiting_approval() {
        let plan = WorkloadPlan {
            unapproved_devices: 2,
            ..WorkloadPlan::default()
        };
        let s = status(&workload(), &plan, &[], &[], &[], &at(0));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoMatchingDevices")
        );
        assert!(
            ready.message.contains("2 matching devices await approval"),
            "{}",
            ready.message
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn invalid_spec_is_degraded_with_the_error_text() {
        let plan = WorkloadPlan {
            invalid: Some(SpecError::ReplicasRequired),
            ..WorkloadPlan::default()
        };
        let s = status(&workload(), &plan, &[], &[], &[], &at(0));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, READY).reason, "InvalidSpec");
        assert_eq!(
            cond(&s, READY).message,
            SpecError::ReplicasRequired.to_string()
        );
    }

    #[test]
    fn pending_then_running_then_failed_transitions() {
        let plan = WorkloadPlan {
            matched_devices: 1,
            ..WorkloadPlan::default()
        };
        let ps = [placement("d1")];
        let mut w = workload();

        let s1 = status(&w, &plan, &ps, &[], &[], &at(0));
        assert_eq!(cond(&s1, READY).reason, "PodPending");
        assert_eq!(cond(&s1, PROGRESSING).status, "True");
        assert_eq!(s1.placements[0].phase, PHASE_PENDING);
        w.status = Some(s1.clone());

        let s2 = status(
            &w,
            &plan,
            &ps,
            &[],
            &[("d1", pod("Running", None))],
            &at(10),
        );
        assert_eq!(
            (
                cond(&s2, READY).status.as_str(),
                cond(&s2, READY).reason.as_str()
            ),
            ("True", "AllPlacementsReady")
        );
        assert_eq!(cond(&s2, READY).last_transition_time, at(10));
        // Degraded stayed False, so its transition time is kept.
        assert_eq!(cond(&s2, DEGRADED).last_transition_time, at(0));
        assert_eq!(s2.ready_placements, 1);
        w.status = Some(s2.clone());

        let s3 = status(
            &w,
            &plan,
            &ps,
            &[],
            &[("d1", pod("Failed", Some((3, "camera not found"))))],
            &at(20),
        );
        assert_eq!(cond(&s3, READY).reason, "PodFailed");
        let degraded = cond(&s3, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "PodFailed")
        );
        assert!(
            degraded
                .message
                .contains("container exited with code 3: camera not found"),
            "{}",
            degraded.message
        );
        assert_eq!(degraded.last_transition_time, at(20));
        assert!(!same_status(&s2, &s3));
        assert!(same_status(
            &s3,
            &status(
                &w,
                &plan,
                &ps,
                &[],
                &[("d1", pod("Failed", Some((3, "camera not found"))))],
                &at(30)
            )
        ));
    }

    #[test]
    fn losers_say_who_holds_the_device() {
        let plan = WorkloadPlan {
            matched_devices: 1,
            ..WorkloadPlan::default()
        };
        let wt = [Waiting {
            id: "d1".into(),
            device: Some("d1".into()),
            reason: WaitReason::CapacityExhausted,
            message: "device d1 (capacity 1) is used by ns/a (priority 0)".into(),
        }];
        let s = status(&workload(), &plan, &[], &wt, &[], &at(0));
        let ready = cond(&s, READY);
        assert_eq!(ready.reason, "CapacityExhausted");
        assert!(ready.message.contains("used by ns/a"), "{}", ready.message);
        assert_eq!(s.placements[0].phase, PHASE_WAITING);
    }

    #[test]
    fn absent_device_degrades_until_the_grace_period_ends() {
        let plan = WorkloadPlan::default();
        let mut p = placement("d1");
        p.device_absent = true;
        let s = status(
            &workload(),
            &plan,
            &[p],
            &[],
            &[("d1", pod("Running", None))],
            &at(0),
        );
        assert_eq!(cond(&s, DEGRADED).reason, "DeviceAbsent");
        assert_eq!(cond(&s, READY).reason, "DeviceAbsent");
        assert_eq!(s.placements[0].phase, PHASE_DEVICE_ABSENT);
    }
}
