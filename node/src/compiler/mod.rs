//! The compiler: Kubernetes objects in, a [`RoutingTable`] and a list of problems out. No I/O.
//!
//! ```text
//! Objects ─► our class? ─► oldest first ─► plan each Ingress ─► merge into vhosts ─► resolve
//!                                           │ invalid?             (older wins a   upstreams and
//!                                           ▼                       duplicate path)  certificates
//!                              last valid version, or rejected
//! ```
//!
//! Precedence is ingress-nginx's: Ingresses are ordered by `creationTimestamp`, then
//! namespace and name, and the first to claim a host/path (or a TLS host, or a host's
//! default backend) keeps it. A broken Ingress never takes the others down: it is rejected
//! alone, and if an earlier version of it was valid, that version keeps serving.

pub mod annotations;
mod defaults;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::net::SocketAddr;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::IngressBackend;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use raftgate_proxy::model::ANY_HOST;
use raftgate_proxy::model::Backend;
use raftgate_proxy::model::Balance;
use raftgate_proxy::model::BasicAuth;
use raftgate_proxy::model::Canary;
use raftgate_proxy::model::Certificate;
use raftgate_proxy::model::Endpoint;
use raftgate_proxy::model::L4Protocol;
use raftgate_proxy::model::L4Service;
use raftgate_proxy::model::PathMatch;
use raftgate_proxy::model::Protocol;
use raftgate_proxy::model::RateLimit;
use raftgate_proxy::model::Redirect;
use raftgate_proxy::model::Route;
use raftgate_proxy::model::RoutePolicy;
use raftgate_proxy::model::RoutingTable;
use raftgate_proxy::model::Upstream;
use raftgate_proxy::model::UpstreamId;
use raftgate_proxy::router::prefix_key;

use self::annotations::AnnotationError;
use self::annotations::Annotations;
use self::annotations::AuthSecretType;
use self::annotations::CanaryAnnotations;
use crate::config::RouteDefaults;
use crate::objects::Key;
use crate::objects::Objects;

/// The controller value of IngressClass objects that name raftgate.
pub const CONTROLLER: &str = "raftgate.io/ingress-controller";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Why an Ingress was rejected as a whole.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("rule host {host:?}: {reason}")]
    Host { host: String, reason: &'static str },
    #[error("path {path:?}: {reason}")]
    Path { path: String, reason: String },
    #[error("path {path:?}: only Service backends are supported")]
    ResourceBackend { path: String },
    #[error("backend service {service:?}: port needs a number or a name")]
    NoPort { service: String },
    #[error("spec has neither rules nor a defaultBackend")]
    Empty,
    #[error("auth-secret {secret}: {reason}")]
    Auth { secret: String, reason: String },
}

impl CompileError {
    /// What to change so the Ingress is accepted.
    pub fn fix(&self) -> String {
        match self {
            CompileError::Annotation(e) if e.key == "auth-type" || e.key == "auth-secret" => format!(
                "set {p}auth-secret to a Secret in the Ingress's namespace holding an htpasswd file under `auth`, \
                 with {p}auth-type: basic",
                p = annotations::PREFIX
            ),
            CompileError::Annotation(e) => format!(
                "set {}{} to a valid value ({}), or remove it (see docs/annotations.md)",
                annotations::PREFIX,
                e.key,
                e.reason
            ),
            CompileError::Host { .. } => "change the rule host to a lower-case DNS name such as shop.example.com \
                (`*.` only as a leading label), or leave host out to match any host"
                .into(),
            CompileError::Path { reason, .. } if reason.starts_with("must start with") => {
                "change the path to start with /".into()
            }
            CompileError::Path { reason, .. } if reason.starts_with("pathType") => {
                "set pathType to Exact, Prefix or ImplementationSpecific".into()
            }
            CompileError::Path { reason, .. } if reason.starts_with("invalid regex") => format!(
                "fix the regular expression, or remove {p}use-regex and {p}rewrite-target so the path is a plain prefix",
                p = annotations::PREFIX
            ),
            CompileError::Path { .. } => {
                "write the path as a clean absolute path: no //, /./, /../, %2F or #; use pathType \
                 ImplementationSpecific with use-regex for patterns"
                    .into()
            }
            CompileError::ResourceBackend { .. } => {
                "use a Service backend (backend.service.name and port); resource backends are not supported".into()
            }
            CompileError::NoPort { service } => {
                format!("set backend.service.port.number (or .name) for Service {service}")
            }
            CompileError::Empty => "add spec.rules with at least one host or path, or a spec.defaultBackend".into(),
            CompileError::Auth { secret, .. } => format!(
                "create Secret {secret} with an htpasswd file under the key `auth` \
                 (htpasswd -c auth USER && kubectl create secret generic NAME --from-file=auth)"
            ),
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The object is not served (or an older valid version of it is).
    Rejected,
    /// The object is served, but part of it does not work as written.
    Warning,
}

/// A problem with one object, for logs, events and the status API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub object: String,
    pub severity: Severity,
    pub reason: String,
    /// What to change to make the problem go away.
    pub fix: String,
    /// The Ingresses (`namespace/name`) a problem with a Service or Secret affects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.object, self.reason)
    }
}

/// What the compiler needs from the config.
#[derive(Clone, Debug)]
pub struct Options {
    pub class: String,
    /// The `spec.controller` an IngressClass must name for its Ingresses to be ours.
    pub controller: String,
    pub watch_without_class: bool,
    pub defaults: RouteDefaults,
    /// The tcp-services ConfigMap (`namespace/name`), if any.
    pub tcp_services: Option<String>,
    /// The udp-services ConfigMap (`namespace/name`), if any.
    pub udp_services: Option<String>,
    /// Ports the node's own listeners use; L4 entries on them are refused.
    pub reserved_ports: Vec<u16>,
    /// The ingress-nginx-style ConfigMap (`namespace/name`) laid over `defaults`, if any.
    pub controller_configmap: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            class: "raftgate".into(),
            controller: CONTROLLER.into(),
            watch_without_class: false,
            defaults: RouteDefaults::default(),
            tcp_services: None,
            udp_services: None,
            reserved_ports: Vec::new(),
            controller_configmap: None,
        }
    }
}

