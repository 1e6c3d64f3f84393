//! `Router::explain`: which virtual host and path rule a request hits, and why, from the lookup's own matcher.

use serde::Serialize;

use super::HostMatch;
use super::Lookup;
use super::PathWin;
use super::RouteId;
use super::Router;
use super::normalize_host;
use super::normalize_path;
use super::prefix_key;
use crate::model::PathMatch;
use crate::model::RoutePolicy;

/// Why a request goes where it goes.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The host as matched: lower-cased, without a port or a trailing dot.
    pub host: String,
    /// The path as matched (normalised as nginx does).
    pub path: String,
    /// The request was explained as arriving over HTTPS.
    pub https: bool,
    pub host_match: HostMatch,
    /// The table's key of the virtual host that matched.
    pub vhost: Option<String>,
    pub host_reason: String,
    /// Every path rule of the virtual host, in precedence order, and what it made of the path.
    pub candidates: Vec<Candidate>,
    /// The winning route's id; the same as [`Router::lookup`]'s.
    pub route: Option<RouteId>,
    pub path_reason: String,
    pub outcome: Outcome,
    /// What the route's policy does with the request, in the order the handler applies it.
    pub effects: Vec<Effect>,
}

/// One path rule of the matched virtual host.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// `None` for a rule dropped because an older one has the same path.
    pub route: Option<RouteId>,
    pub path: PathMatch,
    pub source: String,
    pub backend: String,
    pub matched: bool,
    pub won: bool,
    pub reason: String,
}

/// Where the request ends.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Route {
        id: RouteId,
        host: String,
        path: PathMatch,
        backend: String,
        source: String,
    },
    /// No route matched; `scope` is `host` (the Ingress's `spec.defaultBackend`) or `global`.
    DefaultBackend { backend: String, scope: &'static str },
    /// No route and no default backend: 404.
    NotFound,
}

/// One thing the policy does to the request.
#[derive(Clone, Debug, Serialize)]
pub struct Effect {
    /// The annotation or setting behind it (`ssl-redirect`, `app-root`…).
    pub what: &'static str,
    pub detail: String,
    /// It answers the request itself (a redirect): nothing after it applies.
    pub answers: bool,
}

