//! Data-plane metrics: lock-free counters on the request path, rendered as Prometheus text.
//!
//! Labels are bounded: `host` and `route` come from the configured routes (requests that
//! match none are counted under empty labels), `status` is the status class (`2xx`),
//! `upstream` is an upstream of the routing table (its series stay until a restart when the
//! table drops it), and every other label has a fixed value set. The catalogue, with every
//! family's labels and meaning, is docs/metrics.md.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Histogram bucket bounds in seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters for one (host, route).
#[derive(Debug, Default)]
pub struct RouteStats {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RouteStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What went wrong talking to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    NoEndpoints,
}

impl UpstreamErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::NoEndpoints => "no_endpoints",
        }
    }
}

/// Why a TLS handshake with a client failed: a fixed set, so the label stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsHandshakeError {
    /// Not finished within the header/handshake timeout.
    Timeout,
    /// The connection closed or failed (EOF, reset) before the handshake finished.
    Closed,
    /// The client sent a fatal alert (for instance it did not trust the certificate).
    Alert,
    /// No common protocol version, cipher suite or ALPN protocol, or no certificate for the name.
    Incompatible,
    /// Anything else TLS refused: not TLS at all, a malformed or unexpected message.
    Protocol,
}

impl TlsHandshakeError {
    const ALL: [TlsHandshakeError; 5] = [
        TlsHandshakeError::Timeout,
        TlsHandshakeError::Closed,
        TlsHandshakeError::Alert,
        TlsHandshakeError::Incompatible,
        TlsHandshakeError::Protocol,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TlsHandshakeError::Timeout => "timeout",
            TlsHandshakeError::Closed => "closed",
            TlsHandshakeError::Alert => "alert",
            TlsHandshakeError::Incompatible => "incompatible",
            TlsHandshakeError::Protocol => "protocol",
        }
    }

    /// The reason of a failed `TlsAcceptor::accept` (rustls errors arrive wrapped in I/O errors).
    pub fn of(e: &std::io::Error) -> TlsHandshakeError {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(_)) => TlsHandshakeError::Alert,
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                TlsHandshakeError::Incompatible
            }
            Some(rustls::Error::General(m)) if m.contains("certificate") => TlsHandshakeError::Incompatible,
            Some(_) => TlsHandshakeError::Protocol,
            None if e.kind() == std::io::ErrorKind::InvalidData => TlsHandshakeError::Protocol,
            None => TlsHandshakeError::Closed,
        }
    }
}

/// The TLS versions handshakes are counted by (the only ones the listeners offer).
const TLS_VERSIONS: [&str; 2] = ["1.2", "1.3"];

/// All data-plane metrics of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteStats>>>,
    upstream_errors: Mutex<BTreeMap<(String, UpstreamErrorKind), u64>>,
    upstream_ejections: Mutex<BTreeMap<String, u64>>,
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    /// Completed handshakes, by [`TLS_VERSIONS`].
    tls_handshakes: [AtomicU64; 2],
    /// Failed handshakes, by [`TlsHandshakeError::ALL`].
    tls_handshake_errors: [AtomicU64; 5],
    pub config_swaps: AtomicU64,
    /// When the last table was swapped in, in milliseconds since the Unix epoch (0: never).
    pub last_swap_unix_ms: AtomicU64,
    unmatched: std::sync::OnceLock<Arc<RouteStats>>,
}

impl Metrics {
    /// The stats of a route, created on first use. Callers cache the `Arc`.
    pub fn route(&self, host: &str, route: &str) -> Arc<RouteStats> {
        let Ok(mut map) = self.routes.lock() else {
            return Arc::default();
        };
        map.entry((host.to_string(), route.to_string())).or_default().clone()
    }

    /// The stats of requests that matched no route (empty `host` and `route` labels).
    pub fn unmatched(&self) -> Arc<RouteStats> {
        self.unmatched.get_or_init(|| self.route("", "")).clone()
    }

    pub fn upstream_error(&self, upstream: &str, kind: UpstreamErrorKind) {
        if let Ok(mut map) = self.upstream_errors.lock() {
            *map.entry((upstream.to_string(), kind)).or_default() += 1;
        }
    }

    /// An endpoint of `upstream` was ejected by passive health (rare: at most once per
    /// endpoint and `upstream_fail_timeout`, so the map lookup is off the request path).
    pub fn upstream_ejected(&self, upstream: &str) {
        if let Ok(mut map) = self.upstream_ejections.lock() {
            *map.entry(upstream.to_string()).or_default() += 1;
        }
    }

