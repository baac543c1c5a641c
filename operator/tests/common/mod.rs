//! Helpers shared by the operator's tests against the real CRD apiserver.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use edgewasm_api::{Device, DeviceSpec};
use edgewasm_operator::{Config, Metrics};
use edgewasm_testkit::eventually;
use kube::Client;

/// The operator running in this test; stopped when the test ends, however it ends.
pub struct Operator {
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Operator {
    pub fn start(client: Client, config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let running = metrics.clone();
        Self {
            task: tokio::spawn(async move {
                if let Err(e) = edgewasm_operator::run(client, config, running).await {
                    panic!("operator stopped: {e:#}");
                }
            }),
            metrics,
        }
    }

    /// Its caches synced, so /readyz answers ready.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        eventually("the operator reports ready", timeout, || async {
            Ok(self.metrics.is_ready())
        })
        .await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An approved single-capacity device of `handler` on node edge-a, its devnode named after it.
pub fn device(name: &str, handler: &str) -> Device {
    Device::new(
        name,
        DeviceSpec {
            handler: handler.into(),
            nodes: vec!["edge-a".into()],
            properties: [("devnode".to_owned(), format!("/dev/{name}"))].into(),
            capacity: 1,
            approved: true,
        },
    )
}
