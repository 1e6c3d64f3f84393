//! `GET /api/v1/routes` (the routing table as served) and `GET /api/v1/routes/explain?url=` (why a URL goes where it goes).

use bytes::Bytes;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http_body_util::Full;
use raftgate_proxy::model::PathMatch;
use serde_json::json;

use super::error;
use super::json;
use crate::app::NodeState;

/// Serves the two routes endpoints.
pub(super) fn serve<B>(state: &NodeState, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match req.uri().path() {
        "/api/v1/routes" => json(StatusCode::OK, &table(state)),
        "/api/v1/routes/explain" => {
            let Some(url) = req.uri().query().and_then(|q| query_param(q, "url")) else {
                return error(StatusCode::BAD_REQUEST, "expected ?url=<url-encoded URL>");
            };
            match parse_url(&url) {
                Ok((https, host, path)) => {
                    let snap = state.dataplane.snapshot();
                    let x = snap.router.explain(&host, &path, https);
                    match serde_json::to_value(&x) {
                        Ok(mut v) => {
                            v["url"] = json!(url);
                            v["config_version"] = json!(snap.table.version);
                            json(StatusCode::OK, &v)
                        }
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                    }
                }
                Err(e) => error(StatusCode::BAD_REQUEST, format!("url {url:?}: {e}")),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The routing table as the router holds it: one entry per route that is served, in
/// precedence order per host, the hosts' default backends, and the global one.
fn table(state: &NodeState) -> serde_json::Value {
    let snap = state.dataplane.snapshot();
    let routes: Vec<serde_json::Value> = snap
        .router
        .routes()
        .iter()
        .map(|e| {
            let r = &e.route;
            let kind = match r.path {
                PathMatch::Exact(_) => "Exact",
                PathMatch::Prefix(_) => "Prefix",
                PathMatch::Regex(_) => "Regex",
            };
            json!({
                "id": e.id,
                "host": e.host,
                "path": r.path.as_str(),
                "match": kind,
                "backend": raftgate_proxy::router::backend_of(&r.policy, &r.backend.upstream),
                "upstream": r.backend.upstream,
                "source": r.source,
                "tls": e.tls,
                "canary": r.canary.as_ref().map(|c| json!({"source": c.source, "upstream": c.backend.upstream})),
            })
        })
        .collect();
    let host_defaults: Vec<serde_json::Value> = snap
        .table
        .vhosts
        .iter()
        .filter_map(|(h, v)| {
            v.default_backend
                .as_ref()
                .map(|b| json!({"host": h, "backend": b.upstream}))
        })
        .collect();
    json!({
        "config_version": snap.table.version,
        "routes": routes,
        "host_defaults": host_defaults,
        "default_backend": snap.table.default_backend.as_ref().map(|b| &b.upstream),
    })
}

/// A URL as `ctl routes --host` takes it: `https://host[:port]/path?query`; without a scheme, `http://`.
/// Returns whether it is HTTPS, the authority's host and port, and the path.
fn parse_url(url: &str) -> Result<(bool, String, String), String> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: http::Uri = full.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("scheme {other:?} is not http or https")),
    };
    let Some(authority) = uri.authority() else {
        return Err("no host".into());
    };
    let host = match authority.port() {
        Some(p) => format!("{}:{}", authority.host(), p.as_str()),
        None => authority.host().to_string(),
    };
    if authority.host().is_empty() {
        return Err("no host".into());
    }
    Ok((https, host, uri.path().to_string()))
}

/// The decoded value of `name` in a query string (`+` is a space, `%XX` a byte).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_scheme_host_and_path() {
        assert_eq!(
            parse_url("https://Shop.example.com:8443/api/v1/x?q=1").unwrap(),
            (true, "Shop.example.com:8443".to_string(), "/api/v1/x".to_string())
        );
        assert_eq!(
            parse_url("shop.example.com").unwrap(),
            (false, "shop.example.com".to_string(), "/".to_string())
        );
        assert!(parse_url("ftp://a.com/").is_err());
        assert!(parse_url("http:// bad").is_err());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&url=https%3A%2F%2Fa.com%2Fx%3Fq%3D1+2", "url").as_deref(),
            Some("https://a.com/x?q=1 2")
        );
        assert_eq!(query_param("url=%zz%4", "url").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("x=1", "url"), None);
    }
}
