//! A test kubelet: registers a Node, watches the Pods bound to it that name a RuntimeClass, runs
//! them through containerd's CRI with that RuntimeClass's handler, and writes their status back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};

mod volumes;

const FIELD_MANAGER: &str = "edgewasm-test-kubelet";

/// How the kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// containerd's socket (CRI is served on it).
    pub cri_socket: PathBuf,
    /// Container logs go under `<root>/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log`, Secret
    /// volumes under `<root>/volumes/<uid>/kubernetes.io~secret/<volume>/`.
    pub root_dir: PathBuf,
    /// Pod sandboxes share the host's network namespace (no CNI needed).
    pub host_network: bool,
    /// How often container states are read from CRI.
    pub sync_interval: Duration,
    /// Node labels besides `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch`.
    pub node_labels: BTreeMap<String, String>,
}

impl KubeletConfig {
    pub fn new(
        node_name: &str,
        cri_socket: impl Into<PathBuf>,
        root_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_name: node_name.to_owned(),
            cri_socket: cri_socket.into(),
            root_dir: root_dir.into(),
            host_network: true,
            sync_interval: Duration::from_millis(300),
            node_labels: BTreeMap::new(),
        }
    }

    /// Where `GET pods/log` finds logs (see `CoreServer::set_pod_log_root`).
    pub fn log_root(&self) -> PathBuf {
        self.root_dir.join("pods")
    }

    /// Where the volumes of the Pod `uid` are materialized.
    fn volume_root(&self, uid: &str) -> PathBuf {
        self.root_dir.join("volumes").join(uid)
    }
}

/// A running test kubelet; [`Kubelet::shutdown`] removes its sandboxes (dropping it only stops it).
#[derive(Debug)]
pub struct Kubelet {
    task: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    config: KubeletConfig,
}

impl Kubelet {
    /// Connects to CRI, registers the Node (Ready) and starts syncing pods.
    pub async fn start(client: kube::Client, config: KubeletConfig) -> Result<Self> {
        let channel = connect(&config.cri_socket).await?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let version = runtime
            .version(cri::VersionRequest::default())
            .await
            .with_context(|| format!("CRI Version on {}", config.cri_socket.display()))?
            .into_inner();
        std::fs::create_dir_all(config.log_root())?;
        register_node(&client, &config, &version).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let state = Syncer {
            client,
            config: config.clone(),
            runtime,
            images: ImageServiceClient::new(channel),
            pods: HashMap::new(),
        };
        let task = tokio::spawn(async move {
            Box::pin(state.run(stop_rx)).await;
            let _ = done_tx.send(());
        });
        Ok(Self {
            task: Some(task),
            stop: Some(stop_tx),
            done: Some(done_rx),
            config,
        })
    }

    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    pub fn log_root(&self) -> PathBuf {
        self.config.log_root()
    }

    /// Stops syncing and removes every pod sandbox this kubelet started.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), done).await;
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A tonic channel to a CRI unix socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to CRI at {}", socket.display()))
}

async fn register_node(
    client: &kube::Client,
    config: &KubeletConfig,
    version: &cri::VersionResponse,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels: BTreeMap<String, String> = config.node_labels.clone();
    labels.insert("kubernetes.io/hostname".into(), config.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(&config.node_name, &params, &Patch::Apply(&node))
        .await
        .context("registering the Node")?;
    let now = crate::core::now();
    let status = json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "test kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": config.node_name}],
            "nodeInfo": {"containerRuntimeVersion": format!("{}://{}", version.runtime_name, version.runtime_version),
                         "kubeletVersion": "v1.36.0-edgewasm-test", "operatingSystem": "linux",
                         "architecture": "amd64", "osImage": "", "kernelVersion": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""},
        },
    });
    nodes
        .patch_status(&config.node_name, &params, &Patch::Apply(&status))
        .await
        .context("writing the Node's status")?;
    Ok(())
}

/// What the kubelet knows of one container.
#[derive(Debug, Default)]
struct ContainerRun {
    id: Option<String>,
    attempt: u32,
    restarts: u32,
    waiting: Option<(String, String)>,
    last_terminated: Option<Value>,
    next_try: Option<Instant>,
    done: bool,
}

