//! The Kubernetes source: watchers on the API server feed a local store; changes are debounced, compiled and published.
//!
//! ```text
//!  watchers (Ingress, IngressClass, Service, EndpointSlice, ConfigMaps by name, Secret metadata)
//!     │ Apply / Delete / Init…InitDone (a relist replaces that watcher's objects at once)
//!     ▼
//!  Store ── dirty? wait `debounce` ──► fetch the Secrets our Ingresses use ──► compile ──► publish
//!                                                                                  ├──► Events (rate-limited)
//!                                                                                  └──► Ingress status
//! ```
//!
//! Nothing is compiled until every watcher has listed once, so a leader that just took over
//! never withdraws routes it has not seen yet. A failing watch keeps the store as it was (the
//! watcher retries with [`WatchBackoff`] and relists after 410 Gone), so an API server outage
//! changes nothing that is served, and what changed meanwhile is seen within seconds of its end.
//! Secrets are watched by metadata only; the data of a Secret is fetched, and held, only while an
//! Ingress of our class refers to it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Event as K8sEvent;
use k8s_openapi::api::core::v1::EventSource;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::networking::v1::IngressLoadBalancerIngress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::Client;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::PostParams;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::compiler::Compiler;
use crate::compiler::Problem;
use crate::compiler::Severity;
use crate::config::KubeSource;
use crate::objects::Key;
use crate::objects::Object;
use crate::objects::Objects;

const AUTH_SECRET_ANNOTATION: &str = "nginx.ingress.kubernetes.io/auth-secret";

/// Why the API client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("no kubeconfig and not in a cluster: {0}")]
    Infer(String),
    #[error("API client: {0}")]
    Client(String),
    #[error("user agent {0:?} is not a valid header value")]
    UserAgent(String),
}

/// Builds the API client: the given kubeconfig, else `KUBECONFIG` or `~/.kube/config`, else in-cluster.
pub async fn client(kubeconfig: Option<&Path>, user_agent: &str) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |reason: String| KubeError::Kubeconfig {
                path: path.display().to_string(),
                reason,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    let ua = http::HeaderValue::from_str(user_agent).map_err(|_| KubeError::UserAgent(user_agent.into()))?;
    config.headers.push((http::header::USER_AGENT, ua));
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// What one watcher covers: a kind, and optionally one namespace and one name.
#[derive(Clone, Debug)]
struct Scope {
    kind: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

impl Scope {
    fn covers(&self, key: &Key) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
            && self.name.as_ref().is_none_or(|n| *n == key.name)
    }
}

/// One watcher's event, with Secrets reduced to their key and resourceVersion. Short-lived
/// (moved into the store at once), so the size difference costs nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Update {
    Object(Event<Object>),
    SecretMeta(Event<(Key, String)>),
}

type Updates = BoxStream<'static, (usize, Result<Update, watcher::Error>)>;

