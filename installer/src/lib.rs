//! edgewasm's node installer: puts `containerd-shim-edgewasm-v1` on a node and registers it with
//! containerd (plain or k3s), changing and restarting only what is not already in place.

pub mod cli;
pub mod containerd_config;
pub mod host;
pub mod install;
pub mod node_label;
pub mod shim_binary;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// Exit status of `configure --exit-code` when it changed the file.
pub const EXIT_CHANGED: u8 = 3;

/// Runs one subcommand; the report goes to stdout as JSON, logs to stderr.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // Before any runtime or thread exists: entering a mount namespace needs a single thread.
        Command::HostExec(args) => Err(host::exec_in_mount_namespace(
            &args.mount_namespace,
            &args.command,
        )),
        Command::Configure(args) => {
            let report = install::run_configure(&args)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(if args.exit_code && report.changed {
                ExitCode::from(EXIT_CHANGED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Wait => {
            async_runtime()?.block_on(wait_for_termination())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(args) => async_runtime()?.block_on(async {
            let report = install::run_install(&args).await?;
            println!("{}", serde_json::to_string(&report)?);
            if args.wait {
                wait_for_termination().await?;
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Blocks until the kubelet stops the Pod.
async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
