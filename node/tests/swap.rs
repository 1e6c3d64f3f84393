//! Config swaps never disturb traffic: a WebSocket lives through swaps (and is closed by its
//! route's idle timeout), and a thousand table swaps under load fail no request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use futures_util::StreamExt;
use http::Request;
use http::StatusCode;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::Request as WsRequest;
use tokio_tungstenite::tungstenite::handshake::server::Response as WsResponse;

/// A WebSocket upstream that echoes text and binary messages.
struct WsEcho {
    addr: SocketAddr,
    /// Handshakes completed.
    accepted: Arc<AtomicUsize>,
    /// Connections that have ended (closed by either side).
    ended: Arc<watch::Sender<usize>>,
    /// The request path of each handshake.
    paths: Arc<Mutex<Vec<String>>>,
    _task: common::Task,
}

impl WsEcho {
    async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, ended, paths) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(watch::channel(0).0),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (a, e, p) = (accepted.clone(), ended.clone(), paths.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (a, e, p) = (a.clone(), e.clone(), p.clone());
                tokio::spawn(async move {
                    let record = |req: &WsRequest, resp: WsResponse| {
                        p.lock().unwrap().push(req.uri().path().to_string());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                        return;
                    };
                    a.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    e.send_modify(|n| *n += 1);
                });
            }
        });
        WsEcho {
            addr,
            accepted,
            ended,
            paths,
            _task: common::Task(task),
        }
    }

    /// A Service and EndpointSlice for this upstream.
    fn service(&self, ns: &str, name: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-0, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n",
            port = self.addr.port(),
            ip = self.addr.ip(),
        )
    }

    /// Waits (at most 5s) until `n` connections have ended.
    async fn wait_ended(&self, n: usize, what: &str) {
        let mut rx = self.ended.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v >= n)).await;
        assert!(waited.is_ok(), "timed out waiting for: {what}");
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket through the proxy's plain listener for `host`.
async fn ws_connect(proxy: SocketAddr, host: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(format!("ws://{host}/chat"), tcp),
    )
    .await
    .expect("handshake within 5s")?;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    Ok(ws)
}

/// Sends a text message and expects it back.
async fn roundtrip(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text))
        .await
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap_or_else(|_| panic!("no echo of {text:?} within 5s"));
    match got {
        Some(Ok(m)) => assert_eq!(m, Message::text(text)),
        other => panic!("echo of {text:?}: got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_lives_through_config_swaps() {
    let (up, web) = (WsEcho::start().await, Echo::start("web").await);
    let h = Harness::start().await;
    let ws_svc = up.service("ws", "chat");
    h.apply(
        "ws.yaml",
        &(ws_svc.clone() + &ingress("ws", "chat", "ws.example.com", &[("/", "Prefix", "chat")], "")),
    )
    .await;

    let mut ws = ws_connect(h.http(), "ws.example.com").await.unwrap();
    roundtrip(&mut ws, "before any swap").await;
    assert_eq!(*up.paths.lock().unwrap(), vec!["/chat".to_string()]);

    // An unrelated change: the new table is served, the WebSocket carries on.
    let v1 = h
        .apply(
            "other.yaml",
            &(service("other", "web", &[&web])
                + &ingress("other", "web", "other.example.com", &[("/", "Prefix", "web")], "")),
        )
        .await;
    assert_eq!(
        get(h.http(), "other.example.com", "/").await.backend(),
        Some("web"),
        "version {v1} is served"
    );
    roundtrip(&mut ws, "after an unrelated swap").await;
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));

    // The WebSocket's own route goes away: new handshakes get 404, the open one carries on.
    let v2 = h.apply("ws.yaml", &ws_svc).await;
    assert!(v2 > v1);
    match ws_connect(h.http(), "ws.example.com").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::NOT_FOUND)
        }
        Err(e) => panic!("expected a 404 for a new handshake, got {e}"),
        Ok(_) => panic!("a new handshake succeeded on a removed route"),
    }
    for i in 0..10 {
        roundtrip(&mut ws, &format!("after the route was removed #{i}")).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "one connection all along");
    assert_eq!(*up.ended.borrow(), 0);

    // A clean close reaches the upstream.
    ws.close(None).await.unwrap();
    up.wait_ended(1, "the upstream sees the close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_the_read_timeout() {
    let up = WsEcho::start().await;
    let h = Harness::start().await;
    let mut m = up.service("ws", "chat");
    m += &ingress(
        "ws",
        "fast",
        "fast.example.com",
        &[("/", "Prefix", "chat")],
        "  annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\"}\n",
    );
    m += &ingress("ws", "slow", "slow.example.com", &[("/", "Prefix", "chat")], "");
    h.apply("ws.yaml", &m).await;

    let mut fast = ws_connect(h.http(), "fast.example.com").await.unwrap();
    let mut slow = ws_connect(h.http(), "slow.example.com").await.unwrap();
    roundtrip(&mut slow, "slow hello").await;
    // Traffic every 300ms for ~1.8s keeps the 1s-timeout WebSocket open: the timeout is for idleness.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    for i in 0..7 {
        tick.tick().await;
        roundtrip(&mut fast, &format!("keepalive #{i}")).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Then idle: the proxy closes it after about a second.
    let idle_from = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), fast.next())
        .await
        .expect("the idle WebSocket was not closed within 5s");
    let idle = idle_from.elapsed();
    match end {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(m)) => panic!("unexpected message {m:?}"),
    }
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?}, before the 1s timeout"
    );
    assert!(idle < Duration::from_secs(3), "closed after {idle:?}");
    up.wait_ended(1, "the upstream side of the tunnel is closed too").await;
    assert_eq!(*up.ended.borrow(), 1);

    // The WebSocket on the route with the default (60s) timeout was idle as long and is still open.
    roundtrip(&mut slow, "slow still here").await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// What one load client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    connections: u64,
    failures: Vec<String>,
}

