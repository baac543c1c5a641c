//! `edgewasm run` end to end on copies of `examples/standalone`: every component's output, a device
//! removed under its instance, bad input, and a trapping component's backoff.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_mins(3);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the example components once (cargo caches them across runs).
fn examples() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo().join("examples/components");
            let out = root.join("target/wasm32-wasip2/release");
            let wanted = ["camera-sampler.wasm", "sensor-logger.wasm", "reading_server.wasm"];
            if !wanted.iter().all(|w| out.join(w).is_file()) {
                let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
                    .arg(root.join("Cargo.toml"))
                    .env_remove("CARGO_TARGET_DIR")
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "building the example components failed (is wasm32-wasip2 installed? `make deps`)");
            }
            out
        })
        .clone()
}

/// A copy of the demo folder whose images point at the built examples and whose server port is free.
struct Demo {
    dir: tempfile::TempDir,
    port: u16,
}

impl Demo {
    fn new() -> Self {
        let components = examples();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let src = repo().join("examples/standalone");
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .replace(
                    "../components/target/wasm32-wasip2/release",
                    components.to_str().unwrap(),
                )
                .replace("httpPort: 8787", &format!("httpPort: {port}"));
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
        Self { dir, port }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    fn log(&self, workload: &str) -> String {
        let logs = self.path().join(".edgewasm/logs");
        let mut out = String::new();
        for e in std::fs::read_dir(&logs).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("default.{workload}."))
            {
                out.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
        out
    }
}

/// A running `edgewasm run`, killed on drop; its JSON lines arrive on a channel.
struct Run {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Run {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("edgewasm-standalone-cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgewasm"))
            .arg("run")
            .arg("--manifests")
            .arg(dir)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--json")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("edgewasm starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred`, keeping everything seen.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let end = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; saw {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("edgewasm ended before {what}; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the process to end (collecting the remaining events) and returns its success.
    fn finish(&mut self) -> bool {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                return status.success();
            }
            if let Ok(v) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(v);
            }
            assert!(
                Instant::now() < end,
                "edgewasm did not exit; saw {:#?}",
                self.seen
            );
        }
    }

    fn interrupt(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.finish()
    }

    fn events(&self, name: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == name).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("events seen before the failure:");
            for v in self.seen.iter().filter(|v| v["event"] != "log") {
                eprintln!("  {v}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(v: &Value, event: &str, workload: &str) -> bool {
    v["event"] == event && v["workload"] == format!("default/{workload}")
}

/// Tests share the compile cache and the machine's cores: run them one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn once_runs_every_example_component() {
    let _serial = serial();
    let demo = Demo::new();
    demo.edit(
        "sensor-logger.yaml",
        r#"{name: SAMPLES, value: "0"}"#,
        r#"{name: SAMPLES, value: "2"}"#,
    );
    demo.edit(
        "sensor-logger.yaml",
        r#"{name: INTERVAL_MS, value: "1000"}"#,
        r#"{name: INTERVAL_MS, value: "100"}"#,
    );
    let mut run = Run::start(demo.path(), &["--once"]);
    assert!(run.finish(), "--once failed: {:#?}", run.seen);
    let finished = run.events("finished");
    assert_eq!(finished.len(), 1, "{:#?}", run.seen);
    assert_eq!(finished[0]["ok"], true);
    assert_eq!(finished[0]["failed"], 0);

    let camera = demo.log("camera-sampler");
    assert!(
        camera.contains(r#""sample":0"#) && camera.contains(r#""bytes":4096"#),
        "camera-sampler said {camera:?}"
    );
    let sensor = demo.log("sensor-logger");
    let readings: Vec<Value> = sensor
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(readings.len(), 2, "sensor-logger said {sensor:?}");
    let value = readings[0]["value"].as_f64().expect("a number");
    assert!((10.0..40.0).contains(&value), "temperature {value}");
    let last = std::fs::read_to_string(demo.path().join("data/sensor0/last-reading.json")).unwrap();
    assert!(last.contains(r#""sample":1"#), "{last}");
    let serving = run.wait_for("reading-server serving", |v| {
        is(v, "serving", "reading-server")
    });
    assert_eq!(serving["url"], format!("http://127.0.0.1:{}/", demo.port));
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

#[test]
fn serves_readings_and_stops_the_instance_of_a_removed_device() {
    let _serial = serial();
    let demo = Demo::new();
    demo.edit(
        "sensor-logger.yaml",
        r#"{name: INTERVAL_MS, value: "1000"}"#,
        r#"{name: INTERVAL_MS, value: "200"}"#,
    );
    let mut run = Run::start(demo.path(), &["--grace", "1"]);
    let serving = run.wait_for("reading-server serving", |v| {
        is(v, "serving", "reading-server")
    });
    let port = demo.port;
    assert_eq!(serving["url"], format!("http://127.0.0.1:{port}/"));

    let end = Instant::now() + DEADLINE;
    let body = loop {
        if let Some((200, body)) = http_get(port, "/") {
            break body;
        }
        assert!(Instant::now() < end, "reading-server never had a reading");
        std::thread::sleep(Duration::from_millis(100));
    };
    let reading: Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(reading["value"].is_number(), "{reading}");
    run.wait_for("camera-sampler running", |v| {
        is(v, "instance_started", "camera-sampler")
    });

    // camera0 leaves the devices file: its sampler stops once the grace period has passed.
    demo.edit(
        "devices.yaml",
        "  - id: camera0\n",
        "  - id: camera0-unplugged\n",
    );
    let absent = run.wait_for("camera0 absent", |v| v["event"] == "device_absent");
    assert_eq!(absent["label"], "camera0");
    let stopped = run.wait_for("camera-sampler stopped", |v| {
        is(v, "placement_stopped", "camera-sampler")
            && v["reason"].as_str().unwrap().contains("grace")
    });
    assert_eq!(stopped["placement"], absent["device"]);
    // The renamed entry is a new device with a new instance; the logger kept running throughout.
    run.wait_for("new camera placed", |v| {
        is(v, "compiling", "camera-sampler") && v["placement"] != absent["device"]
    });
    let absent = run.events("device_absent");
    assert!(
        absent.iter().all(|v| v["label"] == "camera0"),
        "rewriting the file does not make the devices it keeps absent: {absent:#?}"
    );
    let stopped = run.events("placement_stopped");
    assert!(
        stopped
            .iter()
            .all(|v| v["workload"] == "default/camera-sampler"),
        "only the sampler of the unplugged camera stops: {stopped:#?}"
    );

    assert!(run.interrupt(), "Ctrl-C is a clean stop");
    assert_eq!(run.events("stopping").len(), 1);
}

#[test]
fn bad_input_is_reported_and_the_rest_keeps_running() {
    let _serial = serial();
    let demo = Demo::new();
    demo.edit(
        "sensor-logger.yaml",
        r#"{name: SAMPLES, value: "0"}"#,
        r#"{name: SAMPLES, value: "1"}"#,
    );
    std::fs::write(
        demo.path().join("broken.yaml"),
        "apiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata: {name: broken}\nspec:\n  image: x.wasm\n  placement: {mode: sideways}\n",
    )
    .unwrap();
    std::fs::write(
        demo.path().join("missing.yaml"),
        "apiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata: {name: missing}\nspec:\n  image: nowhere/missing.wasm\n  placement: {mode: count, replicas: 1}\n",
    )
    .unwrap();
    let mut run = Run::start(demo.path(), &["--once"]);
    assert!(!run.finish(), "bad input makes --once fail");
    let errors = run.events("manifest_error");
    assert_eq!(errors.len(), 1, "{:#?}", run.seen);
    assert!(errors[0]["file"].as_str().unwrap().ends_with("broken.yaml"));
    assert_eq!(errors[0]["line"], 1);
    assert!(errors[0]["message"].as_str().unwrap().contains("sideways"));
    let failed = run.wait_for("missing image", |v| is(v, "start_failed", "missing"));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("missing.wasm not found"),
        "{failed}"
    );
    for good in ["camera-sampler", "sensor-logger"] {
        let exit = run.wait_for(good, |v| is(v, "instance_exited", good));
        assert_eq!(exit["success"], true, "{exit}");
    }
    assert_eq!(run.events("finished")[0]["failed"], 1);
}

#[test]
fn trapping_component_backs_off() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("trap.wasm"), wasm).unwrap();
    std::fs::write(
        dir.path().join("trap.yaml"),
        "apiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata: {name: trap}\nspec:\n  image: trap.wasm\n  placement: {mode: count, replicas: 1}\n",
    )
    .unwrap();
    let mut run = Run::start(dir.path(), &["--restart-backoff-ms", "50"]);
    run.wait_for("the fourth restart", |v| {
        v["event"] == "restart_scheduled" && v["restarts"] == 3
    });
    assert!(run.interrupt());
    let delays: Vec<u64> = run
        .events("restart_scheduled")
        .iter()
        .map(|v| v["in_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(
        delays[..4],
        [50, 100, 200, 400],
        "backoff doubles: {delays:?}"
    );
    let exits = run.events("instance_exited");
    assert!(
        exits
            .iter()
            .all(|v| v["success"] == false && v["message"].as_str().unwrap().contains("trapped")),
        "{exits:#?}"
    );
}