fn map_event<K, T>(ev: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match ev {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// How long a failing watch waits before it tries again: 250 ms doubling up to 5 s, each delay drawn from the
/// upper half of its step so that watchers which failed together do not retry together. Any event resets it.
///
/// client-go (and kube-rs's default) wait 800 ms doubling up to 30 s with up to 100 % jitter, so after an API
/// server outage a reflector can take a minute to notice the server is back (one failed retry and the 410 of
/// its stale watch each cost a full step). Only the leader watches, so this is a handful of requests every few
/// seconds at worst; in exchange the changes made during an outage are served within ~10 s of its end.
#[derive(Debug, Clone)]
struct WatchBackoff {
    attempt: u32,
    seed: u64,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        use std::hash::BuildHasher;
        // A per-process random seed; the std hasher is randomly keyed, which is all the jitter needs.
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Self::seeded(seed)
    }

    fn seeded(seed: u64) -> Self {
        Self { attempt: 0, seed }
    }

    /// The `attempt`th delay (from 0), before jitter.
    fn step(attempt: u32) -> Duration {
        Self::FIRST.saturating_mul(1 << attempt.min(16)).min(Self::MAX)
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let step = Self::step(self.attempt);
        // A hash of (seed, attempt): independent draws without keeping an RNG around.
        let mut input = [0u8; 12];
        input[..8].copy_from_slice(&self.seed.to_le_bytes());
        input[8..].copy_from_slice(&self.attempt.to_le_bytes());
        let z = raftgate_proxy::upstream::hash64(&input);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        Some(half + Duration::from_millis(z % (half_ms + 1)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn watch_objects<K>(api: Api<K>, wc: watcher::Config, wrap: fn(K) -> Object) -> Updates
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, wc)
        .backoff(WatchBackoff::new())
        .map(move |r| (0, r.map(|ev| Update::Object(map_event(ev, wrap)))))
        .boxed()
}

/// The watchers this source runs, and what each covers.
fn watchers(client: &Client, cfg: &KubeSource, config_maps: &[Key]) -> (Vec<Scope>, Vec<Updates>) {
    let mut scopes = Vec::new();
    let mut streams = Vec::new();
    let namespaces: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let wc = watcher::Config::default;
    let mut push = |scope: Scope, stream: Updates| {
        scopes.push(scope);
        streams.push(stream);
    };
    let scope = |kind, namespace: &Option<String>| Scope {
        kind,
        namespace: namespace.clone(),
        name: None,
    };
    push(
        scope("IngressClass", &None),
        watch_objects(Api::<IngressClass>::all(client.clone()), wc(), Object::IngressClass),
    );
    for ns in &namespaces {
        push(
            scope("Ingress", ns),
            watch_objects(api::<Ingress>(client, ns), wc(), Object::Ingress),
        );
        push(
            scope("Service", ns),
            watch_objects(api::<Service>(client, ns), wc(), Object::Service),
        );
        push(
            scope("EndpointSlice", ns),
            watch_objects(api::<EndpointSlice>(client, ns), wc(), Object::EndpointSlice),
        );
        push(
            scope("Secret", ns),
            secret_metadata(api::<PartialObjectMeta<Secret>>(client, ns)),
        );
    }
    for key in config_maps {
        push(
            Scope {
                kind: "ConfigMap",
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
            },
            watch_objects(
                Api::<ConfigMap>::namespaced(client.clone(), &key.namespace),
                wc().fields(&format!("metadata.name={}", key.name)),
                Object::ConfigMap,
            ),
        );
    }
    // Tag each stream with its index now that the order is fixed.
    let streams = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.map(move |(_, r)| (i, r)).boxed())
        .collect();
    (scopes, streams)
}

fn secret_metadata(api: Api<PartialObjectMeta<Secret>>) -> Updates {
    watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::new())
        .map(|r| {
            let f = |m: PartialObjectMeta<Secret>| {
                (
                    Key::of(&m.metadata),
                    m.metadata.resource_version.clone().unwrap_or_default(),
                )
            };
            (0, r.map(|ev| Update::SecretMeta(map_event(ev, f))))
        })
        .boxed()
}

/// A watcher's progress through a (re)list.
#[derive(Debug, Default)]
struct Listing {
    synced: bool,
    objects: Option<Vec<Object>>,
    secrets: Option<Vec<(Key, String)>>,
}

/// What a batch of updates made stale.
#[derive(Clone, Copy, Debug, Default)]
struct Dirty {
    compile: bool,
    status: bool,
}

impl Dirty {
    fn any(self) -> bool {
        self.compile || self.status
    }

    fn or(&mut self, other: Dirty) {
        self.compile |= other.compile;
        self.status |= other.status;
    }
}

/// The objects as the watchers last reported them.
#[derive(Debug, Default)]
struct Store {
    objects: Objects,
    scopes: Vec<Scope>,
    listings: Vec<Listing>,
    /// Every Secret in scope, by key, with its resourceVersion (no data).
    secret_versions: BTreeMap<Key, String>,
    /// The resourceVersion of each Secret whose data is held in `objects.secrets`.
    secrets_loaded: BTreeMap<Key, String>,
    /// The Secrets our Ingresses used at the last compilation: only their changes recompile.
    secrets_used: BTreeSet<Key>,
    /// Ingresses this source has seen as ours: only their status is ever cleared.
    were_ours: BTreeSet<Key>,
}

impl Store {
    fn new(scopes: Vec<Scope>) -> Store {
        Store {
            listings: scopes.iter().map(|_| Listing::default()).collect(),
            scopes,
            ..Store::default()
        }
    }

    fn synced(&self) -> bool {
        self.listings.iter().all(|l| l.synced)
    }

    fn apply(&mut self, idx: usize, update: Update) -> Dirty {
        let compile = Dirty {
            compile: true,
            status: true,
        };
        let (Some(scope), Some(listing)) = (self.scopes.get(idx).cloned(), self.listings.get_mut(idx)) else {
            return Dirty::default();
        };
        match update {
            Update::Object(Event::Apply(o)) => {
                let key = o.key();
                match self.objects.upsert(o) {
                    // A status-only change (our own write coming back) needs no compilation.
                    Some(Object::Ingress(old))
                        if self.objects.ingresses.get(&key).is_some_and(|new| {
                            new.spec == old.spec
                                && new.metadata.annotations == old.metadata.annotations
                                && new.metadata.creation_timestamp == old.metadata.creation_timestamp
                        }) =>
                    {
                        Dirty {
                            compile: false,
                            status: true,
                        }
                    }
                    _ => compile,
                }
            }
            Update::Object(Event::Delete(o)) => {
                self.objects.remove(o.kind(), &o.key());
                compile
            }
            Update::Object(Event::Init) => {
                listing.objects = Some(Vec::new());
                Dirty::default()
            }
            Update::Object(Event::InitApply(o)) => {
                listing.objects.get_or_insert_with(Vec::new).push(o);
                Dirty::default()
            }
            Update::Object(Event::InitDone) => {
                let fresh = listing.objects.take().unwrap_or_default();
                listing.synced = true;
                // The relist replaces everything this watcher covers: nothing stale stays,
                // nothing listed twice is counted twice.
                self.objects.retain(scope.kind, |k| !scope.covers(k));
                for o in fresh {
                    self.objects.upsert(o);
                }
                compile
            }
            Update::SecretMeta(Event::Apply((key, rv))) => {
                let used = self.secrets_used.contains(&key);
                self.secret_versions.insert(key, rv);
                if used { compile } else { Dirty::default() }
            }
            Update::SecretMeta(Event::Delete((key, _))) => {
                let used = self.secrets_used.contains(&key);
                self.secret_versions.remove(&key);
                if used { compile } else { Dirty::default() }
            }
            Update::SecretMeta(Event::Init) => {
                listing.secrets = Some(Vec::new());
                Dirty::default()
            }
            Update::SecretMeta(Event::InitApply(s)) => {
                listing.secrets.get_or_insert_with(Vec::new).push(s);
                Dirty::default()
            }
            Update::SecretMeta(Event::InitDone) => {
                let fresh = listing.secrets.take().unwrap_or_default();
                listing.synced = true;
                self.secret_versions.retain(|k, _| !scope.covers(k));
                self.secret_versions.extend(fresh);
                compile
            }
        }
    }

    /// The Secrets that the given Ingresses use: TLS and auth-secret.
    fn used_secrets(&self, ours: &BTreeSet<Key>) -> BTreeSet<Key> {
        let mut used = BTreeSet::new();
        for key in ours {
            let Some(ing) = self.objects.ingresses.get(key) else {
                continue;
            };
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                if let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) {
                    used.insert(Key::new(&key.namespace, name));
                }
            }
            if let Some(auth) = ing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(AUTH_SECRET_ANNOTATION))
            {
                used.insert(match auth.split_once('/') {
                    Some((ns, n)) => Key::new(ns, n),
                    None => Key::new(&key.namespace, auth),
                });
            }
        }
        used
    }
}

