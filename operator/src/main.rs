use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use edgewasm_operator::leader::LeaderElection;
use edgewasm_operator::{Config, Metrics, controller, metrics};
use tracing_subscriber::EnvFilter;

/// Reconciles WasmWorkloads against Devices into Pods pinned to the device's node.
#[derive(Debug, Parser)]
#[command(name = "edgewasm-operator", version)]
struct Args {
    /// runtimeClassName of the Pods.
    #[arg(long, env = "EDGEWASM_RUNTIME_CLASS", default_value = "edgewasm")]
    runtime_class: String,
    /// How long a placement outlives its device's absence (seconds, or with a unit: 90s, 2m).
    #[arg(long, env = "EDGEWASM_DEVICE_GRACE_PERIOD", default_value = "60s", value_parser = parse_duration)]
    device_grace_period: Duration,
    /// Hold a coordination Lease so only one replica reconciles.
    #[arg(long, env = "EDGEWASM_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (defaults to the Pod's namespace, then `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "EDGEWASM_LEASE_NAME", default_value = "edgewasm-operator")]
    lease_name: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "EDGEWASM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 60, 60s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    }

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));
    let config = Config {
        runtime_class: args.runtime_class,
        device_grace_period: args.device_grace_period,
        ..Config::default()
    };

    let run = controller::run(client.clone(), config, metrics);
    if args.leader_elect {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("edgewasm-operator-{}", std::process::id()));
        let lease = LeaderElection::new(
            client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(15),
        );
        lease.acquire().await?;
        tokio::select! {
            result = run => result?,
            lost = lease.hold() => return Err(lost),
            served = server => served.context("metrics server task")??,
        }
    } else {
        tokio::select! {
            result = run => result?,
            served = server => served.context("metrics server task")??,
        }
    }
    Ok(())
}
