//! Standalone mode: discovery, placement and the runtime on one machine without Kubernetes.
//!
//! `edgewasm run --manifests DIR` reads the same WasmWorkload (and optional Device) YAML a user would
//! `kubectl apply`, runs the discovery handlers the folder's agent config enables, plans with the same
//! [`edgewasm_api::plan`] as the operator and runs every placement in-process through
//! [`edgewasm_runtime`] with the same grants the shim would give. The pieces:
//!
//! - [`settings`]: the folder's `standalone.yaml` (agent config, device grace, simulated devices);
//! - [`folder`]: reading the manifests, each error located by file and line;
//! - [`devices`]: the devices this machine sees, fed by discovery events, with their allocations;
//! - [`simulate`]: the demo's simulated camera and sensor files;
//! - [`supervisor`]: one slot per placement, restarts with backoff, `$(VAR)` expansion;
//! - [`view`]: the live status view on a TTY, JSON lines otherwise;
//! - [`run`]: the loop tying them together.

pub mod devices;
pub mod folder;
pub mod run;
pub mod settings;
pub mod simulate;
pub mod supervisor;
pub mod view;

pub use run::{RunOptions, run};
