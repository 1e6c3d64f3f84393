//! Floating IPs on a member: renewals to the leader, the leader's grants and plans, and the shell that carries out each decision.
//!
//! ```text
//!  every member                                              the leader, while it leads
//!  reporter ── Report (raft LeaderCall RPC, every refresh) ──► grant(): LeaderBook::grant ─► Grant
//!     │ lease anchored at the send time                           │ wakes
//!     ▼                                                           ▼
//!  member loop: hold::decide(applied table, lease, now) ─► Shell  planner: LeaderBook::plan
//!     ▲                                                           │ propose_if(vip/table = next,
//!     └── apply_loop ◄── Raft log ◄───────────────────────────────┘   expect vip/table = planned-from)
//! ```
//!
//! The decisions are the pure core's ([`raftgate_vip::hold::decide`], [`raftgate_vip::LeaderBook`]);
//! this module only moves messages, keeps the clock (one `Instant` origin per process) and sets
//! timers for each decision's `wake_at`. A table proposal names the table it was planned from, so
//! one planned from a superseded table is refused by every member alike (raft conditional batch).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raftgate_proxy::RoutingTable;
use raftgate_raft::Change;
use raftgate_raft::RaftNode;
use raftgate_vip::Action;
use raftgate_vip::Grant;
use raftgate_vip::Holdings;
use raftgate_vip::LeaderBook;
use raftgate_vip::Leadership;
use raftgate_vip::Leases;
use raftgate_vip::MemberConfig;
use raftgate_vip::Millis;
use raftgate_vip::Mode;
use raftgate_vip::NodeId;
use raftgate_vip::NodeView;
use raftgate_vip::Pool;
use raftgate_vip::Preference;
use raftgate_vip::Reason;
use raftgate_vip::Report;
use raftgate_vip::Table;
use raftgate_vip::Timing;
use raftgate_vip::VersionHistory;
use raftgate_vip::shell::Shell;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::app::NodeState;
use crate::replicated::MemberRecord;
use crate::replicated::Replicated;
use crate::replicated::VIP_TABLE_KEY;
use crate::replicated::VipValue;
use crate::replicated::vip_member_key;

/// The VIP part of the applied Raft state, as `apply_loop` folds it.
#[derive(Clone, Debug, Default)]
pub struct VipReplicated {
    pub table: Table,
    pub members: BTreeMap<NodeId, MemberRecord>,
    /// Ownership changes applied on this member since it started, by reason.
    pub changes: BTreeMap<Reason, u64>,
    /// The Raft state version this was folded up to.
    pub version: u64,
}

impl VipReplicated {
    /// Folds one applied change of a `vip/...` key.
    pub(crate) fn apply(&mut self, key: &str, value: Option<Replicated>) {
        match (key, value) {
            (VIP_TABLE_KEY, Some(Replicated::Vip(VipValue::Table(t)))) => {
                for (vip, slot) in &t.slots {
                    if self.table.slots.get(vip).map(|s| s.state) != Some(slot.state) {
                        *self.changes.entry(slot.reason).or_default() += 1;
                    }
                }
                self.table = t;
            }
            (VIP_TABLE_KEY, None) => self.table = Table::default(),
            (k, value) => {
                let Some(id) = crate::replicated::vip_member_id(k) else {
                    tracing::error!(key = k, "unknown VIP key ignored");
                    return;
                };
                match value {
                    Some(Replicated::Vip(VipValue::Member(m))) => drop(self.members.insert(id, m)),
                    None => drop(self.members.remove(&id)),
                    Some(_) => tracing::error!(key = k, "VIP member key with another value ignored"),
                }
            }
        }
    }
}

/// A renewal request: the member's report, and the lease timing it holds under. The leader
/// fences with its own timing, so it grants only members that hold under the same.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Renewal {
    report: Report,
    timing: TimingDigest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
struct TimingDigest {
    lease_ms: u64,
    release_guard_ms: u64,
    drift_ppm: u32,
}

impl TimingDigest {
    fn of(t: &Timing) -> Self {
        Self {
            lease_ms: u64::try_from(t.lease.as_millis()).unwrap_or(u64::MAX),
            release_guard_ms: u64::try_from(t.release_guard.as_millis()).unwrap_or(u64::MAX),
            drift_ppm: t.drift_ppm,
        }
    }
}

