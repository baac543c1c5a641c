//! The reconcile loop: plan every workload against every device, then act for one workload — its
//! device allocations, its Pods, its status and Events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgewasm_api::{
    Device, LABEL_WORKLOAD, Placement, PlanOptions, WasmWorkload, WorkloadPlan, plan,
};
use futures::channel::{mpsc, oneshot};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::FIELD_MANAGER;
use crate::allocations::{self, Held, Synced};
use crate::config::Config;
use crate::error::{Error, Result, is_not_found};
use crate::metrics::Metrics;
use crate::pod::{build_pod, label_value, pinned_node, spec_hash_of};
use crate::status::{self, Observed};

/// Finalizer that releases a workload's device allocations before it goes away.
pub const FINALIZER: &str = "edgewasm.io/allocations";

/// How often an allocation write is retried after conflicts before the reconcile fails (and backs off).
const MAX_ALLOCATION_ATTEMPTS: u32 = 5;

/// How long one reconcile may take before it fails (and backs off). A reconcile that never ends
/// holds its workload's slot in the controller, so that workload would never be reconciled again.
const RECONCILE_TIMEOUT: Duration = Duration::from_mins(2);

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    /// All WasmWorkloads (the controller's own cache).
    pub workloads: Store<WasmWorkload>,
    /// All Devices.
    pub devices: Store<Device>,
    /// Resolves once the device cache holds the initial list (see [`ready_gate`]).
    devices_ready: ReadyGate,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// Consecutive failures per workload, for error_policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Workloads another reconcile needs reconciled now (see [`Context::requeue`]).
    requeue_tx: mpsc::UnboundedSender<ObjectRef<WasmWorkload>>,
    requeue_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<WasmWorkload>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        workloads: Store<WasmWorkload>,
        devices: Store<Device>,
        metrics: Arc<Metrics>,
        config: Config,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (requeue_tx, requeue_rx) = mpsc::unbounded();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            workloads,
            devices_ready: ready_gate(devices.clone()),
            devices,
            metrics,
            config,
            failures: Mutex::default(),
            requeue_tx,
            requeue_rx: Mutex::new(Some(requeue_rx)),
        }
    }

    /// Asks for workload `key` (`namespace/name`) to be reconciled soon. A workload that a
    /// higher-priority one displaces must let go of its device, but nothing it watches changes
    /// (the device's ledger only changes when it lets go), so the displacing workload asks.
    fn requeue(&self, key: &str) {
        if let Some((ns, name)) = key.split_once('/') {
            // Closed only when the controller is gone, and then nothing needs reconciling.
            let _ = self
                .requeue_tx
                .unbounded_send(ObjectRef::new(name).within(ns));
        }
    }

    /// Waits until the device cache holds the initial list: planning against an empty cache would
    /// look like every device vanished.
    async fn devices_synced(&self) -> Result<()> {
        if self.devices_ready.clone().await {
            Ok(())
        } else {
            Err(Error::MissingField("device cache"))
        }
    }

    /// The requests of [`Context::requeue`], for the controller (taken once).
    pub fn requeues(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<WasmWorkload>>> {
        self.requeue_rx.lock().expect("requeue lock").take()
    }

    async fn publish(
        &self,
        w: &WasmWorkload,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &w.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}

/// Reconciles one workload; the finalizer runs [`apply`] while it lives and [`cleanup`] on delete.
#[tracing::instrument(skip_all, fields(workload = %w.key()))]
pub async fn reconcile(w: Arc<WasmWorkload>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile();
    let key = w.key();
    tracing::debug!(workload = %key, "reconciling");
    let ns = w
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<WasmWorkload> = Api::namespaced(ctx.client.clone(), &ns);
    let context: &Context = &ctx;
    let finalized = Box::pin(finalizer(&api, FINALIZER, w, |event| async move {
        match event {
            Finalizer::Apply(w) => Box::pin(apply(w, context)).await,
            Finalizer::Cleanup(w) => Box::pin(cleanup(w, context)).await,
        }
    }));
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, finalized).await {
        Ok(result) => result.map_err(|e| match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer {
                workload: key.clone(),
                message: other.to_string(),
            },
        }),
        Err(_) => Err(Error::Timeout {
            workload: key.clone(),
            after: RECONCILE_TIMEOUT,
        }),
    };
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key);
    }
    result
}

