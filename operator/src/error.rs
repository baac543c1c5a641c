//! The operator's one error type: what failed, on which object.

/// Everything a reconcile can fail with; each variant names the object it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("device {device}: allocation still conflicts after {attempts} attempts")]
    AllocationConflict { device: String, attempts: u32 },
    #[error("finalizer on {workload}: {message}")]
    Finalizer { workload: String, message: String },
    #[error("object without {0}")]
    MissingField(&'static str),
    #[error("reconciling {workload} did not finish within {after:?}")]
    Timeout {
        workload: String,
        after: std::time::Duration,
    },
}

impl Error {
    /// Wraps a kube error with what was being done to which object.
    pub fn kube(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.into();
        move |source| Self::Kube {
            action,
            object,
            source,
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { action, .. } => action,
            Self::AllocationConflict { .. } => "allocation conflict",
            Self::Finalizer { .. } => "finalizer",
            Self::MissingField(_) => "missing field",
            Self::Timeout { .. } => "timeout",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an apiserver error is an optimistic-concurrency conflict (HTTP 409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether an apiserver error says the object does not exist (HTTP 404).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
