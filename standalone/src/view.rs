//! What the user sees: a live status view redrawn in place on a TTY, or one JSON object per event
//! otherwise (for scripts and tests).

use std::collections::VecDeque;
use std::io::Write as _;

use crossterm::style::Stylize as _;
use crossterm::{cursor, queue, terminal};
use serde::Serialize;

/// Something that happened, as a JSON line (`{"event": "...", ...}`) or a line in the view's log.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        manifests: String,
        node: String,
        state_dir: String,
    },
    ManifestError {
        file: String,
        line: usize,
        message: String,
    },
    Problem {
        message: String,
    },
    InvalidWorkload {
        workload: String,
        message: String,
    },
    DeviceAppeared {
        device: String,
        label: String,
        handler: String,
        approved: bool,
    },
    DeviceAbsent {
        device: String,
        label: String,
        grace_seconds: u64,
    },
    DeviceRemoved {
        device: String,
        label: String,
    },
    Waiting {
        workload: String,
        placement: String,
        message: String,
    },
    Compiling {
        workload: String,
        placement: String,
        image: String,
    },
    InstanceStarted {
        workload: String,
        placement: String,
        log: String,
    },
    Serving {
        workload: String,
        placement: String,
        url: String,
    },
    InstanceExited {
        workload: String,
        placement: String,
        code: i32,
        success: bool,
        message: String,
    },
    StartFailed {
        workload: String,
        placement: String,
        message: String,
    },
    RestartScheduled {
        workload: String,
        placement: String,
        in_ms: u64,
        restarts: u32,
    },
    PlacementStopped {
        workload: String,
        placement: String,
        reason: String,
    },
    Finished {
        ok: bool,
        succeeded: usize,
        failed: usize,
    },
    Stopping,
}

impl Event {
    /// The one-line text for the view's event log; `None` for events the table already shows.
    fn human(&self) -> Option<(bool, String)> {
        Some(match self {
            Self::ManifestError {
                file,
                line,
                message,
            } => (true, format!("{file}:{line}: {message}")),
            Self::Problem { message } => (true, message.clone()),
            Self::InvalidWorkload { workload, message } => (true, format!("{workload}: {message}")),
            Self::DeviceAppeared {
                label,
                handler,
                approved,
                ..
            } => (
                false,
                format!(
                    "device {label} ({handler}) appeared{}",
                    if *approved { "" } else { ", awaiting approval" }
                ),
            ),
            Self::DeviceAbsent {
                label,
                grace_seconds,
                ..
            } => (
                true,
                format!(
                    "device {label} is gone; its instances stop in {grace_seconds}s unless it returns"
                ),
            ),
            Self::DeviceRemoved { label, .. } => (false, format!("device {label} removed")),
            Self::Waiting {
                workload, message, ..
            } => (false, format!("{workload} waits: {message}")),
            Self::InstanceExited {
                workload,
                placement,
                success: false,
                message,
                ..
            } => (true, format!("{} {message}", short(workload, placement))),
            Self::StartFailed {
                workload,
                placement,
                message,
            } => (true, format!("{}: {message}", short(workload, placement))),
            Self::RestartScheduled {
                workload,
                placement,
                in_ms,
                ..
            } if *in_ms >= 2000 => (
                false,
                format!(
                    "{} restarts in {:.0}s",
                    short(workload, placement),
                    *in_ms as f64 / 1000.0
                ),
            ),
            Self::PlacementStopped {
                workload,
                placement,
                reason,
            } => (
                false,
                format!("{} stopped: {reason}", short(workload, placement)),
            ),
            Self::Serving { workload, url, .. } => (false, format!("{workload} serves {url}")),
            _ => return None,
        })
    }
}

fn short(workload: &str, placement: &str) -> String {
    format!(
        "{}[{placement}]",
        workload.strip_prefix("default/").unwrap_or(workload)
    )
}

/// One row of the device table.
#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub label: String,
    pub handler: String,
    pub state: String,
    pub ok: bool,
    pub detail: String,
}

/// One row of the placement table.
#[derive(Clone, Debug)]
pub struct PlacementRow {
    pub workload: String,
    pub device: String,
    pub state: String,
    /// `Some(true)` healthy, `Some(false)` failing, `None` in progress.
    pub ok: Option<bool>,
    pub busy: bool,
    pub restarts: u32,
    pub output: String,
}

/// Everything the view shows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub title: String,
    pub devices: Vec<DeviceRow>,
    pub placements: Vec<PlacementRow>,
}

