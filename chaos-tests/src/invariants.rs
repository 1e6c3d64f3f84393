//! The invariants of a chaos run, one checker each, read from a [`Timeline`] against [`Bounds`].
//!
//! Each checker is `fn(&Timeline, &Bounds) -> Vec<Violation>`, pure; [`check_all`] runs them all and
//! [`report`] renders a failing run: its seed, its schedule, the violations and the compact timeline.
//! A checker that lacks the evidence it needs to decide (no status sample after a deadline, a run
//! that ended too early, a MAC it cannot name) reports a violation rather than passing quietly.
//!
//! What the real system guarantees, and so what the checkers hold it to (vip/src/lib.rs and
//! vip/src/hold.rs have the argument): a VIP's *owner* is its active holder, the only node that
//! answers ARP/ND for it and announces it. A handover is quiet-first: the old owner stops answering
//! (moves the address to `lo`) and reports that, and only then is the new owner committed and
//! announces. A dead or cut-off owner stops answering within its lease (its guard removes the
//! address the moment the process dies), and the leader moves the VIP only after the lease has surely
//! ended. So the answers for one VIP, in time order, switch from one MAC to the next and never
//! interleave, and no "who has" request is ever answered by two MACs — however close together the
//! old owner's last answer and the new owner's first are.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::schedule::Fault;
use crate::schedule::FaultStep;
use crate::schedule::Schedule;
use crate::timeline::Ms;
use crate::timeline::Observation;
use crate::timeline::Status;
use crate::timeline::Timeline;

/// The seven invariants of issue 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// 1. No VIP is answered by two MACs at once, and no two nodes hold the same VIP at once.
    OneOwner,
    /// 2. Once faults stop, every VIP has exactly one owner and the client's neighbour entry points at it.
    SettledOwner,
    /// 3. Every acknowledged config change reaches every live member; versions never go backwards.
    NoLostConfig,
    /// 4. A member without a quorum keeps serving its last state, without errors.
    StaticStability,
    /// 5. Client failures only inside each fault's failover window, and the window within the bound.
    Availability,
    /// 6. The config source runs on one member at a time.
    OneSource,
    /// 7. After the faults, one leader, one config version and every VIP owned, within the bound.
    Healing,
}

impl Invariant {
    /// Every invariant, in order.
    pub const ALL: [Invariant; 7] = [
        Invariant::OneOwner,
        Invariant::SettledOwner,
        Invariant::NoLostConfig,
        Invariant::StaticStability,
        Invariant::Availability,
        Invariant::OneSource,
        Invariant::Healing,
    ];

    /// Its number in issue 7 (1..=7).
    pub fn number(self) -> u8 {
        match self {
            Invariant::OneOwner => 1,
            Invariant::SettledOwner => 2,
            Invariant::NoLostConfig => 3,
            Invariant::StaticStability => 4,
            Invariant::Availability => 5,
            Invariant::OneSource => 6,
            Invariant::Healing => 7,
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OneOwner => "one owner per VIP",
            Invariant::SettledOwner => "settled owner",
            Invariant::NoLostConfig => "no lost config",
            Invariant::StaticStability => "static stability",
            Invariant::Availability => "availability",
            Invariant::OneSource => "one config source",
            Invariant::Healing => "healing",
        }
    }

    /// Its checker.
    pub fn checker(self) -> fn(&Timeline, &Bounds) -> Vec<Violation> {
        match self {
            Invariant::OneOwner => check_one_owner,
            Invariant::SettledOwner => check_settled_owner,
            Invariant::NoLostConfig => check_no_lost_config,
            Invariant::StaticStability => check_static_stability,
            Invariant::Availability => check_availability,
            Invariant::OneSource => check_one_source,
            Invariant::Healing => check_healing,
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// One broken invariant, when and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_ms: Ms,
    pub detail: String,
}

impl fmt::Display for Violation {
    /// `+1234ms  [1 one owner per VIP] detail`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}ms  [{}] {}", self.at_ms, self.invariant, self.detail)
    }
}

fn violation(invariant: Invariant, at_ms: Ms, detail: String) -> Violation {
    Violation {
        invariant,
        at_ms,
        detail,
    }
}

/// The bounds the checkers hold a run to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Two ARP answers of one MAC at most this far apart belong to one continuous claim. Default
    /// 30 ms: the active prober asks every 20 ms, plus 10 ms of scheduling slack.
    pub probe_window_ms: u64,
    /// Failover when the faulted node is not the leader. Default 1000 ms: the project's target is
    /// p99 under 1 s; measured p50 272 ms / max 328 ms for a follower owner (README, "Benchmarks").
    pub failover_ms: u64,
    /// Failover when the faulted node is (or may be) the leader: an election, then the lease fence.
    /// Default 2000 ms: "no run over 2 s" is the target; measured p50 652 ms (bench/failover.sh).
    pub failover_leader_ms: u64,
    /// From the last fault's end until the cluster must have converged (invariant 7). Default 10 s.
    pub heal_ms: u64,
    /// Client failures before this are not judged (the observers start before the cluster is ready).
    /// Default 1000 ms.
    pub warmup_ms: u64,
    /// How much older than its timestamp a status sample's state may be (the poll's round trip and
    /// the gap between the fields' reads). Default 50 ms.
    pub sample_skew_ms: u64,
    /// Failed direct requests tolerated per no-quorum period of a member (invariant 4). Default 0.
    pub static_error_budget: usize,
    /// VIPs must be spread evenly (counts per node differ by at most 1) on each node's last sample if
    /// the run goes on this long after the last fault's end; `None`: not checked. Default 35 s: a
    /// returning member takes VIPs back only after `vip.preempt_delay` (30 s), plus 5 s.
    pub spread_after_ms: Option<u64>,
    /// How long a client request may already be in flight when a fault starts or ends (the probe's
    /// timeout): a request started that long before the fault may still fail because of it, as a
    /// connection reset by a killed owner. Default 200 ms.
    pub in_flight_ms: u64,
    /// Connections a planned operation (a graceful restart or a drain) may reset, per node it
    /// operates on. Default 2: a connection open at the instant the client's neighbour entry moves to
    /// the new owner is reset by the new owner's kernel, which does not know the flow (no L2 handover
    /// avoids that); with a request every 20 ms taking a few ms, one is the most ever open then.
    pub resets_at_switch: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            probe_window_ms: 30,
            failover_ms: 1_000,
            failover_leader_ms: 2_000,
            heal_ms: 10_000,
            warmup_ms: 1_000,
            sample_skew_ms: 50,
            static_error_budget: 0,
            spread_after_ms: Some(35_000),
            in_flight_ms: 200,
            resets_at_switch: 2,
        }
    }
}

/// Runs every checker; the violations sorted by time, then invariant.
pub fn check_all(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let mut out: Vec<Violation> = Invariant::ALL.iter().flat_map(|i| i.checker()(t, b)).collect();
    out.sort_by_key(|v| (v.at_ms, v.invariant));
    out
}

/// What a failing run prints: the seed (to rerun it), the schedule, the violations, the compact timeline.
pub fn report(schedule: &Schedule, t: &Timeline, violations: &[Violation]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chaos run with seed {:#018x} ({}): {} violation(s)",
        schedule.seed,
        schedule.seed,
        violations.len()
    );
    out.push_str(&schedule.to_string());
    out.push_str("violations:\n");
    for v in violations {
        let _ = writeln!(out, "  {v}");
    }
    out.push_str("timeline:\n");
    out.push_str(&t.render_compact());
    out
}

fn fmt_mac(t: &Timeline, mac: &str) -> String {
    t.name_mac(mac)
}

// ------------------------------------------------------------------------------------------------
// 1. One owner

