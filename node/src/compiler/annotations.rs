//! `nginx.ingress.kubernetes.io/*` annotations parsed into typed values.
//!
//! An invalid value is an error for the Ingress that carries it, naming the key and value.
//! Values are data, never configuration text: a value that would need escaping anywhere
//! (quotes, newlines, control characters in a header) is refused. Snippets are never
//! executed: they are reported as ignored. Unknown keys are ignored with a debug log.

use std::collections::BTreeMap;
use std::time::Duration;

use raftgate_proxy::model::Affinity;
use raftgate_proxy::model::AffinityMode;
use raftgate_proxy::model::Balance;
use raftgate_proxy::model::CanaryHeader;
use raftgate_proxy::model::CookieAttributes;
use raftgate_proxy::model::Cors;
use raftgate_proxy::model::HashBy;
use raftgate_proxy::model::HashPart;
use raftgate_proxy::model::HeaderMatch;
use raftgate_proxy::model::NextUpstream;
use raftgate_proxy::model::PathMatch;
use raftgate_proxy::model::Protocol;
use raftgate_proxy::model::SameSite;

use crate::config::parse_size;

/// The annotation prefix ingress-nginx uses.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The longest annotation value read (the API server allows 256 KiB for all of them together).
const MAX_VALUE: usize = 16 * 1024;

/// A value as error messages show it: at most 128 bytes, cut on a character boundary.
fn preview(value: &str) -> String {
    if value.len() <= 128 {
        return value.to_string();
    }
    let mut end = 128;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// An annotation value that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("annotation {PREFIX}{key}: invalid value {value:?}: {reason}")]
pub struct AnnotationError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// Where the htpasswd data sits in the auth Secret (`auth-secret-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthSecretType {
    /// The `auth` key holds an htpasswd file.
    #[default]
    File,
    /// Each key is a user and its value the hash.
    Map,
}

/// ingress-nginx's CORS defaults, which the `cors-*` annotations override.
fn cors_defaults() -> Cors {
    Cors {
        allow_origin: vec!["*".into()],
        allow_methods: "GET, PUT, POST, DELETE, PATCH, OPTIONS".into(),
        allow_headers: "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization".into(),
        expose_headers: String::new(),
        allow_credentials: true,
        max_age: 1_728_000,
    }
}

/// The annotations this build understands, all optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    pub use_regex: bool,
    pub backend_protocol: Option<Protocol>,
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: Option<bool>,
    pub app_root: Option<String>,
    pub rewrite_target: Option<String>,
    /// URL and status (301 unless `permanent-redirect-code`).
    pub permanent_redirect: Option<(String, u16)>,
    /// URL and status (302 unless `temporal-redirect-code`).
    pub temporal_redirect: Option<(String, u16)>,
    pub x_forwarded_prefix: Option<String>,
    pub proxy_body_size: Option<u64>,
    pub proxy_connect_timeout: Option<Duration>,
    pub proxy_read_timeout: Option<Duration>,
    pub proxy_send_timeout: Option<Duration>,
    pub proxy_next_upstream: Option<NextUpstream>,
    pub proxy_next_upstream_tries: Option<u32>,
    pub load_balance: Option<Balance>,
    /// `allowlist-source-range` or `whitelist-source-range`.
    pub allow_source: Option<Vec<String>>,
    pub limit_rps: Option<u32>,
    pub limit_rpm: Option<u32>,
    pub limit_connections: Option<u32>,
    pub limit_burst_multiplier: Option<u32>,
    /// `limit-allowlist` or `limit-whitelist`.
    pub limit_allowlist: Vec<String>,
    /// `auth-type: basic`.
    pub auth_basic: bool,
    /// `namespace/name` or `name` of the htpasswd Secret.
    pub auth_secret: Option<String>,
    pub auth_secret_type: AuthSecretType,
    pub auth_realm: Option<String>,
    pub cors: Option<Cors>,
    /// Extra host names served by this Ingress's rules.
    pub server_alias: Vec<String>,
    /// A Service (same namespace) that answers when the route's Service has no endpoints.
    pub default_backend: Option<String>,
    /// Send to the Service's ClusterIP instead of its endpoints.
    pub service_upstream: bool,
    /// `custom-http-errors`: statuses answered by the error backend.
    pub custom_http_errors: Vec<u16>,
    /// Snippet annotations present on the object; never executed.
    pub ignored_snippets: Vec<String>,
    /// `canary: "true"` and the `canary-*` annotations: the Ingress is a canary.
    pub canary: Option<CanaryAnnotations>,
    /// `affinity: cookie` with `affinity-mode` and the `session-cookie-*` annotations.
    pub affinity: Option<AffinityAnnotations>,
    /// `upstream-hash-by`.
    pub upstream_hash_by: Option<HashBy>,
}

