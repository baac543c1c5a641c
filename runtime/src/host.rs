//! The process-wide host: engine, linkers, caches, epoch ticker; loading programs and starting instances.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Engine, Store};

use crate::cache::{self, CodeCache};
use crate::context::{OpenStdio, Recipe};
use crate::cpu::{CpuAccount, Metered};
use crate::http::{OutgoingPolicy, Server};
use crate::instance::{ExitStatus, FinishGuard, Instance, Shared};
use crate::netns::{NetnsExecutor, NetnsExecutors};
use crate::network::NetPolicy;
use crate::program::{Code, Linkers, Program};
use crate::sandbox::Sandbox;
use crate::state::{ComponentState, MemoryLimiter, ModuleState};
use crate::world::{WorldShared, WorldState};
use crate::{Error, InstanceSpec, ProgramKind, WorldSpec};

/// How the [`Host`] is set up.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Directory for precompiled artifacts (keyed by wasm sha256 + engine compatibility hash).
    /// `None` keeps compiled code only in memory.
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: granularity of kill, deadline and CPU-quota checks (default 10 ms).
    pub epoch_tick: Duration,
    /// Where per-instance private directories (holding granted device nodes and files) are created.
    /// Must be on a filesystem mounted without `nodev` when device nodes are granted.
    /// `None` uses `$TMPDIR/edgewasm-sandboxes`.
    pub sandbox_dir: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            sandbox_dir: None,
        }
    }
}