impl Options {
    /// Options from a node config.
    pub fn from_config(cfg: &crate::config::Config) -> Options {
        let mut reserved: Vec<u16> = [cfg.listen.http, cfg.listen.https, Some(cfg.admin.listen)]
            .into_iter()
            .flatten()
            .map(|a| a.port())
            .filter(|p| *p != 0)
            .collect();
        reserved.sort_unstable();
        Options {
            class: cfg.ingress_class.name.clone(),
            controller: cfg.ingress_class.controller.clone(),
            watch_without_class: cfg.ingress_class.watch_without_class,
            defaults: cfg.defaults.clone(),
            tcp_services: cfg.l4.tcp_services_configmap.clone(),
            udp_services: cfg.l4.udp_services_configmap.clone(),
            reserved_ports: reserved,
            controller_configmap: cfg.controller_configmap.clone(),
        }
    }
}

/// A problem's reason and its fix, before it is attached to an object.
type Hint = (String, String);

/// The output of one compilation. `table.version` is left at 0 for the caller to set.
#[derive(Debug, Default)]
pub struct Output {
    pub table: RoutingTable,
    pub problems: Vec<Problem>,
}

/// Compiles objects, remembering the last valid version of each Ingress.
#[derive(Debug)]
pub struct Compiler {
    opts: Options,
    last_good: BTreeMap<Key, Ingress>,
    /// The config's defaults with the controller ConfigMap laid over them, for this compilation.
    effective: RouteDefaults,
}

/// One Ingress, validated and translated, before merging.
struct Plan {
    key: Key,
    rules: Vec<(String, Vec<Route>)>,
    /// `server-alias` hosts and the routes they serve (only where no Ingress defines the host).
    aliases: Vec<(String, Vec<Route>)>,
    tls_hosts: Vec<(String, Option<String>)>,
    default_backend: Option<Backend>,
    upstreams: Vec<(String, UpstreamRef)>,
    /// A canary Ingress: its routes are not served themselves but attached to the main
    /// routes with the same host and path (see [`attach_canary`]).
    canary: Option<CanaryAnnotations>,
}

/// What an upstream id stands for, to resolve it against Services and endpoints.
#[derive(Clone, Debug)]
struct UpstreamRef {
    namespace: String,
    service: String,
    port: PortRef,
    protocol: Protocol,
    balance: Balance,
    /// Use the ClusterIP and Service port instead of the endpoints (`service-upstream`).
    service_upstream: bool,
    /// A udp-services entry: the Service's and endpoints' ports must be UDP (otherwise TCP),
    /// as ingress-nginx matches stream services by protocol too.
    udp: bool,
}

impl UpstreamRef {
    /// The upstream's id (see [`UpstreamId::format`]), with `|cluster-ip` for `service-upstream`.
    fn id(&self) -> String {
        let mut id = UpstreamId::format(
            &self.namespace,
            &self.service,
            &self.port.to_string(),
            self.protocol,
            self.balance,
        );
        if self.service_upstream {
            id.push_str("|cluster-ip");
        }
        if self.udp {
            id.push_str("|udp");
        }
        id
    }
}

#[derive(Clone, Debug)]
enum PortRef {
    Number(i32),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

impl Compiler {
    pub fn new(opts: Options) -> Compiler {
        Compiler {
            effective: opts.defaults.clone(),
            opts,
            last_good: BTreeMap::new(),
        }
    }

    /// Compiles everything. Deterministic: the same objects (and history) give the same table.
    pub fn compile(&mut self, objs: &Objects) -> Output {
        let mut out = Output::default();
        self.effective = self.opts.defaults.clone();
        if let Some(name) = &self.opts.controller_configmap {
            let key = match name.split_once('/') {
                Some((ns, n)) => Key::new(ns, n),
                None => Key::new("default", name),
            };
            if let Some(cm) = objs.config_maps.get(&key) {
                for reason in defaults::overlay(&mut self.effective, cm.data.iter().flatten()) {
                    out.problems.push(Problem {
                        kind: "ConfigMap",
                        object: key.to_string(),
                        severity: Severity::Warning,
                        reason,
                        fix: format!(
                            "correct or remove the key in ConfigMap {key} (see docs/config.md for the keys and values)"
                        ),
                        related: Vec::new(),
                    });
                }
            }
        }
        out.table.settings = defaults::settings(&self.effective, policy(&self.effective, &Annotations::default()));
        let (default_class, foreign) = self.class_view(objs);
        if let Some(controller) = &foreign {
            out.problems.push(Problem {
                kind: "IngressClass",
                object: self.opts.class.clone(),
                severity: Severity::Warning,
                reason: format!(
                    "names controller {controller:?}, not {:?} (ingress_class.controller); its Ingresses are not served",
                    self.opts.controller
                ),
                fix: format!(
                    "set the IngressClass's spec.controller to {:?}, or point ingress_class.name at a class that names it",
                    self.opts.controller
                ),
                related: Vec::new(),
            });
        }
        let mut ours: Vec<&Ingress> = objs
            .ingresses
            .values()
            .filter(|i| self.is_ours(i, default_class, foreign.is_some()))
            .collect();
        ours.sort_by_key(|i| order_key(i));
        let keys: BTreeSet<Key> = ours.iter().map(|i| Key::of(&i.metadata)).collect();
        self.last_good.retain(|k, _| keys.contains(k));

        let mut plans = Vec::new();
        for ing in ours {
            let key = Key::of(&ing.metadata);
            let problem = |severity, (reason, fix): Hint| Problem {
                kind: "Ingress",
                object: key.to_string(),
                severity,
                reason,
                fix,
                related: Vec::new(),
            };
            match self.plan(ing, objs) {
                Ok((plan, warnings)) => {
                    out.problems
                        .extend(warnings.into_iter().map(|w| problem(Severity::Warning, w)));
                    self.last_good.insert(key.clone(), ing.clone());
                    plans.push(plan);
                }
                Err(e) => {
                    let fallback = self
                        .last_good
                        .get(&key)
                        .cloned()
                        .and_then(|old| self.plan(&old, objs).ok());
                    match fallback {
                        Some((plan, _)) => {
                            out.problems.push(problem(
                                Severity::Rejected,
                                (format!("{e}; still serving its last valid version"), e.fix()),
                            ));
                            plans.push(plan);
                        }
                        None => out.problems.push(problem(Severity::Rejected, (e.to_string(), e.fix()))),
                    }
                }
            }
        }
        merge(plans, objs, &mut out);
        self.l4(objs, &mut out);
        out
    }

