//! The `camera` interface's backends: one trait, chosen per granted device (ONVIF snapshot, V4L2 node, or
//! a recorded frame file standing in for a node).

use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use super::{DeviceCtx, DeviceError, io_error};
use crate::world::bindings::edgewasm::device::types::DeviceKind;

pub(crate) use crate::world::bindings::edgewasm::device::camera::{CameraInfo, Frame, PixelFormat};

/// A camera that delivers still frames.
#[async_trait::async_trait]
pub(crate) trait Camera: Send + Sync {
    async fn describe(&self) -> Result<CameraInfo, DeviceError>;
    async fn capture(&self) -> Result<Frame, DeviceError>;
}

/// Where the granted camera's frames come from, decided from its properties alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CameraSource {
    /// An ONVIF camera's snapshot URI.
    Onvif { snapshot: String },
    /// An ONVIF camera without a published snapshot URI: asked through its device service.
    OnvifService { xaddrs: String },
    /// A granted device node (V4L2) or file.
    Node { path: String },
}

/// Chooses the source for a camera device: a `snapshotUri` property wins, then a `devnode`, then the
/// ONVIF `xaddrs` to ask for a snapshot URI.
pub(crate) fn source(device: &edgewasm_api::GrantedDevice) -> Result<CameraSource, DeviceError> {
    let props = &device.properties;
    if let Some(uri) = props.get("snapshotUri") {
        return Ok(CameraSource::Onvif {
            snapshot: uri.clone(),
        });
    }
    if let Some(path) = props.get("devnode") {
        return Ok(CameraSource::Node { path: path.clone() });
    }
    if let Some(xaddrs) = props.get("xaddrs") {
        return Ok(CameraSource::OnvifService {
            xaddrs: xaddrs.clone(),
        });
    }
    Err(DeviceError::Unsupported(format!(
        "camera {} has no snapshotUri, devnode or (ONVIF) xaddrs property",
        device.name
    )))
}

/// Opens the backend for the instance's granted camera.
pub(crate) async fn open(ctx: &DeviceCtx) -> Result<Arc<dyn Camera>, DeviceError> {
    let device = ctx.device_of(DeviceKind::Camera)?;
    match source(device)? {
        CameraSource::Onvif { snapshot } => Ok(Arc::new(super::onvif::Snapshot::new(
            device.name.clone(),
            &snapshot,
            ctx.credentials.clone(),
            Arc::clone(&ctx.net),
        )?)),
        CameraSource::OnvifService { xaddrs } => {
            let snapshot =
                super::onvif_media::snapshot_uri(&xaddrs, ctx.credentials.as_ref(), &ctx.net)
                    .await?;
            tracing::debug!(device = %device.name, snapshot, "found the ONVIF snapshot URI");
            Ok(Arc::new(super::onvif::Snapshot::new(
                device.name.clone(),
                &snapshot,
                ctx.credentials.clone(),
                Arc::clone(&ctx.net),
            )?))
        }
        CameraSource::Node { path } => {
            let path = ctx.granted_path(&path)?;
            let meta = std::fs::metadata(&path).map_err(|e| io_error(&path, &e))?;
            if meta.file_type().is_char_device() {
                let name = device.name.clone();
                let camera =
                    tokio::task::spawn_blocking(move || super::v4l2::Capture::open(name, path))
                        .await
                        .map_err(|e| DeviceError::Io(format!("V4L2 open task failed: {e}")))??;
                Ok(Arc::new(camera))
            } else {
                Ok(Arc::new(super::frames::Recorded::new(device, path)))
            }
        }
    }
}

/// The pixel format a MIME type names.
pub(crate) fn format_of_mime(mime: &str) -> PixelFormat {
    match mime.split(';').next().unwrap_or_default().trim() {
        "image/jpeg" | "image/jpg" => PixelFormat::Jpeg,
        other => PixelFormat::Other(other.to_string()),
    }
}

/// The pixel format named in a property (`jpeg`, `yuyv`, a fourcc, ...).
pub(crate) fn format_of_name(name: &str) -> PixelFormat {
    match name.to_ascii_lowercase().as_str() {
        "jpeg" | "jpg" => PixelFormat::Jpeg,
        "mjpeg" | "mjpg" => PixelFormat::Mjpeg,
        "yuyv" | "yuv422" => PixelFormat::Yuyv,
        "rgb24" | "rgb3" => PixelFormat::Rgb24,
        "grey" | "gray" => PixelFormat::Grey,
        _ => PixelFormat::Other(name.to_string()),
    }
}

/// Width and height from a JPEG's start-of-frame marker.
pub(crate) fn jpeg_size(data: &[u8]) -> Option<(u32, u32)> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= data.len() {
        if data[i] != 0xFF {
            return None;
        }
        let marker = data[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let sof = data.get(i + 5..i + 9)?;
            let height = u16::from_be_bytes([sof[0], sof[1]]);
            let width = u16::from_be_bytes([sof[2], sof[3]]);
            return Some((u32::from(width), u32::from(height)));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal JPEG header: SOI, an APP0 segment, and SOF0 for `width`x`height`.
    pub(crate) fn jpeg_header(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        v.extend([0xFF, 0xC0, 0x00, 0x0B, 0x08]);
        v.extend(height.to_be_bytes());
        v.extend(width.to_be_bytes());
        v.extend([0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
        v
    }

    #[test]
    fn jpeg_sizes_are_read_from_the_frame_header() {
        assert_eq!(jpeg_size(&jpeg_header(640, 480)), Some((640, 480)));
        assert_eq!(jpeg_size(b"not a jpeg"), None);
        assert_eq!(jpeg_size(&[0xFF, 0xD8, 0xFF]), None);
    }

    #[test]
    fn sources_prefer_the_snapshot_uri() {
        let dev = |props: &[(&str, &str)]| edgewasm_api::GrantedDevice {
            name: "cam".into(),
            handler: "onvif".into(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        };
        assert_eq!(
            source(&dev(&[
                ("snapshotUri", "http://a/s.jpg"),
                ("devnode", "/dev/video0")
            ]))
            .unwrap(),
            CameraSource::Onvif {
                snapshot: "http://a/s.jpg".into()
            }
        );
        assert_eq!(
            source(&dev(&[("devnode", "/dev/video0")])).unwrap(),
            CameraSource::Node {
                path: "/dev/video0".into()
            }
        );
        assert_eq!(
            source(&dev(&[("xaddrs", "http://a/onvif")])).unwrap(),
            CameraSource::OnvifService {
                xaddrs: "http://a/onvif".into()
            }
        );
        assert!(matches!(
            source(&dev(&[])),
            Err(DeviceError::Unsupported(_))
        ));
    }

    #[test]
    fn formats_are_named() {
        assert_eq!(format_of_mime("image/jpeg; q=1"), PixelFormat::Jpeg);
        assert_eq!(format_of_name("YUYV"), PixelFormat::Yuyv);
        assert_eq!(format_of_name("BGR3"), PixelFormat::Other("BGR3".into()));
    }
}