#[derive(Debug)]
struct PodRun {
    pod: Pod,
    sandbox: Option<String>,
    sandbox_config: Option<cri::PodSandboxConfig>,
    containers: BTreeMap<String, ContainerRun>,
    written: Option<Value>,
    start_time: String,
    /// When to try the sandbox again after a failure.
    retry_at: Option<Instant>,
    /// When this kubelet first saw the pod (condition times before the sandbox runs).
    seen_at: String,
    /// The sandbox's attempt number (it goes up each time a lost sandbox is replaced).
    sandbox_attempt: u32,
    /// The host folder of each materialized volume, by volume name.
    volumes: BTreeMap<String, PathBuf>,
}

struct Syncer {
    client: kube::Client,
    config: KubeletConfig,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pods: HashMap<String, PodRun>,
}

fn meta(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

impl Syncer {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let watch_config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node_name));
        let (tx, mut rx) = mpsc::channel::<Option<Pod>>(64);
        let watch_task = tokio::spawn(async move {
            let mut stream = watcher(pods, watch_config).default_backoff().boxed();
            let mut known: HashMap<String, Pod> = HashMap::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        known.insert(p.metadata.uid.clone().unwrap_or_default(), p.clone());
                        let _ = tx.send(Some(p)).await;
                    }
                    Ok(watcher::Event::Delete(mut p)) => {
                        known.remove(&p.metadata.uid.clone().unwrap_or_default());
                        // Deleted outright: treat as terminating so the sync loop tears it down.
                        p.metadata.deletion_timestamp.get_or_insert_with(|| {
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                jiff::Timestamp::now(),
                            )
                        });
                        let _ = tx.send(Some(p)).await;
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => tracing::debug!(error = %e, "test kubelet watch error (retrying)"),
                }
            }
        });
        let mut tick = tokio::time::interval(self.config.sync_interval);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(Some(pod)) = rx.recv() => self.observe(pod),
                _ = tick.tick() => {}
            }
            let uids: Vec<String> = self.pods.keys().cloned().collect();
            for uid in uids {
                if let Err(e) = Box::pin(self.sync_pod(&uid)).await {
                    tracing::warn!(error = format!("{e:#}"), uid, "test kubelet sync failed");
                }
            }
        }
        watch_task.abort();
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            if let Some(run) = self.pods.remove(&uid)
                && let Some(id) = run.sandbox
            {
                self.remove_sandbox(&id).await;
            }
            self.remove_volumes(&uid);
        }
    }

    /// Removes the Pod's materialized volumes (Secrets do not outlive their Pod on the node).
    fn remove_volumes(&self, uid: &str) {
        let dir = self.config.volume_root(uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the pod's volumes failed");
        }
    }

    fn observe(&mut self, pod: Pod) {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_ref())
            .is_none()
        {
            return;
        }
        let (_, _, uid) = meta(&pod);
        if let Some(run) = self.pods.get_mut(&uid) {
            run.pod = pod;
            return;
        }
        // A pod first seen while terminating is still tracked, to finish its deletion.
        self.pods.insert(uid, PodRun::new(pod));
    }

    async fn sync_pod(&mut self, uid: &str) -> Result<()> {
        let Some(run) = self.pods.get(uid) else {
            return Ok(());
        };
        if run.pod.metadata.deletion_timestamp.is_some() {
            let run = self.pods.remove(uid).expect("present");
            if let Some(id) = &run.sandbox {
                self.remove_sandbox(id).await;
            }
            self.remove_volumes(uid);
            let (ns, name, uid) = meta(&run.pod);
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e).context("finishing the pod's deletion"),
            }
            return Ok(());
        }
        if let Some(id) = run.sandbox.clone()
            && !self.sandbox_ready(&id).await
        {
            Box::pin(self.replace_lost_sandbox(uid, &id)).await;
        }
        let run = self.pods.get(uid).expect("present");
        if run.sandbox.is_none() && run.retry_at.is_none_or(|t| Instant::now() >= t) {
            Box::pin(self.start_sandbox(uid)).await?;
        }
        Box::pin(self.sync_containers(uid)).await?;
        self.write_status(uid).await
    }

    async fn start_sandbox(&mut self, uid: &str) -> Result<()> {
        let run = self.pods.get_mut(uid).expect("present");
        let (ns, name, pod_uid) = meta(&run.pod);
        let spec = run.pod.spec.clone().unwrap_or_default();
        let class = spec.runtime_class_name.clone().unwrap_or_default();
        let classes: Api<RuntimeClass> = Api::all(self.client.clone());
        let Some(handler) = classes.get_opt(&class).await?.map(|rc| rc.handler) else {
            run.set_waiting(
                &spec,
                "RuntimeClassNotFound",
                &format!("RuntimeClass \"{class}\" not found"),
            );
            return Ok(());
        };
        // As kubelet: volumes are set up before the sandbox; until they are, the Pod stays in
        // ContainerCreating with the mount failure as its containers' message.
        match volumes::materialize(&self.client, &run.pod, &self.config.volume_root(uid)).await {
            Ok(dirs) => run.volumes = dirs,
            Err(message) => {
                tracing::warn!(pod = format!("{ns}/{name}"), message, "FailedMount");
                run.set_waiting(&spec, "ContainerCreating", &message);
                return Ok(());
            }
        }
        let log_dir = self
            .config
            .log_root()
            .join(format!("{ns}_{name}_{pod_uid}"));
        std::fs::create_dir_all(&log_dir)?;
        let annotations: HashMap<String, String> = run
            .pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), ns.clone()),
            ("io.kubernetes.pod.uid".to_owned(), pod_uid.clone()),
        ]);
        let network = if self.config.host_network || spec.host_network == Some(true) {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: pod_uid.clone(),
                namespace: ns.clone(),
                attempt: run.sandbox_attempt,
            }),
            // Host-network sandboxes share the host's UTS namespace: no hostname of their own.
            hostname: if network == cri::NamespaceMode::Node {
                String::new()
            } else {
                name.clone()
            },
            log_directory: log_dir.display().to_string(),
            labels,
            annotations,
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.clone(),
            })
            .await;
        let id = match started {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => {
                // Pending with the reason, as kubelet's FailedCreatePodSandBox; retried later.
                let message = format!("RunPodSandbox with handler {handler:?}: {}", e.message());
                tracing::warn!(pod = format!("{ns}/{name}"), message, "sandbox failed");
                run.set_waiting(&spec, "ContainerCreating", &message);
                return Ok(());
            }
        };
        tracing::info!(
            pod = format!("{ns}/{name}"),
            sandbox = id,
            handler,
            "sandbox running"
        );
        run.sandbox = Some(id);
        run.sandbox_config = Some(config);
        run.start_time = crate::core::now();
        Ok(())
    }

    /// Whether CRI still reports the sandbox ready (a containerd restart that lost its shim leaves
    /// it NOTREADY); an unanswered call counts as ready, to be asked again next time.
    async fn sandbox_ready(&mut self, id: &str) -> bool {
        match self
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .status
                .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32),
            Err(e) => e.code() != tonic::Code::NotFound,
        }
    }

    /// As kubelet does with a sandbox that stopped under it: its containers count as exited (with
    /// what CRI last knew of them) and restarted, and a new sandbox replaces it.
    async fn replace_lost_sandbox(&mut self, uid: &str, id: &str) {
        let containers: Vec<(String, String)> = self.pods[uid]
            .containers
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), c.id.clone()?)))
            .collect();
        let now_ns = jiff::Timestamp::now().as_nanosecond() as i64;
        let mut exits = Vec::new();
        for (name, cid) in containers {
            let status = self
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: cid.clone(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().status);
            let exit = match status {
                Some(st) if st.state == cri::ContainerState::ContainerExited as i32 => terminated(
                    st.exit_code,
                    if st.reason.is_empty() {
                        "Error"
                    } else {
                        &st.reason
                    },
                    &st.message,
                    st.started_at,
                    st.finished_at,
                    &cid,
                ),
                st => terminated(
                    137,
                    "ContainerLost",
                    "the pod sandbox stopped under the container",
                    st.map_or(0, |s| s.started_at),
                    now_ns,
                    &cid,
                ),
            };
            exits.push((name, exit));
        }
        self.remove_sandbox(id).await;
        let run = self.pods.get_mut(uid).expect("present");
        let (ns, name, _) = meta(&run.pod);
        tracing::warn!(
            pod = format!("{ns}/{name}"),
            sandbox = id,
            "pod sandbox is not ready; replacing it"
        );
        run.sandbox = None;
        run.sandbox_config = None;
        run.sandbox_attempt += 1;
        let policy = run
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        for (container, exit) in exits {
            let failed = exit["exitCode"].as_i64() != Some(0);
            let state = run.containers.entry(container).or_default();
            state.id = None;
            state.last_terminated = Some(exit);
            if policy == "Always" || (policy == "OnFailure" && failed) {
                state.restarts += 1;
                state.attempt += 1;
                state.next_try = None;
            } else {
                state.done = true;
            }
        }
    }

    async fn remove_sandbox(&mut self, id: &str) {
        let stop = self
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await;
        let remove = self
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await;
        if let Err(e) = stop.and(remove) {
            tracing::warn!(
                sandbox = id,
                error = e.message(),
                "removing the pod sandbox failed"
            );
        }
    }

    async fn sync_containers(&mut self, uid: &str) -> Result<()> {
        let run = self.pods.get_mut(uid).expect("present");
        let (Some(sandbox), Some(sandbox_config)) =
            (run.sandbox.clone(), run.sandbox_config.clone())
        else {
            return Ok(());
        };
        let spec = run.pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let pod_annotations: HashMap<String, String> = run
            .pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for c in &spec.containers {
            let state = run.containers.entry(c.name.clone()).or_default();
            if state.done || state.next_try.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            if let Some(id) = state.id.clone() {
                let status = self
                    .runtime
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .map_err(|s| anyhow!("ContainerStatus {id}: {}", s.message()))?
                    .into_inner()
                    .status
                    .ok_or_else(|| anyhow!("ContainerStatus {id}: no status"))?;
                if status.state != cri::ContainerState::ContainerExited as i32 {
                    continue;
                }
                let mut message = status.message.clone();
                if message.is_empty()
                    && status.exit_code != 0
                    && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
                {
                    message = log_tail(
                        &PathBuf::from(&sandbox_config.log_directory).join(&c.name),
                        80,
                        2048,
                    );
                }
                let reason = if status.reason.is_empty() {
                    if status.exit_code == 0 {
                        "Completed".to_owned()
                    } else {
                        "Error".to_owned()
                    }
                } else {
                    status.reason.clone()
                };
                state.last_terminated = Some(terminated(
                    status.exit_code,
                    &reason,
                    &message,
                    status.started_at,
                    status.finished_at,
                    &id,
                ));
                let restart =
                    policy == "Always" || (policy == "OnFailure" && status.exit_code != 0);
                if !restart {
                    state.done = true;
                    continue;
                }
                let _ = self
                    .runtime
                    .remove_container(cri::RemoveContainerRequest { container_id: id })
                    .await;
                state.id = None;
                state.restarts += 1;
                state.attempt += 1;
                let backoff = Duration::from_secs(1 << state.restarts.min(5));
                state.next_try = Some(Instant::now() + backoff);
                state.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={}",
                        backoff.as_secs(),
                        c.name
                    ),
                ));
                continue;
            }
            let image = c.image.clone().unwrap_or_default();
            let present = self
                .images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .is_ok_and(|r| r.into_inner().image.is_some());
            if !present {
                let pulled = self
                    .images
                    .pull_image(cri::PullImageRequest {
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = pulled {
                    state.waiting = Some(("ErrImagePull".into(), e.message().to_owned()));
                    state.next_try = Some(Instant::now() + Duration::from_secs(2));
                    continue;
                }
            }
            // A Secret changed since the last attempt shows in the next container, as kubelet's
            // periodic volume resync would have it; a Secret gone meanwhile leaves the last content.
            match volumes::materialize(&self.client, &run.pod, &self.config.volume_root(uid)).await
            {
                Ok(dirs) => run.volumes = dirs,
                Err(message) => tracing::warn!(message, "refreshing the pod's volumes failed"),
            }
            let mounts = c
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|m| {
                    Some(cri::Mount {
                        container_path: m.mount_path.clone(),
                        host_path: run.volumes.get(&m.name)?.display().to_string(),
                        readonly: m.read_only == Some(true),
                        ..Default::default()
                    })
                })
                .collect();
            let config = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: c.name.clone(),
                    attempt: state.attempt,
                }),
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                command: c.command.clone().unwrap_or_default(),
                args: c.args.clone().unwrap_or_default(),
                working_dir: c.working_dir.clone().unwrap_or_default(),
                envs: c
                    .env
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| cri::KeyValue {
                        key: e.name,
                        value: e.value.unwrap_or_default(),
                    })
                    .collect(),
                labels: HashMap::from([(
                    "io.kubernetes.container.name".to_owned(),
                    c.name.clone(),
                )]),
                annotations: pod_annotations.clone(),
                log_path: format!("{}/{}.log", c.name, state.attempt),
                mounts,
                ..Default::default()
            };
            std::fs::create_dir_all(PathBuf::from(&sandbox_config.log_directory).join(&c.name))?;
            let created = self
                .runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config.clone()),
                })
                .await;
            let id = match created {
                Ok(r) => r.into_inner().container_id,
                Err(e) => {
                    state.waiting = Some(("CreateContainerError".into(), e.message().to_owned()));
                    state.next_try = Some(Instant::now() + Duration::from_secs(2));
                    continue;
                }
            };
            if let Err(e) = self
                .runtime
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
            {
                let now_ns = jiff::Timestamp::now().as_nanosecond() as i64;
                state.last_terminated =
                    Some(terminated(128, "StartError", e.message(), 0, now_ns, &id));
                state.id = None;
                let _ = self
                    .runtime
                    .remove_container(cri::RemoveContainerRequest { container_id: id })
                    .await;
                if policy == "Never" {
                    state.done = true;
                } else {
                    // As kubelet does: the container waits in CrashLoopBackOff (not "creating"), so
                    // the Pod's status says it keeps failing.
                    state.restarts += 1;
                    state.attempt += 1;
                    let backoff = Duration::from_secs(1 << state.restarts.min(5));
                    state.next_try = Some(Instant::now() + backoff);
                    state.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={}",
                            backoff.as_secs(),
                            c.name
                        ),
                    ));
                }
                continue;
            }
            state.id = Some(id);
            state.waiting = None;
            state.next_try = None;
        }
        Ok(())
    }

    async fn write_status(&mut self, uid: &str) -> Result<()> {
        let run = self.pods.get(uid).expect("present");
        let spec = run.pod.spec.clone().unwrap_or_default();
        let mut statuses = Vec::new();
        let (mut running, mut succeeded, mut failed) = (0, 0, 0);
        for c in &spec.containers {
            let state = run.containers.get(&c.name);
            let mut current_state = json!({"waiting": {"reason": "ContainerCreating"}});
            let mut container_id = Value::Null;
            if let Some(s) = state {
                if s.done {
                    current_state =
                        json!({"terminated": s.last_terminated.clone().unwrap_or(Value::Null)});
                    container_id = s
                        .last_terminated
                        .as_ref()
                        .and_then(|t| t.get("containerID").cloned())
                        .unwrap_or(Value::Null);
                } else if let Some(id) = &s.id {
                    let status = self
                        .runtime
                        .clone()
                        .container_status(cri::ContainerStatusRequest {
                            container_id: id.clone(),
                            verbose: false,
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().status);
                    container_id = json!(format!("containerd://{id}"));
                    // An exit not yet handled by sync_containers shows up on the next pass.
                    if let Some(st) = status
                        && st.state == cri::ContainerState::ContainerRunning as i32
                    {
                        current_state = json!({"running": {"startedAt": rfc3339(st.started_at)}});
                    }
                } else if let Some((reason, message)) = &s.waiting {
                    current_state = json!({"waiting": {"reason": reason, "message": message}});
                }
            }
            let is_running = current_state.get("running").is_some();
            match (&current_state, state) {
                (st, _) if st.get("running").is_some() => running += 1,
                (st, _) if st.get("terminated").is_some() => {
                    if st.pointer("/terminated/exitCode").and_then(Value::as_i64) == Some(0) {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                }
                _ => {}
            }
            let mut cs = json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": is_running,
                "restartCount": state.map_or(0, |s| s.restarts), "started": is_running,
                "state": current_state,
            });
            if !container_id.is_null() {
                cs["containerID"] = container_id;
            }
            if let Some(last) = state.and_then(|s| {
                if s.done {
                    None
                } else {
                    s.last_terminated.clone()
                }
            }) {
                cs["lastState"] = json!({"terminated": last});
            }
            statuses.push(cs);
        }
        let total = spec.containers.len();
        let phase = if succeeded == total {
            "Succeeded"
        } else if succeeded + failed == total {
            "Failed"
        } else if running > 0
            || succeeded + failed > 0
            || run.containers.values().any(|c| c.restarts > 0)
        {
            "Running"
        } else {
            "Pending"
        };
        let ready = running == total;
        let since = if run.start_time.is_empty() {
            run.seen_at.clone()
        } else {
            run.start_time.clone()
        };
        let cond = |t: &str, ok: bool| {
            json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null,
                   "lastTransitionTime": since})
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [cond("PodScheduled", true), cond("Initialized", true),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": statuses,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "qosClass": "BestEffort",
        });
        if !run.start_time.is_empty() {
            status["startTime"] = json!(run.start_time);
        }
        if run.written.as_ref() == Some(&status) {
            return Ok(());
        }
        let (ns, name, _) = meta(&run.pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let result = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await;
        match result {
            Ok(_) => {
                tracing::debug!(pod = format!("{ns}/{name}"), phase, "pod status written");
                self.pods.get_mut(uid).expect("present").written = Some(status);
                Ok(())
            }
            // Gone meanwhile: the watch will say so.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).context("writing pod status"),
        }
    }
}

