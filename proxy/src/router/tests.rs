//! Tests of the Kubernetes host and path matching rules.

use super::*;
use crate::model::RoutePolicy;
use crate::model::VirtualHost;
use crate::router::explain::Candidate;
use crate::router::explain::Explanation;
use crate::router::explain::Outcome;

fn route(path: PathMatch, upstream: &str) -> Route {
    Route {
        path,
        backend: Backend {
            upstream: upstream.into(),
        },
        policy: RoutePolicy::default(),
        source: "t/t".into(),
        canary: None,
    }
}

fn table(hosts: &[(&str, Vec<Route>)]) -> RoutingTable {
    let mut t = RoutingTable::default();
    for (h, routes) in hosts {
        t.vhosts.insert(
            (*h).into(),
            VirtualHost {
                routes: routes.clone(),
                default_backend: None,
                tls: false,
            },
        );
    }
    t
}

fn hit(r: &Router, host: &str, path: &str) -> Option<String> {
    match r.lookup(host, path) {
        Lookup::Route(e) => Some(e.route.backend.upstream.clone()),
        Lookup::Default { backend, .. } => Some(format!("default:{}", backend.upstream)),
        Lookup::NotFound => None,
    }
}

/// The table from the Kubernetes Ingress documentation ("Examples" under path types).
#[test]
fn kubernetes_path_examples() {
    let cases: &[(PathMatch, &str, bool)] = &[
        (PathMatch::Prefix("/".into()), "/anything", true),
        (PathMatch::Exact("/foo".into()), "/foo", true),
        (PathMatch::Exact("/foo".into()), "/bar", false),
        (PathMatch::Exact("/foo".into()), "/foo/", false),
        (PathMatch::Exact("/foo/".into()), "/foo", false),
        (PathMatch::Prefix("/foo".into()), "/foo", true),
        (PathMatch::Prefix("/foo".into()), "/foo/", true),
        (PathMatch::Prefix("/foo/".into()), "/foo", true),
        (PathMatch::Prefix("/foo/".into()), "/foo/", true),
        (PathMatch::Prefix("/aaa/bb".into()), "/aaa/bbb", false),
        (PathMatch::Prefix("/aaa/bbb".into()), "/aaa/bbb", true),
        (PathMatch::Prefix("/aaa/bbb/".into()), "/aaa/bbb", true),
        (PathMatch::Prefix("/aaa/bbb".into()), "/aaa/bbb/", true),
        (PathMatch::Prefix("/aaa/bbb".into()), "/aaa/bbb/ccc", true),
        (PathMatch::Prefix("/aaa/bbb".into()), "/aaa/bbbxyz", false),
        (PathMatch::Prefix("/aaa".into()), "/aaaccc", false),
        (PathMatch::Exact("/FOO".into()), "/foo", false),
    ];
    for (m, path, want) in cases {
        let r = Router::new(&table(&[("a.com", vec![route(m.clone(), "u")])])).unwrap();
        assert_eq!(hit(&r, "a.com", path).is_some(), *want, "{m:?} vs {path}");
    }
}

#[test]
fn longest_match_wins_and_exact_beats_prefix_on_a_tie() {
    let r = Router::new(&table(&[(
        "a.com",
        vec![
            route(PathMatch::Prefix("/".into()), "root"),
            route(PathMatch::Prefix("/aaa".into()), "aaa"),
            route(PathMatch::Prefix("/aaa/bbb".into()), "bbb"),
            route(PathMatch::Prefix("/exact".into()), "prefix"),
            route(PathMatch::Exact("/exact".into()), "exact"),
        ],
    )]))
    .unwrap();
    assert_eq!(hit(&r, "a.com", "/aaa/bbb/c").as_deref(), Some("bbb"));
    assert_eq!(hit(&r, "a.com", "/aaa/b").as_deref(), Some("aaa"));
    assert_eq!(hit(&r, "a.com", "/zzz").as_deref(), Some("root"));
    assert_eq!(hit(&r, "a.com", "/exact").as_deref(), Some("exact"));
    assert_eq!(hit(&r, "a.com", "/exact/x").as_deref(), Some("prefix"));
}

#[test]
fn hosts_match_case_insensitively_without_port_and_wildcards_take_one_label() {
    let r = Router::new(&table(&[
        ("foo.com", vec![route(PathMatch::Prefix("/".into()), "apex")]),
        ("*.foo.com", vec![route(PathMatch::Prefix("/".into()), "wild")]),
        ("exact.foo.com", vec![route(PathMatch::Prefix("/".into()), "exact")]),
    ]))
    .unwrap();
    assert_eq!(hit(&r, "FOO.com:8080", "/").as_deref(), Some("apex"));
    assert_eq!(hit(&r, "foo.com.", "/").as_deref(), Some("apex"));
    assert_eq!(hit(&r, "bar.foo.com", "/").as_deref(), Some("wild"));
    assert_eq!(hit(&r, "Exact.Foo.Com", "/").as_deref(), Some("exact"));
    assert_eq!(hit(&r, "a.bar.foo.com", "/"), None);
    assert_eq!(hit(&r, ".foo.com", "/"), None);
    assert_eq!(hit(&r, "other.com", "/"), None);
}

