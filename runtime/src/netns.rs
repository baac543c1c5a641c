//! Executors that live inside a network namespace, one thread per namespace shared by its instances.
//!
//! `setns` switches only the calling thread, and wasi:sockets opens sockets on whatever thread polls the
//! guest. So every instance with a `netns` is polled on a dedicated thread that entered that namespace and
//! runs a current-thread tokio runtime; its blocking pool (DNS lookups, file I/O) is spawned from that thread
//! and inherits the namespace too. All instances of one namespace (one pod) share the thread; it exits when
//! the last of them is gone.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::Error;

/// A tokio runtime running on a thread inside one network namespace.
#[derive(Debug)]
pub(crate) struct NetnsExecutor {
    handle: tokio::runtime::Handle,
    path: PathBuf,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl NetnsExecutor {
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NetnsExecutor {
    fn drop(&mut self) {
        tracing::debug!(netns = %self.path.display(), "stopping network namespace executor");
        if let Some(tx) = self.shutdown.lock().expect("not poisoned").take() {
            let _ = tx.send(());
        }
    }
}

/// The executors of one [`crate::Host`], keyed by namespace inode so two paths naming the same namespace
/// share a thread.
#[derive(Debug, Default)]
pub(crate) struct NetnsExecutors {
    by_ns: Mutex<HashMap<(u64, u64), Weak<NetnsExecutor>>>,
}

impl NetnsExecutors {
    /// The executor for the namespace at `path`, started on first use.
    pub(crate) fn get(&self, path: &Path) -> Result<Arc<NetnsExecutor>, Error> {
        let err = |message: String| Error::Netns {
            path: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let key = (meta.dev(), meta.ino());
        let mut map = self.by_ns.lock().expect("not poisoned");
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let exec = Arc::new(start(path).map_err(err)?);
        map.insert(key, Arc::downgrade(&exec));
        Ok(exec)
    }
}

fn start(path: &Path) -> Result<NetnsExecutor, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let name = format!(
        "netns-{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = ready_tx.send(Err(format!("setns: {e} (the runtime needs CAP_SYS_ADMIN)")));
                return;
            }
            drop(file);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("netns-blocking")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                let _ = shutdown_rx.await;
            });
            // Instances still on this runtime are dropped with it (their stores and sockets go too).
            rt.shutdown_background();
        })
        .map_err(|e| format!("cannot start thread: {e}"))?;
    let handle = ready_rx
        .recv()
        .map_err(|_| "executor thread died".to_string())??;
    tracing::debug!(netns = %path.display(), "started network namespace executor");
    Ok(NetnsExecutor {
        handle,
        path: path.to_path_buf(),
        shutdown: Mutex::new(Some(shutdown_tx)),
    })
}
