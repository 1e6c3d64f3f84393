//! The TCP shell: accept, optional PROXY header in, connect with failover, optional PROXY
//! header out, then a two-way copy with half-close and an idle timeout: through a buffer,
//! and past [`super::L4Settings::splice_after`] bytes through a pipe with `splice(2)`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use rustix::pipe::PipeFlags;
use rustix::pipe::SpliceFlags;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Ctx;
use super::L4Error;
use super::metrics::ServiceStats;
use super::resolve;
use crate::metrics::UpstreamErrorKind;
use crate::model::GlobalSettings;
use crate::pool::ConnectError;
use crate::proxy_protocol;
use crate::proxy_protocol::Header;
use crate::server::draining;
use crate::upstream::EndpointState;
use crate::upstream::UpstreamState;

/// Bytes read at once per direction.
const BUF: usize = 16 * 1024;

/// Accepts on `listener` for service `key` until `stop` flips.
pub(super) async fn serve(listener: TcpListener, key: String, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let stats = ctx.metrics.service(&key);
    loop {
        // Wait for a free slot without holding it while idle in accept (as `server::spawn`).
        tokio::select! {
            p = ctx.connections.acquire() => if p.is_err() { break },
            _ = draining(&mut stop) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = draining(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(service = %key, error = %e, "L4 accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let permit = match ctx.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = ctx.connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = draining(&mut stop) => break,
            },
        };
        let (key, ctx, stats) = (key.clone(), ctx.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _tracked = ctx.track();
            ServiceStats::add(&stats.connections_total, 1);
            ServiceStats::add(&stats.connections_active, 1);
            let mut kill = ctx.kill.subscribe();
            tokio::select! {
                r = connection(stream, peer, &key, &ctx, &stats) => match r {
                    Ok(()) => {}
                    Err(e) => tracing::debug!(service = %key, client = %peer, side = ?e.side(), error = %e, "L4 connection failed"),
                },
                _ = draining(&mut kill) => {
                    tracing::debug!(service = %key, client = %peer, "L4 connection cut at the end of the drain");
                }
            }
            ServiceStats::sub(&stats.connections_active, 1);
        });
    }
    tracing::debug!(service = %key, "L4 TCP listener stopped");
}

async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    key: &str,
    ctx: &Ctx,
    stats: &ServiceStats,
) -> Result<(), L4Error> {
    let _ = client.set_nodelay(true);
    // On a dual-stack socket an IPv4 client shows as `::ffff:a.b.c.d`: pass on `a.b.c.d`.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let peer = canonical(peer);
    // The service and its endpoints as of this connection.
    let snap = ctx.dataplane.snapshot();
    let svc = snap
        .table
        .l4
        .get(key)
        .ok_or_else(|| L4Error::ServiceGone { key: key.to_string() })?;
    // The destination is read from the socket only if a PROXY header goes upstream (it
    // costs a getsockname per connection).
    let (mut source, mut destination) = (peer, None);
    let mut early = Vec::new();
    if svc.proxy_protocol_in {
        let (header, rest) = match read_proxy_header(&mut client, peer, ctx.settings.proxy_protocol_timeout).await {
            Ok(h) => h,
            Err(e) => {
                ServiceStats::add(&stats.proxy_protocol_errors, 1);
                return Err(e);
            }
        };
        // LOCAL and UNKNOWN headers mean: use the connection's own addresses.
        if let (Some(s), Some(d)) = (header.source, header.destination) {
            source = s;
            destination = Some(d);
        }
        early = rest;
    }
    let upstream = match snap.upstreams.get(&svc.upstream) {
        Some(u) => u.clone(),
        None => {
            ServiceStats::add(&stats.no_endpoints, 1);
            return Err(L4Error::NoEndpoints {
                upstream: svc.upstream.clone(),
            });
        }
    };
    let attempt = connect(&upstream, &svc.upstream, &snap.table.settings, ctx, stats).await;
    let (mut server, endpoint) = match attempt {
        Ok(c) => c,
        Err(e) => {
            ServiceStats::add(&stats.no_endpoints, 1);
            ctx.dataplane
                .metrics()
                .upstream_error(&svc.upstream, UpstreamErrorKind::NoEndpoints);
            return Err(e);
        }
    };
    let proxy_out = svc.proxy_protocol_out;
    // Do not pin an old table for the life of a long connection.
    drop(upstream);
    drop(snap);
    let _in_flight = endpoint.start();
    if proxy_out {
        let destination = match destination {
            Some(d) => d,
            None => canonical(client.local_addr().map_err(L4Error::client)?),
        };
        server
            .write_all(&proxy_protocol::encode_v1(source, destination))
            .await
            .map_err(L4Error::upstream)?;
    }
    if !early.is_empty() {
        server.write_all(&early).await.map_err(L4Error::upstream)?;
        ServiceStats::add(&stats.bytes_in, early.len() as u64);
    }
    let idle = copy_both_ways(
        client.split(),
        server.split(),
        (ctx.settings.idle_timeout, ctx.settings.splice_after),
        stats,
    )
    .await?;
    if idle {
        ServiceStats::add(&stats.idle_timeouts, 1);
        tracing::debug!(service = %key, client = %peer, "L4 connection idle timeout");
    }
    Ok(())
}

