//! Camera sampler: reads frames from the camera device it was granted and prints one JSON line per sample.
//!
//! The device path comes from `EDGEWASM_DEVICE_DEVNODE` (set by edgewasm from the matched device) or the
//! first argument. `SAMPLES` (default 3, 0 = forever), `FRAME_BYTES` (default 4096) and `INTERVAL_MS`
//! (default 0) shape the sampling. Exit code 1 when the device cannot be read.

use std::io::Read;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let device = std::env::var("EDGEWASM_DEVICE_DEVNODE")
        .ok()
        .or_else(|| std::env::args().nth(1));
    let Some(device) = device else {
        eprintln!("camera-sampler: no device (set EDGEWASM_DEVICE_DEVNODE or pass the path)");
        std::process::exit(2);
    };
    let samples = env_num("SAMPLES", 3);
    let frame_bytes = env_num("FRAME_BYTES", 4096) as usize;
    let interval = Duration::from_millis(env_num("INTERVAL_MS", 0));

    let mut file = match std::fs::File::open(&device) {
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
        // FNV-1a: a cheap fingerprint so consecutive frames can be told apart in the output.
        let checksum = frame[..n].iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        println!(
            "{{\"sample\":{i},\"device\":\"{}\",\"bytes\":{n},\"checksum\":\"{checksum:016x}\",\"elapsed_ms\":{}}}",
            device.escape_default(),
            start.elapsed().as_millis()
        );
        i += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}
