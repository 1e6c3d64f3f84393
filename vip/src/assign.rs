//! The leader's plan: from membership, health, the table and `now`, the next table (pure, deterministic).
//!
//! # Spread
//!
//! VIPs are spread over the *spread set*: eligible members (live, healthy, not draining) that
//! are settled (up past the preemption delay, or incumbents when this leader took over) or
//! already hold a VIP, restricted to non-`Avoid` members when there are any. Quotas differ by
//! at most one; the extra VIPs go to `Prefer` members first, then to those holding more (so a
//! balanced table is a fixed point), then by id.
//!
//! # Limited churn
//!
//! A holder keeps its VIPs up to its quota, in address order. Orphans (no eligible holder) go to
//! the settled member furthest below quota. A VIP over its holder's quota moves only to a settled
//! member below quota; a VIP on an `Avoid` member outside the spread set moves to the least loaded
//! settled member. So a balanced, healthy cluster plans nothing, and adding a member moves at most
//! its quota, ⌈VIPs / members⌉.
//!
//! # Preemption delay
//!
//! A member that returns (or joins) receives VIPs taken from other eligible members only once
//! settled. It gets orphans at once when no settled member is eligible: a VIP nobody serves is
//! worse than a flap.
//!
//! # Moves and the fence
//!
//! Committing `Owned { x }` is safe only if no other member can still be announcing the VIP. The
//! plan moves a VIP away from owner `o` in one of two ways:
//!
//! - **Cooperative** (`o` alive): `Owned { o }` → `Releasing { from: o, to }`. Nobody may take
//!   it yet. `o`, on applying that table, stops announcing (see [`crate::hold`]) and says so by
//!   reporting an applied revision at least the slot's `since_revision`. Then → `Owned { to }`.
//! - **Fenced**: `o` is *excluded* once the leader's clock passed [`Timing::fence_wait_ms`]
//!   after its last grant to `o` in this leadership (or after the leadership began, for members it
//!   never granted): every lease `o` could hold has ended. A silent owner's VIP goes straight to
//!   `Owned { to }`; a `Releasing` that `o` never acknowledges completes the same way, counting
//!   from when this leadership planned it (its stamp), or from the leadership's start if an
//!   earlier one did: every grant made after that carries the handover's revision or a later one
//!   (see [`crate::lease`]), so only leases granted before it can still let `o` announce.
//!
//! `Releasing { from: o, .. }` → `Owned { o }` (calling a handover off) is always safe: nobody
//! else can have taken it.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Deserialize;
use serde::Serialize;

use crate::config::Pool;
use crate::config::Timing;
use crate::table::NodeId;
use crate::table::Reason;
use crate::table::Slot;
use crate::table::SlotState;
use crate::table::Stamp;
use crate::table::Table;
use crate::time::Millis;

/// How much a member wants VIPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    /// Gets the extra VIPs of an uneven split, and VIPs first when there are fewer than members.
    Prefer,
    #[default]
    Neutral,
    /// Holds VIPs only when no other member can.
    Avoid,
}

/// One leadership: a leader in a term, from the instant (on its clock) it started acting as leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Leadership {
    pub leader: NodeId,
    pub term: u64,
    /// The leader's clock when it started granting, after applying everything before its term.
    /// No earlier leader grants anything after this instant (Raft leader leases), so it bounds
    /// the leases of members this leader has not granted.
    pub since: Millis,
}

impl Leadership {
    fn stamped(&self, stamp: &Stamp) -> bool {
        stamp.leader == self.leader && stamp.term == self.term
    }
}

/// What the leader knows of one member. [`crate::leader::LeaderBook::members`] builds these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    /// In the Raft group. A former member's VIPs move away; it is never a target.
    pub member: bool,
    pub preference: Preference,
    pub draining: bool,
    /// Granted a renewal within [`Timing::live_ms`].
    pub live: bool,
    /// Its last report said it can serve: listeners bound and routing config not stale.
    pub healthy: bool,
    /// On the leader's clock, since when it has been continuously live and healthy.
    pub up_since: Option<Millis>,
    /// On the leader's clock, this leadership's last grant to it.
    pub last_grant: Option<Millis>,
    /// The highest table revision it reported applied (holdings in effect) to this leadership.
    pub applied_revision: Option<u64>,
}

