//! Peer RPC over tonic gRPC: the openraft network (AppendEntries, Vote, streamed snapshots) and the application calls.
//!
//! Each gRPC message is JSON, except the snapshot stream, whose first message is a JSON header
//! and the rest raw chunks of the snapshot document. One RPC carries the whole snapshot, so a
//! large one is bounded by the replication's cancellation, not by a per-chunk timeout.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::codec::BytesCodec;
use crate::stats::Stats;
use crate::tls::PeerTls;
use crate::types::{Member, NodeId, TypeConfig, Value};

pub(crate) const SERVICE: &str = "raftgate.raft.v1.Raft";
pub(crate) const APPEND: &str = "/raftgate.raft.v1.Raft/AppendEntries";
pub(crate) const VOTE: &str = "/raftgate.raft.v1.Raft/Vote";
pub(crate) const SNAPSHOT: &str = "/raftgate.raft.v1.Raft/InstallSnapshot";
pub(crate) const JOIN: &str = "/raftgate.raft.v1.Raft/Join";
pub(crate) const REMOVE: &str = "/raftgate.raft.v1.Raft/Remove";
pub(crate) const WRITE: &str = "/raftgate.raft.v1.Raft/Write";
pub const HEALTH: &str = "/raftgate.raft.v1.Raft/Health";
pub(crate) const LEADER_CALL: &str = "/raftgate.raft.v1.Raft/LeaderCall";
pub(crate) const CAMPAIGN: &str = "/raftgate.raft.v1.Raft/Campaign";
pub(crate) const PRE_VOTE: &str = "/raftgate.raft.v1.Raft/PreVote";

/// A pre-vote (Raft thesis §9.6): "would you vote for me?", asked before a member stands for
/// election, so a member cut off from the group does not raise its term and, on its return,
/// depose a leader that was fine. The answer is a JSON `bool`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PreVoteRequest {
    pub(crate) candidate: NodeId,
    /// The index of the candidate's last log entry.
    pub(crate) last_log_index: Option<u64>,
}

/// Set on a call a follower forwards to the leader.
pub(crate) const FORWARDED: &str = "x-raftgate-forwarded";

/// The largest gRPC message: a first sync of a large cluster is one log entry of several
/// megabytes (tonic's default limit is 4 MiB).
pub(crate) const MAX_MESSAGE: usize = 512 << 20;

/// Snapshot chunks on the wire.
const CHUNK: usize = 1 << 20;

/// The first message of an InstallSnapshot stream.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHeader {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) meta: SnapshotMeta<NodeId, Member>,
}

/// Ask the leader to add a member (as a learner, then as a voter).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub member: Member,
    /// Stop at learner; don't promote to voter.
    #[serde(default)]
    pub learner_only: bool,
}

/// Ask the leader to remove a member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: NodeId,
    /// Remove it even though it cannot be reached (a dead voter).
    #[serde(default)]
    pub force: bool,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Bytes, Status> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Status::internal(format!("encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(b).map_err(|e| Status::invalid_argument(format!("decode: {e}")))
}

/// Channels to peers, shared by openraft's replication and the application calls, one per address.
///
/// A call that gets no answer in time drops its channel: the next call opens a new connection. A
/// connection that lived through a partition is stuck in TCP's retransmission backoff (seconds after
/// a few lost tries) and would carry nothing for that long after the network heals; a new one
/// connects at once (the chaos scenario `flapping link` found this).
#[derive(Clone)]
pub(crate) struct Channels {
    tls: Option<PeerTls>,
    /// Per address, the channel and the generation it was made in (so that only the channel a
    /// timed-out call used is dropped, not a newer one).
    cache: Arc<Mutex<HashMap<String, (Channel, u64)>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Channels {
    pub(crate) fn new(tls: Option<PeerTls>) -> Self {
        Self {
            tls,
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// A lazily connecting channel to `addr` (`host:port`).
    pub(crate) fn get(&self, addr: &str) -> Result<Channel, Status> {
        self.get_tagged(addr).map(|(ch, _)| ch)
    }

    /// [`Channels::get`], with the channel's generation for [`Channels::drop_stale`].
    fn get_tagged(&self, addr: &str) -> Result<(Channel, u64), Status> {
        if let Ok(cache) = self.cache.lock()
            && let Some((ch, generation)) = cache.get(addr)
        {
            return Ok((ch.clone(), *generation));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.client())
                .map_err(|e| Status::internal(format!("peer TLS for {addr}: {e}")))?;
        }
        let ch = ep.connect_lazy();
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut cache) = self.cache.lock() {
            // Two callers may race to make one; the first one cached wins.
            let (ch, generation) = cache.entry(addr.to_string()).or_insert((ch, generation));
            return Ok((ch.clone(), *generation));
        }
        Ok((ch, generation))
    }

    /// Drops `addr`'s channel if it is still the one of `generation`.
    fn drop_stale(&self, addr: &str, generation: u64) {
        if let Ok(mut cache) = self.cache.lock()
            && cache.get(addr).is_some_and(|(_, g)| *g == generation)
        {
            cache.remove(addr);
        }
    }

    /// One unary call with a deadline.
    pub(crate) async fn call(
        &self,
        addr: &str,
        path: &'static str,
        body: Bytes,
        ttl: Duration,
    ) -> Result<Bytes, Status> {
        self.call_with(addr, path, Request::new(body), ttl).await
    }

    /// A call a follower passes on to the leader; the leader never passes it on again.
    pub(crate) async fn call_forwarded(
        &self,
        addr: &str,
        path: &'static str,
        body: Bytes,
        ttl: Duration,
    ) -> Result<Bytes, Status> {
        let mut req = Request::new(body);
        req.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        self.call_with(addr, path, req, ttl).await
    }

    async fn call_with(
        &self,
        addr: &str,
        path: &'static str,
        req: Request<Bytes>,
        ttl: Duration,
    ) -> Result<Bytes, Status> {
        let (ch, generation) = self.get_tagged(addr)?;
        let fut = async move {
            let mut grpc = ready_client(ch, addr).await?;
            let resp = grpc
                .unary(req, http::uri::PathAndQuery::from_static(path), BytesCodec)
                .await?;
            Ok(resp.into_inner())
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.drop_stale(addr, generation);
                Err(Status::deadline_exceeded(format!("{addr}: no answer in {ttl:?}")))
            }
        }
    }
}

/// Ask the member at `addr` for its status, as a peer would (with `tls`, or in plain text).
pub async fn probe(addr: &str, tls: Option<PeerTls>) -> Result<crate::NodeStatus, crate::Error> {
    let peer = |message: String| crate::Error::Peer {
        addr: addr.to_string(),
        message,
    };
    let bytes = Channels::new(tls)
        .call(addr, HEALTH, Bytes::new(), Duration::from_secs(2))
        .await
        .map_err(|s| peer(s.message().to_string()))?;
    decode(&bytes).map_err(|s| peer(s.message().to_string()))
}

/// A gRPC client on `ch` with our message limit, once the channel can take a call.
async fn ready_client(ch: Channel, addr: &str) -> Result<tonic::client::Grpc<Channel>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("{addr}: {e}")))?;
    Ok(grpc)
}

