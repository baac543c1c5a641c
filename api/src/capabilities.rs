//! What a matched device lets an instance reach: device properties mapped to [`Grants`] and env vars.

use std::collections::BTreeMap;

use crate::device::Device;
use crate::grants::{Access, GrantedDevice, Grants, NetworkGrant, PathGrant, Protocol};
use crate::workload::WasmWorkload;

/// The grants for one placement: each device's own resources plus the workload's extra grants.
///
/// Device properties map to resources the same way for every handler, so a static device that names a
/// `devnode` gets the same grant a udev one does:
/// - `devnode` → that device node, read-write;
/// - `syspath` → that sysfs directory, read-only (IIO sensors are read there);
/// - `ip` or `host` (with `port` when given) → that peer;
/// - `xaddrs` (ONVIF service URLs), `snapshotUri` (an ONVIF camera's stills) and `endpointUrl` (OPC UA)
///   → the host and port of each URL.
///
/// The workload's extra paths are always read-only.
pub fn grants_for(workload: &WasmWorkload, devices: &[&Device]) -> Grants {
    let mut grants = Grants::default();
    for device in devices {
        let props = &device.spec.properties;
        if let Some(devnode) = props.get("devnode") {
            grants.paths.push(PathGrant {
                host: devnode.clone(),
                guest: None,
                access: Access::ReadWrite,
            });
        }
        if let Some(syspath) = props.get("syspath") {
            grants.paths.push(PathGrant {
                host: syspath.clone(),
                guest: None,
                access: Access::ReadOnly,
            });
        }
        let port = props.get("port").and_then(|p| p.parse().ok());
        for key in ["ip", "host"] {
            if let Some(host) = props.get(key) {
                grants.network.push(NetworkGrant {
                    host: host.clone(),
                    port,
                    protocol: Protocol::Any,
                });
            }
        }
        for key in ["xaddrs", "snapshotUri", "endpointUrl"] {
            for url in props
                .get(key)
                .into_iter()
                .flat_map(|v| v.split_whitespace())
            {
                if let Some((host, port)) = url_host_port(url) {
                    grants.network.push(NetworkGrant {
                        host,
                        port,
                        protocol: Protocol::Tcp,
                    });
                }
            }
        }
    }
    if let [device] = devices {
        grants.device = Some(GrantedDevice {
            name: device.metadata.name.clone().unwrap_or_default(),
            handler: device.spec.handler.clone(),
            properties: device.spec.properties.clone(),
        });
    }
    if let Some(extra) = &workload.spec.grants {
        grants.paths.extend(extra.paths.iter().map(|p| PathGrant {
            access: Access::ReadOnly,
            ..p.clone()
        }));
        grants.network.extend(extra.network.iter().cloned());
        grants.http_port = extra.http_port;
    }
    grants.network.dedup();
    grants
}

/// The environment of one placement: the workload's env, then `EDGEWASM_DEVICE_*` for its device
/// (`vendorId` → `EDGEWASM_DEVICE_VENDOR_ID`) and `EDGEWASM_DEVICES` naming all its devices.
pub fn env_for(workload: &WasmWorkload, devices: &[&Device]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = workload
        .spec
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let names: Vec<&str> = devices
        .iter()
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    if !names.is_empty() {
        env.push(("EDGEWASM_DEVICES".into(), names.join(",")));
    }
    if let [device] = devices {
        env.push((
            "EDGEWASM_DEVICE_NAME".into(),
            names.first().copied().unwrap_or_default().into(),
        ));
        env.push((
            "EDGEWASM_DEVICE_HANDLER".into(),
            device.spec.handler.clone(),
        ));
        let props: BTreeMap<String, &String> = device
            .spec
            .properties
            .iter()
            .map(|(k, v)| (env_key(k), v))
            .collect();
        env.extend(
            props
                .into_iter()
                .map(|(k, v)| (format!("EDGEWASM_DEVICE_{k}"), v.clone())),
        );
    }
    env
}

/// `vendorId` → `VENDOR_ID`, `ID_MODEL` → `ID_MODEL`, `scope.location` → `SCOPE_LOCATION`.
pub fn env_key(property: &str) -> String {
    let mut out = String::with_capacity(property.len() + 4);
    let mut prev_lower = false;
    for c in property.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        });
    }
    out
}