/// Fetches the data of the used Secrets that changed, and drops the data of every other.
/// Returns whether anything changed, and whether a fetch failed (try again later) for a
/// Secret whose data is not held at all: then compiling would wrongly treat it as missing.
async fn sync_secrets(client: &Client, store: &mut Store, used: &BTreeSet<Key>) -> (bool, bool) {
    store.secrets_used = used.clone();
    let mut changed = false;
    let before = store.objects.secrets.len();
    store
        .objects
        .secrets
        .retain(|k, _| used.contains(k) && store.secret_versions.contains_key(k));
    store
        .secrets_loaded
        .retain(|k, _| used.contains(k) && store.secret_versions.contains_key(k));
    changed |= store.objects.secrets.len() != before;
    let wanted: Vec<Key> = used
        .iter()
        .filter(|k| {
            store
                .secret_versions
                .get(*k)
                .is_some_and(|rv| store.secrets_loaded.get(*k) != Some(rv))
        })
        .cloned()
        .collect();
    let fetched: Vec<(Key, Result<Option<Secret>, String>)> = futures_util::stream::iter(wanted)
        .map(|key| {
            let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
            async move {
                let r = match tokio::time::timeout(WRITE_TIMEOUT, api.get_opt(&key.name)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("no answer within 10s".to_string()),
                };
                (key, r)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut failed = false;
    for (key, r) in fetched {
        match r {
            Ok(Some(secret)) => {
                let rv = secret.metadata.resource_version.clone().unwrap_or_default();
                store.secrets_loaded.insert(key.clone(), rv);
                store.objects.secrets.insert(key, secret);
                changed = true;
            }
            Ok(None) => {
                store.secrets_loaded.remove(&key);
                changed |= store.objects.secrets.remove(&key).is_some();
            }
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "could not read a Secret an Ingress uses; keeping what was read before");
                failed |= !store.objects.secrets.contains_key(&key);
            }
        }
    }
    (changed, failed)
}

/// Where compiled tables go: the Raft group, or this node's own data plane.
pub(crate) trait Publish: Send {
    /// Publishes a table; false means "not taken, try again".
    fn publish(&mut self, out: crate::compiler::Output)
    -> Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;

    /// Counts a failed API connect, watch or Secret read (`raftgate_source_errors_total`).
    fn source_error(&self) {}
}

/// Where the status of our Ingresses should point.
pub(crate) type Addresses = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Runs the source until the task is dropped (leadership lost) or `drain` fires.
pub(crate) async fn run(
    cfg: KubeSource,
    node_id: String,
    mut compiler: Compiler,
    config_maps: Vec<Key>,
    mut publish: impl Publish,
    addresses: Addresses,
    mut drain: watch::Receiver<bool>,
) {
    let user_agent = cfg.user_agent.replace("{node}", &node_id);
    let client = loop {
        match client(cfg.kubeconfig.as_deref(), &user_agent).await {
            Ok(c) => break c,
            Err(e) => {
                publish.source_error();
                tracing::error!(error = %e, "cannot reach the Kubernetes API; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = raftgate_proxy::server::draining(&mut drain) => return,
                }
            }
        }
    };
    let (scopes, streams) = watchers(&client, &cfg, &config_maps);
    let mut updates = futures_util::stream::select_all(streams);
    let mut store = Store::new(scopes);
    let (status_tx, status_rx) = watch::channel(Arc::new(Vec::new()));
    let _status = AbortOnDrop(
        cfg.update_status
            .then(|| tokio::spawn(status_writer(client.clone(), status_rx))),
    );
    let (events_tx, events_rx) = watch::channel(Arc::new(Vec::new()));
    let _events = AbortOnDrop(
        cfg.events
            .then(|| tokio::spawn(EventWriter::new(client.clone(), node_id.clone()).run(events_rx))),
    );
    let mut dirty = Dirty::default();
    let mut due: Option<tokio::time::Instant> = None;
    let mut last_cost = Duration::ZERO;
    let mut errors = ErrorLog::default();
    // The addresses status was last computed with; members come and go without any object changing.
    let mut sent_addresses: Vec<String> = Vec::new();
    let mut recheck = tokio::time::interval(Duration::from_secs(10));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        namespaces = ?cfg.namespaces,
        watchers = store.scopes.len(),
        "watching the Kubernetes API"
    );
    loop {
        tokio::select! {
            item = updates.next() => {
                let Some((idx, r)) = item else { return };
                match r {
                    Ok(u) => {
                        errors.restored(idx, store.scopes.get(idx).map_or("?", |s| s.kind));
                        let was_synced = store.synced();
                        let d = store.apply(idx, u);
                        if !was_synced && store.synced() {
                            tracing::info!(watchers = store.scopes.len(), "every watcher has listed; compiling from the API");
                        }
                        if d.any() && due.is_none() {
                            due = Some(tokio::time::Instant::now() + cfg.debounce.max(last_cost));
                        }
                        dirty.or(d);
                    }
                    Err(e) => {
                        publish.source_error();
                        errors.report(idx, store.scopes.get(idx).map_or("?", |s| s.kind), &e)
                    }
                }
                continue;
            }
            _ = sleep_until(due) => {}
            _ = recheck.tick(), if due.is_none() => {
                if addresses() == sent_addresses {
                    continue;
                }
                dirty.status = true;
            }
            _ = raftgate_proxy::server::draining(&mut drain) => return,
        }
        due = None;
        if !store.synced() {
            continue;
        }
        let started = Instant::now();
        let ours = compiler.ours(&store.objects);
        let used = store.used_secrets(&ours);
        let (secrets_changed, secrets_failed) = sync_secrets(&client, &mut store, &used).await;
        if secrets_failed {
            publish.source_error();
            // Never compile as if an unreadable Secret were missing: that would withdraw routes.
            due = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            dirty.compile |= secrets_changed;
            continue;
        }
        if dirty.compile || secrets_changed {
            let compile_started = Instant::now();
            let out = compiler.compile(&store.objects);
            // The next debounce waits at least as long as this compilation took (at most 1 s),
            // so a burst never keeps the node compiling more than half the time.
            last_cost = compile_started.elapsed().min(Duration::from_secs(1));
            if cfg.events {
                let _ = events_tx.send(Arc::new(event_wants(&store.objects, &ours, &out.problems)));
            }
            if !publish.publish(out).await {
                due = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                continue;
            }
        }
        let addrs = addresses();
        if dirty.any() || addrs != sent_addresses {
            let ingresses = &store.objects.ingresses;
            store.were_ours.retain(|k| ingresses.contains_key(k));
            store.were_ours.extend(ours.iter().cloned());
            let _ = status_tx.send(Arc::new(wanted_status(&store.objects, &ours, &store.were_ours, &addrs)));
            sent_addresses = addrs;
        }
        dirty = Dirty::default();
        tracing::debug!(took_us = started.elapsed().as_micros() as u64, "source cycle");
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped, so helpers stop with the source.
#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Logs watch errors at most once per 10 s per watcher.
#[derive(Debug, Default)]
struct ErrorLog {
    last: HashMap<usize, Instant>,
}

impl ErrorLog {
    /// Watcher `idx` delivered again: says so once if its failure was reported.
    fn restored(&mut self, idx: usize, kind: &str) {
        if self.last.remove(&idx).is_some() {
            tracing::info!(kind, "watch restored");
        }
    }

    fn report(&mut self, idx: usize, kind: &str, e: &watcher::Error) {
        let now = Instant::now();
        if self
            .last
            .get(&idx)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10))
        {
            return;
        }
        self.last.insert(idx, now);
        tracing::warn!(kind, error = %e, "watch failed; serving what was last seen and retrying");
    }
}

