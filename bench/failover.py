#!/usr/bin/env python3
"""VIP failover benchmark: raftgate against keepalived, the same network-namespace topology, one run.

A "switch" namespace with a bridge, 3 node namespaces and a client namespace (10.97.0.0/24, nodes
.1-.3, client .201, VIP 10.97.0.100/24). A probe in the client namespace opens a new TCP
connection to VIP:8080 every 20 ms (100 ms connect+read timeout) and asks GET /healthz. A run
kills the VIP owner (raftgate: SIGKILL to the owner's `raftgate run`; keepalived: SIGKILL to the
MASTER's keepalived) and measures the time from the kill to the first successful request that
started after it. Then ARP checks from the client namespace (an ARP request for the VIP every
10 ms, every reply recorded): raftgate kill -9, raftgate SIGSTOP (SIGCONT after 2 s) and
keepalived kill -9.

Usage: bench/failover.sh (builds the release binary, checks for root, installs keepalived, then
runs this). Helper modes, run inside the client namespace by this script:
  failover.py probe VIP PORT          stream "start end ok reason" lines
  failover.py arpwatch IFACE MYIP VIP SECONDS
"""
import atexit, errno, fcntl, json, os, random, select, selectors, signal, socket, struct, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from raft import pct  # bench/raft.py, beside this file

SUBNET = "10.97.0"
VIP = f"{SUBNET}.100"
CLIENT_IP = f"{SUBNET}.201"
PORT = 8080
ADMIN = "127.0.0.1:10254"
RUNS = int(os.environ.get("RUNS", "20"))
SPLIT = os.environ.get("SPLIT", "1") == "1"  # raftgate: alternate leader / non-leader owners
PROBE_INTERVAL = 0.020
PROBE_TIMEOUT = 0.100
ARP_INTERVAL = 0.010
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: vip.test\r\nConnection: close\r\n\r\n"


# ---------------------------------------------------------------------------------------------
# Helper modes (run inside the client namespace)

def probe_main(host, port):
    """Every 20 ms a new connection; one line per attempt: start end ok reason (CLOCK_MONOTONIC)."""
    sel = selectors.DefaultSelector()
    live = {}  # socket -> [start, buffer]
    out = sys.stdout

    def finish(s, ok, why):
        start = live.pop(s)[0]
        try:
            sel.unregister(s)
        except Exception:
            pass
        if not ok:  # abort: RST, no TIME_WAIT pile-up on the client
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        out.write(f"{start:.6f} {time.monotonic():.6f} {1 if ok else 0} {why}\n")
        out.flush()

    nxt = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= nxt:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            live[s] = [now, b""]
            err = s.connect_ex((host, port))
            if err in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE)
            else:
                finish(s, False, errno.errorcode.get(err, str(err)))
            nxt += PROBE_INTERVAL
            if nxt < now:
                nxt = now + PROBE_INTERVAL
        for s, st in list(live.items()):
            if now - st[0] >= PROBE_TIMEOUT:
                finish(s, False, "timeout")
        wait = nxt - time.monotonic()
        if live:
            wait = min(wait, min(st[0] for st in live.values()) + PROBE_TIMEOUT - time.monotonic())
        for key, ev in sel.select(max(0.0, wait)):
            s = key.fileobj
            if s not in live:
                continue
            if ev & selectors.EVENT_WRITE and live[s][1] == b"" and sel.get_key(s).events == selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(s, False, errno.errorcode.get(err, str(err)))
                    continue
                try:
                    s.send(REQUEST)
                except OSError as e:
                    finish(s, False, errno.errorcode.get(e.errno, str(e)))
                    continue
                live[s][1] = b" "  # request sent; the buffer holds " " + response
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(4096)
            except OSError as e:
                finish(s, False, errno.errorcode.get(e.errno, str(e)))
                continue
            live[s][1] += data
            resp = live[s][1][1:]
            if len(resp) >= 12 or not data:
                code = resp[9:12].decode(errors="replace") if resp.startswith(b"HTTP/1.") else "eof"
                finish(s, code == "200", "ok" if code == "200" else f"http-{code}")