/// The `canary-*` annotations of a `canary: "true"` Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryAnnotations {
    /// `canary-by-header`, read as `canary-by-header-value` (first), else
    /// `canary-by-header-pattern`, else `always`/`never`.
    pub header: Option<CanaryHeader>,
    /// `canary-by-cookie`.
    pub cookie: Option<String>,
    /// `canary-weight` (default 0).
    pub weight: u32,
    /// `canary-weight-total` (default 100).
    pub weight_total: u32,
    /// `affinity-canary-behavior: legacy`: the canary keeps its own affinity (if any) instead of
    /// the main Ingress's (`sticky`, the default).
    pub legacy_affinity: bool,
}

/// The session-affinity annotations of an `affinity: cookie` Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityAnnotations {
    /// `session-cookie-name` (default `INGRESSCOOKIE`).
    pub cookie: String,
    /// `session-cookie-path`; unset, each route uses its own path (`/` for a regex).
    pub path: Option<String>,
    /// `session-cookie-max-age`, `-expires`, `-samesite`, `-conditional-samesite-none`,
    /// `-secure` and `-domain`.
    pub attributes: CookieAttributes,
    /// `affinity-mode` (default `balanced`).
    pub mode: AffinityMode,
    /// `session-cookie-change-on-failure` (default false).
    pub change_on_failure: bool,
}

impl AffinityAnnotations {
    /// The affinity of one route, its cookie path defaulting to the route's path.
    pub fn for_path(&self, path: &PathMatch) -> Affinity {
        let path = match (&self.path, path) {
            (Some(p), _) => p.clone(),
            (None, PathMatch::Regex(_)) => "/".into(),
            (None, PathMatch::Exact(p) | PathMatch::Prefix(p)) => p.clone(),
        };
        Affinity {
            cookie: self.cookie.clone(),
            path,
            attributes: self.attributes.clone(),
            mode: self.mode,
            change_on_failure: self.change_on_failure,
        }
    }
}

/// Canary and affinity values as they come, checked together once all are read.
#[derive(Default)]
struct Traffic {
    canary: bool,
    header: Option<String>,
    header_value: Option<String>,
    header_pattern: Option<String>,
    cookie: Option<String>,
    /// The weight and its annotation value, for the error naming it.
    weight: Option<(u32, String)>,
    weight_total: Option<u32>,
    legacy_affinity: bool,
    affinity: bool,
    mode: AffinityMode,
    change_on_failure: bool,
    cookie_name: Option<String>,
    cookie_path: Option<String>,
    attributes: CookieAttributes,
}

impl Traffic {
    fn finish(self, a: &mut Annotations) -> Result<(), AnnotationError> {
        let weight_total = self.weight_total.unwrap_or(100);
        if let Some((w, value)) = &self.weight
            && *w > weight_total
        {
            return Err(AnnotationError {
                key: "canary-weight".into(),
                value: value.clone(),
                reason: format!("above canary-weight-total ({weight_total})"),
            });
        }
        if self.canary {
            let matches = match (self.header_value, self.header_pattern) {
                (Some(v), _) => HeaderMatch::Value(v),
                (None, Some(p)) => HeaderMatch::Pattern(p),
                (None, None) => HeaderMatch::AlwaysNever,
            };
            a.canary = Some(CanaryAnnotations {
                header: self.header.map(|name| CanaryHeader { name, matches }),
                cookie: self.cookie,
                weight: self.weight.map_or(0, |(w, _)| w),
                weight_total,
                legacy_affinity: self.legacy_affinity,
            });
        }
        if self.affinity {
            a.affinity = Some(AffinityAnnotations {
                cookie: self.cookie_name.unwrap_or_else(|| "INGRESSCOOKIE".into()),
                path: self.cookie_path,
                attributes: self.attributes,
                mode: self.mode,
                change_on_failure: self.change_on_failure,
            });
        }
        Ok(())
    }
}

