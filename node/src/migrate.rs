//! `raftgate migrate-check`: what raftgate makes of manifests written for ingress-nginx, key by key, with `file:line`.
//!
//! Pure: the caller hands in `(path, text)` pairs and gets a [`Report`]; nothing here reads
//! files or prints. Each document is parsed with serde_yaml to learn kinds and keys, and each
//! key's line is then found textually inside that document's line range (documents split on
//! `---` lines). A document that does not parse becomes one `invalid` finding; the others are
//! still checked.
//!
//! [`ANNOTATIONS`] and [`CONFIGMAP_KEYS`] are the single source of truth for what raftgate does
//! with each ingress-nginx key; the tests below hold them to the annotation parser and the
//! ConfigMap overlay. Values are checked with the same code the compiler uses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml::Value;

use crate::compiler::Compiler;
use crate::compiler::Options;
use crate::compiler::annotations::Annotations;
use crate::compiler::annotations::PREFIX;
use crate::objects::Key;
use crate::objects::Objects;

/// What raftgate does with one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Works as in ingress-nginx.
    Supported,
    /// Works, with a difference the note names.
    Differs,
    /// Not implemented: the note says what happens instead.
    Unsupported,
    /// The value (or the document) cannot be used as written.
    Invalid,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Supported => "supported",
            Status::Differs => "differs",
            Status::Unsupported => "unsupported",
            Status::Invalid => "invalid",
        }
    }
}

/// One ingress-nginx key and what raftgate does with it.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub key: &'static str,
    pub status: Status,
    /// The difference (differs) or what happens instead (unsupported); empty when supported.
    pub note: &'static str,
    /// A valid value, for supported keys: the tests check the parser uses the key.
    pub sample: &'static str,
    /// Other annotations the key only means something with (`canary-weight` needs `canary: "true"`).
    pub with: &'static [(&'static str, &'static str)],
}

const fn yes(key: &'static str, sample: &'static str) -> Known {
    Known {
        key,
        status: Status::Supported,
        note: "",
        sample,
        with: &[],
    }
}

const fn differs(key: &'static str, sample: &'static str, note: &'static str) -> Known {
    Known {
        key,
        status: Status::Differs,
        note,
        sample,
        with: &[],
    }
}

const fn no(key: &'static str, note: &'static str) -> Known {
    Known {
        key,
        status: Status::Unsupported,
        note,
        sample: "",
        with: &[],
    }
}

impl Known {
    const fn with(self, with: &'static [(&'static str, &'static str)]) -> Known {
        Known { with, ..self }
    }
}

const CANARY: &[(&str, &str)] = &[("canary", "true")];
const CANARY_HEADER: &[(&str, &str)] = &[("canary", "true"), ("canary-by-header", "X-Canary")];
const AFFINITY: &[(&str, &str)] = &[("affinity", "cookie")];
const CORS: &[(&str, &str)] = &[("enable-cors", "true")];
const HASH_BY: &[(&str, &str)] = &[("upstream-hash-by", "$request_uri")];
const HASH_SUBSET: &[(&str, &str)] = &[
    ("upstream-hash-by", "$request_uri"),
    ("upstream-hash-by-subset", "true"),
];
const IGNORED: &str = "not implemented; ignored";
const SNIPPET: &str = "never executed (raftgate has no nginx configuration); the rest of the object serves";

