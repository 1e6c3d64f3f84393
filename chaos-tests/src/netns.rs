//! Root-only network topologies for multi-node tests: hosts in network namespaces on one bridged L2 segment.
//!
//! A [`Topology`] is a "switch" namespace holding a Linux bridge, and one namespace per host — N nodes,
//! a client, a backend and the test API server — each joined to the bridge by a veth pair whose host end is `eth0`.
//! Addresses: IPv4 `10.99.0.0/24` and IPv6 `fd99::/64` (`nodad`), nodes `.1`..`.N` (`fd99::1`…),
//! the client `.201` (`fd99::201`), the backend `.202` (`fd99::202`), the test API server `.203`
//! (`fd99::203`); `lo` is up everywhere. There is no router: every host is on the one segment.
//!
//! Programs run inside a namespace with `ip netns exec` (which execs the program in place, so the
//! child's pid is the program's and signals reach it). The topology owns them: dropping it — also when
//! a test panics — kills every child first, then deletes the namespaces (and with them the bridge and
//! the veth pairs). Namespace and interface names carry the process id and a per-process counter, so
//! tests running at once, or in several processes, never share one.
//!
//! Network faults other than a pulled cable ([`Topology::cut_link`]) are frame filters in the switch: an
//! nftables `bridge` table drops what one port forwards to another ([`Topology::block`]: partitions,
//! one-way cuts) or a random share of a port's frames ([`Topology::set_loss`]). The hosts keep carrier
//! and see only silence, as behind a broken switch or a firewall.
//!
//! [`ProbeLog`] reads the live output of `raftgate-test-probe` (one line per attempt).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::BufRead;
use std::io::BufReader;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdout;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Output;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;

/// What a test prints, and all it does, when it cannot create namespaces.
pub const SKIP_LINE: &str = "skipped: needs root (CAP_NET_ADMIN, CAP_NET_RAW) to create network namespaces";

/// The host number of the client (`10.99.0.201`, `fd99::201`).
pub const CLIENT_HOST: u16 = 201;
/// The host number of the backend (`10.99.0.202`, `fd99::202`).
pub const BACKEND_HOST: u16 = 202;
/// The host number of the test Kubernetes API server (`10.99.0.203`, `fd99::203`).
pub const APISERVER_HOST: u16 = 203;
/// The most nodes a topology may have (host numbers stay below the client's).
pub const MAX_NODES: usize = 99;
/// The IPv4 prefix length of the segment.
pub const V4_PREFIX: u8 = 24;
/// The IPv6 prefix length of the segment.
pub const V6_PREFIX: u8 = 64;
/// The name of every host's interface on the segment.
pub const HOST_IF: &str = "eth0";

/// Linux's limit on interface names, in bytes (`IFNAMSIZ` minus the NUL).
const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why a topology could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started at all (e.g. `ip` is not installed).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A command's output was not what was expected.
    #[error("`{command}`: {message}")]
    Output { command: String, message: String },
    /// A generated interface name does not fit in 15 bytes.
    #[error("interface name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    /// A file (a log, the work directory) could not be made or opened.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A node index out of range, an unknown child, or a request that does not fit the child's state.
    #[error("{0}")]
    Invalid(String),
}

/// True when this process can build topologies: effective uid 0 with `CAP_NET_ADMIN`, `CAP_NET_RAW`
/// and `CAP_SYS_ADMIN` (which `ip netns` needs for its mounts).
pub fn can_create_namespaces() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid_root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const NEEDED: u64 = (1 << 12) | (1 << 13) | (1 << 21); // NET_ADMIN, NET_RAW, SYS_ADMIN
    euid_root && caps & NEEDED == NEEDED
}

/// One host on the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Node `i`, 1-based.
    Node(usize),
    /// The client.
    Client,
    /// The backend.
    Backend,
    /// The test Kubernetes API server.
    ApiServer,
}

impl Host {
    /// Its host number: the last octet of its IPv4 address and the last group of its IPv6 one.
    pub fn number(self) -> u16 {
        match self {
            Host::Node(i) => u16::try_from(i).unwrap_or(u16::MAX),
            Host::Client => CLIENT_HOST,
            Host::Backend => BACKEND_HOST,
            Host::ApiServer => APISERVER_HOST,
        }
    }

    /// Its IPv4 address, `10.99.0.N`.
    pub fn ipv4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, u8::try_from(self.number()).unwrap_or(u8::MAX))
    }

    /// Its IPv6 address, `fd99::N` with N written as in the IPv4 one (`fd99::201` for the client).
    pub fn ipv6(self) -> Ipv6Addr {
        // The decimal host number read as hexadecimal, so both addresses show the same digits.
        let group = u16::from_str_radix(&self.number().to_string(), 16).unwrap_or(u16::MAX);
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, group)
    }

    /// The short role used in names: `n3`, `c`, `b`.
    fn role(self) -> String {
        match self {
            Host::Node(i) => format!("n{i}"),
            Host::Client => "c".into(),
            Host::Backend => "b".into(),
            Host::ApiServer => "a".into(),
        }
    }
}

/// The names of one topology's namespaces and interfaces, unique per process id and counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pid: u32,
    seq: u32,
}