/// One Ingress whose status should change.
#[derive(Clone, Debug, PartialEq)]
struct StatusWant {
    key: Key,
    /// The object's resourceVersion when it was read.
    version: String,
    want: Vec<IngressLoadBalancerIngress>,
}

fn lb_entries(addresses: &[String]) -> Vec<IngressLoadBalancerIngress> {
    let mut v: Vec<IngressLoadBalancerIngress> = addresses
        .iter()
        .map(|a| {
            if a.parse::<std::net::IpAddr>().is_ok() {
                IngressLoadBalancerIngress {
                    ip: Some(a.clone()),
                    ..Default::default()
                }
            } else {
                IngressLoadBalancerIngress {
                    hostname: Some(a.clone()),
                    ..Default::default()
                }
            }
        })
        .collect();
    v.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    v.dedup();
    v
}

fn current_status(ing: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    let mut v: Vec<IngressLoadBalancerIngress> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    v.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    v
}

/// The status changes to make: our Ingresses point at `addresses`; an Ingress this source saw
/// as ours that left our class and still shows exactly our addresses is cleared (another
/// controller's Ingress showing the same addresses is left alone). No addresses: nothing is written.
fn wanted_status(
    objs: &Objects,
    ours: &BTreeSet<Key>,
    were_ours: &BTreeSet<Key>,
    addresses: &[String],
) -> Vec<StatusWant> {
    let want = lb_entries(addresses);
    if want.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (key, ing) in &objs.ingresses {
        let current = current_status(ing);
        let target = if ours.contains(key) {
            want.clone()
        } else if current == want && were_ours.contains(key) {
            Vec::new()
        } else {
            continue;
        };
        if current != target {
            out.push(StatusWant {
                key: key.clone(),
                version: ing.metadata.resource_version.clone().unwrap_or_default(),
                want: target,
            });
        }
    }
    out
}