/// Every `nginx.ingress.kubernetes.io/<key>` ingress-nginx documents, with raftgate's support.
/// Keys not listed here are reported as unknown; any other `*-snippet` key as a snippet.
pub const ANNOTATIONS: &[Known] = &[
    differs(
        "use-regex",
        "true",
        "Rust regex syntax: no look-around or backreferences (such a pattern rejects the Ingress)",
    ),
    yes("rewrite-target", "/$1"),
    yes("app-root", "/app"),
    yes("ssl-redirect", "false"),
    yes("force-ssl-redirect", "true"),
    differs(
        "permanent-redirect",
        "https://example.com/",
        "absolute http(s) URLs only",
    ),
    yes("permanent-redirect-code", "308").with(&[("permanent-redirect", "https://example.com/")]),
    differs(
        "temporal-redirect",
        "https://example.com/",
        "absolute http(s) URLs only",
    ),
    yes("temporal-redirect-code", "307").with(&[("temporal-redirect", "https://example.com/")]),
    yes("x-forwarded-prefix", "/api"),
    yes("proxy-body-size", "8m"),
    yes("proxy-connect-timeout", "10"),
    differs(
        "proxy-read-timeout",
        "3600",
        "also the WebSocket idle timeout, counting client bytes too (nginx counts upstream reads only)",
    ),
    differs(
        "proxy-send-timeout",
        "3600",
        "per endpoint: the last request's value applies to its pooled connections",
    ),
    differs(
        "proxy-next-upstream",
        "error timeout http_502",
        "status retries only for idempotent requests without a body; invalid_header, non_idempotent have no effect",
    ),
    yes("proxy-next-upstream-tries", "2"),
    differs(
        "load-balance",
        "ewma",
        "least_conn is least requests in flight (power of two choices)",
    ),
    yes("whitelist-source-range", "10.0.0.0/8"),
    yes("allowlist-source-range", "10.0.0.0/8"),
    yes("limit-rps", "10"),
    yes("limit-rpm", "100"),
    differs(
        "limit-connections",
        "5",
        "counts requests in flight per client IP, not connections",
    ),
    yes("limit-burst-multiplier", "3"),
    yes("limit-whitelist", "10.0.0.0/8"),
    yes("limit-allowlist", "10.0.0.0/8"),
    differs("auth-type", "basic", "basic only: auth-type digest rejects the Ingress")
        .with(&[("auth-secret", "basic-auth")]),
    yes("auth-secret", "basic-auth"),
    differs(
        "auth-secret-type",
        "auth-map",
        "plain-text and crypt(3) DES htpasswd entries are refused (bcrypt, {SHA}, $apr1$ work)",
    ),
    yes("auth-realm", "Protected"),
    yes("enable-cors", "true"),
    yes("cors-allow-origin", "https://a.example.com").with(CORS),
    yes("cors-allow-methods", "GET").with(CORS),
    yes("cors-allow-headers", "X-Custom").with(CORS),
    yes("cors-expose-headers", "X-Id").with(CORS),
    yes("cors-allow-credentials", "false").with(CORS),
    yes("cors-max-age", "60").with(CORS),
    differs(
        "backend-protocol",
        "GRPC",
        "HTTP, HTTPS, GRPC, GRPCS, HTTP2; AJP and FCGI reject the Ingress",
    ),
    yes("default-backend", "fallback"),
    yes("custom-http-errors", "404,503"),
    yes("service-upstream", "true"),
    yes("server-alias", "alias.example.com"),
    yes("canary", "true"),
    yes("canary-by-header", "X-Canary").with(CANARY),
    yes("canary-by-header-value", "yes").with(CANARY_HEADER),
    yes("canary-by-header-pattern", "^y").with(CANARY_HEADER),
    yes("canary-by-cookie", "canary").with(CANARY),
    differs(
        "canary-weight",
        "10",
        "deterministic: exactly weight of every total requests, spread evenly (ingress-nginx draws at random)",
    )
    .with(CANARY),
    differs("canary-weight-total", "1000", "deterministic split, as canary-weight").with(CANARY),
    yes("affinity", "cookie"),
    yes("affinity-mode", "persistent").with(AFFINITY),
    yes("affinity-canary-behavior", "legacy").with(CANARY),
    yes("session-cookie-name", "route").with(AFFINITY),
    yes("session-cookie-path", "/app").with(AFFINITY),
    yes("session-cookie-max-age", "3600").with(AFFINITY),
    yes("session-cookie-expires", "3600").with(AFFINITY),
    yes("session-cookie-domain", "example.com").with(AFFINITY),
    yes("session-cookie-secure", "true").with(AFFINITY),
    yes("session-cookie-conditional-samesite-none", "true").with(AFFINITY),
    differs(
        "session-cookie-change-on-failure",
        "true",
        "a retry after the session's endpoint failed goes to another endpoint (ingress-nginx's balancer returns the same one); off, the cookie is kept",
    )
    .with(AFFINITY),
    differs(
        "session-cookie-samesite",
        "Lax",
        "the cookie is always HttpOnly, and re-issued when its endpoint is gone",
    )
    .with(AFFINITY),
    differs(
        "upstream-hash-by",
        "$remote_addr",
        "rendezvous hashing; variables $remote_addr $request_uri $uri $args $host $http_* $cookie_* $arg_* only",
    ),
    // ingress-nginx annotations raftgate does not implement.
    differs(
        "upstream-hash-by-subset",
        "true",
        "a key's subset is the endpoints that rank first for it (rendezvous), so scaling moves few keys",
    )
    .with(HASH_BY),
    yes("upstream-hash-by-subset-size", "5").with(HASH_SUBSET),
    no(
        "auth-url",
        "external auth not implemented; ignored: requests reach the backend unauthenticated",
    ),
    no("auth-signin", "external auth not implemented; ignored"),
    no("auth-signin-redirect-param", "external auth not implemented; ignored"),
    no("auth-method", "external auth not implemented; ignored"),
    no("auth-response-headers", "external auth not implemented; ignored"),
    no("auth-request-redirect", "external auth not implemented; ignored"),
    no("auth-cache-key", "external auth not implemented; ignored"),
    no("auth-cache-duration", "external auth not implemented; ignored"),
    no("auth-keepalive", "external auth not implemented; ignored"),
    no("auth-keepalive-share-vars", "external auth not implemented; ignored"),
    no("auth-keepalive-requests", "external auth not implemented; ignored"),
    no("auth-keepalive-timeout", "external auth not implemented; ignored"),
    no("auth-proxy-set-headers", "external auth not implemented; ignored"),
    no("auth-always-set-cookie", "external auth not implemented; ignored"),
    no("enable-global-auth", "external auth not implemented; ignored"),
    no(
        "auth-tls-secret",
        "client certificates not implemented; ignored: clients are not asked for certificates",
    ),
    no("auth-tls-verify-client", "client certificates not implemented; ignored"),
    no("auth-tls-verify-depth", "client certificates not implemented; ignored"),
    no("auth-tls-error-page", "client certificates not implemented; ignored"),
    no(
        "auth-tls-pass-certificate-to-upstream",
        "client certificates not implemented; ignored",
    ),
    no("auth-tls-match-cn", "client certificates not implemented; ignored"),
    no(
        "proxy-ssl-secret",
        "upstream TLS options not implemented; ignored (HTTPS upstreams are not verified)",
    ),
    no(
        "proxy-ssl-verify",
        "upstream TLS options not implemented; ignored (HTTPS upstreams are not verified)",
    ),
    no(
        "proxy-ssl-verify-depth",
        "upstream TLS options not implemented; ignored",
    ),
    no("proxy-ssl-ciphers", "upstream TLS options not implemented; ignored"),
    no("proxy-ssl-protocols", "upstream TLS options not implemented; ignored"),
    no("proxy-ssl-name", "upstream TLS options not implemented; ignored"),
    no("proxy-ssl-server-name", "upstream TLS options not implemented; ignored"),
    no(
        "ssl-passthrough",
        "not implemented; ignored: TLS is terminated by raftgate (use tcp-services to pass it through)",
    ),
    no("ssl-ciphers", "not implemented; ignored (rustls's cipher suites)"),
    no("ssl-prefer-server-ciphers", IGNORED),
    no("proxy-buffering", "not implemented; ignored (raftgate streams bodies)"),
    no(
        "proxy-buffer-size",
        "not implemented; ignored (raftgate streams bodies)",
    ),
    no(
        "proxy-buffers-number",
        "not implemented; ignored (raftgate streams bodies)",
    ),
    no(
        "proxy-max-temp-file-size",
        "not implemented; ignored (raftgate streams bodies)",
    ),
    no(
        "proxy-request-buffering",
        "not implemented; ignored (raftgate streams bodies)",
    ),
    no(
        "client-body-buffer-size",
        "not implemented; ignored (raftgate streams bodies)",
    ),
    no("proxy-http-version", "not implemented; ignored (HTTP/1.1 upstream)"),
    no("proxy-next-upstream-timeout", IGNORED),
    no(
        "proxy-cookie-domain",
        "not implemented; ignored: Set-Cookie is passed unchanged",
    ),
    no(
        "proxy-cookie-path",
        "not implemented; ignored: Set-Cookie is passed unchanged",
    ),
    no(
        "proxy-redirect-from",
        "not implemented; ignored: Location is passed unchanged",
    ),
    no(
        "proxy-redirect-to",
        "not implemented; ignored: Location is passed unchanged",
    ),
    no(
        "upstream-vhost",
        "not implemented; ignored: the client's Host is sent upstream",
    ),
    no("preserve-trailing-slash", IGNORED),
    no("from-to-www-redirect", IGNORED),
    no("use-port-in-redirects", IGNORED),
    no("custom-headers", "not implemented; ignored: no headers are added"),
    no("connection-proxy-header", IGNORED),
    no(
        "enable-access-log",
        "not implemented; ignored (access log is node-wide)",
    ),
    no("enable-rewrite-log", IGNORED),
    no("limit-rate", "bandwidth limits not implemented; ignored"),
    no("limit-rate-after", "bandwidth limits not implemented; ignored"),
    no(
        "global-rate-limit",
        "global (memcached) limits not implemented; ignored",
    ),
    no(
        "global-rate-limit-window",
        "global (memcached) limits not implemented; ignored",
    ),
    no(
        "global-rate-limit-key",
        "global (memcached) limits not implemented; ignored",
    ),
    no(
        "global-rate-limit-ignored-cidrs",
        "global (memcached) limits not implemented; ignored",
    ),
    no(
        "denylist-source-range",
        "not implemented; ignored: listed addresses are NOT blocked",
    ),
    no(
        "satisfy",
        "not implemented; ignored: every access check applies (satisfy all)",
    ),
    no("mirror-uri", "request mirroring not implemented; ignored"),
    no("mirror-target", "request mirroring not implemented; ignored"),
    no("mirror-request-body", "request mirroring not implemented; ignored"),
    no("mirror-host", "request mirroring not implemented; ignored"),
    no("enable-modsecurity", "no WAF; ignored: requests are not inspected"),
    no("enable-owasp-core-rules", "no WAF; ignored: requests are not inspected"),
    no("modsecurity-transaction-id", "no WAF; ignored"),
    no("enable-opentelemetry", "tracing not implemented; ignored"),
    no("opentelemetry-trust-incoming-span", "tracing not implemented; ignored"),
    no("opentelemetry-operation-name", "tracing not implemented; ignored"),
    no("enable-opentracing", "tracing not implemented; ignored"),
    no("opentracing-trust-incoming-span", "tracing not implemented; ignored"),
    no("enable-influxdb", IGNORED),
    no("influxdb-measurement", IGNORED),
    no("influxdb-port", IGNORED),
    no("influxdb-host", IGNORED),
    no("influxdb-server-name", IGNORED),
    no("http2-push-preload", IGNORED),
    no("server-snippet", SNIPPET),
    no("configuration-snippet", SNIPPET),
    no("stream-snippet", SNIPPET),
    no("auth-snippet", SNIPPET),
    no("modsecurity-snippet", SNIPPET),
];

