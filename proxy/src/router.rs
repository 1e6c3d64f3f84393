//! Route lookup: the routing table compiled into hash maps, so a lookup costs a few hashes.
//!
//! ```text
//! host ──► exact host map ──► wildcard map (first label stripped) ──► any-host vhost
//!             │
//!             ▼
//! path ──► Exact map ──► Regex routes longer than the best prefix ──► Prefix map
//!          (whole path)                                                (one probe per `/`)
//! ```
//!
//! Semantics follow Kubernetes `networking.k8s.io/v1` Ingress exactly:
//! * hosts match case-insensitively, ignoring a port and a trailing dot; `*.foo.com`
//!   matches exactly one extra label;
//! * `Exact` is a case-sensitive whole-path match; `Prefix` matches element-wise on `/`
//!   with a trailing slash ignored; the longest match wins, and Exact wins a tie;
//! * paths are normalised before matching as nginx does (percent-decoding, `.`/`..`
//!   segments resolved, repeated slashes merged), while the upstream gets the original URI.
//!
//! [`Router::explain`] walks the same matcher as [`Router::lookup`] and says why it chose what it chose.

use std::borrow::Cow;
use std::collections::HashMap;

use regex::Regex;

use crate::model::ANY_HOST;
use crate::model::Backend;
use crate::model::PathMatch;
use crate::model::Route;
use crate::model::RoutingTable;

/// Why a table could not be compiled. The compiler validates first, so this is a bug guard.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {path} on host {host}: invalid regex: {source}")]
    Regex {
        host: String,
        path: String,
        #[source]
        source: regex::Error,
    },
}

/// Index of a route in [`Router::routes`].
pub type RouteId = usize;

/// A route with what the data plane needs at request time.
#[derive(Debug)]
pub struct RouteEntry {
    /// This route's index in [`Router::routes`].
    pub id: RouteId,
    /// The virtual host's key, for metrics.
    pub host: String,
    pub route: Route,
    /// The host has TLS configured, so plain HTTP may be redirected.
    pub tls: bool,
    /// `rewrite-target`: the route's path as a case-insensitive regex anchored at the start
    /// (nginx's `rewrite`), and the replacement.
    pub rewrite: Option<(Regex, String)>,
    /// The route's canary, compiled (its header regex and weight counter).
    pub canary: Option<crate::select::CanaryState>,
}