/// What this member holds and knows, for status and reports.
#[derive(Debug, Default)]
struct Local {
    held: Holdings,
    leases: Leases,
    /// The table revision whose holdings are in effect here.
    in_effect: u64,
    /// The shell failed; report not ready until then, so the leader moves the VIPs away.
    failed_until: Option<Millis>,
    last_error: Option<String>,
    /// Why the last renewal was not granted, if it was not.
    renewal_error: Option<String>,
}

/// The leader's book for its current leadership, and its routing version history.
#[derive(Debug)]
struct LeaderState {
    book: LeaderBook,
    history: VersionHistory,
}

/// This member's VIP machinery, shared by its tasks and the admin API.
#[derive(Debug)]
pub struct Vips {
    pub pool: Pool,
    pub timing: Timing,
    preference: Preference,
    id: NodeId,
    origin: Instant,
    replicated: watch::Receiver<Arc<VipReplicated>>,
    /// Why this member cannot own VIPs (missing capabilities), if so.
    refused: Option<String>,
    local: Mutex<Local>,
    leader: Mutex<Option<LeaderState>>,
    planner: Notify,
    stopping: AtomicBool,
    /// Set before this leader hands its leadership over: it grants nothing from then on, so
    /// the next leader begins after its last grant.
    granting_stopped: AtomicBool,
    /// The member loop runs: without it nothing would carry decisions out, so report not ready.
    member_alive: AtomicBool,
    announcements: AtomicU64,
    shell_errors: AtomicU64,
}

/// `GET /api/v1/vips` and `raftgate ctl vips`.
#[derive(Debug, Serialize)]
pub struct VipView {
    pub node: NodeId,
    /// This member leads and plans.
    pub leader: bool,
    pub refused: Option<String>,
    pub last_error: Option<String>,
    /// Why the last renewal was not granted (no leader, timing mismatch…), if it was not.
    pub renewal_error: Option<String>,
    pub lease_remaining_ms: Option<u64>,
    pub revision: u64,
    pub in_effect_revision: u64,
    pub vips: Vec<raftgate_vip::VipStatus>,
    pub members: BTreeMap<NodeId, MemberRecord>,
    pub changes: BTreeMap<Reason, u64>,
}

impl Vips {
    pub(crate) fn new(
        id: NodeId,
        pool: Pool,
        timing: Timing,
        preference: Preference,
        refused: Option<String>,
        replicated: watch::Receiver<Arc<VipReplicated>>,
    ) -> Self {
        Self {
            pool,
            timing,
            preference,
            id,
            origin: Instant::now(),
            replicated,
            refused,
            local: Mutex::default(),
            leader: Mutex::new(None),
            planner: Notify::new(),
            stopping: AtomicBool::new(false),
            granting_stopped: AtomicBool::new(false),
            member_alive: AtomicBool::new(true),
            announcements: AtomicU64::new(0),
            shell_errors: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Millis {
        self.millis_at(Instant::now())
    }

    fn millis_at(&self, t: Instant) -> Millis {
        Millis::from_elapsed(t.saturating_duration_since(self.origin))
    }

    fn instant_of(&self, m: Millis) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_millis(m.0))
    }