/// Keys of the ingress-nginx controller ConfigMap: those raftgate reads (`controller_configmap`)
/// and those worth a specific note. Others are reported as not used.
pub const CONFIGMAP_KEYS: &[Known] = &[
    yes("proxy-body-size", "8m"),
    yes("proxy-connect-timeout", "10"),
    differs(
        "proxy-read-timeout",
        "120",
        "also the WebSocket idle timeout, counting client bytes too (nginx counts upstream reads only)",
    ),
    differs(
        "proxy-send-timeout",
        "120",
        "per endpoint: the last request's value applies to its pooled connections",
    ),
    yes("ssl-redirect", "false"),
    yes("proxy-next-upstream-tries", "2"),
    differs(
        "load-balance",
        "ewma",
        "least_conn is least requests in flight (power of two choices)",
    ),
    yes("limit-req-status-code", "429"),
    yes("use-forwarded-headers", "true"),
    yes("proxy-real-ip-cidr", "10.0.0.0/8"),
    differs(
        "use-proxy-protocol",
        "true",
        "PROXY v1 and v2 accepted; the address is used only from peers in proxy-real-ip-cidr",
    ),
    yes("hsts", "false"),
    yes("hsts-max-age", "600"),
    yes("hsts-include-subdomains", "false"),
    yes("hsts-preload", "true"),
    differs(
        "ssl-protocols",
        "TLSv1.3",
        "TLSv1.2 and TLSv1.3 only: older versions are refused",
    ),
    differs(
        "upstream-keepalive-connections",
        "64",
        "idle connections kept per endpoint (nginx: per worker)",
    ),
    yes("disable-access-log", "true"),
    no(
        "allow-snippet-annotations",
        "ignored: snippet annotations are never executed, whatever this says",
    ),
    yes("custom-http-errors", "404,503"),
    no(
        "worker-processes",
        "raftgate has no nginx workers (see worker_threads in its config); ignored",
    ),
    no(
        "max-worker-connections",
        "ignored (see http.max_connections in raftgate's config)",
    ),
    no(
        "log-format-upstream",
        "ignored: raftgate's access log has its own format",
    ),
    no(
        "log-format-escape-json",
        "ignored: raftgate's access log has its own format",
    ),
    no("ssl-ciphers", "ignored: rustls's cipher suites"),
    no("use-http2", "ignored: HTTP/2 is always offered over TLS"),
    no(
        "use-gzip",
        "compression not implemented; ignored: responses go out as the upstream sent them",
    ),
    no("enable-brotli", "compression not implemented; ignored"),
    no("proxy-buffering", "ignored: raftgate streams bodies"),
    no("proxy-buffer-size", "ignored: raftgate streams bodies"),
    no("client-body-buffer-size", "ignored: raftgate streams bodies"),
    no(
        "whitelist-source-range",
        "not read from the ConfigMap; ignored: set it per Ingress",
    ),
    no(
        "denylist-source-range",
        "not implemented; ignored: listed addresses are NOT blocked",
    ),
    no(
        "block-cidrs",
        "not implemented; ignored: listed addresses are NOT blocked",
    ),
    no(
        "block-user-agents",
        "not implemented; ignored: requests are NOT blocked",
    ),
    no("block-referers", "not implemented; ignored: requests are NOT blocked"),
    no(
        "global-auth-url",
        "external auth not implemented; ignored: requests are NOT authenticated",
    ),
    no("enable-modsecurity", "no WAF; ignored: requests are not inspected"),
    no(
        "enable-owasp-modsecurity-crs",
        "no WAF; ignored: requests are not inspected",
    ),
    no("enable-opentelemetry", "tracing not implemented; ignored"),
    no(
        "proxy-next-upstream",
        "not read from the ConfigMap; ignored (the annotation works)",
    ),
    no(
        "force-ssl-redirect",
        "not read from the ConfigMap; ignored (the annotation works)",
    ),
    no(
        "limit-conn-status-code",
        "ignored: limit-req-status-code applies to both limits",
    ),
    no("server-tokens", "ignored: raftgate sends no Server header of its own"),
];

/// The names ingress-nginx installs use for the controller ConfigMap.
const CONTROLLER_CONFIGMAPS: &[&str] = &[
    "ingress-nginx-controller",
    "nginx-configuration",
    "nginx-ingress-controller",
];

/// One thing found in the input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// `Kind namespace/name` (or `Kind name` without a namespace).
    pub object: String,
    /// The full key: `nginx.ingress.kubernetes.io/…`, a ConfigMap key, or a tcp/udp-services port.
    pub key: String,
    /// The value, on one line and cut short.
    pub value: String,
    pub status: Status,
    pub note: String,
}

/// Everything `migrate-check` found, in input order, and a few lines about the whole input.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The ingress class situation, and the raftgate settings the ConfigMaps found need.
    pub notes: Vec<String>,
}

/// Why `migrate-check` could not read its input, or one document of it.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no .yaml, .yml or .json files", path.display())]
    NoManifests { path: PathBuf },
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
}

impl Report {
    /// How many findings have each status.
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// 0 when everything is supported (differences allowed), 1 when something is unsupported or invalid.
    pub fn exit_code(&self) -> u8 {
        if self.count(Status::Unsupported) + self.count(Status::Invalid) > 0 {
            1
        } else {
            0
        }
    }

