//! TLS termination end to end, checked by a real rustls client that verifies what it gets:
//! certificates chosen by SNI (exact, wildcard, default), the HTTP→HTTPS redirect, HTTP/2
//! over ALPN and h2c, and both TLS 1.2 and 1.3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http::StatusCode;
use http::Version;
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::ProtocolVersion;
use rustls::RootCertStore;
use rustls::SupportedProtocolVersion;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::UnixTime;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A `kubernetes.io/tls` Secret holding a PEM certificate and key.
fn tls_secret(ns: &str, name: &str, (cert, key): &(String, String)) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(cert),
        indent(key)
    )
}

fn der(cert_pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()
}

/// A client that trusts exactly the given certificates, with the given versions and ALPN.
fn client(trusted: &[&str], versions: &[&'static SupportedProtocolVersion], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for pem in trusted {
        roots.add(der(pem)).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// A verifying client with the safe default versions and no ALPN.
fn verifying(trusted: &[&str]) -> TlsConnector {
    client(trusted, rustls::DEFAULT_VERSIONS, &[])
}

/// Accepts any certificate (handshake signatures are still checked), to see which one is served.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate the server presents for `sni` (an IP address sends no SNI).
async fn served_cert(h: &Harness, sni: &str) -> CertificateDer<'static> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    let tls = connect(h, &TlsConnector::from(Arc::new(cfg)), sni)
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e}"));
    tls.get_ref().1.peer_certificates().expect("a certificate")[0]
        .clone()
        .into_owned()
}

async fn connect(h: &Harness, connector: &TlsConnector, sni: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(h.https()).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake within 10s")
}

/// Asserts the handshake failed because the certificate did not verify.
fn assert_bad_cert(r: std::io::Result<TlsStream<TcpStream>>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: handshake succeeded with a certificate that should not verify"),
        Err(e) => {
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            assert!(
                matches!(inner, Some(rustls::Error::InvalidCertificate(_))),
                "{what}: failed, but not on the certificate: {e:?}"
            );
        }
    }
}

/// One HTTP/1.1 request on `io`.
async fn get_over<S>(io: S, host: &str, path: &str) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    read(sender.send_request(req).await.unwrap()).await
}

struct Setup {
    h: Harness,
    _web: Echo,
    /// Certificate and key for `a.example.com`.
    exact: (String, String),
    /// Certificate and key for `*.wild.example.com`.
    wild: (String, String),
}

