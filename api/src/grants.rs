//! What one instance may reach: the `edgewasm.io/grants` annotation the operator writes and the runtime enforces.
//!
//! A grant is an allowlist. Nothing outside it is visible to the component: no host or image files, no
//! network, no other device. The same JSON travels from the operator (Pod annotation) or standalone mode
//! to the shim and the runtime, so both paths give exactly the same privileges.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Name of the Pod annotation that carries a JSON-encoded [`Grants`].
pub const GRANTS_ANNOTATION: &str = "edgewasm.io/grants";

/// Everything one instance of a component may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// The device this instance was matched to, if any (informational for the host; the
    /// device's reachable resources are listed in `paths` and `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<GrantedDevice>,
    /// Host files or directories visible to the guest, each at its own guest path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathGrant>,
    /// Network peers the guest may connect to (TCP/UDP through wasi:sockets, HTTP through wasi:http).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetworkGrant>,
    /// A TCP port a `wasi:http/proxy` component is served on (in the instance's network namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
}

/// The device an instance is bound to, as the operator or standalone mode matched it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantedDevice {
    /// `Device` resource name.
    pub name: String,
    /// Discovery handler that found it (`udev`, `onvif`, `opcua`, `static`, ...).
    pub handler: String,
    /// The device's properties at the time of placement.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Whether a granted path may be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    #[default]
    ReadOnly,
    ReadWrite,
}

/// One host path made visible to the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathGrant {
    /// Absolute path on the host (a device node such as `/dev/video0`, a file, or a directory).
    pub host: String,
    /// Absolute path the guest sees; defaults to the host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    #[serde(default)]
    pub access: Access,
}

impl PathGrant {
    /// The path as the guest sees it.
    pub fn guest_path(&self) -> &str {
        self.guest.as_deref().unwrap_or(&self.host)
    }
}

/// Transport a network grant applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Any,
}

/// One network peer the guest may connect to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkGrant {
    /// An IP address (`192.0.2.10`, `fe80::1`), a CIDR block (`192.0.2.0/24`) or a DNS name.
    pub host: String,
    /// Allowed destination port; all ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl Grants {
    /// Parses the annotation value; an absent annotation means "nothing granted".
    pub fn from_annotation(value: Option<&str>) -> Result<Self, serde_json::Error> {
        match value {
            None => Ok(Self::default()),
            Some(v) => serde_json::from_str(v),
        }
    }

    /// The annotation value for these grants (stable field order, so Pods do not churn).
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("grants always serialize")
    }
}
