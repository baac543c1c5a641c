//! The `edgewasm:device` world end to end: the same camera-sampler binary capturing from a simulated ONVIF
//! camera (in a network namespace of its own) and from a recorded-frame stand-in for a V4L2 node; the same
//! sensor-logger binary reading a fake IIO tree and a pty acting as a serial sensor; wasi:config and
//! wasi:keyvalue round trips (the store survives a restart); and an ungranted device as an error value.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgewasm_api::{Access, GrantedDevice, NetworkGrant, PathGrant, Protocol, onvif};
use edgewasm_runtime::{
    Credentials, ExitReason, ExitStatus, Grants, InstanceSpec, Stdio, WorldSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Netns, example, host};

/// What one run printed, and how it ended.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "{:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

async fn run(wasm: &str, mut spec: InstanceSpec, world: WorldSpec) -> Outcome {
    let out = tempfile::tempdir().unwrap();
    spec.stdio = Stdio {
        stdin: None,
        stdout: Some(out.path().join("stdout")),
        stderr: Some(out.path().join("stderr")),
    };
    let program = host().load(&example(wasm)).await.expect("load");
    let instance = host()
        .start_with(program, spec, world)
        .await
        .expect("start");
    let status = tokio::time::timeout(Duration::from_mins(1), instance.wait())
        .await
        .expect("instance finished");
    let read = |f: &str| std::fs::read_to_string(out.path().join(f)).unwrap_or_default();
    Outcome {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
    }
}

