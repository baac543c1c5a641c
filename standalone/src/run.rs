//! The standalone loop: discovery events, manifest edits and instance exits go in; a plan is made with
//! the operator's `plan()` and every placement's instance is started, restarted or stopped to match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edgewasm_api::{Allocation, PlanOptions, WasmWorkload};
use edgewasm_discovery_agent::{AgentConfig, Approval, DeviceEvent};
use edgewasm_runtime::{Host, HostConfig};
use k8s_openapi::jiff::Timestamp;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::devices::{Change, DeviceSet};
use crate::folder::{Folder, SourcedWorkload, display_path};
use crate::settings::{DEFAULT_GRACE, SETTINGS_FILE, Settings};
use crate::supervisor::{
    AfterExit, LaunchReport, Slot, SlotKey, SlotState, describe_exit, launch_for,
};
use crate::view::{DeviceRow, Event, PlacementRow, Snapshot, View};

/// How `edgewasm run` was asked to work.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The folder of manifests (and its `standalone.yaml`).
    pub manifests: PathBuf,
    /// Placements, logs, sandboxes; default `<manifests>/.edgewasm`.
    pub state_dir: Option<PathBuf>,
    /// Compiled code cache; default `<state_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// The node name devices are placed on; default the host name.
    pub node: Option<String>,
    /// How long a placement outlives its device's absence; default from `standalone.yaml`, else 30s.
    pub grace: Option<Duration>,
    /// Run every placement until it has finished or failed (no restarts), then exit.
    pub once: bool,
    /// Print component output, prefixed by instance.
    pub follow: bool,
    /// First restart delay; doubles for each failure in a row.
    pub restart_backoff: Duration,
    /// Draw the live view (else JSON lines).
    pub tty: bool,
}

/// How long `--once` waits for discovery handlers' first report.
const DISCOVERY_SETTLE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);
/// Most device events applied before one plan.
const DEVICE_BURST: usize = 256;
const PLACEMENTS_FILE: &str = "placements.json";

struct Discovery {
    approvals: BTreeMap<String, bool>,
    static_base: Option<PathBuf>,
    pending: BTreeSet<String>,
}

