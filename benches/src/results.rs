//! The result files in `bench/results/<figure>.json`: one figure, its series (edgewasm and its peers),
//! and the machine state they were measured in, so a reader can judge the numbers.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// Whether smaller or larger numbers are better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// What a series is to the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// edgewasm itself.
    Subject,
    /// A peer measured in the same run.
    Peer,
    /// A published or configured number, not measured here.
    Reference,
}

/// One system's measurements of a figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub role: Role,
    /// Series with the same group are compared (e.g. the same instance count); `None` compares with
    /// every peer of the figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `None` when the system could not be measured; `missing` says why.
    pub summary: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Series {
    pub fn measured(name: impl Into<String>, role: Role, samples: Vec<f64>) -> Self {
        let summary = Summary::of(&samples);
        Self {
            name: name.into(),
            role,
            group: None,
            missing: summary.is_none().then(|| "no samples".to_owned()),
            summary,
            samples,
        }
    }

    pub fn missing(name: impl Into<String>, role: Role, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            role,
            group: None,
            summary: None,
            missing: Some(why.into()),
            samples: Vec::new(),
        }
    }

    /// A number from elsewhere (a chart's request, an earlier measurement), shown for comparison.
    pub fn reference(name: impl Into<String>, value: f64) -> Self {
        Self::measured(name, Role::Reference, vec![value])
    }

    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

/// The machine when a figure was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    /// 1/5/15-minute load averages at the start and at the end of the figure.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub kernel: String,
    pub commit: String,
}

impl Machine {
    pub fn now() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            load_before: load_average(),
            load_after: load_average(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            commit: std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// `/proc/loadavg`'s three averages (zeros when unreadable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    out
}

/// One figure of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// File stem and sort key (`01-cold-start`).
    pub id: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    /// The goal from the issue, in words.
    pub target: String,
    pub series: Vec<Series>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Fewer runs than the full benchmark (`BENCH_QUICK=1`).
    pub quick: bool,
    pub measured_at: String,
    pub machine: Machine,
}

impl Figure {
    /// An empty figure stamped with the time and machine state at its start.
    pub fn new(id: &str, title: &str, unit: &str, better: Better, target: &str) -> Self {
        Self {
            id: id.to_owned(),
            title: title.to_owned(),
            unit: unit.to_owned(),
            better,
            target: target.to_owned(),
            series: Vec::new(),
            notes: Vec::new(),
            quick: crate::quick(),
            measured_at: jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string()),
            machine: Machine::now(),
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Stamps the end load average and writes `<dir>/<id>.json`.
    pub fn save(mut self, dir: &Path) -> Result<PathBuf> {
        self.machine.load_after = load_average();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.id));
        let json = serde_json::to_string_pretty(&self)?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{}", crate::report::figure_text(&self));
        Ok(path)
    }
}

/// Every `*.json` figure in `dir`, sorted by id.
pub fn load_all(dir: &Path) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            figures.push(
                serde_json::from_str::<Figure>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    figures.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(figures)
}
