//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod netns;
pub mod sysfs;

use std::time::Duration;

use edgewasm_discovery_agent::{DeviceEvent, Handler};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous: CI machines are slow; tests only wait this long when they are about to fail.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running handler; cancelled when dropped.
pub struct Running {
    pub events: mpsc::Receiver<DeviceEvent>,
    pub stop: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn start(handler: Box<dyn Handler>) -> Self {
        let (tx, events) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let task = tokio::spawn(handler.run(tx, stop.clone()));
        Self {
            events,
            stop,
            task: Some(task),
        }
    }

    /// The next event, failing the test after the deadline.
    pub async fn next(&mut self) -> DeviceEvent {
        match tokio::time::timeout(DEADLINE, self.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                let res = self.task.take().unwrap().await;
                panic!("handler stopped: {res:?}")
            }
            Err(tokio::time::error::Elapsed { .. }) => panic!("no event within {DEADLINE:?}"),
        }
    }

    /// Skip events until one matches.
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&DeviceEvent) -> bool,
    ) -> DeviceEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
                .unwrap_or_else(|| panic!("handler stopped before {what}"));
            if pred(&ev) {
                return ev;
            }
        }
    }

    /// No event arrives until `other` resolves.
    pub fn try_next(&mut self) -> Option<DeviceEvent> {
        self.events.try_recv().ok()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task
            .take()
            .unwrap()
            .await
            .expect("handler task panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
