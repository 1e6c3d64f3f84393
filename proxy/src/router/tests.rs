//! Tests of the Kubernetes host and path matching rules.

use super::*;
use crate::model::RoutePolicy;
use crate::model::VirtualHost;

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
