use clap::Parser as _;

#[tokio::main]
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
