//! The shim under a real containerd 1.6 (root required): `ctr run` for a WASI module, a command
//! component and a wasi:http component, kill and task states, grants, limits, a corrupt .wasm, and CRI
//! pods (many containers and many pods in one shim process).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgewasm_testkit::containerd::{
    CRI_NAMESPACE, Containerd, ContainerdConfig, EDGEWASM_HANDLER, EDGEWASM_RUNTIME,
};
use edgewasm_testkit::oci::ImageBuilder;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

const NS: &str = "edgewasm-test";
const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-edgewasm-v1");

const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from a module\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 20))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 3))))"#;

const SPIN_WAT: &str = r#"(module (func (export "_start") (loop (br 0))))"#;

const GROW_WAT: &str = r#"(module (memory (export "memory") 1)
  (func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#;

/// The example components, built once per test binary.
fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/components");
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(root.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(root.join("target"))
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                .status()
                .expect("run cargo to build the example components");
        assert!(
            status.success(),
            "building examples/components failed (run scripts/deps.d/shim.sh)"
        );
        root.join("target/wasm32-wasip2/release")
    })
}

struct Env {
    containerd: Containerd,
    work: tempfile::TempDir,
}

impl Env {
    async fn start(cri: bool) -> Self {
        Self::start_with(ContainerdConfig::default().import_pause(cri)).await
    }

