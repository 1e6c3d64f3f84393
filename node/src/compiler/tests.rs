//! Compiler tests: every rule of the Ingress spec we implement, and bad input.

use super::*;

fn objects(yaml: &str) -> Objects {
    let mut o = Objects::default();
    for obj in crate::objects::parse(yaml).unwrap() {
        assert!(o.insert(obj.unwrap()));
    }
    o
}

fn compiler(class: &str) -> Compiler {
    Compiler::new(Options {
        class: class.into(),
        watch_without_class: false,
        defaults: RouteDefaults::default(),
        ..Options::default()
    })
}

fn compile(yaml: &str) -> Output {
    compiler("nginx").compile(&objects(yaml))
}

fn svc(name: &str, ip: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: app}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-abc, namespace: app, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{ip}]
  conditions: {{ready: true}}
- addresses: [10.9.9.9]
  conditions: {{ready: false}}
"#
    )
}

fn ingress(name: &str, created: &str, body: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: app, creationTimestamp: "{created}"}}
spec:
  ingressClassName: nginx
{body}"#
    )
}

fn rule(host: &str, path: &str, path_type: &str, service: &str) -> String {
    format!(
        r#"  rules:
  - host: {host}
    http:
      paths:
      - {{path: "{path}", pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}
"#
    )
}

fn rejected(out: &Output) -> Vec<String> {
    out.problems
        .iter()
        .filter(|p| p.severity == Severity::Rejected)
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn a_simple_ingress_compiles_to_a_host_route_and_ready_endpoints() {
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &ingress(
                "web",
                "2024-01-01T00:00:00Z",
                &rule("shop.example.com", "/", "Prefix", "web"),
            )),
    );
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let vh = &out.table.vhosts["shop.example.com"];
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(vh.routes[0].path, PathMatch::Prefix("/".into()));
    assert_eq!(vh.routes[0].source, "app/web");
    let up = &out.table.upstreams[&vh.routes[0].backend.upstream];
    assert_eq!(
        up.endpoints,
        vec![Endpoint::Addr("10.0.0.1:8080".parse().unwrap())],
        "not-ready endpoints are left out"
    );
}

#[test]
fn other_classes_are_ignored_and_the_legacy_annotation_counts() {
    let other = r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: app}
spec:
  ingressClassName: traefik
  rules: [{host: a.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: legacy, namespace: app, annotations: {kubernetes.io/ingress.class: nginx}}
spec:
  rules: [{host: b.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: classless, namespace: app}
spec:
  rules: [{host: c.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"#;
    let out = compile(&(svc("web", "10.0.0.1") + other));
    let hosts: Vec<_> = out.table.vhosts.keys().cloned().collect();
    assert_eq!(hosts, vec!["b.com"]);
}

#[test]
fn a_default_ingress_class_takes_class_less_ingresses() {
    let yaml = svc("web", "10.0.0.1")
        + r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx, annotations: {ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {controller: raftgate.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: classless, namespace: app}
spec:
  rules: [{host: c.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"#;
    assert!(compile(&yaml).table.vhosts.contains_key("c.com"));
    let mut c = compiler("other");
    assert!(c.compile(&objects(&yaml)).table.vhosts.is_empty());
    let mut c = Compiler::new(Options {
        class: "other".into(),
        watch_without_class: true,
        defaults: RouteDefaults::default(),
        ..Options::default()
    });
    assert!(c.compile(&objects(&yaml)).table.vhosts.contains_key("c.com"));
}

#[test]
fn the_oldest_ingress_wins_a_duplicate_host_and_path() {
    let yaml = svc("old", "10.0.0.1")
        + &svc("new", "10.0.0.2")
        + &ingress(
            "newer",
            "2024-06-01T00:00:00Z",
            &rule("a.com", "/api/", "Prefix", "new"),
        )
        + &ingress("older", "2023-01-01T00:00:00Z", &rule("a.com", "/api", "Prefix", "old"));
    let out = compile(&yaml);
    let routes = &out.table.vhosts["a.com"].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].source, "app/older");
    let w: Vec<_> = out.problems.iter().filter(|p| p.object == "app/newer").collect();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].reason.contains("already served by Ingress app/older"),
        "{}",
        w[0].reason
    );
    // Exact and Prefix on the same path are not duplicates.
    let yaml = svc("a", "10.0.0.1")
        + &ingress("e", "2024-06-01T00:00:00Z", &rule("a.com", "/x", "Exact", "a"))
        + &ingress("p", "2023-01-01T00:00:00Z", &rule("a.com", "/x", "Prefix", "a"));
    assert_eq!(compile(&yaml).table.vhosts["a.com"].routes.len(), 2);
}

#[test]
fn an_invalid_regex_rejects_only_that_ingress() {
    let bad = ingress(
        "bad",
        "2024-01-01T00:00:00Z",
        &rule("bad.com", "/(unclosed", "ImplementationSpecific", "web"),
    )
    .replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/use-regex: \"true\"},",
    );
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &bad
            + &ingress("good", "2024-01-01T00:00:00Z", &rule("good.com", "/", "Prefix", "web"))),
    );
    assert!(out.table.vhosts.contains_key("good.com"));
    assert!(!out.table.vhosts.contains_key("bad.com"));
    let r = rejected(&out);
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("app/bad") && r[0].contains("invalid regex"), "{r:?}");
}

