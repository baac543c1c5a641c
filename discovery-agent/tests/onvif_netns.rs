//! The ONVIF handler against a simulated camera in a network namespace joined by a veth pair: the
//! camera answers Probes, announces itself with Hello and leaves with Bye. Needs root and `ip`.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Running;
use edgewasm_discovery_agent::config::OnvifConfig;
use edgewasm_discovery_agent::onvif::OnvifHandler;
use edgewasm_discovery_agent::wsdiscovery::{self, Body};
use edgewasm_discovery_agent::{DeviceEvent, metrics};

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2 must be installed; the test needs root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair; removed on drop, even when the test fails.
struct Netns {
    name: String,
    host_if: String,
    host_addr: Ipv4Addr,
    camera_addr: Ipv4Addr,
}

impl Netns {
    fn create() -> Self {
        let pid = std::process::id();
        let subnet = 100 + (pid % 100) as u8;
        let ns = Self {
            name: format!("ewagent-{pid}"),
            host_if: format!("ewah{pid}"),
            host_addr: Ipv4Addr::new(169, 254, subnet, 1),
            camera_addr: Ipv4Addr::new(169, 254, subnet, 2),
        };
        let peer = format!("ewac{pid}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_addr),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", ns.camera_addr),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A UDP socket created inside the namespace (setns affects only the calling thread).
    fn socket(&self, f: impl FnOnce() -> std::io::Result<UdpSocket> + Send + 'static) -> UdpSocket {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("opening the namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the namespace");
            f().expect("camera socket")
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The simulated camera: answers Probes for the identities it currently has, on its own thread.
struct Camera {
    socket: UdpSocket,
    answering: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: Ipv4Addr,
}

fn endpoint_xml(id: &str, addr: Ipv4Addr) -> String {
    format!(
        "<a:EndpointReference><a:Address>{id}</a:Address></a:EndpointReference>\
         <d:Types>dn:NetworkVideoTransmitter</d:Types>\
         <d:Scopes>onvif://www.onvif.org/name/SimCam onvif://www.onvif.org/hardware/Sim-1</d:Scopes>\
         <d:XAddrs>http://{addr}:8000/onvif/device_service</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>"
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
        let socket = ns.socket(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, wsdiscovery::PORT).into())?;
            s.join_multicast_v4(&wsdiscovery::MULTICAST_ADDR, &addr)?;
            s.set_multicast_if_v4(&addr)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s.into())
        });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_in_a_network_namespace() {
    let ns = Netns::create();
    let camera = Camera::start(&ns, &[CAM1]);
    let cfg = OnvifConfig {
        interfaces: vec![ns.host_if.clone()],
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
    // The probe round closes with the full set.
    let ev = h
        .wait_for("the first round's full set", |e| {
            matches!(e, DeviceEvent::Resync { .. })
        })
        .await;
    assert!(
        matches!(&ev, DeviceEvent::Resync { devices, .. } if devices.len() == 1 && devices[0].identity == CAM1)
    );

    // A second camera announces itself: no need to wait for a probe.
    camera.hello(CAM2);
    h.wait_for(
        "camera 2 from its Hello",
        |e| matches!(e, DeviceEvent::Seen(d) if d.identity == CAM2),
    )
    .await;

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
