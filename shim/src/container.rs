//! One container of the shim: a Wasm instance (or a pod's placeholder sandbox) and its lifecycle
//! created → running → stopped, with the exit status everyone waits for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use edgewasm_runtime::{ExitReason, ExitStatus, Instance, InstanceSpec, Program, WorldSpec};
use tokio::sync::watch;

/// Lifecycle state, as containerd's Task API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
    pub out_of_memory: bool,
    pub message: Option<String>,
}

impl Exit {
    pub fn now(code: u32, message: Option<String>) -> Self {
        Self {
            code,
            at: SystemTime::now(),
            out_of_memory: false,
            message,
        }
    }

    pub fn from_status(status: &ExitStatus) -> Self {
        Self {
            code: status.code as u32,
            at: SystemTime::now(),
            out_of_memory: status.reason == ExitReason::OutOfMemory,
            message: status.message.clone(),
        }
    }
}

/// What runs in the container.
pub enum Workload {
    /// A pod's sandbox: no process, only a placeholder holding the pod's network namespace path.
    Sandbox,
    /// A Wasm program, started by `start`.
    Wasm {
        program: Arc<Program>,
        spec: InstanceSpec,
        /// The device credentials and key-value store the instance's host interfaces use.
        world: WorldSpec,
        instance: Option<Instance>,
    },
}

/// One container the shim serves.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub sandbox_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub workload: Workload,
    /// Read ends of the stdout/stderr fifos, held for the container's life as runc's shim does:
    /// while containerd restarts, nobody else reads them, and the guest's writes would fail for
    /// good (a closed pipe) instead of waiting for the restarted containerd to reattach.
    pub fifo_readers: Vec<std::fs::File>,
    phase: Phase,
    exit_tx: watch::Sender<Option<Exit>>,
    /// An exit caused by a request (kill, a failed start) is not reported before this instant.
    report_exit_after: Option<Instant>,
}

/// How long an exit caused by a request waits before it is reported, so that the request's reply
/// leaves first. containerd tears a task's connection down as soon as `wait` returns (CRI deletes
/// the task, then closes the connection), which fails a reply still being written with
/// "ttrpc: closed"; a real process takes about this long to die after a signal.
pub const EXIT_AFTER_REPLY: Duration = Duration::from_millis(50);

impl Container {
    pub fn new(id: String, bundle: PathBuf, workload: Workload) -> Self {
        Self {
            id,
            bundle,
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            sandbox_id: None,
            netns: None,
            workload,
            fifo_readers: Vec::new(),
            phase: Phase::Created,
            exit_tx: watch::channel(None).0,
            report_exit_after: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }

    /// A receiver that sees the exit once it happens.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    pub fn set_running(&mut self) {
        self.phase = Phase::Running;
    }

    /// Holds back the report of an exit this request causes until its reply has gone out.
    pub fn hold_exit_for_reply(&mut self) {
        self.report_exit_after
            .get_or_insert_with(|| Instant::now() + EXIT_AFTER_REPLY);
    }

    /// How long an exit must still wait before it is reported (zero: report now).
    pub fn exit_report_delay(&self) -> Duration {
        self.report_exit_after.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// Records the exit (only the first one counts); returns whether this call recorded it.
    pub fn finish(&mut self, exit: Exit) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.phase = Phase::Stopped;
        self.exit_tx.send_replace(Some(exit));
        true
    }

    pub fn is_sandbox(&self) -> bool {
        matches!(self.workload, Workload::Sandbox)
    }
}

/// The exit code a placeholder sandbox reports for `signal`: like pause, a clean stop on TERM/INT.
pub fn sandbox_exit_code(signal: u32) -> u32 {
    match signal {
        2 | 15 => 0,
        s => 128 + s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins() {
        let mut c = Container::new("a".into(), PathBuf::new(), Workload::Sandbox);
        let rx = c.exit_watch();
        assert_eq!(c.phase(), Phase::Created);
        c.set_running();
        assert!(c.finish(Exit::now(0, None)));
        assert!(!c.finish(Exit::now(137, None)));
        assert_eq!(c.phase(), Phase::Stopped);
        assert_eq!(rx.borrow().as_ref().map(|e| e.code), Some(0));
    }

    #[test]
    fn an_exit_a_request_causes_waits_for_the_reply() {
        let mut c = Container::new("a".into(), PathBuf::new(), Workload::Sandbox);
        assert_eq!(c.exit_report_delay(), Duration::ZERO);
        c.hold_exit_for_reply();
        let first = c.exit_report_delay();
        assert!(first > Duration::ZERO && first <= EXIT_AFTER_REPLY);
        // A second kill does not push the report further out.
        c.hold_exit_for_reply();
        assert!(c.exit_report_delay() <= first);
    }

    #[test]
    fn sandbox_stops_like_pause() {
        assert_eq!(sandbox_exit_code(15), 0);
        assert_eq!(sandbox_exit_code(9), 137);
    }
}
