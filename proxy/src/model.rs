//! The routing model: plain, versioned data that the compiler produces and Raft will replicate.
//!
//! Nothing here does I/O or holds runtime state. A [`RoutingTable`] is a value:
//! two tables compare with `==`, serialise with serde, and [`diff`] yields the
//! smallest list of [`Delta`]s that turns one into the other. The data plane
//! compiles a table into a [`crate::router::Router`] and swaps it in atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use serde::Serialize;

/// The whole routing state a node serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Grows with every change the source makes; members report the version they serve.
    pub version: u64,
    /// Virtual hosts keyed by host name: `foo.com`, `*.foo.com`, or [`ANY_HOST`].
    pub vhosts: BTreeMap<String, VirtualHost>,
    /// Upstreams keyed by their id (see [`UpstreamId`]).
    pub upstreams: BTreeMap<String, Upstream>,
    /// Certificates keyed by their id (`namespace/secret`).
    pub certificates: BTreeMap<String, Certificate>,
    /// SNI name (exact or `*.` wildcard) to certificate id.
    pub sni: BTreeMap<String, String>,
    /// Where a request goes when no virtual host or route matches.
    pub default_backend: Option<Backend>,
    /// Settings that apply to every route.
    pub settings: GlobalSettings,
    /// L4 services keyed by [`L4Service::key`] (`tcp/7306`, `udp/53`).
    #[serde(default)]
    pub l4: BTreeMap<String, L4Service>,
}

/// One external port forwarded at L4, as an entry of ingress-nginx's tcp-services or
/// udp-services ConfigMap: `"<port>": "<namespace>/<service>:<port>[:PROXY][:PROXY]"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Service {
    pub protocol: L4Protocol,
    /// The port raftgate listens on.
    pub port: u16,
    /// The upstream id; its endpoints are the Service's ready endpoints.
    pub upstream: String,
    /// Decode a PROXY protocol header (v1 or v2) from the client (the first `PROXY`).
    pub proxy_protocol_in: bool,
    /// Send a PROXY protocol v1 header to the upstream (the second `PROXY`).
    pub proxy_protocol_out: bool,
    /// The ConfigMap entry this came from (`namespace/name:port`), for logs.
    pub source: String,
}

impl L4Service {
    /// The map key: `tcp/7306` or `udp/53`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.protocol.as_str(), self.port)
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Protocol {
    Tcp,
    Udp,
}

impl L4Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "tcp",
            L4Protocol::Udp => "udp",
        }
    }
}

/// The key of the virtual host that serves rules without a host.
pub const ANY_HOST: &str = "*";

/// One host's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// Routes in precedence order: earlier routes win a conflict on the same path.
    pub routes: Vec<Route>,
    /// Where an unmatched path on this host goes (the owning Ingress's `defaultBackend`).
    pub default_backend: Option<Backend>,
    /// The host is listed in some Ingress's `spec.tls`.
    pub tls: bool,
}

/// One path of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub path: PathMatch,
    pub backend: Backend,
    pub policy: RoutePolicy,
    /// The object this route came from (`namespace/name`), for logs and metrics.
    pub source: String,
    /// An alternative backend for part of the traffic (a canary Ingress on the same host and path).
    #[serde(default)]
    pub canary: Option<Canary>,
}

/// A canary: the backend of a `canary: "true"` Ingress, attached to the route of the main
/// Ingress with the same host and path. A request goes to it by header, then by cookie, then
/// by weight, in that order (ingress-nginx's precedence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub backend: Backend,
    /// `canary-by-header`, and how its value is read.
    #[serde(default)]
    pub header: Option<CanaryHeader>,
    /// `canary-by-cookie`: the cookie's value `always` sends to the canary, `never` to the main backend.
    #[serde(default)]
    pub cookie: Option<String>,
    /// `canary-weight`: this many requests out of [`Self::weight_total`] go to the canary.
    #[serde(default)]
    pub weight: u32,
    /// `canary-weight-total` (default 100).
    #[serde(default = "default_weight_total")]
    pub weight_total: u32,
    /// The canary Ingress's own `affinity` (the route's policy applies to the main backend only).
    #[serde(default)]
    pub affinity: Option<Affinity>,
    /// The canary Ingress's own `upstream-hash-by`.
    #[serde(default)]
    pub hash_by: Option<HashBy>,
    /// The canary Ingress (`namespace/name`), for logs.
    pub source: String,
}

