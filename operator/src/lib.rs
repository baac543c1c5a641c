//! The edgewasm operator: reconciles WasmWorkloads against Devices into pinned Pods.
//!
//! [`controller`] runs the reconcile loop; [`pod`] builds the Pod for one placement; [`status`] turns a
//! plan and the observed Pods into conditions; [`allocations`] keeps the Device ledger; [`metrics`]
//! serves `/metrics`, `/healthz` and `/readyz`; [`leader`] holds an optional coordination Lease.

pub mod allocations;
pub mod config;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod pod;
pub mod status;

pub use config::Config;
pub use controller::{Context, FINALIZER, error_policy, reconcile, run};
pub use error::{Error, Result};
pub use metrics::Metrics;

/// Field manager for every write the operator makes (server-side apply and patches).
pub const FIELD_MANAGER: &str = "edgewasm-operator";
