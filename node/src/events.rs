//! Recent events for the status page and `/api/v1/events`: leader changes, VIP moves, rejected objects; a bounded ring.
//!
//! The ring is pure: callers pass the time. Each member records what it observes itself (every
//! member sees leader changes and VIP moves through Raft; objects are rejected where the config
//! is compiled), so the page of any member tells its own story.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many events a member keeps.
pub const CAPACITY: usize = 256;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new leader, or none.
    Leader,
    /// A VIP changed hands (or got none).
    Vip,
    /// An object is rejected, or served with a problem.
    Rejected,
    /// An object that had a problem has none any more.
    Resolved,
    /// A routing table version was applied here.
    Config,
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increases by one per event on this member; a client asks for `since` the last it saw.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    pub message: String,
}

/// The ring of recent events.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    next: u64,
    items: VecDeque<Event>,
    /// Problems as last recorded, by object, to report only what changed.
    problems: BTreeMap<String, String>,
}

impl Events {
    /// Records an event at `now_ms`.
    pub fn push(&self, now_ms: u64, kind: EventKind, message: impl Into<String>) {
        let Ok(mut ring) = self.inner.lock() else { return };
        ring.push(now_ms, kind, message.into());
    }

    /// Events after `since` (all kept ones with 0), oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        let Ok(ring) = self.inner.lock() else { return Vec::new() };
        ring.items.iter().filter(|e| e.seq > since).cloned().collect()
    }

    /// Records the difference between the last problems and `now`: each object newly rejected
    /// (or with a new reason), and each object whose problem went away. `now` maps an object
    /// (`Kind ns/name`) to its problem.
    pub fn problems(&self, now_ms: u64, now: BTreeMap<String, String>) {
        let Ok(mut ring) = self.inner.lock() else { return };
        let before = std::mem::take(&mut ring.problems);
        for (object, problem) in &now {
            if before.get(object) != Some(problem) {
                ring.push(now_ms, EventKind::Rejected, format!("{object}: {problem}"));
            }
        }
        for object in before.keys().filter(|o| !now.contains_key(*o)) {
            ring.push(now_ms, EventKind::Resolved, format!("{object}: no problem any more"));
        }
        ring.problems = now;
    }
}

impl Ring {
    fn push(&mut self, at_ms: u64, kind: EventKind, message: String) {
        self.next += 1;
        if self.items.len() == CAPACITY {
            self.items.pop_front();
        }
        self.items.push_back(Event {
            seq: self.next,
            at_ms,
            kind,
            message,
        });
    }
}

/// Milliseconds since the Unix epoch, for callers of [`Events`].
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_numbers_them() {
        let ev = Events::default();
        for i in 0..(CAPACITY as u64 + 10) {
            ev.push(i, EventKind::Config, format!("v{i}"));
        }
        let all = ev.since(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all[0].message, "v10");
        assert_eq!(all.last().unwrap().seq, CAPACITY as u64 + 10);
        let tail = ev.since(CAPACITY as u64 + 8);
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [265, 266]);
    }

    #[test]
    fn problems_are_reported_when_they_appear_change_and_go() {
        let ev = Events::default();
        let set = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(o, p)| ((*o).to_string(), (*p).to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        ev.problems(1, set(&[("Ingress a/x", "bad path")]));
        ev.problems(2, set(&[("Ingress a/x", "bad path")]));
        ev.problems(3, set(&[("Ingress a/x", "bad host"), ("Ingress a/y", "no port")]));
        ev.problems(4, set(&[("Ingress a/y", "no port")]));
        let got: Vec<(u64, EventKind, String)> =
            ev.since(0).into_iter().map(|e| (e.at_ms, e.kind, e.message)).collect();
        assert_eq!(
            got,
            [
                (1, EventKind::Rejected, "Ingress a/x: bad path".to_string()),
                (3, EventKind::Rejected, "Ingress a/x: bad host".to_string()),
                (3, EventKind::Rejected, "Ingress a/y: no port".to_string()),
                (4, EventKind::Resolved, "Ingress a/x: no problem any more".to_string()),
            ]
        );
    }
}
