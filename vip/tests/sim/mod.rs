//! A simulated cluster driving the core as the node shell would: drifting clocks, lossy delayed messages, Raft commits, leader changes, faults.
//!
//! Real time advances in 1 ms ticks (µs resolution). Each node reads its own clock,
//! `offset + rate × real`, truncated to whole milliseconds. Members renew by reports that the
//! current leader answers with grants; both directions may be delayed or lost. The leader plans
//! with its [`LeaderBook`] and proposes; a proposal commits a few ms later if its leadership is
//! still current, or — when the leadership ended first — at the next election or never (as an
//! entry that did or did not reach a majority). Tables are applied with [`Table::apply`] in log
//! order, each node with its own lag; an isolated node applies nothing and exchanges nothing.
//! Leaderships never overlap (assumption A2): an isolated leader keeps granting itself for up
//! to 250 ms, and the next election happens only after that.
//!
//! The simulated shell is a worst case within assumption A4: an address it releases (or
//! quiesces) stays in effect for up to the whole `release_guard` (less clock error and tick), and
//! it reports an applied revision only once the holdings for it are in effect. Commits sometimes
//! take up to 800 ms and messages up to 300 ms, and a node can be muted (what it sends is lost,
//! what it is sent arrives: an asymmetric partition).
//!
//! After every tick the checker asserts (1) no VIP has two active holders among live nodes,
//! counting addresses still lingering after release, (2) every hold, and every lingering
//! address, is covered by the holder's lease by its own clock (the full lease, not less the
//! guard), holds with the grant's revision applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use raftgate_vip::Grant;
use raftgate_vip::Holdings;
use raftgate_vip::LeaderBook;
use raftgate_vip::Leadership;
use raftgate_vip::Leases;
use raftgate_vip::MemberConfig;
use raftgate_vip::Millis;
use raftgate_vip::Mode;
use raftgate_vip::NodeId;
use raftgate_vip::NodeView;
use raftgate_vip::Pool;
use raftgate_vip::Preference;
use raftgate_vip::Reason;
use raftgate_vip::Report;
use raftgate_vip::SlotState;
use raftgate_vip::Table;
use raftgate_vip::Timing;
use raftgate_vip::VipSpec;
use raftgate_vip::decide;

/// SplitMix64: small, deterministic, good enough to drive a simulation from a seed.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Crash(usize),
    Restart(usize),
    Isolate(usize),
    Heal(usize),
    StepDown,
    Ready(usize, bool),
    Drain(usize, bool),
    /// Everything this node sends is lost (it still receives).
    Mute(usize, bool),
    /// Message loss in percent.
    Loss(u8),
    /// How long after a commit this node applies it.
    ApplyLag(usize, u16),
    /// The next proposal takes this many ms to commit.
    SlowNextCommit(u16),
}

#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) nodes: usize,
    pub(crate) vips: usize,
    pub(crate) seed: u64,
    /// Each node's clock rate against real time.
    pub(crate) rates: Vec<f64>,
    pub(crate) prefs: Vec<Preference>,
    /// Real milliseconds after the previous fault, and the fault.
    pub(crate) faults: Vec<(u64, Fault)>,
}

/// What the simulated shells and leader use; a broken knob must make the checker fire.
#[derive(Clone, Debug)]
pub(crate) struct Knobs {
    pub(crate) member_timing: Timing,
    pub(crate) leader_timing: Timing,
    /// Shell bug: grants stamped with revision 0.
    pub(crate) zero_grant_revision: bool,
    /// Shell bug: the lease anchored when the grant arrives instead of when the report left.
    pub(crate) anchor_at_receipt: bool,
    /// Every grant takes exactly this long (instead of the random delays).
    pub(crate) grant_delay_ms: Option<u64>,
    /// Usual message delay bound.
    pub(crate) max_delay_ms: u64,
    /// Percentage of messages that take up to 300 ms instead.
    pub(crate) late_pct: u64,
    /// Percentage of commits that take 100–800 ms instead of 2–20 ms.
    pub(crate) slow_commit_pct: u64,
    /// Every commit takes exactly this long (instead of the random delays).
    pub(crate) commit_ms: Option<u64>,
    /// The shell always uses its whole reaction budget (instead of half the time).
    pub(crate) always_slow_release: bool,
    /// Record a trace of events (for debugging a failing case).
    pub(crate) trace: bool,
}

