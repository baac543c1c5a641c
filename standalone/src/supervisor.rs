//! One slot per placement: what to run (the [`Launch`]), its state, restarts with backoff, and the task
//! that loads, starts and waits for its instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewasm_api::{Grants, Placement, RestartPolicy, WasmWorkload};
use edgewasm_runtime::{
    Credentials, DeviceEvents, ExitReason, ExitStatus, Host, Instance, InstanceSpec, Limits,
    ProgramKind, Stdio, WorldSpec,
};
use tokio::sync::mpsc::UnboundedSender;

/// Failed runs back off from `base`, doubling up to this.
pub const MAX_BACKOFF: Duration = Duration::from_mins(5);
/// A run at least this long resets the failure count.
const HEALTHY_RUN: Duration = Duration::from_mins(1);

/// Identifies a slot: workload key and placement id.
pub type SlotKey = (String, String);

/// Everything that decides how an instance is started; a change restarts the instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub wasm: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub grants: Grants,
    pub limits: Limits,
    pub restart: RestartPolicy,
    /// The workload's device credentials, read from `secrets/<name>/` beside its manifest.
    pub credentials: Option<Credentials>,
}

/// Where a slot is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Loading (compiling the first time) and starting.
    Starting,
    Running,
    /// An HTTP component listening at this URL.
    Serving(String),
    /// Waiting to be started again.
    BackingOff {
        until: Instant,
    },
    /// Ended successfully and is not restarted.
    Succeeded,
    /// Ended with a failure and is not restarted.
    Failed,
}

impl SlotState {
    /// Whether the slot is done as far as `--once` is concerned.
    pub fn settled(&self) -> bool {
        matches!(self, Self::Serving(_) | Self::Succeeded | Self::Failed)
    }
}

/// One placement and its instance.
#[derive(Debug)]
pub struct Slot {
    pub workload: String,
    pub placement: Placement,
    /// `Err` when the placement cannot be turned into something to run (e.g. an OCI image reference).
    pub launch: Result<Launch, String>,
    pub state: SlotState,
    /// Incremented on every launch; messages of older launches are ignored.
    pub generation: u64,
    pub instance: Option<Instance>,
    /// Starts after the first.
    pub restarts: u32,
    /// Failures in a row (reset by a success or a long run).
    pub failures: u32,
    pub started: Option<Instant>,
    pub log: PathBuf,
    /// How far the log has been read (for the last line and `--follow`).
    pub log_offset: u64,
    pub last_line: String,
    /// Why the slot is not running, or how its last run ended.
    pub message: Option<String>,
    /// What the instance's device, wasi:config and wasi:keyvalue interfaces serve (its key-value store
    /// lives in the state dir, so it survives restarts).
    pub world: WorldSpec,
}

/// What a launch task reports.
#[derive(Debug)]
pub enum LaunchReport {
    Started {
        key: SlotKey,
        generation: u64,
        instance: Instance,
        compiled: bool,
    },
    StartFailed {
        key: SlotKey,
        generation: u64,
        error: String,
    },
    Exited {
        key: SlotKey,
        generation: u64,
        status: ExitStatus,
    },
}

/// What to do after an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    RestartIn(Duration),
    Done,
}

