//! Seeded fault schedules: the same seed gives the same faults, at the same times, on the same nodes.
//!
//! [`Schedule::random`] draws from a tiny deterministic PRNG ([`SplitMix64`]) and obeys, for any seed:
//!
//! - faults run one after another: each starts at least [`FaultMix::min_gap_ms`] after the previous
//!   one ended (restart, SIGCONT, heal), so the cluster can heal in between;
//! - a fault takes at most [`FaultMix::max_faulted`] nodes (by default a minority, `(nodes - 1) / 2`,
//!   so the rest keep a quorum; a scenario that wants a majority loss raises it); a cut between two
//!   nodes ([`Fault::CutPeer`], [`Fault::Asymmetric`]) counts as one faulted node, since every other
//!   link is up and each side keeps a path to the rest;
//! - every fault lasts between [`FaultMix::min_duration_ms`] and [`FaultMix::max_duration_ms`] and
//!   ends before the schedule's end, which leaves [`FaultMix::final_quiet_ms`] without faults;
//! - the first fault starts no earlier than [`FaultMix::initial_quiet_ms`].

use std::fmt;

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one addition and a mix per number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0), by the multiply-high method.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }
}

/// One kind of fault, with its parameters; which nodes it hits is [`FaultStep::targets`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL each target; the end restarts it.
    Kill9,
    /// SIGSTOP each target; the end is SIGCONT.
    Stop,
    /// Each target's bridge port goes down; the end brings it up.
    CutLink,
    /// Traffic between `a` and `b` is dropped both ways (targets: `[a, b]`).
    CutPeer { a: usize, b: usize },
    /// Packets from `from` to `to` are dropped, the other way passes (targets: `[from, to]`).
    Asymmetric { from: usize, to: usize },
    /// Each target is cut off from every other node, both ways, while clients and the backend still
    /// reach it: a minority (or an isolated leader) that keeps serving without a quorum.
    Partition,
    /// `pct` percent of the frames to and from each target are dropped at random.
    Loss { pct: u8 },
    /// Every frame to and from each target waits `ms` plus up to `jitter_ms` (drawn per frame, so
    /// frames reorder), each way: netem's delay and reordering, by a relay in the switch (the test
    /// kernel has no `sch_netem`).
    Delay { ms: u64, jitter_ms: u64 },
    /// The Kubernetes API server refuses connections (no targets).
    ApiServerDown,
    /// The API server accepts but never answers (no targets).
    ApiServerStall,
    /// The API server answers every watch with 410 Gone (no targets).
    ApiServer410,
    /// Each target's data directory is full (ENOSPC).
    DiskFull,
    /// Each target's data directory is read-only (EROFS).
    DiskReadOnly,
    /// Each target's wall clock jumps by `ms` (may be negative); monotonic clocks do not move.
    ClockJump { ms: i64 },
    /// An operator's planned restart, not a failure: SIGTERM each target (it hands its VIPs and
    /// its leadership over, then exits); the end starts it again.
    Restart,
    /// An operator drains each target (`raftgate ctl drain`): its VIPs move off, make-before-break;
    /// the end undrains it.
    Drain,
}

