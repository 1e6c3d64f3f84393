//! The member's decision: from the applied table, its lease and `now`, which VIPs to announce, keep silently or drop.
//!
//! # Active and quiet
//!
//! A node *holds* a VIP either **active** — the address is on the VIP's interface, the node
//! answers ARP/NDP for it and announces it (gratuitous ARP, unsolicited NA) — or **quiet** — the
//! address is on `lo` only, with `arp_ignore=1` and `arp_announce=2` on the VIP interface (IPv6:
//! neighbour solicitations are answered only for addresses on the receiving interface), so the
//! kernel still accepts packets for it and replies from it, but never answers ARP/NDP for it nor
//! announces it. *Owner* means active holder; "no VIP ever has two owners" means never two
//! active holders at once. A quiet holder draws no traffic to itself; it only serves packets
//! that still reach it because a neighbour's cache has not moved yet.
//!
//! # Handover (make-before-break, and why it is "quiet first")
//!
//! An L2 move cannot carry established connections: once the neighbours (usually the router)
//! update their ARP entry, every packet for the VIP goes to the new owner, whose kernel answers
//! packets of flows it does not know with a RST. Removing the address on the old owner does not
//! keep them either: Linux keeps the sockets, but packets to a non-local address are dropped and
//! sends from it fail. So "both announce during handover" would only make neighbours flip
//! between the two MACs. The model is instead:
//!
//! 1. The leader commits `Releasing { from: old, to: new }`. The old owner goes **quiet** (adds
//!    the address on `lo`, then removes it from the interface) and reports that table applied.
//! 2. The leader commits `Owned { owner: new }`. The new owner adds the address and announces
//!    (a burst, then periodically), so neighbours move to it in one step.
//! 3. The old owner keeps the quiet address for `grace` and finishes in-flight requests of the
//!    flows that still reach it; new connections land on the new owner as soon as neighbours move.
//!
//! Between 1 and 2 (one report and one commit, ~100–200 ms) the VIP has no announcer, but
//! neighbours' entries still point at the old owner, which keeps accepting: no gap for traffic.
//!
//! # Fencing
//!
//! Every hold, active or quiet, needs a usable lease ([`crate::lease::Lease::usable`]); without
//! one, or when the node cannot serve (`ready` false), everything is released at once.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::config::Pool;
use crate::config::Timing;
use crate::lease::Lease;
use crate::table::NodeId;
use crate::table::SlotState;
use crate::table::Table;
use crate::time::Millis;
use crate::time::ceil_ms;

/// How a VIP is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// On the interface, answering ARP/NDP and announced.
    Active,
    /// On `lo` only: accepted and served, never answered for or announced.
    Quiet,
}

/// One VIP this node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    pub mode: Mode,
    /// When it entered `mode`.
    pub since: Millis,
    /// Announcements sent since it became active.
    pub announcements: u32,
    pub last_announced: Option<Millis>,
}

/// What this node holds, by VIP. The shell keeps the last [`Decision::held`] and passes it back.
pub type Holdings = BTreeMap<IpAddr, Hold>;

/// This node's view, all on its own clock.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    pub id: NodeId,
    /// The table as this node applied it.
    pub table: &'a Table,
    /// This node's pool config (a VIP it has no spec for cannot be added).
    pub pool: &'a Pool,
    pub lease: Option<Lease>,
    /// Listeners bound, able to serve.
    pub ready: bool,
    pub held: &'a Holdings,
}

/// A step for the shell, in the order given: releases and quiescing first, then activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Remove the address, wherever it is (interface or `lo`).
    Release { vip: IpAddr },
    /// Add the address on `lo`, then remove it from the interface.
    Quiesce { vip: IpAddr },
    /// Add the address on the interface (if `from_quiet`, then remove it from `lo`) and send
    /// the first announcement.
    Activate { vip: IpAddr, from_quiet: bool },
    /// Send one announcement (gratuitous ARP / unsolicited NA).
    Announce { vip: IpAddr },
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// What is held after the actions; pass it back as [`NodeView::held`] next time.
    pub held: Holdings,
    pub actions: Vec<Action>,
    /// How long the holds may last without a renewal (`None` when nothing is held).
    pub lease_remaining: Option<Duration>,
    /// `valid_lft`/`preferred_lft` in seconds to set (and refresh) on every held address: the
    /// kernel counts whole seconds, so this is ⌈remaining⌉ ≥ 1 — a backstop that removes the
    /// address ~1–2 s after a crashed process stopped renewing, not the fence itself.
    pub valid_lft_secs: Option<u32>,
    /// Call [`decide`] again by then even if nothing else happens (the lease runs out, a grace
    /// period ends, an announcement is due). Also call it after every renewal, applied table
    /// and readiness change.
    pub wake_at: Option<Millis>,
    /// VIPs this node is about to receive (a handover to it is under way).
    pub incoming: Vec<IpAddr>,
    /// VIPs the table gives this node that its pool config does not know (not held).
    pub unknown: Vec<IpAddr>,
}