def arpwatch_main(iface, myip, vip, seconds):
    """An ARP request for VIP every 10 ms for SECONDS; prints 'S t' per request and
    'R t op sender_mac gratuitous' per ARP packet whose sender address is VIP."""
    eth_p_arp = 0x0806
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_arp))
    s.bind((iface, eth_p_arp))
    mac = open(f"/sys/class/net/{iface}/address").read().strip()
    mac_b = bytes.fromhex(mac.replace(":", ""))
    vip_b = socket.inet_aton(vip)
    frame = (b"\xff" * 6 + mac_b + struct.pack("!H", eth_p_arp)
             + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_b, socket.inet_aton(myip), b"\0" * 6, vip_b))
    s.setblocking(False)
    out = []
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= nxt:
            s.send(frame)
            out.append(f"S {now:.6f}")
            nxt += ARP_INTERVAL
        r, _, _ = select.select([s], [], [], max(0.0, min(nxt, end) - time.monotonic()))
        while r:
            try:
                data, addr = s.recvfrom(2048)
            except BlockingIOError:
                break
            t = time.monotonic()
            if addr[2] == socket.PACKET_OUTGOING or len(data) < 42:
                continue
            htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", data[14:22])
            sha, spa, tha, tpa = data[22:28], data[28:32], data[32:38], data[38:42]
            if spa != vip_b:
                continue
            out.append(f"R {t:.6f} {op} {sha.hex(':')} {1 if tpa == vip_b else 0}")
    print("\n".join(out))
    print(f"M {mac}")
    sys.stdout.flush()


if len(sys.argv) > 1 and sys.argv[1] == "probe":
    probe_main(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)
if len(sys.argv) > 1 and sys.argv[1] == "arpwatch":
    arpwatch_main(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# Topology and processes

def sh(*args, check=True, capture=True):
    r = subprocess.run(args, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE if capture else subprocess.DEVNULL, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {(r.stderr or '').strip()}")
    return r.stdout if capture else ""


class Topology:
    """switch namespace with a bridge; n1..n3 and the client, each on a veth whose inside end is eth0."""

    def __init__(self, tag):
        pid = os.getpid()
        self.switch = f"rgfo{pid}{tag}-sw"
        self.nodes = [f"rgfo{pid}{tag}-n{i}" for i in (1, 2, 3)]
        self.client = f"rgfo{pid}{tag}-c"
        self.bridge = f"br{pid}"[:15]
        self.procs = []  # every Popen started in these namespaces
        self.created = []

    def all(self):
        return [self.switch] + self.nodes + [self.client]

    def up(self):
        for ns in self.all():
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", self.bridge, "up")
        pid = os.getpid()
        for k, (ns, ip) in enumerate([(n, f"{SUBNET}.{i}") for i, n in enumerate(self.nodes, 1)] + [(self.client, CLIENT_IP)]):
            port = f"v{pid}p{k}"[:15]
            sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.switch, "link", "set", port, "master", self.bridge)
            sh("ip", "-n", self.switch, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        wait_for(lambda: all("state UP" in sh("ip", "-n", ns, "link", "show", "eth0") for ns in self.nodes + [self.client]),
                 "veths up", timeout=10, every=0.05)

    def popen(self, ns, argv, log, env=None):
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT if log is not subprocess.PIPE else subprocess.DEVNULL,
                             env=env, text=True)
        self.procs.append(p)
        return p

    def mac(self, ns):
        return sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/address").strip()

    def holders(self):
        """Node indexes (0-based) whose eth0 carries the VIP."""
        return [i for i, ns in enumerate(self.nodes)
                if f" {VIP}/" in " " + sh("ip", "-n", ns, "-br", "addr", "show", "eth0")]

    def down(self):
        # Processes first (everything still in our namespaces, by pid), then the namespaces.
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT); p.kill()
                except ProcessLookupError:
                    pass
        for ns in self.created:
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGCONT); os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        for ns in self.created:
            while sh("ip", "netns", "pids", ns, check=False).split() and time.monotonic() < deadline:
                time.sleep(0.05)
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []
        self.procs = []


