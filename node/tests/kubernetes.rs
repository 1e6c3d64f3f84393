//! The Kubernetes source end to end: a node watching the test API server over real HTTP,
//! objects created, changed and deleted through it, and real requests and handshakes checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::Echo;
use common::ann;
use common::get;
use common::ingress;
use common::send;
use common::service;
use http_body_util::Full;
use raftgate::Config;
use raftgate::Node;
use raftgate::config::KubeSource;
use raftgate::config::Source;
use raftgate_chaos_tests::apiserver::ApiServer;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use serde_json::json;
use tokio_rustls::TlsConnector;

const STATUS_IP: &str = "192.0.2.10";

struct Kube {
    api: ApiServer,
    node: Node,
    _dir: tempfile::TempDir,
}

impl Kube {
    async fn start() -> Kube {
        let api = ApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig_yaml()).unwrap();
        let mut cfg = Config::default();
        cfg.node_id = Some("k1".into());
        cfg.listen.http = Some("127.0.0.1:0".parse().unwrap());
        cfg.listen.https = Some("127.0.0.1:0".parse().unwrap());
        cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
        cfg.controller_configmap = Some("ingress/raftgate".into());
        cfg.source = Source::Kubernetes(KubeSource {
            kubeconfig: Some(kubeconfig),
            debounce: Duration::from_millis(5),
            status_addresses: vec![STATUS_IP.into()],
            ..KubeSource::default()
        });
        let node = Node::start(cfg).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), node.ready())
            .await
            .expect("ready once every watcher listed");
        Kube { api, node, _dir: dir }
    }

    /// `kubectl apply` of every document in `yaml`.
    fn apply(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            self.api.apply(&v).unwrap_or_else(|e| panic!("apply {v}: {e}"));
        }
    }

    fn http(&self) -> std::net::SocketAddr {
        self.node.http_addr.unwrap()
    }

    /// Waits until `cond` holds, or fails with the node's problems.
    async fn wait<F: std::future::Future<Output = bool>>(&self, what: &str, mut cond: impl FnMut() -> F) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cond().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; problems: {:#?}",
                self.node.state.problems()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_backend(&self, host: &str, path: &str, backend: Option<&str>, status: u16) {
        self.wait(&format!("{host}{path} → {backend:?} {status}"), || async {
            let r = get(self.http(), host, path).await;
            r.backend() == backend && r.status.as_u16() == status
        })
        .await;
    }

    fn status_of(&self, ns: &str, name: &str) -> Value {
        let i = self.api.get("networking.k8s.io/v1", "Ingress", ns, name).unwrap();
        i["status"]["loadBalancer"]["ingress"].clone()
    }

    fn events_about(&self, ns: &str, name: &str) -> Vec<Value> {
        self.api
            .list("v1", "Event", Some(ns))
            .unwrap()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect()
    }
}

