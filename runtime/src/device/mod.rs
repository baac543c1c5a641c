//! `edgewasm:device`: the granted device behind the `camera`, `sensor` and `events` interfaces.
//!
//! An instance reaches only the device in its grants, through a backend chosen from the device's
//! properties the first time the guest calls an interface. Every failure (no device, a device of another
//! kind, an unreachable one) is a `device-error` value for the guest, never a trap.

mod camera;
mod frames;
mod iio;
mod onvif;
mod onvif_media;
mod sensor;
mod serial;
mod v4l2;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgewasm_api::{GrantedDevice, Grants};
use tokio::sync::{OnceCell, watch};

use crate::network::NetPolicy;
use crate::world::bindings::edgewasm::device::types::{DeviceInfo, DeviceKind};
use crate::world::bindings::edgewasm::device::{events, types};
use crate::world::{Credentials, WorldState};

pub(crate) use crate::world::bindings::edgewasm::device::types::DeviceError;
pub(crate) use camera::Camera;
pub(crate) use sensor::Sensor;

/// Tells running instances that their device went away; given to the instance in
/// [`crate::WorldSpec::events`] and kept by the caller (the supervisor that watches devices).
#[derive(Clone, Debug)]
pub struct DeviceEvents {
    gone: Arc<watch::Sender<bool>>,
}

