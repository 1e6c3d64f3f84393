//! The L7 request path: route, redirect or proxy, with retries, timeouts and upgrades.
//!
//! ```text
//! request ─► snapshot ─► lookup ─► [308 to https] ─► [413] ─► pick endpoint ─► connect/reuse
//!                                                        ▲              │ connect error,
//!                                                        └──────────────┘ request not sent
//! response ◄─ strip hop-by-hop ◄─ [101: tunnel both upgrades] ◄─ upstream response
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use http::HeaderName;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Uri;
use http::Version;
use http::header;
use http_body::Body as _;
use http_body::Frame;
use http_body::SizeHint;
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::LengthLimitError;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::access::Denied;
use crate::dataplane::Dataplane;
use crate::dataplane::Snapshot;
use crate::edge;
use crate::error::ErrorSide;
use crate::error::ProxyError;
use crate::limit::Admission;
use crate::metrics::RouteStats;
use crate::metrics::UpstreamErrorKind;
use crate::model::RoutePolicy;
use crate::pool::Body;
use crate::pool::BoxError;
use crate::pool::Conn;
use crate::pool::ConnectError;
use crate::router::Lookup;
use crate::select::Choice;
use crate::select::Pick;
use crate::upstream::EndpointState;
use crate::upstream::InFlight;

/// What the handler knows about the client connection. Header values that are the same for
/// every request on the connection are built once, here, not per request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// The port HTTPS is served on, for redirects (omitted from the URL when 443).
    pub https_port: u16,
    client_ip: HeaderValue,
    local_port: HeaderValue,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, local: SocketAddr, tls: bool, https_port: u16) -> ConnInfo {
        let client_ip =
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            client,
            local,
            tls,
            https_port,
            client_ip,
            local_port: HeaderValue::from(local.port()),
        }
    }

    fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

