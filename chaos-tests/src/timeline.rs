//! The observation model of a chaos run: what the outside observers saw, in milliseconds since the run started.
//!
//! A scenario runner feeds a [`Timeline`] from its observers — the ARP/ND sniffer on the bridge
//! ([`Observation::ArpSeen`]), the active "who has VIP?" prober ([`Observation::WhoHas`] for each
//! request it sends, [`Observation::ArpSeen`] for each reply), the client load ([`Observation::Probe`]),
//! the status poller ([`Observation::Status`]), the fault injector ([`Observation::Fault`]), the config
//! writer ([`Observation::Acked`]) and the client's neighbour table ([`Observation::NeighbourCache`]).
//! Nothing here does I/O or reads a clock: every observation carries the time it was made.
//!
//! [`Timeline::render`] prints one line per event (`+1234ms  fault  kill -9 n2`);
//! [`Timeline::render_compact`] collapses runs of identical events of one stream (the same probe
//! outcome, the same MAC answering the same VIP, an unchanged status) into one line with a count.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::schedule::FaultStep;

/// Milliseconds since the run started (the observers' shared monotonic origin).
pub type Ms = u64;

/// Which ARP/ND packet was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArpKind {
    /// A gratuitous ARP or unsolicited NA: a node announcing that it owns the VIP.
    Announce,
    /// A reply (ARP reply, solicited NA) to someone's "who has VIP?".
    Reply,
}

/// Whether a fault began or ended (restart, SIGCONT, heal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Edge {
    Start,
    End,
}

/// One thing an observer saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// An ARP/ND packet claiming `vip` for `mac` (lower case, `aa:bb:..`).
    ArpSeen { vip: IpAddr, mac: String, kind: ArpKind },
    /// The active prober asked "who has `vip`?" (the replies follow as [`Observation::ArpSeen`]).
    WhoHas { vip: IpAddr },
    /// One client request, timed at its start.
    Probe {
        ok: bool,
        latency_ms: u64,
        /// Which node's own address it was sent to; `None` when sent to a VIP.
        node: Option<usize>,
        /// Who answered (the first body line, e.g. the backend's name), if anyone did.
        endpoint: Option<String>,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// One answer (or non-answer) of a node's `/api/v1/status`, timed when it was received.
    Status(Status),
    /// A scheduled fault was put into effect (`Start`) or undone (`End`).
    Fault { step: FaultStep, edge: Edge },
    /// The config source acknowledged a change, committed as config version `version`.
    Acked { version: u64 },
    /// The client's neighbour entry for `vip` (`None`: incomplete, failed or absent).
    NeighbourCache { vip: IpAddr, mac: Option<String> },
    /// Free text from the runner (e.g. "cluster ready"), shown in the timeline only.
    Note { text: String },
}

/// A node's `/api/v1/status`, as the poller read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    /// The node number (1-based, as in the netns topology).
    pub node: usize,
    /// Whether the node answered; when false the other fields carry nothing.
    pub reachable: bool,
    /// Whether it serves a table (`ready`); before that its `config_version` is not meaningful.
    pub ready: bool,
    /// Its current Raft term.
    pub term: u64,
    /// The leader it knows, as a Raft id (the harness gives node `i` Raft id `i`).
    pub leader: Option<u64>,
    /// The config version its data plane serves.
    pub config_version: u64,
    /// Whether its config source runs (only the leading leader's should).
    pub source_running: bool,
    /// The VIPs it holds *active* (on the interface, answering ARP/ND); quiet holds are not listed.
    pub held_vips: Vec<IpAddr>,
    /// Whether a quorum acknowledged it recently (`quorum_contact`).
    pub quorum_contact: bool,
}

impl Status {
    /// A node that did not answer.
    pub fn unreachable(node: usize) -> Status {
        Status {
            node,
            reachable: false,
            ready: false,
            term: 0,
            leader: None,
            config_version: 0,
            source_running: false,
            held_vips: Vec::new(),
            quorum_contact: false,
        }
    }
}

/// One observation and when it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at_ms: Ms,
    pub obs: Observation,
}

/// Every observation of one run, kept sorted by time (ties in the order they were added), and what
/// the runner knows of the cluster: how many nodes, their MACs and the VIP pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    events: Vec<Event>,
    nodes: usize,
    macs: BTreeMap<usize, String>,
    pool: Vec<IpAddr>,
}

