//! The `WasmWorkload` custom resource: "run this Wasm component next to every device matching X".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::grants::{NetworkGrant, PathGrant};
use crate::selector::DeviceSelector;

/// Desired state of a `WasmWorkload`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "edgewasm.io",
    version = "v1alpha1",
    kind = "WasmWorkload",
    namespaced,
    shortname = "ww",
    status = "WasmWorkloadStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Placement","type":"string","jsonPath":".spec.placement.mode"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedDevices"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyPlacements"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("(has(self.spec.placement) && self.spec.placement.mode == 'count') || has(self.spec.deviceSelector)")
        .message("spec.deviceSelector is required unless spec.placement.mode is count")
)]
#[serde(rename_all = "camelCase")]
pub struct WasmWorkloadSpec {
    /// OCI image reference of the Wasm component or module (its layer holds the `.wasm`). In standalone
    /// mode a path to a `.wasm` file, relative to the manifest, is accepted too.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Which devices this workload runs next to. Required unless `placement.mode` is `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_selector: Option<DeviceSelector>,
    /// How many instances, and where.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// Arguments passed to the component (after the program name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in addition to the matched device's `EDGEWASM_DEVICE_*` variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Memory and CPU limits enforced by the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// What the component may reach beyond its matched device. Default: only the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<WorkloadGrants>,
    /// Extra node labels the Pod must match (on top of the device's node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for edge-node taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Higher priority wins a device whose capacity is exhausted, and may take it from lower ones.
    #[serde(default)]
    pub priority: i32,
    /// What happens when an instance exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Credentials the runtime uses to talk to the matched device (an ONVIF camera's media service and
    /// snapshots). The component never sees them: only the host's `edgewasm:device` camera does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_credentials: Option<DeviceCredentials>,
}

/// Where a workload's device credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentials {
    /// A Secret in the workload's namespace with `username` and `password` keys (type
    /// `kubernetes.io/basic-auth` fits). In standalone mode: the folder `secrets/<name>/` beside the
    /// manifests, holding the files `username` and `password`.
    #[schemars(length(min = 1), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

/// One environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVar {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// How a workload's instances are laid out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.mode != 'count' || has(self.replicas)", "message": "placement.replicas is required when mode is count"},
    {"rule": "self.mode == 'count' || !has(self.replicas)", "message": "placement.replicas is only valid when mode is count"}
]))]
pub struct PlacementSpec {
    #[serde(default)]
    pub mode: PlacementMode,
    /// Number of instances in `count` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<u32>,
}

/// `perDevice`: one instance per matching device. `perNode`: one instance per node that has matching
/// devices, granted all of them. `count`: a fixed number of instances, each bound to a matching device
/// when a selector is given.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum PlacementMode {
    #[default]
    PerDevice,
    PerNode,
    Count,
}

/// Limits the runtime enforces on each instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit as a Kubernetes quantity (`64Mi`, `1G`): linear memories and tables together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: Option<String>,
    /// CPU limit as a Kubernetes quantity (`500m`, `1`): enforced by time slicing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,
    /// Wall-clock limit for one run, in seconds; the instance is killed when it is exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
}

/// What a workload may reach beyond its matched device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadGrants {
    /// Extra host paths, always read-only whatever `access` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathGrant>,
    /// Extra network peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetworkGrant>,
    /// Serve a `wasi:http/proxy` component on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: Option<u16>,
}

/// When an instance that exited is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Observed state of a `WasmWorkload`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmWorkloadStatus {
    /// `Ready`, `Progressing` and `Degraded`, each with a reason a user can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Approved, present devices the selector matches.
    #[serde(default)]
    pub matched_devices: u32,
    /// Placements whose instance is running (or finished successfully).
    #[serde(default)]
    pub ready_placements: u32,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per desired or waiting placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<PlacementStatus>,
}

/// Where one instance runs and how it is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// Stable placement id (the device name for `perDevice`, the node for `perNode`, an index for `count`).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Waiting` (no capacity), `DeviceAbsent`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl WasmWorkload {
    /// `namespace/name`, the key used in device allocations.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}