fn default_weight_total() -> u32 {
    100
}

/// `canary-by-header`: which request header decides, and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CanaryHeader {
    /// The header name, lower-cased.
    pub name: String,
    pub matches: HeaderMatch,
}

/// How the `canary-by-header` value is read. Values that do not decide fall through to the
/// cookie, then the weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum HeaderMatch {
    /// `always` sends to the canary, `never` to the main backend.
    AlwaysNever,
    /// `canary-by-header-value`: this exact value sends to the canary.
    Value(String),
    /// `canary-by-header-pattern`: a value this regex matches (anywhere, case-sensitive, as
    /// nginx's `ngx.re.match`) sends to the canary.
    Pattern(String),
}

/// Cookie session affinity (`affinity: cookie`): a client keeps going to the same endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Affinity {
    /// `session-cookie-name` (default `INGRESSCOOKIE`).
    pub cookie: String,
    /// `session-cookie-path` (default: the route's path, `/` for a regex path).
    pub path: String,
    /// Every other attribute of the cookie.
    #[serde(flatten)]
    pub attributes: CookieAttributes,
    /// `affinity-mode`.
    #[serde(default)]
    pub mode: AffinityMode,
    /// `session-cookie-change-on-failure`: when the session's endpoint fails a request and
    /// a retry is served elsewhere, the cookie moves to that endpoint. Off (the default),
    /// the cookie keeps naming the session's endpoint and the next request goes back to it.
    #[serde(default)]
    pub change_on_failure: bool,
}

/// The attributes of an affinity cookie besides its name and path. All unset is a session
/// cookie, host-only, `Secure` on TLS connections only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CookieAttributes {
    /// `session-cookie-max-age` in seconds: sets `Max-Age`, and `Expires` too unless
    /// `expires` is set.
    #[serde(default)]
    pub max_age: Option<u64>,
    /// `session-cookie-expires` in seconds from now: sets `Expires`.
    #[serde(default)]
    pub expires: Option<u64>,
    /// `session-cookie-samesite`.
    #[serde(default)]
    pub same_site: Option<SameSite>,
    /// `session-cookie-conditional-samesite-none`: leave `SameSite=None` out for the
    /// clients known to reject such a cookie altogether.
    #[serde(default)]
    pub conditional_same_site_none: bool,
    /// `session-cookie-secure`: `Some(true)` always sets `Secure`, `Some(false)` never;
    /// `None` sets it on TLS connections.
    #[serde(default)]
    pub secure: Option<bool>,
    /// `session-cookie-domain`.
    #[serde(default)]
    pub domain: Option<String>,
}

/// How sticky a session is (`affinity-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    /// The cookie holds a session key, consistently hashed onto the current endpoints:
    /// scaling up moves about 1/(N+1) of the sessions to the new endpoint.
    #[default]
    Balanced,
    /// The cookie names one endpoint (a hash of its address); the session stays there
    /// until that endpoint is gone or fails.
    Persistent,
}

/// The cookie's `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// `upstream-hash-by`: the request's key, consistently hashed onto the endpoints, so one
/// key keeps going to one endpoint. Parts are concatenated; a missing variable is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashBy {
    pub parts: Vec<HashPart>,
    /// `upstream-hash-by-subset` with `-subset-size`: a key goes to any of the endpoints of its
    /// subset (the `n` that rank first for it) rather than to its one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<u32>,
}

