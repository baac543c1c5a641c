//! What a caller asks for: the kind of program and everything one instance needs besides it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgewasm_api::Grants;

/// The kinds of Wasm a user can bring, detected from the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// A core module importing `wasi_snapshot_preview1` (or nothing) and exporting `_start`.
    Preview1Module,
    /// A component exporting `wasi:cli/run` (the `wasi:cli/command` world).
    CliCommand,
    /// A component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world), served over HTTP.
    HttpProxy,
}

/// Everything one instance needs besides its program.
#[derive(Clone, Debug, Default)]
pub struct InstanceSpec {
    /// Identifier used in logs and errors (container id, placement name).
    pub id: String,
    /// Guest argv, `args[0]` included (conventionally the program name).
    pub args: Vec<String>,
    /// Guest environment; nothing is inherited from the host.
    pub env: Vec<(String, String)>,
    /// What the guest may reach.
    pub grants: Grants,
    /// Where stdin/stdout/stderr go.
    pub stdio: Stdio,
    /// Memory, CPU and wall-clock limits.
    pub limits: Limits,
    /// Run networking (wasi:sockets, outgoing wasi:http, the HTTP listener) inside this network namespace
    /// (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`). `None` uses the process's own namespace.
    pub netns: Option<PathBuf>,
    /// Address the HTTP listener of a [`ProgramKind::HttpProxy`] binds to (port from
    /// `grants.http_port`, 0 = any free port, see [`crate::Instance::http_addr`]). `None` means `0.0.0.0` inside
    /// a `netns` and `127.0.0.1` without one.
    pub http_bind: Option<IpAddr>,
}

impl InstanceSpec {
    /// A spec with the given id, `args = [id]`, and nothing granted.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            args: vec![id.clone()],
            id,
            ..Self::default()
        }
    }
}

/// Guest stdio: each `Some(path)` is a file or fifo the runtime opens (stdout/stderr: created if
/// missing, appended to); `None` is a null device (empty stdin, discarded output).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// Resource limits of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory + table bytes; growing past it ends the instance with
    /// [`crate::ExitReason::OutOfMemory`] (for an HTTP proxy: that request fails with 500).
    pub memory_bytes: Option<u64>,
    /// CPU quota in millicores (500 = half a core), enforced by time slicing at epoch ticks.
    pub cpu_millis: Option<u64>,
    /// Wall-clock limit from start; exceeding it ends the instance with [`crate::ExitReason::DeadlineExceeded`].
    pub deadline: Option<Duration>,
}
