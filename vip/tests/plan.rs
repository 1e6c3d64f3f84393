//! Leader-side planning: spread, churn, prefer/avoid, health gating, drain, fencing, preemption delay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use raftgate_vip::Leadership;
use raftgate_vip::MemberInfo;
use raftgate_vip::Millis;
use raftgate_vip::NodeId;
use raftgate_vip::Plan;
use raftgate_vip::PlanInput;
use raftgate_vip::Pool;
use raftgate_vip::Preference;
use raftgate_vip::Reason;
use raftgate_vip::SlotState;
use raftgate_vip::Table;
use raftgate_vip::Timing;
use raftgate_vip::VipSpec;
use raftgate_vip::plan;

const NOW: Millis = Millis(1_000_000);
const LEADERSHIP: Leadership = Leadership {
    leader: 1,
    term: 4,
    since: Millis(0),
};

fn vip(i: usize) -> IpAddr {
    IpAddr::from([10, 0, 0, u8::try_from(i).unwrap()])
}

fn pool(n: usize) -> Pool {
    Pool::new(
        (1..=n)
            .map(|i| VipSpec {
                addr: vip(i),
                prefix: 24,
                interface: None,
            })
            .collect(),
    )
    .unwrap()
}

/// A healthy member, granted just now, up since the leadership began, acknowledging everything.
fn m(id: NodeId) -> MemberInfo {
    MemberInfo {
        id,
        member: true,
        preference: Preference::Neutral,
        draining: false,
        live: true,
        healthy: true,
        up_since: Some(Millis(0)),
        last_grant: Some(NOW),
        applied_revision: Some(u64::MAX),
    }
}

fn run(table: &Table, pool: &Pool, members: &[MemberInfo], now: Millis) -> Plan {
    plan(
        &PlanInput {
            table,
            pool,
            members,
            leadership: LEADERSHIP,
            timing: &Timing::default(),
        },
        now,
    )
}

/// Plans and applies until nothing changes (members acknowledge everything at once).
fn converge(mut table: Table, pool: &Pool, members: &[MemberInfo]) -> (Table, usize) {
    for rounds in 0..10 {
        match run(&table, pool, members, NOW).table {
            Some(t) => table = t,
            None => return (table, rounds),
        }
    }
    panic!("no fixed point in 10 rounds: {table:?}");
}

fn counts(t: &Table) -> BTreeMap<NodeId, usize> {
    let mut c = BTreeMap::new();
    for s in t.slots.values() {
        if let Some(o) = s.owner() {
            *c.entry(o).or_default() += 1;
        }
    }
    c
}

#[test]
fn initial_spread_is_even_and_stable() {
    let p = pool(7);
    let members = [m(1), m(2), m(3)];
    let first = run(&Table::default(), &p, &members, NOW);
    let t = first.table.unwrap();
    assert_eq!(t.revision, 1);
    assert!(first.moves.iter().all(|mv| mv.reason == Reason::Initial));
    let c = counts(&t);
    assert_eq!(c.values().sum::<usize>(), 7);
    assert!(c.values().all(|&n| n == 2 || n == 3), "{c:?}");
    assert!(
        run(&t, &p, &members, NOW).table.is_none(),
        "a balanced table is a fixed point"
    );
}

#[test]
fn prefer_gets_the_extra_and_avoid_only_as_last_resort() {
    let p = pool(4);
    let mut members = [m(1), m(2), m(3)];
    members[2].preference = Preference::Prefer;
    members[0].preference = Preference::Avoid;
    let (t, _) = converge(Table::default(), &p, &members);
    assert_eq!(counts(&t), BTreeMap::from([(2, 2), (3, 2)]));
    // Fewer VIPs than members: the preferred member first.
    let (t, _) = converge(Table::default(), &pool(1), &members);
    assert_eq!(t.owner(vip(1)), Some(3));
    // Only the avoiding member can serve: it holds everything.
    members[1].healthy = false;
    members[2].live = false;
    let (t, _) = converge(Table::default(), &p, &members);
    assert_eq!(counts(&t), BTreeMap::from([(1, 4)]));
    // Marking a holder `avoid` moves its VIPs off, cooperatively.
    let members = [m(1), m(2)];
    let (t, _) = converge(Table::default(), &p, &members);
    let mut avoid = members.clone();
    avoid[0].preference = Preference::Avoid;
    let step = run(&t, &p, &avoid, NOW);
    assert!(
        step.moves
            .iter()
            .all(|mv| mv.reason == Reason::Avoided && matches!(mv.to, SlotState::Releasing { from: 1, to: Some(2) }))
    );
    let (t, _) = converge(t, &p, &avoid);
    assert_eq!(counts(&t), BTreeMap::from([(2, 4)]));
}

