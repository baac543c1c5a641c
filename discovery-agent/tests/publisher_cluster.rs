//! The publisher against the real CRD apiserver (edgewasm-testkit): a device becomes a `Device` with
//! its properties, node and conditions; a second agent on another node adds its node; removal takes
//! the node away and, from the last node, sets Present=False; a manual approval survives an agent
//! restart; after an apiserver outage the agent writes the latest state.
//!
//! One test function: the phases share one cluster, and the outage would disturb a parallel test.

use std::time::Duration;

use anyhow::Result;
use edgewasm_api::Device;
use edgewasm_discovery_agent::publisher::{Publisher, PublisherConfig};
use edgewasm_discovery_agent::{Approval, DeviceEvent, DiscoveredDevice, metrics};
use edgewasm_testkit::{Cluster, eventually};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_mins(1);

/// One agent's publisher, fed by the test instead of handlers; stopped when dropped.
struct Agent {
    events: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    fn start(client: kube::Client, node: &str) -> Self {
        let mut cfg = PublisherConfig::new(node);
        cfg.approvals.insert("static".into(), Approval::Auto);
        cfg.approvals.insert("onvif".into(), Approval::Manual);
        cfg.batch_delay = Duration::from_millis(20);
        cfg.max_backoff = Duration::from_millis(500);
        let (events, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let task = tokio::spawn(Publisher::new(client, cfg).run(rx, stop.clone()));
        Self {
            events,
            stop,
            task: Some(task),
        }
    }

    async fn send(&self, ev: DeviceEvent) {
        self.events.send(ev).await.expect("publisher running");
    }

    async fn stop(mut self) {
        self.stop.cancel();
        self.task
            .take()
            .unwrap()
            .await
            .expect("publisher task")
            .expect("publisher stops cleanly");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn device(handler: &str, id: &str, props: &[(&str, &str)]) -> DiscoveredDevice {
    let mut d = DiscoveredDevice::new(handler, id);
    for (k, v) in props {
        d.properties.insert((*k).into(), (*v).into());
    }
    d
}

fn gone(d: &DiscoveredDevice) -> DeviceEvent {
    DeviceEvent::Gone {
        handler: d.handler.clone(),
        identity: d.identity.clone(),
    }
}

fn condition(d: &Device, type_: &str) -> Option<String> {
    d.condition(type_).map(|c| c.status.clone())
}

/// Polls the Device until `check` holds, failing with the last object seen.
async fn wait_device(
    api: &Api<Device>,
    name: &str,
    what: &str,
    check: impl Fn(&Device) -> bool,
) -> Result<Device> {
    let check = &check;
    eventually(what, TIMEOUT, || async move {
        Ok(api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|d| check(&d)))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}: device {name} never matched ({what})"))?;
    Ok(api.get(name).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_in_the_real_apiserver() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_discovery_agent=debug")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_with_crds().await?;
    let api: Api<Device> = Api::all(cluster.client().await?);
    let run = std::process::id();

    // A device seen from node a: Device with its properties, node and conditions, auto-approved.
    let sensor = device(
        "static",
        &format!("sensor-{run}"),
        &[("devnode", "/dev/ttyUSB0"), ("vendorId", "0403")],
    );
    let name = sensor.name();
    let a = Agent::start(cluster.client().await?, "node-a");
    a.send(DeviceEvent::Resync {
        handler: "static".into(),
        devices: vec![sensor.clone()],
    })
    .await;
    let d = wait_device(&api, &name, "published from node-a", |d| {
        condition(d, "Present").as_deref() == Some("True")
    })
    .await?;
    assert_eq!(d.spec.handler, "static");
    assert_eq!(d.spec.nodes, ["node-a"]);
    assert_eq!(d.spec.properties, sensor.properties);
    assert!(d.spec.approved, "auto approval");
    assert_eq!(condition(&d, "Healthy").as_deref(), Some("True"));
    assert!(
        d.status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .is_some()
    );

    // The same device seen from node b: one Device, two nodes.
    let b = Agent::start(cluster.client().await?, "node-b");
    b.send(DeviceEvent::Seen(sensor.clone())).await;
    wait_device(&api, &name, "both nodes", |d| {
        d.spec.nodes.len() == 2 && d.spec.nodes.iter().any(|n| n == "node-b")
    })
    .await?;

    // Gone from node a: node b still sees it, so it stays present.
    a.send(gone(&sensor)).await;
    let d = wait_device(&api, &name, "node-a removed", |d| {
        d.spec.nodes == ["node-b"]
    })
    .await?;
    assert_eq!(condition(&d, "Present").as_deref(), Some("True"));
    // Gone from the last node: Present=False, no node.
    b.send(gone(&sensor)).await;
    let d = wait_device(&api, &name, "absent everywhere", |d| {
        condition(d, "Present").as_deref() == Some("False")
    })
    .await?;
    assert!(d.spec.nodes.is_empty(), "{:?}", d.spec.nodes);
    b.stop().await;

    // A manual-approval device: published unapproved; a person's approval survives a restart.
    let camera = device(
        "onvif",
        &format!("urn:uuid:cam-{run}"),
        &[("ip", "192.0.2.10")],
    );
    let cam = camera.name();
    let resync = || DeviceEvent::Resync {
        handler: "onvif".into(),
        devices: vec![camera.clone()],
    };
    a.send(resync()).await;
    let d = wait_device(&api, &cam, "camera published", |d| {
        condition(d, "Present").as_deref() == Some("True")
    })
    .await?;
    assert!(
        !d.spec.approved,
        "manual approval: not approved by the agent"
    );
    api.patch(
        &cam,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"approved": true}})),
    )
    .await?;
    a.stop().await;
    let a = Agent::start(cluster.client().await?, "node-a");
    let mut changed = camera.clone();
    changed
        .properties
        .insert("model".into(), "after-restart".into());
    a.send(DeviceEvent::Resync {
        handler: "onvif".into(),
        devices: vec![changed.clone()],
    })
    .await;
    let d = wait_device(&api, &cam, "the restarted agent's write", |d| {
        d.spec.properties.get("model").map(String::as_str) == Some("after-restart")
    })
    .await?;
    assert!(d.spec.approved, "the approval survives the agent restart");
    assert_eq!(d.spec.nodes, ["node-a"]);

