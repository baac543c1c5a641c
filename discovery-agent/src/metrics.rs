//! Process-wide Prometheus metrics of the agent: events per handler, rejected input, API writes.
//!
//! Handlers count from deep inside parsers, so the metrics live in one process-wide registry rather
//! than being threaded through every function.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerReason {
    handler: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerKind {
    handler: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

struct Metrics {
    registry: Registry,
    bad_input: Family<HandlerReason, Counter>,
    events: Family<HandlerKind, Counter>,
    api_writes: Family<Outcome, Counter>,
    probe_failures: Family<HandlerReason, Counter>,
    devices: Gauge,
    pending: Gauge,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("edgewasm_agent");
        let bad_input = Family::default();
        registry.register(
            "bad_input",
            "Rejected input (malformed packets, unreadable sysfs entries, bad files) by handler and reason",
            bad_input.clone(),
        );
        let events = Family::default();
        registry.register("events", "Device events reported by handlers", events.clone());
        let api_writes = Family::default();
        registry.register("api_writes", "Writes to the Kubernetes API by outcome", api_writes.clone());
        let probe_failures = Family::default();
        registry.register(
            "probe_failures",
            "Requests to devices that failed (unreachable, timed out, refused credentials) by handler and reason",
            probe_failures.clone(),
        );
        let devices = Gauge::default();
        registry.register("devices", "Devices currently seen from this node", devices.clone());
        let pending = Gauge::default();
        registry.register("pending_devices", "Devices whose latest state is not yet written to the API", pending.clone());
        Metrics { registry, bad_input, events, api_writes, probe_failures, devices, pending }
    })
}

/// Count input a handler rejected.
pub fn bad_input(handler: &str, reason: &str) {
    metrics()
        .bad_input
        .get_or_create(&HandlerReason {
            handler: handler.into(),
            reason: reason.into(),
        })
        .inc();
}

/// Count a request to a device that failed.
pub fn probe_failure(handler: &str, reason: &str) {
    metrics()
        .probe_failures
        .get_or_create(&HandlerReason {
            handler: handler.into(),
            reason: reason.into(),
        })
        .inc();
}

/// The current value of the probe-failure counter (for tests).
pub fn probe_failure_count(handler: &str, reason: &str) -> u64 {
    metrics()
        .probe_failures
        .get_or_create(&HandlerReason {
            handler: handler.into(),
            reason: reason.into(),
        })
        .get()
}

/// Count an event from a handler (`seen`, `gone`, `resync`).
pub fn event(handler: &str, kind: &str) {
    metrics()
        .events
        .get_or_create(&HandlerKind {
            handler: handler.into(),
            kind: kind.into(),
        })
        .inc();
}

/// Count an API write (`ok`, `error`).
pub fn api_write(outcome: &str) {
    metrics()
        .api_writes
        .get_or_create(&Outcome {
            outcome: outcome.into(),
        })
        .inc();
}

/// The current value of the API-write counter (for tests).
pub fn api_write_count(outcome: &str) -> u64 {
    metrics()
        .api_writes
        .get_or_create(&Outcome {
            outcome: outcome.into(),
        })
        .get()
}

/// Set the number of devices this node sees and how many are waiting to be written.
pub fn set_devices(seen: usize, pending: usize) {
    metrics().devices.set(seen as i64);
    metrics().pending.set(pending as i64);
}

/// The current value of the bad-input counter (for tests).
pub fn bad_input_count(handler: &str, reason: &str) -> u64 {
    metrics()
        .bad_input
        .get_or_create(&HandlerReason {
            handler: handler.into(),
            reason: reason.into(),
        })
        .get()
}

/// All metrics in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics().registry)
        .expect("writing to a String cannot fail");
    out
}
