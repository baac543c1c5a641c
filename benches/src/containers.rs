//! The figures measured through containerd with `ctr`: cold start, short tasks back to back, memory
//! per running instance and wasi:http requests per second, each for edgewasm and its peers (runc with a
//! static native binary, runwasi when a locally built shim is given) in one private containerd.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use edgewasm_testkit::containerd::{Containerd, ContainerdConfig, EDGEWASM_RUNTIME};
use edgewasm_testkit::oci::ImageBuilder;
use edgewasm_testkit::process::{ChildGuard, free_port};

use crate::memory;
use crate::results::{Better, Figure, Role, Series};

const NS: &str = "edgewasm-bench";
const RUNWASI_RUNTIME: &str = "io.containerd.wasmtime.v1";
const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// What the containerd figures need.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The release `containerd-shim-edgewasm-v1`.
    pub shim: PathBuf,
    /// A locally built runwasi `containerd-shim-wasmtime-v1`, if any.
    pub runwasi: Option<PathBuf>,
    /// `benches/hello` built for wasm32-wasip2.
    pub hello_wasm: PathBuf,
    /// `benches/hello.c`, built static for runc.
    pub hello_c: PathBuf,
    /// The reading-server example (a wasi:http/proxy component).
    pub server_wasm: PathBuf,
    /// This benchmark binary (serves the native HTTP baseline).
    pub bench_exe: PathBuf,
}

/// One system under `ctr run`: its runtime name, image and the flags it needs.
#[derive(Debug, Clone)]
struct System {
    name: String,
    role: Role,
    runtime: String,
    image: String,
    extra: Vec<String>,
}

/// A private containerd with the benchmark images imported.
struct Bench {
    containerd: Containerd,
    _work: tempfile::TempDir,
    systems: Vec<System>,
    runwasi_missing: Option<String>,
    server_image: String,
}

impl Bench {
    async fn start(inputs: &Inputs) -> Result<Self> {
        let containerd = Containerd::start(
            ContainerdConfig::default()
                .shim(&inputs.shim)
                .import_pause(false),
        )
        .await
        .context("starting a private containerd (run as root; `make deps` installs it)")?;
        let work = tempfile::Builder::new()
            .prefix("edgewasm-bench-")
            .tempdir()?;
        let wasm = std::fs::read(&inputs.hello_wasm)
            .with_context(|| format!("reading {}", inputs.hello_wasm.display()))?;
        let wasm_image = "docker.io/edgewasm/bench-hello:wasm";
        ImageBuilder::new(wasm_image)
            .file("app.wasm", wasm)
            .entrypoint(["/app.wasm"])
            .import(&containerd, NS, work.path())?;
        let native = build_static(&inputs.hello_c, work.path())?;
        let native_image = "docker.io/edgewasm/bench-hello:native";
        ImageBuilder::new(native_image)
            .executable("hello", native)
            .entrypoint(["/hello"])
            .import(&containerd, NS, work.path())?;
        let server_image = "docker.io/edgewasm/bench-reading-server:wasm";
        ImageBuilder::new(server_image)
            .file(
                "app.wasm",
                std::fs::read(&inputs.server_wasm)
                    .with_context(|| format!("reading {}", inputs.server_wasm.display()))?,
            )
            .entrypoint(["/app.wasm"])
            .import(&containerd, NS, work.path())?;

        let runc_root = containerd.dir().join("runc").display().to_string();
        let mut systems = vec![
            System {
                name: "edgewasm".into(),
                role: Role::Subject,
                runtime: EDGEWASM_RUNTIME.into(),
                image: wasm_image.into(),
                extra: Vec::new(),
            },
            System {
                name: "runc".into(),
                role: Role::Peer,
                runtime: RUNC_RUNTIME.into(),
                image: native_image.into(),
                extra: vec!["--runc-root".into(), runc_root],
            },
        ];
        let runwasi_missing = if let Some(path) = &inputs.runwasi {
            // containerd finds shims on the PATH it started with; the testkit puts its bin folder first.
            let link = containerd.dir().join("bin/containerd-shim-wasmtime-v1");
            std::os::unix::fs::symlink(path, &link)
                .with_context(|| format!("linking {}", path.display()))?;
            systems.push(System {
                name: "runwasi".into(),
                role: Role::Peer,
                runtime: RUNWASI_RUNTIME.into(),
                image: wasm_image.into(),
                extra: Vec::new(),
            });
            None
        } else {
            let why = "runwasi: not built locally (set RUNWASI_SHIM, see benches/README.md)";
            eprintln!("{why}");
            Some(why.to_owned())
        };
        Ok(Self {
            containerd,
            _work: work,
            systems,
            runwasi_missing,
            server_image: server_image.into(),
        })
    }

