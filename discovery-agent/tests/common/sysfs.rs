//! A fake sysfs tree (and /dev) laid out as the kernel does, for the udev handler.

use std::path::{Path, PathBuf};

use edgewasm_discovery_agent::config::UdevConfig;

/// The USB device of the fake webcam.
pub const USB: &str = "/devices/pci0000:00/0000:00:14.0/usb1/1-2";

pub struct FakeSys {
    dir: tempfile::TempDir,
    /// The webcam's video node devpath.
    pub video: String,
}

impl FakeSys {
    /// One USB webcam (Logitech C270) whose video node is `/dev/<video_name>`.
    pub fn webcam(video_name: &str) -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
            video: format!("{USB}/1-2:1.0/video4linux/{video_name}"),
        };
        s.attrs(
            USB,
            &[
                ("idVendor", "046d\n"),
                ("idProduct", "0825\n"),
                ("serial", "CAFE01\n"),
                ("product", "Webcam C270\n"),
            ],
        );
        s.device(
            "video4linux",
            &s.video,
            &format!("MAJOR=81\nMINOR=0\nDEVNAME={video_name}\n"),
        );
        std::fs::create_dir_all(s.dev()).unwrap();
        s
    }

    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    pub fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn attrs(&self, devpath: &str, attrs: &[(&str, &str)]) {
        let d = self.sys().join(devpath.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            std::fs::write(d.join(k), v).unwrap();
        }
    }

    /// A device directory with a uevent file and its class link, as the kernel lays them out.
    pub fn device(&self, class: &str, devpath: &str, uevent: &str) {
        self.attrs(devpath, &[("uevent", uevent)]);
        let class_dir = self.sys().join("class").join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        let name = Path::new(devpath).file_name().unwrap();
        std::os::unix::fs::symlink(
            self.sys().join(devpath.trim_start_matches('/')),
            class_dir.join(name),
        )
        .unwrap();
    }

    pub fn config(&self) -> UdevConfig {
        UdevConfig {
            sysfs_root: self.sys(),
            dev_root: self.dev(),
            ..UdevConfig::default()
        }
    }
}
