//! Client-facing listeners: accept under a connection cap, TLS handshake, HTTP/1.1 and
//! HTTP/2 (ALPN on TLS, prior knowledge on plain text), and a graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
pub use tokio_rustls::TlsAcceptor;

use crate::metrics::TlsHandshakeError;
use crate::tls::TlsAcceptors;

use crate::dataplane::Dataplane;
use crate::handler::ConnInfo;
use crate::handler::handle;

/// Listener settings of one node. These are local, not part of the replicated table.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Open client connections allowed at once, across all listeners; more wait in the backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (against slowloris); also the TLS
    /// handshake timeout.
    pub header_read_timeout: Duration,
    /// Largest request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// Serve HTTP/2 (ALPN `h2` on TLS, prior knowledge on plain text).
    pub http2: bool,
    /// The HTTPS port, for redirects.
    pub https_port: u16,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            http2: true,
            https_port: 443,
        }
    }
}

/// What every listener of a node shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub dataplane: Arc<Dataplane>,
    pub settings: ServerSettings,
    pub connections: Arc<Semaphore>,
    /// Flips to `true` when the node starts draining.
    pub drain: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(dataplane: Arc<Dataplane>, settings: ServerSettings, drain: watch::Receiver<bool>) -> Shared {
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        Shared {
            dataplane,
            settings,
            connections,
            drain,
        }
    }

    /// Waits until every client connection has closed, or `grace` has passed. Returns how
    /// many connections were still open.
    pub async fn drained(&self, grace: Duration) -> usize {
        let all = self.settings.max_connections as u32;
        match tokio::time::timeout(grace, self.connections.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => self.settings.max_connections - self.connections.available_permits(),
        }
    }
}

/// Starts accepting on `listener`, with TLS if `tls` is set. Stops accepting when draining.
pub fn spawn(listener: TcpListener, tls: Option<TlsAcceptors>, shared: Shared) -> JoinHandle<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_read_timeout)
        // hyper requires at least 8 KiB here.
        .max_buf_size(shared.settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.settings.max_header_bytes).unwrap_or(u32::MAX));
    if !shared.settings.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    tokio::spawn(async move {
        let mut drain = shared.drain.clone();
        loop {
            // Wait until a slot is free, but do not hold it while idle in accept(): with
            // several listeners, a held slot would starve the others.
            tokio::select! {
                p = shared.connections.acquire() => if p.is_err() { break },
                _ = draining(&mut drain) => break,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = draining(&mut drain) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            // Another listener may have taken the slot meanwhile; then this connection waits
            // (at most one per listener over the cap).
            let permit = match shared.connections.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    p = shared.connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = draining(&mut drain) => break,
                },
            };
            let (shared, builder, tls) = (shared.clone(), builder.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                connection(stream, peer, tls, shared, builder).await;
            });
        }
        tracing::debug!("listener stopped accepting");
    })
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptors>,
    shared: Shared,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let metrics = shared.dataplane.metrics().clone();
    metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
    metrics.connections_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(metrics.clone());
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let snap = shared.dataplane.snapshot();
    let settings = &snap.table.settings;
    // `use-proxy-protocol`: every connection starts with a PROXY header; its address counts
    // only when the peer is trusted (`proxy-real-ip-cidr`).
    let (mut client, mut early) = (peer, Vec::new());
    if settings.use_proxy_protocol {
        match crate::proxy_protocol::read_header(&mut stream, shared.settings.header_read_timeout).await {
            Ok((header, rest)) => {
                if let Some(source) = header.source.filter(|_| snap.trusts(peer.ip())) {
                    client = source;
                }
                early = rest;
            }
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "PROXY header refused");
                return;
            }
        }
    }
    let stream = crate::proxy_protocol::Rewind::new(early, stream);
    let info = ConnInfo::new(client, local, tls.is_some(), shared.settings.https_port);
    let acceptor = tls.as_ref().map(|t| t.for_versions(settings.tls_versions).clone());
    drop(snap);
    match acceptor {
        None => serve(stream, info, shared, &builder).await,
        Some(acceptor) => {
            match tokio::time::timeout(shared.settings.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    metrics.tls_handshake(s.get_ref().1.protocol_version());
                    serve(s, info, shared, &builder).await
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_error(TlsHandshakeError::of(&e));
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_error(TlsHandshakeError::Timeout);
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn serve<I>(io: I, info: ConnInfo, shared: Shared, builder: &auto::Builder<TokioExecutor>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let dp = shared.dataplane.clone();
    let info = Arc::new(info);
    let svc = service_fn(move |req| handle(dp.clone(), info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut drain = shared.drain.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
        _ = draining(&mut drain) => {
            // Finish the request in flight, then close (HTTP/2 sends GOAWAY).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once the node starts draining (or the drain sender is gone).
pub async fn draining(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

struct ActiveGuard(Arc<crate::metrics::Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}