#[test]
fn rules_without_host_catch_other_hosts_only() {
    let r = Router::new(&table(&[
        ("a.com", vec![route(PathMatch::Prefix("/x".into()), "a")]),
        (ANY_HOST, vec![route(PathMatch::Prefix("/".into()), "any")]),
    ]))
    .unwrap();
    assert_eq!(hit(&r, "zzz.org", "/q").as_deref(), Some("any"));
    assert_eq!(hit(&r, "10.0.0.1:80", "/q").as_deref(), Some("any"));
    // A host with its own server does not fall through to the any-host paths (as in nginx).
    assert_eq!(hit(&r, "a.com", "/q"), None);
    assert_eq!(hit(&r, "a.com", "/x/y").as_deref(), Some("a"));
}

#[test]
fn default_backends_host_first_then_global() {
    let mut t = table(&[
        ("a.com", vec![route(PathMatch::Prefix("/x".into()), "a")]),
        ("b.com", vec![]),
    ]);
    t.vhosts.get_mut("a.com").unwrap().default_backend = Some(Backend {
        upstream: "a-def".into(),
    });
    let r = Router::new(&t).unwrap();
    assert_eq!(hit(&r, "a.com", "/nope").as_deref(), Some("default:a-def"));
    assert_eq!(hit(&r, "b.com", "/nope"), None);
    t.default_backend = Some(Backend {
        upstream: "global".into(),
    });
    let r = Router::new(&t).unwrap();
    assert_eq!(hit(&r, "b.com", "/nope").as_deref(), Some("default:global"));
    assert_eq!(hit(&r, "unknown.com", "/").as_deref(), Some("default:global"));
    assert_eq!(hit(&r, "a.com", "/nope").as_deref(), Some("default:a-def"));
}

#[test]
fn regex_routes_are_anchored_case_insensitive_and_ranked_by_length() {
    let r = Router::new(&table(&[(
        "a.com",
        vec![
            route(PathMatch::Prefix("/api".into()), "prefix"),
            route(PathMatch::Regex("/api/v[0-9]+/users".into()), "users"),
            route(PathMatch::Regex("/s".into()), "short"),
        ],
    )]))
    .unwrap();
    assert_eq!(hit(&r, "a.com", "/API/V2/users/7").as_deref(), Some("users"));
    assert_eq!(hit(&r, "a.com", "/api/other").as_deref(), Some("prefix"));
    assert_eq!(hit(&r, "a.com", "/x/api/v1/users"), None);
    assert_eq!(hit(&r, "a.com", "/static").as_deref(), Some("short"));
}

#[test]
fn the_first_route_wins_a_duplicate_path() {
    let r = Router::new(&table(&[(
        "a.com",
        vec![
            route(PathMatch::Prefix("/p".into()), "old"),
            route(PathMatch::Prefix("/p/".into()), "new"),
        ],
    )]))
    .unwrap();
    assert_eq!(hit(&r, "a.com", "/p").as_deref(), Some("old"));
    assert_eq!(r.routes().len(), 1);
}

#[test]
fn paths_are_normalised_before_matching() {
    assert_eq!(normalize_path("/a/b"), "/a/b");
    assert!(matches!(normalize_path("/a/b"), Cow::Borrowed(_)));
    assert_eq!(normalize_path("/a//b"), "/a/b");
    assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
    assert_eq!(normalize_path("/%61dmin"), "/admin");
    assert_eq!(normalize_path("/../../etc"), "/etc");
    assert_eq!(normalize_path("/a/"), "/a/");
    assert_eq!(normalize_path("/a/.."), "/");
    assert_eq!(normalize_path(""), "/");
    assert_eq!(normalize_path("/%zz"), "/%zz");
    assert_eq!(normalize_path("/%"), "/%");
    let r = Router::new(&table(&[(
        "a.com",
        vec![route(PathMatch::Exact("/admin".into()), "admin")],
    )]))
    .unwrap();
    assert_eq!(hit(&r, "a.com", "/%61dmin").as_deref(), Some("admin"));
    assert_eq!(hit(&r, "a.com", "//admin").as_deref(), Some("admin"));
}

#[test]
fn hosts_are_normalised() {
    assert_eq!(normalize_host("Foo.COM:443"), "foo.com");
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert_eq!(normalize_host("a.b."), "a.b");
    assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
}

