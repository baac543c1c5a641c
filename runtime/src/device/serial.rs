//! A sensor speaking a line protocol over a serial port (or any line-producing device file): each read
//! takes the next complete line and parses it as `key=value [unit]` pairs, or with the device's
//! configured `pattern` (a regex whose named groups are channels; a group `<name>_unit` is its unit).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios;

use super::sensor::{Reading, Sensor};
use super::{DeviceError, io_error, now_ns};

/// How long a read waits for a complete line.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// A line longer than this is not a sensor reading.
const MAX_LINE: usize = 4096;

/// How lines are parsed, and the port's speed.
#[derive(Clone, Debug)]
pub(crate) struct LineConfig {
    pattern: Option<regex::Regex>,
    baud: Option<u32>,
}

impl LineConfig {
    /// From the device properties `pattern` and `baud`.
    pub(crate) fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, DeviceError> {
        let pattern = props
            .get("pattern")
            .map(|p| {
                regex::Regex::new(p).map_err(|e| {
                    DeviceError::Unsupported(format!(
                        "the device's pattern {p:?} is not a regex: {e}"
                    ))
                })
            })
            .transpose()?;
        let baud = props
            .get("baud")
            .map(|b| {
                b.parse()
                    .map_err(|_| DeviceError::Unsupported(format!("baud {b:?} is not a number")))
            })
            .transpose()?;
        Ok(Self { pattern, baud })
    }

    /// The readings in one line (without timestamps filled in).
    pub(crate) fn parse(&self, line: &str) -> Vec<(String, f64, String)> {
        match &self.pattern {
            Some(re) => parse_with(re, line),
            None => parse_pairs(line),
        }
    }
}

/// `temp=21.5 C, hum=40 %` → (temp, 21.5, C), (hum, 40, %).
fn parse_pairs(line: &str) -> Vec<(String, f64, String)> {
    let tokens: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if let Some((key, value)) = tokens[i].split_once('=')
            && let Ok(value) = value.parse::<f64>()
        {
            let unit = tokens
                .get(i + 1)
                .filter(|t| !t.contains('='))
                .map_or("", |t| *t);
            if !unit.is_empty() {
                i += 1;
            }
            out.push((key.to_string(), value, unit.to_string()));
        }
        i += 1;
    }
    out
}

fn parse_with(re: &regex::Regex, line: &str) -> Vec<(String, f64, String)> {
    let Some(caps) = re.captures(line) else {
        return Vec::new();
    };
    re.capture_names()
        .flatten()
        .filter(|name| !name.ends_with("_unit"))
        .filter_map(|name| {
            let value = caps.name(name)?.as_str().trim().parse::<f64>().ok()?;
            let unit = caps
                .name(&format!("{name}_unit"))
                .map_or("", |m| m.as_str());
            Some((name.to_string(), value, unit.to_string()))
        })
        .collect()
}

/// An open line-producing device.
pub(crate) struct Serial {
    path: PathBuf,
    config: LineConfig,
    port: Arc<Mutex<Port>>,
}

struct Port {
    file: std::fs::File,
    /// Bytes read past the last complete line.
    pending: Vec<u8>,
    /// Channels seen in the last parsed line.
    channels: Vec<String>,
}

fn speed(baud: u32) -> Option<termios::BaudRate> {
    use termios::BaudRate as B;
    Some(match baud {
        1200 => B::B1200,
        2400 => B::B2400,
        4800 => B::B4800,
        9600 => B::B9600,
        19200 => B::B19200,
        38400 => B::B38400,
        57600 => B::B57600,
        115_200 => B::B115200,
        230_400 => B::B230400,
        _ => return None,
    })
}