/// Writes Ingress status, several at a time, skipping what it already wrote for the same
/// version of an object (its own write has not come back through the watch yet).
async fn status_writer(client: Client, mut rx: watch::Receiver<Arc<Vec<StatusWant>>>) {
    let mut written: HashMap<Key, (String, Vec<IngressLoadBalancerIngress>)> = HashMap::new();
    let mut failing: HashMap<Key, (u32, Instant)> = HashMap::new();
    loop {
        let wants = rx.borrow_and_update().clone();
        let now = Instant::now();
        let todo: Vec<StatusWant> = wants
            .iter()
            .filter(|w| written.get(&w.key).is_none_or(|(v, s)| *v != w.version || *s != w.want))
            .filter(|w| failing.get(&w.key).is_none_or(|(_, next)| *next <= now))
            .cloned()
            .collect();
        type Written = Result<Result<Ingress, kube::Error>, tokio::time::error::Elapsed>;
        let results: Vec<(StatusWant, Written)> = futures_util::stream::iter(todo)
            .map(|w| {
                let api: Api<Ingress> = Api::namespaced(client.clone(), &w.key.namespace);
                async move {
                    let ingress = if w.want.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::to_value(&w.want).unwrap_or(serde_json::Value::Null)
                    };
                    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
                    let r = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        api.patch_status(&w.key.name, &PatchParams::default(), &Patch::Merge(&patch)),
                    )
                    .await;
                    (w, r)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (w, r) in results {
            let error = match r {
                Ok(Ok(_)) => {
                    tracing::debug!(ingress = %w.key, "status written");
                    failing.remove(&w.key);
                    written.insert(w.key, (w.version, w.want));
                    continue;
                }
                // Deleted meanwhile: the watch will say so.
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                    written.insert(w.key, (w.version, w.want));
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 10s".to_string(),
            };
            // Back off per Ingress (5 s doubling to 5 min) and say so on the first failure and
            // then every tenth, so a missing RBAC rule never floods the API server or the log.
            let (n, next) = failing.entry(w.key.clone()).or_insert((0, now));
            *n += 1;
            *next = Instant::now() + Duration::from_secs(5u64 << (*n - 1).min(6)).min(Duration::from_secs(300));
            if *n == 1 || *n % 10 == 0 {
                tracing::warn!(ingress = %w.key, failures = *n, error, "could not write Ingress status; backing off");
            }
        }
        let live: BTreeSet<&Key> = wants.iter().map(|w| &w.key).collect();
        written.retain(|k, _| live.contains(k));
        failing.retain(|k, _| live.contains(k));
        // A write that failed is tried again in a while, if nothing newer comes first.
        let retry = wants
            .iter()
            .any(|w| written.get(&w.key).is_none_or(|(v, s)| *v != w.version || *s != w.want));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)), if retry => {}
        }
    }
}