    /// The status view.
    pub fn view(&self) -> VipView {
        let now = self.now();
        let rep = self.replicated.borrow().clone();
        let leadership = self
            .leader
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|s| s.book.leadership()));
        let (held, lease, in_effect, last_error, renewal_error) = match self.local.lock() {
            Ok(l) => (
                l.held.clone(),
                l.leases.usable(l.in_effect, &self.timing, now),
                l.in_effect,
                l.last_error.clone(),
                l.renewal_error.clone(),
            ),
            Err(_) => Default::default(),
        };
        let lease_remaining_ms = lease.map(|l| l.hold_until(&self.timing).since(now));
        // Without a usable lease nothing is held actively (the kernel lifetime and the guard take
        // the address away); the member loop may not have run yet after a stall.
        let mut held = held;
        if lease.is_none() {
            held.retain(|_, h| h.mode != raftgate_vip::Mode::Active);
        }
        VipView {
            node: self.id,
            leader: leadership.is_some(),
            refused: self.refused.clone(),
            last_error,
            renewal_error,
            lease_remaining_ms,
            revision: rep.table.revision,
            in_effect_revision: in_effect,
            vips: raftgate_vip::status(&rep.table, leadership.as_ref(), Some(&held), now),
            members: rep.members.clone(),
            changes: rep.changes.clone(),
        }
    }

    /// Prometheus lines.
    pub fn render_metrics(&self, out: &mut String) {
        let now = self.now();
        let (held, lease) = match self.local.lock() {
            Ok(l) => (l.held.clone(), l.leases.latest()),
            Err(_) => Default::default(),
        };
        let active = held.values().filter(|h| h.mode == Mode::Active).count();
        let quiet = held.len() - active;
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_held VIPs this member holds, by mode (active: announced and answering ARP/NDP).\n# TYPE raftgate_vip_held gauge\nraftgate_vip_held{{mode=\"active\"}} {active}\nraftgate_vip_held{{mode=\"quiet\"}} {quiet}"
        );
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_announcements_total Gratuitous ARPs / unsolicited neighbour advertisements sent.\n# TYPE raftgate_vip_announcements_total counter\nraftgate_vip_announcements_total {}",
            self.announcements.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_shell_errors_total Netlink or ARP operations that failed.\n# TYPE raftgate_vip_shell_errors_total counter\nraftgate_vip_shell_errors_total {}",
            self.shell_errors.load(Ordering::Relaxed)
        );
        let age = lease.map_or(-1.0, |l| now.since(l.anchor) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_lease_age_seconds Time since the send time of this member's last granted renewal (-1: never).\n# TYPE raftgate_vip_lease_age_seconds gauge\nraftgate_vip_lease_age_seconds {age}"
        );
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_refused 1 when this member cannot own VIPs (missing capabilities).\n# TYPE raftgate_vip_refused gauge\nraftgate_vip_refused {}",
            u8::from(self.refused.is_some())
        );
        // The committed assignment as this member applied it: the same on every member.
        let rep = self.replicated.borrow().clone();
        let (mut owned, mut releasing, mut unassigned) = (0, 0, 0);
        for addr in self.pool.addrs() {
            match rep.table.slots.get(&addr).map(|s| &s.state) {
                Some(raftgate_vip::SlotState::Owned { .. }) => owned += 1,
                Some(raftgate_vip::SlotState::Releasing { .. }) => releasing += 1,
                Some(raftgate_vip::SlotState::Unassigned) | None => unassigned += 1,
            }
        }
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_addresses Pool VIPs by state in the committed assignment table.\n# TYPE raftgate_vip_addresses gauge\nraftgate_vip_addresses{{state=\"owned\"}} {owned}\nraftgate_vip_addresses{{state=\"releasing\"}} {releasing}\nraftgate_vip_addresses{{state=\"unassigned\"}} {unassigned}"
        );
        let _ = writeln!(
            out,
            "# HELP raftgate_vip_ownership_changes_total VIP moves applied on this member, by reason.\n# TYPE raftgate_vip_ownership_changes_total counter"
        );
        for (reason, n) in &rep.changes {
            let _ = writeln!(out, "raftgate_vip_ownership_changes_total{{reason=\"{reason}\"}} {n}");
        }
    }

    /// The leader's answer to a member's report: a grant while this leadership's book exists.
    fn grant(&self, body: &[u8], term: u64) -> Result<bytes::Bytes, String> {
        if self.granting_stopped.load(Ordering::Acquire) {
            return Err("this leader is handing its leadership over".into());
        }
        let renewal: Renewal = serde_json::from_slice(body).map_err(|e| format!("bad VIP report: {e}"))?;
        let mine = TimingDigest::of(&self.timing);
        if renewal.timing != mine {
            return Err(format!(
                "VIP timing differs from the leader's ({:?} here, {mine:?} on the leader): every member needs the same vip lease, release_guard and drift_ppm",
                renewal.timing
            ));
        }
        let report = renewal.report;
        let now = self.now();
        let grant = {
            let mut leader = self
                .leader
                .lock()
                .map_err(|_| "VIP leader state poisoned".to_string())?;
            let Some(st) = leader.as_mut() else {
                return Err("this leader is not granting VIP leases yet".into());
            };
            if st.book.leadership().term != term {
                return Err("this leader's VIP book is of an earlier term".into());
            }
            let floor = st.history.floor(self.timing.max_config_lag, now);
            st.book.grant(&report, floor, now)
        };
        self.planner.notify_one();
        serde_json::to_vec(&grant)
            .map(bytes::Bytes::from)
            .map_err(|e| e.to_string())
    }

    /// Whether this member can serve and hold VIPs now.
    fn ready(&self, state: &NodeState, now: Millis) -> bool {
        let failed = self
            .local
            .lock()
            .ok()
            .and_then(|l| l.failed_until)
            .is_some_and(|t| now < t);
        self.refused.is_none() && state.is_ready() && !failed && self.member_alive.load(Ordering::Acquire)
    }
}

