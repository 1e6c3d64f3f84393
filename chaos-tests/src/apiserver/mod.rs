//! An in-process test Kubernetes API server with fault injection, for driving kube-rs watchers in tests.
//!
//! Plain HTTP/1.1 with the real server's paths, objects as `serde_json::Value`. Served types:
//! core/v1 namespaces, nodes (cluster-scoped), services, endpoints, secrets, configmaps, events, pods;
//! networking.k8s.io/v1 ingresses, ingressclasses (cluster-scoped); discovery.k8s.io/v1 endpointslices;
//! events.k8s.io/v1 events; coordination.k8s.io/v1 leases. Namespaces, nodes, services, pods and ingresses
//! have a `status` subresource. Any namespace name is accepted without creating it.
//!
//! What follows the real server:
//! - one global resourceVersion (etcd-revision-like, decimal strings, strictly increasing); create sets
//!   `uid`, `creationTimestamp`, `generation: 1`; `generation` is bumped when anything outside `metadata`
//!   and `status` changes; writes that change nothing keep the resourceVersion and emit no event;
//! - 409 `AlreadyExists`, 409 `Conflict` on a stale `metadata.resourceVersion` (PUT, and PATCH bodies that
//!   carry one), 404 `NotFound`, 400 `BadRequest` on namespace/name/kind mismatch, 422 `Invalid` names,
//!   500 for a resourceVersion on create, 415 for server-side apply; every error is a `Status` body;
//! - merge patch (RFC 7386; strategic merge patch is treated as a merge patch), JSON patch (RFC 6902);
//! - the status subresource changes only `.status`; the main resource keeps `.status` on PUT/PATCH; create
//!   resets the status of Ingresses and Services (`{"loadBalancer": {}}`), Namespaces and Pods;
//! - DELETE returns the last state stamped with the deletion revision, which the DELETED event carries too;
//!   objects with finalizers get a `deletionTimestamp` (202, MODIFIED) and go when the finalizers are removed;
//!   DeleteOptions preconditions; deletecollection;
//! - lists: `{Kind}List` with the current revision; `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `x`,
//!   `!x`, `>`, `<`), `fieldSelector` (`metadata.name`, `metadata.namespace` and the per-type fields the real
//!   server supports, e.g. Secret `type`; others are 400); `limit`/`continue` pages are a consistent snapshot
//!   at the first page's revision (rebuilt from the history) with `remainingItemCount`; `resourceVersion`
//!   unset / `0` / `NotOlderThan` (waits up to 3 s for a future revision, then 504 "Too large resource
//!   version") / `Exact` (from the history); a compacted continue token or Exact revision is 410 `Expired`;
//! - watches: chunked JSON lines; from `resourceVersion=R` every later event from the history, then live,
//!   with no gap or duplicate; from a compacted R a 200 response with one ERROR event (410 `Expired`,
//!   "too old resource version") and the end; unset or `0` starts with synthetic ADDED events;
//!   `allowWatchBookmarks` gives BOOKMARKs at a set interval (never otherwise) carrying the current revision,
//!   every event up to which has been sent before it; `timeoutSeconds` (default [`ApiServerConfig::default_watch_timeout`]);
//!   selectors filter events, an update that makes an object (stop) match is sent as ADDED (DELETED);
//!   `sendInitialEvents=true` streaming lists end the initial events with a BOOKMARK annotated
//!   `k8s.io/initial-events-end`, as kube-rs's `streaming_lists()` expects;
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`), `/version`, `/healthz`.
//!
//! Not implemented: authentication and authorization, TLS, server-side apply, protobuf and YAML bodies,
//! `dryRun` (refused with 400), managedFields, schema validation, defaulting beyond the above, conversion
//! between core/v1 and events.k8s.io/v1 events (they are separate stores), controllers (no namespace
//! cascade, no garbage collection, no EndpointSlice mirroring, no graceful pod deletion), watch of a single
//! object by name path, aggregated discovery.
//!
//! Faults are methods of [`ApiServer`] and HTTP endpoints on both listeners (the control listener,
//! [`ApiServer::control_url`], serves only these and is never faulted): `POST /_faults/refuse-connections?enabled=BOOL`,
//! `/_faults/stall?enabled=BOOL`, `/_faults/close-watches`, `/_faults/expire-next-watches?n=N`,
//! `/_faults/fail-watches-410?enabled=BOOL`, `/_faults/compact[?rv=N]`, `/_faults/pause`, `/_faults/resume`,
//! `/_faults/reset`, `/_faults/bookmark-interval?ms=N`, `/_faults/watch-timeout?seconds=N`,
//! `/_faults/max-history[?n=N]`; `GET /_faults/stats`, `GET /_faults/requests`, `DELETE /_faults/requests`.
//! All but `GET /_faults/requests` answer with the stats document.

mod http;
mod patch;
mod resources;
mod selector;
mod store;
mod util;

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use serde_json::Value;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::task::JoinHandle;

use self::store::Preconditions;
use self::store::ReadAt;
use self::store::Store;

/// Errors of the test API server's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object's `apiVersion`/`kind` is not one the server serves.
    #[error("the test API server does not serve kind {kind:?} of apiVersion {api_version:?}")]
    UnknownKind {
        /// The apiVersion asked for.
        api_version: String,
        /// The kind asked for.
        kind: String,
    },
    /// The object has no `apiVersion` or `kind`.
    #[error("the object has no apiVersion or kind")]
    MissingTypeMeta,
    /// The server refused the operation, as it would over HTTP (the fields of the `Status`).
    #[error("{reason} ({code}): {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The `Status.reason` (`NotFound`, `AlreadyExists`, `Conflict`, ...).
        reason: String,
        /// The `Status.message`.
        message: String,
    },
}

impl Error {
    /// The HTTP status code of an [`Error::Api`].
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_api(e: store::ApiError) -> Self {
        Self::Api {
            code: e.code,
            reason: e.reason.to_string(),
            message: e.message,
        }
    }
}

/// One request as the server saw it (fault endpoints under `/_faults/` are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The response status (200 for watches that started streaming, even if they then sent an ERROR event).
    pub status: u16,
    /// Whether this was a watch request.
    pub watch: bool,
    /// When the request arrived.
    pub at: SystemTime,
}

impl RequestRecord {
    fn to_json(&self) -> Value {
        let at = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        json!({
            "method": self.method,
            "path": self.path,
            "userAgent": self.user_agent,
            "status": self.status,
            "watch": self.watch,
            "at": at,
        })
    }
}

/// Start-up settings of an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address of the Kubernetes API (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address of the fault-control listener, which serves only `/_faults/` and is never faulted.
    /// `None`: the same IP as `listen`, a free port.
    pub control_listen: Option<SocketAddr>,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open.
    pub default_watch_timeout: Duration,
    /// Events kept in the history before the oldest are compacted away (None: until `compact`).
    pub max_history: Option<usize>,
    /// Request records kept (oldest dropped first).
    pub max_request_log: usize,
}

impl ApiServerConfig {
    /// Defaults for `listen`: bookmarks every second, watches closed after 5 minutes, unbounded history.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            control_listen: None,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(300),
            max_history: None,
            max_request_log: 100_000,
        }
    }
}

#[derive(Debug)]
struct Faults {
    refuse: AtomicBool,
    stall: watch::Sender<bool>,
    paused: AtomicBool,
    expire_next: AtomicU64,
    fail_410: AtomicBool,
    held: watch::Sender<u64>,
}

#[derive(Debug)]
struct Settings {
    bookmark_interval: Duration,
    default_watch_timeout: Duration,
    max_request_log: usize,
}

/// State shared by the listener, connection and watch tasks.
#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    store: Mutex<Store>,
    rv_rx: watch::Receiver<u64>,
    faults: Faults,
    settings: Mutex<Settings>,
    requests: Mutex<VecDeque<RequestRecord>>,
    total_requests: AtomicU64,
    open_watches: watch::Sender<usize>,
    total_watches: AtomicU64,
    /// Bumped to end every open watch stream.
    close_watches: watch::Sender<u64>,
    connections: Mutex<HashMap<u64, AbortHandle>>,
    next_conn: AtomicU64,
    listener_task: Mutex<Option<JoinHandle<()>>>,
    control_task: Mutex<Option<JoinHandle<()>>>,
    runtime: Handle,
    shut: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn current_rv(&self) -> u64 {
        *self.rv_rx.borrow()
    }

    /// Waits (up to `max`) until the revision reaches `rv`; false if it did not.
    async fn wait_for_rv(&self, rv: u64, max: Duration) -> bool {
        let mut rx = self.rv_rx.clone();
        matches!(tokio::time::timeout(max, rx.wait_for(|v| *v >= rv)).await, Ok(Ok(_)))
    }

    fn close_watches(&self) {
        self.close_watches.send_modify(|g| *g += 1);
    }

    /// Drops every Kubernetes-API connection except `except` (the one asking, so it can get its answer).
    fn kill_connections(&self, except: Option<u64>) {
        let mut conns = lock(&self.connections);
        conns.retain(|id, handle| {
            if Some(*id) == except {
                true
            } else {
                handle.abort();
                false
            }
        });
    }

    fn refuse_connections(&self, on: bool, except: Option<u64>) {
        self.faults.refuse.store(on, Ordering::SeqCst);
        if on {
            self.close_watches();
            self.kill_connections(except);
        }
    }

    fn stall(&self, on: bool) {
        self.faults.stall.send_replace(on);
    }

    async fn wait_unstalled(&self) {
        let mut rx = self.faults.stall.subscribe();
        // The sender lives as long as `self`, so this only ends when unstalled.
        let _ = rx.wait_for(|stalled| !*stalled).await;
    }

    /// Closes the listening socket (waiting until it is really closed, so that connects are refused as soon as
    /// this returns), drops the connections and ends the watches.
    async fn pause(&self, except: Option<u64>) {
        self.faults.paused.store(true, Ordering::SeqCst);
        let task = lock(&self.listener_task).take();
        self.close_watches();
        self.kill_connections(except);
        if let Some(task) = task {
            task.abort();
            // A cancelled task's future (and with it the listener) is dropped before its JoinHandle completes.
            let _ = task.await;
        }
    }

    fn resume(self: &Arc<Self>) -> Result<(), Error> {
        let mut task = lock(&self.listener_task);
        if task.is_some() || self.shut.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _enter = self.runtime.enter();
        let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        };
        let listener = bind(self.addr).map_err(|source| Error::Bind {
            addr: self.addr,
            source,
        })?;
        *task = Some(self.runtime.spawn(http::accept_loop(self.clone(), listener, false)));
        self.faults.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn compact_to(&self, rv: u64) -> u64 {
        self.store().compact_to(rv)
    }

    fn compact(&self) -> u64 {
        let mut store = self.store();
        let rv = store.rv();
        store.compact_to(rv)
    }

    fn reset_faults(&self) {
        self.faults.refuse.store(false, Ordering::SeqCst);
        self.stall(false);
        self.faults.expire_next.store(0, Ordering::SeqCst);
        self.faults.fail_410.store(false, Ordering::SeqCst);
    }

    /// Whether the next watch must be failed with an in-stream 410 (consumes one `expire_next`).
    fn take_forced_expiry(&self) -> bool {
        if self.faults.fail_410.load(Ordering::SeqCst) {
            return true;
        }
        self.faults
            .expire_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn record(&self, rec: RequestRecord) {
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        let max = lock(&self.settings).max_request_log;
        let mut log = lock(&self.requests);
        log.push_back(rec);
        while log.len() > max {
            log.pop_front();
        }
    }

    fn stats(&self) -> Value {
        let (rv, compacted, history, objects) = {
            let store = self.store();
            (store.rv(), store.compacted(), store.history_len(), store.object_count())
        };
        let settings = lock(&self.settings);
        json!({
            "resourceVersion": rv.to_string(),
            "compactedResourceVersion": compacted.to_string(),
            "historyEvents": history,
            "objects": objects,
            "openWatches": *self.open_watches.borrow(),
            "totalWatches": self.total_watches.load(Ordering::Relaxed),
            "totalRequests": self.total_requests.load(Ordering::Relaxed),
            "bookmarkIntervalMs": settings.bookmark_interval.as_millis() as u64,
            "defaultWatchTimeoutSeconds": settings.default_watch_timeout.as_secs(),
            "faults": {
                "refuseConnections": self.faults.refuse.load(Ordering::SeqCst),
                "stalled": *self.faults.stall.borrow(),
                "heldRequests": *self.faults.held.borrow(),
                "paused": self.faults.paused.load(Ordering::SeqCst),
                "expireNextWatches": self.faults.expire_next.load(Ordering::SeqCst),
                "failWatchesWith410": self.faults.fail_410.load(Ordering::SeqCst),
            },
        })
    }

    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in [lock(&self.listener_task).take(), lock(&self.control_task).take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        self.close_watches();
        self.kill_connections(None);
        self.stall(false);
    }
}

/// A running test API server. Dropping it (or [`ApiServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct ApiServer {
    inner: Arc<Inner>,
    control_addr: SocketAddr,
}

