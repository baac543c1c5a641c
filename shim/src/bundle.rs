//! What a container's OCI bundle asks for, read as plain data: the program, args, env, grants,
//! limits, network namespace and pod membership (`config.json` plus the rootfs mounts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgewasm_api::{DEVICE_CREDENTIALS_MOUNT, GRANTS_ANNOTATION, Grants, WORKLOAD_ANNOTATION};
use edgewasm_runtime::Limits;
use serde_json::Value;

/// Set by containerd's CRI on sandbox and container specs.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The pod sandbox a CRI container belongs to (on the sandbox itself: its own id).
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// A pod annotation that asks for a shim process of the pod's own (`"true"`) instead of the shared one.
pub const ISOLATED_SHIM_ANNOTATION: &str = "edgewasm.io/isolated-shim";
/// The wall-clock limit in whole seconds the operator writes from a workload's `timeoutSeconds`;
/// a container still running then ends with exit code 124 and says why.
pub const TIMEOUT_ANNOTATION: &str = "edgewasm.io/timeout-seconds";

/// One container's spec, as far as the shim cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub annotations: BTreeMap<String, String>,
    /// The network namespace path from `linux.namespaces` (`None`: none given, or one without a path).
    pub netns: Option<PathBuf>,
    pub limits: Limits,
    pub terminal: bool,
    /// `mounts`: destination in the container → source on the host.
    pub mounts: BTreeMap<String, PathBuf>,
}

/// A bundle that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid OCI runtime spec: {message}", path.display())]
    Spec { path: PathBuf, message: String },
    #[error("annotation {GRANTS_ANNOTATION} is not valid grants JSON: {0}")]
    Grants(serde_json::Error),
    #[error("annotation {TIMEOUT_ANNOTATION} must be a positive number of seconds, not {0:?}")]
    Timeout(String),
    #[error("process.args is empty: args[0] must name the .wasm file in the image")]
    NoProgram,
    #[error("{wasm} not found in the container's rootfs (looked in {searched})")]
    ProgramNotFound { wasm: String, searched: String },
    #[error("terminal (tty) containers are not supported by edgewasm")]
    Terminal,
    #[error("annotation {WORKLOAD_ANNOTATION} must be <namespace>/<name>, not {0:?}")]
    Workload(String),
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<Self, BundleError> {
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| BundleError::Spec { path, message })
    }

    /// Parses an OCI runtime spec (`config.json`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let spec: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let process = &spec["process"];
        let env = strings(&process["env"])
            .into_iter()
            .filter(|e| !e.is_empty())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e, String::new()),
            })
            .collect();
        let annotations = spec["annotations"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let netns = spec
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let resources = spec.pointer("/linux/resources");
        let memory_bytes = resources
            .and_then(|r| r.pointer("/memory/limit"))
            .and_then(Value::as_i64)
            .filter(|&l| l > 0)
            .map(|l| l as u64);
        let quota = resources
            .and_then(|r| r.pointer("/cpu/quota"))
            .and_then(Value::as_i64);
        let period = resources
            .and_then(|r| r.pointer("/cpu/period"))
            .and_then(Value::as_u64);
        Ok(Self {
            args: strings(&process["args"]),
            env,
            annotations,
            netns,
            limits: Limits {
                memory_bytes,
                cpu_millis: cpu_millis(quota, period),
                deadline: None,
            },
            terminal: process["terminal"].as_bool().unwrap_or(false),
            mounts: spec["mounts"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|m| {
                            Some((
                                m["destination"].as_str()?.to_owned(),
                                PathBuf::from(m["source"].as_str()?),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// CRI's pod sandbox (pause) container: runs no program.
    pub fn is_sandbox(&self) -> bool {
        self.annotations
            .get(CONTAINER_TYPE_ANNOTATION)
            .map(String::as_str)
            == Some("sandbox")
    }

    /// The pod this container belongs to (CRI only).
    pub fn sandbox_id(&self) -> Option<&str> {
        self.annotations
            .get(SANDBOX_ID_ANNOTATION)
            .map(String::as_str)
    }

    /// The grants from the `edgewasm.io/grants` annotation; none without it.
    pub fn grants(&self) -> Result<Grants, BundleError> {
        Grants::from_annotation(self.annotations.get(GRANTS_ANNOTATION).map(String::as_str))
            .map_err(BundleError::Grants)
    }

    /// The wall-clock limit from the `edgewasm.io/timeout-seconds` annotation; none without it.
    pub fn timeout(&self) -> Result<Option<std::time::Duration>, BundleError> {
        self.annotations
            .get(TIMEOUT_ANNOTATION)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&s| s > 0)
                    .map(std::time::Duration::from_secs)
                    .ok_or_else(|| BundleError::Timeout(v.clone()))
            })
            .transpose()
    }

    /// The host folder of the workload's device credentials Secret, as kubelet mounted it at
    /// [`DEVICE_CREDENTIALS_MOUNT`] for the operator's volume. Read by the shim for the host's device
    /// interfaces; the guest never sees it (it is not in the grants).
    pub fn credentials_dir(&self) -> Option<&Path> {
        self.mounts
            .get(DEVICE_CREDENTIALS_MOUNT)
            .map(PathBuf::as_path)
    }

    /// The workload an operator-built Pod runs, `(namespace, name)` from the `edgewasm.io/workload`
    /// annotation; none without it. Both parts become folder names, so they must be DNS names.
    pub fn workload(&self) -> Result<Option<(&str, &str)>, BundleError> {
        let Some(value) = self.annotations.get(WORKLOAD_ANNOTATION) else {
            return Ok(None);
        };
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && !s.contains("..")
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
                })
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        };
        match value.split_once('/') {
            Some((ns, name)) if dns(ns) && dns(name) => Ok(Some((ns, name))),
            _ => Err(BundleError::Workload(value.clone())),
        }
    }

    /// Which shim process serves this container, as a key unique within one containerd namespace:
    /// one shared shim per namespace, or the pod's own when it asks for isolation.
    pub fn shim_group(&self) -> String {
        match self.sandbox_id() {
            Some(pod)
                if self
                    .annotations
                    .get(ISOLATED_SHIM_ANNOTATION)
                    .map(String::as_str)
                    == Some("true") =>
            {
                format!("edgewasm-pod-{pod}")
            }
            _ => "edgewasm-shared".to_owned(),
        }
    }
}

