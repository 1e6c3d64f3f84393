//! Test harness: echo upstreams that say who served them, a node on port 0 fed from a temp
//! manifests directory, and a real HTTP client.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::Response;
use http::StatusCode;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use raftgate::Config;
use raftgate::Node;
use raftgate::config::Source;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

/// An upstream that answers every request with its name, the path and the headers it got.
pub struct Echo {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    task: Task,
}

/// A spawned server task, aborted when dropped (with the upstream that owns it).
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Echo {
    /// Starts an echo upstream on 127.0.0.1:0. `delay` holds each response back.
    pub async fn start(name: &str) -> Echo {
        Echo::start_with(name, Duration::ZERO).await
    }

    pub async fn start_with(name: &str, delay: Duration) -> Echo {
        Echo::spawn(name, delay, None, 200).await
    }

    /// An echo upstream that answers every request with `status`.
    pub async fn start_status(name: &str, status: u16) -> Echo {
        Echo::spawn(name, Duration::ZERO, None, status).await
    }

    /// An echo upstream that speaks TLS (HTTP/1.1 or h2 by ALPN), with a self-signed certificate.
    pub async fn start_tls(name: &str) -> Echo {
        let (cert, key) = raftgate_proxy::tls::self_signed(&["upstream.local"]).unwrap();
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Echo::spawn(
            name,
            Duration::ZERO,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
            200,
        )
        .await
    }

    /// Stops the upstream and waits until its port refuses connections.
    pub async fn stop(self) {
        let addr = self.addr;
        drop(self);
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    }

    async fn spawn(name: &str, delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>, status: u16) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (n, h, c) = (name.to_string(), hits.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (n, h, tls) = (n.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_echo(stream, n, h, delay, status).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_echo(s, n, h, delay, status).await
                            }
                        }
                    }
                });
            }
        });
        Echo {
            name: name.into(),
            addr,
            hits,
            conns,
            task: Task(task),
        }
    }
}

async fn serve_echo<I>(io: I, n: String, h: Arc<AtomicUsize>, delay: Duration, status: u16)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (n, h) = (n.clone(), h.clone());
        async move {
            h.fetch_add(1, Ordering::Relaxed);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let headers: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let uri = req.uri().to_string();
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            let json = serde_json::json!({"backend": n, "version": version, "method": method, "uri": uri, "headers": headers, "body_len": body});
            let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
            resp.headers_mut().insert("x-backend", n.parse().unwrap());
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A Service plus EndpointSlice pointing at the given upstreams (port name `http`, port 80).
pub fn service(ns: &str, name: &str, backends: &[&Echo]) -> String {
    // One slice per distinct port, since an EndpointSlice has one port list.
    let mut by_port: BTreeMap<u16, Vec<&Echo>> = BTreeMap::new();
    for b in backends {
        by_port.entry(b.addr.port()).or_default().push(b);
    }
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}\n"
    );
    for (i, (port, bs)) in by_port.iter().enumerate() {
        yaml += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n"
        );
        for b in bs {
            yaml += &format!("- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n", b.addr.ip());
        }
    }
    yaml
}

/// An Ingress of class `raftgate` with one rule: `host` (empty for none), paths as (path, pathType, service).
pub fn ingress(ns: &str, name: &str, host: &str, paths: &[(&str, &str, &str)], extra_meta: &str) -> String {
    let paths: String = paths
        .iter()
        .map(|(p, t, s)| format!("      - path: \"{p}\"\n        pathType: {t}\n        backend: {{service: {{name: {s}, port: {{name: http}}}}}}\n"))
        .collect();
    let rule = if host.is_empty() {
        format!("  - http:\n      paths:\n{paths}")
    } else {
        format!("  - host: \"{host}\"\n    http:\n      paths:\n{paths}")
    };
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\n{extra_meta}spec:\n  ingressClassName: raftgate\n  rules:\n{rule}"
    )
}

/// An `annotations:` block (for `ingress`'s extra metadata) with `nginx.ingress.kubernetes.io/` keys.
pub fn ann(pairs: &[(&str, &str)]) -> String {
    let body: String = pairs
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect();
    format!("  annotations:\n{body}")
}

