//! A member's lease: the send time of its last renewal a leading leader granted, and the table revision it must have applied.
//!
//! A member renews by a round trip it starts: it reads its clock (`sent_at`), sends a report to
//! the leader, and a leader that is leading (its Raft leader lease valid, everything before its
//! term applied) answers with a [`Grant`]. The lease is anchored at `sent_at`, never at the time
//! the answer arrives: the anchor then precedes the grant in real time however long the messages
//! took, which is what lets the leader bound the lease from its own grant time.
//!
//! The grant's `revision` is the highest table revision the leader had planned or applied when it
//! granted. A member may use the lease only once it has applied at least that revision, so a
//! grant cannot keep alive a holding that a table planned before the grant already took away.

use serde::Deserialize;
use serde::Serialize;

use crate::config::Timing;
use crate::time::Millis;

/// A leader's answer to a renewal report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The member must have applied at least this table revision to use the lease.
    pub revision: u64,
}

/// The lease a member holds VIPs under, on its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The member's clock when it sent the report the grant answered.
    pub anchor: Millis,
    pub revision: u64,
}

impl Lease {
    /// The lease after a grant for the report sent at `sent_at` arrives. An answer to an older
    /// report than the one the current lease is anchored at changes nothing.
    pub fn renew(current: Option<Lease>, sent_at: Millis, grant: Grant) -> Lease {
        match current {
            Some(l) if l.anchor > sent_at => l,
            _ => Lease {
                anchor: sent_at,
                revision: grant.revision,
            },
        }
    }

    /// Until when (exclusive) the holder may keep VIPs: `anchor + lease - release_guard`.
    pub fn hold_until(&self, timing: &Timing) -> Millis {
        self.anchor.plus(timing.hold_ms())
    }

    /// Whether VIPs may be held at `now` with the table at `applied_revision`.
    pub fn usable(&self, applied_revision: u64, timing: &Timing, now: Millis) -> bool {
        now < self.hold_until(timing) && applied_revision >= self.revision
    }
}

/// The leases a member keeps: the newest grant, and older ones that stay useful while its table
/// catches up with a newer grant's revision. Without them, a grant made right after the leader
/// planned a table would leave the member without a usable lease until that table is applied
/// here, and it would drop every VIP at once instead of handing them over.
///
/// Using an older grant until it ends is what the safety argument already allows for: the
/// leader fences from its *last* grant to the member, and an older grant only ends earlier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    /// Ascending anchors, ascending revisions (a lease no newer one dominates).
    kept: Vec<Lease>,
}

impl Leases {
    /// Records a grant for the report sent at `sent_at`. A lease that another one anchored no
    /// earlier with no higher revision dominates is dropped.
    pub fn renew(&mut self, sent_at: Millis, grant: Grant) {
        let new = Lease {
            anchor: sent_at,
            revision: grant.revision,
        };
        if self
            .kept
            .iter()
            .any(|l| l.anchor >= new.anchor && l.revision <= new.revision)
        {
            return;
        }
        self.kept
            .retain(|l| !(new.anchor >= l.anchor && new.revision <= l.revision));
        self.kept.push(new);
        self.kept.sort_by_key(|l| l.anchor);
    }

    /// The newest lease usable with the table at `applied_revision`, if any.
    pub fn usable(&self, applied_revision: u64, timing: &Timing, now: Millis) -> Option<Lease> {
        self.kept
            .iter()
            .rev()
            .find(|l| l.usable(applied_revision, timing, now))
            .copied()
    }

    /// Every lease kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.kept.iter()
    }

    /// The newest lease, usable or not.
    pub fn latest(&self) -> Option<Lease> {
        self.kept.last().copied()
    }

    /// Forgets leases that have ended.
    pub fn expire(&mut self, timing: &Timing, now: Millis) {
        self.kept.retain(|l| now < l.hold_until(timing));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_grant_serves_until_the_table_catches_up() {
        let t = Timing::default();
        let mut ls = Leases::default();
        ls.renew(Millis(100), Grant { revision: 1 });
        // The leader planned revision 2; the next grant names it before it is applied here.
        ls.renew(Millis(200), Grant { revision: 2 });
        assert_eq!(ls.usable(1, &t, Millis(210)).map(|l| l.anchor), Some(Millis(100)));
        assert_eq!(ls.usable(2, &t, Millis(210)).map(|l| l.anchor), Some(Millis(200)));
        // The older one ends on its own schedule (100 + 300 - 50).
        assert_eq!(ls.usable(1, &t, Millis(350)), None);
        // A newer grant asking no more makes both pointless.
        ls.renew(Millis(300), Grant { revision: 1 });
        assert_eq!(ls.kept.len(), 1);
        assert_eq!(ls.usable(1, &t, Millis(340)).map(|l| l.anchor), Some(Millis(300)));
        // Late answers to old reports change nothing.
        ls.renew(Millis(150), Grant { revision: 2 });
        assert_eq!(ls.kept.len(), 1);
        ls.expire(&t, Millis(460));
        assert_eq!(ls.latest().map(|l| l.anchor), Some(Millis(300)));
        assert_eq!(ls.kept.len(), 1, "{ls:?}");
    }

    #[test]
    fn renew_keeps_the_latest_anchor() {
        let g = |revision| Grant { revision };
        let l = Lease::renew(None, Millis(100), g(3));
        assert_eq!(
            l,
            Lease {
                anchor: Millis(100),
                revision: 3
            }
        );
        // A late answer to an earlier report does not move the anchor back.
        assert_eq!(Lease::renew(Some(l), Millis(90), g(9)), l);
        let l2 = Lease::renew(Some(l), Millis(200), g(2));
        assert_eq!(l2.anchor, Millis(200));
        let t = Timing::default();
        // 300 ms lease, 50 ms release guard: usable until 200 + 250.
        assert!(l2.usable(2, &t, Millis(449)));
        assert!(!l2.usable(2, &t, Millis(450)));
        assert!(!l2.usable(1, &t, Millis(300)));
    }
}
