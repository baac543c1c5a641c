//! An ONVIF camera's stills: an HTTP GET of its snapshot URI with the granted credentials, only to the
//! granted camera host.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::camera::{Camera, CameraInfo, Frame, PixelFormat, format_of_mime, jpeg_size};
use super::{DeviceError, now_ns};
use crate::network::NetPolicy;
use crate::world::Credentials;

/// A snapshot must arrive within this time, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshots larger than this are refused.
const MAX_SNAPSHOT_BYTES: usize = 32 * 1024 * 1024;

/// An ONVIF camera's snapshot URI.
pub(crate) struct Snapshot {
    name: String,
    uri: http::Uri,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
    net: Arc<NetPolicy>,
}

impl Snapshot {
    pub(crate) fn new(
        name: String,
        uri: &str,
        credentials: Option<Credentials>,
        net: Arc<NetPolicy>,
    ) -> Result<Self, DeviceError> {
        let bad = |why: &str| DeviceError::Unsupported(format!("snapshot URI {uri:?}: {why}"));
        let uri: http::Uri = uri.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("HTTPS snapshot URIs are not supported yet")),
            _ => return Err(bad("not an http URI")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            name,
            uri,
            host,
            port,
            credentials,
            net,
        })
    }

    async fn fetch(&self) -> Result<(Vec<u8>, Option<String>), DeviceError> {
        if !self.net.allows_http(&self.host, self.port).await {
            return Err(DeviceError::NotGranted(format!(
                "the camera host {}:{} is not among the peers granted to this instance",
                self.host, self.port
            )));
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            DeviceError::Unavailable(format!("snapshot from {}: {e}", self.uri))
        };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
        let conn = tokio::spawn(conn);
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), ToString::to_string);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let mut request = http::Request::get(path).header(http::header::HOST, authority);
        if let Some(c) = &self.credentials {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {token}"));
        }
        let request = request
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| DeviceError::Io(format!("building the snapshot request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            conn.abort();
            return Err(DeviceError::AccessDenied(format!(
                "{} answered {status}{}",
                self.uri,
                if self.credentials.is_some() {
                    " to the granted credentials"
                } else {
                    " (no credentials were granted)"
                }
            )));
        }
        if !status.is_success() {
            conn.abort();
            return Err(DeviceError::Io(format!("{} answered {status}", self.uri)));
        }
        let mime = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        conn.abort();
        Ok((body.to_vec(), mime))
    }
}

#[async_trait::async_trait]
impl Camera for Snapshot {
    async fn describe(&self) -> Result<CameraInfo, DeviceError> {
        Ok(CameraInfo {
            name: self.name.clone(),
            backend: "onvif".into(),
            width: 0,
            height: 0,
            format: PixelFormat::Jpeg,
        })
    }

    async fn capture(&self) -> Result<Frame, DeviceError> {
        let (data, mime) = tokio::time::timeout(TIMEOUT, self.fetch())
            .await
            .map_err(|_| {
                DeviceError::Unavailable(format!(
                    "no snapshot from {} within {TIMEOUT:?}",
                    self.uri
                ))
            })??;
        let (width, height) = jpeg_size(&data).unwrap_or_default();
        let format = match mime {
            Some(m) => format_of_mime(&m),
            None if jpeg_size(&data).is_some() => PixelFormat::Jpeg,
            None => PixelFormat::Other("application/octet-stream".into()),
        };
        Ok(Frame {
            width,
            height,
            format,
            timestamp: now_ns(),
            data,
        })
    }
}
