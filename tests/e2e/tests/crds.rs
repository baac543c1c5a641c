//! The generated CRDs in the real CRD apiserver: the example manifests are accepted, and bad objects
//! are rejected with the schema's own message (what `kubectl apply` shows a user).

use std::path::Path;

use anyhow::Result;
use edgewasm_testkit::cluster::Cluster;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

fn api(client: &kube::Client, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("edgewasm.io", "v1alpha1", kind));
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn apply(client: &kube::Client, doc: &serde_json::Value) -> Result<(), kube::Error> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let ns = (kind == "WasmWorkload")
        .then(|| doc["metadata"]["namespace"].as_str().unwrap_or("default"));
    api(client, kind, ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(doc))
        .await
        .map(drop)
}

fn rejection(result: Result<(), kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("expected the apiserver to reject the object, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_apply_and_bad_objects_are_rejected_with_the_schema_message() -> Result<()> {
    let cluster = Cluster::start().await?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    cluster.apply_crds(&root.join("crds")).await?;
    let client = cluster.client().await?;

    let mut applied = 0;
    for entry in std::fs::read_dir(root.join("examples/manifests"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            apply(&client, &value)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            applied += 1;
        }
    }
    assert!(
        applied >= 3,
        "the examples hold at least three objects, applied {applied}"
    );

    let workload = |spec: serde_json::Value| {
        serde_json::json!({"apiVersion": "edgewasm.io/v1alpha1", "kind": "WasmWorkload",
            "metadata": {"name": "bad", "namespace": "default"}, "spec": spec})
    };
    let msg = rejection(apply(&client, &workload(serde_json::json!({"image": "x", "deviceSelector": {}, "placement": {"mode": "sideways"}}))).await);
    assert!(
        msg.contains("sideways") && msg.contains("perDevice"),
        "{msg}"
    );
    let msg = rejection(
        apply(
            &client,
            &workload(serde_json::json!({"image": "x", "placement": {"mode": "count"}})),
        )
        .await,
    );
    assert!(
        msg.contains("placement.replicas is required when mode is count"),
        "{msg}"
    );
    let msg = rejection(apply(&client, &workload(serde_json::json!({"image": "x"}))).await);
    assert!(msg.contains("spec.deviceSelector is required"), "{msg}");
    let msg = rejection(apply(&client, &workload(serde_json::json!({"image": "x", "deviceSelector": {}, "resources": {"memory": "lots"}}))).await);
    assert!(msg.contains("spec.resources.memory"), "{msg}");

    let device = serde_json::json!({"apiVersion": "edgewasm.io/v1alpha1", "kind": "Device",
        "metadata": {"name": "bad-device"}, "spec": {"handler": "static", "capacity": -1}});
    let msg = rejection(apply(&client, &device).await);
    assert!(msg.contains("spec.capacity"), "{msg}");
    Ok(())
}
