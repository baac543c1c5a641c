//! containerd-shim-edgewasm-v1: a containerd runtime (`io.containerd.edgewasm.v1`) that runs Pods'
//! Wasm components in-process, many containers and pods per shim process, on one wasmtime host.
//!
//! - [`bundle`]: what a container's OCI bundle asks for (program, args, env, grants, limits and the
//!   `edgewasm.io/timeout-seconds` deadline, netns).
//! - [`container`]: one container's lifecycle and exit.
//! - [`service`]: containerd's Task API over the containers, publishing task events.
//! - [`shim`]: the shim v2 bootstrap and how containers are grouped into shim processes.
//!
//! Logs go to containerd's log (through the first task's log fifo) or, with
//! `EDGEWASM_SHIM_LOG_FILE` in containerd's environment, to `<file>.<pid>` for as long as the
//! shared shim lives.
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
/// containerd's per-task log fifo, which a shared shim loses once the task that started it is
/// deleted: each shim process appends to `<value>.<pid>`.
pub const LOG_FILE_ENV: &str = "EDGEWASM_SHIM_LOG_FILE";
/// Environment variable (from containerd's environment) naming the folder where workloads' key-value
/// stores are kept, `<dir>/keyvalue/<namespace>/<workload>`; default `/var/lib/edgewasm`.
pub const STATE_DIR_ENV: &str = "EDGEWASM_STATE_DIR";

/// Sends tracing output to the `log` fifo containerd opened in the bundle directory (it copies it
/// into its own log), or to the file `EDGEWASM_SHIM_LOG_FILE` names, or nowhere.
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
    let Some(out) = file.or_else(|| std::fs::OpenOptions::new().write(true).open("log").ok())
    else {
        return;
    };
    let filter = EnvFilter::try_from_env("EDGEWASM_SHIM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(out))
        .try_init();
    // The shim's stderr is /dev/null: a panic must at least reach the log.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(pid = std::process::id(), "shim panicked: {info}");
    }));
}