#[test]
fn an_invalid_regex_is_an_error_not_a_panic() {
    let t = table(&[("a.com", vec![route(PathMatch::Regex("/(".into()), "u")])]);
    assert!(matches!(Router::new(&t), Err(RouterError::Regex { .. })));
}

proptest::proptest! {
    /// Prefix matching by hash probes agrees with the element-wise definition.
    #[test]
    fn prefix_probe_matches_the_definition(prefix in "(/[ab]{0,2}){1,3}/?", path in "(/[ab]{0,2}){1,4}/?") {
        let r = Router::new(&table(&[("h", vec![route(PathMatch::Prefix(prefix.clone()), "u")])])).unwrap();
        let key = prefix_key(&prefix);
        let norm = normalize_path(&path);
        let want = key.is_empty() || norm.as_ref() == key || norm.starts_with(&format!("{key}/"));
        proptest::prop_assert_eq!(hit(&r, "h", &path).is_some(), want);
    }
}

fn tls_table() -> RoutingTable {
    let mut t = table(&[
        (
            "shop.example.com",
            vec![
                route(PathMatch::Prefix("/".into()), "root"),
                route(PathMatch::Prefix("/api".into()), "api"),
                route(PathMatch::Exact("/api".into()), "api-exact"),
                route(PathMatch::Regex("/api/v[0-9]+/users".into()), "users"),
                route(PathMatch::Prefix("/api/".into()), "dup"),
            ],
        ),
        ("*.example.com", vec![route(PathMatch::Prefix("/".into()), "wild")]),
        (ANY_HOST, vec![route(PathMatch::Prefix("/any".into()), "any")]),
    ]);
    t.vhosts.get_mut("shop.example.com").unwrap().tls = true;
    t
}

fn won(x: &Explanation) -> Option<&Candidate> {
    x.candidates.iter().find(|c| c.won)
}

#[test]
fn explain_names_the_host_match() {
    let r = Router::new(&tls_table()).unwrap();
    let x = r.explain("Shop.Example.com:443", "/", true);
    assert_eq!(x.host_match, HostMatch::Exact);
    assert_eq!(x.vhost.as_deref(), Some("shop.example.com"));
    let x = r.explain("blog.example.com", "/", true);
    assert_eq!(x.host_match, HostMatch::Wildcard);
    assert!(
        x.host_reason.contains("*.example.com") && x.host_reason.contains("blog"),
        "{}",
        x.host_reason
    );
    let x = r.explain("a.b.example.com", "/any/x", true);
    assert_eq!(x.host_match, HostMatch::AnyHost, "a wildcard takes one label only");
    assert!(matches!(x.outcome, Outcome::Route { ref backend, .. } if backend == "any"));
    let r = Router::new(&table(&[("a.com", vec![route(PathMatch::Prefix("/".into()), "a")])])).unwrap();
    let x = r.explain("b.com", "/", true);
    assert_eq!(x.host_match, HostMatch::None);
    assert!(matches!(x.outcome, Outcome::NotFound));
    assert!(x.candidates.is_empty() && x.route.is_none());
}

#[test]
fn explain_says_why_the_winner_won() {
    let r = Router::new(&tls_table()).unwrap();
    // Exact beats the equally long Prefix.
    let x = r.explain("shop.example.com", "/api", true);
    assert_eq!(won(&x).unwrap().backend, "api-exact");
    assert!(x.path_reason.contains("Exact"), "{}", x.path_reason);
    let lost = x.candidates.iter().find(|c| c.backend == "api").unwrap();
    assert!(
        lost.matched && !lost.won && lost.reason.contains("Exact"),
        "{}",
        lost.reason
    );
    // The longest prefix wins; the shorter one matched and says why it lost.
    let x = r.explain("shop.example.com", "/api/x", true);
    assert_eq!(won(&x).unwrap().backend, "api");
    assert!(x.path_reason.contains("longest matching prefix"), "{}", x.path_reason);
    let root = x.candidates.iter().find(|c| c.backend == "root").unwrap();
    assert!(root.matched && root.reason.contains("longer prefix"), "{}", root.reason);
    // A regex longer than the best prefix wins.
    let x = r.explain("shop.example.com", "/api/V2/users/7", true);
    assert_eq!(won(&x).unwrap().backend, "users");
    assert!(
        x.path_reason.contains("regex") && x.path_reason.contains("(4 chars)"),
        "{}",
        x.path_reason
    );
    // A regex that does not match is listed as such.
    let x = r.explain("shop.example.com", "/other", true);
    let re = x.candidates.iter().find(|c| c.backend == "users").unwrap();
    assert!(!re.matched && re.reason.contains("does not match"), "{}", re.reason);
    // The duplicate path is listed as ignored.
    assert!(
        x.candidates
            .iter()
            .any(|c| c.route.is_none() && c.reason.contains("older route"))
    );
}

