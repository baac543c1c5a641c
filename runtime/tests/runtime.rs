//! Runs real Wasm through the runtime: the three kinds, grants enforced, limits, kill, cache, bad input,
//! and a network namespace. One test binary (linking wasmtime is slow); the example components are built
//! once per run by cargo (a no-op when up to date).

mod common;

use std::path::Path;
use std::time::Duration;

use edgewasm_api::{Access, NetworkGrant, PathGrant, Protocol};
use edgewasm_runtime::{
    Error, ExitReason, ExitStatus, Grants, Host, HostConfig, Instance, InstanceSpec, Limits,
    ProgramKind, Stdio,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Netns, example, host};

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid wat")
}

/// Stdio captured in files of a temp dir.
struct Captured {
    dir: tempfile::TempDir,
}

impl Captured {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn stdio(&self) -> Stdio {
        Stdio {
            stdin: None,
            stdout: Some(self.dir.path().join("stdout")),
            stderr: Some(self.dir.path().join("stderr")),
        }
    }
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

/// Waits for an instance with a generous bound so a hang fails instead of stalling CI.
async fn wait(instance: &Instance) -> ExitStatus {
    tokio::time::timeout(Duration::from_mins(1), instance.wait())
        .await
        .expect("instance finished")
}

async fn run(wasm: &Path, mut spec: InstanceSpec) -> (ExitStatus, Captured) {
    let out = Captured::new();
    spec.stdio = out.stdio();
    let program = host().load(wasm).await.expect("load");
    let instance = host().start(program, spec).await.expect("start");
    (wait(&instance).await, out)
}

fn file_grant(host: &Path, guest: &str, access: Access) -> PathGrant {
    PathGrant {
        host: host.to_str().unwrap().to_string(),
        guest: Some(guest.to_string()),
        access,
    }
}

fn spec(args: &[&str], env: &[(&str, &str)], grants: Grants) -> InstanceSpec {
    InstanceSpec {
        args: args.iter().map(|s| (*s).to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        grants,
        ..InstanceSpec::new(args.first().copied().unwrap_or("test"))
    }
}

const HELLO_P1: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from p1\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 14))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))))"#;

#[tokio::test]
async fn preview1_module_runs_with_exit_code_and_output() {
    let out = Captured::new();
    let program = host().load_bytes(&wat(HELLO_P1)).await.unwrap();
    assert_eq!(program.kind(), ProgramKind::Preview1Module);
    let instance = host()
        .start(
            program,
            InstanceSpec {
                stdio: out.stdio(),
                ..InstanceSpec::new("p1")
            },
        )
        .await
        .unwrap();
    let status = wait(&instance).await;
    assert_eq!(status.reason, ExitReason::Exited);
    assert_eq!(status.code, 3);
    assert_eq!(out.stdout(), "hello from p1\n");
    assert!(!instance.kill(9), "a finished instance is not running");
}

#[tokio::test]
async fn camera_sampler_reads_only_its_granted_device() {
    // /dev/zero stands in for the camera, granted as /dev/video0 (a device node of another filesystem).
    let grants = Grants {
        paths: vec![file_grant(
            Path::new("/dev/zero"),
            "/dev/video0",
            Access::ReadOnly,
        )],
        ..Grants::default()
    };
    let (status, out) = run(
        &example("camera-sampler"),
        spec(
            &["camera-sampler"],
            &[
                ("EDGEWASM_DEVICE_DEVNODE", "/dev/video0"),
                ("FRAME_BYTES", "1024"),
            ],
            grants.clone(),
        ),
    )
    .await;
    assert_eq!(
        status,
        ExitStatus {
            code: 0,
            reason: ExitReason::Exited,
            message: None
        },
        "{}",
        out.stderr()
    );
    let lines: Vec<serde_json::Value> = out
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["bytes"], 1024);
    assert_eq!(lines[0]["device"], "/dev/video0");

    // A sibling device in the same guest /dev, a host file, and the host's own path of the device.
    for other in ["/dev/null", "/etc/passwd", "/dev/zero"] {
        let (status, out) = run(
            &example("camera-sampler"),
            spec(&["camera-sampler", other], &[], grants.clone()),
        )
        .await;
        assert_eq!(
            status.code,
            1,
            "{other} must not be readable: {}",
            out.stdout()
        );
        assert!(out.stderr().contains("cannot open"), "{}", out.stderr());
    }
}

