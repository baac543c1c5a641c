//! GetDeviceInformation over real HTTP on loopback: unauthenticated without credentials, and the
//! answers cameras give when they refuse or misbehave.

use std::collections::BTreeMap;

use edgewasm_discovery_agent::onvif_info::{DeviceInfoClient, InfoError, MAX_RESPONSE_BYTES};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ANSWER: &str = r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Body><tds:GetDeviceInformationResponse><tds:Manufacturer>Open</tds:Manufacturer><tds:Model>Anon-1</tds:Model><tds:FirmwareVersion>1</tds:FirmwareVersion><tds:SerialNumber>S</tds:SerialNumber><tds:HardwareId>H</tds:HardwareId></tds:GetDeviceInformationResponse></s:Body></s:Envelope>"#;

/// Serves one request with `status` and `body`; returns the URL and the request it received.
async fn serve_once(
    status: &'static str,
    body: String,
) -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/onvif/device_service",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // The request is small: read until the SOAP envelope is complete.
        while !String::from_utf8_lossy(&request).contains("</s:Envelope>") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-request");
            request.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The client may stop reading an oversized answer early.
        let _ = conn.write_all(head.as_bytes()).await;
        let _ = conn.write_all(body.as_bytes()).await;
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, task)
}

#[tokio::test]
async fn without_credentials_the_request_is_unauthenticated() {
    let (url, request) = serve_once("200 OK", ANSWER.into()).await;
    let info = DeviceInfoClient::new(None)
        .unwrap()
        .fetch(&url)
        .await
        .unwrap();
    let want: BTreeMap<String, String> = [
        ("manufacturer", "Open"),
        ("model", "Anon-1"),
        ("firmwareVersion", "1"),
        ("serial", "S"),
        ("hardwareId", "H"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    assert_eq!(info, want);
    let request = request.await.unwrap();
    assert!(
        request.starts_with("POST /onvif/device_service "),
        "{request}"
    );
    assert!(request.contains("GetDeviceInformation"));
    assert!(!request.contains("UsernameToken"), "{request}");
}

#[tokio::test]
async fn refusals_and_misbehaving_cameras_are_errors_with_a_reason() {
    let client = DeviceInfoClient::new(None).unwrap();
    let (url, _) = serve_once("401 Unauthorized", String::new()).await;
    assert_eq!(
        client.fetch(&url).await.unwrap_err().reason(),
        "unauthorized"
    );
    let (url, _) = serve_once("500 Internal Server Error", "oops".into()).await;
    assert_eq!(client.fetch(&url).await.unwrap_err(), InfoError::Http(500));
    let (url, _) = serve_once("200 OK", "x".repeat(MAX_RESPONSE_BYTES + 1)).await;
    assert_eq!(client.fetch(&url).await.unwrap_err(), InfoError::TooLarge);
    let (url, _) = serve_once("200 OK", "<html>not SOAP</html>".into()).await;
    assert_eq!(client.fetch(&url).await.unwrap_err().reason(), "malformed");
    // Nothing listens there (the listener is dropped before the call).
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/onvif", l.local_addr().unwrap())
    };
    assert_eq!(
        client.fetch(&url).await.unwrap_err().reason(),
        "unreachable"
    );
}

#[tokio::test]
async fn an_unreadable_credentials_file_is_reported_without_calling_the_camera() {
    let dir = tempfile::tempdir().unwrap();
    let client = DeviceInfoClient::new(Some(dir.path().join("missing.yaml"))).unwrap();
    let err = client.fetch("http://127.0.0.1:9/onvif").await.unwrap_err();
    assert_eq!(err.reason(), "credentials", "{err}");
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}