impl PodRun {
    /// Every container waits for the same reason (before any of them could be created), and the
    /// next attempt is a little later.
    fn set_waiting(
        &mut self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        reason: &str,
        message: &str,
    ) {
        self.retry_at = Some(Instant::now() + Duration::from_secs(2));
        for c in &spec.containers {
            self.containers.entry(c.name.clone()).or_default().waiting =
                Some((reason.to_owned(), message.to_owned()));
        }
    }

    fn new(pod: Pod) -> Self {
        Self {
            pod,
            sandbox: None,
            sandbox_config: None,
            containers: BTreeMap::new(),
            written: None,
            start_time: String::new(),
            retry_at: None,
            seen_at: crate::core::now(),
            sandbox_attempt: 0,
            volumes: BTreeMap::new(),
        }
    }
}

fn rfc3339(nanos: i64) -> Value {
    if nanos <= 0 {
        return Value::Null;
    }
    jiff::Timestamp::from_nanosecond(i128::from(nanos)).map_or(Value::Null, |t| {
        json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    })
}

fn terminated(
    exit_code: i32,
    reason: &str,
    message: &str,
    started: i64,
    finished: i64,
    id: &str,
) -> Value {
    let mut t = json!({
        "exitCode": exit_code, "reason": reason,
        "startedAt": rfc3339(started), "finishedAt": rfc3339(finished),
        "containerID": format!("containerd://{id}"),
    });
    if !message.is_empty() {
        t["message"] = json!(message);
    }
    t
}

