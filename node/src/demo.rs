//! The built-in demo used when no manifests directory is configured: `demo.localhost` routes
//! to this node's own admin API, so a fresh install answers real requests through the proxy.

use std::net::SocketAddr;

use crate::objects::Objects;

/// The demo objects, pointing at the admin listener actually bound.
pub fn objects(admin: SocketAddr) -> Objects {
    let ip = if admin.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        admin.ip().to_string()
    };
    let port = admin.port();
    let yaml = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: raftgate
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {{controller: raftgate.io/ingress-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: raftgate-admin, namespace: raftgate-demo}}
spec:
  ports: [{{name: admin, port: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: raftgate-admin, namespace: raftgate-demo}}
subsets:
- addresses: [{{ip: "{ip}"}}]
  ports: [{{name: admin, port: {port}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: demo, namespace: raftgate-demo}}
spec:
  rules:
  - host: demo.localhost
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{service: {{name: raftgate-admin, port: {{name: admin}}}}}}
"#
    );
    let mut objs = Objects::default();
    for o in crate::objects::parse(&yaml).into_iter().flatten().flatten() {
        objs.insert(o);
    }
    objs
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_is_four_valid_objects() {
        let o = super::objects("127.0.0.1:10254".parse().unwrap());
        assert_eq!(o.len(), 4);
        assert_eq!(o.ingresses.len(), 1);
    }
}
