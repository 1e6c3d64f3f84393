//! Multi-process Raft groups on loopback: real `raftgate` processes with mutual TLS, killed with
//! SIGKILL and restarted, checked through their admin API and with real HTTP requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Echo, free_addr, get, ingress, service};
use raftgate::ctl::request;
use raftgate_chaos_tests::apiserver::ApiServer;
use serde_json::Value;
use serde_json::json;

struct Member {
    id: u64,
    config: PathBuf,
    http: SocketAddr,
    admin: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

/// N members sharing one manifests directory (as three hosts with the same checkout would).
struct Group {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Group {
    /// Configs and certificates for `n` members; member 1 starts the group, the rest join it.
    /// `raft_extra` is appended to every member's `raft:` section.
    fn new(n: u64, raft_extra: &str) -> Group {
        Group::with_source(n, raft_extra, None)
    }

    /// Like [`Group::new`], with `source` (a YAML flow mapping) instead of the shared manifests directory.
    fn with_source(n: u64, raft_extra: &str, source: Option<&str>) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let nodes: Vec<String> = (1..=n).map(|i| format!("n{i}=127.0.0.1")).collect();
        raftgate::ctl::make_certs(&certs, "test", &nodes).unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let raft_addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let mut members = Vec::new();
        for i in 1..=n {
            let (http, admin) = (free_addr(), free_addr());
            let join = if i == 1 {
                String::new()
            } else {
                format!("  join: [\"{}\"]\n", raft_addrs[0])
            };
            let d = dir.path().display();
            let source = match source {
                Some(s) => s.to_string(),
                None => format!("{{kind: manifests, path: \"{d}/manifests\", poll_interval: 20ms}}"),
            };
            let yaml = format!(
                "node_id: n{i}\nlisten: {{http: \"{http}\", https: null}}\nadmin: {{listen: \"{admin}\"}}\n\
                 source: {source}\n\
                 log: {{level: \"info,openraft=warn\"}}\n\
                 raft:\n  id: {i}\n  listen: \"{}\"\n  data_dir: \"{d}/data{i}\"\n{join}\
                 \x20 heartbeat: 50ms\n  election_timeout: 300ms\n\
                 \x20 tls: {{ca: \"{d}/certs/ca.crt\", cert: \"{d}/certs/n{i}.crt\", key: \"{d}/certs/n{i}.key\"}}\n{raft_extra}",
                raft_addrs[(i - 1) as usize]
            );
            let config = dir.path().join(format!("n{i}.yaml"));
            std::fs::write(&config, yaml).unwrap();
            members.push(Member {
                id: i,
                config,
                http,
                admin,
                child: None,
                log: dir.path().join(format!("n{i}.log")),
            });
        }
        Group { dir, members }
    }

