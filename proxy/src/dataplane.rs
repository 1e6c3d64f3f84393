//! The live data plane: the current snapshot, swapped atomically when a new table arrives.
//!
//! A request loads the snapshot once and keeps that `Arc` until it ends, so it sees one
//! consistent version however many swaps happen meanwhile. A swap never touches open
//! connections: they keep serving, and their next request picks up the new snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::access::AccessState;
use crate::access::RouteAccess;
use crate::limit::IpNet;
use crate::metrics::Metrics;
use crate::metrics::RouteStats;
use crate::model::Endpoint;
use crate::model::Protocol;
use crate::model::RoutingTable;
use crate::router::Router;
use crate::router::RouterError;
use crate::tls::CertStore;
use crate::tls::SniResolver;
use crate::upstream::EndpointState;
use crate::upstream::UpstreamState;

/// One consistent version of everything a request needs.
#[derive(Debug)]
pub struct Snapshot {
    pub table: Arc<RoutingTable>,
    pub router: Router,
    pub upstreams: HashMap<String, Arc<UpstreamState>>,
    /// Per-route metric handles, by route id, filled on first use.
    route_stats: Vec<OnceLock<Arc<RouteStats>>>,
    /// Per-route access checks, by route id.
    access: Vec<Option<Arc<RouteAccess>>>,
    /// Peers trusted to tell the client address (`real_ip_cidrs`, parsed).
    trusted: Vec<IpNet>,
    /// The `Strict-Transport-Security` value, if on.
    pub hsts: Option<http::HeaderValue>,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            table: Arc::default(),
            router: Router::default(),
            upstreams: HashMap::new(),
            route_stats: Vec::new(),
            access: Vec::new(),
            trusted: Vec::new(),
            hsts: None,
        }
    }

    /// Whether `ip` may tell the client's address (`proxy-real-ip-cidr`).
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The access checks of route `id`, if it has any.
    pub fn access(&self, id: usize) -> Option<&Arc<RouteAccess>> {
        self.access.get(id).and_then(Option::as_ref)
    }

    /// The metric handle of route `id`.
    pub fn route_stats(&self, id: usize, metrics: &Metrics) -> Arc<RouteStats> {
        match self.route_stats.get(id) {
            Some(slot) => slot
                .get_or_init(|| {
                    let e = &self.router.routes()[id];
                    metrics.route(&e.host, &e.route.path.to_string())
                })
                .clone(),
            None => metrics.route("", ""),
        }
    }
}

/// The node's data plane.
#[derive(Debug)]
pub struct Dataplane {
    current: ArcSwap<Snapshot>,
    resolver: Arc<SniResolver>,
    metrics: Arc<Metrics>,
    /// Held while installing, so installs run one at a time; keeps the access-check state.
    install: Mutex<AccessState>,
    version: watch::Sender<u64>,
}

impl Dataplane {
    pub fn new(resolver: Arc<SniResolver>, metrics: Arc<Metrics>) -> Dataplane {
        Dataplane {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            resolver,
            metrics,
            install: Mutex::new(AccessState::default()),
            version: watch::channel(0).0,
        }
    }

    /// The snapshot to serve one request with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn resolver(&self) -> &Arc<SniResolver> {
        &self.resolver
    }

    /// The version of the table being served.
    pub fn version(&self) -> u64 {
        self.current.load().table.version
    }

    /// Follows the version being served; it changes right after each swap.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Compiles `table` and swaps it in. Endpoint state (pools, health, EWMA) and parsed
    /// certificates carry over for whatever the new table keeps.
    pub fn install(&self, table: RoutingTable) -> Result<(), RouterError> {
        self.install_shared(Arc::new(table))
    }

    /// [`Dataplane::install`] for a table the caller keeps too (the Raft apply loop also
    /// hands it to the leader's source), without another copy.
    pub fn install_shared(&self, table: Arc<RoutingTable>) -> Result<(), RouterError> {
        let mut access_state = self.install.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let router = Router::new(&table)?;
        let old = self.current.load_full();
        let previous: HashMap<(Endpoint, Protocol), Arc<EndpointState>> = old
            .upstreams
            .values()
            .flat_map(|u| u.endpoints.iter())
            .map(|e| ((e.endpoint.clone(), e.protocol), e.clone()))
            .collect();
        let upstreams = table
            .upstreams
            .iter()
            .map(|(id, up)| (id.clone(), Arc::new(UpstreamState::new(up, &previous))))
            .collect();
        // Certificates first, so a host that just gained TLS never meets a router without them.
        let certs = CertStore::build(&table, &self.resolver.store());
        self.resolver.install(certs);
        let route_stats = (0..router.routes().len()).map(|_| OnceLock::new()).collect();
        let mut next_state = AccessState::default();
        let access = router
            .routes()
            .iter()
            .map(|e| next_state.build(&e.route.source, &e.route.policy, &access_state))
            .collect();
        *access_state = next_state;
        let version = table.version;
        // Entries that do not parse (the compiler checks them first) trust nobody.
        let trusted = table
            .settings
            .real_ip_cidrs
            .iter()
            .filter_map(|c| IpNet::parse(c).ok())
            .collect();
        let hsts = table
            .settings
            .hsts
            .as_ref()
            .and_then(|h| http::HeaderValue::from_str(&h.value()).ok());
        self.current.store(Arc::new(Snapshot {
            table,
            router,
            upstreams,
            route_stats,
            access,
            trusted,
            hsts,
        }));
        self.version.send_replace(version);
        self.metrics.config_swaps.fetch_add(1, Ordering::Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.metrics.last_swap_unix_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Prometheus text exposition of the data plane: the counters of [`Metrics::render`], and
    /// the endpoint state of every upstream in the served table (read at scrape time, so the
    /// request path pays nothing for it; one series pair per upstream of the table).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        self.metrics.render(out);
        let snap = self.snapshot();
        let mut ids: Vec<&String> = snap.upstreams.keys().collect();
        ids.sort();
        out.push_str(
            "# HELP raftgate_upstream_endpoints Endpoints of each upstream in the served table, by passive-health state.\n",
        );
        out.push_str("# TYPE raftgate_upstream_endpoints gauge\n");
        let now = std::time::Instant::now();
        for id in ids {
            let up = &snap.upstreams[id];
            let ejected = up.endpoints.iter().filter(|e| e.is_ejected(now)).count();
            let available = up.endpoints.len() - ejected;
            let id = crate::metrics::escape(id);
            let _ = writeln!(
                out,
                "raftgate_upstream_endpoints{{upstream=\"{id}\",state=\"available\"}} {available}\nraftgate_upstream_endpoints{{upstream=\"{id}\",state=\"ejected\"}} {ejected}"
            );
        }
    }
}
