//! Member-side decisions: fencing by lease and revision, handover to quiet, grace, announcements, readiness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use raftgate_vip::Action;
use raftgate_vip::Decision;
use raftgate_vip::Holdings;
use raftgate_vip::Lease;
use raftgate_vip::Millis;
use raftgate_vip::Mode;
use raftgate_vip::NodeView;
use raftgate_vip::Pool;
use raftgate_vip::Reason;
use raftgate_vip::Slot;
use raftgate_vip::SlotState;
use raftgate_vip::Stamp;
use raftgate_vip::Table;
use raftgate_vip::Timing;
use raftgate_vip::VipSpec;
use raftgate_vip::decide;

const ME: u64 = 2;

fn vip(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

fn pool(n: u8) -> Pool {
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

fn table(revision: u64, slots: &[(u8, SlotState)]) -> Table {
    let mut t = Table {
        revision,
        ..Table::default()
    };
    for &(i, state) in slots {
        t.slots.insert(
            vip(i),
            Slot {
                state,
                since_revision: revision,
                reason: Reason::Initial,
                stamp: Stamp {
                    leader: 1,
                    term: 1,
                    at: Millis(0),
                },
            },
        );
    }
    t
}

fn owned(owner: u64) -> SlotState {
    SlotState::Owned { owner }
}

fn lease(anchor: u64, revision: u64) -> Option<Lease> {
    Some(Lease {
        anchor: Millis(anchor),
        revision,
    })
}

fn run(t: &Table, p: &Pool, lease: Option<Lease>, ready: bool, held: &Holdings, now: u64) -> Decision {
    let view = NodeView {
        id: ME,
        table: t,
        pool: p,
        lease,
        ready,
        held,
    };
    // The expected instants below are for a 400 ms lease (the default is 300 ms).
    let timing = Timing {
        lease: Duration::from_millis(400),
        ..Timing::default()
    };
    decide(&view, &timing, Millis(now))
}

#[test]
fn holds_only_under_a_usable_lease() {
    let p = pool(2);
    let t = table(5, &[(1, owned(ME)), (2, owned(3))]);
    let none = Holdings::new();
    // No lease: nothing.
    assert!(run(&t, &p, None, true, &none, 1000).held.is_empty());
    // A lease whose grant names a revision not yet applied: nothing.
    assert!(run(&t, &p, lease(1000, 6), true, &none, 1000).held.is_empty());
    // A usable lease: the VIP it owns, active, announced once.
    let d = run(&t, &p, lease(1000, 5), true, &none, 1010);
    assert_eq!(
        d.actions,
        vec![Action::Activate {
            vip: vip(1),
            from_quiet: false
        }]
    );
    assert_eq!(d.held.len(), 1);
    assert_eq!(d.lease_remaining, Some(Duration::from_millis(340)));
    assert_eq!(d.valid_lft_secs, Some(1));
    // The next thing due is the second announcement of the burst.
    assert_eq!(d.wake_at, Some(Millis(1110)));
    // Still held just before anchor + lease - guard, released at it.
    assert_eq!(run(&t, &p, lease(1000, 5), true, &d.held, 1349).held.len(), 1);
    let gone = run(&t, &p, lease(1000, 5), true, &d.held, 1350);
    assert!(gone.held.is_empty());
    assert_eq!(gone.actions, vec![Action::Release { vip: vip(1) }]);
    assert_eq!(gone.wake_at, None);
}

#[test]
fn announcement_burst_then_periodic() {
    let p = pool(1);
    let t = table(1, &[(1, owned(ME))]);
    let mut held = Holdings::new();
    let mut sent = Vec::new();
    let mut now = 0;
    while now < 25_000 {
        // Renew continuously.
        let d = run(&t, &p, lease(now, 1), true, &held, now);
        for a in &d.actions {
            if matches!(a, Action::Activate { .. } | Action::Announce { .. }) {
                sent.push(now);
            }
        }
        held = d.held;
        now += 50;
    }
    assert_eq!(sent, vec![0, 100, 200, 10_200, 20_200]);
}

#[test]
fn handover_goes_quiet_then_keeps_the_address_for_grace() {
    let p = pool(1);
    let t1 = table(1, &[(1, owned(ME))]);
    let d = run(&t1, &p, lease(0, 1), true, &Holdings::new(), 0);
    // Releasing from me: quiet, not released.
    let t2 = table(2, &[(1, SlotState::Releasing { from: ME, to: Some(3) })]);
    let d = run(&t2, &p, lease(100, 2), true, &d.held, 100);
    assert_eq!(d.actions, vec![Action::Quiesce { vip: vip(1) }]);
    assert_eq!(d.held[&vip(1)].mode, Mode::Quiet);
    // The new owner took it: the quiet tail stays until grace ends (10 s), lease permitting.
    let t3 = table(3, &[(1, owned(3))]);
    let d = run(&t3, &p, lease(5_000, 3), true, &d.held, 5_000);
    assert_eq!(d.held[&vip(1)].mode, Mode::Quiet);
    assert!(d.actions.is_empty());
    assert_eq!(d.wake_at, Some(Millis(5_350)));
    let d = run(&t3, &p, lease(10_050, 3), true, &d.held, 10_099);
    assert_eq!(d.held.len(), 1);
    let d = run(&t3, &p, lease(10_050, 3), true, &d.held, 10_100);
    assert_eq!(d.actions, vec![Action::Release { vip: vip(1) }]);
    // A quiet hold also ends with the lease.
    let t2b = table(2, &[(1, SlotState::Releasing { from: ME, to: None })]);
    let q = run(
        &t2b,
        &p,
        lease(0, 2),
        true,
        &run(&t1, &p, lease(0, 1), true, &Holdings::new(), 0).held,
        0,
    );
    assert!(run(&t2b, &p, lease(0, 2), true, &q.held, 350).held.is_empty());
}

#[test]
fn never_quiet_from_nothing_and_back_to_active_from_quiet() {
    let p = pool(1);
    let rel = table(2, &[(1, SlotState::Releasing { from: ME, to: Some(3) })]);
    assert!(run(&rel, &p, lease(0, 2), true, &Holdings::new(), 0).held.is_empty());
    let d = run(&table(1, &[(1, owned(ME))]), &p, lease(0, 1), true, &Holdings::new(), 0);
    let q = run(&rel, &p, lease(0, 2), true, &d.held, 10);
    // The handover is called off: active again, from quiet.
    let back = run(&table(3, &[(1, owned(ME))]), &p, lease(20, 3), true, &q.held, 20);
    assert_eq!(
        back.actions,
        vec![Action::Activate {
            vip: vip(1),
            from_quiet: true
        }]
    );
    // Taken away without a handover (fenced): released at once, never quiet.
    let fenced = run(&table(2, &[(1, owned(3))]), &p, lease(0, 2), true, &d.held, 10);
    assert_eq!(fenced.actions, vec![Action::Release { vip: vip(1) }]);
}

#[test]
fn not_ready_or_unknown_holds_nothing() {
    let p = pool(1);
    let t = table(
        1,
        &[
            (1, owned(ME)),
            (9, owned(ME)),
            (2, SlotState::Releasing { from: 3, to: Some(ME) }),
        ],
    );
    let d = run(&t, &p, lease(0, 1), true, &Holdings::new(), 0);
    assert_eq!(d.held.keys().copied().collect::<Vec<_>>(), vec![vip(1)]);
    assert_eq!(d.unknown, vec![vip(9)]);
    assert_eq!(d.incoming, vec![vip(2)]);
    let d = run(&t, &p, lease(0, 1), false, &d.held, 10);
    assert!(d.held.is_empty());
    assert_eq!(d.actions, vec![Action::Release { vip: vip(1) }]);
}

#[test]
fn releases_come_before_activations() {
    let p = pool(3);
    let t1 = table(1, &[(1, owned(ME)), (2, owned(ME))]);
    let d = run(&t1, &p, lease(0, 1), true, &Holdings::new(), 0);
    let t2 = table(
        2,
        &[
            (1, SlotState::Releasing { from: ME, to: Some(3) }),
            (2, owned(3)),
            (3, owned(ME)),
        ],
    );
    let d = run(&t2, &p, lease(10, 2), true, &d.held, 10);
    assert_eq!(
        d.actions,
        vec![
            Action::Quiesce { vip: vip(1) },
            Action::Release { vip: vip(2) },
            Action::Activate {
                vip: vip(3),
                from_quiet: false
            },
        ]
    );
}
