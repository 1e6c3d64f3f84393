//! The UDP shell: one socket per port, a connected upstream socket and a relay task per
//! client session, and a timer tick that expires idle sessions through the pure table.
//!
//! The listener task never waits on a session: it hands each datagram to the session's
//! task through a small bounded queue (a full queue drops the datagram, as a busy network
//! would). The session task opens its upstream socket, sends what it is handed, and sends
//! every reply back to the client through the listener's socket.

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Ctx;
use super::L4Error;
use super::metrics::ServiceStats;
use super::resolve;
use super::sessions::Outcome;
use super::sessions::SessionTable;
use crate::metrics::UpstreamErrorKind;
use crate::model::Endpoint;
use crate::pool::ConnectError;
use crate::server::draining;
use crate::upstream::EndpointState;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued per session before more are dropped.
const QUEUE: usize = 64;

/// The table and each live session's relay, by session id.
#[derive(Debug)]
struct State {
    table: SessionTable,
    relays: HashMap<u64, Relay>,
}

/// The listener's side of a session.
#[derive(Debug)]
struct Relay {
    client: SocketAddr,
    endpoint: Endpoint,
    /// Datagrams for the session's task; dropping it ends the task.
    queue: mpsc::Sender<Bytes>,
}

impl State {
    fn publish(&self, stats: &ServiceStats) {
        stats
            .udp_sessions_active
            .store(self.table.len() as u64, Ordering::Relaxed);
    }
}

/// Relays datagrams on `socket` for service `key` until `stop` flips.
pub(super) async fn serve(socket: UdpSocket, key: String, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let stats = ctx.metrics.service(&key);
    let state = Arc::new(Mutex::new(State {
        table: SessionTable::new(ctx.settings.max_udp_sessions, ctx.settings.udp_session_timeout),
        relays: HashMap::new(),
    }));
    let mut tasks = JoinSet::new();
    // A few ticks per timeout: a session lives at most a quarter timeout too long.
    let every = (ctx.settings.udp_session_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut versions = ctx.dataplane.versions();
    let mut follow = true;
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, client)) => {
                    let payload = Bytes::copy_from_slice(&buf[..n]);
                    let port = Port { key: &key, ctx: &ctx, stats: &stats, socket: &socket, state: &state };
                    port.datagram(payload, client, &mut tasks);
                }
                Err(e) => {
                    tracing::debug!(service = %key, error = %e, "L4 UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = tick.tick() => {
                if let Ok(mut st) = state.lock() {
                    let expired = st.table.expire(Instant::now());
                    for (_, s) in &expired {
                        // Dropping the queue ends the session's task.
                        st.relays.remove(&s.id);
                    }
                    ServiceStats::add(&stats.udp_sessions_expired, expired.len() as u64);
                    st.publish(&stats);
                }
                while tasks.try_join_next().is_some() {}
            }
            r = versions.changed(), if follow => match r {
                Ok(()) => sweep(&key, &ctx, &stats, &state),
                Err(_) => follow = false,
            },
            _ = draining(&mut stop) => break,
        }
    }
    if let Ok(mut st) = state.lock() {
        st.table.clear();
        st.relays.clear();
        st.publish(&stats);
    }
    // Every task holds the socket; wait for them so the port is free when this returns.
    tasks.shutdown().await;
    tracing::debug!(service = %key, "L4 UDP listener stopped");
}

/// After a table change, ends the sessions whose endpoint the service no longer has, so
/// their clients' next datagrams go to a live endpoint (as kube-proxy clears UDP conntrack
/// entries of removed endpoints) instead of into the void until the session idles out.
fn sweep(key: &str, ctx: &Ctx, stats: &ServiceStats, state: &Mutex<State>) {
    let snap = ctx.dataplane.snapshot();
    let live: HashSet<&Endpoint> = snap
        .table
        .l4
        .get(key)
        .and_then(|svc| snap.upstreams.get(&svc.upstream))
        .map(|up| up.endpoints.iter().map(|e| &e.endpoint).collect())
        .unwrap_or_default();
    let Ok(mut st) = state.lock() else {
        return;
    };
    let gone: Vec<(u64, SocketAddr)> = st
        .relays
        .iter()
        .filter(|(_, r)| !live.contains(&r.endpoint))
        .map(|(id, r)| (*id, r.client))
        .collect();
    for (id, client) in gone {
        st.table.close(client, id);
        st.relays.remove(&id);
        tracing::debug!(service = %key, %client, "UDP session ended: its endpoint left the upstream");
    }
    st.publish(stats);
}

/// What handling one client datagram needs.
struct Port<'a> {
    key: &'a str,
    ctx: &'a Arc<Ctx>,
    stats: &'a Arc<ServiceStats>,
    socket: &'a Arc<UdpSocket>,
    state: &'a Arc<Mutex<State>>,
}