/// Headers that apply to one hop only (RFC 9110 section 7.6.1).
const HOPS: usize = 7;
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle(
    dp: Arc<Dataplane>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // One snapshot for the whole request: everything below borrows from it.
    let snap = dp.snapshot();
    let mut log = RequestLog::new(snap.table.settings.access_log, &conn, &req);
    let host = request_host(&req);
    let host_str = host.to_str().unwrap_or_default();
    let (backend, policy, tls, entry) = match snap.router.lookup(host_str, req.uri().path()) {
        Lookup::Route(e) => {
            log.stats = Some(snap.route_stats(e.id, dp.metrics()));
            (&e.route.backend, &e.route.policy, e.tls, Some(e))
        }
        Lookup::Default { backend, tls } => {
            log.stats = Some(dp.metrics().unmatched());
            (backend, &snap.table.settings.default_policy, tls, None)
        }
        Lookup::NotFound => {
            log.stats = Some(dp.metrics().unmatched());
            return Ok(log.finish(local(StatusCode::NOT_FOUND, "404 page not found\n")));
        }
    };
    if let Some(a) = log.access.as_mut() {
        a.upstream = backend.upstream.clone();
    }
    // nginx's rewrite phase: answers that need neither access checks nor an upstream.
    if let Some(r) = &policy.redirect {
        return Ok(log.finish(edge::redirect(r.code, &r.url)));
    }
    if !conn.tls && ((tls && policy.ssl_redirect) || policy.force_ssl_redirect) {
        return Ok(log.finish(redirect_to_https(&req, host_str, conn.https_port)));
    }
    if let Some(root) = &policy.app_root
        && let Some(resp) = edge::app_root(&req, host_str, root, conn.tls)
    {
        return Ok(log.finish(resp));
    }
    let origin = policy
        .cors
        .as_ref()
        .and_then(|_| req.headers().get(header::ORIGIN).cloned());
    if let Some(cors) = &policy.cors
        && let Some(resp) = edge::cors_preflight(&req, cors)
    {
        return Ok(log.finish(resp));
    }
    // The client's address, as the access checks, hash-by and forwarded headers see it.
    let client = client_ip(&snap, &conn, req.headers());
    // The access phase: limits, allowlist, basic auth.
    if let Some(access) = entry.and_then(|e| snap.access(e.id)) {
        match access.admit(client.0, Instant::now()) {
            Ok(admission) => log.admission = admission,
            Err(denied) => return Ok(log.finish(deny(denied))),
        }
        if let Err(denied) = access.authenticate(req.headers()).await {
            return Ok(log.finish(deny(denied)));
        }
    }
    if let Some(max) = policy.max_body_bytes {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Ok(log.finish(local(StatusCode::PAYLOAD_TOO_LARGE, "413 Request Entity Too Large\n")));
        }
    }
    // The canary, if the route has one and its rules pick it.
    let choice = crate::select::choose(&snap, entry, backend, policy, req.headers());
    let upstream = choice.upstream;
    if let (true, Some(a)) = (choice.canary, log.access.as_mut()) {
        a.upstream = upstream.to_string();
    }
    // From here on the request goes upstream: it gets its id, which the upstream, the error
    // backend and the access log all see.
    let mut req = req;
    ensure_request_id(req.headers_mut());
    if let Some(a) = log.access.as_mut() {
        a.request_id = req.headers().get(&X_REQUEST_ID).cloned();
    }
    let rewrite = entry.and_then(|e| e.rewrite.as_ref());
    let error_page = (!policy.custom_errors.is_empty()).then(|| ErrorPageRequest {
        uri: req.uri().to_string(),
        accept: req.headers().get(header::ACCEPT).cloned(),
        request_id: req.headers().get(&X_REQUEST_ID).cloned(),
        source: entry.map(|e| e.route.source.clone()).unwrap_or_default(),
        upstream: upstream.to_string(),
    });
    let mut resp = match proxy(&dp, &snap, &conn, req, &choice, policy, rewrite, &host, client, log).await {
        Ok(resp) => resp,
        Err((e, log)) => {
            tracing::debug!(upstream = %upstream, error = %e, "request failed");
            if let Some(kind) = e.upstream_kind() {
                dp.metrics().upstream_error(upstream, kind);
            }
            log.finish(local(e.status(), e.body()))
        }
    };
    // `custom-http-errors`: the error backend answers instead, as nginx's `error_page`.
    if let Some(ask) = error_page.filter(|_| policy.custom_errors.contains(&resp.status().as_u16())) {
        let backend = policy.fallback.as_ref().or(snap.table.default_backend.as_ref());
        if let Some(page) = match backend {
            Some(b) => fetch_error_page(&snap, &b.upstream, resp.status(), &ask, policy).await,
            None => None,
        } {
            resp = page;
        }
    }
    if let Some(cors) = &policy.cors {
        edge::cors_headers(resp.headers_mut(), cors, origin.as_ref());
    }
    if let (true, true, Some(hsts)) = (conn.tls, tls, &snap.hsts) {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    Ok(resp)
}