    /// ingress-nginx's tcp-services and udp-services ConfigMaps: each entry
    /// `"<port>": "<namespace>/<service>:<port or name>[:PROXY][:PROXY]"` becomes an L4 service.
    fn l4(&self, objs: &Objects, out: &mut Output) {
        let maps = [
            (L4Protocol::Tcp, &self.opts.tcp_services),
            (L4Protocol::Udp, &self.opts.udp_services),
        ];
        for (protocol, name) in maps {
            let Some(name) = name else { continue };
            let key = match name.split_once('/') {
                Some((ns, n)) => Key::new(ns, n),
                None => Key::new("default", name),
            };
            let Some(cm) = objs.config_maps.get(&key) else {
                out.problems.push(Problem {
                    kind: "ConfigMap",
                    object: key.to_string(),
                    severity: Severity::Warning,
                    reason: format!("not found (named by l4.{}_services_configmap)", protocol.as_str()),
                    fix: format!(
                        "create ConfigMap {key}, or correct l4.{}_services_configmap in the config",
                        protocol.as_str()
                    ),
                    related: Vec::new(),
                });
                continue;
            };
            for (port, value) in cm.data.iter().flatten() {
                let problem = |reason: String| Problem {
                    kind: "ConfigMap",
                    object: key.to_string(),
                    severity: Severity::Rejected,
                    reason: format!("entry {port:?}: {reason}"),
                    fix: "write the entry as \"<port>\": \"<namespace>/<service>:<port>[:PROXY][:PROXY]\", \
                          on a port from 1 to 65535 that no listener of raftgate uses"
                        .into(),
                    related: Vec::new(),
                };
                match l4_entry(protocol, port, value, &self.opts.reserved_ports) {
                    Ok((svc, r)) => {
                        if !out.table.upstreams.contains_key(&svc.upstream) {
                            add_upstream(
                                objs,
                                svc.upstream.clone(),
                                &r,
                                &mut out.table,
                                &mut out.problems,
                                Vec::new(),
                            );
                        }
                        let source = format!("{key}:{port}");
                        out.table.l4.insert(svc.key(), L4Service { source, ..svc });
                    }
                    Err(reason) => out.problems.push(problem(reason)),
                }
            }
        }
    }

