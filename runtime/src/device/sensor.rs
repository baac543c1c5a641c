//! The `sensor` interface's backends: one trait, chosen per granted device (IIO channels in sysfs, or a
//! serial line protocol).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use super::{DeviceCtx, DeviceError, io_error};
use crate::world::bindings::edgewasm::device::types::DeviceKind;

pub(crate) use crate::world::bindings::edgewasm::device::sensor::Reading;

/// A sensor with named channels.
#[async_trait::async_trait]
pub(crate) trait Sensor: Send + Sync {
    async fn channels(&self) -> Result<Vec<String>, DeviceError>;
    async fn read(&self) -> Result<Vec<Reading>, DeviceError>;
}

/// Opens the backend for the instance's granted sensor: an IIO device folder (`syspath`, or a `devnode`
/// folder holding `in_*` channel files), else a line-protocol device or file (`devnode`).
pub(crate) async fn open(ctx: &DeviceCtx) -> Result<Arc<dyn Sensor>, DeviceError> {
    let device = ctx.device_of(DeviceKind::Sensor)?;
    let props = &device.properties;
    for key in ["syspath", "devnode"] {
        let Some(path) = props.get(key) else { continue };
        let path = ctx.granted_path(path)?;
        if super::iio::is_iio_dir(&path) {
            return Ok(Arc::new(super::iio::Iio::new(path)));
        }
    }
    let Some(devnode) = props.get("devnode") else {
        return Err(DeviceError::Unsupported(format!(
            "sensor {} has neither IIO channels nor a devnode to read lines from",
            device.name
        )));
    };
    let path = ctx.granted_path(devnode)?;
    let meta = std::fs::metadata(&path).map_err(|e| io_error(&path, &e))?;
    if meta.is_dir() {
        return Err(DeviceError::Unsupported(format!(
            "sensor {}: {} is a folder without IIO channel files (in_*_raw, in_*_input)",
            device.name,
            path.display()
        )));
    }
    let config = super::serial::LineConfig::from_properties(props)?;
    let is_tty = meta.file_type().is_char_device();
    let serial =
        tokio::task::spawn_blocking(move || super::serial::Serial::open(&path, is_tty, config))
            .await
            .map_err(|e| DeviceError::Io(format!("serial open task failed: {e}")))??;
    Ok(Arc::new(serial))
}

/// Reads a small sysfs-style file, trimmed.
pub(crate) fn read_value(path: &Path) -> Result<String, DeviceError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_error(path, &e))
}