#[test]
fn unhealthy_member_gets_nothing_and_hands_over() {
    let p = pool(4);
    let members = [m(1), m(2)];
    let (t, _) = converge(Table::default(), &p, &members);
    let mut sick = members.clone();
    sick[1].healthy = false;
    sick[1].applied_revision = Some(t.revision);
    let step = run(&t, &p, &sick, NOW);
    let t2 = step.table.unwrap();
    assert_eq!(step.moves.len(), 2);
    for mv in &step.moves {
        assert_eq!(mv.reason, Reason::OwnerUnhealthy);
        assert_eq!(mv.to, SlotState::Releasing { from: 2, to: Some(1) });
    }
    // Not acknowledged yet, lease not run out: nothing moves on.
    assert!(run(&t2, &p, &sick, NOW).table.is_none());
    // Acknowledged: the new owner takes them, keeping the reason.
    sick[1].applied_revision = Some(t2.revision);
    let t3 = run(&t2, &p, &sick, NOW).table.unwrap();
    assert_eq!(counts(&t3), BTreeMap::from([(1, 4)]));
    assert!(t3.slots.values().all(|s| s.reason != Reason::Rebalance));
    // Nobody healthy at all: handed over to nobody.
    let mut all_sick = sick.clone();
    all_sick[0].healthy = false;
    let step = run(&t3, &p, &all_sick, NOW);
    assert!(
        step.table
            .unwrap()
            .slots
            .values()
            .all(|s| s.state == SlotState::Releasing { from: 1, to: None })
    );
}

#[test]
fn drain_is_a_handover_that_waits_for_acknowledgement_or_the_fence() {
    let p = pool(2);
    let members = [m(1), m(2)];
    let (t, _) = converge(Table::default(), &p, &members);
    let mut draining = members.clone();
    draining[1].draining = true;
    draining[1].applied_revision = Some(t.revision);
    let step = run(&t, &p, &draining, NOW);
    let t2 = step.table.unwrap();
    let handover = t2
        .slots
        .values()
        .find(|s| matches!(s.state, SlotState::Releasing { .. }))
        .unwrap();
    assert_eq!(handover.reason, Reason::Drain);
    // Never acknowledged (the member keeps renewing but does not apply): the handover completes
    // only after fence_wait from when this leadership planned it.
    let fence = Timing::default().fence_wait_ms();
    let later = |ms| Millis(NOW.0 + ms);
    let mut renewing = draining.clone();
    renewing[1].last_grant = Some(later(fence));
    assert!(run(&t2, &p, &renewing, later(fence - 1)).table.is_none());
    assert_eq!(run(&t2, &p, &renewing, later(fence - 1)).wake_at, Some(later(fence)));
    let t3 = run(&t2, &p, &renewing, later(fence)).table.unwrap();
    assert_eq!(counts(&t3), BTreeMap::from([(1, 2)]));
    assert!(
        t3.slots
            .values()
            .all(|s| s.reason == Reason::Drain || s.reason == Reason::Initial)
    );
}

#[test]
fn a_silent_owner_is_fenced_after_fence_wait_from_its_last_grant() {
    let p = pool(2);
    let members = [m(1), m(2)];
    let (t, _) = converge(Table::default(), &p, &members);
    let owner2: Vec<IpAddr> = t
        .slots
        .iter()
        .filter(|(_, s)| s.owner() == Some(2))
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(owner2.len(), 1);
    let fence = Timing::default().fence_wait_ms();
    let mut dead = members.clone();
    dead[1].live = false;
    dead[1].last_grant = Some(Millis(NOW.0 - fence + 10));
    let step = run(&t, &p, &dead, NOW);
    assert!(
        step.table.is_none(),
        "no handover to a silent owner, no move before the fence"
    );
    assert_eq!(step.wake_at, Some(Millis(NOW.0 + 10)));
    let step = run(&t, &p, &dead, Millis(NOW.0 + 10));
    let t2 = step.table.unwrap();
    assert_eq!(t2.owner(owner2[0]), Some(1));
    assert_eq!(step.moves[0].reason, Reason::OwnerDown);
    assert_eq!(step.moves[0].from, SlotState::Owned { owner: 2 });
}