#[test]
fn use_regex_makes_implementation_specific_paths_regexes() {
    let ing = ingress(
        "re",
        "2024-01-01T00:00:00Z",
        &rule("a.com", "/api/v[0-9]+", "ImplementationSpecific", "web"),
    )
    .replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/use-regex: \"true\"},",
    );
    let out = compile(&(svc("web", "10.0.0.1") + &ing));
    assert_eq!(
        out.table.vhosts["a.com"].routes[0].path,
        PathMatch::Regex("/api/v[0-9]+".into())
    );
    let plain = ingress(
        "p",
        "2024-01-01T00:00:00Z",
        &rule("a.com", "/api", "ImplementationSpecific", "web"),
    );
    assert_eq!(
        compile(&(svc("web", "10.0.0.1") + &plain)).table.vhosts["a.com"].routes[0].path,
        PathMatch::Prefix("/api".into())
    );
}

#[test]
fn a_missing_service_or_port_serves_503_with_a_warning() {
    let out = compile(&ingress(
        "i",
        "2024-01-01T00:00:00Z",
        &rule("a.com", "/", "Prefix", "ghost"),
    ));
    assert!(rejected(&out).is_empty());
    let up = &out.table.upstreams[&out.table.vhosts["a.com"].routes[0].backend.upstream];
    assert!(up.endpoints.is_empty());
    assert!(
        out.problems
            .iter()
            .any(|p| p.kind == "Service" && p.reason.contains("not found")),
        "{:?}",
        out.problems
    );

    let wrong_port = ingress(
        "i",
        "2024-01-01T00:00:00Z",
        &rule("a.com", "/", "Prefix", "web").replace("number: 80", "number: 81"),
    );
    let out = compile(&(svc("web", "10.0.0.1") + &wrong_port));
    assert!(
        out.problems.iter().any(|p| p.reason.contains("port 81 not found")),
        "{:?}",
        out.problems
    );
}

#[test]
fn service_ports_resolve_by_name_too() {
    let by_name = rule("a.com", "/", "Prefix", "web").replace("{number: 80}", "{name: http}");
    let out = compile(&(svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &by_name)));
    let up = &out.table.upstreams["app/web:http"];
    assert_eq!(up.endpoints.len(), 1);
}

#[test]
fn manual_endpoints_back_a_selector_less_service() {
    // The pattern from the field notes: a headless Service plus hand-written Endpoints for a host outside the cluster.
    let yaml = r#"
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-mysql, namespace: app}
subsets:
- addresses: [{ip: 192.0.2.10}]
  ports: [{port: 3306, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: external-mysql, namespace: app}
spec:
  clusterIP: None
  type: ClusterIP
  ports: [{port: 7306, protocol: TCP, targetPort: 3306}]
"#
    .to_string()
        + &ingress(
            "i",
            "2024-01-01T00:00:00Z",
            &rule("db.com", "/", "Prefix", "external-mysql").replace("number: 80", "number: 7306"),
        );
    let out = compile(&yaml);
    let up = &out.table.upstreams["app/external-mysql:7306"];
    assert_eq!(up.endpoints, vec![Endpoint::Addr("192.0.2.10:3306".parse().unwrap())]);
}

#[test]
fn external_name_services_resolve_by_dns() {
    let yaml = r#"
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: app}
spec: {type: ExternalName, externalName: api.example.org., ports: [{port: 80}]}
"#
    .to_string()
        + &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "ext"));
    let out = compile(&yaml);
    assert_eq!(
        out.table.upstreams["app/ext:80"].endpoints,
        vec![Endpoint::Dns {
            host: "api.example.org".into(),
            port: 80
        }]
    );
}

#[test]
fn bad_hosts_and_paths_are_rejected_with_reasons() {
    for (host, path, ty, needle) in [
        ("UPPER.com", "/", "Prefix", "lower-case"),
        ("a.*.com", "/", "Prefix", "lower-case"),
        ("10.0.0.1", "/", "Prefix", "not an IP"),
        ("a.com", "relative", "Prefix", "start with '/'"),
        ("a.com", "/a//b", "Exact", "\"//\""),
        ("a.com", "/a/../b", "Prefix", "\"/../\""),
        ("a.com", "/", "Fuzzy", "not one of"),
        ("a.com", "/", "\"\"", "pathType is required"),
    ] {
        let out =
            compile(&(svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &rule(host, path, ty, "web"))));
        let r = rejected(&out);
        assert_eq!(r.len(), 1, "{host} {path} {ty}");
        assert!(r[0].contains(needle), "{host} {path}: {}", r[0]);
    }
}

#[test]
fn an_invalid_annotation_rejects_the_ingress_and_snippets_are_ignored() {
    let ing = ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")).replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/proxy-body-size: huge},",
    );
    let r = rejected(&compile(&(svc("web", "10.0.0.1") + &ing)));
    assert!(r[0].contains("proxy-body-size") && r[0].contains("huge"), "{r:?}");

    let ing = ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")).replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/configuration-snippet: \"more_set_headers x;\"},",
    );
    let out = compile(&(svc("web", "10.0.0.1") + &ing));
    assert!(out.table.vhosts.contains_key("a.com"));
    assert!(out.problems.iter().any(|p| p.reason.contains("never executed")));
}

