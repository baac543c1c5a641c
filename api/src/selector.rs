//! Which devices a workload runs next to: handler, labels, properties and an optional CEL expression.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::device::Device;

/// Selects devices. All given parts must match (AND); an empty selector matches every approved device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    /// Only devices found by this handler (`udev`, `onvif`, `opcua`, `static`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Device labels that must all be equal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Label requirements, as in a Kubernetes label selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
    /// Device properties that must all be equal (`vendorId: "046d"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// A CEL expression over `device` (`name`, `handler`, `nodes`, `labels`, `properties`) that must be
    /// true, e.g. `device.properties.model.startsWith("M30")`. A property the device lacks makes the
    /// expression false for that device rather than an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub expression: Option<String>,
}

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
     "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"}
]))]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operator of a [`LabelRequirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a selector cannot be used. Each makes the workload `InvalidSpec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("deviceSelector.expression does not parse: {0}")]
    InvalidExpression(String),
    #[error("deviceSelector.expression failed on device {device}: {message}")]
    Evaluation { device: String, message: String },
    #[error("deviceSelector.expression must evaluate to a bool, got {got} on device {device}")]
    NotBool { device: String, got: String },
    #[error("deviceSelector.matchExpressions[{index}]: {message}")]
    InvalidRequirement { index: usize, message: String },
}

/// A selector checked and compiled once, then matched against many devices.
pub struct CompiledSelector<'a> {
    selector: &'a DeviceSelector,
    program: Option<cel::Program>,
}

impl std::fmt::Debug for CompiledSelector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSelector")
            .field("selector", self.selector)
            .finish_non_exhaustive()
    }
}

/// The view of a device a CEL expression sees.
#[derive(Serialize)]
struct CelDevice<'a> {
    name: &'a str,
    handler: &'a str,
    nodes: &'a [String],
    labels: BTreeMap<String, String>,
    properties: &'a BTreeMap<String, String>,
}

impl DeviceSelector {
    /// Validates the selector and compiles its expression.
    pub fn compile(&self) -> Result<CompiledSelector<'_>, SelectorError> {
        for (index, req) in self.match_expressions.iter().enumerate() {
            let needs_values = matches!(req.operator, LabelOperator::In | LabelOperator::NotIn);
            if needs_values == req.values.is_empty() {
                return Err(SelectorError::InvalidRequirement {
                    index,
                    message: format!(
                        "operator {:?} {} values",
                        req.operator,
                        if needs_values { "needs" } else { "takes no" }
                    ),
                });
            }
        }
        let program = match &self.expression {
            None => None,
            Some(src) => Some(
                std::panic::catch_unwind(|| cel::Program::compile(src))
                    .map_err(|_| {
                        SelectorError::InvalidExpression("the CEL parser failed on it".into())
                    })?
                    .map_err(|e| SelectorError::InvalidExpression(e.to_string()))?,
            ),
        };
        Ok(CompiledSelector {
            selector: self,
            program,
        })
    }
}

impl CompiledSelector<'_> {
    /// Whether the device matches. Approval and presence are the planner's business, not the selector's.
    pub fn matches(&self, device: &Device) -> Result<bool, SelectorError> {
        let s = self.selector;
        let name = device.metadata.name.as_deref().unwrap_or_default();
        let labels = device.metadata.labels.clone().unwrap_or_default();
        if s.handler
            .as_ref()
            .is_some_and(|h| *h != device.spec.handler)
            || !s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            || !s
                .properties
                .iter()
                .all(|(k, v)| device.spec.properties.get(k) == Some(v))
            || !s
                .match_expressions
                .iter()
                .all(|r| requirement_holds(r, &labels))
        {
            return Ok(false);
        }
        let Some(program) = &self.program else {
            return Ok(true);
        };
        let view = CelDevice {
            name,
            handler: &device.spec.handler,
            nodes: &device.spec.nodes,
            labels,
            properties: &device.spec.properties,
        };
        let mut ctx = cel::Context::default();
        ctx.add_variable("device", &view)
            .map_err(|e| SelectorError::Evaluation {
                device: name.to_owned(),
                message: e.to_string(),
            })?;
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(SelectorError::NotBool {
                device: name.to_owned(),
                got: format!("{other:?}"),
            }),
            // A device without the property an expression asks for simply does not match.
            Err(cel::ExecutionError::NoSuchKey(_)) => Ok(false),
            Err(e) => Err(SelectorError::Evaluation {
                device: name.to_owned(),
                message: e.to_string(),
            }),
        }
    }
}