/// Proxies to the upstream. On success the log travels inside the response body and is
/// written when the body ends; on failure it is handed back with the error.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    dp: &Arc<Dataplane>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    choice: &Choice<'_>,
    policy: &RoutePolicy,
    rewrite: Option<&(regex::Regex, String)>,
    host: &HeaderValue,
    (client, trusted): (std::net::IpAddr, bool),
    mut log: RequestLog,
) -> Result<Response<Body>, (ProxyError, RequestLog)> {
    // `default-backend`: a Service with no ready endpoints hands over to the fallback.
    let has_endpoints = |id: &str| snap.upstreams.get(id).is_some_and(|u| !u.endpoints.is_empty());
    let upstream_id = match &policy.fallback {
        Some(fb) if !has_endpoints(choice.upstream) => fb.upstream.as_str(),
        _ => choice.upstream,
    };
    let Some(upstream) = snap.upstreams.get(upstream_id).filter(|u| !u.endpoints.is_empty()) else {
        return Err((ProxyError::NoEndpoints, log));
    };
    let settings = &snap.table.settings;
    let is_upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let protocol = upstream.endpoints[0].protocol;
    let host_str = host.to_str().unwrap_or_default();
    // Affinity and hash-by belong to the chosen backend, not to a `default-backend` fallback.
    // Their keys come from the request as the client sent it (before any rewrite).
    let keyed = choice.affinity.is_some() || choice.hash_by.is_some();
    let mut pick = if keyed && upstream_id == choice.upstream {
        Pick::new(choice, req.headers(), req.uri(), client, host_str)
    } else {
        Pick::Balance
    };
    let client_tls = conn.tls;

    let (parts, body) = req.into_parts();
    let body: Body = if body.is_end_stream() {
        // Nothing to limit or stream; boxing a zero-sized body does not allocate.
        http_body_util::Empty::new().map_err(BoxError::from).boxed()
    } else {
        match policy.max_body_bytes {
            Some(max) => Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).boxed(),
            None => body.map_err(BoxError::from).boxed(),
        }
    };
    let request_uri = match rewrite.and_then(|(re, target)| edge::rewrite(re, target, &parts.uri)) {
        Some(u) => u,
        None => parts.uri,
    };
    let uri = if protocol.is_h2() {
        let scheme = if protocol.is_tls() { "https" } else { "http" };
        let pq = request_uri.path_and_query().map_or("/", |p| p.as_str());
        Uri::try_from(format!("{scheme}://{}{pq}", authority_of(host_str)))
    } else if request_uri.scheme().is_none() && request_uri.authority().is_none() {
        // Origin-form already: send it as is.
        Ok(request_uri)
    } else {
        Uri::try_from(request_uri.path_and_query().map_or("/", |p| p.as_str()))
    };
    let Ok(uri) = uri else {
        return Err((ProxyError::BadRequest, log));
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    *out.version_mut() = if protocol.is_h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = out.headers_mut();
    let keep_te_trailers = protocol.is_h2() && te_is_trailers(headers);
    let upgrade_proto = if is_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(proto) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if protocol.is_h2() {
        headers.remove(header::HOST);
    } else if !headers.contains_key(header::HOST) && !host.is_empty() {
        headers.insert(header::HOST, host.clone());
    }
    add_forwarded(headers, conn, host, client, trusted);
    if let Some(prefix) = policy
        .forwarded_prefix
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(X_FORWARDED_PREFIX.clone(), prefix);
    }
    // `proxy-next-upstream: http_5xx…` can only resend what it can rebuild: a bodiless
    // idempotent request.
    let resend = (!policy.next_upstream.statuses.is_empty()
        && is_idempotent(out.method())
        && out.body().is_end_stream())
    .then(|| {
        (
            out.method().clone(),
            out.uri().clone(),
            out.version(),
            out.headers().clone(),
        )
    });

    let tries = policy.next_upstream_tries.max(1) as usize;
    // Endpoints tried so far: inline for the usual few tries.
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let connect_timeout = Duration::from_millis(policy.connect_timeout_ms);
    let read_timeout = Duration::from_millis(policy.read_timeout_ms);
    let mut last_err = ProxyError::NoEndpoints;
    let mut req = out;
    while tried.len() < tries {
        let now = Instant::now();
        let Some(idx) = pick.next(upstream, now, &tried) else {
            break;
        };
        let ep = upstream.endpoints[idx].clone();
        tried.push(idx);
        if let Some(a) = log.access.as_mut() {
            a.endpoint = Some(ep.endpoint.to_string());
        }
        let in_flight = ep.start();
        ep.pool.set_send_timeout(Duration::from_millis(policy.send_timeout_ms));
        // A pooled connection that turns out closed is not the endpoint's fault: try a fresh one.
        let mut reused = ep.pool.reuse_idle(now);
        loop {
            let fresh = reused.is_none();
            // A connection that sat idle a while may be closed by the upstream just as the
            // request arrives (its keep-alive timeout). A bodiless idempotent request then
            // goes once more on a fresh connection, as nginx retries on a cached connection:
            // keep what it takes to rebuild it (only then, to spare the copy under load).
            let again_on_fresh = match &reused {
                Some((_, idle)) if *idle >= STALE_RISK && is_idempotent(req.method()) && req.body().is_end_stream() => {
                    Some((
                        req.method().clone(),
                        req.uri().clone(),
                        req.version(),
                        req.headers().clone(),
                    ))
                }
                _ => None,
            };
            let conn = match reused.take().map(|(c, _)| c) {
                Some(c) => c,
                None => match ep.pool.connect(connect_timeout).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(endpoint = %ep.endpoint, error = %e, "connect failed");
                        if ep.record_failure(Instant::now(), settings) {
                            dp.metrics().upstream_ejected(upstream_id);
                        }
                        dp.metrics().upstream_error(upstream_id, UpstreamErrorKind::Connect);
                        let next = match e {
                            ConnectError::Timeout { .. } => policy.next_upstream.timeout,
                            _ => policy.next_upstream.error,
                        };
                        last_err = ProxyError::Connect(e);
                        if !next {
                            return Err((last_err, log));
                        }
                        break;
                    }
                },
            };
            // A kept-alive connection is sent on at once: the pick's clock reading will do.
            let sent_at = if fresh { Instant::now() } else { now };
            match send(conn, req, read_timeout).await {
                Ok((resp, _)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() => {
                    // A 101 the client never asked for has no tunnel to go to.
                    return Err((ProxyError::UnexpectedUpgrade, log));
                }
                Ok((resp, _))
                    if resend.is_some()
                        && policy.next_upstream.statuses.contains(&resp.status().as_u16())
                        && tried.len() < tries
                        && upstream.pick(Instant::now(), &tried).is_some() =>
                {
                    // Try the next endpoint with the same request (nginx's `http_502`…).
                    if resp.status().is_server_error() && ep.record_failure(Instant::now(), settings) {
                        dp.metrics().upstream_ejected(upstream_id);
                    }
                    // The guard checked `resend`; the else arm cannot run.
                    let Some(head) = &resend else {
                        return Err((ProxyError::BadRequest, log));
                    };
                    req = bodiless(head.clone());
                    break;
                }
                Ok((resp, h1)) => {
                    let answered = Instant::now();
                    ep.record_success(answered, answered.saturating_duration_since(sent_at));
                    let mut resp = respond(
                        resp,
                        h1,
                        ep,
                        in_flight,
                        client_upgrade,
                        read_timeout,
                        log,
                        usize::try_from(settings.upstream_keepalive_connections).unwrap_or(usize::MAX),
                    );
                    // A new or moved affinity session: the cookie names the endpoint that answered.
                    if let Some(cookie) = pick.set_cookie(client_tls, SystemTime::now()) {
                        resp.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    return Ok(resp);
                }
                Err(SendError::NotSent(back, e)) => {
                    req = *back;
                    if fresh {
                        // A brand-new connection refused the request: count it against the endpoint.
                        if ep.record_failure(Instant::now(), settings) {
                            dp.metrics().upstream_ejected(upstream_id);
                        }
                        last_err = ProxyError::Upstream(e);
                        break;
                    }
                    continue;
                }
                Err(SendError::Failed(ProxyError::Upstream(e)))
                    if again_on_fresh.is_some() && closed_before_answering(&e) =>
                {
                    tracing::debug!(endpoint = %ep.endpoint, error = %e, "kept-alive connection closed under the request; sending it again on a new one");
                    let Some(head) = again_on_fresh else {
                        return Err((ProxyError::Upstream(e), log));
                    };
                    req = bodiless(head);
                    continue;
                }
                Err(SendError::Failed(e)) => {
                    if ep.record_failure(Instant::now(), settings) {
                        dp.metrics().upstream_ejected(upstream_id);
                    }
                    return Err((e, log));
                }
            }
        }
    }
    Err((last_err, log))
}

