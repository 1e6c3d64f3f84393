//! A member without CAP_NET_ADMIN / CAP_NET_RAW refuses to own VIPs, says why, and keeps serving traffic.
//!
//! Not root: the process simply lacks the capabilities. Root (CI): it is started through
//! `setpriv` with both dropped from its bounding set, so it never touches this host's addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use common::{CapLessMember, Echo, get, ingress, service};
use raftgate::ctl::request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capabilities_a_member_refuses_vips_and_keeps_serving() {
    let Some(member) = CapLessMember::start("192.0.2.200") else {
        return;
    };
    let (http, admin, log) = (member.http, member.admin, &member.log);
    let echo = Echo::start("web").await;
    std::fs::write(
        member.manifests.join("web.yaml"),
        format!(
            "{}---\n{}",
            service("default", "web", &[&echo]),
            ingress("default", "web", "vip.test", &[("/", "Prefix", "web")], "")
        ),
    )
    .unwrap();

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
            std::fs::read_to_string(log).unwrap_or_default()
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
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(log_text.contains("will not own VIPs"), "{log_text}");
}