    /// "N supported, M with differences, K unsupported" (and invalid ones, if any).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} supported, {} with differences, {} unsupported",
            self.count(Status::Supported),
            self.count(Status::Differs),
            self.count(Status::Unsupported)
        );
        let invalid = self.count(Status::Invalid);
        if invalid > 0 {
            let _ = write!(s, ", {invalid} invalid");
        }
        s
    }

    /// The human form: a table (a line naming each object above its keys), the notes, the summary.
    pub fn render(&self) -> String {
        let mut rows = vec![["STATUS", "KEY", "VALUE", "WHERE", "NOTE"].map(String::from)];
        for f in &self.findings {
            rows.push([
                f.status.as_str().to_string(),
                f.key.strip_prefix(PREFIX).unwrap_or(&f.key).to_string(),
                f.value.clone(),
                format!("{}:{}", f.file, f.line),
                f.note.clone(),
            ]);
        }
        let table = crate::ctl::columns(&rows);
        let mut out = String::new();
        let mut object: Option<&str> = None;
        for (i, line) in table.lines().enumerate() {
            if let Some(f) = i.checked_sub(1).and_then(|i| self.findings.get(i))
                && object != Some(f.object.as_str())
            {
                let _ = writeln!(out, "{}:", f.object);
                object = Some(&f.object);
            }
            let _ = writeln!(out, "  {line}");
        }
        if self.findings.is_empty() {
            out.clear();
            out.push_str("no ingress-nginx annotations or ConfigMaps found\n");
        }
        for n in &self.notes {
            let _ = writeln!(out, "{n}");
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }
}

/// What an annotation key is, as the table (or the snippet rule) says.
pub fn annotation_support(key: &str) -> (Status, &'static str) {
    match ANNOTATIONS.iter().find(|k| k.key == key) {
        Some(k) => (k.status, k.note),
        None if key.ends_with("-snippet") => (Status::Unsupported, SNIPPET),
        None => (
            Status::Unsupported,
            "not an ingress-nginx annotation raftgate knows; ignored",
        ),
    }
}

fn configmap_support(key: &str) -> (Status, &'static str) {
    match CONFIGMAP_KEYS.iter().find(|k| k.key == key) {
        Some(k) => (k.status, k.note),
        None if key.ends_with("-snippet") => (Status::Unsupported, SNIPPET),
        None => (Status::Unsupported, "not used by raftgate; ignored"),
    }
}

/// One object of the input, with the line range it came from (0-based, end exclusive).
struct Obj {
    file: usize,
    from: usize,
    to: usize,
    kind: String,
    api: String,
    namespace: Option<String>,
    name: String,
    value: Value,
}

impl Obj {
    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    fn annotations(&self) -> Vec<(String, &Value)> {
        map_entries(self.value.get("metadata").and_then(|m| m.get("annotations")))
    }
}

/// A mapping's entries with their keys as text (a YAML key may be a number: `7306: …`).
fn map_entries(v: Option<&Value>) -> Vec<(String, &Value)> {
    let Some(Value::Mapping(m)) = v else {
        return Vec::new();
    };
    m.iter().filter_map(|(k, v)| Some((scalar(k)?, v))).collect()
}

/// A scalar as text; `None` for sequences, mappings and null.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => scalar(&t.value),
        Value::Null | Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

fn text_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, p| v.get(*p))?.as_str()
}

/// A value on one line, at most 32 characters.
fn preview(v: &str) -> String {
    const MAX: usize = 32;
    let first = v.lines().next().unwrap_or_default();
    let cut: String = first.chars().take(MAX).collect();
    if cut.len() < v.trim_end().len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Whether `line` is `key:` (the key bare or quoted), at any indent.
fn is_key_line(line: &str, key: &str) -> bool {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").map_or(t, str::trim_start);
    ["", "\"", "'"].iter().any(|q| {
        t.strip_prefix(q)
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix(q))
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })
}

/// The line of `key` in `lines[from..to]`: a `key:` line, else any line naming it, else `from`.
fn locate(lines: &[&str], from: usize, to: usize, key: &str) -> usize {
    let range = from..to.min(lines.len());
    range
        .clone()
        .find(|&i| is_key_line(lines[i], key))
        .or_else(|| range.clone().find(|&i| lines[i].contains(key)))
        .unwrap_or(from)
}

/// The first line of each item of a `List` document, if they can be told apart.
fn item_starts(lines: &[&str], from: usize, to: usize) -> Vec<usize> {
    let Some(items) = (from..to).find(|&i| is_key_line(lines[i], "items")) else {
        return Vec::new();
    };
    let mut indent = None;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate().take(to).skip(items + 1) {
        let t = l.trim_start();
        if !(t.starts_with("- ") || t == "-") {
            continue;
        }
        let n = l.len() - t.len();
        match indent {
            None => {
                indent = Some(n);
                out.push(i);
            }
            Some(m) if m == n => out.push(i),
            Some(_) => {}
        }
    }
    out
}

/// Splits a file into documents on `---` lines: (first line, end), 0-based, end exclusive.
fn documents(lines: &[&str]) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    for (i, l) in lines.iter().enumerate().skip(1) {
        if l.strip_prefix("---")
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
        {
            starts.push(i);
        }
    }
    let mut ends: Vec<usize> = starts.iter().skip(1).copied().collect();
    ends.push(lines.len());
    starts.into_iter().zip(ends).collect()
}

/// Checks manifests: `(path, text)` pairs, as read. Never fails: what cannot be parsed is a finding.
pub fn check(inputs: &[(String, String)]) -> Report {
    let mut report = Report::default();
    let files: Vec<Vec<&str>> = inputs
        .iter()
        .map(|(_, text)| text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect())
        .collect();
    let mut objs = Vec::new();
    for (fi, lines) in files.iter().enumerate() {
        for (from, to) in documents(lines) {
            let text = lines[from..to].join("\n");
            let value: Value = match serde_yaml::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    let line = from + e.location().map_or(1, |l| l.line().max(1));
                    report.findings.push(Finding {
                        file: inputs[fi].0.clone(),
                        line,
                        object: "(document)".into(),
                        key: "-".into(),
                        value: String::new(),
                        status: Status::Invalid,
                        note: format!("{}; skipped, the rest is checked", MigrateError::Syntax(e.to_string())),
                    });
                    continue;
                }
            };
            collect(value, fi, lines, from, to, &mut objs);
        }
    }
    let files = Files { inputs, lines: &files };
    let refs = Refs::find(&objs);
    for o in &objs {
        annotations(o, &files, &mut report.findings);
        if o.kind == "Ingress" && o.api != "networking.k8s.io/v1" && !o.api.is_empty() {
            report.findings.push(files.finding(
                o,
                locate(&files.lines[o.file], o.from, o.to, "apiVersion"),
                "apiVersion",
                &o.api,
                Status::Unsupported,
                "not served: only networking.k8s.io/v1 Ingresses are read".into(),
            ));
        }
        if o.kind == "ConfigMap" {
            configmap(o, &refs, &files, &mut report);
        }
    }
    report.notes.insert(0, class_line(&objs, &refs));
    // Input order: by file as given, then by line.
    let order: BTreeMap<&str, usize> = inputs.iter().enumerate().map(|(i, (p, _))| (p.as_str(), i)).collect();
    report
        .findings
        .sort_by_key(|f| (order.get(f.file.as_str()).copied().unwrap_or(usize::MAX), f.line));
    report
}

