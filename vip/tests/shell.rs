//! Root-only tests of the VIP shell in real network namespaces joined by a veth pair.
//!
//! Each test builds its own namespaces (owner and peer), then re-executes this test binary
//! inside the owner namespace (`ip netns exec`) with `RAFTGATE_SHELL_CHILD` set; the child runs
//! the shell and checks the kernel state and the peer's neighbour table with `ip`. The guard
//! deletes the namespaces (and with them the veth pair) even if the test panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raftgate_vip::Action;
use raftgate_vip::Decision;
use raftgate_vip::Hold;
use raftgate_vip::Millis;
use raftgate_vip::Mode;
use raftgate_vip::Pool;
use raftgate_vip::Timing;
use raftgate_vip::VipSpec;
use raftgate_vip::shell::Shell;
use raftgate_vip::shell::ShellError;
use raftgate_vip::shell::announce;
use raftgate_vip::shell::remove_all;
use serde_json::Value;

const CHILD: &str = "RAFTGATE_SHELL_CHILD";
const SKIP: &str = "skipped: needs root (CAP_NET_ADMIN, CAP_NET_RAW) to create network namespaces";
const OTHER_MAC: &str = "02:00:00:00:00:99";
const V4_VIP: &str = "10.77.0.100";
const V6_VIP: &str = "fd77::100";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Runs `ip ARGS`, panicking with its stderr if it fails; returns stdout.
fn ip(args: &[&str]) -> String {
    let out = match Command::new("ip").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("the `ip` command (iproute2) is needed to build test namespaces and could not run: {e}"),
    };
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair, both ends up, deleted on drop.
struct Topo {
    owner_ns: String,
    peer_ns: String,
    owner_if: String,
    peer_if: String,
}