/// Host and port of an `http://`, `https://` or `opc.tcp://` URL; IPv6 literals keep their brackets off.
fn url_host_port(url: &str) -> Option<(String, Option<u16>)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "opc.tcp" => Some(4840),
        _ => None,
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.split('%').next().unwrap_or(host).to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceSpec;
    use crate::workload::{WasmWorkloadSpec, WorkloadGrants};

    fn device(name: &str, handler: &str, props: &[(&str, &str)]) -> Device {
        Device::new(
            name,
            DeviceSpec {
                handler: handler.into(),
                nodes: vec!["n1".into()],
                properties: props
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                capacity: 1,
                approved: true,
            },
        )
    }

    #[test]
    fn grants_per_handler_kind() {
        let w = WasmWorkload::new(
            "w",
            WasmWorkloadSpec {
                image: "x".into(),
                ..Default::default()
            },
        );
        let usb = device(
            "udev-1",
            "udev",
            &[("devnode", "/dev/video0"), ("vendorId", "046d")],
        );
        let g = grants_for(&w, &[&usb]);
        assert_eq!(
            g.paths,
            vec![PathGrant {
                host: "/dev/video0".into(),
                guest: None,
                access: Access::ReadWrite
            }]
        );
        assert!(g.network.is_empty());
        assert_eq!(g.device.as_ref().unwrap().name, "udev-1");

        let cam = device(
            "onvif-1",
            "onvif",
            &[
                ("ip", "192.0.2.7"),
                (
                    "xaddrs",
                    "http://192.0.2.7/onvif/device_service http://[fe80::1%eth0]:8080/x",
                ),
            ],
        );
        let g = grants_for(&w, &[&cam]);
        assert!(g.paths.is_empty());
        assert_eq!(
            g.network,
            vec![
                NetworkGrant {
                    host: "192.0.2.7".into(),
                    port: None,
                    protocol: Protocol::Any
                },
                NetworkGrant {
                    host: "192.0.2.7".into(),
                    port: Some(80),
                    protocol: Protocol::Tcp
                },
                NetworkGrant {
                    host: "fe80::1".into(),
                    port: Some(8080),
                    protocol: Protocol::Tcp
                },
            ]
        );

        let plc = device(
            "opcua-1",
            "opcua",
            &[("endpointUrl", "opc.tcp://plc.local:4841/UA/Server")],
        );
        assert_eq!(
            grants_for(&w, &[&plc]).network,
            vec![NetworkGrant {
                host: "plc.local".into(),
                port: Some(4841),
                protocol: Protocol::Tcp
            }]
        );
    }

    #[test]
    fn workload_extra_paths_are_read_only() {
        let mut w = WasmWorkload::new(
            "w",
            WasmWorkloadSpec {
                image: "x".into(),
                ..Default::default()
            },
        );
        w.spec.grants = Some(WorkloadGrants {
            paths: vec![PathGrant {
                host: "/etc/models".into(),
                guest: None,
                access: Access::ReadWrite,
            }],
            network: vec![],
            http_port: Some(8080),
        });
        let g = grants_for(&w, &[]);
        assert_eq!(g.paths[0].access, Access::ReadOnly);
        assert_eq!(g.http_port, Some(8080));
        assert!(g.device.is_none());
    }

    #[test]
    fn env_carries_device_properties() {
        let w = WasmWorkload::new(
            "w",
            WasmWorkloadSpec {
                image: "x".into(),
                ..Default::default()
            },
        );
        let usb = device(
            "udev-1",
            "udev",
            &[
                ("devnode", "/dev/video0"),
                ("vendorId", "046d"),
                ("ID_MODEL", "C920"),
            ],
        );
        let env = env_for(&w, &[&usb]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("EDGEWASM_DEVICE_VENDOR_ID"), Some("046d"));
        assert_eq!(get("EDGEWASM_DEVICE_ID_MODEL"), Some("C920"));
        assert_eq!(get("EDGEWASM_DEVICE_DEVNODE"), Some("/dev/video0"));
        assert_eq!(get("EDGEWASM_DEVICE_NAME"), Some("udev-1"));
        assert_eq!(get("EDGEWASM_DEVICES"), Some("udev-1"));
    }
}
