//! Migration from ingress-nginx: the manifests from the users' field notes (shared/seeds),
//! applied unchanged but for addresses pointing at loopback test servers, behave as the
//! notes document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use futures_util::StreamExt;
use http::StatusCode;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

/// A TCP echo server standing in for the external MySQL.
async fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A WebSocket echo server.
async fn ws_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_manifests_from_the_field_notes_work_unchanged() {
    let mysql = tcp_echo().await;
    let ws = ws_echo().await;
    let (nacos, corp) = (Echo::start("nacos").await, Echo::start("corp").await);
    let tcp_port = free_port();
    let h = Harness::start_with(|c| {
        c.ingress_class.name = "nginx".into();
        c.l4.tcp_services_configmap = Some("ingress-nginx/tcp-services".into());
        c.l4.bind = "127.0.0.1".parse().unwrap();
    })
    .await;
    let (cert, key) = raftgate_proxy::tls::self_signed(&["example-corp.com", "www.example-corp.com"]).unwrap();

    // 6.2 / 6.3: a MySQL outside the cluster, reached through hand-written Endpoints and the
    // tcp-services ConfigMap (Endpoints.name equals Service.name; port 7306 -> 3306).
    let external_mysql = format!(
        r#"apiVersion: v1
kind: Endpoints
metadata:
  name: external-mysql
  namespace: example-corp
subsets:
- addresses:
  - ip: 127.0.0.1
  ports:
  - port: {mysql_port}
    protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: external-mysql
  namespace: example-corp
spec:
  clusterIP: None
  type: ClusterIP
  ports:
  - port: 7306
    protocol: TCP
    targetPort: {mysql_port}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: tcp-services
  namespace: ingress-nginx
data:
  "{tcp_port}": "example-corp/external-mysql:7306"
"#,
        mysql_port = mysql.port()
    );

    // 4.1: the Nacos console under /nacos with no host, use-regex on, port by name.
    let nacos_yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: nacos-headless, namespace: example-corp}}
spec:
  clusterIP: None
  ports: [{{name: server, port: 8848}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: nacos-headless, namespace: example-corp}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: server, port: {}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: nacos-ingress
  namespace: example-corp
  annotations:
    nginx.ingress.kubernetes.io/use-regex: "true"
spec:
  ingressClassName: nginx
  rules:
  - http:
      paths:
      - pathType: Prefix
        path: /nacos
        backend:
          service:
            name: nacos-headless
            port:
              name: server
"#,
        nacos.addr.port()
    );

    // 4.2 app-root, plus TLS for example-corp.com and www.example-corp.com from one Secret,
    // and a WebSocket service with 3600 s timeouts.
    let corp_yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: example-corp-tls, namespace: example-corp}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}  tls.key: |
{key}---
apiVersion: v1
kind: Service
metadata: {{name: portal, namespace: example-corp}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: portal, namespace: example-corp}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {corp_port}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: portal
  namespace: example-corp
  annotations:
    nginx.ingress.kubernetes.io/app-root: /corp
spec:
  ingressClassName: nginx
  tls:
  - hosts: [example-corp.com, www.example-corp.com]
    secretName: example-corp-tls
  rules:
  - host: example-corp.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: portal, port: {{number: 80}}}}}}}}
  - host: www.example-corp.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: portal, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: ws, namespace: example-corp}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: ws, namespace: example-corp}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {ws_port}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ws
  namespace: example-corp
  annotations:
    nginx.ingress.kubernetes.io/proxy-read-timeout: "3600"
    nginx.ingress.kubernetes.io/proxy-send-timeout: "3600"
spec:
  ingressClassName: nginx
  rules:
  - host: ws.example-corp.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: ws, port: {{number: 80}}}}}}}}
"#,
        cert = indent(&cert),
        key = indent(&key),
        corp_port = corp.addr.port(),
        ws_port = ws.port(),
    );
    h.write("external-mysql.yaml", &external_mysql);
    h.write("nacos.yaml", &nacos_yaml);
    h.apply("corp.yaml", &corp_yaml).await;
    // Everything compiled without a rejection.
    let problems = h.node.state.problems();
    assert!(
        problems
            .iter()
            .all(|p| p.severity != raftgate::compiler::Severity::Rejected),
        "{problems:#?}"
    );

    // MySQL over the tcp-services port: bytes go through both ways.
    let mut status = h.node.l4.status();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.contains_key(&format!("tcp/{tcp_port}"))),
    )
    .await
    .expect("the tcp-services port was opened")
    .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    s.write_all(b"\x0a5.7.0-mysql-handshake").await.unwrap();
    let mut buf = [0u8; 22];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"\x0a5.7.0-mysql-handshake");

    // The Nacos console answers under /nacos for any host.
    let r = get(h.http(), "10.1.2.3", "/nacos/index.html").await;
    assert_eq!(r.backend(), Some("nacos"));
    assert_eq!(get(h.http(), "10.1.2.3", "/other").await.status, StatusCode::NOT_FOUND);

    // app-root and the TLS redirect: plain HTTP goes to HTTPS first (ssl-redirect), and over
    // HTTPS the root goes to /corp with a 302.
    let r = get(h.http(), "example-corp.com", "/").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    for host in ["example-corp.com", "www.example-corp.com"] {
        let tcp = TcpStream::connect(h.https()).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
            .await
            .expect("the Secret's certificate, verified");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = |path: &str| {
            http::Request::get(path)
                .header("host", host)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        };
        let r = read(sender.send_request(req("/")).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::FOUND, "{host}");
        assert_eq!(r.headers["location"], format!("https://{host}/corp"));
        sender.ready().await.unwrap();
        let r = read(sender.send_request(req("/corp")).await.unwrap()).await;
        assert_eq!(r.backend(), Some("corp"), "{host}");
    }

    // The WebSocket goes through and stays usable.
    let tcp = TcpStream::connect(h.http()).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async("ws://ws.example-corp.com/socket", tcp)
        .await
        .unwrap();
    for i in 0..3 {
        client
            .send(tokio_tungstenite::tungstenite::Message::text(format!("hello {i}")))
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("hello {i}"));
    }
}
