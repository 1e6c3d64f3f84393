//! L4 data plane end to end over real sockets on 127.0.0.1: TCP and UDP forwarding,
//! half-close, failover, listeners following the table, idle timeouts and PROXY protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raftgate_proxy::Dataplane;
use raftgate_proxy::RoutingTable;
use raftgate_proxy::l4::L4Settings;
use raftgate_proxy::l4::ListenerStatus;
use raftgate_proxy::l4::Manager;
use raftgate_proxy::metrics::Metrics;
use raftgate_proxy::model::Endpoint;
use raftgate_proxy::model::L4Protocol;
use raftgate_proxy::model::L4Service;
use raftgate_proxy::model::Upstream;
use raftgate_proxy::proxy_protocol;
use raftgate_proxy::tls::SniResolver;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The longest any single wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `cond` until it holds (for counters that have no notification).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn dataplane() -> Arc<Dataplane> {
    let (cert, key) = raftgate_proxy::tls::self_signed(&["l4.test"]).unwrap();
    let ck = raftgate_proxy::tls::certified_key(&cert, &key).unwrap();
    Arc::new(Dataplane::new(
        Arc::new(SniResolver::new(ck)),
        Arc::new(Metrics::default()),
    ))
}

fn settings() -> L4Settings {
    L4Settings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        ..L4Settings::default()
    }
}

/// A TCP port that was free a moment ago.
async fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap().port()
}

fn service(protocol: L4Protocol, port: u16, upstream: &str) -> L4Service {
    L4Service {
        protocol,
        port,
        upstream: upstream.to_string(),
        proxy_protocol_in: false,
        proxy_protocol_out: false,
        source: "test/services".to_string(),
    }
}

