//! Random interleavings over a simulated 3–5 node cluster: never two owners, holds only under a lease, convergence, stability; and the checker catching broken rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftgate_vip::Mode;
use raftgate_vip::NodeId;
use raftgate_vip::Preference;
use raftgate_vip::Reason;
use raftgate_vip::Timing;
use sim::Fault;
use sim::Knobs;
use sim::Scenario;
use sim::Sim;
use sim::vip;

fn arb_fault() -> impl Strategy<Value = Fault> {
    let i = 0usize..5;
    prop_oneof![
        3 => i.clone().prop_map(Fault::Crash),
        3 => i.clone().prop_map(Fault::Restart),
        3 => i.clone().prop_map(Fault::Isolate),
        3 => i.clone().prop_map(Fault::Heal),
        1 => Just(Fault::StepDown),
        2 => (i.clone(), any::<bool>()).prop_map(|(i, b)| Fault::Ready(i, b)),
        2 => (i.clone(), any::<bool>()).prop_map(|(i, b)| Fault::Drain(i, b)),
        2 => (i.clone(), any::<bool>()).prop_map(|(i, b)| Fault::Mute(i, b)),
        1 => (0u8..40).prop_map(Fault::Loss),
        2 => (i, prop_oneof![0u16..30, 200u16..1500]).prop_map(|(i, ms)| Fault::ApplyLag(i, ms)),
        1 => (100u16..800).prop_map(Fault::SlowNextCommit),
    ]
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    // Clock rates anywhere within the documented margin (1 %), often at its edges.
    let rate = prop_oneof![Just(0.99f64), Just(1.01f64), 0.99f64..1.01];
    let pref = prop_oneof![6 => Just(Preference::Neutral), 1 => Just(Preference::Prefer), 1 => Just(Preference::Avoid)];
    (
        3usize..=5,
        1usize..=6,
        any::<u64>(),
        prop::collection::vec(rate, 5),
        prop::collection::vec(pref, 5),
        prop::collection::vec((0u64..500, arb_fault()), 0..16),
    )
        .prop_map(|(nodes, vips, seed, rates, prefs, faults)| Scenario {
            nodes,
            vips,
            seed,
            rates,
            prefs,
            faults,
        })
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
    #![proptest_config(config(256))]

    /// Under any interleaving of crashes, partitions, leader changes, readiness flips, drains,
    /// message loss and apply lag, with clocks drifting within the margin: no VIP is ever
    /// announced by two nodes, no node holds a VIP outside its lease; once faults stop, every VIP
    /// has exactly one owner, the spread is even, and nothing moves any more.
    #[test]
    fn any_interleaving_is_safe_then_converges(sc in arb_scenario()) {
        let mut s = Sim::new(&sc, Knobs::fast());
        s.run(1_000);
        s.run_faults(&sc.faults);
        prop_assert!(s.violations.is_empty(), "{:?}", s.violations);
        s.heal_all();
        s.run(4_000);
        prop_assert!(s.violations.is_empty(), "{:?}", s.violations);
        if let Err(e) = s.converged() {
            return Err(TestCaseError::fail(format!("not converged: {e}")));
        }
        let committed = s.committed();
        s.run(1_500);
        prop_assert_eq!(s.committed(), committed, "a healthy stable cluster moved VIPs");
        prop_assert!(s.violations.is_empty(), "{:?}", s.violations);
    }
}

/// The random runs do exercise every kind of move (checked on a fixed sample of scenarios).
#[test]
fn random_runs_exercise_every_kind_of_move() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut total: BTreeMap<Reason, usize> = BTreeMap::new();
    for _ in 0..24 {
        let sc = arb_scenario().new_tree(&mut runner).unwrap().current();
        let mut s = Sim::new(&sc, Knobs::fast());
        s.run(1_000);
        s.run_faults(&sc.faults);
        s.heal_all();
        s.run(4_000);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        for (r, n) in &s.reasons {
            *total.entry(*r).or_default() += n;
        }
    }
    for r in [
        Reason::Initial,
        Reason::OwnerDown,
        Reason::OwnerUnhealthy,
        Reason::Drain,
        Reason::Rebalance,
    ] {
        assert!(total.get(&r).copied().unwrap_or(0) > 0, "no {r} move in {total:?}");
    }
}

fn scenario(nodes: usize, vips: usize, seed: u64) -> Scenario {
    Scenario {
        nodes,
        vips,
        seed,
        rates: vec![1.0; nodes],
        prefs: vec![Preference::Neutral; nodes],
        faults: Vec::new(),
    }
}

/// A VIP owned by a node that is not the leader, after warm-up.
fn follower_owned(s: &Sim, vips: usize) -> (std::net::IpAddr, NodeId) {
    let leader = s.leader_node().unwrap();
    (1..=vips)
        .map(vip)
        .find_map(|v| {
            let owners = s.active()[&v].clone();
            (owners.len() == 1 && owners[0] != leader).then(|| (v, owners[0]))
        })
        .expect("some VIP is owned by a follower")
}

fn index(id: NodeId) -> usize {
    usize::try_from(id - 1).unwrap()
}

