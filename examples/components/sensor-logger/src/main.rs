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

use edgewasm_guest::edgewasm::device::sensor::{self, Reading};
use edgewasm_guest::wasi::config::store as config;
use edgewasm_guest::{env_or, error_text, json, setting};

fn read_line(path: &str) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::open(path)?).read_line(&mut line)?;
    Ok(line.trim().to_string())
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
                scale: env_or("SCALE", 1.0),
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
    let samples: u64 = setting("samples", "SAMPLES", 3);
    let interval = Duration::from_millis(env_or("INTERVAL_MS", 0));
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
        if let Some(last) = &last
            && let Err(e) = std::fs::write(last, format!("{line}\n"))
        {
            eprintln!("sensor-logger: writing {last}: {e}");
        }
        i += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
}
