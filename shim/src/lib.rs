//! containerd-shim-edgewasm-v1: a containerd runtime (`io.containerd.edgewasm.v1`) that runs Pods'
//! Wasm components in-process, many containers and pods per shim process, on one wasmtime host.
//!
//! - [`bundle`]: what a container's OCI bundle asks for (program, args, env, grants, limits and the
//!   `edgewasm.io/timeout-seconds` deadline, netns).
//! - [`container`]: one container's lifecycle and exit.
//! - [`service`]: containerd's Task API over the containers, publishing task events.
//! - [`shim`]: the shim v2 bootstrap and how containers are grouped into shim processes.
//!
//! Logs go to containerd's log (through the log fifo of a live task; a shared shim moves to another
//! task's when the one it used is deleted) or, with `EDGEWASM_SHIM_LOG_FILE` in containerd's
//! environment, to `<file>.<pid>` for as long as the shared shim lives.
//!
//! Installing it into containerd or k3s (the `config.toml` runtime entry with
//! `pod_annotations = ["edgewasm.io/*"]`) is done by the node installer in `installer/`.

pub mod bundle;
pub mod container;
pub mod service;
pub mod shim;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.edgewasm.v1";

/// Runs the shim binary (all of `main`).
pub async fn run() {
    containerd_shim::asynchronous::run::<shim::EdgewasmShim>(RUNTIME_TYPE, None).await;
}

/// Environment variable (in containerd's environment) naming a log file for the shim instead of
/// containerd's per-task log fifos: each shim process appends to `<value>.<pid>`.
pub const LOG_FILE_ENV: &str = "EDGEWASM_SHIM_LOG_FILE";
/// Environment variable (from containerd's environment) naming the folder where workloads' key-value
/// stores are kept, `<dir>/keyvalue/<namespace>/<workload>`; default `/var/lib/edgewasm`.
pub const STATE_DIR_ENV: &str = "EDGEWASM_STATE_DIR";

/// Where the shim's log goes: a file (`EDGEWASM_SHIM_LOG_FILE`), or the `log` fifo of a live task.
///
/// containerd opens a `log` fifo in every task's bundle and copies it into its own log until that task
/// is deleted. A shared shim starts with the fifo of the task that started it and, when that task is
/// deleted, moves on to the fifo of another live task, so its log keeps reaching containerd.
#[derive(Default)]
struct LogTarget {
    out: Option<std::fs::File>,
    /// The bundle whose fifo `out` is; `None` for a file or nothing.
    bundle: Option<std::path::PathBuf>,
    /// Live tasks' bundles, oldest first.
    live: Vec<std::path::PathBuf>,
    follows_tasks: bool,
}

static LOG: std::sync::Mutex<Option<LogTarget>> = std::sync::Mutex::new(None);

fn log_target() -> std::sync::MutexGuard<'static, Option<LogTarget>> {
    LOG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_fifo(bundle: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        // containerd holds the fifo open read-write, so this never blocks; without it, never hang.
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(bundle.join("log"))
        .ok()
}

/// `path` with symlinks resolved (`/var/run` and `/run` name the same bundle), else as given.
fn canonical(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A task was created in `bundle`: its log fifo can carry the shim's log.
pub fn log_task_created(bundle: &std::path::Path) {
    let bundle = canonical(bundle);
    let mut guard = log_target();
    let Some(t) = guard.as_mut().filter(|t| t.follows_tasks) else {
        return;
    };
    t.live.retain(|b| *b != bundle);
    if t.out.is_none() {
        t.out = open_fifo(&bundle);
        t.bundle = t.out.as_ref().map(|_| bundle.clone());
    }
    t.live.push(bundle);
}

/// The task in `bundle` was deleted: containerd stops reading its fifo, so the log moves to the
/// newest live task's.
pub fn log_task_deleted(bundle: &std::path::Path) {
    let bundle = &canonical(bundle);
    let mut guard = log_target();
    let Some(t) = guard.as_mut().filter(|t| t.follows_tasks) else {
        return;
    };
    t.live.retain(|b| b != bundle);
    if t.bundle.as_deref() == Some(bundle) {
        t.out = None;
        t.bundle = None;
        while let Some(next) = t.live.last().cloned() {
            if let Some(f) = open_fifo(&next) {
                t.out = Some(f);
                t.bundle = Some(next);
                break;
            }
            t.live.pop();
        }
    }
}

/// The tracing writer: whatever [`LogTarget`] points at now.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(out) = log_target().as_mut().and_then(|t| t.out.as_mut()) {
            // A full or closed fifo loses the line, never blocks the shim.
            let _ = out.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends tracing output to the file `EDGEWASM_SHIM_LOG_FILE` names, or to the `log` fifo of a live
/// task (see [`LogTarget`]).
fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let file = std::env::var_os(LOG_FILE_ENV).and_then(|path| {
        let mut path = std::path::PathBuf::from(path).into_os_string();
        path.push(format!(".{}", std::process::id()));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    // The shim runs in the bundle of the task that started it.
    let cwd = std::env::current_dir().ok().map(|d| canonical(&d));
    let target = if let Some(f) = file {
        LogTarget {
            out: Some(f),
            ..LogTarget::default()
        }
    } else {
        let out = cwd.as_deref().and_then(open_fifo);
        LogTarget {
            bundle: out.as_ref().and(cwd),
            out,
            live: Vec::new(),
            follows_tasks: true,
        }
    };
    *log_target() = Some(target);
    let filter = EnvFilter::try_from_env("EDGEWASM_SHIM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .try_init();
    // The shim's stderr is /dev/null: a panic must at least reach the log.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(pid = std::process::id(), "shim panicked: {info}");
    }));
}
