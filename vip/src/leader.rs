//! The leader's bookkeeping for one leadership: renewal grants, member liveness and health, planning.
//!
//! The shell creates one [`LeaderBook`] when this node starts leading (Raft leader lease valid
//! and, via `ensure_linearizable`, everything before its term applied) and drops it the moment
//! it stops leading; a new leadership always starts a new book. While it leads:
//!
//! - every renewal [`Report`] is answered with [`LeaderBook::grant`] (the leader reports to
//!   itself on each tick too, anchoring its own lease at its last quorum acknowledgement);
//! - it calls [`LeaderBook::plan`] after each report or applied table and at
//!   [`crate::assign::Plan::wake_at`], and proposes the table it returns;
//! - it never answers a report while not leading.
//!
//! The book is where the grant discipline lives: a grant carries the highest revision this
//! leadership planned (or had applied when it began), so every grant made after a plan obliges
//! the member to apply that plan's table before using the lease.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::assign::Leadership;
use crate::assign::MemberInfo;
use crate::assign::Plan;
use crate::assign::PlanInput;
use crate::assign::Preference;
use crate::assign::plan;
use crate::config::Pool;
use crate::config::Timing;
use crate::lease::Grant;
use crate::table::NodeId;
use crate::table::Table;
use crate::time::Millis;
use crate::time::ceil_ms;

/// A member's renewal request. The member keeps its send time to itself: the lease is anchored
/// there (see [`crate::lease`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub member: NodeId,
    /// The table revision it has applied, with the holdings for that table already in effect.
    pub applied_revision: u64,
    /// Its listeners are bound and it can serve.
    pub ready: bool,
    /// The routing config version it serves.
    pub config_version: u64,
}

/// Operator settings for one member of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberConfig {
    pub id: NodeId,
    #[serde(default)]
    pub preference: Preference,
    /// `drain NODE`: hand its VIPs over and give it none.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    last_grant: Millis,
    applied: u64,
    healthy: bool,
    up_since: Option<Millis>,
}

/// One leadership's view of the members, its grants and its plans.
#[derive(Clone, Debug)]
pub struct LeaderBook {
    leadership: Leadership,
    timing: Timing,
    base_revision: u64,
    planned: u64,
    planned_at: Option<Millis>,
    records: BTreeMap<NodeId, Record>,
}

impl LeaderBook {
    /// A book for `leadership`, with the table revision the leader had applied when it began.
    pub fn new(leadership: Leadership, timing: Timing, applied_revision: u64) -> Self {
        Self {
            leadership,
            timing,
            base_revision: applied_revision,
            planned: applied_revision,
            planned_at: None,
            records: BTreeMap::new(),
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership
    }

    /// Records a report received at `now` and grants a renewal. `config_floor` is the routing
    /// config version a member must serve to count as healthy ([`VersionHistory::floor`]).
    pub fn grant(&mut self, report: &Report, config_floor: u64, now: Millis) -> Grant {
        let healthy = report.ready && report.config_version >= config_floor;
        let live_ms = self.timing.live_ms();
        let rec = self.records.entry(report.member).or_insert(Record {
            last_grant: now,
            applied: report.applied_revision,
            healthy,
            up_since: None,
        });
        let was_live = now.since(rec.last_grant) < live_ms;
        rec.up_since = match (healthy, was_live && rec.healthy) {
            (false, _) => None,
            (true, true) => rec.up_since.or(Some(now)),
            (true, false) => Some(now),
        };
        rec.healthy = healthy;
        rec.applied = rec.applied.max(report.applied_revision);
        rec.last_grant = rec.last_grant.max(now);
        Grant {
            revision: self.planned.max(self.base_revision),
        }
    }

    /// What this leadership knows of each configured member, plus any former member it granted.
    pub fn members(&self, configs: &[MemberConfig], now: Millis) -> Vec<MemberInfo> {
        let live_ms = self.timing.live_ms();
        let info = |id: NodeId, member: bool, preference: Preference, draining: bool| {
            let rec = self.records.get(&id);
            let live = rec.is_some_and(|r| now.since(r.last_grant) < live_ms);
            MemberInfo {
                id,
                member,
                preference,
                draining,
                live,
                healthy: rec.is_some_and(|r| r.healthy),
                up_since: rec.and_then(|r| r.up_since).filter(|_| live),
                last_grant: rec.map(|r| r.last_grant),
                applied_revision: rec.map(|r| r.applied),
            }
        };
        let mut out: Vec<MemberInfo> = configs
            .iter()
            .map(|c| info(c.id, true, c.preference, c.draining))
            .collect();
        for &id in self.records.keys() {
            if !configs.iter().any(|c| c.id == id) {
                out.push(info(id, false, Preference::Neutral, false));
            }
        }
        out
    }

    /// Plans from `table` (as this leader applied it). Plans nothing during the first
    /// [`Timing::startup_ms`] of the leadership (collecting reports), nor while its previous
    /// proposal is neither applied nor older than a lease (then presumed lost: a late duplicate
    /// is refused by [`Table::apply`]).
    pub fn plan(&mut self, table: &Table, pool: &Pool, configs: &[MemberConfig], now: Millis) -> Plan {
        self.base_revision = self.base_revision.max(table.revision);
        let ready_at = self.leadership.since.plus(self.timing.startup_ms());
        if now < ready_at {
            return Plan {
                wake_at: Some(ready_at),
                ..Plan::default()
            };
        }
        if table.revision < self.planned
            && let Some(at) = self.planned_at
        {
            let retry = at.plus(self.timing.live_ms());
            if now < retry {
                return Plan {
                    wake_at: Some(retry),
                    ..Plan::default()
                };
            }
        }
        let members = self.members(configs, now);
        let input = PlanInput {
            table,
            pool,
            members: &members,
            leadership: self.leadership,
            timing: &self.timing,
        };
        let p = plan(&input, now);
        if let Some(t) = &p.table {
            self.planned = self.planned.max(t.revision);
            self.planned_at = Some(now);
        }
        p
    }
}

/// The leader's recent routing config versions, to tell a lagging member from a stale one.
#[derive(Clone, Debug, Default)]
pub struct VersionHistory {
    entries: VecDeque<(u64, Millis)>,
}

impl VersionHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// The leader has `version` committed as of `now` (call when it changes, and once at the
    /// start of a leadership).
    pub fn record(&mut self, version: u64, now: Millis) {
        if self.entries.back().is_none_or(|&(v, _)| version > v) {
            self.entries.push_back((version, now));
        }
    }

