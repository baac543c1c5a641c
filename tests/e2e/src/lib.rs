//! The whole edgewasm flow on one machine for tests: the real CRD apiserver (with the core-kinds
//! server), containerd with the edgewasm shim, a test kubelet, and the agent and operator binaries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use edgewasm_api::{Device, LABEL_WORKLOAD, WasmWorkload};
use edgewasm_operator::pod::pinned_node;
use edgewasm_testkit::cluster::{Cluster, eventually};
use edgewasm_testkit::containerd::{CRI_NAMESPACE, Containerd, ContainerdConfig};
use edgewasm_testkit::kubelet::{Kubelet, KubeletConfig, container_log};
use edgewasm_testkit::oci::ImageBuilder;
use edgewasm_testkit::process::{ChildGuard, free_port, log_tail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, ListParams, Patch, PatchParams};

/// The node the test kubelet and the agent call themselves.
pub const NODE: &str = "edge-1";
/// The namespace the scenarios' workloads live in.
pub const NS: &str = "default";
/// The sensor-logger example, imported by [`Stack::start_with_sensors`].
pub const SENSOR_IMAGE: &str = "registry.edgewasm.test/sensor-logger:e2e";
/// What [`Stack::write_sensors`] puts in every sensor's temperature channel (millidegrees).
pub const SENSOR_READING: &str = "21500";
/// How long a scenario waits for one step (the machine may be busy building other crates).
pub const WAIT: Duration = Duration::from_secs(90);

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