/// Keeps the pool's addresses off this host when dropped: at shutdown, and if the member task
/// panics (unwinding drops it). A crashed process leaves them to the kernel lifetime and to the
/// next start's cleanup.
#[derive(Debug)]
pub(crate) struct OwnedShell {
    shell: Shell,
    guard: Guard,
}

/// The node's end of its VIP guard process ([`raftgate_vip::shell::guard`]): the same binary,
/// run as `raftgate guard-vips`, reading on a pipe how long this process's holds may last.
#[derive(Debug)]
struct Guard {
    pool: Pool,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Guard {
    fn spawn(pool: &Pool) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this program to start the VIP guard: {e}"))?;
        let specs = serde_json::to_string(pool.specs()).map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args(["guard-vips", "--pool", &specs])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the VIP guard process: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            pool: pool.clone(),
            child,
            stdin,
        })
    }

    /// Tells the guard until when the holds in effect may last (`remaining` from `decided_at`);
    /// restarts it once if it is gone.
    fn tell(&mut self, decided_at: Instant, remaining: Option<Duration>) -> Result<(), String> {
        use raftgate_vip::shell::guard::GuardMessage;
        use std::io::Write as _;
        let line = match remaining {
            Some(d) => {
                let since = Instant::now().saturating_duration_since(decided_at).as_nanos();
                let until = raftgate_vip::shell::guard::monotonic_ns().saturating_sub(since) + d.as_nanos();
                GuardMessage::HoldUntil(until)
            }
            None => GuardMessage::Nothing,
        }
        .line();
        let write = |g: &mut Guard| match g.stdin.as_mut() {
            Some(s) => s.write_all(line.as_bytes()).map_err(|e| e.to_string()),
            None => Err("no pipe".to_string()),
        };
        if write(self).is_ok() {
            return Ok(());
        }
        tracing::warn!("the VIP guard process is gone; starting a new one");
        let _ = self.child.try_wait();
        *self = Guard::spawn(&self.pool)?;
        write(self).map_err(|e| format!("VIP guard: {e}"))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe makes the guard remove the pool's addresses and exit.
        drop(self.stdin.take());
        let _ = self.child.try_wait();
    }
}

impl Drop for OwnedShell {
    fn drop(&mut self) {
        match raftgate_vip::shell::remove_all(self.shell.pool()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "VIP addresses removed"),
            Err(e) => tracing::error!(error = %e, "could not remove VIP addresses"),
        }
    }
}

/// Opens the shell, removes what an earlier process left and starts the guard process, or says
/// why this member cannot own VIPs.
pub(crate) async fn open_shell(pool: &Pool, timing: &Timing) -> Result<OwnedShell, String> {
    let mut shell = Shell::new(pool.clone(), timing.clone()).map_err(|e| e.to_string())?;
    match shell.release_all().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            removed = n,
            "removed VIP addresses an earlier process left on this host"
        ),
        Err(e) => return Err(format!("removing stale VIP addresses: {e}")),
    }
    let guard = Guard::spawn(pool)?;
    Ok(OwnedShell { shell, guard })
}

