//! The HTTP side: accept loops, routing of Kubernetes paths, list/watch/write handlers and `/_faults/`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::SystemTime;

use bytes::Bytes;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::header;
use http_body::Frame;
use http_body::SizeHint;
use http_body_util::BodyExt;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use serde_json::Value;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::Inner;
use super::RequestRecord;
use super::lock;
use super::resources;
use super::resources::RESOURCES;
use super::resources::ResourceType;
use super::selector::FieldSelector;
use super::selector::LabelSelector;
use super::selector::Selectors;
use super::store::ApiError;
use super::store::EventType;
use super::store::PatchType;
use super::store::Preconditions;
use super::store::ReadAt;
use super::store::StoredEvent;
use super::store::WatchFrom;
use super::store::WatchStart;
use super::store::too_large;
use super::store::too_old;
use super::util;

/// How long a read at a future resourceVersion waits for the store to catch up before 504.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

/// Response bodies: a complete buffer, or a stream of chunks (watches).
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes_response(status, bytes.into())
}

fn bytes_response(status: u16, bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Some(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status_json())
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

/// Accepts connections until aborted. The control listener serves only `/_faults/` and ignores faults.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, control: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "test API server accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let svc_inner = inner.clone();
        let svc = service_fn(move |req| {
            let inner = svc_inner.clone();
            async move { Ok::<_, Infallible>(handle(inner, req, id, control).await) }
        });
        let guard = ConnGuard {
            inner: inner.clone(),
            id,
            control,
        };
        // Register under the lock so a connection that ends at once cannot leave a stale entry, and check the
        // refusal switch under it too: `refuse_connections` sets the switch before it takes the lock to drop
        // connections, so every connection is either refused here or dropped there.
        let mut conns = lock(&inner.connections);
        if !control && inner.faults.refuse.load(Ordering::SeqCst) {
            drop(conns);
            drop(stream);
            continue;
        }
        let task = tokio::spawn(async move {
            let _guard = guard;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "test API server connection ended with an error");
            }
        });
        if !control {
            conns.insert(id, task.abort_handle());
        }
    }
}

#[derive(Debug)]
struct ConnGuard {
    inner: Arc<Inner>,
    id: u64,
    control: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if !self.control {
            lock(&self.inner.connections).remove(&self.id);
        }
    }
}

/// Decrements the held-requests gauge when a stalled request is released or dropped.
struct HeldGuard<'a>(&'a Inner);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.faults.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>, conn: u64, control: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/_faults" || path.starts_with("/_faults/") {
        return faults(&inner, req, if control { None } else { Some(conn) }).await;
    }
    if control {
        return error_response(&not_found_path());
    }
    if *inner.faults.stall.borrow() {
        inner.faults.held.send_modify(|n| *n += 1);
        let _held = HeldGuard(&inner);
        inner.wait_unstalled().await;
    }
    let at = SystemTime::now();
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (resp, watch) = match serve(&inner, req).await {
        Ok(r) => r,
        Err(e) => (error_response(&e), false),
    };
    inner.record(RequestRecord {
        method,
        path: path_and_query,
        user_agent,
        status: resp.status().as_u16(),
        watch,
        at,
    });
    resp
}

