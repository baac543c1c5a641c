//! The WASI context of one instance, built from its spec: args, env, stdio, sandbox, network policy.
//!
//! A [`Recipe`] is made once per instance; an HTTP proxy builds a fresh context from it per request.
//! Stdio is opened from inside the task that runs the guest, so async pipes register with the executor
//! that polls them (which, with a network namespace, is that namespace's thread).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{
    AsyncStdinStream, AsyncStdoutStream, IsTerminal, OutputFile, StdinStream, StdoutStream,
};
use wasmtime_wasi::p2::{InputStream, OutputStream};

use crate::network::NetPolicy;
use crate::sandbox::Sandbox;
use crate::{Error, Stdio};

/// Everything needed to build the WASI context of one instance.
#[derive(Clone)]
pub(crate) struct Recipe {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) net: Arc<NetPolicy>,
    pub(crate) world: Arc<crate::world::WorldShared>,
}

/// Opened stdio streams.
#[derive(Clone, Default)]
pub(crate) struct OpenStdio {
    stdin: Option<SharedStdin>,
    stdout: Option<Output>,
    stderr: Option<Output>,
}

#[derive(Clone)]
enum Output {
    File(OutputFile, Arc<std::fs::File>),
    Pipe(SharedStdout),
}

/// Output buffered for a pipe before the guest's writes block.
const PIPE_BUDGET: usize = 64 * 1024;

impl OpenStdio {
    /// Opens the configured paths; must run inside the executor that will poll the guest.
    pub(crate) fn open(stdio: &Stdio) -> Result<Self, Error> {
        Ok(Self {
            stdin: stdio.stdin.as_deref().map(open_input).transpose()?,
            stdout: stdio.stdout.as_deref().map(open_output).transpose()?,
            stderr: stdio.stderr.as_deref().map(open_output).transpose()?,
        })
    }

    /// Appends a host message (e.g. an HTTP request's trap) to the guest's stderr file, if it is a file.
    pub(crate) fn write_stderr(&self, message: &str) {
        use std::io::Write;
        if let Some(Output::File(_, file)) = &self.stderr {
            let _ = writeln!(&**file, "{message}");
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// One opened stdin shared by every context built from the recipe (all requests of a proxy).
#[derive(Clone)]
struct SharedStdin(Arc<AsyncStdinStream>);

impl IsTerminal for SharedStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for SharedStdin {
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        self.0.async_stream()
    }

    fn p2_stream(&self) -> Box<dyn InputStream> {
        self.0.p2_stream()
    }
}

/// One opened output pipe shared by every context built from the recipe.
#[derive(Clone)]
struct SharedStdout(Arc<AsyncStdoutStream>);

impl IsTerminal for SharedStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SharedStdout {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        self.0.async_stream()
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        self.0.p2_stream()
    }
}

fn open_input(path: &Path) -> Result<SharedStdin, Error> {
    if is_fifo(path) {
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(path)
            .map_err(io_err(path))?;
        Ok(SharedStdin(Arc::new(AsyncStdinStream::new(rx))))
    } else {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        Ok(SharedStdin(Arc::new(AsyncStdinStream::new(
            tokio::fs::File::from_std(file),
        ))))
    }
}

fn open_output(path: &Path) -> Result<Output, Error> {
    if is_fifo(path) {
        let tx = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(path)
            .map_err(io_err(path))?;
        Ok(Output::Pipe(SharedStdout(Arc::new(
            AsyncStdoutStream::new(PIPE_BUDGET, tx),
        ))))
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        let file = Arc::new(file);
        let clone = file.try_clone().map_err(io_err(path))?;
        Ok(Output::File(OutputFile::new(clone), file))
    }
}

impl Recipe {
    /// A WASI context builder with everything but nothing inherited from the host.
    pub(crate) fn builder(&self, stdio: &OpenStdio) -> Result<WasiCtxBuilder, Error> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.args).envs(&self.env);
        self.sandbox.apply(&mut b)?;
        self.net.apply(&mut b);
        if let Some(stdin) = &stdio.stdin {
            b.stdin(stdin.clone());
        }
        match &stdio.stdout {
            Some(Output::File(f, _)) => b.stdout(f.clone()),
            Some(Output::Pipe(p)) => b.stdout(p.clone()),
            None => &mut b,
        };
        match &stdio.stderr {
            Some(Output::File(f, _)) => b.stderr(f.clone()),
            Some(Output::Pipe(p)) => b.stderr(p.clone()),
            None => &mut b,
        };
        Ok(b)
    }
}

/// Where per-instance sandboxes go by default.
pub(crate) fn default_sandbox_dir() -> PathBuf {
    std::env::temp_dir().join("edgewasm-sandboxes")
}
