//! The wasmtime host shared by the shim and standalone mode: runs a component with only what it was granted