/// The restart decision: `restartPolicy` for the exit, doubling backoff for failures in a row (so a
/// component that traps in a loop waits longer each time instead of spinning).
pub fn after_exit(
    policy: RestartPolicy,
    success: bool,
    failures: u32,
    base: Duration,
    once: bool,
) -> AfterExit {
    let restart = !once
        && match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
    if !restart {
        return AfterExit::Done;
    }
    if success {
        return AfterExit::RestartIn(base);
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    AfterExit::RestartIn(base.saturating_mul(factor).min(MAX_BACKOFF))
}

/// Expands `$(VAR)` from `env` like Kubernetes does in container args and env (`$$(` escapes;
/// unknown variables stay as written).
pub fn expand(text: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            if let Some(v) = env.get(name) {
                out.push_str(v);
            } else {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Turns a placement into what to run. `dir` is the manifest's folder: a relative `.wasm` image and
/// relative granted paths are resolved against it.
pub fn launch_for(
    workload: &WasmWorkload,
    placement: &Placement,
    dir: &Path,
) -> Result<Launch, String> {
    let spec = &workload.spec;
    let image = spec.image.trim();
    let looks_like_path = Path::new(image).extension().is_some_and(|e| e == "wasm")
        || image.starts_with('/')
        || image.starts_with("./")
        || image.starts_with("../");
    if !looks_like_path {
        return Err(format!(
            "image {image:?} looks like an OCI reference; standalone mode runs local .wasm files (set spec.image to a path)"
        ));
    }
    let mut grants = placement.grants.clone();
    for path in &mut grants.paths {
        if !Path::new(&path.host).is_absolute() {
            path.host = dir.join(&path.host).display().to_string();
        }
    }
    let vars: BTreeMap<&str, &str> = placement
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env = placement
        .env
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &vars)))
        .collect();
    let name = workload.metadata.name.clone().unwrap_or_default();
    let args = std::iter::once(name)
        .chain(spec.args.iter().map(|a| expand(a, &vars)))
        .collect();
    let resources = spec.resources.clone().unwrap_or_default();
    let limits = Limits {
        memory_bytes: resources.memory_bytes().ok().flatten(),
        cpu_millis: resources.cpu_millis().ok().flatten(),
        deadline: resources.timeout_seconds.map(Duration::from_secs),
    };
    // The standalone counterpart of a mounted Secret: a folder with `username` and `password` files.
    let credentials = spec
        .device_credentials
        .as_ref()
        .map(|c| {
            let folder = dir.join("secrets").join(&c.secret_name);
            Credentials::from_secret_dir(&folder).map_err(|e| {
                format!(
                    "device credentials {:?}: {e} (standalone mode reads the files username and password in {})",
                    c.secret_name,
                    folder.display()
                )
            })
        })
        .transpose()?;
    Ok(Launch {
        wasm: dir.join(image),
        args,
        env,
        grants,
        limits,
        restart: spec.restart_policy,
        credentials,
    })
}

impl Slot {
    pub fn new(
        workload: String,
        placement: Placement,
        launch: Result<Launch, String>,
        log: PathBuf,
    ) -> Self {
        let log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        Self {
            workload,
            placement,
            launch,
            state: SlotState::Starting,
            generation: 0,
            instance: None,
            restarts: 0,
            failures: 0,
            started: None,
            log,
            log_offset,
            last_line: String::new(),
            message: None,
            world: WorldSpec::default(),
        }
    }

    pub fn key(&self) -> SlotKey {
        (self.workload.clone(), self.placement.id.clone())
    }