    /// The options this compiler was made with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The Ingresses of our class, as [`Compiler::compile`] selects them.
    pub fn ours(&self, objs: &Objects) -> BTreeSet<Key> {
        let (default_class, foreign) = self.class_view(objs);
        objs.ingresses
            .iter()
            .filter(|(_, i)| self.is_ours(i, default_class, foreign.is_some()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// What the IngressClass named in the config says: whether it is marked default (so
    /// class-less Ingresses are ours), and, if it names another controller, which one (then
    /// none of its Ingresses are ours). No such object: the class is ours, not default.
    fn class_view(&self, objs: &Objects) -> (bool, Option<String>) {
        let Some(c) = objs
            .classes
            .values()
            .find(|c| c.metadata.name.as_deref() == Some(self.opts.class.as_str()))
        else {
            return (false, None);
        };
        let controller = c.spec.as_ref().and_then(|s| s.controller.clone()).unwrap_or_default();
        if controller != self.opts.controller {
            return (false, Some(controller));
        }
        let default = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true");
        (default, None)
    }

    fn is_ours(&self, ing: &Ingress, default_class: bool, foreign: bool) -> bool {
        let class = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .or_else(|| {
                ing.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
                    .map(String::as_str)
            });
        match class {
            Some(c) => !foreign && c == self.opts.class,
            None => default_class || self.opts.watch_without_class,
        }
    }

    /// Validates and translates one Ingress. Errors reject it; warnings are returned beside.
    fn plan(&self, ing: &Ingress, objs: &Objects) -> Result<(Plan, Vec<Hint>), CompileError> {
        let key = Key::of(&ing.metadata);
        let ns = key.namespace.clone();
        let ann = Annotations::parse(ing.metadata.annotations.as_ref())?;
        let mut warnings: Vec<Hint> = ann
            .ignored_snippets
            .iter()
            .map(|s| {
                (
                    format!(
                        "annotation {}{s} ignored: snippets are never executed",
                        annotations::PREFIX
                    ),
                    format!(
                        "remove {}{s}; use the annotations raftgate supports instead (docs/annotations.md)",
                        annotations::PREFIX
                    ),
                )
            })
            .collect();
        let d = &self.effective;
        let mut policy = policy(d, &ann);
        if ann.auth_basic {
            policy.basic_auth = Some(basic_auth(objs, &ns, &ann)?);
        }
        let protocol = ann.backend_protocol.unwrap_or_default();
        let balance = ann.load_balance.unwrap_or(d.load_balance);
        let source = key.to_string();
        let mut plan = Plan {
            key: key.clone(),
            rules: Vec::new(),
            aliases: Vec::new(),
            tls_hosts: Vec::new(),
            default_backend: None,
            upstreams: Vec::new(),
            canary: ann.canary.clone(),
        };
        let service_upstream = ann.service_upstream;
        let upstream = |service: &str, port: PortRef, plan: &mut Plan| -> Backend {
            let r = UpstreamRef {
                namespace: ns.clone(),
                service: service.into(),
                port,
                protocol,
                balance,
                service_upstream,
                udp: false,
            };
            let id = r.id();
            plan.upstreams.push((id.clone(), r));
            Backend { upstream: id }
        };
        let backend = |b: &IngressBackend, path: &str, plan: &mut Plan| -> Result<Backend, CompileError> {
            let Some(svc) = &b.service else {
                return Err(CompileError::ResourceBackend { path: path.into() });
            };
            let number = svc.port.as_ref().and_then(|p| p.number);
            let name = svc.port.as_ref().and_then(|p| p.name.clone());
            let port = match (number, name) {
                (Some(n), _) => PortRef::Number(n),
                (None, Some(name)) if !name.is_empty() => PortRef::Name(name),
                _ => {
                    return Err(CompileError::NoPort {
                        service: svc.name.clone(),
                    });
                }
            };
            Ok(upstream(&svc.name, port, plan))
        };
        if let Some(fallback) = &ann.default_backend {
            // ingress-nginx's `default-backend` names a Service in the Ingress's namespace; the
            // port is its first one.
            let port = objs
                .services
                .get(&Key::new(&ns, fallback))
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.first())
                .map(|p| p.port);
            match port {
                Some(p) => policy.fallback = Some(upstream(fallback, PortRef::Number(p), &mut plan)),
                None => warnings.push((
                    format!("default-backend Service {ns}/{fallback} not found or has no ports; ignored"),
                    format!(
                        "create Service {ns}/{fallback} with a port, or correct {}default-backend",
                        annotations::PREFIX
                    ),
                )),
            }
        }

        let spec = ing.spec.clone().unwrap_or_default();
        if let Some(b) = &spec.default_backend {
            plan.default_backend = Some(backend(b, "defaultBackend", &mut plan)?);
        }
        let rules = spec.rules.unwrap_or_default();
        if rules.is_empty() && plan.default_backend.is_none() {
            return Err(CompileError::Empty);
        }
        // rewrite-target makes ImplementationSpecific paths regexes, as in ingress-nginx.
        let regex_paths = ann.use_regex || ann.rewrite_target.is_some();
        for rule in &rules {
            let host = match rule.host.as_deref() {
                None | Some("") => ANY_HOST.to_string(),
                Some(h) => {
                    validate_host(h)?;
                    h.to_string()
                }
            };
            let mut routes = Vec::new();
            for p in rule.http.as_ref().map(|h| h.paths.as_slice()).unwrap_or_default() {
                let raw = p.path.clone().unwrap_or_default();
                let path = match p.path_type.as_str() {
                    "Exact" => PathMatch::Exact(validate_path(&raw)?.to_string()),
                    "Prefix" => PathMatch::Prefix(validate_path(&raw)?.to_string()),
                    "ImplementationSpecific" if regex_paths => {
                        let raw = if raw.is_empty() { "/".to_string() } else { raw };
                        check_regex(&raw)?;
                        PathMatch::Regex(raw)
                    }
                    "ImplementationSpecific" => {
                        let raw = if raw.is_empty() { "/".to_string() } else { raw };
                        if !raw.starts_with('/') {
                            return Err(CompileError::Path {
                                path: raw,
                                reason: "must start with '/'".into(),
                            });
                        }
                        PathMatch::Prefix(raw)
                    }
                    "" => {
                        return Err(CompileError::Path {
                            path: raw,
                            reason: "pathType is required".into(),
                        });
                    }
                    other => {
                        return Err(CompileError::Path {
                            path: raw,
                            reason: format!("pathType {other:?} is not one of Exact, Prefix, ImplementationSpecific"),
                        });
                    }
                };
                let b = backend(&p.backend, path.as_str(), &mut plan)?;
                let mut policy = policy.clone();
                policy.affinity = ann.affinity.as_ref().map(|a| a.for_path(&path));
                routes.push(Route {
                    path,
                    backend: b,
                    policy,
                    source: source.clone(),
                    canary: None,
                });
            }
            plan.rules.push((host, routes));
        }
        for alias in &ann.server_alias {
            validate_host(alias)?;
            // An alias serves the routes of the Ingress's rules that name a host.
            let routes: Vec<Route> = plan
                .rules
                .iter()
                .filter(|(h, _)| h != ANY_HOST)
                .flat_map(|(_, r)| r.clone())
                .collect();
            plan.aliases.push((alias.clone(), routes));
        }
        for tls in spec.tls.unwrap_or_default() {
            let secret = tls.secret_name.filter(|s| !s.is_empty());
            let hosts = tls.hosts.unwrap_or_default();
            if hosts.is_empty() {
                warnings.push((
                    "a spec.tls entry lists no hosts; it has no effect".into(),
                    "list the hosts the certificate covers under spec.tls[].hosts".into(),
                ));
            }
            for h in hosts {
                validate_host(&h)?;
                plan.tls_hosts.push((h, secret.clone()));
            }
        }
        Ok((plan, warnings))
    }
}

/// One tcp/udp-services entry.
fn l4_entry(
    protocol: L4Protocol,
    port: &str,
    value: &str,
    reserved: &[u16],
) -> Result<(L4Service, UpstreamRef), String> {
    let port: u16 = port
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or("the key must be a port from 1 to 65535")?;
    if reserved.contains(&port) {
        return Err(format!("port {port} is one of raftgate's own listeners"));
    }
    let mut parts = value.trim().split(':');
    let target = parts.next().unwrap_or_default();
    let svc_port = parts.next().ok_or("expected <namespace>/<service>:<port>")?;
    let proxy_in = parts.next();
    let proxy_out = parts.next();
    if parts.next().is_some() {
        return Err("too many ':' fields".into());
    }
    let flag = |f: Option<&str>| match f {
        None | Some("") => Ok(false),
        Some("PROXY") => Ok(true),
        Some(other) => Err(format!("expected PROXY, not {other:?}")),
    };
    let (proxy_protocol_in, proxy_protocol_out) = (flag(proxy_in)?, flag(proxy_out)?);
    let (namespace, service) = target
        .split_once('/')
        .filter(|(n, s)| !n.is_empty() && !s.is_empty())
        .ok_or("expected <namespace>/<service>:<port>")?;
    let port_ref = match svc_port.parse::<i32>() {
        Ok(n) if n > 0 && n <= 65535 => PortRef::Number(n),
        Ok(_) => return Err(format!("service port {svc_port} out of range")),
        Err(_) if !svc_port.is_empty() => PortRef::Name(svc_port.to_string()),
        Err(_) => return Err("the service port is missing".into()),
    };
    let r = UpstreamRef {
        namespace: namespace.into(),
        service: service.into(),
        port: port_ref,
        protocol: Protocol::Http,
        balance: Balance::RoundRobin,
        service_upstream: false,
        udp: protocol == L4Protocol::Udp,
    };
    let upstream = r.id();
    let svc = L4Service {
        protocol,
        port,
        upstream,
        proxy_protocol_in,
        proxy_protocol_out,
        source: String::new(),
    };
    Ok((svc, r))
}

/// Checks a regex path as the router will build it.
fn check_regex(raw: &str) -> Result<(), CompileError> {
    regex::RegexBuilder::new(&format!("^(?:{raw})"))
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| CompileError::Path {
            path: raw.into(),
            reason: format!("invalid regex: {e}"),
        })
}

/// The htpasswd data of an `auth-secret`. A missing or unusable Secret rejects the Ingress:
/// authentication fails closed.
fn basic_auth(objs: &Objects, ns: &str, ann: &Annotations) -> Result<BasicAuth, CompileError> {
    let name = ann.auth_secret.as_deref().unwrap_or_default();
    let key = match name.split_once('/') {
        Some((n, s)) => Key::new(n, s),
        None => Key::new(ns, name),
    };
    let err = |reason: String| CompileError::Auth {
        secret: key.to_string(),
        reason,
    };
    let secret = objs.secrets.get(&key).ok_or_else(|| err("Secret not found".into()))?;
    let mut data: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    data.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    let htpasswd = match ann.auth_secret_type {
        AuthSecretType::File => data
            .get("auth")
            .cloned()
            .ok_or_else(|| err("no `auth` key (auth-secret-type: auth-file)".into()))?,
        AuthSecretType::Map => data
            .iter()
            .map(|(user, hash)| format!("{user}:{}\n", hash.trim()))
            .collect(),
    };
    raftgate_proxy::auth::Htpasswd::parse(&htpasswd).map_err(|e| err(e.to_string()))?;
    Ok(BasicAuth {
        realm: ann.auth_realm.clone().unwrap_or_default(),
        htpasswd,
    })
}

/// A route's policy from the annotations over the configured defaults. Secrets and
/// Services are looked up by the caller.
fn policy(d: &RouteDefaults, ann: &Annotations) -> RoutePolicy {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let limited = ann.limit_rps.is_some() || ann.limit_rpm.is_some() || ann.limit_connections.is_some();
    RoutePolicy {
        ssl_redirect: ann.ssl_redirect.unwrap_or(d.ssl_redirect),
        force_ssl_redirect: ann.force_ssl_redirect.unwrap_or(false),
        max_body_bytes: match ann.proxy_body_size.unwrap_or(d.proxy_body_size) {
            0 => None,
            n => Some(n),
        },
        connect_timeout_ms: ms(ann.proxy_connect_timeout.unwrap_or(d.proxy_connect_timeout)),
        read_timeout_ms: ms(ann.proxy_read_timeout.unwrap_or(d.proxy_read_timeout)),
        send_timeout_ms: ms(ann.proxy_send_timeout.unwrap_or(d.proxy_send_timeout)),
        next_upstream_tries: ann.proxy_next_upstream_tries.unwrap_or(d.proxy_next_upstream_tries),
        next_upstream: ann.proxy_next_upstream.clone().unwrap_or_default(),
        app_root: ann.app_root.clone(),
        rewrite_target: ann.rewrite_target.clone(),
        redirect: ann
            .permanent_redirect
            .as_ref()
            .or(ann.temporal_redirect.as_ref())
            .map(|(url, code)| Redirect {
                url: url.clone(),
                code: *code,
            }),
        forwarded_prefix: ann.x_forwarded_prefix.clone(),
        allow_source: ann.allow_source.clone().unwrap_or_default(),
        limit: limited.then(|| RateLimit {
            rps: ann.limit_rps,
            rpm: ann.limit_rpm,
            burst_multiplier: ann.limit_burst_multiplier.unwrap_or(5),
            connections: ann.limit_connections,
            status: d.limit_req_status_code,
            exempt: ann.limit_allowlist.clone(),
        }),
        basic_auth: None,
        cors: ann.cors.clone(),
        fallback: None,
        // The Ingress's own list, else the controller-wide one.
        custom_errors: if ann.custom_http_errors.is_empty() {
            d.custom_http_errors.clone()
        } else {
            ann.custom_http_errors.clone()
        },
        // Set per route: the cookie path defaults to the route's.
        affinity: None,
        hash_by: ann.upstream_hash_by.clone(),
    }
}

/// Ingress precedence: oldest first; without a timestamp, after every timestamped one.
fn order_key(i: &Ingress) -> (bool, Option<k8s_openapi::jiff::Timestamp>, Key) {
    let ts = i.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (ts.is_none(), ts, Key::of(&i.metadata))
}

fn merge(plans: Vec<Plan>, objs: &Objects, out: &mut Output) {
    // Canaries claim nothing: they attach to the main routes once those are all in place.
    let (canaries, plans): (Vec<Plan>, Vec<Plan>) = plans.into_iter().partition(|p| p.canary.is_some());
    let t = &mut out.table;
    // Who claimed a (host, path) first, for the duplicate warning.
    let mut claimed: BTreeMap<(String, PathMatch), String> = BTreeMap::new();
    let mut refs: BTreeMap<String, UpstreamRef> = BTreeMap::new();
    let mut sni_secrets: BTreeMap<String, (String, Key)> = BTreeMap::new();
    // Which Ingresses use each upstream and TLS Secret, for the problems found resolving them.
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut secret_users: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    // Each Ingress's accepted server-alias hosts, which share its routes' canaries.
    let mut alias_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let rule_hosts: BTreeSet<String> = plans
        .iter()
        .flat_map(|p| p.rules.iter().map(|(h, _)| h.clone()))
        .collect();
    for plan in plans {
        let owner = plan.key.to_string();
        let warn = |out_problems: &mut Vec<Problem>, reason: String, fix: String| {
            out_problems.push(Problem {
                kind: "Ingress",
                object: owner.clone(),
                severity: Severity::Warning,
                reason,
                fix,
                related: Vec::new(),
            })
        };
        let only_default = plan.rules.is_empty();
        let mut aliases = Vec::new();
        for (alias, routes) in plan.aliases {
            if rule_hosts.contains(&alias) {
                warn(
                    &mut out.problems,
                    format!("server-alias {alias} ignored: an Ingress rule defines that host"),
                    format!("remove {alias} from {}server-alias", annotations::PREFIX),
                );
            } else {
                alias_hosts.entry(owner.clone()).or_default().push(alias.clone());
                aliases.push((alias, routes));
            }
        }
        for (host, routes) in plan.rules.into_iter().chain(aliases) {
            let vhost = t.vhosts.entry(host.clone()).or_default();
            if vhost.default_backend.is_none() {
                vhost.default_backend = plan.default_backend.clone();
            }
            for r in routes {
                let dedup = match &r.path {
                    PathMatch::Prefix(p) => PathMatch::Prefix(prefix_key(p).to_string()),
                    other => other.clone(),
                };
                match claimed.get(&(host.clone(), dedup.clone())) {
                    Some(first) => warn(
                        &mut out.problems,
                        format!(
                            "host {host} path {} is already served by Ingress {first} (older); ignored here",
                            r.path
                        ),
                        format!(
                            "remove the path from one of the two Ingresses, or make it a canary of {first} \
                             ({}canary: \"true\")",
                            annotations::PREFIX
                        ),
                    ),
                    None => {
                        claimed.insert((host.clone(), dedup), owner.clone());
                        vhost.routes.push(r);
                    }
                }
            }
        }
        if only_default {
            // An Ingress with only a defaultBackend sets the catch-all; the oldest wins.
            if let Some(b) = &plan.default_backend
                && t.default_backend.is_none()
            {
                t.default_backend = Some(b.clone());
            }
        }
        for (host, secret) in plan.tls_hosts {
            let host = host.to_ascii_lowercase();
            if let Some(secret) = secret {
                let key = Key::new(&plan.key.namespace, &secret);
                match sni_secrets.get(&host) {
                    Some((first, k)) if *k != key => warn(
                        &mut out.problems,
                        format!(
                            "TLS host {host} already uses Secret {k} from Ingress {first} (older); {key} ignored for it"
                        ),
                        format!("use Secret {k} for {host} here too, or drop {host} from this Ingress's spec.tls"),
                    ),
                    Some(_) => {}
                    None => {
                        secret_users.entry(key.clone()).or_default().insert(owner.clone());
                        sni_secrets.insert(host.clone(), (owner.clone(), key));
                    }
                }
            }
            // Every rule host this TLS name covers redirects to HTTPS.
            for (name, vhost) in t.vhosts.iter_mut() {
                if covers(&host, name) {
                    vhost.tls = true;
                }
            }
        }
        for (id, r) in plan.upstreams {
            users.entry(id.clone()).or_default().insert(owner.clone());
            refs.entry(id).or_insert(r);
        }
    }
    for plan in canaries {
        attach_canary(plan, t, &mut refs, &alias_hosts, &mut out.problems);
    }
    // A host from a later Ingress may be covered by an earlier TLS entry.
    for host in sni_secrets.keys() {
        for (name, vhost) in t.vhosts.iter_mut() {
            if covers(host, name) {
                vhost.tls = true;
            }
        }
    }
    for (id, r) in refs {
        let related = users.get(&id).map(|u| u.iter().cloned().collect()).unwrap_or_default();
        add_upstream(objs, id, &r, t, &mut out.problems, related);
    }
    let mut loaded: BTreeMap<Key, bool> = BTreeMap::new();
    for (host, (_, key)) in sni_secrets {
        let ok = *loaded
            .entry(key.clone())
            .or_insert_with(|| match certificate(objs, &key) {
                Ok(c) => {
                    t.certificates.insert(key.to_string(), c);
                    true
                }
                Err(reason) => {
                    out.problems.push(Problem {
                        kind: "Secret",
                        object: key.to_string(),
                        severity: Severity::Warning,
                        reason: format!("{reason}; the default certificate is served instead"),
                        fix: format!(
                            "create Secret {key} of type kubernetes.io/tls with a PEM tls.crt and its tls.key \
                             (kubectl create secret tls {} --cert=... --key=... -n {})",
                            key.name, key.namespace
                        ),
                        related: secret_users
                            .get(&key)
                            .map(|u| u.iter().cloned().collect())
                            .unwrap_or_default(),
                    });
                    false
                }
            });
        if ok {
            t.sni.insert(host, key.to_string());
        }
    }
}

/// Attaches a canary Ingress's backends to the main routes with the same host and path,
/// oldest canary first; anything else in a canary Ingress (TLS, default backend, aliases,
/// other annotations) is ignored, as in ingress-nginx. The canary upstream speaks the main
/// backend's protocol but keeps its own `load-balance`, `upstream-hash-by` and affinity.
fn attach_canary(
    plan: Plan,
    t: &mut RoutingTable,
    refs: &mut BTreeMap<String, UpstreamRef>,
    alias_hosts: &BTreeMap<String, Vec<String>>,
    problems: &mut Vec<Problem>,
) {
    let Some(spec) = plan.canary else { return };
    let owner = plan.key.to_string();
    let mut warn = |reason: String, fix: String| {
        problems.push(Problem {
            kind: "Ingress",
            object: owner.clone(),
            severity: Severity::Warning,
            reason,
            fix,
            related: Vec::new(),
        })
    };
    let planned: BTreeMap<&str, &UpstreamRef> = plan.upstreams.iter().map(|(id, r)| (id.as_str(), r)).collect();
    let same_path = |a: &PathMatch, b: &PathMatch| match (a, b) {
        (PathMatch::Prefix(x), PathMatch::Prefix(y)) => prefix_key(x) == prefix_key(y),
        _ => a == b,
    };
    for (host, routes) in &plan.rules {
        for r in routes {
            // The same path, else the same text under another type (say the main Ingress
            // has `use-regex` and the canary not: ingress-nginx matches the location's text).
            let main = t.vhosts.get_mut(host).and_then(|v| {
                let i = (v.routes.iter().position(|m| same_path(&m.path, &r.path)))
                    .or_else(|| v.routes.iter().position(|m| m.path.as_str() == r.path.as_str()))?;
                v.routes.get_mut(i)
            });
            let Some(main) = main else {
                warn(
                    format!(
                        "canary for host {host} path {} ignored: no main (non-canary) Ingress serves it",
                        r.path
                    ),
                    "give the canary exactly the host and path of the main Ingress it splits traffic from".into(),
                );
                continue;
            };
            if let Some(first) = &main.canary {
                warn(
                    format!(
                        "canary for host {host} path {} ignored: Ingress {} (older) is its canary already",
                        r.path, first.source
                    ),
                    format!(
                        "delete one of the two canaries, or set {}canary: \"false\" on it",
                        annotations::PREFIX
                    ),
                );
                continue;
            }
            let Some(own) = planned.get(r.backend.upstream.as_str()) else {
                continue;
            };
            let protocol = refs.get(&main.backend.upstream).map_or(own.protocol, |m| m.protocol);
            let upstream = UpstreamRef {
                protocol,
                ..(*own).clone()
            };
            let id = upstream.id();
            refs.entry(id.clone()).or_insert(upstream);
            let canary = Canary {
                backend: Backend { upstream: id },
                header: spec.header.clone(),
                cookie: spec.cookie.clone(),
                weight: spec.weight,
                weight_total: spec.weight_total,
                // `affinity-canary-behavior`: sticky (the default) gives the canary the main
                // Ingress's affinity, as ingress-nginx copies it to the alternative backend, so a
                // session stays on whichever backend it first landed on; legacy keeps its own.
                affinity: if spec.legacy_affinity {
                    r.policy.affinity.clone()
                } else {
                    main.policy.affinity.clone()
                },
                hash_by: r.policy.hash_by.clone(),
                source: owner.clone(),
            };
            main.canary = Some(canary.clone());
            let (main_source, main_path) = (main.source.clone(), main.path.clone());
            for alias in alias_hosts.get(&main_source).into_iter().flatten() {
                let served = t.vhosts.get_mut(alias).into_iter().flat_map(|v| v.routes.iter_mut());
                for a in served.filter(|a| a.source == main_source && a.path == main_path && a.canary.is_none()) {
                    a.canary = Some(canary.clone());
                }
            }
        }
    }
}

/// Whether TLS name `tls` (exact or `*.` wildcard) covers rule host `host`.
fn covers(tls: &str, host: &str) -> bool {
    if tls.eq_ignore_ascii_case(host) {
        return true;
    }
    match (tls.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

/// A Kubernetes rule host: a lower-case DNS subdomain, optionally with a leading `*.`.
fn validate_host(h: &str) -> Result<(), CompileError> {
    let err = |reason| Err(CompileError::Host { host: h.into(), reason });
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return err("must be 1 to 253 characters");
    }
    if h.parse::<IpAddr>().is_ok() {
        return err("must be a DNS name, not an IP address");
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return err("each label must be 1 to 63 characters");
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return err("must be lower-case letters, digits, '-' and '.', with '*.' only as a prefix");
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' {
            return err("labels must start and end with a letter or digit");
        }
    }
    Ok(())
}

/// A Kubernetes Exact or Prefix path: absolute, with no `//`, `.`/`..` segments, `%2F` or `#`.
fn validate_path(p: &str) -> Result<&str, CompileError> {
    let err = |reason: &str| {
        Err(CompileError::Path {
            path: p.into(),
            reason: reason.into(),
        })
    };
    if !p.starts_with('/') {
        return err("must start with '/'");
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if p.contains(bad) {
            return err(&format!("must not contain {bad:?}"));
        }
    }
    if p.ends_with("/..") || p.ends_with("/.") {
        return err("must not end with '/.' or '/..'");
    }
    Ok(p)
}

/// Resolves an upstream into the table, reporting what makes it unusable against its Service.
fn add_upstream(
    objs: &Objects,
    id: String,
    r: &UpstreamRef,
    table: &mut RoutingTable,
    problems: &mut Vec<Problem>,
    related: Vec<String>,
) {
    let (upstream, warnings) = resolve(objs, r);
    for (reason, fix) in warnings {
        problems.push(Problem {
            kind: "Service",
            object: format!("{}/{}", r.namespace, r.service),
            severity: Severity::Warning,
            reason,
            fix,
            related: related.clone(),
        });
    }
    table.upstreams.insert(id, upstream);
}

/// The endpoints of one upstream, with warnings for whatever makes it unusable.
fn resolve(objs: &Objects, r: &UpstreamRef) -> (Upstream, Vec<Hint>) {
    let mut up = Upstream {
        endpoints: Vec::new(),
        balance: r.balance,
        protocol: r.protocol,
    };
    let mut warnings = Vec::new();
    let key = Key::new(&r.namespace, &r.service);
    let Some(svc) = objs.services.get(&key) else {
        warnings.push((
            format!("Service {key} not found; requests to it get 503"),
            format!("create Service {key}, or correct the backend's service name"),
        ));
        return (up, warnings);
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let transport = if r.udp { "UDP" } else { "TCP" };
    let same_transport = |p: &Option<String>| p.as_deref().unwrap_or("TCP") == transport;
    let found = ports.iter().find(|p| {
        same_transport(&p.protocol)
            && match &r.port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
            }
    });
    if spec.type_.as_deref() == Some("ExternalName") {
        let Some(name) = spec.external_name.filter(|n| !n.is_empty()) else {
            warnings.push((
                "ExternalName Service has no spec.externalName".into(),
                "set spec.externalName to the DNS name to forward to".into(),
            ));
            return (up, warnings);
        };
        let port = match (found, &r.port) {
            (Some(p), _) => match &p.target_port {
                Some(IntOrString::Int(t)) if *t > 0 => *t,
                _ => p.port,
            },
            (None, PortRef::Number(n)) => *n,
            (None, PortRef::Name(n)) => {
                warnings.push((
                    format!("port {n:?} not found on the Service"),
                    format!("name a Service port {n:?}, or use the port number in the Ingress backend"),
                ));
                return (up, warnings);
            }
        };
        match u16::try_from(port) {
            Ok(port) => up.endpoints.push(Endpoint::Dns {
                host: name.trim_end_matches('.').to_string(),
                port,
            }),
            Err(_) => warnings.push((format!("port {port} out of range"), "use a port from 1 to 65535".into())),
        }
        return (up, warnings);
    }
    if let (Some(sp), true) = (found, r.service_upstream) {
        match spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") {
            Some(ip) => {
                let mut eps = BTreeSet::new();
                push_addr(&mut eps, ip, sp.port, &mut warnings);
                up.endpoints = eps.into_iter().collect();
                return (up, warnings);
            }
            None => warnings.push((
                "service-upstream needs a ClusterIP; using the endpoints".into(),
                format!(
                    "give the Service a ClusterIP (not headless), or remove {}service-upstream",
                    annotations::PREFIX
                ),
            )),
        }
    }
    let Some(sp) = found else {
        warnings.push((
            format!("port {} not found on the Service; requests to it get 503", r.port),
            format!(
                "add port {} (TCP) to Service {key}, or point the backend at one of its ports",
                r.port
            ),
        ));
        return (up, warnings);
    };
    let sp_name = sp.name.clone().unwrap_or_default();
    let target_num = match &sp.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        None => Some(sp.port),
        Some(IntOrString::String(_)) => None,
    };
    let mut eps: BTreeSet<Endpoint> = BTreeSet::new();
    let slices: Vec<_> = objs
        .slices
        .values()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(r.namespace.as_str())
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&r.service)
        })
        .collect();
    if !slices.is_empty() {
        for s in slices {
            if s.address_type == "FQDN" {
                continue;
            }
            let Some(port) = s
                .ports
                .as_ref()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.name.clone().unwrap_or_default() == sp_name && same_transport(&p.protocol))
                })
                .and_then(|p| p.port)
            else {
                continue;
            };
            for e in &s.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    push_addr(&mut eps, a, port, &mut warnings);
                }
            }
        }
    } else if let Some(legacy) = objs.endpoints.get(&key) {
        for subset in legacy.subsets.as_deref().unwrap_or_default() {
            let ports: Vec<_> = subset
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter(|p| same_transport(&p.protocol))
                .collect();
            let port = ports
                .iter()
                .find(|p| p.name.clone().unwrap_or_default() == sp_name)
                .or_else(|| ports.iter().find(|p| Some(p.port) == target_num))
                .or_else(|| {
                    if ports.len() == 1 && sp_name.is_empty() {
                        ports.first()
                    } else {
                        None
                    }
                })
                .map(|p| p.port);
            let Some(port) = port else { continue };
            for a in subset.addresses.as_deref().unwrap_or_default() {
                push_addr(&mut eps, &a.ip, port, &mut warnings);
            }
        }
    }
    if eps.is_empty() {
        warnings.push((
            format!("no ready endpoints for port {}; requests to it get 503", r.port),
            format!(
                "check that Service {key}'s selector matches running, ready pods (kubectl get endpointslices -n {} \
                 -l kubernetes.io/service-name={})",
                r.namespace, r.service
            ),
        ));
    }
    up.endpoints = eps.into_iter().collect();
    (up, warnings)
}

