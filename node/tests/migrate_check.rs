//! `raftgate migrate-check` as a user runs it: the built binary on a directory of ingress-nginx
//! manifests shaped like the users' field notes (DaemonSet flags, controller and tcp-services
//! ConfigMaps, Ingresses with snippets and timeouts), checking exit codes and report lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::process::Output;

const CONTROLLER: &str = r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
spec:
  template:
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      containers:
      - name: controller
        args:
        - /nginx-ingress-controller
        - --configmap=$(POD_NAMESPACE)/ingress-nginx-controller
        - --tcp-services-configmap=$(POD_NAMESPACE)/tcp-services
        - --udp-services-configmap=$(POD_NAMESPACE)/udp-services
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
data:
  allow-snippet-annotations: "true"
  proxy-body-size: "50m"
  use-forwarded-headers: "true"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: tcp-services
  namespace: ingress-nginx
data:
  # "<external port>": "<namespace>/<service>:<service-port>"
  "7306": "example-corp/external-mysql:7306"
  "1883": "example-corp/mqtt-service"
"#;

const WWW: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: www-service
  namespace: example-corp
spec:
  ports:
  - port: 81
    targetPort: 81
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: www-ingress
  namespace: example-corp
  annotations:
    nginx.ingress.kubernetes.io/app-root: /corp
    nginx.ingress.kubernetes.io/use-regex: "true"
    nginx.ingress.kubernetes.io/configuration-snippet: |
      access_log /var/log/nginx/www.example-corp.com.access.log upstreaminfo if=$loggable;
      error_log /var/log/nginx/www.example-corp.com.error.log;
spec:
  ingressClassName: nginx
  tls:
  - hosts:
    - www.example-corp.com
    secretName: www-example-corp-secret
  rules:
  - host: www.example-corp.com
    http:
      paths:
      - pathType: Prefix
        path: /
        backend:
          service:
            name: www-service
            port:
              number: 81
"#;

const NACOS: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: nacos-console
  namespace: nacos
  annotations:
    nginx.ingress.kubernetes.io/use-regex: "true"
    nginx.ingress.kubernetes.io/proxy-read-timeout: "600"
spec:
  ingressClassName: nginx
  rules:
  - host: nacos.example-corp.com
    http:
      paths:
      - pathType: Prefix
        path: /nacos
        backend:
          service:
            name: nacos-headless
            port:
              number: 8848
"#;

fn run(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_raftgate"))
        .arg("migrate-check")
        .args(args)
        .output()
        .expect("run raftgate");
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The report line (table row) for a key, with the object it belongs to above it.
fn row<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(key))
        .unwrap_or_else(|| panic!("no row for {key} in\n{out}"))
}

#[test]
fn migrate_check_reports_every_key_with_its_place_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ingress-nginx/controller.yaml", CONTROLLER);
    write(dir.path(), "apps/www-ingress.yaml", WWW);
    write(dir.path(), "apps/nacos.yml", NACOS);
    write(dir.path(), "apps/README.md", "not a manifest: ---\n[");
    let root = dir.path().to_str().unwrap();

    let (code, out, err) = run(&[root]);
    assert_eq!(
        code, 1,
        "a snippet and a broken tcp-services entry are reported\n{out}{err}"
    );
    let www = format!("{root}/apps/www-ingress.yaml");
    let controller = format!("{root}/ingress-nginx/controller.yaml");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("  STATUS") && lines[0].ends_with("NOTE"), "{out}");
    assert!(out.contains("\nIngress example-corp/www-ingress:\n"), "{out}");

    let snippet = row(&out, "configuration-snippet");
    assert!(snippet.trim_start().starts_with("unsupported"), "{snippet}");
    assert!(snippet.contains(&format!("{www}:19")), "{snippet}");
    assert!(snippet.contains("never executed"), "{snippet}");
    assert!(row(&out, "app-root").contains(&format!("{www}:17")), "{out}");
    let timeout = row(&out, "proxy-read-timeout");
    assert!(
        timeout.trim_start().starts_with("differs") && timeout.contains("counting client bytes"),
        "{timeout}"
    );
    assert!(
        row(&out, "proxy-body-size").contains(&format!("{controller}:33")),
        "{out}"
    );
    assert!(row(&out, "allow-snippet-annotations").contains("unsupported"), "{out}");
    let mysql = row(&out, "7306");
    assert!(
        mysql.contains("supported") && mysql.contains("TCP port 7306 -> example-corp/external-mysql:7306"),
        "{mysql}"
    );
    let broken = row(&out, "1883");
    assert!(
        broken.trim_start().starts_with("invalid") && broken.contains(&format!("{controller}:44")),
        "{broken}"
    );
    assert!(
        out.contains("`ingress_class: {name: nginx, controller: k8s.io/ingress-nginx}`"),
        "{out}"
    );
    assert!(
        out.contains("`l4.tcp_services_configmap: ingress-nginx/tcp-services`"),
        "{out}"
    );
    assert!(!out.contains("README"), "only .yaml, .yml and .json files are read");
    assert_eq!(
        lines.last().copied(),
        Some("4 supported, 3 with differences, 2 unsupported, 1 invalid"),
        "{out}"
    );

    // The same report as JSON.
    let (code, out, _) = run(&["--json", root]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 10, "{out}");
    let snippet = findings
        .iter()
        .find(|f| f["key"] == "nginx.ingress.kubernetes.io/configuration-snippet")
        .unwrap();
    assert_eq!(snippet["status"], "unsupported");
    assert_eq!(snippet["line"], 19);
    assert_eq!(snippet["object"], "Ingress example-corp/www-ingress");

    // A file with nothing unsupported: exit 0, differences allowed.
    let (code, out, _) = run(&[&format!("{root}/apps/nacos.yml")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("0 supported, 2 with differences, 0 unsupported\n"),
        "{out}"
    );

    // Input that cannot be read: exit 2, and the reason on stderr.
    let (code, out, err) = run(&[root, &format!("{root}/missing.yaml")]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("missing.yaml"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[empty.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("no .yaml, .yml or .json files"), "{err}");
}

#[test]
fn help_documents_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_raftgate"))
        .args(["migrate-check", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Exit status",
        "0  everything is supported",
        "1  something is unsupported",
        "2  the input",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}