/// Process-wide wasmtime host: one `Engine`, `Linker`s built once, compile cache, `InstancePre` cache.
///
/// Shared as `Arc<Host>`; every method takes `&self`. [`Host::load`] and [`Host::start`] must be called
/// from within a tokio runtime (instances without a network namespace run on that runtime).
pub struct Host {
    engine: Engine,
    linkers: Arc<Linkers>,
    cache: Option<Arc<CodeCache>>,
    programs: Mutex<HashMap<String, Arc<Program>>>,
    netns: NetnsExecutors,
    sandbox_dir: PathBuf,
    epoch_tick: Duration,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("cache", &self.cache)
            .field("sandbox_dir", &self.sandbox_dir)
            .field("epoch_tick", &self.epoch_tick)
            .finish_non_exhaustive()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Host {
    /// Creates the engine, the linkers and the epoch ticker (one thread per `Host`).
    pub fn new(cfg: HostConfig) -> Result<Arc<Host>, Error> {
        let engine_err = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        let engine = Engine::new(&config).map_err(engine_err)?;
        let linkers = Arc::new(Linkers::new(&engine).map_err(engine_err)?);
        let cache = cfg
            .cache_dir
            .as_deref()
            .map(|dir| {
                CodeCache::open(dir, &engine)
                    .map(Arc::new)
                    .map_err(|source| Error::Io {
                        path: dir.to_path_buf(),
                        source,
                    })
            })
            .transpose()?;
        let epoch_tick = cfg.epoch_tick.max(Duration::from_millis(1));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = Arc::clone(&ticker_stop);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(epoch_tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Arc::new(Host {
            engine,
            linkers,
            cache,
            programs: Mutex::new(HashMap::new()),
            netns: NetnsExecutors::default(),
            sandbox_dir: cfg
                .sandbox_dir
                .unwrap_or_else(crate::context::default_sandbox_dir),
            epoch_tick,
            ticker_stop,
        }))
    }

    /// Loads a `.wasm` file: detects its kind, uses (or fills) the precompiled cache, and checks that
    /// every import is provided ([`Error::MissingImport`] otherwise). Loading the same bytes again
    /// returns the same in-memory [`Program`].
    pub async fn load(&self, wasm: &Path) -> Result<Arc<Program>, Error> {
        let bytes = tokio::fs::read(wasm).await.map_err(|source| Error::Io {
            path: wasm.to_path_buf(),
            source,
        })?;
        self.load_named(wasm.display().to_string(), bytes).await
    }

    /// Same as [`Host::load`] for bytes already in memory (a wasm binary; `wat` text is not accepted).
    pub async fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<Program>, Error> {
        self.load_named("the program".to_string(), bytes.to_vec())
            .await
    }

    async fn load_named(&self, origin: String, bytes: Vec<u8>) -> Result<Arc<Program>, Error> {
        let digest = cache::digest(&bytes);
        if let Some(p) = self.programs.lock().expect("not poisoned").get(&digest) {
            return Ok(Arc::clone(p));
        }
        let engine = self.engine.clone();
        let linkers = Arc::clone(&self.linkers);
        let code_cache = self.cache.clone();
        let key = digest.clone();
        let program = tokio::task::spawn_blocking(move || {
            crate::program::build(
                &engine,
                &linkers,
                code_cache.as_deref(),
                key,
                &origin,
                &bytes,
            )
        })
        .await
        .map_err(|e| Error::Engine(format!("compile task failed: {e}")))??;
        let program = Arc::new(program);
        tracing::debug!(digest, kind = %program.kind, from_cache = program.from_cache, "loaded");
        Ok(Arc::clone(
            self.programs
                .lock()
                .expect("not poisoned")
                .entry(digest)
                .or_insert(program),
        ))
    }

    /// Forgets the in-memory copy of a program (e.g. when no placement uses it any more); instances
    /// already running keep theirs.
    pub fn unload(&self, program: &Program) {
        self.programs
            .lock()
            .expect("not poisoned")
            .remove(&program.digest);
    }

    /// Starts an instance: builds its sandbox from `spec.grants`, opens its stdio, binds its HTTP listener
    /// (for [`ProgramKind::HttpProxy`]) and runs the guest in the background. Errors here are setup
    /// errors (bad grant, unopenable stdio, port in use, bad netns); everything that happens once the guest
    /// runs (traps, out of memory, kill) is reported by [`Instance::wait`].
    pub async fn start(
        &self,
        program: Arc<Program>,
        spec: InstanceSpec,
    ) -> Result<Instance, Error> {
        self.start_with(program, spec, WorldSpec::default()).await
    }

    /// [`Host::start`] with what the instance's device, wasi:config and wasi:keyvalue interfaces serve
    /// besides its grants: workload settings, where its key-value store persists, device credentials.
    pub async fn start_with(
        &self,
        program: Arc<Program>,
        spec: InstanceSpec,
        world: WorldSpec,
    ) -> Result<Instance, Error> {
        let sandbox = Sandbox::build(&self.sandbox_dir, &spec.id, &spec.grants.paths)?;
        let net = Arc::new(NetPolicy::from_grants(&spec.grants.network)?);
        let world = Arc::new(WorldShared::new(
            &spec.grants,
            &spec.env,
            Arc::clone(&net),
            world,
        )?);
        let recipe = Recipe {
            args: spec.args.clone(),
            env: spec.env.clone(),
            sandbox: Arc::new(sandbox),
            net,
            world,
        };
        let shared = Arc::new(Shared::new(
            spec.id.clone(),
            program.kind,
            CpuAccount::new(spec.limits.cpu_millis, self.epoch_tick),
        ));
        let executor = spec
            .netns
            .as_deref()
            .map(|path| self.netns.get(path))
            .transpose()?;
        let handle = match &executor {
            Some(exec) => exec.handle().clone(),
            None => tokio::runtime::Handle::current(),
        };
        let listen = SocketAddr::new(
            spec.http_bind.unwrap_or(if spec.netns.is_some() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }),
            spec.grants.http_port.unwrap_or(0),
        );
        let run = Run {
            engine: self.engine.clone(),
            program,
            recipe,
            spec,
            shared: Arc::clone(&shared),
            listen,
            _executor: executor,
        };
        let (setup_tx, setup_rx) = tokio::sync::oneshot::channel();
        handle.spawn(run.run(setup_tx));
        setup_rx
            .await
            .map_err(|_| Error::Engine("the instance task ended during setup".into()))??;
        tracing::info!(instance = %shared.id, kind = %shared.kind, "started");
        Ok(Instance { shared })
    }
}

/// One instance's task, from setup to exit status.
struct Run {
    engine: Engine,
    program: Arc<Program>,
    recipe: Recipe,
    spec: InstanceSpec,
    shared: Arc<Shared>,
    listen: SocketAddr,
    /// Keeps the network namespace thread alive while the instance runs.
    _executor: Option<Arc<NetnsExecutor>>,
}

type SetupResult = tokio::sync::oneshot::Sender<Result<(), Error>>;

/// A guest ready to run, setup done.
enum Ready {
    Module(Store<ModuleState>),
    Command(Store<ComponentState>),
    Serve(Arc<Server>, tokio::net::TcpListener),
}

