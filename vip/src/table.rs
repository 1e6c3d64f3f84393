//! The replicated assignment table: per VIP an owner, a handover in progress, or nobody, with the reason.
//!
//! The table is one value in the Raft state. Each proposal carries the whole table with
//! `revision` one above the table it was planned from, and [`Table::apply`] accepts it only if it
//! follows the applied one exactly. Every member applies the same log, so a proposal planned from
//! a table that was meanwhile superseded is ignored everywhere alike, and a revision number names
//! exactly one committed table. Lease grants and acknowledgements speak in these revisions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::Serialize;

use crate::error::StaleTable;
use crate::time::Millis;

/// A member's id, the Raft node id.
pub type NodeId = u64;

/// Who may hold a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SlotState {
    /// Nobody holds it.
    Unassigned,
    /// `owner` holds it and announces it.
    Owned { owner: NodeId },
    /// Handover: `from` stops announcing and answering ARP for it, keeping the address only
    /// silently for the grace period; `to` (if any) is the next owner and does not hold it yet.
    /// The leader moves on once `from` acknowledged this table or its lease surely ended.
    Releasing { from: NodeId, to: Option<NodeId> },
}

/// Why a VIP is where it is: the cause of its last move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It had no owner (new in the pool, or nobody could hold it before).
    Initial,
    /// The owner stopped renewing its lease (dead, partitioned, or removed from the group).
    OwnerDown,
    /// The owner reports that it cannot serve: listeners not bound or routing config stale.
    OwnerUnhealthy,
    /// The owner is being drained.
    Drain,
    /// Evening out the spread.
    Rebalance,
    /// Moved to a member marked to prefer VIPs.
    Preferred,
    /// Moved off a member marked to avoid VIPs.
    Avoided,
    /// Removed from the pool.
    Removed,
    /// A handover was called off and the previous owner keeps the VIP.
    Reverted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::Initial => "initial",
            Reason::OwnerDown => "owner_down",
            Reason::OwnerUnhealthy => "owner_unhealthy",
            Reason::Drain => "drain",
            Reason::Rebalance => "rebalance",
            Reason::Preferred => "preferred",
            Reason::Avoided => "avoided",
            Reason::Removed => "removed",
            Reason::Reverted => "reverted",
        };
        f.write_str(s)
    }
}

/// When, on whose clock, a slot entered its state. `at` means something only to the leadership
/// named here (one leader in one term); any other leader treats the time as unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub leader: NodeId,
    pub term: u64,
    pub at: Millis,
}

/// One VIP's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub state: SlotState,
    /// The table revision at which the slot entered `state` (retargeting a handover keeps it).
    pub since_revision: u64,
    pub reason: Reason,
    pub stamp: Stamp,
}

impl Slot {
    /// The member that holds and announces the VIP, if any.
    pub fn owner(&self) -> Option<NodeId> {
        match self.state {
            SlotState::Owned { owner } => Some(owner),
            _ => None,
        }
    }
}

/// The whole assignment, as committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub revision: u64,
    pub slots: BTreeMap<IpAddr, Slot>,
}

impl Table {
    /// Applies a committed proposal if it follows this table exactly; otherwise leaves this
    /// table as it is. Every member runs this on every committed proposal, in log order.
    pub fn apply(&mut self, proposal: Table) -> Result<(), StaleTable> {
        if Some(proposal.revision) != self.revision.checked_add(1) {
            return Err(StaleTable {
                applied: self.revision,
                proposed: proposal.revision,
            });
        }
        *self = proposal;
        Ok(())
    }

    /// The member that holds and announces `vip`, if any.
    pub fn owner(&self, vip: IpAddr) -> Option<NodeId> {
        self.slots.get(&vip).and_then(Slot::owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_accepts_only_the_next_revision() {
        let mut t = Table::default();
        let mut next = Table {
            revision: 1,
            ..Table::default()
        };
        next.slots.insert(
            "10.0.0.1".parse().unwrap(),
            Slot {
                state: SlotState::Owned { owner: 3 },
                since_revision: 1,
                reason: Reason::Initial,
                stamp: Stamp {
                    leader: 1,
                    term: 1,
                    at: Millis(5),
                },
            },
        );
        assert!(t.apply(next.clone()).is_ok());
        assert_eq!(t.owner("10.0.0.1".parse().unwrap()), Some(3));
        // The same revision again (a duplicate proposal) and a gap are both ignored.
        assert_eq!(
            t.apply(next.clone()),
            Err(StaleTable {
                applied: 1,
                proposed: 1
            })
        );
        next.revision = 3;
        assert!(t.apply(next).is_err());
        assert_eq!(t.revision, 1);
    }
}
