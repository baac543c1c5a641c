//! The edgewasm discovery agent: finds devices on its node and publishes them as Device resources.
//!
//! Each discovery method is a [`Handler`] that sends [`DeviceEvent`]s on a channel: a device appeared
//! or changed, a device is gone, or the full set after a rescan. Handlers know nothing about
//! Kubernetes, so standalone mode uses them as a library; the agent binary feeds the events to the
//! publisher, which writes `Device` resources.

pub mod agent;
pub mod config;
pub mod metrics;
pub mod onvif;
pub mod onvif_info;
pub mod opcua;
pub mod publisher;
pub mod static_file;
pub mod udev;
pub mod wsdiscovery;

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, Approval};

/// One device as a handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredDevice {
    /// Handler that found it: `udev`, `onvif`, `opcua`, `static`.
    pub handler: String,
    /// What makes the device the same device across restarts and nodes (serial and port path, endpoint
    /// reference, application URI, static id).
    pub identity: String,
    /// Handler-specific facts with the camelCase keys the operator maps to grants (`devnode`,
    /// `syspath`, `ip`, `xaddrs`, `endpointUrl`, ...).
    pub properties: BTreeMap<String, String>,
    /// Whether the device answers as expected.
    pub healthy: bool,
}

impl DiscoveredDevice {
    /// A healthy device with no properties yet.
    pub fn new(handler: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            handler: handler.into(),
            identity: identity.into(),
            properties: BTreeMap::new(),
            healthy: true,
        }
    }

    /// The `Device` resource name: stable for the same handler and identity.
    pub fn name(&self) -> String {
        edgewasm_api::device_name(&self.handler, &self.identity)
    }
}

/// What a handler reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A device appeared or its properties or health changed.
    Seen(DiscoveredDevice),
    /// A device is no longer reachable from this node.
    Gone { handler: String, identity: String },
    /// The complete set of devices after a (re)scan: anything of this handler not listed is gone.
    Resync {
        handler: String,
        devices: Vec<DiscoveredDevice>,
    },
}

impl DeviceEvent {
    /// The handler the event comes from.
    pub fn handler(&self) -> &str {
        match self {
            Self::Seen(d) => &d.handler,
            Self::Gone { handler, .. } | Self::Resync { handler, .. } => handler,
        }
    }
}

/// A discovery method. `run` reports devices until `shutdown` is cancelled; it returns an error only
/// when it cannot work at all (its input is unusable), never for one bad packet or file.
#[async_trait]
pub trait Handler: Send {
    /// The handler name devices carry (`udev`, `onvif`, `opcua`, `static`).
    fn name(&self) -> &str;
    /// Discover until cancelled, starting with a `Resync` of the initial scan.
    async fn run(
        self: Box<Self>,
        events: Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>;
}

/// The handlers the configuration enables, in a stable order.
pub fn build_handlers(cfg: &AgentConfig, node: &str) -> anyhow::Result<Vec<Box<dyn Handler>>> {
    let mut handlers: Vec<Box<dyn Handler>> = Vec::new();
    if let Some(c) = cfg.handlers.static_.as_ref().filter(|c| c.enabled) {
        handlers.push(Box::new(static_file::StaticHandler::new(c.file.clone())));
    }
    if let Some(c) = cfg.handlers.udev.as_ref().filter(|c| c.enabled) {
        handlers.push(Box::new(udev::UdevHandler::new(c.clone())));
    }
    if let Some(c) = cfg.handlers.onvif.as_ref().filter(|c| c.enabled) {
        handlers.push(Box::new(onvif::OnvifHandler::new(c.clone())));
    }
    if let Some(c) = cfg.handlers.opcua.as_ref().filter(|c| c.enabled) {
        handlers.push(Box::new(crate::opcua::OpcuaHandler::new(c.clone())));
    }
    tracing::debug!(node, count = handlers.len(), "handlers built");
    Ok(handlers)
}