impl Router {
    /// Explains [`Router::lookup`] for `host` and raw `path` (without the query): the virtual
    /// host and why, each path rule considered, why the winner won, and what its policy does
    /// to a request over HTTPS (`https`) or plain HTTP.
    pub fn explain(&self, host: &str, path: &str, https: bool) -> Explanation {
        let m = self.matched(host, path);
        let host_n = normalize_host(host).into_owned();
        let path_n = normalize_path(path).into_owned();
        let route = match &m.lookup {
            Lookup::Route(e) => Some(e.id),
            _ => None,
        };
        let vhost_name = m.vhost.map(|v| v.name.to_string());
        let host_reason = match (m.host_match, &vhost_name) {
            (HostMatch::Exact, _) => format!("a rule names host {host_n}"),
            (HostMatch::Wildcard, Some(w)) => format!(
                "no rule names {host_n}; wildcard {w} matches it (one extra label: {})",
                host_n.split('.').next().unwrap_or_default()
            ),
            (HostMatch::AnyHost, _) => {
                format!("no rule names {host_n} and no wildcard matches it; the rules without a host serve it")
            }
            _ => format!("no rule names {host_n}, no wildcard matches it, and no rule is without a host"),
        };
        let mut candidates = Vec::new();
        if let Some(v) = m.vhost {
            for &id in &v.routes {
                let e = &self.routes[id];
                let (matched, why) = match &e.route.path {
                    PathMatch::Exact(p) if *p == path_n => (true, "Exact: equals the whole path".to_string()),
                    PathMatch::Exact(_) => (false, "Exact: not equal to the whole path".to_string()),
                    PathMatch::Prefix(p) => {
                        let key = prefix_key(p);
                        if key.is_empty() || path_n == key || path_n.starts_with(&format!("{key}/")) {
                            (true, format!("Prefix: matches element-wise ({} chars)", key.len()))
                        } else {
                            (false, "Prefix: not a prefix of the path's elements".to_string())
                        }
                    }
                    PathMatch::Regex(_) => {
                        let hit = v
                            .regex
                            .iter()
                            .find(|(_, _, rid)| *rid == id)
                            .is_some_and(|(_, re, _)| re.is_match(&path_n));
                        if hit {
                            (
                                true,
                                "regex: matches (anchored at the start, case-insensitive)".to_string(),
                            )
                        } else {
                            (false, "regex: does not match".to_string())
                        }
                    }
                };
                let won = route == Some(id);
                let reason = if matched && !won {
                    format!("{why}; lost: {}", lost_because(&e.route.path, m.path_win))
                } else {
                    why
                };
                candidates.push(Candidate {
                    route: Some(id),
                    path: e.route.path.clone(),
                    source: e.route.source.clone(),
                    backend: backend_of(&e.route.policy, &e.route.backend.upstream),
                    matched,
                    won,
                    reason,
                });
            }
            for (p, source) in &v.shadowed {
                candidates.push(Candidate {
                    route: None,
                    path: p.clone(),
                    source: source.clone(),
                    backend: String::new(),
                    matched: false,
                    won: false,
                    reason: "ignored: an older route on this host has the same path (the first to claim it keeps it)"
                        .into(),
                });
            }
        }
        let winner = route.map(|id| &self.routes[id]);
        let path_reason = match (m.path_win, winner) {
            (_, None) if m.vhost.is_none() => "no virtual host, so no path rule applies".to_string(),
            (PathWin::Exact, Some(w)) => format!(
                "Exact {} equals the whole path; Exact is checked first, so it beats any Prefix or regex",
                w.route.path.as_str()
            ),
            (
                PathWin::Regex {
                    pattern_len,
                    prefix_len,
                },
                Some(w),
            ) => format!(
                "regex {} matched; regexes are tried longest pattern first (older first on a tie), and its \
                 pattern ({pattern_len} chars) is longer than {}",
                w.route.path.as_str(),
                prefix_len.map_or_else(
                    || "any matching prefix (there is none)".to_string(),
                    |l| format!("the longest matching prefix ({l} chars)")
                )
            ),
            (PathWin::Prefix { len }, Some(w)) => format!(
                "Prefix {} is the longest matching prefix ({len} chars, element-wise on '/'); no Exact rule \
                 equals the path and no longer regex matched",
                w.route.path.as_str()
            ),
            _ => "no path rule matches".to_string(),
        };
        let (outcome, policy, tls) = match &m.lookup {
            Lookup::Route(e) => (
                Outcome::Route {
                    id: e.id,
                    host: e.host.clone(),
                    path: e.route.path.clone(),
                    backend: e.route.backend.upstream.clone(),
                    source: e.route.source.clone(),
                },
                Some(&e.route.policy),
                e.tls,
            ),
            Lookup::Default { backend, tls } => {
                let scope = if m.vhost.is_some_and(|v| v.default_backend.is_some()) {
                    "host"
                } else {
                    "global"
                };
                let o = Outcome::DefaultBackend {
                    backend: backend.upstream.clone(),
                    scope,
                };
                (o, Some(&self.default_policy), *tls)
            }
            Lookup::NotFound => (Outcome::NotFound, None, false),
        };
        let mut effects = Vec::new();
        if let Some(policy) = policy {
            effects = policy_effects(policy, tls, https, &host_n, path);
            if let Lookup::Route(e) = &m.lookup {
                route_effects(&e.route, &mut effects);
            }
        }
        Explanation {
            host: host_n,
            path: path_n,
            https,
            host_match: m.host_match,
            vhost: vhost_name,
            host_reason,
            candidates,
            route,
            path_reason,
            outcome,
            effects,
        }
    }
}

/// Why a matching rule lost to the winner.
fn lost_because(path: &PathMatch, win: PathWin) -> String {
    match (win, path) {
        (PathWin::Exact, _) => "an Exact rule equal to the whole path is checked first".into(),
        (PathWin::Regex { pattern_len, .. }, PathMatch::Regex(p)) if p.len() == pattern_len => {
            "an older regex of the same pattern length matched first".into()
        }
        (PathWin::Regex { pattern_len, .. }, _) => {
            format!("a longer regex (pattern {pattern_len} chars) matched first")
        }
        (PathWin::Prefix { len }, PathMatch::Regex(p)) => format!(
            "regexes compete by pattern length, and {} chars is not longer than the winning prefix ({len} chars)",
            p.len()
        ),
        (PathWin::Prefix { len }, _) => format!("a longer prefix ({len} chars) matched: the longest wins"),
        (PathWin::None, _) => "nothing won".into(),
    }
}