impl Names {
    /// The names for this process's next topology.
    pub fn next() -> Names {
        Names::new(std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// The names for topology `seq` of process `pid`.
    pub fn new(pid: u32, seq: u32) -> Names {
        Names { pid, seq }
    }

    /// A namespace name, e.g. `rgt-4711-0-n1` (`sw` is the switch).
    pub fn namespace(&self, role: &str) -> String {
        format!("rgt-{}-{}-{role}", self.pid, self.seq)
    }

    /// An interface name, e.g. `rg1267-0n1` (pid and counter in hex), refused if over 15 bytes.
    pub fn interface(&self, role: &str) -> Result<String, NetnsError> {
        let name = format!("rg{:x}-{:x}{role}", self.pid, self.seq);
        if name.len() > IFNAME_MAX {
            return Err(NetnsError::NameTooLong(name));
        }
        Ok(name)
    }
}

/// A program started in a namespace by [`Topology::spawn`]; the topology owns the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChildHandle {
    index: usize,
    pid: u32,
}

impl ChildHandle {
    /// The process id (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(self) -> u32 {
        self.pid
    }
}

/// A neighbour table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// The link-layer address, lower case; none while `INCOMPLETE` or `FAILED`.
    pub mac: Option<String>,
    /// The states, e.g. `["REACHABLE"]`, `["STALE"]`.
    pub state: Vec<String>,
}

#[derive(Debug)]
struct Spawned {
    label: String,
    ns: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    piped: bool,
    child: Child,
    exit: Option<ExitStatus>,
}

/// A bridged segment of network namespaces; see the module docs. Deleted on drop.
#[derive(Debug)]
pub struct Topology {
    names: Names,
    nodes: usize,
    /// Namespaces created so far, deleted on drop in reverse order.
    created: Vec<String>,
    dir: tempfile::TempDir,
    children: Mutex<Vec<Spawned>>,
    /// The switch's frame filters by key ([`Topology::block`], [`Topology::set_loss`]).
    filters: Mutex<BTreeMap<String, Vec<String>>>,
    /// File systems mounted by [`Topology::mount_disk`], unmounted on drop.
    mounts: Mutex<Vec<PathBuf>>,
    /// Whether the hosts' checksum and segmentation offloads are off ([`Topology::set_delay`]).
    offloads_off: AtomicBool,
}