    fn fifo_dir(&self) -> String {
        self.containerd.fifo_dir().display().to_string()
    }

    /// `ctr run` arguments (after `ctr --address --namespace`) for `system`.
    fn run_args(&self, system: &System, mode: &str, id: &str, env: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "run".into(),
            mode.into(),
            "--runtime".into(),
            system.runtime.clone(),
            "--fifo-dir".into(),
            self.fifo_dir(),
        ];
        argv.extend(system.extra.iter().cloned());
        for e in env {
            argv.push("--env".into());
            argv.push((*e).to_owned());
        }
        argv.push(system.image.clone());
        argv.push(id.to_owned());
        argv
    }

    fn ctr(&self, args: &[String]) -> Command {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containerd.ctr(NS).command(&args)
    }

    /// A foreground `ctr run --rm` that must succeed.
    fn run_once(&self, system: &System, id: &str) -> Result<()> {
        let out = self
            .ctr(&self.run_args(system, "--rm", id, &[]))
            .stdin(Stdio::null())
            .output()
            .context("running ctr")?;
        ensure!(
            out.status.success(),
            "{}: ctr run {id} failed ({}): {}",
            system.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn missing_runwasi(&self, figure: &mut Figure, group: Option<&str>) {
        if let Some(why) = &self.runwasi_missing {
            let s = Series::missing("runwasi", Role::Peer, why.clone());
            figure.series.push(match group {
                Some(g) => s.in_group(g),
                None => s,
            });
        }
    }

    /// Kills and removes every task and container of the namespace, then waits for their shims to go.
    fn clear(&self) -> Result<()> {
        let ctr = self.containerd.ctr(NS);
        let ids: Vec<String> = ctr
            .run(&["containers", "ls", "-q"])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        for id in &ids {
            let _ = ctr.run(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ctr.run(&["tasks", "delete", "-f", id]).is_err() && ctr.task_status(id)?.is_some()
            {
                ensure!(Instant::now() < deadline, "task {id} did not go away");
                std::thread::sleep(Duration::from_millis(50));
            }
            ctr.run(&["containers", "delete", id])?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.containerd.shim_pids().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "shims still running 30s after their tasks were deleted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Bench {
    /// Removes what a failed or interrupted figure left: tasks through containerd when it still
    /// answers, then any container process that outlived its shim (runc's containers keep running when
    /// their shim is killed). The testkit's guard then stops containerd and the shims.
    fn drop(&mut self) {
        let shims = self.containerd.shim_pids();
        let containers: Vec<u32> = memory::descendants(&shims)
            .into_iter()
            .filter(|pid| !shims.contains(pid))
            .collect();
        if let Err(e) = self.clear() {
            eprintln!("cleaning up the benchmark's containers: {e:#}");
            for pid in containers {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.cast_signed()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Builds `src` with `gcc -static` into `work` and returns the binary's bytes.
fn build_static(src: &Path, work: &Path) -> Result<Vec<u8>> {
    let bin = work.join("hello-native");
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(src)
        .status()
        .context("running gcc (scripts/deps.d/bench.sh installs gcc and libc6-dev)")?;
    ensure!(status.success(), "gcc failed on {}", src.display());
    Ok(std::fs::read(&bin)?)
}

/// Runs the four containerd figures and writes them to `results`.
pub async fn run(inputs: &Inputs, results: &Path, only: Option<&str>) -> Result<()> {
    let bench = Bench::start(inputs).await?;
    let wants = |id: &str| only.is_none_or(|o| id.contains(o));
    if wants("cold-start") {
        cold_start(&bench)?.save(results)?;
    }
    if wants("tasks") {
        tasks(&bench)?.save(results)?;
    }
    if wants("memory") {
        per_instance_memory(&bench)?.save(results)?;
    }
    if wants("http") {
        http(&bench, inputs)?.save(results)?;
    }
    Ok(())
}

fn cold_start(bench: &Bench) -> Result<Figure> {
    let mut f = Figure::new(
        "01-cold-start",
        "cold start of a hello component via `ctr run --rm`",
        "ms",
        Better::Lower,
        "≤ 0.33× runwasi, below runc",
    );
    let runs = if crate::quick() { 5 } else { 40 };
    let work = tempfile::tempdir()?;
    for system in &bench.systems {
        let mut command = vec!["ctr".to_owned()];
        command.push("--address".into());
        command.push(bench.containerd.socket().display().to_string());
        command.push("--namespace".into());
        command.push(NS.into());
        command.extend(bench.run_args(system, "--rm", "cold", &[]));
        let json = work.path().join(format!("{}.json", system.name));
        let status = Command::new("hyperfine")
            .args([
                "--shell=none",
                "--style",
                "basic",
                "--warmup",
                "2",
                "--runs",
            ])
            .arg(runs.to_string())
            .arg("--export-json")
            .arg(&json)
            .arg("--command-name")
            .arg(&system.name)
            .arg(command.join(" "))
            .stdin(Stdio::null())
            .status()
            .context("running hyperfine (scripts/deps.d/bench.sh installs it)")?;
        ensure!(status.success(), "hyperfine failed for {}", system.name);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        let times: Vec<f64> = report["results"][0]["times"]
            .as_array()
            .context("hyperfine JSON without results[0].times")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .map(|s| s * 1000.0)
            .collect();
        f.series
            .push(Series::measured(&system.name, system.role, times));
    }
    bench.missing_runwasi(&mut f, None);
    f.note(
        "Whole `ctr run --rm` processes timed by hyperfine (2 warm-up runs first, so each runtime's \
         compiled-code cache is warm): containerd starts a new shim for every run, since a shim exits \
         after its last task. runc runs a static C binary (`benches/hello.c`) printing the same line.",
    );
    Ok(f)
}

fn tasks(bench: &Bench) -> Result<Figure> {
    let mut f = Figure::new(
        "02-short-tasks",
        "short tasks back to back (`ctr run --rm`, sequential)",
        "tasks/s",
        Better::Higher,
        "≥ 5× runwasi",
    );
    let (batches, per_batch) = if crate::quick() { (1, 20) } else { (2, 200) };
    for system in &bench.systems {
        let mut rates = Vec::new();
        for b in 0..batches {
            let start = Instant::now();
            for i in 0..per_batch {
                bench.run_once(system, &format!("task-{b}-{i}"))?;
            }
            rates.push(f64::from(per_batch) / start.elapsed().as_secs_f64());
        }
        f.series
            .push(Series::measured(&system.name, system.role, rates));
    }
    bench.missing_runwasi(&mut f, None);
    f.note(format!(
        "{batches} batch(es) of {per_batch} tasks run one after the other; each sample is one batch's \
         tasks per second."
    ));
    Ok(f)
}

fn per_instance_memory(bench: &Bench) -> Result<Figure> {
    let mut f = Figure::new(
        "03-memory-per-instance",
        "memory per running instance (PSS of shims and their processes ÷ N)",
        "MiB",
        Better::Lower,
        "≤ 1 MB each (runwasi measured 10.8 MB, runc's shim 3.5 MB)",
    );
    let counts: &[u32] = if crate::quick() {
        &[1, 10]
    } else {
        &[1, 10, 100]
    };
    for &n in counts {
        let group = format!("{n} instance{}", if n == 1 { "" } else { "s" });
        for system in &bench.systems {
            bench.clear()?;
            for i in 0..n {
                let args =
                    bench.run_args(system, "-d", &format!("idle-{i}"), &["SLEEP_SECONDS=3600"]);
                let out = bench
                    .ctr(&args)
                    .stdin(Stdio::null())
                    .output()
                    .context("running ctr")?;
                ensure!(
                    out.status.success(),
                    "{}: ctr run -d idle-{i}: {}",
                    system.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            wait_running(bench, n)?;
            // Let lazily touched pages and background threads settle before reading PSS.
            std::thread::sleep(Duration::from_secs(1));
            let pss = memory::tree_pss_bytes(&bench.containerd.shim_pids());
            let per = pss as f64 / f64::from(n) / 1024.0 / 1024.0;
            f.series
                .push(Series::measured(&system.name, system.role, vec![per]).in_group(&group));
            bench.clear()?;
        }
        bench.missing_runwasi(&mut f, Some(&group));
    }
    f.note(
        "Idle instances (`SLEEP_SECONDS=3600`) started with `ctr run -d`; the figure is the summed PSS \
         (`/proc/PID/smaps_rollup`) of every shim process this containerd started and all their \
         descendants (runc's container processes, runwasi's per-container processes), divided by N. \
         edgewasm runs every task in one shim process.",
    );
    Ok(f)
}

fn wait_running(bench: &Bench, n: u32) -> Result<()> {
    let ctr = bench.containerd.ctr(NS);
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let running = ctr
            .tasks()?
            .iter()
            .filter(|(_, _, s)| s == "RUNNING")
            .count();
        if running == n as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {running} of {n} tasks running after 120s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http(bench: &Bench, inputs: &Inputs) -> Result<Figure> {
    let mut f = Figure::new(
        "07-wasi-http",
        "wasi:http requests/s (wrk, loopback, GET /healthz)",
        "req/s",
        Better::Higher,
        "≥ 2.5× runwasi",
    );
    let (runs, secs) = if crate::quick() { (1, 3) } else { (3, 10) };
    let wrk = |port: u16| -> Result<Vec<f64>> {
        let url = format!("http://127.0.0.1:{port}/healthz");
        wait_http(&url)?;
        wrk_rps(&url, 1)?;
        (0..runs).map(|_| wrk_rps(&url, secs)).collect()
    };

    bench.clear()?;
    let port = free_port()?;
    let edgewasm = &bench.systems[0];
    let mut server = edgewasm.clone();
    server.image.clone_from(&bench.server_image);
    server.extra = vec![
        "--annotation".into(),
        format!("edgewasm.io/grants={{\"httpPort\":{port}}}"),
    ];
    start_detached(bench, &server, "server")?;
    f.series
        .push(Series::measured("edgewasm", Role::Subject, wrk(port)?));
    bench.clear()?;

    if let Some(runwasi) = bench.systems.iter().find(|s| s.name == "runwasi") {
        let port = free_port()?;
        let mut server = runwasi.clone();
        server.image.clone_from(&bench.server_image);
        server.extra = vec![
            "--net-host".into(),
            "--env".into(),
            format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR=127.0.0.1:{port}"),
        ];
        start_detached(bench, &server, "server")?;
        f.series
            .push(Series::measured("runwasi", Role::Peer, wrk(port)?));
        bench.clear()?;
    } else {
        bench.missing_runwasi(&mut f, None);
    }

    let port = free_port()?;
    let log = bench.containerd.dir().join("http-baseline.log");
    let _baseline = ChildGuard::spawn(
        "http-baseline",
        &inputs.bench_exe,
        &["http-baseline".into(), "--port".into(), port.to_string()],
        &log,
    )?;
    f.series.push(Series::measured(
        "native Rust hyper server (baseline, not Wasm)",
        Role::Peer,
        wrk(port)?,
    ));
    f.note(format!(
        "`wrk -t2 -c32 -d{secs}s` against the reading-server example's `/healthz` ({runs} run(s) after a \
         1 s warm-up); wrk shares the 2 cores with the server. The native baseline is a plain hyper \
         server answering the same route in-process: the ceiling for any Wasm runtime here."
    ));
    Ok(f)
}

fn start_detached(bench: &Bench, system: &System, id: &str) -> Result<()> {
    let out = bench
        .ctr(&bench.run_args(system, "-d", id, &[]))
        .stdin(Stdio::null())
        .output()
        .context("running ctr")?;
    ensure!(
        out.status.success(),
        "{}: ctr run -d {id}: {}",
        system.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Polls `url` until it answers 200.
fn wait_http(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    loop {
        if let Ok(mut conn) = std::net::TcpStream::connect(&hostport) {
            use std::io::{Read as _, Write as _};
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ =
                conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut response = String::new();
            if conn.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within 30s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `wrk` run; its `Requests/sec`.
fn wrk_rps(url: &str, secs: u32) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32"])
        .arg(format!("-d{secs}s"))
        .arg(url)
        .output()
        .context("running wrk (scripts/deps.d/bench.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    if let Some(errors) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw failed responses from {url}: {errors}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}