/// Reads a PROXY header from the client within `timeout`. Returns it and the payload bytes
/// that arrived behind it.
async fn read_proxy_header(
    client: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(Header, Vec<u8>), L4Error> {
    proxy_protocol::read_header(client, timeout).await.map_err(|e| match e {
        proxy_protocol::ReadError::Invalid(source) => L4Error::ProxyProtocol { client: peer, source },
        proxy_protocol::ReadError::Timeout(timeout) => L4Error::ProxyProtocolTimeout { client: peer, timeout },
        proxy_protocol::ReadError::Eof => L4Error::ProxyProtocolEof { client: peer },
        proxy_protocol::ReadError::Io(e) => L4Error::client(e),
    })
}

/// Connects to an endpoint of `upstream`, failing over to others on connect errors.
async fn connect(
    upstream: &UpstreamState,
    upstream_id: &str,
    settings: &GlobalSettings,
    ctx: &Ctx,
    stats: &ServiceStats,
) -> Result<(TcpStream, Arc<EndpointState>), L4Error> {
    let tries = match ctx.settings.next_upstream_tries {
        0 => upstream.endpoints.len(),
        n => n as usize,
    };
    let timeout = ctx.settings.connect_timeout;
    let mut tried = Vec::with_capacity(tries);
    let mut last = None;
    while tried.len() < tries {
        let Some(i) = upstream.pick(Instant::now(), &tried) else {
            break;
        };
        tried.push(i);
        let ep = &upstream.endpoints[i];
        let started = Instant::now();
        match connect_one(ep, timeout).await {
            Ok(s) => {
                ep.record_success(Instant::now(), started.elapsed());
                return Ok((s, ep.clone()));
            }
            Err(e) => {
                tracing::debug!(upstream = %upstream_id, endpoint = %ep.endpoint, error = %e, "L4 connect failed");
                ServiceStats::add(&stats.connect_errors, 1);
                ctx.dataplane
                    .metrics()
                    .upstream_error(upstream_id, UpstreamErrorKind::Connect);
                if ep.record_failure(Instant::now(), settings) {
                    ctx.dataplane.metrics().upstream_ejected(upstream_id);
                }
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(e) => L4Error::Connect(e),
        None => L4Error::NoEndpoints {
            upstream: upstream_id.to_string(),
        },
    })
}

async fn connect_one(ep: &EndpointState, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let open = async {
        let addr = resolve(&ep.endpoint).await?;
        TcpStream::connect(addr).await.map_err(|source| ConnectError::Io {
            endpoint: ep.endpoint.to_string(),
            source,
        })
    };
    let stream = tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout {
            endpoint: ep.endpoint.to_string(),
            timeout,
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies both ways until both sides have sent EOF, one fails, or nothing moves for
/// `idle`. An EOF from one side shuts down the write half of the other and the opposite
/// direction goes on. Returns whether the idle timeout ended it.
pub(super) async fn copy_both_ways<CR, CW, SR, SW>(
    (mut client_r, mut client_w): (CR, CW),
    (mut server_r, mut server_w): (SR, SW),
    (idle, splice_after): (Duration, Option<u64>),
    stats: &ServiceStats,
) -> Result<bool, L4Error>
where
    CR: AsyncRead + Unpin + Socket,
    CW: AsyncWrite + Unpin + Socket,
    SR: AsyncRead + Unpin + Socket,
    SW: AsyncWrite + Unpin + Socket,
{
    let activity = Activity::new();
    let ended = AtomicBool::new(false);
    let up = pipe(
        &mut client_r,
        &mut server_w,
        (&activity, &ended, splice_after),
        &stats.bytes_in,
        L4Error::client,
        L4Error::upstream,
    );
    let down = pipe(
        &mut server_r,
        &mut client_w,
        (&activity, &ended, splice_after),
        &stats.bytes_out,
        L4Error::upstream,
        L4Error::client,
    );
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| false),
        () = activity.idle_for(idle) => Ok(true),
    }
}

/// One side of a connection as the copy sees it: the TCP socket underneath, when there is
/// one, so that a long transfer can be spliced.
pub(super) trait Socket {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl Socket for tokio::net::tcp::ReadHalf<'_> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl Socket for tokio::net::tcp::WriteHalf<'_> {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

#[cfg(test)]
impl<T> Socket for tokio::io::ReadHalf<T> {}
#[cfg(test)]
impl<T> Socket for tokio::io::WriteHalf<T> {}

/// Bytes moved by one `splice(2)` call at most: the default pipe capacity.
const PIPE_CHUNK: usize = 64 * 1024;

/// One direction. `ended` is shared by both: the direction that sees EOF second does not
/// shut the other socket's write side down, since both sockets are about to be closed
/// (which sends the FIN anyway): one system call less per connection. After
/// `splice_after` bytes the direction continues through a pipe (two `splice` calls per
/// chunk instead of a read and a write with two copies).
async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    (activity, ended, splice_after): (&Activity, &AtomicBool, Option<u64>),
    bytes: &AtomicU64,
    read_err: fn(std::io::Error) -> L4Error,
    write_err: fn(std::io::Error) -> L4Error,
) -> Result<(), L4Error>
where
    R: AsyncRead + Unpin + Socket,
    W: AsyncWrite + Unpin + Socket,
{
    // Read into spare capacity: nothing to zero on every new connection.
    let mut buf = Vec::with_capacity(BUF);
    let mut moved = 0u64;
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    loop {
        let n = match (&pipe, r.socket()) {
            (Some((_, pipe_w)), Some(from)) => splice_in(from, pipe_w).await.map_err(read_err)?,
            _ => {
                buf.clear();
                r.read_buf(&mut buf).await.map_err(read_err)?
            }
        };
        activity.mark();
        if n == 0 {
            // Half-close: pass the EOF on and keep the other direction going. The peer
            // may already be gone; the other direction reports that if it matters.
            if !ended.swap(true, Ordering::Relaxed) {
                let _ = w.shutdown().await;
            }
            return Ok(());
        }
        match (&pipe, w.socket()) {
            (Some((pipe_r, _)), Some(to)) => splice_out(pipe_r, to, n).await.map_err(write_err)?,
            _ => w.write_all(&buf[..n]).await.map_err(write_err)?,
        }
        activity.mark();
        ServiceStats::add(bytes, n as u64);
        moved += n as u64;
        if pipe.is_none()
            && splice_after.is_some_and(|after| moved >= after)
            && r.socket().is_some()
            && w.socket().is_some()
        {
            // A pipe that cannot be made (out of file descriptors) leaves the copy as it is.
            pipe = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok();
            // The buffer is not needed any more.
            buf = Vec::new();
        }
    }
}

/// Moves what `from` has received (up to a pipe's worth) into the empty pipe.
async fn splice_in(from: &TcpStream, pipe_w: &OwnedFd) -> std::io::Result<usize> {
    loop {
        from.readable().await?;
        let moved = from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(
                from,
                None,
                pipe_w,
                None,
                PIPE_CHUNK,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(std::io::Error::from)
        });
        match moved {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Sends the `len` bytes in the pipe out through `to`, waiting while its buffer is full.
async fn splice_out(pipe_r: &OwnedFd, to: &TcpStream, mut len: usize) -> std::io::Result<()> {
    while len > 0 {
        to.writable().await?;
        let moved = to.try_io(Interest::WRITABLE, || {
            rustix::pipe::splice(pipe_r, None, to, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK)
                .map_err(std::io::Error::from)
        });
        match moved {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The time of the last byte moved, shared by both directions of one connection.
#[derive(Debug)]
struct Activity {
    base: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.base + last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn half_close_passes_eof_and_keeps_the_other_direction() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        let stats = ServiceStats::default();
        let copy = tokio::spawn(async move {
            copy_both_ways(
                tokio::io::split(client),
                tokio::io::split(server),
                (Duration::from_secs(60), None),
                &stats,
            )
            .await
        });
        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        // The server sees the bytes, then EOF.
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // And can still answer.
        server_peer.write_all(b"pong").await.unwrap();
        server_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        assert!(!copy.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn idle_connections_end() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (server, _server_peer) = tokio::io::duplex(64);
        let stats = ServiceStats::default();
        let idle = copy_both_ways(
            tokio::io::split(client),
            tokio::io::split(server),
            (Duration::from_millis(50), None),
            &stats,
        )
        .await
        .unwrap();
        assert!(idle);
    }
}