impl Timeline {
    /// An empty timeline of a cluster of `nodes` nodes.
    pub fn new(nodes: usize) -> Timeline {
        Timeline {
            nodes,
            ..Timeline::default()
        }
    }

    /// Records node `node`'s MAC (lower case) so MACs can be named and owners matched to ARP.
    pub fn with_mac(mut self, node: usize, mac: &str) -> Timeline {
        self.macs.insert(node, mac.to_ascii_lowercase());
        self
    }

    /// Adds `vip` to the pool every member serves.
    pub fn with_vip(mut self, vip: IpAddr) -> Timeline {
        if !self.pool.contains(&vip) {
            self.pool.push(vip);
        }
        self
    }

    /// Adds an observation made at `at_ms`, keeping the events sorted (stable for equal times).
    pub fn push(&mut self, at_ms: Ms, obs: Observation) {
        let i = self.events.partition_point(|e| e.at_ms <= at_ms);
        self.events.insert(i, Event { at_ms, obs });
    }

    /// Every event, sorted by time.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The VIP pool.
    pub fn pool(&self) -> &[IpAddr] {
        &self.pool
    }

    /// Node `node`'s MAC, if known.
    pub fn mac_of(&self, node: usize) -> Option<&str> {
        self.macs.get(&node).map(String::as_str)
    }

    /// The node whose MAC is `mac`, if known.
    pub fn node_of_mac(&self, mac: &str) -> Option<usize> {
        self.macs
            .iter()
            .find(|(_, m)| m.eq_ignore_ascii_case(mac))
            .map(|(n, _)| *n)
    }

    /// The time of the last event (0 when empty).
    pub fn end_ms(&self) -> Ms {
        self.events.last().map_or(0, |e| e.at_ms)
    }

    /// Every status sample, in time order.
    pub fn statuses(&self) -> impl Iterator<Item = (Ms, &Status)> {
        self.events.iter().filter_map(|e| match &e.obs {
            Observation::Status(s) => Some((e.at_ms, s)),
            _ => None,
        })
    }

    /// The runner's notes, in time order.
    pub fn notes(&self) -> impl Iterator<Item = &str> {
        self.events.iter().filter_map(|e| match &e.obs {
            Observation::Note { text } => Some(text.as_str()),
            _ => None,
        })
    }

