//! The wasmtime host shared by the shim and standalone mode: runs a component with only what it was granted.
//!
//! One [`Host`] per process owns the wasmtime `Engine` (epoch interruption, memory limiter), the `Linker`s
//! (built once), the on-disk precompiled cache and an in-memory cache of `InstancePre`s. [`Host::load`]
//! turns a `.wasm` file into a [`Program`] (its [`ProgramKind`] detected from the binary), and
//! [`Host::start`] runs it as an [`Instance`] described by an [`InstanceSpec`]: args, env, stdio files,
//! [`Limits`], an optional network namespace and the [`Grants`] that say what it may reach.
//!
//! Least privilege: the guest sees only the granted paths (a device node such as `/dev/video0` appears at
//! its guest path inside a private directory; nothing else from the host is visible), may connect only to
//! the granted network peers (wasi:sockets address checks, an allowlist for outgoing wasi:http), and gets a
//! WASI error for anything else, never the host resource.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgewasm_runtime::Error> {
//! use edgewasm_runtime::{Host, HostConfig, InstanceSpec};
//! let host = Host::new(HostConfig::default())?;
//! let program = host.load("app.wasm".as_ref()).await?;
//! let instance = host.start(program, InstanceSpec::new("demo")).await?;
//! let status = instance.wait().await;
//! println!("exit code {}", status.code);
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use edgewasm_api::Grants;

/// Process-wide wasmtime host: one `Engine`, `Linker`s built once, compile cache, `InstancePre` cache.
///
/// Cheap to share (`Arc<Host>`); every method takes `&self`. Must be used from within a tokio runtime.
pub struct Host {
    _private: (),
}

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

impl Host {
    /// Creates the engine, the linkers and the epoch ticker (one thread per `Host`).
    pub fn new(cfg: HostConfig) -> Result<Arc<Host>, Error> {
        let _ = cfg;
        todo!()
    }

    /// Loads a `.wasm` file: detects its kind, uses (or fills) the precompiled cache, and validates that
    /// every import is provided ([`Error::MissingImport`] otherwise). Repeated loads of the same bytes
    /// return the same in-memory [`Program`].
    pub async fn load(&self, wasm: &Path) -> Result<Arc<Program>, Error> {
        let _ = wasm;
        todo!()
    }

    /// Same as [`Host::load`] for bytes already in memory (wasm binary; `wat` text is not accepted).
    pub async fn load_bytes(&self, bytes: &[u8]) -> Result<Arc<Program>, Error> {
        let _ = bytes;
        todo!()
    }

    /// Starts an instance: builds its sandbox from `spec.grants`, opens its stdio, binds its HTTP listener
    /// (for [`ProgramKind::HttpProxy`]) and runs the guest in the background. Errors here are setup
    /// errors (bad grant, unopenable stdio, port in use, bad netns); everything that happens once the guest
    /// runs (traps, out of memory, kill) is reported by [`Instance::wait`].
    pub async fn start(&self, program: Arc<Program>, spec: InstanceSpec) -> Result<Instance, Error> {
        let _ = (program, spec);
        todo!()
    }
}

/// A compiled, link-checked program, ready to be started many times.
pub struct Program {
    _private: (),
}

impl Program {
    /// What kind of Wasm this is.
    pub fn kind(&self) -> ProgramKind {
        todo!()
    }

    /// Hex sha256 of the wasm bytes (the cache key's first half).
    pub fn digest(&self) -> &str {
        todo!()
    }

    /// Whether the compiled code came from the on-disk cache rather than a fresh compile.
    pub fn from_cache(&self) -> bool {
        todo!()
    }
}

/// The kinds of Wasm a user can bring, detected from the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// A core module importing `wasi_snapshot_preview1` (or nothing) and exporting `_start`.
    Preview1Module,
    /// A component exporting `wasi:cli/run` (the `wasi:cli/command` world).
    CliCommand,
    /// A component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world), served over HTTP.
    HttpProxy,
}

/// Everything one instance needs besides its program.
#[derive(Clone, Debug, Default)]
pub struct InstanceSpec {
    /// Identifier used in logs and errors (container id, placement name).
    pub id: String,
    /// Guest argv, `args[0]` included (conventionally the program name).
    pub args: Vec<String>,
    /// Guest environment; nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    /// What the guest may reach.
    pub grants: Grants,
    /// Where stdin/stdout/stderr go.
    pub stdio: Stdio,
    /// Memory, CPU and wall-clock limits.
    pub limits: Limits,
    /// Run networking (wasi:sockets, outgoing wasi:http, the HTTP listener) inside this network namespace
    /// (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`). `None` uses the process's own namespace.
    pub netns: Option<PathBuf>,
    /// Address the HTTP listener of a [`ProgramKind::HttpProxy`] binds to (port from
    /// `grants.http_port`, 0 = any free port, see [`Instance::http_addr`]). `None` means `0.0.0.0` inside
    /// a `netns` and `127.0.0.1` without one.
    pub http_bind: Option<IpAddr>,
}

