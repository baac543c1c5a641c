//! The done-when scenario against the real CRD apiserver and the harness's core server:
//! two workloads compete for three single-capacity devices; the Pods and allocations are exactly
//! what the plan says, the loser's status says why it waits, and a device gone past the grace
//! period loses its Pod and its allocation (and gets them back when it returns).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Operator, device};
use edgewasm_api::{
    Device, DeviceSelector, LABEL_DEVICE, LABEL_WORKLOAD, PlanOptions, WasmWorkload,
    WasmWorkloadSpec, plan,
};
use edgewasm_operator::Config;
use edgewasm_operator::pod::{pinned_node, pod_name};
use edgewasm_testkit::{Cluster, eventually};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const NS: &str = "operator-scenario";
const HANDLER: &str = "scenario";
const GRACE: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_mins(1);

fn workload(name: &str, priority: i32) -> WasmWorkload {
    let mut w = WasmWorkload::new(
        name,
        WasmWorkloadSpec {
            image: format!("registry.local/{name}:1"),
            device_selector: Some(DeviceSelector {
                handler: Some(HANDLER.into()),
                ..DeviceSelector::default()
            }),
            priority,
            ..WasmWorkloadSpec::default()
        },
    );
    w.metadata.namespace = Some(NS.into());
    w
}

/// Pod name -> (device label, pinned node) of the workload's live Pods.
async fn pods_of(
    pods: &Api<Pod>,
    workload: &str,
) -> Result<BTreeMap<String, (String, Option<String>)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("{LABEL_WORKLOAD}={workload}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let device = p.labels().get(LABEL_DEVICE).cloned().unwrap_or_default();
            (p.name_any(), (device, pinned_node(p).map(str::to_owned)))
        })
        .collect())
}