    /// Every fault, as `(step, start, end)`: starts paired with the first later end of the same step id.
    pub fn faults(&self) -> Vec<(&FaultStep, Ms, Option<Ms>)> {
        let mut out: Vec<(&FaultStep, Ms, Option<Ms>)> = Vec::new();
        for e in &self.events {
            match &e.obs {
                Observation::Fault {
                    step,
                    edge: Edge::Start,
                } => out.push((step, e.at_ms, None)),
                Observation::Fault { step, edge: Edge::End } => {
                    if let Some(open) = out.iter_mut().find(|(s, _, end)| s.id == step.id && end.is_none()) {
                        open.2 = Some(e.at_ms);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// A MAC with the node's name when known: `02:00:00:00:00:01 (n1)`.
    pub fn name_mac(&self, mac: &str) -> String {
        match self.node_of_mac(mac) {
            Some(n) => format!("{mac} (n{n})"),
            None => mac.to_string(),
        }
    }

    /// One line per event.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            let (tag, text) = self.describe(&e.obs);
            let _ = writeln!(out, "+{}ms  {tag:<6} {text}", e.at_ms);
        }
        out
    }

    /// One line per event, except that a run of identical events of one stream (one probe target, one
    /// VIP's ARP answers or who-has requests, one node's status, one VIP's neighbour entry) — identical
    /// apart from latency — is one line with its count and last time, even when other streams' events
    /// come in between. Faults, acknowledgements and notes are never collapsed.
    pub fn render_compact(&self) -> String {
        // (time, tag, text, count, last time); `open` maps a stream to its current run's line.
        let mut lines: Vec<(Ms, &'static str, String, usize, Ms)> = Vec::new();
        let mut open: BTreeMap<String, usize> = BTreeMap::new();
        for e in &self.events {
            let (tag, text) = self.describe(&e.obs);
            let Some(stream) = stream_of(&e.obs) else {
                lines.push((e.at_ms, tag, text, 1, e.at_ms));
                continue;
            };
            let signature = signature_of(&e.obs, &text);
            if let Some(&i) = open.get(&stream)
                && let Some(line) = lines.get_mut(i)
                && signature_of_line(line) == signature
            {
                line.3 += 1;
                line.4 = e.at_ms;
                continue;
            }
            open.insert(stream, lines.len());
            lines.push((e.at_ms, tag, text, 1, e.at_ms));
        }
        let mut out = String::new();
        for (at, tag, text, count, last) in lines {
            if count > 1 {
                let _ = writeln!(out, "+{at}ms  {tag:<6} {text}  x{count} (to +{last}ms)");
            } else {
                let _ = writeln!(out, "+{at}ms  {tag:<6} {text}");
            }
        }
        out
    }

    fn describe(&self, obs: &Observation) -> (&'static str, String) {
        match obs {
            Observation::ArpSeen { vip, mac, kind } => {
                let kind = match kind {
                    ArpKind::Announce => "announce",
                    ArpKind::Reply => "reply",
                };
                ("arp", format!("{vip} is-at {} ({kind})", self.name_mac(mac)))
            }
            Observation::WhoHas { vip } => ("whohas", format!("{vip}?")),
            Observation::Probe {
                ok,
                latency_ms,
                node,
                endpoint,
                error,
            } => {
                let to = node.map_or_else(|| "vip".to_string(), |n| format!("n{n}"));
                let text = if *ok {
                    format!("{to} ok {} ({latency_ms} ms)", endpoint.as_deref().unwrap_or("-"))
                } else {
                    format!("{to} err {}", error.as_deref().unwrap_or("?"))
                };
                ("probe", text)
            }
            Observation::Status(s) => ("status", describe_status(s)),
            Observation::Fault { step, edge } => match edge {
                Edge::Start => ("fault", step.fault_line()),
                Edge::End => ("heal", format!("{} (end of {})", step.end_line(), step.fault_line())),
            },
            Observation::Acked { version } => ("acked", format!("config v{version}")),
            Observation::NeighbourCache { vip, mac } => (
                "neigh",
                format!(
                    "client: {vip} -> {}",
                    mac.as_deref()
                        .map_or_else(|| "(none)".to_string(), |m| self.name_mac(m))
                ),
            ),
            Observation::Note { text } => ("note", text.clone()),
        }
    }
}

fn describe_status(s: &Status) -> String {
    if !s.reachable {
        return format!("n{} unreachable", s.node);
    }
    let leader = s.leader.map_or_else(|| "none".to_string(), |l| format!("n{l}"));
    let vips: Vec<String> = s.held_vips.iter().map(ToString::to_string).collect();
    format!(
        "n{} term {} leader {leader} v{}{}{}{} vips [{}]",
        s.node,
        s.term,
        s.config_version,
        if s.ready { "" } else { " not-ready" },
        if s.source_running { " source" } else { "" },
        if s.quorum_contact { " quorum" } else { " NO-QUORUM" },
        vips.join(" ")
    )
}

/// The stream an event belongs to for compaction; `None`: never collapsed.
fn stream_of(obs: &Observation) -> Option<String> {
    match obs {
        Observation::ArpSeen { vip, .. } => Some(format!("arp {vip}")),
        Observation::WhoHas { vip } => Some(format!("whohas {vip}")),
        Observation::Probe { node, .. } => Some(format!("probe {node:?}")),
        Observation::Status(s) => Some(format!("status {}", s.node)),
        Observation::NeighbourCache { vip, .. } => Some(format!("neigh {vip}")),
        Observation::Fault { .. } | Observation::Acked { .. } | Observation::Note { .. } => None,
    }
}

/// What must be equal for two events of one stream to collapse: the text, without a probe's latency.
fn signature_of(obs: &Observation, text: &str) -> String {
    match obs {
        Observation::Probe { ok: true, .. } => strip_latency(text),
        _ => text.to_string(),
    }
}

fn signature_of_line(line: &(Ms, &'static str, String, usize, Ms)) -> String {
    if line.1 == "probe" {
        strip_latency(&line.2)
    } else {
        line.2.clone()
    }
}

fn strip_latency(text: &str) -> String {
    match text.rfind(" (") {
        Some(i) if text.ends_with(" ms)") => text[..i].to_string(),
        _ => text.to_string(),
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_compact())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Fault;

    fn vip() -> IpAddr {
        "10.99.0.100".parse().unwrap()
    }

    fn probe(ok: bool, latency_ms: u64) -> Observation {
        Observation::Probe {
            ok,
            latency_ms,
            node: None,
            endpoint: ok.then(|| "backend".to_string()),
            error: (!ok).then(|| "timeout (connect)".to_string()),
        }
    }

    #[test]
    fn events_stay_sorted_and_stable() {
        let mut t = Timeline::new(3);
        t.push(30, Observation::Acked { version: 3 });
        t.push(10, Observation::Acked { version: 1 });
        t.push(30, Observation::Acked { version: 4 });
        t.push(20, Observation::Acked { version: 2 });
        let versions: Vec<u64> = t
            .events()
            .iter()
            .map(|e| match e.obs {
                Observation::Acked { version } => version,
                _ => 0,
            })
            .collect();
        assert_eq!(versions, [1, 2, 3, 4]);
        assert_eq!(t.end_ms(), 30);
    }

    #[test]
    fn renders_one_line_per_event_and_names_macs() {
        let step = FaultStep {
            id: 0,
            at_ms: 1234,
            duration_ms: 500,
            fault: Fault::Kill9,
            targets: vec![2],
        };
        let mut t = Timeline::new(3).with_mac(2, "02:00:00:00:00:02").with_vip(vip());
        t.push(
            1234,
            Observation::Fault {
                step: step.clone(),
                edge: Edge::Start,
            },
        );
        t.push(
            1300,
            Observation::ArpSeen {
                vip: vip(),
                mac: "02:00:00:00:00:02".into(),
                kind: ArpKind::Announce,
            },
        );
        t.push(1734, Observation::Fault { step, edge: Edge::End });
        let text = t.render();
        assert_eq!(
            text,
            "+1234ms  fault  kill -9 n2\n\
             +1300ms  arp    10.99.0.100 is-at 02:00:00:00:00:02 (n2) (announce)\n\
             +1734ms  heal   restart n2 (end of kill -9 n2)\n"
        );
        assert_eq!(t.faults().len(), 1);
        assert_eq!(t.faults()[0].1, 1234);
        assert_eq!(t.faults()[0].2, Some(1734));
    }

    #[test]
    fn compact_collapses_runs_per_stream() {
        let mut t = Timeline::new(3);
        for i in 0..5 {
            t.push(i * 20, probe(true, 3 + i));
            // Another stream in between does not break the probe run.
            t.push(i * 20 + 1, Observation::WhoHas { vip: vip() });
        }
        t.push(100, probe(false, 200));
        t.push(120, probe(false, 200));
        t.push(140, probe(true, 4));
        t.push(150, Observation::Acked { version: 7 });
        let text = t.render_compact();
        assert_eq!(
            text,
            "+0ms  probe  vip ok backend (3 ms)  x5 (to +80ms)\n\
             +1ms  whohas 10.99.0.100?  x5 (to +81ms)\n\
             +100ms  probe  vip err timeout (connect)  x2 (to +120ms)\n\
             +140ms  probe  vip ok backend (4 ms)\n\
             +150ms  acked  config v7\n"
        );
        assert_eq!(t.to_string(), text);
        // The full rendering has every event.
        assert_eq!(t.render().lines().count(), 14);
    }

    #[test]
    fn statuses_render_their_state() {
        let mut t = Timeline::new(2);
        t.push(
            5,
            Observation::Status(Status {
                node: 1,
                reachable: true,
                ready: true,
                term: 3,
                leader: Some(1),
                config_version: 12,
                source_running: true,
                held_vips: vec![vip()],
                quorum_contact: true,
            }),
        );
        t.push(6, Observation::Status(Status::unreachable(2)));
        assert_eq!(
            t.render(),
            "+5ms  status n1 term 3 leader n1 v12 source quorum vips [10.99.0.100]\n+6ms  status n2 unreachable\n"
        );
    }
}
