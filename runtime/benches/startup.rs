//! Start-up costs of the runtime: loading (compile vs. precompiled cache), starting an instance from the
//! in-memory `InstancePre`, and the memory each running instance costs.
//!
//! `cargo bench -p edgewasm-runtime --bench startup`. The per-instance memory is printed (RSS growth with
//! N idle instances, divided by N), not timed.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use edgewasm_runtime::{Host, HostConfig, InstanceSpec};

/// A WASI preview 1 program that prints a line and exits.
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Waits for stdin forever: an idle instance, for the memory measurement.
const IDLE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn component_bytes() -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/components/target/wasm32-wasip2/release/camera-sampler.wasm");
    std::fs::read(path).ok()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hello = wat::parse_str(HELLO).unwrap();
    let mut inputs = vec![("p1-module", hello.clone())];
    if let Some(component) = component_bytes() {
        inputs.push(("component", component));
    } else {
        eprintln!("examples not built: component benchmarks skipped (run `make examples`)");
    }

    let cache = tempfile::tempdir().unwrap();
    for (name, bytes) in &inputs {
        let mut group = c.benchmark_group(format!("load/{name}"));
        group.sample_size(10);
        group.bench_function("compile", |b| {
            b.iter(|| {
                let host = Host::new(HostConfig::default()).unwrap();
                rt.block_on(host.load_bytes(bytes)).unwrap()
            });
        });
        // Warm the on-disk cache once, then every fresh host loads from it.
        let cached = || HostConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..HostConfig::default()
        };
        rt.block_on(Host::new(cached()).unwrap().load_bytes(bytes))
            .unwrap();
        group.bench_function("from-cache", |b| {
            b.iter(|| {
                let host = Host::new(cached()).unwrap();
                let p = rt.block_on(host.load_bytes(bytes)).unwrap();
                assert!(p.from_cache());
                p
            });
        });
        group.finish();
    }

    let host = Host::new(HostConfig::default()).unwrap();
    let program = rt.block_on(host.load_bytes(&hello)).unwrap();
    c.bench_function("start-and-wait/p1-module", |b| {
        b.iter(|| {
            rt.block_on(async {
                let i = host
                    .start(Arc::clone(&program), InstanceSpec::new("bench"))
                    .await
                    .unwrap();
                i.wait().await
            })
        });
    });

    // Per-instance memory: N idle instances (blocked reading an empty fifo-less stdin would end at once,
    // so stdin is a pipe nobody writes to).
    let idle = rt
        .block_on(host.load_bytes(&wat::parse_str(IDLE).unwrap()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Hold the write end open so readers block instead of seeing end-of-file.
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    // Each idle instance holds its stdin open: lift the soft descriptor limit to the hard one.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let n = 1000;
    let before = rss_bytes();
    let instances: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..n {
            let mut spec = InstanceSpec::new(format!("idle-{i}"));
            spec.stdio.stdin = Some(fifo.clone());
            v.push(host.start(Arc::clone(&idle), spec).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        v
    });
    let after = rss_bytes();
    eprintln!(
        "per-instance memory: {:.1} KiB RSS ({n} idle instances, {:.1} MiB total)",
        (after.saturating_sub(before)) as f64 / f64::from(n) / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / 1024.0
    );
    for i in &instances {
        i.kill(9);
    }
    rt.block_on(async {
        for i in &instances {
            i.wait().await;
        }
    });
}

criterion_group!(startup, benches);
criterion_main!(startup);