    /// The highest version committed at least `max_lag` before `now`: a member serving less is
    /// stale. Forgets entries no longer needed.
    pub fn floor(&mut self, max_lag: Duration, now: Millis) -> u64 {
        let lag = ceil_ms(max_lag);
        let old_enough = |at: Millis| now.since(at) >= lag && at <= now;
        while self.entries.len() > 1 && self.entries.get(1).is_some_and(|&(_, at)| old_enough(at)) {
            self.entries.pop_front();
        }
        match self.entries.front() {
            Some(&(v, at)) if old_enough(at) => v,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> LeaderBook {
        let l = Leadership {
            leader: 1,
            term: 3,
            since: Millis(1000),
        };
        // The numbers below are for a 400 ms lease.
        let timing = Timing {
            lease: Duration::from_millis(400),
            ..Timing::default()
        };
        LeaderBook::new(l, timing, 7)
    }

    fn report(member: NodeId, ready: bool) -> Report {
        Report {
            member,
            applied_revision: 7,
            ready,
            config_version: 5,
        }
    }

    #[test]
    fn grants_carry_the_planned_revision() {
        let mut b = book();
        assert_eq!(b.grant(&report(2, true), 0, Millis(1010)).revision, 7);
        let pool = Pool::new(vec![crate::config::VipSpec {
            addr: "10.0.0.1".parse().unwrap(),
            prefix: 32,
            interface: None,
        }])
        .unwrap();
        let configs = [MemberConfig {
            id: 2,
            preference: Preference::Neutral,
            draining: false,
        }];
        let table = Table {
            revision: 7,
            ..Table::default()
        };
        // Still collecting reports.
        let p = b.plan(&table, &pool, &configs, Millis(1100));
        assert_eq!((p.table.is_none(), p.wake_at), (true, Some(Millis(1200))));
        b.grant(&report(2, true), 0, Millis(1150));
        let p = b.plan(&table, &pool, &configs, Millis(1200));
        assert_eq!(p.table.as_ref().map(|t| t.revision), Some(8));
        // Every grant after the plan obliges the member to apply revision 8.
        assert_eq!(b.grant(&report(2, true), 0, Millis(1201)).revision, 8);
        // The proposal is in flight: no second plan from the same table until it is presumed lost.
        assert!(b.plan(&table, &pool, &configs, Millis(1300)).table.is_none());
        assert!(b.plan(&table, &pool, &configs, Millis(1600)).table.is_some());
    }

    #[test]
    fn up_since_restarts_after_silence_or_sickness() {
        let mut b = book();
        b.grant(&report(2, true), 0, Millis(1000));
        b.grant(&report(2, true), 0, Millis(1100));
        let cfg = [MemberConfig {
            id: 2,
            preference: Preference::Neutral,
            draining: false,
        }];
        assert_eq!(b.members(&cfg, Millis(1150))[0].up_since, Some(Millis(1000)));
        // Silent for more than a lease: not live, and up again only from the next report.
        assert!(!b.members(&cfg, Millis(1600))[0].live);
        b.grant(&report(2, true), 0, Millis(1600));
        assert_eq!(b.members(&cfg, Millis(1600))[0].up_since, Some(Millis(1600)));
        b.grant(&report(2, false), 0, Millis(1700));
        let m = &b.members(&cfg, Millis(1700))[0];
        assert_eq!((m.healthy, m.up_since), (false, None));
        b.grant(&report(2, true), 6, Millis(1800));
        assert!(
            !b.members(&cfg, Millis(1800))[0].healthy,
            "config version 5 is below the floor 6"
        );
        // A former member is still listed, so its VIPs can be fenced.
        b.grant(&report(9, true), 0, Millis(1800));
        let all = b.members(&cfg, Millis(1800));
        assert!(all.iter().any(|m| m.id == 9 && !m.member));
    }

    #[test]
    fn version_floor() {
        let mut h = VersionHistory::new();
        let lag = Duration::from_secs(10);
        h.record(3, Millis(0));
        assert_eq!(h.floor(lag, Millis(5_000)), 0);
        assert_eq!(h.floor(lag, Millis(10_000)), 3);
        h.record(4, Millis(12_000));
        h.record(4, Millis(13_000));
        h.record(5, Millis(15_000));
        assert_eq!(h.floor(lag, Millis(21_999)), 3);
        assert_eq!(h.floor(lag, Millis(22_000)), 4);
        assert_eq!(h.floor(lag, Millis(30_000)), 5);
        assert_eq!(h.entries.len(), 1);
    }
}