/// One piece of an `upstream-hash-by` key: literal text or an nginx variable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum HashPart {
    Text(String),
    /// `$remote_addr`: the client's IP address.
    RemoteAddr,
    /// `$request_uri`: the original path and query.
    RequestUri,
    /// `$uri`: the normalised path, without the query.
    Uri,
    /// `$args`: the query string.
    Args,
    /// `$host`: the request's host, lower-cased, without a port.
    Host,
    /// `$http_<name>`: a request header (name lower-cased, `_` as `-`).
    Header(String),
    /// `$cookie_<name>`: a cookie's value.
    Cookie(String),
    /// `$arg_<name>`: a query parameter's raw value.
    Arg(String),
}

/// How a route's path is matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    /// Case-sensitive whole-path match.
    Exact(String),
    /// Element-wise prefix match on `/`; a trailing slash is ignored.
    Prefix(String),
    /// A regular expression anchored at the start of the path, case-insensitive (as
    /// ingress-nginx's `location ~*`).
    Regex(String),
}

impl PathMatch {
    /// The path or pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p,
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "={p}"),
            PathMatch::Prefix(p) => write!(f, "{p}"),
            PathMatch::Regex(p) => write!(f, "~{p}"),
        }
    }
}

/// Where a matched request is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The upstream id; an id with no entry in [`RoutingTable::upstreams`] answers 503.
    pub upstream: String,
}

/// Per-route behaviour, with ingress-nginx's defaults. Everything a route does beyond
/// choosing a backend is here, as plain data; the router compiles what needs compiling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutePolicy {
    /// Redirect plain HTTP to HTTPS (308) when the host has TLS.
    pub ssl_redirect: bool,
    /// Redirect plain HTTP to HTTPS (308) even when the host has no TLS (`force-ssl-redirect`).
    pub force_ssl_redirect: bool,
    /// Largest request body in bytes; `None` means unlimited (`proxy-body-size: 0`).
    pub max_body_bytes: Option<u64>,
    /// Upstream connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed between two reads from the upstream (and the WebSocket idle timeout).
    pub read_timeout_ms: u64,
    /// Time allowed between two writes to the upstream.
    pub send_timeout_ms: u64,
    /// How many endpoints a request is tried on, in all (`proxy-next-upstream-tries`, default 3).
    pub next_upstream_tries: u32,
    /// Which failures send a request to the next endpoint (`proxy-next-upstream`).
    pub next_upstream: NextUpstream,
    /// `app-root`: a request for exactly `/` gets a 302 to this path.
    pub app_root: Option<String>,
    /// `rewrite-target`: the upstream path is this, with `$1`… taken from the route's path
    /// matched as a regex (nginx's `rewrite`: the whole path is replaced).
    pub rewrite_target: Option<String>,
    /// `permanent-redirect` / `temporal-redirect`: every request is answered with a redirect.
    pub redirect: Option<Redirect>,
    /// `x-forwarded-prefix`: sent upstream as `X-Forwarded-Prefix`.
    pub forwarded_prefix: Option<String>,
    /// `allowlist-source-range` (or `whitelist-…`): CIDRs allowed; others get 403. Empty: all.
    pub allow_source: Vec<String>,
    /// `limit-rps`, `limit-rpm`, `limit-connections`: per client IP.
    pub limit: Option<RateLimit>,
    /// `auth-type: basic`.
    pub basic_auth: Option<BasicAuth>,
    /// `enable-cors`.
    pub cors: Option<Cors>,
    /// `default-backend`: where requests go when the route's Service has no ready endpoints.
    pub fallback: Option<Backend>,
    /// `custom-http-errors`: responses with these statuses are replaced by the error backend's
    /// page (the `default-backend`, else the global default backend).
    pub custom_errors: Vec<u16>,
    /// `affinity: cookie` and the `session-cookie-*` annotations. Takes precedence over
    /// [`Self::hash_by`] and the upstream's [`Balance`], as in ingress-nginx.
    pub affinity: Option<Affinity>,
    /// `upstream-hash-by`. Takes precedence over the upstream's [`Balance`].
    pub hash_by: Option<HashBy>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            ssl_redirect: true,
            force_ssl_redirect: false,
            max_body_bytes: Some(1024 * 1024),
            connect_timeout_ms: 5_000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            next_upstream_tries: 3,
            next_upstream: NextUpstream::default(),
            app_root: None,
            rewrite_target: None,
            redirect: None,
            forwarded_prefix: None,
            allow_source: Vec::new(),
            limit: None,
            basic_auth: None,
            cors: None,
            fallback: None,
            custom_errors: Vec::new(),
            affinity: None,
            hash_by: None,
        }
    }
}

