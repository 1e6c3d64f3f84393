//! The admin API: `/healthz`, `/readyz`, Prometheus `/metrics` and `/api/v1/status`.

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
                async move { Ok::<_, Infallible>(route(&state, &req)) }
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
            state.dataplane.metrics().render(&mut out);
            if let Some(l4) = state.l4() {
                l4.metrics().render(&mut out);
            }
            let problems = state.problems();
            let count = |s| problems.iter().filter(|p| p.severity == s).count();
            let _ = writeln!(
                out,
                "# HELP raftgate_config_version Version of the routing table this node serves."
            );
            let _ = writeln!(
                out,
                "# TYPE raftgate_config_version gauge\nraftgate_config_version {}",
                state.dataplane.version()
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
            let body = serde_json::json!({
                "node_id": state.node_id,
                "ready": state.is_ready(),
                "config_version": snap.table.version,
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
