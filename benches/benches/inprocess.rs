//! In-process start of the benchmark guest in edgewasm's runtime (from the loaded, pre-instantiated
//! component, as the shim does for each task after the first) next to the cheapest native start there
//! is, a fork+exec of `/bin/true`: what a task costs once containerd and the shim are out of the way.
//!
//! `BENCH_HELLO_WASM=<bench-hello.wasm> cargo bench -p edgewasm-bench --bench inprocess` (`benches/run.sh`
//! sets it and turns criterion's samples into `bench/results/00-instance-start.json`).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use edgewasm_runtime::{Host, HostConfig, InstanceSpec};

fn benches(c: &mut Criterion) {
    let Some(wasm) = std::env::var_os("BENCH_HELLO_WASM") else {
        eprintln!(
            "BENCH_HELLO_WASM is not set: run through benches/run.sh (or set it to bench-hello.wasm)"
        );
        return;
    };
    let bytes = std::fs::read(&wasm).expect("reading BENCH_HELLO_WASM");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let host = Host::new(HostConfig::default()).unwrap();
    let program = rt.block_on(host.load_bytes(&bytes)).unwrap();

    let mut group = c.benchmark_group("instance-start");
    group.sample_size(if std::env::var_os("BENCH_QUICK").is_some() {
        10
    } else {
        100
    });
    group.bench_function("edgewasm", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut spec = InstanceSpec::new("bench");
                spec.stdio.stdout = Some("/dev/null".into());
                let i = host.start(Arc::clone(&program), spec).await.unwrap();
                i.wait().await
            })
        });
    });
    group.bench_function("native-process", |b| {
        b.iter(|| std::process::Command::new("/bin/true").status().unwrap());
    });
    group.finish();
}

criterion_group!(inprocess, benches);
criterion_main!(inprocess);
