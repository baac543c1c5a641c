//! A private containerd 1.6 for tests: its own root, state, socket and config under a temp dir, CRI
//! set up for this machine, the edgewasm shim on its PATH, and a guard that stops it and every shim it
//! started.
//!
//! ```no_run
//! # async fn demo(shim: &std::path::Path) -> anyhow::Result<()> {
//! use edgewasm_testkit::containerd::{Containerd, ContainerdConfig};
//! let containerd = Containerd::start(ContainerdConfig::default().shim(shim)).await?;
//! let out = containerd.ctr("default").run(&["version"])?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! containerd 1.6 puts shim sockets under `/run/containerd/s` whatever its own paths say, so the guard
//! finds its shims by the `-address <our socket>` argument containerd gives them and removes their
//! sockets by the `address` files in our state directory: never by process name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::ChildGuard;

/// The runtime handler CRI maps to the edgewasm shim.
pub const EDGEWASM_HANDLER: &str = "edgewasm";
/// The shim's runtime type (`containerd-shim-edgewasm-v1` on PATH).
pub const EDGEWASM_RUNTIME: &str = "io.containerd.edgewasm.v1";
/// The namespace CRI uses.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The pause image [`Containerd::start`] builds and imports unless told otherwise.
pub const PAUSE_IMAGE: &str = "docker.io/edgewasm/pause:test";

/// How to start the test containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The `containerd-shim-edgewasm-v1` binary; linked into a directory put first on containerd's PATH.
    pub shim: Option<PathBuf>,
    /// CRI's sandbox image; built from a static C program and imported into `k8s.io` when it is
    /// [`PAUSE_IMAGE`] (needs gcc, see [`crate::oci::pause_image`]).
    pub pause_image: String,
    /// Write a bridge + host-local CNI config (a private bridge and /24) so pods without host network
    /// get their own network namespace and IP.
    pub cni: bool,
    /// Build and import the pause image (off for ctr-only tests, which never need it).
    pub import_pause: bool,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            shim: None,
            pause_image: PAUSE_IMAGE.to_owned(),
            cni: false,
            import_pause: true,
        }
    }
}

impl ContainerdConfig {
    pub fn shim(mut self, path: impl Into<PathBuf>) -> Self {
        self.shim = Some(path.into());
        self
    }

    pub fn cni(mut self, on: bool) -> Self {
        self.cni = on;
        self
    }

    pub fn import_pause(mut self, on: bool) -> Self {
        self.import_pause = on;
        self
    }
}

/// A running containerd; dropping it removes its tasks, stops it and its shims, and cleans up.
#[derive(Debug)]
pub struct Containerd {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    bridge: Option<String>,
}