#[test]
fn annotations_set_the_route_policy() {
    let ing = ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")).replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/proxy-body-size: \"0\", nginx.ingress.kubernetes.io/proxy-read-timeout: \"3600\", nginx.ingress.kubernetes.io/backend-protocol: GRPC},",
    );
    let out = compile(&(svc("web", "10.0.0.1") + &ing));
    let r = &out.table.vhosts["a.com"].routes[0];
    assert_eq!(r.policy.max_body_bytes, None);
    assert_eq!(r.policy.read_timeout_ms, 3_600_000);
    assert_eq!(out.table.upstreams[&r.backend.upstream].protocol, Protocol::H2c);
    assert_eq!(r.backend.upstream, "app/web:80|h2c");
}

fn tls_secret(name: &str, hosts: &[&str]) -> String {
    let (cert, key) = raftgate_proxy::tls::self_signed(hosts).unwrap();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: app}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(&cert),
        indent(&key)
    )
}

#[test]
fn tls_hosts_get_certificates_and_redirects() {
    let tls =
        rule("a.com", "/", "Prefix", "web") + "  tls:\n  - hosts: [a.com, \"*.wild.com\"]\n    secretName: cert\n";
    let yaml = svc("web", "10.0.0.1")
        + &tls_secret("cert", &["a.com", "*.wild.com"])
        + &ingress("i", "2024-01-01T00:00:00Z", &tls)
        + &ingress("j", "2024-02-01T00:00:00Z", &rule("x.wild.com", "/", "Prefix", "web"));
    let out = compile(&yaml);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert!(out.table.vhosts["a.com"].tls);
    assert!(out.table.vhosts["x.wild.com"].tls, "covered by the wildcard TLS host");
    assert_eq!(out.table.sni["a.com"], "app/cert");
    assert_eq!(out.table.sni["*.wild.com"], "app/cert");
    assert!(out.table.certificates.contains_key("app/cert"));
}

#[test]
fn missing_or_malformed_secrets_fall_back_to_the_default_certificate() {
    let tls = rule("a.com", "/", "Prefix", "web") + "  tls:\n  - hosts: [a.com]\n    secretName: nope\n";
    let out = compile(&(svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &tls)));
    assert!(
        out.table.vhosts["a.com"].tls,
        "still redirects, like ingress-nginx with its fake certificate"
    );
    assert!(out.table.sni.is_empty());
    assert!(
        out.problems
            .iter()
            .any(|p| p.kind == "Secret" && p.reason.contains("not found"))
    );

    let garbage = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: app}\ntype: kubernetes.io/tls\nstringData: {tls.crt: garbage, tls.key: garbage}\n";
    let tls = rule("a.com", "/", "Prefix", "web") + "  tls:\n  - hosts: [a.com]\n    secretName: bad\n";
    let out = compile(&(svc("web", "10.0.0.1") + garbage + &ingress("i", "2024-01-01T00:00:00Z", &tls)));
    assert!(out.table.certificates.is_empty());
    assert!(
        out.problems
            .iter()
            .any(|p| p.kind == "Secret" && p.reason.contains("tls.crt")),
        "{:?}",
        out.problems
    );
}

#[test]
fn default_backends_per_host_and_global() {
    let only_default = r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: catchall, namespace: app}
spec:
  ingressClassName: nginx
  defaultBackend: {service: {name: web, port: {number: 80}}}
"#;
    let with_rules = ingress("r", "2024-01-01T00:00:00Z", &rule("a.com", "/x", "Prefix", "web")).replace(
        "  rules:",
        "  defaultBackend: {service: {name: other, port: {number: 80}}}\n  rules:",
    );
    let out = compile(&(svc("web", "10.0.0.1") + &svc("other", "10.0.0.2") + only_default + &with_rules));
    assert_eq!(
        out.table.default_backend,
        Some(Backend {
            upstream: "app/web:80".into()
        })
    );
    assert_eq!(
        out.table.vhosts["a.com"].default_backend,
        Some(Backend {
            upstream: "app/other:80".into()
        })
    );

    let empty = "\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: e, namespace: app}\nspec: {ingressClassName: nginx}\n";
    assert!(rejected(&compile(empty))[0].contains("neither rules nor a defaultBackend"));
}

#[test]
fn rules_without_a_host_go_to_the_any_host_vhost() {
    let r = rule("x", "/nacos", "Prefix", "web")
        .replace("  - host: x\n", "  - ")
        .replace("    http:", "http:");
    let out = compile(&(svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &r)));
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert!(out.table.vhosts.contains_key(ANY_HOST));
}