fn collect(value: Value, file: usize, lines: &[&str], from: usize, to: usize, out: &mut Vec<Obj>) {
    if value.is_null() {
        return;
    }
    let kind = text_at(&value, &["kind"]).unwrap_or_default().to_string();
    if kind.ends_with("List")
        && let Some(Value::Sequence(items)) = value.get("items")
    {
        let starts = item_starts(lines, from, to);
        let aligned = starts.len() == items.len();
        for (i, item) in items.iter().enumerate() {
            let (f, t) = if aligned {
                (starts[i], starts.get(i + 1).copied().unwrap_or(to))
            } else {
                (from, to)
            };
            collect(item.clone(), file, lines, f, t, out);
        }
        return;
    }
    let meta = |f: &str| text_at(&value, &["metadata", f]).map(str::to_string);
    out.push(Obj {
        file,
        from,
        to,
        api: text_at(&value, &["apiVersion"]).unwrap_or_default().to_string(),
        namespace: meta("namespace"),
        name: meta("name").unwrap_or_else(|| "<unnamed>".into()),
        kind: if kind.is_empty() { "<no kind>".into() } else { kind },
        value,
    });
}

struct Files<'a> {
    inputs: &'a [(String, String)],
    lines: &'a [Vec<&'a str>],
}

impl Files<'_> {
    fn finding(&self, o: &Obj, line: usize, key: &str, value: &str, status: Status, note: String) -> Finding {
        Finding {
            file: self.inputs[o.file].0.clone(),
            line: line + 1,
            object: o.label(),
            key: key.to_string(),
            value: preview(value),
            status,
            note,
        }
    }
}

const NOT_A_STRING: &str = "not a string: quote it (the API server refuses numbers and booleans here)";

fn annotations(o: &Obj, files: &Files<'_>, out: &mut Vec<Finding>) {
    let entries = o.annotations();
    let ours: Vec<&(String, &Value)> = entries.iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    if ours.is_empty() {
        return;
    }
    let lines = &files.lines[o.file];
    let anchor = locate(lines, o.from, o.to, "annotations");
    // Values the parser refuses, each with its reason: the parser stops at the first, so
    // the refused key is taken out and the rest parsed again.
    let mut refused = BTreeMap::new();
    if o.kind == "Ingress" {
        let mut all: BTreeMap<String, String> = entries
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        while let Err(e) = Annotations::parse(Some(&all)) {
            if all.remove(&format!("{PREFIX}{}", e.key)).is_none() {
                break;
            }
            refused.insert(e.key, e.reason);
        }
    }
    for (key, value) in ours {
        let short = &key[PREFIX.len()..];
        let line = locate(lines, anchor, o.to, key);
        let shown = scalar(value).unwrap_or_default();
        let (status, note) = if value.as_str().is_none() {
            (Status::Invalid, NOT_A_STRING.to_string())
        } else if o.kind != "Ingress" {
            (
                Status::Unsupported,
                format!("on a {}: annotations are read on Ingresses only; ignored", o.kind),
            )
        } else if let Some(reason) = refused.get(short) {
            (Status::Invalid, format!("rejects the Ingress: {reason}"))
        } else {
            let (s, n) = annotation_support(short);
            (s, n.to_string())
        };
        out.push(files.finding(o, line, key, &shown, status, note));
    }
}

/// A ConfigMap named by a controller flag: `namespace/name`, the namespace unknown when the
/// flag says `$(POD_NAMESPACE)` and the workload names none.
#[derive(Clone, Debug)]
struct Ref {
    namespace: Option<String>,
    name: String,
    /// The workload and flag that named it, for the notes.
    by: String,
}