/// The backend as the routes table shows it: the upstream, or the redirect that replaces it.
pub fn backend_of(policy: &RoutePolicy, upstream: &str) -> String {
    match &policy.redirect {
        Some(r) => format!("redirect {} {}", r.code, r.url),
        None => upstream.to_string(),
    }
}

/// The rewrite and access phases, as `handler::handle` applies them, for a request.
fn policy_effects(p: &RoutePolicy, tls: bool, https: bool, host: &str, raw_path: &str) -> Vec<Effect> {
    let mut out = Vec::new();
    let mut push = |what, detail: String, answers| out.push(Effect { what, detail, answers });
    if let Some(r) = &p.redirect {
        let what = if r.code == 301 || r.code == 308 {
            "permanent-redirect"
        } else {
            "temporal-redirect"
        };
        push(what, format!("answers {} with Location {}", r.code, r.url), true);
        return out;
    }
    if !https && ((tls && p.ssl_redirect) || p.force_ssl_redirect) {
        let why = if tls && p.ssl_redirect {
            "ssl-redirect"
        } else {
            "force-ssl-redirect"
        };
        push(why, format!("plain HTTP answers 308 to https://{host}{raw_path}"), true);
        return out;
    }
    if !https && tls {
        push(
            "ssl-redirect",
            "off: the TLS host is served over plain HTTP too".into(),
            false,
        );
    }
    if let Some(root) = &p.app_root {
        if raw_path == "/" {
            let scheme = if https { "https" } else { "http" };
            push("app-root", format!("answers 302 to {scheme}://{host}{root}"), true);
            return out;
        }
        push(
            "app-root",
            format!("{root}: only a request for exactly / is redirected"),
            false,
        );
    }
    if p.cors.is_some() {
        push(
            "enable-cors",
            "OPTIONS preflights are answered here; CORS headers added".into(),
            false,
        );
    }
    out
}

/// What only a matched route does: access checks, canary, rewrite, fallback.
fn route_effects(r: &crate::model::Route, out: &mut Vec<Effect>) {
    if out.iter().any(|e| e.answers) {
        return;
    }
    let p = &r.policy;
    let mut push = |what, detail: String| {
        out.push(Effect {
            what,
            detail,
            answers: false,
        })
    };
    if let Some(l) = &p.limit {
        let rates: Vec<String> = [
            l.rps.map(|n| format!("{n}/s")),
            l.rpm.map(|n| format!("{n}/min")),
            l.connections.map(|n| format!("{n} connections")),
        ]
        .into_iter()
        .flatten()
        .collect();
        push(
            "limit",
            format!("{} per client IP; over it answers {}", rates.join(", "), l.status),
        );
    }
    if !p.allow_source.is_empty() {
        push(
            "allowlist-source-range",
            format!("only {} are let in; others get 403", p.allow_source.join(", ")),
        );
    }
    if let Some(a) = &p.basic_auth {
        push(
            "auth-type",
            format!("basic (realm {:?}): 401 without valid credentials", a.realm),
        );
    }
    if let Some(c) = &r.canary {
        let mut how = Vec::new();
        if let Some(h) = &c.header {
            how.push(format!("header {}", h.name));
        }
        if let Some(k) = &c.cookie {
            how.push(format!("cookie {k}"));
        }
        if c.weight > 0 {
            how.push(format!("weight {}/{}", c.weight, c.weight_total));
        }
        push(
            "canary",
            format!(
                "from {}: to {} by {}",
                c.source,
                c.backend.upstream,
                if how.is_empty() {
                    "nothing (weight 0)".into()
                } else {
                    how.join(", then ")
                }
            ),
        );
    }
    if let Some(t) = &p.rewrite_target {
        push("rewrite-target", format!("the upstream path becomes {t}"));
    }
    if let Some(f) = &p.fallback {
        push(
            "default-backend",
            format!("{} when the Service has no ready endpoints", f.upstream),
        );
    }
    push("proxy", format!("proxied to {}", r.backend.upstream));
}
