//! containerd-shim-edgewasm-v1: a containerd runtime (`io.containerd.edgewasm.v1`) that runs Pods'
//! Wasm components in-process, many containers and pods per shim process, on one wasmtime host.
//!
//! - [`bundle`]: what a container's OCI bundle asks for (program, args, env, grants, limits, netns).
//! - [`container`]: one container's lifecycle and exit.
//! - [`service`]: containerd's Task API over the containers, publishing task events.
//! - [`shim`]: the shim v2 bootstrap and how containers are grouped into shim processes.
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

/// Sends tracing output to the `log` fifo containerd opened in the bundle directory (it copies it
/// into its own log), or nowhere when there is none.
fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let Ok(fifo) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    let filter = EnvFilter::try_from_env("EDGEWASM_SHIM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(fifo))
        .try_init();
}