/// A node serving a temp manifests directory, on loopback port 0.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub node: Node,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.node_id = Some("test".into());
        cfg.listen.http = Some("127.0.0.1:0".parse().unwrap());
        cfg.listen.https = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
        cfg.source = Source::Manifests {
            path: Some(dir.path().to_path_buf()),
            poll_interval: Duration::from_millis(20),
        };
        tweak(&mut cfg);
        let node = Node::start(cfg).await.unwrap();
        node.ready().await;
        Harness { dir, node }
    }

    pub fn http(&self) -> SocketAddr {
        self.node.http_addr.unwrap()
    }

    pub fn https(&self) -> SocketAddr {
        self.node.https_addr.unwrap()
    }

    /// Writes a manifest file and waits until a new table version is served.
    pub async fn apply(&self, file: &str, yaml: &str) -> u64 {
        let before = self.node.state.dataplane.version();
        write_atomically(&self.dir.path().join(file), yaml);
        match tokio::time::timeout(Duration::from_secs(10), self.node.wait_version(|v| v > before)).await {
            Ok(v) => v,
            Err(_) => panic!(
                "no new table within 10s; problems: {:#?}; source errors: {:#?}",
                self.node.state.problems(),
                self.node.state.source_errors()
            ),
        }
    }

    /// Writes a file without waiting for a new version (for changes that must not produce one).
    pub fn write(&self, file: &str, yaml: &str) {
        write_atomically(&self.dir.path().join(file), yaml);
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The echo upstream's name, if an echo upstream answered.
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one HTTP/1.1 request on a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    read(resp).await
}

pub async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), so that no outgoing
/// connection (of another test running at the same time) can take it between now and the
/// moment a child process binds it. Never the same port twice in one test process: the port
/// is only checked free, not held, so a second draw could return it again before the first
/// caller has bound it (a node once got one port for two of its listeners).
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::AtomicU64;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut x =
        (u64::from(nanos) ^ (u64::from(std::process::id()) << 20) ^ SEQ.fetch_add(0x9e37_79b9, Ordering::Relaxed)) | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !handed_out.contains(&port)
            && std::net::TcpListener::bind(addr).is_ok()
            && std::net::UdpSocket::bind(addr).is_ok()
        {
            handed_out.insert(port);
            return addr;
        }
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// A one-member Raft group with a `vip` section, run as a child process that cannot own VIPs:
/// not root, it lacks the capabilities anyway; as root (CI) it is started through `setpriv`
/// with CAP_NET_ADMIN and CAP_NET_RAW dropped, so it never touches this host's addresses.
/// Killed on drop.
pub struct CapLessMember {
    pub dir: tempfile::TempDir,
    pub manifests: std::path::PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// Its stdout (the log).
    pub log: std::path::PathBuf,
    /// Its stderr.
    pub err: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for CapLessMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CapLessMember {
    /// Starts it with `vip` (a documentation-range address, so even a mistake could not reach a
    /// real network) on `lo`. None, after saying why, when root lacks `setpriv`.
    pub fn start(vip: &str) -> Option<CapLessMember> {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let (http, https, admin, raft) = (free_addr(), free_addr(), free_addr(), free_addr());
        let config = dir.path().join("n1.yaml");
        std::fs::write(
            &config,
            format!(
                "node_id: n1\nlisten: {{http: \"{http}\", https: \"{https}\"}}\nadmin: {{listen: \"{admin}\"}}\n\
                 source: {{kind: manifests, path: {}, poll_interval: 50ms}}\n\
                 raft: {{id: 1, listen: \"{raft}\", data_dir: {}, insecure: true}}\n\
                 vip:\n  addresses: [{{addr: {vip}, prefix: 24, interface: lo}}]\n",
                manifests.display(),
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let exe = env!("CARGO_BIN_EXE_raftgate");
        let mut cmd = if is_root() {
            if Command::new("setpriv").arg("--help").output().is_err() {
                eprintln!("SKIPPED: running as root, and setpriv (util-linux) is needed to drop the capabilities");
                return None;
            }
            let mut c = Command::new("setpriv");
            c.args(["--bounding-set=-net_admin,-net_raw", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let (log, err) = (dir.path().join("n1.log"), dir.path().join("n1.err"));
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Some(CapLessMember {
            dir,
            manifests,
            http,
            https,
            admin,
            log,
            err,
            child,
        })
    }
}
