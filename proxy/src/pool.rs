//! Upstream connections: connect (TCP, optionally TLS), an HTTP/1.1 keep-alive pool, and
//! one shared HTTP/2 connection per endpoint.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use crate::model::Endpoint;
use crate::model::Protocol;

/// A boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent upstream and returned downstream.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long an idle connection is kept (ingress-nginx's `upstream-keepalive-timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection could not be made. Connect errors are always safe to retry elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("connect to {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("resolve {endpoint}: no address")]
    NoAddress { endpoint: String },
    #[error("TLS handshake with {endpoint}: {source}")]
    Tls {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("HTTP handshake with {endpoint}: {source}")]
    Handshake {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
}

/// A connection ready to send one request.
#[derive(Debug)]
pub enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct Pool {
    endpoint: Endpoint,
    protocol: Protocol,
    idle: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// `proxy-send-timeout` in ms (0: none) for every connection of this endpoint. Each
    /// request sets it before sending; routes to one endpoint nearly always agree.
    send_timeout: Arc<AtomicU64>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, protocol: Protocol) -> Pool {
        Pool {
            endpoint,
            protocol,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            send_timeout: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets the time a write to this endpoint may stay blocked (nginx's `proxy_send_timeout`).
    pub fn set_send_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.send_timeout.store(ms, Ordering::Relaxed);
    }

    /// A pooled connection, if one is open: for HTTP/1.1 an idle one, for HTTP/2 the shared one.
    pub fn reuse(&self, now: Instant) -> Option<Conn> {
        self.reuse_idle(now).map(|(c, _)| c)
    }

    /// As [`Pool::reuse`], with how long an HTTP/1.1 connection sat idle (zero for HTTP/2).
    pub fn reuse_idle(&self, now: Instant) -> Option<(Conn, Duration)> {
        if self.protocol.is_h2() {
            let guard = self.h2.lock().ok()?;
            return guard
                .as_ref()
                .filter(|s| !s.is_closed())
                .map(|s| (Conn::H2(s.clone()), Duration::ZERO));
        }
        let mut idle = self.idle.lock().ok()?;
        while let Some((s, since)) = idle.pop() {
            let idle_for = now.saturating_duration_since(since);
            if !s.is_closed() && idle_for < IDLE_TIMEOUT {
                return Some((Conn::H1(s), idle_for));
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection whose response has been read to the end.
    /// Keeps at most `max_idle` (ingress-nginx's `upstream-keepalive-connections`).
    pub fn put(&self, sender: http1::SendRequest<Body>, now: Instant, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < max_idle
        {
            idle.push((sender, now));
        }
    }

    /// Idle HTTP/1.1 connections now pooled.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Opens a new connection.
    pub async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        let name = self.endpoint.to_string();
        let io = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| ConnectError::Timeout {
                endpoint: name.clone(),
                timeout,
            })??;
        if self.protocol.is_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(TimedIo::new(io, self.send_timeout.clone())))
                .await
                .map_err(|source| ConnectError::Handshake {
                    endpoint: name.clone(),
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection closed");
                }
            });
            if let Ok(mut slot) = self.h2.lock() {
                *slot = Some(sender.clone());
            }
            Ok(Conn::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(TimedIo::new(io, self.send_timeout.clone())))
                .await
                .map_err(|source| ConnectError::Handshake { endpoint: name, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection closed");
                }
            });
            Ok(Conn::H1(sender))
        }
    }

    async fn open(&self) -> Result<Io, ConnectError> {
        let name = self.endpoint.to_string();
        let addr: SocketAddr = match &self.endpoint {
            Endpoint::Addr(a) => *a,
            Endpoint::Dns { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| ConnectError::Io {
                    endpoint: name.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| ConnectError::NoAddress { endpoint: name.clone() })?,
        };
        let tcp = TcpStream::connect(addr).await.map_err(|source| ConnectError::Io {
            endpoint: name.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        if !self.protocol.is_tls() {
            return Ok(Io::Plain(tcp));
        }
        // No SNI and no verification, as ingress-nginx's defaults (`proxy-ssl-verify: off`).
        let server_name = match &self.endpoint {
            Endpoint::Addr(a) => ServerName::IpAddress(a.ip().into()),
            Endpoint::Dns { host, .. } => ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
                endpoint: name.clone(),
                source: io::Error::other(e),
            })?,
        };
        let config = upstream_tls_config(self.protocol).map_err(|e| ConnectError::Tls {
            endpoint: name.clone(),
            source: io::Error::other(e),
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { endpoint: name, source })?;
        Ok(Io::Tls(Box::new(tls)))
    }
}

fn upstream_tls_config(protocol: Protocol) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static H1: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static H2: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let (slot, alpn): (_, &[u8]) = if protocol.is_h2() {
        (&H2, b"h2")
    } else {
        (&H1, b"http/1.1")
    };
    if let Some(cfg) = slot.get() {
        return Ok(cfg.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(slot.get_or_init(|| Arc::new(cfg)).clone())
}

/// Accepts any upstream certificate but still checks handshake signatures, like nginx with
/// `proxy_ssl_verify off`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An upstream stream whose writes fail with `TimedOut` when one stays blocked (the upstream
/// not reading) for longer than the endpoint's send timeout.
#[derive(Debug)]
pub struct TimedIo {
    io: Io,
    timeout: Arc<AtomicU64>,
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimedIo {
    fn new(io: Io, timeout: Arc<AtomicU64>) -> TimedIo {
        TimedIo {
            io,
            timeout,
            blocked: None,
        }
    }

    /// Called when a write is pending: starts the clock, and fails once it runs out.
    fn still_blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let ms = self.timeout.load(Ordering::Relaxed);
        if ms == 0 {
            return Poll::Pending;
        }
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "upstream send timeout"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.still_blocked(cx),
            done => {
                this.blocked = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.still_blocked(cx),
            done => {
                this.blocked = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.still_blocked(cx),
            done => {
                this.blocked = None;
                done
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A plain or TLS upstream stream.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
