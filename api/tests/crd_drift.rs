//! The committed `crds/` must be exactly what the types generate.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, want) in edgewasm_api::crd_files() {
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p edgewasm-api --bin crdgen`",
                path.display()
            )
        });
        assert!(
            have == want,
            "{} is stale; run `cargo run -p edgewasm-api --bin crdgen`",
            path.display()
        );
    }
}
