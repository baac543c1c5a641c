//! Operator settings that shape the Pods and the placement policy (the CLI flags minus the plumbing).

use std::time::Duration;

/// What the reconciler needs to know besides the cluster state.
#[derive(Clone, Debug)]
pub struct Config {
    /// `runtimeClassName` of every Pod.
    pub runtime_class: String,
    /// How long a placement outlives its device's absence.
    pub device_grace_period: Duration,
    /// Requeue interval when nothing is pending (drift check).
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime_class: "edgewasm".into(),
            device_grace_period: Duration::from_mins(1),
            resync: Duration::from_mins(5),
        }
    }
}
