//! Finding an ONVIF camera's snapshot URI when discovery did not publish one: GetCapabilities on the
//! device service for the media service's address, GetProfiles there for the first profile, and
//! GetSnapshotUri for it. SOAP 1.2 over HTTP, with a WS-Security UsernameToken (PasswordDigest) when
//! credentials were granted, and only to granted peers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use quick_xml::events::Event;

use edgewasm_api::onvif;

use super::DeviceError;
use crate::network::NetPolicy;
use crate::world::Credentials;

/// One SOAP call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

const DEVICE_NS: &str = "http://www.onvif.org/ver10/device/wsdl";
const MEDIA_NS: &str = "http://www.onvif.org/ver10/media/wsdl";

/// The snapshot URI of the camera whose device service is at one of `xaddrs` (space-separated).
pub(crate) async fn snapshot_uri(
    xaddrs: &str,
    credentials: Option<&Credentials>,
    net: &Arc<NetPolicy>,
) -> Result<String, DeviceError> {
    let mut last = None;
    for xaddr in xaddrs.split_whitespace() {
        match resolve(xaddr, credentials, net).await {
            Ok(uri) => return Ok(uri),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        DeviceError::Unsupported(
            "the ONVIF camera has no xaddrs to ask for its snapshot URI".into(),
        )
    }))
}

async fn resolve(
    xaddr: &str,
    credentials: Option<&Credentials>,
    net: &Arc<NetPolicy>,
) -> Result<String, DeviceError> {
    let signer = &Signer {
        credentials,
        clock_offset: match credentials {
            Some(_) => clock_offset(xaddr, net).await,
            None => 0,
        },
    };
    let caps = call(
        xaddr,
        &format!("{DEVICE_NS}/GetCapabilities"),
        &format!(
            r#"<GetCapabilities xmlns="{DEVICE_NS}"><Category>Media</Category></GetCapabilities>"#
        ),
        signer,
        net,
    )
    .await?;
    let media = element_text(&caps, &["Media", "XAddr"])
        .ok_or_else(|| DeviceError::Unsupported(format!("{xaddr} offers no media service")))?;
    let profiles = call(
        &media,
        &format!("{MEDIA_NS}/GetProfiles"),
        &format!(r#"<GetProfiles xmlns="{MEDIA_NS}"/>"#),
        signer,
        net,
    )
    .await?;
    let token = attribute(&profiles, "Profiles", "token").ok_or_else(|| {
        DeviceError::Unsupported(format!("the media service {media} has no profiles"))
    })?;
    let snapshot = call(
        &media,
        &format!("{MEDIA_NS}/GetSnapshotUri"),
        &format!(
            r#"<GetSnapshotUri xmlns="{MEDIA_NS}"><ProfileToken>{}</ProfileToken></GetSnapshotUri>"#,
            onvif::escape(&token)
        ),
        signer,
        net,
    )
    .await?;
    element_text(&snapshot, &["MediaUri", "Uri"]).ok_or_else(|| {
        DeviceError::Unsupported(format!("profile {token} of {media} offers no snapshot URI"))
    })
}

/// Who signs the requests, and how far the camera's clock is ahead of ours (cameras at the edge often
/// run without NTP and refuse a token whose Created is far from their own time).
struct Signer<'a> {
    credentials: Option<&'a Credentials>,
    clock_offset: i64,
}