/// When a request moves on to the next endpoint (`proxy-next-upstream`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NextUpstream {
    /// On a connect error, or a connection that fails before the request was sent.
    pub error: bool,
    /// On a connect timeout.
    pub timeout: bool,
    /// On these response statuses (`http_502`…), for idempotent requests only.
    pub statuses: Vec<u16>,
}

impl Default for NextUpstream {
    /// ingress-nginx's default: `error timeout`.
    fn default() -> Self {
        NextUpstream {
            error: true,
            timeout: true,
            statuses: Vec::new(),
        }
    }
}

/// An unconditional redirect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub url: String,
    pub code: u16,
}

/// Per-client-IP limits, as ingress-nginx's `limit-*` annotations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub rps: Option<u32>,
    pub rpm: Option<u32>,
    /// Burst is the rate times this (`limit-burst-multiplier`, default 5).
    pub burst_multiplier: u32,
    pub connections: Option<u32>,
    /// The status of a rejected request (ingress-nginx's `limit-req-status-code`, default 503).
    pub status: u16,
    /// CIDRs exempt from the limits (`limit-allowlist`).
    pub exempt: Vec<String>,
}

/// HTTP basic authentication against an htpasswd file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub realm: String,
    /// htpasswd lines (`user:hash`), from the Secret named by `auth-secret`.
    pub htpasswd: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// CORS, answered at the edge, as ingress-nginx's `enable-cors` and `cors-*` annotations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    /// Allowed origins; `*` allows any.
    pub allow_origin: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub allow_credentials: bool,
    pub max_age: u32,
}

/// A set of endpoints that serve one Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub protocol: Protocol,
}

/// The conventional id of the upstream for a Service port and protocol.
#[derive(Debug)]
pub struct UpstreamId;

impl UpstreamId {
    /// `namespace/service:port`, with `|protocol` and `|balance` suffixes when not the defaults.
    pub fn format(namespace: &str, service: &str, port: &str, protocol: Protocol, balance: Balance) -> String {
        let mut id = format!("{namespace}/{service}:{port}");
        if protocol != Protocol::Http {
            id.push('|');
            id.push_str(protocol.as_str());
        }
        if balance != Balance::RoundRobin {
            id.push('|');
            id.push_str(balance.as_str());
        }
        id
    }
}

/// An address to connect to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// An IP address and port (from an EndpointSlice or Endpoints object).
    Addr(SocketAddr),
    /// A DNS name resolved when connecting (an `ExternalName` Service).
    Dns { host: String, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// How an upstream's endpoint is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The fewer requests in flight, the likelier (power of two choices).
    LeastRequest,
    /// Peak-EWMA latency times load (power of two choices).
    Ewma,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Ewma => "ewma",
        }
    }
}

/// The protocol spoken to an upstream (`backend-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 over plain TCP, with a keep-alive pool.
    #[default]
    Http,
    /// HTTP/1.1 over TLS (the upstream's certificate is not verified, as in ingress-nginx).
    Https,
    /// HTTP/2 with prior knowledge over plain TCP (`HTTP2`, `GRPC`).
    H2c,
    /// HTTP/2 over TLS (`GRPCS`).
    H2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::H2)
    }

    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
}

