//! The node's YAML config: every field, its default, and validation before anything binds.
//!
//! The field list with defaults is also in `docs/config.md`; keep the two in step.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use raftgate_proxy::model::Balance;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole config. Unknown fields are an error, so a typo never silently falls back to a default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name in logs, metrics and the status API. Default: the host name.
    pub node_id: Option<String>,
    /// Client listeners.
    pub listen: Listen,
    /// Admin API address (health, metrics, status). Default `127.0.0.1:10254`, as ingress-nginx.
    pub admin: Admin,
    /// Which Ingresses are ours.
    pub ingress_class: IngressClassConfig,
    /// Where routing objects come from.
    pub source: Source,
    /// The TLS certificate served when no Ingress certificate matches the SNI name.
    pub tls: TlsConfig,
    /// Client-side HTTP limits.
    pub http: HttpConfig,
    /// Defaults for every route, overridable per Ingress with annotations (ingress-nginx's ConfigMap keys).
    pub defaults: RouteDefaults,
    /// L4 (TCP/UDP) services.
    pub l4: L4Config,
    /// `namespace/name` of an ingress-nginx-style ConfigMap whose keys (`proxy-body-size`,
    /// `hsts`, `use-forwarded-headers`…) override `defaults` while the node runs. Unset: none.
    pub controller_configmap: Option<String>,
    /// The Raft group. Unset: this node runs alone, its source feeding its own data plane.
    pub raft: Option<RaftConfig>,
    /// Floating IPs the group hands to healthy members (needs `raft`). Unset: none.
    pub vip: Option<VipConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Worker threads; 0 (default) means one per CPU this process may run on. With one, the
    /// node runs a single-threaded runtime (no work stealing), which is fastest per core.
    pub worker_threads: usize,
}

/// Client listeners.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Plain HTTP (HTTP/1.1 and h2c). Default `0.0.0.0:8080`; use `:80` in production.
    pub http: Option<SocketAddr>,
    /// HTTPS (HTTP/1.1 and h2 by ALPN). Default `0.0.0.0:8443`; use `:443` in production.
    pub https: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
        }
    }
}

/// Admin listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Default `127.0.0.1:10254`.
    pub listen: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 10254)),
        }
    }
}

/// Ingress class selection.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressClassConfig {
    /// The class served. Default `raftgate`; set `nginx` to take over an ingress-nginx class.
    pub name: String,
    /// Serve Ingresses with no class at all (ingress-nginx's `--watch-ingress-without-class`). Default false.
    pub watch_without_class: bool,
    /// The `spec.controller` the IngressClass object must name (ingress-nginx's
    /// `--controller-class`). Default `raftgate.io/ingress-controller`; set `k8s.io/ingress-nginx`
    /// to take over an ingress-nginx IngressClass unchanged. Without an IngressClass object,
    /// Ingresses naming the class are served.
    pub controller: String,
}

impl Default for IngressClassConfig {
    fn default() -> Self {
        IngressClassConfig {
            name: "raftgate".into(),
            watch_without_class: false,
            controller: crate::compiler::CONTROLLER.into(),
        }
    }
}

/// The config source.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A directory of Kubernetes manifests, watched for changes.
    Manifests {
        /// The directory (read recursively; `*.yaml`, `*.yml`, `*.json`; hidden entries skipped).
        /// Unset: a built-in demo that routes `demo.localhost` to the admin API.
        #[serde(default)]
        path: Option<PathBuf>,
        /// How often the directory is checked. Default `250ms`.
        #[serde(default = "default_poll", deserialize_with = "duration")]
        poll_interval: Duration,
    },
    /// The Kubernetes API, watched by the Raft leader alone (or by this node when it runs alone).
    Kubernetes(KubeSource),
}

