//! Root-only VIP failover tests: three `raftgate` nodes in network namespaces on one bridge, a client probing the VIP.
//!
//! Each test builds its own [`Topology`] (nodes `10.99.0.1..3`, client `.201`, backend `.202`), starts
//! the backend and three nodes sharing one manifests directory (Ingress `vip.test` → the backend), and
//! a probe in the client namespace opening a new connection to the VIP every 20 ms. Faults are SIGKILL,
//! a cut bridge port and `raftgate ctl drain`; the checks read the nodes' `ctl vips --json`, the kernel's
//! addresses (`ip -j addr`) and the client's neighbour table. Every wait polls with a deadline and, on
//! timeout, fails with the state of every node and the logs of every raftgate process.
//!
//! The rest use the same cluster: the status page in headless Chromium following a failover, and the
//! chaos runs (`run_chaos`: the named `scenario_*` tests and two seeded fault mixes), watched by
//! outside observers (ARP and neighbour discovery, HTTP, status pollers) whose timeline is checked
//! against every chaos invariant (`raftgate_chaos_tests::invariants`).
//!
//! Without root (and `CAP_NET_ADMIN`, `CAP_NET_RAW`) every test prints the skip line and passes. The
//! `raftgate` binary must be built (`cargo build -p raftgate`; `cargo test --workspace` builds it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use raftgate_chaos_tests::netns::ChildHandle;
use raftgate_chaos_tests::netns::HOST_IF;
use raftgate_chaos_tests::netns::Host;
use raftgate_chaos_tests::netns::ProbeAttempt;
use raftgate_chaos_tests::netns::ProbeLog;
use raftgate_chaos_tests::netns::Topology;
use raftgate_chaos_tests::schedule::Fault;
use raftgate_chaos_tests::schedule::FaultKind;
use raftgate_chaos_tests::schedule::FaultMix;
use raftgate_chaos_tests::schedule::FaultStep;
use raftgate_chaos_tests::schedule::Schedule;
use raftgate_chaos_tests::timeline::{ArpKind, Edge, Observation, Timeline};
use serde_json::Value;

const VIP4: &str = "10.99.0.100";
const VIP6: &str = "fd99::100";
const ADMIN: &str = "127.0.0.1:10254";
const HOST: &str = "vip.test";
/// What the backend answers, and so what a successful probe reads.
const BODY: &str = "backend";
const NODES: usize = 3;
/// libfaketime, from Debian's `faketime` package (scripts/test.sh installs it as root).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The size of each node's disk (ext4 on a loop device): room for a test's Raft log and state many times over.
const DISK_BYTES: u64 = 64 << 20;
const BACKEND: &str = env!("CARGO_BIN_EXE_raftgate-test-backend");
const PROBE: &str = env!("CARGO_BIN_EXE_raftgate-test-probe");
const ARPWATCH: &str = env!("CARGO_BIN_EXE_raftgate-test-arpwatch");
const APISERVER: &str = env!("CARGO_BIN_EXE_raftgate-test-apiserver");
const DELAY: &str = env!("CARGO_BIN_EXE_raftgate-test-delay");
/// The test API server's API and control (fault) listeners.
const API_LISTEN: &str = "10.99.0.203:6443";
const API_CONTROL: &str = "10.99.0.203:6444";

/// One test at a time, even under `cargo test`'s parallel runner: each runs three nodes with 50 ms
/// heartbeats and bounds outages in milliseconds, which a machine shared with other clusters would break.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `target/debug/raftgate`, next to this test's `deps` directory.
fn raftgate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("raftgate"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "no raftgate binary next to {} (in its deps directory's parent): build it with `cargo build -p raftgate`",
            exe.display()
        ),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The manifests every node reads: Service `web` with a hand-written EndpointSlice to the backend,
