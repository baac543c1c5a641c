//! Writes the CustomResourceDefinitions generated from the Rust types: `crdgen [DIR]` (default `crds`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".into()));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in edgewasm_api::crd_files() {
        std::fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}
