//! The Pod that runs one placement: pinned to the device's node, carrying its grants and env.

use std::collections::BTreeMap;

use edgewasm_api::{
    LABEL_DEVICE, LABEL_PLACEMENT, LABEL_WORKLOAD, Placement, RestartPolicy, WasmWorkload,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, ResourceRequirements, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Annotation with a hash of everything the operator sets on the Pod: a Pod whose hash differs is
/// replaced (a Pod's spec is immutable), one whose hash matches is left alone.
pub const SPEC_HASH_ANNOTATION: &str = "edgewasm.io/spec-hash";
/// Annotation with the wall-clock limit of one run, for the shim.
pub const TIMEOUT_ANNOTATION: &str = "edgewasm.io/timeout-seconds";
/// Name of the one container of every Pod.
pub const CONTAINER_NAME: &str = "app";
/// Name of the Pod volume holding the workload's device credentials Secret.
const CREDENTIALS_VOLUME: &str = "device-credentials";

const MAX_NAME: usize = 63;

/// The Pod name of a placement: `<workload>-<placement id>`, sanitized; a hash suffix keeps it unique
/// when sanitizing changed it or it is too long.
pub fn pod_name(workload: &str, placement_id: &str) -> String {
    let raw = format!("{workload}-{placement_id}");
    let clean = sanitize(&raw);
    if clean == raw && clean.len() <= MAX_NAME {
        return clean;
    }
    let hash = &hex::encode(Sha256::digest(
        format!("{workload}\0{placement_id}").as_bytes(),
    ))[..10];
    let keep = MAX_NAME - hash.len() - 1;
    let head = clean
        .get(..keep.min(clean.len()))
        .unwrap_or(&clean)
        .trim_end_matches('-');
    format!("{head}-{hash}")
}

/// A label value for an arbitrary string: itself when valid, else a sanitized prefix plus a hash.
pub fn label_value(value: &str) -> String {
    let valid = value.len() <= MAX_NAME
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        return value.to_owned();
    }
    let hash = &hex::encode(Sha256::digest(value.as_bytes()))[..10];
    let clean = sanitize(value);
    let head = clean
        .get(..MAX_NAME - 11)
        .unwrap_or(&clean)
        .trim_end_matches('-');
    if head.is_empty() {
        hash.to_owned()
    } else {
        format!("{head}-{hash}")
    }
}