/// A parsed Kubernetes resource path.
#[derive(Debug)]
struct Route {
    res: usize,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

enum Target {
    Doc(Value),
    Resource(Route),
}

fn route(inner: &Inner, path: &str, legacy_watch: &mut bool) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, mut rest) = match segs.as_slice() {
        ["version"] => return Ok(Target::Doc(resources::version_doc())),
        ["api"] => return Ok(Target::Doc(resources::core_versions_doc(&inner.addr.to_string()))),
        ["apis"] => return Ok(Target::Doc(resources::group_list_doc())),
        ["apis", group] => {
            return resources::group_single_doc(group)
                .map(Target::Doc)
                .ok_or_else(not_found_path);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] if resources::group_version_served(group, version) => {
            (*group, *version, rest)
        }
        _ => return Err(not_found_path()),
    };
    if rest.is_empty() {
        return Ok(Target::Doc(resources::resource_list_doc(group, version)));
    }
    if rest[0] == "watch" {
        *legacy_watch = true;
        rest = &rest[1..];
    }
    let find = |plural: &str| resources::by_plural(group, version, plural).ok_or_else(not_found_path);
    let route = match rest {
        ["namespaces", ns, sub] if group.is_empty() && (*sub == "status" || *sub == "finalize") => Route {
            res: find("namespaces")?,
            ns: None,
            name: Some(ns.to_string()),
            status: *sub == "status",
        },
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(plural)?;
            if !RESOURCES[res].namespaced {
                return Err(not_found_path());
            }
            Route {
                res,
                ns: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                status: match tail.get(1) {
                    None => false,
                    Some(&"status") => true,
                    Some(_) => return Err(not_found_path()),
                },
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(plural)?;
            if !tail.is_empty() && RESOURCES[res].namespaced {
                return Err(not_found_path());
            }
            Route {
                res,
                ns: None,
                name: tail.first().map(|s| s.to_string()),
                status: match tail.get(1) {
                    None => false,
                    Some(&"status") => true,
                    Some(_) => return Err(not_found_path()),
                },
            }
        }
        _ => return Err(not_found_path()),
    };
    if route.status && !RESOURCES[route.res].status_subresource {
        return Err(not_found_path());
    }
    Ok(Target::Resource(route))
}

/// Query parameters, with lookup of the last occurrence.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| matches!(v, "true" | "1" | "True" | "TRUE" | "t" | "T" | ""))
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: not JSON: {e}"
        ))
    })
}

/// Serves one Kubernetes API request. Returns the response and whether it was a watch.
async fn serve(inner: &Arc<Inner>, req: Request<Incoming>) -> Result<(Response<Body>, bool), ApiError> {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        let mut resp = Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        return Ok((resp, false));
    }
    let query = Query(util::parse_query(req.uri().query()));
    let mut legacy_watch = false;
    let route = match route(inner, &path, &mut legacy_watch)? {
        Target::Doc(doc) => {
            if req.method() != Method::GET {
                return Err(method_not_allowed(req.method()));
            }
            return Ok((json_response(200, &doc), false));
        }
        Target::Resource(route) => route,
    };
    if query.non_empty("dryRun").is_some() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the raftgate test API server",
        ));
    }
    let rt = &RESOURCES[route.res];
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let item_ns = route.ns.clone().unwrap_or_default();
    match (&route.name, method.clone()) {
        (None, Method::GET) => {
            if legacy_watch || query.flag("watch") == Some(true) {
                Ok((watch(inner, &route, &query).await?, true))
            } else {
                Ok((list(inner, &route, &query).await?, false))
            }
        }
        (None, Method::POST) => {
            if rt.namespaced && route.ns.is_none() {
                return Err(method_not_allowed(&method));
            }
            if content_type.contains("yaml") || content_type.contains("protobuf") {
                return Err(unsupported_media_type());
            }
            let body = parse_json(&read_body(req.into_body()).await?)?;
            let obj = inner.store().create(route.res, &item_ns, body)?;
            Ok((object_response(201, &obj), false))
        }
        (None, Method::DELETE) => {
            let selectors = parse_selectors(rt, &query)?;
            let mut store = inner.store();
            let page = store.list(route.res, route.ns.as_deref(), &selectors, ReadAt::Latest, "", None)?;
            let mut deleted = Vec::new();
            for obj in page.items {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let (out, _) = store.delete(route.res, ns, name, &Preconditions::default())?;
                deleted.push(out);
            }
            let rv = store.rv();
            drop(store);
            Ok((list_response(rt, rv, &deleted, None, None), false))
        }
        (Some(name), Method::GET) => {
            let obj = inner.store().get(route.res, &item_ns, name)?;
            Ok((object_response(200, &obj), false))
        }
        (Some(name), Method::PUT) => {
            if content_type.contains("yaml") || content_type.contains("protobuf") {
                return Err(unsupported_media_type());
            }
            let body = parse_json(&read_body(req.into_body()).await?)?;
            let (obj, created) = inner.store().update(route.res, &item_ns, name, body, route.status)?;
            Ok((object_response(if created { 201 } else { 200 }, &obj), false))
        }
        (Some(name), Method::PATCH) => {
            let patch_type = match content_type.as_str() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                _ => return Err(unsupported_media_type()),
            };
            let body = parse_json(&read_body(req.into_body()).await?)?;
            let obj = inner
                .store()
                .patch(route.res, &item_ns, name, patch_type, &body, route.status)?;
            Ok((object_response(200, &obj), false))
        }
        (Some(name), Method::DELETE) if !route.status => {
            let bytes = read_body(req.into_body()).await?;
            let mut pre = Preconditions::default();
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                let opts = parse_json(&bytes)?;
                if opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    return Err(ApiError::bad_request(
                        "dryRun is not supported by the raftgate test API server",
                    ));
                }
                let p = opts.get("preconditions");
                pre.uid = p.and_then(|p| p.get("uid")).and_then(Value::as_str).map(str::to_string);
                pre.resource_version = p
                    .and_then(|p| p.get("resourceVersion"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            let (obj, gone) = inner.store().delete(route.res, &item_ns, name, &pre)?;
            Ok((object_response(if gone { 200 } else { 202 }, &obj), false))
        }
        _ => Err(method_not_allowed(&method)),
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
    )
}