impl Topology {
    /// Builds a topology with `nodes` nodes, a client and a backend. Without the privileges
    /// ([`can_create_namespaces`]), prints [`SKIP_LINE`] and returns `None`.
    pub fn new(nodes: usize) -> Result<Option<Topology>, NetnsError> {
        if !can_create_namespaces() {
            #[allow(clippy::print_stdout)] // the test harness shows a test's stdout
            {
                println!("{SKIP_LINE}");
            }
            return Ok(None);
        }
        if nodes == 0 || nodes > MAX_NODES {
            return Err(NetnsError::Invalid(format!("{nodes} nodes: must be 1..={MAX_NODES}")));
        }
        remove_leftovers();
        // The pid in the name lets a later run tell this directory's mounts for leftovers.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|source| NetnsError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let mut topo = Topology {
            names: Names::next(),
            nodes,
            created: Vec::new(),
            dir,
            children: Mutex::new(Vec::new()),
            filters: Mutex::new(BTreeMap::new()),
            mounts: Mutex::new(Vec::new()),
            offloads_off: AtomicBool::new(false),
        };
        // On error `topo` is dropped here, which removes whatever was created.
        topo.build()?;
        Ok(Some(topo))
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let switch = self.switch_ns();
        let bridge = self.names.interface("br")?;
        self.add_namespace(&switch)?;
        ip(["-n", &switch, "link", "set", "lo", "up"])?;
        // No multicast snooping: without an MLD querier it could starve IPv6 neighbour discovery.
        ip([
            "-n",
            &switch,
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(["-n", &switch, "link", "set", &bridge, "up"])?;
        for host in self.hosts() {
            let ns = self.ns(host);
            let port = self.switch_port(host)?;
            let temp = self.names.interface(&format!("{}h", host.role()))?;
            self.add_namespace(&ns)?;
            ip(["-n", &ns, "link", "set", "lo", "up"])?;
            ip([
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", &temp, "netns", &ns,
            ])?;
            ip(["-n", &switch, "link", "set", &port, "master", &bridge, "up"])?;
            ip(["-n", &ns, "link", "set", &temp, "name", HOST_IF])?;
            let v4 = format!("{}/{V4_PREFIX}", host.ipv4());
            let v6 = format!("{}/{V6_PREFIX}", host.ipv6());
            ip(["-n", &ns, "addr", "add", &v4, "dev", HOST_IF])?;
            ip(["-n", &ns, "addr", "add", &v6, "dev", HOST_IF, "nodad"])?;
            ip(["-n", &ns, "link", "set", HOST_IF, "up"])?;
        }
        Ok(())
    }

    /// Every host on the bridge: the nodes, the client, the backend and the API server.
    fn hosts(&self) -> Vec<Host> {
        (1..=self.nodes)
            .map(Host::Node)
            .chain([Host::Client, Host::Backend, Host::ApiServer])
            .collect()
    }

    /// `ip -n SWITCH link ARGS`.
    fn switch_link(&self, args: &[&str]) -> Result<(), NetnsError> {
        let switch = self.switch_ns();
        let mut all = vec!["-n", switch.as_str(), "link"];
        all.extend_from_slice(args);
        ip(all).map(drop)
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), NetnsError> {
        // A namespace of this name can only be left over from a dead process that had our pid.
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        ip(["netns", "add", ns])?;
        self.created.push(ns.to_string());
        Ok(())
    }

    /// Mounts a disk of `bytes` at `path` (made if missing): an ext4 file system of its own, in an
    /// image file beside it on a loop device, for a node's data directory. [`Topology::fill_disk`]
    /// can fill it and [`Topology::fail_disk`] can turn it read-only under a running process.
    /// Unmounted on drop (a loop device mounted this way detaches itself once unmounted).
    pub fn mount_disk(&self, path: &Path, bytes: u64) -> Result<(), NetnsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetnsError::Io { path, source }
        };
        std::fs::create_dir_all(path).map_err(io(path))?;
        let image = disk_image(path);
        let file = std::fs::File::create(&image).map_err(io(&image))?;
        file.set_len(bytes).map_err(io(&image))?;
        drop(file);
        // No journal: the smallest disk, and nothing to replay; no blocks reserved for root (the
        // nodes run as root, and a full disk must be full for them).
        run_checked(
            "mkfs.ext4",
            [
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-O"),
                OsStr::new("^has_journal"),
                OsStr::new("-m"),
                OsStr::new("0"),
                image.as_os_str(),
            ],
        )?;
        mount_image(&image, path)?;
        self.mounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(path.to_path_buf());
        Ok(())
    }

    /// Makes the disk mounted at `dir` (by [`Topology::mount_disk`]) fail as a real one does: ext4
    /// records an error (through its `trigger_fs_error` knob) and, mounted `errors=remount-ro`,
    /// turns read-only at once, open files included. Reads go on working; every write fails with
    /// EROFS until [`Topology::repair_disk`].
    pub fn fail_disk(&self, dir: &Path) -> Result<(), NetnsError> {
        let device = mount_source(dir)?;
        let name = Path::new(&device)
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| NetnsError::Invalid(format!("{} is mounted from {device:?}", dir.display())))?;
        let knob = PathBuf::from(format!("/sys/fs/ext4/{name}/trigger_fs_error"));
        std::fs::write(&knob, "raftgate chaos test: disk failed\n").map_err(|source| NetnsError::Io {
            path: knob.clone(),
            source,
        })?;
        Ok(())
    }

    /// What an operator does after [`Topology::fail_disk`], with the node stopped: unmount, check
    /// with `e2fsck -fy`, mount again, writable.
    ///
    /// The check and the mount are of a copy of the image, on a loop device of its own: every
    /// process started since the disk was mounted (the other nodes, the observers) runs in a mount
    /// namespace of its own, made by `ip netns exec`, that still holds the failed file system,
    /// and mounting the same image again would get that read-only file system back.
    pub fn repair_disk(&self, dir: &Path) -> Result<(), NetnsError> {
        let failed = backing_file(&mount_source(dir)?)?;
        run_checked("umount", [dir.as_os_str()])?;
        let image = next_image(dir);
        std::fs::copy(&failed, &image).map_err(|source| NetnsError::Io {
            path: image.clone(),
            source,
        })?;
        // 0: clean; 1: errors corrected. Anything else leaves the disk unfit to mount.
        run_accepting("e2fsck", [OsStr::new("-fy"), image.as_os_str()], |s| {
            matches!(s.code(), Some(0 | 1))
        })?;
        mount_image(&image, dir)
    }

    /// Fills the file system holding `dir` to the last byte with the file `dir/.fill`, so that
    /// every other write that needs space fails with ENOSPC. Returns the bytes it took.
    pub fn fill_disk(&self, dir: &Path) -> Result<u64, NetnsError> {
        use std::io::Write as _;
        let path = dir.join(FILL_FILE);
        let io = |source| NetnsError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Megabytes while they fit, then pages for the last bit.
        for size in [chunk.len(), 4096] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(io(e)),
                }
            }
        }
        Ok(written)
    }

    /// Gives back what [`Topology::fill_disk`] took.
    pub fn free_disk(&self, dir: &Path) -> Result<(), NetnsError> {
        let path = dir.join(FILL_FILE);
        std::fs::remove_file(&path).map_err(|source| NetnsError::Io { path, source })
    }

    /// How many nodes there are; they are numbered `1..=nodes()`.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// This topology's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A work directory (configs, logs, data) removed with the topology.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The switch namespace (the bridge and the hosts' peer interfaces live there).
    pub fn switch_ns(&self) -> String {
        self.names.namespace("sw")
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        self.names.namespace(&host.role())
    }

    /// The namespace of node `i` (1-based).
    pub fn node_ns(&self, i: usize) -> String {
        self.ns(Host::Node(i))
    }

    /// The client's namespace.
    pub fn client_ns(&self) -> String {
        self.ns(Host::Client)
    }

    /// The backend's namespace.
    pub fn backend_ns(&self) -> String {
        self.ns(Host::Backend)
    }

    /// The test API server's namespace.
    pub fn apiserver_ns(&self) -> String {
        self.ns(Host::ApiServer)
    }

    /// Node `i`'s IPv4 address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Host::Node(i).ipv4()
    }

    /// Node `i`'s IPv6 address.
    pub fn node_ip6(&self, i: usize) -> Ipv6Addr {
        Host::Node(i).ipv6()
    }

    /// The bridge port (in the switch namespace) that `host` hangs off.
    pub fn switch_port(&self, host: Host) -> Result<String, NetnsError> {
        if let Host::Node(i) = host
            && (i == 0 || i > self.nodes)
        {
            return Err(NetnsError::Invalid(format!(
                "no node {i} (nodes are 1..={})",
                self.nodes
            )));
        }
        self.names.interface(&host.role())
    }

    /// The MAC address of `host`'s `eth0`.
    pub fn mac(&self, host: Host) -> Result<String, NetnsError> {
        let ns = self.ns(host);
        let args = ["-n", ns.as_str(), "-j", "link", "show", HOST_IF];
        let links = ip_json(args)?;
        links
            .get(0)
            .and_then(|l| l.get("address"))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| NetnsError::Output {
                command: command_line("ip", &args),
                message: format!("no address in {links}"),
            })
    }

    /// The MAC address of node `i`'s `eth0`.
    pub fn node_mac(&self, i: usize) -> Result<String, NetnsError> {
        self.mac(Host::Node(i))
    }

    /// Cuts node `i` off the segment: its bridge port goes down (its `eth0` loses carrier).
    pub fn cut_link(&self, i: usize) -> Result<(), NetnsError> {
        self.set_link(Host::Node(i), false)
    }

    /// Undoes [`Topology::cut_link`].
    pub fn heal_link(&self, i: usize) -> Result<(), NetnsError> {
        self.set_link(Host::Node(i), true)
    }

    /// Sets `host`'s bridge port up or down.
    pub fn set_link(&self, host: Host, up: bool) -> Result<(), NetnsError> {
        let (switch, port) = (self.switch_ns(), self.switch_port(host)?);
        ip(["-n", &switch, "link", "set", &port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Delays every frame to and from `host` by `delay_ms` plus up to `jitter_ms` (a seeded draw
    /// per frame, so they reorder), each way, until [`Topology::clear_delay`]: the netem fault,
    /// built without netem (the test kernel has none). In the switch, `host`'s bridge port is
    /// renamed aside and left off the bridge, a new veth pair takes the port's name on the bridge
    /// (so the switch's filters, which match port names, still apply), and `relay` (the
    /// `raftgate-test-delay` binary) relays between the two, logging to `log`. Frames in flight
    /// while the ports are swapped are lost.
    pub fn set_delay(
        &self,
        host: Host,
        delay_ms: u64,
        jitter_ms: u64,
        seed: u64,
        relay: &Path,
        log: &Path,
    ) -> Result<ChildHandle, NetnsError> {
        let switch = self.switch_ns();
        let bridge = self.names.interface("br")?;
        let port = self.switch_port(host)?;
        let parked = self.names.interface(&format!("{}o", host.role()))?;
        let relay_end = self.names.interface(&format!("{}r", host.role()))?;
        let mac = self.mac(host)?;
        // The relay copies frames as they are: a checksum left to the NIC (on veths, never filled
        // in) or a segment larger than the MTU would not survive the copy. Every host computes its
        // own checksums and segments from the first delay on.
        if !self.offloads_off.swap(true, Ordering::SeqCst) {
            for h in self.hosts() {
                let off = ["tx", "off", "tso", "off", "gso", "off"];
                let ns = self.ns(h);
                let mut args = vec!["netns", "exec", ns.as_str(), "ethtool", "-K", HOST_IF];
                args.extend(off);
                run_checked("ip", args)?;
            }
        }
        let link = |args: &[&str]| self.switch_link(args);
        link(&["set", &port, "nomaster"])?;
        link(&["set", &port, "down"])?;
        link(&["set", &port, "name", &parked])?;
        link(&["add", &port, "type", "veth", "peer", "name", &relay_end])?;
        link(&["set", &port, "master", &bridge, "up"])?;
        link(&["set", &relay_end, "up"])?;
        link(&["set", &parked, "up"])?;
        let args = [
            "--node-side".to_string(),
            parked,
            "--switch-side".to_string(),
            relay_end,
            "--mac".to_string(),
            mac,
            "--delay-ms".to_string(),
            delay_ms.to_string(),
            "--jitter-ms".to_string(),
            jitter_ms.to_string(),
            "--seed".to_string(),
            seed.to_string(),
        ];
        let handle = self.spawn(&switch, relay, args, &[], log)?;
        // Relaying once it says so (both sockets open), or failed if it exits first.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains("relaying")) {
                return Ok(handle);
            }
            if let Some(status) = self.exit_status(handle)? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                return Err(NetnsError::Invalid(format!(
                    "the delay relay exited ({status}): {text}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(NetnsError::Invalid("the delay relay did not start within 5 s".into()));
            }
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
    }

    /// Undoes [`Topology::set_delay`]: stops the relay and puts `host`'s own port back on the bridge.
    pub fn clear_delay(&self, host: Host, relay: ChildHandle) -> Result<(), NetnsError> {
        self.kill9(relay)?;
        let bridge = self.names.interface("br")?;
        let port = self.switch_port(host)?;
        let parked = self.names.interface(&format!("{}o", host.role()))?;
        let link = |args: &[&str]| self.switch_link(args);
        // Deleting one end of the relay's pair deletes both.
        link(&["del", &port])?;
        link(&["set", &parked, "down"])?;
        link(&["set", &parked, "name", &port])?;
        link(&["set", &port, "master", &bridge, "up"])?;
        Ok(())
    }

    /// Drops every frame the bridge would forward from `from` to `to` (one direction; ARP and
    /// neighbour discovery included): the link stays up, packets vanish, as in a partition.
    pub fn block(&self, from: Host, to: Host) -> Result<(), NetnsError> {
        let (a, b) = (self.switch_port(from)?, self.switch_port(to)?);
        self.set_filter(
            format!("block {a} {b}"),
            vec![format!("iifname \"{a}\" oifname \"{b}\" drop")],
        )
    }

    /// Undoes [`Topology::block`].
    pub fn unblock(&self, from: Host, to: Host) -> Result<(), NetnsError> {
        let (a, b) = (self.switch_port(from)?, self.switch_port(to)?);
        self.set_filter(format!("block {a} {b}"), Vec::new())
    }

    /// Drops `pct` percent of the frames to and from `host` at random (each direction on its own);
    /// 0 ends it. (Loss is done in the switch with nftables: the test kernel has no `sch_netem`.)
    pub fn set_loss(&self, host: Host, pct: u8) -> Result<(), NetnsError> {
        if pct > 100 {
            return Err(NetnsError::Invalid(format!("{pct}% loss")));
        }
        let port = self.switch_port(host)?;
        let rules = if pct == 0 {
            Vec::new()
        } else {
            ["iifname", "oifname"]
                .iter()
                .map(|dir| match pct {
                    // `numgen random mod 100` is 0..=99: 100 is every frame.
                    100 => format!("{dir} \"{port}\" drop"),
                    _ => format!("{dir} \"{port}\" numgen random mod 100 < {pct} drop"),
                })
                .collect()
        };
        self.set_filter(format!("loss {port}"), rules)
    }

    /// Sets (or, with no rules, removes) the filter rules under `key`, and loads the switch's whole
    /// table again in one nftables transaction.
    fn set_filter(&self, key: String, rules: Vec<String>) -> Result<(), NetnsError> {
        let mut filters = self.filters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rules.is_empty() {
            filters.remove(&key);
        } else {
            filters.insert(key, rules);
        }
        // `add` then `delete` empties a table whether or not it existed, in the same transaction.
        let mut script = String::from(
            "add table bridge raftgate_chaos\ndelete table bridge raftgate_chaos\n\
             table bridge raftgate_chaos {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n",
        );
        for rule in filters.values().flatten() {
            let _ = writeln!(script, "    {rule}");
        }
        script.push_str("  }\n}\n");
        let path = self.dir().join("nft-switch.rules");
        std::fs::write(&path, script).map_err(|source| NetnsError::Io {
            path: path.clone(),
            source,
        })?;
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("nft").is_file()));
        if !on_path {
            return Err(NetnsError::Invalid(
                "no `nft` on PATH (Debian package nftables; scripts/test.sh installs it as root)".into(),
            ));
        }
        let switch = self.switch_ns();
        let file = path.display().to_string();
        run_checked("ip", ["netns", "exec", &switch, "nft", "-f", &file])?;
        Ok(())
    }

    /// The neighbour entry for `addr` in `ns`, if there is one.
    pub fn neigh(&self, ns: &str, addr: IpAddr) -> Result<Option<Neighbor>, NetnsError> {
        let addr = addr.to_string();
        let entries = ip_json(["-n", ns, "-j", "neigh", "show", &addr])?;
        let Some(e) = entries.as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        Ok(Some(Neighbor {
            mac: e.get("lladdr").and_then(Value::as_str).map(str::to_ascii_lowercase),
            state: e
                .get("state")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
        }))
    }

    /// Empties `ns`'s IPv4 and IPv6 neighbour tables.
    pub fn flush_neigh(&self, ns: &str) -> Result<(), NetnsError> {
        ip(["-n", ns, "-4", "neigh", "flush", "dev", HOST_IF])?;
        ip(["-n", ns, "-6", "neigh", "flush", "dev", HOST_IF])?;
        Ok(())
    }

    /// Every address in `ns`, with its interface: `("eth0", 10.99.0.1)`, `("lo", ::1)`…
    pub fn addrs(&self, ns: &str) -> Result<Vec<(String, IpAddr)>, NetnsError> {
        let args = ["-n", ns, "-j", "addr", "show"];
        let links = ip_json(args)?;
        let mut out = Vec::new();
        for link in links.as_array().into_iter().flatten() {
            let Some(ifname) = link.get("ifname").and_then(Value::as_str) else {
                continue;
            };
            for a in link.get("addr_info").and_then(Value::as_array).into_iter().flatten() {
                if let Some(local) = a.get("local").and_then(Value::as_str) {
                    let ip = local.parse().map_err(|e| NetnsError::Output {
                        command: command_line("ip", &args),
                        message: format!("address {local:?}: {e}"),
                    })?;
                    out.push((ifname.to_string(), ip));
                }
            }
        }
        Ok(out)
    }

    /// Whether `ns` has `addr` on interface `ifname`.
    pub fn has_addr(&self, ns: &str, ifname: &str, addr: IpAddr) -> Result<bool, NetnsError> {
        Ok(self.addrs(ns)?.iter().any(|(i, a)| i == ifname && *a == addr))
    }

    /// The nodes (1-based) among `nodes` whose `eth0` has `addr`.
    pub fn nodes_with_addr(&self, nodes: &[usize], addr: IpAddr) -> Result<Vec<usize>, NetnsError> {
        let mut out = Vec::new();
        for &i in nodes {
            if self.has_addr(&self.node_ns(i), HOST_IF, addr)? {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Runs `program args` in `ns` to completion and returns what it printed (whatever its status).
    pub fn run_in<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I) -> Result<Output, NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program.as_ref()).args(args);
        let line = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|source| NetnsError::Spawn { command: line, source })
    }

    /// Starts `program args` in `ns` with `env` added, stdout and stderr appended to `log`. The
    /// topology kills it on drop.
    pub fn spawn<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<ChildHandle, NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (handle, _) = self.start(ns, program.as_ref().to_os_string(), args, env, log.to_path_buf(), false)?;
        Ok(handle)
    }

    /// Like [`Topology::spawn`], with stdout piped to the caller instead (stderr still goes to `log`).
    pub fn spawn_piped<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<(ChildHandle, ChildStdout), NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (handle, stdout) = self.start(ns, program.as_ref().to_os_string(), args, env, log.to_path_buf(), true)?;
        let stdout = stdout.ok_or_else(|| NetnsError::Invalid("the child's stdout was not piped".into()))?;
        Ok((handle, stdout))
    }

    /// Starts `raftgate-test-probe` (at `program`) in `ns` with `args`, stderr to `log`, and reads its attempts.
    pub fn spawn_probe<I, S>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: I,
        log: &Path,
    ) -> Result<(ChildHandle, ProbeLog), NetnsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let started = Instant::now();
        let (handle, stdout) = self.spawn_piped(ns, program, args, &[], log)?;
        Ok((handle, ProbeLog::read(stdout, started)))
    }

    /// Starts `handle`'s command again (it must have exited, e.g. by [`Topology::kill9`]), appending
    /// to the same log. Not for children with piped stdout.
    pub fn respawn(&self, handle: ChildHandle) -> Result<ChildHandle, NetnsError> {
        let (ns, program, args, env, log) = {
            let mut children = self.children();
            let s = entry(&mut children, handle)?;
            if s.piped {
                return Err(NetnsError::Invalid(format!(
                    "{} has piped stdout: spawn it anew",
                    s.label
                )));
            }
            if s.exit.is_none() && s.child.try_wait().ok().flatten().is_none() {
                return Err(NetnsError::Invalid(format!(
                    "{} (pid {}) still runs",
                    s.label, handle.pid
                )));
            }
            (
                s.ns.clone(),
                s.program.clone(),
                s.args.clone(),
                s.env.clone(),
                s.log.clone(),
            )
        };
        let (handle, _) = self.start(&ns, program, args, env, log, false)?;
        Ok(handle)
    }

    fn start(
        &self,
        ns: &str,
        program: OsString,
        args: Vec<OsString>,
        env: Vec<(String, String)>,
        log: PathBuf,
        piped: bool,
    ) -> Result<(ChildHandle, Option<ChildStdout>), NetnsError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| NetnsError::Io {
                    path: log.clone(),
                    source,
                })
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(&program).args(&args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let line = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).stderr(open()?);
        if piped {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(open()?);
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| NetnsError::Spawn { command: line, source })?;
        let stdout = child.stdout.take();
        let name = Path::new(&program)
            .file_name()
            .map_or_else(|| program.to_string_lossy(), |n| n.to_string_lossy())
            .into_owned();
        let mut children = self.children();
        let handle = ChildHandle {
            index: children.len(),
            pid: child.id(),
        };
        children.push(Spawned {
            label: format!("{name} in {ns} (pid {})", handle.pid),
            ns: ns.to_string(),
            program,
            args,
            env,
            log,
            piped,
            child,
            exit: None,
        });
        Ok((handle, stdout))
    }

    fn children(&self) -> MutexGuard<'_, Vec<Spawned>> {
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kills `handle` with SIGKILL and reaps it.
    pub fn kill9(&self, handle: ChildHandle) -> Result<ExitStatus, NetnsError> {
        let mut children = self.children();
        let s = entry(&mut children, handle)?;
        if let Some(status) = s.exit {
            return Ok(status);
        }
        // An error here means it already exited; `wait` reaps it either way.
        let _ = s.child.kill();
        let status = s.child.wait().map_err(|source| NetnsError::Io {
            path: PathBuf::from(format!("/proc/{}", handle.pid)),
            source,
        })?;
        s.exit = Some(status);
        Ok(status)
    }

    /// Sends SIGTERM to `handle` and waits up to `timeout` for it to exit (a graceful stop).
    pub fn terminate(&self, handle: ChildHandle, timeout: std::time::Duration) -> Result<ExitStatus, NetnsError> {
        self.signal(handle, "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(handle)? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(NetnsError::Invalid(format!(
                    "pid {} did not exit within {timeout:?} of SIGTERM",
                    handle.pid
                )));
            }
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
    }

    /// Stops `handle` with SIGSTOP (it keeps its sockets and addresses but does nothing).
    pub fn sigstop(&self, handle: ChildHandle) -> Result<(), NetnsError> {
        self.signal(handle, "STOP")
    }

    /// Resumes a stopped `handle` with SIGCONT.
    pub fn sigcont(&self, handle: ChildHandle) -> Result<(), NetnsError> {
        self.signal(handle, "CONT")
    }

    fn signal(&self, handle: ChildHandle, signal: &str) -> Result<(), NetnsError> {
        if !self.is_running(handle)? {
            return Err(NetnsError::Invalid(format!("pid {} has exited", handle.pid)));
        }
        let pid = handle.pid.to_string();
        run_checked("kill", ["-s", signal, pid.as_str()])?;
        Ok(())
    }

    /// Whether `handle` still runs (reaping it if it has exited).
    pub fn is_running(&self, handle: ChildHandle) -> Result<bool, NetnsError> {
        Ok(self.exit_status(handle)?.is_none())
    }

    /// How `handle` ended, or `None` while it runs.
    pub fn exit_status(&self, handle: ChildHandle) -> Result<Option<ExitStatus>, NetnsError> {
        let mut children = self.children();
        let s = entry(&mut children, handle)?;
        if s.exit.is_none() {
            s.exit = s.child.try_wait().map_err(|source| NetnsError::Io {
                path: PathBuf::from(format!("/proc/{}", handle.pid)),
                source,
            })?;
        }
        Ok(s.exit)
    }

    /// The last `lines` lines of `handle`'s log.
    pub fn log_tail(&self, handle: ChildHandle, lines: usize) -> Result<String, NetnsError> {
        let path = entry(&mut self.children(), handle)?.log.clone();
        let text = std::fs::read_to_string(&path).map_err(|source| NetnsError::Io { path, source })?;
        Ok(tail(&text, lines))
    }

    /// The last `lines` lines of the log of every child whose program's file name is `program`
    /// (every child if `None`), each under a header naming it and saying whether it still runs.
    pub fn logs(&self, program: Option<&str>, lines: usize) -> String {
        let mut out = String::new();
        let mut children = self.children();
        let mut seen = std::collections::HashSet::new();
        for s in children.iter_mut() {
            let name = Path::new(&s.program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            if program.is_some_and(|p| name.as_deref() != Some(p)) {
                continue;
            }
            if s.exit.is_none() {
                s.exit = s.child.try_wait().ok().flatten();
            }
            let state = s.exit.map_or_else(|| "running".to_string(), |st| st.to_string());
            let _ = writeln!(out, "===== {} [{state}], log {}", s.label, s.log.display());
            // A respawned child shares its log with its predecessors: show it once.
            if seen.insert(s.log.clone()) {
                let text = std::fs::read_to_string(&s.log).unwrap_or_else(|e| format!("(unreadable: {e})\n"));
                out.push_str(&tail(&text, lines));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                let _ = writeln!(out, "(same log as above)");
            }
        }
        out
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let children = self
            .children
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in children.iter_mut().filter(|s| s.exit.is_none()) {
            // SIGKILL also ends stopped processes.
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let mounts = self.mounts.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for path in mounts.iter().rev() {
            unmount(path);
        }
        for ns in self.created.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The start of a topology's work directory name, followed by the pid that made it.
const DIR_PREFIX: &str = "raftgate-netns-";

/// The file [`Topology::fill_disk`] fills a disk with.
const FILL_FILE: &str = ".fill";

/// The first image file of the disk mounted at `dir`: `dir.img`.
fn disk_image(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_os_string();
    name.push(".img");
    PathBuf::from(name)
}

/// A name for the next image of the disk at `dir` (after a repair): `dir.K.img`, the first unused.
fn next_image(dir: &Path) -> PathBuf {
    (1u32..)
        .map(|k| {
            let mut name = dir.as_os_str().to_os_string();
            name.push(format!(".{k}.img"));
            PathBuf::from(name)
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| disk_image(dir))
}

/// The file behind loop `device` (`/dev/loopN`).
fn backing_file(device: &str) -> Result<PathBuf, NetnsError> {
    let name = Path::new(device)
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| NetnsError::Invalid(format!("{device:?} is not a loop device")))?;
    let knob = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
    let text = std::fs::read_to_string(&knob).map_err(|source| NetnsError::Io { path: knob, source })?;
    Ok(PathBuf::from(text.trim_end()))
}

/// Mounts the ext4 `image` at `dir` through a loop device, turning read-only on an error.
fn mount_image(image: &Path, dir: &Path) -> Result<(), NetnsError> {
    run_checked(
        "mount",
        [
            OsStr::new("-o"),
            OsStr::new("loop,errors=remount-ro"),
            image.as_os_str(),
            dir.as_os_str(),
        ],
    )?;
    Ok(())
}

/// The device mounted at `dir` (the last mount there), from `/proc/self/mountinfo`.
fn mount_source(dir: &Path) -> Result<String, NetnsError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|source| NetnsError::Io {
        path: info.to_path_buf(),
        source,
    })?;
    let want = dir.to_string_lossy();
    // `id parent major:minor root mount-point options… - fstype source super-options`
    text.lines()
        .rev()
        .filter(|l| l.split_whitespace().nth(4) == Some(want.as_ref()))
        .find_map(|l| l.split_once(" - ").and_then(|(_, rest)| rest.split_whitespace().nth(1)))
        .map(str::to_string)
        .ok_or_else(|| NetnsError::Invalid(format!("nothing is mounted at {}", dir.display())))
}

/// Unmounts `path`, lazily: a process that still has a file open there does not keep it.
fn unmount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether process `pid` is alive.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what topologies of processes that no longer run left behind when they were killed
/// before their drop could run: their namespaces (`rgt-<pid>-…`, and with them their bridges,
/// veths and filters) and the disks mounted under their work directories. Once per process.
fn remove_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .stderr(Stdio::null())
            .output();
        let listed = listed
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = ns
                .strip_prefix("rgt-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !alive(pid)) {
                let _ = Command::new("ip")
                    .args(["netns", "del", ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let tmp = std::env::temp_dir();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            // The topology directory the mount is in: `<tmp>/raftgate-netns-<pid>-<random>`.
            let Some(top) = Path::new(point)
                .strip_prefix(&tmp)
                .ok()
                .and_then(|rest| rest.components().next())
                .and_then(|c| c.as_os_str().to_str())
            else {
                continue;
            };
            let pid = top
                .strip_prefix(DIR_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !alive(pid)) {
                unmount(Path::new(point));
                let _ = std::fs::remove_dir_all(tmp.join(top));
            }
        }
    });
}

