//! A running member: openraft with sled storage, the gRPC server, membership changes, leadership and status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, watch};

use crate::error::Error;
use crate::network::{self, Channels, JoinRequest, Network, RemoveRequest};
use crate::server;
use crate::stats::Stats;
use crate::store::{self, StateEvent};
use crate::tls::PeerTls;
use crate::types::{Applied, Batch, Change, Member, NodeId, Raft, Value};

/// How a member is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: NodeId,
    /// The Raft gRPC listener.
    pub listen: SocketAddr,
    /// How peers reach this member, and its admin address.
    pub member: Member,
    /// sled lives in `<data_dir>/raft`.
    pub data_dir: PathBuf,
    /// Mutual TLS material; `None` is the explicit insecure mode.
    pub tls: Option<PeerTls>,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Take a snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, for followers slightly behind.
    pub logs_to_keep: u64,
}

impl Settings {
    /// Defaults for a member with this id, listener and data dir.
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            id,
            listen,
            member: Member {
                addr: listen.to_string(),
                admin: String::new(),
            },
            data_dir,
            tls: None,
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_every: 1000,
            logs_to_keep: 100,
        }
    }
}

/// One member's view of itself, as `/api/v1/status`, `ctl status` and the Health RPC show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: String,
    pub admin: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// The config version this member has applied and serves.
    pub config_version: u64,
    /// Whether it is in touch with a leader that has a quorum (or is that leader).
    pub quorum_contact: bool,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub members: BTreeMap<NodeId, Member>,
}

/// Every member as seen from here: its own status, or why it could not be asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub member: Member,
    pub voter: bool,
    pub status: Option<NodeStatus>,
    pub error: Option<String>,
}

/// The application's answer to calls members make to the leader ([`RaftNode::ask_leader`]),
/// run on the leader only while it leads. An `Err` reaches the caller as [`Error::Raft`].
pub type LeaderHandler =
    Arc<dyn Fn(bytes::Bytes) -> futures_util::future::BoxFuture<'static, Result<bytes::Bytes, String>> + Send + Sync>;

/// A running member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode<V: Value> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V: Value> std::fmt::Debug for RaftNode<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.inner.id).finish()
    }
}

pub(crate) struct Inner<V: Value> {
    pub(crate) id: NodeId,
    pub(crate) member: Member,
    pub(crate) raft: Raft<V>,
    pub(crate) channels: Channels,
    pub(crate) version: Arc<AtomicU64>,
    pub(crate) stats: Arc<Stats>,
    change_lock: Mutex<()>,
    /// When this member last took an AppendEntries from a leader.
    pub(crate) last_append: std::sync::Mutex<Option<Instant>>,
    leading: watch::Sender<bool>,
    contact: watch::Sender<bool>,
    /// Why the Raft core stopped on its own (a storage error, say), once it has.
    failure: watch::Sender<Option<String>>,
    shutdown: watch::Sender<bool>,
    lease: Duration,
    leader_handler: std::sync::Mutex<Option<LeaderHandler>>,
    /// While leader: the latest heartbeat a quorum acknowledged, as `watch_leadership` saw it.
    quorum_acked: std::sync::Mutex<Option<Instant>>,
    /// While leader: its term and when this member saw itself become leader in it.
    leader_since: std::sync::Mutex<Option<(u64, Instant)>>,
    election_timeout_min: Duration,
    election_timeout_max: Duration,
    /// Whether this member may stand for election (false once it has handed its leadership over).
    stands: std::sync::atomic::AtomicBool,
}

