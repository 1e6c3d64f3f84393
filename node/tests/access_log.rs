//! The access log: one structured line per request, only when enabled. A test binary of its
//! own, because it installs a global log subscriber.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;

use common::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_the_request_id() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("raftgate::access=info")
        .with_writer(move || writer.clone())
        .init();

    let web = Echo::start("web").await;
    let h = Harness::start_with(|c| c.defaults.access_log = true).await;
    h.apply(
        "a.yaml",
        &(service("a", "web", &[&web]) + &ingress("a", "web", "logged.com", &[("/", "Prefix", "web")], "")),
    )
    .await;
    let r = get(h.http(), "logged.com", "/hello?x=1").await;
    let id = r.json()["headers"]["x-request-id"].as_str().unwrap().to_string();
    assert_eq!(get(h.http(), "logged.com", "/hello").await.status, http::StatusCode::OK);
    // The line is written when the response body ends; wait for both.
    let lines = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|v: &serde_json::Value| v["fields"]["host"] == "logged.com")
                .collect();
            if lines.len() >= 2 {
                return lines;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("two access log lines");
    let f = &lines[0]["fields"];
    assert_eq!(lines[0]["target"], "raftgate::access");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/hello");
    assert_eq!(f["status"], 200);
    assert_eq!(f["request_id"], id.as_str());
    assert_eq!(f["upstream"], "a/web:http");
    assert_eq!(f["endpoint"], web.addr.to_string());
    assert!(f["duration_ms"].as_f64().is_some());
}
