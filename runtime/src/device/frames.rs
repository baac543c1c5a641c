//! A camera whose "device node" is a regular file or a folder of frame files: recorded frames served as
//! captures, so the camera interface is testable (and demoable) on machines without a camera.
//!
//! A file is one frame; a folder's files (sorted by name) are served round-robin. JPEG frames report their
//! own size; other frames take `width`, `height` and `format` from the device properties.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::camera::{Camera, CameraInfo, Frame, PixelFormat, format_of_name, jpeg_size};
use super::{DeviceError, io_error, now_ns};

/// Frames larger than this are refused: a recorded frame is a still, not a video.
const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;

/// Recorded frames standing in for a camera.
pub(crate) struct Recorded {
    name: String,
    path: PathBuf,
    width: u32,
    height: u32,
    format: PixelFormat,
    next: AtomicUsize,
}

impl Recorded {
    pub(crate) fn new(device: &edgewasm_api::GrantedDevice, path: PathBuf) -> Self {
        let prop = |k: &str| device.properties.get(k);
        let num = |k: &str| prop(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            name: device.name.clone(),
            path,
            width: num("width"),
            height: num("height"),
            format: prop("format").map_or(PixelFormat::Other("raw".into()), |f| format_of_name(f)),
            next: AtomicUsize::new(0),
        }
    }

    fn next_file(&self) -> Result<PathBuf, DeviceError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| io_error(&self.path, &e))?;
        if !meta.is_dir() {
            return Ok(self.path.clone());
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(|e| io_error(&self.path, &e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DeviceError::Unavailable(format!(
                "{} holds no frames",
                self.path.display()
            )));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % files.len();
        Ok(files.swap_remove(i))
    }

    fn read(path: &Path) -> Result<Vec<u8>, DeviceError> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        if meta.len() > MAX_FRAME_BYTES {
            return Err(DeviceError::Unsupported(format!(
                "{} is {} bytes, over the {MAX_FRAME_BYTES} byte frame limit",
                path.display(),
                meta.len()
            )));
        }
        std::fs::read(path).map_err(|e| io_error(path, &e))
    }
}

#[async_trait::async_trait]
impl Camera for Recorded {
    async fn describe(&self) -> Result<CameraInfo, DeviceError> {
        Ok(CameraInfo {
            name: self.name.clone(),
            backend: "file".into(),
            width: self.width,
            height: self.height,
            format: self.format.clone(),
        })
    }

    async fn capture(&self) -> Result<Frame, DeviceError> {
        let file = self.next_file()?;
        let data = tokio::task::spawn_blocking(move || Self::read(&file))
            .await
            .map_err(|e| DeviceError::Io(format!("frame read task failed: {e}")))??;
        let (format, (width, height)) = match jpeg_size(&data) {
            Some(size) => (PixelFormat::Jpeg, size),
            None => (self.format.clone(), (self.width, self.height)),
        };
        Ok(Frame {
            width,
            height,
            format,
            timestamp: now_ns(),
            data,
        })
    }
}