fn object_response(status: u16, obj: &Value) -> Response<Body> {
    json_response(status, obj)
}

fn parse_selectors(rt: &ResourceType, query: &Query) -> Result<Selectors, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    let fields =
        FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), rt).map_err(ApiError::bad_request)?;
    Ok(Selectors { labels, fields })
}

fn encode_continue(rv: u64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    util::base64_url(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = util::base64_decode(token).ok_or_else(|| bad("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    let rv = v
        .get("rv")
        .and_then(Value::as_u64)
        .filter(|rv| *rv > 0)
        .ok_or_else(|| bad("bad rv"))?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(|| bad("no start"))?;
    Ok((rv, start.to_string()))
}

fn list_response(
    rt: &ResourceType,
    rv: u64,
    items: &[Arc<Value>],
    continue_token: Option<String>,
    remaining: Option<u64>,
) -> Response<Body> {
    let mut metadata = serde_json::Map::new();
    metadata.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(c) = continue_token {
        metadata.insert("continue".into(), json!(c));
    }
    if let Some(r) = remaining {
        metadata.insert("remainingItemCount".into(), json!(r));
    }
    let head = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata});
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // the closing brace; items follow
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, &**item);
    }
    out.extend_from_slice(b"]}");
    bytes_response(200, out.into())
}

fn parse_rv_param(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

async fn list(inner: &Arc<Inner>, route: &Route, query: &Query) -> Result<Response<Body>, ApiError> {
    let rt = &RESOURCES[route.res];
    let selectors = parse_selectors(rt, query)?;
    let limit = match query.non_empty("limit") {
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
                .max(0) as usize,
        ),
        None => None,
    };
    let rv_param = query.non_empty("resourceVersion");
    let rv_match = query.non_empty("resourceVersionMatch");
    let (at, start) = if let Some(token) = query.non_empty("continue") {
        if rv_param.is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, start) = decode_continue(token)?;
        let compacted = inner.store().compacted();
        if rv < compacted {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a \
                 new list without the continue parameter, or use the continue token in this response to retrieve \
                 the remainder of the results. Continuing with the provided token results in an inconsistent list \
                 - objects that were created, modified, or deleted between the time the first chunk was returned \
                 and now may show up in the list.",
            ));
        }
        (ReadAt::Revision(rv), start)
    } else {
        let at = match (rv_param, rv_match) {
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (None, None) => ReadAt::Latest,
            (Some("0"), None | Some("NotOlderThan")) => ReadAt::Latest,
            (Some("0"), Some("Exact")) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (Some(rv), m @ (None | Some("NotOlderThan") | Some("Exact"))) => {
                let rv = parse_rv_param(rv)?;
                if !inner.wait_for_rv(rv, TOO_LARGE_WAIT).await {
                    return Err(too_large(rv, inner.current_rv()));
                }
                // With a limit and no explicit match, a non-zero resourceVersion means Exact (legacy paging).
                let exact = m == Some("Exact") || (m.is_none() && limit.is_some_and(|l| l > 0));
                if exact { ReadAt::Revision(rv) } else { ReadAt::Latest }
            }
            (_, Some(other)) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        };
        (at, String::new())
    };
    let page = inner
        .store()
        .list(route.res, route.ns.as_deref(), &selectors, at, &start, limit)?;
    let token = page.next_start.as_deref().map(|s| encode_continue(page.rv, s));
    Ok(list_response(rt, page.rv, &page.items, token, page.remaining))
}

