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
    let caps = call(
        xaddr,
        &format!("{DEVICE_NS}/GetCapabilities"),
        &format!(
            r#"<GetCapabilities xmlns="{DEVICE_NS}"><Category>Media</Category></GetCapabilities>"#
        ),
        credentials,
        net,
    )
    .await?;
    let media = element_text(&caps, &["Media", "XAddr"])
        .ok_or_else(|| DeviceError::Unsupported(format!("{xaddr} offers no media service")))?;
    let profiles = call(
        &media,
        &format!("{MEDIA_NS}/GetProfiles"),
        &format!(r#"<GetProfiles xmlns="{MEDIA_NS}"/>"#),
        credentials,
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
        credentials,
        net,
    )
    .await?;
    element_text(&snapshot, &["MediaUri", "Uri"]).ok_or_else(|| {
        DeviceError::Unsupported(format!("profile {token} of {media} offers no snapshot URI"))
    })
}

/// `YYYY-MM-DDThh:mm:ssZ` for `secs` since the Unix epoch.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn envelope(body: &str, credentials: Option<&Credentials>) -> String {
    let header = credentials.map_or_else(String::new, |c| {
        let mut nonce = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read as _;
            let _ = f.read_exact(&mut nonce);
        }
        let created = utc(SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()));
        onvif::security_header(&c.username, &c.password, &nonce, &created)
    });
    onvif::envelope("", &header, body)
}

/// POSTs one SOAP request to `url` (a granted peer) and returns the answer's text.
async fn call(
    url: &str,
    action: &str,
    body: &str,
    credentials: Option<&Credentials>,
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
            .body(Full::new(bytes::Bytes::from(envelope(body, credentials))))
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
                if credentials.is_some() {
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

    #[test]
    fn timestamps_follow_ws_security() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_720_392), "2026-11-26T19:13:12Z");
    }
}
