//! The publisher: turns handler events into `Device` resources with server-side apply, spec and
//! status separately, coalescing changes per device so the API sees the latest state only.
//!
//! The pure part, [`Ledger`], decides what to write; [`Publisher`] writes it with kube and retries with
//! backoff while the apiserver is unreachable, so discovery never waits for the API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use edgewasm_api::Device;
use edgewasm_api::device::{CONDITION_HEALTHY, CONDITION_PRESENT};
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Approval, DeviceEvent, DiscoveredDevice};

/// Settings of the publisher.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// This node's name (`NODE_NAME`).
    pub node: String,
    /// Approval policy per handler; handlers not listed are `manual`.
    pub approvals: BTreeMap<String, Approval>,
    /// How often `lastSeen` is refreshed for devices that did not change.
    pub refresh: Duration,
    /// Longest a burst of events is gathered before writing, so a burst becomes one write per device.
    pub batch_delay: Duration,
    /// A burst ends when no event follows for this long; a lone event is written after it.
    pub batch_quiet: Duration,
    /// Longest wait between retries while the API fails.
    pub max_backoff: Duration,
}

impl PublisherConfig {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            approvals: BTreeMap::new(),
            refresh: Duration::from_mins(4),
            batch_delay: Duration::from_millis(200),
            batch_quiet: Duration::from_millis(5),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// The field manager owning this node's entries.
    pub fn field_manager(&self) -> String {
        format!("edgewasm-agent.{}", self.node)
    }
}

/// What this node knows about one device.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts, each written to the API separately"
)]
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub device: DiscoveredDevice,
    pub present: bool,
    /// When it appeared or vanished (the Present condition's transition time).
    pub since: Timestamp,
    /// The spec (properties, node membership) needs writing.
    pub spec_dirty: bool,
    /// The status (conditions, lastSeen) needs writing.
    pub status_dirty: bool,
    /// The device exists in the API (written once); a device that vanishes before that is forgotten.
    pub published: bool,
    /// When the status was last written.
    pub status_written: Option<Instant>,
}

/// The latest state per device name: a bounded ledger (one entry per device), so a long apiserver
/// outage costs no more memory than the devices themselves.
#[derive(Debug, Default)]
pub struct Ledger {
    pub devices: BTreeMap<String, Tracked>,
    /// Handlers that reported a full set at least once.
    pub resynced: BTreeSet<String>,
}