/// Seconds the camera's clock is ahead of ours (GetSystemDateAndTime, asked without credentials);
/// 0 when it does not say.
async fn clock_offset(xaddr: &str, net: &Arc<NetPolicy>) -> i64 {
    let anonymous = Signer {
        credentials: None,
        clock_offset: 0,
    };
    let answer = call(
        xaddr,
        onvif::GET_SYSTEM_DATE_AND_TIME_ACTION,
        onvif::GET_SYSTEM_DATE_AND_TIME,
        &anonymous,
        net,
    )
    .await;
    match answer.map(|a| onvif::camera_utc(&a)) {
        Ok(Some(camera)) => camera - unix_now(),
        Ok(None) => 0,
        Err(e) => {
            tracing::debug!(xaddr, error = %e, "GetSystemDateAndTime failed; signing with our clock");
            0
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn envelope(body: &str, signer: &Signer<'_>) -> String {
    let header = signer.credentials.map_or_else(String::new, |c| {
        let mut nonce = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read as _;
            let _ = f.read_exact(&mut nonce);
        }
        let created = onvif::created(unix_now() + signer.clock_offset);
        onvif::security_header(&c.username, &c.password, &nonce, &created)
    });
    onvif::envelope("", &header, body)
}

/// POSTs one SOAP request to `url` (a granted peer) and returns the answer's text.
async fn call(
    url: &str,
    action: &str,
    body: &str,
    signer: &Signer<'_>,
    net: &Arc<NetPolicy>,
) -> Result<String, DeviceError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| DeviceError::Unsupported(format!("ONVIF service address {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(DeviceError::Unsupported(format!(
            "ONVIF service address {url:?}: only http is supported"
        )));
    }
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    if !net.allows_http(&host, port).await {
        return Err(DeviceError::NotGranted(format!(
            "the camera host {host}:{port} is not among the peers granted to this instance"
        )));
    }
    let unavailable = |e: &dyn std::fmt::Display| DeviceError::Unavailable(format!("{url}: {e}"));
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
        let conn = tokio::spawn(conn);
        let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(
                http::header::CONTENT_TYPE,
                format!("application/soap+xml; charset=utf-8; action=\"{action}\""),
            )
            .body(Full::new(bytes::Bytes::from(envelope(body, signer))))
            .map_err(|e| DeviceError::Io(format!("building the ONVIF request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let text = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        conn.abort();
        let text = String::from_utf8_lossy(&text).into_owned();
        if status == http::StatusCode::UNAUTHORIZED || text.contains("NotAuthorized") {
            return Err(DeviceError::AccessDenied(format!(
                "{url} refused {}",
                if signer.credentials.is_some() {
                    "the granted credentials"
                } else {
                    "an unauthenticated request (no credentials were granted)"
                }
            )));
        }
        if !status.is_success() {
            return Err(DeviceError::Io(format!("{url} answered {status}")));
        }
        Ok(text)
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            DeviceError::Unavailable(format!("{url} did not answer within {CALL_TIMEOUT:?}"))
        })?
}

fn local(name: &[u8]) -> &[u8] {
    name.rsplit(|b| *b == b':').next().unwrap_or(name)
}

/// The text of the first element whose local names end with `path` (e.g. `Media`/`XAddr`).
fn element_text(xml: &str, path: &[&str]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => stack.push(local(e.name().as_ref()).to_vec()),
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                let matches = stack.len() >= path.len()
                    && stack[stack.len() - path.len()..]
                        .iter()
                        .zip(path)
                        .all(|(a, b)| a.as_slice() == b.as_bytes());
                if matches {
                    let text = t.decode().ok()?.trim().to_string();
                    if !text.is_empty() {
                        return Some(text);
                    }
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The value of `attr` on the first element with local name `element`.
fn attribute(xml: &str, element: &str, attr: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) | Event::Empty(e) if local(e.name().as_ref()) == element.as_bytes() => {
                return e
                    .attributes()
                    .filter_map(Result::ok)
                    .find(|a| local(a.key.as_ref()) == attr.as_bytes())
                    .and_then(|a| a.unescape_value().ok())
                    .map(std::borrow::Cow::into_owned);
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_local_names() {
        let caps = r#"<env:Envelope xmlns:env="e" xmlns:tt="t"><env:Body><tds:GetCapabilitiesResponse xmlns:tds="d">
            <tds:Capabilities><tt:Media><tt:XAddr> http://192.0.2.7/onvif/media </tt:XAddr></tt:Media></tds:Capabilities>
            </tds:GetCapabilitiesResponse></env:Body></env:Envelope>"#;
        assert_eq!(
            element_text(caps, &["Media", "XAddr"]).as_deref(),
            Some("http://192.0.2.7/onvif/media")
        );
        assert_eq!(element_text(caps, &["Device", "XAddr"]), None);
        let profiles = r#"<s:Envelope xmlns:s="e"><s:Body><trt:GetProfilesResponse xmlns:trt="m">
            <trt:Profiles fixed="true" token="main&amp;1"><tt:Name xmlns:tt="t">main</tt:Name></trt:Profiles>
            <trt:Profiles token="sub"/></trt:GetProfilesResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            attribute(profiles, "Profiles", "token").as_deref(),
            Some("main&1")
        );
    }
}
