//! The publisher against a mocked Kubernetes API (tower-test): what it applies, that a manual
//! approval is never written, Present=False only from the last node, and convergence after an outage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgewasm_discovery_agent::publisher::{Publisher, PublisherConfig};
use edgewasm_discovery_agent::{Approval, DeviceEvent, DiscoveredDevice};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One request the publisher made.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// A tiny in-memory apiserver for Devices: server-side apply of spec (node entries per field manager)
/// and status, and an outage switch.
#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    /// Node entries per device per field manager, as server-side apply keeps them for a set.
    nodes: Mutex<BTreeMap<String, BTreeMap<String, Vec<Value>>>>,
    calls: Mutex<Vec<Call>>,
    down: AtomicBool,
    refused: std::sync::atomic::AtomicUsize,
}

impl FakeApi {
    fn handle(&self, call: Call) -> (StatusCode, Value) {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "down", "reason": "ServiceUnavailable", "code": 503}),
            );
        }
        self.calls.lock().unwrap().push(call.clone());
        let base = "/apis/edgewasm.io/v1alpha1/devices";
        let rest = call
            .path
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("unexpected path {}", call.path));
        let mut objects = self.objects.lock().unwrap();
        match (
            call.method.clone(),
            rest.trim_start_matches('/').split_once('/'),
        ) {
            (Method::GET, _) if rest.is_empty() => {
                let items: Vec<Value> = objects.values().cloned().collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "edgewasm.io/v1alpha1", "kind": "DeviceList", "metadata": {}, "items": items}),
                )
            }
            (Method::PATCH, Some((name, "status"))) => {
                let obj = objects.get_mut(name).expect("status before spec");
                obj["status"] = call.body["status"].clone();
                (StatusCode::OK, obj.clone())
            }
            (Method::PATCH, None) => {
                let name = rest.trim_start_matches('/').to_string();
                let manager = call
                    .query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldManager="))
                    .unwrap()
                    .to_string();
                let spec = &call.body["spec"];
                let mut nodes = self.nodes.lock().unwrap();
                let per_manager = nodes.entry(name.clone()).or_default();
                per_manager.insert(
                    manager,
                    spec["nodes"].as_array().cloned().unwrap_or_default(),
                );
                let mut all: Vec<Value> = per_manager.values().flatten().cloned().collect();
                all.sort_by_key(ToString::to_string);
                all.dedup();
                let obj = objects.entry(name.clone()).or_insert_with(|| {
                    json!({"apiVersion": "edgewasm.io/v1alpha1", "kind": "Device", "metadata": {"name": name}, "spec": {"capacity": 1, "approved": false}})
                });
                obj["spec"]["handler"] = spec["handler"].clone();
                obj["spec"]["properties"] = spec["properties"].clone();
                obj["spec"]["nodes"] = Value::Array(all);
                if let Some(a) = spec.get("approved") {
                    obj["spec"]["approved"] = a.clone();
                }
                (StatusCode::OK, obj.clone())
            }
            (Method::GET, None) => match objects.get(rest.trim_start_matches('/')) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            other => panic!("unexpected request {other:?}"),
        }
    }

    fn spec_applies(&self, name: &str) -> Vec<Value> {
        let suffix = format!("/devices/{name}");
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == Method::PATCH && c.path.ends_with(&suffix))
            .map(|c| c.body.clone())
            .collect()
    }

    fn object(&self, name: &str) -> Value {
        self.objects
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn client(api: Arc<FakeApi>) -> kube::Client {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let call = Call {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body,
            };
            let (status, value) = api.handle(call);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap(),
            );
        }
    });
    kube::Client::new(mock, "default")
}

fn device(handler: &str, id: &str, props: &[(&str, &str)]) -> DiscoveredDevice {
    let mut d = DiscoveredDevice::new(handler, id);
    d.properties = props
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    d
}

struct Agent {
    events: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(api: &Arc<FakeApi>, node: &str) -> Agent {
    let mut cfg = PublisherConfig::new(node);
    cfg.approvals.insert("static".into(), Approval::Auto);
    cfg.approvals.insert("onvif".into(), Approval::Manual);
    cfg.batch_delay = Duration::from_millis(20);
    cfg.max_backoff = Duration::from_millis(200);
    let (events, rx) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Publisher::new(client(api.clone()), cfg).run(rx, stop.clone()));
    Agent { events, stop, task }
}

