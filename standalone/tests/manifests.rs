//! The sample manifests in `examples/` stay valid: they parse as the apiserver would read them and pass
//! the checks the planner makes.

use std::path::{Path, PathBuf};

use edgewasm_api::manifest::{Manifest, parse_manifests};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn workloads_in(dir: &Path, skip: &[&str]) -> Vec<(String, edgewasm_api::WasmWorkload)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !skip.contains(&p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.display().to_string();
        for m in parse_manifests(&shown, &text).unwrap_or_else(|e| panic!("{e}")) {
            if let Manifest::Workload(w) = m {
                out.push((shown.clone(), *w));
            }
        }
    }
    out
}

#[test]
fn kubectl_examples_parse_and_validate() {
    let workloads = workloads_in(&repo().join("examples/manifests"), &[]);
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|(_, w)| w.metadata.name.as_deref())
        .collect();
    for expected in [
        "usb-camera-sampler",
        "onvif-camera-probe",
        "temperature-logger",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for (file, w) in &workloads {
        edgewasm_api::validate(w).unwrap_or_else(|e| panic!("{file}: {}: {e}", w.key()));
    }
}

#[test]
fn standalone_demo_parses_and_validates() {
    let dir = repo().join("examples/standalone");
    let workloads = workloads_in(&dir, &["standalone.yaml", "agent.yaml", "devices.yaml"]);
    assert_eq!(workloads.len(), 3);
    for (file, w) in &workloads {
        edgewasm_api::validate(w).unwrap_or_else(|e| panic!("{file}: {}: {e}", w.key()));
    }
    edgewasm_discovery_agent::AgentConfig::load(dir.join("agent.yaml")).unwrap();
    assert_eq!(
        edgewasm_discovery_agent::static_file::load(&dir.join("devices.yaml"))
            .unwrap()
            .len(),
        2
    );
    edgewasm_standalone::settings::Settings::load(&dir).unwrap();
}
