//! The README table of many chaos runs: per scenario, runs, violations, failover percentiles, failed requests.

use std::fmt::Write as _;

use crate::invariants::FaultWindow;
use crate::invariants::Violation;

/// What one run contributes to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub scenario: String,
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// The measured failover window of each fault that failed requests ([`FaultWindow::measured_ms`]).
    pub failover_ms: Vec<u64>,
    /// VIP requests that failed, and all of them, during the faults' windows.
    pub failed_during_faults: usize,
    pub total_during_faults: usize,
}

impl RunResult {
    /// A run's result from its violations and [`crate::invariants::fault_windows`].
    pub fn new(scenario: &str, seed: u64, violations: Vec<Violation>, windows: &[FaultWindow]) -> RunResult {
        RunResult {
            scenario: scenario.to_string(),
            seed,
            violations,
            failover_ms: windows.iter().filter_map(FaultWindow::measured_ms).collect(),
            failed_during_faults: windows.iter().map(|w| w.failed).sum(),
            total_during_faults: windows.iter().map(|w| w.total).sum(),
        }
    }
}

impl RunResult {
    /// One line of a drill's results file.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "violations": self.violations.iter().map(|v| serde_json::json!({
                "invariant": v.invariant.number(),
                "at_ms": v.at_ms,
                "detail": v.detail,
            })).collect::<Vec<_>>(),
            "failover_ms": self.failover_ms,
            "failed_during_faults": self.failed_during_faults,
            "total_during_faults": self.total_during_faults,
        })
    }

    /// Reads a line written by [`RunResult::to_json`]; `None` if it is not one.
    pub fn from_json(v: &serde_json::Value) -> Option<RunResult> {
        let count = |k: &str| v[k].as_u64().and_then(|n| usize::try_from(n).ok());
        let violations = v["violations"]
            .as_array()?
            .iter()
            .map(|x| {
                let n = x["invariant"].as_u64()?;
                Some(Violation {
                    invariant: crate::invariants::Invariant::ALL
                        .into_iter()
                        .find(|i| u64::from(i.number()) == n)?,
                    at_ms: x["at_ms"].as_u64()?,
                    detail: x["detail"].as_str()?.to_string(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(RunResult {
            scenario: v["scenario"].as_str()?.to_string(),
            seed: v["seed"].as_u64()?,
            violations,
            failover_ms: v["failover_ms"]
                .as_array()?
                .iter()
                .map(serde_json::Value::as_u64)
                .collect::<Option<_>>()?,
            failed_during_faults: count("failed_during_faults")?,
            total_during_faults: count("total_during_faults")?,
        })
    }
}

/// The `p`th percentile (0–100) of `values`, as the benchmarks compute it (bench/raft.py `pct`): the
/// sorted values' element at index `round(p / 100 × (n − 1))`, halves rounded away from zero. `None`
/// when empty.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0 * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied()
}

/// The Markdown table, one row per scenario in the order they first appear:
/// `scenario | runs | violations | failover p50 | p99 | max | failed requests during faults`.
/// Violations count every violation and name the seeds of the runs that had any, to rerun them.
pub fn table(runs: &[RunResult]) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for r in runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let mut out = String::from(
        "| scenario | runs | violations | failover p50 | p99 | max | failed requests during faults |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
    for name in scenarios {
        let rows: Vec<&RunResult> = runs.iter().filter(|r| r.scenario == name).collect();
        let violations: usize = rows.iter().map(|r| r.violations.len()).sum();
        let failing: Vec<String> = rows
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| format!("{:#x}", r.seed))
            .collect();
        let violations = if failing.is_empty() {
            "0".to_string()
        } else {
            format!("{violations} (seeds {})", failing.join(", "))
        };
        let windows: Vec<u64> = rows.iter().flat_map(|r| r.failover_ms.iter().copied()).collect();
        let failed: usize = rows.iter().map(|r| r.failed_during_faults).sum();
        let total: usize = rows.iter().map(|r| r.total_during_faults).sum();
        let share = if total == 0 {
            String::new()
        } else {
            format!(" ({:.2} %)", failed as f64 * 100.0 / total as f64)
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {violations} | {} | {} | {} | {failed} / {total}{share} |",
            rows.len(),
            ms(percentile(&windows, 50.0)),
            ms(percentile(&windows, 99.0)),
            ms(windows.iter().max().copied()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::Invariant;

    #[test]
    fn percentiles_follow_the_benchmarks_rule() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // Unsorted input; n = 4: p50 → index round(1.5) = 2, p99 → round(2.97) = 3, p0 → 0.
        let v = [40, 10, 30, 20];
        assert_eq!(percentile(&v, 50.0), Some(30));
        assert_eq!(percentile(&v, 99.0), Some(40));
        assert_eq!(percentile(&v, 0.0), Some(10));
        assert_eq!(percentile(&v, 25.0), Some(20)); // round(0.75) = 1
        // 1..=100: p50 → index round(49.5) = 50 → 51; p99 → round(98.01) = 98 → 99; p100 → 100.
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(51));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 100.0), Some(100));
        // Out-of-range p is clamped.
        assert_eq!(percentile(&hundred, 150.0), Some(100));
        assert_eq!(percentile(&hundred, -3.0), Some(1));
    }

    #[test]
    fn the_table_groups_runs_by_scenario() {
        let v = Violation {
            invariant: Invariant::Availability,
            at_ms: 10,
            detail: "x".into(),
        };
        let run = |scenario: &str, seed, violations: Vec<Violation>, failover: Vec<u64>, failed, total| RunResult {
            scenario: scenario.into(),
            seed,
            violations,
            failover_ms: failover,
            failed_during_faults: failed,
            total_during_faults: total,
        };
        let runs = [
            run("kill -9 owner", 1, vec![], vec![300, 280], 20, 400),
            run("api server down", 2, vec![], vec![], 0, 300),
            run("kill -9 owner", 3, vec![v.clone(), v], vec![900], 30, 400),
        ];
        assert_eq!(
            table(&runs),
            "| scenario | runs | violations | failover p50 | p99 | max | failed requests during faults |\n\
             | --- | ---: | --- | ---: | ---: | ---: | ---: |\n\
             | kill -9 owner | 2 | 2 (seeds 0x3) | 300 ms | 900 ms | 900 ms | 50 / 800 (6.25 %) |\n\
             | api server down | 1 | 0 | - | - | - | 0 / 300 (0.00 %) |\n"
        );
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = RunResult {
            scenario: "mix".into(),
            seed: 7,
            violations: vec![Violation {
                invariant: crate::invariants::Invariant::Healing,
                at_ms: 12,
                detail: "no leader".into(),
            }],
            failover_ms: vec![260, 840],
            failed_during_faults: 14,
            total_during_faults: 700,
        };
        assert_eq!(RunResult::from_json(&r.to_json()), Some(r));
        assert_eq!(RunResult::from_json(&serde_json::json!({"seed": 1})), None);
    }
}