/// Backs off per workload: 1 s, 2 s, 4 s, ... up to 5 min, so a failing apiserver is not hammered.
pub fn error_policy(w: Arc<WasmWorkload>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    let failures = {
        let mut map = ctx.failures.lock().expect("failures lock");
        let n = map.entry(w.key()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay =
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(8)).min(Duration::from_mins(5));
    tracing::warn!(workload = %w.key(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Plans, then writes this workload's allocations, Pods and status.
async fn apply(w: Arc<WasmWorkload>, ctx: &Context) -> Result<Action> {
    let key = w.key();
    let name = w.name_any();
    let ns = w
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    ctx.devices_synced().await?;

    let now = Timestamp::now();
    let opts = PlanOptions {
        now,
        grace: ctx.config.device_grace_period,
    };
    let workloads: Vec<WasmWorkload> = ctx
        .workloads
        .state()
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none() && o.key() != key)
        .map(|o| (**o).clone())
        .chain(std::iter::once((*w).clone()))
        .collect();
    let mut devices: Vec<Device> = ctx.devices.state().iter().map(|d| (**d).clone()).collect();
    let (wp, held) = allocate(ctx, &workloads, &mut devices, &key, opts).await?;
    for holder in &held.holders {
        tracing::debug!(%holder, "a device this workload is planned on is still held; asking its holder to let go");
        ctx.requeue(holder);
    }

    let placed: Vec<&Placement> = wp
        .placements
        .iter()
        .filter(|p| held.confirmed.contains(&p.id))
        .collect();
    let pods = Box::pin(sync_pods(ctx, &w, &ns, &placed)).await?;

    let placements: Vec<Placement> = placed.iter().map(|p| (*p).clone()).collect();
    let waiting: Vec<_> = wp.waiting.iter().chain(&held.blocked).cloned().collect();
    let desired = status::desired_status(
        &w,
        &Observed {
            plan: &wp,
            placements: &placements,
            waiting: &waiting,
            pods: &pods.by_placement,
        },
        &Time(now),
    );
    let previous = w.status.clone().unwrap_or_default();
    if !status::same_status(&previous, &desired) {
        let api: Api<WasmWorkload> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({ "apiVersion": "edgewasm.io/v1alpha1", "kind": "WasmWorkload", "status": desired });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("writing status of", key.clone()))?;
        publish_transitions(ctx, &w, &previous, &desired).await;
    }
    ctx.metrics
        .placements(&key, placements.len(), waiting.len());
    tracing::debug!(
        placements = placements.len(),
        waiting = waiting.len(),
        "reconciled"
    );

    Ok(Action::requeue(next_check(
        &placements,
        &devices,
        opts,
        ctx.config.resync,
        pods.terminating,
    )))
}

/// Plans and writes this workload's allocations; a conflict re-reads the device and plans again.
async fn allocate(
    ctx: &Context,
    workloads: &[WasmWorkload],
    devices: &mut Vec<Device>,
    key: &str,
    opts: PlanOptions,
) -> Result<(WorkloadPlan, Held)> {
    let api: Api<Device> = Api::all(ctx.client.clone());
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        let plan = plan(workloads, devices, opts);
        let wp = plan.workloads.get(key).cloned().unwrap_or_default();
        match allocations::sync(&api, devices, key, &wp.placements).await? {
            Synced::Done(held) => return Ok((wp, held)),
            Synced::Conflict(device) => {
                ctx.metrics.conflict();
                tracing::info!(%device, "allocation conflict; re-reading the device and planning again");
                let fresh = api
                    .get_opt(&device)
                    .await
                    .map_err(Error::kube("reading device", device.clone()))?;
                devices.retain(|d| d.metadata.name.as_ref() != Some(&device));
                devices.extend(fresh);
            }
        }
    }
    let device = String::from("(several)");
    Err(Error::AllocationConflict {
        device,
        attempts: MAX_ALLOCATION_ATTEMPTS,
    })
}

/// The workload's Pods after syncing.
struct Pods {
    by_placement: BTreeMap<String, Pod>,
    /// Some Pod is still terminating (a replacement waits for it).
    terminating: bool,
}

/// Creates the Pods of `placed` placements, deletes those no longer planned, replaces changed ones.
async fn sync_pods(
    ctx: &Context,
    w: &WasmWorkload,
    ns: &str,
    placed: &[&Placement],
) -> Result<Pods> {
    let key = w.key();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{LABEL_WORKLOAD}={}", label_value(&w.name_any()));
    let uid = w.uid();
    let existing: Vec<Pod> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("listing Pods of", key.clone()))?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();
    let mut desired: BTreeMap<String, (&Placement, Pod)> = placed
        .iter()
        .map(|p| {
            let pod = build_pod(w, p, &ctx.config);
            (pod.name_any(), (*p, pod))
        })
        .collect();

    let mut out = Pods {
        by_placement: BTreeMap::new(),
        terminating: false,
    };
    for pod in existing {
        let pod_name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            out.terminating = true;
            desired.remove(&pod_name);
            continue;
        }
        match desired.remove(&pod_name) {
            Some((p, want)) if spec_hash_of(&pod) == spec_hash_of(&want) => {
                out.by_placement.insert(p.id.clone(), pod);
            }
            Some((p, want)) => {
                delete_pod(&api, &pod_name).await?;
                out.terminating = true;
                let (from, to) = (pinned_node(&pod), pinned_node(&want));
                if from == to {
                    let note = format!(
                        "Pod {pod_name} of placement {} is replaced: the workload changed",
                        p.id
                    );
                    ctx.publish(w, EventType::Normal, "Replaced", "Replace", note)
                        .await;
                } else {
                    let note = format!(
                        "placement {} moves from node {} to {}",
                        p.id,
                        from.unwrap_or("(any)"),
                        to.unwrap_or("(any)")
                    );
                    ctx.publish(w, EventType::Normal, "Moved", "Move", note)
                        .await;
                }
            }
            None => {
                delete_pod(&api, &pod_name).await?;
                let placement = pod
                    .labels()
                    .get(edgewasm_api::LABEL_PLACEMENT)
                    .cloned()
                    .unwrap_or_default();
                tracing::info!(pod = %pod_name, placement, "removed a Pod no longer planned");
                let note =
                    format!("Pod {pod_name} removed: placement {placement} is no longer planned");
                ctx.publish(w, EventType::Normal, "Removed", "Delete", note)
                    .await;
            }
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (pod_name, (p, want)) in desired {
        let created = api
            .patch(&pod_name, &params, &Patch::Apply(&want))
            .await
            .map_err(Error::kube("applying Pod", format!("{ns}/{pod_name}")))?;
        tracing::info!(pod = %pod_name, placement = %p.id, node = ?p.node, "created a Pod");
        let note = format!(
            "Pod {pod_name} for placement {} on node {}",
            p.id,
            p.node.as_deref().unwrap_or("(any)")
        );
        ctx.publish(w, EventType::Normal, "Created", "Create", note)
            .await;
        out.by_placement.insert(p.id.clone(), created);
    }
    Ok(out)
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube("deleting Pod", name.to_owned())(e)),
    }
}