/// Starts the member loop, the reporter, the leader's planner and the settings writer.
pub(crate) fn spawn(
    vips: Arc<Vips>,
    shell: Option<OwnedShell>,
    raft: RaftNode<Replicated>,
    state: Arc<NodeState>,
    committed: watch::Receiver<Arc<RoutingTable>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (handler_vips, handler_raft) = (vips.clone(), raft.clone());
    raft.set_leader_handler(Arc::new(move |body: bytes::Bytes| {
        let vips = handler_vips.clone();
        let (term, _) = handler_raft.term_and_leader();
        Box::pin(async move { vips.grant(&body, term) })
    }));
    let (grants_tx, grants_rx) = mpsc::unbounded_channel();
    let report_now = Arc::new(Notify::new());
    vec![
        tokio::spawn(member_loop(
            vips.clone(),
            shell,
            state.clone(),
            grants_rx,
            report_now.clone(),
        )),
        tokio::spawn(reporter(vips.clone(), raft.clone(), state, grants_tx, report_now)),
        tokio::spawn(planner(vips.clone(), raft.clone(), committed)),
        tokio::spawn(settings_writer(vips, raft)),
    ]
}

/// Decides and carries out what to hold, at every renewal, applied table and `wake_at`.
async fn member_loop(
    vips: Arc<Vips>,
    mut shell: Option<OwnedShell>,
    state: Arc<NodeState>,
    mut grants: mpsc::UnboundedReceiver<(Millis, Grant)>,
    report_now: Arc<Notify>,
) {
    struct Alive<'a>(&'a Vips);
    impl Drop for Alive<'_> {
        fn drop(&mut self) {
            self.0.member_alive.store(false, Ordering::Release);
            // At shutdown the task is aborted: expected. Any other end is a failure.
            if !self.0.stopping.load(Ordering::Acquire) {
                tracing::error!("the VIP member loop ended; this member reports itself not ready");
            }
        }
    }
    let _alive = Alive(&vips);
    let mut replicated = vips.replicated.clone();
    let mut reported_revision = None;
    loop {
        let decided_at = Instant::now();
        let now = vips.millis_at(decided_at);
        let rep = replicated.borrow_and_update().clone();
        let ready = vips.ready(&state, now);
        let (decision, lease_usable) = {
            let Ok(mut local) = vips.local.lock() else { return };
            local.leases.expire(&vips.timing, now);
            let lease = local.leases.usable(rep.table.revision, &vips.timing, now);
            let view = NodeView {
                id: vips.id,
                table: &rep.table,
                pool: &vips.pool,
                lease,
                ready,
                held: &local.held,
            };
            (raftgate_vip::decide(&view, &vips.timing, now), lease.is_some())
        };
        for vip in &decision.unknown {
            tracing::warn!(%vip, "the VIP table gives this member a VIP its vip.addresses does not list; not holding it");
        }
        // The guard learns the new bound first: it never removes an address this decision holds.
        let outcome = match shell.as_mut() {
            Some(s) => match s.guard.tell(decided_at, decision.lease_remaining) {
                Ok(()) => {
                    let deadline = decision.lease_remaining.map(|r| decided_at + r);
                    s.shell
                        .apply_within(&decision, deadline)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            },
            None => Ok(()),
        };
        let failed = match outcome {
            Ok(()) => {
                let sent = decision
                    .actions
                    .iter()
                    .filter(|a| matches!(a, Action::Activate { .. } | Action::Announce { .. }))
                    .count();
                vips.announcements.fetch_add(sent as u64, Ordering::Relaxed);
                for a in &decision.actions {
                    match a {
                        Action::Activate { vip, .. } => tracing::info!(%vip, "VIP taken: address added and announced"),
                        Action::Quiesce { vip } => {
                            tracing::info!(%vip, "VIP handed over: serving it silently for the grace period")
                        }
                        Action::Release { vip } => {
                            tracing::info!(%vip, ready, lease_usable, table_revision = rep.table.revision, "VIP released")
                        }
                        Action::Announce { .. } => {}
                    }
                }
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = &failed {
            vips.shell_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "VIP shell failed; releasing every VIP and reporting not ready for a second");
            if let Some(s) = shell.as_mut()
                && let Err(e) = s.shell.release_all().await
            {
                tracing::error!(error = %e, "could not remove VIP addresses");
            }
        }
        if let Ok(mut local) = vips.local.lock() {
            match failed {
                None => {
                    local.held = decision.held.clone();
                    local.in_effect = rep.table.revision;
                }
                Some(e) => {
                    local.held.clear();
                    local.failed_until = Some(now.plus(1000));
                    local.last_error = Some(e);
                }
            }
        }
        if reported_revision != Some(rep.table.revision) {
            reported_revision = Some(rep.table.revision);
            report_now.notify_one();
        }
        let wake = decision
            .wake_at
            .map_or_else(|| vips.instant_of(now.plus(1000)), |w| vips.instant_of(w));
        tokio::select! {
            g = grants.recv() => match g {
                Some((sent_at, grant)) => {
                    if let Ok(mut local) = vips.local.lock() {
                        local.leases.renew(sent_at, grant);
                    }
                }
                None => return,
            },
            r = replicated.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
            // Readiness has no event of its own.
            _ = tokio::time::sleep(vips.timing.refresh), if !ready => {}
        }
    }
}

/// Sends a renewal report every `refresh`, and at once when the member loop asks (a new table in
/// effect). Each report runs on its own, so a slow answer never delays the next one.
async fn reporter(
    vips: Arc<Vips>,
    raft: RaftNode<Replicated>,
    state: Arc<NodeState>,
    grants: mpsc::UnboundedSender<(Millis, Grant)>,
    report_now: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(vips.timing.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = vips.timing.lease;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = report_now.notified() => {}
        }
        let now = vips.now();
        // The leader's own lease is anchored at its last quorum acknowledgement: it must stop
        // holding once it has gone a lease without a quorum, like everybody else.
        let sent_at = match raft.quorum_ack() {
            Some(ack) => vips.millis_at(ack).min(now),
            None => now,
        };
        let applied_revision = vips.local.lock().map(|l| l.in_effect).unwrap_or(0);
        let report = Report {
            member: vips.id,
            applied_revision,
            ready: vips.ready(&state, now),
            // The Raft state version this member applied. (Not the data plane's table version: a
            // table rebuilt from a snapshot carries the state version, one applied batch by
            // batch the version of its last routing change, so those are not comparable.)
            config_version: raft.version(),
        };
        let renewal = Renewal {
            report,
            timing: TimingDigest::of(&vips.timing),
        };
        let Ok(body) = serde_json::to_vec(&renewal) else {
            continue;
        };
        let (raft, grants, vips) = (raft.clone(), grants.clone(), vips.clone());
        tokio::spawn(async move {
            let refused = match raft.ask_leader(bytes::Bytes::from(body), ttl).await {
                Ok(answer) => match serde_json::from_slice::<Grant>(&answer) {
                    Ok(grant) => {
                        let _ = grants.send((sent_at, grant));
                        None
                    }
                    Err(e) => Some(format!("unreadable VIP lease grant: {e}")),
                },
                Err(e) => Some(e.to_string()),
            };
            if let Ok(mut local) = vips.local.lock() {
                if let Some(e) = &refused
                    && local.renewal_error.as_ref() != Some(e)
                {
                    tracing::warn!(error = %e, "VIP lease renewal not granted");
                }
                local.renewal_error = refused;
            }
        });
    }
}

