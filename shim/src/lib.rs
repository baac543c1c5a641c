//! containerd-shim-edgewasm-v1: a containerd runtime that runs Pods' Wasm components in-process
