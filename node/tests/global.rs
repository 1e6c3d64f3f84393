//! Controller-wide settings (the config's `defaults` and the ingress-nginx ConfigMap named
//! by `controller_configmap`): HSTS, TLS versions, forwarded headers, PROXY protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http::StatusCode;
use http_body_util::Full;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An HTTPS GET that accepts any certificate (these tests are not about certificates).
async fn https_get(
    addr: std::net::SocketAddr,
    host: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Option<Reply> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    Some(read(sender.send_request(req).await.unwrap()).await)
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12, &rustls::version::TLS13];

fn tls_ingress(host: &str) -> String {
    ingress("g", "tls", host, &[("/", "Prefix", "web")], "") + &format!("  tls:\n  - hosts: [{host}]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_on_https_responses_and_the_configmap_turns_it_off_live() {
    let web = Echo::start("web").await;
    let h =
        Harness::start_with(|c| c.controller_configmap = Some("ingress-nginx/ingress-nginx-controller".into())).await;
    h.apply("a.yaml", &(service("g", "web", &[&web]) + &tls_ingress("secure.com")))
        .await;
    let r = https_get(h.https(), "secure.com", BOTH).await.unwrap();
    assert_eq!(r.backend(), Some("web"));
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=15724800; includeSubDomains"
    );
    // ssl-redirect answers plain HTTP; HSTS is only ever sent over HTTPS.
    assert!(
        get(h.http(), "secure.com", "/")
            .await
            .headers
            .get("strict-transport-security")
            .is_none()
    );

    h.apply("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ingress-nginx-controller, namespace: ingress-nginx}\ndata: {hsts: \"false\", hsts-max-age: \"100\"}\n").await;
    let r = https_get(h.https(), "secure.com", BOTH).await.unwrap();
    assert!(r.headers.get("strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_protocols_limits_the_tls_versions_offered() {
    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.defaults.ssl_protocols = "TLSv1.3".into()).await;
    h.apply("a.yaml", &(service("g", "web", &[&web]) + &tls_ingress("secure.com")))
        .await;
    assert!(
        https_get(h.https(), "secure.com", &[&rustls::version::TLS13])
            .await
            .is_some()
    );
    assert!(
        https_get(h.https(), "secure.com", &[&rustls::version::TLS12])
            .await
            .is_none(),
        "TLS 1.2 refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_trusted_only_when_configured() {
    let web = Echo::start("web").await;
    let req = || {
        Request::get("/")
            .header("host", "fw.com")
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.5")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let m = service("g", "web", &[&web])
        + &ingress(
            "g",
            "fw",
            "fw.com",
            &[("/", "Prefix", "web")],
            "  annotations: {nginx.ingress.kubernetes.io/allowlist-source-range: \"203.0.113.0/24\"}\n",
        );

    // Not trusted (the default): the TCP peer is the client, so the allowlist refuses it.
    let h = Harness::start().await;
    h.apply("a.yaml", &m).await;
    assert_eq!(send(h.http(), req()).await.status, StatusCode::FORBIDDEN);

    // Trusted, with 10.0.0.0/8 and loopback as proxies: the client is 203.0.113.7.
    let h = Harness::start_with(|c| {
        c.defaults.use_forwarded_headers = true;
        c.defaults.proxy_real_ip_cidr = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()];
    })
    .await;
    h.apply("a.yaml", &m).await;
    let r = send(h.http(), req()).await;
    assert_eq!(r.backend(), Some("web"), "{}", r.body);
    let hd = &r.json()["headers"];
    assert_eq!(hd["x-real-ip"], "203.0.113.7");
    assert_eq!(hd["x-forwarded-proto"], "https", "passed through");
    assert_eq!(hd["x-forwarded-for"], "203.0.113.7, 10.0.0.5, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_on_the_l7_listener_gives_the_client_address() {
    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.defaults.use_proxy_protocol = true).await;
    h.apply(
        "a.yaml",
        &(service("g", "web", &[&web]) + &ingress("g", "pp", "pp.com", &[("/", "Prefix", "web")], "")),
    )
    .await;

    let mut s = TcpStream::connect(h.http()).await.unwrap();
    s.write_all(
        b"PROXY TCP4 198.51.100.9 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\nHost: pp.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"x-real-ip\":\"198.51.100.9\""), "{out}");

    // v2, binary, split from the request.
    let mut s = TcpStream::connect(h.http()).await.unwrap();
    let header =
        raftgate_proxy::proxy_protocol::encode_v2("192.0.2.44:1000".parse().unwrap(), "10.0.0.1:80".parse().unwrap());
    s.write_all(&header).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pp.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("\"x-real-ip\":\"192.0.2.44\""), "{out}");

    // Without a PROXY header the connection is refused.
    let mut s = TcpStream::connect(h.http()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pp.com\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_configmap_sets_route_defaults_and_reports_bad_keys() {
    let web = Echo::start("web").await;
    let h =
        Harness::start_with(|c| c.controller_configmap = Some("ingress-nginx/ingress-nginx-controller".into())).await;
    let cm = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ingress-nginx-controller, namespace: ingress-nginx}\ndata: {proxy-body-size: 2k, ssl-protocols: SSLv3}\n";
    h.apply(
        "a.yaml",
        &(service("g", "web", &[&web]) + &ingress("g", "b", "body.com", &[("/", "Prefix", "web")], "") + cm),
    )
    .await;
    let post = |n: usize| {
        Request::post("/")
            .header("host", "body.com")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(send(h.http(), post(2048)).await.status, StatusCode::OK);
    assert_eq!(send(h.http(), post(2049)).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let problems = h.node.state.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.kind == "ConfigMap" && p.reason.contains("ssl-protocols")),
        "{problems:?}"
    );
}