/// The newest `N.log` in a container's log directory.
pub fn latest_log(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let n: u32 = path.file_stem()?.to_str()?.parse().ok()?;
            (path.extension()? == "log").then_some((n, path))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// The text of a CRI log file (`<time> <stream> <P|F> <content>` lines; `P` is a partial line).
pub fn read_cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_cri_log(&text)
}

fn parse_cri_log(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, content) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or_default(),
        );
        out.push_str(content);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// The last lines of a container's newest log, at most `max_bytes` (a termination message).
fn log_tail(container_dir: &Path, lines: usize, max_bytes: usize) -> String {
    let text = latest_log(container_dir)
        .map(|p| read_cri_log(&p))
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    let start = tail.len().saturating_sub(max_bytes);
    let start = (start..tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    tail[start..].to_owned()
}

/// The text a container logged (its newest attempt), or "" if none yet.
pub fn container_log(log_root: &Path, pod: &Pod, container: &str) -> String {
    let (ns, name, uid) = meta(pod);
    latest_log(&log_root.join(format!("{ns}_{name}_{uid}")).join(container))
        .map(|p| read_cri_log(&p))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines() {
        let text = "2026-01-01T00:00:00.1Z stdout F hello\n2026-01-01T00:00:00.2Z stderr P par\n2026-01-01T00:00:00.3Z stderr F tial\n";
        assert_eq!(parse_cri_log(text), "hello\npartial\n");
    }

    #[test]
    fn latest_attempt_wins() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 2, 10] {
            std::fs::write(dir.path().join(format!("{n}.log")), "").unwrap();
        }
        assert_eq!(latest_log(dir.path()).unwrap(), dir.path().join("10.log"));
    }
}
