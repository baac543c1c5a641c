//! ONVIF GetDeviceInformation: a camera's manufacturer, model, firmware, serial number and hardware
//! id, asked over its XAddr (SOAP 1.2 over HTTP) with a WS-Security UsernameToken (PasswordDigest)
//! when credentials are configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use edgewasm_api::onvif;
use quick_xml::events::Event;
use serde::Deserialize;

/// Longest answer read from a camera.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest wait for one GetDeviceInformation call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Credentials files bigger than this are rejected.
const MAX_CREDENTIALS_BYTES: u64 = 64 * 1024;
/// Deepest element nesting accepted in an answer.
const MAX_DEPTH: usize = 32;
/// Longest value kept for one property.
const MAX_TEXT: usize = 1024;
/// SOAP action of the request.
pub const ACTION: &str = "http://www.onvif.org/ver10/device/wsdl/GetDeviceInformation";

/// The user the agent authenticates as. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Read a credentials file (YAML `{username, password}`, as mounted from a Secret).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= MAX_CREDENTIALS_BYTES,
            "{} is larger than {MAX_CREDENTIALS_BYTES} bytes",
            path.display()
        );
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // The error must not quote the file: it holds a password.
        let creds: Self = serde_yaml::from_str(&text).map_err(|_| {
            anyhow::anyhow!(
                "{} is not YAML with exactly `username` and `password`",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !creds.username.is_empty(),
            "{}: empty username",
            path.display()
        );
        Ok(creds)
    }
}

/// The GetDeviceInformation request, with a UsernameToken when there are credentials.
pub fn request(credentials: Option<&Credentials>, nonce: &[u8], created: &str) -> String {
    let header = credentials.map_or_else(String::new, |c| {
        onvif::security_header(&c.username, &c.password, nonce, created)
    });
    onvif::envelope(
        r#"xmlns:tds="http://www.onvif.org/ver10/device/wsdl""#,
        &header,
        "<tds:GetDeviceInformation/>",
    )
}

/// Why a camera did not tell its device information.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InfoError {
    #[error("the camera refused the credentials: {0}")]
    Unauthorized(String),
    #[error("SOAP fault: {0}")]
    Fault(String),
    #[error("HTTP status {0}")]
    Http(u16),
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Transport(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

impl InfoError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Fault(_) => "fault",
            Self::Http(_) => "http-status",
            Self::Malformed(_) => "malformed",
            Self::TooLarge => "oversized",
            Self::Transport(_) => "unreachable",
            Self::Credentials(_) => "credentials",
        }
    }
}

fn local(name: &[u8]) -> String {
    crate::wsdiscovery::local(name).into_owned()
}

fn push_text(buf: &mut String, s: &str) {
    let room = MAX_TEXT.saturating_sub(buf.len());
    buf.extend(s.chars().take(room));
}

