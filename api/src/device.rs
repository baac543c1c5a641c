//! The `Device` custom resource: one camera, sensor or server found by a discovery handler.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Condition type: the device is reachable from at least one node.
pub const CONDITION_PRESENT: &str = "Present";
/// Condition type: the device answers as expected (handler-specific health check).
pub const CONDITION_HEALTHY: &str = "Healthy";

/// Desired state of a `Device`, written by the discovery agents (and by people, for `approved`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "edgewasm.io",
    version = "v1alpha1",
    kind = "Device",
    shortname = "dev",
    status = "DeviceStatus",
    printcolumn = r#"{"name":"Handler","type":"string","jsonPath":".spec.handler"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".spec.nodes"}"#,
    printcolumn = r#"{"name":"Approved","type":"boolean","jsonPath":".spec.approved"}"#,
    printcolumn = r#"{"name":"Present","type":"string","jsonPath":".status.conditions[?(@.type==\"Present\")].status"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".spec.capacity"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Discovery handler that found the device: `udev`, `onvif`, `opcua`, `static`, ...
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub handler: String,
    /// Nodes the device is reachable from. Each agent owns its own entry (server-side apply), so a
    /// network camera seen by several nodes is one Device with several nodes.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub nodes: Vec<String>,
    /// What the handler knows about the device: `devnode`, `vendorId`, `productId`, `xaddrs`, `ip`,
    /// `mac`, `manufacturer`, `model`, `serial`, `endpointUrl`, ...
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How many placements may use the device at the same time.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 1000))]
    pub capacity: u32,
    /// Only approved devices are matched. The agent sets it for handlers whose policy is `auto`;
    /// for `manual` a person approves (`kubectl patch device NAME --type merge -p '{"spec":{"approved":true}}'`).
    #[serde(default)]
    pub approved: bool,
}

fn default_capacity() -> u32 {
    1
}

/// Observed state of a `Device`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// `Present` and `Healthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When an agent last saw the device (updated on change, and at most every few minutes otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Placements currently using the device; never more than `spec.capacity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
}

/// One placement holding a share of a device's capacity.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// `namespace/name` of the WasmWorkload.
    pub workload: String,
    /// Placement id within the workload.
    pub placement: String,
    /// Node the placement runs on, so a device seen from several nodes keeps its instance where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The stable resource name of a device: the handler plus a hash of its identity (a USB serial and
/// port path, an ONVIF endpoint reference, an OPC UA application URI), so the same camera gets the same
/// name after an agent restart and on every node that sees it.
pub fn device_name(handler: &str, identity: &str) -> String {
    let digest = Sha256::digest(format!("{handler}\0{identity}").as_bytes());
    let handler: String = handler
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "{}-{}",
        handler.trim_matches('-'),
        &hex::encode(digest)[..16]
    )
}

impl Device {
    /// The status of a condition type, if the device carries it.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// A device is present while some node reaches it and no agent has marked it absent.
    pub fn is_present(&self) -> bool {
        !self.spec.nodes.is_empty()
            && self
                .condition(CONDITION_PRESENT)
                .is_none_or(|c| c.status != "False")
    }

    /// Since when the device has been absent, if it is absent and the time is known.
    pub fn absent_since(&self) -> Option<&Time> {
        if self.is_present() {
            return None;
        }
        self.condition(CONDITION_PRESENT)
            .filter(|c| c.status == "False")
            .map(|c| &c.last_transition_time)
    }

    /// The allocations recorded in the device's status.
    pub fn allocations(&self) -> &[Allocation] {
        self.status.as_ref().map_or(&[], |s| &s.allocations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_stable_and_valid() {
        let a = device_name("onvif", "urn:uuid:1234");
        assert_eq!(a, device_name("onvif", "urn:uuid:1234"));
        assert_ne!(a, device_name("onvif", "urn:uuid:1235"));
        assert_ne!(a, device_name("udev", "urn:uuid:1234"));
        assert!(a.starts_with("onvif-"));
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(device_name("My_Handler", "x").starts_with("my-handler-"));
    }
}
