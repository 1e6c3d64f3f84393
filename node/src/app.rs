//! Wiring: bind the listeners, start the source → compiler → data plane loop, and drain.
//!
//! ```text
//! manifests dir ──scan──► Objects ──compile──► RoutingTable ──install──► Dataplane (ArcSwap)
//!                                     │                                     ▲
//!                                     └─ problems ─► logs, /api/v1/status   │ every request
//!                                                                   listeners (http, https)
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftgate_proxy::Dataplane;
use raftgate_proxy::metrics::Metrics;
use raftgate_proxy::server::ServerSettings;
use raftgate_proxy::server::Shared;
use raftgate_proxy::tls::SniResolver;
use raftgate_proxy::tls::TlsError;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::ClusterState;
use crate::cluster::RaftSink;
use crate::compiler::Compiler;
use crate::compiler::Options;
use crate::compiler::Problem;
use crate::compiler::Severity;
use crate::config::Config;
use crate::config::Source;
use crate::objects::Objects;
use crate::source::SourceStats;
use crate::source::manifests::ManifestDir;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("default certificate: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Raft(#[from] raftgate_raft::Error),
}

/// A listener as reported by the status API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ListenerInfo {
    pub name: &'static str,
    pub address: SocketAddr,
    pub tls: bool,
}

/// What the admin API shows about a node.
#[derive(Debug)]
pub struct NodeState {
    pub node_id: String,
    pub listeners: Vec<ListenerInfo>,
    pub dataplane: Arc<Dataplane>,
    ready: AtomicBool,
    ready_notify: Notify,
    problems: Mutex<Vec<Problem>>,
    source_errors: Mutex<Vec<String>>,
    /// What the config source did, for `/metrics`.
    pub source_stats: crate::source::SourceStats,
    /// Set once the L4 manager runs, for metrics and status.
    l4: Mutex<Option<Arc<raftgate_proxy::l4::Manager>>>,
    /// Set in Raft mode.
    cluster: std::sync::OnceLock<Arc<ClusterState>>,
    /// Recent events, for the status page.
    pub events: crate::events::Events,
    /// In Raft mode: the replicated state version (routing and VIP state) applied here.
    applied_version: AtomicU64,
}