/// What a watch task needs.
struct WatchTask {
    res: usize,
    ns: Option<String>,
    selectors: Selectors,
    bookmarks: bool,
    initial_events_end: bool,
    start: WatchStart,
}

/// Ends the open-watch gauge entry when a watch task ends.
struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn watch(inner: &Arc<Inner>, route: &Route, query: &Query) -> Result<Response<Body>, ApiError> {
    let rt = &RESOURCES[route.res];
    let selectors = parse_selectors(rt, query)?;
    let bookmarks = query.flag("allowWatchBookmarks") == Some(true);
    let send_initial = query.flag("sendInitialEvents");
    let rv_param = query.non_empty("resourceVersion");
    let rv_match = query.non_empty("resourceVersionMatch");
    let invalid = |msg: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {msg}"),
        )
    };
    match send_initial {
        Some(true) => {
            if !bookmarks {
                return Err(invalid(
                    "sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
            if rv_match != Some("NotOlderThan") {
                return Err(invalid(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
        }
        _ => {
            if rv_match.is_some() {
                return Err(invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
        }
    }
    // Without timeoutSeconds (or with 0) the server's own default applies, as in the real server.
    let timeout = match query.non_empty("timeoutSeconds") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
        None => 0,
    };
    let timeout = match timeout {
        0 => lock(&inner.settings).default_watch_timeout,
        secs => Duration::from_secs(secs),
    };
    let rv = match rv_param {
        None | Some("0") => None,
        Some(rv) => Some(parse_rv_param(rv)?),
    };
    if let Some(rv) = rv
        && !inner.wait_for_rv(rv, TOO_LARGE_WAIT).await
    {
        return Err(too_large(rv, inner.current_rv()));
    }
    let from = match (send_initial, rv) {
        (Some(true), _) => WatchFrom::Now { initial: true },
        (Some(false), None) => WatchFrom::Now { initial: false },
        (None, None) => WatchFrom::Now { initial: true },
        (_, Some(rv)) => WatchFrom::After(rv),
    };
    let forced = inner.take_forced_expiry();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    inner.total_watches.fetch_add(1, Ordering::Relaxed);
    inner.open_watches.send_modify(|n| *n += 1);
    let open = OpenWatch(inner.clone());
    let started = if forced {
        let compacted = inner.store().compacted();
        Err(too_old(rv.unwrap_or(0), compacted.max(inner.current_rv())))
    } else {
        inner.store().watch(route.res, from)
    };
    let settings = {
        let s = lock(&inner.settings);
        (s.bookmark_interval, inner.close_watches.subscribe())
    };
    let (bookmark_interval, mut close_rx) = settings;
    close_rx.mark_unchanged();
    let task_inner = inner.clone();
    match started {
        Err(e) => {
            tokio::spawn(async move {
                let _open = open;
                let _ = tx.send(event_line("ERROR", &e.status_json())).await;
            });
        }
        Ok(start) => {
            let task = WatchTask {
                res: route.res,
                ns: route.ns.clone().filter(|_| rt.namespaced),
                selectors,
                bookmarks,
                initial_events_end: send_initial == Some(true),
                start,
            };
            tokio::spawn(async move {
                let _open = open;
                let deadline = tokio::time::Instant::now() + timeout;
                let closed = tx.clone();
                // Biased: a close request or a gone client wins over events that are ready at the same time.
                tokio::select! {
                    biased;
                    _ = close_rx.changed() => {}
                    () = closed.closed() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                    () = run_watch(&task_inner, task, &tx, bookmark_interval) => {}
                }
            });
        }
    }
    let mut resp = Response::new(Body::Stream(rx));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    let _ = serde_json::to_writer(&mut out, object);
    out.extend_from_slice(b"}\n");
    out.into()
}

fn bookmark_line(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end && let Some(m) = metadata.as_object_mut() {
        m.insert("annotations".into(), json!({"k8s.io/initial-events-end": "true"}));
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}),
    )
}

fn in_namespace(obj: &Value, ns: Option<&str>) -> bool {
    match ns {
        None => true,
        Some(ns) => obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns),
    }
}

/// The event a watcher with these filters sees for a stored event: selector transitions turn updates into
/// ADDED (starts matching) or DELETED (stops matching), as the real watch cache does.
fn filter_event<'a>(task: &WatchTask, ev: &'a StoredEvent) -> Option<(&'static str, &'a Value)> {
    if !in_namespace(&ev.object, task.ns.as_deref()) {
        return None;
    }
    if task.selectors.is_empty() {
        return Some((ev.kind.as_str(), &ev.object));
    }
    let now = task.selectors.matches(&ev.object);
    let before = ev.prev.as_deref().is_some_and(|p| task.selectors.matches(p));
    match ev.kind {
        EventType::Added => now.then_some(("ADDED", &*ev.object)),
        EventType::Deleted => before.then_some(("DELETED", &*ev.object)),
        EventType::Modified => match (before, now) {
            (true, true) => Some(("MODIFIED", &*ev.object)),
            (false, true) => Some(("ADDED", &*ev.object)),
            (true, false) => Some(("DELETED", &*ev.object)),
            (false, false) => None,
        },
    }
}

/// Sends one chunk, first waiting out a stall; false when the client is gone.
async fn send(inner: &Inner, tx: &mpsc::Sender<Bytes>, line: Bytes) -> bool {
    if *inner.faults.stall.borrow() {
        inner.wait_unstalled().await;
    }
    tx.send(line).await.is_ok()
}

async fn run_watch(inner: &Inner, mut task: WatchTask, tx: &mpsc::Sender<Bytes>, bookmark_interval: Duration) {
    let rt = &RESOURCES[task.res];
    let mut cursor = task.start.rv;
    for obj in std::mem::take(&mut task.start.initial) {
        if in_namespace(&obj, task.ns.as_deref())
            && task.selectors.matches(&obj)
            && !send(inner, tx, event_line("ADDED", &obj)).await
        {
            return;
        }
    }
    for ev in std::mem::take(&mut task.start.replay) {
        if let Some((kind, obj)) = filter_event(&task, &ev)
            && !send(inner, tx, event_line(kind, obj)).await
        {
            return;
        }
    }
    if task.initial_events_end && !send(inner, tx, bookmark_line(rt, cursor, true)).await {
        return;
    }
    let period = bookmark_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = task.start.live.recv() => {
                let Some(ev) = ev else { return };
                cursor = cursor.max(ev.rv);
                if let Some((kind, obj)) = filter_event(&task, &ev)
                    && !send(inner, tx, event_line(kind, obj)).await
                {
                    return;
                }
            }
            _ = ticker.tick(), if task.bookmarks => {
                // Every event up to `current` was queued to this watcher before `current` was read, so after
                // draining the queue the bookmark cannot claim a revision whose events are still unsent.
                let current = inner.current_rv();
                while let Ok(ev) = task.start.live.try_recv() {
                    cursor = cursor.max(ev.rv);
                    if let Some((kind, obj)) = filter_event(&task, &ev)
                        && !send(inner, tx, event_line(kind, obj)).await
                    {
                        return;
                    }
                }
                cursor = cursor.max(current);
                if !send(inner, tx, bookmark_line(rt, cursor, false)).await {
                    return;
                }
            }
        }
    }
}