impl Serial {
    /// Opens `path` without becoming its controlling terminal; a tty is switched to raw mode (at `baud`
    /// when configured) without flushing what it already received.
    pub(crate) fn open(path: &Path, is_tty: bool, config: LineConfig) -> Result<Self, DeviceError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| io_error(path, &e))?;
        if is_tty {
            let tty_err = |e: nix::Error| DeviceError::Io(format!("{}: {e}", path.display()));
            let mut t = termios::tcgetattr(file.as_fd()).map_err(tty_err)?;
            termios::cfmakeraw(&mut t);
            if let Some(baud) = config.baud {
                let rate = speed(baud).ok_or_else(|| {
                    DeviceError::Unsupported(format!("baud rate {baud} is not supported"))
                })?;
                termios::cfsetspeed(&mut t, rate).map_err(tty_err)?;
            }
            termios::tcsetattr(file.as_fd(), termios::SetArg::TCSANOW, &t).map_err(tty_err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            config,
            port: Arc::new(Mutex::new(Port {
                file,
                pending: Vec::new(),
                channels: Vec::new(),
            })),
        })
    }

    /// The next line that parses into readings (lines that do not, such as a banner, are skipped).
    fn next_readings(
        path: &Path,
        config: &LineConfig,
        port: &mut Port,
    ) -> Result<Vec<Reading>, DeviceError> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            while let Some(end) = port.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = port.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let parsed = config.parse(line.trim());
                if !parsed.is_empty() {
                    let timestamp = now_ns();
                    port.channels = parsed.iter().map(|(c, _, _)| c.clone()).collect();
                    return Ok(parsed
                        .into_iter()
                        .map(|(channel, value, unit)| Reading {
                            channel,
                            value,
                            unit,
                            timestamp,
                        })
                        .collect());
                }
            }
            if port.pending.len() > MAX_LINE {
                port.pending.clear();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DeviceError::Unavailable(format!(
                    "{} sent no complete reading within {LINE_TIMEOUT:?}",
                    path.display()
                )));
            }
            let mut fds = [PollFd::new(port.file.as_fd(), PollFlags::POLLIN)];
            let wait = PollTimeout::try_from(left.as_millis().min(1000) as u32)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(DeviceError::Io(format!("{}: {e}", path.display()))),
            }
            let mut buf = [0u8; 512];
            match port.file.read(&mut buf) {
                // End of a regular file, or a tty whose other end hung up: nothing more will come.
                Ok(0) => {
                    return Err(DeviceError::Unavailable(format!(
                        "{} has no more lines",
                        path.display()
                    )));
                }
                Ok(n) => port.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(path, &e)),
            }
        }
    }

    async fn with_port<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Path, &LineConfig, &mut Port) -> Result<R, DeviceError> + Send + 'static,
    ) -> Result<R, DeviceError> {
        let port = Arc::clone(&self.port);
        let path = self.path.clone();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            let mut port = port.lock().expect("not poisoned");
            f(&path, &config, &mut port)
        })
        .await
        .map_err(|e| DeviceError::Io(format!("serial read task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Sensor for Serial {
    async fn channels(&self) -> Result<Vec<String>, DeviceError> {
        self.with_port(|path, config, port| {
            if port.channels.is_empty() {
                Self::next_readings(path, config, port)?;
            }
            Ok(port.channels.clone())
        })
        .await
    }

    async fn read(&self) -> Result<Vec<Reading>, DeviceError> {
        self.with_port(Self::next_readings).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines_parse_with_optional_units() {
        assert_eq!(
            parse_pairs("temp=21.5 C, hum=40 % ok=1"),
            [
                ("temp".to_string(), 21.5, "C".to_string()),
                ("hum".to_string(), 40.0, "%".to_string()),
                ("ok".to_string(), 1.0, String::new()),
            ]
        );
        assert!(parse_pairs("booting sensor v1.2").is_empty());
    }

    #[test]
    fn patterns_name_channels_and_units() {
        let mut props = BTreeMap::new();
        props.insert(
            "pattern".to_string(),
            r"^T:(?P<temp>[-\d.]+)(?P<temp_unit>C) RH:(?P<hum>[\d.]+)$".to_string(),
        );
        let config = LineConfig::from_properties(&props).unwrap();
        assert_eq!(
            config.parse("T:-3.5C RH:80"),
            [
                ("temp".to_string(), -3.5, "C".to_string()),
                ("hum".to_string(), 80.0, String::new()),
            ]
        );
        props.insert("pattern".to_string(), "(".to_string());
        assert!(LineConfig::from_properties(&props).is_err());
    }
}
