//! Traffic-shaping annotations end to end, through real sockets: canary (header, cookie,
//! weight), cookie session affinity, and `upstream-hash-by`. Echo upstreams name themselves
//! in `x-backend`, so each test sees which backend answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http::StatusCode;
use http_body_util::Full;
use raftgate_proxy::model::Endpoint;
use raftgate_proxy::upstream::endpoint_hash;
use raftgate_proxy::upstream::hash64;
use raftgate_proxy::upstream::rendezvous;

/// A GET with extra headers.
async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(addr, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// The value the response sets for cookie `name`, if it sets one.
fn set_cookie(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// Just the value of a `Set-Cookie` (`abc; Path=/` → `abc`).
fn value_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

fn hash_cookie(e: &Echo) -> String {
    format!("{:016x}", endpoint_hash(&Endpoint::Addr(e.addr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_then_cookie_then_weight() {
    let (stable, canary) = (Echo::start("stable").await, Echo::start("canary").await);
    let h = Harness::start().await;
    let m = service("c", "web", &[&stable])
        + &service("c", "web-canary", &[&canary])
        + &ingress("c", "main", "canary.com", &[("/", "Prefix", "web")], "")
        + &ingress(
            "c",
            "main-canary",
            "canary.com",
            &[("/", "Prefix", "web-canary")],
            &ann(&[
                ("canary", "true"),
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "use_canary"),
                ("canary-weight", "25"),
            ]),
        );
    h.apply("c.yaml", &m).await;
    let to = |headers: &'static [(&'static str, &'static str)]| {
        let addr = h.http();
        async move {
            get_with(addr, "canary.com", "/", headers)
                .await
                .backend()
                .map(str::to_string)
        }
    };
    for _ in 0..3 {
        assert_eq!(to(&[("x-canary", "always")]).await.as_deref(), Some("canary"));
        assert_eq!(
            to(&[("x-canary", "never"), ("cookie", "use_canary=always")])
                .await
                .as_deref(),
            Some("stable"),
            "the header decides before the cookie"
        );
        assert_eq!(
            to(&[("x-canary", "maybe"), ("cookie", "a=b; use_canary=always")])
                .await
                .as_deref(),
            Some("canary"),
            "another header value falls through to the cookie"
        );
        assert_eq!(to(&[("cookie", "use_canary=never")]).await.as_deref(), Some("stable"));
    }
    // The rest by weight: a deterministic round, so exactly 25 of every 100 requests that reach it.
    let mut n = 0;
    for _ in 0..200 {
        if to(&[("x-canary", "maybe")]).await.as_deref() == Some("canary") {
            n += 1;
        }
    }
    assert_eq!(n, 50, "canary-weight 25 sends 50 of 200 requests to the canary");
}

/// `affinity-canary-behavior`: with `sticky` (the default) a session stays on the backend that
/// issued its cookie, canary or main, whatever the weight draws, and ahead of the canary header;
/// with `legacy` the canary has no affinity of its own here, so only main sessions stick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_a_session_on_the_main_backend_or_its_canary() {
    let (stable, canary) = (Echo::start("stable").await, Echo::start("canary").await);
    let h = Harness::start().await;
    let main_ann = ann(&[("affinity", "cookie"), ("session-cookie-name", "route")]);
    let canary_ann = |behavior: &str| {
        ann(&[
            ("canary", "true"),
            ("canary-by-header", "x-canary"),
            ("canary-weight", "50"),
            ("affinity-canary-behavior", behavior),
        ])
    };
    let m = service("s", "web", &[&stable])
        + &service("s", "web-canary", &[&canary])
        + &ingress("s", "sticky", "sticky.com", &[("/", "Prefix", "web")], &main_ann)
        + &ingress(
            "s",
            "sticky-canary",
            "sticky.com",
            &[("/", "Prefix", "web-canary")],
            &canary_ann("sticky"),
        )
        + &ingress("s", "legacy", "legacy.com", &[("/", "Prefix", "web")], &main_ann)
        + &ingress(
            "s",
            "legacy-canary",
            "legacy.com",
            &[("/", "Prefix", "web-canary")],
            &canary_ann("legacy"),
        );
    h.apply("s.yaml", &m).await;
    // New sessions: the weight sends every other one to the canary; each gets a cookie
    // naming the backend that served it.
    let mut sessions: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..20 {
        let r = get_with(h.http(), "sticky.com", "/", &[]).await;
        let cookie = value_of(&set_cookie(&r, "route").expect("a new session gets a cookie"));
        sessions.insert(r.backend().unwrap().to_string(), cookie);
    }
    assert_eq!(sessions.len(), 2, "both backends served new sessions: {sessions:?}");
    assert_ne!(sessions["stable"], sessions["canary"]);
    for (backend, cookie) in &sessions {
        let with = format!("route={cookie}");
        for _ in 0..20 {
            let r = get_with(h.http(), "sticky.com", "/", &[("cookie", &with)]).await;
            assert_eq!(r.backend(), Some(backend.as_str()), "a {backend} session moved");
            assert_eq!(
                set_cookie(&r, "route"),
                None,
                "{backend}: the cookie already says it all"
            );
        }
    }
    // Affinity comes before the canary header, as in ingress-nginx.
    let main_session = format!("route={}", sessions["stable"]);
    let r = get_with(
        h.http(),
        "sticky.com",
        "/",
        &[("cookie", &main_session), ("x-canary", "always")],
    )
    .await;
    assert_eq!(r.backend(), Some("stable"));

    // legacy: the canary does not take the main affinity, so it never issues a cookie and
    // sessions it serves do not stick; a main session still does.
    let (mut to_canary, mut main_cookie) = (0, None);
    for _ in 0..20 {
        let r = get_with(h.http(), "legacy.com", "/", &[]).await;
        match r.backend() {
            Some("canary") => {
                to_canary += 1;
                assert_eq!(set_cookie(&r, "route"), None, "a legacy canary has no affinity here");
            }
            _ => main_cookie = set_cookie(&r, "route").map(|c| value_of(&c)),
        }
    }
    assert_eq!(
        to_canary, 10,
        "canary-weight 50 sends 10 of 20 new sessions to the canary"
    );
    let with = format!("route={}", main_cookie.expect("main sessions get cookies"));
    for _ in 0..20 {
        let r = get_with(h.http(), "legacy.com", "/", &[("cookie", &with)]).await;
        assert_eq!(r.backend(), Some("stable"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_value_and_pattern_and_a_canary_without_endpoints() {
    let (stable, canary) = (Echo::start("stable").await, Echo::start("canary").await);
    let h = Harness::start().await;
    let empty = "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: v}\nspec: {ports: [{name: http, port: 80}]}\n";
    let m = service("v", "web", &[&stable])
        + &service("v", "web-canary", &[&canary])
        + empty
        + &ingress("v", "a", "value.com", &[("/", "Prefix", "web")], "")
        + &ingress("v", "b", "pattern.com", &[("/", "Prefix", "web")], "")
        + &ingress("v", "c", "empty.com", &[("/", "Prefix", "web")], "")
        + &ingress(
            "v",
            "a-canary",
            "value.com",
            &[("/", "Prefix", "web-canary")],
            &ann(&[
                ("canary", "true"),
                ("canary-by-header", "x-env"),
                ("canary-by-header-value", "beta"),
            ]),
        )
        + &ingress(
            "v",
            "b-canary",
            "pattern.com",
            &[("/", "Prefix", "web-canary")],
            &ann(&[
                ("canary", "true"),
                ("canary-by-header", "x-env"),
                ("canary-by-header-pattern", "^(beta|rc)$"),
            ]),
        )
        + &ingress(
            "v",
            "c-canary",
            "empty.com",
            &[("/", "Prefix", "empty")],
            &ann(&[("canary", "true"), ("canary-weight", "100")]),
        );
    h.apply("v.yaml", &m).await;
    let backend = |host: &'static str, env: &'static str| {
        let addr = h.http();
        async move {
            get_with(addr, host, "/", &[("x-env", env)])
                .await
                .backend()
                .map(str::to_string)
        }
    };
    assert_eq!(backend("value.com", "beta").await.as_deref(), Some("canary"));
    assert_eq!(
        backend("value.com", "always").await.as_deref(),
        Some("stable"),
        "with a value, always means nothing"
    );
    assert_eq!(backend("pattern.com", "rc").await.as_deref(), Some("canary"));
    assert_eq!(backend("pattern.com", "beta2").await.as_deref(), Some("stable"));
    assert_eq!(
        backend("empty.com", "").await.as_deref(),
        Some("stable"),
        "a canary with no ready endpoints takes no traffic"
    );
    // A value that is not text decides nothing (and breaks nothing).
    let opaque = Request::get("/")
        .header("host", "pattern.com")
        .header("x-env", http::HeaderValue::from_bytes(b"rc\xff").unwrap())
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(h.http(), opaque).await.backend(), Some("stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_affinity_sticks_and_moves_when_the_endpoint_goes() {
    let echos = [Echo::start("a").await, Echo::start("b").await, Echo::start("c").await];
    let h = Harness::start().await;
    let manifest = |backends: &[&Echo]| {
        service("s", "web", backends)
            + &ingress(
                "s",
                "sticky",
                "sticky.com",
                &[("/app", "Prefix", "web")],
                &ann(&[
                    ("affinity", "cookie"),
                    ("session-cookie-name", "route"),
                    ("session-cookie-max-age", "3600"),
                    ("session-cookie-samesite", "Lax"),
                ]),
            )
    };
    h.apply("s.yaml", &manifest(&echos.iter().collect::<Vec<_>>())).await;

    let first = get(h.http(), "sticky.com", "/app/x").await;
    let issued = set_cookie(&first, "route").expect("a new session gets a cookie");
    assert!(issued.contains("; Path=/app"), "{issued}");
    assert!(issued.contains("; Max-Age=3600; Expires="), "{issued}");
    assert!(
        issued.contains("; SameSite=Lax") && issued.ends_with("; HttpOnly"),
        "{issued}"
    );
    let cookie = format!("route={}", value_of(&issued));
    let home = first.backend().unwrap().to_string();
    for _ in 0..10 {
        let r = get_with(h.http(), "sticky.com", "/app/y", &[("cookie", &cookie)]).await;
        assert_eq!(
            r.backend(),
            Some(home.as_str()),
            "the cookie keeps the session on one endpoint"
        );
        assert_eq!(set_cookie(&r, "route"), None, "a valid cookie is not sent again");
    }
    // Many new sessions spread over every endpoint.
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(get(h.http(), "sticky.com", "/app").await.backend().unwrap().to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // The session's endpoint goes away: it moves, then sticks to its new home.
    let rest: Vec<&Echo> = echos.iter().filter(|e| e.name != home).collect();
    h.apply("s.yaml", &manifest(&rest)).await;
    let r = get_with(h.http(), "sticky.com", "/app", &[("cookie", &cookie)]).await;
    let moved = r.backend().unwrap().to_string();
    assert_ne!(moved, home);
    // Balanced: the key re-hashes onto the endpoints left; no new cookie is needed.
    let cookie = set_cookie(&r, "route").map_or(cookie, |c| format!("route={}", value_of(&c)));
    for _ in 0..10 {
        let r = get_with(h.http(), "sticky.com", "/app", &[("cookie", &cookie)]).await;
        assert_eq!(r.backend(), Some(moved.as_str()));
    }
    // A forged value cannot pick an address: it is hashed onto the same endpoints.
    let r = get_with(h.http(), "sticky.com", "/app", &[("cookie", "route=0123456789abcdef")]).await;
    assert!(rest.iter().any(|e| Some(e.name.as_str()) == r.backend()));
    let r = get_with(h.http(), "sticky.com", "/app", &[("cookie", "route=../../etc")]).await;
    assert!(
        set_cookie(&r, "route").is_some(),
        "a malformed cookie starts a new session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_affinity_cookie_attributes_of_ingress_nginx() {
    let echo = Echo::start("a").await;
    let h = Harness::start().await;
    let m = service("s", "web", &[&echo])
        + &ingress(
            "s",
            "attrs",
            "attrs.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("affinity", "cookie"),
                ("session-cookie-expires", "600"),
                ("session-cookie-domain", ".attrs.com"),
                ("session-cookie-secure", "true"),
                ("session-cookie-samesite", "None"),
                ("session-cookie-conditional-samesite-none", "true"),
            ]),
        );
    h.apply("s.yaml", &m).await;
    let issued = |ua: &str| {
        let h = &h;
        let ua = ua.to_string();
        async move {
            let r = get_with(h.http(), "attrs.com", "/", &[("user-agent", &ua)]).await;
            set_cookie(&r, "INGRESSCOOKIE").expect("a new session gets a cookie")
        }
    };
    let modern = issued("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0").await;
    assert!(modern.contains("; Domain=attrs.com"), "{modern}");
    assert!(modern.contains("; Expires=") && !modern.contains("Max-Age"), "{modern}");
    assert!(
        modern.contains("; SameSite=None; Secure; HttpOnly"),
        "Secure on plain HTTP when session-cookie-secure says so: {modern}"
    );
    let ios12 =
        issued("Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148").await;
    assert!(
        !ios12.contains("SameSite") && ios12.ends_with("; Secure; HttpOnly"),
        "iOS 12 drops SameSite=None cookies, so it gets none: {ios12}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_affinity_names_the_endpoint_and_a_failed_one_is_replaced() {
    let live = Echo::start("live").await;
    let dead = Echo::start("dead").await;
    let dead_cookie = format!("route={}", hash_cookie(&dead));
    let h = Harness::start().await;
    let m = service("p", "web", &[&live, &dead])
        + &ingress(
            "p",
            "sticky",
            "persist.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("affinity", "cookie"),
                ("affinity-mode", "persistent"),
                ("session-cookie-name", "route"),
                ("session-cookie-change-on-failure", "true"),
            ]),
        );
    h.apply("p.yaml", &m).await;
    // The cookie of a persistent session is the hash of the endpoint's address. One without
    // its backend (as an earlier raftgate issued them) is honoured and re-issued with it, once.
    let r = get_with(
        h.http(),
        "persist.com",
        "/",
        &[("cookie", &format!("route={}", hash_cookie(&live)))],
    )
    .await;
    assert_eq!(r.backend(), Some("live"));
    let reissued = value_of(&set_cookie(&r, "route").expect("re-issued with its backend"));
    let (endpoint, backend) = reissued.split_once('.').unwrap();
    assert_eq!((endpoint, backend.len()), (hash_cookie(&live).as_str(), 8));
    let r = get_with(
        h.http(),
        "persist.com",
        "/",
        &[("cookie", &format!("route={reissued}"))],
    )
    .await;
    assert_eq!(r.backend(), Some("live"));
    assert_eq!(set_cookie(&r, "route"), None);

    // The session's endpoint stops answering: the request is retried on another endpoint,
    // and (`session-cookie-change-on-failure`) the cookie now names the one that answered.
    dead.stop().await;
    let r = get_with(h.http(), "persist.com", "/", &[("cookie", &dead_cookie)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), Some("live"));
    let moved = set_cookie(&r, "route").expect("the cookie moves with the session");
    assert_eq!(value_of(&moved), reissued, "the live endpoint, and the same backend");
    assert!(moved.contains("; Path=/;") || moved.contains("; Path=/ "), "{moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_balanced_session_falls_back_keeps_its_cookie_then_moves_once_ejected() {
    let live = Echo::start("live").await;
    let dead = Echo::start("dead").await;
    // A balanced cookie is a key: find one that hashes onto the endpoint about to fail.
    let eps = [
        endpoint_hash(&Endpoint::Addr(live.addr)),
        endpoint_hash(&Endpoint::Addr(dead.addr)),
    ];
    let key = (0u64..)
        .map(|i| hash64(&i.to_le_bytes()))
        .find(|k| rendezvous(*k, eps.iter().copied().enumerate()) == Some(1))
        .unwrap();
    let h = Harness::start().await;
    let m = service("f", "web", &[&live, &dead])
        + &ingress(
            "f",
            "sticky",
            "fail.com",
            &[("/", "Prefix", "web")],
            &ann(&[("affinity", "cookie")]),
        );
    h.apply("f.yaml", &m).await;
    dead.stop().await;
    let r = get_with(
        h.http(),
        "fail.com",
        "/",
        &[("cookie", &format!("INGRESSCOOKIE={key:016x}"))],
    )
    .await;
    assert_eq!(r.backend(), Some("live"));
    // Without `session-cookie-change-on-failure` the session keeps its key through the failed
    // attempt (the cookie is re-issued here only to add the backend it names).
    let kept = value_of(&set_cookie(&r, "INGRESSCOOKIE").expect("re-issued with its backend"));
    assert_eq!(kept.split('.').next(), Some(format!("{key:016x}").as_str()));
    // That failure ejected the endpoint (passive health): now the session moves.
    let r = get_with(
        h.http(),
        "fail.com",
        "/",
        &[("cookie", &format!("INGRESSCOOKIE={kept}"))],
    )
    .await;
    assert_eq!(r.backend(), Some("live"));
    let new = value_of(&set_cookie(&r, "INGRESSCOOKIE").expect("re-issued"));
    assert_ne!(new, format!("{key:016x}"));
    let new_key = u64::from_str_radix(new.split('.').next().unwrap(), 16).unwrap();
    assert_eq!(
        rendezvous(new_key, eps.iter().copied().enumerate()),
        Some(0),
        "the new key means the endpoint that answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_subset_spreads_each_key_over_its_subset() {
    let echos = [
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
        Echo::start("d").await,
        Echo::start("e").await,
    ];
    let h = Harness::start().await;
    let m = service("h", "web", &echos.iter().collect::<Vec<_>>())
        + &ingress(
            "h",
            "subset",
            "subset.com",
            &[("/", "Prefix", "web")],
            &ann(&[
                ("upstream-hash-by", "$request_uri"),
                ("upstream-hash-by-subset", "true"),
                ("upstream-hash-by-subset-size", "2"),
            ]),
        );
    h.apply("h.yaml", &m).await;
    let mut subsets = BTreeSet::new();
    for key in ["/k1", "/k2", "/k3", "/k4", "/k5", "/k6"] {
        let mut served = BTreeSet::new();
        for _ in 0..40 {
            served.insert(get(h.http(), "subset.com", key).await.backend().unwrap().to_string());
        }
        assert_eq!(served.len(), 2, "{key} is served by its two endpoints: {served:?}");
        subsets.insert(served);
    }
    assert!(subsets.len() > 1, "keys have subsets of their own: {subsets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_keeps_each_key_on_one_backend() {
    let echos = [Echo::start("a").await, Echo::start("b").await, Echo::start("c").await];
    let h = Harness::start().await;
    let manifest = |backends: &[&Echo]| {
        service("h", "web", backends)
            + &ingress(
                "h",
                "hashed",
                "hash.com",
                &[("/", "Prefix", "web")],
                &ann(&[("upstream-hash-by", "$http_x_user")]),
            )
    };
    h.apply("h.yaml", &manifest(&echos.iter().collect::<Vec<_>>())).await;
    let user = |u: String| {
        let addr = h.http();
        async move {
            get_with(addr, "hash.com", "/", &[("x-user", &u)])
                .await
                .backend()
                .unwrap()
                .to_string()
        }
    };
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..30 {
        let u = format!("user-{i}");
        let b = user(u.clone()).await;
        for _ in 0..3 {
            assert_eq!(user(u.clone()).await, b, "{u} moved");
        }
        home.insert(u, b);
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "30 keys use every endpoint: {home:?}");
    // Without the header the key is empty: round robin instead of one hot endpoint.
    let mut spread = BTreeSet::new();
    for _ in 0..3 {
        spread.insert(get(h.http(), "hash.com", "/").await.backend().unwrap().to_string());
    }
    assert_eq!(spread.len(), 3);

    // One endpoint goes: only its keys move.
    let gone = "c";
    let rest: Vec<&Echo> = echos.iter().filter(|e| e.name != gone).collect();
    h.apply("h.yaml", &manifest(&rest)).await;
    for (u, b) in &home {
        let now = user(u.clone()).await;
        if b != gone {
            assert_eq!(&now, b, "{u} was on {b}, which is still there");
        } else {
            assert_ne!(now, gone);
        }
    }
}
