//! The admin API: the status page, `/healthz`, `/readyz`, Prometheus `/metrics`, `/api/v1/status` and events, and in Raft mode the cluster and its members.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::header;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::NodeState;
use crate::compiler::Severity;

mod routes;

/// Serves the admin API until the node drains.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, mut drain: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = raftgate_proxy::server::draining(&mut drain) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    if let Some(refusal) = cross_site(&req) {
                        return Ok::<_, Infallible>(refusal);
                    }
                    let path = req.uri().path();
                    if path == "/api/v1/cluster" || path.starts_with("/api/v1/members") {
                        return Ok::<_, Infallible>(members(&state, req).await);
                    }
                    if path.starts_with("/api/v1/routes") {
                        return Ok::<_, Infallible>(routes::serve(&state, &req));
                    }
                    if path.starts_with("/api/v1/vips") {
                        return Ok::<_, Infallible>(vips(&state, req).await);
                    }
                    Ok::<_, Infallible>(route(&state, &req))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(state: &NodeState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
    }
    match req.uri().path() {
        "/" | "/status" => asset(STATUS_HTML, "text/html; charset=utf-8"),
        "/ui/status.js" => asset(STATUS_JS, "text/javascript; charset=utf-8"),
        "/api/v1/events" => {
            let since = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            json(
                StatusCode::OK,
                &serde_json::json!({ "node_id": state.node_id, "events": state.events.since(since) }),
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no routing table yet\n".into())
            }
        }
        "/metrics" => {
            let mut out = String::with_capacity(4096);
            state.dataplane.render_metrics(&mut out);
            if let Some(l4) = state.l4() {
                l4.metrics().render(&mut out);
            }
            let problems = state.problems();
            let count = |s| problems.iter().filter(|p| p.severity == s).count();
            let _ = writeln!(
                out,
                "# HELP raftgate_config_version Config version this node serves (in a group: the replicated state version it applied)."
            );
            let _ = writeln!(
                out,
                "# TYPE raftgate_config_version gauge\nraftgate_config_version {}",
                state.config_version()
            );
            let _ = writeln!(
                out,
                "# HELP raftgate_config_problems Objects rejected or served with a problem in the last compilation."
            );
            let _ = writeln!(out, "# TYPE raftgate_config_problems gauge");
            let _ = writeln!(
                out,
                "raftgate_config_problems{{severity=\"rejected\"}} {}",
                count(Severity::Rejected)
            );
            let _ = writeln!(
                out,
                "raftgate_config_problems{{severity=\"warning\"}} {}",
                count(Severity::Warning)
            );
            state.source_stats.render(&mut out);
            if let Some(c) = state.cluster() {
                render_raft(&mut out, c);
                if let Some(v) = &c.vips {
                    v.render_metrics(&mut out);
                }
            }
            let _ = writeln!(
                out,
                "# HELP raftgate_build_info Build information.\n# TYPE raftgate_build_info gauge"
            );
            let _ = writeln!(
                out,
                "raftgate_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            );
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/api/v1/status" => {
            let snap = state.dataplane.snapshot();
            let raft = state.cluster().map(|c| {
                serde_json::json!({
                    "member": c.raft.status(),
                    // Running, and leading by the clock now: a member resumed after a stall
                    // reports no stale leadership before its tasks catch up.
                    "source_running": c.source.running() && c.raft.leads_now(),
                    "source_runs": c.source.runs(),
                    "last_batch_bytes": c.source.last_batch_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    "last_apply_us": c.source.last_apply_us.load(std::sync::atomic::Ordering::Relaxed),
                })
            });
            let vips = state.cluster().and_then(|c| c.vips.as_ref()).map(|v| v.view());
            let body = serde_json::json!({
                "raft": raft,
                "vips": vips,
                "node_id": state.node_id,
                "ready": state.is_ready(),
                "config_version": state.config_version(),
                "routing_version": snap.table.version,
                "routes": snap.table.route_count(),
                "hosts": snap.table.vhosts.len(),
                "upstreams": snap.table.upstreams.len(),
                "listeners": state.listeners,
                "problems": state.problems(),
                "source_errors": state.source_errors(),
                "l4_listeners": state.l4().map(|l4| {
                    l4.status()
                        .borrow()
                        .iter()
                        .map(|(k, v)| (k.clone(), match v {
                            raftgate_proxy::l4::ListenerStatus::Bound(a) => serde_json::json!({"bound": a.to_string()}),
                            raftgate_proxy::l4::ListenerStatus::Failed(e) => serde_json::json!({"error": e}),
                        }))
                        .collect::<serde_json::Map<_, _>>()
                }),
            });
            let mut r = text(StatusCode::OK, format!("{body:#}\n"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// A request that changes something (add or remove a member, drain) must say it sends JSON,
/// and must not come from another site's page: a browser that can reach the admin port could
/// otherwise be made to send a plain form POST. A browser can send `Content-Type:
/// application/json` across sites only after a CORS preflight, which this API never answers.
fn cross_site<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let headers = req.headers();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes need Content-Type: application/json (raftgate ctl sends it)",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let same = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !same {
            return Some(error(
                StatusCode::FORBIDDEN,
                format!("cross-site request from {origin} refused"),
            ));
        }
    }
    None
}

/// The status page and its script, built into the binary: no external assets, works offline.
const STATUS_HTML: &str = include_str!("ui/status.html");
const STATUS_JS: &str = include_str!("ui/status.js");

/// A built-in asset, with a policy that lets the page load only itself and talk only to this admin API.
fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, format!("{body:#}\n"));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// A member to add, as `POST /api/v1/members` takes it.
#[derive(Debug, serde::Deserialize)]
struct AddMember {
    id: u64,
    addr: String,
    #[serde(default)]
    admin: String,
    #[serde(default)]
    learner: bool,
}

/// `GET /api/v1/cluster`, `POST /api/v1/members`, `DELETE /api/v1/members/<id>[?force=true]`.
async fn members(state: &NodeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let Some(cluster) = state.cluster() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node runs without a raft group (no raft section in its config)",
        );
    };
    let raft = &cluster.raft;
    let refused = |e: raftgate_raft::Error| match e {
        raftgate_raft::Error::Refused(_) => error(StatusCode::CONFLICT, e),
        raftgate_raft::Error::NoLeader => error(StatusCode::SERVICE_UNAVAILABLE, e),
        _ => error(StatusCode::BAD_GATEWAY, e),
    };
    let path = req.uri().path().to_string();
    let force = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force"));
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api/v1/cluster") => {
            let members = raft.cluster().await;
            json(
                StatusCode::OK,
                &serde_json::json!({ "this": raft.status(), "members": members }),
            )
        }
        (Method::POST, "/api/v1/members") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let add: AddMember = match serde_json::from_slice(&body) {
                Ok(a) => a,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("expected {{\"id\", \"addr\"}}: {e}")),
            };
            let member = raftgate_raft::Member {
                addr: add.addr,
                admin: add.admin,
            };
            match raft.add_member(add.id, member, add.learner).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "added": add.id })),
                Err(e) => refused(e),
            }
        }
        (Method::DELETE, p) if p.starts_with("/api/v1/members/") => {
            let Ok(id) = p["/api/v1/members/".len()..].parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, "expected /api/v1/members/<numeric id>");
            };
            match raft.remove_member(id, force).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "removed": id })),
                Err(e) => refused(e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET /api/v1/vips`, and `POST`/`DELETE /api/v1/vips/drain/<id>` (drain, undrain).
async fn vips(state: &NodeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some((cluster, vips)) = state.cluster().and_then(|c| c.vips.as_ref().map(|v| (c, v))) else {
        return error(
            StatusCode::NOT_FOUND,
            "this node has no VIPs configured (no vip section)",
        );
    };
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api/v1/vips") => match serde_json::to_value(vips.view()) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (m @ (Method::POST | Method::DELETE), p) if p.starts_with("/api/v1/vips/drain/") => {
            let Ok(id) = p["/api/v1/vips/drain/".len()..].parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected /api/v1/vips/drain/<numeric member id>",
                );
            };
            let drained = m == Method::POST;
            match crate::vips::set_drained(&cluster.raft, vips.replicated(), id, drained).await {
                Ok(r) => json(StatusCode::OK, &serde_json::json!({ "member": id, "record": r })),
                Err(e @ crate::vips::DrainError::NotMember(_)) => error(StatusCode::NOT_FOUND, e),
                Err(e @ crate::vips::DrainError::Contended) => error(StatusCode::CONFLICT, e),
                Err(crate::vips::DrainError::Raft(e @ raftgate_raft::Error::NoLeader)) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, e)
                }
                Err(e) => error(StatusCode::BAD_GATEWAY, e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn render_raft(out: &mut String, c: &crate::cluster::ClusterState) {
    let s = c.raft.status();
    let stats = c.raft.stats();
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    gauge(out, "raftgate_raft_term", "Current Raft term.", s.term);
    let _ = writeln!(
        out,
        "# HELP raftgate_raft_role This member's role (1 for the current one).\n# TYPE raftgate_raft_role gauge"
    );
    for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
        let _ = writeln!(
            out,
            "raftgate_raft_role{{role=\"{role}\"}} {}",
            u8::from(s.role == role)
        );
    }
    gauge(
        out,
        "raftgate_raft_quorum_contact",
        "1 while this member is in touch with a leader that has a quorum (or is that leader).",
        u64::from(s.quorum_contact),
    );
    gauge(
        out,
        "raftgate_raft_source_running",
        "1 while this member runs the config source (the leader, with a valid lease).",
        u64::from(c.source.running()),
    );
    let last_log = s.last_log_index.unwrap_or(0);
    let applied = s.last_applied_index.unwrap_or(0);
    gauge(
        out,
        "raftgate_raft_last_log_index",
        "Index of the last entry in this member's log.",
        last_log,
    );
    gauge(
        out,
        "raftgate_raft_last_applied_index",
        "Index of the last entry applied here.",
        applied,
    );
    gauge(
        out,
        "raftgate_raft_apply_lag_entries",
        "Entries in the log not applied yet.",
        last_log.saturating_sub(applied),
    );
    // On the leader: how far each member's log is behind (not yet replicated, so not yet
    // counted towards a commit there).
    let replication = c.raft.raft().metrics().borrow().replication.clone();
    if let Some(replication) = replication {
        let _ = writeln!(
            out,
            "# HELP raftgate_raft_replication_lag_entries Leader only: entries a member has not acknowledged yet.\n# TYPE raftgate_raft_replication_lag_entries gauge"
        );
        for (id, matched) in replication {
            let lag = last_log.saturating_sub(matched.map_or(0, |m| m.index));
            let _ = writeln!(out, "raftgate_raft_replication_lag_entries{{member=\"{id}\"}} {lag}");
        }
    }
    counter(
        out,
        "raftgate_raft_leader_changes_total",
        "Times a new leader became known to this member.",
        stats.leader_changes.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        out,
        "raftgate_raft_snapshots_total",
        "Snapshots built or installed by this member.",
        stats.snapshots.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        out,
        "raftgate_raft_source_starts_total",
        "Times this member started the config source (on becoming the leader with a lease).",
        c.source.starts.load(std::sync::atomic::Ordering::Relaxed),
    );
    gauge(
        out,
        "raftgate_raft_last_batch_bytes",
        "Size of the last routing batch this member proposed as leader (0: none).",
        c.source.last_batch_bytes.load(std::sync::atomic::Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP raftgate_raft_last_apply_duration_seconds How long the last replicated routing table took to apply into the data plane.\n# TYPE raftgate_raft_last_apply_duration_seconds gauge\nraftgate_raft_last_apply_duration_seconds {}",
        c.source.last_apply_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
    );
    let (buckets, count, sum) = stats.append_latency.read();
    let name = "raftgate_raft_append_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} AppendEntries round trips sent as leader, including the follower's fsync.\n# TYPE {name} histogram"
    );
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/api/v1/vips/drain/2");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn changes_from_another_site_or_as_a_form_are_refused() {
        let status = |r: Option<Response<Full<Bytes>>>| r.map(|r| r.status().as_u16());
        assert_eq!(status(cross_site(&req(Method::GET, &[]))), None);
        assert_eq!(status(cross_site(&req(Method::POST, &[]))), Some(415));
        let form = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "10.0.0.1:10254"),
        ];
        assert_eq!(status(cross_site(&req(Method::POST, &form))), Some(415));
        let ctl = [("content-type", "application/json"), ("host", "10.0.0.1:10254")];
        assert_eq!(status(cross_site(&req(Method::DELETE, &ctl))), None);
        let page = [
            ("content-type", "application/json; charset=utf-8"),
            ("host", "10.0.0.1:10254"),
            ("origin", "http://10.0.0.1:10254"),
        ];
        assert_eq!(status(cross_site(&req(Method::POST, &page))), None);
        let evil = [
            ("content-type", "application/json"),
            ("host", "10.0.0.1:10254"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(status(cross_site(&req(Method::POST, &evil))), Some(403));
    }
}
