//! Reconcile against a mocked apiserver (tower-test): create, update, delete, conflicts, 5xx.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgewasm_api::{Device, DeviceSelector, DeviceSpec, WasmWorkload, WasmWorkloadSpec};
use edgewasm_operator::{Config, Context, FINALIZER, Metrics, error_policy, reconcile};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

/// What the fake apiserver holds and saw.
#[derive(Default)]
struct State {
    devices: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
    status: Option<Value>,
    /// How many device status patches to refuse with 409 before accepting.
    conflicts: u32,
    /// Answer every request with this status code.
    fail_with: Option<u16>,
    requests: Vec<String>,
    events: Vec<String>,
}

impl State {
    fn count(&self, prefix: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }
}

struct Harness {
    ctx: Arc<Context>,
    state: Arc<Mutex<State>>,
    _writers: (Writer<WasmWorkload>, Writer<Device>),
}

fn status_error(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("fake {reason}"), "reason": reason, "code": code})
}

fn respond(state: &Mutex<State>, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let mut s = state.lock().unwrap();
    s.requests.push(format!("{method} {path}"));
    if let Some(code) = s.fail_with {
        return (code, status_error(code, "ServiceUnavailable"));
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap()
    };
    let segments: Vec<&str> = path
        .split('?')
        .next()
        .unwrap()
        .trim_matches('/')
        .split('/')
        .collect();
    match (method.as_str(), segments.as_slice()) {
        ("PATCH", ["apis", "edgewasm.io", "v1alpha1", "devices", name, "status"]) => {
            if s.conflicts > 0 {
                s.conflicts -= 1;
                // Someone else wrote the device meanwhile: its resourceVersion moved on.
                let d = s.devices.get_mut(*name).unwrap();
                let rv: u64 = d["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                d["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
                return (409, status_error(409, "Conflict"));
            }
            let d = s.devices.get_mut(*name).unwrap();
            assert_eq!(
                body["metadata"]["resourceVersion"], d["metadata"]["resourceVersion"],
                "stale resourceVersion"
            );
            d["status"]["allocations"] = body["status"]["allocations"].clone();
            let rv: u64 = d["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            d["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
            (200, d.clone())
        }
        ("GET", ["apis", "edgewasm.io", "v1alpha1", "devices", name]) => {
            (200, s.devices[*name].clone())
        }
        ("GET", ["api", "v1", "namespaces", _, "pods"]) => {
            let items: Vec<Value> = s.pods.values().cloned().collect();
            (
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("PATCH", ["api", "v1", "namespaces", _, "pods", name]) => {
            let mut pod = body.clone();
            pod["metadata"]["uid"] = json!(format!("pod-{name}"));
            s.pods.insert((*name).to_owned(), pod.clone());
            (200, pod)
        }
        ("DELETE", ["api", "v1", "namespaces", _, "pods", name]) => match s.pods.remove(*name) {
            Some(pod) => (200, pod),
            None => (404, status_error(404, "NotFound")),
        },
        (
            "PATCH",
            [
                "apis",
                "edgewasm.io",
                "v1alpha1",
                "namespaces",
                ns,
                "wasmworkloads",
                name,
                "status",
            ],
        ) => {
            s.status = Some(body["status"].clone());
            // The apiserver answers with the whole object, spec included.
            let mut w = body.clone();
            w["metadata"] = json!({"name": name, "namespace": ns});
            w["spec"] = json!({"image": "registry.local/sampler:1", "placement": {"mode": "count", "replicas": 1}});
            (200, w)
        }
        (
            "PATCH",
            [
                "apis",
                "edgewasm.io",
                "v1alpha1",
                "namespaces",
                ns,
                "wasmworkloads",
                name,
            ],
        ) => (
            200,
            json!({"apiVersion": "edgewasm.io/v1alpha1", "kind": "WasmWorkload", "metadata": {"name": name, "namespace": ns}, "spec": {"image": "x"}}),
        ),
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
            s.events
                .push(body["reason"].as_str().unwrap_or_default().to_owned());
            (201, body)
        }
        _ => (404, status_error(404, "NotFound")),
    }
}

fn harness(workload: &WasmWorkload, devices: &[Device], pods: &[Value]) -> Harness {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut s = state.lock().unwrap();
        for d in devices {
            s.devices
                .insert(d.name_any(), serde_json::to_value(d).unwrap());
        }
        for p in pods {
            s.pods.insert(
                p["metadata"]["name"].as_str().unwrap().to_owned(),
                p.clone(),
            );
        }
    }
    let served = state.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let path = parts
                .uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            let (code, value) = respond(&served, &parts.method, &path, &bytes);
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    let client = Client::new(service, "default");
    let mut workloads = Writer::<WasmWorkload>::default();
    let mut device_writer = Writer::<Device>::default();
    workloads.apply_watcher_event(&watcher::Event::InitApply(workload.clone()));
    workloads.apply_watcher_event(&watcher::Event::InitDone);
    for d in devices {
        device_writer.apply_watcher_event(&watcher::Event::InitApply(d.clone()));
    }
    device_writer.apply_watcher_event(&watcher::Event::InitDone);
    let config = Config {
        device_grace_period: Duration::from_mins(1),
        ..Config::default()
    };
    let ctx = Context::new(
        client,
        workloads.as_reader(),
        device_writer.as_reader(),
        Arc::new(Metrics::default()),
        config,
    );
    Harness {
        ctx: Arc::new(ctx),
        state,
        _writers: (workloads, device_writer),
    }
}

fn workload(handler: &str) -> WasmWorkload {
    let mut w = WasmWorkload::new(
        "sampler",
        WasmWorkloadSpec {
            image: "registry.local/sampler:1".into(),
            device_selector: Some(DeviceSelector {
                handler: Some(handler.into()),
                ..DeviceSelector::default()
            }),
            ..WasmWorkloadSpec::default()
        },
    );
    w.metadata.namespace = Some("factory".into());
    w.metadata.uid = Some("w-uid".into());
    w.metadata.generation = Some(1);
    w.metadata.finalizers = Some(vec![FINALIZER.into()]);
    w
}

fn device(name: &str, allocated_to: Option<&str>) -> Device {
    let mut d = Device::new(
        name,
        DeviceSpec {
            handler: "udev".into(),
            nodes: vec!["edge-1".into()],
            properties: [("devnode".to_owned(), format!("/dev/{name}"))].into(),
            capacity: 1,
            approved: true,
        },
    );
    d.metadata.resource_version = Some("10".into());
    if let Some(key) = allocated_to {
        d.status = Some(edgewasm_api::DeviceStatus {
            allocations: vec![edgewasm_api::Allocation {
                workload: key.into(),
                placement: name.into(),
                node: Some("edge-1".into()),
            }],
            ..edgewasm_api::DeviceStatus::default()
        });
    }
    d
}

/// A Pod as the operator built it for `w` on `d`, as the apiserver returns it.
fn existing_pod(w: &WasmWorkload, d: &Device) -> Value {
    let p = edgewasm_api::plan(
        std::slice::from_ref(w),
        std::slice::from_ref(d),
        edgewasm_api::PlanOptions {
            now: k8s_openapi::jiff::Timestamp::now(),
            grace: Duration::from_mins(1),
        },
    );
    let pod = edgewasm_operator::pod::build_pod(
        w,
        &p.workloads[&w.key()].placements[0],
        &Config::default(),
    );
    let mut v = serde_json::to_value(pod).unwrap();
    v["metadata"]["uid"] = json!("pod-uid");
    v["status"] = json!({"phase": "Running"});
    v
}

#[tokio::test]
async fn creates_the_allocation_then_the_pod_then_the_status() {
    let w = workload("udev");
    let h = harness(&w, &[device("cam-1", None)], &[]);
    let action = reconcile(Arc::new(w), h.ctx.clone())
        .await
        .expect("reconcile");
    assert_ne!(action, kube::runtime::controller::Action::await_change());

    let s = h.state.lock().unwrap();
    let order: Vec<&str> = s
        .requests
        .iter()
        .map(String::as_str)
        .filter(|r| !r.contains("events"))
        .collect();
    assert_eq!(
        order[0],
        "PATCH /apis/edgewasm.io/v1alpha1/devices/cam-1/status?&fieldManager=edgewasm-operator"
    );
    assert!(
        order[1].starts_with(
            "GET /api/v1/namespaces/factory/pods?&labelSelector=edgewasm.io%2Fworkload%3Dsampler"
        ),
        "{order:?}"
    );
    assert!(
        order[2].starts_with("PATCH /api/v1/namespaces/factory/pods/sampler-cam-1?"),
        "{order:?}"
    );
    assert!(
        order[3].starts_with(
            "PATCH /apis/edgewasm.io/v1alpha1/namespaces/factory/wasmworkloads/sampler/status?"
        ),
        "{order:?}"
    );
    assert_eq!(
        s.devices["cam-1"]["status"]["allocations"],
        json!([{"workload": "factory/sampler", "placement": "cam-1", "node": "edge-1"}])
    );
    let pod = &s.pods["sampler-cam-1"];
    assert_eq!(pod["spec"]["runtimeClassName"], "edgewasm");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "w-uid");
    let status = s.status.as_ref().unwrap();
    assert_eq!(status["matchedDevices"], 1);
    assert_eq!(status["placements"][0]["pod"], "sampler-cam-1");
    assert!(s.events.contains(&"Created".to_owned()), "{:?}", s.events);
}

#[tokio::test]
async fn an_unchanged_world_writes_nothing() {
    let w = workload("udev");
    let d = device("cam-1", Some("factory/sampler"));
    let pod = existing_pod(&w, &d);
    let h = harness(&w, std::slice::from_ref(&d), &[pod]);
    reconcile(Arc::new(w.clone()), h.ctx.clone())
        .await
        .expect("first reconcile");
    let first_status = h
        .state
        .lock()
        .unwrap()
        .status
        .clone()
        .expect("status written once");

    let mut w2 = w;
    w2.status = Some(serde_json::from_value(first_status).unwrap());
    h.state.lock().unwrap().requests.clear();
    reconcile(Arc::new(w2), h.ctx.clone())
        .await
        .expect("second reconcile");
    let s = h.state.lock().unwrap();
    assert_eq!(
        s.requests.iter().filter(|r| !r.starts_with("GET")).count(),
        0,
        "{:?}",
        s.requests
    );
}

#[tokio::test]
async fn a_changed_spec_replaces_the_pod() {
    let w = workload("udev");
    let d = device("cam-1", Some("factory/sampler"));
    let pod = existing_pod(&w, &d);
    let mut changed = w.clone();
    changed.spec.image = "registry.local/sampler:2".into();
    let h = harness(&changed, &[d], &[pod]);
    reconcile(Arc::new(changed), h.ctx.clone())
        .await
        .expect("reconcile");
    let s = h.state.lock().unwrap();
    assert_eq!(
        s.count("DELETE /api/v1/namespaces/factory/pods/sampler-cam-1"),
        1,
        "{:?}",
        s.requests
    );
    assert!(s.events.contains(&"Replaced".to_owned()), "{:?}", s.events);
}

#[tokio::test]
async fn a_device_no_longer_matched_loses_its_pod_and_allocation() {
    let w = workload("udev");
    let d = device("cam-1", Some("factory/sampler"));
    let pod = existing_pod(&w, &d);
    let other = workload("onvif");
    let h = harness(&other, &[d], &[pod]);
    reconcile(Arc::new(other), h.ctx.clone())
        .await
        .expect("reconcile");
    let s = h.state.lock().unwrap();
    assert_eq!(
        s.count("DELETE /api/v1/namespaces/factory/pods/sampler-cam-1"),
        1,
        "{:?}",
        s.requests
    );
    assert_eq!(s.devices["cam-1"]["status"]["allocations"], json!([]));
    assert!(s.pods.is_empty());
    assert!(s.events.contains(&"Removed".to_owned()), "{:?}", s.events);
    assert_eq!(
        s.status.as_ref().unwrap()["conditions"][0]["reason"],
        "NoMatchingDevices"
    );
}

#[tokio::test]
async fn a_conflicting_allocation_is_re_read_and_retried() {
    let w = workload("udev");
    let h = harness(&w, &[device("cam-1", None)], &[]);
    h.state.lock().unwrap().conflicts = 1;
    reconcile(Arc::new(w), h.ctx.clone())
        .await
        .expect("reconcile after a conflict");
    let s = h.state.lock().unwrap();
    assert_eq!(
        s.count("PATCH /apis/edgewasm.io/v1alpha1/devices/cam-1/status"),
        2,
        "{:?}",
        s.requests
    );
    assert_eq!(
        s.count("GET /apis/edgewasm.io/v1alpha1/devices/cam-1"),
        1,
        "{:?}",
        s.requests
    );
    assert_eq!(
        s.devices["cam-1"]["status"]["allocations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(s.pods.contains_key("sampler-cam-1"));
}

#[tokio::test]
async fn a_server_error_fails_the_reconcile_and_backs_off() {
    let w = Arc::new(workload("udev"));
    let h = harness(&w, &[device("cam-1", None)], &[]);
    h.state.lock().unwrap().fail_with = Some(503);
    let err = reconcile(w.clone(), h.ctx.clone())
        .await
        .expect_err("503 fails the reconcile");
    assert!(err.to_string().contains("cam-1"), "{err}");
    let first = error_policy(w.clone(), &err, h.ctx.clone());
    let second = error_policy(w.clone(), &err, h.ctx.clone());
    assert_eq!(
        first,
        kube::runtime::controller::Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(Duration::from_secs(2))
    );
    assert!(h.ctx.metrics.encode().contains("reconcile_errors_total"));

    h.state.lock().unwrap().fail_with = None;
    reconcile(w.clone(), h.ctx.clone())
        .await
        .expect("recovers once the apiserver does");
    let third = error_policy(w, &err, h.ctx.clone());
    assert_eq!(
        third,
        kube::runtime::controller::Action::requeue(Duration::from_secs(1)),
        "success resets the backoff"
    );
}

#[tokio::test]
async fn deleting_releases_allocations_and_removes_the_finalizer() {
    let mut w = workload("udev");
    let d = device("cam-1", Some("factory/sampler"));
    let pod = existing_pod(&w, &d);
    w.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let h = harness(&w, &[d], &[pod]);
    let action = reconcile(Arc::new(w.clone()), h.ctx.clone())
        .await
        .expect("cleanup");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let s = h.state.lock().unwrap();
    assert_eq!(s.devices["cam-1"]["status"]["allocations"], json!([]));
    assert!(s.pods.is_empty());
    assert_eq!(
        s.count("PATCH /apis/edgewasm.io/v1alpha1/namespaces/factory/wasmworkloads/sampler?"),
        1,
        "{:?}",
        s.requests
    );
    assert!(w.meta().deletion_timestamp.is_some());
}