#[test]
fn a_broken_update_keeps_the_last_valid_version_serving() {
    let mut c = compiler("nginx");
    let good = svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web"));
    let first = c.compile(&objects(&good));
    let broken = good
        .replace("pathType: Prefix", "pathType: Exact")
        .replace("path: \"/\"", "path: \"no-slash\"");
    let out = c.compile(&objects(&broken));
    assert_eq!(out.table, first.table, "the last valid version still serves");
    assert!(rejected(&out)[0].contains("still serving its last valid version"));
    // Deleting it removes it, and it does not come back.
    let out = c.compile(&objects(&svc("web", "10.0.0.1")));
    assert!(out.table.vhosts.is_empty());
    let out = c.compile(&objects(&broken));
    assert!(out.table.vhosts.is_empty());
}

#[test]
fn compilation_is_deterministic_whatever_the_insertion_order() {
    let parts = [
        svc("web", "10.0.0.1"),
        ingress("a", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
        ingress("b", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
    ];
    let mut fwd = Objects::default();
    let mut rev = Objects::default();
    for p in parts.iter() {
        for o in crate::objects::parse(p).unwrap() {
            fwd.insert(o.unwrap());
        }
    }
    for p in parts.iter().rev() {
        for o in crate::objects::parse(p).unwrap() {
            rev.insert(o.unwrap());
        }
    }
    let a = compiler("nginx").compile(&fwd);
    let b = compiler("nginx").compile(&rev);
    assert_eq!(a.table, b.table);
    // Same timestamp: namespace/name breaks the tie, so "a" wins.
    assert_eq!(a.table.vhosts["a.com"].routes[0].source, "app/a");
}

fn with_annotations(ing: &str, annotations: &str) -> String {
    ing.replace(
        "namespace: app,",
        &format!("namespace: app, annotations: {{{annotations}}},"),
    )
}

#[test]
fn tcp_and_udp_services_config_maps_become_l4_services() {
    let cm = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: tcp-services, namespace: ingress-nginx}
data:
  "7306": "app/web:80"
  "1883": "app/web:http:PROXY"
  "2000": "app/web:80::PROXY"
  "80": "app/web:80"
  "notaport": "app/web:80"
  "3000": "web:80"
  "3001": "app/web:80:SOCKS"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: udp-services, namespace: ingress-nginx}
data: {"53": "app/web:80"}
"#;
    let mut c = Compiler::new(Options {
        class: "nginx".into(),
        tcp_services: Some("ingress-nginx/tcp-services".into()),
        udp_services: Some("ingress-nginx/udp-services".into()),
        reserved_ports: vec![80],
        ..Options::default()
    });
    let out = c.compile(&objects(&(svc("web", "10.0.0.1") + cm)));
    let l4 = &out.table.l4;
    assert_eq!(l4["tcp/7306"].upstream, "app/web:80");
    assert!(!l4["tcp/7306"].proxy_protocol_in);
    assert!(l4["tcp/1883"].proxy_protocol_in && !l4["tcp/1883"].proxy_protocol_out);
    assert!(!l4["tcp/2000"].proxy_protocol_in && l4["tcp/2000"].proxy_protocol_out);
    assert_eq!(l4["udp/53"].protocol, L4Protocol::Udp);
    assert_eq!(l4["tcp/7306"].source, "ingress-nginx/tcp-services:7306");
    // The port name resolves like an Ingress backend's.
    assert_eq!(
        out.table.upstreams["app/web:http"].endpoints,
        vec![Endpoint::Addr("10.0.0.1:8080".parse().unwrap())]
    );
    let r = rejected(&out);
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(
        r.iter()
            .any(|p| p.contains("\"80\"") && p.contains("raftgate's own listeners"))
    );
    assert!(r.iter().any(|p| p.contains("\"notaport\"")));
    assert!(
        r.iter()
            .any(|p| p.contains("\"3000\"") && p.contains("<namespace>/<service>"))
    );
    assert!(r.iter().any(|p| p.contains("\"3001\"") && p.contains("SOCKS")));
}

#[test]
fn redirect_rewrite_and_access_annotations_reach_the_policy() {
    let ing = with_annotations(
        &ingress(
            "i",
            "2024-01-01T00:00:00Z",
            &rule("a.com", "/api(/|$)(.*)", "ImplementationSpecific", "web"),
        ),
        r#"nginx.ingress.kubernetes.io/rewrite-target: "/$2", nginx.ingress.kubernetes.io/app-root: /corp, nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8", nginx.ingress.kubernetes.io/limit-rps: "2", nginx.ingress.kubernetes.io/enable-cors: "true", nginx.ingress.kubernetes.io/x-forwarded-prefix: /api"#,
    );
    let out = compile(&(svc("web", "10.0.0.1") + &ing));
    assert!(rejected(&out).is_empty(), "{:?}", out.problems);
    let r = &out.table.vhosts["a.com"].routes[0];
    assert_eq!(
        r.path,
        PathMatch::Regex("/api(/|$)(.*)".into()),
        "rewrite-target makes the path a regex"
    );
    assert_eq!(r.policy.rewrite_target.as_deref(), Some("/$2"));
    assert_eq!(r.policy.app_root.as_deref(), Some("/corp"));
    assert_eq!(r.policy.allow_source, vec!["10.0.0.0/8".to_string()]);
    let limit = r.policy.limit.as_ref().unwrap();
    assert_eq!((limit.rps, limit.burst_multiplier, limit.status), (Some(2), 5, 503));
    assert_eq!(r.policy.cors.as_ref().unwrap().allow_origin, vec!["*".to_string()]);
    assert_eq!(r.policy.forwarded_prefix.as_deref(), Some("/api"));
}

