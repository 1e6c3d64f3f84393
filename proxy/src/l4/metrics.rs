//! L4 counters per service key (`tcp/7306`, `udp/53`), lock-free on the data path.
//!
//! Labels are bounded by the table: one [`ServiceStats`] per L4 key ever served. "In" is
//! client to upstream, "out" is upstream to client.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// The counters of one L4 service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// TCP connections accepted.
    pub connections_total: AtomicU64,
    /// TCP connections open now.
    pub connections_active: AtomicU64,
    /// Bytes from clients to upstreams (TCP payload or UDP datagrams, PROXY headers excluded).
    pub bytes_in: AtomicU64,
    /// Bytes from upstreams to clients.
    pub bytes_out: AtomicU64,
    /// Failed upstream connects (each failover attempt counts).
    pub connect_errors: AtomicU64,
    /// Connections or new UDP sessions dropped because no endpoint could be reached.
    pub no_endpoints: AtomicU64,
    /// Client connections dropped for a bad, missing or slow PROXY header.
    pub proxy_protocol_errors: AtomicU64,
    /// TCP connections closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// UDP datagrams from clients and from upstreams.
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// UDP sessions made, open now, ended by idle timeout, and refused (table full).
    pub udp_sessions_total: AtomicU64,
    pub udp_sessions_active: AtomicU64,
    pub udp_sessions_expired: AtomicU64,
    pub udp_sessions_refused: AtomicU64,
}

impl ServiceStats {
    fn fields(&self) -> [(&'static str, &'static str, &'static str, &AtomicU64); 14] {
        [
            (
                "raftgate_l4_connections_total",
                "counter",
                "TCP connections accepted on an L4 port.",
                &self.connections_total,
            ),
            (
                "raftgate_l4_connections_active",
                "gauge",
                "TCP connections open now on an L4 port.",
                &self.connections_active,
            ),
            (
                "raftgate_l4_received_bytes_total",
                "counter",
                "Bytes received from clients and sent upstream.",
                &self.bytes_in,
            ),
            (
                "raftgate_l4_sent_bytes_total",
                "counter",
                "Bytes received from upstreams and sent to clients.",
                &self.bytes_out,
            ),
            (
                "raftgate_l4_connect_errors_total",
                "counter",
                "Failed connects to L4 upstream endpoints.",
                &self.connect_errors,
            ),
            (
                "raftgate_l4_no_endpoints_total",
                "counter",
                "Connections or UDP sessions dropped because no endpoint was reachable.",
                &self.no_endpoints,
            ),
            (
                "raftgate_l4_proxy_protocol_errors_total",
                "counter",
                "Client connections dropped for a bad, missing or slow PROXY header.",
                &self.proxy_protocol_errors,
            ),
            (
                "raftgate_l4_idle_timeouts_total",
                "counter",
                "TCP connections closed after the idle timeout.",
                &self.idle_timeouts,
            ),
            (
                "raftgate_l4_received_datagrams_total",
                "counter",
                "UDP datagrams received from clients.",
                &self.datagrams_in,
            ),
            (
                "raftgate_l4_sent_datagrams_total",
                "counter",
                "UDP datagrams relayed back to clients.",
                &self.datagrams_out,
            ),
            (
                "raftgate_l4_udp_sessions_total",
                "counter",
                "UDP sessions created.",
                &self.udp_sessions_total,
            ),
            (
                "raftgate_l4_udp_sessions_active",
                "gauge",
                "UDP sessions open now.",
                &self.udp_sessions_active,
            ),
            (
                "raftgate_l4_udp_sessions_expired_total",
                "counter",
                "UDP sessions ended by the idle timeout.",
                &self.udp_sessions_expired,
            ),
            (
                "raftgate_l4_udp_sessions_refused_total",
                "counter",
                "New UDP clients dropped because the session table was full.",
                &self.udp_sessions_refused,
            ),
        ]
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Every L4 service's counters.
#[derive(Debug, Default)]
pub struct L4Metrics {
    services: Mutex<BTreeMap<String, Arc<ServiceStats>>>,
}

impl L4Metrics {
    /// The counters of service `key`, created on first use. Callers keep the `Arc`.
    pub fn service(&self, key: &str) -> Arc<ServiceStats> {
        let Ok(mut map) = self.services.lock() else {
            return Arc::default();
        };
        map.entry(key.to_string()).or_default().clone()
    }

    /// Every service seen so far, by key.
    pub fn services(&self) -> Vec<(String, Arc<ServiceStats>)> {
        self.services
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Prometheus text exposition, one series per service and counter, labelled
    /// `service="tcp/7306"`.
    pub fn render(&self, out: &mut String) {
        let services = self.services();
        let Some((_, first)) = services.first() else {
            return;
        };
        for i in 0..first.fields().len() {
            let (name, kind, help, _) = first.fields()[i];
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (key, s) in &services {
                let v = s.fields()[i].3.load(Ordering::Relaxed);
                let key = key.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = writeln!(out, "{name}{{service=\"{key}\"}} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_series_per_service() {
        let m = L4Metrics::default();
        ServiceStats::add(&m.service("tcp/7306").bytes_in, 42);
        ServiceStats::add(&m.service("udp/53").datagrams_in, 2);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("raftgate_l4_received_bytes_total{service=\"tcp/7306\"} 42\n"));
        assert!(out.contains("raftgate_l4_received_datagrams_total{service=\"udp/53\"} 2\n"));
        assert_eq!(out.matches("# TYPE raftgate_l4_connections_active gauge").count(), 1);
    }
}
