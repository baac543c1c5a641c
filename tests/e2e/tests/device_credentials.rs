//! A workload's device credentials Secret, end to end: the operator mounts it into the Pod, the test
//! kubelet materializes it, and the shim reads it. Missing, the Secret keeps the Pod in
//! ContainerCreating with kubelet's mount message; without its password, the shim's refusal reaches
//! the workload's conditions and a Warning Event without a reconcile loop; once fixed, the same Pod
//! runs the component.

use anyhow::{Context as _, Result};
use edgewasm_e2e::{NS, Stack, WAIT, condition, sensor_workload};
use edgewasm_testkit::cluster::eventually;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::time::Duration;

const SECRET: &str = "sensor-login";
/// The shim's words for a Secret without its password (shim/src/service.rs, runtime's I/O error).
const SHIM_SAYS: &str = "device credentials Secret";

/// Writes the Secret with the given `stringData` (server-side apply, so keys can be added later).
async fn apply_secret(stack: &Stack, string_data: serde_json::Value) -> Result<()> {
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS},
        "type": "kubernetes.io/basic-auth",
        "stringData": string_data,
    });
    Api::<Secret>::namespaced(stack.client.clone(), NS)
        .patch(
            SECRET,
            &PatchParams::apply("edgewasm-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await
        .context("applying the Secret")?;
    Ok(())
}

/// Waits until the workload's Ready condition is False for `reason` with a message holding `text`.
async fn wait_for_ready_message(stack: &Stack, reason: &str, text: &str) -> Result<String> {
    let workloads = stack.workloads();
    let what = format!("Ready=False ({reason}) saying {text:?}");
    eventually(&what, WAIT, || {
        let workloads = workloads.clone();
        async move {
            let w = workloads.get("camera").await?;
            Ok(condition(&w, "Ready")
                .is_some_and(|c| c.0 == "False" && c.1 == reason && c.2.contains(text)))
        }
    })
    .await
    .map_err(|e| e.context(stack.diagnostics()))?;
    let w = stack.workloads().get("camera").await?;
    Ok(condition(&w, "Ready").context("no Ready condition")?.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_credentials_reach_the_shim_and_their_faults_reach_the_workload() -> Result<()> {
    let stack = Stack::start_with_sensors(&["sensor0"], Duration::from_secs(3)).await?;
    let mut workload = sensor_workload("camera", 0);
    workload["spec"]["deviceCredentials"] = serde_json::json!({"secretName": SECRET});
    stack.apply_workload(&workload).await?;

    // No Secret yet: the Pod waits in ContainerCreating with kubelet's FailedMount message.
    wait_for_ready_message(
        &stack,
        "PodPending",
        &format!("secret \"{SECRET}\" not found"),
    )
    .await?;

    // A Secret without its password: the shim refuses the container, saying why.
    apply_secret(&stack, serde_json::json!({"username": "admin"})).await?;
    let message = wait_for_ready_message(&stack, "PodFailed", SHIM_SAYS).await?;
    assert!(message.contains("password"), "{message}");
    eventually(
        "a Warning Event carries the shim's message",
        WAIT,
        || async {
            Ok(stack.events_of("camera").await?.iter().any(|e| {
                e.reason.as_deref() == Some("PodFailed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains(SHIM_SAYS) && n.contains("password"))
            }))
        },
    )
    .await?;

    // The kubelet backs off; the operator keeps the one Pod and does not loop meanwhile.
    let pod = stack
        .pods_of("camera")
        .await?
        .pop()
        .context("no Pod for the camera workload")?;
    let reconciles_before = stack.operator_reconciles().await?;
    eventually("the kubelet has retried once more", WAIT, || async {
        let pods = stack.pods_of("camera").await?;
        Ok(pods.len() == 1 && edgewasm_e2e::restarts(&pods[0]) > edgewasm_e2e::restarts(&pod))
    })
    .await?;
    let spent = stack.operator_reconciles().await? - reconciles_before;
    assert!(
        spent < 20,
        "{spent} reconciles over one kubelet restart: the operator is looping"
    );

    // The password is added: the next restart reads it and the same Pod runs the component.
    apply_secret(
        &stack,
        serde_json::json!({"username": "admin", "password": "s3cret"}),
    )
    .await?;
    let running = stack.wait_for_readings("camera", 1).await?.remove(0);
    assert_eq!(
        running.metadata.uid, pod.metadata.uid,
        "the operator did not recreate the Pod"
    );
    stack
        .wait_for_condition("camera", "Ready", "True", "AllPlacementsReady")
        .await?;

    // The Pod's materialized Secret goes with it.
    let uid = running.metadata.uid.clone().unwrap_or_default();
    let volumes = stack.dir.path().join("kubelet/volumes").join(&uid);
    assert!(
        volumes
            .join("kubernetes.io~secret/device-credentials/password")
            .is_file(),
        "{} holds no password",
        volumes.display()
    );
    stack
        .workloads()
        .delete("camera", &DeleteParams::default())
        .await?;
    eventually("the Pod and its volumes are gone", WAIT, || async {
        Ok(stack.pods_of("camera").await?.is_empty() && !volumes.exists())
    })
    .await?;

    stack.shutdown().await;
    Ok(())
}
