//! The wasmtime host shared by the shim and standalone mode: runs a component with only what it was granted.
//!
//! One [`Host`] per process owns the wasmtime `Engine` (epoch interruption, memory limiter), the `Linker`s
//! (built once), the on-disk precompiled cache and an in-memory cache of `InstancePre`s. [`Host::load`]
//! turns a `.wasm` file into a [`Program`] (its [`ProgramKind`] detected from the binary), and
//! [`Host::start`] runs it as an [`Instance`] described by an [`InstanceSpec`]: args, env, stdio files,
//! [`Limits`], an optional network namespace and the [`Grants`] that say what it may reach.
//!
//! Least privilege: the guest sees only the granted paths (a device node such as `/dev/video0` appears at
//! its guest path inside a private directory; nothing else from the host is visible), may connect only to
//! the granted network peers (wasi:sockets address checks, an allowlist for outgoing wasi:http), and gets a
//! WASI error for anything else, never the host resource.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgewasm_runtime::Error> {
//! use edgewasm_runtime::{Host, HostConfig, InstanceSpec};
//! let host = Host::new(HostConfig::default())?;
//! let program = host.load("app.wasm".as_ref()).await?;
//! let instance = host.start(program, InstanceSpec::new("demo")).await?;
//! let status = instance.wait().await;
//! println!("exit code {}", status.code);
//! # Ok(()) }
//! ```

mod cache;
mod context;
mod cpu;
mod device;
mod error;
mod host;
mod http;
mod instance;
mod keyvalue;
mod netns;
mod network;
mod program;
mod sandbox;
mod spec;
mod state;
mod world;

pub use device::DeviceEvents;
pub use edgewasm_api::Grants;
pub use error::Error;
pub use host::{Host, HostConfig};
pub use instance::{ExitReason, ExitStatus, Instance, InstanceStats};
pub use program::Program;
pub use spec::{InstanceSpec, Limits, ProgramKind, Stdio};
pub use world::{Credentials, WorldSpec};