impl Knobs {
    /// Default timing with a short preemption delay and grace, so a run settles quickly, and a
    /// 400 ms lease: this network delays 5 % of messages by up to 300 ms, and with the default
    /// 300 ms lease two such renewals in a row lapse a healthy member's lease now and then, which
    /// the stability check would (rightly) count as a move. Safety holds at any lease.
    pub(crate) fn fast() -> Self {
        let t = Timing {
            lease: Duration::from_millis(400),
            preempt_delay: Duration::from_millis(1000),
            grace: Duration::from_millis(300),
            ..Timing::default()
        };
        Knobs {
            member_timing: t.clone(),
            leader_timing: t,
            zero_grant_revision: false,
            anchor_at_receipt: false,
            grant_delay_ms: None,
            max_delay_ms: 30,
            late_pct: 5,
            slow_commit_pct: 10,
            commit_ms: None,
            always_slow_release: false,
            trace: false,
        }
    }
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    alive: bool,
    isolated: bool,
    muted: bool,
    incarnation: u64,
    rate: f64,
    offset_us: u64,
    log_index: usize,
    table: Table,
    apply_lag_us: u64,
    leases: Leases,
    held: Holdings,
    /// Released or quiesced, still in effect until the real time given (the shell's reaction).
    lingering: BTreeMap<IpAddr, u64>,
    /// The table revision whose holdings are all in effect (what reports say, per A4).
    effective_revision: u64,
    ready: bool,
    draining: bool,
    wake_at: Option<Millis>,
    next_report: Millis,
    dirty: bool,
}

#[derive(Debug)]
enum Msg {
    Report {
        from: usize,
        term: u64,
        incarnation: u64,
        sent_at: Millis,
        report: Report,
    },
    Grant {
        to: usize,
        incarnation: u64,
        sent_at: Millis,
        grant: Grant,
    },
}

#[derive(Debug)]
struct Flight {
    at_us: u64,
    msg: Msg,
}

#[derive(Debug)]
struct Proposal {
    commit_at_us: u64,
    term: u64,
    table: Table,
    /// Never reached a majority (proposed by an isolated leader, or cut off with it).
    doomed: bool,
}

#[derive(Debug)]
struct Leader {
    node: usize,
    term: u64,
    book: LeaderBook,
    ends_at_us: Option<u64>,
    /// Plan at the next tick: a report was granted or the leader applied a table.
    dirty: bool,
    wake_at: Option<Millis>,
}

#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) now_us: u64,
    knobs: Knobs,
    rng: Rng,
    pool: Pool,
    prefs: Vec<Preference>,
    nodes: Vec<Node>,
    /// Committed tables, with the real time each was committed.
    log: Vec<(u64, Table)>,
    leader: Option<Leader>,
    term: u64,
    election_at_us: u64,
    flights: Vec<Flight>,
    proposals: Vec<Proposal>,
    loss_pct: u64,
    next_commit_ms: Option<u64>,
    pub(crate) violations: Vec<String>,
    pub(crate) leaderships: u64,
    /// Committed slot changes by reason.
    pub(crate) reasons: BTreeMap<Reason, usize>,
    pub(crate) trace: Vec<String>,
}

pub(crate) fn vip(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, u8::try_from(i).unwrap_or(u8::MAX)])
}

impl Sim {
    pub(crate) fn new(sc: &Scenario, knobs: Knobs) -> Self {
        let mut rng = Rng(sc.seed);
        let pool = Pool::new(
            (1..=sc.vips)
                .map(|i| VipSpec {
                    addr: vip(i),
                    prefix: 24,
                    interface: None,
                })
                .collect(),
        )
        .unwrap_or_default();
        let nodes = (0..sc.nodes)
            .map(|i| Node {
                id: NodeId::try_from(i).unwrap_or(0) + 1,
                alive: true,
                isolated: false,
                muted: false,
                incarnation: 0,
                rate: sc.rates.get(i).copied().unwrap_or(1.0),
                // Unrelated origins: a reading of one clock means nothing on another.
                offset_us: rng.below(1 << 40),
                log_index: 0,
                table: Table::default(),
                apply_lag_us: rng.below(20_000),
                leases: Leases::default(),
                held: Holdings::new(),
                lingering: BTreeMap::new(),
                effective_revision: 0,
                ready: true,
                draining: false,
                wake_at: None,
                next_report: Millis::ZERO,
                dirty: true,
            })
            .collect();
        Sim {
            now_us: 0,
            knobs,
            rng,
            pool,
            prefs: sc.prefs.clone(),
            nodes,
            log: vec![(0, Table::default())],
            leader: None,
            term: 0,
            election_at_us: 0,
            flights: Vec::new(),
            proposals: Vec::new(),
            loss_pct: 0,
            next_commit_ms: None,
            violations: Vec::new(),
            leaderships: 0,
            reasons: BTreeMap::new(),
            trace: Vec::new(),
        }
    }

