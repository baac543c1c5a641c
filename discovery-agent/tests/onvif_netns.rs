//! The ONVIF handler against a simulated camera in a network namespace joined by a veth pair: the
//! camera answers Probes, announces itself with Hello and leaves with Bye, and its device service
//! answers GetDeviceInformation after checking the WS-UsernameToken digest. Needs root and `ip`.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Running;
use common::netns::Netns;
use edgewasm_discovery_agent::config::OnvifConfig;
use edgewasm_discovery_agent::onvif::OnvifHandler;
use edgewasm_discovery_agent::wsdiscovery::{self, Body};
use edgewasm_discovery_agent::{DeviceEvent, metrics};

/// The simulated camera: answers Probes for the identities it currently has, on its own thread.
struct Camera {
    socket: UdpSocket,
    answering: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: Ipv4Addr,
}

/// Each simulated camera has its own device service path (and password).
fn service_path(id: &str) -> &'static str {
    if id == CAM2 {
        "/onvif/cam2"
    } else {
        "/onvif/device_service"
    }
}

fn endpoint_xml(id: &str, addr: Ipv4Addr) -> String {
    format!(
        "<a:EndpointReference><a:Address>{id}</a:Address></a:EndpointReference>\
         <d:Types>dn:NetworkVideoTransmitter</d:Types>\
         <d:Scopes>onvif://www.onvif.org/name/SimCam onvif://www.onvif.org/hardware/Sim-1</d:Scopes>\
         <d:XAddrs>http://{addr}:{SERVICE_PORT}{}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>",
        service_path(id)
    )
}

fn envelope(action: &str, relates_to: Option<&str>, body: &str) -> String {
    let relates = relates_to
        .map(|r| format!("<a:RelatesTo>{r}</a:RelatesTo>"))
        .unwrap_or_default();
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/{action}</a:Action><a:MessageID>urn:uuid:{}</a:MessageID>{relates}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        uuid::Uuid::new_v4()
    )
}

impl Camera {
    fn start(ns: &Netns, ids: &[&str]) -> Self {
        let addr = ns.camera_addr;
        let socket = ns.wsdiscovery_socket();
        let answering = Arc::new(Mutex::new(
            ids.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, answering, stop) =
                (socket.try_clone().unwrap(), answering.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(msg) = wsdiscovery::parse(&buf[..n]) else {
                        continue;
                    };
                    if !matches!(msg.body, Body::Probe(_)) {
                        continue;
                    }
                    let ids = answering.lock().unwrap().clone();
                    let matches: String = ids
                        .iter()
                        .map(|id| {
                            ["<d:ProbeMatch>", &endpoint_xml(id, addr), "</d:ProbeMatch>"].concat()
                        })
                        .collect();
                    let reply = envelope(
                        "ProbeMatches",
                        msg.message_id.as_deref(),
                        &format!("<d:ProbeMatches>{matches}</d:ProbeMatches>"),
                    );
                    let _ = socket.send_to(reply.as_bytes(), from);
                }
            })
        };
        Self {
            socket,
            answering,
            stop,
            thread: Some(thread),
            addr,
        }
    }

    fn multicast(&self, msg: &str) {
        let to = SocketAddr::from((wsdiscovery::MULTICAST_ADDR, wsdiscovery::PORT));
        self.socket
            .send_to(msg.as_bytes(), to)
            .expect("camera multicast");
    }

    fn hello(&self, id: &str) {
        self.answering.lock().unwrap().push(id.to_string());
        self.multicast(&envelope(
            "Hello",
            None,
            &format!("<d:Hello>{}</d:Hello>", endpoint_xml(id, self.addr)),
        ));
    }

    fn bye(&self, id: &str) {
        self.answering.lock().unwrap().retain(|i| i != id);
        self.multicast(&envelope(
            "Bye",
            None,
            &format!("<d:Bye><a:EndpointReference><a:Address>{id}</a:Address></a:EndpointReference></d:Bye>"),
        ));
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const CAM1: &str = "urn:uuid:5f1c0e7a-0000-4000-8000-000000000001";
const CAM2: &str = "urn:uuid:5f1c0e7a-0000-4000-8000-000000000002";
const SERVICE_PORT: u16 = 8000;
const USER: &str = "admin";
/// CAM1's password, the one in the agent's credentials file.
const PASSWORD: &str = "s3cret";
/// CAM2's password, which the agent does not know.
const OTHER_PASSWORD: &str = "other";

/// The cameras' ONVIF device service: GetDeviceInformation over HTTP, answered only when the
/// UsernameToken's PasswordDigest matches the password of the requested path.
struct DeviceService {
    addr: Ipv4Addr,
    accepted: Arc<Mutex<u32>>,
    rejected: Arc<Mutex<u32>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The text of the first element with this local name (`<wsse:Password Type="...">text<`).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    xml.match_indices('<').find_map(|(i, _)| {
        let tag = &xml[i + 1..];
        let end = tag.find(['>', ' ', '/'])?;
        let local = tag[..end].rsplit(':').next()?;
        if local != name {
            return None;
        }
        let text = &tag[tag.find('>')? + 1..];
        Some(&text[..text.find('<')?])
    })
}

/// The simulated cameras' clocks run this far ahead (no NTP at the edge), and they accept a token
/// only when its Created is within a minute of their own time, as real cameras do.
const CAMERA_CLOCK_AHEAD: i64 = 3 * 3600;
const CREATED_TOLERANCE: i64 = 60;

fn camera_now() -> i64 {
    jiff::Timestamp::now().as_second() + CAMERA_CLOCK_AHEAD
}

/// The GetSystemDateAndTime answer with the camera's (skewed) clock.
fn date_and_time_response() -> String {
    let t = jiff::Timestamp::from_second(camera_now())
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><env:Body><tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"#,
            "<tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:UTCDateTime>",
            "<tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second></tt:Time>",
            "<tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day></tt:Date>",
            "</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></env:Body></env:Envelope>"
        ),
        t.hour(),
        t.minute(),
        t.second(),
        t.year(),
        t.month(),
        t.day()
    )
}