/// Events for what changed in the status: placements that failed, and the Ready reason.
async fn publish_transitions(
    ctx: &Context,
    w: &WasmWorkload,
    before: &edgewasm_api::WasmWorkloadStatus,
    after: &edgewasm_api::WasmWorkloadStatus,
) {
    for p in &after.placements {
        let was = before
            .placements
            .iter()
            .find(|b| b.id == p.id)
            .map(|b| b.phase.as_str());
        if p.phase == status::PHASE_FAILED && was != Some(status::PHASE_FAILED) {
            let note = format!(
                "placement {}: {}",
                p.id,
                p.message.as_deref().unwrap_or("Pod failed")
            );
            ctx.publish(w, EventType::Warning, "PodFailed", "Observe", note)
                .await;
        }
    }
    let ready = |s: &edgewasm_api::WasmWorkloadStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::READY)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = ready(after)
        && ready(before).map(|r| r.0) != Some(reason.clone())
    {
        let type_ = if matches!(reason.as_str(), "AllPlacementsReady" | "PodPending") {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(w, type_, &reason, "Reconcile", message).await;
    }
}

/// When to look again: when the first absent device's grace period ends, soon while Pods terminate,
/// else after the resync interval.
fn next_check(
    placements: &[Placement],
    devices: &[Device],
    opts: PlanOptions,
    resync: Duration,
    terminating: bool,
) -> Duration {
    let grace = SignedDuration::try_from(opts.grace).unwrap_or(SignedDuration::MAX);
    let expiry = placements
        .iter()
        .filter(|p| p.device_absent)
        .flat_map(|p| &p.devices)
        .filter_map(|name| {
            devices
                .iter()
                .find(|d| d.metadata.name.as_ref() == Some(name))
        })
        .filter_map(|d| d.absent_since())
        .map(|since| since.0.saturating_add(grace).unwrap_or(Timestamp::MAX))
        .min();
    let mut next = resync;
    if let Some(at) = expiry {
        let left = Duration::try_from(at.duration_since(opts.now)).unwrap_or_default();
        // The planner compares whole seconds; a little slack makes the next plan see the expiry.
        next = next.min(left + Duration::from_millis(1100));
    }
    if terminating {
        next = next.min(Duration::from_secs(2));
    }
    next
}

