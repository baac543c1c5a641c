use clap::Parser as _;

// One thread is plenty for a few sockets and watches, and every worker thread costs resident memory
// (its stack and malloc arena) on each node of the DaemonSet.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    edgewasm_discovery_agent::agent::init_tracing();
    let args = edgewasm_discovery_agent::agent::Args::parse();
    match edgewasm_discovery_agent::agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "edgewasm-agent failed");
            eprintln!("edgewasm-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