/// The kinds of [`Fault`], without parameters, for weighting in a [`FaultMix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Kill9,
    Stop,
    CutLink,
    CutPeer,
    Asymmetric,
    Partition,
    Loss,
    Delay,
    ApiServerDown,
    ApiServerStall,
    ApiServer410,
    DiskFull,
    DiskReadOnly,
    ClockJump,
    Restart,
    Drain,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Kill9,
        FaultKind::Stop,
        FaultKind::CutLink,
        FaultKind::CutPeer,
        FaultKind::Asymmetric,
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::ApiServerDown,
        FaultKind::ApiServerStall,
        FaultKind::ApiServer410,
        FaultKind::DiskFull,
        FaultKind::DiskReadOnly,
        FaultKind::ClockJump,
        FaultKind::Restart,
        FaultKind::Drain,
    ];

    /// The faults on nodes, their network and their disks, and an operator's restarts and drains,
    /// which need nothing but the network namespaces and a disk per node: the first seeded mix's
    /// kinds (no API server or clock faults). [`FaultKind::ALL`] is the second mix's.
    pub const NODE_AND_NETWORK: [FaultKind; 12] = [
        FaultKind::Kill9,
        FaultKind::Stop,
        FaultKind::CutLink,
        FaultKind::CutPeer,
        FaultKind::Asymmetric,
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::DiskFull,
        FaultKind::DiskReadOnly,
        FaultKind::Restart,
        FaultKind::Drain,
    ];

    /// How many distinct nodes it needs: 0 (the API server), 1 or 2 (a cut between two nodes).
    pub fn nodes_needed(self) -> usize {
        match self {
            FaultKind::ApiServerDown | FaultKind::ApiServerStall | FaultKind::ApiServer410 => 0,
            FaultKind::CutPeer | FaultKind::Asymmetric => 2,
            _ => 1,
        }
    }

    /// Whether it may hit several nodes at once (up to [`FaultMix::max_faulted`]).
    pub fn multi_target(self) -> bool {
        self.nodes_needed() == 1
    }
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill9 => FaultKind::Kill9,
            Fault::Stop => FaultKind::Stop,
            Fault::CutLink => FaultKind::CutLink,
            Fault::CutPeer { .. } => FaultKind::CutPeer,
            Fault::Asymmetric { .. } => FaultKind::Asymmetric,
            Fault::Partition => FaultKind::Partition,
            Fault::Loss { .. } => FaultKind::Loss,
            Fault::Delay { .. } => FaultKind::Delay,
            Fault::ApiServerDown => FaultKind::ApiServerDown,
            Fault::ApiServerStall => FaultKind::ApiServerStall,
            Fault::ApiServer410 => FaultKind::ApiServer410,
            Fault::DiskFull => FaultKind::DiskFull,
            Fault::DiskReadOnly => FaultKind::DiskReadOnly,
            Fault::ClockJump { .. } => FaultKind::ClockJump,
            Fault::Restart => FaultKind::Restart,
            Fault::Drain => FaultKind::Drain,
        }
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultStep {
    /// Its index in the schedule (pairs a fault's start with its end in a timeline).
    pub id: usize,
    /// When it starts, in ms since the run started.
    pub at_ms: u64,
    /// How long until it ends (restart, SIGCONT, heal).
    pub duration_ms: u64,
    pub fault: Fault,
    /// The nodes it involves (1-based, ascending except for directed cuts); empty for API server faults.
    pub targets: Vec<usize>,
}

fn nodes_list(targets: &[usize]) -> String {
    targets.iter().map(|n| format!("n{n}")).collect::<Vec<_>>().join(",")
}

impl FaultStep {
    /// When it ends.
    pub fn end_ms(&self) -> u64 {
        self.at_ms.saturating_add(self.duration_ms)
    }

    /// How many nodes it takes out of a quorum: its targets, but one for a cut between two nodes.
    pub fn faulted_count(&self) -> usize {
        match self.fault {
            Fault::CutPeer { .. } | Fault::Asymmetric { .. } => 1,
            _ => self.targets.len(),
        }
    }

    /// What starts it, e.g. `kill -9 n2`.
    pub fn fault_line(&self) -> String {
        let n = nodes_list(&self.targets);
        match &self.fault {
            Fault::Kill9 => format!("kill -9 {n}"),
            Fault::Stop => format!("SIGSTOP {n}"),
            Fault::CutLink => format!("cut link {n}"),
            Fault::CutPeer { a, b } => format!("cut n{a} <-> n{b}"),
            Fault::Asymmetric { from, to } => format!("drop n{from} -> n{to}"),
            Fault::Partition => format!("partition {n} from the other nodes"),
            Fault::Loss { pct } => format!("loss {pct}% {n}"),
            Fault::Delay { ms, jitter_ms } => format!("delay {n} {ms}ms+0..{jitter_ms}ms each way"),
            Fault::ApiServerDown => "API server down".to_string(),
            Fault::ApiServerStall => "API server stalled".to_string(),
            Fault::ApiServer410 => "API server answers 410 Gone".to_string(),
            Fault::DiskFull => format!("disk full {n}"),
            Fault::DiskReadOnly => format!("disk read-only {n}"),
            Fault::ClockJump { ms } => format!("clock jump {n} {ms:+}ms"),
            Fault::Restart => format!("SIGTERM {n} (planned restart)"),
            Fault::Drain => format!("drain {n}"),
        }
    }

