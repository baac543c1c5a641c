//! IIO sensors through sysfs: every `in_<channel>_raw` (scaled by its `_scale` and `_offset`, per the
//! kernel's IIO ABI: value = (raw + offset) * scale) or `in_<channel>_input` (already processed), in the
//! channel type's unit.

use std::path::{Path, PathBuf};

use super::sensor::{Reading, Sensor, read_value};
use super::{DeviceError, io_error, now_ns};

/// An IIO device folder (`/sys/bus/iio/devices/iio:deviceN`).
pub(crate) struct Iio {
    dir: PathBuf,
}

/// Whether `dir` holds IIO channel files.
pub(crate) fn is_iio_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| channel_of(&e.file_name().to_string_lossy()).is_some())
    })
}

/// `in_accel_x_raw` → (`accel_x`, raw), `in_temp_input` → (`temp`, processed).
fn channel_of(file: &str) -> Option<(&str, bool)> {
    let rest = file.strip_prefix("in_")?;
    if let Some(ch) = rest.strip_suffix("_raw") {
        Some((ch, true))
    } else {
        rest.strip_suffix("_input").map(|ch| (ch, false))
    }
}

/// The channel type: `accel_x` → `accel`, `voltage0` → `voltage`, `temp_ambient` → `temp`.
fn channel_type(channel: &str) -> &str {
    let base = channel.split('_').next().unwrap_or(channel);
    base.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// The unit of a channel type after scaling, and the divisor from the ABI's unit to it (the ABI gives
/// temperatures in millidegrees, voltages in millivolts, ...).
fn unit_of(kind: &str) -> (&'static str, f64) {
    match kind {
        "temp" => ("°C", 1000.0),
        "humidityrelative" => ("%", 1000.0),
        "voltage" => ("V", 1000.0),
        "current" => ("A", 1000.0),
        "power" => ("W", 1000.0),
        "pressure" => ("kPa", 1.0),
        "illuminance" | "intensity" => ("lx", 1.0),
        "accel" => ("m/s²", 1.0),
        "anglvel" => ("rad/s", 1.0),
        "magn" => ("G", 1.0),
        "proximity" | "distance" => ("m", 1.0),
        _ => ("", 1.0),
    }
}

impl Iio {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Channel name and whether it is raw, sorted by name.
    fn list(&self) -> Result<Vec<(String, bool)>, DeviceError> {
        let mut channels: Vec<(String, bool)> = std::fs::read_dir(&self.dir)
            .map_err(|e| io_error(&self.dir, &e))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                channel_of(&name).map(|(c, raw)| (c.to_string(), raw))
            })
            .collect();
        channels.sort();
        // A channel with both files: the processed one is what the driver means.
        channels.dedup_by(|later, earlier| later.0 == earlier.0);
        Ok(channels)
    }

    /// The channel's own attribute, else its type's shared one (`in_accel_scale`).
    fn attribute(&self, channel: &str, attr: &str) -> Result<Option<f64>, DeviceError> {
        for name in [
            format!("in_{channel}_{attr}"),
            format!("in_{}_{attr}", channel_type(channel)),
        ] {
            let path = self.dir.join(&name);
            if path.exists() {
                let text = read_value(&path)?;
                return text.parse().map(Some).map_err(|_| {
                    DeviceError::Io(format!("{}: {text:?} is not a number", path.display()))
                });
            }
        }
        Ok(None)
    }

    fn read_channel(&self, channel: &str, raw: bool) -> Result<Reading, DeviceError> {
        let suffix = if raw { "raw" } else { "input" };
        let path = self.dir.join(format!("in_{channel}_{suffix}"));
        let text = read_value(&path)?;
        let value: f64 = text.parse().map_err(|_| {
            DeviceError::Io(format!("{}: {text:?} is not a number", path.display()))
        })?;
        let value = if raw {
            let offset = self.attribute(channel, "offset")?.unwrap_or(0.0);
            let scale = self.attribute(channel, "scale")?.unwrap_or(1.0);
            (value + offset) * scale
        } else {
            value
        };
        let (unit, divisor) = unit_of(channel_type(channel));
        Ok(Reading {
            channel: channel.to_string(),
            value: value / divisor,
            unit: unit.to_string(),
            timestamp: now_ns(),
        })
    }
}

#[async_trait::async_trait]
impl Sensor for Iio {
    async fn channels(&self) -> Result<Vec<String>, DeviceError> {
        Ok(self.list()?.into_iter().map(|(c, _)| c).collect())
    }

    async fn read(&self) -> Result<Vec<Reading>, DeviceError> {
        self.list()?
            .iter()
            .map(|(channel, raw)| self.read_channel(channel, *raw))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_and_types() {
        assert_eq!(channel_of("in_accel_x_raw"), Some(("accel_x", true)));
        assert_eq!(channel_of("in_temp_input"), Some(("temp", false)));
        assert_eq!(channel_of("in_temp_scale"), None);
        assert_eq!(channel_of("name"), None);
        assert_eq!(channel_type("accel_x"), "accel");
        assert_eq!(channel_type("voltage0"), "voltage");
    }

    #[tokio::test]
    async fn raw_values_are_offset_scaled_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("in_temp_raw", "1000"),
            ("in_temp_offset", "500"),
            ("in_temp_scale", "10"),
            ("in_accel_x_raw", "-2"),
            ("in_accel_scale", "0.5"),
            ("in_humidityrelative_input", "45200"),
            ("name", "fake"),
        ] {
            std::fs::write(dir.path().join(f), format!("{v}\n")).unwrap();
        }
        assert!(is_iio_dir(dir.path()));
        let iio = Iio::new(dir.path().to_path_buf());
        assert_eq!(
            iio.channels().await.unwrap(),
            ["accel_x", "humidityrelative", "temp"]
        );
        let readings = iio.read().await.unwrap();
        let got: Vec<(&str, f64, &str)> = readings
            .iter()
            .map(|r| (r.channel.as_str(), r.value, r.unit.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("accel_x", -1.0, "m/s²"),
                ("humidityrelative", 45.2, "%"),
                ("temp", 15.0, "°C")
            ]
        );
    }
}
