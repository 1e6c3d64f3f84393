//! Raft mode: the replicated routing state folded into the data plane, and the source run by the leader alone.
//!
//! ```text
//!  leader only                              every member
//!  source ─► compiler ─► diff vs committed ─► propose ─► Raft log ─► apply ─► StateEvent ─► RoutingTable ─► Dataplane
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Instant;

use raftgate_proxy::RoutingTable;
use raftgate_raft::Change;
use raftgate_raft::RaftNode;
use raftgate_raft::StateEvent;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use crate::app::NodeState;
use crate::config::RaftConfig;
use crate::events::EventKind;
use crate::events::now_ms;
use crate::replicated::Replicated;
use crate::replicated::is_vip_key;
use crate::vips::VipReplicated;

/// The member of the Raft group this node is, and what its source did.
#[derive(Debug)]
pub struct ClusterState {
    pub raft: RaftNode<Replicated>,
    pub source: SourceRecord,
    pub(crate) committed: watch::Receiver<Arc<RoutingTable>>,
    pub(crate) leave_on_shutdown: bool,
    /// The floating IPs, when `vip` is configured.
    pub vips: Option<Arc<crate::vips::Vips>>,
}

/// When this node's source ran: it runs only while this node leads with a valid lease.
#[derive(Debug, Default)]
pub struct SourceRecord {
    running: AtomicBool,
    runs: Mutex<Vec<SourceRun>>,
    /// Times this member started the source (each leadership with a valid lease).
    pub starts: AtomicU64,
    /// Size of the last batch this member proposed, as the Raft log entry carries it (JSON).
    pub last_batch_bytes: AtomicU64,
    /// How long the last apply into the data plane took, in microseconds.
    pub last_apply_us: AtomicU64,
}

/// One run of the source, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SourceRun {
    pub started_ms: u64,
    pub stopped_ms: Option<u64>,
}

impl SourceRecord {
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// The last runs, oldest first.
    pub fn runs(&self) -> Vec<SourceRun> {
        self.runs.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn start(&self) {
        self.running.store(true, Ordering::Release);
        self.starts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut runs) = self.runs.lock() {
            runs.push(SourceRun {
                started_ms: now_ms(),
                stopped_ms: None,
            });
            let excess = runs.len().saturating_sub(100);
            runs.drain(..excess);
        }
    }

    fn stop(&self) {
        self.running.store(false, Ordering::Release);
        if let Ok(mut runs) = self.runs.lock()
            && let Some(last) = runs.last_mut()
            && last.stopped_ms.is_none()
        {
            last.stopped_ms = Some(now_ms());
        }
    }
}

/// Build the raft crate's settings from the config.
pub(crate) fn settings(
    cfg: &RaftConfig,
    admin: std::net::SocketAddr,
) -> Result<raftgate_raft::Settings, raftgate_raft::Error> {
    let mut s = raftgate_raft::Settings::new(cfg.id, cfg.listen, cfg.data_dir.clone());
    s.member = raftgate_raft::Member {
        addr: cfg.advertised(),
        admin: admin.to_string(),
    };
    s.tls = match &cfg.tls {
        Some(t) => Some(raftgate_raft::PeerTls::load(&t.ca, &t.cert, &t.key)?),
        None => None,
    };
    s.heartbeat = cfg.heartbeat;
    s.election_timeout_min = cfg.election_timeout;
    s.election_timeout_max = cfg.election_timeout * 2;
    s.snapshot_every = cfg.snapshot_every;
    s.logs_to_keep = cfg.logs_to_keep;
    Ok(s)
}