impl MemberInfo {
    fn eligible(&self) -> bool {
        self.member && self.live && self.healthy && !self.draining
    }
}

/// Everything a plan depends on.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The table as the leader applied it.
    pub table: &'a Table,
    pub pool: &'a Pool,
    pub members: &'a [MemberInfo],
    pub leadership: Leadership,
    pub timing: &'a Timing,
}

/// One slot change, for logs and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub vip: IpAddr,
    pub from: SlotState,
    pub to: SlotState,
    pub reason: Reason,
}

/// A plan: the table to propose (if anything changes), its moves, and when to plan again at the
/// latest if nothing else happens (a fence runs out, a member settles or stops being live).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub table: Option<Table>,
    pub moves: Vec<Move>,
    pub wake_at: Option<Millis>,
}

struct Ctx<'a> {
    input: &'a PlanInput<'a>,
    now: Millis,
    members: BTreeMap<NodeId, &'a MemberInfo>,
    wake: Option<Millis>,
}

impl Ctx<'_> {
    fn note(&mut self, at: Millis) {
        if at > self.now {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    fn settled(&mut self, m: &MemberInfo) -> bool {
        let Some(up) = m.up_since else { return false };
        let t = self.input.timing;
        if up <= self.input.leadership.since.plus(t.startup_ms()) {
            return true;
        }
        let at = up.plus(t.preempt_ms());
        self.note(at);
        self.now >= at
    }

    /// Whether `o` can no longer be announcing the VIP of `slot` (see the module docs).
    fn excluded(&mut self, o: NodeId, slot: Option<&Slot>) -> bool {
        let l = self.input.leadership;
        let fence = self.input.timing.fence_wait_ms();
        let m = self.members.get(&o).copied();
        let last = m.and_then(|m| m.last_grant).unwrap_or(l.since).max(l.since);
        if self.now >= last.plus(fence) {
            return true;
        }
        self.note(last.plus(fence));
        if let Some(slot) = slot
            && matches!(slot.state, SlotState::Releasing { from, .. } if from == o)
        {
            if m.and_then(|m| m.applied_revision) >= Some(slot.since_revision) {
                return true;
            }
            // Every grant this leadership made after planning the handover — or at all, if an
            // earlier leadership planned it: it had applied that table before it began —
            // carries a revision at or past it, so only older leases matter.
            let start = if l.stamped(&slot.stamp) { slot.stamp.at } else { l.since };
            let at = start.plus(fence);
            if self.now >= at {
                return true;
            }
            self.note(at);
        }
        false
    }

    fn live(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.member && m.live)
    }
}

