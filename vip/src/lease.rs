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

#[cfg(test)]
mod tests {
    use super::*;

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
