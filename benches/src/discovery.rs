//! The discovery figures against a real apiserver (the testkit's etcd + CRD apiserver): how long from a
//! device appearing to its `Device` written, for the event-driven agent and for the same agent gated
//! like a polling discovery (`--poll-interval 10`), and the agent's idle memory with every handler on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edgewasm_api::Device;
use edgewasm_testkit::Cluster;
use edgewasm_testkit::process::{ChildGuard, free_port, log_tail};
use futures::StreamExt as _;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use crate::memory;
use crate::results::{Better, Figure, Role, Series};

const NODE: &str = "bench-node";
const POLL_SECONDS: u64 = 10;

/// What the discovery figures need.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The release `edgewasm-agent`.
    pub agent: PathBuf,
    /// The CRD folder (`crds/`).
    pub crds: PathBuf,
}

/// When each `benchId` property value was first seen on a `Device`.
type Seen = HashMap<String, Instant>;

/// Runs the discovery figures and writes them to `results`.
pub async fn run(inputs: &Inputs, results: &Path, only: Option<&str>) -> Result<()> {
    let cluster = Cluster::start()
        .await
        .context("starting the test apiserver (`make deps` builds it)")?;
    cluster.apply_crds(&inputs.crds).await?;
    let client = cluster.client().await?;
    let (seen, _watch) = watch_devices(Api::<Device>::all(client)).await?;
    let wants = |id: &str| only.is_none_or(|o| id.contains(o));
    if wants("device-to-cr") {
        device_to_cr(&cluster, inputs, &seen).await?.save(results)?;
    }
    if wants("agent-rss") {
        agent_rss(&cluster, inputs, &seen).await?.save(results)?;
    }
    Ok(())
}

/// Aborts the Device watch when dropped: once the cluster is gone the watch only fails, and a task
/// left running would keep the runtime from shutting down.
struct WatchTask(tokio::task::AbortHandle);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches Devices from now on; resolves once the initial list is in. The watch runs until the
/// returned guard drops.
async fn watch_devices(api: Api<Device>) -> Result<(watch::Receiver<Seen>, WatchTask)> {
    let (tx, rx) = watch::channel(Seen::new());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => {
                    if let Some(id) = d.spec.properties.get("benchId") {
                        tx.send_if_modified(|seen| {
                            if seen.contains_key(id) {
                                false
                            } else {
                                seen.insert(id.clone(), now);
                                true
                            }
                        });
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("device watch: {e}"),
            }
        }
    });
    let guard = WatchTask(task.abort_handle());
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .context("the Device watch did not list within 30s")?
        .context("the Device watch ended")?;
    Ok((rx, guard))
}

/// A running agent on a temp config; stopped when dropped.
struct Agent {
    child: ChildGuard,
    dir: tempfile::TempDir,
    metrics: u16,
}

impl Agent {
    async fn start(
        cluster: &Cluster,
        agent: &Path,
        config: &str,
        poll: Option<u64>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("edgewasm-bench-agent-")
            .tempdir()?;
        std::fs::write(dir.path().join("devices.yaml"), "devices: []\n")?;
        let config = config.replace("$DIR", &dir.path().display().to_string());
        std::fs::write(dir.path().join("agent.yaml"), config)?;
        let metrics = free_port()?;
        let mut args = vec![
            format!("KUBECONFIG={}", cluster.kubeconfig_path().display()),
            "RUST_LOG=warn".to_owned(),
            agent.display().to_string(),
            "--config".into(),
            dir.path().join("agent.yaml").display().to_string(),
            "--node-name".into(),
            NODE.into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics}"),
        ];
        if let Some(secs) = poll {
            args.push("--poll-interval".into());
            args.push(secs.to_string());
        }
        let child = ChildGuard::spawn(
            "edgewasm-agent",
            Path::new("/usr/bin/env"),
            &args,
            &dir.path().join("agent.log"),
        )?;
        let mut agent = Self {
            child,
            dir,
            metrics,
        };
        agent.wait_healthy().await?;
        Ok(agent)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.exited() {
                bail!("edgewasm-agent exited: {status}\n{}", self.log());
            }
            if http_ok(self.metrics, "/healthz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("edgewasm-agent not healthy after 30s\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        log_tail(&self.dir.path().join("agent.log"), 30)
    }

    /// Lists `count` devices (ids 0..count) in the static handler's file.
    fn write_devices(&self, first: usize, count: usize) -> Result<()> {
        let mut yaml = String::from("devices:\n");
        for i in first..first + count {
            let _ = write!(
                yaml,
                "  - id: bench-{i}\n    properties:\n      kind: bench\n      benchId: \"{i}\"\n"
            );
        }
        std::fs::write(self.dir.path().join("devices.yaml"), yaml)?;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.pid()
    }
}

async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.is_ok() && out.starts_with(b"HTTP/1.1 200")
}

const STATIC_ONLY: &str =
    "handlers:\n  static:\n    enabled: true\n    file: $DIR/devices.yaml\n    approval: auto\n";