/// A PEM certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a private key.
        f.debug_struct("Certificate")
            .field("cert_pem_len", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// Settings that apply to the whole table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlobalSettings {
    /// After this many consecutive failures an endpoint is ejected (nginx's `max_fails`).
    pub upstream_max_fails: u32,
    /// How long an ejected endpoint sits out (nginx's `fail_timeout`).
    pub upstream_fail_timeout_ms: u64,
    /// Write one access-log line per request.
    pub access_log: bool,
    /// The policy of requests sent to a default backend (the configured defaults).
    pub default_policy: RoutePolicy,
    /// Trust `X-Forwarded-*` from clients in [`Self::real_ip_cidrs`]: the client address is
    /// taken from `X-Forwarded-For` and the proto/host/port headers pass through
    /// (ingress-nginx's `use-forwarded-headers`).
    pub use_forwarded_headers: bool,
    /// Peers trusted to tell the client's address, by `X-Forwarded-For` or a PROXY header
    /// (ingress-nginx's `proxy-real-ip-cidr`, default everything).
    pub real_ip_cidrs: Vec<String>,
    /// Client connections start with a PROXY protocol header (`use-proxy-protocol`).
    pub use_proxy_protocol: bool,
    /// `Strict-Transport-Security` on HTTPS responses of hosts with TLS; `None` is off.
    pub hsts: Option<Hsts>,
    /// TLS versions offered to clients (`ssl-protocols`).
    pub tls_versions: TlsVersions,
    /// Idle keep-alive connections kept per upstream endpoint (`upstream-keepalive-connections`).
    pub upstream_keepalive_connections: u32,
}

impl Default for GlobalSettings {
    fn default() -> Self {
        GlobalSettings {
            upstream_max_fails: 1,
            upstream_fail_timeout_ms: 10_000,
            access_log: false,
            default_policy: RoutePolicy::default(),
            use_forwarded_headers: false,
            real_ip_cidrs: vec!["0.0.0.0/0".into(), "::/0".into()],
            use_proxy_protocol: false,
            hsts: Some(Hsts::default()),
            tls_versions: TlsVersions::default(),
            upstream_keepalive_connections: 320,
        }
    }
}

/// `Strict-Transport-Security`, with ingress-nginx's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        Hsts {
            max_age: 15_724_800,
            include_subdomains: true,
            preload: false,
        }
    }
}

impl Hsts {
    /// The header value.
    pub fn value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// Which TLS versions are offered. At least one is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

impl Default for TlsVersions {
    /// ingress-nginx's default `ssl-protocols: TLSv1.2 TLSv1.3`.
    fn default() -> Self {
        TlsVersions {
            tls12: true,
            tls13: true,
        }
    }
}

/// One change from one table to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    Version(u64),
    PutVhost(String, VirtualHost),
    DelVhost(String),
    PutUpstream(String, Upstream),
    DelUpstream(String),
    PutCertificate(String, Certificate),
    DelCertificate(String),
    PutSni(String, String),
    DelSni(String),
    DefaultBackend(Option<Backend>),
    Settings(Box<GlobalSettings>),
    PutL4(String, L4Service),
    DelL4(String),
}

/// The changes that turn `old` into `new`: `apply(old, diff(old, new)) == new`.
pub fn diff(old: &RoutingTable, new: &RoutingTable) -> Vec<Delta> {
    let mut out = Vec::new();
    diff_map(&old.vhosts, &new.vhosts, &mut out, Delta::PutVhost, Delta::DelVhost);
    diff_map(
        &old.upstreams,
        &new.upstreams,
        &mut out,
        Delta::PutUpstream,
        Delta::DelUpstream,
    );
    diff_map(
        &old.certificates,
        &new.certificates,
        &mut out,
        Delta::PutCertificate,
        Delta::DelCertificate,
    );
    diff_map(&old.sni, &new.sni, &mut out, Delta::PutSni, Delta::DelSni);
    diff_map(&old.l4, &new.l4, &mut out, Delta::PutL4, Delta::DelL4);
    if old.default_backend != new.default_backend {
        out.push(Delta::DefaultBackend(new.default_backend.clone()));
    }
    if old.settings != new.settings {
        out.push(Delta::Settings(Box::new(new.settings.clone())));
    }
    if old.version != new.version {
        out.push(Delta::Version(new.version));
    }
    out
}