fn requirement_holds(req: &LabelRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    match req.operator {
        LabelOperator::In => value.is_some_and(|v| req.values.contains(v)),
        LabelOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
        LabelOperator::Exists => value.is_some(),
        LabelOperator::DoesNotExist => value.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceSpec;

    fn device(handler: &str, labels: &[(&str, &str)], props: &[(&str, &str)]) -> Device {
        let mut d = Device::new(
            "cam-1",
            DeviceSpec {
                handler: handler.into(),
                nodes: vec!["node-a".into()],
                properties: props
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                capacity: 1,
                approved: true,
            },
        );
        d.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        d
    }

    #[test]
    fn selector_table() {
        let cam = device(
            "onvif",
            &[("site", "hall-1")],
            &[("model", "M3045"), ("vendor", "axis")],
        );
        let cases: Vec<(&str, DeviceSelector, bool)> = vec![
            ("empty matches", DeviceSelector::default(), true),
            (
                "handler",
                DeviceSelector {
                    handler: Some("onvif".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                "other handler",
                DeviceSelector {
                    handler: Some("udev".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                "labels",
                DeviceSelector {
                    match_labels: [("site".into(), "hall-1".into())].into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "label mismatch",
                DeviceSelector {
                    match_labels: [("site".into(), "hall-2".into())].into(),
                    ..Default::default()
                },
                false,
            ),
            (
                "properties",
                DeviceSelector {
                    properties: [("vendor".into(), "axis".into())].into(),
                    ..Default::default()
                },
                true,
            ),
            (
                "NotIn",
                DeviceSelector {
                    match_expressions: vec![LabelRequirement {
                        key: "site".into(),
                        operator: LabelOperator::NotIn,
                        values: vec!["hall-1".into()],
                    }],
                    ..Default::default()
                },
                false,
            ),
            (
                "DoesNotExist",
                DeviceSelector {
                    match_expressions: vec![LabelRequirement {
                        key: "zone".into(),
                        operator: LabelOperator::DoesNotExist,
                        values: vec![],
                    }],
                    ..Default::default()
                },
                true,
            ),
            (
                "cel true",
                DeviceSelector {
                    expression: Some(
                        "device.properties.model.startsWith('M30') && device.handler == 'onvif'"
                            .into(),
                    ),
                    ..Default::default()
                },
                true,
            ),
            (
                "cel false",
                DeviceSelector {
                    expression: Some("'node-b' in device.nodes".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                "cel missing property is no match",
                DeviceSelector {
                    expression: Some("device.properties.serial == 'x'".into()),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (name, sel, want) in cases {
            assert_eq!(
                sel.compile().unwrap().matches(&cam).unwrap(),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn invalid_selectors_are_clear_errors() {
        let bad = DeviceSelector {
            expression: Some("device.properties.model ==".into()),
            ..Default::default()
        };
        assert!(matches!(
            bad.compile(),
            Err(SelectorError::InvalidExpression(_))
        ));
        let bad = DeviceSelector {
            match_expressions: vec![LabelRequirement {
                key: "a".into(),
                operator: LabelOperator::In,
                values: vec![],
            }],
            ..Default::default()
        };
        let err = bad.compile().unwrap_err().to_string();
        assert!(err.contains("matchExpressions[0]"), "{err}");
        let not_bool = DeviceSelector {
            expression: Some("device.name".into()),
            ..Default::default()
        };
        let cam = device("onvif", &[], &[]);
        assert!(matches!(
            not_bool.compile().unwrap().matches(&cam),
            Err(SelectorError::NotBool { .. })
        ));
    }
}