impl ApiServer {
    /// Starts a server listening on `addr` (port 0 allowed), with a control listener on a free port.
    pub async fn start(addr: SocketAddr) -> Result<Self, Error> {
        Self::start_with(ApiServerConfig::new(addr)).await
    }

    /// Starts a server with explicit settings.
    pub async fn start_with(config: ApiServerConfig) -> Result<Self, Error> {
        let listener = TcpListener::bind(config.listen).await.map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let control_want = config.control_listen.unwrap_or_else(|| SocketAddr::new(addr.ip(), 0));
        let control = TcpListener::bind(control_want).await.map_err(|source| Error::Bind {
            addr: control_want,
            source,
        })?;
        let control_addr = control.local_addr().map_err(|source| Error::Bind {
            addr: control_want,
            source,
        })?;
        let (rv_tx, rv_rx) = watch::channel(1);
        let mut store = Store::new(rv_tx);
        store.set_max_history(config.max_history);
        let inner = Arc::new(Inner {
            addr,
            store: Mutex::new(store),
            rv_rx,
            faults: Faults {
                refuse: AtomicBool::new(false),
                stall: watch::Sender::new(false),
                paused: AtomicBool::new(false),
                expire_next: AtomicU64::new(0),
                fail_410: AtomicBool::new(false),
                held: watch::Sender::new(0),
            },
            settings: Mutex::new(Settings {
                bookmark_interval: config.bookmark_interval,
                default_watch_timeout: config.default_watch_timeout,
                max_request_log: config.max_request_log,
            }),
            requests: Mutex::new(VecDeque::new()),
            total_requests: AtomicU64::new(0),
            open_watches: watch::Sender::new(0),
            total_watches: AtomicU64::new(0),
            close_watches: watch::Sender::new(0),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            listener_task: Mutex::new(None),
            control_task: Mutex::new(None),
            runtime: Handle::current(),
            shut: AtomicBool::new(false),
        });
        *lock(&inner.listener_task) = Some(tokio::spawn(http::accept_loop(inner.clone(), listener, false)));
        *lock(&inner.control_task) = Some(tokio::spawn(http::accept_loop(inner.clone(), control, true)));
        tracing::debug!(%addr, %control_addr, "test API server listening");
        Ok(Self { inner, control_addr })
    }

