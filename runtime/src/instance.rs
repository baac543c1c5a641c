//! A running instance: its shared state, how it is stopped, and how a guest's end becomes an [`ExitStatus`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wasmtime::{Store, UpdateDeadline};

use crate::ProgramKind;
use crate::cpu::CpuAccount;
use crate::state::OutOfMemory;

/// A running (or finished) instance. Cheap to clone; all clones refer to the same instance.
#[derive(Clone)]
pub struct Instance {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.shared.id)
            .field("kind", &self.shared.kind)
            .field("status", &self.try_wait())
            .finish_non_exhaustive()
    }
}

/// Resource usage of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Linear memory currently allocated by the guest (for an HTTP proxy: summed over the requests in
    /// flight).
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
    /// The guest tried to grow its memory past [`crate::Limits::memory_bytes`].
    OutOfMemory,
    /// [`Instance::kill`] was called.
    Killed { signal: i32 },
    /// [`crate::Limits::deadline`] passed.
    DeadlineExceeded,
}

impl ExitStatus {
    pub(crate) fn exited(code: i32) -> Self {
        Self {
            code,
            reason: ExitReason::Exited,
            message: None,
        }
    }

    pub(crate) fn killed(signal: i32) -> Self {
        Self {
            code: 128 + signal,
            reason: ExitReason::Killed { signal },
            message: Some(format!("killed by signal {signal}")),
        }
    }

    pub(crate) fn deadline(after: Duration) -> Self {
        Self {
            code: 124,
            reason: ExitReason::DeadlineExceeded,
            message: Some(format!("deadline of {after:?} exceeded")),
        }
    }

    pub(crate) fn failed(message: String) -> Self {
        Self {
            code: 134,
            reason: ExitReason::Trapped,
            message: Some(message),
        }
    }

    /// Whether the instance succeeded (exit code 0).
    pub fn success(&self) -> bool {
        self.code == 0 && self.reason == ExitReason::Exited
    }

    /// Maps the error that ended a guest call.
    pub(crate) fn from_error(err: &wasmtime::Error, shared: &Shared) -> Self {
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Self::exited(exit.0);
        }
        if let Some(oom) = err.downcast_ref::<OutOfMemory>() {
            return Self {
                code: 137,
                reason: ExitReason::OutOfMemory,
                message: Some(oom.to_string()),
            };
        }
        if err.downcast_ref::<Stopped>().is_some()
            && let Some(signal) = shared.stop_signal()
        {
            return Self::killed(signal);
        }
        Self::failed(format!("guest trapped: {err:?}"))
    }
}

/// Raised from the epoch callback to unwind a guest that was asked to stop.
#[derive(Debug, thiserror::Error)]
#[error("instance stopped")]
pub(crate) struct Stopped;

/// State shared by an [`Instance`] handle and the task running it.
pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) kind: ProgramKind,
    pub(crate) started_at: SystemTime,
    /// 0 while running; the signal once stopped.
    stop: AtomicI32,
    pub(crate) cancel: CancellationToken,
    status: watch::Sender<Option<ExitStatus>>,
    pub(crate) memory: Arc<AtomicU64>,
    pub(crate) cpu: CpuAccount,
    pub(crate) http_addr: std::sync::OnceLock<SocketAddr>,
}

impl Shared {
    pub(crate) fn new(id: String, kind: ProgramKind, cpu: CpuAccount) -> Self {
        Self {
            id,
            kind,
            started_at: SystemTime::now(),
            stop: AtomicI32::new(0),
            cancel: CancellationToken::new(),
            status: watch::Sender::new(None),
            memory: Arc::new(AtomicU64::new(0)),
            cpu,
            http_addr: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn stop_signal(&self) -> Option<i32> {
        match self.stop.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    /// Records the final status (first one wins) and wakes waiters.
    pub(crate) fn finish(&self, status: ExitStatus) {
        self.status.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            *s = Some(status);
            true
        });
        self.cancel.cancel();
    }

    /// Epoch handling for a store of this instance: yield every tick (so CPU quota, kill and deadline are
    /// checked), unwind once stopped.
    pub(crate) fn configure_store<T: Send>(self: &Arc<Self>, store: &mut Store<T>) {
        store.set_epoch_deadline(1);
        let shared = Arc::clone(self);
        store.epoch_deadline_callback(move |_| {
            if shared.stop_signal().is_some() {
                Err(wasmtime::Error::new(Stopped))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }
}

/// Marks the instance failed if its task ends without a status (panic, executor shut down).
pub(crate) struct FinishGuard(pub(crate) Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if self.0.status.borrow().is_none() {
            let status = match self.0.stop_signal() {
                Some(signal) => ExitStatus::killed(signal),
                None => ExitStatus::failed(
                    "the runtime task running the instance ended unexpectedly".into(),
                ),
            };
            self.0.finish(status);
        }
    }
}

impl Instance {
    /// The id from [`crate::InstanceSpec::id`].
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The kind of program this instance runs.
    pub fn kind(&self) -> ProgramKind {
        self.shared.kind
    }

    /// Asks the instance to stop with `signal` (any non-zero signal stops it: Wasm has no signal
    /// handlers). Takes effect within about one epoch tick, also for a guest in a busy loop or waiting in
    /// a host call. Signal 0 only checks liveness. Returns whether the instance was still running.
    pub fn kill(&self, signal: i32) -> bool {
        if self.shared.status.borrow().is_some() {
            return false;
        }
        if signal != 0 {
            let _ =
                self.shared
                    .stop
                    .compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire);
            tracing::debug!(instance = %self.shared.id, signal, "kill");
            self.shared.cancel.cancel();
        }
        true
    }

    /// Waits until the instance has finished.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.shared.status.subscribe();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in Shared, which we hold");
        status.clone().expect("waited for Some")
    }

    /// Blocking version of [`Instance::wait`] for non-async callers (do not call on a tokio worker).
    pub fn wait_blocking(&self) -> ExitStatus {
        futures::executor::block_on(self.wait())
    }

    /// The exit status if the instance has finished.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.shared.status.borrow().clone()
    }

    /// When [`crate::Host::start`] started it.
    pub fn started_at(&self) -> SystemTime {
        self.shared.started_at
    }

    /// The address the HTTP listener is bound to ([`ProgramKind::HttpProxy`] only).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shared.http_addr.get().copied()
    }

    /// Current resource usage.
    pub fn stats(&self) -> InstanceStats {
        InstanceStats {
            memory_bytes: self.shared.memory.load(Ordering::Relaxed),
            cpu_time: self.shared.cpu.used(),
        }
    }
}
