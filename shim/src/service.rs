//! containerd's Task API over the containers of this shim process: a thin adapter from ttrpc
//! requests to [`Container`]s and the shared wasmtime [`Host`], publishing task events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use containerd_shim::api::{self as api, Status};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::{
    MessageDyn, MessageField, well_known_types::timestamp::Timestamp,
};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, Task, TtrpcContext, TtrpcResult};
use edgewasm_runtime::{Credentials, Host, HostConfig, InstanceSpec, Stdio, WorldSpec};
use tokio::sync::OnceCell;

use crate::bundle::{BundleSpec, RootfsMount, find_program};
use crate::container::{Container, Exit, Phase, Workload, sandbox_exit_code};

/// The Task service of one shim process; serves every container containerd routes to it.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    host: OnceCell<Arc<Host>>,
    containers: Mutex<HashMap<String, Container>>,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    pid: u32,
    /// Creates in progress (their containers are not in `containers` yet).
    creating: std::sync::atomic::AtomicUsize,
    /// Creates ever started: an idle timer exits only if none started while it waited.
    creates: std::sync::atomic::AtomicU64,
}

/// How long an idle shim waits before it exits: containerd may already have handed this shim's
/// address to a new task whose create has not arrived yet.
const IDLE_EXIT_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Counts one create in progress for as long as it lives.
struct Creating<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Creating<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(id: &str) -> ttrpc::Error {
    status(
        Code::NOT_FOUND,
        format!("container {id} not found in this edgewasm shim"),
    )
}

fn no_exec(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(status(
            Code::UNIMPLEMENTED,
            "edgewasm: exec is not supported (Wasm containers have one process)",
        ))
    }
}

