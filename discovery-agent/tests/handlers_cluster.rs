//! The whole agent path against the real CRD apiserver (edgewasm-testkit): the real udev, ONVIF and
//! static handlers feed one publisher, wired as `agent::run` does. A video device in a fake sysfs
//! tree, a simulated camera answering in a network namespace, and an entry in a static file each
//! become a `Device` with their properties and this node, Present=True; a remove uevent, the camera's
//! Bye and the entry's removal from the file each turn it Present=False. Needs root and `ip`.
//!
//! One test function: the three handlers share one publisher, like the agent's.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use common::netns::Netns;
use common::sysfs::FakeSys;
use edgewasm_api::{Device, device_name};
use edgewasm_discovery_agent::config::OnvifConfig;
use edgewasm_discovery_agent::onvif::OnvifHandler;
use edgewasm_discovery_agent::publisher::{Publisher, PublisherConfig};
use edgewasm_discovery_agent::static_file::StaticHandler;
use edgewasm_discovery_agent::udev::{UdevHandler, encode_udev_uevent};
use edgewasm_discovery_agent::wsdiscovery::{self, Body};
use edgewasm_discovery_agent::{Approval, DeviceEvent, Handler};
use edgewasm_testkit::{Cluster, eventually};
use kube::api::Api;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The handlers and the publisher, wired as the agent wires them; stopped when dropped.
struct Agent {
    stop: CancellationToken,
    handlers: tokio::task::JoinSet<Result<()>>,
    publisher: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Agent {
    fn start(client: kube::Client, node: &str, handlers: Vec<Box<dyn Handler>>) -> Self {
        let mut cfg = PublisherConfig::new(node);
        for h in &handlers {
            cfg.approvals.insert(h.name().to_string(), Approval::Auto);
        }
        cfg.batch_delay = Duration::from_millis(20);
        cfg.max_backoff = Duration::from_millis(500);
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel::<DeviceEvent>(1024);
        let mut set = tokio::task::JoinSet::new();
        for h in handlers {
            set.spawn(h.run(tx.clone(), stop.clone()));
        }
        drop(tx);
        let publisher = tokio::spawn(Publisher::new(client, cfg).run(rx, stop.clone()));
        Self {
            stop,
            handlers: set,
            publisher: Some(publisher),
        }
    }

    async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        while let Some(res) = self.handlers.join_next().await {
            res.context("handler task")?
                .context("handler stops cleanly")?;
        }
        self.publisher
            .take()
            .unwrap()
            .await
            .context("publisher task")?
            .context("publisher stops cleanly")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The simulated camera: answers Probes while it is present, on its own thread, and says Bye.
struct Camera {
    socket: UdpSocket,
    id: String,
    addr: Ipv4Addr,
    present: Arc<Mutex<bool>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
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
    fn xaddr(&self) -> String {
        format!("http://{}:8000/onvif/device_service", self.addr)
    }

    fn start(ns: &Netns, id: &str) -> Self {
        let addr = ns.camera_addr;
        let socket = ns.wsdiscovery_socket();
        let mut camera = Self {
            socket,
            id: id.to_string(),
            addr,
            present: Arc::new(Mutex::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        let socket = camera.socket.try_clone().unwrap();
        let (present, stop) = (camera.present.clone(), camera.stop.clone());
        let matches = format!(
            "<d:ProbeMatches><d:ProbeMatch>{}</d:ProbeMatch></d:ProbeMatches>",
            camera.endpoint_xml()
        );
        camera.thread = Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(msg) = wsdiscovery::parse(&buf[..n]) else {
                    continue;
                };
                if matches!(msg.body, Body::Probe(_)) && *present.lock().unwrap() {
                    let reply = envelope("ProbeMatches", msg.message_id.as_deref(), &matches);
                    let _ = socket.send_to(reply.as_bytes(), from);
                }
            }
        }));
        camera
    }

    fn endpoint_xml(&self) -> String {
        format!(
            "<a:EndpointReference><a:Address>{}</a:Address></a:EndpointReference>\
             <d:Types>dn:NetworkVideoTransmitter</d:Types>\
             <d:Scopes>onvif://www.onvif.org/name/SimCam onvif://www.onvif.org/hardware/Sim-1</d:Scopes>\
             <d:XAddrs>{}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>",
            self.id,
            self.xaddr()
        )
    }