impl<V: Value> RaftNode<V> {
    /// Open storage, start openraft and the gRPC server. The receiver yields the state on disk
    /// first, then every applied change.
    pub async fn start(settings: Settings) -> Result<(Self, mpsc::UnboundedReceiver<StateEvent<V>>), Error> {
        let (log, mut sm) = store::open::<V>(&settings.data_dir)?;
        let events = sm.subscribe()?;
        let version = sm.version_handle();
        let config = openraft::Config {
            cluster_name: "raftgate".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: settings.logs_to_keep,
            // Elections start from `elect_after_pre_vote`, which asks first.
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(format!("raft settings: {e}")))?;
        let channels = Channels::new(settings.tls.clone());
        let stats = Arc::new(Stats::default());
        let network = Network::<V>::new(settings.id, channels.clone(), stats.clone());
        let raft = openraft::Raft::new(settings.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: settings.listen.to_string(),
                source,
            })?;
        if settings.tls.is_none() {
            tracing::warn!(
                listen = %settings.listen,
                "raft peer traffic is NOT authenticated or encrypted (raft.insecure = true): anyone who reaches this port can rewrite the routing state"
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            id: settings.id,
            member: settings.member.clone(),
            raft,
            channels,
            version,
            stats,
            change_lock: Mutex::new(()),
            last_append: std::sync::Mutex::new(None),
            leading: watch::channel(false).0,
            contact: watch::channel(false).0,
            failure: watch::channel(None).0,
            shutdown,
            lease: settings.election_timeout_max / 2,
            leader_handler: std::sync::Mutex::new(None),
            quorum_acked: std::sync::Mutex::new(None),
            leader_since: std::sync::Mutex::new(None),
            election_timeout_min: settings.election_timeout_min,
            election_timeout_max: settings.election_timeout_max,
            stands: std::sync::atomic::AtomicBool::new(true),
        });
        server::spawn(inner.clone(), listener, settings.tls.clone(), shutdown_rx.clone())?;
        tokio::spawn(watch_leadership(inner.clone(), settings.heartbeat, shutdown_rx.clone()));
        tokio::spawn(elect_after_pre_vote(inner.clone(), settings.heartbeat, shutdown_rx));
        Ok((Self { inner }, events))
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft<V> {
        &self.inner.raft
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The config version applied on this member.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    /// True while this member is the leader and a quorum acknowledged it within the lease
    /// (half the maximum election timeout), so no other member can have been elected meanwhile:
    /// openraft voters refuse every candidate for `election_timeout_max` after a heartbeat.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.inner.leading.subscribe()
    }

    /// True while this member is in touch with a leader that has a quorum.
    pub fn quorum_contact(&self) -> watch::Receiver<bool> {
        self.inner.contact.subscribe()
    }

    /// Whether the Raft core has stopped by itself (see [`RaftNode::failed`]).
    pub fn has_failed(&self) -> bool {
        self.inner.failure.borrow().is_some()
    }