enum SendError {
    /// The request was never written: it may be sent again elsewhere.
    NotSent(Box<Request<Body>>, hyper::Error),
    /// The request may have reached the upstream: no retry.
    Failed(ProxyError),
}

async fn send(
    conn: Conn,
    req: Request<Body>,
    read_timeout: Duration,
) -> Result<(Response<Incoming>, Option<http1::SendRequest<Body>>), SendError> {
    match conn {
        Conn::H1(mut sender) => {
            if let Err(e) = sender.ready().await {
                return Err(SendError::NotSent(Box::new(req), e));
            }
            let fut = sender.try_send_request(req);
            match tokio::time::timeout(read_timeout, fut).await {
                Err(_) => Err(SendError::Failed(ProxyError::Timeout)),
                Ok(Ok(resp)) => Ok((resp, Some(sender))),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(req) => Err(SendError::NotSent(Box::new(req), e.into_error())),
                    None => Err(SendError::Failed(classify(e.into_error()))),
                },
            }
        }
        Conn::H2(mut sender) => {
            if let Err(e) = sender.ready().await {
                return Err(SendError::NotSent(Box::new(req), e));
            }
            let fut = sender.try_send_request(req);
            match tokio::time::timeout(read_timeout, fut).await {
                Err(_) => Err(SendError::Failed(ProxyError::Timeout)),
                Ok(Ok(resp)) => Ok((resp, None)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(req) => Err(SendError::NotSent(Box::new(req), e.into_error())),
                    None => Err(SendError::Failed(classify(e.into_error()))),
                },
            }
        }
    }
}