    /// Starts (or restarts) the instance in a background task that reports to `tx`. A placement that
    /// cannot be launched reports a start failure, so it goes through the same backoff.
    pub fn launch(&mut self, host: &Arc<Host>, tx: &UnboundedSender<LaunchReport>) {
        if self.generation > 0 {
            self.restarts += 1;
        }
        self.generation += 1;
        self.state = SlotState::Starting;
        self.instance = None;
        self.started = Some(Instant::now());
        let key = self.key();
        let generation = self.generation;
        let tx = tx.clone();
        let launch = match &self.launch {
            Ok(l) => l.clone(),
            Err(e) => {
                let _ = tx.send(LaunchReport::StartFailed {
                    key,
                    generation,
                    error: e.clone(),
                });
                return;
            }
        };
        if self.world.events.is_gone() {
            // The device is back (or the placement moved to another one): a fresh event stream.
            self.world.events = DeviceEvents::default();
        }
        let mut world = self.world.clone();
        world.credentials.clone_from(&launch.credentials);
        let host = Arc::clone(host);
        let spec = InstanceSpec {
            id: format!("{}.{}.{generation}", key.0.replace('/', "."), key.1),
            args: launch.args.clone(),
            env: launch.env.clone(),
            grants: launch.grants.clone(),
            stdio: Stdio {
                stdin: None,
                stdout: Some(self.log.clone()),
                stderr: Some(self.log.clone()),
            },
            limits: launch.limits,
            netns: None,
            http_bind: None,
        };
        tokio::spawn(async move {
            let program = match host.load(&launch.wasm).await {
                Ok(p) => p,
                Err(e) => {
                    let error = match &e {
                        edgewasm_runtime::Error::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            format!(
                                "image {} not found (for the examples, run `make examples`)",
                                launch.wasm.display()
                            )
                        }
                        _ => e.to_string(),
                    };
                    let _ = tx.send(LaunchReport::StartFailed {
                        key,
                        generation,
                        error,
                    });
                    return;
                }
            };
            let compiled = !program.from_cache();
            let instance = match host.start_with(program, spec, world).await {
                Ok(i) => i,
                Err(e) => {
                    let _ = tx.send(LaunchReport::StartFailed {
                        key,
                        generation,
                        error: e.to_string(),
                    });
                    return;
                }
            };
            let _ = tx.send(LaunchReport::Started {
                key: key.clone(),
                generation,
                instance: instance.clone(),
                compiled,
            });
            let status = instance.wait().await;
            let _ = tx.send(LaunchReport::Exited {
                key,
                generation,
                status,
            });
        });
    }

    /// Records a started instance.
    pub fn started(&mut self, instance: Instance) {
        self.state = match (instance.kind(), instance.http_addr()) {
            (ProgramKind::HttpProxy, Some(addr)) => SlotState::Serving(format!("http://{addr}/")),
            _ => SlotState::Running,
        };
        self.instance = Some(instance);
        self.message = None;
    }

    /// Records the end of a run (or a failed start) and decides what comes next.
    pub fn ended(
        &mut self,
        success: bool,
        message: String,
        base: Duration,
        once: bool,
    ) -> AfterExit {
        let ran = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        self.instance = None;
        if success || ran >= HEALTHY_RUN {
            self.failures = 0;
        }
        if !success {
            self.failures += 1;
        }
        self.message = Some(message);
        let policy = self
            .launch
            .as_ref()
            .map_or(RestartPolicy::Always, |l| l.restart);
        let next = after_exit(policy, success, self.failures, base, once);
        self.state = match next {
            AfterExit::RestartIn(d) => SlotState::BackingOff {
                until: Instant::now() + d,
            },
            AfterExit::Done if success => SlotState::Succeeded,
            AfterExit::Done => SlotState::Failed,
        };
        next
    }

    /// Tells the running instance (through `edgewasm:device/events`) that its device is gone.
    pub fn device_gone(&self) {
        self.world.events.gone();
    }

    /// Stops the instance, if one runs.
    pub fn stop(&mut self) {
        if let Some(i) = self.instance.take() {
            i.kill(15);
        }
    }

    /// Reads new complete lines from the log, updating the last line.
    pub fn read_new_lines(&mut self) -> Vec<String> {
        use std::io::{Read as _, Seek as _};
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return vec![];
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.log_offset {
            self.log_offset = 0;
        }
        if len == self.log_offset
            || file
                .seek(std::io::SeekFrom::Start(self.log_offset))
                .is_err()
        {
            return vec![];
        }
        let mut buf = Vec::new();
        if file.take(1 << 20).read_to_end(&mut buf).is_err() {
            return vec![];
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return vec![];
        };
        self.log_offset += end as u64 + 1;
        let lines: Vec<String> = String::from_utf8_lossy(&buf[..end])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(last) = lines.last() {
            last.clone_into(&mut self.last_line);
        }
        lines
    }
}