/// Runs until `shutdown` (or, with `once`, until every placement is done). Returns whether everything
/// succeeded (always true without `once`).
pub async fn run(opts: RunOptions, shutdown: CancellationToken) -> anyhow::Result<bool> {
    let dir = std::fs::canonicalize(&opts.manifests)
        .with_context(|| format!("manifest folder {}", opts.manifests.display()))?;
    anyhow::ensure!(dir.is_dir(), "{} is not a folder", opts.manifests.display());
    let settings = Settings::load(&dir)?;
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| dir.join(".edgewasm"));
    for sub in ["logs", "sandboxes"] {
        std::fs::create_dir_all(state_dir.join(sub))
            .with_context(|| format!("creating state dir {}", state_dir.join(sub).display()))?;
    }
    let node = opts.node.clone().unwrap_or_else(hostname);
    let grace = opts
        .grace
        .or(settings.device_grace_seconds.map(Duration::from_secs))
        .unwrap_or(DEFAULT_GRACE);
    let mut view = View::new(opts.tty);
    view.emit(&Event::Started {
        manifests: display_path(&dir),
        node: node.clone(),
        state_dir: display_path(&state_dir),
    });

    let host = Host::new(HostConfig {
        cache_dir: Some(
            opts.cache_dir
                .clone()
                .unwrap_or_else(|| state_dir.join("cache")),
        ),
        sandbox_dir: Some(state_dir.join("sandboxes")),
        ..HostConfig::default()
    })
    .context("starting the wasmtime host")?;

    let background = shutdown.child_token();
    for sim in &settings.simulate {
        sim.prepare()?;
        tokio::spawn(sim.clone().run(background.clone()));
    }

    let resumed = read_placements(&state_dir.join(PLACEMENTS_FILE));
    let mut devices = DeviceSet::new(node.clone(), resumed);
    let (dev_tx, mut dev_rx) = mpsc::channel::<DeviceEvent>(256);
    let (problem_tx, mut problem_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut discovery = Discovery {
        approvals: BTreeMap::new(),
        static_base: None,
        pending: BTreeSet::new(),
    };
    // Files in the folder that are not manifests.
    let mut skip: Vec<PathBuf> = std::iter::once(dir.join(SETTINGS_FILE))
        .chain(settings.agent_config.clone())
        .collect();
    if let Some(path) = &settings.agent_config {
        let mut cfg = AgentConfig::load(path)?;
        if let Some(st) = cfg.handlers.static_.as_mut() {
            let base = path.parent().unwrap_or(dir.as_path());
            st.file = base.join(&st.file);
            skip.push(st.file.clone());
            discovery.static_base = st.file.parent().map(Path::to_path_buf);
        }
        let handlers = edgewasm_discovery_agent::build_handlers(&cfg, &node)
            .with_context(|| format!("discovery handlers of {}", path.display()))?;
        for handler in handlers {
            let name = handler.name().to_owned();
            discovery
                .approvals
                .insert(name.clone(), cfg.approval(&name) == Approval::Auto);
            discovery.pending.insert(name.clone());
            let (tx, problems, token) = (dev_tx.clone(), problem_tx.clone(), background.clone());
            tokio::spawn(async move {
                if let Err(e) = handler.run(tx, token).await {
                    let _ = problems.send((name, format!("{e:#}")));
                }
            });
        }
    }
    drop(dev_tx);
    let discovery_started = Instant::now();

    let mut folder = Folder::new(dir.clone(), skip);
    let (dirty_tx, mut dirty_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only YAML files are manifests; the state and data folders change all the time.
        if let Ok(event) = res
            && event
                .paths
                .iter()
                .any(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        {
            let _ = dirty_tx.try_send(());
        }
    })
    .context("creating the manifest folder watcher")?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;

    let (launch_tx, mut launch_rx) = mpsc::unbounded_channel::<LaunchReport>();
    let mut sup = Supervisor {
        host,
        launch_tx,
        slots: BTreeMap::new(),
        state_dir: state_dir.clone(),
        reported: BTreeSet::new(),
        persisted: BTreeMap::new(),
        opts: opts.clone(),
        grace,
        manifest_errors: 0,
        manifest_error_texts: BTreeSet::new(),
        invalid: 0,
    };
    sup.reload(&mut folder, &mut devices, &mut view);
    sup.replan(&folder, &mut devices, &mut view);

    let title = format!(
        "{} · node {node} · grace {}s",
        display_path(&dir),
        grace.as_secs()
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut result = true;
    loop {
        let mut replan = false;
        // Biased: device events already queued are applied before a tick can expire a device
        // whose return is waiting in the queue.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(event) = dev_rx.recv() => {
                // A burst (a rewritten devices file, a hub with several cameras) is applied as one
                // change and planned once.
                let mut changes = Vec::new();
                let burst = std::iter::once(event)
                    .chain(std::iter::from_fn(|| dev_rx.try_recv().ok()))
                    .take(DEVICE_BURST);
                for event in burst {
                    let handler = event.handler().to_owned();
                    discovery.pending.remove(&handler);
                    let approved = discovery.approvals.get(&handler).copied().unwrap_or(false);
                    let base = if handler == "static" { discovery.static_base.as_deref() } else { None };
                    changes.extend(devices.apply(event, approved, base, Timestamp::now()));
                }
                report_changes(&changes, &devices, grace, &mut view);
                replan = !changes.is_empty();
            }
            Some((handler, message)) = problem_rx.recv() => {
                discovery.pending.remove(&handler);
                view.emit(&Event::Problem { message: format!("discovery handler {handler} stopped: {message}") });
            }
            Some(()) = dirty_rx.recv() => {
                // Editors write in several steps: let them finish, then read once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while dirty_rx.try_recv().is_ok() {}
                replan = sup.reload(&mut folder, &mut devices, &mut view);
            }
            Some(report) = launch_rx.recv() => sup.on_report(report, &mut view),
            _ = tick.tick() => {
                let changes = devices.expire(Timestamp::now(), grace);
                report_changes(&changes, &devices, grace, &mut view);
                replan = !changes.is_empty() || devices.any_absent();
                sup.restart_due();
                for slot in sup.slots.values_mut() {
                    let lines = slot.read_new_lines();
                    if opts.follow {
                        let prefix = format!("{}/{}", short_name(&slot.workload), short_id(&slot.placement.id, &devices));
                        view.follow(&prefix, &lines);
                    }
                }
                view.render(&snapshot(&title, &devices, &sup));
                let settled = discovery.pending.is_empty() || discovery_started.elapsed() > DISCOVERY_SETTLE;
                if opts.once && settled && sup.slots.values().all(|s| s.state.settled()) {
                    let failed = sup.slots.values().filter(|s| s.state == SlotState::Failed).count();
                    let succeeded = sup.slots.len() - failed;
                    result = failed == 0 && sup.manifest_errors == 0 && sup.invalid == 0;
                    view.emit(&Event::Finished { ok: result, succeeded, failed });
                    break;
                }
            }
        }
        if replan {
            sup.replan(&folder, &mut devices, &mut view);
        }
    }

    view.emit(&Event::Stopping);
    background.cancel();
    drop(watcher);
    let running: Vec<_> = sup
        .slots
        .values_mut()
        .filter_map(|s| s.instance.take())
        .collect();
    for i in &running {
        i.kill(15);
    }
    let all = futures_join(running);
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        tracing::warn!("some instances did not stop within 5s");
    }
    for slot in sup.slots.values_mut() {
        slot.read_new_lines();
    }
    view.render(&snapshot(&title, &devices, &sup));
    sup.persist(&devices);
    view.finish();
    Ok(result)
}