/// A request without a body from a kept copy of a head, to send again.
fn bodiless((method, uri, version, headers): (Method, Uri, Version, HeaderMap)) -> Request<Body> {
    let mut req = Request::new(http_body_util::Empty::new().map_err(BoxError::from).boxed());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// How long a pooled connection must have sat idle before a request on it keeps a copy to
/// be sent again if the upstream closes the connection under it. Upstream keep-alive
/// timeouts are seconds (Node.js 5 s, Apache 5 s, nginx 75 s); busy connections are reused
/// within milliseconds and never pay for the copy.
const STALE_RISK: Duration = Duration::from_secs(1);

/// The upstream closed or reset the connection before any response: what a keep-alive
/// timeout on its side looks like.
fn closed_before_answering(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        src = s.source();
    }
    false
}

fn classify(e: hyper::Error) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if s.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return ProxyError::Timeout;
        }
        src = s.source();
    }
    if e.is_timeout() {
        return ProxyError::Timeout;
    }
    ProxyError::Upstream(e)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    resp: Response<Incoming>,
    h1: Option<http1::SendRequest<Body>>,
    ep: Arc<EndpointState>,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    read_timeout: Duration,
    mut log: RequestLog,
    keepalive: usize,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    log.status = parts.status.as_u16();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(Response::from_parts(parts.clone(), ()));
        if let Some(client) = client_upgrade {
            tokio::spawn(tunnel(client, upstream, read_timeout, in_flight));
        }
        // The 101 keeps its Connection and Upgrade headers.
        return Response::from_parts(parts, http_body_util::Empty::new().map_err(BoxError::from).boxed());
    }
    strip_hop_by_hop(&mut parts.headers);
    let mut body = Tracked {
        inner: body,
        ep: Some(ep),
        h1,
        _in_flight: in_flight,
        idle: read_timeout,
        timer: None,
        log: Some(log),
        keepalive,
    };
    if body.inner.is_end_stream() {
        // An empty body may never be polled: the connection is free now.
        body.release();
    }
    Response::from_parts(parts, body.boxed())
}

/// Copies bytes both ways between the two upgraded connections until both sides close,
/// or neither side sends anything for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    _in_flight: InFlight,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut a = TokioIo::new(client);
    let mut b = TokioIo::new(upstream);
    let (mut buf_a, mut buf_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = a.read(&mut buf_a), if a_open => match r {
                    Ok(0) | Err(_) => { a_open = false; b.shutdown().await }
                    Ok(n) => b.write_all(&buf_a[..n]).await,
                },
                r = b.read(&mut buf_b), if b_open => match r {
                    Ok(0) | Err(_) => { b_open = false; a.shutdown().await }
                    Ok(n) => a.write_all(&buf_b[..n]).await,
                },
            }
        })
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
}