/// Sends requests for `host` over one keep-alive connection until `stop`, reconnecting only
/// after an error. Every finished request bumps `progress`.
async fn load_client(
    proxy: SocketAddr,
    host: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<watch::Sender<u64>>,
) -> Tally {
    let mut t = Tally::default();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            t.connections += 1;
            let tcp = match TcpStream::connect(proxy).await {
                Ok(s) => s,
                Err(e) => {
                    t.failures.push(format!("connect: {e}"));
                    continue;
                }
            };
            match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(e) => {
                    t.failures.push(format!("handshake: {e}"));
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let outcome = async {
            s.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
            let req = Request::get("/load")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = s.send_request(req).await.map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            let backend = resp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            let json: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("status {status}, body not echo JSON: {e}"))?;
            if status != StatusCode::OK || !matches!(backend.as_deref(), Some("a" | "b")) || json["uri"] != "/load" {
                return Err(format!("status {status}, backend {backend:?}, body {json}"));
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), outcome).await {
            Ok(Ok(())) => t.ok += 1,
            Ok(Err(e)) => {
                t.failures.push(e);
                sender = None;
            }
            Err(_) => {
                t.failures.push("no response within 10s".into());
                sender = None;
            }
        }
        progress.send_modify(|n| *n += 1);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_under_load_fail_no_request() {
    const SWAPS: u64 = 1000;
    const CLIENTS: usize = 4;
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let h = Harness::start().await;
    h.apply(
        "load.yaml",
        &(service("load", "web", &[&a, &b])
            + &ingress("load", "web", "load.example.com", &[("/", "Prefix", "web")], "")),
    )
    .await;
    let dp = h.node.state.dataplane.clone();
    let base = (*dp.snapshot().table).clone();
    let upstream = base.vhosts["load.example.com"].routes[0].backend.upstream.clone();
    assert_eq!(base.upstreams[&upstream].endpoints.len(), 2, "{:?}", base.upstreams);

    let stop = Arc::new(AtomicBool::new(false));
    let (progress, seen) = watch::channel(0u64);
    let progress = Arc::new(progress);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load_client(
                h.http(),
                "load.example.com",
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let wait_for = |seen: &watch::Receiver<u64>, n: u64| {
        let mut seen = seen.clone();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|v| *v >= n)).await;
            assert!(r.is_ok(), "the clients stalled below {n} requests");
        }
    };
    wait_for(&seen, CLIENTS as u64).await;

    let before = *seen.borrow();
    let started = Instant::now();
    let mut last = base.version;
    for i in 1..=SWAPS {
        let mut t = base.clone();
        t.version = base.version + i;
        match i % 4 {
            // The endpoints in the other order.
            1 => t.upstreams.get_mut(&upstream).unwrap().endpoints.reverse(),
            // An unrelated virtual host appears.
            2 => {
                let v = t.vhosts["load.example.com"].clone();
                t.vhosts.insert(format!("extra-{i}.example.com"), v);
            }
            // One endpoint goes away (its pooled connections with it).
            3 => t.upstreams.get_mut(&upstream).unwrap().endpoints.truncate(1),
            // Back to the original.
            _ => {}
        }
        dp.install(t).unwrap();
        last = base.version + i;
        // Let the clients finish a couple of requests on this version before the next swap.
        let now = *seen.borrow();
        wait_for(&seen, now + 2).await;
    }
    let during = *seen.borrow() - before;
    let elapsed = started.elapsed();
    assert_eq!(dp.version(), last, "the last installed table is served");
    assert_eq!(dp.snapshot().table.version, base.version + SWAPS);

    // After the swaps the route still serves both endpoints.
    let r = get(h.http(), "load.example.com", "/load").await;
    assert_eq!(r.status, StatusCode::OK);

    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for c in clients {
        let t = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("client stopped")
            .unwrap();
        total.ok += t.ok;
        total.connections += t.connections;
        total.failures.extend(t.failures);
    }
    assert!(
        total.failures.is_empty(),
        "{} requests failed ({} succeeded), first ones: {:#?}",
        total.failures.len(),
        total.ok,
        &total.failures[..total.failures.len().min(10)]
    );
    assert!(during > 1000, "only {during} requests during {SWAPS} swaps");
    assert_eq!(
        total.connections, CLIENTS as u64,
        "every client kept its one keep-alive connection"
    );
    assert!(
        a.hits.load(Ordering::Relaxed) > 0 && b.hits.load(Ordering::Relaxed) > 0,
        "both endpoints served"
    );
    eprintln!(
        "{SWAPS} swaps in {elapsed:?}, {during} requests meanwhile, {} in all",
        total.ok
    );
}
