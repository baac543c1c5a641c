//! containerd restarts while an instance runs. What a user expects, as with runc containers: the
//! shim outlives containerd, so the instance keeps running — the same container (no restart
//! counted), still Running through CRI, its output still reaching the container log, served by the
//! same shim process. The workload stays Ready, and the restarted containerd can still stop the
//! instance when the workload is deleted.

use std::time::Duration;

use anyhow::{Context as _, Result};
use edgewasm_e2e::{Stack, WAIT, phase, sensor_workload};
use edgewasm_testkit::cluster::eventually;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;

/// `(containerID, restartCount, running)` of the Pod's `app` container.
fn app_state(pod: &Pod) -> Option<(String, i32, bool)> {
    let c = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "app")?;
    Some((
        c.container_id.clone()?,
        c.restart_count,
        c.state.as_ref().is_some_and(|s| s.running.is_some()),
    ))
}

/// The number of readings (`"sample":N` lines) in the Pod's log.
fn samples(stack: &Stack, pod: &Pod) -> usize {
    stack.app_log(pod).matches("\"sample\":").count()
}

/// containerd's warnings and errors (its restart and reconnecting to shims), for failure messages.
fn containerd_trouble(stack: &Stack) -> String {
    let log = std::fs::read_to_string(stack.containerd.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .take(40)
        .collect();
    format!("containerd warnings and errors:\n{}", lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_survives_a_containerd_restart() -> Result<()> {
    let mut stack = Stack::start_with_sensors(&["sensor0"], Duration::from_secs(3)).await?;
    stack.apply_workload(&sensor_workload("logger", 0)).await?;
    let pod = stack.wait_for_readings("logger", 1).await?.remove(0);
    let (container, restarts, running) = app_state(&pod).context("no container status")?;
    assert!(running && restarts == 0, "{:?}", pod.status);
    let shims = stack.containerd.shim_pids();
    assert!(!shims.is_empty(), "no shim process runs the instance");

    stack.containerd.restart().await?;
    let restarted_at = samples(&stack, &pod);

    let name = pod.metadata.name.clone().unwrap_or_default();
    eventually(
        "after the restart the same instance runs and logs, with no restart counted",
        WAIT,
        || async {
            let now = stack.pods().get(&name).await?;
            let Some((id, restarts, running)) = app_state(&now) else {
                return Ok(false);
            };
            Ok(phase(&now) == Some("Running")
                && running
                && id == container
                && restarts == 0
                && samples(&stack, &now) >= restarted_at + 3)
        },
    )
    .await
    .map_err(|e| e.context(containerd_trouble(&stack)))?;
    for pid in &shims {
        assert!(
            stack.containerd.shim_pids().contains(pid),
            "shim {pid} did not outlive containerd"
        );
    }
    stack
        .wait_for_condition("logger", "Ready", "True", "AllPlacementsReady")
        .await?;
    let status = stack
        .workloads()
        .get("logger")
        .await?
        .status
        .unwrap_or_default();
    assert_eq!(status.placements[0].phase, "Running");

    // The restarted containerd still controls the instance: deleting the workload stops it.
    stack
        .workloads()
        .delete("logger", &DeleteParams::default())
        .await?;
    eventually("the instance is stopped and its Pod gone", WAIT, || async {
        let tasks = stack
            .containerd
            .ctr(edgewasm_testkit::containerd::CRI_NAMESPACE)
            .tasks()?;
        Ok(stack.pods_of("logger").await?.is_empty()
            && !tasks
                .iter()
                .any(|(id, _, _)| *id == container.trim_start_matches("containerd://")))
    })
    .await?;

    stack.shutdown().await;
    Ok(())
}