/// Plans the next table. Deterministic: the same input and `now` give the same plan.
pub fn plan(input: &PlanInput<'_>, now: Millis) -> Plan {
    let mut cx = Ctx {
        input,
        now,
        members: input.members.iter().map(|m| (m.id, m)).collect(),
        wake: None,
    };
    for m in input.members {
        if m.live
            && let Some(g) = m.last_grant
        {
            cx.note(g.plus(input.timing.live_ms()));
        }
    }
    let targets = choose_targets(&mut cx);
    let table = input.table;
    let revision = table.revision + 1;
    let stamp = Stamp {
        leader: input.leadership.leader,
        term: input.leadership.term,
        at: now,
    };
    let vips: BTreeSet<IpAddr> = input.pool.addrs().chain(table.slots.keys().copied()).collect();
    let mut next = table.clone();
    next.revision = revision;
    let mut moves = Vec::new();
    for vip in vips {
        let in_pool = input.pool.contains(vip);
        let slot = table.slots.get(&vip);
        let target = targets.get(&vip).copied().flatten();
        let cur = slot.map_or(SlotState::Unassigned, |s| s.state);
        let fresh = |state, reason| Slot {
            state,
            since_revision: revision,
            reason,
            stamp,
        };
        let settle = |target: Option<NodeId>| match target {
            Some(t) => SlotState::Owned { owner: t },
            None => SlotState::Unassigned,
        };
        let new: Option<Option<Slot>> = match cur {
            SlotState::Unassigned => match target {
                Some(t) => Some(Some(fresh(SlotState::Owned { owner: t }, Reason::Initial))),
                None if !in_pool && slot.is_some() => Some(None),
                None => None,
            },
            SlotState::Owned { owner } if target == Some(owner) => None,
            SlotState::Owned { owner } => {
                let reason = why_leave(&cx, owner, target, in_pool);
                if cx.excluded(owner, slot) {
                    match target {
                        None if !in_pool => Some(None),
                        t => Some(Some(fresh(settle(t), reason))),
                    }
                } else if !cx.live(owner) {
                    // A silent owner: a handover could not be acknowledged; wait for the fence.
                    None
                } else {
                    Some(Some(fresh(
                        SlotState::Releasing {
                            from: owner,
                            to: target,
                        },
                        reason,
                    )))
                }
            }
            SlotState::Releasing { from, to } => {
                let reason = slot.map_or(Reason::Rebalance, |s| s.reason);
                if target == Some(from) {
                    Some(Some(fresh(SlotState::Owned { owner: from }, Reason::Reverted)))
                } else if cx.excluded(from, slot) {
                    match target {
                        None if !in_pool => Some(None),
                        t => Some(Some(fresh(settle(t), reason))),
                    }
                } else if to != target {
                    // Retarget: the handover itself (its revision and stamp) is unchanged.
                    slot.map(|s| {
                        Some(Slot {
                            state: SlotState::Releasing { from, to: target },
                            ..*s
                        })
                    })
                } else {
                    None
                }
            }
        };
        if let Some(new) = new {
            let to = new.map_or(SlotState::Unassigned, |s| s.state);
            let reason = new.map_or(Reason::Removed, |s| s.reason);
            moves.push(Move {
                vip,
                from: cur,
                to,
                reason,
            });
            match new {
                Some(s) => next.slots.insert(vip, s),
                None => next.slots.remove(&vip),
            };
        }
    }
    Plan {
        table: (!moves.is_empty()).then_some(next),
        moves,
        wake_at: cx.wake,
    }
}

