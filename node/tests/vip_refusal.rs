//! A member without CAP_NET_ADMIN / CAP_NET_RAW refuses to own VIPs, says why, and keeps serving traffic.
//!
//! Not root: the process simply lacks the capabilities. Root (CI): it is started through
//! `setpriv` with both dropped from its bounding set, so it never touches this host's addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, get, ingress, service};
use raftgate::ctl::request;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capabilities_a_member_refuses_vips_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let echo = Echo::start("web").await;
    std::fs::write(
        manifests.join("web.yaml"),
        format!(
            "{}---\n{}",
            service("default", "web", &[&echo]),
            ingress("default", "web", "vip.test", &[("/", "Prefix", "web")], "")
        ),
    )
    .unwrap();
    let (http, https, admin, raft) = (free_addr(), free_addr(), free_addr(), free_addr());
    let config = dir.path().join("n1.yaml");
    // A documentation-range VIP: even a mistake could not reach a real network.
    std::fs::write(
        &config,
        format!(
            "node_id: n1\nlisten: {{http: \"{http}\", https: \"{https}\"}}\nadmin: {{listen: \"{admin}\"}}\n\
             source: {{kind: manifests, path: {}, poll_interval: 50ms}}\n\
             raft: {{id: 1, listen: \"{raft}\", data_dir: {}, insecure: true}}\n\
             vip:\n  addresses: [{{addr: 192.0.2.200, prefix: 24, interface: lo}}]\n",
            manifests.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_raftgate");
    let mut cmd = if is_root() {
        if Command::new("setpriv").arg("--help").output().is_err() {
            println!("skipped: running as root, and setpriv (util-linux) is needed to drop the capabilities");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-net_admin,-net_raw", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let log = dir.path().join("n1.log");
    let child = cmd
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);

    let deadline = Instant::now() + Duration::from_secs(20);
    let view = loop {
        if let Ok(v) = request(admin, http::Method::GET, "/api/v1/vips", None).await
            && v["refused"].is_string()
            && get(http, "vip.test", "/").await.status == 200
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal or no traffic: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = view["refused"].as_str().unwrap();
    assert!(
        reason.contains("CAP_NET_ADMIN") && reason.contains("CAP_NET_RAW"),
        "{reason}"
    );
    let metrics = request(admin, http::Method::GET, "/metrics", None).await.unwrap();
    assert!(
        metrics.as_str().unwrap().contains("raftgate_vip_refused 1"),
        "{metrics}"
    );
    // It reports not ready, so the leader (itself, in a one-member group) gives nobody the VIP.
    let vips = view["vips"].as_array().unwrap();
    assert!(
        vips.iter()
            .all(|v| v["held"].is_null() && v["state"]["state"] != "owned"),
        "{view}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("will not own VIPs"), "{log_text}");
}