fn diff_map<V: Clone + PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    out: &mut Vec<Delta>,
    put: impl Fn(String, V) -> Delta,
    del: impl Fn(String) -> Delta,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(put(k.clone(), v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(del(k.clone()));
        }
    }
}

impl RoutingTable {
    /// Applies deltas in order.
    pub fn apply(&mut self, deltas: impl IntoIterator<Item = Delta>) {
        for d in deltas {
            match d {
                Delta::Version(v) => self.version = v,
                Delta::PutVhost(k, v) => {
                    self.vhosts.insert(k, v);
                }
                Delta::DelVhost(k) => {
                    self.vhosts.remove(&k);
                }
                Delta::PutUpstream(k, v) => {
                    self.upstreams.insert(k, v);
                }
                Delta::DelUpstream(k) => {
                    self.upstreams.remove(&k);
                }
                Delta::PutCertificate(k, v) => {
                    self.certificates.insert(k, v);
                }
                Delta::DelCertificate(k) => {
                    self.certificates.remove(&k);
                }
                Delta::PutSni(k, v) => {
                    self.sni.insert(k, v);
                }
                Delta::DelSni(k) => {
                    self.sni.remove(&k);
                }
                Delta::DefaultBackend(b) => self.default_backend = b,
                Delta::Settings(s) => self.settings = *s,
                Delta::PutL4(k, v) => {
                    self.l4.insert(k, v);
                }
                Delta::DelL4(k) => {
                    self.l4.remove(&k);
                }
            }
        }
    }

    /// The number of routes across all virtual hosts.
    pub fn route_count(&self) -> usize {
        self.vhosts.values().map(|v| v.routes.len()).sum()
    }