/// and Ingress `web` routing `vip.test` to it.
const MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [\"10.99.0.202\"]
  conditions:
    ready: true
ports:
- name: http
  port: 8080
  protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: default
spec:
  ingressClassName: raftgate
  rules:
  - host: vip.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
";

/// The VIP pool and timings of one test's nodes.
#[derive(Debug, Clone)]
struct Setup {
    /// `(address, prefix length)`, all on `eth0`.
    vips: Vec<(&'static str, u8)>,
    /// `vip.grace`; `None` leaves raftgate's default.
    grace: Option<&'static str>,
    /// The wildcard address of the client listeners: `0.0.0.0`, or `[::]` (both families) for an IPv6 VIP.
    listen: &'static str,
    /// The config source: the test Kubernetes API server (in its own namespace, holding the objects
    /// of [`MANIFESTS`]) instead of the manifests directory.
    kube: bool,
    /// Each node's wall clock can jump ([`Fault::ClockJump`]): the nodes run with libfaketime
    /// preloaded, reading their offset from a file of their own; their monotonic clocks are real.
    clock: bool,
}

/// One node's view of one VIP, from `raftgate ctl vips --json`.
#[derive(Debug, Clone)]
struct VipView {
    leader: bool,
    /// `unassigned`, `owned` or `releasing`.
    state: String,
    owner: Option<usize>,
}

/// The topology, the backend, three raftgate nodes and (once started) the probe.
struct Cluster {
    /// How many nodes.
    n: usize,
    topo: Topology,
    raftgate: PathBuf,
    /// Node `i`'s process at `[i - 1]`; `None` once killed.
    nodes: Vec<Option<ChildHandle>>,
    probe: Option<ProbeLog>,
    /// The packet-delay relay in front of node `i`, while a delay is on.
    delays: std::collections::BTreeMap<usize, ChildHandle>,
}

impl Cluster {
    /// Builds the topology and starts the backend and the nodes; `None` (after the skip line) without root.
    fn start(setup: &Setup, n: usize) -> Option<Cluster> {
        let topo = Topology::new(n).expect("build the test topology")?;
        let raftgate = raftgate_bin();
        let dir = topo.dir().to_path_buf();
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        std::fs::write(dir.join("manifests/web.yaml"), MANIFESTS).unwrap();
        topo.spawn(
            &topo.backend_ns(),
            BACKEND,
            ["--listen", "10.99.0.202:8080", "--name", BODY],
            &[],
            &dir.join("backend.log"),
        )
        .unwrap();
        if setup.kube {
            std::fs::write(dir.join("objects.json"), kube_objects().to_string()).unwrap();
            let kubeconfig = dir.join("kubeconfig");
            topo.spawn(
                &topo.apiserver_ns(),
                APISERVER,
                [
                    OsStr::new("--listen"),
                    OsStr::new(API_LISTEN),
                    OsStr::new("--control-listen"),
                    OsStr::new(API_CONTROL),
                    OsStr::new("--load"),
                    dir.join("objects.json").as_os_str(),
                    OsStr::new("--kubeconfig-out"),
                    kubeconfig.as_os_str(),
                ],
                &[],
                &dir.join("apiserver.log"),
            )
            .unwrap();
            // It writes the kubeconfig once the objects are in.
            poll_until(&topo, "the test API server's kubeconfig", || kubeconfig.is_file());
        }
        let mut cluster = Cluster {
            n,
            topo,
            raftgate,
            nodes: Vec::new(),
            probe: None,
            delays: std::collections::BTreeMap::new(),
        };
        for i in 1..=n {
            // Each node's data on a small disk of its own, which a fault can fill or fail.
            cluster.topo.mount_disk(&cluster.disk(i), DISK_BYTES).unwrap();
            let config = dir.join(format!("n{i}.yaml"));
            std::fs::write(&config, cluster.config(i, setup)).unwrap();
            let mut env = vec![("RUST_LOG", "info".to_string()), ("NO_COLOR", "1".to_string())];
            if setup.clock {
                assert!(
                    Path::new(LIBFAKETIME).is_file(),
                    "no {LIBFAKETIME}: the clock faults need Debian's faketime package (scripts/test.sh installs it as root)"
                );
                let offset = cluster.clock_file(i);
                std::fs::write(&offset, "+0\n").unwrap();
                env.extend([
                    ("LD_PRELOAD", LIBFAKETIME.to_string()),
                    ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
                    // Read at every clock call, so a jump is seen at once (a test's nodes read
                    // the wall clock for little more than log lines).
                    ("FAKETIME_NO_CACHE", "1".to_string()),
                ]);
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let handle = cluster
                .topo
                .spawn(
                    &cluster.topo.node_ns(i),
                    &cluster.raftgate,
                    [OsStr::new("run"), OsStr::new("--config"), config.as_os_str()],
                    &env,
                    &dir.join(format!("n{i}.log")),
                )
                .unwrap();
            cluster.nodes.push(Some(handle));
        }
        Some(cluster)
    }

    fn config(&self, i: usize, setup: &Setup) -> String {
        let dir = self.topo.dir().display().to_string();
        let join = if i == 1 {
            "[]".to_string()
        } else {
            format!("[\"{}:7946\"]", self.topo.node_ip(1))
        };
        let mut vips = String::new();
        for (addr, prefix) in &setup.vips {
            vips.push_str(&format!(
                "    - {{addr: \"{addr}\", prefix: {prefix}, interface: {HOST_IF}}}\n"
            ));
        }
        let grace = setup.grace.map(|g| format!("  grace: {g}\n")).unwrap_or_default();
        let source = if setup.kube {
            format!("{{kind: kubernetes, kubeconfig: \"{dir}/kubeconfig\"}}")
        } else {
            format!("{{kind: manifests, path: \"{dir}/manifests\", poll_interval: 100ms}}")
        };
        format!(
            "node_id: n{i}
listen: {{http: \"{any}:8080\", https: \"{any}:8443\"}}
admin: {{listen: \"0.0.0.0:10254\"}}
source: {source}
raft:
  id: {i}
  listen: \"{ip}:7946\"
  data_dir: \"{disk}/data\"
  insecure: true
  join: {join}
  heartbeat: 50ms
  election_timeout: 150ms
vip:
  addresses:
{vips}{grace}  preempt_delay: 30s
",
            ip = self.topo.node_ip(i),
            any = setup.listen,
            disk = self.disk(i).display(),
        )
    }

    /// Node `i`'s wall-clock offset for libfaketime (`+0`, `+3600`, `-600`: seconds).
    fn clock_file(&self, i: usize) -> PathBuf {
        self.topo.dir().join(format!("n{i}.clock"))
    }

    /// How far ahead of the real clock node `i`'s log is: the newest line that says it applied a
    /// routing table (each member does for each config change), minus now. At most the time since
    /// that line was written below the node's true offset.
    fn log_clock_skew_s(&self, i: usize) -> Option<i64> {
        let log = std::fs::read_to_string(self.topo.dir().join(format!("n{i}.log"))).ok()?;
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("replicated routing table applied"))?;
        let at: k8s_openapi::jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
        let now = k8s_openapi::jiff::Timestamp::now();
        Some(at.as_second() - now.as_second())
    }

    /// How many times node `i` has said its Raft stopped on an error, in its log (all its runs).
    fn raft_stops(&self, i: usize) -> usize {
        std::fs::read_to_string(self.topo.dir().join(format!("n{i}.log")))
            .map_or(0, |log| log.matches("raft stopped on an error; stopping").count())
    }

    /// Node `i`'s disk: the file system its data directory is on.
    fn disk(&self, i: usize) -> PathBuf {
        self.topo.dir().join(format!("n{i}-disk"))
    }

    /// Starts node `i` again if its process has exited by itself, as systemd's `Restart=always`
    /// or the kubelet would: a note on how it had exited (with its last error line), if it had.
    fn restart_if_exited(&mut self, i: usize) -> Option<String> {
        let handle = self.nodes[i - 1]?;
        let status = self.topo.exit_status(handle).unwrap()?;
        let log = std::fs::read_to_string(self.topo.dir().join(format!("n{i}.log"))).unwrap_or_default();
        let error = log
            .lines()
            .rev()
            .find(|l| l.contains("Error:"))
            .unwrap_or("(no error line)");
        self.nodes[i - 1] = Some(self.topo.respawn(handle).unwrap());
        Some(format!("n{i} had exited ({status}): {}; started again", error.trim()))
    }

    /// The nodes whose process runs (1-based).
    fn live(&self) -> Vec<usize> {
        (1..=self.n).filter(|&i| self.nodes[i - 1].is_some()).collect()
    }

    fn kill9(&mut self, i: usize) {
        let handle = self.nodes[i - 1].take().expect("the node runs");
        self.topo.kill9(handle).unwrap();
    }

    /// `raftgate ctl --admin 127.0.0.1:10254 ARGS` inside node `i`'s namespace: stdout, or why it failed.
    fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ctl", "--admin", ADMIN];
        all.extend_from_slice(args);
        let out = self
            .topo
            .run_in(&self.topo.node_ns(i), &self.raftgate, &all)
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            // The message, without the backtrace that RUST_BACKTRACE may add after a blank line.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.split("\n\n").next().unwrap_or_default().trim();
            Err(format!("{}: {message}", out.status))
        }
    }

    /// `ctl ARGS` on node `i`, failing the test (with diagnostics) if it fails.
    /// `raftgate ctl ARGS` through the first running member that takes it (it forwards to the
    /// leader), tried for up to 5 s: what happened, for the timeline. A command no member took is a
    /// note, not a test failure: under another fault there may be no leader to take it.
    fn ctl_anywhere(&self, args: &[&str]) -> String {
        let command = args.join(" ");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut errors = Vec::new();
        loop {
            for i in self.live() {
                match self.ctl(i, args) {
                    Ok(_) => return format!("`ctl {command}` taken by n{i}"),
                    Err(e) => errors.push(format!("n{i}: {e}")),
                }
            }
            if Instant::now() >= deadline {
                return format!("`ctl {command}` refused by every member: {}", errors.join("; "));
            }
            errors.clear();
            pause(Duration::from_millis(100));
        }
    }

    fn must_ctl(&self, i: usize, args: &[&str]) -> String {
        match self.ctl(i, args) {
            Ok(out) => out,
            Err(e) => self.fail(&format!("`raftgate ctl {}` on node {i} failed: {e}", args.join(" "))),
        }
    }

    fn vips_json(&self, i: usize) -> Option<Value> {
        serde_json::from_str(&self.ctl(i, &["vips", "--json"]).ok()?).ok()
    }

    /// Node `i`'s view of `vip`, if it answers.
    fn view(&self, i: usize, vip: IpAddr) -> Option<VipView> {
        let doc = self.vips_json(i)?;
        let entry = doc["vips"]
            .as_array()?
            .iter()
            .find(|v| v["vip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(vip))?;
        let node = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        Some(VipView {
            leader: doc["leader"].as_bool() == Some(true),
            state: entry["state"]["state"].as_str()?.to_string(),
            owner: node(&entry["state"]["owner"]),
        })
    }

    /// `(owner, leader)` of `vip` as the one leader among `among` sees it, if it is `owned`.
    fn owner_of(&self, vip: IpAddr, among: &[usize]) -> Option<(usize, usize)> {
        let leaders: Vec<(usize, VipView)> = among
            .iter()
            .filter_map(|&i| self.view(i, vip).map(|v| (i, v)))
            .filter(|(_, v)| v.leader)
            .collect();
        match leaders.as_slice() {
            [(leader, view)] if view.state == "owned" => Some((view.owner?, *leader)),
            _ => None,
        }
    }

    /// Nodes (any, live or not) whose `eth0` has `vip`.
    fn holders(&self, among: &[usize], vip: IpAddr) -> Vec<usize> {
        self.topo.nodes_with_addr(among, vip).unwrap()
    }

    /// Starts the probe in the client namespace: a new connection to `url` every 20 ms, `Host: vip.test`.
    fn start_probe(&mut self, url: &str) {
        let (_, log) = self
            .topo
            .spawn_probe(
                &self.topo.client_ns(),
                PROBE,
                [
                    "--url",
                    url,
                    "--host",
                    HOST,
                    "--interval-ms",
                    "20",
                    "--timeout-ms",
                    "200",
                ],
                &self.topo.dir().join("probe.log"),
            )
            .unwrap();
        self.probe = Some(log);
    }

    fn probe(&self) -> &ProbeLog {
        self.probe.as_ref().expect("the probe was started")
    }

    /// Whether the group has formed: node `leader`'s cluster view lists every node as a reachable voter.
    fn formed(&self, leader: usize) -> bool {
        let Some(cluster) = self
            .ctl(leader, &["status", "--json"])
            .ok()
            .and_then(|out| serde_json::from_str::<Value>(&out).ok())
        else {
            return false;
        };
        let members = cluster["members"].as_array().map(Vec::as_slice).unwrap_or_default();
        members.len() == self.n
            && members
                .iter()
                .all(|m| m["voter"] == Value::Bool(true) && !m["status"].is_null())
    }

    /// Waits for the group to form (every node a voter), for every node to report `vip` owned by the
    /// same node, which alone has it on `eth0`, and for it to be served: five successful probes in a row.
    fn wait_ready(&self, vip: IpAddr) -> usize {
        let all: Vec<usize> = (1..=self.n).collect();
        let owner = self.wait_until(
            "every node a voter and reporting the VIP owned by one node that alone has it on eth0",
            60,
            |c| {
                let (owner, leader) = c.owner_of(vip, &all)?;
                let agree = all.iter().all(|&i| {
                    c.view(i, vip)
                        .is_some_and(|v| v.state == "owned" && v.owner == Some(owner))
                });
                (agree && c.formed(leader) && c.holders(&all, vip) == [owner]).then_some(owner)
            },
        );
        self.wait_until("five probes in a row through the VIP succeeding", 30, |c| {
            let attempts = c.probe().attempts();
            (attempts.len() >= 5 && attempts[attempts.len() - 5..].iter().all(|a| a.is_ok_with(BODY))).then_some(())
        });
        owner
    }

    /// Polls `cond` every 20 ms until it gives a value; after `secs` seconds, or as soon as a node that
    /// should run has exited, fails with the state of every node and the logs.
    fn wait_until<T>(&self, what: &str, secs: u64, cond: impl FnMut(&Cluster) -> Option<T>) -> T {
        self.wait_for(what, Duration::from_secs(secs), cond)
    }

    fn wait_for<T>(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Cluster) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = cond(self) {
                return v;
            }
            for i in self.live() {
                let handle = self.nodes[i - 1].unwrap();
                if let Some(status) = self.topo.exit_status(handle).unwrap() {
                    self.fail(&format!(
                        "raftgate on node {i} exited ({status}) while waiting for {what}"
                    ));
                }
            }
            if start.elapsed() >= timeout {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            pause(Duration::from_millis(20));
        }
    }

    /// Fails the test with `message`, every node's view and addresses, the client's neighbours, the
    /// probe's last attempts and every process's log.
    fn fail(&self, message: &str) -> ! {
        let mut out = format!("{message}\n");
        for i in 1..=self.n {
            let state = if self.nodes[i - 1].is_some() {
                "running"
            } else {
                "killed"
            };
            let vips = self
                .ctl(i, &["vips", "--json"])
                .unwrap_or_else(|e| format!("(no answer: {e})"));
            let addrs = self.topo.addrs(&self.topo.node_ns(i));
            out.push_str(&format!(
                "--- node {i} ({state}, mac {:?})\nvips: {}\naddresses: {addrs:?}\n",
                self.topo.node_mac(i).ok(),
                vips.trim()
            ));
        }
        for vip in [VIP4, VIP6] {
            out.push_str(&format!(
                "client neighbour {vip}: {:?}\n",
                self.topo.neigh(&self.topo.client_ns(), ip(vip))
            ));
        }
        if let Some(probe) = &self.probe {
            out.push_str(&format!(
                "--- probe, last attempts (ms since its start):\n{}",
                probe.tail(60)
            ));
        }
        out.push_str(&self.topo.logs(None, 200));
        panic!("{out}");
    }

    /// Moves `vip` onto the Raft leader (`on_leader`) or onto a follower with `ctl drain` of its owners,
    /// then undrains them (the 30 s preemption delay keeps the VIP where it is); returns its owner.
    fn place_vip(&self, vip: IpAddr, on_leader: bool) -> usize {
        let all: Vec<usize> = (1..=self.n).collect();
        let mut drained: Vec<usize> = Vec::new();
        for _ in 0..8 {
            let (owner, leader) = self.wait_until("the VIP owned and on its owner's eth0 alone", 20, |c| {
                let (o, l) = c.owner_of(vip, &all)?;
                (c.holders(&all, vip) == [o]).then_some((o, l))
            });
            if (owner == leader) == on_leader {
                if drained.is_empty() {
                    return owner;
                }
                for n in drained.drain(..) {
                    self.must_ctl(leader, &["undrain", &n.to_string()]);
                    println!("undrained n{n}");
                }
                continue;
            }
            println!("VIP on n{owner}, leader n{leader}: draining n{owner}");
            self.must_ctl(leader, &["drain", &owner.to_string()]);
            drained.push(owner);
            self.wait_until("the VIP to leave the drained node", 10, |c| {
                c.owner_of(vip, &all).filter(|(o, _)| *o != owner).map(|_| ())
            });
        }
        let place = if on_leader { "the leader" } else { "a follower" };
        self.fail(&format!(
            "could not get the VIP onto {place} in 8 rounds of drain/undrain"
        ));
    }

    /// Kills the owner of `vip` (a node already known to own it) with SIGKILL and checks the failover:
    /// the probe resumes within `bound`, another live node owns the VIP and alone has it, and the client
    /// reaches it at that node's MAC. Returns the new owner.
    fn kill_owner_and_check(&mut self, vip: IpAddr, owner: usize, bound: Duration) -> usize {
        let old_mac = self.topo.node_mac(owner).unwrap();
        let kill_at = Instant::now();
        self.kill9(owner);
        // The killed node's guard takes the address off at once (the kernel lifetime alone would
        // leave it answering ARP for a second or two).
        let owner_ns = self.topo.node_ns(owner);
        self.wait_for(
            "the killed node's guard to remove the VIP from every interface",
            Duration::from_millis(500),
            |c| {
                let addrs = c.topo.addrs(&owner_ns).ok()?;
                (!addrs.iter().any(|(_, a)| *a == vip)).then_some(())
            },
        );
        println!(
            "the killed node's guard removed the VIP {} ms after the kill",
            kill_at.elapsed().as_millis()
        );
        let kill_ms = self.probe().ms_of(kill_at);
        let outage = self.outage(kill_at, kill_ms, "the kill");
        println!(
            "owner n{owner} killed: probe outage {} ms (bound {} ms)",
            outage,
            bound.as_millis()
        );
        if Duration::from_millis(outage) >= bound {
            self.fail(&format!(
                "the probe failed for {outage} ms after the owner n{owner} was killed (bound {bound:?})"
            ));
        }
        let live = self.live();
        let new_owner = self.wait_until(
            "another live node owning the VIP with the address on its eth0",
            10,
            |c| {
                let (o, _) = c.owner_of(vip, &live)?;
                (o != owner && c.topo.has_addr(&c.topo.node_ns(o), HOST_IF, vip).ok()?).then_some(o)
            },
        );
        let new_mac = self.topo.node_mac(new_owner).unwrap();
        assert_ne!(old_mac, new_mac);
        self.wait_until(
            "the client's neighbour entry for the VIP to show the new owner's MAC",
            5,
            |c| {
                let n = c.topo.neigh(&c.topo.client_ns(), vip).ok()??;
                (n.mac.as_deref() == Some(new_mac.as_str())).then_some(())
            },
        );
        let holders = self.holders(&live, vip);
        if holders != [new_owner] {
            self.fail(&format!(
                "the VIP is on the eth0 of live nodes {holders:?}, expected only the new owner n{new_owner}"
            ));
        }
        println!("VIP {vip} now on n{new_owner} ({new_mac}), the client's neighbour entry agrees");
        new_owner
    }

    /// Waits for the probe to succeed again after a fault at `at` (`at_ms` in the probe's clock), and
    /// returns the outage: from the start of the last successful attempt that ended before the fault to
    /// the start of the first successful attempt that started after it.
    fn outage(&self, at: Instant, at_ms: u64, fault: &str) -> u64 {
        let ok_after = |a: &ProbeAttempt| a.at_ms > at_ms && a.is_ok_with(BODY);
        let first = self.wait_until(&format!("a successful probe after {fault}"), 20, |c| {
            c.probe()
                .attempts()
                .iter()
                .filter(|a| ok_after(a))
                .map(|a| a.at_ms)
                .min()
        });
        // Attempts end out of order; once later ones have ended, an earlier success would have shown up.
        self.wait_until("the probe's attempts of the next 300 ms", 5, |c| {
            c.probe().attempts().iter().any(|a| a.at_ms > first + 300).then_some(())
        });
        let attempts = self.probe().attempts();
        let first = attempts
            .iter()
            .filter(|a| ok_after(a))
            .map(|a| a.at_ms)
            .min()
            .unwrap_or(first);
        let Some(last) = attempts
            .iter()
            .filter(|a| a.received < at && a.is_ok_with(BODY))
            .map(|a| a.at_ms)
            .max()
        else {
            self.fail(&format!("no successful probe before {fault}"));
        };
        first.saturating_sub(last)
    }

    /// The failed attempts (or those with another answer) that ended after `since`.
    fn failures_since(&self, since: Instant) -> Vec<ProbeAttempt> {
        self.probe()
            .attempts()
            .into_iter()
            .filter(|a| a.received > since && !a.is_ok_with(BODY))
            .collect()
    }
}

/// The pause between two looks at a condition. These tests are synchronous (no runtime worker to block).
#[allow(
    clippy::disallowed_methods,
    reason = "a poll interval in a synchronous test, not in async code"
)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Polls `cond` every 20 ms for up to 10 s; on timeout fails with the logs of every process in `topo`.
fn poll_until(topo: &Topology, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            topo.logs(None, 100)
        );
        pause(Duration::from_millis(20));
    }
}

fn v4_setup() -> Setup {
    Setup {
        vips: vec![(VIP4, 24)],
        grace: None,
        listen: "0.0.0.0",
        kube: false,
        clock: false,
    }
}

/// The IPv6 VIP alone.
fn v6_setup() -> Setup {
    Setup {
        vips: vec![(VIP6, 64)],
        // `[::]` takes IPv6 connections (and IPv4 ones, as the kernel's default `bindv6only=0`
        // has it: the direct probes to each node's own IPv4 address).
        listen: "[::]",
        ..v4_setup()
    }
}

/// The objects of [`MANIFESTS`], for the test API server.
fn kube_objects() -> Value {
    serde_json::json!([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.99.0.202"], "conditions": {"ready": true}}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        ingress_object("web", "vip.test"),
    ])
}

/// Ingress `name` routing `host` to Service `web`.
fn ingress_object(name: &str, host: &str) -> Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ingressClassName": "raftgate", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    })
}

/// One IPv4 VIP with a 1 s grace, so a handover's quiet tail ends within the test.
fn v4_short_grace() -> Setup {
    Setup {
        grace: Some("1s"),
        ..v4_setup()
    }
}

/// Starts a cluster with `setup`, probes `vip` over HTTP from the client, and waits until it is
/// ready; the VIP and its owner. `None` (after the skip line) without root.
fn probing(setup: &Setup, vip: &str) -> Option<(Cluster, IpAddr, usize)> {
    probing_n(setup, vip, NODES)
}

/// [`probing`] with `n` nodes.
fn probing_n(setup: &Setup, vip: &str, n: usize) -> Option<(Cluster, IpAddr, usize)> {
    let mut c = Cluster::start(setup, n)?;
    let addr = ip(vip);
    let url = if addr.is_ipv6() {
        format!("http://[{vip}]:8080/")
    } else {
        format!("http://{vip}:8080/")
    };
    c.start_probe(&url);
    let owner = c.wait_ready(addr);
    Some((c, addr, owner))
}

/// The topology alone: every host reaches the backend over IPv4 and IPv6, MACs are read right, a cut
/// link isolates a node until healed, so do the switch's block and loss filters, and children can be
/// killed and started again.
#[test]
fn topology_connects() {
    let _serial = serial();
    let Some(topo) = Topology::new(NODES).expect("build the test topology") else {
        return;
    };
    let dir = topo.dir().to_path_buf();
    let backend_log = dir.join("backend.log");
    let backends = [
        ("10.99.0.202:8080", "http://10.99.0.202:8080/"),
        ("[fd99::202]:8080", "http://[fd99::202]:8080/"),
    ];
    let mut handles = Vec::new();
    for (listen, _) in backends {
        let h = topo
            .spawn(
                &topo.backend_ns(),
                BACKEND,
                ["--listen", listen, "--name", BODY],
                &[],
                &backend_log,
            )
            .unwrap();
        handles.push(h);
    }
    poll_until(&topo, "both backends listening", || {
        std::fs::read_to_string(&backend_log).is_ok_and(|l| l.matches("listening on").count() == 2)
    });
    // One probe attempt from `ns` to `url`: its line.
    let probe_once = |ns: &str, url: &str| -> String {
        let out = topo
            .run_in(ns, PROBE, ["--url", url, "--count", "1", "--timeout-ms", "500"])
            .unwrap();
        assert!(out.status.success(), "probe: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let served = |line: &str| ProbeAttempt::parse(line, Instant::now()).is_some_and(|a| a.is_ok_with(BODY));
    let mut from: Vec<(String, String)> = (1..=NODES).map(|i| (format!("node {i}"), topo.node_ns(i))).collect();
    from.push(("the client".into(), topo.client_ns()));
    for (who, ns) in &from {
        for (_, url) in backends {
            let line = probe_once(ns, url);
            assert!(served(&line), "{who} -> {url}: {line}");
        }
    }
    // The client learnt the backend's MAC, which is the one `mac()` reads.
    let backend_mac = topo.mac(Host::Backend).unwrap();
    for addr in ["10.99.0.202", "fd99::202"] {
        let n = topo
            .neigh(&topo.client_ns(), ip(addr))
            .unwrap()
            .expect("a neighbour entry");
        assert_eq!(n.mac.as_deref(), Some(backend_mac.as_str()), "{addr}: {n:?}");
    }
    let macs: std::collections::HashSet<String> = (1..=NODES).map(|i| topo.node_mac(i).unwrap()).collect();
    assert_eq!(macs.len(), NODES);
    assert!(!macs.contains(&backend_mac));
    // Addresses as configured.
    let addrs = topo.addrs(&topo.node_ns(2)).unwrap();
    assert!(addrs.contains(&(HOST_IF.into(), ip("10.99.0.2"))), "{addrs:?}");
    assert!(addrs.contains(&(HOST_IF.into(), ip("fd99::2"))), "{addrs:?}");
    assert!(addrs.contains(&("lo".into(), ip("127.0.0.1"))), "{addrs:?}");
    assert_eq!(topo.nodes_with_addr(&[1, 2, 3], ip("10.99.0.2")).unwrap(), [2]);
    topo.flush_neigh(&topo.client_ns()).unwrap();
    assert_eq!(
        topo.neigh(&topo.client_ns(), ip("10.99.0.202"))
            .unwrap()
            .and_then(|n| n.mac),
        None
    );

    // A cut link isolates node 1 from everyone; healing it restores it.
    topo.cut_link(1).unwrap();
    let line = probe_once(&topo.node_ns(1), backends[0].1);
    assert!(
        line.contains(" err "),
        "node 1 reached the backend through a cut link: {line}"
    );
    assert!(served(&probe_once(&topo.node_ns(2), backends[0].1)));
    topo.heal_link(1).unwrap();
    poll_until(&topo, "node 1 reaching the backend after the heal", || {
        served(&probe_once(&topo.node_ns(1), backends[0].1))
    });

    // The switch's filters: a one-way block, either way, cuts node 1 from the backend (TCP needs
    // both) and no one else; 100% loss on node 2's port cuts it; each undone, traffic flows again.
    let reaches = |i: usize| served(&probe_once(&topo.node_ns(i), backends[0].1));
    for (from, to) in [(Host::Node(1), Host::Backend), (Host::Backend, Host::Node(1))] {
        topo.block(from, to).unwrap();
        let line = probe_once(&topo.node_ns(1), backends[0].1);
        assert!(
            line.contains(" err "),
            "node 1 reached the backend through a block {from:?} -> {to:?}: {line}"
        );
        assert!(reaches(2), "a block of node 1 stopped node 2");
        topo.unblock(from, to).unwrap();
        poll_until(&topo, "node 1 reaching the backend after the unblock", || reaches(1));
    }
    topo.set_loss(Host::Node(2), 100).unwrap();
    let line = probe_once(&topo.node_ns(2), backends[0].1);
    assert!(
        line.contains(" err "),
        "node 2 reached the backend through 100% loss: {line}"
    );
    assert!(reaches(3));
    topo.set_loss(Host::Node(2), 0).unwrap();
    poll_until(&topo, "node 2 reaching the backend with the loss off", || reaches(2));

    // A delay of 100 ms each way on node 1's port: a connection and a request (two round trips)
    // take at least 400 ms, and the switch's filters still apply to the relayed port; cleared,
    // the round trips are quick again.
    let timed = |ns: &str| {
        let t = Instant::now();
        let out = topo
            .run_in(
                ns,
                PROBE,
                ["--url", backends[0].1, "--count", "1", "--timeout-ms", "3000"],
            )
            .unwrap();
        (t.elapsed(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let relay = topo
        .set_delay(Host::Node(1), 100, 0, 1, Path::new(DELAY), &dir.join("delay-n1.log"))
        .unwrap();
    let (took, line) = timed(&topo.node_ns(1));
    assert!(served(&line), "node 1 through the delay: {line}");
    assert!(
        took >= Duration::from_millis(400),
        "two delayed round trips took only {took:?}"
    );
    let (took, line) = timed(&topo.node_ns(2));
    assert!(
        served(&line) && took < Duration::from_millis(400),
        "node 2 slowed by node 1's delay: {took:?} {line}"
    );
    topo.block(Host::Node(1), Host::Backend).unwrap();
    let (_, line) = timed(&topo.node_ns(1));
    assert!(
        line.contains(" err "),
        "node 1 reached the backend through a delay and a block: {line}"
    );
    topo.unblock(Host::Node(1), Host::Backend).unwrap();
    topo.clear_delay(Host::Node(1), relay).unwrap();
    poll_until(&topo, "node 1 reaching the backend quickly with the delay off", || {
        let (took, line) = timed(&topo.node_ns(1));
        served(&line) && took < Duration::from_millis(300)
    });

    // Stop, continue, kill and start again.
    let v4 = handles[0];
    topo.sigstop(v4).unwrap();
    let line = probe_once(&topo.client_ns(), backends[0].1);
    assert!(line.contains("err timeout"), "a stopped backend answered: {line}");
    topo.sigcont(v4).unwrap();
    poll_until(&topo, "the continued backend answering", || {
        served(&probe_once(&topo.client_ns(), backends[0].1))
    });
    topo.kill9(v4).unwrap();
    assert!(!topo.is_running(v4).unwrap());
    let line = probe_once(&topo.client_ns(), backends[0].1);
    assert!(line.contains("err connect"), "a killed backend answered: {line}");
    let again = topo.respawn(v4).unwrap();
    assert!(topo.is_running(again).unwrap());
    poll_until(&topo, "the restarted backend answering", || {
        served(&probe_once(&topo.client_ns(), backends[0].1))
    });
    let logs = topo.logs(Some("raftgate-test-backend"), 10);
    assert!(logs.contains("[running]") && logs.contains("signal: 9"), "{logs}");

    // The probe streams one line per attempt while it runs.
    let (_, log) = topo
        .spawn_probe(
            &topo.client_ns(),
            PROBE,
            ["--url", backends[1].1, "--interval-ms", "20"],
            &dir.join("probe.log"),
        )
        .unwrap();
    poll_until(&topo, "ten successful streamed attempts", || {
        log.attempts().iter().filter(|a| a.is_ok_with(BODY)).count() >= 10
    });
    assert!(log.unparsed().is_empty(), "{:?}", log.unparsed());
    let namespaces = [topo.switch_ns(), topo.client_ns()];
    drop(topo);
    let listed = raftgate_chaos_tests::netns::ip(["netns", "list"]).unwrap();
    for ns in namespaces {
        assert!(!listed.contains(&ns), "{ns} left behind: {listed}");
    }
}

/// SIGKILL of the VIP's owner while it is a follower: the probe resumes within 1 s (the failover
/// target; lease fence ~0.31 s + commit + announcement) at another node.
#[test]
fn owner_kill9_fails_over() {
    let _serial = serial();
    let Some((mut c, vip, _)) = probing(&v4_setup(), VIP4) else {
        return;
    };
    // The first owner is always the leader (node 1 bootstraps the group and takes the VIP at once);
    // `scenario_leader_owning_the_vip_killed` covers that case, so here the VIP is moved to a follower.
    let owner = c.place_vip(vip, false);
    let all: Vec<usize> = (1..=NODES).collect();
    let leader = c.wait_until("a leader", 10, |c| c.owner_of(vip, &all).map(|(_, l)| l));
    println!(
        "VIP owned by n{owner} ({}), leader n{leader}: killing the owner, which {} the leader",
        c.topo.node_mac(owner).unwrap(),
        if owner == leader { "is" } else { "is not" }
    );
    c.kill_owner_and_check(vip, owner, Duration::from_millis(1000));
}

/// A cut link: the isolated owner drops the VIP once its lease runs out, another node takes it, and
/// after the heal the old owner does not take it back (preemption delay).
#[test]
fn isolated_owner_drops_vip() {
    let _serial = serial();
    let Some((c, vip, owner)) = probing(&v4_setup(), VIP4) else {
        return;
    };
    let all: Vec<usize> = (1..=NODES).collect();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != owner).collect();
    let cut_at = Instant::now();
    let cut_ms = c.probe().ms_of(cut_at);
    c.topo.cut_link(owner).unwrap();
    let owner_ns = c.topo.node_ns(owner);
    c.wait_until("the isolated owner to drop the VIP from every interface", 5, |c| {
        let addrs = c.topo.addrs(&owner_ns).ok()?;
        (!addrs.iter().any(|(_, a)| *a == vip)).then_some(())
    });
    let dropped = cut_at.elapsed();
    println!(
        "isolated owner n{owner} dropped the VIP {} ms after the cut",
        dropped.as_millis()
    );
    // The lease (300 ms; the holder stops 50 ms early), plus polling `ip` from this process.
    if dropped >= Duration::from_millis(800) {
        c.fail(&format!(
            "the isolated owner kept the VIP for {dropped:?} (bound 0.8 s)"
        ));
    }
    let new_owner = c.wait_until("another node owning the VIP with the address on its eth0", 10, |c| {
        let (o, _) = c.owner_of(vip, &others)?;
        (o != owner && c.topo.has_addr(&c.topo.node_ns(o), HOST_IF, vip).ok()?).then_some(o)
    });
    let outage = c.outage(cut_at, cut_ms, "the cut");
    println!("n{new_owner} took over; probe outage {outage} ms");

    let heal_at = Instant::now();
    c.topo.heal_link(owner).unwrap();
    // For 2 s after the heal, sample who holds it: always exactly one node, never the healed one.
    while heal_at.elapsed() < Duration::from_secs(2) {
        let holders = c.holders(&all, vip);
        if holders.len() != 1 || holders.contains(&owner) {
            c.fail(&format!(
                "{} ms after the heal the VIP is on the eth0 of {holders:?} \
                 (healed node n{owner}, new owner n{new_owner})",
                heal_at.elapsed().as_millis()
            ));
        }
        pause(Duration::from_millis(50));
    }
    let after_heal = c.failures_since(heal_at);
    println!(
        "the healed node stayed without the VIP for 2 s; {} failed probes after the heal",
        after_heal.len()
    );
}

/// Draining the owner moves the VIP without a failed request, and the drained node keeps the address
/// (quietly, on `lo`) through the 1 s grace and lets it go after it.
///
/// "Without a failed request" has one exception no L2 handover can avoid: a connection open at the
/// instant the client's neighbour entry moves to the new owner is reset by the new owner's kernel
/// (it does not know the flow; the old owner keeps the address, but no longer gets the packets).
/// So an attempt may fail with a reset if it started between the drain command and 100 ms after the
/// new owner was seen, `Bounds::resets_at_switch` (2) at most. Any other failure — a connect timeout or refusal,
/// which is what a gap in make-before-break looks like — fails the test.
#[test]
fn drain_fails_no_request() {
    let _serial = serial();
    let Some((c, vip, owner)) = probing(&v4_short_grace(), VIP4) else {
        return;
    };
    // With 20 ms between attempts that each take a few ms, one is the most ever open at the
    // switch; two leave room for a slow machine.
    let resets_allowed = raftgate_chaos_tests::invariants::Bounds::default().resets_at_switch;
    let ready_at = Instant::now();
    let all: Vec<usize> = (1..=NODES).collect();
    let via = all.iter().copied().find(|&i| i != owner).unwrap();
    let drain_at = Instant::now();
    c.must_ctl(via, &["drain", &owner.to_string()]);
    let new_owner = c.wait_until("another node owning the VIP with the address on its eth0", 10, |c| {
        let (o, _) = c.owner_of(vip, &all)?;
        (o != owner && c.topo.has_addr(&c.topo.node_ns(o), HOST_IF, vip).ok()?).then_some(o)
    });
    let moved_at = Instant::now();
    println!(
        "drained n{owner}: n{new_owner} owns the VIP {} ms after the drain command",
        moved_at.duration_since(drain_at).as_millis()
    );
    let owner_ns = c.topo.node_ns(owner);
    c.wait_for(
        "the drained node to let the VIP go after the 1 s grace (+1 s margin)",
        Duration::from_secs(2),
        |c| {
            let addrs = c.topo.addrs(&owner_ns).ok()?;
            (!addrs.iter().any(|(_, a)| *a == vip)).then_some(())
        },
    );
    let gone_at = Instant::now();
    let kept = gone_at.duration_since(moved_at);
    println!(
        "n{owner} removed the VIP {} ms after n{new_owner} took it",
        kept.as_millis()
    );
    // Make-before-break: the old owner served what still reached it for the grace, not a moment less.
    if kept < Duration::from_millis(500) {
        c.fail(&format!(
            "the drained node n{owner} dropped the VIP {} ms after n{new_owner} took it: it should keep it \
             (quietly, on lo) for the 1 s grace",
            kept.as_millis()
        ));
    }
    let probe = c.probe().clone();
    let (drain_ms, moved_ms, gone_ms) = (probe.ms_of(drain_at), probe.ms_of(moved_at), probe.ms_of(gone_at));
    // Probe on for 2 s after the move (and past the removal), then look at every attempt since ready.
    let end = (moved_at + Duration::from_secs(2)).max(gone_at + Duration::from_millis(500));
    let end_ms = probe.ms_of(end);
    c.wait_until("the probe's attempts up to the end of the window", 10, |_| {
        probe.attempts().iter().any(|a| a.at_ms > end_ms + 250).then_some(())
    });
    let window: Vec<ProbeAttempt> = probe
        .attempts()
        .into_iter()
        .filter(|a| a.received > ready_at && a.at_ms <= end_ms)
        .collect();
    let at_switch = |a: &ProbeAttempt| {
        matches!(&a.result, Err(e) if e.contains("reset by peer")) && (drain_ms..=moved_ms + 100).contains(&a.at_ms)
    };
    let (reset, failed): (Vec<&ProbeAttempt>, Vec<&ProbeAttempt>) = window
        .iter()
        .filter(|a| !a.is_ok_with(BODY))
        .partition(|a| at_switch(a));
    println!(
        "{} probe attempts across the drain, {} failed, {} reset at the neighbour switch (allowed: {resets_allowed})",
        window.len(),
        failed.len(),
        reset.len()
    );
    let expected = end.duration_since(ready_at).as_millis() / 20;
    if (window.len() as u128) < expected / 2 {
        c.fail(&format!(
            "only {} probe attempts in the window, expected about {expected}",
            window.len()
        ));
    }
    if !failed.is_empty() || reset.len() > resets_allowed {
        let list = |l: &[&ProbeAttempt]| {
            l.iter()
                .map(|a| format!("{} {:?}", a.at_ms, a.result))
                .collect::<Vec<_>>()
                .join("; ")
        };
        c.fail(&format!(
            "probe attempts failed across the drain (probe ms: drain command at {drain_ms}, new owner seen at \
             {moved_ms}, old owner without the VIP at {gone_ms}): failed: [{}]; reset at the switch: [{}]",
            list(&failed),
            list(&reset)
        ));
    }
    assert_eq!(c.holders(&all, vip), [new_owner]);
}

/// The status page of a surviving member, in headless Chromium inside that member's namespace,
/// follows a failover without a reload: the VIP's owner (the leader) is killed, the page shows
/// it unreachable, a new leader, and the VIP owned by another member, with the move's event.
/// With `RAFTGATE_STATUS_SCREENSHOT=<file.png>` it saves a screenshot after the failover.
#[test]
fn status_page_follows_a_vip_failover() {
    use raftgate_chaos_tests::browser;
    let _serial = serial();
    let Some(chromium) = browser::find() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium in CI: scripts/test.sh installs Debian's chromium package when run as root"
        );
        println!("SKIPPED status_page_follows_a_vip_failover: no chromium (apt-get install chromium)");
        return;
    };
    let Some((mut c, vip, _)) = probing(&v4_setup(), VIP4) else {
        return;
    };
    let owner = c.place_vip(vip, true);
    let viewer = if owner == 1 { 2 } else { 1 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ok = |r: Result<(), browser::BrowserError>, c: &Cluster| {
        if let Err(e) = r {
            c.fail(&e.to_string());
        }
    };
    let mut page = browser::Browser::start(&chromium, Some(&c.topo.node_ns(viewer)), 1400, 1100).unwrap();
    page.navigate(&format!("http://{ADMIN}/")).unwrap();
    let owned_by = |n: usize| {
        format!(
            "(() => {{ const r = document.querySelector('#vips tr[data-vip=\"{vip}\"]'); return !!r && r.dataset.owner === '{n}'; }})()"
        )
    };
    let r = rt.block_on(page.wait_for(
        "the VIP shown owned by the leader, three members answering",
        &format!(
            "{} && document.querySelectorAll('#members tr[data-reachable=\"yes\"]').length === 3",
            owned_by(owner)
        ),
        Duration::from_secs(20),
    ));
    ok(r, &c);

    c.kill9(owner);
    let all: Vec<usize> = (1..=NODES).collect();
    let (new_owner, leader) = c.wait_until("a new owner", 10, |c| {
        c.owner_of(vip, &all).filter(|(o, _)| *o != owner)
    });
    println!("n{owner} killed; n{new_owner} owns the VIP, n{leader} leads; the page of n{viewer} should show it");
    let r = rt.block_on(page.wait_for(
        "the page showing the new owner, the dead member and the new leader",
        &format!(
            "{} && document.querySelector('#members tr[data-id=\"{owner}\"]').dataset.reachable === 'no' \
             && document.getElementById('leader').textContent === '{leader}' \
             && document.getElementById('events').innerText.includes('VIP {vip} owned by member {new_owner} (owner_down)')",
            owned_by(new_owner)
        ),
        Duration::from_secs(10),
    ));
    ok(r, &c);
    if let Some(path) = std::env::var_os("RAFTGATE_STATUS_SCREENSHOT") {
        let png = page.screenshot().unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

/// Milliseconds since the Unix epoch: the clock every observer prints.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `CHAOS_SEED` (decimal or 0x-hex) or `default`.
fn chaos_seed(default: u64) -> u64 {
    let Ok(v) = std::env::var("CHAOS_SEED") else {
        return default;
    };
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("CHAOS_SEED={v:?}: {e}"))
}

/// One status poller line (`<unix ms> ok 200 <json>` or `<unix ms> err ...`) as a timeline status,
/// with the number of routes the node serves.
fn status_sample(node: usize, line: &str) -> Option<(u64, raftgate_chaos_tests::timeline::Status, u64)> {
    use raftgate_chaos_tests::timeline::Status;
    let a = ProbeAttempt::parse(line, Instant::now())?;
    let Ok((200, body)) = a.result else {
        return Some((a.at_ms, Status::unreachable(node), 0));
    };
    let v: Value = serde_json::from_str(&body).ok()?;
    let member = &v["raft"]["member"];
    let held_vips = v["vips"]["vips"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|x| x["held"] == "active")
                .filter_map(|x| x["vip"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some((
        a.at_ms,
        Status {
            node,
            reachable: true,
            ready: v["ready"] == true,
            term: member["term"].as_u64().unwrap_or(0),
            leader: member["leader"].as_u64(),
            config_version: v["config_version"].as_u64().unwrap_or(0),
            source_running: v["raft"]["source_running"] == true,
            held_vips,
            quorum_contact: member["quorum_contact"] == true,
        },
        v["routes"].as_u64().unwrap_or(0),
    ))
}

/// Who led and who owned the VIP when the cluster was ready, for a scenario to aim its faults.
#[derive(Debug, Clone, Copy)]
struct Ready {
    leader: usize,
    owner: usize,
}

impl Ready {
    /// The VIP's owner if it is a follower, else the follower after the leader (of `n` nodes).
    fn a_follower(self, n: usize) -> usize {
        if self.owner != self.leader {
            self.owner
        } else {
            self.leader % n + 1
        }
    }
}

/// A schedule of named faults, `(start ms, duration ms, fault, targets)`, ending after the healing
/// bound's quiet period.
fn scenario_schedule(nodes: usize, steps: Vec<(u64, u64, Fault, Vec<usize>)>) -> Schedule {
    let steps: Vec<FaultStep> = steps
        .into_iter()
        .enumerate()
        .map(|(id, (at_ms, duration_ms, fault, targets))| FaultStep {
            id,
            at_ms,
            duration_ms,
            fault,
            targets,
        })
        .collect();
    let last_end = steps.iter().map(FaultStep::end_ms).max().unwrap_or(0);
    Schedule {
        seed: 0,
        nodes,
        steps,
        end_ms: last_end + raftgate_chaos_tests::invariants::Bounds::default().heal_ms,
    }
}

/// Puts `step` into effect (`start`) or undoes it.
/// Puts `step` into effect (`start`) or undoes it; returns notes for the timeline.
fn apply_fault(c: &mut Cluster, step: &FaultStep, start: bool) -> Vec<String> {
    let node = Host::Node;
    let mut notes = Vec::new();
    let block = |topo: &Topology, from: usize, to: usize| {
        if start {
            topo.block(node(from), node(to)).unwrap();
        } else {
            topo.unblock(node(from), node(to)).unwrap();
        }
    };
    match &step.fault {
        Fault::Kill9 => {
            for &i in &step.targets {
                let h = c.nodes[i - 1].unwrap();
                if start {
                    c.topo.kill9(h).unwrap();
                } else {
                    c.nodes[i - 1] = Some(c.topo.respawn(h).unwrap());
                }
            }
        }
        Fault::Stop => {
            for &i in &step.targets {
                let h = c.nodes[i - 1].unwrap();
                if start {
                    c.topo.sigstop(h).unwrap();
                } else {
                    c.topo.sigcont(h).unwrap();
                }
            }
        }
        Fault::CutLink => {
            for &i in &step.targets {
                c.topo.set_link(node(i), !start).unwrap();
            }
        }
        Fault::CutPeer { a, b } => {
            block(&c.topo, *a, *b);
            block(&c.topo, *b, *a);
        }
        Fault::Asymmetric { from, to } => block(&c.topo, *from, *to),
        Fault::Partition => {
            for &t in &step.targets {
                for o in (1..=c.n).filter(|o| !step.targets.contains(o)) {
                    block(&c.topo, t, o);
                    block(&c.topo, o, t);
                }
            }
        }
        Fault::Loss { pct } => {
            for &i in &step.targets {
                c.topo.set_loss(node(i), if start { *pct } else { 0 }).unwrap();
            }
        }
        Fault::Delay { ms, jitter_ms } => {
            for &i in &step.targets {
                if start {
                    let log = c.topo.dir().join(format!("delay-n{i}-{}.log", step.id));
                    let seed = (step.id * 64 + i) as u64;
                    let relay = c
                        .topo
                        .set_delay(node(i), *ms, *jitter_ms, seed, Path::new(DELAY), &log)
                        .unwrap();
                    c.delays.insert(i, relay);
                } else if let Some(relay) = c.delays.remove(&i) {
                    c.topo.clear_delay(node(i), relay).unwrap();
                }
            }
        }
        Fault::ApiServerDown => {
            c.api_fault("refuse-connections", start);
            if start {
                c.api_fault("close-watches", true);
            }
        }
        Fault::ApiServerStall => c.api_fault("stall", start),
        Fault::ApiServer410 => {
            c.api_fault("fail-watches-410", start);
            if start {
                c.api_fault("close-watches", true);
            }
        }
        Fault::DiskFull => {
            for &i in &step.targets {
                if start {
                    c.topo.fill_disk(&c.disk(i)).unwrap();
                } else {
                    c.topo.free_disk(&c.disk(i)).unwrap();
                    notes.extend(c.restart_if_exited(i));
                }
            }
        }
        Fault::DiskReadOnly => {
            for &i in &step.targets {
                if start {
                    c.topo.fail_disk(&c.disk(i)).unwrap();
                } else {
                    // The repair needs the disk unmounted: a member still running on it (its Raft
                    // had nothing to write) is stopped first, as an operator would.
                    let h = c.nodes[i - 1].unwrap();
                    if c.topo.is_running(h).unwrap() {
                        c.topo.kill9(h).unwrap();
                        notes.push(format!("n{i} still ran on its read-only disk: stopped for the repair"));
                    }
                    c.topo.repair_disk(&c.disk(i)).unwrap();
                    notes.extend(c.restart_if_exited(i));
                }
            }
        }
        Fault::ClockJump { ms } => {
            for &i in &step.targets {
                if start {
                    std::fs::write(c.clock_file(i), format!("{:+}\n", ms / 1000)).unwrap();
                } else {
                    let skew = c.log_clock_skew_s(i);
                    notes.push(format!(
                        "n{i}'s log clock at {} s from real time as its jump ends",
                        skew.map_or("?".to_string(), |s| format!("{s:+}"))
                    ));
                    std::fs::write(c.clock_file(i), "+0\n").unwrap();
                }
            }
        }
        Fault::Restart => {
            for &i in &step.targets {
                let h = c.nodes[i - 1].unwrap();
                if start && !c.topo.is_running(h).unwrap() {
                    notes.push(format!("n{i} was not running: nothing to stop"));
                } else if start {
                    let t = Instant::now();
                    match c.topo.terminate(h, Duration::from_secs(20)) {
                        Ok(status) => notes.push(format!(
                            "n{i} stopped on SIGTERM in {} ms ({status})",
                            t.elapsed().as_millis()
                        )),
                        Err(e) => c.fail(&format!("n{i} did not stop on SIGTERM: {e}")),
                    }
                } else if !c.topo.is_running(h).unwrap() {
                    c.nodes[i - 1] = Some(c.topo.respawn(h).unwrap());
                }
            }
        }
        Fault::Drain => {
            let verb = if start { "drain" } else { "undrain" };
            for &i in &step.targets {
                notes.push(c.ctl_anywhere(&[verb, &i.to_string()]));
            }
        }
    }
    notes
}

/// Whether `fault` is one of the API server's.
fn api_fault(fault: &Fault) -> bool {
    matches!(
        fault,
        Fault::ApiServerDown | Fault::ApiServerStall | Fault::ApiServer410
    )
}

impl Cluster {
    /// `curl ARGS` in the API server's namespace; fails the test if it fails.
    fn curl_in_apiserver(&self, args: &[&str]) {
        let out = self
            .topo
            .run_in(&self.topo.apiserver_ns(), "curl", args)
            .unwrap_or_else(|e| self.fail(&format!("curl {args:?}: {e}")));
        if !out.status.success() {
            self.fail(&format!(
                "curl {args:?}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Turns the test API server's fault `name` on or off (`POST /_faults/NAME?enabled=BOOL` on its
    /// control listener, which is never faulted).
    fn api_fault(&self, name: &str, on: bool) {
        let url = if name == "close-watches" {
            format!("http://{API_CONTROL}/_faults/{name}")
        } else {
            format!("http://{API_CONTROL}/_faults/{name}?enabled={on}")
        };
        self.curl_in_apiserver(&["-sS", "--fail-with-body", "-X", "POST", &url]);
    }
}

/// Writes a new Ingress, `change-K.test` → the backend, into the manifests directory (atomically: a
/// rename) or, with `kube`, into the test API server, for the leader's source to commit; its host.
fn write_change(c: &Cluster, kube: bool, k: usize) -> String {
    let dir = c.topo.dir();
    let host = format!("change-{k}.test");
    if kube {
        let file = dir.join(format!("change-{k}.json"));
        std::fs::write(&file, ingress_object(&format!("change-{k}"), &host).to_string()).unwrap();
        let url = format!("http://{API_LISTEN}/apis/networking.k8s.io/v1/namespaces/default/ingresses");
        let data = format!("@{}", file.display());
        c.curl_in_apiserver(&[
            "-sS",
            "--fail-with-body",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &url,
        ]);
        return host;
    }
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: change-{k}, namespace: default}}\n\
         spec:\n  ingressClassName: raftgate\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
         \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    );
    let tmp = dir.join(format!(".change-{k}.yaml"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("manifests").join(format!("change-{k}.yaml"))).unwrap();
    host
}

/// One chaos run, `scenario`: `nodes` nodes with one IPv4 VIP; once the cluster is ready, `plan`
/// (told who leads and who owns the VIP) gives the faults. Observers outside the cluster: an ARP
/// prober and sniffer on the client (who has the VIP, every 20 ms), HTTP probes through the VIP
/// every 20 ms, HTTP probes to each node's own address every 100 ms, and every node's
/// `/api/v1/status` every 200 ms. A config change (a new Ingress) is written as each fault starts.
/// The timeline is then checked against every chaos invariant; a failure prints the seed, the
/// schedule and the timeline. `CHAOS_RESULTS` (a path) collects one JSON line per run (the drill).
fn run_chaos(
    scenario: &str,
    nodes: usize,
    setup: &Setup,
    plan: impl FnOnce(&Cluster, Ready) -> Schedule,
) -> Option<Timeline> {
    run_chaos_placed(scenario, nodes, setup, None, plan)
}

/// [`run_chaos`], with the VIP first moved (by drains) to the leader (`Some(true)`) or to a
/// follower (`Some(false)`).
fn run_chaos_placed(
    scenario: &str,
    nodes: usize,
    setup: &Setup,
    place_on_leader: Option<bool>,
    plan: impl FnOnce(&Cluster, Ready) -> Schedule,
) -> Option<Timeline> {
    use raftgate_chaos_tests::invariants;
    // Without root: the skip line, and no timeline.
    // The setup's first VIP, IPv4 or IPv6: the probe, the ARP or neighbour-discovery observer
    // and the invariants follow it.
    let vip_text = setup.vips.first().map_or(VIP4, |(v, _)| *v);
    let (mut c, vip, _) = probing_n(setup, vip_text, nodes)?;
    if let Some(on_leader) = place_on_leader {
        c.place_vip(vip, on_leader);
    }
    let all: Vec<usize> = (1..=nodes).collect();
    let (owner, leader) = c.wait_until("the VIP owned, as the leader sees it", 10, |c| c.owner_of(vip, &all));
    let schedule = plan(&c, Ready { leader, owner });
    println!(
        "chaos run `{scenario}` (leader n{leader}, VIP on n{owner}), seed {:#x}:\n{schedule}",
        schedule.seed
    );
    let dir = c.topo.dir().to_path_buf();
    let client = c.topo.client_ns();
    let arp_log = dir.join("arpwatch.log");
    c.topo
        .spawn(
            &client,
            ARPWATCH,
            ["--interface", HOST_IF, "--vip", vip_text, "--interval-ms", "20"],
            &[],
            &arp_log,
        )
        .unwrap();
    let status_logs: Vec<(usize, PathBuf)> = all.iter().map(|&i| (i, dir.join(format!("status-n{i}.log")))).collect();
    let direct_logs: Vec<(usize, PathBuf)> = all.iter().map(|&i| (i, dir.join(format!("direct-n{i}.log")))).collect();
    for ((i, status), (_, direct)) in status_logs.iter().zip(&direct_logs) {
        let ip = c.topo.node_ip(*i);
        let status_url = format!("http://{ip}:10254/api/v1/status");
        let args = [
            "--url",
            &status_url,
            "--interval-ms",
            "200",
            "--timeout-ms",
            "500",
            "--epoch",
            "--end-time",
            "--serial",
            "--json",
        ];
        c.topo.spawn(&client, PROBE, args, &[], status).unwrap();
        let direct_url = format!("http://{ip}:8080/");
        let args = [
            "--url",
            &direct_url,
            "--host",
            HOST,
            "--interval-ms",
            "100",
            "--timeout-ms",
            "500",
            "--epoch",
        ];
        c.topo.spawn(&client, PROBE, args, &[], direct).unwrap();
    }
    // Every observer has seen the healthy cluster before the first fault's time counts.
    c.wait_until("the observers running", 10, |_| {
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        (lines(&arp_log) > 0 && status_logs.iter().chain(&direct_logs).all(|(_, l)| lines(l) > 0)).then_some(())
    });
    let t0 = unix_ms();
    // The client load is the cluster's own probe (a new connection to the VIP every 20 ms); its
    // times are in its own clock, which this converts.
    let t0_probe = c.probe().ms_of(Instant::now());
    let mut timeline = Timeline::new(nodes).with_vip(vip);
    for i in 1..=nodes {
        timeline = timeline.with_mac(i, &c.topo.node_mac(i).unwrap());
    }
    let at = |ms: u64| Instant::now() + Duration::from_millis(ms.saturating_sub(unix_ms() - t0));
    let wait_until = |deadline: Instant| {
        let now = Instant::now();
        if deadline > now {
            pause(deadline - now);
        }
    };
    let mut changes: Vec<(u64, String)> = Vec::new();
    // Faults may overlap: their starts and ends in time order, an end before a start at the same ms.
    let mut edges: Vec<(u64, bool, usize)> = schedule
        .steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| [(s.at_ms, true, i), (s.end_ms(), false, i)])
        .collect();
    edges.sort_unstable();
    let mut api_down = 0usize;
    let mut change_due = false;
    // How late the last edge was put into effect: a fault can take a while to apply (a graceful
    // stop waits out the VIP grace), and the quiet period after it must still be whole.
    let last_edge_ms = edges.last().map_or(0, |e| e.0);
    let mut last_edge_at = 0;
    for (edge_ms, start, i) in edges {
        let step = &schedule.steps[i];
        wait_until(at(edge_ms));
        // Recorded as the fault is put into effect or undone: requests failing from its start on
        // are its doing.
        let edge_at = unix_ms() - t0;
        last_edge_at = last_edge_at.max(edge_at);
        if start {
            timeline.push(
                edge_at,
                Observation::Fault {
                    step: step.clone(),
                    edge: Edge::Start,
                },
            );
        }
        for text in apply_fault(&mut c, step, start) {
            println!("{text}");
            timeline.push(unix_ms() - t0, Observation::Note { text });
        }
        if !start {
            timeline.push(
                edge_at,
                Observation::Fault {
                    step: step.clone(),
                    edge: Edge::End,
                },
            );
        }
        if api_fault(&step.fault) {
            api_down = if start {
                api_down + 1
            } else {
                api_down.saturating_sub(1)
            };
        }
        // A config change as each fault starts (the final quiet period stays change-free): the
        // source on whichever member leads must commit it, whatever the fault did to the group.
        // With the API server faulted, the change waits until it answers again.
        change_due |= start;
        if change_due && (!setup.kube || api_down == 0) {
            // Before the change, how often each target's Raft had stopped.
            let stops: Vec<usize> = step.targets.iter().map(|&i| c.raft_stops(i)).collect();
            changes.push((unix_ms() - t0, write_change(&c, setup.kube, changes.len())));
            change_due = false;
            // A full disk may still take a write or two, into room its files already had, as a
            // real one may (and a failed one has nothing to refuse until a write comes): more
            // changes, as a busy cluster would make, until every target's Raft has stopped on it
            // (or the fault is nearly over).
            if start && matches!(step.fault, Fault::DiskFull | Fault::DiskReadOnly) {
                let until = at(step.end_ms().saturating_sub(500));
                let stopped = |c: &Cluster| step.targets.iter().zip(&stops).all(|(&i, &n)| c.raft_stops(i) > n);
                while !stopped(&c) && Instant::now() < until {
                    pause(Duration::from_millis(250));
                    if !stopped(&c) {
                        changes.push((unix_ms() - t0, write_change(&c, setup.kube, changes.len())));
                    }
                }
            }
        }
    }
    // A little past the schedule's end, so that every node has answered after the healing
    // deadline (the schedule ends exactly on it).
    let quiet_ms = schedule.end_ms.saturating_sub(last_edge_ms);
    wait_until(at(schedule.end_ms.max(last_edge_at + quiet_ms) + 1_000));
    let neighbour = c.topo.neigh(&client, vip).unwrap().and_then(|n| n.mac);
    timeline.push(unix_ms() - t0, Observation::NeighbourCache { vip, mac: neighbour });

    // Everything the observers wrote, on the run's clock (lines from before it are dropped).
    let since = |ms: u64| ms.checked_sub(t0);
    for line in std::fs::read_to_string(&arp_log).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(ms) = f.first().and_then(|m| m.parse().ok()).and_then(since) else {
            continue;
        };
        match f.as_slice() {
            [_, "whohas", v] => timeline.push(
                ms,
                Observation::WhoHas {
                    vip: v.parse().unwrap(),
                },
            ),
            [_, kind @ ("reply" | "announce"), v, mac] => timeline.push(
                ms,
                Observation::ArpSeen {
                    vip: v.parse().unwrap(),
                    mac: mac.to_string(),
                    kind: if *kind == "reply" {
                        ArpKind::Reply
                    } else {
                        ArpKind::Announce
                    },
                },
            ),
            _ => {}
        }
    }
    let probe = |a: &ProbeAttempt, node: Option<usize>| {
        let (ok, endpoint, error) = match &a.result {
            Ok((status, body)) => (*status == 200 && body == BODY, Some(body.clone()), None),
            Err(e) => (false, None, Some(e.clone())),
        };
        Observation::Probe {
            ok,
            latency_ms: 0,
            node,
            endpoint,
            error,
        }
    };
    for a in c.probe().attempts() {
        if let Some(ms) = a.at_ms.checked_sub(t0_probe) {
            timeline.push(ms, probe(&a, None));
        }
    }
    for (i, log) in &direct_logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            if let Some(a) = ProbeAttempt::parse(line, Instant::now())
                && let Some(ms) = since(a.at_ms)
            {
                timeline.push(ms, probe(&a, Some(*i)));
            }
        }
    }
    // A change is acknowledged when the source's leader first reports the routing table with it
    // (more routes than before): at the config version that leader then reports.
    let mut acked: Vec<Option<(u64, u64)>> = vec![None; changes.len()];
    for (i, log) in &status_logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            if let Some((at_ms, status, routes)) = status_sample(*i, line)
                && let Some(ms) = since(at_ms)
            {
                if status.source_running {
                    for (k, (written, _)) in changes.iter().enumerate() {
                        // One route at the start (vip.test), one more per change.
                        if routes >= 2 + k as u64 && ms >= *written && acked[k].is_none_or(|(at, _)| ms < at) {
                            acked[k] = Some((ms, status.config_version));
                        }
                    }
                }
                timeline.push(ms, Observation::Status(status));
            }
        }
    }
    for (k, (written, host)) in changes.iter().enumerate() {
        println!(
            "config change {host} written at +{written}ms, acknowledged (at, version): {:?}",
            acked[k]
        );
        match acked[k] {
            Some((at, version)) => timeline.push(at, Observation::Acked { version }),
            None => timeline.push(
                *written,
                Observation::Note {
                    text: format!("config change {host} never acknowledged by a leader"),
                },
            ),
        }
    }
    assert!(
        acked.iter().all(Option::is_some),
        "a config change was never committed: {changes:?} acked {acked:?}\n{}\n--- raftgate logs\n{}",
        timeline.render_compact(),
        c.topo.logs(Some("raftgate"), 150)
    );
    let bounds = invariants::Bounds::default();
    let violations = invariants::check_all(&timeline, &bounds);
    let report = invariants::report(&schedule, &timeline, &violations);
    let windows = invariants::fault_windows(&timeline, &bounds);
    for w in &windows {
        println!(
            "{}: {} of {} requests failed{}",
            w.step.fault_line(),
            w.failed,
            w.total,
            w.measured_ms()
                .map(|ms| format!(", failover {ms} ms"))
                .unwrap_or_default()
        );
    }
    // The drill (scripts/drill.sh) collects one line per run.
    if let Some(path) = std::env::var_os("CHAOS_RESULTS") {
        use std::io::Write as _;
        let result =
            raftgate_chaos_tests::summary::RunResult::new(scenario, schedule.seed, violations.clone(), &windows);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{}", result.to_json()).unwrap();
    }
    assert!(
        violations.is_empty(),
        "{report}\n--- raftgate logs\n{}",
        c.topo.logs(Some("raftgate"), 120)
    );
    println!(
        "`{scenario}` seed {:#x}: no violation in {} events",
        schedule.seed,
        timeline.events().len()
    );
    Some(timeline)
}

/// The terms the members reported over a run, lowest and highest.
fn term_range(t: &Timeline) -> (u64, u64) {
    let terms = t.statuses().filter(|(_, s)| s.reachable).map(|(_, s)| s.term);
    let (lo, hi) = terms.fold((u64::MAX, 0), |(lo, hi), term| (lo.min(term), hi.max(term)));
    (lo, hi)
}

/// A seeded mix of every network, process and disk fault the harness injects (kill -9 and restart,
/// SIGSTOP and SIGCONT, a cut link, a cut between two nodes, a one-way cut, a partitioned minority,
/// packet loss, a full disk) on a three-node group, checked by [`run_chaos`]. `CHAOS_SEED` and `CHAOS_STEPS`
/// pick another run (the drill does many).
#[test]
fn a_seeded_fault_mix_keeps_every_invariant() {
    let _serial = serial();
    seeded_mix("seeded mix", 0x5eed_0007, &v4_setup(), &FaultKind::NODE_AND_NETWORK);
}

/// A seeded mix of `kinds` on three nodes set up as `setup`, checked by [`run_chaos`]: seed
/// `CHAOS_SEED` (else `default_seed`), `CHAOS_STEPS` faults (else 3).
fn seeded_mix(name: &str, default_seed: u64, setup: &Setup, kinds: &[FaultKind]) {
    let seed = chaos_seed(default_seed);
    let steps = std::env::var("CHAOS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mix = FaultMix::only(kinds);
    run_chaos(name, NODES, setup, |_, _| {
        Schedule::random(seed, NODES, steps, &mix).unwrap()
    });
}

/// Scenario: the leader's data directory fills up. The config change written as the fault starts
/// fails to reach its log, which stops its Raft core: it must stop leading at once (no VIP grants,
/// no source) so that the others elect a leader and move the VIP, give its own VIPs up as one cut
/// off, and exit with an error that names the disk, for its supervisor to start it again; started
/// again on the freed disk, it recovers from its directory and rejoins.
#[test]
fn scenario_disk_full_on_the_leader() {
    let _serial = serial();
    let Some(timeline) = run_chaos("disk full on the leader", NODES, &v4_setup(), |_, r| {
        scenario_schedule(NODES, vec![(1_000, 3_000, Fault::DiskFull, vec![r.leader])])
    }) else {
        return;
    };
    let notes: Vec<&str> = timeline.notes().collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("had exited") && n.contains("raft stopped on an error") && n.contains("No space left")),
        "the leader should have exited on its full disk, naming it: notes {notes:?}"
    );
}

/// Scenario: a follower's disk fails and its file system turns read-only under it (ext4's
/// `errors=remount-ro`). The next entry it must store fails with EROFS, which stops its Raft: it
/// exits with an error that names the disk, the others go on without it; once the disk is repaired
/// (fsck) it is started again, recovers from its directory and rejoins.
#[test]
fn scenario_read_only_disk_on_a_follower() {
    let _serial = serial();
    let Some(timeline) = run_chaos("read-only disk on a follower", NODES, &v4_setup(), |_, r| {
        scenario_schedule(
            NODES,
            vec![(1_000, 3_000, Fault::DiskReadOnly, vec![r.a_follower(NODES)])],
        )
    }) else {
        return;
    };
    let notes: Vec<&str> = timeline.notes().collect();
    assert!(
        notes.iter().any(|n| n.contains("had exited")
            && n.contains("raft stopped on an error")
            && n.contains("Read-only file system")),
        "the follower should have exited on its read-only disk, naming it: notes {notes:?}"
    );
}

/// Scenario: wall clocks jump, as an NTP step or a bad RTC does: the leader's an hour ahead,
/// then a follower's ten minutes back. raftgate times leases, elections and timeouts on the
/// monotonic clock, so nothing may fail (the invariants' `Impact::None`). Each node's log shows
/// the jump took (its timestamps are wall-clock), or the test fails.
#[test]
fn scenario_clock_jumps() {
    let _serial = serial();
    let setup = Setup {
        clock: true,
        ..v4_setup()
    };
    let Some(timeline) = run_chaos("clock jumps", NODES, &setup, |_, r| {
        scenario_schedule(
            NODES,
            vec![
                (1_000, 2_500, Fault::ClockJump { ms: 3_600_000 }, vec![r.leader]),
                (
                    5_000,
                    2_500,
                    Fault::ClockJump { ms: -600_000 },
                    vec![r.a_follower(NODES)],
                ),
            ],
        )
    }) else {
        return;
    };
    let skews: Vec<i64> = timeline
        .notes()
        .filter(|text| text.contains("log clock at"))
        .filter_map(|text| text.split_whitespace().find_map(|w| w.parse::<i64>().ok()))
        .collect();
    // The line was written after the jump and before its end (2.5 s later).
    assert_eq!(skews.len(), 2, "{skews:?}");
    assert!((3_596..=3_601).contains(&skews[0]), "the leader's log clock: {skews:?}");
    assert!((-604..=-599).contains(&skews[1]), "the follower's log clock: {skews:?}");
}

/// Scenario: the IPv6 VIP's owner is killed and restarted, watched on the wire by neighbour
/// discovery (a solicitation every 20 ms, every advertisement recorded) instead of ARP: one MAC
/// answers at a time, the new owner's unsolicited advertisement moves the client's neighbour
/// entry, and the failover stays within its bound.
#[test]
fn scenario_ipv6_owner_kill() {
    let _serial = serial();
    let Some(timeline) = run_chaos("IPv6 owner kill", NODES, &v6_setup(), |_, r| {
        scenario_schedule(NODES, vec![(1_000, 2_000, Fault::Kill9, vec![r.owner])])
    }) else {
        return;
    };
    // The observer saw the owners answer: before the kill, and the new one after it.
    let answered: BTreeSet<String> = timeline
        .events()
        .iter()
        .filter_map(|e| match &e.obs {
            Observation::ArpSeen { vip, mac, .. } if vip.is_ipv6() => Some(mac.clone()),
            _ => None,
        })
        .collect();
    assert!(
        answered.len() >= 2,
        "neighbour advertisements from the old and new owner: {answered:?}"
    );
}

/// The seeded mix with every fault the harness injects, the API server's and clock jumps
/// included, on a group whose source is the test Kubernetes API server. `CHAOS_SEED` and
/// `CHAOS_STEPS` as for [`a_seeded_fault_mix_keeps_every_invariant`].
#[test]
fn a_seeded_kubernetes_fault_mix_keeps_every_invariant() {
    let _serial = serial();
    let setup = Setup {
        kube: true,
        clock: true,
        ..v4_setup()
    };
    // Seed 4001 draws watches answered with 410 Gone, a full disk and a stalled API server.
    seeded_mix("seeded mix, Kubernetes source", 4001, &setup, &FaultKind::ALL);
}

/// Scenario: the VIP's owner, a follower, is killed and restarted: another member takes the VIP
/// within the follower bound, with no election.
#[test]
fn scenario_vip_owner_kill() {
    let _serial = serial();
    let timeline = run_chaos_placed("VIP-owner kill", NODES, &v4_setup(), Some(false), |_, r| {
        assert_ne!(r.owner, r.leader, "the VIP was placed on a follower");
        scenario_schedule(NODES, vec![(1_000, 2_000, Fault::Kill9, vec![r.owner])])
    });
    if let Some(t) = timeline {
        let (lo, hi) = term_range(&t);
        assert_eq!(lo, hi, "a follower's kill moved the term:\n{}", t.render_compact());
    }
}

/// Scenario: the leader, which also owns the VIP, is killed and restarted: an election, then the
/// lease fence, then the new owner, within the leader bound.
#[test]
fn scenario_leader_owning_the_vip_killed() {
    let _serial = serial();
    run_chaos_placed("leader-and-owner kill", NODES, &v4_setup(), Some(true), |_, r| {
        assert_eq!(r.owner, r.leader, "the VIP was placed on the leader");
        scenario_schedule(NODES, vec![(1_000, 2_000, Fault::Kill9, vec![r.leader])])
    });
}

/// Scenario: a rolling restart under load: each member in turn is stopped with SIGTERM (handing
/// its VIP and leadership over first) and started again 1 s later, 6 s apart. No request may fail
/// but for resets at a neighbour switch.
#[test]
fn scenario_rolling_restart() {
    let _serial = serial();
    run_chaos("rolling restart", NODES, &v4_short_grace(), |_, _| {
        let steps = (0..NODES as u64)
            .map(|k| (1_000 + k * 6_000, 1_000, Fault::Restart, vec![k as usize + 1]))
            .collect();
        scenario_schedule(NODES, steps)
    });
}

/// Scenario: a drain under load: the VIP's owner is drained (its VIP moves, make-before-break) and
/// undrained 3 s later. No request may fail but for resets at the neighbour switch.
#[test]
fn scenario_drain() {
    let _serial = serial();
    run_chaos("drain", NODES, &v4_short_grace(), |_, r| {
        scenario_schedule(NODES, vec![(1_000, 3_000, Fault::Drain, vec![r.owner])])
    });
}

/// Scenario: the leader, not the VIP's owner, is killed and restarted: an election; the owner keeps
/// serving the VIP throughout or loses it for at most the leader bound.
#[test]
fn scenario_leader_kill() {
    let _serial = serial();
    run_chaos_placed("leader kill", NODES, &v4_setup(), Some(false), |_, r| {
        assert_ne!(r.owner, r.leader, "the VIP was placed on a follower");
        scenario_schedule(NODES, vec![(1_000, 2_000, Fault::Kill9, vec![r.leader])])
    });
}

/// Scenario: a follower (the VIP's owner if a follower owns it) is cut off from the other members
/// while clients still reach it: it loses its quorum, keeps serving its last state to direct
/// requests, and gives up the VIP if it held it.
#[test]
fn scenario_minority_partition() {
    let _serial = serial();
    let timeline = run_chaos("minority partition", NODES, &v4_setup(), |_, r| {
        scenario_schedule(NODES, vec![(1_000, 3_000, Fault::Partition, vec![r.a_follower(NODES)])])
    });
    // Pre-vote: the cut-off member never stood for election (its pre-votes were refused), so its
    // return deposed no one: one term throughout.
    if let Some(t) = timeline {
        let (lo, hi) = term_range(&t);
        assert_eq!(lo, hi, "the term moved from {lo} to {hi}:\n{}", t.render_compact());
    }
}

/// Scenario: the leader is cut off from the other members: they elect another, it loses its quorum
/// and its lease (and so its VIPs and its config source), and rejoins as a follower.
#[test]
fn scenario_isolated_leader() {
    let _serial = serial();
    run_chaos("isolated leader", NODES, &v4_setup(), |_, r| {
        scenario_schedule(NODES, vec![(1_000, 3_000, Fault::Partition, vec![r.leader])])
    });
}

/// Scenario: every frame to and from the leader, which owns the VIP, is delayed 40–80 ms each
/// way, reordered by the jitter, for 4 s: heartbeats, lease renewals and client requests all
/// slow down. Requests through the VIP may time out meanwhile (the client's timeout is 200 ms);
/// the rest of the invariants hold throughout, and the group is whole again after it.
#[test]
fn scenario_delay_and_reordering_on_the_leader() {
    let _serial = serial();
    run_chaos("delay and reordering on the leader", NODES, &v4_setup(), |_, r| {
        let delay = Fault::Delay { ms: 40, jitter_ms: 40 };
        scenario_schedule(NODES, vec![(1_000, 4_000, delay, vec![r.leader])])
    });
}

/// Scenario: the VIP owner's link flaps, down 400 ms and up 600 ms, five times.
#[test]
fn scenario_flapping_link() {
    let _serial = serial();
    run_chaos("flapping link", NODES, &v4_setup(), |_, r| {
        let steps = (0..5)
            .map(|k| (1_000 + k * 1_000, 400, Fault::CutLink, vec![r.owner]))
            .collect();
        scenario_schedule(NODES, steps)
    });
}

/// Scenario: every member is killed at once and started again after 2 s: the group comes back from
/// its disks with every committed change, one leader and one VIP owner.
#[test]
fn scenario_full_cluster_restart() {
    let _serial = serial();
    run_chaos("full-cluster restart", NODES, &v4_setup(), |_, _| {
        scenario_schedule(NODES, vec![(1_000, 2_000, Fault::Kill9, (1..=NODES).collect())])
    });
}

/// Scenario: a five-member group loses two members at once, the leader and the VIP's owner (or
/// another follower): the three left keep a quorum and serve the VIP.
#[test]
fn scenario_five_nodes_lose_two() {
    let _serial = serial();
    run_chaos("5 nodes lose 2", 5, &v4_setup(), |_, r| {
        let mut targets = vec![r.leader, r.a_follower(5)];
        targets.sort_unstable();
        scenario_schedule(5, vec![(1_000, 3_000, Fault::Kill9, targets)])
    });
}

/// Scenario: the Kubernetes API server refuses connections (its watches cut) while the leader is
/// killed: the new leader's source starts against an API server that is down, the members keep
/// serving what they have, and once the API server is back a new Ingress is committed and served.
#[test]
fn scenario_api_server_outage_during_a_leader_change() {
    let _serial = serial();
    let setup = Setup {
        kube: true,
        clock: false,
        ..v4_setup()
    };
    run_chaos("API server outage during a leader change", NODES, &setup, |_, r| {
        scenario_schedule(
            NODES,
            vec![
                (1_000, 3_000, Fault::ApiServerDown, vec![]),
                (1_500, 1_500, Fault::Kill9, vec![r.leader]),
            ],
        )
    });
}
