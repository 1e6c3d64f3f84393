#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The test API server checked against the documented Kubernetes API behaviour, over real HTTP on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use raftgate_chaos_tests::apiserver::ApiServer;
use serde_json::Value;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const ING: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
const CM: &str = "/api/v1/namespaces/default/configmaps";

async fn server() -> ApiServer {
    ApiServer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap()
}

/// Sends one request on a fresh connection; returns the status, headers and the body (JSON, or a string).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> Result<(u16, http::HeaderMap, Value), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("user-agent", "apiserver-test/1");
    let payload = match body {
        Some((ct, v)) => {
            req = req.header("content-type", ct);
            Bytes::from(serde_json::to_vec(&v).unwrap())
        }
        None => Bytes::new(),
    };
    let resp = sender
        .send_request(req.body(Full::new(payload)).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, headers, value))
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| {
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        (ct, b)
    });
    let (status, _, v) = timeout(WAIT, send(addr, method, path, body)).await.unwrap().unwrap();
    (status, v)
}

async fn ok(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(addr, method, path, body).await;
    assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
    v
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": name}})
}

fn ingress(name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ingressClassName": "raftgate", "rules": [{"host": format!("{name}.example.com")}]}
    })
}

fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// A raw watch stream, split into JSON lines.
struct Watch {
    status: u16,
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl Watch {
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(path)
            .header("host", addr.to_string())
            .header("user-agent", "apiserver-test-watch/1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = timeout(WAIT, sender.send_request(req)).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        if status == 200 {
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert!(
                resp.headers().get("content-length").is_none(),
                "watch responses are chunked"
            );
        }
        Self {
            status,
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event; `Ok(None)` when the stream ended cleanly, `Err` when it broke.
    async fn try_next(&mut self) -> Result<Option<Value>, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(serde_json::from_slice(&line).unwrap()));
            }
            if self.ended {
                assert!(self.buf.is_empty(), "partial line at end of stream");
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => self.ended = true,
            }
        }
    }

    async fn next(&mut self) -> Option<Value> {
        timeout(WAIT, self.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
    }

    /// The next event that is not a BOOKMARK.
    async fn next_change(&mut self) -> Option<Value> {
        loop {
            let ev = self.next().await?;
            if ev["type"] != "BOOKMARK" {
                return Some(ev);
            }
        }
    }

    /// Every remaining event until the stream ends (use with timeoutSeconds).
    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }
}