/// Checks the digest the way a camera does: SHA-1 over the decoded nonce, Created and the password,
/// with Created close to the camera's clock.
fn digest_ok(request: &str, password: &str) -> bool {
    use base64::Engine as _;
    use sha1::Digest as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some(user), Some(digest), Some(nonce), Some(created)) = (
        element(request, "Username"),
        element(request, "Password"),
        element(request, "Nonce"),
        element(request, "Created"),
    ) else {
        return false;
    };
    let Ok(nonce) = b64.decode(nonce) else {
        return false;
    };
    let mut h = sha1::Sha1::new();
    h.update(&nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    let fresh = created
        .parse::<jiff::Timestamp>()
        .is_ok_and(|t| (t.as_second() - camera_now()).abs() <= CREATED_TOLERANCE);
    user == USER
        && request.contains("#PasswordDigest")
        && b64.encode(h.finalize()) == digest
        && fresh
}

const INFO_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><env:Body><tds:GetDeviceInformationResponse><tds:Manufacturer>SimVendor</tds:Manufacturer><tds:Model>SimCam-1000</tds:Model><tds:FirmwareVersion>2.4.1</tds:FirmwareVersion><tds:SerialNumber>SN-0001</tds:SerialNumber><tds:HardwareId>HW-77</tds:HardwareId></tds:GetDeviceInformationResponse></env:Body></env:Envelope>"#;
const NOT_AUTHORIZED: &str = r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">Sender not Authorized</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;

impl DeviceService {
    fn start(ns: &Netns) -> Self {
        let addr = ns.camera_addr;
        let listener = ns.socket(move || TcpListener::bind((addr, SERVICE_PORT)));
        let accepted = Arc::new(Mutex::new(0));
        let rejected = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, rejected, stop) = (accepted.clone(), rejected.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let Some((path, body)) = read_request(&mut conn) else {
                        continue;
                    };
                    let password = if path == service_path(CAM2) {
                        OTHER_PASSWORD
                    } else {
                        PASSWORD
                    };
                    let (status, answer) = if body.contains("GetSystemDateAndTime") {
                        ("200 OK", date_and_time_response())
                    } else {
                        let ok =
                            body.contains("GetDeviceInformation") && digest_ok(&body, password);
                        *(if ok { &accepted } else { &rejected }).lock().unwrap() += 1;
                        if ok {
                            ("200 OK", INFO_RESPONSE.to_owned())
                        } else {
                            ("400 Bad Request", NOT_AUTHORIZED.to_owned())
                        }
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: application/soap+xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            })
        };
        Self {
            addr,
            accepted,
            rejected,
            stop,
            thread: Some(thread),
        }
    }
}

/// The path and body of one HTTP request.
fn read_request(conn: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((path, String::from_utf8_lossy(&buf[head_end..]).into_owned()))
}