    /// The table as keyed entries (see [`Entry`]), without its version. This is how the Raft
    /// group stores and replicates it.
    pub fn entries(&self) -> impl Iterator<Item = (String, Entry)> + '_ {
        let vhosts = self
            .vhosts
            .iter()
            .map(|(k, v)| (key("vhost", k), Entry::Vhost(v.clone())));
        let upstreams = self
            .upstreams
            .iter()
            .map(|(k, v)| (key("upstream", k), Entry::Upstream(v.clone())));
        let certs = self
            .certificates
            .iter()
            .map(|(k, v)| (key("cert", k), Entry::Certificate(v.clone())));
        let sni = self.sni.iter().map(|(k, v)| (key("sni", k), Entry::Sni(v.clone())));
        let l4 = self.l4.iter().map(|(k, v)| (key("l4", k), Entry::L4(v.clone())));
        let singles = [
            (
                DEFAULT_BACKEND_KEY.to_string(),
                Entry::DefaultBackend(self.default_backend.clone()),
            ),
            (
                SETTINGS_KEY.to_string(),
                Entry::Settings(Box::new(self.settings.clone())),
            ),
        ];
        vhosts.chain(upstreams).chain(certs).chain(sni).chain(l4).chain(singles)
    }

    /// Sets (or with `None`, removes) the entry under `key`. A key or entry of the wrong kind
    /// is refused and changes nothing.
    pub fn set_entry(&mut self, key: &str, entry: Option<Entry>) -> Result<(), EntryError> {
        let bad = || EntryError(key.to_string());
        if key == DEFAULT_BACKEND_KEY {
            self.default_backend = match entry {
                Some(Entry::DefaultBackend(b)) => b,
                None => None,
                Some(_) => return Err(bad()),
            };
            return Ok(());
        }
        if key == SETTINGS_KEY {
            self.settings = match entry {
                Some(Entry::Settings(s)) => *s,
                None => GlobalSettings::default(),
                Some(_) => return Err(bad()),
            };
            return Ok(());
        }
        let (kind, name) = key.split_once('/').ok_or_else(bad)?;
        let name = name.to_string();
        match (kind, entry) {
            ("vhost", Some(Entry::Vhost(v))) => drop(self.vhosts.insert(name, v)),
            ("vhost", None) => drop(self.vhosts.remove(&name)),
            ("upstream", Some(Entry::Upstream(v))) => drop(self.upstreams.insert(name, v)),
            ("upstream", None) => drop(self.upstreams.remove(&name)),
            ("cert", Some(Entry::Certificate(v))) => drop(self.certificates.insert(name, v)),
            ("cert", None) => drop(self.certificates.remove(&name)),
            ("sni", Some(Entry::Sni(v))) => drop(self.sni.insert(name, v)),
            ("sni", None) => drop(self.sni.remove(&name)),
            ("l4", Some(Entry::L4(v))) => drop(self.l4.insert(name, v)),
            ("l4", None) => drop(self.l4.remove(&name)),
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// The keyed changes that turn `old` into `new` (versions aside): only what differs.
    pub fn changes(old: &RoutingTable, new: &RoutingTable) -> Vec<(String, Option<Entry>)> {
        let mut out = Vec::new();
        for d in diff(old, new) {
            let change = match d {
                Delta::Version(_) => continue,
                Delta::PutVhost(k, v) => (key("vhost", &k), Some(Entry::Vhost(v))),
                Delta::DelVhost(k) => (key("vhost", &k), None),
                Delta::PutUpstream(k, v) => (key("upstream", &k), Some(Entry::Upstream(v))),
                Delta::DelUpstream(k) => (key("upstream", &k), None),
                Delta::PutCertificate(k, v) => (key("cert", &k), Some(Entry::Certificate(v))),
                Delta::DelCertificate(k) => (key("cert", &k), None),
                Delta::PutSni(k, v) => (key("sni", &k), Some(Entry::Sni(v))),
                Delta::DelSni(k) => (key("sni", &k), None),
                Delta::PutL4(k, v) => (key("l4", &k), Some(Entry::L4(v))),
                Delta::DelL4(k) => (key("l4", &k), None),
                Delta::DefaultBackend(b) => (DEFAULT_BACKEND_KEY.to_string(), Some(Entry::DefaultBackend(b))),
                Delta::Settings(s) => (SETTINGS_KEY.to_string(), Some(Entry::Settings(s))),
            };
            out.push(change);
        }
        out
    }
}

const DEFAULT_BACKEND_KEY: &str = "default-backend";
const SETTINGS_KEY: &str = "settings";

fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// One keyed piece of a [`RoutingTable`]: `vhost/<host>`, `upstream/<id>`, `cert/<id>`,
/// `sni/<name>`, `l4/<key>`, `default-backend` or `settings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    Vhost(VirtualHost),
    Upstream(Upstream),
    Certificate(Certificate),
    Sni(String),
    L4(L4Service),
    DefaultBackend(Option<Backend>),
    Settings(Box<GlobalSettings>),
}