/// The member settings the leader plans with: every Raft member, with its replicated record.
fn member_configs(raft: &RaftNode<Replicated>, records: &BTreeMap<NodeId, MemberRecord>) -> Vec<MemberConfig> {
    raft.members()
        .into_iter()
        .map(|(id, _)| {
            let r = records.get(&id).copied().unwrap_or_default();
            MemberConfig {
                id,
                preference: r.preference,
                draining: r.draining(),
            }
        })
        .collect()
}

/// While this member leads: one [`LeaderBook`] per leadership, planning at every report,
/// applied table and `wake_at`, and proposing the tables it plans.
async fn planner(vips: Arc<Vips>, raft: RaftNode<Replicated>, mut committed: watch::Receiver<Arc<RoutingTable>>) {
    let mut leading = raft.leadership();
    let mut replicated = vips.replicated.clone();
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        // Everything committed before this term is applied here before the book starts.
        if let Err(e) = raft.raft().ensure_linearizable().await {
            tracing::warn!(error = %e, "leader could not confirm its state; not granting VIP leases yet");
            tokio::time::sleep(vips.timing.refresh).await;
            continue;
        }
        if !*leading.borrow() {
            continue;
        }
        // ensure_linearizable waited for the state machine; the VIP table must have been folded
        // that far too, or the book would start from (and grant) a revision already superseded.
        let applied = raft.version();
        let caught_up = tokio::time::timeout(Duration::from_secs(5), async {
            replicated.wait_for(|r| r.version >= applied).await.map(|_| ())
        })
        .await;
        match caught_up {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    applied,
                    "the VIP state lags the Raft state; not granting VIP leases yet"
                );
                continue;
            }
        }
        if !*leading.borrow() {
            continue;
        }
        let now = vips.now();
        let (term, _) = raft.term_and_leader();
        let leadership = Leadership {
            leader: vips.id,
            term,
            since: now,
        };
        let applied = replicated.borrow().table.revision;
        let mut history = VersionHistory::new();
        history.record(raft.version(), now);
        if let Ok(mut l) = vips.leader.lock() {
            *l = Some(LeaderState {
                book: LeaderBook::new(leadership, vips.timing.clone(), applied),
                history,
            });
        }
        tracing::info!(term, "leading: granting VIP leases and planning");
        // Whatever ends this leadership's loop, a return included, drops its book.
        let _book = BookGuard(&vips);
        while *leading.borrow() && raft.term_and_leader() == (term, Some(vips.id)) {
            let now = vips.now();
            let rep = replicated.borrow_and_update().clone();
            committed.borrow_and_update();
            let version = raft.version();
            let configs = member_configs(&raft, &rep.members);
            let plan = match vips.leader.lock() {
                Ok(mut l) => match l.as_mut() {
                    Some(st) => {
                        st.history.record(version, now);
                        st.book.plan(&rep.table, &vips.pool, &configs, now)
                    }
                    None => break,
                },
                Err(_) => break,
            };
            if let Some(next) = plan.table {
                for m in &plan.moves {
                    tracing::info!(vip = %m.vip, from = ?m.from, to = ?m.to, reason = %m.reason, revision = next.revision, "VIP move planned");
                }
                let expect = Change {
                    key: VIP_TABLE_KEY.to_string(),
                    value: (rep.table.revision > 0).then(|| Replicated::Vip(VipValue::Table(rep.table.clone()))),
                };
                let change = Change {
                    key: VIP_TABLE_KEY.to_string(),
                    value: Some(Replicated::Vip(VipValue::Table(next))),
                };
                match raft.propose_if(vec![expect], vec![change]).await {
                    Ok(a) if a.rejected => tracing::debug!("VIP table proposal was planned from a superseded table"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "VIP table proposal failed"),
                }
                continue;
            }
            let wake = plan
                .wake_at
                .map_or_else(|| vips.instant_of(now.plus(1000)), |w| vips.instant_of(w));
            tokio::select! {
                _ = vips.planner.notified() => {}
                r = replicated.changed() => if r.is_err() { return },
                r = committed.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        drop(_book);
        tracing::info!("not leading: VIP grants and planning stopped");
    }
}

