//! The test kubelet runs a Pod with runc through containerd's CRI and reports its exit code,
//! message and log; deleting the Pod tears the sandbox down.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgewasm_testkit::containerd::{CRI_NAMESPACE, Containerd, ContainerdConfig};
use edgewasm_testkit::oci::ImageBuilder;
use edgewasm_testkit::{Cluster, Kubelet, KubeletConfig, eventually};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const HELLO_IMAGE: &str = "docker.io/edgewasm/hello:test";

const HELLO_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    printf("hello from the test pod\n");
    fflush(stdout);
    if (argc > 2) sleep(atoi(argv[2]));
    fprintf(stderr, "exiting with %d\n", code);
    return code;
}
"#;

fn compile_static_c(source: &str, out: &Path) -> Vec<u8> {
    let src = out.with_extension("c");
    std::fs::write(&src, source).unwrap();
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("gcc (scripts/deps.d/harness.sh installs gcc and libc6-dev)");
    assert!(status.success(), "gcc failed");
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn kubelet_runs_a_runc_pod_and_reports_its_exit() {
    let cluster = match Cluster::start().await {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let containerd = match Containerd::start(ContainerdConfig::default()).await {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    };
    let work = containerd.dir().join("images");
    std::fs::create_dir_all(&work).unwrap();
    let hello = compile_static_c(HELLO_C, &work.join("hello"));
    ImageBuilder::new(HELLO_IMAGE)
        .executable("hello", hello)
        .entrypoint(["/hello"])
        .import(&containerd, CRI_NAMESPACE, &work)
        .unwrap();

    let client = cluster.client().await.unwrap();
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    let ssa = PatchParams::apply("testkit-test");
    classes
        .patch(
            "runc-test",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": {"name": "runc-test"}, "handler": "runc",
            })),
        )
        .await
        .unwrap();

    let config = KubeletConfig::new(
        "edge-1",
        containerd.socket(),
        containerd.dir().join("kubelet"),
    );
    cluster.core().set_pod_log_root(config.log_root());
    let kubelet = match Kubelet::start(client.clone(), config.clone()).await {
        Ok(k) => k,
        Err(e) => panic!("{e:#}"),
    };
    let node = Api::<Node>::all(client.clone())
        .get("edge-1")
        .await
        .expect("the kubelet registered its Node");
    assert!(
        node.status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, args: &[&str]| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "nodeName": "edge-1", "runtimeClassName": "runc-test", "restartPolicy": "Never",
                "containers": [{"name": "main", "image": HELLO_IMAGE, "args": args,
                                "terminationMessagePolicy": "FallbackToLogsOnError"}],
            },
        })
    };
    pods.patch("exits-3", &ssa, &Patch::Apply(pod("exits-3", &["3"])))
        .await
        .unwrap();
    pods.patch("runs", &ssa, &Patch::Apply(pod("runs", &["0", "600"])))
        .await
        .unwrap();

    let phase_of = |name: &'static str, want: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            Ok(p.status.and_then(|s| s.phase).as_deref() == Some(want))
        }
    };
    let failed = eventually("exits-3 Failed", Duration::from_mins(1), || {
        phase_of("exits-3", "Failed")
    })
    .await;
    if let Err(e) = failed {
        let p = pods.get("exits-3").await.unwrap();
        panic!("{e:#}\nstatus: {:?}", p.status);
    }
    let status = pods.get("exits-3").await.unwrap().status.unwrap();
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert!(
        terminated
            .message
            .unwrap_or_default()
            .contains("exiting with 3"),
        "log tail as message"
    );
    let log = pods
        .logs("exits-3", &kube::api::LogParams::default())
        .await
        .expect("pods/log");
    assert!(log.contains("hello from the test pod"), "{log:?}");

    eventually("runs Running and Ready", Duration::from_mins(1), || {
        phase_of("runs", "Running")
    })
    .await
    .unwrap();
    let ready = pods
        .get("runs")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Deletion: the Pod is Terminating until the kubelet tore the sandbox down.
    pods.delete("runs", &DeleteParams::default()).await.unwrap();
    eventually("runs deleted", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("runs").await?.is_none()) }
    })
    .await
    .unwrap();
    pods.delete("exits-3", &DeleteParams::default())
        .await
        .unwrap();
    eventually("exits-3 deleted", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("exits-3").await?.is_none()) }
    })
    .await
    .unwrap();
    let tasks = containerd
        .ctr(CRI_NAMESPACE)
        .run(&["tasks", "ls", "-q"])
        .unwrap();
    assert!(
        tasks.trim().is_empty(),
        "no containers left running: {tasks}"
    );
    kubelet.shutdown().await;
}