/// Whether the cluster holds exactly the Pods and allocations the plan computes from its objects.
async fn matches_plan(client: &Client, names: &[&str], grace: Duration) -> Result<bool> {
    let workloads: Vec<WasmWorkload> = Api::<WasmWorkload>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items;
    let devices: Vec<Device> = Api::<Device>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|d| names.contains(&d.name_any().as_str()))
        .collect();
    let planned = plan(
        &workloads,
        &devices,
        PlanOptions {
            now: Timestamp::now(),
            grace,
        },
    );
    for d in &devices {
        if planned
            .allocations
            .get(&d.name_any())
            .map(Vec::as_slice)
            .unwrap_or_default()
            != d.allocations()
        {
            return Ok(false);
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for w in &workloads {
        let want: BTreeSet<String> = planned.workloads[&w.key()]
            .placements
            .iter()
            .map(|p| pod_name(&w.name_any(), &p.id))
            .collect();
        let have: BTreeSet<String> = pods_of(&pods, &w.name_any()).await?.into_keys().collect();
        if want != have {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn ready_condition(
    api: &Api<WasmWorkload>,
    name: &str,
) -> Result<Option<(String, String, String)>> {
    let w = api.get(name).await?;
    Ok(w.status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status, c.reason, c.message)))
}

async fn set_presence(devices: &Api<Device>, name: &str, present: bool) -> Result<()> {
    let nodes: Vec<&str> = if present { vec!["edge-a"] } else { vec![] };
    devices
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodes": nodes}})),
        )
        .await?;
    let condition = json!({
        "type": "Present",
        "status": if present { "True" } else { "False" },
        "reason": if present { "Seen" } else { "NotSeen" },
        "message": "",
        "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    devices
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [condition]}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn competing_workloads_get_what_the_plan_says_and_absent_devices_are_released() -> Result<()>
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_operator=debug,kube_runtime=debug,kube_client=info")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_with_crds().await?;
    let client = cluster.client().await?;
    let devices: Api<Device> = Api::all(client.clone());
    let workloads: Api<WasmWorkload> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    let (client, devices, workloads, pods) = (&client, &devices, &workloads, &pods);
    let names = ["scenario-cam-1", "scenario-cam-2", "scenario-cam-3"];
    for name in names {
        devices
            .create(&PostParams::default(), &device(name, HANDLER))
            .await?;
    }
    // No wait for readiness: GitOps applies workloads while the operator rolls out
    // (tests/startup.rs covers that race on its own).
    let _operator = Operator::start(
        client.clone(),
        Config {
            device_grace_period: GRACE,
            ..Config::default()
        },
    );
    workloads
        .create(&PostParams::default(), &workload("winner", 10))
        .await?;
    workloads
        .create(&PostParams::default(), &workload("loser", 0))
        .await?;

    // The higher-priority workload gets all three devices; the other waits, and says why.
    eventually(
        "the winner runs on all three devices",
        TIMEOUT,
        || async move {
            Ok(pods_of(pods, "winner").await?.len() == 3
                && matches_plan(client, &names, GRACE).await?)
        },
    )
    .await?;
    let winner_pods = pods_of(pods, "winner").await?;
    for name in names {
        assert_eq!(
            winner_pods[&pod_name("winner", name)],
            (name.to_owned(), Some("edge-a".to_owned()))
        );
        let d = devices.get(name).await?;
        assert_eq!(d.allocations().len(), 1);
        assert_eq!(d.allocations()[0].workload, format!("{NS}/winner"));
    }
    assert!(pods_of(pods, "loser").await?.is_empty());
    eventually(
        "the loser's status explains the wait",
        TIMEOUT,
        || async move {
            Ok(ready_condition(workloads, "loser")
                .await?
                .is_some_and(|(s, reason, msg)| {
                    s == "False"
                        && reason == "CapacityExhausted"
                        && msg.contains(&format!("{NS}/winner"))
                }))
        },
    )
    .await?;
    let loser = workloads.get("loser").await?.status.unwrap_or_default();
    assert_eq!(loser.matched_devices, 3);
    assert_eq!(loser.placements.len(), 3);
    assert!(
        loser.placements.iter().all(|p| p.phase == "Waiting"),
        "{:?}",
        loser.placements
    );

    // A device gone past the grace period loses its Pod and its allocation.
    let gone = names[2];
    let gone_at = Instant::now();
    set_presence(devices, gone, false).await?;
    eventually(
        "the absent device's Pod is removed and its allocation released",
        TIMEOUT,
        || async move {
            Ok(!pods_of(pods, "winner")
                .await?
                .contains_key(&pod_name("winner", gone))
                && devices.get(gone).await?.allocations().is_empty())
        },
    )
    .await?;
    assert!(
        gone_at.elapsed() >= GRACE,
        "removed after {:?}, before the {GRACE:?} grace period",
        gone_at.elapsed()
    );
    assert_eq!(pods_of(pods, "winner").await?.len(), 2);
    assert!(matches_plan(client, &names, GRACE).await?);

    // It comes back: its placement returns.
    set_presence(devices, gone, true).await?;
    eventually(
        "the returning device gets its placement again",
        TIMEOUT,
        || async move {
            Ok(pods_of(pods, "winner").await?.len() == 3
                && matches_plan(client, &names, GRACE).await?)
        },
    )
    .await?;

    // Deleting the winner releases its allocations (finalizer); the loser takes the devices.
    workloads.delete("winner", &DeleteParams::default()).await?;
    eventually(
        "the loser takes over the released devices",
        TIMEOUT,
        || async move {
            Ok(workloads.get_opt("winner").await?.is_none()
                && pods_of(pods, "loser").await?.len() == 3
                && matches_plan(client, &names, GRACE).await?)
        },
    )
    .await?;
    eventually("the loser becomes ready to run", TIMEOUT, || async move {
        Ok(ready_condition(workloads, "loser")
            .await?
            .is_some_and(|(_, reason, _)| reason == "PodPending"))
    })
    .await?;

    workloads.delete("loser", &DeleteParams::default()).await?;
    eventually(
        "the loser is gone and every allocation released",
        TIMEOUT,
        || async move {
            let mut released = true;
            for name in names {
                released &= devices.get(name).await?.allocations().is_empty();
            }
            Ok(released && workloads.get_opt("loser").await?.is_none())
        },
    )
    .await?;
    for name in names {
        devices.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}