/// Invariant 1: no VIP is answered by two MACs at once, and no two nodes hold it at once.
///
/// Reads [`Observation::ArpSeen`] (announcements and replies), [`Observation::WhoHas`] and the
/// `held_vips` of reachable [`Observation::Status`] samples. Three rules, per VIP:
///
/// 1. **Claims never interleave.** Each MAC's ARP answers for the VIP, in time order, form *claims*:
///    maximal runs in which consecutive answers are at most [`Bounds::probe_window_ms`] apart (the
///    owner answers every request of the 20 ms prober). Two claims of different MACs that overlap in
///    time (inclusive) are a violation. A handover — the old MAC's last answer strictly before the new
///    MAC's first, the old one never answering again while the new one does — is not, however close
///    the two answers are: that is exactly the quiet-first order the system guarantees.
/// 2. **One answer per request.** Replies (not announcements) between one `WhoHas` for the VIP and
///    the next (the last request: for [`Bounds::probe_window_ms`]) from two MACs are a violation:
///    both MACs were active at the instant the request arrived.
/// 3. **One holder per status.** A run of consecutive reachable samples of node X that list the VIP,
///    from `f` to `l`, proves X held it throughout `[f, l - sample_skew_ms]`; a sample of node Y ≠ X
///    listing it at `s`, with `[s - sample_skew_ms, s]` inside that interval, is a violation. (A sample
///    may show a state up to the skew older than its timestamp; X could have dropped and retaken the
///    VIP between two polls only by a move and a move back, which the preemption delay rules out.)
pub fn check_one_owner(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let mut out = Vec::new();
    let vips = all_vips(t);
    for vip in &vips {
        // Rule 1: claims by MAC.
        let mut by_mac: BTreeMap<&str, Vec<Ms>> = BTreeMap::new();
        let mut requests: Vec<Ms> = Vec::new();
        let mut replies: Vec<(Ms, &str)> = Vec::new();
        for e in t.events() {
            match &e.obs {
                Observation::ArpSeen { vip: v, mac, kind } if v == vip => {
                    by_mac.entry(mac.as_str()).or_default().push(e.at_ms);
                    if *kind == crate::timeline::ArpKind::Reply {
                        replies.push((e.at_ms, mac.as_str()));
                    }
                }
                Observation::WhoHas { vip: v } if v == vip => requests.push(e.at_ms),
                _ => {}
            }
        }
        let mut claims: Vec<(&str, Ms, Ms)> = Vec::new();
        for (mac, times) in &by_mac {
            let mut start = None;
            let mut last = 0;
            for &at in times {
                match start {
                    Some(s) if at.saturating_sub(last) > b.probe_window_ms => {
                        claims.push((mac, s, last));
                        start = Some(at);
                    }
                    Some(_) => {}
                    None => start = Some(at),
                }
                last = at;
            }
            if let Some(s) = start {
                claims.push((mac, s, last));
            }
        }
        claims.sort_by_key(|c| (c.1, c.2));
        for (i, a) in claims.iter().enumerate() {
            for c in &claims[i + 1..] {
                if c.1 > a.2 {
                    break; // sorted by start: no later claim overlaps `a`
                }
                if c.0 != a.0 {
                    out.push(violation(
                        Invariant::OneOwner,
                        c.1.max(a.1),
                        format!(
                            "{vip} claimed by two MACs at once: {} answered from +{}ms to +{}ms, {} from +{}ms to +{}ms",
                            fmt_mac(t, a.0),
                            a.1,
                            a.2,
                            fmt_mac(t, c.0),
                            c.1,
                            c.2
                        ),
                    ));
                }
            }
        }
        // Rule 2: one request, two answering MACs.
        for (i, &req) in requests.iter().enumerate() {
            let until = requests.get(i + 1).copied().unwrap_or(req + b.probe_window_ms);
            let macs: BTreeSet<&str> = replies
                .iter()
                .filter(|(at, _)| *at >= req && *at < until)
                .map(|(_, m)| *m)
                .collect();
            if macs.len() > 1 {
                let names: Vec<String> = macs.iter().map(|m| fmt_mac(t, m)).collect();
                out.push(violation(
                    Invariant::OneOwner,
                    req,
                    format!(
                        "who-has {vip} at +{req}ms answered by {} MACs: {}",
                        macs.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
        // Rule 3: status samples.
        out.extend(status_overlaps(t, b, *vip));
    }
    out
}

/// Every VIP the timeline mentions: the pool, ARP, statuses and neighbour entries.
fn all_vips(t: &Timeline) -> BTreeSet<IpAddr> {
    let mut vips: BTreeSet<IpAddr> = t.pool().iter().copied().collect();
    for e in t.events() {
        match &e.obs {
            Observation::ArpSeen { vip, .. }
            | Observation::WhoHas { vip }
            | Observation::NeighbourCache { vip, .. } => {
                vips.insert(*vip);
            }
            Observation::Status(s) => vips.extend(s.held_vips.iter().copied()),
            _ => {}
        }
    }
    vips
}

fn status_overlaps(t: &Timeline, b: &Bounds, vip: IpAddr) -> Vec<Violation> {
    // Runs of consecutive holding samples, per node: (node, sample times).
    let mut runs: Vec<(usize, Vec<Ms>)> = Vec::new();
    let mut open: BTreeMap<usize, usize> = BTreeMap::new();
    for (at, s) in t.statuses() {
        if s.reachable && s.held_vips.contains(&vip) {
            match open.get(&s.node) {
                Some(&i) => {
                    if let Some(run) = runs.get_mut(i) {
                        run.1.push(at);
                    }
                }
                None => {
                    open.insert(s.node, runs.len());
                    runs.push((s.node, vec![at]));
                }
            }
        } else {
            open.remove(&s.node);
        }
    }
    let mut out = Vec::new();
    let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
    for (x, xs) in &runs {
        let (Some(&f), Some(&l)) = (xs.first(), xs.last()) else {
            continue;
        };
        let Some(sure_end) = l.checked_sub(b.sample_skew_ms).filter(|&e| e >= f) else {
            continue;
        };
        for (y, ys) in &runs {
            if y == x || reported.contains(&(*x, *y)) {
                continue;
            }
            if let Some(&s) = ys
                .iter()
                .find(|&&s| s.saturating_sub(b.sample_skew_ms) >= f && s <= sure_end)
            {
                reported.insert((*x, *y));
                out.push(violation(
                    Invariant::OneOwner,
                    s,
                    format!("{vip} held by n{x} (every sample from +{f}ms to +{l}ms) and by n{y} (sample at +{s}ms)"),
                ));
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 2. Settled owner

/// When the faults stopped: the last fault's end, or [`Bounds::warmup_ms`] without faults. A fault
/// that never ended is a violation of `inv`, reported at its start, and the run's end is used.
fn quiet_since(t: &Timeline, b: &Bounds, inv: Invariant, out: &mut Vec<Violation>) -> Ms {
    let mut quiet = b.warmup_ms;
    for (step, start, end) in t.faults() {
        match end {
            Some(e) => quiet = quiet.max(e),
            None => {
                out.push(violation(
                    inv,
                    start,
                    format!("fault `{}` never ended (no `{}`)", step.fault_line(), step.end_line()),
                ));
                quiet = quiet.max(t.end_ms());
            }
        }
    }
    quiet
}

/// Each node's last reachable sample at or after `from`, if its last sample is reachable.
fn last_samples(t: &Timeline, from: Ms) -> BTreeMap<usize, (Ms, &Status)> {
    let mut last: BTreeMap<usize, (Ms, &Status)> = BTreeMap::new();
    for (at, s) in t.statuses().filter(|(at, _)| *at >= from) {
        last.insert(s.node, (at, s));
    }
    last.retain(|_, (_, s)| s.reachable);
    last
}

/// The violation of a run too short to decide: it ended before the `what` deadline.
fn ended_before(t: &Timeline, inv: Invariant, what: &str, deadline: Ms) -> Violation {
    violation(
        inv,
        t.end_ms(),
        format!(
            "the run ended at +{}ms, before the {what} deadline +{deadline}ms",
            t.end_ms()
        ),
    )
}

/// Invariant 2: once faults stop, every VIP has exactly one owner, and the client's neighbour entry
/// for it shows that owner's MAC, within the failover bound.
///
/// Reads the fault starts and ends, the status samples, ARP answers and neighbour entries. With `Q`
/// the end of the last fault and `D = Q + failover_leader_ms` (the last fault may have hit the
/// leader), for each VIP of the pool (and every VIP seen):
///
/// - the *final owner* is the one node whose last status sample (at or after `D`, reachable) lists
///   the VIP; none or several is a violation;
/// - every ARP answer for the VIP at or after `D` comes from the final owner's MAC;
/// - there is at least one neighbour-entry sample for the VIP at or after `D`, and every one shows
///   the final owner's MAC (an incomplete entry is wrong too).
///
/// A run that ends before `D`, a VIP without any reachable sample after `D`, or an owner whose MAC the
/// timeline does not know is a violation (nothing could be decided). A fault that never ended is one.
pub fn check_settled_owner(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::SettledOwner;
    let mut out = Vec::new();
    let quiet = quiet_since(t, b, inv, &mut out);
    let deadline = quiet + b.failover_leader_ms;
    if t.end_ms() < deadline {
        out.push(ended_before(t, inv, "settle", deadline));
        return out;
    }
    let last = last_samples(t, deadline);
    for vip in all_vips(t) {
        let holders: Vec<usize> = last
            .values()
            .filter(|(_, s)| s.held_vips.contains(&vip))
            .map(|(_, s)| s.node)
            .collect();
        let owner = match holders.as_slice() {
            [one] => *one,
            _ => {
                let detail = if last.is_empty() {
                    format!("{vip}: no node answered its status after the settle deadline +{deadline}ms")
                } else {
                    format!(
                        "{vip} has {} owners after the settle deadline +{deadline}ms: {:?} (last samples)",
                        holders.len(),
                        holders
                    )
                };
                out.push(violation(inv, deadline, detail));
                continue;
            }
        };
        let Some(mac) = t.mac_of(owner) else {
            out.push(violation(
                inv,
                deadline,
                format!("{vip} is owned by n{owner}, whose MAC the timeline does not know"),
            ));
            continue;
        };
        let mut wrong_arp: BTreeSet<&str> = BTreeSet::new();
        let mut neigh_seen = false;
        let mut neigh_wrong = false;
        for e in t.events().iter().filter(|e| e.at_ms >= deadline) {
            match &e.obs {
                Observation::ArpSeen { vip: v, mac: m, .. }
                    if *v == vip && !m.eq_ignore_ascii_case(mac) && wrong_arp.insert(m.as_str()) =>
                {
                    out.push(violation(
                        inv,
                        e.at_ms,
                        format!(
                            "{vip} answered by {} after the settle deadline; its owner is n{owner} ({mac})",
                            fmt_mac(t, m)
                        ),
                    ));
                }
                Observation::NeighbourCache { vip: v, mac: m } if *v == vip => {
                    neigh_seen = true;
                    let right = m.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(mac));
                    if !right && !neigh_wrong {
                        neigh_wrong = true;
                        out.push(violation(
                            inv,
                            e.at_ms,
                            format!(
                                "the client's neighbour entry for {vip} shows {} after the settle deadline +{deadline}ms; \
                                 its owner is n{owner} ({mac})",
                                m.as_deref().map_or_else(|| "no MAC".to_string(), |m| fmt_mac(t, m))
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        if !neigh_seen {
            out.push(violation(
                inv,
                deadline,
                format!("no sample of the client's neighbour entry for {vip} after the settle deadline +{deadline}ms"),
            ));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 3. No lost config

/// Invariant 3: no committed config change is lost, and a member's version never goes backwards.
///
/// Reads reachable, `ready` status samples (before `ready` a member serves nothing and its version
/// means nothing) and [`Observation::Acked`].
///
/// - **Monotonic:** on each node, the `config_version` of its ready samples never decreases (one
///   violation per node and highest version, however many samples stay below it) — across restarts too, since each applied change is fsynced before it is served (docs/config.md: "a
///   member restarted without a quorum comes back with at least the version it served before").
/// - **Delivered:** for each `Acked { version }` at `a`, every *live* node (whose last sample is
///   reachable) has a ready sample at or after `a` with `config_version >= version` (versions count
///   batches, so a higher one includes the change) by the end of the run.
pub fn check_no_lost_config(t: &Timeline, _b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::NoLostConfig;
    let mut out = Vec::new();
    let mut max_seen: BTreeMap<usize, (Ms, u64)> = BTreeMap::new();
    // One violation per node and high-water mark, not one per sample below it.
    let mut reported: BTreeSet<(usize, u64)> = BTreeSet::new();
    for (at, s) in t.statuses().filter(|(_, s)| s.reachable && s.ready) {
        match max_seen.get(&s.node) {
            Some(&(_, v)) if s.config_version < v && !reported.insert((s.node, v)) => {}
            Some(&(when, v)) if s.config_version < v => out.push(violation(
                inv,
                at,
                format!(
                    "n{} went back from config v{v} (served at +{when}ms) to v{}",
                    s.node, s.config_version
                ),
            )),
            Some(&(_, v)) if s.config_version == v => {}
            _ => {
                max_seen.insert(s.node, (at, s.config_version));
            }
        }
    }
    let live: BTreeSet<usize> = last_samples(t, 0).keys().copied().collect();
    for e in t.events() {
        let Observation::Acked { version } = e.obs else {
            continue;
        };
        for &node in &live {
            let served = t.statuses().any(|(at, s)| {
                at >= e.at_ms && s.node == node && s.reachable && s.ready && s.config_version >= version
            });
            if !served {
                let last = max_seen
                    .get(&node)
                    .map_or_else(|| "nothing".to_string(), |(at, v)| format!("v{v} at +{at}ms"));
                out.push(violation(
                    inv,
                    e.at_ms,
                    format!("config v{version}, acknowledged at +{}ms, never served by live member n{node} (it served at most {last})", e.at_ms),
                ));
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 4. Static stability

/// Whether `step` keeps clients off `node` by itself (so a failed direct request proves nothing).
/// A full disk does: the member exits, and is started again as the fault ends.
fn isolates_from_clients(step: &FaultStep, node: usize) -> bool {
    matches!(
        step.fault,
        Fault::Kill9
            | Fault::Stop
            | Fault::CutLink
            | Fault::Loss { .. }
            | Fault::Delay { .. }
            | Fault::DiskFull
            | Fault::DiskReadOnly
            | Fault::Restart
    ) && step.targets.contains(&node)
}

/// Invariant 4: a member without a quorum keeps serving its last state, with no errors caused by the
/// lost consensus.
///
/// Reads status samples, direct probes (`Probe { node: Some(n) }`: requests sent to a node's own
/// address; requests through a VIP cannot show it, since a member without a quorum gives up its VIPs)
/// and faults. A node's *no-quorum period* runs from a reachable sample with `quorum_contact` false to
/// its next sample with a quorum or unreachable (or the run's end). Within one:
///
/// - every sample must be `ready` with a `config_version` at least that of its last ready sample
///   before the period (a lower version, or not ready, is "stopped serving its last state");
/// - failed direct probes to the node number at most [`Bounds::static_error_budget`], not counting
///   those while a fault that keeps clients off the node itself (kill -9, SIGSTOP, a planned restart, a
///   cut link, packet loss or delay on it, a full or failed disk, which stops its process) is on or
///   ended less than [`Bounds::failover_ms`] ago (a restarted process binds its listeners). A cut
///   between peers, a drain, a clock jump or the API server's faults excuse nothing.
pub fn check_static_stability(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::StaticStability;
    let mut out = Vec::new();
    let faults = t.faults();
    let end = t.end_ms();
    let mut per_node: BTreeMap<usize, Vec<(Ms, &Status)>> = BTreeMap::new();
    for (at, s) in t.statuses() {
        per_node.entry(s.node).or_default().push((at, s));
    }
    for (node, samples) in per_node {
        // A process started again after kill -9 or a planned restart loads its state and
        // rejoins: until its first ready sample it is starting, not a member that stopped
        // serving for want of a quorum. A member whose disk filled up or failed stops its
        // process on purpose (its Raft cannot go on), and is started again as the fault ends,
        // as by its supervisor.
        let restarted = |f: &Fault| matches!(f, Fault::Kill9 | Fault::DiskFull | Fault::DiskReadOnly | Fault::Restart);
        let restarts: Vec<Ms> = faults
            .iter()
            .filter(|(step, _, _)| restarted(&step.fault) && step.targets.contains(&node))
            .filter_map(|(_, _, e)| *e)
            .collect();
        let disk_failed = |at: Ms| {
            faults.iter().any(|(step, s, e)| {
                matches!(step.fault, Fault::DiskFull | Fault::DiskReadOnly)
                    && step.targets.contains(&node)
                    && *s <= at
                    && e.is_none_or(|e| at <= e)
            })
        };
        let starting = |at: Ms| {
            restarts.iter().any(|&r| {
                r <= at
                    && !samples
                        .iter()
                        .any(|(a, s)| *a >= r && *a < at && s.reachable && s.ready)
            })
        };
        let mut last_version: Option<u64> = None;
        let mut i = 0;
        while let Some(&(at, s)) = samples.get(i) {
            if !s.reachable || s.quorum_contact {
                if s.reachable && s.ready {
                    last_version = Some(s.config_version);
                }
                i += 1;
                continue;
            }
            // A no-quorum period starts at `at`.
            let start = at;
            let mut j = i;
            let mut stopped_serving = false;
            while let Some(&(at2, s2)) = samples.get(j) {
                if !s2.reachable || s2.quorum_contact {
                    break;
                }
                let behind = last_version.is_some_and(|v| s2.config_version < v);
                if (!s2.ready && !starting(at2) || s2.ready && behind) && !stopped_serving && !disk_failed(at2) {
                    stopped_serving = true;
                    out.push(violation(
                        inv,
                        at2,
                        format!(
                            "n{node} without a quorum stopped serving its last state: {} (last served before: {})",
                            if s2.ready {
                                format!("serves v{}", s2.config_version)
                            } else {
                                "not ready".to_string()
                            },
                            last_version.map_or_else(|| "nothing".to_string(), |v| format!("v{v}"))
                        ),
                    ));
                }
                j += 1;
            }
            let stop = samples.get(j).map_or(end, |(at2, _)| *at2);
            let excused = |at: Ms| {
                faults.iter().any(|(step, s, e)| {
                    isolates_from_clients(step, node) && at >= *s && e.is_none_or(|e| at <= e + b.failover_ms)
                })
            };
            let failures: Vec<(Ms, &str)> = t
                .events()
                .iter()
                .filter(|e| e.at_ms >= start && e.at_ms <= stop)
                .filter_map(|e| match &e.obs {
                    Observation::Probe {
                        ok: false,
                        node: Some(n),
                        error,
                        ..
                    } if *n == node && !excused(e.at_ms) => Some((e.at_ms, error.as_deref().unwrap_or("?"))),
                    _ => None,
                })
                .collect();
            if failures.len() > b.static_error_budget
                && let Some(&(first, why)) = failures.first()
            {
                out.push(violation(
                    inv,
                    first,
                    format!(
                        "n{node} without a quorum (+{start}ms to +{stop}ms) failed {} direct request(s) \
                         (budget {}); first: {why}",
                        failures.len(),
                        b.static_error_budget
                    ),
                ));
            }
            i = j.max(i + 1);
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 5. Availability

/// The leader at `at` as the status samples had it: among each node's latest reachable sample at or
/// before `at`, the leader named by the one with the highest term (the latest on a tie).
fn leader_at(t: &Timeline, at: Ms) -> Option<u64> {
    let mut latest: BTreeMap<usize, (Ms, &Status)> = BTreeMap::new();
    for (when, s) in t.statuses().filter(|(when, s)| *when <= at && s.reachable) {
        latest.insert(s.node, (when, s));
    }
    latest
        .values()
        .max_by_key(|(when, s)| (s.term, *when))
        .and_then(|(_, s)| s.leader)
}

/// How a fault may hurt clients of the VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impact {
    /// None may fail: the API server's faults and wall-clock jumps (the tier serves its last state
    /// and reads only monotonic clocks).
    None,
    /// A failover after its start (bounded by the faulted nodes' role) and after its end (a rejoining
    /// node may cause an election: the leader bound).
    Failover,
    /// Failures throughout and until the leader bound after its end: packet loss or delay degrades a link
    /// for as long as it is on (a request through a delayed owner may outlast the client's timeout), and a
    /// fault taking out a majority leaves no leader to hand out VIPs.
    Throughout,
    /// None may fail but for [`Bounds::resets_at_switch`] connection resets per node operated on: an
    /// operator's graceful restart or drain hands VIPs over make-before-break, and leadership over
    /// before the leader stops.
    Graceful,
}

/// How `step` may hurt clients in a cluster of `nodes`.
pub fn impact(step: &FaultStep, nodes: usize) -> Impact {
    match step.fault {
        Fault::ApiServerDown | Fault::ApiServerStall | Fault::ApiServer410 | Fault::ClockJump { .. } => Impact::None,
        Fault::Loss { .. } | Fault::Delay { .. } => Impact::Throughout,
        _ if step.faulted_count() > nodes.saturating_sub(1) / 2 => Impact::Throughout,
        Fault::Restart | Fault::Drain => Impact::Graceful,
        _ => Impact::Failover,
    }
}

/// One fault's allowed failure windows and what the client saw during it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub step: FaultStep,
    pub start_ms: Ms,
    pub end_ms: Option<Ms>,
    /// Whether the leader was among its targets when it started (or no leader was known).
    pub hit_leader: bool,
    /// Where requests through the VIPs may fail, `[from, to]` inclusive.
    pub allowed: Vec<(Ms, Ms)>,
    /// VIP requests that started from the fault's start to `failover_leader_ms` after its end.
    pub total: usize,
    pub failed: usize,
    pub first_failure_ms: Option<Ms>,
    pub last_failure_ms: Option<Ms>,
    /// From the fault's start to the last failed request of its failover window (its first allowed
    /// window): how long clients saw the failover. `None` when no request failed there.
    pub failover_ms: Option<u64>,
}

impl FaultWindow {
    /// The measured failover: the fault's start to the last failure of its failover window (what
    /// the benchmarks call the failover time, to the request resolution of the probe).
    pub fn measured_ms(&self) -> Option<u64> {
        self.failover_ms
    }
}

/// Every fault's windows and measurements (see [`check_availability`]).
pub fn fault_windows(t: &Timeline, b: &Bounds) -> Vec<FaultWindow> {
    let run_end = t.end_ms();
    t.faults()
        .into_iter()
        .map(|(step, start, end)| {
            let leader = leader_at(t, start);
            let hit_leader = leader.is_none_or(|l| step.targets.iter().any(|&n| n as u64 == l));
            let until = end.unwrap_or(run_end);
            let early = |at: Ms| at.saturating_sub(b.in_flight_ms);
            let allowed = match impact(step, t.nodes()) {
                Impact::None | Impact::Graceful => Vec::new(),
                Impact::Throughout => vec![(early(start), until + b.failover_leader_ms)],
                Impact::Failover => {
                    let bound = if hit_leader {
                        b.failover_leader_ms
                    } else {
                        b.failover_ms
                    };
                    let mut w = vec![(early(start), start + bound)];
                    if let Some(e) = end {
                        w.push((early(e), e + b.failover_leader_ms));
                    }
                    w
                }
            };
            let mut total = 0;
            let mut failures = Vec::new();
            for e in t.events() {
                if let Observation::Probe { ok, node: None, .. } = e.obs
                    && e.at_ms >= early(start)
                    && e.at_ms <= until + b.failover_leader_ms
                {
                    total += 1;
                    if !ok {
                        failures.push(e.at_ms);
                    }
                }
            }
            let failover_ms = allowed.first().and_then(|&(from, to)| {
                let last = failures.iter().rev().find(|&&at| at >= from && at <= to)?;
                Some(last.saturating_sub(start))
            });
            FaultWindow {
                step: step.clone(),
                start_ms: start,
                end_ms: end,
                hit_leader,
                allowed,
                total,
                failed: failures.len(),
                first_failure_ms: failures.first().copied(),
                last_failure_ms: failures.last().copied(),
                failover_ms,
            }
        })
        .collect()
}

/// Invariant 5: availability. Requests through the VIPs fail only inside a fault's allowed window.
///
/// Reads VIP probes (`Probe { node: None }`, timed at their start), faults and status samples (who
/// led when a fault started). Each fault gets windows by its [`impact`]: none for the API server and
/// clock jumps; for crashes, stops, cuts and disk faults `[start, start + bound]`, the bound
/// [`Bounds::failover_leader_ms`] if a target was the leader at the start (per the latest samples; or
/// if no leader was known) and [`Bounds::failover_ms`] otherwise, plus `[end, end +
/// failover_leader_ms]` (a rejoining node may force an election); for packet loss and majority faults
/// `[start, end + failover_leader_ms]`; for an operator's graceful restart or drain none, but up to
/// [`Bounds::resets_at_switch`] connections reset per node operated on, from its start to
/// `failover_leader_ms` after its end. A failed VIP probe after [`Bounds::warmup_ms`] and outside
/// every window (and not an allowed reset) is a violation; consecutive such failures are reported as
/// one, with their count. [`fault_windows`] reports what was measured per fault (first to last
/// failure), for the summary.
pub fn check_availability(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::Availability;
    let windows = fault_windows(t, b);
    let allowed = |at: Ms| {
        windows
            .iter()
            .any(|w| w.allowed.iter().any(|(from, to)| at >= *from && at <= *to))
    };
    // Per graceful operation: where it may reset connections, and how many more it may.
    let mut resets: Vec<(Ms, Ms, usize)> = windows
        .iter()
        .filter(|w| impact(&w.step, t.nodes()) == Impact::Graceful)
        .map(|w| {
            let until = w.end_ms.unwrap_or(t.end_ms());
            (
                w.start_ms.saturating_sub(b.in_flight_ms),
                until + b.failover_leader_ms,
                b.resets_at_switch * w.step.targets.len(),
            )
        })
        .collect();
    let mut reset_allowed = |at: Ms, error: Option<&str>| {
        if !error.is_some_and(|e| e.contains("reset by peer")) {
            return false;
        }
        match resets
            .iter_mut()
            .find(|(from, to, left)| at >= *from && at <= *to && *left > 0)
        {
            Some(budget) => {
                budget.2 -= 1;
                true
            }
            None => false,
        }
    };
    let mut out = Vec::new();
    // An open burst: (first, last, count, first error).
    let mut burst: Option<(Ms, Ms, usize, String)> = None;
    let close = |burst: &mut Option<(Ms, Ms, usize, String)>, out: &mut Vec<Violation>| {
        if let Some((first, last, n, why)) = burst.take() {
            let faulted: Vec<String> = windows
                .iter()
                .filter(|w| first >= w.start_ms && w.end_ms.is_none_or(|e| first <= e))
                .map(|w| w.step.fault_line())
                .collect();
            let context = if faulted.is_empty() {
                "no fault on".to_string()
            } else {
                format!("during `{}`, past its window", faulted.join("`, `"))
            };
            out.push(violation(
                inv,
                first,
                format!("{n} request(s) through the VIP failed from +{first}ms to +{last}ms ({context}); first: {why}"),
            ));
        }
    };
    for e in t.events() {
        let Observation::Probe {
            ok, node: None, error, ..
        } = &e.obs
        else {
            continue;
        };
        if *ok {
            close(&mut burst, &mut out);
        } else if e.at_ms >= b.warmup_ms && !allowed(e.at_ms) && !reset_allowed(e.at_ms, error.as_deref()) {
            match &mut burst {
                Some(open) => {
                    open.1 = e.at_ms;
                    open.2 += 1;
                }
                None => burst = Some((e.at_ms, e.at_ms, 1, error.clone().unwrap_or_else(|| "?".into()))),
            }
        }
    }
    close(&mut burst, &mut out);
    out
}

// ------------------------------------------------------------------------------------------------
// 6. One source

/// Invariant 6: the config source runs on one member at a time.
///
/// Reads reachable status samples with `source_running`. Only a leader holding its lease runs the
/// source, and a new leader's term begins only after every earlier leader's lease (vip/src/lib.rs,
/// A2), so:
///
/// - **Same term:** two different nodes reporting the source running in the same term is a violation
///   whenever it was sampled (a term has one leader).
/// - **Older term after a newer one:** node X reporting it running in term `tx` at `s` after another
///   node Y reported it running in a higher term at `r`, with `s > r + sample_skew_ms`, is a
///   violation: once a later term's leader ran its source, no earlier leader may run one again. Within
///   the skew the samples cannot order the two (a sample's state may be that much older than its
///   timestamp), so that is not judged.
///
/// One violation per pair of nodes and term.
pub fn check_one_source(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::OneSource;
    let mut out = Vec::new();
    let mut first_by_term: BTreeMap<u64, BTreeMap<usize, Ms>> = BTreeMap::new();
    // The highest term seen running so far: (term, node, time).
    let mut newest: Option<(u64, usize, Ms)> = None;
    let mut reported: BTreeSet<(u64, usize, usize)> = BTreeSet::new();
    for (at, s) in t.statuses().filter(|(_, s)| s.reachable && s.source_running) {
        let nodes = first_by_term.entry(s.term).or_default();
        for (&other, &when) in nodes.iter() {
            if other != s.node && reported.insert((s.term, other.min(s.node), other.max(s.node))) {
                out.push(violation(
                    inv,
                    at,
                    format!(
                        "the source runs on n{other} (sampled at +{when}ms) and on n{} in the same term {}",
                        s.node, s.term
                    ),
                ));
            }
        }
        nodes.entry(s.node).or_insert(at);
        if let Some((term, node, when)) = newest
            && term > s.term
            && node != s.node
            && at > when + b.sample_skew_ms
            && reported.insert((s.term, s.node, node))
        {
            out.push(violation(
                inv,
                at,
                format!(
                    "the source runs on n{} in term {} at +{at}ms, after n{node} ran it in the later term {term} \
                     (sampled at +{when}ms)",
                    s.node, s.term
                ),
            ));
        }
        if newest.is_none_or(|(term, _, _)| s.term > term) {
            newest = Some((s.term, s.node, at));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 7. Healing

/// Invariant 7: after the faults, the cluster converges within [`Bounds::heal_ms`].
///
/// Reads status samples and faults. With `Q` the end of the last fault and `D = Q + heal_ms`, each of
/// the timeline's nodes must have a reachable sample at or after `D`; the first such sample of every
/// node must be `ready` and agree on one leader (named, and one of the nodes), one term and one
/// `config_version` (the runner makes no config changes in the final quiet period), and together
/// they must hold every VIP exactly once. After `D`, no reachable sample may name another leader or
/// term (it stays converged). If [`Bounds::spread_after_ms`] is set and the run goes on that long
/// after `Q`, the last samples must spread the VIPs evenly: per node counts differ by at most one.
/// A run that ends before `D` is a violation.
pub fn check_healing(t: &Timeline, b: &Bounds) -> Vec<Violation> {
    let inv = Invariant::Healing;
    let mut out = Vec::new();
    let quiet = quiet_since(t, b, inv, &mut out);
    let deadline = quiet + b.heal_ms;
    if t.end_ms() < deadline {
        out.push(ended_before(t, inv, "heal", deadline));
        return out;
    }
    let mut first: BTreeMap<usize, (Ms, &Status)> = BTreeMap::new();
    for (at, s) in t.statuses().filter(|(at, s)| *at >= deadline && s.reachable) {
        first.entry(s.node).or_insert((at, s));
    }
    for node in 1..=t.nodes() {
        if !first.contains_key(&node) {
            out.push(violation(
                inv,
                deadline,
                format!("n{node} did not answer its status after the heal deadline +{deadline}ms"),
            ));
        }
    }
    let describe = |m: &BTreeMap<usize, (Ms, &Status)>, f: &dyn Fn(&Status) -> String| -> String {
        m.values()
            .map(|(_, s)| format!("n{}: {}", s.node, f(s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let leaders: BTreeSet<(Option<u64>, u64)> = first.values().map(|(_, s)| (s.leader, s.term)).collect();
    let agreed = match leaders.iter().next() {
        Some(&(Some(l), term)) if leaders.len() == 1 && (1..=t.nodes() as u64).contains(&l) => Some((l, term)),
        _ => None,
    };
    if agreed.is_none() && !first.is_empty() {
        out.push(violation(
            inv,
            deadline,
            format!(
                "no single leader at the heal deadline +{deadline}ms: {}",
                describe(&first, &|s| format!(
                    "leader {} term {}",
                    s.leader.map_or_else(|| "none".to_string(), |l| format!("n{l}")),
                    s.term
                ))
            ),
        ));
    }
    let versions: BTreeSet<u64> = first.values().map(|(_, s)| s.config_version).collect();
    if versions.len() > 1 || first.values().any(|(_, s)| !s.ready) {
        out.push(violation(
            inv,
            deadline,
            format!(
                "members not on one config version at the heal deadline +{deadline}ms: {}",
                describe(&first, &|s| if s.ready {
                    format!("v{}", s.config_version)
                } else {
                    "not ready".to_string()
                })
            ),
        ));
    }
    for vip in t.pool() {
        let holders: Vec<usize> = first
            .values()
            .filter(|(_, s)| s.held_vips.contains(vip))
            .map(|(_, s)| s.node)
            .collect();
        if holders.len() != 1 {
            out.push(violation(
                inv,
                deadline,
                format!("{vip} is held by {holders:?} at the heal deadline +{deadline}ms, not by exactly one node"),
            ));
        }
    }
    if let Some((leader, term)) = agreed
        && let Some((at, s)) = t
            .statuses()
            .find(|(at, s)| *at >= deadline && s.reachable && (s.leader != Some(leader) || s.term != term))
    {
        out.push(violation(
            inv,
            at,
            format!(
                "n{} left the healed state (leader n{leader}, term {term}): leader {}, term {}",
                s.node,
                s.leader.map_or_else(|| "none".to_string(), |l| format!("n{l}")),
                s.term
            ),
        ));
    }
    if let Some(after) = b.spread_after_ms
        && t.end_ms() >= quiet + after
        && !t.pool().is_empty()
    {
        let last = last_samples(t, quiet + after);
        let counts: Vec<(usize, usize)> = (1..=t.nodes())
            .map(|n| {
                let held = last
                    .get(&n)
                    .map_or(0, |(_, s)| t.pool().iter().filter(|v| s.held_vips.contains(v)).count());
                (n, held)
            })
            .collect();
        let (min, max) = (
            counts.iter().map(|c| c.1).min().unwrap_or(0),
            counts.iter().map(|c| c.1).max().unwrap_or(0),
        );
        if max > min + 1 {
            let list: Vec<String> = counts.iter().map(|(n, c)| format!("n{n}: {c}")).collect();
            out.push(violation(
                inv,
                t.end_ms(),
                format!("VIPs not spread evenly at the end: {}", list.join(", ")),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::ArpKind;
    use crate::timeline::Edge;

    const M1: &str = "02:00:00:00:00:01";
    const M2: &str = "02:00:00:00:00:02";
    const M3: &str = "02:00:00:00:00:03";

    fn vip() -> IpAddr {
        "10.99.0.100".parse().unwrap()
    }

    fn vip2() -> IpAddr {
        "10.99.0.101".parse().unwrap()
    }

    fn base() -> Timeline {
        Timeline::new(3)
            .with_mac(1, M1)
            .with_mac(2, M2)
            .with_mac(3, M3)
            .with_vip(vip())
    }

    #[allow(clippy::too_many_arguments)]
    fn status(
        node: usize,
        term: u64,
        leader: u64,
        version: u64,
        source: bool,
        vips: &[IpAddr],
        quorum: bool,
    ) -> Observation {
        Observation::Status(Status {
            node,
            reachable: true,
            ready: true,
            term,
            leader: Some(leader),
            config_version: version,
            source_running: source,
            held_vips: vips.to_vec(),
            quorum_contact: quorum,
        })
    }

    fn arp(mac: &str, kind: ArpKind) -> Observation {
        Observation::ArpSeen {
            vip: vip(),
            mac: mac.into(),
            kind,
        }
    }

    fn probe(ok: bool, node: Option<usize>) -> Observation {
        Observation::Probe {
            ok,
            latency_ms: 2,
            node,
            endpoint: ok.then(|| "backend".into()),
            error: (!ok).then(|| "timeout (connect)".into()),
        }
    }

    fn step(id: usize, fault: Fault, targets: &[usize]) -> FaultStep {
        FaultStep {
            id,
            at_ms: 0,
            duration_ms: 0,
            fault,
            targets: targets.to_vec(),
        }
    }

    fn fault(t: &mut Timeline, s: &FaultStep, start: Ms, end: Option<Ms>) {
        t.push(
            start,
            Observation::Fault {
                step: s.clone(),
                edge: Edge::Start,
            },
        );
        if let Some(end) = end {
            t.push(
                end,
                Observation::Fault {
                    step: s.clone(),
                    edge: Edge::End,
                },
            );
        }
    }

    /// A healthy 15 s run: n1 leads (term 2) and owns the VIP; kill -9 of the follower n2 from 2000 to
    /// 3000 ms (unreachable meanwhile); statuses every 100 ms, the VIP prober and ARP prober every 20 ms,
    /// the client's neighbour entry every 500 ms, config v5 acknowledged at 1000 ms.
    fn healthy() -> Timeline {
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        t.push(1000, Observation::Acked { version: 5 });
        for at in (0..=15_000).step_by(100) {
            let version = if at < 1000 { 4 } else { 5 };
            t.push(at, status(1, 2, 1, version, true, &[vip()], true));
            if (2000..3000).contains(&at) {
                t.push(at, Observation::Status(Status::unreachable(2)));
            } else {
                t.push(at, status(2, 2, 1, version, false, &[], true));
            }
            t.push(at, status(3, 2, 1, version, false, &[], true));
        }
        for at in (0..=15_000).step_by(20) {
            t.push(at, probe(true, None));
            t.push(at, Observation::WhoHas { vip: vip() });
            t.push(at + 1, arp(M1, ArpKind::Reply));
        }
        for at in (0..=15_000).step_by(500) {
            t.push(
                at,
                Observation::NeighbourCache {
                    vip: vip(),
                    mac: Some(M1.into()),
                },
            );
        }
        t
    }

    fn only(v: Vec<Violation>, inv: Invariant) -> Vec<Violation> {
        assert!(v.iter().all(|x| x.invariant == inv), "{v:#?}");
        v
    }

    #[test]
    fn a_healthy_run_passes_every_checker() {
        let t = healthy();
        assert_eq!(check_all(&t, &Bounds::default()), []);
        let w = fault_windows(&t, &Bounds::default());
        assert_eq!(w.len(), 1);
        assert!(!w[0].hit_leader);
        assert_eq!(w[0].allowed, [(1800, 3000), (2800, 5000)]);
        assert_eq!((w[0].failed, w[0].measured_ms()), (0, None));
        assert_eq!(w[0].total, 161); // 1800..=5000 every 20 ms (in flight at the start, then the windows)
    }

    // 1 ------------------------------------------------------------------------------------------

    #[test]
    fn one_owner_allows_a_quiet_first_handover_however_close() {
        let mut t = base();
        for at in (0..=200).step_by(20) {
            t.push(at, Observation::WhoHas { vip: vip() });
            t.push(at + 1, arp(M1, ArpKind::Reply));
        }
        // n1 went quiet after its answer at 201; n2 announces 4 ms later and answers from then on.
        t.push(205, arp(M2, ArpKind::Announce));
        for at in (220..=400).step_by(20) {
            t.push(at, Observation::WhoHas { vip: vip() });
            t.push(at + 1, arp(M2, ArpKind::Reply));
        }
        assert_eq!(check_one_owner(&t, &Bounds::default()), []);
    }

    #[test]
    fn one_owner_finds_interleaved_claims() {
        let mut t = base();
        for at in (0..=200).step_by(20) {
            t.push(at + 1, arp(M1, ArpKind::Reply));
        }
        t.push(190, arp(M2, ArpKind::Announce));
        let v = only(check_one_owner(&t, &Bounds::default()), Invariant::OneOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 190);
        assert_eq!(
            v[0].detail,
            "10.99.0.100 claimed by two MACs at once: 02:00:00:00:00:01 (n1) answered from +1ms to +201ms, \
             02:00:00:00:00:02 (n2) from +190ms to +190ms"
        );
    }

    #[test]
    fn one_owner_finds_one_request_answered_twice() {
        let mut t = base();
        t.push(80, Observation::WhoHas { vip: vip() });
        t.push(81, arp(M1, ArpKind::Reply));
        t.push(100, Observation::WhoHas { vip: vip() });
        t.push(101, arp(M1, ArpKind::Reply));
        t.push(102, arp(M2, ArpKind::Reply));
        t.push(120, Observation::WhoHas { vip: vip() });
        t.push(121, arp(M2, ArpKind::Reply));
        // Rule 1 sees a handover (n1's last answer before n2's first); rule 2 sees both answer one request.
        let v = only(check_one_owner(&t, &Bounds::default()), Invariant::OneOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 100);
        assert!(
            v[0].detail
                .starts_with("who-has 10.99.0.100 at +100ms answered by 2 MACs"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn one_owner_finds_two_holders_in_status_samples() {
        let b = Bounds::default();
        let mut t = base();
        for at in [0, 100, 200] {
            t.push(at, status(1, 2, 1, 1, true, &[vip()], true));
        }
        t.push(300, status(1, 2, 1, 1, true, &[], true));
        // Within n1's sure interval [0, 150]: a violation.
        t.push(120, status(2, 2, 1, 1, false, &[vip()], true));
        let v = only(check_one_owner(&t, &b), Invariant::OneOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 120);
        assert_eq!(
            v[0].detail,
            "10.99.0.100 held by n1 (every sample from +0ms to +200ms) and by n2 (sample at +120ms)"
        );
        // Within the skew of n1's last sample, or after it: not judged.
        let mut ok = base();
        for at in [0, 100, 200] {
            ok.push(at, status(1, 2, 1, 1, true, &[vip()], true));
        }
        ok.push(170, status(2, 2, 1, 1, false, &[vip()], true));
        ok.push(260, status(3, 2, 1, 1, false, &[vip()], true));
        assert_eq!(check_one_owner(&ok, &b), []);
    }

    // 2 ------------------------------------------------------------------------------------------

    #[test]
    fn settled_owner_finds_a_stale_neighbour_entry() {
        let mut t = healthy();
        // After the settle deadline (3000 + 2000), the client still points at n2.
        t.push(
            6010,
            Observation::NeighbourCache {
                vip: vip(),
                mac: Some(M2.into()),
            },
        );
        let v = only(check_settled_owner(&t, &Bounds::default()), Invariant::SettledOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 6010);
        assert!(v[0].detail.contains("shows 02:00:00:00:00:02 (n2)"), "{}", v[0].detail);
        assert!(v[0].detail.contains("its owner is n1"), "{}", v[0].detail);
    }

    #[test]
    fn settled_owner_finds_two_owners_a_foreign_answer_and_a_short_run() {
        let mut t = healthy();
        t.push(15_000, status(3, 2, 1, 5, false, &[vip()], true));
        let v = only(check_settled_owner(&t, &Bounds::default()), Invariant::SettledOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 5000);
        assert_eq!(
            v[0].detail,
            "10.99.0.100 has 2 owners after the settle deadline +5000ms: [1, 3] (last samples)"
        );
        let mut t = healthy();
        t.push(9001, arp(M3, ArpKind::Announce));
        let v = only(check_settled_owner(&t, &Bounds::default()), Invariant::SettledOwner);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 9001);
        assert!(
            v[0].detail.contains("answered by 02:00:00:00:00:03 (n3)"),
            "{}",
            v[0].detail
        );

        let mut short = base();
        fault(&mut short, &step(0, Fault::Stop, &[1]), 100, Some(200));
        short.push(1000, Observation::Note { text: "end".into() });
        let v = check_settled_owner(&short, &Bounds::default());
        assert_eq!(v.len(), 1);
        assert!(
            v[0].detail.ends_with("before the settle deadline +3000ms"),
            "{}",
            v[0].detail
        );

        let mut open = healthy();
        fault(&mut open, &step(1, Fault::CutLink, &[3]), 9000, None);
        let v = check_settled_owner(&open, &Bounds::default());
        assert!(
            v.iter().any(|x| x.at_ms == 9000 && x.detail.contains("never ended")),
            "{v:#?}"
        );
    }

    // 3 ------------------------------------------------------------------------------------------

    #[test]
    fn no_lost_config_finds_an_undelivered_change_and_a_step_back() {
        let mut t = base();
        t.push(1000, status(3, 2, 1, 5, false, &[], true));
        t.push(12_000, Observation::Acked { version: 6 });
        // n1 and n2 serve v6, n3 never does.
        t.push(12_100, status(1, 2, 1, 6, true, &[vip()], true));
        t.push(12_100, status(2, 2, 1, 6, false, &[], true));
        // After a restart, a not-ready v0 is fine; a ready v4 after v5 is not.
        let mut restart = Status::unreachable(2);
        restart.reachable = true;
        t.push(12_200, Observation::Status(restart));
        t.push(12_300, status(2, 2, 1, 4, false, &[], true));
        t.push(12_400, status(2, 2, 1, 4, false, &[], true));
        t.push(12_500, status(3, 2, 1, 5, false, &[], true));
        let v = only(check_no_lost_config(&t, &Bounds::default()), Invariant::NoLostConfig);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert_eq!(v[0].at_ms, 12_300);
        assert_eq!(v[0].detail, "n2 went back from config v6 (served at +12100ms) to v4");
        assert_eq!(v[1].at_ms, 12_000);
        assert_eq!(
            v[1].detail,
            "config v6, acknowledged at +12000ms, never served by live member n3 (it served at most v5 at +1000ms)"
        );
    }

    // 4 ------------------------------------------------------------------------------------------

    /// n3 loses its quorum (a cut between it and the others' leader... modelled as a peer cut) from
    /// 5000 to 6000 ms, keeps v5 and answers direct requests.
    fn no_quorum_run(version_during: u64, direct_ok: bool, fault_kind: Fault) -> Timeline {
        let mut t = base();
        fault(&mut t, &step(0, fault_kind, &[1, 3]), 5000, Some(6000));
        for at in (4000..=7000).step_by(100) {
            let lost = (5000..6000).contains(&at);
            let v = if lost { version_during } else { 5 };
            t.push(at, status(3, 2, 1, v, false, &[], !lost));
        }
        for at in (4000..=7000).step_by(20) {
            let lost = (5000..6000).contains(&at);
            t.push(at, probe(direct_ok || !lost, Some(3)));
        }
        t
    }

    #[test]
    fn static_stability_passes_when_a_member_without_quorum_keeps_serving() {
        let t = no_quorum_run(5, true, Fault::CutPeer { a: 1, b: 3 });
        assert_eq!(check_static_stability(&t, &Bounds::default()), []);
        // Failures while a fault keeps clients off the node itself are excused: packet loss,
        // and a full disk (the member exits, and is started again as the fault ends).
        let t = no_quorum_run(5, false, Fault::Loss { pct: 50 });
        assert_eq!(check_static_stability(&t, &Bounds::default()), []);
        let t = no_quorum_run(5, false, Fault::DiskFull);
        assert_eq!(check_static_stability(&t, &Bounds::default()), []);
    }

    /// n2 answers, without a quorum and not ready (term 2, n1 leading).
    fn not_ready_n2() -> Observation {
        Observation::Status(Status {
            reachable: true,
            term: 2,
            leader: Some(1),
            ..Status::unreachable(2)
        })
    }

    #[test]
    fn static_stability_lets_a_member_stop_while_its_disk_is_full() {
        let not_ready = |at: Ms, t: &mut Timeline| t.push(at, not_ready_n2());
        let mut t = base();
        fault(&mut t, &step(0, Fault::DiskFull, &[2]), 2000, Some(3000));
        t.push(1900, status(2, 2, 1, 5, false, &[], true));
        // Its Raft stopped: no quorum, draining (not ready), then gone until the restart.
        not_ready(2100, &mut t);
        t.push(2200, Observation::Status(Status::unreachable(2)));
        not_ready(3100, &mut t);
        t.push(3200, status(2, 2, 1, 5, false, &[], true));
        assert_eq!(check_static_stability(&t, &Bounds::default()), []);
        // The same without the fault is a member that stopped serving.
        let mut t = base();
        t.push(1900, status(2, 2, 1, 5, false, &[], true));
        not_ready(2100, &mut t);
        assert_eq!(
            only(
                check_static_stability(&t, &Bounds::default()),
                Invariant::StaticStability
            )
            .len(),
            1
        );
    }

    #[test]
    fn static_stability_finds_errors_and_a_lost_state() {
        let t = no_quorum_run(5, false, Fault::CutPeer { a: 1, b: 3 });
        let v = only(
            check_static_stability(&t, &Bounds::default()),
            Invariant::StaticStability,
        );
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 5000);
        assert_eq!(
            v[0].detail,
            "n3 without a quorum (+5000ms to +6000ms) failed 50 direct request(s) (budget 0); first: timeout (connect)"
        );
        let t = no_quorum_run(3, true, Fault::CutPeer { a: 1, b: 3 });
        let v = only(
            check_static_stability(&t, &Bounds::default()),
            Invariant::StaticStability,
        );
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 5000);
        assert_eq!(
            v[0].detail,
            "n3 without a quorum stopped serving its last state: serves v3 (last served before: v5)"
        );
    }

    #[test]
    fn static_stability_lets_a_restarted_process_start() {
        let not_ready = not_ready_n2;
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        t.push(1900, status(2, 2, 1, 5, false, &[], true));
        t.push(3100, not_ready());
        t.push(3200, status(2, 2, 1, 5, false, &[], false));
        t.push(3300, status(2, 2, 1, 5, false, &[], true));
        assert_eq!(check_static_stability(&t, &Bounds::default()), []);
        // Not ready again without a quorum once it had started: a violation.
        t.push(3400, not_ready());
        let v = only(
            check_static_stability(&t, &Bounds::default()),
            Invariant::StaticStability,
        );
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 3400);
        // Without the restart, the first one is already a violation.
        let mut t = base();
        t.push(1900, status(2, 2, 1, 5, false, &[], true));
        t.push(3100, not_ready());
        let v = only(
            check_static_stability(&t, &Bounds::default()),
            Invariant::StaticStability,
        );
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 3100);
    }

    // 5 ------------------------------------------------------------------------------------------

    fn with_failures(mut t: Timeline, from: Ms, to: Ms) -> Timeline {
        for at in (from..=to).step_by(20) {
            t.push(at, probe(false, None));
        }
        t
    }

    #[test]
    fn availability_allows_failures_inside_the_window_and_measures_them() {
        let b = Bounds::default();
        // Warm-up failures and failures within the follower bound after the kill.
        let t = with_failures(with_failures(healthy(), 100, 300), 2000, 2300);
        assert_eq!(check_availability(&t, &b), []);
        let w = fault_windows(&t, &b);
        assert_eq!(
            (w[0].failed, w[0].first_failure_ms, w[0].last_failure_ms),
            (16, Some(2000), Some(2300))
        );
        assert_eq!(w[0].measured_ms(), Some(300));
    }

    #[test]
    fn availability_allows_requests_in_flight_when_the_fault_starts() {
        let b = Bounds::default();
        // Started 100 ms before the kill (within the probe's timeout): the kill may reset it.
        assert_eq!(check_availability(&with_failures(healthy(), 1900, 1900), &b), []);
        // 300 ms before: nothing was wrong yet.
        let v = only(
            check_availability(&with_failures(healthy(), 1700, 1700), &b),
            Invariant::Availability,
        );
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 1700);
    }

    #[test]
    fn availability_finds_failures_past_the_window() {
        let b = Bounds::default();
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(8000));
        t.push(0, status(1, 2, 1, 1, true, &[vip()], true));
        t = with_failures(t, 2000, 3100);
        let v = only(check_availability(&t, &b), Invariant::Availability);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 3020);
        assert_eq!(
            v[0].detail,
            "5 request(s) through the VIP failed from +3020ms to +3100ms (during `kill -9 n2`, past its window); \
             first: timeout (connect)"
        );
        // The same outage is within the bound when the leader was killed.
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[1]), 2000, Some(8000));
        t.push(0, status(1, 2, 1, 1, true, &[vip()], true));
        t = with_failures(t, 2000, 3100);
        assert_eq!(check_availability(&t, &b), []);
    }

    #[test]
    fn availability_allows_no_failure_for_api_server_faults() {
        let mut t = base();
        fault(&mut t, &step(0, Fault::ApiServerDown, &[]), 2000, Some(3000));
        t = with_failures(t, 2500, 2500);
        let v = only(check_availability(&t, &Bounds::default()), Invariant::Availability);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].at_ms, 2500);
        assert!(v[0].detail.contains("during `API server down`"), "{}", v[0].detail);
        // A failure with no fault on at all.
        let t = with_failures(base(), 9000, 9000);
        let v = check_availability(&t, &Bounds::default());
        assert!(v[0].detail.contains("(no fault on)"), "{}", v[0].detail);
        // A majority loss may fail throughout.
        let mut t = base();
        fault(&mut t, &step(0, Fault::Stop, &[1, 2]), 2000, Some(6000));
        t = with_failures(t, 2000, 7900);
        assert_eq!(check_availability(&t, &Bounds::default()), []);
    }

    #[test]
    fn availability_allows_a_graceful_operation_only_resets_at_the_switch() {
        let reset = |t: &mut Timeline, at: Ms| {
            t.push(
                at,
                Observation::Probe {
                    ok: false,
                    latency_ms: 2,
                    node: None,
                    endpoint: None,
                    error: Some("read: Connection reset by peer (os error 104)".into()),
                },
            );
        };
        let b = Bounds::default();
        for fault_kind in [Fault::Restart, Fault::Drain] {
            // Two resets on one node's drain or restart: the neighbour switch.
            let mut t = base();
            fault(&mut t, &step(0, fault_kind.clone(), &[2]), 2000, Some(4000));
            reset(&mut t, 2100);
            reset(&mut t, 2120);
            assert_eq!(check_availability(&t, &b), [], "{fault_kind:?}");
            // A third is one too many.
            reset(&mut t, 2140);
            let v = only(check_availability(&t, &b), Invariant::Availability);
            assert_eq!(v.len(), 1, "{fault_kind:?}: {v:#?}");
            assert_eq!(v[0].at_ms, 2140);
            // A timeout is a gap in make-before-break, never allowed: where a kill -9 of a follower
            // would be excused, a graceful operation is not.
            let mut t = base();
            fault(&mut t, &step(0, fault_kind.clone(), &[2]), 2000, Some(4000));
            t = with_failures(t, 2100, 2100);
            let v = only(check_availability(&t, &b), Invariant::Availability);
            assert_eq!(v.len(), 1, "{fault_kind:?}: {v:#?}");
            assert!(v[0].detail.contains("timeout (connect)"), "{}", v[0].detail);
            // Nor is a reset long after the operation ended.
            let mut t = base();
            fault(&mut t, &step(0, fault_kind.clone(), &[2]), 2000, Some(4000));
            reset(&mut t, 6100);
            assert_eq!(only(check_availability(&t, &b), Invariant::Availability).len(), 1);
        }
        // Restarting a majority at once is not graceful: it may fail throughout.
        let mut t = base();
        fault(&mut t, &step(0, Fault::Restart, &[1, 2]), 2000, Some(4000));
        t = with_failures(t, 2000, 5900);
        assert_eq!(check_availability(&t, &b), []);
    }

    // 6 ------------------------------------------------------------------------------------------

    #[test]
    fn one_source_passes_a_clean_leader_change() {
        let mut t = base();
        t.push(100, status(1, 2, 1, 1, true, &[], true));
        t.push(200, status(1, 2, 1, 1, true, &[], true));
        t.push(300, status(1, 2, 1, 1, false, &[], false));
        t.push(300, status(2, 3, 2, 1, true, &[], true));
        // A stale sample of the old leader within the skew is not judged.
        t.push(330, status(1, 2, 1, 1, true, &[], true));
        assert_eq!(check_one_source(&t, &Bounds::default()), []);
    }

    #[test]
    fn one_source_finds_two_sources_in_a_term_and_an_old_leader_running_late() {
        let mut t = base();
        t.push(100, status(1, 2, 1, 1, true, &[], true));
        t.push(500, status(2, 2, 1, 1, true, &[], true));
        let v = only(check_one_source(&t, &Bounds::default()), Invariant::OneSource);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 500);
        assert_eq!(
            v[0].detail,
            "the source runs on n1 (sampled at +100ms) and on n2 in the same term 2"
        );
        let mut t = base();
        t.push(300, status(2, 3, 2, 1, true, &[], true));
        t.push(400, status(1, 2, 1, 1, true, &[], true));
        let v = only(check_one_source(&t, &Bounds::default()), Invariant::OneSource);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 400);
        assert_eq!(
            v[0].detail,
            "the source runs on n1 in term 2 at +400ms, after n2 ran it in the later term 3 (sampled at +300ms)"
        );
    }

    // 7 ------------------------------------------------------------------------------------------

    #[test]
    fn healing_finds_a_split_version_a_missing_member_and_a_later_election() {
        let b = Bounds::default();
        // Heal deadline: 3000 + 10 000.
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        t.push(13_000, status(1, 2, 1, 5, true, &[vip()], true));
        t.push(13_000, status(2, 2, 1, 5, false, &[], true));
        t.push(13_000, status(3, 2, 1, 4, false, &[], true));
        let v = only(check_healing(&t, &b), Invariant::Healing);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 13_000);
        assert_eq!(
            v[0].detail,
            "members not on one config version at the heal deadline +13000ms: n1: v5, n2: v5, n3: v4"
        );

        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        t.push(13_100, status(1, 2, 1, 5, true, &[vip()], true));
        t.push(13_100, status(3, 2, 1, 5, false, &[], true));
        t.push(14_000, status(3, 3, 3, 5, true, &[], true));
        let v = only(check_healing(&t, &b), Invariant::Healing);
        assert_eq!(v.len(), 2, "{v:#?}");
        assert_eq!(
            v[0].detail,
            "n2 did not answer its status after the heal deadline +13000ms"
        );
        assert_eq!(v[1].at_ms, 14_000);
        assert_eq!(
            v[1].detail,
            "n3 left the healed state (leader n1, term 2): leader n3, term 3"
        );
    }

    #[test]
    fn healing_checks_the_spread_when_the_run_is_long_enough() {
        let b = Bounds {
            spread_after_ms: Some(11_000),
            ..Bounds::default()
        };
        // Quiet from 3000: heal deadline 13 000, spread judged on the last samples if the run reaches 14 000.
        let mut t = base().with_vip(vip2());
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        t.push(13_000, status(1, 2, 1, 5, true, &[vip(), vip2()], true));
        t.push(13_000, status(2, 2, 1, 5, false, &[], true));
        t.push(13_000, status(3, 2, 1, 5, false, &[], true));
        // Uneven, but the run is not long enough for the preemption delay: not judged.
        assert_eq!(check_healing(&t, &b), []);
        // Spread by the end: fine.
        t.push(14_500, status(1, 2, 1, 5, true, &[vip()], true));
        t.push(14_500, status(2, 2, 1, 5, false, &[vip2()], true));
        t.push(14_500, status(3, 2, 1, 5, false, &[], true));
        assert_eq!(check_healing(&t, &b), []);
        // Both back on n1 at the end: a violation.
        t.push(15_000, status(1, 2, 1, 5, true, &[vip(), vip2()], true));
        t.push(15_000, status(2, 2, 1, 5, false, &[], true));
        let v = only(check_healing(&t, &b), Invariant::Healing);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert_eq!(v[0].at_ms, 15_000);
        assert_eq!(v[0].detail, "VIPs not spread evenly at the end: n1: 2, n2: 0, n3: 0");
    }

    #[test]
    fn a_failing_run_reports_its_seed_schedule_and_timeline() {
        let schedule = Schedule {
            seed: 0xdead_beef,
            nodes: 3,
            steps: vec![FaultStep {
                at_ms: 2000,
                duration_ms: 1000,
                ..step(0, Fault::Kill9, &[2])
            }],
            end_ms: 15_000,
        };
        let mut t = base();
        fault(&mut t, &step(0, Fault::Kill9, &[2]), 2000, Some(3000));
        let t = with_failures(t, 9000, 9040);
        let v = check_availability(&t, &Bounds::default());
        assert_eq!(v.len(), 1, "{v:#?}");
        let text = report(&schedule, &t, &v);
        assert!(
            text.starts_with("chaos run with seed 0x00000000deadbeef (3735928559): 1 violation(s)\n"),
            "{text}"
        );
        assert!(
            text.contains("  +2000ms  kill -9 n2  (until +3000ms: restart n2)\n"),
            "{text}"
        );
        assert!(
            text.contains("  +9000ms  [5 availability] 3 request(s) through the VIP failed"),
            "{text}"
        );
        assert!(
            text.contains("+9000ms  probe  vip err timeout (connect)  x3 (to +9040ms)"),
            "{text}"
        );
        assert!(text.contains("+2000ms  fault  kill -9 n2\n"), "{text}");
    }

    #[test]
    fn invariants_are_numbered_and_named() {
        let numbers: Vec<u8> = Invariant::ALL.iter().map(|i| i.number()).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(Invariant::OneSource.to_string(), "6 one config source");
    }
}