fn table(version: u64, services: &[L4Service], upstreams: &[(&str, &[SocketAddr])]) -> RoutingTable {
    RoutingTable {
        version,
        l4: services.iter().map(|s| (s.key(), s.clone())).collect(),
        upstreams: upstreams
            .iter()
            .map(|(id, addrs)| {
                (
                    id.to_string(),
                    Upstream {
                        endpoints: addrs.iter().map(|a| Endpoint::Addr(*a)).collect(),
                        ..Upstream::default()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        ..RoutingTable::default()
    }
}

/// A running manager plus the drain switch that stops it.
struct Node {
    dp: Arc<Dataplane>,
    mgr: Manager,
    drain: watch::Sender<bool>,
}

impl Node {
    fn start(table: RoutingTable, settings: L4Settings) -> Node {
        let dp = dataplane();
        dp.install(table).unwrap();
        let (drain, rx) = watch::channel(false);
        let mgr = Manager::spawn(dp.clone(), settings, rx);
        Node { dp, mgr, drain }
    }

    async fn bound(&self, key: &str) -> SocketAddr {
        let mut status = self.mgr.status();
        let s = within(
            &format!("{key} to be bound"),
            status.wait_for(|m| matches!(m.get(key), Some(ListenerStatus::Bound(_)))),
        )
        .await;
        match s.unwrap().get(key) {
            Some(ListenerStatus::Bound(a)) => *a,
            other => panic!("{key}: {other:?}"),
        }
    }

    async fn gone(&self, key: &str) {
        let mut status = self.mgr.status();
        within(&format!("{key} to close"), status.wait_for(|m| !m.contains_key(key)))
            .await
            .unwrap();
    }

    fn stats(&self, key: &str) -> Arc<raftgate_proxy::l4::metrics::ServiceStats> {
        self.mgr.metrics().service(key)
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A listener on 127.0.0.1:0 with room for a burst of connects (`TcpListener::bind`'s
/// backlog is 128).
async fn listen() -> TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.listen(1024).unwrap()
}

/// A node proxying one TCP port (the key `tcp/PORT`) to `upstreams`, bound: the node, the
/// key and the address to connect to.
async fn tcp_service(upstreams: &[SocketAddr]) -> (Node, String, SocketAddr) {
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let node = Node::start(
        table(1, &[service(L4Protocol::Tcp, port, "up")], &[("up", upstreams)]),
        settings(),
    );
    let addr = node.bound(&key).await;
    (node, key, addr)
}

/// An upstream that echoes every byte and passes on the client's EOF.
async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let l = listen().await;
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An upstream that answers only after the client's EOF: it reads everything, then sends
/// it all back and closes. It can only answer if the EOF got through.
async fn tcp_collect_then_reply() -> (SocketAddr, JoinHandle<()>) {
    let l = listen().await;
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    let _ = s.write_all(&all).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

/// A UDP upstream that answers each datagram with `<name>|<source it saw>|<payload>`.
async fn udp_echo(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = format!("{name}|{from}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = within("connect", TcpStream::connect(addr)).await.unwrap();
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within("echo", c.read_exact(&mut back)).await.unwrap();
    back
}

/// `(upstream name, the source the upstream saw, payload)` of a [`udp_echo`] reply.
fn parts(reply: &str) -> (String, String, String) {
    let mut p = reply.splitn(3, '|').map(str::to_string);
    let (Some(name), Some(from), Some(payload)) = (p.next(), p.next(), p.next()) else {
        panic!("not an echo reply: {reply}")
    };
    (name, from, payload)
}

async fn udp_ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, from) = within("UDP reply", sock.recv_from(&mut buf)).await.unwrap();
    assert_eq!(from, to, "the reply comes from the listening port");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_the_proxy() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let svc = service(L4Protocol::Tcp, port, "ns/echo:7");
    let node = Node::start(table(1, &[svc], &[("ns/echo:7", &[echo])]), settings());
    let addr = node.bound(&key).await;
    assert_eq!(addr.port(), port);
    assert_eq!(node.mgr.bound(&key), Some(addr));
    assert_eq!(round_trip(addr, b"hello l4").await, b"hello l4");
    let stats = node.stats(&key);
    eventually("byte counters", || {
        load(&stats.bytes_in) == 8 && load(&stats.bytes_out) == 8
    })
    .await;
    assert_eq!(load(&stats.connections_total), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_upstream_and_the_answer_still_comes_back() {
    let (up, _u) = tcp_collect_then_reply().await;
    let (node, key, addr) = tcp_service(&[up]).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..50 {
        let chunk = format!("chunk {i} of a request that only ends with EOF\n");
        c.write_all(chunk.as_bytes()).await.unwrap();
        sent.extend_from_slice(chunk.as_bytes());
    }
    // The client is done sending but keeps reading.
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("the reply and then EOF", c.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, sent);
    eventually("the connection to close", || {
        load(&node.stats(&key).connections_active) == 0
    })
    .await;
}

/// Pipes this process holds open (`/proc/self/fd` links to `pipe:[…]`).
fn open_pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transfer_is_spliced_both_ways_and_arrives_intact() {
    let (echo, _e) = tcp_echo().await;
    let (node, key, addr) = tcp_service(&[echo]).await;
    let before = open_pipes();
    // 4 MiB of bytes that are not all alike, so a lost or repeated chunk shows.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let sent: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let payload = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.unwrap();
        w
    });
    let mut back = vec![0u8; sent.len()];
    within("the echo of 4 MiB", r.read_exact(&mut back)).await.unwrap();
    assert!(back == sent, "the echo differs from what was sent");
    // Past 64 KiB each way, each direction moved to a pipe of its own.
    let during = open_pipes();
    assert!(
        during >= before + 4,
        "pipes before {before}, during the transfer {during}"
    );
    // Half-close still passes through a spliced direction.
    let mut w = writer.await.unwrap();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("EOF after the echo", r.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    let stats = node.stats(&key);
    eventually("byte counters and the connection's end", || {
        load(&stats.bytes_in) == sent.len() as u64
            && load(&stats.bytes_out) == sent.len() as u64
            && load(&stats.connections_active) == 0
    })
    .await;
    eventually("the pipes to close with the connection", || open_pipes() <= before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections() {
    let (echo, _e) = tcp_echo().await;
    let (node, key, addr) = tcp_service(&[echo]).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        set.spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let msg: Vec<u8> = (0..4096u32).map(|j| ((i * 31 + j) % 251) as u8).collect();
            // Write and read concurrently so neither side's buffers can fill up.
            let (mut r, mut w) = c.split();
            let write = async {
                w.write_all(&msg).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let read = r.read_to_end(&mut back);
            let ((), n) = tokio::join!(write, read);
            n.unwrap();
            assert_eq!(back, msg, "connection {i}");
        });
    }
    within("200 connections", async {
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    })
    .await;
    let stats = node.stats(&key);
    assert_eq!(load(&stats.connections_total), 200);
    eventually("all bytes counted", || {
        load(&stats.bytes_out) == 200 * 4096 && load(&stats.connections_active) == 0
    })
    .await;
    assert_eq!(node.mgr.active_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_fails_over_to_the_next() {
    let (echo, _e) = tcp_echo().await;
    // Nothing listens here any more: connects are refused.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().await).parse().unwrap();
    // Round robin starts with the first endpoint: the dead one.
    let (node, key, addr) = tcp_service(&[dead, echo]).await;
    for i in 0..5 {
        let msg = format!("try {i}");
        assert_eq!(round_trip(addr, msg.as_bytes()).await, msg.as_bytes());
    }
    let stats = node.stats(&key);
    // The dead endpoint failed once, then sat out its fail timeout.
    assert_eq!(load(&stats.connect_errors), 1);
    assert_eq!(load(&stats.no_endpoints), 0);
    let snap = node.dp.snapshot();
    assert!(snap.upstreams["up"].endpoints[0].is_ejected(Instant::now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_dead_endpoints_close_the_client_connection() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().await).parse().unwrap();
    let (node, key, addr) = tcp_service(&[dead]).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    // Closed without a byte: EOF or a reset.
    let r = within("the connection to close", c.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(load(&node.stats(&key).no_endpoints), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_table() {
    let (echo, _e) = tcp_echo().await;
    let (a, b) = (free_tcp_port().await, free_tcp_port().await);
    let (ka, kb) = (format!("tcp/{a}"), format!("tcp/{b}"));
    let sa = service(L4Protocol::Tcp, a, "up");
    let sb = service(L4Protocol::Tcp, b, "up");
    let ups: &[(&str, &[SocketAddr])] = &[("up", &[echo])];
    let node = Node::start(table(1, std::slice::from_ref(&sa), ups), settings());
    let addr_a = node.bound(&ka).await;
    assert_eq!(node.mgr.bound(&kb), None);

    // An entry added: its port opens.
    node.dp.install(table(2, &[sa.clone(), sb.clone()], ups)).unwrap();
    let addr_b = node.bound(&kb).await;
    assert_eq!(round_trip(addr_b, b"b").await, b"b");

    // A connection open on A before A goes away.
    let mut kept = TcpStream::connect(addr_a).await.unwrap();
    kept.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    kept.read_exact(&mut one).await.unwrap();

    // The entry removed: the port closes, B keeps working, the open connection too.
    node.dp.install(table(3, std::slice::from_ref(&sb), ups)).unwrap();
    node.gone(&ka).await;
    let err = TcpStream::connect(addr_a).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(round_trip(addr_b, b"still b").await, b"still b");
    kept.write_all(b"2").await.unwrap();
    within("the kept connection", kept.read_exact(&mut one)).await.unwrap();
    assert_eq!(&one, b"2");

    // An endpoint change applies to the next connection without reopening the port.
    let (echo2, _e2) = tcp_collect_then_reply().await;
    node.dp
        .install(table(4, std::slice::from_ref(&sb), &[("up", &[echo2])]))
        .unwrap();
    let mut c = TcpStream::connect(addr_b).await.unwrap();
    c.write_all(b"via collect").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("reply from the new endpoint", c.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"via collect");
    assert_eq!(node.mgr.bound(&kb), Some(addr_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_reported_and_bound_once_free() {
    let (echo, _e) = tcp_echo().await;
    let blocker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blocker.local_addr().unwrap().port();
    let key = format!("tcp/{port}");
    let t = |v| table(v, &[service(L4Protocol::Tcp, port, "up")], &[("up", &[echo])]);
    let node = Node::start(t(1), settings());
    let mut status = node.mgr.status();
    let s = within(
        "the bind failure",
        status.wait_for(|m| matches!(m.get(&key), Some(ListenerStatus::Failed(_)))),
    )
    .await
    .unwrap();
    let Some(ListenerStatus::Failed(msg)) = s.get(&key).cloned() else {
        unreachable!()
    };
    drop(s);
    assert!(msg.contains("in use"), "{msg}");
    drop(blocker);
    // Any table change retries at once (a timer retries too).
    node.dp.install(t(2)).unwrap();
    let addr = node.bound(&key).await;
    assert_eq!(round_trip(addr, b"ok").await, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let idle = Duration::from_millis(500);
    let node = Node::start(
        table(1, &[service(L4Protocol::Tcp, port, "up")], &[("up", &[echo])]),
        L4Settings {
            idle_timeout: idle,
            ..settings()
        },
    );
    let addr = node.bound(&key).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
    let quiet_since = Instant::now();
    let n = within("the idle timeout", c.read(&mut one)).await.unwrap();
    assert_eq!(n, 0, "closed by the proxy");
    assert!(quiet_since.elapsed() >= idle - Duration::from_millis(100));
    eventually("the idle counter", || load(&node.stats(&key).idle_timeouts) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_in_is_stripped() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let svc = L4Service {
        proxy_protocol_in: true,
        ..service(L4Protocol::Tcp, port, "up")
    };
    let node = Node::start(table(1, &[svc], &[("up", &[echo])]), settings());
    let addr = node.bound(&key).await;

    // v1, header and payload in one write.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 4567 443\r\npayload-1")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("v1 echo", c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"payload-1");

    // v2, the header split across writes.
    let header = proxy_protocol::encode_v2("192.0.2.1:4567".parse().unwrap(), "198.51.100.2:443".parse().unwrap());
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&header[..10]).await.unwrap();
    c.flush().await.unwrap();
    tokio::task::yield_now().await;
    c.write_all(&header[10..]).await.unwrap();
    c.write_all(b"payload-2").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("v2 echo", c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"payload-2");

    // No header: dropped before anything reaches the upstream.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut back = Vec::new();
    let r = within("the rejection", c.read_to_end(&mut back)).await;
    assert!(back.is_empty(), "{back:?} ({r:?})");
    let stats = node.stats(&key);
    eventually("the PROXY error counter", || load(&stats.proxy_protocol_errors) == 1).await;
    assert_eq!(load(&stats.bytes_in), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_proxy_header_times_out() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let svc = L4Service {
        proxy_protocol_in: true,
        ..service(L4Protocol::Tcp, port, "up")
    };
    let node = Node::start(
        table(1, &[svc], &[("up", &[echo])]),
        L4Settings {
            proxy_protocol_timeout: Duration::from_millis(200),
            ..settings()
        },
    );
    let addr = node.bound(&key).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
    let mut back = Vec::new();
    let _ = within("the header timeout", c.read_to_end(&mut back)).await;
    assert!(back.is_empty());
    assert_eq!(load(&node.stats(&key).proxy_protocol_errors), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_out_carries_the_client_address() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let svc = L4Service {
        proxy_protocol_out: true,
        ..service(L4Protocol::Tcp, port, "up")
    };
    let node = Node::start(table(1, &[svc], &[("up", &[echo])]), settings());
    let addr = node.bound(&key).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"hi").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", c.read_to_end(&mut back)).await.unwrap();
    let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\nhi", me.port());
    assert_eq!(String::from_utf8(back).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_in_then_out_passes_the_original_client_on() {
    let (echo, _e) = tcp_echo().await;
    let port = free_tcp_port().await;
    let key = format!("tcp/{port}");
    let svc = L4Service {
        proxy_protocol_in: true,
        proxy_protocol_out: true,
        ..service(L4Protocol::Tcp, port, "up")
    };
    let node = Node::start(table(1, &[svc], &[("up", &[echo])]), settings());
    let addr = node.bound(&key).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut msg = proxy_protocol::encode_v2(
        "[2001:db8::7]:4567".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    msg.extend_from_slice(b"data");
    c.write_all(&msg).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(
        String::from_utf8(back).unwrap(),
        "PROXY TCP6 2001:db8::7 2001:db8::1 4567 443\r\ndata"
    );

    // A LOCAL header: the connection's own addresses go upstream.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let me = c.local_addr().unwrap();
    let mut msg = proxy_protocol::encode_v2_local();
    msg.extend_from_slice(b"x");
    c.write_all(&msg).await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", c.read_to_end(&mut back)).await.unwrap();
    assert_eq!(
        String::from_utf8(back).unwrap(),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\nx", me.port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_clients_each_get_their_own_replies() {
    let (up, _u) = udp_echo("u1").await;
    let port = free_udp_port().await;
    let key = format!("udp/{port}");
    let node = Node::start(
        table(1, &[service(L4Protocol::Udp, port, "dns")], &[("dns", &[up])]),
        settings(),
    );
    let addr = node.bound(&key).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        set.spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut upstream_side = None;
            for j in 0..5 {
                let msg = format!("client {i} message {j}");
                let reply = udp_ask(&sock, addr, &msg).await;
                let (_, seen_from, payload) = parts(&reply);
                assert_eq!(payload, msg);
                // Every datagram of a client goes through the same session.
                assert_eq!(*upstream_side.get_or_insert(seen_from.clone()), seen_from);
            }
            upstream_side.unwrap()
        });
    }
    let mut sides = std::collections::BTreeSet::new();
    within("50 UDP clients", async {
        while let Some(r) = set.join_next().await {
            sides.insert(r.unwrap());
        }
    })
    .await;
    // One upstream socket per client.
    assert_eq!(sides.len(), 50);
    let stats = node.stats(&key);
    assert_eq!(load(&stats.udp_sessions_total), 50);
    assert_eq!(load(&stats.udp_sessions_active), 50);
    assert_eq!(load(&stats.datagrams_in), 250);
    eventually("replies counted", || load(&stats.datagrams_out) == 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_expire_when_idle() {
    let (up, _u) = udp_echo("u1").await;
    let port = free_udp_port().await;
    let key = format!("udp/{port}");
    let node = Node::start(
        table(1, &[service(L4Protocol::Udp, port, "dns")], &[("dns", &[up])]),
        L4Settings {
            udp_session_timeout: Duration::from_millis(500),
            ..settings()
        },
    );
    let addr = node.bound(&key).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = udp_ask(&sock, addr, "a").await;
    let second = udp_ask(&sock, addr, "b").await;
    let side = |r: &str| parts(r).1;
    assert_eq!(side(&first), side(&second), "one session while active");
    let stats = node.stats(&key);
    eventually("the session to expire", || load(&stats.udp_sessions_expired) == 1).await;
    assert_eq!(load(&stats.udp_sessions_active), 0);
    let third = udp_ask(&sock, addr, "c").await;
    assert_ne!(side(&first), side(&third), "a new session after expiry");
    assert_eq!(load(&stats.udp_sessions_total), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_udp_table_refuses_new_clients() {
    let (up, _u) = udp_echo("u1").await;
    let port = free_udp_port().await;
    let key = format!("udp/{port}");
    let node = Node::start(
        table(1, &[service(L4Protocol::Udp, port, "dns")], &[("dns", &[up])]),
        L4Settings {
            max_udp_sessions: 1,
            ..settings()
        },
    );
    let addr = node.bound(&key).await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_ask(&a, addr, "a").await;
    b.send_to(b"b", addr).await.unwrap();
    let stats = node.stats(&key);
    eventually("the refusal", || load(&stats.udp_sessions_refused) == 1).await;
    // The established client is unaffected.
    assert!(udp_ask(&a, addr, "a2").await.ends_with("|a2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_every_listener() {
    let (echo, _e) = tcp_echo().await;
    let (up, _u) = udp_echo("u1").await;
    let (t, u) = (free_tcp_port().await, free_udp_port().await);
    let node = Node::start(
        table(
            1,
            &[service(L4Protocol::Tcp, t, "tcp"), service(L4Protocol::Udp, u, "udp")],
            &[("tcp", &[echo]), ("udp", &[up])],
        ),
        settings(),
    );
    let tcp_addr = node.bound(&format!("tcp/{t}")).await;
    let udp_addr = node.bound(&format!("udp/{u}")).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_ask(&sock, udp_addr, "x").await;
    // An open connection survives the drain until `drained` gives up on it.
    let mut open = TcpStream::connect(tcp_addr).await.unwrap();
    open.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();

    node.drain.send_replace(true);
    let mut status = node.mgr.status();
    within("listeners to close", status.wait_for(|m| m.is_empty()))
        .await
        .unwrap();
    let err = TcpStream::connect(tcp_addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The UDP port is free again.
    UdpSocket::bind(udp_addr).await.unwrap();
    assert_eq!(node.mgr.active_connections(), 1);
    assert_eq!(node.mgr.drained(Duration::from_millis(100)).await, 1);
    let n = within("the cut connection", open.read(&mut one)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    eventually("no connection left", || node.mgr.active_connections() == 0).await;
    within("the manager to stop", node.mgr.stopped()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_move_when_their_endpoint_leaves() {
    let (u1, _u1) = udp_echo("u1").await;
    let (u2, _u2) = udp_echo("u2").await;
    let port = free_udp_port().await;
    let key = format!("udp/{port}");
    let svc = service(L4Protocol::Udp, port, "dns");
    let node = Node::start(table(1, std::slice::from_ref(&svc), &[("dns", &[u1])]), settings());
    let addr = node.bound(&key).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(parts(&udp_ask(&sock, addr, "a").await).0, "u1");
    // u1 leaves, u2 joins: the live session ends at once, well before its idle timeout.
    node.dp
        .install(table(2, std::slice::from_ref(&svc), &[("dns", &[u2])]))
        .unwrap();
    let stats = node.stats(&key);
    eventually("the stale session to end", || load(&stats.udp_sessions_active) == 0).await;
    assert_eq!(parts(&udp_ask(&sock, addr, "b").await).0, "u2");
    assert_eq!(load(&stats.udp_sessions_total), 2);
    assert_eq!(load(&stats.udp_sessions_expired), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_session_to_a_refusing_endpoint_ends_at_once() {
    // A UDP port nothing listens on: the kernel answers datagrams with ICMP port unreachable.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_udp_port().await).parse().unwrap();
    let port = free_udp_port().await;
    let key = format!("udp/{port}");
    let node = Node::start(
        table(1, &[service(L4Protocol::Udp, port, "dns")], &[("dns", &[dead])]),
        // A long idle timeout: only the refusal can end the session.
        L4Settings {
            udp_session_timeout: Duration::from_secs(600),
            ..settings()
        },
    );
    let addr = node.bound(&key).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"anyone?", addr).await.unwrap();
    let stats = node.stats(&key);
    eventually("a session to start", || load(&stats.udp_sessions_total) == 1).await;
    eventually("the refused session to end", || load(&stats.udp_sessions_active) == 0).await;
}