fn device(name: &str, handler: &str, props: &[(&str, &str)]) -> GrantedDevice {
    GrantedDevice {
        name: name.into(),
        handler: handler.into(),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn spec(name: &str, grants: Grants) -> InstanceSpec {
    InstanceSpec {
        grants,
        ..InstanceSpec::new(name)
    }
}

fn path_grant(host: &Path, access: Access) -> PathGrant {
    PathGrant {
        host: host.to_str().unwrap().to_string(),
        guest: None,
        access,
    }
}

fn config(pairs: &[(&str, &str)]) -> WorldSpec {
    WorldSpec {
        config: pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ..WorldSpec::default()
    }
}

/// A minimal JPEG: SOI, SOF0 for `width`x`height`, EOI.
fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08];
    v.extend(height.to_be_bytes());
    v.extend(width.to_be_bytes());
    v.extend([0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
    v
}

/// A simulated ONVIF camera: serves `GET /onvif/snapshot` as a JPEG to `user:secret` (HTTP Basic), on the
/// loopback of a network namespace. Stops on drop.
struct OnvifCamera {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OnvifCamera {
    fn start(ns: &Netns, frame: Vec<u8>) -> Self {
        let path = ns.path();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(path).expect("open netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let frame = Arc::new(frame);
                let serve = async {
                    loop {
                        let (conn, _) = listener.accept().await.unwrap();
                        tokio::spawn(Self::answer(conn, Arc::clone(&frame)));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("camera listening");
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn answer(mut conn: tokio::net::TcpStream, frame: Arc<Vec<u8>>) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let header_end = loop {
            if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&request[..header_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while request.len() < header_end + length {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let body = String::from_utf8_lossy(&request[header_end..]).into_owned();
        let local = conn.local_addr().unwrap();
        let response = if head.starts_with("post /onvif/") {
            Self::soap(&head, &body, local)
        } else {
            Self::snapshot(&head, &frame)
        };
        let _ = conn.write_all(&response).await;
        let _ = conn.shutdown().await;
    }

    /// The device and media services: GetCapabilities, GetProfiles, GetSnapshotUri, for `user` only.
    fn soap(head: &str, body: &str, addr: SocketAddr) -> Vec<u8> {
        let envelope = |inner: String| {
            format!(
                r#"<?xml version="1.0"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:trt="http://www.onvif.org/ver10/media/wsdl"><env:Body>{inner}</env:Body></env:Envelope>"#
            )
        };
        let authorized = body.contains("<wsse:Username>user</wsse:Username>")
            && body.contains("#PasswordDigest")
            && created_is_fresh(body);
        let (status, xml) = if head.starts_with("post /onvif/device_service ")
            && body.contains("GetSystemDateAndTime")
        {
            ("200 OK", envelope(date_and_time(camera_now())))
        } else if !authorized {
            ("400 Bad Request", envelope("<env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code></env:Fault>".into()))
        } else if head.starts_with("post /onvif/device_service ")
            && body.contains("GetCapabilities")
        {
            (
                "200 OK",
                envelope(format!(
                    "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Media><tt:XAddr>http://{addr}/onvif/media_service</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>"
                )),
            )
        } else if head.starts_with("post /onvif/media_service ") && body.contains("GetProfiles") {
            ("200 OK", envelope(r#"<trt:GetProfilesResponse><trt:Profiles token="profile_1" fixed="true"><tt:Name>main</tt:Name></trt:Profiles></trt:GetProfilesResponse>"#.into()))
        } else if head.starts_with("post /onvif/media_service ")
            && body.contains("<ProfileToken>profile_1</ProfileToken>")
        {
            (
                "200 OK",
                envelope(format!(
                    "<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>http://{addr}/onvif/snapshot</tt:Uri></trt:MediaUri></trt:GetSnapshotUriResponse>"
                )),
            )
        } else {
            ("400 Bad Request", envelope("<env:Fault/>".into()))
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/soap+xml\r\ncontent-length: {}\r\n\r\n{xml}",
            xml.len()
        )
        .into_bytes()
    }

    fn snapshot(head: &str, frame: &[u8]) -> Vec<u8> {
        // base64("user:secret")
        let authorized = head.contains("authorization: basic dxnlcjpzzwnyzxq=");
        if !head.starts_with("get /onvif/snapshot ") {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()
        } else if !authorized {
            b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"cam\"\r\ncontent-length: 0\r\n\r\n".to_vec()
        } else {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
                frame.len()
            )
            .into_bytes();
            r.extend_from_slice(frame);
            r
        }
    }
}

/// The simulated camera's clock runs this far ahead (no NTP at the edge); it accepts a token only when
/// its Created is within a minute of that clock, as real cameras do.
const CAMERA_CLOCK_AHEAD: i64 = 3 * 3600;

fn camera_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_secs()).unwrap() + CAMERA_CLOCK_AHEAD
}

fn created_is_fresh(body: &str) -> bool {
    let Some(created) = body
        .split_once("<wsu:Created>")
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(c, _)| c)
    else {
        return false;
    };
    let now = camera_now();
    (now - 60..=now + 60).any(|t| onvif::created(t) == created)
}

/// A GetSystemDateAndTimeResponse for `unix` seconds, in the schema's UTCDateTime fields.
fn date_and_time(unix: i64) -> String {
    // onvif::created gives YYYY-MM-DDThh:mm:ssZ; the fields are its slices (leading zeros are valid).
    let c = onvif::created(unix);
    format!(
        "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>Manual</tt:DateTimeType><tt:UTCDateTime><tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second></tt:Time><tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
        &c[11..13],
        &c[14..16],
        &c[17..19],
        &c[0..4],
        &c[5..7],
        &c[8..10],
    )
}

impl Drop for OnvifCamera {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_camera_binary_captures_from_onvif_and_from_a_video_node() {
    // (a) An ONVIF camera in its own network namespace, reached through its snapshot URI.
    let ns = Netns::create("ewdev");
    let camera = OnvifCamera::start(&ns, jpeg(640, 480));
    let onvif = Grants {
        device: Some(device(
            "cam-onvif",
            "onvif",
            &[
                (
                    "xaddrs",
                    &format!("http://{}/onvif/device_service", camera.addr),
                ),
                (
                    "snapshotUri",
                    &format!("http://{}/onvif/snapshot", camera.addr),
                ),
            ],
        )),
        network: vec![NetworkGrant {
            host: camera.addr.ip().to_string(),
            port: Some(camera.addr.port()),
            protocol: Protocol::Tcp,
        }],
        ..Grants::default()
    };
    let in_ns = |grants: Grants| InstanceSpec {
        netns: Some(ns.path()),
        ..spec("camera-sampler", grants)
    };
    let credentials = Credentials {
        username: "user".into(),
        password: "secret".into(),
    };
    let out = run(
        "camera-sampler",
        in_ns(onvif.clone()),
        WorldSpec {
            credentials: Some(credentials.clone()),
            ..config(&[("samples", "2")])
        },
    )
    .await;
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0]["backend"], "onvif");
    assert_eq!(lines[0]["device"], "cam-onvif");
    assert_eq!(lines[0]["format"], "jpeg");
    assert_eq!(lines[0]["width"], 640);
    assert_eq!(lines[0]["height"], 480);
    assert_eq!(lines[0]["bytes"], jpeg(640, 480).len());

    // Without the credentials the camera refuses, and the guest gets that as an error value.
    let out = run("camera-sampler", in_ns(onvif.clone()), WorldSpec::default()).await;
    assert_eq!(out.status.code, 1, "{}", out.stderr);
    assert_eq!(out.status.reason, ExitReason::Exited);
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);

    // The snapshot URI's host must be a granted peer.
    let out = run(
        "camera-sampler",
        in_ns(Grants {
            network: Vec::new(),
            ..onvif
        }),
        WorldSpec {
            credentials: Some(credentials.clone()),
            ..WorldSpec::default()
        },
    )
    .await;
    assert_eq!(out.status.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not granted") && out.stderr.contains("camera host"),
        "{}",
        out.stderr
    );

    // A camera discovered with only its device service address: the host asks it for the snapshot URI
    // (GetCapabilities, GetProfiles, GetSnapshotUri) with the granted credentials.
    let discovered = Grants {
        device: Some(device(
            "cam-discovered",
            "onvif",
            &[(
                "xaddrs",
                &format!("http://{}/onvif/device_service", camera.addr),
            )],
        )),
        network: vec![NetworkGrant {
            host: camera.addr.ip().to_string(),
            port: Some(camera.addr.port()),
            protocol: Protocol::Tcp,
        }],
        ..Grants::default()
    };
    let out = run(
        "camera-sampler",
        in_ns(discovered.clone()),
        WorldSpec {
            credentials: Some(credentials.clone()),
            ..config(&[("samples", "1")])
        },
    )
    .await;
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines[0]["backend"], "onvif", "{}", out.stdout);
    assert_eq!(lines[0]["width"], 640);
    let out = run("camera-sampler", in_ns(discovered), WorldSpec::default()).await;
    assert_eq!(out.status.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);

    // (b) The same binary on a video node: here a recorded raw frame standing in for /dev/video0.
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("video0");
    std::fs::write(&node, vec![0x80u8; 8 * 4 * 2]).unwrap();
    let v4l2 = Grants {
        device: Some(device(
            "usb-cam",
            "udev",
            &[
                ("subsystem", "video4linux"),
                ("devnode", node.to_str().unwrap()),
                ("width", "8"),
                ("height", "4"),
                ("format", "yuyv"),
            ],
        )),
        paths: vec![path_grant(&node, Access::ReadWrite)],
        ..Grants::default()
    };
    let out = run(
        "camera-sampler",
        spec("camera-sampler", v4l2),
        config(&[("samples", "1")]),
    )
    .await;
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["backend"], "file");
    assert_eq!(lines[0]["device"], "usb-cam");
    assert_eq!(lines[0]["format"], "yuyv");
    assert_eq!(
        (lines[0]["width"].clone(), lines[0]["height"].clone()),
        (8.into(), 4.into())
    );
    assert_eq!(lines[0]["bytes"], 64);
}

#[tokio::test]
async fn one_sensor_binary_reads_iio_channels_and_a_serial_line() {
    // A fake IIO device folder.
    let dir = tempfile::tempdir().unwrap();
    let iio = dir.path().join("iio:device0");
    std::fs::create_dir(&iio).unwrap();
    for (file, value) in [
        ("name", "bme280"),
        ("in_temp_input", "21500"),
        ("in_humidityrelative_raw", "4520"),
        ("in_humidityrelative_scale", "10"),
        ("in_pressure_input", "101.325"),
    ] {
        std::fs::write(iio.join(file), format!("{value}\n")).unwrap();
    }
    let grants = Grants {
        device: Some(device(
            "iio0",
            "udev",
            &[("subsystem", "iio"), ("syspath", iio.to_str().unwrap())],
        )),
        paths: vec![path_grant(&iio, Access::ReadOnly)],
        ..Grants::default()
    };
    let out = run(
        "sensor-logger",
        spec("sensor-logger", grants),
        config(&[("samples", "1")]),
    )
    .await;
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    // The device's name comes through wasi:config (`device.name`).
    assert_eq!(lines[0]["sensor"], "iio0");
    let readings: BTreeMap<String, (f64, String)> = lines[0]["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap().to_string(),
                (
                    r["value"].as_f64().unwrap(),
                    r["unit"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(readings["temp"], (21.5, "°C".to_string()));
    assert_eq!(readings["humidityrelative"], (45.2, "%".to_string()));
    assert_eq!(readings["pressure"], (101.325, "kPa".to_string()));

    // A pty acting as a serial sensor: a banner line, then readings.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut termios = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut termios);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &termios).unwrap();
    let tty = std::fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        pty.slave.as_raw_fd()
    }))
    .unwrap();
    let mut master = std::fs::File::from(pty.master);
    master
        .write_all(b"sensor v1.2 ready\ntemp=19.25 C, hum=40 %\ntemp=19.5 C, hum=41 %\n")
        .unwrap();
    let grants = Grants {
        device: Some(device(
            "serial0",
            "udev",
            &[("subsystem", "tty"), ("devnode", tty.to_str().unwrap())],
        )),
        paths: vec![path_grant(&tty, Access::ReadWrite)],
        ..Grants::default()
    };
    let out = run(
        "sensor-logger",
        spec("sensor-logger", grants),
        config(&[("samples", "2")]),
    )
    .await;
    out.assert_ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0]["readings"][0]["channel"], "temp");
    assert_eq!(lines[0]["value"], 19.25);
    assert_eq!(lines[0]["readings"][0]["unit"], "C");
    assert_eq!(lines[0]["readings"][1]["value"], 40.0);
    assert_eq!(lines[1]["value"], 19.5);
    drop(pty.slave);
}

#[tokio::test]
async fn keyvalue_state_survives_a_restart_and_config_reaches_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("frame.jpg");
    std::fs::write(&frame, jpeg(32, 16)).unwrap();
    let grants = Grants {
        device: Some(device(
            "cam0",
            "static",
            &[("kind", "camera"), ("devnode", frame.to_str().unwrap())],
        )),
        paths: vec![path_grant(&frame, Access::ReadOnly)],
        ..Grants::default()
    };
    let world = || WorldSpec {
        keyvalue_dir: Some(dir.path().join("state/keyvalue")),
        ..config(&[("samples", "2")])
    };
    let first = run("camera-sampler", spec("kv-1", grants.clone()), world()).await;
    first.assert_ok();
    let totals = |o: &Outcome| -> Vec<u64> {
        o.lines()
            .iter()
            .map(|l| l["total"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(totals(&first), [1, 2], "{}", first.stdout);
    assert_eq!(first.lines()[0]["format"], "jpeg");
    assert_eq!(first.lines()[0]["width"], 32);

    // A new instance (a restart) continues the count from the persisted store.
    let second = run("camera-sampler", spec("kv-2", grants.clone()), world()).await;
    second.assert_ok();
    assert_eq!(totals(&second), [3, 4], "{}", second.stdout);
    assert!(dir.path().join("state/keyvalue/default.json").exists());

    // Without a state dir, each instance starts empty.
    let memory = run(
        "camera-sampler",
        spec("kv-3", grants),
        config(&[("samples", "1")]),
    )
    .await;
    assert_eq!(totals(&memory), [1], "{}", memory.stdout);
}

#[tokio::test]
async fn an_ungranted_device_is_an_error_value_not_a_trap() {
    // Nothing granted: the camera interface answers `not-granted`.
    let out = run(
        "camera-sampler",
        spec("camera-sampler", Grants::default()),
        WorldSpec::default(),
    )
    .await;
    assert_eq!(
        (out.status.code, out.status.reason),
        (1, ExitReason::Exited),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("no camera: no device was granted"),
        "{}",
        out.stderr
    );

    // A sensor granted, a camera asked for.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in_temp_input"), "20000\n").unwrap();
    let sensor = Grants {
        device: Some(device(
            "iio0",
            "udev",
            &[
                ("subsystem", "iio"),
                ("syspath", dir.path().to_str().unwrap()),
            ],
        )),
        paths: vec![path_grant(dir.path(), Access::ReadOnly)],
        ..Grants::default()
    };
    let out = run(
        "camera-sampler",
        spec("camera-sampler", sensor),
        WorldSpec::default(),
    )
    .await;
    assert_eq!(
        (out.status.code, out.status.reason),
        (1, ExitReason::Exited)
    );
    assert!(
        out.stderr
            .contains("the granted device iio0 is a sensor, not a camera"),
        "{}",
        out.stderr
    );

    // A device whose node was not granted as a path: the host does not open it on the guest's behalf.
    let node = dir.path().join("video0");
    std::fs::write(&node, [0u8; 16]).unwrap();
    let no_path = Grants {
        device: Some(device(
            "cam",
            "static",
            &[("kind", "camera"), ("devnode", node.to_str().unwrap())],
        )),
        ..Grants::default()
    };
    let out = run(
        "camera-sampler",
        spec("camera-sampler", no_path),
        WorldSpec::default(),
    )
    .await;
    assert_eq!(
        (out.status.code, out.status.reason),
        (1, ExitReason::Exited)
    );
    assert!(
        out.stderr.contains("is not among the paths granted"),
        "{}",
        out.stderr
    );

    // A camera granted, a sensor asked for, no fallback path: also an error value.
    let camera = Grants {
        device: Some(device(
            "cam",
            "onvif",
            &[("snapshotUri", "http://192.0.2.1/s.jpg")],
        )),
        ..Grants::default()
    };
    let out = run(
        "sensor-logger",
        spec("sensor-logger", camera),
        WorldSpec::default(),
    )
    .await;
    assert_eq!(
        (out.status.code, out.status.reason),
        (1, ExitReason::Exited)
    );
    assert!(
        out.stderr.contains("is a camera, not a sensor"),
        "{}",
        out.stderr
    );
}