/// CPU quota/period → millicores (`quota <= 0` means unlimited).
pub fn cpu_millis(quota: Option<i64>, period: Option<u64>) -> Option<u64> {
    let quota = u64::try_from(quota?).ok().filter(|&q| q > 0)?;
    let period = period.filter(|&p| p > 0).unwrap_or(100_000);
    Some((quota * 1000 / period).max(1))
}

/// A rootfs mount as containerd hands it to the shim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Finds the file `args0` names in the container's rootfs without mounting it: an overlay's
/// upper then lower directories in order, a bind mount's source, or `<bundle>/rootfs` when containerd
/// gave no mounts (it mounted the rootfs itself).
pub fn find_program(
    args0: &str,
    mounts: &[RootfsMount],
    bundle: &Path,
) -> Result<PathBuf, BundleError> {
    let rel = Path::new(args0.trim_start_matches('/'));
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BundleError::ProgramNotFound {
            wasm: args0.to_owned(),
            searched: "nothing: args[0] must be a path inside the image".into(),
        });
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if mounts.is_empty() {
        dirs.push(bundle.join("rootfs"));
    }
    for m in mounts {
        match m.kind.as_str() {
            "overlay" => {
                let opt = |name: &str| {
                    m.options
                        .iter()
                        .find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                };
                dirs.extend(opt("upperdir").map(PathBuf::from));
                dirs.extend(
                    opt("lowerdir")
                        .into_iter()
                        .flat_map(|l| l.split(':'))
                        .map(PathBuf::from),
                );
            }
            _ => dirs.push(PathBuf::from(&m.source)),
        }
    }
    dirs.iter()
        .map(|d| d.join(rel))
        .find(|p| p.is_file())
        .ok_or_else(|| BundleError::ProgramNotFound {
            wasm: args0.to_owned(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "process": {"args": ["/app.wasm", "x"], "env": ["A=1", "", "B"], "terminal": false},
        "annotations": {"io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.sandbox-id": "pod1",
                        "edgewasm.io/grants": "{}"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}],
            "resources": {"memory": {"limit": 1048576}, "cpu": {"quota": 50000, "period": 100000}}
        }
    }"#;

    #[test]
    fn reads_what_the_shim_needs() {
        let s = BundleSpec::parse(SPEC).unwrap();
        assert_eq!(s.args, ["/app.wasm", "x"]);
        assert_eq!(
            s.env,
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert_eq!(s.netns.as_deref(), Some(Path::new("/var/run/netns/cni-1")));
        assert_eq!(s.limits.memory_bytes, Some(1_048_576));
        assert_eq!(s.limits.cpu_millis, Some(500));
        assert!(!s.is_sandbox());
        assert_eq!(s.sandbox_id(), Some("pod1"));
        assert_eq!(s.grants().unwrap(), Grants::default());
        assert_eq!(s.shim_group(), "edgewasm-shared");
        assert_eq!(s.credentials_dir(), None);
        assert_eq!(s.workload().unwrap(), None);
    }

    #[test]
    fn finds_the_credentials_mount_and_the_workload() {
        let spec = r#"{
            "process": {"args": ["/app.wasm"]},
            "annotations": {"edgewasm.io/workload": "factory/sampler"},
            "mounts": [
                {"destination": "/proc", "source": "proc", "type": "proc"},
                {"destination": "/run/edgewasm/device-credentials",
                 "source": "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~secret/device-credentials",
                 "type": "bind", "options": ["rbind", "ro"]}
            ]
        }"#;
        let mut s = BundleSpec::parse(spec).unwrap();
        assert_eq!(
            s.credentials_dir(),
            Some(Path::new(
                "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~secret/device-credentials"
            ))
        );
        assert_eq!(s.workload().unwrap(), Some(("factory", "sampler")));
        for bad in ["sampler", "factory/../x", "/x", "a/b/c", "A/b"] {
            s.annotations.insert(WORKLOAD_ANNOTATION.into(), bad.into());
            assert!(s.workload().is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_fields_mean_nothing_granted_and_no_limits() {
        let s = BundleSpec::parse(
            r#"{"process": {"args": ["a.wasm"]}, "linux": {"namespaces": [{"type": "network"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.netns, None);
        assert_eq!(s.limits, Limits::default());
        assert_eq!(s.grants().unwrap(), Grants::default());
        assert_eq!(s.sandbox_id(), None);
    }

    #[test]
    fn timeout_annotation_in_seconds() {
        let mut s = BundleSpec::parse(SPEC).unwrap();
        assert_eq!(s.timeout().unwrap(), None);
        for (value, want) in [
            ("30", Some(30)),
            (" 5 ", Some(5)),
            ("0", None),
            ("1.5", None),
            ("x", None),
        ] {
            s.annotations
                .insert(TIMEOUT_ANNOTATION.into(), value.into());
            assert_eq!(
                s.timeout().ok().flatten().map(|d| d.as_secs()),
                want,
                "{value:?}"
            );
        }
        assert!(
            s.timeout()
                .unwrap_err()
                .to_string()
                .contains("positive number of seconds")
        );
    }

    #[test]
    fn isolated_pods_get_their_own_group() {
        let mut s = BundleSpec::parse(SPEC).unwrap();
        s.annotations
            .insert(ISOLATED_SHIM_ANNOTATION.into(), "true".into());
        assert_eq!(s.shim_group(), "edgewasm-pod-pod1");
    }

    #[test]
    fn cpu_quota_to_millicores() {
        for (quota, period, want) in [
            (Some(50_000), Some(100_000), Some(500)),
            (Some(200_000), Some(100_000), Some(2000)),
            (Some(-1), Some(100_000), None),
            (None, Some(100_000), None),
            (Some(10), Some(100_000), Some(1)),
            (Some(25_000), None, Some(250)),
        ] {
            assert_eq!(cpu_millis(quota, period), want, "{quota:?}/{period:?}");
        }
    }

    #[test]
    fn finds_the_program_in_overlay_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, l1, l2) = (
            dir.path().join("u"),
            dir.path().join("l1"),
            dir.path().join("l2"),
        );
        for d in [&upper, &l1, &l2] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(l2.join("app.wasm"), b"\0asm").unwrap();
        let mount = RootfsMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "workdir=/w".into(),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", l1.display(), l2.display()),
            ],
        };
        assert_eq!(
            find_program("/app.wasm", std::slice::from_ref(&mount), dir.path()).unwrap(),
            l2.join("app.wasm")
        );
        let err = find_program("other.wasm", &[mount], dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("other.wasm not found"), "{err}");
        assert!(find_program("../etc/passwd", &[], dir.path()).is_err());
    }
}