    // An outage: the agent keeps the latest state and writes it when the API is back, including a
    // device that vanished meanwhile.
    let lamp = device("static", &format!("lamp-{run}"), &[("gpio", "17")]);
    a.send(DeviceEvent::Seen(lamp.clone())).await;
    wait_device(&api, &lamp.name(), "lamp published", |d| {
        condition(d, "Present").as_deref() == Some("True")
    })
    .await?;
    let errors_before = metrics::api_write_count("error");
    cluster.proxy().set_down(true).await?;
    cluster.stop_apiserver().await;
    let outage = async {
        for v in 1..=5 {
            changed.properties.insert("reading".into(), v.to_string());
            a.send(DeviceEvent::Seen(changed.clone())).await;
        }
        a.send(gone(&lamp)).await;
        // The agent tried (and failed) to write while the API was down.
        eventually("a failed write during the outage", TIMEOUT, || async {
            Ok(metrics::api_write_count("error") > errors_before)
        })
        .await
    };
    let result = outage.await;
    cluster.start_apiserver().await?;
    cluster.proxy().set_down(false).await?;
    result?;
    let d = wait_device(&api, &cam, "the latest state after the outage", |d| {
        d.spec.properties.get("reading").map(String::as_str) == Some("5")
    })
    .await?;
    assert!(d.spec.approved);
    assert_eq!(condition(&d, "Present").as_deref(), Some("True"));
    wait_device(&api, &lamp.name(), "lamp absent after the outage", |d| {
        condition(d, "Present").as_deref() == Some("False") && d.spec.nodes.is_empty()
    })
    .await?;
    a.stop().await;
    Ok(())
}