/// Watching the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeSource {
    /// A kubeconfig file. Unset: `--kubeconfig`, then `KUBECONFIG`, then `~/.kube/config`,
    /// then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose Ingresses, Services, EndpointSlices and Secrets are watched. Empty (default): all.
    pub namespaces: Vec<String>,
    /// How long changes are gathered before one compilation. Default `10ms`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub debounce: Duration,
    /// Addresses written to `status.loadBalancer.ingress` of our Ingresses (IPs or host names).
    /// Empty (default): the members' addresses (the host part of each Raft `advertise`), or,
    /// running alone, none — then status is not written.
    pub status_addresses: Vec<String>,
    /// Write Ingress status at all. Default true.
    pub update_status: bool,
    /// Write Events on Ingresses that are rejected or served with a problem. Default true.
    pub events: bool,
    /// The user agent sent to the API server; `{node}` is replaced by the node id.
    /// Default `raftgate/{node}`, so audit logs show which member wrote.
    pub user_agent: String,
}

impl Default for KubeSource {
    fn default() -> Self {
        KubeSource {
            kubeconfig: None,
            namespaces: Vec::new(),
            debounce: Duration::from_millis(10),
            status_addresses: Vec::new(),
            update_status: true,
            events: true,
            user_agent: "raftgate/{node}".into(),
        }
    }
}

fn default_poll() -> Duration {
    Duration::from_millis(250)
}

impl Default for Source {
    fn default() -> Self {
        Source::Manifests {
            path: None,
            poll_interval: default_poll(),
        }
    }
}

/// The default certificate.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain file. Unset: a self-signed certificate is generated at start.
    pub default_certificate: Option<PathBuf>,
    /// PEM private key file for `default_certificate`.
    pub default_key: Option<PathBuf>,
}

/// Client-side limits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Open client connections allowed at once. Default 16384.
    pub max_connections: usize,
    /// Time to receive a request's headers or finish a TLS handshake. Default `60s` (nginx's `client_header_timeout`).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub header_read_timeout: Duration,
    /// Largest request head; larger gets 431. Default `32k`.
    #[serde(deserialize_with = "size", serialize_with = "ser_size")]
    pub max_header_bytes: u64,
    /// Serve HTTP/2. Default true.
    pub http2: bool,
    /// On SIGTERM, how long in-flight requests get to finish. Default `30s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub drain_grace: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            http2: true,
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// Route defaults (the ingress-nginx ConfigMap keys of the same names).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteDefaults {
    /// Redirect HTTP to HTTPS (308) on hosts with TLS. Default true.
    pub ssl_redirect: bool,
    /// Largest request body; `0` is unlimited. Default `1m`.
    #[serde(deserialize_with = "size", serialize_with = "ser_size")]
    pub proxy_body_size: u64,
    /// Default `5s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub proxy_connect_timeout: Duration,
    /// Between two reads from the upstream; also the WebSocket idle timeout. Default `60s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub proxy_read_timeout: Duration,
    /// Between two writes to the upstream. Default `60s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub proxy_send_timeout: Duration,
    /// Endpoints a failed connect is tried on, in all. Default 3.
    pub proxy_next_upstream_tries: u32,
    /// Consecutive failures that eject an endpoint; 0 disables passive health. Default 1.
    pub upstream_max_fails: u32,
    /// How long an ejected endpoint sits out. Default `10s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub upstream_fail_timeout: Duration,
    /// `round_robin` (default), `least_request` or `ewma`.
    pub load_balance: Balance,
    /// One structured log line per request (target `raftgate::access`). Default false.
    pub access_log: bool,
    /// The status of a request rejected by `limit-rps`/`limit-rpm`/`limit-connections`. Default 503.
    pub limit_req_status_code: u16,
    /// Trust `X-Forwarded-For`/`-Proto`/`-Host`/`-Port` from peers in `proxy_real_ip_cidr`
    /// (raftgate behind another proxy or load balancer). Default false.
    pub use_forwarded_headers: bool,
    /// Peers trusted to tell the client address by `X-Forwarded-For` or a PROXY header.
    /// Default everything (`0.0.0.0/0`, `::/0`), as ingress-nginx.
    pub proxy_real_ip_cidr: Vec<String>,
    /// Client connections on the HTTP and HTTPS listeners start with a PROXY protocol
    /// header (v1 or v2), required from every client. Default false.
    pub use_proxy_protocol: bool,
    /// Send `Strict-Transport-Security` on HTTPS responses of hosts with TLS. Default true.
    pub hsts: bool,
    /// Default 15724800 (182 days), as ingress-nginx.
    pub hsts_max_age: u64,
    /// Default true.
    pub hsts_include_subdomains: bool,
    /// Default false.
    pub hsts_preload: bool,
    /// TLS versions offered: `TLSv1.2`, `TLSv1.3` or both. Default `TLSv1.2 TLSv1.3`.
    pub ssl_protocols: String,
    /// Idle keep-alive connections kept per upstream endpoint. Default 320.
    pub upstream_keepalive_connections: u32,
    /// Statuses (4xx, 5xx) the error backend answers on every route whose Ingress has no
    /// `custom-http-errors` annotation of its own (ingress-nginx's ConfigMap key). Default none.
    pub custom_http_errors: Vec<u16>,
}

