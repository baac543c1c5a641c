//! Summaries of repeated measurements: min, median and 99th percentile (nearest rank), with the count.

use serde::{Deserialize, Serialize};

/// What a series of samples reduces to in the table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for no samples. Non-finite samples are ignored.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        Some(Self {
            runs: n,
            min: v[0],
            median,
            p99: percentile(&v, 99.0),
            mean: v.iter().sum::<f64>() / n as f64,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty `v`: the smallest sample with at least `p`% of the
/// samples at or below it (so with fewer than 100 samples the 99th is the maximum).
fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples and the expected (runs, min, median, p99).
    type Case<'a> = (&'a [f64], Option<(usize, f64, f64, f64)>);

    #[test]
    fn summaries() {
        let cases: &[Case] = &[
            (&[], None),
            (&[f64::NAN], None),
            (&[5.0], Some((1, 5.0, 5.0, 5.0))),
            (&[3.0, 1.0, 2.0], Some((3, 1.0, 2.0, 3.0))),
            (&[4.0, 1.0, 3.0, 2.0], Some((4, 1.0, 2.5, 4.0))),
        ];
        for (samples, want) in cases {
            let got = Summary::of(samples).map(|s| (s.runs, s.min, s.median, s.p99));
            assert_eq!(got, *want, "{samples:?}");
        }
    }

    #[test]
    fn p99_of_many_samples_is_not_the_maximum() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert!((s.p99 - 198.0).abs() < f64::EPSILON, "{s:?}");
        assert!((s.median - 100.5).abs() < f64::EPSILON, "{s:?}");
    }
}
