//! wasi:http: serving a `wasi:http/proxy` component over HTTP/1.1, and the allowlist for its outgoing
//! requests.
//!
//! Each incoming request gets a fresh store (the proxy world's model: no state between requests), built
//! from the instance's [`Recipe`]; all of them share the instance's memory limit, CPU account and kill
//! switch. A request whose guest traps gets a 500 and the trap goes to the instance's stderr; the instance
//! keeps serving until it is killed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks, WasiHttpView};

use crate::context::{OpenStdio, Recipe};
use crate::cpu::Metered;
use crate::instance::{ExitStatus, Shared};
use crate::network::NetPolicy;
use crate::state::{ComponentState, MemoryLimiter, OutOfMemory};

/// Outgoing wasi:http requests reach only granted peers.
pub(crate) struct OutgoingPolicy {
    pub(crate) net: Arc<NetPolicy>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutgoingPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let net = Arc::clone(&self.net);
        Box::new(async move {
            let uri = request.uri();
            let host = uri
                .host()
                .ok_or(wasmtime_wasi_http::Error::HttpRequestUriInvalid)?
                .to_string();
            let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            if !net.allows_http(&host, port).await {
                tracing::info!(host, port, "outgoing HTTP request denied: peer not granted");
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// What the request handler needs, shared by all connections of one instance.
pub(crate) struct Server {
    pub(crate) engine: Engine,
    pub(crate) pre: ProxyPre<ComponentState>,
    pub(crate) recipe: Recipe,
    pub(crate) stdio: OpenStdio,
    pub(crate) shared: Arc<Shared>,
    pub(crate) memory_limit: Option<u64>,
}

impl Server {
    /// Accepts connections until the instance is stopped; returns its final status.
    pub(crate) async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> ExitStatus {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = self.shared.cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let server = Arc::clone(&self);
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let server = Arc::clone(&server);
                                async move { Ok::<_, Infallible>(server.handle(req).await) }
                            });
                            if let Err(e) = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly instead of spinning.
                        tracing::warn!(instance = %self.shared.id, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
        ExitStatus::killed(self.shared.stop_signal().unwrap_or(libc::SIGTERM))
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        match self.clone().dispatch(req).await {
            Ok(resp) => resp,
            Err((status, message)) => {
                self.stdio.write_stderr(&message);
                tracing::warn!(instance = %self.shared.id, "{message}");
                let body = Full::new(Bytes::from(format!("{message}\n")))
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync();
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "text/plain")
                    .body(body)
                    .expect("static response parts")
            }
        }
    }

    async fn dispatch(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, (u16, String)> {
        let internal = |e: &dyn std::fmt::Display| (500, format!("edgewasm: {e}"));
        let wasi = self
            .recipe
            .builder(&self.stdio)
            .map_err(|e| internal(&e))?
            .build();
        let state = ComponentState {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outgoing: OutgoingPolicy {
                net: Arc::clone(&self.recipe.net),
            },
            limiter: MemoryLimiter::new(self.memory_limit, Arc::clone(&self.shared.memory)),
            world: crate::world::WorldState::new(&self.recipe.world),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        self.shared.configure_store(&mut store);

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(
                wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
                req,
            )
            .map_err(|e| internal(&e))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| internal(&e))?;

        let server = Arc::clone(&self);
        // The guest keeps running after it set the response (it streams the body), so it runs in its own
        // task; it stops with the instance.
        let guest = tokio::spawn(async move {
            let run = async {
                let proxy = server.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            tokio::select! {
                r = Metered::new(run, &server.shared.cpu) => r,
                () = server.shared.cancel.cancelled() => Err(wasmtime::Error::msg("instance stopped")),
            }
        });

        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err((500, format!("guest answered with error {code:?}"))),
            Err(_) => {
                // The guest never set a response: find out why.
                let why = match guest.await {
                    Ok(Ok(())) => "the guest returned without setting a response".to_string(),
                    Ok(Err(e)) if e.downcast_ref::<OutOfMemory>().is_some() => {
                        format!(
                            "request failed: {}",
                            e.downcast_ref::<OutOfMemory>().expect("checked")
                        )
                    }
                    Ok(Err(e)) => format!("request failed: guest trapped: {e:?}"),
                    Err(e) => format!("request failed: {e}"),
                };
                Err((500, why))
            }
        }
    }
}