#[test]
fn owner_crash_fails_over_in_under_a_second() {
    let mut worst = 0;
    for seed in 0..20 {
        let mut sc = scenario(3, 3, seed);
        // Clocks at the edges of the margin: the leader's slow makes its fence longest.
        sc.rates = vec![0.99, 0.99, 0.99];
        let mut knobs = Knobs::fast();
        knobs.slow_commit_pct = 0;
        knobs.late_pct = 0;
        let mut s = Sim::new(&sc, knobs);
        s.run(2_000 + seed * 7);
        let (v, owner) = follower_owned(&s, 3);
        s.fault(Fault::Crash(index(owner)));
        let took = s.time_until_taken_over(v, owner, 2_000).expect("taken over");
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        worst = worst.max(took);
    }
    println!("owner crash: worst failover over 20 runs {worst} ms");
    // fence_wait (410 leader ms ≈ 414 real) + report delay (≤ 30 ms) + commit (≤ 20 ms) + apply lag (≤ 20 ms).
    assert!(worst < 490, "worst failover {worst} ms");
    assert!(worst > 300, "failover {worst} ms is faster than the fence allows");
}

#[test]
fn partitioned_owner_stops_before_the_new_one_starts() {
    for seed in 0..20 {
        let mut s = Sim::new(&scenario(5, 4, seed), Knobs::fast());
        s.run(2_000);
        let (v, owner) = follower_owned(&s, 4);
        s.fault(Fault::Isolate(index(owner)));
        let took = s.time_until_taken_over(v, owner, 2_000).expect("taken over");
        assert!(took < 1_000);
        assert_eq!(s.mode(owner, v), None, "the isolated owner dropped it by then");
        s.run(500);
        assert!(s.active()[&vip(1)].len() <= 1);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
    }
}