impl Default for RouteDefaults {
    fn default() -> Self {
        RouteDefaults {
            ssl_redirect: true,
            proxy_body_size: 1024 * 1024,
            proxy_connect_timeout: Duration::from_secs(5),
            proxy_read_timeout: Duration::from_secs(60),
            proxy_send_timeout: Duration::from_secs(60),
            proxy_next_upstream_tries: 3,
            upstream_max_fails: 1,
            upstream_fail_timeout: Duration::from_secs(10),
            load_balance: Balance::RoundRobin,
            access_log: false,
            limit_req_status_code: 503,
            use_forwarded_headers: false,
            proxy_real_ip_cidr: vec!["0.0.0.0/0".into(), "::/0".into()],
            use_proxy_protocol: false,
            hsts: true,
            hsts_max_age: 15_724_800,
            hsts_include_subdomains: true,
            hsts_preload: false,
            ssl_protocols: "TLSv1.2 TLSv1.3".into(),
            upstream_keepalive_connections: 320,
            custom_http_errors: Vec::new(),
        }
    }
}

/// L4 services, declared as ingress-nginx users do, in ConfigMaps.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct L4Config {
    /// `namespace/name` of the tcp-services ConfigMap (ingress-nginx's
    /// `--tcp-services-configmap`). Unset: no TCP services.
    pub tcp_services_configmap: Option<String>,
    /// `namespace/name` of the udp-services ConfigMap. Unset: no UDP services.
    pub udp_services_configmap: Option<String>,
    /// The address L4 ports listen on. Default `0.0.0.0`.
    pub bind: std::net::IpAddr,
    /// Upstream connect timeout. Default `5s` (ingress-nginx's stream `proxy_connect_timeout`).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// A TCP connection with no bytes either way for this long is closed. Default `600s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// A UDP client's session ends after this long without packets. Default `30s`.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub udp_session_timeout: Duration,
    /// UDP sessions kept at once per port; new clients' datagrams are dropped beyond it. Default 16384.
    pub max_udp_sessions: usize,
    /// After 64 KiB in one direction, a TCP connection's bytes go from socket to socket with
    /// `splice(2)` instead of through user space. Default `true`.
    pub splice: bool,
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            tcp_services_configmap: None,
            udp_services_configmap: None,
            bind: std::net::IpAddr::from([0, 0, 0, 0]),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            udp_session_timeout: Duration::from_secs(30),
            max_udp_sessions: 16_384,
            splice: true,
        }
    }
}

/// Membership of a Raft group: the leader runs the source and replicates the compiled state.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// This member's id: a number unique in the group, never reused. Required.
    pub id: u64,
    /// The peer gRPC listener. Default `0.0.0.0:7946`.
    pub listen: SocketAddr,
    /// How peers reach this member (`host:port`). Default: `listen`, which must then not be a
    /// wildcard address.
    pub advertise: Option<String>,
    /// Raft log, vote, state and snapshots (sled). Default `/var/lib/raftgate`.
    pub data_dir: PathBuf,
    /// Peers (`host:port`) of an existing group to join on first start. Empty (default): start a
    /// new group with this member as its first voter, once; later starts recover from `data_dir`.
    pub join: Vec<String>,
    /// Join as a learner only: replicate and serve, but never vote. Default false.
    pub learner: bool,
    /// Mutual TLS between members (see `raftgate cert`). Required unless `insecure`.
    pub tls: Option<RaftTls>,
    /// Plain-text peer traffic without authentication. Only for tests; logged loudly. Default false.
    pub insecure: bool,
    /// Leader heartbeat. Default `50ms`.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice it). Default `150ms`: a dead leader is
    /// replaced in 450–600 ms, which keeps VIP failover under a second (docs/config.md).
    #[serde(deserialize_with = "duration")]
    pub election_timeout: Duration,
    /// Take a snapshot every this many entries. Default 1000.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot for followers slightly behind. Default 100.
    pub logs_to_keep: u64,
    /// Remove this member from the group when it stops on SIGTERM. Default false.
    pub leave_on_shutdown: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            data_dir: PathBuf::from("/var/lib/raftgate"),
            join: Vec::new(),
            learner: false,
            tls: None,
            insecure: false,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
            snapshot_every: 1000,
            logs_to_keep: 100,
            leave_on_shutdown: false,
        }
    }
}