/// Decides what to hold at `now`.
pub fn decide(view: &NodeView<'_>, timing: &Timing, now: Millis) -> Decision {
    let me = view.id;
    let usable = view.lease.filter(|l| l.usable(view.table.revision, timing, now));
    let grace = timing.grace_ms();
    let interval = ceil_ms(timing.announce_interval);
    let reannounce = ceil_ms(timing.reannounce);
    let vips: BTreeSet<IpAddr> = view.table.slots.keys().chain(view.held.keys()).copied().collect();
    let mut out = Decision::default();
    let (mut releases, mut activations, mut announces) = (Vec::new(), Vec::new(), Vec::new());
    for vip in vips {
        let prev = view.held.get(&vip).copied();
        let state = view.table.slots.get(&vip).map(|s| s.state);
        let known = view.pool.contains(vip);
        match state {
            Some(SlotState::Owned { owner }) if owner == me && !known => out.unknown.push(vip),
            Some(SlotState::Releasing { to: Some(to), .. }) if to == me => out.incoming.push(vip),
            _ => {}
        }
        let want = if usable.is_none() || !known || !view.ready {
            None
        } else {
            match state {
                Some(SlotState::Owned { owner }) if owner == me => Some(Mode::Active),
                _ => {
                    let releasing = matches!(state, Some(SlotState::Releasing { from, .. }) if from == me);
                    match prev {
                        Some(h) if h.mode == Mode::Active && releasing && grace > 0 => Some(Mode::Quiet),
                        Some(h) if h.mode == Mode::Quiet && now < h.since.plus(grace) => Some(Mode::Quiet),
                        _ => None,
                    }
                }
            }
        };
        let activated = Hold {
            mode: Mode::Active,
            since: now,
            announcements: 1,
            last_announced: Some(now),
        };
        let hold = match (prev, want) {
            (None, None) => None,
            (Some(_), None) => {
                releases.push(Action::Release { vip });
                None
            }
            (None | Some(Hold { mode: Mode::Quiet, .. }), Some(Mode::Active)) => {
                let from_quiet = prev.is_some();
                activations.push(Action::Activate { vip, from_quiet });
                Some(activated)
            }
            (Some(h @ Hold { mode: Mode::Active, .. }), Some(Mode::Active)) => {
                let next = next_announce(&h, timing.announce_repeat, interval, reannounce);
                if next.is_some_and(|at| now >= at) {
                    announces.push(Action::Announce { vip });
                    Some(Hold {
                        announcements: h.announcements.saturating_add(1),
                        last_announced: Some(now),
                        ..h
                    })
                } else {
                    Some(h)
                }
            }
            (Some(Hold { mode: Mode::Active, .. }), Some(Mode::Quiet)) => {
                releases.push(Action::Quiesce { vip });
                Some(Hold {
                    mode: Mode::Quiet,
                    since: now,
                    announcements: 0,
                    last_announced: None,
                })
            }
            (Some(h @ Hold { mode: Mode::Quiet, .. }), Some(Mode::Quiet)) => Some(h),
            // A quiet hold is only ever entered from an active one.
            (None, Some(Mode::Quiet)) => None,
        };
        if let Some(h) = hold {
            out.held.insert(vip, h);
        }
    }
    out.actions = releases;
    out.actions.append(&mut activations);
    out.actions.append(&mut announces);
    if let (Some(lease), false) = (usable, out.held.is_empty()) {
        let until = lease.hold_until(timing);
        let remaining = until.since(now);
        out.lease_remaining = Some(Duration::from_millis(remaining));
        out.valid_lft_secs = Some(u32::try_from(remaining.div_ceil(1000).max(1)).unwrap_or(u32::MAX));
        let mut wake = until;
        for h in out.held.values() {
            let at = match h.mode {
                Mode::Quiet => Some(h.since.plus(grace)),
                Mode::Active => next_announce(h, timing.announce_repeat, interval, reannounce),
            };
            if let Some(at) = at {
                wake = wake.min(at);
            }
        }
        out.wake_at = Some(wake);
    }
    out
}

fn next_announce(h: &Hold, repeat: u32, interval: u64, reannounce: u64) -> Option<Millis> {
    let last = h.last_announced?;
    Some(if h.announcements < repeat {
        last.plus(interval)
    } else {
        last.plus(reannounce)
    })
}