async fn futures_join(instances: Vec<edgewasm_runtime::Instance>) {
    for i in instances {
        i.wait().await;
    }
}

struct Supervisor {
    host: Arc<Host>,
    launch_tx: mpsc::UnboundedSender<LaunchReport>,
    slots: BTreeMap<SlotKey, Slot>,
    state_dir: PathBuf,
    /// Messages already shown (invalid specs, waiting placements, duplicates), so each shows once.
    reported: BTreeSet<String>,
    persisted: BTreeMap<String, Vec<Allocation>>,
    opts: RunOptions,
    grace: Duration,
    manifest_errors: usize,
    /// The manifest errors last shown, so an unchanged broken file is reported once.
    manifest_error_texts: BTreeSet<String>,
    invalid: usize,
}

impl Supervisor {
    /// Reads the folder again; returns whether anything changed.
    fn reload(&mut self, folder: &mut Folder, devices: &mut DeviceSet, view: &mut View) -> bool {
        let r = folder.reload();
        self.manifest_errors = r.errors.len();
        let errors: BTreeSet<String> = r.errors.iter().map(ToString::to_string).collect();
        for e in &r.errors {
            if !self.manifest_error_texts.contains(&e.to_string()) {
                view.emit(&Event::ManifestError {
                    file: e.file.clone(),
                    line: e.line,
                    message: e.message.clone(),
                });
            }
        }
        self.manifest_error_texts = errors;
        let manifest_devices_changed = devices.set_manifest_devices(folder.devices());
        r.changed || manifest_devices_changed
    }

    fn replan(&mut self, folder: &Folder, devices: &mut DeviceSet, view: &mut View) {
        let (sourced, problems) = folder.workloads();
        for p in problems {
            if self.reported.insert(p.clone()) {
                view.emit(&Event::Problem { message: p });
            }
        }
        let workloads: Vec<WasmWorkload> = sourced.iter().map(|s| s.workload.clone()).collect();
        let plan = edgewasm_api::plan(
            &workloads,
            &devices.devices(),
            PlanOptions {
                now: Timestamp::now(),
                grace: self.grace,
            },
        );
        devices.set_allocations(&plan.allocations);
        self.persist(devices);

        self.invalid = 0;
        let mut desired = BTreeMap::new();
        for (key, wp) in &plan.workloads {
            if let Some(e) = &wp.invalid {
                self.invalid += 1;
                if self.reported.insert(format!("invalid {key} {e}")) {
                    view.emit(&Event::InvalidWorkload {
                        workload: key.clone(),
                        message: e.to_string(),
                    });
                }
            }
            for w in &wp.waiting {
                if self
                    .reported
                    .insert(format!("waiting {key} {} {}", w.id, w.message))
                {
                    view.emit(&Event::Waiting {
                        workload: key.clone(),
                        placement: w.id.clone(),
                        message: w.message.clone(),
                    });
                }
            }
            for p in &wp.placements {
                desired.insert((key.clone(), p.id.clone()), p.clone());
            }
        }

        let gone: Vec<SlotKey> = self
            .slots
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let mut slot = self.slots.remove(&key).expect("listed above");
            slot.stop();
            let reason = if !plan.workloads.contains_key(&key.0) {
                "the workload was removed".to_owned()
            } else if slot.placement.device_absent
                || slot
                    .placement
                    .devices
                    .iter()
                    .any(|d| devices.get(d).is_none())
            {
                format!(
                    "its device was gone for longer than the grace period ({}s)",
                    self.grace.as_secs()
                )
            } else {
                "it is no longer placed here".to_owned()
            };
            view.emit(&Event::PlacementStopped {
                workload: key.0,
                placement: key.1,
                reason,
            });
        }