fn timestamp(at: std::time::SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(at))
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                host: OnceCell::new(),
                containers: Mutex::new(HashMap::new()),
                publisher,
                exit,
                pid: std::process::id(),
                creating: std::sync::atomic::AtomicUsize::new(0),
                creates: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide host, created on first use (a shim started only to hand out an existing
    /// socket never builds an engine).
    async fn host(&self) -> TtrpcResult<Arc<Host>> {
        self.inner
            .host
            .get_or_try_init(|| async {
                let config = HostConfig {
                    cache_dir: std::env::var_os("EDGEWASM_CACHE_DIR").map(PathBuf::from),
                    ..HostConfig::default()
                };
                Host::new(config).map_err(|e| {
                    status(
                        Code::INTERNAL,
                        format!("edgewasm: starting the Wasm engine: {e}"),
                    )
                })
            })
            .await
            .cloned()
    }

    /// No container and none being created.
    fn creates(&self) -> u64 {
        self.inner.creates.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn idle(&self) -> bool {
        self.containers().is_empty()
            && self
                .inner
                .creating
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(Context::default(), topic, &self.inner.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "publishing a task event failed");
        }
    }

    async fn publish_exit(&self, id: &str, exit: &Exit) {
        if exit.out_of_memory {
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            )
            .await;
        }
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid: self.inner.pid,
                exit_status: exit.code,
                exited_at: timestamp(exit.at),
                ..Default::default()
            }),
        )
        .await;
    }

    /// Records an exit and publishes it (once), after the reply to the request that caused it.
    async fn finish(&self, id: &str, exit: Exit) {
        let delay = self
            .containers()
            .get(id)
            .map_or(std::time::Duration::ZERO, Container::exit_report_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let recorded = self
            .containers()
            .get_mut(id)
            .is_some_and(|c| c.finish(exit.clone()));
        if recorded {
            tracing::info!(
                container = id,
                code = exit.code,
                message = exit.message.as_deref(),
                "exited"
            );
            self.publish_exit(id, &exit).await;
        }
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> TtrpcResult<Container> {
        let bundle = PathBuf::from(&req.bundle);
        let invalid = |e: &dyn std::fmt::Display| {
            status(
                Code::INVALID_ARGUMENT,
                format!("edgewasm: container {}: {e}", req.id),
            )
        };
        let spec = BundleSpec::read(&bundle).map_err(|e| invalid(&e))?;
        if req.terminal || spec.terminal {
            return Err(invalid(&crate::bundle::BundleError::Terminal));
        }
        let own_netns = format!("/proc/{}/ns/net", self.inner.pid);
        let mut container = if spec.is_sandbox() {
            let mut c = Container::new(req.id.clone(), bundle.clone(), Workload::Sandbox);
            c.netns = spec
                .netns
                .clone()
                .filter(|p| p.as_os_str() != own_netns.as_str());
            c
        } else {
            let grants = spec.grants().map_err(|e| invalid(&e))?;
            let limits = edgewasm_runtime::Limits {
                deadline: spec.timeout().map_err(|e| invalid(&e))?,
                ..spec.limits
            };
            let args0 = spec
                .args
                .first()
                .ok_or_else(|| invalid(&crate::bundle::BundleError::NoProgram))?;
            let mounts: Vec<RootfsMount> = req
                .rootfs
                .iter()
                .map(|m| RootfsMount {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect();
            let wasm = find_program(args0, &mounts, &bundle).map_err(|e| invalid(&e))?;
            let program = self
                .host()
                .await?
                .load(&wasm)
                .await
                .map_err(|e| invalid(&e))?;
            // CRI points a container at its sandbox's namespaces through the sandbox's pid, which
            // here is this shim's own: take the pod's namespace from the sandbox we serve instead.
            let pod_netns = spec.sandbox_id().and_then(|s| {
                self.containers()
                    .get(s)
                    .map(|sandbox| sandbox.netns.clone())
            });
            let netns = match pod_netns {
                Some(netns) => netns,
                None => spec
                    .netns
                    .clone()
                    .filter(|p| p.as_os_str() != own_netns.as_str()),
            };
            let credentials = spec
                .credentials_dir()
                .map(Credentials::from_secret_dir)
                .transpose()
                .map_err(|e| {
                    invalid(&format!(
                        "the device credentials Secret (the workload's spec.deviceCredentials.secretName) \
                         needs the keys username and password: {e}"
                    ))
                })?;
            let keyvalue_dir = spec
                .workload()
                .map_err(|e| invalid(&e))?
                .map(|(ns, name)| state_dir().join("keyvalue").join(ns).join(name));
            let world = WorldSpec {
                credentials,
                keyvalue_dir,
                ..WorldSpec::default()
            };
            let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
            let instance = InstanceSpec {
                id: req.id.clone(),
                args: spec.args.clone(),
                env: spec.env.clone(),
                grants,
                stdio: Stdio {
                    stdin: path(&req.stdin),
                    stdout: path(&req.stdout),
                    stderr: path(&req.stderr),
                },
                limits,
                netns: netns.clone(),
                http_bind: None,
            };
            let mut c = Container::new(
                req.id.clone(),
                bundle.clone(),
                Workload::Wasm {
                    program,
                    spec: instance,
                    world,
                    instance: None,
                },
            );
            c.netns = netns;
            c
        };
        container.stdin.clone_from(&req.stdin);
        container.stdout.clone_from(&req.stdout);
        container.stderr.clone_from(&req.stderr);
        container.sandbox_id = spec.sandbox_id().map(str::to_owned);
        Ok(container)
    }

    /// Finishes a container once the reply to the current request has gone out.
    fn finish_after_reply(&self, id: &str, exit: Exit) {
        if let Some(c) = self.containers().get_mut(id) {
            c.hold_exit_for_reply();
        }
        let service = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move { service.finish(&id, exit).await });
    }

    /// Watches a started instance and reports its exit; the guest's failure message also goes to its
    /// stderr so `ctr` and `kubectl logs` show why it ended.
    fn watch(&self, id: String, instance: edgewasm_runtime::Instance, stderr: ExitMessages) {
        let service = self.clone();
        tokio::spawn(async move {
            let status = instance.wait().await;
            if let Some(message) = status.message.as_deref().filter(|_| !status.success()) {
                let why = if status.reason == edgewasm_runtime::ExitReason::DeadlineExceeded {
                    format!(" (annotation {})", crate::bundle::TIMEOUT_ANNOTATION)
                } else {
                    String::new()
                };
                stderr.write(&format!("edgewasm: {message}{why}\n"));
            }
            drop(stderr);
            service.finish(&id, Exit::from_status(&status)).await;
        });
    }
}

/// Where the shim keeps what outlives a container (each workload's wasi:keyvalue store):
/// `EDGEWASM_STATE_DIR` from containerd's environment, or `/var/lib/edgewasm`.
fn state_dir() -> PathBuf {
    std::env::var_os(crate::STATE_DIR_ENV)
        .map_or_else(|| PathBuf::from("/var/lib/edgewasm"), PathBuf::from)
}

/// The container's stderr, held open by the shim from start until the exit message is written:
/// while the guest's own handle is the only writer, its close would end the reader's copy (EOF)
/// before the message arrives.
struct ExitMessages(Option<std::fs::File>);

impl ExitMessages {
    /// Opens `path` (a fifo or file) for appending without ever blocking; `None` for no stderr.
    fn open(path: &str) -> Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        if path.is_empty() {
            return Self(None);
        }
        Self(
            std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(path)
                .inspect_err(|e| tracing::debug!(path, error = %e, "stderr not writable"))
                .ok(),
        )
    }

    /// Best effort: a reader that went away loses the message.
    fn write(&self, text: &str) {
        use std::io::Write as _;
        if let Some(mut f) = self.0.as_ref() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// A read end of the fifo at `path` (none for a plain file or no path), never read from: it keeps
/// the guest's writes from failing with a closed pipe while containerd, the real reader, restarts.
fn hold_fifo_open(path: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    if path.is_empty() || !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .inspect_err(|e| tracing::warn!(path, error = %e, "holding the fifo open"))
        .ok()
}

fn state_status(phase: Phase) -> Status {
    match phase {
        Phase::Created => Status::CREATED,
        Phase::Running => Status::RUNNING,
        Phase::Stopped => Status::STOPPED,
    }
}

#[async_trait::async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _creating = Creating::new(&self.inner.creating);
        self.inner
            .creates
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let mut container = match self.create_container(&req).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(container = %req.id, error = %e, "create failed");
                return Err(e);
            }
        };
        container.fifo_readers = [&req.stdout, &req.stderr]
            .into_iter()
            .filter_map(|path| hold_fifo_open(path))
            .collect();
        self.containers().insert(req.id.clone(), container);
        crate::log_task_created(std::path::Path::new(&req.bundle));
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: self.inner.pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid: self.inner.pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        no_exec(&req.exec_id)?;
        let (program, spec, world, stderr) = {
            let mut containers = self.containers();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if c.phase() != Phase::Created {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} was already started", req.id),
                ));
            }
            match &c.workload {
                Workload::Sandbox => {
                    c.set_running();
                    (None, None, WorldSpec::default(), String::new())
                }
                Workload::Wasm {
                    program,
                    spec,
                    world,
                    ..
                } => (
                    Some(program.clone()),
                    Some(spec.clone()),
                    world.clone(),
                    c.stderr.clone(),
                ),
            }
        };
        if let (Some(program), Some(spec)) = (program, spec) {
            let stderr = ExitMessages::open(&stderr);
            let instance = match self.host().await?.start_with(program, spec, world).await {
                Ok(i) => i,
                Err(e) => {
                    let message = format!("edgewasm: starting {}: {e}", req.id);
                    stderr.write(&format!("{message}\n"));
                    self.finish_after_reply(&req.id, Exit::now(128, Some(message.clone())));
                    return Err(status(Code::FAILED_PRECONDITION, message));
                }
            };
            {
                let mut containers = self.containers();
                let Some(c) = containers.get_mut(&req.id) else {
                    instance.kill(9);
                    return Err(not_found(&req.id));
                };
                if let Workload::Wasm { instance: slot, .. } = &mut c.workload {
                    *slot = Some(instance.clone());
                }
                c.set_running();
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: self.inner.pid,
                    ..Default::default()
                }),
            )
            .await;
            self.watch(req.id.clone(), instance, stderr);
        } else {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: self.inner.pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        tracing::info!(container = %req.id, "started");
        Ok(api::StartResponse {
            pid: self.inner.pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let containers = self.containers();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let exit = c.exit();
        Ok(api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: self.inner.pid,
            status: state_status(c.phase()).into(),
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map_or_else(MessageField::none, |e| timestamp(e.at)),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        let finish_now = {
            let mut containers = self.containers();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if req.signal == 0 {
                return if c.phase() == Phase::Stopped {
                    Err(status(Code::NOT_FOUND, "process already finished"))
                } else {
                    Ok(api::Empty::default())
                };
            }
            if c.phase() == Phase::Stopped {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            c.hold_exit_for_reply();
            match &c.workload {
                Workload::Sandbox => Some(sandbox_exit_code(req.signal)),
                Workload::Wasm {
                    instance: Some(i), ..
                } => {
                    i.kill(req.signal as i32);
                    None
                }
                Workload::Wasm { instance: None, .. } => Some(128 + req.signal),
            }
        };
        if let Some(code) = finish_now {
            self.finish_after_reply(&req.id, Exit::now(code, None));
        }
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        no_exec(&req.exec_id)?;
        let mut rx = self
            .containers()
            .get(&req.id)
            .map(Container::exit_watch)
            .ok_or_else(|| not_found(&req.id))?;
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| not_found(&req.id))?
            .clone()
            .expect("waited for Some");
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        no_exec(&req.exec_id)?;
        let exit = {
            let mut containers = self.containers();
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if c.phase() == Phase::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is running; kill it first", req.id),
                ));
            }
            let exit = c.exit().unwrap_or_else(|| Exit::now(0, None));
            crate::log_task_deleted(&c.bundle);
            containers.remove(&req.id);
            exit
        };
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: self.inner.pid,
                exit_status: exit.code,
                exited_at: timestamp(exit.at),
                ..Default::default()
            }),
        )
        .await;
        tracing::info!(container = %req.id, "deleted");
        Ok(api::DeleteResponse {
            pid: self.inner.pid,
            exit_status: exit.code,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        if !self.containers().contains_key(&req.id) {
            return Err(not_found(&req.id));
        }
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::types::task::ProcessInfo {
                pid: self.inner.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
        };
        let (stats, limit) = {
            let containers = self.containers();
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            match &c.workload {
                Workload::Wasm { instance, spec, .. } => (
                    instance
                        .as_ref()
                        .map(edgewasm_runtime::Instance::stats)
                        .unwrap_or_default(),
                    spec.limits.memory_bytes.unwrap_or(0),
                ),
                Workload::Sandbox => (edgewasm_runtime::InstanceStats::default(), 0),
            }
        };
        let metrics = Metrics {
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: stats.memory_bytes,
                    limit,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: stats.cpu_time.as_nanos() as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| status(Code::INTERNAL, format!("encoding stats: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: self.inner.pid,
            task_pid: self.inner.pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // containerd asks every time one of its tasks is deleted; the shim is shared, so it exits only
        // when no container is left, and only if none arrived while it waited.
        // Idle at the end is not enough: between one task's delete and the next one's create (tasks
        // run back to back) the shim is idle for a moment, and a timer firing then would exit under a
        // task containerd is about to create. It must have stayed idle the whole time.
        if self.idle() {
            let service = self.clone();
            let creates = self.creates();
            tokio::spawn(async move {
                tokio::time::sleep(IDLE_EXIT_AFTER).await;
                if service.idle() && service.creates() == creates {
                    tracing::info!("no containers left; shutting down");
                    service.inner.exit.signal();
                }
            });
        }
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // stdin end-of-file reaches the guest through the fifo itself.
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "edgewasm: exec is not supported (Wasm containers have one process)",
        ))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "edgewasm: checkpoint is not supported",
        ))
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "edgewasm: pause is not supported",
        ))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "edgewasm: resume is not supported",
        ))
    }
}
