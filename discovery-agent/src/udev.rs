//! The `udev` handler: local devices from an initial sysfs scan, then add/change/remove uevents from
//! a `NETLINK_KOBJECT_UEVENT` socket (udevd's group when udevd runs, the kernel's otherwise); no polling.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::mpsc::{Receiver, Sender};
use tokio_util::sync::CancellationToken;

use crate::config::UdevConfig;
use crate::{DeviceEvent, DiscoveredDevice, Handler};

/// Handler name of local devices.
pub const HANDLER: &str = "udev";
/// Netlink multicast group of the kernel's uevents.
pub const GROUP_KERNEL: u32 = 1;
/// Netlink multicast group udevd re-broadcasts processed events on (device node created, `ID_*` set).
pub const GROUP_UDEV: u32 = 2;
/// Largest uevent datagram accepted (the kernel's limit is 2048 bytes of environment; udevd's larger).
pub const MAX_UEVENT_BYTES: usize = 64 * 1024;
/// The libudev monitor header's magic, in network byte order on the wire.
const UDEV_MONITOR_MAGIC: u32 = 0xfeed_cafe;
/// How deep the search for a USB parent walks up sysfs.
const MAX_PARENT_DEPTH: usize = 32;

/// One kernel or udev event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, ...
    pub action: String,
    /// Path below the sysfs root, starting with `/devices/`.
    pub devpath: String,
    pub subsystem: String,
    /// Every `KEY=VALUE` of the event (including `ACTION`, `DEVPATH`, `SUBSYSTEM`).
    pub properties: BTreeMap<String, String>,
}

/// Why a datagram was not a usable uevent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UeventError {
    #[error("datagram larger than {MAX_UEVENT_BYTES} bytes")]
    TooLarge,
    #[error("libudev header malformed: {0}")]
    BadHeader(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("not a uevent")]
    Unrecognised,
}

impl UeventError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "oversized",
            Self::BadHeader(_) => "bad-header",
            Self::Missing(_) => "incomplete",
            Self::Unrecognised => "unrecognised",
        }
    }
}

/// Parse one netlink datagram: a kernel uevent (`action@devpath\0KEY=VALUE\0...`) or a libudev
/// monitor message (`libudev\0` header, properties at the offset the header gives).
pub fn parse_uevent(buf: &[u8]) -> Result<Uevent, UeventError> {
    if buf.len() > MAX_UEVENT_BYTES {
        return Err(UeventError::TooLarge);
    }
    let body = if buf.starts_with(b"libudev\0") {
        let word = |at: usize| -> Result<[u8; 4], UeventError> {
            buf.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(UeventError::BadHeader("truncated"))
        };
        if u32::from_be_bytes(word(8)?) != UDEV_MONITOR_MAGIC {
            return Err(UeventError::BadHeader("bad magic"));
        }
        // header_size (12), properties_off (16), properties_len (20): host byte order.
        let off = u32::from_ne_bytes(word(16)?) as usize;
        let len = u32::from_ne_bytes(word(20)?) as usize;
        let end = off
            .checked_add(len)
            .ok_or(UeventError::BadHeader("offset overflow"))?;
        if off < 28 || end > buf.len() {
            return Err(UeventError::BadHeader("properties outside datagram"));
        }
        &buf[off..end]
    } else {
        // Kernel format: a summary `action@devpath` first, then the environment.
        let first = buf.split(|&b| b == 0).next().unwrap_or_default();
        if !first.contains(&b'@') {
            return Err(UeventError::Unrecognised);
        }
        &buf[first.len().min(buf.len())..]
    };
    let mut properties = BTreeMap::new();
    for field in body.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        if let Some((k, v)) = field.split_once('=')
            && !k.is_empty()
        {
            properties.insert(k.to_string(), v.to_string());
        }
    }
    let take = |k: &'static str| properties.get(k).cloned().ok_or(UeventError::Missing(k));
    let action = take("ACTION")?;
    let devpath = take("DEVPATH")?;
    let subsystem = take("SUBSYSTEM")?;
    if !devpath.starts_with('/') || devpath.split('/').any(|c| c == "..") {
        return Err(UeventError::Missing("a valid DEVPATH"));
    }
    Ok(Uevent {
        action,
        devpath,
        subsystem,
        properties,
    })
}

/// Encode a uevent in the kernel's format (for test feeds).
pub fn encode_kernel_uevent(
    action: &str,
    devpath: &str,
    subsystem: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out =
        format!("{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM={subsystem}\0");
    for (k, v) in extra {
        let _ = write!(out, "{k}={v}\0");
    }
    out.into_bytes()
}