fn push_addr(eps: &mut BTreeSet<Endpoint>, ip: &str, port: i32, warnings: &mut Vec<Hint>) {
    match (ip.parse::<IpAddr>(), u16::try_from(port)) {
        (Ok(ip), Ok(port)) if port > 0 => {
            eps.insert(Endpoint::Addr(SocketAddr::new(ip, port)));
        }
        _ => warnings.push((
            format!("endpoint {ip}:{port} is not a valid IP address and port; skipped"),
            "fix the EndpointSlice (or Endpoints) object: addresses must be IPs and ports 1 to 65535".into(),
        )),
    }
}

/// The certificate in a TLS Secret, checked.
fn certificate(objs: &Objects, key: &Key) -> Result<Certificate, String> {
    let Some(secret) = objs.secrets.get(key) else {
        return Err(format!("Secret {key} not found"));
    };
    let get = |name: &str| -> Option<String> {
        if let Some(s) = secret.string_data.as_ref().and_then(|d| d.get(name)) {
            return Some(s.clone());
        }
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let (Some(cert_pem), Some(key_pem)) = (get("tls.crt"), get("tls.key")) else {
        return Err("Secret has no tls.crt and tls.key".into());
    };
    raftgate_proxy::tls::certified_key(&cert_pem, &key_pem).map_err(|e| e.to_string())?;
    Ok(Certificate { cert_pem, key_pem })
}

#[cfg(test)]
mod tests;