#[derive(Debug, Default)]
struct VhostIndex {
    /// The table's key of this virtual host (`foo.com`, `*.foo.com` or [`ANY_HOST`]).
    name: Box<str>,
    /// The host's routes, in precedence order, as the index holds them.
    routes: Vec<RouteId>,
    /// Routes dropped because an earlier one has the same path: (path, source).
    shadowed: Vec<(PathMatch, String)>,
    exact: HashMap<Box<str>, RouteId>,
    /// Keyed by the prefix without its trailing slash (`/` becomes the empty string).
    prefix: HashMap<Box<str>, RouteId>,
    /// Sorted by pattern length, longest first.
    regex: Vec<(usize, Regex, RouteId)>,
    default_backend: Option<Backend>,
    tls: bool,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A route matched.
    Route(&'a RouteEntry),
    /// No route matched; this is the default backend that applies (the host's, then the global one).
    Default { backend: &'a Backend, tls: bool },
    /// Nothing matched and there is no default backend.
    NotFound,
}

/// The compiled form of a [`RoutingTable`].
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, usize>,
    wildcard_hosts: HashMap<Box<str>, usize>,
    any_host: Option<usize>,
    vhosts: Vec<VhostIndex>,
    routes: Vec<RouteEntry>,
    default_backend: Option<Backend>,
    /// The policy of requests that only the default backend serves, for [`Router::explain`].
    default_policy: crate::model::RoutePolicy,
}

impl Router {
    /// Compiles a table. Fails only on an invalid regex, which the compiler rejects earlier.
    pub fn new(table: &RoutingTable) -> Result<Router, RouterError> {
        let mut r = Router {
            default_backend: table.default_backend.clone(),
            default_policy: table.settings.default_policy.clone(),
            ..Router::default()
        };
        for (host, vhost) in &table.vhosts {
            let idx = r.vhosts.len();
            let mut index = VhostIndex {
                name: host.as_str().into(),
                default_backend: vhost.default_backend.clone(),
                tls: vhost.tls,
                ..VhostIndex::default()
            };
            for route in &vhost.routes {
                let id = r.routes.len();
                let inserted = match &route.path {
                    PathMatch::Exact(p) => insert_first(&mut index.exact, p, id),
                    PathMatch::Prefix(p) => insert_first(&mut index.prefix, prefix_key(p), id),
                    PathMatch::Regex(p) => {
                        let re = regex::RegexBuilder::new(&format!("^(?:{p})"))
                            .case_insensitive(true)
                            .build()
                            .map_err(|source| RouterError::Regex {
                                host: host.clone(),
                                path: p.clone(),
                                source,
                            })?;
                        index.regex.push((p.len(), re, id));
                        true
                    }
                };
                if !inserted {
                    index.shadowed.push((route.path.clone(), route.source.clone()));
                }
                if inserted {
                    index.routes.push(id);
                    let rewrite = match &route.policy.rewrite_target {
                        Some(target) => {
                            let pattern = match &route.path {
                                PathMatch::Regex(p) => p.clone(),
                                PathMatch::Exact(p) | PathMatch::Prefix(p) => regex::escape(p),
                            };
                            let re = regex::RegexBuilder::new(&format!("^(?:{pattern})"))
                                .case_insensitive(true)
                                .build()
                                .map_err(|source| RouterError::Regex {
                                    host: host.clone(),
                                    path: pattern,
                                    source,
                                })?;
                            Some((re, target.clone()))
                        }
                        None => None,
                    };
                    let canary = match &route.canary {
                        Some(c) => Some(crate::select::CanaryState::new(c).map_err(|source| RouterError::Regex {
                            host: host.clone(),
                            path: format!("{} (canary-by-header-pattern)", route.path),
                            source,
                        })?),
                        None => None,
                    };
                    r.routes.push(RouteEntry {
                        id,
                        canary,
                        rewrite,
                        host: host.clone(),
                        route: route.clone(),
                        tls: vhost.tls,
                    });
                }
            }
            // Stable sort: among equal lengths, the earlier (older) route stays first.
            index.regex.sort_by_key(|r| std::cmp::Reverse(r.0));
            if host == ANY_HOST {
                r.any_host = Some(idx);
            } else if let Some(suffix) = host.strip_prefix("*.") {
                r.wildcard_hosts.insert(suffix.to_ascii_lowercase().into(), idx);
            } else {
                r.exact_hosts.insert(host.to_ascii_lowercase().into(), idx);
            }
            r.vhosts.push(index);
        }
        Ok(r)
    }

    /// All routes, in id order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// Finds the route for a request. `host` is the raw `Host` header or `:authority`;
    /// `path` is the raw request path without the query.
    pub fn lookup(&self, host: &str, path: &str) -> Lookup<'_> {
        self.matched(host, path).lookup
    }

    /// The one matcher behind [`Router::lookup`] and [`Router::explain`]: the outcome, and
    /// how the host and the path were matched (small `Copy` values, free to ignore).
    fn matched(&self, host: &str, path: &str) -> Matched<'_> {
        let host = normalize_host(host);
        let (vhost, host_match) = self.find_vhost(&host);
        let Some(vhost) = vhost else {
            let lookup = match &self.default_backend {
                Some(b) => Lookup::Default { backend: b, tls: false },
                None => Lookup::NotFound,
            };
            return Matched {
                lookup,
                vhost: None,
                host_match,
                path_win: PathWin::None,
            };
        };
        let path = normalize_path(path);
        let (id, path_win) = vhost.find_route(&path);
        let lookup = match id {
            Some(id) => Lookup::Route(&self.routes[id]),
            None => match vhost.default_backend.as_ref().or(self.default_backend.as_ref()) {
                Some(b) => Lookup::Default {
                    backend: b,
                    tls: vhost.tls,
                },
                None => Lookup::NotFound,
            },
        };
        Matched {
            lookup,
            vhost: Some(vhost),
            host_match,
            path_win,
        }
    }

    fn find_vhost(&self, host: &str) -> (Option<&VhostIndex>, HostMatch) {
        if let Some(&i) = self.exact_hosts.get(host) {
            return (Some(&self.vhosts[i]), HostMatch::Exact);
        }
        if let Some((label, suffix)) = host.split_once('.')
            && !label.is_empty()
            && let Some(&i) = self.wildcard_hosts.get(suffix)
        {
            return (Some(&self.vhosts[i]), HostMatch::Wildcard);
        }
        match self.any_host {
            Some(i) => (Some(&self.vhosts[i]), HostMatch::AnyHost),
            None => (None, HostMatch::None),
        }
    }

    /// Whether a host (an SNI name or `Host`) has a virtual host of its own, ignoring the any-host one.
    pub fn has_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.exact_hosts.contains_key(host.as_ref())
            || host
                .split_once('.')
                .is_some_and(|(l, s)| !l.is_empty() && self.wildcard_hosts.contains_key(s))
    }
}