fn sanitize(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// The Pod for one placement of `workload`.
pub fn build_pod(workload: &WasmWorkload, placement: &Placement, config: &Config) -> Pod {
    let spec = &workload.spec;
    let name = pod_name(&workload.name_any(), &placement.id);

    let mut labels = BTreeMap::from([
        (LABEL_WORKLOAD.to_owned(), label_value(&workload.name_any())),
        (LABEL_PLACEMENT.to_owned(), label_value(&placement.id)),
    ]);
    if let [device] = placement.devices.as_slice() {
        labels.insert(LABEL_DEVICE.to_owned(), label_value(device));
    }
    let mut annotations = BTreeMap::from([
        (
            edgewasm_api::GRANTS_ANNOTATION.to_owned(),
            placement.grants.to_annotation(),
        ),
        (
            edgewasm_api::WORKLOAD_ANNOTATION.to_owned(),
            format!(
                "{}/{}",
                workload.namespace().unwrap_or_default(),
                workload.name_any()
            ),
        ),
    ]);
    if let Some(timeout) = spec.resources.as_ref().and_then(|r| r.timeout_seconds) {
        annotations.insert(TIMEOUT_ANNOTATION.to_owned(), timeout.to_string());
    }

    let mut limits = BTreeMap::new();
    if let Some(r) = &spec.resources {
        // validate() rejected unparsable quantities before a placement exists.
        if let Ok(Some(bytes)) = r.memory_bytes() {
            limits.insert("memory".to_owned(), Quantity(bytes.to_string()));
        }
        if let Ok(Some(millis)) = r.cpu_millis() {
            limits.insert("cpu".to_owned(), Quantity(format!("{millis}m")));
        }
    }

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(spec.image.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!placement.env.is_empty()).then(|| {
            placement
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    ..EnvVar::default()
                })
                .collect()
        }),
        resources: (!limits.is_empty()).then(|| ResourceRequirements {
            limits: Some(limits),
            ..Default::default()
        }),
        // A guest that traps or runs out of memory says why on stderr; this puts that text into the
        // container status, and so into the workload's PodFailed message.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        // For the shim's device interfaces only: the grants never include this path.
        volume_mounts: spec.device_credentials.as_ref().map(|_| {
            vec![VolumeMount {
                name: CREDENTIALS_VOLUME.to_owned(),
                mount_path: edgewasm_api::DEVICE_CREDENTIALS_MOUNT.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    let volumes = spec.device_credentials.as_ref().map(|creds| {
        vec![Volume {
            name: CREDENTIALS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(creds.secret_name.clone()),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }]
    });

    let affinity = placement.node.as_ref().map(|node| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.clone()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });

    let pod_spec = PodSpec {
        runtime_class_name: Some(config.runtime_class.clone()),
        restart_policy: Some(restart_policy(spec.restart_policy).to_owned()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        affinity,
        containers: vec![container],
        volumes,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..PodSpec::default()
    };

    let hash = spec_hash(&labels, &annotations, &pod_spec);
    annotations.insert(SPEC_HASH_ANNOTATION.to_owned(), hash);

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: workload.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: workload.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The node a Pod is pinned to by its required node affinity.
pub fn pinned_node(pod: &Pod) -> Option<&str> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first())
        .map(String::as_str)
}

/// The hash the operator stamps on a Pod it built.
pub fn spec_hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

fn spec_hash(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
) -> String {
    let json = serde_json::to_vec(&(labels, annotations, spec)).expect("Pod parts serialize");
    hex::encode(&Sha256::digest(&json)[..8])
}

fn restart_policy(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Never => "Never",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewasm_api::{
        Access, Device, DeviceSelector, DeviceSpec, EnvVar as WEnvVar, Grants, NetworkGrant,
        PlanOptions, Protocol, Resources, WasmWorkloadSpec, WorkloadGrants, plan,
    };
    use k8s_openapi::api::core::v1::Toleration;
    use k8s_openapi::jiff::Timestamp;
    use std::time::Duration;

    fn workload(handler: &str) -> WasmWorkload {
        let mut w = WasmWorkload::new(
            "sampler",
            WasmWorkloadSpec {
                image: "registry.local/sampler:1".into(),
                device_selector: Some(DeviceSelector {
                    handler: Some(handler.into()),
                    ..DeviceSelector::default()
                }),
                args: vec!["--rate".into(), "5".into()],
                env: vec![WEnvVar {
                    name: "MODE".into(),
                    value: "fast".into(),
                }],
                resources: Some(Resources {
                    memory: Some("64Mi".into()),
                    cpu: Some("250m".into()),
                    timeout_seconds: Some(30),
                }),
                node_selector: [("zone".to_owned(), "edge".to_owned())].into(),
                tolerations: vec![Toleration {
                    key: Some("edge".into()),
                    operator: Some("Exists".into()),
                    ..Toleration::default()
                }],
                restart_policy: RestartPolicy::OnFailure,
                ..WasmWorkloadSpec::default()
            },
        );
        w.metadata.namespace = Some("factory".into());
        w.metadata.uid = Some("uid-1".into());
        w
    }

    fn device(name: &str, handler: &str, props: &[(&str, &str)]) -> Device {
        Device::new(
            name,
            DeviceSpec {
                handler: handler.into(),
                nodes: vec!["edge-1".into()],
                properties: props
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                capacity: 1,
                approved: true,
            },
        )
    }

    fn pod_for(w: &WasmWorkload, d: &Device) -> Pod {
        let p = plan(
            std::slice::from_ref(w),
            std::slice::from_ref(d),
            PlanOptions {
                now: Timestamp::now(),
                grace: Duration::from_mins(1),
            },
        );
        let placement = &p.workloads[&w.key()].placements[0];
        build_pod(w, placement, &Config::default())
    }

    fn grants(pod: &Pod) -> Grants {
        Grants::from_annotation(
            pod.annotations()
                .get(edgewasm_api::GRANTS_ANNOTATION)
                .map(String::as_str),
        )
        .unwrap()
    }

    fn env(pod: &Pod) -> BTreeMap<String, String> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn udev_device_grants_its_devnode_and_pins_the_node() {
        let w = workload("udev");
        let d = device(
            "udev-cam",
            "udev",
            &[("devnode", "/dev/video0"), ("vendorId", "046d")],
        );
        let pod = pod_for(&w, &d);

        let g = grants(&pod);
        assert_eq!(g.paths.len(), 1);
        assert_eq!(g.paths[0].host, "/dev/video0");
        assert_eq!(g.paths[0].access, Access::ReadWrite);
        assert!(g.network.is_empty());
        assert_eq!(g.device.unwrap().name, "udev-cam");

        let env = env(&pod);
        assert_eq!(env["MODE"], "fast");
        assert_eq!(env["EDGEWASM_DEVICE_DEVNODE"], "/dev/video0");
        assert_eq!(env["EDGEWASM_DEVICE_VENDOR_ID"], "046d");
        assert_eq!(env["EDGEWASM_DEVICE_NAME"], "udev-cam");

        let spec = pod.spec.as_ref().unwrap();
        let term = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        let field = &term.match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (field.key.as_str(), field.operator.as_str()),
            ("metadata.name", "In")
        );
        assert_eq!(field.values.as_deref(), Some(&["edge-1".to_owned()][..]));
        assert_eq!(pinned_node(&pod), Some("edge-1"));
        assert_eq!(spec.runtime_class_name.as_deref(), Some("edgewasm"));
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(spec.node_selector.as_ref().unwrap()["zone"], "edge");
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("edge")
        );

        let c = &spec.containers[0];
        assert_eq!(c.name, "app");
        assert_eq!(c.image.as_deref(), Some("registry.local/sampler:1"));
        assert_eq!(
            c.args.as_deref(),
            Some(&["--rate".to_owned(), "5".to_owned()][..])
        );
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"], Quantity((64 * 1024 * 1024).to_string()));
        assert_eq!(limits["cpu"], Quantity("250m".into()));

        assert_eq!(pod.labels()[LABEL_WORKLOAD], "sampler");
        assert_eq!(pod.labels()[LABEL_DEVICE], "udev-cam");
        assert_eq!(pod.labels()[LABEL_PLACEMENT], "udev-cam");
        assert_eq!(pod.annotations()[TIMEOUT_ANNOTATION], "30");
        assert_eq!(
            pod.annotations()[edgewasm_api::WORKLOAD_ANNOTATION],
            "factory/sampler"
        );
        assert!(spec.volumes.is_none() && c.volume_mounts.is_none());
        assert_eq!(pod.namespace().as_deref(), Some("factory"));
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("WasmWorkload", "sampler", Some(true))
        );
    }

    #[test]
    fn device_credentials_reach_the_pod_but_not_the_grants() {
        let mut w = workload("onvif");
        w.spec.device_credentials = Some(edgewasm_api::DeviceCredentials {
            secret_name: "cam-login".into(),
        });
        let d = device("onvif-cam", "onvif", &[("ip", "192.168.1.20")]);
        let pod = pod_for(&w, &d);
        let spec = pod.spec.as_ref().unwrap();
        let volume = &spec.volumes.as_ref().unwrap()[0];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("cam-login"));
        assert_eq!(secret.default_mode, Some(0o400));
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only
            ),
            (
                volume.name.as_str(),
                edgewasm_api::DEVICE_CREDENTIALS_MOUNT,
                Some(true)
            )
        );
        let g = grants(&pod);
        assert!(
            g.paths
                .iter()
                .all(|p| !p.host.starts_with(edgewasm_api::DEVICE_CREDENTIALS_MOUNT)),
            "{g:?}"
        );
    }

    #[test]
    fn onvif_camera_grants_its_address_and_the_workloads_extras() {
        let mut w = workload("onvif");
        w.spec.grants = Some(WorkloadGrants {
            network: vec![NetworkGrant {
                host: "10.0.0.9".into(),
                port: Some(1883),
                protocol: Protocol::Tcp,
            }],
            http_port: Some(8080),
            ..WorkloadGrants::default()
        });
        let d = device(
            "onvif-cam",
            "onvif",
            &[
                ("xaddrs", "http://192.168.1.20:8000/onvif/device_service"),
                ("ip", "192.168.1.20"),
            ],
        );
        let g = grants(&pod_for(&w, &d));
        assert!(g.paths.is_empty());
        assert!(g.network.contains(&NetworkGrant {
            host: "192.168.1.20".into(),
            port: Some(8000),
            protocol: Protocol::Tcp
        }));
        assert!(
            g.network
                .iter()
                .any(|n| n.host == "192.168.1.20" && n.protocol == Protocol::Any)
        );
        assert!(g.network.contains(&NetworkGrant {
            host: "10.0.0.9".into(),
            port: Some(1883),
            protocol: Protocol::Tcp
        }));
        assert_eq!(g.http_port, Some(8080));
    }

    #[test]
    fn opcua_endpoint_becomes_a_network_grant() {
        let w = workload("opcua");
        let d = device(
            "opcua-plc",
            "opcua",
            &[("endpointUrl", "opc.tcp://plc.local:4840/")],
        );
        let pod = pod_for(&w, &d);
        let g = grants(&pod);
        assert_eq!(
            g.network,
            vec![NetworkGrant {
                host: "plc.local".into(),
                port: Some(4840),
                protocol: Protocol::Tcp
            }]
        );
        assert_eq!(
            env(&pod)["EDGEWASM_DEVICE_ENDPOINT_URL"],
            "opc.tcp://plc.local:4840/"
        );
    }

    #[test]
    fn the_same_placement_builds_the_same_pod_and_a_spec_change_changes_the_hash() {
        let w = workload("udev");
        let d = device("udev-cam", "udev", &[("devnode", "/dev/video0")]);
        let a = pod_for(&w, &d);
        assert_eq!(a, pod_for(&w, &d));
        let mut w2 = w.clone();
        w2.spec.image = "registry.local/sampler:2".into();
        assert_ne!(spec_hash_of(&a), spec_hash_of(&pod_for(&w2, &d)));
    }

    #[test]
    fn pod_names_are_deterministic_valid_and_bounded() {
        assert_eq!(pod_name("sampler", "0"), "sampler-0");
        assert_eq!(pod_name("sampler", "udev-1a2b"), "sampler-udev-1a2b");
        let odd = pod_name("sampler", "Edge_Node.1");
        assert!(odd.starts_with("sampler-edge-node-1-"), "{odd}");
        assert_ne!(odd, pod_name("sampler", "edge-node-1"));
        let long = pod_name(&"w".repeat(60), &"x".repeat(60));
        assert_eq!(long.len(), MAX_NAME);
        assert_eq!(long, pod_name(&"w".repeat(60), &"x".repeat(60)));
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(label_value("static-abc"), "static-abc");
        assert!(label_value(&"a".repeat(80)).len() <= MAX_NAME);
    }
}