/// Everything the scenarios need, stopped when dropped (also when a test fails half-way).
pub struct Stack {
    pub cluster: Cluster,
    pub containerd: Containerd,
    pub kubelet: Option<Kubelet>,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    agent: Option<ChildGuard>,
    operator: Option<ChildGuard>,
    /// The operator's `/metrics`, `/healthz` and `/readyz`.
    operator_metrics: Option<String>,
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
        // What the harness did (the kubelet, the garbage collector, faults) shows with a failure.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("edgewasm_testkit=info"))
            .with_test_writer()
            .try_init();
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
            operator_metrics: None,
            scheduler,
        })
    }

    /// [`Stack::start`], then static temperature sensors `ids` (see [`Stack::write_sensors`]), the
    /// sensor-logger image, the agent publishing the sensors, and the operator; returns once the
    /// operator is ready and every sensor is a present, approved Device.
    pub async fn start_with_sensors(ids: &[&str], grace: Duration) -> Result<Self> {
        let mut stack = Self::start().await?;
        stack.write_sensors(ids)?;
        stack.import_wasm_image(SENSOR_IMAGE, example_wasm("sensor-logger.wasm")?)?;
        stack.start_agent(&format!(
            "handlers:\n  static:\n    enabled: true\n    file: {}\n    approval: auto\n",
            stack.devices_file().display()
        ))?;
        stack.start_operator(grace).await?;
        stack.wait_for_sensors(ids.len()).await?;
        Ok(stack)
    }

    fn devices_file(&self) -> PathBuf {
        self.dir.path().join("devices.yaml")
    }

    /// The folder of sensor `id`: an IIO-style device (`in_temp_input`) the runtime reads for a
    /// granted `kind: temperature` device, so a workload needs no per-device settings.
    pub fn sensor_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("sensors").join(id)
    }

    /// Makes the static device file list exactly the sensors `ids` (the agent follows the file).
    pub fn write_sensors(&self, ids: &[&str]) -> Result<()> {
        let mut yaml = String::from("devices:\n");
        for id in ids {
            let dir = self.sensor_dir(id);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("in_temp_input"), format!("{SENSOR_READING}\n"))?;
            writeln!(
                yaml,
                "  - id: {id}\n    properties:\n      kind: temperature\n      devnode: {}",
                dir.display()
            )?;
        }
        if ids.is_empty() {
            yaml = "devices: []\n".into();
        }
        std::fs::write(self.devices_file(), yaml).context("writing the static device file")
    }

    /// Waits until exactly `n` Devices exist, all present and approved on [`NODE`].
    pub async fn wait_for_sensors(&self, n: usize) -> Result<()> {
        let devices = self.devices();
        eventually(&format!("the agent publishes {n} sensor(s)"), WAIT, || {
            let devices = devices.clone();
            async move {
                let list = devices.list(&ListParams::default()).await?.items;
                Ok(list.len() == n
                    && list
                        .iter()
                        .all(|d| d.spec.nodes == [NODE] && d.is_present() && d.spec.approved))
            }
        })
        .await
        .map_err(|e| e.context(self.diagnostics()))
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

    /// Starts `edgewasm-operator` with a short device grace period and waits until its `/readyz`
    /// says its caches are synced (users create workloads against an operator that is up).
    pub async fn start_operator(&mut self, grace: Duration) -> Result<()> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let args = vec![
            "--device-grace-period".to_owned(),
            format!("{}s", grace.as_secs()),
            "--metrics-addr".to_owned(),
            addr.clone(),
        ];
        self.operator = Some(self.spawn("edgewasm-operator", &args)?);
        self.operator_metrics = Some(format!("http://{addr}"));
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/readyz");
        eventually("the operator is ready", WAIT, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                Ok(http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()))
            }
        })
        .await
        .map_err(|e| e.context(self.diagnostics()))
    }

    /// The operator's Prometheus text.
    pub async fn operator_metrics(&self) -> Result<String> {
        let base = self
            .operator_metrics
            .as_ref()
            .context("the operator is not started")?;
        Ok(reqwest::get(format!("{base}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// `edgewasm_operator_reconciles_total` from the operator's metrics.
    pub async fn operator_reconciles(&self) -> Result<u64> {
        let text = self.operator_metrics().await?;
        text.lines()
            .find_map(|l| l.strip_prefix("edgewasm_operator_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .context("no reconciles_total in the operator's metrics")
    }

    /// PIDs of the agent and the operator; an error when either has exited (crashed).
    pub fn component_pids(&mut self) -> Result<(u32, u32)> {
        let pid = |guard: &mut Option<ChildGuard>, name: &str| -> Result<u32> {
            let child = guard
                .as_mut()
                .with_context(|| format!("{name} not started"))?;
            if let Some(status) = child.exited() {
                bail!("{name} exited ({status})");
            }
            child.pid().with_context(|| format!("{name} has no pid"))
        };
        let agent = pid(&mut self.agent, "edgewasm-agent");
        let operator = pid(&mut self.operator, "edgewasm-operator");
        match (agent, operator) {
            (Ok(a), Ok(o)) => Ok((a, o)),
            (Err(e), _) | (_, Err(e)) => Err(e.context(self.diagnostics())),
        }
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The tails of the operator's and the agent's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |name: &str| log_tail(&self.dir.path().join(format!("{name}.log")), 60);
        format!(
            "--- edgewasm-operator log (tail) ---\n{}\n--- edgewasm-agent log (tail) ---\n{}",
            tail("edgewasm-operator"),
            tail("edgewasm-agent")
        )
    }

    pub fn workloads(&self) -> Api<WasmWorkload> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn devices(&self) -> Api<Device> {
        Api::all(self.client.clone())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Creates or updates a workload (server-side apply).
    pub async fn apply_workload(&self, workload: &serde_json::Value) -> Result<()> {
        let name = workload["metadata"]["name"]
            .as_str()
            .context("a workload without metadata.name")?;
        self.workloads()
            .patch(
                name,
                &PatchParams::apply("edgewasm-e2e").force(),
                &Patch::Apply(workload),
            )
            .await
            .with_context(|| format!("applying workload {name}"))?;
        Ok(())
    }

    /// The workload's Pods (terminating ones included).
    pub async fn pods_of(&self, workload: &str) -> Result<Vec<Pod>> {
        Ok(self
            .pods()
            .list(&ListParams::default().labels(&format!("{LABEL_WORKLOAD}={workload}")))
            .await?
            .items)
    }

    /// The text the Pod's `app` container logged (its newest attempt).
    pub fn app_log(&self, pod: &Pod) -> String {
        self.kubelet
            .as_ref()
            .map(|k| container_log(&k.log_root(), pod, "app"))
            .unwrap_or_default()
    }

    /// Waits until the workload has exactly `n` Pods, each Running with a reading in its log.
    pub async fn wait_for_readings(&self, workload: &str, n: usize) -> Result<Vec<Pod>> {
        let what = format!("{workload} runs {n} Pod(s) that log readings");
        eventually(&what, WAIT, || async move {
            let pods = self.pods_of(workload).await?;
            Ok(pods.len() == n
                && pods.iter().all(|p| {
                    phase(p) == Some("Running")
                        && p.metadata.deletion_timestamp.is_none()
                        && self.app_log(p).contains("\"sample\":")
                }))
        })
        .await
        .map_err(|e| e.context(self.diagnostics()))?;
        self.pods_of(workload).await
    }

    /// Waits until the workload's condition `type_` has `status` and `reason`; returns it.
    pub async fn wait_for_condition(
        &self,
        workload: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<(String, String, String)> {
        let workloads = self.workloads();
        let what = format!("{workload} has {type_}={status} ({reason})");
        eventually(&what, WAIT, || {
            let workloads = workloads.clone();
            async move {
                let w = workloads.get(workload).await?;
                Ok(condition(&w, type_).is_some_and(|c| c.0 == status && c.1 == reason))
            }
        })
        .await
        .map_err(|e| e.context(self.diagnostics()))?;
        let w = self.workloads().get(workload).await?;
        condition(&w, type_).context("the condition vanished")
    }

    /// The Events about the workload (events.k8s.io), oldest first.
    pub async fn events_of(&self, workload: &str) -> Result<Vec<Event>> {
        let mut events: Vec<Event> = Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("WasmWorkload") && r.name.as_deref() == Some(workload)
                })
            })
            .collect();
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        Ok(events)
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

impl Drop for Stack {
    /// On a failed test: the components go first so nothing writes to a cluster that is stopping;
    /// containerd's guard then removes what the kubelet left.
    fn drop(&mut self) {
        self.scheduler.abort();
        self.operator.take();
        self.agent.take();
        self.kubelet.take();
    }
}

/// A workload running the sensor-logger on every temperature sensor, forever, a reading every
/// 200 ms; `priority` decides who gets a full device.
pub fn sensor_workload(name: &str, priority: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "edgewasm.io/v1alpha1", "kind": "WasmWorkload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": SENSOR_IMAGE,
            "deviceSelector": {"handler": "static", "properties": {"kind": "temperature"}},
            "env": [{"name": "SAMPLES", "value": "0"}, {"name": "INTERVAL_MS", "value": "200"}],
            "resources": {"memory": "32Mi", "cpu": "250m"},
            "priority": priority,
            "restartPolicy": "Always"
        }
    })
}

/// `(status, reason, message)` of the workload's condition `type_`.
pub fn condition(w: &WasmWorkload, type_: &str) -> Option<(String, String, String)> {
    let c = w
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The Pod's phase.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// How many times an Event happened (kube-runtime's recorder folds repeats into a series).
pub fn event_count(event: &Event) -> i32 {
    event
        .series
        .as_ref()
        .map_or(1, |s| s.count)
        .max(event.deprecated_count.unwrap_or(1))
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

/// How often the Pod's first container was restarted.
pub fn restarts(pod: &k8s_openapi::api::core::v1::Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|st| st.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}