/// What [`Router::matched`] found, and how.
#[derive(Debug)]
struct Matched<'a> {
    lookup: Lookup<'a>,
    vhost: Option<&'a VhostIndex>,
    host_match: HostMatch,
    path_win: PathWin,
}

/// How the request's host picked a virtual host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    /// A rule names this host.
    Exact,
    /// A `*.suffix` rule, matching the host's first label.
    Wildcard,
    /// No rule names the host; the rules without a host serve it.
    AnyHost,
    /// No virtual host serves it.
    None,
}

/// Why the winning path rule won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathWin {
    /// An Exact rule equal to the whole path (checked first).
    Exact,
    /// A regex longer (as a pattern) than the longest matching prefix, if any.
    Regex {
        pattern_len: usize,
        prefix_len: Option<usize>,
    },
    /// The longest matching prefix (its key length); no longer regex matched.
    Prefix {
        len: usize,
    },
    None,
}

impl VhostIndex {
    fn find_route(&self, path: &str) -> (Option<RouteId>, PathWin) {
        if let Some(&id) = self.exact.get(path) {
            return (Some(id), PathWin::Exact);
        }
        let best_prefix = self.longest_prefix(path);
        let best_len = best_prefix.map(|(len, _)| len);
        for (len, re, id) in &self.regex {
            // A regex competes by the length of its pattern, like ingress-nginx's ordering.
            if best_len.is_some_and(|b| *len <= b) {
                break;
            }
            if re.is_match(path) {
                let win = PathWin::Regex {
                    pattern_len: *len,
                    prefix_len: best_len,
                };
                return (Some(*id), win);
            }
        }
        match best_prefix {
            Some((len, id)) => (Some(id), PathWin::Prefix { len }),
            None => (None, PathWin::None),
        }
    }

    /// The longest prefix route matching `path`, with the length of its key.
    fn longest_prefix(&self, path: &str) -> Option<(usize, RouteId)> {
        if self.prefix.is_empty() {
            return None;
        }
        // The whole path is a candidate unless it ends with '/' (keys never do)...
        if !path.ends_with('/')
            && let Some(&id) = self.prefix.get(path)
        {
            return Some((path.len(), id));
        }
        // ...then every prefix that ends just before a '/', longest first.
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if let Some(&id) = self.prefix.get(&path[..slash]) {
                return Some((slash, id));
            }
            end = slash;
        }
        None
    }
}

fn insert_first(map: &mut HashMap<Box<str>, RouteId>, key: &str, id: RouteId) -> bool {
    if map.contains_key(key) {
        return false;
    }
    map.insert(key.into(), id);
    true
}

/// The map key of a Prefix path: the path without trailing slashes (`/` becomes ``).
pub fn prefix_key(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// Lower-cases a host and strips a port and a trailing dot. `[::1]:80` becomes `[::1]`.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Normalises a request path for matching, as nginx does before choosing a location:
/// percent-escapes are decoded, `.` and `..` segments resolved, and repeated slashes merged.
/// A path that needs none of that is returned as is, without allocating.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = if path.is_empty() { "/" } else { path };
    let needs_work = path.contains('%') || path.contains("//") || path.contains("/.") || !path.starts_with('/');
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode(path.as_bytes());
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || trailing {
        out.push('/');
    }
    Cow::Owned(out)
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && i + 2 < input.len()
            && let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

mod explain;
pub use explain::Candidate;
pub use explain::Effect;
pub use explain::Explanation;
pub use explain::Outcome;
pub use explain::backend_of;

#[cfg(test)]
mod tests;
