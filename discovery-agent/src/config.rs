//! The agent's YAML configuration (rendered by the Helm chart into a ConfigMap): which handlers run,
//! their filters and their approval policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// Whether the agent approves the devices a handler finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// The agent sets `spec.approved: true`.
    #[default]
    Auto,
    /// The agent never writes `spec.approved`, so a person's approval survives agent restarts.
    Manual,
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// Handlers by name; a missing handler is disabled.
    #[serde(default)]
    pub handlers: HandlersConfig,
}

/// One entry per known handler; an unknown handler name is an error naming the known ones.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HandlersConfig {
    #[serde(default)]
    pub udev: Option<UdevConfig>,
    #[serde(default)]
    pub onvif: Option<OnvifConfig>,
    #[serde(default)]
    pub opcua: Option<OpcuaConfig>,
    #[serde(default, rename = "static")]
    pub static_: Option<StaticConfig>,
}

fn yes() -> bool {
    true
}

/// Local devices from sysfs and kernel/udev events.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UdevConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Subsystems to report (`video4linux`, `tty`, `usb`, `hidraw`, `iio`, ...).
    #[serde(default = "default_subsystems")]
    pub subsystems: Vec<String>,
    /// Only devices whose USB vendor id (4 hex digits) is listed; empty means any.
    #[serde(default)]
    pub vendor_ids: Vec<String>,
    /// Only devices whose USB product id is listed; empty means any.
    #[serde(default)]
    pub product_ids: Vec<String>,
    /// Only devices whose uevent/udev properties have these values.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub approval: Approval,
    /// Root of sysfs (tests point it at a fake tree).
    #[serde(default = "default_sysfs")]
    pub sysfs_root: PathBuf,
    /// Root of the device nodes.
    #[serde(default = "default_dev")]
    pub dev_root: PathBuf,
}

fn default_subsystems() -> Vec<String> {
    ["video4linux", "tty", "hidraw", "iio"]
        .map(String::from)
        .to_vec()
}
fn default_sysfs() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_dev() -> PathBuf {
    PathBuf::from("/dev")
}

impl Default for UdevConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults deserialize")
    }
}

/// ONVIF cameras found with WS-Discovery.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OnvifConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Interface names to probe and listen on; empty means every up, multicast-capable IPv4 interface
    /// except loopback.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Ask each camera for GetDeviceInformation (manufacturer, model, firmware, serial, hardware id).
    #[serde(default = "yes")]
    pub device_information: bool,
    /// File with `username` and `password` (YAML, mounted from a Secret) for GetDeviceInformation
    /// with a WS-UsernameToken digest; without it the agent asks unauthenticated.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Only cameras announcing one of these scopes (prefix match); empty means any.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Only cameras in these CIDR ranges; empty means any.
    #[serde(default)]
    pub ip_ranges: Vec<String>,
    /// Only cameras with these MAC addresses (from the node's neighbour table); empty means any.
    #[serde(default)]
    pub macs: Vec<String>,
    /// Safety-net re-probe period; Hello/Bye announce changes in between.
    #[serde(default = "default_probe_interval")]
    pub probe_interval_seconds: u64,
    #[serde(default = "manual")]
    pub approval: Approval,
}

fn default_probe_interval() -> u64 {
    300
}
fn manual() -> Approval {
    Approval::Manual
}

impl Default for OnvifConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults deserialize")
    }
}

/// OPC UA servers listed by discovery servers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpcuaConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `opc.tcp://host:port` URLs to call FindServers / GetEndpoints on.
    #[serde(default)]
    pub discovery_urls: Vec<String>,
    /// Seconds between FindServers rounds (OPC UA has no announcements without an LDS-ME).
    #[serde(default = "default_opcua_interval")]
    pub interval_seconds: u64,
    #[serde(default)]
    pub approval: Approval,
}

fn default_opcua_interval() -> u64 {
    60
}

/// Devices listed in a file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// YAML or JSON file: a list of `{id, properties, healthy}` or `{devices: [...]}`.
    pub file: PathBuf,
    #[serde(default)]
    pub approval: Approval,
}

