//! The whole edgewasm flow on one machine for tests: the real CRD apiserver (with the core-kinds
//! server), containerd with the edgewasm shim, a test kubelet, and the agent and operator binaries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use edgewasm_operator::pod::pinned_node;
use edgewasm_testkit::cluster::Cluster;
use edgewasm_testkit::containerd::{CRI_NAMESPACE, Containerd, ContainerdConfig};
use edgewasm_testkit::kubelet::{Kubelet, KubeletConfig};
use edgewasm_testkit::oci::ImageBuilder;
use edgewasm_testkit::process::ChildGuard;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, ListParams, Patch, PatchParams};

/// The node the test kubelet and the agent call themselves.
pub const NODE: &str = "edge-1";

/// The workspace's target directory, where `cargo build --workspace --bins` put the binaries.
pub fn bin_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// A binary of the workspace; a clear error naming the build step when it is missing.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// The example components' release build (`make examples`).
pub fn example_wasm(name: &str) -> Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/components/target/wasm32-wasip2/release")
        .join(name);
    std::fs::read(&path).with_context(|| format!("{}: run `make examples` first", path.display()))
}

/// Everything the scenarios need, stopped when dropped.
pub struct Stack {
    pub cluster: Cluster,
    pub containerd: Containerd,
    pub kubelet: Option<Kubelet>,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    agent: Option<ChildGuard>,
    operator: Option<ChildGuard>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Starts the cluster (CRDs from `crds/` applied), containerd with the shim, the RuntimeClass and
    /// the test kubelet. The agent and operator are started separately so tests can configure them.
    pub async fn start() -> Result<Self> {
        let cluster = Cluster::start().await?;
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        cluster.apply_crds(&crds).await?;
        let client = cluster.client().await?;
        let containerd = Containerd::start(
            ContainerdConfig::default().shim(binary("containerd-shim-edgewasm-v1")?),
        )
        .await?;
        let dir = tempfile::Builder::new().prefix("edgewasm-e2e-").tempdir()?;
        let runtime_class: RuntimeClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "edgewasm"}, "handler": "edgewasm"
        }))?;
        Api::<RuntimeClass>::all(client.clone())
            .patch(
                "edgewasm",
                &PatchParams::apply("edgewasm-e2e").force(),
                &Patch::Apply(&runtime_class),
            )
            .await
            .context("creating the RuntimeClass")?;
        let config = KubeletConfig::new(NODE, containerd.socket(), dir.path().join("kubelet"));
        cluster.core().set_pod_log_root(config.log_root());
        let kubelet = Kubelet::start(client.clone(), config).await?;
        let scheduler = tokio::spawn(schedule(client.clone()));
        Ok(Self {
            cluster,
            containerd,
            kubelet: Some(kubelet),
            client,
            dir,
            agent: None,
            operator: None,
            scheduler,
        })
    }

    /// Imports an image whose layer holds `wasm` as `/app.wasm` into CRI's namespace.
    pub fn import_wasm_image(&self, reference: &str, wasm: Vec<u8>) -> Result<()> {
        ImageBuilder::new(reference)
            .file("app.wasm", wasm)
            .entrypoint(["/app.wasm"])
            .import(&self.containerd, CRI_NAMESPACE, self.dir.path())
    }

    /// Starts `edgewasm-agent` for [`NODE`] with the given agent config YAML.
    pub fn start_agent(&mut self, config_yaml: &str) -> Result<()> {
        let config = self.dir.path().join("agent.yaml");
        std::fs::write(&config, config_yaml)?;
        let args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        self.agent = Some(self.spawn("edgewasm-agent", &args)?);
        Ok(())
    }

    /// Starts `edgewasm-operator` with a short device grace period.
    pub fn start_operator(&mut self, grace: Duration) -> Result<()> {
        let args = vec![
            "--device-grace-period".to_owned(),
            format!("{}s", grace.as_secs()),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        self.operator = Some(self.spawn("edgewasm-operator", &args)?);
        Ok(())
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<ChildGuard> {
        let mut full = vec![
            format!("KUBECONFIG={}", self.cluster.kubeconfig_path().display()),
            format!("NODE_NAME={NODE}"),
            "RUST_LOG=info".to_owned(),
            binary(name)?.display().to_string(),
        ];
        full.extend_from_slice(args);
        ChildGuard::spawn(
            name,
            Path::new("/usr/bin/env"),
            &full,
            &self.dir.path().join(format!("{name}.log")),
        )
    }

    /// Stops the operator and agent, then the kubelet (removing its sandboxes).
    pub async fn shutdown(mut self) {
        self.scheduler.abort();
        self.operator.take();
        self.agent.take();
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
    }
}

/// The scheduler's part of the flow, which the test cluster lacks: binds each unbound Pod to the node
/// its required affinity names (the operator pins every placement that way).
async fn schedule(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    loop {
        if let Ok(list) = pods
            .list(&ListParams::default().fields("spec.nodeName="))
            .await
        {
            for pod in list.items {
                let (Some(ns), Some(name), Some(node)) = (
                    pod.metadata.namespace.clone(),
                    pod.metadata.name.clone(),
                    pinned_node(&pod),
                ) else {
                    continue;
                };
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    continue;
                }
                let patch = serde_json::json!({"spec": {"nodeName": node}});
                if let Err(e) = Api::<Pod>::namespaced(client.clone(), &ns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(pod = %name, error = %e, "binding failed");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