    fn start(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} already runs", m.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raftgate"))
            .args(["run", "--config"])
            .arg(&m.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.dir.path().join("manifests").join(file)).unwrap();
    }

    async fn status(&self, i: usize) -> Option<Value> {
        request(self.members[i].admin, http::Method::GET, "/api/v1/status", None)
            .await
            .ok()
    }

    /// The member that leads with its source running, among `live`.
    async fn leader(&self, live: &[usize]) -> Option<usize> {
        for &i in live {
            if let Some(s) = self.status(i).await
                && s["raft"]["source_running"] == Value::Bool(true)
            {
                return Some(i);
            }
        }
        None
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- n{} ---\n{}",
                    m.id,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits until `cond` holds, or fails with every member's log.
    async fn wait<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond().await {
            if Instant::now() > deadline {
                let tail: String = self
                    .logs()
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("timed out waiting for {what}\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every member in `live` answers `host` from `backend` and serves the same config version.
    async fn wait_served(&self, live: &[usize], host: &str, backend: &str) -> u64 {
        let version = std::sync::atomic::AtomicU64::new(0);
        self.wait(
            &format!("{host} served by {backend} on {live:?}"),
            Duration::from_secs(20),
            || async {
                let mut versions = Vec::new();
                for &i in live {
                    let Some(s) = self.status(i).await else { return false };
                    versions.push(s["config_version"].as_u64().unwrap_or(0));
                    let stream = tokio::net::TcpStream::connect(self.members[i].http).await;
                    if stream.is_err() {
                        return false;
                    }
                    drop(stream);
                    if get(self.members[i].http, host, "/").await.backend() != Some(backend) {
                        return false;
                    }
                }
                version.store(versions[0], std::sync::atomic::Ordering::Relaxed);
                versions.iter().all(|v| *v == versions[0])
            },
        )
        .await;
        version.into_inner()
    }
}

/// One group at a time: three processes with 50 ms heartbeats per test already fill two
/// cores, and starved members would hold elections the tests did not cause.
static ONE_GROUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn site(host: &str, echo: &Echo) -> String {
    service("default", "web", &[echo]) + &ingress("default", "web", host, &[("/", "Prefix", "web")], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_converges_survives_its_leader_and_restarts_whole() {
    let _one = ONE_GROUP.lock().await;
    let echo = Echo::start("e1").await;
    let mut g = Group::new(3, "");
    g.write("site.yaml", &site("a.example", &echo));
    for i in 0..3 {
        g.start(i);
    }
    let v1 = g.wait_served(&[0, 1, 2], "a.example", "e1").await;
    assert!(v1 >= 1);

    // Kill the leader; the other two elect a new one, which takes changes.
    let leader = g.leader(&[0, 1, 2]).await.expect("a leader runs the source");
    g.kill(leader);
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    g.write("site.yaml", &site("b.example", &echo));
    let v2 = g.wait_served(&live, "b.example", "e1").await;
    assert!(v2 > v1, "versions only grow: {v1} then {v2}");

    // The old leader comes back and catches up.
    g.start(leader);
    let v3 = g.wait_served(&[0, 1, 2], "b.example", "e1").await;
    assert_eq!(v3, v2);

    // Every member stopped at once, then started in another order: same state, no operator.
    for i in 0..3 {
        g.kill(i);
    }
    for i in [2, 0, 1] {
        g.start(i);
    }
    let v4 = g.wait_served(&[0, 1, 2], "b.example", "e1").await;
    assert!(v4 >= v3);
    // And it still takes changes.
    g.write("site.yaml", &site("c.example", &echo));
    g.wait_served(&[0, 1, 2], "c.example", "e1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_everyone_keeps_serving_its_last_state() {
    let _one = ONE_GROUP.lock().await;
    let echo = Echo::start("e1").await;
    let mut g = Group::new(3, "");
    g.write("site.yaml", &site("a.example", &echo));
    for i in 0..3 {
        g.start(i);
    }
    let v = g.wait_served(&[0, 1, 2], "a.example", "e1").await;
    let lone = 2;
    g.kill(0);
    g.kill(1);
    // No quorum: it says so, and serves what it had.
    g.wait("quorum contact lost", Duration::from_secs(10), || async {
        g.status(lone)
            .await
            .is_some_and(|s| s["raft"]["member"]["quorum_contact"] == Value::Bool(false))
    })
    .await;
    let metrics = reqwest_metrics(g.members[lone].admin).await;
    assert!(metrics.contains("raftgate_raft_quorum_contact 0"), "{metrics}");
    assert!(metrics.contains("raftgate_raft_role{role=\"leader\"} 0"), "{metrics}");
    assert_eq!(get(g.members[lone].http, "a.example", "/").await.backend(), Some("e1"));
    assert_eq!(g.status(lone).await.unwrap()["config_version"].as_u64(), Some(v));
    // Changes wait for a quorum; once one member is back they go through.
    g.write("site.yaml", &site("b.example", &echo));
    g.start(0);
    g.wait_served(&[0, lone], "b.example", "e1").await;
    let s = g.status(lone).await.unwrap();
    assert_eq!(s["raft"]["member"]["quorum_contact"], Value::Bool(true));
}

async fn reqwest_metrics(admin: SocketAddr) -> String {
    get(admin, "localhost", "/metrics").await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_learner_catches_up_from_a_snapshot() {
    let _one = ONE_GROUP.lock().await;
    let echo = Echo::start("e1").await;
    let mut g = Group::new(2, "  snapshot_every: 3\n  logs_to_keep: 0\n  learner: true\n");
    g.start(0);
    for i in 0..8 {
        g.write("site.yaml", &site(&format!("h{i}.example"), &echo));
        g.wait_served(&[0], &format!("h{i}.example"), "e1").await;
    }
    g.start(1);
    let v = g.wait_served(&[0, 1], "h7.example", "e1").await;
    let s = g.status(1).await.unwrap();
    assert_eq!(s["raft"]["member"]["role"], "learner");
    assert!(
        s["raft"]["member"]["snapshot_index"].is_u64(),
        "the learner installed a snapshot: {s}"
    );
    assert_eq!(s["config_version"].as_u64(), Some(v));
    // The leader reports how far each member is behind, and its append latency.
    let metrics = reqwest_metrics(g.members[0].admin).await;
    assert!(
        metrics.contains("raftgate_raft_replication_lag_entries{member=\"2\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("raftgate_raft_append_latency_seconds_count"),
        "{metrics}"
    );
    // ctl status lists both.
    let cluster = request(g.members[1].admin, http::Method::GET, "/api/v1/cluster", None)
        .await
        .unwrap();
    let table = raftgate::ctl::status_table(&cluster).unwrap();
    assert!(table.contains("learner") && table.contains("leader: 1"), "{table}");
}

/// The source runs on at most one member at any moment, across many leader changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_never_runs_on_two_members_at_once() {
    let _one = ONE_GROUP.lock().await;
    let echo = Echo::start("e1").await;
    let mut g = Group::new(3, "");
    g.write("site.yaml", &site("a.example", &echo));
    for i in 0..3 {
        g.start(i);
    }
    g.wait_served(&[0, 1, 2], "a.example", "e1").await;
    // Every run each member ever reported, by member, plus when a member was killed.
    let mut runs: std::collections::BTreeMap<(usize, u64), Option<u64>> = Default::default();
    let mut concurrent_seen = 0;
    let mut changes = 0;
    for round in 0..6 {
        let live: Vec<usize> = (0..3).filter(|i| g.members[*i].child.is_some()).collect();
        let leader = loop {
            if let Some(l) = g.leader(&live).await {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        g.write("site.yaml", &site(&format!("r{round}.example"), &echo));
        g.wait_served(&live, &format!("r{round}.example"), "e1").await;
        changes += 1;
        // Sample every member's flag while the leader dies and another takes over.
        let killed_at = now_ms();
        g.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut new_leader = None;
        while Instant::now() < deadline && new_leader.is_none() {
            let mut running = Vec::new();
            for i in 0..3 {
                if let Some(s) = g.status(i).await
                    && s["raft"]["source_running"] == Value::Bool(true)
                {
                    running.push(i);
                }
            }
            if running.len() > 1 {
                concurrent_seen += 1;
            }
            new_leader = running.first().copied();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(new_leader.is_some(), "no new leader after killing {leader}");
        // Collect the reported runs; the killed one's last run ends when it was killed.
        for i in 0..3 {
            if let Some(s) = g.status(i).await {
                for r in s["raft"]["source_runs"].as_array().unwrap() {
                    runs.insert((i, r["started_ms"].as_u64().unwrap()), r["stopped_ms"].as_u64());
                }
            }
        }
        for ((i, _), stop) in runs.iter_mut() {
            if *i == leader && stop.is_none() {
                *stop = Some(killed_at);
            }
        }
        g.start(leader);
    }
    assert_eq!(concurrent_seen, 0, "two members ran the source at the same time");
    let mut all: Vec<(u64, u64, usize)> = runs.iter().map(|((i, s), e)| (*s, e.unwrap_or(u64::MAX), *i)).collect();
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].1 <= w[1].0, "source runs overlap: {:?} and {:?}", w[0], w[1]);
    }
    assert!(all.len() >= 6, "expected a run per leader, got {all:?}");
    assert_eq!(changes, 6);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `kubectl apply` of every document in `yaml`.
fn kube_apply(api: &ApiServer, yaml: &str) {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !v.is_null() {
            api.apply(&v).unwrap();
        }
    }
}

/// The members watch the test API server: only the leader does, every member serves, and
/// across a leader's death while objects change nothing is missed and status has one writer at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_fed_by_the_kubernetes_api() {
    let _one = ONE_GROUP.lock().await;
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let kc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kc.path(), api.kubeconfig_yaml()).unwrap();
    let source = format!(
        "{{kind: kubernetes, kubeconfig: \"{}\", debounce: 5ms}}",
        kc.path().display()
    );
    let mut g = Group::with_source(3, "", Some(&source));
    let (e1, e2) = (Echo::start("e1").await, Echo::start("e2").await);
    kube_apply(&api, &site("a.example", &e1));
    for i in 0..3 {
        g.start(i);
    }
    g.wait_served(&[0, 1, 2], "a.example", "e1").await;
    // Status lists the members' addresses (all three advertise 127.0.0.1).
    let status = || api.get("networking.k8s.io/v1", "Ingress", "default", "web").unwrap()["status"].clone();
    g.wait("Ingress status", Duration::from_secs(10), || async {
        status()["loadBalancer"]["ingress"] == json!([{"ip": "127.0.0.1"}])
    })
    .await;
    // Only the leader talks to the API server.
    let agents = |since: usize| -> std::collections::BTreeSet<String> {
        api.requests()[since..]
            .iter()
            .filter_map(|r| r.user_agent.clone())
            .collect()
    };
    let leader = g.leader(&[0, 1, 2]).await.unwrap();
    assert_eq!(
        agents(0),
        [format!("raftgate/n{}", leader + 1)].into(),
        "followers never talk to the API server"
    );

    // Change objects continuously while the leader dies.
    let seen = api.requests().len();
    let mut next = 0;
    let killer = Instant::now() + Duration::from_millis(300);
    let mut killed = false;
    while next < 20 {
        kube_apply(
            &api,
            &ingress(
                "default",
                &format!("r{next}"),
                &format!("r{next}.example"),
                &[("/", "Prefix", "web")],
                "",
            ),
        );
        next += 1;
        if !killed && Instant::now() > killer {
            g.kill(leader);
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    kube_apply(&api, &service("default", "web", &[&e2]));
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for r in [0, 10, 19] {
        g.wait_served(&live, &format!("r{r}.example"), "e2").await;
    }
    let new_leader = g.leader(&live).await.unwrap();
    assert_ne!(new_leader, leader);
    // Every Ingress got its status, and status writes came from one member, then the other: never interleaved.
    g.wait("status on every Ingress", Duration::from_secs(10), || async {
        (0..20).all(|r| {
            api.get("networking.k8s.io/v1", "Ingress", "default", &format!("r{r}"))
                .unwrap()["status"]["loadBalancer"]["ingress"]
                == json!([{"ip": "127.0.0.1"}])
        })
    })
    .await;
    let writers: Vec<String> = api.requests()[seen..]
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/status"))
        .filter_map(|r| r.user_agent.clone())
        .collect();
    let mut runs = writers.clone();
    runs.dedup();
    assert!(runs.len() <= 2, "status writers interleaved: {runs:?}");
    assert_eq!(runs.last(), Some(&format!("raftgate/n{}", new_leader + 1)), "{runs:?}");
    let leaders: std::collections::BTreeSet<String> = [leader, new_leader]
        .iter()
        .map(|l| format!("raftgate/n{}", l + 1))
        .collect();
    assert_eq!(
        agents(0),
        leaders,
        "the follower that never led never talked to the API server"
    );
}

/// The status page on a member's admin port, in headless Chromium: it shows the three members
/// with their roles and config versions, the leader, a rejected object and recent events, and
/// follows a member's death without a reload. With `RAFTGATE_STATUS_SCREENSHOT=<file.png>` it
/// also saves a screenshot (docs/status-page.png comes from this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_group_and_follows_a_member_dying() {
    use raftgate_chaos_tests::browser;
    fn ok<T>(r: Result<T, browser::BrowserError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }
    let Some(chromium) = browser::find() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium in CI: scripts/test.sh installs Debian's chromium package when run as root"
        );
        eprintln!(
            "SKIPPED the_status_page_shows_the_group_and_follows_a_member_dying: no chromium (apt-get install chromium)"
        );
        return;
    };
    let _one = ONE_GROUP.lock().await;
    let echo = Echo::start("page-a").await;
    let mut g = Group::new(3, "");
    g.write("site.yaml", &site("shop.example.com", &echo));
    g.write(
        "broken.yaml",
        &ingress("default", "broken", "Not_A_Host", &[("/", "Prefix", "web")], ""),
    );
    for i in 0..3 {
        g.start(i);
    }
    let all = [0, 1, 2];
    let version = g.wait_served(&all, "shop.example.com", "page-a").await;
    g.wait("a leader running the source", Duration::from_secs(10), || async {
        g.leader(&all).await.is_some()
    })
    .await;
    let leader = g.leader(&all).await.unwrap();
    let victim = (leader + 1) % 3;
    let (leader_id, victim_id) = (g.members[leader].id, g.members[victim].id);

    let mut page = ok(browser::Browser::start(&chromium, None, 1400, 1000));
    ok(page.navigate(&format!("http://{}/", g.members[leader].admin)));
    let rows = "document.querySelectorAll('#members tbody tr')";
    ok(page
        .wait_for(
            "three reachable members",
            &format!("{rows}.length === 3 && [...{rows}].every(r => r.dataset.reachable === 'yes')"),
            Duration::from_secs(20),
        )
        .await);
    ok(page
        .wait_for(
            "the leader's row marked leader, the others followers",
            &format!(
                "[...{rows}].map(r => r.dataset.id + '=' + r.dataset.role).sort().join(',') === '{}'",
                {
                    let mut want: Vec<String> = g
                        .members
                        .iter()
                        .map(|m| format!("{}={}", m.id, if m.id == leader_id { "leader" } else { "follower" }))
                        .collect();
                    want.sort();
                    want.join(",")
                }
            ),
            Duration::from_secs(10),
        )
        .await);
    assert_eq!(
        ok(page.eval("document.getElementById('leader').textContent")),
        Value::String(leader_id.to_string())
    );
    assert_eq!(
        ok(page.eval("document.getElementById('version').textContent")),
        Value::String(version.to_string())
    );
    ok(page
        .wait_for(
            "the route listed",
            "document.getElementById('routes').innerText.includes('shop.example.com')",
            Duration::from_secs(10),
        )
        .await);
    ok(page
        .wait_for(
            "the rejected Ingress listed",
            "document.getElementById('problems').innerText.includes('Ingress default/broken')",
            Duration::from_secs(10),
        )
        .await);
    ok(page
        .wait_for(
            "a leader event",
            &format!("document.getElementById('events').innerText.includes('member {leader_id} leads')"),
            Duration::from_secs(10),
        )
        .await);
    let updated = ok(page.eval("Number(document.body.dataset.updated)")).as_f64().unwrap();

    // `ctl check` on a follower finds the rejection on the leader, which alone compiles.
    let out = Command::new(env!("CARGO_BIN_EXE_raftgate"))
        .args(["ctl", "--admin", &g.members[victim].admin.to_string(), "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Ingress default/broken") && text.contains(&format!("the leader, member {leader_id}")),
        "{text}"
    );

    g.kill(victim);
    ok(page.wait_for(
        "the dead member shown unreachable",
        &format!(
            "(() => {{ const r = document.querySelector('#members tr[data-id=\"{victim_id}\"]'); return !!r && r.dataset.reachable === 'no'; }})()"
        ),
        Duration::from_secs(20),
    )
    .await);
    let later = ok(page.eval("Number(document.body.dataset.updated)")).as_f64().unwrap();
    assert!(later > updated, "the page updated in place ({updated} → {later})");
    assert_eq!(
        ok(page.eval(&format!(
            "[...{rows}].filter(r => r.dataset.reachable === 'yes').length"
        ))),
        json!(2)
    );
    if let Some(path) = std::env::var_os("RAFTGATE_STATUS_SCREENSHOT") {
        let png = ok(page.screenshot());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}