/// Adds one device at a time and times until its Device is seen; `spread` sleeps a random part of it
/// first, so writes land at random phases of a polling interval.
async fn latencies(
    agent: &Agent,
    seen: &watch::Receiver<Seen>,
    first: usize,
    samples: usize,
    spread: Option<Duration>,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in first..first + samples {
        if let Some(spread) = spread {
            tokio::time::sleep(spread.mul_f64(pseudo_random())).await;
        }
        let id = i.to_string();
        let start = Instant::now();
        agent.write_devices(first, i - first + 1)?;
        let mut rx = seen.clone();
        let at = tokio::time::timeout(Duration::from_mins(1), rx.wait_for(|s| s.contains_key(&id)))
            .await
            .with_context(|| format!("device bench-{i} not written within 60s\n{}", agent.log()))?
            .context("the Device watch ended")?[&id];
        out.push(at.saturating_duration_since(start).as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// A number in [0, 1) from the clock: enough to spread writes over a polling interval.
fn pseudo_random() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos.wrapping_mul(2_654_435_761) % 1_000_000) / 1_000_000.0
}

async fn device_to_cr(
    cluster: &Cluster,
    inputs: &Inputs,
    seen: &watch::Receiver<Seen>,
) -> Result<Figure> {
    let mut f = Figure::new(
        "04-device-to-cr",
        "device appears → Device CR written (static handler, file watch)",
        "ms",
        Better::Lower,
        "≤ 50 ms p99",
    );
    let (events, polls) = if crate::quick() { (10, 2) } else { (50, 8) };
    let agent = Agent::start(cluster, &inputs.agent, STATIC_ONLY, None).await?;
    // One device first: the publisher's first write (client setup, field manager) is not the figure.
    latencies(&agent, seen, 0, 1, None).await?;
    let samples = latencies(&agent, seen, 1, events, None).await?;
    drop(agent);
    f.series.push(Series::measured(
        "edgewasm agent (event-driven)",
        Role::Subject,
        samples,
    ));
    let agent = Agent::start(cluster, &inputs.agent, STATIC_ONLY, Some(POLL_SECONDS)).await?;
    let samples = latencies(
        &agent,
        seen,
        1000,
        polls,
        Some(Duration::from_secs(POLL_SECONDS)),
    )
    .await?;
    drop(agent);
    f.series.push(Series::measured(
        format!("same agent, --poll-interval {POLL_SECONDS} (Akri-style polling)"),
        Role::Peer,
        samples,
    ));
    f.note(format!(
        "From writing the static handler's devices file to the Device arriving on a watch of the \
         apiserver (etcd + the real CRD apiserver on loopback). The polling peer is the same agent \
         holding events until each {POLL_SECONDS} s tick, as Akri's agent polls; its writes are spread \
         over random phases of the interval, so its median approaches {}s.",
        POLL_SECONDS / 2
    ));
    Ok(f)
}

/// A veth pair for the ONVIF handler to listen on: its multicast never leaves this machine.
struct Veth(String);

impl Veth {
    fn create() -> Result<Self> {
        let name = format!("ewb{}", std::process::id() % 100_000);
        let peer = format!("{name}p");
        let ip = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .context("running ip")?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        };
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])?;
        let veth = Self(name.clone());
        ip(&["addr", "add", "10.254.77.1/30", "dev", &name])?;
        ip(&["link", "set", &name, "up"])?;
        ip(&["link", "set", &peer, "up"])?;
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

async fn agent_rss(
    cluster: &Cluster,
    inputs: &Inputs,
    seen: &watch::Receiver<Seen>,
) -> Result<Figure> {
    let mut f = Figure::new(
        "06-agent-idle-rss",
        "discovery agent idle RSS, all handlers on",
        "MiB",
        Better::Lower,
        "≤ 10 MiB",
    );
    let veth = Veth::create().context("creating a veth pair for the ONVIF handler")?;
    let config = format!(
        "handlers:\n  static:\n    enabled: true\n    file: $DIR/devices.yaml\n    approval: auto\n  \
         udev:\n    enabled: true\n  onvif:\n    enabled: true\n    interfaces: [{}]\n  \
         opcua:\n    enabled: true\n    discoveryUrls: []\n",
        veth.0
    );
    let agent = Agent::start(cluster, &inputs.agent, &config, None).await?;
    latencies(&agent, seen, 2000, 1, None).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid().context("agent pid")?;
    let (count, every) = if crate::quick() { (5, 200) } else { (40, 250) };
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for _ in 0..count {
        rss.push(memory::rss_bytes(pid) as f64 / 1024.0 / 1024.0);
        pss.push(memory::pss_bytes(pid) as f64 / 1024.0 / 1024.0);
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
    let healthy = http_ok(agent.metrics, "/healthz").await;
    drop(agent);
    f.series.push(Series::measured(
        "edgewasm-agent (udev, onvif, opcua, static)",
        Role::Subject,
        rss,
    ));
    f.series.push(Series::reference(
        "Akri agent: memory request in its Helm chart",
        11.0,
    ));
    let pss_median = crate::stats::Summary::of(&pss).map_or(0.0, |s| s.median);
    f.note(format!(
        "VmRSS sampled every {every} ms while idle, after the agent published one device (PSS median \
         {pss_median:.1} MiB). Handlers: static file, udev netlink listener, ONVIF WS-Discovery on a \
         local veth pair, OPC UA with no discovery URLs. /healthz {} while sampling.",
        if healthy { "was ok" } else { "FAILED" }
    ));
    Ok(f)
}