fn summary(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn writes_bump_one_global_resource_version() {
    let srv = server().await;
    let a = srv.addr();
    let start = srv.current_rv();
    let c1 = ok(a, "POST", CM, Some(cm("one", json!({})))).await;
    let i1 = ok(a, "POST", ING, Some(ingress("web"))).await;
    let svc = ok(
        a,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await;
    let mut c2 = c1.clone();
    c2["data"]["k"] = json!("changed");
    let c2 = ok(a, "PUT", &format!("{CM}/one"), Some(c2)).await;
    let c3 = ok(
        a,
        "PATCH",
        &format!("{CM}/one"),
        Some(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await;
    let rvs = [rv(&c1), rv(&i1), rv(&svc), rv(&c2), rv(&c3)];
    assert!(rvs[0] > start);
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    assert_eq!(srv.current_rv(), rvs[4]);

    // System fields set on create, kept on update.
    assert_eq!(c1["kind"], "ConfigMap");
    assert_eq!(c1["apiVersion"], "v1");
    assert_eq!(c1["metadata"]["namespace"], "default");
    assert_eq!(c1["metadata"]["generation"], 1);
    let ts = c1["metadata"]["creationTimestamp"].as_str().unwrap();
    assert!(ts.len() == 20 && ts.ends_with('Z') && &ts[10..11] == "T", "{ts}");
    assert_eq!(c1["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_ne!(c1["metadata"]["uid"], i1["metadata"]["uid"]);
    assert_eq!(c3["metadata"]["uid"], c1["metadata"]["uid"]);
    assert_eq!(c3["metadata"]["creationTimestamp"], c1["metadata"]["creationTimestamp"]);
    // Generation follows the non-metadata content: data change bumps it, a label change does not.
    assert_eq!(c2["metadata"]["generation"], 2);
    assert_eq!(c3["metadata"]["generation"], 2);
    // The real server allocates a cluster IP and resets a Service's status on create.
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
    assert_eq!(svc["status"], json!({"loadBalancer": {}}));

    let list = ok(a, "GET", "/api/v1/configmaps", None).await;
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["apiVersion"], "v1");
    let list_rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert_eq!(list_rv, srv.current_rv());
    for item in list["items"].as_array().unwrap() {
        assert!(rv(item) <= list_rv);
        assert_eq!(item["kind"], "ConfigMap");
        assert_eq!(item["apiVersion"], "v1");
    }
    let got = ok(a, "GET", &format!("{CM}/one"), None).await;
    assert_eq!(got, c3);
    assert_eq!(srv.get("v1", "ConfigMap", "default", "one").unwrap(), c3);
}

#[tokio::test]
async fn errors_are_status_objects_with_the_real_codes() {
    let srv = server().await;
    let a = srv.addr();
    let first = ok(a, "POST", CM, Some(cm("dup", json!({})))).await;

    let (code, v) = call(a, "POST", CM, Some(cm("dup", json!({})))).await;
    assert_eq!(code, 409);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(v["details"]["name"], "dup");
    assert_eq!(v["details"]["kind"], "configmaps");

    let (code, v) = call(a, "GET", &format!("{CM}/missing"), None).await;
    assert_eq!(code, 404);
    assert_status(&v, 404, "NotFound");
    assert_eq!(v["message"], "configmaps \"missing\" not found");

    // Update with the current RV succeeds; the old RV is now stale.
    let mut upd = first.clone();
    upd["data"]["k"] = json!("v2");
    let second = ok(a, "PUT", &format!("{CM}/dup"), Some(upd.clone())).await;
    assert!(rv(&second) > rv(&first));
    upd["data"]["k"] = json!("v3");
    let (code, v) = call(a, "PUT", &format!("{CM}/dup"), Some(upd.clone())).await;
    assert_eq!(code, 409);
    assert_status(&v, 409, "Conflict");
    assert!(v["message"].as_str().unwrap().contains("the object has been modified"));
    // A merge patch carrying a stale RV is a precondition too.
    let (code, v) = call(
        a,
        "PATCH",
        &format!("{CM}/dup"),
        Some(json!({"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "data": {"k": "x"}})),
    )
    .await;
    assert_eq!(code, 409);
    assert_status(&v, 409, "Conflict");
    // Without an RV the update is unconditional.
    upd["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let third = ok(a, "PUT", &format!("{CM}/dup"), Some(upd)).await;
    assert_eq!(third["data"]["k"], "v3");

    // Namespace and name in the body must match the URL.
    let mut wrong_ns = cm("x", json!({}));
    wrong_ns["metadata"]["namespace"] = json!("other");
    let (code, v) = call(a, "POST", CM, Some(wrong_ns)).await;
    assert_eq!(code, 400);
    assert_status(&v, 400, "BadRequest");
    let (code, v) = call(a, "PUT", &format!("{CM}/dup"), Some(cm("not-dup", json!({})))).await;
    assert_eq!(code, 400);
    assert_status(&v, 400, "BadRequest");
    // PUT does not create (for configmaps), a resourceVersion on create is refused, names are validated.
    let (code, _) = call(a, "PUT", &format!("{CM}/nope"), Some(cm("nope", json!({})))).await;
    assert_eq!(code, 404);
    let (code, _) = call(a, "POST", CM, Some(second.clone())).await;
    assert_eq!(code, 500);
    let (code, v) = call(a, "POST", CM, Some(cm("Bad_Name", json!({})))).await;
    assert_eq!(code, 422);
    assert_status(&v, 422, "Invalid");
    let (code, v) = call(a, "POST", CM, Some(json!({"metadata": {}}))).await;
    assert_eq!(code, 422);
    assert_status(&v, 422, "Invalid");
    // generateName works.
    let generated = ok(a, "POST", CM, Some(json!({"metadata": {"generateName": "gen-"}}))).await;
    assert!(generated["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    assert_eq!(generated["metadata"]["name"].as_str().unwrap().len(), 9);

    // Wrong kind for the path, unknown resources and methods.
    let (code, _) = call(
        a,
        "POST",
        CM,
        Some(json!({"kind": "Secret", "metadata": {"name": "s"}})),
    )
    .await;
    assert_eq!(code, 400);
    let (code, v) = call(a, "GET", "/api/v1/namespaces/default/widgets", None).await;
    assert_eq!(code, 404);
    assert_status(&v, 404, "NotFound");
    let (code, _) = call(a, "GET", "/apis/example.com/v1/things", None).await;
    assert_eq!(code, 404);
    let (code, v) = call(a, "POST", "/api/v1/configmaps", Some(cm("x", json!({})))).await;
    assert_eq!(code, 405);
    assert_status(&v, 405, "MethodNotAllowed");

    // Patch formats: JSON patch works, server-side apply is not supported.
    let patched = ok_json_patch(
        a,
        &format!("{CM}/dup"),
        json!([{"op": "add", "path": "/data/j", "value": "1"}]),
    )
    .await;
    assert_eq!(patched["data"]["j"], "1");
    let (code, _, v) = send(
        a,
        "PATCH",
        &format!("{CM}/dup"),
        Some(("application/apply-patch+yaml", json!({}))),
    )
    .await
    .unwrap();
    assert_eq!(code, 415);
    assert_status(&v, 415, "UnsupportedMediaType");
    let (code, _, v) = send(
        a,
        "PATCH",
        &format!("{CM}/dup"),
        Some((
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/j", "value": "2"}]),
        )),
    )
    .await
    .unwrap();
    assert_eq!(code, 422, "{v}");
    let (code, _) = call(a, "PATCH", &format!("{CM}/missing"), Some(json!({"data": {}}))).await;
    assert_eq!(code, 404);
}

async fn ok_json_patch(a: SocketAddr, path: &str, patch: Value) -> Value {
    let (code, _, v) = send(a, "PATCH", path, Some(("application/json-patch+json", patch)))
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
    v
}

#[tokio::test]
async fn no_op_updates_write_nothing() {
    let srv = server().await;
    let a = srv.addr();
    let obj = ok(a, "POST", CM, Some(cm("same", json!({"a": "b"})))).await;
    let again = ok(a, "PUT", &format!("{CM}/same"), Some(obj.clone())).await;
    assert_eq!(
        rv(&again),
        rv(&obj),
        "an update that changes nothing keeps the resourceVersion"
    );
    let patched = ok(a, "PATCH", &format!("{CM}/same"), Some(json!({"data": {"k": "same"}}))).await;
    assert_eq!(rv(&patched), rv(&obj));
    assert_eq!(srv.current_rv(), rv(&obj));
    // ...and emits no watch event: the first event after it is the real change.
    let mut w = Watch::open(a, &format!("{CM}?watch=true&resourceVersion={}", rv(&obj))).await;
    ok(a, "PATCH", &format!("{CM}/same"), Some(json!({"data": {"k": "other"}}))).await;
    let ev = w.next_change().await.unwrap();
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["data"]["k"], "other");
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() {
    let srv = server().await;
    let a = srv.addr();
    for i in 1..=5 {
        ok(a, "POST", CM, Some(cm(&format!("cm-{i}"), json!({})))).await;
    }
    let original = ok(a, "GET", CM, None).await;
    let first = ok(a, "GET", &format!("{CM}?limit=2"), None).await;
    assert_eq!(names(&first), ["cm-1", "cm-2"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let snapshot_rv = first["metadata"]["resourceVersion"].clone();
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();

    // Writes between pages must not show up in later pages.
    ok(a, "POST", CM, Some(cm("cm-0", json!({})))).await;
    ok(a, "POST", CM, Some(cm("cm-9", json!({})))).await;
    ok(a, "DELETE", &format!("{CM}/cm-3"), None).await;
    ok(
        a,
        "PATCH",
        &format!("{CM}/cm-4"),
        Some(json!({"data": {"k": "changed"}})),
    )
    .await;

    let mut items: Vec<Value> = first["items"].as_array().unwrap().clone();
    loop {
        let page = ok(a, "GET", &format!("{CM}?limit=2&continue={token}"), None).await;
        assert_eq!(page["metadata"]["resourceVersion"], snapshot_rv);
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(Value::Array(items), original["items"]);
    let now = ok(a, "GET", CM, None).await;
    assert_eq!(names(&now), ["cm-0", "cm-1", "cm-2", "cm-4", "cm-5", "cm-9"]);

    // A bad token is a 400.
    let (code, _) = call(a, "GET", &format!("{CM}?limit=2&continue=bm90LWpzb24"), None).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn expired_continue_and_exact_reads() {
    let srv = server().await;
    let a = srv.addr();
    for i in 1..=3 {
        ok(a, "POST", CM, Some(cm(&format!("c{i}"), json!({})))).await;
    }
    let first = ok(a, "GET", &format!("{CM}?limit=1"), None).await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let old_rv = rv(&json!({"metadata": first["metadata"]}));
    ok(a, "PATCH", &format!("{CM}/c1"), Some(json!({"data": {"k": "new"}}))).await;

    // Exact read from history returns the old state.
    let exact = ok(
        a,
        "GET",
        &format!("{CM}?resourceVersion={old_rv}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(exact["metadata"]["resourceVersion"], old_rv.to_string());
    assert_eq!(exact["items"][0]["data"]["k"], "c1");
    // NotOlderThan and "0" read the newest state.
    let newer = ok(
        a,
        "GET",
        &format!("{CM}?resourceVersion={old_rv}&resourceVersionMatch=NotOlderThan"),
        None,
    )
    .await;
    assert_eq!(newer["items"][0]["data"]["k"], "new");
    let any = ok(a, "GET", &format!("{CM}?resourceVersion=0"), None).await;
    assert_eq!(any["items"][0]["data"]["k"], "new");
    let (code, _) = call(a, "GET", &format!("{CM}?resourceVersionMatch=Exact"), None).await;
    assert_eq!(code, 400, "resourceVersionMatch needs resourceVersion");

    srv.compact();
    let (code, v) = call(a, "GET", &format!("{CM}?limit=1&continue={token}"), None).await;
    assert_eq!(code, 410);
    assert_status(&v, 410, "Expired");
    let (code, v) = call(
        a,
        "GET",
        &format!("{CM}?resourceVersion={old_rv}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(code, 410);
    assert_status(&v, 410, "Expired");
    // Reads at or after the compaction point still work.
    let cur = srv.current_rv();
    ok(
        a,
        "GET",
        &format!("{CM}?resourceVersion={cur}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
}

#[tokio::test]
async fn reads_at_a_future_resource_version_wait_then_time_out() {
    let srv = server().await;
    let a = srv.addr();
    // A read at a revision not reached yet waits for it (up to a few seconds)...
    let next = srv.current_rv() + 1;
    let waiting = tokio::spawn(async move { call(a, "GET", &format!("{CM}?resourceVersion={next}"), None).await });
    ok(a, "POST", CM, Some(cm("arrives", json!({})))).await;
    let (code, list) = waiting.await.unwrap();
    assert_eq!(code, 200, "{list}");
    assert_eq!(names(&list), ["arrives"]);
    // ...and then gives up with 504 "Too large resource version".
    let far = srv.current_rv() + 100;
    let started = std::time::Instant::now();
    let (code, v) = call(a, "GET", &format!("{CM}?resourceVersion={far}"), None).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited first");
    assert_eq!(code, 504);
    assert_status(&v, 504, "Timeout");
    assert!(v["message"].as_str().unwrap().contains("Too large resource version"));
}

#[tokio::test]
async fn watch_from_list_rv_sees_exactly_the_later_events() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", ING, Some(ingress("a"))).await;
    let b = ok(a, "POST", ING, Some(ingress("b"))).await;
    let list = ok(a, "GET", ING, None).await;
    let list_rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    ok(
        a,
        "PATCH",
        &format!("{ING}/a"),
        Some(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await;
    ok(a, "POST", ING, Some(ingress("c"))).await;
    let deleted = ok(a, "DELETE", &format!("{ING}/b"), None).await;
    ok(a, "POST", CM, Some(cm("other-type", json!({})))).await;

    let mut w = Watch::open(
        a,
        &format!("{ING}?watch=true&resourceVersion={list_rv}&timeoutSeconds=2"),
    )
    .await;
    // Live events after the watch started arrive too.
    let live = ok(a, "POST", ING, Some(ingress("d"))).await;
    let events = w.rest().await;
    assert_eq!(
        summary(&events),
        [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "b"), ("ADDED", "d")]
            .map(|(t, n)| (t.to_string(), n.to_string()))
    );
    let rvs: Vec<u64> = events.iter().map(|e| rv(&e["object"])).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    assert!(rvs[0] > list_rv.parse().unwrap());
    // The DELETED event carries the last state with the deletion revision, as the DELETE response does.
    assert!(rv(&events[2]["object"]) > rv(&b));
    assert_eq!(events[2]["object"], deleted);
    assert_eq!(events[3]["object"], live);
    assert_eq!(events[0]["object"]["kind"], "Ingress");
    assert_eq!(events[0]["object"]["apiVersion"], "networking.k8s.io/v1");
}

#[tokio::test]
async fn watch_without_rv_starts_with_the_current_state() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", ING, Some(ingress("x"))).await;
    ok(a, "POST", ING, Some(ingress("y"))).await;
    for query in ["watch=true", "watch=1&resourceVersion=0"] {
        let mut w = Watch::open(a, &format!("{ING}?{query}")).await;
        assert_eq!(
            summary(&[w.next().await.unwrap(), w.next().await.unwrap()]),
            [
                ("ADDED".to_string(), "x".to_string()),
                ("ADDED".to_string(), "y".to_string())
            ]
        );
    }
    // sendInitialEvents=false: only changes.
    let mut w = Watch::open(a, &format!("{ING}?watch=true&sendInitialEvents=false")).await;
    ok(a, "POST", ING, Some(ingress("z"))).await;
    assert_eq!(w.next().await.unwrap()["object"]["metadata"]["name"], "z");
    // The legacy /watch/ prefix works as well.
    let mut w = Watch::open(a, "/apis/networking.k8s.io/v1/watch/namespaces/default/ingresses").await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
}

#[tokio::test]
async fn watch_from_a_compacted_rv_gets_an_in_stream_410() {
    let srv = server().await;
    let a = srv.addr();
    let first = ok(a, "POST", ING, Some(ingress("a"))).await;
    ok(a, "POST", ING, Some(ingress("b"))).await;
    let point = srv.compact();
    assert_eq!(point, srv.current_rv());
    assert_eq!(srv.compacted_rv(), point);
    let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={}", rv(&first))).await;
    assert_eq!(
        w.status, 200,
        "the real server answers 200 and reports 410 inside the stream"
    );
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_status(&ev["object"], 410, "Expired");
    assert!(
        ev["object"]["message"]
            .as_str()
            .unwrap()
            .contains("too old resource version")
    );
    assert_eq!(w.next().await, None, "the stream ends after the error");
    // Watching from the compaction point itself still works.
    let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={point}")).await;
    ok(a, "POST", ING, Some(ingress("c"))).await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
}

#[tokio::test]
async fn bookmarks_only_when_allowed_and_with_a_current_rv() {
    let srv = server().await;
    let a = srv.addr();
    srv.set_bookmark_interval(Duration::from_millis(100));
    ok(a, "POST", ING, Some(ingress("a"))).await;
    let cur = srv.current_rv();
    let mut quiet = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={cur}&timeoutSeconds=2")).await;
    let mut bm = Watch::open(
        a,
        &format!("{ING}?watch=true&resourceVersion={cur}&allowWatchBookmarks=true"),
    )
    .await;
    let ev = bm.next().await.unwrap();
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(ev["object"]["kind"], "Ingress");
    assert_eq!(ev["object"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(ev["object"]["metadata"]["resourceVersion"], cur.to_string());
    // A write to another type moves the global revision; the next bookmark reports it.
    let other = ok(a, "POST", CM, Some(cm("elsewhere", json!({})))).await;
    let ev = bm.next().await.unwrap();
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        other["metadata"]["resourceVersion"]
    );
    // A change of the watched type comes before any bookmark at its revision.
    let changed = ok(a, "POST", ING, Some(ingress("b"))).await;
    let ev = bm.next_change().await.unwrap();
    assert_eq!(ev["object"], changed);
    let ev = bm.next().await.unwrap();
    assert!(rv(&ev["object"]) >= rv(&changed));
    // The watch without allowWatchBookmarks saw only the change.
    assert_eq!(summary(&quiet.rest().await), [("ADDED".to_string(), "b".to_string())]);
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream_cleanly() {
    let srv = server().await;
    let started = std::time::Instant::now();
    let mut w = Watch::open(srv.addr(), &format!("{ING}?watch=true&timeoutSeconds=1")).await;
    srv.wait_for_open_watches(1).await;
    assert_eq!(timeout(WAIT, w.try_next()).await.unwrap(), Ok(None));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    srv.wait_open_watches(|n| n == 0).await;
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", CM, Some(cm("web-1", json!({"app": "web", "tier": "front"})))).await;
    ok(a, "POST", CM, Some(cm("web-2", json!({"app": "web", "tier": "back"})))).await;
    ok(a, "POST", CM, Some(cm("db", json!({"app": "db"})))).await;
    ok(a, "POST", CM, Some(cm("bare", json!({})))).await;
    ok(
        a,
        "POST",
        "/api/v1/namespaces/other/configmaps",
        Some(cm("web-3", json!({"app": "web"}))),
    )
    .await;
    let sel = |q: &str| {
        let q = q.to_string();
        async move { names(&ok(a, "GET", &format!("{CM}?labelSelector={q}"), None).await) }
    };
    assert_eq!(sel("app%3Dweb").await, ["web-1", "web-2"]);
    assert_eq!(sel("app%3D%3Dweb,tier%21%3Dback").await, ["web-1"]);
    assert_eq!(sel("app%21%3Dweb").await, ["bare", "db"]);
    assert_eq!(sel("app+in+(db,web)").await, ["db", "web-1", "web-2"]);
    assert_eq!(sel("app%20notin%20(web)").await, ["bare", "db"]);
    assert_eq!(sel("tier").await, ["web-1", "web-2"]);
    assert_eq!(sel("!app").await, ["bare"]);
    let (code, v) = call(a, "GET", &format!("{CM}?labelSelector=a%3Db%3Dc%20d"), None).await;
    assert_eq!(code, 400, "{v}");

    let all = names(&ok(a, "GET", "/api/v1/configmaps?labelSelector=app%3Dweb", None).await);
    assert_eq!(all, ["web-1", "web-2", "web-3"]);
    let f = names(
        &ok(
            a,
            "GET",
            "/api/v1/configmaps?fieldSelector=metadata.namespace%3Dother",
            None,
        )
        .await,
    );
    assert_eq!(f, ["web-3"]);
    let f = names(&ok(a, "GET", &format!("{CM}?fieldSelector=metadata.name%3D%3Ddb"), None).await);
    assert_eq!(f, ["db"]);
    let f = names(
        &ok(
            a,
            "GET",
            &format!("{CM}?fieldSelector=metadata.name%21%3Ddb&labelSelector=app"),
            None,
        )
        .await,
    );
    assert_eq!(f, ["web-1", "web-2"]);
    let (code, v) = call(a, "GET", &format!("{CM}?fieldSelector=data.k%3Dx"), None).await;
    assert_eq!(code, 400);
    assert_status(&v, 400, "BadRequest");

    let secrets = "/api/v1/namespaces/default/secrets";
    ok(
        a,
        "POST",
        secrets,
        Some(json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {}})),
    )
    .await;
    let plain = ok(
        a,
        "POST",
        secrets,
        Some(json!({"metadata": {"name": "plain"}, "stringData": {"u": "hello"}})),
    )
    .await;
    assert_eq!(plain["type"], "Opaque");
    assert_eq!(plain["data"]["u"], "aGVsbG8=");
    assert!(plain.get("stringData").is_none());
    let f = names(
        &ok(
            a,
            "GET",
            &format!("{secrets}?fieldSelector=type%3Dkubernetes.io%2Ftls"),
            None,
        )
        .await,
    );
    assert_eq!(f, ["tls"]);
    let f = names(
        &ok(
            a,
            "GET",
            &format!("{secrets}?fieldSelector=type%21%3Dkubernetes.io%2Ftls"),
            None,
        )
        .await,
    );
    assert_eq!(f, ["plain"]);

    // Watches: only matching objects, and label changes are transitions (ADDED / DELETED).
    let cur = srv.current_rv();
    let mut w = Watch::open(
        a,
        &format!("{CM}?watch=true&labelSelector=app%3Dweb&resourceVersion={cur}&timeoutSeconds=2"),
    )
    .await;
    let mut ns_w = Watch::open(
        a,
        &format!("/api/v1/namespaces/other/configmaps?watch=true&resourceVersion={cur}&timeoutSeconds=2"),
    )
    .await;
    ok(a, "POST", CM, Some(cm("new-db", json!({"app": "db"})))).await;
    ok(a, "POST", CM, Some(cm("new-web", json!({"app": "web"})))).await;
    ok(a, "PATCH", &format!("{CM}/new-web"), Some(json!({"data": {"k": "2"}}))).await;
    ok(
        a,
        "PATCH",
        &format!("{CM}/new-web"),
        Some(json!({"metadata": {"labels": {"app": "api"}}})),
    )
    .await;
    ok(
        a,
        "PATCH",
        &format!("{CM}/new-db"),
        Some(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await;
    ok(a, "DELETE", &format!("{CM}/new-db"), None).await;
    ok(a, "DELETE", &format!("{CM}/bare"), None).await;
    ok(
        a,
        "PATCH",
        "/api/v1/namespaces/other/configmaps/web-3",
        Some(json!({"data": {"k": "z"}})),
    )
    .await;
    let expected = [
        ("ADDED", "new-web"),
        ("MODIFIED", "new-web"),
        ("DELETED", "new-web"),
        ("ADDED", "new-db"),
        ("DELETED", "new-db"),
    ]
    .map(|(t, n)| (t.to_string(), n.to_string()));
    assert_eq!(summary(&w.rest().await), expected);
    assert_eq!(
        summary(&ns_w.rest().await),
        [("MODIFIED".to_string(), "web-3".to_string())]
    );
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() {
    let srv = server().await;
    let a = srv.addr();
    let mut body = ingress("st");
    body["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    let created = ok(a, "POST", ING, Some(body)).await;
    assert_eq!(created["status"], json!({"loadBalancer": {}}), "create resets status");

    // PUT on /status changes only status, even if spec and labels differ in the body.
    let mut st = created.clone();
    st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    st["spec"]["ingressClassName"] = json!("other");
    st["metadata"]["labels"] = json!({"sneaky": "yes"});
    let after_status = ok(a, "PUT", &format!("{ING}/st/status"), Some(st)).await;
    assert_eq!(after_status["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.10");
    assert_eq!(after_status["spec"], created["spec"]);
    assert!(after_status["metadata"].get("labels").is_none());
    assert_eq!(after_status["metadata"]["generation"], 1);
    assert!(rv(&after_status) > rv(&created));
    // A stale RV on /status conflicts as well.
    let (code, _) = call(a, "PUT", &format!("{ING}/st/status"), Some(created.clone())).await;
    assert_eq!(code, 409);

    // PATCH on /status.
    let patched = ok(
        a,
        "PATCH",
        &format!("{ING}/st/status"),
        Some(json!({"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}, "spec": {"ingressClassName": "x"}})),
    )
    .await;
    assert_eq!(
        patched["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": "lb.example.com"}])
    );
    assert_eq!(patched["spec"], created["spec"]);
    assert!(rv(&patched) > rv(&after_status));
    let got = ok(a, "GET", &format!("{ING}/st/status"), None).await;
    assert_eq!(got, patched);

    // The main resource ignores status: a status-only change is a no-op, a spec change keeps the status.
    let mut main = patched.clone();
    main["status"] = json!({"loadBalancer": {}});
    let same = ok(a, "PUT", &format!("{ING}/st"), Some(main.clone())).await;
    assert_eq!(same, patched);
    main["spec"]["ingressClassName"] = json!("nginx");
    let updated = ok(a, "PUT", &format!("{ING}/st"), Some(main)).await;
    assert_eq!(updated["status"], patched["status"]);
    assert_eq!(updated["spec"]["ingressClassName"], "nginx");
    assert_eq!(updated["metadata"]["generation"], 2);
    let merged = ok(
        a,
        "PATCH",
        &format!("{ING}/st"),
        Some(json!({"status": {"loadBalancer": null}})),
    )
    .await;
    assert_eq!(merged["status"], patched["status"]);

    // Types without a status subresource have no /status path.
    ok(a, "POST", CM, Some(cm("c", json!({})))).await;
    let (code, _) = call(a, "GET", &format!("{CM}/c/status"), None).await;
    assert_eq!(code, 404);
    // Rust-side status patch.
    let rs = srv
        .patch_status(
            "networking.k8s.io/v1",
            "Ingress",
            "default",
            "st",
            &json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}}}),
        )
        .unwrap();
    assert_eq!(rs["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.99");
}

#[tokio::test]
async fn delete_emits_deleted_with_a_new_rv_and_honours_finalizers() {
    let srv = server().await;
    let a = srv.addr();
    let obj = ok(a, "POST", ING, Some(ingress("gone"))).await;
    let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={}", rv(&obj))).await;
    let (code, deleted) = call(a, "DELETE", &format!("{ING}/gone"), None).await;
    assert_eq!(code, 200);
    assert!(rv(&deleted) > rv(&obj));
    assert_eq!(deleted["spec"], obj["spec"]);
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"], deleted);
    let (code, _) = call(a, "GET", &format!("{ING}/gone"), None).await;
    assert_eq!(code, 404);
    let (code, _) = call(a, "DELETE", &format!("{ING}/gone"), None).await;
    assert_eq!(code, 404);

    // Preconditions in DeleteOptions.
    ok(a, "POST", ING, Some(ingress("kept"))).await;
    let (code, v) = call(
        a,
        "DELETE",
        &format!("{ING}/kept"),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}})),
    )
    .await;
    assert_eq!(code, 409);
    assert_status(&v, 409, "Conflict");
    assert_eq!(w.next().await.unwrap()["object"]["metadata"]["name"], "kept");

    // With finalizers the object only gets a deletionTimestamp until they are removed.
    let mut fin = ingress("fin");
    fin["metadata"]["finalizers"] = json!(["example.com/hold"]);
    ok(a, "POST", ING, Some(fin)).await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
    let (code, pending) = call(a, "DELETE", &format!("{ING}/fin"), None).await;
    assert_eq!(code, 202);
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "MODIFIED");
    ok(a, "GET", &format!("{ING}/fin"), None).await;
    ok(
        a,
        "PATCH",
        &format!("{ING}/fin"),
        Some(json!({"metadata": {"finalizers": null}})),
    )
    .await;
    let ev = w.next().await.unwrap();
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["metadata"]["name"], "fin");
    let (code, _) = call(a, "GET", &format!("{ING}/fin"), None).await;
    assert_eq!(code, 404);

    // deletecollection with a selector.
    ok(a, "POST", CM, Some(cm("d1", json!({"x": "1"})))).await;
    ok(a, "POST", CM, Some(cm("d2", json!({})))).await;
    let gone = ok(a, "DELETE", &format!("{CM}?labelSelector=x"), None).await;
    assert_eq!(names(&gone), ["d1"]);
    assert_eq!(names(&ok(a, "GET", CM, None).await), ["d2"]);
}

#[tokio::test]
async fn streaming_list_sends_initial_events_then_a_marked_bookmark() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", ING, Some(ingress("s1"))).await;
    ok(a, "POST", ING, Some(ingress("s2"))).await;
    let cur = srv.current_rv();
    let mut w = Watch::open(
        a,
        &format!("{ING}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"),
    )
    .await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
    let bm = w.next().await.unwrap();
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["metadata"]["resourceVersion"], cur.to_string());
    assert_eq!(
        bm["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Without bookmarks (or the NotOlderThan match) the request is invalid.
    let (code, v) = call(
        a,
        "GET",
        &format!("{ING}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
        None,
    )
    .await;
    assert_eq!(code, 422);
    assert_status(&v, 422, "Invalid");
    let (code, _) = call(
        a,
        "GET",
        &format!("{ING}?watch=true&resourceVersion=1&resourceVersionMatch=NotOlderThan"),
        None,
    )
    .await;
    assert_eq!(code, 422);
}

#[tokio::test]
async fn fault_refused_connections_drop_watches_and_new_connections() {
    let srv = server().await;
    let a = srv.addr();
    let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={}", srv.current_rv())).await;
    srv.wait_for_open_watches(1).await;
    srv.refuse_connections(true);
    assert!(
        timeout(WAIT, w.try_next()).await.unwrap().is_err(),
        "an open watch breaks"
    );
    assert!(
        timeout(WAIT, send(a, "GET", CM, None)).await.unwrap().is_err(),
        "new connections are dropped"
    );
    srv.refuse_connections(false);
    ok(a, "GET", CM, None).await;
}

#[tokio::test]
async fn fault_stall_holds_requests_until_released() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", CM, Some(cm("s", json!({})))).await;
    let mut w = Watch::open(a, &format!("{CM}?watch=true&resourceVersion={}", srv.current_rv())).await;
    srv.stall(true);
    let held = tokio::spawn(async move { call(a, "GET", &format!("{CM}/s"), None).await });
    srv.wait_for_held_requests(1).await;
    assert!(!held.is_finished());
    // Watch streams are frozen too: the change is not delivered while stalled.
    srv.patch("v1", "ConfigMap", "default", "s", &json!({"data": {"k": "2"}}))
        .unwrap();
    assert!(timeout(Duration::from_millis(200), w.try_next()).await.is_err());
    srv.stall(false);
    let (code, v) = timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["name"], "s");
    assert_eq!(w.next().await.unwrap()["object"]["data"]["k"], "2");
    assert_eq!(srv.held_requests(), 0);
}

#[tokio::test]
async fn fault_close_watches_ends_streams_cleanly() {
    let srv = server().await;
    let a = srv.addr();
    let mut w1 = Watch::open(a, &format!("{ING}?watch=true")).await;
    let mut w2 = Watch::open(a, &format!("{CM}?watch=true&allowWatchBookmarks=true")).await;
    srv.wait_for_open_watches(2).await;
    assert_eq!(srv.open_watches(), 2);
    srv.close_watches();
    assert_eq!(timeout(WAIT, w1.try_next()).await.unwrap(), Ok(None));
    loop {
        match timeout(WAIT, w2.try_next()).await.unwrap() {
            Ok(Some(ev)) => assert_eq!(ev["type"], "BOOKMARK"),
            other => {
                assert_eq!(other, Ok(None));
                break;
            }
        }
    }
    timeout(WAIT, srv.wait_open_watches(|n| n == 0)).await.unwrap();
    // New watches work afterwards.
    let mut w3 = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={}", srv.current_rv())).await;
    ok(a, "POST", ING, Some(ingress("after"))).await;
    assert_eq!(w3.next().await.unwrap()["type"], "ADDED");
    assert_eq!(srv.total_watches(), 3);
}

#[tokio::test]
async fn fault_forced_410_on_next_watches() {
    let srv = server().await;
    let a = srv.addr();
    let cur = srv.current_rv();
    srv.expire_next_watches(2);
    for _ in 0..2 {
        let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={cur}")).await;
        let ev = w.next().await.unwrap();
        assert_eq!(ev["type"], "ERROR");
        assert_status(&ev["object"], 410, "Expired");
        assert_eq!(w.next().await, None);
    }
    let mut w = Watch::open(a, &format!("{ING}?watch=true&resourceVersion={cur}")).await;
    ok(a, "POST", ING, Some(ingress("fine"))).await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");

    srv.fail_watches_with_410(true);
    for _ in 0..3 {
        let mut w = Watch::open(a, &format!("{ING}?watch=true")).await;
        assert_eq!(w.next().await.unwrap()["type"], "ERROR");
    }
    srv.fail_watches_with_410(false);
    let mut w = Watch::open(a, &format!("{ING}?watch=true")).await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
}

#[tokio::test]
async fn fault_pause_closes_the_port_and_resume_reopens_it() {
    let srv = server().await;
    let a = srv.addr();
    ok(a, "POST", CM, Some(cm("survives", json!({})))).await;
    let mut w = Watch::open(a, &format!("{CM}?watch=true&resourceVersion={}", srv.current_rv())).await;
    srv.pause().await;
    assert!(srv.is_paused());
    let err = TcpStream::connect(a).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!matches!(timeout(WAIT, w.try_next()).await.unwrap(), Ok(Some(_))));
    srv.resume().unwrap();
    assert!(!srv.is_paused());
    assert_eq!(srv.addr(), a);
    assert_eq!(names(&ok(a, "GET", CM, None).await), ["survives"]);
}

#[tokio::test]
async fn fault_endpoints_over_http_and_the_request_log() {
    let srv = server().await;
    let a = srv.addr();
    let c = srv.control_addr();
    assert_ne!(a, c);
    ok(a, "POST", CM, Some(cm("x", json!({})))).await;

    // The control listener serves only /_faults/ and keeps working while the API refuses connections.
    let (code, _) = call(c, "GET", CM, None).await;
    assert_eq!(code, 404);
    let (code, _, stats) = send(a, "POST", "/_faults/refuse-connections?enabled=true", None)
        .await
        .unwrap();
    assert_eq!(code, 200, "the asking connection gets its answer");
    assert_eq!(stats["faults"]["refuseConnections"], true);
    assert!(send(a, "GET", CM, None).await.is_err());
    let stats = ok(c, "POST", "/_faults/refuse-connections?enabled=false", None).await;
    assert_eq!(stats["faults"]["refuseConnections"], false);

    ok(c, "POST", "/_faults/stall?enabled=true", None).await;
    assert!(srv.stats()["faults"]["stalled"].as_bool().unwrap());
    ok(c, "POST", "/_faults/stall?enabled=false", None).await;
    let stats = ok(c, "POST", "/_faults/expire-next-watches?n=1", None).await;
    assert_eq!(stats["faults"]["expireNextWatches"], 1);
    let mut w = Watch::open(a, &format!("{CM}?watch=true")).await;
    assert_eq!(w.next().await.unwrap()["type"], "ERROR");
    ok(c, "POST", "/_faults/fail-watches-410?enabled=true", None).await;
    ok(c, "POST", "/_faults/reset", None).await;
    let before = srv.current_rv();
    let stats = ok(c, "POST", "/_faults/compact", None).await;
    assert_eq!(stats["compactedResourceVersion"], before.to_string());
    ok(c, "POST", "/_faults/bookmark-interval?ms=50", None).await;
    let mut w = Watch::open(
        a,
        &format!("{CM}?watch=true&resourceVersion={before}&allowWatchBookmarks=true"),
    )
    .await;
    assert_eq!(w.next().await.unwrap()["type"], "BOOKMARK");
    ok(c, "POST", "/_faults/close-watches", None).await;
    assert_eq!(w.next_change().await, None);
    ok(c, "POST", "/_faults/pause", None).await;
    assert!(TcpStream::connect(a).await.is_err());
    ok(c, "POST", "/_faults/resume", None).await;
    ok(a, "GET", CM, None).await;
    let (code, _) = call(c, "POST", "/_faults/nonsense", None).await;
    assert_eq!(code, 404);

    // The request log records method, path with query, user agent and status; /_faults/ is not logged.
    let log = ok(c, "GET", "/_faults/requests", None).await;
    let log = log.as_array().unwrap();
    assert!(log.iter().all(|r| !r["path"].as_str().unwrap().starts_with("/_faults")));
    let create = &log[0];
    assert_eq!(create["method"], "POST");
    assert_eq!(create["path"], CM);
    assert_eq!(create["userAgent"], "apiserver-test/1");
    assert_eq!(create["status"], 201);
    assert!(
        log.iter()
            .any(|r| r["watch"] == true && r["userAgent"] == "apiserver-test-watch/1")
    );
    let records = srv.requests();
    assert_eq!(records.len(), log.len());
    assert!(
        records
            .iter()
            .any(|r| r.watch && r.path.contains("allowWatchBookmarks=true"))
    );
    ok(c, "DELETE", "/_faults/requests", None).await;
    assert!(srv.requests().is_empty());
}

#[tokio::test]
async fn discovery_documents_and_version() {
    let srv = server().await;
    let a = srv.addr();
    let v = ok(a, "GET", "/version", None).await;
    assert_eq!(v["major"], "1");
    let api = ok(a, "GET", "/api", None).await;
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));
    let groups = ok(a, "GET", "/apis", None).await;
    assert_eq!(groups["kind"], "APIGroupList");
    let group_names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in ["networking.k8s.io", "discovery.k8s.io", "events.k8s.io"] {
        assert!(group_names.contains(&g), "{group_names:?}");
    }
    let res = ok(a, "GET", "/apis/networking.k8s.io/v1", None).await;
    assert_eq!(res["kind"], "APIResourceList");
    assert_eq!(res["groupVersion"], "networking.k8s.io/v1");
    let rs: Vec<(&str, bool)> = res["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["namespaced"].as_bool().unwrap()))
        .collect();
    assert!(rs.contains(&("ingresses", true)));
    assert!(rs.contains(&("ingresses/status", true)));
    assert!(rs.contains(&("ingressclasses", false)));
    let core = ok(a, "GET", "/api/v1", None).await;
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "endpoints")
    );
    // Cluster-scoped types live outside namespaces.
    ok(
        a,
        "POST",
        "/apis/networking.k8s.io/v1/ingressclasses",
        Some(json!({"metadata": {"name": "raftgate"}, "spec": {"controller": "raftgate.io/ingress"}})),
    )
    .await;
    let ic = ok(a, "GET", "/apis/networking.k8s.io/v1/ingressclasses/raftgate", None).await;
    assert!(ic["metadata"].get("namespace").is_none());
    let (code, _) = call(
        a,
        "GET",
        "/apis/networking.k8s.io/v1/namespaces/default/ingressclasses",
        None,
    )
    .await;
    assert_eq!(code, 404);
    ok(
        a,
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        Some(json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": []})),
    )
    .await;
    ok(
        a,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        Some(json!({"metadata": {"name": "e1"}, "reason": "Test"})),
    )
    .await;
    ok(
        a,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "team-a"}})),
    )
    .await;
    let ns = ok(a, "GET", "/api/v1/namespaces/team-a", None).await;
    assert_eq!(ns["status"]["phase"], "Active");
    let ok_text = ok(a, "GET", "/healthz", None).await;
    assert_eq!(ok_text, "ok");
}

#[tokio::test]
async fn rust_side_conveniences() {
    let srv = server().await;
    let created = srv.create(&ingress("r1")).unwrap();
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(srv.create(&ingress("r1")).unwrap_err().code(), Some(409));
    let mut changed = ingress("r1");
    changed["spec"]["ingressClassName"] = json!("changed");
    let applied = srv.apply(&changed).unwrap();
    assert_eq!(applied["spec"]["ingressClassName"], "changed");
    assert_eq!(applied["metadata"]["uid"], created["metadata"]["uid"]);
    let fresh = srv.apply(&ingress("r2")).unwrap();
    assert_eq!(fresh["metadata"]["generation"], 1);
    let stale = srv.replace(&created).unwrap_err();
    assert_eq!(stale.code(), Some(409));
    let listed = srv.list("networking.k8s.io/v1", "Ingress", None).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(srv.list("v1", "ConfigMap", Some("default")).unwrap().is_empty());
    let deleted = srv.delete("networking.k8s.io/v1", "Ingress", "default", "r1").unwrap();
    assert_eq!(rv(&deleted), srv.current_rv());
    assert_eq!(
        srv.get("networking.k8s.io/v1", "Ingress", "default", "r1")
            .unwrap_err()
            .code(),
        Some(404)
    );
    assert!(
        srv.create(&json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}}))
            .is_err()
    );
    let kc = srv.kubeconfig_yaml();
    assert!(kc.contains(&format!("server: {}", srv.url())));
}

mod kube_rs {
    //! A real kube-rs client and `watcher` against the test server.

    use std::collections::BTreeMap;
    use std::pin::Pin;

    use futures_util::Stream;
    use futures_util::StreamExt;
    use http::HeaderValue;
    use http::header::USER_AGENT;
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::Client;
    use kube::Config;
    use kube::api::Api;
    use kube::api::DeleteParams;
    use kube::api::ListParams;
    use kube::api::Patch;
    use kube::api::PatchParams;
    use kube::api::PostParams;
    use kube::config::KubeConfigOptions;
    use kube::config::Kubeconfig;
    use kube::runtime::watcher;
    use kube::runtime::watcher::Event;

    use super::*;

    const UA: &str = "raftgate-kube-test/1";

    async fn client(srv: &ApiServer) -> Client {
        let kc = Kubeconfig::from_yaml(&srv.kubeconfig_yaml()).unwrap();
        let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        assert_eq!(cfg.default_namespace, "default");
        cfg.headers.push((USER_AGENT, HeaderValue::from_static(UA)));
        Client::try_from(cfg).unwrap()
    }

    type EventStream = Pin<Box<dyn Stream<Item = Result<Event<Ingress>, watcher::Error>> + Send>>;

    /// What a reflector would hold, built from the watcher's events.
    struct Mirror {
        stream: EventStream,
        state: BTreeMap<String, Ingress>,
        buffer: Option<BTreeMap<String, Ingress>>,
        inits: usize,
        errors: Vec<String>,
    }

    impl Mirror {
        fn new(api: Api<Ingress>, config: watcher::Config) -> Self {
            Self {
                stream: Box::pin(watcher(api, config)),
                state: BTreeMap::new(),
                buffer: None,
                inits: 0,
                errors: Vec::new(),
            }
        }

        fn apply(&mut self, ev: Result<Event<Ingress>, watcher::Error>) {
            let key = |o: &Ingress| o.metadata.name.clone().unwrap();
            match ev {
                Ok(Event::Init) => {
                    self.inits += 1;
                    self.buffer = Some(BTreeMap::new());
                }
                Ok(Event::InitApply(o)) => {
                    self.buffer.as_mut().expect("InitApply inside Init").insert(key(&o), o);
                }
                Ok(Event::InitDone) => self.state = self.buffer.take().expect("InitDone after Init"),
                Ok(Event::Apply(o)) => {
                    self.state.insert(key(&o), o);
                }
                Ok(Event::Delete(o)) => {
                    self.state.remove(&key(&o));
                }
                Err(e) => self.errors.push(e.to_string()),
            }
        }

        /// Feeds events until `done` holds (10 s at most).
        async fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !done(self) {
                let ev = tokio::time::timeout_at(deadline, self.stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for {what}; errors: {:?}", self.errors))
                    .expect("the watcher stream does not end");
                self.apply(ev);
            }
        }

        fn synced(&self) -> bool {
            self.buffer.is_none() && self.inits > 0
        }

        /// (name, resourceVersion) of every object in the mirror.
        fn versions(&self) -> Vec<(String, String)> {
            self.state
                .iter()
                .map(|(k, o)| (k.clone(), o.metadata.resource_version.clone().unwrap()))
                .collect()
        }
    }

    fn server_versions(srv: &ApiServer) -> Vec<(String, String)> {
        srv.list("networking.k8s.io/v1", "Ingress", None)
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_string(),
                    o["metadata"]["resourceVersion"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn typed(name: &str) -> Ingress {
        serde_json::from_value(ingress(name)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_watcher_follows_changes_and_recovers_from_faults() {
        let srv = server().await;
        for n in ["a", "b", "c"] {
            srv.create(&ingress(n)).unwrap();
        }
        let client = client(&srv).await;
        let api: Api<Ingress> = Api::all(client.clone());
        let ns_api: Api<Ingress> = Api::namespaced(client, "default");
        let mut m = Mirror::new(api, watcher::Config::default().page_size(2));

        // Initial paginated list, then watch.
        m.until("initial sync", |m| m.synced()).await;
        assert_eq!(m.versions(), server_versions(&srv));
        // Create, update, delete through both kube-rs and the Rust API.
        let mut a = ns_api.get("a").await.unwrap();
        a.spec.as_mut().unwrap().ingress_class_name = Some("updated".into());
        let a = ns_api.replace("a", &PostParams::default(), &a).await.unwrap();
        ns_api.create(&PostParams::default(), &typed("d")).await.unwrap();
        srv.delete("networking.k8s.io/v1", "Ingress", "default", "b").unwrap();
        m.until("create/update/delete", |m| m.versions() == server_versions(&srv))
            .await;
        assert_eq!(
            m.state["a"].spec.as_ref().unwrap().ingress_class_name.as_deref(),
            Some("updated")
        );
        assert_eq!(m.state["a"].metadata.resource_version, a.metadata.resource_version);
        assert!(!m.state.contains_key("b"));
        let reqs = srv.requests();
        let lists: Vec<_> = reqs
            .iter()
            .filter(|r| !r.watch && r.path.starts_with("/apis/networking.k8s.io/v1/ingresses?"))
            .collect();
        assert_eq!(lists.len(), 2, "3 objects in pages of 2: {lists:?}");
        assert!(lists[0].path.contains("limit=2"));
        assert!(lists[1].path.contains("continue="));
        assert!(reqs.iter().all(|r| r.user_agent.as_deref() == Some(UA)));
        let watch_req = reqs.iter().find(|r| r.watch).unwrap();
        assert!(
            watch_req.path.contains("allowWatchBookmarks=true"),
            "{}",
            watch_req.path
        );

        // Status through the status subresource with a merge patch.
        srv.clear_requests();
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}});
        let patched = ns_api
            .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        let lb_ip = |i: &Ingress| {
            i.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|v| v[0].ip.clone())
        };
        assert_eq!(lb_ip(&patched).as_deref(), Some("192.0.2.7"));
        assert_eq!(patched.spec, a.spec);
        m.until("status change", |m| m.state.get("a").and_then(lb_ip).is_some())
            .await;
        let writes: Vec<_> = srv.requests().into_iter().filter(|r| r.method == "PATCH").collect();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].path,
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses/a/status?"
        );
        assert_eq!(writes[0].user_agent.as_deref(), Some(UA));

        // Closed watches: the watcher re-watches from its last resourceVersion without relisting.
        let watches = srv.total_watches();
        srv.close_watches();
        srv.create(&ingress("e")).unwrap();
        m.until("event after a closed watch", |m| m.state.contains_key("e"))
            .await;
        assert_eq!(m.inits, 1, "no relist after a clean close");
        assert!(srv.total_watches() > watches);

        // A forced 410: the watcher relists and ends with exactly the server's set.
        srv.expire_next_watches(1);
        srv.close_watches();
        srv.delete("networking.k8s.io/v1", "Ingress", "default", "c").unwrap();
        srv.create(&ingress("f")).unwrap();
        m.until("relist after 410", |m| {
            m.inits == 2 && m.synced() && m.versions() == server_versions(&srv)
        })
        .await;
        assert!(
            m.errors.iter().any(|e| e.contains("410") || e.contains("too old")),
            "{:?}",
            m.errors
        );

        // Disconnected while writes happen and history is compacted: 410 on re-watch, relist.
        srv.refuse_connections(true);
        srv.delete("networking.k8s.io/v1", "Ingress", "default", "d").unwrap();
        srv.create(&ingress("g")).unwrap();
        srv.patch(
            "networking.k8s.io/v1",
            "Ingress",
            "default",
            "e",
            &json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .unwrap();
        srv.compact();
        srv.refuse_connections(false);
        m.until("relist after compaction", |m| {
            m.inits == 3 && m.synced() && m.versions() == server_versions(&srv)
        })
        .await;
        let names: Vec<_> = m.state.keys().cloned().collect();
        assert_eq!(names, ["a", "e", "f", "g"]);
        assert_eq!(m.state["e"].metadata.labels.as_ref().unwrap()["x"], "y");
    }

    #[tokio::test]
    async fn kube_api_calls_behave_like_against_a_real_server() {
        let srv = server().await;
        let client = client(&srv).await;
        let api: Api<Ingress> = Api::namespaced(client.clone(), "team");
        let mut one = typed("one");
        one.metadata.namespace = None;
        one.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let created = api.create(&PostParams::default(), &one).await.unwrap();
        assert_eq!(created.metadata.namespace.as_deref(), Some("team"));
        assert!(created.metadata.uid.is_some());
        api.create(&PostParams::default(), &typed_in("two", "team"))
            .await
            .unwrap();

        let dup = api.create(&PostParams::default(), &one).await.unwrap_err();
        assert!(
            matches!(&dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
            "{dup:?}"
        );
        let missing = api.get("nope").await.unwrap_err();
        assert!(
            matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
            "{missing:?}"
        );
        assert!(api.get_opt("nope").await.unwrap().is_none());

        let mut stale = created.clone();
        api.patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
        stale.metadata.annotations = Some([("c".to_string(), "d".to_string())].into());
        let conflict = api.replace("one", &PostParams::default(), &stale).await.unwrap_err();
        assert!(
            matches!(&conflict, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
            "{conflict:?}"
        );

        let web = api.list(&ListParams::default().labels("app=web")).await.unwrap();
        assert_eq!(web.items.len(), 1);
        let by_name = api
            .list(&ListParams::default().fields("metadata.name=two"))
            .await
            .unwrap();
        assert_eq!(by_name.items[0].metadata.name.as_deref(), Some("two"));
        let page = api.list(&ListParams::default().limit(1)).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.metadata.continue_.is_some());
        let all: Api<Ingress> = Api::all(client);
        assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 2);

        api.delete("two", &DeleteParams::default()).await.unwrap();
        assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
    }

    #[tokio::test]
    async fn kube_watcher_with_streaming_lists() {
        let srv = server().await;
        srv.create(&ingress("s1")).unwrap();
        let api: Api<Ingress> = Api::namespaced(client(&srv).await, "default");
        let mut m = Mirror::new(api, watcher::Config::default().streaming_lists());
        m.until("initial events", |m| m.synced()).await;
        assert_eq!(m.versions(), server_versions(&srv));
        srv.create(&ingress("s2")).unwrap();
        m.until("a later event", |m| m.versions() == server_versions(&srv))
            .await;
        assert_eq!(m.inits, 1);
        let reqs = srv.requests();
        assert!(reqs.iter().all(|r| r.watch), "no list calls: {reqs:?}");
        assert!(reqs[0].path.contains("sendInitialEvents=true"));
    }

    fn typed_in(name: &str, ns: &str) -> Ingress {
        let mut i = typed(name);
        i.metadata.namespace = Some(ns.to_string());
        i
    }
}