/// Writes a Warning Event for each new problem on an object we serve: at most once per
/// object and reason while the problem lasts, and at most [`EventWriter::BURST`] at once,
/// refilled at [`EventWriter::PER_SECOND`].
struct EventWriter {
    client: Client,
    node: String,
    sent: BTreeSet<(Key, String)>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("node", &self.node)
            .field("sent", &self.sent.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl EventWriter {
    const BURST: f64 = 25.0;
    const PER_SECOND: f64 = 5.0;

    fn new(client: Client, node: String) -> EventWriter {
        EventWriter {
            client,
            node,
            sent: BTreeSet::new(),
            tokens: Self::BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    /// Writes the Events for `wants` that were not written yet; runs until the source stops.
    async fn run(mut self, mut rx: watch::Receiver<Arc<Vec<EventWant>>>) {
        loop {
            let wants = rx.borrow_and_update().clone();
            // Events held back by the rate limit or a failed write go out later.
            let pending = self.write(&wants).await;
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)), if pending => {}
            }
        }
    }

    /// Returns whether some Events are still to be written.
    async fn write(&mut self, wants: &[EventWant]) -> bool {
        let mut pending = false;
        let id = |w: &EventWant| (w.key.clone(), format!("{}|{}", w.kind, w.problem.reason));
        // A problem that went away may be reported again if it comes back.
        let live: BTreeSet<(Key, String)> = wants.iter().map(id).collect();
        self.sent.retain(|i| live.contains(i));
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * Self::PER_SECOND).min(Self::BURST);
        self.refilled = now;
        for w in wants {
            if self.sent.contains(&id(w)) {
                continue;
            }
            if self.tokens < 1.0 {
                self.dropped += 1;
                pending = true;
                tracing::debug!(object = %w.key, held = self.dropped, "event rate limit reached; writing later");
                continue;
            }
            self.tokens -= 1.0;
            let ev = event(w, &self.node);
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &w.key.namespace);
            match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &ev)).await {
                Ok(Ok(_)) => {
                    self.sent.insert(id(w));
                }
                // An earlier leader already wrote this very Event (its name is derived from
                // the object, its version and the problem).
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    self.sent.insert(id(w));
                }
                Ok(Err(kube::Error::Api(e))) if (400..500).contains(&e.code) => {
                    // Refused for good (RBAC, a namespace being deleted): not retried.
                    self.sent.insert(id(w));
                    tracing::warn!(object = %w.key, error = %e, "Event refused by the API server; not retrying it")
                }
                Ok(Err(e)) => {
                    pending = true;
                    tracing::warn!(object = %w.key, error = %e, "could not write an Event")
                }
                Err(_) => {
                    pending = true;
                    tracing::warn!(object = %w.key, "could not write an Event: no answer within 10s")
                }
            }
        }
        pending
    }
}

/// How long one request besides the watches (a Secret read, a status or Event write) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A problem to report on one object.
#[derive(Clone, Debug, PartialEq)]
struct EventWant {
    kind: &'static str,
    key: Key,
    uid: Option<String>,
    version: Option<String>,
    problem: Problem,
}

/// The Events the problems of one compilation call for.
fn event_wants(objs: &Objects, ours: &BTreeSet<Key>, problems: &[Problem]) -> Vec<EventWant> {
    let mut out = Vec::new();
    for p in problems {
        for (kind, key, meta) in involved(objs, ours, p) {
            out.push(EventWant {
                kind,
                key,
                uid: meta.uid.clone(),
                version: meta.resource_version.clone(),
                problem: p.clone(),
            });
        }
    }
    out
}

/// The objects an Event about `p` belongs on: the Ingress itself; for a Secret or a Service,
/// each Ingress of ours the compiler names as using it; a ConfigMap gets its own.
fn involved<'a>(objs: &'a Objects, ours: &BTreeSet<Key>, p: &Problem) -> Vec<(&'static str, Key, &'a ObjectMeta)> {
    let key = |s: &str| s.split_once('/').map(|(ns, n)| Key::new(ns, n));
    let ingress = |k: Key| {
        let i = objs.ingresses.get(&k).filter(|_| ours.contains(&k))?;
        Some(("Ingress", k, &i.metadata))
    };
    match p.kind {
        "Ingress" => key(&p.object).and_then(ingress).into_iter().collect(),
        "ConfigMap" => key(&p.object)
            .and_then(|k| objs.config_maps.get(&k).map(|c| ("ConfigMap", k, &c.metadata)))
            .into_iter()
            .collect(),
        "Secret" | "Service" => p.related.iter().filter_map(|r| key(r)).filter_map(ingress).collect(),
        _ => Vec::new(),
    }
}