/// Encode a uevent in libudev's monitor format (for test feeds).
pub fn encode_udev_uevent(
    action: &str,
    devpath: &str,
    subsystem: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut props = format!("ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM={subsystem}\0");
    for (k, v) in extra {
        let _ = write!(props, "{k}={v}\0");
    }
    let header_size: u32 = 40;
    let mut out = b"libudev\0".to_vec();
    out.extend_from_slice(&UDEV_MONITOR_MAGIC.to_be_bytes());
    out.extend_from_slice(&header_size.to_ne_bytes());
    out.extend_from_slice(&header_size.to_ne_bytes());
    out.extend_from_slice(&(props.len() as u32).to_ne_bytes());
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(props.as_bytes());
    out
}

/// Where uevents come from.
pub enum UeventSource {
    /// The netlink socket (group chosen by whether udevd runs).
    Netlink,
    /// Datagrams from a test.
    Feed(Receiver<Vec<u8>>),
}

/// Local device discovery.
pub struct UdevHandler {
    cfg: UdevConfig,
    source: UeventSource,
}

impl UdevHandler {
    pub fn new(cfg: UdevConfig) -> Self {
        Self {
            cfg,
            source: UeventSource::Netlink,
        }
    }

    /// A handler reading datagrams from `feed` instead of netlink.
    pub fn with_feed(cfg: UdevConfig, feed: Receiver<Vec<u8>>) -> Self {
        Self {
            cfg,
            source: UeventSource::Feed(feed),
        }
    }
}

/// The scan and event state: which devices this handler reported.
struct Tracker {
    cfg: UdevConfig,
    sysfs: PathBuf,
    known: BTreeMap<String, DiscoveredDevice>,
}

impl Tracker {
    fn new(cfg: UdevConfig) -> Self {
        let sysfs =
            std::fs::canonicalize(&cfg.sysfs_root).unwrap_or_else(|_| cfg.sysfs_root.clone());
        Self {
            cfg,
            sysfs,
            known: BTreeMap::new(),
        }
    }

    /// Every matching device currently in sysfs.
    fn scan(&mut self) -> Vec<DiscoveredDevice> {
        let mut found = BTreeMap::new();
        for subsystem in &self.cfg.subsystems {
            for dir in [
                self.sysfs.join("class").join(subsystem),
                self.sysfs.join("bus").join(subsystem).join("devices"),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let Ok(real) = std::fs::canonicalize(entry.path()) else {
                        crate::metrics::bad_input(HANDLER, "vanished");
                        continue;
                    };
                    let Ok(rel) = real.strip_prefix(&self.sysfs) else {
                        continue;
                    };
                    let devpath = format!("/{}", rel.display());
                    let Ok(text) = std::fs::read_to_string(real.join("uevent")) else {
                        crate::metrics::bad_input(HANDLER, "vanished");
                        continue;
                    };
                    let mut props: BTreeMap<String, String> = text
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    props.insert("SUBSYSTEM".into(), subsystem.clone());
                    if let Some(d) = self.describe(&devpath, subsystem, &props) {
                        found.insert(devpath, d);
                    }
                }
            }
        }
        self.known = found;
        self.known.values().cloned().collect()
    }

    /// The events one uevent causes.
    fn apply(&mut self, ev: &Uevent) -> Vec<DeviceEvent> {
        let gone = |d: DiscoveredDevice| DeviceEvent::Gone {
            handler: HANDLER.into(),
            identity: d.identity,
        };
        let mut out = Vec::new();
        match ev.action.as_str() {
            "remove" => out.extend(self.known.remove(&ev.devpath).map(gone)),
            "add" | "change" | "bind" | "move" => {
                // A rename is the old device leaving and a new one arriving.
                if ev.action == "move"
                    && let Some(old) = ev.properties.get("DEVPATH_OLD")
                {
                    out.extend(self.known.remove(old).map(gone));
                }
                if !self.cfg.subsystems.contains(&ev.subsystem) {
                    return out;
                }
                match self.describe(&ev.devpath, &ev.subsystem, &ev.properties) {
                    Some(d) if self.known.get(&ev.devpath) == Some(&d) => {}
                    Some(d) => {
                        self.known.insert(ev.devpath.clone(), d.clone());
                        out.push(DeviceEvent::Seen(d));
                    }
                    // A change that makes a device fail the filters takes it away.
                    None => out.extend(self.known.remove(&ev.devpath).map(gone)),
                }
            }
            _ => {}
        }
        out
    }

    /// The device for a sysfs entry, if it has a device node and passes the filters.
    fn describe(
        &self,
        devpath: &str,
        subsystem: &str,
        props: &BTreeMap<String, String>,
    ) -> Option<DiscoveredDevice> {
        let devname = props.get("DEVNAME")?;
        let devname = devname
            .strip_prefix("/dev/")
            .unwrap_or(devname)
            .trim_start_matches('/');
        if devname.is_empty() || devname.split('/').any(|c| c == "..") {
            return None;
        }
        let mut p = BTreeMap::new();
        p.insert(
            "devnode".to_string(),
            self.cfg.dev_root.join(devname).display().to_string(),
        );
        p.insert(
            "syspath".to_string(),
            self.cfg
                .sysfs_root
                .join(devpath.trim_start_matches('/'))
                .display()
                .to_string(),
        );
        p.insert("subsystem".to_string(), subsystem.to_string());
        let usb = usb_attributes(&self.sysfs, devpath);
        let pick = |udev_key: &str, attr: &str| {
            props
                .get(udev_key)
                .cloned()
                .or_else(|| usb.get(attr).cloned())
                .filter(|v| !v.is_empty())
        };
        for (key, udev_key, attr) in [
            ("vendorId", "ID_VENDOR_ID", "idVendor"),
            ("productId", "ID_MODEL_ID", "idProduct"),
            ("serial", "ID_SERIAL_SHORT", "serial"),
            ("manufacturer", "ID_VENDOR", "manufacturer"),
            ("model", "ID_MODEL", "product"),
        ] {
            if let Some(v) = pick(udev_key, attr) {
                p.insert(key.to_string(), v);
            }
        }
        if let Some(v) = props.get("ID_PATH") {
            p.insert("idPath".to_string(), v.clone());
        }
        let matches_any = |list: &[String], key: &str| {
            list.is_empty()
                || p.get(key)
                    .is_some_and(|v| list.iter().any(|w| w.eq_ignore_ascii_case(v)))
        };
        if !matches_any(&self.cfg.vendor_ids, "vendorId")
            || !matches_any(&self.cfg.product_ids, "productId")
        {
            return None;
        }
        if !self
            .cfg
            .properties
            .iter()
            .all(|(k, v)| props.get(k) == Some(v) || p.get(k) == Some(v))
        {
            return None;
        }
        Some(DiscoveredDevice {
            handler: HANDLER.into(),
            identity: devpath.to_string(),
            properties: p,
            healthy: true,
        })
    }
}