impl Agent {
    async fn finish(self) {
        drop(self.events);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("publisher drains")
            .unwrap()
            .unwrap();
        self.stop.cancel();
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn condition(obj: &Value, type_: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn publishes_approves_and_marks_absent() {
    let api = Arc::new(FakeApi::default());
    let a = start(&api, "node-a");
    let cam = device("static", "cam1", &[("ip", "192.0.2.5")]);
    let onvif = device("onvif", "urn:uuid:1", &[("ip", "192.0.2.9")]);
    a.events
        .send(DeviceEvent::Resync {
            handler: "static".into(),
            devices: vec![cam.clone()],
        })
        .await
        .unwrap();
    a.events
        .send(DeviceEvent::Seen(onvif.clone()))
        .await
        .unwrap();
    let (cam_name, onvif_name) = (cam.name(), onvif.name());
    eventually("both devices present", || {
        condition(&api.object(&cam_name), "Present")["status"] == "True"
            && condition(&api.object(&onvif_name), "Present")["status"] == "True"
    })
    .await;
    let obj = api.object(&cam_name);
    assert_eq!(obj["spec"]["nodes"], json!(["node-a"]));
    assert_eq!(obj["spec"]["approved"], json!(true));
    assert_eq!(obj["spec"]["properties"]["ip"], "192.0.2.5");
    assert!(obj["status"]["lastSeen"].is_string());
    assert_eq!(condition(&obj, "Healthy")["status"], "True");
    // Manual approval: the agent never writes the field, so a person's approval survives.
    assert!(
        api.spec_applies(&onvif_name)
            .iter()
            .all(|b| b["spec"].get("approved").is_none())
    );
    assert_eq!(api.object(&onvif_name)["spec"]["approved"], json!(false));

    // The same camera seen from node-b: one Device, two nodes.
    let b = start(&api, "node-b");
    b.events
        .send(DeviceEvent::Seen(onvif.clone()))
        .await
        .unwrap();
    eventually("two nodes", || {
        api.object(&onvif_name)["spec"]["nodes"] == json!(["node-a", "node-b"])
    })
    .await;

    // node-a loses the camera: node-b still sees it, so it stays present.
    a.events
        .send(DeviceEvent::Gone {
            handler: "onvif".into(),
            identity: "urn:uuid:1".into(),
        })
        .await
        .unwrap();
    eventually("node-a removed", || {
        api.object(&onvif_name)["spec"]["nodes"] == json!(["node-b"])
    })
    .await;
    assert_eq!(
        condition(&api.object(&onvif_name), "Present")["status"],
        "True"
    );
    // node-b loses it too: the last node marks it absent.
    b.events
        .send(DeviceEvent::Gone {
            handler: "onvif".into(),
            identity: "urn:uuid:1".into(),
        })
        .await
        .unwrap();
    eventually("absent", || {
        condition(&api.object(&onvif_name), "Present")["status"] == "False"
    })
    .await;
    assert_eq!(api.object(&onvif_name)["spec"]["nodes"], json!([]));
    assert_eq!(
        api.object(&onvif_name)["spec"]["properties"]["ip"],
        "192.0.2.9",
        "properties are kept"
    );

    // A resync without the static device makes it absent too.
    a.events
        .send(DeviceEvent::Resync {
            handler: "static".into(),
            devices: vec![],
        })
        .await
        .unwrap();
    eventually("static absent", || {
        condition(&api.object(&cam_name), "Present")["status"] == "False"
    })
    .await;
    a.finish().await;
    b.finish().await;
}

#[tokio::test]
async fn converges_with_the_latest_state_after_an_outage() {
    let api = Arc::new(FakeApi::default());
    api.down.store(true, Ordering::SeqCst);
    let a = start(&api, "node-a");
    // Many changes while the apiserver is down; a device that comes and goes never reaches the API.
    for i in 0..200 {
        let d = device("static", "sensor", &[("reading", &i.to_string())]);
        a.events.send(DeviceEvent::Seen(d)).await.unwrap();
    }
    a.events
        .send(DeviceEvent::Seen(device("static", "blip", &[])))
        .await
        .unwrap();
    a.events
        .send(DeviceEvent::Gone {
            handler: "static".into(),
            identity: "blip".into(),
        })
        .await
        .unwrap();
    eventually("retries against the outage", || {
        api.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    api.down.store(false, Ordering::SeqCst);
    let name = device("static", "sensor", &[]).name();
    eventually("latest state written", || {
        api.object(&name)["spec"]["properties"]["reading"] == "199"
    })
    .await;
    a.finish().await;
    assert_eq!(
        api.spec_applies(&name).len(),
        1,
        "only the latest state is written"
    );
    assert!(
        api.spec_applies(&device("static", "blip", &[]).name())
            .is_empty()
    );
}
