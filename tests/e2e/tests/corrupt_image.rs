//! A corrupt image (its `.wasm` is garbage): the shim refuses it with a clear message, which reaches
//! the Pod's container status, the WasmWorkload's conditions and a Warning Event; the kubelet backs
//! off restarting it and the operator keeps the one Pod instead of recreating it in a loop.

use std::time::Duration;

use anyhow::{Context as _, Result};
use edgewasm_e2e::{Stack, WAIT, event_count, sensor_workload};
use edgewasm_testkit::cluster::eventually;

const IMAGE: &str = "registry.edgewasm.test/corrupt:e2e";
/// What the shim says about a file that is not Wasm (wasmtime's words, through CRI's StartContainer).
const SHIM_SAYS: &str = "WebAssembly";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_image_fails_with_the_shims_message_in_the_workload_status() -> Result<()> {
    let stack = Stack::start_with_sensors(&["sensor0"], Duration::from_secs(3)).await?;
    stack.import_wasm_image(IMAGE, b"this is not a wasm module, just text\n".to_vec())?;
    let mut workload = sensor_workload("broken", 0);
    workload["spec"]["image"] = IMAGE.into();
    stack.apply_workload(&workload).await?;

    let (_, _, message) = stack
        .wait_for_condition("broken", "Ready", "False", "PodFailed")
        .await?;
    assert!(
        message.contains(SHIM_SAYS),
        "the shim's message reaches the Ready condition: {message}"
    );
    let (_, _, degraded) = stack
        .wait_for_condition("broken", "Degraded", "True", "PodFailed")
        .await?;
    assert!(degraded.contains(SHIM_SAYS), "{degraded}");
    let status = stack
        .workloads()
        .get("broken")
        .await?
        .status
        .unwrap_or_default();
    assert_eq!(status.placements.len(), 1);
    assert_eq!(status.placements[0].phase, "Failed");
    eventually(
        "a Warning Event carries the shim's message",
        WAIT,
        || async {
            Ok(stack.events_of("broken").await?.iter().any(|e| {
                e.reason.as_deref() == Some("PodFailed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| n.contains(SHIM_SAYS))
            }))
        },
    )
    .await?;

    // The kubelet retries with a growing back-off; the operator leaves the Pod alone meanwhile.
    let pod = stack
        .pods_of("broken")
        .await?
        .pop()
        .context("no Pod for the broken workload")?;
    let reconciles_before = stack.operator_reconciles().await?;
    eventually("the kubelet has retried twice more", WAIT, || async {
        let pods = stack.pods_of("broken").await?;
        Ok(pods.len() == 1 && edgewasm_e2e::restarts(&pods[0]) >= edgewasm_e2e::restarts(&pod) + 2)
    })
    .await?;
    let pods = stack.pods_of("broken").await?;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0].metadata.uid, pod.metadata.uid,
        "the operator did not recreate the failing Pod"
    );
    let created: i32 = stack
        .events_of("broken")
        .await?
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Created"))
        .map(event_count)
        .sum();
    assert_eq!(created, 1, "one Pod was created, not one per failure");
    // A handful per restart (each Pod status change and the status write it causes), not a loop.
    let spent = stack.operator_reconciles().await? - reconciles_before;
    assert!(
        spent < 40,
        "{spent} reconciles over two kubelet restarts: the operator is looping"
    );

    stack.shutdown().await;
    Ok(())
}
