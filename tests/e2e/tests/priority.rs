//! Two workloads competing for one capacity-1 sensor, through the kubelet: the lower-priority one runs
//! while it is alone; the higher-priority one arrives and takes the device (the other's Pod goes, its
//! status and an Event say who holds the device); the winner is deleted and the other gets the device
//! back and runs again.

use std::time::Duration;

use anyhow::Result;
use edgewasm_e2e::{NS, Stack, WAIT, event_count, sensor_workload};
use edgewasm_testkit::cluster::eventually;
use kube::api::{DeleteParams, ListParams};

/// The workloads in the devices' allocation ledgers (each placement is named after its device).
async fn ledger(stack: &Stack) -> Result<Vec<String>> {
    let mut holders = Vec::new();
    for d in stack.devices().list(&ListParams::default()).await?.items {
        for a in d.allocations() {
            assert_eq!(Some(&a.placement), d.metadata.name.as_ref());
            holders.push(a.workload.clone());
        }
    }
    Ok(holders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_higher_priority_workload_takes_the_device_and_the_other_waits_then_resumes()
-> Result<()> {
    let stack = Stack::start_with_sensors(&["sensor0"], Duration::from_secs(3)).await?;

    // Alone, the low-priority workload gets the device.
    stack
        .apply_workload(&sensor_workload("background", 0))
        .await?;
    let first = stack.wait_for_readings("background", 1).await?;
    stack
        .wait_for_condition("background", "Ready", "True", "AllPlacementsReady")
        .await?;

    // The high-priority one arrives: it runs, the other one's Pod goes.
    stack
        .apply_workload(&sensor_workload("critical", 10))
        .await?;
    let winner = stack.wait_for_readings("critical", 1).await?;
    assert!(
        stack.app_log(&winner[0]).contains("\"value\":21.5"),
        "{}",
        stack.app_log(&winner[0])
    );
    eventually("background's Pod is removed", WAIT, || async {
        Ok(stack.pods_of("background").await?.is_empty())
    })
    .await?;
    let (_, _, message) = stack
        .wait_for_condition("background", "Ready", "False", "CapacityExhausted")
        .await?;
    assert!(
        message.contains(&format!("{NS}/critical (priority 10)")),
        "the loser's condition names who holds the device: {message}"
    );
    let status = stack
        .workloads()
        .get("background")
        .await?
        .status
        .unwrap_or_default();
    assert_eq!(status.placements.len(), 1, "{:?}", status.placements);
    assert_eq!(status.placements[0].phase, "Waiting");
    assert_eq!(status.ready_placements, 0);
    eventually(
        "an Event tells the loser's user why it waits",
        WAIT,
        || async {
            Ok(stack.events_of("background").await?.iter().any(|e| {
                e.reason.as_deref() == Some("CapacityExhausted")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| n.contains("critical"))
            }))
        },
    )
    .await?;
    assert_eq!(ledger(&stack).await?, [format!("{NS}/critical")]);

    // The winner goes away: the other one gets the device back and runs again (a new Pod).
    stack
        .workloads()
        .delete("critical", &DeleteParams::default())
        .await?;
    let resumed = stack.wait_for_readings("background", 1).await?;
    assert_ne!(resumed[0].metadata.uid, first[0].metadata.uid);
    stack
        .wait_for_condition("background", "Ready", "True", "AllPlacementsReady")
        .await?;
    eventually(
        "the ledger holds only the resumed workload",
        WAIT,
        || async {
            Ok(stack.workloads().get_opt("critical").await?.is_none()
                && stack.pods_of("critical").await?.is_empty()
                && ledger(&stack).await? == [format!("{NS}/background")])
        },
    )
    .await?;
    let created: i32 = stack
        .events_of("background")
        .await?
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Created"))
        .map(event_count)
        .sum();
    assert_eq!(created, 2, "one Pod before the preemption, one after");

    stack.shutdown().await;
    Ok(())
}