/// A key that names no part of the table, or an entry of another kind than its key.
#[derive(Debug, thiserror::Error)]
#[error("routing entry key {0:?} does not match its entry")]
pub struct EntryError(pub String);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn keyed_changes_rebuild_the_table(old in arb_table(), new in arb_table()) {
            let mut rebuilt = old.clone();
            for (k, e) in RoutingTable::changes(&old, &new) {
                rebuilt.set_entry(&k, e).unwrap();
            }
            rebuilt.version = new.version;
            prop_assert_eq!(&rebuilt, &new);
            let mut from_entries = RoutingTable { version: new.version, ..RoutingTable::default() };
            for (k, e) in new.entries() {
                from_entries.set_entry(&k, Some(e)).unwrap();
            }
            prop_assert_eq!(&from_entries, &new);
        }
    }

    #[test]
    fn an_entry_of_the_wrong_kind_changes_nothing() {
        let mut t = RoutingTable::default();
        assert!(t.set_entry("vhost/a", Some(Entry::Sni("x".into()))).is_err());
        assert!(t.set_entry("nonsense", None).is_err());
        assert!(t.set_entry("bogus/a", None).is_err());
        assert_eq!(t, RoutingTable::default());
    }

    fn arb_table() -> impl Strategy<Value = RoutingTable> {
        let vhost = (prop::collection::vec(("[/a-c]{1,4}", "[ab]"), 0..3), any::<bool>()).prop_map(|(paths, tls)| {
            VirtualHost {
                routes: paths
                    .into_iter()
                    .map(|(p, u)| Route {
                        canary: p.contains('c').then(|| Canary {
                            backend: Backend { upstream: "b".into() },
                            header: Some(CanaryHeader {
                                name: "x-canary".into(),
                                matches: HeaderMatch::Pattern(p.clone()),
                            }),
                            cookie: None,
                            weight: p.len() as u32,
                            weight_total: 100,
                            affinity: None,
                            hash_by: Some(HashBy {
                                parts: vec![HashPart::Header("x-user".into())],
                                subset: None,
                            }),
                            source: "ns/canary".into(),
                        }),
                        path: PathMatch::Prefix(p),
                        backend: Backend { upstream: u },
                        policy: RoutePolicy::default(),
                        source: "ns/ing".into(),
                    })
                    .collect(),
                default_backend: None,
                tls,
            }
        });
        let upstream = prop::collection::vec(1u16..4, 0..3).prop_map(|ports| Upstream {
            endpoints: ports
                .into_iter()
                .map(|p| Endpoint::Addr(SocketAddr::from(([127, 0, 0, 1], p))))
                .collect(),
            ..Upstream::default()
        });
        (
            any::<u64>(),
            prop::collection::btree_map("[a-d]", vhost, 0..4),
            prop::collection::btree_map("[ab]", upstream, 0..3),
            prop::collection::btree_map("[a-d]", "[xy]", 0..3),
            any::<bool>(),
            any::<bool>(),
            prop::collection::btree_set(1u16..5, 0..3),
        )
            .prop_map(|(version, vhosts, upstreams, sni, default, log, ports)| RoutingTable {
                l4: ports
                    .into_iter()
                    .map(|port| {
                        let svc = L4Service {
                            protocol: if port % 2 == 0 {
                                L4Protocol::Tcp
                            } else {
                                L4Protocol::Udp
                            },
                            port,
                            upstream: "a".into(),
                            proxy_protocol_in: port == 3,
                            proxy_protocol_out: false,
                            source: "ns/tcp-services".into(),
                        };
                        (svc.key(), svc)
                    })
                    .collect(),
                version,
                vhosts,
                upstreams,
                certificates: BTreeMap::new(),
                sni,
                default_backend: default.then(|| Backend { upstream: "a".into() }),
                settings: GlobalSettings {
                    access_log: log,
                    ..GlobalSettings::default()
                },
            })
    }

    proptest! {
        #[test]
        fn diff_then_apply_reproduces_the_new_table(old in arb_table(), new in arb_table()) {
            let deltas = diff(&old, &new);
            let mut t = old.clone();
            t.apply(deltas.clone());
            prop_assert_eq!(&t, &new);
            // Only what changed is sent.
            prop_assert_eq!(deltas.is_empty(), old == new);
        }
    }

    #[test]
    fn one_endpoint_change_is_one_small_delta() {
        let mut old = RoutingTable::default();
        for i in 0..1000 {
            old.upstreams.insert(
                format!("ns/svc{i}:80"),
                Upstream {
                    endpoints: vec![Endpoint::Addr(SocketAddr::from(([10, 0, 0, 1], 8080)))],
                    ..Upstream::default()
                },
            );
        }
        let mut new = old.clone();
        if let Some(u) = new.upstreams.get_mut("ns/svc7:80") {
            u.endpoints
                .push(Endpoint::Addr(SocketAddr::from(([10, 0, 0, 2], 8080))));
        }
        let d = diff(&old, &new);
        assert_eq!(d.len(), 1);
        assert!(matches!(&d[0], Delta::PutUpstream(k, _) if k == "ns/svc7:80"));
        assert!(serde_json::to_vec(&d).unwrap().len() < 1024);
    }
}
