//! The errors of loading and starting programs, each naming what the user can fix.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors from loading or starting a program; each names what the user can fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a WebAssembly binary at all.
    #[error("{origin} is not a WebAssembly binary: {reason}")]
    NotWasm { origin: String, reason: String },
    /// A WebAssembly binary that does not validate (e.g. truncated).
    #[error("{origin} is not a valid WebAssembly binary: {message}")]
    InvalidWasm { origin: String, message: String },
    /// A valid binary whose world edgewasm cannot run.
    #[error(
        "{origin} targets an unknown WASI world: {detail} (supported: WASI preview 1 modules, wasi:cli/command and wasi:http/proxy components)"
    )]
    UnknownWorld { origin: String, detail: String },
    /// The program imports something the host does not provide.
    #[error("{origin} imports `{name}`, which edgewasm does not provide")]
    MissingImport { origin: String, name: String },
    /// Compilation failed.
    #[error("failed to compile {origin}: {message}")]
    Compile { origin: String, message: String },
    /// A file the runtime had to read or write.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A grant that cannot be honoured (bad path, unparsable network peer, conflicting guest paths).
    #[error("invalid grant {grant}: {reason}")]
    InvalidGrant { grant: String, reason: String },
    /// The network namespace cannot be entered.
    #[error("network namespace {}: {message}", path.display())]
    Netns { path: PathBuf, message: String },
    /// The HTTP listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("wasmtime engine: {0}")]
    Engine(String),
}