/// Folds applied changes into the routing table and swaps it into the data plane, and the VIP
/// keys into the VIP state. Every member runs this; the first event is the state on disk, so a
/// restarted member serves at once. A batch of VIP keys only leaves the data plane alone.
pub(crate) async fn apply_loop(
    mut events: UnboundedReceiver<StateEvent<Replicated>>,
    state: Arc<NodeState>,
    committed: watch::Sender<Arc<RoutingTable>>,
    vips: watch::Sender<Arc<VipReplicated>>,
    record: Arc<ClusterState>,
) {
    let mut table = RoutingTable::default();
    let mut vip = VipReplicated::default();
    while let Some(first) = events.recv().await {
        let started = Instant::now();
        let mut pending = vec![first];
        while let Ok(more) = events.try_recv() {
            pending.push(more);
        }
        let mut routing_changed = false;
        let before: std::collections::BTreeMap<_, _> = vip.table.slots.iter().map(|(a, s)| (*a, s.state)).collect();
        let last_version = pending.last().map_or(vip.version, StateEvent::version);
        for ev in pending {
            match ev {
                StateEvent::Reset { version, entries } => {
                    table = RoutingTable::default();
                    // A reset (start, installed snapshot) is no move: keep the counts as they were.
                    let changes = std::mem::take(&mut vip.changes);
                    vip = VipReplicated::default();
                    for (key, value) in entries {
                        fold(&mut table, &mut vip, &key, Some(value));
                    }
                    vip.changes = changes;
                    table.version = version;
                    routing_changed = true;
                }
                StateEvent::Changed { version, changes } => {
                    // An empty batch is the first version of an empty group: it is routing.
                    let routing = changes.is_empty() || changes.iter().any(|c| !is_vip_key(&c.key));
                    for c in changes {
                        fold(&mut table, &mut vip, &c.key, c.value);
                    }
                    if routing {
                        table.version = version;
                        routing_changed = true;
                    }
                }
            }
        }
        // Always, with the state version: the leader's planner waits for it (a new leadership
        // must not start from a VIP table older than the Raft state it confirmed).
        vip.version = last_version;
        let now = now_ms();
        for (addr, slot) in &vip.table.slots {
            if before.get(addr) != Some(&slot.state) {
                state.events.push(now, EventKind::Vip, vip_move(*addr, slot));
            }
        }
        for addr in before.keys().filter(|a| !vip.table.slots.contains_key(*a)) {
            state
                .events
                .push(now, EventKind::Vip, format!("VIP {addr} left the pool"));
        }
        vips.send_replace(Arc::new(vip.clone()));
        if !routing_changed {
            state.set_applied_version(last_version);
            continue;
        }
        let version = table.version;
        let shared = Arc::new(table.clone());
        committed.send_replace(shared.clone());
        let installed = state.dataplane.install_shared(shared);
        record
            .source
            .last_apply_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match installed {
            Ok(()) => {
                tracing::info!(
                    version,
                    routes = table.route_count(),
                    apply_us = started.elapsed().as_micros() as u64,
                    "replicated routing table applied"
                );
                if version > 0 {
                    state.events.push(
                        now_ms(),
                        EventKind::Config,
                        format!(
                            "routing table version {version} applied ({} routes)",
                            table.route_count()
                        ),
                    );
                }
            }
            Err(e) => {
                tracing::error!(version, error = %e, "replicated routing table refused by the data plane; keeping the current one")
            }
        }
        state.set_applied_version(last_version);
        if version > 0 {
            state.mark_ready();
        }
    }
}

/// An event line for a VIP that changed state: where it is now, and why.
fn vip_move(addr: std::net::IpAddr, slot: &raftgate_vip::Slot) -> String {
    use raftgate_vip::SlotState;
    let reason = slot.reason;
    match slot.state {
        SlotState::Owned { owner } => format!("VIP {addr} owned by member {owner} ({reason})"),
        SlotState::Releasing { from, to: Some(to) } => {
            format!("VIP {addr} handed over from member {from} to member {to} ({reason})")
        }
        SlotState::Releasing { from, to: None } => format!("VIP {addr} released by member {from} ({reason})"),
        SlotState::Unassigned => format!("VIP {addr} has no owner ({reason})"),
    }
}

/// Records each change of leader (or of term without one) this member observes, until the
/// node drains.
pub(crate) async fn watch_leader(raft: RaftNode<Replicated>, state: Arc<NodeState>, mut drain: watch::Receiver<bool>) {
    let mut metrics = raft.raft().metrics();
    let mut last: Option<(u64, Option<u64>)> = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader)
        };
        if last.is_some_and(|l| l.1 != now.1) || (last.is_none() && now.1.is_some()) {
            let message = match now.1 {
                Some(id) => format!("member {id} leads (term {})", now.0),
                None => format!("no leader (term {})", now.0),
            };
            state.events.push(now_ms(), EventKind::Leader, message);
        }
        last = Some(now);
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = raftgate_proxy::server::draining(&mut drain) => return,
        }
    }
}

