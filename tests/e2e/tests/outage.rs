//! The API goes away for 20 s while a workload runs, and a second sensor appears meanwhile: the agent
//! and the operator ride it out in the same processes, publish and place what changed once the API
//! is back, and nothing is duplicated — one Device per sensor, one Pod and one ledger entry per
//! placement, the running Pod untouched — and a workload created as the API returns is reconciled.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use edgewasm_api::{LABEL_PLACEMENT, LABEL_WORKLOAD};
use edgewasm_e2e::{NS, Stack, WAIT, sensor_workload};
use edgewasm_testkit::cluster::eventually;
use kube::ResourceExt;
use kube::api::ListParams;

const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_operator_recover_from_a_20s_api_outage_without_duplicates() -> Result<()> {
    // A grace period longer than the outage: a device the agent cannot vouch for meanwhile must not
    // cost its placement.
    let mut stack = Stack::start_with_sensors(&["sensor0"], Duration::from_mins(2)).await?;
    stack.apply_workload(&sensor_workload("logger", 0)).await?;
    let before = stack.wait_for_readings("logger", 1).await?;
    stack
        .wait_for_condition("logger", "Ready", "True", "AllPlacementsReady")
        .await?;
    let pids = stack.component_pids()?;

    // A sensor is plugged in while the API is down.
    stack.write_sensors(&["sensor0", "sensor1"])?;
    stack.cluster.outage(OUTAGE).await?;

    // A workload created the moment the API is back, while the operator's watches are still
    // reconnecting (and relisting), is reconciled too: it gets a status saying it waits.
    stack.apply_workload(&sensor_workload("late", -1)).await?;

    stack.wait_for_sensors(2).await?;
    let pods = stack.wait_for_readings("logger", 2).await?;
    let (_, _, message) = stack
        .wait_for_condition("logger", "Ready", "True", "AllPlacementsReady")
        .await?;
    assert!(message.starts_with("2/2"), "{message}");
    assert!(
        pods.iter()
            .any(|p| p.metadata.uid == before[0].metadata.uid),
        "the Pod that ran through the outage is kept, not recreated; events: {:?}\n{}",
        stack
            .events_of("logger")
            .await?
            .iter()
            .map(|e| format!("{:?}: {:?}", e.reason, e.note))
            .collect::<Vec<_>>(),
        stack.diagnostics()
    );

    // One ledger entry per placement, one Pod per placement, no stray Pods.
    eventually("ledger, Pods and status agree", WAIT, || async {
        let devices = stack.devices().list(&ListParams::default()).await?.items;
        let pods = stack.pods().list(&ListParams::default()).await?.items;
        let ledger: Vec<(String, String, String)> = devices
            .iter()
            .flat_map(|d| {
                d.allocations()
                    .iter()
                    .map(|a| (d.name_any(), a.workload.clone(), a.placement.clone()))
            })
            .collect();
        let placements: BTreeSet<&str> = pods
            .iter()
            .filter_map(|p| p.labels().get(LABEL_PLACEMENT).map(String::as_str))
            .collect();
        let status = stack
            .workloads()
            .get("logger")
            .await?
            .status
            .unwrap_or_default();
        Ok(devices.len() == 2
            && ledger.len() == 2
            && ledger
                .iter()
                .all(|(device, w, p)| w == &format!("{NS}/logger") && p == device)
            && pods.len() == 2
            && pods
                .iter()
                .all(|p| p.labels().get(LABEL_WORKLOAD).map(String::as_str) == Some("logger"))
            && placements.len() == 2
            && ledger
                .iter()
                .all(|(_, _, p)| placements.contains(p.as_str()))
            && status.placements.len() == 2
            && status.ready_placements == 2
            && status.placements.iter().all(|p| p.phase == "Running"))
    })
    .await
    .map_err(|e| e.context(stack.diagnostics()))?;

    let (_, _, waits) = stack
        .wait_for_condition("late", "Ready", "False", "CapacityExhausted")
        .await?;
    assert!(waits.contains(&format!("{NS}/logger")), "{waits}");
    assert!(stack.pods_of("late").await?.is_empty());

    assert_eq!(
        stack.component_pids()?,
        pids,
        "the agent and the operator recovered in place, without a restart"
    );

    stack.shutdown().await;
    Ok(())
}
