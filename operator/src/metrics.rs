//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
}

/// The operator's metrics, plus its readiness.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    placements: Family<WorkloadLabels, Gauge>,
    waiting: Family<WorkloadLabels, Gauge>,
    conflicts: Counter,
    dropped: Family<ErrorLabels, Counter>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edgewasm_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let placements = Family::<WorkloadLabels, Gauge>::default();
        let waiting = Family::<WorkloadLabels, Gauge>::default();
        let conflicts = Counter::default();
        let dropped = Family::<ErrorLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            duration.clone(),
        );
        registry.register(
            "placements",
            "Placements holding their device, per workload",
            placements.clone(),
        );
        registry.register(
            "waiting_placements",
            "Placements waiting for a device, per workload",
            waiting.clone(),
        );
        registry.register(
            "allocation_conflicts",
            "Device allocation writes that hit a conflict",
            conflicts.clone(),
        );
        registry.register(
            "dropped_reconciles",
            "Reconcile triggers the controller could not act on, by reason",
            dropped.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            placements,
            waiting,
            conflicts,
            dropped,
            ready: AtomicBool::new(false),
        }
    }
}

/// Observes one reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    pub fn error(&self, label: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    /// Counts a reconcile trigger that never reached [`crate::reconcile`].
    pub fn dropped_reconcile(&self, reason: &str) {
        self.dropped
            .get_or_create(&ErrorLabels {
                error: reason.to_owned(),
            })
            .inc();
    }

    pub fn placements(&self, workload: &str, placed: usize, waiting: usize) {
        let labels = WorkloadLabels {
            workload: workload.to_owned(),
        };
        self.placements.get_or_create(&labels).set(placed as i64);
        self.waiting.get_or_create(&labels).set(waiting as i64);
    }

    pub fn forget(&self, workload: &str) {
        let labels = WorkloadLabels {
            workload: workload.to_owned(),
        };
        self.placements.remove(&labels);
        self.waiting.remove(&labels);
    }

    /// Readiness: caches synced (and, with leader election, the lease held).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// The HTTP routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(metrics)
}

/// Serves [`router`] on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding metrics address {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics() {
        let m = Metrics::default();
        drop(m.reconcile());
        m.error("apply pod");
        m.placements("ns/w", 2, 1);
        let text = m.encode();
        assert!(
            text.contains("edgewasm_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("edgewasm_operator_reconcile_errors_total{error=\"apply pod\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgewasm_operator_placements{workload=\"ns/w\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("edgewasm_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