#[test]
fn a_new_leader_fences_members_it_never_granted_from_its_start() {
    let p = pool(1);
    let mut t = Table::default();
    t.slots.insert(
        vip(1),
        raftgate_vip::Slot {
            state: SlotState::Owned { owner: 2 },
            since_revision: 0,
            reason: Reason::Initial,
            // Stamped by another leadership: its time means nothing here.
            stamp: raftgate_vip::Stamp {
                leader: 9,
                term: 2,
                at: Millis(u64::MAX / 2),
            },
        },
    );
    let mut never = m(2);
    never.live = false;
    never.last_grant = None;
    never.applied_revision = None;
    let members = [m(1), never];
    let fence = Timing::default().fence_wait_ms();
    assert!(run(&t, &p, &members, Millis(fence - 1)).table.is_none());
    assert_eq!(
        run(&t, &p, &members, Millis(fence)).table.unwrap().owner(vip(1)),
        Some(1)
    );
}

#[test]
fn a_handover_planned_by_an_earlier_leader_completes_from_this_leaders_start() {
    let p = pool(1);
    let mut t = Table {
        revision: 5,
        ..Table::default()
    };
    t.slots.insert(
        vip(1),
        raftgate_vip::Slot {
            state: SlotState::Releasing { from: 2, to: Some(1) },
            since_revision: 5,
            reason: Reason::Drain,
            // Another leadership's clock: a small number here, but meaningless.
            stamp: raftgate_vip::Stamp {
                leader: 9,
                term: 3,
                at: Millis(0),
            },
        },
    );
    let since = Millis(NOW.0 - 100);
    let leadership = Leadership { since, ..LEADERSHIP };
    // The old owner renews with this leader but never acknowledges.
    let mut old = m(2);
    old.draining = true;
    old.applied_revision = Some(4);
    let members = [m(1), old];
    let fence = Timing::default().fence_wait_ms();
    let at = |now: Millis| {
        plan(
            &PlanInput {
                table: &t,
                pool: &p,
                members: &members,
                leadership,
                timing: &Timing::default(),
            },
            now,
        )
    };
    let before = at(Millis(since.0 + fence - 1));
    assert!(before.table.is_none());
    assert_eq!(before.wake_at, Some(Millis(since.0 + fence)));
    let after = at(Millis(since.0 + fence)).table.unwrap();
    assert_eq!(after.owner(vip(1)), Some(1));
    assert_eq!(after.slots[&vip(1)].reason, Reason::Drain);
}

#[test]
fn handover_with_a_vanished_target_is_retargeted_or_reverted() {
    let p = pool(2);
    let members = [m(1), m(2), m(3)];
    let (t, _) = converge(Table::default(), &p, &members);
    // Drain 2 -> handover to someone.
    let v2 = *t.slots.iter().find(|(_, s)| s.owner() == Some(2)).unwrap().0;
    let mut ms = members.clone();
    ms[1].draining = true;
    ms[1].applied_revision = Some(0);
    let t2 = run(&t, &p, &ms, NOW).table.unwrap();
    let SlotState::Releasing { to: Some(first), .. } = t2.slots[&v2].state else {
        panic!("{t2:?}")
    };
    // The target dies: retarget to the remaining member, same handover revision.
    let idx = usize::try_from(first - 1).unwrap();
    ms[idx].live = false;
    let step = run(&t2, &p, &ms, NOW);
    let t3 = step.table.unwrap();
    assert!(matches!(t3.slots[&v2].state, SlotState::Releasing { from: 2, to: Some(x) } if x != first));
    assert_eq!(t3.slots[&v2].since_revision, t2.slots[&v2].since_revision);
    // Drain called off and no other target: the old owner keeps it.
    let mut ms2 = members.clone();
    ms2[0].healthy = false;
    ms2[2].healthy = false;
    let step = run(&t3, &p, &ms2, NOW);
    let t4 = step.table.unwrap();
    assert_eq!(t4.slots[&v2].state, SlotState::Owned { owner: 2 });
    assert_eq!(t4.slots[&v2].reason, Reason::Reverted);
}