impl Annotations {
    /// Parses the annotations of one object.
    pub fn parse(all: Option<&BTreeMap<String, String>>) -> Result<Annotations, AnnotationError> {
        let mut a = Annotations::default();
        let Some(all) = all else { return Ok(a) };
        let mut cors = cors_defaults();
        let mut enable_cors = false;
        let mut permanent_code = None;
        let mut temporal_code = None;
        let mut t = Traffic::default();
        // `upstream-hash-by-subset` and its size, applied to `upstream-hash-by` once all are read.
        let (mut subset, mut subset_size) = (false, None);
        for (full, value) in all {
            let Some(key) = full.strip_prefix(PREFIX) else {
                continue;
            };
            let err = |reason: &str| AnnotationError {
                key: key.into(),
                value: preview(value),
                reason: reason.into(),
            };
            if value.len() > MAX_VALUE && !key.ends_with("-snippet") {
                return Err(err(&format!(
                    "{} bytes long; annotation values are limited to {MAX_VALUE}",
                    value.len()
                )));
            }
            let v = value.trim();
            let flag = || boolean(v).ok_or_else(|| err("expected \"true\" or \"false\""));
            let secs = || seconds(v).ok_or_else(|| err("expected whole seconds above 0"));
            let count = || positive(v).ok_or_else(|| err("expected a whole number above 0"));
            let text = || {
                header_safe(v)
                    .map(str::to_string)
                    .ok_or_else(|| err("must be printable text without quotes"))
            };
            match key {
                "use-regex" => a.use_regex = flag()?,
                "ssl-redirect" => a.ssl_redirect = Some(flag()?),
                "force-ssl-redirect" => a.force_ssl_redirect = Some(flag()?),
                "app-root" => {
                    if !v.starts_with('/') || header_safe(v).is_none() || v.contains(' ') {
                        return Err(err("expected a path starting with '/'"));
                    }
                    a.app_root = Some(v.to_string());
                }
                "rewrite-target" => {
                    if v.is_empty() || header_safe(v).is_none() || v.contains(' ') {
                        return Err(err("expected a path, optionally with $1… captures"));
                    }
                    a.rewrite_target = Some(v.to_string());
                }
                "permanent-redirect" => {
                    a.permanent_redirect = Some((url(v).ok_or_else(|| err("expected an absolute http(s) URL"))?, 301))
                }
                "temporal-redirect" => {
                    a.temporal_redirect = Some((url(v).ok_or_else(|| err("expected an absolute http(s) URL"))?, 302))
                }
                "permanent-redirect-code" => {
                    permanent_code = Some(redirect_code(v).ok_or_else(|| err("expected a 3xx status from 300 to 308"))?)
                }
                "temporal-redirect-code" => {
                    temporal_code = Some(redirect_code(v).ok_or_else(|| err("expected a 3xx status from 300 to 308"))?)
                }
                "x-forwarded-prefix" => a.x_forwarded_prefix = Some(text()?),
                "backend-protocol" => {
                    a.backend_protocol = Some(match v.to_ascii_uppercase().as_str() {
                        "HTTP" => Protocol::Http,
                        "HTTPS" => Protocol::Https,
                        "GRPC" | "HTTP2" | "H2C" => Protocol::H2c,
                        "GRPCS" => Protocol::H2,
                        "AJP" | "FCGI" => {
                            return Err(err("AJP and FCGI backends are not supported"));
                        }
                        _ => return Err(err("expected HTTP, HTTPS, GRPC, GRPCS or HTTP2")),
                    })
                }
                "proxy-body-size" => {
                    a.proxy_body_size = Some(parse_size(v).ok_or_else(|| err("expected a size such as 0, 8k, 1m"))?)
                }
                "proxy-connect-timeout" => a.proxy_connect_timeout = Some(secs()?),
                "proxy-read-timeout" => a.proxy_read_timeout = Some(secs()?),
                "proxy-send-timeout" => a.proxy_send_timeout = Some(secs()?),
                "proxy-next-upstream" => a.proxy_next_upstream = Some(next_upstream(v).map_err(|r| err(&r))?),
                "proxy-next-upstream-tries" => {
                    a.proxy_next_upstream_tries = Some(v.parse().map_err(|_| err("expected a whole number"))?)
                }
                "load-balance" => {
                    a.load_balance = Some(match v {
                        "round_robin" => Balance::RoundRobin,
                        "least_conn" | "least_request" => Balance::LeastRequest,
                        "ewma" => Balance::Ewma,
                        _ => return Err(err("expected round_robin, least_conn or ewma")),
                    })
                }
                "whitelist-source-range" | "allowlist-source-range" => {
                    a.allow_source = Some(cidrs(v).map_err(|r| err(&r))?)
                }
                "limit-rps" => a.limit_rps = Some(count()?),
                "limit-rpm" => a.limit_rpm = Some(count()?),
                "limit-connections" => a.limit_connections = Some(count()?),
                "limit-burst-multiplier" => a.limit_burst_multiplier = Some(count()?),
                "limit-whitelist" | "limit-allowlist" => a.limit_allowlist = cidrs(v).map_err(|r| err(&r))?,
                "auth-type" => match v {
                    "basic" => a.auth_basic = true,
                    "digest" => {
                        return Err(err("digest authentication is not supported; use basic"));
                    }
                    _ => return Err(err("expected basic")),
                },
                "auth-secret" => a.auth_secret = Some(text()?),
                "auth-secret-type" => {
                    a.auth_secret_type = match v {
                        "auth-file" => AuthSecretType::File,
                        "auth-map" => AuthSecretType::Map,
                        _ => return Err(err("expected auth-file or auth-map")),
                    }
                }
                "auth-realm" => a.auth_realm = Some(text()?),
                "enable-cors" => enable_cors = flag()?,
                "cors-allow-origin" => {
                    cors.allow_origin = v
                        .split(',')
                        .map(|o| o.trim().to_string())
                        .filter(|o| !o.is_empty())
                        .collect();
                    if cors.allow_origin.is_empty() || cors.allow_origin.iter().any(|o| o != "*" && url(o).is_none()) {
                        return Err(err(
                            "expected * or a comma-separated list of http(s)://host[:port] origins",
                        ));
                    }
                }
                "cors-allow-methods" => cors.allow_methods = text()?,
                "cors-allow-headers" => cors.allow_headers = text()?,
                "cors-expose-headers" => cors.expose_headers = text()?,
                "cors-allow-credentials" => cors.allow_credentials = flag()?,
                "cors-max-age" => cors.max_age = v.parse().map_err(|_| err("expected whole seconds"))?,
                "server-alias" => {
                    for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                        a.server_alias.push(h.to_string());
                    }
                }
                "default-backend" => a.default_backend = Some(text()?),
                "service-upstream" => a.service_upstream = flag()?,
                "custom-http-errors" => a.custom_http_errors = error_statuses(v).map_err(|r| err(&r))?,
                "canary" => t.canary = flag()?,
                "canary-by-header" => {
                    t.header = optional(v, header_name).ok_or_else(|| err("expected a header name"))?
                }
                "canary-by-header-value" => {
                    t.header_value = optional(v, |v| header_safe(v).map(str::to_string))
                        .ok_or_else(|| err("must be printable text without quotes"))?
                }
                "canary-by-header-pattern" => {
                    if !v.is_empty() {
                        raftgate_proxy::select::header_pattern(v)
                            .map_err(|e| err(&format!("invalid regular expression: {e}")))?;
                        t.header_pattern = Some(v.to_string());
                    }
                }
                "canary-by-cookie" => {
                    t.cookie = optional(v, cookie_name).ok_or_else(|| err("expected a cookie name"))?
                }
                "canary-weight" => {
                    let w = v
                        .parse()
                        .map_err(|_| err("expected a whole number from 0 to canary-weight-total"))?;
                    t.weight = Some((w, value.clone()));
                }
                "canary-weight-total" => t.weight_total = Some(count()?),
                "affinity" => match v {
                    "cookie" => t.affinity = true,
                    _ => return Err(err("expected cookie, the only affinity type")),
                },
                "affinity-canary-behavior" => {
                    t.legacy_affinity = match v {
                        "sticky" => false,
                        "legacy" => true,
                        _ => return Err(err("expected sticky or legacy")),
                    }
                }
                "affinity-mode" => {
                    t.mode = match v {
                        "balanced" => AffinityMode::Balanced,
                        "persistent" => AffinityMode::Persistent,
                        _ => return Err(err("expected balanced or persistent")),
                    }
                }
                "session-cookie-name" => {
                    t.cookie_name = Some(cookie_name(v).ok_or_else(|| err("expected a cookie name"))?)
                }
                "session-cookie-path" => {
                    let ok = v.starts_with('/') && header_safe(v).is_some() && !v.contains([';', ' ', ',']);
                    if !ok {
                        return Err(err("expected a path starting with '/', without ';', ',' or spaces"));
                    }
                    t.cookie_path = Some(v.to_string());
                }
                "session-cookie-change-on-failure" => t.change_on_failure = flag()?,
                "session-cookie-max-age" => t.attributes.max_age = Some(secs()?.as_secs()),
                "session-cookie-expires" => t.attributes.expires = Some(secs()?.as_secs()),
                "session-cookie-secure" => t.attributes.secure = Some(flag()?),
                "session-cookie-conditional-samesite-none" => t.attributes.conditional_same_site_none = flag()?,
                "session-cookie-domain" => {
                    t.attributes.domain = Some(cookie_domain(v).ok_or_else(|| err("expected a domain name"))?)
                }
                "session-cookie-samesite" => {
                    t.attributes.same_site = Some(match v.to_ascii_lowercase().as_str() {
                        "none" => SameSite::None,
                        "lax" => SameSite::Lax,
                        "strict" => SameSite::Strict,
                        _ => return Err(err("expected None, Lax or Strict")),
                    })
                }
                "upstream-hash-by" => a.upstream_hash_by = Some(hash_by(v).map_err(|r| err(&r))?),
                "upstream-hash-by-subset" => subset = flag()?,
                "upstream-hash-by-subset-size" => subset_size = Some(count()?),
                k if k.ends_with("-snippet") => a.ignored_snippets.push(k.to_string()),
                _ => {
                    tracing::debug!(annotation = %full, "annotation not supported by raftgate; ignored")
                }
            }
        }
        if let (Some((_, code)), Some(c)) = (a.permanent_redirect.as_mut(), permanent_code) {
            *code = c;
        }
        if let (Some((_, code)), Some(c)) = (a.temporal_redirect.as_mut(), temporal_code) {
            *code = c;
        }
        if enable_cors {
            a.cors = Some(cors);
        }
        t.finish(&mut a)?;
        // As ingress-nginx: without `upstream-hash-by` the subset means nothing.
        if subset && let Some(h) = a.upstream_hash_by.as_mut() {
            h.subset = Some(subset_size.unwrap_or(3));
        }
        if a.auth_basic && a.auth_secret.is_none() {
            return Err(AnnotationError {
                key: "auth-type".into(),
                value: "basic".into(),
                reason: "auth-secret is required with auth-type: basic".into(),
            });
        }
        Ok(a)
    }
}