    fn bye(&self) {
        *self.present.lock().unwrap() = false;
        let msg = envelope(
            "Bye",
            None,
            &format!(
                "<d:Bye><a:EndpointReference><a:Address>{}</a:Address></a:EndpointReference></d:Bye>",
                self.id
            ),
        );
        let to = SocketAddr::from((wsdiscovery::MULTICAST_ADDR, wsdiscovery::PORT));
        self.socket
            .send_to(msg.as_bytes(), to)
            .expect("camera multicast");
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

fn condition(d: &Device, type_: &str) -> Option<String> {
    d.condition(type_).map(|c| c.status.clone())
}

fn present(d: &Device) -> bool {
    condition(d, "Present").as_deref() == Some("True")
}

fn absent(d: &Device) -> bool {
    condition(d, "Present").as_deref() == Some("False")
}

/// Polls the Device until `check` holds, failing with the last object seen.
async fn wait_device(
    api: &Api<Device>,
    name: &str,
    what: &str,
    check: impl Fn(&Device) -> bool,
) -> Result<Device> {
    let check = &check;
    let result = eventually(what, TIMEOUT, || async move {
        Ok(api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|d| check(&d)))
    })
    .await;
    if let Err(e) = result {
        let last = api.get_opt(name).await.ok().flatten();
        anyhow::bail!("{e:#}: device {name} never matched ({what}); last seen: {last:#?}");
    }
    Ok(api.get(name).await?)
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_publish_devices_to_the_apiserver() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("edgewasm_discovery_agent=debug")
        .with_test_writer()
        .try_init();
    let cluster = Cluster::shared_with_crds().await?;
    let api: Api<Device> = Api::all(cluster.client().await?);
    let run = std::process::id();
    let node = format!("hc-node-{run}");

    // udev: a fake sysfs tree with a webcam; uevents come from the test.
    let sys = FakeSys::webcam(&format!("video{run}"));
    let (feed, uevents) = mpsc::channel(16);
    // ONVIF: a camera answering Probes in a network namespace.
    let ns = Netns::create("ewh", 150);
    let camera = Camera::start(&ns, &format!("urn:uuid:5f1c0e7a-0000-4000-8000-{run:012}"));
    let onvif = OnvifConfig {
        interfaces: vec![ns.host_if.clone()],
        device_information: false,
        probe_interval_seconds: 3600,
        ip_ranges: vec!["169.254.0.0/16".into()],
        ..OnvifConfig::default()
    };
    // static: a file with two entries.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("devices.yaml");
    let (sensor, keep) = (format!("hc-sensor-{run}"), format!("hc-keep-{run}"));
    write_atomically(
        &file,
        &format!("- id: {sensor}\n  properties: {{gpio: '17'}}\n- id: {keep}\n"),
    );

    let agent = Agent::start(
        cluster.client().await?,
        &node,
        vec![
            Box::new(UdevHandler::with_feed(sys.config(), uevents)),
            Box::new(OnvifHandler::new(onvif)),
            Box::new(StaticHandler::new(file.clone())),
        ],
    );

    // Each device appears with its properties, on this node, present.
    let on_node = |d: &Device| present(d) && d.spec.nodes == [node.clone()];
    let webcam = device_name("udev", &sys.video);
    let d = wait_device(&api, &webcam, "the webcam published", on_node).await?;
    assert_eq!(d.spec.handler, "udev");
    let p = &d.spec.properties;
    assert_eq!(
        p["devnode"],
        sys.dev().join(format!("video{run}")).display().to_string()
    );
    assert_eq!(p["subsystem"], "video4linux");
    assert_eq!(p["vendorId"], "046d");
    assert_eq!(p["productId"], "0825");
    assert_eq!(p["serial"], "CAFE01");
    assert_eq!(p["model"], "Webcam C270");
    assert!(d.spec.approved, "udev is auto-approved here");

    let cam = device_name("onvif", &camera.id);
    let d = wait_device(&api, &cam, "the camera published", on_node).await?;
    assert_eq!(d.spec.handler, "onvif");
    let p = &d.spec.properties;
    assert_eq!(p["ip"], ns.camera_addr.to_string());
    assert_eq!(p["port"], "8000");
    assert_eq!(p["xaddrs"], camera.xaddr());
    assert_eq!(p["name"], "SimCam");

    let sensor_name = device_name("static", &sensor);
    let d = wait_device(&api, &sensor_name, "the static entry published", on_node).await?;
    assert_eq!(d.spec.handler, "static");
    assert_eq!(d.spec.properties["gpio"], "17");
    wait_device(
        &api,
        &device_name("static", &keep),
        "the other entry",
        on_node,
    )
    .await?;

    // Each goes away: Present=False and no node left.
    let gone = |d: &Device| absent(d) && d.spec.nodes.is_empty();
    feed.send(encode_udev_uevent(
        "remove",
        &sys.video,
        "video4linux",
        &[("DEVNAME", &format!("/dev/video{run}")), ("SEQNUM", "2")],
    ))
    .await?;
    wait_device(&api, &webcam, "the webcam removed", gone).await?;

    camera.bye();
    wait_device(&api, &cam, "the camera's Bye", gone).await?;

    write_atomically(&file, &format!("- id: {keep}\n"));
    wait_device(&api, &sensor_name, "the entry removed", gone).await?;
    // The others are untouched.
    let d = api.get(&device_name("static", &keep)).await?;
    assert!(on_node(&d), "the remaining entry stays present: {d:#?}");

    agent.stop().await
}