impl NodeState {
    /// The first table has been installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.ready_notify.notify_waiters();
        }
    }

    /// This node's Raft membership, in Raft mode.
    pub fn cluster(&self) -> Option<&Arc<ClusterState>> {
        self.cluster.get()
    }

    /// Files or objects the source could not read, as of the last change.
    pub fn source_errors(&self) -> Vec<String> {
        self.source_errors.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The L4 manager, once started.
    pub fn l4(&self) -> Option<Arc<raftgate_proxy::l4::Manager>> {
        self.l4.lock().ok().and_then(|l| l.clone())
    }

    /// The config version this member serves: in Raft mode the replicated state version it has
    /// applied, which every member that applied the same log reports alike (also after a restart,
    /// and whether the last batch moved a route or a VIP); alone, its routing table's version.
    pub fn config_version(&self) -> u64 {
        if self.cluster().is_some() {
            self.applied_version.load(Ordering::Acquire)
        } else {
            self.dataplane.version()
        }
    }

    pub(crate) fn set_applied_version(&self, version: u64) {
        self.applied_version.fetch_max(version, Ordering::AcqRel);
    }

    /// The problems of the last compilation.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub state: Arc<NodeState>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The TCP/UDP listeners of the tcp/udp-services entries.
    pub l4: Arc<raftgate_proxy::l4::Manager>,
    drain: watch::Sender<bool>,
    shared: Shared,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl Node {
    /// Validates the config, binds every listener, and starts serving.
    pub async fn start(cfg: Config) -> Result<Node, NodeError> {
        cfg.validate()?;
        let default_key = match (&cfg.tls.default_certificate, &cfg.tls.default_key) {
            (Some(c), Some(k)) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).map_err(|source| NodeError::Read {
                        path: p.clone(),
                        source,
                    })
                };
                raftgate_proxy::tls::certified_key(&read(c)?, &read(k)?)?
            }
            _ => {
                let (c, k) = raftgate_proxy::tls::self_signed(&["ingress.local"])?;
                raftgate_proxy::tls::certified_key(&c, &k)?
            }
        };
        let resolver = Arc::new(SniResolver::new(default_key));
        let acceptors = raftgate_proxy::tls::TlsAcceptors::new(resolver.clone())?;
        let dataplane = Arc::new(Dataplane::new(resolver, Arc::new(Metrics::default())));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            listen(addr).map_err(|source| NodeError::Bind { what, addr, source })
        };
        let admin = bind("admin", cfg.admin.listen).await?;
        let http = match cfg.listen.http {
            Some(a) => Some(bind("http", a).await?),
            None => None,
        };
        let https = match cfg.listen.https {
            Some(a) => Some(bind("https", a).await?),
            None => None,
        };
        let addr = |l: &TcpListener, what, a| {
            l.local_addr()
                .map_err(|source| NodeError::Bind { what, addr: a, source })
        };
        let admin_addr = addr(&admin, "admin", cfg.admin.listen)?;
        let http_addr = match (&http, cfg.listen.http) {
            (Some(l), Some(a)) => Some(addr(l, "http", a)?),
            _ => None,
        };
        let https_addr = match (&https, cfg.listen.https) {
            (Some(l), Some(a)) => Some(addr(l, "https", a)?),
            _ => None,
        };
        let mut listeners = vec![ListenerInfo {
            name: "admin",
            address: admin_addr,
            tls: false,
        }];
        listeners.extend(http_addr.map(|a| ListenerInfo {
            name: "http",
            address: a,
            tls: false,
        }));
        listeners.extend(https_addr.map(|a| ListenerInfo {
            name: "https",
            address: a,
            tls: true,
        }));
        for l in &listeners {
            tracing::info!(listener = l.name, address = %l.address, tls = l.tls, "listening");
        }

        let node_id = cfg.node_id();
        let state = Arc::new(NodeState {
            node_id,
            listeners,
            dataplane: dataplane.clone(),
            ready: AtomicBool::new(false),
            ready_notify: Notify::new(),
            problems: Mutex::new(Vec::new()),
            source_errors: Mutex::new(Vec::new()),
            source_stats: Default::default(),
            l4: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            events: crate::events::Events::default(),
            applied_version: AtomicU64::new(0),
        });
        let (drain, drain_rx) = watch::channel(false);
        let settings = ServerSettings {
            max_connections: cfg.http.max_connections,
            header_read_timeout: cfg.http.header_read_timeout,
            max_header_bytes: usize::try_from(cfg.http.max_header_bytes).unwrap_or(usize::MAX),
            http2: cfg.http.http2,
            https_port: https_addr.map_or(443, |a| a.port()),
        };
        let shared = Shared::new(dataplane.clone(), settings, drain_rx.clone());
        let mut tasks = Vec::new();
        if let Some(l) = http {
            tasks.push(raftgate_proxy::server::spawn(l, None, shared.clone()));
        }
        if let Some(l) = https {
            tasks.push(raftgate_proxy::server::spawn(l, Some(acceptors), shared.clone()));
        }
        let l4 = Arc::new(raftgate_proxy::l4::Manager::spawn(
            dataplane.clone(),
            raftgate_proxy::l4::L4Settings {
                bind_ip: cfg.l4.bind,
                connect_timeout: cfg.l4.connect_timeout,
                idle_timeout: cfg.l4.idle_timeout,
                udp_session_timeout: cfg.l4.udp_session_timeout,
                max_udp_sessions: cfg.l4.max_udp_sessions,
                splice_after: cfg.l4.splice.then_some(64 * 1024),
                ..raftgate_proxy::l4::L4Settings::default()
            },
            drain_rx.clone(),
        ));
        if let Ok(mut slot) = state.l4.lock() {
            *slot = Some(l4.clone());
        }
        tasks.push(tokio::spawn(crate::admin::serve(
            admin,
            state.clone(),
            drain_rx.clone(),
        )));

        let source = cfg.source.clone();
        if matches!(&source, Source::Manifests { path: None, .. }) {
            tracing::info!("no source.path configured: serving the built-in demo (Host: demo.localhost → admin API)");
        }
        let options = Options::from_config(&cfg);
        let node_id = state.node_id.clone();
        let status_addresses = match &cfg.source {
            Source::Kubernetes(k) => k.status_addresses.clone(),
            Source::Manifests { .. } => Vec::new(),
        };
        match &cfg.raft {
            None => {
                let fixed = status_addresses.clone();
                let addresses: crate::source::kubernetes::Addresses = Arc::new(move || fixed.clone());
                tasks.push(tokio::spawn(run_source(
                    source.clone(),
                    node_id.clone(),
                    admin_addr,
                    Compiler::new(options),
                    Publisher::new(state.clone(), None),
                    addresses,
                    drain_rx,
                )))
            }
            Some(rc) => {
                let (raft, events) = raftgate_raft::RaftNode::start(crate::cluster::settings(rc, admin_addr)?).await?;
                let (committed_tx, committed) = watch::channel(Arc::new(raftgate_proxy::RoutingTable::default()));
                let (vips_tx, vips_rx) = watch::channel(Arc::new(crate::vips::VipReplicated::default()));
                let mut vips = None;
                let mut shell = None;
                if let Some(vc) = cfg.vip.as_ref().filter(|v| !v.addresses.is_empty()) {
                    let (pool, timing) = (vc.pool()?, vc.timing());
                    let refused = match crate::vips::open_shell(&pool, &timing).await {
                        Ok(s) => {
                            shell = Some(s);
                            None
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "this member will not own VIPs; it keeps serving traffic");
                            Some(e)
                        }
                    };
                    vips = Some(Arc::new(crate::vips::Vips::new(
                        rc.id,
                        pool,
                        timing,
                        vc.preference,
                        refused,
                        vips_rx,
                    )));
                }
                let cluster = Arc::new(ClusterState {
                    raft: raft.clone(),
                    source: Default::default(),
                    committed: committed.clone(),
                    leave_on_shutdown: rc.leave_on_shutdown,
                    vips: vips.clone(),
                });
                tasks.push(tokio::spawn(crate::cluster::apply_loop(
                    events,
                    state.clone(),
                    committed_tx,
                    vips_tx,
                    cluster.clone(),
                )));
                let _ = state.cluster.set(cluster.clone());
                tasks.push(tokio::spawn(crate::cluster::watch_leader(
                    raft.clone(),
                    state.clone(),
                    drain_rx.clone(),
                )));
                if let Some(v) = vips {
                    tasks.extend(crate::vips::spawn(v, shell, raft.clone(), state.clone(), committed));
                }
                if rc.join.is_empty() {
                    raft.bootstrap().await?;
                } else if !raft.is_member() {
                    let (seeds, learner) = (rc.join.clone(), rc.learner);
                    tasks.push(tokio::spawn(async move {
                        if let Err(e) = raft.join(&seeds, learner).await {
                            tracing::error!(error = %e, "could not join the raft group");
                        }
                    }));
                }
                let source_state = state.clone();
                let source_drain = drain_rx.clone();
                let members = cluster.raft.clone();
                // Ingress status: the configured addresses, else the VIP pool (what clients
                // reach, as MetalLB users expect), else every member's advertised host.
                let vip_addresses: Vec<String> = cfg
                    .vip
                    .iter()
                    .flat_map(|v| v.addresses.iter().map(|a| a.addr.to_string()))
                    .collect();
                let addresses: crate::source::kubernetes::Addresses = Arc::new(move || {
                    if !status_addresses.is_empty() {
                        return status_addresses.clone();
                    }
                    if !vip_addresses.is_empty() {
                        return vip_addresses.clone();
                    }
                    members
                        .members()
                        .into_iter()
                        .filter_map(|(_, m)| advertised_host(&m.addr))
                        .collect()
                });
                let run = move |sink| {
                    tokio::spawn(run_source(
                        source.clone(),
                        node_id.clone(),
                        admin_addr,
                        Compiler::new(options.clone()),
                        Publisher::new(source_state.clone(), Some(sink)),
                        addresses.clone(),
                        source_drain.clone(),
                    ))
                };
                tasks.push(tokio::spawn(crate::cluster::supervise_source(cluster, run, drain_rx)));
            }
        }
        Ok(Node {
            state,
            http_addr,
            https_addr,
            l4,
            admin_addr,
            drain,
            shared,
            tasks,
            grace: cfg.http.drain_grace,
        })
    }

    /// Waits until the first routing table is being served.
    pub async fn ready(&self) {
        loop {
            let notified = self.state.ready_notify.notified();
            if self.state.is_ready() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the served version satisfies `f`.
    pub async fn wait_version(&self, f: impl Fn(u64) -> bool) -> u64 {
        let mut rx = self.state.dataplane.versions();
        match rx.wait_for(|v| f(*v)).await {
            Ok(v) => *v,
            Err(_) => self.state.dataplane.version(),
        }
    }

    /// Resolves, with the reason, once this member's Raft core has stopped by itself (a full
    /// or read-only data directory, say; see `RaftNode::failed`). Never without a cluster.
    pub async fn raft_failed(&self) -> String {
        match self.state.cluster() {
            Some(c) => c.raft.failed().await,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight requests finish within the drain grace, and stops.
    /// Returns how many client connections were still open when the grace ran out.
    pub async fn shutdown(self) -> usize {
        let grace = self.grace;
        self.shutdown_within(grace).await
    }

    pub async fn shutdown_within(self, grace: Duration) -> usize {
        // A member whose Raft has stopped cannot hand anything over, nor leave: its VIPs went
        // with its member loop, and the others elect a leader without it.
        if let Some(c) = self.state.cluster()
            && !c.raft.has_failed()
        {
            if let Some(v) = &c.vips {
                v.hand_over(&c.raft).await;
                v.stop_granting();
            }
            // A leader that leaves hands its leadership over first, so the group (and every VIP,
            // which lives on a leader's renewals) does not wait out an election timeout.
            match c.raft.hand_off_leadership(Duration::from_secs(2)).await {
                Ok(Some(_)) => {}
                // Still the leader (or never was): keep granting until Raft stops, as after a failure.
                Ok(None) => {
                    if let Some(v) = &c.vips {
                        v.resume_granting();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leaving without handing the leadership over");
                    if let Some(v) = &c.vips {
                        v.resume_granting();
                    }
                }
            }
        }
        if let Some(c) = self.state.cluster()
            && c.leave_on_shutdown
            && !c.raft.has_failed()
        {
            let id = c.raft.id();
            match c.raft.remove_member(id, false).await {
                Ok(()) => tracing::info!(id, "left the raft group"),
                Err(e) => tracing::warn!(id, error = %e, "could not leave the raft group"),
            }
        }
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        let _ = self.drain.send(true);
        let (left, left_l4) = tokio::join!(self.shared.drained(grace), self.l4.drained(grace));
        let left = left + left_l4;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(c) = self.state.cluster() {
            c.raft.shutdown().await;
        }
        if left > 0 {
            tracing::warn!(connections = left, "drain grace ran out; closing the rest");
        }
        left
    }
}

/// The accept backlog of client listeners. `TcpListener::bind` uses 128, which drops
/// connection attempts in a burst (the client then waits a second for its SYN to be resent).
const BACKLOG: u32 = 4096;

/// Binds a listener with [`BACKLOG`] and `SO_REUSEADDR` (so a restart does not wait out TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The host part of a Raft `advertise` address, as Ingress status shows it.
fn advertised_host(addr: &str) -> Option<String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return (!sa.ip().is_unspecified()).then(|| sa.ip().to_string());
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    (!host.is_empty()).then(|| host.trim_matches(['[', ']']).to_string())
}

/// Runs the configured source, feeding `publish`.
async fn run_source(
    source: Source,
    node_id: String,
    admin_addr: SocketAddr,
    compiler: Compiler,
    publish: Publisher,
    addresses: crate::source::kubernetes::Addresses,
    drain: watch::Receiver<bool>,
) {
    match source {
        Source::Manifests { path, poll_interval } => {
            let input = match path {
                Some(p) => Input::Dir(ManifestDir::new(p)),
                None => Input::Fixed(crate::demo::objects(admin_addr)),
            };
            source_loop(input, poll_interval, compiler, publish, drain).await
        }
        Source::Kubernetes(k) => {
            let opts = compiler.options();
            let config_maps = [&opts.tcp_services, &opts.udp_services, &opts.controller_configmap]
                .into_iter()
                .flatten()
                .map(|n| crate::source::kubernetes::config_map_key(n))
                .collect();
            crate::source::kubernetes::run(k, node_id, compiler, config_maps, publish, addresses, drain).await
        }
    }
}

/// Takes compiled tables to the data plane: through the Raft group, or straight in when
/// the node runs alone. Logs each problem once, not on every recompilation.
#[derive(Debug)]
pub(crate) struct Publisher {
    state: Arc<NodeState>,
    sink: Option<RaftSink>,
    reported: BTreeSet<String>,
    first: bool,
}

impl Publisher {
    fn new(state: Arc<NodeState>, sink: Option<RaftSink>) -> Publisher {
        Publisher {
            state,
            sink,
            reported: BTreeSet::new(),
            first: true,
        }
    }

    /// Publishes one compilation; false means the Raft group did not take it (try again).
    async fn publish_output(&mut self, out: crate::compiler::Output) -> bool {
        let now: BTreeSet<String> = out.problems.iter().map(ToString::to_string).collect();
        for p in &out.problems {
            if !self.reported.contains(&p.to_string()) {
                match p.severity {
                    Severity::Rejected => {
                        tracing::error!(kind = p.kind, object = %p.object, reason = %p.reason, "object rejected")
                    }
                    Severity::Warning => {
                        tracing::warn!(kind = p.kind, object = %p.object, reason = %p.reason, "object served with a problem")
                    }
                }
            }
        }
        self.reported = now;
        let by_object = out
            .problems
            .iter()
            .map(|p| {
                let severity = match p.severity {
                    Severity::Rejected => "rejected",
                    Severity::Warning => "warning",
                };
                (format!("{} {}", p.kind, p.object), format!("{severity}: {}", p.reason))
            })
            .collect();
        self.state.events.problems(crate::events::now_ms(), by_object);
        if let Ok(mut p) = self.state.problems.lock() {
            *p = out.problems;
        }
        let taken = if let Some(sink) = &mut self.sink {
            match sink.reconcile(&out.table).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "routing change not committed; will retry");
                    SourceStats::count(&self.state.source_stats.commit_failures, 1);
                    false
                }
            }
        } else {
            let dp = &self.state.dataplane;
            let current = dp.snapshot();
            let mut table = out.table;
            table.version = current.table.version;
            if self.first || table != *current.table {
                table.version = current.table.version + 1;
                let (version, routes) = (table.version, table.route_count());
                match dp.install(table) {
                    Ok(()) => {
                        tracing::info!(version, routes, "routing table applied");
                        self.state.events.push(
                            crate::events::now_ms(),
                            crate::events::EventKind::Config,
                            format!("routing table version {version} applied ({routes} routes)"),
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "routing table refused by the data plane; keeping the current one")
                    }
                }
            }
            self.state.mark_ready();
            true
        };
        if taken {
            self.first = false;
            let stats = &self.state.source_stats;
            SourceStats::count(&stats.compilations, 1);
            stats
                .last_publish_unix_ms
                .store(crate::events::now_ms(), Ordering::Relaxed);
        }
        taken
    }
}