impl Ref {
    fn matches(&self, o: &Obj) -> bool {
        o.name == self.name
            && match (&self.namespace, &o.namespace) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// What the controller's command line in the input says.
#[derive(Default)]
struct Refs {
    configmap: Vec<Ref>,
    tcp: Vec<Ref>,
    udp: Vec<Ref>,
    ingress_class: Vec<String>,
}

impl Refs {
    fn find(objs: &[Obj]) -> Refs {
        let mut refs = Refs::default();
        for o in objs {
            let spec = match o.kind.as_str() {
                "Deployment" | "DaemonSet" | "StatefulSet" => o.value.get("spec").and_then(|s| s.get("template")),
                "Pod" => Some(&o.value),
                _ => None,
            };
            let Some(Value::Sequence(containers)) = spec.and_then(|s| s.get("spec")).and_then(|s| s.get("containers"))
            else {
                continue;
            };
            for c in containers {
                let words: Vec<&str> = ["command", "args"]
                    .iter()
                    .filter_map(|f| c.get(*f).and_then(Value::as_sequence))
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for (i, w) in words.iter().enumerate() {
                    let Some(flag) = w.strip_prefix('-').map(|f| f.trim_start_matches('-')) else {
                        continue;
                    };
                    let (flag, value) = match flag.split_once('=') {
                        Some((f, v)) => (f, v),
                        None => (flag, words.get(i + 1).copied().unwrap_or_default()),
                    };
                    let list = match flag {
                        "configmap" => &mut refs.configmap,
                        "tcp-services-configmap" => &mut refs.tcp,
                        "udp-services-configmap" => &mut refs.udp,
                        "ingress-class" => {
                            refs.ingress_class.push(value.to_string());
                            continue;
                        }
                        _ => continue,
                    };
                    let (ns, name) = match value.split_once('/') {
                        Some((ns, name)) if ns.contains("$(") => (o.namespace.clone(), name),
                        Some((ns, name)) => (Some(ns.to_string()), name),
                        None => (None, value),
                    };
                    list.push(Ref {
                        namespace: ns,
                        name: name.to_string(),
                        by: format!("--{flag} of {}", o.label()),
                    });
                }
            }
        }
        refs
    }
}

/// What a ConfigMap is to ingress-nginx, and why we think so.
enum Role {
    Controller,
    Tcp,
    Udp,
}

fn role(o: &Obj, refs: &Refs) -> Option<(Role, String)> {
    let by = |list: &[Ref], well_known: &[&str], role: Role| {
        if list.is_empty() {
            well_known
                .contains(&o.name.as_str())
                .then(|| (role, "its well-known name".to_string()))
        } else {
            list.iter().find(|r| r.matches(o)).map(|r| (role, r.by.clone()))
        }
    };
    by(&refs.tcp, &["tcp-services"], Role::Tcp)
        .or_else(|| by(&refs.udp, &["udp-services"], Role::Udp))
        .or_else(|| by(&refs.configmap, CONTROLLER_CONFIGMAPS, Role::Controller))
}

fn configmap(o: &Obj, refs: &Refs, files: &Files<'_>, report: &mut Report) {
    let Some((role, by)) = role(o, refs) else {
        return;
    };
    let ns_name = format!("{}/{}", o.namespace.as_deref().unwrap_or("default"), o.name);
    let lines = &files.lines[o.file];
    let anchor = locate(lines, o.from, o.to, "data");
    let entries = map_entries(o.value.get("data"));
    let strings: BTreeMap<String, String> = entries
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let (setting, l4_problems) = match role {
        Role::Controller => ("controller_configmap", BTreeMap::new()),
        Role::Tcp => ("l4.tcp_services_configmap", l4_problems(false, &strings)),
        Role::Udp => ("l4.udp_services_configmap", l4_problems(true, &strings)),
    };
    let what = match role {
        Role::Controller => "controller ConfigMap",
        Role::Tcp => "tcp-services ConfigMap",
        Role::Udp => "udp-services ConfigMap",
    };
    report.notes.push(format!(
        "{what} {ns_name} (found by {by}): raftgate reads it with `{setting}: {ns_name}` in its config"
    ));
    for (key, value) in &entries {
        let line = locate(lines, anchor, o.to, key);
        let shown = scalar(value).unwrap_or_default();
        let (status, note) = match (value.as_str(), &role) {
            (None, _) => (Status::Invalid, NOT_A_STRING.to_string()),
            (Some(v), Role::Controller) => {
                let (s, n) = configmap_support(key);
                match s {
                    Status::Supported | Status::Differs => match configmap_problem(key, v) {
                        Some(reason) => (Status::Invalid, reason),
                        None => (s, n.to_string()),
                    },
                    _ => (s, n.to_string()),
                }
            }
            (Some(v), Role::Tcp | Role::Udp) => match l4_problems.get(key.as_str()) {
                Some(reason) => (Status::Invalid, format!("{reason}; the entry is not served")),
                None => l4_note(matches!(role, Role::Udp), key, v),
            },
        };
        report.findings.push(files.finding(o, line, key, &shown, status, note));
    }
}

/// What a valid tcp/udp-services entry does.
fn l4_note(udp: bool, port: &str, v: &str) -> (Status, String) {
    let mut parts = v.trim().split(':');
    let target = format!(
        "{}:{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let proxy_in = parts.next() == Some("PROXY");
    let proxy_out = parts.next() == Some("PROXY");
    let protocol = if udp { "UDP" } else { "TCP" };
    let mut note = format!("{protocol} port {} -> {target}", port.trim());
    if udp && (proxy_in || proxy_out) {
        note.push_str("; PROXY flags are ignored on UDP");
        return (Status::Differs, note);
    }
    if proxy_in {
        note.push_str(", PROXY header decoded from clients");
    }
    if proxy_out {
        note.push_str(", PROXY v1 header sent upstream");
    }
    (Status::Supported, note)
}

/// The compiler's reason for each tcp/udp-services entry it refuses, by port: the entries are
/// checked by the same code that serves them.
fn l4_problems(udp: bool, data: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    const NAME: &str = "migrate-check/l4";
    let mut opts = Options::default();
    if udp {
        opts.udp_services = Some(NAME.into());
    } else {
        opts.tcp_services = Some(NAME.into());
    }
    let problems = compile_with(opts, NAME, data);
    data.keys()
        .filter_map(|port| {
            let prefix = format!("entry {port:?}: ");
            let reason = problems.iter().find_map(|p| p.strip_prefix(&prefix))?;
            Some((port.clone(), reason.to_string()))
        })
        .collect()
}

/// The compiler's complaint about one controller ConfigMap key, if it refuses the value.
fn configmap_problem(key: &str, value: &str) -> Option<String> {
    const NAME: &str = "migrate-check/controller";
    let opts = Options {
        controller_configmap: Some(NAME.into()),
        ..Options::default()
    };
    let data = BTreeMap::from([(key.to_string(), value.to_string())]);
    compile_with(opts, NAME, &data).into_iter().next()
}

/// Compiles nothing but one ConfigMap; returns the reasons of the problems with it.
fn compile_with(opts: Options, name: &str, data: &BTreeMap<String, String>) -> Vec<String> {
    let (ns, n) = name.split_once('/').unwrap_or(("default", name));
    let mut objs = Objects::default();
    objs.config_maps.insert(
        Key::new(ns, n),
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(n.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            data: Some(data.clone()),
            ..ConfigMap::default()
        },
    );
    Compiler::new(opts)
        .compile(&objs)
        .problems
        .into_iter()
        .filter(|p| p.kind == "ConfigMap")
        .map(|p| p.reason)
        .collect()
}

/// The ingress class situation in one line.
fn class_line(objs: &[Obj], refs: &Refs) -> String {
    const LEGACY: &str = "kubernetes.io/ingress.class";
    let mut by_spec: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_annotation: BTreeMap<String, usize> = BTreeMap::new();
    let mut none = 0;
    for o in objs.iter().filter(|o| o.kind == "Ingress") {
        if let Some(c) = text_at(&o.value, &["spec", "ingressClassName"]) {
            *by_spec.entry(c.to_string()).or_default() += 1;
        } else if let Some(c) = text_at(&o.value, &["metadata", "annotations", LEGACY]) {
            *by_annotation.entry(c.to_string()).or_default() += 1;
        } else {
            none += 1;
        }
    }
    let classes: Vec<(&str, Option<&str>, bool)> = objs
        .iter()
        .filter(|o| o.kind == "IngressClass")
        .map(|o| {
            let default = text_at(
                &o.value,
                &["metadata", "annotations", "ingressclass.kubernetes.io/is-default-class"],
            ) == Some("true");
            (o.name.as_str(), text_at(&o.value, &["spec", "controller"]), default)
        })
        .collect();
    let mut names: Vec<&String> = by_spec.keys().chain(by_annotation.keys()).collect();
    names.sort();
    names.dedup();
    let mut parts = Vec::new();
    for c in &names {
        let (s, a) = (
            by_spec.get(*c).copied().unwrap_or(0),
            by_annotation.get(*c).copied().unwrap_or(0),
        );
        let mut how = Vec::new();
        if s > 0 {
            how.push(format!("{s} by spec.ingressClassName"));
        }
        if a > 0 {
            how.push(format!("{a} by the {LEGACY} annotation"));
        }
        parts.push(format!("{} Ingress(es) of class {c} ({})", s + a, how.join(", ")));
    }
    if none > 0 {
        parts.push(format!("{none} Ingress(es) without a class"));
    }
    for (name, controller, default) in &classes {
        let default = if *default { ", the default class" } else { "" };
        parts.push(format!(
            "IngressClass {name} (controller {}{default})",
            controller.unwrap_or("unset")
        ));
    }
    if !refs.ingress_class.is_empty() {
        parts.push(format!(
            "controller flag --ingress-class={}",
            refs.ingress_class.join(",")
        ));
    }
    if parts.is_empty() {
        return "ingress class: no Ingress or IngressClass in the input".into();
    }
    let advice = match names.as_slice() {
        [] if none > 0 => {
            "raftgate serves Ingresses without a class only with `ingress_class.watch_without_class: true` or a default IngressClass of its own".to_string()
        }
        [] => String::new(),
        [c] if c.as_str() == "raftgate" => "raftgate serves class raftgate by default".to_string(),
        [c] => {
            let controller = classes
                .iter()
                .find(|(n, _, _)| n == c)
                .and_then(|(_, ctl, _)| *ctl)
                .filter(|ctl| *ctl != crate::compiler::CONTROLLER)
                .map(|ctl| format!(", controller: {ctl}"))
                .unwrap_or_default();
            format!("raftgate serves class raftgate by default: set `ingress_class: {{name: {c}{controller}}}` to take these over")
        }
        _ => "raftgate serves one class (`ingress_class.name`, default raftgate): run one raftgate group per class".to_string(),
    };
    let mut line = format!("ingress class: {}", parts.join("; "));
    if !advice.is_empty() {
        let _ = write!(line, ". {advice}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(path: &str, text: &str) -> Report {
        check(&[(path.to_string(), text.to_string())])
    }

    fn find<'a>(r: &'a Report, key: &str) -> &'a Finding {
        r.findings
            .iter()
            .find(|f| f.key == key || f.key == format!("{PREFIX}{key}"))
            .unwrap_or_else(|| panic!("no finding for {key}: {r:#?}"))
    }

    fn parse(pairs: &[(&str, &str)]) -> Annotations {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        Annotations::parse(Some(&m)).unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
    }

    #[test]
    fn every_supported_annotation_is_used_by_the_parser_and_every_unsupported_one_ignored() {
        let mut seen = std::collections::BTreeSet::new();
        for k in ANNOTATIONS {
            assert!(seen.insert(k.key), "{} listed twice", k.key);
            assert_ne!(k.status, Status::Invalid, "{}", k.key);
            match k.status {
                Status::Supported | Status::Differs => {
                    let base = parse(k.with);
                    let mut with = k.with.to_vec();
                    with.push((k.key, k.sample));
                    assert_ne!(parse(&with), base, "{}: {:?} changes nothing", k.key, k.sample);
                    assert_eq!(k.status == Status::Differs, !k.note.is_empty(), "{}", k.key);
                }
                _ => {
                    assert!(!k.note.is_empty(), "{}: an unsupported key says what happens", k.key);
                    for value in ["true", "x", "10", "https://example.com/"] {
                        let a = parse(&[(k.key, value)]);
                        let snippets = if k.key.ends_with("-snippet") {
                            vec![k.key.to_string()]
                        } else {
                            Vec::new()
                        };
                        assert_eq!(a.ignored_snippets, snippets, "{}", k.key);
                        let rest = Annotations {
                            ignored_snippets: Vec::new(),
                            ..a
                        };
                        assert_eq!(rest, Annotations::default(), "{}={value} is not ignored", k.key);
                    }
                }
            }
        }
    }

    #[test]
    fn every_supported_configmap_key_is_read_by_the_overlay_and_others_are_not() {
        for k in CONFIGMAP_KEYS {
            match k.status {
                Status::Supported | Status::Differs => {
                    assert_eq!(configmap_problem(k.key, k.sample), None, "{}", k.key);
                    let p = configmap_problem(k.key, "not valid!").unwrap_or_else(|| panic!("{} not read", k.key));
                    assert!(p.contains(k.key), "{p}");
                }
                _ => assert_eq!(configmap_problem(k.key, "not valid!"), None, "{} is read", k.key),
            }
        }
    }

    const MULTI: &str = "\
# the app
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 8m
spec:
  ports:
  - port: 80
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  annotations:
    \"nginx.ingress.kubernetes.io/use-regex\": \"true\"
    nginx.ingress.kubernetes.io/proxy-read-timeout: \"3600\"
    nginx.ingress.kubernetes.io/configuration-snippet: |
      more_set_headers \"X-Shop: 1\";
    nginx.ingress.kubernetes.io/limit-rps: 5
spec:
  ingressClassName: nginx
  rules:
  - host: shop.example.com
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken-value
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/auth-type: digest
    nginx.ingress.kubernetes.io/auth-secret: basic
    nginx.ingress.kubernetes.io/proxy-read-timeout: \"60\"
    nginx.ingress.kubernetes.io/auth-url: \"http://auth.example.com/verify\"
    nginx.ingress.kubernetes.io/made-up: \"1\"
";

    #[test]
    fn line_numbers_are_right_across_documents() {
        let r = one("app.yaml", MULTI);
        let at = |object: &str, key: &str| {
            r.findings
                .iter()
                .find(|f| f.object == object && f.key == format!("{PREFIX}{key}"))
                .map(|f| (f.file.as_str(), f.line))
                .unwrap_or_else(|| panic!("{object} {key}: {r:#?}"))
        };
        assert_eq!(at("Service shop/web", "proxy-body-size"), ("app.yaml", 8));
        assert_eq!(at("Ingress shop/web", "use-regex"), ("app.yaml", 19));
        assert_eq!(at("Ingress shop/web", "proxy-read-timeout"), ("app.yaml", 20));
        assert_eq!(at("Ingress shop/web", "configuration-snippet"), ("app.yaml", 21));
        assert_eq!(at("Ingress shop/web", "limit-rps"), ("app.yaml", 23));
        assert_eq!(at("Ingress shop/broken-value", "proxy-read-timeout"), ("app.yaml", 37));
        assert_eq!(at("Ingress shop/broken-value", "made-up"), ("app.yaml", 39));
        let lines: Vec<usize> = r.findings.iter().map(|f| f.line).collect();
        assert!(lines.is_sorted(), "{lines:?}");
    }

    #[test]
    fn each_annotation_is_classified_with_what_happens() {
        let r = one("app.yaml", MULTI);
        let service = find(&r, "proxy-body-size");
        assert_eq!(service.status, Status::Unsupported);
        assert!(service.note.contains("on a Service"), "{}", service.note);
        let snippet = find(&r, "configuration-snippet");
        assert_eq!(snippet.status, Status::Unsupported);
        assert!(snippet.note.contains("never executed"), "{}", snippet.note);
        assert_eq!(snippet.value, "more_set_headers \"X-Shop: 1\";", "one line, no newline");
        let timeout = find(&r, "proxy-read-timeout");
        assert_eq!((timeout.status, timeout.value.as_str()), (Status::Differs, "3600"));
        assert!(timeout.note.contains("WebSocket"), "{}", timeout.note);
        assert_eq!(find(&r, "use-regex").status, Status::Differs);
        let rps = find(&r, "limit-rps");
        assert_eq!(
            rps.status,
            Status::Invalid,
            "an unquoted number is refused by the API server"
        );
        let digest = find(&r, "auth-type");
        assert_eq!(digest.status, Status::Invalid);
        assert!(
            digest.note.contains("digest authentication is not supported"),
            "{}",
            digest.note
        );
        assert_eq!(find(&r, "auth-secret").status, Status::Supported);
        assert_eq!(find(&r, "auth-url").status, Status::Unsupported);
        let unknown = find(&r, "made-up");
        assert_eq!(unknown.status, Status::Unsupported);
        assert!(unknown.note.contains("not an ingress-nginx annotation raftgate knows"));
        assert_eq!(r.exit_code(), 1);
        assert!(r.notes[0].contains("1 Ingress(es) of class nginx"), "{:?}", r.notes);
        assert!(r.notes[0].contains("`ingress_class: {name: nginx}`"), "{:?}", r.notes);
    }

    #[test]
    fn the_controller_configmap_is_found_by_the_flag_then_by_name() {
        let deploy = "\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
spec:
  template:
    spec:
      containers:
      - name: controller
        args:
        - /nginx-ingress-controller
        - --configmap=$(POD_NAMESPACE)/my-nginx-settings
        - --ingress-class=nginx
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: my-nginx-settings
  namespace: ingress-nginx
data:
  proxy-body-size: \"50m\"
  allow-snippet-annotations: \"true\"
  ssl-protocols: \"TLSv1\"
  worker-processes: \"4\"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
data:
  use-gzip: \"true\"
";
        let r = one("controller.yaml", deploy);
        assert!(
            r.findings.iter().all(|f| f.key != "use-gzip"),
            "the flag names another one"
        );
        let size = find(&r, "proxy-body-size");
        assert_eq!(
            (size.status, size.line, size.object.as_str()),
            (Status::Supported, 22, "ConfigMap ingress-nginx/my-nginx-settings")
        );
        let snippets = find(&r, "allow-snippet-annotations");
        assert_eq!(snippets.status, Status::Unsupported);
        assert!(snippets.note.contains("never executed"));
        let tls = find(&r, "ssl-protocols");
        assert_eq!(tls.status, Status::Invalid, "{tls:?}");
        assert_eq!(find(&r, "worker-processes").status, Status::Unsupported);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("controller_configmap: ingress-nginx/my-nginx-settings")
                    && n.contains("--configmap of DaemonSet ingress-nginx/ingress-nginx-controller")),
            "{:?}",
            r.notes
        );
        assert!(r.notes[0].contains("--ingress-class=nginx"), "{:?}", r.notes);

        // Without the flag, the well-known name.
        let r = one("cm.yaml", deploy.split("---\n").nth(2).unwrap_or_default());
        let gzip = find(&r, "use-gzip");
        assert_eq!((gzip.status, gzip.line), (Status::Unsupported, 7));
        assert!(
            r.notes.iter().any(|n| n.contains("its well-known name")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn tcp_and_udp_services_entries_are_checked_by_the_compiler() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: tcp-services
    namespace: ingress-nginx
  data:
    \"7306\": \"example-corp/external-mysql:7306\"
    1883: example-corp/mqtt:mqtt:PROXY:PROXY
    \"9000\": \"no-namespace:9000\"
    \"70000\": \"ns/svc:80\"
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: udp-services
    namespace: ingress-nginx
  data:
    \"53\": \"kube-system/kube-dns:53:PROXY\"
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: unrelated
  data:
    \"80\": \"x\"
";
        let r = one("l4.yaml", text);
        let mysql = find(&r, "7306");
        assert_eq!((mysql.status, mysql.line), (Status::Supported, 10));
        assert_eq!(mysql.note, "TCP port 7306 -> example-corp/external-mysql:7306");
        let mqtt = find(&r, "1883");
        assert_eq!((mqtt.status, mqtt.line), (Status::Supported, 11));
        assert!(mqtt.note.contains("PROXY header decoded") && mqtt.note.contains("PROXY v1 header sent"));
        let bad = find(&r, "9000");
        assert_eq!((bad.status, bad.line), (Status::Invalid, 12));
        assert!(
            bad.note.contains("expected <namespace>/<service>:<port>"),
            "{}",
            bad.note
        );
        assert_eq!(find(&r, "70000").status, Status::Invalid);
        let dns = find(&r, "53");
        assert_eq!(
            (dns.status, dns.line, dns.object.as_str()),
            (Status::Differs, 20, "ConfigMap ingress-nginx/udp-services")
        );
        assert!(
            r.findings.iter().all(|f| f.key != "80"),
            "not an ingress-nginx ConfigMap"
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("l4.tcp_services_configmap: ingress-nginx/tcp-services"))
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn a_broken_document_is_one_finding_and_the_rest_is_checked() {
        let text = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: a
  annotations: {nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}
---
apiVersion: v1
kind: Service
metadata: [unclosed
  name: b
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: c
  annotations:
    nginx.ingress.kubernetes.io/app-root: /corp
";
        let r = check(&[
            ("a.yaml".to_string(), text.to_string()),
            ("b.json".to_string(), "{\"kind\": \"Ingress\", \"apiVersion\": \"networking.k8s.io/v1\", \"metadata\": {\"name\": \"j\", \"annotations\": {\"nginx.ingress.kubernetes.io/ssl-redirect\": \"true\"}}}".to_string()),
        ]);
        let broken: Vec<&Finding> = r.findings.iter().filter(|f| f.object == "(document)").collect();
        assert_eq!(broken.len(), 1, "{r:#?}");
        assert_eq!(broken[0].status, Status::Invalid);
        assert!((9..=11).contains(&broken[0].line), "{:?}", broken[0]);
        assert_eq!(
            find(&r, "ssl-redirect").line,
            5,
            "a flow mapping: the line naming the key"
        );
        assert_eq!(find(&r, "app-root").line, 17);
        let json = r.findings.iter().find(|f| f.file == "b.json").unwrap();
        assert_eq!((json.status, json.line), (Status::Supported, 1));
        assert!(r.notes[0].contains("3 Ingress(es) without a class"), "{:?}", r.notes);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.summary(), "3 supported, 0 with differences, 0 unsupported, 1 invalid");
    }

    #[test]
    fn everything_supported_exits_zero_and_renders_a_table() {
        let r = one(
            "ok.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: ok\n  annotations:\n    kubernetes.io/ingress.class: nginx\n    nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/canary-weight: \"20\"\n",
        );
        assert_eq!(r.exit_code(), 0, "{r:#?}");
        assert_eq!(find(&r, "canary-weight").status, Status::Differs);
        let text = r.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("  STATUS") && lines[0].contains("NOTE"), "{text}");
        assert_eq!(lines[1], "Ingress ok:");
        assert!(lines[2].trim_start().starts_with("supported  canary "), "{text}");
        assert!(lines[3].contains("differs") && lines[3].contains("ok.yaml:8"), "{text}");
        assert!(
            text.contains("1 Ingress(es) of class nginx (1 by the kubernetes.io/ingress.class annotation)"),
            "{text}"
        );
        assert_eq!(
            lines.last().copied(),
            Some("1 supported, 1 with differences, 0 unsupported")
        );
    }
}
