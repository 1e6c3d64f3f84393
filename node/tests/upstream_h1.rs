//! HTTP/1.1 to upstreams: body framings, keep-alive, connections the upstream closes while
//! pooled or under a request, and malformed responses. The upstream is a scripted TCP
//! server that answers each request with fixed bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use common::Harness;
use common::Reply;
use common::ingress;
use http::Method;
use http::Request;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

/// What the scripted upstream does after reading a request head.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Writes the response and waits for the next request.
    Answer(&'static str),
    /// Writes the response and closes the connection without saying so.
    AnswerAndClose(&'static str),
    /// Closes the connection without answering.
    Close,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    conn: usize,
    head: String,
}

/// A TCP server that plays `script` in order, one step per request, over whatever
/// connections the requests arrive on.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: common::Task,
}

impl Scripted {
    async fn start(script: Vec<Then>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, conn, script.clone(), log.clone()));
            }
        });
        Scripted {
            addr,
            seen,
            _task: common::Task(task),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, conn: usize, script: Arc<Vec<Then>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        // Requests here have no body: a head ends at the blank line.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let step = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen { conn, head });
            script.get(seen.len() - 1).copied().unwrap_or(Then::Close)
        };
        match step {
            Then::Answer(bytes) => {
                if stream.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Then::AnswerAndClose(bytes) => {
                let _ = stream.write_all(bytes.as_bytes()).await;
                return;
            }
            Then::Close => return,
        }
    }
}

