//! docs/metrics.md and `/metrics` in step: every family a node exposes is documented with the
//! same type and follows the naming rules, and every family documented as present in a mode
//! is exposed in it (and none documented for another mode is).
//!
//! Two scrapes over real TCP: a standalone node with HTTP, TLS and an L4 port in use; and a
//! one-member Raft group with a `vip` section, as a child process without the capabilities to
//! own VIPs (it reports itself refused and touches no address; as root it runs under
//! `setpriv` with them dropped, as in vip_refusal.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{CapLessMember, Echo, Harness, free_addr, get, ingress, service};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CATALOGUE: &str = include_str!("../../docs/metrics.md");

/// A documented family: its type and when it is present (`always`, `raft`, `raft, leader`, `vip`, `l4`).
#[derive(Debug)]
struct Doc {
    kind: String,
    present: String,
}

/// The catalogue's table rows: `| `name` | type | labels | unit | present | meaning |`.
fn catalogue(text: &str) -> BTreeMap<String, Doc> {
    let mut docs = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `raftgate_")) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() == 6, "a catalogue row needs six columns: {line}");
        let name = cells[0].trim_matches('`').to_string();
        let doc = Doc {
            kind: cells[1].to_string(),
            present: cells[4].to_string(),
        };
        assert!(
            docs.insert(name.clone(), doc).is_none(),
            "{name} is documented twice in docs/metrics.md"
        );
    }
    docs
}

/// The `# TYPE name type` lines of an exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

/// What is wrong with `exposed` against `docs`, for a node in which the families marked
/// `present` are expected and those marked `absent` must not appear.
fn problems(
    exposed: &BTreeMap<String, String>,
    docs: &BTreeMap<String, Doc>,
    present: &[&str],
    absent: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, kind) in exposed {
        if !name.starts_with("raftgate_") {
            out.push(format!("{name}: exposed without the raftgate_ prefix"));
        }
        match kind.as_str() {
            "counter" if !name.ends_with("_total") => out.push(format!("{name}: a counter must end in _total")),
            "gauge" | "histogram" if name.ends_with("_total") => {
                out.push(format!("{name}: only counters end in _total ({kind})"))
            }
            "histogram" if !(name.ends_with("_seconds") || name.ends_with("_bytes")) => out.push(format!(
                "{name}: a histogram's name ends in its unit (_seconds, _bytes)"
            )),
            "counter" | "gauge" | "histogram" => {}
            other => out.push(format!("{name}: unexpected type {other}")),
        }
        match docs.get(name) {
            None => out.push(format!(
                "{name} ({kind}) is exposed but not documented in docs/metrics.md"
            )),
            Some(d) if d.kind != *kind => out.push(format!(
                "{name} is exposed as a {kind} but docs/metrics.md says {}",
                d.kind
            )),
            Some(d) if absent.contains(&d.present.as_str()) => out.push(format!(
                "{name} is exposed here but docs/metrics.md says it is present only with `{}`",
                d.present
            )),
            Some(_) => {}
        }
    }
    for (name, d) in docs {
        if !present.contains(&d.present.as_str()) && !absent.contains(&d.present.as_str()) {
            out.push(format!("{name}: unknown presence `{}` in docs/metrics.md", d.present));
        } else if present.contains(&d.present.as_str()) && !exposed.contains_key(name) {
            out.push(format!(
                "{name} is documented as present with `{}` but this node does not expose it",
                d.present
            ));
        }
    }
    out
}

fn assert_in_step(what: &str, exposition: &str, present: &[&str], absent: &[&str]) {
    let errors = problems(&families(exposition), &catalogue(CATALOGUE), present, absent);
    assert!(
        errors.is_empty(),
        "{what}: /metrics and docs/metrics.md disagree:\n  {}\n\nthe scrape:\n{exposition}",
        errors.join("\n  ")
    );
}