/// Drops the leader's book when a leadership's planning ends, however it ends.
struct BookGuard<'a>(&'a Vips);

impl Drop for BookGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.leader.lock() {
            *l = None;
        }
    }
}

/// Keeps this member's replicated record in line with its config (preference) and its state
/// (stopping), leaving the operator's `drained` flag as it is.
async fn settings_writer(vips: Arc<Vips>, raft: RaftNode<Replicated>) {
    let mut replicated = vips.replicated.clone();
    loop {
        let current = replicated.borrow_and_update().members.get(&vips.id).copied();
        let stopping = vips.stopping.load(Ordering::Acquire);
        let base = current.unwrap_or_default();
        let want = MemberRecord {
            preference: vips.preference,
            drained: base.drained,
            stopping,
        };
        if raft.is_member() && current != Some(want) {
            match update_record(&raft, vips.id, current, want).await {
                Ok(true) => {}
                Ok(false) => {
                    // Changed meanwhile: wait until it is applied here, then compare again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "could not write this member's VIP settings yet"),
            }
        }
        tokio::select! {
            r = replicated.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Replaces member `id`'s record if it still is `current`. `Ok(false)`: it changed meanwhile.
async fn update_record(
    raft: &RaftNode<Replicated>,
    id: NodeId,
    current: Option<MemberRecord>,
    want: MemberRecord,
) -> Result<bool, raftgate_raft::Error> {
    let key = vip_member_key(id);
    let expect = Change {
        key: key.clone(),
        value: current.map(|m| Replicated::Vip(VipValue::Member(m))),
    };
    let change = Change {
        key,
        value: Some(Replicated::Vip(VipValue::Member(want))),
    };
    let applied = raft.write_if(vec![expect], vec![change]).await?;
    Ok(!applied.rejected)
}

/// Why a drain could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{0} is not a member of the group")]
    NotMember(NodeId),
    #[error("the member's VIP settings kept changing; try again")]
    Contended,
    #[error(transparent)]
    Raft(#[from] raftgate_raft::Error),
}

/// `raftgate ctl drain|undrain ID`: sets the operator's drain flag of member `id`.
pub async fn set_drained(
    raft: &RaftNode<Replicated>,
    replicated: &watch::Receiver<Arc<VipReplicated>>,
    id: NodeId,
    drained: bool,
) -> Result<MemberRecord, DrainError> {
    if !raft.members().iter().any(|(m, _)| *m == id) {
        return Err(DrainError::NotMember(id));
    }
    for _ in 0..5 {
        let current = replicated.borrow().members.get(&id).copied();
        let want = MemberRecord {
            drained,
            ..current.unwrap_or_default()
        };
        if current == Some(want) || update_record(raft, id, current, want).await? {
            return Ok(want);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(DrainError::Contended)
}

impl Vips {
    /// The replicated VIP state, as applied here.
    pub fn replicated(&self) -> &watch::Receiver<Arc<VipReplicated>> {
        &self.replicated
    }

    /// Stops granting renewals (this leader is about to hand its leadership over): the next
    /// leader must begin after this one's last grant.
    pub(crate) fn stop_granting(&self) {
        self.granting_stopped.store(true, Ordering::Release);
    }

    /// The hand-off did not happen: this member may still lead, and grants as before.
    pub(crate) fn resume_granting(&self) {
        self.granting_stopped.store(false, Ordering::Release);
    }

    /// On SIGTERM: hand this member's VIPs over (make-before-break) and wait until it holds
    /// none, quiet ones included (the grace period), within `grace + 5 s`.
    pub(crate) async fn hand_over(&self, raft: &RaftNode<Replicated>) {
        self.stopping.store(true, Ordering::Release);
        let held = |v: &Vips| v.local.lock().map(|l| l.held.len()).unwrap_or(0);
        if held(self) == 0 {
            return;
        }
        tracing::info!("stopping: handing VIPs over before closing");
        // Say so now rather than at the settings writer's next turn.
        for _ in 0..5 {
            let current = self.replicated.borrow().members.get(&self.id).copied();
            let want = MemberRecord {
                preference: self.preference,
                stopping: true,
                ..current.unwrap_or_default()
            };
            match update_record(raft, self.id, current, want).await {
                Ok(true) => break,
                Ok(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not announce the handover; the VIPs go when this member stops renewing");
                    break;
                }
            }
        }
        let deadline = Instant::now() + self.timing.grace + Duration::from_secs(5);
        let mut replicated = self.replicated.clone();
        // A member loop that has ended (its Raft stopped) took its addresses down with its shell.
        let looping = |v: &Vips| v.member_alive.load(Ordering::Acquire);
        while held(self) > 0 && looping(self) && Instant::now() < deadline {
            tokio::select! {
                _ = replicated.changed() => {}
                _ = tokio::time::sleep(self.timing.refresh) => {}
            }
        }
        if held(self) > 0 {
            tracing::warn!("VIPs still held at the end of the handover; removing them now");
        }
    }
}
