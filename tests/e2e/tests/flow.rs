//! The whole flow against real parts: static device → agent → Device CR → operator → Pod → test kubelet
//! → containerd → shim → the component's output in the container log → workload Ready; and the device
//! going away → Present=False → after the grace period the Pod is deleted and the allocation released.

use std::time::Duration;

use anyhow::Result;
use edgewasm_api::{Device, WasmWorkload};
use edgewasm_e2e::{NODE, Stack, example_wasm};
use edgewasm_testkit::cluster::eventually;
use edgewasm_testkit::kubelet::container_log;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

const IMAGE: &str = "registry.edgewasm.test/sensor-logger:e2e";
const WAIT: Duration = Duration::from_secs(90);

fn devices_yaml(dir: &std::path::Path, present: bool) -> String {
    if !present {
        return "devices: []\n".into();
    }
    format!(
        "devices:\n  - id: sensor0\n    properties:\n      kind: temperature\n      devnode: {}\n",
        dir.join("sensor0").display()
    )
}

fn workload(sensor_dir: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "edgewasm.io/v1alpha1", "kind": "WasmWorkload",
        "metadata": {"name": "logger", "namespace": "default"},
        "spec": {
            "image": IMAGE,
            "deviceSelector": {"handler": "static", "properties": {"kind": "temperature"}},
            "env": [
                {"name": "SENSOR_PATH", "value": sensor_dir.join("temp").display().to_string()},
                {"name": "SAMPLES", "value": "0"},
                {"name": "INTERVAL_MS", "value": "200"}
            ],
            "resources": {"memory": "32Mi", "cpu": "250m"},
            "restartPolicy": "Always"
        }
    })
}

fn condition(w: &WasmWorkload, type_: &str) -> Option<(String, String, String)> {
    let c = w
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_to_running_component_and_back() -> Result<()> {
    let mut stack = Stack::start().await?;
    let sensor = stack.dir.path().join("sensor0");
    std::fs::create_dir_all(&sensor)?;
    std::fs::write(sensor.join("temp"), "21500\n")?;
    let devices_file = stack.dir.path().join("devices.yaml");
    std::fs::write(&devices_file, devices_yaml(stack.dir.path(), true))?;
    stack.import_wasm_image(IMAGE, example_wasm("sensor-logger.wasm")?)?;
    stack.start_agent(&format!(
        "handlers:\n  static:\n    enabled: true\n    file: {}\n    approval: auto\n",
        devices_file.display()
    ))?;
    stack.start_operator(Duration::from_secs(3))?;

    let client = stack.client.clone();
    let devices: Api<Device> = Api::all(client.clone());
    let workloads: Api<WasmWorkload> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    eventually("the agent publishes the static device", WAIT, || {
        let devices = devices.clone();
        async move {
            let list = devices.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|d| d.spec.nodes == [NODE] && d.is_present() && d.spec.approved))
        }
    })
    .await
    .map_err(|e| e.context(stack.log_of("edgewasm-agent")))?;

    workloads
        .patch(
            "logger",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(workload(&sensor)),
        )
        .await?;

    eventually("the component runs and logs readings", WAIT, || {
        let pods = pods.clone();
        let log_root = stack.kubelet.as_ref().unwrap().log_root();
        async move {
            let list = pods
                .list(&ListParams::default().labels("edgewasm.io/workload=logger"))
                .await?;
            let Some(pod) = list.items.first() else {
                return Ok(false);
            };
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            Ok(running && container_log(&log_root, pod, "app").contains("21500"))
        }
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "{}\n{}",
            stack.log_of("edgewasm-operator"),
            stack.log_of("edgewasm-agent")
        ))
    })?;

    let pod = pods
        .list(&ListParams::default().labels("edgewasm.io/workload=logger"))
        .await?
        .items
        .remove(0);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("edgewasm"));
    assert_eq!(spec.node_name.as_deref().or(Some(NODE)), Some(NODE));
    let grants =
        pod.metadata.annotations.as_ref().unwrap()[edgewasm_api::GRANTS_ANNOTATION].clone();
    assert!(grants.contains(&sensor.display().to_string()), "{grants}");

    eventually("the workload is Ready", WAIT, || {
        let workloads = workloads.clone();
        async move {
            let w = workloads.get("logger").await?;
            Ok(condition(&w, "Ready").is_some_and(|c| c.0 == "True"))
        }
    })
    .await?;

    // The device goes away: Present=False at once, the Pod stays through the grace period, then goes.
    std::fs::write(&devices_file, devices_yaml(stack.dir.path(), false))?;
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
    eventually("the pod is removed after the grace period", WAIT, || {
        let pods = pods.clone();
        async move {
            Ok(pods
                .list(&ListParams::default().labels("edgewasm.io/workload=logger"))
                .await?
                .items
                .is_empty())
        }
    })
    .await?;
    eventually(
        "the allocation is released and the status says why",
        WAIT,
        || {
            let (devices, workloads) = (devices.clone(), workloads.clone());
            async move {
                let released = devices
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .all(|d| d.allocations().is_empty());
                let w = workloads.get("logger").await?;
                Ok(released
                    && condition(&w, "Ready")
                        .is_some_and(|c| c.0 == "False" && c.1 == "NoMatchingDevices"))
            }
        },
    )
    .await?;

    stack.shutdown().await;
    Ok(())
}
