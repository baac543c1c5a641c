//! The udev handler against a fake sysfs tree and a scripted uevent feed.

mod common;

use common::Running;
use common::sysfs::FakeSys;
use edgewasm_discovery_agent::udev::{UdevHandler, encode_kernel_uevent, encode_udev_uevent};
use edgewasm_discovery_agent::{DeviceEvent, metrics};
use tokio::sync::mpsc;

#[tokio::test]
async fn scan_then_add_change_remove_and_burst() {
    let sys = FakeSys::webcam("video0");
    let (feed, rx) = mpsc::channel(2048);
    let mut h = Running::start(Box::new(UdevHandler::with_feed(sys.config(), rx)));

    let DeviceEvent::Resync { handler, devices } = h.next().await else {
        panic!("expected the initial scan")
    };
    assert_eq!(handler, "udev");
    assert_eq!(devices.len(), 1, "{devices:#?}");
    let cam = &devices[0];
    assert_eq!(cam.identity, sys.video);
    assert_eq!(
        cam.properties["devnode"],
        sys.dev().join("video0").display().to_string()
    );
    assert_eq!(
        cam.properties["syspath"],
        sys.sys()
            .join(sys.video.trim_start_matches('/'))
            .display()
            .to_string()
    );
    assert_eq!(cam.properties["subsystem"], "video4linux");
    assert_eq!(cam.properties["vendorId"], "046d");
    assert_eq!(cam.properties["productId"], "0825");
    assert_eq!(cam.properties["serial"], "CAFE01");
    assert_eq!(cam.properties["model"], "Webcam C270");

    // A USB serial adapter plugged in: the kernel's event (no udev properties yet).
    let tty = "/devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/ttyUSB0/tty/ttyUSB0";
    sys.attrs(
        "/devices/pci0000:00/0000:00:14.0/usb1/1-3",
        &[("idVendor", "0403\n"), ("idProduct", "6001\n")],
    );
    sys.attrs(tty, &[("uevent", "DEVNAME=ttyUSB0\n")]);
    feed.send(encode_kernel_uevent(
        "add",
        tty,
        "tty",
        &[("DEVNAME", "ttyUSB0"), ("SEQNUM", "1")],
    ))
    .await
    .unwrap();
    let DeviceEvent::Seen(d) = h.next().await else {
        panic!("expected Seen")
    };
    assert_eq!(d.identity, tty);
    assert_eq!(d.properties["vendorId"], "0403");
    assert_eq!(
        d.properties["devnode"],
        sys.dev().join("ttyUSB0").display().to_string()
    );

    // udevd's processed event for the same device adds its ID_* properties: a change.
    feed.send(encode_udev_uevent(
        "change",
        tty,
        "tty",
        &[
            ("DEVNAME", "/dev/ttyUSB0"),
            ("ID_MODEL", "FT232R_USB_UART"),
            ("ID_VENDOR_ID", "0403"),
        ],
    ))
    .await
    .unwrap();
    let DeviceEvent::Seen(d) = h.next().await else {
        panic!("expected Seen for the change")
    };
    assert_eq!(d.properties["model"], "FT232R_USB_UART");

    // The same event again is not a change.
    feed.send(encode_udev_uevent(
        "change",
        tty,
        "tty",
        &[
            ("DEVNAME", "/dev/ttyUSB0"),
            ("ID_MODEL", "FT232R_USB_UART"),
            ("ID_VENDOR_ID", "0403"),
        ],
    ))
    .await
    .unwrap();

    // Hostile datagrams are counted and ignored.
    let before = metrics::bad_input_count("udev", "unrecognised")
        + metrics::bad_input_count("udev", "bad-header");
    feed.send(b"garbage".to_vec()).await.unwrap();
    feed.send(b"libudev\0\xfe\xed".to_vec()).await.unwrap();
    // Events of subsystems not configured, and removes of unknown devices, are ignored.
    feed.send(encode_kernel_uevent(
        "add",
        "/devices/virtual/net/veth0",
        "net",
        &[("INTERFACE", "veth0")],
    ))
    .await
    .unwrap();
    feed.send(encode_kernel_uevent(
        "remove",
        "/devices/unknown/tty/ttyS9",
        "tty",
        &[],
    ))
    .await
    .unwrap();

    // Removal.
    feed.send(encode_kernel_uevent(
        "remove",
        tty,
        "tty",
        &[("DEVNAME", "ttyUSB0")],
    ))
    .await
    .unwrap();
    let ev = h.next().await;
    assert_eq!(
        ev,
        DeviceEvent::Gone {
            handler: "udev".into(),
            identity: tty.into()
        },
        "duplicates and noise produce no events"
    );
    let after = metrics::bad_input_count("udev", "unrecognised")
        + metrics::bad_input_count("udev", "bad-header");
    assert_eq!(after - before, 2);

    // A burst of 1000 events: 500 devices added, then removed; no sysfs entries (they vanished already).
    let producer = {
        let feed = feed.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                let p = format!("/devices/virtual/tty/ttyX{i}");
                feed.send(encode_kernel_uevent(
                    "add",
                    &p,
                    "tty",
                    &[("DEVNAME", &format!("ttyX{i}"))],
                ))
                .await
                .unwrap();
            }
            for i in 0..500 {
                let p = format!("/devices/virtual/tty/ttyX{i}");
                feed.send(encode_kernel_uevent("remove", &p, "tty", &[]))
                    .await
                    .unwrap();
            }
        })
    };
    let (mut seen, mut gone) = (0, 0);
    while seen + gone < 1000 {
        match h.next().await {
            DeviceEvent::Seen(d) => {
                assert!(d.identity.starts_with("/devices/virtual/tty/ttyX"));
                seen += 1;
            }
            DeviceEvent::Gone { .. } => gone += 1,
            ev @ DeviceEvent::Resync { .. } => panic!("unexpected {ev:?}"),
        }
    }
    assert_eq!((seen, gone), (500, 500));
    producer.await.unwrap();
    assert!(h.try_next().is_none());
    h.stop().await.unwrap();
}

