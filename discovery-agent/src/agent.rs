//! The agent process: runs the configured handlers, feeds their events to the publisher, and serves
//! `/metrics` and `/healthz` until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::publisher::{Publisher, PublisherConfig};
use crate::{AgentConfig, DeviceEvent};

/// Command-line flags of `edgewasm-agent`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "edgewasm-agent",
    version,
    about = "Finds devices on this node and publishes them as Device resources"
)]
pub struct Args {
    /// Agent configuration (YAML).
    #[arg(long, default_value = "/etc/edgewasm/agent.yaml")]
    pub config: PathBuf,
    /// This node's name (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,
    /// Benchmark baseline only: hold events and release them every N seconds, like a polling
    /// discovery (Akri polls every 10 s).
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<u64>,
}

/// Run the agent until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.node_name.trim().is_empty(), "NODE_NAME is empty");
    let cfg = AgentConfig::load(&args.config)?;
    let handlers = crate::build_handlers(&cfg, &args.node_name)?;
    if handlers.is_empty() {
        tracing::warn!(config = %args.config.display(), "no handler enabled");
    }
    let client = kube::Client::try_default()
        .await
        .context("creating Kubernetes client")?;
    let mut pcfg = PublisherConfig::new(args.node_name.clone());
    for h in &handlers {
        pcfg.approvals
            .insert(h.name().to_string(), cfg.approval(h.name()));
    }

    let shutdown = CancellationToken::new();
    let healthy = Arc::new(AtomicBool::new(true));
    let metrics = tokio::spawn(serve_metrics(
        args.metrics_addr,
        healthy.clone(),
        shutdown.clone(),
    ));

    let (tx, rx) = mpsc::channel::<DeviceEvent>(1024);
    let rx = match args.poll_interval {
        Some(secs) => polling_gate(rx, Duration::from_secs(secs.max(1)), shutdown.clone()),
        None => rx,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for h in handlers {
        let name = h.name().to_string();
        let (tx, shutdown, healthy) = (tx.clone(), shutdown.clone(), healthy.clone());
        tasks.spawn(async move {
            if let Err(e) = h.run(tx, shutdown).await {
                tracing::error!(handler = %name, error = format!("{e:#}"), "handler stopped");
                crate::metrics::bad_input(&name, "handler-failed");
                healthy.store(false, Ordering::Relaxed);
            }
        });
    }
    drop(tx);
    let publisher = tokio::spawn(Publisher::new(client, pcfg).run(rx, shutdown.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    publisher.await.context("publisher task")??;
    metrics.await.context("metrics task")??;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    crate::metrics::encode(),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = healthy.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "a handler stopped")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics address {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("metrics server")
}

/// Hold events and pass them on only at each tick: the latency profile of a polling discovery, for the
/// benchmark's baseline. Bounded: the queue is flushed every tick and senders wait when it is full.
fn polling_gate(
    mut rx: mpsc::Receiver<DeviceEvent>,
    every: Duration,
    shutdown: CancellationToken,
) -> mpsc::Receiver<DeviceEvent> {
    let (tx, out) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                ev = rx.recv(), if held.len() < 4096 => match ev {
                    Some(ev) => held.push(ev),
                    None => return,
                },
                _ = tick.tick() => {
                    for ev in held.drain(..) {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    out
}

/// Logs as JSON when stderr is not a terminal (in a Pod), human-readable otherwise.
///
/// By default the OPC UA client library is silent: it logs every refused connection as an error on
/// every round, while the opcua handler reports each discovery URL that stops answering once, with the
/// library's error. `RUST_LOG` overrides this.
pub fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,opcua_client=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