impl Ledger {
    /// Record an event.
    pub fn apply(&mut self, ev: DeviceEvent, now: Timestamp) {
        match ev {
            DeviceEvent::Seen(d) => self.seen(d, now),
            DeviceEvent::Gone { handler, identity } => {
                self.gone(&edgewasm_api::device_name(&handler, &identity), now);
            }
            DeviceEvent::Resync { handler, devices } => {
                self.resynced.insert(handler.clone());
                let names: BTreeSet<String> = devices.iter().map(DiscoveredDevice::name).collect();
                let vanished: Vec<String> = self
                    .devices
                    .iter()
                    .filter(|(name, t)| {
                        t.device.handler == handler && t.present && !names.contains(*name)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in vanished {
                    self.gone(&name, now);
                }
                for d in devices {
                    self.seen(d, now);
                }
            }
        }
    }

    fn seen(&mut self, d: DiscoveredDevice, now: Timestamp) {
        let name = d.name();
        match self.devices.get_mut(&name) {
            Some(t) => {
                let spec_changed = !t.present || t.device.properties != d.properties;
                let status_changed = !t.present || t.device.healthy != d.healthy;
                if !t.present {
                    t.since = now;
                }
                t.present = true;
                t.spec_dirty |= spec_changed;
                t.status_dirty |= status_changed;
                t.device = d;
            }
            None => {
                self.devices.insert(
                    name,
                    Tracked {
                        device: d,
                        present: true,
                        since: now,
                        spec_dirty: true,
                        status_dirty: true,
                        published: false,
                        status_written: None,
                    },
                );
            }
        }
    }

    fn gone(&mut self, name: &str, now: Timestamp) {
        let Some(t) = self.devices.get_mut(name) else {
            return;
        };
        if !t.published {
            // Never written: nothing in the API to take back.
            self.devices.remove(name);
            return;
        }
        if t.present {
            t.present = false;
            t.since = now;
            t.spec_dirty = true;
            t.status_dirty = true;
        }
    }

    /// Take over the devices the API lists for this node from before a restart: those of handlers that
    /// already reported their full set and did not list them are gone; the others wait for their
    /// handler's first full set.
    pub fn adopt(&mut self, existing: &[Device], node: &str, now: Timestamp) {
        for d in existing {
            let Some(name) = d.metadata.name.clone() else {
                continue;
            };
            if !d.spec.nodes.iter().any(|n| n == node) || self.devices.contains_key(&name) {
                continue;
            }
            let resynced = self.resynced.contains(&d.spec.handler);
            let mut device = DiscoveredDevice::new(d.spec.handler.clone(), String::new());
            device.properties = d.spec.properties.clone();
            self.devices.insert(
                name,
                Tracked {
                    device,
                    present: !resynced,
                    since: now,
                    spec_dirty: resynced,
                    status_dirty: resynced,
                    published: true,
                    status_written: None,
                },
            );
        }
    }

    /// Mark present devices whose status is older than `refresh` for a `lastSeen` update.
    pub fn refresh_due(&mut self, now: Instant, refresh: Duration) {
        for t in self.devices.values_mut() {
            if t.present
                && t.published
                && t.status_written
                    .is_none_or(|w| now.duration_since(w) >= refresh)
            {
                t.status_dirty = true;
            }
        }
    }

    /// Names of devices with something to write.
    pub fn dirty(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, t)| t.spec_dirty || t.status_dirty)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// How many devices are present.
    pub fn present(&self) -> usize {
        self.devices.values().filter(|t| t.present).count()
    }
}

/// The spec this node applies: its own node entry (or none, when the device is gone from here),
/// the properties, and `approved: true` only under an `auto` policy.
pub fn spec_patch(name: &str, t: &Tracked, node: &str, approval: Approval) -> Value {
    let mut spec = json!({
        "handler": t.device.handler,
        "nodes": if t.present { vec![node.to_string()] } else { Vec::new() },
        "properties": t.device.properties,
    });
    if approval == Approval::Auto {
        spec["approved"] = json!(true);
    }
    json!({ "apiVersion": "edgewasm.io/v1alpha1", "kind": "Device", "metadata": { "name": name }, "spec": spec })
}

fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn condition(
    current: Option<&Device>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    at: Timestamp,
) -> Value {
    let status = if status { "True" } else { "False" };
    // Keep the transition time when the condition does not change.
    let since = current
        .and_then(|d| d.condition(type_))
        .filter(|c| c.status == status)
        .map_or_else(|| rfc3339(at), |c| rfc3339(c.last_transition_time.0));
    json!({ "type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since })
}

/// The status this node applies, given the device as the API returned it after the spec apply.
/// `None` when there is nothing for this node to say (it lost the device but other nodes still see it).
pub fn status_patch(
    name: &str,
    t: &Tracked,
    node: &str,
    current: Option<&Device>,
    now: Timestamp,
) -> Option<Value> {
    let mut conditions = Vec::new();
    let mut status = serde_json::Map::new();
    if t.present {
        conditions.push(condition(
            current,
            CONDITION_PRESENT,
            true,
            "Seen",
            &format!("seen from node {node}"),
            t.since,
        ));
        let (reason, message) = if t.device.healthy {
            ("Healthy", "answers")
        } else {
            ("Unhealthy", "does not answer as expected")
        };
        conditions.push(condition(
            current,
            CONDITION_HEALTHY,
            t.device.healthy,
            reason,
            message,
            now,
        ));
        status.insert("lastSeen".into(), json!(rfc3339(now)));
    } else {
        let others = current.is_some_and(|d| d.spec.nodes.iter().any(|n| n != node));
        if others {
            return None;
        }
        conditions.push(condition(
            current,
            CONDITION_PRESENT,
            false,
            "Vanished",
            &format!("last seen from node {node}"),
            t.since,
        ));
    }
    status.insert("conditions".into(), Value::Array(conditions));
    Some(
        json!({ "apiVersion": "edgewasm.io/v1alpha1", "kind": "Device", "metadata": { "name": name }, "status": status }),
    )
}

/// Writes the ledger to the API.
pub struct Publisher {
    api: Api<Device>,
    cfg: PublisherConfig,
    ledger: Ledger,
}

impl Publisher {
    pub fn new(client: kube::Client, cfg: PublisherConfig) -> Self {
        Self {
            api: Api::all(client),
            cfg,
            ledger: Ledger::default(),
        }
    }

    /// The ledger (for tests and metrics).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Consume events until `shutdown`, writing the latest state; returns when the channel closes and
    /// everything could be written, or on shutdown.
    pub async fn run(
        mut self,
        mut events: Receiver<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Duration::ZERO;
        let mut retry_at: Option<Instant> = None;
        let mut open = true;
        let mut adopted = false;
        let mut refresh = tokio::time::interval(self.cfg.refresh.max(Duration::from_secs(1)));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait_retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                ev = events.recv(), if open => match ev {
                    Some(ev) => {
                        self.record(ev);
                        // Gather the rest of a burst (events closer than `batch_quiet`, for at
                        // most `batch_delay`) before writing; a lone device is written at once.
                        let deadline = Instant::now() + self.cfg.batch_delay;
                        loop {
                            let quiet = (Instant::now() + self.cfg.batch_quiet).min(deadline);
                            match tokio::time::timeout_at(quiet, events.recv()).await {
                                Ok(Some(ev)) => self.record(ev),
                                Ok(None) => {
                                    open = false;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                _ = refresh.tick() => self.ledger.refresh_due(Instant::now(), self.cfg.refresh),
                () = wait_retry => {}
            }
            if retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            if !adopted {
                match self.api.list(&kube::api::ListParams::default()).await {
                    Ok(list) => {
                        self.ledger
                            .adopt(&list.items, &self.cfg.node, Timestamp::now());
                        adopted = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "listing devices from before a restart failed");
                    }
                }
            }
            match self.flush().await {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    retry_at = None;
                    if !open {
                        return Ok(());
                    }
                }
                Err(e) => {
                    backoff = (backoff * 2)
                        .max(Duration::from_millis(500))
                        .min(self.cfg.max_backoff);
                    retry_at = Some(Instant::now() + backoff);
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "publishing devices failed; will retry with the latest state");
                }
            }
            crate::metrics::set_devices(self.ledger.present(), self.ledger.dirty().len());
        }
    }

    fn record(&mut self, ev: DeviceEvent) {
        let kind = match &ev {
            DeviceEvent::Seen(_) => "seen",
            DeviceEvent::Gone { .. } => "gone",
            DeviceEvent::Resync { .. } => "resync",
        };
        crate::metrics::event(ev.handler(), kind);
        self.ledger.apply(ev, Timestamp::now());
    }

    /// Write every dirty device; stops at the first failure (the API is most likely down).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        for name in self.ledger.dirty() {
            let result = self.write(&name).await;
            crate::metrics::api_write(if result.is_ok() { "ok" } else { "error" });
            result.with_context(|| format!("device {name}"))?;
        }
        Ok(())
    }

    async fn write(&mut self, name: &str) -> anyhow::Result<()> {
        use tracing::Instrument as _;
        let span = tracing::info_span!("publish", device = name, node = %self.cfg.node);
        self.write_device(name).instrument(span).await
    }

    async fn write_device(&mut self, name: &str) -> anyhow::Result<()> {
        let params = PatchParams::apply(&self.cfg.field_manager()).force();
        let t = self
            .ledger
            .devices
            .get(name)
            .context("device vanished from the ledger")?
            .clone();
        let approval = self
            .cfg
            .approvals
            .get(&t.device.handler)
            .copied()
            .unwrap_or(Approval::Manual);
        let current = if t.spec_dirty || !t.present {
            let patch = spec_patch(name, &t, &self.cfg.node, approval);
            Some(
                self.api
                    .patch(name, &params, &Patch::Apply(&patch))
                    .await
                    .context("applying spec")?,
            )
        } else {
            None
        };
        if let Some(e) = self.ledger.devices.get_mut(name) {
            e.spec_dirty = false;
            e.published = true;
        }
        if t.status_dirty {
            let current = match current {
                Some(c) => Some(c),
                None => self.api.get_opt(name).await.context("reading device")?,
            };
            if let Some(patch) =
                status_patch(name, &t, &self.cfg.node, current.as_ref(), Timestamp::now())
            {
                self.api
                    .patch_status(name, &params, &Patch::Apply(&patch))
                    .await
                    .context("applying status")?;
            }
            tracing::info!(present = t.present, "device published");
        }
        // Nothing else touches the ledger while a write is in flight, so the entry is still `t`.
        if t.present {
            if let Some(e) = self.ledger.devices.get_mut(name) {
                e.status_dirty = false;
                e.status_written = Some(Instant::now());
            }
        } else {
            // Gone and written: only devices still present stay in memory.
            self.ledger.devices.remove(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, v: &str) -> DiscoveredDevice {
        let mut d = DiscoveredDevice::new("static", id);
        d.properties.insert("v".into(), v.into());
        d
    }

    fn written(l: &mut Ledger) {
        for t in l.devices.values_mut() {
            t.spec_dirty = false;
            t.status_dirty = false;
            t.published = true;
        }
    }

    #[test]
    fn coalesces_changes_and_forgets_unpublished_devices() {
        let now = Timestamp::now();
        let mut l = Ledger::default();
        for v in 0..10 {
            l.apply(DeviceEvent::Seen(dev("a", &v.to_string())), now);
        }
        assert_eq!(l.devices.len(), 1);
        assert_eq!(
            l.devices.values().next().unwrap().device.properties["v"],
            "9"
        );
        l.apply(
            DeviceEvent::Gone {
                handler: "static".into(),
                identity: "a".into(),
            },
            now,
        );
        assert!(l.devices.is_empty(), "never written, nothing to take back");
    }

    #[test]
    fn unchanged_sightings_write_nothing() {
        let now = Timestamp::now();
        let mut l = Ledger::default();
        l.apply(DeviceEvent::Seen(dev("a", "1")), now);
        written(&mut l);
        l.apply(DeviceEvent::Seen(dev("a", "1")), now);
        assert!(l.dirty().is_empty());
        l.apply(
            DeviceEvent::Resync {
                handler: "static".into(),
                devices: vec![dev("a", "1")],
            },
            now,
        );
        assert!(l.dirty().is_empty());
        l.apply(
            DeviceEvent::Resync {
                handler: "udev".into(),
                devices: vec![],
            },
            now,
        );
        assert!(
            l.dirty().is_empty(),
            "another handler's resync does not touch static devices"
        );
        l.apply(
            DeviceEvent::Resync {
                handler: "static".into(),
                devices: vec![],
            },
            now,
        );
        assert_eq!(l.dirty().len(), 1);
        assert!(!l.devices.values().next().unwrap().present);
    }

    #[test]
    fn adopts_devices_from_before_a_restart() {
        let now = Timestamp::now();
        let mut existing = Device::new(
            "static-x",
            edgewasm_api::DeviceSpec {
                handler: "static".into(),
                nodes: vec!["n1".into()],
                ..Default::default()
            },
        );
        existing.spec.properties.insert("v".into(), "1".into());
        let other = Device::new(
            "udev-y",
            edgewasm_api::DeviceSpec {
                handler: "udev".into(),
                nodes: vec!["n2".into()],
                ..Default::default()
            },
        );
        let mut l = Ledger::default();
        l.apply(
            DeviceEvent::Resync {
                handler: "static".into(),
                devices: vec![],
            },
            now,
        );
        l.adopt(&[existing, other], "n1", now);
        assert_eq!(l.devices.len(), 1, "only this node's devices");
        let t = &l.devices["static-x"];
        assert!(
            !t.present && t.spec_dirty,
            "its handler already reported without it: gone"
        );
    }

    #[test]
    fn patches() {
        let now = Timestamp::now();
        let mut l = Ledger::default();
        l.apply(DeviceEvent::Seen(dev("a", "1")), now);
        let (name, t) = l.devices.iter().next().unwrap();
        let p = spec_patch(name, t, "n1", Approval::Manual);
        assert!(p["spec"].get("approved").is_none());
        assert_eq!(p["spec"]["nodes"], json!(["n1"]));
        assert_eq!(
            spec_patch(name, t, "n1", Approval::Auto)["spec"]["approved"],
            json!(true)
        );
        let s = status_patch(name, t, "n1", None, now).unwrap();
        assert_eq!(s["status"]["conditions"][0]["type"], "Present");
        assert_eq!(s["status"]["conditions"][0]["status"], "True");
        let mut gone = t.clone();
        gone.present = false;
        let mut shared = Device::new(
            name,
            edgewasm_api::DeviceSpec {
                handler: "static".into(),
                nodes: vec!["n2".into()],
                ..Default::default()
            },
        );
        assert!(
            status_patch(name, &gone, "n1", Some(&shared), now).is_none(),
            "n2 still sees it"
        );
        shared.spec.nodes.clear();
        let s = status_patch(name, &gone, "n1", Some(&shared), now).unwrap();
        assert_eq!(s["status"]["conditions"][0]["status"], "False");
        assert!(s["status"].get("lastSeen").is_none());
    }
}
