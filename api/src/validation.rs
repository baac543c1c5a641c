//! Checks a `WasmWorkload` spec beyond what its schema can express, with messages a user can act on.

use crate::selector::SelectorError;
use crate::workload::{PlacementMode, Resources, WasmWorkload};

/// Why a workload cannot be planned. Shown as `InvalidSpec` in its status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.image is empty")]
    EmptyImage,
    #[error("spec.deviceSelector is required for placement mode {0:?}")]
    SelectorRequired(PlacementMode),
    #[error("spec.placement.replicas is required for placement mode count")]
    ReplicasRequired,
    #[error("spec.placement.replicas is only valid for placement mode count")]
    ReplicasNotAllowed,
    #[error(transparent)]
    Selector(SelectorError),
    #[error("spec.resources.{field}: {message}")]
    Quantity {
        field: &'static str,
        message: String,
    },
    #[error(
        "spec.deviceCredentials.secretName {0:?} is not a Secret name (lowercase letters, digits, '-' and '.')"
    )]
    SecretName(String),
}

/// Validates a workload's spec; the planner skips a workload that fails.
pub fn validate(w: &WasmWorkload) -> Result<(), SpecError> {
    let spec = &w.spec;
    if spec.image.trim().is_empty() {
        return Err(SpecError::EmptyImage);
    }
    match (spec.placement.mode, spec.placement.replicas) {
        (PlacementMode::Count, None) => return Err(SpecError::ReplicasRequired),
        (PlacementMode::PerDevice | PlacementMode::PerNode, Some(_)) => {
            return Err(SpecError::ReplicasNotAllowed);
        }
        _ => {}
    }
    match &spec.device_selector {
        None if spec.placement.mode != PlacementMode::Count => {
            return Err(SpecError::SelectorRequired(spec.placement.mode));
        }
        Some(sel) => {
            sel.compile().map_err(SpecError::Selector)?;
        }
        None => {}
    }
    if let Some(r) = &spec.resources {
        r.memory_bytes()?;
        r.cpu_millis()?;
    }
    if let Some(c) = &spec.device_credentials
        && !is_dns_subdomain(&c.secret_name)
    {
        // Standalone mode turns the name into a folder: no separators, no `..`.
        return Err(SpecError::SecretName(c.secret_name.clone()));
    }
    Ok(())
}

fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=253).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

impl Resources {
    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> Result<Option<u64>, SpecError> {
        self.memory
            .as_deref()
            .map(|q| parse_quantity(q, 1).map(|v| v as u64))
            .transpose()
            .map_err(|message| SpecError::Quantity {
                field: "memory",
                message,
            })
    }

    /// The CPU limit in millicores (`500m` → 500, `2` → 2000).
    pub fn cpu_millis(&self) -> Result<Option<u64>, SpecError> {
        self.cpu
            .as_deref()
            .map(|q| parse_quantity(q, 1000).map(|v| v.ceil() as u64))
            .transpose()
            .map_err(|message| SpecError::Quantity {
                field: "cpu",
                message,
            })
    }
}

/// Parses a Kubernetes quantity (`64Mi`, `1.5G`, `500m`, `2`), scaled by `unit` (1000 for millicores).
pub fn parse_quantity(q: &str, unit: u64) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity such as 64Mi or 500m"))?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown unit {other:?} in {q:?}")),
    };
    Ok(value * factor * unit as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_cannot_leave_the_secrets_folder() {
        let mut w = WasmWorkload::new(
            "w",
            crate::WasmWorkloadSpec {
                image: "w.wasm".into(),
                placement: crate::PlacementSpec {
                    mode: PlacementMode::Count,
                    replicas: Some(1),
                },
                ..Default::default()
            },
        );
        for good in ["cam", "cam-login.v2"] {
            w.spec.device_credentials = Some(crate::DeviceCredentials {
                secret_name: good.into(),
            });
            assert!(validate(&w).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", "Cam", "a..b", "-a"] {
            w.spec.device_credentials = Some(crate::DeviceCredentials {
                secret_name: bad.into(),
            });
            assert!(
                matches!(validate(&w), Err(SpecError::SecretName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantities() {
        let r = Resources {
            memory: Some("64Mi".into()),
            cpu: Some("250m".into()),
            timeout_seconds: None,
        };
        assert_eq!(r.memory_bytes().unwrap(), Some(64 * 1024 * 1024));
        assert_eq!(r.cpu_millis().unwrap(), Some(250));
        let r = Resources {
            memory: Some("1G".into()),
            cpu: Some("2".into()),
            timeout_seconds: None,
        };
        assert_eq!(r.memory_bytes().unwrap(), Some(1_000_000_000));
        assert_eq!(r.cpu_millis().unwrap(), Some(2000));
        let bad = Resources {
            memory: Some("64 bananas".into()),
            ..Default::default()
        };
        assert!(
            bad.memory_bytes()
                .unwrap_err()
                .to_string()
                .contains("spec.resources.memory")
        );
    }
}