#[test]
fn basic_auth_needs_a_usable_secret_and_fails_closed() {
    // {SHA} of "pass".
    let secret = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: basic, namespace: app}\nstringData: {auth: \"alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\"}\n";
    let auth = r#"nginx.ingress.kubernetes.io/auth-type: basic, nginx.ingress.kubernetes.io/auth-secret: basic, nginx.ingress.kubernetes.io/auth-realm: "Staff only""#;
    let ing = with_annotations(
        &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
        auth,
    );
    let out = compile(&(svc("web", "10.0.0.1") + secret + &ing));
    let a = out.table.vhosts["a.com"].routes[0].policy.basic_auth.clone().unwrap();
    assert_eq!(a.realm, "Staff only");
    assert!(a.htpasswd.starts_with("alice:"));

    let out = compile(&(svc("web", "10.0.0.1") + &ing));
    assert!(out.table.vhosts.is_empty(), "no Secret: not served at all");
    assert!(rejected(&out)[0].contains("auth-secret app/basic: Secret not found"));

    let map = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: basic, namespace: app}\nstringData: {alice: \"{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\"}\n";
    let ing_map = with_annotations(
        &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
        &format!("{auth}, nginx.ingress.kubernetes.io/auth-secret-type: auth-map"),
    );
    let out = compile(&(svc("web", "10.0.0.1") + map + &ing_map));
    assert!(
        out.table.vhosts["a.com"].routes[0].policy.basic_auth.is_some(),
        "{:?}",
        out.problems
    );
}

#[test]
fn server_aliases_serve_the_same_routes_unless_a_rule_owns_the_host() {
    let ing = with_annotations(
        &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
        r#"nginx.ingress.kubernetes.io/server-alias: "www.a.com, b.com""#,
    );
    let out = compile(
        &(svc("web", "10.0.0.1") + &ing + &ingress("j", "2024-02-01T00:00:00Z", &rule("b.com", "/", "Prefix", "web"))),
    );
    assert_eq!(out.table.vhosts["www.a.com"].routes[0].source, "app/i");
    assert_eq!(
        out.table.vhosts["b.com"].routes[0].source, "app/j",
        "a real rule host wins over an alias"
    );
    assert!(
        out.problems
            .iter()
            .any(|p| p.reason.contains("server-alias b.com ignored"))
    );
}

#[test]
fn service_upstream_and_default_backend_annotations() {
    let yaml = svc("web", "10.0.0.1").replace("spec: {ports:", "spec: {clusterIP: 10.96.0.7, ports:")
        + &svc("fallback", "10.0.0.2")
        + &with_annotations(
            &ingress("i", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web")),
            r#"nginx.ingress.kubernetes.io/service-upstream: "true", nginx.ingress.kubernetes.io/default-backend: fallback"#,
        );
    let out = compile(&yaml);
    let r = &out.table.vhosts["a.com"].routes[0];
    assert_eq!(r.backend.upstream, "app/web:80|cluster-ip");
    assert_eq!(
        out.table.upstreams["app/web:80|cluster-ip"].endpoints,
        vec![Endpoint::Addr("10.96.0.7:80".parse().unwrap())]
    );
    let fb = r.policy.fallback.as_ref().unwrap();
    assert_eq!(
        out.table.upstreams[&fb.upstream].endpoints,
        vec![Endpoint::Addr("10.0.0.2:8080".parse().unwrap())]
    );
}

/// An Ingress with annotations, `nginx.ingress.kubernetes.io/` prefixed.
fn annotated(name: &str, created: &str, body: &str, pairs: &[(&str, &str)]) -> String {
    let list: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: \"{v}\""))
        .collect();
    with_annotations(&ingress(name, created, body), &list.join(", "))
}