    async fn start_with(config: ContainerdConfig) -> Self {
        let config = config.shim(SHIM);
        let containerd = match Containerd::start(config).await {
            Ok(c) => c,
            Err(e) => panic!(
                "starting containerd (run as root; scripts/deps.d/shim.sh installs it): {e:#}"
            ),
        };
        Self {
            containerd,
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// Imports a one-file image whose entrypoint is the .wasm.
    fn image(&self, ns: &str, name: &str, wasm: &[u8]) -> String {
        let image = format!("docker.io/edgewasm/{name}:test");
        ImageBuilder::new(&image)
            .file("app.wasm", wasm.to_vec())
            .entrypoint(["/app.wasm"])
            .import(&self.containerd, ns, self.work.path())
            .unwrap();
        image
    }

    /// `ctr run --rm` in the foreground; returns its output (the task's exit code is ctr's).
    fn run(&self, image: &str, id: &str, extra: &[&str], args: &[&str]) -> Output {
        let fifo = self.containerd.fifo_dir().display().to_string();
        let mut argv = vec![
            "run",
            "--rm",
            "--runtime",
            EDGEWASM_RUNTIME,
            "--fifo-dir",
            &fifo,
        ];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&[image, id]);
        argv.extend_from_slice(args);
        self.containerd
            .ctr(NS)
            .command(&argv)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// `ctr run -d`: a detached task.
    fn run_detached(&self, image: &str, id: &str, extra: &[&str]) {
        let fifo = self.containerd.fifo_dir().display().to_string();
        let mut argv = vec![
            "run",
            "-d",
            "--runtime",
            EDGEWASM_RUNTIME,
            "--fifo-dir",
            &fifo,
        ];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&[image, id]);
        self.containerd.ctr(NS).run(&argv).unwrap();
    }

    fn wait_status(&self, id: &str, want: &str) {
        let ctr = self.containerd.ctr(NS);
        poll(
            &format!("task {id} {want}"),
            Duration::from_secs(20),
            || ctr.task_status(id).unwrap().as_deref() == Some(want),
        );
    }

    fn remove(&self, id: &str) {
        let ctr = self.containerd.ctr(NS);
        ctr.run(&["tasks", "delete", id]).unwrap();
        ctr.run(&["containers", "delete", id]).unwrap();
    }
}

fn poll(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_runs_modules_and_components() {
    let env = Env::start(false).await;

    // A WASI preview 1 module: output and exit code.
    let hello = env.image(NS, "hello", &wat::parse_str(HELLO_WAT).unwrap());
    let out = env.run(&hello, "hello", &[], &[]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from a module\n");
    // Short tasks back to back: between one's delete and the next one's create the shim is idle for
    // a moment; it must not exit under the next task ("ttrpc: closed").
    for i in 0..30 {
        let out = env.run(&hello, &format!("hello-{i}"), &[], &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "task {i} of a sequence: {}",
            text(&out.stderr)
        );
    }

    // A command component reading the device it was granted.
    let device = env.work.path().join("video0");
    std::fs::write(&device, vec![7u8; 64]).unwrap();
    let sampler = env.image(
        NS,
        "camera-sampler",
        &std::fs::read(examples().join("camera-sampler.wasm")).unwrap(),
    );
    let grants = serde_json::json!({"paths": [{"host": device, "guest": "/dev/video0"}]});
    let annotation = format!("edgewasm.io/grants={grants}");
    let out = env.run(
        &sampler,
        "sampler",
        &[
            "--annotation",
            &annotation,
            "--env",
            "SAMPLES=1",
            "--env",
            "FRAME_BYTES=16",
        ],
        // ctr's command replaces the image's entrypoint, so the module comes first.
        &["/app.wasm", "/dev/video0"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains('{'),
        "one JSON line per sample: {}",
        text(&out.stdout)
    );

    // Without a grant the host's files are not there.
    let out = env.run(
        &sampler,
        "sampler-nogrant",
        &[],
        &["/app.wasm", "/etc/hostname"],
    );
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cannot open /etc/hostname"),
        "{}",
        text(&out.stderr)
    );

    // A corrupt .wasm fails at create with a clear error.
    let corrupt = env.image(NS, "corrupt", b"this is not wasm");
    let out = env.run(&corrupt, "corrupt", &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a WebAssembly binary"),
        "{}",
        text(&out.stderr)
    );
    let _ = env
        .containerd
        .ctr(NS)
        .run(&["containers", "delete", "corrupt"]);

    // The operator's timeout annotation: a guest still running then ends with 124 and says why.
    let spin = env.image(NS, "spin", &wat::parse_str(SPIN_WAT).unwrap());
    let out = env.run(
        &spin,
        "timeout",
        &["--annotation", "edgewasm.io/timeout-seconds=1"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr)
            .contains("deadline of 1s exceeded (annotation edgewasm.io/timeout-seconds)"),
        "{}",
        text(&out.stderr)
    );

    // Through the edgewasm:device world: a workload's key-value store outlives its containers.
    let node = env.work.path().join("video1");
    std::fs::write(&node, vec![0x80u8; 64]).unwrap();
    let grants = serde_json::json!({
        "device": {"name": "usb-cam", "handler": "udev", "properties": {
            "subsystem": "video4linux", "devnode": node,
            "width": "8", "height": "4", "format": "yuyv"}},
        "paths": [{"host": node, "access": "readWrite"}],
    });
    let grants = format!("edgewasm.io/grants={grants}");
    for run in 1..=2 {
        let out = env.run(
            &sampler,
            &format!("kv-{run}"),
            &[
                "--annotation",
                &grants,
                "--annotation",
                "edgewasm.io/workload=factory/sampler",
                "--env",
                "SAMPLES=1",
            ],
            &["/app.wasm"],
        );
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(
            (line["backend"].as_str(), line["total"].as_u64()),
            (Some("file"), Some(run)),
            "{line}"
        );
    }
    let store = env
        .containerd
        .dir()
        .join("edgewasm-state/keyvalue/factory/sampler");
    assert!(store.is_dir(), "{} missing", store.display());

    // A device credentials Secret without its password fails at create, saying so.
    let secret = env.work.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("username"), "admin").unwrap();
    let mount = format!(
        "type=bind,src={},dst={},options=rbind:ro",
        secret.display(),
        edgewasm_api::DEVICE_CREDENTIALS_MOUNT
    );
    let out = env.run(
        &sampler,
        "nocreds",
        &["--annotation", &grants, "--mount", &mount],
        &["/app.wasm"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("device credentials Secret") && stderr.contains("password"),
        "{stderr}"
    );
    let _ = env
        .containerd
        .ctr(NS)
        .run(&["containers", "delete", "nocreds"]);

    // Memory limit from linux.resources.
    let grow = env.image(NS, "grow", &wat::parse_str(GROW_WAT).unwrap());
    let out = env.run(&grow, "grow", &["--memory-limit", "4194304"], &[]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_kill_task_states_and_one_shim_for_many_tasks() {
    let env = Env::start(false).await;
    let spin = env.image(NS, "spin", &wat::parse_str(SPIN_WAT).unwrap());
    env.run_detached(&spin, "spin-1", &[]);
    env.run_detached(&spin, "spin-2", &[]);
    env.wait_status("spin-1", "RUNNING");
    env.wait_status("spin-2", "RUNNING");
    assert_eq!(
        env.containerd.shim_pids().len(),
        1,
        "both tasks share one shim process"
    );

    let ctr = env.containerd.ctr(NS);
    let exec = ctr.run(&["tasks", "exec", "--exec-id", "x", "spin-1", "/app.wasm"]);
    assert!(exec.unwrap_err().to_string().contains("not supported"));

    ctr.run(&["tasks", "kill", "-s", "SIGKILL", "spin-1"])
        .unwrap();
    env.wait_status("spin-1", "STOPPED");
    env.wait_status("spin-2", "RUNNING");
    env.remove("spin-1");

    // The shim logged through spin-1's log fifo, which containerd stops reading once spin-1 is
    // deleted: what the shim logs next must still reach containerd's log.
    env.run_detached(&spin, "spin-3", &[]);
    env.wait_status("spin-3", "RUNNING");
    poll(
        "the shim's line about spin-3 in containerd's log",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(env.containerd.log_path()).is_ok_and(|log| {
                log.lines()
                    .any(|l| l.contains("started") && l.contains("container=spin-3"))
            })
        },
    );
    env.containerd
        .ctr(NS)
        .run(&["tasks", "kill", "-s", "SIGKILL", "spin-3"])
        .unwrap();
    env.wait_status("spin-3", "STOPPED");
    env.remove("spin-3");

    // containerd restarts: the shim and its task survive and answer again.
    let mut env = env;
    env.containerd.restart().await.unwrap();
    env.wait_status("spin-2", "RUNNING");
    env.containerd
        .ctr(NS)
        .run(&["tasks", "kill", "spin-2"])
        .unwrap();
    env.wait_status("spin-2", "STOPPED");
    env.remove("spin-2");
    poll(
        "the shim exits after its last task",
        Duration::from_secs(10),
        || env.containerd.shim_pids().is_empty(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_serves_a_wasi_http_component() {
    let env = Env::start(false).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = env.image(
        NS,
        "reading-server",
        &std::fs::read(examples().join("reading_server.wasm")).unwrap(),
    );
    let annotation = format!("edgewasm.io/grants={{\"httpPort\":{port}}}");
    env.run_detached(&server, "server", &["--annotation", &annotation]);
    env.wait_status("server", "RUNNING");
    let mut response = String::new();
    poll(
        "the component answers /healthz",
        Duration::from_secs(20),
        || {
            let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            response.clear();
            conn.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
        },
    );
    assert!(response.trim_end().ends_with("ok"), "{response}");
    env.containerd
        .ctr(NS)
        .run(&["tasks", "kill", "server"])
        .unwrap();
    env.wait_status("server", "STOPPED");
    env.remove("server");
}

async fn cri(socket: &Path) -> RuntimeServiceClient<tonic::transport::Channel> {
    RuntimeServiceClient::new(edgewasm_testkit::kubelet::connect(socket).await.unwrap())
}

/// A host-network pod.
fn sandbox_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    pod_config(name, logs, &[], true)
}

/// A pod with the given annotations, on the node's network or (through CNI) its own.
fn pod_config(
    name: &str,
    logs: &Path,
    annotations: &[(&str, String)],
    host_network: bool,
) -> cri::PodSandboxConfig {
    let network = if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::PodSandboxConfig {
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_pod(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    config: &cri::PodSandboxConfig,
) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: EDGEWASM_HANDLER.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

async fn create_container(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    config: &cri::PodSandboxConfig,
    name: &str,
    image: &str,
) -> Result<String, tonic::Status> {
    create_container_from(rt, pod, config, container_config(name, image, &[])).await
}

/// A container whose `args` follow the image's entrypoint (the module), as a Pod's do.
fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn create_container_from(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    config: &cri::PodSandboxConfig,
    container: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    // Boxed: the request future is large.
    Box::pin(rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(container),
        sandbox_config: Some(config.clone()),
    }))
    .await
    .map(|r| r.into_inner().container_id)
}

async fn exited(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == cri::ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} did not exit: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_runs_pods_many_per_shim() {
    let env = Env::start(true).await;
    let hello = env.image(CRI_NAMESPACE, "hello", &wat::parse_str(HELLO_WAT).unwrap());
    let corrupt = env.image(CRI_NAMESPACE, "corrupt", b"\0asm garbage");
    let logs = env.work.path().join("logs");
    let mut rt = cri(env.containerd.socket()).await;

    // One pod: output in the CRI log, exit code in the status.
    let config = sandbox_config("pod-0", &logs);
    let pod = run_pod(&mut rt, &config).await;
    let id = create_container(&mut rt, &pod, &config, "main", &hello)
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let status = exited(&mut rt, &id).await;
    assert_eq!(status.exit_code, 3);
    let log = std::fs::read_to_string(logs.join("pod-0/main.log")).unwrap();
    assert!(log.contains("stdout F hello from a module"), "{log}");

    // A corrupt .wasm: CRI creates the task (and so the shim sees the module) at StartContainer,
    // which fails and says why.
    let bad = create_container(&mut rt, &pod, &config, "bad", &corrupt)
        .await
        .unwrap();
    let err = rt
        .start_container(cri::StartContainerRequest { container_id: bad })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("not a valid WebAssembly binary")
            || err.message().contains("not a WebAssembly"),
        "{err}"
    );

    // The Pod's limits reach the shim as linux.resources: growing past the memory limit ends the
    // guest, and CRI reports it as OOMKilled.
    let grow = env.image(CRI_NAMESPACE, "grow", &wat::parse_str(GROW_WAT).unwrap());
    let limited = cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 4 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container_config("grow", &grow, &[])
    };
    let id = create_container_from(&mut rt, &pod, &config, limited)
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let status = exited(&mut rt, &id).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );

    // A CPU limit of 50m: however long a spinning guest runs, it uses at most 5% of that time (plus
    // the runtime's burst of two 10 ms ticks), which CRI's stats show.
    let spin = env.image(CRI_NAMESPACE, "spin", &wat::parse_str(SPIN_WAT).unwrap());
    let throttled = cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 5_000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container_config("spin", &spin, &[])
    };
    let id = create_container_from(&mut rt, &pod, &config, throttled)
        .await
        .unwrap();
    let started = Instant::now();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let window = Duration::from_millis(600);
    let mut used = Duration::ZERO;
    while started.elapsed() < window || used.is_zero() {
        assert!(started.elapsed() < Duration::from_secs(20), "no CPU stats");
        let stats = rt
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        used = Duration::from_nanos(
            stats
                .stats
                .and_then(|s| s.cpu)
                .and_then(|c| c.usage_core_nano_seconds)
                .map_or(0, |v| v.value),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let allowed = started.elapsed().mul_f64(0.05) + Duration::from_millis(40);
    assert!(
        used <= allowed,
        "used {used:?} of the CPU, allowed {allowed:?}"
    );
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();

    // 50 containers in that pod, 19 more pods: all in one shim process.
    let mut containers = Vec::new();
    for i in 0..50 {
        let id = create_container(&mut rt, &pod, &config, &format!("c{i}"), &hello)
            .await
            .unwrap();
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        containers.push(id);
    }
    let mut pods = vec![pod];
    for p in 1..20 {
        let config = sandbox_config(&format!("pod-{p}"), &logs);
        let pod = run_pod(&mut rt, &config).await;
        let id = create_container(&mut rt, &pod, &config, "main", &hello)
            .await
            .unwrap();
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        containers.push(id);
        pods.push(pod);
    }
    for id in &containers {
        assert_eq!(exited(&mut rt, id).await.exit_code, 3);
    }
    assert_eq!(
        env.containerd.shim_pids().len(),
        1,
        "20 pods and 70 containers share one shim"
    );

    for pod in pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    }
    let env = env;
    poll(
        "the shared shim exits once every pod is gone",
        Duration::from_secs(20),
        || env.containerd.shim_pids().is_empty(),
    );
}

/// The IPv4 address CRI gave the pod.
async fn pod_ip(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
) -> std::net::Ipv4Addr {
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    ip.parse()
        .unwrap_or_else(|_| panic!("pod {pod} has no IPv4 address: {ip:?}"))
}

/// Sends `GET path` and returns the whole response, if anything answers.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    Some(response)
}

/// A pod on a CNI bridge network: the wasi:http component listens on the pod IP, and a guest's
/// outgoing connections leave from the pod's network namespace: the pod's own loopback and the
/// bridge gateway are reachable as granted, a listener on the host's loopback is not.
#[tokio::test(flavor = "multi_thread")]
async fn cri_pods_get_their_own_network_namespace() {
    let env = Env::start_with(ContainerdConfig::default().cni(true)).await;
    let server = env.image(
        CRI_NAMESPACE,
        "reading-server",
        &std::fs::read(examples().join("reading_server.wasm")).unwrap(),
    );
    let probe = env.image(
        CRI_NAMESPACE,
        "net-probe",
        &std::fs::read(examples().join("net-probe.wasm")).unwrap(),
    );
    let logs = env.work.path().join("logs");
    let mut rt = cri(env.containerd.socket()).await;

    // Two listeners in the host's namespace: one on loopback only, one on every address (so also
    // on the bridge's gateway address).
    let host_loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host_loopback.set_nonblocking(true).unwrap();
    host_any.set_nonblocking(true).unwrap();
    let loopback_port = host_loopback.local_addr().unwrap().port();
    let any_port = host_any.local_addr().unwrap().port();

    const HTTP_PORT: u16 = 8080;
    // The test bridge's subnet is a random 10.x.y.0/24.
    let grants = serde_json::json!({
        "httpPort": HTTP_PORT,
        "network": [
            {"host": "127.0.0.1", "port": HTTP_PORT},
            {"host": "127.0.0.1", "port": loopback_port},
            {"host": "127.0.0.1", "port": any_port},
            {"host": "10.0.0.0/8", "port": any_port},
        ],
    });
    let config = pod_config(
        "net-pod",
        &logs,
        &[("edgewasm.io/grants", grants.to_string())],
        false,
    );
    let pod = run_pod(&mut rt, &config).await;
    let ip = pod_ip(&mut rt, &pod).await;
    let gateway = std::net::Ipv4Addr::from(u32::from(ip) & 0xffff_ff00 | 1);

    // The HTTP component answers on the pod IP, from the host, through the bridge.
    let id = create_container(&mut rt, &pod, &config, "server", &server)
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let pod_http = std::net::SocketAddr::from((ip, HTTP_PORT));
    let mut response = String::new();
    poll(
        "the component answers on the pod IP",
        Duration::from_secs(20),
        || {
            response = http_get(pod_http, "/healthz").unwrap_or_default();
            response.starts_with("HTTP/1.1 200")
        },
    );
    assert!(response.trim_end().ends_with("ok"), "{response}");

    // A guest in the same pod: its connections start in the pod's namespace.
    let targets = [
        format!("127.0.0.1:{HTTP_PORT}"),
        format!("{gateway}:{any_port}"),
        format!("127.0.0.1:{loopback_port}"),
        format!("127.0.0.1:{any_port}"),
    ];
    let args: Vec<&str> = targets.iter().map(String::as_str).collect();
    let id = create_container_from(
        &mut rt,
        &pod,
        &config,
        container_config("probe", &probe, &args),
    )
    .await
    .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let status = exited(&mut rt, &id).await;
    let log = std::fs::read_to_string(logs.join("net-pod/probe.log")).unwrap();
    let outcome = |target: &str| {
        log.lines()
            .find(|l| l.contains(&format!("\"connect\":\"{target}\"")))
            .unwrap_or_else(|| panic!("no line for {target}: {log}"))
            .contains("\"ok\":true")
    };
    // What reached the host's listeners: only the gateway connection, from the pod IP.
    let accepted = |listener: &std::net::TcpListener| {
        std::iter::from_fn(|| listener.accept().ok().map(|(_, peer)| peer.ip())).collect::<Vec<_>>()
    };
    assert_eq!(accepted(&host_any), [std::net::IpAddr::V4(ip)], "{log}");
    assert!(accepted(&host_loopback).is_empty(), "{log}");
    assert!(outcome(&targets[0]), "the pod's own server: {log}");
    assert!(outcome(&targets[1]), "the bridge gateway: {log}");
    assert!(!outcome(&targets[2]), "the host's loopback: {log}");
    assert!(!outcome(&targets[3]), "the host's loopback: {log}");
    assert_eq!(status.exit_code, 1, "{log}");

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    assert!(
        http_get(pod_http, "/healthz").is_none(),
        "the component stops with its pod"
    );
}

/// Prints `tick` every 100 ms, forever.
const TICK_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "tick\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 100000000))
    (loop
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (drop (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 200)))
      (br 0))))"#;