#[test]
fn removed_vip_is_released_then_deleted() {
    let members = [m(1)];
    let (t, _) = converge(Table::default(), &pool(2), &members);
    let smaller = pool(1);
    let mut ms = members.clone();
    ms[0].applied_revision = Some(t.revision);
    let t2 = run(&t, &smaller, &ms, NOW).table.unwrap();
    assert_eq!(t2.slots[&vip(2)].state, SlotState::Releasing { from: 1, to: None });
    assert_eq!(t2.slots[&vip(2)].reason, Reason::Removed);
    ms[0].applied_revision = Some(t2.revision);
    let t3 = run(&t2, &smaller, &ms, NOW).table.unwrap();
    assert!(!t3.slots.contains_key(&vip(2)));
    assert_eq!(t3.owner(vip(1)), Some(1));
}

#[test]
fn returning_member_waits_for_the_preemption_delay_but_takes_orphans() {
    let p = pool(4);
    let members = [m(1), m(2)];
    let (t, _) = converge(Table::default(), &p, &members);
    let preempt = Timing::default().preempt_delay.as_millis() as u64;
    let mut back = m(3);
    back.up_since = Some(Millis(NOW.0 - 10));
    let ms = [m(1), m(2), back.clone()];
    let step = run(&t, &p, &ms, NOW);
    assert!(step.table.is_none(), "{:?}", step.moves);
    let later = Millis(NOW.0 - 10 + preempt);
    let mut ms_later = ms.clone();
    for x in &mut ms_later {
        x.last_grant = Some(Millis(later.0 - 1));
    }
    let step = run(&t, &p, &ms_later, Millis(later.0 - 1));
    assert!(step.table.is_none(), "{:?}", step.moves);
    assert_eq!(step.wake_at, Some(later));
    let step = run(&t, &p, &ms_later, later);
    assert_eq!(step.moves.len(), 1);
    assert!(matches!(step.moves[0].to, SlotState::Releasing { to: Some(3), .. }));
    // Alone, a returning member gets the orphans at once.
    let mut dead1 = m(1);
    dead1.live = false;
    dead1.last_grant = Some(Millis(0));
    let mut dead2 = m(2);
    dead2.live = false;
    dead2.last_grant = Some(Millis(0));
    let alone = run(&t, &p, &[dead1, dead2, back], NOW).table.unwrap();
    assert_eq!(counts(&alone), BTreeMap::from([(3, 4)]));
}

fn arb_pref() -> impl Strategy<Value = Preference> {
    prop_oneof![
        Just(Preference::Neutral),
        Just(Preference::Prefer),
        Just(Preference::Avoid)
    ]
}

