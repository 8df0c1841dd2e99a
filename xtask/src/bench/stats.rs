//! The measurements of all runs, and the statistics the report shows:
//! medians with min–max over runs, and per-run comparisons against another
//! path measured in the same run (ratios, added latency).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{paths::PathKind, scenario::Metrics};

/// (path id, scenario id) → metrics, for one run.
#[derive(Default)]
pub struct Run {
    pub values: BTreeMap<(&'static str, &'static str), Metrics>,
    /// Why a measurement is missing (not applicable, or it failed).
    pub missing: BTreeMap<(&'static str, &'static str), String>,
}

#[derive(Default)]
pub struct Results {
    pub runs: Vec<Run>,
    /// Other builds and tests seen running before each run and at the end.
    pub busy_during: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(mut values: Vec<f64>) -> Option<Summary> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: values[0],
        max: values[n - 1],
        n,
    })
}

impl Results {
    pub fn get(&self, run: usize, path: PathKind, scenario: &str, metric: &str) -> Option<f64> {
        self.runs[run]
            .values
            .iter()
            .find(|((p, s), _)| *p == path.id() && *s == scenario)
            .and_then(|(_, m)| m.get(metric).copied())
    }

    /// One value per run.
    pub fn series(&self, path: PathKind, scenario: &str, metric: &str) -> Vec<f64> {
        (0..self.runs.len())
            .filter_map(|r| self.get(r, path, scenario, metric))
            .collect()
    }

    /// `f(value of path, value of other)` in each run that has both.
    pub fn paired(
        &self,
        path: PathKind,
        other: PathKind,
        scenario: &str,
        metric: &str,
        f: fn(f64, f64) -> f64,
    ) -> Vec<f64> {
        (0..self.runs.len())
            .filter_map(|r| {
                Some(f(
                    self.get(r, path, scenario, metric)?,
                    self.get(r, other, scenario, metric)?,
                ))
            })
            .collect()
    }

    /// `f(a, b)` per run for two scenarios on one path (an MCP call
    /// against the same POST through a plain tool).
    pub fn paired_scenarios(
        &self,
        path: PathKind,
        scenario: &str,
        other: &str,
        metric: &str,
        f: fn(f64, f64) -> f64,
    ) -> Vec<f64> {
        (0..self.runs.len())
            .filter_map(|r| {
                Some(f(
                    self.get(r, path, scenario, metric)?,
                    self.get(r, path, other, metric)?,
                ))
            })
            .collect()
    }

    pub fn missing(&self, path: PathKind, scenario: &str) -> Option<&str> {
        self.runs.iter().find_map(|run| {
            run.missing
                .iter()
                .find(|((p, s), _)| *p == path.id() && *s == scenario)
                .map(|(_, why)| why.as_str())
        })
    }

    pub fn to_json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let mut paths = serde_json::Map::new();
                for ((p, s), m) in &run.values {
                    let entry = paths.entry(p.to_string()).or_insert_with(|| json!({}));
                    entry[*s] = json!(m);
                }
                let missing: BTreeMap<String, &String> = run
                    .missing
                    .iter()
                    .map(|((p, s), why)| (format!("{p}/{s}"), why))
                    .collect();
                json!({ "run": i + 1, "paths": paths, "missing": missing })
            })
            .collect();
        json!(runs)
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

pub fn added(a: f64, b: f64) -> f64 {
    a - b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = summarize(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 3));
        assert_eq!(summarize(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(summarize(vec![f64::NAN]), None);
    }

    #[test]
    fn paired_compares_within_a_run() {
        let mut results = Results::default();
        for (full, direct) in [(50.0, 100.0), (90.0, 100.0)] {
            let mut run = Run::default();
            run.values
                .insert(("full", "s"), Metrics::from([("rps".to_owned(), full)]));
            run.values
                .insert(("direct", "s"), Metrics::from([("rps".to_owned(), direct)]));
            results.runs.push(run);
        }
        let r = results.paired(PathKind::Full, PathKind::Direct, "s", "rps", ratio);
        assert_eq!(r, vec![0.5, 0.9]);
    }
}