fn yaml_body(n: usize) -> Full<Bytes> {
    Full::new(Bytes::from(vec![b'x'; n]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_services_slices_and_config_maps_from_the_api_are_served_and_status_is_written() {
    let k = Kube::start().await;
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    k.apply(&(service("shop", "web", &[&a]) + &ingress("shop", "web", "shop.test", &[("/", "Prefix", "web")], "")));
    k.wait_backend("shop.test", "/", Some("a"), 200).await;

    // The status lists our address, written once.
    k.wait("status written", || async {
        k.status_of("shop", "web") == json!([{"ip": STATUS_IP}])
    })
    .await;

    // New endpoints in the slice.
    k.apply(&service("shop", "web", &[&b]));
    k.wait_backend("shop.test", "/", Some("b"), 200).await;

    // The controller ConfigMap is watched by name: a smaller body limit.
    let post = || {
        http::Request::post("/upload")
            .header("host", "shop.test")
            .body(yaml_body(4096))
            .unwrap()
    };
    assert_eq!(send(k.http(), post()).await.status, 200);
    k.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: raftgate, namespace: ingress}\ndata: {proxy-body-size: 1k}\n");
    k.wait("proxy-body-size from the ConfigMap", || async {
        send(k.http(), post()).await.status == 413
    })
    .await;

    // An Ingress that leaves our class has its status cleared; ours stays.
    k.apply(&ingress("shop", "other", "other.test", &[("/", "Prefix", "web")], ""));
    k.wait("status of the second Ingress", || async {
        k.status_of("shop", "other") == json!([{"ip": STATUS_IP}])
    })
    .await;
    k.api
        .patch(
            "networking.k8s.io/v1",
            "Ingress",
            "shop",
            "other",
            &json!({"spec": {"ingressClassName": "someone-else"}}),
        )
        .unwrap();
    k.wait("status cleared", || async { k.status_of("shop", "other").is_null() })
        .await;
    k.wait_backend("other.test", "/", None, 404).await;
    assert_eq!(k.status_of("shop", "web"), json!([{"ip": STATUS_IP}]));

    // Status is written only when it changes: once per Ingress here, not on every recompilation.
    let writes = |name: &str| {
        k.api
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains(&format!("/ingresses/{name}/status")))
            .count()
    };
    assert_eq!(writes("web"), 1, "{:#?}", k.api.requests());
    assert_eq!(writes("other"), 2, "written, then cleared");
    assert!(
        k.api
            .requests()
            .iter()
            .all(|r| r.user_agent.as_deref() == Some("raftgate/k1")),
        "every request names the member"
    );

    // Delete: the host is gone.
    k.api.delete("networking.k8s.io/v1", "Ingress", "shop", "web").unwrap();
    k.wait_backend("shop.test", "/", None, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_scale_up_and_down_under_load_without_a_failed_request() {
    let k = Kube::start().await;
    let echoes = [
        Echo::start("e1").await,
        Echo::start("e2").await,
        Echo::start("e3").await,
    ];
    // Three ports on one IP need three slices; `service` makes one per port.
    k.apply(
        &(service("app", "api", &[&echoes[0]]) + &ingress("app", "api", "api.test", &[("/", "Prefix", "api")], "")),
    );
    k.wait_backend("api.test", "/", Some("e1"), 200).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), k.http());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = get(addr, "api.test", "/").await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let hits = |i: usize| echoes[i].hits.load(Ordering::Relaxed);
    for round in 0..3 {
        // Up to three endpoints: every one gets traffic.
        let before: Vec<usize> = (0..3).map(hits).collect();
        k.apply(&service("app", "api", &[&echoes[0], &echoes[1], &echoes[2]]));
        k.wait(&format!("round {round}: all three endpoints serve"), || async {
            (0..3).all(|i| hits(i) > before[i] + 5)
        })
        .await;
        // Down to one (the removed ones keep running, as terminating pods do).
        let keep = round % 3;
        k.apply(&service("app", "api", &[&echoes[keep]]));
        // One slice per port: the other two slices go, as the EndpointSlice controller deletes them.
        for extra in ["api-1", "api-2"] {
            k.api
                .delete("discovery.k8s.io/v1", "EndpointSlice", "app", extra)
                .unwrap();
        }
        k.wait(&format!("round {round}: only e{} serves", keep + 1), || async {
            let before: Vec<usize> = (0..3).map(hits).collect();
            let r = get(k.http(), "api.test", "/").await;
            r.backend() == Some(echoes[keep].name.as_str()) && (0..3).filter(|i| hits(*i) > before[*i]).count() == 1
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "load ran: {ok} requests");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
           "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert, "tls.key": key}})
}

/// Handshakes with `sni`, trusting only `trusted`; Ok if the served certificate verifies.
async fn handshake(k: &Kube, sni: &str, trusted: &str) -> std::io::Result<()> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trusted.as_bytes()).unwrap())
        .unwrap();
    let cfg = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(k.node.https_addr.unwrap()).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map(|_| ())
}

