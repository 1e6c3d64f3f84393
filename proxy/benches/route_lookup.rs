//! Route lookup cost with 10,000 hosts × 10 paths, against 100 hosts × 10 paths.

use criterion::Criterion;
use criterion::black_box;
use criterion::criterion_group;
use criterion::criterion_main;
use raftgate_proxy::model::Backend;
use raftgate_proxy::model::PathMatch;
use raftgate_proxy::model::Route;
use raftgate_proxy::model::RoutePolicy;
use raftgate_proxy::model::RoutingTable;
use raftgate_proxy::model::VirtualHost;
use raftgate_proxy::router::Lookup;
use raftgate_proxy::router::Router;

fn table(hosts: usize) -> RoutingTable {
    let mut t = RoutingTable::default();
    for h in 0..hosts {
        let routes = (0..10)
            .map(|p| Route {
                path: if p % 3 == 0 {
                    PathMatch::Exact(format!("/svc{p}/exact"))
                } else {
                    PathMatch::Prefix(format!("/svc{p}/api"))
                },
                backend: Backend {
                    upstream: format!("ns/svc{h}-{p}:80"),
                },
                policy: RoutePolicy::default(),
                source: format!("ns/ing{h}"),
                canary: None,
            })
            .collect();
        t.vhosts.insert(
            format!("host{h}.example.com"),
            VirtualHost {
                routes,
                default_backend: None,
                tls: false,
            },
        );
    }
    t
}

fn bench(c: &mut Criterion) {
    for hosts in [100, 10_000] {
        let router = Router::new(&table(hosts)).unwrap_or_default();
        let host = format!("host{}.example.com", hosts / 2);
        c.bench_function(&format!("lookup_prefix/{hosts}_hosts"), |b| {
            b.iter(|| {
                let l = router.lookup(black_box(&host), black_box("/svc5/api/users/42"));
                assert!(matches!(l, Lookup::Route(_)));
            })
        });
        c.bench_function(&format!("lookup_exact/{hosts}_hosts"), |b| {
            b.iter(|| {
                let l = router.lookup(black_box(&host), black_box("/svc3/exact"));
                assert!(matches!(l, Lookup::Route(_)));
            })
        });
        c.bench_function(&format!("lookup_miss/{hosts}_hosts"), |b| {
            b.iter(|| router.lookup(black_box("nobody.example.org"), black_box("/x")))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