class Probe:
    """The HTTP probe in the client namespace, its lines collected by a thread."""

    def __init__(self, topo):
        self.lock = threading.Lock()
        self.records = []  # (start, end, ok, why)
        self.proc = topo.popen(topo.client, [sys.executable, "-u", os.path.abspath(__file__), "probe", VIP, str(PORT)],
                               subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            a, b, ok, why = line.split()
            with self.lock:
                self.records.append((float(a), float(b), ok == "1", why))

    def since(self, t):
        with self.lock:
            return [r for r in self.records if r[0] >= t]

    def first_ok_after(self, t):
        oks = [r for r in self.since(t) if r[2]]
        return min(oks, key=lambda r: r[1]) if oks else None

    def healthy(self, window=0.5):
        """Every attempt that started in the last `window` seconds (and has finished) succeeded."""
        now = time.monotonic()
        recent = [r for r in self.since(now - window - PROBE_TIMEOUT) if r[0] <= now - PROBE_TIMEOUT]
        return len(recent) >= int(window / PROBE_INTERVAL) - 3 and all(r[2] for r in recent)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class VipMonitor:
    """`ip monitor address` in each node namespace: (time, node, 'add'|'del') for the VIP. An add
    line also comes with every lifetime renewal, so 'the first add on node X after t' is when X
    took the VIP if it did not hold it at t."""

    def __init__(self, topo):
        self.lock = threading.Lock()
        self.events = []
        self.procs = []
        for i, ns in enumerate(topo.nodes):
            p = topo.popen(ns, ["ip", "monitor", "address", "dev", "eth0"], subprocess.PIPE)
            self.procs.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i, p):
        for line in p.stdout:
            t = time.monotonic()
            if f" {VIP}/" in line:
                with self.lock:
                    self.events.append((t, i, "del" if line.startswith("Deleted") else "add"))

    def first(self, t, node=None, kind="add", exclude=None):
        with self.lock:
            for ev in self.events:
                if ev[0] >= t and ev[2] == kind and (node is None or ev[1] == node) and ev[1] != exclude:
                    return ev
        return None

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def wait_for(cond, what, timeout=60, every=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout} s: {what}")


