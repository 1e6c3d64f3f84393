//! ingress-nginx annotations end to end: each one's behaviour on the wire (statuses,
//! headers, which backend answered).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http::StatusCode;
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_app_root_and_force_ssl_redirect() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let m = service("r", "web", &[&web])
        + &ingress(
            "r",
            "perm",
            "perm.com",
            &[("/", "Prefix", "web")],
            &ann(&[("permanent-redirect", "https://new.example.org/landing")]),
        )
        + &ingress(
            "r",
            "temp",
            "temp.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("temporal-redirect", "https://maint.example.org/"),
                ("temporal-redirect-code", "307"),
            ]),
        )
        + &ingress(
            "r",
            "root",
            "corp.com",
            &[("/", "Prefix", "web")],
            &ann(&[("app-root", "/corp")]),
        )
        + &ingress(
            "r",
            "force",
            "force.com",
            &[("/", "Prefix", "web")],
            &ann(&[("force-ssl-redirect", "true")]),
        );
    h.apply("r.yaml", &m).await;

    let r = get(h.http(), "perm.com", "/anything").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers["location"], "https://new.example.org/landing");
    let r = get(h.http(), "temp.com", "/").await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers["location"], "https://maint.example.org/");
    let r = get(h.http(), "corp.com", "/").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "http://corp.com/corp");
    assert_eq!(
        get(h.http(), "corp.com", "/corp/page").await.backend(),
        Some("web"),
        "only / is redirected"
    );
    let r = get(h.http(), "force.com", "/x?y=1").await;
    assert_eq!(
        r.status,
        StatusCode::PERMANENT_REDIRECT,
        "no TLS on the host, still redirected"
    );
    assert_eq!(
        r.headers["location"],
        format!("https://force.com:{}/x?y=1", h.https().port())
    );
    assert_eq!(
        web.hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "redirects never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_with_captures_and_x_forwarded_prefix() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let m = service("w", "web", &[&web])
        + &ingress(
            "w",
            "rw",
            "rw.com",
            &[("/something(/|$)(.*)", "ImplementationSpecific", "web")],
            &ann(&[
                ("rewrite-target", "/$2"),
                ("use-regex", "true"),
                ("x-forwarded-prefix", "/something"),
            ]),
        );
    h.apply("w.yaml", &m).await;
    for (path, upstream_uri) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new?q=1", "/new?q=1"),
        ("/something/a/b", "/a/b"),
    ] {
        let r = get(h.http(), "rw.com", path).await;
        assert_eq!(r.json()["uri"], upstream_uri, "{path}");
        assert_eq!(r.json()["headers"]["x-forwarded-prefix"], "/something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_at_the_edge_and_responses_carry_cors_headers() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let m = service("c", "web", &[&web])
        + &ingress(
            "c",
            "api",
            "api.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("enable-cors", "true"),
                ("cors-allow-origin", "https://app.com"),
                ("cors-max-age", "600"),
            ]),
        );
    h.apply("c.yaml", &m).await;
    let pre = Request::options("/v1/items")
        .header("host", "api.com")
        .header("origin", "https://app.com")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h.http(), pre).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.com");
    assert_eq!(r.headers["access-control-max-age"], "600");
    assert!(
        r.headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        web.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "preflight never reaches the upstream"
    );

    let simple = Request::get("/v1/items")
        .header("host", "api.com")
        .header("origin", "https://app.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h.http(), simple).await;
    assert_eq!(r.backend(), Some("web"));
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.com");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let other = Request::get("/")
        .header("host", "api.com")
        .header("origin", "https://evil.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(
        send(h.http(), other)
            .await
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_annotation_serves_when_the_service_has_no_endpoints() {
    let fallback = Echo::start("fallback").await;
    let h = Harness::start().await;
    let m = "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: d}\nspec: {ports: [{name: http, port: 80}]}\n".to_string()
        + &service("d", "fallback", &[&fallback])
        + &ingress("d", "i", "d.com", &[("/", "Prefix", "empty")], &ann(&[("default-backend", "fallback")]))
        + &ingress("d", "j", "nofallback.com", &[("/", "Prefix", "empty")], "");
    h.apply("d.yaml", &m).await;
    assert_eq!(get(h.http(), "d.com", "/").await.backend(), Some("fallback"));
    assert_eq!(
        get(h.http(), "nofallback.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_retries_idempotent_requests_on_listed_statuses() {
    let (bad, good) = (Echo::start_status("bad", 502).await, Echo::start("good").await);
    // No passive health, so round-robin keeps offering the failing endpoint.
    let h = Harness::start_with(|c| c.defaults.upstream_max_fails = 0).await;
    let both = service("n", "mix", &[&bad, &good]);
    let m = both.clone()
        + &ingress(
            "n",
            "retry",
            "retry.com",
            &[("/", "Prefix", "mix")],
            &ann(&[("proxy-next-upstream", "error timeout http_502")]),
        )
        + &ingress("n", "plain", "plain.com", &[("/", "Prefix", "mix")], "");
    h.apply("n.yaml", &m).await;
    for _ in 0..6 {
        let r = get(h.http(), "retry.com", "/").await;
        assert_eq!(r.backend(), Some("good"), "a 502 is retried on the other endpoint");
    }
    // Without the annotation a 502 is passed through, and a POST is never resent.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(h.http(), "plain.com", "/").await.status);
    }
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    let mut posted = Vec::new();
    for _ in 0..4 {
        let req = Request::post("/")
            .header("host", "retry.com")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        posted.push(send(h.http(), req).await.status);
    }
    assert!(posted.contains(&StatusCode::BAD_GATEWAY), "{posted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_alias_serves_the_same_routes() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let m = service("a", "web", &[&web])
        + &ingress(
            "a",
            "i",
            "main.com",
            &[("/", "Prefix", "web")],
            &ann(&[("server-alias", "www.main.com")]),
        );
    h.apply("a.yaml", &m).await;
    assert_eq!(get(h.http(), "www.main.com", "/").await.backend(), Some("web"));
    assert_eq!(get(h.http(), "other.com", "/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_source_range_answers_403_outside_the_ranges() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let m = service("a", "web", &[&web])
        + &ingress(
            "a",
            "in",
            "in.com",
            &[("/", "Prefix", "web")],
            &ann(&[("allowlist-source-range", "10.0.0.0/8, 127.0.0.0/8")]),
        )
        + &ingress(
            "a",
            "out",
            "out.com",
            &[("/", "Prefix", "web")],
            &ann(&[("whitelist-source-range", "10.0.0.0/8")]),
        );
    h.apply("a.yaml", &m).await;
    assert_eq!(get(h.http(), "in.com", "/").await.backend(), Some("web"));
    assert_eq!(get(h.http(), "out.com", "/").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rps_trips_with_the_configured_status_and_spares_other_routes() {
    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.defaults.limit_req_status_code = 429).await;
    let m = service("l", "web", &[&web])
        + &ingress(
            "l",
            "lim",
            "lim.com",
            &[("/", "Prefix", "web")],
            &ann(&[("limit-rps", "1"), ("limit-burst-multiplier", "2")]),
        )
        + &ingress("l", "free", "free.com", &[("/", "Prefix", "web")], "");
    h.apply("l.yaml", &m).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(h.http(), "lim.com", "/").await.status.as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // rate 1/s with burst 2: three through at once (one more if a second ticks over).
    assert!((3..=4).contains(&ok), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert_eq!(statuses[9], 429);
    for _ in 0..10 {
        assert_eq!(
            get(h.http(), "free.com", "/").await.status,
            StatusCode::OK,
            "other routes are not limited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_connections_caps_requests_in_flight_per_client() {
    let slow = Echo::start_with("slow", std::time::Duration::from_millis(400)).await;
    let h = Harness::start().await;
    let m = service("c", "slow", &[&slow])
        + &ingress(
            "c",
            "c",
            "c.com",
            &[("/", "Prefix", "slow")],
            &ann(&[("limit-connections", "2")]),
        );
    h.apply("c.yaml", &m).await;
    let addr = h.http();
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "c.com", "/").await.status }))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 2, "{statuses:?}");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
            .count(),
        3
    );
    // Slots come back when responses end.
    assert_eq!(get(addr, "c.com", "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_challenges_and_checks_htpasswd_credentials() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    // {SHA} of "pass", as `htpasswd -s` writes it.
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: basic-auth, namespace: b}\ntype: Opaque\nstringData: {auth: \"alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\"}\n";
    let m = service("b", "web", &[&web])
        + secret
        + &ingress(
            "b",
            "b",
            "b.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("auth-type", "basic"),
                ("auth-secret", "basic-auth"),
                ("auth-realm", "Authentication Required - alice"),
            ]),
        );
    h.apply("b.yaml", &m).await;
    let r = get(h.http(), "b.com", "/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        "Basic realm=\"Authentication Required - alice\""
    );
    let with = |auth: &'static str| {
        Request::get("/")
            .header("host", "b.com")
            .header("authorization", auth)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send(h.http(), with("Basic YWxpY2U6cGFzcw==")).await.backend(),
        Some("web")
    ); // alice:pass
    assert_eq!(
        send(h.http(), with("Basic YWxpY2U6d3Jvbmc=")).await.status,
        StatusCode::UNAUTHORIZED
    ); // alice:wrong
    assert_eq!(
        send(h.http(), with("Basic Ym9iOnBhc3M=")).await.status,
        StatusCode::UNAUTHORIZED
    ); // bob:pass
    assert_eq!(
        send(h.http(), with("Bearer abc")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        web.hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the authenticated request got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_http_errors_are_answered_by_the_error_backend() {
    let (broken, errors) = (
        Echo::start_status("broken", 503).await,
        Echo::start("error-pages").await,
    );
    let h = Harness::start().await;
    let m = service("e", "broken", &[&broken])
        + &service("e", "errors", &[&errors])
        + &ingress(
            "e",
            "shop",
            "shop.com",
            &[("/", "Prefix", "broken")],
            &ann(&[("custom-http-errors", "404,503"), ("default-backend", "errors")]),
        )
        + &ingress("e", "plain", "plain.com", &[("/", "Prefix", "broken")], "");
    h.apply("e.yaml", &m).await;
    let req = Request::get("/cart?id=7")
        .header("host", "shop.com")
        .header("accept", "text/html")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h.http(), req).await;
    assert_eq!(r.json()["backend"], "error-pages", "{} {}", r.status, r.body);
    let hd = &r.json()["headers"];
    assert_eq!(hd["x-code"], "503");
    assert_eq!(hd["x-original-uri"], "/cart?id=7");
    assert_eq!(hd["x-namespace"], "e");
    assert_eq!(hd["x-ingress-name"], "shop");
    assert_eq!(hd["x-service-name"], "broken");
    assert_eq!(hd["x-format"], "text/html");
    // The error backend sees the request's id, generated here as for the upstream.
    let id = hd["x-request-id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "x-request-id at the error backend: {hd}"
    );
    let req = Request::get("/")
        .header("host", "shop.com")
        .header("x-request-id", "trace-7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h.http(), req).await;
    assert_eq!(r.json()["headers"]["x-request-id"], "trace-7", "{}", r.body);
    // Without the annotation the upstream's 503 goes through as is.
    let r = get(h.http(), "plain.com", "/").await;
    assert_eq!(
        (r.status, r.backend()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("broken"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_gives_up_on_an_upstream_that_stops_reading() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    // An upstream that accepts and never reads: once the socket buffers fill, writes block.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let h = Harness::start().await;
    let m = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: hole, namespace: s}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: hole, namespace: s}}\nsubsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {hole_port}}}]}}]\n"
    ) + &ingress(
        "s",
        "up",
        "upload.com",
        &[("/", "Prefix", "hole")],
        &ann(&[
            ("proxy-send-timeout", "1"),
            ("proxy-read-timeout", "60"),
            ("proxy-body-size", "0"),
        ]),
    );
    h.apply("s.yaml", &m).await;

    let body_len: usize = 256 << 20;
    let stream = tokio::net::TcpStream::connect(h.http()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: upload.com\r\nContent-Length: {body_len}\r\n\r\n");
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(body_len >> 20) {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read(&mut buf))
        .await
        .expect("an answer before the 60s read timeout")
        .unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(line.starts_with("HTTP/1.1 504"), "{line}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