    fn log_event(&mut self, what: impl FnOnce() -> String) {
        if self.knobs.trace {
            let line = format!("{:>6}ms {}", self.now_us / 1000, what());
            self.trace.push(line);
        }
    }

    fn clock(&self, i: usize) -> Millis {
        let n = &self.nodes[i];
        // Truncating both the scaled real time and the microseconds: a monotonic reading.
        let scaled = (self.now_us as f64 * n.rate) as u64;
        Millis((n.offset_us + scaled) / 1000)
    }

    /// Runs `ms` real milliseconds.
    pub(crate) fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.tick();
        }
    }

    /// Runs a scenario's faults, each after its gap.
    pub(crate) fn run_faults(&mut self, faults: &[(u64, Fault)]) {
        for &(gap, f) in faults {
            self.run(gap);
            self.fault(f);
        }
    }

    pub(crate) fn fault(&mut self, f: Fault) {
        self.log_event(|| format!("FAULT {f:?}"));
        let n = self.nodes.len();
        match f {
            Fault::Crash(i) if self.nodes[i % n].alive => {
                let i = i % n;
                let node = &mut self.nodes[i];
                // Process gone: the shell's ExecStopPost removed its addresses (or the machine is down).
                node.alive = false;
                node.held.clear();
                node.lingering.clear();
                node.leases = Leases::default();
                node.wake_at = None;
                node.incarnation += 1;
                if self.leader.as_ref().is_some_and(|l| l.node == i) {
                    self.end_leadership();
                }
            }
            Fault::Restart(i) if !self.nodes[i % n].alive => {
                let node = &mut self.nodes[i % n];
                node.alive = true;
                node.dirty = true;
                node.next_report = Millis::ZERO;
            }
            Fault::Isolate(i) => {
                let i = i % n;
                self.nodes[i].isolated = true;
                let until = self.now_us + self.rng.below(250_000);
                if let Some(l) = self.leader.as_mut()
                    && l.node == i
                {
                    l.ends_at_us.get_or_insert(until);
                    let term = l.term;
                    for p in self.proposals.iter_mut().filter(|p| p.term == term) {
                        p.doomed |= self.rng.chance(50);
                    }
                }
            }
            Fault::Heal(i) => self.nodes[i % n].isolated = false,
            Fault::StepDown => {
                if self.leader.is_some() {
                    self.end_leadership();
                }
            }
            Fault::Ready(i, r) => {
                self.nodes[i % n].ready = r;
                self.nodes[i % n].dirty = true;
            }
            Fault::Drain(i, d) => {
                self.nodes[i % n].draining = d;
                if let Some(l) = self.leader.as_mut() {
                    l.dirty = true;
                }
            }
            Fault::Mute(i, m) => self.nodes[i % n].muted = m,
            Fault::Loss(p) => self.loss_pct = u64::from(p % 40),
            Fault::ApplyLag(i, ms) => self.nodes[i % n].apply_lag_us = u64::from(ms) * 1000,
            Fault::SlowNextCommit(ms) => self.next_commit_ms = Some(u64::from(ms)),
            Fault::Crash(_) | Fault::Restart(_) => {}
        }
    }

    /// Ends every fault: all nodes up, connected, ready, undrained, no loss, small lags.
    pub(crate) fn heal_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.fault(Fault::Restart(i));
            self.fault(Fault::Heal(i));
            self.fault(Fault::Ready(i, true));
            self.fault(Fault::Drain(i, false));
            self.fault(Fault::Mute(i, false));
            let lag = self.rng.below(20);
            self.fault(Fault::ApplyLag(i, u16::try_from(lag).unwrap_or(0)));
        }
        self.loss_pct = 0;
    }

    fn end_leadership(&mut self) {
        self.log_event(|| "LEADERSHIP ENDS".to_string());
        self.leader = None;
        self.election_at_us = self.now_us + 50_000 + self.rng.below(250_000);
    }

    fn elect(&mut self) {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive && !self.nodes[i].isolated)
            .collect();
        if candidates.len() * 2 <= self.nodes.len() {
            self.election_at_us = self.now_us + 50_000;
            return;
        }
        // Entries of earlier terms either reached a majority (committed now) or are lost.
        let mut old = std::mem::take(&mut self.proposals);
        old.sort_by_key(|p| p.commit_at_us);
        for p in old {
            if !p.doomed && self.rng.chance(50) {
                self.commit(p.table);
            }
        }
        self.term += 1;
        self.leaderships += 1;
        let pick = candidates[usize::try_from(self.rng.below(candidates.len() as u64)).unwrap_or(0)];
        // A new leader has applied everything committed before its term (ensure_linearizable).
        let last = self.log.len() - 1;
        let node = &mut self.nodes[pick];
        node.log_index = last;
        node.table = self.log[last].1.clone();
        node.dirty = true;
        let leadership = Leadership {
            leader: node.id,
            term: self.term,
            since: self.clock(pick),
        };
        let revision = self.nodes[pick].table.revision;
        let (id, term) = (self.nodes[pick].id, self.term);
        self.log_event(|| format!("ELECT node {id} term {term} at r{revision} since {}", leadership.since));
        self.leader = Some(Leader {
            node: pick,
            term: self.term,
            book: LeaderBook::new(leadership, self.knobs.leader_timing.clone(), revision),
            ends_at_us: None,
            dirty: true,
            wake_at: None,
        });
    }

    fn commit(&mut self, table: Table) {
        let prev = &self.log[self.log.len() - 1].1;
        let mut next = prev.clone();
        if next.apply(table).is_ok() {
            let mut changes = Vec::new();
            for (v, slot) in &next.slots {
                if prev.slots.get(v) != Some(slot) {
                    *self.reasons.entry(slot.reason).or_default() += 1;
                    changes.push(format!("{v}={:?}/{}", slot.state, slot.reason));
                }
            }
            let rev = next.revision;
            self.log.push((self.now_us, next));
            self.log_event(|| format!("COMMIT r{rev} {}", changes.join(" ")));
        }
    }

    fn send(&mut self, msg: Msg) {
        let from = match &msg {
            Msg::Report { from, .. } => Some(*from),
            Msg::Grant { .. } => self.leader.as_ref().map(|l| l.node),
        };
        if self.rng.chance(self.loss_pct) || from.is_some_and(|i| self.nodes[i].muted) {
            return;
        }
        let delay = match (&msg, self.knobs.grant_delay_ms) {
            (Msg::Grant { .. }, Some(ms)) => ms * 1000,
            _ if self.rng.chance(self.knobs.late_pct) => self.rng.below(300_000),
            _ => self.rng.below(self.knobs.max_delay_ms * 1000 + 1),
        };
        self.flights.push(Flight {
            at_us: self.now_us + delay,
            msg,
        });
    }

    fn tick(&mut self) {
        self.now_us += 1000;
        if self
            .leader
            .as_ref()
            .is_some_and(|l| l.ends_at_us.is_some_and(|e| self.now_us >= e))
        {
            self.end_leadership();
        }
        if self.leader.is_none() && self.now_us >= self.election_at_us {
            self.elect();
        }
        self.commit_due();
        self.deliver_due();
        for i in 0..self.nodes.len() {
            self.step_node(i);
        }
        self.lead();
        self.check();
    }

    fn commit_due(&mut self) {
        let Some((term, leader_isolated)) = self.leader.as_ref().map(|l| (l.term, self.nodes[l.node].isolated)) else {
            return;
        };
        let mut due = Vec::new();
        self.proposals.retain(|p| {
            let now = p.term == term && p.commit_at_us <= self.now_us && !leader_isolated && !p.doomed;
            if now {
                due.push(p.table.clone());
            }
            !now
        });
        for t in due {
            self.commit(t);
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now_us;
        let mut due: Vec<Flight> = Vec::new();
        let mut i = 0;
        while i < self.flights.len() {
            if self.flights[i].at_us <= now {
                due.push(self.flights.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| f.at_us);
        for f in due {
            match f.msg {
                Msg::Report {
                    from,
                    term,
                    incarnation,
                    sent_at,
                    report,
                } => {
                    let Some(l) = self.leader.as_ref() else { continue };
                    let ln = l.node;
                    if l.term != term || !self.nodes[ln].alive || self.nodes[ln].isolated || self.nodes[from].isolated {
                        continue;
                    }
                    let local = self.clock(ln);
                    let Some(l) = self.leader.as_mut() else { continue };
                    let grant = l.book.grant(&report, 0, local);
                    l.dirty = true;
                    self.log_event(|| {
                        format!(
                            "GRANT node {} sent {sent_at} applied r{} -> r{}",
                            report.member, report.applied_revision, grant.revision
                        )
                    });
                    self.send(Msg::Grant {
                        to: from,
                        incarnation,
                        sent_at,
                        grant,
                    });
                }
                Msg::Grant {
                    to,
                    incarnation,
                    sent_at,
                    grant,
                } => {
                    let zero = self.knobs.zero_grant_revision;
                    let sent_at = if self.knobs.anchor_at_receipt {
                        self.clock(to)
                    } else {
                        sent_at
                    };
                    let node = &mut self.nodes[to];
                    if !node.alive || node.isolated || node.incarnation != incarnation {
                        continue;
                    }
                    let grant = if zero { Grant { revision: 0 } } else { grant };
                    node.leases.renew(sent_at, grant);
                    node.dirty = true;
                }
            }
        }
    }

    fn decide(&mut self, i: usize, local: Millis) {
        let node = &self.nodes[i];
        let lease = node
            .leases
            .usable(node.table.revision, &self.knobs.member_timing, local);
        let view = NodeView {
            id: node.id,
            table: &node.table,
            pool: &self.pool,
            lease,
            ready: node.ready,
            held: &node.held,
        };
        let d = decide(&view, &self.knobs.member_timing, local);
        // The shell takes up to its whole budget to make a release effective: release_guard,
        // less the tick and truncation (2 ms) and clock error.
        let t = &self.knobs.member_timing;
        let budget_us = (t.release_guard.as_micros() as f64 - 2000.0) / (1.0 + f64::from(t.drift_ppm) / 1e6) - 1.0;
        let budget_us = budget_us.max(0.0) as u64;
        let now_us = self.now_us;
        let gone: Vec<IpAddr> = self.nodes[i]
            .held
            .iter()
            .filter(|(v, h)| h.mode == Mode::Active && d.held.get(*v).is_none_or(|n| n.mode != Mode::Active))
            .map(|(v, _)| *v)
            .collect();
        for v in gone {
            let max = self.knobs.always_slow_release || self.rng.chance(50);
            let linger = if max { budget_us } else { self.rng.below(budget_us + 1) };
            self.nodes[i].lingering.insert(v, now_us + linger);
        }
        if !d.actions.is_empty() {
            let (id, rev) = (self.nodes[i].id, self.nodes[i].table.revision);
            let actions = d.actions.clone();
            self.log_event(|| format!("DECIDE node {id} at {local} r{rev} lease {lease:?}: {actions:?}"));
        }
        let node = &mut self.nodes[i];
        node.lingering
            .retain(|v, until| *until > now_us && d.held.get(v).is_none_or(|h| h.mode != Mode::Active));
        node.held = d.held;
        if node.lingering.is_empty() {
            node.effective_revision = node.table.revision;
        }
        node.wake_at = d.wake_at;
        node.dirty = false;
    }

    fn step_node(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        let local = self.clock(i);
        let is_leader = self.leader.as_ref().is_some_and(|l| l.node == i);
        if !self.nodes[i].isolated {
            let lag = if is_leader { 0 } else { self.nodes[i].apply_lag_us };
            while self.nodes[i].log_index + 1 < self.log.len()
                && self.log[self.nodes[i].log_index + 1].0 + lag <= self.now_us
            {
                let node = &mut self.nodes[i];
                node.log_index += 1;
                node.table = self.log[node.log_index].1.clone();
                node.dirty = true;
                if let Some(l) = self.leader.as_mut().filter(|l| l.node == i) {
                    l.dirty = true;
                }
            }
        }
        if self.nodes[i].dirty || self.nodes[i].wake_at.is_some_and(|w| local >= w) {
            self.decide(i, local);
        }
        if local < self.nodes[i].next_report {
            return;
        }
        let refresh = self.knobs.member_timing.refresh.as_millis() as u64;
        let jitter = self.rng.below(10);
        let node = &mut self.nodes[i];
        node.next_report = local.plus(refresh + jitter);
        if node.lingering.values().all(|&until| until <= self.now_us) {
            node.lingering.clear();
            node.effective_revision = node.table.revision;
        }
        let report = Report {
            member: node.id,
            applied_revision: node.effective_revision,
            ready: node.ready,
            config_version: 0,
        };
        let incarnation = node.incarnation;
        let isolated = node.isolated;
        match self.leader.as_mut() {
            Some(l) if l.node == i => {
                // The leader renews itself while leading.
                let grant = l.book.grant(&report, 0, local);
                l.dirty = true;
                let node = &mut self.nodes[i];
                node.leases.renew(local, grant);
                self.decide(i, local);
            }
            Some(l) if !isolated => {
                let term = l.term;
                self.send(Msg::Report {
                    from: i,
                    term,
                    incarnation,
                    sent_at: local,
                    report,
                });
            }
            _ => {}
        }
    }

    fn configs(&self) -> Vec<MemberConfig> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| MemberConfig {
                id: n.id,
                preference: self.prefs.get(i).copied().unwrap_or_default(),
                draining: n.draining,
            })
            .collect()
    }

    /// Plans as the shell does: after a granted report or an applied table, and at `wake_at`.
    fn lead(&mut self) {
        let Some(ln) = self.leader.as_ref().map(|l| l.node) else {
            return;
        };
        if !self.nodes[ln].alive {
            return;
        }
        let local = self.clock(ln);
        let configs = self.configs();
        let Some(l) = self.leader.as_mut() else { return };
        if !l.dirty && l.wake_at.is_none_or(|w| local < w) {
            return;
        }
        let plan = l.book.plan(&self.nodes[ln].table, &self.pool, &configs, local);
        l.dirty = false;
        l.wake_at = plan.wake_at;
        let term = l.term;
        if let Some(t) = plan.table {
            let commit_at_us = if let Some(ms) = self.next_commit_ms.take().or(self.knobs.commit_ms) {
                self.now_us + ms * 1000
            } else if self.rng.chance(self.knobs.slow_commit_pct) {
                self.now_us + 100_000 + self.rng.below(700_000)
            } else {
                self.now_us + 2_000 + self.rng.below(18_000)
            };
            self.proposals.push(Proposal {
                commit_at_us,
                term,
                table: t,
                doomed: self.nodes[ln].isolated,
            });
        }
    }

    fn check(&mut self) {
        if self.violations.len() >= 5 {
            return;
        }
        let lease_ms = self.knobs.member_timing.lease.as_millis() as u64;
        for v in self.pool.addrs() {
            let now_us = self.now_us;
            let owners: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| {
                    n.alive
                        && (n.held.get(&v).is_some_and(|h| h.mode == Mode::Active)
                            || n.lingering.get(&v).is_some_and(|&until| until > now_us))
                })
                .map(|n| n.id)
                .collect();
            if owners.len() > 1 {
                let msg = format!("t={}ms: {v} announced by {owners:?}", self.now_us / 1000);
                self.violations.push(msg);
            }
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let local = self.clock(i);
            let now_us = self.now_us;
            if n.alive && n.lingering.values().any(|&until| until > now_us) {
                let covered = n.leases.iter().any(|l| local.since(l.anchor) < lease_ms);
                if !covered {
                    let msg = format!(
                        "t={}ms: node {} still has a released address after its lease",
                        now_us / 1000,
                        n.id
                    );
                    self.violations.push(msg);
                }
            }
            if !n.alive || n.held.is_empty() {
                continue;
            }
            let ok = n
                .leases
                .iter()
                .any(|l| local.since(l.anchor) < lease_ms && local >= l.anchor && n.table.revision >= l.revision);
            if !ok {
                let msg = format!(
                    "t={}ms: node {} holds {:?} at {local} without a valid lease {:?} (table r{})",
                    self.now_us / 1000,
                    n.id,
                    n.held.keys().collect::<Vec<_>>(),
                    n.leases,
                    n.table.revision
                );
                self.violations.push(msg);
            }
        }
    }

    /// Active holders per VIP among live nodes.
    pub(crate) fn active(&self) -> BTreeMap<IpAddr, Vec<NodeId>> {
        let mut out: BTreeMap<IpAddr, Vec<NodeId>> = self.pool.addrs().map(|v| (v, Vec::new())).collect();
        for n in self.nodes.iter().filter(|n| n.alive) {
            for (v, h) in &n.held {
                if h.mode == Mode::Active {
                    out.entry(*v).or_default().push(n.id);
                }
            }
        }
        out
    }

    pub(crate) fn committed(&self) -> usize {
        self.log.len()
    }

    pub(crate) fn leader_node(&self) -> Option<NodeId> {
        self.leader.as_ref().map(|l| self.nodes[l.node].id)
    }

    /// After faults ended and time passed: every VIP announced by exactly one node, which the
    /// committed table names; non-avoid members even within one, avoid members empty.
    pub(crate) fn converged(&self) -> Result<(), String> {
        let table = &self.log[self.log.len() - 1].1;
        let active = self.active();
        let mut load: BTreeMap<NodeId, usize> = self.nodes.iter().map(|n| (n.id, 0)).collect();
        let mut err = String::new();
        for (v, owners) in &active {
            if owners.len() != 1 || table.owner(*v) != owners.first().copied() {
                let _ = write!(
                    err,
                    "{v}: active on {owners:?}, table {:?}; ",
                    table.slots.get(v).map(|s| s.state)
                );
            }
            for o in owners {
                *load.entry(*o).or_default() += 1;
            }
        }
        let avoid = |id: NodeId| {
            let i = usize::try_from(id - 1).unwrap_or(0);
            self.prefs.get(i) == Some(&Preference::Avoid)
        };
        let main: Vec<usize> = load.iter().filter(|(id, _)| !avoid(**id)).map(|(_, &c)| c).collect();
        if let (Some(lo), Some(hi)) = (main.iter().min(), main.iter().max())
            && hi - lo > 1
        {
            let _ = write!(err, "uneven spread {load:?}; ");
        }
        if !main.is_empty() && load.iter().any(|(id, &c)| avoid(*id) && c > 0) {
            let _ = write!(err, "an avoid member holds VIPs {load:?}; ");
        }
        if table
            .slots
            .values()
            .any(|s| !matches!(s.state, SlotState::Owned { .. }))
        {
            let _ = write!(err, "handover still open: {:?}; ", table.slots);
        }
        if err.is_empty() { Ok(()) } else { Err(err) }
    }

    /// How node `id` holds `v` right now.
    pub(crate) fn mode(&self, id: NodeId, v: IpAddr) -> Option<Mode> {
        self.nodes
            .iter()
            .find(|n| n.id == id && n.alive)
            .and_then(|n| n.held.get(&v))
            .map(|h| h.mode)
    }

    /// Changes node `id`'s clock rate from now on, keeping its reading continuous.
    pub(crate) fn set_rate(&mut self, id: NodeId, rate: f64) {
        let Some(i) = self.nodes.iter().position(|n| n.id == id) else {
            return;
        };
        let local_us = self.nodes[i].offset_us + (self.now_us as f64 * self.nodes[i].rate) as u64;
        self.nodes[i].rate = rate;
        self.nodes[i].offset_us = local_us - (self.now_us as f64 * rate) as u64;
    }

    /// Real ms until `v` is announced by some node other than `not`, running the sim meanwhile.
    pub(crate) fn time_until_taken_over(&mut self, v: IpAddr, not: NodeId, limit_ms: u64) -> Option<u64> {
        for ms in 0..limit_ms {
            if self.active().get(&v).is_some_and(|o| o.iter().any(|&x| x != not)) {
                return Some(ms);
            }
            self.tick();
        }
        None
    }
}