/// Releases the workload's allocations and removes its Pods.
async fn cleanup(w: Arc<WasmWorkload>, ctx: &Context) -> Result<Action> {
    let key = w.key();
    let api: Api<Device> = Api::all(ctx.client.clone());
    ctx.devices_synced().await?;
    let mut devices: Vec<Device> = ctx.devices.state().iter().map(|d| (**d).clone()).collect();
    let mut released = false;
    for _ in 0..MAX_ALLOCATION_ATTEMPTS {
        match allocations::sync(&api, &mut devices, &key, &[]).await? {
            Synced::Done(_) => {
                released = true;
                break;
            }
            Synced::Conflict(device) => {
                ctx.metrics.conflict();
                let fresh = api
                    .get_opt(&device)
                    .await
                    .map_err(Error::kube("reading device", device.clone()))?;
                devices.retain(|d| d.metadata.name.as_ref() != Some(&device));
                devices.extend(fresh);
            }
        }
    }
    if !released {
        return Err(Error::AllocationConflict {
            device: "(several)".into(),
            attempts: MAX_ALLOCATION_ATTEMPTS,
        });
    }
    let ns = w
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    Box::pin(sync_pods(ctx, &w, &ns, &[])).await?;
    ctx.metrics.forget(&key);
    ctx.publish(
        &w,
        EventType::Normal,
        "Released",
        "Cleanup",
        "device allocations released".into(),
    )
    .await;
    tracing::info!("released allocations and removed Pods");
    Ok(Action::await_change())
}

/// A store's readiness that any number of tasks can await at once; `false` if its writer was
/// dropped first.
type ReadyGate = Shared<BoxFuture<'static, bool>>;

/// Wraps [`Store::wait_until_ready`] so it has exactly one waiter.
///
/// kube-runtime 5.0 backs that readiness with a `futures` oneshot receiver, which keeps only the
/// last waker that polled it: of several tasks waiting at once, only the last one to poll is woken
/// when the initial list lands, and the others wait forever. Reconciles that started before the
/// device cache was ready hung that way, and a hung reconcile holds its workload's slot in the
/// controller, so the workload was never reconciled again. [`Shared`] wakes every waiter.
fn ready_gate<K>(store: Store<K>) -> ReadyGate
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    async move { store.wait_until_ready().await.is_ok() }
        .boxed()
        .shared()
}

/// Logs and counts what the controller reports. A failed reconcile was already counted and logged
/// by [`error_policy`]; anything else is a reconcile that did not run.
fn report<E: std::fmt::Display, Q: std::fmt::Display>(
    metrics: &Metrics,
    result: std::result::Result<
        (ObjectRef<WasmWorkload>, Action),
        kube::runtime::controller::Error<E, Q>,
    >,
) {
    use kube::runtime::controller::Error as Ce;
    match result {
        Ok((object, _)) => tracing::trace!(workload = %object.name, "reconciled"),
        Err(Ce::ReconcilerFailed(e, _)) => tracing::debug!(error = %e, "reconcile failed"),
        // A trigger for a workload no longer in the cache: normal once it is deleted (its Pods'
        // deletions still point at it), so only counted.
        Err(Ce::ObjectNotFound(object)) => {
            metrics.dropped_reconcile("object_not_found");
            tracing::debug!(object = %object, "reconcile dropped: the workload is not in the cache");
        }
        Err(e @ Ce::QueueError(_)) => {
            metrics.dropped_reconcile("queue_error");
            tracing::warn!(error = %e, "a reconcile trigger failed");
        }
        Err(e) => {
            metrics.dropped_reconcile("runner_error");
            tracing::warn!(error = %e, "the controller could not run reconciles");
        }
    }
}