impl AgentConfig {
    /// Read and validate a configuration file.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("agent config {}", path.display()))
    }

    /// Parse a configuration from YAML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let cfg: Self = serde_yaml::from_str(text).context("invalid configuration")?;
        if let Some(onvif) = &cfg.handlers.onvif {
            for range in &onvif.ip_ranges {
                parse_cidr(range).with_context(|| format!("handlers.onvif.ipRanges: {range:?}"))?;
            }
        }
        Ok(cfg)
    }

    /// The approval policy of a handler (its default when the handler is not configured).
    pub fn approval(&self, handler: &str) -> Approval {
        let h = &self.handlers;
        match handler {
            "udev" => h.udev.as_ref().map_or(Approval::Auto, |c| c.approval),
            "onvif" => h.onvif.as_ref().map_or(Approval::Manual, |c| c.approval),
            "opcua" => h.opcua.as_ref().map_or(Approval::Auto, |c| c.approval),
            "static" => h.static_.as_ref().map_or(Approval::Auto, |c| c.approval),
            _ => Approval::Manual,
        }
    }
}

/// An IPv4 or IPv6 network in CIDR notation (a bare address is a single-host network).
pub fn parse_cidr(s: &str) -> anyhow::Result<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().context("not an IP address")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().context("bad prefix length")?,
        None => max,
    };
    anyhow::ensure!(len <= max, "prefix length {len} exceeds {max}");
    Ok((addr, len))
}

/// Whether `ip` lies in the network `(net, len)`.
pub fn cidr_contains((net, len): (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_chart_format() {
        let cfg = AgentConfig::parse(
            r"
handlers:
  udev: {enabled: true, subsystems: [video4linux, tty], vendorIds: ['046d'], productIds: [], properties: {ID_BUS: usb}, approval: auto}
  onvif: {enabled: true, interfaces: [eth0], credentialsFile: /etc/edgewasm/onvif/creds, scopes: [], ipRanges: [10.0.0.0/8], macs: [], probeIntervalSeconds: 600, approval: manual}
  opcua: {enabled: false, discoveryUrls: ['opc.tcp://plc:4840'], approval: auto}
  static: {enabled: true, file: /etc/edgewasm/static.yaml, approval: auto}
",
        )
        .unwrap();
        let udev = cfg.handlers.udev.as_ref().unwrap();
        assert_eq!(udev.subsystems, ["video4linux", "tty"]);
        assert_eq!(udev.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(
            cfg.handlers.onvif.as_ref().unwrap().probe_interval_seconds,
            600
        );
        assert_eq!(cfg.approval("onvif"), Approval::Manual);
        assert_eq!(cfg.approval("static"), Approval::Auto);
    }

    #[test]
    fn unknown_handler_is_a_clear_error() {
        let err = AgentConfig::parse("handlers:\n  usb: {enabled: true}\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown field `usb`"), "{msg}");
        assert!(msg.contains("udev"), "{msg}");
    }

    #[test]
    fn typo_in_a_field_is_an_error() {
        assert!(AgentConfig::parse("handlers:\n  static: {file: /x, aproval: auto}\n").is_err());
        assert!(AgentConfig::parse("handlers:\n  onvif: {ipRanges: [nonsense]}\n").is_err());
    }

    #[test]
    fn defaults() {
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
        let cfg = AgentConfig::parse("handlers:\n  onvif: {}\n").unwrap();
        assert_eq!(cfg.handlers.onvif.unwrap().approval, Approval::Manual);
    }

    #[test]
    fn cidr() {
        let net = parse_cidr("192.168.1.0/24").unwrap();
        assert!(cidr_contains(net, "192.168.1.77".parse().unwrap()));
        assert!(!cidr_contains(net, "192.168.2.1".parse().unwrap()));
        assert!(cidr_contains(
            parse_cidr("0.0.0.0/0").unwrap(),
            "8.8.8.8".parse().unwrap()
        ));
        assert!(cidr_contains(
            parse_cidr("10.1.2.3").unwrap(),
            "10.1.2.3".parse().unwrap()
        ));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }
}