impl crate::source::kubernetes::Publish for Publisher {
    fn publish(
        &mut self,
        out: crate::compiler::Output,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(self.publish_output(out))
    }

    fn source_error(&self) {
        SourceStats::count(&self.state.source_stats.errors, 1);
    }
}

enum Input {
    Dir(ManifestDir),
    Fixed(Objects),
}

async fn source_loop(
    mut input: Input,
    poll: Duration,
    mut compiler: Compiler,
    mut publisher: Publisher,
    mut drain: watch::Receiver<bool>,
) {
    let mut first = true;
    // A table the Raft group has not taken yet: compile and propose again on the next tick.
    let mut retry = false;
    loop {
        let objects = match &mut input {
            Input::Fixed(o) => (first || retry).then(|| o.clone()),
            Input::Dir(dir) => {
                let scan = dir.scan();
                for e in &scan.errors {
                    tracing::error!(error = %e, "manifest rejected");
                }
                SourceStats::count(&publisher.state.source_stats.errors, scan.errors.len() as u64);
                if !scan.errors.is_empty()
                    && let Ok(mut s) = publisher.state.source_errors.lock()
                {
                    s.extend(scan.errors.iter().map(ToString::to_string));
                    let excess = s.len().saturating_sub(100);
                    s.drain(..excess);
                }
                if scan.changed || first || retry {
                    let (objs, dup) = dir.objects();
                    for e in dup {
                        tracing::warn!(error = %e, "duplicate object");
                    }
                    Some(objs)
                } else {
                    None
                }
            }
        };
        if let Some(objs) = objects {
            retry = !publisher.publish_output(compiler.compile(&objs)).await;
            first = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = raftgate_proxy::server::draining(&mut drain) => return,
        }
    }
}