/// Floating IPs: the pool, this member's preference, and the lease timing (docs/config.md).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VipConfig {
    /// The pool: `{addr, prefix, interface}`; without `interface`, the one whose subnet holds `addr`.
    pub addresses: Vec<raftgate_vip::VipSpec>,
    /// `prefer`, `neutral` (default) or `avoid` VIPs on this member.
    pub preference: raftgate_vip::Preference,
    /// How long a member holds VIPs after its last granted renewal. Default `300ms`; the same on every member.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// How often a member renews. Default `100ms`.
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    /// A holder stops this much before its lease ends. Default `50ms`.
    #[serde(deserialize_with = "duration")]
    pub release_guard: Duration,
    /// Assumed worst clock rate error, in parts per million. Default 10000 (1 %).
    pub drift_ppm: u32,
    /// A returning member gets VIPs back from healthy members only after this long. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub preempt_delay: Duration,
    /// After a handover the old owner keeps serving, silently, for this long. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
    /// Gratuitous ARP / unsolicited NA sent on taking a VIP. Default 3.
    pub announce_repeat: u32,
    /// Spacing of that burst. Default `100ms`.
    #[serde(deserialize_with = "duration")]
    pub announce_interval: Duration,
    /// Periodic re-announcement while holding. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub reannounce: Duration,
    /// A member serving a routing config older than what was committed this long ago gets no VIP. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub max_config_lag: Duration,
}

impl Default for VipConfig {
    fn default() -> Self {
        let t = raftgate_vip::Timing::default();
        Self {
            addresses: Vec::new(),
            preference: raftgate_vip::Preference::Neutral,
            lease: t.lease,
            refresh: t.refresh,
            release_guard: t.release_guard,
            drift_ppm: t.drift_ppm,
            preempt_delay: t.preempt_delay,
            grace: t.grace,
            announce_repeat: t.announce_repeat,
            announce_interval: t.announce_interval,
            reannounce: t.reannounce,
            max_config_lag: t.max_config_lag,
        }
    }
}

impl VipConfig {
    pub fn timing(&self) -> raftgate_vip::Timing {
        raftgate_vip::Timing {
            lease: self.lease,
            drift_ppm: self.drift_ppm,
            release_guard: self.release_guard,
            refresh: self.refresh,
            preempt_delay: self.preempt_delay,
            grace: self.grace,
            announce_repeat: self.announce_repeat,
            announce_interval: self.announce_interval,
            reannounce: self.reannounce,
            max_config_lag: self.max_config_lag,
        }
    }

    /// The validated pool.
    pub fn pool(&self) -> Result<raftgate_vip::Pool, ConfigError> {
        raftgate_vip::Pool::new(self.addresses.clone()).map_err(|e| ConfigError::Invalid(format!("vip.addresses: {e}")))
    }
}