impl Topo {
    /// `None` (after printing why) when not root.
    fn new() -> Option<Self> {
        if !is_root() {
            println!("{SKIP}");
            return None;
        }
        let (pid, n) = (std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let topo = Self {
            owner_ns: format!("rgvip-o-{pid}-{n}"),
            peer_ns: format!("rgvip-p-{pid}-{n}"),
            owner_if: format!("rgo{pid}n{n}"),
            peer_if: format!("rgp{pid}n{n}"),
        };
        assert!(topo.owner_if.len() <= 15 && topo.peer_if.len() <= 15);
        let (o, p) = (topo.owner_ns.as_str(), topo.peer_ns.as_str());
        let (a, b) = (topo.owner_if.as_str(), topo.peer_if.as_str());
        ip(&["netns", "add", o]);
        ip(&["netns", "add", p]);
        ip(&["-n", o, "link", "add", a, "type", "veth", "peer", "name", b, "netns", p]);
        ip(&["-n", o, "addr", "add", "10.77.0.1/24", "dev", a]);
        ip(&["-n", p, "addr", "add", "10.77.0.2/24", "dev", b]);
        ip(&["-n", o, "addr", "add", "fd77::1/64", "dev", a, "nodad"]);
        ip(&["-n", p, "addr", "add", "fd77::2/64", "dev", b, "nodad"]);
        for (ns, dev) in [(o, "lo"), (o, a), (p, "lo"), (p, b)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        Some(topo)
    }

    /// Runs test `name` again inside the owner namespace, in child mode, and asserts it passed.
    fn run_child(&self, name: &str) {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.owner_ns])
            .arg(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("RG_OWNER_IF", &self.owner_if)
            .env("RG_PEER_NS", &self.peer_ns)
            .env("RG_PEER_IF", &self.peer_if)
            .output()
            .expect("ip netns exec");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        println!("--- child stdout\n{stdout}\n--- child stderr\n{stderr}");
        assert!(out.status.success(), "child {name} failed: {stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "child {name} ran no test: {stdout}");
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.owner_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// What the child knows of the topology.
struct Env {
    owner_if: String,
    peer_ns: String,
    peer_if: String,
}

fn child_env() -> Option<Env> {
    std::env::var_os(CHILD)?;
    let var = |k: &str| std::env::var(k).unwrap();
    Some(Env {
        owner_if: var("RG_OWNER_IF"),
        peer_ns: var("RG_PEER_NS"),
        peer_if: var("RG_PEER_IF"),
    })
}

/// Runs the test `name`: in the parent, builds a fresh topology and re-runs this test inside
/// the owner namespace; there (the child), runs `body`.
fn in_namespaces<F: Future<Output = ()>>(name: &str, body: impl FnOnce(Env) -> F) {
    if let Some(env) = child_env() {
        return block_on(body(env));
    }
    if let Some(topo) = Topo::new() {
        topo.run_child(name);
    }
}

/// Runs a child body on a current-thread runtime.
fn block_on<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// Polls `cond` every 50 ms for at most `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pool(env: &Env, vip: &str, prefix: u8) -> Pool {
    Pool::new(vec![VipSpec {
        addr: vip.parse().unwrap(),
        prefix,
        interface: Some(env.owner_if.clone()),
    }])
    .unwrap()
}

fn decision(actions: Vec<Action>, held: &[(IpAddr, Mode)], lft: Option<u32>) -> Decision {
    Decision {
        held: held
            .iter()
            .map(|(vip, mode)| {
                let hold = Hold {
                    mode: *mode,
                    since: Millis(0),
                    announcements: 1,
                    last_announced: None,
                };
                (*vip, hold)
            })
            .collect(),
        actions,
        valid_lft_secs: lft,
        ..Decision::default()
    }
}

/// `(prefixlen, valid_life_time, tentative)` of `vip` on `dev` in this (the owner) namespace.
fn addr_on(dev: &str, vip: IpAddr) -> Option<(u64, u64, bool)> {
    let json: Value = serde_json::from_str(&ip(&["-j", "addr", "show", "dev", dev])).unwrap();
    json.as_array()?
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .find(|a| a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(vip))
        .map(|a| {
            (
                a["prefixlen"].as_u64().unwrap(),
                a["valid_life_time"].as_u64().unwrap(),
                a["tentative"].as_bool().unwrap_or(false),
            )
        })
}

fn mac_of(dev: &str) -> String {
    let json: Value = serde_json::from_str(&ip(&["-j", "link", "show", "dev", dev])).unwrap();
    json[0]["address"].as_str().unwrap().to_string()
}

fn link_up(dev: &str) -> bool {
    let json: Value = serde_json::from_str(&ip(&["-j", "link", "show", "dev", dev])).unwrap();
    json[0]["operstate"].as_str() == Some("UP")
}

fn family(vip: IpAddr) -> &'static str {
    if vip.is_ipv4() { "-4" } else { "-6" }
}

/// The peer's neighbour entry for `vip`: its link-layer address, if any.
fn peer_lladdr(env: &Env, vip: IpAddr) -> Option<String> {
    let vip = vip.to_string();
    let out = ip(&[
        family(vip.parse().unwrap()),
        "-n",
        &env.peer_ns,
        "-j",
        "neigh",
        "show",
        &vip,
        "dev",
        &env.peer_if,
    ]);
    let json: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    json.as_array()?.first()?["lladdr"].as_str().map(str::to_string)
}

/// Points the peer's entry for `vip` at another MAC, as a stale entry a gratuitous ARP /
/// unsolicited NA may override.
fn peer_points_elsewhere(env: &Env, vip: IpAddr) {
    let vip = vip.to_string();
    ip(&[
        "-n",
        &env.peer_ns,
        "neigh",
        "replace",
        &vip,
        "lladdr",
        OTHER_MAC,
        "dev",
        &env.peer_if,
        "nud",
        "stale",
    ]);
}

/// Waits until both ends are up and IPv6 is configured on the peer (its multicast route exists:
/// before that, the peer drops an NA to ff02::1 as unroutable).
async fn wait_link(env: &Env) {
    let ready = || {
        let peer_link = ip(&["-n", &env.peer_ns, "-j", "link", "show", "dev", &env.peer_if]);
        let peer_routes = ip(&[
            "-6",
            "-n",
            &env.peer_ns,
            "route",
            "show",
            "table",
            "local",
            "dev",
            &env.peer_if,
        ]);
        link_up(&env.owner_if) && peer_link.contains("\"operstate\":\"UP\"") && peer_routes.contains("ff00::/8")
    };
    assert!(wait_for(Duration::from_secs(5), ready).await, "veth never came up");
}

#[test]
fn v4_activate_announce_renew_release() {
    in_namespaces("v4_activate_announce_renew_release", v4_child);
}

async fn v4_child(env: Env) {
    let vip: IpAddr = V4_VIP.parse().unwrap();
    let dev = env.owner_if.as_str();
    wait_link(&env).await;
    let mac = mac_of(dev);
    peer_points_elsewhere(&env, vip);
    assert_eq!(peer_lladdr(&env, vip).as_deref(), Some(OTHER_MAC));

    let mut shell = Shell::new(pool(&env, V4_VIP, 24), Timing::default()).unwrap();
    let activate = Action::Activate { vip, from_quiet: false };
    shell
        .apply(&decision(vec![activate], &[(vip, Mode::Active)], Some(30)))
        .await
        .unwrap();
    let (prefix, valid, _) = addr_on(dev, vip).expect("VIP on the interface after Activate");
    assert_eq!(prefix, 24);
    assert!(valid > 0 && valid <= 30, "valid_lft {valid} not within the lease");
    // On the wire: the first announcement moved the peer's entry to the owner's MAC.
    let moved = wait_for(Duration::from_secs(3), || {
        peer_lladdr(&env, vip).as_deref() == Some(mac.as_str())
    })
    .await;
    assert!(moved, "peer neighbour entry {:?}, want {mac}", peer_lladdr(&env, vip));

    // Each gratuitous ARP form on its own moves the peer's entry.
    let mac_addr = announce::interface(dev).unwrap().mac.unwrap();
    for form in [announce::GarpForm::Request, announce::GarpForm::Reply] {
        peer_points_elsewhere(&env, vip);
        let IpAddr::V4(v4) = vip else { unreachable!() };
        announce::send_frames(dev, &[announce::garp_frame(mac_addr, v4, form)]).unwrap();
        let moved = wait_for(Duration::from_secs(3), || {
            peer_lladdr(&env, vip).as_deref() == Some(mac.as_str())
        })
        .await;
        assert!(moved, "{form:?}: peer neighbour entry {:?}", peer_lladdr(&env, vip));
    }

    // Renewal while held re-adds with the new lifetime.
    shell
        .apply(&decision(vec![], &[(vip, Mode::Active)], Some(90)))
        .await
        .unwrap();
    let (_, valid, _) = addr_on(dev, vip).unwrap();
    assert!(valid > 30 && valid <= 90, "renewed valid_lft {valid}");
    // A refresh announcement.
    peer_points_elsewhere(&env, vip);
    shell
        .apply(&decision(
            vec![Action::Announce { vip }],
            &[(vip, Mode::Active)],
            Some(90),
        ))
        .await
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || peer_lladdr(&env, vip).as_deref()
            == Some(mac.as_str()))
        .await
    );

