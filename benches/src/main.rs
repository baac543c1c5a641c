//! `edgewasm-bench`: the figures of `make bench` (see `benches/README.md`), each measuring edgewasm and
//! its peers in the same run, written to `bench/results/<figure>.json` and rendered into `BENCHMARKS.md`.

mod containers;
mod criterion_results;
mod discovery;
mod http_baseline;
mod memory;
mod report;
mod results;
mod standalone;
mod stats;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// `BENCH_QUICK=1`: few runs, for smoke tests.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[derive(Parser)]
#[command(
    name = "edgewasm-bench",
    about = "edgewasm against its peers, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cold start, short tasks, memory per instance and wasi:http through a private containerd.
    Containerd {
        #[arg(long)]
        shim: PathBuf,
        /// runwasi's `containerd-shim-wasmtime-v1`, built locally; without it runwasi is reported missing.
        #[arg(long, env = "RUNWASI_SHIM")]
        runwasi: Option<PathBuf>,
        #[arg(long)]
        hello_wasm: PathBuf,
        #[arg(long)]
        hello_c: PathBuf,
        #[arg(long)]
        server_wasm: PathBuf,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Only figures whose id contains this (`cold-start`, `tasks`, `memory`, `http`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Device → Device CR (event-driven vs polling) and the agent's idle memory.
    Discovery {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long, default_value = "crds")]
        crds: PathBuf,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Only figures whose id contains this (`device-to-cr`, `agent-rss`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Device → component running in standalone mode.
    Standalone {
        #[arg(long)]
        edgewasm: PathBuf,
        #[arg(long)]
        hello_wasm: PathBuf,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// Renders `BENCHMARKS.md` from the result files and prints the table.
    Report {
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Turns the criterion samples of `benches/inprocess.rs` into `00-instance-start.json`.
    Criterion {
        /// criterion's output folder (`$CARGO_TARGET_DIR/criterion`).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// The native HTTP baseline server of the wasi:http figure (started by `containerd`).
    HttpBaseline {
        #[arg(long)]
        port: u16,
    },
}

/// Runs `work` until it ends or the process gets SIGINT/SIGTERM; on a signal `work` is dropped first,
/// so its guards stop what it started (containerd and its shims, the apiserver, the agent, the veth).
async fn until_interrupted(work: impl Future<Output = Result<()>>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    tokio::select! {
        r = work => r,
        _ = interrupt.recv() => anyhow::bail!("interrupted (SIGINT); stopped what this step started"),
        _ = terminate.recv() => anyhow::bail!("terminated (SIGTERM); stopped what this step started"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    match cli.command {
        Cmd::Containerd {
            shim,
            runwasi,
            hello_wasm,
            hello_c,
            server_wasm,
            results,
            only,
        } => {
            let inputs = containers::Inputs {
                shim,
                runwasi,
                hello_wasm,
                hello_c,
                server_wasm,
                bench_exe: std::env::current_exe().context("locating this binary")?,
            };
            rt.block_on(until_interrupted(containers::run(
                &inputs,
                &results,
                only.as_deref(),
            )))
        }
        Cmd::Discovery {
            agent,
            crds,
            results,
            only,
        } => rt.block_on(until_interrupted(discovery::run(
            &discovery::Inputs { agent, crds },
            &results,
            only.as_deref(),
        ))),
        Cmd::Standalone {
            edgewasm,
            hello_wasm,
            results,
        } => standalone::run(
            &standalone::Inputs {
                edgewasm,
                hello_wasm,
            },
            &results,
        ),
        Cmd::Report { results, out } => {
            let figures = results::load_all(&results)?;
            anyhow::ensure!(
                !figures.is_empty(),
                "no results in {} (run `make bench`)",
                results.display()
            );
            std::fs::write(&out, report::markdown(&figures))
                .with_context(|| format!("writing {}", out.display()))?;
            for f in &figures {
                print!("{}", report::figure_text(f));
            }
            println!("\nwrote {}", out.display());
            Ok(())
        }
        Cmd::Criterion { dir, results } => criterion_results::convert(&dir, &results),
        Cmd::HttpBaseline { port } => rt.block_on(http_baseline::serve(port)),
    }
}
