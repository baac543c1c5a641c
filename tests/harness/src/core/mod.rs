//! A small in-memory apiserver for the core kinds the CRD apiserver does not serve (Pods, Nodes,
//! Events, Leases, Secrets, ConfigMaps, Namespaces, RuntimeClasses), with list/watch,
//! resourceVersions, server-side apply, the status subresource, finalizers, graceful pod deletion
//! and ownerReference garbage collection.

pub mod apply;
mod rest;
pub mod selector;
pub mod store;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub use rest::router;
use store::{Key, Store};

/// One served resource.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub status: bool,
    pub short_names: &'static [&'static str],
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn res(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        status,
        short_names,
    }
}

/// Everything this server serves; the proxy routes these groups here.
pub const RESOURCES: &[Resource] = &[
    res("", "pods", "pod", "Pod", true, true, &["po"]),
    res("", "nodes", "node", "Node", false, true, &["no"]),
    res(
        "",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        true,
        &["ns"],
    ),
    res("", "events", "event", "Event", true, false, &["ev"]),
    res("", "secrets", "secret", "Secret", true, false, &[]),
    res(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        false,
        &["cm"],
    ),
    res(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        false,
        &["sa"],
    ),
    res(
        "events.k8s.io",
        "events",
        "event",
        "Event",
        true,
        false,
        &["ev"],
    ),
    res(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        false,
        &[],
    ),
    res(
        "node.k8s.io",
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
        false,
        &[],
    ),
];

/// The API groups (besides the core group) served here.
pub const GROUPS: &[&str] = &["coordination.k8s.io", "events.k8s.io", "node.k8s.io"];

pub(crate) fn resource_index(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

fn pods() -> usize {
    resource_index("", "v1", "pods").expect("pods are served")
}

/// The core server's state; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CoreServer {
    pub(crate) store: Store,
    /// Pods whose deletion waits for their kubelet (deletionTimestamp set, grace period running).
    pub(crate) terminating: Arc<Mutex<HashSet<Key>>>,
    /// Where the test kubelet writes container logs (`<root>/<ns>_<pod>_<uid>/<container>/N.log`).
    pub(crate) log_root: Arc<Mutex<Option<PathBuf>>>,
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl CoreServer {
    /// A server with the usual namespaces (default, kube-system, kube-public, kube-node-lease).
    pub fn new() -> Self {
        let server = Self::default();
        let ns = resource_index("", "v1", "namespaces").expect("namespaces are served");
        server.store.write(|tx| {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                tx.put(
                    (ns, String::new(), name.to_owned()),
                    json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(),
                                     "creationTimestamp": now()},
                        "spec": {"finalizers": ["kubernetes"]},
                        "status": {"phase": "Active"},
                    }),
                );
            }
        });
        server
    }

    /// Serves `GET .../pods/NAME/log` from the files under `root`.
    pub fn set_pod_log_root(&self, root: PathBuf) {
        *self.log_root.lock().expect("log root lock") = Some(root);
    }

    /// A snapshot of one object.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = resource_index(group, "v1", plural)?;
        self.store.get(&(r, namespace.to_owned(), name.to_owned()))
    }

    /// Every object with ownerReferences, as (apiVersion, kind, namespace, name, owners), for the
    /// garbage collector.
    pub fn dependents(&self) -> Vec<Dependent> {
        self.store
            .all()
            .into_iter()
            .filter_map(|((r, ns, name), obj)| {
                let owners = obj
                    .pointer("/metadata/ownerReferences")?
                    .as_array()?
                    .clone();
                if owners.is_empty() || obj.pointer("/metadata/deletionTimestamp").is_some() {
                    return None;
                }
                Some(Dependent {
                    resource: r,
                    namespace: ns,
                    name,
                    owners,
                })
            })
            .collect()
    }

    /// Whether an object with this uid is stored here.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.store
            .all()
            .iter()
            .any(|(_, v)| v.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
    }

    /// Deletes a dependent whose owners are all gone (background propagation).
    pub fn collect(&self, d: &Dependent) {
        tracing::info!(
            kind = RESOURCES[d.resource].kind,
            namespace = d.namespace,
            name = d.name,
            "garbage-collecting: owner is gone"
        );
        let key = (d.resource, d.namespace.clone(), d.name.clone());
        let _ = rest::delete_object(self, &key, None);
    }

    pub(crate) fn is_pod(key: &Key) -> bool {
        key.0 == pods()
    }
}

/// An object that names owners.
#[derive(Debug, Clone)]
pub struct Dependent {
    pub resource: usize,
    pub namespace: String,
    pub name: String,
    pub owners: Vec<Value>,
}

/// Discovery documents.
pub mod discovery {
    use super::{GROUPS, RESOURCES};
    use serde_json::{Value, json};

    pub fn api_versions() -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })
    }

    pub fn group(name: &str) -> Value {
        let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
        json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": name,
            "versions": [gv.clone()], "preferredVersion": gv,
        })
    }

    /// The legacy `APIGroupList` entries for the groups served here.
    pub fn groups() -> Vec<Value> {
        GROUPS
            .iter()
            .map(|g| {
                let mut v = group(g);
                if let Some(m) = v.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                v
            })
            .collect()
    }

    /// `APIResourceList` for a group-version, or None if it is not served here.
    pub fn resources(group: &str, version: &str) -> Option<Value> {
        let mut list = Vec::new();
        for r in RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            list.push(json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": r.short_names,
            }));
            if r.status {
                list.push(json!({
                    "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch", "update"],
                }));
            }
            if r.plural == "pods" && r.group.is_empty() {
                list.push(json!({
                    "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"],
                }));
            }
        }
        if list.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
        )
    }
}