/// FNV-1a: a stable hash, so every leader names the same Event the same way.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn event(w: &EventWant, node: &str) -> K8sEvent {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let p = &w.problem;
    let (reason, type_) = match p.severity {
        Severity::Rejected => ("Rejected", "Warning"),
        Severity::Warning => ("Degraded", "Warning"),
    };
    let api_version = match w.kind {
        "Ingress" => "networking.k8s.io/v1",
        _ => "v1",
    };
    // Names are at most 253 characters. The suffix names this problem on this version of the
    // object, so a new leader re-reporting it finds the Event already there.
    let suffix = format!(
        "{:016x}",
        fnv1a(&[
            w.kind,
            &w.key.to_string(),
            w.version.as_deref().unwrap_or_default(),
            &p.reason
        ])
    );
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.{suffix}", truncate(&w.key.name, 200))),
            namespace: Some(w.key.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(w.kind.into()),
            name: Some(w.key.name.clone()),
            namespace: Some(w.key.namespace.clone()),
            uid: w.uid.clone(),
            resource_version: w.version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(format!("{}: {}", p.kind, truncate(&p.reason, 1024))),
        type_: Some(type_.into()),
        source: Some(EventSource {
            component: Some("raftgate".into()),
            host: Some(node.into()),
        }),
        reporting_component: Some(crate::compiler::CONTROLLER.into()),
        reporting_instance: Some(node.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses `namespace/name` (a bare name means `default`).
pub(crate) fn config_map_key(name: &str) -> Key {
    match name.split_once('/') {
        Some((ns, n)) => Key::new(ns, n),
        None => Key::new("default", name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::seeded(7);
        let delays: Vec<Duration> = b.by_ref().take(12).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = WatchBackoff::step(u32::try_from(i).unwrap());
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {i}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        assert_eq!(WatchBackoff::step(0), Duration::from_millis(250));
        assert_eq!(WatchBackoff::step(3), Duration::from_secs(2));
        assert_eq!(WatchBackoff::step(5), WatchBackoff::MAX);
        assert_eq!(WatchBackoff::step(u32::MAX), WatchBackoff::MAX);
        assert!(delays.iter().all(|d| *d <= WatchBackoff::MAX));
        // Jittered: the capped delays are not all the same, and another seed draws other delays.
        assert!(delays[6..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
        let other: Vec<Duration> = WatchBackoff::seeded(8).take(12).collect();
        assert_ne!(delays, other);
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(250));
    }

    fn ingress(ns: &str, name: &str, host: &str, class: &str) -> Ingress {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "resourceVersion": "1"},
            "spec": {
                "ingressClassName": class,
                "tls": [{"hosts": [host], "secretName": format!("{name}-tls")}],
                "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]
            }
        }))
        .unwrap()
    }

    fn store() -> Store {
        Store::new(vec![
            Scope {
                kind: "Ingress",
                namespace: Some("a".into()),
                name: None,
            },
            Scope {
                kind: "Ingress",
                namespace: Some("b".into()),
                name: None,
            },
            Scope {
                kind: "Secret",
                namespace: None,
                name: None,
            },
        ])
    }

    fn ev(e: Event<Ingress>) -> Update {
        Update::Object(map_event(e, Object::Ingress))
    }

    #[test]
    fn nothing_compiles_until_every_watcher_listed_and_a_relist_replaces_only_its_scope() {
        let mut s = store();
        s.apply(0, ev(Event::Init));
        s.apply(0, ev(Event::InitApply(ingress("a", "x", "x.test", "raftgate"))));
        s.apply(0, ev(Event::InitApply(ingress("a", "y", "y.test", "raftgate"))));
        assert!(s.objects.ingresses.is_empty(), "a list in progress is buffered");
        assert!(s.apply(0, ev(Event::InitDone)).compile);
        s.apply(1, ev(Event::Init));
        s.apply(1, ev(Event::InitApply(ingress("b", "z", "z.test", "raftgate"))));
        s.apply(1, ev(Event::InitDone));
        assert!(!s.synced(), "the Secret watcher has not listed yet");
        s.apply(2, Update::SecretMeta(Event::Init));
        s.apply(2, Update::SecretMeta(Event::InitDone));
        assert!(s.synced());
        assert_eq!(s.objects.ingresses.len(), 3);

        // After 410 Gone the watcher relists namespace a: y was deleted meanwhile, w added.
        s.apply(0, ev(Event::Init));
        s.apply(0, ev(Event::InitApply(ingress("a", "x", "x.test", "raftgate"))));
        s.apply(0, ev(Event::InitApply(ingress("a", "w", "w.test", "raftgate"))));
        assert_eq!(
            s.objects.ingresses.len(),
            3,
            "the old state serves until the relist is complete"
        );
        s.apply(0, ev(Event::InitDone));
        let keys: Vec<String> = s.objects.ingresses.keys().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            ["a/w", "a/x", "b/z"],
            "no gap, no stale object, namespace b untouched"
        );
    }

    #[test]
    fn a_status_only_change_does_not_recompile() {
        let mut s = store();
        let mut i = ingress("a", "x", "x.test", "raftgate");
        assert!(s.apply(0, ev(Event::Apply(i.clone()))).compile);
        i.metadata.resource_version = Some("2".into());
        i.status =
            serde_json::from_value(serde_json::json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})).unwrap();
        let d = s.apply(0, ev(Event::Apply(i.clone())));
        assert!(!d.compile && d.status);
        i.metadata.annotations = Some([("nginx.ingress.kubernetes.io/ssl-redirect".into(), "false".into())].into());
        assert!(s.apply(0, ev(Event::Apply(i.clone()))).compile);
        assert!(s.apply(0, ev(Event::Delete(i))).compile);
        assert!(s.objects.ingresses.is_empty());
    }

    #[test]
    fn only_secrets_our_ingresses_use_are_wanted() {
        let mut s = store();
        let mut i = ingress("a", "x", "x.test", "raftgate");
        i.metadata.annotations = Some([(AUTH_SECRET_ANNOTATION.into(), "auth/users".into())].into());
        s.apply(0, ev(Event::Apply(i)));
        s.apply(0, ev(Event::Apply(ingress("a", "other", "o.test", "nginx"))));
        let ours: BTreeSet<Key> = [Key::new("a", "x")].into();
        let used: Vec<String> = s.used_secrets(&ours).iter().map(ToString::to_string).collect();
        assert_eq!(used, ["a/x-tls", "auth/users"]);
    }

    #[test]
    fn status_points_ours_at_the_addresses_and_clears_only_what_we_wrote() {
        let mut objs = Objects::default();
        let mut ours_ing = ingress("a", "x", "x.test", "raftgate");
        ours_ing.status =
            serde_json::from_value(serde_json::json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})).unwrap();
        let mut left = ingress("a", "left", "l.test", "nginx");
        left.status = serde_json::from_value(serde_json::json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}, {"hostname": "lb.test"}, {"ip": "10.0.0.1"}]}})).unwrap();
        let mut foreign = ingress("a", "foreign", "f.test", "nginx");
        foreign.status =
            serde_json::from_value(serde_json::json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}})).unwrap();
        let done = ingress("a", "done", "d.test", "raftgate");
        for i in [ours_ing, left, foreign, done] {
            objs.ingresses.insert(Key::of(&i.metadata), i);
        }
        let ours: BTreeSet<Key> = [Key::new("a", "x"), Key::new("a", "done")].into();
        let addrs = ["10.0.0.2".to_string(), "lb.test".into(), "10.0.0.1".into()];
        // "left" was ours once; "foreign" never was, though it shows the same addresses.
        let were_ours: BTreeSet<Key> = [Key::new("a", "x"), Key::new("a", "left")].into();
        let mut foreign_same = ingress("a", "foreign-same", "fs.test", "nginx");
        foreign_same.status = objs.ingresses[&Key::new("a", "left")].status.clone();
        objs.ingresses.insert(Key::new("a", "foreign-same"), foreign_same);
        let wants = wanted_status(&objs, &ours, &were_ours, &addrs);
        let summary: Vec<(String, usize)> = wants.iter().map(|w| (w.key.to_string(), w.want.len())).collect();
        assert_eq!(summary, [("a/done".into(), 3), ("a/left".into(), 0), ("a/x".into(), 3)]);
        // Once written, nothing more is wanted.
        for w in wants {
            let i = objs.ingresses.get_mut(&w.key).unwrap();
            i.status = Some(Default::default());
            i.status.as_mut().unwrap().load_balancer =
                Some(k8s_openapi::api::networking::v1::IngressLoadBalancerStatus { ingress: Some(w.want) });
        }
        assert_eq!(wanted_status(&objs, &ours, &were_ours, &addrs), []);
        assert_eq!(
            wanted_status(&objs, &ours, &were_ours, &[]),
            [],
            "no addresses: status is left alone"
        );
    }

    #[test]
    fn events_land_on_the_ingresses_the_compiler_names() {
        let mut objs = Objects::default();
        for i in [
            ingress("a", "x", "x.test", "raftgate"),
            ingress("a", "y", "y.test", "raftgate"),
            ingress("b", "z", "z.test", "raftgate"),
        ] {
            objs.ingresses.insert(Key::of(&i.metadata), i);
        }
        let ours: BTreeSet<Key> = objs.ingresses.keys().cloned().collect();
        let p = |kind, object: &str, related: &[&str]| Problem {
            kind,
            object: object.into(),
            severity: Severity::Warning,
            reason: "bad".into(),
            fix: String::new(),
            related: related.iter().map(ToString::to_string).collect(),
        };
        let names = |v: Vec<(&str, Key, &ObjectMeta)>| v.into_iter().map(|(_, k, _)| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(involved(&objs, &ours, &p("Secret", "a/x-tls", &["a/x"]))),
            ["a/x"]
        );
        assert_eq!(
            names(involved(
                &objs,
                &ours,
                &p("Service", "a/web", &["a/x", "a/y", "a/gone"])
            )),
            ["a/x", "a/y"]
        );
        assert_eq!(names(involved(&objs, &ours, &p("Ingress", "b/z", &[]))), ["b/z"]);
        assert!(involved(&objs, &ours, &p("Ingress", "b/gone", &[])).is_empty());
        let theirs: BTreeSet<Key> = BTreeSet::new();
        assert!(
            involved(&objs, &theirs, &p("Ingress", "b/z", &[])).is_empty(),
            "not ours: no Event"
        );
        assert_eq!(truncate("héllo", 2), "h");
    }
}
