//! Status rows: each VIP with its owner or handover, the reason for its last move, and local timings.

use std::net::IpAddr;

use serde::Deserialize;
use serde::Serialize;

use crate::assign::Leadership;
use crate::hold::Holdings;
use crate::hold::Mode;
use crate::table::Reason;
use crate::table::SlotState;
use crate::table::Table;
use crate::time::Millis;

/// One VIP as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: IpAddr,
    pub state: SlotState,
    pub reason: Reason,
    /// The table revision of the last move.
    pub since_revision: u64,
    /// Milliseconds since the last move, when it was planned by the leadership asked about.
    pub moved_ms_ago: Option<u64>,
    /// How this node holds it, if it does.
    pub held: Option<Mode>,
    /// Milliseconds since this node last announced it, if it holds it actively.
    pub announced_ms_ago: Option<u64>,
}

/// Rows for every VIP in `table`. `leadership` (on the leader) dates moves it planned; `held`
/// (this node's holdings) adds how it holds each VIP and when it last announced it.
pub fn status(table: &Table, leadership: Option<&Leadership>, held: Option<&Holdings>, now: Millis) -> Vec<VipStatus> {
    table
        .slots
        .iter()
        .map(|(&vip, slot)| {
            let h = held.and_then(|h| h.get(&vip));
            VipStatus {
                vip,
                state: slot.state,
                reason: slot.reason,
                since_revision: slot.since_revision,
                moved_ms_ago: leadership
                    .filter(|l| l.leader == slot.stamp.leader && l.term == slot.stamp.term)
                    .map(|_| now.since(slot.stamp.at)),
                held: h.map(|h| h.mode),
                announced_ms_ago: h.and_then(|h| h.last_announced).map(|at| now.since(at)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Hold;
    use crate::table::Slot;
    use crate::table::Stamp;

    #[test]
    fn rows_date_moves_only_on_the_planning_leadership_and_show_announcements() {
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut table = Table {
            revision: 4,
            ..Table::default()
        };
        table.slots.insert(
            vip,
            Slot {
                state: SlotState::Owned { owner: 2 },
                since_revision: 4,
                reason: Reason::OwnerDown,
                stamp: Stamp {
                    leader: 1,
                    term: 7,
                    at: Millis(1_000),
                },
            },
        );
        let mut held = Holdings::new();
        held.insert(
            vip,
            Hold {
                mode: Mode::Active,
                since: Millis(1_100),
                announcements: 3,
                last_announced: Some(Millis(1_300)),
            },
        );
        let same = Leadership {
            leader: 1,
            term: 7,
            since: Millis(0),
        };
        let rows = status(&table, Some(&same), Some(&held), Millis(1_500));
        assert_eq!(
            rows,
            vec![VipStatus {
                vip,
                state: SlotState::Owned { owner: 2 },
                reason: Reason::OwnerDown,
                since_revision: 4,
                moved_ms_ago: Some(500),
                held: Some(Mode::Active),
                announced_ms_ago: Some(200),
            }]
        );
        let other = Leadership { term: 8, ..same };
        let rows = status(&table, Some(&other), None, Millis(1_500));
        assert_eq!((rows[0].moved_ms_ago, rows[0].held), (None, None));
        assert_eq!(Reason::OwnerDown.to_string(), "owner_down");
    }
}