/// The upstream response body: returns the connection to the pool once read to the end,
/// and enforces the read timeout between two chunks.
struct Tracked {
    inner: Incoming,
    ep: Option<Arc<EndpointState>>,
    h1: Option<http1::SendRequest<Body>>,
    _in_flight: InFlight,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Written when the body ends or is dropped.
    log: Option<RequestLog>,
    /// Idle connections the endpoint's pool may keep.
    keepalive: usize,
}

impl Tracked {
    fn release(&mut self) {
        if let (Some(ep), Some(s)) = (self.ep.take(), self.h1.take()) {
            ep.pool.put(s, Instant::now(), self.keepalive);
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                this.log = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                // Trailers are the last frame of a body; the client side may not poll for
                // the end after them (an HTTP/1.1 client that did not ask for trailers).
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.h1 = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.h1 = None;
                        Poll::Ready(Some(Err(Box::new(ProxyError::Timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records metrics and the access log line when the response is done (or dropped).
struct RequestLog {
    start: Instant,
    status: u16,
    stats: Option<Arc<RouteStats>>,
    /// A `limit-connections` slot, held until the response ends.
    admission: Option<Admission>,
    /// Only built when access logging is on, so the common path allocates nothing for it.
    access: Option<Box<Access>>,
}

struct Access {
    method: Method,
    host: String,
    path: String,
    client: SocketAddr,
    upstream: String,
    endpoint: Option<String>,
    request_id: Option<HeaderValue>,
}

impl RequestLog {
    fn new<B>(access_log: bool, conn: &ConnInfo, req: &Request<B>) -> RequestLog {
        let access = access_log.then(|| {
            Box::new(Access {
                method: req.method().clone(),
                host: request_host(req).to_str().unwrap_or_default().to_string(),
                path: req.uri().path().to_string(),
                client: conn.client,
                upstream: String::new(),
                endpoint: None,
                request_id: None,
            })
        });
        RequestLog {
            start: Instant::now(),
            status: 0,
            stats: None,
            admission: None,
            access,
        }
    }

    fn finish(mut self, resp: Response<Body>) -> Response<Body> {
        self.status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        if body.is_end_stream() {
            drop(self);
            return Response::from_parts(parts, body);
        }
        Response::from_parts(
            parts,
            Logged {
                inner: body,
                log: Some(self),
            }
            .boxed(),
        )
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        // A response never started means the client went away first: nginx's 499.
        let status = if self.status == 0 { 499 } else { self.status };
        if let Some(s) = &self.stats {
            s.record(status, elapsed);
        }
        if let Some(a) = &self.access {
            tracing::info!(
                target: "raftgate::access",
                client = %a.client,
                method = %a.method,
                host = %a.host,
                path = %a.path,
                status,
                upstream = %a.upstream,
                endpoint = a.endpoint.as_deref().unwrap_or("-"),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = a.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            );
        }
    }
}

struct Logged {
    inner: Body,
    log: Option<RequestLog>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.log = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the Host header.
/// Cloning a parsed header value only bumps a reference count.
fn request_host<B>(req: &Request<B>) -> HeaderValue {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    req.headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

fn authority_of(host: &str) -> &str {
    if host.is_empty() { "localhost" } else { host }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn te_is_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Every request and response passes here, and most carry none of these or only `Connection`:
    // one pass over the names present costs less than hashing each hop-by-hop name.
    let mut present = [false; HOPS];
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Connection and every name it lists. Its values are taken out first, so the names can be
    // removed as they are read (by &str: no allocation; an invalid name matches nothing).
    if let header::Entry::Occupied(e) = h.entry(header::CONNECTION) {
        let (first, rest) = {
            let mut values = e.remove_entry_mult().1;
            // One line is the usual case: then `rest` stays empty and unallocated.
            (values.next(), values.collect::<Vec<HeaderValue>>())
        };
        for token in first
            .iter()
            .chain(&rest)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            h.remove(token.trim());
        }
    }
    for (n, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(n);
    }
}

/// The client's address: the connection's peer, or, with `use-forwarded-headers` and a
/// trusted peer, the address nginx's `real_ip_recursive` finds in `X-Forwarded-For` (the
/// rightmost one not trusted). The flag says whether forwarded headers are trusted.
fn client_ip(snap: &Snapshot, conn: &ConnInfo, headers: &HeaderMap) -> (std::net::IpAddr, bool) {
    let peer = conn.client.ip();
    if !snap.table.settings.use_forwarded_headers || !snap.trusts(peer) {
        return (peer, false);
    }
    let chain: Vec<std::net::IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let ip = chain
        .iter()
        .rev()
        .find(|ip| !snap.trusts(**ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer);
    (ip, true)
}

fn add_forwarded(h: &mut HeaderMap, conn: &ConnInfo, host: &HeaderValue, client: std::net::IpAddr, trusted: bool) {
    let real_ip = if client == conn.client.ip() {
        Some(conn.client_ip.clone())
    } else {
        HeaderValue::from_str(&client.to_string()).ok()
    };
    if let Some(v) = real_ip {
        h.insert(X_REAL_IP.clone(), v);
    }
    // Trusted forwarded headers pass through; otherwise ours replace whatever came.
    let keep = |h: &HeaderMap, name: &HeaderName| trusted && h.contains_key(name);
    if !keep(h, &X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), conn.proto());
    }
    if !keep(h, &X_FORWARDED_PORT) {
        h.insert(X_FORWARDED_PORT.clone(), conn.local_port.clone());
    }
    h.insert(X_SCHEME.clone(), conn.proto());
    let xff = match h
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", conn.client.ip())).ok(),
        None => Some(conn.client_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if keep(h, &X_FORWARDED_HOST) {
        return;
    }
    let raw = host.to_str().unwrap_or_default();
    let forwarded_host = match crate::router::normalize_host(raw) {
        std::borrow::Cow::Borrowed(n) if n.len() == raw.len() => Some(host.clone()),
        n => HeaderValue::from_str(&n).ok(),
    };
    if let Some(v) = forwarded_host {
        h.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// Keeps a valid incoming X-Request-ID, or sets a new random one (32 hex digits, as nginx's
/// `$request_id`).
fn ensure_request_id(h: &mut HeaderMap) {
    if h.get(&X_REQUEST_ID).is_some_and(|v| !v.is_empty() && v.len() <= 200) {
        return;
    }
    h.insert(X_REQUEST_ID.clone(), crate::id::request_id());
}

fn redirect_to_https<B>(req: &Request<B>, host: &str, https_port: u16) -> Response<Body> {
    let name = crate::router::normalize_host(host);
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    };
    let mut resp = local(StatusCode::PERMANENT_REDIRECT, "308 Permanent Redirect\n");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The answer to a request the access phase turned away.
fn deny(denied: Denied) -> Response<Body> {
    match denied {
        Denied::Limited(status) => local(status, "request limit exceeded\n"),
        Denied::Forbidden => local(StatusCode::FORBIDDEN, "403 Forbidden\n"),
        Denied::Unauthorized(challenge) => {
            let mut resp = local(StatusCode::UNAUTHORIZED, "401 Authorization Required\n");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            resp
        }
    }
}

/// What the error backend is told about the failed request (ingress-nginx's custom error
/// page headers).
struct ErrorPageRequest {
    uri: String,
    accept: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// `namespace/ingress`.
    source: String,
    /// The upstream id, `namespace/service:port`.
    upstream: String,
}

/// Largest error page read from the error backend.
const ERROR_PAGE_MAX: usize = 256 * 1024;

/// Asks the error backend for the page of `code`. `None` (keep the original response) when
/// it has no endpoint or does not answer in time.
async fn fetch_error_page(
    snap: &Snapshot,
    upstream_id: &str,
    code: StatusCode,
    ask: &ErrorPageRequest,
    policy: &RoutePolicy,
) -> Option<Response<Body>> {
    let upstream = snap.upstreams.get(upstream_id)?;
    let ep = upstream.endpoints.get(upstream.pick(Instant::now(), &[])?)?.clone();
    let timeout = Duration::from_millis(policy.read_timeout_ms);
    let conn = match ep.pool.reuse(Instant::now()) {
        Some(c) => c,
        None => ep
            .pool
            .connect(Duration::from_millis(policy.connect_timeout_ms))
            .await
            .ok()?,
    };
    let (ns, ingress) = ask.source.split_once('/').unwrap_or(("", ask.source.as_str()));
    let (service, port) = ask
        .upstream
        .split('|')
        .next()
        .and_then(|s| s.split_once('/'))
        .and_then(|(_, s)| s.split_once(':'))
        .unwrap_or(("", ""));
    let mut req = Request::new(http_body_util::Empty::new().map_err(BoxError::from).boxed());
    *req.uri_mut() = Uri::try_from(ask.uri.as_str()).ok()?;
    if ep.protocol.is_h2() {
        *req.version_mut() = Version::HTTP_2;
    }
    let h = req.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-code", code.as_str());
    put("x-original-uri", &ask.uri);
    put("x-namespace", ns);
    put("x-ingress-name", ingress);
    put("x-service-name", service);
    put("x-service-port", port);
    put("host", "raftgate-error-page");
    if let Some(accept) = &ask.accept {
        h.insert(HeaderName::from_static("x-format"), accept.clone());
    }
    if let Some(id) = &ask.request_id {
        h.insert(X_REQUEST_ID.clone(), id.clone());
    }
    let (resp, h1) = send(conn, req, timeout).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(timeout, Limited::new(body, ERROR_PAGE_MAX).collect())
        .await
        .ok()?
        .ok()?;
    if let Some(sender) = h1 {
        ep.pool.put(
            sender,
            Instant::now(),
            usize::try_from(snap.table.settings.upstream_keepalive_connections).unwrap_or(0),
        );
    }
    let mut page = Response::new(Full::new(body.to_bytes()).map_err(BoxError::from).boxed());
    *page.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    Some(page)
}

/// A short plain-text response made by the proxy itself.
pub fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(BoxError::from)
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::UnexpectedUpgrade => StatusCode::BAD_GATEWAY,
        }
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::NoEndpoints => "503 Service Unavailable: no ready endpoints\n",
            ProxyError::Timeout => "504 Gateway Timeout\n",
            ProxyError::BodyTooLarge => "413 Request Entity Too Large\n",
            ProxyError::BadRequest => "400 Bad Request\n",
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::UnexpectedUpgrade => "502 Bad Gateway\n",
        }
    }

    fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self.side() {
            ErrorSide::Upstream => Some(match self {
                ProxyError::NoEndpoints => UpstreamErrorKind::NoEndpoints,
                ProxyError::Timeout => UpstreamErrorKind::Timeout,
                // Connect errors are counted per attempt, where they happen.
                ProxyError::Connect(_) => return None,
                _ => UpstreamErrorKind::Reset,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = headers(&[
            ("host", "a"),
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close, upgrade, x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        super::strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["accept", "host"]);

        // A single hop-by-hop header goes; the rest stay.
        let mut h = headers(&[("host", "a"), ("te", "trailers"), ("x-keep", "1")]);
        super::strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-keep"]);

        // A name Connection lists that is absent, or is no header name, is no error.
        let mut h = headers(&[("connection", "close, x-gone, ,, bad name"), ("x-keep", "1")]);
        super::strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-keep"]);

        let mut h = headers(&[("host", "a"), ("x-keep", "1")]);
        super::strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-keep"]);
    }
}