/// What `raftgate check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Files or objects that could not be read.
    pub manifest_errors: Vec<String>,
    /// Problems the compiler found.
    pub problems: Vec<Problem>,
    pub routes: usize,
    pub hosts: usize,
    /// L4 services, as `tcp/7306 -> namespace/service:port`.
    pub l4: Vec<String>,
}

impl CheckReport {
    /// Anything rejected outright.
    pub fn failed(&self) -> bool {
        !self.manifest_errors.is_empty() || self.problems.iter().any(|p| p.severity == Severity::Rejected)
    }
}

/// Reads and compiles the configured manifests once, without binding anything.
pub fn check(cfg: &Config) -> CheckReport {
    let mut compiler = Compiler::new(Options::from_config(cfg));
    let mut report = CheckReport::default();
    let objs = match &cfg.source {
        Source::Kubernetes(_) => {
            report
                .manifest_errors
                .push("`check` reads manifests; this config's source is the Kubernetes API".into());
            Objects::default()
        }
        Source::Manifests { path: Some(p), .. } => {
            let mut dir = ManifestDir::new(p);
            let scan = dir.scan();
            report
                .manifest_errors
                .extend(scan.errors.iter().map(ToString::to_string));
            let (objs, dup) = dir.objects();
            report.manifest_errors.extend(dup.iter().map(ToString::to_string));
            objs
        }
        Source::Manifests { path: None, .. } => crate::demo::objects(cfg.admin.listen),
    };
    let out = compiler.compile(&objs);
    report.routes = out.table.route_count();
    report.hosts = out.table.vhosts.len();
    report.l4 = out
        .table
        .l4
        .iter()
        .map(|(k, s)| format!("{k} -> {}", s.upstream))
        .collect();
    report.problems = out.problems;
    report
}