#[test]
fn drain_goes_quiet_first_then_the_new_owner_announces() {
    let mut s = Sim::new(&scenario(3, 3, 7), Knobs::fast());
    s.run(2_000);
    let (v, owner) = follower_owned(&s, 3);
    s.fault(Fault::Drain(index(owner), true));
    let (mut quiet_alone, mut quiet_total) = (0, 0);
    for _ in 0..2_000 {
        s.run(1);
        let others = s.active()[&v].iter().any(|&x| x != owner);
        match s.mode(owner, v) {
            Some(Mode::Quiet) => {
                quiet_total += 1;
                quiet_alone += u32::from(!others);
            }
            Some(Mode::Active) => assert!(!others),
            None => {}
        }
    }
    // Quiet first; the new owner announces one report + commit + apply later (< 200 ms).
    assert!(
        (1..200).contains(&quiet_alone),
        "quiet before the new owner: {quiet_alone} ms"
    );
    // The quiet hold lasts the grace period (300 ms here), then the address goes.
    assert!((299..=302).contains(&quiet_total), "quiet for {quiet_total} ms");
    assert_eq!(s.mode(owner, v), None);
    assert_eq!(s.active()[&v].len(), 1);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[test]
fn leader_failure_moves_its_vips_after_election_and_fence() {
    let mut knobs = Knobs::fast();
    knobs.slow_commit_pct = 0;
    knobs.late_pct = 0;
    let mut s = Sim::new(&scenario(3, 3, 11), knobs);
    s.run(2_000);
    let leader = s.leader_node().unwrap();
    let v = (1..=3).map(vip).find(|&v| s.active()[&v] == vec![leader]).unwrap();
    s.fault(Fault::Crash(index(leader)));
    let took = s.time_until_taken_over(v, leader, 3_000).expect("taken over");
    println!("leader crash: its VIP taken over after {took} ms");
    // Election (50–300 ms in the simulation) + fence (410 ms) + commit.
    assert!((460..800).contains(&took), "{took} ms");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[test]
fn a_healthy_cluster_is_quiet() {
    let mut sc = scenario(5, 7, 3);
    sc.rates = vec![0.99, 1.01, 1.0, 0.995, 1.005];
    let mut s = Sim::new(&sc, Knobs::fast());
    s.run(2_000);
    s.converged().unwrap();
    let committed = s.committed();
    s.run(10_000);
    assert_eq!(s.committed(), committed);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

// The checker must be able to fail: each broken rule below produces two owners.

#[test]
fn checker_catches_a_leader_that_fences_too_early() {
    let mut knobs = Knobs::fast();
    // The leader believes leases last 200 ms; members hold for 350 ms.
    knobs.leader_timing = Timing {
        lease: std::time::Duration::from_millis(200),
        refresh: std::time::Duration::from_millis(50),
        ..knobs.leader_timing
    };
    let mut s = Sim::new(&scenario(3, 3, 1), knobs);
    s.run(2_000);
    let (_, owner) = follower_owned(&s, 3);
    s.fault(Fault::Isolate(index(owner)));
    s.run(1_000);
    assert!(
        !s.violations.is_empty(),
        "a fence shorter than the lease must produce two owners"
    );
}

#[test]
fn checker_catches_grants_without_a_revision() {
    let run = |zero_grant_revision| {
        let mut knobs = Knobs::fast();
        knobs.zero_grant_revision = zero_grant_revision;
        let mut s = Sim::new(&scenario(3, 3, 2), knobs);
        s.run(2_000);
        let (_, owner) = follower_owned(&s, 3);
        // The owner keeps renewing but applies tables 3 s late; then it is drained.
        s.fault(Fault::ApplyLag(index(owner), 3_000));
        s.fault(Fault::Drain(index(owner), true));
        s.run(2_000);
        s.violations
    };
    assert!(run(false).is_empty());
    assert!(
        !run(true).is_empty(),
        "a lease usable with a stale table must produce two owners"
    );
}

#[test]
fn checker_catches_anchoring_at_receipt() {
    let run = |anchor_at_receipt| {
        let mut knobs = Knobs::fast();
        knobs.anchor_at_receipt = anchor_at_receipt;
        // Slow answers: the lease is still continuous (a 200 ms round trip within a 350 ms hold).
        knobs.grant_delay_ms = Some(200);
        let mut s = Sim::new(&scenario(3, 3, 4), knobs);
        s.run(2_000);
        let (_, owner) = follower_owned(&s, 3);
        // The owner's reports stop reaching the leader; answers in flight still reach it.
        s.fault(Fault::Mute(index(owner), true));
        s.run(1_500);
        s.violations
    };
    assert!(run(false).is_empty(), "{:?}", run(false));
    assert!(!run(true).is_empty(), "a lease anchored at receipt outlasts the fence");
}

/// The tightest squeeze the assumptions allow: the leader's clock 1 % fast, the owner's 1 % slow,
/// no message delay, 2 ms commits, no apply lag, and the owner's shell using its whole reaction
/// budget. The fence still holds (a fence without the drift factor fails here).
#[test]
fn fence_holds_at_the_edges_of_the_margin() {
    for seed in 0..10 {
        let mut knobs = Knobs::fast();
        knobs.max_delay_ms = 0;
        knobs.late_pct = 0;
        knobs.commit_ms = Some(2);
        knobs.always_slow_release = true;
        let mut s = Sim::new(&scenario(3, 3, seed), knobs);
        for i in 0..3 {
            s.fault(Fault::ApplyLag(i, 0));
        }
        s.run(2_000);
        let leader = s.leader_node().unwrap();
        let (_, owner) = follower_owned(&s, 3);
        s.set_rate(leader, 1.01);
        s.set_rate(owner, 0.99);
        s.fault(Fault::Mute(index(owner), true));
        s.run(1_000);
        assert!(s.violations.is_empty(), "seed {seed}: {:?}", s.violations);
    }
}

/// A drained owner that applies tables late, while the handover's commit is slow and the owner
/// goes mute before it lands: grants made between planning and commit must already carry the
/// handover's revision, or the owner keeps announcing on its stale table past the fence.
#[test]
fn drain_of_a_lagging_owner_during_a_slow_commit_is_safe() {
    for seed in 0..10 {
        let mut s = Sim::new(&scenario(3, 3, seed), Knobs::fast());
        s.run(2_000);
        let (v, owner) = follower_owned(&s, 3);
        s.fault(Fault::ApplyLag(index(owner), 3_000));
        s.fault(Fault::SlowNextCommit(300));
        s.fault(Fault::Drain(index(owner), true));
        s.run(250);
        s.fault(Fault::Mute(index(owner), true));
        s.run(2_000);
        assert!(s.violations.is_empty(), "seed {seed}: {:?}", s.violations);
        assert_eq!(s.active()[&v].len(), 1, "the handover completed");
    }
}

/// A handover planned by one leader, completed by the next: the new leader must not read the
/// old leader's stamp on its own clock, and must still complete it though the old owner keeps
/// renewing without ever acknowledging.
#[test]
fn handover_across_a_leader_change() {
    for seed in 0..20 {
        let mut s = Sim::new(&scenario(3, 3, seed), Knobs::fast());
        s.run(2_000);
        let (v, owner) = follower_owned(&s, 3);
        s.fault(Fault::ApplyLag(index(owner), 60_000));
        s.fault(Fault::Drain(index(owner), true));
        s.run(25);
        s.fault(Fault::StepDown);
        s.run(3_000);
        assert!(s.violations.is_empty(), "seed {seed}: {:?}", s.violations);
        let owners = s.active()[&v].clone();
        assert!(owners.len() == 1 && owners[0] != owner, "seed {seed}: {owners:?}");
    }
}

#[test]
fn checker_catches_clock_drift_beyond_the_margin() {
    let run = |rate| {
        let mut knobs = Knobs::fast();
        knobs.max_delay_ms = 0;
        knobs.late_pct = 0;
        let mut s = Sim::new(&scenario(3, 3, 5), knobs);
        s.run(2_000);
        let (_, owner) = follower_owned(&s, 3);
        s.set_rate(owner, rate);
        // Its reports stop reaching the leader: its last lease is anchored at the leader's last grant.
        s.fault(Fault::Mute(index(owner), true));
        s.run(1_000);
        s.violations
    };
    assert!(run(0.99).is_empty());
    assert!(!run(0.75).is_empty(), "an owner clock 25 % slow outlasts the fence");
}