impl Run {
    async fn run(self, setup: SetupResult) {
        let guard = FinishGuard(Arc::clone(&self.shared));
        let ready = match self.setup().await {
            Ok(ready) => {
                let _ = setup.send(Ok(()));
                ready
            }
            Err(e) => {
                // Nobody will wait on an instance that failed to start; the guard records it anyway.
                let _ = setup.send(Err(e));
                return;
            }
        };
        let shared = Arc::clone(&self.shared);
        let deadline = self.spec.limits.deadline;
        let guest = async {
            match ready {
                Ready::Module(store) => self.run_module(store).await,
                Ready::Command(store) => self.run_command(store).await,
                Ready::Serve(server, listener) => server.serve(listener).await,
            }
        };
        let status = tokio::select! {
            status = Metered::new(guest, &shared.cpu) => status,
            () = shared.cancel.cancelled() => {
                ExitStatus::killed(shared.stop_signal().unwrap_or(libc::SIGKILL))
            }
            () = sleep_or_forever(deadline) => ExitStatus::deadline(deadline.unwrap_or_default()),
        };
        tracing::info!(instance = %shared.id, code = status.code, reason = ?status.reason, "exited");
        shared.finish(status);
        drop(guard);
    }

    async fn setup(&self) -> Result<Ready, Error> {
        let stdio = OpenStdio::open(&self.spec.stdio)?;
        let builder = || self.recipe.builder(&stdio);
        let limiter = || {
            MemoryLimiter::new(
                self.spec.limits.memory_bytes,
                Arc::clone(&self.shared.memory),
            )
        };
        Ok(match &self.program.code {
            Code::Module(_) => {
                let state = ModuleState {
                    wasi: builder()?.build_p1(),
                    limiter: limiter(),
                };
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limiter);
                self.shared.configure_store(&mut store);
                Ready::Module(store)
            }
            Code::Command(_) => {
                let state = ComponentState {
                    wasi: builder()?.build(),
                    table: wasmtime::component::ResourceTable::new(),
                    http: wasmtime_wasi_http::WasiHttpCtx::new(),
                    outgoing: OutgoingPolicy {
                        net: Arc::clone(&self.recipe.net),
                    },
                    limiter: limiter(),
                    world: WorldState::new(&self.recipe.world),
                };
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limiter);
                self.shared.configure_store(&mut store);
                Ready::Command(store)
            }
            Code::Proxy(pre) => {
                // Fail at start, not at the first request, when the context cannot be built.
                drop(builder()?);
                let listener =
                    tokio::net::TcpListener::bind(self.listen)
                        .await
                        .map_err(|source| Error::Listen {
                            addr: self.listen,
                            source,
                        })?;
                let addr = listener.local_addr().map_err(|source| Error::Listen {
                    addr: self.listen,
                    source,
                })?;
                let _ = self.shared.http_addr.set(addr);
                tracing::info!(instance = %self.shared.id, %addr, "serving HTTP");
                let server = Server {
                    engine: self.engine.clone(),
                    pre: pre.clone(),
                    recipe: self.recipe.clone(),
                    stdio,
                    shared: Arc::clone(&self.shared),
                    memory_limit: self.spec.limits.memory_bytes,
                };
                Ready::Serve(Arc::new(server), listener)
            }
        })
    }

    async fn run_module(&self, mut store: Store<ModuleState>) -> ExitStatus {
        let Code::Module(pre) = &self.program.code else {
            unreachable!("setup matched the code")
        };
        let result = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        }
        .await;
        match result {
            Ok(()) => ExitStatus::exited(0),
            Err(e) => ExitStatus::from_error(&e, &self.shared),
        }
    }

    async fn run_command(&self, mut store: Store<ComponentState>) -> ExitStatus {
        let Code::Command(pre) = &self.program.code else {
            unreachable!("setup matched the code")
        };
        let result = async {
            let command = pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        match result {
            Ok(Ok(())) => ExitStatus::exited(0),
            Ok(Err(())) => ExitStatus::exited(1),
            Err(e) => ExitStatus::from_error(&e, &self.shared),
        }
    }
}

async fn sleep_or_forever(deadline: Option<Duration>) {
    match deadline {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

impl ProgramKind {
    /// Whether instances of this kind are long-running servers rather than run-to-exit programs.
    pub fn is_server(self) -> bool {
        self == ProgramKind::HttpProxy
    }
}