#[tokio::test(flavor = "multi_thread")]
async fn cri_pods_survive_a_containerd_restart() {
    let mut env = Env::start(true).await;
    let tick = env.image(CRI_NAMESPACE, "tick", &wat::parse_str(TICK_WAT).unwrap());
    let logs = env.work.path().join("logs");
    let ticks = |pod: &str| {
        std::fs::read_to_string(logs.join(pod).join("main.log"))
            .unwrap_or_default()
            .matches("stdout F tick")
            .count()
    };
    // Two pods in the one shared shim: its socket serves four tasks.
    let mut rt = cri(env.containerd.socket()).await;
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b"] {
        let config = sandbox_config(name, &logs);
        let pod = run_pod(&mut rt, &config).await;
        let id = create_container(&mut rt, &pod, &config, "main", &tick)
            .await
            .unwrap();
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        pods.push((name, pod, id));
    }
    for (name, _, _) in &pods {
        poll(&format!("{name} ticks"), Duration::from_secs(20), || {
            ticks(name) >= 2
        });
    }
    let shims = env.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "both pods share one shim process");

    env.containerd.restart().await.unwrap();
    let mut rt = cri(env.containerd.socket()).await;
    let before: Vec<usize> = pods.iter().map(|(name, _, _)| ticks(name)).collect();
    // The same containers keep running and logging through the restarted containerd.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pods
        .iter()
        .zip(&before)
        .all(|((name, _, _), n)| ticks(name) >= n + 5)
    {
        assert!(
            Instant::now() < deadline,
            "the logs stopped growing after the restart; containerd's log:\n{}",
            std::fs::read_to_string(env.containerd.log_path()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, pod, id) in &pods {
        let status = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "{name}: {status:?}\n{}",
            std::fs::read_to_string(env.containerd.log_path()).unwrap_or_default()
        );
        let sandbox = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            sandbox.state,
            cri::PodSandboxState::SandboxReady as i32,
            "{name}"
        );
    }
    assert_eq!(
        env.containerd.shim_pids(),
        shims,
        "the shim outlived containerd"
    );

    // The restarted containerd still controls them.
    for (name, pod, _) in &pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("stopping {name}: {e}"));
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    poll(
        "the shim exits after its last task",
        Duration::from_secs(10),
        || env.containerd.shim_pids().is_empty(),
    );
}