    /// What ends it, e.g. `restart n2`.
    pub fn end_line(&self) -> String {
        let n = nodes_list(&self.targets);
        match &self.fault {
            Fault::Kill9 => format!("restart {n}"),
            Fault::Stop => format!("SIGCONT {n}"),
            Fault::CutLink => format!("heal link {n}"),
            Fault::CutPeer { a, b } => format!("heal n{a} <-> n{b}"),
            Fault::Asymmetric { from, to } => format!("heal n{from} -> n{to}"),
            Fault::Partition => format!("heal partition {n}"),
            Fault::Loss { .. } => format!("loss off {n}"),
            Fault::Delay { .. } => format!("delay off {n}"),
            Fault::ApiServerDown | Fault::ApiServerStall | Fault::ApiServer410 => "API server healthy".to_string(),
            Fault::DiskFull | Fault::DiskReadOnly => format!("disk writable {n}"),
            Fault::ClockJump { .. } => format!("clock back to NTP {n}"),
            Fault::Restart => format!("start {n}"),
            Fault::Drain => format!("undrain {n}"),
        }
    }
}

impl fmt::Display for FaultStep {
    /// `+1234ms  kill -9 n2  (until +2034ms: restart n2)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{}ms  {}  (until +{}ms: {})",
            self.at_ms,
            self.fault_line(),
            self.end_ms(),
            self.end_line()
        )
    }
}

/// Which faults a schedule draws, how often, and its timing constraints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix {
    /// Relative weights; kinds absent or weighted 0 are never drawn.
    pub weights: Vec<(FaultKind, u32)>,
    /// The most nodes one fault may take out; `None`: a minority, `(nodes - 1) / 2`.
    pub max_faulted: Option<usize>,
    /// No fault before this (the cluster forms and the observers settle).
    pub initial_quiet_ms: u64,
    /// Between one fault's end and the next one's start.
    pub min_gap_ms: u64,
    /// Up to this much more is added, at random, to each gap.
    pub gap_jitter_ms: u64,
    pub min_duration_ms: u64,
    pub max_duration_ms: u64,
    /// After the last fault's end, before the schedule's end.
    pub final_quiet_ms: u64,
}

impl Default for FaultMix {
    /// Every kind, node faults weighted 3 and the rest 1; a minority; 2 s quiet at the start, gaps of
    /// 3–4 s (a leader failover is under 2 s), faults of 0.5–3 s, and 10 s quiet at the end (the
    /// healing bound).
    fn default() -> FaultMix {
        FaultMix {
            weights: FaultKind::ALL
                .iter()
                .map(|&k| {
                    let w = match k {
                        FaultKind::Kill9 | FaultKind::Stop | FaultKind::CutLink => 3,
                        _ => 1,
                    };
                    (k, w)
                })
                .collect(),
            max_faulted: None,
            initial_quiet_ms: 2_000,
            min_gap_ms: 3_000,
            gap_jitter_ms: 1_000,
            min_duration_ms: 500,
            max_duration_ms: 3_000,
            final_quiet_ms: 10_000,
        }
    }
}

impl FaultMix {
    /// Only `kinds`, equally weighted, with the default timing.
    pub fn only(kinds: &[FaultKind]) -> FaultMix {
        FaultMix {
            weights: kinds.iter().map(|&k| (k, 1)).collect(),
            ..FaultMix::default()
        }
    }

    /// The most nodes one fault may take out in a cluster of `nodes`.
    pub fn max_faulted(&self, nodes: usize) -> usize {
        self.max_faulted.unwrap_or(nodes.saturating_sub(1) / 2).min(nodes)
    }
}

/// Why no schedule could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("no fault kind of the mix can run on {nodes} nodes with at most {max_faulted} faulted")]
    NothingToDraw { nodes: usize, max_faulted: usize },
    #[error("fault durations {min}..={max} ms: the minimum is 0 or above the maximum")]
    BadDurations { min: u64, max: u64 },
}

/// A seeded sequence of faults and when the run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    pub steps: Vec<FaultStep>,
    /// The run's end: the last fault's end plus the final quiet period.
    pub end_ms: u64,
}