    /// The Kubernetes API address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://ADDR` of the Kubernetes API.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The address of the control listener (serves `/_faults/` only; never faulted, never paused).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// `http://ADDR` of the control listener.
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// A kubeconfig (no auth, namespace `default`) pointing at this server, for `Kubeconfig::from_yaml`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// Stops listening, drops all connections and ends all watches. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn kind_of(obj: &Value) -> Result<(usize, &resources::ResourceType), Error> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        let kind = obj.get("kind").and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            return Err(Error::MissingTypeMeta);
        };
        Self::resource(api_version, kind)
    }

    fn resource(api_version: &str, kind: &str) -> Result<(usize, &'static resources::ResourceType), Error> {
        resources::by_kind(api_version, kind)
            .map(|i| (i, &resources::RESOURCES[i]))
            .ok_or_else(|| Error::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            })
    }

    fn namespace_of(rt: &resources::ResourceType, obj: &Value) -> String {
        if !rt.namespaced {
            return String::new();
        }
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string()
    }

    fn name_of(obj: &Value) -> String {
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// Creates an object like `POST` would (namespace defaults to `default` for namespaced kinds).
    pub fn create(&self, obj: &Value) -> Result<Value, Error> {
        let (res, rt) = Self::kind_of(obj)?;
        let ns = Self::namespace_of(rt, obj);
        let created = self
            .inner
            .store()
            .create(res, &ns, obj.clone())
            .map_err(Error::from_api)?;
        Ok((*created).clone())
    }

    /// Creates the object, or replaces it unconditionally (ignoring any `resourceVersion` in `obj`); like
    /// `PUT`, the `.status` of a type with a status subresource is kept, so use [`ApiServer::patch_status`].
    pub fn apply(&self, obj: &Value) -> Result<Value, Error> {
        let (res, rt) = Self::kind_of(obj)?;
        let ns = Self::namespace_of(rt, obj);
        let name = Self::name_of(obj);
        let mut body = obj.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("uid");
        }
        let mut store = self.inner.store();
        let exists = store.get(res, &ns, &name).is_ok();
        let out = if exists {
            store.update(res, &ns, &name, body, false).map(|(o, _)| o)
        } else {
            store.create(res, &ns, body)
        };
        out.map(|o| (*o).clone()).map_err(Error::from_api)
    }

    /// Replaces an object like `PUT` would (a `resourceVersion` in `obj` is a precondition).
    pub fn replace(&self, obj: &Value) -> Result<Value, Error> {
        let (res, rt) = Self::kind_of(obj)?;
        let ns = Self::namespace_of(rt, obj);
        let name = Self::name_of(obj);
        let (out, _) = self
            .inner
            .store()
            .update(res, &ns, &name, obj.clone(), false)
            .map_err(Error::from_api)?;
        Ok((*out).clone())
    }

    /// Merge-patches an object (RFC 7386), like `PATCH` with `application/merge-patch+json`.
    pub fn patch(&self, api_version: &str, kind: &str, ns: &str, name: &str, patch: &Value) -> Result<Value, Error> {
        self.patch_inner(api_version, kind, ns, name, patch, false)
    }

    /// Merge-patches the status subresource: only `.status` changes.
    pub fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, Error> {
        self.patch_inner(api_version, kind, ns, name, patch, true)
    }

    fn patch_inner(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        patch: &Value,
        status: bool,
    ) -> Result<Value, Error> {
        let (res, rt) = Self::resource(api_version, kind)?;
        if status && !rt.status_subresource {
            return Err(Error::from_api(store::ApiError::not_found(rt, name)));
        }
        let out = self
            .inner
            .store()
            .patch(res, ns, name, store::PatchType::Merge, patch, status)
            .map_err(Error::from_api)?;
        Ok((*out).clone())
    }

    /// Reads one object (`ns` is ignored for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Result<Value, Error> {
        let (res, _) = Self::resource(api_version, kind)?;
        let out = self.inner.store().get(res, ns, name).map_err(Error::from_api)?;
        Ok((*out).clone())
    }

    /// Deletes one object; returns it as the server does (stamped with the deletion revision, or with a
    /// `deletionTimestamp` if finalizers keep it).
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Result<Value, Error> {
        let (res, _) = Self::resource(api_version, kind)?;
        let (out, _) = self
            .inner
            .store()
            .delete(res, ns, name, &Preconditions::default())
            .map_err(Error::from_api)?;
        Ok((*out).clone())
    }

    /// The current objects of a kind, in one namespace or all (`None`), in key order.
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Result<Vec<Value>, Error> {
        let (res, _) = Self::resource(api_version, kind)?;
        let page = self
            .inner
            .store()
            .list(res, ns, &selector::Selectors::default(), ReadAt::Latest, "", None)
            .map_err(Error::from_api)?;
        Ok(page.items.iter().map(|o| (**o).clone()).collect())
    }

    /// The newest resourceVersion (etcd-revision-like, global to all types).
    pub fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }

    /// The compaction point: watches from, Exact lists at and continue tokens of older revisions get 410.
    pub fn compacted_rv(&self) -> u64 {
        self.inner.store().compacted()
    }

    /// Fault: drop every open connection (ending watches abruptly) and accept-then-drop new ones while on.
    pub fn refuse_connections(&self, on: bool) {
        self.inner.refuse_connections(on, None);
    }

    /// Fault: hold every Kubernetes API request (and stop watch streams from sending) until turned off.
    pub fn stall(&self, on: bool) {
        self.inner.stall(on);
    }

    /// Fault: end every open watch stream cleanly (terminating chunk), as a server-side timeout would.
    pub fn close_watches(&self) {
        self.inner.close_watches();
    }

    /// Fault: the next `n` watch requests get a 200 response carrying only an ERROR event with a 410 Expired
    /// `Status`, as after an etcd compaction.
    pub fn expire_next_watches(&self, n: u64) {
        self.inner.faults.expire_next.store(n, Ordering::SeqCst);
    }

    /// Fault: while on, every watch request gets the in-stream 410 Expired ERROR event.
    pub fn fail_watches_with_410(&self, on: bool) {
        self.inner.faults.fail_410.store(on, Ordering::SeqCst);
    }

    /// Compacts the history at the current revision; returns the compaction point.
    pub fn compact(&self) -> u64 {
        self.inner.compact()
    }

    /// Compacts the history at `rv` (capped at the current revision); returns the compaction point.
    pub fn compact_to(&self, rv: u64) -> u64 {
        self.inner.compact_to(rv)
    }

    /// Fault: close the listening socket (new connections get ECONNREFUSED once this returns) and drop all
    /// connections, as when the API server process is down.
    pub async fn pause(&self) {
        self.inner.pause(None).await;
    }

    /// Listens again on the same address after [`ApiServer::pause`].
    pub fn resume(&self) -> Result<(), Error> {
        self.inner.resume()
    }

    /// Whether the listener is paused.
    pub fn is_paused(&self) -> bool {
        self.inner.faults.paused.load(Ordering::SeqCst)
    }

    /// Turns off refusal, stalls and forced 410s (a paused listener stays paused).
    pub fn reset_faults(&self) {
        self.inner.reset_faults();
    }

    /// Interval between BOOKMARK events, for watches started afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        lock(&self.inner.settings).bookmark_interval = interval;
    }

    /// How long watches without `timeoutSeconds` stay open, for watches started afterwards.
    pub fn set_default_watch_timeout(&self, timeout: Duration) {
        lock(&self.inner.settings).default_watch_timeout = timeout;
    }

    /// Bounds the history (older events are compacted away as new ones arrive); `None` keeps everything.
    pub fn set_max_history(&self, max: Option<usize>) {
        self.inner.store().set_max_history(max);
    }

    /// The recorded requests, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    /// Watch streams open right now.
    pub fn open_watches(&self) -> usize {
        *self.inner.open_watches.borrow()
    }

    /// Watch requests served since start.
    pub fn total_watches(&self) -> u64 {
        self.inner.total_watches.load(Ordering::Relaxed)
    }

    /// Requests currently held by [`ApiServer::stall`].
    pub fn held_requests(&self) -> u64 {
        *self.inner.faults.held.borrow()
    }

    /// Waits until at least `n` requests are held by [`ApiServer::stall`].
    pub async fn wait_for_held_requests(&self, n: u64) {
        let mut rx = self.inner.faults.held.subscribe();
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Waits until at least `n` watch streams are open.
    pub async fn wait_for_open_watches(&self, n: usize) {
        self.wait_open_watches(|open| open >= n).await;
    }

    /// Waits until the number of open watch streams satisfies `pred`.
    pub async fn wait_open_watches(&self, mut pred: impl FnMut(usize) -> bool) {
        let mut rx = self.inner.open_watches.subscribe();
        let _ = rx.wait_for(|open| pred(*open)).await;
    }

    /// Waits until the total number of watch requests served reaches `n`.
    pub async fn wait_for_total_watches(&self, n: u64) {
        let mut rx = self.inner.open_watches.subscribe();
        loop {
            if self.total_watches() >= n {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The counters and fault switches, as `GET /_faults/stats` returns them.
    pub fn stats(&self) -> Value {
        self.inner.stats()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// A kubeconfig for a server URL: one cluster, one user without credentials, namespace `default`.
pub fn kubeconfig_yaml(server_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: raftgate-test
  cluster:
    server: {server_url}
users:
- name: raftgate-test
  user: {{}}
contexts:
- name: raftgate-test
  context:
    cluster: raftgate-test
    user: raftgate-test
    namespace: default
current-context: raftgate-test
preferences: {{}}
"
    )
}