#[tokio::test]
async fn sensor_logger_reads_a_granted_file_and_writes_its_last_reading() {
    let dir = tempfile::tempdir().unwrap();
    let sensor = dir.path().join("temp1_input");
    std::fs::write(&sensor, "21500\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let grants = Grants {
        paths: vec![
            file_grant(
                &sensor,
                "/sys/class/hwmon/hwmon0/temp1_input",
                Access::ReadOnly,
            ),
            file_grant(&data, "/data", Access::ReadWrite),
        ],
        ..Grants::default()
    };
    let (status, out) = run(
        &example("sensor-logger"),
        spec(
            &["sensor-logger"],
            &[
                ("SENSOR_PATH", "/sys/class/hwmon/hwmon0/temp1_input"),
                ("SCALE", "0.001"),
                ("SAMPLES", "2"),
                ("LAST_READING_PATH", "/data/last-reading.json"),
            ],
            grants,
        ),
    )
    .await;
    assert!(status.success(), "{status:?} {}", out.stderr());
    let last: serde_json::Value =
        serde_json::from_str(out.stdout().lines().last().unwrap()).unwrap();
    assert_eq!(last["value"], 21.5);
    let written = std::fs::read_to_string(data.join("last-reading.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&written).unwrap(),
        last
    );
}

#[tokio::test]
async fn read_only_grants_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let sensor = dir.path().join("value");
    std::fs::write(&sensor, "7\n").unwrap();
    let grants = Grants {
        paths: vec![
            file_grant(&sensor, "/sensor/value", Access::ReadOnly),
            file_grant(&data, "/data", Access::ReadOnly),
        ],
        ..Grants::default()
    };
    let (status, out) = run(
        &example("sensor-logger"),
        spec(
            &["sensor-logger", "/sensor/value"],
            &[("SAMPLES", "1"), ("LAST_READING_PATH", "/data/x.json")],
            grants,
        ),
    )
    .await;
    assert!(status.success(), "{status:?}");
    assert!(
        out.stderr().contains("writing /data/x.json"),
        "{}",
        out.stderr()
    );
    assert!(!data.join("x.json").exists());
}

/// Sends `requests` GETs on one connection (HTTP/1.1 keep-alive) and returns the raw responses.
async fn http_get_keepalive(addr: std::net::SocketAddr, paths: &[&str]) -> Vec<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut responses = Vec::new();
    for path in paths {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Read the head, then exactly content-length bytes.
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        responses.push(String::from_utf8_lossy(&buf[..head_end + len]).to_string());
    }
    responses
}

#[tokio::test]
async fn reading_server_serves_the_granted_reading_with_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let reading = dir.path().join("last-reading.json");
    std::fs::write(&reading, "{\"value\":21.5}\n").unwrap();
    let out = Captured::new();
    let program = host().load(&example("reading_server")).await.unwrap();
    assert_eq!(program.kind(), ProgramKind::HttpProxy);
    let instance = host()
        .start(
            program,
            InstanceSpec {
                stdio: out.stdio(),
                ..spec(
                    &["reading-server"],
                    &[],
                    Grants {
                        paths: vec![file_grant(
                            &reading,
                            "/data/last-reading.json",
                            Access::ReadOnly,
                        )],
                        http_port: Some(0),
                        ..Grants::default()
                    },
                )
            },
        )
        .await
        .unwrap();
    let addr = instance.http_addr().expect("listening");
    assert!(addr.ip().is_loopback());
    let responses = http_get_keepalive(addr, &["/", "/healthz", "/"]).await;
    assert!(responses[0].starts_with("HTTP/1.1 200"), "{}", responses[0]);
    assert!(
        responses[0].ends_with("{\"value\":21.5}\n"),
        "{}",
        responses[0]
    );
    assert!(responses[1].ends_with("ok\n"));
    std::fs::write(&reading, "{\"value\":22}\n").unwrap();
    let again = http_get_keepalive(addr, &["/"]).await;
    assert!(again[0].ends_with("{\"value\":22}\n"), "{}", again[0]);

    assert!(instance.kill(libc::SIGTERM));
    let status = wait(&instance).await;
    assert_eq!(
        status.reason,
        ExitReason::Killed {
            signal: libc::SIGTERM
        }
    );
    assert_eq!(status.code, 128 + libc::SIGTERM);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after kill"
    );
}