fn entry(children: &mut [Spawned], handle: ChildHandle) -> Result<&mut Spawned, NetnsError> {
    children
        .get_mut(handle.index)
        .filter(|s| s.child.id() == handle.pid)
        .ok_or_else(|| NetnsError::Invalid(format!("no child {handle:?} in this topology")))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skipped > 0 {
        let _ = writeln!(out, "({skipped} earlier lines not shown)");
    }
    for l in &all[skipped..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}

/// Runs `program args` (in this namespace), failing unless it exits 0; returns its stdout.
pub fn run_checked<I, S>(program: &str, args: I) -> Result<String, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_accepting(program, args, ExitStatus::success)
}

/// Runs `program args` (in this namespace), failing unless `ok` accepts how it exited; returns
/// its stdout.
fn run_accepting<I, S>(program: &str, args: I, ok: impl Fn(&ExitStatus) -> bool) -> Result<String, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let command = command_line(program, &args);
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !ok(&out.status) {
        return Err(NetnsError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args`, failing unless it exits 0; returns its stdout.
pub fn ip<I, S>(args: I) -> Result<String, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_checked("ip", args)
}

/// Runs `ip args` (which should include `-j`) and parses its JSON output; empty output is `[]`.
pub fn ip_json<I, S>(args: I) -> Result<Value, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let text = ip(&args)?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| NetnsError::Output {
        command: command_line("ip", &args),
        message: format!("not JSON ({e}): {text}"),
    })
}

/// One attempt reported by `raftgate-test-probe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAttempt {
    /// When the attempt started, in ms since the probe started.
    pub at_ms: u64,
    /// When this process read the line (the attempt had ended by then).
    pub received: Instant,
    /// `Ok((status, first body line))`, or `Err(reason)`.
    pub result: Result<(u16, String), String>,
}

impl ProbeAttempt {
    /// Parses `<ms> ok <status> <first body line>` or `<ms> err <reason>`.
    pub fn parse(line: &str, received: Instant) -> Option<ProbeAttempt> {
        let (ms, rest) = line.trim_end_matches(['\r', '\n']).split_once(' ')?;
        let at_ms = ms.parse().ok()?;
        let result = if let Some(rest) = rest.strip_prefix("ok ") {
            let (status, body) = rest.split_once(' ').unwrap_or((rest, ""));
            Ok((status.parse().ok()?, body.to_string()))
        } else {
            Err(rest.strip_prefix("err").map_or(rest, str::trim_start).to_string())
        };
        Some(ProbeAttempt {
            at_ms,
            received,
            result,
        })
    }

    /// Whether it got status 200 with `body` as the first body line.
    pub fn is_ok_with(&self, body: &str) -> bool {
        matches!(&self.result, Ok((200, b)) if b == body)
    }
}

/// The attempts of a running `raftgate-test-probe`, read live from its stdout by a thread.
#[derive(Clone, Debug)]
pub struct ProbeLog {
    started: Instant,
    attempts: Arc<Mutex<Vec<ProbeAttempt>>>,
    unparsed: Arc<Mutex<Vec<String>>>,
}

impl ProbeLog {
    /// Starts reading `stdout` of a probe spawned after `started` (taken just before spawning it).
    pub fn read(stdout: ChildStdout, started: Instant) -> ProbeLog {
        let log = ProbeLog {
            started,
            attempts: Arc::default(),
            unparsed: Arc::default(),
        };
        let (attempts, unparsed) = (log.attempts.clone(), log.unparsed.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match ProbeAttempt::parse(&line, Instant::now()) {
                    Some(a) => attempts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(a),
                    None => unparsed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line),
                }
            }
        });
        log
    }

    /// Just before the probe was spawned (by this process's clock; the probe's own clock starts a little later).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// `at` in the probe's ms, rounded up: an attempt with a larger `at_ms` surely started after `at`.
    pub fn ms_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.started);
        u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// Every attempt read so far, in the order the lines came.
    pub fn attempts(&self) -> Vec<ProbeAttempt> {
        self.attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Lines that were not attempts (there should be none).
    pub fn unparsed(&self) -> Vec<String> {
        self.unparsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last `n` attempts, one per line, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let all = self.attempts();
        let mut out = String::new();
        for a in &all[all.len().saturating_sub(n)..] {
            let _ = match &a.result {
                Ok((status, body)) => writeln!(out, "{} ok {status} {body}", a.at_ms),
                Err(e) => writeln!(out, "{} err {e}", a.at_ms),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_differ() {
        let mut seen = std::collections::HashSet::new();
        // The largest pid Linux hands out (pid_max is at most 2^22) and many topologies per process.
        for (pid, seq) in [(1, 0), (4_194_304, 0), (4_194_304, 255), (123_456, 17), (12, 3456)] {
            let names = Names::new(pid, seq);
            for role in ["br", "n1", "n1h", "n99", "n99h", "c", "ch", "b", "bh"] {
                let name = names.interface(role).unwrap();
                assert!(name.len() <= IFNAME_MAX, "{name}");
                assert!(seen.insert(name.clone()), "{name} twice");
            }
            let ns: std::collections::HashSet<String> = ["sw", "n1", "n2", "c", "b"]
                .iter()
                .map(|r| names.namespace(r))
                .collect();
            assert_eq!(ns.len(), 5);
            assert!(ns.iter().all(|n| n.contains(&pid.to_string())));
        }
        // Too many topologies in one process is refused rather than truncated.
        assert!(matches!(
            Names::new(4_194_304, 0xfffff).interface("n99h"),
            Err(NetnsError::NameTooLong(_))
        ));
        // Consecutive topologies of one process differ.
        let (a, b) = (Names::next(), Names::next());
        assert_ne!(a.namespace("sw"), b.namespace("sw"));
        assert_ne!(a.interface("br").unwrap(), b.interface("br").unwrap());
    }

    #[test]
    fn host_addresses_share_their_digits() {
        assert_eq!(Host::Node(3).ipv4(), Ipv4Addr::new(10, 99, 0, 3));
        assert_eq!(Host::Node(3).ipv6().to_string(), "fd99::3");
        assert_eq!(Host::Client.ipv4().to_string(), "10.99.0.201");
        assert_eq!(Host::Client.ipv6().to_string(), "fd99::201");
        assert_eq!(Host::Backend.ipv6().to_string(), "fd99::202");
    }

    #[test]
    fn probe_lines_parse() {
        let now = Instant::now();
        let ok = ProbeAttempt::parse("120 ok 200 backend", now).unwrap();
        assert_eq!(ok.at_ms, 120);
        assert!(ok.is_ok_with("backend"));
        let empty = ProbeAttempt::parse("7 ok 503 ", now).unwrap();
        assert_eq!(empty.result, Ok((503, String::new())));
        let err = ProbeAttempt::parse("140 err connect: Connection refused (os error 111)", now).unwrap();
        assert_eq!(err.result, Err("connect: Connection refused (os error 111)".into()));
        assert!(!err.is_ok_with("backend"));
        assert_eq!(ProbeAttempt::parse("listening", now), None);
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "(1 earlier lines not shown)\nb\nc\n");
        assert_eq!(tail("a\n", 5), "a\n");
    }
}