/// A selector-less Service with manual Endpoints at `addr`, and an Ingress for `host`.
fn manifests(addr: SocketAddr, host: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: up, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n\
         ---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: up, namespace: default}}\n\
         subsets: [{{addresses: [{{ip: \"{}\"}}], ports: [{{name: http, port: {}}}]}}]\n{}",
        addr.ip(),
        addr.port(),
        ingress("default", "up", host, &[("/", "Prefix", "up")], "")
    )
}

/// A node routing host `h1.test` to the scripted upstream.
async fn proxy_to(up: &Scripted) -> Harness {
    let h = Harness::start().await;
    h.apply("up.yaml", &manifests(up.addr, "h1.test")).await;
    h
}

/// Waits until the proxy has closed its side of every connection to `port` on loopback:
/// none is ESTABLISHED or CLOSE_WAIT (the upstream closed, the proxy not yet).
async fn closed_towards(port: u16) {
    let remote = format!("0100007F:{port:04X}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let open = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && (f[3] == "01" || f[3] == "08")
        });
        if !open {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy keeps a connection to port {port} open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One client connection to the proxy, kept across requests.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    async fn send(&mut self, method: Method, path: &str, body: &'static str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "h1.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(req))
            .await
            .expect("no response within 10 s")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), common::read(resp))
            .await
            .expect("no body within 10 s")
    }
}

const CHUNKED: &str =
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
const LENGTH: &str = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-up: yes\r\n\r\nlength";
const TO_CLOSE: &str = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nread to the end";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_body_framing_arrives_whole_and_keep_alive_follows_it() {
    let up = Scripted::start(vec![
        Then::Answer(CHUNKED),
        Then::Answer(LENGTH),
        Then::AnswerAndClose(TO_CLOSE),
        Then::Answer(LENGTH),
    ])
    .await;
    let h = proxy_to(&up).await;
    let mut c = Client::connect(h.http()).await;

    let r = c.send(Method::GET, "/a", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "hello world"));
    let r = c.send(Method::GET, "/b", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));
    assert_eq!(r.headers["x-up"], "yes");
    assert_eq!(r.headers["content-length"], "6");
    let r = c.send(Method::GET, "/c", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "read to the end"));
    let r = c.send(Method::GET, "/d", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));

    let seen = up.seen();
    let conns: Vec<usize> = seen.iter().map(|s| s.conn).collect();
    // The chunked and the sized response keep the connection; the close-delimited one ends it.
    assert_eq!(conns, vec![0, 0, 0, 1], "{seen:#?}");
    assert!(seen[0].head.starts_with("GET /a HTTP/1.1\r\n"), "{}", seen[0].head);
    assert!(seen[0].head.contains("\r\nhost: h1.test\r\n"), "{}", seen[0].head);
    assert!(
        seen[0].head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{}",
        seen[0].head
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_pooled_is_not_used() {
    let up = Scripted::start(vec![Then::AnswerAndClose(LENGTH), Then::Answer(LENGTH)]).await;
    let h = proxy_to(&up).await;
    let mut c = Client::connect(h.http()).await;
    assert_eq!(c.send(Method::GET, "/1", "").await.status, StatusCode::OK);
    // Once the proxy has closed its side, the pool must not hand the connection out again.
    // (A POST is not sent again on a failure, so this checks the pool, not a retry.)
    closed_towards(up.addr.port()).await;
    let r = c.send(Method::POST, "/2", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].conn, 1, "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_drops_unanswered_is_sent_again_only_if_idempotent() {
    // Request 2 arrives on the kept connection and is dropped unanswered, as when an upstream
    // times the idle connection out just as the request reaches it. Only a connection idle
    // for a second or more is under that suspicion (the proxy's STALE_RISK), hence the waits:
    // the condition is the idle time itself.
    let up = Scripted::start(vec![
        Then::Answer(LENGTH),
        Then::Close,
        Then::Answer(LENGTH),
        Then::Close,
    ])
    .await;
    let h = proxy_to(&up).await;
    let mut c = Client::connect(h.http()).await;
    assert_eq!(c.send(Method::GET, "/1", "").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.send(Method::GET, "/2", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));
    let seen = up.seen();
    let got: Vec<(usize, &str)> = seen.iter().map(|s| (s.conn, &s.head[..6])).collect();
    assert_eq!(got, vec![(0, "GET /1"), (0, "GET /2"), (1, "GET /2")]);

    // A POST dropped the same way may have been acted on: it is not sent twice.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.send(Method::POST, "/3", "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert!(seen[3].head.starts_with("POST /3"), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_responses_and_no_content_have_no_body_and_keep_the_connection() {
    let up = Scripted::start(vec![
        Then::Answer("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
        Then::Answer("HTTP/1.1 204 No Content\r\n\r\n"),
        Then::Answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nlength"),
    ])
    .await;
    let h = proxy_to(&up).await;
    let mut c = Client::connect(h.http()).await;
    let r = c.send(Method::HEAD, "/", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(r.headers["content-length"], "100");
    let r = c.send(Method::GET, "/", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::NO_CONTENT, ""));
    let r = c.send(Method::GET, "/", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));
    let conns: Vec<usize> = up.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, vec![0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_are_bad_gateways_and_other_requests_go_on() {
    let up = Scripted::start(vec![
        Then::Answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
        Then::Answer("NOT HTTP AT ALL\r\n\r\n"),
        Then::Answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        Then::Answer(LENGTH),
    ])
    .await;
    let h = proxy_to(&up).await;
    for path in ["/conflicting-lengths", "/not-http"] {
        let mut c = Client::connect(h.http()).await;
        assert_eq!(
            c.send(Method::GET, path, "").await.status,
            StatusCode::BAD_GATEWAY,
            "{path}"
        );
    }
    // A chunked body that goes bad after the head: the client's connection is cut instead
    // of ending the body as if it were whole.
    let stream = TcpStream::connect(h.http()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/bad-chunk")
        .header("host", "h1.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // (The head may not even go out: hyper writes it with the first piece of body.)
    let cut = match sender.send_request(req).await {
        Err(_) => true,
        Ok(resp) => http_body_util::BodyExt::collect(resp.into_body()).await.is_err(),
    };
    assert!(cut, "a broken chunked body reached the client as a whole response");
    let mut c = Client::connect(h.http()).await;
    let r = c.send(Method::GET, "/fine", "").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "length"));
    // Each bad response retired its connection.
    let conns: Vec<usize> = up.seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_body_share_the_pooled_connection() {
    let echo = common::Echo::start("e").await;
    let h = Harness::start().await;
    h.apply(
        "e.yaml",
        &(common::service("default", "e", &[&echo]) + &ingress("default", "e", "h1.test", &[("/", "Prefix", "e")], "")),
    )
    .await;
    let mut c = Client::connect(h.http()).await;
    for (method, body) in [
        (Method::GET, ""),
        (Method::POST, "hello"),
        (Method::GET, ""),
        (Method::PUT, "hi"),
    ] {
        let r = c.send(method.clone(), "/x", body).await;
        assert_eq!(r.status, StatusCode::OK, "{method}");
        assert_eq!(r.json()["method"], method.as_str());
        assert_eq!(r.json()["body_len"], body.len());
    }
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(
        echo.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "a request with a body is handed to hyper on the pooled connection, not a new one"
    );
}