impl Containerd {
    /// Starts containerd and waits until its API (and CRI) answer.
    pub async fn start(config: ContainerdConfig) -> Result<Self> {
        let containerd = which("containerd").context(
            "containerd is not installed (scripts/deps.d/shim.sh installs containerd, runc and CNI plugins)",
        )?;
        which("ctr").context("ctr is not installed (comes with containerd)")?;
        let dir = tempfile::Builder::new()
            .prefix("edgewasm-containerd-")
            .tempdir()?;
        let d = dir.path().to_owned();
        let socket = d.join("containerd.sock");
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(d.join("cni"))?;
        if let Some(shim) = &config.shim {
            let shim = shim
                .canonicalize()
                .with_context(|| format!("shim binary {}", shim.display()))?;
            std::os::unix::fs::symlink(&shim, bin.join("containerd-shim-edgewasm-v1"))?;
        }
        let bridge = if config.cni {
            Some(write_cni_config(&d)?)
        } else {
            None
        };
        std::fs::write(
            d.join("config.toml"),
            config_toml(&d, &socket, &config.pause_image),
        )?;

        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let args = vec![
            format!("PATH={path}"),
            // Shims keep workloads' key-value stores here, not in the machine's /var/lib/edgewasm.
            format!("EDGEWASM_STATE_DIR={}", d.join("edgewasm-state").display()),
            containerd.display().to_string(),
            "--config".into(),
            d.join("config.toml").display().to_string(),
        ];
        let child = ChildGuard::spawn(
            "containerd",
            Path::new("/usr/bin/env"),
            &args,
            &d.join("containerd.log"),
        )?;
        let mut service = Self {
            child: Some(child),
            dir,
            socket,
            bridge,
        };
        if let Err(e) = service.wait_ready().await {
            let log = crate::process::log_tail(&service.log_path(), 40);
            return Err(e.context(format!("containerd log:\n{log}")));
        }
        if config.import_pause && config.pause_image == PAUSE_IMAGE {
            let work = service.dir.path().join("images");
            crate::oci::pause_image(PAUSE_IMAGE, &work)?.import(&service, CRI_NAMESPACE, &work)?;
        }
        Ok(service)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.exited()
            {
                bail!("containerd exited early: {status}");
            }
            if self.socket.exists()
                && self.ctr("default").run(&["version"]).is_ok()
                && crate::kubelet::connect(&self.socket).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {} within 30s",
                    self.socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gRPC socket (containerd API and CRI).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp directory holding config, root, state, logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's own log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The directory `ctr run --fifo-dir` should use (so fifos stay out of `/run/containerd`).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.path().join("fifo")
    }

    /// A `ctr` bound to this containerd and `namespace`.
    pub fn ctr(&self, namespace: &str) -> Ctr {
        Ctr {
            socket: self.socket.clone(),
            namespace: namespace.to_owned(),
        }
    }