/// openraft's network factory: one [`Peer`] per replication target.
pub struct Network<V> {
    id: NodeId,
    channels: Channels,
    stats: Arc<Stats>,
    _v: PhantomData<fn() -> V>,
}

impl<V> Network<V> {
    pub(crate) fn new(id: NodeId, channels: Channels, stats: Arc<Stats>) -> Self {
        Self {
            id,
            channels,
            stats,
            _v: PhantomData,
        }
    }
}

impl<V> std::fmt::Debug for Network<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("id", &self.id).finish()
    }
}

impl<V: Value> RaftNetworkFactory<TypeConfig<V>> for Network<V> {
    type Network = Peer<V>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer<V> {
        Peer {
            id: self.id,
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            stats: self.stats.clone(),
            _v: PhantomData,
        }
    }
}

/// The client side of one replication stream.
pub struct Peer<V> {
    id: NodeId,
    target: NodeId,
    addr: String,
    channels: Channels,
    stats: Arc<Stats>,
    _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for Peer<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .finish()
    }
}

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, Member, E>;

impl<V: Value> Peer<V> {
    fn status_error<E: std::error::Error>(&self, action: RPCTypes, ttl: Duration, s: Status) -> RpcErr<E> {
        match s.code() {
            Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            }),
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
            _ => RPCError::Network(NetworkError::new(&s)),
        }
    }

    async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let body = encode(req).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let bytes = self
            .channels
            .call(&self.addr, path, body, ttl)
            .await
            .map_err(|s| self.status_error(action, ttl, s))?;
        let reply: Result<Resp, RaftError<NodeId>> =
            decode(&bytes).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<V: Value> RaftNetwork<TypeConfig<V>> for Peer<V> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<V>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let started = std::time::Instant::now();
        let r = self.unary(APPEND, RPCTypes::AppendEntries, &rpc, &option).await;
        if r.is_ok() {
            self.stats.append_latency.observe(started.elapsed());
        }
        r
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.unary(VOTE, RPCTypes::Vote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig<V>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig<V>, Fatal<NodeId>>> {
        let net = |s: Status| StreamingError::Network(NetworkError::new(&s));
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(net)?;
        let data = Bytes::from(*snapshot.snapshot);
        let mut messages = vec![header];
        let mut at = 0;
        while at < data.len() {
            let end = (at + CHUNK).min(data.len());
            messages.push(data.slice(at..end));
            at = end;
        }
        let ch = self.channels.get(&self.addr).map_err(net)?;
        let addr = self.addr.clone();
        let send = async move {
            let mut grpc = ready_client(ch, &addr).await?;
            let resp = grpc
                .client_streaming(
                    Request::new(futures_util::stream::iter(messages)),
                    http::uri::PathAndQuery::from_static(SNAPSHOT),
                    BytesCodec,
                )
                .await?;
            Ok::<_, Status>(resp.into_inner())
        };
        let bytes = tokio::select! {
            r = send => r.map_err(|s| match s.code() {
                Code::Unavailable => StreamingError::Unreachable(Unreachable::new(&s)),
                _ => net(s),
            })?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = decode(&bytes).map_err(net)?;
        reply.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