/// An echo upstream behind `a.example.com` (own Secret), `*.wild.example.com` (own Secret),
/// `plain.example.com` (in spec.tls without a Secret, ssl-redirect off) and `open.example.com`
/// (no TLS).
async fn setup() -> Setup {
    let web = Echo::start("web").await;
    let h = Harness::start().await;
    let exact = raftgate_proxy::tls::self_signed(&["a.example.com"]).unwrap();
    let wild = raftgate_proxy::tls::self_signed(&["*.wild.example.com"]).unwrap();
    assert_ne!(exact.0, wild.0);
    let mut m = service("tls", "web", &[&web]);
    m += &tls_secret("tls", "a-cert", &exact);
    m += &tls_secret("tls", "wild-cert", &wild);
    m += &(ingress("tls", "a", "a.example.com", &[("/", "Prefix", "web")], "")
        + "  tls:\n  - hosts: [a.example.com]\n    secretName: a-cert\n");
    m += &(ingress("tls", "wild", "*.wild.example.com", &[("/", "Prefix", "web")], "")
        + "  tls:\n  - hosts: [\"*.wild.example.com\"]\n    secretName: wild-cert\n");
    m += &(ingress(
        "tls",
        "plain",
        "plain.example.com",
        &[("/", "Prefix", "web")],
        "  annotations: {nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}\n",
    ) + "  tls:\n  - hosts: [plain.example.com]\n");
    m += &ingress("tls", "open", "open.example.com", &[("/", "Prefix", "web")], "");
    h.apply("tls.yaml", &m).await;
    let problems = h.node.state.problems();
    assert!(problems.is_empty(), "{problems:#?}");
    let table = h.node.state.dataplane.snapshot().table.clone();
    assert_eq!(
        table.sni.get("a.example.com").map(String::as_str),
        Some("tls/a-cert"),
        "{:?}",
        table.sni
    );
    assert_eq!(
        table.sni.get("*.wild.example.com").map(String::as_str),
        Some("tls/wild-cert"),
        "{:?}",
        table.sni
    );
    Setup {
        h,
        _web: web,
        exact,
        wild,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_ingress_certificate_and_unknown_names_get_the_default() {
    let Setup { h, _web, exact, wild } = setup().await;

    // Each name verifies against its own certificate alone, and the request is proxied as HTTPS.
    for (sni, cert) in [
        ("a.example.com", &exact.0),
        ("x.wild.example.com", &wild.0),
        ("X.Wild.Example.COM", &wild.0),
    ] {
        let tls = connect(&h, &verifying(&[cert]), sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e:?}"));
        let r = get_over(tls, sni, "/secure?q=1").await;
        assert_eq!(r.status, StatusCode::OK, "{sni}: {}", r.body);
        assert_eq!(r.backend(), Some("web"), "{sni}");
        let hd = &r.json()["headers"];
        assert_eq!(hd["x-forwarded-proto"], "https", "{sni}: {hd}");
        assert_eq!(hd["x-forwarded-port"], h.https().port().to_string(), "{sni}: {hd}");
        assert_eq!(r.json()["uri"], "/secure?q=1");
    }

    // Trusting only the other certificate fails: the served one is really the one chosen.
    assert_bad_cert(
        connect(&h, &verifying(&[&wild.0]), "a.example.com").await,
        "a.example.com with only the wildcard trusted",
    );
    assert_bad_cert(
        connect(&h, &verifying(&[&exact.0]), "x.wild.example.com").await,
        "x.wild.example.com with only the exact trusted",
    );

    // Unknown names, a name two labels under the wildcard, and no SNI at all: the default certificate.
    let both = verifying(&[&exact.0, &wild.0]);
    assert_bad_cert(connect(&h, &both, "unknown.example.com").await, "unknown.example.com");
    let default = served_cert(&h, "unknown.example.com").await;
    assert_ne!(default, der(&exact.0));
    assert_ne!(default, der(&wild.0));
    assert_eq!(
        served_cert(&h, "a.b.wild.example.com").await,
        default,
        "a wildcard covers one label only"
    );
    assert_eq!(served_cert(&h, "127.0.0.1").await, default, "no SNI");
    assert_eq!(served_cert(&h, "a.example.com").await, der(&exact.0));
    assert_eq!(served_cert(&h, "y.wild.example.com").await, der(&wild.0));
    // plain.example.com is in spec.tls without a Secret: the default certificate too.
    assert_eq!(served_cert(&h, "plain.example.com").await, default);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_redirects_unless_ssl_redirect_is_off() {
    let Setup { h, _web, .. } = setup().await;
    let port = h.https().port();

    for (host, path, location) in [
        (
            "a.example.com",
            "/some/path?x=1&y=2",
            format!("https://a.example.com:{port}/some/path?x=1&y=2"),
        ),
        ("A.Example.com:8080", "/", format!("https://a.example.com:{port}/")),
        (
            "x.wild.example.com",
            "/w?z",
            format!("https://x.wild.example.com:{port}/w?z"),
        ),
    ] {
        let r = get(h.http(), host, path).await;
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{host}{path}: {}", r.body);
        assert_eq!(
            r.headers.get("location").and_then(|v| v.to_str().ok()),
            Some(location.as_str()),
            "{host}{path}"
        );
        assert_eq!(r.backend(), None, "a redirect is not proxied");
    }

    // ssl-redirect "false": proxied over plain HTTP.
    let r = get(h.http(), "plain.example.com", "/p?q=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.backend(), Some("web"));
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    assert_eq!(r.json()["uri"], "/p?q=1");
    // A host without TLS is proxied too.
    assert_eq!(get(h.http(), "open.example.com", "/").await.backend(), Some("web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_alpn_and_h2c_with_prior_knowledge() {
    let Setup { h, _web, exact, .. } = setup().await;

    // ALPN h2 on TLS, several requests multiplexed on one connection.
    let tls = connect(
        &h,
        &client(&[&exact.0], rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]),
        "a.example.com",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("https://a.example.com/h2/{i}?n={i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            read(resp).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.backend(), Some("web"));
        let j = r.json();
        assert_eq!(j["uri"], format!("/h2/{i}?n={i}"));
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert_eq!(
            j["headers"]["host"], "a.example.com",
            "the upstream gets a Host from the :authority"
        );
    }

    // Offering only http/1.1 negotiates it.
    let tls = connect(
        &h,
        &client(&[&exact.0], rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
        "a.example.com",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_over(tls, "a.example.com", "/h1").await.backend(), Some("web"));

    // h2c with prior knowledge on the plain listener.
    let tcp = TcpStream::connect(h.http()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://open.example.com/h2c?x=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let r = read(resp).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.backend(), Some("web"));
    assert_eq!(r.json()["uri"], "/h2c?x=1");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    assert_eq!(r.json()["headers"]["host"], "open.example.com");
    // A TLS host over h2c redirects like over HTTP/1.1.
    let req = Request::get("http://a.example.com/r?y")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    let want = format!("https://a.example.com:{}/r?y", h.https().port());
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(want.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_both_negotiate() {
    let Setup { h, _web, exact, wild } = setup().await;
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for (sni, cert) in [("a.example.com", &exact.0), ("z.wild.example.com", &wild.0)] {
            let tls = connect(&h, &client(&[cert], &[version], &[]), sni)
                .await
                .unwrap_or_else(|e| panic!("{want:?} {sni}: {e:?}"));
            assert_eq!(tls.get_ref().1.protocol_version(), Some(want), "{sni}");
            let r = get_over(tls, sni, "/v").await;
            assert_eq!(r.status, StatusCode::OK, "{want:?} {sni}: {}", r.body);
            assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
        }
    }
}
