//! The L4 data plane: TCP and UDP ports forwarded to upstreams (ingress-nginx's
//! tcp-services and udp-services), with PROXY protocol in and out.
//!
//! ```text
//!  dataplane.versions() ──► manager ── reconcile table.l4 ──► one listener per key
//!                              │  (bind/close only the ports that changed)
//!                              └──► status watch: key → Bound(addr) | Failed(error)
//!
//!  TCP accept ──► snapshot: table.l4[key], upstreams[id]   (looked up per connection)
//!     ├─ proxy_protocol_in: read + strip a v1/v2 header (timeout)
//!     ├─ pick → connect (timeout) → on failure record_failure, next endpoint
//!     ├─ proxy_protocol_out: write a v1 header with the client's address
//!     └─ copy both ways; EOF on one side → shutdown(write) on the other; idle timeout
//!
//!  UDP datagram ──► sessions::SessionTable (pure: client → endpoint, bounded, idle expiry)
//!     └─ per session: a connected upstream socket + a task relaying replies to the client
//! ```
//!
//! Endpoint changes apply to the next connection or UDP session without touching the
//! listener; a UDP session whose endpoint left the upstream ends at once, so its client's
//! next datagram picks a live one (as kube-proxy clears UDP conntrack entries). Removing
//! an entry closes its listener; TCP connections already open on it carry on until they
//! end (as after an nginx reload), UDP sessions end with it.
//!
//! Bytes are copied through a 16 KiB buffer per direction. Once a direction has carried
//! [`L4Settings::splice_after`] bytes, it switches to `splice(2)` through a pipe (rustix's
//! safe wrapper): the kernel moves the pages from one socket to the other and the bytes
//! never enter user space. Short connections never pay for the pipe.
//!
//! PROXY protocol applies to TCP only: a UDP entry's PROXY flags are logged and ignored.

mod manager;
pub mod metrics;
pub mod sessions;
mod tcp;
mod udp;

use std::io;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use manager::ListenerStatus;
pub use manager::Manager;
use tokio::sync::Semaphore;
use tokio::sync::watch;

use crate::dataplane::Dataplane;
use crate::error::ErrorSide;
use crate::model::Endpoint;
use crate::pool::ConnectError;
use crate::proxy_protocol::ProxyProtocolError;
use metrics::L4Metrics;

/// Settings of a node's L4 ports. Local to the node, not part of the replicated table.
#[derive(Clone, Debug)]
pub struct L4Settings {
    /// The address every L4 port is bound on. Default `0.0.0.0` (every IPv4 address).
    pub bind_ip: IpAddr,
    /// Time allowed for one upstream connect attempt, name resolution included. Default
    /// 5 s (ingress-nginx's `proxy-connect-timeout`).
    pub connect_timeout: Duration,
    /// A TCP connection is closed when no byte has moved either way for this long.
    /// Default 600 s (ingress-nginx's `proxy-stream-timeout`).
    pub idle_timeout: Duration,
    /// A UDP session ends when no datagram has moved either way for this long. Default
    /// 30 s (a UDP flow's conntrack timeout). Unlike nginx's `proxy_responses 1` default,
    /// a session is not ended after the first reply.
    pub udp_session_timeout: Duration,
    /// UDP sessions allowed at once per UDP port; datagrams from new clients are dropped
    /// when it is reached (see [`sessions`]). Each session holds one socket. Default 16,384
    /// (ingress-nginx's `max-worker-connections`).
    pub max_udp_sessions: usize,
    /// TCP connections open at once across all L4 ports; more wait in the backlog.
    /// Default 16,384.
    pub max_tcp_connections: usize,
    /// Endpoints a TCP connection is tried on, in all, when connects fail; 0 means every
    /// endpoint once. Default 3 (ingress-nginx's `proxy-stream-next-upstream-tries`).
    pub next_upstream_tries: u32,
    /// Time a client has to send its PROXY header when the entry expects one. Default
    /// 30 s (nginx's `proxy_protocol_timeout`).
    pub proxy_protocol_timeout: Duration,
    /// The accept backlog of each TCP port; the kernel caps it at `net.core.somaxconn`.
    /// Default 4,096 (ingress-nginx uses somaxconn; tokio's `TcpListener::bind` only 128,
    /// which drops SYNs under a burst of a few hundred connects).
    pub backlog: u32,
    /// Bytes a direction of a TCP connection carries through user space before it switches
    /// to `splice(2)`; `None`: never. Default 64 KiB.
    pub splice_after: Option<u64>,
}

impl Default for L4Settings {
    fn default() -> Self {
        L4Settings {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            udp_session_timeout: Duration::from_secs(30),
            max_udp_sessions: 16_384,
            max_tcp_connections: 16_384,
            next_upstream_tries: 3,
            proxy_protocol_timeout: Duration::from_secs(30),
            backlog: 4096,
            splice_after: Some(64 * 1024),
        }
    }
}

/// Why one L4 connection or session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    #[error("PROXY header from {client}: {source}")]
    ProxyProtocol {
        client: SocketAddr,
        #[source]
        source: ProxyProtocolError,
    },
    #[error("no complete PROXY header from {client} within {timeout:?}")]
    ProxyProtocolTimeout { client: SocketAddr, timeout: Duration },
    #[error("client {client} closed before sending a complete PROXY header")]
    ProxyProtocolEof { client: SocketAddr },
    #[error("L4 service {key} is no longer in the table")]
    ServiceGone { key: String },
    #[error("upstream {upstream} has no reachable endpoint")]
    NoEndpoints { upstream: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{side:?} side: {source}")]
    Io {
        side: ErrorSide,
        #[source]
        source: io::Error,
    },
}

impl L4Error {
    /// The side at fault, for logs and metrics.
    pub fn side(&self) -> ErrorSide {
        match self {
            L4Error::ProxyProtocol { .. } | L4Error::ProxyProtocolTimeout { .. } | L4Error::ProxyProtocolEof { .. } => {
                ErrorSide::Client
            }
            L4Error::Io { side, .. } => *side,
            _ => ErrorSide::Upstream,
        }
    }

    fn client(source: io::Error) -> L4Error {
        L4Error::Io {
            side: ErrorSide::Client,
            source,
        }
    }

    fn upstream(source: io::Error) -> L4Error {
        L4Error::Io {
            side: ErrorSide::Upstream,
            source,
        }
    }
}

/// What every L4 listener shares.
#[derive(Debug)]
struct Ctx {
    dataplane: Arc<Dataplane>,
    settings: L4Settings,
    metrics: Arc<L4Metrics>,
    /// The TCP connection cap.
    connections: Arc<Semaphore>,
    /// TCP connections open now, across all listeners (also those already closed).
    active: watch::Sender<usize>,
    /// Flips to `true` when the drain grace is over: open TCP connections end.
    kill: watch::Sender<bool>,
}

impl Ctx {
    /// Counts one open TCP connection until dropped.
    fn track(self: &Arc<Self>) -> Tracked {
        self.active.send_modify(|n| *n += 1);
        Tracked(self.clone())
    }
}

#[derive(Debug)]
struct Tracked(Arc<Ctx>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The address to send to, resolving a DNS endpoint (its first address).
async fn resolve(endpoint: &Endpoint) -> Result<SocketAddr, ConnectError> {
    match endpoint {
        Endpoint::Addr(a) => Ok(*a),
        Endpoint::Dns { host, port } => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|source| ConnectError::Io {
                endpoint: endpoint.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| ConnectError::NoAddress {
                endpoint: endpoint.to_string(),
            }),
    }
}