/// The terminal or JSON output.
#[derive(Debug)]
pub struct View {
    tty: bool,
    drawn: u16,
    frame: usize,
    log: VecDeque<(String, bool, String)>,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const LOG_LINES: usize = 6;

impl View {
    pub fn new(tty: bool) -> Self {
        if tty {
            let _ = queue!(std::io::stdout(), cursor::Hide);
        }
        Self {
            tty,
            drawn: 0,
            frame: 0,
            log: VecDeque::new(),
        }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Reports an event: a JSON line, or a line in the view's event log.
    pub fn emit(&mut self, event: &Event) {
        if !self.tty {
            let mut line = serde_json::to_value(event).expect("events serialize");
            if let Some(obj) = line.as_object_mut() {
                obj.insert(
                    "time".into(),
                    k8s_openapi::jiff::Timestamp::now().to_string().into(),
                );
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
        if let Some((bad, text)) = event.human() {
            let time = k8s_openapi::jiff::Zoned::now()
                .strftime("%H:%M:%S")
                .to_string();
            self.log.push_back((time, bad, text));
            while self.log.len() > LOG_LINES {
                self.log.pop_front();
            }
        }
    }

    /// Prints component output lines (`--follow`), above the live view on a TTY.
    pub fn follow(&mut self, prefix: &str, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            self.erase(&mut out);
            for l in lines {
                let _ = writeln!(out, "{} {l}", format!("[{prefix}]").cyan());
            }
        } else {
            for l in lines {
                let _ = writeln!(out, "[{prefix}] {l}");
            }
        }
        let _ = out.flush();
    }

    fn erase(&mut self, out: &mut impl std::io::Write) {
        if self.drawn > 0 {
            let _ = queue!(
                out,
                cursor::MoveToPreviousLine(self.drawn),
                terminal::Clear(terminal::ClearType::FromCursorDown)
            );
            self.drawn = 0;
        }
    }

    /// Redraws the live view (TTY only).
    pub fn render(&mut self, s: &Snapshot) {
        if !self.tty {
            return;
        }
        self.frame = self.frame.wrapping_add(1);
        let width = terminal::size().map_or(100, |(w, _)| w as usize).max(40);
        let spin = SPINNER[self.frame % SPINNER.len()];
        let mut lines: Vec<String> = Vec::new();
        lines.push(format!(
            "{}  {}",
            "edgewasm standalone".bold(),
            s.title.clone().dim()
        ));
        lines.push(String::new());
        lines.push(format!("{}", "DEVICES".bold()));
        if s.devices.is_empty() {
            lines.push(format!("  {}", "none yet".dim()));
        }
        let lw = s
            .devices
            .iter()
            .map(|d| d.label.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(8, 28);
        for d in &s.devices {
            let dot = if d.ok { "●".green() } else { "●".yellow() };
            lines.push(clip(
                &format!(
                    "  {dot} {:<lw$}  {:<7} {:<18} {}",
                    cut(&d.label, lw),
                    d.handler,
                    d.state,
                    d.detail.clone().dim()
                ),
                width,
            ));
        }
        lines.push(String::new());
        let ww = s
            .placements
            .iter()
            .map(|p| p.workload.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(8, 24);
        let dw = s
            .placements
            .iter()
            .map(|p| p.device.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(6, 20);
        lines.push(format!("{}", "PLACEMENTS".bold()));
        lines.push(format!(
            "  {}",
            format!(
                "{:<ww$}  {:<dw$}  {:<30} {:>8}  {}",
                "WORKLOAD", "DEVICE", "STATE", "RESTARTS", "LAST OUTPUT"
            )
            .dim()
        ));
        if s.placements.is_empty() {
            lines.push(format!("  {}", "none yet".dim()));
        }
        for p in &s.placements {
            let state = if p.busy {
                format!("{spin} {}", p.state)
            } else {
                p.state.clone()
            };
            let state = format!("{:<30}", cut(&state, 30));
            let state = match p.ok {
                Some(true) => state.green(),
                Some(false) => state.red(),
                None => state.yellow(),
            };
            lines.push(clip(
                &format!(
                    "  {:<ww$}  {:<dw$}  {state} {:>8}  {}",
                    cut(&p.workload, ww),
                    cut(&p.device, dw),
                    p.restarts,
                    p.output
                ),
                width,
            ));
        }
        if !self.log.is_empty() {
            lines.push(String::new());
            lines.push(format!("{}", "EVENTS".bold()));
            for (time, bad, text) in &self.log {
                let text = if *bad {
                    text.clone().red().to_string()
                } else {
                    text.clone()
                };
                lines.push(clip(&format!("  {} {text}", time.clone().dim()), width));
            }
        }
        lines.push(String::new());
        lines.push(format!("{}", "Ctrl-C to stop".dim()));
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        for l in &lines {
            let _ = queue!(out, terminal::Clear(terminal::ClearType::CurrentLine));
            let _ = writeln!(out, "{}", clip(l, width));
        }
        self.drawn = lines.len() as u16;
        let _ = out.flush();
    }

    /// Leaves the terminal as it was found (the last view stays on screen).
    pub fn finish(&mut self) {
        if self.tty {
            let mut out = std::io::stdout();
            let _ = queue!(out, cursor::Show);
            let _ = out.flush();
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Cuts plain text to `n` characters, marking the cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Cuts a line with ANSI styling to `width` visible characters, so no line wraps (the view is redrawn
/// by moving the cursor up as many lines as it printed).
fn clip(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut visible = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            out.push(c);
            for c in chars.by_ref() {
                out.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        if visible + 1 >= width {
            out.push('…');
            out.push_str("\u{1b}[0m");
            return out;
        }
        visible += 1;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_only_visible_characters() {
        let styled = format!("{} tail", "red".red());
        assert_eq!(clip(&styled, 80), styled);
        let clipped = clip(&format!("{}abcdefgh", "xy".red()), 6);
        assert!(clipped.contains('…'));
        assert!(clipped.contains("abc"));
        assert!(!clipped.contains("abcd"));
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn events_serialize_with_their_name() {
        let e = Event::RestartScheduled {
            workload: "default/w".into(),
            placement: "0".into(),
            in_ms: 200,
            restarts: 2,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "restart_scheduled");
        assert_eq!(v["in_ms"], 200);
    }
}
