//! Camera sampler: captures still frames through `edgewasm:device/camera` and prints one JSON line per
//! sample. The same binary works on a USB camera (V4L2), an ONVIF camera (its snapshot URI) and a recorded
//! frame file: the host picks the backend for the device this instance was granted.
//!
//! `samples` (wasi:config, else `SAMPLES`; default 3, 0 = forever) and `INTERVAL_MS` (default 0) shape the
//! sampling. The total number of frames captured is kept in wasi:keyvalue (`captures`), so it keeps
//! counting across restarts. Without a granted camera, a device path in `EDGEWASM_DEVICE_DEVNODE` or the
//! first argument is read directly as raw frames of `FRAME_BYTES` (default 4096), as on any WASI host.
//! Exit code 1 when the camera cannot be read.

use std::io::Read;
use std::time::{Duration, Instant};

use edgewasm_guest::edgewasm::device::camera::{self, PixelFormat};
use edgewasm_guest::edgewasm::device::types::DeviceError;
use edgewasm_guest::wasi::keyvalue::{atomics, store as keyvalue};
use edgewasm_guest::{env_or, error_text, json, setting};

/// FNV-1a: a cheap fingerprint so consecutive frames can be told apart in the output.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn format_name(format: &PixelFormat) -> String {
    match format {
        PixelFormat::Jpeg => "jpeg".into(),
        PixelFormat::Mjpeg => "mjpeg".into(),
        PixelFormat::Yuyv => "yuyv".into(),
        PixelFormat::Rgb24 => "rgb24".into(),
        PixelFormat::Grey => "grey".into(),
        PixelFormat::Other(other) => other.clone(),
    }
}

/// Counts captures across restarts; `None` when the host offers no store.
fn count_capture(bucket: Option<&keyvalue::Bucket>) -> Option<u64> {
    atomics::increment(bucket?, "captures", 1).ok()
}

fn main() {
    let samples: u64 = setting("samples", "SAMPLES", 3);
    let interval = Duration::from_millis(env_or("INTERVAL_MS", 0));
    let info = match camera::describe() {
        Ok(info) => info,
        Err(DeviceError::NotGranted(why)) => {
            let path = std::env::var("EDGEWASM_DEVICE_DEVNODE")
                .ok()
                .or_else(|| std::env::args().nth(1));
            match path {
                Some(path) => return sample_file(&path, samples, interval),
                None => {
                    eprintln!("camera-sampler: no camera: {why}");
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("camera-sampler: {}", error_text(&e));
            std::process::exit(1);
        }
    };
    let bucket = keyvalue::open("").ok();
    let start = Instant::now();
    let mut i = 0u64;
    while samples == 0 || i < samples {
        let frame = match camera::capture() {
            Ok(frame) => frame,
            Err(e) => {
                eprintln!(
                    "camera-sampler: capturing from {}: {}",
                    info.name,
                    error_text(&e)
                );
                std::process::exit(1);
            }
        };
        let total =
            count_capture(bucket.as_ref()).map_or_else(|| "null".to_string(), |n| n.to_string());
        println!(
            "{{\"sample\":{i},\"device\":{},\"backend\":{},\"bytes\":{},\"width\":{},\"height\":{},\"format\":{},\"checksum\":\"{:016x}\",\"total\":{total},\"elapsed_ms\":{}}}",
            json(&info.name),
            json(&info.backend),
            frame.data.len(),
            frame.width,
            frame.height,
            json(&format_name(&frame.format)),
            checksum(&frame.data),
            start.elapsed().as_millis()
        );
        i += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}

/// Reads raw frames from a device file, for hosts that grant a path but no camera.
fn sample_file(device: &str, samples: u64, interval: Duration) {
    let frame_bytes = env_or("FRAME_BYTES", 4096);
    let mut file = match std::fs::File::open(device) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("camera-sampler: cannot open {device}: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let mut frame = vec![0u8; frame_bytes];
    let mut i = 0u64;
    while samples == 0 || i < samples {
        let n = match file.read(&mut frame) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("camera-sampler: reading {device}: {e}");
                std::process::exit(1);
            }
        };
        println!(
            "{{\"sample\":{i},\"device\":{},\"backend\":\"path\",\"bytes\":{n},\"checksum\":\"{:016x}\",\"elapsed_ms\":{}}}",
            json(device),
            checksum(&frame[..n]),
            start.elapsed().as_millis()
        );
        i += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}