        let by_key: BTreeMap<String, &SourcedWorkload> =
            sourced.iter().map(|s| (s.workload.key(), s)).collect();
        for (key, placement) in desired {
            let Some(source) = by_key.get(&key.0) else {
                continue;
            };
            let dir = source.file.parent().unwrap_or(Path::new("."));
            let launch = launch_for(&source.workload, &placement, dir);
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.placement = placement;
                if slot.placement.device_absent {
                    slot.device_gone();
                }
                if slot.launch != launch {
                    slot.stop();
                    slot.launch = launch;
                    slot.failures = 0;
                    view.emit(&Event::PlacementStopped {
                        workload: key.0.clone(),
                        placement: key.1.clone(),
                        reason: "its spec or device changed; starting it again".into(),
                    });
                    slot.launch(&self.host, &self.launch_tx);
                }
                continue;
            }
            let log = self.state_dir.join("logs").join(format!(
                "{}.{}.log",
                key.0.replace('/', "."),
                key.1
            ));
            let mut slot = Slot::new(key.0.clone(), placement, launch, log);
            slot.world.keyvalue_dir = Some(
                self.state_dir
                    .join("keyvalue")
                    .join(key.0.replace('/', ".")),
            );
            if let Ok(l) = &slot.launch {
                view.emit(&Event::Compiling {
                    workload: key.0.clone(),
                    placement: key.1.clone(),
                    image: display_path(&l.wasm),
                });
            }
            slot.launch(&self.host, &self.launch_tx);
            self.slots.insert(key, slot);
        }
    }

    fn on_report(&mut self, report: LaunchReport, view: &mut View) {
        let base = self.opts.restart_backoff;
        let once = self.opts.once;
        match report {
            LaunchReport::Started {
                key,
                generation,
                instance,
                compiled,
            } => {
                let Some(slot) = current_slot(&mut self.slots, &key, generation) else {
                    instance.kill(15);
                    return;
                };
                tracing::debug!(workload = %key.0, placement = %key.1, compiled, "instance started");
                slot.started(instance);
                view.emit(&Event::InstanceStarted {
                    workload: key.0.clone(),
                    placement: key.1.clone(),
                    log: display_path(&slot.log),
                });
                if let SlotState::Serving(url) = &slot.state {
                    view.emit(&Event::Serving {
                        workload: key.0,
                        placement: key.1,
                        url: url.clone(),
                    });
                }
            }
            LaunchReport::StartFailed {
                key,
                generation,
                error,
            } => {
                let Some(slot) = current_slot(&mut self.slots, &key, generation) else {
                    return;
                };
                view.emit(&Event::StartFailed {
                    workload: key.0.clone(),
                    placement: key.1.clone(),
                    message: error.clone(),
                });
                let next = slot.ended(false, error, base, once);
                schedule(&key, next, slot.restarts, view);
            }
            LaunchReport::Exited {
                key,
                generation,
                status,
            } => {
                let Some(slot) = current_slot(&mut self.slots, &key, generation) else {
                    return;
                };
                slot.read_new_lines();
                let message = describe_exit(&status);
                view.emit(&Event::InstanceExited {
                    workload: key.0.clone(),
                    placement: key.1.clone(),
                    code: status.code,
                    success: status.success(),
                    message: message.clone(),
                });
                let next = slot.ended(status.success(), message, base, once);
                schedule(&key, next, slot.restarts, view);
            }
        }
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for slot in self.slots.values_mut() {
            if let SlotState::BackingOff { until } = slot.state
                && until <= now
            {
                slot.launch(&self.host, &self.launch_tx);
            }
        }
    }

    fn persist(&mut self, devices: &DeviceSet) {
        let allocations = devices.allocations();
        if allocations == self.persisted {
            return;
        }
        let path = self.state_dir.join(PLACEMENTS_FILE);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&allocations).expect("allocations serialize");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(file = %path.display(), error = %e, "placements not saved");
        }
        self.persisted = allocations;
    }
}

/// The slot a launch report is about, unless the slot was replaced or removed since that launch.
fn current_slot<'a>(
    slots: &'a mut BTreeMap<SlotKey, Slot>,
    key: &SlotKey,
    generation: u64,
) -> Option<&'a mut Slot> {
    slots.get_mut(key).filter(|s| s.generation == generation)
}

fn schedule(key: &SlotKey, next: AfterExit, restarts: u32, view: &mut View) {
    if let AfterExit::RestartIn(d) = next {
        view.emit(&Event::RestartScheduled {
            workload: key.0.clone(),
            placement: key.1.clone(),
            in_ms: d.as_millis() as u64,
            restarts,
        });
    }
}