/// One replicated key into the routing table or the VIP state.
fn fold(table: &mut RoutingTable, vip: &mut VipReplicated, key: &str, value: Option<Replicated>) {
    if is_vip_key(key) {
        vip.apply(key, value);
        return;
    }
    let entry = match value {
        None => None,
        Some(Replicated::Route(e)) => Some(e),
        Some(Replicated::Vip(_)) => {
            tracing::error!(key, "a VIP value under a routing key ignored");
            return;
        }
    };
    if let Err(e) = table.set_entry(key, entry) {
        tracing::error!(error = %e, "replicated entry ignored");
    }
}

/// Where the leader's source sends what it compiled.
#[derive(Clone, Debug)]
pub(crate) struct RaftSink {
    pub(crate) record: Arc<ClusterState>,
    pub(crate) raft: RaftNode<Replicated>,
    pub(crate) committed: watch::Receiver<Arc<RoutingTable>>,
    pub(crate) leading: watch::Receiver<bool>,
}

/// Why a compiled table was not committed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("no longer the leader")]
    NotLeader,
    #[error(transparent)]
    Raft(#[from] raftgate_raft::Error),
}

impl RaftSink {
    /// Propose what differs between `table` and the committed state, as one batch, and wait
    /// until this member applied it. Nothing differs: nothing is proposed, except once on an
    /// empty group so that every member has a first version to serve.
    pub(crate) async fn reconcile(&mut self, table: &RoutingTable) -> Result<Option<u64>, SinkError> {
        let committed = self.committed.borrow().clone();
        let changes = RoutingTable::changes(&committed, table);
        if changes.is_empty() && committed.version > 0 {
            return Ok(None);
        }
        if !*self.leading.borrow() {
            return Err(SinkError::NotLeader);
        }
        let count = changes.len();
        let batch: Vec<Change<Replicated>> = changes
            .into_iter()
            .map(|(key, value)| Change {
                key,
                value: value.map(Replicated::Route),
            })
            .collect();
        let bytes = serde_json::to_vec(&raftgate_raft::Batch::new(batch.clone())).map_or(0, |b| b.len());
        self.record
            .source
            .last_batch_bytes
            .store(bytes as u64, Ordering::Relaxed);
        let applied = self.raft.propose(batch).await?;
        let _ = self.committed.wait_for(|t| t.version >= applied.version).await;
        tracing::info!(
            version = applied.version,
            changes = count,
            bytes,
            "routing change committed"
        );
        Ok(Some(applied.version))
    }
}

/// Runs the source while this member leads (with a valid lease) and stops it the moment it
/// does not. `run` starts one source run and returns its task.
pub(crate) async fn supervise_source(
    cluster: Arc<ClusterState>,
    mut run: impl FnMut(RaftSink) -> tokio::task::JoinHandle<()>,
    mut drain: watch::Receiver<bool>,
) {
    let mut leading = cluster.raft.leadership();
    let mut task: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let lead = *leading.borrow_and_update();
        match (lead, task.is_some()) {
            (true, false) => {
                // Everything committed before this term is applied here before the source
                // compares against it.
                if let Err(e) = cluster.raft.raft().ensure_linearizable().await {
                    tracing::warn!(error = %e, "leader could not confirm its state; not starting the source yet");
                } else if *leading.borrow() {
                    tracing::info!("leading: starting the config source");
                    cluster.source.start();
                    task = Some(run(RaftSink {
                        record: cluster.clone(),
                        raft: cluster.raft.clone(),
                        committed: cluster.committed.clone(),
                        leading: leading.clone(),
                    }));
                    continue;
                }
            }
            (false, true) => {
                if let Some(t) = task.take() {
                    t.abort();
                }
                cluster.source.stop();
                tracing::info!("not leading: config source stopped");
            }
            _ => {}
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { break },
            _ = raftgate_proxy::server::draining(&mut drain) => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if lead && task.is_none() => {}
        }
    }
    if let Some(t) = task.take() {
        t.abort();
        cluster.source.stop();
    }
}
