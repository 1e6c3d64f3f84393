//! Answers given at the edge without an upstream: redirects, `app-root`, CORS, and the
//! `rewrite-target` of the upstream URI. Pure functions of the request and the route policy.

use bytes::Bytes;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Uri;
use http::header;
use http_body_util::BodyExt;
use http_body_util::Empty;
use regex::Regex;

use crate::model::Cors;
use crate::pool::Body;
use crate::pool::BoxError;

/// A redirect response to `location`.
pub fn redirect(code: u16, location: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = crate::handler::local(status, "redirect\n");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `app-root`: a request for exactly `/` is sent to the app's root with a 302, as
/// ingress-nginx's `return 302 $scheme://$http_host$app_root`.
pub fn app_root<B>(req: &Request<B>, host: &str, root: &str, tls: bool) -> Option<Response<Body>> {
    if req.uri().path() != "/" {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(redirect(302, &format!("{scheme}://{host}{root}")))
}

/// The origin to allow for a request, if any: `*`, or the request's own origin when it is listed.
fn allowed_origin(cors: &Cors, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    if cors.allow_origin.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin = origin?;
    let o = origin.to_str().ok()?;
    cors.allow_origin
        .iter()
        .any(|a| a.eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`), answered
/// here with 204 as ingress-nginx does, before authentication.
pub fn cors_preflight<B>(req: &Request<B>, cors: &Cors) -> Option<Response<Body>> {
    let h = req.headers();
    if req.method() != Method::OPTIONS
        || !h.contains_key(header::ORIGIN)
        || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(BoxError::from).boxed());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let out = resp.headers_mut();
    cors_headers(out, cors, h.get(header::ORIGIN));
    if out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        let mut put = |name, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(name, v);
            }
        };
        put(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
        put(header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
        put(header::ACCESS_CONTROL_MAX_AGE, &cors.max_age.to_string());
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Some(resp)
}

/// The CORS headers every response of a CORS-enabled route carries.
pub fn cors_headers(out: &mut HeaderMap, cors: &Cors, origin: Option<&HeaderValue>) {
    let Some(allow) = allowed_origin(cors, origin) else {
        return;
    };
    let echoes = allow != "*";
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    if echoes {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers)
    {
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// `rewrite-target`: when `re` matches the (normalised) path, the whole path becomes the
/// target with `$1`… expanded, and the query string is kept, as nginx's `rewrite … break`.
pub fn rewrite(re: &Regex, target: &str, uri: &Uri) -> Option<Uri> {
    let path = crate::router::normalize_path(uri.path());
    let caps = re.captures(&path)?;
    let mut out = String::with_capacity(target.len() + 16);
    caps.expand(target, &mut out);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(q) = uri.query() {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(q);
    }
    out.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            allow_origin: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: "GET, POST".into(),
            allow_headers: "Content-Type".into(),
            expose_headers: "X-Total".into(),
            allow_credentials: true,
            max_age: 600,
        }
    }

    fn rw(pattern: &str, target: &str, uri: &str) -> Option<String> {
        let re = regex::RegexBuilder::new(&format!("^(?:{pattern})"))
            .case_insensitive(true)
            .build()
            .unwrap();
        rewrite(&re, target, &uri.parse().unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn rewrites_follow_the_ingress_nginx_examples() {
        // The rewrite-target example from the ingress-nginx docs.
        let p = "/something(/|$)(.*)";
        assert_eq!(rw(p, "/$2", "/something").as_deref(), Some("/"));
        assert_eq!(rw(p, "/$2", "/something/").as_deref(), Some("/"));
        assert_eq!(rw(p, "/$2", "/something/new").as_deref(), Some("/new"));
        assert_eq!(rw(p, "/$2", "/something/new?x=1").as_deref(), Some("/new?x=1"));
        assert_eq!(
            rw(p, "/$2", "/SomeThing/new").as_deref(),
            Some("/new"),
            "case-insensitive like ~*"
        );
        assert_eq!(rw(p, "/$2", "/other"), None);
        // Without captures the whole path is replaced.
        assert_eq!(rw(&regex::escape("/app"), "/", "/app/deep/path").as_deref(), Some("/"));
        assert_eq!(
            rw("/a(.*)", "/b?fixed=1", "/a/x?y=2").as_deref(),
            Some("/b?fixed=1&y=2")
        );
    }

    #[test]
    fn cors_allows_listed_origins_and_star() {
        let mut h = HeaderMap::new();
        cors_headers(
            &mut h,
            &cors(&["https://a.com"]),
            Some(&HeaderValue::from_static("https://a.com")),
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.com");
        assert_eq!(h[header::VARY], "Origin");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Total");
        let mut h = HeaderMap::new();
        cors_headers(
            &mut h,
            &cors(&["https://a.com"]),
            Some(&HeaderValue::from_static("https://evil.com")),
        );
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        cors_headers(&mut h, &cors(&["*"]), None);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn preflight_is_answered_only_for_real_preflights() {
        let pre = Request::options("/x")
            .header(header::ORIGIN, "https://a.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .unwrap();
        let r = cors_preflight(&pre, &cors(&["https://a.com"])).unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        let plain_options = Request::options("/x").body(()).unwrap();
        assert!(cors_preflight(&plain_options, &cors(&["*"])).is_none());
    }

    #[test]
    fn app_root_only_for_the_root() {
        let root = Request::get("/").body(()).unwrap();
        let r = app_root(&root, "corp.com", "/corp", false).unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "http://corp.com/corp");
        assert!(app_root(&Request::get("/x").body(()).unwrap(), "corp.com", "/corp", false).is_none());
    }
}