/// `idVendor`, `idProduct`, `serial`, `manufacturer`, `product` of the nearest USB ancestor. Entries that
/// vanish while read are simply missing.
fn usb_attributes(sysfs: &Path, devpath: &str) -> BTreeMap<String, String> {
    let mut dir = sysfs.join(devpath.trim_start_matches('/'));
    for _ in 0..MAX_PARENT_DEPTH {
        if !dir.starts_with(sysfs) || dir == sysfs {
            break;
        }
        if let Ok(vendor) = std::fs::read_to_string(dir.join("idVendor")) {
            let mut out = BTreeMap::new();
            out.insert("idVendor".to_string(), vendor.trim().to_string());
            for attr in ["idProduct", "serial", "manufacturer", "product"] {
                if let Ok(v) = std::fs::read_to_string(dir.join(attr)) {
                    out.insert(attr.to_string(), v.trim().to_string());
                }
            }
            return out;
        }
        if !dir.pop() {
            break;
        }
    }
    BTreeMap::new()
}

#[async_trait]
impl Handler for UdevHandler {
    fn name(&self) -> &str {
        HANDLER
    }

    async fn run(
        self: Box<Self>,
        events: Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self { cfg, source } = *self;
        let mut tracker = Tracker::new(cfg);
        // Open the event source before scanning so no event between scan and subscription is lost.
        let mut source = match source {
            UeventSource::Feed(rx) => Source::Feed(rx),
            UeventSource::Netlink => Source::Netlink(netlink::Socket::open()?),
        };
        let devices = tracker.scan();
        tracing::info!(devices = devices.len(), "udev initial scan");
        if events
            .send(DeviceEvent::Resync {
                handler: HANDLER.into(),
                devices,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
        loop {
            let datagram = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                d = source.next() => d,
            };
            let buf = match datagram {
                Ok(Some(buf)) => buf,
                Ok(None) => return Ok(()),
                Err(Overflow) => {
                    // The kernel dropped events for us: the only safe state is a fresh scan.
                    tracing::warn!("uevent socket overflowed; rescanning sysfs");
                    crate::metrics::bad_input(HANDLER, "overflow");
                    let devices = tracker.scan();
                    if events
                        .send(DeviceEvent::Resync {
                            handler: HANDLER.into(),
                            devices,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                    continue;
                }
            };
            let ev = match parse_uevent(&buf) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring uevent datagram");
                    crate::metrics::bad_input(HANDLER, e.reason());
                    continue;
                }
            };
            for out in tracker.apply(&ev) {
                tracing::info!(action = %ev.action, devpath = %ev.devpath, "udev device change");
                if events.send(out).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The socket lost events.
struct Overflow;

enum Source {
    Netlink(netlink::Socket),
    Feed(Receiver<Vec<u8>>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, Overflow> {
        match self {
            Self::Feed(rx) => Ok(rx.recv().await),
            Self::Netlink(s) => s.recv().await,
        }
    }
}

mod netlink {
    //! The uevent netlink socket.

    use std::os::fd::OwnedFd;

    use anyhow::Context as _;
    use nix::sys::socket::{AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
    use tokio::io::unix::AsyncFd;

    use super::{GROUP_KERNEL, GROUP_UDEV, MAX_UEVENT_BYTES, Overflow};

    pub(super) struct Socket {
        fd: AsyncFd<OwnedFd>,
        buf: Vec<u8>,
    }

    impl Socket {
        pub(super) fn open() -> anyhow::Result<Self> {
            // udevd announces processed events (device node present, ID_* filled in) on its own group;
            // without udevd (many containers, minimal nodes) only the kernel's raw events exist.
            let udevd = std::path::Path::new("/run/udev/control").exists();
            let group = if udevd { GROUP_UDEV } else { GROUP_KERNEL };
            let fd = nix::sys::socket::socket(
                AddressFamily::Netlink,
                SockType::Datagram,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkKObjectUEvent,
            )
            .context("opening NETLINK_KOBJECT_UEVENT socket")?;
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))
                .context("sizing uevent socket buffer")?;
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &NetlinkAddr::new(0, 1 << (group - 1)),
            )
            .context("subscribing to uevents (needs the host network namespace)")?;
            tracing::info!(
                group = if udevd { "udev" } else { "kernel" },
                "listening for uevents"
            );
            // `AsyncFd::new` is deprecated because a borrowed fd could be closed behind tokio's back; this
            // `OwnedFd` is owned by the `AsyncFd` alone, and the safe alternative needs `unsafe`.
            #[allow(deprecated)]
            let fd = AsyncFd::new(fd).context("registering uevent socket")?;
            Ok(Self {
                fd,
                buf: vec![0; MAX_UEVENT_BYTES + 1],
            })
        }

        pub(super) async fn recv(&mut self) -> Result<Option<Vec<u8>>, Overflow> {
            loop {
                let Ok(mut guard) = self.fd.readable().await else {
                    return Ok(None);
                };
                let res = guard.try_io(|fd| {
                    nix::sys::socket::recv(
                        std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()),
                        &mut self.buf,
                        nix::sys::socket::MsgFlags::empty(),
                    )
                    .map_err(std::io::Error::from)
                });
                match res {
                    Err(_would_block) => {}
                    Ok(Ok(n)) => return Ok(Some(self.buf[..n].to_vec())),
                    Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                        return Err(Overflow);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "uevent socket read failed");
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_and_udev_formats() {
        let k = encode_kernel_uevent(
            "add",
            "/devices/x/video4linux/video0",
            "video4linux",
            &[("DEVNAME", "video0")],
        );
        let ev = parse_uevent(&k).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.properties["DEVNAME"], "video0");
        let u = encode_udev_uevent(
            "remove",
            "/devices/y",
            "tty",
            &[("DEVNAME", "/dev/ttyUSB0")],
        );
        let ev = parse_uevent(&u).unwrap();
        assert_eq!(
            (ev.action.as_str(), ev.subsystem.as_str()),
            ("remove", "tty")
        );
    }

    #[test]
    fn hostile_datagrams_are_rejected() {
        assert_eq!(parse_uevent(b""), Err(UeventError::Unrecognised));
        assert!(parse_uevent(b"libudev\0").is_err());
        let mut bad = encode_udev_uevent("add", "/devices/y", "tty", &[]);
        bad[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse_uevent(&bad), Err(UeventError::BadHeader(_))));
        assert!(parse_uevent(b"add@/x\0ACTION=add\0").is_err());
        assert!(
            parse_uevent(&encode_kernel_uevent(
                "add",
                "/devices/../../etc",
                "tty",
                &[]
            ))
            .is_err()
        );
        assert_eq!(
            parse_uevent(&vec![b'a'; MAX_UEVENT_BYTES + 1]),
            Err(UeventError::TooLarge)
        );
        assert!(parse_uevent(&[0xff, b'@', 0, 0xfe]).is_err());
    }
}