/// How a run ended, in a few words.
pub fn describe_exit(status: &ExitStatus) -> String {
    let what = match status.reason {
        ExitReason::Exited => format!("exited with code {}", status.code),
        ExitReason::Trapped => "trapped".into(),
        ExitReason::OutOfMemory => "ran out of memory".into(),
        ExitReason::Killed { signal } => format!("killed (signal {signal})"),
        ExitReason::DeadlineExceeded => "exceeded its timeout".into(),
    };
    match status.message.as_deref().and_then(|m| m.lines().next()) {
        Some(m) if status.reason != ExitReason::Killed { signal: 15 } && !m.is_empty() => {
            format!("{what}: {m}")
        }
        _ => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_for_failures_and_respects_policy() {
        let base = Duration::from_millis(100);
        let fail = |n| after_exit(RestartPolicy::Always, false, n, base, false);
        assert_eq!(fail(1), AfterExit::RestartIn(Duration::from_millis(100)));
        assert_eq!(fail(2), AfterExit::RestartIn(Duration::from_millis(200)));
        assert_eq!(fail(4), AfterExit::RestartIn(Duration::from_millis(800)));
        assert_eq!(fail(40), AfterExit::RestartIn(MAX_BACKOFF));
        assert_eq!(
            after_exit(RestartPolicy::Always, true, 0, base, false),
            AfterExit::RestartIn(base)
        );
        assert_eq!(
            after_exit(RestartPolicy::OnFailure, true, 0, base, false),
            AfterExit::Done
        );
        assert_eq!(
            after_exit(RestartPolicy::Never, false, 1, base, false),
            AfterExit::Done
        );
        assert_eq!(
            after_exit(RestartPolicy::Always, false, 1, base, true),
            AfterExit::Done
        );
    }

    #[test]
    fn expands_like_kubernetes() {
        let env: BTreeMap<&str, &str> = [("A", "/dev/x"), ("B", "2")].into();
        assert_eq!(expand("$(A)/temp", &env), "/dev/x/temp");
        assert_eq!(expand("$(A)$(B)", &env), "/dev/x2");
        assert_eq!(expand("$(C) $$(A) $ (", &env), "$(C) $(A) $ (");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn launch_resolves_relative_paths_and_rejects_oci_refs() {
        let mut w = WasmWorkload::new(
            "w",
            edgewasm_api::WasmWorkloadSpec {
                image: "w.wasm".into(),
                ..Default::default()
            },
        );
        w.spec.args = vec!["$(EDGEWASM_DEVICE_DEVNODE)".into()];
        let mut p = Placement {
            id: "0".into(),
            workload: "default/w".into(),
            devices: vec![],
            node: None,
            device_absent: false,
            grants: Grants::default(),
            env: vec![
                ("EDGEWASM_DEVICE_DEVNODE".into(), "/dev/cam".into()),
                ("X".into(), "$(EDGEWASM_DEVICE_DEVNODE)/a".into()),
            ],
        };
        p.grants.paths.push(edgewasm_api::PathGrant {
            host: "data".into(),
            guest: Some("/data".into()),
            access: edgewasm_api::Access::ReadOnly,
        });
        let l = launch_for(&w, &p, Path::new("/m")).unwrap();
        assert_eq!(l.wasm, Path::new("/m/w.wasm"));
        assert_eq!(l.args, ["w", "/dev/cam"]);
        assert_eq!(l.env[1].1, "/dev/cam/a");
        assert_eq!(l.grants.paths[0].host, "/m/data");
        assert_eq!(l.credentials, None);
        w.spec.image = "ghcr.io/acme/w:1".into();
        assert!(
            launch_for(&w, &p, Path::new("/m"))
                .unwrap_err()
                .contains("OCI")
        );
    }

    #[test]
    fn launch_reads_device_credentials_from_the_secrets_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WasmWorkload::new(
            "w",
            edgewasm_api::WasmWorkloadSpec {
                image: "w.wasm".into(),
                device_credentials: Some(edgewasm_api::DeviceCredentials {
                    secret_name: "cam".into(),
                }),
                ..Default::default()
            },
        );
        w.metadata.namespace = Some("default".into());
        let p = Placement {
            id: "0".into(),
            workload: "default/w".into(),
            devices: vec![],
            node: None,
            device_absent: false,
            grants: Grants::default(),
            env: vec![],
        };
        let missing = launch_for(&w, &p, dir.path()).unwrap_err();
        assert!(
            missing.contains("device credentials \"cam\"") && missing.contains("secrets/cam"),
            "{missing}"
        );
        let secret = dir.path().join("secrets/cam");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("username"), "admin\n").unwrap();
        std::fs::write(secret.join("password"), "s3cret").unwrap();
        let creds = launch_for(&w, &p, dir.path()).unwrap().credentials.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("admin", "s3cret")
        );
    }
}