impl Default for DeviceEvents {
    fn default() -> Self {
        Self {
            gone: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl DeviceEvents {
    /// Reports that the device is gone: guests waiting in `events.next-event` get `gone`.
    pub fn gone(&self) {
        self.gone.send_replace(true);
    }

    /// Whether [`DeviceEvents::gone`] was called.
    pub fn is_gone(&self) -> bool {
        *self.gone.borrow()
    }
}

/// The granted device of one instance and its backends, opened on first use.
pub(crate) struct DeviceCtx {
    device: Option<GrantedDevice>,
    /// Host paths the instance was granted: a backend only opens one of these.
    granted_paths: Vec<String>,
    net: Arc<NetPolicy>,
    credentials: Option<Credentials>,
    events: DeviceEvents,
    /// Opened backends; a failed open is not kept, so a device that comes back is opened next time.
    camera: OnceCell<Arc<dyn Camera>>,
    sensor: OnceCell<Arc<dyn Sensor>>,
}

impl DeviceCtx {
    pub(crate) fn new(
        grants: &Grants,
        net: Arc<NetPolicy>,
        credentials: Option<Credentials>,
        events: DeviceEvents,
    ) -> Self {
        Self {
            device: grants.device.clone(),
            granted_paths: grants.paths.iter().map(|p| p.host.clone()).collect(),
            net,
            credentials,
            events,
            camera: OnceCell::new(),
            sensor: OnceCell::new(),
        }
    }

    fn info(&self) -> Result<DeviceInfo, DeviceError> {
        let device = self.device.as_ref().ok_or_else(not_granted)?;
        Ok(DeviceInfo {
            name: device.name.clone(),
            handler: device.handler.clone(),
            kind: kind_of(device),
            properties: device
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The granted device if it is of `kind`.
    fn device_of(&self, kind: DeviceKind) -> Result<&GrantedDevice, DeviceError> {
        let device = self.device.as_ref().ok_or_else(not_granted)?;
        let actual = kind_of(device);
        if actual != kind {
            return Err(DeviceError::NotGranted(format!(
                "the granted device {} is {}, not {}",
                device.name,
                kind_name(actual),
                kind_name(kind)
            )));
        }
        Ok(device)
    }

    /// `path` as a granted host path, or `not-granted`.
    fn granted_path(&self, path: &str) -> Result<PathBuf, DeviceError> {
        if self.granted_paths.iter().any(|p| p == path) {
            Ok(PathBuf::from(path))
        } else {
            Err(DeviceError::NotGranted(format!(
                "{path} is not among the paths granted to this instance"
            )))
        }
    }

    async fn camera(&self) -> Result<Arc<dyn Camera>, DeviceError> {
        self.camera
            .get_or_try_init(|| camera::open(self))
            .await
            .cloned()
    }

    async fn sensor(&self) -> Result<Arc<dyn Sensor>, DeviceError> {
        self.sensor
            .get_or_try_init(|| sensor::open(self))
            .await
            .cloned()
    }

    /// Marks the device gone when a backend finds it missing.
    fn note(&self, result: &Result<impl Sized, DeviceError>) {
        if let Err(DeviceError::Unavailable(msg)) = result
            && msg.contains("gone")
        {
            self.events.gone();
        }
    }
}

fn not_granted() -> DeviceError {
    DeviceError::NotGranted("no device was granted to this instance".into())
}

fn kind_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Camera => "a camera",
        DeviceKind::Sensor => "a sensor",
        DeviceKind::Other => "neither a camera nor a sensor",
    }
}

/// Property values of `kind` that name a sensor.
const SENSOR_KINDS: &[&str] = &[
    "sensor",
    "temperature",
    "humidity",
    "pressure",
    "light",
    "accelerometer",
    "gyroscope",
    "magnetometer",
    "voltage",
    "current",
    "serial-sensor",
];

/// What kind of device discovery found, from its handler and properties (an explicit `kind` property
/// wins).
pub(crate) fn kind_of(device: &GrantedDevice) -> DeviceKind {
    let prop = |k: &str| device.properties.get(k).map(String::as_str);
    match prop("kind") {
        Some("camera" | "video") => return DeviceKind::Camera,
        Some(k) if SENSOR_KINDS.contains(&k) => return DeviceKind::Sensor,
        Some(_) => return DeviceKind::Other,
        None => {}
    }
    if device.handler == "onvif" || prop("snapshotUri").is_some() {
        return DeviceKind::Camera;
    }
    let subsystem = prop("subsystem").unwrap_or_default();
    let devnode = prop("devnode").unwrap_or_default();
    if subsystem == "video4linux" || devnode.starts_with("/dev/video") {
        return DeviceKind::Camera;
    }
    if subsystem == "iio"
        || prop("syspath").is_some_and(|p| p.contains("iio:device"))
        || subsystem == "tty"
    {
        return DeviceKind::Sensor;
    }
    DeviceKind::Other
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An I/O error on a device path as a `device-error`.
pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> DeviceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            DeviceError::Unavailable(format!("{} is gone: {e}", path.display()))
        }
        std::io::ErrorKind::PermissionDenied => {
            DeviceError::AccessDenied(format!("{}: {e}", path.display()))
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            DeviceError::Unavailable(format!("{}: {e}", path.display()))
        }
        _ => DeviceError::Io(format!("{}: {e}", path.display())),
    }
}

type Outcome<T> = wasmtime::Result<Result<T, DeviceError>>;

impl types::Host for WorldState {}

impl crate::world::bindings::edgewasm::device::camera::Host for WorldState {
    async fn describe(&mut self) -> Outcome<camera::CameraInfo> {
        let device = Arc::clone(&self.device);
        let result = match device.camera().await {
            Ok(c) => c.describe().await,
            Err(e) => Err(e),
        };
        device.note(&result);
        Ok(result)
    }

    async fn capture(&mut self) -> Outcome<camera::Frame> {
        let device = Arc::clone(&self.device);
        let result = match device.camera().await {
            Ok(c) => c.capture().await,
            Err(e) => Err(e),
        };
        device.note(&result);
        Ok(result)
    }
}

impl crate::world::bindings::edgewasm::device::sensor::Host for WorldState {
    async fn channels(&mut self) -> Outcome<Vec<String>> {
        let device = Arc::clone(&self.device);
        let result = match device.sensor().await {
            Ok(s) => s.channels().await,
            Err(e) => Err(e),
        };
        device.note(&result);
        Ok(result)
    }

    async fn read(&mut self) -> Outcome<Vec<sensor::Reading>> {
        let device = Arc::clone(&self.device);
        let result = match device.sensor().await {
            Ok(s) => s.read().await,
            Err(e) => Err(e),
        };
        device.note(&result);
        Ok(result)
    }
}

impl events::Host for WorldState {
    async fn current(&mut self) -> Outcome<DeviceInfo> {
        Ok(self.device.info())
    }

    async fn next_event(
        &mut self,
        timeout_ms: u32,
    ) -> wasmtime::Result<Option<events::DeviceEvent>> {
        if !self.appeared_seen
            && let Ok(info) = self.device.info()
        {
            self.appeared_seen = true;
            return Ok(Some(events::DeviceEvent::Appeared(info)));
        }
        let name = self
            .device
            .device
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        let mut gone = self.device.events.gone.subscribe();
        let wait = async {
            if self.gone_seen || self.device.device.is_none() {
                return std::future::pending().await;
            }
            gone.wait_for(|g| *g).await.is_ok()
        };
        match tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), wait).await {
            Ok(true) => {
                self.gone_seen = true;
                Ok(Some(events::DeviceEvent::Gone(name)))
            }
            Ok(false) | Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(handler: &str, props: &[(&str, &str)]) -> GrantedDevice {
        GrantedDevice {
            name: "d".into(),
            handler: handler.into(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    fn world(grants: &Grants, events: DeviceEvents) -> WorldState {
        let net = Arc::new(NetPolicy::from_grants(&[]).unwrap());
        let spec = crate::WorldSpec {
            events,
            ..crate::WorldSpec::default()
        };
        WorldState::new(&crate::world::WorldShared::new(grants, &[], net, spec).unwrap())
    }

    #[tokio::test]
    async fn events_say_appeared_first_then_gone_once() {
        use events::Host as _;
        let grants = Grants {
            device: Some(device("udev", &[("devnode", "/dev/video0")])),
            ..Grants::default()
        };
        let events = DeviceEvents::default();
        let mut state = world(&grants, events.clone());
        let first = state.next_event(0).await.unwrap();
        assert!(
            matches!(&first, Some(events::DeviceEvent::Appeared(info)) if info.name == "d" && info.kind == DeviceKind::Camera),
            "{first:?}"
        );
        assert_eq!(state.next_event(0).await.unwrap(), None);
        let waiting = tokio::spawn(async move {
            let gone = state.next_event(60_000).await.unwrap();
            (gone, state.next_event(0).await.unwrap())
        });
        events.gone();
        let (gone, after) = waiting.await.unwrap();
        assert_eq!(gone, Some(events::DeviceEvent::Gone("d".into())));
        assert_eq!(after, None);

        // Nothing granted: no events, and `current` says why.
        let mut state = world(&Grants::default(), DeviceEvents::default());
        assert_eq!(state.next_event(0).await.unwrap(), None);
        assert!(matches!(
            state.current().await.unwrap(),
            Err(DeviceError::NotGranted(_))
        ));
    }

    #[test]
    fn kinds_come_from_handler_and_properties() {
        let cases = [
            (
                device("onvif", &[("xaddrs", "http://x/onvif")]),
                DeviceKind::Camera,
            ),
            (
                device("udev", &[("devnode", "/dev/video0")]),
                DeviceKind::Camera,
            ),
            (
                device("udev", &[("subsystem", "video4linux")]),
                DeviceKind::Camera,
            ),
            (
                device("udev", &[("syspath", "/sys/bus/iio/devices/iio:device0")]),
                DeviceKind::Sensor,
            ),
            (device("udev", &[("subsystem", "tty")]), DeviceKind::Sensor),
            (
                device("static", &[("kind", "camera"), ("devnode", "x")]),
                DeviceKind::Camera,
            ),
            (
                device("static", &[("kind", "temperature")]),
                DeviceKind::Sensor,
            ),
            (
                device("static", &[("kind", "plc"), ("devnode", "/dev/video9")]),
                DeviceKind::Other,
            ),
            (
                device("opcua", &[("endpointUrl", "opc.tcp://x")]),
                DeviceKind::Other,
            ),
        ];
        for (d, kind) in cases {
            assert_eq!(kind_of(&d), kind, "{d:?}");
        }
    }
}