impl Port<'_> {
    /// Hands a client's datagram to its session, making the session first if it is new.
    fn datagram(&self, payload: Bytes, client: SocketAddr, tasks: &mut JoinSet<()>) {
        let Port {
            key,
            ctx,
            stats,
            socket,
            state,
        } = *self;
        ServiceStats::add(&stats.datagrams_in, 1);
        let Ok(mut st) = state.lock() else {
            return;
        };
        let now = Instant::now();
        let mut chosen: Option<(Arc<EndpointState>, String)> = None;
        let outcome = st.table.lookup_or_create(client, now, || {
            // Only a new session looks at the table: the service and endpoints of now.
            let snap = ctx.dataplane.snapshot();
            let svc = snap.table.l4.get(key)?;
            let up = snap.upstreams.get(&svc.upstream)?;
            let i = up.pick(now, &[])?;
            chosen = Some((up.endpoints.get(i)?.clone(), svc.upstream.clone()));
            Some(i)
        });
        match outcome {
            Outcome::Existing(s) => {
                if let Some(r) = st.relays.get(&s.id) {
                    let _ = r.queue.try_send(payload);
                }
            }
            Outcome::Created(s) => {
                let Some((endpoint, upstream)) = chosen else {
                    // `lookup_or_create` only creates after `pick` returned Some.
                    st.table.close(client, s.id);
                    return;
                };
                let (tx, rx) = mpsc::channel(QUEUE);
                let _ = tx.try_send(payload);
                st.relays.insert(
                    s.id,
                    Relay {
                        client,
                        endpoint: endpoint.endpoint.clone(),
                        queue: tx,
                    },
                );
                st.publish(stats);
                ServiceStats::add(&stats.udp_sessions_total, 1);
                let session = Session {
                    client,
                    id: s.id,
                    endpoint,
                    upstream,
                    listener: socket.clone(),
                    state: state.clone(),
                    ctx: ctx.clone(),
                    stats: stats.clone(),
                };
                tasks.spawn(session.run(rx));
            }
            Outcome::Full => ServiceStats::add(&stats.udp_sessions_refused, 1),
            Outcome::NoEndpoint => ServiceStats::add(&stats.no_endpoints, 1),
        }
    }
}

/// One client's session: the upstream side.
#[derive(Debug)]
struct Session {
    client: SocketAddr,
    id: u64,
    endpoint: Arc<EndpointState>,
    upstream: String,
    listener: Arc<UdpSocket>,
    state: Arc<Mutex<State>>,
    ctx: Arc<Ctx>,
    stats: Arc<ServiceStats>,
}

impl Session {
    async fn run(self, rx: mpsc::Receiver<Bytes>) {
        let _in_flight = self.endpoint.start();
        if let Err(e) = self.relay(rx).await {
            tracing::debug!(client = %self.client, endpoint = %self.endpoint.endpoint, error = %e, "L4 UDP session failed");
            if matches!(e.side(), crate::error::ErrorSide::Upstream) {
                let snap = self.ctx.dataplane.snapshot();
                if self.endpoint.record_failure(Instant::now(), &snap.table.settings) {
                    self.ctx.dataplane.metrics().upstream_ejected(&self.upstream);
                }
                ServiceStats::add(&self.stats.connect_errors, 1);
                self.ctx
                    .dataplane
                    .metrics()
                    .upstream_error(&self.upstream, UpstreamErrorKind::Connect);
            }
        }
        // Unless it already expired (or the listener closed), end it so the client's next
        // datagram picks an endpoint afresh.
        if let Ok(mut st) = self.state.lock()
            && st.table.close(self.client, self.id)
        {
            st.relays.remove(&self.id);
            st.publish(&self.stats);
        }
    }

    async fn relay(&self, mut rx: mpsc::Receiver<Bytes>) -> Result<(), L4Error> {
        let timeout = self.ctx.settings.connect_timeout;
        let addr = tokio::time::timeout(timeout, resolve(&self.endpoint.endpoint))
            .await
            .map_err(|_| ConnectError::Timeout {
                endpoint: self.endpoint.endpoint.to_string(),
                timeout,
            })??;
        let local: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let io = |source| ConnectError::Io {
            endpoint: self.endpoint.endpoint.to_string(),
            source,
        };
        let upstream = UdpSocket::bind(local).await.map_err(io)?;
        upstream.connect(addr).await.map_err(io)?;
        let mut first_sent: Option<Instant> = None;
        let mut answered = false;
        loop {
            tokio::select! {
                d = rx.recv() => {
                    // None: the table ended the session.
                    let Some(d) = d else { return Ok(()) };
                    upstream.send(&d).await.map_err(L4Error::upstream)?;
                    ServiceStats::add(&self.stats.bytes_in, d.len() as u64);
                    first_sent.get_or_insert_with(Instant::now);
                }
                // ERROR too: a refused datagram (ICMP port unreachable) wakes only error
                // interest, and the session must end now, not on the client's next datagram.
                r = upstream.ready(Interest::READABLE | Interest::ERROR) => {
                    let ready = r.map_err(L4Error::upstream)?;
                    if ready.is_error() {
                        let e = upstream.take_error().ok().flatten().unwrap_or_else(|| std::io::Error::other("upstream socket error"));
                        return Err(L4Error::upstream(e));
                    }
                    // Allocated per reply (without zeroing) so an idle session holds no buffer.
                    let mut buf = Vec::with_capacity(MAX_DATAGRAM);
                    let n = match upstream.try_recv_buf(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(L4Error::upstream(e)),
                    };
                    let now = Instant::now();
                    if !answered {
                        answered = true;
                        let latency = first_sent.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
                        self.endpoint.record_success(now, latency);
                    }
                    if let Ok(mut st) = self.state.lock() {
                        st.table.touch(self.client, self.id, now);
                    }
                    match self.listener.send_to(&buf[..n], self.client).await {
                        Ok(_) => {
                            ServiceStats::add(&self.stats.datagrams_out, 1);
                            ServiceStats::add(&self.stats.bytes_out, n as u64);
                        }
                        Err(e) => tracing::debug!(client = %self.client, error = %e, "L4 UDP reply to client failed"),
                    }
                }
            }
        }
    }
}
