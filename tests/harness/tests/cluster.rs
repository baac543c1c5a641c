//! The test cluster through kube-rs: CRDs on the real CRD apiserver, core kinds on the core
//! server, discovery over both, garbage collection, and fault injection.

use std::path::PathBuf;
use std::time::Duration;

use edgewasm_testkit::{Cluster, eventually};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

const WIDGET_CRD: &str = r"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.testkit.edgewasm.io
spec:
  group: testkit.edgewasm.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
          status:
            type: object
            properties:
              phase: {type: string}
";

async fn cluster() -> &'static Cluster {
    match Cluster::shared().await {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    }
}

async fn widgets(cluster: &Cluster, ns: &str) -> Api<DynamicObject> {
    cluster
        .apply_crd_yaml(WIDGET_CRD)
        .await
        .expect("applying the Widget CRD");
    let gvk = GroupVersionKind::gvk("testkit.edgewasm.io", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    Api::namespaced_with(cluster.client().await.expect("client"), ns, &ar)
}

fn widget(name: &str, size: i64) -> serde_json::Value {
    json!({"apiVersion": "testkit.edgewasm.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}})
}

#[tokio::test]
async fn repo_crds_apply_when_present() {
    let cluster = cluster().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let has_crds = std::fs::read_dir(&dir).is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "yaml"))
    });
    let names = if has_crds {
        cluster.apply_crds(&dir).await.expect("applying crds/")
    } else {
        cluster
            .apply_crd_yaml(WIDGET_CRD)
            .await
            .expect("applying the Widget CRD")
    };
    assert!(!names.is_empty());
}

#[tokio::test]
async fn crd_ssa_status_watch_and_validation() {
    let cluster = cluster().await;
    let api = widgets(cluster, "crd-test").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let api = api.clone();
        async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            // Errors (the new CRD's endpoint may lag its Established condition) are retried.
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                    let _ = tx.send(o);
                }
            }
        }
    });
    let ssa = PatchParams::apply("testkit-test").force();
    api.patch("w1", &ssa, &Patch::Apply(widget("w1", 3)))
        .await
        .expect("SSA create");
    let status = json!({"apiVersion": "testkit.edgewasm.io/v1", "kind": "Widget", "status": {"phase": "Ready"}});
    api.patch_status("w1", &ssa, &Patch::Apply(&status))
        .await
        .expect("SSA status");
    let got = api.get("w1").await.unwrap();
    assert_eq!(got.data["status"]["phase"], "Ready");
    assert_eq!(got.metadata.generation, Some(1));

    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(o) = rx.recv().await {
            if o.data["status"]["phase"] == "Ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch saw the status change");
    watch.abort();

    let err = api
        .patch("bad", &ssa, &Patch::Apply(widget("bad", 42)))
        .await
        .expect_err("schema violation rejected");
    assert!(
        err.to_string().contains("less than or equal to 10"),
        "{err}"
    );
}

#[tokio::test]
async fn core_pods_crud_selectors_and_watch() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "pods-test");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let pods = pods.clone();
        async move {
            let config = watcher::Config::default().fields("spec.nodeName=node-a");
            let mut events = watcher(pods, config).boxed();
            while let Some(event) = events.next().await {
                let _ = tx.send(event.map_err(|e| e.to_string()));
            }
        }
    });
    let ssa = PatchParams::apply("testkit-test");
    for (name, node) in [("p-a", "node-a"), ("p-b", "node-b")] {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "demo", "node": node}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example.invalid/x:1"}]},
        });
        pods.patch(name, &ssa, &Patch::Apply(&pod))
            .await
            .expect("SSA pod");
    }
    let p = pods.get("p-a").await.unwrap();
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert!(p.metadata.uid.is_some());

    let listed = pods
        .list(&ListParams::default().labels("node=node-b"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let listed = pods
        .list(&ListParams::default().fields("metadata.name=p-a"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);

    pods.patch_status(
        "p-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status patch");
    // Status through the main resource is ignored.
    pods.patch(
        "p-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        pods.get("p-a")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Running")
    );

    pods.delete("p-a", &DeleteParams::default()).await.unwrap();
    pods.delete("p-b", &DeleteParams::default()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut names = Vec::new();
        while let Some(event) = rx.recv().await {
            match event.expect("watch event") {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    names.push(p.metadata.name.unwrap());
                }
                watcher::Event::Delete(p) => {
                    names.push(format!("deleted {}", p.metadata.name.unwrap()));
                    return names;
                }
                _ => {}
            }
        }
        names
    })
    .await
    .expect("watch ended in time");
    watch.abort();
    assert!(outcome.iter().all(|n| !n.contains("p-b")), "{outcome:?}");
    assert_eq!(outcome.last().map(String::as_str), Some("deleted p-a"));
}

