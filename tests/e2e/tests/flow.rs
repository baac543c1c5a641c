//! The whole flow against real parts: static device → agent → Device CR → operator → Pod → test kubelet
//! → containerd → shim → the component's output in the container log → workload Ready; and the device
//! going away → Present=False → after the grace period the Pod is deleted and the allocation released.

use std::time::{Duration, Instant};

use anyhow::Result;
use edgewasm_e2e::{NODE, Stack, WAIT, sensor_workload};
use edgewasm_testkit::cluster::eventually;
use kube::api::ListParams;

const GRACE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_to_running_component_and_back() -> Result<()> {
    let stack = Stack::start_with_sensors(&["sensor0"], GRACE).await?;
    stack.apply_workload(&sensor_workload("logger", 0)).await?;

    let pod = stack.wait_for_readings("logger", 1).await?.remove(0);
    assert!(
        stack.app_log(&pod).contains("\"value\":21.5"),
        "{}",
        stack.app_log(&pod)
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("edgewasm"));
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let grants =
        pod.metadata.annotations.as_ref().unwrap()[edgewasm_api::GRANTS_ANNOTATION].clone();
    assert!(
        grants.contains(&stack.sensor_dir("sensor0").display().to_string()),
        "{grants}"
    );
    stack
        .wait_for_condition("logger", "Ready", "True", "AllPlacementsReady")
        .await?;

    // The device goes away: Present=False at once, the Pod stays through the grace period, then goes.
    let gone_at = Instant::now();
    stack.write_sensors(&[])?;
    let devices = stack.devices();
    eventually("the device is marked absent", WAIT, || {
        let devices = devices.clone();
        async move {
            Ok(devices
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|d| !d.is_present()))
        }
    })
    .await?;
    eventually(
        "the pod is removed after the grace period",
        WAIT,
        || async { Ok(stack.pods_of("logger").await?.is_empty()) },
    )
    .await?;
    // The agent records whole seconds, so the grace period may end up to a second early.
    assert!(
        gone_at.elapsed() + Duration::from_secs(1) >= GRACE,
        "the Pod was removed {:?} after its device went, inside the {GRACE:?} grace period",
        gone_at.elapsed()
    );
    eventually("the allocation is released", WAIT, || {
        let devices = devices.clone();
        async move {
            Ok(devices
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|d| d.allocations().is_empty()))
        }
    })
    .await?;
    stack
        .wait_for_condition("logger", "Ready", "False", "NoMatchingDevices")
        .await?;

    stack.shutdown().await;
    Ok(())
}
