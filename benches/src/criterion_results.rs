//! Turns the criterion samples of `benches/inprocess.rs` into a figure: each criterion sample's time per
//! iteration is one run.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::results::{Better, Figure, Role, Series};

/// Reads `<criterion>/instance-start/{edgewasm,native-process}/new/sample.json` and writes the figure.
pub fn convert(criterion: &Path, results: &Path) -> Result<()> {
    let mut f = Figure::new(
        "00-instance-start",
        "instance start in-process (criterion): the hello component from its loaded code",
        "µs",
        Better::Lower,
        "(no target: where a task's time goes once containerd and the shim are out of the way)",
    );
    for (id, name, role) in [
        (
            "edgewasm",
            "edgewasm runtime: start + run + exit",
            Role::Subject,
        ),
        (
            "native-process",
            "fork+exec+wait of /bin/true (no container)",
            Role::Peer,
        ),
    ] {
        let path = criterion
            .join("instance-start")
            .join(id)
            .join("new/sample.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (did the criterion bench run?)", path.display())
        })?;
        f.series
            .push(Series::measured(name, role, per_iteration_micros(&text)?));
    }
    f.note(
        "`cargo bench -p edgewasm-bench --bench inprocess`: criterion samples, each the mean of many \
         iterations; the runs column counts samples.",
    );
    f.save(results)?;
    Ok(())
}

fn per_iteration_micros(sample_json: &str) -> Result<Vec<f64>> {
    let v: serde_json::Value = serde_json::from_str(sample_json)?;
    let nums = |k: &str| -> Result<Vec<f64>> {
        Ok(v[k]
            .as_array()
            .with_context(|| format!("criterion sample.json without {k}"))?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect())
    };
    Ok(nums("iters")?
        .iter()
        .zip(nums("times")?)
        .filter(|(i, _)| **i > 0.0)
        .map(|(i, t)| t / i / 1000.0)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_become_microseconds_per_iteration() {
        let got = super::per_iteration_micros(
            r#"{"sampling_mode":"Linear","iters":[2.0,4.0,0.0],"times":[4000.0,4000.0,5.0]}"#,
        )
        .unwrap();
        assert_eq!(got, vec![2.0, 1.0]);
    }
}