/// The device properties in a GetDeviceInformationResponse (`manufacturer`, `model`,
/// `firmwareVersion`, `serial`, `hardwareId`), or the fault the camera answered with.
pub fn parse_response(body: &[u8]) -> Result<BTreeMap<String, String>, InfoError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(InfoError::TooLarge);
    }
    let text = String::from_utf8_lossy(body);
    let mut reader = quick_xml::Reader::from_str(&text);
    reader.config_mut().check_end_names = false;
    let mut path: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut props = BTreeMap::new();
    let (mut in_response, mut fault) = (false, None::<(String, String)>);
    loop {
        match reader
            .read_event()
            .map_err(|e| InfoError::Malformed(e.to_string()))?
        {
            Event::Start(e) => {
                if path.len() >= MAX_DEPTH {
                    return Err(InfoError::Malformed(format!(
                        "nesting deeper than {MAX_DEPTH}"
                    )));
                }
                let name = local(e.name().as_ref());
                match name.as_str() {
                    "GetDeviceInformationResponse" => in_response = true,
                    "Fault" => fault = Some(Default::default()),
                    _ => {}
                }
                path.push(name);
                buf.clear();
            }
            Event::Text(t) => push_text(
                &mut buf,
                &t.xml_content()
                    .map_err(|e| InfoError::Malformed(e.to_string()))?,
            ),
            Event::CData(t) => push_text(&mut buf, &String::from_utf8_lossy(&t)),
            Event::GeneralRef(r) => {
                if let Some(c) = crate::wsdiscovery::entity_char(&r) {
                    push_text(&mut buf, c.encode_utf8(&mut [0; 4]));
                }
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err(InfoError::Malformed("unbalanced end tag".into()));
                };
                let value = std::mem::take(&mut buf).trim().to_string();
                if let Some((codes, reason)) = fault.as_mut() {
                    match name.as_str() {
                        "Value" => {
                            if !codes.is_empty() {
                                codes.push(' ');
                            }
                            codes.push_str(&value);
                        }
                        "Text" if reason.is_empty() => *reason = value,
                        _ => {}
                    }
                    continue;
                }
                if !in_response
                    || path.last().map(String::as_str) != Some("GetDeviceInformationResponse")
                {
                    continue;
                }
                let key = match name.as_str() {
                    "Manufacturer" => "manufacturer",
                    "Model" => "model",
                    "FirmwareVersion" => "firmwareVersion",
                    "SerialNumber" => "serial",
                    "HardwareId" => "hardwareId",
                    _ => continue,
                };
                if !value.is_empty() {
                    props.insert(key.to_string(), value);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some((codes, reason)) = fault {
        let message = if reason.is_empty() {
            codes.clone()
        } else {
            format!("{reason} ({codes})")
        };
        return Err(
            if codes.contains("NotAuthorized") || codes.contains("FailedAuthentication") {
                InfoError::Unauthorized(message)
            } else {
                InfoError::Fault(message)
            },
        );
    }
    if !in_response {
        return Err(InfoError::Malformed(
            "no GetDeviceInformationResponse".into(),
        ));
    }
    Ok(props)
}

/// Asks cameras for their device information.
#[derive(Clone, Debug)]
pub struct DeviceInfoClient {
    http: reqwest::Client,
    credentials_file: Option<PathBuf>,
}

impl DeviceInfoClient {
    pub fn new(credentials_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            // Cameras serve HTTPS with self-signed certificates; the digest never reveals the password.
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .context("building the ONVIF HTTP client")?;
        Ok(Self {
            http,
            credentials_file,
        })
    }

    /// The credentials, read at each call so a rotated Secret takes effect without a restart.
    fn credentials(&self) -> Result<Option<Credentials>, InfoError> {
        self.credentials_file
            .as_deref()
            .map(Credentials::load)
            .transpose()
            .map_err(|e| InfoError::Credentials(format!("{e:#}")))
    }

    /// GetDeviceInformation at `xaddr`. With credentials, the token is signed with the camera's own
    /// clock (GetSystemDateAndTime first), so a camera without NTP still accepts it.
    pub async fn fetch(&self, xaddr: &str) -> Result<BTreeMap<String, String>, InfoError> {
        let credentials = self.credentials()?;
        let nonce = uuid::Uuid::new_v4().into_bytes();
        let offset = if credentials.is_some() {
            self.clock_offset(xaddr).await
        } else {
            0
        };
        let created = onvif::created(jiff::Timestamp::now().as_second() + offset);
        let body = request(credentials.as_ref(), &nonce, &created);
        let (status, answer) = self.post(xaddr, ACTION, body).await?;
        // SOAP 1.2 faults come with 400/500 statuses; the fault says more than the status.
        match parse_response(&answer) {
            Ok(props) if status.is_success() => Ok(props),
            Ok(_) => Err(InfoError::Http(status.as_u16())),
            Err(InfoError::Malformed(_)) if status == reqwest::StatusCode::UNAUTHORIZED => {
                Err(InfoError::Unauthorized(format!("HTTP {status}")))
            }
            Err(InfoError::Malformed(_)) if !status.is_success() => {
                Err(InfoError::Http(status.as_u16()))
            }
            Err(e) => Err(e),
        }
    }

    /// Seconds the camera's clock is ahead of ours; 0 when it does not say.
    async fn clock_offset(&self, xaddr: &str) -> i64 {
        let body = onvif::envelope("", "", onvif::GET_SYSTEM_DATE_AND_TIME);
        let camera = match self
            .post(xaddr, onvif::GET_SYSTEM_DATE_AND_TIME_ACTION, body)
            .await
        {
            Ok((status, answer)) if status.is_success() => {
                onvif::camera_utc(&String::from_utf8_lossy(&answer))
            }
            Ok((status, _)) => {
                tracing::debug!(xaddr, %status, "GetSystemDateAndTime refused; signing with our clock");
                None
            }
            Err(e) => {
                tracing::debug!(xaddr, error = %e, "GetSystemDateAndTime failed; signing with our clock");
                None
            }
        };
        let offset = camera.map_or(0, |t| t - jiff::Timestamp::now().as_second());
        if offset.abs() > 5 {
            tracing::info!(
                xaddr,
                offset_seconds = offset,
                "camera clock differs from ours; signing with the camera's time"
            );
        }
        offset
    }

    /// POSTs one SOAP request; the status and the answer (bounded).
    async fn post(
        &self,
        xaddr: &str,
        action: &str,
        body: String,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), InfoError> {
        let mut response = self
            .http
            .post(xaddr)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!(r#"application/soap+xml; charset=utf-8; action="{action}""#),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| InfoError::Transport(format!("{e:#}")))?;
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| InfoError::Transport(format!("{e:#}")))?
        {
            if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(InfoError::TooLarge);
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_the_token_only_with_credentials() {
        let anon = request(None, b"n", "2026-01-01T00:00:00Z");
        assert!(!anon.contains("UsernameToken"));
        assert!(anon.contains("GetDeviceInformation"));
        let c = Credentials {
            username: "a<b".into(),
            password: "p".into(),
        };
        let signed = request(Some(&c), b"n", "2026-01-01T00:00:00Z");
        assert!(signed.contains("<wsse:Username>a&lt;b</wsse:Username>"));
        assert!(signed.contains(&onvif::password_digest(b"n", "2026-01-01T00:00:00Z", "p")));
        assert!(!signed.contains(">p<"), "the password itself is never sent");
    }

    #[test]
    fn parses_the_answer() {
        let xml = r#"<?xml version="1.0"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><SOAP-ENV:Body><tds:GetDeviceInformationResponse><tds:Manufacturer>Acme &amp; Co</tds:Manufacturer><tds:Model>Cam-1</tds:Model><tds:FirmwareVersion>1.2.3</tds:FirmwareVersion><tds:SerialNumber>SN42</tds:SerialNumber><tds:HardwareId>HW-7</tds:HardwareId></tds:GetDeviceInformationResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
        let p = parse_response(xml.as_bytes()).unwrap();
        assert_eq!(p["manufacturer"], "Acme & Co");
        assert_eq!(p["model"], "Cam-1");
        assert_eq!(p["firmwareVersion"], "1.2.3");
        assert_eq!(p["serial"], "SN42");
        assert_eq!(p["hardwareId"], "HW-7");
    }

    #[test]
    fn faults_and_garbage_are_errors() {
        let fault = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error"><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:NotAuthorized</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">Sender not authorized</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#;
        let err = parse_response(fault.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "unauthorized");
        assert!(err.to_string().contains("Sender not authorized"), "{err}");
        assert_eq!(
            parse_response(b"not xml <<<").unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            parse_response(b"<a><b></b></a>").unwrap_err().reason(),
            "malformed"
        );
        let deep = "<a>".repeat(100);
        assert!(parse_response(deep.as_bytes()).is_err());
        assert_eq!(
            parse_response(&vec![b' '; MAX_RESPONSE_BYTES + 1]).unwrap_err(),
            InfoError::TooLarge
        );
    }

    #[test]
    fn credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "username: admin\npassword: 's3cr:et'\n").unwrap();
        let c = Credentials::load(&good).unwrap();
        assert_eq!(c.username, "admin");
        assert!(!format!("{c:?}").contains("s3cr"));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "user: admin\npassword: hunter2\n").unwrap();
        let err = format!("{:#}", Credentials::load(&bad).unwrap_err());
        assert!(!err.contains("hunter2"), "{err}");
        assert!(Credentials::load(&dir.path().join("missing")).is_err());
    }
}
