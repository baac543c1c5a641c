//! Workloads applied while the operator starts (GitOps applying them during a rollout) are all
//! reconciled: created right after the operator starts, with no wait for its readiness, and created
//! just before it starts, while its initial lists are in flight.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Operator, device};
use edgewasm_api::{Device, DeviceSelector, LABEL_WORKLOAD, WasmWorkload, WasmWorkloadSpec};
use edgewasm_operator::Config;
use edgewasm_testkit::{Cluster, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};

const TIMEOUT: Duration = Duration::from_secs(20);
/// Workloads per variant; each gets a device of its own.
const WORKLOADS: usize = 4;

fn device_name(ns: &str, i: usize) -> String {
    format!("{ns}-dev-{i}")
}

fn workload_name(i: usize) -> String {
    format!("w{i}")
}

/// Workload `i` of namespace `ns`: one placement, on device `i` of the variant.
fn workload(ns: &str, i: usize) -> WasmWorkload {
    let name = workload_name(i);
    let mut w = WasmWorkload::new(
        &name,
        WasmWorkloadSpec {
            image: format!("registry.local/{name}:1"),
            device_selector: Some(DeviceSelector {
                handler: Some(ns.into()),
                properties: [("devnode".to_owned(), format!("/dev/{}", device_name(ns, i)))].into(),
                ..DeviceSelector::default()
            }),
            ..WasmWorkloadSpec::default()
        },
    );
    w.metadata.namespace = Some(ns.into());
    w
}

/// Creates every workload of namespace `ns`, one after the other.
async fn create_workloads(api: &Api<WasmWorkload>, ns: &str) -> Result<()> {
    for i in 0..WORKLOADS {
        api.create(&PostParams::default(), &workload(ns, i)).await?;
    }
    Ok(())
}

/// One variant: its own namespace and device handler, so leftovers of another cannot satisfy it.
struct Variant {
    client: Client,
    ns: &'static str,
    workloads: Api<WasmWorkload>,
    devices: Api<Device>,
    pods: Api<Pod>,
}

impl Variant {
    async fn new(ns: &'static str) -> Result<Self> {
        let cluster = Cluster::shared_with_crds().await?;
        let client = cluster.client().await?;
        let v = Self {
            workloads: Api::namespaced(client.clone(), ns),
            devices: Api::all(client.clone()),
            pods: Api::namespaced(client.clone(), ns),
            client,
            ns,
        };
        for i in 0..WORKLOADS {
            v.devices
                .create(&PostParams::default(), &device(&device_name(ns, i), ns))
                .await?;
        }
        Ok(v)
    }

    /// Every workload has its Pod and a Ready condition; the error names the ones that do not.
    async fn all_reconciled(&self) -> Result<()> {
        let mut missing = Vec::new();
        for i in 0..WORKLOADS {
            let name = workload_name(i);
            let w = self.workloads.get(&name).await?;
            let has_status = w
                .status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"));
            let pods = self
                .pods
                .list(&ListParams::default().labels(&format!("{LABEL_WORKLOAD}={name}")))
                .await?
                .items
                .len();
            if !has_status || pods != 1 {
                missing.push(format!(
                    "{name} (status: {has_status}, pods: {pods}, finalizers: {:?})",
                    w.finalizers()
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("not reconciled in {}: {}", self.ns, missing.join(", "))
        }
    }

    async fn wait_all_reconciled(&self) -> Result<()> {
        let outcome = eventually(
            "every workload has its Pod and a status",
            TIMEOUT,
            || async { Ok(self.all_reconciled().await.is_ok()) },
        )
        .await;
        if outcome.is_err() {
            // Name the workloads that were lost.
            self.all_reconciled().await?;
        }
        outcome
    }

    /// Deletes the workloads (the running operator releases them) and the devices.
    async fn clean_up(&self) -> Result<()> {
        for i in 0..WORKLOADS {
            self.workloads
                .delete(&workload_name(i), &DeleteParams::default())
                .await?;
        }
        eventually("the workloads are gone", TIMEOUT, || async {
            Ok(self
                .workloads
                .list(&ListParams::default())
                .await?
                .items
                .is_empty())
        })
        .await?;
        for i in 0..WORKLOADS {
            self.devices
                .delete(&device_name(self.ns, i), &DeleteParams::default())
                .await?;
        }
        Ok(())
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_operator=debug,kube_runtime=debug,kube_client=info")
        .with_test_writer()
        .try_init();
}

/// Both variants run in one test: two operators at once would reconcile each other's workloads.
#[tokio::test]
async fn workloads_applied_while_the_operator_starts_are_all_reconciled() -> Result<()> {
    init_tracing();

    // Created right after the operator starts, with no wait for its readiness.
    let after = Variant::new("startup-after").await?;
    let operator = Operator::start(after.client.clone(), Config::default());
    create_workloads(&after.workloads, after.ns).await?;
    after.wait_all_reconciled().await?;
    after.clean_up().await?;
    operator.wait_ready(TIMEOUT).await?;
    drop(operator);

    // Created just before the operator starts: some land before its initial list, some while
    // the list is in flight, some after it.
    let before = Variant::new("startup-before").await?;
    let creating = {
        let workloads = before.workloads.clone();
        let ns = before.ns;
        tokio::spawn(async move { create_workloads(&workloads, ns).await })
    };
    tokio::task::yield_now().await;
    let operator = Operator::start(before.client.clone(), Config::default());
    creating.await??;
    before.wait_all_reconciled().await?;
    before.clean_up().await?;
    operator.wait_ready(TIMEOUT).await?;
    drop(operator);
    Ok(())
}