    /// PIDs of the live shim processes this containerd started (any runtime): `containerd-shim*`
    /// processes whose `-address` is our socket.
    pub fn shim_pids(&self) -> Vec<u32> {
        processes_with_arg(&self.socket.display().to_string())
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with("containerd-shim"))
            })
            .collect()
    }

    /// Stops containerd (SIGTERM, then SIGKILL) but leaves its shims running, as a containerd
    /// restart does; [`Containerd::restart`] brings it back with the same state.
    pub async fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5)).await;
        }
    }

    /// Starts containerd again on the same config and state after [`Containerd::stop_daemon`].
    pub async fn restart(&mut self) -> Result<()> {
        self.stop_daemon().await;
        let d = self.dir.path().to_owned();
        let path_env = std::fs::read_link(d.join("bin/containerd-shim-edgewasm-v1"))
            .ok()
            .map(|_| format!("{}:", d.join("bin").display()))
            .unwrap_or_default();
        let args = vec![
            format!(
                "PATH={path_env}{}",
                std::env::var("PATH").unwrap_or_default()
            ),
            format!("EDGEWASM_STATE_DIR={}", d.join("edgewasm-state").display()),
            which("containerd")?.display().to_string(),
            "--config".into(),
            d.join("config.toml").display().to_string(),
        ];
        self.child = Some(ChildGuard::spawn(
            "containerd",
            Path::new("/usr/bin/env"),
            &args,
            &d.join("containerd.log"),
        )?);
        self.wait_ready().await
    }

    fn cleanup(&mut self) {
        // Tasks left behind by a failed test: kill and delete them through containerd so their shims
        // tear down mounts and network namespaces; then stop containerd and whatever shims remain.
        if self.child.is_some() {
            for ns in self.ctr("default").namespaces() {
                let ctr = self.ctr(&ns);
                let netns = ctr.sandbox_netns();
                let tasks = ctr.run(&["tasks", "ls", "-q"]).unwrap_or_default();
                for id in tasks.lines().filter(|l| !l.is_empty()) {
                    let _ = ctr.run(&["tasks", "kill", "-s", "SIGKILL", id]);
                }
                for id in tasks.lines().filter(|l| !l.is_empty()) {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while ctr.run(&["tasks", "delete", "-f", id]).is_err()
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                let containers = ctr.run(&["containers", "ls", "-q"]).unwrap_or_default();
                for id in containers.lines().filter(|l| !l.is_empty()) {
                    let _ = ctr.run(&["containers", "delete", id]);
                }
                for path in netns {
                    let _ = nix::mount::umount2(path.as_path(), nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let shims = self.shim_pids();
        // Dropping the guard kills and reaps containerd.
        drop(self.child.take());
        for pid in shims {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for address in shim_addresses(&self.dir.path().join("state")) {
            let _ = std::fs::remove_file(address);
        }
        let prefix = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `ctr --address <socket> --namespace <ns> ...`.
#[derive(Debug, Clone)]
pub struct Ctr {
    socket: PathBuf,
    namespace: String,
}

impl Ctr {
    /// Runs `ctr` with `args`; its stdout on success, an error with stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `ctr` command for callers that need to wire stdio themselves (e.g. a detached `ctr run`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// `(id, pid, status)` rows of `ctr tasks ls`.
    pub fn tasks(&self) -> Result<Vec<(String, u32, String)>> {
        let out = self.run(&["tasks", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_owned(),
                    f.next()?.parse().ok()?,
                    f.next()?.to_owned(),
                ))
            })
            .collect())
    }

    /// The status column of `ctr tasks ls` for `id` (`RUNNING`, `STOPPED`, ...), `None` without a task.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .tasks()?
            .into_iter()
            .find(|(t, _, _)| t == id)
            .map(|(_, _, s)| s))
    }

    fn namespaces(&self) -> Vec<String> {
        self.run(&["namespaces", "ls", "-q"])
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Network namespace paths of CRI sandboxes in this namespace (from their OCI specs).
    fn sandbox_netns(&self) -> Vec<PathBuf> {
        let ids = self.run(&["containers", "ls", "-q"]).unwrap_or_default();
        ids.lines()
            .filter(|l| !l.is_empty())
            .filter_map(|id| {
                let info: serde_json::Value =
                    serde_json::from_str(&self.run(&["containers", "info", id]).ok()?).ok()?;
                info.pointer("/Spec/linux/namespaces")?
                    .as_array()?
                    .iter()
                    .find(|n| n["type"] == "network")?
                    .get("path")?
                    .as_str()
                    .filter(|p| p.starts_with("/var/run/netns/") || p.starts_with("/run/netns/"))
                    .map(PathBuf::from)
            })
            .collect()
    }
}

fn config_toml(d: &Path, socket: &Path, pause_image: &str) -> String {
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}]
      runtime_type = "{runtime}"
      pod_annotations = ["edgewasm.io/*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
        d = d.display(),
        socket = socket.display(),
        handler = EDGEWASM_HANDLER,
        runtime = EDGEWASM_RUNTIME,
    )
}

/// A bridge conflist with a bridge and /24 unlikely to collide with a parallel test's.
fn write_cni_config(d: &Path) -> Result<String> {
    let r = uuid::Uuid::new_v4().as_bytes()[..3].to_vec();
    let bridge = format!("ewt{:02x}{:02x}{:02x}", r[0], r[1], r[2]);
    let subnet = format!("10.{}.{}.0/24", 200 + r[0] % 50, r[1]);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": bridge,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "dataDir": d.join("cni-ipam").display().to_string()}},
            {"type": "loopback"},
        ],
    });
    std::fs::write(d.join("cni/10-edgewasm-test.conflist"), conf.to_string())?;
    Ok(bridge)
}

fn which(name: &str) -> Result<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found on PATH"))
}

/// PIDs whose command line has `arg` as one of its arguments.
fn processes_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Socket paths named by the `address` files shims leave in their bundle directories.
fn shim_addresses(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let tasks = state.join("io.containerd.runtime.v2.task");
    for ns in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(address) = std::fs::read_to_string(bundle.path().join("address"))
                && let Some(path) = address.trim().strip_prefix("unix://")
                && path.starts_with("/run/containerd/s/")
            {
                out.push(PathBuf::from(path));
            }
        }
    }
    out
}
