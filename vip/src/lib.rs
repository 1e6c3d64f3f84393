//! Floating IP ownership: the pure lease and assignment core (no I/O, no clock; time is passed in).
//!
//! The leader decides who owns each VIP ([`assign::plan`], driven by [`leader::LeaderBook`]) and
//! commits the [`table::Table`] through Raft; every member decides from the table it applied and
//! its lease what to hold ([`hold::decide`]). The netlink/ARP shell that carries those decisions
//! out on a Linux host is [`shell`].
//!
//! # The lease
//!
//! A member renews by a round trip it starts ([`lease`]): it reads its monotonic clock
//! (`sent_at`), sends a [`leader::Report`], and a leader that is *leading* — Raft leader lease
//! valid, everything before its term applied — answers with a [`lease::Grant`] carrying a table
//! revision. The member's lease is anchored at `sent_at` and lets it hold VIPs while
//! `now < sent_at + lease − release_guard` on its own clock and its applied table is at least
//! the grant's revision. The leader is a member like the others: it grants itself each tick,
//! anchored at its last quorum acknowledgement, so it too drops every VIP once it has gone a
//! lease without a quorum.
//!
//! # Why two owners cannot happen
//!
//! Assumptions: (A1) every node's monotonic clock runs at a rate within ±ρ of real time
//! (`drift_ppm`; 1 % by default, against ~50 ppm crystals and NTP's 500 ppm slew limit); (A2) only
//! a leading leader grants, and a new leader begins ([`assign::Leadership::since`]) only after
//! every earlier leader's last grant. A leader grants only while a quorum acknowledged it within
//! the raft crate's leader lease (`election_timeout_max / 2`, derived only from freshly
//! published metrics) and while openraft itself still calls it leader. A new leader needs a
//! quorum of votes: the followers among them refuse votes for `election_timeout_max` after a
//! heartbeat, longer than that lease; the old leader's own vote (free once it has led that long,
//! which the leadership hand-off on shutdown uses) makes it a follower at once, before the new
//! leader has even collected its votes, and a leader handing over stops granting first. So
//! leaderships do not overlap; (A3) Raft commits one sequence of tables; (A4) the shell puts each
//! decision into effect within `release_guard` of the instant it is due (it sets a timer for
//! [`hold::Decision::wake_at`]) and reports an applied revision only after the holdings for it
//! are in effect.
//!
//! Claim: if node X becomes owner (active holder) of VIP v from committed revision r_x, no other
//! node is owner of v from then on until the table moves v again. By induction over the commits
//! that give v an owner, consider the previous owner O of v (at revision r_o < r_x). The leader
//! that planned r_x did so only after one of:
//!
//! 1. **O acknowledged**: v was `Releasing { from: O }` since revision r_s and O reported an
//!    applied revision ≥ r_s. O's applied revision never decreases, no table from r_s on makes O
//!    owner until a later move, and by (A4) O had already stopped announcing. O is not owner.
//! 2. **O's leases ran out**: the leader's clock passed `fence_wait` after its last grant to O
//!    (or after its own leadership began, for grants of earlier leaders, by A2), or after it
//!    planned the `Releasing` (after its leadership began, if an earlier leader planned it).
//!    Every grant made after that point carries a revision ≥ r_s (a leader stamps grants with
//!    the highest revision it planned or had applied when it began), so O can use it only with
//!    a table in which O is not owner. Every earlier
//!    grant was answered at real time G from a report sent at A ≤ G, and O stops at A +
//!    lease / (1 − ρ) in real time at the latest (A1, A4), while `fence_wait` ≥ lease (1 + ρ) /
//!    (1 − ρ) of the leader's clock is at least that long in real time
//!    ([`config::Timing::fence_wait_ms`]).
//!
//! Nodes that owned v before O were excluded the same way when v moved to O, and X holds v only
//! after applying r_x, which is committed after the plan. A quiet holder ([`hold`]) never answers
//! ARP/NDP nor announces, so it is not an owner; and no node holds anything, active or quiet,
//! without a usable lease.
//!
//! # What the node shell must do
//!
//! - Read time as [`time::Millis::from_elapsed`] of one `Instant` origin per process
//!   (CLOCK_MONOTONIC). Anchor the lease at the *send* time of the report.
//! - Store the table under one Raft key; apply proposals with [`table::Table::apply`], which
//!   ignores any that does not follow the applied revision.
//! - On the leader: one [`leader::LeaderBook`] per leadership, created after
//!   `ensure_linearizable`, dropped the moment `leading` turns false; no grants otherwise.
//! - Call [`hold::decide`] at `wake_at`, after each renewal, applied table and readiness change;
//!   run releases and quiescing before activations; set `valid_lft`/`preferred_lft` to
//!   [`hold::Decision::valid_lft_secs`] on every held address (a crash backstop: the kernel
//!   counts seconds); report right after applying a table so handovers complete quickly.
//! - On the VIP interfaces: `arp_ignore=1` and `arp_announce=2` (quiet holds live on `lo`),
//!   `promote_secondaries=1` (removing a VIP must not drop the others), IPv6 addresses `nodad`.
//! - Remove every pool address at startup and in the unit's `ExecStopPost`: a process that
//!   crashed leaves its addresses in the kernel, which would keep answering ARP for them until
//!   `valid_lft` runs out. A node stalled as a whole (SIGSTOP, VM pause) beyond the guard is
//!   outside (A4); its kernel lifetime bounds the overlap to ~2 s.

pub mod assign;
pub mod config;
pub mod error;
pub mod hold;
pub mod leader;
pub mod lease;
pub mod shell;
pub mod status;
pub mod table;
pub mod time;

pub use assign::Leadership;
pub use assign::MemberInfo;
pub use assign::Move;
pub use assign::Plan;
pub use assign::PlanInput;
pub use assign::Preference;
pub use assign::plan;
pub use config::LocalAddr;
pub use config::Pool;
pub use config::Timing;
pub use config::VipSpec;
pub use config::choose_interface;
pub use error::ConfigError;
pub use error::InterfaceError;
pub use error::StaleTable;
pub use hold::Action;
pub use hold::Decision;
pub use hold::Hold;
pub use hold::Holdings;
pub use hold::Mode;
pub use hold::NodeView;
pub use hold::decide;
pub use leader::LeaderBook;
pub use leader::MemberConfig;
pub use leader::Report;
pub use leader::VersionHistory;
pub use lease::Grant;
pub use lease::Lease;
pub use lease::Leases;
pub use status::VipStatus;
pub use status::status;
pub use table::NodeId;
pub use table::Reason;
pub use table::Slot;
pub use table::SlotState;
pub use table::Stamp;
pub use table::Table;
pub use time::Millis;
