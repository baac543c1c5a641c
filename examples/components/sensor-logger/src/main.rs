//! Sensor logger: reads its granted sensor through `edgewasm:device/sensor` (IIO channels or a serial
//! line protocol, whichever the host finds) and prints one JSON line per sample.
//!
//! Without a sensor the host can read, a path from `SENSOR_PATH` or the first argument is read instead:
//! its first line is the reading (sysfs temperatures are millidegrees: `SCALE=0.001` turns them into
//! degrees). `samples` (wasi:config, else `SAMPLES`; default 3, 0 = forever) and `INTERVAL_MS` (default 0)
//! shape the loop. With `LAST_READING_PATH` set (a granted read-write path), the latest JSON line is also
//! written there for `reading-server`.

use std::io::BufRead;
use std::time::Duration;

wit_bindgen::generate!({
    path: "../../../wit/edgewasm-device",
    world: "edgewasm:device/imports",
    generate_all,
});

use edgewasm::device::sensor::{self, Reading};
use edgewasm::device::types::DeviceError;
use wasi::config::store as config;

/// `s` as a JSON string literal.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn read_line(path: &str) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::open(path)?).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn error_text(e: &DeviceError) -> String {
    match e {
        DeviceError::NotGranted(m) => format!("not granted: {m}"),
        DeviceError::Unsupported(m) => format!("unsupported: {m}"),
        DeviceError::Unavailable(m) => format!("unavailable: {m}"),
        DeviceError::AccessDenied(m) => format!("access denied: {m}"),
        DeviceError::Io(m) => format!("I/O error: {m}"),
    }
}

/// A JSON number (`null` for NaN and infinities, which JSON cannot hold).
fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn readings_json(readings: &[Reading]) -> String {
    let items: Vec<String> = readings
        .iter()
        .map(|r| {
            format!(
                "{{\"channel\":{},\"value\":{},\"unit\":{},\"timestamp\":{}}}",
                json(&r.channel),
                number(r.value),
                json(&r.unit),
                r.timestamp
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Where readings come from.
enum Source {
    Sensor { name: String, first: Vec<Reading> },
    File { path: String, scale: f64 },
}

impl Source {
    fn pick() -> Source {
        let path = std::env::var("SENSOR_PATH")
            .ok()
            .or_else(|| std::env::args().nth(1));
        let name = config::get("device.name")
            .ok()
            .flatten()
            .unwrap_or_default();
        match (sensor::read(), path) {
            (Ok(first), _) => Source::Sensor { name, first },
            (Err(_), Some(path)) => Source::File {
                path,
                scale: env_num("SCALE", 1.0),
            },
            (Err(e), None) => {
                eprintln!("sensor-logger: no sensor: {}", error_text(&e));
                std::process::exit(1);
            }
        }
    }

    /// One JSON line, or the error to report.
    fn sample(&mut self, i: u64) -> Result<String, String> {
        match self {
            Source::Sensor { name, first } => {
                let readings = if first.is_empty() {
                    sensor::read().map_err(|e| error_text(&e))?
                } else {
                    std::mem::take(first)
                };
                let value = readings
                    .first()
                    .map_or_else(|| "null".into(), |r| number(r.value));
                Ok(format!(
                    "{{\"sample\":{i},\"sensor\":{},\"value\":{value},\"readings\":{}}}",
                    json(name),
                    readings_json(&readings)
                ))
            }
            Source::File { path, scale } => {
                let raw = read_line(path).map_err(|e| format!("reading {path}: {e}"))?;
                let value = raw
                    .parse::<f64>()
                    .map_or_else(|_| "null".to_string(), |v| number(v * *scale));
                Ok(format!(
                    "{{\"sample\":{i},\"sensor\":{},\"value\":{value},\"raw\":{}}}",
                    json(path),
                    json(&raw)
                ))
            }
        }
    }
}

fn main() {
    let samples = config::get("samples")
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| env_num("SAMPLES", 3.0) as u64);
    let interval = Duration::from_millis(env_num("INTERVAL_MS", 0.0) as u64);
    let last = std::env::var("LAST_READING_PATH").ok();
    let mut source = Source::pick();

    let mut i = 0u64;
    while samples == 0 || i < samples {
        let line = match source.sample(i) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("sensor-logger: {e}");
                std::process::exit(1);
            }
        };
        println!("{line}");
        if let Some(last) = &last {
            if let Err(e) = std::fs::write(last, format!("{line}\n")) {
                eprintln!("sensor-logger: writing {last}: {e}");
            }
        }
        i += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}