#[tokio::test]
async fn filters_on_vendor_and_properties() {
    let sys = FakeSys::webcam("video0");
    let mut cfg = sys.config();
    cfg.vendor_ids = vec!["0403".into()];
    let (feed, rx) = mpsc::channel(16);
    let mut h = Running::start(Box::new(UdevHandler::with_feed(cfg, rx)));
    let DeviceEvent::Resync { devices, .. } = h.next().await else {
        panic!("expected the initial scan")
    };
    assert!(
        devices.is_empty(),
        "the webcam's vendor is filtered out: {devices:?}"
    );

    let tty = "/devices/virtual/tty/ttyACM0";
    feed.send(encode_udev_uevent(
        "add",
        tty,
        "tty",
        &[("DEVNAME", "/dev/ttyACM0"), ("ID_VENDOR_ID", "0403")],
    ))
    .await
    .unwrap();
    assert!(matches!(h.next().await, DeviceEvent::Seen(d) if d.identity == tty));
    // A change that no longer passes the filter takes the device away.
    feed.send(encode_udev_uevent(
        "change",
        tty,
        "tty",
        &[("DEVNAME", "/dev/ttyACM0"), ("ID_VENDOR_ID", "1a86")],
    ))
    .await
    .unwrap();
    assert_eq!(
        h.next().await,
        DeviceEvent::Gone {
            handler: "udev".into(),
            identity: tty.into()
        }
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn vanished_entries_do_not_break_the_scan() {
    let sys = FakeSys::webcam("video0");
    // A class link whose device directory is gone (unplugged mid-scan).
    std::os::unix::fs::symlink(
        sys.sys().join("devices/gone/video1"),
        sys.sys().join("class/video4linux/video1"),
    )
    .unwrap();
    let (_feed, rx) = mpsc::channel(1);
    let mut h = Running::start(Box::new(UdevHandler::with_feed(sys.config(), rx)));
    let DeviceEvent::Resync { devices, .. } = h.next().await else {
        panic!("expected the initial scan")
    };
    assert_eq!(devices.len(), 1);
    h.stop().await.unwrap();
}