MANIFESTS = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 80, targetPort: 10254}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
ports: [{name: http, port: 10254, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: raftgate
  rules:
  - host: vip.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


class Raftgate:
    """Three raftgate members with the VIP pool, default raft and VIP timing."""

    def __init__(self, topo, binary, root, logs):
        self.topo, self.bin, self.root, self.logs = topo, binary, root, logs
        self.procs = {}
        os.makedirs(f"{root}/manifests", exist_ok=True)
        open(f"{root}/manifests/web.yaml", "w").write(MANIFESTS)
        self.cfgs = []
        for i in (1, 2, 3):
            join = "[]" if i == 1 else f'["{SUBNET}.1:7946"]'
            cfg = (f"node_id: n{i}\n"
                   f"listen: {{http: \"0.0.0.0:{PORT}\", https: \"0.0.0.0:8443\"}}\n"
                   f"admin: {{listen: \"{ADMIN}\"}}\n"
                   f"source: {{kind: manifests, path: \"{root}/manifests\", poll_interval: 100ms}}\n"
                   f"raft: {{id: {i}, listen: \"{SUBNET}.{i}:7946\", data_dir: \"{root}/n{i}\", insecure: true, join: {join}}}\n"
                   f"vip:\n  addresses: [{{addr: {VIP}, prefix: 24, interface: eth0}}]\n")
            path = f"{root}/n{i}.yaml"
            open(path, "w").write(cfg)
            self.cfgs.append(path)

    def start(self, i):
        log = open(f"{self.logs}/raftgate-n{i + 1}.log", "a")
        log.write(f"=== start at monotonic {time.monotonic():.6f}\n"); log.flush()
        env = dict(os.environ, RUST_LOG="info")
        self.procs[i] = self.topo.popen(self.topo.nodes[i], [self.bin, "run", "--config", self.cfgs[i]], log, env)

    def ctl(self, i, *args):
        out = sh("ip", "netns", "exec", self.topo.nodes[i], self.bin, "ctl", "--admin", ADMIN, *args, "--json")
        return json.loads(out)

    def vips(self, i):
        return self.ctl(i, "vips")

    def owner(self):
        """(owner index, owner is the Raft leader) when all three agree, else None."""
        views = [self.vips(i) for i in range(3)]
        owners = set()
        for v in views:
            st = v["vips"][0]["state"]
            if st.get("state") != "owned":
                return None
            owners.add(st["owner"])
        if len(owners) != 1:
            return None
        o = owners.pop() - 1
        return o, bool(views[o]["leader"])

    def stable(self, probe):
        """All three members reachable with one leader, one agreed owner holding the address, the
        probe succeeding."""
        for i in range(3):
            st = self.ctl(i, "status")
            ms = st["members"]
            if len(ms) != 3 or any("error" in m and m["error"] for m in ms) or any(not m.get("status") for m in ms):
                return False
            if len({m["status"].get("leader") for m in ms}) != 1:
                return False
        o = self.owner()
        if o is None or self.topo.holders() != [o[0]]:
            return False
        return probe.healthy()

    def steer(self, want_leader):
        """Makes the VIP owner the Raft leader (want_leader) or a follower, with `ctl drain` /
        `undrain` (make-before-break) when it is not already; True if it had to move it."""
        owner, is_leader = self.owner()
        if is_leader == want_leader:
            return False
        leader = [i for i in range(3) if self.vips(i)["leader"]][0]
        drained = [i for i in range(3) if i != leader] if want_leader else [leader]
        for d in drained:
            sh("ip", "netns", "exec", self.topo.nodes[leader], self.bin, "ctl", "--admin", ADMIN, "drain", str(d + 1))

        def moved():
            o = self.owner()
            return o is not None and o[1] == want_leader
        wait_for(moved, "VIP owner moved by ctl drain", timeout=30)
        for d in drained:
            sh("ip", "netns", "exec", self.topo.nodes[leader], self.bin, "ctl", "--admin", ADMIN, "undrain", str(d + 1))
        return True

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        t = time.monotonic()
        os.kill(p.pid, sig)
        return t

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()


class Keepalived:
    """keepalived (VRRP only) on each node, state BACKUP with priorities 100/99/98 (preempt on, the
    default), advert_int 1; raftgate without raft/vip on each node serves HTTP on the VIP."""

    def __init__(self, topo, binary, root, logs):
        self.topo, self.bin, self.root, self.logs = topo, binary, root, logs
        self.ka, self.web = {}, {}
        os.makedirs(f"{root}/manifests", exist_ok=True)
        open(f"{root}/manifests/web.yaml", "w").write(MANIFESTS)
        for i in range(3):
            open(f"{root}/web{i + 1}.yaml", "w").write(
                f"node_id: web{i + 1}\nlisten: {{http: \"0.0.0.0:{PORT}\", https: null}}\n"
                f"admin: {{listen: \"{ADMIN}\"}}\n"
                f"source: {{kind: manifests, path: \"{root}/manifests\", poll_interval: 100ms}}\n")
            open(f"{root}/keepalived{i + 1}.conf", "w").write(
                f"global_defs {{\n  router_id n{i + 1}\n}}\n"
                f"vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 97\n"
                f"  priority {100 - i}\n  advert_int 1\n"
                f"  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n}}\n")

    def start_web(self, i):
        log = open(f"{self.logs}/web-n{i + 1}.log", "a")
        env = dict(os.environ, RUST_LOG="info")
        self.web[i] = self.topo.popen(self.topo.nodes[i], [self.bin, "run", "--config", f"{self.root}/web{i + 1}.yaml"], log, env)

    def start(self, i):
        r = f"{self.root}/keepalived{i + 1}"
        for ext in ("pid", "vrrp.pid", "chk.pid"):
            try:
                os.unlink(f"{r}.{ext}")
            except FileNotFoundError:
                pass
        log = open(f"{self.logs}/keepalived-n{i + 1}.log", "a")
        log.write(f"=== start at monotonic {time.monotonic():.6f}\n"); log.flush()
        # -P: VRRP only; own pid files per instance; -G: no syslog; -n -l -D: foreground, console, detail.
        self.ka[i] = self.topo.popen(self.topo.nodes[i],
                                     ["keepalived", "-n", "-l", "-D", "-G", "-P", "-f", f"{r}.conf", "-p", f"{r}.pid",
                                      "-r", f"{r}.vrrp.pid", "-c", f"{r}.chk.pid"], log)

    def vrrp_pid(self, i):
        return int(open(f"{self.root}/keepalived{i + 1}.vrrp.pid").read().split()[0])

    def kill(self, i, web=False):
        """SIGKILL to the node's keepalived parent and its VRRP child at the same instant (SIGKILL to
        the parent alone is no crash: the VRRP child gets SIGTERM from the kernel (parent-death
        signal) and hands over gracefully); with web=True also to the node's web server."""
        child = self.vrrp_pid(i)
        t = time.monotonic()
        os.kill(self.ka[i].pid, signal.SIGKILL)
        os.kill(child, signal.SIGKILL)
        if web:
            os.kill(self.web[i].pid, signal.SIGKILL)
        return t

    def stable(self, probe, since):
        h = self.topo.holders()
        return len(h) == 1 and h[0] == 0 and probe.healthy() and time.monotonic() - since > 1.0

    def stop_all(self):
        for p in list(self.ka.values()) + list(self.web.values()):
            if p.poll() is None:
                p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------
# ARP checks

def arp_check(topo, fault, restore, owner, label, after=4.0, before=0.5):
    """Runs the ARP watcher in the client namespace from `before` s before the fault to `after` s
    after it; returns the analysis of the 2 s after the fault and of 2 s to `after`."""
    old_mac = topo.mac(topo.nodes[owner])
    macs = {topo.mac(ns): f"n{i + 1}" for i, ns in enumerate(topo.nodes)}
    w = subprocess.Popen(["ip", "netns", "exec", topo.client, sys.executable, os.path.abspath(__file__), "arpwatch", "eth0",
                          CLIENT_IP, VIP, str(before + after + 0.3)], stdout=subprocess.PIPE, text=True)
    topo.procs.append(w)
    time.sleep(before + 0.15)
    t0 = fault()
    if restore:
        restore(t0)
    out, _ = w.communicate()
    sends, replies, garps = [], [], []
    for line in out.splitlines():
        f = line.split()
        if f[0] == "S":
            sends.append(float(f[1]) - t0)
        elif f[0] == "R":
            (garps if f[4] == "1" else replies).append((float(f[1]) - t0, f[3]))

    def analyse(lo, hi):
        wins = [(a, b) for a, b in zip(sends, sends[1:] + [sends[-1] + ARP_INTERVAL]) if lo <= a < hi]
        conflicts, unanswered = [], 0
        for a, b in wins:
            got = {m for t, m in replies if a <= t < b}
            if len(got) > 1:
                conflicts.append((round(a * 1000, 1), sorted(macs.get(m, m) for m in got)))
            if not got:
                unanswered += 1
        old = [t for t, m in replies if m == old_mac and lo <= t < hi]
        new = [t for t, m in replies if m != old_mac and lo <= t < hi]
        new_g = [t for t, m in garps if m != old_mac and lo <= t < hi]
        return {"windows": len(wins), "conflict_windows": len(conflicts), "conflicts_first": conflicts[:5],
                "unanswered_windows": unanswered,
                "old_last_reply_ms": round(max(old) * 1000, 1) if old else None,
                "old_replies": len(old),
                "new_first_reply_ms": round(min(new) * 1000, 1) if new else None,
                "new_macs": sorted({macs.get(m, m) for t, m in replies if m != old_mac and lo <= t < hi}),
                "new_first_garp_ms": round(min(new_g) * 1000, 1) if new_g else None}

    pre = analyse(-before, 0)
    return {"check": label, "old_owner": f"n{owner + 1}", "before_fault_macs": sorted(
        {macs.get(m, m) for t, m in replies if t < 0}), "first_2s": analyse(0, 2.0), "later": analyse(2.0, after), "later_until_s": after,
        "pre_conflicts": pre["conflict_windows"]}


def fmt_arp(r):
    a, b = r["first_2s"], r["later"]

    def ms(x):
        return "never" if x is None else f"{x:.1f} ms"
    lines = [f"{r['check']} (owner before: {r['old_owner']}, answering before the fault: {','.join(r['before_fault_macs']) or 'none'}):",
             f"  0-2 s after the fault: {a['windows']} request windows, {a['conflict_windows']} with replies from two MACs"
             + (f" (first: {a['conflicts_first'][0][0]} ms {a['conflicts_first'][0][1]})" if a['conflicts_first'] else "")
             + f", {a['unanswered_windows']} unanswered",
             f"  old MAC ({r['old_owner']}): last reply at {ms(a['old_last_reply_ms'])} ({a['old_replies']} replies after the fault)",
             f"  new MAC ({','.join(a['new_macs']) or '-'}): first reply at {ms(a['new_first_reply_ms'])}, first gratuitous ARP at {ms(a['new_first_garp_ms'])}",
             f"  2-{r['later_until_s']:g} s after the fault: {b['conflict_windows']} windows with two MACs, old MAC replies {b['old_replies']}"
             + (f" (last at {ms(b['old_last_reply_ms'])})" if b['old_replies'] else "")
             + f", new MAC(s) answering: {','.join(b['new_macs']) or 'none'}"
             + (f" (first reply at {ms(b['new_first_reply_ms'])}, first gratuitous ARP at {ms(b['new_first_garp_ms'])})"
               if b['new_macs'] and not a['new_macs'] else "")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The benchmark

TOPOS = []


def cleanup():
    while TOPOS:
        TOPOS.pop().down()


def log(msg):
    print(msg, flush=True)


def stats(xs):
    if not xs:
        return None
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": max(xs), "runs": len(xs)}


def raftgate_phase(binary, root, logs, res):
    topo = Topology("r"); TOPOS.append(topo); topo.up()
    rg = Raftgate(topo, binary, f"{root}/raftgate", logs)
    for i in range(3):
        rg.start(i)
    probe, mon = Probe(topo), VipMonitor(topo)
    stable = lambda: rg.stable(probe)
    wait_for(stable, "raftgate: 3 members, one VIP owner, the probe succeeding", timeout=90)
    for k in range(RUNS):
        wait_for(stable, "raftgate: 3 members again and a VIP owner", timeout=90)
        steered = False
        if SPLIT:  # alternate: odd runs kill an owner that is the leader, even runs one that is not
            steered = rg.steer(want_leader=k % 2 == 0)
            if steered:
                wait_for(stable, "raftgate: stable after moving the VIP", timeout=90)
        time.sleep(random.uniform(0.5, 1.5))
        owner, leader = rg.owner()
        t = rg.kill(owner)
        wait_for(lambda: probe.first_ok_after(t), "raftgate: a successful request after the kill", timeout=30, every=0.02)
        ok = probe.first_ok_after(t)
        time.sleep(0.2)
        added = mon.first(t, kind="add", exclude=owner)
        removed = mon.first(t, node=owner, kind="del")
        fails = [r for r in probe.since(t) if not r[2] and r[0] < ok[0]]
        rg.procs[owner].wait()
        rg.start(owner)
        wait_for(stable, "raftgate: 3 members again and a VIP owner", timeout=90)
        new = rg.owner()
        run = {"run": k + 1, "killed": f"n{owner + 1}", "killed_was_leader": leader, "owner_moved_by_drain": steered,
               "failover_ms": round((ok[1] - t) * 1000, 1),
               "failed_requests": len(fails), "fail_reasons": sorted({r[3] for r in fails}),
               "vip_removed_from_old_ms": round((removed[0] - t) * 1000, 1) if removed else None,
               "vip_added_on_new_ms": round((added[0] - t) * 1000, 1) if added else None,
               "new_owner": f"n{added[1] + 1}" if added else None, "owner_after_restart": f"n{new[0] + 1}" if new else None}
        res["raftgate_runs"].append(run)
        log(f"raftgate run {k + 1}/{RUNS}: killed n{owner + 1} ({'leader' if leader else 'follower'}), "
            f"first success after {run['failover_ms']} ms ({len(fails)} failed), VIP removed from it at "
            f"{run['vip_removed_from_old_ms']} ms, added on {run['new_owner']} at {run['vip_added_on_new_ms']} ms")
    # ARP checks: (a) kill -9 of the owner, (b) SIGSTOP of it, SIGCONT after 2 s.
    wait_for(stable, "raftgate: stable before the ARP check", timeout=90); time.sleep(1)
    owner, leader = rg.owner()
    r = arp_check(topo, lambda: rg.kill(owner), None, owner,
                  f"raftgate kill -9 of the owner's raftgate run ({'the Raft leader' if leader else 'not the leader'})")
    r["killed_was_leader"] = leader
    res["arp"].append(r); log(fmt_arp(r))
    rg.procs[owner].wait(); rg.start(owner)
    wait_for(stable, "raftgate: stable before the SIGSTOP check", timeout=90); time.sleep(1)
    owner, leader = rg.owner()
    pid = rg.procs[owner].pid

    def cont(t0):
        threading.Thread(target=lambda: (time.sleep(max(0.0, t0 + 2.0 - time.monotonic())), os.kill(pid, signal.SIGCONT)),
                         daemon=True).start()
    r = arp_check(topo, lambda: rg.kill(owner, signal.SIGSTOP), cont, owner,
                  f"raftgate SIGSTOP of the owner's raftgate run, SIGCONT after 2 s ({'the Raft leader' if leader else 'not the leader'})")
    r["stopped_was_leader"] = leader
    res["arp"].append(r); log(fmt_arp(r))
    wait_for(stable, "raftgate: stable after SIGCONT", timeout=90)
    o = rg.owner()
    r["owner_after"] = f"n{o[0] + 1}"
    log(f"  after SIGCONT: n{owner + 1} still running: {rg.procs[owner].poll() is None}; VIP owner n{o[0] + 1}")
    probe.stop(); mon.stop(); rg.stop_all()
    TOPOS.remove(topo); topo.down()


def keepalived_phase(binary, root, logs, res):
    topo = Topology("k"); TOPOS.append(topo); topo.up()
    ka = Keepalived(topo, binary, f"{root}/keepalived", logs)
    for i in range(3):
        ka.start_web(i)
    for i in range(3):
        ka.start(i)
    since = time.monotonic()
    probe, mon = Probe(topo), VipMonitor(topo)
    wait_for(lambda: ka.stable(probe, since), "keepalived: n1 MASTER, the probe succeeding", timeout=60)
    for variant, key in (("web", "keepalived_runs"), ("daemon", "keepalived_daemon_only_runs")):
        for k in range(RUNS):
            wait_for(lambda: ka.stable(probe, since), "keepalived: exactly one node (n1) holds the VIP", timeout=60)
            time.sleep(random.uniform(0.5, 1.5))
            owner = topo.holders()[0]
            t = ka.kill(owner, web=variant == "web")
            wait_for(lambda: probe.first_ok_after(t) and mon.first(t, kind="add", exclude=owner),
                     "keepalived: a successful request and a new MASTER after the kill", timeout=30, every=0.02)
            ok = probe.first_ok_after(t)
            added = mon.first(t, kind="add", exclude=owner)
            fails = [r for r in probe.since(t) if not r[2] and r[0] < ok[0]]
            ka.ka[owner].wait()
            if variant == "web":
                ka.web[owner].wait(); ka.start_web(owner)
            ka.start(owner)
            since = time.monotonic()
            run = {"run": k + 1, "killed": f"n{owner + 1}", "killed_web_server": variant == "web",
                   "failover_ms": round((ok[1] - t) * 1000, 1), "failed_requests": len(fails),
                   "fail_reasons": sorted({r[3] for r in fails}),
                   "vip_added_on_new_ms": round((added[0] - t) * 1000, 1), "new_owner": f"n{added[1] + 1}"}
            res[key].append(run)
            log(f"keepalived ({'keepalived + web server' if variant == 'web' else 'keepalived only'}) run {k + 1}/{RUNS}: "
                f"killed n{owner + 1}, first success after {run['failover_ms']} ms ({len(fails)} failed), "
                f"VIP added on {run['new_owner']} at {run['vip_added_on_new_ms']} ms")
    # ARP check: kill -9 of the MASTER's keepalived (parent and VRRP child).
    wait_for(lambda: ka.stable(probe, since), "keepalived: stable before the ARP check", timeout=60); time.sleep(1)
    owner = topo.holders()[0]
    r = arp_check(topo, lambda: ka.kill(owner), None, owner, "keepalived kill -9 of the MASTER's keepalived (parent + VRRP child)",
                  after=6.0)
    res["arp"].append(r); log(fmt_arp(r))
    probe.stop(); mon.stop(); ka.stop_all()
    TOPOS.remove(topo); topo.down()


def table(res):
    def row(name, xs):
        s = stats(xs)
        if not s:
            return f"{name:<58}{'-':>8}{'-':>8}{'-':>8}{'-':>8}{0:>6}"
        return f"{name:<58}{s['p50']:>8.0f}{s['p90']:>8.0f}{s['p99']:>8.0f}{s['max']:>8.0f}{s['runs']:>6}"
    rg = res["raftgate_runs"]; ka = res["keepalived_runs"]; kd = res["keepalived_daemon_only_runs"]
    f = lambda runs, key="failover_ms": [r[key] for r in runs if r.get(key) is not None]
    lead = [r for r in rg if r["killed_was_leader"]]; foll = [r for r in rg if not r["killed_was_leader"]]
    hdr = f"{'':<58}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'runs':>6}"
    out = [f"VIP failover, kill -9 of the VIP owner: time from the kill to the first successful request (ms;",
           f"new TCP connection to VIP:8080 every 20 ms, 100 ms timeout; p99 of 20 runs is the max)",
           hdr,
           row("raftgate: kill -9 of the owner's `raftgate run`", f(rg)),
           row("  owner was the Raft leader", f(lead)),
           row("  owner was not the leader", f(foll)),
           row("keepalived: kill -9 of the MASTER's keepalived + web server", f(ka))]
    sr, sk = stats(f(rg)), stats(f(ka))
    if sr and sk:
        out.append(f"keepalived/raftgate: p50 {sk['p50'] / sr['p50']:.1f}x, p99 {sk['p99'] / sr['p99']:.1f}x")
    out += ["", "VIP address added on the new owner after the kill (ms; `ip monitor address` in each node)", hdr,
            row("raftgate", f(rg, "vip_added_on_new_ms")),
            row("  owner was the Raft leader", f(lead, "vip_added_on_new_ms")),
            row("  owner was not the leader", f(foll, "vip_added_on_new_ms")),
            row("raftgate: VIP removed from the killed node (guard)", f(rg, "vip_removed_from_old_ms")),
            row("keepalived (+ web server killed)", f(ka, "vip_added_on_new_ms")),
            row("keepalived only killed", f(kd, "vip_added_on_new_ms")),
            "",
            "keepalived only (web server on the old MASTER keeps running, the VIP stays on its eth0):"]
    if kd:
        s = stats(f(kd))
        out.append(f"  first successful request after the kill: p50 {s['p50']:.0f} ms, p90 {s['p90']:.0f}, p99 {s['p99']:.0f}, "
                   f"max {s['max']:.0f} ({s['runs']} runs); failed requests in all runs together: {sum(r['failed_requests'] for r in kd)}")
    return "\n".join(out)


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/raftgate")
    if os.geteuid() != 0:
        raise SystemExit("bench/failover.py needs root (network namespaces, VIP addresses, raw ARP sockets)")
    repo = os.path.dirname(HERE)
    logs = f"{repo}/bench/out/failover-logs"
    os.makedirs(logs, exist_ok=True)
    for name in os.listdir(logs):
        os.unlink(f"{logs}/{name}")
    lock_note = "measured holding /tmp/raftgate-cargo.lock"
    if os.environ.get("HOLD_CARGO_LOCK", "1") == "1":
        lock = open("/tmp/raftgate-cargo.lock", "a")
        end = time.monotonic() + float(os.environ.get("LOCK_WAIT", "900"))
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB); break
            except BlockingIOError:
                if time.monotonic() > end:
                    raise SystemExit("the cargo lock /tmp/raftgate-cargo.lock is still held; HOLD_CARGO_LOCK=0 to skip it")
                time.sleep(1)
    else:
        lock_note = "measured without the cargo lock"
    ka_version = subprocess.run(["keepalived", "--version"], capture_output=True, text=True)
    ka_version = (ka_version.stdout + ka_version.stderr).splitlines()[0]
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    res = {"started": started, "raftgate_commit": commit + ("-dirty" if dirty else ""), "keepalived": ka_version,
           "runs_each": RUNS, "note": lock_note,
           "setup": {"vip": f"{VIP}/24", "probe": "new TCP connection every 20 ms, 100 ms connect+read timeout, GET /healthz Host vip.test",
                     "raftgate": "3 members, default raft and VIP timing, fault SIGKILL to the owner's `raftgate run` (its guard stays)",
                     "keepalived": "3 instances, state BACKUP, priority 100/99/98, preempt (default), advert_int 1; fault SIGKILL to "
                                   "the MASTER's keepalived parent + VRRP child (+ its raftgate web server in keepalived_runs)",
                     "failover_ms": "kill to the end of the first successful request that started after the kill"},
           "raftgate_runs": [], "keepalived_runs": [], "keepalived_daemon_only_runs": [], "arp": []}
    root = tempfile.mkdtemp(prefix="raftgate-failover-")
    try:
        phases = os.environ.get("PHASES", "raftgate keepalived").split()
        if "raftgate" in phases:
            raftgate_phase(binary, root, logs, res)
        if "keepalived" in phases:
            keepalived_phase(binary, root, logs, res)
    finally:
        cleanup()
        subprocess.run(["rm", "-rf", root])
    text = table(res)
    res["table"] = text
    if os.environ.get("NO_RESULTS") == "1":
        path = f"{root}.json"
    else:
        os.makedirs(f"{repo}/bench/results", exist_ok=True)
        path = f"{repo}/bench/results/failover-{started.replace(':', '')}.json"
    json.dump(res, open(path, "w"), indent=1)
    print()
    print(text)
    print()
    for r in res["arp"]:
        print(fmt_arp(r))
    print(f"\n{lock_note}; raw numbers: {os.path.relpath(path, repo)}; logs: bench/out/failover-logs/")


if __name__ == "__main__":
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, lambda *_: sys.exit(130))
    atexit.register(cleanup)
    main()