fn warnings(out: &Output) -> Vec<String> {
    out.problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn a_canary_attaches_to_the_main_route_and_is_not_served_itself() {
    let yaml = svc("web", "10.0.0.1")
        + &svc("web-canary", "10.0.0.2")
        + &ingress("main", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web"))
        // Older than the main Ingress: a canary still never claims the path.
        + &annotated(
            "canary",
            "2023-01-01T00:00:00Z",
            &rule("a.com", "/", "Prefix", "web-canary"),
            &[("canary", "true"), ("canary-by-header", "X-Canary"), ("canary-by-cookie", "c"), ("canary-weight", "20")],
        );
    let out = compile(&yaml);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let routes = &out.table.vhosts["a.com"].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].source, "app/main");
    assert_eq!(routes[0].backend.upstream, "app/web:80");
    let c = routes[0].canary.as_ref().unwrap();
    assert_eq!(c.backend.upstream, "app/web-canary:80");
    assert_eq!(
        c.header,
        Some(raftgate_proxy::model::CanaryHeader {
            name: "x-canary".into(),
            matches: raftgate_proxy::model::HeaderMatch::AlwaysNever,
        })
    );
    assert_eq!((c.cookie.as_deref(), c.weight, c.weight_total), (Some("c"), 20, 100));
    assert_eq!(c.source, "app/canary");
    assert_eq!(
        out.table.upstreams["app/web-canary:80"].endpoints,
        vec![Endpoint::Addr("10.0.0.2:8080".parse().unwrap())]
    );
    // Without its canary the table is the same but for the canary: diff stays small.
    let without = compile(
        &(svc("web", "10.0.0.1")
            + &svc("web-canary", "10.0.0.2")
            + &ingress("main", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web"))),
    );
    let deltas = raftgate_proxy::model::diff(&without.table, &out.table);
    assert_eq!(deltas.len(), 2, "{deltas:?}");
}

#[test]
fn a_canary_without_a_main_route_is_a_warning_and_a_second_canary_loses() {
    let canary = |name: &str, created: &str, host: &str, weight: &str| {
        annotated(
            name,
            created,
            &rule(host, "/", "Prefix", "web-canary"),
            &[("canary", "true"), ("canary-weight", weight)],
        )
    };
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &svc("web-canary", "10.0.0.2")
            + &ingress("main", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web"))
            + &canary("orphan", "2024-01-02T00:00:00Z", "b.com", "10")
            + &canary("first", "2024-01-03T00:00:00Z", "a.com", "10")
            + &canary("second", "2024-01-04T00:00:00Z", "a.com", "50")),
    );
    assert!(rejected(&out).is_empty(), "{:?}", out.problems);
    assert!(!out.table.vhosts.contains_key("b.com"), "a canary makes no route");
    let c = out.table.vhosts["a.com"].routes[0].canary.as_ref().unwrap();
    assert_eq!((c.source.as_str(), c.weight), ("app/first", 10));
    let w = warnings(&out);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter()
            .any(|p| p.contains("app/orphan") && p.contains("no main (non-canary) Ingress"))
    );
    assert!(
        w.iter()
            .any(|p| p.contains("app/second") && p.contains("app/first (older) is its canary"))
    );
}

#[test]
fn a_canary_speaks_the_main_protocol_but_balances_its_own_way() {
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &svc("web-canary", "10.0.0.2")
            + &annotated(
                "main",
                "2024-01-01T00:00:00Z",
                &rule("a.com", "/api", "Prefix", "web"),
                &[("backend-protocol", "GRPC"), ("server-alias", "www.a.com")],
            )
            + &annotated(
                "canary",
                "2024-01-02T00:00:00Z",
                &rule("a.com", "/api/", "ImplementationSpecific", "web-canary"),
                &[
                    ("canary", "true"),
                    ("canary-weight", "5"),
                    ("load-balance", "ewma"),
                    ("affinity", "cookie"),
                    ("affinity-canary-behavior", "legacy"),
                    ("upstream-hash-by", "$remote_addr"),
                ],
            )),
    );
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let r = &out.table.vhosts["a.com"].routes[0];
    let c = r.canary.as_ref().unwrap();
    assert_eq!(c.backend.upstream, "app/web-canary:80|h2c|ewma");
    assert_eq!(out.table.upstreams[&c.backend.upstream].protocol, Protocol::H2c);
    assert_eq!(c.affinity.as_ref().unwrap().path, "/api/");
    assert_eq!(
        c.hash_by.as_ref().unwrap().parts,
        vec![raftgate_proxy::model::HashPart::RemoteAddr]
    );
    assert_eq!(r.policy.affinity, None, "the main backend keeps its own selection");
    assert_eq!(
        out.table.vhosts["www.a.com"].routes[0].canary.as_ref(),
        Some(c),
        "a server-alias serves the same canary"
    );
}

#[test]
fn a_sticky_canary_takes_the_main_affinity_and_a_legacy_one_keeps_its_own() {
    let objects = |behavior: &str| {
        svc("web", "10.0.0.1")
            + &svc("web-canary", "10.0.0.2")
            + &annotated(
                "main",
                "2024-01-01T00:00:00Z",
                &rule("a.com", "/", "Prefix", "web"),
                &[("affinity", "cookie"), ("session-cookie-name", "route")],
            )
            + &annotated(
                "canary",
                "2024-01-02T00:00:00Z",
                &rule("a.com", "/", "Prefix", "web-canary"),
                &[
                    ("canary", "true"),
                    ("canary-weight", "50"),
                    ("affinity", "cookie"),
                    ("session-cookie-name", "own"),
                    ("affinity-canary-behavior", behavior),
                ],
            )
    };
    let out = compile(&objects("sticky"));
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let r = &out.table.vhosts["a.com"].routes[0];
    let main = r.policy.affinity.as_ref().unwrap();
    assert_eq!(main.cookie, "route");
    assert_eq!(r.canary.as_ref().unwrap().affinity.as_ref(), Some(main));
    let out = compile(&objects("legacy"));
    let r = &out.table.vhosts["a.com"].routes[0];
    assert_eq!(r.canary.as_ref().unwrap().affinity.as_ref().unwrap().cookie, "own");
    // Sticky is the default.
    let out = compile(&objects("sticky").replace(
        "nginx.ingress.kubernetes.io/affinity-canary-behavior: \"sticky\"",
        "x: y",
    ));
    let r = &out.table.vhosts["a.com"].routes[0];
    assert_eq!(r.canary.as_ref().unwrap().affinity.as_ref().unwrap().cookie, "route");
}

