//! The deploy/ files: Kubernetes manifests as k8s-openapi types, the configs they carry, the Helm chart and the bare-metal examples.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::HTTPGetAction;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use raftgate::Config;
use raftgate::config::Source;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every object of deploy/kubernetes/*.yaml (kustomization.yaml aside), by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    classes: Vec<IngressClass>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    budgets: Vec<PodDisruptionBudget>,
}

/// Deserializes `value` as `T` and checks that serializing it back gives the same object, so a
/// field k8s-openapi does not know (a typo, a wrong indentation) fails instead of vanishing.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &Path, value: &serde_yaml::Value) -> T {
    let obj: T = serde_yaml::from_value(value.clone()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back = serde_json::to_value(&obj).unwrap();
    let original = serde_json::to_value(value).unwrap();
    assert_eq!(
        back,
        original,
        "{}: {} {} has fields its type does not know",
        file.display(),
        value["kind"].as_str().unwrap_or("?"),
        value["metadata"]["name"].as_str().unwrap_or("?")
    );
    obj
}

fn kubernetes_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for file in kubernetes_files() {
        let text = read(&file);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", file.display()));
            match kind {
                "Namespace" => m.namespaces.push(typed(&file, &value)),
                "ServiceAccount" => m.service_accounts.push(typed(&file, &value)),
                "ClusterRole" => m.cluster_roles.push(typed(&file, &value)),
                "ClusterRoleBinding" => m.bindings.push(typed(&file, &value)),
                "IngressClass" => m.classes.push(typed(&file, &value)),
                "ConfigMap" => m.config_maps.push(typed(&file, &value)),
                "DaemonSet" => m.daemon_sets.push(typed(&file, &value)),
                "PodDisruptionBudget" => m.budgets.push(typed(&file, &value)),
                other => panic!("{}: kind {other} is not checked by this test", file.display()),
            }
        }
    }
    m
}

impl Manifests {
    fn config_map(&self, name: &str) -> &BTreeMap<String, String> {
        let cm = self
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no ConfigMap {name}"));
        cm.data.as_ref().unwrap()
    }

    fn daemon_set(&self) -> &DaemonSet {
        assert_eq!(self.daemon_sets.len(), 1);
        &self.daemon_sets[0]
    }

    /// The raftgate config the ConfigMap carries, as raftgate loads it.
    fn config(&self) -> Config {
        let text = &self.config_map("raftgate")["config.yaml"];
        let cfg: Config = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("ConfigMap raftgate config.yaml: {e}"));
        cfg.validate()
            .unwrap_or_else(|e| panic!("ConfigMap raftgate config.yaml: {e}"));
        cfg
    }
}

fn container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers.iter().find(|c| c.name == "raftgate").unwrap()
}

#[test]
fn kustomization_lists_every_manifest_and_nothing_missing() {
    let dir = root().join("deploy/kubernetes");
    let k: serde_yaml::Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml"))).unwrap();
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for r in &listed {
        assert!(
            dir.join(r).is_file(),
            "kustomization.yaml lists {r}, which does not exist"
        );
    }
    let present: BTreeSet<String> = kubernetes_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml and the manifests in deploy/kubernetes differ"
    );
    // The namespace comes first, so a plain `kubectl apply -f` of the list in order works too.
    assert_eq!(k["resources"][0].as_str(), Some("namespace.yaml"));
}

#[test]
fn every_object_lives_in_the_raftgate_namespace() {
    let m = manifests();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.namespaces[0].metadata.name.as_deref(), Some("raftgate"));
    let labels = m.namespaces[0].metadata.labels.as_ref().unwrap();
    // hostNetwork and NET_ADMIN are beyond the "baseline" Pod Security level.
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("privileged")
    );
    let namespaced = m
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(m.config_maps.iter().map(|o| &o.metadata))
        .chain(m.daemon_sets.iter().map(|o| &o.metadata))
        .chain(m.budgets.iter().map(|o| &o.metadata));
    for meta in namespaced {
        assert_eq!(meta.namespace.as_deref(), Some("raftgate"), "{:?}", meta.name);
    }
}

#[test]
fn daemon_set_is_host_network_with_least_privilege() {
    let m = manifests();
    let ds = m.daemon_set();
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.service_account_name.as_deref(), Some("raftgate"));
    assert_eq!(
        pod.node_selector.as_ref().unwrap(),
        &BTreeMap::from([("ingress".to_string(), "true".to_string())])
    );
    let tolerated: BTreeSet<&str> = pod
        .tolerations
        .as_ref()
        .unwrap()
        .iter()
        .filter(|t| t.operator.as_deref() == Some("Exists") && t.effect.as_deref() == Some("NoSchedule"))
        .filter_map(|t| t.key.as_deref())
        .collect();
    assert!(
        tolerated.contains("node-role.kubernetes.io/control-plane"),
        "{tolerated:?}"
    );
    // The pod template's labels are what the selector and the PodDisruptionBudget select.
    let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v));
    }
    let rolling = spec.update_strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));

    let c = container(ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.as_ref().unwrap().iter().map(String::as_str).collect();
    // NET_BIND_SERVICE exactly when the config listens below 1024.
    let cfg = m.config();
    let low = [cfg.listen.http, cfg.listen.https]
        .iter()
        .flatten()
        .any(|a| a.port() < 1024);
    let mut want = BTreeSet::from(["NET_ADMIN", "NET_RAW"]);
    if low {
        want.insert("NET_BIND_SERVICE");
    }
    assert_eq!(added, want);
}

#[test]
fn probes_hit_the_admin_api() {
    let m = manifests();
    let c = container(m.daemon_set());
    let admin = m.config().admin.listen;
    let check = |get: &HTTPGetAction, path: &str| {
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(i32::from(admin.port())));
        // The admin API stays on loopback; kubelet reaches it there (it shares the host network).
        assert_eq!(get.host.as_deref(), Some(admin.ip().to_string().as_str()));
    };
    check(
        c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap(),
        "/healthz",
    );
    check(
        c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap(),
        "/readyz",
    );
}

#[test]
fn termination_grace_covers_the_vip_handover_and_the_drain() {
    let m = manifests();
    let cfg = m.config();
    let pod = m.daemon_set().spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let grace = Duration::from_secs(pod.termination_grace_period_seconds.unwrap() as u64);
    // Node::shutdown: VIP handover (vip.grace + 5 s), leadership hand-off (2 s), then the drain.
    let vip = cfg
        .vip
        .as_ref()
        .map_or(Duration::ZERO, |v| v.grace + Duration::from_secs(5));
    let needed = vip + Duration::from_secs(2) + cfg.http.drain_grace;
    assert!(grace >= needed, "terminationGracePeriodSeconds {grace:?} < {needed:?}");
}

#[test]
fn volumes_env_and_arguments_match_the_config() {
    let m = manifests();
    let cfg = m.config();
    let raft = cfg.raft.as_ref().unwrap();
    let ds = m.daemon_set();
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = container(ds);
    let mounts: BTreeMap<&str, &str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.mount_path.as_str(), v.name.as_str()))
        .collect();
    let volume = |mount_path: &Path| {
        let name = mounts
            .get(mount_path.to_str().unwrap())
            .unwrap_or_else(|| panic!("nothing mounted at {}", mount_path.display()));
        pod.volumes.as_ref().unwrap().iter().find(|v| v.name == *name).unwrap()
    };
    // The Raft data directory is on the node, so a member keeps its log across pod restarts.
    let data = volume(&raft.data_dir);
    assert_eq!(data.host_path.as_ref().unwrap().path, raft.data_dir.to_str().unwrap());
    // The peer certificates come from the Secret, read-only.
    let tls = raft.tls.as_ref().unwrap();
    let certs_dir = tls.ca.parent().unwrap();
    let certs = volume(certs_dir);
    assert_eq!(
        certs.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("raftgate-peer-tls")
    );
    let ro = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| Path::new(&v.mount_path) == certs_dir);
    assert_eq!(ro.unwrap().read_only, Some(true));
    // The generated config and the certificate links live where start.sh writes them.
    assert!(volume(tls.cert.parent().unwrap()).empty_dir.is_some());
    let args = c.args.as_ref().unwrap();
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    assert_eq!(Path::new(config_path).parent(), tls.cert.parent());
    // ConfigMaps mounted exist in the manifests; start.sh is the one in the raftgate ConfigMap.
    for v in pod.volumes.as_ref().unwrap() {
        if let Some(cm) = &v.config_map {
            m.config_map(&cm.name);
        }
    }
    let command = c.command.as_ref().unwrap();
    let script = Path::new(&command[1]);
    assert_eq!(
        volume(script.parent().unwrap()).config_map.as_ref().unwrap().name,
        "raftgate"
    );
    assert!(
        m.config_map("raftgate")
            .contains_key(script.file_name().unwrap().to_str().unwrap())
    );
    // Downward API: the node name and its address.
    let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> =
        c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e)).collect();
    let field = |name: &str| {
        env[name]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("HOST_IP"), "status.hostIP");
    assert_eq!(
        env["RAFT_PORT"].value.as_deref(),
        Some(raft.listen.port().to_string().as_str())
    );
    assert_eq!(
        c.image.as_deref(),
        Some(format!("raftgate:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn disruption_budget_keeps_a_quorum_of_three() {
    let m = manifests();
    assert_eq!(m.budgets.len(), 1);
    let spec = m.budgets[0].spec.as_ref().unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(spec.min_available.is_none());
    let selected = spec.selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    let labels = m
        .daemon_set()
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in selected {
        assert_eq!(labels.get(k), Some(v), "the budget selects no raftgate pod");
    }
}

#[test]
fn cluster_role_reads_what_the_source_watches_and_writes_only_status_and_events() {
    let m = manifests();
    assert_eq!(m.cluster_roles.len(), 1);
    let rules = m.cluster_roles[0].rules.as_ref().unwrap();
    let read = ["get", "list", "watch"];
    let allowed_writes: BTreeSet<(&str, &str, &str)> = BTreeSet::from([
        ("networking.k8s.io", "ingresses/status", "update"),
        ("networking.k8s.io", "ingresses/status", "patch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ]);
    let mut grants = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_ref().unwrap() {
            for resource in rule.resources.as_ref().unwrap() {
                for verb in &rule.verbs {
                    assert!(group != "*" && resource != "*" && verb != "*", "a wildcard in {rule:?}");
                    let grant = (group.as_str(), resource.as_str(), verb.as_str());
                    assert!(
                        read.contains(&verb.as_str()) || allowed_writes.contains(&grant),
                        "write not needed by raftgate: {grant:?}"
                    );
                    grants.insert(grant);
                }
            }
        }
    }
    // What node/src/source/kubernetes.rs watches, and the writes it makes.
    let watched = [
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
        ("", "services"),
        ("", "secrets"),
        ("", "configmaps"),
        ("discovery.k8s.io", "endpointslices"),
    ];
    for (group, resource) in watched {
        for verb in read {
            assert!(
                grants.contains(&(group, resource, verb)),
                "missing {verb} on {resource}"
            );
        }
    }
    for w in &allowed_writes {
        assert!(grants.contains(w), "missing {w:?}");
    }
    // Bound to the ServiceAccount the DaemonSet runs as.
    assert_eq!(m.bindings.len(), 1);
    let b = &m.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), m.cluster_roles[0].metadata.name.as_ref());
    let subject = &b.subjects.as_ref().unwrap()[0];
    let sa = &m.service_accounts[0].metadata;
    assert_eq!(
        (subject.kind.as_str(), Some(&subject.name), subject.namespace.as_ref()),
        ("ServiceAccount", sa.name.as_ref(), sa.namespace.as_ref())
    );
}

#[test]
fn ingress_class_and_config_agree() {
    let m = manifests();
    let cfg = m.config();
    assert_eq!(m.classes.len(), 1);
    let class = &m.classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some("raftgate"));
    assert_eq!(
        class.spec.as_ref().unwrap().controller.as_deref(),
        Some("raftgate.io/ingress-controller")
    );
    assert_eq!(class.metadata.name.as_deref(), Some(cfg.ingress_class.name.as_str()));
    assert_eq!(
        class.spec.as_ref().unwrap().controller.as_deref(),
        Some(cfg.ingress_class.controller.as_str())
    );
}

#[test]
fn embedded_config_is_a_kubernetes_raft_member_with_a_vip_pool() {
    let m = manifests();
    let cfg = m.config();
    assert!(matches!(cfg.source, Source::Kubernetes(_)), "{:?}", cfg.source);
    let raft = cfg.raft.as_ref().unwrap();
    assert!(raft.tls.is_some() && !raft.insecure);
    assert!(raft.tls.as_ref().unwrap().ca.starts_with("/etc/raftgate/certs"));
    assert!(!cfg.vip.as_ref().unwrap().addresses.is_empty());
    assert!(cfg.admin.listen.ip().is_loopback());
    // The tcp/udp-services ConfigMaps it names are part of the manifests.
    for name in [&cfg.l4.tcp_services_configmap, &cfg.l4.udp_services_configmap] {
        let (ns, name) = name.as_deref().unwrap().split_once('/').unwrap();
        assert_eq!(ns, "raftgate");
        m.config_map(name);
    }
}

/// Runs start.sh from the ConfigMap for `node` against the shipped members table.
fn start(m: &Manifests, node: &str, host_ip: &str) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for sub in ["config", "members", "certs", "run", "data"] {
        std::fs::create_dir(p.join(sub)).unwrap();
    }
    for (k, v) in m.config_map("raftgate") {
        std::fs::write(p.join("config").join(k), v).unwrap();
    }
    for (k, v) in m.config_map("raftgate-members") {
        std::fs::write(p.join("members").join(k), v).unwrap();
    }
    for n in ["ingress-1", "ingress-2", "ingress-3"] {
        std::fs::write(p.join("certs").join(format!("{n}.crt")), "cert").unwrap();
        std::fs::write(p.join("certs").join(format!("{n}.key")), "key").unwrap();
    }
    let out = std::process::Command::new("sh")
        .arg(p.join("config/start.sh"))
        .arg("true")
        .env("NODE_NAME", node)
        .env("HOST_IP", host_ip)
        .env("RAFTGATE_CONFIG", p.join("config/config.yaml"))
        .env("RAFTGATE_MEMBERS", p.join("members"))
        .env("RAFTGATE_CERTS", p.join("certs"))
        .env("RAFTGATE_RUN", p.join("run"))
        .env("RAFTGATE_DATA", p.join("data"))
        .output()
        .unwrap();
    (out, dir)
}

#[test]
fn start_script_writes_a_valid_config_per_member() {
    let m = manifests();
    let shared = m.config();
    // A joining member: its id from the table, advertise from the host IP, join the others.
    let (out, dir) = start(&m, "ingress-2", "10.0.0.12");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = Config::load(&dir.path().join("run/config.yaml")).unwrap();
    assert_eq!(cfg.node_id.as_deref(), Some("ingress-2"));
    let raft = cfg.raft.as_ref().unwrap();
    assert_eq!(raft.id, 2);
    assert_eq!(raft.advertise.as_deref(), Some("10.0.0.12:7946"));
    assert_eq!(raft.join, ["10.0.0.11:7946", "10.0.0.13:7946"]);
    assert_eq!(
        std::fs::read_link(dir.path().join("run/peer.crt")).unwrap(),
        dir.path().join("certs/ingress-2.crt")
    );
    assert_eq!(
        std::fs::read_link(dir.path().join("run/peer.key")).unwrap(),
        dir.path().join("certs/ingress-2.key")
    );
    // Nothing but the per-member lines changed.
    let mut same = cfg.clone();
    same.node_id = shared.node_id.clone();
    let r = same.raft.as_mut().unwrap();
    let s = shared.raft.as_ref().unwrap();
    (r.id, r.advertise, r.join) = (s.id, s.advertise.clone(), s.join.clone());
    assert_eq!(same, shared);

    // The bootstrap member starts the group: empty join. IPv6 host addresses get brackets.
    let (out, dir) = start(&m, "ingress-1", "fd00::11");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = Config::load(&dir.path().join("run/config.yaml")).unwrap();
    let raft = cfg.raft.as_ref().unwrap();
    assert_eq!(m.config_map("raftgate-members")["bootstrap"].trim(), "ingress-1");
    assert_eq!((raft.id, raft.join.is_empty()), (1, true));
    assert_eq!(raft.advertise.as_deref(), Some("[fd00::11]:7946"));

    // A node missing from the table does not start, and says what to add.
    let (out, _dir) = start(&m, "ingress-9", "10.0.0.19");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingress-9 <id> 10.0.0.19:7946"), "{err}");
}

#[test]
fn bare_metal_examples_form_one_group() {
    let dir = root().join("deploy/examples/bare-metal");
    let mut members = Vec::new();
    for n in 1..=3 {
        let path = dir.join(format!("n{n}.yaml"));
        let cfg: Config = serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(matches!(cfg.source, Source::Manifests { path: Some(_), .. }));
        members.push(cfg);
    }
    let raft = |c: &Config| c.raft.clone().unwrap();
    let ids: BTreeSet<u64> = members.iter().map(|c| raft(c).id).collect();
    assert_eq!(ids.len(), 3);
    let bootstraps: Vec<&Config> = members.iter().filter(|c| raft(c).join.is_empty()).collect();
    assert_eq!(bootstraps.len(), 1, "exactly one member starts the group");
    let addresses: BTreeSet<String> = members.iter().map(|c| raft(c).advertised()).collect();
    assert_eq!(addresses.len(), 3);
    for c in &members {
        let r = raft(c);
        assert!(r.tls.is_some());
        for seed in &r.join {
            assert!(addresses.contains(seed) && *seed != r.advertised(), "{seed}");
        }
        assert_eq!(c.vip, members[0].vip, "the VIP pool differs between members");
        assert!(c.vip.is_some());
    }
    let certs: BTreeSet<PathBuf> = members.iter().map(|c| raft(c).tls.unwrap().cert).collect();
    assert_eq!(certs.len(), 3);
    // The single-node example stays loadable too.
    let path = root().join("deploy/examples/config.yaml");
    serde_yaml::from_str::<Config>(&read(&path))
        .unwrap()
        .validate()
        .unwrap();
}

/// Looks `path` (`a.b.c`) up in `values`.
fn lookup<'a>(values: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(values, |v, key| v.as_mapping()?.get(key))
}

/// In place of `helm lint` (helm cannot be installed here): the chart's YAML parses, every
/// `.Values.x.y` a template uses is in values.yaml, and template blocks are balanced.
#[test]
fn helm_chart_uses_only_values_it_defines() {
    let chart = root().join("deploy/helm/raftgate");
    let meta: serde_yaml::Value = serde_yaml::from_str(&read(&chart.join("Chart.yaml"))).unwrap();
    assert_eq!(meta["apiVersion"].as_str(), Some("v2"));
    assert_eq!(meta["name"].as_str(), Some("raftgate"));
    assert!(meta["version"].as_str().is_some());
    assert_eq!(meta["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    let values: serde_yaml::Value = serde_yaml::from_str(&read(&chart.join("values.yaml"))).unwrap();
    assert!(values.is_mapping());

    let uses = regex::Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let open = regex::Regex::new(r"\{\{-?\s*(?:if|range|with|define)\b").unwrap();
    let end = regex::Regex::new(r"\{\{-?\s*end\s*-?\}\}").unwrap();
    let mut templates: Vec<PathBuf> = std::fs::read_dir(chart.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    templates.sort();
    let mut used = BTreeSet::new();
    for t in &templates {
        let text = read(t);
        for c in uses.captures_iter(&text) {
            let path = c[1].trim_start_matches('.').to_string();
            assert!(
                lookup(&values, &path).is_some(),
                "{} uses .Values.{path}, which values.yaml does not define",
                t.display()
            );
            used.insert(path);
        }
        assert_eq!(
            open.find_iter(&text).count(),
            end.find_iter(&text).count(),
            "{}: unbalanced if/range/with/define and end",
            t.display()
        );
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{}: unbalanced braces",
            t.display()
        );
    }
    for needed in [
        "vip.addresses",
        "ingressClass.name",
        "nodeSelector",
        "tolerations",
        "peerTLS.secretName",
        "raft.port",
        "l4.tcpServicesConfigMap",
        "l4.udpServicesConfigMap",
        "image.repository",
    ] {
        assert!(used.contains(needed), "no template uses .Values.{needed}");
    }
    // The chart runs the very start.sh the plain manifests run (and this file tests).
    let m = manifests();
    assert_eq!(
        read(&chart.join("files/start.sh")),
        m.config_map("raftgate")["start.sh"],
        "deploy/helm/raftgate/files/start.sh differs from start.sh in deploy/kubernetes/configmap.yaml"
    );
}