    shell
        .apply(&decision(vec![Action::Release { vip }], &[], None))
        .await
        .unwrap();
    assert_eq!(addr_on(dev, vip), None, "VIP still on the interface after Release");
    assert_eq!(addr_on("lo", vip), None);
    assert!(
        addr_on(dev, "10.77.0.1".parse().unwrap()).is_some(),
        "the interface's own address is gone"
    );
}

#[test]
fn kernel_lifetime_removes_unrenewed_address() {
    in_namespaces("kernel_lifetime_removes_unrenewed_address", lifetime_child);
}

async fn lifetime_child(env: Env) {
    let dev = env.owner_if.as_str();
    wait_link(&env).await;
    for (vip, prefix) in [(V4_VIP, 24), (V6_VIP, 64)] {
        let vip_ip: IpAddr = vip.parse().unwrap();
        let mut shell = Shell::new(pool(&env, vip, prefix), Timing::default()).unwrap();
        let activate = Action::Activate {
            vip: vip_ip,
            from_quiet: false,
        };
        shell
            .apply(&decision(vec![activate], &[(vip_ip, Mode::Active)], Some(1)))
            .await
            .unwrap();
        let (_, valid, _) = addr_on(dev, vip_ip).expect("VIP added");
        assert!(valid <= 1, "valid_lft {valid}");
        // No renewal: the kernel removes it by itself.
        let gone = wait_for(Duration::from_secs(10), || addr_on(dev, vip_ip).is_none()).await;
        assert!(gone, "{vip} still present after its lifetime");
    }
}

#[test]
fn v6_nodad_and_unsolicited_na() {
    in_namespaces("v6_nodad_and_unsolicited_na", v6_child);
}

async fn v6_child(env: Env) {
    let vip: IpAddr = V6_VIP.parse().unwrap();
    let dev = env.owner_if.as_str();
    wait_link(&env).await;
    let mac = mac_of(dev);
    peer_points_elsewhere(&env, vip);
    assert_eq!(peer_lladdr(&env, vip).as_deref(), Some(OTHER_MAC));

    let mut shell = Shell::new(pool(&env, V6_VIP, 64), Timing::default()).unwrap();
    let activate = Action::Activate { vip, from_quiet: false };
    shell
        .apply(&decision(vec![activate], &[(vip, Mode::Active)], Some(30)))
        .await
        .unwrap();
    let (prefix, valid, tentative) = addr_on(dev, vip).expect("VIP on the interface");
    assert_eq!(prefix, 64);
    assert!(valid > 0 && valid <= 30, "valid_lft {valid}");
    assert!(!tentative, "IPv6 VIP is tentative: DAD was not skipped");
    let moved = wait_for(Duration::from_secs(3), || {
        peer_lladdr(&env, vip).as_deref() == Some(mac.as_str())
    })
    .await;
    assert!(moved, "peer neighbour entry {:?}, want {mac}", peer_lladdr(&env, vip));

    shell
        .apply(&decision(vec![Action::Release { vip }], &[], None))
        .await
        .unwrap();
    assert_eq!(addr_on(dev, vip), None);
}

