//! Labels the installer's own node once the runtime is in place, so the RuntimeClass's node
//! selector schedules Wasm Pods there.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// The field manager that owns the label, so an uninstall can find and drop it.
pub const FIELD_MANAGER: &str = "edgewasm-node-installer";

/// The server-side apply body that sets exactly one label on `node`.
pub fn label_patch(node: &str, key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node, "labels": { key: value } },
    })
}

/// Splits `key=value`.
pub fn parse_label(label: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = label
        .split_once('=')
        .with_context(|| format!("label {label:?} is not key=value"))?;
    anyhow::ensure!(!key.is_empty(), "label {label:?} has an empty key");
    Ok((key.to_owned(), value.to_owned()))
}

/// Applies the label with the in-cluster credentials, retrying until `timeout` (the API server
/// may itself be restarting when k3s was restarted on a single-node cluster).
pub async fn label_node(
    node: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let patch = label_patch(node, key, value);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    loop {
        let attempt = async {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            Api::<Node>::all(client)
                .patch(node, &params, &Patch::Apply(&patch))
                .await
                .with_context(|| format!("labelling node {node} with {key}={value}"))
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(err) => {
                tracing::warn!(
                    node,
                    error = format!("{err:#}"),
                    "labelling failed; retrying"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_names_only_the_label() {
        assert_eq!(
            label_patch("edge-1", "edgewasm.io/runtime", "true"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "edge-1", "labels": {"edgewasm.io/runtime": "true"}},
            })
        );
    }

    #[test]
    fn labels_parse_as_key_value() {
        assert_eq!(
            parse_label("edgewasm.io/runtime=true").unwrap(),
            ("edgewasm.io/runtime".into(), "true".into())
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }
}