impl Drop for DeviceService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((self.addr, SERVICE_PORT)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_in_a_network_namespace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_discovery_agent=debug")
        .with_test_writer()
        .try_init();
    let ns = Netns::create("ewa", 100);
    let camera = Camera::start(&ns, &[CAM1]);
    let service = DeviceService::start(&ns);
    let secrets = tempfile::tempdir().unwrap();
    let credentials = secrets.path().join("credentials.yaml");
    std::fs::write(
        &credentials,
        format!("username: {USER}\npassword: {PASSWORD}\n"),
    )
    .unwrap();
    let cfg = OnvifConfig {
        interfaces: vec![ns.host_if.clone()],
        credentials_file: Some(credentials),
        probe_interval_seconds: 3600,
        ip_ranges: vec!["169.254.0.0/16".into()],
        ..OnvifConfig::default()
    };
    let mut h = Running::start(Box::new(OnvifHandler::new(cfg)));

    // The initial Probe finds the camera.
    let ev = h
        .wait_for(
            "camera 1 from the probe",
            |e| matches!(e, DeviceEvent::Seen(d) if d.identity == CAM1),
        )
        .await;
    let DeviceEvent::Seen(d) = ev else {
        unreachable!()
    };
    assert_eq!(d.handler, "onvif");
    assert_eq!(d.properties["ip"], ns.camera_addr.to_string());
    assert_eq!(d.properties["port"], "8000");
    assert_eq!(
        d.properties["xaddrs"],
        format!("http://{}:8000/onvif/device_service", ns.camera_addr)
    );
    assert_eq!(d.properties["name"], "SimCam");
    assert!(
        d.properties.get("mac").is_some_and(|m| m.len() == 17),
        "MAC from the neighbour table: {:?}",
        d.properties
    );
    // GetDeviceInformation with the right digest adds what the camera says about itself.
    let ev = h
        .wait_for("camera 1 with its device information", |e| {
            matches!(e, DeviceEvent::Seen(d) if d.identity == CAM1 && d.properties.contains_key("manufacturer"))
        })
        .await;
    let DeviceEvent::Seen(d) = ev else {
        unreachable!()
    };
    let p = &d.properties;
    assert_eq!(p["manufacturer"], "SimVendor");
    assert_eq!(
        p["model"], "SimCam-1000",
        "the camera's own model beats its scope"
    );
    assert_eq!(p["firmwareVersion"], "2.4.1");
    assert_eq!(p["serial"], "SN-0001");
    assert_eq!(p["hardwareId"], "HW-77");
    assert_eq!(p["name"], "SimCam");
    assert!(*service.accepted.lock().unwrap() >= 1);
    // The probe round closes with the full set.
    let ev = h
        .wait_for("the first round's full set", |e| {
            matches!(e, DeviceEvent::Resync { .. })
        })
        .await;
    assert!(
        matches!(&ev, DeviceEvent::Resync { devices, .. } if devices.len() == 1 && devices[0].identity == CAM1 && devices[0].properties["serial"] == "SN-0001")
    );

    // A second camera announces itself: no need to wait for a probe. Its password is not the one
    // the agent has: the camera refuses, the refusal is counted, the camera is published anyway.
    let refused_before = metrics::probe_failure_count("onvif", "unauthorized");
    camera.hello(CAM2);
    let ev = h
        .wait_for(
            "camera 2 from its Hello",
            |e| matches!(e, DeviceEvent::Seen(d) if d.identity == CAM2),
        )
        .await;
    assert!(matches!(&ev, DeviceEvent::Seen(d) if !d.properties.contains_key("manufacturer")));
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while metrics::probe_failure_count("onvif", "unauthorized") == refused_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused GetDeviceInformation is counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        *service.rejected.lock().unwrap() >= 1,
        "the camera checked the digest"
    );

    // A spoofed Bye for an unknown device and hostile datagrams are counted and ignored.
    let unknown_before = metrics::bad_input_count("onvif", "unknown-bye");
    let malformed_before = metrics::bad_input_count("onvif", "malformed")
        + metrics::bad_input_count("onvif", "no-body");
    camera.bye("urn:uuid:nobody");
    camera.multicast("<s:Envelope><s:Body><d:Hello><<<&&&");
    camera.multicast("not xml at all");
    camera.bye(CAM1);
    let ev = h
        .wait_for("camera 1 leaving", |e| {
            matches!(e, DeviceEvent::Gone { .. })
        })
        .await;
    assert_eq!(
        ev,
        DeviceEvent::Gone {
            handler: "onvif".into(),
            identity: CAM1.into()
        }
    );
    assert_eq!(
        metrics::bad_input_count("onvif", "unknown-bye") - unknown_before,
        1
    );
    assert_eq!(
        metrics::bad_input_count("onvif", "malformed")
            + metrics::bad_input_count("onvif", "no-body")
            - malformed_before,
        2
    );
    h.stop().await.unwrap();
}
