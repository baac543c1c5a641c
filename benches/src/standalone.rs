//! Standalone mode end to end: from a device appearing in the static handler's file to the matching
//! workload's component running (`edgewasm run`'s `instance_started`), no Kubernetes involved.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::results::{Better, Figure, Role, Series};

/// What the standalone figure needs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The release `edgewasm` binary.
    pub edgewasm: PathBuf,
    /// `benches/hello` built for wasm32-wasip2.
    pub hello_wasm: PathBuf,
}

/// `edgewasm run --json` on a temp folder; killed when dropped.
struct Run {
    child: Child,
    lines: Receiver<(Instant, Value)>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// The time of the first event matching `pred`, within 60 s.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<(Instant, Value)> {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((at, v)) if pred(&v) => return Ok((at, v)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!("{what}: not seen within 60s"),
                Err(RecvTimeoutError::Disconnected) => bail!("{what}: edgewasm run exited"),
            }
        }
    }
}

/// Runs the figure and writes it to `results`.
pub fn run(inputs: &Inputs, results: &Path) -> Result<()> {
    let mut f = Figure::new(
        "05-device-to-running",
        "device appears → component running (standalone `edgewasm run`)",
        "ms",
        Better::Lower,
        "≤ 1 s",
    );
    let dir = tempfile::Builder::new()
        .prefix("edgewasm-bench-standalone-")
        .tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("devices.yaml"), "devices: []\n")?;
    std::fs::write(
        d.join("agent.yaml"),
        "handlers:\n  static:\n    enabled: true\n    file: devices.yaml\n    approval: auto\n",
    )?;
    std::fs::write(
        d.join("standalone.yaml"),
        "agentConfig: agent.yaml\ndeviceGraceSeconds: 5\n",
    )?;
    std::fs::write(
        d.join("hello.yaml"),
        format!(
            "apiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata:\n  name: hello\nspec:\n  \
             image: {}\n  deviceSelector:\n    handler: static\n    properties:\n      kind: bench\n  \
             env:\n    - {{name: SLEEP_SECONDS, value: \"3600\"}}\n  resources:\n    memory: 16Mi\n",
            inputs.hello_wasm.display()
        ),
    )?;
    let mut child = Command::new(&inputs.edgewasm)
        .arg("run")
        .arg("--manifests")
        .arg(d)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", inputs.edgewasm.display()))?;
    let stdout = child.stdout.take().context("edgewasm stdout")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send((Instant::now(), v)).is_err()
            {
                return;
            }
        }
    });
    let run = Run { child, lines };
    run.wait_for("started", |v| v["event"] == "started")?;

    let samples = if crate::quick() { 5 } else { 30 };
    let mut appeared = Vec::new();
    let mut running = Vec::new();
    // Sample 0 compiles the component into the cache; the rest start from it.
    for i in 0..=samples {
        let mut yaml = String::from("devices:\n");
        for j in 0..=i {
            let _ = write!(
                yaml,
                "  - id: bench-{j}\n    properties:\n      kind: bench\n"
            );
        }
        let label = format!("bench-{i}");
        let start = Instant::now();
        std::fs::write(d.join("devices.yaml"), yaml)?;
        let (seen, device) = run.wait_for(&format!("{label} appeared"), |v| {
            v["event"] == "device_appeared" && v["label"] == label.as_str()
        })?;
        let id = device["device"].as_str().unwrap_or_default().to_owned();
        let (started, _) = run.wait_for(&format!("{label}'s instance started"), |v| {
            v["event"] == "instance_started" && v["placement"] == id.as_str()
        })?;
        if i > 0 {
            appeared.push(seen.saturating_duration_since(start).as_secs_f64() * 1000.0);
            running.push(started.saturating_duration_since(start).as_secs_f64() * 1000.0);
        }
    }
    drop(run);
    f.series.push(Series::measured(
        "edgewasm run: device → instance started",
        Role::Subject,
        running,
    ));
    f.series.push(Series::measured(
        "edgewasm run: device → device seen (part of the above)",
        Role::Subject,
        appeared,
    ));
    f.series.push(Series::reference(
        "polling discovery: 10 s interval ÷ 2, before any pod start",
        5000.0,
    ));
    f.note(
        "From writing the devices file to `edgewasm run --json` reporting the matching placement's \
         `instance_started` (the first, compiling sample is left out; the code cache is warm after it). \
         Each sample adds one device, so earlier instances keep running. The reference is the mean wait \
         of a 10 s polling discovery alone, without the pod start that follows it in Kubernetes.",
    );
    f.save(results)?;
    Ok(())
}
