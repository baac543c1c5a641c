//! The shim v2 bootstrap: which shim process serves a new container (`start`), cleanup after a
//! dead shim (`delete`), and serving the Task API until the last container is gone.
//!
//! Grouping: every container of a containerd namespace goes to one shared shim process (one wasmtime
//! Engine and code cache for all pods) unless its pod carries `edgewasm.io/isolated-shim: "true"`,
//! which gives the pod a shim of its own. Failure isolation in the shared shim: a guest trap,
//! out-of-memory or deadline ends only that instance (a failed task with a message); the shim itself
//! never runs guest code outside wasmtime's sandbox. What a shared shim cannot isolate is a bug in the
//! shim or runtime that kills the process: containerd then reports every task of that shim as exited
//! (137) and CRI restarts the pods; pods that need that isolation opt into their own shim.

use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::{ExitSignal, Shim, spawn};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};

use crate::bundle::BundleSpec;
use crate::service::Service;

/// The shim process.
pub struct EdgewasmShim {
    namespace: String,
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait::async_trait]
impl Shim for EdgewasmShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // Logs go through tracing to containerd's per-shim log fifo (see `crate::init_logging`).
        config.no_setup_logger = true;
        if args.action.is_empty() && !args.socket.is_empty() {
            crate::init_logging(args.debug);
        }
        Self {
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // containerd runs `start` in the new container's bundle directory.
        let bundle =
            std::env::current_dir().map_err(|e| Error::Other(format!("bundle directory: {e}")))?;
        let group = BundleSpec::read(&bundle)
            .map(|spec| spec.shim_group())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let address = spawn(opts, &group, Vec::new()).await?;
        write_address(&bundle, &address)
            .map_err(|e| Error::Other(format!("writing {}/address: {e}", bundle.display())))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The shim serving this container died; nothing was mounted or spawned outside it.
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(std::time::SystemTime::now().into()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // Unlink the socket before the server stops, so the next container gets a new shim at once
        // instead of probing a dead socket (the framework removes it only through the first task's
        // bundle directory, which is gone by now).
        if let Some(path) = self.socket.strip_prefix("unix://")
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path, error = %e, "removing the shim socket");
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

/// Records the shim's socket in the bundle's `address` file, from which a restarted containerd
/// reconnects to the task (runtime v2 `loadShim`). The framework writes it only when the socket
/// already served other tasks, so without this the task that started a shim process would be lost
/// on a containerd restart (reported as exited and cleaned up while its instance still runs).
/// Written atomically: containerd may read it at any time.
fn write_address(bundle: &std::path::Path, address: &str) -> std::io::Result<()> {
    let tmp = bundle.join(".address.tmp");
    std::fs::write(&tmp, address)?;
    std::fs::rename(&tmp, bundle.join("address"))
}