/// `cases` unless `PROPTEST_CASES` says otherwise; no regression files in the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(200))]

    /// From any start the plan reaches a fixed point quickly; at it, non-avoid members' counts
    /// differ by at most one and a further plan changes nothing.
    #[test]
    fn converges_to_an_even_fixed_point(vips in 0usize..12, prefs in prop::collection::vec(arb_pref(), 1..6)) {
        let p = pool(vips);
        let members: Vec<MemberInfo> = prefs.iter().enumerate().map(|(i, &pref)| {
            let mut x = m(NodeId::try_from(i).unwrap() + 1);
            x.preference = pref;
            x
        }).collect();
        let (t, rounds) = converge(Table::default(), &p, &members);
        prop_assert!(rounds <= 3);
        prop_assert_eq!(t.slots.len(), vips);
        let c = counts(&t);
        prop_assert_eq!(c.values().sum::<usize>(), vips);
        let main: Vec<&MemberInfo> = members.iter().filter(|x| x.preference != Preference::Avoid).collect();
        if !main.is_empty() {
            let loads: Vec<usize> = main.iter().map(|x| c.get(&x.id).copied().unwrap_or(0)).collect();
            let (lo, hi) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "{c:?}");
            for x in &members {
                if x.preference == Preference::Avoid {
                    prop_assert_eq!(c.get(&x.id), None);
                }
            }
            // Prefer members are never below neutral ones.
            for a in &main {
                for b in &main {
                    if a.preference == Preference::Prefer && b.preference == Preference::Neutral {
                        prop_assert!(c.get(&a.id) >= c.get(&b.id), "{c:?}");
                    }
                }
            }
        }
    }

    /// Adding a member to a balanced cluster moves at most ⌈VIPs / members⌉ VIPs.
    #[test]
    fn adding_a_member_moves_at_most_its_share(vips in 1usize..16, n in 1usize..6, prefs in prop::collection::vec(arb_pref(), 6)) {
        let p = pool(vips);
        let mk = |i: usize| {
            let mut x = m(NodeId::try_from(i).unwrap() + 1);
            x.preference = if prefs[i] == Preference::Avoid { Preference::Neutral } else { prefs[i] };
            x
        };
        let before: Vec<MemberInfo> = (0..n).map(mk).collect();
        let (t, _) = converge(Table::default(), &p, &before);
        let after: Vec<MemberInfo> = (0..=n).map(mk).collect();
        let (t2, _) = converge(t.clone(), &p, &after);
        let moved = t.slots.iter().filter(|(v, s)| t2.slots[*v].owner() != s.owner()).count();
        prop_assert!(moved <= vips.div_ceil(n + 1), "moved {moved} of {vips} to {} members", n + 1);
    }

    /// Nothing moves from an eligible holder to a member still in its preemption delay, and a
    /// delayed member gets orphans only when no settled member could take them.
    #[test]
    fn no_preemption_before_the_delay(
        vips in 1usize..10,
        owners in prop::collection::vec(0usize..5, 10),
        states in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()), 4),
    ) {
        let p = pool(vips);
        let preempt = Timing::default().preempt_delay.as_millis() as u64;
        let members: Vec<MemberInfo> = states.iter().enumerate().map(|(i, &(live, healthy, recent, draining))| {
            let mut x = m(NodeId::try_from(i).unwrap() + 1);
            x.live = live;
            x.healthy = healthy;
            x.draining = draining && i > 0;
            if recent {
                x.up_since = Some(Millis(NOW.0 - preempt / 2));
            }
            if !live {
                x.last_grant = Some(Millis(0));
            }
            x
        }).collect();
        let mut table = Table::default();
        for (i, &o) in owners.iter().take(vips).enumerate() {
            if o < 4 {
                table.slots.insert(vip(i + 1), raftgate_vip::Slot {
                    state: SlotState::Owned { owner: NodeId::try_from(o).unwrap() + 1 },
                    since_revision: 0,
                    reason: Reason::Initial,
                    stamp: raftgate_vip::Stamp { leader: 1, term: 4, at: Millis(0) },
                });
            }
        }
        let by_id: BTreeMap<NodeId, &MemberInfo> = members.iter().map(|x| (x.id, x)).collect();
        let eligible = |x: &MemberInfo| x.live && x.healthy && !x.draining;
        let settled = |x: &MemberInfo| eligible(x) && x.up_since == Some(Millis(0));
        let any_settled = members.iter().any(settled);
        let step = run(&table, &p, &members, NOW);
        for mv in &step.moves {
            let target = match mv.to {
                SlotState::Owned { owner } => Some(owner),
                SlotState::Releasing { to, .. } => to,
                SlotState::Unassigned => None,
            };
            let Some(t) = target else { continue };
            let tm = by_id[&t];
            prop_assert!(eligible(tm), "target {t} not eligible: {mv:?}");
            if settled(tm) {
                continue;
            }
            let from = match mv.from {
                SlotState::Owned { owner } | SlotState::Releasing { from: owner, .. } => Some(owner),
                SlotState::Unassigned => None,
            };
            let from_eligible = from.is_some_and(|o| eligible(by_id[&o]));
            prop_assert!(!from_eligible || from == Some(t), "preempted an eligible holder: {mv:?}");
            prop_assert!(!any_settled, "an orphan went to a delayed member while a settled one exists: {mv:?}");
        }
    }
}