#[tokio::test]
async fn events_and_leases() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "demo."},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "edgewasm.io/test", "reportingInstance": "t",
        "action": "Testing", "reason": "Tested", "type": "Normal", "note": "hello",
        "regarding": {"kind": "Pod", "name": "x", "namespace": "default"},
    }))
    .unwrap();
    let created = events
        .create(&PostParams::default(), &event)
        .await
        .expect("create event");
    assert!(created.metadata.name.unwrap().starts_with("demo."));
    assert!(
        !events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "core-ev"}, "involvedObject": {"kind": "Pod", "name": "x"}, "reason": "R", "message": "m",
    }))
    .unwrap();
    core_events
        .create(&PostParams::default(), &ev)
        .await
        .expect("create core event");

    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let first = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut second = first.clone();
    second.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let updated = leases
        .replace("leader", &PostParams::default(), &second)
        .await
        .expect("replace lease");
    assert_eq!(updated.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // The stale resourceVersion loses.
    let err = leases
        .replace("leader", &PostParams::default(), &first)
        .await
        .expect_err("conflict");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
}

#[tokio::test]
async fn discovery_lists_core_and_crd_groups() {
    let cluster = cluster().await;
    widgets(cluster, "default").await;
    let discovery = kube::Discovery::new(cluster.client().await.unwrap())
        .run()
        .await
        .expect("discovery");
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_owned()).collect();
    for want in [
        "",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
        "testkit.edgewasm.io",
    ] {
        assert!(
            groups.iter().any(|g| g == want),
            "{want:?} missing from {groups:?}"
        );
    }
}

#[tokio::test]
async fn finalizers_and_owner_garbage_collection() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let ns = "gc-test";
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ssa = PatchParams::apply("testkit-test");
    let owned_pod = |name: &str, owner: &serde_json::Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {"containers": [{"name": "main", "image": "example.invalid/x:1"}]},
        })
    };

    // Finalizer keeps a ConfigMap until it is removed.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["testkit/hold"]}});
    cms.patch("held", &ssa, &Patch::Apply(&cm)).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());

    // A core owner: dependents go with it.
    let owner = cms
        .patch(
            "owner",
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}),
            ),
        )
        .await
        .unwrap();
    let oref = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap()});
    pods.patch(
        "dep-core",
        &ssa,
        &Patch::Apply(owned_pod("dep-core", &oref)),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("dep-core").await.unwrap().is_none());

    // A custom resource owner in the CRD apiserver: the harness's collector notices.
    let api = widgets(cluster, ns).await;
    let w = api
        .patch(
            "owner-w",
            &PatchParams::apply("testkit-test"),
            &Patch::Apply(widget("owner-w", 2)),
        )
        .await
        .unwrap();
    let wref = json!({"apiVersion": "testkit.edgewasm.io/v1", "kind": "Widget", "name": "owner-w", "uid": w.metadata.uid.unwrap()});
    pods.patch("dep-cr", &ssa, &Patch::Apply(owned_pod("dep-cr", &wref)))
        .await
        .unwrap();
    // Not collected while the owner lives.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(pods.get_opt("dep-cr").await.unwrap().is_some());
    api.delete("owner-w", &DeleteParams::default())
        .await
        .unwrap();
    eventually("dep-cr collected", Duration::from_secs(10), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("dep-cr").await?.is_none()) }
    })
    .await
    .unwrap();
}

/// Whether `name` arrives on `rx` within 15 s.
async fn next_named(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str) -> bool {
    let arrived = async {
        while let Some(n) = rx.recv().await {
            if n == name {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(15), arrived)
        .await
        .unwrap_or(false)
}

/// Fault injection needs a cluster of its own: it would disturb the other tests.
#[tokio::test]
async fn faults_and_apiserver_outage() {
    let cluster = match Cluster::start().await {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let client = cluster.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let api = widgets(&cluster, "default").await;
    let ssa = PatchParams::apply("testkit-test");
    api.patch("before", &ssa, &Patch::Apply(widget("before", 1)))
        .await
        .unwrap();

    // Next N requests fail with 500.
    cluster.proxy().fail_next(2);
    for _ in 0..2 {
        let err = cms
            .list(&ListParams::default())
            .await
            .expect_err("injected 500");
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 500),
            "{err}"
        );
    }
    cms.list(&ListParams::default())
        .await
        .expect("back to normal");

    // Dropped watches: the watcher resumes and still sees later changes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let cms = cms.clone();
        async move {
            let mut events = watcher(cms, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                    let _ = tx.send(o.metadata.name.unwrap_or_default());
                }
            }
        }
    });
    cms.patch(
        "one",
        &ssa,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}}),
        ),
    )
    .await
    .unwrap();
    assert!(next_named(&mut rx, "one").await);
    cluster.proxy().drop_watches();
    cms.patch(
        "two",
        &ssa,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}}),
        ),
    )
    .await
    .unwrap();
    assert!(
        next_named(&mut rx, "two").await,
        "watch resumed after the drop"
    );

    // Down: connections refused.
    cluster.proxy().set_down(true).await.unwrap();
    let err = cms
        .list(&ListParams::default())
        .await
        .expect_err("refused while down");
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a connection error, not an API answer: {err}"
    );
    cluster.proxy().set_down(false).await.unwrap();
    cms.list(&ListParams::default()).await.expect("up again");

    // Whole-API outage: custom resources survive (etcd keeps them), the watch comes back.
    cluster
        .outage(Duration::from_secs(2))
        .await
        .expect("outage and recovery");
    assert!(api.get_opt("before").await.unwrap().is_some());
    cms.patch(
        "three",
        &ssa,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "three"}}),
        ),
    )
    .await
    .unwrap();
    assert!(
        next_named(&mut rx, "three").await,
        "watch resumed after the outage"
    );
    watch.abort();
}