    /// A completed TLS handshake with a client.
    pub fn tls_handshake(&self, version: Option<rustls::ProtocolVersion>) {
        let i = usize::from(version == Some(rustls::ProtocolVersion::TLSv1_3));
        self.tls_handshakes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A failed TLS handshake with a client.
    pub fn tls_handshake_error(&self, reason: TlsHandshakeError) {
        let i = TlsHandshakeError::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.tls_handshake_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition of everything above.
    pub fn render(&self, out: &mut String) {
        let routes: Vec<_> = self
            .routes
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        out.push_str("# HELP raftgate_http_requests_total HTTP requests answered, by host, route and status class.\n");
        out.push_str("# TYPE raftgate_http_requests_total counter\n");
        for ((host, route), s) in &routes {
            for (i, c) in s.by_class.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "raftgate_http_requests_total{{host=\"{}\",route=\"{}\",status=\"{}xx\"}} {n}",
                        escape(host),
                        escape(route),
                        i + 1
                    );
                }
            }
        }
        out.push_str("# HELP raftgate_http_request_duration_seconds Time from request to the end of the response.\n");
        out.push_str("# TYPE raftgate_http_request_duration_seconds histogram\n");
        for ((host, route), s) in &routes {
            let labels = format!("host=\"{}\",route=\"{}\"", escape(host), escape(route));
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(&s.buckets) {
                cumulative += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "raftgate_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "raftgate_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "raftgate_http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "raftgate_http_request_duration_seconds_count{{{labels}}} {count}");
        }
        out.push_str("# HELP raftgate_upstream_errors_total Failed attempts to reach an upstream, by kind.\n");
        out.push_str("# TYPE raftgate_upstream_errors_total counter\n");
        if let Ok(map) = self.upstream_errors.lock() {
            for ((up, kind), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "raftgate_upstream_errors_total{{upstream=\"{}\",kind=\"{}\"}} {n}",
                    escape(up),
                    kind.as_str()
                );
            }
        }
        out.push_str("# HELP raftgate_upstream_ejections_total Endpoints taken out by passive health (upstream_max_fails failures in a row).\n");
        out.push_str("# TYPE raftgate_upstream_ejections_total counter\n");
        if let Ok(map) = self.upstream_ejections.lock() {
            for (up, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "raftgate_upstream_ejections_total{{upstream=\"{}\"}} {n}",
                    escape(up)
                );
            }
        }
        out.push_str(
            "# HELP raftgate_tls_handshakes_total TLS handshakes with clients completed, by protocol version.\n",
        );
        out.push_str("# TYPE raftgate_tls_handshakes_total counter\n");
        for (version, n) in TLS_VERSIONS.iter().zip(&self.tls_handshakes) {
            let _ = writeln!(
                out,
                "raftgate_tls_handshakes_total{{version=\"{version}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP raftgate_tls_handshake_errors_total TLS handshakes with clients that failed, by reason.\n",
        );
        out.push_str("# TYPE raftgate_tls_handshake_errors_total counter\n");
        for (reason, n) in TlsHandshakeError::ALL.iter().zip(&self.tls_handshake_errors) {
            let _ = writeln!(
                out,
                "raftgate_tls_handshake_errors_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP raftgate_config_last_swap_timestamp_seconds When the last routing table was swapped in (Unix time; 0: never).\n# TYPE raftgate_config_last_swap_timestamp_seconds gauge\nraftgate_config_last_swap_timestamp_seconds {}",
            self.last_swap_unix_ms.load(Ordering::Relaxed) as f64 / 1e3
        );
        let gauges = [
            (
                "raftgate_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                &self.connections_accepted,
            ),
            (
                "raftgate_connections_active",
                "gauge",
                "Client connections open now.",
                &self.connections_active,
            ),
            (
                "raftgate_config_swaps_total",
                "counter",
                "Routing tables swapped into the data plane.",
                &self.config_swaps,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_buckets_and_escapes_labels() {
        let m = Metrics::default();
        let s = m.route("a.com", "/x\"y");
        s.record(200, Duration::from_millis(3));
        s.record(503, Duration::from_secs(10));
        m.upstream_error("ns/svc:80", UpstreamErrorKind::Connect);
        m.upstream_ejected("ns/svc:80");
        m.tls_handshake(Some(rustls::ProtocolVersion::TLSv1_3));
        m.tls_handshake_error(TlsHandshakeError::Timeout);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(r#"raftgate_http_requests_total{host="a.com",route="/x\"y",status="2xx"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"status="5xx"} 1"#));
        assert!(out.contains(r#"le="0.0025"} 0"#));
        assert!(out.contains(r#"le="0.005"} 1"#));
        assert!(out.contains(r#"le="+Inf"} 2"#));
        assert!(out.contains(r#"raftgate_upstream_errors_total{upstream="ns/svc:80",kind="connect"} 1"#));
        assert!(out.contains(r#"raftgate_upstream_ejections_total{upstream="ns/svc:80"} 1"#));
        assert!(
            out.contains("raftgate_tls_handshakes_total{version=\"1.2\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("raftgate_tls_handshakes_total{version=\"1.3\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("raftgate_tls_handshake_errors_total{reason=\"timeout\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("raftgate_tls_handshake_errors_total{reason=\"protocol\"} 0\n"),
            "{out}"
        );
    }

    #[test]
    fn handshake_failures_fall_into_the_fixed_reasons() {
        use std::io::Error;
        use std::io::ErrorKind;
        let tls = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        let alert = tls(rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate));
        assert_eq!(TlsHandshakeError::of(&alert), TlsHandshakeError::Alert);
        let versions = tls(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ));
        assert_eq!(TlsHandshakeError::of(&versions), TlsHandshakeError::Incompatible);
        let garbage = tls(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(TlsHandshakeError::of(&garbage), TlsHandshakeError::Protocol);
        let eof = Error::from(ErrorKind::UnexpectedEof);
        assert_eq!(TlsHandshakeError::of(&eof), TlsHandshakeError::Closed);
    }
}