/// `GET /metrics` over a plain TCP connection, as Prometheus does.
async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Scrapes until `line` is in the exposition (a counter bumped just after the client saw its answer).
async fn scrape_until(admin: SocketAddr, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(admin).await;
        if m.contains(line) {
            return m;
        }
        assert!(Instant::now() < deadline, "no `{line}` within 10s:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_check_names_what_disagrees() {
    let docs = catalogue(
        "| `raftgate_a_total` | counter | | x | always | . |\n\
         | `raftgate_b` | gauge | | x | always | . |\n\
         | `raftgate_c` | gauge | | x | raft | . |\n",
    );
    let exposed = families(
        "# TYPE raftgate_a_total gauge\n# TYPE raftgate_c gauge\n# TYPE raftgate_new_total counter\n\
         # TYPE other counter\n# TYPE raftgate_lat histogram\n",
    );
    let p = problems(&exposed, &docs, &["always"], &["raft"]).join("\n");
    for want in [
        "raftgate_a_total is exposed as a gauge but docs/metrics.md says counter",
        "raftgate_a_total: only counters end in _total",
        "raftgate_b is documented as present with `always` but this node does not expose it",
        "raftgate_c is exposed here but docs/metrics.md says it is present only with `raft`",
        "raftgate_new_total (counter) is exposed but not documented",
        "other: exposed without the raftgate_ prefix",
        "other: a counter must end in _total",
        "raftgate_lat: a histogram's name ends in its unit",
    ] {
        assert!(p.contains(want), "missing `{want}` in:\n{p}");
    }
}

#[test]
fn the_catalogue_follows_its_own_rules() {
    let docs = catalogue(CATALOGUE);
    assert!(docs.len() > 40, "the catalogue parsed to {} rows", docs.len());
    let as_exposed: BTreeMap<String, String> = docs.iter().map(|(n, d)| (n.clone(), d.kind.clone())).collect();
    let all = ["always", "raft", "raft, leader", "vip", "l4"];
    let p = problems(&as_exposed, &docs, &all, &[]);
    assert!(p.is_empty(), "{}", p.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_node_exposes_what_the_catalogue_says() {
    let web = Echo::start("web").await;
    let (cert, key) = raftgate_proxy::tls::self_signed(&["web.com"]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let tcp_port = free_addr().port();
    let h = Harness::start_with(|c| {
        c.tls.default_certificate = Some(cert_path.clone());
        c.tls.default_key = Some(key_path.clone());
        c.l4.tcp_services_configmap = Some("ingress-nginx/tcp-services".into());
        c.l4.bind = "127.0.0.1".parse().unwrap();
    })
    .await;
    let tcp_services = format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: tcp-services, namespace: ingress-nginx}}\ndata: {{\"{tcp_port}\": \"a/web:80\"}}\n"
    );
    h.apply(
        "a.yaml",
        &(service("a", "web", &[&web])
            + &ingress("a", "web", "web.com", &[("/", "Prefix", "web")], "")
            + &tcp_services),
    )
    .await;
    let mut l4 = h.node.l4.status();
    tokio::time::timeout(
        Duration::from_secs(10),
        l4.wait_for(|s| s.contains_key(&format!("tcp/{tcp_port}"))),
    )
    .await
    .expect("the tcp-services port opened")
    .unwrap();

    // Plain HTTP, one TLS 1.3 request, and one connection that is not TLS at all.
    assert_eq!(get(h.http(), "web.com", "/").await.backend(), Some("web"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(h.https()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("web.com").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "web.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = common::read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(reply.backend(), Some("web"));
    let mut not_tls = TcpStream::connect(h.https()).await.unwrap();
    not_tls
        .write_all(b"GET / HTTP/1.1\r\nHost: web.com\r\n\r\n")
        .await
        .unwrap();

    let admin = h.node.admin_addr;
    let m = scrape_until(admin, "raftgate_tls_handshake_errors_total{reason=\"protocol\"} 1\n").await;
    assert!(m.contains("raftgate_tls_handshakes_total{version=\"1.3\"} 1\n"), "{m}");
    assert!(
        m.contains("raftgate_upstream_endpoints{upstream=\"a/web:80\",state=\"available\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("raftgate_l4_connections_active{service=\"tcp/"), "{m}");
    assert!(!m.contains("raftgate_source_compilations_total 0\n"), "{m}");
    assert_in_step(
        "standalone node",
        &m,
        &["always", "l4"],
        &["raft", "raft, leader", "vip"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_member_with_vips_exposes_what_the_catalogue_says() {
    let Some(member) = CapLessMember::start("192.0.2.201") else {
        return;
    };
    let (admin, log) = (member.admin, &member.log);

    // Leading, with its first table served (so the source ran and replication is reported).
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            let _ = s.shutdown().await;
            let m = scrape(admin).await;
            if m.contains("raftgate_raft_role{role=\"leader\"} 1\n")
                && m.contains("raftgate_source_compilations_total 1\n")
            {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader with a table within 20s: {}\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(&member.err).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(m.contains("raftgate_vip_refused 1\n"), "{m}");
    assert!(m.contains("raftgate_raft_source_starts_total 1\n"), "{m}");
    assert_in_step(
        "Raft member with a vip section",
        &m,
        &["always", "raft", "raft, leader", "vip"],
        &["l4"],
    );
}