/// A self-signed certificate and key for `host`.
fn cert(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tls_secret_is_served_to_new_handshakes() {
    let k = Kube::start().await;
    let e = Echo::start("e").await;
    let (old, new) = (cert("pay.test"), cert("pay.test"));
    k.api.apply(&tls_secret("pay", "pay-tls", &old.0, &old.1)).unwrap();
    k.apply(&(service("pay", "web", &[&e]) + &ingress("pay", "web", "pay.test", &[("/", "Prefix", "web")], "")));
    k.api
        .patch(
            "networking.k8s.io/v1",
            "Ingress",
            "pay",
            "web",
            &json!({"spec": {"tls": [{"hosts": ["pay.test"], "secretName": "pay-tls"}]}}),
        )
        .unwrap();
    k.wait("the Secret's certificate", || async {
        handshake(&k, "pay.test", &old.0).await.is_ok()
    })
    .await;
    k.api.apply(&tls_secret("pay", "pay-tls", &new.0, &new.1)).unwrap();
    k.wait("the rotated certificate", || async {
        handshake(&k, "pay.test", &new.0).await.is_ok()
    })
    .await;
    assert!(
        handshake(&k, "pay.test", &old.0).await.is_err(),
        "the old certificate is gone"
    );

    // A Secret no route uses is not held: only the TLS Secret was read with GET.
    k.api.apply(&tls_secret("pay", "unused", &old.0, &old.1)).unwrap();
    k.apply(&ingress("pay", "poke", "poke.test", &[("/", "Prefix", "web")], ""));
    k.wait_backend("poke.test", "/", Some("e"), 200).await;
    let gets: Vec<String> = k
        .api
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/secrets/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(
        !gets.is_empty() && gets.iter().all(|p| p.contains("/secrets/pay-tls")),
        "{gets:?}"
    );
    let secret_watches: Vec<String> = k
        .api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets?"))
        .map(|r| r.path.clone())
        .collect();
    assert!(!secret_watches.is_empty(), "Secrets are listed and watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_cost_only_their_own_route_and_get_an_event() {
    let k = Kube::start().await;
    let e = Echo::start("good").await;
    k.apply(&(service("app", "web", &[&e]) + &ingress("app", "good", "good.test", &[("/", "Prefix", "web")], "")));
    k.wait_backend("good.test", "/", Some("good"), 200).await;

    // A missing Service: that route answers 503.
    k.apply(&ingress(
        "app",
        "missing",
        "missing.test",
        &[("/", "Prefix", "nope")],
        "",
    ));
    // An invalid regex: the Ingress is rejected.
    k.apply(&ingress(
        "app",
        "regex",
        "regex.test",
        &[("/(", "ImplementationSpecific", "web")],
        &ann(&[("use-regex", "true")]),
    ));
    // A 1 MiB annotation.
    let mut huge =
        serde_yaml::from_str::<Value>(&ingress("app", "huge", "huge.test", &[("/", "Prefix", "web")], "")).unwrap();
    huge["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/rewrite-target": "/".repeat(1 << 20)});
    k.api.apply(&huge).unwrap();
    // A port name the Service does not have.
    let mut port =
        serde_yaml::from_str::<Value>(&ingress("app", "port", "port.test", &[("/", "Prefix", "web")], "")).unwrap();
    port["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = json!({"name": "grpc"});
    k.api.apply(&port).unwrap();
    // A TLS Secret whose PEM is garbage: the host falls back to the default certificate.
    k.api
        .apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad-tls", "namespace": "app"},
                        "type": "kubernetes.io/tls", "stringData": {"tls.crt": "-----BEGIN CERTIFICATE-----\nnot base64!\n", "tls.key": "x"}}))
        .unwrap();
    let mut tls =
        serde_yaml::from_str::<Value>(&ingress("app", "tls", "tls.test", &[("/", "Prefix", "web")], "")).unwrap();
    tls["spec"]["tls"] = json!([{"hosts": ["tls.test"], "secretName": "bad-tls"}]);
    k.api.apply(&tls).unwrap();

    for (name, reason) in [
        ("missing", "Degraded"),
        ("regex", "Rejected"),
        ("huge", "Rejected"),
        ("port", "Degraded"),
        ("tls", "Degraded"),
    ] {
        k.wait(&format!("an Event on {name}"), || async {
            k.events_about("app", name)
                .iter()
                .any(|e| e["reason"] == reason && e["type"] == "Warning" && e["involvedObject"]["kind"] == "Ingress")
        })
        .await;
    }
    k.wait_backend("missing.test", "/", None, 503).await;
    k.wait_backend("port.test", "/", None, 503).await;
    assert_eq!(
        get(k.http(), "regex.test", "/").await.status,
        404,
        "rejected: not served"
    );
    assert_eq!(
        get(k.http(), "huge.test", "/").await.status,
        404,
        "rejected: not served"
    );
    assert_eq!(
        get(k.http(), "tls.test", "/").await.status,
        308,
        "served (a TLS host redirects to HTTPS), with the default certificate"
    );
    assert_eq!(get(k.http(), "good.test", "/").await.backend(), Some("good"));
    let huge_event = k.events_about("app", "huge");
    assert!(
        huge_event.iter().all(|e| e["message"].as_str().unwrap().len() < 2048),
        "the value is not echoed into the Event"
    );
    // Events are not repeated while the problems last, however often the node recompiles.
    let count = k.api.list("v1", "Event", Some("app")).unwrap().len();
    for i in 0..5 {
        k.apply(&ingress(
            "app",
            &format!("churn{i}"),
            &format!("c{i}.test"),
            &[("/", "Prefix", "web")],
            "",
        ));
    }
    k.wait_backend("c4.test", "/", Some("good"), 200).await;
    assert_eq!(k.api.list("v1", "Event", Some("app")).unwrap().len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_changes_nothing_served_and_it_reconciles_after() {
    let k = Kube::start().await;
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    k.apply(&(service("app", "web", &[&a]) + &ingress("app", "web", "web.test", &[("/", "Prefix", "web")], "")));
    k.apply(&ingress("app", "gone", "gone.test", &[("/", "Prefix", "web")], ""));
    k.wait_backend("gone.test", "/", Some("a"), 200).await;
    let version = k.node.state.dataplane.version();

    // Down: listener closed, watches cut. Changes made meanwhile are seen only afterwards.
    k.api.pause().await;
    k.apply(&service("app", "web", &[&b]));
    k.api.delete("networking.k8s.io/v1", "Ingress", "app", "gone").unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        assert_eq!(get(k.http(), "web.test", "/").await.backend(), Some("a"));
        assert_eq!(get(k.http(), "gone.test", "/").await.backend(), Some("a"));
        served += 1;
    }
    assert!(served > 10);
    assert_eq!(
        k.node.state.dataplane.version(),
        version,
        "nothing withdrawn while the API is away"
    );

    // Back, with the history compacted past what the node saw: it relists (410) and reconciles.
    k.api.compact();
    k.api.resume().unwrap();
    k.wait_backend("web.test", "/", Some("b"), 200).await;
    k.wait_backend("gone.test", "/", None, 404).await;

    // Watches cut again and a 410 forced: a change made then still arrives, once.
    k.api.fail_watches_with_410(true);
    k.api.close_watches();
    k.apply(&ingress("app", "late", "late.test", &[("/", "Prefix", "web")], ""));
    k.api.fail_watches_with_410(false);
    k.wait_backend("late.test", "/", Some("b"), 200).await;
    assert_eq!(get(k.http(), "web.test", "/").await.backend(), Some("b"));
}