/// Runs the controller until a termination signal: watches WasmWorkloads, their Pods, and Devices.
pub async fn run(client: Client, config: Config, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let workloads: Api<WasmWorkload> = Api::all(client.clone());
    workloads
        .list(&ListParams::default().limit(1))
        .await
        .context("listing WasmWorkloads (is the CRD installed? kubectl apply -f crds/)")?;
    Api::<Device>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("listing Devices (is the CRD installed? kubectl apply -f crds/)")?;

    let (device_store, device_writer) = reflector::store();
    // Every device change may change any workload's plan (capacity is shared), and the store is
    // updated before the trigger fires, so the reconcile sees the change.
    let device_changes = reflector::reflector(
        device_writer,
        watcher(
            Api::<Device>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|event| async move {
        match event {
            Ok(device) => {
                tracing::debug!(device = %device.name_any(), "device changed");
                Some(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "device watch failed; retrying");
                None
            }
        }
    });

    // The controller's own workload cache, built here so its initial list is observed without a
    // second waiter on the store's readiness (the controller's runner already waits on it; see
    // `ready_gate` for why two waiters are one too many).
    let (workload_store, workload_writer) = reflector::store();
    let (listed_tx, listed_rx) = oneshot::channel::<()>();
    let mut listed_tx = Some(listed_tx);
    let workload_changes = watcher(workloads, watcher::Config::default())
        .default_backoff()
        .reflect(workload_writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone))
                && let Some(tx) = listed_tx.take()
            {
                let _ = tx.send(());
            }
        })
        .applied_objects();
    let controller = Controller::for_stream(workload_changes, workload_store.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        workload_store,
        device_store,
        metrics.clone(),
        config,
    ));
    let readiness = {
        let (devices_ready, metrics) = (ctx.devices_ready.clone(), metrics.clone());
        async move {
            if listed_rx.await.is_ok() && devices_ready.await {
                metrics.set_ready(true);
                tracing::info!("caches synced; ready");
            }
        }
    };
    let requeues = ctx
        .requeues()
        .context("the requeue channel is taken once")?;
    let reconciling = controller
        .owns(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(LABEL_WORKLOAD),
        )
        .reconcile_all_on(device_changes)
        .reconcile_on(requeues)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(move |result| {
            report(&metrics, result);
            std::future::ready(())
        });
    tokio::join!(readiness, reconciling);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewasm_api::{DeviceSpec, DeviceStatus, Grants};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_the_device_cache_wakes_when_it_is_listed() {
        let (store, mut writer) = reflector::store::<Device>();
        let gate = ready_gate(store);
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(gate.clone())).collect();
        settle().await;
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for waiter in waiters {
            let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was never woken");
            assert!(woken.expect("waiter task"));
        }
    }

    #[test]
    fn requeues_when_the_first_grace_period_ends() {
        let now = Timestamp::from_second(1_800_000_100).unwrap();
        let opts = PlanOptions {
            now,
            grace: Duration::from_mins(1),
        };
        let mut d = Device::new(
            "d",
            DeviceSpec {
                handler: "static".into(),
                ..DeviceSpec::default()
            },
        );
        d.status = Some(DeviceStatus {
            conditions: vec![Condition {
                type_: "Present".into(),
                status: "False".into(),
                reason: "Gone".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::from_second(1_800_000_080).unwrap()),
            }],
            ..DeviceStatus::default()
        });
        let p = Placement {
            id: "d".into(),
            workload: "ns/w".into(),
            devices: vec!["d".into()],
            node: None,
            device_absent: true,
            grants: Grants::default(),
            env: vec![],
        };
        let resync = Duration::from_mins(5);
        let next = next_check(
            std::slice::from_ref(&p),
            std::slice::from_ref(&d),
            opts,
            resync,
            false,
        );
        assert_eq!(next, Duration::from_secs(40) + Duration::from_millis(1100));
        assert_eq!(next_check(&[], &[d], opts, resync, false), resync);
        assert_eq!(
            next_check(&[], &[], opts, resync, true),
            Duration::from_secs(2)
        );
    }
}
