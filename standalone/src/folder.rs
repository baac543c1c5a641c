//! Reading the manifest folder: every top-level `*.yaml`/`*.yml` file holds WasmWorkloads and Devices.
//!
//! A file that does not parse is reported by file and line and its last good content is kept, so a
//! half-saved edit never stops instances that were fine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgewasm_api::manifest::{Manifest, ManifestError, parse_manifests};
use edgewasm_api::{Device, WasmWorkload};

/// A workload and the folder its relative paths are resolved against.
#[derive(Clone, Debug)]
pub struct SourcedWorkload {
    pub workload: WasmWorkload,
    pub file: PathBuf,
}

/// The folder's objects, with the last good content of every file.
#[derive(Debug, Default)]
pub struct Folder {
    dir: PathBuf,
    skip: Vec<PathBuf>,
    files: BTreeMap<PathBuf, Vec<Manifest>>,
}

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reload {
    /// Files that do not parse (their previous content stays in use).
    pub errors: Vec<ManifestError>,
    /// Whether any file's objects changed.
    pub changed: bool,
}

impl Folder {
    /// A folder whose files in `skip` (settings, agent config) are not manifests.
    pub fn new(dir: PathBuf, skip: Vec<PathBuf>) -> Self {
        Self {
            dir,
            skip,
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every manifest file again.
    pub fn reload(&mut self) -> Reload {
        let mut out = Reload::default();
        let mut seen = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                out.errors.push(ManifestError {
                    file: self.dir.display().to_string(),
                    line: 0,
                    message: format!("cannot read the manifest folder: {e}"),
                });
                return out;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .filter(|p| !self.skip.iter().any(|s| same_file(s, p)))
            .collect();
        paths.sort();
        for path in paths {
            let shown = display_path(&path);
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| ManifestError {
                    file: shown.clone(),
                    line: 0,
                    message: e.to_string(),
                })
                .and_then(|text| parse_manifests(&shown, &text));
            seen.push(path.clone());
            match parsed {
                Ok(objects) => {
                    let old = self.files.insert(path, objects.clone());
                    if old.is_none_or(|old| !same_objects(&old, &objects)) {
                        out.changed = true;
                    }
                }
                Err(e) => out.errors.push(e),
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        out.changed |= self.files.len() != before;
        out
    }

    /// The workloads (first definition wins for a duplicate `namespace/name`) and the duplicates'
    /// messages.
    pub fn workloads(&self) -> (Vec<SourcedWorkload>, Vec<String>) {
        let mut out: Vec<SourcedWorkload> = Vec::new();
        let mut problems = Vec::new();
        for (file, objects) in &self.files {
            for object in objects {
                let Manifest::Workload(w) = object else {
                    continue;
                };
                let mut w = (**w).clone();
                w.metadata.namespace.get_or_insert_with(|| "default".into());
                if let Some(first) = out.iter().find(|s| s.workload.key() == w.key()) {
                    problems.push(format!(
                        "{}: WasmWorkload {} is already defined in {}; ignored",
                        display_path(file),
                        w.key(),
                        display_path(&first.file)
                    ));
                    continue;
                }
                out.push(SourcedWorkload {
                    workload: w,
                    file: file.clone(),
                });
            }
        }
        (out, problems)
    }

    /// The Device objects written by hand in the folder.
    pub fn devices(&self) -> Vec<Device> {
        self.files
            .values()
            .flatten()
            .filter_map(|o| match o {
                Manifest::Device(d) => Some((**d).clone()),
                Manifest::Workload(_) => None,
            })
            .collect()
    }
}

fn same_objects(a: &[Manifest], b: &[Manifest]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Manifest::Workload(x), Manifest::Workload(y)) => {
                x.metadata == y.metadata && x.spec == y.spec
            }
            (Manifest::Device(x), Manifest::Device(y)) => {
                x.metadata == y.metadata && x.spec == y.spec
            }
            _ => false,
        })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A path as the user gave it, relative to the working directory when it lies below it.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOAD: &str = "apiVersion: edgewasm.io/v1alpha1\nkind: WasmWorkload\nmetadata: {name: w}\nspec:\n  image: w.wasm\n  deviceSelector: {handler: static}\n";

    #[test]
    fn keeps_last_good_content_and_reports_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.yaml"), WORKLOAD).unwrap();
        std::fs::write(dir.path().join("standalone.yaml"), "simulate: []\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        let mut folder = Folder::new(dir.path().into(), vec![dir.path().join("standalone.yaml")]);
        let r = folder.reload();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.changed);
        assert_eq!(folder.workloads().0.len(), 1);
        assert_eq!(folder.workloads().0[0].workload.key(), "default/w");
        assert!(!folder.reload().changed);

        std::fs::write(
            dir.path().join("w.yaml"),
            WORKLOAD.replace("image: w.wasm", "image: ["),
        )
        .unwrap();
        let r = folder.reload();
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].to_string().contains("w.yaml:"),
            "{}",
            r.errors[0]
        );
        assert_eq!(folder.workloads().0.len(), 1, "last good content is kept");

        std::fs::write(dir.path().join("dup.yaml"), WORKLOAD).unwrap();
        std::fs::write(dir.path().join("w.yaml"), WORKLOAD).unwrap();
        folder.reload();
        let (workloads, problems) = folder.workloads();
        assert_eq!(workloads.len(), 1);
        assert!(problems[0].contains("already defined"), "{problems:?}");

        std::fs::remove_file(dir.path().join("dup.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("w.yaml")).unwrap();
        assert!(folder.reload().changed);
        assert!(folder.workloads().0.is_empty());
    }
}
