//! Reading the same YAML a user would `kubectl apply`: multi-document files of WasmWorkloads and Devices.

use serde::Deserialize;

use crate::device::Device;
use crate::workload::WasmWorkload;

/// One object read from a manifest.
#[derive(Clone, Debug)]
pub enum Manifest {
    Workload(Box<WasmWorkload>),
    Device(Box<Device>),
}

/// A manifest that cannot be used, located by file and line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses every document of a YAML file. Documents of other kinds are an error: a typo in `kind`
/// should not be silently ignored.
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    let err = |line: usize, message: String| ManifestError {
        file: file.to_owned(),
        line,
        message,
    };
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(e.location().map_or(1, |l| l.line()), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let line = document_line(text, index);
        let head: Head =
            serde_yaml::from_value(value.clone()).map_err(|e| err(line, e.to_string()))?;
        if head.api_version != "edgewasm.io/v1alpha1" {
            return Err(err(
                line,
                format!(
                    "apiVersion {:?} is not edgewasm.io/v1alpha1",
                    head.api_version
                ),
            ));
        }
        let object = match head.kind.as_str() {
            "WasmWorkload" => {
                serde_yaml::from_value(value).map(|w| Manifest::Workload(Box::new(w)))
            }
            "Device" => serde_yaml::from_value(value).map(|d| Manifest::Device(Box::new(d))),
            other => {
                return Err(err(
                    line,
                    format!("kind {other:?} is not WasmWorkload or Device"),
                ));
            }
        }
        .map_err(|e| err(line, format!("{} {}", head.kind, e)))?;
        out.push(object);
    }
    Ok(out)
}

/// The 1-based line where the `index`-th document starts.
fn document_line(text: &str, index: usize) -> usize {
    let mut seen = 0;
    let mut started = false;
    for (n, l) in text.lines().enumerate() {
        if l.starts_with("---") {
            if started {
                seen += 1;
            }
            started = true;
            if seen == index && index > 0 {
                return n + 2;
            }
            continue;
        }
        if !started && !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            started = true;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_documents_and_locates_errors() {
        let text = "apiVersion: edgewasm.io/v1alpha1\nkind: Device\nmetadata: {name: d}\nspec: {handler: static}\n---\napiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata: {name: w}\nspec:\n  image: x.wasm\n  placement: {mode: sideways}\n";
        let err = parse_manifests("a.yaml", text).unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        assert!(
            err.to_string().starts_with("a.yaml:6: WasmWorkload"),
            "{err}"
        );
        assert!(err.message.contains("sideways"), "{err}");
        let ok = parse_manifests("a.yaml", &text.replace("sideways", "perNode")).unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_manifests("b.yaml", "apiVersion: v1\nkind: Pod\n").unwrap_err();
        assert!(err.message.contains("apiVersion"), "{err}");
    }
}
