//! What a component running under edgewasm imports, generated once from `wit/edgewasm-device`: the
//! `edgewasm:device` interfaces (camera, sensor, types) and wasi:config and wasi:keyvalue, plus the small
//! helpers every example needs (settings, JSON strings, readable device errors).
//!
//! ```ignore
//! use edgewasm_guest::edgewasm::device::camera;
//! let frame = camera::capture()?;
//! ```

wit_bindgen::generate!({
    path: "../../../wit/edgewasm-device",
    world: "edgewasm:device/imports",
    generate_all,
});

use edgewasm::device::types::DeviceError;

/// A device error as a person reads it ("not granted: ...").
pub fn error_text(e: &DeviceError) -> String {
    match e {
        DeviceError::NotGranted(m) => format!("not granted: {m}"),
        DeviceError::Unsupported(m) => format!("unsupported: {m}"),
        DeviceError::Unavailable(m) => format!("unavailable: {m}"),
        DeviceError::AccessDenied(m) => format!("access denied: {m}"),
        DeviceError::Io(m) => format!("I/O error: {m}"),
    }
}

/// `s` as a JSON string literal.
pub fn json(s: &str) -> String {
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

/// The environment variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A setting from wasi:config (the workload's `config`), else the environment variable `env`, else
/// `default`.
pub fn setting<T: std::str::FromStr>(key: &str, env: &str, default: T) -> T {
    wasi::config::store::get(key)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| env_or(env, default))
}
