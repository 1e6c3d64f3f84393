//! End-to-end routing through real sockets: the Kubernetes host and path table, default
//! backends, class filtering, error statuses, forwarded headers and live changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::Request;
use http::StatusCode;
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_path_and_host_table_end_to_end() {
    let (root, aaa, bbb, exact, wild, any) = (
        Echo::start("root").await,
        Echo::start("aaa").await,
        Echo::start("bbb").await,
        Echo::start("exact").await,
        Echo::start("wild").await,
        Echo::start("any").await,
    );
    let h = Harness::start().await;
    let mut m = String::new();
    for (n, e) in [
        ("root", &root),
        ("aaa", &aaa),
        ("bbb", &bbb),
        ("exact", &exact),
        ("wild", &wild),
        ("any", &any),
    ] {
        m += &service("shop", n, &[e]);
    }
    m += &ingress(
        "shop",
        "main",
        "foo.com",
        &[
            ("/", "Prefix", "root"),
            ("/aaa", "Prefix", "aaa"),
            ("/aaa/bbb/", "Prefix", "bbb"),
            ("/aaa", "Exact", "exact"),
        ],
        "",
    );
    m += &ingress("shop", "wild", "*.foo.com", &[("/", "Prefix", "wild")], "");
    m += &ingress("shop", "any", "", &[("/nacos", "Prefix", "any")], "");
    h.apply("shop.yaml", &m).await;

    let cases = [
        ("foo.com", "/", Some("root")),
        ("foo.com", "/aaa", Some("exact")),
        ("foo.com", "/aaa/", Some("aaa")),
        ("foo.com", "/aaaccc", Some("root")),
        ("foo.com", "/aaa/bbb", Some("bbb")),
        ("foo.com", "/aaa/bbb/", Some("bbb")),
        ("foo.com", "/aaa/bbbxyz", Some("aaa")),
        ("foo.com", "/aaa/bbb/c?q=1", Some("bbb")),
        ("FOO.com:8080", "/aaa/x", Some("aaa")),
        ("bar.foo.com", "/x", Some("wild")),
        ("a.bar.foo.com", "/nacos/x", Some("any")),
        ("10.1.2.3", "/nacos", Some("any")),
        ("10.1.2.3", "/other", None),
    ];
    for (host, path, want) in cases {
        let r = get(h.http(), host, path).await;
        assert_eq!(r.backend(), want, "{host}{path}: {} {}", r.status, r.body);
        if want.is_none() {
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert!(r.body.len() < 100, "short 404 body");
        }
    }
    // The upstream gets the original URI, query included.
    assert_eq!(
        get(h.http(), "foo.com", "/aaa/bbb/c?q=1").await.json()["uri"],
        "/aaa/bbb/c?q=1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backends_and_class_filtering() {
    let (web, fallback) = (Echo::start("web").await, Echo::start("fallback").await);
    let h = Harness::start().await;
    let mut m = service("app", "web", &[&web]) + &service("app", "fallback", &[&fallback]);
    m += &ingress("app", "web", "web.com", &[("/app", "Prefix", "web")], "");
    m += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: catchall, namespace: app}\nspec:\n  ingressClassName: raftgate\n  defaultBackend: {service: {name: fallback, port: {name: http}}}\n";
    m += &ingress("app", "other-class", "other.com", &[("/", "Prefix", "web")], "")
        .replace("ingressClassName: raftgate", "ingressClassName: traefik");
    h.apply("app.yaml", &m).await;

    assert_eq!(get(h.http(), "web.com", "/app/1").await.backend(), Some("web"));
    assert_eq!(get(h.http(), "web.com", "/nope").await.backend(), Some("fallback"));
    assert_eq!(get(h.http(), "unknown.com", "/").await.backend(), Some("fallback"));
    assert_eq!(
        get(h.http(), "other.com", "/").await.backend(),
        Some("fallback"),
        "another class's Ingress is not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_503_unreachable_is_502_and_slow_is_504() {
    let slow = Echo::start_with("slow", Duration::from_secs(5)).await;
    let h = Harness::start().await;
    // A port nothing listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut m = String::new();
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: e}\nspec: {ports: [{name: http, port: 80}]}\n";
    m += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: dead, namespace: e}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: dead, namespace: e}}\nsubsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {}}}]}}]\n",
        dead.port()
    );
    m += &service("e", "slow", &[&slow]);
    m += &ingress("e", "a", "empty.com", &[("/", "Prefix", "empty")], "");
    m += &ingress("e", "b", "dead.com", &[("/", "Prefix", "dead")], "");
    m += &ingress(
        "e",
        "c",
        "slow.com",
        &[("/", "Prefix", "slow")],
        "  annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\"}\n",
    );
    m += &ingress("e", "d", "ghost.com", &[("/", "Prefix", "missing-service")], "");
    h.apply("e.yaml", &m).await;

    assert_eq!(
        get(h.http(), "empty.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(h.http(), "ghost.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(h.http(), "dead.com", "/").await.status, StatusCode::BAD_GATEWAY);
    let t = Instant::now();
    assert_eq!(get(h.http(), "slow.com", "/").await.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(t.elapsed() < Duration::from_secs(4), "the 1s read timeout applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_endpoint() {
    let live = Echo::start("live").await;
    let h = Harness::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Both endpoints in one Endpoints object: the dead one first.
    let m = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: mix, namespace: r}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: mix, namespace: r}}\nsubsets:\n- addresses: [{{ip: 127.0.0.2}}]\n  ports: [{{name: http, port: {}}}]\n- addresses: [{{ip: 127.0.0.1}}]\n  ports: [{{name: http, port: {}}}]\n",
        dead.port(),
        live.addr.port()
    ) + &ingress("r", "mix", "mix.com", &[("/", "Prefix", "mix")], "");
    h.apply("r.yaml", &m).await;
    for _ in 0..20 {
        let r = get(h.http(), "mix.com", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), Some("live"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_host_and_request_id() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    h.apply(
        "a.yaml",
        &(service("a", "web", &[&web]) + &ingress("a", "web", "web.com", &[("/", "Prefix", "web")], "")),
    )
    .await;
    let req = Request::get("/x")
        .header("host", "web.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h.http(), req).await;
    let hd = &r.json()["headers"];
    assert_eq!(hd["host"], "web.com", "Host is preserved");
    assert_eq!(hd["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "appended");
    assert_eq!(hd["x-real-ip"], "127.0.0.1");
    assert_eq!(hd["x-forwarded-proto"], "http");
    assert_eq!(hd["x-forwarded-host"], "web.com");
    assert_eq!(hd["x-forwarded-port"], h.http().port().to_string());
    let id = hd["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(
        hd.get("x-secret").is_none() && hd.get("keep-alive").is_none(),
        "hop-by-hop headers stripped: {hd}"
    );
    // An incoming request id is kept.
    let req = Request::get("/")
        .header("host", "web.com")
        .header("x-request-id", "abc-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(h.http(), req).await.json()["headers"]["x-request-id"], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_header_limits() {
    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.http.max_header_bytes = 8 * 1024).await;
    let m = service("a", "web", &[&web])
        + &ingress(
            "a",
            "web",
            "web.com",
            &[("/", "Prefix", "web")],
            "  annotations: {nginx.ingress.kubernetes.io/proxy-body-size: 1k}\n",
        );
    h.apply("a.yaml", &m).await;
    let post = |n: usize| {
        Request::post("/")
            .header("host", "web.com")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(send(h.http(), post(1024)).await.json()["body_len"], 1024);
    assert_eq!(send(h.http(), post(1025)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let big = Request::get("/")
        .header("host", "web.com")
        .header("x-big", "y".repeat(16 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(h.http(), big).await.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_apply_live_and_a_bad_object_leaves_the_rest_serving() {
    let (v1, v2) = (Echo::start("v1").await, Echo::start("v2").await);
    let h = Harness::start().await;
    // Services alone change no route, so they produce no new version.
    h.write("svc.yaml", &(service("a", "v1", &[&v1]) + &service("a", "v2", &[&v2])));
    h.apply(
        "ing.yaml",
        &ingress("a", "web", "web.com", &[("/", "Prefix", "v1")], ""),
    )
    .await;
    assert_eq!(get(h.http(), "web.com", "/").await.backend(), Some("v1"));

    let t = Instant::now();
    h.apply(
        "ing.yaml",
        &ingress("a", "web", "web.com", &[("/", "Prefix", "v2")], ""),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "applied within 1s: {:?}",
        t.elapsed()
    );
    assert_eq!(get(h.http(), "web.com", "/").await.backend(), Some("v2"));

    // A garbage file and an invalid Ingress: both reported, neither disturbs web.com.
    h.write("garbage.yaml", "kind: [this is not yaml");
    let bad = ingress(
        "a",
        "bad",
        "bad.com",
        &[("/(", "ImplementationSpecific", "v1")],
        "  annotations: {nginx.ingress.kubernetes.io/use-regex: \"true\"}\n",
    );
    h.apply(
        "bad.yaml",
        &(bad + &ingress("a", "good", "good.com", &[("/", "Prefix", "v1")], "")),
    )
    .await;
    assert_eq!(get(h.http(), "good.com", "/").await.backend(), Some("v1"));
    assert_eq!(get(h.http(), "web.com", "/").await.backend(), Some("v2"));
    assert_eq!(get(h.http(), "bad.com", "/").await.status, StatusCode::NOT_FOUND);
    let problems = h.node.state.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.object == "a/bad" && p.reason.contains("invalid regex")),
        "{problems:?}"
    );

    // A broken edit of the whole ingress file keeps what it held.
    h.write(
        "ing.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: a\n",
    );
    h.apply(
        "more.yaml",
        &ingress("a", "more", "more.com", &[("/", "Prefix", "v1")], ""),
    )
    .await;
    assert_eq!(get(h.http(), "more.com", "/").await.backend(), Some("v1"));
    assert_eq!(get(h.http(), "web.com", "/").await.backend(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_endpoints() {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let h = Harness::start().await;
    // Same IP, different ports: two slices.
    h.apply(
        "a.yaml",
        &(service("a", "web", &[&a, &b]) + &ingress("a", "web", "web.com", &[("/", "Prefix", "web")], "")),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(h.http(), "web.com", "/").await.status, StatusCode::OK);
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), 5);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_finishes_in_flight_requests_and_stops_accepting() {
    let slow = Echo::start_with("slow", Duration::from_millis(500)).await;
    let h = Harness::start().await;
    h.apply(
        "a.yaml",
        &(service("a", "slow", &[&slow]) + &ingress("a", "slow", "slow.com", &[("/", "Prefix", "slow")], "")),
    )
    .await;
    let addr = h.http();
    let in_flight = tokio::spawn(async move { get(addr, "slow.com", "/").await });
    // Wait until the upstream has the request, then drain.
    while slow.hits.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    let Harness { dir: _dir, node } = h;
    let left = node.shutdown_within(Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_backend_protocol_speaks_http2_upstream() {
    let web = Echo::start("h2").await;
    let h = Harness::start().await;
    let m = service("g", "h2", &[&web])
        + &ingress(
            "g",
            "h2",
            "grpc.com",
            &[("/", "Prefix", "h2")],
            "  annotations: {nginx.ingress.kubernetes.io/backend-protocol: GRPC}\n",
        )
        + &service("g", "h1", &[&web])
        + &ingress("g", "h1", "plain.com", &[("/", "Prefix", "h1")], "");
    h.apply("g.yaml", &m).await;
    let r = get(h.http(), "grpc.com", "/pkg.Service/Method").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["uri"], "http://grpc.com/pkg.Service/Method");
    assert_eq!(get(h.http(), "plain.com", "/").await.json()["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_status_and_metrics() {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let v = h
        .apply(
            "a.yaml",
            &(service("a", "web", &[&web]) + &ingress("a", "web", "web.com", &[("/api", "Prefix", "web")], "")),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(get(h.http(), "web.com", "/api/x").await.status, StatusCode::OK);
    }
    assert_eq!(get(h.http(), "web.com", "/nope").await.status, StatusCode::NOT_FOUND);
    let admin = h.node.admin_addr;
    assert_eq!(get(admin, "x", "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(admin, "x", "/readyz").await.status, StatusCode::OK);
    let status = get(admin, "x", "/api/v1/status").await.json();
    assert_eq!(status["node_id"], "test");
    assert_eq!(status["config_version"], v);
    assert_eq!(status["routes"], 1);
    assert_eq!(status["listeners"].as_array().unwrap().len(), 3);
    let metrics = get(admin, "x", "/metrics").await.body;
    assert!(
        metrics.contains("raftgate_http_requests_total{host=\"web.com\",route=\"/api\",status=\"2xx\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("raftgate_http_requests_total{host=\"\",route=\"\",status=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("raftgate_config_version {v}")), "{metrics}");
    assert!(
        metrics.contains("raftgate_http_request_duration_seconds_count{host=\"web.com\",route=\"/api\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_name_service_resolves_by_dns_when_connecting() {
    let web = Echo::start("external").await;
    let h = Harness::start().await;
    // `localhost` resolves from /etc/hosts, so this needs no network.
    let m = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: x}}\nspec: {{type: ExternalName, externalName: localhost, ports: [{{name: http, port: {}}}]}}\n",
        web.addr.port()
    ) + &ingress("x", "ext", "ext.com", &[("/", "Prefix", "ext")], "");
    h.apply("x.yaml", &m).await;
    let r = get(h.http(), "ext.com", "/").await;
    assert_eq!(r.backend(), Some("external"), "{} {}", r.status, r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let h = Harness::start_with(|c| c.http.header_read_timeout = Duration::from_millis(500)).await;
    let mut s = tokio::net::TcpStream::connect(h.http()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow.com\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    // The proxy closes the connection (possibly after a 408): reading reaches EOF.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5s");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        t.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_connections_until_one_closes() {
    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.http.max_connections = 1).await;
    h.apply(
        "a.yaml",
        &(service("a", "web", &[&web]) + &ingress("a", "web", "web.com", &[("/", "Prefix", "web")], "")),
    )
    .await;
    // The first connection takes the only slot and stays open (keep-alive).
    let first = tokio::net::TcpStream::connect(h.http()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(first))
        .await
        .unwrap();
    let first_conn = tokio::spawn(conn);
    let req = || {
        Request::get("/")
            .header("host", "web.com")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        read(sender.send_request(req()).await.unwrap()).await.status,
        StatusCode::OK
    );
    // A second connection is not served while the first is open...
    let addr = h.http();
    let second = tokio::spawn(async move { send(addr, req()).await });
    tokio::time::sleep(Duration::from_millis(300)).await; // a negative check: nothing to wait for
    assert!(!second.is_finished(), "served beyond the cap");
    // ...and is served as soon as it closes.
    drop(sender);
    let _ = first_conn.await;
    let r = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served after the first closed")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpcs_backends_speak_tls_upstream() {
    let secure = Echo::start_tls("secure").await;
    let h = Harness::start().await;
    let m = service("s", "secure", &[&secure])
        + &ingress(
            "s",
            "h1",
            "https.com",
            &[("/", "Prefix", "secure")],
            "  annotations: {nginx.ingress.kubernetes.io/backend-protocol: HTTPS}\n",
        )
        + &ingress(
            "s",
            "h2",
            "grpcs.com",
            &[("/", "Prefix", "secure")],
            "  annotations: {nginx.ingress.kubernetes.io/backend-protocol: GRPCS}\n",
        )
        + &ingress("s", "plain", "plain.com", &[("/", "Prefix", "secure")], "");
    h.apply("s.yaml", &m).await;
    let r = get(h.http(), "https.com", "/x").await;
    assert_eq!(r.backend(), Some("secure"), "{} {}", r.status, r.body);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    let r = get(h.http(), "grpcs.com", "/pkg.S/M").await;
    assert_eq!(r.json()["version"], "HTTP/2.0", "{} {}", r.status, r.body);
    // Plain HTTP to a TLS-only upstream fails as a bad gateway, not a hang.
    assert_eq!(get(h.http(), "plain.com", "/").await.status, StatusCode::BAD_GATEWAY);
}