impl RaftConfig {
    /// The address peers use for this member.
    pub fn advertised(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

/// PEM files for peer mutual TLS.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTls {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This member's certificate, signed by the CA.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `raftgate=debug`. `RUST_LOG` overrides it. Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Config = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.listen.http.is_none() && self.listen.https.is_none() {
            return bad("listen: at least one of http and https is needed");
        }
        if let Source::Kubernetes(k) = &self.source {
            if k.debounce > Duration::from_secs(10) {
                return bad("source.debounce: at most 10s (changes would wait that long to be served)");
            }
            if k.namespaces.iter().any(|n| n.is_empty()) {
                return bad("source.namespaces: an empty name; leave the list empty to watch all namespaces");
            }
            for a in &k.status_addresses {
                let hostname = !a.is_empty()
                    && a.len() <= 253
                    && a.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    });
                if a.parse::<std::net::IpAddr>().is_err() && !hostname {
                    return Err(ConfigError::Invalid(format!(
                        "source.status_addresses: {a:?} is neither an IP address nor a DNS name (no port, lower case)"
                    )));
                }
            }
            if http::HeaderValue::from_str(&k.user_agent).is_err() {
                return bad("source.user_agent: not a valid HTTP header value");
            }
        }
        if self.http.max_connections == 0 {
            return bad("http.max_connections must be at least 1");
        }
        if self.ingress_class.name.is_empty() {
            return bad("ingress_class.name must not be empty");
        }
        if self.tls.default_certificate.is_some() != self.tls.default_key.is_some() {
            return bad("tls.default_certificate and tls.default_key go together");
        }
        if self.defaults.proxy_connect_timeout.is_zero() || self.defaults.proxy_read_timeout.is_zero() {
            return bad("defaults: timeouts must be above zero");
        }
        if let Err(e) = parse_ssl_protocols(&self.defaults.ssl_protocols) {
            return bad(&format!("defaults.ssl_protocols: {e}"));
        }
        if let Some(c) = self
            .defaults
            .custom_http_errors
            .iter()
            .find(|c| !(400..=599).contains(*c))
        {
            return bad(&format!("defaults.custom_http_errors: {c} is not a 4xx or 5xx status"));
        }
        for c in &self.defaults.proxy_real_ip_cidr {
            if let Err(e) = raftgate_proxy::limit::IpNet::parse(c) {
                return bad(&format!("defaults.proxy_real_ip_cidr: {e}"));
            }
        }
        if let Some(r) = &self.raft {
            if r.id == 0 {
                return bad("raft.id is required and must be above 0");
            }
            match (&r.tls, r.insecure) {
                (None, false) => {
                    return bad(
                        "raft.tls (ca, cert, key) is required; create them with `raftgate cert`, or set raft.insecure: true for a test setup",
                    );
                }
                (Some(_), true) => return bad("raft.tls and raft.insecure exclude each other"),
                _ => {}
            }
            if r.advertise.is_none() && r.listen.ip().is_unspecified() {
                return bad("raft.advertise is required when raft.listen is a wildcard address");
            }
            if r.heartbeat.is_zero() || r.election_timeout < r.heartbeat * 3 {
                return bad("raft.election_timeout must be at least three heartbeats");
            }
            if r.snapshot_every == 0 {
                return bad("raft.snapshot_every must be at least 1");
            }
        }
        if let Some(v) = &self.vip {
            if self.raft.is_none() {
                return bad("vip needs raft: the group decides who owns each VIP (a one-member group is enough)");
            }
            v.pool()?;
            if let Err(e) = v.timing().validate() {
                return bad(&format!("vip: {e}"));
            }
        }
        let addrs = [self.listen.http, self.listen.https, Some(self.admin.listen)];
        for (i, a) in addrs.iter().enumerate() {
            if let Some(a) = a
                && a.port() != 0
                && addrs[i + 1..].iter().flatten().any(|b| b == a)
            {
                return bad(&format!("address {a} is used by two listeners"));
            }
        }
        Ok(())
    }

    /// The node id, or the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "raftgate".into())
        })
    }
}

/// Parses nginx's `ssl_protocols` list; raftgate offers TLS 1.2 and 1.3 only.
pub fn parse_ssl_protocols(s: &str) -> Result<raftgate_proxy::model::TlsVersions, String> {
    let mut v = raftgate_proxy::model::TlsVersions {
        tls12: false,
        tls13: false,
    };
    for p in s.split_whitespace() {
        match p {
            "TLSv1.2" => v.tls12 = true,
            "TLSv1.3" => v.tls13 = true,
            "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {
                return Err(format!("{p} is not offered (insecure); use TLSv1.2 and TLSv1.3"));
            }
            other => return Err(format!("unknown protocol {other:?}")),
        }
    }
    if !v.tls12 && !v.tls13 {
        return Err("no protocol given".into());
    }
    Ok(v)
}