fn report_changes(changes: &[Change], devices: &DeviceSet, grace: Duration, view: &mut View) {
    for c in changes {
        match c {
            Change::Appeared { name } => {
                if let Some(e) = devices.get(name) {
                    view.emit(&Event::DeviceAppeared {
                        device: name.clone(),
                        label: e.label().to_owned(),
                        handler: e.device.spec.handler.clone(),
                        approved: e.device.spec.approved,
                    });
                }
            }
            Change::Updated { .. } => {}
            Change::Absent { name } => {
                let label = devices
                    .get(name)
                    .map_or_else(|| name.clone(), |e| e.label().to_owned());
                view.emit(&Event::DeviceAbsent {
                    device: name.clone(),
                    label,
                    grace_seconds: grace.as_secs(),
                });
            }
            Change::Removed { name, label } => {
                view.emit(&Event::DeviceRemoved {
                    device: name.clone(),
                    label: label.clone(),
                });
            }
        }
    }
}

fn short_name(workload: &str) -> &str {
    workload.strip_prefix("default/").unwrap_or(workload)
}

/// A placement id as a person reads it: the device's label for per-device placements.
fn short_id(id: &str, devices: &DeviceSet) -> String {
    devices
        .get(id)
        .map_or_else(|| id.to_owned(), |e| e.label().to_owned())
}

fn snapshot(title: &str, devices: &DeviceSet, sup: &Supervisor) -> Snapshot {
    let now = Timestamp::now();
    let device_rows = devices
        .entries()
        .map(|(_, e)| {
            let d = &e.device;
            let (state, ok) = if !d.spec.approved {
                ("awaiting approval".to_owned(), false)
            } else if let Some(since) = d.absent_since() {
                let left = sup.grace.as_secs() as i64 - (now.as_second() - since.0.as_second());
                (format!("gone, {}s left", left.max(0)), false)
            } else if d
                .condition(edgewasm_api::device::CONDITION_HEALTHY)
                .is_some_and(|c| c.status == "False")
            {
                ("unhealthy".to_owned(), false)
            } else {
                ("present".to_owned(), true)
            };
            let detail = ["devnode", "syspath", "ip", "xaddrs", "endpointUrl"]
                .iter()
                .find_map(|k| d.spec.properties.get(*k))
                .map(|p| display_path(Path::new(p)))
                .unwrap_or_default();
            DeviceRow {
                label: e.label().to_owned(),
                handler: d.spec.handler.clone(),
                state,
                ok,
                detail,
            }
        })
        .collect();
    let placements = sup
        .slots
        .values()
        .map(|s| {
            let device = s
                .placement
                .devices
                .iter()
                .map(|d| {
                    devices
                        .get(d)
                        .map_or_else(|| d.clone(), |e| e.label().to_owned())
                })
                .collect::<Vec<_>>()
                .join(",");
            let failing = s.failures > 0;
            let (state, ok, busy) = match &s.state {
                SlotState::Starting if s.generation <= 1 => ("compiling".to_owned(), None, true),
                SlotState::Starting => ("starting".to_owned(), None, true),
                SlotState::Running if s.placement.device_absent => {
                    ("running, device gone".to_owned(), None, false)
                }
                SlotState::Running => ("running".to_owned(), Some(true), false),
                SlotState::Serving(url) => (format!("serving {url}"), Some(true), false),
                SlotState::BackingOff { until } => {
                    let secs = until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                        .ceil();
                    if failing {
                        (format!("failed, retry in {secs:.0}s"), Some(false), false)
                    } else {
                        (format!("done, next run in {secs:.0}s"), Some(true), false)
                    }
                }
                SlotState::Succeeded => ("completed".to_owned(), Some(true), false),
                SlotState::Failed => ("failed".to_owned(), Some(false), false),
            };
            let output = if ok == Some(false) {
                s.message.clone().unwrap_or_default()
            } else {
                s.last_line.clone()
            };
            PlacementRow {
                workload: short_name(&s.workload).to_owned(),
                device: if device.is_empty() {
                    "-".into()
                } else {
                    device
                },
                state,
                ok,
                busy,
                restarts: s.restarts,
                output,
            }
        })
        .collect();
    Snapshot {
        title: title.to_owned(),
        devices: device_rows,
        placements,
    }
}

fn read_placements(path: &Path) -> BTreeMap<String, Vec<Allocation>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "saved placements unreadable; starting fresh");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "standalone".into())
}