impl InstanceSpec {
    /// A spec with the given id, `args = [id]`, and nothing granted.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            args: vec![id.clone()],
            id,
            ..Self::default()
        }
    }
}

/// Guest stdio: each `Some(path)` is a file or fifo the runtime opens (stdout/stderr: created if
/// missing, appended to); `None` is a null device (empty stdin, discarded output).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// Resource limits of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory + table bytes; growing past it ends the instance with
    /// [`ExitReason::OutOfMemory`] (for an HTTP proxy: that request fails with 500).
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicores (500 = half a core), enforced by time slicing at epoch ticks.
    pub cpu_millis: Option<u64>,
    /// Wall-clock limit from start; exceeding it ends the instance with [`ExitReason::DeadlineExceeded`].
    pub deadline: Option<Duration>,
}

/// A running (or finished) instance. Cheap to clone; all clones refer to the same instance.
#[derive(Clone)]
pub struct Instance {
    _private: Arc<()>,
}

impl Instance {
    /// The id from [`InstanceSpec::id`].
    pub fn id(&self) -> &str {
        todo!()
    }

    /// The kind of program this instance runs.
    pub fn kind(&self) -> ProgramKind {
        todo!()
    }

    /// Asks the instance to stop with `signal` (any non-zero signal stops it: Wasm has no signal
    /// handlers). Takes effect within a few epoch ticks, also for a guest in a busy loop or blocked in a
    /// host call. Signal 0 only checks liveness. Returns whether the instance was still running.
    pub fn kill(&self, signal: i32) -> bool {
        let _ = signal;
        todo!()
    }

    /// Waits until the instance has finished.
    pub async fn wait(&self) -> ExitStatus {
        todo!()
    }

    /// Blocking version of [`Instance::wait`] for non-async callers (do not call on a tokio worker).
    pub fn wait_blocking(&self) -> ExitStatus {
        todo!()
    }

    /// The exit status if the instance has finished.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        todo!()
    }

    /// When [`Host::start`] started it.
    pub fn started_at(&self) -> SystemTime {
        todo!()
    }

    /// The address the HTTP listener is bound to ([`ProgramKind::HttpProxy`] only).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        todo!()
    }

    /// Current resource usage.
    pub fn stats(&self) -> InstanceStats {
        todo!()
    }
}

/// Resource usage of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Linear memory + tables currently allocated by the guest (for an HTTP proxy: summed over the
    /// requests in flight).
    pub memory_bytes: u64,
    /// CPU time the guest has used so far.
    pub cpu_time: Duration,
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Conventional exit code: 0 or the guest's exit code; 128+signal when killed; 137 on out of memory;
    /// 134 on a trap (like an abort); 124 when the deadline passed (like `timeout(1)`).
    pub code: i32,
    pub reason: ExitReason,
    /// User-facing explanation (e.g. the trap with the guest backtrace), `None` for a plain exit.
    pub message: Option<String>,
}

/// Why an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest returned from `_start`/`run` or called `exit`.
    Exited,
    /// The guest trapped (unreachable, out-of-bounds, panic, ...), or failed to instantiate.
    Trapped,
    /// The guest tried to grow its memory past [`Limits::memory_bytes`].
    OutOfMemory,
    /// [`Instance::kill`] was called.
    Killed { signal: i32 },
    /// [`Limits::deadline`] passed.
    DeadlineExceeded,
}

/// Errors from loading or starting a program; each names what the user can fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a WebAssembly binary at all.
    #[error("{origin} is not a WebAssembly binary: {reason}")]
    NotWasm { origin: String, reason: String },
    /// A WebAssembly binary that does not validate (e.g. truncated).
    #[error("{origin} is not a valid WebAssembly binary: {message}")]
    InvalidWasm { origin: String, message: String },
    /// A valid binary whose world edgewasm cannot run.
    #[error(
        "{origin} targets an unknown WASI world: {detail} (supported: WASI preview 1 modules, wasi:cli/command and wasi:http/proxy components)"
    )]
    UnknownWorld { origin: String, detail: String },
    /// The program imports something the host does not provide.
    #[error("{origin} imports `{name}`, which edgewasm does not provide")]
    MissingImport { origin: String, name: String },
    /// Compilation failed.
    #[error("failed to compile {origin}: {message}")]
    Compile { origin: String, message: String },
    /// A file the runtime had to read or write.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A grant that cannot be honoured (bad path, unparsable network peer, conflicting guest paths).
    #[error("invalid grant {grant}: {reason}")]
    InvalidGrant { grant: String, reason: String },
    /// The network namespace cannot be entered.
    #[error("network namespace {}: {message}", path.display())]
    Netns { path: PathBuf, message: String },
    /// The HTTP listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("wasmtime engine: {0}")]
    Engine(String),
}