/// The member each VIP should end up with (`None`: nobody can hold it, or it left the pool).
fn choose_targets(cx: &mut Ctx<'_>) -> BTreeMap<IpAddr, Option<NodeId>> {
    let input = cx.input;
    let eligible: Vec<&MemberInfo> = input.members.iter().filter(|m| m.eligible()).collect();
    let is_eligible = |id: NodeId| eligible.iter().any(|m| m.id == id);

    // Where each pool VIP is headed now: its owner, or the target of its handover.
    let mut intended: BTreeMap<IpAddr, Option<NodeId>> = BTreeMap::new();
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for vip in input.pool.addrs() {
        let w = match input.table.slots.get(&vip).map(|s| s.state) {
            Some(SlotState::Owned { owner }) => Some(owner),
            Some(SlotState::Releasing { to, .. }) => to,
            _ => None,
        }
        .filter(|&w| is_eligible(w));
        if let Some(w) = w {
            *load.entry(w).or_default() += 1;
        }
        intended.insert(vip, w);
    }
    let load_of = |id: NodeId| load.get(&id).copied().unwrap_or(0);

    let settled: BTreeSet<NodeId> = eligible.iter().filter(|m| cx.settled(m)).map(|m| m.id).collect();
    let best_class = |set: Vec<&MemberInfo>| -> Vec<NodeId> {
        let any_main = set.iter().any(|m| m.preference != Preference::Avoid);
        set.iter()
            .filter(|m| !any_main || m.preference != Preference::Avoid)
            .map(|m| m.id)
            .collect()
    };
    let mut spread = best_class(
        eligible
            .iter()
            .copied()
            .filter(|m| settled.contains(&m.id) || load_of(m.id) > 0)
            .collect(),
    );
    if spread.is_empty() {
        spread = best_class(eligible.clone());
    }
    let tier = |id: NodeId| cx.members.get(&id).map_or(Preference::Neutral, |m| m.preference);

    // Quotas: even, the remainder to Prefer members, then to the most loaded, then by id.
    let mut order = spread.clone();
    order.sort_by_key(|&id| (tier(id), Reverse(load_of(id)), id));
    let vip_count = input.pool.len();
    let mut quota: BTreeMap<NodeId, usize> = BTreeMap::new();
    if !order.is_empty() {
        let (q, r) = (vip_count / order.len(), vip_count % order.len());
        for (i, &id) in order.iter().enumerate() {
            quota.insert(id, q + usize::from(i < r));
        }
    }
    let quota_of = |id: NodeId| quota.get(&id).copied().unwrap_or(0);

    let mut target: BTreeMap<IpAddr, Option<NodeId>> = BTreeMap::new();
    let mut kept: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut displaced: Vec<(IpAddr, NodeId)> = Vec::new();
    let mut orphans: Vec<IpAddr> = Vec::new();
    // Keep: each holder keeps up to its quota, in address order.
    for (&vip, &w) in &intended {
        match w {
            Some(w) if quota.contains_key(&w) && kept.get(&w).copied().unwrap_or(0) < quota_of(w) => {
                *kept.entry(w).or_default() += 1;
                target.insert(vip, Some(w));
            }
            Some(w) => displaced.push((vip, w)),
            None => orphans.push(vip),
        }
    }
    // A handover whose target is gone: the previous owner takes it back if it has room.
    orphans.retain(|&vip| {
        let from = match input.table.slots.get(&vip).map(|s| s.state) {
            Some(SlotState::Releasing { from, .. }) => from,
            _ => return true,
        };
        if quota.contains_key(&from) && kept.get(&from).copied().unwrap_or(0) < quota_of(from) {
            *kept.entry(from).or_default() += 1;
            target.insert(vip, Some(from));
            return false;
        }
        true
    });

    let in_spread_settled: Vec<NodeId> = spread.iter().copied().filter(|id| settled.contains(id)).collect();
    let pick = |kept: &BTreeMap<NodeId, usize>, from: &[NodeId]| -> Option<NodeId> {
        from.iter().copied().max_by_key(|&id| {
            let k = kept.get(&id).copied().unwrap_or(0);
            let deficit = i64::try_from(quota_of(id)).unwrap_or(i64::MAX) - i64::try_from(k).unwrap_or(i64::MAX);
            (deficit, Reverse(tier(id)), Reverse(k), Reverse(id))
        })
    };
    // Orphans: settled members first; anyone eligible when no settled member is.
    let receivers: Vec<NodeId> = if !in_spread_settled.is_empty() {
        in_spread_settled.clone()
    } else if !spread.is_empty() {
        spread.clone()
    } else {
        Vec::new()
    };
    for vip in orphans {
        let t = pick(&kept, &receivers);
        if let Some(t) = t {
            *kept.entry(t).or_default() += 1;
        }
        target.insert(vip, t);
    }
    // Displaced: over quota moves only to a settled member below quota; off the spread set (an
    // Avoid member when others can serve) to the settled member with the most room.
    for (vip, w) in displaced {
        let others: Vec<NodeId> = in_spread_settled.iter().copied().filter(|&t| t != w).collect();
        let t = pick(&kept, &others).filter(|&t| {
            let below = kept.get(&t).copied().unwrap_or(0) < quota_of(t);
            below || !quota.contains_key(&w)
        });
        let t = t.unwrap_or(w);
        *kept.entry(t).or_default() += 1;
        target.insert(vip, Some(t));
    }
    for vip in input.table.slots.keys() {
        if !input.pool.contains(*vip) {
            target.insert(*vip, None);
        }
    }
    target
}

fn why_leave(cx: &Ctx<'_>, owner: NodeId, target: Option<NodeId>, in_pool: bool) -> Reason {
    if !in_pool {
        return Reason::Removed;
    }
    let Some(m) = cx.members.get(&owner) else {
        return Reason::OwnerDown;
    };
    let target_pref = target.and_then(|t| cx.members.get(&t)).map(|t| t.preference);
    if !m.member || !m.live {
        Reason::OwnerDown
    } else if !m.healthy {
        Reason::OwnerUnhealthy
    } else if m.draining {
        Reason::Drain
    } else if m.preference == Preference::Avoid && target_pref.is_some_and(|p| p != Preference::Avoid) {
        Reason::Avoided
    } else if target_pref == Some(Preference::Prefer) && m.preference != Preference::Prefer {
        Reason::Preferred
    } else {
        Reason::Rebalance
    }
}