/// Parses a duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds (as ingress-nginx annotations).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// Parses an nginx size: `0`, `512`, `8k`, `1m`, `1g` (either case).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_lowercase() {
        'k' => (&s[..s.len() - 1], 1024),
        'm' => (&s[..s.len() - 1], 1024 * 1024),
        'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

impl fmt::Display for NumOrStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumOrStr::Num(n) => write!(f, "{n}"),
            NumOrStr::Str(s) => f.write_str(s),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = NumOrStr::deserialize(d)?;
    parse_duration(&v.to_string())
        .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {v:?}; use e.g. 250ms, 5s, 2m")))
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = NumOrStr::deserialize(d)?;
    parse_size(&v.to_string())
        .ok_or_else(|| serde::de::Error::custom(format!("invalid size {v:?}; use e.g. 0, 512, 8k, 1m")))
}

impl fmt::Debug for NumOrStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn ser_size<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let c: Config = serde_yaml::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.defaults.proxy_body_size, 1024 * 1024);
        assert_eq!(c.admin.listen.port(), 10254);
    }

    #[test]
    fn durations_and_sizes_parse_like_nginx() {
        let c: Config = serde_yaml::from_str(
            "defaults: {proxy_read_timeout: 3600, proxy_connect_timeout: 250ms, proxy_body_size: 8m}\nhttp: {max_header_bytes: 16k}",
        )
        .unwrap();
        assert_eq!(c.defaults.proxy_read_timeout, Duration::from_secs(3600));
        assert_eq!(c.defaults.proxy_connect_timeout, Duration::from_millis(250));
        assert_eq!(c.defaults.proxy_body_size, 8 * 1024 * 1024);
        assert_eq!(c.http.max_header_bytes, 16 * 1024);
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5 s"), None);
    }

    #[test]
    fn typos_and_bad_values_are_clear_errors() {
        let e = serde_yaml::from_str::<Config>("listen: {htp: 1.2.3.4:80}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `htp`"), "{e}");
        let e = serde_yaml::from_str::<Config>("defaults: {proxy_read_timeout: soon}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid duration"), "{e}");
        let c: Config = serde_yaml::from_str("listen: {http: 127.0.0.1:80, https: 127.0.0.1:80}").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("used by two listeners"));
        let c: Config = serde_yaml::from_str("tls: {default_certificate: /x.pem}").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn source_kinds() {
        let c: Config =
            serde_yaml::from_str("source: {kind: manifests, path: /etc/raftgate/manifests, poll_interval: 1s}")
                .unwrap();
        assert_eq!(
            c.source,
            Source::Manifests {
                path: Some("/etc/raftgate/manifests".into()),
                poll_interval: Duration::from_secs(1)
            }
        );
        assert!(serde_yaml::from_str::<Config>("source: {kind: nope}").is_err());
    }

    #[test]
    fn kubernetes_source() {
        let c: Config = serde_yaml::from_str(
            "source: {kind: kubernetes, kubeconfig: /k, namespaces: [a, b], debounce: 5ms, status_addresses: [10.0.0.9, lb.example.com]}",
        )
        .unwrap();
        let Source::Kubernetes(k) = &c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(k.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(k.namespaces, ["a", "b"]);
        assert_eq!(k.debounce, Duration::from_millis(5));
        assert!(k.update_status && k.events);
        c.validate().unwrap();
        let e = serde_yaml::from_str::<Config>("source: {kind: kubernetes, namespace: [a]}").unwrap_err();
        assert!(e.to_string().contains("unknown field `namespace`"), "{e}");
        let c: Config =
            serde_yaml::from_str("source: {kind: kubernetes, status_addresses: [\"10.0.0.1:80\"]}").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("10.0.0.1:80"));
        let c: Config = serde_yaml::from_str("source: {kind: kubernetes, debounce: 1m}").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("debounce"));
        let c: Config = serde_yaml::from_str("source: {kind: kubernetes}").unwrap();
        assert_eq!(c.source, Source::Kubernetes(KubeSource::default()));
    }
}