    /// Resolves, with the reason, once the Raft core has stopped by itself: a log or state
    /// write failed (a full or read-only disk), or the core ended without being asked to. The
    /// member then neither leads nor has quorum contact, and cannot recover in place: its
    /// process should stop so that a supervisor starts it again on the same data directory.
    /// Never resolves after [`RaftNode::shutdown`].
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // `inner` owns the sender: it cannot be dropped while `self` exists.
            Err(_) => std::future::pending().await,
        }
    }

    /// The instant of the latest heartbeat a quorum acknowledged, while this member is the
    /// leader (now, for a sole voter), as the leadership watch last derived it from freshly
    /// published metrics. `None` when it is not the leader.
    pub fn quorum_ack(&self) -> Option<Instant> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.id) {
            return None;
        }
        self.inner.quorum_acked.lock().ok().and_then(|a| *a)
    }

    /// True if this member leads with a lease that holds by the clock right now: the leadership
    /// watch flips only when its task runs, which a stalled process (SIGSTOP, a VM pause) resumes
    /// after, so what a member reports about itself must not rest on the watch alone.
    pub fn leads_now(&self) -> bool {
        let Some(ack) = self.quorum_ack() else { return false };
        let sole_voter = {
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            let mut voters = m.membership().voter_ids();
            voters.next() == Some(self.inner.id) && voters.next().is_none()
        };
        sole_voter || ack.elapsed() < self.inner.lease
    }

    /// The current term and leader, as this member knows them.
    pub fn term_and_leader(&self) -> (u64, Option<NodeId>) {
        let m = self.inner.raft.metrics().borrow().clone();
        (m.current_term, m.current_leader)
    }

    /// Sets what this member answers, while it leads, to [`RaftNode::ask_leader`] calls.
    pub fn set_leader_handler(&self, handler: LeaderHandler) {
        if let Ok(mut h) = self.inner.leader_handler.lock() {
            *h = Some(handler);
        }
    }

    /// One call to the current leader's [`LeaderHandler`], straight to it (never forwarded), or
    /// locally when this member leads. Fails when no leader is known, the leader does not lead
    /// (its lease lapsed) or does not answer within `ttl`.
    pub async fn ask_leader(&self, body: bytes::Bytes, ttl: Duration) -> Result<bytes::Bytes, Error> {
        // A member whose core has stopped must not renew anything on the strength of the
        // leader its last metrics named.
        if let Some(reason) = self.inner.failure.borrow().as_ref() {
            return Err(Error::Raft(format!("the raft core stopped: {reason}")));
        }
        let (leader, addr) = self.inner.leader_addr().ok_or(Error::NoLeader)?;
        if leader == self.inner.id {
            return self.inner.leader_call(body).await.map_err(status_error);
        }
        self.inner
            .channels
            .call(&addr, network::LEADER_CALL, body, ttl)
            .await
            .map_err(status_error)
    }

    /// Before a leader stops: asks the most caught-up other voter to stand for election at once
    /// and waits, within `timeout`, until another member leads. openraft 0.9 has no leadership
    /// transfer, but a leader's own vote is not refreshed by its heartbeats, so once it has led
    /// for `election_timeout_max` it grants a newer term's vote; the other voters still refuse
    /// (their lease from this leader is fresh), and this vote is the one the candidate needs in a
    /// group of two or three. The group so skips the leaderless election timeout. With more
    /// voters the others' refusals would only depose this leader, so it does nothing and the
    /// group elects as after a failure. Returns the new leader, or `None` when this member is
    /// not the leader, there is no other voter, or there are more than three. After a hand-off
    /// this member never stands for election again (it is leaving).
    pub async fn hand_off_leadership(&self, timeout: Duration) -> Result<Option<NodeId>, Error> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.inner.id) {
            return Ok(None);
        }
        let membership = m.membership_config.membership().clone();
        if membership.voter_ids().count() > 3 {
            tracing::info!("more than three voters: leaving without a leadership hand-off");
            return Ok(None);
        }
        // This leader's own vote is free only once it has led for election_timeout_max.
        let since = self.inner.leader_since.lock().ok().and_then(|s| *s).map(|(_, at)| at);
        if let Some(at) = since {
            let free = at + self.inner.election_timeout_max + Duration::from_millis(20);
            tokio::time::sleep_until(tokio::time::Instant::from_std(free)).await;
        }
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map(|l| l.index)
        };
        let Some(target) = membership
            .voter_ids()
            .filter(|id| *id != self.inner.id)
            .max_by_key(|id| matched(id))
        else {
            return Ok(None);
        };
        let Some(addr) = membership.get_node(&target).map(|n| n.addr.clone()) else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        let mut metrics = self.inner.raft.metrics();
        while Instant::now() < deadline {
            tracing::info!(to = target, "handing leadership over before stopping");
            if let Err(e) = self
                .inner
                .channels
                .call(
                    &addr,
                    network::CAMPAIGN,
                    bytes::Bytes::new(),
                    Duration::from_millis(500),
                )
                .await
            {
                return Err(Error::Peer {
                    addr,
                    message: format!("leadership hand-off: {}", e.message()),
                });
            }
            let round = (Instant::now() + Duration::from_millis(300)).min(deadline);
            let moved = tokio::time::timeout_at(
                tokio::time::Instant::from_std(round),
                metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != self.inner.id)),
            )
            .await;
            if let Ok(Ok(m)) = moved {
                let leader = m.current_leader;
                drop(m);
                self.inner.stands.store(false, Ordering::Release);
                self.inner.raft.runtime_config().elect(false);
                tracing::info!(new_leader = ?leader, "leadership handed over");
                return Ok(leader);
            }
        }
        Err(Error::Raft(format!(
            "member {target} did not take over the leadership in {timeout:?}"
        )))
    }

    /// Start a new group with this member as its only voter, unless the storage already
    /// belongs to a group. Returns whether it initialized.
    pub async fn bootstrap(&self) -> Result<bool, Error> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.inner.id, self.inner.member.clone())]);
        raft.initialize(members).await.map_err(|e| Error::Raft(e.to_string()))?;
        tracing::info!(
            id = self.inner.id,
            "initialized a new raft group with this member as its first voter"
        );
        Ok(true)
    }

    /// Whether this member's storage names it in a membership already.
    /// Whether this member votes, as the membership config it knows says.
    pub fn is_voter(&self) -> bool {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.inner.id)
    }

    pub fn is_member(&self) -> bool {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.inner.id)
            .is_some()
    }

    /// Ask the group, through any of `seeds`, to add this member; retries until it is in or
    /// shutdown. A member already in the membership does nothing.
    pub async fn join(&self, seeds: &[String], learner_only: bool) -> Result<(), Error> {
        let req = JoinRequest {
            id: self.inner.id,
            member: self.inner.member.clone(),
            learner_only,
        };
        let body = network::encode(&req).map_err(|s| Error::Raft(s.message().to_string()))?;
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            // In as asked: a voter unless `learner_only`. A join whose answer was lost after the
            // leader added the learner (but before it promoted it) must ask again, not stop there.
            if self.is_member() && (learner_only || self.is_voter()) {
                return Ok(());
            }
            for seed in seeds {
                match self
                    .inner
                    .channels
                    .call(seed, network::JOIN, body.clone(), Duration::from_secs(60))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(id = self.inner.id, via = %seed, "joined the raft group");
                        return Ok(());
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        return Err(Error::Refused(s.message().to_string()));
                    }
                    Err(s) => tracing::warn!(via = %seed, error = %s.message(), "join failed; will retry"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return Err(Error::Raft("shut down before joining".into())),
            }
        }
    }

    /// Propose a batch on this member, which must be the leader.
    pub async fn propose(&self, changes: Vec<Change<V>>) -> Result<Applied, Error> {
        let resp = self
            .inner
            .raft
            .client_write(Batch::new(changes))
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(resp.data)
    }

    /// Propose a conditional batch on this member, which must be the leader: it applies only if
    /// the keys in `expect` hold exactly those values then ([`Applied::rejected`] otherwise).
    pub async fn propose_if(&self, expect: Vec<Change<V>>, changes: Vec<Change<V>>) -> Result<Applied, Error> {
        let resp = self
            .inner
            .raft
            .client_write(Batch { changes, expect })
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(resp.data)
    }

    /// Propose a batch through the leader, wherever it is.
    pub async fn write(&self, changes: Vec<Change<V>>) -> Result<Applied, Error> {
        self.write_batch(Batch::new(changes)).await
    }

    /// A conditional batch ([`RaftNode::propose_if`]) through the leader, wherever it is.
    pub async fn write_if(&self, expect: Vec<Change<V>>, changes: Vec<Change<V>>) -> Result<Applied, Error> {
        self.write_batch(Batch { changes, expect }).await
    }

    async fn write_batch(&self, batch: Batch<V>) -> Result<Applied, Error> {
        let body = network::encode(&batch).map_err(|s| Error::Raft(s.message().to_string()))?;
        let reply = self
            .inner
            .handle_app(network::WRITE, body, false)
            .await
            .map_err(status_error)?;
        network::decode(&reply).map_err(|s| Error::Raft(s.message().to_string()))
    }

    /// Add a member through the leader (as learner, then voter unless `learner_only`).
    pub async fn add_member(&self, id: NodeId, member: Member, learner_only: bool) -> Result<(), Error> {
        let req = JoinRequest {
            id,
            member,
            learner_only,
        };
        let body = network::encode(&req).map_err(|s| Error::Raft(s.message().to_string()))?;
        self.inner
            .handle_app(network::JOIN, body, false)
            .await
            .map_err(status_error)?;
        Ok(())
    }

    /// Remove a member through the leader. A member that does not answer needs `force`.
    pub async fn remove_member(&self, id: NodeId, force: bool) -> Result<(), Error> {
        let body = network::encode(&RemoveRequest { id, force }).map_err(|s| Error::Raft(s.message().to_string()))?;
        self.inner
            .handle_app(network::REMOVE, body, false)
            .await
            .map_err(status_error)?;
        Ok(())
    }

    pub fn status(&self) -> NodeStatus {
        self.inner.status()
    }

    /// Every member of the membership, asked over the Health RPC (this member answers locally).
    /// The members in the committed membership config, as this node knows it. No network.
    pub fn members(&self) -> Vec<(NodeId, Member)> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect()
    }

    pub async fn cluster(&self) -> Vec<MemberView> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let mut asks = Vec::new();
        for (id, member) in m.membership().nodes() {
            let (id, member, voter) = (*id, member.clone(), voters.contains(id));
            let inner = self.inner.clone();
            asks.push(async move {
                let (status, error) = if id == inner.id {
                    (Some(inner.status()), None)
                } else {
                    match inner.probe(&member.addr).await {
                        Ok(s) => (Some(s), None),
                        Err(e) => (None, Some(e)),
                    }
                };
                MemberView {
                    id,
                    member,
                    voter,
                    status,
                    error,
                }
            });
        }
        futures_util::future::join_all(asks).await
    }

    /// Stop the server and openraft.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