#[test]
fn explain_reports_redirects_and_defaults() {
    let mut t = tls_table();
    t.vhosts.get_mut("shop.example.com").unwrap().routes[1]
        .policy
        .allow_source = vec!["10.0.0.0/8".into()];
    t.vhosts.get_mut("shop.example.com").unwrap().routes[0].policy.app_root = Some("/app".into());
    let r = Router::new(&t).unwrap();
    let x = r.explain("shop.example.com", "/api/x?q=1", false);
    assert_eq!(x.effects.len(), 1, "{:?}", x.effects);
    assert!(x.effects[0].answers && x.effects[0].what == "ssl-redirect" && x.effects[0].detail.contains("308"));
    let x = r.explain("shop.example.com", "/api/x", true);
    assert!(
        x.effects
            .iter()
            .any(|e| e.what == "allowlist-source-range" && e.detail.contains("10.0.0.0/8"))
    );
    assert_eq!(x.effects.last().unwrap().what, "proxy");
    let x = r.explain("shop.example.com", "/", true);
    assert!(
        x.effects
            .iter()
            .any(|e| e.what == "app-root" && e.answers && e.detail.contains("/app"))
    );
    // A path no rule matches: the host's default backend, else the global one.
    let x = r.explain("blog.example.com", "/", true);
    assert!(matches!(x.outcome, Outcome::Route { .. }));
    let x = r.explain("zzz.org", "/nope", true);
    assert!(matches!(x.outcome, Outcome::NotFound));
    t.default_backend = Some(Backend {
        upstream: "global".into(),
    });
    let r = Router::new(&t).unwrap();
    let x = r.explain("zzz.org", "/nope", true);
    assert!(matches!(x.outcome, Outcome::DefaultBackend { ref backend, scope: "global" } if backend == "global"));
}

fn arb_path_match() -> impl proptest::strategy::Strategy<Value = PathMatch> {
    use proptest::prelude::*;
    prop_oneof![
        "(/[ab]{0,2}){1,3}/?".prop_map(PathMatch::Exact),
        "(/[ab]{0,2}){1,3}/?".prop_map(PathMatch::Prefix),
        "/[ab]{0,2}(\\[ab\\]\\+|/[ab]|\\.\\*){0,2}".prop_map(PathMatch::Regex),
    ]
}

proptest::proptest! {
    /// `explain` and `lookup` agree on the route for generated tables and requests, and the
    /// winner is the one candidate marked as won and matched.
    #[test]
    fn explain_agrees_with_lookup(
        hosts in proptest::collection::vec(
            (proptest::sample::select(vec!["a.x", "*.x", "b.a.x", "*"]), proptest::collection::vec(arb_path_match(), 0..5)),
            1..4,
        ),
        host in proptest::sample::select(vec!["a.x", "A.X:80", "b.x", "b.a.x", "c.b.a.x", "y"]),
        path in "(/[ab.%2]{0,3}){0,4}/?",
        https in proptest::bool::ANY,
    ) {
        let mut t = RoutingTable::default();
        for (h, paths) in &hosts {
            let routes = paths.iter().enumerate().map(|(i, p)| route(p.clone(), &format!("{h}{i}"))).collect();
            t.vhosts.insert((*h).into(), VirtualHost { routes, default_backend: None, tls: false });
        }
        let r = Router::new(&t).unwrap();
        let want = match r.lookup(host, &path) {
            Lookup::Route(e) => Some(e.id),
            _ => None,
        };
        let x = r.explain(host, &path, https);
        proptest::prop_assert_eq!(x.route, want);
        let winners: Vec<_> = x.candidates.iter().filter(|c| c.won).collect();
        proptest::prop_assert_eq!(winners.len(), usize::from(want.is_some()));
        if let Some(w) = winners.first() {
            proptest::prop_assert!(w.matched);
            proptest::prop_assert_eq!(w.route, want);
        }
        // Every candidate that matched is either the winner or says why it lost.
        for c in x.candidates.iter().filter(|c| c.matched && !c.won) {
            proptest::prop_assert!(c.reason.contains("lost"), "{:?}", c);
        }
        // Each candidate's `matched` agrees with the lookup of a table holding that rule alone.
        for c in x.candidates.iter().filter(|c| c.route.is_some()) {
            let alone = Router::new(&table(&[("h", vec![route(c.path.clone(), "u")])])).unwrap();
            proptest::prop_assert_eq!(c.matched, hit(&alone, "h", &path).is_some(), "{:?}", c);
        }
        if want.is_none() && x.vhost.is_some() {
            proptest::prop_assert!(x.candidates.iter().all(|c| !c.matched), "{:?}", x);
        }
    }
}