#[test]
fn quiesce_moves_to_lo_and_back() {
    in_namespaces("quiesce_moves_to_lo_and_back", quiesce_child);
}

async fn quiesce_child(env: Env) {
    let vip: IpAddr = V4_VIP.parse().unwrap();
    let dev = env.owner_if.as_str();
    wait_link(&env).await;
    let mut shell = Shell::new(pool(&env, V4_VIP, 24), Timing::default()).unwrap();
    let activate = Action::Activate { vip, from_quiet: false };
    shell
        .apply(&decision(vec![activate], &[(vip, Mode::Active)], Some(30)))
        .await
        .unwrap();
    for (key, want) in [("arp_ignore", "1"), ("arp_announce", "2"), ("promote_secondaries", "1")] {
        let got = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/{key}")).unwrap();
        assert_eq!(got.trim(), want, "{key}");
    }

    shell
        .apply(&decision(
            vec![Action::Quiesce { vip }],
            &[(vip, Mode::Quiet)],
            Some(20),
        ))
        .await
        .unwrap();
    assert_eq!(addr_on(dev, vip), None, "quiet VIP still on the interface");
    let (prefix, valid, _) = addr_on("lo", vip).expect("quiet VIP on lo");
    assert_eq!(prefix, 32);
    assert!(valid > 0 && valid <= 20, "valid_lft {valid}");

    let activate = Action::Activate { vip, from_quiet: true };
    shell
        .apply(&decision(vec![activate], &[(vip, Mode::Active)], Some(30)))
        .await
        .unwrap();
    assert!(addr_on(dev, vip).is_some());
    assert_eq!(addr_on("lo", vip), None);

    assert_eq!(shell.release_all().await.unwrap(), 1);
    assert_eq!(addr_on(dev, vip), None);
}

#[test]
fn remove_all_clears_stale_pool_addresses() {
    in_namespaces("remove_all_clears_stale_pool_addresses", remove_all_child);
}

async fn remove_all_child(env: Env) {
    let dev = env.owner_if.as_str();
    // What a crashed process would leave: an active VIP, a quiet one and an IPv6 one, forever.
    ip(&["addr", "add", "10.77.0.100/24", "dev", dev]);
    ip(&["addr", "add", "10.77.0.101/32", "dev", "lo"]);
    ip(&["addr", "add", "fd77::100/64", "dev", dev, "nodad"]);
    let specs = ["10.77.0.100", "10.77.0.101", "fd77::100", "10.77.0.102"]
        .iter()
        .map(|a| VipSpec {
            addr: a.parse().unwrap(),
            prefix: if a.contains(':') { 64 } else { 24 },
            interface: Some(env.owner_if.clone()),
        })
        .collect();
    let pool = Pool::new(specs).unwrap();
    assert_eq!(remove_all(&pool).unwrap(), 3);
    for a in pool.addrs() {
        assert_eq!(addr_on(dev, a), None, "{a} left on {dev}");
        assert_eq!(addr_on("lo", a), None, "{a} left on lo");
    }
    assert!(
        addr_on(dev, "10.77.0.1".parse().unwrap()).is_some(),
        "removed a non-pool address"
    );
    assert_eq!(remove_all(&pool).unwrap(), 0);
}

#[test]
fn missing_capabilities_are_refused_with_a_reason() {
    if std::env::var_os(CHILD).is_some() {
        match Shell::new(Pool::default(), Timing::default()) {
            Err(ShellError::MissingCapability { missing }) => {
                assert_eq!(missing, "CAP_NET_ADMIN and CAP_NET_RAW");
            }
            other => panic!("want MissingCapability, got {other:?}"),
        }
        return;
    }
    if !is_root() {
        // Without privileges the refusal is the real outcome here too.
        match Shell::new(Pool::default(), Timing::default()) {
            Err(ShellError::MissingCapability { .. }) => println!("{SKIP} (checked the refusal as non-root)"),
            other => panic!("want MissingCapability, got {other:?}"),
        }
        return;
    }
    // Root: drop both capabilities from the bounding set, so the re-executed child lacks them.
    let exe = std::env::current_exe().unwrap();
    let out = match Command::new("setpriv")
        .args(["--bounding-set=-net_admin,-net_raw", "--"])
        .arg(exe)
        .args([
            "--exact",
            "missing_capabilities_are_refused_with_a_reason",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: setpriv (util-linux) is needed to drop capabilities: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
