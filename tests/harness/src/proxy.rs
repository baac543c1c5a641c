//! One loopback HTTP endpoint in front of the core server and the CRD apiserver, routing by path,
//! merging `/apis`, and injecting faults on demand (5xx, delays, dropped watches, refused
//! connections).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::body::{Body, Bytes};
use futures::StreamExt as _;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::core::{self, CoreServer};

/// Fault switches shared by every connection.
#[derive(Debug)]
struct Faults {
    fail_next: AtomicU32,
    fail_status: std::sync::atomic::AtomicU16,
    delay_ms: AtomicU64,
    /// Bumped to end every open watch.
    drop_watches: watch::Sender<u64>,
}

#[derive(Debug)]
struct Shared {
    core: axum::Router,
    upstream: String,
    http: reqwest::Client,
    faults: Faults,
}

/// The proxy; dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// Cancelled to go down: stops accepting and cuts every open connection.
    up: std::sync::Mutex<Option<CancellationToken>>,
}

impl Proxy {
    /// Listens on a free loopback port; `upstream` is the CRD apiserver's `https://` URL.
    pub async fn start(core: CoreServer, upstream: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .context("building the proxy's HTTP client")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let proxy = Self {
            addr: listener.local_addr()?,
            shared: Arc::new(Shared {
                core: core::router(core),
                upstream,
                http,
                faults: Faults {
                    fail_next: AtomicU32::new(0),
                    fail_status: std::sync::atomic::AtomicU16::new(500),
                    delay_ms: AtomicU64::new(0),
                    drop_watches: watch::channel(0).0,
                },
            }),
            runtime: tokio::runtime::Handle::current(),
            up: std::sync::Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.up.lock().expect("proxy lock") = Some(token.clone());
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "proxy accept failed");
                            continue;
                        }
                    },
                };
                let (shared, token) = (shared.clone(), token.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(&shared, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = token.cancelled() => {}
                        result = conn => if let Err(e) = result {
                            tracing::debug!(error = %e, "proxy connection ended");
                        },
                    }
                });
            }
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` requests get `500 Internal Server Error` (which kube-rs does not retry).
    pub fn fail_next(&self, n: u32) {
        self.fail_next_with(n, StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// The next `n` requests get `status` (kube-rs' client retries 429, 503 and 504 by itself).
    pub fn fail_next_with(&self, n: u32, status: StatusCode) {
        let faults = &self.shared.faults;
        faults.fail_status.store(status.as_u16(), Ordering::SeqCst);
        faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request waits `delay` before it is served (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Ends every open watch (clients see the stream end and watch again).
    pub fn drop_watches(&self) {
        self.shared.faults.drop_watches.send_modify(|n| *n += 1);
    }

    pub fn is_down(&self) -> bool {
        self.up.lock().expect("proxy lock").is_none()
    }

    /// Down: connections are refused and open ones cut. Up again: listens on the same port.
    pub async fn set_down(&self, down: bool) -> Result<()> {
        if down {
            if let Some(token) = self.up.lock().expect("proxy lock").take() {
                token.cancel();
            }
            return Ok(());
        }
        if !self.is_down() {
            return Ok(());
        }
        let addr = self.addr;
        // The listener being cancelled is dropped by its task a moment later; until then the port
        // is still bound, so retry for a short while.
        let listener = self
            .runtime
            .spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    match TcpListener::bind(addr).await {
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AddrInUse
                                && tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => return other,
                    }
                }
            })
            .await?
            .with_context(|| format!("binding the proxy to {addr} again"))?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(token) = self.up.lock().expect("proxy lock").take() {
            token.cancel();
        }
    }
}

/// Where a path goes.
fn is_core_path(path: &str) -> bool {
    if path == "/api" || path.starts_with("/api/") {
        return true;
    }
    path.strip_prefix("/apis/")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .is_some_and(|group| core::GROUPS.contains(&group))
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response")
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let faults = &shared.faults;
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = faults
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let code = StatusCode::from_u16(faults.fail_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return status_response(
            code,
            code.canonical_reason().unwrap_or("InternalError"),
            "injected fault: the server is currently unable to handle the request",
        );
    }
    let path = req.uri().path().to_owned();
    let is_watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let response = if path == "/apis" || path == "/apis/" {
        merged_apis(shared).await
    } else if is_core_path(&path) {
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, Body::new(body));
        match shared.core.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    } else {
        forward(shared, req).await
    };
    if !is_watch {
        return response;
    }
    // Watches end when drop_watches() is called.
    let mut dropped = faults.drop_watches.subscribe();
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().take_until(async move {
        let _ = dropped.changed().await;
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = parts.headers.clone();
    for h in [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    let result = shared
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    match result {
        Ok(upstream) => {
            let mut builder = Response::builder().status(upstream.status());
            copy_headers(upstream.headers(), builder.headers_mut().expect("builder"));
            builder
                .body(Body::from_stream(upstream.bytes_stream()))
                .expect("proxied response")
        }
        Err(e) => status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("the CRD apiserver is unavailable: {e}"),
        ),
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if k != header::CONNECTION && k != header::TRANSFER_ENCODING && k != header::CONTENT_LENGTH
        {
            to.append(k, v.clone());
        }
    }
}

/// The CRD apiserver's legacy `/apis` plus the groups the core server serves.
async fn merged_apis(shared: &Shared) -> Response<Body> {
    let upstream = async {
        let v: Value = shared
            .http
            .get(format!("{}/apis", shared.upstream))
            .header(header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok::<_, reqwest::Error>(v)
    };
    match upstream.await {
        Ok(mut list) => {
            if let Some(groups) = list.get_mut("groups").and_then(Value::as_array_mut) {
                groups.extend(core::discovery::groups());
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(Bytes::from(list.to_string())))
                .expect("apis response")
        }
        Err(e) => status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("the CRD apiserver is unavailable: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::is_core_path;

    #[test]
    fn routing() {
        assert!(is_core_path("/api"));
        assert!(is_core_path("/api/v1/namespaces/a/pods"));
        assert!(is_core_path(
            "/apis/coordination.k8s.io/v1/namespaces/a/leases"
        ));
        assert!(is_core_path("/apis/events.k8s.io"));
        assert!(!is_core_path("/apis/edgewasm.io/v1alpha1/devices"));
        assert!(!is_core_path(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        ));
        assert!(!is_core_path("/openapi/v2"));
        assert!(!is_core_path("/apis"));
    }
}