#[test]
fn an_invalid_canary_is_rejected_alone() {
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &svc("web-canary", "10.0.0.2")
            + &ingress("main", "2024-01-01T00:00:00Z", &rule("a.com", "/", "Prefix", "web"))
            + &annotated(
                "canary",
                "2024-01-02T00:00:00Z",
                &rule("a.com", "/", "Prefix", "web-canary"),
                &[("canary", "true"), ("canary-weight", "120")],
            )),
    );
    let r = rejected(&out);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("app/canary") && r[0].contains("canary-weight") && r[0].contains("\"120\""),
        "{}",
        r[0]
    );
    assert!(out.table.vhosts["a.com"].routes[0].canary.is_none());
    assert_eq!(out.table.vhosts["a.com"].routes[0].source, "app/main");
}

#[test]
fn affinity_and_hash_by_reach_each_routes_policy() {
    let body = r#"  rules:
  - host: a.com
    http:
      paths:
      - {path: /shop, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /cart, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
"#;
    let out = compile(
        &(svc("web", "10.0.0.1")
            + &annotated(
                "i",
                "2024-01-01T00:00:00Z",
                body,
                &[("affinity", "cookie"), ("session-cookie-samesite", "Strict")],
            )
            + &annotated(
                "h",
                "2024-01-02T00:00:00Z",
                &rule("b.com", "/", "Prefix", "web"),
                &[("upstream-hash-by", "$http_x_user$host")],
            )),
    );
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let routes = &out.table.vhosts["a.com"].routes;
    let paths: Vec<_> = routes
        .iter()
        .map(|r| r.policy.affinity.as_ref().unwrap().path.as_str())
        .collect();
    assert_eq!(
        paths,
        vec!["/shop", "/cart"],
        "the cookie path defaults to the route's path"
    );
    let a = routes[0].policy.affinity.as_ref().unwrap();
    assert_eq!(
        (a.cookie.as_str(), a.attributes.same_site, a.mode),
        (
            "INGRESSCOOKIE",
            Some(raftgate_proxy::model::SameSite::Strict),
            raftgate_proxy::model::AffinityMode::Balanced
        )
    );
    let h = out.table.vhosts["b.com"].routes[0].policy.hash_by.as_ref().unwrap();
    assert_eq!(
        h.parts,
        vec![
            raftgate_proxy::model::HashPart::Header("x-user".into()),
            raftgate_proxy::model::HashPart::Host
        ]
    );
    // Both routes share one upstream: the keys are per route, the endpoints per Service.
    assert_eq!(out.table.upstreams.len(), 1);

    let bad = compile(
        &(svc("web", "10.0.0.1")
            + &annotated(
                "i",
                "2024-01-01T00:00:00Z",
                &rule("a.com", "/", "Prefix", "web"),
                &[("upstream-hash-by", "$request_body")],
            )),
    );
    let r = rejected(&bad);
    assert!(
        r[0].contains("upstream-hash-by") && r[0].contains("unsupported variable $request_body"),
        "{r:?}"
    );
}

#[test]
fn udp_entries_match_udp_service_ports_and_tcp_entries_tcp_ones() {
    // A DNS Service with 53/TCP and 53/UDP going to different target ports.
    let yaml = r#"
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: t}
spec:
  ports:
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 18151}
  - {name: dns-udp, port: 53, protocol: UDP, targetPort: 18152}
---
apiVersion: v1
kind: Endpoints
metadata: {name: dns, namespace: t}
subsets:
- addresses: [{ip: 127.0.0.1}]
  ports:
  - {name: dns-tcp, port: 18151, protocol: TCP}
  - {name: dns-udp, port: 18152, protocol: UDP}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: tcp-services, namespace: ingress-nginx}
data: {"53": "t/dns:53"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: udp-services, namespace: ingress-nginx}
data: {"53": "t/dns:53"}
"#;
    let mut c = Compiler::new(Options {
        tcp_services: Some("ingress-nginx/tcp-services".into()),
        udp_services: Some("ingress-nginx/udp-services".into()),
        ..Options::default()
    });
    let out = c.compile(&objects(yaml));
    let tcp = &out.table.upstreams[&out.table.l4["tcp/53"].upstream];
    let udp = &out.table.upstreams[&out.table.l4["udp/53"].upstream];
    assert_eq!(tcp.endpoints, vec![Endpoint::Addr("127.0.0.1:18151".parse().unwrap())]);
    assert_eq!(udp.endpoints, vec![Endpoint::Addr("127.0.0.1:18152".parse().unwrap())]);

    // A ConfigMap the config names but that does not exist is reported.
    let mut c = Compiler::new(Options {
        tcp_services: Some("ingress-nginx/tcp-servics".into()),
        ..Options::default()
    });
    let out = c.compile(&objects(yaml));
    assert!(
        out.problems
            .iter()
            .any(|p| p.object == "ingress-nginx/tcp-servics" && p.reason.contains("not found"))
    );
}

#[test]
fn an_ingress_class_of_another_controller_is_not_ours() {
    let ing = r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: app}
