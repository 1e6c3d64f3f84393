//! `raftgate ctl routes` and `raftgate ctl check`, run as the real binary against a node on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::*;

/// Runs the binary with these arguments (off the runtime's worker threads).
async fn raftgate(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_raftgate"))
            .args(&args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn ctl(h: &Harness, args: &[&str]) -> (i32, String) {
    let mut all = vec!["ctl".to_string(), "--admin".into(), h.node.admin_addr.to_string()];
    all.extend(args.iter().map(ToString::to_string));
    let out = raftgate(all).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exited"), text)
}

async fn shop() -> (Harness, Echo) {
    let echo = Echo::start("web").await;
    let h = Harness::start().await;
    let mut m = service("shop", "web", &[&echo]);
    m += &ingress(
        "shop",
        "main",
        "shop.example.com",
        &[
            ("/", "Prefix", "web"),
            ("/api", "Prefix", "web"),
            ("/api", "Exact", "web"),
        ],
        "",
    );
    m += &ingress("shop", "wild", "*.example.com", &[("/", "Prefix", "web")], "");
    m += &ingress(
        "shop",
        "moved",
        "old.shop.test",
        &[("/", "Prefix", "web")],
        &ann(&[("permanent-redirect", "https://shop.example.com/")]),
    );
    h.apply("shop.yaml", &m).await;
    (h, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_lists_the_table_with_sources_and_the_default_backend() {
    let (h, _echo) = shop().await;
    let (code, out) = ctl(&h, &["routes"]).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("HOST") && lines[0].contains("SOURCE"), "{out}");
    let api = lines
        .iter()
        .find(|l| l.contains("/api") && l.contains("Exact"))
        .expect(&out);
    assert!(
        api.starts_with("shop.example.com") && api.contains("shop/web:http") && api.contains("shop/main"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("*.example.com") && l.contains("shop/wild")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("old.shop.test") && l.contains("redirect 301 https://shop.example.com/")),
        "{out}"
    );
    assert!(
        out.contains("default backend: none (unmatched requests get 404)"),
        "{out}"
    );

    let (code, out) = ctl(&h, &["routes", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["routes"].as_array().unwrap().len(), 5, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_host_explains_which_rule_a_url_hits() {
    let (h, _echo) = shop().await;
    // An exact host; Exact wins the tie with the Prefix of the same path.
    let (code, out) = ctl(&h, &["routes", "--host", "https://shop.example.com/api?q=1"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[exact host]"), "{out}");
    let winner = out.lines().find(|l| l.trim_start().starts_with("=>")).expect(&out);
    assert!(winner.contains("/api") && winner.contains("Exact"), "{out}");
    assert!(out.contains("Exact is checked first"), "{out}");
    assert!(
        out.contains("result: route shop.example.com /api -> shop/web:http (from shop/main)"),
        "{out}"
    );
    // The longest prefix, and why the shorter one lost.
    let (code, out) = ctl(&h, &["routes", "--host", "https://shop.example.com/api/v1/x?q=1"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("longest matching prefix"), "{out}");
    assert!(out.contains("lost: a longer prefix"), "{out}");
    // A wildcard takes one label.
    let (code, out) = ctl(&h, &["routes", "--host", "http://blog.example.com/"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[wildcard]") && out.contains("*.example.com"), "{out}");
    // A permanent redirect answers before the backend.
    let (code, out) = ctl(&h, &["routes", "--host", "old.shop.test/x"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("permanent-redirect: answers 301 with Location https://shop.example.com/"),
        "{out}"
    );
    // A miss: no virtual host, no default backend.
    let (code, out) = ctl(&h, &["routes", "--host", "http://a.b.example.com/"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");
    let (code, out) = ctl(&h, &["routes", "--host", "http://a.b.example.com/", "--json"]).await;
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"]["kind"], "not_found", "{v:#}");
    // A bad URL, and a node that is not there.
    let (code, out) = ctl(&h, &["routes", "--host", "ftp://shop.example.com/"]).await;
    assert_eq!(code, 2, "{out}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = raftgate(vec![
        "ctl".into(),
        "--admin".into(),
        closed.to_string(),
        "routes".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_broken_object_and_the_fix() {
    let echo = Echo::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let good =
        service("shop", "web", &[&echo]) + &ingress("shop", "main", "shop.example.com", &[("/", "Prefix", "web")], "");
    std::fs::write(dir.path().join("good.yaml"), &good).unwrap();
    let check = |d: &std::path::Path| {
        vec![
            "ctl".to_string(),
            "check".into(),
            "--manifests".into(),
            d.display().to_string(),
        ]
    };
    let out = raftgate(check(dir.path())).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 rejected, 0 warnings"), "{text}");

    let broken = ingress("shop", "broken", "b.example.com", &[("api", "Prefix", "web")], "");
    std::fs::write(dir.path().join("broken.yaml"), broken).unwrap();
    let out = raftgate(check(dir.path())).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().next().unwrap().starts_with("SEVERITY"), "{text}");
    let row = text.lines().find(|l| l.contains("Ingress shop/broken")).expect(&text);
    assert!(
        row.starts_with("rejected")
            && row.contains("must start with '/'")
            && row.contains("change the path to start with /"),
        "{text}"
    );

    // Warnings only: a Service that does not exist is served as 503, not rejected.
    let warn_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        warn_dir.path().join("w.yaml"),
        ingress("shop", "lost", "l.example.com", &[("/", "Prefix", "nowhere")], ""),
    )
    .unwrap();
    let out = raftgate(check(warn_dir.path())).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("create Service shop/nowhere"), "{text}");

    let mut missing = check(dir.path());
    missing[3] = dir.path().join("nope").display().to_string();
    assert_eq!(raftgate(missing).await.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_manifests_asks_the_node() {
    let (h, _echo) = shop().await;
    let (code, out) = ctl(&h, &["check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("asked: node test at"), "{out}");
    h.apply(
        "broken.yaml",
        &ingress("shop", "broken", "b.example.com", &[("/x", "Prefix", "nowhere")], ""),
    )
    .await;
    let (code, out) = ctl(&h, &["check", "--json"]).await;
    assert_eq!(code, 3, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["problems"][0];
    assert_eq!(p["object"], "shop/nowhere", "{v:#}");
    assert!(p["fix"].as_str().unwrap().contains("create Service"), "{v:#}");
}
