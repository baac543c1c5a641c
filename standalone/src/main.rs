//! `edgewasm`: edgewasm without Kubernetes. `edgewasm run --manifests DIR` discovers devices, places the
//! folder's WasmWorkloads on them and runs them on this machine.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edgewasm_standalone::{RunOptions, run};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "edgewasm",
    version,
    about = "Run Wasm components next to devices on this machine, no Kubernetes needed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Discover devices, place the folder's WasmWorkloads on them and run them; reacts to edits.
    Run {
        /// Folder of WasmWorkload/Device YAML (and optional standalone.yaml).
        #[arg(long, short = 'm', default_value = ".")]
        manifests: PathBuf,
        /// Where placements, logs and sandboxes are kept [default: MANIFESTS/.edgewasm].
        #[arg(long, env = "EDGEWASM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Compiled code cache [default: STATE_DIR/cache].
        #[arg(long, env = "EDGEWASM_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Node name devices are placed on [default: the host name].
        #[arg(long)]
        node: Option<String>,
        /// Seconds a placement outlives its device's absence [default: standalone.yaml, else 30].
        #[arg(long)]
        grace: Option<u64>,
        /// Run every placement once, exit when all finished or failed (non-zero on failure).
        #[arg(long)]
        once: bool,
        /// Print component output, prefixed by instance.
        #[arg(long, short = 'f')]
        follow: bool,
        /// First restart delay in milliseconds; doubles for each failure in a row (up to 5 minutes).
        #[arg(long, default_value_t = 1000)]
        restart_backoff_ms: u64,
        /// Print JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let Command::Run {
        manifests,
        state_dir,
        cache_dir,
        node,
        grace,
        once,
        follow,
        restart_backoff_ms,
        json,
    } = Cli::parse().command;
    let tty = !json && std::io::stdout().is_terminal();
    let opts = RunOptions {
        state_dir,
        cache_dir,
        node,
        grace: grace.map(Duration::from_secs),
        once,
        follow,
        restart_backoff: Duration::from_millis(restart_backoff_ms.max(1)),
        tty,
        manifests,
    };
    init_tracing(&opts);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgewasm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        run(opts, shutdown).await
    });
    // Guest file reads may still sit in blocking threads; they are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("edgewasm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

/// Logs go to stderr, except under the live view, where they would tear it: there they go to
/// `STATE_DIR/edgewasm.log`.
fn init_tracing(opts: &RunOptions) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EDGEWASM_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    if opts.tty {
        let dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| opts.manifests.join(".edgewasm"));
        if std::fs::create_dir_all(&dir).is_ok()
            && let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("edgewasm.log"))
        {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
