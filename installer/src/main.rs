use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edgewasm_node_installer::cli::Cli;

fn main() -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        logs.init();
    } else {
        logs.json().init();
    }

    match edgewasm_node_installer::run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "edgewasm-node-installer failed");
            eprintln!("edgewasm-node-installer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