spec:
  ingressClassName: nginx
  rules: [{host: n.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"#;
    let class = r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
"#;
    // No IngressClass object: the name alone decides.
    let yaml = svc("web", "10.0.0.1") + ing;
    assert!(
        compiler("nginx")
            .compile(&objects(&yaml))
            .table
            .vhosts
            .contains_key("n.com")
    );
    // The class belongs to ingress-nginx: not served, and said so.
    let yaml = yaml + class;
    let out = compiler("nginx").compile(&objects(&yaml));
    assert!(out.table.vhosts.is_empty());
    assert!(
        out.problems
            .iter()
            .any(|p| p.kind == "IngressClass" && p.reason.contains("k8s.io/ingress-nginx")),
        "{:?}",
        out.problems
    );
    // Taking over an ingress-nginx class unchanged, as a migration does.
    let mut c = Compiler::new(Options {
        class: "nginx".into(),
        controller: "k8s.io/ingress-nginx".into(),
        ..Options::default()
    });
    assert!(c.compile(&objects(&yaml)).table.vhosts.contains_key("n.com"));
}

#[test]
fn every_problem_says_how_to_fix_it() {
    for (host, path, ty, fix) in [
        ("UPPER.com", "/", "Prefix", "lower-case DNS name"),
        ("a.com", "relative", "Prefix", "start with /"),
        (
            "a.com",
            "/",
            "Fuzzy",
            "set pathType to Exact, Prefix or ImplementationSpecific",
        ),
        ("a.com", "/a//b", "Exact", "no //"),
    ] {
        let out =
            compile(&(svc("web", "10.0.0.1") + &ingress("i", "2024-01-01T00:00:00Z", &rule(host, path, ty, "web"))));
        let p = out.problems.iter().find(|p| p.severity == Severity::Rejected).unwrap();
        assert!(p.fix.contains(fix), "{host} {path} {ty}: {}", p.fix);
    }
    // A bad annotation names its key; a missing Service and TLS Secret say what to create.
    let bad = ingress("ann", "2024-01-01T00:00:00Z", &rule("b.com", "/", "Prefix", "missing")).replace(
        "creationTimestamp",
        "annotations: {nginx.ingress.kubernetes.io/proxy-body-size: lots}, creationTimestamp",
    );
    let tls = ingress(
        "tls",
        "2024-01-02T00:00:00Z",
        &(rule("c.com", "/", "Prefix", "missing") + "  tls: [{hosts: [c.com], secretName: c-tls}]\n"),
    );
    let out = compile(&(bad + &tls));
    let fixes: Vec<(&str, &str)> = out.problems.iter().map(|p| (p.kind, p.fix.as_str())).collect();
    assert!(
        fixes
            .iter()
            .any(|(k, f)| *k == "Ingress" && f.contains("set nginx.ingress.kubernetes.io/proxy-body-size to")),
        "{fixes:?}"
    );
    assert!(
        fixes
            .iter()
            .any(|(k, f)| *k == "Service" && f.contains("create Service app/missing")),
        "{fixes:?}"
    );
    assert!(
        fixes
            .iter()
            .any(|(k, f)| *k == "Secret" && f.contains("create Secret app/c-tls of type kubernetes.io/tls")),
        "{fixes:?}"
    );
    assert!(out.problems.iter().all(|p| !p.fix.is_empty()), "{:#?}", out.problems);
    let json = serde_json::to_value(&out.problems[0]).unwrap();
    assert!(json["fix"].as_str().is_some_and(|f| !f.is_empty()), "{json}");
}

#[test]
fn the_controller_configmap_custom_http_errors_apply_where_the_ingress_sets_none() {
    let own = ingress("own", "2024-01-01T00:00:00Z", &rule("own.com", "/", "Prefix", "web")).replace(
        "namespace: app,",
        "namespace: app, annotations: {nginx.ingress.kubernetes.io/custom-http-errors: \"502\"},",
    );
    let plain = ingress(
        "plain",
        "2024-01-01T00:00:00Z",
        &rule("plain.com", "/", "Prefix", "web"),
    );
    let cm = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
data: {custom-http-errors: "404, 503"}
"#;
    let mut c = Compiler::new(Options {
        class: "nginx".into(),
        controller_configmap: Some("ingress-nginx/ingress-nginx-controller".into()),
        ..Options::default()
    });
    let out = c.compile(&objects(&(svc("web", "10.0.0.1") + &own + &plain + cm)));
    let errors = |host: &str| out.table.vhosts[host].routes[0].policy.custom_errors.clone();
    assert_eq!(errors("plain.com"), vec![404, 503], "the ConfigMap's list");
    assert_eq!(errors("own.com"), vec![502], "the Ingress's own list wins");
    // A bad value is reported and leaves the previous (here: none).
    let bad = cm.replace("404, 503", "200");
    let out = c.compile(&objects(&(svc("web", "10.0.0.1") + &plain + &bad)));
    assert!(out.table.vhosts["plain.com"].routes[0].policy.custom_errors.is_empty());
    assert!(
        out.problems
            .iter()
            .any(|p| p.kind == "ConfigMap" && p.reason.contains("custom-http-errors")),
        "{:?}",
        out.problems
    );
}