#[tokio::test]
async fn network_reaches_only_granted_peers() {
    let granted = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let granted_addr = granted.local_addr().unwrap().to_string();
    let other_addr = other.local_addr().unwrap().to_string();
    let grants = Grants {
        network: vec![NetworkGrant {
            host: "127.0.0.1".into(),
            port: Some(granted.local_addr().unwrap().port()),
            protocol: Protocol::Tcp,
        }],
        ..Grants::default()
    };
    let (status, out) = run(
        &example("net-probe"),
        spec(&["net-probe", &granted_addr], &[], grants.clone()),
    )
    .await;
    assert!(
        status.success(),
        "granted peer: {} {}",
        out.stdout(),
        out.stderr()
    );
    let (status, out) = run(
        &example("net-probe"),
        spec(&["net-probe", &other_addr], &[], grants),
    )
    .await;
    assert_eq!(status.code, 1, "ungranted port must fail: {}", out.stdout());
    let (status, out) = run(
        &example("net-probe"),
        spec(&["net-probe", &granted_addr], &[], Grants::default()),
    )
    .await;
    assert_eq!(
        status.code,
        1,
        "no network grant, no network: {}",
        out.stdout()
    );
}

#[tokio::test]
async fn busy_loop_is_killed_promptly() {
    let program = host()
        .load_bytes(&wat(r#"(module (func (export "_start") (loop (br 0))))"#))
        .await
        .unwrap();
    let instance = host()
        .start(program, InstanceSpec::new("spin"))
        .await
        .unwrap();
    assert!(instance.kill(0), "running");
    assert!(instance.try_wait().is_none());
    assert!(instance.kill(libc::SIGKILL));
    let status = wait(&instance).await;
    assert_eq!(
        status.reason,
        ExitReason::Killed {
            signal: libc::SIGKILL
        }
    );
    assert_eq!(status.code, 137);
}

#[tokio::test]
async fn deadline_ends_a_spinning_guest() {
    let program = host()
        .load_bytes(&wat(r#"(module (func (export "_start") (loop (br 0))))"#))
        .await
        .unwrap();
    let instance = host()
        .start(
            program,
            InstanceSpec {
                limits: Limits {
                    deadline: Some(Duration::from_millis(100)),
                    cpu_millis: Some(200),
                    ..Limits::default()
                },
                ..InstanceSpec::new("deadline")
            },
        )
        .await
        .unwrap();
    let status = wait(&instance).await;
    assert_eq!(status.reason, ExitReason::DeadlineExceeded);
    assert!(instance.stats().cpu_time > Duration::ZERO);
}

#[tokio::test]
async fn memory_past_the_limit_is_out_of_memory() {
    let program = host()
        .load_bytes(&wat(r#"(module (memory 1)
                 (func (export "_start")
                   (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#))
        .await
        .unwrap();
    let instance = host()
        .start(
            program,
            InstanceSpec {
                limits: Limits {
                    memory_bytes: Some(8 << 20),
                    ..Limits::default()
                },
                ..InstanceSpec::new("hog")
            },
        )
        .await
        .unwrap();
    let status = wait(&instance).await;
    assert_eq!(status.reason, ExitReason::OutOfMemory, "{status:?}");
    assert_eq!(status.code, 137);
    assert!(status.message.unwrap().contains("8388608"));
}

#[tokio::test]
async fn trap_reports_the_guest_backtrace() {
    let program = host()
        .load_bytes(&wat(
            r#"(module (func $explode unreachable) (func (export "_start") call $explode))"#,
        ))
        .await
        .unwrap();
    let instance = host()
        .start(program, InstanceSpec::new("trap"))
        .await
        .unwrap();
    let status = wait(&instance).await;
    assert_eq!(status.reason, ExitReason::Trapped);
    let message = status.message.unwrap();
    assert!(
        message.contains("explode") && message.contains("unreachable"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_binaries_give_clear_errors() {
    let full = std::fs::read(example("camera-sampler")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let err = host().load(&truncated).await.unwrap_err();
    assert!(matches!(err, Error::InvalidWasm { .. }), "{err}");
    assert!(err.to_string().contains("truncated.wasm"), "{err}");

    let err = host()
        .load_bytes(b"#!/bin/sh\necho hi\n")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotWasm { .. }), "{err}");
    let err = host()
        .load(&dir.path().join("missing.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let err = host()
        .load_bytes(&wat(r#"(module (func (export "run")))"#))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownWorld { .. }), "{err}");

    let err = host()
        .load_bytes(&wat(
            r#"(module (import "env" "camera_grab" (func)) (func (export "_start")))"#,
        ))
        .await
        .unwrap_err();
    match err {
        Error::MissingImport { name, .. } => assert!(name.contains("camera_grab"), "{name}"),
        other => panic!("expected MissingImport, got {other}"),
    }
}

#[tokio::test]
async fn corrupt_cache_entry_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = || HostConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..HostConfig::default()
    };
    let bytes = wat(HELLO_P1);
    let first = Host::new(cfg()).unwrap().load_bytes(&bytes).await.unwrap();
    assert!(!first.from_cache());
    let second = Host::new(cfg()).unwrap().load_bytes(&bytes).await.unwrap();
    assert!(second.from_cache());

    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("cache entry");
    let mut data = std::fs::read(&entry).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&entry, &data).unwrap();

    let host3 = Host::new(cfg()).unwrap();
    let rebuilt = host3.load_bytes(&bytes).await.unwrap();
    assert!(!rebuilt.from_cache(), "corrupt entry must not be used");
    let out = Captured::new();
    let status = wait(
        &host3
            .start(
                rebuilt,
                InstanceSpec {
                    stdio: out.stdio(),
                    ..InstanceSpec::new("rebuilt")
                },
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.code, 3);
    assert!(
        Host::new(cfg())
            .unwrap()
            .load_bytes(&bytes)
            .await
            .unwrap()
            .from_cache(),
        "entry rewritten"
    );

    // An entry from another engine or a random file under the right name is rejected the same way.
    std::fs::write(&entry, b"EWCACHE1 but not really a cache entry").unwrap();
    assert!(
        !Host::new(cfg())
            .unwrap()
            .load_bytes(&bytes)
            .await
            .unwrap()
            .from_cache()
    );
}

#[tokio::test]
async fn invalid_grants_fail_at_start() {
    let program = host().load_bytes(&wat(HELLO_P1)).await.unwrap();
    let bad = [
        Grants {
            paths: vec![file_grant(
                Path::new("/nonexistent/device"),
                "/dev/x",
                Access::ReadOnly,
            )],
            ..Grants::default()
        },
        Grants {
            network: vec![NetworkGrant {
                host: "not a host".into(),
                port: None,
                protocol: Protocol::Tcp,
            }],
            ..Grants::default()
        },
    ];
    for grants in bad {
        let err = host()
            .start(
                program.clone(),
                InstanceSpec {
                    grants,
                    ..InstanceSpec::new("bad")
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidGrant { .. }), "{err}");
    }
}

#[tokio::test]
async fn many_instances_share_one_program() {
    let program = host().load_bytes(&wat(HELLO_P1)).await.unwrap();
    let mut instances = Vec::new();
    for i in 0..100 {
        instances.push(
            host()
                .start(program.clone(), InstanceSpec::new(format!("many-{i}")))
                .await
                .unwrap(),
        );
    }
    for instance in instances {
        assert_eq!(wait(&instance).await.code, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_network_inside_their_namespace() {
    let ns = Netns::create("ewrt");

    // The HTTP listener lives in the namespace: reachable from inside, not from the host's loopback.
    let dir = tempfile::tempdir().unwrap();
    let reading = dir.path().join("r.json");
    std::fs::write(&reading, "{\"value\":1}\n").unwrap();
    let program = host().load(&example("reading_server")).await.unwrap();
    let server = host()
        .start(
            program,
            InstanceSpec {
                netns: Some(ns.path()),
                http_bind: Some("127.0.0.1".parse().unwrap()),
                ..spec(
                    &["reading-server"],
                    &[("READING_PATH", "/data/r.json")],
                    Grants {
                        paths: vec![file_grant(&reading, "/data/r.json", Access::ReadOnly)],
                        http_port: Some(18080),
                        ..Grants::default()
                    },
                )
            },
        )
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    assert_eq!(addr.port(), 18080);
    assert!(
        ns.connect_inside(addr).is_ok(),
        "reachable inside the namespace"
    );
    // A host-side listener on the same port proves the instance did not bind in the host namespace.
    let host_side = std::net::TcpListener::bind(addr).expect("port free in the host namespace");
    drop(host_side);

    // Outgoing sockets of a guest in the namespace reach the server inside it.
    let grants = Grants {
        network: vec![NetworkGrant {
            host: "127.0.0.1".into(),
            port: Some(18080),
            protocol: Protocol::Tcp,
        }],
        ..Grants::default()
    };
    let out = Captured::new();
    let probe = host().load(&example("net-probe")).await.unwrap();
    let instance = host()
        .start(
            probe,
            InstanceSpec {
                netns: Some(ns.path()),
                stdio: out.stdio(),
                ..spec(&["net-probe", &addr.to_string()], &[], grants)
            },
        )
        .await
        .unwrap();
    assert!(
        wait(&instance).await.success(),
        "the server in the same namespace: {}",
        out.stdout()
    );

    assert!(server.kill(libc::SIGTERM));
    wait(&server).await;
}