/// A cookie's `Domain`: DNS labels of letters, digits and `-`, a leading dot tolerated
/// (browsers ignore it).
fn cookie_domain(v: &str) -> Option<String> {
    let name = v.strip_prefix('.').unwrap_or(v);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then(|| name.to_ascii_lowercase())
}

/// `custom-http-errors`, the annotation's and the ConfigMap key's: `404,503`.
pub(super) fn error_statuses(v: &str) -> Result<Vec<u16>, String> {
    v.split(',')
        .map(|c| c.trim().parse::<u16>().ok().filter(|c| (400..=599).contains(c)))
        .collect::<Option<Vec<_>>>()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| "expected a comma-separated list of 4xx/5xx statuses".to_string())
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// ingress-nginx timeouts are whole seconds ("60"); "60s" is accepted too.
fn seconds(v: &str) -> Option<Duration> {
    let n: u64 = v.strip_suffix('s').unwrap_or(v).parse().ok()?;
    (n > 0).then(|| Duration::from_secs(n))
}

/// An empty value is no value (`Some(None)`); any other must parse (`None` if it does not).
fn optional<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Option<T>> {
    if v.is_empty() {
        return Some(None);
    }
    parse(v).map(Some)
}

/// An HTTP header name, lower-cased.
fn header_name(v: &str) -> Option<String> {
    http::HeaderName::from_bytes(v.as_bytes())
        .ok()
        .map(|n| n.as_str().to_string())
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(v: &str) -> Option<String> {
    let separator = |b: u8| b"()<>@,;:\\\"/[]?={} \t".contains(&b);
    (!v.is_empty() && v.bytes().all(|b| (0x21..0x7f).contains(&b) && !separator(b))).then(|| v.to_string())
}

/// The variables `upstream-hash-by` understands.
const HASH_VARIABLES: &str =
    "$remote_addr, $request_uri, $uri, $args, $host, $http_<name>, $cookie_<name>, $arg_<name>";

/// An `upstream-hash-by` key: nginx variables (`$name` or `${name}`) and literal text.
fn hash_by(v: &str) -> Result<HashBy, String> {
    if header_safe(v).is_none() {
        return Err("must be printable text without quotes".into());
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = v;
    while let Some(dollar) = rest.find('$') {
        text.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or("unclosed ${")?;
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            }
        };
        let named = |prefix: &str| name.strip_prefix(prefix).filter(|n| !n.is_empty());
        let part = match name {
            "remote_addr" => HashPart::RemoteAddr,
            "request_uri" => HashPart::RequestUri,
            "uri" | "document_uri" => HashPart::Uri,
            "args" | "query_string" => HashPart::Args,
            "host" => HashPart::Host,
            _ => {
                if let Some(h) = named("http_") {
                    let h = header_name(&h.replace('_', "-")).ok_or_else(|| format!("${name}: not a header name"))?;
                    HashPart::Header(h)
                } else if let Some(c) = named("cookie_") {
                    HashPart::Cookie(cookie_name(c).ok_or_else(|| format!("${name}: not a cookie name"))?)
                } else if let Some(a) = named("arg_") {
                    HashPart::Arg(a.to_string())
                } else if name.is_empty() {
                    return Err("'$' must be followed by a variable name".into());
                } else {
                    return Err(format!("unsupported variable ${name}; supported: {HASH_VARIABLES}"));
                }
            }
        };
        if !text.is_empty() {
            parts.push(HashPart::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
        rest = next;
    }
    text.push_str(rest);
    if !parts.iter().any(|p| !matches!(p, HashPart::Text(_))) {
        return Err(format!(
            "no variable, so every request would hash alike; use one of {HASH_VARIABLES}"
        ));
    }
    if !text.is_empty() {
        parts.push(HashPart::Text(text));
    }
    Ok(HashBy { parts, subset: None })
}

fn positive(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().filter(|n| *n > 0)
}

/// Printable ASCII without quotes or backslashes: safe as a header value and in any log.
fn header_safe(v: &str) -> Option<&str> {
    v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        .then_some(v)
}

fn url(v: &str) -> Option<String> {
    let v = header_safe(v)?;
    if v.contains(' ') {
        return None;
    }
    let uri: http::Uri = v.parse().ok()?;
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(())?;
    uri.authority()?;
    Some(v.to_string())
}

fn redirect_code(v: &str) -> Option<u16> {
    v.parse::<u16>().ok().filter(|c| (300..=308).contains(c))
}

fn next_upstream(v: &str) -> Result<NextUpstream, String> {
    let mut n = NextUpstream {
        error: false,
        timeout: false,
        statuses: Vec::new(),
    };
    for word in v.split_whitespace() {
        match word {
            "error" => n.error = true,
            "timeout" => n.timeout = true,
            "off" => {
                return Ok(NextUpstream {
                    error: false,
                    timeout: false,
                    statuses: Vec::new(),
                });
            }
            // Retrying these is nginx's business with a buffered body; we never retry on them.
            "invalid_header" | "non_idempotent" => {}
            w => match w.strip_prefix("http_").and_then(|c| c.parse::<u16>().ok()) {
                Some(c @ (403 | 404 | 429 | 500 | 502 | 503 | 504)) => n.statuses.push(c),
                _ => return Err(format!("unknown condition {w:?}")),
            },
        }
    }
    Ok(n)
}

/// A comma-separated list of CIDRs or single addresses, checked and normalised.
pub fn cidrs(v: &str) -> Result<Vec<String>, String> {
    let nets = raftgate_proxy::limit::parse_cidr_list(v).map_err(|e| e.to_string())?;
    if nets.is_empty() {
        return Err("no ranges given".into());
    }
    Ok(nets.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Result<Annotations, AnnotationError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        Annotations::parse(Some(&m))
    }

    #[test]
    fn typed_values() {
        let a = ann(&[
            ("use-regex", "true"),
            ("backend-protocol", "GRPC"),
            ("proxy-body-size", "8m"),
            ("proxy-read-timeout", "3600"),
            ("load-balance", "ewma"),
            ("server-snippet", "return 200;"),
            ("app-root", "/corp"),
            ("permanent-redirect", "https://example.org/new"),
            ("permanent-redirect-code", "308"),
            ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1"),
            ("limit-rps", "5"),
            ("proxy-next-upstream", "error timeout http_502"),
            ("server-alias", "a.example.com, b.example.com"),
        ])
        .unwrap();
        assert!(a.use_regex);
        assert_eq!(a.backend_protocol, Some(Protocol::H2c));
        assert_eq!(a.proxy_body_size, Some(8 << 20));
        assert_eq!(a.proxy_read_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(a.load_balance, Some(Balance::Ewma));
        assert_eq!(a.ignored_snippets, vec!["server-snippet".to_string()]);
        assert_eq!(a.app_root.as_deref(), Some("/corp"));
        assert_eq!(a.permanent_redirect, Some(("https://example.org/new".into(), 308)));
        assert_eq!(a.allow_source, Some(vec!["10.0.0.0/8".into(), "192.168.1.1/32".into()]));
        assert_eq!(a.limit_rps, Some(5));
        assert_eq!(
            a.proxy_next_upstream,
            Some(NextUpstream {
                error: true,
                timeout: true,
                statuses: vec![502]
            })
        );
        assert_eq!(a.server_alias, vec!["a.example.com", "b.example.com"]);
    }

    #[test]
    fn cors_defaults_apply_only_when_enabled() {
        assert_eq!(ann(&[("cors-allow-origin", "https://a.com")]).unwrap().cors, None);
        let a = ann(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.com, https://b.com:8443"),
        ])
        .unwrap();
        let c = a.cors.unwrap();
        assert_eq!(c.allow_origin, vec!["https://a.com", "https://b.com:8443"]);
        assert!(c.allow_credentials);
        assert_eq!(c.max_age, 1_728_000);
    }

    #[test]
    fn invalid_values_name_the_key_and_value() {
        let e = ann(&[("proxy-body-size", "big")]).unwrap_err();
        assert_eq!(e.key, "proxy-body-size");
        assert!(e.to_string().contains("\"big\""));
        for (k, v) in [
            ("use-regex", "yes"),
            ("backend-protocol", "FCGI"),
            ("proxy-read-timeout", "0"),
            ("app-root", "corp"),
            ("permanent-redirect", "/relative"),
            ("permanent-redirect", "https://a.com/\"; evil"),
            ("permanent-redirect-code", "200"),
            ("whitelist-source-range", "10.0.0.0/33"),
            ("whitelist-source-range", "not-an-ip"),
            ("limit-rps", "0"),
            ("auth-type", "digest"),
            ("cors-allow-origin", "javascript:alert(1)"),
            ("proxy-next-upstream", "error sometimes"),
            ("x-forwarded-prefix", "line\nbreak"),
            ("custom-http-errors", "404,abc"),
            ("custom-http-errors", "200"),
        ] {
            let e = ann(&[(k, v)]).unwrap_err();
            assert_eq!(e.key, k, "{k}={v}");
        }
        assert!(
            ann(&[("auth-type", "basic")])
                .unwrap_err()
                .reason
                .contains("auth-secret is required")
        );
    }

    #[test]
    fn canary_annotations_with_ingress_nginx_defaults() {
        let a = ann(&[("canary", "true"), ("canary-by-header", "X-Canary")]).unwrap();
        assert_eq!(
            a.canary,
            Some(CanaryAnnotations {
                header: Some(CanaryHeader {
                    name: "x-canary".into(),
                    matches: HeaderMatch::AlwaysNever
                }),
                cookie: None,
                weight: 0,
                weight_total: 100,
                legacy_affinity: false,
            })
        );
        let legacy = |v: &str| {
            ann(&[("canary", "true"), ("affinity-canary-behavior", v)]).map(|a| a.canary.map(|c| c.legacy_affinity))
        };
        assert_eq!(legacy("sticky"), Ok(Some(false)));
        assert_eq!(legacy("legacy"), Ok(Some(true)));
        let e = legacy("Sticky").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.reason.as_str()),
            ("affinity-canary-behavior", "expected sticky or legacy")
        );
        let a = ann(&[
            ("canary", "true"),
            ("canary-by-header", "x-env"),
            ("canary-by-header-value", "beta"),
            ("canary-by-header-pattern", "^b.*"),
            ("canary-by-cookie", "use_canary"),
            ("canary-weight", "30"),
            ("canary-weight-total", "1000"),
        ])
        .unwrap();
        let c = a.canary.unwrap();
        assert_eq!(
            c.header.unwrap().matches,
            HeaderMatch::Value("beta".into()),
            "the value wins over the pattern"
        );
        assert_eq!(
            (c.cookie.as_deref(), c.weight, c.weight_total),
            (Some("use_canary"), 30, 1000)
        );
        let c = ann(&[
            ("canary", "true"),
            ("canary-by-header", "x-env"),
            ("canary-by-header-pattern", "^b.*"),
        ])
        .unwrap()
        .canary
        .unwrap();
        assert_eq!(c.header.unwrap().matches, HeaderMatch::Pattern("^b.*".into()));
        assert_eq!(ann(&[("canary-weight", "10")]).unwrap().canary, None, "not a canary");
        assert_eq!(
            ann(&[("canary", "false"), ("canary-weight", "10")]).unwrap().canary,
            None
        );
    }

    #[test]
    fn affinity_annotations_and_the_cookie_path_default() {
        let a = ann(&[("affinity", "cookie")]).unwrap().affinity.unwrap();
        assert_eq!(a.cookie, "INGRESSCOOKIE");
        assert_eq!(a.mode, AffinityMode::Balanced);
        assert!(!a.change_on_failure, "ingress-nginx's default");
        assert_eq!(a.for_path(&PathMatch::Prefix("/app".into())).path, "/app");
        assert_eq!(a.for_path(&PathMatch::Regex("/app(/|$)(.*)".into())).path, "/");
        let a = ann(&[
            ("affinity", "cookie"),
            ("affinity-mode", "persistent"),
            ("session-cookie-name", "route"),
            ("session-cookie-path", "/shop"),
            ("session-cookie-max-age", "172800"),
            ("session-cookie-expires", "86400"),
            ("session-cookie-samesite", "None"),
            ("session-cookie-conditional-samesite-none", "true"),
            ("session-cookie-secure", "false"),
            ("session-cookie-domain", ".Example.com"),
            ("session-cookie-change-on-failure", "true"),
        ])
        .unwrap()
        .affinity
        .unwrap();
        let r = a.for_path(&PathMatch::Prefix("/other".into()));
        assert_eq!(
            r,
            Affinity {
                cookie: "route".into(),
                path: "/shop".into(),
                attributes: CookieAttributes {
                    max_age: Some(172_800),
                    expires: Some(86_400),
                    same_site: Some(SameSite::None),
                    conditional_same_site_none: true,
                    secure: Some(false),
                    domain: Some("example.com".into()),
                },
                mode: AffinityMode::Persistent,
                change_on_failure: true,
            }
        );
        assert_eq!(ann(&[("session-cookie-name", "x")]).unwrap().affinity, None);
    }

    #[test]
    fn upstream_hash_by_subset_and_its_size() {
        let subset = |pairs: &[(&str, &str)]| ann(pairs).unwrap().upstream_hash_by.map(|h| h.subset);
        let by = ("upstream-hash-by", "$request_uri");
        assert_eq!(subset(&[by]), Some(None));
        assert_eq!(subset(&[by, ("upstream-hash-by-subset", "true")]), Some(Some(3)));
        assert_eq!(
            subset(&[
                ("upstream-hash-by-subset-size", "5"),
                ("upstream-hash-by-subset", "true"),
                by
            ]),
            Some(Some(5)),
            "in any order"
        );
        assert_eq!(subset(&[by, ("upstream-hash-by-subset", "false")]), Some(None));
        assert_eq!(
            subset(&[("upstream-hash-by-subset", "true")]),
            None,
            "nothing to subset"
        );
        let e = ann(&[
            by,
            ("upstream-hash-by-subset", "true"),
            ("upstream-hash-by-subset-size", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "upstream-hash-by-subset-size");
    }

    #[test]
    fn upstream_hash_by_variables_and_text() {
        let key = |v: &str| ann(&[("upstream-hash-by", v)]).map(|a| a.upstream_hash_by.unwrap().parts);
        assert_eq!(key("$remote_addr"), Ok(vec![HashPart::RemoteAddr]));
        assert_eq!(key("$request_uri$host"), Ok(vec![HashPart::RequestUri, HashPart::Host]));
        assert_eq!(key("$http_x_user_id"), Ok(vec![HashPart::Header("x-user-id".into())]));
        assert_eq!(
            key("user:${cookie_session}/$arg_id"),
            Ok(vec![
                HashPart::Text("user:".into()),
                HashPart::Cookie("session".into()),
                HashPart::Text("/".into()),
                HashPart::Arg("id".into()),
            ])
        );
        for (v, needle) in [
            ("$binary_remote_addr", "unsupported variable $binary_remote_addr"),
            ("constant", "no variable"),
            ("$", "followed by a variable name"),
            ("${host", "unclosed"),
            ("$http_", "unsupported variable $http_"),
        ] {
            let e = key(v).unwrap_err();
            assert_eq!(e.key, "upstream-hash-by");
            assert!(e.reason.contains(needle), "{v}: {}", e.reason);
        }
    }

    #[test]
    fn invalid_traffic_values_name_the_key_and_value() {
        for (pairs, key) in [
            (vec![("canary-weight", "ten")], "canary-weight"),
            (vec![("canary-weight", "-5")], "canary-weight"),
            (vec![("canary", "true"), ("canary-weight", "101")], "canary-weight"),
            (
                vec![
                    ("canary", "true"),
                    ("canary-weight", "300"),
                    ("canary-weight-total", "200"),
                ],
                "canary-weight",
            ),
            (vec![("canary-weight-total", "0")], "canary-weight-total"),
            (
                vec![("canary-by-header-pattern", "(unclosed")],
                "canary-by-header-pattern",
            ),
            (vec![("canary-by-header", "bad header")], "canary-by-header"),
            (vec![("canary-by-cookie", "a;b")], "canary-by-cookie"),
            (vec![("affinity", "ip")], "affinity"),
            (vec![("affinity-mode", "sticky")], "affinity-mode"),
            (
                vec![("session-cookie-change-on-failure", "maybe")],
                "session-cookie-change-on-failure",
            ),
            (
                vec![("session-cookie-samesite", "Sometimes")],
                "session-cookie-samesite",
            ),
            (vec![("session-cookie-max-age", "-1")], "session-cookie-max-age"),
            (vec![("session-cookie-max-age", "0")], "session-cookie-max-age"),
            (vec![("session-cookie-name", "a b")], "session-cookie-name"),
            (vec![("session-cookie-path", "shop")], "session-cookie-path"),
            (vec![("session-cookie-path", "/a;Domain=evil")], "session-cookie-path"),
            (vec![("session-cookie-expires", "soon")], "session-cookie-expires"),
            (vec![("session-cookie-secure", "yes")], "session-cookie-secure"),
            (
                vec![("session-cookie-conditional-samesite-none", "1")],
                "session-cookie-conditional-samesite-none",
            ),
            (
                vec![("session-cookie-domain", "a.com; Secure")],
                "session-cookie-domain",
            ),
            (vec![("session-cookie-domain", "")], "session-cookie-domain"),
            (vec![("session-cookie-domain", "a..com")], "session-cookie-domain"),
        ] {
            let e = ann(&pairs).unwrap_err();
            assert_eq!(e.key, key, "{pairs:?}");
        }
        let e = ann(&[("canary-by-header-pattern", "(unclosed")]).unwrap_err();
        assert!(e.reason.starts_with("invalid regular expression"), "{e}");
        let e = ann(&[("canary", "true"), ("canary-weight", "150")]).unwrap_err();
        assert_eq!(e.value, "150");
        assert!(e.to_string().contains("above canary-weight-total (100)"), "{e}");
    }

    #[test]
    fn other_prefixes_and_unknown_keys_are_ignored() {
        let mut m = BTreeMap::new();
        m.insert("kubernetes.io/ingress.class".to_string(), "nginx".to_string());
        m.insert(format!("{PREFIX}some-future-thing"), "x".to_string());
        assert_eq!(Annotations::parse(Some(&m)).unwrap(), Annotations::default());
    }

    #[test]
    fn an_oversized_value_is_refused_and_never_echoed_whole() {
        let mut m = BTreeMap::new();
        m.insert(format!("{PREFIX}rewrite-target"), "/x".repeat(512 * 1024));
        let e = Annotations::parse(Some(&m)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("1048576 bytes long"), "{}", &msg[..200.min(msg.len())]);
        assert!(
            msg.len() < 400,
            "the message carries a preview, not the value: {} bytes",
            msg.len()
        );
        // A snippet is ignored whatever its size.
        let mut m = BTreeMap::new();
        m.insert(format!("{PREFIX}configuration-snippet"), "#".repeat(1 << 20));
        assert_eq!(Annotations::parse(Some(&m)).unwrap().ignored_snippets.len(), 1);
    }
}
