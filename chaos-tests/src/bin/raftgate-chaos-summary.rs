//! `raftgate-chaos-summary`: the Markdown table of a drill's results file (one JSON line per chaos run).

use std::io::Write;
use std::process::ExitCode;

use raftgate_chaos_tests::summary::RunResult;
use raftgate_chaos_tests::summary::table;

const USAGE: &str = "usage: raftgate-chaos-summary RESULTS.jsonl

Reads the lines the chaos runs appended to RESULTS.jsonl (CHAOS_RESULTS) and prints the
table: scenario, runs, invariant violations (with the seeds to rerun), failover p50/p99/max,
and the failed-request fraction during faults. Exit 1 when any run had a violation.
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if path == "-h" || path == "--help" {
        let _ = std::io::stdout().write_all(USAGE.as_bytes());
        return ExitCode::SUCCESS;
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("raftgate-chaos-summary: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line).ok().as_ref().and_then(RunResult::from_json) {
            Some(r) => runs.push(r),
            None => {
                eprintln!("raftgate-chaos-summary: {path}:{}: not a run result", i + 1);
                return ExitCode::from(2);
            }
        }
    }
    let _ = std::io::stdout().write_all(table(&runs).as_bytes());
    if runs.iter().any(|r| !r.violations.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