impl Schedule {
    /// `steps` faults drawn from `mix` for a cluster of `nodes`, all from `seed`.
    pub fn random(seed: u64, nodes: usize, steps: usize, mix: &FaultMix) -> Result<Schedule, ScheduleError> {
        if mix.min_duration_ms == 0 || mix.min_duration_ms > mix.max_duration_ms {
            return Err(ScheduleError::BadDurations {
                min: mix.min_duration_ms,
                max: mix.max_duration_ms,
            });
        }
        let max_faulted = mix.max_faulted(nodes);
        let usable: Vec<(FaultKind, u64)> = mix
            .weights
            .iter()
            .filter(|(k, w)| *w > 0 && k.nodes_needed() <= nodes && (k.nodes_needed() == 0 || max_faulted >= 1))
            .map(|&(k, w)| (k, u64::from(w)))
            .collect();
        let total: u64 = usable.iter().map(|(_, w)| w).sum();
        if total == 0 && steps > 0 {
            return Err(ScheduleError::NothingToDraw { nodes, max_faulted });
        }
        let mut rng = SplitMix64::new(seed);
        let mut out = Vec::with_capacity(steps);
        let mut cursor = mix.initial_quiet_ms;
        for id in 0..steps {
            let mut pick = rng.below(total);
            let mut kind = FaultKind::ApiServerDown;
            for &(k, w) in &usable {
                if pick < w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            let (fault, targets) = draw(&mut rng, kind, nodes, max_faulted);
            let at_ms = cursor;
            let duration_ms = rng.range(mix.min_duration_ms, mix.max_duration_ms);
            out.push(FaultStep {
                id,
                at_ms,
                duration_ms,
                fault,
                targets,
            });
            cursor = at_ms + duration_ms + mix.min_gap_ms + rng.range(0, mix.gap_jitter_ms);
        }
        let last_end = out.last().map_or(mix.initial_quiet_ms, FaultStep::end_ms);
        Ok(Schedule {
            seed,
            nodes,
            steps: out,
            end_ms: last_end + mix.final_quiet_ms,
        })
    }
}

/// Draws `kind`'s parameters and targets: distinct nodes, at most `max_faulted` of them for node faults.
fn draw(rng: &mut SplitMix64, kind: FaultKind, nodes: usize, max_faulted: usize) -> (Fault, Vec<usize>) {
    let count = match kind.nodes_needed() {
        0 => 0,
        2 => 2,
        _ => {
            // One node usually; several (up to the limit) a quarter of the time.
            if max_faulted > 1 && rng.below(4) == 0 {
                rng.range(2, max_faulted as u64) as usize
            } else {
                1
            }
        }
    };
    // A partial Fisher-Yates shuffle of 1..=nodes: the first `count` are the targets.
    let mut pool: Vec<usize> = (1..=nodes).collect();
    for i in 0..count.min(nodes) {
        let j = i + rng.below((nodes - i) as u64) as usize;
        pool.swap(i, j);
    }
    let mut targets: Vec<usize> = pool.into_iter().take(count).collect();
    let fault = match kind {
        FaultKind::Kill9 => Fault::Kill9,
        FaultKind::Stop => Fault::Stop,
        FaultKind::CutLink => Fault::CutLink,
        FaultKind::CutPeer => {
            targets.sort_unstable();
            Fault::CutPeer {
                a: targets.first().copied().unwrap_or(1),
                b: targets.get(1).copied().unwrap_or(2),
            }
        }
        // Directed: the targets keep their drawn order, `from` first.
        FaultKind::Asymmetric => Fault::Asymmetric {
            from: targets.first().copied().unwrap_or(1),
            to: targets.get(1).copied().unwrap_or(2),
        },
        FaultKind::Partition => Fault::Partition,
        FaultKind::Loss => Fault::Loss {
            pct: rng.range(1, 30) as u8,
        },
        FaultKind::Delay => {
            let ms = rng.range(10, 60);
            Fault::Delay {
                ms,
                jitter_ms: rng.range(0, ms),
            }
        }
        FaultKind::ApiServerDown => Fault::ApiServerDown,
        FaultKind::ApiServerStall => Fault::ApiServerStall,
        FaultKind::ApiServer410 => Fault::ApiServer410,
        FaultKind::DiskFull => Fault::DiskFull,
        FaultKind::DiskReadOnly => Fault::DiskReadOnly,
        FaultKind::ClockJump => {
            let ms = rng.range(1_000, 60_000) as i64;
            Fault::ClockJump {
                ms: if rng.below(2) == 0 { ms } else { -ms },
            }
        }
        FaultKind::Restart => Fault::Restart,
        FaultKind::Drain => Fault::Drain,
    };
    if !matches!(kind, FaultKind::Asymmetric) {
        targets.sort_unstable();
    }
    (fault, targets)
}

impl fmt::Display for Schedule {
    /// A header with the seed (in the form a rerun takes), then one line per fault and the end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule seed={:#018x} nodes={} faults={} end=+{}ms",
            self.seed,
            self.nodes,
            self.steps.len(),
            self.end_ms
        )?;
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splitmix_matches_the_reference() {
        // The reference sequence for seed 1234567 (from the published C implementation).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        let mut r = SplitMix64::new(0);
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.range(9, 3), 9);
        for _ in 0..1000 {
            assert!((3..=7).contains(&r.range(3, 7)));
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let mix = FaultMix::default();
        let a = Schedule::random(42, 5, 20, &mix).unwrap();
        let b = Schedule::random(42, 5, 20, &mix).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), b.to_string());
        let c = Schedule::random(43, 5, 20, &mix).unwrap();
        assert_ne!(a.steps, c.steps);
    }

    #[test]
    fn lines_read_well() {
        let step = |fault, targets: Vec<usize>| FaultStep {
            id: 0,
            at_ms: 1234,
            duration_ms: 800,
            fault,
            targets,
        };
        assert_eq!(
            step(Fault::Kill9, vec![2]).to_string(),
            "+1234ms  kill -9 n2  (until +2034ms: restart n2)"
        );
        assert_eq!(step(Fault::Stop, vec![1, 3]).fault_line(), "SIGSTOP n1,n3");
        assert_eq!(
            step(Fault::CutPeer { a: 1, b: 2 }, vec![1, 2]).fault_line(),
            "cut n1 <-> n2"
        );
        assert_eq!(
            step(Fault::Asymmetric { from: 3, to: 1 }, vec![3, 1]).fault_line(),
            "drop n3 -> n1"
        );
        assert_eq!(step(Fault::Loss { pct: 5 }, vec![2]).fault_line(), "loss 5% n2");
        assert_eq!(
            step(Fault::Partition, vec![1, 2]).to_string(),
            "+1234ms  partition n1,n2 from the other nodes  (until +2034ms: heal partition n1,n2)"
        );
        assert_eq!(
            step(Fault::ClockJump { ms: -5000 }, vec![2]).fault_line(),
            "clock jump n2 -5000ms"
        );
        assert_eq!(step(Fault::ApiServer410, vec![]).end_line(), "API server healthy");
        let s = Schedule {
            seed: 7,
            nodes: 3,
            steps: vec![step(Fault::Kill9, vec![2])],
            end_ms: 12_034,
        };
        assert_eq!(
            s.to_string(),
            "schedule seed=0x0000000000000007 nodes=3 faults=1 end=+12034ms\n  \
             +1234ms  kill -9 n2  (until +2034ms: restart n2)\n"
        );
    }

    #[test]
    fn impossible_mixes_are_refused() {
        // Two nodes: a minority is 0, so only API server faults may run.
        let only_kill = FaultMix::only(&[FaultKind::Kill9]);
        assert_eq!(
            Schedule::random(1, 2, 3, &only_kill),
            Err(ScheduleError::NothingToDraw {
                nodes: 2,
                max_faulted: 0
            })
        );
        let api = FaultMix::only(&[FaultKind::Kill9, FaultKind::ApiServerStall]);
        let s = Schedule::random(1, 2, 5, &api).unwrap();
        assert!(
            s.steps
                .iter()
                .all(|st| st.fault == Fault::ApiServerStall && st.targets.is_empty())
        );
        let bad = FaultMix {
            min_duration_ms: 0,
            ..FaultMix::default()
        };
        assert!(matches!(
            Schedule::random(1, 3, 1, &bad),
            Err(ScheduleError::BadDurations { .. })
        ));
        // No steps: just the quiet periods.
        let empty = Schedule::random(1, 3, 0, &FaultMix::default()).unwrap();
        assert_eq!(empty.end_ms, 12_000);
    }

    #[test]
    fn a_majority_loss_needs_asking_for() {
        let mix = FaultMix {
            max_faulted: Some(2),
            ..FaultMix::only(&[FaultKind::Kill9])
        };
        let s = Schedule::random(9, 3, 200, &mix).unwrap();
        assert!(s.steps.iter().any(|st| st.targets.len() == 2));
        let minority = Schedule::random(9, 3, 200, &FaultMix::only(&[FaultKind::Kill9])).unwrap();
        assert!(minority.steps.iter().all(|st| st.targets.len() == 1));
    }

    fn arb_mix() -> impl Strategy<Value = FaultMix> {
        (
            proptest::collection::vec(0u32..4, FaultKind::ALL.len()),
            proptest::option::of(0usize..6),
            0u64..5_000,
            0u64..5_000,
            0u64..2_000,
            1u64..3_000,
            0u64..5_000,
            0u64..20_000,
        )
            .prop_map(
                |(w, max_faulted, initial, gap, jitter, min_d, extra_d, quiet)| FaultMix {
                    weights: FaultKind::ALL.iter().copied().zip(w).collect(),
                    max_faulted,
                    initial_quiet_ms: initial,
                    min_gap_ms: gap,
                    gap_jitter_ms: jitter,
                    min_duration_ms: min_d,
                    max_duration_ms: min_d + extra_d,
                    final_quiet_ms: quiet,
                },
            )
    }

    proptest! {
        #[test]
        fn constraints_hold_for_any_seed(seed in any::<u64>(), nodes in 0usize..8, steps in 0usize..30, mix in arb_mix()) {
            let Ok(s) = Schedule::random(seed, nodes, steps, &mix) else {
                // Refused only when nothing can be drawn.
                let max = mix.max_faulted(nodes);
                prop_assert!(!mix.weights.iter().any(|(k, w)| *w > 0 && k.nodes_needed() <= nodes
                    && (k.nodes_needed() == 0 || max >= 1)));
                return Ok(());
            };
            prop_assert_eq!(&s, &Schedule::random(seed, nodes, steps, &mix).unwrap());
            prop_assert_eq!(s.steps.len(), steps);
            let max = mix.max_faulted(nodes);
            let mut prev_end: Option<u64> = None;
            for (i, st) in s.steps.iter().enumerate() {
                prop_assert_eq!(st.id, i);
                // Only drawable kinds, with a positive weight.
                prop_assert!(mix.weights.iter().any(|(k, w)| *k == st.fault.kind() && *w > 0));
                // Targets: distinct, in range, as many as the kind needs, within the faulted limit.
                let mut t = st.targets.clone();
                t.sort_unstable();
                t.dedup();
                prop_assert_eq!(t.len(), st.targets.len());
                prop_assert!(st.targets.iter().all(|&n| (1..=nodes).contains(&n)));
                match st.fault.kind().nodes_needed() {
                    0 => prop_assert!(st.targets.is_empty()),
                    2 => prop_assert_eq!(st.targets.len(), 2),
                    _ => prop_assert!(!st.targets.is_empty()),
                }
                prop_assert!(st.faulted_count() <= max, "{} faulted > {}", st.faulted_count(), max);
                match st.fault {
                    Fault::CutPeer { a, b } => prop_assert!(a < b && st.targets == vec![a, b]),
                    Fault::Asymmetric { from, to } => prop_assert!(st.targets == vec![from, to]),
                    _ => {}
                }
                // Timing: after the initial quiet, healed before the next with the gap, durations in range.
                prop_assert!(st.at_ms >= mix.initial_quiet_ms);
                prop_assert!((mix.min_duration_ms..=mix.max_duration_ms).contains(&st.duration_ms));
                if let Some(end) = prev_end {
                    prop_assert!(st.at_ms >= end + mix.min_gap_ms);
                    prop_assert!(st.at_ms <= end + mix.min_gap_ms + mix.gap_jitter_ms);
                }
                prev_end = Some(st.end_ms());
            }
            // Every fault ends, and the final quiet period follows.
            let last = prev_end.unwrap_or(mix.initial_quiet_ms);
            prop_assert_eq!(s.end_ms, last + mix.final_quiet_ms);
            prop_assert!(s.steps.iter().all(|st| st.end_ms() + mix.final_quiet_ms <= s.end_ms));
        }
    }
}
