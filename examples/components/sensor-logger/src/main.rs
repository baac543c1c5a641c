//! Sensor logger: reads a value from its granted sysfs-like file or serial line and prints JSON lines.
//!
//! The path comes from `SENSOR_PATH` or the first argument; the first line of the file is the reading
//! (sysfs temperatures are millidegrees: `SCALE=0.001` turns them into degrees). `SAMPLES` (default 3,
//! 0 = forever) and `INTERVAL_MS` (default 0) shape the loop. With `LAST_READING_PATH` set (a granted
//! read-write path), the latest JSON line is also written there for `reading-server`.

use std::io::BufRead;
use std::time::Duration;

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

fn main() {
    let path = std::env::var("SENSOR_PATH")
        .ok()
        .or_else(|| std::env::args().nth(1));
    let Some(path) = path else {
        eprintln!("sensor-logger: no sensor (set SENSOR_PATH or pass the path)");
        std::process::exit(2);
    };
    let samples = env_num("SAMPLES", 3.0) as u64;
    let scale = env_num("SCALE", 1.0);
    let interval = Duration::from_millis(env_num("INTERVAL_MS", 0.0) as u64);
    let last = std::env::var("LAST_READING_PATH").ok();

    let mut i = 0u64;
    while samples == 0 || i < samples {
        let raw = match read_line(&path) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("sensor-logger: reading {path}: {e}");
                std::process::exit(1);
            }
        };
        let value = raw
            .parse::<f64>()
            .map_or_else(|_| "null".to_string(), |v| format!("{}", v * scale));
        let line = format!(
            "{{\"sample\":{i},\"sensor\":\"{}\",\"value\":{value},\"raw\":\"{}\"}}",
            path.escape_default(),
            raw.escape_default()
        );
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