fn status_error(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::FailedPrecondition => Error::Refused(s.message().to_string()),
        tonic::Code::Unavailable => Error::NoLeader,
        _ => Error::Raft(s.message().to_string()),
    }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl<V: Value> Inner<V> {
    /// Whether this member would vote for `req`'s candidate now (see [`elect_after_pre_vote`]): no
    /// leader it follows has called within `election_timeout_min`, it does not lead with a quorum
    /// heard from that recently, and the candidate's log is at least as long as its own.
    pub(crate) fn grant_pre_vote(&self, req: &network::PreVoteRequest) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let granted = pre_vote_granted(
            Instant::now(),
            self.election_timeout_min,
            PreVoteView {
                leads: m.state == ServerState::Leader,
                // A new leader counts from its election until a quorum's first acknowledgement.
                quorum_acked: {
                    let acked = self.quorum_acked.lock().ok().and_then(|a| *a);
                    let since = self.leader_since.lock().ok().and_then(|s| *s).map(|(_, at)| at);
                    acked.max(since)
                },
                leader_called: self.last_append.lock().ok().and_then(|t| *t),
                last_log_index: m.last_log_index,
            },
            req.last_log_index,
        );
        tracing::debug!(candidate = req.candidate, granted, "pre-vote");
        granted
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        NodeStatus {
            id: self.id,
            addr: self.member.addr.clone(),
            admin: self.member.admin.clone(),
            role: role(m.state).to_string(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            config_version: self.version.load(Ordering::Acquire),
            quorum_contact: *self.contact.borrow(),
            voters,
            learners,
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
    }

    pub(crate) async fn probe(&self, addr: &str) -> Result<NodeStatus, String> {
        let bytes = self
            .channels
            .call(addr, network::HEALTH, bytes::Bytes::new(), Duration::from_millis(800))
            .await
            .map_err(|s| s.message().to_string())?;
        network::decode(&bytes).map_err(|s| s.message().to_string())
    }

    /// A member's call to the leader's application handler: answered only while leading.
    pub(crate) async fn leader_call(&self, body: bytes::Bytes) -> Result<bytes::Bytes, tonic::Status> {
        // The lease flag, and openraft's own state right now: a leader that granted a newer
        // term's vote is a follower from that instant, before the flag's next update.
        let still_leader = {
            let m = self.raft.metrics().borrow().clone();
            m.state == ServerState::Leader && m.current_leader == Some(self.id)
        };
        if !*self.leading.borrow() || !still_leader {
            return Err(tonic::Status::unavailable("not leading"));
        }
        let handler = self.leader_handler.lock().ok().and_then(|h| h.clone());
        let Some(handler) = handler else {
            return Err(tonic::Status::unavailable("no leader handler is set"));
        };
        handler(body).await.map_err(tonic::Status::aborted)
    }

    fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Join, Remove and Write: handled here on the leader, otherwise forwarded to it once.
    pub(crate) async fn handle_app(
        &self,
        path: &'static str,
        body: bytes::Bytes,
        forwarded: bool,
    ) -> Result<bytes::Bytes, tonic::Status> {
        let Some((leader, addr)) = self.leader_addr() else {
            return Err(tonic::Status::unavailable("no leader is known yet"));
        };
        if leader != self.id {
            if forwarded {
                return Err(tonic::Status::unavailable(format!(
                    "not the leader; member {leader} is"
                )));
            }
            return self
                .channels
                .call_forwarded(&addr, path, body, Duration::from_secs(60))
                .await;
        }
        match path {
            network::JOIN => {
                let req: JoinRequest = network::decode(&body)?;
                self.add_local(req).await?;
                Ok(bytes::Bytes::new())
            }
            network::REMOVE => {
                let req: RemoveRequest = network::decode(&body)?;
                self.remove_local(req).await?;
                Ok(bytes::Bytes::new())
            }
            network::WRITE => {
                let batch: Batch<V> = network::decode(&body)?;
                let resp = self
                    .raft
                    .client_write(batch)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                network::encode(&resp.data)
            }
            _ => Err(tonic::Status::unimplemented(path)),
        }
    }

    /// How many of `voters` answer (this member always does).
    async fn reachable(&self, voters: &BTreeSet<NodeId>, nodes: &BTreeMap<NodeId, Member>) -> usize {
        let asks = voters.iter().map(|id| async move {
            if *id == self.id {
                return true;
            }
            match nodes.get(id) {
                Some(n) => self.probe(&n.addr).await.is_ok(),
                None => false,
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    async fn add_local(&self, req: JoinRequest) -> Result<(), tonic::Status> {
        let _one_at_a_time = self.change_lock.lock().await;
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        if let Some(existing) = membership.get_node(&req.id)
            && existing.addr != req.member.addr
        {
            return Err(tonic::Status::failed_precondition(format!(
                "member {} is already in the group at {}; remove it first to re-add it at {}",
                req.id, existing.addr, req.member.addr
            )));
        }
        let is_voter = membership.voter_ids().any(|v| v == req.id);
        if is_voter {
            return Ok(());
        }
        tracing::info!(id = req.id, addr = %req.member.addr, "adding member as a learner");
        self.raft
            .add_learner(req.id, req.member.clone(), true)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        if req.learner_only {
            return Ok(());
        }
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        voters.insert(req.id);
        let mut nodes: BTreeMap<NodeId, Member> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        nodes.insert(req.id, req.member.clone());
        let up = self.reachable(&voters, &nodes).await;
        if up * 2 <= voters.len() {
            return Err(tonic::Status::failed_precondition(format!(
                "adding voter {} would leave {up} of {} voters reachable, short of a quorum; it stays a learner",
                req.id,
                voters.len()
            )));
        }
        tracing::info!(id = req.id, "promoting learner to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(())
    }

    async fn remove_local(&self, req: RemoveRequest) -> Result<(), tonic::Status> {
        let _one_at_a_time = self.change_lock.lock().await;
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let Some(node) = membership.get_node(&req.id).cloned() else {
            return Err(tonic::Status::failed_precondition(format!(
                "{} is not a member of the group",
                req.id
            )));
        };
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let was_voter = voters.remove(&req.id);
        if was_voter && voters.is_empty() {
            return Err(tonic::Status::failed_precondition(format!(
                "{} is the last voter; removing it would leave no group",
                req.id
            )));
        }
        if !req.force && req.id != self.id && self.probe(&node.addr).await.is_err() {
            return Err(tonic::Status::failed_precondition(format!(
                "member {} at {} does not answer; to remove a dead member, pass force",
                req.id, node.addr
            )));
        }
        if was_voter {
            let nodes: BTreeMap<NodeId, Member> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
            let up = self.reachable(&voters, &nodes).await;
            if up * 2 <= voters.len() {
                return Err(tonic::Status::failed_precondition(format!(
                    "removing {} would leave {up} of {} remaining voters reachable, short of a quorum",
                    req.id,
                    voters.len()
                )));
            }
        }
        tracing::info!(id = req.id, force = req.force, "removing member");
        let change = if was_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([req.id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([req.id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(())
    }
}

/// Keeps `leading` and `contact` true only while they hold, including when no event arrives
/// (a partitioned leader hears nothing, so its lease must run out by the clock).
async fn watch_leadership<V: Value>(inner: Arc<Inner<V>>, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = inner.raft.metrics();
    let mut last_ack: Option<Instant> = None;
    let mut last_leader = None;
    let mut last_snapshot = None;
    let contact_window = inner.lease * 6;
    // Whether the metrics were published since the last look. `millis_since_quorum_ack` is an
    // age as of its publication: re-deriving the ack instant from a value openraft has not
    // republished (its core stalled on a slow disk, say) would keep a stale leader "leading".
    let mut fresh = true;
    loop {
        let now = Instant::now();
        let m = metrics.borrow_and_update().clone();
        match &m.running_state {
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => return core_failed(&inner, fatal.to_string()),
            Ok(()) => {}
        }
        let is_leader = m.state == ServerState::Leader && m.current_leader == Some(inner.id);
        let sole_voter = {
            let mut voters = m.membership_config.membership().voter_ids();
            voters.next() == Some(inner.id) && voters.next().is_none()
        };
        if is_leader {
            if fresh && let Some(ms) = m.millis_since_quorum_ack {
                let at = now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                last_ack = Some(last_ack.map_or(at, |prev: Instant| prev.max(at)));
            }
            if let Ok(mut since) = inner.leader_since.lock()
                && since.is_none_or(|(term, _)| term != m.current_term)
            {
                *since = Some((m.current_term, now));
            }
        } else {
            last_ack = None;
            if let Ok(mut since) = inner.leader_since.lock() {
                *since = None;
            }
        }
        if let Ok(mut a) = inner.quorum_acked.lock() {
            *a = if sole_voter && is_leader { Some(now) } else { last_ack };
        }
        let lease_ok = sole_voter || last_ack.is_some_and(|t| now.duration_since(t) < inner.lease);
        let leading = is_leader && lease_ok;
        let heard = inner
            .last_append
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| now.duration_since(t) < contact_window);
        let contact = leading || (!is_leader && m.current_leader.is_some() && heard);
        inner
            .leading
            .send_if_modified(|v| std::mem::replace(v, leading) != leading);
        inner
            .contact
            .send_if_modified(|v| std::mem::replace(v, contact) != contact);
        if m.current_leader != last_leader {
            if m.current_leader.is_some() {
                inner.stats.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            last_leader = m.current_leader;
        }
        if m.snapshot != last_snapshot {
            if m.snapshot.is_some() {
                inner.stats.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            last_snapshot = m.snapshot;
        }
        fresh = tokio::select! {
            r = metrics.changed() => match r {
                Ok(()) => true,
                // The core's task ended without publishing why (a panic).
                Err(_) if !*shutdown.borrow() => return core_failed(&inner, "the raft core ended".into()),
                Err(_) => return,
            },
            _ = tokio::time::sleep(tick / 2) => false,
            _ = shutdown.changed() => return,
        };
    }
}

/// The core stopped by itself: this member no longer leads nor hears a leader, whatever the
/// metrics it last published said, and [`RaftNode::failed`] resolves.
fn core_failed<V: Value>(inner: &Inner<V>, reason: String) {
    tracing::error!(%reason, "the raft core stopped");
    inner.leading.send_replace(false);
    inner.contact.send_replace(false);
    inner.failure.send_replace(Some(reason));
}

/// What a member knows when asked for a pre-vote.
#[derive(Debug, Clone, Copy)]
struct PreVoteView {
    /// It is the leader.
    leads: bool,
    /// While leader: the latest heartbeat a quorum acknowledged.
    quorum_acked: Option<Instant>,
    /// The latest call of a leader it follows.
    leader_called: Option<Instant>,
    last_log_index: Option<u64>,
}

/// The pre-vote rule: refuse while a leader is known to be alive (a leader with a quorum's
/// acknowledgement, or a follower called by its leader, within `fresh`), otherwise grant to a
/// candidate whose log is not shorter.
fn pre_vote_granted(now: Instant, fresh: Duration, me: PreVoteView, candidate_last_log: Option<u64>) -> bool {
    let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < fresh);
    if me.leads {
        return !recent(me.quorum_acked);
    }
    !recent(me.leader_called) && candidate_last_log >= me.last_log_index
}

/// A duration drawn uniformly from `[min, max)` (`min` if the range is empty), from the standard
/// library's randomly keyed hasher: election timeouts need spread, not cryptographic randomness.
fn draw_timeout(min: Duration, max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let span = max.saturating_sub(min).as_micros() as u64;
    if span == 0 {
        return min;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    min + Duration::from_micros(h.finish() % span)
}

/// The election timer, in place of openraft's (`enable_elect: false`): a voter that has heard
/// from no leader for a timeout drawn from `[max, 2 max - min)` (of the election timeouts) first
/// asks every other voter for a pre-vote, and stands for election only if, with its own, a
/// majority would vote for it. A voter grants one when it has not heard from a leader for
/// `election_timeout_min` itself and the candidate's log is not shorter than its own (see
/// [`Inner::grant_pre_vote`]). A member cut off from the group so never raises its term, and does
/// not depose the leader when it comes back, which a plain Raft member does.
///
/// Why not sooner than `max`: openraft voters refuse every candidate for `election_timeout_max`
/// after a leader's heartbeat (the lease the VIP fence rests on), so an earlier attempt would
/// only spend a term, and the two followers of a dead leader would then split their votes.
async fn elect_after_pre_vote<V: Value>(inner: Arc<Inner<V>>, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let tick = (tick / 2).max(Duration::from_millis(5));
    let (min, max) = (inner.election_timeout_min, inner.election_timeout_max);
    let draw = || draw_timeout(max, max + max.saturating_sub(min));
    let mut timeout = draw();
    // The start of the current wait: the latest of the start, a leader's call, a change of this
    // member's vote or of the leader it knows (a vote it granted, an election it saw), an attempt.
    let mut since = Instant::now();
    let mut seen = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        if let Some(heard) = inner.last_append.lock().ok().and_then(|t| *t) {
            since = since.max(heard);
        }
        let m = inner.raft.metrics().borrow().clone();
        let now_seen = Some((m.vote, m.current_leader));
        if seen != now_seen {
            seen = now_seen;
            since = now;
        }
        let membership = m.membership_config.membership().clone();
        let voter = membership.voter_ids().any(|v| v == inner.id);
        if m.state == ServerState::Leader || !voter || !inner.stands.load(Ordering::Acquire) {
            since = now;
            continue;
        }
        if now.duration_since(since) < timeout {
            continue;
        }
        since = now;
        timeout = draw();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let request = network::PreVoteRequest {
            candidate: inner.id,
            last_log_index: m.last_log_index,
        };
        let Ok(body) = network::encode(&request) else { continue };
        let mut asks: futures_util::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|v| **v != inner.id)
            .filter_map(|v| {
                let addr = membership.get_node(v)?.addr.clone();
                let (channels, body) = (inner.channels.clone(), body.clone());
                let ttl = inner.election_timeout_min;
                Some(async move {
                    let answer = channels.call(&addr, network::PRE_VOTE, body, ttl).await;
                    answer.ok().and_then(|b| network::decode::<bool>(&b).ok()) == Some(true)
                })
            })
            .collect();
        // Counting stops at a majority: a voter that does not answer (the one that is down) is
        // not waited for.
        let mut granted = 1;
        while granted * 2 <= voters.len()
            && let Some(yes) = futures_util::StreamExt::next(&mut asks).await
        {
            granted += usize::from(yes);
        }
        drop(asks);
        if granted * 2 <= voters.len() {
            tracing::debug!(
                granted,
                voters = voters.len(),
                term = m.current_term,
                "pre-vote lost: not standing for election"
            );
            continue;
        }
        tracing::info!(
            granted,
            voters = voters.len(),
            term = m.current_term,
            "no leader heard from: standing for election"
        );
        if let Err(e) = inner.raft.trigger().elect().await {
            tracing::warn!(error = %e, "could not start an election");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_millis(150);

    fn follower(called_ago: Option<u64>, last: Option<u64>, now: Instant) -> PreVoteView {
        PreVoteView {
            leads: false,
            quorum_acked: None,
            leader_called: called_ago.map(|ms| now - Duration::from_millis(ms)),
            last_log_index: last,
        }
    }

    #[test]
    fn a_follower_refuses_while_its_leader_calls() {
        let now = Instant::now();
        assert!(!pre_vote_granted(now, FRESH, follower(Some(10), Some(5), now), Some(9)));
        assert!(!pre_vote_granted(
            now,
            FRESH,
            follower(Some(149), Some(5), now),
            Some(9)
        ));
        // Silent for the timeout: grants to a candidate with as long a log, not a shorter one.
        assert!(pre_vote_granted(now, FRESH, follower(Some(150), Some(5), now), Some(5)));
        assert!(pre_vote_granted(now, FRESH, follower(None, Some(5), now), Some(9)));
        assert!(!pre_vote_granted(now, FRESH, follower(None, Some(5), now), Some(4)));
        assert!(!pre_vote_granted(now, FRESH, follower(None, Some(5), now), None));
        assert!(pre_vote_granted(now, FRESH, follower(None, None, now), None));
    }

    #[test]
    fn a_leader_refuses_while_a_quorum_acknowledges_it() {
        let now = Instant::now();
        let leader = |acked_ago: Option<u64>| PreVoteView {
            leads: true,
            quorum_acked: acked_ago.map(|ms| now - Duration::from_millis(ms)),
            leader_called: None,
            last_log_index: Some(5),
        };
        assert!(!pre_vote_granted(now, FRESH, leader(Some(20)), Some(9)));
        // A leader cut off from its quorum lets the others move on.
        assert!(pre_vote_granted(now, FRESH, leader(Some(400)), Some(5)));
        assert!(pre_vote_granted(now, FRESH, leader(None), Some(5)));
    }

    #[test]
    fn election_timeouts_spread_over_their_range() {
        let (min, max) = (Duration::from_millis(150), Duration::from_millis(300));
        let drawn: Vec<Duration> = (0..200).map(|_| draw_timeout(min, max)).collect();
        assert!(drawn.iter().all(|d| *d >= min && *d < max), "{drawn:?}");
        let distinct: std::collections::BTreeSet<Duration> = drawn.iter().copied().collect();
        assert!(distinct.len() > 100, "only {} distinct timeouts", distinct.len());
        assert_eq!(draw_timeout(min, min), min);
    }
}