fn fault_flag(query: &Query) -> Result<bool, ApiError> {
    match query.get("enabled").or_else(|| query.get("on")) {
        None => Ok(true),
        Some("true" | "1" | "on" | "yes") => Ok(true),
        Some("false" | "0" | "off" | "no") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "enabled must be true or false, not {other:?}"
        ))),
    }
}

fn fault_u64(query: &Query, key: &str) -> Result<Option<u64>, ApiError> {
    query
        .non_empty(key)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("{key} must be a number, not {v:?}")))
        })
        .transpose()
}

/// `/_faults/...`: fault switches and observations. `conn` is the asking connection on the main listener,
/// which is spared (and closed after the answer) when the fault drops connections.
async fn faults(inner: &Arc<Inner>, req: Request<Incoming>, conn: Option<u64>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = Query(util::parse_query(req.uri().query()));
    let mut close_after = false;
    let mut pause = false;
    let mut result: Result<Value, ApiError> = (|| {
        let action = path
            .strip_prefix("/_faults")
            .unwrap_or_default()
            .trim_start_matches('/');
        match (method.clone(), action) {
            (Method::GET, "" | "stats") => {}
            (Method::GET, "requests") => {
                let log = lock(&inner.requests);
                return Ok(Value::Array(log.iter().map(RequestRecord::to_json).collect()));
            }
            (Method::DELETE, "requests") => lock(&inner.requests).clear(),
            (Method::POST, "refuse-connections") => {
                let on = fault_flag(&query)?;
                close_after = on;
                inner.refuse_connections(on, conn);
            }
            (Method::POST, "stall") => inner.stall(fault_flag(&query)?),
            (Method::POST, "close-watches") => inner.close_watches(),
            (Method::POST, "expire-next-watches") => {
                let n = fault_u64(&query, "n")?.unwrap_or(1);
                inner.faults.expire_next.store(n, Ordering::SeqCst);
            }
            (Method::POST, "fail-watches-410") => inner.faults.fail_410.store(fault_flag(&query)?, Ordering::SeqCst),
            (Method::POST, "compact") => {
                match fault_u64(&query, "rv")? {
                    Some(rv) => inner.compact_to(rv),
                    None => inner.compact(),
                };
            }
            (Method::POST, "pause") => {
                close_after = true;
                pause = true;
            }
            (Method::POST, "resume") => inner
                .resume()
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
            (Method::POST, "reset") => inner.reset_faults(),
            (Method::POST, "bookmark-interval") => {
                let ms = fault_u64(&query, "ms")?.ok_or_else(|| ApiError::bad_request("ms is required"))?;
                lock(&inner.settings).bookmark_interval = Duration::from_millis(ms);
            }
            (Method::POST, "watch-timeout") => {
                let s = fault_u64(&query, "seconds")?.ok_or_else(|| ApiError::bad_request("seconds is required"))?;
                lock(&inner.settings).default_watch_timeout = Duration::from_secs(s);
            }
            (Method::POST, "max-history") => {
                let n = fault_u64(&query, "n")?;
                inner.store().set_max_history(n.map(|n| n as usize));
            }
            (
                _,
                ""
                | "stats"
                | "requests"
                | "refuse-connections"
                | "stall"
                | "close-watches"
                | "expire-next-watches"
                | "fail-watches-410"
                | "compact"
                | "pause"
                | "resume"
                | "reset"
                | "bookmark-interval"
                | "watch-timeout"
                | "max-history",
            ) => return Err(method_not_allowed(&method)),
            _ => return Err(not_found_path()),
        }
        Ok(inner.stats())
    })();
    if pause {
        inner.pause(conn).await;
        result = result.map(|_| inner.stats());
    }
    let mut resp = match result {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    };
    if close_after && conn.is_some() {
        resp.headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    resp
}
